"""azure.vm: a VM's recovery point is a set of snapshots, one of its OS disk and one of each data
disk, taken close together; a restore copies them to disks and attaches them to a new VM with one
NIC in the isolated subnet and no public IP."""

from __future__ import annotations

from typing import Any

from drdrill.core.models import DrillContext, Environment, RecoveryPoint, RestoredResource
from drdrill.providers.base import NotReadyYet, ProviderError, poll_until, select_for_target
from drdrill.providers.azure.disk import create_disks, snapshot_meta, snapshot_size, snapshot_time, snapshots_of
from drdrill.providers.azure.primitives import AzurePrimitives, Clients, parse_id, props, wire


# ---------------------------------------------------------------- recovery points


def find_recovery_point(az: AzurePrimitives, ctx: DrillContext, target: Any) -> RecoveryPoint:
    src = target.source
    v = parse_id(src.vm_id, "Microsoft.Compute/virtualMachines")
    c = az.clients(v["sub"])
    vm = az.read("reading the source VM", c.compute.virtual_machines.get, v["rg"], v["name"])
    if vm is None:
        raise ProviderError(
            "AZURE_SOURCE_NOT_FOUND",
            f"target {target.name}: the source VM {src.vm_id} was not found, so its disks (and their snapshots) cannot be identified",
        )
    storage = props(vm).get("storageProfile") or {}
    os_disk = ((storage.get("osDisk") or {}).get("managedDisk") or {}).get("id")
    if not os_disk:
        raise ProviderError("BAD_TARGET", f"target {target.name}: VM {src.vm_id} has no managed OS disk")
    data = [(int(dd["lun"]), dd["managedDisk"]["id"]) for dd in storage.get("dataDisks") or [] if (dd.get("managedDisk") or {}).get("id")]
    snaps = snapshots_of(az, v["sub"], [os_disk] + [d for _, d in data], src.snapshot_tags)
    points = []
    for os_snap in snaps[os_disk.lower()]:
        parts = _matching_data_snapshots(os_snap, data, snaps, src.snapshot_group_window)
        if parts is not None:
            points.append(_point(target, vm, storage, os_snap, parts))
    if not points:
        where = (
            f"no complete set of snapshots of VM {src.vm_id} (OS disk and {len(data)} data disk(s) within "
            f"{src.snapshot_group_window} of each other)" + (f" tagged {src.snapshot_tags}" if src.snapshot_tags else "")
        )
        raise ProviderError("RECOVERY_POINT_NOT_FOUND", f"target {target.name}: {where}")
    return select_for_target(points, ctx, target)


def _matching_data_snapshots(os_snap: dict, data: list[tuple[int, str]], snaps: dict[str, list[dict]], window: Any):
    """[(lun, snapshot)]: for each data disk its snapshot nearest the OS disk's, within `window`;
    None when a data disk has none that close (the set would not be one point in time)."""
    t = snapshot_time(os_snap)
    parts = []
    for lun, disk_id in data:
        near = [s for s in snaps[disk_id.lower()] if abs(snapshot_time(s) - t) <= window]
        if not near:
            return None
        parts.append((lun, min(near, key=lambda s: abs(snapshot_time(s) - t))))
    return parts


def _point(target: Any, vm: dict, storage: dict, os_snap: dict, parts: list[tuple[int, dict]]) -> RecoveryPoint:
    times = [snapshot_time(os_snap)] + [snapshot_time(s) for _, s in parts]
    sizes = [snapshot_size(os_snap)] + [snapshot_size(s) for _, s in parts]
    return RecoveryPoint(
        target=target.name,
        provider=target.provider,
        id=os_snap["id"],
        # The VM is only as recent as its oldest disk snapshot.
        consistent_time=min(times),
        size_bytes=sum(s for s in sizes if s) or None,
        metadata={
            "vm_id": target.source.vm_id,
            "vm_size": props(vm).get("hardwareProfile", {}).get("vmSize"),
            "os_type": props(os_snap).get("osType") or (storage.get("osDisk") or {}).get("osType"),
            "os": snapshot_meta(os_snap),
            "data": [dict(snapshot_meta(s), lun=lun) for lun, s in parts],
            "spread_seconds": (max(times) - min(times)).total_seconds(),
        },
    )


# ---------------------------------------------------------------- restore


def _nic(az: AzurePrimitives, c: Clients, rg: str, name: str, ctx: DrillContext, target: Any, env: Environment, location: str) -> dict:
    """The VM's NIC: a private address in the isolated subnet, no public IP, no forwarding."""
    what = f"creating NIC {name}"
    body = {
        "location": location,
        "tags": ctx.tags(target.name),
        "properties": {
            "ipConfigurations": [
                {"name": "ipconfig1", "properties": {"subnet": {"id": env.details["subnet_id"]}, "privateIPAllocationMethod": "Dynamic", "primary": True}}
            ],
            "enableIPForwarding": False,
        },
    }
    return az.wait(az.sdk(what, c.network.network_interfaces.begin_create_or_update, rg, name, body), what)


def _vm(az: AzurePrimitives, c: Clients, rg: str, target: Any, ctx: DrillContext, location: str, meta: dict, os_disk: dict, data_disks: list, nic: dict) -> dict:
    """The VM attaching the restored disks and the NIC (the one it made before, on a retry)."""
    name = target.name
    existing = az.read(f"reading VM {name}", c.compute.virtual_machines.get, rg, name)
    if existing is not None and (props(existing).get("provisioningState") or "").lower() == "succeeded":
        return existing
    body = {
        "location": location,
        "tags": ctx.tags(target.name),
        "properties": {
            "hardwareProfile": {"vmSize": target.source.vm_size},
            "storageProfile": {
                "osDisk": {
                    "osType": meta.get("os_type") or props(os_disk).get("osType") or "Linux",
                    "createOption": "Attach",
                    "managedDisk": {"id": os_disk["id"]},
                },
                "dataDisks": [{"lun": int(d["lun"]), "createOption": "Attach", "managedDisk": {"id": disk["id"]}} for d, disk in data_disks],
            },
            "networkProfile": {"networkInterfaces": [{"id": nic["id"], "properties": {"primary": True}}]},
        },
    }
    what = f"creating VM {name}"
    return az.wait(az.sdk(what, c.compute.virtual_machines.begin_create_or_update, rg, name, body), what)


def restore(az: AzurePrimitives, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment, location: str) -> RestoredResource:
    sub, rg = az.env_coords(env)
    c = az.clients(sub)
    meta = point.metadata
    wanted = [(f"{target.name}-osdisk", meta["os"])] + [(f"{target.name}-data{d['lun']}", d) for d in meta.get("data", [])]
    disks = create_disks(az, c, rg, wanted, ctx, target, location)
    os_disk, data_disks = disks[0], list(zip(meta.get("data", []), disks[1:]))
    nic = _nic(az, c, rg, f"{target.name}-nic", ctx, target, env, location)
    vm = _vm(az, c, rg, target, ctx, location, meta, os_disk, data_disks, nic)
    return RestoredResource(
        target=target.name,
        provider=target.provider,
        id=vm["id"],
        description=f"VM {target.name} ({target.source.vm_size}) in {rg} from {1 + len(data_disks)} snapshot(s), no public IP",
        endpoint={
            "vm_id": vm["id"],
            "nic_id": nic["id"],
            "os_disk_id": os_disk["id"],
            "resource_group": rg,
            "private_ip": ((nic.get("properties") or {}).get("ipConfigurations") or [{}])[0].get("properties", {}).get("privateIPAddress", ""),
        },
        details={"data_disk_ids": [d["id"] for _, d in data_disks], "location": location, "snapshot_id": point.id},
    )


# ---------------------------------------------------------------- readiness


def wait_ready(az: AzurePrimitives, resource: RestoredResource, timeout: float) -> RestoredResource:
    """Wait until the VM is provisioned and running; report its power state and addresses."""
    out = resource.model_copy(deep=True)
    v = parse_id(resource.id)
    c = az.clients(v["sub"])

    def running() -> str:
        view = az.sdk(f"reading VM {v['name']}'s instance view", lambda: wire(c.compute.virtual_machines.instance_view(v["rg"], v["name"])))
        codes = [s.get("code", "") for s in view.get("statuses") or []]
        if any(x.lower() == "provisioningstate/failed" for x in codes):
            raise ProviderError("AZURE_OPERATION_FAILED", f"VM {v['name']} failed to provision: {codes}")
        power = next((x.split("/", 1)[1] for x in codes if x.startswith("PowerState/")), None)
        if "ProvisioningState/succeeded" not in codes or power != "running":
            raise NotReadyYet(", ".join(codes) or "no status yet")
        return power

    power = poll_until(running, timeout=timeout, what=f"VM {v['name']}", initial=az.ready_poll_initial, maximum=az.ready_poll_max)
    n = parse_id(resource.endpoint["nic_id"])
    nic = az.sdk("reading the VM's NIC", lambda: wire(c.network.network_interfaces.get(n["rg"], n["name"])))
    ipcs = props(nic).get("ipConfigurations") or []
    private_ip = (ipcs[0].get("properties") or {}).get("privateIPAddress", "") if ipcs else ""
    out.endpoint.update(
        host=private_ip,
        private_ip=private_ip,
        power_state=power,
        public_ip=any((ipc.get("properties") or {}).get("publicIPAddress") for ipc in ipcs),
    )
    out.ready = True
    return out
