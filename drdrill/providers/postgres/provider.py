"""The postgres provider: pg_dump backups (backup.py) restored into throwaway clusters on a private socket.

Isolation is a new cluster per drill (initdb + pg_ctl) in a 0700 directory under the cluster root,
listening only on a Unix socket inside that directory: `listen_addresses = ''`. Every target is
restored into its own database there, in parallel, with `pg_restore -j`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import psycopg

from drdrill.core.models import (
    DrillContext,
    Environment,
    Finding,
    IsolationCheck,
    IsolationProof,
    RecoveryPoint,
    RestoredResource,
)
from drdrill.providers.postgres.backup import read_points, sha256_path
from drdrill.providers.postgres.data import list_tables
from drdrill.providers.postgres.cluster import ClusterError, LocalCluster, adopt_data_dir, cluster_root, server_major, tool
from drdrill.providers.base import (
    NotOurs,
    NotReadyYet,
    Provider,
    ProviderError,
    Resource,
    heartbeat,
    poll_until,
    require_drill_tag,
    select_for_target,
)

CLUSTER = "cluster"

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
    DELETE_ORDER = (CLUSTER,)

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
        # Over 80 lines on purpose: the four numbered steps of one restore read best in order.
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

    # ---------------------------------------------------------------- primitives of cleaning up
    # One kind of resource: a cluster directory under this worker's cluster root, tagged by the
    # marker file its creation writes first. Teardown, orphans and sweeps come from Provider.

    def inventory(self, drill_id: Optional[str] = None, env: Optional[Environment] = None) -> list[Resource]:
        root = self.root
        found = []
        # drdrill creates real directories only: a symlink (perhaps to somewhere else) is not ours.
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
            tags = LocalCluster(d).tags()
            if require_drill_tag(tags, drill_id):
                found.append(Resource(CLUSTER, str(d), tags=dict(tags), scope=str(root)))  # type: ignore[arg-type]
        return found

    def named_resources(self, env: Environment) -> list[Resource]:
        path = env.details.get("path")
        return [Resource(CLUSTER, str(Path(path)), scope=str(self.root))] if path else []

    def current_tags(self, resource: Resource) -> Optional[dict[str, str]]:
        path = Path(resource.id)
        if not path.resolve().is_relative_to(self.root.resolve()):
            # Never delete outside our own cluster root, whatever an environment record or an orphan says.
            raise NotOurs(f"outside this worker's cluster root {self.root}")
        if not path.exists():
            return None
        tags = LocalCluster(path).tags()
        return tags if isinstance(tags, dict) else {}

    def delete(self, resource: Resource) -> bool:
        """Stop every server running from the directory and remove it."""
        return LocalCluster(resource.id).destroy()
