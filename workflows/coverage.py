"""CoverageCheckWorkflow: is every protected resource restored this period? Alert before it ends.

Scheduled by `drdrill coverage schedule` (a Temporal Schedule, daily by default). The check itself
is an activity (activities/coverage.py); when the period ends within the policy's `alert_before`
and a protected resource is not yet restored, each webhook of `coverage.notify.webhooks_env` is
told which resources, and which drill would cover each.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.coverage import CoverageActivities
    from drdrill.providers.activity_io import CoverageCheckInput, CoverageCheckRequest, CoverageCheckResult, NotifyInput
    from activities.notify import NotifyActivities

RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_interval=timedelta(minutes=2), maximum_attempts=5)
NOTIFY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), backoff_coefficient=2.0, maximum_interval=timedelta(minutes=5), maximum_attempts=10)


@workflow.defn(name="CoverageCheckWorkflow")
class CoverageCheckWorkflow:
    @workflow.run
    async def run(self, inp: CoverageCheckInput) -> CoverageCheckResult:
        result: CoverageCheckResult = await workflow.execute_activity_method(
            CoverageActivities.check_coverage,
            CoverageCheckRequest(check=inp, now=workflow.now()),
            start_to_close_timeout=timedelta(minutes=30),
            retry_policy=RETRY,
        )
        if not result.alert:
            return result
        for env in inp.policy.notify.webhooks_env:
            try:
                await workflow.execute_activity_method(
                    NotifyActivities.notify,
                    _alert(env, result, inp.source),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=NOTIFY_RETRY,
                )
                result.notified.append(env)
            except ActivityError as exc:
                result.errors.append(f"{env}: {exc.cause or exc}")
        return result


def _alert(env: str, result: CoverageCheckResult, source: str) -> NotifyInput:
    where = f" ({source})" if source else ""
    return NotifyInput(
        webhook_env=env,
        event="COVERAGE",
        drill_id=f"coverage-{result.period}",
        drill_name=f"coverage {result.period}{where}",
        verdict="NOT_COVERED" if result.control != "could not verify" else "COULD_NOT_VERIFY",
        started_by="schedule:drdrill-coverage-check",
        summary=result.summary + "".join(f"\n{u}" for u in result.unreadable),
        findings=[{"code": (g.flags or ["NOT_DRILLED_IN_PERIOD"])[0], "message": g.line, "resource": g.resource, "drills": g.drills} for g in result.gaps],
    )
