"""Is the restored data sound, not only present: corruption checks after every postgres restore.

A restore that exits 0 and answers `SELECT count(*)` can still hold a corrupt B-tree, a heap page
that no longer decodes, or text indexes built under another collation version (they return wrong
rows after the next glibc/ICU upgrade). After the restored server serves, `check_restored`:

- runs `pg_amcheck --heapallindexed` (heap pages and B-tree indexes, TOAST and each table's
  indexes with it, `--jobs` from `restore.jobs`) in the drill's sandbox, over the private socket,
  table batch by table batch, within `restore.integrity.budget`. Corruption is AMCHECK_CORRUPTION
  naming the relation and block (the drill FAILS); the relations of batches the budget did not
  reach (or cut short) are named in AMCHECK_BUDGET_EXCEEDED: COULD NOT VERIFY, never a pass.
  Without a pg_amcheck that can check this server (PostgreSQL 14+), the `amcheck` extension's own
  functions (`bt_index_check`, `verify_heapam`) run instead; without the extension,
  AMCHECK_UNAVAILABLE (COULD NOT VERIFY). The extension is dropped again when drdrill created it;
- compares each collation's recorded version with the one the restore host's libraries provide:
  COLLATION_VERSION_MISMATCH names the indexes that depend on it and the REINDEX the team will
  need on the day;
- adds what the physical restore found before the server started (pagechecks.py: pg_checksums).

The worker itself only talks SQL to the restored server (psycopg); pg_amcheck, a client process
pointed at a restored server, runs in the drill's sandbox like psql and pg_restore do.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import psycopg
from psycopg.conninfo import conninfo_to_dict

import drdrill.localpg.binaries as installs
from drdrill.core.models import Finding
from drdrill.providers.base import ProviderError, heartbeat
from drdrill.localpg.binaries import Binaries
from drdrill.localpg.cluster import LocalCluster, install_dirs
from drdrill.providers.postgres.pagechecks import page_findings, read_page_checks
from drdrill.localpg.sandbox import SandboxError

LISTED = 10  # relations named in a finding's message; the evidence keeps every one
BATCHES = 8  # the budget is accounted batch by batch: a cut batch counts as not checked

_USER_TABLES = """
SELECT n.nspname, c.relname, c.oid::bigint, pg_total_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND c.relpersistence = 'p'
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
ORDER BY 1, 2"""

_BTREES_OF = """
SELECT i.indrelid::bigint, format('%%I.%%I', n.nspname, ic.relname), ic.oid::bigint
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
JOIN pg_am am ON am.oid = ic.relam
WHERE am.amname = 'btree' AND i.indisvalid AND i.indisready AND i.indrelid = ANY(%s)"""

_HEADER = re.compile(r'^(heap table|btree index) "([^"]+)"(?:, block (\d+))?(?:, offset (\d+))?(?:, attribute (\d+))?:\s*$')
_BLOCK_IN_TEXT = re.compile(r"(?:block |blkno[ =]|tid=\(|Block=)(\d+)")


@dataclass
class Table:
    schema: str
    name: str
    oid: int
    size: int
    indexes: list[str] = field(default_factory=list)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class Problem:
    kind: str  # heap table | btree index
    relation: str  # schema.name
    blocks: list[int] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


@dataclass
class AmcheckRun:
    tool: str = ""
    tables: int = 0
    indexes: int = 0
    checked: list[str] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)
    problems: dict[str, Problem] = field(default_factory=dict)
    unavailable: Optional[str] = None
    failed: Optional[str] = None
    seconds: float = 0.0

    def as_details(self) -> dict[str, Any]:
        return {
            "tool": self.tool, "tables": self.tables, "indexes": self.indexes,
            "relations_checked": len(self.checked), "relations_not_checked": self.not_checked,
            "corrupt": {r: {"kind": p.kind, "blocks": p.blocks[:100], "messages": p.messages[:5]} for r, p in self.problems.items()},
            "unavailable": self.unavailable, "failed": self.failed, "seconds": round(self.seconds, 3),
        }


# ---------------------------------------------------------------------- the entry point


def check_restored(target: Any, details: dict, admin_dsn: str, left: Optional[float] = None) -> tuple[list[Finding], dict[str, Any]]:
    """Every integrity check of one restored target: findings, and what the report shows. `left`:
    the seconds the activity has left (restore.timeout), which caps the budget."""
    opts = target.restore.integrity
    name = target.name
    findings: list[Finding] = []
    budget = opts.budget.total_seconds()
    if left is not None and left < budget:
        budget = max(0.0, left)
    report: dict[str, Any] = {"enabled": opts.enabled, "budget_seconds": budget,
                              "budget_capped_by_restore_timeout": budget < opts.budget.total_seconds()}
    _, pages = read_page_checks(details, name)
    if pages is not None:
        _name_failed_pages(admin_dsn, pages)
        report["page_checksums"] = pages
        findings += page_findings(pages, name)
    if not opts.enabled:
        findings.append(Finding(code="INTEGRITY_CHECKS_OFF", severity="warning", target=name,
                                message=f"target {name}: restore.integrity.enabled is false: no amcheck and no collation check ran, "
                                "so corruption in what was restored would go unseen"))
        return findings, report
    deadline = time.monotonic() + budget - float((pages or {}).get("seconds") or 0)  # pg_checksums spent part of it
    cluster = LocalCluster(Path(str(conninfo_to_dict(admin_dsn)["host"])).parent)  # the drill's, whose socket this is
    try:
        run = run_amcheck(admin_dsn, cluster, target.restore.jobs, deadline, name)
    except (psycopg.Error, ProviderError) as exc:  # a check that could not run: never a pass, never a crash
        run = AmcheckRun(failed=str(getattr(exc, "message", None) or exc).strip())
    _attribute_by_file(admin_dsn, run)
    report["amcheck"] = run.as_details()
    findings += amcheck_findings(run, name)
    if not (pages or {}).get("failures"):  # pg_checksums already named the pages
        findings += _server_checksum_failures(admin_dsn, report, name)
    try:
        collations = check_collations(admin_dsn)
        report["collations"] = collations
        findings += collation_findings(collations, name)
    except psycopg.Error as exc:
        report["collations"] = {"error": str(exc).strip()}
        findings.append(Finding(code="COLLATION_UNVERIFIED", could_not_verify=True, target=name,
                                message=f"target {name}: collation versions could not be read: {str(exc).strip()}"))
    return findings, report


_FILE = re.compile(r"(?:base/\d+|global|pg_tblspc/\d+/[^/]+/\d+)/(\d+)(?:_\w+)?(?:\.\d+)?")
_INVALID_PAGE = re.compile(r"invalid page in block (\d+) of relation (\S+)")


def _relations_of_files(admin_dsn: str, paths: list[str]) -> dict[str, str]:
    """Data file paths (…/base/DB/FILENODE[.N]) to the relations they hold, in the restored database."""
    nodes = {p: int(m.group(1)) for p in paths if (m := _FILE.search(p))}
    if not nodes:
        return {}
    try:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
            named = {}
            for path, node in nodes.items():
                row = conn.execute("SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c "
                                   "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = pg_filenode_relation(0, %s)",
                                   (node,)).fetchone()
                if row and row[0]:
                    named[path] = row[0]
            return named
    except psycopg.Error:
        return {}


def _name_failed_pages(admin_dsn: str, pages: dict) -> None:
    failures = pages.get("failures") or []
    named = _relations_of_files(admin_dsn, [f["file"] for f in failures])
    for f in failures:
        if f["file"] in named:
            f["relation"] = named[f["file"]]


def _attribute_by_file(admin_dsn: str, run: AmcheckRun) -> None:
    """`invalid page in block B of relation base/D/F` reported while checking an index (heapallindexed
    reads its table) is a problem of the relation that file holds: moved there, with its block."""
    for relation, problem in list(run.problems.items()):
        for text in problem.messages:
            m = _INVALID_PAGE.search(text)
            if not m:
                continue
            owner = _relations_of_files(admin_dsn, [m.group(2)]).get(m.group(2))
            if owner and owner != relation:
                target = run.problems.setdefault(owner, Problem(kind="heap table", relation=owner))
                target.messages.append(text)
                problem.messages.remove(text)
            else:
                target = problem
            if int(m.group(1)) not in target.blocks:
                target.blocks.append(int(m.group(1)))
        if not problem.messages:
            del run.problems[relation]


def _server_checksum_failures(admin_dsn: str, report: dict[str, Any], target: str) -> list[Finding]:
    """The server's own count of pages that failed their checksum when read (amcheck read them all)."""
    try:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
            on, failures = conn.execute("SELECT current_setting('data_checksums'), checksum_failures FROM pg_stat_database "
                                        "WHERE datname = current_database()").fetchone()
    except psycopg.Error:
        return []
    report["server_checksums"] = {"enabled": on == "on", "failures": failures or 0}
    if failures:
        return [Finding(code="PAGE_CHECKSUM_FAILURE", target=target,
                        message=f"target {target}: the restored server found {failures} pages failing their checksums while they were read "
                        "(pg_stat_database.checksum_failures)")]
    return []


# ---------------------------------------------------------------------- amcheck


def run_amcheck(admin_dsn: str, cluster: LocalCluster, jobs: int, deadline: float, target: str, functions_only: bool = False) -> AmcheckRun:
    """Check every user table, its TOAST and its B-tree indexes; `functions_only`: without pg_amcheck."""
    run = AmcheckRun()
    started = time.monotonic()
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        major = conn.info.server_version // 10000
        if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck'").fetchone() is None:
            run.unavailable = "the amcheck extension (PostgreSQL's contrib) is not installed on the worker's PostgreSQL " f"{major}"
            return run
        had = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'amcheck'").fetchone() is not None
        tables = [Table(*row) for row in conn.execute(_USER_TABLES).fetchall()]
        by_oid = {t.oid: t for t in tables}
        for table_oid, index, _ in conn.execute(_BTREES_OF, ([t.oid for t in tables],)).fetchall():
            by_oid[table_oid].indexes.append(index)
        run.tables, run.indexes = len(tables), sum(len(t.indexes) for t in tables)
        binaries = None if functions_only else _amcheck_binaries(major)
        try:
            if binaries is not None:
                run.tool = f"pg_amcheck ({binaries})"
                _pg_amcheck(run, tables, admin_dsn, cluster, binaries, jobs, deadline, target)
            else:
                run.tool = "amcheck functions (bt_index_check, verify_heapam)" if major >= 14 else "amcheck function bt_index_check"
                _amcheck_functions(run, conn, tables, deadline, target, heap=major >= 14)
        finally:
            if not had:  # leave the restored database as it was restored
                conn.execute("DROP EXTENSION IF EXISTS amcheck")
    run.seconds = time.monotonic() - started
    return run


def _amcheck_binaries(major: int) -> Optional[Binaries]:
    """An install with a pg_amcheck that can check a server of `major` (14+): the same major, else the newest."""
    if major < 14:
        return None
    found = [b for b in installs.installed() if b.major >= 14 and Path(b.bindir, "pg_amcheck").exists()]
    same = [b for b in found if b.major == major]
    return (same or sorted(found, key=lambda b: -b.major) or [None])[0]


def _batches(tables: list[Table]) -> list[list[Table]]:
    """Tables in up to BATCHES groups of about equal size, the largest tables first. pg_amcheck starts
    a batch's largest relations first, so the longest single check (the `heapallindexed` scan of a
    large table's index, one backend's work) begins at once instead of after the batches before it.
    The small tables left at the end (together under a batch's share) join the first batch: its
    other jobs idle while its largest relation is checked, and a pg_amcheck process is saved."""
    share = (sum(t.size for t in tables) or 1) / BATCHES
    batches: list[list[Table]] = [[]]
    acc = 0
    for t in sorted(tables, key=lambda t: (-t.size, t.schema, t.name)):
        if batches[-1] and acc >= share and len(batches) < BATCHES:
            batches.append([])
            acc = 0
        batches[-1].append(t)
        acc += t.size
    if len(batches) > 1 and acc < share:
        batches[0] += batches.pop()
    return [b for b in batches if b]


def _pattern(*parts: str) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def _pg_amcheck(run: AmcheckRun, tables: list[Table], admin_dsn: str, cluster: LocalCluster, binaries: Binaries,
                jobs: int, deadline: float, target: str) -> None:
    conn = conninfo_to_dict(admin_dsn)
    db = str(conn["dbname"])
    base = [binaries.tool("pg_amcheck"), "-h", str(conn["host"]), "-p", str(conn["port"]), "-U", str(conn["user"]),
            "--no-password", "--heapallindexed", "--install-missing", "--jobs", str(jobs), "--database", _pattern(db)]
    box = cluster.sandbox(ro=tuple(install_dirs(binaries)))
    batches = _batches(tables)
    for i, batch in enumerate(batches):
        names = [r for t in batch for r in (t.qualified, *t.indexes)]
        if time.monotonic() >= deadline:
            run.not_checked += names
            continue
        argv = base + [a for t in batch for a in ("--table", _pattern(db, t.schema, t.name))]
        out, code = _run_until(box, argv, deadline, target, f"pg_amcheck batch {i + 1}/{len(batches)}")
        if code is None:
            run.not_checked += names
        _parse(out, run, db)
        if code not in (None, 0) and not run.problems:
            run.failed = (out.strip().splitlines() or [f"exit code {code}"])[-1]
            run.not_checked += names
        elif code is not None:
            run.checked += names


def _run_until(box: Any, argv: list[str], deadline: float, target: str, step: str) -> tuple[str, Optional[int]]:
    """Run `argv` in the sandbox until it ends or the deadline passes (None: stopped at the deadline)."""
    try:
        proc = box.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except SandboxError as exc:
        raise ProviderError("ISOLATION_FAILED", f"target {target}: {exc}") from exc
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            heartbeat({"target": target, "step": step})
            try:
                proc.wait(timeout=min(2.0, max(0.05, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            reader.join(timeout=10)
            return b"".join(chunks).decode("utf-8", "replace"), None
    reader.join(timeout=10)
    return b"".join(chunks).decode("utf-8", "replace"), proc.returncode


def _parse(output: str, run: AmcheckRun, db: str) -> None:
    """pg_amcheck's reports: a header line per problem (`heap table "db.s.t", block B, offset O:`
    or `btree index "db.s.i":`), then its indented message lines."""
    current: Optional[Problem] = None
    for line in output.splitlines():
        m = _HEADER.match(line)
        if m:
            relation = m.group(2)[len(db) + 1:] if m.group(2).startswith(db + ".") else m.group(2)
            current = run.problems.setdefault(relation, Problem(kind=m.group(1), relation=relation))
            if m.group(3) is not None and int(m.group(3)) not in current.blocks:
                current.blocks.append(int(m.group(3)))
            continue
        if current is not None and line.startswith(" ") and line.strip():
            text = line.strip()
            current.messages.append(text)
            b = _BLOCK_IN_TEXT.search(text)
            if b and current.kind == "btree index" and int(b.group(1)) not in current.blocks:
                current.blocks.append(int(b.group(1)))
        elif not line.startswith(" "):
            current = None


def _amcheck_functions(run: AmcheckRun, conn: psycopg.Connection, tables: list[Table], deadline: float, target: str, heap: bool) -> None:
    """Without pg_amcheck: the extension's functions, one relation at a time, each within the budget."""
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
    except psycopg.Error as exc:
        run.unavailable = f"CREATE EXTENSION amcheck failed: {str(exc).strip()}"
        return
    for t in tables:
        for relation, sql in ([(t.qualified, "SELECT blkno, offnum, msg FROM verify_heapam(%s::regclass)")] if heap else []) + [
            (i, "SELECT NULL, NULL, NULL FROM bt_index_check(%s::regclass, true)") for i in t.indexes
        ]:
            left = deadline - time.monotonic()
            if left <= 0:
                run.not_checked.append(relation)
                continue
            heartbeat({"target": target, "step": f"amcheck {relation}"})
            try:
                conn.execute(f"SET statement_timeout = {max(1, int(left * 1000))}")
                rows = conn.execute(sql, (relation if relation != t.qualified else f'"{t.schema}"."{t.name}"',)).fetchall()
            except psycopg.errors.QueryCanceled:
                run.not_checked.append(relation)
                continue
            except psycopg.Error as exc:
                problem = run.problems.setdefault(relation, Problem(kind="btree index" if relation != t.qualified else "heap table", relation=relation))
                problem.messages.append(str(exc).strip())
                b = _BLOCK_IN_TEXT.search(str(exc))
                if b:
                    problem.blocks.append(int(b.group(1)))
                run.checked.append(relation)
                continue
            for blkno, offnum, msg in rows:
                if msg is not None:
                    problem = run.problems.setdefault(relation, Problem(kind="heap table", relation=relation))
                    problem.blocks.append(int(blkno)) if blkno is not None and int(blkno) not in problem.blocks else None
                    problem.messages.append(f"offset {offnum}: {msg}")
            run.checked.append(relation)
    conn.execute("RESET statement_timeout")


def amcheck_findings(run: AmcheckRun, target: str) -> list[Finding]:
    findings = []
    if run.unavailable:
        return [Finding(code="AMCHECK_UNAVAILABLE", could_not_verify=True, target=target,
                        message=f"target {target}: no corruption check could run ({run.unavailable}): install PostgreSQL's "
                        "contrib (amcheck) and pg_amcheck (PostgreSQL 14+) on the worker")]
    for relation, p in sorted(run.problems.items()):
        blocks = ", ".join(str(b) for b in sorted(p.blocks)[:LISTED]) or "unknown"
        first = p.messages[0] if p.messages else "no message"
        findings.append(Finding(code="AMCHECK_CORRUPTION", target=target,
                                message=f"target {target}: {p.kind} {relation} is corrupt (block {blocks}): {first}"))
    if run.failed:
        findings.append(Finding(code="AMCHECK_FAILED", could_not_verify=True, target=target,
                                message=f"target {target}: {run.tool or 'the corruption check'} did not finish: {run.failed}"))
    if run.not_checked:
        shown = ", ".join(run.not_checked[:LISTED]) + (f" and {len(run.not_checked) - LISTED} more" if len(run.not_checked) > LISTED else "")
        findings.append(Finding(code="AMCHECK_BUDGET_EXCEEDED", could_not_verify=True, target=target,
                                message=f"target {target}: {len(run.not_checked)} relations were not checked for corruption "
                                f"within restore.integrity.budget (or what restore.timeout left of it): {shown}; raise them, or restore.jobs"))
    return findings


# ---------------------------------------------------------------------- collations

_COLLATIONS = """
SELECT c.oid::bigint, format('%I.%I', n.nspname, c.collname), c.collversion, pg_collation_actual_version(c.oid)
FROM pg_collation c JOIN pg_namespace n ON n.oid = c.collnamespace
WHERE c.collversion IS NOT NULL AND c.collversion IS DISTINCT FROM pg_collation_actual_version(c.oid)"""

_INDEXES_USING = """
SELECT DISTINCT format('%%I.%%I', n.nspname, ic.relname)
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
WHERE %(oid)s::oid = ANY(i.indcollation::oid[])
   OR i.indexrelid IN (SELECT objid FROM pg_depend WHERE classid = 'pg_class'::regclass
                       AND refclassid = 'pg_collation'::regclass AND refobjid = %(oid)s::oid)
ORDER BY 1"""


def check_collations(admin_dsn: str) -> dict[str, Any]:
    """Recorded against actual collation versions: the database's default (PostgreSQL 15+) and every
    collation with a recorded version; each mismatch with the indexes that depend on it."""
    out: dict[str, Any] = {"database": None, "mismatched": []}
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        if conn.info.server_version >= 150000:
            row = conn.execute("SELECT datname, datcollversion, pg_database_collation_actual_version(oid) "
                               "FROM pg_database WHERE datname = current_database()").fetchone()
            out["database"] = {"name": row[0], "recorded": row[1], "actual": row[2]}
            if row[1] is not None and row[1] != row[2]:
                out["mismatched"].append({"collation": f"the database's default collation ({row[0]})", "recorded": row[1],
                                          "actual": row[2], "indexes": _indexes_using(conn, 100),
                                          "refresh": f'ALTER DATABASE "{row[0]}" REFRESH COLLATION VERSION;'})
        for oid, name, recorded, actual in conn.execute(_COLLATIONS).fetchall():
            out["mismatched"].append({"collation": name, "recorded": recorded, "actual": actual,
                                      "indexes": _indexes_using(conn, oid), "refresh": f"ALTER COLLATION {name} REFRESH VERSION;"})
    return out


def _indexes_using(conn: psycopg.Connection, oid: int) -> list[str]:
    return [r[0] for r in conn.execute(_INDEXES_USING, {"oid": oid}).fetchall()]


def collation_findings(collations: dict[str, Any], target: str) -> list[Finding]:
    findings = []
    for m in collations["mismatched"]:
        reindex = " ".join(f"REINDEX INDEX CONCURRENTLY {i};" for i in m["indexes"][:LISTED])
        more = f" (and {len(m['indexes']) - LISTED} more)" if len(m["indexes"]) > LISTED else ""
        depends = (f"{len(m['indexes'])} indexes depend on it: {', '.join(m['indexes'][:LISTED])}{more}; on the day run {reindex} "
                   f"then {m['refresh']}") if m["indexes"] else f"no index depends on it; run {m['refresh']}"
        findings.append(Finding(code="COLLATION_VERSION_MISMATCH", severity="warning", target=target,
                                message=f"target {target}: collation {m['collation']} was recorded at version {m['recorded']}, "
                                f"this host's libraries provide {m['actual'] or 'none'}: indexes built with it may return wrong rows. {depends}"))
    return findings
