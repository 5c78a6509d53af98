"""The postgres provider: backups restored into throwaway clusters on a private socket.

What a target is restored from is its source's business (sources.py: drdrill's own repository in
repository.py, …); the provider creates and proves the isolation, waits until the restored
database serves, and cleans up.

Isolation is a new cluster per drill (initdb + pg_ctl) in a 0700 directory under the cluster root,
listening only on a Unix socket inside that directory: `listen_addresses = ''`. Every target is
restored into its own database there, in parallel, with `pg_restore -j`.
"""

from __future__ import annotations

import os
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
from drdrill.providers.postgres.cluster import ClusterError, LocalCluster, cluster_root
from drdrill.providers.postgres.barman import Barman
from drdrill.providers.postgres.pgbackrest import PgBackRest
from drdrill.providers.postgres.repository import DrdrillRepository
from drdrill.providers.postgres.walarchive import WalArchive
from drdrill.providers.postgres.sources import RecoverySource
from drdrill.providers.base import (
    NotOurs,
    NotReadyYet,
    Provider,
    ProviderError,
    Resource,
    poll_until,
    require_drill_tag,
)

CLUSTER = "cluster"

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
        return source_of(target).find(ctx, target)

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
        return source_of(target).restore(ctx, target, point, LocalCluster(env.details["path"]))

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
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
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


def source_of(target: Any) -> RecoverySource:
    """The RecoverySource for a postgres target's `source` (one line per kind of source)."""
    kinds: dict[str, type[RecoverySource]] = {
        "repository": DrdrillRepository,
        "pgbackrest": PgBackRest,
        "barman": Barman,
        "wal_archive": WalArchive,
    }
    return kinds[target.source.kind]()
