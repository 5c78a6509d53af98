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
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowUpdateFailedError

from app import errors
from app import cli_check, cli_coverage, cli_evidence, cli_probe, cli_reference, cli_schedule
from app.approval_sign import DEFAULT_KEY, SigningError, signed_request
from app.demo import DemoUnavailable, sample_pitr_production, sample_production
from app.cli_evidence import print_rows
from app.runtime import EmbeddedBusy, state_dir, temporal
from app.simulate import simulated
from drdrill.core.models import ApprovalRecord, DrillInput, DrillResult, DrillStatus
from drdrill.core.activity_io import SweepAction, SweepInput, SweepRecord
from drdrill.core.paths import default_state_dir
from drdrill.core.redact import redact
from drdrill.core.spec import COVERAGE_FILE, AwareTime, DrillSpec, SpecError, format_duration, load_coverage_policy, load_spec
from drdrill.evidence.created import created_resources
from drdrill.evidence.record import record_sweep
from drdrill.evidence.store import embedded_server
from drdrill.evidence.render import fmt_time
from drdrill.providers import FAMILIES, load_provider
from drdrill.providers.postgres import take_backup
from drdrill.providers.sweep import sweep as do_sweep
from worker import exit_without_finalizing, task_queue
from workflows.drill import DrillWorkflow
from workflows.sweep import OrphanSweepWorkflow

app = typer.Typer(add_completion=False, no_args_is_help=True, help="drdrill: prove your backups restore.")
# Piped output (CI logs, files) is not wrapped at 80 columns: lines stay greppable.
_WIDTH = None if sys.stdout.isatty() else 200
console = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True, width=_WIDTH)

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
    if moment > datetime.now(timezone.utc) and any(t.provider != "sim" for t in spec.targets):
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
    if with_worker or not os.environ.get("TEMPORAL_ADDRESS"):
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
            here = bool(with_worker) or not os.environ.get("TEMPORAL_ADDRESS")
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
            f"{why}: stopped following {handle.id}; it goes on in the Temporal service "
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
        return await watch
    except BrokenPipeError:  # stdout closed while the teardown was shown
        console.file = open(os.devnull, "w")
        return await _result(handle)


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


# ------------------------------------------------------------------ approval gates


KEY_HELP = "your SSH key, which signs the answer: a private key file, or its .pub with ssh-agent (SSH_AUTH_SOCK)"


@app.command()
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


@app.command()
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
        async with temporal(with_worker=False) as client:
            handle = client.get_workflow_handle(drill_id)
            waiting = group
            if waiting is None:  # the signed payload names the group: the one the plan waits before
                gate = (await handle.query(DrillWorkflow.status)).approval
                if gate is None:
                    raise SigningError("the drill is not waiting for approval")
                waiting = gate.group
            request = signed_request(drill_id, waiting, verb, note, key, _user())  # type: ignore[arg-type]
            update = DrillWorkflow.approve if verb == "approve" else DrillWorkflow.reject
            return await handle.execute_update(update, request, result_type=ApprovalRecord)

    done = {"approve": "approved", "reject": "rejected"}[verb]
    try:
        return asyncio.run(go())
    except WorkflowUpdateFailedError as exc:
        err.print(f"{drill_id}: not {done}: {getattr(exc.cause, 'message', None) or exc.cause or exc}", markup=False)
    except Exception as exc:  # noqa: BLE001 - not found, already closed, Temporal unreachable, not signed
        err.print(f"{drill_id}: not {done}: {exc}", markup=False)
    raise typer.Exit(2)


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
    rows: list[dict] = []
    async with temporal(with_worker=False) as client:
        async for wf in client.list_workflows("WorkflowType = 'DrillWorkflow'"):
            verdict, phase = await _verdict_and_phase(client, wf)
            rows.append({"drill_id": wf.id, "verdict": verdict, "phase": phase, "started": wf.start_time, "closed": wf.close_time})
            if len(rows) >= limit:
                break
    return rows


async def _verdict_and_phase(client, wf) -> tuple[str, str]:
    """(RUNNING, its phase: 'queued' while it waits for a concurrency permit) for a running drill;
    (its verdict, '') for a finished one; the workflow's status when it ended without a result."""
    if wf.status == WorkflowExecutionStatus.RUNNING:
        try:
            st = await asyncio.wait_for(client.get_workflow_handle(wf.id).query(DrillWorkflow.status), timeout=5)
            return "RUNNING", st.phase
        except Exception:  # noqa: BLE001 - no worker answering
            return "RUNNING", "?"
    if wf.status == WorkflowExecutionStatus.COMPLETED:
        try:
            result = await client.get_workflow_handle(wf.id, run_id=wf.run_id, result_type=DrillResult).result()
            return result.verdict + (" (SIMULATION)" if result.simulated else ""), ""
        except Exception:  # noqa: BLE001 - a result this version cannot read
            return "COMPLETED", ""
    return (wf.status.name if wf.status else "UNKNOWN"), ""


@app.command()
def cancel(drill_id: str = typer.Argument(..., help="drill id")) -> None:
    """Cancel a running drill; its teardown still runs."""

    async def go():
        async with temporal(with_worker=None) as client:
            await client.get_workflow_handle(drill_id).cancel()

    asyncio.run(go())
    console.print(f"cancellation requested for {drill_id}; the drill tears down and records its evidence")


# ------------------------------------------------------------------ sweep


@app.command()
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


# ------------------------------------------------------------------ demo


@app.command()
def demo(
    keep: bool = typer.Option(False, "--keep", help="keep the sample production database afterwards"),
    pitr: bool = typer.Option(False, "--pitr", help="point-in-time recovery from pgBackRest instead (needs pgbackrest installed)"),
) -> None:
    """Run a complete PostgreSQL drill with nothing installed: embedded Temporal, a sample database, a backup."""
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
