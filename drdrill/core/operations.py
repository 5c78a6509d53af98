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
from typing import Any, Optional

from pydantic import BaseModel, Field
from drdrill.core.activity_io import PermitRequest

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


