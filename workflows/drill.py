"""DrillWorkflow: one disaster-recovery drill, from declared disaster to torn-down evidence.

Read `run`: it is the lifecycle. Deterministic orchestration only: no I/O, time only from
`workflow.now()`. The steps are in workflows/steps.py, a recovery plan's groups, gates and actions in
workflows/plan.py, every activity call (timeouts, retries, task queues) in workflows/calls.py, and
the drill's state in one model, workflows/state.py. What the outcome means is judged by
drdrill/core/judging.py. Teardown always runs: on success, failure, cancellation, timeout
(max_duration) and, because Temporal replays the workflow on another worker, after a worker crash.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from drdrill.core import judging, selection
    from drdrill.core import plan as recovery_plan
    from drdrill.core.models import (
        ApprovalRecord,
        ApprovalRequest,
        DrillContext,
        DrillResult,
        DrillStatus,
        Finding,
        TargetState,
    )
    from drdrill.core.operations import drill_id_from_workflow_id
    from drdrill.core.durations import format_duration
    from drdrill.providers.spec import DrillInput

from workflows import calls, plan, steps
from workflows import hooks as ops_hooks  # operations (issue 7): metrics, notifications
from workflows.state import HEARTBEAT, DrillState, describe

EXPIRY_MARGIN = timedelta(hours=1)


@workflow.defn(name="DrillWorkflow")
class DrillWorkflow:
    def __init__(self) -> None:
        self.s = DrillState()

    # ------------------------------------------------------------ queries, signals and updates

    @workflow.query
    def status(self) -> DrillStatus:
        assert self.s.status is not None
        return self.s.status

    @workflow.signal
    def release(self) -> None:
        """End a hold for inspection now: tear down."""
        self.s.released = True

    @workflow.signal
    def extend(self, seconds: float) -> None:
        """Extend a hold for inspection, bounded by teardown.max_hold."""
        s = self.s
        if s.hold_until is None or s.max_hold_until is None:
            return
        s.hold_until = min(s.hold_until + timedelta(seconds=max(0.0, float(seconds))), s.max_hold_until)
        if s.status:
            s.status.hold_until = s.hold_until

    @workflow.signal
    def permit_granted(self, request_id: str) -> None:
        """A limiter (workflows/limiter.py) grants this drill a permit."""
        self.s.permits.on_granted(request_id)

    @workflow.update
    def approve(self, request: ApprovalRequest) -> ApprovalRecord:
        """Approve the gate the plan waits at (`drdrill approve`): the group starts."""
        return plan.decide(self.s, "approved", request)

    @approve.validator
    def _approve_allowed(self, request: ApprovalRequest) -> None:
        plan.may_decide(self.s, "approve", request)

    @workflow.update
    def reject(self, request: ApprovalRequest) -> ApprovalRecord:
        """Reject the gate the plan waits at (`drdrill reject`): the plan ends FAILED and tears down."""
        return plan.decide(self.s, "rejected", request)

    @reject.validator
    def _reject_allowed(self, request: ApprovalRequest) -> None:
        plan.may_decide(self.s, "reject", request)

    # ------------------------------------------------------------ the drill

    @workflow.run
    async def run(self, inp: DrillInput) -> DrillResult:
        """Declare the disaster, drill within max_duration, always tear down, then judge and record."""
        s = self.s
        await self._declare(inp)
        cancelled = await self._drill_and_tear_down()
        result = self._result(inp, cancelled)
        await self._record(result)
        await ops_hooks.after_result(s.spec, result)
        s.status.phase, s.status.verdict = "done", result.verdict
        if cancelled or s.late_cancel:
            raise asyncio.CancelledError("drill cancelled; torn down and recorded")
        return result

    async def _drill(self) -> None:
        """The drill's steps in order; a step that fails stops the ones that depend on it."""
        s = self.s
        if not await steps.select(s) or not await steps.recovery_points(s) or not await steps.isolation_and_stage(s):
            return
        if s.spec.plan is not None:
            carry_on = await plan.run_plan(s)
            await plan.checks_after_the_plan(s)
            if not carry_on:
                return  # rejected, or nobody answered a gate: tear down now, no hold
        else:
            await steps.restore_all(s)
            await steps.validate_all(s)
        await steps.hold(s)

    async def _declare(self, inp: DrillInput) -> None:
        """Wait for a permit per (provider family, account/region), then declare the disaster."""
        s, spec = self.s, inp.spec
        s.spec, s.started_by = spec, inp.started_by
        hb = timedelta(seconds=inp.heartbeat_seconds) if inp.heartbeat_seconds else None
        s.heartbeat, s.slow_heartbeat = hb or HEARTBEAT, hb or timedelta(minutes=2)
        # A scheduled run has no drill id of its own: it takes its workflow id ('<name>-<scheduled time>').
        drill_id = inp.drill_id or drill_id_from_workflow_id(workflow.info().workflow_id)
        targets = [TargetState(target=t.name, provider=t.provider) for t in spec.targets]
        s.status = DrillStatus(drill_id=drill_id, name=spec.name, phase="declared", targets=targets)
        queued_at = workflow.now()
        queued = await s.permits.acquire_drill(spec, s.status)
        s.declared = declared = workflow.now()
        if inp.as_of is not None and inp.as_of > declared and any(not t.SIMULATED for t in spec.targets):
            await s.permits.release_all()
            raise ApplicationError(
                f"as_of {inp.as_of.isoformat()} is later than the declared time {declared.isoformat()}: a real cloud has no "
                "recovery points from the future; use a moment in the past, or run the drill simulated (drdrill run --simulate)",
                type="AS_OF_IN_THE_FUTURE",
                non_retryable=True,
            )
        expires = declared + spec.max_duration + spec.teardown.max_hold + EXPIRY_MARGIN
        s.ctx = DrillContext(drill_id=drill_id, drill_name=spec.name, declared=declared, expires_at=expires, as_of=inp.as_of or declared)
        s.status.phase, s.status.declared = "declared", declared
        if queued:
            s.event("queued", queued_at, declared, "PASSED", detail=f"waited for a {queued}")
        as_of = f"; recovery points chosen as of {inp.as_of.isoformat()}" if inp.as_of is not None else ""
        s.event("declared", declared, declared, "PASSED", detail=f"drill {spec.name} declared; started by {inp.started_by}{as_of}")

    async def _drill_and_tear_down(self) -> bool:
        """Run the drill's steps within max_duration and tear down whatever happened; True when cancelled."""
        s, cancelled = self.s, False
        try:
            await asyncio.wait_for(self._drill(), timeout=s.spec.max_duration.total_seconds())
        except asyncio.TimeoutError:
            s.finding("MAX_DURATION_EXCEEDED", f"the drill ran longer than max_duration {format_duration(s.spec.max_duration)} and was stopped")
        except (asyncio.CancelledError, CancelledError):
            cancelled = True
            s.finding("DRILL_CANCELLED", "the drill was cancelled before it finished", could_not_verify=True)
        except Exception as exc:  # noqa: BLE001 - the drill itself broke: record it, still tear down
            s.broken = True
            s.finding("DRILL_ERROR", f"the drill broke: {describe(exc)}")
        finally:
            s.status.group = s.status.approval = None
            await steps.teardown(s)
            await s.permits.release_all()
        if s.late_cancel and not cancelled:
            message = "cancellation was requested during teardown: the teardown was finished and the evidence recorded first"
            s.findings.append(Finding(code="CANCELLED_DURING_TEARDOWN", severity="warning", message=message))
        return cancelled

    async def _record(self, result: DrillResult) -> None:
        """Record the evidence, to the end even when cancelled meanwhile; a failure is an ERROR verdict."""
        self.s.status.phase = "evidence"
        try:
            result.evidence_path = await steps.to_the_end(self.s, calls.record_evidence(result))
        except ActivityError as exc:
            result.findings.append(Finding(code="EVIDENCE_NOT_RECORDED", message=describe(exc)))
            result.verdict = "ERROR"

    # ------------------------------------------------------------ the result

    def _result(self, inp: DrillInput, cancelled: bool) -> DrillResult:
        """The drill's state, judged (drdrill/core/judging.py): what it found and proved."""
        s, spec = self.s, self.s.spec
        if spec.plan is not None and s.groups:
            objectives = recovery_plan.objectives(spec, s.declared, s.points, s.validations, s.plan_stop, as_of=s.ctx.as_of)
        else:
            objectives = judging.objectives(spec, s.declared, s.points, s.restored, s.validations, as_of=s.ctx.as_of)
        rto, rpo = objectives
        ran = {r.group for r in s.groups}
        groups = s.groups + [
            recovery_plan.group_result(g, declared=s.declared, outcome="NOT_RUN", detail="the drill ended before the group started")
            for g in spec.plan or [] if g.group not in ran
        ]
        verdict = judging.verdict(
            s.findings, s.validations, objectives + recovery_plan.group_objectives(groups), s.proofs, broken=s.broken, cancelled=cancelled
        )
        return DrillResult(
            drill_id=s.ctx.drill_id, run_id=workflow.info().run_id, name=spec.name, verdict=verdict, declared=s.declared,
            ended=workflow.now(), as_of=inp.as_of, started_by=inp.started_by, spec_sha256=spec.source_sha256, spec_text=spec.source_text,
            objectives=objectives, rto_seconds=rto.achieved_seconds, rpo_seconds=rpo.achieved_seconds,
            recovery_points=list(s.points.values()), environments=list(s.envs.values()), isolation=s.proofs,
            restored=list(s.restored.values()), validations=s.validations, findings=s.findings, teardown=s.teardowns,
            timeline=s.status.timeline, cancelled=cancelled, selections=s.selections, resources=selection.resource_keys(spec.targets),
            groups=groups, simulated=any(t.SIMULATED for t in spec.targets),
        )
