"""`drdrill approve` and `drdrill reject`: answer the approval gate a drill's recovery plan waits
at, signed with the approver's SSH key (app/approval_sign.py).

An answer needs a Temporal that stays up: a `drdrill server` on this state directory, or
TEMPORAL_ADDRESS (in one-shot mode, the refusal says so). Registered by app.cli through `register(app)`.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from typing import Optional

import typer
from temporalio.client import WorkflowUpdateFailedError

from app import output, queries
from app.approval_sign import DEFAULT_KEY, SigningError, signed_request
from app.runtime import NeedsService, temporal
from drdrill.core.models import ApprovalRecord

_WIDTH = None if sys.stdout.isatty() else 200
console = output.console(width=_WIDTH)
err = output.console(stderr=True, width=_WIDTH)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001
        return "unknown"


KEY_HELP = "your SSH key, which signs the answer: a private key file, or its .pub with ssh-agent (SSH_AUTH_SOCK)"


def approve(
    drill_id: str = typer.Argument(..., help="drill id"),
    group: Optional[str] = typer.Option(None, "--group", help="the group you approve (refused when the plan waits before another)"),
    note: str = typer.Option("", "--note", help="why: kept in the evidence with your name and the time"),
    key: str = typer.Option(DEFAULT_KEY, "--key", help=KEY_HELP),
) -> None:
    """Approve the gate a drill's recovery plan waits at, signed with your SSH key: its group starts."""
    record = _answer_gate(drill_id, "approve", group, note, key)
    console.print(
        f"{drill_id}: group {record.group} approved by {record.by} at {record.decided:%Y-%m-%d %H:%M:%S}Z; the plan continues", markup=False
    )


def reject(
    drill_id: str = typer.Argument(..., help="drill id"),
    note: str = typer.Option("", "--note", help="why: kept in the evidence with your name and the time"),
    group: Optional[str] = typer.Option(None, "--group", help="the group you reject (refused when the plan waits before another)"),
    key: str = typer.Option(DEFAULT_KEY, "--key", help=KEY_HELP),
) -> None:
    """Reject the gate a drill's recovery plan waits at, signed with your SSH key: the plan ends FAILED and tears down."""
    record = _answer_gate(drill_id, "reject", group, note, key)
    console.print(
        f"{drill_id}: group {record.group} rejected by {record.by} at {record.decided:%Y-%m-%d %H:%M:%S}Z; the plan stops, FAILED, and tears down",
        markup=False,
    )


def _answer_gate(drill_id: str, verb: str, group: Optional[str], note: str, key: str) -> ApprovalRecord:
    """Sign the answer (app/approval_sign.py) and send it (an update: the drill says at once
    whether it took it); exit 2 when it did not."""

    async def go() -> ApprovalRecord:
        async with temporal(with_worker=False, needs_service=f"drdrill {verb}") as client:
            sign = lambda waiting: signed_request(drill_id, waiting, verb, note, key, _user())  # type: ignore[arg-type]  # noqa: E731
            try:
                return await queries.send_answer(client, drill_id, verb, group, sign)
            except LookupError as exc:
                raise SigningError(str(exc)) from None

    done = {"approve": "approved", "reject": "rejected"}[verb]
    try:
        return asyncio.run(go())
    except NeedsService:
        raise  # one line and exit 4 (app/errors.py): the fix is to start a server
    except WorkflowUpdateFailedError as exc:
        err.print(f"{drill_id}: not {done}: {getattr(exc.cause, 'message', None) or exc.cause or exc}", markup=False)
    except Exception as exc:  # noqa: BLE001 - not found, already closed, Temporal unreachable, not signed
        err.print(f"{drill_id}: not {done}: {exc}", markup=False)
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    app.command("approve")(approve)
    app.command("reject")(reject)
