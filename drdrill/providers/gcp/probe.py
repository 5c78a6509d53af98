"""The drill's probe on GCP: an instance in the drill's subnetwork that runs the checks there.

`isolation.probe.gcp` boots it from an image with drdrill installed; its startup script (the
script in drdrill/providers/probes.py, run by the guest agent) starts `drdrill probe --task-queue
<the drill's probe queue>`. One interface in the drill's subnetwork, no access config (no external
IP), a boot disk deleted with it, labelled like everything the drill creates (and drdrill-role =
probe), so teardown and the sweep delete it before the network. With `service_account` it runs as
the account that may read the drill's secrets and nothing else (deploy/gcp/probe.md); without,
as none.

The drill's firewall gains, with a probe: traffic within the subnetwork both ways (the probe
reaching the restored instances: inside the network), and exactly one egress rule out of it, TCP to
the Temporal frontend, ahead of deny-egress. The isolation proof reads the rules back and passes
only if that is the only way out; it records the rule.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Optional

from drdrill.core.models import DrillContext, Environment, IsolationCheck
from drdrill.providers.gcp.labels import description_with_labels, gcp_labels, gcp_name, link_parts, link_tail
from drdrill.providers.gcp.primitives import GcpPrimitives
from drdrill.providers.probes import ROLE_PROBE, TemporalEgress, bootstrap_script, probe_queue

LABEL_ROLE = "drdrill-role"
EGRESS_PRIORITY = 90  # ahead of deny-egress (100)
SCOPE = "https://www.googleapis.com/auth/cloud-platform"  # what the account may do is its IAM roles' say


def probe_firewalls(ctx: DrillContext, network_link: str, cidr: str, egress: TemporalEgress, labels: dict) -> list[dict]:
    """The rules a probe needs: within the subnetwork both ways, and TCP out to Temporal only."""

    def desc(text: str) -> str:
        return description_with_labels(f"drdrill drill {ctx.drill_id}: {text}", labels)

    return [
        {
            "name": gcp_name(ctx, suffix="probe-inside-egress"), "network": network_link, "direction": "EGRESS",
            "priority": EGRESS_PRIORITY, "allowed": [{"I_p_protocol": "all"}], "destination_ranges": [cidr],
            "description": desc("probe: inside the drill's network"),
        },
        {
            "name": gcp_name(ctx, suffix="temporal-egress"), "network": network_link, "direction": "EGRESS",
            "priority": EGRESS_PRIORITY, "allowed": [{"I_p_protocol": "tcp", "ports": [str(egress.port)]}],
            "destination_ranges": [egress.cidr], "description": desc("probe: the Temporal frontend, the one way out"),
        },
        {
            "name": gcp_name(ctx, suffix="probe-inside-ingress"), "network": network_link, "direction": "INGRESS",
            "priority": 1000, "allowed": [{"I_p_protocol": "all"}], "source_ranges": [cidr],
            "description": desc("probe: inside the drill's network"),
        },
    ]


def classify_egress(allows: list[Any], cidr: str, egress: Optional[TemporalEgress]) -> tuple[list[str], list[str], list[str]]:
    """Egress allow rules ahead of deny-egress, as (inside the network, to Temporal, other)."""
    network = ipaddress.ip_network(cidr, strict=False)
    within, temporal, other = [], [], []
    for f in allows:
        ranges = list(f.destination_ranges)
        protocols = [(p.I_p_protocol, list(p.ports)) for p in f.allowed]
        if ranges and all(_within(r, network) for r in ranges) and not f.target_tags and not f.target_service_accounts:
            within.append(f.name)
        elif egress is not None and ranges == [egress.cidr] and protocols == [("tcp", [str(egress.port)])]:
            temporal.append(f.name)
        else:
            allowed = ", ".join(f"{proto}:{'/'.join(ports) or '*'}" for proto, ports in protocols)
            other.append(f"{f.name} ({allowed} to {', '.join(ranges) or '0.0.0.0/0'})")
    return within, temporal, other


def _within(cidr: str, network: Any) -> bool:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False
    return net.version == network.version and net.subnet_of(network)


def probe_zone(probe: Any, region: str, targets: list[Any]) -> str:
    """Where the probe runs: its `zone`, else the first target's zone in the drill's region, else <region>-b."""
    if probe.zone:
        return probe.zone
    zones = [t.source.zone for t in targets if getattr(t.source, "zone", "").startswith(region + "-")]
    return zones[0] if zones else f"{region}-b"


def launch_probe(gcp: GcpPrimitives, ctx: DrillContext, project: str, zone: str, details: dict, probe: Any) -> Any:
    """The probe's instance (the existing one on a retry: create_resource is idempotent)."""
    name = gcp_name(ctx, suffix="probe")
    labels = {**gcp_labels(ctx), LABEL_ROLE: ROLE_PROBE}
    script = bootstrap_script(
        ctx=ctx, family="gcp", how="startup script", queue=probe_queue(ctx, "gcp"), probe=probe, namespace=probe.temporal_namespace or "default"
    )
    image = probe.image.split("/compute/v1/", 1)[-1]
    body: dict[str, Any] = {
        "name": name,
        "machine_type": f"zones/{zone}/machineTypes/{probe.machine_type}",
        "labels": labels,
        "description": f"drdrill drill {ctx.drill_id}: the probe that runs the drill's checks inside its network",
        "disks": [{"boot": True, "auto_delete": True, "initialize_params": {"source_image": image, "labels": labels}}],
        # One interface in the drill's subnetwork, no access config: no external IP.
        "network_interfaces": [{"network": details["network_self_link"], "subnetwork": details["subnetwork_self_link"]}],
        "metadata": {"items": [{"key": "startup-script", "value": script}]},
        "can_ip_forward": False,
    }
    if probe.service_account:
        body["service_accounts"] = [{"email": probe.service_account, "scopes": [SCOPE]}]
    return gcp.create_resource(
        "instances",
        {"project": project, "zone": zone, "instance_resource": body},
        what=f"drill {ctx.drill_id}: probe instance {name}",
        get_request={"project": project, "zone": zone, "instance": name},
        drill_id=ctx.drill_id,
    )


def probe_check(gcp: GcpPrimitives, env: Environment) -> IsolationCheck:
    """The probe's one interface is in the drill's subnetwork, without an external IP."""
    name = "probe inside the network"
    d = env.details
    inst = gcp.get_resource("instances", {"project": d["project"], "zone": d["probe_zone"], "instance": d["probe_instance"]}, "the probe instance")
    if inst is None:
        return IsolationCheck(name=name, outcome="FAILED", detail=f"the probe instance {d['probe_instance']} is missing")
    nics = list(inst.network_interfaces)
    external = [ac.nat_i_p or "an access config" for n in nics for ac in n.access_configs]
    wrong = [n.subnetwork for n in nics if link_tail(n.subnetwork) != link_tail(d["subnetwork_self_link"])]
    ok = len(nics) == 1 and not external and not wrong
    where = ", ".join(f"{n.network_i_p} in {link_parts(n.subnetwork).get('subnetworks', '?')}" for n in nics) or "no interface"
    return IsolationCheck(
        name=name, outcome="PASSED" if ok else "FAILED",
        detail=f"probe {d['probe_instance']} ({inst.status}): {where}; external IPs: {external or 'none'}"
        + (f"; outside the drill's subnetwork: {wrong}" if wrong else ""),
    )
