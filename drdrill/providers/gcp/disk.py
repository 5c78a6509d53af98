"""`gcp.disk` targets, and the snapshots every GCP target restores from: the recovery point (the
source disks' READY snapshots, chosen by the target's rule), a disk restored from a snapshot into
the isolation project, and its readiness."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from drdrill.core.models import DrillContext, Environment, RecoveryPoint, RestoredResource
from drdrill.core.times import parse_time
from drdrill.providers.base import NotReadyYet, ProviderError, poll_until, select_for_target
from drdrill.providers.gcp.labels import gcp_labels, gcp_name, link_parts, link_tail
from drdrill.providers.gcp.primitives import GcpPrimitives


def source_disks(gcp: GcpPrimitives, target: Any) -> tuple[list[dict], str]:
    """The disk to restore, as [{device_name, boot, source_disk}], and how to name it to a user.
    A disk that no longer exists still has snapshots: its link is built from the spec."""
    src = target.source
    disk = gcp.get_resource("disks", {"project": src.project, "zone": src.zone, "disk": src.disk}, f"source disk {src.disk}")
    disk_link = disk.self_link if disk is not None else f"projects/{src.project}/zones/{src.zone}/disks/{src.disk}"
    return [{"device_name": src.disk, "boot": True, "source_disk": link_tail(disk_link)}], f"disk {src.project}/{src.zone}/{src.disk}"


def recovery_point(gcp: GcpPrimitives, ctx: DrillContext, target: Any, disks: list[dict], source_desc: str) -> RecoveryPoint:
    """The first (boot) disk's snapshot chosen by the target's rule; for each other disk, its
    newest snapshot no later than that one plus a small skew (snapshots of one instance are
    taken together, not atomically). The point's time is the oldest of them."""
    src = target.source
    by_disk: dict[str, list[Any]] = {}
    for s in _snapshots(gcp, src.project, src.snapshot_labels, what=f"snapshots of {source_desc}"):
        by_disk.setdefault(link_tail(s.source_disk), []).append(s)
    boot = disks[0]
    candidates = [_point(target, s, boot) for s in by_disk.get(boot["source_disk"], [])]
    if not candidates:
        labels = f" labelled {src.snapshot_labels}" if src.snapshot_labels else ""
        raise ProviderError("RECOVERY_POINT_NOT_FOUND", f"target {target.name}: no READY snapshot{labels} of {source_desc} in project {src.project}")
    point = select_for_target(candidates, ctx, target)
    chosen = [point.metadata["snapshot"]]
    limit = point.consistent_time + timedelta(seconds=gcp.disk_skew)
    for d in disks[1:]:
        options = [s for s in by_disk.get(d["source_disk"], []) if parse_time(s.creation_timestamp) <= limit]
        if not options:
            raise ProviderError(
                "RECOVERY_POINT_NOT_FOUND",
                f"target {target.name}: disk {d['device_name']} has no snapshot at or before {limit.isoformat()} to go with {point.id}",
            )
        chosen.append(_snapshot_meta(max(options, key=lambda s: parse_time(s.creation_timestamp)), d))
    point.consistent_time = min(parse_time(c["created"]) for c in chosen)
    point.metadata = {"project": src.project, "zone": src.zone, "snapshots": chosen, "source": source_desc}
    point.size_bytes = sum(int(c["disk_size_gb"]) for c in chosen) * 1024**3
    if len(chosen) > 1:
        point.id = "+".join(c["name"] for c in chosen)
    return point


def _snapshots(gcp: GcpPrimitives, project: str, labels: dict[str, str], what: str) -> list[Any]:
    flt = " AND ".join(f'(labels.{k} = "{v}")' for k, v in sorted(labels.items()))
    request: dict = {"project": project, "max_results": 500}
    if flt:
        request["filter"] = flt
    items = gcp.filtered_list("snapshots", "list", request, what=what)
    # Filter again client-side: the READY state, and the labels (in case a filter was ignored).
    return [s for s in items if s.status == "READY" and all(s.labels.get(k) == v for k, v in labels.items())]


def _point(target: Any, snap: Any, disk: dict) -> RecoveryPoint:
    return RecoveryPoint(
        target=target.name,
        provider=target.provider,
        id=snap.name,
        consistent_time=parse_time(snap.creation_timestamp),
        size_bytes=int(snap.disk_size_gb or 0) * 1024**3,
        metadata={"snapshot": _snapshot_meta(snap, disk)},
    )


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


def restore_disk(gcp: GcpPrimitives, ctx: DrillContext, target: Any, env: Environment, zone: str, name: str, snap: dict) -> Any:
    """One disk from one snapshot, labelled for the drill and target; returned once READY."""
    project = env.details["project"]
    gcp.create_resource(
        "disks",
        {
            "project": project,
            "zone": zone,
            "disk_resource": {
                "name": name,
                "source_snapshot": snap["self_link"],
                **({"size_gb": int(snap["disk_size_gb"])} if snap.get("disk_size_gb") else {}),
                "labels": gcp_labels(ctx, target.name),
                "description": f"drdrill drill {ctx.drill_id}: {target.name} restored from snapshot {snap['name']}",
            },
        },
        what=f"target {target.name}: disk {name}",
        get_request={"project": project, "zone": zone, "disk": name},
        drill_id=ctx.drill_id,
    )
    return disk_ready(gcp, project, zone, name, target.name)


def restore(gcp: GcpPrimitives, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment) -> RestoredResource:
    project, zone = env.details["project"], target.source.zone
    snap = point.metadata["snapshots"][0]
    name = gcp_name(ctx, target.name)
    disk = restore_disk(gcp, ctx, target, env, zone, name, snap)
    return RestoredResource(
        target=target.name,
        provider=target.provider,
        id=disk.self_link,
        description=f"disk {project}/{zone}/{name} from snapshot {snap['name']}",
        details={"project": project, "zone": zone, "disks": [name], "instance": None},
        endpoint=disk_endpoint(disk),
    )


def disk_ready(gcp: GcpPrimitives, project: str, zone: str, name: str, target: str, timeout: float = 900.0) -> Any:
    def probe() -> Any:
        disk = gcp.get_resource("disks", {"project": project, "zone": zone, "disk": name}, f"disk {name}")
        if disk is None:
            raise ProviderError("RESTORE_FAILED", f"target {target}: disk {name} disappeared", retryable=True)
        if disk.status == "FAILED":
            raise ProviderError("RESTORE_FAILED", f"target {target}: disk {name} failed to restore")
        if disk.status != "READY":
            raise NotReadyYet(f"disk {name} is {disk.status}")
        return disk

    return poll_until(probe, timeout=timeout, what=f"disk {name}", initial=gcp.poll_initial, maximum=gcp.poll_max, sleep=gcp.sleep)


def wait_ready(gcp: GcpPrimitives, target: Any, resource: RestoredResource, timeout: float) -> RestoredResource:
    d = resource.details
    out = resource.model_copy(deep=True)
    disk = disk_ready(gcp, d["project"], d["zone"], d["disks"][0], target.name, timeout)
    out.endpoint = disk_endpoint(disk)
    out.ready = True
    return out


def disk_endpoint(disk: Any) -> dict[str, Any]:
    return {
        "project": link_parts(disk.self_link).get("projects", ""),
        "zone": link_parts(disk.zone).get("zones", ""),
        "disk": disk.name,
        "self_link": disk.self_link,
        "status": disk.status,
        "size_gb": int(disk.size_gb or 0),
        "source_snapshot": link_parts(disk.source_snapshot).get("snapshots", ""),
    }
