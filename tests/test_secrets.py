"""Secrets: a secret in the worker's environment never appears in logs, workflow history payloads,
the workflow's result, evidence or reports, even when a check prints it or a provider error quotes it."""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from pathlib import Path

from drdrill.providers.base import ProviderError
from drdrill.providers.sim.provider import SimProvider
from tests.sim_harness import WorkerProcess, final_result, leaked, sim_yaml, spec_of, start, wait_until
from worker import connect, running_worker

PASSWORD = "Tr0ub4dor-and-3-s3cret"
DSN = "postgresql://app:hunter2-dsn-Pw9@db.internal:5432/shop"
DSN_PASSWORD = "hunter2-dsn-Pw9"
SECRETS = [PASSWORD, DSN_PASSWORD]


async def _history_bytes(handle) -> bytes:
    history = await handle.fetch_history()
    return b"".join(event.SerializeToString() for event in history.events) + history.to_json().encode()


def _files_under(path: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _assert_clean(where: str, blob: bytes) -> None:
    for secret in SECRETS:
        assert secret.encode() not in blob, f"a secret leaked into {where}"


def test_a_check_printing_secrets_leaks_them_nowhere(temporal_server, tmp_path):
    state, state_dir = tmp_path / "sim.json", tmp_path / "state"
    state_dir.mkdir()
    queue = f"secrets-{uuid.uuid4().hex[:8]}"
    env = {"DRDRILL_TEST_PASSWORD": PASSWORD, "SHOP_DSN": DSN, "DRDRILL_LOG_LEVEL": "DEBUG"}
    text = sim_yaml(
        validations=(
            f"  - {{type: command, target: db0, name: prints-password, timeout: 5s, env: [DRDRILL_TEST_PASSWORD], argv: [{sys.executable}, -c, "
            f"'import os, sys; print(\"password is\", os.environ[\"DRDRILL_TEST_PASSWORD\"]); sys.exit(3)']}}\n"
            f"  - {{type: command, target: db0, name: prints-dsn, timeout: 5s, env: [SHOP_DSN], argv: [{sys.executable}, -c, "
            f"'import os; print(\"connected to\", os.environ[\"SHOP_DSN\"])']}}"
        )
    )
    worker = WorkerProcess(temporal_server.address, queue, state, state_dir, tmp_path / "worker.log", extra_env=env)

    async def go():
        await wait_until(worker.polling, timeout=60, what="the worker to poll")
        client = await connect(temporal_server.address)
        handle = await start(client, spec_of(text), queue)
        result = await final_result(handle, state_dir)
        return result, await _history_bytes(handle)

    try:
        result, history = asyncio.run(go())
    finally:
        worker.stop()
    # The checks ran and said what happened, without the secrets.
    outcomes = {v.name: v for v in result.validations}
    assert outcomes["prints-password"].outcome == "FAILED" and "password is ***" in outcomes["prints-password"].detail
    assert outcomes["prints-dsn"].outcome == "PASSED" and "connected to ***" in outcomes["prints-dsn"].detail
    assert result.verdict == "FAILED" and leaked(state) == []
    _assert_clean("the workflow history", history)
    _assert_clean("the workflow result", result.model_dump_json().encode())
    _assert_clean("the worker log", worker.log.read_bytes())
    files = _files_under(state_dir / "runs" / result.drill_id)
    assert any(p.name == "evidence.json" for p in files)
    for path, blob in files.items():
        _assert_clean(str(path.name), blob)


APP_PASS = "pl41n-n4med-v4lue"  # under a name no pattern recognises


def test_a_command_gets_only_the_variables_it_names_and_each_is_redacted_whatever_its_name(temporal_server, tmp_path):
    """APP_PASS is not secret-looking by name: named by the check, its value is still redacted from
    the history, the result, the log and the evidence; not named, the command never sees it."""
    state, state_dir = tmp_path / "sim.json", tmp_path / "state"
    state_dir.mkdir()
    queue = f"secrets-{uuid.uuid4().hex[:8]}"
    text = sim_yaml(
        validations=(
            f"  - {{type: command, target: db0, name: named, timeout: 5s, env: [APP_PASS], argv: [{sys.executable}, -c, "
            f"'import os; print(\"app pass\", os.environ[\"APP_PASS\"])']}}\n"
            f"  - {{type: command, target: db0, name: unnamed, timeout: 5s, argv: [{sys.executable}, -c, "
            f"'import os; print(\"app pass\", os.environ.get(\"APP_PASS\", \"unset\"))']}}\n"
            f"  - {{type: command, target: db0, name: cloud, timeout: 5s, argv: [{sys.executable}, -c, "
            f"'import os; print(\"aws key\", os.environ.get(\"AWS_SECRET_ACCESS_KEY\", \"unset\"))']}}"
        )
    )
    worker = WorkerProcess(temporal_server.address, queue, state, state_dir, tmp_path / "worker.log", extra_env={"APP_PASS": APP_PASS, "AWS_SECRET_ACCESS_KEY": "worker-cloud-secret"})

    async def go():
        await wait_until(worker.polling, timeout=60, what="the worker to poll")
        client = await connect(temporal_server.address)
        handle = await start(client, spec_of(text), queue)
        result = await final_result(handle, state_dir)
        return result, await _history_bytes(handle)

    try:
        result, history = asyncio.run(go())
    finally:
        worker.stop()
    outcomes = {v.name: v for v in result.validations}
    assert outcomes["named"].outcome == "PASSED" and "app pass ***" in outcomes["named"].detail
    assert outcomes["unnamed"].outcome == "PASSED" and "app pass unset" in outcomes["unnamed"].detail
    # The worker's cloud identity goes only to drdrill's own `drdrill check`, never to another command.
    assert outcomes["cloud"].outcome == "PASSED" and "aws key unset" in outcomes["cloud"].detail
    for where, blob in [("the workflow history", history), ("the result", result.model_dump_json().encode()),
                        ("the worker log", worker.log.read_bytes()),
                        *((p.name, b) for p, b in _files_under(state_dir / "runs" / result.drill_id).items())]:
        assert APP_PASS.encode() not in blob, f"APP_PASS leaked into {where}"


class _LeakyCloud(SimProvider):
    """A cloud SDK whose errors quote the connection string (as psycopg and some SDKs do)."""

    def restore(self, ctx, target, point, env):
        with self.state.edit() as s:
            n = s["counters"]["leaky"] = s["counters"].get("leaky", 0) + 1
        if n == 1:
            raise ProviderError("SERVICE_UNAVAILABLE", f"could not reach {DSN} (password={PASSWORD})", retryable=True)
        raise ProviderError("RESTORE_REJECTED", f"restore refused by {DSN}: bad credentials {PASSWORD}")


def test_provider_errors_quoting_secrets_are_redacted_at_the_source(temporal_server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DRDRILL_TEST_PASSWORD", PASSWORD)
    monkeypatch.setenv("SHOP_DSN", DSN)
    caplog.set_level(logging.DEBUG)
    state = tmp_path / "sim.json"

    async def go():
        client = await connect(temporal_server.address)
        queue = f"secrets-{uuid.uuid4().hex[:8]}"
        async with running_worker(client, task_queue_name=queue, providers={"sim": _LeakyCloud(state)}, state_dir=str(tmp_path)):
            handle = await start(client, spec_of(sim_yaml()), queue)
            result = await final_result(handle, tmp_path)
            return result, await _history_bytes(handle)

    result, history = asyncio.run(go())
    assert result.verdict == "FAILED"
    finding = next(f for f in result.findings if f.code == "RESTORE_REJECTED")
    assert finding.message == "restore refused by ***: bad credentials ***"
    assert leaked(state) == []
    _assert_clean("the workflow history", history)
    _assert_clean("the workflow result", result.model_dump_json().encode())
    _assert_clean("the logs", caplog.text.encode())
    for path, blob in _files_under(tmp_path / "runs" / result.drill_id).items():
        _assert_clean(str(path.name), blob)
