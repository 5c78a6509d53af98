"""Findings from restore tools: pg_restore's and psql's stderr, line by line, into stable codes."""

from __future__ import annotations

import re

from drdrill.core.models import Finding

_CLASSIFY = [
    ("ARCHIVE_UNREADABLE", re.compile(r"(unexpected end of file|could not read (from )?input file|end of file|did not find magic string|input file appears to be a text format dump|could not open input file|corrupt|invalid compressed data|could not find block ID)", re.I)),
    ("MISSING_ROLE", re.compile(r'role "([^"]+)" does not exist', re.I)),
    ("MISSING_EXTENSION", re.compile(r'(extension "([^"]+)" is not available|could not open extension control file[^"]*"([^"]+)")', re.I)),
]


def classify_restore_errors(stderr: str, target: str) -> list[Finding]:
    """Turn pg_restore's stderr into findings with stable codes (one per distinct problem)."""
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
        msg = line.split("error:", 1)[-1].strip() if "error:" in line else line.strip()
        key = (code, msg)
        if key not in findings:
            findings[key] = Finding(code=code, message=f"target {target}: {msg}", target=target)
    return list(findings.values())


