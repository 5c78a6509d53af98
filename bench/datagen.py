"""Generate a benchmark database of a given size on the machine's PostgreSQL (127.0.0.1:5432).

Tables of different widths, as a real schema has: a narrow fact table, a medium one with text and
numerics, a wide one with long text and jsonb, and a few small ones. Every table has a primary key
(so a restore rebuilds indexes, as real restores do). Idempotent: an existing database of the
same name and scale is reused (`--force` rebuilds it).

    python -m bench.datagen --gb 1          # creates drdrill_bench_1g
    python -m bench.datagen --gb 1 --drop
"""

from __future__ import annotations

import argparse
import time

import psycopg

from bench.common import ADMIN_DSN

# rows per GiB of table data, measured on PostgreSQL 15 (about a third of the bytes each)
PER_GB = {"narrow": 6_600_000, "medium": 2_750_000, "wide": 300_000}

SCHEMA = """
CREATE TABLE narrow (id bigint PRIMARY KEY, a int NOT NULL, b int NOT NULL, c bigint NOT NULL);
CREATE TABLE medium (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2) NOT NULL,
                     status text NOT NULL, created_at timestamptz NOT NULL, note text);
CREATE TABLE wide (id bigint PRIMARY KEY, body text NOT NULL, attrs jsonb NOT NULL, created_at timestamptz NOT NULL);
CREATE TABLE small_lookup (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE small_config (key text PRIMARY KEY, value jsonb);
CREATE TABLE empty_table (id int PRIMARY KEY, x text);
"""


def dbname(gb: float) -> str:
    return f"drdrill_bench_{str(gb).replace('.', '_').rstrip('0').rstrip('_')}g"


def dsn(gb: float) -> str:
    return ADMIN_DSN.replace("dbname=postgres", f"dbname={dbname(gb)}")


def exists(gb: float) -> bool:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname(gb),)).fetchone() is not None


def size_bytes(gb: float) -> int:
    with psycopg.connect(dsn(gb)) as conn:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def table_bytes(gb: float) -> int:
    """Heap + TOAST bytes of the user tables (what a scan reads), excluding indexes."""
    with psycopg.connect(dsn(gb)) as conn:
        return int(conn.execute(
            "SELECT sum(pg_table_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname = 'public'"
        ).fetchone()[0])


def drop(gb: float) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname(gb)}" WITH (FORCE)')


def generate(gb: float, force: bool = False, log=print) -> str:
    if exists(gb) and not force:
        with psycopg.connect(dsn(gb)) as conn:
            done = conn.execute("SELECT obj_description('public.narrow'::regclass)").fetchone()[0]
        if done == "complete":
            return dsn(gb)
    drop(gb)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname(gb)}"')
    n = {k: int(v * gb) for k, v in PER_GB.items()}
    t0 = time.monotonic()
    with psycopg.connect(dsn(gb), autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute("INSERT INTO small_lookup SELECT g, 'name ' || g FROM generate_series(1, 1000) g")
        conn.execute("INSERT INTO small_config SELECT 'key' || g, jsonb_build_object('v', g, 'on', g % 2 = 0) FROM generate_series(1, 200) g")
        conn.execute(
            "INSERT INTO narrow SELECT g, (g * 7919) %% 100000, (g * 104729) %% 1000, g * 31 FROM generate_series(1::bigint, %s) g", (n["narrow"],)
        )
        log(f"narrow: {n['narrow']} rows ({time.monotonic() - t0:.0f}s)")
        conn.execute(
            """INSERT INTO medium SELECT g, 'customer-' || (g %% 50000), ((g * 7) %% 100000) / 100.0,
                   (ARRAY['new','paid','shipped','returned'])[1 + g %% 4],
                   timestamptz '2026-01-01' + make_interval(secs => g),
                   CASE WHEN g %% 3 = 0 THEN NULL ELSE md5(g::text) || md5((g + 1)::text) END
               FROM generate_series(1::bigint, %s) g""",
            (n["medium"],),
        )
        log(f"medium: {n['medium']} rows ({time.monotonic() - t0:.0f}s)")
        conn.execute(
            """INSERT INTO wide SELECT g,
                   repeat(md5(g::text) || md5((g * 3)::text) || md5((g * 7)::text) || md5((g * 11)::text), 7),
                   jsonb_build_object('g', g, 'tag', md5(g::text), 'n', g %% 97, 'list', jsonb_build_array(g, g + 1, g + 2)),
                   timestamptz '2026-01-01' + make_interval(secs => g)
               FROM generate_series(1::bigint, %s) g""",
            (n["wide"],),
        )
        log(f"wide: {n['wide']} rows ({time.monotonic() - t0:.0f}s)")
        conn.execute("VACUUM (ANALYZE)")
        conn.execute("COMMENT ON TABLE narrow IS 'complete'")
    log(f"generated {dbname(gb)}: {size_bytes(gb) / 2**30:.2f} GiB on disk, {table_bytes(gb) / 2**30:.2f} GiB of tables, {time.monotonic() - t0:.0f}s")
    return dsn(gb)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--drop", action="store_true")
    a = ap.parse_args()
    if a.drop:
        drop(a.gb)
        print(f"dropped {dbname(a.gb)}")
        return
    print(generate(a.gb, a.force))


if __name__ == "__main__":
    main()
