"""Provider faults: a drill ends with an honest verdict, and zero tagged resources remain.

Throttling and transient errors are retried and the drill passes; a permanent failure fails the
drill with a finding; a resource that never becomes ready hits its deadline and is torn down; a
teardown that fails three times is retried until it succeeds, and the evidence shows it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drdrill.providers.base import ProviderError
from drdrill.providers.sim.provider import SimProvider, SimState
from tests.sim_harness import leaked, run_sim, sim_yaml


def codes(result) -> set[str]:
    return {f.code for f in result.findings}


def calls(state: Path, op: str) -> int:
    return len(SimState(state).events(op))


def test_throttling_of_every_operation_is_retried_and_the_drill_passes(temporal_server, tmp_path):
    state = tmp_path / "sim.json"
    result, _ = run_sim(temporal_server.address, sim_yaml(source="{restore_time: 0.2, faults: {throttle: 2}}"), state, tmp_path)
    assert result.verdict == "PASSED", result.findings
    for op in ("find_recovery_point", "create_isolation", "verify_isolation", "restore", "wait_ready", "teardown"):
        assert calls(state, op) == 3, op  # two THROTTLED, then success
    # The throttled teardown is reported (a warning), never hidden.
    assert "TEARDOWN_RETRIED" in codes(result) and result.teardown[0].attempt == 3
    assert leaked(state) == []


def test_transient_5xx_and_timeouts_are_retried_and_the_drill_passes(temporal_server, tmp_path):
    state = tmp_path / "sim.json"
    faults = "{transient_5xx: 1, timeouts: 1, ops: [restore, wait_ready], latency: {restore: 0.1}}"
    result, _ = run_sim(temporal_server.address, sim_yaml(source=f"{{restore_time: 0.2, faults: {faults}}}"), state, tmp_path)
    assert result.verdict == "PASSED", result.findings
    assert calls(state, "restore") == 3 and calls(state, "wait_ready") == 3
    assert calls(state, "find_recovery_point") == 1
    assert leaked(state) == []


@pytest.mark.parametrize(
    "op, code",
    [
        ("find_recovery_point", "SIM_PERMANENT_FAILURE"),
        ("create_isolation", "SIM_PERMANENT_FAILURE"),
        ("verify_isolation", "SIM_PERMANENT_FAILURE"),
        ("restore", "SIM_PERMANENT_FAILURE"),
        ("wait_ready", "SIM_PERMANENT_FAILURE"),
    ],
)
def test_a_permanent_failure_fails_the_drill_with_a_finding_and_is_not_retried(temporal_server, tmp_path, op, code):
    state = tmp_path / "sim.json"
    result, _ = run_sim(temporal_server.address, sim_yaml(source=f"{{restore_time: 0.1, faults: {{fail: {op}}}}}"), state, tmp_path)
    assert result.verdict in ("FAILED", "COULD_NOT_VERIFY"), result.verdict
    if op != "verify_isolation":  # an unprovable isolation is COULD_NOT_VERIFY, never a pass
        assert result.verdict == "FAILED"
    assert code in codes(result)
    assert calls(state, op) == 1
    assert all(v.outcome != "PASSED" for v in result.validations)
    assert leaked(state) == []


def test_a_resource_that_never_becomes_ready_hits_its_deadline_and_is_torn_down(temporal_server, tmp_path):
    state = tmp_path / "sim.json"
    text = sim_yaml(source="{restore_time: 0.1, faults: {never_ready: true}}", timeout="2s")
    result, _ = run_sim(temporal_server.address, text, state, tmp_path)
    assert result.verdict == "FAILED"
    assert "READY_TIMEOUT" in codes(result)
    assert [v.outcome for v in result.validations] == ["NOT_RUN"]
    assert any("database" in d for d in result.teardown[0].deleted)  # the half-restored database went too
    assert leaked(state) == []


def test_a_teardown_that_fails_three_times_is_retried_until_it_succeeds_and_the_evidence_shows_it(temporal_server, tmp_path):
    state = tmp_path / "sim.json"
    result, _ = run_sim(temporal_server.address, sim_yaml(source="{restore_time: 0.1, faults: {teardown_failures: 3}}"), state, tmp_path)
    assert result.verdict == "PASSED", result.findings
    assert result.teardown[0].attempt == 4 and calls(state, "teardown") == 4
    evidence = json.loads(Path(result.evidence_path).read_text())
    retried = [f for f in evidence["findings"] if f["code"] == "TEARDOWN_RETRIED"]
    assert retried and "attempt 4" in retried[0]["message"]
    teardown_event = [e for e in evidence["timeline"] if e["phase"] == "teardown"][-1]
    assert "attempt 4" in teardown_event["detail"]
    assert leaked(state) == []


class _DeniedTwice(SimProvider):
    """A cloud that answers the first two teardowns with a non-retryable error (e.g. ACCESS_DENIED
    while a role propagates). Teardown must still be retried: a leak is worse than a slow drill."""

    def teardown(self, ctx, env):
        with self.state.edit() as s:
            n = s["counters"]["denied"] = s["counters"].get("denied", 0) + 1
        if n <= 2:
            raise ProviderError("ACCESS_DENIED", "simulated: not authorized to delete", retryable=False)
        return super().teardown(ctx, env)


def test_a_teardown_failing_with_a_non_retryable_error_is_still_retried(temporal_server, tmp_path):
    import asyncio
    import uuid

    from worker import connect, running_worker
    from tests.sim_harness import final_result, spec_of, start

    state = tmp_path / "sim.json"

    async def go():
        client = await connect(temporal_server.address)
        queue = f"sim-{uuid.uuid4().hex[:8]}"
        async with running_worker(client, task_queue_name=queue, providers={"sim": _DeniedTwice(state)}, state_dir=str(tmp_path)):
            handle = await start(client, spec_of(sim_yaml()), queue)
            return await final_result(handle, tmp_path)

    result = asyncio.run(go())
    assert result.verdict == "PASSED", result.findings
    assert result.teardown[0].attempt == 3 and "TEARDOWN_RETRIED" in codes(result)
    assert leaked(state) == []


def test_a_teardown_that_keeps_failing_alerts_while_it_is_still_failing(temporal_server, tmp_path, monkeypatch):
    """The third failed attempt already pages someone; the drill then finishes once teardown works."""
    from tests.test_notify import Receiver

    state = tmp_path / "sim.json"
    with Receiver() as hook:
        monkeypatch.setenv("DRILL_HOOK", hook.url)
        text = sim_yaml(source="{restore_time: 0.1, faults: {teardown_failures: 3}}", extra="notify: {webhooks_env: [DRILL_HOOK], on: [FAILED]}")
        result, _ = run_sim(temporal_server.address, text, state, tmp_path)
        no_teardown_alerts = [p for p in hook.posts if p["json"]["event"] == "TEARDOWN"]
        text = sim_yaml(source="{restore_time: 0.1, faults: {teardown_failures: 3}}", extra="notify: {webhooks_env: [DRILL_HOOK]}")
        result, _ = run_sim(temporal_server.address, text, state, tmp_path)
    alerts = [p["json"] for p in hook.posts if p["json"]["event"] == "TEARDOWN"]

    assert no_teardown_alerts == [], "a drill that did not ask for TEARDOWN alerts gets none"
    assert result.verdict == "PASSED" and result.teardown[0].attempt == 4
    failing = [a for a in alerts if a["verdict"] == "TEARDOWN_FAILING"]
    assert len(failing) == 1 and "failed 3 times and is still being retried" in failing[0]["text"]
    assert leaked(state) == []
