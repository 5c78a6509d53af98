"""`restore.after` is as untrusted as the backup it serves: it runs in the drill's sandbox.

An application started from the restored data tries what an adversary's code would: read the
worker's secrets, write a marker outside its sandbox, reach production on 127.0.0.1:5432, and leave
a child behind. Nothing escapes, and nothing it started survives teardown. Real PostgreSQL, a real
network namespace, a real bubblewrap sandbox; these tests need root, as the machine's tests run."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest

from drdrill.core.models import DrillContext
from drdrill.core.schema import SpecError
from drdrill.providers.spec import load_spec, parse_spec
from drdrill.providers.postgres.provider import PostgresProvider
from drdrill.localpg.cluster import tool
from tests.pg_fixtures import cluster_root, shop_dsn, shop_repo  # noqa: F401

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and sandbox uids need root")
SYSTEM_PYTHON = "/usr/bin/python3"

# The hostile application: each attempt prints what it found; a child is left running with a token
# in its command line, so the test can look for it on the host.
HOSTILE = r'''
import os, socket, subprocess, sys
psql, marker, token = sys.argv[1], sys.argv[2], sys.argv[3]
print("env", sorted(os.environ.items()), flush=True)
try:
    print("proc1", open("/proc/1/environ").read(), flush=True)
except OSError as exc:
    print("proc1 refused", exc, flush=True)
for target in (marker, os.path.join(os.path.dirname(os.path.abspath(__file__)), "written")):
    try:
        with open(target, "w") as fh:
            fh.write("escaped")
        print("wrote", target, flush=True)
    except OSError as exc:
        print("write refused", target, exc, flush=True)
try:
    socket.create_connection(("127.0.0.1", 5432), timeout=3).close()
    print("production reached", flush=True)
except OSError as exc:
    print("production refused", exc, flush=True)
rows = subprocess.run([psql, os.environ["DRDRILL_DSN"], "-tAc", "SELECT count(*) FROM orders"], capture_output=True, text=True)
print("restored orders", rows.stdout.strip(), rows.stderr.strip(), flush=True)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100000)", token], start_new_session=True)  # allowed: a child left behind on purpose
print("child left", flush=True)
import time
time.sleep(100000)  # allowed: the hostile app is a long-lived service, it runs until teardown
'''


@pytest.fixture
def hostile_app() -> Iterator[Path]:
    """The application, in a 0755 directory an unprivileged uid can reach (not pytest's 0700 tmp)."""
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"the sandbox sees the system Python only: {SYSTEM_PYTHON} is missing")
    where = Path(tempfile.mkdtemp(prefix="drdrill-hostile-after-"))
    os.chmod(where, 0o755)
    (where / "app.py").write_text(HOSTILE)
    os.chmod(where / "app.py", 0o644)
    yield where / "app.py"
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A world-writable directory on the host: where an escaped application would leave its marker."""
    where = Path(tempfile.mkdtemp(prefix="drdrill-hostile-marker-"))
    os.chmod(where, 0o777)
    yield where
    shutil.rmtree(where, ignore_errors=True)


def _processes_with(token: str) -> list[int]:
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if token.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                found.append(int(pid))
        except OSError:
            continue
    return found


def _wait_for_process(token: str, timeout: float = 30.0) -> list[int]:
    import time as clock

    deadline = clock.monotonic() + timeout
    while not _processes_with(token) and clock.monotonic() < deadline:
        clock.sleep(0.1)  # polling /proc for the child the application started
    return _processes_with(token)


def _drill(repo: Path, app: Path, marker: Path, token: str) -> str:
    return f"""
version: 1
name: hostile-after
objectives: {{rto: 15m, rpo: 1h}}
targets:
  - name: shop
    provider: postgres
    source: {{repository: {repo}}}
    restore:
      after: {{argv: [{SYSTEM_PYTHON}, {app}, {tool('psql')}, {marker}, {token}], paths: [{app.parent}]}}
isolation:
  postgres: network
validations:
  - {{type: checksum, target: shop}}
"""


def _wait_for(path_glob: Path, text: str, pid: int, timeout: float = 60.0) -> str:
    """The application's log once it holds `text` (or it ended, or `timeout`)."""
    import time as clock

    deadline = clock.monotonic() + timeout
    while True:
        log = "".join(p.read_text(errors="replace") for p in path_glob.parent.glob(path_glob.name))
        if text in log or clock.monotonic() > deadline or not Path(f"/proc/{pid}").exists():
            return log
        clock.sleep(0.1)  # polling the application's log for its last line


def test_a_hostile_after_application_reaches_nothing_and_leaves_nothing(shop_repo, cluster_root, hostile_app, open_dir, monkeypatch):
    secret = f"worker-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("HOSTILE_WORKER_PASSWORD", secret)
    token = f"drdrill-left-behind-{uuid.uuid4().hex[:8]}"
    marker = open_dir / "escaped"
    spec = parse_spec(_drill(shop_repo, hostile_app, marker, token), "<hostile after>")
    target = spec.targets[0]
    # restore.environment as the activity hands it over: a value the drill names, nothing else.
    target = target.model_copy(update={"restore": target.restore.model_copy(update={"environment": {"APP_MODE": "handed-over"}})})
    now = datetime.now(timezone.utc)
    ctx = DrillContext(drill_id=f"hostile-{uuid.uuid4().hex[:6]}", drill_name="hostile-after", declared=now, expires_at=now + timedelta(hours=1))
    provider = PostgresProvider(root=str(cluster_root))
    env = provider.create_isolation(ctx, spec.isolation, spec.targets)
    try:
        resource = provider.restore(ctx, target, provider.find_recovery_point(ctx, target), env)
        ready = provider.wait_ready(ctx, target, resource, 60)
        log = _wait_for(Path(env.id) / "after-shop.log", "child left", ready.details["after_pid"])

        assert "child left" in log, log
        assert secret not in log and "HOSTILE_WORKER_PASSWORD" not in log
        assert "'APP_MODE', 'handed-over'" in log and "'DRDRILL_PORT', '55432'" in log
        assert f"write refused {marker}" in log and f"write refused {hostile_app.parent / 'written'}" in log
        assert not marker.exists() and not (hostile_app.parent / "written").exists()
        assert "production refused" in log and "production reached" not in log
        assert "restored orders 2000" in log  # it does reach what was restored
        assert _wait_for_process(token), "the child runs until teardown"
        # The proof lists the application, inside the namespace.
        proof = {c.name: c for c in provider.verify_isolation(ctx, env).checks}
        inside = proof["the drill's processes run inside the namespace"]
        assert inside.outcome == "PASSED" and f"after-shop {ready.details['after_pid']} inside" in inside.detail
    finally:
        report = provider.teardown(ctx, env)

    assert [o.kind for o in report.outcomes if o.id.startswith("after-shop:")] == ["process"]
    assert _processes_with(token) == []
    assert not Path(env.id).exists()


def test_lint_names_an_after_path_the_sandbox_uid_cannot_reach(tmp_path, hostile_app):
    """pytest's tmp_path lies under root's 0700 directory: the error names the field, the directory and the fix."""
    hidden = tmp_path / "app"
    hidden.mkdir()
    drill = tmp_path / "drill.yaml"
    text = _drill(Path("/var/backups/shop"), hostile_app, Path("/nowhere"), "t").replace(f"paths: [{hostile_app.parent}]", f"paths: [{hidden}, ./missing]")
    drill.write_text(text)
    with pytest.raises(SpecError) as err:
        load_spec(drill)
    problems = dict(err.value.problems)
    unreachable = problems["targets[0].restore.after.paths[0]"]
    assert "cannot traverse it" in unreachable and "move the application under /opt or /srv" in unreachable
    assert problems["targets[0].restore.after.paths[1]"] == f"{tmp_path / 'missing'} does not exist: restore.after's sandbox sees only what exists when the drill starts"

    drill.write_text(text.replace(f"paths: [{hidden}, ./missing]", f"paths: [{hostile_app.parent}]"))
    assert load_spec(drill).targets[0].restore.after.paths == [str(hostile_app.parent)]


def test_an_unreachable_after_path_on_the_worker_is_refused_with_the_fix(shop_repo, cluster_root, hostile_app, tmp_path):
    """Lint may run on another machine: the worker checks the paths again before it starts the application."""
    from drdrill.providers.base import ProviderError

    hidden = tmp_path / "app"  # under pytest's 0700 directory of root's
    hidden.mkdir()
    text = _drill(shop_repo, hostile_app, Path("/nowhere"), "t").replace(f"paths: [{hostile_app.parent}]", f"paths: [{hidden}]")
    spec = parse_spec(text, "<hostile after>")
    target = spec.targets[0]
    now = datetime.now(timezone.utc)
    ctx = DrillContext(drill_id=f"hostile-{uuid.uuid4().hex[:6]}", drill_name="hostile-after", declared=now, expires_at=now + timedelta(hours=1))
    provider = PostgresProvider(root=str(cluster_root))
    env = provider.create_isolation(ctx, spec.isolation, spec.targets)
    try:
        resource = provider.restore(ctx, target, provider.find_recovery_point(ctx, target), env)
        with pytest.raises(ProviderError) as err:
            provider.wait_ready(ctx, target, resource, 60)
        assert err.value.code == "RESTORE_AFTER_FAILED"
        assert "restore.after.paths:" in str(err.value) and "move the application under /opt or /srv" in str(err.value)
        assert not list(Path(env.id).glob("after-*.sandbox.json"))
    finally:
        provider.teardown(ctx, env)
    assert not Path(env.id).exists()
