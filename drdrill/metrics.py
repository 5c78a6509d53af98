"""Prometheus metrics of a drdrill worker.

Two endpoints, because the Temporal SDK serves its own metrics from its Rust core:

    DRDRILL_METRICS_PORT      drdrill's metrics (this module, prometheus_client) on /metrics
    DRDRILL_SDK_METRICS_PORT  the Temporal SDK's metrics (workflow/activity task latencies, polls,
                              schedule-to-start …); default DRDRILL_METRICS_PORT + 1

drdrill's metrics are updated by activities (observe_result, record_sweep), so each worker reports
the drills whose activities it ran; Prometheus sums them across workers.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, start_http_server

DRILLS = Counter("drdrill_drills", "Finished drills by verdict", ["drill", "verdict"])
RTO = Gauge("drdrill_rto_achieved_seconds", "RTO achieved by the drill's latest run (declared to last required check passed)", ["drill"])
RPO = Gauge("drdrill_rpo_achieved_seconds", "RPO achieved by the drill's latest run (data loss, seconds)", ["drill"])
RTO_OBJECTIVE = Gauge("drdrill_rto_objective_seconds", "The drill's RTO objective", ["drill"])
RPO_OBJECTIVE = Gauge("drdrill_rpo_objective_seconds", "The drill's RPO objective", ["drill"])
LAST_RUN = Gauge("drdrill_last_run_timestamp_seconds", "When the drill's latest run ended", ["drill", "verdict"])
TEARDOWN_FAILURES = Counter("drdrill_teardown_failures", "Teardown attempts that failed (and were retried)", ["drill", "provider"])
ORPHANS_FOUND = Counter("drdrill_orphans_found", "Orphaned resources found by sweeps", ["provider"])
ORPHANS_DELETED = Counter("drdrill_orphans_deleted", "Orphaned resources deleted by sweeps", ["provider"])


def observe_result(result: Any) -> None:
    name = result.name
    DRILLS.labels(drill=name, verdict=result.verdict).inc()
    if result.rto_seconds is not None:
        RTO.labels(drill=name).set(result.rto_seconds)
    if result.rpo_seconds is not None:
        RPO.labels(drill=name).set(result.rpo_seconds)
    for o in result.objectives:
        (RTO_OBJECTIVE if o.name == "RTO" else RPO_OBJECTIVE).labels(drill=name).set(o.objective_seconds)
    LAST_RUN.labels(drill=name, verdict=result.verdict).set(result.ended.timestamp())
    for t in result.teardown:
        if t.attempt > 1:
            TEARDOWN_FAILURES.labels(drill=name, provider=t.family).inc(t.attempt - 1)


def serve(port: Optional[int] = None, addr: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY) -> Optional[int]:
    """Serve drdrill's metrics on `port` (default DRDRILL_METRICS_PORT; unset: not served)."""
    if port is None:
        raw = os.environ.get("DRDRILL_METRICS_PORT", "").strip()
        if not raw:
            return None
        port = int(raw)
    start_http_server(port, addr=addr, registry=registry)
    return port
