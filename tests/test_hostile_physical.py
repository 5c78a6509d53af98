"""Hostile physical backups, written as a team's adversary would write them: a base backup whose data
directory links drdrill's writes to root-owned files outside the cluster, a backup whose
configuration runs commands and loads libraries at recovery, a cluster root another user made first,
and WAL damaged in the middle of the archive. Built with the real tools (pg_basebackup, pgBackRest);
each attack fails on the code before issue 21/23 and is refused or contained after it."""

from __future__ import annotations

import gzip
from datetime import datetime, timedelta, timezone
import os
import pwd
import stat
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

from drdrill.localpg.cluster import ClusterRootError, cluster_root as cluster_root_of
from drdrill.localpg.backupconf import parse
from drdrill.localpg.cluster import tool
from tests.moto_server import moto_endpoint  # noqa: F401
from tests.pg_fixtures import clusters_left, cluster_root  # noqa: F401
from tests.test_pitr import (  # noqa: F401
    PGBACKREST,
    Production,
    at,
    barman,
    codes,
    needs_pgbackrest,
    owned_by_server,
    pgbackrest_source,
    pitr_drill,
    run,
    stanza,
)

COUNT = '  - {{name: markers, type: sql, target: app, query: "SELECT count(*) FROM markers", expect: "== {n}"}}\n'


def victim_file(tmp_path: Path, text: str = "root:x:0:0:root:/root:/bin/bash\n") -> Path:
    """A root-owned file outside every cluster, standing in for /etc/passwd."""
    victim = tmp_path / "outside" / "passwd"
    victim.parent.mkdir()
    victim.write_text(text)
    os.chmod(victim, 0o644)
    return victim


def base_backup(root: Path, rows: int = 2) -> tuple[Path, Path, list]:
    """A pg_basebackup -Fp directory (base/b1) and the `cp` WAL archive beside it."""
    archive = owned_by_server(root / "archive")
    prod = Production(root, f"cp %p {archive}/%f")
    try:
        base = root / "base"
        base.mkdir()
        proc = subprocess.run(
            [tool("pg_basebackup"), "-D", str(base / "b1"), "-Fp", "-X", "none", "--checkpoint=fast", "-h", str(prod.cluster.sock), "-U", "drdrill"],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        markers = prod.markers(rows)
        prod.archive()
    finally:
        prod.stop()
    return base, archive, markers


def wal_archive_source(base: Path, archive: Path) -> str:
    return f"wal_archive: {{base_backups: {base}, archive: {archive}, user: drdrill}}"


# ------------------------------------------------------------------------------------ links


@pytest.mark.parametrize("name", ["pg_hba.conf", "postgresql.auto.conf"])
def test_a_base_backup_linking_a_config_file_to_a_root_file_leaves_it_untouched(drill_harness, cluster_root, tmp_path, name):  # noqa: F811
    base, archive, _ = base_backup(cluster_root)
    victim = victim_file(tmp_path)
    before = victim.read_bytes()
    (base / "b1" / name).unlink()
    os.symlink(victim, base / "b1" / name)

    result = run(drill_harness, pitr_drill(wal_archive_source(base, archive)))

    assert victim.read_bytes() == before, "drdrill wrote through the backup's link"
    st = victim.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o644), "the root-owned file changed hands"
    assert result.verdict != "PASSED"
    assert "BACKUP_SYMLINK_REFUSED" in codes(result), result.findings
    refused = next(f for f in result.findings if f.code == "BACKUP_SYMLINK_REFUSED")
    assert f"{name} -> {victim}" in refused.message
    assert clusters_left(cluster_root) == []


def test_a_base_backup_linking_a_directory_outside_is_neither_read_nor_handed_over(drill_harness, cluster_root, tmp_path):  # noqa: F811
    base, archive, _ = base_backup(cluster_root)
    secrets = tmp_path / "outside" / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    os.chmod(secrets / "id_rsa", 0o600)
    # A tablespace link to a root-only directory, and a plain directory link drdrill would walk into.
    os.symlink(secrets, base / "b1" / "pg_tblspc" / "16999")
    os.symlink(secrets, base / "b1" / "conf.d")

    result = run(drill_harness, pitr_drill(wal_archive_source(base, archive)))

    assert result.verdict != "PASSED"
    assert "BACKUP_SYMLINK_REFUSED" in codes(result), result.findings
    assert [p for p in cluster_root.rglob("id_rsa")] == [], "the linked directory was copied where the server user can read it"
    st = (secrets / "id_rsa").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    assert os.stat(secrets).st_uid == 0
    assert clusters_left(cluster_root) == []


# ------------------------------------------------------------------------------------ configuration


@needs_pgbackrest
def test_a_backups_recovery_commands_and_libraries_do_not_run_and_are_in_the_evidence(drill_harness, stanza, cluster_root):  # noqa: F811
    markers = owned_by_server(cluster_root / "attacker")
    with psycopg.connect(stanza.prod.cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET recovery_end_command = 'touch {markers}/recovery_end'")
        conn.execute(f"ALTER SYSTEM SET archive_cleanup_command = 'touch {markers}/archive_cleanup'")
        conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'drdrill_planted_library'")
    backed_up = (stanza.prod.cluster.data / "postgresql.auto.conf").read_bytes()
    stanza.backup()
    stanza.prod.markers(2)
    stanza.prod.archive()

    result = run(drill_harness, pitr_drill(pgbackrest_source(stanza), validations=COUNT.format(n=2)))

    assert list(markers.iterdir()) == [], "a command of the backup's configuration ran"
    assert result.verdict == "PASSED", (result.findings, result.validations)
    assert "(in the sandbox: bubblewrap as uid" in result.restored[0].details["restored_with"]
    config = result.restored[0].details["backup_configuration"]
    auto = config["files"]["postgresql.auto.conf"]
    # The file as the backup laid it down (pgbackrest restore adds its own recovery lines to it).
    assert len(auto["sha256"]) == 64 and auto["set_aside_to"].endswith("app-backup-config/postgresql.auto.conf")
    planted = {k: v for k, v in parse(backed_up.decode()) if k in ("recovery_end_command", "archive_cleanup_command", "shared_preload_libraries")}
    assert len(planted) == 3 and all(auto["settings"][k] == v for k, v in planted.items())
    assert auto["settings"]["recovery_end_command"] == f"touch {markers}/recovery_end"
    assert config["dangerous"]["shared_preload_libraries"] == "drdrill_planted_library"
    set_aside = next(f for f in result.findings if f.code == "BACKUP_CONFIG_SET_ASIDE")
    assert set_aside.severity == "warning" and "recovery_end_command" in set_aside.message
    assert clusters_left(cluster_root) == []


# ------------------------------------------------------------------------------------ the cluster root


def test_a_cluster_root_another_user_made_first_is_refused(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    nobody = pwd.getpwnam("nobody")
    planted = Path("/tmp") / f"drdrill-planted-{os.getpid()}"
    planted.mkdir(mode=0o755)
    try:
        os.chown(planted, nobody.pw_uid, nobody.pw_gid)
        monkeypatch.setenv("DRDRILL_CLUSTER_ROOT", str(planted))
        with pytest.raises(ClusterRootError) as refused:
            cluster_root_of()
        assert f"{planted} belongs to nobody" in str(refused.value) and "set DRDRILL_CLUSTER_ROOT" in str(refused.value)
        assert list(planted.iterdir()) == [] and planted.stat().st_uid == nobody.pw_uid, "drdrill used or took over the directory"
    finally:
        planted.rmdir()


def test_a_cluster_root_writable_by_others_is_refused_and_the_default_is_not_in_tmp(monkeypatch):
    planted = Path("/tmp") / f"drdrill-open-{os.getpid()}"
    planted.mkdir()
    os.chmod(planted, 0o777)
    try:
        monkeypatch.setenv("DRDRILL_CLUSTER_ROOT", str(planted))
        with pytest.raises(ClusterRootError) as refused:
            cluster_root_of()
        assert "writable by group or others (mode 0777)" in str(refused.value)
        assert stat.S_IMODE(planted.stat().st_mode) == 0o777
    finally:
        planted.rmdir()
    monkeypatch.delenv("DRDRILL_CLUSTER_ROOT")
    from drdrill.localpg.cluster import default_cluster_root

    assert not str(default_cluster_root()).startswith("/tmp/")


# ------------------------------------------------------------------------------------ damaged WAL


def flip(data: bytes, offset: int = 64, n: int = 16) -> bytes:
    """16 bytes inverted just after the segment's long page header: inside its first WAL records."""
    return data[:offset] + bytes(b ^ 0xFF for b in data[offset : offset + n]) + data[offset + n :]


def marker_segments(prod: Production, n: int) -> list[str]:
    """n marker rows, each in its own archived segment."""
    segments = []
    with psycopg.connect(prod.dsn, autocommit=True) as conn:
        for _ in range(n):
            conn.execute("INSERT INTO markers DEFAULT VALUES")
            segments.append(prod.archive(conn))
    return segments


@needs_pgbackrest
@pytest.mark.parametrize("rule", ["latest", "at"])
def test_a_pgbackrest_segment_damaged_mid_archive_is_wal_damaged(drill_harness, stanza, cluster_root, rule):  # noqa: F811
    stanza.backup()
    segments = marker_segments(stanza.prod, 7)
    with psycopg.connect(stanza.prod.dsn) as conn:
        last = conn.execute("SELECT max(at) FROM markers").fetchone()[0]
    damaged = segments[-4]
    (path,) = stanza.repo.glob(f"archive/main/*/*/{damaged}-*")
    # Repacked as pgBackRest packs it, so only the content differs from the SHA1 in the name.
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(flip(gzip.decompress(path.read_bytes()))))
    else:
        path.write_bytes(flip(path.read_bytes()))

    result = run(drill_harness, pitr_drill(pgbackrest_source(stanza), "{rule: latest}" if rule == "latest" else at(last)))

    assert result.verdict == "FAILED"
    assert "WAL_DAMAGED" in codes(result), result.findings
    message = next(f for f in result.findings if f.code == "WAL_DAMAGED").message
    assert f"archived WAL segment {damaged} is damaged: its SHA1 is" in message
    assert f"{segments[-1]}" in message and "the archive ends" not in message
    assert clusters_left(cluster_root) == []


def test_a_wal_archive_segment_damaged_mid_archive_ends_replay_early(drill_harness, cluster_root):  # noqa: F811
    archive = owned_by_server(cluster_root / "archive")
    prod = Production(cluster_root, f"cp %p {archive}/%f")
    try:
        base = cluster_root / "base"
        base.mkdir()
        proc = subprocess.run(
            [tool("pg_basebackup"), "-D", str(base / "b1"), "-Fp", "-X", "none", "--checkpoint=fast", "-h", str(prod.cluster.sock), "-U", "drdrill"],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        segments = marker_segments(prod, 7)
    finally:
        prod.stop()
    damaged = segments[-4]
    (archive / damaged).write_bytes(flip((archive / damaged).read_bytes()))

    result = run(drill_harness, pitr_drill(wal_archive_source(base, archive), validations=COUNT.format(n=7)))

    assert result.verdict == "FAILED"
    assert "REPLAY_ENDED_EARLY" in codes(result), result.findings
    message = next(f for f in result.findings if f.code == "REPLAY_ENDED_EARLY").message
    assert f"replay ended in WAL segment {damaged}" in message and f"segments up to {segments[-1]}" in message
    assert clusters_left(cluster_root) == []


@needs_pgbackrest
def test_a_target_inside_the_only_backups_run_is_not_blamed_on_retention(drill_harness, stanza, cluster_root):  # noqa: F811
    backup = stanza.backup()
    started = datetime.fromtimestamp(backup["timestamp"]["start"], timezone.utc)
    inside = started + timedelta(microseconds=500)  # after the start (whole seconds), before the end
    result = run(drill_harness, pitr_drill(pgbackrest_source(stanza), at(inside)))

    assert result.verdict == "FAILED"
    assert codes(result) == ["PITR_TARGET_BEFORE_BACKUP"], result.findings
    message = result.findings[0].message
    assert f"falls inside backup {backup['label']}'s own run" in message and "retention" not in message
    # Nothing was restored: the RPO is not measured, never passed.
    rpo = next(o for o in result.objectives if o.name == "RPO")
    assert rpo.outcome != "PASSED"
    assert clusters_left(cluster_root) == []


def test_a_wal_archive_segment_with_another_segments_content_is_wal_damaged(drill_harness, cluster_root):  # noqa: F811
    """A segment replaced by a copy of the one before it (a botched restore of the archive, or an
    attacker hiding a transaction): its header names another start address."""
    base, archive, _ = base_backup(cluster_root, rows=1)
    segments = sorted(p.name for p in archive.iterdir() if len(p.name) == 24)
    assert len(segments) >= 2, segments
    swapped = segments[-1]
    (archive / swapped).write_bytes((archive / segments[-2]).read_bytes())

    result = run(drill_harness, pitr_drill(wal_archive_source(base, archive)))

    assert result.verdict == "FAILED"
    assert "WAL_DAMAGED" in codes(result), result.findings
    message = next(f for f in result.findings if f.code == "WAL_DAMAGED").message
    assert f"archived WAL segment {swapped} is damaged: its header does not match: start address" in message
    assert clusters_left(cluster_root) == []


def test_a_barman_segment_damaged_mid_archive_ends_replay_early(drill_harness, cluster_root, moto_endpoint):  # noqa: F811
    import boto3

    bucket = f"hostile-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/pg"
    spool = owned_by_server(cluster_root / "spool")
    prod = Production(cluster_root, f"cp %p {spool}/%f")
    try:
        backup = subprocess.run(
            [barman("barman-cloud-backup"), "--endpoint-url", moto_endpoint, "-h", str(prod.cluster.sock), "-p", "5432", "-U", "drdrill",
             "-d", "postgres", "--immediate-checkpoint", url, "prod"],
            capture_output=True, text=True,
        )
        assert backup.returncode == 0, backup.stderr
        segments = marker_segments(prod, 7)
    finally:
        prod.stop()
    damaged = segments[-4]
    (spool / damaged).write_bytes(flip((spool / damaged).read_bytes()))
    for f in sorted(spool.iterdir()):  # what the archive_command would have shipped
        out = subprocess.run([barman("barman-cloud-wal-archive"), "--endpoint-url", moto_endpoint, url, "prod", str(f)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    source = f"barman: {{source_url: '{url}', server: prod, endpoint_url: '{moto_endpoint}', user: drdrill, env: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION]}}"

    result = run(drill_harness, pitr_drill(source, validations=COUNT.format(n=7)))

    assert result.verdict == "FAILED"
    assert "REPLAY_ENDED_EARLY" in codes(result), result.findings
    message = next(f for f in result.findings if f.code == "REPLAY_ENDED_EARLY").message
    assert f"replay ended in WAL segment {damaged}" in message and f"segments up to {segments[-1]}" in message
    assert clusters_left(cluster_root) == []


# ------------------------------------------------------------------------------------ the primitives


def test_safefs_replaces_a_link_instead_of_writing_through_it_and_hands_over_without_following(tmp_path):
    from drdrill.localpg import safefs

    victim = victim_file(tmp_path)
    tree = tmp_path / "data"
    (tree / "sub").mkdir(parents=True)
    os.symlink(victim, tree / "pg_hba.conf")
    os.symlink(victim.parent, tree / "sub" / "escape")

    safefs.write_file(tree / "pg_hba.conf", "local all all trust\n")
    assert victim.read_text().startswith("root:x:0:0") and not (tree / "pg_hba.conf").is_symlink()
    assert (tree / "pg_hba.conf").read_text() == "local all all trust\n"
    with pytest.raises(OSError):
        safefs.touch(tree / "sub" / "escape")
    safefs.hand_over(tree, 65534, 65534)
    assert os.lstat(tree / "sub" / "escape").st_uid == 65534 and victim.parent.stat().st_uid == 0 and victim.stat().st_uid == 0
    with pytest.raises(safefs.LinkRefused) as refused:
        safefs.refuse_links(tree, tree)
    assert refused.value.entries == [f"sub/escape -> {victim.parent}"]


def test_a_backups_configuration_is_read_as_postgresql_reads_it():
    text = (
        "# comment\nwork_mem = '64MB'  # trailing\ninclude_dir 'conf.d'\n"
        "recovery_end_command = 'echo ''quoted'' # not a comment'\nshared_preload_libraries=pg_stat_statements\n"
    )
    assert parse(text) == [
        ("work_mem", "64MB"),
        ("include_dir", "conf.d"),
        ("recovery_end_command", "echo 'quoted' # not a comment"),
        ("shared_preload_libraries", "pg_stat_statements"),
    ]
