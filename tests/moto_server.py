"""A real moto_server (HTTP on a free loopback port) for the AWS provider tests.

Session-scoped: one server, reset between tests. Fixtures:
- `moto_endpoint`: the server's URL; also sets fake credentials and DRDRILL_AWS_ENDPOINT_URL in
  os.environ so subprocesses (command validations) reach it too.
- `aws`: an `AwsWorld` per test: a provider wired to the server plus helpers to build source
  resources; after the test it asserts that nothing carrying a drdrill tag is left, then resets.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

import boto3
import pytest

from app.temporal import free_port
from drdrill.core.models import TAG_DRILL_ID
from drdrill.providers.aws.provider import AwsProvider

REGION = "us-east-1"
OTHER_REGION = "eu-west-1"


def _wait_up(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/moto-api/data.json", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"moto_server at {url} did not answer within {timeout}s")
        time.sleep(delay)  # allowed: polling for the moto_server subprocess to listen (a condition)
        delay = min(delay * 1.5, 0.5)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory) -> str:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MOTO_EC2_LOAD_DEFAULT_AMIS": "true"},
        )
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "DRDRILL_AWS_ENDPOINT_URL")}
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "DRDRILL_AWS_ENDPOINT_URL": url,
        }
    )
    try:
        _wait_up(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def reset(url: str) -> None:
    req = urllib.request.Request(url + "/moto-api/reset", method="POST")
    with urllib.request.urlopen(req, timeout=10):
        pass


class AwsWorld:
    """The provider under test, raw clients for arranging sources and reading moto's state."""

    def __init__(self, url: str):
        self.url = url
        self.session = boto3.session.Session(region_name=REGION)
        self.provider = AwsProvider(self.session, endpoint_url=url, region=REGION, regions=[REGION, OTHER_REGION], poll_initial=0.05, poll_max=0.5)
        self.ec2 = self.session.client("ec2", endpoint_url=url, region_name=REGION)
        self.rds = self.session.client("rds", endpoint_url=url, region_name=REGION)

    def client(self, service: str, region: str = REGION):
        return self.session.client(service, endpoint_url=self.url, region_name=region)

    # ------------------------------------------------------------ arranging sources

    def az(self) -> str:
        return sorted(z["ZoneName"] for z in self.ec2.describe_availability_zones()["AvailabilityZones"])[0]

    def volume_with_snapshots(self, n: int = 2, size: int = 8, tags: Optional[dict] = None) -> tuple[str, list[str]]:
        vol = self.ec2.create_volume(AvailabilityZone=self.az(), Size=size, VolumeType="gp3")["VolumeId"]
        snaps = []
        for i in range(n):
            kw = {}
            if tags:
                kw["TagSpecifications"] = [{"ResourceType": "snapshot", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
            snaps.append(self.ec2.create_snapshot(VolumeId=vol, Description=f"backup {i}", **kw)["SnapshotId"])
        return vol, snaps

    def instance_with_snapshots(self) -> tuple[str, dict[str, str]]:
        image = self.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        inst = self.ec2.run_instances(
            ImageId=image,
            InstanceType="t3.micro",
            MinCount=1,
            MaxCount=1,
            Placement={"AvailabilityZone": self.az()},
        )["Instances"][0]
        iid = inst["InstanceId"]
        # moto creates no root volume when BlockDeviceMappings are given: attach the data volume after.
        data = self.ec2.create_volume(AvailabilityZone=self.az(), Size=4)["VolumeId"]
        self.ec2.attach_volume(VolumeId=data, InstanceId=iid, Device="/dev/sdf")
        desc = self.ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
        snaps = {}
        for m in desc["BlockDeviceMappings"]:
            snaps[m["DeviceName"]] = self.ec2.create_snapshot(VolumeId=m["Ebs"]["VolumeId"], Description="nightly")["SnapshotId"]
        return iid, snaps

    def db_with_snapshot(self, ident: str = "shop-prod") -> tuple[str, str]:
        self.rds.create_db_instance(
            DBInstanceIdentifier=ident,
            DBInstanceClass="db.t3.micro",
            Engine="postgres",
            MasterUsername="admin_user",
            MasterUserPassword="secret-password-1",
            AllocatedStorage=20,
            DBName="shop",
            PubliclyAccessible=False,
            BackupRetentionPeriod=7,
        )
        snap = self.rds.create_db_snapshot(DBInstanceIdentifier=ident, DBSnapshotIdentifier=f"{ident}-nightly")["DBSnapshot"]["DBSnapshotIdentifier"]
        return ident, snap

    # ------------------------------------------------------------ reading moto's state

    def tagged(self) -> list[str]:
        """Every resource in every configured region carrying a drdrill tag (independent of the provider)."""
        left: list[str] = []
        for region in (REGION, OTHER_REGION):
            ec2, rds = self.client("ec2", region), self.client("rds", region)
            flt = [{"Name": "tag-key", "Values": [TAG_DRILL_ID]}]
            for r in ec2.describe_instances(Filters=flt)["Reservations"]:
                left += [f"instance {i['InstanceId']}" for i in r["Instances"] if i["State"]["Name"] != "terminated"]
            left += [f"volume {v['VolumeId']}" for v in ec2.describe_volumes(Filters=flt)["Volumes"]]
            left += [f"image {i['ImageId']}" for i in ec2.describe_images(Owners=["self"], Filters=flt)["Images"]]
            left += [f"vpc {v['VpcId']}" for v in ec2.describe_vpcs(Filters=flt)["Vpcs"]]
            left += [f"subnet {s['SubnetId']}" for s in ec2.describe_subnets(Filters=flt)["Subnets"]]
            left += [f"sg {g['GroupId']}" for g in ec2.describe_security_groups(Filters=flt)["SecurityGroups"]]
            for db in rds.describe_db_instances()["DBInstances"]:
                tags = {t["Key"] for t in rds.list_tags_for_resource(ResourceName=db["DBInstanceArn"])["TagList"]}
                if TAG_DRILL_ID in tags:
                    left.append(f"db {db['DBInstanceIdentifier']}")
            for g in rds.describe_db_subnet_groups()["DBSubnetGroups"]:
                tags = {t["Key"] for t in rds.list_tags_for_resource(ResourceName=g["DBSubnetGroupArn"])["TagList"]}
                if TAG_DRILL_ID in tags:
                    left.append(f"db-subnet-group {g['DBSubnetGroupName']}")
        return left

    def inventory_ids(self) -> set[str]:
        """Ids of every VPC, subnet, security group, live instance, volume, owned image and DB: a
        before/after comparison catches leftovers even if a tag was lost."""
        ec2 = self.ec2
        ids = {v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"]}
        ids |= {s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]}
        ids |= {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
        ids |= {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}
        ids |= {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]}
        for r in ec2.describe_instances()["Reservations"]:
            ids |= {i["InstanceId"] for i in r["Instances"] if i["State"]["Name"] != "terminated"}
        ids |= {d["DBInstanceIdentifier"] for d in self.rds.describe_db_instances()["DBInstances"]}
        ids |= {g["DBSubnetGroupName"] for g in self.rds.describe_db_subnet_groups()["DBSubnetGroups"]}
        return ids


@pytest.fixture
def aws(moto_endpoint):
    reset(moto_endpoint)
    world = AwsWorld(moto_endpoint)
    yield world
    try:
        left = world.tagged()
        assert left == [], f"resources carrying a drdrill tag were left behind: {left}"
    finally:
        world.provider.close()
        reset(moto_endpoint)


REPO = Path(__file__).resolve().parent.parent
