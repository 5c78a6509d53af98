"""The `drdrill` command line.

Exit codes: 0 PASSED, 1 FAILED, 2 bad input (a drill file, an argument, an id that names no drill),
3 COULD_NOT_VERIFY, 4 ERROR (the drill itself broke, or drdrill could not run it: a service
unreachable, the embedded Temporal busy), 130 interrupted: see app/errors.py.
"""

from __future__ import annotations

import asyncio
import errno
import getpass
import json
import os
import secrets
import select
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

import typer
from pydantic import TypeAdapter, ValidationError
from rich.markup import escape
from rich.table import Table
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import CancelledError as TemporalCancelledError

from app import errors, output, queries
from app import cli_approve, cli_check, cli_coverage, cli_evidence, cli_probe, cli_reference, cli_schedule, cli_server, cli_sweep
from app.demo import DemoUnavailable, sample_pitr_production, sample_production
from app.cli_evidence import print_rows
from app.runtime import EmbeddedBusy, NeedsService, temporal, where
from app.simulate import simulated
from drdrill.core.models import DrillResult, DrillStatus
from drdrill.providers.spec import DrillInput, DrillSpec, load_coverage_policy, load_spec
from drdrill.core.paths import default_state_dir
from drdrill.core.redact import redact
from drdrill.core.coverage_policy import COVERAGE_FILE
from drdrill.core.durations import AwareTime, format_duration
from drdrill.core.schema import SpecError
from drdrill.evidence.render import fmt_time
from drdrill.providers.postgres.backup import take_backup
from worker import exit_without_finalizing, task_queue
from workflows.drill import DrillWorkflow

app = typer.Typer(add_completion=False, no_args_is_help=True, help="drdrill: prove your backups restore.")
# Piped output (CI logs, files) is not wrapped at 80 columns: lines stay greppable.
_WIDTH = None if sys.stdout.isatty() else 200
console = output.console(width=_WIDTH)
err = output.console(stderr=True, width=_WIDTH)

EXIT = {"PASSED": 0, "FAILED": 1, "COULD_NOT_VERIFY": 3, "ERROR": 4, "INTERRUPTED": 130}
MARK = {"PASSED": "[green]\\[ok  ][/]", "FAILED": "[red]\\[FAIL][/]", "COULD_NOT_VERIFY": "[yellow]\\[CNV ][/]", "NOT_RUN": "[dim]\\[skip][/]", "ERROR": "[red]\\[ERR ][/]"}
VERDICT_STYLE = {"PASSED": "bold green", "FAILED": "bold red", "COULD_NOT_VERIFY": "bold yellow", "ERROR": "bold red"}


def _load(path: Path) -> DrillSpec:
    """Load a drill file, or exit 2 with its problems; print its warnings (on stderr) before anything runs."""
    try:
        spec = load_spec(path)
    except SpecError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(2)
    _print_warnings(spec)
    return spec


def _print_warnings(spec: DrillSpec) -> int:
    warnings = spec.warnings()
    for warning in warnings:
        err.print(f"warning: {warning}", markup=False)
    return len(warnings)


def new_drill_id(spec: DrillSpec) -> str:
    now = datetime.now(timezone.utc)
    return f"{spec.name}-{now:%Y%m%d%H%M%S}-{secrets.token_hex(2)}"


# ------------------------------------------------------------------ lint


@app.command()
def lint(files: List[Path] = typer.Argument(..., help="drill files to check")) -> None:
    """Check drill files without running them. Problems exit 2; warnings are printed and exit 0."""
    bad = 0
    for f in files:
        if f.name == COVERAGE_FILE:  # the coverage policy beside the drill files: as strict, not a drill
            try:
                load_coverage_policy(f.parent)
                console.print(f"{f}: ok (coverage policy)", markup=False)
            except SpecError as exc:
                bad += 1
                err.print(str(exc), markup=False)
            continue
        try:
            spec = load_spec(f)
        except SpecError as exc:
            bad += 1
            err.print(str(exc), markup=False)
            continue
        warned = _print_warnings(spec)
        note = f", {warned} warning{'s' if warned != 1 else ''}" if warned else ""
        console.print(f"{f}: ok ({len(spec.targets)} targets, {len(spec.validations)} validations{note})", markup=False)
    raise typer.Exit(2 if bad else 0)


# ------------------------------------------------------------------ backup


@app.command()
def backup(drill: Path = typer.Argument(..., help="drill file whose postgres targets to back up")) -> None:
    """Take a backup of each postgres target's source (DSN from the variable named by dsn_env)."""
    spec = _load(drill)
    done = 0
    for t in spec.targets:
        if t.provider != "postgres" or t.source is None or t.source.repository is None:
            continue  # only drdrill's own repository is written by `drdrill backup`: a selection's repositories on their own, dump files and point-in-time sources by their own tools
        if not t.source.dsn_env:
            err.print(f"{drill}: targets.{t.name}.source.dsn_env is not set: name the environment variable holding the source DSN")
            raise typer.Exit(2)
        dsn = os.environ.get(t.source.dsn_env)
        if not dsn:
            err.print(f"{drill}: target {t.name}: environment variable {t.source.dsn_env} is not set (it must hold the source DSN)")
            raise typer.Exit(2)
        try:
            point = take_backup(dsn, t.source.repository, fmt=t.source.format, jobs=t.restore.jobs)
        except Exception as exc:  # noqa: BLE001 - report, never echo the DSN
            err.print(f"target {t.name}: backup failed: {redact(str(exc))}", markup=False)
            raise typer.Exit(4)
        manifest = json.loads((point / "manifest.json").read_text())
        rows = sum(v["rows"] for v in manifest["tables"].values())
        console.print(
            f"target {t.name}: backup {point.name} ({len(manifest['tables'])} tables, {rows} rows, "
            f"{manifest['archive_size']} bytes, consistent at {manifest['consistent_time']})"
        )
        done += 1
    if not done:
        err.print(f"{drill}: no postgres targets to back up")
        raise typer.Exit(2)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def dump(ctx: typer.Context) -> None:
    """pg_dump with the same arguments and output, plus FILE.manifest.json (rows and fingerprints in the
    dump's own snapshot) that drills of path:/s3:/url_env: sources compare the restore with."""
    from drdrill.providers.postgres.dumpmanifest import main as dump_main

    code = dump_main(list(ctx.args))  # `drdrill dump` usually starts in app/entry.py, without this CLI
    raise typer.Exit(code)


# ------------------------------------------------------------------ run


@app.command()
def run(
    drill: Path = typer.Argument(..., help="drill file"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="wait for the verdict (default) or return after starting"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    simulate: bool = typer.Option(False, "--simulate", help="dry-run the plan against the sim provider"),
    drill_id: Optional[str] = typer.Option(None, "--id", help="drill id (default: <name>-<time>-<random>)"),
    worker: bool = typer.Option(False, "--worker", help="with TEMPORAL_ADDRESS: also run a worker in this process"),
    as_of: Optional[str] = typer.Option(
        None,
        "--as-of",
        metavar="TIME",
        help="choose recovery points as if the disaster were declared at TIME (e.g. 2028-01-03T00:00:00Z); "
        "a future TIME only with --simulate",
    ),
) -> None:
    """Run one drill and show its progress; exit 0 only when it PASSED."""
    spec = _load(drill)
    if simulate:
        spec = simulated(spec)
    moment = _as_of(as_of, spec) if as_of is not None else None
    verdict = asyncio.run(_run(spec, drill_id or new_drill_id(spec), wait, as_json, worker or None, moment))
    raise typer.Exit(EXIT.get(verdict, 0) if verdict else 0)


def _as_of(text: str, spec: DrillSpec) -> datetime:
    """`--as-of` as an aware time; a future one only when every target is simulated (a real cloud
    has no recovery points from the future). Bad input exits 2."""
    try:
        moment = TypeAdapter(AwareTime).validate_python(text)
    except ValidationError as exc:
        err.print(f"--as-of {text}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}", markup=False)
        raise typer.Exit(2)
    if moment > datetime.now(timezone.utc) and not all(t.SIMULATED for t in spec.targets):
        err.print(
            f"--as-of {text} is in the future: a real cloud has no recovery points from the future; "
            "use a past time, or add --simulate to dry-run the plan as of that date",
            markup=False,
        )
        raise typer.Exit(2)
    return moment


async def _run(
    spec: DrillSpec, drill_id: str, wait: bool, as_json: bool, with_worker: Optional[bool], as_of: Optional[datetime] = None
) -> Optional[str]:
    mode = where()
    if spec.approve and mode == "one-shot":  # nobody could answer the gate once this command waits at it
        raise NeedsService(f"drill {spec.name} has an approval gate: answering it")
    if not wait and mode == "one-shot":  # the drill would stop with this command's Temporal
        raise NeedsService("drdrill run --no-wait")
    here = bool(with_worker) or mode == "one-shot"  # this process's worker runs the drill
    if here:
        errors.check_evidence_dsn()  # this process's worker records the evidence
    try:
        async with temporal(with_worker=with_worker) as client:
            handle = await client.start_workflow(
                DrillWorkflow.run,
                DrillInput(spec=spec, drill_id=drill_id, started_by=f"cli:{_user()}", as_of=as_of),
                id=drill_id,
                task_queue=task_queue(),
            )
            if not wait:
                console.print(f"started drill {spec.name} as {drill_id}")
                return None
            if as_of is not None and not as_json:
                console.print(f"recovery points chosen as of {as_of.isoformat()}")
            result = await _until_verdict(handle, spec, as_json, worker_here=here)
            if result is None:
                return "INTERRUPTED"
            if as_json:
                print(result.model_dump_json(indent=2))
            return result.verdict
    except EmbeddedBusy as exc:
        err.print(str(exc))
        return "ERROR"


async def _until_verdict(handle, spec: DrillSpec, as_json: bool, worker_here: bool) -> Optional[DrillResult]:
    """The drill's result, followed on the console (quietly with --json).

    Interrupted (Ctrl-C or SIGTERM), or its stdout closed (`drdrill run x.yaml | head`), while this
    process runs the drill's worker, the drill is cancelled and its teardown awaited (and shown,
    unless stdout is gone), so nothing it created is left running, and the cancelled drill's verdict
    is returned. When workers elsewhere run it, the drill goes on and this command stops following
    it (None). A second interrupt stops waiting at once."""
    watch = asyncio.ensure_future(_result(handle) if as_json else follow(handle, spec))
    try:
        await _until_done_or_stdout_closed(watch)
        return watch.result()
    except asyncio.CancelledError:
        why = "interrupted"
    except BrokenPipeError:
        why = "stdout closed"
        console.file = open(os.devnull, "w")  # nothing more can be shown there
    if not worker_here:
        watch.cancel()
        _say(
            f"{why}: stopped following {handle.id}; it goes on in the Temporal service or `drdrill server` "
            f"(drdrill status {handle.id}; drdrill cancel {handle.id})"
        )
        return None
    _say(
        f"{why}: cancelling drill {handle.id}; its teardown runs now (interrupt again to stop "
        "waiting: the teardown then resumes when drdrill next runs on this state directory)"
    )
    await handle.cancel()
    if watch.done() and watch.exception() is not None:  # the follower died on the closed pipe
        watch = asyncio.ensure_future(_result(handle))
    try:
        try:
            return await watch
        except BrokenPipeError:  # stdout closed while the teardown was shown
            console.file = open(os.devnull, "w")
            return await _result(handle)
    except WorkflowFailureError as exc:
        if not isinstance(exc.cause, TemporalCancelledError):
            raise
        _say(f"drill {handle.id} was cancelled while waiting for its permit, before it was declared: nothing was created or recorded")
        return None


async def _until_done_or_stdout_closed(task: asyncio.Future) -> None:
    """Wait for `task`; raise BrokenPipeError as soon as stdout's reader has gone, even while
    nothing is printed (a ten-minute restore prints nothing)."""
    while not task.done():
        await asyncio.wait({task}, timeout=0.5)
        if _stdout_closed():
            raise BrokenPipeError(errno.EPIPE, "stdout closed")
    if isinstance(task.exception(), BrokenPipeError):
        raise BrokenPipeError(errno.EPIPE, "stdout closed")


def _stdout_closed() -> bool:
    """True when stdout is a pipe whose reading end is closed (poll reports POLLERR for it)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)  # POLLERR and POLLHUP are always reported
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _say(line: str) -> None:
    """A line on stderr, which may itself be closed."""
    try:
        err.print(line, markup=False)
    except OSError:
        pass


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001
        return "unknown"


async def _result(handle):
    try:
        return await handle.result()
    except WorkflowFailureError:
        path = Path(default_state_dir()) / "runs" / handle.id / "evidence.json"
        if path.exists():
            return DrillResult.model_validate(json.loads(path.read_text()))
        raise


async def follow(handle, spec: DrillSpec):
    """Print each phase as it completes, then the checks, the objectives and the verdict."""
    shown = 0
    header = queued = False
    asked = None  # the gate whose approval request was printed
    task = asyncio.create_task(_result(handle))
    while True:
        try:
            status = await handle.query(DrillWorkflow.status)
        except Exception:  # noqa: BLE001 - not started yet, or already closed
            status = None
        if status is not None:
            if not header and (status.declared is not None or task.done()):
                console.print(
                    f"drill [bold]{spec.name}[/]  run {handle.id}  declared {status.declared:%H:%M:%SZ}"
                    if status.declared else f"drill {spec.name}  run {handle.id}"
                )
                header = True
            elif not header and status.phase == "queued" and not queued:
                console.print(f"drill {spec.name}  run {handle.id}  queued: waiting for a concurrency permit")
                queued = True
            if header:
                for ev in status.timeline[shown:]:
                    _print_event(ev, status.declared)
                shown = len(status.timeline)
                if status.approval is not None and status.approval.asked != asked:
                    asked = status.approval.asked
                    for line in approval_lines(handle.id, status):
                        console.print(f"  {line}", markup=False)
        if task.done():
            break
        await asyncio.wait({task}, timeout=0.5)
    result = task.result()
    for ev in result.timeline[shown:]:
        _print_event(ev, result.declared)
    print_result(result)
    return result


def _print_event(ev, declared) -> None:
    if ev.phase == "declared" or ev.target is not None:
        return  # per-target events are in the evidence; the console shows phases
    took = ""
    if ev.ended and ev.started and ev.target is None:
        took = format_duration((ev.ended - ev.started).total_seconds())
    who = f"{ev.target}  " if ev.target else ""
    group = (ev.data or {}).get("group")
    phase = f"{group} · {ev.phase}" if group and ev.phase != "group" else ev.phase  # a recovery plan's group
    console.print(f"  {MARK.get(ev.outcome, ev.outcome)} {escape(phase):<16} {who}{escape(ev.detail)}  [dim]{took}[/]")


def print_result(result) -> None:
    if result.validations:
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        table.add_column("check")
        table.add_column("target")
        table.add_column("result")
        table.add_column("detail", overflow="fold")
        for v in result.validations:
            table.add_row(v.name, v.target or "", MARK.get(v.outcome, v.outcome), escape(v.detail))
        console.print(table)
    for g in result.groups:
        rto = format_duration(g.rto_seconds) if g.rto_seconds is not None else "not measured"
        objective = f" (objective {format_duration(g.objective_seconds)})" if g.objective_seconds is not None else ""
        answered = f"  {g.approval.decision} by {g.approval.by}" if g.approval is not None and g.approval.by else (
            f"  approval {g.approval.decision}" if g.approval is not None else ""
        )
        console.print(f"  group {g.group:<12} {MARK.get(g.outcome, g.outcome)} RTO {rto}{objective}{escape(answered)}")
    for f in result.findings:
        style = "red" if f.severity == "error" else "yellow"
        console.print(f"  [{style}]finding {f.code}[/]: {escape(f.message)}")
    parts = []
    for o in result.objectives:
        achieved = format_duration(o.achieved_seconds) if o.achieved_seconds is not None else "not measured"
        colour = "green" if o.outcome == "PASSED" else ("red" if o.outcome == "FAILED" else "yellow")
        parts.append(f"{o.name} [{colour}]{achieved}[/] (objective {format_duration(o.objective_seconds)})")
    console.print("  " + "   ".join(parts))
    where = f"   evidence: {result.evidence_path}" if result.evidence_path else ""
    simulation = " (SIMULATION: restored nothing real, not evidence)" if result.simulated else ""
    console.print(f"  [{VERDICT_STYLE[result.verdict]}]{result.verdict}[/]{simulation}{where}")
    report = Path(result.evidence_path).with_name("report.html") if result.evidence_path else None
    if report is not None and report.exists():  # on this machine (a remote worker keeps its own)
        console.print(f"  report: {report}", markup=False)


# ------------------------------------------------------------------ status, list, cancel


@app.command()
def status(drill_id: str = typer.Argument(..., help="drill id")) -> None:
    """Show a drill's phase (running) or its verdict (finished)."""
    asyncio.run(_status(drill_id))


async def _status(drill_id: str) -> None:
    async with temporal(with_worker=None) as client:
        handle = client.get_workflow_handle(drill_id)
        desc = await handle.describe()
        state = desc.status.name if desc.status else "UNKNOWN"
        line = f"{drill_id}: {state}"
        try:
            st = await handle.query(DrillWorkflow.status)
            line += f", phase {st.phase}" + (f", group {st.group}" if st.group else "") + (f", verdict {st.verdict}" if st.verdict else "")
            for t in st.targets:
                line += f"\n  {t.target:<16} {t.phase:<16} {t.outcome or ''} {t.detail}"
            for text in approval_lines(drill_id, st):
                line += f"\n  {text}"
        except Exception:  # noqa: BLE001 - no worker to answer
            pass
        console.print(line, markup=False)


def approval_lines(drill_id: str, st: DrillStatus) -> list[str]:
    """What a drill waiting at an approval gate asks of its approvers, and how they answer."""
    gate = st.approval
    if gate is None:
        return []
    return [
        f"waiting for approval before group {gate.group} since {gate.asked:%Y-%m-%d %H:%M:%S}Z; "
        f"unanswered at {gate.until:%Y-%m-%d %H:%M:%S}Z the plan stops and the drill tears down",
        f"approvers: {', '.join(gate.approvers)}",
        f'approve: drdrill approve {drill_id} --group {gate.group} --note "…"',
        f'reject:  drdrill reject {drill_id} --note "…"',
    ]


@app.command("list")
def list_runs(
    limit: int = typer.Option(20, help="how many runs"),
    as_json: bool = typer.Option(False, "--json", help="print the runs as JSON"),
) -> None:
    """List recent drills: the verdict of a finished one, the phase of a running one."""
    rows = asyncio.run(_list(limit))
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    print_rows(
        ["drill id", "verdict", "phase", "started", "closed"],
        [[r["drill_id"], r["verdict"].replace("_", " "), r["phase"], fmt_time(r["started"]) if r["started"] else "",
          fmt_time(r["closed"]) if r["closed"] else ""] for r in rows],
    )


async def _list(limit: int) -> list[dict]:
    async with temporal(with_worker=False) as client:
        return await queries.list_runs(client, limit)


@app.command()
def cancel(drill_id: str = typer.Argument(..., help="drill id")) -> None:
    """Cancel a running drill; its teardown still runs."""

    async def go():
        async with temporal(with_worker=None) as client:
            await client.get_workflow_handle(drill_id).cancel()

    asyncio.run(go())
    console.print(f"cancellation requested for {drill_id}; the drill tears down and records its evidence")


# ------------------------------------------------------------------ demo


@app.command()
def demo(
    keep: bool = typer.Option(False, "--keep", help="keep the sample production database afterwards"),
    pitr: bool = typer.Option(False, "--pitr", help="point-in-time recovery from pgBackRest instead (needs pgbackrest installed)"),
) -> None:
    """Run a complete PostgreSQL drill with nothing installed: embedded Temporal, a sample database, a backup."""
    if where() == "server":  # the sample database's DSN lives in this command's environment, not the server's
        err.print(
            "drdrill demo runs one-shot, and a `drdrill server` holds this state directory: stop it, "
            "or run the demo with DRDRILL_STATE_DIR set to another directory",
            markup=False,
        )
        raise typer.Exit(4)
    production = sample_pitr_production if pitr else sample_production
    try:
        with production(console, keep=keep) as spec:
            verdict = asyncio.run(_run(spec, new_drill_id(spec), True, False, None))
    except SpecError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(2)
    except DemoUnavailable as exc:
        err.print(f"drdrill demo --pitr: {exc}", markup=False)
        raise typer.Exit(2)
    raise typer.Exit(EXIT.get(verdict or "ERROR", 4))


# ------------------------------------------------------------------ command groups of their own modules

# Each module's register(app) adds its commands; a new group is one more entry.
COMMAND_GROUPS = [
    cli_check,
    cli_coverage,
    cli_evidence,
    cli_probe,
    cli_reference,
    cli_schedule,
    cli_server,
    cli_sweep,
    cli_approve,
]
for _group in COMMAND_GROUPS:
    _group.register(app)


@app.callback()
def _options(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="also show the log (the Temporal SDK's, tracebacks) on stderr"),
) -> None:
    """drdrill: prove your backups restore."""
    errors.setup_logging(verbose)


def _guarded() -> None:
    """The command, with an ordinary failure (unreachable service, busy state directory, unknown id,
    closed stdout) shown as one line and a documented exit code (app/errors.py), never a traceback."""
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt and CancelledError pass
        raise SystemExit(errors.report(exc)) from None


def main() -> None:
    exit_without_finalizing(_guarded)


if __name__ == "__main__":
    main()
