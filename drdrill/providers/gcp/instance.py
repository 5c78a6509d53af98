"""`gcp.instance` targets: the instance's persistent disks (boot first) are the source, each
restored from its snapshot, then an instance in the source's zone boots from them with one
interface in the drill's subnetwork, no access config (no external IP) and no service account."""

from __future__ import annotations

from typing import Any

from drdrill.core.models import DrillContext, Environment, Finding, RecoveryPoint, RestoredResource
from drdrill.providers.base import NotReadyYet, ProviderError, poll_until
from drdrill.providers.gcp.disk import restore_disk
from drdrill.providers.gcp.labels import gcp_labels, gcp_name, link_parts, link_tail
from drdrill.providers.gcp.primitives import GcpPrimitives


def source_disks(gcp: GcpPrimitives, target: Any) -> tuple[list[dict], str]:
    """The instance's persistent disks as [{device_name, boot, source_disk}], boot disk first."""
    src = target.source
    inst = gcp.get_resource("instances", {"project": src.project, "zone": src.zone, "instance": src.instance}, f"source instance {src.instance}")
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
    return disks, f"instance {src.project}/{src.zone}/{src.instance}"


def restore(gcp: GcpPrimitives, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment) -> RestoredResource:
    project, zone = env.details["project"], target.source.zone
    disks = [
        (restore_disk(gcp, ctx, target, env, zone, gcp_name(ctx, target.name, suffix=f"disk{i}"), snap), snap)
        for i, snap in enumerate(point.metadata["snapshots"])
    ]
    name = gcp_name(ctx, target.name)
    instance = gcp.create_resource(
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
        endpoint=instance_endpoint(instance),
    )


def wait_ready(gcp: GcpPrimitives, target: Any, resource: RestoredResource, timeout: float) -> RestoredResource:
    """Wait until the instance is RUNNING; an external IP on it is an ISOLATION_BROKEN finding."""
    d = resource.details
    name = d["instance"]

    def probe() -> Any:
        inst = gcp.get_resource("instances", {"project": d["project"], "zone": d["zone"], "instance": name}, f"instance {name}")
        if inst is None:
            raise ProviderError("RESTORE_FAILED", f"target {target.name}: instance {name} disappeared", retryable=True)
        if inst.status in ("TERMINATED", "STOPPED", "SUSPENDED"):
            raise ProviderError("RESTORE_FAILED", f"target {target.name}: instance {name} is {inst.status} instead of booting")
        if inst.status != "RUNNING":
            raise NotReadyYet(f"instance {name} is {inst.status}")
        return inst

    inst = poll_until(probe, timeout=timeout, what=f"instance {name}", initial=gcp.poll_initial, maximum=gcp.poll_max, sleep=gcp.sleep)
    out = resource.model_copy(deep=True)
    out.endpoint = instance_endpoint(inst)
    out.ready = True
    if out.endpoint["external_ip"]:
        out.findings.append(Finding(code="ISOLATION_BROKEN", target=target.name,
                                    message=f"instance {name} has an external IP {out.endpoint['external_ip']}"))
    return out


def instance_endpoint(inst: Any) -> dict[str, Any]:
    nic = inst.network_interfaces[0] if inst.network_interfaces else None
    external = [ac.nat_i_p for n in inst.network_interfaces for ac in n.access_configs if ac.nat_i_p]
    return {
        "project": link_parts(inst.self_link).get("projects", ""),
        "zone": link_parts(inst.zone).get("zones", ""),
        "instance": inst.name,
        "self_link": inst.self_link,
        "status": inst.status,
        "internal_ip": nic.network_i_p if nic else "",
        "host": nic.network_i_p if nic else "",
        "external_ip": ",".join(external),
        "network": link_parts(nic.network).get("networks", "") if nic else "",
        "subnetwork": link_parts(nic.subnetwork).get("subnetworks", "") if nic else "",
        "disks": ",".join(link_parts(d.source).get("disks", "") for d in inst.disks),
    }
