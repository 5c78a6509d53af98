"""CLI commands for operating drills: `drdrill schedule …`, `drdrill release`, `drdrill extend`.

Registered by app.cli through `register(app)`. They talk to the Temporal service named by
TEMPORAL_ADDRESS, or the `drdrill server` of the state directory, or the one-shot embedded one
(app/runtime.py), where `schedule sync`, `trigger` and `sweep` are refused: nothing would fire them.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from app import output, queries, schedules
from app.cli_evidence import command_store
from app.runtime import EmbeddedBusy, NeedsService, temporal
from app.schedules import SWEEP_SCHEDULE_ID, schedule_id
from drdrill.core.durations import parse_duration
from worker import task_queue
from workflows.drill import DrillWorkflow

console = output.console()
err = output.console(stderr=True)

schedule_app = typer.Typer(no_args_is_help=True, help="Temporal Schedules for drill files (quarterly or cron).")


def _client_ctx(needs_service: Optional[str] = None):
    """A client of the Temporal that holds the schedules. A schedule fires only while Temporal runs:
    what creates or fires one (`needs_service`) is refused in one-shot mode (app/runtime.py)."""
    return temporal(with_worker=False, needs_service=needs_service)


def _run(coro):
    try:
        return asyncio.run(coro)
    except EmbeddedBusy as exc:
        err.print(str(exc))
        raise typer.Exit(4)


def _fmt(t) -> str:
    return f"{t:%Y-%m-%d %H:%M}Z" if t else "-"


@schedule_app.command("sync")
def sync_cmd(
    paths: List[Path] = typer.Argument(..., help="drill files or directories of them"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, change nothing"),
) -> None:
    """Create, update and delete schedules so they match every drill file with a `schedule`."""
    async def go():
        async with _client_ctx(None if dry_run else "drdrill schedule sync") as client:
            return await schedules.sync(client, paths, task_queue(), dry_run=dry_run)

    plan = _run(go())
    verb = {"create": "create", "update": "update", "delete": "delete", "unchanged": "unchanged"}
    for c in plan.changes:
        prefix = "would " if dry_run and c.action != "unchanged" else ""
        colour = {"create": "green", "update": "yellow", "delete": "red"}.get(c.action, "dim")
        console.print(f"  [{colour}]{prefix}{verb[c.action]:<9}[/] {c.schedule_id}  [dim]{escape(c.detail)}[/]")
    if not plan.changes:
        console.print("  no drill files with a schedule, and no schedules to remove")
    for p in plan.problems:
        err.print(p, markup=False)
    if plan.synced:
        _record_sync(plan.synced)
    raise typer.Exit(2 if plan.problems else 0)


def _record_sync(rows: list[dict]) -> None:
    """Keep the sync in the evidence store: the period report counts missed drills only from the
    time a schedule provably existed (drdrill/evidence/period.py)."""
    try:
        with command_store() as store:
            store.record_schedule_sync(rows)
    except Exception as exc:  # noqa: BLE001 - the schedules are synced; say what was not recorded
        err.print(f"warning: this sync was not recorded in the evidence store ({exc}): "
                  "the period report cannot count missed drills before the next recorded sync", markup=False)


@schedule_app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="print the schedules as JSON")) -> None:
    """Schedules drdrill manages: next run, last run and its verdict, paused state and note."""
    async def go():
        async with _client_ctx() as client:
            return await queries.schedule_rows(client, task_queue())

    rows = _run(go())
    if as_json:
        print(json.dumps([asdict(r) for r in rows], indent=2, default=str))
        return
    if not rows:
        console.print("no schedules (run `drdrill schedule sync drills/`)")
        return
    table = Table(box=None, header_style="bold")
    table.add_column("schedule", no_wrap=True, min_width=max(len(r.schedule_id) for r in rows))
    for col in ("next run", "last run", "last verdict", "state"):
        table.add_column(col)
    table.add_column("note", overflow="fold")
    table.add_column("last drill", overflow="fold")
    for r in rows:
        table.add_row(
            r.schedule_id,
            "-" if r.paused else _fmt(r.next_run),
            _fmt(r.last_run),
            r.last_verdict or "-",
            "paused" if r.paused else "active",
            escape(r.note),
            r.last_workflow_id or "",
        )
    # Piped (grep, CI logs): no terminal width to respect, keep each schedule on one line.
    wide = output.console(soft_wrap=False, width=shutil.get_terminal_size().columns if sys.stdout.isatty() else 200)
    wide.print(table)


def _handle_id(name: str) -> str:
    if name.startswith("drdrill-") or name == SWEEP_SCHEDULE_ID:
        return name
    return schedule_id(name)


def _schedule_op(name: str, op: str, note: Optional[str]) -> None:
    sid = _handle_id(name)

    async def go():
        async with _client_ctx("drdrill schedule trigger" if op == "trigger" else None) as client:
            await queries.schedule_action(client, sid, op, note)

    try:
        _run(go())
    except (typer.Exit, NeedsService):
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. not found
        err.print(f"schedule {sid}: {exc}", markup=False)
        raise typer.Exit(2)
    console.print(f"{sid}: {op}d" if op != "trigger" else f"{sid}: triggered; `drdrill list` shows the run")


@schedule_app.command("pause")
def pause_cmd(
    name: str = typer.Argument(..., help="drill name or schedule id"),
    note: Optional[str] = typer.Option(None, "--note", "-n", help="why (shown by `schedule list`)"),
) -> None:
    """Pause a drill's schedule (sync keeps it paused)."""
    _schedule_op(name, "pause", note)


@schedule_app.command("unpause")
def unpause_cmd(
    name: str = typer.Argument(..., help="drill name or schedule id"),
    note: Optional[str] = typer.Option(None, "--note", "-n", help="why (shown by `schedule list`)"),
) -> None:
    """Unpause a drill's schedule."""
    _schedule_op(name, "unpause", note)


@schedule_app.command("trigger")
def trigger_cmd(name: str = typer.Argument(..., help="drill name or schedule id")) -> None:
    """Run a scheduled drill now (through its schedule: it shows as the schedule's last run)."""
    _schedule_op(name, "trigger", None)


@schedule_app.command("sweep")
def sweep_schedule_cmd(
    providers: List[str] = typer.Option(["postgres"], "--provider", "-p", help="provider families to sweep"),
    every: str = typer.Option("1h", "--every", help="how often, e.g. 1h, 30m"),
    dry_run: bool = typer.Option(False, "--dry-run", help="sweeps only list orphans (recorded), delete nothing"),
) -> None:
    """Install (or update) the scheduled orphan sweep (OrphanSweepWorkflow)."""
    try:
        interval = parse_duration(every)
    except ValueError as exc:
        err.print(f"--every: {exc}")
        raise typer.Exit(2)

    async def go():
        async with _client_ctx("drdrill schedule sweep") as client:
            return await schedules.install_sweep(client, task_queue(), list(providers), interval, dry_run=dry_run)

    what = _run(go())
    console.print(f"{schedules.SWEEP_SCHEDULE_ID}: {what} (every {every}: {', '.join(providers)})")


# ------------------------------------------------------------------ hold: release and extend


def release_cmd(drill_id: str = typer.Argument(..., help="drill id (workflow id)")) -> None:
    """End a drill's hold for inspection now: it tears down."""

    async def go():
        async with _client_ctx() as client:
            await client.get_workflow_handle(drill_id).signal(DrillWorkflow.release)

    _signal(go, drill_id)
    console.print(f"{drill_id}: released; it tears down now")


def extend_cmd(
    drill_id: str = typer.Argument(..., help="drill id (workflow id)"),
    duration: str = typer.Argument(..., help="how much longer to hold, e.g. 30m (bounded by teardown.max_hold)"),
) -> None:
    """Hold a drill's environment longer (never past teardown.max_hold)."""
    try:
        seconds = parse_duration(duration).total_seconds()
    except ValueError as exc:
        err.print(f"DURATION: {exc}")
        raise typer.Exit(2)

    async def go():
        async with _client_ctx() as client:
            handle = client.get_workflow_handle(drill_id)
            await handle.signal(DrillWorkflow.extend, seconds)
            try:
                return await handle.query(DrillWorkflow.status)
            except Exception:  # noqa: BLE001 - no worker answering right now
                return None

    st = _signal(go, drill_id)
    until = f"; held until {st.hold_until:%Y-%m-%d %H:%M:%S}Z" if st is not None and st.hold_until else ""
    console.print(f"{drill_id}: extended by {duration}{until}")


def _signal(go, drill_id: str):
    try:
        return _run(go())
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - not found, already closed
        err.print(f"{drill_id}: {exc}", markup=False)
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    app.add_typer(schedule_app, name="schedule")
    app.command("release")(release_cmd)
    app.command("extend")(extend_cmd)
