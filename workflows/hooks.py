"""What DrillWorkflow does after a drill is recorded: metrics and notifications (best effort).

Kept out of drill.py so the drill's own structure stays readable; called from one line there.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.notify import NotifyActivities
    from activities.ops import OpsActivities
    from drdrill.core.models import DrillResult
    from drdrill.providers.activity_io import NotifyInput

from workflows import quick

NOTIFY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), backoff_coefficient=2.0, maximum_interval=timedelta(minutes=5), maximum_attempts=10)


def teardown_trouble(result: DrillResult) -> list[str]:
    """Why the teardown needs a human's attention (retried, refused or reported errors)."""
    out = []
    for t in result.teardown:
        if t.attempt > 1:
            out.append(f"teardown of {t.environment_id} needed {t.attempt} attempts")
        if t.refused:
            out.append(f"teardown of {t.environment_id} left untagged resources alone: {', '.join(t.refused)}")
        if t.errors:
            out.append(f"teardown of {t.environment_id} reported: {'; '.join(t.errors)}")
    return out


def for_metrics(result: DrillResult) -> DrillResult:
    """The result as observe_result reads it (drdrill/metrics.py: name, verdict, objectives, RTO,
    RPO, end, teardown attempts): the record's other parts (timeline, checks, spec text: ~10 kB of
    JSON, encoded and validated again for the call) left out."""
    return DrillResult(
        drill_id=result.drill_id, run_id=result.run_id, name=result.name, verdict=result.verdict, declared=result.declared,
        ended=result.ended, objectives=result.objectives, rto_seconds=result.rto_seconds, rpo_seconds=result.rpo_seconds,
        teardown=result.teardown, simulated=result.simulated,
    )


def notify_events(spec, result: DrillResult) -> list[str]:
    on = set(spec.notify.on)
    events = [result.verdict] if result.verdict in on else []
    if "TEARDOWN" in on and teardown_trouble(result):
        events.append("TEARDOWN")
    return events


def _summary(result: DrillResult) -> str:
    parts = []
    for o in result.objectives:
        got = f"{o.achieved_seconds:.0f}s" if o.achieved_seconds is not None else "not measured"
        parts.append(f"{o.name} {got} (objective {o.objective_seconds:.0f}s) {o.outcome}")
    return "; ".join(parts)


async def after_result(spec, result: DrillResult) -> None:
    """Update metrics and send the configured notifications; never changes the verdict."""
    # A local activity (workflows/quick.py): this worker's Prometheus counters.
    observe = quick.call(OpsActivities.observe_result, for_metrics(result), timeout=timedelta(seconds=30), retry_policy=RetryPolicy(maximum_attempts=3))
    calls = [observe]
    for event in notify_events(spec, result):
        findings = [f.model_dump(mode="json") for f in result.findings if f.severity != "info"]
        summary = _summary(result)
        if event == "TEARDOWN":
            summary = "; ".join(teardown_trouble(result))
        for env in spec.notify.webhooks_env:
            calls.append(
                workflow.execute_activity_method(
                    NotifyActivities.notify,
                    NotifyInput(
                        webhook_env=env,
                        event=event,
                        drill_id=result.drill_id,
                        drill_name=result.name,
                        run_id=result.run_id,
                        verdict=result.verdict,
                        started_by=result.started_by,
                        summary=summary,
                        findings=findings,
                        objectives=[o.model_dump(mode="json") for o in result.objectives],
                        evidence_path=result.evidence_path,
                    ),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=NOTIFY_RETRY,
                )
            )
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for o in outcomes:
        if isinstance(o, ActivityError):
            workflow.logger.warning("after the drill: %s", o.cause or o)
        elif isinstance(o, BaseException):
            raise o
