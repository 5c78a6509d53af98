"""Structured logs for the worker: text or JSON lines, each carrying the drill and run ids.

    DRDRILL_LOG_FORMAT=json|text   (default text)
    DRDRILL_LOG_LEVEL=INFO

Inside an activity or a workflow, the Temporal SDK attaches its context to each record
(`temporal_activity` / `temporal_workflow`); this module lifts the workflow id (= the drill id for
drills started by drdrill) and the run id into top-level fields, and redacts secrets.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from typing import Any, Optional

from temporalio import activity

from drdrill.core.redact import RedactingFilter, redact

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class ContextFilter(logging.Filter):
    """Adds drill_id, run_id (and activity/workflow type) to every record that has a Temporal context."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx: Optional[dict] = getattr(record, "temporal_activity", None) or getattr(record, "temporal_workflow", None)
        if ctx is None:
            try:
                info = activity.info()
                ctx = {"workflow_id": info.workflow_id, "workflow_run_id": info.workflow_run_id, "activity_type": info.activity_type}
            except RuntimeError:
                ctx = None
        if ctx:
            wid = ctx.get("workflow_id")
            if wid and not getattr(record, "drill_id", None):
                record.drill_id = wid  # the workflow id: what `drdrill status` takes
            record.run_id = ctx.get("workflow_run_id") or ctx.get("run_id") or getattr(record, "run_id", None)
            for k in ("activity_type", "workflow_type", "attempt"):
                if ctx.get(k) is not None:
                    setattr(record, k, ctx[k])
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("temporal_") or key.startswith("_"):
                continue
            out[key] = value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = [f"{k}={getattr(record, k)}" for k in ("drill_id", "run_id") if getattr(record, k, None)]
        return text + (" [" + " ".join(ids) + "]" if ids else "")


def setup(fmt: Optional[str] = None, level: Optional[str] = None) -> None:
    """Configure the root logger once: one stderr handler, text or JSON, with ids and redaction."""
    fmt = (fmt or os.environ.get("DRDRILL_LOG_FORMAT", "text")).lower()
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level or os.environ.get("DRDRILL_LOG_LEVEL", "INFO"))
