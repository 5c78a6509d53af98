"""Run one check: try it until it passes, fails for good or its timeout passes, and say what it found.

Each check returns PASSED, FAILED or COULD_NOT_VERIFY with details; a check that could not run is
never a pass. Data checks (drdrill/validation/data.py) connect to a restored target's endpoint;
service checks (drdrill/validation/service.py) retry until their deadline, since a restored service
may take a while to start.
"""

from __future__ import annotations

import time

from drdrill.providers.activity_io import ValidateInput
from drdrill.core.models import Finding, ValidationResult
from drdrill.core.progress import heartbeat
from drdrill.core.durations import format_duration
from drdrill.validation.common import CouldNotVerify, Failed, now
from drdrill.validation.data import check_boundary, check_checksum, check_freshness, check_row_count, check_sql, check_volume
from drdrill.validation.service import check_command, check_http, check_tcp


def run_validation(inp: ValidateInput, connect_timeout: float = 10.0) -> ValidationResult:
    v = inp.validation
    result = ValidationResult(
        name=inp.name,
        type=v.type,
        target=getattr(v, "target", None),
        required=v.required,
        outcome="COULD_NOT_VERIFY",
        started=now(),
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
                result.first_passed_at = now()
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
    result.finished = now()
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
