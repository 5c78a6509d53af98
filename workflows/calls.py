"""Every activity DrillWorkflow calls, with its timeouts and retry policy, and where it runs.

One function per activity: the steps (workflows/steps.py, workflows/plan.py) say what to do, this
module says how long it may take, how often it is retried and on which task queue it runs. A failed
call raises ActivityError; the caller decides what that means for the drill. `placement` is the one
place that decides whether a check or an action runs on the worker, in its family's probe, or
nowhere (could not verify).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.drill import DrillActivities
    from activities.notify import NotifyActivities
    from activities.probe import ProbeActivities
    from activities.validation import ValidationActivities
    from drdrill.core import plan as recovery_plan
    from drdrill.providers.activity_io import (
        CreateIsolationInput,
        DiscoverInput,
        FindRecoveryPointInput,
        NotifyInput,
        ProbeStatus,
        RestoreInput,
        StageInput,
        TeardownInput,
        ValidateInput,
        VerifyIsolationInput,
        WaitForProbeInput,
        WaitReadyInput,
    )
    from drdrill.core.models import DrillResult, Environment, IsolationProof, RecoveryPoint, RestoredResource, TeardownReport, ValidationResult
    from drdrill.core.selection import Discovery
    from drdrill.providers.spec import Target

from workflows import quick
from workflows.state import DrillState

# Retry settings per kind of call. Bad input raises non-retryable errors, so these only retry
# transient trouble (throttling, 5xx, a worker that died).
QUICK_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30), maximum_attempts=5)
LONG_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_interval=timedelta(minutes=1), maximum_attempts=4)
# Teardown never gives up: a leaked restored database is worse than a slow drill.
TEARDOWN_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(minutes=2), maximum_attempts=0
)
ONCE = RetryPolicy(maximum_attempts=1)
EVIDENCE_RETRY = RetryPolicy(maximum_interval=timedelta(minutes=1), maximum_attempts=20)
# Telling the approvers must not hold the gate up: a few quick attempts, while the gate already waits.
APPROVAL_NOTICE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_interval=timedelta(seconds=30), maximum_attempts=3)
# On cancellation, wait until the activity has stopped: teardown must not run while a create call is
# still in flight, or what it creates afterwards leaks.
UNTIL_STOPPED = workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED


async def discover(s: DrillState, target: Target) -> Discovery:
    return await workflow.execute_activity_method(
        DrillActivities.discover, DiscoverInput(ctx=s.ctx, target=target), start_to_close_timeout=timedelta(minutes=10), retry_policy=QUICK_RETRY
    )


async def find_recovery_point(s: DrillState, target: Target) -> RecoveryPoint:
    return await workflow.execute_activity_method(
        DrillActivities.find_recovery_point,
        FindRecoveryPointInput(ctx=s.ctx, target=target),
        start_to_close_timeout=timedelta(minutes=5),
        retry_policy=QUICK_RETRY,
    )


async def claim_host(family: str) -> str:
    # A local activity (workflows/quick.py): the host of the worker that runs this drill's workflow task.
    return await quick.call(DrillActivities.claim_host, family, timeout=timedelta(seconds=30), retry_policy=QUICK_RETRY)


async def create_isolation(s: DrillState, family: str, targets: list[Target]) -> Environment:
    return await workflow.execute_activity_method(
        DrillActivities.create_isolation,
        CreateIsolationInput(ctx=s.ctx, family=family, isolation=s.spec.isolation, targets=targets),
        task_queue=s.queue(family),
        start_to_close_timeout=timedelta(minutes=30),
        heartbeat_timeout=s.slow_heartbeat,
        retry_policy=LONG_RETRY,
        cancellation_type=UNTIL_STOPPED,
    )


async def verify_isolation(s: DrillState, env: Environment) -> IsolationProof:
    return await workflow.execute_activity_method(
        DrillActivities.verify_isolation,
        VerifyIsolationInput(ctx=s.ctx, env=env),
        task_queue=s.queue(env.family),
        start_to_close_timeout=timedelta(minutes=5),
        retry_policy=QUICK_RETRY,
    )


async def stage(s: DrillState, target: Target, point: RecoveryPoint) -> Optional[str]:
    return await workflow.execute_activity_method(
        DrillActivities.stage,
        StageInput(ctx=s.ctx, target=target, point=point, isolation=s.spec.isolation),
        task_queue=s.queue(target.family),
        start_to_close_timeout=target.restore.timeout,
        heartbeat_timeout=s.heartbeat,
        retry_policy=ONCE,  # a failed lay-down is done again by the restore, with its own retries
        cancellation_type=UNTIL_STOPPED,
    )


async def restore(s: DrillState, target: Target, point: RecoveryPoint, env: Environment) -> RestoredResource:
    return await workflow.execute_activity_method(
        DrillActivities.restore,
        RestoreInput(ctx=s.ctx, target=target, point=point, env=env, endpoints=recovery_plan.endpoints_for(target, s.restored)),
        task_queue=s.queue(target.family),
        start_to_close_timeout=target.restore.timeout,
        heartbeat_timeout=s.heartbeat,
        retry_policy=LONG_RETRY,
        cancellation_type=UNTIL_STOPPED,
    )


async def wait_ready(s: DrillState, target: Target, resource: RestoredResource, restore_started: datetime) -> RestoredResource:
    timeout = target.restore.timeout
    return await workflow.execute_activity_method(
        DrillActivities.wait_ready,
        WaitReadyInput(
            ctx=s.ctx, target=target, resource=resource, timeout_seconds=timeout.total_seconds(), restore_started=restore_started,
            endpoints=recovery_plan.endpoints_for(target, s.restored),
        ),
        task_queue=s.queue(target.family),
        start_to_close_timeout=timeout + timedelta(minutes=1),
        heartbeat_timeout=s.heartbeat,
        retry_policy=QUICK_RETRY,
        cancellation_type=UNTIL_STOPPED,
    )


async def teardown(s: DrillState, env: Environment) -> TeardownReport:
    # Shielded: a cancellation of the workflow must not cancel its own cleanup.
    handle = workflow.start_activity_method(
        DrillActivities.teardown,
        TeardownInput(ctx=s.ctx, env=env, alert_webhooks_env=s.spec.notify.webhooks_env if "TEARDOWN" in s.spec.notify.on else []),
        task_queue=s.queue(env.family),
        start_to_close_timeout=timedelta(minutes=30),
        heartbeat_timeout=s.slow_heartbeat,
        retry_policy=TEARDOWN_RETRY,
        cancellation_type=UNTIL_STOPPED,
    )
    return await asyncio.shield(handle)


async def validate(s: DrillState, v: Any, name: str, where: "Placement") -> ValidationResult:
    """A check (or an action) through the validation activity, on the queue `where` names."""
    tname = getattr(v, "target", None)
    return await workflow.execute_activity_method(
        ValidationActivities.validate,
        ValidateInput(
            validation=v,
            name=name,
            resource=for_checks(s.restored.get(tname) if tname else None),
            point=s.points.get(tname) if tname else None,
            declared=s.declared,
            rpo_objective_seconds=s.spec.objectives.rpo.total_seconds(),
            drill_name=s.spec.name,
        ),
        task_queue=where.queue,
        start_to_close_timeout=v.timeout + timedelta(minutes=2),
        schedule_to_close_timeout=where.schedule_to_close,
        heartbeat_timeout=s.heartbeat,
        retry_policy=QUICK_RETRY,
    )


async def wait_for_probe(s: DrillState, queue: str, bound: timedelta) -> ProbeStatus:
    return await workflow.execute_activity_method(
        ProbeActivities.wait_for_probe,
        WaitForProbeInput(queue=queue, timeout_seconds=bound.total_seconds()),
        start_to_close_timeout=bound + timedelta(minutes=1),
        heartbeat_timeout=s.heartbeat,
        retry_policy=QUICK_RETRY,
    )


def notify(inp: NotifyInput) -> Any:
    """Tell one webhook (not awaited here: the approvers' webhooks are told together)."""
    return workflow.execute_activity_method(
        NotifyActivities.notify, inp, start_to_close_timeout=timedelta(seconds=30), retry_policy=APPROVAL_NOTICE_RETRY
    )


def record_evidence(result: DrillResult) -> Any:
    """The evidence activity (awaited by the caller to its end, also when cancelled meanwhile)."""
    return workflow.execute_activity_method(
        DrillActivities.record_evidence, result, start_to_close_timeout=timedelta(minutes=5), retry_policy=EVIDENCE_RETRY
    )


# ------------------------------------------------------------ where a check or an action runs


@dataclass
class Placement:
    """Where a check or an action runs: on `queue` (None: the drill's own), in a probe when
    `probe_queue` is set (bounded by `schedule_to_close`); or nowhere, `refused` saying why:
    "not polled" (the probe never polled `probe_queue`), "no probe", "unreachable" (`network` names
    the isolated network the worker cannot reach)."""

    queue: Optional[str] = None
    schedule_to_close: Optional[timedelta] = None
    probe_queue: str = ""
    refused: str = ""
    network: str = ""


def placement(s: DrillState, family: Optional[str], timeout: timedelta, *, network: bool, probe_only: bool = False) -> Placement:
    """Where a check (`network`: it needs the target's network) or an action (`probe_only`: it
    must run in the probe) of `family` runs: in the family's probe when it has one (refused when
    that probe never polled its queue); else on the worker, unless the worker cannot reach the
    target's network or the action must run in a probe."""
    queue = s.queue(family)
    env = s.envs.get(family) if family else None
    if not probe_only and (env is None or not network):
        return Placement(queue)
    probe_queue = env.details.get("probe_queue") if env is not None else None
    if probe_queue and not s.probes.get(family):
        return Placement(probe_queue=probe_queue, refused="not polled")
    if probe_queue:
        # A probe that dies mid-check is noticed by its heartbeat; the retry waits on its queue for
        # a probe no longer than a check could take, then the check could not run.
        return Placement(probe_queue, timeout + 4 * s.heartbeat, probe_queue=probe_queue)
    if probe_only:
        return Placement(refused="no probe")
    if env.details.get("reachable_from_worker") is False:
        return Placement(refused="unreachable", network=env.description or env.id)
    return Placement(queue)


def for_checks(resource: Optional[RestoredResource]) -> Optional[RestoredResource]:
    """The restored resource as a check needs it: without the restored structure (a list of every
    catalog object, kept in the evidence), which would otherwise travel in every check's input."""
    if resource is None or "structure" not in resource.details:
        return resource
    return resource.model_copy(update={"details": {k: v for k, v in resource.details.items() if k != "structure"}})
