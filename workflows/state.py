"""What a drill has found, made and proved so far: one model, DrillState, every field assigned here.

DrillWorkflow (workflows/drill.py) keeps one DrillState; the steps (workflows/steps.py) and the
recovery plan (workflows/plan.py) fill it in; `DrillWorkflow._result` maps it to the DrillResult that
is judged and recorded. The bookkeeping of the `status` query and the timeline lives here too.
Deterministic: time only from `workflow.now()`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Optional

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from drdrill.core import selection
    from drdrill.core.models import (
        ApprovalRecord,
        DrillContext,
        DrillStatus,
        Environment,
        Finding,
        GroupResult,
        IsolationProof,
        Outcome,
        PendingApproval,
        RecoveryPoint,
        RestoredResource,
        TeardownReport,
        TimelineEvent,
        ValidationResult,
    )
    from drdrill.core.planspec import ApprovalGate
    from drdrill.providers.spec import DrillSpec

from workflows.limiter import Permits  # operations (issue 7): concurrency limits

HEARTBEAT = timedelta(seconds=30)


@dataclass
class DrillState:
    """One drill's state, by target name or provider family. `spec`, `ctx` and `declared` are set
    once the disaster is declared (DrillWorkflow._declare); a selection may expand `spec`."""

    spec: Optional[DrillSpec] = None
    started_by: str = ""
    ctx: Optional[DrillContext] = None
    declared: Optional[datetime] = None
    status: Optional[DrillStatus] = None
    heartbeat: timedelta = HEARTBEAT
    slow_heartbeat: timedelta = timedelta(minutes=2)  # isolation and teardown
    permits: Permits = field(default_factory=Permits)
    # What the drill found, made and proved.
    points: dict[str, RecoveryPoint] = field(default_factory=dict)
    envs: dict[str, Environment] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)  # family -> the host task queue its resources live on
    proofs: list[IsolationProof] = field(default_factory=list)
    restored: dict[str, RestoredResource] = field(default_factory=dict)
    validations: list[ValidationResult] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    teardowns: list[TeardownReport] = field(default_factory=list)
    selections: list[selection.SelectionRecord] = field(default_factory=list)
    probes: dict[str, bool] = field(default_factory=dict)  # family -> its probe polls its task queue
    restore_permits: set[str] = field(default_factory=set)  # targets holding their restore permit since their lay-down
    broken: bool = False
    late_cancel: bool = False  # a cancellation that arrived during teardown or evidence
    # A hold for inspection: until when, and how far `extend` may move it.
    released: bool = False
    hold_until: Optional[datetime] = None
    max_hold_until: Optional[datetime] = None
    # A recovery plan (drdrill/core/plan.py): each group as it ran, why it stopped, and its open gate.
    groups: list[GroupResult] = field(default_factory=list)
    plan_stop: Optional[Finding] = None
    pending: Optional[PendingApproval] = None
    open_gate: Optional[ApprovalGate] = None
    decision: Optional[ApprovalRecord] = None
    nonces: list[str] = field(default_factory=list)  # of every answer taken: a signed answer counts once
    refused: int = 0  # answers refused and recorded (bounded: plan.MAX_REFUSED_ANSWERS)

    # ------------------------------------------------------------ the status query and the timeline

    def phase(self, phase: str) -> None:
        self.status.phase = phase

    def target(self, name: str, phase: str, outcome: Optional[Outcome] = None, detail: str = "") -> None:
        for t in self.status.targets:
            if t.target == name:
                t.phase, t.outcome, t.detail = phase, outcome, detail
        if outcome is not None:
            now = workflow.now()
            self.event(phase, now, now, outcome, target=name, detail=detail)

    def event(
        self, phase: str, started: datetime, ended: datetime, outcome: Outcome, target: Optional[str] = None, detail: str = "",
        data: Optional[dict] = None,
    ) -> None:
        # Within a recovery plan's group, every event names the group: the timeline's bands.
        data = {"group": self.status.group, **(data or {})} if self.status.group else (data or {})
        self.status.timeline.append(
            TimelineEvent(phase=phase, started=started, ended=ended, outcome=outcome, target=target, detail=detail, data=data)
        )

    def finding(self, code: str, message: str, target: Optional[str] = None, could_not_verify: bool = False) -> None:
        self.findings.append(Finding(code=code, message=message, target=target, could_not_verify=could_not_verify))

    def activity_finding(self, exc: ActivityError, target: Optional[str], default_code: str, could_not_verify: bool = False) -> None:
        """The finding an activity's failure carries (a provider's), else one named after its error type.
        An activity that ended because the drill was cancelled did not fail: DRILL_CANCELLED says so."""
        cancelled(exc)
        cause = exc.cause
        if isinstance(cause, ApplicationError) and cause.details:
            try:
                self.findings.append(Finding.model_validate(cause.details[0]))
                return
            except Exception:  # noqa: BLE001 - fall through to a generic finding
                pass
        code = cause.type if isinstance(cause, ApplicationError) and cause.type and cause.type.isupper() else default_code
        self.finding(code, describe(exc), target, could_not_verify=could_not_verify)

    # ------------------------------------------------------------ where things are

    def queue(self, family: Optional[str]) -> Optional[str]:
        """The task queue for a family's activities: its host's, when it has one, else the drill's."""
        return (self.hosts.get(family) or None) if family else None

    def not_checked(self, v: Any, name: str, target: Optional[str], why: str) -> ValidationResult:
        """A check that cannot run where it would have to: COULD_NOT_VERIFY at once, nothing attempted."""
        now = workflow.now()
        return ValidationResult(
            name=name, type=v.type, target=target, required=v.required, outcome="COULD_NOT_VERIFY",
            detail=why, started=now, finished=now, attempts=0,
        )

    def new_environment(self, family: str) -> Environment:
        """An environment not heard back from yet: teardown finds what it holds by the drill's tag."""
        return Environment(family=family, drill_id=self.ctx.drill_id, id=self.ctx.resource_name())


def cancelled(exc: ActivityError) -> None:
    """Raise the drill's cancellation when `exc` is an activity cancelled with it (the SDK reports a
    cancelled activity to its caller as an ActivityError): the step stops there, and the drill
    goes on to its teardown, instead of recording the cancel as that step's failure."""
    if is_cancelled_exception(exc):
        raise asyncio.CancelledError("the drill was cancelled") from exc


def describe(exc: BaseException) -> str:
    """The innermost message of an activity failure, for findings and the timeline."""
    seen = exc
    while getattr(seen, "cause", None) is not None:
        seen = seen.cause  # type: ignore[assignment]
    return str(seen) or type(seen).__name__
