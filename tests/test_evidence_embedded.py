"""The embedded evidence store (no DRDRILL_EVIDENCE_DSN), as a user meets it: one store per state
directory, its data inside that directory so it outlives its server, and no server left running
after the command that started it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import uuid
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from app.cli_evidence import register
from drdrill.evidence.chain import evidence_document
from drdrill.evidence.record import record_run
from drdrill.evidence.store import open_store
from drdrill.evidence.embedded import embedded_cluster, embedded_server
from tests.evidence_fixtures import sample_result
from tests.pg_fixtures import cluster_root  # noqa: F401
from tests.test_cli import clean_env, cli


def evidence(*args: str):
    """`drdrill evidence ...` in this process."""
    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, ["evidence", *args])


def processes_of(*dirs: Path) -> list[str]:
    """Processes (other than this one) whose command line, working directory or environment names
    one of `dirs`: what `ps` shows a user as left behind by a run in them."""
    needles = [os.fsencode(str(d)) for d in dirs]
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            seen = cmdline + os.fsencode(os.readlink(proc / "cwd")) + (proc / "environ").read_bytes()
        except OSError:
            continue  # gone meanwhile, or a zombie
        if any(n in seen for n in needles):
            command = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
            found.append(f"{proc.name}: {command}")
    return found


class Embedded:
    """State directories of this test, each with its own embedded store."""

    def __init__(self, base: Path, root: Path, monkeypatch):
        self.base, self.root, self.monkeypatch = base, root, monkeypatch
        self.states: list[Path] = []

    def use(self, name: str) -> Path:
        """Point DRDRILL_STATE_DIR at <base>/<name>, as a user would."""
        state = self.base / name
        self.states.append(state)
        self.monkeypatch.setenv("DRDRILL_STATE_DIR", str(state))
        return state

    def processes(self) -> list[str]:
        return processes_of(*self.states, self.root)


@pytest.fixture
def embedded(cluster_root, monkeypatch):
    """The embedded store, in this test's own state directories and cluster root. Every server
    started from them is stopped at the end, and the directories removed, also when the test fails.

    The state directories are not under pytest's tmp_path: a pytest session starting on the same
    machine resets /tmp/pytest-of-<user> to 0700, which shuts the server's unprivileged user out
    of a data directory below it. Their parent is private (0700), like root's home."""
    monkeypatch.delenv("DRDRILL_EVIDENCE_DSN", raising=False)
    base = Path("/tmp") / f"drdrill-state-{uuid.uuid4().hex[:6]}"
    base.mkdir(mode=0o700)
    env = Embedded(base, cluster_root, monkeypatch)
    try:
        yield env
    finally:
        for state in env.states:
            embedded_cluster(state).stop()
        shutil.rmtree(base)


def test_each_state_directory_keeps_its_own_store(embedded):
    a = embedded.use("A")
    result = sample_result("kept-in-a")
    with embedded_server():  # what a drdrill command does around its work
        record_run(a, result)  # what the record_evidence activity does
    assert embedded.processes() == [], "the command stopped the server it started"

    listed = evidence("list")
    assert listed.exit_code == 0 and result.drill_id in listed.output, listed.output
    verified = evidence("verify")
    assert verified.exit_code == 0 and f"run {result.drill_id}: 11 events intact" in verified.output, verified.output
    assert "1/1 runs intact" in verified.output

    b = embedded.use("B")
    verified = evidence("verify")
    assert (verified.exit_code, verified.output) == (0, "the evidence store holds no runs\n")
    assert result.drill_id not in evidence("list").output
    one = evidence("verify", result.drill_id)
    assert one.exit_code == 1 and f"run {result.drill_id}: no evidence recorded" in one.output, one.output

    for state in (a, b):
        assert (state / "evidence" / "pgdata" / "PG_VERSION").exists()
    if os.geteuid() == 0:  # the server runs as an unprivileged user: it may enter the private parent, not list it
        assert stat.S_IMODE(embedded.base.stat().st_mode) == 0o701
    assert embedded.processes() == [], "each `drdrill evidence` command stopped the server it started"


def test_the_store_survives_a_restart_of_its_server_with_the_chain_intact(embedded, caplog):
    state = embedded.use("A")
    old = embedded.root / f"evidence-{os.getuid()}"  # an embedded store of the old layout
    (old / "data").mkdir(parents=True)
    result = sample_result("survivor")
    env = clean_env(DRDRILL_STATE_DIR=str(state), DRDRILL_CLUSTER_ROOT=str(embedded.root))
    cluster = embedded_cluster(state)

    with caplog.at_level(logging.WARNING, logger="drdrill.evidence"):
        with embedded_server():
            record_run(state, result)
            # Another drdrill command while this one still uses the store leaves its server running.
            other = cli("evidence", "verify", result.drill_id, env=env)
            assert other.returncode == 0 and "1/1 runs intact" in other.stdout, other.stdout + other.stderr
            assert cluster.running()
        assert not cluster.running(), "the command that started the server stopped it"
        assert embedded.processes() == []

        verified = evidence("verify")  # starts the server again, from the data in the state directory
    assert verified.exit_code == 0, verified.output
    assert f"run {result.drill_id}: 11 events intact" in verified.output and "1/1 runs intact" in verified.output
    with embedded_server(), open_store() as store:
        assert store.latest() == result.drill_id
        assert store.load(result.drill_id)["chain_head"] == evidence_document(result)["chain_head"]
    assert embedded.processes() == []

    # The old store is named once, and left as it was.
    notes = [r.getMessage() for r in caplog.records if "older drdrill" in r.getMessage()]
    assert len(notes) == 1 and f"is in {old} " in notes[0] and str(cluster.data) in notes[0], notes
    assert (old / "data").is_dir()


def test_the_store_starts_under_another_cluster_root_with_its_evidence(embedded, monkeypatch):
    """The data outlives the cluster root its socket was first made under (a cleaned /tmp, another
    DRDRILL_CLUSTER_ROOT): the next command starts the same store on a socket under the new root."""
    state = embedded.use("moved")
    result = sample_result("moved-root")
    with embedded_server():
        record_run(state, result)
    shutil.rmtree(embedded_cluster(state).path)  # the old socket directory is gone, as after a reboot
    other_root = embedded.root / "elsewhere"
    other_root.mkdir(mode=0o711)
    monkeypatch.setenv("DRDRILL_CLUSTER_ROOT", str(other_root))
    with embedded_server(), open_store() as store:
        assert embedded_cluster(state).path.parent == other_root
        assert store.latest() == result.drill_id
        assert [v.ok for v in store.verify(result.drill_id)] == [True]
    assert embedded.processes() == []


def test_demo_leaves_no_process_behind_and_keeps_its_evidence_in_the_state_directory(embedded):
    state = embedded.use("state")
    env = clean_env(DRDRILL_STATE_DIR=str(state), DRDRILL_CLUSTER_ROOT=str(embedded.root))

    demo = cli("demo", env=env)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "\n  PASSED" in demo.stdout
    assert embedded.processes() == [], "no PostgreSQL or Temporal process of the demo is left"

    # The evidence is in the state directory; the cluster root only holds the store's socket directory.
    data = state / "evidence" / "pgdata"
    assert (data / "PG_VERSION").exists()
    assert list(embedded.root.rglob("PG_VERSION")) == []
    (marker,) = embedded.root.glob("evidence-*/drdrill.json")
    assert json.loads(marker.read_text())["data"] == str(data)
    assert not str(data).startswith("/tmp/drdrill-clusters")

    drill_id = Path(demo.stdout.split("evidence: ")[1].split()[0]).parent.name
    verify = cli("evidence", "verify", env=env)
    assert verify.returncode == 0 and f"run {drill_id}: " in verify.stdout and "1/1 runs intact" in verify.stdout, verify.stdout
    assert embedded.processes() == []


def test_a_deleted_state_directory_leaves_no_runtime_directory_once_another_store_starts(embedded):
    """Each store keeps a small runtime directory (socket, locks) under the cluster root; deleting
    its state directory used to leave it there until reboot. The next store to start removes it,
    and only it: a store whose state directory still exists keeps its own."""
    gone, kept = embedded.use("gone"), embedded.use("kept")
    for state in (gone, kept):
        embedded.monkeypatch.setenv("DRDRILL_STATE_DIR", str(state))
        with embedded_server():
            record_run(state, sample_result(f"run-in-{state.name}"))
    gone_dir, kept_dir = embedded_cluster(gone).path, embedded_cluster(kept).path
    assert gone_dir.is_dir() and kept_dir.is_dir()
    stranger = embedded.root / "evidence-not-ours"  # not marked as drdrill's: never touched
    stranger.mkdir()
    shutil.rmtree(gone)

    embedded.use("next")
    with embedded_server():
        record_run(embedded.states[-1], sample_result("run-in-next"))

    assert not gone_dir.exists()
    assert kept_dir.is_dir() and stranger.is_dir()
    assert embedded.processes() == []
