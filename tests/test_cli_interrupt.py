"""`drdrill run` interrupted (SIGTERM, as a CI job's timeout or `kill` sends; Ctrl-C is the same).

Embedded (no TEMPORAL_ADDRESS), the drill's worker lives in the command: it cancels the drill,
shows its teardown and verdict, and exits with nothing left running, neither the drill's resources
nor the embedded Temporal server. Against a Temporal service the drill goes on where its workers
are, and the command only stops following it.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError

from drdrill.providers.sim.provider import SimProvider

from tests.ops_helpers import service
from tests.sim_harness import cli_env, leaked, sim_yaml

DRDRILL = str(Path(sys.executable).parent / "drdrill")
SLOW_RESTORE = "{restore_time: 600}"  # ten simulated minutes: the interrupt lands inside the restore


class Run:
    """`drdrill run` as a user starts it, its output read line by line as it is printed."""

    def __init__(self, drill: Path, drill_id: str, env: dict, preexec_fn=None):
        self.proc = subprocess.Popen(
            [DRDRILL, "run", str(drill), "--id", drill_id],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=preexec_fn,
        )
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        while True:
            line = self.lines.get(timeout=timeout)
            assert line is not None, "drdrill run ended before printing " + repr(text) + ":\n" + "".join(self.seen)
            self.seen.append(line)
            if text in line:
                return

    def finish(self, timeout: float = 180) -> tuple[int, str, str]:
        code = self.proc.wait(timeout=timeout)
        rest = []
        while (line := self.lines.get(timeout=30)) is not None:
            rest.append(line)
        return code, "".join(self.seen + rest), self.proc.stderr.read()


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that name `text` (the state directory of the run)."""
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and pid != str(os.getpid()):
            found.append(f"{pid}: {cmdline}")
    return found


def _ignore_sigint() -> None:
    """As a shell starts `drdrill run x.yaml &` from a script (and nohup, some CI runners)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_sigterm_on_an_embedded_run_cancels_the_drill_tears_down_and_leaves_nothing_running(tmp_path, sigint):
    drill = tmp_path / "slow.yaml"
    drill.write_text(sim_yaml(name="slow", source=SLOW_RESTORE, timeout="30m"))
    drill_id = f"slow-{uuid.uuid4().hex[:6]}"
    state = tmp_path / "state"
    env = cli_env(DRDRILL_STATE_DIR=str(state), DRDRILL_SIM_STATE=str(tmp_path / "sim.json"), DRDRILL_SIM_SPEED="1")

    run = Run(drill, drill_id, env, preexec_fn=_ignore_sigint if sigint == "ignored" else None)
    run.wait_for("verify isolation")  # isolated; the ten-minute restore has begun
    run.proc.send_signal(signal.SIGTERM)
    code, out, err = run.finish()

    assert f"interrupted: cancelling drill {drill_id}; its teardown runs now" in err, err
    assert "teardown" in out and "finding DRILL_CANCELLED" in out, out
    assert "ERROR" in out.splitlines()[-1], out  # the cancelled drill's verdict, with its evidence
    assert code == 4, out + err
    assert (state / "runs" / drill_id / "evidence.json").exists()
    assert leaked(tmp_path / "sim.json") == []
    assert _processes_mentioning(str(tmp_path)) == []  # no Temporal dev server, no evidence server


def test_sigterm_against_a_temporal_service_stops_following_and_the_drill_goes_on(temporal_server, tmp_path):
    drill = tmp_path / "slow.yaml"
    drill.write_text(sim_yaml(name="slow", source=SLOW_RESTORE, timeout="30m"))
    drill_id = f"slow-{uuid.uuid4().hex[:6]}"

    state = tmp_path / "sim.json"

    async def go():
        async with service(temporal_server.address, tmp_path, providers={"sim": SimProvider(state)}) as svc:
            run = Run(drill, drill_id, cli_env(**svc.env()))
            await asyncio.to_thread(run.wait_for, "verify isolation")
            run.proc.send_signal(signal.SIGTERM)
            code, out, err = await asyncio.to_thread(run.finish)
            handle = svc.client.get_workflow_handle(drill_id)
            still = (await handle.describe()).status
            await handle.cancel()  # the test's own cleanup: the drill would otherwise run on
            with pytest.raises(WorkflowFailureError):
                await handle.result()
            return code, err, still

    code, err, still = asyncio.run(go())
    assert code == 130, err
    assert f"interrupted: stopped following {drill_id}; it goes on in the Temporal service" in err
    assert f"drdrill cancel {drill_id}" in err
    assert still == WorkflowExecutionStatus.RUNNING
    assert leaked(tmp_path / "sim.json") == []


# Where the reader goes away: `| head -2` during a long restore, while nothing is printed (the
# command must notice by itself); `| head -1` just after the first line, when the next line is
# usually written before the command has noticed, so the write itself fails. rich's own answer to
# that (SystemExit raised from inside the write) escaped the event loop and left the command
# waiting forever in asyncio's final cancellation, its drill's resources still there.
@pytest.mark.parametrize("closed_after", ["verify isolation", "declared"], ids=["head-2-during-the-restore", "head-1"])
def test_a_closed_stdout_cancels_an_embedded_run_tears_down_and_leaves_nothing_running(tmp_path, closed_after):
    drill = tmp_path / "slow.yaml"
    drill.write_text(sim_yaml(name="slow", source=SLOW_RESTORE, timeout="30m"))
    drill_id = f"slow-{uuid.uuid4().hex[:6]}"
    state = tmp_path / "state"
    env = cli_env(DRDRILL_STATE_DIR=str(state), DRDRILL_SIM_STATE=str(tmp_path / "sim.json"), DRDRILL_SIM_SPEED="1")
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [DRDRILL, "run", str(drill), "--id", drill_id], stdout=write_end, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_ignore_sigint
    )
    os.close(write_end)
    try:
        seen = _read_until(read_end, closed_after)
    finally:
        os.close(read_end)  # as `head` exits
    try:
        code = proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("drdrill run still running 180 s after its stdout closed:\n" + seen + proc.stderr.read())
    err = proc.stderr.read()

    assert f"stdout closed: cancelling drill {drill_id}; its teardown runs now" in err, seen + err
    assert "Traceback" not in err, err
    evidence = json.loads((state / "runs" / drill_id / "evidence.json").read_text())
    assert [f["code"] for f in evidence["findings"]] == ["DRILL_CANCELLED"]
    if closed_after == "verify isolation":
        assert evidence["teardown"], evidence
    assert code == 4, err
    assert leaked(tmp_path / "sim.json") == []
    assert _processes_mentioning(str(tmp_path)) == []


def test_a_write_to_a_closed_stdout_is_an_ordinary_broken_pipe():
    """What every command prints through: a closed stdout raises BrokenPipeError for the command to
    handle (app/errors.py: exit 141, no traceback), never rich's SystemExit from inside the write."""
    from app import output

    read_end, write_end = os.pipe()
    os.close(read_end)
    closed = os.fdopen(write_end, "w")
    out, err = output.console(file=closed), output.console(stderr=True, file=closed)
    try:
        with pytest.raises(BrokenPipeError):
            out.print("a line nobody reads")
        assert out.quiet
        err.print("a warning nobody reads")  # a closed stderr only silences stderr
        assert err.quiet
    finally:
        try:
            closed.close()
        except BrokenPipeError:  # what is still buffered cannot be written either
            pass


def _read_until(fd: int, text: str, timeout: float = 120) -> str:
    """What the command printed on the pipe up to and including `text`."""
    seen = b""
    while text.encode() not in seen:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"nothing printed for {timeout}s:\n{seen.decode()}"
        chunk = os.read(fd, 4096)
        assert chunk, "drdrill run ended before printing " + repr(text) + ":\n" + seen.decode()
        seen += chunk
    return seen.decode()


def test_a_closed_stdout_against_a_temporal_service_stops_following_and_the_drill_goes_on(temporal_server, tmp_path):
    drill = tmp_path / "slow.yaml"
    drill.write_text(sim_yaml(name="slow", source=SLOW_RESTORE, timeout="30m"))
    drill_id = f"slow-{uuid.uuid4().hex[:6]}"

    async def go():
        async with service(temporal_server.address, tmp_path, providers={"sim": SimProvider(tmp_path / "sim.json")}) as svc:
            read_end, write_end = os.pipe()
            proc = subprocess.Popen(
                [DRDRILL, "run", str(drill), "--id", drill_id], stdout=write_end, stderr=subprocess.PIPE, text=True, env=cli_env(**svc.env())
            )
            os.close(write_end)
            try:
                await asyncio.to_thread(_read_until, read_end, "verify isolation")
            finally:
                os.close(read_end)
            code = await asyncio.to_thread(proc.wait, 180)
            handle = svc.client.get_workflow_handle(drill_id)
            still = (await handle.describe()).status
            await handle.cancel()  # the test's own cleanup: the drill would otherwise run on
            with pytest.raises(WorkflowFailureError):
                await handle.result()
            return code, proc.stderr.read(), still

    code, err, still = asyncio.run(go())
    assert code == 130, err
    assert f"stdout closed: stopped following {drill_id}; it goes on in the Temporal service" in err
    assert "Traceback" not in err
    assert still == WorkflowExecutionStatus.RUNNING
    assert leaked(tmp_path / "sim.json") == []
