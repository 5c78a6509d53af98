"""Operating drills: concurrency permits, orphan sweeps, metrics. Models, pure helpers and activities.

The models and the pure helpers (permit keys, the drill id of a scheduled run) are used by the
workflows (workflows/limiter.py, workflows/sweep.py, workflows/drill.py) and must stay deterministic;
the activities do the side effects (signal-with-start a limiter, list open drills, write sweep
evidence, update Prometheus metrics).

Concurrency limits come from the worker's environment, read by the `request_permit` activity:

    DRDRILL_LIMITS='{"postgres": 1, "aws": 4, "aws:us-east-1": 2}'   drills at once per key
    DRDRILL_RESTORE_LIMITS='{"aws:us-east-1": 3}'                     restores at once per key

A key is "<family>" or "<family>:<account/region>" (see `permit_keys`); an entry for a bare family
applies to each of its keys that has no entry of its own. No entry: no limit.
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.models import DrillResult, Orphan

log = logging.getLogger("drdrill.ops")

LIMITER_WORKFLOW = "DrillLimiterWorkflow"
DRILL_WORKFLOW = "DrillWorkflow"


# ------------------------------------------------------------------ pure helpers (workflow-safe)


def drill_id_from_workflow_id(workflow_id: str) -> str:
    """The drill id of a run started without one (a scheduled run: '<name>-2026-01-01T02:00:00Z').

    Resource names and tags need [a-z0-9-]: '<name>-2026-01-01t02-00-00z'.
    """
    return re.sub(r"[^a-z0-9-]+", "-", workflow_id.lower()).strip("-")


def permit_key(target: Any, isolation: Any) -> str:
    """The account/region a target's resources count against: 'postgres', 'aws:us-east-1', …"""
    family = target.provider.split(".", 1)[0]
    source = getattr(target, "source", None)
    if family == "aws":
        region = getattr(source, "region", None) or getattr(isolation, "aws_region", None) or "default"
        return f"aws:{region}"
    if family == "azure":
        sub = getattr(isolation, "azure_subscription_id", None) or getattr(source, "subscription_id", None) or "default"
        return f"azure:{sub}"
    if family == "gcp":
        project = getattr(isolation, "gcp_project", None) or getattr(source, "project", None) or "default"
        return f"gcp:{project}"
    return family


def permit_keys(spec: Any) -> list[str]:
    """Every key a drill needs a permit for, sorted (acquiring in one order cannot deadlock)."""
    return sorted({permit_key(t, spec.isolation) for t in spec.targets})


def limiter_workflow_id(task_queue: str, kind: str, key: str) -> str:
    """One limiter per (task queue, kind, key): the workers of one deployment share one."""
    return f"drdrill-limiter/{task_queue}/{kind}/{key}"


def limit_for(key: str, config: dict[str, int]) -> Optional[int]:
    if key in config:
        return int(config[key])
    family = key.split(":", 1)[0]
    if family in config:
        return int(config[family])
    return None


# ------------------------------------------------------------------ models


class PermitRequest(BaseModel):
    request_id: str
    workflow_id: str
    label: str = ""
    requested_at: Optional[datetime] = None


class LimiterState(BaseModel):
    """What a limiter workflow holds (and carries over continue-as-new); also its `state` query."""

    key: str
    kind: str = "drill"
    limit: int = 1
    holders: list[PermitRequest] = Field(default_factory=list)
    queue: list[PermitRequest] = Field(default_factory=list)


class LimiterRequest(BaseModel):
    """The signal a requester sends to a limiter (carries the configured limit, which may change)."""

    request: PermitRequest
    limit: int


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
    action: str


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
        from activities.drill import default_state_dir

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
        from temporalio.client import WorkflowExecutionStatus
        from temporalio.service import RPCError, RPCStatusCode

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
        """Keep the sweep as evidence: <state_dir>/sweeps/<time>-<id>.json (and the evidence store, when there is one)."""
        from drdrill import metrics
        from drdrill.redact import redact_obj

        for a in record.actions:
            metrics.ORPHANS_FOUND.labels(provider=a.orphan.provider).inc()
            if a.action.startswith("deleted"):
                metrics.ORPHANS_DELETED.labels(provider=a.orphan.provider).inc()
        folder = self.state_dir / "sweeps"
        folder.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", record.sweep_id)
        path = folder / f"{record.started:%Y%m%dT%H%M%SZ}-{safe}.json"
        record.evidence_path = str(path)
        data = redact_obj(record.model_dump(mode="json"))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        tmp.replace(path)
        _store_sweep(data)
        return str(path)

    @activity.defn(name="observe_result")
    def observe_result(self, result: DrillResult) -> None:
        """Update drdrill's Prometheus metrics with a finished drill."""
        from drdrill import metrics

        metrics.observe_result(result)


def _store_sweep(data: dict) -> None:
    """Also keep the sweep in the PostgreSQL evidence store when one is configured (best effort)."""
    try:
        from drdrill import evidence_store  # type: ignore[attr-defined]
    except ImportError:
        return
    fn = getattr(evidence_store, "record_sweep", None)
    if fn is None:
        return
    try:
        fn(data)
    except Exception:  # noqa: BLE001 - the JSON file is the record; the store is a copy
        log.exception("could not copy the sweep into the evidence store")
