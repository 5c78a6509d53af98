"""azure.disk: a managed disk's snapshots are its recovery points; a restore copies one to a new disk
in the drill's resource group. The snapshot listing and the disk copy serve azure.vm too."""

from __future__ import annotations

from typing import Any, Optional

from drdrill.core.models import DrillContext, Environment, RecoveryPoint, RestoredResource
from drdrill.core.times import parse_time
from drdrill.providers.base import NotReadyYet, ProviderError, heartbeat, poll_until, select_for_target
from drdrill.providers.azure.primitives import AzurePrimitives, Clients, parse_id, props, wire


# ---------------------------------------------------------------- snapshots


def snapshots_of(az: AzurePrimitives, sub: str, disk_ids: list[str], tags: dict[str, str]) -> dict[str, list[dict]]:
    """Succeeded snapshots per source disk id (lower-cased), carrying every tag in `tags`."""
    wanted: dict[str, list[dict]] = {d.lower(): [] for d in disk_ids}
    c = az.clients(sub)

    def listing() -> list[dict]:
        out = []
        for i, s in enumerate(c.compute.snapshots.list()):
            if i % 50 == 0:
                heartbeat({"listing": "snapshots", "seen": i})
            out.append(wire(s))
        return out

    for snap in az.sdk("listing snapshots", listing):
        p = props(snap)
        src = ((p.get("creationData") or {}).get("sourceResourceId") or "").lower()
        if src not in wanted or (p.get("provisioningState") or "").lower() != "succeeded" or not p.get("timeCreated"):
            continue
        snap_tags = snap.get("tags") or {}
        if any(snap_tags.get(k) != v for k, v in tags.items()):
            continue
        wanted[src].append(snap)
    return wanted


def snapshot_time(snap: dict):
    """When the snapshot was taken (ARM's timeCreated)."""
    return parse_time(props(snap)["timeCreated"])


def snapshot_meta(snap: dict) -> dict:
    p = props(snap)
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


def snapshot_size(snap: dict) -> Optional[int]:
    p = props(snap)
    if p.get("diskSizeBytes"):
        return int(p["diskSizeBytes"])
    if p.get("diskSizeGB"):
        return int(p["diskSizeGB"]) << 30
    return None


def find_recovery_point(az: AzurePrimitives, ctx: DrillContext, target: Any) -> RecoveryPoint:
    src = target.source
    d = parse_id(src.disk_id, "Microsoft.Compute/disks")
    snaps = snapshots_of(az, d["sub"], [src.disk_id], src.snapshot_tags)[src.disk_id.lower()]
    points = [
        RecoveryPoint(
            target=target.name,
            provider=target.provider,
            id=s["id"],
            consistent_time=snapshot_time(s),
            size_bytes=snapshot_size(s),
            metadata=snapshot_meta(s),
        )
        for s in snaps
    ]
    if not points:
        where = f"no snapshot of disk {src.disk_id}" + (f" tagged {src.snapshot_tags}" if src.snapshot_tags else "")
        raise ProviderError("RECOVERY_POINT_NOT_FOUND", f"target {target.name}: {where}")
    return select_for_target(points, ctx, target)


# ---------------------------------------------------------------- disks from snapshots


def _start_disk(
    az: AzurePrimitives, c: Clients, rg: str, name: str, snapshot: dict, ctx: DrillContext, target: str, location: str, sku: Optional[str]
) -> Any:
    """Start (or find) the disk copied from `snapshot`. Returns a poller, or the disk JSON when it exists."""
    existing = az.read(f"reading disk {name}", c.compute.disks.get, rg, name)
    if existing is not None:
        src = ((props(existing).get("creationData") or {}).get("sourceResourceId") or "").lower()
        if src != snapshot["snapshot_id"].lower():
            raise ProviderError("AZURE_NAME_TAKEN", f"disk {name} in {rg} was copied from another snapshot ({src}); not reusing it")
        if (props(existing).get("provisioningState") or "").lower() == "succeeded":
            return existing
    disk_props: dict[str, Any] = {
        "creationData": {"createOption": "Copy", "sourceResourceId": snapshot["snapshot_id"]},
        # The restored data is not exportable: no SAS, no public network access.
        "networkAccessPolicy": "DenyAll",
        "publicNetworkAccess": "Disabled",
    }
    if snapshot.get("os_type"):
        disk_props["osType"] = snapshot["os_type"]
    if snapshot.get("hyper_v_generation"):
        disk_props["hyperVGeneration"] = snapshot["hyper_v_generation"]
    body: dict[str, Any] = {"location": location, "tags": ctx.tags(target), "properties": disk_props}
    if sku:
        body["sku"] = {"name": sku}
    return az.sdk(f"creating disk {name}", c.compute.disks.begin_create_or_update, rg, name, body)


def create_disks(
    az: AzurePrimitives, c: Clients, rg: str, wanted: list[tuple[str, dict]], ctx: DrillContext, target: Any, location: str
) -> list[dict]:
    """Create the disks (name, snapshot metadata) in parallel, one operation each, then wait for all."""
    for name, snap in wanted:
        if snap.get("location") and location and snap["location"].lower() != location.lower():
            raise ProviderError(
                "AZURE_REGION_MISMATCH",
                f"target {target.name}: snapshot {snap.get('name')} is in {snap['location']} but the drill's resource group is in "
                f"{location}; a disk must be created in its snapshot's region (set isolation.azure_location: {snap['location']})",
            )
    sku = target.source.disk_sku
    started = [(name, _start_disk(az, c, rg, name, snap, ctx, target.name, location, sku)) for name, snap in wanted]
    return [p if isinstance(p, dict) else az.wait(p, f"creating disk {name}") for name, p in started]


def restore(az: AzurePrimitives, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment, location: str) -> RestoredResource:
    sub, rg = az.env_coords(env)
    name = f"{target.name}-disk"
    (disk,) = create_disks(az, az.clients(sub), rg, [(name, point.metadata)], ctx, target, location)
    return RestoredResource(
        target=target.name,
        provider=target.provider,
        id=disk["id"],
        description=f"managed disk {name} in {rg} from snapshot {point.metadata.get('name')}",
        endpoint={"disk_id": disk["id"], "resource_group": rg, "source_snapshot_id": point.id},
        details={"snapshot_id": point.id, "location": location},
    )


def wait_ready(az: AzurePrimitives, resource: RestoredResource, timeout: float) -> RestoredResource:
    """Wait until the disk's provisioning succeeded; report its state and size."""
    out = resource.model_copy(deep=True)
    d = parse_id(resource.id)
    c = az.clients(d["sub"])

    def provisioned() -> dict:
        disk = az.sdk(f"reading disk {d['name']}", lambda: wire(c.compute.disks.get(d["rg"], d["name"])))
        p = props(disk)
        state = (p.get("provisioningState") or "").lower()
        if state == "failed":
            raise ProviderError("AZURE_OPERATION_FAILED", f"disk {d['name']} is in provisioning state Failed")
        if state != "succeeded":
            raise NotReadyYet(f"provisioning state {p.get('provisioningState')}")
        return disk

    disk = poll_until(provisioned, timeout=timeout, what=f"disk {d['name']}", initial=az.ready_poll_initial, maximum=az.ready_poll_max)
    p = props(disk)
    out.endpoint.update(disk_state=p.get("diskState", ""), size_gb=p.get("diskSizeGB", ""))
    out.ready = True
    return out
