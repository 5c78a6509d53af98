"""The postgres provider: backups restored into throwaway clusters on a private socket.

What a target is restored from is its source's business (sources.py: drdrill's own repository in
repository.py, …); the provider creates and proves the isolation, waits until the restored
database serves, and cleans up.

Isolation is a new cluster per drill (initdb + pg_ctl) in a 0700 directory under the cluster root,
listening only on a Unix socket inside that directory: `listen_addresses = ''`. Every target is
restored into its own database there, in parallel, with `pg_restore -j`.

With `isolation.postgres: network` the cluster also listens on TCP, on the loopback of a network
namespace of the drill's own (netns.py), where a probe runs the checks and `restore.after` starts
an application from the restored data. The worker still restores over the Unix socket.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import psycopg
from psycopg.conninfo import make_conninfo

from drdrill.core.models import (
    DrillContext,
    Environment,
    Finding,
    IsolationCheck,
    IsolationProof,
    RecoveryPoint,
    RestoredResource,
)
from drdrill.core.paths import default_state_dir
from drdrill.core.selection import ProtectedResource
import drdrill.providers.postgres.after as after
import drdrill.providers.postgres.discover as discover
import drdrill.providers.postgres.netns as netns
import drdrill.localpg.sandbox as sandbox
from drdrill.localpg.cluster import ClusterError, ClusterRootError, LocalCluster, cluster_root
from drdrill.localpg.inspect import inspect_restored
from drdrill.providers.postgres.integrity import check_restored
from drdrill.providers.postgres.dumps import DumpFiles
from drdrill.providers.postgres.barman import Barman
from drdrill.providers.postgres.pgbackrest import PgBackRest
from drdrill.providers.postgres.repository import DrdrillRepository
from drdrill.providers.postgres.walarchive import WalArchive
from drdrill.providers.postgres.recovery import PhysicalSource
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
NETNS = "netns"  # isolation.postgres: network
PROCESS = "process"  # its relay halves, its probe, restore.after applications



class PostgresProvider(Provider):
    """Restores pg_dump archives into throwaway local clusters."""

    family = "postgres"
    # Processes before the namespace they run in; the namespace before the cluster directory,
    # whose tag file names it.
    DELETE_ORDER = (PROCESS, NETNS, CLUSTER)
    APPLIES_ENVIRONMENT = ("postgres",)  # to the restore.after application

    def __init__(self, root: Optional[str] = None):
        self._root = root

    @classmethod
    def from_environment(cls, env: Mapping[str, str], settings: dict) -> "PostgresProvider":
        return cls(root=env.get("DRDRILL_CLUSTER_ROOT"))

    @property
    def root(self) -> Path:
        if self._root:
            os.environ.setdefault("DRDRILL_CLUSTER_ROOT", self._root)
        try:
            return cluster_root(self._root)
        except ClusterRootError as exc:
            raise ProviderError("CLUSTER_ROOT_UNSAFE", str(exc)) from exc

    def cluster(self, ctx: DrillContext) -> LocalCluster:
        return LocalCluster(self.root / ctx.resource_name(max_len=48), sandboxed=True)

    # ---------------------------------------------------------------- interface

    def find_recovery_point(self, ctx: DrillContext, target: Any) -> RecoveryPoint:
        return source_of(target).find(ctx, target)

    def create_isolation(self, ctx: DrillContext, isolation: Any, targets: list[Any]) -> Environment:
        if getattr(isolation, "postgres", "socket") == "network":
            return self._create_network(ctx, isolation, targets)
        cluster = self.cluster(ctx)
        production, known_from = _production(isolation, targets)
        try:
            cluster.create(ctx.tags())
        except ClusterError as exc:
            raise ProviderError("ISOLATION_FAILED", f"could not create the throwaway cluster: {exc}", retryable=True) from exc
        return Environment(
            family=self.family,
            drill_id=ctx.drill_id,
            id=str(cluster.path),
            description="cluster on a private socket, no TCP, in the drill's sandbox",
            details={"path": str(cluster.path), "socket_dir": str(cluster.sock), "dsn": cluster.dsn(),
                     "production": production, "production_from": known_from},
        )

    def verify_isolation(self, ctx: DrillContext, env: Environment) -> IsolationProof:
        if env.details.get("netns"):
            return self._verify_network(env)
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
        checks += self._proof_inside(cluster, env, temporal=None)
        return IsolationProof(family=self.family, environment_id=env.id, checks=checks)

    def _proof_inside(self, cluster: LocalCluster, env: Environment, temporal: Optional[str]) -> list[IsolationCheck]:
        """The proof (proof.py) run inside the drill's sandbox, as a restore's processes run: lo only
        (or the drill's namespace), private socket directories, none of drdrill's state."""
        if not cluster.sandboxed:  # an old-layout cluster: the namespace's own proof only
            return []
        production = list(env.details.get("production") or []) or ["tcp:127.0.0.1:5432"]
        evidence_dsn = os.environ.get("DRDRILL_EVIDENCE_DSN")
        hidden = list(dict.fromkeys(p for p in (default_state_dir(), os.environ.get("DRDRILL_STATE_DIR")) if p))
        try:
            inside = netns.run_sandboxed_proof(
                cluster.sandbox(network=bool(cluster.netns)), production, temporal,
                evidence=netns.production_endpoints(evidence_dsn) if evidence_dsn else [], evidence_root=str(self.root),
                hidden=hidden, temporal_outside=[os.environ.get("TEMPORAL_ADDRESS") or "127.0.0.1:7233"],
            )
        except (netns.NetnsError, ClusterError, ValueError) as exc:
            return [IsolationCheck(name="proof from inside the sandbox", outcome="COULD_NOT_VERIFY", detail=str(exc))]
        checks = []
        for c in inside:
            detail = c["detail"]
            if c["name"].startswith("production unreachable"):
                detail = f"{env.details.get('production_from') or 'production assumed at 127.0.0.1:5432 (no DSN named)'}: {detail}"
            if c["name"].startswith("Temporal frontend"):
                detail = f"{detail}; relay {env.details.get('relay')}"
            checks.append(IsolationCheck(name=c["name"], outcome=c["outcome"], detail=detail))
        return checks

    def restore(self, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment) -> RestoredResource:
        if env.details.get("netns"):
            return self._restore_network(ctx, target, point, env)
        return source_of(target).restore(ctx, target, point, LocalCluster(env.details["path"]))

    def stage(self, ctx: DrillContext, target: Any, point: RecoveryPoint, isolation: Any) -> Optional[str]:
        """A physical backup laid down in the drill's cluster directory while its isolation is made
        and proven (staging.py); the directory claimed (tagged) first, as create_isolation does."""
        source = source_of(target)
        if not target.stages(isolation) or not isinstance(source, PhysicalSource):
            return None
        cluster = self.cluster(ctx)
        try:
            cluster.claim(ctx.tags())
        except ClusterError as exc:
            raise ProviderError("ISOLATION_FAILED", f"could not create the drill's cluster directory: {exc}", retryable=True) from exc
        return source.stage(ctx, target, point, cluster)

    def discover(self, kind: str, selection: Any) -> list[ProtectedResource]:
        return discover.discover(kind, selection)

    def protected_inventory(self, protected_tag: Optional[str]) -> list[ProtectedResource]:
        """None beyond the drills: coverage counts the repositories the drill files name or select."""
        return []

    def wait_ready(self, ctx: DrillContext, target: Any, resource: RestoredResource, timeout: float) -> RestoredResource:
        # On the network, the worker still reaches the cluster over its Unix socket (the TCP
        # listener is inside the namespace), and expects it to listen on the namespace's loopback.
        entered = time.monotonic()
        admin_dsn = resource.details.get("socket_dsn") or resource.endpoint["dsn"]
        expected_listen = netns.LOOPBACK if resource.details.get("netns") else ""

        def probe():
            try:
                with psycopg.connect(admin_dsn, connect_timeout=5, autocommit=True) as conn:
                    return conn.execute("SELECT current_setting('listen_addresses')").fetchone()[0]
            except psycopg.OperationalError as exc:
                raise NotReadyYet(str(exc).strip()) from exc

        listen = poll_until(probe, timeout=timeout, what=f"database {resource.endpoint.get('database')}")
        ready = resource.model_copy(deep=True)
        if listen != expected_listen:
            ready.findings.append(
                Finding(code="ISOLATION_BROKEN", message=f"target {target.name}: restored server listens on TCP ({listen!r})", target=target.name)
            )
        # It serves; now what came back: sequences, materialized views, emptiness, the structure.
        inspection = inspect_restored(admin_dsn, target.name, target.restore.structure_reference)
        ready.findings.extend(inspection.findings)
        ready.details.update(inspection.details)
        # Is what came back sound: amcheck, collation versions, page checksums (integrity.py).
        left = timeout - (time.monotonic() - entered) - 30  # the activity's own deadline is restore.timeout + 1 min
        checks, ready.details["integrity"] = check_restored(target, resource.details, admin_dsn, left)
        ready.findings.extend(checks)
        if resource.details.get("netns") and getattr(target.restore, "after", None) is not None:
            self._start_after(ctx, target, ready)
        ready.ready = True
        return ready

    # ---------------------------------------------------------------- primitives of cleaning up
    # One kind of resource: a cluster directory under this worker's cluster root, tagged by the
    # marker file its creation writes first. Teardown, orphans and sweeps come from Provider.

    # With isolation.postgres: network, also the drill's network namespace (named by the cluster's
    # tag file) and the processes drdrill started for it (tagged in their environment).

    def inventory(self, drill_id: Optional[str] = None, env: Optional[Environment] = None) -> list[Resource]:
        root = self.root
        found = []
        # drdrill creates real directories only: a symlink (perhaps to somewhere else) is not ours.
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
            tags = LocalCluster(d).tags()
            if require_drill_tag(tags, drill_id):
                found.append(Resource(CLUSTER, str(d), tags=dict(tags), scope=str(root)))  # type: ignore[arg-type]
                ns = tags.get(netns.TAG_NETNS)  # type: ignore[union-attr]
                if ns and netns.namespace_exists(ns):
                    found.append(Resource(NETNS, ns, tags=dict(tags), scope=str(root), extra={"cluster": str(d)}))  # type: ignore[arg-type]
                for role, pid, record in after.processes(d):  # restore.after, by its root-owned record
                    found.insert(0, Resource(PROCESS, f"{role}:{pid}", tags=dict(tags), scope=str(root),  # type: ignore[arg-type]
                                             extra={"cluster": str(d), "role": role, "record": str(record)}))
        for proc in netns.tagged_processes(root, drill_id):
            found.append(Resource(PROCESS, proc.id, tags=proc.tags(), scope=str(root), extra={"cluster": proc.cluster, "role": proc.role}))
        return found

    def named_resources(self, env: Environment) -> list[Resource]:
        path = env.details.get("path")
        named = [Resource(CLUSTER, str(Path(path)), scope=str(self.root))] if path else []
        if path and env.details.get("netns"):
            named.append(Resource(NETNS, env.details["netns"], scope=str(self.root), extra={"cluster": str(Path(path))}))
        return named

    def current_tags(self, resource: Resource) -> Optional[dict[str, str]]:
        if resource.kind == PROCESS:
            return self._process_tags(resource)
        if resource.kind == NETNS:
            return self._netns_tags(resource)
        path = Path(resource.id)
        if not path.resolve().is_relative_to(self.root.resolve()):
            # Never delete outside our own cluster root, whatever an environment record or an orphan says.
            raise NotOurs(f"outside this worker's cluster root {self.root}")
        if not path.exists():
            return None
        tags = LocalCluster(path).tags()
        return tags if isinstance(tags, dict) else {}

    def delete(self, resource: Resource) -> bool:
        """Stop a process; stop the server and whatever else runs in a namespace and delete it;
        stop every server running from a cluster directory and remove it."""
        try:
            if resource.kind == PROCESS and resource.extra.get("record"):
                return after.stop(self._after_record(resource))
            if resource.kind == PROCESS:
                return netns.stop_process(_pid(resource))
            if resource.kind == NETNS:
                cluster = resource.extra.get("cluster")
                if cluster and netns.namespace_exists(resource.id):
                    LocalCluster(cluster).stop()  # a clean stop, before the namespace's processes are signalled
                return netns.delete_namespace(resource.id)
        except netns.NetnsError as exc:
            raise ProviderError("TEARDOWN_FAILED", str(exc), retryable=True) from exc
        return LocalCluster(resource.id).destroy()

    def _after_record(self, resource: Resource) -> Path:
        """A restore.after sandbox's record, only inside this worker's cluster root."""
        record = Path(resource.extra["record"])
        if not record.resolve().is_relative_to(self.root.resolve()) or record.name != f"{resource.id.split(':', 1)[0]}{after.RECORD_SUFFIX}":
            raise NotOurs(f"{record} is not a restore.after record under this worker's cluster root {self.root}")
        return record

    def _process_tags(self, resource: Resource) -> Optional[dict[str, str]]:
        if resource.extra.get("record"):
            record = self._after_record(resource)
            if sandbox.recorded_pid(record) != _pid(resource) or not sandbox.alive(record):
                return None
            tags = LocalCluster(record.parent).tags()
            return tags if isinstance(tags, dict) else {}
        proc = netns.tagged_process(_pid(resource))
        if proc is None:
            # Gone, or a pid now used by a process drdrill did not start: either way not ours to stop.
            return None if not netns.alive(_pid(resource)) else {}
        if not Path(proc.cluster).resolve().is_relative_to(self.root.resolve()) or proc.role != resource.id.split(":", 1)[0]:
            raise NotOurs(f"process {proc.pid} belongs to {proc.cluster}, outside this worker's cluster root {self.root}")
        return proc.tags()

    def _netns_tags(self, resource: Resource) -> Optional[dict[str, str]]:
        if not netns.namespace_exists(resource.id):
            return None
        cluster = resource.extra.get("cluster")
        if not cluster or not Path(cluster).resolve().is_relative_to(self.root.resolve()):
            raise NotOurs(f"no tag file under this worker's cluster root {self.root} names namespace {resource.id}")
        tags = LocalCluster(cluster).tags() or {}
        if tags.get(netns.TAG_NETNS) != resource.id or resource.id != netns.netns_name(str(tags.get("drdrill:drill-id", ""))):
            raise NotOurs(f"the tag file of {cluster} does not name namespace {resource.id}")
        return tags

    # ---------------------------------------------------------------- isolation.postgres: network

    def _network_cluster(self, ctx: DrillContext) -> LocalCluster:
        return LocalCluster(self.root / ctx.resource_name(max_len=48), port=netns.NETNS_PORT, netns=netns.netns_name(ctx.drill_id), sandboxed=True)

    def _create_network(self, ctx: DrillContext, isolation: Any, targets: list[Any]) -> Environment:
        """The tag file (naming the namespace) first, then the namespace with only its loopback up,
        then the cluster started inside it; with a probe, the relay's two halves and the probe."""
        if os.geteuid() != 0:
            raise ProviderError(
                "ISOLATION_FAILED",
                "isolation.postgres: network creates a network namespace, which needs root (CAP_SYS_ADMIN) on the worker",
            )
        cluster = self._network_cluster(ctx)
        tags = {**ctx.tags(), netns.TAG_NETNS: cluster.netns}
        production, known_from = _production(isolation, targets)
        try:
            cluster.claim(tags)
            netns.create_namespace(cluster.netns)
            cluster.create(tags, {"listen_addresses": f"'{netns.LOOPBACK}'"})
            probe = isolation.probe.postgres
            queue = ctx.resource_name(suffix="probe", max_len=200) if probe is not None else None
            if probe is not None:
                self._start_probe(ctx, cluster, probe, queue)
        except (ClusterError, netns.NetnsError) as exc:
            raise ProviderError("ISOLATION_FAILED", f"could not create the drill's network namespace: {exc}", retryable=True) from exc
        details: dict[str, Any] = {
            "path": str(cluster.path),
            "socket_dir": str(cluster.sock),
            "dsn": cluster.dsn(),
            "netns": cluster.netns,
            "port": netns.NETNS_PORT,
            "reachable_from_worker": False,
            "production": production,
            "production_from": known_from,
        }
        where = f"cluster on {netns.LOOPBACK}:{netns.NETNS_PORT} in network namespace {cluster.netns}, loopback only"
        if queue is not None:
            details.update(
                probe_queue=queue,
                temporal_address=probe.temporal_address,
                relay=f"{netns.LOOPBACK}:{netns.RELAY_PORT} inside -> {cluster.path / netns.RELAY_SOCKET} -> {probe.temporal_address}",
            )
            where += f"; probe on task queue {queue}, Temporal through a relay"
        return Environment(family=self.family, drill_id=ctx.drill_id, id=str(cluster.path), description=where, details=details)

    def _start_probe(self, ctx: DrillContext, cluster: LocalCluster, probe: Any, queue: str) -> None:
        """The relay's outer half (a Unix socket in the cluster directory -> the Temporal frontend),
        its inner half (127.0.0.1:7233 in the namespace -> that socket), then the probe; each once."""
        if not probe.temporal_address:
            raise ProviderError("BAD_SPEC", "isolation.probe.postgres: no Temporal address for the probe; set temporal_address")
        tags = ctx.tags()
        sock = cluster.path / netns.RELAY_SOCKET
        inner = f"tcp:{netns.LOOPBACK}:{netns.RELAY_PORT}"
        namespace = probe.temporal_namespace or "default"
        halves = [  # outside: only the probe's own calls (probe_relay); inside: bytes to that socket
            ("relay-host", None, [sys.executable, "-m", "app.probe_relay", "--listen", f"unix:{sock}", "--to", probe.temporal_address, "--queue", queue, "--namespace", namespace]),
            ("relay-netns", cluster.netns, netns.this_module("relay", "--listen", inner, "--to", f"unix:{sock}")),
        ]
        for role, ns, argv in halves:
            if netns.running_role(cluster.path, ctx.drill_id, role):
                continue
            ready = cluster.path / f"{role}.ready"
            ready.unlink(missing_ok=True)
            pid = netns.spawn(
                role, [*argv, "--ready-file", str(ready)], tags=tags, cluster=cluster.path, log=cluster.path / f"{role}.log", netns=ns,
            )
            netns.wait_for_file(ready, pid, 30, f"the relay ({role})")
        if not netns.running_role(cluster.path, ctx.drill_id, "probe"):
            env = {"TEMPORAL_ADDRESS": f"{netns.LOOPBACK}:{netns.RELAY_PORT}", "TEMPORAL_NAMESPACE": namespace}
            netns.spawn(
                "probe", [sys.executable, "-m", "app.cli", "probe", "--task-queue", queue],
                tags=tags, cluster=cluster.path, log=cluster.path / "probe.log", netns=cluster.netns, env=env,
            )

    def _verify_network(self, env: Environment) -> IsolationProof:
        """From outside: the server and the probe run inside the namespace, with no WAL shipping.
        From inside (netns.prove): production cannot be reached, nothing else can, Temporal can."""
        cluster = LocalCluster(env.details["path"], port=netns.NETNS_PORT, netns=env.details["netns"])
        ns = env.details["netns"]
        checks = [self._server_inside(cluster, ns)]
        temporal = f"{netns.LOOPBACK}:{netns.RELAY_PORT}" if env.details.get("probe_queue") else None
        if cluster.sandboxed:
            checks += self._proof_inside(cluster, env, temporal)
        else:
            try:
                inside = netns.run_proof(ns, list(env.details.get("production") or []), temporal)
            except (netns.NetnsError, OSError, ValueError) as exc:
                inside = [{"name": "proof from inside the namespace", "outcome": "COULD_NOT_VERIFY", "detail": str(exc)}]
            for c in inside:
                detail = c["detail"]
                if c["name"].startswith("production") and env.details.get("production_from"):
                    detail = f"{env.details['production_from']}: {detail}"
                if c["name"].startswith("Temporal"):
                    detail = f"{detail}; relay {env.details.get('relay')}"
                checks.append(IsolationCheck(name=c["name"], outcome=c["outcome"], detail=detail))
        checks.append(self._processes_inside(cluster, ns, env.drill_id))
        checks.append(self._no_replication(cluster))
        return IsolationProof(family=self.family, environment_id=env.id, checks=checks)

    def _server_inside(self, cluster: LocalCluster, ns: str) -> IsolationCheck:
        name = "server inside the namespace, on its loopback"
        try:
            # The sandbox's pid from drdrill's root-owned record: postmaster.pid is the server's to write.
            pid = sandbox.recorded_pid(cluster.record) if cluster.sandboxed else int((cluster.data / "postmaster.pid").read_text().splitlines()[0])
            if pid is None:
                raise OSError(f"no record of the server's sandbox in {cluster.record}")
            with psycopg.connect(cluster.dsn(), connect_timeout=10, autocommit=True) as conn:
                listen = conn.execute("SELECT current_setting('listen_addresses')").fetchone()[0]
        except (OSError, ValueError, IndexError, psycopg.Error) as exc:
            return IsolationCheck(name=name, outcome="COULD_NOT_VERIFY", detail=str(exc).strip())
        inside = netns.inside(pid, ns)
        ok = inside and listen == netns.LOOPBACK
        where = f"namespace {ns}" if inside else "NOT in the drill's namespace"
        return IsolationCheck(name=name, outcome="PASSED" if ok else "FAILED", detail=f"postmaster {pid} in {where}; listen_addresses = '{listen}'")

    def _processes_inside(self, cluster: LocalCluster, ns: str, drill_id: str) -> IsolationCheck:
        """Every process drdrill started for the drill (the probe, the relay's inner half) runs inside
        the namespace; only the relay's outer half runs outside, and it only forwards to Temporal."""
        procs = [p for p in netns.tagged_processes(cluster.path.parent, drill_id) if p.cluster == str(cluster.path)]
        procs += [netns.TaggedProcess(pid, role, drill_id, "", str(cluster.path)) for role, pid, _ in after.processes(cluster.path)]
        outside = [p for p in procs if p.role != "relay-host" and not netns.inside(p.pid, ns)]
        described = [
            f"{p.role} {p.pid} " + ("outside (the relay's outer half)" if p.role == "relay-host" else "inside" if p not in outside else "OUTSIDE")
            for p in procs
        ]
        return IsolationCheck(
            name="the drill's processes run inside the namespace",
            outcome="FAILED" if outside else "PASSED",
            detail="; ".join(described) or "none running yet",
        )

    def _no_replication(self, cluster: LocalCluster) -> IsolationCheck:
        name = "no WAL shipping or replication"
        try:
            with psycopg.connect(cluster.dsn(), connect_timeout=10, autocommit=True) as conn:
                settings = dict(
                    conn.execute(
                        "SELECT name, setting FROM pg_settings WHERE name IN ('archive_mode','max_wal_senders','primary_conninfo')"
                    ).fetchall()
                )
        except psycopg.Error as exc:
            return IsolationCheck(name=name, outcome="COULD_NOT_VERIFY", detail=str(exc).strip())
        ok = settings.get("archive_mode") == "off" and settings.get("max_wal_senders") == "0" and not settings.get("primary_conninfo")
        return IsolationCheck(
            name=name,
            outcome="PASSED" if ok else "FAILED",
            detail=f"archive_mode = {settings.get('archive_mode')}, max_wal_senders = {settings.get('max_wal_senders')}, primary_conninfo empty",
        )

    def _restore_network(self, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment) -> RestoredResource:
        """Restore over the Unix socket as usual; publish the TCP address inside the namespace."""
        if getattr(target.source, "format", None) == "base":
            raise ProviderError(
                "BAD_SPEC",
                f"target {target.name}: isolation.postgres: network restores pg_dump archives (format custom or directory); "
                "a base backup runs as a cluster of its own on the private socket",
            )
        cluster = LocalCluster(env.details["path"], port=netns.NETNS_PORT, netns=env.details["netns"])
        resource = source_of(target).restore(ctx, target, point, cluster)
        socket_dsn = resource.endpoint["dsn"]
        resource.details.update(socket_dsn=socket_dsn, netns=env.details["netns"], cluster=env.details["path"])
        resource.endpoint = {
            "host": netns.LOOPBACK,
            "port": netns.NETNS_PORT,
            "dsn": make_conninfo(socket_dsn, host=netns.LOOPBACK, port=str(netns.NETNS_PORT)),
            "database": resource.endpoint["database"],
            "socket_dir": resource.endpoint.get("socket_dir", str(cluster.sock)),
        }
        return resource

    def _start_after(self, ctx: DrillContext, target: Any, resource: RestoredResource) -> None:
        """Start `restore.after` (once) in the drill's sandbox, inside the namespace (after.py)."""
        cluster = Path(resource.details["cluster"])
        role = after.role_of(target.name)
        try:
            pid, status = after.start(ctx, target, resource.endpoint, resource.details)
        except (after.AfterError, OSError, sandbox.SandboxError) as exc:
            raise ProviderError("RESTORE_AFTER_FAILED", f"target {target.name}: restore.after could not start in its sandbox: {exc}") from exc
        resource.details.update(after_pid=pid, after_log=str(cluster / f"{role}.log"))
        if getattr(target.restore, "environment", None):
            resource.details["after_environment"] = sorted(target.restore.environment)
        if status is not None:
            resource.findings.append(
                Finding(
                    code="RESTORE_AFTER_EXITED",
                    message=f"target {target.name}: restore.after exited with {status} right away (see {cluster / f'{role}.log'})",
                    target=target.name,
                )
            )


def _pid(resource: Resource) -> int:
    return int(resource.id.rsplit(":", 1)[-1])


def _production(isolation: Any, targets: list[Any]) -> tuple[list[str], str]:
    """Where production is (each target's source.dsn_env, else isolation.production_dsn_env), as
    addresses without credentials, and which variables said so. Nothing: the proof cannot say."""
    names = [t.source.dsn_env for t in targets if getattr(t.source, "dsn_env", None)]
    if not names and getattr(isolation, "production_dsn_env", None):
        names = [isolation.production_dsn_env]
    endpoints: list[str] = []
    for name in dict.fromkeys(names):
        dsn = os.environ.get(name)
        if dsn:
            endpoints += netns.production_endpoints(dsn)
    return list(dict.fromkeys(endpoints)), ", ".join(f"${n}" + ("" if os.environ.get(n) else " (not set)") for n in dict.fromkeys(names))


def source_of(target: Any) -> RecoverySource:
    """The RecoverySource for a postgres target's `source` (one line per kind of source)."""
    kinds: dict[str, type[RecoverySource]] = {
        "repository": DrdrillRepository,
        "path": DumpFiles,
        "s3": DumpFiles,
        "url_env": DumpFiles,
        "pgbackrest": PgBackRest,
        "barman": Barman,
        "wal_archive": WalArchive,
    }
    return kinds[target.source.kind]()
