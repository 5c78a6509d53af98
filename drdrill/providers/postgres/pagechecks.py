"""Page checksums of a physical restore, read before its server starts (`pg_checksums --check`).

A physical restore (pgbackrest, barman, a WAL archive) lays down the backed-up cluster's own data
files. When that cluster has data checksums (pg_controldata: "Data page checksum version" not 0),
`check_page_checksums` runs `pg_checksums --check` on the laid-down directory, in the drill's
sandbox as its uid, read-only, within `restore.integrity.budget`: failures are
PAGE_CHECKSUM_FAILURE naming file and block. Checksums off is DATA_CHECKSUMS_OFF, a warning: a
torn or rotted page would then go unseen by PostgreSQL itself.

pg_checksums reads only a cleanly shut-down cluster; a base backup taken online is not one (its
pg_control says "in production"): then the check is PAGE_CHECKSUMS_AFTER_RECOVERY, and the
integrity checks count the server's own checksum failures (pg_stat_database.checksum_failures)
while amcheck reads every page of the restored relations.

The result goes to a root-owned JSON file beside the data directory, read back by integrity.py
after the server serves (`read_page_checks`), so the recovery code only makes the one call.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from drdrill.core.models import Finding
from drdrill.providers.base import heartbeat
import drdrill.localpg.safefs as safefs
import drdrill.localpg.sandbox as sandbox
from drdrill.localpg.binaries import Binaries
from drdrill.localpg.cluster import install_dirs, sandbox_identity

_FAILED = re.compile(r'checksum verification failed in file "([^"]+)", block (\d+)')
CLEAN_STATES = ("shut down", "shut down in recovery")
LISTED = 10


def record_path(data: Path) -> Path:
    return data.parent / f"{data.name}.pagechecks.json"


def check_page_checksums(target: Any, data: Path, binaries: Binaries) -> None:
    """Check the laid-down data directory `data` (not yet started); the result recorded beside it."""
    record = record_path(data)
    safefs.remove_file(record)
    opts = getattr(getattr(target, "restore", None), "integrity", None)
    if opts is not None and not opts.enabled:
        return
    started = time.monotonic()
    result: dict[str, Any] = {"checked": False}
    ident = sandbox_identity(data)
    box = sandbox.Sandbox(ident, ro=[data, *install_dirs(binaries)]) if ident is not None else None
    control = _run(box, [binaries.tool("pg_controldata"), "-D", str(data)], 60)
    fields = dict(line.split(":", 1) for line in control.stdout.splitlines() if ":" in line)
    version = fields.get("Data page checksum version", "").strip()
    state = fields.get("Database cluster state", "").strip()
    result.update({"checksum_version": version or None, "cluster_state": state or None})
    if not version:
        result["error"] = f"pg_controldata could not read {data}: {control.stderr.strip() or control.stdout.strip()}"
    elif version == "0":
        result["enabled"] = False
    elif state not in CLEAN_STATES:
        result.update({"enabled": True, "after_recovery": True})
    else:
        result["enabled"] = True
        budget = opts.budget.total_seconds() if opts is not None else 1800.0
        heartbeat({"target": getattr(target, "name", ""), "step": "pg_checksums --check"})
        try:
            proc = _run(box, [binaries.tool("pg_checksums"), "--check", "-D", str(data)], budget)
            result.update({"checked": True, "exit_code": proc.returncode,
                           "failures": [{"file": f, "block": int(b)} for f, b in _FAILED.findall(proc.stdout + proc.stderr)]})
            if proc.returncode != 0 and not result["failures"]:
                result["error"] = (proc.stderr.strip().splitlines() or ["exit code " + str(proc.returncode)])[-1]
        except subprocess.TimeoutExpired:
            result["error"] = "the budget (restore.integrity.budget) ran out before pg_checksums finished"
    result["seconds"] = round(time.monotonic() - started, 3)
    safefs.write_file(record, json.dumps(result, sort_keys=True), mode=0o600)


def _run(box: Optional[sandbox.Sandbox], argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    if box is not None:
        return box.run(argv, timeout=timeout)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def read_page_checks(details: dict, target: str) -> tuple[list[Finding], Optional[dict]]:
    """What check_page_checksums recorded for a physical restore (None: not a physical restore)."""
    data = (details.get("server") or {}).get("data") if isinstance(details.get("server"), dict) else None
    if not data:
        return [], None
    try:
        result = json.loads(record_path(Path(data)).read_text())
    except (OSError, ValueError):
        return [], None
    return page_findings(result, target), result


def page_findings(result: dict, target: str) -> list[Finding]:
    if result.get("enabled") is False:
        return [Finding(code="DATA_CHECKSUMS_OFF", severity="warning", target=target,
                        message=f"target {target}: the backed-up cluster has no data checksums (pg_controldata: checksum version 0), so "
                        "neither PostgreSQL nor this drill can tell a rotted or torn page from a good one; enable them "
                        "(initdb --data-checksums, or pg_checksums --enable on a stopped cluster)")]
    failures = result.get("failures") or []
    if failures:
        shown = ", ".join(f"{f['file']} block {f['block']}" + (f" ({f['relation']})" if f.get("relation") else "") for f in failures[:LISTED])
        more = f" and {len(failures) - LISTED} more" if len(failures) > LISTED else ""
        return [Finding(code="PAGE_CHECKSUM_FAILURE", target=target,
                        message=f"target {target}: {len(failures)} pages of the restored data directory fail their checksums: {shown}{more}")]
    if result.get("error"):
        return [Finding(code="PAGE_CHECKSUMS_UNVERIFIED", could_not_verify=True, target=target,
                        message=f"target {target}: the page checksums could not be checked: {result['error']}")]
    return []
