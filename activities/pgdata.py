"""PostgreSQL data fingerprints shared by backups (the manifest) and validations (the check).

A table's fingerprint is its row count and an order-independent content hash: the sum of a 64-bit
hash of each row's text form. It is computed the same way at backup time (inside the exported
snapshot) and after the restore, so equal fingerprints mean the same rows came back.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Optional

import psycopg
from psycopg import sql

LIST_TABLES = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'
  AND n.nspname NOT LIKE 'pg_temp%%'
ORDER BY 1, 2
"""


def list_tables(conn: psycopg.Connection) -> list[str]:
    return [f"{s}.{t}" for s, t in conn.execute(LIST_TABLES).fetchall()]


def table_ident(name: str) -> sql.Composable:
    schema, _, table = name.partition(".")
    if not table:
        schema, table = "public", schema
    return sql.Identifier(schema, table)


def fingerprint_query(name: str) -> sql.Composable:
    return sql.SQL("SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text FROM {} AS t").format(
        table_ident(name)
    )


def fingerprint(conn: psycopg.Connection, name: str) -> dict:
    rows, digest = conn.execute(fingerprint_query(name)).fetchone()
    return {"rows": int(rows), "checksum": str(digest)}


def fingerprints_parallel(
    connect: Callable[[], psycopg.Connection],
    tables: Iterable[str],
    workers: int = 4,
    on_table: Optional[Callable[[str], None]] = None,
) -> dict[str, dict]:
    """Fingerprint tables concurrently, one connection per worker (reads are independent)."""
    tables = list(tables)
    out: dict[str, dict] = {}

    def work(chunk: list[str]) -> dict[str, dict]:
        res = {}
        with connect() as conn:
            for t in chunk:
                res[t] = fingerprint(conn, t)
                if on_table:
                    on_table(t)
        return res

    n = max(1, min(workers, len(tables)))
    chunks = [tables[i::n] for i in range(n)]
    with ThreadPoolExecutor(max_workers=n) as pool:
        for part in pool.map(work, chunks):
            out.update(part)
    return {t: out[t] for t in tables}
