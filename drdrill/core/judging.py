"""Judging a drill: its verdict, its RTO and RPO, and the one-line summaries of its phases.

Pure functions over the models: no Temporal, no I/O, no clock. DrillWorkflow collects what
happened (recovery points, restored resources, isolation proofs, validation results, findings) and
asks here what it means, so every rule of judging is written once and unit-tested on its own
(tests/test_judging.py). The rules:

- a check that could not run is never a pass: NOT_RUN and COULD_NOT_VERIFY both count as
  COULD_NOT_VERIFY, and a drill with no validations proves nothing (COULD_NOT_VERIFY);
- a failure beats a check that could not run: FAILED wins over COULD_NOT_VERIFY;
- RTO is the time from the declared disaster to the moment the last required check first passed;
- RPO is the data lost: the larger of the oldest recovery point's age and the age of the newest
  restored data a check measured, both taken at the moment the points were chosen as of;
- an objective is judged only on what was recovered: a target not restored leaves the RPO
  NOT_MEASURED (never PASSED), and a restore that says which moment it reached (`recovered_to`, a
  point-in-time recovery) is aged from that moment, not from the moment asked for;
- an objective exceeded fails the drill.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterable, Mapping, Optional, Sequence

from drdrill.core.models import (
    Finding,
    IsolationProof,
    ObjectiveResult,
    Outcome,
    RecoveryPoint,
    RestoredResource,
    ValidationResult,
    Verdict,
)
from drdrill.core.drill import DrillSpecBase
from drdrill.core.durations import format_duration

# How bad an outcome is, for picking the worst of several.
RANK: dict[str, int] = {"PASSED": 0, "NOT_RUN": 1, "NOT_MEASURED": 1, "COULD_NOT_VERIFY": 2, "FAILED": 3, "ERROR": 4}


def worst(outcomes: Iterable[Outcome]) -> Outcome:
    """The worst of several outcomes. Nothing to judge, or a check that did not run, is
    COULD_NOT_VERIFY: never a pass."""
    outcomes = list(outcomes)
    if not outcomes:
        return "COULD_NOT_VERIFY"
    bad = max(outcomes, key=lambda o: RANK[o])
    return "COULD_NOT_VERIFY" if bad in ("NOT_RUN", "NOT_MEASURED") else bad


def summary(outcomes: Sequence[Outcome], names: Sequence[str]) -> str:
    """'4/4 passed: a, b, c, d' or '3/4 passed; orders-fresh FAILED' for a phase's timeline line."""
    passed = sum(1 for o in outcomes if o == "PASSED")
    bad = [f"{n} {o}" for n, o in zip(names, outcomes) if o != "PASSED"]
    text = f"{passed}/{len(outcomes)} passed"
    if passed == len(outcomes) and names:
        text += ": " + ", ".join(names)
    return text + ("; " + ", ".join(bad) if bad else "")


def rto(
    objective: timedelta, declared: datetime, validations: Sequence[ValidationResult], restore_failed: bool = False
) -> ObjectiveResult:
    """RTO: from the declared disaster until the last required check first passed.

    Measured only when every required check passed. A required check that failed, or a target that
    had a recovery point but was not restored (`restore_failed`), fails it; otherwise nothing proved
    the recovery and it is COULD_NOT_VERIFY."""
    required = [v for v in validations if v.required]
    achieved: Optional[float] = None
    outcome: Outcome
    if required and all(v.outcome == "PASSED" and v.first_passed_at for v in required):
        last = max(v.first_passed_at for v in required)  # type: ignore[type-var]
        achieved = (last - declared).total_seconds()
        outcome = "PASSED" if achieved <= objective.total_seconds() else "FAILED"
        detail = f"last required check passed {format_duration(achieved)} after the disaster was declared"
    elif any(v.outcome == "FAILED" for v in required) or restore_failed:
        outcome, detail = "FAILED", "the service was not shown to be recovered"
    elif not required:
        outcome, detail = "COULD_NOT_VERIFY", "no required check proved recovery"
    else:
        unproved = [f"{v.name} {v.outcome.replace('_', ' ')}" for v in required if v.outcome != "PASSED" or not v.first_passed_at]
        outcome = "COULD_NOT_VERIFY"
        detail = f"not measured: {len(required) - len(unproved)}/{len(required)} required checks passed; {', '.join(unproved)}"
    return ObjectiveResult(name="RTO", objective_seconds=objective.total_seconds(), achieved_seconds=achieved, outcome=outcome, detail=detail)


def rpo(
    objective: timedelta,
    declared: datetime,
    points: Sequence[RecoveryPoint],
    validations: Sequence[ValidationResult],
    as_of: Optional[datetime] = None,
) -> ObjectiveResult:
    """RPO: the data lost, at the moment the recovery points were chosen as of (`as_of`, the
    declared time unless the drill ran as of another moment).

    The larger of the oldest point's age and the freshness a check measured (`measured.rpo_seconds`,
    which checks take from the declared time, so it is shifted by as_of - declared). `points` holds
    every target's point; none means a target had no point, and nothing can be measured."""
    if not points:
        return ObjectiveResult(
            name="RPO", objective_seconds=objective.total_seconds(), outcome="COULD_NOT_VERIFY", detail="no recovery point was chosen"
        )
    as_of = as_of or declared
    shift = (as_of - declared).total_seconds()
    oldest = min(p.consistent_time for p in points)
    newest = max(points, key=lambda p: p.consistent_time)
    if newest.consistent_time > as_of:  # a clock, a zone or a name pattern is wrong: no RPO can be told
        ahead = (newest.consistent_time - as_of).total_seconds()
        return ObjectiveResult(
            name="RPO", objective_seconds=objective.total_seconds(), outcome="FAILED",
            detail=f"RECOVERY_POINT_IN_FUTURE: recovery point {newest.id} of {newest.target} is dated {format_duration(ahead)} "
            "after the declared disaster, so the data lost cannot be measured",
        )
    point_rpo = (as_of - oldest).total_seconds()
    measured = [float(v.measured["rpo_seconds"]) + shift for v in validations if v.measured.get("rpo_seconds") is not None]
    achieved = max([point_rpo] + measured)
    detail = f"recovery point {format_duration(point_rpo)} old"
    if measured:
        detail += f"; newest restored data {format_duration(max(measured))} old"
    return ObjectiveResult(
        name="RPO",
        objective_seconds=objective.total_seconds(),
        achieved_seconds=achieved,
        outcome="PASSED" if achieved <= objective.total_seconds() else "FAILED",
        detail=detail,
    )


def objectives(
    spec: DrillSpecBase,
    declared: datetime,
    points: Mapping[str, RecoveryPoint],
    restored: Mapping[str, RestoredResource],
    validations: Sequence[ValidationResult],
    as_of: Optional[datetime] = None,
) -> list[ObjectiveResult]:
    """[RTO, RPO] of a drill from what it found (`points`) and restored (`restored`), by target name."""
    every_point = list(points.values()) if len(points) == len(spec.targets) else []
    unrestored = [t.name for t in spec.targets if t.name not in restored]
    if every_point and unrestored:
        data_loss = ObjectiveResult(
            name="RPO",
            objective_seconds=spec.objectives.rpo.total_seconds(),
            outcome="NOT_MEASURED",
            detail=f"{', '.join(unrestored)} {'was' if len(unrestored) == 1 else 'were'} not restored: nothing recovered, no data loss to measure",
        )
    else:
        data_loss = rpo(spec.objectives.rpo, declared, [reached(p, restored.get(n)) for n, p in points.items()] if every_point else [], validations, as_of=as_of)
    return [rto(spec.objectives.rto, declared, validations, restore_failed=bool(points) and bool(unrestored)), data_loss]


def reached(point: RecoveryPoint, restored: Optional[RestoredResource]) -> RecoveryPoint:
    """The point as recovered: a restore that measured the moment it reached (`recovered_to`, which a
    point-in-time recovery reads from the recovered server) is aged from there, never from the
    later moment asked for."""
    moment = (restored.details or {}).get("recovered_to") if restored is not None else None
    if not moment:
        return point
    try:
        at = datetime.fromisoformat(str(moment))
    except ValueError:
        return point
    return point.model_copy(update={"consistent_time": min(at, point.consistent_time)}) if at.tzinfo else point


def verdict(
    findings: Sequence[Finding],
    validations: Sequence[ValidationResult],
    objectives: Sequence[ObjectiveResult],
    proofs: Sequence[IsolationProof],
    broken: bool = False,
    cancelled: bool = False,
) -> Verdict:
    """The drill's verdict. ERROR when the drill itself broke or was cancelled; FAILED when a
    finding, a required check or an objective failed; COULD_NOT_VERIFY when anything could not be
    proven (a finding saying so, a required check or objective not PASSED, an isolation not proven,
    no validations at all); PASSED only when everything was proven."""
    if broken or cancelled:
        return "ERROR"
    if any(f.severity == "error" and not f.could_not_verify for f in findings):
        return "FAILED"
    required = [v.outcome for v in validations if v.required]
    if "FAILED" in required or any(o.outcome == "FAILED" for o in objectives):
        return "FAILED"
    if any(f.severity == "error" and f.could_not_verify for f in findings):
        return "COULD_NOT_VERIFY"
    if any(o != "PASSED" for o in required) or any(o.outcome != "PASSED" for o in objectives):
        return "COULD_NOT_VERIFY"
    if any(p.outcome != "PASSED" for p in proofs) or not validations:
        return "COULD_NOT_VERIFY"
    return "PASSED"
