"""Azure primitives: the SDK clients, the error mapping, waiting on long-running operations, and what
the provider template builds teardown and the orphan sweep from (inventory, current_tags, delete).

Everything a drill creates lives in one resource group, `drdrill-<drill id>`, carrying the drill's
tags, and every resource in it carries them too. The inventory lists the group's resources that
carry drdrill's tag, each under a kind of DELETE_ORDER, and the group itself, deleted last.

The group is a container, and more than a VPC is: Azure deletes a resource group with everything
in it. So drdrill deletes what it created one resource at a time, and then the group only when
nothing without the drill's tag is left in it; otherwise the group (and the drill's network, which
whatever is not ours may be using) is kept and reported, and a person looks at it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, Callable, Mapping, Optional

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.policies import RetryPolicy
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.network import NetworkManagementClient
from azure.mgmt.resource.resources import ResourceManagementClient

from drdrill.core.models import TAG_DRILL_ID, Environment
from drdrill.providers.base import (
    NotOurs,
    NotReadyYet,
    Provider,
    ProviderError,
    Resource,
    heartbeat,
    poll_until,
    require_drill_tag,
)

log = logging.getLogger("drdrill.azure")

PUBLIC_ARM = "https://management.azure.com"

# The kinds of resource a drill creates, by ARM type (lower case). Anything else found in a drill's
# resource group is not drdrill's, whatever its tags say: drdrill neither creates nor deletes it.
KINDS = {
    "microsoft.compute/virtualmachines": "vm",
    "microsoft.network/networkinterfaces": "nic",
    "microsoft.compute/disks": "disk",
    "microsoft.network/virtualnetworks": "vnet",
    "microsoft.network/networksecuritygroups": "nsg",
}
GROUP = "resource_group"

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
_GROUP_ID_RE = re.compile(r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)$", re.IGNORECASE)


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


def parse_group_id(arm_id: str) -> tuple[str, str]:
    """(subscription, resource group) of a resource group's ARM id."""
    m = _GROUP_ID_RE.match((arm_id or "").strip().rstrip("/"))
    if not m:
        raise ProviderError("BAD_STATE", f"{arm_id!r} is not a resource group id (/subscriptions/…/resourceGroups/…)")
    return m["sub"], m["rg"]


def group_id(sub: str, rg: str) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}"


def wire(model: Any) -> dict:
    """The wire JSON of an SDK model (they are mappings over it)."""
    if model is None:
        return {}
    if hasattr(model, "as_dict"):
        try:
            return model.as_dict()  # type: ignore[no-any-return]
        except TypeError:
            pass
    return dict(model)


def props(d: Mapping) -> dict:
    return dict(d.get("properties") or {})


# ---------------------------------------------------------------- SDK plumbing


def _heartbeating_sleep(seconds: float, what: str) -> None:
    """Sleep `seconds` in short slices, heartbeating, so a long Retry-After never looks like a dead worker.

    A plain sleep, not a wait for a condition: azure-core's retry policy decides when to try again."""
    deadline = time.monotonic() + max(0.0, seconds)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        heartbeat({"waiting_for": what, "seconds_left": round(remaining, 1)})
        time.sleep(min(remaining, 5.0))


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


class Clients:
    """The three ARM clients of one subscription."""

    def __init__(self, resource: Any, compute: Any, network: Any):
        self.resource, self.compute, self.network = resource, compute, network

    def operations(self, kind: str) -> Any:
        """The SDK operations (get, begin_delete) for one of drdrill's kinds."""
        return {
            "vm": self.compute.virtual_machines,
            "disk": self.compute.disks,
            "nic": self.network.network_interfaces,
            "vnet": self.network.virtual_networks,
            "nsg": self.network.network_security_groups,
        }[kind]

    def close(self) -> None:
        for c in (self.resource, self.compute, self.network):
            try:
                c.close()
            except Exception:  # pragma: no cover - best effort
                pass


def map_error(exc: Exception) -> Optional[ProviderError]:
    """An azure-core exception as a ProviderError with a stable code and the right retryability.

    None for anything else (a cancellation raised by a heartbeat must pass through untouched)."""
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
    if isinstance(exc, AzureError):
        return ProviderError("AZURE_ERROR", f"{type(exc).__name__}: {exc}", retryable=True)
    return None


# ---------------------------------------------------------------- the primitives


class AzurePrimitives(Provider):
    """Settings, clients, SDK calls and the primitives of cleaning up; AzureProvider adds the drill's steps."""

    family = "azure"
    # Instances before the NICs and disks they use; the NICs before the VNet whose subnet they sit
    # in; the VNet before the NSG its subnet references; the group, empty by then, last.
    DELETE_ORDER = ("vm", "nic", "disk", "vnet", "nsg", GROUP)
    # The group deletes what it holds; the network may be used by something that is not ours.
    CONTAINERS = frozenset({"vnet", "nsg", GROUP})

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
        client_factory: Optional[Callable[[str], Clients]] = None,
    ):
        self.credential = credential
        self.subscription_id = subscription_id
        self.endpoint = endpoint.rstrip("/")
        self.location = location
        self.credential_scopes = credential_scopes or [f"{self.endpoint}/.default"]
        self.connection_verify = connection_verify
        self.polling_interval = polling_interval
        self.operation_timeout = operation_timeout
        self.retry_total = retry_total
        self.ready_poll_initial = ready_poll_initial
        self.ready_poll_max = ready_poll_max
        self._client_factory = client_factory
        self._clients_by_sub: dict[str, Clients] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ clients and calls

    def clients(self, subscription_id: Optional[str] = None) -> Clients:
        sub = subscription_id or self.subscription_id
        if not sub:
            raise ProviderError(
                "AZURE_NO_SUBSCRIPTION", "no Azure subscription: set AZURE_SUBSCRIPTION_ID or isolation.azure_subscription_id"
            )
        with self._lock:
            if sub not in self._clients_by_sub:
                self._clients_by_sub[sub] = self._client_factory(sub) if self._client_factory else self._make_clients(sub)
            return self._clients_by_sub[sub]

    def _make_clients(self, sub: str) -> Clients:
        def kw() -> dict:
            return dict(
                base_url=self.endpoint,
                credential_scopes=self.credential_scopes,
                polling_interval=self.polling_interval,
                connection_verify=self.connection_verify,
                retry_policy=HeartbeatingRetryPolicy(retry_total=self.retry_total),
                user_agent="drdrill",
            )

        return Clients(
            ResourceManagementClient(self.credential, sub, **kw()),
            ComputeManagementClient(self.credential, sub, **kw()),
            NetworkManagementClient(self.credential, sub, **kw()),
        )

    def close(self) -> None:
        with self._lock:
            for c in self._clients_by_sub.values():
                c.close()
            self._clients_by_sub.clear()

    def map_error(self, exc: Exception) -> Optional[ProviderError]:
        return map_error(exc)

    def sdk(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`call` the SDK, saying in an error's message what drdrill was doing."""
        try:
            return self.call(fn, *args, **kwargs)
        except ProviderError as err:
            err.message = f"{what}: {err.message}"
            err.args = (err.message,)
            raise

    def read(self, what: str, fn: Callable[..., Any], *args: Any) -> Optional[dict]:
        """A GET's wire JSON; None when the resource (or its group) does not exist."""
        try:
            return wire(self.sdk(what, fn, *args))
        except ProviderError as err:
            if err.code == "AZURE_NOT_FOUND":
                return None
            raise

    def wait(self, poller: Any, what: str, timeout: Optional[float] = None) -> dict:
        """The outcome of a begin_* operation, as wire JSON.

        The SDK's poller follows the operation (Azure-AsyncOperation / Location, Retry-After) in
        its own thread; `poll_until` looks at it, heartbeating each time, until it is done. An
        operation that ended Failed becomes the ProviderError of its Azure error code."""
        limit = timeout or self.operation_timeout

        def finished() -> dict:
            if not poller.done():
                raise NotReadyYet(str(poller.status()))
            return wire(self.sdk(what, poller.result))

        try:
            return poll_until(
                finished,
                timeout=limit,
                what=what,
                # The SDK learns of the outcome once per polling interval: looking more often is no use.
                initial=min(self.polling_interval, 1.0),
                maximum=self.polling_interval,
            )
        except ProviderError as err:
            if err.code != "READY_TIMEOUT":
                raise
            raise ProviderError("AZURE_TIMEOUT", f"{what} did not finish within {limit:.0f}s", retryable=True) from None

    def env_coords(self, env: Environment) -> tuple[str, str]:
        """(subscription, resource group) of a drill's environment."""
        sub = env.details.get("subscription_id") or self.subscription_id
        rg = env.details.get("resource_group") or env.id
        return sub, rg

    # ------------------------------------------------------------ primitives of cleaning up

    def inventory(self, drill_id: Optional[str] = None, env: Optional[Environment] = None) -> list[Resource]:
        """The tagged resources in drdrill's tagged resource groups (the environment's group only,
        when `env` is given; this drill's only, when `drill_id` is), each group after its contents."""
        if env is not None:
            sub, rg = self.env_coords(env)
            group = self._group(sub, rg)
            groups = [group] if group is not None else []
        else:
            c = self.clients()
            groups = self.sdk(
                "listing drdrill resource groups",
                lambda: [wire(g) for g in c.resource.resource_groups.list(filter=f"tagName eq '{TAG_DRILL_ID}'")],
            )
        out: list[Resource] = []
        for group in groups:
            if not require_drill_tag(group.get("tags"), drill_id):
                continue
            out += [r for r in self._group_contents(group) if r.kind in KINDS.values() and require_drill_tag(r.tags, drill_id)]
            out.append(self._group_resource(group))
        return out

    def named_resources(self, env: Environment) -> list[Resource]:
        """The environment's resource group and, when it is the drill's, everything in it: what the
        inventory did not list is then reported already gone, or refused (so the group is kept)."""
        sub, rg = self.env_coords(env)
        group = self._group(sub, rg)
        if group is None:
            return [Resource(GROUP, group_id(sub, rg), scope=env.details.get("location"))]
        named = [self._group_resource(group)]
        if require_drill_tag(group.get("tags"), env.drill_id):
            named += self._group_contents(group)
        return named

    def current_tags(self, resource: Resource) -> Optional[dict[str, str]]:
        """A resource's tags now (None: gone). A container (the group, the network) of a drill whose
        group holds anything without that drill's tag is NotOurs: deleting it would delete that too,
        or break it. (A container whose tag is not its group's is left to the caller's tag check.)"""
        if resource.kind == GROUP:
            sub, rg = parse_group_id(resource.id)
            got = self._group(sub, rg)
        elif resource.kind in KINDS.values():
            d = parse_id(resource.id)
            sub, rg = d["sub"], d["rg"]
            got = self.read(f"reading {resource.label}", self.clients(sub).operations(resource.kind).get, rg, d["name"])
        else:
            raise NotOurs(f"drdrill does not create or delete a {resource.kind}")
        if got is None:
            return None
        tags = dict(got.get("tags") or {})
        if resource.kind in self.CONTAINERS and require_drill_tag(tags) and self._drill_of_group(sub, rg, resource, got) == tags[TAG_DRILL_ID]:
            foreign = self._not_of_drill(sub, rg, tags[TAG_DRILL_ID])
            if foreign:
                raise NotOurs(f"kept: resource group {rg} holds {', '.join(foreign)}, without {TAG_DRILL_ID}={tags[TAG_DRILL_ID]}")
        return tags

    def _drill_of_group(self, sub: str, rg: str, resource: Resource, got: dict) -> Optional[str]:
        """The drill whose tag the resource's group carries (`got` when the resource is the group)."""
        group = got if resource.kind == GROUP else self._group(sub, rg)
        return ((group or {}).get("tags") or {}).get(TAG_DRILL_ID)

    def delete(self, resource: Resource) -> bool:
        """Delete one resource and wait for the operation: True when deleted, False when already gone."""
        if resource.kind == GROUP:
            return self._delete_group(resource)
        d = parse_id(resource.id)
        ops = self.clients(d["sub"]).operations(resource.kind)
        what = f"deleting {resource.label}"
        if self.read(f"reading {resource.label}", ops.get, d["rg"], d["name"]) is None:
            return False
        return self._deleted(what, ops.begin_delete, d["rg"], d["name"])

    def _delete_group(self, resource: Resource) -> bool:
        sub, rg = parse_group_id(resource.id)
        c = self.clients(sub)
        group = self._group(sub, rg)
        if group is None:
            return False
        drill_id = (group.get("tags") or {}).get(TAG_DRILL_ID, "")
        foreign = self._not_of_drill(sub, rg, drill_id)
        if foreign:  # it appeared since the inventory: Azure would delete it with the group
            raise ProviderError(
                "AZURE_GROUP_NOT_EMPTY",
                f"resource group {rg} now holds {', '.join(foreign)}, without {TAG_DRILL_ID}={drill_id}: not deleting it",
                retryable=True,
            )
        return self._deleted(f"deleting resource group {rg}", c.resource.resource_groups.begin_delete, rg)

    def _deleted(self, what: str, begin_delete: Callable[..., Any], *args: Any) -> bool:
        """Run a deletion to its end: True; False when what it deletes was gone already."""
        try:
            self.wait(self.sdk(what, begin_delete, *args), what)
        except ProviderError as err:
            if err.code == "AZURE_NOT_FOUND":
                return False
            raise
        return True

    def _contents(self, sub: str, rg: str, location: Optional[str] = None) -> list[Resource]:
        """Every resource in a group, as listed (with its tags); kind: drdrill's kind, or its ARM type.
        Nothing when the group is gone."""
        c = self.clients(sub)
        try:
            listed = self.sdk(f"listing resource group {rg}", lambda: [wire(r) for r in c.resource.resources.list_by_resource_group(rg)])
        except ProviderError as err:
            if err.code != "AZURE_NOT_FOUND":
                raise
            listed = []
        return [
            Resource(
                KINDS.get((r.get("type") or "").lower(), r.get("type") or "unknown"),
                r["id"],
                tags=dict(r.get("tags") or {}),
                scope=r.get("location") or location,
            )
            for r in listed
        ]

    def _group_contents(self, group: dict) -> list[Resource]:
        sub, rg = parse_group_id(group["id"])
        return self._contents(sub, rg, group.get("location"))

    def _not_of_drill(self, sub: str, rg: str, drill_id: str) -> list[str]:
        """Labels of what a group holds that drdrill must not delete with it for `drill_id`."""
        return [r.label for r in self._contents(sub, rg) if r.kind not in KINDS.values() or not require_drill_tag(r.tags, drill_id)]

    def _group(self, sub: str, rg: str) -> Optional[dict]:
        return self.read(f"reading resource group {rg}", self.clients(sub).resource.resource_groups.get, rg)

    @staticmethod
    def _group_resource(group: dict) -> Resource:
        return Resource(GROUP, group["id"], tags=dict(group.get("tags") or {}), scope=group.get("location"))
