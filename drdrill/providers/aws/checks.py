"""Reading a restored AWS resource back for `drdrill check aws-volume|aws-instance|aws-db`.

`read_with(provider, kind, region, env)` (through `drdrill.providers.aws.read_back`) proves what the cloud's API can prove about the resource named in the
DRDRILL_* variables of a `command` validation: it exists, is usable, came from the chosen
recovery point, sits in the drill's isolated network and carries the drill's tags. It returns
(what it read, the problems it found); it raises ProviderError or LookupError when the cloud could
not be read. app/cli_check.py is its one caller.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from drdrill.core.models import TAG_DRILL_ID
from drdrill.providers.aws.ec2 import instance_groups

# (what it read, the problems it found)
Verdict = tuple[str, list[str]]


def read_with(provider: Any, kind: str, region: str, env: Mapping[str, str]) -> Verdict:
    """Read the restored resource of an `aws.ebs`, `aws.ec2` or `aws.rds` target back through `provider`."""
    return _CHECKS[kind](provider, region, env)


def _one(items: list[dict], what: str) -> dict:
    if not items:
        raise LookupError(f"{what} not found")
    return items[0]


def _volume(p: Any, region: str, env: Mapping[str, str]) -> Verdict:
    ec2 = p.ec2(region)
    vid = env["DRDRILL_VOLUME_ID"]
    v = _one(p.call(ec2.describe_volumes, VolumeIds=[vid]).get("Volumes", []), f"volume {vid}")
    problems = []
    if v.get("State") not in ("available", "in-use"):
        problems.append(f"volume {vid} is {v.get('State')}")
    want = env.get("DRDRILL_EXPECTED_SNAPSHOT_ID")
    if want and v.get("SnapshotId") != want:
        problems.append(f"volume {vid} was created from {v.get('SnapshotId')}, not {want}")
    if v.get("SnapshotId"):
        snap = _one(p.call(ec2.describe_snapshots, SnapshotIds=[v["SnapshotId"]]).get("Snapshots", []), f"snapshot {v['SnapshotId']}")
        if int(v.get("Size", 0)) < int(snap.get("VolumeSize", 0)):
            problems.append(f"volume {vid} is {v.get('Size')} GiB, smaller than its snapshot ({snap.get('VolumeSize')} GiB)")
    if TAG_DRILL_ID not in {t["Key"] for t in v.get("Tags") or []}:
        problems.append(f"volume {vid} lacks the {TAG_DRILL_ID} tag")
    return f"volume {vid}: {v.get('State')}, {v.get('Size')} GiB from {v.get('SnapshotId')} in {v.get('AvailabilityZone')}", problems


def _instance(p: Any, region: str, env: Mapping[str, str]) -> Verdict:
    ec2 = p.ec2(region)
    iid = env["DRDRILL_INSTANCE_ID"]
    reservations = p.call(ec2.describe_instances, InstanceIds=[iid]).get("Reservations", [])
    inst = _one([i for r in reservations for i in r.get("Instances", [])], f"instance {iid}")
    state = inst["State"]["Name"]
    problems = []
    if state != "running":
        problems.append(f"instance {iid} is {state}")
    if inst.get("PublicIpAddress"):
        problems.append(f"instance {iid} has a public address {inst['PublicIpAddress']}")
    groups = instance_groups(inst)
    if env.get("DRDRILL_SECURITY_GROUP_ID") and groups != [env["DRDRILL_SECURITY_GROUP_ID"]]:
        problems.append(f"instance {iid} has security groups {groups}")
    attached = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in inst.get("BlockDeviceMappings", []) if "Ebs" in m}
    volumes = p.call(ec2.describe_volumes, VolumeIds=list(attached.values())).get("Volumes", []) if attached else []
    restored_from = {v["VolumeId"]: v.get("SnapshotId") for v in volumes}
    for pair in filter(None, (env.get("DRDRILL_DATA_SNAPSHOT_IDS") or "").split(",")):
        dev, snap = pair.split("=", 1)
        found = restored_from.get(attached.get(dev, ""))
        if found != snap:
            problems.append(f"{dev} is not restored from {snap} (found {found})")
    return f"instance {iid}: {state} at {inst.get('PrivateIpAddress')} in {inst.get('SubnetId')}, volumes {restored_from}", problems


def _db(p: Any, region: str, env: Mapping[str, str]) -> Verdict:
    ident = env["DRDRILL_DB_INSTANCE_IDENTIFIER"]
    db = _one(p.call(p.rds(region).describe_db_instances, DBInstanceIdentifier=ident).get("DBInstances", []), f"DB instance {ident}")
    problems = []
    if db.get("DBInstanceStatus") != "available":
        problems.append(f"DB {ident} is {db.get('DBInstanceStatus')}")
    if db.get("PubliclyAccessible"):
        problems.append(f"DB {ident} is publicly accessible")
    return f"DB {ident}: {db.get('DBInstanceStatus')} {db.get('Engine')} at {(db.get('Endpoint') or {}).get('Address')}", problems


_CHECKS: dict[str, Callable[[Any, str, Mapping[str, str]], Verdict]] = {"aws.ebs": _volume, "aws.ec2": _instance, "aws.rds": _db}
