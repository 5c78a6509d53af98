"""Findings from restore tools: pg_restore's and psql's stderr, line by line, into stable codes."""

from __future__ import annotations

import re

from drdrill.core.models import Finding

_CLASSIFY = [
    ("ARCHIVE_UNREADABLE", re.compile(r"(unexpected end of file|could not read (from )?input file|end of file|did not find magic string|input file appears to be a text format dump|could not open input file|corrupt|invalid compressed data|could not find block ID|could not uncompress data|incorrect data check)", re.I)),
    ("MISSING_ROLE", re.compile(r'role "([^"]+)" does not exist', re.I)),
    ("MISSING_EXTENSION", re.compile(r'(extension "([^"]+)" is not available|could not open extension control file[^"]*"([^"]+)")', re.I)),
]


def classify_restore_errors(stderr: str, target: str) -> list[Finding]:
    """Turn pg_restore's or psql's stderr into findings with stable codes (one per distinct problem)."""
    findings: dict[tuple[str, str], Finding] = {}
    for line in stderr.splitlines():
        low = line.lower()
        if "error" not in low and "fatal" not in low:
            continue
        if "warning: errors ignored on restore" in low:
            continue
        code = "RESTORE_ERROR"
        for c, rx in _CLASSIFY:
            if rx.search(line):
                code = c
                break
        # pg_restore: "pg_restore: error: …"; psql: "psql:<stdin>:42: ERROR:  …"
        msg = re.split(r"error:", line, maxsplit=1, flags=re.I)[-1].strip() if "error:" in low else line.strip()
        key = (code, msg)
        if key not in findings:
            findings[key] = Finding(code=code, message=f"target {target}: {msg}", target=target)
    return list(findings.values())


def exit_code_findings(tool: str, returncode: int, findings: list[Finding], target: str) -> list[Finding]:
    """EXIT_CODE_LIED when a restore tool's exit code disagrees with what its stderr said.

    psql with ON_ERROR_STOP=0 exits 0 after errors (and pg_restore may too), so an exit code alone
    would pass a broken restore: a warning beside the errors that already fail the drill. A tool
    that fails without any error line means something went wrong that nothing names: an error."""
    errors = [f for f in findings if f.severity == "error"]
    if returncode == 0 and errors:
        return [
            Finding(
                code="EXIT_CODE_LIED",
                severity="warning",
                target=target,
                message=f"target {target}: {tool} exited 0 although it reported {len(errors)} error"
                f"{'s' if len(errors) != 1 else ''} ({', '.join(sorted({f.code for f in errors}))}): "
                "a restore judged by its exit code alone would have passed",
            )
        ]
    if returncode != 0 and not errors:
        return [
            Finding(
                code="EXIT_CODE_LIED",
                target=target,
                message=f"target {target}: {tool} exited {returncode} without reporting an error: "
                "the restore failed in a way its output does not name",
            )
        ]
    return []
