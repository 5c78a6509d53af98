"""PostgreSQL data fingerprints shared by backups (the manifest) and validations (the check).

A table's fingerprint is its row count and an order-independent content hash: the sum of a 64-bit
hash of each row. It is computed the same way at backup time (inside the exported snapshot) and
after the restore, so equal fingerprints mean the same rows came back.

Two hash methods, recorded per table in the manifest (`"method"`), and the check always recomputes
with the method the manifest names:
- "record": sum(hash_record_extended(row, 0)), each column hashed in its binary form by its type's
  extended hash function (PostgreSQL 14+). About 2.5x cheaper than "text" (no output functions),
  and independent of session settings such as TimeZone and DateStyle. Values a type's hash treats
  as equal hash alike (numeric 1.0 and 1.00, +0.0 and -0.0), which a restore does not change anyway.
- "text": sum(hashtextextended(row::text, 0)): for tables with a column type that has no extended
  hash function (json, xml, point, ...), and manifests written before "record" existed (no "method" key).
- "columns" (the default since issue 26): the same per-column hashes as "record" (each type's
  extended hash function), without building a record per row: each column's hash seeds the next
  one's, `hashbpcharextended(filler, hashint4extended(abalance, hashint4extended(bid, hashint4extended(aid, 0))))`,
  so a row's hash depends on every column in its place, as hash_record_extended's does. A NULL
  makes that chain NULL: such a row is hashed instead by the fold below (each column hashed with
  its position as seed, NULL as a constant of that position, XORed and mixed once more). A type
  outside COLUMN_HASHES is hashed as a one-column record (PostgreSQL 14+). ~1.4x cheaper than
  "record" (bench/RESULTS.md §15), with the same per-type hash functions (values their type's hash
  treats as equal hash alike, as above), and stronger across rows: "record"'s row hash is linear
  in its columns' hashes (h = 31·h + h_column), so its sum over rows is a sum per column and a
  column's values swapped between two rows go unseen; a chain through the seeds is not linear.
"""

from __future__ import annotations

import threading
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


METHODS = ("columns", "record", "text")
UNHASHABLE = (psycopg.errors.UndefinedFunction, psycopg.errors.FeatureNotSupported, psycopg.errors.StatementTooComplex)

COLUMNS = "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
# The columns with their type's name when it is a built-in type ('' otherwise: hashed as a record).
TYPED_COLUMNS = """
SELECT a.attname, CASE WHEN t.typnamespace = 'pg_catalog'::regnamespace THEN t.typname ELSE '' END
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"""

# The "columns" method's hash function of each built-in type whose default hash operator class's
# extended function (PostgreSQL 11+) takes exactly that type (varchar: text's, as PostgreSQL's own
# hash index does). Part of the method's definition, so never changed: another map is another method.
COLUMN_HASHES = {
    "int2": "hashint2extended", "int4": "hashint4extended", "int8": "hashint8extended", "oid": "hashoidextended",
    "text": "hashtextextended", "varchar": "hashtextextended", "bpchar": "hashbpcharextended", "name": "hashnameextended",
    "char": "hashcharextended", "float4": "hashfloat4extended", "float8": "hashfloat8extended",
    "numeric": "hash_numeric_extended", "uuid": "uuid_hash_extended", "timestamp": "timestamp_hash_extended",
    "time": "time_hash_extended", "timetz": "timetz_hash_extended", "interval": "interval_hash_extended",
    "jsonb": "jsonb_hash_extended", "inet": "hashinetextended", "macaddr": "hashmacaddrextended",
    "macaddr8": "hashmacaddr8extended", "pg_lsn": "pg_lsn_hash_extended",
}
_NULL_MARK = 0x2545F4914F6CDD1D  # a NULL in the fold: this constant XOR the column's position


def _column_hash(column: str, typ: str) -> sql.Composable:
    """The call hashing `column`, up to its seed argument (the caller closes it)."""
    fn = COLUMN_HASHES.get(typ)
    if fn is None:
        return sql.SQL("pg_catalog.hash_record_extended(ROW({}), ").format(sql.Identifier(column))
    return sql.SQL("pg_catalog.{}({}, ").format(sql.SQL(fn), sql.Identifier(column))


def row_hash(method: str, columns: Optional[list] = None) -> sql.Composable:
    """One row's 64-bit hash by `method` ("columns": `columns` are (name, type) pairs of TYPED_COLUMNS;
    "record": column names)."""
    if method == "text":
        return sql.SQL("hashtextextended(t::text, 0)")
    if method == "record":
        # ROW(c1, c2, ...) hashes exactly as the whole-row value `t` does (same columns, same order,
        # dropped ones skipped), but costs about half: no copy of every tuple into a composite datum.
        row = sql.SQL("ROW({})").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns)) if columns else sql.SQL("t")
        return sql.SQL("hash_record_extended({}, 0)").format(row)
    if method != "columns":
        raise ValueError(f"unknown fingerprint method {method!r}")
    if not columns:
        return sql.SQL("0::int8")  # a table of no columns: its rows are counted, all alike
    # Flat, not nested Composables: a table may have 1,600 columns.
    chain = sql.Composed([_column_hash(c, t) for c, t in reversed(columns)] + [sql.SQL("0" + ")" * len(columns))])
    fold = []
    for position, (column, typ) in enumerate(columns, 1):
        null = _NULL_MARK ^ position
        null = null - (1 << 64) if null >= 1 << 63 else null
        fold.append(sql.SQL("coalesce({}{}), {})").format(_column_hash(column, typ), sql.Literal(position), sql.Literal(null)))
    return sql.SQL("coalesce({}, pg_catalog.hashint8extended({}, 1))").format(chain, sql.SQL(" # ").join(fold))


def fingerprint_query(name: str, method: str = "text", columns: Optional[list] = None) -> sql.Composable:
    digest = row_hash(method, columns)
    return sql.SQL("SELECT count(*), coalesce(sum({}), 0)::text FROM {} AS t").format(digest, table_ident(name))


def _columns(conn: psycopg.Connection, name: str) -> list[str]:
    return [r[0] for r in conn.execute(COLUMNS, (table_ident(name).as_string(conn),)).fetchall()]


def typed_columns(conn: psycopg.Connection, name: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in conn.execute(TYPED_COLUMNS, (table_ident(name).as_string(conn),)).fetchall()]


def hash_columns(conn: psycopg.Connection, name: str, method: str) -> Optional[list]:
    """What row_hash needs of `name`'s columns for `method`."""
    return typed_columns(conn, name) if method == "columns" else _columns(conn, name) if method == "record" else None


def fingerprint(conn: psycopg.Connection, name: str, method: Optional[str] = None) -> dict:
    """Row count and content hash of one table. `method` None: "columns" where the table's column
    types allow it, else "text" (tried inside a savepoint, so a snapshot transaction survives)."""
    if method is None:
        try:
            with conn.transaction():
                rows, digest = conn.execute(fingerprint_query(name, "columns", typed_columns(conn, name))).fetchone()
            return {"rows": int(rows), "checksum": str(digest), "method": "columns"}
        except UNHASHABLE:
            method = "text"  # a column type without an extended hash function, or a server before 14
    rows, digest = conn.execute(fingerprint_query(name, method, hash_columns(conn, name, method))).fetchone()
    return {"rows": int(rows), "checksum": str(digest), "method": method}


def fingerprints_parallel(
    connect: Callable[[], psycopg.Connection],
    tables: Iterable[str],
    workers: int = 4,
    on_table: Optional[Callable[[str], None]] = None,
    methods: Optional[dict[str, Optional[str]]] = None,
) -> dict[str, dict]:
    """Fingerprint tables concurrently, one connection per worker (reads are independent).

    Workers take the next table from a shared queue, so one large table does not leave the other
    connections idle behind a fixed split. `methods` maps a table to the hash method to use (the
    manifest's); a table not in it gets the best method its columns allow.
    """
    tables = list(tables)
    out: dict[str, dict] = {}
    queue = list(reversed(tables))
    lock = threading.Lock()

    def work() -> dict[str, dict]:
        res = {}
        with connect() as conn:
            while True:
                with lock:
                    if not queue:
                        break
                    t = queue.pop()
                res[t] = fingerprint(conn, t, (methods or {}).get(t))
                if on_table:
                    on_table(t)
        return res

    n = max(1, min(workers, len(tables)))
    with ThreadPoolExecutor(max_workers=n) as pool:
        for part in pool.map(lambda _: work(), range(n)):
            out.update(part)
    return {t: out[t] for t in tables}


def already_restored(admin_dsn: str, dbname: str, point_id: str) -> bool:
    """True when `dbname` already holds `point_id` restored (its comment, set by mark_restored: a
    retried restore resumes); else the database is created afresh, an earlier attempt's dropped."""
    ident = sql.Identifier(dbname)
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        done = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if done and done[0] == f"drdrill restored {point_id}":
            return True
        if done:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(ident))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(ident))
    return False


def mark_restored(conn: psycopg.Connection, dbname: str, point_id: str) -> list[str]:
    """The restored database's tables, after marking it as restored from `point_id` (the comment a
    retried restore resumes from)."""
    tables = list_tables(conn)
    conn.execute(
        psycopg.sql.SQL("COMMENT ON DATABASE {} IS {}").format(psycopg.sql.Identifier(dbname), psycopg.sql.Literal(f"drdrill restored {point_id}"))
    )
    return tables


# ---------------------------------------------------------------- by key range (drdrill dump's manifests)


def key_ranges(conn: psycopg.Connection, table: str, key: str, lo: int, width: int, method: str) -> dict[str, list]:
    """{range number: [rows, fingerprint]} of rows whose key falls in [lo + n*width, lo + (n+1)*width)."""
    digest = row_hash(method, hash_columns(conn, table, method))
    query = sql.SQL("SELECT ({k} - {lo}) / {w}, count(*), sum({d})::text FROM {t} AS t GROUP BY 1 ORDER BY 1").format(
        k=sql.Identifier(key), lo=sql.Literal(lo), w=sql.Literal(width), d=digest, t=table_ident(table))
    return {str(int(n)): [int(c), str(s)] for n, c, s in conn.execute(query).fetchall()}


def differing_ranges(conn: psycopg.Connection, table: str, expected: dict) -> list[str]:
    """The key ranges of a restored table that differ from the manifest's, each with both row counts."""
    got = key_ranges(conn, table, expected["key"], expected["lo"], expected["width"], expected.get("method", "text"))
    want = expected["ranges"]
    out = []
    for n in sorted(set(got) | set(want), key=int):
        g, w = got.get(n, [0, "0"]), want.get(n, [0, "0"])
        if g != w:
            start = expected["lo"] + int(n) * expected["width"]
            what = f"{g[0]} rows, backup had {w[0]}" if g[0] != w[0] else f"{g[0]} rows, content differs"
            out.append(f"{expected['key']} {start}..{start + expected['width'] - 1}: {what}")
    return out
