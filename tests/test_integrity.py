"""Is what a drill restored sound: amcheck of a really corrupted index and heap page, the budget,
collation versions (integrity.py). Real backups, real throwaway clusters; the corruption is bytes
written into the restored relation's file while its server is stopped."""

from __future__ import annotations

import struct
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from drdrill.core.models import DrillContext
from drdrill.providers.spec import parse_spec
from drdrill.providers.postgres.provider import PostgresProvider
from drdrill.providers.postgres.backup import take_backup
from drdrill.localpg.cluster import LocalCluster
from drdrill.providers.postgres.integrity import BATCHES, Table, _batches, run_amcheck
from tests.pg_fixtures import SEED_SQL, clusters_left, cluster_root, create_source_db, drop_db, shop_dsn, shop_repo  # noqa: F401

PAGE = 8192
ICU_SEED = SEED_SQL + """
CREATE TABLE names (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO names SELECT g, 'name ' || g FROM generate_series(1, 100) g;
CREATE INDEX names_by_icu ON names (name COLLATE "und-x-icu");
"""


def _restored(repo: Path, drill_id: str, integrity: str = ""):
    spec = parse_spec(
        "name: unit\nobjectives: {rto: 1h, rpo: 1d}\ntargets:\n"
        f"  - {{name: shop, provider: postgres, source: {{repository: {repo}}}, restore: {{jobs: 2{integrity}}}}}\n"
    )
    (target,) = spec.targets
    now = datetime.now(timezone.utc)
    ctx = DrillContext(drill_id=drill_id, drill_name="unit", declared=now, expires_at=now + timedelta(hours=1))
    provider = PostgresProvider()
    point = provider.find_recovery_point(ctx, target)
    env = provider.create_isolation(ctx, spec.isolation, spec.targets)
    resource = provider.restore(ctx, target, point, env)
    return provider, ctx, target, env, resource


@pytest.fixture
def drill(shop_repo, cluster_root):
    made = []

    def make(drill_id: str, integrity: str = "", repo: Path = shop_repo):
        made.append(_restored(repo, drill_id, integrity))
        return made[-1]

    yield make
    for provider, ctx, _, env, _ in made:
        provider.teardown(ctx, env)
    assert clusters_left(cluster_root) == []


def _file_of(resource, relation: str) -> Path:
    """The relation's main fork, as a path on the host (the cluster's data directory)."""
    cluster = LocalCluster(Path(resource.endpoint["socket_dir"]).parent)
    with psycopg.connect(resource.endpoint["dsn"], autocommit=True) as conn:
        rel = conn.execute("SELECT pg_relation_filepath(%s::regclass)", (relation,)).fetchone()[0]
    return cluster.data / rel


def _damage(resource, edits: list[tuple[str, callable]]) -> None:
    """Stop the server cleanly (its pages checkpointed to disk), edit relation files, start it again."""
    files = [(_file_of(resource, rel), edit) for rel, edit in edits]
    cluster = LocalCluster(Path(resource.endpoint["socket_dir"]).parent)
    cluster.stop("fast")
    for path, edit in files:
        data = bytearray(path.read_bytes())
        edit(data)
        path.write_bytes(bytes(data))
    cluster.start()


def _swap_index_key(data: bytearray) -> None:
    """customers_email_key: one key rewritten in place (same length), out of order and matching no row."""
    at = data.find(b"c10@example.com")
    assert at > 0
    data[at:at + 15] = b"c99@example.com"


def _break_line_pointer(data: bytearray) -> None:
    """orders, block 0: its first line pointer (a used one, LP_NORMAL) points past the end of the page."""
    lp_off, lp_normal, lp_len = 8000, 1, 1000
    data[24:28] = struct.pack("<I", lp_off | lp_normal << 15 | lp_len << 17)


def test_corrupt_index_and_heap_page_fail_the_drill_naming_relation_and_block(drill):
    provider, ctx, target, env, resource = drill("integrity-corrupt")
    _damage(resource, [("customers_email_key", _swap_index_key), ("orders", _break_line_pointer)])

    ready = provider.wait_ready(ctx, target, resource, timeout=60)

    corrupt = {f.message.split(" is corrupt")[0].split(": ", 1)[1]: f for f in ready.findings if f.code == "AMCHECK_CORRUPTION"}
    assert {"btree index public.customers_email_key", "heap table public.orders"} <= set(corrupt), ready.findings
    # The damaged heap page also shows through its table's index (heapallindexed), and nothing else does.
    assert set(corrupt) - {"btree index public.customers_email_key", "heap table public.orders"} <= {"btree index public.orders_pkey"}
    assert "(block 0)" in corrupt["heap table public.orders"].message
    assert "(block 1)" in corrupt["btree index public.customers_email_key"].message
    assert all(f.severity == "error" and not f.could_not_verify for f in corrupt.values())
    report = ready.details["integrity"]["amcheck"]
    assert report["tool"].startswith("pg_amcheck") and report["relations_not_checked"] == []
    assert report["corrupt"]["public.orders"]["blocks"] == [0]
    with psycopg.connect(resource.endpoint["dsn"]) as conn:  # the restored database is left as it was restored
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'").fetchone()[0] == 0
    # Without pg_amcheck (a server before 14, or none installed): the extension's functions find the same.
    cluster = LocalCluster(Path(resource.endpoint["socket_dir"]).parent)
    fallback = run_amcheck(resource.endpoint["dsn"], cluster, 2, time.monotonic() + 120, "shop", functions_only=True)
    assert fallback.tool.startswith("amcheck functions") and fallback.not_checked == []
    assert {"public.orders", "public.customers_email_key"} <= set(fallback.problems), fallback.problems
    assert fallback.problems["public.orders"].blocks == [0]


def test_sound_restore_is_checked_whole_and_passes(drill):
    provider, ctx, target, env, resource = drill("integrity-sound")
    ready = provider.wait_ready(ctx, target, resource, timeout=60)

    assert not [f for f in ready.findings if f.code.startswith(("AMCHECK", "COLLATION", "PAGE_"))], ready.findings
    report = ready.details["integrity"]["amcheck"]
    # 3 tables (customers, orders, audit.events) and their 4 B-tree indexes.
    assert (report["tables"], report["indexes"], report["relations_checked"]) == (3, 4, 7)
    assert ready.details["integrity"]["collations"]["mismatched"] == []


def test_budget_run_out_names_what_was_not_checked_could_not_verify(drill):
    provider, ctx, target, env, resource = drill("integrity-budget", ", integrity: {budget: 0s}")
    ready = provider.wait_ready(ctx, target, resource, timeout=60)

    (budget,) = [f for f in ready.findings if f.code == "AMCHECK_BUDGET_EXCEEDED"]
    assert budget.could_not_verify and "7 relations were not checked" in budget.message
    assert "public.orders" in budget.message and "public.customers_email_key" in budget.message
    assert ready.details["integrity"]["amcheck"]["relations_checked"] == 0


def test_batches_start_with_the_largest_table_and_every_table_is_in_one():
    # pgbench's shape: one table holds nearly everything; the small ones ride in its batch (one pg_amcheck)
    pgbench = [Table("public", n, i, s) for i, (n, s) in enumerate([("accounts", 10**9), ("branches", 8192), ("history", 0), ("tellers", 16384)])]
    assert [[t.name for t in b] for b in _batches(pgbench)] == [["accounts", "tellers", "branches", "history"]]
    # many tables of mixed sizes: the largest first, at most BATCHES batches, each table exactly once
    many = [Table("s", f"t{i:03d}", i, (i * 7919) % 1000 * 1000) for i in range(100)]
    batches = _batches(many)
    assert 1 < len(batches) <= BATCHES and batches[0][0].size == max(t.size for t in many)
    assert sorted(t.oid for b in batches for t in b) == list(range(100))
    assert _batches([]) == []


def test_integrity_switched_off_is_said(drill):
    provider, ctx, target, env, resource = drill("integrity-off", ", integrity: {enabled: false}")
    ready = provider.wait_ready(ctx, target, resource, timeout=60)

    (off,) = [f for f in ready.findings if f.code.startswith(("AMCHECK", "INTEGRITY"))]
    assert off.code == "INTEGRITY_CHECKS_OFF" and off.severity == "warning"
    assert "amcheck" not in ready.details["integrity"]


@pytest.fixture
def icu_repo(tmp_path):
    dsn = create_source_db(ICU_SEED)
    repo = tmp_path / "backups" / "icu"
    take_backup(dsn, repo)
    yield repo
    drop_db(dsn)


def test_collation_recorded_at_another_version_names_indexes_and_reindex(drill, icu_repo):
    provider, ctx, target, env, resource = drill("integrity-collation", repo=icu_repo)
    with psycopg.connect(resource.endpoint["dsn"], autocommit=True) as conn:
        # What a restore from a host with another ICU looks like: the versions recorded differ.
        conn.execute("UPDATE pg_collation SET collversion = '0.0' WHERE collname = 'und-x-icu'")
        conn.execute("UPDATE pg_database SET datcollversion = '0.0' WHERE datname = current_database()")

    ready = provider.wait_ready(ctx, target, resource, timeout=60)

    found = {f.message.split(" was recorded")[0].split("collation ", 1)[1]: f for f in ready.findings
             if f.code == "COLLATION_VERSION_MISMATCH"}
    assert set(found) == {"pg_catalog.\"und-x-icu\"", f"the database's default collation ({resource.endpoint['database']})"}, ready.findings
    icu = found['pg_catalog."und-x-icu"'].message
    assert "1 indexes depend on it: public.names_by_icu" in icu
    assert 'REINDEX INDEX CONCURRENTLY public.names_by_icu; then ALTER COLLATION pg_catalog."und-x-icu" REFRESH VERSION;' in icu
    default = found[f"the database's default collation ({resource.endpoint['database']})"].message
    assert "public.customers_email_key" in default and "REFRESH COLLATION VERSION" in default
    assert "public.names_by_icu" not in default


# ------------------------------------------------------------------------------ physical restores

from tests.test_pitr import Stanza, needs_pgbackrest, pgbackrest_source, pitr_drill  # noqa: E402


def _physical_drill(drill_harness, stanza):
    validations = '  - {name: markers, type: sql, target: app, query: "SELECT count(*) FROM markers", expect: ">= 0"}\n'
    return drill_harness.run(pitr_drill(pgbackrest_source(stanza), validations=validations), providers={"postgres": PostgresProvider()})


@needs_pgbackrest
def test_physical_restore_of_a_cluster_without_checksums_is_a_warning_that_says_so(drill_harness, cluster_root):
    stanza = Stanza(cluster_root, checksums=False)
    try:
        stanza.backup()
        stanza.prod.markers(2)
        stanza.prod.archive()
        result = _physical_drill(drill_harness, stanza)
    finally:
        stanza.prod.stop()

    assert result.verdict == "PASSED", result.findings
    (off,) = [f for f in result.findings if f.code == "DATA_CHECKSUMS_OFF"]
    assert off.severity == "warning" and "rotted or torn page" in off.message
    pages = result.restored[0].details["integrity"]["page_checksums"]
    assert pages["enabled"] is False and pages["checked"] is False
    assert clusters_left(cluster_root) == []


@needs_pgbackrest
def test_damaged_page_in_an_offline_backup_is_page_checksum_failure_before_the_server_starts(drill_harness, cluster_root):
    stanza = Stanza(cluster_root)
    try:
        with psycopg.connect(stanza.prod.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO markers (at) SELECT clock_timestamp() FROM generate_series(1, 50)")
            path = stanza.prod.cluster.data / conn.execute("SELECT pg_relation_filepath('markers')").fetchone()[0]
        stanza.prod.cluster.stop("fast")  # an offline backup: pg_control says "shut down", pg_checksums can read it
        page = bytearray(path.read_bytes())
        page[PAGE - 200] ^= 0xFF  # one byte of a row, its page's checksum left as it was
        path.write_bytes(bytes(page))
        stanza.run("backup", "--type=full", "--no-online")
        result = _physical_drill(drill_harness, stanza)
    finally:
        stanza.prod.stop()

    assert result.verdict == "FAILED", result.findings
    (failed,) = [f for f in result.findings if f.code == "PAGE_CHECKSUM_FAILURE"]
    file = str(path.relative_to(stanza.prod.cluster.data))
    assert f"1 pages of the restored data directory fail their checksums: " in failed.message
    assert f"{file} block 0 (public.markers)" in failed.message, failed.message
    pages = result.restored[0].details["integrity"]["page_checksums"]
    assert pages["checked"] is True and pages["cluster_state"] == "shut down"
    # amcheck, reading the same page through the server, names the table and block too.
    corrupt = [f.message for f in result.findings if f.code == "AMCHECK_CORRUPTION"]
    assert any("heap table public.markers is corrupt (block 0)" in m for m in corrupt), corrupt
    assert result.restored[0].details["integrity"]["amcheck"]["corrupt"]["public.markers"]["blocks"] == [0]
    assert clusters_left(cluster_root) == []
