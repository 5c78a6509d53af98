"""A recovery plan in the workflow (drdrill/core/plan.py says what it means, pure): its groups in
order, the approval gate before a group, and the pre- and post-actions around a group.

A group's targets restore in parallel and its checks must pass before the next group starts; a group
that does not pass stops the plan, and the later groups never start (their checks are NOT_RUN). At a
gate the plan waits for a signed answer (`drdrill approve` / `drdrill reject`: DrillWorkflow.approve /
reject, updates, taken by `decide` here) or the gate's timeout. Deterministic: time only from
`workflow.now()`.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Optional

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from drdrill.core import approvals, judging
    from drdrill.core import plan as recovery_plan
    from drdrill.providers.activity_io import ApprovalNotice, NotifyInput
    from drdrill.core.models import ApprovalRecord, ApprovalRequest, Finding, Outcome, PendingApproval, ValidationResult
    from drdrill.core.durations import format_duration
    from drdrill.core.planspec import ApprovalGate, PlanAction, PlanGroup
    from drdrill.core.validations import CommandValidation

from workflows import calls, steps
from workflows.state import DrillState, describe

WAITING_FOR_APPROVAL = "waiting for approval"  # the phase `drdrill status` shows at a gate
# Histories from before approvals were signed took an answer by the name it gave: replayed, they
# still do (workflow.patched); every answer a worker takes now is signed.
SIGNED_APPROVALS = "signed-approvals"
MAX_REFUSED_ANSWERS = 20  # refused answers recorded per drill; later ones are refused unrecorded (a flood)


async def run_plan(s: DrillState) -> bool:
    """3-4. The groups in the order listed, each behind its approval gate. False when a person
    rejected the plan or nobody answered a gate: the drill then tears down at once, without a hold."""
    groups = s.spec.plan or []
    for index, group in enumerate(groups):
        s.status.group = group.group
        approval = None
        gate = recovery_plan.gate_before(s.spec, group.group)
        if gate is not None:
            approval = await _gate(s, group, gate)
            if approval.decision != "approved":
                why = f"the plan stopped at the approval gate before group {group.group} ({approval.decision})"
                _never_started(s, groups[index:], why, approval)
                s.status.group = None
                return False
        if not await _run_group(s, group, approval):
            _never_started(s, groups[index + 1 :], _stopped_at(s, group))
            break
    s.status.group = None
    return True


class _Group:
    """One group as it runs: its band on the timeline spans its actions, restore and checks."""

    def __init__(self, s: DrillState, group: PlanGroup, approval: Optional[ApprovalRecord]):
        self.s, self.group, self.approval = s, group, approval
        self.started = workflow.now()
        self.actions: list[ValidationResult] = []
        self.checks: list[ValidationResult] = []
        self.ready: Optional[datetime] = None

    def done(self, outcome: Outcome, detail: str = "") -> bool:
        """The group's result, kept and put on the timeline; True when it passed."""
        s, group = self.s, self.group
        result = recovery_plan.group_result(
            group, declared=s.declared, outcome=outcome, detail=detail, started=self.started, ended=workflow.now(),
            ready=self.ready, checks=self.checks, actions=self.actions, approval=self.approval,
        )
        s.groups.append(result)
        if group.checks and not self.checks and outcome != "PASSED":  # stopped before its checks: they did not run
            s.validations += recovery_plan.not_run(group, _stopped_at(s, group))
        band = recovery_plan.summary(result)
        s.event("group", self.started, result.ended or self.started, outcome, detail=band, data={"rto_seconds": result.rto_seconds})
        return outcome == "PASSED"

    async def actions_pass(self, when: str, actions: list[PlanAction]) -> Optional[bool]:
        """The group's pre- or post-actions in order; None when all passed, else the group's end."""
        for index, action in enumerate(actions):
            outcome = await _action(self.s, when, index, action, self.actions)
            if outcome != "PASSED":
                last = self.actions[-1]
                code = "PRE_ACTION_FAILED" if when == "pre" else "POST_ACTION_FAILED"
                _stop_group(self.s, self.group, code, f"{when}-action {last.name} {outcome}: {last.detail}", outcome)
                return self.done(outcome, f"{when}-action {last.name} {outcome}")
        return None


async def _run_group(s: DrillState, group: PlanGroup, approval: Optional[ApprovalRecord]) -> bool:
    """One group: its pre-actions, its targets restored in parallel, its checks, its post-actions."""
    g = _Group(s, group, approval)
    if (stopped := await g.actions_pass("pre", group.pre)) is not None:
        return stopped

    s.phase("restore")
    restore_started = workflow.now()
    restored = await asyncio.gather(*(steps.restore_limited(s, s.spec.target(name)) for name in group.targets))
    g.ready = workflow.now()
    what = [f"{r.target}: {r.description or r.id}" for name in group.targets if (r := s.restored.get(name)) is not None]
    s.event("restore", restore_started, g.ready, "PASSED" if all(restored) else "FAILED", detail="; ".join(what))
    if not all(restored):
        missing = ", ".join(name for name, ok in zip(group.targets, restored) if not ok)
        _stop_group(s, group, "GROUP_NOT_RESTORED", f"{missing} not restored", "FAILED")
        return g.done("FAILED", f"not restored: {missing}")

    if group.checks:
        named = [getattr(v, "target", None) for v in group.checks]
        await steps.wait_for_probes(s, {s.spec.target(name).family for name in [*group.targets, *named] if name})
        s.phase("validate")
        checks_started = workflow.now()
        names = recovery_plan.check_names(group)
        g.checks = list(await asyncio.gather(*(steps.check(s, v, names[i]) for i, v in enumerate(group.checks))))
        s.validations += g.checks
        required = [c.outcome for c in g.checks if c.required]
        outcome = judging.worst(required) if required else "PASSED"
        s.event("validate", checks_started, workflow.now(), outcome, detail=judging.summary([c.outcome for c in g.checks], [c.name for c in g.checks]))
        if outcome != "PASSED":
            bad = ", ".join(f"{c.name} {c.outcome}" for c in g.checks if c.required and c.outcome != "PASSED")
            _stop_group(s, group, "GROUP_CHECKS_FAILED", f"its checks did not pass ({bad})", outcome)
            return g.done(outcome, f"checks: {bad}")

    if (stopped := await g.actions_pass("post", group.post)) is not None:
        return stopped
    return g.done("PASSED")


def _stop_group(s: DrillState, group: PlanGroup, code: str, what: str, outcome: Outcome) -> None:
    later = [g.group for g in s.spec.plan or []]
    later = later[later.index(group.group) + 1 :]
    _stop(s, code, f"group {group.group}: {what}; later groups never started: {', '.join(later) or 'none'}", outcome)


def _stop(s: DrillState, code: str, message: str, outcome: Outcome) -> None:
    """The plan stops here, with a finding: a check or action that could not run makes it one that could not verify."""
    s.plan_stop = Finding(code=code, message=message, could_not_verify=outcome in ("COULD_NOT_VERIFY", "NOT_RUN"))
    s.findings.append(s.plan_stop)


def _stopped_at(s: DrillState, group: PlanGroup) -> str:
    return f"the plan stopped at group {group.group} ({s.plan_stop.code if s.plan_stop else 'stopped'})"


def _never_started(s: DrillState, groups: list[PlanGroup], reason: str, approval: Optional[ApprovalRecord] = None) -> None:
    """Groups the plan never reached: NOT_RUN, with their checks NOT_RUN (never a pass)."""
    for i, group in enumerate(groups):
        gate = approval if i == 0 else None
        s.groups.append(recovery_plan.group_result(group, declared=s.declared, outcome="NOT_RUN", detail=reason, approval=gate))
        s.validations += recovery_plan.not_run(group, reason)


async def checks_after_the_plan(s: DrillState) -> None:
    """After the last group: the drill's own validations (the whole service), unless the plan stopped."""
    spec = s.spec
    if spec.validations and s.plan_stop is None:
        final, started = await steps.run_validations(s)
        required = [v.outcome for v in final if v.required]
        summary = judging.summary([v.outcome for v in final], [v.name for v in final])
        s.event("validate", started, workflow.now(), judging.worst(required) if required else "PASSED", detail=summary)
    else:
        reason = f"the plan stopped ({s.plan_stop.code})" if s.plan_stop else ""
        final = [
            ValidationResult(
                name=spec.validation_name(i), type=v.type, target=getattr(v, "target", None), required=v.required, outcome="NOT_RUN", detail=reason,
            )
            for i, v in enumerate(spec.validations)
        ]
    s.validations += final
    steps.no_validations(s)


async def _action(s: DrillState, when: str, index: int, action: PlanAction, results: list[ValidationResult]) -> Outcome:
    """A pre- or post-action: a `command`, run on the worker or in the probe of its target's
    network, through the validation activity (a probe runs nothing else). Its result is kept
    with the group, and on the timeline."""
    name = action.label(when, index)
    check = CommandValidation(
        type="command", name=name, argv=action.argv, expect_exit=action.expect_exit, timeout=action.timeout, target=action.target, env=action.env,
    )
    family = s.spec.target(action.target).family if action.target else None
    if action.on == "probe" and family is None:
        family = next((e.family for e in s.envs.values() if e.details.get("probe_queue")), None)
    s.phase(f"{when}-action")
    started = workflow.now()
    env = s.envs.get(family) if family else None
    if action.on == "probe" and env is not None and env.details.get("probe_queue"):
        await steps.wait_for_probes(s, {env.family})
    where = calls.placement(s, family, action.timeout, network=False, probe_only=action.on == "probe")
    if where.refused:
        why = f"no probe runs in the {family} network" if where.refused == "no probe" else f"the {family} probe never polled its task queue {where.probe_queue}"
        result = s.not_checked(check, name, action.target, f"the action could not run: {why}")
    else:
        result = await steps.run_check(s, check, name, where, f" in the {family} probe" if where.probe_queue else "")
    results.append(result)
    s.event(f"{when}-action", started, workflow.now(), result.outcome, target=action.target, detail=f"{name}: {result.detail}")
    return result.outcome


# ------------------------------------------------------------ approval gates


async def _gate(s: DrillState, group: PlanGroup, gate: ApprovalGate) -> ApprovalRecord:
    """Wait for a person at the gate before `group`, or the gate's timeout; the webhooks are told
    who can approve and how meanwhile. Replayed on another worker, the wait goes on from the
    history: an answer given before the crash still counts, the timeout still holds."""
    asked = workflow.now()
    s.decision = None
    s.pending = PendingApproval(group=group.group, approvers=gate.names, asked=asked, until=asked + gate.timeout)
    s.open_gate = gate
    s.status.approval = s.pending
    s.phase(WAITING_FOR_APPROVAL)
    notice = asyncio.ensure_future(_tell_approvers(s, s.pending))
    try:
        await workflow.wait_condition(lambda: s.decision is not None, timeout=gate.timeout)
    except asyncio.TimeoutError:
        pass
    finally:
        s.status.approval = None
        s.pending = s.open_gate = None  # no answer is taken any more, whatever ended the wait
    if not notice.done():
        notice.cancel()  # nobody needs telling any more
    record = s.decision or ApprovalRecord(group=group.group, decision="timed out", approvers=gate.names, asked=asked, decided=workflow.now())
    _gate_answered(s, group, gate, record)
    return record


def _gate_answered(s: DrillState, group: PlanGroup, gate: ApprovalGate, record: ApprovalRecord) -> None:
    """The answer on the timeline; a rejection or no answer stops the plan."""
    note = f": {record.note}" if record.note else ""
    data = _approval_data(record)
    if record.decision == "approved":
        s.event("approval", record.asked, record.decided, "PASSED", detail=f"group {group.group} approved by {record.by}{note}", data=data)
    elif record.decision == "rejected":
        s.event("approval", record.asked, record.decided, "FAILED", detail=f"group {group.group} rejected by {record.by}{note}", data=data)
        why = f"{record.by} rejected the plan before group {group.group}{note}; it stopped there and the drill tore down"
        _stop(s, "APPROVAL_REJECTED", why, "FAILED")
    else:
        waited = format_duration(gate.timeout)
        s.event("approval", record.asked, record.decided, "FAILED", detail=f"nobody approved group {group.group} within {waited}", data=data)
        _stop(
            s, "APPROVAL_TIMED_OUT",
            f"nobody approved group {group.group} within {waited} (approvers: {', '.join(gate.names)}); the plan stopped there and the drill tore down",
            "FAILED",
        )


async def _tell_approvers(s: DrillState, pending: PendingApproval) -> None:
    """Post the approval request to the drill's webhooks: who can approve, and how. A webhook
    that cannot be told is a warning finding; the gate waits either way."""
    notice = ApprovalNotice(
        group=pending.group,
        approvers=pending.approvers,
        until=pending.until,
        approve=f'drdrill approve {s.ctx.drill_id} --group {pending.group} --note "…"',
        reject=f'drdrill reject {s.ctx.drill_id} --note "…"',
    )
    webhooks = s.spec.notify.webhooks_env
    calls_made = [
        calls.notify(
            NotifyInput(
                webhook_env=env, event="APPROVAL", drill_id=s.ctx.drill_id, drill_name=s.spec.name, run_id=workflow.info().run_id,
                verdict="WAITING", started_by=s.started_by, approval=notice,
            )
        )
        for env in webhooks
    ]
    outcomes = await asyncio.gather(*calls_made, return_exceptions=True)
    failed = [f"{env}: {describe(o)}" for env, o in zip(webhooks, outcomes) if isinstance(o, ActivityError)]
    if failed:
        message = f"the approvers of group {pending.group} could not be told: {'; '.join(failed)}"
        s.findings.append(Finding(code="APPROVAL_NOT_NOTIFIED", severity="warning", message=message))


def _approval_data(record: ApprovalRecord) -> dict:
    """What the timeline keeps of an answer at a gate (the group's result keeps the whole record)."""
    return {
        "decision": record.decision, "by": record.by, "note": record.note, "asked": record.asked.isoformat(),
        "decided": record.decided.isoformat(), "signer": record.signer, "fingerprint": record.fingerprint,
    }


# ------------------------------------------------------------ answers at a gate (DrillWorkflow.approve / reject)


def may_decide(s: DrillState, verb: str, request: ApprovalRequest) -> None:
    """Refuse an answer outright (the update is rejected and leaves no trace in the history)
    unless the plan waits at a gate, for the group named. Whether the answer is signed by an
    approver is decided by the update itself (`decide`), so that a refusal is recorded."""
    pending, decided = s.pending, s.decision
    if pending is not None and decided is not None:
        message = f"group {decided.group} was already {decided.decision} by {decided.by}"
        raise ApplicationError(message, type="ALREADY_ANSWERED", non_retryable=True)
    if pending is None:
        phase = s.status.phase if s.status else "starting"
        raise ApplicationError(f"the drill is not waiting for approval (phase {phase})", type="NOT_WAITING_FOR_APPROVAL", non_retryable=True)
    if request.group and request.group != pending.group:
        raise ApplicationError(f"the drill waits for approval before group {pending.group}, not {request.group}", type="OTHER_GROUP", non_retryable=True)
    if s.refused >= MAX_REFUSED_ANSWERS:  # a flood: check here, and turn a bad answer away unrecorded
        try:
            _verify_answer(s, verb, request)
        except approvals.Refused as refused:
            message = f"{refused.message} (not recorded: {MAX_REFUSED_ANSWERS} answers were refused already)"
            raise ApplicationError(message, type="TOO_MANY_REFUSED", non_retryable=True) from None


def _verify_answer(s: DrillState, verb: str, request: ApprovalRequest) -> "approvals.Accepted":
    """The signed answer, taken by drdrill/core/approvals.py (pure), or approvals.Refused."""
    pending, gate = s.pending, s.open_gate
    assert pending is not None and gate is not None
    return approvals.check(
        request.payload, request.signature, drill_id=s.ctx.drill_id, group=pending.group, decision=verb,  # type: ignore[arg-type]
        approvers=gate.approvers, asked=pending.asked, until=pending.until, now=workflow.now(), used_nonces=s.nonces,
    )


def decide(s: DrillState, decision: str, request: ApprovalRequest) -> ApprovalRecord:
    """Take a signed answer (drdrill/core/approvals.py: pure, deterministic), or record why it
    was refused, in the timeline and the findings, and refuse it."""
    verb = "approve" if decision == "approved" else "reject"
    may_decide(s, verb, request)  # the gate may have closed since validation
    pending = s.pending
    assert pending is not None and s.open_gate is not None
    if not workflow.patched(SIGNED_APPROVALS):
        # Only when replaying a history from before approvals were signed (no SIGNED_APPROVALS
        # marker): the answer was taken then, by the name it gave, and a replay must take it again.
        s.decision = ApprovalRecord(
            group=pending.group, decision=decision, approvers=pending.approvers, asked=pending.asked,  # type: ignore[arg-type]
            decided=workflow.now(), by=request.by, note=request.note,
        )
        return s.decision
    try:
        ok = _verify_answer(s, verb, request)
    except approvals.Refused as refused:
        _record_refusal(s, pending, verb, request, refused)
        raise ApplicationError(refused.message, type=refused.code, non_retryable=True) from None
    s.nonces.append(ok.payload.nonce)
    s.decision = ApprovalRecord(
        group=pending.group, decision=decision, approvers=pending.approvers, asked=pending.asked,  # type: ignore[arg-type]
        decided=workflow.now(), by=ok.by, note=ok.payload.note, signer=ok.signer.name, key=ok.signer.key, fingerprint=ok.fingerprint,
        payload=request.payload, signature=request.signature,
    )
    return s.decision


def _record_refusal(s: DrillState, pending: PendingApproval, verb: str, request: ApprovalRequest, refused: "approvals.Refused") -> None:
    s.refused += 1
    claimed = request.by or "someone"
    message = f"group {pending.group}: an answer to {verb} claiming to be from {claimed} was refused ({refused.code}): {refused.message}"
    if s.refused == MAX_REFUSED_ANSWERS:
        message += f"; after {MAX_REFUSED_ANSWERS} refusals, further ones are turned away unrecorded"
    now = workflow.now()
    data = {"code": refused.code, "claimed_by": request.by, "decision": verb, "payload": request.payload, "signature": request.signature}
    s.event("approval-refused", now, now, "FAILED", detail=message, data=data)
    s.findings.append(Finding(code=refused.code, severity="warning", message=message))
