"""`drdrill sweep`: delete what ended or expired drills left behind, and only that.

Registered by app.cli through `register(app)`.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from datetime import datetime, timezone
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table
from temporalio.client import WorkflowFailureError

from app import output
from app.runtime import EmbeddedBusy, state_dir, temporal
from drdrill.providers.activity_io import SweepAction, SweepInput, SweepRecord
from drdrill.core.redact import redact
from drdrill.evidence.created import created_resources
from drdrill.evidence.record import record_sweep
from drdrill.evidence.embedded import embedded_server
from drdrill.providers import FAMILIES, load_provider
from drdrill.providers.sweep import sweep as do_sweep
from worker import task_queue
from workflows.sweep import OrphanSweepWorkflow

_WIDTH = None if sys.stdout.isatty() else 200
console = output.console(width=_WIDTH)
err = output.console(stderr=True, width=_WIDTH)


def sweep(
    providers: List[str] = typer.Option(["postgres"], "--provider", "-p", help="provider families to sweep"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list orphans, delete nothing"),
    worker: bool = typer.Option(False, "--worker", help="with TEMPORAL_ADDRESS: also run a worker in this process"),
) -> None:
    """Find resources left by ended or expired drills and delete them: only those the evidence
    store records a drill creating (a tagged resource it does not record is refused).

    Runs the OrphanSweepWorkflow, which asks Temporal which drills are running and leaves their
    resources alone. Without Temporal, only resources whose expiry has passed are considered.
    Exits 4 when a deletion failed or was refused, or a provider could not be listed.
    """
    families = _sweep_families(providers)
    try:
        record = asyncio.run(_sweep(families, dry_run, worker or None))
    except WorkflowFailureError as exc:
        err.print(f"the sweep did not finish: {exc.cause or exc}", markup=False)
        raise typer.Exit(4)
    _print_sweep(record)
    if record.errors or any(a.failed for a in record.actions):
        raise typer.Exit(4)


def _sweep_families(providers: List[str]) -> list[str]:
    families = list(dict.fromkeys(providers))
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        err.print(f"--provider {unknown[0]}: unknown provider family; use one of: {', '.join(FAMILIES)}", markup=False)
        raise typer.Exit(2)
    return families


async def _sweep(families: list[str], dry_run: bool, with_worker: Optional[bool]):
    """The sweep's record: from the OrphanSweepWorkflow, or, when Temporal cannot be reached, from
    an in-process sweep that takes only expired resources (it cannot tell which drills run)."""
    sweep_id = f"drdrill-sweep-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"
    reached = False
    try:
        async with temporal(with_worker=with_worker) as client:
            reached = True
            return await client.execute_workflow(
                OrphanSweepWorkflow.run, SweepInput(families=families, dry_run=dry_run), id=sweep_id, task_queue=task_queue()
            )
    except (EmbeddedBusy, RuntimeError) as exc:  # connect and the embedded server raise RuntimeError
        if reached:
            raise
        err.print(
            "Temporal unreachable: only expired resources considered; resources of drills that may "
            f"still be running are left alone ({exc})",
            markup=False,
        )
    return _sweep_expired_only(sweep_id, families, dry_run)


def _sweep_expired_only(sweep_id: str, families: list[str], dry_run: bool):
    """Sweep in this process, counting every drill as running; recorded as evidence like any sweep
    (an embedded evidence server started for that is stopped before this returns)."""
    with embedded_server():
        return _sweep_expired_here(sweep_id, families, dry_run)


def _sweep_expired_here(sweep_id: str, families: list[str], dry_run: bool):
    now = datetime.now(timezone.utc)
    record = SweepRecord(sweep_id=sweep_id, started=now, ended=now, families=families, dry_run=dry_run)
    for family in families:
        provider = None
        try:
            provider = load_provider(family)
            created, why = _created_by_drills(family)
            rows = do_sweep({family: provider}, now=now, dry_run=dry_run, expired_only=True, created=created, why_unknown=why)
        except Exception as exc:  # noqa: BLE001 - one provider out of reach must not hide the others
            record.errors.append(f"{family}: could not list orphans: {exc}")
            continue
        finally:
            if provider is not None:
                provider.close()
        record.actions += [SweepAction(orphan=o, outcome=outcome) for o, outcome in rows]
    record.ended = datetime.now(timezone.utc)
    record.evidence_path = record_sweep(state_dir(), record)
    return record


def _created_by_drills(family: str):
    """{family: what the evidence store records drills creating}, or (None, why): then nothing is deleted."""
    try:
        return {family: created_resources(state_dir(), family)}, ""
    except Exception as exc:  # noqa: BLE001 - the store out of reach: every orphan is refused, saying why
        return None, redact(str(exc)) or type(exc).__name__


def _print_sweep(record) -> None:
    if record.actions:
        table = Table(box=None, header_style="bold")
        for col in ("provider", "kind", "id", "drill", "outcome", "reason"):
            table.add_column(col)
        for a in record.actions:
            o, outcome = a.orphan, a.outcome
            result = outcome.result.replace("_", " ")
            shown = f"[red]{result}[/]" if a.failed else result
            table.add_row(escape(o.provider), escape(o.kind), escape(o.id), escape(o.drill_id), shown, escape(outcome.reason))
        console.print(table)
    else:
        console.print("no orphans")
    for e in record.errors:
        err.print(f"error: {e}", markup=False)
    if record.evidence_path:
        console.print(f"evidence: {record.evidence_path}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
