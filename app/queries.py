"""The questions the CLI and the web console both ask (issue 25): which drills ran and how they
ended, what is running now and in which phase, which gates wait for whom, the schedules and their
next runs, coverage, the period report, and whether a run's evidence verifies.

The CLI (app/cli.py, app/cli_schedule.py, app/cli_coverage.py, app/cli_evidence.py) prints these
answers; the console (app/console/) shows them as pages. Neither computes them another way.
Queries on the evidence store read the indexed columns of `runs` (name, declared) with a LIMIT, so
a page costs the same with ten runs or ten thousand; only a run's own page loads its record.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from temporalio.client import Client, WorkflowExecutionStatus

from drdrill.core.calendar import parse_period
from drdrill.evidence.coverage import coverage_for
from drdrill.evidence.period import period_report
from app.schedules import ScheduleRow, managed, rows as schedule_rows_of, schedule_id
from drdrill.core.models import ApprovalRecord, ApprovalRequest, DrillResult, DrillStatus
from drdrill.core.coverage_policy import COVERAGE_FILE
from drdrill.core.durations import parse_duration
from drdrill.core.schema import SpecError
from drdrill.providers.spec import load_spec
from drdrill.evidence.bundle import check_files, write_export
from drdrill.evidence.coverage import CoverageReport, current_period, load_drills
from drdrill.evidence.ledger import check_entry
from drdrill.evidence.store import SCHEMA
from workflows.drill import DrillWorkflow

QUERY_TIMEOUT = 5.0  # a running drill's status query; no worker answering is "?" rather than a hang
DRILLS_QUERY = "WorkflowType = 'DrillWorkflow'"
RUNNING_QUERY = "WorkflowType = 'DrillWorkflow' AND ExecutionStatus = 'Running'"


# ------------------------------------------------------------------ Temporal: runs and their phases


async def list_runs(client: Client, limit: int, query: str = DRILLS_QUERY) -> list[dict]:
    """The newest drills Temporal knows: id, verdict (RUNNING for a running one), phase, start and close."""
    rows: list[dict] = []
    async for wf in client.list_workflows(query, limit=limit):
        verdict, phase = await verdict_and_phase(client, wf)
        rows.append({"drill_id": wf.id, "verdict": verdict, "phase": phase, "started": wf.start_time, "closed": wf.close_time})
        if len(rows) >= limit:
            break
    return rows


async def verdict_and_phase(client: Client, wf) -> tuple[str, str]:
    """(RUNNING, its phase: 'queued' while it waits for a concurrency permit) for a running drill;
    (its verdict, '') for a finished one; the workflow's status when it ended without a result."""
    if wf.status == WorkflowExecutionStatus.RUNNING:
        try:
            st = await asyncio.wait_for(client.get_workflow_handle(wf.id).query(DrillWorkflow.status), timeout=QUERY_TIMEOUT)
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


async def running_now(client: Client, limit: int = 50) -> list[dict]:
    """Drills running now, each with its status (None when no worker answers): phase, targets, gate."""
    found = []
    async for wf in client.list_workflows(RUNNING_QUERY, limit=limit):
        found.append(wf)
        if len(found) >= limit:
            break
    statuses = await asyncio.gather(*(status_of(client, wf.id) for wf in found))  # at once: a silent worker costs one timeout
    return [{"drill_id": wf.id, "started": wf.start_time, "status": st} for wf, st in zip(found, statuses)]


async def status_of(client: Client, drill_id: str) -> Optional[DrillStatus]:
    try:
        return await asyncio.wait_for(client.get_workflow_handle(drill_id).query(DrillWorkflow.status), timeout=QUERY_TIMEOUT)
    except Exception:  # noqa: BLE001 - not started yet, closed without a worker, or no worker answering
        return None


@dataclass
class RunState:
    """A drill as Temporal sees it: its workflow status and, while a worker answers, its DrillStatus."""

    drill_id: str
    state: str  # RUNNING, COMPLETED, FAILED, CANCELED, TERMINATED, TIMED_OUT, UNKNOWN
    status: Optional[DrillStatus] = None
    found: bool = True


async def run_state(client: Client, drill_id: str) -> RunState:
    """`drdrill status ID`: the workflow's state and the drill's own status (phase, targets, gate)."""
    handle = client.get_workflow_handle(drill_id)
    try:
        desc = await handle.describe()
    except Exception:  # noqa: BLE001 - no such workflow
        return RunState(drill_id, "UNKNOWN", None, found=False)
    state = desc.status.name if desc.status else "UNKNOWN"
    return RunState(drill_id, state, await status_of(client, drill_id))


async def gates_waiting(client: Client, limit: int = 50) -> list[dict]:
    """Every running drill whose recovery plan waits at an approval gate: which group, since when,
    until when, and whom it waits for."""
    return [
        {"drill_id": r["drill_id"], "name": r["status"].name, "gate": r["status"].approval}
        for r in await running_now(client, limit)
        if r["status"] is not None and r["status"].approval is not None
    ]


async def send_answer(client: Client, drill_id: str, verb: str, group: Optional[str], sign: Callable[[str], ApprovalRequest]) -> ApprovalRecord:
    """Answer the gate a drill waits at: `sign(group)` makes the signed request (the CLI with the
    person's SSH key, the console with its own key on their behalf); the update says at once
    whether the drill took it (WorkflowUpdateFailedError with the refusal's code otherwise)."""
    handle = client.get_workflow_handle(drill_id)
    waiting = group
    if waiting is None:  # the signed payload names the group: the one the plan waits before
        gate = (await handle.query(DrillWorkflow.status)).approval
        if gate is None:
            raise LookupError("the drill is not waiting for approval")
        waiting = gate.group
    request = await asyncio.to_thread(sign, waiting)
    update = DrillWorkflow.approve if verb == "approve" else DrillWorkflow.reject
    return await handle.execute_update(update, request, result_type=ApprovalRecord)


# ------------------------------------------------------------------ Temporal: schedules


async def schedule_rows(client: Client, task_queue: Optional[str]) -> list[ScheduleRow]:
    """The schedules drdrill manages for this task queue, with next and last run (app/schedules.py)."""
    return await schedule_rows_of(client, task_queue)


@dataclass
class NextRun:
    schedule_id: str
    paused: bool
    next_run: Optional[datetime]


async def next_runs(client: Client, task_queue: Optional[str]) -> dict[str, NextRun]:
    """{schedule id: paused, next run} of the drill schedules, from Temporal's schedule list alone
    (one call; schedule_rows describes each schedule and its last run, for the Schedules page)."""
    out = {}
    for sid, s in (await managed(client, "drill", task_queue)).items():
        info, sched = getattr(s, "info", None), getattr(s, "schedule", None)
        times = list(getattr(info, "next_action_times", None) or [])
        paused = bool(getattr(getattr(sched, "state", None), "paused", False))
        out[sid] = NextRun(sid, paused, times[0] if times else None)
    return out


def schedule_handle_id(name: str) -> str:
    """A drill name or a schedule id, as the schedule's id."""
    return name if name.startswith("drdrill-") else schedule_id(name)


async def schedule_action(client: Client, sid: str, op: str, note: Optional[str] = None) -> None:
    """Pause, unpause or trigger one schedule (`drdrill schedule pause|unpause|trigger`)."""
    handle = client.get_schedule_handle(sid)
    if op == "pause":
        await handle.pause(note=note or "paused with drdrill schedule pause")
    elif op == "unpause":
        await handle.unpause(note=note or "unpaused with drdrill schedule unpause")
    elif op == "trigger":
        await handle.trigger()
    else:
        raise ValueError(f"{op}: not a schedule action (pause, unpause, trigger)")


# ------------------------------------------------------------------ the drills directory


@dataclass
class DrillFile:
    """One drill file as the console lists it (read again only when the file changes)."""

    path: str
    name: str
    fleet: bool = False  # a target selects resources (select:) rather than naming one
    rto_seconds: Optional[float] = None
    rpo_seconds: Optional[float] = None
    schedule: str = ""
    gates: list[str] = field(default_factory=list)
    problem: str = ""


_DRILL_CACHE: dict[str, tuple[float, DrillFile]] = {}


def drill_files(drills_dir: Optional[Path]) -> list[DrillFile]:
    """Every drill file in the drills directory (coverage.yaml aside), loaded strictly when it can
    be, else read as YAML for its name, objectives and schedule, with the problem named."""
    if drills_dir is None or not Path(drills_dir).is_dir():
        return []
    out = []
    for path in sorted(list(Path(drills_dir).glob("*.yaml")) + list(Path(drills_dir).glob("*.yml"))):
        if path.name == COVERAGE_FILE:
            continue
        mtime = path.stat().st_mtime
        cached = _DRILL_CACHE.get(str(path))
        if cached is None or cached[0] != mtime:
            cached = (mtime, _read_drill_file(path))
            _DRILL_CACHE[str(path)] = cached
        out.append(cached[1])
    return out


def _read_drill_file(path: Path) -> DrillFile:
    try:
        spec = load_spec(path)
    except SpecError as exc:
        return _loose_drill_file(path, str(exc).splitlines()[0])
    s = spec.schedule
    when = ""
    if s is not None:
        when = (f"quarterly, month {s.quarterly.month} day {s.quarterly.day} {s.quarterly.time}" if s.quarterly else f"cron {s.cron}")
        when += f" {s.timezone}" + (" (paused in the file)" if s.paused else "")
    return DrillFile(
        path=str(path), name=spec.name, fleet=any(getattr(t, "select", None) for t in spec.targets),
        rto_seconds=spec.objectives.rto.total_seconds(), rpo_seconds=spec.objectives.rpo.total_seconds(),
        schedule=when, gates=[g.before for g in spec.approve],
    )


def _loose_drill_file(path: Path, problem: str) -> DrillFile:
    """A drill file that does not load here (an unset ${VAR}, say): what its YAML says, and why."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except Exception:  # noqa: BLE001 - not even YAML
        data = {}
    data = data if isinstance(data, dict) else {}
    obj = data.get("objectives") if isinstance(data.get("objectives"), dict) else {}

    def seconds(v: Any) -> Optional[float]:
        try:
            return parse_duration(str(v)).total_seconds() if v else None
        except ValueError:
            return None

    targets = data.get("targets") if isinstance(data.get("targets"), list) else []
    return DrillFile(
        path=str(path), name=str(data.get("name") or path.stem), rto_seconds=seconds(obj.get("rto")), rpo_seconds=seconds(obj.get("rpo")),
        fleet=any(isinstance(t, dict) and t.get("select") for t in targets), schedule="see the file" if data.get("schedule") else "",
        problem=problem,
    )


# ------------------------------------------------------------------ the evidence store


RUN_COLUMNS = "drill_id, name, verdict, declared, ended, started_by, rto_seconds, rpo_seconds, record_hash, chain_head"


def _run_dict(row: tuple) -> dict:
    keys = [k.strip() for k in RUN_COLUMNS.split(",")]
    return dict(zip(keys, row))


def recent_runs(store: Any, limit: int = 50, name: Optional[str] = None) -> list[dict]:
    """The newest runs in the evidence store (indexed columns only: no record is parsed)."""
    where, args = ("WHERE name = %s", (name, limit)) if name else ("", (limit,))
    with store.conn.transaction():
        rows = store.conn.execute(
            f"SELECT {RUN_COLUMNS} FROM {SCHEMA}.runs {where} ORDER BY declared DESC, drill_id DESC LIMIT %s", args
        ).fetchall()
    return [_run_dict(r) for r in rows]


def runs_by_drill(store: Any, names: list[str], per_drill: int = 12) -> dict[str, list[dict]]:
    """{drill name: its newest `per_drill` runs, newest first}: one query on the (name, declared) index."""
    if not names:
        return {}
    cols = ", ".join(f"r.{c.strip()}" for c in RUN_COLUMNS.split(","))
    with store.conn.transaction():
        rows = store.conn.execute(
            f"""SELECT {cols} FROM unnest(%s::text[]) AS n(name)
                CROSS JOIN LATERAL (SELECT {RUN_COLUMNS} FROM {SCHEMA}.runs WHERE runs.name = n.name
                                    ORDER BY declared DESC LIMIT %s) AS r""",
            (names, per_drill),
        ).fetchall()
    out: dict[str, list[dict]] = {n: [] for n in names}
    for row in rows:
        d = _run_dict(row)
        out[d["name"]].append(d)
    return out


def count_runs(store: Any) -> int:
    with store.conn.transaction():
        return store.conn.execute(f"SELECT count(*) FROM {SCHEMA}.runs").fetchone()[0]


def trend_points(runs_newest_first: list[dict], rto_objective: Optional[float], rpo_objective: Optional[float]) -> list[dict]:
    """A drill's runs as the points drdrill.evidence.period.trend_svg draws: oldest first, each measured against the objective."""
    points = []
    for r in reversed(runs_newest_first):
        point = {"drill_id": r["drill_id"], "declared": r["declared"].isoformat() if r["declared"] else None}
        for which, objective in (("rto", rto_objective), ("rpo", rpo_objective)):
            achieved = r.get(f"{which}_seconds")
            point[f"{which}_seconds"] = achieved
            point[f"{which}_objective_seconds"] = objective
            point[f"{which}_outcome"] = None if achieved is None or objective is None else ("PASSED" if achieved <= objective else "FAILED")
        points.append(point)
    return points


@dataclass
class Verification:
    """Whether one run's evidence verifies: its hash chain, its signed log entry, its evidence.json."""

    drill_id: str
    ok: bool
    lines: list[str]


def entry_problem(store: Any, run: str, keys: dict[str, str]) -> Optional[str]:
    """One run's signed log entry: present, signed by a trusted key, for the record stored."""
    try:
        doc = store.load(run)
    except KeyError:
        return None  # store.verify says so
    entry = doc.get("log_entry")
    if entry is None:
        return f"run {run}: not in the signed log"
    problem, payload = check_entry(entry, keys)
    if problem:
        return problem
    if payload.get("record_hash") != doc.get("record_hash"):
        return f"log entry {entry['seq']} (run {run}): the stored run differs from the signed entry"
    return None


def verify_run(store: Any, state_dir: Path, run: str, keys: dict[str, str]) -> Verification:
    """`drdrill evidence verify RUN`: the run's chain, its signed entry and its file on disk."""
    results = store.verify(run)
    problem = entry_problem(store, run, keys)
    stored = {r.drill_id: store.load(r.drill_id) for r in results if r.ok}
    problems = ([problem] if problem else []) + check_files(state_dir, stored, every=False)
    lines = [r.message for r in results] + problems
    return Verification(run, all(r.ok for r in results) and not problems, lines)


def export_run(store: Any, run: str, out: Path) -> tuple[dict, list[Path], Any, Optional[dict], Optional[dict]]:
    """`drdrill evidence export RUN`: the run's document, the bundle's files, the run's verification,
    its log entry and the anchored head. KeyError when the store holds no such run."""
    doc = store.load(run)
    (result,) = store.verify(run)
    entry, head = doc.get("log_entry"), store.log_head()
    log = store.log_between(entry["seq"], head["seq"]) if entry and head else []
    return doc, write_export(doc, log, out), result, entry, head


def coverage_report(store: Any, drills_dir: Path, period: Optional[str] = None, now: Optional[datetime] = None) -> CoverageReport:
    """`drdrill coverage`: the period (default: the policy's current one) of the drill files in `drills_dir`.
    SpecError for a coverage.yaml that does not load; ValueError for a period that is not one."""
    now = now or datetime.now(timezone.utc)
    _, policy, _ = load_drills(drills_dir)
    period = period or current_period(policy.every, now)[0]
    start, end = parse_period(period)
    return coverage_for(store, drills_dir, period, start, end, now=now)


def period_report_data(store: Any, period: str, drills_dir: Optional[Path], drill: Optional[str] = None,
                       schedule_created: Optional[dict[str, datetime]] = None) -> dict:
    """`drdrill report --period`: everything the period report shows (drdrill/evidence/period.py)."""
    return period_report(store, period, drill=drill, drills_dir=drills_dir, schedule_created=schedule_created)
