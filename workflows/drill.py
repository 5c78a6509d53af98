"""DrillWorkflow: one disaster-recovery drill, from declared disaster to torn-down evidence.

Deterministic orchestration only: no I/O, time only from `workflow.now()`. Every side effect is an
activity (activities/drill.py, activities/validation.py: adapters over drdrill/providers and drdrill/validation.py); what the outcome means is judged by
drdrill/core/judging.py. Teardown always runs: on success, failure, cancellation, timeout
(max_duration) and, because Temporal replays the workflow on another worker, after a worker crash.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any, Optional

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from activities.drill import (
        CreateIsolationInput,
        DiscoverInput,
        DrillActivities,
        FindRecoveryPointInput,
        RestoreInput,
        TeardownInput,
        VerifyIsolationInput,
        WaitReadyInput,
    )
    from drdrill.core.models import (
        ApprovalRecord,
        ApprovalRequest,
        DrillContext,
        DrillResult,
        DrillStatus,
        Environment,
        Finding,
        GroupResult,
        IsolationProof,
        Outcome,
        PendingApproval,
        RecoveryPoint,
        RestoredResource,
        TargetState,
        TeardownReport,
        TimelineEvent,
        ValidationResult,
    )
    from drdrill.providers.spec import DrillInput, DrillSpec, Target
    from activities.probe import ProbeActivities, ProbeStatus, WaitForProbeInput
    from activities.notify import NotifyActivities
    from activities.validation import ValidationActivities
    from drdrill.notify import ApprovalNotice, NotifyInput
    from drdrill.validation import WORKER_CHECKS, ValidateInput
    from drdrill.core import approvals, judging, selection
    from drdrill.core import plan as recovery_plan
    from drdrill.core.durations import format_duration
    from drdrill.core.planspec import ApprovalGate, PlanAction, PlanGroup
    from drdrill.core.validations import CommandValidation
    from drdrill.core.operations import drill_id_from_workflow_id

from workflows import hooks as ops_hooks  # operations (issue 7): metrics, notifications
from workflows.limiter import Permits  # operations (issue 7): concurrency limits

# Retry settings per kind of call. Bad input raises non-retryable errors, so these only retry
# transient trouble (throttling, 5xx, a worker that died).
QUICK_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30), maximum_attempts=5)
LONG_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_interval=timedelta(minutes=1), maximum_attempts=4)
# Teardown never gives up: a leaked restored database is worse than a slow drill.
TEARDOWN_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(minutes=2), maximum_attempts=0
)
HEARTBEAT = timedelta(seconds=30)
EXPIRY_MARGIN = timedelta(hours=1)
PROBE_START_TIMEOUT = timedelta(minutes=5)  # when the drill file names no start_timeout for a family's probe
# Telling the approvers must not hold the gate up: a few quick attempts, while the gate already waits.
APPROVAL_NOTICE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_interval=timedelta(seconds=30), maximum_attempts=3)
WAITING_FOR_APPROVAL = "waiting for approval"  # the phase `drdrill status` shows at a gate
# Histories from before approvals were signed took an answer by the name it gave: replayed, they
# still do (workflow.patched); every answer a worker takes now is signed.
SIGNED_APPROVALS = "signed-approvals"
MAX_REFUSED_ANSWERS = 20  # refused answers recorded per drill; later ones are refused unrecorded (a flood)


@workflow.defn(name="DrillWorkflow")
class DrillWorkflow:
    def __init__(self) -> None:
        self._status: Optional[DrillStatus] = None
        self._released = False
        self._late_cancel = False  # a cancellation that arrived during teardown or evidence
        self._hold_until: Optional[datetime] = None
        self._max_hold_until: Optional[datetime] = None
        self._permits = Permits()
        # What the drill found, made and proved, by target name or provider family.
        self.points: dict[str, RecoveryPoint] = {}
        self.envs: dict[str, Environment] = {}
        self.hosts: dict[str, str] = {}  # family -> the host task queue its resources live on
        self.proofs: list[IsolationProof] = []
        self.restored: dict[str, RestoredResource] = {}
        self.validations: list[ValidationResult] = []
        self.findings: list[Finding] = []
        self.teardowns: list[TeardownReport] = []
        self.selections: list[selection.SelectionRecord] = []
        self.probes: dict[str, bool] = {}  # family -> its probe polls its task queue
        self.broken = False
        # A recovery plan (drdrill/core/plan.py): each group as it ran, why it stopped, and its gate.
        self.groups: list[GroupResult] = []
        self.plan_stop: Optional[Finding] = None
        self._pending: Optional[PendingApproval] = None
        self._open_gate: Optional[ApprovalGate] = None
        self._decision: Optional[ApprovalRecord] = None
        self._nonces: list[str] = []  # of every answer taken: a signed answer counts once
        self._refused = 0  # answers refused and recorded (bounded: MAX_REFUSED_ANSWERS)

    # ------------------------------------------------------------ queries and signals

    @workflow.query
    def status(self) -> DrillStatus:
        assert self._status is not None
        return self._status

    @workflow.signal
    def release(self) -> None:
        """End a hold for inspection now: tear down."""
        self._released = True

    @workflow.signal
    def permit_granted(self, request_id: str) -> None:
        """A limiter (workflows/limiter.py) grants this drill a permit."""
        self._permits.on_granted(request_id)

    @workflow.update
    def approve(self, request: ApprovalRequest) -> ApprovalRecord:
        """Approve the gate the plan waits at (`drdrill approve`): the group starts."""
        return self._decide("approved", request)

    @approve.validator
    def _approve_allowed(self, request: ApprovalRequest) -> None:
        self._may_decide("approve", request)

    @workflow.update
    def reject(self, request: ApprovalRequest) -> ApprovalRecord:
        """Reject the gate the plan waits at (`drdrill reject`): the plan ends FAILED and tears down."""
        return self._decide("rejected", request)

    @reject.validator
    def _reject_allowed(self, request: ApprovalRequest) -> None:
        self._may_decide("reject", request)

    def _may_decide(self, verb: str, request: ApprovalRequest) -> None:
        """Refuse an answer outright (the update is rejected and leaves no trace in the history)
        unless the plan waits at a gate, for the group named. Whether the answer is signed by an
        approver is decided by the update itself (`_decide`), so that a refusal is recorded."""
        pending, decided = self._pending, self._decision
        if pending is not None and decided is not None:
            message = f"group {decided.group} was already {decided.decision} by {decided.by}"
            raise ApplicationError(message, type="ALREADY_ANSWERED", non_retryable=True)
        if pending is None:
            phase = self._status.phase if self._status else "starting"
            raise ApplicationError(f"the drill is not waiting for approval (phase {phase})", type="NOT_WAITING_FOR_APPROVAL", non_retryable=True)
        if request.group and request.group != pending.group:
            raise ApplicationError(
                f"the drill waits for approval before group {pending.group}, not {request.group}", type="OTHER_GROUP", non_retryable=True
            )
        if self._refused >= MAX_REFUSED_ANSWERS:  # a flood: check here, and turn a bad answer away unrecorded
            try:
                self._verify_answer(verb, request)
            except approvals.Refused as refused:
                message = f"{refused.message} (not recorded: {MAX_REFUSED_ANSWERS} answers were refused already)"
                raise ApplicationError(message, type="TOO_MANY_REFUSED", non_retryable=True) from None

    def _verify_answer(self, verb: str, request: ApprovalRequest) -> "approvals.Accepted":
        """The signed answer, taken by drdrill/core/approvals.py (pure), or approvals.Refused."""
        pending, gate = self._pending, self._open_gate
        assert pending is not None and gate is not None
        return approvals.check(
            request.payload, request.signature, drill_id=self.ctx.drill_id, group=pending.group, decision=verb,  # type: ignore[arg-type]
            approvers=gate.approvers, asked=pending.asked, until=pending.until, now=workflow.now(), used_nonces=self._nonces,
        )

    def _decide(self, decision: str, request: ApprovalRequest) -> ApprovalRecord:
        """Take a signed answer (drdrill/core/approvals.py: pure, deterministic), or record why it
        was refused, in the timeline and the findings, and refuse it."""
        self._may_decide("approve" if decision == "approved" else "reject", request)  # the gate may have closed since validation
        pending, gate = self._pending, self._open_gate
        assert pending is not None and gate is not None
        if not workflow.patched(SIGNED_APPROVALS):
            return self._taken_before_signing(decision, request, pending)
        try:
            ok = self._verify_answer("approve" if decision == "approved" else "reject", request)
        except approvals.Refused as refused:
            self._record_refusal(pending, decision, request, refused)
            raise ApplicationError(refused.message, type=refused.code, non_retryable=True) from None
        self._nonces.append(ok.payload.nonce)
        self._decision = ApprovalRecord(
            group=pending.group,
            decision=decision,  # type: ignore[arg-type]
            approvers=pending.approvers,
            asked=pending.asked,
            decided=workflow.now(),
            by=ok.by,
            note=ok.payload.note,
            signer=ok.signer.name,
            key=ok.signer.key,
            fingerprint=ok.fingerprint,
            payload=request.payload,
            signature=request.signature,
        )
        return self._decision

    def _taken_before_signing(self, decision: str, request: ApprovalRequest, pending: PendingApproval) -> ApprovalRecord:
        """Only when replaying a history from before approvals were signed (no SIGNED_APPROVALS
        marker): the answer was taken then, by the name it gave, and a replay must take it again."""
        self._decision = ApprovalRecord(
            group=pending.group, decision=decision, approvers=pending.approvers, asked=pending.asked,  # type: ignore[arg-type]
            decided=workflow.now(), by=request.by, note=request.note,
        )
        return self._decision

    def _record_refusal(self, pending: PendingApproval, decision: str, request: ApprovalRequest, refused: "approvals.Refused") -> None:
        self._refused += 1
        claimed = request.by or "someone"
        verb = "approve" if decision == "approved" else "reject"
        message = f"group {pending.group}: an answer to {verb} claiming to be from {claimed} was refused ({refused.code}): {refused.message}"
        if self._refused == MAX_REFUSED_ANSWERS:
            message += f"; after {MAX_REFUSED_ANSWERS} refusals, further ones are turned away unrecorded"
        now = workflow.now()
        data = {"code": refused.code, "claimed_by": request.by, "decision": verb, "payload": request.payload, "signature": request.signature}
        self._event("approval-refused", now, now, "FAILED", detail=message, data=data)
        self.findings.append(Finding(code=refused.code, severity="warning", message=message))

    @workflow.signal
    def extend(self, seconds: float) -> None:
        """Extend a hold for inspection, bounded by teardown.max_hold."""
        if self._hold_until is None or self._max_hold_until is None:
            return
        wanted = self._hold_until + timedelta(seconds=max(0.0, float(seconds)))
        self._hold_until = min(wanted, self._max_hold_until)
        if self._status:
            self._status.hold_until = self._hold_until

    # ------------------------------------------------------------ the drill

    @workflow.run
    async def run(self, inp: DrillInput) -> DrillResult:
        """Declare the disaster, drill within max_duration, always tear down, then judge and record."""
        self.spec: DrillSpec = inp.spec
        self.started_by = inp.started_by
        hb = timedelta(seconds=inp.heartbeat_seconds) if inp.heartbeat_seconds else None
        self.heartbeat = hb or HEARTBEAT
        self.slow_heartbeat = hb or timedelta(minutes=2)  # isolation and teardown
        await self._declare(inp)
        cancelled = await self._drill_and_tear_down()
        if self._late_cancel and not cancelled:
            self.findings.append(
                Finding(
                    code="CANCELLED_DURING_TEARDOWN",
                    severity="warning",
                    message="cancellation was requested during teardown: the teardown was finished and the evidence recorded first",
                )
            )
        result = self._result(inp, cancelled)
        await self._record(result)
        await ops_hooks.after_result(self.spec, result)
        self._status.phase = "done"
        self._status.verdict = result.verdict
        if cancelled or self._late_cancel:
            raise asyncio.CancelledError("drill cancelled; torn down and recorded")
        return result

    async def _declare(self, inp: DrillInput) -> None:
        """Wait for a permit per (provider family, account/region), then declare the disaster."""
        spec = self.spec
        # A scheduled run has no drill id of its own: it takes its workflow id ('<name>-<scheduled time>').
        drill_id = inp.drill_id or drill_id_from_workflow_id(workflow.info().workflow_id)
        self._status = DrillStatus(
            drill_id=drill_id, name=spec.name, phase="declared", targets=[TargetState(target=t.name, provider=t.provider) for t in spec.targets]
        )
        queued_at = workflow.now()
        queued = await self._permits.acquire_drill(spec, self._status)
        declared = workflow.now()
        self.declared = declared
        if inp.as_of is not None and inp.as_of > declared and any(t.provider != "sim" for t in spec.targets):
            await self._permits.release_all()
            raise ApplicationError(
                f"as_of {inp.as_of.isoformat()} is later than the declared time {declared.isoformat()}: a real cloud has no "
                "recovery points from the future; use a moment in the past, or run the drill simulated (drdrill run --simulate)",
                type="AS_OF_IN_THE_FUTURE",
                non_retryable=True,
            )
        self.ctx = DrillContext(
            drill_id=drill_id,
            drill_name=spec.name,
            declared=declared,
            expires_at=declared + spec.max_duration + spec.teardown.max_hold + EXPIRY_MARGIN,
            as_of=inp.as_of or declared,
        )
        self._status.phase, self._status.declared = "declared", declared
        if queued:
            self._event("queued", queued_at, declared, "PASSED", detail=f"waited for a {queued}")
        as_of = f"; recovery points chosen as of {inp.as_of.isoformat()}" if inp.as_of is not None else ""
        self._event("declared", declared, declared, "PASSED", detail=f"drill {spec.name} declared; started by {inp.started_by}{as_of}")

    async def _drill_and_tear_down(self) -> bool:
        """Run the drill's steps within max_duration and tear down whatever happened; True when cancelled."""
        cancelled = False
        try:
            await asyncio.wait_for(self._drill(), timeout=self.spec.max_duration.total_seconds())
        except asyncio.TimeoutError:
            self._finding(
                "MAX_DURATION_EXCEEDED",
                f"the drill ran longer than max_duration {format_duration(self.spec.max_duration)} and was stopped",
            )
        except (asyncio.CancelledError, CancelledError):
            cancelled = True
            self._finding("DRILL_CANCELLED", "the drill was cancelled before it finished", could_not_verify=True)
        except Exception as exc:  # noqa: BLE001 - the drill itself broke: record it, still tear down
            self.broken = True
            self._finding("DRILL_ERROR", f"the drill broke: {_describe(exc)}")
        finally:
            self._status.group = self._status.approval = None
            await self._teardown()
            await self._permits.release_all()
        return cancelled

    async def _record(self, result: DrillResult) -> None:
        """Record the evidence, to the end even when cancelled meanwhile; a failure is an ERROR verdict."""
        self._status.phase = "evidence"
        try:
            result.evidence_path = await self._to_the_end(
                workflow.execute_activity_method(
                    DrillActivities.record_evidence,
                    result,
                    start_to_close_timeout=timedelta(minutes=5),
                    retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1), maximum_attempts=20),
                )
            )
        except ActivityError as exc:
            result.findings.append(Finding(code="EVIDENCE_NOT_RECORDED", message=_describe(exc)))
            result.verdict = "ERROR"

    async def _drill(self) -> None:
        """The drill's steps in order; a step that fails stops the ones that depend on it."""
        if not await self._select():
            return
        if not await self._recovery_points():
            return
        if not await self._isolation():
            return
        if self.spec.plan is not None:
            carry_on = await self._run_plan()
            await self._checks_after_the_plan()
            if not carry_on:
                return  # rejected, or nobody answered a gate: tear down now, no hold
        else:
            await self._restore_all()
            await self._validations()
        await self._hold()

    # ------------------------------------------------------------ steps

    async def _select(self) -> bool:
        """0. Targets that select their resources: discover the candidates, choose, and expand the
        drill into one target per chosen resource (drdrill/core/selection.py, pure)."""
        selecting = [t for t in self.spec.targets if t.select is not None]
        if not selecting:
            return True
        self._phase("select")
        started = workflow.now()
        found = await asyncio.gather(*(self._discover(t) for t in selecting))
        if not all(found):
            self._event("select", started, workflow.now(), "FAILED", detail="the resources to select from could not be listed")
            return False
        plan = selection.expand(self.spec, {d.target: d for d in found}, default_seed=self.ctx.drill_id, now=self.ctx.as_of)
        self.selections = plan.records
        self.findings += [Finding(code=p.code, message=p.message, target=p.target, severity=p.severity) for p in plan.problems]
        if not plan.empty:
            self.spec = recovery_plan.expand(plan.spec, {r.target: r.chosen for r in plan.records})
            self._status.targets = [TargetState(target=t.name, provider=t.provider) for t in self.spec.targets]
        detail = "; ".join(r.summary for r in plan.records)
        self._event("select", started, workflow.now(), "FAILED" if plan.empty else "PASSED", detail=detail)
        return not plan.empty

    async def _recovery_points(self) -> bool:
        """1. Recovery points, all targets at once."""
        self._phase("recovery point")
        started = workflow.now()
        results = await asyncio.gather(*(self._find_point(t) for t in self.spec.targets), return_exceptions=False)
        ok = all(results)
        self._event(
            "recovery point",
            started,
            workflow.now(),
            "PASSED" if ok else "FAILED",
            detail="; ".join(
                f"{p.target} {p.id} ({format_duration(self.ctx.as_of - p.consistent_time)} old)" for p in self.points.values()
            ),
        )
        return ok

    async def _isolation(self) -> bool:
        """2. Isolation per provider family, then proof that there is no way out."""
        self._phase("isolate")
        families = list(dict.fromkeys(t.family for t in self.spec.targets))
        started = workflow.now()
        envs = await asyncio.gather(*(self._isolate(f) for f in families))
        if not all(envs):
            self._event("isolate", started, workflow.now(), "FAILED", detail="could not create the isolated environment")
            return False
        self._event("isolate", started, workflow.now(), "PASSED", detail="; ".join(e.description or e.id for e in self.envs.values()))

        self._phase("verify isolation")
        started = workflow.now()
        proofs = await asyncio.gather(*(self._verify(e) for e in self.envs.values()))
        self.proofs = [p for p in proofs if p is not None]
        outcome = judging.worst([p.outcome for p in self.proofs] + (["COULD_NOT_VERIFY"] if None in proofs else []))
        checks = [c for p in self.proofs for c in p.checks]
        self._event(
            "verify isolation", started, workflow.now(), outcome, detail=judging.summary([c.outcome for c in checks], [c.name for c in checks])
        )
        if outcome != "PASSED":
            self._finding(
                "ISOLATION_NOT_PROVEN" if outcome == "COULD_NOT_VERIFY" else "ISOLATION_BROKEN",
                "the isolated environment could not be proven to have no route to production; nothing was restored into it",
                could_not_verify=outcome == "COULD_NOT_VERIFY",
            )
            return False
        return True

    async def _restore_all(self) -> None:
        """3. Restore every target in parallel; each then waits until it serves."""
        self._phase("restore")
        started = workflow.now()
        ready = await asyncio.gather(*(self._restore_limited(t) for t in self.spec.targets))
        self._event(
            "restore",
            started,
            workflow.now(),
            "PASSED" if all(ready) else "FAILED",
            detail="; ".join(f"{r.target}: {r.description or r.id}" for r in self.restored.values()),
        )

    async def _validations(self) -> None:
        """4. Validations, in parallel; a check whose target did not come back is NOT_RUN."""
        spec = self.spec
        await self._wait_for_probes()
        self._phase("validate")
        started = workflow.now()
        vals = await asyncio.gather(*(self._validate(i) for i in range(len(spec.validations))))
        self.validations = list(vals)
        if not spec.validations:
            self._finding(
                "NO_VALIDATIONS",
                "the drill has no validations: a restore nobody checked proves nothing",
                could_not_verify=True,
            )
        self._event(
            "validate",
            started,
            workflow.now(),
            judging.worst(v.outcome for v in self.validations if v.required) if self.validations else "COULD_NOT_VERIFY",
            detail=judging.summary([v.outcome for v in self.validations], [v.name for v in self.validations]),
        )

    async def _wait_for_probes(self, families: Optional[set[str]] = None) -> None:
        """Before the checks, wait (bounded) until each probe a restored family has (or each of
        `families`) polls its queue; once per family: a plan's later groups know the answer already."""
        ready = families if families is not None else {self.spec.target(name).family for name, r in self.restored.items() if r.ready}
        envs = [e for e in self.envs.values() if e.details.get("probe_queue") and e.family in ready and e.family not in self.probes]
        if not envs:
            return
        self._phase("probe")
        started = workflow.now()
        statuses = await asyncio.gather(*(self._wait_for_probe(e) for e in envs))
        self._event(
            "probe",
            started,
            workflow.now(),
            "PASSED" if all(s.polling for s in statuses) else "COULD_NOT_VERIFY",
            detail="; ".join(
                f"{e.family}: task queue {s.queue} "
                + (f"polled after {format_duration(s.waited_seconds)}" if s.polling else f"not polled within {format_duration(s.waited_seconds)}")
                for e, s in zip(envs, statuses)
            ),
        )

    async def _wait_for_probe(self, env: Environment) -> ProbeStatus:
        queue = env.details["probe_queue"]
        probe = self.spec.isolation.probe.for_family(env.family)
        bound = probe.start_timeout if probe is not None else PROBE_START_TIMEOUT
        try:
            status: ProbeStatus = await workflow.execute_activity_method(
                ProbeActivities.wait_for_probe,
                WaitForProbeInput(queue=queue, timeout_seconds=bound.total_seconds()),
                start_to_close_timeout=bound + timedelta(minutes=1),
                heartbeat_timeout=self.heartbeat,
                retry_policy=QUICK_RETRY,
            )
        except ActivityError as exc:
            status = ProbeStatus(queue=queue, polling=False)
            self._finding("PROBE_NOT_STARTED", f"could not ask Temporal whether the {env.family} probe polls {queue}: {_describe(exc)}", could_not_verify=True)
        else:
            if not status.polling:
                self._finding(
                    "PROBE_NOT_STARTED",
                    f"the {env.family} probe never polled its task queue {queue} within {format_duration(bound)}: "
                    "the checks that need the isolated network could not run (see the probe's log)",
                    could_not_verify=True,
                )
        self.probes[env.family] = status.polling
        return status


    # ------------------------------------------------------------ the recovery plan

    async def _run_plan(self) -> bool:
        """3-4. A recovery plan (drdrill/core/plan.py): the groups in the order listed, each behind
        its approval gate; a group's targets restore in parallel, and its checks must pass before
        the next group starts. A group that does not pass stops the plan: the later groups never
        start (their checks are NOT_RUN). False when a person rejected the plan or nobody answered
        a gate: the drill then tears down at once, without a hold."""
        groups = self.spec.plan or []
        for index, group in enumerate(groups):
            self._status.group = group.group
            approval = None
            gate = recovery_plan.gate_before(self.spec, group.group)
            if gate is not None:
                approval = await self._gate(group, gate)
                if approval.decision != "approved":
                    why = f"the plan stopped at the approval gate before group {group.group} ({approval.decision})"
                    self._never_started(groups[index:], why, approval)
                    self._status.group = None
                    return False
            if not await self._run_group(group, approval):
                self._never_started(groups[index + 1 :], self._stopped_at(group))
                break
        self._status.group = None
        return True

    async def _run_group(self, group: PlanGroup, approval: Optional[ApprovalRecord]) -> bool:
        """One group: its pre-actions, its targets restored in parallel, its checks, its
        post-actions. Its band on the timeline spans them all; True when it passed."""
        started = workflow.now()
        actions: list[ValidationResult] = []
        checks: list[ValidationResult] = []
        ready: Optional[datetime] = None

        def done(outcome: Outcome, detail: str = "") -> bool:
            result = recovery_plan.group_result(
                group, declared=self.declared, outcome=outcome, detail=detail, started=started, ended=workflow.now(),
                ready=ready, checks=checks, actions=actions, approval=approval,
            )
            self.groups.append(result)
            if group.checks and not checks and outcome != "PASSED":  # stopped before its checks: they did not run
                self.validations += recovery_plan.not_run(group, self._stopped_at(group))
            band = recovery_plan.summary(result)
            self._event("group", started, result.ended or started, outcome, detail=band, data={"rto_seconds": result.rto_seconds})
            return outcome == "PASSED"

        for index, action in enumerate(group.pre):
            outcome = await self._action(group, "pre", index, action, actions)
            if outcome != "PASSED":
                self._stop_group(group, "PRE_ACTION_FAILED", f"pre-action {actions[-1].name} {outcome}: {actions[-1].detail}", outcome)
                return done(outcome, f"pre-action {actions[-1].name} {outcome}")

        self._phase("restore")
        restore_started = workflow.now()
        restored = await asyncio.gather(*(self._restore_limited(self.spec.target(name)) for name in group.targets))
        ready = workflow.now()
        what = [f"{r.target}: {r.description or r.id}" for name in group.targets if (r := self.restored.get(name)) is not None]
        self._event("restore", restore_started, ready, "PASSED" if all(restored) else "FAILED", detail="; ".join(what))
        if not all(restored):
            missing = ", ".join(name for name, ok in zip(group.targets, restored) if not ok)
            self._stop_group(group, "GROUP_NOT_RESTORED", f"{missing} not restored", "FAILED")
            return done("FAILED", f"not restored: {missing}")

        if group.checks:
            named = [getattr(v, "target", None) for v in group.checks]
            await self._wait_for_probes({self.spec.target(name).family for name in [*group.targets, *named] if name})
            self._phase("validate")
            checks_started = workflow.now()
            names = recovery_plan.check_names(group)
            checks = list(await asyncio.gather(*(self._check(v, names[i]) for i, v in enumerate(group.checks))))
            self.validations += checks
            required = [c.outcome for c in checks if c.required]
            outcome = judging.worst(required) if required else "PASSED"
            summary = judging.summary([c.outcome for c in checks], [c.name for c in checks])
            self._event("validate", checks_started, workflow.now(), outcome, detail=summary)
            if outcome != "PASSED":
                bad = ", ".join(f"{c.name} {c.outcome}" for c in checks if c.required and c.outcome != "PASSED")
                self._stop_group(group, "GROUP_CHECKS_FAILED", f"its checks did not pass ({bad})", outcome)
                return done(outcome, f"checks: {bad}")

        for index, action in enumerate(group.post):
            outcome = await self._action(group, "post", index, action, actions)
            if outcome != "PASSED":
                self._stop_group(group, "POST_ACTION_FAILED", f"post-action {actions[-1].name} {outcome}: {actions[-1].detail}", outcome)
                return done(outcome, f"post-action {actions[-1].name} {outcome}")
        return done("PASSED")

    def _stop_group(self, group: PlanGroup, code: str, what: str, outcome: Outcome) -> None:
        later = [g.group for g in self.spec.plan or []]
        later = later[later.index(group.group) + 1 :]
        self._stop(code, f"group {group.group}: {what}; later groups never started: {', '.join(later) or 'none'}", outcome)

    def _stop(self, code: str, message: str, outcome: Outcome) -> None:
        """The plan stops here, with a finding: a check or action that could not run makes it one that could not verify."""
        self.plan_stop = Finding(code=code, message=message, could_not_verify=outcome in ("COULD_NOT_VERIFY", "NOT_RUN"))
        self.findings.append(self.plan_stop)

    def _stopped_at(self, group: PlanGroup) -> str:
        return f"the plan stopped at group {group.group} ({self.plan_stop.code if self.plan_stop else 'stopped'})"

    def _never_started(self, groups: list[PlanGroup], reason: str, approval: Optional[ApprovalRecord] = None) -> None:
        """Groups the plan never reached: NOT_RUN, with their checks NOT_RUN (never a pass)."""
        for i, group in enumerate(groups):
            gate = approval if i == 0 else None
            self.groups.append(recovery_plan.group_result(group, declared=self.declared, outcome="NOT_RUN", detail=reason, approval=gate))
            self.validations += recovery_plan.not_run(group, reason)

    async def _checks_after_the_plan(self) -> None:
        """After the last group: the drill's own validations (the whole service), unless the plan stopped."""
        spec = self.spec
        if spec.validations and self.plan_stop is None:
            await self._wait_for_probes()
            self._phase("validate")
            started = workflow.now()
            final = list(await asyncio.gather(*(self._validate(i) for i in range(len(spec.validations)))))
            required = [v.outcome for v in final if v.required]
            summary = judging.summary([v.outcome for v in final], [v.name for v in final])
            self._event("validate", started, workflow.now(), judging.worst(required) if required else "PASSED", detail=summary)
        else:
            reason = f"the plan stopped ({self.plan_stop.code})" if self.plan_stop else ""
            final = [
                ValidationResult(
                    name=spec.validation_name(i), type=v.type, target=getattr(v, "target", None), required=v.required,
                    outcome="NOT_RUN", detail=reason,
                )
                for i, v in enumerate(spec.validations)
            ]
        self.validations += final
        if not self.validations:
            self._finding("NO_VALIDATIONS", "the drill has no validations: a restore nobody checked proves nothing", could_not_verify=True)

    async def _action(self, group: PlanGroup, when: str, index: int, action: PlanAction, results: list[ValidationResult]) -> Outcome:
        """A pre- or post-action: a `command`, run on the worker or in the probe of its target's
        network, through the validation activity (a probe runs nothing else). Its result is kept
        with the group, and on the timeline."""
        name = action.label(when, index)
        check = CommandValidation(
            type="command", name=name, argv=action.argv, expect_exit=action.expect_exit, timeout=action.timeout, target=action.target,
            env=action.env,
        )
        family = self.spec.target(action.target).family if action.target else None
        if action.on == "probe" and family is None:
            family = next((e.family for e in self.envs.values() if e.details.get("probe_queue")), None)
        self._phase(f"{when}-action")
        started = workflow.now()
        queue, schedule_to_close, where = self._queue(family) if family else None, None, ""
        env = self.envs.get(family) if family else None
        result: Optional[ValidationResult] = None
        if action.on == "probe":
            probe_queue = env.details.get("probe_queue") if env is not None else None
            if probe_queue:
                await self._wait_for_probes({env.family})  # type: ignore[union-attr]
            if not probe_queue or not self.probes.get(env.family):  # type: ignore[union-attr]
                why = f"no probe runs in the {family} network" if not probe_queue else f"the {family} probe never polled its task queue {probe_queue}"
                result = self._not_checked(check, name, action.target, f"the action could not run: {why}")
            else:
                queue, schedule_to_close, where = probe_queue, action.timeout + 4 * self.heartbeat, f" in the {family} probe"
        if result is None:
            result = await self._run_check(check, name, queue, schedule_to_close, where)
        results.append(result)
        self._event(f"{when}-action", started, workflow.now(), result.outcome, target=action.target, detail=f"{name}: {result.detail}")
        return result.outcome

    async def _gate(self, group: PlanGroup, gate: ApprovalGate) -> ApprovalRecord:
        """Wait for a person at the gate before `group`: `drdrill approve` or `drdrill reject`
        (DrillWorkflow.approve / reject, updates), or the gate's timeout. The webhooks are told
        who can approve and how meanwhile. Replayed on another worker, the wait goes on from the
        history: an answer given before the crash still counts, the timeout still holds."""
        asked = workflow.now()
        self._decision = None
        self._pending = PendingApproval(group=group.group, approvers=gate.names, asked=asked, until=asked + gate.timeout)
        self._open_gate = gate
        self._status.approval = self._pending
        self._phase(WAITING_FOR_APPROVAL)
        notice = asyncio.ensure_future(self._tell_approvers(self._pending))
        try:
            await workflow.wait_condition(lambda: self._decision is not None, timeout=gate.timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self._status.approval = None
            self._pending = self._open_gate = None  # no answer is taken any more, whatever ended the wait
        if not notice.done():
            notice.cancel()  # nobody needs telling any more
        record = self._decision or ApprovalRecord(
            group=group.group, decision="timed out", approvers=gate.names, asked=asked, decided=workflow.now()
        )
        note = f": {record.note}" if record.note else ""
        data = _approval_data(record)
        if record.decision == "approved":
            self._event("approval", asked, record.decided, "PASSED", detail=f"group {group.group} approved by {record.by}{note}", data=data)
        elif record.decision == "rejected":
            self._event("approval", asked, record.decided, "FAILED", detail=f"group {group.group} rejected by {record.by}{note}", data=data)
            why = f"{record.by} rejected the plan before group {group.group}{note}; it stopped there and the drill tore down"
            self._stop("APPROVAL_REJECTED", why, "FAILED")
        else:
            waited = format_duration(gate.timeout)
            self._event("approval", asked, record.decided, "FAILED", detail=f"nobody approved group {group.group} within {waited}", data=data)
            self._stop(
                "APPROVAL_TIMED_OUT",
                f"nobody approved group {group.group} within {waited} (approvers: {', '.join(gate.names)}); "
                "the plan stopped there and the drill tore down",
                "FAILED",
            )
        return record

    async def _tell_approvers(self, pending: PendingApproval) -> None:
        """Post the approval request to the drill's webhooks: who can approve, and how. A webhook
        that cannot be told is a warning finding; the gate waits either way."""
        notice = ApprovalNotice(
            group=pending.group,
            approvers=pending.approvers,
            until=pending.until,
            approve=f'drdrill approve {self.ctx.drill_id} --group {pending.group} --note "…"',
            reject=f'drdrill reject {self.ctx.drill_id} --note "…"',
        )
        webhooks = self.spec.notify.webhooks_env
        calls = [
            workflow.execute_activity_method(
                NotifyActivities.notify,
                NotifyInput(
                    webhook_env=env, event="APPROVAL", drill_id=self.ctx.drill_id, drill_name=self.spec.name, run_id=workflow.info().run_id,
                    verdict="WAITING", started_by=self.started_by, approval=notice,
                ),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=APPROVAL_NOTICE_RETRY,
            )
            for env in webhooks
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        failed = [f"{env}: {_describe(o)}" for env, o in zip(webhooks, outcomes) if isinstance(o, ActivityError)]
        if failed:
            message = f"the approvers of group {pending.group} could not be told: {'; '.join(failed)}"
            self.findings.append(Finding(code="APPROVAL_NOT_NOTIFIED", severity="warning", message=message))

    # ------------------------------------------------------------ one target, one family, one check

    async def _discover(self, target: Target) -> Optional[selection.Discovery]:
        try:
            return await workflow.execute_activity_method(
                DrillActivities.discover,
                DiscoverInput(ctx=self.ctx, target=target),
                start_to_close_timeout=timedelta(minutes=10),
                retry_policy=QUICK_RETRY,
            )
        except ActivityError as exc:
            self._activity_finding(exc, target.name, "SELECTION_FAILED")
            return None

    async def _find_point(self, target: Target) -> bool:
        self._target(target.name, "recovery point")
        try:
            point: RecoveryPoint = await workflow.execute_activity_method(
                DrillActivities.find_recovery_point,
                FindRecoveryPointInput(ctx=self.ctx, target=target),
                start_to_close_timeout=timedelta(minutes=5),
                retry_policy=QUICK_RETRY,
            )
        except ActivityError as exc:
            self._activity_finding(exc, target.name, "RECOVERY_POINT_NOT_FOUND")
            self._target(target.name, "recovery point", "FAILED", _describe(exc))
            return False
        self.points[target.name] = point
        for f in point.findings:
            self.findings.append(f)
        self._target(target.name, "recovery point", "PASSED", f"{point.id} at {point.consistent_time.isoformat()}")
        return True

    async def _isolate(self, family: str) -> Optional[Environment]:
        targets = [t for t in self.spec.targets if t.family == family]
        try:
            # Resources that live on a worker's own disk (postgres clusters) pin the family to
            # that worker's host: every later activity for it goes to the host's queue.
            self.hosts[family] = await workflow.execute_activity_method(
                DrillActivities.claim_host, family, start_to_close_timeout=timedelta(seconds=30), retry_policy=QUICK_RETRY
            )
        except ActivityError as exc:
            self._activity_finding(exc, None, "ISOLATION_FAILED")
            return None
        # Until we hear back, the environment may be half-created: teardown finds it by tag.
        self.envs.setdefault(family, Environment(family=family, drill_id=self.ctx.drill_id, id=self.ctx.resource_name()))
        try:
            env: Environment = await workflow.execute_activity_method(
                DrillActivities.create_isolation,
                CreateIsolationInput(ctx=self.ctx, family=family, isolation=self.spec.isolation, targets=targets),
                task_queue=self._queue(family),
                start_to_close_timeout=timedelta(minutes=30),
                heartbeat_timeout=self.slow_heartbeat,
                retry_policy=LONG_RETRY,
                # On cancellation, wait until the activity has stopped: teardown must not run
                # while a create call is still in flight, or what it creates afterwards leaks.
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        except ActivityError as exc:
            self._activity_finding(exc, None, "ISOLATION_FAILED")
            return None
        self.envs[family] = env
        return env

    async def _verify(self, env: Environment) -> Optional[IsolationProof]:
        try:
            return await workflow.execute_activity_method(
                DrillActivities.verify_isolation,
                VerifyIsolationInput(ctx=self.ctx, env=env),
                task_queue=self._queue(env.family),
                start_to_close_timeout=timedelta(minutes=5),
                retry_policy=QUICK_RETRY,
            )
        except ActivityError as exc:
            self._activity_finding(exc, None, "ISOLATION_NOT_PROVEN", could_not_verify=True)
            return None

    async def _restore(self, target: Target) -> bool:
        env = self.envs[target.family]
        point = self.points[target.name]
        timeout = target.restore.timeout
        self._target(target.name, "restore")
        restore_started = workflow.now()
        try:
            resource: RestoredResource = await workflow.execute_activity_method(
                DrillActivities.restore,
                RestoreInput(ctx=self.ctx, target=target, point=point, env=env, endpoints=recovery_plan.endpoints_for(target, self.restored)),
                task_queue=self._queue(target.family),
                start_to_close_timeout=timeout,
                heartbeat_timeout=self.heartbeat,
                retry_policy=LONG_RETRY,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
            self.restored[target.name] = resource
            self.findings.extend(resource.findings)
            self._target(target.name, "wait ready")
            resource = await workflow.execute_activity_method(
                DrillActivities.wait_ready,
                WaitReadyInput(
                    ctx=self.ctx, target=target, resource=resource, timeout_seconds=timeout.total_seconds(), restore_started=restore_started,
                    endpoints=recovery_plan.endpoints_for(target, self.restored),
                ),
                task_queue=self._queue(target.family),
                start_to_close_timeout=timeout + timedelta(minutes=1),
                heartbeat_timeout=self.heartbeat,
                retry_policy=QUICK_RETRY,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        except ActivityError as exc:
            self._activity_finding(exc, target.name, "RESTORE_FAILED")
            self._target(target.name, "restore", "FAILED", _describe(exc))
            return False
        if resource.findings:
            known = {(f.code, f.message) for f in self.findings}
            self.findings.extend(f for f in resource.findings if (f.code, f.message) not in known)
        self.restored[target.name] = resource
        # The target's own restore span (restore started → ready noticed): the next drill of this
        # target expects its readiness around the same time (drdrill.evidence.history).
        self._event("restore", restore_started, workflow.now(), "PASSED", target=target.name, detail=resource.description or resource.id)
        self._target(target.name, "ready", "PASSED", resource.description or resource.id)
        return True

    async def _restore_limited(self, target: Target) -> bool:
        """_restore within the restore limit of the target's account/region (DRDRILL_RESTORE_LIMITS)."""
        await self._permits.acquire_restore(target, self.spec, on_wait=lambda: self._target(target.name, "restore queued"))
        try:
            return await self._restore(target)
        finally:
            await self._permits.release_restore(target, self.spec)

    async def _validate(self, index: int) -> ValidationResult:
        return await self._check(self.spec.validations[index], self.spec.validation_name(index))

    async def _check(self, v: Any, name: str) -> ValidationResult:
        """One check, where it has to run: on the worker, in its family's probe, or nowhere (could not verify)."""
        tname = getattr(v, "target", None)
        resource = self.restored.get(tname) if tname else None
        if tname and (resource is None or not resource.ready):
            return ValidationResult(
                name=name,
                type=v.type,
                target=tname,
                required=v.required,
                outcome="NOT_RUN",
                detail=f"target {tname} was not restored",
            )
        family = self.spec.target(tname).family if tname else None
        queue = self._queue(family) if family else None
        schedule_to_close, where = None, ""
        env = self.envs.get(family) if family else None
        if env is not None and v.type not in WORKER_CHECKS:
            # A check that needs the network runs where the network is: in the family's probe.
            probe_queue = env.details.get("probe_queue")
            if probe_queue and not self.probes.get(family):
                return self._not_checked(v, name, tname, f"the {family} probe never polled its task queue {probe_queue} (PROBE_NOT_STARTED)")
            if probe_queue:
                # A probe that dies mid-check is noticed by its heartbeat; the retry waits on its
                # queue for a probe no longer than a check could take, then the check could not run.
                queue, schedule_to_close = probe_queue, v.timeout + 4 * self.heartbeat
                where = f" in the {family} probe (task queue {probe_queue})"
            elif env.details.get("reachable_from_worker") is False:
                return self._not_checked(
                    v, name, tname,
                    f"target {tname} is in an isolated network the worker cannot reach ({env.description or env.id}), and "
                    f"this drill runs no probe there: set isolation.probe.{family} to run {v.type} checks inside it",
                )
        return await self._run_check(v, name, queue, schedule_to_close, where)

    async def _run_check(self, v: Any, name: str, queue: Optional[str], schedule_to_close: Optional[timedelta], where: str) -> ValidationResult:
        """Run a check (or an action) through the validation activity on `queue`; could not verify when it could not run."""
        tname = getattr(v, "target", None)
        resource = self.restored.get(tname) if tname else None
        try:
            return await workflow.execute_activity_method(
                ValidationActivities.validate,
                ValidateInput(
                    validation=v,
                    name=name,
                    resource=_for_checks(resource),
                    point=self.points.get(tname) if tname else None,
                    declared=self.declared,
                    rpo_objective_seconds=self.spec.objectives.rpo.total_seconds(),
                    drill_name=self.spec.name,
                ),
                task_queue=queue,
                start_to_close_timeout=v.timeout + timedelta(minutes=2),
                schedule_to_close_timeout=schedule_to_close,
                heartbeat_timeout=self.heartbeat,
                retry_policy=QUICK_RETRY,
            )
        except ActivityError as exc:
            return ValidationResult(
                name=name,
                type=v.type,
                target=tname,
                required=v.required,
                outcome="COULD_NOT_VERIFY",
                detail=f"the check could not run{where}: {_describe(exc)}",
            )

    def _not_checked(self, v: Any, name: str, target: Optional[str], why: str) -> ValidationResult:
        """A check that cannot run where it would have to: COULD_NOT_VERIFY at once, nothing attempted."""
        now = workflow.now()
        return ValidationResult(
            name=name, type=v.type, target=target, required=v.required, outcome="COULD_NOT_VERIFY",
            detail=why, started=now, finished=now, attempts=0,
        )

    async def _hold(self) -> None:
        hold = self.spec.teardown.hold
        if hold <= timedelta(0):
            return
        self._phase("hold")
        started = workflow.now()
        self._hold_until = started + hold
        self._max_hold_until = started + self.spec.teardown.max_hold
        self._status.hold_until = self._hold_until
        while not self._released:
            remaining = (self._hold_until - workflow.now()).total_seconds()
            if remaining <= 0:
                break
            try:
                await workflow.wait_condition(lambda: self._released, timeout=remaining)
            except asyncio.TimeoutError:
                continue  # an extension may have moved hold_until: re-check
        how = "released" if self._released else "hold expired"
        self._event("hold", started, workflow.now(), "PASSED", detail=f"environment held for inspection; {how}")

    async def _teardown(self) -> None:
        """Tear down every environment, retrying until it succeeds; never skipped, never hidden."""
        self._phase("teardown")
        started = workflow.now()
        envs = list(self.envs.values())
        if not envs:
            # Creation may have been interrupted before we heard back: tear down by tag anyway.
            families = list(dict.fromkeys(t.family for t in self.spec.targets)) if self.points else []
            envs = [Environment(family=f, drill_id=self.ctx.drill_id, id=self.ctx.resource_name()) for f in families]
        reports = await self._to_the_end(asyncio.gather(*(self._teardown_one(e) for e in envs)))
        self.teardowns = list(reports)
        retried = [r for r in reports if r.attempt > 1]
        for r in retried:
            self.findings.append(
                Finding(
                    code="TEARDOWN_RETRIED",
                    severity="warning",
                    message=f"teardown of {r.environment_id} succeeded on attempt {r.attempt}",
                )
            )
        refused = [o for r in reports for o in r.outcomes if o.result == "refused"]
        if refused:
            self.findings.append(
                Finding(
                    code="TEARDOWN_REFUSED_UNTAGGED",
                    severity="warning",
                    message="left alone, not provably this drill's: " + "; ".join(f"{o.label} ({o.reason or 'no reason given'})" for o in refused),
                )
            )
        detail = "; ".join(
            f"{r.environment_id}: deleted {len(r.deleted)}, already gone {len(r.already_gone)}"
            + (f", attempt {r.attempt}" if r.attempt > 1 else "")
            for r in reports
        )
        self._event("teardown", started, workflow.now(), "PASSED", detail=detail or "nothing was created")

    async def _to_the_end(self, awaitable: Any) -> Any:
        """Await `awaitable` to its end even when the workflow is cancelled meanwhile (teardown,
        evidence): the cancellation is remembered in `_late_cancel` and honoured afterwards. Without
        this a cancel during teardown ended the workflow at once, abandoning the teardown activity
        (leaking what it had not deleted yet) and recording no evidence."""
        fut = asyncio.ensure_future(awaitable)
        while True:
            try:
                return await asyncio.shield(fut)
            except (asyncio.CancelledError, CancelledError):
                if fut.cancelled():
                    raise
                self._late_cancel = True

    def _queue(self, family: str) -> Optional[str]:
        """The task queue for a family's activities: its host's, when it has one, else the drill's."""
        return self.hosts.get(family) or None

    async def _teardown_one(self, env: Environment) -> TeardownReport:
        # Shielded: a cancellation of the workflow must not cancel its own cleanup.
        handle = workflow.start_activity_method(
            DrillActivities.teardown,
            TeardownInput(
                ctx=self.ctx,
                env=env,
                alert_webhooks_env=self.spec.notify.webhooks_env if "TEARDOWN" in self.spec.notify.on else [],
            ),
            task_queue=self._queue(env.family),
            start_to_close_timeout=timedelta(minutes=30),
            heartbeat_timeout=self.slow_heartbeat,
            retry_policy=TEARDOWN_RETRY,
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        return await asyncio.shield(handle)


    # ------------------------------------------------------------ the result

    def _result(self, inp: DrillInput, cancelled: bool) -> DrillResult:
        """What the drill found and proved, judged (drdrill/core/judging.py)."""
        if self.spec.plan is not None and self.groups:
            objectives = recovery_plan.objectives(self.spec, self.declared, self.points, self.validations, self.plan_stop, as_of=self.ctx.as_of)
        else:
            objectives = judging.objectives(self.spec, self.declared, self.points, self.restored, self.validations, as_of=self.ctx.as_of)
        rto, rpo = objectives
        groups = self.groups + [
            recovery_plan.group_result(g, declared=self.declared, outcome="NOT_RUN", detail="the drill ended before the group started")
            for g in self.spec.plan or []
            if g.group not in {r.group for r in self.groups}
        ]
        return DrillResult(
            drill_id=self.ctx.drill_id,
            run_id=workflow.info().run_id,
            name=self.spec.name,
            verdict=judging.verdict(
                self.findings,
                self.validations,
                objectives + recovery_plan.group_objectives(groups),
                self.proofs,
                broken=self.broken,
                cancelled=cancelled,
            ),
            declared=self.declared,
            ended=workflow.now(),
            as_of=inp.as_of,
            started_by=inp.started_by,
            spec_sha256=self.spec.source_sha256,
            spec_text=self.spec.source_text,
            objectives=objectives,
            rto_seconds=rto.achieved_seconds,
            rpo_seconds=rpo.achieved_seconds,
            recovery_points=list(self.points.values()),
            environments=list(self.envs.values()),
            isolation=self.proofs,
            restored=list(self.restored.values()),
            validations=self.validations,
            findings=self.findings,
            teardown=self.teardowns,
            timeline=self._status.timeline,
            cancelled=cancelled,
            selections=self.selections,
            resources=selection.resource_keys(self.spec.targets),
            groups=groups,
            simulated=any(t.provider == "sim" for t in self.spec.targets),
        )

    # ------------------------------------------------------------ bookkeeping

    def _phase(self, phase: str) -> None:
        self._status.phase = phase

    def _target(self, name: str, phase: str, outcome: Optional[Outcome] = None, detail: str = "") -> None:
        for t in self._status.targets:
            if t.target == name:
                t.phase, t.outcome, t.detail = phase, outcome, detail
        if outcome is not None:
            now = workflow.now()
            self._event(phase, now, now, outcome, target=name, detail=detail)

    def _event(
        self,
        phase: str,
        started: datetime,
        ended: datetime,
        outcome: Outcome,
        target: Optional[str] = None,
        detail: str = "",
        data: Optional[dict] = None,
    ) -> None:
        # Within a recovery plan's group, every event names the group: the timeline's bands.
        data = {"group": self._status.group, **(data or {})} if self._status.group else (data or {})
        self._status.timeline.append(
            TimelineEvent(phase=phase, started=started, ended=ended, outcome=outcome, target=target, detail=detail, data=data)
        )

    def _finding(self, code: str, message: str, target: Optional[str] = None, could_not_verify: bool = False) -> None:
        self.findings.append(Finding(code=code, message=message, target=target, could_not_verify=could_not_verify))

    def _activity_finding(self, exc: ActivityError, target: Optional[str], default_code: str, could_not_verify: bool = False) -> None:
        cause = exc.cause
        if isinstance(cause, ApplicationError) and cause.details:
            try:
                f = Finding.model_validate(cause.details[0])
                self.findings.append(f)
                return
            except Exception:  # noqa: BLE001 - fall through to a generic finding
                pass
        code = cause.type if isinstance(cause, ApplicationError) and cause.type and cause.type.isupper() else default_code
        self._finding(code, _describe(exc), target, could_not_verify=could_not_verify)


def _describe(exc: BaseException) -> str:
    """The innermost message of an activity failure, for findings and the timeline."""
    seen = exc
    while getattr(seen, "cause", None) is not None:
        seen = seen.cause  # type: ignore[assignment]
    msg = str(seen) or type(seen).__name__
    return msg


def _approval_data(record: ApprovalRecord) -> dict:
    """What the timeline keeps of an answer at a gate (the group's result keeps the whole record)."""
    return {
        "decision": record.decision,
        "by": record.by,
        "note": record.note,
        "asked": record.asked.isoformat(),
        "decided": record.decided.isoformat(),
        "signer": record.signer,
        "fingerprint": record.fingerprint,
    }


def _for_checks(resource: Optional[RestoredResource]) -> Optional[RestoredResource]:
    """The restored resource as a check needs it: without the restored structure (a list of every
    catalog object, kept in the evidence), which would otherwise travel in every check's input."""
    if resource is None or "structure" not in resource.details:
        return resource
    return resource.model_copy(update={"details": {k: v for k, v in resource.details.items() if k != "structure"}})
