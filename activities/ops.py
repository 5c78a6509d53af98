"""Activities for operating drills: concurrency permits, open drills, sweep evidence, metrics.

Concurrency limits come from the worker's environment, read by the `request_permit` activity:

    DRDRILL_LIMITS='{"postgres": 1, "aws": 4, "aws:us-east-1": 2}'   drills at once per key
    DRDRILL_RESTORE_LIMITS='{"aws:us-east-1": 3}'                     restores at once per key

The models and the pure helpers these use live in drdrill/core/operations.py.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from drdrill import metrics
from drdrill.core.models import DrillResult
from drdrill.providers.activity_io import PermitAnswer, RequestPermitInput, SweepRecord
from drdrill.core.operations import (
    DRILL_WORKFLOW,
    LIMITER_WORKFLOW,
    LimiterRequest,
    LimiterState,
    drill_id_from_workflow_id,
    limit_for,
    limiter_workflow_id,
)
from drdrill.core.paths import default_state_dir
from drdrill.evidence.record import record_sweep

log = logging.getLogger("drdrill.ops")

# ------------------------------------------------------------------ config


def _limits(var: str) -> dict[str, int]:
    raw = os.environ.get(var, "").strip()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or not all(isinstance(v, int) and v >= 1 for v in data.values()):
            raise ValueError("must map keys to integers >= 1")
    except ValueError as exc:
        raise ApplicationError(f"{var} is not valid: {exc} (e.g. '{{\"postgres\": 1, \"aws:us-east-1\": 4}}')", non_retryable=True)
    return data


def limits_config(kind: str) -> dict[str, int]:
    return _limits("DRDRILL_RESTORE_LIMITS" if kind == "restore" else "DRDRILL_LIMITS")


# ------------------------------------------------------------------ activities


class OpsActivities:
    """Activities that need the Temporal client (async, so `activity.client()` is available)."""

    def __init__(self, state_dir: Optional[str] = None):
        self.state_dir = Path(state_dir or default_state_dir())

    @activity.defn(name="request_permit")
    async def request_permit(self, inp: RequestPermitInput) -> PermitAnswer:
        """Ask the key's limiter for a permit (signal-with-start); the grant arrives as a signal."""
        limit = limit_for(inp.key, limits_config(inp.kind))
        if limit is None:
            return PermitAnswer()
        client = activity.client()
        limiter_id = limiter_workflow_id(inp.task_queue, inp.kind, inp.key)
        await client.start_workflow(
            LIMITER_WORKFLOW,
            LimiterState(key=inp.key, kind=inp.kind, limit=limit),
            id=limiter_id,
            task_queue=inp.task_queue,
            start_signal="request",
            start_signal_args=[LimiterRequest(request=inp.request, limit=limit)],
        )
        return PermitAnswer(limit=limit, limiter_id=limiter_id)

    @activity.defn(name="closed_workflows")
    async def closed_workflows(self, workflow_ids: list[str]) -> list[str]:
        """Which of these workflows are no longer running (a limiter frees their permits)."""
        client = activity.client()
        closed = []
        for wid in workflow_ids:
            try:
                desc = await client.get_workflow_handle(wid).describe()
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    closed.append(wid)
                    continue
                raise
            if desc.status != WorkflowExecutionStatus.RUNNING:
                closed.append(wid)
        return closed

    @activity.defn(name="active_drill_ids")
    async def active_drill_ids(self) -> list[str]:
        """Ids of running drills (workflow ids and the drill ids derived from them)."""
        client = activity.client()
        ids: set[str] = set()
        async for wf in client.list_workflows(f"WorkflowType = '{DRILL_WORKFLOW}' AND ExecutionStatus = 'Running'"):
            ids.add(wf.id)
            ids.add(drill_id_from_workflow_id(wf.id))
        return sorted(ids)

    @activity.defn(name="record_sweep")
    def record_sweep(self, record: SweepRecord) -> str:
        """Keep the sweep as evidence: <state_dir>/sweeps/<time>-<id>.json and the evidence store.
        Metrics count every orphan found, and the `deleted` outcomes, per provider."""
        for a in record.actions:
            metrics.ORPHANS_FOUND.labels(provider=a.orphan.provider).inc()
            if a.outcome.result == "deleted":
                metrics.ORPHANS_DELETED.labels(provider=a.orphan.provider).inc()
        return record_sweep(self.state_dir, record)

    @activity.defn(name="observe_result")
    def observe_result(self, result: DrillResult) -> None:
        """Update drdrill's Prometheus metrics with a finished drill."""
        metrics.observe_result(result)


