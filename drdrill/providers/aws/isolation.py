"""The drill's isolated network on AWS: one VPC per drill, and the proof that it has no way out.

The VPC has no internet gateway, NAT, peering, VPC endpoint, VPN or transit gateway attachment;
two private subnets in two availability zones (an RDS subnet group needs two); one security group
without any egress rule and with ingress only from the sources the spec names for validation. With
`isolation.probe.aws` the probe (probe.py) runs in that group, which then also lets traffic within
itself, and has exactly one egress rule out: to the Temporal frontend. Every piece carries the
drill's tags at creation and is looked up by tag before it is created, so a retried activity finds
what the first attempt made. The worker never reaches the VPC: `reachable_from_worker` is False.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Iterable, Optional

from drdrill.core.models import TAG_DRILL_ID, DrillContext, Environment, IsolationCheck, IsolationProof
from drdrill.providers.aws.clients import AwsBase, AwsError, drill_filters, rds_identifier, tag_list, tags_of
from drdrill.providers.aws.probe import AwsProbes, probe_egress, probe_ingress, rules
from drdrill.providers.base import NotReadyYet, ProviderError, heartbeat, poll_until
from drdrill.providers.probes import TemporalEgress, egress_of, probe_details


class AwsIsolation(AwsProbes):
    """create_isolation and verify_isolation."""

    def create_isolation(self, ctx: DrillContext, isolation: Any, targets: list[Any]) -> Environment:
        region = self._env_region(isolation, targets)
        net = _network_block(isolation.network_cidr)
        ec2 = self.ec2(region)
        vpc_id = self._vpc(ctx, ec2, net)
        subnets = self._subnets(ctx, ec2, region, vpc_id, net)
        probe = isolation.probe.aws
        sg_id = self._security_group(ctx, ec2, vpc_id, isolation.allow_ingress_from, TemporalEgress.of(probe) if probe else None)
        details: dict[str, Any] = {
            "region": region,
            "vpc_id": vpc_id,
            "cidr": str(net),
            "subnets": subnets,
            "availability_zone": subnets[0]["az"],
            "security_group_id": sg_id,
            "allow_ingress_from": list(isolation.allow_ingress_from),
            "reachable_from_worker": False,  # no peering, gateway or route: checks that need the VPC run in a probe
        }
        if any(t.provider == "aws.rds" for t in targets):
            details["db_subnet_group"] = self._db_subnet_group(ctx, region, [s["id"] for s in subnets])
        egress = "without egress"
        if probe is not None:
            details.update(probe_details(ctx, "aws", probe))
            details["probe_instance_id"] = self._launch_probe(ctx, ec2, details, probe)
            egress = f"whose one egress rule out is {TemporalEgress.of(probe)} (Temporal), for probe {details['probe_instance_id']}"
        return Environment(
            family="aws",
            drill_id=ctx.drill_id,
            id=vpc_id,
            description=f"VPC {vpc_id} ({net}) in {region}: no internet gateway, NAT, peering or endpoints; "
            f"security group {sg_id} {egress}",
            details=details,
        )

    def _env_region(self, isolation: Any, targets: list[Any]) -> str:
        """One drill restores into one region: isolation.aws_region, else the targets' own."""
        regions = {t.source.region for t in targets if getattr(t.source, "region", None)}
        region = getattr(isolation, "aws_region", None)
        if region is None:
            if len(regions) > 1:
                raise ProviderError(
                    "BAD_SPEC",
                    f"aws targets are in several regions ({', '.join(sorted(regions))}); one drill restores into one "
                    "region: set isolation.aws_region and copy snapshots there first",
                )
            region = next(iter(regions), self.region)
        stray = sorted(r for r in regions if r != region)
        if stray:
            raise ProviderError(
                "BAD_SPEC",
                f"isolation.aws_region is {region} but targets' snapshots are in {', '.join(stray)}; "
                "cross-region restores are not supported",
            )
        return region

    def _vpc(self, ctx: DrillContext, ec2: Any, net: ipaddress.IPv4Network) -> str:
        """The drill's VPC (looked up by tag first: a retried activity finds the one it made), available."""
        vpcs = self.pages(ec2, "describe_vpcs", "Vpcs", Filters=drill_filters(ctx))
        if vpcs:
            vpc_id = vpcs[0]["VpcId"]
        else:
            vpc_id = self.call(ec2.create_vpc, CidrBlock=str(net), TagSpecifications=_tagged(ctx, "vpc", ctx.resource_name()))["Vpc"]["VpcId"]
        heartbeat({"vpc": vpc_id})

        def available() -> None:
            found = self.call(ec2.describe_vpcs, VpcIds=[vpc_id]).get("Vpcs", [])
            if not found or found[0].get("State") != "available":
                raise NotReadyYet(f"VPC {vpc_id} is {found[0].get('State') if found else 'not visible yet'}")

        poll_until(available, timeout=300, what=f"VPC {vpc_id}", **self.poll_schedule)
        return vpc_id

    def _subnets(self, ctx: DrillContext, ec2: Any, region: str, vpc_id: str, net: ipaddress.IPv4Network) -> list[dict]:
        """Two private subnets in the first two availability zones (an RDS subnet group needs two)."""
        zones = sorted(
            z["ZoneName"]
            for z in self.call(ec2.describe_availability_zones, Filters=[{"Name": "state", "Values": ["available"]}]).get("AvailabilityZones", [])
            if z.get("ZoneType", "availability-zone") == "availability-zone"
        )
        if not zones:
            raise ProviderError("AWS_UNAVAILABLE", f"no available availability zone in {region}", retryable=True)
        blocks = list(net.subnets(new_prefix=min(net.prefixlen + 2, 28)))
        flt = drill_filters(ctx, [{"Name": "vpc-id", "Values": [vpc_id]}])
        existing = {s["AvailabilityZone"]: s for s in self.pages(ec2, "describe_subnets", "Subnets", Filters=flt)}
        subnets: list[dict] = []
        for i, az in enumerate(zones[:2]):
            sn = existing.get(az) or self.call(
                ec2.create_subnet,
                VpcId=vpc_id,
                CidrBlock=str(blocks[i]),
                AvailabilityZone=az,
                TagSpecifications=_tagged(ctx, "subnet", f"{ctx.resource_name()}-{i}"),
            )["Subnet"]
            subnets.append({"id": sn["SubnetId"], "az": az, "cidr": sn["CidrBlock"]})
        heartbeat({"subnets": [s["id"] for s in subnets]})
        return subnets

    def _security_group(self, ctx: DrillContext, ec2: Any, vpc_id: str, sources: list[str], egress: Optional[TemporalEgress] = None) -> str:
        """The drill's security group, found or created, shaped to: no egress; ingress only from
        `sources`. With a probe (`egress`): also within the group, and one egress rule to Temporal."""
        sg_name = ctx.resource_name(suffix="sg", max_len=255)
        by_name = [{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": [sg_name]}]
        sgs = self.pages(ec2, "describe_security_groups", "SecurityGroups", Filters=drill_filters(ctx, by_name))
        if not sgs:
            try:
                self.call(
                    ec2.create_security_group,
                    GroupName=sg_name,
                    Description=f"drdrill drill {ctx.drill_id}: no egress, ingress only for validation",
                    VpcId=vpc_id,
                    TagSpecifications=_tagged(ctx, "security-group", sg_name),
                )
            except AwsError as exc:
                if exc.aws_code != "InvalidGroup.Duplicate":
                    raise
            sgs = self.pages(ec2, "describe_security_groups", "SecurityGroups", Filters=by_name)
        sg = sgs[0]
        sg_id = sg["GroupId"]
        self._shape_egress(ec2, sg, probe_egress(sg_id, egress) if egress else [])
        wanted = ingress_permissions(sources) + (probe_ingress(sg_id) if egress else [])
        have = perm_sources(sg.get("IpPermissions", []))
        missing = [p for p in wanted if not perm_sources([p]) <= have]
        unwanted = [p for p in _strip_perms(sg.get("IpPermissions", [])) if not perm_sources([p]) <= perm_sources(wanted)]
        if unwanted:
            self.call(ec2.revoke_security_group_ingress, GroupId=sg_id, IpPermissions=unwanted)
        if missing:
            try:
                self.call(ec2.authorize_security_group_ingress, GroupId=sg_id, IpPermissions=missing)
            except AwsError as exc:
                if exc.aws_code != "InvalidPermission.Duplicate":
                    raise
        return sg_id

    def _shape_egress(self, ec2: Any, sg: dict, wanted: list[dict]) -> None:
        """Revoke every egress rule not `wanted` (a new group's allow-all first), add what is missing."""
        allowed = rules(wanted)
        have = _strip_perms(sg.get("IpPermissionsEgress", []))
        unwanted = [p for p in have if not rules([p]) <= allowed]
        kept = rules(p for p in have if p not in unwanted)
        missing = [p for p in wanted if not rules([p]) <= kept]
        if unwanted:
            self.call(ec2.revoke_security_group_egress, GroupId=sg["GroupId"], IpPermissions=unwanted)
        if missing:
            try:
                self.call(ec2.authorize_security_group_egress, GroupId=sg["GroupId"], IpPermissions=missing)
            except AwsError as exc:
                if exc.aws_code != "InvalidPermission.Duplicate":
                    raise

    def _db_subnet_group(self, ctx: DrillContext, region: str, subnet_ids: list[str]) -> str:
        """The drill's DB subnet group (RDS names it: a group of that name must carry this drill's tag)."""
        rds = self.rds(region)
        name = rds_identifier(ctx.resource_name(suffix="db", max_len=255))
        try:
            groups = self.call(rds.describe_db_subnet_groups, DBSubnetGroupName=name).get("DBSubnetGroups", [])
        except AwsError as exc:
            if not exc.not_found:
                raise
            groups = []
        if groups:
            if self._rds_tags(region, groups[0]).get(TAG_DRILL_ID) != ctx.drill_id:
                raise ProviderError("NAME_CONFLICT", f"DB subnet group {name} exists but is not this drill's (no {TAG_DRILL_ID}={ctx.drill_id} tag)")
            return name
        try:
            self.call(
                rds.create_db_subnet_group,
                DBSubnetGroupName=name,
                DBSubnetGroupDescription=f"drdrill drill {ctx.drill_id}: isolated private subnets",
                SubnetIds=subnet_ids,
                Tags=tag_list(ctx.tags()),
            )
        except AwsError as exc:
            if exc.aws_code not in ("DBSubnetGroupAlreadyExists", "DBSubnetGroupAlreadyExistsFault"):
                raise
        return name

    # ------------------------------------------------------------------ verification

    def verify_isolation(self, ctx: DrillContext, env: Environment) -> IsolationProof:
        """Read the VPC back and record one check per way out; a check AWS would not answer is
        COULD_NOT_VERIFY, never a pass."""
        region = env.details.get("region", self.region)
        inspection = _VpcInspection(self, self.ec2(region), ctx, env)
        proof = IsolationProof(family="aws", environment_id=inspection.vpc_id)
        if env.details.get("probe_queue"):
            proof.checks.append(self._checked(lambda: self.probe_check(inspection.ec2, ctx, env.details)))
        for name, check in inspection.checks():
            try:
                ok, detail = check()
                proof.checks.append(IsolationCheck(name=name, outcome="PASSED" if ok else "FAILED", detail=detail))
            except ProviderError as exc:
                proof.checks.append(IsolationCheck(name=name, outcome="COULD_NOT_VERIFY", detail=exc.message))
            heartbeat({"checked": name})
        return proof

    @staticmethod
    def _checked(check: Callable[[], IsolationCheck]) -> IsolationCheck:
        try:
            return check()
        except ProviderError as exc:
            return IsolationCheck(name="probe inside the network", outcome="COULD_NOT_VERIFY", detail=exc.message)


class _VpcInspection:
    """The read-only look at one drill VPC: each method is one isolation check, (passed, detail)."""

    def __init__(self, provider: AwsBase, ec2: Any, ctx: DrillContext, env: Environment):
        self.p, self.ec2, self.ctx = provider, ec2, ctx
        self.details = env.details
        self.vpc_id = env.details.get("vpc_id", env.id)
        self.in_vpc = [{"Name": "vpc-id", "Values": [self.vpc_id]}]
        self.egress = egress_of(env)

    def checks(self) -> list[tuple[str, Callable[[], tuple[bool, str]]]]:
        one_way_out = [("one way out: the Temporal frontend", self.way_out)] if self.egress else []
        return one_way_out + [
            ("vpc", self.vpc),
            ("no internet gateway", self.internet_gateways),
            ("no NAT gateway", self.nat_gateways),
            ("no VPC peering", self.peering),
            ("no VPC endpoints", self.endpoints),
            ("no VPN or transit gateway", self.vpn_and_transit),
            ("only local routes", self.routes),
            ("private subnets", self.subnets),
            ("security group", self.security_group),
        ]

    def pages(self, op: str, key: str, **kwargs: Any) -> list[dict]:
        return self.p.pages(self.ec2, op, key, **kwargs)

    def _attached(self, gateways: list[dict], key: str = "Attachments") -> list[dict]:
        return [g for g in gateways if any(a.get("VpcId") == self.vpc_id for a in g.get(key, []))]

    def vpc(self) -> tuple[bool, str]:
        vpcs = self.p.call(self.ec2.describe_vpcs, VpcIds=[self.vpc_id]).get("Vpcs", [])
        if not vpcs:
            return False, f"VPC {self.vpc_id} not found"
        vpc = vpcs[0]
        tags = tags_of(vpc.get("Tags"))
        cidrs = [
            a["CidrBlock"] for a in vpc.get("CidrBlockAssociationSet", []) if a.get("CidrBlockState", {}).get("State", "associated") == "associated"
        ] or [vpc.get("CidrBlock")]
        v6 = [a.get("Ipv6CidrBlock") for a in vpc.get("Ipv6CidrBlockAssociationSet", []) or []]
        ok = tags.get(TAG_DRILL_ID) == self.ctx.drill_id and not v6
        return ok, f"VPC {self.vpc_id} tagged {TAG_DRILL_ID}={tags.get(TAG_DRILL_ID)}; CIDR {', '.join(cidrs)}; IPv6 blocks: {v6 or 'none'}"

    def internet_gateways(self) -> tuple[bool, str]:
        igw = self._attached(self.pages("describe_internet_gateways", "InternetGateways", Filters=[{"Name": "attachment.vpc-id", "Values": [self.vpc_id]}]))
        eigw = self._attached(self.pages("describe_egress_only_internet_gateways", "EgressOnlyInternetGateways"))
        ids = [g["InternetGatewayId"] for g in igw] + [g["EgressOnlyInternetGatewayId"] for g in eigw]
        return not ids, f"internet gateways and egress-only internet gateways attached to {self.vpc_id}: {ids or 'none'}"

    def nat_gateways(self) -> tuple[bool, str]:
        found = self.pages("describe_nat_gateways", "NatGateways", Filters=self.in_vpc)
        live = [g["NatGatewayId"] for g in found if g.get("VpcId", self.vpc_id) == self.vpc_id and g.get("State") not in ("deleted", "failed")]
        return not live, f"NAT gateways in {self.vpc_id}: {live or 'none'}"

    def peering(self) -> tuple[bool, str]:
        seen = []
        for side in ("requester-vpc-info.vpc-id", "accepter-vpc-info.vpc-id"):
            for p in self.pages("describe_vpc_peering_connections", "VpcPeeringConnections", Filters=[{"Name": side, "Values": [self.vpc_id]}]):
                ends = {p.get("RequesterVpcInfo", {}).get("VpcId"), p.get("AccepterVpcInfo", {}).get("VpcId")}
                if self.vpc_id in ends and p.get("Status", {}).get("Code") not in ("deleted", "rejected", "failed", "expired"):
                    seen.append(p["VpcPeeringConnectionId"])
        return not seen, f"VPC peering connections of {self.vpc_id} (requester or accepter, not deleted/rejected): {sorted(set(seen)) or 'none'}"

    def endpoints(self) -> tuple[bool, str]:
        found = self.pages("describe_vpc_endpoints", "VpcEndpoints", Filters=self.in_vpc)
        dead = ("deleted", "deleting", "rejected", "failed")
        live = [e["VpcEndpointId"] for e in found if e.get("VpcId") == self.vpc_id and e.get("State", "").lower() not in dead]
        return not live, f"VPC endpoints in {self.vpc_id}: {live or 'none'}"

    def vpn_and_transit(self) -> tuple[bool, str]:
        attached = [{"Name": "attachment.vpc-id", "Values": [self.vpc_id]}]
        vgws = self.p.call(self.ec2.describe_vpn_gateways, Filters=attached).get("VpnGateways", [])
        vgw = [
            g["VpnGatewayId"]
            for g in vgws
            if any(a.get("VpcId") == self.vpc_id and a.get("State") in ("attaching", "attached") for a in g.get("VpcAttachments", []))
        ]
        tgws = self.pages("describe_transit_gateway_vpc_attachments", "TransitGatewayVpcAttachments", Filters=self.in_vpc)
        dead = ("deleted", "deleting", "rejected", "failed")
        tgw = [a["TransitGatewayAttachmentId"] for a in tgws if a.get("VpcId") == self.vpc_id and a.get("State") not in dead]
        return not (vgw or tgw), f"virtual private gateways attached: {vgw or 'none'}; transit gateway attachments: {tgw or 'none'}"

    def routes(self) -> tuple[bool, str]:
        tables = self.pages("describe_route_tables", "RouteTables", Filters=self.in_vpc)
        if not tables:
            return False, f"no route table found for {self.vpc_id}"
        bad, n = [], 0
        for t in tables:
            for r in t.get("Routes", []):
                n += 1
                if r.get("GatewayId") != "local":
                    dest = r.get("DestinationCidrBlock") or r.get("DestinationIpv6CidrBlock") or r.get("DestinationPrefixListId")
                    bad.append(f"{t['RouteTableId']}: {dest} via {_route_target(r)}")
        ids = [t["RouteTableId"] for t in tables]
        return not bad, f"{len(tables)} route table(s) {ids}, {n} route(s); non-local routes: {bad or 'none'}"

    def subnets(self) -> tuple[bool, str]:
        found = self.pages("describe_subnets", "Subnets", Filters=self.in_vpc)
        public = [s["SubnetId"] for s in found if s.get("MapPublicIpOnLaunch") or s.get("AssignIpv6AddressOnCreation")]
        return not public, f"subnets {[s['SubnetId'] for s in found]}; assigning public addresses on launch: {public or 'none'}"

    def _group(self) -> dict:
        sg_id = self.details.get("security_group_id")
        if not sg_id:
            raise ProviderError("BAD_STATE", "the environment names no security group")
        sgs = self.p.call(self.ec2.describe_security_groups, GroupIds=[sg_id]).get("SecurityGroups", [])
        if not sgs:
            raise ProviderError("BAD_STATE", f"security group {sg_id} not found")
        return sgs[0]

    def security_group(self) -> tuple[bool, str]:
        """Ingress only from the validation sources (and, with a probe, the group itself); no
        egress, or with a probe the egress `way_out` judges."""
        try:
            sg = self._group()
        except ProviderError as exc:
            return False, exc.message
        sg_id = sg["GroupId"]
        egress_ok, egress = AwsProbes.egress_check(sg, None) if self.egress is None else (True, "see 'one way out: the Temporal frontend'")
        allowed = perm_sources(ingress_permissions(self.details.get("allow_ingress_from", [])))
        if self.egress is not None:
            allowed.add(sg_id)
        ingress_sources = perm_sources(sg.get("IpPermissions", []))
        extra = sorted(ingress_sources - allowed)
        ok = egress_ok and not extra and sg.get("VpcId") == self.vpc_id
        return ok, (
            f"security group {sg_id} in {sg.get('VpcId')}: {egress}; "
            f"ingress sources: {sorted(ingress_sources) or 'none'} (allowed: {sorted(allowed) or 'none'}); not allowed: {extra or 'none'}"
        )

    def way_out(self) -> tuple[bool, str]:
        """With a probe: the security group's egress is within itself and one rule to Temporal."""
        try:
            sg = self._group()
        except ProviderError as exc:
            return False, exc.message
        ok, detail = AwsProbes.egress_check(sg, self.egress)
        return ok, f"security group {sg['GroupId']}: {detail}"


# ---------------------------------------------------------------------- helpers

_ROUTE_TARGETS = (
    "GatewayId",
    "NatGatewayId",
    "VpcPeeringConnectionId",
    "TransitGatewayId",
    "NetworkInterfaceId",
    "InstanceId",
    "EgressOnlyInternetGatewayId",
    "CarrierGatewayId",
    "LocalGatewayId",
    "CoreNetworkArn",
)


def _route_target(route: dict) -> str:
    return next((route[k] for k in _ROUTE_TARGETS if route.get(k)), "?")


def _network_block(cidr: str) -> ipaddress.IPv4Network:
    """isolation.network_cidr as a VPC accepts it (IPv4, /16 to /26), or BAD_SPEC saying so."""
    try:
        net = ipaddress.ip_network(cidr)
    except ValueError as exc:
        raise ProviderError("BAD_SPEC", f"isolation.network_cidr {cidr!r}: {exc}") from exc
    if net.version != 4 or not (16 <= net.prefixlen <= 26):
        raise ProviderError("BAD_SPEC", f"isolation.network_cidr {net} must be an IPv4 block between /16 and /26 (a VPC's limits)")
    return net  # type: ignore[return-value]


def _tagged(ctx: DrillContext, resource_type: str, name: str) -> list[dict]:
    """TagSpecifications: the drill's tags, and a Name, on the resource at creation."""
    return [{"ResourceType": resource_type, "Tags": tag_list({**ctx.tags(), "Name": name})}]


def ingress_permissions(sources: Iterable[str]) -> list[dict]:
    """Security group rules letting in every protocol from each source (a CIDR or a security group)."""
    perms = []
    for src in sources:
        if src.startswith("sg-"):
            perms.append({"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": src, "Description": "drdrill validation"}]})
        else:
            net = ipaddress.ip_network(src, strict=False)
            if net.version == 6:
                perms.append({"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": str(net), "Description": "drdrill validation"}]})
            else:
                perms.append({"IpProtocol": "-1", "IpRanges": [{"CidrIp": str(net), "Description": "drdrill validation"}]})
    return perms


def perm_sources(perms: Iterable[dict]) -> set[str]:
    """Every source (CIDR, security group, prefix list) the rules let in."""
    out = set()
    for p in perms:
        out |= {r["CidrIp"] for r in p.get("IpRanges", [])}
        out |= {r["CidrIpv6"] for r in p.get("Ipv6Ranges", [])}
        out |= {g["GroupId"] for g in p.get("UserIdGroupPairs", [])}
        out |= {pl["PrefixListId"] for pl in p.get("PrefixListIds", [])}
    return out


def _strip_perms(perms: Iterable[dict]) -> list[dict]:
    """Permissions as Revoke* accepts them (read-only fields removed)."""
    out = []
    for p in perms:
        q = {k: p[k] for k in ("IpProtocol", "FromPort", "ToPort") if k in p}
        for key, fields in (("IpRanges", ("CidrIp",)), ("Ipv6Ranges", ("CidrIpv6",)), ("PrefixListIds", ("PrefixListId",)), ("UserIdGroupPairs", ("GroupId",))):
            if p.get(key):
                q[key] = [{f: r[f] for f in fields if f in r} for r in p[key]]
        out.append(q)
    return out
