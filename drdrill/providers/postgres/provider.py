"""The postgres provider: pg_dump backups restored into throwaway clusters on a private socket.

Backup repository layout (one directory per recovery point, written atomically):

    <repository>/<YYYYmmddTHHMMSSZ>-<id>/
        manifest.json    consistent time, server version, per-table rows and content checksums,
                         archive sha256 and size, all taken inside the dump's exported snapshot
        archive.dump     pg_dump -Fc   (or archive/ for -Fd)
        globals.sql      roles (pg_dumpall --globals-only), when the source allows it

Isolation is a new cluster per drill (initdb + pg_ctl) in a 0700 directory under the cluster root,
listening only on a Unix socket inside that directory: `listen_addresses = ''`. Every target is
restored into its own database there, in parallel, with `pg_restore -j`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional

import psycopg

from drdrill.core.models import (
    TAG_DRILL_ID,
    TAG_EXPIRES_AT,
    DrillContext,
    Environment,
    Finding,
    IsolationCheck,
    IsolationProof,
    Orphan,
    RecoveryPoint,
    RestoredResource,
    TeardownReport,
)
from drdrill.providers.postgres.data import fingerprints_parallel, list_tables
from drdrill.providers.postgres.cluster import ClusterError, LocalCluster, cluster_root, tool
from drdrill.providers.base import NotReadyYet, Provider, ProviderError, heartbeat, poll_until, select_for_target

MANIFEST = "manifest.json"


# ---------------------------------------------------------------------- backups


def sha256_path(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, or of a directory archive (its files in name order)."""
    h = hashlib.sha256()
    size = 0
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
    return h.hexdigest(), size


def libpq_env(dsn: str) -> dict[str, str]:
    """DSN -> PG* environment variables, so no secret ever reaches a command line."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    mapping = {
        "host": "PGHOST",
        "port": "PGPORT",
        "user": "PGUSER",
        "password": "PGPASSWORD",
        "dbname": "PGDATABASE",
        "sslmode": "PGSSLMODE",
        "sslrootcert": "PGSSLROOTCERT",
        "sslcert": "PGSSLCERT",
        "sslkey": "PGSSLKEY",
        "options": "PGOPTIONS",
        "application_name": "PGAPPNAME",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for key, value in params.items():
        if key in mapping and value is not None:
            env[mapping[key]] = str(value)
    return env


def take_base_backup(dsn: str, repository: str | Path) -> Path:
    """A physical base backup (pg_basebackup -Fp -X stream) of the whole source cluster.

    Its consistent time is recorded as the moment the backup started: the copy holds everything
    committed by then (and possibly a little more), so the RPO measured from it is never flattering.
    A physical copy has no per-table fingerprints: checksum validations of it cannot be verified.
    """
    repo = Path(repository)
    repo.mkdir(parents=True, exist_ok=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        started, version, dbname, user = conn.execute(
            "SELECT now(), current_setting('server_version'), current_database(), current_user"
        ).fetchone()
    stamp = started.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    point_id = f"{stamp}-{uuid.uuid4().hex[:8]}"
    work = repo / f".tmp-{point_id}"
    work.mkdir()
    archive = work / "base"
    proc = subprocess.run(
        [tool("pg_basebackup"), "-D", str(archive), "-Fp", "-X", "stream", "--checkpoint=fast", "--no-sync"],
        env=libpq_env(dsn),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise RuntimeError(f"pg_basebackup failed: {proc.stderr.strip()}")
    digest, size = sha256_path(archive)
    manifest = {
        "format": "base",
        "archive": archive.name,
        "archive_sha256": digest,
        "archive_size": size,
        "consistent_time": started.astimezone(timezone.utc).isoformat(),
        "server_version": version,
        "database": dbname,
        "connect_as": user,
        "tables": {},
        "taken_with": "pg_basebackup -Fp -X stream",
    }
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    final = repo / point_id
    os.replace(work, final)
    return final


def take_backup(dsn: str, repository: str | Path, fmt: str = "custom", jobs: int = 2) -> Path:
    """Back up the database at `dsn` into `repository`; return the recovery point's directory.

    The dump and the manifest read the same exported snapshot, so the manifest's row counts and
    checksums describe exactly what the archive holds, as of the snapshot's `now()`.
    """
    if fmt == "base":
        return take_base_backup(dsn, repository)
    repo = Path(repository)
    repo.mkdir(parents=True, exist_ok=True)
    with psycopg.connect(dsn, autocommit=False) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot, consistent, version, dbname = conn.execute(
            "SELECT pg_export_snapshot(), now(), current_setting('server_version'), current_database()"
        ).fetchone()
        tables = list_tables(conn)
        stamp = consistent.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        point_id = f"{stamp}-{uuid.uuid4().hex[:8]}"
        work = repo / f".tmp-{point_id}"
        work.mkdir()
        try:
            archive = work / ("archive.dump" if fmt == "custom" else "archive")
            cmd = [tool("pg_dump"), f"--snapshot={snapshot}", "--no-sync", "-f", str(archive)]
            cmd += ["-Fc"] if fmt == "custom" else ["-Fd", "-j", str(max(1, jobs))]
            dump = subprocess.Popen(cmd, env=libpq_env(dsn), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

            def snap_conn():
                c = psycopg.connect(dsn, autocommit=False)
                c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                c.execute(psycopg.sql.SQL("SET TRANSACTION SNAPSHOT {}").format(psycopg.sql.Literal(snapshot)))
                return c

            fps = fingerprints_parallel(snap_conn, tables, workers=jobs)
            _, err = dump.communicate()
            if dump.returncode != 0:
                raise RuntimeError(f"pg_dump failed: {err.strip()}")
        finally:
            conn.rollback()
        globals_note = ""
        glob = subprocess.run(
            [tool("pg_dumpall"), "--globals-only", "--no-role-passwords", "-f", str(work / "globals.sql")],
            env=libpq_env(dsn),
            capture_output=True,
            text=True,
        )
        if glob.returncode != 0:
            (work / "globals.sql").unlink(missing_ok=True)
            globals_note = glob.stderr.strip().splitlines()[0] if glob.stderr.strip() else "pg_dumpall failed"
        digest, size = sha256_path(archive)
        manifest = {
            "format": fmt,
            "archive": archive.name,
            "archive_sha256": digest,
            "archive_size": size,
            "consistent_time": consistent.astimezone(timezone.utc).isoformat(),
            "server_version": version,
            "database": dbname,
            "tables": fps,
            "globals": (work / "globals.sql").exists(),
            "globals_note": globals_note,
            "taken_with": "pg_dump " + ("-Fc" if fmt == "custom" else f"-Fd -j {jobs}"),
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        final = repo / point_id
        os.replace(work, final)
        return final
    raise AssertionError("unreachable")


def read_points(repository: str | Path, target: str) -> list[RecoveryPoint]:
    repo = Path(repository)
    if not repo.is_dir():
        raise ProviderError(
            "BACKUP_REPOSITORY_MISSING",
            f"target {target}: backup repository {repo} does not exist (run `drdrill backup` first)",
        )
    points = []
    for d in sorted(repo.iterdir()):
        if d.name.startswith(".") or not (d / MANIFEST).is_file():
            continue
        try:
            m = json.loads((d / MANIFEST).read_text())
            consistent = datetime.fromisoformat(m["consistent_time"])
        except (OSError, ValueError, KeyError):
            continue  # an unreadable manifest is not a recovery point; the repository check reports it
        points.append(
            RecoveryPoint(
                target=target,
                provider="postgres",
                id=d.name,
                consistent_time=consistent,
                size_bytes=m.get("archive_size"),
                metadata={"path": str(d), "manifest": m},
            )
        )
    return points


# ---------------------------------------------------------------------- restore findings

_CLASSIFY = [
    ("ARCHIVE_UNREADABLE", re.compile(r"(unexpected end of file|could not read (from )?input file|end of file|did not find magic string|input file appears to be a text format dump|could not open input file|corrupt|invalid compressed data|could not find block ID)", re.I)),
    ("MISSING_ROLE", re.compile(r'role "([^"]+)" does not exist', re.I)),
    ("MISSING_EXTENSION", re.compile(r'(extension "([^"]+)" is not available|could not open extension control file[^"]*"([^"]+)")', re.I)),
]


def classify_restore_errors(stderr: str, target: str) -> list[Finding]:
    """Turn pg_restore's stderr into findings with stable codes (one per distinct problem)."""
    findings: dict[tuple[str, str], Finding] = {}
    for line in stderr.splitlines():
        low = line.lower()
        if "error" not in low and "fatal" not in low:
            continue
        if "warning: errors ignored on restore" in low:
            continue
        code = "RESTORE_ERROR"
        for c, rx in _CLASSIFY:
            if rx.search(line):
                code = c
                break
        msg = line.split("error:", 1)[-1].strip() if "error:" in line else line.strip()
        key = (code, msg)
        if key not in findings:
            findings[key] = Finding(code=code, message=f"target {target}: {msg}", target=target)
    return list(findings.values())


class PostgresProvider(Provider):
    """Restores pg_dump archives into throwaway local clusters."""

    family = "postgres"

    def __init__(self, root: Optional[str] = None):
        self._root = root

    @classmethod
    def from_environment(cls, env: Mapping[str, str], settings: dict) -> "PostgresProvider":
        return cls(root=env.get("DRDRILL_CLUSTER_ROOT"))

    @property
    def root(self) -> Path:
        if self._root:
            os.environ.setdefault("DRDRILL_CLUSTER_ROOT", self._root)
            p = Path(self._root)
            p.mkdir(parents=True, exist_ok=True)
            os.chmod(p, 0o711)
            return p
        return cluster_root()

    def cluster(self, ctx: DrillContext) -> LocalCluster:
        return LocalCluster(self.root / ctx.resource_name(max_len=48))

    # ---------------------------------------------------------------- interface

    def find_recovery_point(self, ctx: DrillContext, target: Any) -> RecoveryPoint:
        points = read_points(target.source.repository, target.name)
        if not points:
            raise ProviderError(
                "RECOVERY_POINT_NOT_FOUND",
                f"target {target.name}: no backups in {target.source.repository} (run `drdrill backup`)",
            )
        return select_for_target(points, ctx, target)

    def create_isolation(self, ctx: DrillContext, isolation: Any, targets: list[Any]) -> Environment:
        cluster = self.cluster(ctx)
        try:
            cluster.create(ctx.tags())
        except ClusterError as exc:
            raise ProviderError("ISOLATION_FAILED", f"could not create the throwaway cluster: {exc}", retryable=True) from exc
        return Environment(
            family=self.family,
            drill_id=ctx.drill_id,
            id=str(cluster.path),
            description="cluster on a private socket, no TCP",
            details={"path": str(cluster.path), "socket_dir": str(cluster.sock), "dsn": cluster.dsn()},
        )

    def verify_isolation(self, ctx: DrillContext, env: Environment) -> IsolationProof:
        cluster = LocalCluster(env.details["path"])
        checks: list[IsolationCheck] = []
        try:
            with psycopg.connect(cluster.dsn(), connect_timeout=10, autocommit=True) as conn:
                settings = dict(
                    conn.execute(
                        "SELECT name, setting FROM pg_settings WHERE name IN "
                        "('listen_addresses','unix_socket_directories','archive_mode','max_wal_senders','primary_conninfo')"
                    ).fetchall()
                )
                server_addr = conn.execute("SELECT inet_server_addr()::text").fetchone()[0]
        except psycopg.Error as exc:
            return IsolationProof(
                family=self.family,
                environment_id=env.id,
                checks=[IsolationCheck(name="connect", outcome="COULD_NOT_VERIFY", detail=str(exc).strip())],
            )
        la = settings.get("listen_addresses", "?")
        checks.append(
            IsolationCheck(
                name="no TCP listener",
                outcome="PASSED" if la == "" else "FAILED",
                detail=f"listen_addresses = '{la}'",
            )
        )
        checks.append(
            IsolationCheck(
                name="reached over the Unix socket only",
                outcome="PASSED" if server_addr is None else "FAILED",
                detail=f"inet_server_addr() = {server_addr}",
            )
        )
        sockdirs = [s.strip() for s in settings.get("unix_socket_directories", "").split(",") if s.strip()]
        inside = all(Path(s).resolve().is_relative_to(cluster.path.resolve()) for s in sockdirs) and sockdirs
        mode = oct(os.stat(cluster.sock).st_mode & 0o777) if cluster.sock.exists() else "missing"
        checks.append(
            IsolationCheck(
                name="private socket directory",
                outcome="PASSED" if inside and mode == "0o700" else "FAILED",
                detail=f"unix_socket_directories = {','.join(sockdirs)} (mode {mode[2:] if mode.startswith('0o') else mode})",
            )
        )
        out = settings.get("archive_mode", "?") == "off" and settings.get("max_wal_senders", "?") == "0" and not settings.get("primary_conninfo")
        checks.append(
            IsolationCheck(
                name="no WAL shipping or replication",
                outcome="PASSED" if out else "FAILED",
                detail=f"archive_mode = {settings.get('archive_mode')}, max_wal_senders = {settings.get('max_wal_senders')}, primary_conninfo empty",
            )
        )
        return IsolationProof(family=self.family, environment_id=env.id, checks=checks)

    def restore(self, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment) -> RestoredResource:
        cluster = LocalCluster(env.details["path"])
        point_dir = Path(point.metadata["path"])
        manifest = point.metadata.get("manifest") or {}
        archive = point_dir / manifest.get("archive", "archive.dump")
        dbname = target.source.database or target.name
        endpoint = {"dsn": cluster.dsn(dbname), "database": dbname, "socket_dir": str(cluster.sock)}
        findings: list[Finding] = []

        # 1. The archive is what the manifest says it is, before anything is restored from it.
        heartbeat({"target": target.name, "step": "checksum"})
        if not archive.exists():
            raise ProviderError("ARCHIVE_MISSING", f"target {target.name}: archive {archive} is missing")
        digest, size = sha256_path(archive)
        if digest != manifest.get("archive_sha256"):
            raise ProviderError(
                "ARCHIVE_CHECKSUM_MISMATCH",
                f"target {target.name}: archive {archive.name} of {point.id} has sha256 {digest[:16]}…, "
                f"the manifest says {str(manifest.get('archive_sha256'))[:16]}… ({size} bytes, manifest {manifest.get('archive_size')}): "
                "the backup was altered or damaged after it was taken",
            )
        if manifest.get("format") == "base":
            return self._restore_base(ctx, target, point, cluster, archive, manifest)
        listing = subprocess.run([tool("pg_restore"), "-l", str(archive)], capture_output=True, text=True)
        if listing.returncode != 0:
            raise ProviderError(
                "ARCHIVE_UNREADABLE",
                f"target {target.name}: pg_restore cannot read {archive.name} of {point.id}: "
                + (listing.stderr.strip().splitlines() or ["unknown error"])[-1],
            )

        # 2. A fresh database (a retried attempt starts over: idempotent).
        with psycopg.connect(cluster.dsn(), autocommit=True, connect_timeout=10) as conn:
            done = conn.execute(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (dbname,)
            ).fetchone()
            if done and done[0] == f"drdrill restored {point.id}":
                return RestoredResource(
                    target=target.name, provider="postgres", id=f"{cluster.path}/{dbname}", endpoint=endpoint,
                    description=f"pg_restore -j {target.restore.jobs}", details={"point": point.id, "resumed": True},
                )
            if done:
                conn.execute(psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(psycopg.sql.Identifier(dbname)))
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(psycopg.sql.Identifier(dbname)))

        # 3. Roles first (pg_dump does not carry them), then the archive.
        if (point_dir / "globals.sql").exists():
            subprocess.run(
                [tool("psql"), "-X", "-q", "-d", cluster.dsn(dbname), "-f", str(point_dir / "globals.sql")],
                capture_output=True, text=True,
            )
        cmd = [tool("pg_restore"), "-j", str(target.restore.jobs), "-d", cluster.dsn(dbname), str(archive)]
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stderr_chunks: list[str] = []
        import threading

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
        reader.join()
        stderr = "".join(stderr_chunks)
        findings.extend(classify_restore_errors(stderr, target.name))
        unreadable = [f for f in findings if f.code == "ARCHIVE_UNREADABLE"]
        if unreadable:
            detail = unreadable[0].message.split(": ", 1)[-1]
            raise ProviderError(
                "ARCHIVE_UNREADABLE",
                f"target {target.name}: pg_restore cannot read {archive.name} of {point.id}: {detail} "
                "(the archive is truncated or corrupt)",
            )

        # 4. Something must have come back.
        with psycopg.connect(cluster.dsn(dbname), autocommit=True, connect_timeout=10) as conn:
            restored_tables = list_tables(conn)
            if manifest.get("tables") and not restored_tables:
                findings.append(
                    Finding(code="EMPTY_RESTORE", message=f"target {target.name}: the restore produced no tables", target=target.name)
                )
            conn.execute(
                psycopg.sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                    psycopg.sql.Identifier(dbname), psycopg.sql.Literal(f"drdrill restored {point.id}")
                )
            )
        return RestoredResource(
            target=target.name,
            provider="postgres",
            id=f"{cluster.path}/{dbname}",
            description=f"pg_restore -j {target.restore.jobs}, {len(restored_tables)} tables",
            endpoint=endpoint,
            details={"point": point.id, "exit_code": proc.returncode, "tables": len(restored_tables), "seconds": round(time.monotonic() - started, 3)},
            findings=findings,
        )

    def _restore_base(self, ctx, target, point, cluster: LocalCluster, archive: Path, manifest: dict) -> RestoredResource:
        """A base backup becomes its own cluster beside the drill's, on the same private socket."""
        from drdrill.providers.postgres.cluster import adopt_data_dir, server_major

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
            "dsn": f"host={cluster.sock} port={port} user={manifest.get('connect_as', 'postgres')} dbname={dbname}",
            "database": dbname,
            "socket_dir": str(cluster.sock),
        }
        heartbeat({"target": target.name, "step": "copy base backup"})
        if data.exists():  # a retried attempt starts over
            subprocess.run([tool("pg_ctl"), "stop", "-D", str(data), "-m", "immediate"], capture_output=True)
            shutil.rmtree(data)
        started = time.monotonic()
        shutil.copytree(archive, data, symlinks=True)
        try:
            adopt_data_dir(data, cluster.sock, port, cluster.path / f"{target.name}.log")
        except ClusterError as exc:
            raise ProviderError("RESTORE_ERROR", f"target {target.name}: {exc}") from exc
        return RestoredResource(
            target=target.name,
            provider="postgres",
            id=str(data),
            description=f"base backup started as its own cluster on the private socket (port {port})",
            endpoint=endpoint,
            details={"point": point.id, "seconds": round(time.monotonic() - started, 3), "format": "base"},
        )

    def wait_ready(self, ctx: DrillContext, target: Any, resource: RestoredResource, timeout: float) -> RestoredResource:
        def probe():
            try:
                with psycopg.connect(resource.endpoint["dsn"], connect_timeout=5, autocommit=True) as conn:
                    return conn.execute("SELECT current_setting('listen_addresses')").fetchone()[0]
            except psycopg.OperationalError as exc:
                raise NotReadyYet(str(exc).strip()) from exc

        listen = poll_until(probe, timeout=timeout, what=f"database {resource.endpoint.get('database')}")
        ready = resource.model_copy(deep=True)
        if listen != "":
            ready.findings.append(
                Finding(code="ISOLATION_BROKEN", message=f"target {target.name}: restored server listens on TCP ({listen!r})", target=target.name)
            )
        ready.ready = True
        return ready

    def teardown(self, ctx: DrillContext, env: Environment) -> TeardownReport:
        report = TeardownReport(family=self.family, environment_id=env.id)
        path = Path(env.details.get("path") or self.cluster(ctx).path)
        cluster = LocalCluster(path)
        if not path.resolve().is_relative_to(self.root.resolve()):
            # Never delete outside our own cluster root, whatever an environment record says.
            report.refused.append(f"{path} (outside this worker's cluster root {self.root})")
            return report
        if not path.exists():
            report.already_gone.append(str(path))
            return report
        tags = cluster.tags()
        if not tags or tags.get(TAG_DRILL_ID) != ctx.drill_id:
            report.refused.append(str(path))
            return report
        heartbeat({"teardown": str(path)})
        cluster.destroy()
        report.deleted.append(f"cluster {path} (stopped, directory removed)")
        return report

    def list_orphans(self, now: datetime, active_drill_ids: set[str]) -> list[Orphan]:
        orphans = []
        root = self.root
        for d in sorted(root.iterdir()) if root.exists() else []:
            tags = LocalCluster(d).tags()
            if not tags or not tags.get(TAG_DRILL_ID):
                continue  # not ours
            expires = _parse_time(tags.get(TAG_EXPIRES_AT))
            drill = tags[TAG_DRILL_ID]
            if drill in active_drill_ids and (expires is None or expires > now):
                continue
            orphans.append(
                Orphan(provider="postgres", id=str(d), kind="cluster", drill_id=drill, expires_at=expires, details={"path": str(d)})
            )
        return orphans

    def delete_orphan(self, orphan: Orphan) -> str:
        cluster = LocalCluster(orphan.id)
        tags = cluster.tags()
        if not tags or tags.get(TAG_DRILL_ID) != orphan.drill_id:
            return "refused: not tagged by this drill"
        return "deleted" if cluster.destroy() else "already gone"


def _parse_time(value: Optional[str]) -> Optional[datetime]:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
