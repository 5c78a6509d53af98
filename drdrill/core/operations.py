"""Operating drills: concurrency permits and orphan sweeps. The models and pure helpers.

Used by the workflows (workflows/limiter.py, workflows/sweep.py, workflows/drill.py), so everything
here is deterministic; the activities in activities/ops.py do the side effects (signal-with-start a
limiter, list open drills, write sweep evidence, update Prometheus metrics).

Concurrency limits come from the worker's environment, read by the `request_permit` activity:

    DRDRILL_LIMITS='{"postgres": 1, "aws": 4, "aws:us-east-1": 2}'   drills at once per key
    DRDRILL_RESTORE_LIMITS='{"aws:us-east-1": 3}'                     restores at once per key

A key is "<family>" or "<family>:<account/region>" (see `permit_keys`); an entry for a bare family
applies to each of its keys that has no entry of its own. No entry: no limit.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Optional

from pydantic import BaseModel, Field

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
    return target.permit_key(isolation)  # each family's target model says (drdrill/providers/<family>/schema.py)


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
    """A request for a permit: the limiter workflow's signal, and what it holds and queues."""

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


