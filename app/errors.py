"""What a user sees when a command cannot do its work: one line and a documented exit code, never a
Python traceback for an ordinary situation. The traceback, when there is one, goes to the log file
(`<state dir>/drdrill.log`) and, with `drdrill --verbose`, to stderr.

Exit codes (README, "Exit codes"):
    0  PASSED (or the command did what was asked)
    1  FAILED
    2  bad input: a drill file, an argument, an id that names no drill
    3  COULD_NOT_VERIFY
    4  ERROR: the drill broke, or drdrill could not run it (Temporal or the evidence database
       unreachable, the embedded Temporal busy with another command, an unexpected error), or
       what was asked needs a Temporal that stays up (a schedule, an approval gate) and none runs:
       "start `drdrill server`, or set TEMPORAL_ADDRESS"
    130 interrupted (Ctrl-C, SIGTERM), or stdout closed, while `drdrill run` follows a drill that
        runs elsewhere (a closed stdout otherwise: click's exit 1, or a cancelled run's verdict;
        141 if it is noticed after click has finished)
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import Optional

import psycopg
from temporalio.service import RPCError, RPCStatusCode

from activities.logs import ContextFilter, TextFormatter
from drdrill.core.paths import default_state_dir
from drdrill.core.redact import RedactingFilter, redact
from drdrill.providers.base import ProviderError
from drdrill.localpg.cluster import ClusterError

BAD_INPUT = 2
ERROR = 4
CLOSED_PIPE = 141
LOG_NAME = "drdrill.log"


def log_path() -> Path:
    return Path(default_state_dir()).expanduser() / LOG_NAME


class _StateDirLog(logging.handlers.RotatingFileHandler):
    """The command's log file in the state directory (10 MB, then three older ones), opened (and its
    directory made) only when a record is written: a command that logs nothing creates nothing."""

    def __init__(self) -> None:
        super().__init__(log_path(), maxBytes=10 * 1024 * 1024, backupCount=3, delay=True, encoding="utf-8")

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


class _OwnWarnings(logging.Filter):
    """On the terminal without --verbose: drdrill's own warnings, one line each (the SDK's
    activity-failure records, with their tracebacks, are for the log file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith(("drdrill", "app", "activities", "workflows", "worker"))


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def setup_logging(verbose: bool) -> None:
    """Every record at DRDRILL_LOG_LEVEL (default INFO) to the log file; on stderr, everything with
    --verbose, else drdrill's own warnings without tracebacks."""
    root = logging.getLogger()
    if getattr(root, "_drdrill_cli", False) or root.handlers:
        return  # set up already, or by a program that runs the CLI inside it (pytest's CliRunner)
    root._drdrill_cli = True  # type: ignore[attr-defined]
    root.setLevel(os.environ.get("DRDRILL_LOG_LEVEL", "INFO").upper())
    to_file = _StateDirLog()
    to_file.setFormatter(TextFormatter())
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s") if verbose else _OneLine())
    if not verbose:
        to_stderr.setLevel(logging.WARNING)
        to_stderr.addFilter(_OwnWarnings())
    for handler in (to_file, to_stderr):
        handler.addFilter(ContextFilter())
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)


def explain(exc: BaseException) -> Optional[tuple[int, str]]:
    """(exit code, one line) for an ordinary situation; None for anything else (a bug)."""
    from app.runtime import EmbeddedBusy, NeedsService  # here, not at the top: runtime imports the worker
    from app.server_file import ServerError

    if isinstance(exc, (EmbeddedBusy, NeedsService, ServerError)):
        return ERROR, str(exc)
    if isinstance(exc, RPCError):
        if exc.status == RPCStatusCode.NOT_FOUND:
            prefix = "workflow not found for ID:"
            if exc.message.startswith(prefix):
                return BAD_INPUT, f"no drill with id {exc.message.removeprefix(prefix).strip()} (drdrill list shows the recent ones)"
            return BAD_INPUT, f"not found: {exc.message}"
        if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            return ERROR, f"Temporal at {_temporal_address()} did not answer: {exc.message}"
        return ERROR, f"Temporal refused the request: {exc.message}"
    if isinstance(exc, RuntimeError) and str(exc).startswith("Failed client connect"):
        return ERROR, (
            f"cannot reach Temporal at {_temporal_address()}: {_reason(str(exc))}; "
            "check TEMPORAL_ADDRESS, or unset it to use the embedded Temporal"
        )
    if isinstance(exc, psycopg.OperationalError):
        where = "the evidence database (DRDRILL_EVIDENCE_DSN)" if os.environ.get("DRDRILL_EVIDENCE_DSN") else "the embedded evidence database"
        return ERROR, f"cannot reach {where}: {_first_line(redact(str(exc)))}"
    if isinstance(exc, ProviderError):  # outside a drill (the demo's sample database, a sweep): its finding code
        return ERROR, f"{exc.code}: {redact(exc.message)}"
    if isinstance(exc, ClusterError):
        return ERROR, f"local PostgreSQL: {_first_line(redact(str(exc)))}"
    if isinstance(exc, BrokenPipeError):
        return CLOSED_PIPE, ""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)) and exc.filename:
        return BAD_INPUT, f"{exc.filename}: {exc.strerror}"
    return None


def check_evidence_dsn() -> None:
    """Before a drill starts with its worker in this process: DRDRILL_EVIDENCE_DSN, when set, must
    answer, else psycopg's OperationalError (one line, exit 4) before anything is created; a drill
    would otherwise run, then wait for its evidence to be recorded, retrying, in silence."""
    dsn = os.environ.get("DRDRILL_EVIDENCE_DSN")
    if dsn:
        psycopg.connect(dsn, connect_timeout=10).close()


def report(exc: BaseException) -> int:
    """Say what went wrong in one line on stderr, log the details, and return the exit code."""
    logging.getLogger("errors").info("the command stopped", exc_info=exc)
    known = explain(exc)
    if known is None:
        logging.getLogger("errors").error("unexpected error", exc_info=exc)
        code, line = ERROR, (
            f"unexpected error: {type(exc).__name__}: {_first_line(redact(str(exc)))} "
            f"(the traceback is in {log_path()}; `drdrill --verbose …` shows it)"
        )
    else:
        code, line = known
    if line:
        try:
            print(f"drdrill: {line}", file=sys.stderr)
        except OSError:
            pass
    return code


def _temporal_address() -> str:
    return os.environ.get("TEMPORAL_ADDRESS") or "the embedded server"


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def _reason(text: str) -> str:
    """The human part of the SDK's connect error ("Connection refused"), else its first line."""
    for marker in ('message: "', "message: '"):
        if marker in text:
            return text.split(marker, 1)[1].split(marker[-1], 1)[0]
    return _first_line(text)
