"""Metrics: a worker serves drdrill's Prometheus metrics (drills by verdict, RTO/RPO achieved,
orphans) and the Temporal SDK's own, each on its port; logs are JSON lines carrying drill ids."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import urllib.request

from activities import logs
from app.temporal import free_port
from drdrill import metrics
from tests.ops_helpers import pg_drill, service, spec_of, unique
from tests.pg_fixtures import cluster_root, shop_dsn, shop_repo  # noqa: F401
from worker import sdk_runtime


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_worker_serves_drdrill_and_sdk_metrics(temporal_server, tmp_path, shop_repo, cluster_root):
    port = metrics.serve(free_port(), addr="127.0.0.1")
    sdk_port = free_port()
    runtime = sdk_runtime(sdk_port, addr="127.0.0.1")
    name = unique("measured")
    spec = spec_of(pg_drill(shop_repo, name))

    async def go():
        async with service(temporal_server.address, tmp_path, runtime=runtime) as svc:
            return await svc.result(await svc.start(spec))

    result = asyncio.run(go())
    assert result.verdict == "PASSED"
    text = scrape(port)
    assert sample(text, "drdrill_drills_total", drill=name, verdict="PASSED") == 1.0
    assert sample(text, "drdrill_rto_achieved_seconds", drill=name) == result.rto_seconds
    assert sample(text, "drdrill_rpo_achieved_seconds", drill=name) == result.rpo_seconds
    assert sample(text, "drdrill_rto_objective_seconds", drill=name) == 900.0
    assert "# TYPE drdrill_teardown_failures_total counter" in text
    assert "# TYPE drdrill_orphans_found_total counter" in text
    sdk = scrape(sdk_port)
    assert "temporal_workflow_completed" in sdk or "temporal_request" in sdk


def test_json_logs_carry_drill_and_run_ids(monkeypatch):
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    logs.setup("json", "INFO")
    handler = logging.getLogger().handlers[0]
    handler.stream = stream  # type: ignore[attr-defined]
    monkeypatch.setenv("SOME_API_TOKEN", "tok-very-secret")
    logging.getLogger("drdrill.test").info(
        "restored with tok-very-secret",
        extra={"temporal_activity": {"workflow_id": "shop-20260101-ab", "workflow_run_id": "run-1", "activity_type": "restore"}},
    )
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["drill_id"] == "shop-20260101-ab" and line["run_id"] == "run-1" and line["activity_type"] == "restore"
    assert line["level"] == "INFO" and "tok-very-secret" not in line["message"]
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
