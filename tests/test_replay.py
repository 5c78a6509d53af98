"""Running drills survive an upgrade: every history recorded before a change (tests/fixtures/histories/,
made by tests/record_histories.py) replays on today's DrillWorkflow without a nondeterminism error.

A replay runs the workflow code against the recorded events: the same activities, in the same order,
with the same timers, updates and signals. A refactoring that changed any of them would strand the
drills running when the new worker starts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from worker import workflows

HISTORIES = sorted((Path(__file__).resolve().parent / "fixtures" / "histories").glob("*.json"))


def test_there_are_histories_to_replay():
    names = {p.stem for p in HISTORIES}
    assert {"sim-passed", "sim-check-failed", "plan-approved", "plan-rejected", "sim-cancelled", "pg-probe", "pg-pitr-staged"} <= names


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
def test_a_recorded_drill_replays_on_this_code(path: Path):
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    # The worker's own sandbox settings (worker.running_worker), so the replay sees what a worker runs.
    runner = SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules("pydantic", "yaml", "drdrill", "activities"))
    replayer = Replayer(workflows=workflows(), data_converter=pydantic_data_converter, workflow_runner=runner)
    result = asyncio.run(replayer.replay_workflow(history, raise_on_replay_failure=False))
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
