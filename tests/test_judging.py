"""Judging a drill (drdrill/core/judging.py): each rule on its own, over models built here.

A check that could not run is never a pass; FAILED beats COULD_NOT_VERIFY; RTO runs from the
declared disaster to the last required check's first pass; RPO is the larger of the recovery
point's age and the measured freshness, taken as of the moment the points were chosen.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Optional

import pytest

from drdrill.core import judging
from drdrill.core.models import Finding, IsolationCheck, IsolationProof, ObjectiveResult, RecoveryPoint, RestoredResource, ValidationResult
from drdrill.providers.spec import DrillSpec

# The drill's own clock: every time below is derived from this moment, never from today.
DECLARED = datetime(2031, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
MINUTE = timedelta(minutes=1)


def check(name: str, outcome: str = "PASSED", after: Optional[timedelta] = MINUTE, required: bool = True, rpo_seconds=None) -> ValidationResult:
    """A validation result whose first pass came `after` the declared disaster."""
    return ValidationResult(
        name=name,
        type="sql",
        target="shop",
        required=required,
        outcome=outcome,
        first_passed_at=DECLARED + after if outcome == "PASSED" and after is not None else None,
        measured={"rpo_seconds": rpo_seconds} if rpo_seconds is not None else {},
    )


def point(target: str, age: timedelta, as_of: datetime = DECLARED) -> RecoveryPoint:
    return RecoveryPoint(target=target, provider="sim", id=f"{target}-point", consistent_time=as_of - age)


def objective(name: str, outcome: str) -> ObjectiveResult:
    return ObjectiveResult(name=name, objective_seconds=900, achieved_seconds=60 if outcome == "PASSED" else None, outcome=outcome)


PROVEN = IsolationProof(family="sim", environment_id="env", checks=[IsolationCheck(name="no-route", outcome="PASSED")])
MET = [objective("RTO", "PASSED"), objective("RPO", "PASSED")]


def spec(targets: int = 1, validations: int = 1) -> DrillSpec:
    return DrillSpec.model_validate(
        {
            "name": "judged",
            "objectives": {"rto": "15m", "rpo": "1h"},
            "targets": [{"name": f"db{i}", "provider": "sim"} for i in range(targets)],
            "validations": [
                {"type": "command", "name": f"ready-db{i}", "target": f"db{i}", "argv": ["true"]} for i in range(validations)
            ],
        }
    )


# ------------------------------------------------------------------ the worst outcome


def test_a_check_that_did_not_run_counts_as_could_not_verify():
    assert judging.worst(["PASSED", "NOT_RUN"]) == "COULD_NOT_VERIFY"
    assert judging.worst(["NOT_RUN"]) == "COULD_NOT_VERIFY"


def test_failed_beats_could_not_verify_whatever_the_order():
    assert judging.worst(["COULD_NOT_VERIFY", "FAILED", "PASSED"]) == "FAILED"
    assert judging.worst(["FAILED", "NOT_RUN"]) == "FAILED"


def test_nothing_to_judge_is_not_a_pass():
    assert judging.worst([]) == "COULD_NOT_VERIFY"
    assert judging.worst(["PASSED", "PASSED"]) == "PASSED"


def test_the_summary_names_every_check_when_all_passed_and_the_bad_ones_otherwise():
    assert judging.summary(["PASSED", "PASSED"], ["a", "b"]) == "2/2 passed: a, b"
    assert judging.summary(["PASSED", "FAILED", "NOT_RUN"], ["a", "b", "c"]) == "1/3 passed; b FAILED, c NOT_RUN"
    assert judging.summary([], []) == "0/0 passed"


# ------------------------------------------------------------------ the verdict


def test_everything_proven_passes():
    assert judging.verdict([], [check("a"), check("b")], MET, [PROVEN]) == "PASSED"


@pytest.mark.parametrize("outcome", ["COULD_NOT_VERIFY", "NOT_RUN"])
def test_a_required_check_that_could_not_run_is_never_a_pass(outcome):
    assert judging.verdict([], [check("a"), check("b", outcome)], MET, [PROVEN]) == "COULD_NOT_VERIFY"


def test_a_failed_check_beats_one_that_could_not_run():
    assert judging.verdict([], [check("a", "COULD_NOT_VERIFY"), check("b", "FAILED")], MET, [PROVEN]) == "FAILED"


def test_an_optional_check_does_not_decide_the_verdict():
    assert judging.verdict([], [check("a"), check("b", "FAILED", required=False)], MET, [PROVEN]) == "PASSED"


def test_a_drill_with_no_validations_could_not_verify():
    assert judging.verdict([], [], MET, [PROVEN]) == "COULD_NOT_VERIFY"


@pytest.mark.parametrize("name", ["RTO", "RPO"])
def test_an_objective_exceeded_fails_the_drill(name):
    missed = [objective(n, "FAILED" if n == name else "PASSED") for n in ("RTO", "RPO")]
    assert judging.verdict([], [check("a")], missed, [PROVEN]) == "FAILED"


def test_an_objective_not_measured_could_not_verify():
    assert judging.verdict([], [check("a")], [objective("RTO", "PASSED"), objective("RPO", "COULD_NOT_VERIFY")], [PROVEN]) == "COULD_NOT_VERIFY"


def test_an_isolation_not_proven_could_not_verify():
    unproven = IsolationProof(family="sim", environment_id="env", checks=[IsolationCheck(name="no-route", outcome="COULD_NOT_VERIFY")])
    assert judging.verdict([], [check("a")], MET, [PROVEN, unproven]) == "COULD_NOT_VERIFY"


def test_findings_fail_or_make_the_drill_unprovable_by_their_kind():
    error = Finding(code="RESTORE_FAILED", message="the restore failed")
    unprovable = Finding(code="DRILL_CANCELLED", message="cancelled", could_not_verify=True)
    warning = Finding(code="TEARDOWN_RETRIED", message="retried", severity="warning")
    assert judging.verdict([warning], [check("a")], MET, [PROVEN]) == "PASSED"
    assert judging.verdict([unprovable], [check("a")], MET, [PROVEN]) == "COULD_NOT_VERIFY"
    assert judging.verdict([unprovable, error], [check("a")], MET, [PROVEN]) == "FAILED"


def test_a_broken_or_cancelled_drill_is_an_error_whatever_else_passed():
    assert judging.verdict([], [check("a")], MET, [PROVEN], broken=True) == "ERROR"
    assert judging.verdict([], [check("a")], MET, [PROVEN], cancelled=True) == "ERROR"


# ------------------------------------------------------------------ RTO


def test_rto_is_the_last_required_check_first_passed_minus_declared():
    checks = [check("a", after=2 * MINUTE), check("b", after=5 * MINUTE), check("optional", after=60 * MINUTE, required=False)]
    rto = judging.rto(timedelta(minutes=15), DECLARED, checks)
    assert (rto.name, rto.outcome, rto.achieved_seconds, rto.objective_seconds) == ("RTO", "PASSED", 300.0, 900.0)
    assert rto.detail == "last required check passed 5m after the disaster was declared"


def test_rto_over_the_objective_fails():
    rto = judging.rto(timedelta(minutes=15), DECLARED, [check("a", after=16 * MINUTE)])
    assert (rto.outcome, rto.achieved_seconds) == ("FAILED", 960.0)


def test_rto_is_not_measured_while_a_required_check_could_not_run():
    rto = judging.rto(timedelta(minutes=15), DECLARED, [check("a"), check("b", "NOT_RUN")])
    assert (rto.outcome, rto.achieved_seconds) == ("COULD_NOT_VERIFY", None)
    assert rto.detail == "not measured: 1/2 required checks passed; b NOT RUN"


def test_rto_fails_when_a_required_check_failed_or_a_target_was_not_restored():
    failed = judging.rto(timedelta(minutes=15), DECLARED, [check("a", "FAILED"), check("b", "NOT_RUN")])
    assert (failed.outcome, failed.achieved_seconds, failed.detail) == ("FAILED", None, "the service was not shown to be recovered")
    assert judging.rto(timedelta(minutes=15), DECLARED, [check("a", "NOT_RUN")], restore_failed=True).outcome == "FAILED"


def test_rto_without_required_checks_could_not_verify():
    assert judging.rto(timedelta(minutes=15), DECLARED, []).outcome == "COULD_NOT_VERIFY"
    assert judging.rto(timedelta(minutes=15), DECLARED, [check("optional", required=False)]).outcome == "COULD_NOT_VERIFY"


# ------------------------------------------------------------------ RPO


def test_rpo_is_the_oldest_points_age_without_a_freshness_check():
    rpo = judging.rpo(timedelta(hours=1), DECLARED, [point("db0", 10 * MINUTE), point("db1", 20 * MINUTE)], [check("a")])
    assert (rpo.name, rpo.outcome, rpo.achieved_seconds, rpo.detail) == ("RPO", "PASSED", 1200.0, "recovery point 20m old")


def test_rpo_is_the_larger_of_the_points_age_and_the_measured_freshness():
    points = [point("db0", 10 * MINUTE)]
    staler = judging.rpo(timedelta(hours=1), DECLARED, points, [check("fresh", rpo_seconds=1500.0)])
    assert (staler.achieved_seconds, staler.detail) == (1500.0, "recovery point 10m old; newest restored data 25m old")
    fresher = judging.rpo(timedelta(hours=1), DECLARED, points, [check("fresh", rpo_seconds=60.0)])
    assert fresher.achieved_seconds == 600.0


def test_as_of_moves_the_moment_rpo_is_measured_from():
    """Points chosen as of a day before the declared time: a point 30m older than that moment lost
    30m, and a check's freshness (measured from the declared time) is shifted back by the day."""
    as_of = DECLARED - timedelta(days=1)
    chosen = [point("db0", 30 * MINUTE, as_of=as_of)]
    rpo = judging.rpo(timedelta(hours=1), DECLARED, chosen, [check("a")], as_of=as_of)
    assert (rpo.outcome, rpo.achieved_seconds) == ("PASSED", 1800.0)
    measured = judging.rpo(timedelta(hours=1), DECLARED, chosen, [check("fresh", rpo_seconds=86400.0 + 2400)], as_of=as_of)
    assert measured.achieved_seconds == 2400.0
    # Without as_of the same point is a day and 30 minutes old: the objective is exceeded.
    assert judging.rpo(timedelta(hours=1), DECLARED, chosen, [check("a")]).outcome == "FAILED"


def test_rpo_over_the_objective_fails():
    rpo = judging.rpo(timedelta(hours=1), DECLARED, [point("db0", 61 * MINUTE)], [check("a")])
    assert (rpo.outcome, rpo.achieved_seconds) == ("FAILED", 3660.0)


def test_rpo_without_recovery_points_could_not_verify():
    rpo = judging.rpo(timedelta(hours=1), DECLARED, [], [check("a", rpo_seconds=10.0)])
    assert (rpo.outcome, rpo.achieved_seconds, rpo.detail) == ("COULD_NOT_VERIFY", None, "no recovery point was chosen")


# ------------------------------------------------------------------ a whole drill's objectives


def restored(target: str) -> RestoredResource:
    return RestoredResource(target=target, provider="sim", id=f"{target}-restored", ready=True)


def test_objectives_of_a_drill_that_recovered_everything():
    s = spec(targets=2, validations=2)
    points = {"db0": point("db0", 5 * MINUTE), "db1": point("db1", 7 * MINUTE)}
    rto, rpo = judging.objectives(s, DECLARED, points, {t: restored(t) for t in points}, [check("a", after=3 * MINUTE)])
    assert (rto.outcome, rto.achieved_seconds, rpo.outcome, rpo.achieved_seconds) == ("PASSED", 180.0, "PASSED", 420.0)


def test_a_target_without_a_recovery_point_leaves_rpo_unmeasured():
    s = spec(targets=2)
    rto, rpo = judging.objectives(s, DECLARED, {"db0": point("db0", MINUTE)}, {"db0": restored("db0")}, [check("a", "NOT_RUN")])
    assert rpo.outcome == "COULD_NOT_VERIFY"
    assert rto.outcome == "FAILED"  # db1 was never restored: the service was not shown to be recovered


def test_a_drill_that_found_no_point_at_all_could_not_verify_its_objectives():
    rto, rpo = judging.objectives(spec(), DECLARED, {}, {}, [])
    assert (rto.outcome, rpo.outcome) == ("COULD_NOT_VERIFY", "COULD_NOT_VERIFY")


def test_a_drill_with_no_validations_is_judged_could_not_verify():
    s = spec(validations=0)
    points = {"db0": point("db0", MINUTE)}
    objectives = judging.objectives(s, DECLARED, points, {"db0": restored("db0")}, [])
    assert [o.outcome for o in objectives] == ["COULD_NOT_VERIFY", "PASSED"]
    assert judging.verdict([], [], objectives, [PROVEN]) == "COULD_NOT_VERIFY"


def test_a_point_that_was_not_restored_leaves_the_rpo_not_measured_never_passed():
    """A recovery point was found but the restore failed (WAL_GAP, PITR_TARGET_UNREACHED): nothing was
    recovered, so there is no data loss to judge; NOT_MEASURED is not PASSED."""
    points = {"db0": point("db0", MINUTE)}
    rto, rpo = judging.objectives(spec(), DECLARED, points, {}, [check("a", "NOT_RUN")])
    assert (rpo.outcome, rpo.achieved_seconds) == ("NOT_MEASURED", None)
    assert "db0 was not restored" in rpo.detail
    assert rto.outcome == "FAILED"
    assert judging.verdict([], [check("a")], [rto.model_copy(update={"outcome": "PASSED"}), rpo], [PROVEN]) == "COULD_NOT_VERIFY"


def test_the_rpo_is_aged_from_the_moment_recovery_reached_not_the_one_asked_for():
    """A point-in-time recovery asked for 1 minute before the disaster but stopped 50 minutes before
    it (no boundary check measured it): the RPO is 50 minutes, failed against a 30-minute objective."""
    s = spec()
    s = s.model_copy(update={"objectives": s.objectives.model_copy(update={"rpo": timedelta(minutes=30)})})
    points = {"db0": point("db0", MINUTE)}
    recovered = restored("db0").model_copy(update={"details": {"recovered_to": (DECLARED - 50 * MINUTE).isoformat()}})
    _, rpo = judging.objectives(s, DECLARED, points, {"db0": recovered}, [check("a")])
    assert (rpo.outcome, rpo.achieved_seconds) == ("FAILED", 3000.0)
