"""`drdrill sweep` as a user runs it (the real command, in a subprocess) against AWS on moto_server:
it never touches a running drill's resources, it still removes what an ended drill left, and when
Temporal cannot be reached it takes only resources whose expiry has passed.

After every test the `aws` fixture asserts that no resource carrying a drdrill tag is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from app.temporal import free_port
from drdrill.core.models import TAG_DRILL_ID, TAG_EXPIRES_AT
from drdrill.providers.aws.provider import AwsProvider
from tests.conftest import wait_for_phase
from tests.moto_server import REGION, aws, moto_endpoint  # noqa: F401
from tests.ops_helpers import recorded, service, spec_of, unique
from tests.test_aws_drill import CHECK, drill

DRDRILL = str(Path(sys.executable).parent / "drdrill")


def sweep_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    """`drdrill sweep ARGS` with the test's environment (moto's endpoint and credentials) plus `env`."""
    return subprocess.run([DRDRILL, "sweep", *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=240)


def tagged_vpc(world, cidr: str, drill_id: str, expires: datetime, record: bool = True) -> str:
    """A VPC as a drill leaves it: tagged with its drill id and its expiry, and recorded in the
    evidence store as created by that drill (`record=False`: tagged by hand, never created by drdrill)."""
    tags = [{"Key": TAG_DRILL_ID, "Value": drill_id}, {"Key": TAG_EXPIRES_AT, "Value": f"{expires:%Y-%m-%dT%H:%M:%SZ}"}]
    vpc = world.ec2.create_vpc(CidrBlock=cidr, TagSpecifications=[{"ResourceType": "vpc", "Tags": tags}])["Vpc"]["VpcId"]
    if record:
        recorded(drill_id, "aws", ("vpc", vpc))
    return vpc


def evidence_of(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(Path(proc.stdout.split("evidence: ")[1].split()[0]).read_text())


def test_sweep_leaves_every_resource_of_a_held_drill(temporal_server, tmp_path, aws):
    vol, _ = aws.volume_with_snapshots(n=1)
    spec = spec_of(
        drill(
            unique("held"),
            f"  - {{name: data, provider: aws.ebs, source: {{volume_id: {vol}}}}}",
            f"  - {{type: command, name: volume-restored, target: data, argv: {CHECK}}}",
            "teardown: {hold: 20m}",
        )
    )

    async def go():
        async with service(temporal_server.address, tmp_path, providers={"aws": aws.provider}) as svc:
            handle = await svc.start(spec)
            await wait_for_phase(handle, "hold")
            held = aws.tagged()
            # The CLI runs in its own process; the test's worker (its event loop) must keep running.
            proc = await asyncio.to_thread(sweep_cli, svc.env(), "--provider", "aws")
            after = aws.tagged()
            await handle.signal("release")
            return handle.id, held, proc, after, await svc.result(handle)

    drill_id, held, proc, after, result = asyncio.run(go())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no orphans" in proc.stdout and "deleted" not in proc.stdout and drill_id not in proc.stdout
    assert "Temporal unreachable" not in proc.stderr
    # Every resource of the held drill survived the sweep: the VPC, its subnets, its security group, the volume.
    assert len(held) >= 3 and after == held
    assert drill_id in evidence_of(proc)["active_drill_ids"]
    # The drill, released, tears its environment down itself.
    assert result.verdict == "PASSED", result.findings
    assert result.teardown[0].deleted and aws.tagged() == []


def test_sweep_removes_what_an_ended_drill_left(temporal_server, tmp_path, aws):
    ended = unique("ended")
    # Not expired yet: only the drill having ended makes its VPC an orphan.
    vpc = tagged_vpc(aws, "10.9.0.0/16", ended, datetime.now(timezone.utc) + timedelta(hours=1))

    async def go():
        async with service(temporal_server.address, tmp_path, providers={"aws": aws.provider}) as svc:
            return await asyncio.to_thread(sweep_cli, svc.env(), "-p", "aws")

    proc = asyncio.run(go())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = [line for line in proc.stdout.splitlines() if vpc in line]
    assert row.split()[:4] == ["aws", "vpc", vpc, ended] and "deleted" in row
    assert aws.tagged() == []
    (action,) = evidence_of(proc)["actions"]
    assert action["orphan"]["id"] == vpc and action["outcome"]["result"] == "deleted"


def test_without_temporal_the_sweep_takes_only_expired_resources(tmp_path, aws):
    now = datetime.now(timezone.utc)
    expired = tagged_vpc(aws, "10.9.0.0/16", unique("expired"), now - timedelta(hours=1))
    # Its drill may still be running: nothing but an expiry in the past lets a blind sweep take it.
    current = tagged_vpc(aws, "10.8.0.0/16", unique("maybe-running"), now + timedelta(hours=1))

    env = {"TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}", "DRDRILL_STATE_DIR": str(tmp_path / "state")}
    proc = sweep_cli(env, "--provider", "aws")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Temporal unreachable: only expired resources considered" in proc.stderr
    (row,) = [line for line in proc.stdout.splitlines() if "vpc-" in line]
    assert expired in row and "deleted" in row
    assert aws.tagged() == [f"vpc {current}"]
    assert evidence_of(proc)["actions"][0]["orphan"]["id"] == expired
    aws.ec2.delete_vpc(VpcId=current)  # what a later sweep does once it expires; the fixture checks for leftovers


def test_delete_orphan_refuses_a_resource_whose_drill_tag_changed_after_listing(aws):
    now = datetime.now(timezone.utc)
    ended = unique("ended")
    claimed = tagged_vpc(aws, "10.9.0.0/16", ended, now + timedelta(hours=1))
    untagged = tagged_vpc(aws, "10.8.0.0/16", ended, now + timedelta(hours=1))
    orphans = {o.id: o for o in aws.provider.list_orphans(now, set())}
    assert set(orphans) == {claimed, untagged}
    # Between the listing and the deletion another drill claims one VPC; the other loses drdrill's tag.
    aws.ec2.create_tags(Resources=[claimed], Tags=[{"Key": TAG_DRILL_ID, "Value": "another-drill"}])
    aws.ec2.delete_tags(Resources=[untagged], Tags=[{"Key": TAG_DRILL_ID}])

    taken = aws.provider.delete_orphan(orphans[claimed])
    lost = aws.provider.delete_orphan(orphans[untagged])

    assert (taken.kind, taken.id, taken.result, taken.region) == ("vpc", claimed, "refused", REGION)
    assert "another-drill" in taken.reason and ended in taken.reason
    assert (lost.kind, lost.id, lost.result) == ("vpc", untagged, "refused")
    assert TAG_DRILL_ID in lost.reason and ended in lost.reason
    assert len(aws.ec2.describe_vpcs(VpcIds=[claimed, untagged])["Vpcs"]) == 2  # both left alone
    for vpc in (claimed, untagged):
        aws.ec2.delete_vpc(VpcId=vpc)  # what their owners do; the fixture checks for leftovers


class ClaimedWhileSweeping(AwsProvider):
    """The real provider, and another drill claiming `vpc` just after the sweep listed it as an
    orphan: the race the tag re-check before every deletion exists for, made to happen every time."""

    def __init__(self, world, vpc: str, claimant: str):
        super().__init__(world.session, endpoint_url=world.url, region=REGION, poll_initial=0.05, poll_max=0.5)
        self.world, self.vpc, self.claimant = world, vpc, claimant

    def list_orphans(self, now, active_drill_ids):
        orphans = super().list_orphans(now, active_drill_ids)
        self.world.ec2.create_tags(Resources=[self.vpc], Tags=[{"Key": TAG_DRILL_ID, "Value": self.claimant}])
        return orphans


def test_sweep_refuses_what_another_drill_claimed_and_exits_non_zero(temporal_server, tmp_path, aws):
    ended = unique("ended")
    vpc = tagged_vpc(aws, "10.9.0.0/16", ended, datetime.now(timezone.utc) + timedelta(hours=1))
    provider = ClaimedWhileSweeping(aws, vpc, claimant=unique("claimant"))

    async def go():
        async with service(temporal_server.address, tmp_path, providers={"aws": provider}) as svc:
            return await asyncio.to_thread(sweep_cli, svc.env(), "--provider", "aws")

    try:
        proc = asyncio.run(go())
    finally:
        provider.close()
    assert proc.returncode == 4, proc.stdout + proc.stderr
    output = proc.stdout + proc.stderr
    assert vpc in output and "refused" in output
    assert aws.ec2.describe_vpcs(VpcIds=[vpc])["Vpcs"]  # left to the drill that claimed it
    aws.ec2.delete_vpc(VpcId=vpc)  # what that drill's teardown does; the fixture checks for leftovers
