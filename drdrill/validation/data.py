"""Data checks: sql, row_count, checksum, freshness, volume, boundary. Each connects to its restored
target's database endpoint and proves the data is back (and, with a manifest, that it is the data
that was backed up).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

import psycopg

from drdrill.providers.activity_io import ValidateInput
from drdrill.core.progress import heartbeat
from drdrill.core.durations import format_duration
from drdrill.localpg.data import METHODS, differing_ranges, fingerprints_parallel, list_tables, table_ident
from drdrill.validation.common import CouldNotVerify, Failed, compare, first_line, jsonable, short


def _connect(inp: ValidateInput, connect_timeout: float) -> psycopg.Connection:
    res = inp.resource
    if res is None or not res.endpoint.get("dsn"):
        raise CouldNotVerify(f"target {getattr(inp.validation, 'target', '?')} exposes no database endpoint to check", retry=False)
    dsn = res.endpoint["dsn"]
    db = getattr(inp.validation, "database", None)
    kwargs: dict[str, Any] = {"connect_timeout": max(1, int(connect_timeout)), "autocommit": True}
    if db:
        kwargs["dbname"] = db
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.OperationalError as exc:
        raise CouldNotVerify(f"cannot connect to {res.target}: {first_line(exc)}") from exc


def _query_error(exc: psycopg.Error) -> Exception:
    # Missing tables or columns in the restored data are a failed restore; a broken query is ours.
    if isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn, psycopg.errors.InvalidSchemaName)):
        return Failed(f"the restored data lacks it: {first_line(exc)}")
    if isinstance(exc, psycopg.OperationalError):
        return CouldNotVerify(f"connection lost: {first_line(exc)}")
    return CouldNotVerify(f"the query could not run: {first_line(exc)}", retry=False)


def check_sql(inp: ValidateInput, ct: float):
    v = inp.validation
    with _connect(inp, ct) as conn:
        try:
            row = conn.execute(v.query).fetchone()
        except psycopg.Error as exc:
            raise _query_error(exc) from exc
    if row is None:
        raise Failed(f"the query returned no rows; expected {v.expect}")
    value = row[0]
    ok = compare(value, v.expect)
    return f"{short(v.query)} = {value!r} (expected {v.expect})", {"value": jsonable(value)}, ok


def _manifest(inp: ValidateInput) -> dict:
    if inp.point is None:
        return {}
    return inp.point.metadata.get("manifest", {}) or {}


HOW_TO_GET_A_MANIFEST = (
    "take the backups with `drdrill backup` (format custom or directory), or your pg_dump cron job's with `drdrill dump` (the same arguments): it records every table's rows and "
    "content checksum in the dump's own snapshot; without one, prove the data with row_count min, sql, freshness or volume"
)


def _manifest_tables(inp: ValidateInput, what: str) -> dict:
    """The manifest's per-table counts and checksums; a point without them cannot be compared with
    (COULD_NOT_VERIFY, never a pass), and the message says how to get them."""
    manifest = _manifest(inp)
    point = inp.point.id if inp.point is not None else "the recovery point"
    if not manifest:
        raise CouldNotVerify(
            f"{what}: recovery point {point} has no manifest of table checksums to compare with (it was not taken by "
            f"`drdrill backup`): {HOW_TO_GET_A_MANIFEST}",
            retry=False,
        )
    if manifest.get("format") == "base":
        raise CouldNotVerify(
            f"{what}: recovery point {point} is a base backup (a physical copy), with no manifest of table checksums to "
            f"compare with: {HOW_TO_GET_A_MANIFEST}",
            retry=False,
        )
    tables = manifest.get("tables")
    if not tables:
        raise CouldNotVerify(f"{what}: the manifest of recovery point {point} lists no tables to compare with", retry=False)
    return tables


def check_row_count(inp: ValidateInput, ct: float):
    v = inp.validation
    table = v.table if "." in v.table else f"public.{v.table}"
    tables = _manifest_tables(inp, "equals_manifest") if v.equals_manifest else {}
    with _connect(inp, ct) as conn:
        try:
            from psycopg import sql

            rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table_ident(table))).fetchone()[0]
        except psycopg.Error as exc:
            raise _query_error(exc) from exc
    parts, ok = [f"{table}: {rows} rows"], True
    if v.min is not None:
        ok = ok and rows >= v.min
        parts.append(f"min {v.min}")
    if v.equals_manifest:
        if table not in tables:
            raise CouldNotVerify(f"the recovery point's manifest has no count for {table}", retry=False)
        expected = tables[table]["rows"]
        ok = ok and rows == expected
        parts.append(f"manifest {expected}")
    return ", ".join(parts), {"rows": rows}, ok


def check_checksum(inp: ValidateInput, ct: float):
    v = inp.validation
    tables = _manifest_tables(inp, "checksum")
    wanted = v.tables or list(tables)
    wanted = [t if "." in t else f"public.{t}" for t in wanted]
    missing_in_manifest = [t for t in wanted if t not in tables]
    if missing_in_manifest:
        raise CouldNotVerify(f"not in the recovery point's manifest: {', '.join(missing_in_manifest)}", retry=False)
    conn0 = _connect(inp, ct)
    conn0.close()
    res = inp.resource
    db = getattr(v, "database", None)

    def connect():
        kw: dict[str, Any] = {"connect_timeout": max(1, int(ct)), "autocommit": True}
        if db:
            kw["dbname"] = db
        return psycopg.connect(res.endpoint["dsn"], **kw)

    # Recompute with the hash method the manifest used (manifests without one used "text").
    methods = {t: tables[t].get("method", "text") for t in wanted}
    unknown = sorted(t for t, m in methods.items() if m not in METHODS)
    if unknown:
        raise CouldNotVerify(f"the manifest fingerprints {', '.join(unknown)} by a method this drdrill does not know "
                             f"({', '.join(sorted({methods[t] for t in unknown}))}; it knows {', '.join(METHODS)})", retry=False)
    try:
        got = fingerprints_parallel(
            connect, wanted, workers=int(os.environ.get("DRDRILL_CHECKSUM_WORKERS", "4")),
            on_table=lambda t: heartbeat({"table": t}), methods=methods,
        )
    except psycopg.Error as exc:
        raise _query_error(exc) from exc
    bad = []
    for t in wanted:
        exp, act = tables[t], got[t]
        if exp["rows"] != act["rows"]:
            bad.append(f"{t}: {act['rows']} rows, backup had {exp['rows']}" + _ranges_that_differ(connect, t, exp))
        elif str(exp["checksum"]) != str(act["checksum"]):
            bad.append(f"{t}: content differs from the backup" + _ranges_that_differ(connect, t, exp))
    total = sum(got[t]["rows"] for t in wanted)
    if bad:
        return f"{len(wanted) - len(bad)}/{len(wanted)} tables match; " + "; ".join(bad), {"tables": len(wanted), "rows": total}, False
    return f"{len(wanted)}/{len(wanted)} tables match the backup ({total} rows)", {"tables": len(wanted), "rows": total}, True


def _ranges_that_differ(connect, table: str, expected: dict, listed: int = 10) -> str:
    """With key ranges in the manifest (`drdrill dump`): which ranges differ, with their row counts."""
    if not expected.get("ranges"):
        return ""
    try:
        with connect() as conn:
            ranges = differing_ranges(conn, table, expected)
    except psycopg.Error:
        return " (its key ranges could not be compared)"
    more = f" and {len(ranges) - listed} more" if len(ranges) > listed else ""
    return f" (key ranges that differ: {'; '.join(ranges[:listed])}{more})" if ranges else ""


def check_freshness(inp: ValidateInput, ct: float):
    v = inp.validation
    table = v.table if "." in v.table else f"public.{v.table}"
    from psycopg import sql

    with _connect(inp, ct) as conn:
        try:
            newest = conn.execute(
                sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(v.column), table_ident(table))
            ).fetchone()[0]
        except psycopg.Error as exc:
            raise _query_error(exc) from exc
    if newest is None:
        raise Failed(f"{table}.{v.column} has no values: no data to measure freshness by")
    if not isinstance(newest, datetime):
        raise CouldNotVerify(f"{table}.{v.column} is not a timestamp column (got {type(newest).__name__})", retry=False)
    if newest.tzinfo is None:
        newest = newest.replace(tzinfo=timezone.utc)
    lag = (inp.declared - newest).total_seconds()
    limit = v.max_lag.total_seconds() if v.max_lag is not None else inp.rpo_objective_seconds
    detail = f"newest {table}.{v.column} is {format_duration(lag)} before the disaster (limit {format_duration(limit)})"
    return detail, {"newest": newest.isoformat(), "rpo_seconds": max(0.0, lag)}, lag <= limit


def check_volume(inp: ValidateInput, ct: float):
    """Each table's rows now against the last PASSED run of the drill (`inp.baseline`): a table that
    lost more than the tolerance fails, naming both counts; growth and new tables never do. With
    nothing to compare with yet (the first run), the counts are recorded as the baseline of the next
    run ("baseline recorded"): the check passes, proving only that the tables could be counted."""
    v = inp.validation
    base = inp.baseline
    with _connect(inp, ct) as conn:
        try:
            present = list_tables(conn)
            named = [t if "." in t else f"public.{t}" for t in v.tables] if v.tables else None
            wanted = named or sorted(set(present) | set(base.rows if base else {}))
            counts = {}
            for t in wanted:
                if t in present:
                    heartbeat({"check": inp.name, "table": t})
                    counts[t] = conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(table_ident(t))).fetchone()[0]
        except psycopg.Error as exc:
            raise _query_error(exc) from exc
    absent = [t for t in named or [] if t not in present and not (base and t in base.rows)]
    if absent:
        raise Failed(f"the restored data lacks {', '.join(absent)}")
    measured: dict[str, Any] = {"tables": counts, "tolerance_percent": v.tolerance}
    if inp.baseline_problem:
        raise CouldNotVerify(inp.baseline_problem, retry=False, measured=measured)
    if base is None:  # nothing to compare with yet: these counts become the baseline, the drill goes on
        measured["first_run"] = measured["baseline_recorded"] = True
        return (
            f"baseline recorded: {len(counts)} tables, {sum(counts.values())} rows; no earlier PASSED run of drill "
            f"{inp.drill_name or 'this drill'} counted target {v.target}'s tables, so the next run compares with these counts",
            measured,
            True,
        )
    measured["baseline_run"] = base.drill_id
    compared = [t for t in wanted if t in base.rows]
    if not compared and base.rows:
        raise CouldNotVerify(
            f"run {base.drill_id}, the last PASSED one, counted none of these tables: {', '.join(wanted)}", retry=False, measured=measured
        )
    lost = []
    for t in compared:
        before, now = base.rows[t], counts.get(t)
        if before > 0 and ((now is None) or (before - now) * 100 > v.tolerance * before):
            if now is None:
                lost.append(f"{t}: missing from the restore, {before} rows in run {base.drill_id}")
            else:
                lost.append(f"{t}: {now} rows, {before} in run {base.drill_id} (-{(before - now) * 100 / before:.0f}%)")
    new = [t for t in wanted if t not in base.rows]
    tolerance = f"{v.tolerance:g}%"
    if lost:
        return (
            f"{len(lost)}/{len(compared)} tables lost more than {tolerance} of their rows since the last PASSED run: " + "; ".join(lost),
            measured,
            False,
        )
    detail = f"{len(compared)}/{len(compared)} tables within {tolerance} of run {base.drill_id} ({sum(counts.values())} rows)"
    return detail + (f"; {len(new)} new: {', '.join(new)}" if new else ""), measured, True


def _boundary_moment(inp: ValidateInput) -> tuple[datetime, str]:
    """The moment a boundary check proves, and what it is: the recovery target of a point-in-time
    recovery, the moment its replay reached (rule latest), or the recovery point's consistent time."""
    details = inp.resource.details if inp.resource is not None else {}
    for key, what in (("recovery_target", "the recovery target"), ("recovered_to", "the moment replay reached")):
        if details.get(key):
            return datetime.fromisoformat(details[key]), what
    if inp.point is not None:
        return inp.point.consistent_time, "the recovery point's consistent time"
    raise CouldNotVerify("the restored target says no moment it was recovered to", retry=False)


def check_boundary(inp: ValidateInput, ct: float):
    """Both sides of the moment: the newest row at or before it survived (at most max_gap older
    than it) and no row written after it exists."""
    v = inp.validation
    from psycopg import sql

    moment, what = _boundary_moment(inp)
    if v.query is not None:
        # The user's query is text, not a template: its `%` (LIKE 'a%', modulo) must not read as a placeholder.
        rows, label = sql.SQL(v.query.replace("%", "%%")), short(v.query, 40)
    else:
        table = v.table if "." in v.table else f"public.{v.table}"
        rows, label = sql.SQL("SELECT {} FROM {}").format(sql.Identifier(v.column), table_ident(table)), f"{table}.{v.column}"
    query = sql.SQL(
        "SELECT max(ts) FILTER (WHERE ts <= %(m)s), count(*) FILTER (WHERE ts > %(m)s), min(ts) FILTER (WHERE ts > %(m)s), count(*) "
        "FROM ({}) AS boundary(ts)"
    ).format(rows)
    with _connect(inp, ct) as conn:
        try:
            conn.execute("SET TIME ZONE 'UTC'")  # a column without a time zone holds UTC, as freshness reads it
            newest, after, first_after, total = conn.execute(query, {"m": moment}).fetchone()
        except psycopg.Error as exc:
            raise _query_error(exc) from exc
    if newest is not None and not isinstance(newest, datetime):
        raise CouldNotVerify(f"{label} is not a timestamp (got {type(newest).__name__})", retry=False)
    if newest is not None and newest.tzinfo is None:
        newest = newest.replace(tzinfo=timezone.utc)
    details = inp.resource.details if inp.resource is not None else {}
    reached = datetime.fromisoformat(details["recovered_to"]) if details.get("recovered_to") else None
    measured: dict[str, Any] = {
        "moment": moment.isoformat(),
        "moment_is": what,
        "newest_at_or_before": newest.isoformat() if newest else None,
        "rows_after": after,
        "rows": total,
    }
    if reached is not None:
        measured["recovered_to"] = reached.isoformat()
        measured["rpo_seconds"] = max(0.0, (inp.declared - reached).total_seconds())  # the data lost: declared - where replay stopped
    at = f"{what} {moment.isoformat()}"
    if after:
        raise Failed(f"{after} rows of {label} written after {at} are present (the first at {first_after}): recovery went past it")
    if newest is None:
        raise Failed(f"no row of {label} at or before {at} survived ({total} rows in all)")
    gap = (moment - newest).total_seconds()
    limit = v.max_gap.total_seconds()
    if gap > limit:
        raise Failed(
            f"the newest row of {label} at or before {at} is {format_duration(gap)} older than it (max_gap {format_duration(limit)}): "
            "rows written before the moment are missing"
        )
    return f"boundary holds at {at}: newest {label} {format_duration(gap)} before it, none after ({total} rows)", measured, True
