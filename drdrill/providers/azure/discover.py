"""Selections and coverage on Azure: the subscription's managed disks and VMs (by tag and resource
group), each with the times of its snapshots (a VM's: its OS disk's).

Read-only: GET …/providers/Microsoft.Compute/disks, …/virtualMachines and …/snapshots at the
subscription's scope (the reads deploy/azure/role.json grants). Whatever carries drdrill's tag was
restored by a drill, not backed up, and is never listed.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from drdrill.core.models import TAG_DRILL_ID
from drdrill.core.selection import ProtectedResource, tags_match
from drdrill.core.schema import Selection
from drdrill.providers.azure.disk import snapshot_time, snapshots_of
from drdrill.providers.azure.primitives import AzurePrimitives, parse_id, props, wire
from drdrill.providers.base import ProviderError, heartbeat

KINDS = ("azure.disk", "azure.vm")


def discover(az: AzurePrimitives, kind: str, selection: Selection) -> list[ProtectedResource]:
    if kind not in KINDS:
        raise ProviderError("SELECTION_NOT_SUPPORTED", f"the azure provider does not select {kind} resources")
    groups = {g.lower() for g in selection.resource_groups}

    def keep(resource: dict) -> bool:
        in_group = not groups or parse_id(resource["id"])["rg"].lower() in groups
        return in_group and tags_match(dict(resource.get("tags") or {}), selection)

    return _resources(az, kind, keep)


def protected_inventory(az: AzurePrimitives, protected_tag: Optional[str]) -> list[ProtectedResource]:
    found = []
    for kind in KINDS:
        for r in _resources(az, kind, lambda resource: True):
            found.append(r.note_protection(protected_tag, points_word="snapshot(s)"))
    return found


def _resources(az: AzurePrimitives, kind: str, keep: Callable[[dict], bool]) -> list[ProtectedResource]:
    c = az.clients()
    ops = c.compute.disks.list if kind == "azure.disk" else c.compute.virtual_machines.list_all

    def listing() -> list[dict]:
        out = []
        for i, r in enumerate(ops()):
            if i % 50 == 0:
                heartbeat({"listing": kind, "seen": i})
            out.append(wire(r))
        return out

    listed = [r for r in az.sdk(f"listing {kind} resources", listing) if TAG_DRILL_ID not in (r.get("tags") or {}) and keep(r)]
    disk_of = {r["id"]: (r["id"] if kind == "azure.disk" else _os_disk(r)) for r in listed}
    snaps = snapshots_of(az, az.subscription_id or "", [d for d in disk_of.values() if d], {}) if listed else {}
    out = []
    for r in listed:
        times = [snapshot_time(s) for s in snaps.get((disk_of[r["id"]] or "").lower(), [])]
        out.append(
            ProtectedResource(
                kind=kind,
                id=r["id"],
                name=r.get("name") or r["id"].rsplit("/", 1)[-1],
                scope=(r.get("location") or "").lower() or None,
                source={"disk_id": r["id"]} if kind == "azure.disk" else {"vm_id": r["id"]},
                tags=dict(r.get("tags") or {}),
                newest_point=max(times) if times else None,
                oldest_point=min(times) if times else None,
                points=len(times),
            )
        )
    return out


def _os_disk(vm: dict) -> Optional[str]:
    storage: Any = props(vm).get("storageProfile") or {}
    return ((storage.get("osDisk") or {}).get("managedDisk") or {}).get("id")
