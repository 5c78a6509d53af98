"""AWS drills end to end against a real moto_server (HTTP), through the real workflow and worker.

After every test the `aws` fixture asserts that no resource carrying a drdrill tag is left.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from temporalio.client import WorkflowFailureError

from drdrill.core.models import TAG_DRILL_ID, TAG_EXPIRES_AT, TAG_TARGET, DrillContext
from drdrill.providers.aws.provider import AwsProvider
from drdrill.providers.base import ProviderError
from drdrill.providers.sweep import failed, sweep
from drdrill.providers.spec import parse_spec
from tests.conftest import wait_for_phase
from tests.moto_server import OTHER_REGION, REGION, aws, moto_endpoint  # noqa: F401
from tests.ops_helpers import created, recorded

DRDRILL = Path(sys.executable).parent / "drdrill"


def check(kind: str) -> str:
    """The argv of a `command` validation running `drdrill check KIND` (YAML flow list)."""
    return f'["{DRDRILL}", "check", "{kind}"]'


CHECK = check("aws-volume")  # for an aws.ebs target (tests/test_sweep_cli.py uses it too)


def drill(name: str, targets: str, validations: str, extra: str = "") -> str:
    return f"""
version: 1
name: {name}
objectives: {{rto: 30m, rpo: 1d}}
max_duration: 20m
isolation:
  network_cidr: 10.77.0.0/16
  allow_ingress_from: ["192.0.2.10/32"]
targets:
{targets}
validations:
{validations}
{extra}
"""


def tags_of(items) -> dict:
    return {t["Key"]: t["Value"] for t in items or []}


async def _inspect_during_hold(handle, world, seen: dict) -> None:
    """While the drill holds its environment: read moto's state directly, then release."""
    await wait_for_phase(handle, "hold")
    ec2 = world.ec2
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag-key", "Values": [TAG_DRILL_ID]}])["Vpcs"]
    seen["vpcs"] = vpcs
    vpc_id = vpcs[0]["VpcId"]
    flt = [{"Name": "vpc-id", "Values": [vpc_id]}]
    seen["igws"] = ec2.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vpc_id]}])["InternetGateways"]
    seen["nats"] = ec2.describe_nat_gateways(Filters=flt)["NatGateways"]
    seen["endpoints"] = ec2.describe_vpc_endpoints(Filters=flt)["VpcEndpoints"]
    seen["routes"] = [r for t in ec2.describe_route_tables(Filters=flt)["RouteTables"] for r in t["Routes"]]
    seen["sgs"] = [g for g in ec2.describe_security_groups(Filters=flt)["SecurityGroups"] if g["GroupName"] != "default"]
    seen["subnets"] = ec2.describe_subnets(Filters=flt)["Subnets"]
    seen["volumes"] = ec2.describe_volumes(Filters=[{"Name": f"tag:{TAG_DRILL_ID}", "Values": [vpcs[0]["Tags"][0]["Value"]]}])["Volumes"]
    seen["instances"] = [
        i
        for r in ec2.describe_instances(Filters=[{"Name": "tag-key", "Values": [TAG_DRILL_ID]}, {"Name": "instance-state-name", "Values": ["running"]}])["Reservations"]
        for i in r["Instances"]
    ]
    seen["volume_snapshots"] = {v["VolumeId"]: v.get("SnapshotId") for v in ec2.describe_volumes()["Volumes"]}
    seen["dbs"] = [
        d for d in world.rds.describe_db_instances()["DBInstances"] if d["DBInstanceIdentifier"].startswith("drdrill-")
    ]
    await handle.signal("release")


def assert_isolated(seen: dict, drill_id: str) -> None:
    (vpc,) = seen["vpcs"]
    assert vpc["CidrBlock"] == "10.77.0.0/16"
    vtags = tags_of(vpc["Tags"])
    assert vtags[TAG_DRILL_ID] == drill_id and TAG_EXPIRES_AT in vtags
    assert seen["igws"] == [] and seen["nats"] == [] and seen["endpoints"] == []
    assert all(r.get("GatewayId") == "local" for r in seen["routes"]), seen["routes"]
    (sg,) = seen["sgs"]
    assert sg["IpPermissionsEgress"] == []
    sources = [r["CidrIp"] for p in sg["IpPermissions"] for r in p.get("IpRanges", [])]
    assert sources == ["192.0.2.10/32"] and not any(p.get("UserIdGroupPairs") for p in sg["IpPermissions"])
    assert len(seen["subnets"]) == 2 and not any(s["MapPublicIpOnLaunch"] for s in seen["subnets"])
    for s in seen["subnets"]:
        assert tags_of(s["Tags"])[TAG_DRILL_ID] == drill_id


def test_ebs_drill_restores_latest_snapshot_into_isolated_az_and_leaves_nothing(drill_harness, aws):
    vol, snaps = aws.volume_with_snapshots(n=2)
    before = aws.inventory_ids()
    spec = drill(
        "aws-ebs",
        f"  - {{name: data, provider: aws.ebs, source: {{volume_id: {vol}}}, restore: {{timeout: 5m}}}}",
        f"  - {{type: command, name: volume-restored, target: data, argv: {CHECK}, timeout: 1m}}",
        "teardown: {hold: 30m}",
    )
    seen: dict = {}
    result = drill_harness.run(spec, providers={"aws": aws.provider}, during=lambda h: _inspect_during_hold(h, aws, seen), drill_id="ebs-drill-1")

    assert result.verdict == "PASSED", (result.findings, result.validations)
    assert result.recovery_points[0].id == snaps[-1]
    assert result.recovery_points[0].candidates == 2
    assert [v.outcome for v in result.validations] == ["PASSED"]
    assert "from " + snaps[-1] in result.validations[0].detail
    assert result.isolation[0].outcome == "PASSED"
    assert {c.name for c in result.isolation[0].checks} >= {"no internet gateway", "no NAT gateway", "no VPC peering", "no VPC endpoints", "only local routes", "security group"}
    assert_isolated(seen, "ebs-drill-1")
    (restored,) = seen["volumes"]
    assert restored["SnapshotId"] == snaps[-1]
    assert restored["AvailabilityZone"] == seen["subnets"][0]["AvailabilityZone"] or restored["AvailabilityZone"] in {s["AvailabilityZone"] for s in seen["subnets"]}
    assert tags_of(restored["Tags"])[TAG_TARGET] == "data"
    assert result.teardown[0].deleted and not result.teardown[0].refused
    assert aws.inventory_ids() == before


def test_ec2_drill_boots_from_root_snapshot_with_data_volume_from_same_point(drill_harness, aws):
    iid, snaps = aws.instance_with_snapshots()
    before = aws.inventory_ids()
    spec = drill(
        "aws-ec2",
        f"  - {{name: web, provider: aws.ec2, source: {{instance_id: {iid}, instance_type: t3.small}}, restore: {{timeout: 5m}}}}",
        f"  - {{type: command, name: instance-restored, target: web, argv: {check('aws-instance')}, timeout: 1m}}",
        "teardown: {hold: 30m}",
    )
    seen: dict = {}
    result = drill_harness.run(spec, providers={"aws": aws.provider}, during=lambda h: _inspect_during_hold(h, aws, seen), drill_id="ec2-drill-1")

    assert result.verdict == "PASSED", (result.findings, result.validations)
    point = result.recovery_points[0]
    assert point.metadata["root_snapshot"] == snaps["/dev/sda1"]
    assert point.metadata["data"] == {"/dev/sdf": snaps["/dev/sdf"]}
    assert_isolated(seen, "ec2-drill-1")
    (inst,) = seen["instances"]
    assert inst["SubnetId"] in {s["SubnetId"] for s in seen["subnets"]}
    assert not inst.get("PublicIpAddress")
    assert inst["InstanceType"] == "t3.small"
    assert [g["GroupId"] for n in inst["NetworkInterfaces"] for g in n["Groups"]] == [seen["sgs"][0]["GroupId"]]
    data_vol = next(m["Ebs"]["VolumeId"] for m in inst["BlockDeviceMappings"] if m["DeviceName"] == "/dev/sdf")
    assert seen["volume_snapshots"][data_vol] == snaps["/dev/sdf"]
    assert result.restored[0].endpoint["private_ip"].startswith("10.77.")
    assert aws.inventory_ids() == before


def test_rds_drill_snapshot_and_point_in_time_never_public_sql_honestly_unverified(drill_harness, aws):
    db, snap = aws.db_with_snapshot()
    created = aws.rds.describe_db_instances(DBInstanceIdentifier=db)["DBInstances"][0]["InstanceCreateTime"]
    # Asking for a time after LatestRestorableTime restores to LatestRestorableTime, and says so.
    at = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    before = aws.inventory_ids()
    targets = f"""  - {{name: shop, provider: aws.rds, source: {{db_instance_identifier: {db}, snapshot_type: manual}}, restore: {{timeout: 5m}}}}
  - name: shop-pitr
    provider: aws.rds
    source: {{db_instance_identifier: {db}, point_in_time: true}}
    recovery_point: {{rule: at, at: "{at}"}}
    restore: {{timeout: 5m}}"""
    validations = f"""  - {{type: command, name: db-restored, target: shop, argv: {check('aws-db')}, timeout: 1m}}
  - {{type: command, name: pitr-restored, target: shop-pitr, argv: {check('aws-db')}, timeout: 1m}}
  - {{type: sql, name: orders, target: shop, query: "SELECT count(*) FROM orders", expect: "> 0", timeout: 2s, required: false}}"""
    seen: dict = {}
    result = drill_harness.run(
        drill("aws-rds", targets, validations, "teardown: {hold: 30m}"),
        providers={"aws": aws.provider},
        during=lambda h: _inspect_during_hold(h, aws, seen),
        drill_id="rds-drill-1",
    )

    outcomes = {v.name: v.outcome for v in result.validations}
    assert outcomes["db-restored"] == "PASSED" and outcomes["pitr-restored"] == "PASSED"
    # Nothing listens at the restored endpoint under moto: the SQL check must not pass.
    assert outcomes["orders"] == "COULD_NOT_VERIFY"
    assert result.verdict == "PASSED", (result.findings, result.validations)
    points = {p.target: p for p in result.recovery_points}
    assert points["shop"].id == snap
    pitr = points["shop-pitr"]
    assert pitr.id.startswith(f"pitr:{db}@") and created.replace(microsecond=0) <= pitr.consistent_time <= result.declared
    assert pitr.consistent_time <= datetime.fromisoformat(pitr.metadata["latest_restorable_time"])
    assert pitr.metadata["restore_time"] == pitr.consistent_time.isoformat()
    (bounded,) = [f for f in result.findings if f.code == "RECOVERY_POINT_BOUNDED"]
    assert bounded.severity == "warning" and "LatestRestorableTime" in bounded.message
    assert_isolated(seen, "rds-drill-1")
    assert {d["DBInstanceIdentifier"] for d in seen["dbs"]} == {"drdrill-rds-drill-1-shop", "drdrill-rds-drill-1-shop-pitr"}
    for d in seen["dbs"]:
        assert d["PubliclyAccessible"] is False
        assert d["DBSubnetGroup"]["DBSubnetGroupName"] == "drdrill-rds-drill-1-db"
        assert [g["VpcSecurityGroupId"] for g in d["VpcSecurityGroups"]] == [seen["sgs"][0]["GroupId"]]
    shop = next(r for r in result.restored if r.target == "shop")
    assert shop.endpoint["dbname"] == "shop" and shop.endpoint["port"] == 5432 and "dsn" in shop.endpoint
    assert aws.inventory_ids() == before


def test_missing_snapshot_fails_with_a_clear_finding_and_creates_nothing(drill_harness, aws):
    vol = aws.ec2.create_volume(AvailabilityZone=aws.az(), Size=8)["VolumeId"]
    before = aws.inventory_ids()
    spec = drill(
        "aws-missing",
        f"  - {{name: data, provider: aws.ebs, source: {{volume_id: {vol}}}}}",
        f"  - {{type: command, target: data, argv: {CHECK}}}",
    )
    result = drill_harness.run(spec, providers={"aws": aws.provider})

    assert result.verdict == "FAILED"
    (finding,) = [f for f in result.findings if f.code == "RECOVERY_POINT_NOT_FOUND"]
    assert vol in finding.message and "no completed snapshot" in finding.message and finding.target == "data"
    assert result.restored == [] and result.environments == []
    assert aws.inventory_ids() == before


class FailingMidRestore(AwsProvider):
    """Creates the instance, then breaks: the restore activity fails after AWS created something."""

    def _restore_ec2(self, ctx, target, point, env, region):
        super()._restore_ec2(ctx, target, point, env, region)
        raise ProviderError("INJECTED_FAILURE", "the worker lost its network right after RunInstances")


def test_failure_in_the_middle_of_restore_still_tears_everything_down(drill_harness, aws):
    iid, _ = aws.instance_with_snapshots()
    vol, _ = aws.volume_with_snapshots(n=1)
    before = aws.inventory_ids()
    provider = FailingMidRestore(aws.session, endpoint_url=aws.url, region=REGION, poll_initial=0.05, poll_max=0.5)
    spec = drill(
        "aws-broken",
        f"""  - {{name: web, provider: aws.ec2, source: {{instance_id: {iid}}}}}
  - {{name: data, provider: aws.ebs, source: {{volume_id: {vol}}}}}""",
        f"  - {{type: command, target: data, argv: {CHECK}}}",
    )
    try:
        result = drill_harness.run(spec, providers={"aws": provider})
    finally:
        provider.close()

    assert result.verdict in ("FAILED", "ERROR")
    assert any(f.code == "INJECTED_FAILURE" and f.target == "web" for f in result.findings), result.findings
    report = result.teardown[0]
    assert any(d.startswith("ec2-instance ") for d in report.deleted), report
    assert any(d.startswith("ami ") for d in report.deleted) and any(d.startswith("vpc ") for d in report.deleted)
    assert aws.inventory_ids() == before


def test_sweep_removes_what_a_killed_drill_left_in_every_region(drill_harness, aws):
    vol, _ = aws.volume_with_snapshots(n=1)
    before = aws.inventory_ids()

    async def kill_while_holding(handle):
        await wait_for_phase(handle, "hold")
        await handle.terminate("worker host lost")  # no teardown runs: the drill is killed

    spec = drill(
        "aws-killed",
        f"  - {{name: data, provider: aws.ebs, source: {{volume_id: {vol}}}}}",
        f"  - {{type: command, target: data, argv: {CHECK}}}",
        "teardown: {hold: 1h}",
    )
    with pytest.raises(WorkflowFailureError):
        drill_harness.run(spec, providers={"aws": aws.provider}, during=kill_while_holding, drill_id="killed-1")
    # Something else left in the other region by another dead drill, plus a live drill's VPC.
    other = aws.client("ec2", OTHER_REGION)
    dead = other.create_vpc(
        CidrBlock="10.9.0.0/16",
        TagSpecifications=[{"ResourceType": "vpc", "Tags": [{"Key": TAG_DRILL_ID, "Value": "dead-2"}, {"Key": TAG_EXPIRES_AT, "Value": "2020-01-01T00:00:00Z"}]}],
    )["Vpc"]["VpcId"]
    live = aws.ec2.create_vpc(
        CidrBlock="10.8.0.0/16",
        TagSpecifications=[{"ResourceType": "vpc", "Tags": [{"Key": TAG_DRILL_ID, "Value": "live-3"}, {"Key": TAG_EXPIRES_AT, "Value": "2999-01-01T00:00:00Z"}]}],
    )["Vpc"]["VpcId"]
    recorded("dead-2", "aws", ("vpc", dead))
    recorded("live-3", "aws", ("vpc", live))
    now = datetime.now(timezone.utc)

    planned = sweep({"aws": aws.provider}, now=now, active_drill_ids={"live-3"}, dry_run=True, created=created("aws"))
    kinds = sorted((o.drill_id, o.kind) for o, _ in planned)
    assert ("killed-1", "volume") in kinds and ("killed-1", "vpc") in kinds and ("dead-2", "vpc") in kinds
    assert all(o.drill_id != "live-3" for o, _ in planned)
    assert all(str(a).endswith("would delete") for _, a in planned), planned
    assert len(aws.tagged()) == len(planned) + 1  # the dry run deleted nothing

    done = sweep({"aws": aws.provider}, now=now, active_drill_ids={"live-3"}, dry_run=False, created=created("aws"))
    assert not failed(done), done
    assert aws.tagged() == [f"vpc {live}"]
    # The live drill ends; its expiry passes: the next sweep takes it too.
    later = sweep(
        {"aws": aws.provider}, now=datetime(3000, 1, 1, tzinfo=timezone.utc), active_drill_ids={"live-3"}, dry_run=False, created=created("aws")
    )
    assert [(o.id, o.details["reason"]) for o, _ in later] == [(live, "expired")]
    assert aws.inventory_ids() == before - set()


# ---------------------------------------------------------------------- provider-level checks (no workflow)


def _ctx(drill_id: str) -> DrillContext:
    now = datetime.now(timezone.utc)
    return DrillContext(drill_id=drill_id, drill_name="t", declared=now, expires_at=now + timedelta(hours=3))


def _spec(targets: str, isolation: str = "{}"):
    return parse_spec(f"name: unit\nobjectives: {{rto: 1h, rpo: 1d}}\nisolation: {isolation}\ntargets:\n{targets}\n")


def test_recovery_point_rules_tags_and_staleness(aws):
    vol, snaps = aws.volume_with_snapshots(n=3)
    aws.ec2.create_tags(Resources=[snaps[0]], Tags=[{"Key": "backup", "Value": "weekly"}])
    p = aws.provider
    ctx = _ctx("rp-1")
    spec = _spec(
        f"""  - {{name: a, provider: aws.ebs, source: {{volume_id: {vol}, snapshot_tags: {{backup: weekly}}}}}}
  - {{name: b, provider: aws.ebs, source: {{volume_id: {vol}}}, recovery_point: {{rule: random, within: 1d}}}}
  - {{name: c, provider: aws.ebs, source: {{volume_id: {vol}}}, recovery_point: {{max_age: 0s}}}}
  - {{name: d, provider: aws.ebs, source: {{volume_id: {vol}}}, recovery_point: {{rule: at, at: "2001-01-01T00:00:00Z"}}}}"""
    )
    a, b, c, d = spec.targets
    assert p.find_recovery_point(ctx, a).id == snaps[0]
    picked = p.find_recovery_point(ctx, b)
    assert picked.id in snaps and p.find_recovery_point(ctx, b).id == picked.id  # seeded by the drill id
    stale = p.find_recovery_point(ctx, c)
    assert [f.code for f in stale.findings] == ["RECOVERY_POINT_STALE"]
    with pytest.raises(ProviderError) as err:
        p.find_recovery_point(ctx, d)
    assert err.value.code == "RECOVERY_POINT_NOT_FOUND"


def test_isolation_and_restore_are_idempotent_and_verify_catches_a_route_out(aws):
    vol, snaps = aws.volume_with_snapshots(n=1)
    p, ctx = aws.provider, _ctx("idem-1")
    runner = aws.ec2.create_security_group(GroupName="validation-runner", Description="where checks run from")["GroupId"]
    spec = _spec(f"  - {{name: data, provider: aws.ebs, source: {{volume_id: {vol}}}}}", f"{{allow_ingress_from: [{runner}]}}")
    (t,) = spec.targets
    point = p.find_recovery_point(ctx, t)
    env = p.create_isolation(ctx, spec.isolation, spec.targets)
    assert p.create_isolation(ctx, spec.isolation, spec.targets).details == env.details  # a retried activity
    sg = aws.ec2.describe_security_groups(GroupIds=[env.details["security_group_id"]])["SecurityGroups"][0]
    assert [g["GroupId"] for perm in sg["IpPermissions"] for g in perm["UserIdGroupPairs"]] == [runner]
    assert p.verify_isolation(ctx, env).outcome == "PASSED"
    first = p.restore(ctx, t, point, env)
    assert p.restore(ctx, t, point, env).id == first.id
    assert len(aws.ec2.describe_volumes(Filters=[{"Name": f"tag:{TAG_DRILL_ID}", "Values": ["idem-1"]}])["Volumes"]) == 1

    # Someone adds an internet gateway and a default route: verification must fail and say where.
    igw = aws.ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    aws.ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=env.id)
    rtb = aws.ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [env.id]}])["RouteTables"][0]["RouteTableId"]
    aws.ec2.create_route(RouteTableId=rtb, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    aws.ec2.authorize_security_group_egress(GroupId=env.details["security_group_id"], IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    proof = p.verify_isolation(ctx, env)
    failed_checks = {c.name: c.detail for c in proof.checks if c.outcome == "FAILED"}
    assert proof.outcome == "FAILED"
    assert igw in failed_checks["no internet gateway"]
    assert "0.0.0.0/0 via " + igw in failed_checks["only local routes"]
    assert "0.0.0.0/0" in failed_checks["security group"]

    aws.ec2.delete_route(RouteTableId=rtb, DestinationCidrBlock="0.0.0.0/0")
    aws.ec2.detach_internet_gateway(InternetGatewayId=igw, VpcId=env.id)
    aws.ec2.delete_internet_gateway(InternetGatewayId=igw)
    report = p.teardown(ctx, env)
    assert not report.refused
    again = p.teardown(ctx, env)  # a retried teardown: everything is already gone
    assert again.deleted == [] and not again.refused


def test_teardown_refuses_what_lacks_the_drill_tag(aws):
    vol, _ = aws.volume_with_snapshots(n=1)
    p, ctx = aws.provider, _ctx("refuse-1")
    spec = _spec(f"  - {{name: data, provider: aws.ebs, source: {{volume_id: {vol}}}}}")
    env = p.create_isolation(ctx, spec.isolation, spec.targets)
    sg = env.details["security_group_id"]
    aws.ec2.delete_tags(Resources=[sg], Tags=[{"Key": TAG_DRILL_ID}])  # no longer provably ours
    report = p.teardown(ctx, env)
    refused = {(o.kind, o.id): o for o in report.outcomes if o.result == "refused"}
    assert refused[("security-group", sg)].region == REGION and TAG_DRILL_ID in refused[("security-group", sg)].reason
    assert "kept" in refused[("vpc", env.id)].reason
    assert aws.ec2.describe_security_groups(GroupIds=[sg])["SecurityGroups"]  # left alone
    assert aws.ec2.describe_vpcs(VpcIds=[env.id])["Vpcs"]
    aws.ec2.delete_security_group(GroupId=sg)
    report = p.teardown(ctx, env)
    assert any(d.startswith("vpc ") for d in report.deleted) and not report.refused


@pytest.mark.parametrize("name", ["aws-ebs", "aws-ec2", "aws-rds"])
def test_example_drill_files_load(name):
    from drdrill.providers.spec import load_spec
    from tests.moto_server import REPO

    spec = load_spec(REPO / "drills" / f"{name}.yaml")
    assert spec.name == name and all(t.provider.startswith("aws.") for t in spec.targets)
    assert any(v.type == "command" for v in spec.validations)


def test_from_environment_reads_endpoint_and_regions():
    p = AwsProvider.from_environment(
        {"DRDRILL_AWS_ENDPOINT_URL": "http://127.0.0.1:4566", "AWS_DEFAULT_REGION": "eu-central-1", "DRDRILL_AWS_REGIONS": "us-east-1, eu-west-1"},
        {},
    )
    assert p.endpoint_url == "http://127.0.0.1:4566"
    assert p.region == "eu-central-1" and p.regions == ["eu-central-1", "us-east-1", "eu-west-1"]
    assert p.client("ec2").meta.endpoint_url == "http://127.0.0.1:4566"
    p.close()
