"""Activities of a drill: every side effect the DrillWorkflow needs, dispatched to providers.

Grouped in one class that receives its providers (and their clients) in `__init__`, as the
Temporal samples do. Activities are synchronous (the SDKs are) and run in the worker's thread pool.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.exceptions import CancelledError as TemporalCancelledError

from drdrill.core.paths import default_state_dir
from drdrill.evidence.history import readiness_prior, with_restore_times
from drdrill.evidence.created import created_resources, record_created
from drdrill.evidence.record import record_run
from drdrill.evidence.signing import SigningError
from drdrill.evidence.store import EvidenceConflict, StorePool
from drdrill.providers.activity_io import (
    CreateIsolationInput,
    DeleteOrphanInput,
    DiscoverInput,
    FindRecoveryPointInput,
    ListOrphansInput,
    RestoreInput,
    StageInput,
    TeardownInput,
    VerifyIsolationInput,
    WaitReadyInput,
)
from drdrill.core.models import (
    DeletionOutcome,
    Finding,
    DrillContext,
    DrillResult,
    Environment,
    IsolationProof,
    Orphan,
    RecoveryPoint,
    RestoredResource,
    TeardownReport,
)
from drdrill.core.plan import EnvironmentProblem, resolve_environment, secret_references
from drdrill.core.redact import redact, register_secret
from drdrill.core.selection import Discovery
from drdrill.notify import alert_failing_teardown
from drdrill.providers import HOST_BOUND, family_of, load_provider
from drdrill.providers.base import Provider, ProviderError
from drdrill.providers.sweep import refusal
from drdrill.providers.spec import IsolationSpec

log = logging.getLogger("drdrill.activities")
T = TypeVar("T")


def provider_failure(exc: Exception, target: Optional[str] = None) -> ApplicationError:
    """Turn a provider exception into the ApplicationError Temporal records (with a stable type)."""
    if isinstance(exc, ApplicationError):
        return exc
    # Redacted here, at the source: the message becomes a finding, the workflow history and the logs.
    if isinstance(exc, ProviderError):
        finding = exc.finding(target)
        finding.message = redact(finding.message)
        return ApplicationError(redact(exc.message), finding.model_dump(mode="json"), type=exc.code, non_retryable=not exc.retryable)
    # Unknown exceptions are retried (the provider did not say it was permanent).
    return ApplicationError(redact(f"{type(exc).__name__}: {exc}"), type="PROVIDER_ERROR", non_retryable=False)


class DrillActivities:
    """The activities of DrillWorkflow. `providers` maps family -> Provider; missing ones load lazily."""

    def __init__(
        self,
        providers: Optional[dict[str, Provider]] = None,
        state_dir: Optional[str] = None,
        host_queue: str = "",
        temporal: tuple[str, str] = ("", ""),
    ):
        self._providers: dict[str, Provider] = dict(providers or {})
        self.host_queue = host_queue
        # (address, namespace) of this worker's Temporal: where a probe reports, unless the drill says.
        self.temporal = temporal
        self._lock = threading.Lock()
        self.state_dir = Path(state_dir or default_state_dir())
        self.stores = StorePool()  # evidence-store connections kept between activities

    def provider(self, family: str) -> Provider:
        with self._lock:
            if family not in self._providers:
                self._providers[family] = load_provider(family)
            return self._providers[family]

    def close(self) -> None:
        self.stores.close()
        for p in self._providers.values():
            try:
                p.close()
            except Exception:  # pragma: no cover - best effort at shutdown
                log.exception("closing provider %s", p.family)

    def _call(self, family: str, target: Optional[str], call: Callable[[Provider], T]) -> T:
        """`call` on the family's provider; every failure becomes a typed ApplicationError."""
        try:
            return call(self.provider(family))
        except TemporalCancelledError:
            raise  # a cancelled drill: Temporal must see the cancellation, not a retryable failure
        except Exception as exc:  # noqa: BLE001 - every failure becomes a typed ApplicationError
            failure = provider_failure(exc, target)
            if failure is not exc and _quotes_a_secret(exc):
                # Temporal records the cause chain (message included) in the history: leave it out.
                raise failure from None
            raise failure from exc

    def _creating(self, family: str, ctx: DrillContext, target: Optional[str], call: Callable[[Provider], T]) -> T:
        """A provider call that creates resources, then the record of what this drill created so
        far (the evidence store's created_resources: what the sweep may delete), also when it failed."""
        try:
            result = self._call(family, target, call)
        except BaseException:
            self._note_created(family, ctx.drill_id, failing=True)
            raise
        self._note_created(family, ctx.drill_id)
        return result

    def _note_created(self, family: str, drill_id: str, failing: bool = False) -> None:
        """Record every resource carrying this drill's tag as created by it. Not recorded, a resource
        would be refused by the sweep: so a record that cannot be written fails the activity
        (retried: the provider calls are idempotent), unless the call itself already failed.

        The inventory is asked without an environment: with one, a provider may count the call as
        the start of a teardown (the simulated cloud does)."""
        try:
            record_created(self.state_dir, drill_id, family, self.provider(family).inventory(drill_id, None), opener=self.stores.open)
        except NotImplementedError:
            return  # a provider without an inventory creates nothing the sweep could find
        except Exception as exc:  # noqa: BLE001 - the store or the provider's listing out of reach
            message = f"drill {drill_id}: what it created in {family} could not be recorded in the evidence store: {redact(str(exc))}"
            if failing:
                log.warning("%s", message)
                return
            raise ApplicationError(message, type="CREATED_NOT_RECORDED") from None

    @activity.defn(name="claim_host")
    def claim_host(self, family: str) -> str:
        """The task queue of this worker's host, for a family whose resources live on the host
        (postgres clusters): the workflow then runs every activity of that family there, so the
        restore, the checks and the teardown all see the same disk. "" when any worker will do."""
        return self.host_queue if family in HOST_BOUND else ""

    @activity.defn(name="discover")
    def discover(self, inp: DiscoverInput) -> Discovery:
        """The resources a selecting target matches (its provider's `discover`), and when each was
        last restored (drdrill/evidence/history.py): what drdrill/core/selection.py chooses from."""
        t = inp.target
        resources = self._call(family_of(t.provider), t.name, lambda p: p.discover(t.provider, t.select))
        return with_restore_times(t.name, resources, inp.ctx.drill_id)

    @activity.defn(name="find_recovery_point")
    def find_recovery_point(self, inp: FindRecoveryPointInput) -> RecoveryPoint:
        return self._call(family_of(inp.target.provider), inp.target.name, lambda p: p.find_recovery_point(inp.ctx, inp.target))

    @activity.defn(name="create_isolation")
    def create_isolation(self, inp: CreateIsolationInput) -> Environment:
        isolation = self._probe_defaults(inp.isolation)
        return self._creating(inp.family, inp.ctx, None, lambda p: p.create_isolation(inp.ctx, isolation, inp.targets))

    def _probe_defaults(self, isolation: IsolationSpec) -> IsolationSpec:
        """A probe the drill asks for reports to this worker's Temporal unless the drill names another."""
        address, namespace = self.temporal
        filled = isolation.model_copy(deep=True)
        for name in type(filled.probe).model_fields:
            probe = getattr(filled.probe, name)
            if probe is None:
                continue
            if getattr(probe, "temporal_address", "") is None and address:
                probe.temporal_address = address
            if getattr(probe, "temporal_namespace", "") is None and namespace:
                probe.temporal_namespace = namespace
        return filled

    @activity.defn(name="verify_isolation")
    def verify_isolation(self, inp: VerifyIsolationInput) -> IsolationProof:
        return self._call(inp.env.family, None, lambda p: p.verify_isolation(inp.ctx, inp.env))

    @activity.defn(name="stage")
    def stage(self, inp: StageInput) -> Optional[str]:
        """The part of a target's restore that starts nothing (Provider.stage), beside the isolation."""
        family = family_of(inp.target.provider)
        return self._creating(family, inp.ctx, inp.target.name, lambda p: p.stage(inp.ctx, inp.target, inp.point, inp.isolation))

    @activity.defn(name="restore")
    def restore(self, inp: RestoreInput) -> RestoredResource:
        target = self._with_environment(inp.target, inp.endpoints)
        family = family_of(inp.target.provider)
        return self._creating(family, inp.ctx, inp.target.name, lambda p: p.restore(inp.ctx, target, inp.point, inp.env))

    def _with_environment(self, target: Any, endpoints: dict[str, dict[str, Any]]) -> Any:
        """The target with its restore.environment filled in, for the provider that starts the
        service: earlier targets' endpoints, and `{env.NAME}` secrets read here, on this worker.
        The filled-in target never leaves this activity (it is neither returned nor logged), so the
        values never enter the workflow history; the secrets are redacted wherever they show up."""
        templates = getattr(target.restore, "environment", None)
        if not templates:
            return target
        provider = self.provider(family_of(target.provider))
        if target.provider not in getattr(provider, "APPLIES_ENVIRONMENT", ()):
            message = f"target {target.name}: the {target.provider} provider on this worker does not hand restore.environment to what it restores"
            raise ApplicationError(
                message, Finding(code="ENVIRONMENT_NOT_SUPPORTED", message=message, target=target.name).model_dump(mode="json"),
                type="ENVIRONMENT_NOT_SUPPORTED", non_retryable=True,
            )
        for name in secret_references(templates):
            register_secret(os.environ.get(name, ""))
        try:
            values = resolve_environment(templates, endpoints, os.environ)
        except EnvironmentProblem as exc:
            message = f"target {target.name}: {exc}"
            raise ApplicationError(
                message, Finding(code="ENVIRONMENT_UNRESOLVED", message=message, target=target.name).model_dump(mode="json"),
                type="ENVIRONMENT_UNRESOLVED", non_retryable=True,
            ) from None
        return target.model_copy(update={"restore": target.restore.model_copy(update={"environment": values})})

    @activity.defn(name="wait_ready")
    def wait_ready(self, inp: WaitReadyInput) -> RestoredResource:
        """The restored resource once it serves; polled most densely around when its earlier
        restores became ready (drdrill/evidence/history.py), which the evidence then records."""
        target, family = self._with_environment(inp.target, inp.endpoints), family_of(inp.target.provider)
        with readiness_prior(self.state_dir, inp.ctx.drill_name, inp.target.name, family, inp.restore_started) as prior:
            ready: RestoredResource = self._creating(
                family, inp.ctx, inp.target.name, lambda p: p.wait_ready(inp.ctx, target, inp.resource, inp.timeout_seconds)
            )
        if prior is not None:
            ready.details["readiness_prior"] = prior
        return ready

    @activity.defn(name="teardown")
    def teardown(self, inp: TeardownInput) -> TeardownReport:
        attempt = activity.info().attempt
        if attempt > 1:
            log.warning("teardown of %s for drill %s: attempt %d", inp.env.id, inp.ctx.drill_id, attempt)
        try:
            report: TeardownReport = self._call(inp.env.family, None, lambda p: p.teardown(inp.ctx, inp.env))
        except ApplicationError as exc:
            alert_failing_teardown(inp.alert_webhooks_env, inp.ctx.drill_id, inp.ctx.drill_name, inp.env.id, attempt, exc.message)
            # Teardown is retried until it succeeds, whatever the provider calls the error (an
            # ACCESS_DENIED while a role propagates, a resource still in use): giving up leaks
            # restored data and fails the workflow before its evidence is recorded.
            if exc.non_retryable:
                raise ApplicationError(exc.message, *exc.details, type=exc.type, non_retryable=False) from exc
            raise
        report.attempt = attempt
        return report

    @activity.defn(name="list_orphans")
    def list_orphans(self, inp: ListOrphansInput) -> list[Orphan]:
        """The provider's orphans; each one the evidence store does not record a drill creating
        carries `details["refused"]`, the reason the sweep must not delete it."""
        orphans: list[Orphan] = self._call(inp.family, None, lambda p: p.list_orphans(inp.now, set(inp.active_drill_ids)))
        created, why = self._created(inp.family)
        for orphan in orphans:
            reason = refusal(orphan, created, why)
            if reason:
                orphan.details["refused"] = reason
        return orphans

    def _created(self, family: str) -> tuple[Optional[dict], str]:
        """What the evidence store records drills creating in `family`; (None, why) when it cannot be read."""
        try:
            return created_resources(self.state_dir, family), ""
        except Exception as exc:  # noqa: BLE001 - without the record, nothing is deleted: said in every outcome
            return None, redact(str(exc)) or type(exc).__name__

    @activity.defn(name="delete_orphan")
    def delete_orphan(self, inp: DeleteOrphanInput) -> DeletionOutcome:
        """What happened to the orphan: deleted, already gone, or refused (its tag changed). A
        deletion that could not be done raises, and is retried; the sweep records it as failed.
        An answer of another type fails here, at once, rather than the workflow decoding it."""
        family = family_of(inp.orphan.provider)
        created, why = self._created(family)
        reason = refusal(inp.orphan, created, why)  # again, here: whatever the workflow was handed
        if reason:
            o = inp.orphan
            return DeletionOutcome(kind=o.kind, id=o.id, result="refused", reason=reason, region=o.region)
        outcome = self._call(family, None, lambda p: p.delete_orphan(inp.orphan))
        if not isinstance(outcome, DeletionOutcome):
            raise ApplicationError(f"provider {family} answered {outcome!r}, not a DeletionOutcome", type="BAD_PROVIDER_ANSWER", non_retryable=True)
        return outcome

    @activity.defn(name="record_evidence")
    def record_evidence(self, result: DrillResult) -> str:
        """Record the run's evidence: the PostgreSQL evidence store (append-only, hash-chained,
        idempotent on the drill id) and runs/<drill id>/{evidence.json,report.html,junit.xml}.
        Returns evidence.json's path. A different record for a drill id already stored, or a signing
        key that cannot be used, fails at once (EVIDENCE_CONFLICT, EVIDENCE_KEY_UNUSABLE)."""
        try:
            return record_run(self.state_dir, result, opener=self.stores.open)
        except EvidenceConflict as exc:
            raise ApplicationError(str(exc), type="EVIDENCE_CONFLICT", non_retryable=True) from None
        except SigningError as exc:
            raise ApplicationError(str(exc), type="EVIDENCE_KEY_UNUSABLE", non_retryable=not exc.retryable) from None


def _quotes_a_secret(exc: BaseException) -> bool:
    text = str(exc)
    return redact(text) != text
