"""Validations: prove the restored data and services are really back.

Each check returns PASSED, FAILED or COULD_NOT_VERIFY with details; a check that could not run is
never a pass. Data checks (sql, row_count, checksum, freshness) connect to a restored target's
endpoint; service checks (tcp, http, command) retry until their deadline, since a restored service
may take a while to start.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Optional

import psycopg
from pydantic import BaseModel

from drdrill.core.models import Finding, RecoveryPoint, RestoredResource, ValidationResult
from drdrill.providers.postgres.data import fingerprints_parallel, table_ident
from drdrill.core.progress import heartbeat
from drdrill.core.spec import Validation, format_duration


class ValidateInput(BaseModel):
    validation: Validation
    name: str
    resource: Optional[RestoredResource] = None
    point: Optional[RecoveryPoint] = None
    declared: datetime
    rpo_objective_seconds: float


class CouldNotVerify(Exception):
    """The check could not be carried out (no connection, bad query, missing tool).

    `retry`: worth trying again until the deadline (a connection refused while a service starts);
    False when trying again cannot help (no manifest to compare with, a query that does not parse).
    """

    def __init__(self, message: str, retry: bool = True):
        super().__init__(message)
        self.retry = retry


class Failed(Exception):
    """The check ran and the answer was wrong."""


_EXPECT_RE = re.compile(r"^\s*(==|!=|>=|<=|>|<)\s*(.+?)\s*$")


def compare(actual: Any, expect: str) -> bool:
    op, raw = _EXPECT_RE.match(expect).groups()  # type: ignore[union-attr]
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        expected: Any = raw[1:-1]
        actual = "" if actual is None else str(actual)
    elif raw.lower() in ("true", "false"):
        expected = raw.lower() == "true"
    elif raw.lower() == "null":
        expected = None
    else:
        try:
            expected = Decimal(raw)
        except Exception as exc:  # noqa: BLE001
            raise CouldNotVerify(f"cannot compare with {raw!r}: quote text values, e.g. == 'ok'", retry=False) from exc
        if isinstance(actual, bool) or actual is None:
            raise Failed(f"got {actual!r}, expected a number {expect}")
        try:
            actual = Decimal(str(actual))
        except Exception as exc:  # noqa: BLE001
            raise Failed(f"got {actual!r}, expected a number {expect}") from exc
    if expected is None or isinstance(expected, bool):
        if op not in ("==", "!="):
            raise CouldNotVerify(f"{expect}: only == and != apply to {raw}", retry=False)
    try:
        return {
            "==": lambda a, b: a == b,
            "!=": lambda a, b: a != b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
        }[op](actual, expected)
    except TypeError as exc:
        raise Failed(f"got {actual!r}, which cannot be compared {expect}") from exc


def _now() -> datetime:
    return datetime.now(timezone.utc)


def run_validation(inp: ValidateInput, connect_timeout: float = 10.0) -> ValidationResult:
    v = inp.validation
    result = ValidationResult(
        name=inp.name,
        type=v.type,
        target=getattr(v, "target", None),
        required=v.required,
        outcome="COULD_NOT_VERIFY",
        started=_now(),
    )
    deadline = time.monotonic() + v.timeout.total_seconds()
    check = _CHECKS[v.type]
    delay = 0.2
    last_error = ""
    while True:
        result.attempts += 1
        heartbeat({"check": inp.name, "attempt": result.attempts})
        try:
            detail, measured, passed = check(inp, connect_timeout)
            result.measured.update(measured)
            result.detail = detail
            if passed:
                result.outcome = "PASSED"
                result.first_passed_at = _now()
            else:
                result.outcome = "FAILED"
            break
        except Failed as exc:
            result.outcome, result.detail = "FAILED", str(exc)
            if not _RETRY_ON_FAILED.get(v.type, False) or time.monotonic() >= deadline:
                break
            last_error = str(exc)
        except CouldNotVerify as exc:
            result.outcome, result.detail = "COULD_NOT_VERIFY", str(exc)
            last_error = str(exc)
            if not exc.retry or time.monotonic() >= deadline:
                break
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.6, 5.0)
    if result.outcome != "PASSED" and last_error and result.attempts > 1:
        result.detail = f"{result.detail} (after {result.attempts} attempts over {format_duration(v.timeout)})"
    result.finished = _now()
    # Redacted at the source: a check's output (a command printing its environment, an error
    # quoting a DSN) becomes the workflow history, findings, evidence and reports.
    from drdrill.core.redact import redact, redact_obj

    result.detail = redact(result.detail)
    result.measured = redact_obj(result.measured)
    if result.outcome == "FAILED" and v.type == "checksum":
        result.findings.append(Finding(code="CHECKSUM_MISMATCH", message=result.detail, target=result.target))
    return result


# ------------------------------------------------------------------ data checks


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
        raise CouldNotVerify(f"cannot connect to {res.target}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _query_error(exc: psycopg.Error) -> Exception:
    # Missing tables or columns in the restored data are a failed restore; a broken query is ours.
    if isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn, psycopg.errors.InvalidSchemaName)):
        return Failed(f"the restored data lacks it: {_first_line(exc)}")
    if isinstance(exc, psycopg.OperationalError):
        return CouldNotVerify(f"connection lost: {_first_line(exc)}")
    return CouldNotVerify(f"the query could not run: {_first_line(exc)}", retry=False)


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
    return f"{_short(v.query)} = {value!r} (expected {v.expect})", {"value": _jsonable(value)}, ok


def _manifest(inp: ValidateInput) -> dict:
    if inp.point is None:
        return {}
    return inp.point.metadata.get("manifest", {}) or {}


def check_row_count(inp: ValidateInput, ct: float):
    v = inp.validation
    table = v.table if "." in v.table else f"public.{v.table}"
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
        tables = _manifest(inp).get("tables", {})
        if table not in tables:
            raise CouldNotVerify(f"the recovery point's manifest has no count for {table}", retry=False)
        expected = tables[table]["rows"]
        ok = ok and rows == expected
        parts.append(f"manifest {expected}")
    return ", ".join(parts), {"rows": rows}, ok


def check_checksum(inp: ValidateInput, ct: float):
    v = inp.validation
    manifest = _manifest(inp)
    tables = manifest.get("tables")
    if not tables:
        raise CouldNotVerify("the recovery point has no manifest of table checksums to compare with", retry=False)
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

    try:
        # Recompute with the hash method the manifest used (manifests without one used "text").
        methods = {t: tables[t].get("method", "text") for t in wanted}
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
            bad.append(f"{t}: {act['rows']} rows, backup had {exp['rows']}")
        elif str(exp["checksum"]) != str(act["checksum"]):
            bad.append(f"{t}: content differs from the backup")
    total = sum(got[t]["rows"] for t in wanted)
    if bad:
        return f"{len(wanted) - len(bad)}/{len(wanted)} tables match; " + "; ".join(bad), {"tables": len(wanted), "rows": total}, False
    return f"{len(wanted)}/{len(wanted)} tables match the backup ({total} rows)", {"tables": len(wanted), "rows": total}, True


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
        rows, label = sql.SQL(v.query), _short(v.query, 40)
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


# ------------------------------------------------------------------ service checks


def check_tcp(inp: ValidateInput, ct: float):
    v = inp.validation
    try:
        with socket.create_connection((v.host, v.port), timeout=min(ct, v.timeout.total_seconds() or ct)):
            return f"{v.host}:{v.port} accepts connections", {}, True
    except ConnectionRefusedError as exc:
        raise Failed(f"{v.host}:{v.port} refused the connection: nothing listens there") from exc
    except (socket.gaierror, socket.timeout, OSError) as exc:
        raise CouldNotVerify(f"{v.host}:{v.port} could not be reached: {exc}") from exc


def check_http(inp: ValidateInput, ct: float):
    v = inp.validation
    req = urllib.request.Request(v.url, headers={"User-Agent": "drdrill-validation"})
    try:
        with urllib.request.urlopen(req, timeout=ct) as resp:  # noqa: S310 - the user's URL
            status, body = resp.status, resp.read(1 << 20).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        status, body = exc.code, (exc.read(1 << 20) or b"").decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        raise CouldNotVerify(f"{v.url} could not be reached: {getattr(exc, 'reason', exc)}") from exc
    if status != v.expect_status:
        raise Failed(f"{v.url} answered {status}, expected {v.expect_status}")
    if v.contains is not None and v.contains not in body:
        raise Failed(f"{v.url} answered {status} but the body lacks {v.contains!r}")
    return f"{v.url} answered {status}" + (f" containing {v.contains!r}" if v.contains else ""), {"status": status}, True


def check_command(inp: ValidateInput, ct: float):
    v = inp.validation
    env = dict(os.environ)
    if inp.resource is not None:
        for k, val in inp.resource.endpoint.items():
            env[f"DRDRILL_{k.upper()}"] = str(val)
    try:
        proc = subprocess.Popen(v.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    except (FileNotFoundError, PermissionError) as exc:
        raise CouldNotVerify(f"command cannot be run: {v.argv[0]}: {exc.strerror}", retry=False) from exc
    deadline = time.monotonic() + max(1.0, v.timeout.total_seconds())
    try:
        while True:
            try:
                output, _ = proc.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                heartbeat({"command": os.path.basename(v.argv[0])})  # raises when the drill is cancelled
                if time.monotonic() > deadline:
                    raise CouldNotVerify(f"command did not finish within {format_duration(v.timeout)}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    tail = (output or "").strip().splitlines()[-3:]
    detail = f"{os.path.basename(v.argv[0])} exited {proc.returncode} (expected {v.expect_exit})" + (
        f": {' | '.join(tail)}" if tail else ""
    )
    if proc.returncode != v.expect_exit:
        raise Failed(detail)
    return detail, {"exit": proc.returncode}, True


_CHECKS = {
    "sql": check_sql,
    "row_count": check_row_count,
    "checksum": check_checksum,
    "freshness": check_freshness,
    "boundary": check_boundary,
    "tcp": check_tcp,
    "http": check_http,
    "command": check_command,
}
# Service checks keep trying until their deadline (a service may still be starting).
_RETRY_ON_FAILED = {"tcp": True, "http": True, "command": True}


def _short(q: str, n: int = 60) -> str:
    q = " ".join(q.split())
    return q if len(q) <= n else q[: n - 1] + "…"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)
