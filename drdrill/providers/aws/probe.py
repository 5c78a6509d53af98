"""The drill's probe on AWS: an EC2 instance in the drill's VPC that runs the checks there.

`isolation.probe.aws` boots it from an AMI or a launch template with drdrill installed; its user
data (drdrill/providers/probes.py) runs `drdrill probe --task-queue <the drill's probe queue>`. It
sits in the drill's security group, which then holds, besides the rules for validation sources:

- ingress and egress within the group itself (the probe reaching the restored resources: inside
  the network, not a way out);
- exactly one egress rule out of it: TCP to the Temporal frontend (`temporal_address`, /32).

The isolation proof reads the group back and passes only if those are all its egress rules; it
records the rule. The instance carries the drill's tags (and drdrill:role=probe) like everything
the drill creates, so teardown and the orphan sweep terminate it before the network. Its instance
profile (`instance_profile`) lets it read the drill's secrets and nothing else
(deploy/aws/probe-policy.json); the worker only passes it (iam:PassRole, deploy/aws/iam-policy.json).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from drdrill.core.models import DrillContext, IsolationCheck
from drdrill.providers.aws.clients import LIVE_INSTANCE_STATES, AwsBase, client_token, drill_filters, tag_list
from drdrill.providers.base import heartbeat
from drdrill.providers.probes import ROLE_PROBE, TAG_ROLE, TemporalEgress, bootstrap_script, probe_queue

DEFAULT_INSTANCE_TYPE = "t3.micro"


def probe_egress(sg_id: str, egress: TemporalEgress) -> list[dict]:
    """The security group's egress with a probe: within the group, and TCP to Temporal only."""
    return [
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": sg_id, "Description": "drdrill probe: inside the drill's network"}]},
        {
            "IpProtocol": "tcp",
            "FromPort": egress.port,
            "ToPort": egress.port,
            "IpRanges": [{"CidrIp": egress.cidr, "Description": "drdrill probe: the Temporal frontend, the one way out"}],
        },
    ]


def probe_ingress(sg_id: str) -> list[dict]:
    """The probe reaches the restored resources: ingress from the group itself."""
    return [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": sg_id, "Description": "drdrill probe: inside the drill's network"}]}]


def rules(perms: Iterable[dict]) -> set[tuple]:
    """Security group permissions as (protocol, from port, to port, peer) rules, one per peer."""
    out = set()
    for p in perms:
        proto = str(p.get("IpProtocol"))
        ports = (None, None) if proto == "-1" or p.get("FromPort") in (None, -1) else (p.get("FromPort"), p.get("ToPort"))
        peers = [r["CidrIp"] for r in p.get("IpRanges", [])] + [r["CidrIpv6"] for r in p.get("Ipv6Ranges", [])]
        peers += [g["GroupId"] for g in p.get("UserIdGroupPairs", [])] + [pl["PrefixListId"] for pl in p.get("PrefixListIds", [])]
        out |= {(proto, *ports, peer) for peer in peers}
    return out


def describe(rule: tuple) -> str:
    proto, low, high, peer = rule
    what = "all traffic" if proto == "-1" else f"{proto} {low}" if low == high else f"{proto} {low}-{high}"
    return f"{what} to {peer}"


class AwsProbes(AwsBase):
    """Launching the probe, and the part of the isolation proof that concerns its way out."""

    def _launch_probe(self, ctx: DrillContext, ec2: Any, details: dict, probe: Any) -> str:
        """The probe's instance (found by tag first: a retried activity finds the one it launched)."""
        found = self._probe_instances(ctx, ec2)
        if found:
            return found[0]["InstanceId"]
        queue = probe_queue(ctx, "aws")
        script = bootstrap_script(ctx=ctx, family="aws", how="user data", queue=queue, probe=probe, namespace=probe.temporal_namespace or "default")
        tags = tag_list({**ctx.tags(), TAG_ROLE: ROLE_PROBE, "Name": ctx.resource_name(suffix="probe", max_len=255)})
        params: dict[str, Any] = {
            "MinCount": 1,
            "MaxCount": 1,
            "SubnetId": details["subnets"][0]["id"],
            "SecurityGroupIds": [details["security_group_id"]],
            "UserData": script,
            "ClientToken": client_token(ctx, "probe", "run-instances"),
            "MetadataOptions": {"HttpTokens": "required"},  # IMDSv2 only: the instance profile's credentials
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}, {"ResourceType": "volume", "Tags": tags}],
        }
        if probe.ami:
            params["ImageId"] = probe.ami
            params["InstanceType"] = probe.instance_type or DEFAULT_INSTANCE_TYPE
        else:
            key = "LaunchTemplateId" if probe.launch_template.startswith("lt-") else "LaunchTemplateName"
            params["LaunchTemplate"] = {key: probe.launch_template}
            if probe.instance_type:
                params["InstanceType"] = probe.instance_type
        if probe.instance_profile:
            which = "Arn" if probe.instance_profile.startswith("arn:") else "Name"
            params["IamInstanceProfile"] = {which: probe.instance_profile}
        instance = self.call(ec2.run_instances, **params)["Instances"][0]
        heartbeat({"probe": instance["InstanceId"]})
        return instance["InstanceId"]

    def _probe_instances(self, ctx: DrillContext, ec2: Any) -> list[dict]:
        flt = drill_filters(ctx, [{"Name": f"tag:{TAG_ROLE}", "Values": [ROLE_PROBE]}, {"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}])
        return [i for r in self.pages(ec2, "describe_instances", "Reservations", Filters=flt) for i in r.get("Instances", [])]

    # ------------------------------------------------------------------ the proof

    @staticmethod
    def egress_check(sg: dict, egress: Optional[TemporalEgress]) -> tuple[bool, str]:
        """Without a probe: no egress at all. With one: within the group, and exactly the one rule
        to the Temporal frontend; any other rule is a second way out."""
        have = rules(sg.get("IpPermissionsEgress", []))
        allowed = rules(probe_egress(sg["GroupId"], egress)) if egress else set()
        extra = sorted(have - allowed, key=str)
        if egress is None:
            return not extra, f"egress rules: {[describe(r) for r in extra] or 'none'}"
        out = ("tcp", egress.port, egress.port, egress.cidr)
        inside = [describe(r) for r in sorted(have & allowed, key=str) if r != out]
        detail = (
            f"the one way out: {describe(out) if out in have else 'MISSING ' + describe(out)} (the Temporal frontend the probe polls); "
            f"inside the network: {inside or 'none'}; other egress rules: {[describe(r) for r in extra] or 'none'}"
        )
        return not extra, detail

    def probe_check(self, ec2: Any, ctx: DrillContext, details: dict) -> IsolationCheck:
        """The probe runs in the drill's subnets and security group, without a public address."""
        name = "probe inside the network"
        instances = self._probe_instances(ctx, ec2)
        if not instances:
            return IsolationCheck(name=name, outcome="FAILED", detail="the drill's probe instance is not running")
        inst = instances[0]
        subnets = {s["id"] for s in details.get("subnets", [])}
        groups = sorted(g["GroupId"] for n in inst.get("NetworkInterfaces", []) for g in n.get("Groups", [])) or sorted(
            g["GroupId"] for g in inst.get("SecurityGroups", [])
        )
        public = inst.get("PublicIpAddress")
        ok = inst.get("SubnetId") in subnets and groups == [details.get("security_group_id")] and not public
        return IsolationCheck(
            name=name,
            outcome="PASSED" if ok else "FAILED",
            detail=f"probe {inst['InstanceId']} ({inst['State']['Name']}) in subnet {inst.get('SubnetId')}, security groups {groups}, "
            f"public address: {public or 'none'}",
        )
