"""`drdrill dump`: the cron job's pg_dump with a manifest beside its file, and drills of `path:`
sources that compare the restore with it. The real `drdrill` command, real pg_dump, real drills."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from drdrill.evidence.chain import evidence_document
from drdrill.evidence.render import render_drill_html
from drdrill.providers.postgres.provider import PostgresProvider
from tests.test_reports import page_text
from tests.pg_fixtures import clusters_left, cluster_root, create_source_db, drop_db  # noqa: F401

DRDRILL = str(Path(sys.executable).parent / "drdrill")
CHECKS = """  - {type: checksum, target: shop, name: tables-match}
  - {type: row_count, target: shop, table: orders, equals_manifest: true}"""


def drill(glob: str) -> str:
    return f"""
version: 1
name: dump-manifest
objectives: {{rto: 15m, rpo: 30d}}
max_duration: 10m
targets:
  - name: shop
    provider: postgres
    source: {{path: '{glob}'}}
    restore: {{jobs: 2, timeout: 5m}}
validations:
{CHECKS}
"""


@pytest.fixture
def source():
    dsn = create_source_db()
    yield dsn
    drop_db(dsn)


def dump(*args: str, stdout=None) -> subprocess.CompletedProcess:
    return subprocess.run([DRDRILL, "dump", *args], stdout=stdout if stdout is not None else subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)


def test_drdrill_dump_writes_the_dump_and_a_manifest_the_drill_checks(drill_harness, source, tmp_path, cluster_root):
    out = tmp_path / "backups" / "shop.dump"
    out.parent.mkdir()
    proc = dump("-Fc", "-f", str(out), "-d", source)

    assert proc.returncode == 0, proc.stderr
    assert subprocess.run(["pg_restore", "-l", str(out)], capture_output=True).returncode == 0  # pg_dump's own archive
    manifest = json.loads(out.with_name("shop.dump.manifest.json").read_text())
    assert manifest["archive_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    orders = manifest["tables"]["public.orders"]
    assert orders["rows"] == 2000 and (orders["key"], orders["lo"], orders["width"], len(orders["ranges"])) == ("id", 1, 100, 20)
    assert set(manifest["tables"]) == {"public.customers", "public.orders", "audit.events"}

    result = drill_harness.run(drill(f"{out.parent}/*.dump"), providers={"postgres": PostgresProvider()})

    assert result.verdict == "PASSED", (result.findings, result.validations)
    assert [f.code for f in result.findings] == []  # no ARTEFACT_UNVERIFIED: the manifest says what it holds
    assert [v.outcome for v in result.validations] == ["PASSED", "PASSED"]
    assert result.validations[0].detail.startswith("3/3 tables match the backup")
    # The report's Integrity section: amcheck, collations, pages, the manifest comparisons.
    text = page_text(render_drill_html(evidence_document(result)))
    section = text[text.index("Integrity"):text.index("Findings")]
    assert "7 of 7 relations checked (3 tables, 4 B-tree indexes) with pg_amcheck" in section
    assert "0 not checked; corrupt: none" in section and "all recorded versions match this host's" in section
    assert "tables-match: PASSED; row_count:shop: PASSED" in section, section
    assert "not applicable: a logical restore writes new pages" in section
    assert clusters_left(cluster_root) == []


def test_plain_dump_to_redirected_stdout_gets_its_manifest_too(source, tmp_path):
    with psycopg.connect(source, autocommit=True) as conn:  # a partitioned table: pg_dump dumps its partitions' rows
        conn.execute("CREATE TABLE readings (at date NOT NULL, v int) PARTITION BY RANGE (at)")
        conn.execute("CREATE TABLE readings_2026 PARTITION OF readings FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
        conn.execute("INSERT INTO readings SELECT '2026-03-01'::date + g, g FROM generate_series(1, 30) g")
    out = tmp_path / "shop.sql"
    with open(out, "w") as fh:
        proc = dump(source, stdout=fh)

    assert proc.returncode == 0, proc.stderr
    assert "-- PostgreSQL database dump complete" in out.read_text()[-300:]
    manifest = json.loads((tmp_path / "shop.sql.manifest.json").read_text())
    assert manifest["format"] == "plain" and manifest["tables"]["public.customers"]["rows"] == 200
    assert manifest["tables"]["public.readings"]["rows"] == 30  # as list_tables and the checksum check name it


def test_failed_checksum_names_the_key_ranges_that_differ_with_their_rows(drill_harness, source, tmp_path, cluster_root):
    """A dump that lost rows and changed one, beside the manifest of what was there: the bytes are
    the file's own (its sha256 matches), only the comparison of the restored rows can tell."""
    first = tmp_path / "first.dump"
    assert dump("-Fc", "-f", str(first), "-d", source).returncode == 0
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("DELETE FROM orders WHERE id BETWEEN 101 AND 150")
        conn.execute("UPDATE orders SET amount = amount + 1 WHERE id = 1500")
    out = tmp_path / "backups" / "shop.dump"
    out.parent.mkdir()
    subprocess.run(["pg_dump", "-Fc", "-f", str(out), "-d", source], check=True)
    manifest = json.loads((tmp_path / "first.dump.manifest.json").read_text())
    manifest.update(archive="shop.dump", archive_sha256=hashlib.sha256(out.read_bytes()).hexdigest(), archive_size=out.stat().st_size)
    out.with_name("shop.dump.manifest.json").write_text(json.dumps(manifest))

    result = drill_harness.run(drill(f"{out.parent}/*.dump"), providers={"postgres": PostgresProvider()})

    assert result.verdict == "FAILED"
    checksum = result.validations[0]
    assert checksum.outcome == "FAILED"
    assert checksum.detail == (
        "2/3 tables match; public.orders: 1950 rows, backup had 2000 (key ranges that differ: "
        "id 101..200: 50 rows, backup had 100; id 1401..1500: 100 rows, content differs)"
    ), checksum.detail
    assert "orders: 1950 rows, manifest 2000" in result.validations[1].detail
    assert clusters_left(cluster_root) == []


from tests.moto_server import moto_endpoint  # noqa: E402,F401
from tests.test_dump_sources import _s3, bucket, s3_source  # noqa: E402,F401


def test_an_s3_dump_with_its_manifest_beside_it_is_checked_against_it(drill_harness, source, bucket, moto_endpoint, tmp_path, cluster_root):
    out = tmp_path / "shop.dump"
    assert dump("-Fc", "-f", str(out), "-d", source).returncode == 0
    s3 = _s3(moto_endpoint)
    s3.put_object(Bucket=bucket, Key="shop/shop.dump", Body=out.read_bytes())
    s3.put_object(Bucket=bucket, Key="shop/shop.dump.manifest.json", Body=out.with_name("shop.dump.manifest.json").read_bytes())

    text = drill("unused").replace("{path: 'unused'}", s3_source(moto_endpoint, bucket))
    result = drill_harness.run(text, providers={"postgres": PostgresProvider()})

    assert result.verdict == "PASSED", (result.findings, result.validations)
    assert [f.code for f in result.findings] == []  # the manifest's sha256 was the expectation, checked while streaming
    assert result.restored[0].details["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert result.recovery_points[0].metadata["manifest_from"] == f"s3://{bucket}/shop/shop.dump.manifest.json"
    assert [v.outcome for v in result.validations] == ["PASSED", "PASSED"]
    assert clusters_left(cluster_root) == []


def test_what_drdrill_dump_cannot_prove_it_says_and_pg_dump_still_runs(source, tmp_path):
    refused = dump("--snapshot=00000003-1", "-f", str(tmp_path / "x.dump"), "-d", source)
    assert refused.returncode == 2 and "drdrill dump exports its own snapshot: remove --snapshot" in refused.stderr
    assert not (tmp_path / "x.dump").exists()

    piped = subprocess.run(f"{DRDRILL} dump -d '{source}' | gzip > {tmp_path / 'shop.sql.gz'}", shell=True, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and "no manifest: the dump goes to a pipe, not a file (use -f FILE)" in piped.stderr
    assert (tmp_path / "shop.sql.gz").stat().st_size > 0 and list(tmp_path.glob("*.manifest.json")) == []

    stale = tmp_path / "shop.dump.manifest.json"
    stale.write_text("{}")
    failed = dump("-Fc", "-f", str(tmp_path / "shop.dump"), "-d", source, "--table=no_such_table")
    assert failed.returncode == 1 and "no matching tables were found" in failed.stderr  # pg_dump's own code and words
    assert not stale.exists()  # a manifest never describes another dump than the one beside it


def test_key_ranges_are_hash_aggregates_over_parts_of_the_table_in_one_snapshot(source):
    """The planner takes `(id - lo) / width` for as many groups as rows and would sort the whole
    table (on disk, for a large one); drdrill dump makes it a hash aggregate, over parts of the
    table's blocks read by two connections in the one snapshot, whose sums are the table's."""
    from drdrill.localpg.data import fingerprint
    from drdrill.providers.postgres import dumpfingerprints as fp

    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("CREATE TABLE big (id bigint PRIMARY KEY, note text)")
        conn.execute("INSERT INTO big SELECT g, repeat('n', 200) || g FROM generate_series(1, 300000) g")
        conn.execute("ANALYZE big")
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        conn.execute("SET LOCAL work_mem = '64kB'")  # the planner's trap of a 1 GiB table, at 300,000 rows
        plan = fp.plan_table(conn, "public.big", 2, True)
        trap = explain(conn, fp.part_query(plan, (0, None)))
        for setting in fp.PLANNER:
            conn.execute(setting)
        tuned = explain(conn, fp.part_query(plan, plan.parts[0]))
        with psycopg.connect(source, autocommit=True) as other:  # rows the snapshot must not see
            other.execute("INSERT INTO big VALUES (300001, 'later')")
        opened = []
        workers = fp.worker_connection(lambda: opened.append(psycopg.connect(source, autocommit=True)) or opened[-1], snapshot)
        manifest = fp.table_manifests(conn, ["public.big", "public.orders"], workers)["public.big"]
        conn.execute("ROLLBACK")
        conn.execute("DELETE FROM big WHERE id = 300001")
        again = fingerprint(conn, "public.big", manifest["method"])  # as the drill recomputes it
        whole = (again["rows"], again["checksum"])

    assert "Sort" in trap, trap
    assert "HashAggregate" in tuned and "Tid Range Scan" in tuned and "Sort" not in tuned and "Gather" not in tuned, tuned
    assert len(plan.parts) == 2 and plan.parts[0][0] == 0 and plan.parts[1][1] is None  # every block, once
    assert len(opened) == 1 and all(c.closed for c in opened)
    assert manifest["method"] == "columns"
    assert (manifest["rows"], manifest["checksum"]) == (whole[0], whole[1])  # the table's = the sum of its parts' ranges'
    assert (manifest["width"], len(manifest["ranges"]), list(manifest["ranges"])[:3]) == (300, 1000, ["0", "1", "2"])


def explain(conn, query) -> str:
    from psycopg import sql

    return "\n".join(r[0] for r in conn.execute(sql.SQL("EXPLAIN ") + query).fetchall())


def test_a_plain_dump_is_read_once_in_blocks_with_table_markers_cut_by_a_block_end(tmp_path):
    """read_plain finds each TABLE DATA marker wherever the 4 MiB blocks cut it, and the sha256 and
    size are the file's own (gzip: the compressed file's)."""
    from drdrill.providers.postgres.dumpmanifest import read_plain

    marker = b"-- Data for Name: %s; Type: TABLE DATA; Schema: public; Owner: postgres\n"
    block = 1 << 22
    body = b"-- PostgreSQL database dump\n" + marker % b"first" + b"x" * (block - 200) + b"\n"
    body += b"\n" * (block - len(body) - 10) + marker % b"cut" + b"1\t2\n" * 1000 + marker % b"last"  # no newline at the end
    plain = tmp_path / "shop.sql"
    plain.write_bytes(body)
    packed = tmp_path / "shop.sql.gz"
    import gzip

    packed.write_bytes(gzip.compress(body))

    assert read_plain(plain) == (["public.first", "public.cut", "public.last"], hashlib.sha256(body).hexdigest(), len(body))
    assert read_plain(packed) == (["public.first", "public.cut", "public.last"], hashlib.sha256(packed.read_bytes()).hexdigest(), packed.stat().st_size)


def test_a_column_type_without_an_extended_hash_is_fingerprinted_as_text_as_the_drill_recomputes_it(source):
    """`point` has no hash function: the table is fingerprinted with the "text" method, whole and
    per key range, giving the numbers data.py recomputes on the restored table."""
    from drdrill.providers.postgres import dumpfingerprints as fp
    from drdrill.localpg.data import fingerprint, key_ranges

    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("CREATE TABLE shapes (id int PRIMARY KEY, at point)")
        conn.execute("INSERT INTO shapes SELECT g, point(g, -g) FROM generate_series(1, 500) g")
        conn.execute("CREATE TABLE marks (at point)")
        conn.execute("INSERT INTO marks SELECT point(g, g) FROM generate_series(1, 30) g")
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        got = fp.table_manifests(conn, ["public.shapes", "public.marks", "public.orders"])
        conn.execute("ROLLBACK")
        shapes = got["public.shapes"]
        assert (shapes["method"], got["public.marks"]["method"], got["public.orders"]["method"]) == ("text", "text", "columns")
        assert shapes["ranges"] == key_ranges(conn, "public.shapes", "id", shapes["lo"], shapes["width"], "text")
        for table in ("public.shapes", "public.marks", "public.orders"):
            again = fingerprint(conn, table, got[table]["method"])
            assert (got[table]["rows"], got[table]["checksum"]) == (again["rows"], again["checksum"]), table
