"""What every activity takes and answers: its input models, and the results that are not part of a
drill's record (those, RecoveryPoint, Environment, RestoredResource, …, are in drdrill/core/models.py).

One home for the contract between the workflows (workflows/calls.py builds these) and the activities
(activities/ takes them): pydantic models, serialised by Temporal's pydantic data converter, so a
field added here needs a default, or a running drill's history no longer decodes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from pydantic import BaseModel, Field

from drdrill.core.models import DeletionOutcome, DrillContext, Environment, Orphan, RecoveryPoint, RestoredResource
from drdrill.core.operations import PermitRequest
from drdrill.core.validations import Validation
from drdrill.providers.spec import CoverageSpec, DrillSpec, IsolationSpec, Target


# ------------------------------------------------------------------ drill steps (activities/drill.py)


class DiscoverInput(BaseModel):
    ctx: DrillContext
    target: Target  # a target with `select:`


class FindRecoveryPointInput(BaseModel):
    ctx: DrillContext
    target: Target


class CreateIsolationInput(BaseModel):
    ctx: DrillContext
    family: str
    isolation: IsolationSpec
    targets: list[Target]


class VerifyIsolationInput(BaseModel):
    ctx: DrillContext
    env: Environment


class StageInput(BaseModel):
    """A target's lay-down (Provider.stage), run while the isolation is made and proven."""

    ctx: DrillContext
    target: Target
    point: RecoveryPoint
    isolation: IsolationSpec


class RestoreInput(BaseModel):
    ctx: DrillContext
    target: Target
    point: RecoveryPoint
    env: Environment
    # The endpoints of the earlier targets the target's restore.environment names (a recovery plan).
    endpoints: dict[str, dict[str, Any]] = {}


class WaitReadyInput(BaseModel):
    ctx: DrillContext
    target: Target
    resource: RestoredResource
    timeout_seconds: float
    # When the target's restore started: earlier drills' restore → ready times then say when it
    # should be ready, and readiness polling is dense around that moment (providers/readiness.py).
    restore_started: Optional[datetime] = None
    endpoints: dict[str, dict[str, Any]] = {}  # as RestoreInput.endpoints


class TeardownInput(BaseModel):
    ctx: DrillContext
    env: Environment
    # Names of the environment variables holding webhook URLs to alert while teardown keeps failing.
    alert_webhooks_env: list[str] = []


class ListOrphansInput(BaseModel):
    family: str
    now: datetime
    active_drill_ids: list[str] = []


class DeleteOrphanInput(BaseModel):
    orphan: Orphan


# ------------------------------------------------------------------ checks (activities/validation.py, drdrill/validation/)


class VolumeBaseline(BaseModel):
    """A target's row counts in an earlier run: what a `volume` check compares with."""

    drill_id: str
    declared: datetime
    rows: dict[str, int]


class ValidateInput(BaseModel):
    validation: Validation
    name: str
    resource: Optional[RestoredResource] = None
    point: Optional[RecoveryPoint] = None
    declared: datetime
    rpo_objective_seconds: float
    # Whose earlier runs a `volume` check compares with (the workflow sets it).
    drill_name: Optional[str] = None
    # For `volume`, filled in from the evidence by the validate activity (this layer reads no
    # evidence): the counts of the last PASSED run, or why the earlier runs could not be read.
    baseline: Optional[VolumeBaseline] = None
    baseline_problem: Optional[str] = None


# Checks that run on the worker even when their target's network is isolated: they read the
# cloud's own API. Every other check needs the target's network, i.e. a probe inside it.
WORKER_CHECKS = frozenset({"command"})


# ------------------------------------------------------------------ the probe (activities/probe.py)


class WaitForProbeInput(BaseModel):
    queue: str
    timeout_seconds: float
    poll_seconds: float = 0.5


class ProbeStatus(BaseModel):
    queue: str
    polling: bool
    pollers: list[str] = []
    waited_seconds: float = 0.0


# ------------------------------------------------------------------ notifications (activities/notify.py, drdrill/notify.py)


class ApprovalNotice(BaseModel):
    """A recovery plan waiting at an approval gate: who can approve, how, and until when."""

    group: str
    approvers: list[str]
    until: datetime
    approve: str  # the command that approves
    reject: str  # the command that rejects


class NotifyInput(BaseModel):
    webhook_env: str
    event: str  # a verdict, "TEARDOWN", or "APPROVAL" (a plan waits at a gate)
    drill_id: str
    drill_name: str
    run_id: str = ""
    verdict: str
    started_by: str = ""
    summary: str = ""
    findings: list[dict[str, Any]] = Field(default_factory=list)
    objectives: list[dict[str, Any]] = Field(default_factory=list)
    evidence_path: Optional[str] = None
    approval: Optional[ApprovalNotice] = None  # event APPROVAL


# ------------------------------------------------------------------ the scheduled coverage check (activities/coverage.py)


class CoverageCheckInput(BaseModel):
    """What the coverage check's schedule starts the workflow with (`drdrill coverage schedule`)."""

    policy: CoverageSpec
    specs: list[DrillSpec] = Field(default_factory=list)
    source: str = ""  # the drills directory the schedule was built from, for the alert


class CoverageCheckRequest(BaseModel):
    check: CoverageCheckInput
    now: datetime  # the workflow's time: whether the period is about to end is decided as of it


class CoverageGap(BaseModel):
    """A protected resource not yet restored in the period, and what would cover it."""

    resource: str
    kind: str
    flags: list[str] = Field(default_factory=list)
    drills: list[str] = Field(default_factory=list)  # drill (target) that names or selects it

    @property
    def line(self) -> str:
        cover = f"would be covered by {', '.join(self.drills)}" if self.drills else "no drill covers it: name or select it in a drill"
        return f"{self.resource} ({self.kind}): {cover}"


class CoverageCheckResult(BaseModel):
    period: str
    end: datetime
    protected: int = 0
    covered: int = 0
    gaps: list[CoverageGap] = Field(default_factory=list)
    unreadable: list[str] = Field(default_factory=list)  # providers whose inventory could not be read
    control: str = ""  # met | not met | could not verify
    alert: bool = False  # the period ends within policy.alert_before and something is not covered
    notified: list[str] = Field(default_factory=list)  # webhooks told (set by the workflow)
    errors: list[str] = Field(default_factory=list)

    @property
    def summary(self) -> str:
        return f"{self.covered}/{self.protected} protected resources restored in {self.period} (ends {self.end:%Y-%m-%d}); {len(self.gaps)} not yet"


# ------------------------------------------------------------------ permits and sweeps (activities/ops.py, workflows/limiter.py, workflows/sweep.py)


class RequestPermitInput(BaseModel):
    kind: str  # "drill" or "restore"
    key: str
    task_queue: str
    request: PermitRequest


class PermitAnswer(BaseModel):
    limit: Optional[int] = None  # None: no limit configured, nothing to wait for
    limiter_id: str = ""


class SweepInput(BaseModel):
    families: list[str] = Field(default_factory=lambda: ["postgres"])
    dry_run: bool = False


class SweepAction(BaseModel):
    orphan: Orphan
    outcome: DeletionOutcome

    @property
    def action(self) -> str:
        """How the sweep table shows it: 'deleted', 'refused (tag …)', 'would delete'."""
        text = self.outcome.result.replace("_", " ")
        return f"{text} ({self.outcome.reason})" if self.outcome.reason else text

    @property
    def failed(self) -> bool:
        """A deletion that failed or was refused: a sweep with any of these exits non-zero."""
        return self.outcome.result in ("failed", "refused")


class SweepRecord(BaseModel):
    sweep_id: str
    run_id: str = ""
    started: datetime
    ended: datetime
    families: list[str]
    dry_run: bool = False
    active_drill_ids: list[str] = Field(default_factory=list)
    actions: list[SweepAction] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    evidence_path: Optional[str] = None
