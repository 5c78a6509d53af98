"""The drill's isolated network on Azure: in the drill's tagged resource group, a VNet with one subnet
and no peering or gateway, behind an NSG that denies all outbound traffic and admits inbound traffic
only from `isolation.allow_ingress_from`; and the proof, read back, that it is so. The worker cannot
reach it: with `isolation.probe.azure` a probe VM inside it runs the checks (probe.py), and the NSG
lets it reach the Temporal frontend, its one way out."""

from __future__ import annotations

import ipaddress
from typing import Any, Optional

from drdrill.core.models import DrillContext, Environment, IsolationCheck, IsolationProof
from drdrill.providers.base import ProviderError, heartbeat, require_drill_tag
import drdrill.providers.azure.probe as probes
from drdrill.providers.azure.primitives import AzurePrimitives, parse_id, props, wire
from drdrill.providers.probes import TemporalEgress, egress_of, probe_details

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
ANYWHERE = ("*", "0.0.0.0/0", "Internet")


# ---------------------------------------------------------------- create


def _parse(isolation: Any) -> tuple[Any, Any, list[str]]:
    """(address space, subnet prefix, allowed ingress CIDRs) of the drill's isolation section."""
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
    return network, subnet_prefix, allowed


def _rule(name: str, priority: int, direction: str, access: str, source: str, description: str) -> dict:
    return {
        "name": name,
        "properties": {
            "priority": priority,
            "direction": direction,
            "access": access,
            "protocol": "*",
            "sourceAddressPrefix": source,
            "sourcePortRange": "*",
            "destinationAddressPrefix": "*",
            "destinationPortRange": "*",
            "description": description,
        },
    }


def _nsg_rules(allowed: list[str]) -> list[dict]:
    rules = [
        _rule(f"allow-validation-{i}", 100 + i, "Inbound", "Allow", cidr, "drdrill: validation traffic from the source the drill names")
        for i, cidr in enumerate(allowed)
    ]
    for direction in ("Inbound", "Outbound"):
        rules.append(_rule(f"deny-all-{direction.lower()}", DENY_PRIORITY, direction, "Deny", "*", "drdrill: no route to or from production"))
    return rules


def _vnet_body(location: str, tags: dict, network: Any, subnet_prefix: Any, nsg_id: str) -> dict:
    return {
        "location": location,
        "tags": tags,
        "properties": {
            "addressSpace": {"addressPrefixes": [str(network)]},
            "subnets": [
                {
                    "name": SUBNET_NAME,
                    "properties": {"addressPrefix": str(subnet_prefix), "networkSecurityGroup": {"id": nsg_id}, "defaultOutboundAccess": False},
                }
            ],
            "virtualNetworkPeerings": [],
            "enableDdosProtection": False,
        },
    }


def create_isolation(az: AzurePrimitives, ctx: DrillContext, isolation: Any, targets: list[Any]) -> Environment:
    sub = isolation.azure_subscription_id or az.subscription_id
    c = az.clients(sub)
    location = isolation.azure_location or az.location or _source_location(az, targets)
    network, subnet_prefix, allowed = _parse(isolation)
    rg = ctx.resource_name()
    tags = ctx.tags()

    existing = az.read("reading the drill's resource group", c.resource.resource_groups.get, rg)
    if existing is not None and not require_drill_tag(existing.get("tags"), ctx.drill_id):
        raise ProviderError("AZURE_NAME_TAKEN", f"resource group {rg} exists and was not created by this drill; not touching it")
    group = wire(az.sdk("creating the drill's resource group", c.resource.resource_groups.create_or_update, rg, {"location": location, "tags": tags}))
    heartbeat({"created": group.get("id")})

    probe = isolation.probe.azure
    egress = TemporalEgress.of(probe) if probe is not None else None
    rules = _nsg_rules(allowed) + (probes.probe_rules(str(subnet_prefix), egress) if egress else [])
    what = "creating the drill's NSG"
    nsg_body = {"location": location, "tags": tags, "properties": {"securityRules": rules}}
    nsg_id = az.wait(az.sdk(what, c.network.network_security_groups.begin_create_or_update, rg, NSG_NAME, nsg_body), what)["id"]
    what = "creating the drill's VNet"
    vnet_body = _vnet_body(location, tags, network, subnet_prefix, nsg_id)
    vnet = az.wait(az.sdk(what, c.network.virtual_networks.begin_create_or_update, rg, VNET_NAME, vnet_body), what)
    details: dict[str, Any] = {
        "subscription_id": sub,
        "resource_group": rg,
        "resource_group_id": group.get("id"),
        "location": location,
        "vnet_id": vnet["id"],
        "subnet_id": f"{vnet['id']}/subnets/{SUBNET_NAME}",
        "nsg_id": nsg_id,
        "address_space": str(network),
        "subnet_prefix": str(subnet_prefix),
        "allow_ingress_from": allowed,
        "reachable_from_worker": False,  # no peering or gateway: checks that need the VNet run in a probe
    }
    outbound = "NSG denying all outbound"
    if probe is not None:
        details.update(probe_details(ctx, "azure", probe))
        details["probe_vm_id"] = probes.launch_probe(az, c, ctx, rg, location, details, probe)
        outbound = f"NSG denying all outbound but {egress} (Temporal), for probe VM {probes.VM_NAME}"
    return Environment(
        family="azure",
        drill_id=ctx.drill_id,
        id=rg,
        description=f"resource group {rg} in {location}: VNet {network} without peering or gateway, subnet {subnet_prefix}, {outbound}",
        details=details,
    )


def _source_location(az: AzurePrimitives, targets: list[Any]) -> str:
    """The region of the first source disk or VM: the drill's resources must be where its snapshots are."""
    for t in targets:
        if t.provider == "azure.disk":
            d = parse_id(t.source.disk_id)
            got = az.read("reading the source disk", az.clients(d["sub"]).compute.disks.get, d["rg"], d["name"])
        elif t.provider == "azure.vm":
            d = parse_id(t.source.vm_id)
            got = az.read("reading the source VM", az.clients(d["sub"]).compute.virtual_machines.get, d["rg"], d["name"])
        else:
            continue
        if got and got.get("location"):
            return got["location"]
    raise ProviderError("BAD_ISOLATION", "no Azure location: set isolation.azure_location or DRDRILL_AZURE_LOCATION")


# ---------------------------------------------------------------- verify


class _Checks:
    def __init__(self) -> None:
        self.checks: list[IsolationCheck] = []

    def __call__(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(IsolationCheck(name=name, outcome="PASSED" if ok else "FAILED", detail=detail))


def verify_isolation(az: AzurePrimitives, ctx: DrillContext, env: Environment) -> IsolationProof:
    sub, rg = az.env_coords(env)
    c = az.clients(sub)
    check = _Checks()
    group = az.read("reading the resource group", c.resource.resource_groups.get, rg)
    check("resource group tagged", group is not None and require_drill_tag(group.get("tags"), ctx.drill_id),
          f"{rg} " + ("carries this drill's tag" if group else "does not exist"))
    vnet = az.read("reading the VNet", c.network.virtual_networks.get, rg, VNET_NAME)
    subnet = az.read("reading the subnet", c.network.subnets.get, rg, VNET_NAME, SUBNET_NAME)
    nsg = az.read("reading the NSG", c.network.network_security_groups.get, rg, NSG_NAME)
    resources = az.sdk("listing the resource group", lambda: [wire(r) for r in c.resource.resources.list_by_resource_group(rg)]) if group else []
    _check_network(check, vnet, resources)
    _check_subnet(check, subnet, nsg)
    egress = egress_of(env)
    if nsg is not None:
        rules = [dict(props(r), name=r.get("name")) for r in props(nsg).get("securityRules") or []]
        inside = env.details.get("subnet_prefix") or env.details.get("address_space") or "0.0.0.0/32"
        check("outbound denied", *_outbound_denied(rules, inside, egress))
        if egress is not None:
            check("one way out: the Temporal frontend", *_one_way_out(rules, inside, egress))
        sources = list(env.details.get("allow_ingress_from") or []) + ([inside] if egress is not None else [])
        check("inbound only from validation sources", *_inbound_limited(rules, sources))
    if env.details.get("probe_queue"):
        check.checks.append(probes.probe_check(az, c, rg, env))
    return IsolationProof(family="azure", environment_id=env.id, checks=check.checks)


def _check_network(check: _Checks, vnet: Any, resources: list[dict]) -> None:
    if vnet is None:
        check("no peering", False, f"VNet {VNET_NAME} is missing")
        return
    vp = props(vnet)
    peerings = vp.get("virtualNetworkPeerings") or []
    check("no peering", not peerings, "no VNet peering" if not peerings else "peered with " + ", ".join(
        (props(p).get("remoteVirtualNetwork") or {}).get("id", p.get("name", "?")) for p in peerings))
    gw_subnets = [s.get("name") for s in vp.get("subnets") or [] if (s.get("name") or "").lower() in GATEWAY_SUBNETS]
    forbidden = [r.get("id") for r in resources if (r.get("type") or "").lower() in FORBIDDEN_TYPES]
    check(
        "no gateway or public endpoint",
        not gw_subnets and not forbidden,
        "no gateway subnet, public IP, NAT gateway, firewall, load balancer or route table in the group"
        if not gw_subnets and not forbidden
        else "found: " + ", ".join([f"subnet {s}" for s in gw_subnets] + forbidden),
    )


def _check_subnet(check: _Checks, subnet: Any, nsg: Any) -> None:
    if subnet is None or nsg is None:
        check("subnet guarded by the drill's NSG", False, "the subnet or the NSG is missing")
        return
    sp = props(subnet)
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


def _any(rule: dict, key: str) -> bool:
    single = rule.get(f"{key}AddressPrefix")
    many = rule.get(f"{key}AddressPrefixes") or []
    return single in ANYWHERE or any(p in ANYWHERE for p in many)


def _outbound_allows(rules: list[dict]) -> tuple[Optional[int], list[dict]]:
    """The priority of the deny-all outbound rule (None: there is none) and the allows ahead of it."""
    out = [r for r in rules if (r.get("direction") or "").lower() == "outbound"]
    denies = [
        r for r in out
        if (r.get("access") or "").lower() == "deny" and r.get("protocol") == "*" and _any(r, "destination")
        and r.get("destinationPortRange") in ("*", None) and _any(r, "source")
    ]
    if not denies:
        return None, []
    deny_at = min(int(r["priority"]) for r in denies)
    return deny_at, [r for r in out if (r.get("access") or "").lower() == "allow" and int(r["priority"]) < deny_at]


def _outbound_denied(rules: list[dict], inside: str, egress: Optional[TemporalEgress]) -> tuple[bool, str]:
    """All outbound traffic denied, but (with a probe) within the subnet and to the Temporal frontend."""
    deny_at, allows = _outbound_allows(rules)
    if deny_at is None:
        return False, "no rule denies all outbound traffic (Azure's defaults allow the VNet and the internet)"
    if egress is None:
        if allows:
            return False, "outbound allowed before the deny-all rule by: " + ", ".join(r["name"] for r in allows)
        return True, f"all outbound traffic denied at priority {deny_at}, no allow rule before it"
    within, temporal, other = probes.classify_outbound(allows, inside, egress)
    if other:
        return False, f"outbound allowed before the deny-all rule (priority {deny_at}) by: " + ", ".join(other)
    return True, f"all outbound traffic denied at priority {deny_at}, except within {inside} ({', '.join(within) or 'no rule'}) and to Temporal ({', '.join(temporal) or 'no rule'})"


def _one_way_out(rules: list[dict], inside: str, egress: TemporalEgress) -> tuple[bool, str]:
    """With a probe: the only outbound rule leaving the subnet is the one to the Temporal frontend."""
    deny_at, allows = _outbound_allows(rules)
    within, temporal, other = probes.classify_outbound(allows, inside, egress)
    way = f"{egress} by rule {', '.join(temporal)}" if temporal else f"MISSING: no rule allows {egress}"
    return not other and deny_at is not None, (
        f"the one way out: {way} (the Temporal frontend the probe polls); inside the network ({inside}): {', '.join(within) or 'none'}; "
        f"other ways out: {', '.join(other) or 'none'}" + ("" if deny_at is not None else "; no deny-all outbound rule")
    )


def _inbound_limited(rules: list[dict], allowed: list[str]) -> tuple[bool, str]:
    inbound = [r for r in rules if (r.get("direction") or "").lower() == "inbound"]
    denies = [r for r in inbound if (r.get("access") or "").lower() == "deny" and r.get("protocol") == "*" and _any(r, "source") and _any(r, "destination")]
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
