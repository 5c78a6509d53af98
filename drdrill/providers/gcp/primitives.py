"""The GCP provider's primitives: Compute clients, calls with retries, operations, and the
primitives of cleaning up (DELETE_ORDER, CONTAINERS, inventory, current_tags, delete) from which
the provider template builds teardown and the orphan sweep.

Every SDK call goes through `compute`: rate (429 rateLimitExceeded, 403 rateLimitExceeded /
userRateLimitExceeded), quota (403 quotaExceeded), 5xx and connection errors are retried with
exponential backoff and jitter, heartbeating; when they persist the ProviderError is retryable so
Temporal retries the activity. Every operation is awaited by `wait_operation`: polling
`operations.get` on the operation's own scope (zone, region or global) rather than
ExtendedOperation.result(), because the client library polls with the default endpoint, ignoring a
configured api_endpoint, and a blocking `operations.wait` (up to 2 minutes) would outlast the
activity heartbeat timeout. Both waits are `poll_until`'s, so each poll heartbeats.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any, Callable, Mapping, Optional

import google.auth
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import DefaultCredentialsError
from google.cloud import compute_v1
from requests import exceptions as rexc

from drdrill.core.models import Environment, Orphan
from drdrill.providers.base import NotReadyYet, Provider, ProviderError, Resource, poll_until
from drdrill.providers.gcp.labels import (
    LABEL_DRILL_ID,
    drdrill_tags,
    gcp_name,
    label_value,
    labels_of,
    link_parts,
    link_tail,
    names_of,
    owned_by,
)

COMPUTE_SCOPE = "https://www.googleapis.com/auth/compute"

_CLIENTS = {
    "snapshots": compute_v1.SnapshotsClient,
    "disks": compute_v1.DisksClient,
    "instances": compute_v1.InstancesClient,
    "networks": compute_v1.NetworksClient,
    "subnetworks": compute_v1.SubnetworksClient,
    "firewalls": compute_v1.FirewallsClient,
    "routes": compute_v1.RoutesClient,
    "zone_operations": compute_v1.ZoneOperationsClient,
    "region_operations": compute_v1.RegionOperationsClient,
    "global_operations": compute_v1.GlobalOperationsClient,
}

_RATE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded", "RATE_LIMIT_EXCEEDED"}
_RETRIED_CODES = {"GCP_RATE_LIMITED", "GCP_QUOTA_EXCEEDED", "GCP_UNAVAILABLE"}
_CAPACITY_CODES = {"ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "RESOURCE_POOL_EXHAUSTED"}
_RETRYABLE_OP_CODES = {"QUOTA_EXCEEDED", "RATE_LIMIT_EXCEEDED", "INTERNAL_ERROR", "SERVICE_UNAVAILABLE"}
_IN_USE_OP_CODES = {"RESOURCE_IN_USE_BY_ANOTHER_RESOURCE"}
_DONE = compute_v1.Operation.Status.DONE

# kind -> (service, the request's name field, its scope field: zone, region or none for global).
# A resource's id is "<project>/<zone or region>/<name>", or "<project>/<name>" for a global one.
KINDS: dict[str, tuple[str, str, Optional[str]]] = {
    "instance": ("instances", "instance", "zone"),
    "disk": ("disks", "disk", "zone"),
    "firewall": ("firewalls", "firewall", None),
    "subnetwork": ("subnetworks", "subnetwork", "region"),
    "network": ("networks", "network", None),
}
FIREWALL_SUFFIXES = ("deny-egress", "deny-ingress", "allow-ingress", "probe-inside-egress", "temporal-egress", "probe-inside-ingress")


def http_status(err: ProviderError) -> Optional[int]:
    """The HTTP status of the Compute API error a ProviderError was mapped from (None: not one)."""
    cause = err.__cause__
    return cause.code if isinstance(cause, gexc.GoogleAPICallError) else None


def request_for(kind: str, resource_id: str) -> tuple[str, dict[str, str]]:
    """The service and the get/delete request of the resource `kind` named by `resource_id`."""
    if kind not in KINDS:
        raise ProviderError("BAD_STATE", f"gcp: unknown resource kind {kind!r}")
    service, key, scope = KINDS[kind]
    parts = resource_id.split("/")
    if len(parts) != (3 if scope else 2) or not all(parts):
        raise ProviderError("BAD_STATE", f"gcp: {kind} id {resource_id!r} is not <project>/{'<' + scope + '>/' if scope else ''}<name>")
    request = {"project": parts[0], key: parts[-1]}
    if scope:
        request[scope] = parts[1]
    return service, request


class GcpPrimitives(Provider):
    """Clients, calls and operations, and the primitives of cleaning up (see the module docstring)."""

    family = "gcp"
    DELETE_ORDER = ("instance", "disk", "firewall", "subnetwork", "network")
    # A subnetwork holds instances, a network holds subnetworks and firewall rules: either is kept
    # while something in it is not provably this drill's.
    CONTAINERS = frozenset({"subnetwork", "network"})

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
        self.sleep = sleep
        # Projects an environment was (being) created in, per drill: teardown of a half-created
        # environment, whose details never reached the workflow, still finds them.
        self.env_projects: dict[str, set[str]] = {}

    @classmethod
    def from_environment(cls, env: Mapping[str, str], settings: Optional[dict] = None) -> "GcpPrimitives":
        settings = settings or {}
        credentials = settings.get("credentials")
        if credentials is None and env.get("DRDRILL_GCP_ANONYMOUS", "").lower() in ("1", "true", "yes"):
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

    # ------------------------------------------------------------ clients

    def client(self, name: str) -> Any:
        with self._lock:
            if name not in self._clients:
                if self.credentials is None:
                    self.credentials = self._default_credentials()
                options = ClientOptions(api_endpoint=self.api_endpoint) if self.api_endpoint else None
                self._clients[name] = _CLIENTS[name](credentials=self.credentials, transport="rest", client_options=options)
            return self._clients[name]

    @staticmethod
    def _default_credentials() -> Any:
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

    # ------------------------------------------------------------ calls

    def map_error(self, exc: Exception) -> Optional[ProviderError]:
        """A Compute API error as a ProviderError: rate, quota and 5xx retryable, 404 SOURCE_NOT_FOUND,
        401/403 GCP_PERMISSION_DENIED; an unreachable API GCP_UNAVAILABLE."""
        if isinstance(exc, (rexc.ConnectionError, rexc.Timeout)):
            return ProviderError("GCP_UNAVAILABLE", f"the Compute API could not be reached: {exc}", retryable=True)
        if not isinstance(exc, gexc.GoogleAPICallError):
            return None
        code, reason = exc.code, _reason(exc)
        text = f"{code} {reason + ' ' if reason else ''}{exc.message or exc}"
        if code == 429 or (code == 403 and reason in _RATE_REASONS):
            return ProviderError("GCP_QUOTA_EXCEEDED" if reason == "quotaExceeded" else "GCP_RATE_LIMITED", text, retryable=True)
        if isinstance(code, int) and code >= 500:
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

    def compute(self, service: str, method: str, request: dict, *, what: str) -> Any:
        """One API call, retried with backoff (heartbeating) on rate, quota, 5xx and connection
        errors; lists are read whole. Failures are ProviderErrors whose message starts with `what`
        (`http_status(err)` tells a 404 or 409 from the rest)."""
        fn = getattr(self.client(service), method)
        attempts = 0

        def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            try:
                return self.call(_invoke, fn, method, request, self.request_timeout)
            except ProviderError as err:
                if err.code in _RETRIED_CODES and attempts < self.max_attempts:
                    raise NotReadyYet(err.message) from None
                exhausted = " (retries exhausted)" if err.code in ("GCP_RATE_LIMITED", "GCP_QUOTA_EXCEEDED") else ""
                raise ProviderError(err.code, f"{what}: {err.message}{exhausted}", retryable=err.retryable) from err.__cause__

        # The budget outlasts every attempt's backoff and request: attempts run out first.
        budget = self.max_attempts * (self.backoff_max + 2 * self.request_timeout)
        try:
            return poll_until(attempt, timeout=budget, what=f"{what} (retrying)", initial=self.backoff_initial,
                              maximum=self.backoff_max, factor=2.0, sleep=self.sleep)
        except ProviderError as err:
            if err.code != "READY_TIMEOUT":
                raise
            raise ProviderError("GCP_UNAVAILABLE", f"{what}: {err.message}", retryable=True) from None

    def filtered_list(self, service: str, method: str, request: dict, *, what: str) -> list:
        """A list with a server-side label filter; should the API refuse the filter expression,
        the whole list is read instead (every caller filters again client-side)."""
        try:
            return self.compute(service, method, request, what=what)
        except ProviderError as exc:
            if "filter" not in request or exc.code != "GCP_REQUEST_FAILED" or "filter" not in exc.message.lower():
                raise
        unfiltered = {k: v for k, v in request.items() if k != "filter"}
        return self.compute(service, method, unfiltered, what=what + " (unfiltered)")

    def get_resource(self, service: str, request: dict, what: str) -> Any:
        """GET a resource; None when it does not exist."""
        try:
            return self.compute(service, "get", request, what=what)
        except ProviderError as err:
            if http_status(err) == 404:
                return None
            raise

    def wait_operation(self, op: Any, what: str) -> Any:
        """Poll the operation on its own scope until DONE (heartbeating each poll); raise its error."""
        project = link_parts(op.self_link).get("projects", "") if op.self_link else ""
        if op.zone:
            service, scope = "zone_operations", {"zone": link_parts(op.zone).get("zones", op.zone.rsplit("/", 1)[-1])}
        elif op.region:
            service, scope = "region_operations", {"region": link_parts(op.region).get("regions", op.region.rsplit("/", 1)[-1])}
        else:
            service, scope = "global_operations", {}
        request = {"project": project, "operation": op.name, **scope}
        polled = False

        def probe() -> Any:
            nonlocal op, polled
            if polled:
                op = self.compute(service, "get", request, what=f"{what} (operation {op.name})")
            polled = True
            if op.status != _DONE:
                raise NotReadyYet(f"operation {op.name} is {getattr(op.status, 'name', op.status)}")
            return op

        try:
            done = poll_until(probe, timeout=self.operation_timeout, what=what, initial=self.poll_initial,
                              maximum=self.poll_max, sleep=self.sleep)
        except ProviderError as err:
            if err.code != "READY_TIMEOUT":
                raise
            raise ProviderError("GCP_OPERATION_TIMEOUT", f"{what}: {err.message}", retryable=True) from None
        return _operation_result(done, what)

    def create_resource(self, service: str, request: dict, *, what: str, get_request: dict, drill_id: str) -> Any:
        """Create idempotently: insert and await; on 409 get the existing one (must be this drill's)."""
        try:
            self.wait_operation(self.compute(service, "insert_unary", request, what=what), what)
        except ProviderError as err:
            if http_status(err) != 409:
                raise
        resource = self.get_resource(service, get_request, what)
        if resource is None:
            raise ProviderError("GCP_OPERATION_FAILED", f"{what}: the resource is missing after its creation finished", retryable=True)
        if not owned_by(resource, drill_id):
            raise ProviderError("NAME_TAKEN", f"{what}: {resource.self_link} exists but was not created by drill {drill_id}; left alone")
        return resource

    def delete_resource(self, service: str, request: dict, *, what: str) -> bool:
        """Delete and await. True when deleted, False when it was already gone (404)."""
        try:
            op = self.compute(service, "delete_unary", request, what=what)
        except ProviderError as err:
            if http_status(err) == 404:
                return False
            raise
        try:
            self.wait_operation(op, what)
        except ProviderError as exc:
            if "RESOURCE_NOT_FOUND" in exc.message or "notFound" in exc.message:
                return False
            raise
        return True

    def aggregated(self, project: str, service: str, flt: str) -> list[tuple[str, Any]]:
        """(zone, resource) for every resource of `service` matching the label filter, all zones."""
        pairs = self.filtered_list(service, "aggregated_list", {"project": project, "filter": flt, "max_results": 500}, what=f"{service} labelled for drdrill in {project}")
        return [(scope.split("/", 1)[-1], res) for scope, scoped in pairs for res in getattr(scoped, service)]

    def network_firewalls(self, project: str, network_link: str) -> list[Any]:
        tail = link_tail(network_link)
        return [f for f in self.compute("firewalls", "list", {"project": project, "max_results": 500}, what=f"firewall rules of {tail}") if link_tail(f.network) == tail]

    # ------------------------------------------------------------ primitives of cleaning up

    def _projects(self, drill_id: Optional[str], env: Optional[Environment]) -> list[str]:
        """Where to look: the environment's project; for a drill whose environment never reported
        one, every project it was being created in and the default; for a sweep, the sweep projects."""
        if env is not None and env.details.get("project"):
            return [env.details["project"]]
        if drill_id:
            return sorted(self.env_projects.get(drill_id, set()) | ({self.project} if self.project else set()))
        if not self.sweep_projects:
            raise ProviderError("GCP_NO_PROJECT", "no GCP project to sweep: set DRDRILL_GCP_SWEEP_PROJECTS or GOOGLE_CLOUD_PROJECT")
        return list(self.sweep_projects)

    def inventory(self, drill_id: Optional[str] = None, env: Optional[Environment] = None) -> list[Resource]:
        """Instances and disks found by label in every zone; networks, their subnetworks and
        firewall rules found by the marker in their description. Tags in drdrill's form."""
        flt = f'(labels.{LABEL_DRILL_ID} = "{label_value(drill_id)}")' if drill_id else f"(labels.{LABEL_DRILL_ID}:*)"
        found: list[Resource] = []
        for project in self._projects(drill_id, env):
            for kind, service in (("instance", "instances"), ("disk", "disks")):
                found += [_resource(kind, project, zone, r, drill_id) for zone, r in self.aggregated(project, service, flt) if owned_by(r, drill_id)]
            networks = self.compute("networks", "list", {"project": project, "max_results": 500}, what=f"networks in {project}")
            for network in (n for n in networks if owned_by(n, drill_id)):
                found.append(_resource("network", project, None, network, drill_id))
                for link in network.subnetworks:
                    p = link_parts(link)
                    sub = self.get_resource("subnetworks", {"project": project, "region": p["regions"], "subnetwork": p["subnetworks"]}, f"subnetwork {p['subnetworks']}")
                    if sub is not None and owned_by(sub, drill_id):
                        found.append(_resource("subnetwork", project, p["regions"], sub, drill_id))
            firewalls = self.compute("firewalls", "list", {"project": project, "max_results": 500}, what=f"firewall rules in {project}")
            found += [_resource("firewall", project, None, f, drill_id) for f in firewalls if owned_by(f, drill_id)]
        return found

    def named_resources(self, env: Environment) -> list[Resource]:
        """The drill's network (by the environment's record, or its deterministic name), every
        subnetwork and firewall rule in it, and the firewall rules the drill names: whatever of
        these lacks the drill's marker is refused, and keeps the network."""
        d, hint = env.details, {"drill_id": env.drill_id}
        names = names_of(env.drill_id)
        out: list[Resource] = []
        for project in self._projects(env.drill_id, env):
            net_name = d.get("network") or gcp_name(names, suffix="net")
            subnets = {(d["region"], d["subnetwork"])} if d.get("region") and d.get("subnetwork") else set()
            firewalls = set(d.get("firewalls") or [gcp_name(names, suffix=s) for s in FIREWALL_SUFFIXES])
            network = self.get_resource("networks", {"project": project, "network": net_name}, f"network {net_name}")
            if network is not None:
                subnets |= {(link_parts(s).get("regions", ""), link_parts(s).get("subnetworks", "")) for s in network.subnetworks}
                firewalls |= {f.name for f in self.network_firewalls(project, network.self_link)}
            out.append(Resource("network", f"{project}/{net_name}", extra=hint))
            out += [Resource("subnetwork", f"{project}/{region}/{name}", scope=region, extra=hint) for region, name in sorted(subnets)]
            out += [Resource("firewall", f"{project}/{name}", extra=hint) for name in sorted(firewalls)]
        return out

    def current_tags(self, resource: Resource) -> Optional[dict[str, str]]:
        service, request = request_for(resource.kind, resource.id)
        found = self.get_resource(service, request, resource.label)
        return None if found is None else drdrill_tags(labels_of(found), resource.extra.get("drill_id"))

    def delete(self, resource: Resource) -> bool:
        service, request = request_for(resource.kind, resource.id)
        return self.delete_resource(service, request, what=f"delete {resource.label}")

    def list_orphans(self, now: datetime, active_drill_ids: set[str]) -> list[Orphan]:
        """The template's listing, with the running drills' ids in the form GCP labels hold them
        (`label_value`: 'Q4-Orders' is labelled 'q4-orders'), so a running drill is recognised."""
        return super().list_orphans(now, {label_value(d) for d in active_drill_ids})


def _invoke(fn: Callable[..., Any], method: str, request: dict, timeout: float) -> Any:
    result = fn(request=request, retry=None, timeout=timeout)
    return list(result) if method in ("list", "aggregated_list") else result  # follows nextPageToken


def _resource(kind: str, project: str, where: Optional[str], found: Any, drill_id: Optional[str]) -> Resource:
    return Resource(
        kind,
        f"{project}/{where + '/' if where else ''}{found.name}",
        tags=drdrill_tags(labels_of(found), drill_id),
        scope=where,
        state=str(getattr(found, "status", "") or ""),
        extra={"drill_id": drill_id} if drill_id else {},
    )


def _operation_result(op: Any, what: str) -> Any:
    """The finished operation, or the ProviderError its errors stand for."""
    errors = list(op.error.errors) if op.error and op.error.errors else []
    if not errors:
        return op
    codes = {e.code for e in errors}
    message = "; ".join(f"{e.code}: {e.message}" for e in errors)
    if codes & _CAPACITY_CODES:
        raise ProviderError("GCP_CAPACITY_UNAVAILABLE", f"{what} failed: {message}")
    if codes & _IN_USE_OP_CODES:
        raise ProviderError("GCP_RESOURCE_IN_USE", f"{what} failed: {message}", retryable=True)
    raise ProviderError("GCP_OPERATION_FAILED", f"{what} failed: {message}", retryable=bool(codes & _RETRYABLE_OP_CODES))


def _reason(exc: Any) -> str:
    for e in getattr(exc, "errors", None) or []:
        if isinstance(e, dict) and e.get("reason"):
            return str(e["reason"])
    return str(getattr(exc, "reason", "") or "")
