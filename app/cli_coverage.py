"""CLI: `drdrill coverage` (what was restored in a period, and what never was) and
`drdrill coverage schedule` (alert before the period ends with resources not yet drilled).

Registered by app.cli through `register(app)`.

Exit codes of `drdrill coverage`: 0 when the policy's control is met, 1 when it is not, 3 when it
could not be verified (a provider's inventory could not be read, or nothing protected is known),
2 for bad input.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from drdrill.providers.activity_io import CoverageCheckInput
from app.cli_evidence import command_store
from app import output, queries
from app.runtime import EmbeddedBusy, state_dir, temporal
from drdrill.core.calendar import parse_period
from drdrill.core.durations import parse_duration
from drdrill.core.schema import SpecError
from drdrill.evidence.coverage import current_period, load_drills
from drdrill.evidence.coverage_report import render_coverage
from worker import task_queue

console = output.console()
err = output.console(stderr=True)

coverage_app = typer.Typer(help="Restore coverage: every protected resource, when it was last restored, and what never was.")

EXIT = {"met": 0, "not met": 1, "could not verify": 3}
DEFAULT_DRILLS = Path("drills")


@coverage_app.callback(invoke_without_command=True)
def coverage(
    ctx: typer.Context,
    period: Optional[str] = typer.Option(None, "--period", help="2026Q4, 2026-11 or 2026 (default: the policy's current period)"),
    drills_dir: Path = typer.Option(DEFAULT_DRILLS, "--drills", help="drill files and coverage.yaml"),
    fmt: str = typer.Option("html", "--format", help="html, json or csv"),
    out: Optional[Path] = typer.Option(None, "--out", help="write here (default: <state>/reports/coverage-<period>.<format>; '-' for stdout)"),
) -> None:
    """Every protected resource: last restored when, by which drill, with what verdict; the age of its
    newest recovery point; NEVER_DRILLED, LAST_DRILL_FAILED, NO_RECENT_RECOVERY_POINT."""
    if ctx.invoked_subcommand is not None:
        return
    if fmt not in ("html", "json", "csv"):
        err.print(f"--format {fmt}: use html, json or csv", markup=False)
        raise typer.Exit(2)
    now = datetime.now(timezone.utc)
    try:
        _, policy, _ = load_drills(drills_dir)
    except SpecError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(2)
    period = period or current_period(policy.every, now)[0]
    try:
        parse_period(period)
    except ValueError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(2)
    with command_store() as store:
        report = queries.coverage_report(store, drills_dir, period, now=now)
    text = render_coverage(report, fmt)
    if out is not None and str(out) == "-":
        print(text, end="")
    else:
        out = out or state_dir() / "reports" / f"coverage-{report.period}.{fmt}"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        _print_summary(report)
        console.print(f"report: {out}", markup=False)
    raise typer.Exit(EXIT[report.control["status"]])


def _print_summary(report) -> None:
    s = report.summary
    console.print(f"{report.period}: {s['covered']}/{s['protected']} protected resources restored; {report.control['status']}", markup=False)
    for p in report.providers:
        if not p.read:
            console.print(f"  COULD NOT VERIFY {p.detail}", markup=False)
        elif p.regions:
            console.print(f"  {p.family}: read region{'s' if len(p.regions) > 1 else ''} {', '.join(p.regions)}", markup=False)
    for r in report.not_covered():
        cover = ", ".join(f"{d.drill}/{d.target}" for d in r.drills) or "no drill covers it"
        console.print(f"  {r.status:<16} {r.kind:<12} {r.name or r.id}  {' '.join(r.flags)}  ({cover})", markup=False)
    for p in report.problems:
        err.print(p, markup=False)


@coverage_app.command("schedule")
def schedule(
    drills_dir: Path = typer.Option(DEFAULT_DRILLS, "--drills", help="drill files and coverage.yaml"),
    every: str = typer.Option("1d", "--every", help="how often to check (e.g. 1d, 12h)"),
) -> None:
    """Install (or update) a Temporal Schedule that checks coverage and, when the period ends within
    coverage.alert_before with resources not yet restored, alerts coverage.notify.webhooks_env."""
    from app.schedules import install_coverage_check

    try:
        interval = parse_duration(every)
    except ValueError as exc:
        err.print(f"--every: {exc}", markup=False)
        raise typer.Exit(2)
    try:
        specs, policy, problems = load_drills(drills_dir)
    except SpecError as exc:
        problems = [str(exc)]
    if problems:
        for p in problems:
            err.print(p, markup=False)
        raise typer.Exit(2)
    if not policy.notify.webhooks_env:
        err.print(f"{drills_dir / 'coverage.yaml'}: coverage.notify.webhooks_env is empty: name the variables holding the webhook URLs", markup=False)
        raise typer.Exit(2)
    check = CoverageCheckInput(policy=policy, specs=specs, source=str(drills_dir))

    async def go():
        async with temporal(with_worker=False) as client:
            return await install_coverage_check(client, task_queue(), check, interval)

    try:
        action = asyncio.run(go())
    except EmbeddedBusy as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(4)
    console.print(f"coverage check {action}: every {every}, {len(specs)} drill files, alerts {', '.join(policy.notify.webhooks_env)}", markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(coverage_app, name="coverage")

