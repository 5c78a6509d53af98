"""The fingerprints of `drdrill dump`'s manifest, computed while pg_dump reads the same snapshot.

Each table's rows and content fingerprint (data.py's: the sum of a 64-bit hash of each row, by the
"columns" method where the column types allow it, else "text"), and,
for a table with a single-column integer primary key, the same per key range: about 1,000 ranges
[lo + n·width, lo + (n+1)·width). The numbers are those the drill recomputes on the restored table
(data.fingerprint, data.key_ranges); only how they are computed here is tuned for a dump running
beside them:

- **One pass per table**, a hash aggregate by key range; the table's count and fingerprint are the
  sums of its ranges'. The planner must be told (see PLANNER): it takes `(key - lo) / width` for as
  many groups as rows and would sort the whole table, on disk for a large one.
- **Several connections in the one snapshot** (`SET TRANSACTION SNAPSHOT`): a table larger than
  SPLIT_PAGES is read in parts of its blocks (`ctid` ranges: a TID range scan, PostgreSQL 14+), the
  parts spread over the connections, and the parts' counts and sums added up (a sum of row hashes
  is additive). The fingerprint ("record": 2.1 s of server CPU for 1 GiB of pgbench, "columns":
  ~1.4 s) costs about as much CPU per row as pg_dump's COPY does (1.6 s); in one backend it could
  finish after pg_dump on a busy machine, where each process gets an equal share of the CPU; in
  two it finishes first.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import psycopg
from psycopg import sql

from drdrill.localpg.data import UNHASHABLE, hash_columns, row_hash, table_ident

RANGES = 1000  # about this many key ranges per large table
RANGE_ROWS = 100  # …and no fewer rows than this per range on a small one
SPLIT_PAGES = 4096  # tables above 32 MiB are read in parts, one per connection


def _workers(value: str) -> int:
    """DRDRILL_DUMP_WORKERS: connections, the snapshot's own included (2; a value that is not a
    positive whole number means the default: the dump must not fail over a tuning knob)."""
    return int(value) if value.strip().isdigit() and int(value) > 0 else 2


WORKERS = _workers(os.environ.get("DRDRILL_DUMP_WORKERS", "2"))

# The snapshot's transactions plan their aggregates for a dump running beside them: a hash
# aggregate of ~1,000 groups (1 MB) where the planner would sort the table (740 MB written to disk
# for 1 GiB of pgbench: 15 s where the aggregate takes 3); no JIT (~0.3 s of compiling a table, that
# saves nothing here); no parallel workers (they would only take CPU from pg_dump).
PLANNER = ("SET LOCAL enable_sort = off", "SET LOCAL jit = off", "SET LOCAL max_parallel_workers_per_gather = 0")

_INT_PK = """
SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
WHERE i.indrelid = %s::regclass AND i.indisprimary AND i.indnkeyatts = 1 AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)"""
_PAGES = "SELECT c.relkind, pg_relation_size(c.oid) / current_setting('block_size')::int, c.reltuples FROM pg_class c WHERE c.oid = %s::regclass"


@dataclass
class TablePlan:
    """How one table is read: its hash method (data.row_hash's, with its `columns`), key ranges (key
    None: the whole table) and block parts."""

    table: str
    columns: Optional[list] = None
    method: str = "columns"
    pages: int = 0
    key: Optional[str] = None
    lo: int = 0
    width: int = 1
    parts: list[tuple[int, Optional[int]]] = field(default_factory=lambda: [(0, None)])


def plan_table(conn: psycopg.Connection, table: str, parts: int, tid_ranges: bool) -> TablePlan:
    """The key ranges (as before: ~1,000, at least RANGE_ROWS rows each) and block parts of `table`."""
    name = table_ident(table).as_string(conn)
    plan = TablePlan(table)
    plan.columns = hash_columns(conn, table, plan.method)
    kind, pages, estimate = conn.execute(_PAGES, (name,)).fetchone()
    plan.pages = int(pages)
    if tid_ranges and kind == "r" and pages > SPLIT_PAGES and parts > 1:
        step = -(-int(pages) // parts)
        plan.parts = [(b, b + step if b + step < pages else None) for b in range(0, int(pages), step)]
    key = conn.execute(_INT_PK, (name,)).fetchone()
    if key is None:
        return plan
    lo, hi = conn.execute(sql.SQL("SELECT min({k}), max({k}) FROM {t}").format(k=sql.Identifier(key[0]), t=table_ident(table))).fetchone()
    if lo is None:
        return plan
    rows = estimate if estimate >= 0 else int(hi) - int(lo) + 1
    if rows < 2 * RANGE_ROWS:
        return plan
    count = max(1, min(RANGES, int(rows) // RANGE_ROWS))
    plan.key, plan.lo, plan.width = key[0], int(lo), max(1, -(-(int(hi) - int(lo) + 1) // count))
    return plan


def part_query(plan: TablePlan, part: tuple[int, Optional[int]]) -> sql.Composable:
    """Rows and fingerprint sum of one block part of the table, by key range when it has them."""
    digest = row_hash(plan.method, plan.columns)
    where = sql.SQL("")
    if part != (0, None):
        first, end = part
        where = sql.SQL(" WHERE ctid >= {}::tid").format(sql.Literal(f"({first},0)"))
        if end is not None:
            where += sql.SQL(" AND ctid < {}::tid").format(sql.Literal(f"({end},0)"))
    if plan.key is None:
        return sql.SQL("SELECT 0, count(*), coalesce(sum({d}), 0)::text FROM {t} AS t{w}").format(d=digest, t=table_ident(plan.table), w=where)
    return sql.SQL("SELECT ({k} - {lo}) / {wd}, count(*), sum({d})::text FROM {t} AS t{w} GROUP BY 1").format(
        k=sql.Identifier(plan.key), lo=sql.Literal(plan.lo), wd=sql.Literal(plan.width), d=digest, t=table_ident(plan.table), w=where)


def run_part(conn: psycopg.Connection, plan: TablePlan, part: tuple[int, Optional[int]]) -> Optional[list[tuple[int, int, int]]]:
    """[(range, rows, sum)] of one part; None when a column type has no hash the method needs."""
    try:
        with conn.transaction():  # a savepoint: the snapshot's transaction survives the error
            return [(int(n), int(c), int(s)) for n, c, s in conn.execute(part_query(plan, part)).fetchall()]
    except UNHASHABLE:
        return None


def entry(plan: TablePlan, results: list[list[tuple[int, int, int]]]) -> dict:
    """The manifest's entry of a table from its parts' results (summed: the same numbers one pass gives)."""
    by_range: dict[int, list[int]] = {}
    for result in results:
        for n, c, s in result:
            acc = by_range.setdefault(n, [0, 0])
            acc[0] += c
            acc[1] += s
    rows, total = sum(v[0] for v in by_range.values()), sum(v[1] for v in by_range.values())
    out = {"rows": rows, "checksum": str(total), "method": plan.method}
    if plan.key is not None:
        out.update(key=plan.key, lo=plan.lo, width=plan.width, ranges={str(n): [c, str(s)] for n, (c, s) in sorted(by_range.items())})
    return out


def table_manifests(conn: psycopg.Connection, tables: list[str], open_worker: Optional[Callable[[], Optional[psycopg.Connection]]] = None,
                    method: str = "columns") -> dict[str, dict]:
    """Every table's manifest entry, computed in `conn`'s snapshot (an open REPEATABLE READ
    transaction that exported it) and in those of up to WORKERS - 1 more connections that
    `open_worker` opens in the same snapshot (None when it cannot: the work is shared by fewer).
    `method`: data.row_hash's, where the table's column types allow it, else "text" ("record"
    gives the manifests written before issue 26's "columns")."""
    for setting in PLANNER:
        conn.execute(setting)
    tid_ranges = conn.info.server_version >= 140000
    plans = [plan_table(conn, t, WORKERS, tid_ranges) for t in tables]
    for plan in plans:  # `method` where every column type has an extended hash, else "text"
        if method != plan.method:
            plan.method, plan.columns = method, hash_columns(conn, plan.table, method)
        if not _hashable(conn, plan):
            plan.method, plan.columns = "text", None
    units = sorted(((p, part) for p in plans for part in p.parts), key=lambda u: u[0].pages / len(u[0].parts), reverse=True)
    conns = [conn]
    if open_worker is not None and len(units) > 1:
        for _ in range(max(0, WORKERS - 1)):
            extra = open_worker()
            if extra is None:
                break
            conns.append(extra)
    results: dict[str, list] = {p.table: [] for p in plans}
    redo: set[str] = set()
    lock = threading.Lock()

    def work(c: psycopg.Connection) -> None:
        while True:
            with lock:
                if not units:
                    return
                plan, part = units.pop(0)
            got = run_part(c, plan, part)
            with lock:
                (redo.add(plan.table) if got is None else results[plan.table].append(got))

    try:
        with ThreadPoolExecutor(max_workers=len(conns)) as pool:
            for done in [pool.submit(work, c) for c in conns]:
                done.result()
    finally:
        for extra in conns[1:]:
            extra.close()
    for plan in plans:
        if plan.table in redo:  # the probe's row did not show it: the whole table again, as text
            plan.method, plan.columns, plan.parts = "text", None, [(0, None)]
            results[plan.table] = [run_part(conn, plan, (0, None)) or []]
    return {p.table: entry(p, results[p.table]) for p in plans}


def _hashable(conn: psycopg.Connection, plan: TablePlan) -> bool:
    """Whether plan.method can hash the table's rows: its first row, hashed (an error at once when a
    column type has no extended hash function, or, for a record's, before PostgreSQL 14)."""
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SELECT {} FROM {} AS t LIMIT 1").format(row_hash(plan.method, plan.columns), table_ident(plan.table))).fetchall()
        return True
    except UNHASHABLE:
        return False


def worker_connection(connect: Callable[[], psycopg.Connection], snapshot: str) -> Callable[[], Optional[psycopg.Connection]]:
    """Opens a connection in `snapshot` (while the exporting transaction is open), or None."""

    def open_one() -> Optional[psycopg.Connection]:
        try:
            conn = connect()
        except psycopg.Error:
            return None  # too many connections, say: the others share the work
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            for setting in PLANNER:
                conn.execute(setting)
            return conn
        except psycopg.Error:
            conn.close()
            return None

    return open_one
