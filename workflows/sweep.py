"""OrphanSweepWorkflow: find what ended or expired drills left behind, delete it, keep the record.

Scheduled by `drdrill schedule sweep` (a Temporal Schedule), or started on demand. Each configured
provider family lists resources carrying drdrill's tags whose drill is not running (or whose
expiry passed); each is deleted after the provider re-checks its tag, and only when the evidence
store records its drill creating it (else: refused, "not created by drdrill"). Every sweep, also
one that found nothing, is written as evidence.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.drill import DrillActivities
    from drdrill.providers.activity_io import DeleteOrphanInput, ListOrphansInput, SweepAction, SweepInput, SweepRecord
    from activities.ops import OpsActivities
    from drdrill.core.models import DeletionOutcome, Orphan
    from drdrill.providers.sweep import outcome_of

RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1), maximum_attempts=5)


def _describe(exc: BaseException) -> str:
    while getattr(exc, "cause", None) is not None:
        exc = exc.cause  # type: ignore[assignment]
    return str(exc) or type(exc).__name__


@workflow.defn(name="OrphanSweepWorkflow")
class OrphanSweepWorkflow:
    def __init__(self) -> None:
        self._record: SweepRecord | None = None

    @workflow.query
    def progress(self) -> SweepRecord | None:
        return self._record

    @workflow.run
    async def run(self, inp: SweepInput) -> SweepRecord:
        info = workflow.info()
        now = workflow.now()
        rec = SweepRecord(sweep_id=info.workflow_id, run_id=info.run_id, started=now, ended=now, families=inp.families, dry_run=inp.dry_run)
        self._record = rec
        rec.active_drill_ids = await workflow.execute_activity_method(
            OpsActivities.active_drill_ids, start_to_close_timeout=timedelta(minutes=2), retry_policy=RETRY
        )
        for family in inp.families:
            try:
                orphans: list[Orphan] = await workflow.execute_activity_method(
                    DrillActivities.list_orphans,
                    ListOrphansInput(family=family, now=now, active_drill_ids=rec.active_drill_ids),
                    start_to_close_timeout=timedelta(minutes=10),
                    retry_policy=RETRY,
                )
            except ActivityError as exc:
                rec.errors.append(f"{family}: could not list orphans: {_describe(exc)}")
                continue
            for orphan in orphans:
                refused = orphan.details.get("refused")  # the evidence store does not record a drill creating it
                if refused:
                    outcome = outcome_of(orphan, "refused", refused)
                else:
                    outcome = outcome_of(orphan, "would_delete") if inp.dry_run else await self._delete(orphan)
                rec.actions.append(SweepAction(orphan=orphan, outcome=outcome))
        rec.ended = workflow.now()
        rec.evidence_path = await workflow.execute_activity_method(
            OpsActivities.record_sweep,
            rec,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1), maximum_attempts=20),
        )
        return rec

    async def _delete(self, orphan: Orphan) -> DeletionOutcome:
        """The provider's outcome; a delete that keeps failing is a `failed` outcome, and the sweep goes on."""
        try:
            return await workflow.execute_activity_method(
                DrillActivities.delete_orphan,
                DeleteOrphanInput(orphan=orphan),
                start_to_close_timeout=timedelta(minutes=30),
                retry_policy=RETRY,
            )
        except ActivityError as exc:
            return outcome_of(orphan, "failed", _describe(exc))
