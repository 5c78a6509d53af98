"""A drill's quick bookkeeping calls, run as local activities: the permit requests
(workflows/limiter.py), the host claim (workflows/calls.py) and the metrics update (workflows/hooks.py).

Each answers in milliseconds from the worker's own memory or environment (the limits configured on
the worker, its host id, its Prometheus counters), so sending it through the server as an activity
task cost a drill more than the work: per call three history events, an activity task dispatched
and polled, and a workflow task more to hear the answer (4 of a sim drill's 12 activities and 13
workflow tasks; bench/RESULTS.md §18, "Where a drill's CPU goes"). As a local activity it runs on
the worker that runs the drill's workflow task, within that task, retried by the same policy, and
its answer is recorded in the history (a marker), so a replay takes it again without running it.

Drills started before this change replay as they ran (workflow.patched: remote activities).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

LOCAL_QUICK_CALLS = "local-quick-calls"


def call(activity: Any, arg: Any, *, timeout: timedelta, retry_policy: RetryPolicy) -> Any:
    """Start `activity(arg)`: local in drills started with this change, remote when replaying an older one."""
    if workflow.patched(LOCAL_QUICK_CALLS):
        return workflow.execute_local_activity_method(activity, arg, start_to_close_timeout=timeout, retry_policy=retry_policy)
    return workflow.execute_activity_method(activity, arg, start_to_close_timeout=timeout, retry_policy=retry_policy)
