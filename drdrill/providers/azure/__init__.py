"""Azure provider: managed-disk snapshots restored to disks (azure.disk) and to VMs (azure.vm).

One resource group per drill (`drdrill-<drill id>`, tagged) holds everything the drill creates:
a VNet with one subnet and no peering or gateway, an NSG that denies all outbound traffic and
admits inbound traffic only from `isolation.allow_ingress_from`, the restored disks, NICs (no
public IP) and VMs. Teardown is one resource-group deletion, refused for a group without this
drill's tag.

The clients are the real azure-mgmt-* SDK clients (synchronous; activities run in a thread pool).
Bodies are sent and read in ARM's wire JSON (the SDK's models are mappings over it), so the
REST contract is exactly what this module writes. Every REST operation used:

  GET    /subscriptions/{s}/providers/Microsoft.Compute/snapshots                            2026-03-02
  GET    /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{vm}     2026-04-01
  GET|PUT /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{disk}   2026-03-02
  GET|PUT /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{vm}  2026-04-01
  GET    /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{vm}/instanceView  2026-04-01
  GET|PUT /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Network/networkSecurityGroups/{nsg}  2026-03-01
  GET|PUT /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworks/{vnet}      2026-03-01
  GET    /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworks/{vnet}/subnets/{subnet}  2026-03-01
  GET|PUT /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Network/networkInterfaces/{nic}     2026-03-01
  GET|PUT|DELETE /subscriptions/{s}/resourcegroups/{rg}                                     2025-04-01
  GET    /subscriptions/{s}/resourcegroups?$filter=tagName eq 'drdrill:drill-id'             2025-04-01
  GET    /subscriptions/{s}/resourcegroups/{rg}/resources                                    2025-04-01
  and the long-running-operation monitors the responses point at (Azure-AsyncOperation /
  Location): .../providers/Microsoft.{Compute,Network}/locations/{l}/operations/{id} and
  /subscriptions/{s}/operationresults/{id}.

deploy/azure/role.json is the least-privilege custom role for exactly these.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Optional

from drdrill.core.models import (
    TAG_DRILL_ID,
    TAG_EXPIRES_AT,
    DrillContext,
    Environment,
    IsolationCheck,
    IsolationProof,
    Orphan,
    RecoveryPoint,
    RestoredResource,
    TeardownReport,
)
from drdrill.providers.base import NotReadyYet, Provider, ProviderError, heartbeat, poll_until, require_drill_tag, select_for_target

log = logging.getLogger("drdrill.azure")

PUBLIC_ARM = "https://management.azure.com"
VNET_NAME = "isolated-vnet"
SUBNET_NAME = "isolated"
NSG_NAME = "isolated-nsg"
DENY_PRIORITY = 4096  # the lowest custom priority; Azure's own allow-rules (65000+) come after it
# Resource types that would give the drill's network a way out (or in) if they appeared in its group.
FORBIDDEN_TYPES = {
    "microsoft.network/publicipaddresses",
    "microsoft.network/virtualnetworkgateways",
    "microsoft.network/natgateways",
    "microsoft.network/azurefirewalls",
    "microsoft.network/bastionhosts",
    "microsoft.network/loadbalancers",
    "microsoft.network/applicationgateways",
    "microsoft.network/vpngateways",
    "microsoft.network/privateendpoints",
    "microsoft.network/routetables",
}
GATEWAY_SUBNETS = {"gatewaysubnet", "azurefirewallsubnet", "azurebastionsubnet", "routeserversubnet"}
# Azure error codes worth another attempt (capacity, internal errors, contention).
RETRYABLE_CODES = {
    "internalservererror",
    "internalexecutionerror",
    "internaloperationerror",
    "allocationfailed",
    "zonalallocationfailed",
    "overconstrainedallocationrequest",
    "overconstrainedzonalallocationrequest",
    "retryableerror",
    "retryableerrorduetoanotheroperation",
    "anotheroperationinprogress",
    "conflict",
    "operationpreempted",
    "toomanyrequests",
    "gatewaytimeout",
    "serviceunavailable",
    "networkinginternaloperationerror",
    "resourcegroupbeingdeleted",
}

_ID_RE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/(?P<ns>[^/]+)/(?P<type>[^/]+)/(?P<name>[^/]+)$",
    re.IGNORECASE,
)


def parse_id(arm_id: str, expected_type: Optional[str] = None) -> dict[str, str]:
    """Split an ARM resource id; ProviderError(BAD_TARGET) when it is not one (of `expected_type`)."""
    m = _ID_RE.match((arm_id or "").strip())
    if not m:
        raise ProviderError("BAD_TARGET", f"{arm_id!r} is not an ARM resource id (/subscriptions/…/resourceGroups/…/providers/…)")
    d = m.groupdict()
    full_type = f"{d['ns']}/{d['type']}"
    if expected_type and full_type.lower() != expected_type.lower():
        raise ProviderError("BAD_TARGET", f"{arm_id!r} is a {full_type}, not a {expected_type}")
    return d


def _parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    text = str(value).replace("Z", "+00:00")
    # ARM writes 7 fractional digits; Python reads at most 6.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _j(model: Any) -> dict:
    """The wire JSON of an SDK model (they are mappings over it)."""
    if model is None:
        return {}
    if hasattr(model, "as_dict"):
        try:
            return model.as_dict()  # type: ignore[no-any-return]
        except TypeError:
            pass
    return dict(model)


def _props(d: Mapping) -> dict:
    return dict(d.get("properties") or {})


# ---------------------------------------------------------------- SDK plumbing


def _heartbeating_sleep(seconds: float, what: str) -> None:
    """Sleep `seconds` in short slices, heartbeating, so a long Retry-After never looks like a dead worker."""
    deadline = time.monotonic() + max(0.0, seconds)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        heartbeat({"waiting_for": what, "seconds_left": round(remaining, 1)})
        time.sleep(min(remaining, 5.0))


def _retry_policy_class():
    from azure.core.pipeline.policies import RetryPolicy

    class HeartbeatingRetryPolicy(RetryPolicy):
        """azure-core's retry policy (429/408/5xx, honouring Retry-After), heartbeating while it waits."""

        def _sleep_for_retry(self, response, transport):  # type: ignore[override]
            retry_after = self.get_retry_after(response)
            if retry_after:
                log.info("Azure asked to retry after %.1fs (HTTP %s)", retry_after, response.http_response.status_code)
                _heartbeating_sleep(retry_after, "Azure Retry-After")
                return True
            return False

        def _sleep_backoff(self, settings, transport):  # type: ignore[override]
            backoff = self.get_backoff_time(settings)
            if backoff > 0:
                _heartbeating_sleep(backoff, "Azure retry backoff")

    return HeartbeatingRetryPolicy


class _Clients:
    def __init__(self, resource: Any, compute: Any, network: Any):
        self.resource, self.compute, self.network = resource, compute, network

    def close(self) -> None:
        for c in (self.resource, self.compute, self.network):
            try:
                c.close()
            except Exception:  # pragma: no cover - best effort
                pass


def _error_of(exc: Exception) -> ProviderError:
    """Map an azure-core exception to a ProviderError with a stable code and the right retryability."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, ClientAuthenticationError):
        return ProviderError("AZURE_AUTH", f"Azure refused the credentials: {exc.message}")
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        code = (exc.error.code if exc.error is not None else None) or ""
        msg = (exc.error.message if exc.error is not None else None) or exc.message
        text = f"{code}: {msg}" if code else str(msg)
        if status in (200, 201, 202, 204):  # a long-running operation that ended Failed/Canceled
            return ProviderError("AZURE_OPERATION_FAILED", f"Azure operation failed: {text}", retryable=code.lower() in RETRYABLE_CODES)
        if status == 429:
            return ProviderError("AZURE_THROTTLED", f"Azure kept throttling the requests: {text}", retryable=True)
        if status == 403:
            return ProviderError("AZURE_FORBIDDEN", f"Azure denied the operation (is deploy/azure/role.json assigned?): {text}")
        if status == 401:
            return ProviderError("AZURE_AUTH", f"Azure refused the credentials: {text}")
        if status == 404:
            return ProviderError("AZURE_NOT_FOUND", text)
        if status in (408, 409) or status >= 500 or code.lower() in RETRYABLE_CODES:
            return ProviderError("AZURE_ERROR", f"Azure answered {status}: {text}", retryable=True)
        return ProviderError("AZURE_BAD_REQUEST", f"Azure rejected the request ({status}): {text}")
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return ProviderError("AZURE_UNREACHABLE", f"Azure could not be reached: {exc}", retryable=True)
    return ProviderError("AZURE_ERROR", f"{type(exc).__name__}: {exc}", retryable=True)


def _is_not_found(exc: Exception) -> bool:
    from azure.core.exceptions import ResourceNotFoundError

    return isinstance(exc, ResourceNotFoundError) or getattr(exc, "status_code", None) == 404


# ---------------------------------------------------------------- the provider


class AzureProvider(Provider):
    family = "azure"

    def __init__(
        self,
        credential: Any,
        *,
        subscription_id: Optional[str] = None,
        endpoint: str = PUBLIC_ARM,
        location: Optional[str] = None,
        credential_scopes: Optional[list[str]] = None,
        connection_verify: Any = True,
        polling_interval: float = 10.0,
        operation_timeout: float = 3600.0,
        retry_total: int = 10,
        ready_poll_initial: float = 2.0,
        ready_poll_max: float = 15.0,
        client_factory: Optional[Callable[[str], _Clients]] = None,
    ):
        self.credential = credential
        self.subscription_id = subscription_id
        self.endpoint = endpoint.rstrip("/")
        self.location = location
        self.credential_scopes = credential_scopes or [f"{self.endpoint}/.default" if self.endpoint != PUBLIC_ARM else f"{PUBLIC_ARM}/.default"]
        self.connection_verify = connection_verify
        self.polling_interval = polling_interval
        self.operation_timeout = operation_timeout
        self.retry_total = retry_total
        self.ready_poll_initial = ready_poll_initial
        self.ready_poll_max = ready_poll_max
        self._client_factory = client_factory
        self._clients_by_sub: dict[str, _Clients] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, env: Mapping[str, str], settings: dict) -> "AzureProvider":
        """Credentials from DefaultAzureCredential (environment, workload identity, managed identity, az login).

        AZURE_SUBSCRIPTION_ID: default subscription (drills may name another in isolation.azure_subscription_id);
        DRDRILL_AZURE_ARM_ENDPOINT: the ARM endpoint (sovereign clouds, Azure Stack; default the public cloud);
        DRDRILL_AZURE_CREDENTIAL_SCOPE: token scope (default <endpoint>/.default);
        DRDRILL_AZURE_LOCATION: default region for drill resource groups;
        DRDRILL_AZURE_CA_BUNDLE: a CA bundle for an endpoint behind a private CA;
        DRDRILL_AZURE_POLLING_INTERVAL: seconds between polls of a long-running operation (default 10).
        """
        try:
            from azure.identity import DefaultAzureCredential
        except ImportError as exc:  # pragma: no cover - dependency missing
            raise ProviderError("PROVIDER_UNAVAILABLE", f"azure-identity is not installed: {exc}") from exc
        endpoint = settings.get("endpoint") or env.get("DRDRILL_AZURE_ARM_ENDPOINT") or PUBLIC_ARM
        scope = settings.get("credential_scope") or env.get("DRDRILL_AZURE_CREDENTIAL_SCOPE")
        return cls(
            DefaultAzureCredential(),
            subscription_id=settings.get("subscription_id") or env.get("AZURE_SUBSCRIPTION_ID"),
            endpoint=endpoint,
            location=settings.get("location") or env.get("DRDRILL_AZURE_LOCATION"),
            credential_scopes=[scope] if scope else None,
            connection_verify=settings.get("ca_bundle") or env.get("DRDRILL_AZURE_CA_BUNDLE") or True,
            polling_interval=float(settings.get("polling_interval") or env.get("DRDRILL_AZURE_POLLING_INTERVAL") or 10.0),
        )

    # ------------------------------------------------------------ clients

    def clients(self, subscription_id: Optional[str] = None) -> _Clients:
        sub = subscription_id or self.subscription_id
        if not sub:
            raise ProviderError(
                "AZURE_NO_SUBSCRIPTION", "no Azure subscription: set AZURE_SUBSCRIPTION_ID or isolation.azure_subscription_id"
            )
        with self._lock:
            if sub not in self._clients_by_sub:
                self._clients_by_sub[sub] = self._client_factory(sub) if self._client_factory else self._make_clients(sub)
            return self._clients_by_sub[sub]

    def _make_clients(self, sub: str) -> _Clients:
        from azure.mgmt.compute import ComputeManagementClient
        from azure.mgmt.network import NetworkManagementClient
        from azure.mgmt.resource.resources import ResourceManagementClient

        retry_cls = _retry_policy_class()

        def kw() -> dict:
            return dict(
                base_url=self.endpoint,
                credential_scopes=self.credential_scopes,
                polling_interval=self.polling_interval,
                connection_verify=self.connection_verify,
                retry_policy=retry_cls(retry_total=self.retry_total),
                user_agent="drdrill",
            )

        return _Clients(
            ResourceManagementClient(self.credential, sub, **kw()),
            ComputeManagementClient(self.credential, sub, **kw()),
            NetworkManagementClient(self.credential, sub, **kw()),
        )

    def close(self) -> None:
        with self._lock:
            for c in self._clients_by_sub.values():
                c.close()
            self._clients_by_sub.clear()

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - mapped to a typed ProviderError
            raise self._mapped(what, exc) from exc

    def _get_or_none(self, what: str, fn: Callable[[], Any]) -> Optional[dict]:
        try:
            return _j(fn())
        except Exception as exc:  # noqa: BLE001
            if _is_not_found(exc):
                return None
            raise self._mapped(what, exc) from exc

    def _mapped(self, what: str, exc: Exception) -> ProviderError:
        err = _error_of(exc)
        err.message = f"{what}: {err.message}"
        err.args = (err.message,)
        return err

    def _wait(self, poller: Any, what: str, timeout: Optional[float] = None) -> Any:
        """Await a begin_* poller, heartbeating; the operation's failure becomes a ProviderError."""
        deadline = time.monotonic() + (timeout or self.operation_timeout)
        try:
            while not poller.done():
                heartbeat({"waiting_for": what, "status": str(poller.status())})
                if time.monotonic() > deadline:
                    raise ProviderError("AZURE_TIMEOUT", f"{what} did not finish within {timeout or self.operation_timeout:.0f}s", retryable=True)
                poller.wait(timeout=min(5.0, max(0.05, self.polling_interval)))
            return poller.result()
        except ProviderError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._mapped(what, exc) from exc

    # ------------------------------------------------------------ recovery points

    def _snapshots_of(self, sub: str, disk_ids: list[str], tags: dict[str, str]) -> dict[str, list[dict]]:
        """Succeeded snapshots per source disk id (lower-cased), carrying every tag in `tags`."""
        wanted = {d.lower(): [] for d in disk_ids}  # type: dict[str, list[dict]]
        c = self.clients(sub)

        def listing() -> list[dict]:
            out = []
            for i, s in enumerate(c.compute.snapshots.list()):
                if i % 50 == 0:
                    heartbeat({"listing": "snapshots", "seen": i})
                out.append(_j(s))
            return out

        for snap in self._call("listing snapshots", listing):
            p = _props(snap)
            src = ((p.get("creationData") or {}).get("sourceResourceId") or "").lower()
            if src not in wanted or (p.get("provisioningState") or "").lower() != "succeeded" or not p.get("timeCreated"):
                continue
            snap_tags = snap.get("tags") or {}
            if any(snap_tags.get(k) != v for k, v in tags.items()):
                continue
            wanted[src].append(snap)
        return wanted

    @staticmethod
    def _snapshot_meta(snap: dict) -> dict:
        p = _props(snap)
        return {
            "snapshot_id": snap["id"],
            "name": snap.get("name"),
            "location": snap.get("location"),
            "time_created": p.get("timeCreated"),
            "disk_size_gb": p.get("diskSizeGB"),
            "sku": (snap.get("sku") or {}).get("name"),
            "incremental": p.get("incremental"),
            "os_type": p.get("osType"),
            "hyper_v_generation": p.get("hyperVGeneration"),
            "source_disk_id": (p.get("creationData") or {}).get("sourceResourceId"),
        }

    @staticmethod
    def _size(snap: dict) -> Optional[int]:
        p = _props(snap)
        if p.get("diskSizeBytes"):
            return int(p["diskSizeBytes"])
        if p.get("diskSizeGB"):
            return int(p["diskSizeGB"]) << 30
        return None

    def find_recovery_point(self, ctx: DrillContext, target: Any) -> RecoveryPoint:
        src = target.source
        if target.provider == "azure.disk":
            d = parse_id(src.disk_id, "Microsoft.Compute/disks")
            snaps = self._snapshots_of(d["sub"], [src.disk_id], src.snapshot_tags)[src.disk_id.lower()]
            points = [
                RecoveryPoint(
                    target=target.name,
                    provider=target.provider,
                    id=s["id"],
                    consistent_time=_parse_time(_props(s)["timeCreated"]),
                    size_bytes=self._size(s),
                    metadata=self._snapshot_meta(s),
                )
                for s in snaps
            ]
            where = f"no snapshot of disk {src.disk_id}" + (f" tagged {src.snapshot_tags}" if src.snapshot_tags else "")
        elif target.provider == "azure.vm":
            points, where = self._vm_points(ctx, target)
        else:
            raise ProviderError("BAD_TARGET", f"the Azure provider does not restore {target.provider}")
        if not points:
            raise ProviderError("RECOVERY_POINT_NOT_FOUND", f"target {target.name}: {where}")
        return select_for_target(points, ctx, target)

    def _vm_points(self, ctx: DrillContext, target: Any) -> tuple[list[RecoveryPoint], str]:
        src = target.source
        v = parse_id(src.vm_id, "Microsoft.Compute/virtualMachines")
        c = self.clients(v["sub"])
        vm = self._get_or_none("reading the source VM", lambda: c.compute.virtual_machines.get(v["rg"], v["name"]))
        if vm is None:
            raise ProviderError(
                "AZURE_SOURCE_NOT_FOUND",
                f"target {target.name}: the source VM {src.vm_id} was not found, so its disks (and their snapshots) cannot be identified",
            )
        storage = _props(vm).get("storageProfile") or {}
        os_disk = ((storage.get("osDisk") or {}).get("managedDisk") or {}).get("id")
        if not os_disk:
            raise ProviderError("BAD_TARGET", f"target {target.name}: VM {src.vm_id} has no managed OS disk")
        data = [(int(dd["lun"]), dd["managedDisk"]["id"]) for dd in storage.get("dataDisks") or [] if (dd.get("managedDisk") or {}).get("id")]
        snaps = self._snapshots_of(v["sub"], [os_disk] + [d for _, d in data], src.snapshot_tags)
        window = src.snapshot_group_window
        points = []
        for os_snap in snaps[os_disk.lower()]:
            t = _parse_time(_props(os_snap)["timeCreated"])
            parts = []
            for lun, disk_id in data:
                near = [s for s in snaps[disk_id.lower()] if abs(_parse_time(_props(s)["timeCreated"]) - t) <= window]
                if not near:
                    break
                best = min(near, key=lambda s: abs(_parse_time(_props(s)["timeCreated"]) - t))
                parts.append((lun, best))
            else:
                times = [t] + [_parse_time(_props(s)["timeCreated"]) for _, s in parts]
                sizes = [self._size(os_snap)] + [self._size(s) for _, s in parts]
                points.append(
                    RecoveryPoint(
                        target=target.name,
                        provider=target.provider,
                        id=os_snap["id"],
                        # The VM is only as recent as its oldest disk snapshot.
                        consistent_time=min(times),
                        size_bytes=sum(s for s in sizes if s) or None,
                        metadata={
                            "vm_id": src.vm_id,
                            "vm_size": _props(vm).get("hardwareProfile", {}).get("vmSize"),
                            "os_type": _props(os_snap).get("osType") or (storage.get("osDisk") or {}).get("osType"),
                            "os": self._snapshot_meta(os_snap),
                            "data": [dict(self._snapshot_meta(s), lun=lun) for lun, s in parts],
                            "spread_seconds": (max(times) - min(times)).total_seconds(),
                        },
                    )
                )
        where = (
            f"no complete set of snapshots of VM {src.vm_id} (OS disk and {len(data)} data disk(s) within "
            f"{window} of each other)" + (f" tagged {src.snapshot_tags}" if src.snapshot_tags else "")
        )
        return points, where

    # ------------------------------------------------------------ isolation

    def _env_coords(self, ctx: DrillContext, env: Environment) -> tuple[str, str]:
        sub = env.details.get("subscription_id") or self.subscription_id
        rg = env.details.get("resource_group") or env.id or ctx.resource_name()
        return sub, rg

    def create_isolation(self, ctx: DrillContext, isolation: Any, targets: list[Any]) -> Environment:
        sub = isolation.azure_subscription_id or self.subscription_id
        c = self.clients(sub)
        location = isolation.azure_location or self.location or self._source_location(targets)
        try:
            network = ipaddress.ip_network(isolation.network_cidr, strict=False)
        except ValueError as exc:
            raise ProviderError("BAD_ISOLATION", f"isolation.network_cidr {isolation.network_cidr!r}: {exc}") from None
        subnet_prefix = next(network.subnets(new_prefix=24)) if network.prefixlen < 24 else network
        allowed = []
        for entry in isolation.allow_ingress_from:
            try:
                net = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ProviderError(
                    "BAD_ISOLATION", f"isolation.allow_ingress_from {entry!r}: the Azure provider takes CIDRs (e.g. 10.0.5.0/24)"
                ) from None
            if net.prefixlen == 0:
                raise ProviderError("BAD_ISOLATION", f"isolation.allow_ingress_from {entry!r} would admit the whole internet")
            allowed.append(str(net))
        rg = ctx.resource_name()
        tags = ctx.tags()

        existing = self._get_or_none("reading the drill's resource group", lambda: c.resource.resource_groups.get(rg))
        if existing is not None and not require_drill_tag(existing.get("tags"), ctx.drill_id):
            raise ProviderError("AZURE_NAME_TAKEN", f"resource group {rg} exists and was not created by this drill; not touching it")
        group = _j(self._call("creating the drill's resource group", lambda: c.resource.resource_groups.create_or_update(rg, {"location": location, "tags": tags})))
        heartbeat({"created": group.get("id")})

        rules = [
            {
                "name": f"allow-validation-{i}",
                "properties": {
                    "priority": 100 + i,
                    "direction": "Inbound",
                    "access": "Allow",
                    "protocol": "*",
                    "sourceAddressPrefix": cidr,
                    "sourcePortRange": "*",
                    "destinationAddressPrefix": "*",
                    "destinationPortRange": "*",
                    "description": "drdrill: validation traffic from the source the drill names",
                },
            }
            for i, cidr in enumerate(allowed)
        ]
        for direction in ("Inbound", "Outbound"):
            rules.append(
                {
                    "name": f"deny-all-{direction.lower()}",
                    "properties": {
                        "priority": DENY_PRIORITY,
                        "direction": direction,
                        "access": "Deny",
                        "protocol": "*",
                        "sourceAddressPrefix": "*",
                        "sourcePortRange": "*",
                        "destinationAddressPrefix": "*",
                        "destinationPortRange": "*",
                        "description": "drdrill: no route to or from production",
                    },
                }
            )
        nsg = self._wait(
            self._call(
                "creating the drill's NSG",
                lambda: c.network.network_security_groups.begin_create_or_update(
                    rg, NSG_NAME, {"location": location, "tags": tags, "properties": {"securityRules": rules}}
                ),
            ),
            "creating the drill's NSG",
        )
        nsg_id = _j(nsg)["id"]
        vnet = self._wait(
            self._call(
                "creating the drill's VNet",
                lambda: c.network.virtual_networks.begin_create_or_update(
                    rg,
                    VNET_NAME,
                    {
                        "location": location,
                        "tags": tags,
                        "properties": {
                            "addressSpace": {"addressPrefixes": [str(network)]},
                            "subnets": [
                                {
                                    "name": SUBNET_NAME,
                                    "properties": {
                                        "addressPrefix": str(subnet_prefix),
                                        "networkSecurityGroup": {"id": nsg_id},
                                        "defaultOutboundAccess": False,
                                    },
                                }
                            ],
                            "virtualNetworkPeerings": [],
                            "enableDdosProtection": False,
                        },
                    },
                ),
            ),
            "creating the drill's VNet",
        )
        vnet_j = _j(vnet)
        subnet_id = f"{vnet_j['id']}/subnets/{SUBNET_NAME}"
        return Environment(
            family="azure",
            drill_id=ctx.drill_id,
            id=rg,
            description=f"resource group {rg} in {location}: VNet {network} without peering or gateway, subnet {subnet_prefix}, NSG denying all outbound",
            details={
                "subscription_id": sub,
                "resource_group": rg,
                "resource_group_id": group.get("id"),
                "location": location,
                "vnet_id": vnet_j["id"],
                "subnet_id": subnet_id,
                "nsg_id": nsg_id,
                "address_space": str(network),
                "subnet_prefix": str(subnet_prefix),
                "allow_ingress_from": allowed,
            },
        )

    def _source_location(self, targets: list[Any]) -> str:
        for t in targets:
            if t.provider == "azure.disk":
                d = parse_id(t.source.disk_id)
                c = self.clients(d["sub"])
                got = self._get_or_none("reading the source disk", lambda: c.compute.disks.get(d["rg"], d["name"]))
            elif t.provider == "azure.vm":
                d = parse_id(t.source.vm_id)
                c = self.clients(d["sub"])
                got = self._get_or_none("reading the source VM", lambda: c.compute.virtual_machines.get(d["rg"], d["name"]))
            else:
                continue
            if got and got.get("location"):
                return got["location"]
        raise ProviderError("BAD_ISOLATION", "no Azure location: set isolation.azure_location or DRDRILL_AZURE_LOCATION")

    def verify_isolation(self, ctx: DrillContext, env: Environment) -> IsolationProof:
        sub, rg = self._env_coords(ctx, env)
        c = self.clients(sub)
        checks: list[IsolationCheck] = []

        def check(name: str, ok: bool, detail: str) -> None:
            checks.append(IsolationCheck(name=name, outcome="PASSED" if ok else "FAILED", detail=detail))

        group = self._get_or_none("reading the resource group", lambda: c.resource.resource_groups.get(rg))
        check("resource group tagged", group is not None and require_drill_tag(group.get("tags"), ctx.drill_id),
              f"{rg} " + ("carries this drill's tag" if group else "does not exist"))
        vnet = self._get_or_none("reading the VNet", lambda: c.network.virtual_networks.get(rg, VNET_NAME))
        subnet = self._get_or_none("reading the subnet", lambda: c.network.subnets.get(rg, VNET_NAME, SUBNET_NAME))
        nsg = self._get_or_none("reading the NSG", lambda: c.network.network_security_groups.get(rg, NSG_NAME))
        resources = self._call("listing the resource group", lambda: [_j(r) for r in c.resource.resources.list_by_resource_group(rg)]) if group else []

        if vnet is None:
            check("no peering", False, f"VNet {VNET_NAME} is missing")
        else:
            vp = _props(vnet)
            peerings = vp.get("virtualNetworkPeerings") or []
            check("no peering", not peerings, "no VNet peering" if not peerings else "peered with " + ", ".join(
                (_props(p).get("remoteVirtualNetwork") or {}).get("id", p.get("name", "?")) for p in peerings))
            gw_subnets = [s.get("name") for s in vp.get("subnets") or [] if (s.get("name") or "").lower() in GATEWAY_SUBNETS]
            forbidden = [r.get("id") for r in resources if (r.get("type") or "").lower() in FORBIDDEN_TYPES]
            check(
                "no gateway or public endpoint",
                not gw_subnets and not forbidden,
                "no gateway subnet, public IP, NAT gateway, firewall, load balancer or route table in the group"
                if not gw_subnets and not forbidden
                else "found: " + ", ".join([f"subnet {s}" for s in gw_subnets] + forbidden),
            )
        if subnet is None or nsg is None:
            check("subnet guarded by the drill's NSG", False, "the subnet or the NSG is missing")
        else:
            sp = _props(subnet)
            problems = []
            if ((sp.get("networkSecurityGroup") or {}).get("id") or "").lower() != nsg["id"].lower():
                problems.append("the subnet is not associated with the drill's NSG")
            if sp.get("natGateway"):
                problems.append("the subnet has a NAT gateway")
            if sp.get("routeTable"):
                problems.append("the subnet has a route table")
            if sp.get("defaultOutboundAccess") is not False:
                problems.append("default outbound access is not disabled")
            check("subnet guarded by the drill's NSG", not problems, "; ".join(problems) or f"{sp.get('addressPrefix')} behind {NSG_NAME}, default outbound access off")
        if nsg is not None:
            rules = [dict(_props(r), name=r.get("name")) for r in _props(nsg).get("securityRules") or []]
            check("outbound denied", *self._outbound_denied(rules))
            check("inbound only from validation sources", *self._inbound_limited(rules, env.details.get("allow_ingress_from") or []))
        return IsolationProof(family="azure", environment_id=env.id, checks=checks)

    @staticmethod
    def _any(rule: dict, key: str) -> bool:
        single = rule.get(f"{key}AddressPrefix")
        many = rule.get(f"{key}AddressPrefixes") or []
        return single in ("*", "0.0.0.0/0", "Internet") or any(p in ("*", "0.0.0.0/0", "Internet") for p in many)

    def _outbound_denied(self, rules: list[dict]) -> tuple[bool, str]:
        out = [r for r in rules if (r.get("direction") or "").lower() == "outbound"]
        denies = [
            r for r in out
            if (r.get("access") or "").lower() == "deny" and r.get("protocol") == "*" and self._any(r, "destination")
            and r.get("destinationPortRange") in ("*", None) and self._any(r, "source")
        ]
        if not denies:
            return False, "no rule denies all outbound traffic (Azure's defaults allow the VNet and the internet)"
        deny_at = min(int(r["priority"]) for r in denies)
        allows = [r for r in out if (r.get("access") or "").lower() == "allow" and int(r["priority"]) < deny_at]
        if allows:
            return False, "outbound allowed before the deny-all rule by: " + ", ".join(r["name"] for r in allows)
        return True, f"all outbound traffic denied at priority {deny_at}, no allow rule before it"

    def _inbound_limited(self, rules: list[dict], allowed: list[str]) -> tuple[bool, str]:
        inbound = [r for r in rules if (r.get("direction") or "").lower() == "inbound"]
        denies = [r for r in inbound if (r.get("access") or "").lower() == "deny" and r.get("protocol") == "*" and self._any(r, "source") and self._any(r, "destination")]
        if not denies:
            return False, "no rule denies other inbound traffic (Azure's defaults admit the VNet and load balancers)"
        deny_at = min(int(r["priority"]) for r in denies)
        ok_nets = [ipaddress.ip_network(a, strict=False) for a in allowed]
        bad = []
        for r in inbound:
            if (r.get("access") or "").lower() != "allow" or int(r["priority"]) > deny_at:
                continue
            sources = ([r["sourceAddressPrefix"]] if r.get("sourceAddressPrefix") else []) + list(r.get("sourceAddressPrefixes") or [])
            for s in sources:
                try:
                    net = ipaddress.ip_network(s, strict=False)
                except ValueError:
                    bad.append(f"{r['name']} from {s}")
                    continue
                if not any(net.version == a.version and net.subnet_of(a) for a in ok_nets):
                    bad.append(f"{r['name']} from {s}")
        if bad:
            return False, "inbound allowed from sources the drill did not name: " + ", ".join(bad)
        return True, ("inbound only from " + ", ".join(allowed) if allowed else "no inbound traffic allowed") + f"; everything else denied at priority {deny_at}"

    # ------------------------------------------------------------ restore

    def _ensure_disk(
        self, c: _Clients, rg: str, name: str, snapshot: dict, ctx: DrillContext, target: str, location: str, sku: Optional[str]
    ) -> Any:
        """Start (or find) the disk copied from `snapshot`. Returns a poller, or the disk JSON when it exists."""
        existing = self._get_or_none(f"reading disk {name}", lambda: c.compute.disks.get(rg, name))
        if existing is not None:
            src = ((_props(existing).get("creationData") or {}).get("sourceResourceId") or "").lower()
            if src != snapshot["snapshot_id"].lower():
                raise ProviderError("AZURE_NAME_TAKEN", f"disk {name} in {rg} was copied from another snapshot ({src}); not reusing it")
            if (_props(existing).get("provisioningState") or "").lower() == "succeeded":
                return existing
        props: dict[str, Any] = {
            "creationData": {"createOption": "Copy", "sourceResourceId": snapshot["snapshot_id"]},
            # The restored data is not exportable: no SAS, no public network access.
            "networkAccessPolicy": "DenyAll",
            "publicNetworkAccess": "Disabled",
        }
        if snapshot.get("os_type"):
            props["osType"] = snapshot["os_type"]
        if snapshot.get("hyper_v_generation"):
            props["hyperVGeneration"] = snapshot["hyper_v_generation"]
        body: dict[str, Any] = {"location": location, "tags": ctx.tags(target), "properties": props}
        if sku:
            body["sku"] = {"name": sku}
        return self._call(f"creating disk {name}", lambda: c.compute.disks.begin_create_or_update(rg, name, body))

    def _disks(self, c: _Clients, rg: str, wanted: list[tuple[str, dict]], ctx: DrillContext, target: Any, location: str) -> list[dict]:
        """Create the disks in parallel (one poller each), then wait for all of them."""
        for name, snap in wanted:
            if snap.get("location") and location and snap["location"].lower() != location.lower():
                raise ProviderError(
                    "AZURE_REGION_MISMATCH",
                    f"target {target.name}: snapshot {snap.get('name')} is in {snap['location']} but the drill's resource group is in "
                    f"{location}; a disk must be created in its snapshot's region (set isolation.azure_location: {snap['location']})",
                )
        sku = target.source.disk_sku
        started = [(name, self._ensure_disk(c, rg, name, snap, ctx, target.name, location, sku)) for name, snap in wanted]
        out = []
        for name, p in started:
            out.append(p if isinstance(p, dict) else _j(self._wait(p, f"creating disk {name}")))
        return out

    def restore(self, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment) -> RestoredResource:
        sub, rg = self._env_coords(ctx, env)
        c = self.clients(sub)
        location = env.details.get("location") or point.metadata.get("location") or self.location
        if target.provider == "azure.disk":
            name = f"{target.name}-disk"
            (disk,) = self._disks(c, rg, [(name, point.metadata)], ctx, target, location)
            return RestoredResource(
                target=target.name,
                provider=target.provider,
                id=disk["id"],
                description=f"managed disk {name} in {rg} from snapshot {point.metadata.get('name')}",
                endpoint={"disk_id": disk["id"], "resource_group": rg, "source_snapshot_id": point.id},
                details={"snapshot_id": point.id, "location": location},
            )
        if target.provider != "azure.vm":
            raise ProviderError("BAD_TARGET", f"the Azure provider does not restore {target.provider}")
        meta = point.metadata
        wanted = [(f"{target.name}-osdisk", meta["os"])] + [(f"{target.name}-data{d['lun']}", d) for d in meta.get("data", [])]
        disks = self._disks(c, rg, wanted, ctx, target, location)
        os_disk, data_disks = disks[0], list(zip(meta.get("data", []), disks[1:]))

        nic_name = f"{target.name}-nic"
        nic = _j(self._wait(
            self._call(
                f"creating NIC {nic_name}",
                lambda: c.network.network_interfaces.begin_create_or_update(
                    rg,
                    nic_name,
                    {
                        "location": location,
                        "tags": ctx.tags(target.name),
                        "properties": {
                            # A private address in the isolated subnet; no public IP.
                            "ipConfigurations": [
                                {"name": "ipconfig1", "properties": {"subnet": {"id": env.details["subnet_id"]}, "privateIPAllocationMethod": "Dynamic", "primary": True}}
                            ],
                            "enableIPForwarding": False,
                        },
                    },
                ),
            ),
            f"creating NIC {nic_name}",
        ))
        vm_name = target.name
        existing = self._get_or_none(f"reading VM {vm_name}", lambda: c.compute.virtual_machines.get(rg, vm_name))
        if existing is not None and (_props(existing).get("provisioningState") or "").lower() == "succeeded":
            vm = existing
        else:
            body = {
                "location": location,
                "tags": ctx.tags(target.name),
                "properties": {
                    "hardwareProfile": {"vmSize": target.source.vm_size},
                    "storageProfile": {
                        "osDisk": {
                            "osType": meta.get("os_type") or _props(os_disk).get("osType") or "Linux",
                            "createOption": "Attach",
                            "managedDisk": {"id": os_disk["id"]},
                        },
                        "dataDisks": [
                            {"lun": int(d["lun"]), "createOption": "Attach", "managedDisk": {"id": disk["id"]}} for d, disk in data_disks
                        ],
                    },
                    "networkProfile": {"networkInterfaces": [{"id": nic["id"], "properties": {"primary": True}}]},
                },
            }
            vm = _j(self._wait(
                self._call(f"creating VM {vm_name}", lambda: c.compute.virtual_machines.begin_create_or_update(rg, vm_name, body)),
                f"creating VM {vm_name}",
            ))
        return RestoredResource(
            target=target.name,
            provider=target.provider,
            id=vm["id"],
            description=f"VM {vm_name} ({target.source.vm_size}) in {rg} from {1 + len(data_disks)} snapshot(s), no public IP",
            endpoint={
                "vm_id": vm["id"],
                "nic_id": nic["id"],
                "os_disk_id": os_disk["id"],
                "resource_group": rg,
                "private_ip": ((nic.get("properties") or {}).get("ipConfigurations") or [{}])[0].get("properties", {}).get("privateIPAddress", ""),
            },
            details={"data_disk_ids": [d["id"] for _, d in data_disks], "location": location, "snapshot_id": point.id},
        )

    def wait_ready(self, ctx: DrillContext, target: Any, resource: RestoredResource, timeout: float) -> RestoredResource:
        out = resource.model_copy(deep=True)
        if target.provider == "azure.disk":
            d = parse_id(resource.id)
            c = self.clients(d["sub"])

            def disk_probe() -> dict:
                disk = self._call(f"reading disk {d['name']}", lambda: _j(c.compute.disks.get(d["rg"], d["name"])))
                p = _props(disk)
                state = (p.get("provisioningState") or "").lower()
                if state == "failed":
                    raise ProviderError("AZURE_OPERATION_FAILED", f"disk {d['name']} is in provisioning state Failed")
                if state != "succeeded":
                    raise NotReadyYet(f"provisioning state {p.get('provisioningState')}")
                return disk

            disk = poll_until(disk_probe, timeout=timeout, what=f"disk {d['name']}", initial=self.ready_poll_initial, maximum=self.ready_poll_max)
            p = _props(disk)
            out.endpoint.update(disk_state=p.get("diskState", ""), size_gb=p.get("diskSizeGB", ""))
            out.ready = True
            return out

        v = parse_id(resource.id)
        c = self.clients(v["sub"])

        def vm_probe() -> str:
            view = self._call(f"reading VM {v['name']}'s instance view", lambda: _j(c.compute.virtual_machines.instance_view(v["rg"], v["name"])))
            codes = [s.get("code", "") for s in view.get("statuses") or []]
            if any(x.lower() == "provisioningstate/failed" for x in codes):
                raise ProviderError("AZURE_OPERATION_FAILED", f"VM {v['name']} failed to provision: {codes}")
            power = next((x.split("/", 1)[1] for x in codes if x.startswith("PowerState/")), None)
            if "ProvisioningState/succeeded" not in codes or power != "running":
                raise NotReadyYet(", ".join(codes) or "no status yet")
            return power

        power = poll_until(vm_probe, timeout=timeout, what=f"VM {v['name']}", initial=self.ready_poll_initial, maximum=self.ready_poll_max)
        n = parse_id(resource.endpoint["nic_id"])
        nic = self._call("reading the VM's NIC", lambda: _j(c.network.network_interfaces.get(n["rg"], n["name"])))
        ipcs = _props(nic).get("ipConfigurations") or []
        out.endpoint.update(
            private_ip=(ipcs[0].get("properties") or {}).get("privateIPAddress", "") if ipcs else "",
            power_state=power,
            public_ip=any((ipc.get("properties") or {}).get("publicIPAddress") for ipc in ipcs),
        )
        out.ready = True
        return out

    # ------------------------------------------------------------ teardown and orphans

    def _delete_group(self, c: _Clients, rg: str, what: str) -> None:
        try:
            poller = c.resource.resource_groups.begin_delete(rg)
        except Exception as exc:  # noqa: BLE001
            if _is_not_found(exc):
                return
            raise self._mapped(what, exc) from exc
        try:
            self._wait(poller, what)
        except ProviderError as err:
            if err.code == "AZURE_NOT_FOUND":
                return
            raise

    def teardown(self, ctx: DrillContext, env: Environment) -> TeardownReport:
        sub, rg = self._env_coords(ctx, env)
        c = self.clients(sub)
        report = TeardownReport(family="azure", environment_id=env.id)
        group = self._get_or_none(f"reading resource group {rg}", lambda: c.resource.resource_groups.get(rg))
        if group is None:
            report.already_gone.append(f"/subscriptions/{sub}/resourceGroups/{rg}")
            return report
        if not require_drill_tag(group.get("tags"), ctx.drill_id):
            report.refused.append(group["id"])
            return report
        inside = self._call("listing the resource group", lambda: [_j(r)["id"] for r in c.resource.resources.list_by_resource_group(rg)])
        self._delete_group(c, rg, f"deleting resource group {rg}")
        report.deleted.extend(inside + [group["id"]])
        return report

    def list_orphans(self, now: datetime, active_drill_ids: set[str]) -> list[Orphan]:
        c = self.clients()
        groups = self._call(
            "listing drdrill resource groups",
            lambda: [_j(g) for g in c.resource.resource_groups.list(filter=f"tagName eq '{TAG_DRILL_ID}'")],
        )
        out = []
        for g in groups:
            tags = g.get("tags") or {}
            drill_id = tags.get(TAG_DRILL_ID)
            if not drill_id:
                continue
            expires = None
            if tags.get(TAG_EXPIRES_AT):
                try:
                    expires = _parse_time(tags[TAG_EXPIRES_AT])
                except ValueError:
                    expires = None
            expired = expires is not None and expires < now
            if drill_id in active_drill_ids and not expired:
                continue
            out.append(
                Orphan(
                    provider="azure",
                    id=g["id"],
                    kind="resource_group",
                    drill_id=drill_id,
                    expires_at=expires,
                    region=g.get("location"),
                    details={
                        "subscription_id": self.subscription_id,
                        "resource_group": g.get("name"),
                        "provisioning_state": _props(g).get("provisioningState"),
                        "reason": "expired" if expired else "drill not active",
                    },
                )
            )
        return out

    def delete_orphan(self, orphan: Orphan) -> str:
        sub = orphan.details.get("subscription_id") or self.subscription_id
        rg = orphan.details.get("resource_group") or orphan.id.rstrip("/").rsplit("/", 1)[-1]
        c = self.clients(sub)
        group = self._get_or_none(f"reading resource group {rg}", lambda: c.resource.resource_groups.get(rg))
        if group is None:
            return f"resource group {rg} already gone"
        if not require_drill_tag(group.get("tags"), orphan.drill_id):
            return f"refused: resource group {rg} does not carry {TAG_DRILL_ID}={orphan.drill_id}"
        self._delete_group(c, rg, f"deleting orphaned resource group {rg}")
        return f"deleted resource group {rg} (drill {orphan.drill_id})"
