"""Temporal Schedules for drills: `drdrill schedule sync` makes them match the drill files.

- One schedule per drill file with a `schedule:`; id `drdrill-<drill name>`.
- Every schedule drdrill creates carries the memo {"drdrill": "drill"} (or "sweep" for the orphan
  sweep) and {"drdrill_scope": <task queue>}; sync lists, updates and deletes only schedules with
  that memo and its own task queue, never anyone else's.
- The scheduled action starts DrillWorkflow with workflow id '<drill name>' (Temporal appends the
  scheduled time: 'shop-2026-01-01T02:00:00Z') and an empty drill id: the workflow derives its
  drill id from the workflow id ('shop-2026-01-01t02-00-00z').
- The action's memo holds a hash of what the schedule was built from (the drill file's sha256,
  its timing and the task queue); sync updates a schedule only when that hash changed.
- A schedule paused from the CLI stays paused across syncs; `paused: true|false` in the file is
  applied when the file's value changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Optional

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleCalendarSpec,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WorkflowExecutionStatus,
)

from drdrill.providers.activity_io import CoverageCheckInput, CoverageCheckResult, SweepInput, SweepRecord
from drdrill.core.calendar import EVERY_WEEKDAY, Calendar, calendar_of
from drdrill.core.models import DrillResult
from drdrill.providers.spec import DrillInput, DrillSpec, load_spec
from drdrill.core.coverage_policy import COVERAGE_FILE
from drdrill.core.schema import SpecError
from workflows.coverage import CoverageCheckWorkflow
from workflows.drill import DrillWorkflow
from workflows.sweep import OrphanSweepWorkflow

MEMO_KIND = "drdrill"
MEMO_HASH = "drdrill_spec_hash"
MEMO_PAUSED = "drdrill_file_paused"
MEMO_SOURCE = "drdrill_source"
MEMO_SCOPE = "drdrill_scope"  # the task queue: one deployment's sync never touches another's schedules
SWEEP_SCHEDULE_ID = "drdrill-orphan-sweep"
COVERAGE_SCHEDULE_ID = "drdrill-coverage-check"


def schedule_id(name: str) -> str:
    return f"drdrill-{name}"


def drill_spec_of(spec: DrillSpec) -> ScheduleSpec:
    """The Temporal schedule spec of a drill's `schedule:`. A cron line goes to Temporal as written
    (the same line `due_times` reads); a quarterly schedule as the calendar `calendar_of` gives."""
    s = spec.schedule
    assert s is not None
    if s.quarterly is None:
        return ScheduleSpec(cron_expressions=[s.cron], time_zone_name=s.timezone, jitter=s.jitter)  # type: ignore[list-item]
    q = s.quarterly
    comment = f"quarterly: month {q.month} of each quarter, day {q.day}, {q.time} {s.timezone}"
    return ScheduleSpec(calendars=[_temporal_calendar(calendar_of(s), comment)], time_zone_name=s.timezone, jitter=s.jitter)


def _temporal_calendar(cal: Calendar, comment: str) -> ScheduleCalendarSpec:
    if cal.either_day:  # Temporal matches every field: "either day" would need two calendars
        raise ValueError("a calendar whose day of month or day of week suffices has no single Temporal calendar")
    weekdays = {} if cal.days_of_week == EVERY_WEEKDAY else {"day_of_week": [ScheduleRange(d) for d in sorted(cal.days_of_week)]}
    return ScheduleCalendarSpec(
        second=[ScheduleRange(0)],
        minute=[ScheduleRange(m) for m in cal.minutes],
        hour=[ScheduleRange(h) for h in cal.hours],
        day_of_month=[ScheduleRange(d) for d in sorted(cal.days_of_month)],
        month=[ScheduleRange(m) for m in sorted(cal.months)],
        comment=comment,
        **weekdays,
    )


def spec_hash(spec: DrillSpec, task_queue: str) -> str:
    s = spec.schedule
    parts = {
        "source": spec.source_sha256,
        "schedule": s.model_dump(mode="json") if s else None,
        "task_queue": task_queue,
        "version": 1,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def build(spec: DrillSpec, task_queue: str) -> Schedule:
    sid = schedule_id(spec.name)
    s = spec.schedule
    assert s is not None
    return Schedule(
        action=ScheduleActionStartWorkflow(
            DrillWorkflow.run,
            DrillInput(spec=spec, drill_id="", started_by=f"schedule:{sid}"),
            id=spec.name,
            task_queue=task_queue,
            memo={MEMO_HASH: spec_hash(spec, task_queue), MEMO_SOURCE: spec.source_path or "", MEMO_PAUSED: bool(s.paused)},
        ),
        spec=drill_spec_of(spec),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=s.catchup_window),
        state=ScheduleState(paused=s.paused, note="paused in the drill file" if s.paused else "created by drdrill schedule sync"),
    )


# ------------------------------------------------------------------ plan and sync


@dataclass
class Change:
    action: str  # create | update | delete | unchanged
    schedule_id: str
    detail: str = ""


@dataclass
class SyncPlan:
    changes: list[Change] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # What the evidence store records of this sync (EvidenceStore.record_schedule_sync): per drill
    # schedule, its action and when Temporal says it was created.
    synced: list[dict] = field(default_factory=list)

    def of(self, action: str) -> list[str]:
        return [c.schedule_id for c in self.changes if c.action == action]


def drill_files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():  # the coverage policy lives beside the drill files, and is not one
            out += sorted(f for f in list(p.glob("*.yaml")) + list(p.glob("*.yml")) if f.name != COVERAGE_FILE)
        else:
            out.append(p)
    return out


def load_scheduled(paths: list[Path]) -> tuple[dict[str, DrillSpec], list[str]]:
    """{schedule id: spec} for every drill file with a schedule, and the problems found."""
    found: dict[str, DrillSpec] = {}
    problems: list[str] = []
    for f in drill_files(paths):
        try:
            spec = load_spec(f)
        except SpecError as exc:
            problems.append(str(exc))
            continue
        if spec.schedule is None:
            continue
        sid = schedule_id(spec.name)
        if sid in found:
            problems.append(f"{f}: drill name {spec.name!r} is also used by {found[sid].source_path}; schedule ids must be unique")
            continue
        found[sid] = spec
    return found, problems


async def managed(client: Client, kind: str = "drill", scope: Optional[str] = None) -> dict[str, Any]:
    """{schedule id: list description} of the schedules drdrill manages (by memo), in `scope`."""
    out = {}
    async for s in await client.list_schedules():
        try:
            memo = await s.memo()
        except Exception:  # noqa: BLE001 - a memo we cannot decode is not ours
            continue
        if memo.get(MEMO_KIND) == kind and (scope is None or memo.get(MEMO_SCOPE) == scope):
            out[s.id] = s
    return out


def _decode(client: Client, value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    try:
        return client.data_converter.payload_converter.from_payload(value)
    except Exception:  # noqa: BLE001
        return None


async def sync(client: Client, paths: list[Path], task_queue: str, dry_run: bool = False) -> SyncPlan:
    """Create, update and delete drdrill's schedules so they match the drill files. Idempotent.

    A drill file that does not load stops the deletions (its schedule must not vanish because of a typo)."""
    wanted, problems = load_scheduled(paths)
    plan = SyncPlan(problems=problems)
    existing = await managed(client, "drill", task_queue)
    for sid, spec in sorted(wanted.items()):
        new_hash = spec_hash(spec, task_queue)
        handle = client.get_schedule_handle(sid)
        if sid not in existing:
            try:
                desc = await handle.describe()
            except Exception:  # noqa: BLE001 - not found: create it
                desc = None
            if desc is None:
                plan.changes.append(Change("create", sid, f"{spec.source_path}: {_when(spec)}"))
                if not dry_run:
                    await client.create_schedule(
                        sid,
                        build(spec, task_queue),
                        memo={MEMO_KIND: "drill", MEMO_SCOPE: task_queue},
                    )
                continue
            memo = await desc.memo()
            if memo.get(MEMO_KIND) != "drill" or memo.get(MEMO_SCOPE) != task_queue:
                plan.problems.append(
                    f"schedule {sid} exists but was not created by drdrill for task queue {task_queue}: left alone"
                )
                continue
        desc = await handle.describe()
        action = desc.schedule.action
        old_hash = _decode(client, (getattr(action, "memo", None) or {}).get(MEMO_HASH))
        if old_hash == new_hash:
            plan.changes.append(Change("unchanged", sid, _when(spec)))
            continue
        plan.changes.append(Change("update", sid, f"{spec.source_path}: {_when(spec)}"))
        if dry_run:
            continue
        file_paused = bool(spec.schedule.paused)  # type: ignore[union-attr]
        paused_before = bool(_decode(client, (getattr(action, "memo", None) or {}).get(MEMO_PAUSED)))

        def updater(inp: ScheduleUpdateInput) -> ScheduleUpdate:
            new = build(spec, task_queue)
            current = inp.description.schedule.state
            if file_paused == paused_before:  # the file did not change its mind: keep the CLI's pause
                new.state = ScheduleState(paused=current.paused, note=current.note)
            return ScheduleUpdate(schedule=new)

        await handle.update(updater)
    if not problems:
        for sid in sorted(set(existing) - set(wanted)):
            plan.changes.append(Change("delete", sid, "its drill file is gone or has no schedule"))
            if not dry_run:
                await client.get_schedule_handle(sid).delete()
    elif set(existing) - set(wanted):
        plan.problems.append("deletions skipped: fix the drill files above first")
    if not dry_run:
        plan.synced = await _synced(client, plan, wanted)
    return plan


async def _synced(client: Client, plan: SyncPlan, wanted: dict[str, DrillSpec]) -> list[dict]:
    """The sync as the evidence store records it: each drill schedule with its Temporal creation time."""
    out = []
    names = {sid: spec.name for sid, spec in wanted.items()}
    for c in plan.changes:
        row = {"drill": names.get(c.schedule_id, c.schedule_id.removeprefix("drdrill-")), "schedule_id": c.schedule_id,
               "source": wanted[c.schedule_id].source_path if c.schedule_id in wanted else "", "action": c.action, "schedule_created": None}
        if c.action != "delete":
            try:
                row["schedule_created"] = (await client.get_schedule_handle(c.schedule_id).describe()).info.created_at
            except Exception:  # noqa: BLE001 - the sync itself is still recorded
                pass
        out.append(row)
    return out


def _when(spec: DrillSpec) -> str:
    s = spec.schedule
    assert s is not None
    if s.quarterly:
        q = s.quarterly
        when = f"quarterly, month {q.month} of each quarter, day {q.day} at {q.time} {s.timezone}"
    else:
        when = f"cron '{s.cron}' {s.timezone}"
    return when + (" (paused)" if s.paused else "")


# ------------------------------------------------------------------ sweep schedule


async def install_sweep(
    client: Client, task_queue: str, families: list[str], every: timedelta, dry_run: bool = False
) -> str:
    """Create or update the orphan-sweep schedule (OrphanSweepWorkflow every `every`)."""
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            OrphanSweepWorkflow.run, SweepInput(families=families, dry_run=dry_run), id="drdrill-sweep", task_queue=task_queue
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=every),
        state=ScheduleState(note="orphan sweep installed by drdrill"),
    )
    return await _create_or_update(client, SWEEP_SCHEDULE_ID, schedule, memo={MEMO_KIND: "sweep", MEMO_SCOPE: task_queue})


async def _create_or_update(client: Client, schedule_id: str, schedule: Schedule, memo: dict) -> str:
    """Create the schedule, or update it when it exists: "created" or "updated"."""
    handle = client.get_schedule_handle(schedule_id)
    try:
        await handle.describe()
    except Exception:  # noqa: BLE001 - not there yet
        await client.create_schedule(schedule_id, schedule, memo=memo)
        return "created"
    await handle.update(lambda inp: ScheduleUpdate(schedule=schedule))
    return "updated"


# ------------------------------------------------------------------ coverage check schedule


async def install_coverage_check(client: Client, task_queue: str, check: CoverageCheckInput, every: timedelta) -> str:
    """Create or update the coverage-check schedule (CoverageCheckWorkflow every `every`, with the
    drill files and the policy as they are now: run it again after changing them)."""
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(CoverageCheckWorkflow.run, check, id="drdrill-coverage-check", task_queue=task_queue),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=every),
        state=ScheduleState(note=f"coverage check installed by drdrill from {check.source or 'the drill files'}"),
    )
    return await _create_or_update(client, COVERAGE_SCHEDULE_ID, schedule, memo={MEMO_KIND: "coverage", MEMO_SCOPE: task_queue})


# ------------------------------------------------------------------ list


@dataclass
class ScheduleRow:
    schedule_id: str
    kind: str
    paused: bool
    note: str
    next_run: Optional[datetime]
    last_run: Optional[datetime]
    last_workflow_id: Optional[str]
    last_verdict: str


async def rows(client: Client, task_queue: Optional[str] = None) -> list[ScheduleRow]:
    """The schedules drdrill manages with their next and last run and the last run's verdict."""
    out = []
    for kind in ("drill", "sweep", "coverage"):
        for sid in sorted(await managed(client, kind, task_queue)):
            desc = await client.get_schedule_handle(sid).describe()
            info = desc.info
            last = info.recent_actions[-1] if info.recent_actions else None
            wid = getattr(last.action, "workflow_id", None) if last else None
            out.append(
                ScheduleRow(
                    schedule_id=sid,
                    kind=kind,
                    paused=desc.schedule.state.paused,
                    note=desc.schedule.state.note or "",
                    next_run=info.next_action_times[0] if info.next_action_times else None,
                    last_run=last.scheduled_at if last else None,
                    last_workflow_id=wid,
                    last_verdict=await verdict_of(client, wid, kind) if wid else "",
                )
            )
    return out


async def verdict_of(client: Client, workflow_id: str, kind: str = "drill") -> str:
    """PASSED/FAILED/… for a finished drill, 'running (<phase>)' for a running one."""
    result_types = {"sweep": SweepRecord, "coverage": CoverageCheckResult}
    handle = client.get_workflow_handle(workflow_id, result_type=result_types.get(kind, DrillResult))
    try:
        desc = await handle.describe()
    except Exception:  # noqa: BLE001
        return "unknown"
    if desc.status == WorkflowExecutionStatus.RUNNING:
        try:
            st = await handle.query(DrillWorkflow.status)
            return f"running ({st.phase})"
        except Exception:  # noqa: BLE001 - no worker answering
            return "running"
    if desc.status == WorkflowExecutionStatus.COMPLETED and kind == "coverage":
        try:
            return (await handle.result()).summary
        except Exception:  # noqa: BLE001
            return "completed"
    if desc.status == WorkflowExecutionStatus.COMPLETED and kind == "sweep":
        try:
            rec = await handle.result()
            return f"swept: {len(rec.actions)} orphan(s)" + (f", {len(rec.errors)} error(s)" if rec.errors else "")
        except Exception:  # noqa: BLE001
            return "completed"
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        try:
            result = await handle.result()
            return getattr(result, "verdict", None) or "completed"
        except Exception:  # noqa: BLE001
            return "completed"
    return desc.status.name if desc.status else "unknown"
