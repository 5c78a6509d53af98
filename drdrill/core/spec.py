"""The drill file format: pydantic models and a YAML loader with clear errors.

A drill file is YAML. Every mapping refuses unknown keys; every error names the
file, the field path and what is allowed, so a typo never silently disables a
check.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import os
import re
import typing
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Iterator, Literal, Mapping, Optional, Union, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.functional_validators import BeforeValidator

from drdrill.core import sshsig
from drdrill.core.paths import default_state_dir

# ---------------------------------------------------------------- durations

_DURATION_RE = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
MAX_DURATION = timedelta(days=3660)


def parse_duration(value: Any) -> timedelta:
    """Parse `30m`, `1h30m`, `2d`, `45s` (or a number of seconds) into a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration such as 30s, 15m, 1h30m or 7d, not a boolean")
    if isinstance(value, (int, float)):
        if value < 0 or value != value or value > MAX_DURATION.total_seconds():
            raise ValueError("a duration must be between 0 and 3660d")
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise ValueError("a duration such as 30s, 15m, 1h30m or 7d")
    if value.strip().upper().startswith("P"):
        # ISO 8601 ("PT30M", "P7Y"): how pydantic serializes a timedelta, e.g. a DrillSpec sent
        # to the workflow through Temporal's pydantic converter and validated again there.
        try:
            result = TypeAdapter(timedelta).validate_python(value.strip())
        except ValidationError:
            raise ValueError(f"{value!r} is not a duration: write it like 30s, 15m, 1h30m, 7d or 1y") from None
        if result < timedelta(0) or result > MAX_DURATION:
            raise ValueError("a duration must be between 0 and 3660d")
        return result
    text = value.strip().replace(" ", "")
    match = _DURATION_RE.match(text)
    if not text or not match or not any(match.groups()):
        raise ValueError(f"{value!r} is not a duration: write it like 30s, 15m, 1h30m, 7d or 1y")
    y, w, d, h, m, s = (int(g) if g else 0 for g in match.groups())
    if max(y, w, d, h, m, s) > 10**7:
        raise ValueError(f"{value!r} is too large: a duration must be at most 3660d")
    result = timedelta(days=365 * y + 7 * w + d, hours=h, minutes=m, seconds=s)
    if result > MAX_DURATION:
        raise ValueError(f"{value!r} is too large: a duration must be at most 3660d")
    return result


def format_duration(td: timedelta | float | None) -> str:
    """Render seconds or a timedelta compactly: 4.2s, 33s, 15m, 1h30m."""
    if td is None:
        return "-"
    seconds = td.total_seconds() if isinstance(td, timedelta) else float(td)
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    days, rem = divmod(seconds, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    parts = []
    if days:
        parts.append(f"{days}d")
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if secs and not days:
        parts.append(f"{secs}s")
    return "".join(parts) or "0s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _aware(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        raise ValueError("a time needs a timezone, e.g. 2026-11-24T14:00:00Z")
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an ISO 8601 time such as 2026-11-24T14:00:00Z") from exc
        if parsed.tzinfo is None:
            raise ValueError("a time needs a timezone, e.g. 2026-11-24T14:00:00Z")
        return parsed
    return value


AwareTime = Annotated[datetime, BeforeValidator(_aware)]

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


# ---------------------------------------------------------------- targets


# What a selection may select by, per provider family (besides sample and seed).
SELECT_BY = {
    "aws": ("tags", "exclude_tags", "regions"),
    "azure": ("tags", "exclude_tags", "resource_groups"),
    "gcp": ("tags", "exclude_tags", "project", "zones"),
    "postgres": ("repositories",),
}


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
        family = self.provider.split(".")[0]  # type: ignore[attr-defined]
        if self.select is None:
            if source is None:
                raise ValueError(
                    f"target {self.name!r} needs 'source:' (the resource to restore) or 'select:' (resources chosen at drill time)"
                )
            return self
        if family not in SELECT_BY:
            raise ValueError(f"{self.provider} targets cannot select their resources: name one in 'source:'")  # type: ignore[attr-defined]
        if source is not None:
            raise ValueError(f"target {self.name!r} has both 'source:' and 'select:': name one resource, or select them, not both")
        allowed = SELECT_BY[family]
        stray = [k for k in self.select.criteria() if k not in allowed + ("sample", "seed")]
        if stray:
            raise ValueError(f"select.{stray[0]} does not apply to {self.provider} targets; they select by {', '.join(allowed)}")  # type: ignore[attr-defined]
        if family == "postgres" and not self.select.repositories:
            raise ValueError("a postgres selection needs 'repositories:' (directories, or globs such as backups/*)")
        if family != "postgres" and not (self.select.tags or self.select.resource_groups or self.select.zones):
            raise ValueError("select needs something to select by: tags" + {"azure": " or resource_groups", "gcp": " or zones"}.get(family, ""))
        return self

    @property
    def family(self) -> str:
        return self.provider.split(".")[0]  # type: ignore[attr-defined]


class S3Location(Strict):
    """Objects under a prefix of an S3 bucket (or an S3-compatible store), read with boto3's default
    credential chain only: nothing secret is ever written in a drill file."""

    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
    prefix: str = Field("", description="every object under it (but `.sha256` sidecars) is a candidate recovery point")
    region: Optional[str] = None
    endpoint_url: Optional[str] = Field(None, pattern=r"^https?://", description="an S3-compatible store (MinIO, Ceph, moto)")


_NAME_TIME_DIRECTIVES = {"Y": r"\d{4}", "m": r"\d{2}", "d": r"\d{2}", "H": r"\d{2}", "M": r"\d{2}", "S": r"\d{2}", "j": r"\d{3}", "z": r"[+-]\d{4}", "%": "%"}
_NAME_TIME_RE = re.compile(r"\{time:([^}]+)\}")


def name_time_regex(pattern: str) -> tuple[re.Pattern, str]:
    """`shop-{time:%Y%m%dT%H%M%SZ}.dump` -> (a regex whose group `time` is the stamp, its strptime format).
    The regex is searched in an object's name, so the pattern may be just the time part."""
    found = _NAME_TIME_RE.findall(pattern)
    if len(found) != 1:
        raise ValueError(f"{pattern!r} needs exactly one {{time:FORMAT}}, e.g. \"{{time:%Y%m%dT%H%M%SZ}}\"")
    fmt = found[0]
    parts = re.split(r"(%.)", fmt)
    rx = ""
    for part in parts:
        if part.startswith("%") and len(part) == 2:
            if part[1] not in _NAME_TIME_DIRECTIVES:
                raise ValueError(f"{pattern!r}: %{part[1]} is not supported in a name time; use %Y %m %d %H %M %S %j %z")
            rx += _NAME_TIME_DIRECTIVES[part[1]]
        else:
            rx += re.escape(part)
    if "%Y" not in fmt:
        raise ValueError(f"{pattern!r}: the time needs at least a year, month and day (%Y%m%d)")
    before, _, after = _NAME_TIME_RE.sub("\0", pattern).partition("\0")
    return re.compile(re.escape(before) + f"(?P<time>{rx})" + re.escape(after)), fmt


# ---------------------------------------------------------------- postgres sources: point in time
# Physical backups plus a WAL archive, recovered with the tools that wrote them (issue 15). drdrill
# only reads the repository; the recovered server never reaches it (its WAL comes through drdrill).

class PointInTimeSource(Strict):
    """What every point-in-time source has: the role checks connect as in the recovered cluster."""

    user: str = Field("postgres", min_length=1, description="a superuser of the backed-up cluster, for the checks")


class PgBackRestSource(PointInTimeSource):
    """A pgBackRest stanza, in any repository type pgBackRest reads (posix, S3, Azure, GCS, SFTP)."""

    stanza: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="the stanza (pgbackrest --stanza)")
    config: Optional[str] = Field(None, description="pgbackrest.conf (relative to the drill file); default: pgBackRest's own")
    repo: Optional[int] = Field(None, ge=1, le=256, description="the repository to read (--repo); default: pgBackRest's choice")
    env: list[str] = Field(
        default_factory=list,
        description="names of the PGBACKREST_* variables configuring the repository (e.g. PGBACKREST_REPO1_S3_KEY); "
        "passed to pgBackRest by name, their values never written anywhere",
    )

    @field_validator("env")
    @classmethod
    def _pgbackrest_variables(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not re.match(r"^PGBACKREST_[A-Z0-9_]+$", n)]
        if bad:
            raise ValueError(
                f"{', '.join(map(repr, bad))}: name PGBACKREST_* variables (e.g. PGBACKREST_REPO1_S3_KEY); "
                "their values stay in the worker's environment"
            )
        return names


class BarmanSource(PointInTimeSource):
    """Backups and WAL written by barman-cloud-backup / barman-cloud-wal-archive to S3."""

    source_url: str = Field(pattern=r"^s3://[^/]+", description="s3://bucket/path, as given to barman-cloud-backup")
    server: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="the server name given to barman-cloud-backup")
    endpoint_url: Optional[str] = Field(None, pattern=r"^https?://", description="an S3-compatible endpoint")
    env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        default_factory=list,
        description="names of the variables holding the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "AWS_SESSION_TOKEN, AWS_DEFAULT_REGION, AWS_PROFILE); passed by name, their values never written anywhere",
    )


class WalArchiveSource(PointInTimeSource):
    """Plain pg_basebackup directories plus the directory `archive_command = 'cp %p /archive/%f'` fills."""

    base_backups: str = Field(description="a pg_basebackup -Fp directory, or a directory of them (relative to the drill file)")
    archive: str = Field(description="the WAL archive directory (relative to the drill file)")


class PostgresSource(Strict):
    """Where a postgres target's backups are: exactly one kind of source (SOURCE_KINDS)."""

    # --- the kinds of source: exactly one is given (SOURCE_KINDS; a new kind adds a field and an entry)
    repository: Optional[str] = Field(None, description="drdrill's own backup repository (`drdrill backup`; relative to the drill file)")
    path: Optional[str] = Field(None, description="pg_dump files already on disk: a directory and a glob, e.g. /backups/shop/*.dump")
    s3: Optional[S3Location] = Field(None, description="pg_dump files in an S3 bucket: {bucket, prefix, region, endpoint_url}")
    url_env: Optional[str] = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="name of the environment variable holding a presigned HTTPS URL of one pg_dump file",
    )
    # --- pg_dump files (path, s3, url_env): how to read and trust them
    name_time: Optional[str] = Field(
        None, description='the recovery point\'s time in the file name, e.g. "{time:%Y%m%dT%H%M%SZ}" (UTC unless %z)'
    )
    sha256: Optional[str] = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="the artefact's expected sha256")
    size: Optional[int] = Field(None, ge=0, description="the artefact's expected size in bytes")
    # --- common
    dsn_env: Optional[str] = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="name of the environment variable holding the source DSN (for `drdrill backup`)",
    )
    format: Optional[str] = Field(  # checked per kind of source below: an error lists only the ones that apply
        None,
        description="repository: custom (pg_dump -Fc, the default), directory (-Fd) or base (pg_basebackup); "
        "pg_dump files: auto (the default: read from the file), custom, directory, tar or plain (SQL, also .gz or .zst)",
    )
    database: Optional[str] = Field(
        None, description="database name inside the restored cluster (default: target name; `postgres` for a point-in-time source)"
    )
    # Point in time: physical backups plus WAL.
    pgbackrest: Optional[PgBackRestSource] = Field(None, description="a pgBackRest stanza")
    barman: Optional[BarmanSource] = Field(None, description="barman-cloud backups and WAL in S3")
    wal_archive: Optional[WalArchiveSource] = Field(None, description="pg_basebackup directories and a WAL archive directory")
    # Set by drdrill from the drill's validations, never written in a drill file: the names of the
    # boundary checks of this target (a point-in-time recovery without one proves no moment).
    boundary_checks: list[str] = Field(default_factory=list, description="set by drdrill")

    @property
    def kind(self) -> str:
        """Which kind of source this is: one of SOURCE_KINDS."""
        return next(k for k in SOURCE_KINDS if getattr(self, k) is not None)

    @property
    def pitr(self) -> bool:
        """Recovered to a point in time: a base backup plus WAL replay."""
        return self.kind in PITR_KINDS

    @model_validator(mode="after")
    def _one_kind(self) -> "PostgresSource":
        given = [k for k in SOURCE_KINDS if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(
                f"a postgres source names exactly one of {', '.join(SOURCE_KINDS)}; this one names {' and '.join(given)}: "
                "keep the one where this target's backups are"
            )
        if not given:
            raise ValueError(
                f"a postgres source names exactly one of {', '.join(SOURCE_KINDS)}; this one names none: add where this "
                "target's backups are, e.g. `path: /backups/shop/*.dump` or `s3: {bucket: BUCKET, prefix: shop/}`"
            )
        dumps = self.kind in DUMP_SOURCE_KINDS
        allowed = ("auto", "custom", "directory", "tar", "plain") if dumps else ("custom", "directory", "base")
        if self.format is None:
            self.format = "auto" if dumps else "custom"
        if self.kind in PITR_KINDS:
            allowed = (self.format,)  # a physical backup has no pg_dump format: nothing to choose
        if self.format not in allowed:
            raise ValueError(f"format {self.format!r} does not apply to a {self.kind} source; allowed: {', '.join(allowed)}")
        extras = [k for k in ("name_time", "sha256", "size") if getattr(self, k) is not None]
        if extras and not dumps:
            raise ValueError(
                f"{' and '.join(extras)} {'applies' if len(extras) == 1 else 'apply'} only to pg_dump files (path, s3, url_env), "
                "not to a repository: remove it; "
                "drdrill's repository checks its archives against their manifests"
            )
        if self.name_time is not None:
            name_time_regex(self.name_time)
        if self.dsn_env is not None and self.kind != "repository":
            raise ValueError("dsn_env is for `drdrill backup`, which writes a repository: remove it, or use `repository:`")
        return self


# The kinds of postgres source, in the order an error lists them. Each is a field of PostgresSource
# and a RecoverySource (drdrill/providers/postgres/provider.py `source_of`).
SOURCE_KINDS: list[str] = ["repository", "path", "s3", "url_env", "pgbackrest", "barman", "wal_archive"]
# The kinds that read pg_dump files written by someone else (no manifest).
DUMP_SOURCE_KINDS: tuple[str, ...] = ("path", "s3", "url_env")
# The kinds recovered to a point in time (a base backup plus WAL replay).
PITR_KINDS: tuple[str, ...] = ("pgbackrest", "barman", "wal_archive")


class AfterRestore(Strict):
    """An application started from the restored data inside the drill's network namespace
    (`isolation.postgres: network`), so `http` and `tcp` checks through the probe reach it. It gets
    the restored database as DRDRILL_DSN, DRDRILL_HOST, DRDRILL_PORT and DRDRILL_DATABASE, runs
    until the environment is torn down, and logs to the cluster directory. It runs in the drill's
    restore sandbox: it sees /usr, its argv[0], the restored socket directory and `paths` only."""

    argv: list[str] = Field(min_length=1, description="the command; argv[0] is found on PATH, so prefer absolute paths")
    paths: list[str] = Field(
        default_factory=list,
        description="files and directories the application reads (read-only in its sandbox, besides /usr and the "
        "restored database's socket directory); each must be reachable by an unprivileged uid (relative to the drill file)",
    )


class IntegrityOptions(Strict):
    """Proof that the restored data is sound (integrity.py): pg_amcheck of heaps and B-trees,
    collation versions, page checksums of physical restores; what the budget leaves unchecked is
    COULD NOT VERIFY."""

    enabled: bool = Field(True, description="run the corruption checks after the restore (off: the report says they did not run)")
    budget: Duration = Field(timedelta(minutes=30), description="time for the checks; relations left unchecked when it runs out are named")


class PostgresRestoreOptions(RestoreOptions):
    integrity: IntegrityOptions = Field(default_factory=IntegrityOptions, description="corruption checks after the restore")
    structure_reference: Optional[str] = Field(
        None,
        description="file listing the catalog objects the restore must have (relative to the drill file; "
        "written by `drdrill reference write`): STRUCTURE_MISSING / STRUCTURE_UNEXPECTED against it",
    )
    after: Optional[AfterRestore] = Field(None, description="start an application from the restored data (isolation.postgres: network only)")
    # pg_dump files (path, s3, url_env): bounds on what a backup can make drdrill read (issue 21).
    max_expanded_bytes: int = Field(
        1 << 40, ge=1, description="a gzip/zstd plain dump that decompresses to more bytes than this is ARTEFACT_TOO_LARGE (default 1 TiB)"
    )
    max_expansion_ratio: float = Field(
        1000, ge=1, description="… or to more than this many times its compressed size (a decompression bomb; default 1000)"
    )
    stall_after: Duration = Field(
        timedelta(minutes=5), description="a dump stream that delivers no byte for this long ends the restore: RESTORE_STALLED"
    )
    environment: dict[str, str] = Field(
        default_factory=dict,
        description="more variables for restore.after: {targets.<target>.<field>} (an earlier group's endpoint) or "
        "{env.<VARIABLE>} (a secret reference, read on the worker that starts it)",
    )

    @field_validator("environment")
    @classmethod
    def _environment(cls, v: dict[str, str]) -> dict[str, str]:
        return check_environment(v)


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


class PostgresTarget(TargetBase):
    provider: Literal["postgres"]
    source: PostgresSource
    restore: PostgresRestoreOptions = Field(default_factory=PostgresRestoreOptions)


class AwsEbsSource(Strict):
    volume_id: str = Field(pattern=r"^vol-[0-9a-f]+$")
    region: Optional[str] = None
    snapshot_tags: dict[str, str] = Field(default_factory=dict)


class AwsEc2Source(Strict):
    instance_id: str = Field(pattern=r"^i-[0-9a-f]+$")
    region: Optional[str] = None
    instance_type: str = "t3.micro"
    image_id: Optional[str] = Field(None, description="AMI to boot from (default: the instance's AMI or an AMI recovery point)")
    snapshot_tags: dict[str, str] = Field(default_factory=dict)


class AwsRdsSource(Strict):
    db_instance_identifier: str
    region: Optional[str] = None
    db_instance_class: str = "db.t3.micro"
    snapshot_type: Literal["any", "manual", "automated"] = "any"
    snapshot_tags: dict[str, str] = Field(default_factory=dict)
    point_in_time: bool = Field(False, description="with rule 'at': restore_db_instance_to_point_in_time")


class AwsEbsTarget(TargetBase):
    provider: Literal["aws.ebs"]
    source: AwsEbsSource


class AwsEc2Target(TargetBase):
    provider: Literal["aws.ec2"]
    source: AwsEc2Source
    restore: InstanceRestoreOptions = Field(default_factory=InstanceRestoreOptions)


class AwsRdsTarget(TargetBase):
    provider: Literal["aws.rds"]
    source: AwsRdsSource


class AzureDiskSource(Strict):
    disk_id: str = Field(description="ARM id of the source managed disk")
    snapshot_tags: dict[str, str] = Field(default_factory=dict)
    disk_sku: Optional[str] = Field(None, description="SKU of the restored disk, e.g. Premium_LRS (default: Azure's, Standard_LRS)")


class AzureVmSource(Strict):
    vm_id: str = Field(description="ARM id of the source VM")
    vm_size: str = "Standard_B1s"
    snapshot_tags: dict[str, str] = Field(default_factory=dict)
    disk_sku: Optional[str] = Field(None, description="SKU of the restored disks, e.g. Premium_LRS (default: Azure's, Standard_LRS)")
    snapshot_group_window: Duration = Field(
        timedelta(minutes=15),
        description="snapshots of the VM's OS and data disks taken within this of each other form one recovery point",
    )


class AzureDiskTarget(TargetBase):
    provider: Literal["azure.disk"]
    source: AzureDiskSource


class AzureVmTarget(TargetBase):
    provider: Literal["azure.vm"]
    source: AzureVmSource


class GcpDiskSource(Strict):
    project: str
    zone: str
    disk: str = Field(description="source disk name")
    snapshot_labels: dict[str, str] = Field(default_factory=dict)


class GcpInstanceSource(Strict):
    project: str
    zone: str
    instance: str = Field(description="source instance name")
    machine_type: str = "e2-small"
    snapshot_labels: dict[str, str] = Field(default_factory=dict)


class GcpDiskTarget(TargetBase):
    provider: Literal["gcp.disk"]
    source: GcpDiskSource


class GcpInstanceTarget(TargetBase):
    provider: Literal["gcp.instance"]
    source: GcpInstanceSource


SIM_OPS = ("find_recovery_point", "create_isolation", "verify_isolation", "restore", "wait_ready", "teardown")
SimOp = Literal["find_recovery_point", "create_isolation", "verify_isolation", "restore", "wait_ready", "teardown"]


class SimLatency(Strict):
    """How long one simulated call takes: `2s` (fixed), {min: 1s, max: 3s} (uniform) or
    {mean: 2s, stddev: 0.5} (normal, never below 0). Scaled by DRDRILL_SIM_SPEED."""

    fixed: Optional[Duration] = None
    min: Optional[Duration] = None
    max: Optional[Duration] = None
    mean: Optional[Duration] = None
    stddev: Optional[Duration] = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, (str, int, float, timedelta)) and not isinstance(data, bool):
            return {"fixed": data}
        return data

    @model_validator(mode="after")
    def _one_shape(self) -> "SimLatency":
        uniform = self.min is not None or self.max is not None
        normal = self.mean is not None or self.stddev is not None
        if sum([self.fixed is not None, uniform, normal]) != 1:
            raise ValueError("a latency is a duration (2s), {min: 1s, max: 3s} or {mean: 2s, stddev: 1s}")
        if uniform and (self.min is None or self.max is None or self.min > self.max):
            raise ValueError("a uniform latency needs min <= max")
        if normal and self.mean is None:
            raise ValueError("a normal latency needs mean (and optionally stddev)")
        return self


class SimFaults(Strict):
    """Injected faults of a simulated target (see drdrill/providers/sim.py). Counts are kept in
    the shared state file, so they hold across retries and worker processes."""

    throttle: int = Field(0, ge=0, le=1000, description="the first N calls of each operation raise a retryable THROTTLED")
    transient_5xx: int = Field(0, ge=0, le=1000, description="the next N calls raise a retryable SERVICE_UNAVAILABLE (503)")
    timeouts: int = Field(0, ge=0, le=1000, description="the next N calls raise a retryable REQUEST_TIMEOUT")
    ops: Optional[list[SimOp]] = Field(None, description="operations throttle/transient_5xx/timeouts apply to (default: all)")
    fail: list[SimOp] = Field(default_factory=list, description="operations that fail permanently (SIM_PERMANENT_FAILURE)")
    never_ready: bool = Field(False, description="the restored resource never becomes ready (wait_ready hits its deadline)")
    teardown_failures: int = Field(0, ge=0, le=1000, description="the first N teardown attempts fail (retryably)")
    leaky_isolation: bool = Field(False, description="the isolated network has a route to production")
    latency: dict[Literal["default", SimOp], SimLatency] = Field(default_factory=dict, description="per operation")

    @field_validator("fail", "ops", mode="before")
    @classmethod
    def _one_or_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class SimSource(Strict):
    """A simulated resource; `sim` is for dry runs, tests and benchmarks."""

    resource: str = Field("db", max_length=200, description="name of the simulated source resource")
    points: int = Field(5, ge=0, le=10000, description="simulated recovery points, one per `point_interval`")
    point_interval: Duration = timedelta(hours=1)
    restore_time: Duration = timedelta(seconds=1)
    ready_after: Duration = timedelta(seconds=0)
    faults: SimFaults = Field(default_factory=SimFaults, description="injected faults, see drdrill/providers/sim.py")

    @field_validator("point_interval")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("point_interval must be longer than 0s")
        return v


class SimTarget(TargetBase):
    provider: Literal["sim"]
    source: SimSource = Field(default_factory=SimSource)


Target = Annotated[
    Union[
        PostgresTarget,
        AwsEbsTarget,
        AwsEc2Target,
        AwsRdsTarget,
        AzureDiskTarget,
        AzureVmTarget,
        GcpDiskTarget,
        GcpInstanceTarget,
        SimTarget,
    ],
    Field(discriminator="provider"),
]



def _discriminators(union: Any, field: str) -> list[str]:
    """The values of `field` of every model in an Annotated discriminated union, in its order."""
    return [get_args(model.model_fields[field].annotation)[0] for model in get_args(get_args(union)[0])]


PROVIDERS = _discriminators(Target, "provider")

# ---------------------------------------------------------------- isolation


class ProbeBase(Strict):
    """A probe: a small drdrill worker (`drdrill probe --task-queue Q`) inside the drill's isolated
    network that runs the checks which need that network, on the drill's own task queue. Each
    provider family that can launch one adds its model to ProbeSpec."""

    start_timeout: Duration = Field(
        timedelta(minutes=5), description="how long the drill waits for the probe to start polling (else PROBE_NOT_STARTED)"
    )


class PostgresProbe(ProbeBase):
    """The probe of `isolation.postgres: network`: a process inside the drill's network namespace,
    reaching Temporal only through a relay (a Unix socket in the cluster directory)."""

    start_timeout: Duration = Field(timedelta(minutes=2), description="how long the drill waits for the probe to start polling")
    temporal_address: Optional[str] = Field(
        None,
        pattern=r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$",
        description="host:port of the Temporal frontend the relay forwards to (default: the worker's own)",
    )
    temporal_namespace: Optional[str] = Field(None, description="the probe's Temporal namespace (default: the worker's own)")


_AWS_SECRET_RE = r"^arn:aws(-[a-z]+)*:(secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@!-]+|ssm:[a-z0-9-]+:\d{12}:parameter/[A-Za-z0-9/_.-]+)$"
_AZURE_SECRET_RE = r"^https://[A-Za-z0-9.:-]+/secrets/[A-Za-z0-9-]{1,127}(/[0-9a-fA-F]{32})?$"
_GCP_SECRET_RE = r"^projects/[a-z0-9-]{1,63}/secrets/[A-Za-z0-9_-]{1,255}/versions/(latest|\d+)$"


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


class AwsProbe(CloudProbe):
    """`isolation.probe.aws`: an EC2 instance in the drill's VPC, from `ami` or `launch_template`."""

    ami: Optional[str] = Field(None, pattern=r"^ami-[0-9a-f]{8,17}$", description="an AMI with drdrill installed (deploy/aws/probe.md)")
    launch_template: Optional[str] = Field(
        None, pattern=r"^(lt-[0-9a-f]{8,17}|[A-Za-z0-9()./_-]{3,128})$", description="a launch template (id or name) giving the image"
    )
    instance_type: Optional[str] = Field(None, pattern=r"^[a-z0-9]+\.[a-z0-9]+$", description="default t3.micro (or the launch template's)")
    instance_profile: Optional[str] = Field(
        None, description="name or ARN of the instance profile whose role reads the probe's secrets, and nothing else"
    )
    # secrets: per target, a Secrets Manager secret ARN or SSM parameter ARN holding its database password
    SECRET_REFERENCE: ClassVar[tuple[str, str]] = (_AWS_SECRET_RE, "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-db-AbCdEf")

    @model_validator(mode="after")
    def _one_image(self) -> "AwsProbe":
        if (self.ami is None) == (self.launch_template is None):
            raise ValueError("probe.aws names its image with either 'ami' or 'launch_template', exactly one")
        return self


class AzureProbe(CloudProbe):
    """`isolation.probe.azure`: a VM in the drill's subnet, from `image`, started by its custom data."""

    image: str = Field(
        pattern=r"^(/subscriptions/.+|[^:\s]+:[^:\s]+:[^:\s]+:[^:\s]+)$",
        description="an image with drdrill installed: an ARM image id, or publisher:offer:sku:version (deploy/azure/probe.md)",
    )
    size: str = Field("Standard_B1s", pattern=r"^[A-Za-z0-9_]+$", description="the VM size")
    managed_identity: Optional[str] = Field(
        None,
        pattern=r"^/subscriptions/[^/]+/resource[gG]roups/[^/]+/providers/Microsoft\.ManagedIdentity/userAssignedIdentities/[^/]+$",
        description="ARM id of the user-assigned identity that may read the probe's secrets, and nothing else",
    )
    # secrets: per target, a Key Vault secret URL holding its database password
    SECRET_REFERENCE: ClassVar[tuple[str, str]] = (_AZURE_SECRET_RE, "https://shop-vault.vault.azure.net/secrets/shop-db-password")


class GcpProbe(CloudProbe):
    """`isolation.probe.gcp`: an instance in the drill's subnetwork, from `image`, started by its startup script."""

    image: str = Field(
        pattern=r"^(https://www\.googleapis\.com/compute/v1/)?projects/[a-z0-9-]+/global/images/(family/)?[a-z0-9-]+$",
        description="an image with drdrill installed: projects/P/global/images/NAME or .../images/family/F (deploy/gcp/probe.md)",
    )
    machine_type: str = Field("e2-small", pattern=r"^[a-z0-9-]+$")
    zone: Optional[str] = Field(None, pattern=r"^[a-z]+-[a-z]+\d+-[a-z]$", description="default: a zone of the drill's region")
    service_account: Optional[str] = Field(
        None, pattern=r"^[^@\s]+@[a-z0-9-]+\.iam\.gserviceaccount\.com$",
        description="the service account that may read the probe's secrets, and nothing else",
    )
    # secrets: per target, a Secret Manager secret version holding its database password
    SECRET_REFERENCE: ClassVar[tuple[str, str]] = (_GCP_SECRET_RE, "projects/shop-prod/secrets/shop-db-password/versions/latest")


class ProbeSpec(Strict):
    """Probes per provider family, each a ProbeBase: `postgres` (isolation.postgres: network) and the
    clouds' (`aws`, `azure`, `gcp`), booted inside the drill's network."""

    postgres: Optional[PostgresProbe] = None
    aws: Optional[AwsProbe] = None
    azure: Optional[AzureProbe] = None
    gcp: Optional[GcpProbe] = None

    def for_family(self, family: str) -> Optional[ProbeBase]:
        """The probe this drill asks for in `family`'s isolated network, if any."""
        probe = getattr(self, family, None)
        return probe if isinstance(probe, ProbeBase) else None


class IsolationSpec(Strict):
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
    probe: ProbeSpec = Field(default_factory=ProbeSpec, description="run checks inside the isolated network, per provider family")

    @model_validator(mode="after")
    def _probe_needs_a_network(self) -> "IsolationSpec":
        if self.probe.postgres is not None and self.postgres != "network":
            raise ValueError(
                "probe.postgres runs inside the drill's network namespace: set 'postgres: network' in isolation, or remove probe.postgres"
            )
        return self


# ---------------------------------------------------------------- validations

_EXPECT_RE = re.compile(r"^\s*(==|!=|>=|<=|>|<)\s*(.+?)\s*$")


class ValidationBase(Strict):
    name: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,79}$")
    required: bool = Field(True, description="a required check gates the verdict and the RTO")
    timeout: Duration = Field(timedelta(minutes=5), description="how long the check may keep retrying")


class DataValidation(ValidationBase):
    target: str = Field(description="name of a restored target")
    database: Optional[str] = None


class SqlValidation(DataValidation):
    type: Literal["sql"]
    query: str = Field(min_length=1)
    expect: str = Field(description="comparison with the first column of the first row: '> 0', '== 42', \"== 'ok'\"")

    @field_validator("expect")
    @classmethod
    def _expect(cls, v: str) -> str:
        if not _EXPECT_RE.match(v):
            raise ValueError(f"{v!r} is not a comparison: write '> 0', '>= 10', '== 42', '!= 0' or \"== 'ok'\"")
        return v


class RowCountValidation(DataValidation):
    type: Literal["row_count"]
    table: str = Field(min_length=1)
    min: Optional[int] = Field(None, ge=0)
    equals_manifest: bool = Field(False, description="the count must equal the backup manifest's count")

    @model_validator(mode="after")
    def _one(self) -> "RowCountValidation":
        if self.min is None and not self.equals_manifest:
            raise ValueError("row_count needs 'min: N' or 'equals_manifest: true'")
        return self


class ChecksumValidation(DataValidation):
    type: Literal["checksum"]
    tables: Optional[list[str]] = Field(None, description="default: every table in the manifest")


class FreshnessValidation(DataValidation):
    type: Literal["freshness"]
    table: str = Field(min_length=1)
    column: str = Field(min_length=1, description="a timestamp column; its newest value is the measured recovery point")
    max_lag: Optional[Duration] = Field(None, description="default: the drill's RPO objective")


def _percent(value: Any) -> float:
    """`10%` (or a number of percent) -> 10.0, between 0 and 100."""
    text = value.strip()[:-1].strip() if isinstance(value, str) and value.strip().endswith("%") else None
    try:
        number = float(text) if text is not None else (float(value) if not isinstance(value, (bool, str)) else None)
    except (TypeError, ValueError):
        number = None
    if number is None or number != number:
        raise ValueError(f"{value!r} is not a percentage: write it like 10%")
    if not 0 <= number <= 100:
        raise ValueError(f"{value!r} is not between 0% and 100%")
    return number


Percent = Annotated[float, BeforeValidator(_percent)]


class VolumeValidation(DataValidation):
    """Row counts against the last PASSED run of the same drill: a table that lost more than
    `tolerance` of its rows fails; growth never does. The first run has nothing to compare with."""

    type: Literal["volume"]
    tolerance: Percent = Field(10.0, description="a table may lose at most this share of its rows, e.g. 10%")
    tables: Optional[list[str]] = Field(None, description="default: every table of the restore (and of the earlier run)")


# `{field}` in a url template: an endpoint field of the check's target (see template_fields).
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


class BoundaryValidation(DataValidation):
    """The moment recovered to, proven from both sides: rows written at or before it survived (the
    newest is at most `max_gap` older than it) and no row written after it exists. The moment is the
    recovery target of a point-in-time recovery, the moment its replay reached for `latest`, or the
    recovery point's consistent time otherwise."""

    type: Literal["boundary"]
    table: Optional[str] = Field(None, min_length=1, description="a table whose rows carry the time they were written")
    column: Optional[str] = Field(None, min_length=1, description="with table: the timestamp column")
    query: Optional[str] = Field(None, min_length=1, description="instead of table and column: a query returning one timestamp per row")
    max_gap: Duration = Field(
        timedelta(minutes=1),
        description="how much older than the moment the newest surviving row may be: how often the table is written (1s-marker rows: 2s)",
    )

    @model_validator(mode="after")
    def _rows(self) -> "BoundaryValidation":
        if self.query is None and (self.table is None or self.column is None):
            raise ValueError("boundary needs 'table' and 'column' (a timestamp column), or 'query' returning one timestamp per row")
        if self.query is not None and (self.table is not None or self.column is not None):
            raise ValueError("boundary takes either 'table' and 'column' or 'query', not both")
        return self


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


class TcpValidation(ValidationBase):
    """A TCP connect: to a fixed `host`, or to a restored `target`'s host (its endpoint's `host`)."""

    type: Literal["tcp"]
    host: Optional[str] = Field(None, description="a fixed host; or name a target instead")
    target: Optional[str] = Field(None, description="a restored target: its endpoint's host")
    port: Optional[int] = Field(None, ge=1, le=65535, description="default with a target: its endpoint's port")

    @model_validator(mode="after")
    def _one_address(self) -> "TcpValidation":
        if (self.host is None) == (self.target is None):
            raise ValueError("a tcp check names either 'host' (a fixed address) or 'target' (a restored target), exactly one")
        if self.host is not None and self.port is None:
            raise ValueError("a tcp check with a fixed host needs 'port'")
        return self


class HttpValidation(ValidationBase):
    """An HTTP GET of a fixed `url`, a url template filled from a restored `target`'s endpoint
    (`http://{host}:8080/health`), or `target` + `path` + `port`."""

    type: Literal["http"]
    url: Optional[str] = Field(None, pattern=r"^https?://", description="a URL, or a template naming endpoint fields: http://{host}:8080/health")
    target: Optional[str] = Field(None, description="a restored target whose endpoint fills the template or gives the host")
    path: Optional[str] = Field(None, pattern=r"^/", description="with target and port: the path to GET")
    port: Optional[int] = Field(None, ge=1, le=65535, description="with target and path")
    scheme: Literal["http", "https"] = "http"
    expect_status: int = Field(200, ge=100, le=599)
    contains: Optional[str] = None

    @model_validator(mode="after")
    def _one_address(self) -> "HttpValidation":
        if (self.url is None) == (self.path is None):
            raise ValueError("an http check has either 'url' (a URL or a template such as http://{host}:8080/health) or 'path' with 'target' and 'port'")
        if self.path is not None and (self.target is None or self.port is None):
            raise ValueError("'path' needs 'target' and 'port': the URL is <scheme>://<the target's host>:<port><path>")
        if self.url is not None:
            if template_fields(self.url) and self.target is None:
                raise ValueError(f"{self.url!r} names endpoint fields: add 'target:' to say whose")
            if self.port is not None:
                raise ValueError("'port' goes with 'path'; put the port in the url")
        return self


class CommandValidation(ValidationBase):
    type: Literal["command"]
    argv: list[str] = Field(min_length=1)
    expect_exit: int = 0
    target: Optional[str] = Field(None, description="target whose connection details are passed as DRDRILL_* variables")
    env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        default_factory=list,
        description="names of the worker's variables the command gets (its secrets, say); their values are redacted "
        "wherever they appear. Nothing else of the worker's environment is passed but PATH, locale and the cloud SDKs' own",
    )


Validation = Annotated[
    Union[
        SqlValidation,
        RowCountValidation,
        ChecksumValidation,
        FreshnessValidation,
        VolumeValidation,
        BoundaryValidation,
        TcpValidation,
        HttpValidation,
        CommandValidation,
    ],
    Field(discriminator="type"),
]

VALIDATION_TYPES = _discriminators(Validation, "type")

# ---------------------------------------------------------------- the rest


class Objectives(Strict):
    rto: Duration = Field(description="recovery time objective: declared → last required check passed")
    rpo: Duration = Field(description="recovery point objective: data loss tolerated")


class TeardownSpec(Strict):
    hold: Duration = Field(timedelta(0), description="keep the environment this long after validation, for inspection")
    max_hold: Duration = Field(timedelta(hours=8), description="upper bound for hold plus every extension")

    @model_validator(mode="after")
    def _bound(self) -> "TeardownSpec":
        if self.hold > self.max_hold:
            raise ValueError("hold is longer than max_hold: raise max_hold or shorten hold")
        return self


_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class QuarterlySchedule(Strict):
    month: int = Field(1, ge=1, le=3, description="month of the quarter (1-3)")
    day: int = Field(1, ge=1, le=28)
    time: str = Field("02:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")


class ScheduleSpec(Strict):
    quarterly: Optional[QuarterlySchedule] = None
    cron: Optional[str] = None
    timezone: str = "UTC"
    jitter: Duration = timedelta(minutes=10)
    catchup_window: Duration = timedelta(days=1)
    paused: bool = False

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if data == "quarterly":
            return {"quarterly": {}}
        # `quarterly:` written without settings means the defaults; `quarterly: null` beside a cron
        # line is how a dumped cron schedule looks (a spec travels to the workflow as JSON).
        if isinstance(data, dict) and "quarterly" in data and data.get("quarterly") is None and data.get("cron") is None:
            data = dict(data)
            data["quarterly"] = {}
        return data

    @model_validator(mode="after")
    def _one(self) -> "ScheduleSpec":
        if (self.quarterly is None) == (self.cron is None):
            raise ValueError("a schedule is either 'quarterly' or 'cron: \"<expression>\"', exactly one")
        if self.cron is not None and len(self.cron.split()) != 5:
            raise ValueError(f"cron {self.cron!r} needs five fields: minute hour day-of-month month day-of-week")
        return self


class EvidenceSpec(Strict):
    retention: Duration = Field(timedelta(days=7 * 365), description="how long evidence must be kept")
    controls: list[str] = Field(default_factory=list, description="control ids this drill evidences")
    s3_bucket: Optional[str] = Field(None, description="copy bundles to this Object Lock bucket")


class NotifySpec(Strict):
    webhooks_env: list[str] = Field(default_factory=list, description="environment variables holding webhook URLs")
    on: list[Literal["PASSED", "FAILED", "COULD_NOT_VERIFY", "ERROR", "TEARDOWN"]] = Field(
        default_factory=lambda: ["FAILED", "COULD_NOT_VERIFY", "ERROR", "TEARDOWN"]
    )


# ---------------------------------------------------------------- recovery plans

_ACTION_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,79}$"


class PlanAction(Strict):
    """A `command` run before (`pre`) a group's restores or after (`post`) its checks passed: seed a
    feature flag, check a migration, warm a cache. It runs on the worker, or with `on: probe` inside
    the isolated network; `target` hands it a restored target's endpoint as DRDRILL_* variables.
    Like a `command` check it is tried again until it exits with `expect_exit` or its timeout passes
    (and Temporal runs it again if a worker dies mid-way): write actions that are safe to run twice.
    One that does not succeed stops the plan with a finding; everything is still torn down."""

    name: Optional[str] = Field(None, pattern=_ACTION_NAME_RE)
    argv: list[str] = Field(min_length=1)
    on: Literal["worker", "probe"] = Field("worker", description="worker, or probe: inside the isolated network (isolation.probe.<family>)")
    target: Optional[str] = Field(None, description="a target restored before the action runs: its endpoint as DRDRILL_* variables")
    expect_exit: int = 0
    timeout: Duration = Field(timedelta(minutes=5), description="how long the action may keep trying")
    env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        default_factory=list, description="names of the worker's variables the action gets, as a command check's `env`"
    )

    def label(self, when: str, index: int) -> str:
        return f"{when}:{self.name or index + 1}"


def _one_or_list(v: Any) -> Any:
    return [v] if isinstance(v, (str, dict)) else v


class PlanGroup(Strict):
    """A group of a recovery plan: targets restored together, in parallel, once every group above it
    has passed its checks. See drdrill/core/plan.py."""

    group: str = Field(pattern=NAME_RE, description="the group's name, as `after`, `approve.before` and the report name it")
    targets: list[str] = Field(min_length=1, description="targets restored in this group, in parallel")
    after: list[str] = Field(default_factory=list, description="groups this one needs; each must be listed above it (lint checks the order)")
    checks: list[Validation] = Field(default_factory=list, max_length=1000, description="must pass before the next group starts")
    pre: list[PlanAction] = Field(default_factory=list, description="commands run, in order, before the group's restores")
    post: list[PlanAction] = Field(default_factory=list, description="commands run, in order, after the group's checks passed")
    rto: Optional[Duration] = Field(None, description="this group's objective: declared disaster -> the group recovered (its checks passed)")

    @field_validator("targets", "after", mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return _one_or_list(v)

    def check_name(self, index: int) -> str:
        """A group check's name: its own, else `<type>:<target>` like a drill's checks, else `<group>:<type>:<n>`."""
        v = self.checks[index]
        if v.name:
            return v.name
        tgt = getattr(v, "target", None)
        return f"{v.type}:{tgt}" if tgt else f"{self.group}:{v.type}:{index}"


class Approver(Strict):
    """Someone who may answer an approval gate, named with the public SSH key they sign with (as
    git's allowed_signers does). `drdrill approve` signs its answer with the private half; the
    workflow accepts only an answer whose signature verifies against one of the gate's keys."""

    name: str = Field(min_length=1, max_length=200, description="who this is: the name the evidence gives")
    key: str = Field("", description='the public key, as in ~/.ssh/id_ed25519.pub: "ssh-ed25519 AAAA…" (required: lint refuses an approver without)')
    role: Literal["approver", "console"] = Field(
        "approver", description="console: a web console that signs on behalf of an approver it authenticated (payload on_behalf_of)"
    )

    @field_validator("key")
    @classmethod
    def _a_key(cls, v: str) -> str:
        if not v:
            return v  # a record from before approvals were signed; parse_spec refuses it in a drill file
        try:
            return sshsig.parse_public_key(v).line
        except sshsig.SignatureError as exc:
            raise ValueError(f"{exc}: paste the line of the approver's ~/.ssh/id_ed25519.pub") from None


PLAIN_APPROVER = (
    "approver {name!r} has no key: an approval is signed, so name each approver with their public SSH key: "
    '{{name: {name}, key: "ssh-ed25519 AAAA…"}} (the line of their ~/.ssh/id_ed25519.pub), '
    "or list them in approvers_file (allowed_signers format)"
)


class ApprovalGate(Strict):
    """A person looks before a group starts: the plan pauses ("waiting for approval"), the webhooks
    are told who can approve and how, and a signed `drdrill approve ID` continues it or
    `drdrill reject ID` ends it FAILED. Nobody answering within `timeout` is a finding, and the
    drill tears down. See docs/security.md, "Approvals and the sweep"."""

    before: str = Field(description="the group that waits for the approval")
    timeout: Duration = Field(timedelta(hours=2), description="how long the plan waits for an answer")
    approvers: list[Approver] = Field(default_factory=list, description="who may approve or reject: a name and a public SSH key each")
    approvers_file: Optional[str] = Field(
        None, description="a file of approvers in git's allowed_signers format (`alice ssh-ed25519 AAAA…`), relative to the drill file"
    )

    @field_validator("approvers", mode="before")
    @classmethod
    def _list(cls, v: Any) -> Any:
        # A plain name is kept readable (evidence recorded before approvals were signed holds
        # them); a drill file that has one is refused by parse_spec (_approvers_without_keys).
        v = _one_or_list(v)
        return [{"name": item} if isinstance(item, str) else item for item in v] if isinstance(v, list) else v

    @field_validator("timeout")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("timeout must be longer than 0s")
        return v

    @model_validator(mode="after")
    def _someone(self) -> "ApprovalGate":
        if not self.approvers and not self.approvers_file:
            raise ValueError("a gate needs approvers: list them with their public SSH keys (approvers:) or name an allowed_signers file (approvers_file:)")
        return self

    @property
    def names(self) -> list[str]:
        """Who may answer, by name (a console's name among them)."""
        return [a.name for a in self.approvers]


class DrillSpec(Strict):
    version: Literal[1] = 1
    name: str = Field(pattern=NAME_RE)
    description: str = ""
    owner: Optional[str] = None
    objectives: Objectives
    max_duration: Duration = Field(timedelta(hours=4), description="the drill is stopped and torn down after this")
    targets: list[Target] = Field(min_length=1, max_length=500)
    isolation: IsolationSpec = Field(default_factory=IsolationSpec)
    validations: list[Validation] = Field(default_factory=list, max_length=1000)
    plan: Optional[list[PlanGroup]] = Field(
        None, min_length=1, max_length=100, description="groups of targets restored in this order (default: every target at once)"
    )
    approve: list[ApprovalGate] = Field(default_factory=list, description="approval gates before groups of the plan")
    teardown: TeardownSpec = Field(default_factory=TeardownSpec)
    schedule: Optional[ScheduleSpec] = None
    evidence: EvidenceSpec = Field(default_factory=EvidenceSpec)
    notify: NotifySpec = Field(default_factory=NotifySpec)

    # Set by the loader, not by the file.
    source_path: Optional[str] = Field(None, exclude=False)
    source_sha256: Optional[str] = None
    source_text: Optional[str] = None

    @field_validator("approve", mode="before")
    @classmethod
    def _one_gate_or_more(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _references(self) -> "DrillSpec":
        names = [t.name for t in self.targets]
        seen: set[str] = set()
        for i, n in enumerate(names):
            if n in seen:
                raise _RefError(("targets", i, "name"), f"target name {n!r} is used twice; target names must be unique")
            seen.add(n)
        for i, v in enumerate(self.validations):
            tgt = getattr(v, "target", None)
            if tgt is not None and tgt not in seen:
                raise _RefError(
                    ("validations", i, "target"),
                    f"no target named {tgt!r}; this drill's targets are: {', '.join(names)}",
                )
        vnames = [self.validation_name(i) for i in range(len(self.validations))]
        dupes = {n for n in vnames if vnames.count(n) > 1}
        if dupes:
            raise _RefError(("validations",), f"validation names must be unique; repeated: {', '.join(sorted(dupes))} (set 'name:')")
        return self

    @model_validator(mode="after")
    def _after_restore_needs_a_network(self) -> "DrillSpec":
        for i, t in enumerate(self.targets):
            if isinstance(t, PostgresTarget) and t.restore.after is not None and self.isolation.postgres != "network":
                raise _RefError(
                    ("targets", i, "restore", "after"),
                    "restore.after starts an application inside the drill's network namespace: set isolation.postgres: network "
                    "(on the default private socket it would run on the worker's own network, next to production)",
                )
            if isinstance(t, PostgresTarget) and t.restore.environment and t.restore.after is None:
                raise _RefError(
                    ("targets", i, "restore", "environment"),
                    "restore.environment is handed to the application restore.after starts: add restore.after, or remove environment",
                )
        return self

    @model_validator(mode="after")
    def _plan_references(self) -> "DrillSpec":
        problem = plan_problem(self)
        if problem is not None:
            raise problem
        return self

    @model_validator(mode="after")
    def _probe_secrets_name_targets(self) -> "DrillSpec":
        for family in ("aws", "azure", "gcp"):
            probe = getattr(self.isolation.probe, family)
            ours = [t.name for t in self.targets if t.provider.split(".", 1)[0] == family]
            for name in (probe.secrets if probe is not None else {}):
                if name not in ours:
                    raise _RefError(
                        ("isolation", "probe", family, "secrets", name),
                        f"no {family} target named {name!r}; the {family} probe reads secrets for: {', '.join(ours) or 'no target'}",
                    )
        return self

    @model_validator(mode="after")
    def _boundary_checks(self) -> "DrillSpec":
        """Tell each postgres source which boundary checks prove its moment: a point-in-time
        recovery without one is PITR_UNASSERTED (the provider sees the target, not the checks)."""
        for t in self.targets:
            if isinstance(t, PostgresTarget) and t.source is not None:
                t.source.boundary_checks = [
                    self.validation_name(i) for i, v in enumerate(self.validations) if v.type == "boundary" and v.target == t.name
                ]
        return self

    def validation_name(self, index: int) -> str:
        v = self.validations[index]
        if v.name:
            return v.name
        tgt = getattr(v, "target", None)
        return f"{v.type}:{tgt}" if tgt else f"{v.type}:{index}"

    def target(self, name: str):
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(name)

    def warnings(self) -> list["SpecWarning"]:
        """What this drill allows but almost certainly does not mean. A warning never stops a drill:
        `drdrill lint` prints it and exits 0, `drdrill run` prints it before starting."""
        path = self.source_path or "<drill>"
        return [SpecWarning(path, field, message) for check in WARNING_CHECKS for field, message in check(self)]


# ---------------------------------------------------------------- the coverage policy

COVERAGE_FILE = "coverage.yaml"  # in the drill directory, beside the drill files


class CoverageNotify(Strict):
    webhooks_env: list[str] = Field(default_factory=list, description="environment variables holding webhook URLs")


class CoverageSpec(Strict):
    """How often every protected resource must be restored: `drdrill coverage`, the period
    report's coverage control and the scheduled coverage check read it."""

    every: Literal["quarter", "month", "year"] = Field("quarter", description="each protected resource is restored once per this period")
    min_fraction: float = Field(1.0, ge=0.0, le=1.0, description="the share of protected resources restored in the period for the control to be met")
    protected_tag: Optional[str] = Field(
        None, min_length=1, description="resources carrying this tag (any value) are protected, as are those with recovery points"
    )
    protected_by: Literal["tag_or_points", "tag"] = Field(
        "tag_or_points", description="tag: only resources carrying protected_tag are protected (not every one with recovery points)"
    )
    regions: list[str] = Field(default_factory=list, description="cloud regions to read besides those the drill files name and DRDRILL_AWS_REGIONS")
    recovery_point_max_age: Duration = Field(timedelta(days=7), description="an older newest recovery point is NO_RECENT_RECOVERY_POINT")
    alert_before: Duration = Field(timedelta(days=14), description="the scheduled check alerts when the period ends within this")
    providers: list[Literal["postgres", "aws", "azure", "gcp"]] = Field(
        default_factory=list, description="provider inventories to read besides those of the drill files' targets"
    )
    notify: CoverageNotify = Field(default_factory=CoverageNotify)


    @model_validator(mode="after")
    def _tag_needs_a_tag(self) -> "CoverageSpec":
        if self.protected_by == "tag" and not self.protected_tag:
            raise ValueError("protected_by: tag needs protected_tag: name the tag that marks a protected resource (e.g. protected_tag: backup-plan)")
        return self


class CoveragePolicy(Strict):
    coverage: CoverageSpec


def parse_coverage_policy(text: str, path: str = COVERAGE_FILE) -> CoverageSpec:
    """Parse a coverage policy file, as strictly as a drill file: SpecError names the field and the fix."""
    try:
        data, duplicates = _load_yaml(text)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:
        raise SpecError(path, [("", f"not valid YAML: {str(exc).splitlines()[0]}")]) from None
    if duplicates:
        raise SpecError(path, [(f"line {line}", message) for line, message in duplicates])
    try:
        return CoveragePolicy.model_validate(data if data is not None else {}).coverage
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            if err.get("type") == "extra_forbidden":
                owner = CoveragePolicy if len(loc) == 1 else CoverageNotify if loc[:2] == ("coverage", "notify") else CoverageSpec
                problems.append((_loc_str(loc), f"unknown key '{loc[-1]}'; allowed here: {', '.join(owner.model_fields)}"))
            elif err.get("type") == "model_type" and not loc:
                problems.append(("", "a coverage policy is a mapping: coverage: {every: quarter, min_fraction: 1.0, protected_tag: backup-plan}"))
            else:
                problems.append(_friendly(err, {}))
        raise SpecError(path, problems) from None


def load_coverage_policy(drills_dir: str | Path) -> Optional[CoverageSpec]:
    """The policy in `<drills_dir>/coverage.yaml`; None when there is none."""
    path = Path(drills_dir) / COVERAGE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as exc:
        raise SpecError(str(path), [("", f"cannot be read: {exc}")]) from None
    return parse_coverage_policy(text, str(path))


# ---------------------------------------------------------------- warnings


@dataclass(frozen=True)
class SpecWarning:
    """A drill file that runs, but not as its author expects: the file, the field path and the fix."""

    path: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.field}: {self.message}"


def _rto_beyond_max_duration(spec: DrillSpec) -> Iterator[tuple[str, str]]:
    """The drill is stopped and torn down at max_duration, so an RTO above it can never be met."""
    rto, limit = spec.objectives.rto, spec.max_duration
    if rto > limit:
        yield (
            "objectives.rto",
            f"objectives.rto ({format_duration(rto)}) is longer than max_duration ({format_duration(limit)}); "
            "the drill is stopped at max_duration, so it can never meet this objective: "
            f"raise max_duration to at least {format_duration(rto)} or lower objectives.rto",
        )


def _pitr_without_boundary(spec: DrillSpec) -> Iterator[tuple[str, str]]:
    """A point-in-time recovery that merely came up proves nothing about the moment it reached."""
    for i, t in enumerate(spec.targets):
        if isinstance(t, PostgresTarget) and t.source is not None and t.source.pitr and not t.source.boundary_checks:
            yield (
                f"targets[{i}]",
                f"target {t.name} is recovered to a point in time but no boundary check proves the moment: the drill "
                f"ends COULD_NOT_VERIFY (PITR_UNASSERTED); add {{type: boundary, target: {t.name}, table: ..., column: ...}}",
            )


def _gate_beyond_max_duration(spec: DrillSpec) -> Iterator[tuple[str, str]]:
    """A gate that may wait longer than the whole drill may run: the drill is stopped first."""
    for i, gate in enumerate(spec.approve):
        if gate.timeout >= spec.max_duration:
            yield (
                f"approve[{i}].timeout",
                f"the gate before group {gate.before} waits up to {format_duration(gate.timeout)}, but the drill is stopped at "
                f"max_duration ({format_duration(spec.max_duration)}): raise max_duration or shorten the gate's timeout",
            )


# Each check yields (field path, message with the fix); add new warnings here.
WARNING_CHECKS: tuple[Callable[[DrillSpec], Iterator[tuple[str, str]]], ...] = (
    _rto_beyond_max_duration,
    _pitr_without_boundary,
    _gate_beyond_max_duration,
)


def _recovery_target_in_the_future(spec: DrillSpec, now: datetime) -> Iterator[tuple[str, str]]:
    """A point-in-time recovery to a moment that has not happened can only run out of WAL."""
    for i, t in enumerate(spec.targets):
        at = t.recovery_point.at
        if isinstance(t, PostgresTarget) and t.source is not None and t.source.pitr and at is not None and at > now:
            yield (
                f"targets[{i}].recovery_point.at",
                f"{at.isoformat()} is in the future (now {now.replace(microsecond=0).isoformat()}): the archive cannot "
                "reach it; give a moment that has passed, or use rule latest",
            )


# Checks of a drill file against the moment it is loaded (never run again inside a workflow,
# which must not read the clock): each yields (field path, message with the fix).
LOAD_CHECKS: tuple[Callable[[DrillSpec, datetime], Iterator[tuple[str, str]]], ...] = (_recovery_target_in_the_future,)


class _RefError(ValueError):
    def __init__(self, loc: tuple, message: str):
        super().__init__(message)
        self.loc = loc
        self.message = message


# ---------------------------------------------------------------- endpoint fields

# (provider kind, isolation) -> the endpoint fields that kind publishes, or None when unknown here.
# Set by drdrill.providers (each provider's ENDPOINT_FIELDS), which this layer may not import.
EndpointFieldsLookup = Callable[[str, IsolationSpec], Optional[tuple[str, ...]]]
_endpoint_fields: Optional[EndpointFieldsLookup] = None


def set_endpoint_fields(lookup: Optional[EndpointFieldsLookup]) -> None:
    """Install the lookup that `parse_spec` checks tcp/http targets and url templates against."""
    global _endpoint_fields
    _endpoint_fields = lookup


def endpoint_problems(spec: DrillSpec, lookup: Optional[EndpointFieldsLookup] = None) -> list[tuple[str, str]]:
    """tcp and http checks that name a target, against the fields the target's provider publishes:
    a url template naming an unknown field, or a target without the `host` (or `port`) the check
    needs; and restore.environment references to an endpoint field the target does not publish.
    (field path, message naming the field and the known ones)."""
    lookup = lookup or _endpoint_fields
    if lookup is None:
        return []
    problems = []
    checks = [(f"validations[{i}]", v) for i, v in enumerate(spec.validations)]
    checks += [(f"plan[{gi}].checks[{ci}]", v) for gi, g in enumerate(spec.plan or []) for ci, v in enumerate(g.checks)]
    for path, v in checks:
        if not isinstance(v, (TcpValidation, HttpValidation)) or v.target is None:
            continue
        target = spec.target(v.target)
        known = lookup(target.provider, spec.isolation)
        if known is None:
            continue
        who, fields = f"target {target.name} ({target.provider})", ", ".join(known) or "none"
        if isinstance(v, HttpValidation) and v.url is not None:
            needed, where = template_fields(v.url), "url"
        else:
            needed, where = ["host"], "target"
            if isinstance(v, TcpValidation) and v.port is None:
                needed.append("port")
        for name in needed:
            if name in known:
                continue
            if where == "url":
                problems.append((f"{path}.url", f"{{{name}}} is not an endpoint field of {who}; known fields: {fields}"))
            else:
                fix = "set 'port:'" if name == "port" else "use a fixed 'host'/'url' or a target that publishes a host"
                if name == "host" and target.provider == "postgres":
                    fix = "the default isolation has no TCP listener (use an sql check); set isolation.postgres: network for one"
                problems.append((f"{path}.target", f"{v.type} needs the target's {name}, but {who} publishes only: {fields}; {fix}"))
    for i, t in enumerate(spec.targets):
        for key, ref in _environment_refs(t):
            if ref.kind != "targets" or ref.name not in {x.name for x in spec.targets}:
                continue
            source = spec.target(ref.name)
            known = lookup(source.provider, spec.isolation)
            if known is not None and ref.field not in known:
                problems.append(
                    (
                        f"targets[{i}].restore.environment.{key}",
                        f"{ref.text}: {ref.field} is not an endpoint field of target {source.name} ({source.provider}); "
                        f"known fields: {', '.join(known) or 'none'}",
                    )
                )
    return problems


# ---------------------------------------------------------------- recovery plans: what lint checks


def _environment_refs(target: Any) -> Iterator[tuple[str, EnvironmentRef]]:
    """(variable, reference) for every reference in a target's restore.environment."""
    for key, value in (getattr(target.restore, "environment", None) or {}).items():
        for ref in environment_refs(value):
            yield key, ref


def _probe_families(spec: DrillSpec) -> list[str]:
    return [name for name in type(spec.isolation.probe).model_fields if spec.isolation.probe.for_family(name) is not None]


def plan_problem(spec: DrillSpec) -> Optional["_RefError"]:
    """The first thing wrong with the drill's recovery plan, its approval gates or its environment
    references (each names the field and the fix); None when they hold.

    Groups run in the order listed, so everything is checked against that order: a target restores
    in exactly one group; `after` names groups above; a group's checks and post-actions may name
    its own targets and earlier groups', a pre-action only earlier groups' (its own are not restored
    yet); an endpoint flows forward only, from an earlier group's target.

    Over 80 lines: one pass down the plan in its order, each rule beside the state it needs (the
    groups seen so far); split up, every piece would need that state handed to it."""
    names = [t.name for t in spec.targets]
    if spec.plan is None:
        if spec.approve:
            return _RefError(
                ("approve",), "an approval gate holds back a group of the plan: add plan: (the groups restored in order), or remove approve"
            )
        for i, t in enumerate(spec.targets):
            for key, ref in _environment_refs(t):
                if ref.kind == "targets":
                    return _RefError(
                        ("targets", i, "restore", "environment", key),
                        f"{ref.text} needs target {ref.name} restored before {t.name}, but without a plan every target restores at once: "
                        f"add plan: with {ref.name} in a group above {t.name}'s",
                    )
        return None
    groups = [g.group for g in spec.plan]
    group_of: dict[str, int] = {}
    for gi, g in enumerate(spec.plan):
        if g.group in groups[:gi]:
            return _RefError(("plan", gi, "group"), f"group name {g.group!r} is used twice; group names must be unique")
        for ti, name in enumerate(g.targets):
            if name not in names:
                return _RefError(("plan", gi, "targets", ti), f"no target named {name!r}; this drill's targets are: {', '.join(names)}")
            if name in group_of:
                earlier = spec.plan[group_of[name]].group
                return _RefError(("plan", gi, "targets", ti), f"target {name} is already in group {earlier}: a target restores in one group")
            group_of[name] = gi
        for ai, after in enumerate(g.after):
            if after not in groups:
                return _RefError(("plan", gi, "after", ai), f"no group named {after!r}; this plan's groups are: {', '.join(groups)}")
            if after == g.group:
                return _RefError(("plan", gi, "after", ai), f"group {g.group} names itself in after: name the groups above it that it needs")
            if groups.index(after) >= gi:
                return _RefError(
                    ("plan", gi, "after", ai),
                    f"group {g.group} cannot run after {after}: groups run in the order they are listed; move group {after} above {g.group}",
                )
    for t in spec.targets:
        if t.name not in group_of:
            return _RefError(("plan",), f"target {t.name} is in no group: add it to the targets of a group (each target restores in one group)")
    for gi, g in enumerate(spec.plan):
        for ci, v in enumerate(g.checks):
            tgt = getattr(v, "target", None)
            if tgt is None:
                continue
            if tgt not in names:
                return _RefError(("plan", gi, "checks", ci, "target"), f"no target named {tgt!r}; this drill's targets are: {', '.join(names)}")
            if group_of[tgt] > gi:
                return _RefError(
                    ("plan", gi, "checks", ci, "target"),
                    f"target {tgt} restores in group {spec.plan[group_of[tgt]].group}, after group {g.group}: a group's checks "
                    "may name its own targets and those of the groups above it",
                )
        for when in ("pre", "post"):
            for ai, action in enumerate(getattr(g, when)):
                problem = _action_problem(spec, group_of, gi, when, ai, action)
                if problem is not None:
                    return problem
    gated: dict[str, int] = {}
    for i, gate in enumerate(spec.approve):
        if gate.before not in groups:
            return _RefError(("approve", i, "before"), f"no group named {gate.before!r}; this plan's groups are: {', '.join(groups)}")
        if gate.before in gated:
            first = gated[gate.before]
            return _RefError(("approve", i, "before"), f"group {gate.before} already has an approval gate (approve[{first}]): one gate per group")
        gated[gate.before] = i
    for i, t in enumerate(spec.targets):
        for key, ref in _environment_refs(t):
            if ref.kind != "targets":
                continue
            loc = ("targets", i, "restore", "environment", key)
            if ref.name not in names:
                return _RefError(loc, f"{ref.text}: no target named {ref.name!r}; this drill's targets are: {', '.join(names)}")
            if ref.name == t.name:
                return _RefError(
                    loc,
                    f"{ref.text}: a target cannot be handed its own endpoint (a postgres application gets it as DRDRILL_*); "
                    "reference a target of an earlier group",
                )
            if group_of[ref.name] >= group_of[t.name]:
                return _RefError(
                    loc,
                    f"{ref.text}: target {ref.name} restores in group {spec.plan[group_of[ref.name]].group}, not before {t.name} "
                    f"(group {spec.plan[group_of[t.name]].group}): an endpoint flows forward only; move {ref.name} to a group above",
                )
            if spec.target(ref.name).select is not None:
                return _RefError(loc, f"{ref.text}: target {ref.name} selects its resources and may restore several; name a target that restores one")
    check_names = [spec.validation_name(i) for i in range(len(spec.validations))]
    check_names += [g.check_name(ci) for g in spec.plan for ci in range(len(g.checks))]
    repeated = sorted({n for n in check_names if check_names.count(n) > 1})
    if repeated:
        return _RefError(
            ("plan",), f"check names must be unique across validations and the plan's checks; repeated: {', '.join(repeated)} (set 'name:')"
        )
    return None


def _action_problem(spec: DrillSpec, group_of: dict[str, int], gi: int, when: str, ai: int, action: PlanAction) -> Optional["_RefError"]:
    """A pre-action runs before its group restores, a post-action after its checks: the target whose
    endpoint it gets must be restored by then, and `on: probe` needs a probe in that network."""
    group = spec.plan[gi].group  # type: ignore[index]
    loc = ("plan", gi, when, ai)
    family = None
    if action.target is not None:
        if action.target not in group_of:
            return _RefError(loc + ("target",), f"no target named {action.target!r}; this drill's targets are: {', '.join(group_of)}")
        last = gi - 1 if when == "pre" else gi
        if group_of[action.target] > last:
            where = "before the group's own targets restore" if when == "pre" else "after the group's checks"
            which = "a group above" if when == "pre" else "this group or one above"
            return _RefError(
                loc + ("target",),
                f"a {when}-action of group {group} runs {where}, and target {action.target} is not restored by then "
                f"(group {spec.plan[group_of[action.target]].group}): name a target of {which}",  # type: ignore[index]
            )
        family = spec.target(action.target).family
    if action.on == "probe":
        probes = _probe_families(spec)
        if family is None and len(probes) != 1:
            why = (
                "this drill has no probe: set isolation.probe.<family>"
                if not probes
                else f"this drill has probes in {', '.join(probes)}: name a 'target' to say which"
            )
            return _RefError(loc + ("on",), f"on: probe runs the action inside an isolated network; {why}")
        if family is not None and family not in probes:
            return _RefError(
                loc + ("on",), f"on: probe runs the action in a probe inside target {action.target}'s network: set isolation.probe.{family}"
            )
    return None


# ---------------------------------------------------------------- loading


class SpecError(Exception):
    """A drill file that cannot be run. `problems` holds (field path, message) pairs."""

    def __init__(self, path: str, problems: list[tuple[str, str]]):
        self.path = path
        self.problems = problems
        lines = [f"{path}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"]
        for loc, msg in problems:
            lines.append(f"  {loc or '(file)'}: {msg}")
        super().__init__("\n".join(lines))


def _loc_str(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


_TARGET_TAGS = set(PROVIDERS)
_VALIDATION_TAGS = set(VALIDATION_TYPES)


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return [n for n, f in model.model_fields.items() if n not in ("source_path", "source_sha256", "source_text", "boundary_checks")]


def _model_at(loc: tuple, data: Any) -> Optional[type[BaseModel]]:
    """Find the pydantic model that owns the mapping at `loc` (for 'allowed keys' hints)."""
    ann: Any = DrillSpec
    node = data
    for part in loc:
        if isinstance(part, int):
            inner = ann
            while typing.get_origin(inner) is Annotated:
                inner = typing.get_args(inner)[0]
            if typing.get_origin(inner) is list:
                ann = typing.get_args(inner)[0]
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        model = _resolve(ann, node)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return model
        node = node.get(part) if isinstance(node, dict) else None
        ann = field.annotation
    model = _resolve(ann, node)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _resolve(ann: Any, node: Any) -> Any:
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is Annotated:
        return _resolve(args[0], node)
    if origin in (list,):
        inner = args[0]
        if isinstance(node, list) and node:
            return _resolve(inner, node[0] if isinstance(node[0], dict) else None)
        return _resolve(inner, None)
    if origin is Union or str(origin) == "types.UnionType":
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(node, dict):
            for m in models:
                for key in ("provider", "type"):
                    f = m.model_fields.get(key)
                    if f is not None and node.get(key) in typing.get_args(f.annotation):
                        return m
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _resolve(inner[0], node)
        return models[0] if len(models) == 1 else None
    return ann


def _friendly(err: dict, data: Any) -> tuple[str, str]:
    loc = tuple(err.get("loc", ()))
    # Discriminated unions add the tag to the path ("targets.0.postgres.source"); drop it.
    clean = []
    for i, part in enumerate(loc):
        if isinstance(part, str) and (part in _TARGET_TAGS or part in _VALIDATION_TAGS) and i > 0 and isinstance(loc[i - 1], int):
            continue
        if isinstance(part, str) and part.startswith("function-"):
            continue
        clean.append(part)
    loc = tuple(clean)
    etype = err.get("type", "")
    msg = err.get("msg", "")
    if etype == "extra_forbidden":
        owner = _model_at(loc[:-1], data)
        allowed = ", ".join(_allowed_keys(owner)) if owner else ""
        key = loc[-1] if loc else "?"
        close = ""
        if owner:
            match = difflib.get_close_matches(str(key), _allowed_keys(owner), n=1)
            if match:
                close = f" (did you mean '{match[0]}'?)"
        return _loc_str(loc), f"unknown key '{key}'{close}; allowed here: {allowed}"
    if etype == "union_tag_invalid":
        ctx = err.get("ctx", {})
        tag = ctx.get("tag", "?")
        if loc and loc[0] == "targets":
            return _loc_str(loc + ("provider",)), f"unknown provider {tag!r}; allowed: {', '.join(PROVIDERS)}"
        return _loc_str(loc + ("type",)), f"unknown validation type {tag!r}; allowed: {', '.join(VALIDATION_TYPES)}"
    if etype == "union_tag_not_found":
        if loc and loc[0] == "targets":
            return _loc_str(loc + ("provider",)), f"missing 'provider'; allowed: {', '.join(PROVIDERS)}"
        return _loc_str(loc + ("type",)), f"missing 'type'; allowed: {', '.join(VALIDATION_TYPES)}"
    if etype == "missing":
        return _loc_str(loc), "required field is missing"
    if etype == "literal_error":
        return _loc_str(loc), msg.replace("Input should be", "must be")
    if etype == "string_pattern_mismatch" and loc and loc[-1] == "name":
        return _loc_str(loc), f"{err.get('input')!r} is not a valid name: {NAME_HELP}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if msg.startswith("Assertion failed, "):
        msg = msg[len("Assertion failed, ") :]
    return _loc_str(loc), msg


class _DrillLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false. YAML 1.1 also reads on/off/yes/no as
    booleans, which turns `notify: {on: [FAILED]}` into a key `True` and a country code `NO` into false.

    It also records repeated keys: YAML requires keys to be unique, but PyYAML keeps the last value,
    so a second `owner:` or `max_duration:` would silently replace the first."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []  # (line, message)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` may be overridden on purpose; only explicit keys must be unique
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = first_line.get(key)
            except TypeError:
                continue  # an unhashable key: SafeLoader reports it below
            if first is None:
                first_line[key] = line
            else:
                where = "earlier on the same line" if first == line else f"at line {first}"
                self.duplicates.append((line, f"duplicate key '{key}' (first {where}); remove one"))
        return super().construct_mapping(node, deep=deep)


_DrillLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_DrillLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_spec(text: str, path: str = "<drill>", base_dir: Optional[Path] = None) -> DrillSpec:
    """Parse drill YAML text; raise SpecError naming the file, the field path and the fix."""
    try:
        data, duplicates = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(path, [(where, f"not valid YAML: {problem}")]) from None
    except RecursionError:
        raise SpecError(path, [("", "the YAML is nested too deeply")]) from None
    except (ValueError, OverflowError, TypeError, MemoryError) as exc:
        # PyYAML's constructors raise these for e.g. an integer of more than 4300 digits.
        raise SpecError(path, [("", f"not valid YAML: {str(exc)[:200]}")]) from None
    if duplicates:
        raise SpecError(path, [(f"line {line}", message) for line, message in duplicates])
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise SpecError(path, [("", f"a drill file is a mapping with name, objectives and targets; this one is {kind}")])
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise SpecError(path, [(str(bad_keys[0]), "keys must be strings")])
    for reserved in ("source_path", "source_sha256", "source_text"):
        if reserved in data:
            raise SpecError(path, [(reserved, f"unknown key '{reserved}'; it is set by drdrill")])
    targets = data.get("targets") if isinstance(data.get("targets"), list) else []
    for i, t in enumerate(targets):
        if isinstance(t, dict) and isinstance(t.get("source"), dict) and "boundary_checks" in t["source"]:
            raise SpecError(path, [(f"targets[{i}].source.boundary_checks", "unknown key 'boundary_checks'; it is set by drdrill")])
    try:
        spec = DrillSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            ctx_err = (err.get("ctx") or {}).get("error")
            if isinstance(ctx_err, _RefError):
                problems.append((_loc_str(ctx_err.loc), ctx_err.message))
                continue
            problems.append(_friendly(err, data))
        seen = set()
        unique = [p for p in problems if not (p in seen or seen.add(p))]
        raise SpecError(path, unique) from None
    except RecursionError:
        raise SpecError(path, [("", "the YAML is nested too deeply")]) from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise SpecError(path, [("", f"cannot be read as a drill: {exc}")]) from None
    keyless = _approvers_without_keys(spec)
    if keyless:
        raise SpecError(path, keyless)
    endpoints = endpoint_problems(spec)
    if endpoints:
        raise SpecError(path, endpoints)
    now = datetime.now(timezone.utc)
    late = [problem for check in LOAD_CHECKS for problem in check(spec, now)]
    if late:
        raise SpecError(path, late)
    spec.source_path = path
    spec.source_sha256 = hashlib.sha256(text.encode()).hexdigest()
    spec.source_text = text
    _resolve_paths(spec, path, base_dir)
    _read_approvers_files(spec, path, base_dir)
    return spec


def _load_yaml(text: str) -> tuple[Any, list[tuple[int, str]]]:
    """The document and its repeated keys as (line, message), in the file's order."""
    loader = _DrillLoader(text)
    try:
        return loader.get_single_data(), sorted(loader.duplicates)
    finally:
        loader.dispose()


# ---------------------------------------------------------------- paths


def _drill_paths(spec: DrillSpec) -> Iterator[tuple[str, Any, str]]:
    """Every field of a drill that names a file or directory: (field path, owner, attribute)."""
    for i, t in enumerate(spec.targets):
        if isinstance(t, PostgresTarget) and t.source is not None:
            for field, owner, attr in (
                ("repository", t.source, "repository"),
                ("path", t.source, "path"),
                ("pgbackrest.config", t.source.pgbackrest, "config"),
                ("wal_archive.base_backups", t.source.wal_archive, "base_backups"),
                ("wal_archive.archive", t.source.wal_archive, "archive"),
            ):
                if owner is not None and getattr(owner, attr) is not None:
                    yield f"targets[{i}].source.{field}", owner, attr
            if t.restore.structure_reference:
                yield f"targets[{i}].restore.structure_reference", t.restore, "structure_reference"
            for j in range(len(t.restore.after.paths) if t.restore.after else 0):
                yield f"targets[{i}].restore.after.paths[{j}]", t.restore.after.paths, j  # type: ignore[union-attr]
        for j in range(len(t.select.repositories) if t.select else 0):
            yield f"targets[{i}].select.repositories[{j}]", t.select.repositories, j  # type: ignore[union-attr]


def unreachable_by_others(path: str) -> Optional[str]:
    """Why an unprivileged uid (restore.after's sandbox) cannot read `path`, with the fix; None: it can."""
    if not os.path.exists(path):
        return f"{path} does not exist: restore.after's sandbox sees only what exists when the drill starts"
    current = Path("/")
    for part in Path(path).parts[1:]:
        mode = os.stat(current).st_mode
        if not mode & 0o001:
            return (f"{current} is {mode & 0o777:04o}: the sandbox's unprivileged uid cannot traverse it to reach {path}; "
                    "move the application under /opt or /srv, or make the directory traversable by others (o+x)")
        current = current / part
    mode = os.stat(path).st_mode
    need = 0o005 if os.path.isdir(path) else 0o004
    if mode & need != need:
        return f"{path} is {mode & 0o777:04o}: the sandbox's unprivileged uid cannot read it; make it readable by others (o+r{'x' if need == 0o005 else ''})"
    return None


def _resolve_paths(spec: DrillSpec, path: str, base_dir: Optional[Path]) -> None:
    """Expand variables and `~` in every path of the drill; with `base_dir`, make relative paths
    relative to the drill file. Every bad path is reported at once, and nothing is created."""
    problems = []
    for field, owner, attr in _drill_paths(spec):
        try:
            value = expand_path(owner[attr] if isinstance(owner, list) else getattr(owner, attr))
            if base_dir is not None and not os.path.isabs(value):
                value = str((base_dir / value).resolve())
        except (ValueError, OSError, RuntimeError) as exc:
            problems.append((field, str(exc)))
            continue
        if isinstance(owner, list):
            owner[attr] = value
        else:
            setattr(owner, attr, value)
        if base_dir is not None and ".restore.after.paths[" in field:
            problem = unreachable_by_others(value)
            if problem:
                problems.append((field, problem))
    if problems:
        raise SpecError(path, problems)


def _approvers_without_keys(spec: DrillSpec) -> list[tuple[str, str]]:
    """An approver named without a key cannot sign: each one, with the fix."""
    return [
        (f"approve[{i}].approvers[{j}]", PLAIN_APPROVER.format(name=a.name))
        for i, gate in enumerate(spec.approve)
        for j, a in enumerate(gate.approvers)
        if not a.key
    ]


def _read_approvers_files(spec: DrillSpec, path: str, base_dir: Optional[Path]) -> None:
    """Add the approvers an `approvers_file` (allowed_signers format) names to its gate: the keys
    travel with the drill, so the workflow verifies signatures without reading a file."""
    problems = []
    for i, gate in enumerate(spec.approve):
        if not gate.approvers_file:
            continue
        field = f"approve[{i}].approvers_file"
        try:
            file = expand_path(gate.approvers_file)
            if base_dir is not None and not os.path.isabs(file):
                file = str((base_dir / file).resolve())
            entries = sshsig.parse_allowed_signers(Path(file).read_text(encoding="utf-8"))
        except (OSError, ValueError, RuntimeError) as exc:
            problems.append((field, f"{exc}: write one approver a line, `alice ssh-ed25519 AAAA…` (git's allowed_signers format)"))
            continue
        if not entries:
            problems.append((field, f"{file} names no approver: write one a line, `alice ssh-ed25519 AAAA…`"))
        gate.approvers_file = file
        gate.approvers += [Approver(name=name, key=key) for name, key in entries]
    if problems:
        raise SpecError(path, problems)


_VARIABLE_RE = re.compile(r"\$(?:\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))?")
_VARIABLE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def expand_path(text: str, env: Mapping[str, str] = os.environ) -> str:
    """Expand `${VAR}`, `$VAR` and a leading `~` in a path from a drill file.

    A variable that is not set (or is empty) is an error, never left in the path: `${VAR}/backups`
    kept literally is a relative directory that `drdrill backup` would create wherever it runs, and
    an empty one turns `${VAR}/backups` into `/backups`. DRDRILL_STATE_DIR is always known: it
    defaults to drdrill's state directory, as it does for `drdrill run`."""

    def variable(match: re.Match) -> str:
        name = match.group("braced") if match.group("braced") is not None else match.group("bare")
        if name is None or not _VARIABLE_NAME_RE.match(name):
            raise ValueError(f"{text!r} has a '$' that is not a variable such as ${{BACKUP_ROOT}}: remove it or write an absolute path")
        value = env.get(name)
        if not value and name == "DRDRILL_STATE_DIR":
            value = default_state_dir(env)
            if value.startswith("~"):
                value = ""  # no home directory to put the state directory in
        if not value:
            state = "empty" if name in env else "not set"
            raise ValueError(f"{text!r} uses ${{{name}}}, which is {state}: set {name} or write an absolute path")
        return value

    expanded = _VARIABLE_RE.sub(variable, text)
    if expanded.startswith("~"):
        home = os.path.expanduser(expanded)
        if home.startswith("~"):
            user = expanded[1:].split("/", 1)[0] or "the current user"
            raise ValueError(f"{text!r} starts with '~', but there is no home directory for {user}: write an absolute path")
        expanded = home
    return expanded


def load_spec(path: str | Path) -> DrillSpec:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), [("", "no such file")]) from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as exc:
        raise SpecError(str(path), [("", f"cannot be read: {exc}")]) from None
    return parse_spec(text, str(path), base_dir=p.resolve().parent)
