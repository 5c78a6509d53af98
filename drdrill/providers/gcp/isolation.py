"""The drill's isolated environment on GCP: one VPC network, one subnetwork, deny-all firewall
rules, no route out; and the proof, read back from the API.

In the isolation project (default: the first target's project):
- network   drdrill-<drill>-net       custom subnet mode, regional routing; the default route to
                                      default-internet-gateway GCP adds is deleted;
- subnet    drdrill-<drill>-subnet    isolation.network_cidr, Private Google Access off;
- firewall  drdrill-<drill>-deny-egress   EGRESS deny all to 0.0.0.0/0, priority 100;
            drdrill-<drill>-deny-ingress  INGRESS deny all from 0.0.0.0/0, priority 65534 (explicit);
            drdrill-<drill>-allow-ingress INGRESS allow from isolation.allow_ingress_from, 1000.
Each carries the drill's labels in its description (networks, subnetworks and firewall rules
have no labels). The worker cannot reach the network: with `isolation.probe.gcp` a probe instance
inside it runs the checks (probe.py), and the firewall lets it reach the Temporal frontend, its one
way out, and the subnetwork.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Optional

from drdrill.core.models import DrillContext, Environment, IsolationCheck, IsolationProof
from drdrill.providers.base import ProviderError
from drdrill.providers.gcp.labels import description_with_labels, gcp_labels, gcp_name, link_tail, owned_by, region_of
import drdrill.providers.gcp.probe as probes
from drdrill.providers.gcp.primitives import GcpPrimitives
from drdrill.providers.probes import TemporalEgress, egress_of, probe_details


def env_location(gcp: GcpPrimitives, isolation: Any, targets: list[Any]) -> tuple[str, str]:
    """The isolation project and region: the spec's, else the targets', else the provider's default."""
    project = getattr(isolation, "gcp_project", None) or (targets[0].source.project if targets else None) or gcp.project
    if not project:
        raise ProviderError("BAD_ISOLATION", "no GCP project for the isolated environment: set isolation.gcp_project or GOOGLE_CLOUD_PROJECT")
    region = getattr(isolation, "gcp_region", None)
    if not region:
        zones = [t.source.zone for t in targets if t.provider == "gcp.instance"] or [t.source.zone for t in targets]
        region = region_of(zones[0]) if zones else gcp.region
    if not region:
        raise ProviderError("BAD_ISOLATION", "no GCP region for the isolated environment: set isolation.gcp_region or DRDRILL_GCP_REGION")
    for t in targets:
        if t.provider == "gcp.instance" and region_of(t.source.zone) != region:
            raise ProviderError(
                "BAD_ISOLATION",
                f"target {t.name} is in zone {t.source.zone}, outside the drill's region {region}: an instance can only use a subnetwork of its own region",
            )
    return project, region


def _cidrs(isolation: Any) -> tuple[str, list[str]]:
    """The subnetwork's range and the validation sources, checked (bad input: a clear error)."""
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
    return cidr, sources


def create_isolation(gcp: GcpPrimitives, ctx: DrillContext, isolation: Any, targets: list[Any]) -> Environment:
    """The drill's isolated environment, each part created idempotently in the order GCP needs them:
    a custom-mode network without its default internet route, one subnetwork, firewall rules that
    deny egress and admit only the named sources, and the probe instance when the drill has one."""
    project, region = env_location(gcp, isolation, targets)
    gcp.env_projects.setdefault(ctx.drill_id, set()).add(project)
    cidr, sources = _cidrs(isolation)
    labels = gcp_labels(ctx)
    net_name = gcp_name(ctx, suffix="net")
    sub_name = gcp_name(ctx, suffix="subnet")
    what = f"drill {ctx.drill_id}"
    network = _network(gcp, ctx, project, net_name, labels)
    subnet = _subnetwork(gcp, ctx, project, region, sub_name, network.self_link, cidr, labels)
    # The default route to the internet gateway GCP adds to a new network goes.
    for route in _network_routes(gcp, project, network.self_link):
        if route.next_hop_gateway:
            gcp.delete_resource("routes", {"project": project, "route": route.name}, what=f"{what}: default internet route {route.name}")
    probe = isolation.probe.gcp
    egress = TemporalEgress.of(probe) if probe is not None else None
    firewalls = firewall_specs(ctx, network.self_link, sources, labels)
    if egress is not None:
        firewalls += probes.probe_firewalls(ctx, network.self_link, cidr, egress, labels)
    for fw in firewalls:
        gcp.create_resource(
            "firewalls",
            {"project": project, "firewall_resource": fw},
            what=f"{what}: firewall rule {fw['name']}",
            get_request={"project": project, "firewall": fw["name"]},
            drill_id=ctx.drill_id,
        )
    details = {
        "project": project,
        "region": region,
        "network": net_name,
        "network_self_link": network.self_link,
        "subnetwork": sub_name,
        "subnetwork_self_link": subnet.self_link,
        "cidr": cidr,
        "firewalls": [f["name"] for f in firewalls],
        "allow_ingress_from": sources,
        "reachable_from_worker": False,  # no route in or out: checks that need the network run in a probe
    }
    egress_text = "egress denied"
    if probe is not None:
        zone = probes.probe_zone(probe, region, targets)
        details.update(probe_details(ctx, "gcp", probe, probe_zone=zone))
        details["probe_instance"] = probes.launch_probe(gcp, ctx, project, zone, details, probe).name
        egress_text = f"egress denied but {egress} (Temporal), for probe {details['probe_instance']}"
    return Environment(
        family=gcp.family,
        drill_id=ctx.drill_id,
        id=net_name,
        description=f"VPC network {project}/{net_name} ({cidr} in {region}), no internet route, {egress_text}",
        details=details,
    )


def _network(gcp: GcpPrimitives, ctx: DrillContext, project: str, net_name: str, labels: dict) -> Any:
    """The drill's VPC network: custom subnet mode, regional routing (ISOLATION_BROKEN in auto mode)."""
    network = gcp.create_resource(
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
        what=f"drill {ctx.drill_id}: network {net_name}",
        get_request={"project": project, "network": net_name},
        drill_id=ctx.drill_id,
    )
    if network.auto_create_subnetworks:
        raise ProviderError("ISOLATION_BROKEN", f"network {net_name} is in auto subnet mode")
    return network


def _subnetwork(
    gcp: GcpPrimitives, ctx: DrillContext, project: str, region: str, sub_name: str, network_link: str, cidr: str, labels: dict
) -> Any:
    """The drill's one subnetwork, without private Google access."""
    return gcp.create_resource(
        "subnetworks",
        {
            "project": project,
            "region": region,
            "subnetwork_resource": {
                "name": sub_name,
                "network": network_link,
                "ip_cidr_range": cidr,
                "private_ip_google_access": False,
                "description": description_with_labels(f"drdrill isolated subnetwork for drill {ctx.drill_id}", labels),
            },
        },
        what=f"drill {ctx.drill_id}: subnetwork {sub_name}",
        get_request={"project": project, "region": region, "subnetwork": sub_name},
        drill_id=ctx.drill_id,
    )


def firewall_specs(ctx: DrillContext, network_link: str, sources: list[str], labels: dict) -> list[dict]:
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


def _network_routes(gcp: GcpPrimitives, project: str, network_link: str) -> list[Any]:
    tail = link_tail(network_link)
    return [r for r in gcp.compute("routes", "list", {"project": project, "max_results": 500}, what=f"routes of {tail}") if link_tail(r.network) == tail]


def verify_isolation(gcp: GcpPrimitives, ctx: DrillContext, env: Environment) -> IsolationProof:
    """Read the network, its subnetworks, routes and firewall rules back, one check each."""
    d = env.details
    project, net_name = d["project"], d["network"]
    proof = IsolationProof(family=gcp.family, environment_id=env.id)
    network = gcp.get_resource("networks", {"project": project, "network": net_name}, f"network {net_name}")
    if network is None:
        proof.checks.append(IsolationCheck(name="network exists", outcome="FAILED", detail=f"network {project}/{net_name} is missing"))
        return proof
    proof.checks += _network_checks(gcp, ctx, d, network)
    routes = _network_routes(gcp, project, network.self_link)
    proof.checks += _route_checks(routes)
    rules = [f for f in gcp.network_firewalls(project, network.self_link) if not f.disabled]
    proof.checks += _firewall_checks(rules, set(d.get("allow_ingress_from") or []), d.get("cidr") or "0.0.0.0/32", egress_of(env))
    if d.get("probe_queue"):
        proof.checks.append(probes.probe_check(gcp, env))
    return proof


def _network_checks(gcp: GcpPrimitives, ctx: DrillContext, d: dict, network: Any) -> list[IsolationCheck]:
    ours = owned_by(network, ctx.drill_id)
    checks = [
        IsolationCheck(name="network is the drill's own, custom subnet mode", outcome="PASSED" if ours and not network.auto_create_subnetworks else "FAILED",
                       detail=f"{d['network']}: auto_create_subnetworks={network.auto_create_subnetworks}, labelled={ours}"),
    ]
    peerings = [p.name for p in network.peerings]
    checks.append(IsolationCheck(name="no network peerings", outcome="FAILED" if peerings else "PASSED",
                                 detail=f"peerings: {', '.join(peerings)}" if peerings else "the network has no peerings"))
    expected = link_tail(d["subnetwork_self_link"])
    extra = [s for s in network.subnetworks if link_tail(s) != expected]
    subnet = gcp.get_resource("subnetworks", {"project": d["project"], "region": d["region"], "subnetwork": d["subnetwork"]}, f"subnetwork {d['subnetwork']}")
    sub_ok = subnet is not None and not extra and not subnet.private_ip_google_access
    checks.append(IsolationCheck(
        name="only the drill's subnetwork, no Private Google Access", outcome="PASSED" if sub_ok else "FAILED",
        detail=(f"{d['subnetwork']} {subnet.ip_cidr_range}" if subnet else f"{d['subnetwork']} is missing") + (f"; unexpected subnetworks: {extra}" if extra else ""),
    ))
    return checks


def _route_checks(routes: list[Any]) -> list[IsolationCheck]:
    """Only the subnet routes GCP maintains (next hop: this network) may exist."""
    outward = [r for r in routes if r.next_hop_gateway or r.next_hop_ip or r.next_hop_instance or r.next_hop_vpn_tunnel or r.next_hop_ilb
               or r.next_hop_peering or r.next_hop_interconnect_attachment or r.next_hop_hub]
    default = [r for r in routes if r.dest_range in ("0.0.0.0/0", "::/0")]
    return [
        IsolationCheck(name="no default internet route", outcome="FAILED" if default else "PASSED",
                       detail=f"default routes: {', '.join(r.name for r in default)}" if default else f"{len(routes)} route(s), none to 0.0.0.0/0"),
        IsolationCheck(name="no route leaves the network", outcome="FAILED" if outward else "PASSED",
                       detail=("routes with an outside next hop: " + ", ".join(f"{r.name} -> {r.dest_range}" for r in outward)) if outward else "every route's next hop is the drill's network"),
    ]


def _firewall_checks(rules: list[Any], allowed_sources: set[str], cidr: str, egress: Optional[TemporalEgress] = None) -> list[IsolationCheck]:
    """Egress denied to everything, ahead of any egress allow; ingress only from the spec's sources.
    With a probe (`egress`): egress also within the subnetwork, and exactly one rule out of it, to
    the Temporal frontend; ingress also from the subnetwork."""
    deny_egress = [f for f in rules if f.direction == "EGRESS" and f.denied and any(p.I_p_protocol == "all" for p in f.denied) and "0.0.0.0/0" in f.destination_ranges]
    best_deny = min((f.priority for f in deny_egress), default=None)
    allow_egress = [f for f in rules if f.direction == "EGRESS" and f.allowed and (best_deny is None or f.priority <= best_deny)]
    if egress is not None:
        allowed_sources = allowed_sources | {cidr}
        within, temporal, other = probes.classify_egress(allow_egress, cidr, egress)
        allow_egress = [f for f in allow_egress if f.name not in within + temporal]
    wide = []
    for f in rules:
        if f.direction == "INGRESS" and f.allowed:
            srcs = set(f.source_ranges)
            if f.source_tags or f.source_service_accounts or not srcs <= allowed_sources:
                wide.append(f"{f.name} from {sorted(srcs) or list(f.source_tags) or list(f.source_service_accounts)}")
    checks = []
    if egress is not None:
        way = f"{egress} by rule {', '.join(temporal)}" if temporal else f"MISSING: no rule allows {egress}"
        checks.append(IsolationCheck(
            name="one way out: the Temporal frontend", outcome="PASSED" if best_deny is not None and not other else "FAILED",
            detail=f"the one way out: {way} (the Temporal frontend the probe polls); inside the network ({cidr}): {', '.join(within) or 'none'}; "
            f"other ways out: {', '.join(other) or 'none'}",
        ))
    return checks + [
        IsolationCheck(
            name="egress denied", outcome="PASSED" if best_deny is not None and not allow_egress else "FAILED",
            detail=(f"deny all egress at priority {best_deny}" if best_deny is not None else "no rule denies all egress")
            + (f"; allowed ahead of it: {', '.join(f.name for f in allow_egress)}" if allow_egress else ""),
        ),
        IsolationCheck(
            name="ingress only from the validation sources", outcome="FAILED" if wide else "PASSED",
            detail=("rules allowing other sources: " + "; ".join(wide)) if wide else f"ingress allowed only from {sorted(allowed_sources) or 'nowhere'}",
        ),
    ]
