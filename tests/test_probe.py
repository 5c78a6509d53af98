"""Checks that reach what was restored: endpoint fields for tcp/http checks, the probe inside the
isolation, and the postgres provider's `isolation.postgres: network` (a real network namespace, a
real relay to the session's Temporal dev server, a real probe process, real PostgreSQL).

These tests create network namespaces: they need root, as the machine's tests run."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, Optional

import psycopg
import pytest
from temporalio.client import WorkflowFailureError

from drdrill.core.models import DrillContext, DrillResult, RestoredResource
from drdrill.providers.spec import DrillInput, parse_spec
from drdrill.core.schema import SpecError
from drdrill.providers.postgres.provider import PostgresProvider
from drdrill.localpg.cluster import tool
from drdrill.providers.postgres.netns import ENV_DRILL_ID, netns_name, tagged_processes
from drdrill.providers.activity_io import ValidateInput
from drdrill.validation.run import run_validation
from tests.pg_fixtures import ADMIN_DSN, clusters_left, cluster_root, shop_dsn, shop_repo  # noqa: F401
from worker import connect, running_worker
from workflows.drill import DrillWorkflow

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
SYSTEM_PYTHON = "/usr/bin/python3"

# A tiny service started from the restored data inside the namespace (restore.after), in the
# drill's sandbox: it answers from the restored database (through psql: the sandbox sees the system
# Python and PostgreSQL, not the test's virtualenv), prints each request to its log, and /ready
# answers 503 until the file `ready` exists beside it.
APP = r'''
import http.server, os, subprocess, sys
psql, here = sys.argv[1], os.path.dirname(os.path.abspath(__file__))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print("hit", self.path, flush=True)
        if self.path == "/ready" and not os.path.exists(os.path.join(here, "ready")):
            body, status = b"not yet", 503
        else:
            n = subprocess.run([psql, os.environ["DRDRILL_DSN"], "-tAc", "SELECT count(*) FROM orders"],
                               capture_output=True, text=True, check=True).stdout.strip()
            body, status = f"orders={n}".encode(), 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8080), H).serve_forever()
'''


def network_drill(repo: Path, validations: str, *, probe: bool = True, app: Optional[Path] = None, name: str = "net") -> str:
    after = f"\n      after: {{argv: [{SYSTEM_PYTHON}, {app}, {tool('psql')}], paths: [{app.parent}]}}" if app else ""
    probe_yaml = "\n  probe: {postgres: {start_timeout: 90s}}" if probe else ""
    return f"""
version: 1
name: {name}
objectives: {{rto: 15m, rpo: 1h}}
max_duration: 10m
targets:
  - name: shop
    provider: postgres
    source: {{repository: {repo}, dsn_env: SHOP_PRODUCTION_DSN}}
    restore:
      timeout: 5m{after}
isolation:
  postgres: network{probe_yaml}
validations:
{validations}
"""


@pytest.fixture
def production(shop_dsn, monkeypatch) -> str:
    """Production, as the drill's source.dsn_env names it: the machine's server over TCP."""
    monkeypatch.setenv("SHOP_PRODUCTION_DSN", shop_dsn)
    return shop_dsn


@pytest.fixture
def app() -> Iterator[Path]:
    """The service, in a directory the sandbox's unprivileged uid can reach (pytest's tmp_path lies
    under a 0700 directory of root's): made 0755 for the test, removed after it."""
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"restore.after runs in the sandbox, which sees the system Python only: {SYSTEM_PYTHON} is missing")
    where = Path(tempfile.mkdtemp(prefix="drdrill-after-app-"))
    os.chmod(where, 0o755)
    path = where / "app.py"
    path.write_text(APP)
    os.chmod(path, 0o644)
    yield path
    shutil.rmtree(where, ignore_errors=True)


def app_log(root: Path) -> str:
    """What the service printed (its requests): its log, in the drill's cluster directory."""
    return "".join(p.read_text(errors="replace") for p in root.glob("*/after-shop.log"))


@pytest.fixture
def network_root(cluster_root):
    """The cluster root, swept after the test like an orphan sweep would: a failed test must leave
    no namespace or process behind either."""
    yield cluster_root
    provider = PostgresProvider(root=str(cluster_root))
    for orphan in provider.list_orphans(datetime.now(timezone.utc), set()):
        provider.delete_orphan(orphan)


def run_drill(address: str, state_dir: Path, text: str, *, during=None, heartbeat_seconds: Optional[float] = None) -> DrillResult:
    """A drill through a real worker on the session's dev server (the probe is a process of its own)."""
    spec = parse_spec(text, "<test drill>")
    drill_id = f"{spec.name}-{uuid.uuid4().hex[:6]}"

    async def go() -> DrillResult:
        client = await connect(address)
        queue = f"test-{uuid.uuid4().hex[:8]}"
        async with running_worker(client, task_queue_name=queue, providers={"postgres": PostgresProvider()}, state_dir=str(state_dir)):
            handle = await client.start_workflow(
                DrillWorkflow.run,
                DrillInput(spec=spec, drill_id=drill_id, started_by="test", heartbeat_seconds=heartbeat_seconds),
                id=drill_id,
                task_queue=queue,
            )
            if during is not None:
                await during(drill_id)
            try:
                return await handle.result()
            except WorkflowFailureError:
                return DrillResult.model_validate(json.loads((state_dir / "runs" / drill_id / "evidence.json").read_text()))

    return asyncio.run(go())


def left_behind(drill_id: str, root: Path) -> list[str]:
    """What a user would find after the drill: its namespace, processes tagged with it, clusters."""
    left = []
    if netns_name(drill_id) in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout:
        left.append(f"namespace {netns_name(drill_id)}")
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if f"{ENV_DRILL_ID}={drill_id}".encode() in environ.split(b"\0"):
            left.append(f"process {pid}")
    return left + clusters_left(root)


def checks(result: DrillResult) -> dict:
    return {c.name: c for proof in result.isolation for c in proof.checks}


# ------------------------------------------------------------------ postgres isolation: network


def test_sql_and_http_checks_pass_through_the_probe_inside_the_namespace(temporal_server, tmp_path, shop_repo, network_root, production, app):
    validations = """  - {name: orders-present, type: sql, target: shop, query: "SELECT count(*) FROM orders", expect: "== 2000"}
  - {name: tables-match, type: checksum, target: shop}
  - {name: app-answers, type: http, target: shop, path: /orders, port: 8080, contains: "orders=2000", timeout: 1m}
  - {name: app-by-template, type: http, target: shop, url: "http://{host}:8080/orders", contains: "orders=2000", timeout: 1m}
  - {name: database-port, type: tcp, target: shop}
  - {name: dsn-handed-over, type: command, target: shop, argv: [sh, -c, 'test "$DRDRILL_PORT" = 55432']}"""
    result = run_drill(temporal_server.address, tmp_path, network_drill(shop_repo, validations, app=app))

    assert result.verdict == "PASSED", (result.findings, result.validations, result.isolation)
    outcome = {v.name: (v.outcome, v.detail) for v in result.validations}
    assert outcome["orders-present"] == ("PASSED", "SELECT count(*) FROM orders = 2000 (expected == 2000)")
    assert outcome["app-answers"] == ("PASSED", "http://127.0.0.1:8080/orders answered 200 containing 'orders=2000'")
    assert outcome["app-by-template"][0] == "PASSED"
    assert outcome["database-port"] == ("PASSED", "127.0.0.1:55432 accepts connections")
    # The proof, from inside the namespace: production is not reachable, nothing else is, Temporal is.
    proof = checks(result)
    assert {name: c.outcome for name, c in proof.items()} == {
        "server inside the namespace, on its loopback": "PASSED",
        "production unreachable from inside": "PASSED",
        "only a loopback interface": "PASSED",
        "no route out of the namespace": "PASSED",
        "Temporal frontend reachable through the relay": "PASSED",
        "production's socket directories private": "PASSED",
        "evidence store unreachable from inside": "PASSED",
        "state directory not visible from inside": "PASSED",
        "the drill's processes run inside the namespace": "PASSED",
        "no WAL shipping or replication": "PASSED",
    }
    assert "$SHOP_PRODUCTION_DSN: 127.0.0.1:5432 (127.0.0.1): connection refused" in proof["production unreachable from inside"].detail
    assert "192.0.2.1:443: network is unreachable" in proof["no route out of the namespace"].detail
    assert proof["only a loopback interface"].detail == "interfaces: lo"
    processes = proof["the drill's processes run inside the namespace"].detail
    assert "relay-host" in processes and "outside (the relay's outer half)" in processes
    assert all(f"{role} " in processes for role in ("probe", "relay-netns"))
    env = result.environments[0]
    assert env.details["netns"] == netns_name(result.drill_id) and env.details["reachable_from_worker"] is False
    probe = next(e for e in result.timeline if e.phase == "probe")
    assert probe.outcome == "PASSED" and env.details["probe_queue"] in probe.detail
    # Torn down: the probe, the relay's two halves, the app, the cluster and the namespace.
    kinds = sorted({o.kind for o in result.teardown[0].outcomes if o.result == "deleted"})
    assert kinds == ["cluster", "netns", "process"]
    roles = {o.id.split(":")[0] for o in result.teardown[0].outcomes if o.kind == "process"}
    assert {"probe", "relay-host", "relay-netns", "after-shop"} <= roles
    assert left_behind(result.drill_id, network_root) == []


def _socket_dir_of_the_machines_server() -> Optional[str]:
    with psycopg.connect(ADMIN_DSN) as conn:
        dirs = conn.execute("SELECT current_setting('unix_socket_directories')").fetchone()[0]
    return next((d.strip() for d in dirs.split(",") if d.strip().startswith("/")), None)


def test_production_socket_is_hidden_from_inside_the_sandbox(temporal_server, tmp_path, shop_repo, network_root, shop_dsn, monkeypatch):
    """Production's Unix socket is a file: a network namespace alone does not hide it (it did not,
    before the sandbox). Inside the drill's sandbox its directory is a private tmpfs: the proof
    tries it and finds nothing there."""
    sockets = _socket_dir_of_the_machines_server()
    if sockets is None:
        pytest.skip("the machine's PostgreSQL server has no Unix socket")
    dbname = psycopg.conninfo.conninfo_to_dict(shop_dsn)["dbname"]
    monkeypatch.setenv("SHOP_PRODUCTION_DSN", f"host={sockets} port=5432 user=postgres dbname={dbname}")
    validations = """  - {name: orders-present, type: sql, target: shop, query: "SELECT count(*) FROM orders", expect: "> 0"}"""
    result = run_drill(temporal_server.address, tmp_path, network_drill(shop_repo, validations, probe=False))

    production = checks(result)["production unreachable from inside"]
    assert production.outcome == "PASSED", production
    assert f"Unix socket {sockets}/.s.PGSQL.5432: no such file or directory" in production.detail
    assert checks(result)["production's socket directories private"].outcome == "PASSED"
    assert "ISOLATION_BROKEN" not in [f.code for f in result.findings]
    assert result.restored
    assert left_behind(result.drill_id, network_root) == []


def test_killing_the_probe_mid_check_could_not_verify_never_passes(temporal_server, tmp_path, shop_repo, network_root, production, app):
    """The check keeps asking /ready (503) while the probe runs it; the probe is killed, then the
    service becomes ready. Nobody is left to see it: the check could not be verified."""
    validations = """  - {name: app-ready, type: http, target: shop, path: /ready, port: 8080, contains: "orders=2000", timeout: 10s}"""
    killed = {}

    async def kill_the_probe_mid_check(drill_id: str) -> None:
        while "hit /ready" not in app_log(network_root):
            await asyncio.sleep(0.05)  # polling for the probe's first request to the service
        probe = next(p for p in tagged_processes(network_root, drill_id) if p.role == "probe")
        os.killpg(probe.pid, signal.SIGKILL)
        killed["pid"] = probe.pid
        (app.parent / "ready").touch()

    result = run_drill(
        temporal_server.address, tmp_path, network_drill(shop_repo, validations, app=app), during=kill_the_probe_mid_check, heartbeat_seconds=5
    )

    assert killed, "the probe was killed while it ran the check"
    check = result.validations[0]
    assert check.outcome == "COULD_NOT_VERIFY", check
    assert "could not run in the postgres probe" in check.detail
    assert result.verdict == "COULD_NOT_VERIFY"
    assert left_behind(result.drill_id, network_root) == []


def test_a_probe_that_never_polls_is_a_finding_and_its_checks_could_not_verify(temporal_server, tmp_path, shop_repo, network_root, production):
    """The probe starts, but in a Temporal namespace that does not exist: it never polls."""
    validations = """  - {name: orders-present, type: sql, target: shop, query: "SELECT count(*) FROM orders", expect: "> 0"}"""
    text = network_drill(shop_repo, validations).replace("start_timeout: 90s", "start_timeout: 3s, temporal_namespace: no-such-namespace")
    result = run_drill(temporal_server.address, tmp_path, text)

    assert result.verdict == "COULD_NOT_VERIFY"
    finding = next(f for f in result.findings if f.code == "PROBE_NOT_STARTED")
    assert finding.could_not_verify and "never polled its task queue" in finding.message
    check = result.validations[0]
    assert (check.outcome, check.attempts) == ("COULD_NOT_VERIFY", 0)
    assert "probe never polled its task queue" in check.detail
    assert next(e for e in result.timeline if e.phase == "probe").outcome == "COULD_NOT_VERIFY"
    assert left_behind(result.drill_id, network_root) == []


def test_an_unreachable_network_without_a_probe_could_not_verify_at_once(temporal_server, tmp_path, shop_repo, network_root, production):
    validations = """  - {name: orders-present, type: sql, target: shop, query: "SELECT count(*) FROM orders", expect: "> 0"}
  - {name: tables-match, type: checksum, target: shop}
  - {name: database-port, type: tcp, target: shop}
  - {name: app-answers, type: http, target: shop, path: /health, port: 8080}
  - {name: dsn-handed-over, type: command, target: shop, argv: [sh, -c, 'test -n "$DRDRILL_DSN"']}"""
    result = run_drill(temporal_server.address, tmp_path, network_drill(shop_repo, validations, probe=False))

    assert result.verdict == "COULD_NOT_VERIFY"
    by_name = {v.name: v for v in result.validations}
    for name in ("orders-present", "tables-match", "database-port", "app-answers"):
        check = by_name[name]
        assert check.outcome == "COULD_NOT_VERIFY" and check.attempts == 0, check
        assert "the worker cannot reach" in check.detail and "set isolation.probe.postgres" in check.detail
    # A command reads what it reads from the worker: it still runs there.
    assert by_name["dsn-handed-over"].outcome == "PASSED" and by_name["dsn-handed-over"].attempts == 1
    assert not any(e.phase == "probe" for e in result.timeline)
    assert left_behind(result.drill_id, network_root) == []


def test_the_orphan_sweep_finds_the_namespace_and_processes_by_their_tags(shop_repo, network_root, production, app):
    """A worker that died mid-drill: its namespace, its app and its cluster are found by tag and removed."""
    spec = parse_spec(network_drill(shop_repo, "  - {type: checksum, target: shop}", probe=False, app=app), "<test>")
    now = datetime.now(timezone.utc)
    ctx = DrillContext(drill_id=f"orphan-{uuid.uuid4().hex[:6]}", drill_name="orphan", declared=now, expires_at=now + timedelta(hours=1))
    provider = PostgresProvider(root=str(network_root))
    target = spec.targets[0]
    env = provider.create_isolation(ctx, spec.isolation, spec.targets)
    resource = provider.restore(ctx, target, provider.find_recovery_point(ctx, target), env)
    ready = provider.wait_ready(ctx, target, resource, 60)
    tag_file = json.loads((Path(env.id) / "drdrill.json").read_text())
    assert tag_file["drdrill:netns"] == netns_name(ctx.drill_id)
    assert tag_file["drdrill:processes"] == f"after-shop={ready.details['after_pid']}"

    orphans = provider.list_orphans(now, active_drill_ids=set())
    kinds = [o.kind for o in orphans if o.drill_id == ctx.drill_id]
    assert kinds[0] == "process" and kinds[-2:] == ["netns", "cluster"]
    outcomes = [provider.delete_orphan(o) for o in orphans]
    assert {o.result for o in outcomes} <= {"deleted", "already_gone"} and outcomes[-1].result == "deleted"
    assert left_behind(ctx.drill_id, network_root) == []


# ------------------------------------------------------------------ endpoint fields


LINTED = """
version: 1
name: web
objectives: {rto: 15m, rpo: 1h}
targets:
  - name: web
    provider: aws.ec2
    source: {instance_id: i-0abc}
  - name: shop
    provider: postgres
    source: {repository: /var/backups/shop}
validations:
"""


@pytest.mark.parametrize(
    "check, problem",
    [
        (
            '{type: http, target: web, url: "http://{hostname}:8080/health"}',
            "validations[0].url: {hostname} is not an endpoint field of target web (aws.ec2); known fields: host, private_ip, "
            "instance_id, image_id, subnet_id, volume_ids, data_snapshot_ids, security_group_id, region",
        ),
        (
            "{type: tcp, target: shop, port: 5432}",
            "validations[0].target: tcp needs the target's host, but target shop (postgres) publishes only: dsn, database, socket_dir; "
            "the default isolation has no TCP listener (use an sql check); set isolation.postgres: network for one",
        ),
        ("{type: tcp, target: web}", "validations[0].target: tcp needs the target's port, but target web (aws.ec2) publishes only: host, "),
        ('{type: http, url: "http://{host}:8080/"}', "validations[0]: 'http://{host}:8080/' names endpoint fields: add 'target:' to say whose"),
        ("{type: http, target: web, path: /health}", "validations[0]: 'path' needs 'target' and 'port'"),
        ("{type: tcp, host: db.internal}", "validations[0]: a tcp check with a fixed host needs 'port'"),
    ],
)
def test_lint_names_the_unknown_endpoint_field_and_the_known_ones(check, problem):
    with pytest.raises(SpecError) as err:
        parse_spec(LINTED + f"  - {check}\n", "drills/web.yaml")
    assert err.value.path == "drills/web.yaml"
    assert any(f"{loc}: {msg}".startswith(problem) for loc, msg in err.value.problems), err.value.problems


def test_lint_accepts_published_fields_and_fixed_hosts():
    spec = parse_spec(
        LINTED
        + """  - {name: by-template, type: http, target: web, url: "http://{private_ip}:8080/health"}
  - {type: tcp, target: web, port: 22}
  - {name: by-path, type: http, target: web, path: /health, port: 8080}
  - {type: tcp, host: db.internal, port: 5432}
  - {type: http, url: "https://status.example.com/"}
""",
        "drills/web.yaml",
    )
    assert [v.type for v in spec.validations] == ["http", "tcp", "http", "tcp", "http"]
    network = parse_spec(LINTED.replace("validations:", "isolation: {postgres: network}\nvalidations:") + "  - {type: tcp, target: shop}\n")
    assert network.validations[0].target == "shop"


def test_lint_keeps_the_probe_and_restore_after_inside_a_namespace():
    probe_without_network = LINTED.replace("validations:", "isolation: {probe: {postgres: {}}}\nvalidations: []")
    with pytest.raises(SpecError) as err:
        parse_spec(probe_without_network, "drills/web.yaml")
    assert err.value.problems == [
        ("isolation", "probe.postgres runs inside the drill's network namespace: set 'postgres: network' in isolation, or remove probe.postgres")
    ]
    after_on_the_socket = LINTED.replace("/var/backups/shop}", "/var/backups/shop}\n    restore: {after: {argv: [serve]}}") + "  []\n"
    with pytest.raises(SpecError) as err:
        parse_spec(after_on_the_socket.replace("validations:\n  []", "validations: []"), "drills/web.yaml")
    assert err.value.problems[0][0] == "targets[1].restore.after"
    assert err.value.problems[0][1].startswith("restore.after starts an application inside the drill's network namespace: set isolation.postgres: network")


@pytest.fixture
def local_service():
    """An HTTP service on the worker's loopback, and the port it listens on."""

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"hello " + self.path.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _check(validation: str, endpoint: dict):
    spec = parse_spec(
        LINTED.replace("validations:", "isolation: {postgres: network}\nvalidations:") + f"  - {validation}\n", "<test>"
    )
    resource = RestoredResource(target="web", provider="aws.ec2", id="i-0abc", endpoint=endpoint, ready=True)
    inp = ValidateInput(validation=spec.validations[0], name="c", resource=resource, declared=datetime.now(timezone.utc), rpo_objective_seconds=3600)
    return run_validation(inp, connect_timeout=2)


def test_tcp_and_http_checks_fill_in_the_targets_address(local_service):
    endpoint = {"host": "127.0.0.1", "private_ip": "127.0.0.1", "instance_id": "i-0abc"}
    tcp = _check(f"{{type: tcp, target: web, port: {local_service}}}", endpoint)
    assert (tcp.outcome, tcp.detail) == ("PASSED", f"127.0.0.1:{local_service} accepts connections")
    by_path = _check(f"{{type: http, target: web, path: /health, port: {local_service}, contains: hello}}", endpoint)
    assert (by_path.outcome, by_path.detail) == ("PASSED", f"http://127.0.0.1:{local_service}/health answered 200 containing 'hello'")
    template = f'{{type: http, target: web, url: "http://{{private_ip}}:{local_service}/{{instance_id}}", contains: "hello /i-0abc"}}'
    by_template = _check(template, endpoint)
    assert by_template.outcome == "PASSED", by_template.detail
    # A field the restored resource did not fill in: the check could not run, and says which.
    missing = _check(template, {"host": "127.0.0.1", "instance_id": "i-0abc"})
    assert missing.outcome == "COULD_NOT_VERIFY" and missing.attempts == 1
    assert missing.detail == "target web publishes no 'private_ip' (its endpoint has: host, instance_id)"
