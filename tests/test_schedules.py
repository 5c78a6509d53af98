"""Schedules: `drdrill schedule sync` makes Temporal Schedules match the drill files (create, update,
delete, idempotent, --dry-run), never touches schedules it did not create, keeps a CLI pause; a
triggered schedule runs the drill and `schedule list` shows its verdict."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta
from pathlib import Path

from temporalio.client import (
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    ScheduleSpec,
    WorkflowExecutionStatus,
)
from temporalio.service import RPCError

from app import schedules
from drdrill.evidence.store import open_store
from drdrill.core.models import DrillResult
from drdrill.providers.activity_io import SweepInput
from drdrill.core.operations import drill_id_from_workflow_id
from tests.ops_helpers import pg_drill, service, unique, wait_until
from tests.pg_fixtures import clusters_left, cluster_root, shop_dsn, shop_repo  # noqa: F401


def said(output: str, action: str, sid: str) -> bool:
    """The sync output has a line saying `action` for schedule `sid`."""
    return any(re.search(rf"^\s*{action}\s+{re.escape(sid)}(\s|$)", line) for line in output.splitlines())


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def test_sync_creates_updates_and_removes_schedules_to_match_the_files(temporal_server, tmp_path, shop_repo):
    drills = tmp_path / "drills"
    drills.mkdir()
    quarterly, weekly, manual = unique("quarterly"), unique("weekly"), unique("manual")
    write(drills, quarterly, pg_drill(shop_repo, quarterly, extra="schedule: {quarterly: {month: 2, day: 15, time: '03:30'}, timezone: Europe/Berlin, jitter: 20m, catchup_window: 2h}"))
    write(drills, weekly, pg_drill(shop_repo, weekly, extra='schedule: {cron: "0 4 * * 1"}'))
    write(drills, manual, pg_drill(shop_repo, manual))
    foreign = unique("not-ours")

    async def go():
        async with service(temporal_server.address, tmp_path / "state") as svc:
            c = svc.client
            # Someone else's schedule in the same namespace: sync must never touch it.
            await c.create_schedule(
                foreign,
                Schedule(
                    action=ScheduleActionStartWorkflow("SomethingElse", id=foreign, task_queue=svc.queue),
                    spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(days=1))]),
                ),
            )
            plan = await svc.cli("schedule", "sync", str(drills), "--dry-run")
            assert plan.exit_code == 0, plan.output
            assert said(plan.output, "would create", f"drdrill-{quarterly}") and said(plan.output, "would create", f"drdrill-{weekly}")
            assert manual not in plan.output
            assert await schedules.managed(c, "drill", svc.queue) == {}  # a dry run changes nothing

            out = await svc.cli("schedule", "sync", str(drills))
            assert out.exit_code == 0, out.output
            assert said(out.output, "create", f"drdrill-{quarterly}")

            q = await c.get_schedule_handle(f"drdrill-{quarterly}").describe()
            with open_store() as store:  # the sync is evidence: the period report counts missed drills from it
                since = store.schedule_since()
            assert since[quarterly]["schedule_created"] == q.info.created_at and since[quarterly]["first_sync"] >= q.info.created_at
            assert since[weekly]["schedule_created"] and manual not in since
            cal = q.schedule.spec.calendars[0]
            assert [r.start for r in cal.month] == [2, 5, 8, 11]
            assert [r.start for r in cal.day_of_month] == [15] and [r.start for r in cal.hour] == [3] and [r.start for r in cal.minute] == [30]
            assert q.schedule.spec.time_zone_name == "Europe/Berlin" and q.schedule.spec.jitter == timedelta(minutes=20)
            assert q.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP and q.schedule.policy.catchup_window == timedelta(hours=2)
            assert q.schedule.action.id == quarterly and q.schedule.action.task_queue == svc.queue
            assert q.info.next_action_times and q.info.next_action_times[0].month in (2, 5, 8, 11)
            w = await c.get_schedule_handle(f"drdrill-{weekly}").describe()
            assert w.schedule.spec.cron_expressions == ["0 4 * * 1"] or w.schedule.spec.calendars

            again = await svc.cli("schedule", "sync", str(drills))
            assert "unchanged" in again.output and "create " not in again.output and "update " not in again.output

            # A paused schedule stays paused when its file changes.
            paused = await svc.cli("schedule", "pause", weekly, "--note", "db migration this week")
            assert paused.exit_code == 0, paused.output
            write(drills, weekly, pg_drill(shop_repo, weekly, extra='schedule: {cron: "0 5 * * 2"}'))
            out = await svc.cli("schedule", "sync", str(drills))
            assert said(out.output, "update", f"drdrill-{weekly}") and said(out.output, "unchanged", f"drdrill-{quarterly}")
            w = await c.get_schedule_handle(f"drdrill-{weekly}").describe()
            assert w.schedule.state.paused and w.schedule.state.note == "db migration this week"
            assert "5" in str(w.schedule.spec.cron_expressions or w.schedule.spec.calendars)
            listing = await svc.cli("schedule", "list")
            row = next(line for line in listing.output.splitlines() if f"drdrill-{weekly}" in line)
            assert "paused" in row and "db migration this week" in " ".join(listing.output.split())
            assert foreign not in listing.output
            as_json = {r["schedule_id"]: r for r in json.loads((await svc.cli("schedule", "list", "--json")).output)}
            assert as_json[f"drdrill-{weekly}"]["paused"] is True and foreign not in as_json

            # Removing a file removes its schedule (once the list shows both: visibility is eventual).
            async def both_listed():
                return len(await schedules.managed(c, "drill", svc.queue)) == 2

            await wait_until(both_listed, "both schedules to be listed")
            (drills / f"{quarterly}.yaml").unlink()
            out = await svc.cli("schedule", "sync", str(drills))
            assert said(out.output, "delete", f"drdrill-{quarterly}"), out.output
            try:
                await c.get_schedule_handle(f"drdrill-{quarterly}").describe()
                gone = False
            except RPCError:
                gone = True
            assert gone
            await c.get_schedule_handle(foreign).describe()  # untouched
            unpaused = await svc.cli("schedule", "unpause", weekly, "--note", "migration done")
            assert unpaused.exit_code == 0
            w = await c.get_schedule_handle(f"drdrill-{weekly}").describe()
            assert not w.schedule.state.paused and w.schedule.state.note == "migration done"
            # Clean up this test's schedules.
            (drills / f"{weekly}.yaml").unlink()
            await wait_until(lambda: _listed_only(c, svc.queue, f"drdrill-{weekly}"), "the list to settle")
            out = await svc.cli("schedule", "sync", str(drills))
            assert said(out.output, "delete", f"drdrill-{weekly}")
            await c.get_schedule_handle(foreign).delete()

    asyncio.run(go())


async def _listed_only(client, queue, sid):
    return set(await schedules.managed(client, "drill", queue)) == {sid}


def test_a_triggered_schedule_runs_the_drill(temporal_server, tmp_path, shop_repo, cluster_root):
    drills = tmp_path / "drills"
    drills.mkdir()
    name = unique("scheduled")
    write(drills, name, pg_drill(shop_repo, name, extra="schedule: quarterly"))

    async def go():
        async with service(temporal_server.address, tmp_path / "state") as svc:
            out = await svc.cli("schedule", "sync", str(drills))
            assert out.exit_code == 0, out.output
            out = await svc.cli("schedule", "trigger", name)
            assert out.exit_code == 0, out.output
            handle = svc.client.get_schedule_handle(f"drdrill-{name}")

            async def started():
                desc = await handle.describe()
                return desc.info.recent_actions[-1].action.workflow_id if desc.info.recent_actions else None

            workflow_id = await wait_until(started, "the schedule to start the drill")
            run = svc.client.get_workflow_handle(workflow_id, result_type=DrillResult)
            result = await run.result()

            async def closed():
                return (await run.describe()).status == WorkflowExecutionStatus.COMPLETED

            await wait_until(closed, "the run to be closed")
            listing = await svc.cli("schedule", "list")
            status = await svc.cli("status", workflow_id)
            await handle.delete()
            return workflow_id, result, listing.output, status.output

    workflow_id, result, listing, status = asyncio.run(go())
    assert workflow_id.startswith(f"{name}-")  # Temporal appends the scheduled time
    assert result.verdict == "PASSED", result.findings
    assert result.started_by == f"schedule:drdrill-{name}"
    # The drill id comes from the workflow id, usable in resource names and tags.
    assert result.drill_id == drill_id_from_workflow_id(workflow_id)
    assert all(ch.isalnum() or ch == "-" for ch in result.drill_id) and result.drill_id.startswith(f"{name}-")
    assert (tmp_path / "state" / "runs" / result.drill_id / "evidence.json").exists()
    row = next(line for line in listing.splitlines() if f"drdrill-{name}" in line)
    assert "PASSED" in row and "active" in row
    assert "COMPLETED" in status
    assert result.teardown[0].deleted and clusters_left(cluster_root) == []


def test_schedule_sweep_installs_the_orphan_sweep_once_and_then_updates_it(temporal_server, tmp_path):
    async def go():
        async with service(temporal_server.address, tmp_path / "state") as svc:
            handle = svc.client.get_schedule_handle(schedules.SWEEP_SCHEDULE_ID)
            try:
                first = await svc.cli("schedule", "sweep", "--every", "1h", "--provider", "sim")
                second = await svc.cli("schedule", "sweep", "--every", "30m", "--provider", "sim", "--provider", "postgres", "--dry-run")
                described = await handle.describe()
                args = await svc.client.data_converter.decode(described.schedule.action.args, [SweepInput])
            finally:
                await handle.delete()
            return first, second, described, args[0]

    first, second, described, sweep_input = asyncio.run(go())
    assert first.exit_code == 0 and f"{schedules.SWEEP_SCHEDULE_ID}: created (every 1h: sim)" in first.output, first.output
    assert second.exit_code == 0 and f"{schedules.SWEEP_SCHEDULE_ID}: updated (every 30m: sim, postgres)" in second.output
    # One schedule, as the second command left it.
    assert described.schedule.spec.intervals[0].every == timedelta(minutes=30)
    action = described.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow) and action.workflow == "OrphanSweepWorkflow"
    assert sweep_input == SweepInput(families=["sim", "postgres"], dry_run=True)
