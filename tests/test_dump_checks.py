"""Checks a restore needs beyond "pg_restore exited 0", and validations without drdrill's manifest.

Each inspection finding is made to fire by a database that dumps and restores cleanly but is
broken (a sequence behind its column, a materialized view without data, no tables at all), and is
shown not to fire on a healthy one. Real PostgreSQL, real backups (`take_backup`, what `drdrill
backup` runs), the real worker and Temporal dev server, the real `drdrill` command.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from drdrill.providers.postgres.provider import PostgresProvider
from drdrill.providers.postgres.backup import take_backup
from tests.pg_fixtures import clusters_left, cluster_root, create_source_db, drop_db  # noqa: F401

DRDRILL = str(Path(sys.executable).parent / "drdrill")

ORDERS_PRESENT = '  - {type: sql, target: shop, name: orders-present, query: "SELECT count(*) FROM orders", expect: "> 0"}'
SERVES = '  - {type: sql, target: shop, name: serves, query: "SELECT 1", expect: "== 1"}'


def drill_yaml(repo: Path, validations: str, name: str = "dump-checks", restore: str = "") -> str:
    return f"""version: 1
name: {name}
objectives: {{rto: 15m, rpo: 1h}}
max_duration: 10m
targets:
  - name: shop
    provider: postgres
    source: {{repository: {repo}}}
    restore: {{jobs: 2, timeout: 5m{restore}}}
validations:
{validations}
"""


@pytest.fixture
def source():
    """A seeded source database of this test's own, which it may break (customers, orders, audit.events)."""
    dsn = create_source_db()
    yield dsn
    drop_db(dsn)


def execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def run(drill_harness, text: str, base_dir: Path | None = None):
    return drill_harness.run(drill_harness.spec(text, base_dir=base_dir), providers={"postgres": PostgresProvider()})


# ------------------------------------------------------------------ the inspection


def test_healthy_restore_has_no_inspection_finding_and_records_its_structure(drill_harness, source, tmp_path, cluster_root):
    execute(
        source,
        "CREATE MATERIALIZED VIEW order_totals AS SELECT customer_id, sum(amount) AS total FROM orders GROUP BY 1",
        "CREATE TABLE tickets (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text)",
        "INSERT INTO tickets (note) SELECT 'n' || g FROM generate_series(1, 30) g",
        "CREATE TABLE empty_one (id serial PRIMARY KEY)",  # a sequence never used, on an empty table
    )
    repo = tmp_path / "backups"
    take_backup(source, repo)

    result = run(drill_harness, drill_yaml(repo, ORDERS_PRESENT))

    assert result.verdict == "PASSED", result.findings
    assert result.findings == []
    structure = result.restored[0].details["structure"]
    assert structure == sorted(structure)
    for line in (
        "schema audit",
        "table public.orders",
        "column public.orders.amount numeric(10,2) not null",
        "constraint public.orders.orders_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES public.customers(id)",
        "index public.customers_email_key on public.customers unique using btree (email)",
        "sequence public.orders_id_seq bigint",
        "materialized view public.order_totals",
        "extension plpgsql",
    ):
        assert line in structure
    assert clusters_left(cluster_root) == []


@pytest.mark.parametrize(
    "break_it, code, words",
    [
        (
            ["SELECT setval('orders_id_seq', 10)"],
            "SEQUENCE_BEHIND",
            "sequence public.orders_id_seq is behind public.orders.id: last_value 10, max(id) 2000; the next insert gets 11",
        ),
        (
            ["CREATE MATERIALIZED VIEW order_totals AS SELECT customer_id, sum(amount) FROM orders GROUP BY 1 WITH NO DATA"],
            "MATVIEW_UNPOPULATED",
            "materialized view public.order_totals was restored without data (ispopulated = false)",
        ),
        (
            ["DROP TABLE orders, customers, audit.events"],
            "EMPTY_RESTORE",
            "the restore produced no tables at all",
        ),
    ],
    ids=["sequence-behind", "matview-unpopulated", "empty-database"],
)
def test_a_broken_database_that_restores_cleanly_fails_the_drill(drill_harness, source, tmp_path, cluster_root, break_it, code, words):
    execute(source, *break_it)
    repo = tmp_path / "backups"
    take_backup(source, repo)

    result = run(drill_harness, drill_yaml(repo, SERVES))

    assert result.verdict == "FAILED"
    assert [f.code for f in result.findings] == [code], result.findings
    finding = result.findings[0]
    assert words in finding.message and finding.target == "shop" and finding.severity == "error"
    assert [v.outcome for v in result.validations] == ["PASSED"]  # pg_restore and the database were fine
    assert clusters_left(cluster_root) == []


# ------------------------------------------------------------------ the structure reference


def test_structure_reference_written_by_the_cli_catches_a_dropped_and_an_added_table(drill_harness, source, tmp_path, cluster_root):
    repo = tmp_path / "backups"
    take_backup(source, repo)
    name = f"structure-{uuid.uuid4().hex[:6]}"
    drill = tmp_path / "drills" / "shop.yaml"
    drill.parent.mkdir()
    drill.write_text(drill_yaml(repo, ORDERS_PRESENT, name=name, restore=", structure_reference: shop.reference/shop.txt"))
    reference = tmp_path / "drills" / "shop.reference" / "shop.txt"

    # No reference yet: the drill cannot check the structure, and says how to get one.
    first = run(drill_harness, drill)
    assert first.verdict == "COULD_NOT_VERIFY"
    assert [f.code for f in first.findings] == ["STRUCTURE_REFERENCE_MISSING"]
    assert f"{reference} does not exist" in first.findings[0].message and "drdrill reference write" in first.findings[0].message

    proc = subprocess.run([DRDRILL, "reference", "write", str(drill)], capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"target shop: wrote {reference} (" in proc.stdout and f"from run {first.drill_id}, verdict COULD_NOT_VERIFY" in proc.stdout
    lines = reference.read_text().splitlines()
    objects = [line for line in lines if not line.startswith("#")]
    assert objects == sorted(objects) == first.restored[0].details["structure"]
    assert "table audit.events" in objects and f"# rewrite it with: drdrill reference write {drill}" in lines

    # The same backup again: the restore matches its reference.
    same = run(drill_harness, drill)
    assert same.verdict == "PASSED", same.findings
    assert same.findings == []

    execute(source, "DROP TABLE audit.events", "CREATE TABLE refunds (id bigint PRIMARY KEY, amount numeric(10,2))")
    take_backup(source, repo)
    changed = run(drill_harness, drill)

    assert changed.verdict == "FAILED"
    assert [(f.code, f.severity) for f in changed.findings] == [("STRUCTURE_MISSING", "error"), ("STRUCTURE_UNEXPECTED", "warning")]
    missing, unexpected = changed.findings
    assert "7 objects of the structure reference shop.txt were not restored" in missing.message
    for gone in ("table audit.events", "column audit.events.payload jsonb", "sequence audit.events_id_seq bigint",
                 "constraint audit.events.events_pkey PRIMARY KEY (id)"):
        assert gone in missing.message
    assert "table public.refunds" in unexpected.message and "column public.refunds.amount numeric(10,2)" in unexpected.message
    assert "audit.events" not in unexpected.message and "refunds" not in missing.message
    assert changed.restored[0].details["structure_missing"][0] == "column audit.events.at timestamp with time zone"
    assert clusters_left(cluster_root) == []


def test_reference_write_refuses_a_target_without_a_reference_file_named(tmp_path):
    drill = tmp_path / "shop.yaml"
    drill.write_text(drill_yaml(tmp_path / "backups", SERVES))

    proc = subprocess.run([DRDRILL, "reference", "write", str(drill)], capture_output=True, text=True, env=dict(os.environ), timeout=120)

    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"{drill}: targets[0].restore.structure_reference is not set: add `structure_reference: shop.reference/shop.txt` "
        "under targets[0].restore (relative to the drill file), then write it"
    )
    assert list(tmp_path.iterdir()) == [drill]


# ------------------------------------------------------------------ validations without drdrill's manifest


def test_checksum_and_equals_manifest_without_a_manifest_could_not_verify(drill_harness, tmp_path, cluster_root):
    """A base backup (pg_basebackup: a physical copy) has no per-table counts or checksums."""
    from drdrill.localpg.cluster import LocalCluster

    server = LocalCluster(cluster_root / "source")
    server.create({"purpose": "test source"}, settings={"wal_level": "replica", "max_wal_senders": "4"})
    execute(server.dsn(), "CREATE DATABASE app")
    execute(server.dsn("app"), "CREATE TABLE t (id int, at timestamptz DEFAULT now())", "INSERT INTO t (id) SELECT generate_series(1, 500)")
    repo = tmp_path / "base"
    take_backup(server.dsn("app"), repo, fmt="base")
    server.destroy()
    validations = """  - {type: checksum, target: shop, name: tables-match}
  - {type: row_count, target: shop, name: t-as-backed-up, table: t, equals_manifest: true}
  - {type: row_count, target: shop, name: t-rows, table: t, min: 500}
  - {type: sql, target: shop, name: t-present, query: "SELECT count(*) FROM t", expect: "== 500"}
  - {type: freshness, target: shop, name: t-fresh, table: t, column: at}"""
    text = drill_yaml(repo, validations).replace("source: {repository: ", "source: {format: base, database: app, repository: ")

    result = run(drill_harness, text)

    assert result.verdict == "COULD_NOT_VERIFY"
    assert result.findings == []
    outcomes = {v.name: v.outcome for v in result.validations}
    assert outcomes == {
        "tables-match": "COULD_NOT_VERIFY",
        "t-as-backed-up": "COULD_NOT_VERIFY",
        "t-rows": "PASSED",
        "t-present": "PASSED",
        "t-fresh": "PASSED",
    }
    point = result.recovery_points[0].id
    for check, what in ((result.validations[0], "checksum"), (result.validations[1], "equals_manifest")):
        assert check.detail.startswith(
            f"{what}: recovery point {point} is a base backup (a physical copy), with no manifest of table checksums to compare with: "
            "take the backups with `drdrill backup` (format custom or directory)"
        ), check.detail
        assert check.attempts == 1  # trying again cannot make a manifest appear
    assert clusters_left(cluster_root) == []


# ------------------------------------------------------------------ volume drift


def test_volume_first_run_then_a_lost_half_fails_and_growth_passes(drill_harness, source, tmp_path, cluster_root):
    name = f"volume-{uuid.uuid4().hex[:6]}"
    repo = tmp_path / "backups"
    validations = """  - {type: volume, target: shop, name: volume, tolerance: 10%}
  - {type: volume, target: shop, name: orders-volume, tables: [orders], tolerance: 60%}
"""
    text = drill_yaml(repo, validations + ORDERS_PRESENT, name=name)

    take_backup(source, repo)
    first = run(drill_harness, text)

    # The first run records the baseline: neither a failure nor a lost RTO.
    assert first.verdict == "PASSED", (first.findings, first.validations)
    assert first.findings == []
    volume = first.validations[0]
    assert volume.outcome == "PASSED"
    assert volume.detail == (
        f"baseline recorded: 3 tables, 2250 rows; no earlier PASSED run of drill {name} counted target shop's tables, "
        "so the next run compares with these counts"
    )
    assert volume.measured["tables"] == {"audit.events": 50, "public.customers": 200, "public.orders": 2000}
    assert (first.validations[1].outcome, first.validations[1].measured["tables"]) == ("PASSED", {"public.orders": 2000})
    rto = next(o for o in first.objectives if o.name == "RTO")
    assert rto.achieved_seconds is not None and rto.outcome in ("PASSED", "FAILED")

    execute(source, "DELETE FROM orders WHERE id % 2 = 0")
    take_backup(source, repo)
    shrunk = run(drill_harness, text)

    assert shrunk.verdict == "FAILED"
    assert shrunk.findings == []
    volume = shrunk.validations[0]
    assert volume.outcome == "FAILED"
    assert volume.detail == (
        "1/3 tables lost more than 10% of their rows since the last PASSED run: "
        f"public.orders: 1000 rows, 2000 in run {first.drill_id} (-50%)"
    )
    assert [f.code for f in volume.findings] == ["VOLUME_DROPPED"]
    within = shrunk.validations[1]  # the same loss, within a tolerance of 60%
    assert (within.outcome, within.detail) == ("PASSED", f"1/1 tables within 60% of run {first.drill_id} (1000 rows)")

    # Growth is never a finding; the FAILED run is no baseline, so this one compares with the first.
    execute(source, "INSERT INTO orders (customer_id, amount) SELECT 1 + g % 200, 1 FROM generate_series(1, 3000) g")
    take_backup(source, repo)
    grown = run(drill_harness, text)

    assert grown.verdict == "PASSED", (grown.findings, grown.validations)
    volume = grown.validations[0]
    assert volume.outcome == "PASSED"
    assert volume.detail == f"3/3 tables within 10% of run {first.drill_id} (4250 rows)"
    assert volume.measured["baseline_run"] == first.drill_id
    assert clusters_left(cluster_root) == []
