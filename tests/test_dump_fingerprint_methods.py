"""The "columns" fingerprint method (issue 26: `drdrill dump`'s cost) against the restored side, and
the manifests written before it ("record", "text", no method) still verified by their own method."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from drdrill.localpg.data import differing_ranges, fingerprint, key_ranges
from drdrill.providers.postgres import dumpfingerprints as fp
from drdrill.providers.postgres.provider import PostgresProvider
from tests.pg_fixtures import clusters_left, cluster_root, create_source_db, drop_db  # noqa: F401

DRDRILL = str(Path(sys.executable).parent / "drdrill")


@pytest.fixture
def source():
    dsn = create_source_db()
    yield dsn
    drop_db(dsn)


def in_snapshot(dsn: str, tables: list[str], method: str = "columns") -> dict:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        got = fp.table_manifests(conn, tables, method=method)
        conn.execute("ROLLBACK")
    return got


KINDS = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE kinds (id int PRIMARY KEY, gone int, small int2, big int8, n numeric, r float8, t text, v varchar(10),
                    c char(5), at timestamptz, d date, u uuid, j jsonb, tags text[], m mood, b bytea, flag bool);
INSERT INTO kinds SELECT g, g, g % 100, g::int8 * 1000000007, g / 7.0, g / 3.0, 'text ' || g, 'v' || g, 'c' || (g % 10),
       '2026-01-01'::timestamptz + g * interval '1 hour', '2026-01-01'::date + g, md5(g::text)::uuid, jsonb_build_object('g', g),
       ARRAY['a' || g, NULL], (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::mood, decode(md5(g::text), 'hex'), g % 2 = 0
FROM generate_series(1, 600) g;
UPDATE kinds SET n = NULL, t = NULL, m = NULL WHERE id % 7 = 0;  -- rows with NULLs take the fold
UPDATE kinds SET small = NULL, big = NULL, r = NULL, v = NULL, c = NULL, at = NULL, d = NULL, u = NULL, j = NULL,
                 tags = NULL, b = NULL, flag = NULL WHERE id = 11;
ALTER TABLE kinds DROP COLUMN gone;  -- positions, not attnums: the restored table has no hole
"""


def test_columns_method_dump_and_restored_side_agree_on_every_kind_of_column(source):
    """Built-in types hashed by their own function, the others (timestamptz, date, arrays, enums,
    bytea, bool) as one-column records, NULLs in the fold: the dump's numbers, whole and per key
    range, are those data.py computes on a copy laid out afresh, as a restore lays it out."""
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(KINDS)
        conn.execute("CREATE TABLE copy (LIKE kinds)")
        conn.execute("INSERT INTO copy SELECT * FROM kinds ORDER BY id DESC")  # other blocks, other order
        conn.execute("ALTER TABLE copy ADD PRIMARY KEY (id)")
    got = in_snapshot(source, ["public.kinds"])["public.kinds"]
    assert (got["method"], got["rows"], got["key"], got["lo"], got["width"], len(got["ranges"])) == ("columns", 600, "id", 1, 100, 6)
    with psycopg.connect(source, autocommit=True) as conn:
        for table in ("public.kinds", "public.copy"):
            again = fingerprint(conn, table, "columns")
            assert (again["rows"], again["checksum"]) == (got["rows"], got["checksum"]), table
            assert key_ranges(conn, table, "id", got["lo"], got["width"], "columns") == got["ranges"], table
        assert fingerprint(conn, "public.kinds")["method"] == "columns"  # what `drdrill backup` now records too
        record = fingerprint(conn, "public.kinds", "record")
        assert record["checksum"] != got["checksum"]  # another method, another number: never compared across


CHANGES = {  # each changes one row (or two in one range) of `t` and keeps the row count
    "a value": "UPDATE t SET a = a + 1 WHERE id = 150",
    "a value to NULL": "UPDATE t SET note = NULL WHERE id = 250",
    "NULL to a value": "UPDATE t SET note = 'n' WHERE id = 347",  # note is NULL where id % 7 = 4
    "two columns swapped in a row": "UPDATE t SET a = b, b = a WHERE id = 450",
    "one column swapped between two rows": "UPDATE t SET a = CASE id WHEN 550 THEN 551 ELSE 550 END WHERE id IN (550, 551)",
    "a row replaced by a copy of another": "UPDATE t SET a = 652, b = 0, note = 'note 652' WHERE id = 651",
}


@pytest.mark.parametrize("method", ["columns", "record"])
def test_each_change_of_a_row_is_found_and_its_key_range_named(source, method):
    """The new method and the one before it: a changed row changes its range's fingerprint and the
    table's, and the range is named. "record" is blind to one change: hash_record_extended is
    linear in its columns' hashes (h = 31·h + h_column), so a sum of rows is a sum per column and a
    column's values swapped between rows leave it unchanged; "columns" chains the column hashes
    through the seed, not linear, and finds it."""
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, a int NOT NULL, b int, note text)")
        conn.execute("INSERT INTO t SELECT g, g, g * 2, CASE WHEN g % 7 <> 4 THEN 'note ' || g END FROM generate_series(1, 1000) g")
        conn.execute("UPDATE t SET b = 0 WHERE id = 652")
    expected = in_snapshot(source, ["public.t"], method)["public.t"]
    assert expected["method"] == method and expected["width"] == 100
    with psycopg.connect(source) as conn:  # each change rolled back before the next
        for what, change in CHANGES.items():
            conn.execute(change)
            got = fingerprint(conn, "public.t", method)
            if method == "record" and what == "one column swapped between two rows":
                assert (got["rows"], got["checksum"]) == (expected["rows"], expected["checksum"])  # its blind spot
                conn.rollback()
                continue
            first = int(change.split("WHERE id")[1].split()[-1].strip("(,)")) // 100 * 100 + 1
            assert got["rows"] == expected["rows"] and got["checksum"] != expected["checksum"], what
            assert differing_ranges(conn, "public.t", expected) == [f"id {first}..{first + 99}: 100 rows, content differs"], what
            conn.rollback()
        assert fingerprint(conn, "public.t", method)["checksum"] == expected["checksum"]


CHECKS = """  - {type: checksum, target: shop, name: tables-match, tables: [customers, orders, audit.events]}
  - {type: checksum, target: shop, name: unknown-method, tables: [ghost]}"""


def test_manifests_of_every_earlier_method_still_verify_and_an_unknown_one_cannot(drill_harness, source, tmp_path, cluster_root):
    """One manifest holding a table of each method: "columns" (drdrill dump's now), "record" (its
    manifests before issue 26), no method (the first ones, hashed as text): each is recomputed by
    its own method and matches; a method this drdrill does not know is COULD NOT VERIFY, not a pass."""
    from tests.test_dump_manifest import drill

    out = tmp_path / "backups" / "shop.dump"
    out.parent.mkdir()
    proc = subprocess.run([DRDRILL, "dump", "-Fc", "-f", str(out), "-d", source], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    side = out.with_name("shop.dump.manifest.json")
    manifest = json.loads(side.read_text())
    assert {t["method"] for t in manifest["tables"].values()} == {"columns"}
    manifest["tables"]["public.orders"] = in_snapshot(source, ["public.orders"], "record")["public.orders"]
    text = in_snapshot(source, ["public.customers"], "text")["public.customers"]
    del text["method"]
    manifest["tables"]["public.customers"] = text
    manifest["tables"]["public.ghost"] = {"rows": 1, "checksum": "1", "method": "columns9"}
    side.write_text(json.dumps(manifest))
    assert manifest["archive_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()

    text = drill(f"{out.parent}/*.dump").split("validations:\n")[0] + "validations:\n" + CHECKS + "\n"
    result = drill_harness.run(text, providers={"postgres": PostgresProvider()})

    outcomes = {v.name: (v.outcome, v.detail) for v in result.validations}
    assert outcomes["tables-match"] == ("PASSED", "3/3 tables match the backup (2250 rows)"), outcomes
    assert outcomes["unknown-method"][0] == "COULD_NOT_VERIFY", outcomes
    assert "public.ghost by a method this drdrill does not know (columns9; it knows columns, record, text)" in outcomes["unknown-method"][1]
    assert clusters_left(cluster_root) == []


def test_a_table_of_1500_columns_is_hashed_by_columns(source):
    """The chain of column hashes is written flat: 1,500 nested calls, one statement."""
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("CREATE TABLE wide (" + ", ".join(f"c{i} int" for i in range(1500)) + ")")
        conn.execute("INSERT INTO wide (c0, c1499) VALUES (1, 2), (3, NULL)")
    got = in_snapshot(source, ["public.wide"])["public.wide"]
    with psycopg.connect(source, autocommit=True) as conn:
        again = fingerprint(conn, "public.wide", "columns")
    assert got["method"] == again["method"] == "columns" and (got["rows"], got["checksum"]) == (again["rows"], again["checksum"])


def test_the_dump_command_loads_no_pydantic_and_no_drill_format():
    """`drdrill dump`'s modules load while pg_dump runs, on the CPU it shares: its own only (the
    providers package no longer imports base and spec with it)."""
    code = ("import sys, app.entry, drdrill.core.dumpstart, drdrill.providers.postgres.dumpmanifest; "
            "print(sorted(m for m in ('pydantic', 'drdrill.providers.base', 'drdrill.providers.spec', 'drdrill.core.models', "
            "'drdrill.localpg.cluster', 'temporalio') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
