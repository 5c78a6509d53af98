"""The `plan:` and `approve:` of a drill file: groups restored in order, the actions around them, the
approval gates before them, and the rules lint checks across them (plan_problem). What the plan does
at run time is drdrill/core/plan.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Iterator, Literal, Optional

from pydantic import Field, field_validator, model_validator

from drdrill.core import sshsig
from drdrill.core.durations import Duration
from drdrill.core.schema import NAME_RE, EnvironmentRef, RefError, Strict, environment_refs
from drdrill.core.validations import Validation

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


# ---------------------------------------------------------------- what lint checks


def environment_refs_of(target: Any) -> Iterator[tuple[str, EnvironmentRef]]:
    """(variable, reference) for every reference in a target's restore.environment."""
    for key, value in (getattr(target.restore, "environment", None) or {}).items():
        for ref in environment_refs(value):
            yield key, ref


def plan_problem(spec: Any) -> Optional[RefError]:
    """The first thing wrong with the drill's recovery plan, its approval gates or its environment
    references (each names the field and the fix); None when they hold.

    Groups run in the order listed, so everything is checked against that order: a target restores
    in exactly one group; `after` names groups above; a group's checks and post-actions may name
    its own targets and earlier groups', a pre-action only earlier groups' (its own are not restored
    yet); an endpoint flows forward only, from an earlier group's target."""
    if spec.plan is None:
        return _without_plan_problem(spec)
    group_of: dict[str, int] = {}
    for check in (_groups_problem, _group_checks_problem, _gates_problem, _environment_problem, _check_names_problem):
        problem = check(spec, group_of)
        if problem is not None:
            return problem
    return None


def _without_plan_problem(spec: Any) -> Optional[RefError]:
    """Without a plan every target restores at once: no gate, no endpoint handed forward."""
    if spec.approve:
        return RefError(("approve",), "an approval gate holds back a group of the plan: add plan: (the groups restored in order), or remove approve")
    for i, t in enumerate(spec.targets):
        for key, ref in environment_refs_of(t):
            if ref.kind == "targets":
                return RefError(
                    ("targets", i, "restore", "environment", key),
                    f"{ref.text} needs target {ref.name} restored before {t.name}, but without a plan every target restores at once: "
                    f"add plan: with {ref.name} in a group above {t.name}'s",
                )
    return None


def _groups_problem(spec: Any, group_of: dict[str, int]) -> Optional[RefError]:
    """Group names unique, each target in exactly one group, `after` naming groups above; fills `group_of`."""
    names = [t.name for t in spec.targets]
    groups = [g.group for g in spec.plan]
    for gi, g in enumerate(spec.plan):
        if g.group in groups[:gi]:
            return RefError(("plan", gi, "group"), f"group name {g.group!r} is used twice; group names must be unique")
        for ti, name in enumerate(g.targets):
            if name not in names:
                return RefError(("plan", gi, "targets", ti), f"no target named {name!r}; this drill's targets are: {', '.join(names)}")
            if name in group_of:
                earlier = spec.plan[group_of[name]].group
                return RefError(("plan", gi, "targets", ti), f"target {name} is already in group {earlier}: a target restores in one group")
            group_of[name] = gi
        for ai, after in enumerate(g.after):
            if after not in groups:
                return RefError(("plan", gi, "after", ai), f"no group named {after!r}; this plan's groups are: {', '.join(groups)}")
            if after == g.group:
                return RefError(("plan", gi, "after", ai), f"group {g.group} names itself in after: name the groups above it that it needs")
            if groups.index(after) >= gi:
                return RefError(
                    ("plan", gi, "after", ai),
                    f"group {g.group} cannot run after {after}: groups run in the order they are listed; move group {after} above {g.group}",
                )
    for t in spec.targets:
        if t.name not in group_of:
            return RefError(("plan",), f"target {t.name} is in no group: add it to the targets of a group (each target restores in one group)")
    return None


def _group_checks_problem(spec: Any, group_of: dict[str, int]) -> Optional[RefError]:
    """A group's checks name its own targets or earlier groups'; its actions, see _action_problem."""
    names = [t.name for t in spec.targets]
    for gi, g in enumerate(spec.plan):
        for ci, v in enumerate(g.checks):
            tgt = getattr(v, "target", None)
            if tgt is None:
                continue
            if tgt not in names:
                return RefError(("plan", gi, "checks", ci, "target"), f"no target named {tgt!r}; this drill's targets are: {', '.join(names)}")
            if group_of[tgt] > gi:
                return RefError(
                    ("plan", gi, "checks", ci, "target"),
                    f"target {tgt} restores in group {spec.plan[group_of[tgt]].group}, after group {g.group}: a group's checks "
                    "may name its own targets and those of the groups above it",
                )
        for when in ("pre", "post"):
            for ai, action in enumerate(getattr(g, when)):
                problem = _action_problem(spec, group_of, gi, when, ai, action)
                if problem is not None:
                    return problem
    return None


def _gates_problem(spec: Any, group_of: dict[str, int]) -> Optional[RefError]:
    """Each gate holds back a group of the plan, one gate per group."""
    groups = [g.group for g in spec.plan]
    gated: dict[str, int] = {}
    for i, gate in enumerate(spec.approve):
        if gate.before not in groups:
            return RefError(("approve", i, "before"), f"no group named {gate.before!r}; this plan's groups are: {', '.join(groups)}")
        if gate.before in gated:
            first = gated[gate.before]
            return RefError(("approve", i, "before"), f"group {gate.before} already has an approval gate (approve[{first}]): one gate per group")
        gated[gate.before] = i
    return None


def _environment_problem(spec: Any, group_of: dict[str, int]) -> Optional[RefError]:
    """An endpoint in restore.environment flows forward only, from one target of an earlier group."""
    names = [t.name for t in spec.targets]
    for i, t in enumerate(spec.targets):
        for key, ref in environment_refs_of(t):
            if ref.kind != "targets":
                continue
            loc = ("targets", i, "restore", "environment", key)
            if ref.name not in names:
                return RefError(loc, f"{ref.text}: no target named {ref.name!r}; this drill's targets are: {', '.join(names)}")
            if ref.name == t.name:
                return RefError(
                    loc,
                    f"{ref.text}: a target cannot be handed its own endpoint (a postgres application gets it as DRDRILL_*); "
                    "reference a target of an earlier group",
                )
            if group_of[ref.name] >= group_of[t.name]:
                return RefError(
                    loc,
                    f"{ref.text}: target {ref.name} restores in group {spec.plan[group_of[ref.name]].group}, not before {t.name} "
                    f"(group {spec.plan[group_of[t.name]].group}): an endpoint flows forward only; move {ref.name} to a group above",
                )
            if spec.target(ref.name).select is not None:
                return RefError(loc, f"{ref.text}: target {ref.name} selects its resources and may restore several; name a target that restores one")
    return None


def _check_names_problem(spec: Any, group_of: dict[str, int]) -> Optional[RefError]:
    """Check names are unique across the drill's validations and the plan's checks."""
    check_names = [spec.validation_name(i) for i in range(len(spec.validations))]
    check_names += [g.check_name(ci) for g in spec.plan for ci in range(len(g.checks))]
    repeated = sorted({n for n in check_names if check_names.count(n) > 1})
    if repeated:
        return RefError(
            ("plan",), f"check names must be unique across validations and the plan's checks; repeated: {', '.join(repeated)} (set 'name:')"
        )
    return None


def _action_problem(spec: Any, group_of: dict[str, int], gi: int, when: str, ai: int, action: PlanAction) -> Optional["RefError"]:
    """A pre-action runs before its group restores, a post-action after its checks: the target whose
    endpoint it gets must be restored by then, and `on: probe` needs a probe in that network."""
    group = spec.plan[gi].group  # type: ignore[index]
    loc = ("plan", gi, when, ai)
    family = None
    if action.target is not None:
        if action.target not in group_of:
            return RefError(loc + ("target",), f"no target named {action.target!r}; this drill's targets are: {', '.join(group_of)}")
        last = gi - 1 if when == "pre" else gi
        if group_of[action.target] > last:
            where = "before the group's own targets restore" if when == "pre" else "after the group's checks"
            which = "a group above" if when == "pre" else "this group or one above"
            return RefError(
                loc + ("target",),
                f"a {when}-action of group {group} runs {where}, and target {action.target} is not restored by then "
                f"(group {spec.plan[group_of[action.target]].group}): name a target of {which}",  # type: ignore[index]
            )
        family = spec.target(action.target).family
    if action.on == "probe":
        probes = spec.isolation.probe.families()
        if family is None and len(probes) != 1:
            why = (
                "this drill has no probe: set isolation.probe.<family>"
                if not probes
                else f"this drill has probes in {', '.join(probes)}: name a 'target' to say which"
            )
            return RefError(loc + ("on",), f"on: probe runs the action inside an isolated network; {why}")
        if family is not None and family not in probes:
            return RefError(
                loc + ("on",), f"on: probe runs the action in a probe inside target {action.target}'s network: set isolation.probe.{family}"
            )
    return None


# ---------------------------------------------------------------- loading
