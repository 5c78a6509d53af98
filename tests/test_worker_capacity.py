"""A worker's capacity settings (worker.py `capacity()`, docs/deploy.md "Worker settings"): read
from the environment, bad values refused with the variable and the fix, and a worker started with
them (two replicas, both sandbox modes) runs sim drills to their verdict against a real Temporal."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import pytest
from temporalio.worker import PollerBehaviorAutoscaling, PollerBehaviorSimpleMaximum

from drdrill.providers.sim.provider import SimProvider
from tests.sim_harness import REPO, WorkerProcess, final_result, leaked, sim_yaml, spec_of, start, wait_until
from worker import Capacity, FastSandboxRunner, WorkerSettingError, capacity, connect, running_worker


def test_capacity_is_read_from_the_environment():
    c = capacity({
        "DRDRILL_MAX_ACTIVITIES": "20", "DRDRILL_MAX_WORKFLOW_TASKS": "8", "DRDRILL_MAX_CACHED_WORKFLOWS": "0",
        "DRDRILL_WORKFLOW_POLLERS": "autoscale:2:40", "DRDRILL_ACTIVITY_POLLERS": "3", "DRDRILL_WORKFLOW_SANDBOX": "Isolated",
    })
    assert (c.max_activities, c.max_workflow_tasks, c.max_cached_workflows, c.sandbox) == (20, 8, 0, "isolated")
    assert c.workflow_pollers == PollerBehaviorAutoscaling(minimum=2, maximum=40, initial=5)
    assert c.activity_pollers == PollerBehaviorSimpleMaximum(maximum=3)
    assert capacity({}) == Capacity()


def test_the_worker_runs_workflows_in_the_sandbox_without_its_per_call_detours():
    """With the installed SDK the worker's sandbox is FastSandboxRunner (worker.py): the SDK's own
    sandbox with its fixed snippets compiled once; every workflow test runs through it. An SDK whose
    private names moved would silently fall back to the stock runner (correct, but a quarter slower
    in a burst): this says so."""
    for mode in ("shared", "isolated"):
        assert type(Capacity(sandbox=mode).workflow_runner()) is FastSandboxRunner


@pytest.mark.parametrize(
    "name, value, fix",
    [
        ("DRDRILL_MAX_CACHED_WORKFLOWS", "lots", "whole number >= 0"),
        ("DRDRILL_MAX_WORKFLOW_TASKS", "1", "whole number >= 2"),
        ("DRDRILL_MAX_ACTIVITIES", "0", "whole number >= 1"),
        ("DRDRILL_WORKFLOW_POLLERS", "1", "a whole number >= 2, autoscale or autoscale:MIN:MAX"),
        ("DRDRILL_ACTIVITY_POLLERS", "autoscale:9:3", "1 <= MIN <= MAX"),
        ("DRDRILL_WORKFLOW_SANDBOX", "off", "shared (the default) or isolated"),
        ("DRDRILL_WORKFLOW_NONSTICKY_RATIO", "0", "a number in (0, 1]"),
    ],
)
def test_a_bad_setting_is_refused_with_its_name_and_the_fix(name, value, fix):
    with pytest.raises(WorkerSettingError) as err:
        capacity({name: value})
    assert name in str(err.value) and fix in str(err.value)


def test_the_worker_process_refuses_a_bad_setting_in_one_line():
    env = {"PATH": "/usr/bin:/bin", "DRDRILL_WORKFLOW_POLLERS": "many", "HOME": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "worker.py")], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "DRDRILL_WORKFLOW_POLLERS='many'" in proc.stderr and "Traceback" not in proc.stderr


def test_two_worker_processes_with_the_capacity_settings_run_sim_drills(temporal_server, tmp_path):
    """Two `python worker.py` replicas on one queue, small slots, autoscaling pollers and the shared
    sandbox: both drills pass and nothing is left behind."""
    state, state_dir = tmp_path / "sim.json", tmp_path / "state"
    state_dir.mkdir()
    queue = f"capacity-{uuid.uuid4().hex[:8]}"
    settings = {"DRDRILL_MAX_WORKFLOW_TASKS": "2", "DRDRILL_MAX_CACHED_WORKFLOWS": "4", "DRDRILL_MAX_ACTIVITIES": "4",
                "DRDRILL_WORKFLOW_POLLERS": "autoscale:2:4", "DRDRILL_ACTIVITY_POLLERS": "2", "DRDRILL_WORKFLOW_SANDBOX": "shared"}
    workers = [WorkerProcess(temporal_server.address, queue, state, state_dir, tmp_path / f"w{i}.log", {**settings, "DRDRILL_HOST_ID": f"h{i}"})
               for i in range(2)]
    try:
        results = asyncio.run(_two_drills(temporal_server.address, queue, workers, state_dir))
    finally:
        for w in workers:
            w.stop()
    assert [r.verdict for r in results] == ["PASSED", "PASSED"], [r.findings for r in results]
    assert leaked(state) == []


async def _two_drills(address, queue, workers, state_dir):
    await wait_until(lambda: all(w.polling() for w in workers), timeout=120, what="both workers to poll")
    client = await connect(address)
    handles = [await start(client, spec_of(sim_yaml(name=f"capacity-{i}")), queue) for i in range(2)]
    return [await asyncio.wait_for(final_result(h, state_dir), timeout=300) for h in handles]


def test_the_isolated_sandbox_runs_a_sim_drill(temporal_server, tmp_path):
    """DRDRILL_WORKFLOW_SANDBOX=isolated (the SDK's own default: workflow modules reloaded per drill)."""
    state, state_dir = tmp_path / "sim.json", tmp_path / "state"
    state_dir.mkdir()

    async def run():
        client = await connect(temporal_server.address)
        queue = f"isolated-{uuid.uuid4().hex[:8]}"
        async with running_worker(client, task_queue_name=queue, providers={"sim": SimProvider(state, speed=1.0)},
                                  state_dir=str(state_dir), settings=Capacity(sandbox="isolated", max_workflow_tasks=2)):
            return await final_result(await start(client, spec_of(sim_yaml(name="isolated")), queue), state_dir)

    result = asyncio.run(run())
    assert result.verdict == "PASSED", result.findings
    assert leaked(state) == []
