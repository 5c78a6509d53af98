"""GCP provider: Compute Engine disk snapshots restored to disks (`gcp.disk`) and to instances
(`gcp.instance`), inside one isolated VPC network per drill.

Clients: the real google-cloud-compute clients, REST transport, synchronous (activities run in the
worker's thread pool). Credentials come from Application Default Credentials
(`google.auth.default()`); `DRDRILL_GCP_API_ENDPOINT` points the clients at another endpoint (a
private endpoint, or the test fake: an http:// endpoint is accepted by the REST transport), and
`DRDRILL_GCP_ANONYMOUS=1` uses anonymous credentials (fakes only).

Settings (environment): GOOGLE_CLOUD_PROJECT (or DRDRILL_GCP_PROJECT) the default project,
DRDRILL_GCP_REGION the default region, DRDRILL_GCP_SWEEP_PROJECTS (comma separated) the projects
`drdrill sweep` searches (default: the default project).

Tags -> labels
--------------
GCP label keys and values allow only lowercase letters, digits, '_' and '-' (63 characters), so
the drdrill tags are mapped:

    drdrill:drill-id    -> label drdrill-drill-id    value: the drill id, lowercased, other
                                                     characters -> '-', cut to 63 with a hash
    drdrill:target      -> label drdrill-target      value: the target name (same mapping)
    drdrill:expires-at  -> label drdrill-expires-at  value: Unix epoch seconds, e.g. "1767225600"
    (and drdrill-managed = "true")

Disks and instances carry them as labels. Networks, subnetworks and firewall rules have no labels
in the Compute API, so they carry the same mapping in their `description`:
`drdrill-labels:{"drdrill-drill-id":"…","drdrill-expires-at":"…",…}`. Teardown and sweep delete
nothing that lacks the drill's label (or description marker).

Names are `ctx.resource_name(...)` (deterministic, at most 63 characters), made GCP-valid
(`[a-z]([-a-z0-9]*[a-z0-9])?`). Creating is idempotent: a 409 alreadyExists means "get it and go on"
(after checking it carries this drill's label, otherwise NAME_TAKEN).

The isolated environment (in the isolation project, default: the first target's project)
------------------------------------------------------------------------------------------
- network   drdrill-<drill>-net       custom subnet mode, regional routing; the default route to
                                      default-internet-gateway GCP adds is deleted;
- subnet    drdrill-<drill>-subnet    isolation.network_cidr, Private Google Access off;
- firewall  drdrill-<drill>-deny-egress   EGRESS deny all to 0.0.0.0/0, priority 100;
            drdrill-<drill>-deny-ingress  INGRESS deny all from 0.0.0.0/0, priority 65534 (explicit);
            drdrill-<drill>-allow-ingress INGRESS allow from isolation.allow_ingress_from, 1000.
verify_isolation reads the network, its subnetworks, routes and firewall rules back.
Restored disks and instances live in the isolation project, in the source's zone; instances get
one interface in the drill's subnetwork, no access config (no external IP), no service account.

REST methods used (under https://compute.googleapis.com/compute/v1/; with IAM permissions in deploy/gcp/methods.yaml)
-------------------------------------------------------------------------------------------------------------------
    GET    projects/{p}/global/snapshots                    snapshots.list
    GET    projects/{p}/zones/{z}/instances/{name}          instances.get
    POST   projects/{p}/zones/{z}/instances                 instances.insert
    DELETE projects/{p}/zones/{z}/instances/{name}          instances.delete
    GET    projects/{p}/aggregated/instances                instances.aggregatedList
    GET    projects/{p}/zones/{z}/disks/{name}              disks.get
    POST   projects/{p}/zones/{z}/disks                     disks.insert
    DELETE projects/{p}/zones/{z}/disks/{name}              disks.delete
    GET    projects/{p}/aggregated/disks                    disks.aggregatedList
    GET    projects/{p}/global/networks[/{name}]            networks.list / networks.get
    POST   projects/{p}/global/networks                     networks.insert
    DELETE projects/{p}/global/networks/{name}              networks.delete
    GET    projects/{p}/regions/{r}/subnetworks/{name}      subnetworks.get
    POST   projects/{p}/regions/{r}/subnetworks             subnetworks.insert
    DELETE projects/{p}/regions/{r}/subnetworks/{name}      subnetworks.delete
    GET    projects/{p}/global/firewalls[/{name}]           firewalls.list / firewalls.get
    POST   projects/{p}/global/firewalls                    firewalls.insert
    DELETE projects/{p}/global/firewalls/{name}             firewalls.delete
    GET    projects/{p}/global/routes                       routes.list
    DELETE projects/{p}/global/routes/{name}                routes.delete
    GET    projects/{p}/zones/{z}/operations/{op}           zoneOperations.get
    GET    projects/{p}/regions/{r}/operations/{op}         regionOperations.get
    GET    projects/{p}/global/operations/{op}              globalOperations.get

Operations are awaited by polling `operations.get` on the operation's own scope (short polls,
heartbeating between them) rather than ExtendedOperation.result(): the client library builds the
operation client it polls with the default endpoint, ignoring a configured api_endpoint, and a
blocking `operations.wait` (up to 2 minutes) would outlast the activity heartbeat timeout. Rate
(429 rateLimitExceeded, 403 rateLimitExceeded/userRateLimitExceeded), quota (403 quotaExceeded)
and 5xx errors are retried with exponential backoff and jitter, heartbeating; when they persist the
ProviderError is retryable so Temporal retries the activity.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import random
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping, Optional

from drdrill.core.models import (
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
from drdrill.providers.base import NotReadyYet, Provider, ProviderError, heartbeat, poll_until, select_for_target

LABEL_DRILL_ID = "drdrill-drill-id"
LABEL_TARGET = "drdrill-target"
LABEL_EXPIRES_AT = "drdrill-expires-at"
LABEL_MANAGED = "drdrill-managed"
DESCRIPTION_MARKER = "drdrill-labels:"
COMPUTE_SCOPE = "https://www.googleapis.com/auth/compute"

_RATE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded", "RATE_LIMIT_EXCEEDED"}
_CAPACITY_CODES = {"ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "RESOURCE_POOL_EXHAUSTED"}
_RETRYABLE_OP_CODES = {"QUOTA_EXCEEDED", "RATE_LIMIT_EXCEEDED", "INTERNAL_ERROR", "SERVICE_UNAVAILABLE"}

_CLIENTS = {
    "snapshots": "SnapshotsClient",
    "disks": "DisksClient",
    "instances": "InstancesClient",
    "networks": "NetworksClient",
    "subnetworks": "SubnetworksClient",
    "firewalls": "FirewallsClient",
    "routes": "RoutesClient",
    "zone_operations": "ZoneOperationsClient",
    "region_operations": "RegionOperationsClient",
    "global_operations": "GlobalOperationsClient",
}


# ---------------------------------------------------------------- labels and names


def label_value(value: str) -> str:
    """A drdrill tag value as a GCP label value: [a-z0-9_-]{0,63}, stable and unique."""
    v = re.sub(r"[^a-z0-9_-]", "-", value.lower())
    if len(v) <= 63:
        return v
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return v[:54] + "-" + digest


def gcp_labels(ctx: DrillContext, target: Optional[str] = None) -> dict[str, str]:
    """ctx.tags(target) mapped to valid GCP labels (see the module docstring)."""
    labels = {
        LABEL_DRILL_ID: label_value(ctx.drill_id),
        LABEL_EXPIRES_AT: str(int(ctx.expires_at.timestamp())),
        LABEL_MANAGED: "true",
    }
    if target:
        labels[LABEL_TARGET] = label_value(target)
    return labels


def gcp_name(ctx: DrillContext, target: Optional[str] = None, suffix: str = "") -> str:
    """ctx.resource_name made GCP-valid: [a-z]([-a-z0-9]{0,61}[a-z0-9])?."""
    name = ctx.resource_name(target, suffix=suffix, max_len=63)
    name = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = "d" + name
    return name[:63].rstrip("-")


def description_with_labels(text: str, labels: dict[str, str]) -> str:
    return f"{text} {DESCRIPTION_MARKER}{json.dumps(labels, sort_keys=True, separators=(',', ':'))}"


def labels_of(resource: Any) -> dict[str, str]:
    """Labels of a disk/instance, or the marker in a network/subnetwork/firewall description."""
    labels = dict(getattr(resource, "labels", None) or {})
    if labels:
        return labels
    desc = getattr(resource, "description", "") or ""
    idx = desc.find(DESCRIPTION_MARKER)
    if idx < 0:
        return {}
    try:
        found = json.loads(desc[idx + len(DESCRIPTION_MARKER) :].strip())
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def owned_by(resource: Any, drill_id: Optional[str]) -> bool:
    """True when the resource carries drdrill's drill-id label (for `drill_id`, when given)."""
    value = labels_of(resource).get(LABEL_DRILL_ID)
    if not value:
        return False
    return drill_id is None or value == label_value(drill_id)


def link_parts(link: str) -> dict[str, str]:
    """'https://…/projects/p/zones/z/disks/d' -> {'projects': 'p', 'zones': 'z', 'disks': 'd'}."""
    parts = [p for p in link.split("/compute/v1/", 1)[-1].strip("/").split("/") if p != "global"]
    out: dict[str, str] = {}
    for i in range(0, len(parts) - 1, 2):
        out[parts[i]] = parts[i + 1]
    return out


def link_tail(link: str) -> str:
    """The location-independent part of a self link: projects/p/zones/z/disks/d."""
    idx = link.find("projects/")
    return link[idx:] if idx >= 0 else link


def region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def parse_time(value: str) -> datetime:
    t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------- the provider


class GcpProvider(Provider):
    family = "gcp"

    def __init__(
        self,
        *,
        credentials: Any = None,
        api_endpoint: Optional[str] = None,
        project: Optional[str] = None,
        region: Optional[str] = None,
        sweep_projects: Optional[list[str]] = None,
        clients: Optional[dict[str, Any]] = None,
        poll_initial: float = 1.0,
        poll_max: float = 10.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 32.0,
        max_attempts: int = 6,
        operation_timeout: float = 1800.0,
        request_timeout: float = 60.0,
        disk_skew: float = 900.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.credentials = credentials
        self.api_endpoint = api_endpoint
        self.project = project
        self.region = region
        self.sweep_projects = list(sweep_projects or ([project] if project else []))
        self._clients: dict[str, Any] = dict(clients or {})
        self._lock = threading.Lock()
        self.poll_initial = poll_initial
        self.poll_max = poll_max
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_attempts = max(1, max_attempts)
        self.operation_timeout = operation_timeout
        self.request_timeout = request_timeout
        self.disk_skew = disk_skew
        self._sleep = sleep
        # Projects an environment was (being) created in, per drill: teardown of a half-created
        # environment, whose details never reached the workflow, still finds them.
        self._env_projects: dict[str, set[str]] = {}

    @classmethod
    def from_environment(cls, env: Mapping[str, str], settings: dict) -> "GcpProvider":
        credentials = settings.get("credentials")
        if credentials is None and env.get("DRDRILL_GCP_ANONYMOUS", "").lower() in ("1", "true", "yes"):
            from google.auth.credentials import AnonymousCredentials

            credentials = AnonymousCredentials()
        project = settings.get("project") or env.get("DRDRILL_GCP_PROJECT") or env.get("GOOGLE_CLOUD_PROJECT") or env.get("CLOUDSDK_CORE_PROJECT")
        sweep = settings.get("sweep_projects") or [p.strip() for p in env.get("DRDRILL_GCP_SWEEP_PROJECTS", "").split(",") if p.strip()]
        return cls(
            credentials=credentials,
            api_endpoint=settings.get("api_endpoint") or env.get("DRDRILL_GCP_API_ENDPOINT") or None,
            project=project or None,
            region=settings.get("region") or env.get("DRDRILL_GCP_REGION") or None,
            sweep_projects=sweep or None,
            poll_initial=float(settings.get("poll_initial", env.get("DRDRILL_GCP_POLL_INITIAL", 1.0))),
            poll_max=float(settings.get("poll_max", env.get("DRDRILL_GCP_POLL_MAX", 10.0))),
            backoff_initial=float(settings.get("backoff_initial", env.get("DRDRILL_GCP_BACKOFF_INITIAL", 1.0))),
        )

    # ------------------------------------------------------------ clients and calls

    def client(self, name: str) -> Any:
        with self._lock:
            if name not in self._clients:
                from google.api_core.client_options import ClientOptions
                from google.cloud import compute_v1

                if self.credentials is None:
                    self.credentials = self._default_credentials()
                options = ClientOptions(api_endpoint=self.api_endpoint) if self.api_endpoint else None
                cls = getattr(compute_v1, _CLIENTS[name])
                self._clients[name] = cls(credentials=self.credentials, transport="rest", client_options=options)
            return self._clients[name]

    @staticmethod
    def _default_credentials() -> Any:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            creds, _ = google.auth.default(scopes=[COMPUTE_SCOPE])
        except DefaultCredentialsError as exc:
            raise ProviderError("GCP_NO_CREDENTIALS", f"no Application Default Credentials for GCP: {exc}") from exc
        return creds

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            transport = getattr(c, "transport", None)
            try:
                if transport is not None:
                    transport.close()
            except Exception:  # pragma: no cover - best effort
                pass

    def _call(self, service: str, method: str, request: dict, *, what: str, passthrough: tuple = ()) -> Any:
        """One API call with backoff on rate/quota/5xx errors (heartbeating); lists are read whole.

        NotFound / Conflict in `passthrough` are raised as google exceptions for the caller to
        handle; every other failure becomes a ProviderError.
        """
        from google.api_core import exceptions as gexc
        from requests import exceptions as rexc

        fn = getattr(self.client(service), method)
        delay = self.backoff_initial
        attempt = 0
        while True:
            attempt += 1
            try:
                result = fn(request=request, retry=None, timeout=self.request_timeout)
                if method in ("list", "aggregated_list"):
                    result = list(result)  # follows nextPageToken
                return result
            except passthrough:
                raise
            except gexc.GoogleAPICallError as exc:
                kind = _classify(exc)
                if kind is None or attempt >= self.max_attempts:
                    raise _provider_error(exc, what, kind) from exc
                last = f"{exc.code} {_reason(exc)}"
            except (rexc.ConnectionError, rexc.Timeout) as exc:
                if attempt >= self.max_attempts:
                    raise ProviderError("GCP_UNAVAILABLE", f"{what}: the Compute API could not be reached: {exc}", retryable=True) from exc
                last = type(exc).__name__
            heartbeat({"retrying": what, "attempt": attempt, "error": last})
            self._sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.backoff_max)

    def _filtered_list(self, service: str, method: str, request: dict, *, what: str) -> list:
        """A list with a server-side label filter; should the API refuse the filter expression,
        the whole list is read instead (every caller filters again client-side)."""
        try:
            return self._call(service, method, request, what=what)
        except ProviderError as exc:
            if "filter" not in request or exc.code != "GCP_REQUEST_FAILED" or "filter" not in exc.message.lower():
                raise
        unfiltered = {k: v for k, v in request.items() if k != "filter"}
        return self._call(service, method, unfiltered, what=what + " (unfiltered)")

    def _get(self, service: str, request: dict, what: str) -> Any:
        """GET a resource; None when it does not exist."""
        from google.api_core import exceptions as gexc

        try:
            return self._call(service, "get", request, what=what, passthrough=(gexc.NotFound,))
        except gexc.NotFound:
            return None

    def _wait(self, op: Any, what: str) -> Any:
        """Poll the operation on its own scope until DONE (heartbeating); raise its error."""
        from google.cloud import compute_v1

        done = compute_v1.Operation.Status.DONE
        parts = link_parts(op.self_link) if op.self_link else {}
        project = parts.get("projects", "")
        if op.zone:
            service, scope = "zone_operations", {"zone": link_parts(op.zone).get("zones", op.zone.rsplit("/", 1)[-1])}
        elif op.region:
            service, scope = "region_operations", {"region": link_parts(op.region).get("regions", op.region.rsplit("/", 1)[-1])}
        else:
            service, scope = "global_operations", {}
        deadline = time.monotonic() + self.operation_timeout
        delay = self.poll_initial
        polls = 0
        while op.status != done:
            polls += 1
            heartbeat({"operation": op.name, "waiting_for": what, "status": str(op.status), "polls": polls})
            if time.monotonic() > deadline:
                raise ProviderError("GCP_OPERATION_TIMEOUT", f"{what}: operation {op.name} not done after {self.operation_timeout:.0f}s", retryable=True)
            self._sleep(delay * random.uniform(0.8, 1.0))
            delay = min(delay * 1.6, self.poll_max)
            op = self._call(service, "get", {"project": project, "operation": op.name, **scope}, what=f"{what} (operation {op.name})")
        errors = list(op.error.errors) if op.error and op.error.errors else []
        if errors:
            codes = [e.code for e in errors]
            message = "; ".join(f"{e.code}: {e.message}" for e in errors)
            if set(codes) & _CAPACITY_CODES:
                raise ProviderError("GCP_CAPACITY_UNAVAILABLE", f"{what} failed: {message}")
            raise ProviderError(
                "GCP_OPERATION_FAILED", f"{what} failed: {message}", retryable=bool(set(codes) & _RETRYABLE_OP_CODES)
            )
        return op

    def _insert(self, service: str, request: dict, *, what: str, get_request: dict, drill_id: str) -> Any:
        """Create idempotently: insert and await; on 409 get the existing one (must be this drill's)."""
        from google.api_core import exceptions as gexc

        try:
            op = self._call(service, "insert_unary", request, what=what, passthrough=(gexc.Conflict,))
            self._wait(op, what)
        except gexc.Conflict:
            pass
        resource = self._get(service, get_request, what)
        if resource is None:
            raise ProviderError("GCP_OPERATION_FAILED", f"{what}: the resource is missing after its creation finished", retryable=True)
        if not owned_by(resource, drill_id):
            raise ProviderError("NAME_TAKEN", f"{what}: {resource.self_link} exists but was not created by drill {drill_id}; left alone")
        return resource

    def _delete(self, service: str, request: dict, *, what: str) -> bool:
        """Delete and await. True when deleted, False when it was already gone (404)."""
        from google.api_core import exceptions as gexc

        try:
            op = self._call(service, "delete_unary", request, what=what, passthrough=(gexc.NotFound,))
        except gexc.NotFound:
            return False
        try:
            self._wait(op, what)
        except ProviderError as exc:
            if "RESOURCE_NOT_FOUND" in exc.message or "notFound" in exc.message:
                return False
            raise
        return True

    # ------------------------------------------------------------ recovery points

    def find_recovery_point(self, ctx: DrillContext, target: Any) -> RecoveryPoint:
        src = target.source
        if target.provider == "gcp.disk":
            disk = self._get("disks", {"project": src.project, "zone": src.zone, "disk": src.disk}, f"source disk {src.disk}")
            disk_link = disk.self_link if disk is not None else f"projects/{src.project}/zones/{src.zone}/disks/{src.disk}"
            disks = [{"device_name": src.disk, "boot": True, "source_disk": link_tail(disk_link)}]
            source_desc = f"disk {src.project}/{src.zone}/{src.disk}"
        else:
            inst = self._get("instances", {"project": src.project, "zone": src.zone, "instance": src.instance}, f"source instance {src.instance}")
            if inst is None:
                raise ProviderError("SOURCE_NOT_FOUND", f"target {target.name}: instance {src.project}/{src.zone}/{src.instance} does not exist")
            attached = sorted(inst.disks, key=lambda d: (not d.boot, d.index))
            disks = [
                {"device_name": d.device_name or link_parts(d.source).get("disks", f"disk{i}"), "boot": bool(d.boot), "source_disk": link_tail(d.source)}
                for i, d in enumerate(attached)
                if d.source and (d.type_ or "PERSISTENT") == "PERSISTENT"
            ]
            if not disks or not disks[0]["boot"]:
                raise ProviderError("SOURCE_NOT_FOUND", f"target {target.name}: instance {src.instance} has no persistent boot disk to restore")
            source_desc = f"instance {src.project}/{src.zone}/{src.instance}"

        snapshots = self._snapshots(src.project, src.snapshot_labels, what=f"snapshots of {source_desc}")
        by_disk: dict[str, list[Any]] = {}
        for s in snapshots:
            by_disk.setdefault(link_tail(s.source_disk), []).append(s)

        boot = disks[0]
        candidates = [self._point(target, s, boot) for s in by_disk.get(boot["source_disk"], [])]
        if not candidates:
            labels = f" labelled {src.snapshot_labels}" if src.snapshot_labels else ""
            raise ProviderError("RECOVERY_POINT_NOT_FOUND", f"target {target.name}: no READY snapshot{labels} of {source_desc} in project {src.project}")
        point = select_for_target(candidates, ctx, target)
        chosen = [point.metadata["snapshot"]]
        # Other disks of an instance: the newest snapshot no later than the boot snapshot plus a
        # small skew (snapshots of one instance are taken together, not atomically).
        limit = point.consistent_time + timedelta(seconds=self.disk_skew)
        for d in disks[1:]:
            options = [s for s in by_disk.get(d["source_disk"], []) if parse_time(s.creation_timestamp) <= limit]
            if not options:
                raise ProviderError(
                    "RECOVERY_POINT_NOT_FOUND",
                    f"target {target.name}: disk {d['device_name']} has no snapshot at or before {limit.isoformat()} to go with {point.id}",
                )
            best = max(options, key=lambda s: parse_time(s.creation_timestamp))
            chosen.append(_snapshot_meta(best, d))
        consistent = min(parse_time(c["created"]) for c in chosen)
        point.consistent_time = consistent
        point.metadata = {"project": src.project, "zone": src.zone, "snapshots": chosen, "source": source_desc}
        point.size_bytes = sum(int(c["disk_size_gb"]) for c in chosen) * 1024**3
        if len(chosen) > 1:
            point.id = "+".join(c["name"] for c in chosen)
        return point

    def _snapshots(self, project: str, labels: dict[str, str], what: str) -> list[Any]:
        flt = " AND ".join(f'(labels.{k} = "{v}")' for k, v in sorted(labels.items()))
        request: dict = {"project": project, "max_results": 500}
        if flt:
            request["filter"] = flt
        items = self._filtered_list("snapshots", "list", request, what=what)
        # Filter again client-side: the READY state, and the labels (in case a filter was ignored).
        return [s for s in items if s.status == "READY" and all(s.labels.get(k) == v for k, v in labels.items())]

    def _point(self, target: Any, snap: Any, disk: dict) -> RecoveryPoint:
        meta = _snapshot_meta(snap, disk)
        return RecoveryPoint(
            target=target.name,
            provider=target.provider,
            id=snap.name,
            consistent_time=parse_time(snap.creation_timestamp),
            size_bytes=int(snap.disk_size_gb or 0) * 1024**3,
            metadata={"snapshot": meta},
        )

    # ------------------------------------------------------------ isolation

    def _env_location(self, isolation: Any, targets: list[Any]) -> tuple[str, str]:
        project = getattr(isolation, "gcp_project", None) or (targets[0].source.project if targets else None) or self.project
        if not project:
            raise ProviderError("BAD_ISOLATION", "no GCP project for the isolated environment: set isolation.gcp_project or GOOGLE_CLOUD_PROJECT")
        region = getattr(isolation, "gcp_region", None)
        if not region:
            zones = [t.source.zone for t in targets if t.provider == "gcp.instance"] or [t.source.zone for t in targets]
            region = region_of(zones[0]) if zones else self.region
        if not region:
            raise ProviderError("BAD_ISOLATION", "no GCP region for the isolated environment: set isolation.gcp_region or DRDRILL_GCP_REGION")
        for t in targets:
            if t.provider == "gcp.instance" and region_of(t.source.zone) != region:
                raise ProviderError(
                    "BAD_ISOLATION",
                    f"target {t.name} is in zone {t.source.zone}, outside the drill's region {region}: an instance can only use a subnetwork of its own region",
                )
        return project, region

    def create_isolation(self, ctx: DrillContext, isolation: Any, targets: list[Any]) -> Environment:
        project, region = self._env_location(isolation, targets)
        self._env_projects.setdefault(ctx.drill_id, set()).add(project)
        try:
            cidr = str(ipaddress.ip_network(isolation.network_cidr, strict=False))
        except ValueError as exc:
            raise ProviderError("BAD_ISOLATION", f"isolation.network_cidr {isolation.network_cidr!r} is not a CIDR: {exc}") from exc
        sources = []
        for s in isolation.allow_ingress_from:
            try:
                sources.append(str(ipaddress.ip_network(s, strict=False)))
            except ValueError as exc:
                raise ProviderError("BAD_ISOLATION", f"isolation.allow_ingress_from: {s!r} is not a CIDR (GCP firewall sources are address ranges)") from exc
        labels = gcp_labels(ctx)
        net_name = gcp_name(ctx, suffix="net")
        sub_name = gcp_name(ctx, suffix="subnet")
        what = f"drill {ctx.drill_id}"
        network = self._insert(
            "networks",
            {
                "project": project,
                "network_resource": {
                    "name": net_name,
                    "auto_create_subnetworks": False,
                    "routing_config": {"routing_mode": "REGIONAL"},
                    "description": description_with_labels(f"drdrill isolated network for drill {ctx.drill_id}", labels),
                },
            },
            what=f"{what}: network {net_name}",
            get_request={"project": project, "network": net_name},
            drill_id=ctx.drill_id,
        )
        if network.auto_create_subnetworks:
            raise ProviderError("ISOLATION_BROKEN", f"network {net_name} is in auto subnet mode")
        subnet = self._insert(
            "subnetworks",
            {
                "project": project,
                "region": region,
                "subnetwork_resource": {
                    "name": sub_name,
                    "network": network.self_link,
                    "ip_cidr_range": cidr,
                    "private_ip_google_access": False,
                    "description": description_with_labels(f"drdrill isolated subnetwork for drill {ctx.drill_id}", labels),
                },
            },
            what=f"{what}: subnetwork {sub_name}",
            get_request={"project": project, "region": region, "subnetwork": sub_name},
            drill_id=ctx.drill_id,
        )
        # The default route to the internet gateway GCP adds to a new network goes.
        for route in self._internet_routes(project, network.self_link):
            self._delete("routes", {"project": project, "route": route.name}, what=f"{what}: default internet route {route.name}")
        firewalls = self._firewall_specs(ctx, network.self_link, sources, labels)
        for fw in firewalls:
            self._insert(
                "firewalls",
                {"project": project, "firewall_resource": fw},
                what=f"{what}: firewall rule {fw['name']}",
                get_request={"project": project, "firewall": fw["name"]},
                drill_id=ctx.drill_id,
            )
        return Environment(
            family=self.family,
            drill_id=ctx.drill_id,
            id=net_name,
            description=f"VPC network {project}/{net_name} ({cidr} in {region}), no internet route, egress denied",
            details={
                "project": project,
                "region": region,
                "network": net_name,
                "network_self_link": network.self_link,
                "subnetwork": sub_name,
                "subnetwork_self_link": subnet.self_link,
                "cidr": cidr,
                "firewalls": [f["name"] for f in firewalls],
                "allow_ingress_from": sources,
            },
        )

    def _firewall_specs(self, ctx: DrillContext, network_link: str, sources: list[str], labels: dict) -> list[dict]:
        def desc(text: str) -> str:
            return description_with_labels(f"drdrill drill {ctx.drill_id}: {text}", labels)

        rules = [
            {
                "name": gcp_name(ctx, suffix="deny-egress"),
                "network": network_link,
                "direction": "EGRESS",
                "priority": 100,
                "denied": [{"I_p_protocol": "all"}],
                "destination_ranges": ["0.0.0.0/0"],
                "description": desc("deny all egress"),
            },
            {
                "name": gcp_name(ctx, suffix="deny-ingress"),
                "network": network_link,
                "direction": "INGRESS",
                "priority": 65534,
                "denied": [{"I_p_protocol": "all"}],
                "source_ranges": ["0.0.0.0/0"],
                "description": desc("deny all other ingress"),
            },
        ]
        if sources:
            rules.append(
                {
                    "name": gcp_name(ctx, suffix="allow-ingress"),
                    "network": network_link,
                    "direction": "INGRESS",
                    "priority": 1000,
                    "allowed": [{"I_p_protocol": "all"}],
                    "source_ranges": sources,
                    "description": desc("allow ingress from the validation sources only"),
                }
            )
        return rules

    def _network_routes(self, project: str, network_link: str) -> list[Any]:
        tail = link_tail(network_link)
        return [r for r in self._call("routes", "list", {"project": project, "max_results": 500}, what=f"routes of {tail}") if link_tail(r.network) == tail]

    def _internet_routes(self, project: str, network_link: str) -> list[Any]:
        return [r for r in self._network_routes(project, network_link) if r.next_hop_gateway]

    def _network_firewalls(self, project: str, network_link: str) -> list[Any]:
        tail = link_tail(network_link)
        return [f for f in self._call("firewalls", "list", {"project": project, "max_results": 500}, what=f"firewall rules of {tail}") if link_tail(f.network) == tail]

    def verify_isolation(self, ctx: DrillContext, env: Environment) -> IsolationProof:
        d = env.details
        project, net_name = d["project"], d["network"]
        proof = IsolationProof(family=self.family, environment_id=env.id)
        checks = proof.checks
        network = self._get("networks", {"project": project, "network": net_name}, f"network {net_name}")
        if network is None:
            checks.append(IsolationCheck(name="network exists", outcome="FAILED", detail=f"network {project}/{net_name} is missing"))
            return proof
        ok = owned_by(network, ctx.drill_id) and not network.auto_create_subnetworks
        checks.append(IsolationCheck(name="network is the drill's own, custom subnet mode", outcome="PASSED" if ok else "FAILED",
                                     detail=f"{net_name}: auto_create_subnetworks={network.auto_create_subnetworks}, labelled={owned_by(network, ctx.drill_id)}"))
        peerings = [p.name for p in network.peerings]
        checks.append(IsolationCheck(name="no network peerings", outcome="FAILED" if peerings else "PASSED",
                                     detail=f"peerings: {', '.join(peerings)}" if peerings else "the network has no peerings"))
        subnet_links = list(network.subnetworks)
        expected = link_tail(d["subnetwork_self_link"])
        extra = [s for s in subnet_links if link_tail(s) != expected]
        subnet = self._get("subnetworks", {"project": project, "region": d["region"], "subnetwork": d["subnetwork"]}, f"subnetwork {d['subnetwork']}")
        sub_ok = subnet is not None and not extra and not subnet.private_ip_google_access
        checks.append(IsolationCheck(
            name="only the drill's subnetwork, no Private Google Access", outcome="PASSED" if sub_ok else "FAILED",
            detail=(f"{d['subnetwork']} {subnet.ip_cidr_range}" if subnet else f"{d['subnetwork']} is missing") + (f"; unexpected subnetworks: {extra}" if extra else ""),
        ))
        # Routes: only the subnet routes GCP maintains (next hop: this network) may exist.
        routes = self._network_routes(project, network.self_link)
        outward = [r for r in routes if r.next_hop_gateway or r.next_hop_ip or r.next_hop_instance or r.next_hop_vpn_tunnel or r.next_hop_ilb or r.next_hop_peering or r.next_hop_interconnect_attachment or r.next_hop_hub]
        default = [r for r in routes if r.dest_range in ("0.0.0.0/0", "::/0")]
        checks.append(IsolationCheck(name="no default internet route", outcome="FAILED" if default else "PASSED",
                                     detail=f"default routes: {', '.join(r.name for r in default)}" if default else f"{len(routes)} route(s), none to 0.0.0.0/0"))
        checks.append(IsolationCheck(name="no route leaves the network", outcome="FAILED" if outward else "PASSED",
                                     detail=("routes with an outside next hop: " + ", ".join(f"{r.name} -> {r.dest_range}" for r in outward)) if outward else "every route's next hop is the drill's network"))
        # Firewall rules: egress denied to everything, ahead of any egress allow; ingress only
        # from the sources the spec names.
        rules = [f for f in self._network_firewalls(project, network.self_link) if not f.disabled]
        deny_egress = [f for f in rules if f.direction == "EGRESS" and f.denied and any(p.I_p_protocol == "all" for p in f.denied) and "0.0.0.0/0" in f.destination_ranges]
        best_deny = min((f.priority for f in deny_egress), default=None)
        allow_egress = [f for f in rules if f.direction == "EGRESS" and f.allowed and (best_deny is None or f.priority <= best_deny)]
        egress_ok = best_deny is not None and not allow_egress
        checks.append(IsolationCheck(
            name="egress denied", outcome="PASSED" if egress_ok else "FAILED",
            detail=(f"deny all egress at priority {best_deny}" if best_deny is not None else "no rule denies all egress")
            + (f"; allowed ahead of it: {', '.join(f.name for f in allow_egress)}" if allow_egress else ""),
        ))
        allowed_sources = set(d.get("allow_ingress_from") or [])
        wide = []
        for f in rules:
            if f.direction == "INGRESS" and f.allowed:
                srcs = set(f.source_ranges)
                if f.source_tags or f.source_service_accounts or not srcs <= allowed_sources:
                    wide.append(f"{f.name} from {sorted(srcs) or list(f.source_tags) or list(f.source_service_accounts)}")
        checks.append(IsolationCheck(
            name="ingress only from the validation sources", outcome="FAILED" if wide else "PASSED",
            detail=("rules allowing other sources: " + "; ".join(wide)) if wide else f"ingress allowed only from {sorted(allowed_sources) or 'nowhere'}",
        ))
        return proof

    # ------------------------------------------------------------ restore

    def _restore_disk(self, ctx: DrillContext, target: Any, env: Environment, zone: str, name: str, snap: dict) -> Any:
        project = env.details["project"]
        labels = gcp_labels(ctx, target.name)
        self._insert(
            "disks",
            {
                "project": project,
                "zone": zone,
                "disk_resource": {
                    "name": name,
                    "source_snapshot": snap["self_link"],
                    **({"size_gb": int(snap["disk_size_gb"])} if snap.get("disk_size_gb") else {}),
                    "labels": labels,
                    "description": f"drdrill drill {ctx.drill_id}: {target.name} restored from snapshot {snap['name']}",
                },
            },
            what=f"target {target.name}: disk {name}",
            get_request={"project": project, "zone": zone, "disk": name},
            drill_id=ctx.drill_id,
        )
        return self._disk_ready(project, zone, name, target.name)

    def _disk_ready(self, project: str, zone: str, name: str, target: str, timeout: float = 900.0) -> Any:
        def probe():
            disk = self._get("disks", {"project": project, "zone": zone, "disk": name}, f"disk {name}")
            if disk is None:
                raise ProviderError("RESTORE_FAILED", f"target {target}: disk {name} disappeared", retryable=True)
            if disk.status == "FAILED":
                raise ProviderError("RESTORE_FAILED", f"target {target}: disk {name} failed to restore")
            if disk.status != "READY":
                raise NotReadyYet(f"disk {name} is {disk.status}")
            return disk

        return poll_until(probe, timeout=timeout, what=f"disk {name}", initial=self.poll_initial, maximum=self.poll_max, sleep=self._sleep)

    def restore(self, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment) -> RestoredResource:
        project = env.details["project"]
        zone = target.source.zone
        snaps = point.metadata["snapshots"]
        if target.provider == "gcp.disk":
            name = gcp_name(ctx, target.name)
            disk = self._restore_disk(ctx, target, env, zone, name, snaps[0])
            return RestoredResource(
                target=target.name,
                provider=target.provider,
                id=disk.self_link,
                description=f"disk {project}/{zone}/{name} from snapshot {snaps[0]['name']}",
                details={"project": project, "zone": zone, "disks": [name], "instance": None},
                endpoint=self._disk_endpoint(disk),
            )
        disks = []
        for i, snap in enumerate(snaps):
            dname = gcp_name(ctx, target.name, suffix=f"disk{i}")
            disks.append((self._restore_disk(ctx, target, env, zone, dname, snap), snap))
        name = gcp_name(ctx, target.name)
        instance = self._insert(
            "instances",
            {
                "project": project,
                "zone": zone,
                "instance_resource": {
                    "name": name,
                    "machine_type": f"zones/{zone}/machineTypes/{target.source.machine_type}",
                    "labels": gcp_labels(ctx, target.name),
                    "description": f"drdrill drill {ctx.drill_id}: {target.name} restored from {point.id}",
                    "disks": [
                        {"source": disk.self_link, "boot": i == 0, "auto_delete": False, "device_name": snap["device_name"]}
                        for i, (disk, snap) in enumerate(disks)
                    ],
                    # One interface in the drill's subnetwork, no access config: no external IP.
                    "network_interfaces": [{"network": env.details["network_self_link"], "subnetwork": env.details["subnetwork_self_link"]}],
                    "can_ip_forward": False,
                },
            },
            what=f"target {target.name}: instance {name}",
            get_request={"project": project, "zone": zone, "instance": name},
            drill_id=ctx.drill_id,
        )
        return RestoredResource(
            target=target.name,
            provider=target.provider,
            id=instance.self_link,
            description=f"instance {project}/{zone}/{name} ({target.source.machine_type}) from {point.id}",
            details={"project": project, "zone": zone, "disks": [d.name for d, _ in disks], "instance": name},
            endpoint=self._instance_endpoint(instance),
        )

    @staticmethod
    def _disk_endpoint(disk: Any) -> dict[str, Any]:
        return {
            "project": link_parts(disk.self_link).get("projects", ""),
            "zone": link_parts(disk.zone).get("zones", ""),
            "disk": disk.name,
            "self_link": disk.self_link,
            "status": disk.status,
            "size_gb": int(disk.size_gb or 0),
            "source_snapshot": link_parts(disk.source_snapshot).get("snapshots", ""),
        }

    @staticmethod
    def _instance_endpoint(inst: Any) -> dict[str, Any]:
        nic = inst.network_interfaces[0] if inst.network_interfaces else None
        external = [ac.nat_i_p for n in inst.network_interfaces for ac in n.access_configs if ac.nat_i_p]
        return {
            "project": link_parts(inst.self_link).get("projects", ""),
            "zone": link_parts(inst.zone).get("zones", ""),
            "instance": inst.name,
            "self_link": inst.self_link,
            "status": inst.status,
            "internal_ip": nic.network_i_p if nic else "",
            "external_ip": ",".join(external),
            "network": link_parts(nic.network).get("networks", "") if nic else "",
            "subnetwork": link_parts(nic.subnetwork).get("subnetworks", "") if nic else "",
            "disks": ",".join(link_parts(d.source).get("disks", "") for d in inst.disks),
        }

    def wait_ready(self, ctx: DrillContext, target: Any, resource: RestoredResource, timeout: float) -> RestoredResource:
        d = resource.details
        project, zone = d["project"], d["zone"]
        out = resource.model_copy(deep=True)
        if target.provider == "gcp.disk":
            disk = self._disk_ready(project, zone, d["disks"][0], target.name, timeout)
            out.endpoint = self._disk_endpoint(disk)
            out.ready = True
            return out

        def probe():
            inst = self._get("instances", {"project": project, "zone": zone, "instance": d["instance"]}, f"instance {d['instance']}")
            if inst is None:
                raise ProviderError("RESTORE_FAILED", f"target {target.name}: instance {d['instance']} disappeared", retryable=True)
            if inst.status in ("TERMINATED", "STOPPED", "SUSPENDED"):
                raise ProviderError("RESTORE_FAILED", f"target {target.name}: instance {d['instance']} is {inst.status} instead of booting")
            if inst.status != "RUNNING":
                raise NotReadyYet(f"instance {d['instance']} is {inst.status}")
            return inst

        inst = poll_until(probe, timeout=timeout, what=f"instance {d['instance']}", initial=self.poll_initial, maximum=self.poll_max, sleep=self._sleep)
        out.endpoint = self._instance_endpoint(inst)
        out.ready = True
        if out.endpoint["external_ip"]:
            out.findings.append(Finding(code="ISOLATION_BROKEN", target=target.name,
                                        message=f"instance {d['instance']} has an external IP {out.endpoint['external_ip']}"))
        return out

    # ------------------------------------------------------------ teardown

    def teardown(self, ctx: DrillContext, env: Environment) -> TeardownReport:
        d = env.details
        report = TeardownReport(family=self.family, environment_id=env.id)
        projects = [d["project"]] if d.get("project") else sorted(self._env_projects.get(ctx.drill_id, set()) | ({self.project} if self.project else set()))
        for project in projects:
            self._teardown_project(ctx, project, d, report)
        return report

    def _teardown_project(self, ctx: DrillContext, project: str, d: dict, report: TeardownReport) -> None:
        drill = ctx.drill_id
        label = label_value(drill)
        flt = f'(labels.{LABEL_DRILL_ID} = "{label}")'
        prefix = gcp_name(ctx) + "-"

        def record(kind: str, path: str, deleted: bool) -> None:
            (report.deleted if deleted else report.already_gone).append(f"{kind} {path}")

        # 1. instances, 2. disks: found by label across zones (a retried restore may have made
        # some the workflow never heard of).
        for service, kind, key in (("instances", "instance", "instance"), ("disks", "disk", "disk")):
            found = self._aggregated(project, service, flt)
            for zone, res in found:
                path = f"{project}/{zone}/{res.name}"
                if not owned_by(res, drill):
                    if res.name.startswith(prefix):  # named like ours, but not labelled ours
                        report.refused.append(f"{kind} {path}")
                    continue
                record(kind, path, self._delete(service, {"project": project, "zone": zone, key: res.name}, what=f"teardown: {kind} {path}"))
        # 3. firewall rules of the drill's network (and its deterministic names), 4. the
        # subnetwork, 5. the network.
        net_name = d.get("network") or gcp_name(ctx, suffix="net")
        network = self._get("networks", {"project": project, "network": net_name}, f"network {net_name}")
        network_link = network.self_link if network is not None else f"projects/{project}/global/networks/{net_name}"
        names = set(d.get("firewalls") or []) | {gcp_name(ctx, suffix=s) for s in ("deny-egress", "deny-ingress", "allow-ingress")}
        rules = {f.name: f for f in self._network_firewalls(project, network_link)} if network is not None else {}
        for n in sorted(names - set(rules)):
            fw = self._get("firewalls", {"project": project, "firewall": n}, f"firewall rule {n}")
            if fw is not None:
                rules[n] = fw
        blocked = False
        for n, fw in sorted(rules.items()):
            if not owned_by(fw, drill):
                report.refused.append(f"firewall {project}/{n}")
                blocked = blocked or link_tail(fw.network) == link_tail(network_link)
                continue
            record("firewall", f"{project}/{n}", self._delete("firewalls", {"project": project, "firewall": n}, what=f"teardown: firewall rule {n}"))
        subnets: dict[tuple[str, str], None] = {}
        if d.get("subnetwork") and d.get("region"):
            subnets[(d["region"], d["subnetwork"])] = None
        if network is not None:
            for link in network.subnetworks:
                p = link_parts(link)
                subnets[(p.get("regions", ""), p.get("subnetworks", ""))] = None
        for region, sname in subnets:
            sub = self._get("subnetworks", {"project": project, "region": region, "subnetwork": sname}, f"subnetwork {sname}")
            path = f"{project}/{region}/{sname}"
            if sub is None:
                report.already_gone.append(f"subnetwork {path}")
                continue
            if not owned_by(sub, drill):
                report.refused.append(f"subnetwork {path}")
                blocked = True
                continue
            record("subnetwork", path, self._delete("subnetworks", {"project": project, "region": region, "subnetwork": sname}, what=f"teardown: subnetwork {sname}"))
        if network is None:
            report.already_gone.append(f"network {project}/{net_name}")
        elif not owned_by(network, drill):
            report.refused.append(f"network {project}/{net_name}")
        elif blocked:
            report.errors.append(f"network {project}/{net_name} kept: it holds resources without this drill's label")
        else:
            record("network", f"{project}/{net_name}", self._delete("networks", {"project": project, "network": net_name}, what=f"teardown: network {net_name}"))

    def _aggregated(self, project: str, service: str, flt: str) -> list[tuple[str, Any]]:
        pairs = self._filtered_list(service, "aggregated_list", {"project": project, "filter": flt, "max_results": 500}, what=f"{service} labelled for drdrill in {project}")
        out = []
        for scope, scoped in pairs:
            for res in getattr(scoped, service):
                out.append((scope.split("/", 1)[-1], res))
        return out

    # ------------------------------------------------------------ orphans

    def list_orphans(self, now: datetime, active_drill_ids: set[str]) -> list[Orphan]:
        active = {label_value(a) for a in active_drill_ids}
        orphans: list[Orphan] = []

        def consider(kind: str, project: str, where: Optional[str], res: Any, details: dict) -> None:
            labels = labels_of(res)
            drill = labels.get(LABEL_DRILL_ID)
            if not drill:
                return
            expires = None
            try:
                expires = datetime.fromtimestamp(int(labels.get(LABEL_EXPIRES_AT, "")), tz=timezone.utc)
            except ValueError:
                pass
            if drill in active and (expires is None or expires > now):
                return
            orphans.append(Orphan(
                provider=self.family, id=f"{project}/{where + '/' if where else ''}{res.name}", kind=kind, drill_id=drill,
                expires_at=expires, region=where, details={"project": project, "name": res.name, **details},
            ))

        if not self.sweep_projects:
            raise ProviderError("GCP_NO_PROJECT", "no GCP project to sweep: set DRDRILL_GCP_SWEEP_PROJECTS or GOOGLE_CLOUD_PROJECT")
        flt = f"(labels.{LABEL_DRILL_ID}:*)"
        for project in self.sweep_projects:
            for zone, res in self._aggregated(project, "instances", flt):
                consider("instance", project, zone, res, {"zone": zone})
            for zone, res in self._aggregated(project, "disks", flt):
                consider("disk", project, zone, res, {"zone": zone})
            networks = [n for n in self._call("networks", "list", {"project": project, "max_results": 500}, what=f"networks in {project}") if labels_of(n)]
            for fw in self._call("firewalls", "list", {"project": project, "max_results": 500}, what=f"firewall rules in {project}"):
                consider("firewall", project, None, fw, {})
            for n in networks:
                for link in n.subnetworks:
                    p = link_parts(link)
                    sub = self._get("subnetworks", {"project": project, "region": p["regions"], "subnetwork": p["subnetworks"]}, f"subnetwork {p['subnetworks']}")
                    if sub is not None:
                        consider("subnetwork", project, p["regions"], sub, {"region": p["regions"]})
                consider("network", project, None, n, {})
        return orphans

    def delete_orphan(self, orphan: Orphan) -> str:
        d = orphan.details
        project, name = d["project"], d["name"]
        what = f"sweep: {orphan.kind} {orphan.id}"
        if orphan.kind in ("instance", "disk"):
            service, key = ("instances", "instance") if orphan.kind == "instance" else ("disks", "disk")
            req = {"project": project, "zone": d["zone"], key: name}
        elif orphan.kind == "subnetwork":
            service, req = "subnetworks", {"project": project, "region": d["region"], "subnetwork": name}
        elif orphan.kind == "firewall":
            service, req = "firewalls", {"project": project, "firewall": name}
        elif orphan.kind == "network":
            service, req = "networks", {"project": project, "network": name}
        else:
            raise ProviderError("BAD_ORPHAN", f"unknown GCP orphan kind {orphan.kind!r}")
        res = self._get(service, req, what)
        if res is None:
            return f"{orphan.kind} {orphan.id} already gone"
        if labels_of(res).get(LABEL_DRILL_ID) != orphan.drill_id:
            return f"refused: {orphan.kind} {orphan.id} no longer carries drill {orphan.drill_id}'s label"
        try:
            if orphan.kind == "network":
                # Its subnetworks (refused while an instance uses them) and firewall rules first,
                # when they carry the same drill's label, or the network's delete is refused.
                for link in res.subnetworks:
                    p = link_parts(link)
                    sub = self._get("subnetworks", {"project": project, "region": p["regions"], "subnetwork": p["subnetworks"]}, what)
                    if sub is not None and labels_of(sub).get(LABEL_DRILL_ID) == orphan.drill_id:
                        self._delete("subnetworks", {"project": project, "region": p["regions"], "subnetwork": sub.name}, what=f"{what}: subnetwork {sub.name}")
                for fw in self._network_firewalls(project, res.self_link):
                    if labels_of(fw).get(LABEL_DRILL_ID) == orphan.drill_id:
                        self._delete("firewalls", {"project": project, "firewall": fw.name}, what=f"{what}: firewall rule {fw.name}")
            deleted = self._delete(service, req, what=what)
        except ProviderError as exc:
            if "resourceInUse" in exc.message or "being used" in exc.message:
                raise ProviderError("ORPHAN_IN_USE", f"{what}: still in use, will be retried: {exc.message}", retryable=True) from exc
            raise
        return f"deleted {orphan.kind} {orphan.id}" if deleted else f"{orphan.kind} {orphan.id} already gone"


# ---------------------------------------------------------------- helpers


def _snapshot_meta(snap: Any, disk: dict) -> dict[str, Any]:
    return {
        "name": snap.name,
        "self_link": snap.self_link,
        "created": snap.creation_timestamp,
        "disk_size_gb": int(snap.disk_size_gb or 0),
        "source_disk": disk["source_disk"],
        "device_name": disk["device_name"],
        "boot": disk["boot"],
        "labels": dict(snap.labels),
    }


def _reason(exc: Any) -> str:
    for e in getattr(exc, "errors", None) or []:
        if isinstance(e, dict) and e.get("reason"):
            return str(e["reason"])
    return str(getattr(exc, "reason", "") or "")


def _classify(exc: Any) -> Optional[str]:
    """'rate' (429, 403 rate/quota), 'unavailable' (5xx) or None (not worth retrying here)."""
    code = getattr(exc, "code", None)
    reason = _reason(exc)
    if code == 429 or (code == 403 and reason in _RATE_REASONS):
        return "quota" if reason == "quotaExceeded" else "rate"
    if isinstance(code, int) and code >= 500:
        return "unavailable"
    return None


def _provider_error(exc: Any, what: str, kind: Optional[str]) -> ProviderError:
    code = getattr(exc, "code", None)
    reason = _reason(exc)
    message = getattr(exc, "message", None) or str(exc)
    text = f"{what}: {code} {reason + ' ' if reason else ''}{message}"
    if kind == "rate":
        return ProviderError("GCP_RATE_LIMITED", text + " (retries exhausted)", retryable=True)
    if kind == "quota":
        return ProviderError("GCP_QUOTA_EXCEEDED", text + " (retries exhausted)", retryable=True)
    if kind == "unavailable":
        return ProviderError("GCP_UNAVAILABLE", text, retryable=True)
    if code == 404:
        return ProviderError("SOURCE_NOT_FOUND", text)
    if code in (401, 403):
        return ProviderError("GCP_PERMISSION_DENIED", text)
    if code == 400 and reason == "resourceInUseByAnotherResource":
        return ProviderError("GCP_RESOURCE_IN_USE", text, retryable=True)
    if code == 400 and reason == "resourceNotReady":  # e.g. a dependency still being created
        return ProviderError("GCP_RESOURCE_NOT_READY", text, retryable=True)
    return ProviderError("GCP_REQUEST_FAILED", text)
