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
from drdrill.localpg.data import differing_ranges, fingerprints_parallel, list_tables, table_ident
from drdrill.core.progress import heartbeat
from drdrill.core.durations import format_duration
from drdrill.core.schema import ENDPOINT_TEMPLATE_RE
from drdrill.core.validations import Validation


class VolumeBaseline(BaseModel):
    """A target's row counts in an earlier run: what a `volume` check compares with."""

    drill_id: str
    declared: datetime
    rows: dict[str, int]


class ValidateInput(BaseModel):
    validation: Validation
    name: str
    resource: Optional[RestoredResource] = None
    point: Optional[RecoveryPoint] = None
    declared: datetime
    rpo_objective_seconds: float
    # Whose earlier runs a `volume` check compares with (the workflow sets it).
    drill_name: Optional[str] = None
    # For `volume`, filled in from the evidence by the validate activity (this layer reads no
    # evidence): the counts of the last PASSED run, or why the earlier runs could not be read.
    baseline: Optional[VolumeBaseline] = None
    baseline_problem: Optional[str] = None


class CouldNotVerify(Exception):
    """The check could not be carried out (no connection, bad query, missing tool).

    `retry`: worth trying again until the deadline (a connection refused while a service starts);
    False when trying again cannot help (no manifest to compare with, a query that does not parse).
    """

    def __init__(self, message: str, retry: bool = True, measured: Optional[dict] = None):
        super().__init__(message)
        self.retry = retry
        self.measured = measured or {}  # what the check did measure (a volume check's first counts)


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
            result.measured.update(exc.measured)
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
    from drdrill.core.redact import redact_keeping, redact_obj

    own = [x for x in (getattr(v, "contains", None), getattr(v, "expect", None)) if isinstance(x, str)]
    result.detail = redact_keeping(result.detail, own)
    result.measured = redact_obj(result.measured)
    if result.outcome == "FAILED" and v.type == "checksum":
        result.findings.append(Finding(code="CHECKSUM_MISMATCH", message=result.detail, target=result.target))
    if result.outcome == "FAILED" and v.type == "volume":
        result.findings.append(Finding(code="VOLUME_DROPPED", message=result.detail, target=result.target))
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
        rows, label = sql.SQL(v.query.replace("%", "%%")), _short(v.query, 40)
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


def endpoint_field(inp: ValidateInput, name: str) -> str:
    """A field of the check's restored target's endpoint (its host, port, private_ip, …)."""
    res = inp.resource
    endpoint = res.endpoint if res is not None else {}
    value = endpoint.get(name)
    if value in (None, ""):
        target = getattr(inp.validation, "target", None) or "?"
        known = ", ".join(k for k, val in endpoint.items() if val not in (None, "")) or "nothing"
        raise CouldNotVerify(f"target {target} publishes no {name!r} (its endpoint has: {known})", retry=False)
    return str(value)


def render_template(inp: ValidateInput, template: str) -> str:
    """A url template with each {field} replaced by the target's endpoint field."""
    return ENDPOINT_TEMPLATE_RE.sub(lambda m: endpoint_field(inp, m.group(1)), template)


def tcp_address(inp: ValidateInput) -> tuple[str, int]:
    """Where a tcp check connects: its fixed host, or its target's host (and port, unless given)."""
    v = inp.validation
    if v.host is not None:
        return v.host, v.port
    host = endpoint_field(inp, "host")
    return host, v.port if v.port is not None else int(endpoint_field(inp, "port"))


def http_url(inp: ValidateInput) -> str:
    """What an http check GETs: its url (a template filled from the target's endpoint), or the
    target's host with `port` and `path`."""
    v = inp.validation
    if v.url is not None:
        return render_template(inp, v.url) if v.target is not None else v.url
    host = endpoint_field(inp, "host")
    return f"{v.scheme}://{f'[{host}]' if ':' in host else host}:{v.port}{v.path}"


def check_tcp(inp: ValidateInput, ct: float):
    v = inp.validation
    host, port = tcp_address(inp)
    try:
        with socket.create_connection((host, port), timeout=min(ct, v.timeout.total_seconds() or ct)):
            return f"{host}:{port} accepts connections", {}, True
    except ConnectionRefusedError as exc:
        raise Failed(f"{host}:{port} refused the connection: nothing listens there") from exc
    except (socket.gaierror, socket.timeout, OSError) as exc:
        raise CouldNotVerify(f"{host}:{port} could not be reached: {exc}") from exc


def check_http(inp: ValidateInput, ct: float):
    v = inp.validation
    url = http_url(inp)
    req = urllib.request.Request(url, headers={"User-Agent": "drdrill-validation"})
    try:
        with urllib.request.urlopen(req, timeout=ct) as resp:  # noqa: S310 - the user's URL
            status, body = resp.status, resp.read(1 << 20).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        status, body = exc.code, (exc.read(1 << 20) or b"").decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        raise CouldNotVerify(f"{url} could not be reached: {getattr(exc, 'reason', exc)}") from exc
    if status != v.expect_status:
        raise Failed(f"{url} answered {status}, expected {v.expect_status}")
    if v.contains is not None and v.contains not in body:
        raise Failed(f"{url} answered {status} but the body lacks {v.contains!r}")
    return f"{url} answered {status}" + (f" containing {v.contains!r}" if v.contains else ""), {"status": status}, True


def check_command(inp: ValidateInput, ct: float):
    v = inp.validation
    env = command_env(v.env, drdrill_check=_is_drdrill_check(v.argv))
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


_COMMAND_BASE = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH", "VIRTUAL_ENV")
# The cloud SDKs' own configuration, handed only to drdrill's own `drdrill check …` (it reads the
# restored resource through the worker's cloud identity); their secrets are redacted by name and
# shape. Any other command gets none of it: only what the drill names.
_COMMAND_PREFIXES = ("AWS_", "AZURE_", "ARM_", "GOOGLE_", "CLOUDSDK_", "DRDRILL_")


def _is_drdrill_check(argv: list[str]) -> bool:
    return len(argv) >= 2 and os.path.basename(argv[0]) == "drdrill" and argv[1] == "check"


def command_env(named: list[str], environ=None, drdrill_check: bool = False) -> dict[str, str]:
    """What a command check runs with: not the worker's environment, but PATH and the locale, the
    variables the drill names (each value registered for redaction whatever its name) and, for
    drdrill's own `drdrill check`, the cloud SDKs' configuration (DRDRILL_* but its secrets)."""
    from drdrill.core.redact import register_secret, secret_name

    environ = os.environ if environ is None else environ
    env = {k: environ[k] for k in _COMMAND_BASE if k in environ}
    if drdrill_check:
        env.update({k: val for k, val in environ.items() if k.startswith(_COMMAND_PREFIXES) and not (k.startswith("DRDRILL_") and secret_name(k))})
    missing = [n for n in named if n not in environ]
    if missing:
        raise CouldNotVerify(f"the command's variable{'s' if len(missing) > 1 else ''} {', '.join(missing)} {'are' if len(missing) > 1 else 'is'} not set on this worker", retry=False)
    for name in named:
        register_secret(environ[name])
        env[name] = environ[name]
    return env


_CHECKS = {
    "sql": check_sql,
    "row_count": check_row_count,
    "checksum": check_checksum,
    "freshness": check_freshness,
    "volume": check_volume,


    "boundary": check_boundary,
    "tcp": check_tcp,
    "http": check_http,
    "command": check_command,
}
# Service checks keep trying until their deadline (a service may still be starting).
_RETRY_ON_FAILED = {"tcp": True, "http": True, "command": True}
# Checks that run on the worker even when their target's network is isolated: they read the
# cloud's own API. Every other check needs the target's network, i.e. a probe inside it.
WORKER_CHECKS = frozenset({"command"})


def _short(q: str, n: int = 60) -> str:
    q = " ".join(q.split())
    return q if len(q) <= n else q[: n - 1] + "…"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)
