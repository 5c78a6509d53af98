"""A drill as a whole: objectives, teardown, schedule, evidence, notifications, and DrillSpecBase,
every part of a drill file but the concrete target and probe models, which the provider families
add (drdrill/providers/spec.py assembles DrillSpec). Also the warnings a drill file can earn."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Callable, Iterator, Literal, Optional

from pydantic import Field, field_validator, model_validator

from drdrill.core.durations import Duration, format_duration
from drdrill.core.planspec import ApprovalGate, PlanGroup, plan_problem
from drdrill.core.schema import NAME_RE, CloudProbe, IsolationBase, RefError, SpecWarning, Strict, TargetBase
from drdrill.core.validations import Validation

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


class DrillSpecBase(Strict):
    """A drill file. `targets` and `isolation` are the families' concrete models in DrillSpec
    (drdrill/providers/spec.py); every rule here holds whatever the targets are."""

    version: Literal[1] = 1
    name: str = Field(pattern=NAME_RE)
    description: str = ""
    owner: Optional[str] = None
    objectives: Objectives
    max_duration: Duration = Field(timedelta(hours=4), description="the drill is stopped and torn down after this")
    targets: list[TargetBase] = Field(min_length=1, max_length=500)
    isolation: IsolationBase = Field(default_factory=IsolationBase)
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
    def _references(self) -> "DrillSpecBase":
        names = [t.name for t in self.targets]
        seen: set[str] = set()
        for i, n in enumerate(names):
            if n in seen:
                raise RefError(("targets", i, "name"), f"target name {n!r} is used twice; target names must be unique")
            seen.add(n)
        for i, v in enumerate(self.validations):
            tgt = getattr(v, "target", None)
            if tgt is not None and tgt not in seen:
                raise RefError(
                    ("validations", i, "target"),
                    f"no target named {tgt!r}; this drill's targets are: {', '.join(names)}",
                )
        vnames = [self.validation_name(i) for i in range(len(self.validations))]
        dupes = {n for n in vnames if vnames.count(n) > 1}
        if dupes:
            raise RefError(("validations",), f"validation names must be unique; repeated: {', '.join(sorted(dupes))} (set 'name:')")
        return self

    @model_validator(mode="after")
    def _target_problems(self) -> "DrillSpecBase":
        for i, t in enumerate(self.targets):
            problem = t.drill_problem(self, i)
            if problem is not None:
                raise problem
        return self

    @model_validator(mode="after")
    def _plan_references(self) -> "DrillSpecBase":
        problem = plan_problem(self)
        if problem is not None:
            raise problem
        return self

    @model_validator(mode="after")
    def _probe_secrets_name_targets(self) -> "DrillSpecBase":
        for family in type(self.isolation.probe).model_fields:
            probe = self.isolation.probe.for_family(family)
            if not isinstance(probe, CloudProbe):
                continue
            ours = [t.name for t in self.targets if t.family == family]
            for name in probe.secrets:
                if name not in ours:
                    raise RefError(
                        ("isolation", "probe", family, "secrets", name),
                        f"no {family} target named {name!r}; the {family} probe reads secrets for: {', '.join(ours) or 'no target'}",
                    )
        return self

    @model_validator(mode="after")
    def _attach_checks(self) -> "DrillSpecBase":
        """Tell each target what of the drill it needs at restore time (a point-in-time postgres
        source: the boundary checks that prove its moment; the provider sees the target, not the checks)."""
        for t in self.targets:
            t.attach_checks(self)
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


# ---------------------------------------------------------------- warnings


def _rto_beyond_max_duration(spec: DrillSpecBase) -> Iterator[tuple[str, str]]:
    """The drill is stopped and torn down at max_duration, so an RTO above it can never be met."""
    rto, limit = spec.objectives.rto, spec.max_duration
    if rto > limit:
        yield (
            "objectives.rto",
            f"objectives.rto ({format_duration(rto)}) is longer than max_duration ({format_duration(limit)}); "
            "the drill is stopped at max_duration, so it can never meet this objective: "
            f"raise max_duration to at least {format_duration(rto)} or lower objectives.rto",
        )


def _target_warnings(spec: DrillSpecBase) -> Iterator[tuple[str, str]]:
    """What each target's family warns about (a point-in-time recovery no check proves, …)."""
    for i, t in enumerate(spec.targets):
        yield from t.warnings(i)


def _gate_beyond_max_duration(spec: DrillSpecBase) -> Iterator[tuple[str, str]]:
    """A gate that may wait longer than the whole drill may run: the drill is stopped first."""
    for i, gate in enumerate(spec.approve):
        if gate.timeout >= spec.max_duration:
            yield (
                f"approve[{i}].timeout",
                f"the gate before group {gate.before} waits up to {format_duration(gate.timeout)}, but the drill is stopped at "
                f"max_duration ({format_duration(spec.max_duration)}): raise max_duration or shorten the gate's timeout",
            )


# Each check yields (field path, message with the fix); add new warnings here.
WARNING_CHECKS: tuple[Callable[[DrillSpecBase], Iterator[tuple[str, str]]], ...] = (
    _rto_beyond_max_duration,
    _target_warnings,
    _gate_beyond_max_duration,
)



def _target_load_problems(spec: DrillSpecBase, now: datetime) -> Iterator[tuple[str, str]]:
    """What each target's family finds wrong at the moment the file is loaded."""
    for i, t in enumerate(spec.targets):
        yield from t.load_problems(i, now)


# Checks of a drill file against the moment it is loaded (never run again inside a workflow,
# which must not read the clock): each yields (field path, message with the fix).
LOAD_CHECKS: tuple[Callable[[DrillSpecBase, datetime], Iterator[tuple[str, str]]], ...] = (_target_load_problems,)
