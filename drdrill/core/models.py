"""Data passed between the workflow and its activities (pydantic, through Temporal's pydantic converter)."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, computed_field, model_validator

from drdrill.core.selection import SelectionRecord

Outcome = Literal["PASSED", "FAILED", "COULD_NOT_VERIFY", "NOT_RUN", "NOT_MEASURED", "ERROR"]  # NOT_MEASURED: an objective with nothing recovered
Verdict = Literal["PASSED", "FAILED", "COULD_NOT_VERIFY", "ERROR"]

TAG_DRILL_ID = "drdrill:drill-id"
TAG_TARGET = "drdrill:target"
TAG_EXPIRES_AT = "drdrill:expires-at"


class Finding(BaseModel):
    """A problem worth an auditor's attention. `code` is stable: tools may match on it."""

    code: str
    message: str
    severity: Literal["info", "warning", "error"] = "error"
    target: Optional[str] = None
    # A finding that makes the checks unprovable gives COULD_NOT_VERIFY rather than FAILED.
    could_not_verify: bool = False


class DrillContext(BaseModel):
    """Who is asking: every provider call knows its drill, its tags and its deadline."""

    drill_id: str
    drill_name: str
    declared: datetime
    expires_at: datetime
    # The moment recovery points are chosen "as of" (the drill's "now" for its rules). Defaults to
    # `declared`; DrillInput.as_of moves it, so a simulated drill runs as if on another date.
    as_of: Optional[datetime] = None

    @model_validator(mode="after")
    def _as_of_defaults_to_declared(self) -> "DrillContext":
        if self.as_of is None:
            self.as_of = self.declared
        return self

    def tags(self, target: Optional[str] = None) -> dict[str, str]:
        tags = {TAG_DRILL_ID: self.drill_id, TAG_EXPIRES_AT: self.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")}
        if target:
            tags[TAG_TARGET] = target
        return tags

    def resource_name(self, target: Optional[str] = None, suffix: str = "", max_len: int = 63) -> str:
        """Deterministic name: drdrill-<drill id>[-<target>][-<suffix>], lowercase.

        Longer than `max_len` (GCP allows 63), the middle is cut and a short hash of the whole
        keeps it unique and stable, so a retried activity finds the same resource.
        """
        parts = ["drdrill", self.drill_id]
        if target:
            parts.append(target)
        if suffix:
            parts.append(suffix)
        name = "-".join(parts).lower()
        if len(name) <= max_len:
            return name
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        return (name[: max_len - 9].rstrip("-") + "-" + digest)[:max_len]


class RecoveryPoint(BaseModel):
    target: str
    provider: str
    id: str
    consistent_time: datetime
    size_bytes: Optional[int] = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    findings: list[Finding] = Field(default_factory=list)
    candidates: int = 0


class Environment(BaseModel):
    """An isolated environment for one provider family in one drill."""

    family: str
    drill_id: str
    id: str
    description: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


class IsolationCheck(BaseModel):
    name: str
    outcome: Outcome
    detail: str = ""


class IsolationProof(BaseModel):
    family: str
    environment_id: str
    checks: list[IsolationCheck] = Field(default_factory=list)

    @property
    def outcome(self) -> Outcome:
        if not self.checks:
            return "COULD_NOT_VERIFY"
        outcomes = {c.outcome for c in self.checks}
        if "FAILED" in outcomes:
            return "FAILED"
        if outcomes - {"PASSED"}:
            return "COULD_NOT_VERIFY"
        return "PASSED"


class RestoredResource(BaseModel):
    target: str
    provider: str
    id: str
    description: str = ""
    # How validations reach it: e.g. {"dsn": "...", "database": "shop"} or {"host": ..., "port": ...}.
    endpoint: dict[str, Any] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    findings: list[Finding] = Field(default_factory=list)
    ready: bool = False


DeletionResult = Literal["deleted", "already_gone", "refused", "failed", "would_delete"]


class DeletionOutcome(BaseModel):
    """What happened to one resource in a teardown or a sweep: the one outcome type every provider
    returns and the sweep, the metrics, the evidence and the reports read.

    deleted: drdrill deleted it (and saw it gone); already_gone: it did not exist any more;
    refused: left alone because it is not provably this drill's (reason says why); failed: the
    deletion was tried and did not succeed (reason); would_delete: a dry run's answer."""

    kind: str
    id: str
    result: DeletionResult
    reason: str = ""
    region: Optional[str] = None

    @property
    def label(self) -> str:
        return f"{self.kind} {self.id}"

    def __str__(self) -> str:
        text = f"{self.label}: {self.result.replace('_', ' ')}"
        return f"{text} ({self.reason})" if self.reason else text


class TeardownReport(BaseModel):
    family: str
    environment_id: str
    outcomes: list[DeletionOutcome] = Field(default_factory=list)
    attempt: int = 1
    errors: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _from_label_lists(cls, data: Any) -> Any:
        """Read reports written before outcomes were typed (evidence files keep them for years):
        lists of "kind id" labels under deleted / already_gone / refused become outcomes."""
        if not isinstance(data, dict) or data.get("outcomes"):
            return data
        outcomes = []
        for result in ("deleted", "already_gone", "refused"):
            for label in data.get(result) or []:
                kind, _, rest = str(label).partition(" ")
                ident, _, reason = rest.partition(" (")
                outcomes.append({"kind": kind, "id": ident or kind, "result": result, "reason": reason.rstrip(")")})
        rest = {k: v for k, v in data.items() if k not in ("deleted", "already_gone", "refused")}
        return {**rest, "outcomes": outcomes}

    def _labels(self, result: str) -> list[str]:
        return [o.label + (f" ({o.reason})" if o.reason and result == "refused" else "") for o in self.outcomes if o.result == result]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def deleted(self) -> list[str]:
        return self._labels("deleted")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def already_gone(self) -> list[str]:
        return self._labels("already_gone")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def refused(self) -> list[str]:
        return self._labels("refused")

    def add(self, kind: str, id: str, result: DeletionResult, reason: str = "", region: Optional[str] = None) -> DeletionOutcome:
        outcome = DeletionOutcome(kind=kind, id=id, result=result, reason=reason, region=region)
        self.outcomes.append(outcome)
        return outcome


class Orphan(BaseModel):
    provider: str
    id: str
    kind: str
    drill_id: str
    expires_at: Optional[datetime] = None
    region: Optional[str] = None
    details: dict[str, Any] = Field(default_factory=dict)


class ValidationResult(BaseModel):
    name: str
    type: str
    target: Optional[str] = None
    required: bool = True
    outcome: Outcome
    detail: str = ""
    measured: dict[str, Any] = Field(default_factory=dict)
    started: Optional[datetime] = None
    first_passed_at: Optional[datetime] = None
    finished: Optional[datetime] = None
    attempts: int = 0
    findings: list[Finding] = Field(default_factory=list)


class TimelineEvent(BaseModel):
    phase: str
    started: datetime
    ended: Optional[datetime] = None
    outcome: Outcome = "PASSED"
    target: Optional[str] = None
    detail: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


class ObjectiveResult(BaseModel):
    name: Literal["RTO", "RPO"]
    objective_seconds: float
    achieved_seconds: Optional[float] = None
    outcome: Outcome
    detail: str = ""


class PendingApproval(BaseModel):
    """A recovery plan waiting at an approval gate, as `drdrill status` and the webhook show it."""

    group: str  # the group that waits
    approvers: list[str]
    asked: datetime
    until: datetime  # then the gate times out: a finding, and the drill tears down


class ApprovalRequest(BaseModel):
    """`drdrill approve` / `drdrill reject` (DrillWorkflow's approve and reject updates): a signed
    answer. `payload` is the JSON text that was signed (drdrill/core/approvals.py: drill id, group,
    decision, note, time, nonce, on_behalf_of), `signature` the armored `ssh-keygen -Y sign` output.
    `by`, `note` and `group` are what the sender claims: only the signed payload is believed."""

    payload: str = ""
    signature: str = ""
    by: Optional[str] = None  # claimed; kept in a refusal's record, never trusted
    note: str = ""
    group: Optional[str] = None  # the group the person means; refused when the plan waits before another


class ApprovalRecord(BaseModel):
    """What happened at an approval gate: who decided, when, and the note (kept in the evidence),
    with the signed payload and its signature, which `ssh-keygen -Y verify` checks again."""

    group: str
    decision: Literal["approved", "rejected", "timed out"]
    approvers: list[str] = Field(default_factory=list)
    asked: datetime
    decided: datetime
    by: Optional[str] = None  # the approver (for a console: the person it signed on behalf of)
    note: str = ""
    signer: Optional[str] = None  # the name on the key that signed (a console's name, or `by`)
    key: Optional[str] = None  # that key, `ssh-ed25519 AAAA…`
    fingerprint: Optional[str] = None
    payload: Optional[str] = None
    signature: Optional[str] = None

    @property
    def waited_seconds(self) -> float:
        return (self.decided - self.asked).total_seconds()


class GroupResult(BaseModel):
    """One group of a recovery plan as it ran: its band on the timeline and its RTO (see drdrill/core/plan.py).

    `recovered` is when the group was back: its last required check first passed (a group without
    required checks: its last target ready). Its RTO runs from the declared disaster to then, so it
    includes any time the plan waited for an approval."""

    group: str
    targets: list[str] = Field(default_factory=list)
    outcome: Outcome = "NOT_RUN"  # PASSED: restored, checks and actions passed; NOT_RUN: never started
    detail: str = ""
    started: Optional[datetime] = None  # after its approval gate
    ended: Optional[datetime] = None
    ready: Optional[datetime] = None  # its last target ready
    recovered: Optional[datetime] = None
    checks: list[str] = Field(default_factory=list)  # the names of its checks (their results are among the drill's validations)
    actions: list[ValidationResult] = Field(default_factory=list)  # its pre- and post-actions
    approval: Optional[ApprovalRecord] = None
    rto_seconds: Optional[float] = None
    objective_seconds: Optional[float] = None
    rto_outcome: Outcome = "NOT_RUN"
    rto_detail: str = ""


class TargetState(BaseModel):
    target: str
    provider: str
    phase: str = "declared"
    outcome: Optional[Outcome] = None
    detail: str = ""


class DrillStatus(BaseModel):
    """What the `status` query answers while a drill runs."""

    drill_id: str
    name: str
    phase: str
    declared: Optional[datetime] = None
    targets: list[TargetState] = Field(default_factory=list)
    timeline: list[TimelineEvent] = Field(default_factory=list)
    hold_until: Optional[datetime] = None
    verdict: Optional[Verdict] = None
    group: Optional[str] = None  # the recovery plan's group in progress
    approval: Optional[PendingApproval] = None  # set while the plan waits for an approval


class DrillResult(BaseModel):
    drill_id: str
    run_id: str = ""
    name: str
    verdict: Verdict
    declared: datetime
    ended: datetime
    # Set when the recovery points were chosen as of another moment than `declared` (DrillInput.as_of).
    as_of: Optional[datetime] = None
    started_by: str = "cli"
    spec_sha256: Optional[str] = None
    spec_text: Optional[str] = None
    objectives: list[ObjectiveResult] = Field(default_factory=list)
    rto_seconds: Optional[float] = None
    rpo_seconds: Optional[float] = None
    recovery_points: list[RecoveryPoint] = Field(default_factory=list)
    environments: list[Environment] = Field(default_factory=list)
    isolation: list[IsolationProof] = Field(default_factory=list)
    restored: list[RestoredResource] = Field(default_factory=list)
    validations: list[ValidationResult] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    teardown: list[TeardownReport] = Field(default_factory=list)
    timeline: list[TimelineEvent] = Field(default_factory=list)
    cancelled: bool = False
    evidence_path: Optional[str] = None
    # Targets that selected their resources: what matched, what was chosen and why (drdrill/core/selection.py).
    selections: list[SelectionRecord] = Field(default_factory=list)
    # The protected resource each target restored, by target name (selection.resource_key): what coverage counts.
    resources: dict[str, str] = Field(default_factory=dict)
    # A drill with a recovery plan: each group as it ran (its RTO, its approval); empty without one.
    groups: list[GroupResult] = Field(default_factory=list)
    # A target ran on the `sim` provider (`drdrill run --simulate`, tests): it restored nothing real,
    # so the run is shown as SIMULATION and never counted as evidence (drdrill/evidence/period.py).
    simulated: bool = False
