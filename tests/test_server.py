"""`drdrill server` (issue 25): one long-lived process on the embedded defaults, and every command
of the CLI talking to it while drills run.

Everything is real: `drdrill server` is started as a user starts it (a subprocess, its own
embedded Temporal in a network namespace behind the gate socket of its state directory, its own
worker), and the commands are the real `drdrill` processes. Drills are simulated (the sim
provider) to keep the tests fast. Nothing waits on a fixed sleep: on server.json, /healthz, a line
a command prints, a drill's status, or a process's exit, each with a timeout.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Optional

import pytest

from app import server_file
from drdrill.core.models import DrillResult
from tests.sim_harness import cli_env, leaked, sim_yaml
from tests.test_cli_interrupt import Run, _processes_mentioning
from tests.test_plan import approvers, keys, sim_plan  # noqa: F401  (keys: a fixture)
from worker import connect

DRDRILL = str(Path(sys.executable).parent / "drdrill")
SLOW = "{restore_time: 600}"  # ten simulated minutes: the drill is surely still running while we look


class Server:
    """`drdrill server` on its own state directory, as a user starts it."""

    def __init__(self, root: Path):
        self.root = root
        self.state = root / "state"
        self.env = cli_env(DRDRILL_STATE_DIR=str(self.state), DRDRILL_SIM_STATE=str(root / "sim.json"), DRDRILL_SIM_SPEED="1")
        self.proc: Optional[subprocess.Popen] = None
        self.info: Optional[server_file.ServerInfo] = None

    def start(self, timeout: float = 120) -> "Server":
        self.proc = subprocess.Popen(
            [DRDRILL, "server", "--listen", "127.0.0.1:0"], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            info = server_file.find(self.state)
            if info is not None and info.pid == self.proc.pid:
                self.info = info
                break
            assert self.proc.poll() is None, f"drdrill server exited {self.proc.returncode}: {self.proc.stderr.read()}"
            assert time.monotonic() < deadline, "drdrill server wrote no server.json"
            time.sleep(0.1)  # allowed: polling for a file another process writes when it is ready
        with urllib.request.urlopen(f"{self.info.console}healthz", timeout=30) as resp:
            assert json.loads(resp.read())["ready"] is True
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> tuple[int, str]:
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err

    def cli(self, *args: str, user: str = "alice", timeout: float = 180) -> subprocess.CompletedProcess:
        env = {**self.env, "LOGNAME": user, "USER": user}
        env.pop("SSH_AUTH_SOCK", None)
        return subprocess.run([DRDRILL, *args], env=env, capture_output=True, text=True, timeout=timeout)

    def run(self, drill: Path, drill_id: str) -> Run:
        """`drdrill run DRILL --id ID`, its output read as it is printed."""
        return Run(drill, drill_id, self.env)

    async def client(self):
        return await connect(self.info.address, namespace=self.info.namespace, proxy=self.info.proxy)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("srv")).start()
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


def _drill(folder: Path, name: str, source: str = "{restore_time: 0.2}", extra: str = "") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(sim_yaml(name=name, source=source, timeout="30m", extra=extra).replace("rto: 15m", "rto: 5m"))
    return path


def _wait_for(check, what: str, timeout: float = 120):
    """Until check() returns something true (a condition, polled), else fail saying `what`."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)  # allowed: polling a condition with a deadline
    return found


def _status(srv: Server, drill_id: str) -> str:
    """`drdrill status ID`; empty while `drdrill run` has not yet started the drill."""
    out = srv.cli("status", drill_id)
    if out.returncode == 2 and f"no drill with id {drill_id}" in out.stderr:
        return ""
    assert out.returncode == 0, out.stderr
    return out.stdout


def _result(srv: Server, drill_id: str, timeout: float = 180) -> DrillResult:
    async def go():
        client = await srv.client()
        return await asyncio.wait_for(client.get_workflow_handle(drill_id, result_type=DrillResult).result(), timeout)

    return asyncio.run(go())


def _one_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


# ------------------------------------------------------------------ commands while a server runs


def test_two_runs_at_once_with_list_status_and_cancel_while_they_run(server, tmp_path):
    slow = _drill(tmp_path, "slow", source=SLOW)
    ids = [f"slow-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    runs = [server.run(slow, i) for i in ids]
    for run in runs:
        run.wait_for("verify isolation")  # both isolated, both restoring: running at once

    second = server.cli("server", "--listen", "127.0.0.1:0")  # one server per state directory
    assert second.returncode == 4 and "a drdrill server already runs" in _one_line(second), second.stderr

    listed = server.cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["drill_id"]: r for r in json.loads(listed.stdout)}
    assert all(rows[i]["verdict"] == "RUNNING" for i in ids), rows
    assert "RUNNING" in _status(server, ids[0]) and "restore" in _status(server, ids[1])

    for i in ids:
        out = server.cli("cancel", i)
        assert out.returncode == 0 and "cancellation requested" in out.stdout, out.stderr
    for run in runs:
        code, out, err = run.finish()
        assert code == 4 and "finding DRILL_CANCELLED" in out, out + err
    assert leaked(server.root / "sim.json") == []

    quick = _drill(tmp_path, "quick")
    code, out, err = server.run(quick, f"quick-{uuid.uuid4().hex[:6]}").finish()
    assert code == 0 and "PASSED" in out.splitlines()[-2], out + err


def test_a_gate_approved_from_the_cli_lets_the_drill_go_on(server, tmp_path, keys):  # noqa: F811
    drill = tmp_path / "gated.yaml"
    drill.write_text(sim_plan("gated", gate=f"approve: {{before: app, timeout: 10m, approvers: {approvers(keys, 'alice')}}}"))
    drill_id = f"gated-{uuid.uuid4().hex[:6]}"
    run = server.run(drill, drill_id)
    run.wait_for(f"approve: drdrill approve {drill_id}")

    out = server.cli("approve", drill_id, "--note", "change ticket 42", "--key", str(keys["alice"][0]))
    assert out.returncode == 0 and "approved by alice" in out.stdout, out.stdout + out.stderr
    code, text, err = run.finish()
    assert code == 0, text + err
    assert "approved by alice" in text


def test_schedules_sync_list_trigger_pause_and_unpause(server, tmp_path):
    drills = tmp_path / "drills"
    drills.mkdir()
    name = f"sched-{uuid.uuid4().hex[:6]}"
    _drill(drills, name, extra='schedule: {cron: "0 4 * * 1"}')
    sid = f"drdrill-{name}"

    synced = server.cli("schedule", "sync", str(drills))
    assert synced.returncode == 0 and sid in synced.stdout, synced.stdout + synced.stderr
    listed = server.cli("schedule", "list", "--json")
    assert sid in [r["schedule_id"] for r in json.loads(listed.stdout)], listed.stdout

    fired = server.cli("schedule", "trigger", name)
    assert fired.returncode == 0, fired.stderr

    def finished():
        rows = json.loads(server.cli("list", "--json").stdout)
        return [r for r in rows if r["drill_id"].startswith(name) and r["verdict"] != "RUNNING"]

    (run,) = _wait_for(finished, "the triggered schedule's drill to finish")
    assert run["verdict"].startswith("PASSED"), run

    for op in ("pause", "unpause"):
        out = server.cli("schedule", op, name)
        assert out.returncode == 0 and f"{op}d" in out.stdout, out.stderr
    for path in drills.iterdir():
        path.unlink()
    assert server.cli("schedule", "sync", str(drills)).returncode == 0  # removed again


def test_release_ends_a_hold_and_coverage_reads_the_evidence_while_the_server_runs(server, tmp_path):
    held = _drill(tmp_path, "held", extra="teardown: {hold: 2h, max_hold: 4h}")
    drill_id = f"held-{uuid.uuid4().hex[:6]}"
    run = server.run(held, drill_id)
    _wait_for(lambda: "phase hold" in _status(server, drill_id), "the drill to hold")

    coverage = server.cli("coverage", "--drills", str(tmp_path), "--format", "json", "--out", "-")
    assert coverage.returncode in (0, 1, 3), coverage.stderr
    json.loads(coverage.stdout)

    out = server.cli("release", drill_id)
    assert out.returncode == 0 and "released" in out.stdout, out.stderr
    code, text, err = run.finish()
    assert code == 0, text + err


# ------------------------------------------------------------------ restart, signals


def test_a_drill_waiting_at_a_gate_survives_a_restart_and_nothing_is_left_after_sigint_or_sigterm(tmp_path, keys):  # noqa: F811
    srv = Server(tmp_path / "own").start()
    drill = tmp_path / "gated.yaml"
    drill.write_text(sim_plan("restart", gate=f"approve: {{before: app, timeout: 10m, approvers: {approvers(keys, 'alice')}}}"))
    drill_id = f"restart-{uuid.uuid4().hex[:6]}"
    started = srv.cli("run", str(drill), "--id", drill_id, "--no-wait")
    assert started.returncode == 0, started.stderr
    _wait_for(lambda: "waiting for approval" in _status(srv, drill_id), "the drill to wait at its gate")

    code, err = srv.stop(signal.SIGINT)
    assert code == 0 and "nothing left running" in err, err
    assert not (srv.state / "server.json").exists()
    assert not (srv.state / "temporal" / "frontend.sock").exists()
    assert _processes_mentioning(str(srv.state)) == []

    srv.start()  # the same state directory: the persisted Temporal, and the drill still waiting
    assert "waiting for approval" in _status(srv, drill_id)
    out = srv.cli("approve", drill_id, "--key", str(keys["alice"][0]))
    assert out.returncode == 0, out.stdout + out.stderr
    assert _result(srv, drill_id).verdict == "PASSED"

    code, err = srv.stop(signal.SIGTERM)
    assert code == 0, err
    assert _processes_mentioning(str(srv.state)) == []
    assert leaked(srv.root / "sim.json") == []


def test_a_stale_server_file_is_never_trusted(tmp_path):
    srv = Server(tmp_path / "stale")
    srv.state.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = server_file.ServerInfo(pid=dead.pid, started="1", address="127.0.0.1:1", proxy=None, namespace="default",
                                   task_queue="drdrill", console="http://127.0.0.1:1/")
    server_file.write(srv.state, stale)
    assert server_file.find(srv.state) is None
    srv.start()  # a real server replaces it
    assert srv.info.pid == srv.proc.pid
    srv.stop()
    assert not (srv.state / "server.json").exists()


# ------------------------------------------------------------------ without a server


def test_without_a_server_what_needs_one_is_refused_with_the_fix(tmp_path, keys):  # noqa: F811
    srv = Server(tmp_path / "none")
    drills = tmp_path / "drills"
    drills.mkdir()
    _drill(drills, "nightly", extra='schedule: {cron: "0 4 * * 1"}')
    gated = tmp_path / "gated.yaml"
    gated.write_text(sim_plan("gated", gate=f"approve: {{before: app, timeout: 10m, approvers: {approvers(keys, 'alice')}}}"))
    fix = "start `drdrill server`, or set TEMPORAL_ADDRESS"
    for args in (
        ("schedule", "sync", str(drills)),
        ("schedule", "trigger", "nightly"),
        ("run", str(gated)),
        ("run", str(drills / "nightly.yaml"), "--no-wait"),
        ("approve", "some-drill", "--key", str(keys["alice"][0])),
        ("reject", "some-drill", "--key", str(keys["alice"][0])),
    ):
        out = srv.cli(*args)
        assert out.returncode == 4, (args, out.stdout, out.stderr)
        assert fix in _one_line(out), out.stderr
    assert _processes_mentioning(str(srv.state)) == []


def test_a_second_command_on_a_busy_one_shot_state_directory_says_so_in_one_line(tmp_path):
    srv = Server(tmp_path / "busy")
    slow = _drill(tmp_path, "slow", source=SLOW)
    run = srv.run(slow, f"slow-{uuid.uuid4().hex[:6]}")
    run.wait_for("verify isolation")
    for args in (("list",), ("status", "anything"), ("run", str(_drill(tmp_path, "quick")))):
        out = srv.cli(*args)
        assert out.returncode == 4, (args, out.stderr)
        assert "start `drdrill server`" in _one_line(out)
    run.proc.send_signal(signal.SIGTERM)
    code, out, err = run.finish()
    assert code == 4, out + err
    assert _processes_mentioning(str(srv.state)) == []


# ------------------------------------------------------------------ replicas against a Temporal cluster


def test_replicas_against_an_existing_temporal_share_the_work_without_an_embedded_temporal(temporal_server, tmp_path):
    queue = f"replicas-{uuid.uuid4().hex[:6]}"
    env = cli_env(DRDRILL_STATE_DIR=str(tmp_path / "state"), DRDRILL_SIM_STATE=str(tmp_path / "sim.json"), DRDRILL_SIM_SPEED="1",
                  DRDRILL_TASK_QUEUE=queue)
    replicas = []
    for console in ("--console", "--no-console"):
        proc = subprocess.Popen([DRDRILL, "server", "--temporal", temporal_server.address, console, "--listen", "127.0.0.1:0"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        replicas.append(proc)
    try:
        for proc in replicas:
            line = _wait_for(lambda p=proc: next((l for l in iter(p.stderr.readline, "") if "ready" in l), None), "a replica to be ready")
            url = line.split(" at ")[-1].strip()
            with urllib.request.urlopen(f"{url}healthz", timeout=30) as resp:
                assert json.loads(resp.read())["ready"] is True
        assert not (tmp_path / "state" / "server.json").exists()  # no coordination of drdrill's own
        assert not (tmp_path / "state" / "temporal.db").exists()  # no embedded Temporal
        drills = [_drill(tmp_path, f"r{i}") for i in range(2)]
        runs = [Run(d, f"r{i}-{uuid.uuid4().hex[:6]}", {**env, "TEMPORAL_ADDRESS": temporal_server.address}) for i, d in enumerate(drills)]
        for run in runs:
            code, out, err = run.finish()
            assert code == 0, out + err
    finally:
        for proc in replicas:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=120) for proc in replicas]
    assert codes == [0, 0]
    assert _processes_mentioning(str(tmp_path)) == []
