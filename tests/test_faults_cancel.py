"""Cancellation in each phase, and a drill that exceeds max_duration: stopped, torn down, recorded.

Each phase is made to last (simulated latency) so the cancellation lands inside it. Afterwards no
tagged resource remains (also none created late by an activity that was still running), the
evidence was recorded, and the verdict is honest: a cancelled drill is never PASSED.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from drdrill.core.models import DrillStatus
from tests.sim_harness import leaked, phase_of, run_sim, sim_yaml, wait_until

SLOW = 4  # seconds a slowed-down phase lasts

PHASES = {
    "recovery point": dict(source=f"{{restore_time: 0.1, faults: {{latency: {{find_recovery_point: {SLOW}}}}}}}"),
    "isolate": dict(source=f"{{restore_time: 0.1, faults: {{latency: {{create_isolation: {SLOW}}}}}}}"),
    "verify isolation": dict(source=f"{{restore_time: 0.1, faults: {{latency: {{verify_isolation: {SLOW}}}}}}}"),
    "restore": dict(source="{restore_time: 30}"),
    "validate": dict(
        validations=f"  - {{type: command, name: slow-check, timeout: 1m, argv: [{sys.executable}, -c, 'import time; time.sleep(60)']}}"  # allowed: a check that is busy when cancelled
    ),
    "hold": dict(extra="teardown: {hold: 10m}"),
}


OP_OF = {"recovery point": "find_recovery_point", "isolate": "create_isolation", "verify isolation": "verify_isolation", "restore": "restore", "teardown": "teardown"}


async def _cancel_in(handle, phase: str, state: Path) -> None:
    """Cancel once the drill is in `phase` and (for a provider phase) its operation is running."""
    from drdrill.providers.sim.provider import SimState

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not (await phase_of(handle) == phase and (phase not in OP_OF or SimState(state).running(OP_OF[phase]))):
        assert loop.time() < deadline, f"never reached {phase}"
        await asyncio.sleep(0.05)
    await handle.cancel()


@pytest.mark.parametrize("phase", list(PHASES))
def test_cancel_in_each_phase_tears_down_and_records_an_honest_verdict(temporal_server, tmp_path, phase):
    state = tmp_path / "sim.json"
    result, _ = run_sim(temporal_server.address, sim_yaml(**PHASES[phase]), state, tmp_path, during=lambda h: _cancel_in(h, phase, state))
    assert result.cancelled and result.verdict == "ERROR"
    # The cancel is the drill's one finding: the step it interrupted did not fail (no RESTORE_FAILED:
    # "Cancelled", no check that "could not run"), whatever the SDK reports to the awaiting step.
    assert [f.code for f in result.findings] == ["DRILL_CANCELLED"], result.findings
    assert [v.name for v in result.validations if v.outcome == "COULD_NOT_VERIFY"] == []
    assert result.timeline[-1].phase == "teardown"
    assert Path(result.evidence_path or tmp_path / "runs" / result.drill_id / "evidence.json").exists()
    assert leaked(state) == []
    _assert_nothing_created_late(state)


def _assert_nothing_created_late(state: Path) -> None:
    """An activity still running when teardown ran must not create anything afterwards."""
    from drdrill.providers.sim.provider import SimState

    # Wait for every simulated operation of the drill to have ended, then look again.
    async def settle():
        await wait_until(lambda: not SimState(state).running(), timeout=60, what="simulated operations to end")

    asyncio.run(settle())
    assert leaked(state) == []


def test_cancel_during_teardown_still_finishes_the_teardown_and_records_evidence(temporal_server, tmp_path):
    state = tmp_path / "sim.json"
    text = sim_yaml(targets=3, source="{restore_time: 0.1, faults: {latency: {teardown: 1.5}}}")

    async def during(handle):
        await _cancel_in(handle, "teardown", state)

    result, _ = run_sim(temporal_server.address, text, state, tmp_path, during=during)
    assert leaked(state) == []
    assert result.teardown and len(result.teardown[0].deleted) == 4  # three databases and the network
    assert (tmp_path / "runs" / result.drill_id / "evidence.json").exists()
    # Every check had passed before the cancellation: the verdict says so, the finding says the rest.
    assert result.verdict == "PASSED", result.findings
    assert "CANCELLED_DURING_TEARDOWN" in {f.code for f in result.findings}


def test_a_drill_exceeding_max_duration_is_stopped_and_torn_down(temporal_server, tmp_path):
    state = tmp_path / "sim.json"
    text = sim_yaml(source="{restore_time: 60}").replace("max_duration: 10m", "max_duration: 3s")
    result, _ = run_sim(temporal_server.address, text, state, tmp_path)
    assert result.verdict == "FAILED"
    assert [f.code for f in result.findings] == ["MAX_DURATION_EXCEEDED"], result.findings  # the restore it stopped did not fail
    assert not result.cancelled and result.timeline[-1].phase == "teardown"
    assert leaked(state) == []
    _assert_nothing_created_late(state)
