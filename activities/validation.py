"""The `validate` activity: runs one validation (drdrill/validation.py) against a restored target.

It runs on the worker, or in a drill's probe inside the isolated network (`drdrill probe`). There
it also resolves the restored database's password from the secret reference a cloud probe was
given (`with_password`): the value never leaves the probe.

A `volume` check compares a target's row counts with the last PASSED run of the same drill. Only
the evidence knows earlier runs, and drdrill/validation.py reads no evidence (independent layers),
so this adapter looks the counts up in the evidence store and passes them in with the input.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Optional

from psycopg.conninfo import make_conninfo
from pydantic import ValidationError
from temporalio import activity

from drdrill.core import judging
from drdrill.core.models import DrillResult, ValidationResult
from drdrill.core.progress import heartbeat
from drdrill.core.redact import redact, register_secret
from drdrill.providers import family_of
from drdrill.providers.base import ProviderError
from drdrill.providers.probes import PASSWORD_REFERENCE, resolve_secret
from drdrill.evidence.chain import result_from_document
from drdrill.evidence.store import open_store
from drdrill.validation import ValidateInput, VolumeBaseline, run_validation


class ValidationActivities:
    """Stateless; grouped in a class, as the Temporal samples group activities."""

    def __init__(self, connect_timeout: float = 10.0, state_dir: Optional[str] = None):
        self.connect_timeout = connect_timeout
        self.state_dir = state_dir  # whose evidence store holds the earlier runs (None: the default)

    @activity.defn(name="validate")
    def validate(self, inp: ValidateInput) -> ValidationResult:
        if inp.validation.type == "volume" and inp.drill_name and inp.baseline is None and inp.baseline_problem is None:
            inp = with_volume_baseline(inp, self.state_dir)
        resolved = with_password(inp)
        if isinstance(resolved, ValidationResult):
            return resolved
        return run_validation(resolved, self.connect_timeout)


# Checks that log in to the restored database (and so need its password).
DATABASE_CHECKS = frozenset({"sql", "row_count", "checksum", "freshness", "volume"})


def with_password(inp: ValidateInput) -> ValidateInput | ValidationResult:
    """`inp` with the restored database's password in its DSN, when the restored resource carries a
    reference to it (a cloud probe's `secrets`): resolved here, where the check runs, inside the
    drill's network. Only this activity's own copy holds the value; the reference alone is in the
    history and the evidence. A reference that cannot be read is COULD_NOT_VERIFY, naming it."""
    resource = inp.resource
    reference = resource.details.get(PASSWORD_REFERENCE) if resource is not None else None
    if not reference or inp.validation.type not in DATABASE_CHECKS or not resource.endpoint.get("dsn"):
        return inp
    try:
        password = resolve_secret(family_of(resource.provider), reference)
    except ProviderError as exc:
        now = datetime.now(timezone.utc)
        return ValidationResult(
            name=inp.name, type=inp.validation.type, target=resource.target, required=inp.validation.required,
            outcome="COULD_NOT_VERIFY", detail=f"the password of target {resource.target} could not be read: {exc.message}",
            started=now, finished=now, attempts=1,
        )
    register_secret(password)  # masked wherever it could appear: logs, a check's detail
    dsn = make_conninfo(resource.endpoint["dsn"], password=password)
    return inp.model_copy(update={"resource": resource.model_copy(update={"endpoint": {**resource.endpoint, "dsn": dsn}})})


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
