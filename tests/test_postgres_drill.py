"""PostgreSQL drills end to end: real backups, real throwaway clusters, the real worker and server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from activities.providers.postgres import PostgresProvider
from tests.conftest import wait_for_phase
from tests.pg_fixtures import ADMIN_DSN, clusters_left, cluster_root, shop_dsn, shop_repo  # noqa: F401


def drill_yaml(repo: Path, validations: str = "", extra: str = "", name: str = "pg-drill") -> str:
    return f"""
version: 1
name: {name}
objectives: {{rto: 15m, rpo: 1h}}
max_duration: 10m
targets:
  - name: shop
    provider: postgres
    source: {{repository: {repo}}}
    restore: {{jobs: 2, timeout: 5m}}
validations:
{validations or '''  - {type: checksum, target: shop, name: tables-match}
  - {type: sql, target: shop, name: orders-present, query: "SELECT count(*) FROM orders", expect: "> 0"}
  - {type: row_count, target: shop, table: customers, equals_manifest: true}
  - {type: freshness, target: shop, table: orders, column: created_at}'''}
{extra}
"""


def test_demo_shaped_drill_passes_with_rto_and_rpo_from_timeline_and_manifest(drill_harness, shop_repo, cluster_root):
    result = drill_harness.run(drill_yaml(shop_repo), providers={"postgres": PostgresProvider()})

    assert result.verdict == "PASSED", result.findings
    assert [v.outcome for v in result.validations] == ["PASSED"] * 4
    checksum = result.validations[0]
    assert checksum.detail.startswith("3/3 tables match the backup")
    # RPO: declared minus the manifest's consistent time (the freshness check measured no worse).
    point = result.recovery_points[0]
    assert result.rpo_seconds == pytest.approx(
        max((result.declared - point.consistent_time).total_seconds(), result.validations[3].measured["rpo_seconds"])
    )
    assert point.metadata["manifest"]["tables"]["public.orders"]["rows"] == 2000
    # RTO: declared until the last required check first passed; it lies inside the timeline.
    last_pass = max(v.first_passed_at for v in result.validations)
    assert result.rto_seconds == pytest.approx((last_pass - result.declared).total_seconds())
    validate_event = next(e for e in result.timeline if e.phase == "validate")
    assert result.declared <= last_pass <= validate_event.ended
    assert {o.name: o.outcome for o in result.objectives} == {"RTO": "PASSED", "RPO": "PASSED"}
    # Isolation was proven, and torn down afterwards: no directory, no server.
    assert {c.name: c.outcome for c in result.isolation[0].checks}["no TCP listener"] == "PASSED"
    assert result.teardown[0].deleted and clusters_left(cluster_root) == []
    assert Path(result.evidence_path).exists()
