"""A `volume` check's baseline: the row counts of the last run of the same drill that passed.

drdrill/validation/ reads no evidence (independent layers), so the validate activity asks here
(`with_volume_baseline`) and hands the counts to the check with its input. A drill's first run with
a required volume check has nothing to compare with and is COULD_NOT_VERIFY; `counts_as_passed`
judges such a run again (drdrill/core/judging.py) with those checks counted as passed, so that it can
become the baseline.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Optional

from pydantic import ValidationError

from drdrill.core import judging
from drdrill.providers.activity_io import ValidateInput, VolumeBaseline
from drdrill.core.models import DrillResult
from drdrill.core.progress import heartbeat
from drdrill.core.redact import redact
from drdrill.evidence.chain import result_from_document
from drdrill.evidence.store import open_store


def with_volume_baseline(inp: ValidateInput, state_dir: Optional[str] = None) -> ValidateInput:
    """`inp` with the counts of the last PASSED run, or with why the evidence could not be read (a
    check that cannot compare is COULD_NOT_VERIFY, never a pass)."""
    target = inp.validation.target  # type: ignore[union-attr]
    try:
        with open_store(state_dir=state_dir) as store:
            baseline = last_passed_counts(store, inp.drill_name or "", target, before=inp.declared)
    except Exception as exc:  # noqa: BLE001 - the store unreachable or a record unreadable: say so in the check
        problem = f"the evidence of earlier runs of drill {inp.drill_name} could not be read: {redact(str(exc)).strip()}"
        return inp.model_copy(update={"baseline_problem": problem})
    return inp.model_copy(update={"baseline": baseline})


def last_passed_counts(store, drill_name: str, target: str, before: datetime) -> Optional[VolumeBaseline]:
    """The row counts of `target` in the newest run of `drill_name` declared before `before` that
    passed (counts_as_passed) and counted its tables; None when there is none."""
    for drill_id in reversed(store.drill_ids(until=before, name=drill_name)):
        heartbeat({"evidence": drill_id})
        try:
            result = result_from_document(store.load(drill_id))
        except ValidationError:
            continue  # a record this drdrill cannot read as a run (an older format): not a baseline
        rows = volume_counts(result, target)
        if rows is not None and counts_as_passed(result):
            return VolumeBaseline(drill_id=result.drill_id, declared=result.declared, rows=rows)
    return None


def volume_counts(result: DrillResult, target: str) -> Optional[dict[str, int]]:
    """The tables' row counts the run's volume checks of `target` measured."""
    counted = [
        v.measured["tables"]
        for v in result.validations
        if v.type == "volume" and v.target == target and isinstance(v.measured.get("tables"), dict)
    ]
    if not counted:
        return None
    return {table: int(rows) for tables in counted for table, rows in tables.items()}


def counts_as_passed(result: DrillResult) -> bool:
    """PASSED, or would have been but for volume checks that had nothing to compare with yet.

    Without the second case a drill with a required volume check could never pass: its first run
    is COULD_NOT_VERIFY (no earlier counts), so no run would ever become the baseline. The run is
    judged again (drdrill/core/judging.py) with those checks counted as passed: every other check,
    finding, objective and isolation proof must still hold."""
    if result.verdict == "PASSED":
        return True
    if result.verdict != "COULD_NOT_VERIFY" or result.cancelled:
        return False
    first = [v.type == "volume" and v.outcome == "COULD_NOT_VERIFY" and bool(v.measured.get("first_run")) for v in result.validations]
    if not any(first):
        return False
    validations = [
        v.model_copy(update={"outcome": "PASSED", "first_passed_at": v.finished or result.declared}) if is_first else v
        for v, is_first in zip(result.validations, first)
    ]
    objectives = [
        judging.rto(timedelta(seconds=o.objective_seconds), result.declared, validations) if o.name == "RTO" else o
        for o in result.objectives
    ]
    return judging.verdict(result.findings, validations, objectives, result.isolation) == "PASSED"
