"""What every drill file shares, whatever it restores: the strict base model, names, recovery-point
rules, restore options, `select:`, the base of every target and probe, the drill's isolation
settings, restore.environment references and the errors a drill file reports.

Each provider family adds its targets and probe in its own module (drdrill/providers/<family>/schema.py,
listed once in drdrill/providers/registry.py); drdrill/providers/spec.py assembles them into DrillSpec.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Iterator, Literal, Optional, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drdrill.core.durations import AwareTime, Duration

NAME_RE = r"^[a-z][a-z0-9-]{0,39}$"
NAME_HELP = "lowercase letters, digits and '-', starting with a letter, at most 40 characters"


class Strict(BaseModel):
    """Base for every drill-file mapping: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True)


# ---------------------------------------------------------------- recovery points


class RecoveryPointRule(Strict):
    """Which recovery point (snapshot or backup) to restore."""

    rule: Literal["latest", "at", "random"] = "latest"
    at: Optional[AwareTime] = Field(None, description="rule 'at': newest point at or before this time")
    within: Optional[Duration] = Field(None, description="rule 'random': pick among points no older than this")
    seed: Optional[int] = Field(None, description="rule 'random': fix the choice (default: the drill id)")
    max_age: Optional[Duration] = Field(None, description="a chosen point older than this is a finding")

    @model_validator(mode="after")
    def _rule_fields(self) -> "RecoveryPointRule":
        if self.rule == "at" and self.at is None:
            raise ValueError("rule 'at' needs 'at: <time>', e.g. at: 2026-11-24T14:00:00Z")
        if self.rule != "at" and self.at is not None:
            raise ValueError(f"'at' only applies to rule 'at' (this rule is '{self.rule}')")
        if self.rule == "random" and self.within is None:
            raise ValueError("rule 'random' needs 'within: <duration>', e.g. within: 30d")
        if self.rule != "random" and self.within is not None:
            raise ValueError(f"'within' only applies to rule 'random' (this rule is '{self.rule}')")
        return self


class RestoreOptions(Strict):
    timeout: Duration = Field(timedelta(hours=2), description="deadline for restore plus readiness")
    jobs: int = Field(2, ge=1, le=64, description="parallel restore jobs where the provider supports it")


# ---------------------------------------------------------------- errors


class SpecError(Exception):
    """A drill file that cannot be run. `problems` holds (field path, message) pairs."""

    def __init__(self, path: str, problems: list[tuple[str, str]]):
        self.path = path
        self.problems = problems
        lines = [f"{path}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"]
        for loc, msg in problems:
            lines.append(f"  {loc or '(file)'}: {msg}")
        super().__init__("\n".join(lines))


class RefError(ValueError):
    """A problem found across fields (a name that refers to nothing, a plan out of order): its field path and message."""

    def __init__(self, loc: tuple, message: str):
        super().__init__(message)
        self.loc = loc
        self.message = message


@dataclass(frozen=True)
class SpecWarning:
    """A drill file that runs, but not as its author expects: the file, the field path and the fix."""

    path: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.field}: {self.message}"


def discriminators(union: Any, field: str) -> list[str]:
    """The values of `field` of every model in an Annotated discriminated union, in its order."""
    return [get_args(model.model_fields[field].annotation)[0] for model in get_args(get_args(union)[0])]


# ---------------------------------------------------------------- targets

class Selection(Strict):
    """`select:` chooses a target's resources at drill time instead of naming one: every resource
    of the target's kind that matches and has a recovery point in the rule's window is a
    candidate; `sample` of them are drilled, those restored least recently first (seeded, so the
    same seed picks the same ones). Each chosen resource becomes a target `<name>-<resource>`.
    See drdrill/core/selection.py."""

    tags: dict[str, str] = Field(default_factory=dict, description="every tag must match ('*': any value); GCP: labels")
    exclude_tags: dict[str, str] = Field(default_factory=dict, description="a resource carrying any of these is left out ('*': any value)")
    regions: list[str] = Field(default_factory=list, description="aws: regions to search (default: the worker's DRDRILL_AWS_REGIONS)")
    resource_groups: list[str] = Field(default_factory=list, description="azure: resource groups to search (default: the subscription)")
    project: Optional[str] = Field(None, description="gcp: the project to search (default: the worker's)")
    zones: list[str] = Field(default_factory=list, description="gcp: zones to search (default: every zone)")
    repositories: list[str] = Field(default_factory=list, description="postgres: backup repositories, or globs of them (relative to the drill file)")
    sample: Optional[int] = Field(None, ge=1, le=500, description="how many to drill per run (default: every candidate)")
    seed: Optional[int] = Field(None, description="fix the draw (default: the drill id)")

    @field_validator("regions", "resource_groups", "zones", "repositories", mode="before")
    @classmethod
    def _one_or_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    def criteria(self) -> dict[str, Any]:
        """What the selection selects by, as written (for the evidence)."""
        return self.model_dump(mode="json", exclude_defaults=True)



class TargetBase(Strict):
    """What every target has. A family's target model (drdrill/providers/<family>/schema.py) adds
    `provider: Literal["<kind>"]` and `source`, and says in its class variables how its resources
    are selected, named, counted against permits and reached."""

    # `select:` keys this kind selects by besides sample and seed (empty: it cannot select), and
    # (keys of which one must be given, the message when none is).
    SELECT_BY: ClassVar[tuple[str, ...]] = ()
    SELECT_NEEDS: ClassVar[tuple[tuple[str, ...], str]] = ((), "")
    # The fields of `source` that hold the provider's id of the resource (selection.resource_ref).
    ID_FIELDS: ClassVar[tuple[str, ...]] = ()
    # The endpoint fields a restored resource of this kind publishes (RestoredResource.endpoint): what
    # `tcp`/`http` checks naming the target and url templates may use, and `command` checks receive as
    # DRDRILL_*. `drdrill lint` checks templates against it (endpoint_fields may depend on isolation).
    ENDPOINT_FIELDS: ClassVar[tuple[str, ...]] = ()
    # How to fix a tcp/http check that needs the target's host when it publishes none (lint).
    NO_HOST_FIX: ClassVar[str] = "use a fixed 'host'/'url' or a target that publishes a host"
    # Whether a resource of this kind is something coverage counts (a simulated one protects nothing).
    PROTECTS: ClassVar[bool] = True
    # A simulated resource: its recovery points may lie in the future of `drdrill run --as-of`.
    SIMULATED: ClassVar[bool] = False
    # Coverage of a named source no inventory lists: read its newest recovery point from the provider.
    INVENTORY_BY_POINT: ClassVar[bool] = False

    name: str = Field(pattern=NAME_RE)
    recovery_point: RecoveryPointRule = Field(default_factory=RecoveryPointRule)
    restore: RestoreOptions = Field(default_factory=RestoreOptions)
    select: Optional[Selection] = Field(None, description="choose the resources at drill time instead of naming one in `source`")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """A target that selects its resources names no source: each kind's required `source`
        becomes optional here, and `_source_or_select` asks for exactly one of the two."""
        super().__pydantic_init_subclass__(**kwargs)
        source = cls.model_fields.get("source")
        if source is not None and source.is_required():
            source.annotation = Optional[source.annotation]  # type: ignore[assignment]
            source.default = None
            cls.model_rebuild(force=True)

    @model_validator(mode="after")
    def _source_or_select(self) -> "TargetBase":
        source = getattr(self, "source", None)
        if self.select is None:
            if source is None:
                raise ValueError(
                    f"target {self.name!r} needs 'source:' (the resource to restore) or 'select:' (resources chosen at drill time)"
                )
            return self
        if not self.SELECT_BY:
            raise ValueError(f"{self.provider} targets cannot select their resources: name one in 'source:'")  # type: ignore[attr-defined]
        if source is not None:
            raise ValueError(f"target {self.name!r} has both 'source:' and 'select:': name one resource, or select them, not both")
        allowed = self.SELECT_BY
        stray = [k for k in self.select.criteria() if k not in allowed + ("sample", "seed")]
        if stray:
            raise ValueError(f"select.{stray[0]} does not apply to {self.provider} targets; they select by {', '.join(allowed)}")  # type: ignore[attr-defined]
        needs, message = self.SELECT_NEEDS
        if not any(getattr(self.select, k) for k in needs):
            raise ValueError(message)
        return self

    @property
    def family(self) -> str:
        return self.provider.split(".")[0]  # type: ignore[attr-defined]

    @classmethod
    def endpoint_fields(cls, isolation: Any) -> tuple[str, ...]:
        """The endpoint fields a target of this kind publishes under `isolation`."""
        return cls.ENDPOINT_FIELDS

    def stages(self, isolation: Any) -> bool:
        """Whether its backup is laid down (the `stage` activity) while the isolation is made and
        proven, the restored server started only after the proof: a physical restore's files."""
        return False

    def permit_key(self, isolation: Any) -> str:
        """The account/region this target's resources count against (concurrency permits): the family
        by default; a cloud names its region, subscription or project."""
        return self.family

    @classmethod
    def isolation_scope(cls, isolation: Any) -> Optional[tuple[str, str]]:
        """Where a drill restores this family by its isolation settings: (region, the field saying so), or None."""
        return None

    def own_scope(self) -> Optional[tuple[str, str]]:
        """Where this named target restores by its own source, when the isolation settings do not say."""
        return None

    def inventory_selection(self) -> Optional[Selection]:
        """Coverage: the selection that finds this named target's resource as discovery lists it, if any."""
        return None

    def source_label(self) -> str:
        """Coverage: the named source as a person names it."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.source.model_dump(mode="json", exclude_defaults=True).items()))  # type: ignore[attr-defined]

    # ---- hooks a family's target overrides; each sees the whole drill (a DrillSpec)

    def drill_problem(self, spec: Any, index: int) -> Optional[RefError]:
        """What is wrong with this target in this drill (checked after the names, before the plan)."""
        return None

    def attach_checks(self, spec: Any) -> None:
        """Tell the target what of the drill it needs to know at restore time (after every check passed)."""

    def warnings(self, index: int) -> Iterator[tuple[str, str]]:
        """What this target allows but almost certainly does not mean: (field path, message with the fix)."""
        return iter(())

    def load_problems(self, index: int, now: Any) -> Iterator[tuple[str, str]]:
        """What is wrong with this target at the moment the file is loaded (never run inside a workflow)."""
        return iter(())

    def file_fields(self, index: int) -> Iterator[tuple[str, Any, Any]]:
        """Every field naming a file or directory: (field path, owner, attribute or index)."""
        for j in range(len(self.select.repositories) if self.select else 0):
            yield f"targets[{index}].select.repositories[{j}]", self.select.repositories, j  # type: ignore[union-attr]


class InstanceRestoreOptions(RestoreOptions):
    """A restored instance's options: the environment it boots with."""

    environment: dict[str, str] = Field(
        default_factory=dict,
        description="variables handed to the restored instance at boot (in its user data): {targets.<target>.<field>} "
        "(an earlier group's endpoint) or {env.<VARIABLE>} (a secret reference, read on the worker that launches it)",
    )

    @field_validator("environment")
    @classmethod
    def _environment(cls, v: dict[str, str]) -> dict[str, str]:
        return check_environment(v)


# ---------------------------------------------------------------- probes and isolation

class ProbeBase(Strict):
    """A probe: a small drdrill worker (`drdrill probe --task-queue Q`) inside the drill's isolated
    network that runs the checks which need that network, on the drill's own task queue. Each
    provider family that can launch one adds its model to ProbeSpec."""

    start_timeout: Duration = Field(
        timedelta(minutes=5), description="how long the drill waits for the probe to start polling (else PROBE_NOT_STARTED)"
    )

    def isolation_problem(self, isolation: Any) -> Optional[str]:
        """Why this probe cannot run under `isolation` (with the fix); None when it can."""
        return None



class CloudProbe(ProbeBase):
    """A probe a cloud provider boots inside the drill's network: an instance whose user data (custom
    data, startup script) runs `drdrill probe`. Its network's one way out is an egress rule to
    `temporal_address`; the secrets its checks need are references it resolves there."""

    temporal_address: str = Field(
        description="IPv4:port of the Temporal frontend the drill's network may reach (a private address or endpoint): "
        "the network's one egress rule"
    )
    temporal_namespace: Optional[str] = Field(None, description="the probe's Temporal namespace (default: the worker's own)")
    secrets: dict[str, str] = Field(
        default_factory=dict,
        description="per target: a reference to the secret holding its database password, resolved by the probe inside "
        "the network (the reference, never the value, is in the drill's history and evidence)",
    )

    @field_validator("temporal_address")
    @classmethod
    def _ipv4_and_port(cls, v: str) -> str:
        host, _, port = v.rpartition(":")
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(
                f"{v!r}: write the Temporal frontend as IPv4:port (e.g. 10.20.0.5:7233): the drill's one egress rule names an address, not a name"
            ) from None
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{v!r}: the port must be a number from 1 to 65535")
        if address.is_unspecified or address.is_multicast:
            raise ValueError(f"{v!r}: {host} cannot be the Temporal frontend")
        return v

    # (pattern, example) of this cloud's secret references
    SECRET_REFERENCE: ClassVar[tuple[str, str]] = (r"^$", "")

    @field_validator("secrets")
    @classmethod
    def _references(cls, v: dict[str, str]) -> dict[str, str]:
        rx, example = cls.SECRET_REFERENCE
        for target, ref in v.items():
            if not re.match(rx, ref):
                raise ValueError(f"secrets.{target}: {ref!r} is not a secret reference of this cloud; write it like {example}")
        return v


class ProbeSpecBase(Strict):
    """Probes per provider family, each a ProbeBase: a field per family with a probe (drdrill/providers/spec.py
    adds them from the families' schemas), booted inside the drill's network."""

    def for_family(self, family: str) -> Optional[ProbeBase]:
        """The probe this drill asks for in `family`'s isolated network, if any."""
        probe = getattr(self, family, None)
        return probe if isinstance(probe, ProbeBase) else None

    def families(self) -> list[str]:
        """The families this drill has a probe in, in the registry's order."""
        return [name for name in type(self).model_fields if self.for_family(name) is not None]


class IsolationBase(Strict):
    """The isolated environment the targets are restored into (no route to production)."""

    network_cidr: str = Field("10.213.0.0/16", description="address range of the drill's private network (clouds)")
    allow_ingress_from: list[str] = Field(
        default_factory=list,
        description="CIDRs (or cloud security group ids) allowed to reach restored resources, for validation",
    )
    aws_region: Optional[str] = None
    azure_location: Optional[str] = Field(None, description="Azure region for the drill's resource group")
    azure_subscription_id: Optional[str] = None
    gcp_project: Optional[str] = None
    gcp_region: Optional[str] = None
    postgres: Literal["socket", "network"] = Field(
        "socket",
        description="socket: the cluster listens on a private Unix socket only (no TCP); network: on TCP inside a "
        "network namespace of its own, reached by a probe inside it",
    )
    production_dsn_env: Optional[str] = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="environment variable holding the production DSN the isolation proof must fail to reach "
        "(default: each target's source.dsn_env)",
    )

    probe: ProbeSpecBase = Field(default_factory=ProbeSpecBase, description="run checks inside the isolated network, per provider family")

    @model_validator(mode="after")
    def _probe_needs_a_network(self) -> "IsolationBase":
        for family in self.probe.families():
            problem = self.probe.for_family(family).isolation_problem(self)  # type: ignore[union-attr]
            if problem is not None:
                raise ValueError(problem)
        return self


# ---------------------------------------------------------------- endpoint templates and restore.environment

ENDPOINT_TEMPLATE_RE = re.compile(r"\{([^{}]*)\}")
_FIELD_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def template_fields(template: str) -> list[str]:
    """The endpoint fields a url template names, in order: 'http://{host}:8080/' -> ['host'].
    Raises ValueError for a `{…}` that is not a plain field name."""
    fields = ENDPOINT_TEMPLATE_RE.findall(template)
    for name in fields:
        if not _FIELD_NAME_RE.match(name):
            raise ValueError(f"{{{name}}} is not an endpoint field: write a name such as {{host}} or {{private_ip}}")
    return list(dict.fromkeys(fields))


# `restore.environment` values: `{targets.<target>.<field>}` (an earlier group's restored endpoint) and
# `{env.<VARIABLE>}` (a secret reference). Both are resolved by the activity that starts the service
# (drdrill/core/plan.py: resolve_environment), so neither the value nor the secret enters the history.
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class EnvironmentRef:
    """One `{…}` of a restore.environment value: an earlier target's endpoint field, or a variable."""

    kind: Literal["targets", "env"]
    name: str  # the target, or the variable
    field: str = ""  # the endpoint field (kind "targets")

    @property
    def text(self) -> str:
        return f"{{targets.{self.name}.{self.field}}}" if self.kind == "targets" else f"{{env.{self.name}}}"


def environment_refs(template: str) -> list[EnvironmentRef]:
    """The references in a restore.environment value, in order. ValueError for a `{…}` that is neither."""
    refs = []
    for inner in ENDPOINT_TEMPLATE_RE.findall(template):
        parts = inner.split(".")
        if len(parts) == 3 and parts[0] == "targets" and re.match(NAME_RE, parts[1]) and _FIELD_NAME_RE.match(parts[2]):
            refs.append(EnvironmentRef("targets", parts[1], parts[2]))
        elif len(parts) == 2 and parts[0] == "env" and _ENV_NAME_RE.match(parts[1]):
            refs.append(EnvironmentRef("env", parts[1]))
        else:
            raise ValueError(
                f"{{{inner}}} is not a reference: write {{targets.<target>.<field>}} (an earlier target's endpoint, "
                "e.g. {targets.db.dsn}) or {env.<VARIABLE>} (a secret, read on the worker)"
            )
    return refs


def check_environment(environment: dict[str, str]) -> dict[str, str]:
    """restore.environment: variable names, and values whose every `{…}` is a reference."""
    for key, value in environment.items():
        if not _ENV_NAME_RE.match(key):
            raise ValueError(f"{key!r} is not an environment variable name: letters, digits and '_', not starting with a digit")
        if key.upper().startswith("DRDRILL_"):
            raise ValueError(f"{key}: DRDRILL_* variables are drdrill's own (the restored database arrives as DRDRILL_DSN, …); choose another name")
        try:
            environment_refs(value)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return environment
