"""drdrill's own backup repository (`drdrill backup`): pg_dump archives and base backups, each
with a manifest taken in the dump's own snapshot (per-table rows and content hashes, the archive's
sha256): the strongest proof a drill can give, since every table can be compared."""

from __future__ import annotations

import hashlib
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from drdrill.core.models import DrillContext, Finding, RecoveryPoint, RestoredResource
from drdrill.providers.postgres.schema import PostgresTarget
from drdrill.providers.base import ProviderError, heartbeat, select_for_target
from drdrill.providers.postgres.backup import read_points, sha256_path
from drdrill.localpg.cluster import ClusterError, LocalCluster, server_major, tool
from drdrill.localpg.recovered import BackupLinkRefused, adopt_data_dir, stop_server
from drdrill.localpg.sandbox import Inputs, SandboxError
from drdrill.localpg.data import already_restored, mark_restored
from drdrill.providers.postgres.findings import classify_restore_errors
from drdrill.providers.postgres.plainscan import DumpRefused, PlainDumpScanner, supports_restrict, tool_version
from drdrill.providers.postgres.sources import RecoverySource


def _run_globals(box, path: Path, dsn: str, target: str) -> None:
    """globals.sql (pg_dumpall -g) is a psql script too: read as psql would before psql sees it, then
    fed to psql on its stdin (never by path, which would bypass the scan), restricted where it can
    be, in the drill's sandbox (`box`)."""
    psql = tool("psql")
    scanner = PlainDumpScanner(str(path))
    try:
        script = scanner.feed(path.read_bytes()) + scanner.finish()
    except DumpRefused as exc:
        raise ProviderError(exc.code, f"target {target}: {exc.message}") from None
    key = secrets.token_hex(16) if supports_restrict(tool_version(psql)) else None
    _in_sandbox(box.run, target, [psql, "-X", "-q", "-d", dsn, *(["-c", f"\\restrict {key}"] if key else []), "-f", "-"],
                input=script, text=False)


class DrdrillRepository(RecoverySource):
    """`source: {repository: DIR}`: the directories `drdrill backup` writes, one per backup."""

    def find(self, ctx: DrillContext, target: PostgresTarget) -> RecoveryPoint:
        points = read_points(target.source.repository, target.name)
        if not points:
            raise ProviderError(
                "RECOVERY_POINT_NOT_FOUND",
                f"target {target.name}: no backups in {target.source.repository} (run `drdrill backup`)",
            )
        return select_for_target(points, ctx, target)

    def restore(self, ctx: DrillContext, target: PostgresTarget, point: RecoveryPoint, cluster: LocalCluster) -> RestoredResource:
        """Restore a backup of drdrill's repository in four steps: the archive checked against its
        manifest, a fresh database, roles then the archive (pg_restore in the drill's sandbox), and
        the mark a retried attempt resumes from."""
        point_dir = Path(point.metadata["path"])
        manifest = point.metadata.get("manifest") or {}
        archive = point_dir / manifest.get("archive", "archive.dump")
        dbname = target.source.database or target.name
        endpoint = {"dsn": cluster.dsn(dbname), "database": dbname, "socket_dir": str(cluster.sock)}

        # 1. The archive is what the manifest says it is, before anything is restored from it.
        check_archive(target.name, point.id, archive, manifest)
        if manifest.get("format") == "base":
            return self._restore_base(ctx, target, point, cluster, archive, manifest)
        box = cluster.sandbox()  # psql and pg_restore run in the drill's sandbox (drdrill/localpg/sandbox.py)
        readable_archive(box, target.name, point.id, archive, cluster.path)

        # 2. A fresh database (a retried attempt starts over: idempotent).
        if already_restored(cluster.dsn(), dbname, point.id):
            return RestoredResource(
                target=target.name, provider="postgres", id=f"{cluster.path}/{dbname}", endpoint=endpoint,
                description=f"pg_restore -j {target.restore.jobs}", details={"point": point.id, "resumed": True},
            )

        # 3. Roles first (pg_dump does not carry them), then the archive.
        if (point_dir / "globals.sql").exists():
            _run_globals(box, point_dir / "globals.sql", cluster.dsn(dbname), target.name)
        started = time.monotonic()
        returncode, stderr = pg_restore(box, cluster, dbname, archive, target)
        findings: list[Finding] = list(classify_restore_errors(stderr, target.name))
        unreadable = [f for f in findings if f.code == "ARCHIVE_UNREADABLE"]
        if unreadable:
            detail = unreadable[0].message.split(": ", 1)[-1]
            raise ProviderError(
                "ARCHIVE_UNREADABLE",
                f"target {target.name}: pg_restore cannot read {archive.name} of {point.id}: {detail} "
                "(the archive is truncated or corrupt)",
            )

        # 4. What came back, and the mark a retried attempt resumes from.
        with psycopg.connect(cluster.dsn(dbname), autocommit=True, connect_timeout=10) as conn:
            restored_tables = mark_restored(conn, dbname, point.id)
        return RestoredResource(
            target=target.name,
            provider="postgres",
            id=f"{cluster.path}/{dbname}",
            description=f"pg_restore -j {target.restore.jobs}, {len(restored_tables)} tables",
            endpoint=endpoint,
            details={"point": point.id, "exit_code": returncode, "tables": len(restored_tables), "seconds": round(time.monotonic() - started, 3)},
            findings=findings,
        )

    def _restore_base(self, ctx, target, point, cluster: LocalCluster, archive: Path, manifest: dict) -> RestoredResource:
        """A base backup becomes its own cluster beside the drill's, on the same private socket."""
        backup_major = int(str(manifest.get("server_version", "0")).split(".")[0])
        ours = server_major()
        if backup_major != ours:
            raise ProviderError(
                "VERSION_MISMATCH",
                f"target {target.name}: base backup {point.id} is PostgreSQL {backup_major}, the restore binaries "
                f"are {ours}: set DRDRILL_PG_BINDIR to PostgreSQL {backup_major} binaries",
            )
        port = 5433 + int(hashlib.sha256(target.name.encode()).hexdigest(), 16) % 1000
        data = cluster.path / f"{target.name}-data"
        dbname = target.source.database or manifest.get("database") or "postgres"
        endpoint = {
            "dsn": make_conninfo(host=str(cluster.sock), port=port, user=str(manifest.get("connect_as", "postgres")), dbname=str(dbname)),
            "database": dbname,
            "socket_dir": str(cluster.sock),
        }
        heartbeat({"target": target.name, "step": "copy base backup"})
        if data.exists():  # a retried attempt starts over
            stop_server(data)
            shutil.rmtree(data)
        started = time.monotonic()
        shutil.copytree(archive, data, symlinks=True)
        try:
            config = adopt_data_dir(data, cluster.sock, port, cluster.path / f"{target.name}.log")
        except BackupLinkRefused as exc:
            raise ProviderError("BACKUP_SYMLINK_REFUSED", f"target {target.name}: {exc}") from exc
        except ClusterError as exc:
            raise ProviderError("RESTORE_ERROR", f"target {target.name}: {exc}") from exc
        return RestoredResource(
            target=target.name,
            provider="postgres",
            id=str(data),
            description=f"base backup started as its own cluster on the private socket (port {port})",
            endpoint=endpoint,
            details={"point": point.id, "seconds": round(time.monotonic() - started, 3), "format": "base", "backup_configuration": config},
        )


def check_archive(target: str, point_id: str, archive: Path, manifest: dict) -> None:
    """ARCHIVE_MISSING, or ARCHIVE_CHECKSUM_MISMATCH when the archive is not what its manifest says."""
    heartbeat({"target": target, "step": "checksum"})
    if not archive.exists():
        raise ProviderError("ARCHIVE_MISSING", f"target {target}: archive {archive} is missing")
    digest, size = sha256_path(archive)
    if digest != manifest.get("archive_sha256"):
        raise ProviderError(
            "ARCHIVE_CHECKSUM_MISMATCH",
            f"target {target}: archive {archive.name} of {point_id} has sha256 {digest[:16]}…, "
            f"the manifest says {str(manifest.get('archive_sha256'))[:16]}… ({size} bytes, manifest {manifest.get('archive_size')}): "
            "the backup was altered or damaged after it was taken",
        )


def readable_archive(box, target: str, point_id: str, archive: Path, area: Path) -> None:  # noqa: ANN001 - a Sandbox
    """ARCHIVE_UNREADABLE when pg_restore, in the drill's sandbox, cannot list the archive."""
    with Inputs(area, box.identity) as inputs:
        listing = _in_sandbox(box.run, target, [tool("pg_restore"), "-l", inputs.path(archive)], pass_fds=inputs.fds)
    if listing.returncode != 0:
        raise ProviderError(
            "ARCHIVE_UNREADABLE",
            f"target {target}: pg_restore cannot read {archive.name} of {point_id}: "
            + (listing.stderr.strip().splitlines() or ["unknown error"])[-1],
        )


def pg_restore(box, cluster: LocalCluster, dbname: str, archive: Path, target: PostgresTarget) -> tuple[int, str]:  # noqa: ANN001
    """Run pg_restore -j N in the drill's sandbox to its end, heartbeating; a cancelled drill stops
    it. Returns its exit code and what it wrote to stderr."""
    inputs = Inputs(cluster.path, box.identity)
    cmd = [tool("pg_restore"), "-j", str(target.restore.jobs), "-d", cluster.dsn(dbname), inputs.path(archive)]
    started = time.monotonic()
    try:
        proc = _in_sandbox(box.popen, target.name, cmd, pass_fds=inputs.fds, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except BaseException:
        inputs.close()
        raise
    stderr_chunks: list[str] = []
    reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)
    reader.start()
    try:
        while proc.poll() is None:
            heartbeat({"target": target.name, "step": "pg_restore", "seconds": round(time.monotonic() - started, 1)})
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:  # cancelled (or the worker is shutting down): stop pg_restore too
            proc.kill()
            proc.wait()
        inputs.close()
    reader.join()
    return proc.returncode, "".join(stderr_chunks)



def _in_sandbox(call, target: str, argv: list[str], **kwargs):
    """`call` (a Sandbox's run or popen) of `argv`; a sandbox that cannot start is ISOLATION_FAILED."""
    try:
        return call(argv, **kwargs)
    except SandboxError as exc:
        raise ProviderError("ISOLATION_FAILED", f"target {target}: {exc}") from exc
