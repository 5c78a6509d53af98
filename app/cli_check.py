"""`drdrill check …`: read a restored resource back from its cloud, for `command` validations.

A `command` validation (drdrill/validation/service.py) runs one of these with the restored resource's
endpoint as DRDRILL_* variables, e.g. in a drill file:

    - {name: volume-restored, type: command, target: orders-data, argv: [drdrill, check, aws-volume]}

Each proves what the cloud's API can prove: the resource exists, is usable, came from the chosen
recovery point, sits in the drill's isolated network and carries the drill's tags. None reads the
data itself (that needs an agent on an instance: add your own command for that).

It prints one line saying what it found, then each problem on stderr. Exit status: 0 all good, 1 a
problem, 2 the endpoint variables it needs are missing (not run as a validation of such a target),
3 the cloud could not be read. Registered by app.cli.main() through `register(app)`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import typer

from drdrill.core.models import TAG_DRILL_ID

check_app = typer.Typer(no_args_is_help=True, help="Read a restored resource back from its cloud (for `command` validations).")

# (what it read, the problems it found)
Verdict = tuple[str, list[str]]


def _run(required: str, kind: str, check: Callable[[Any, str, Mapping[str, str]], Verdict]) -> None:
    """Run one AWS check against the endpoint in the environment and exit with its status."""
    env = dict(os.environ)
    if not env.get(required):
        typer.echo(f"{required} is not set: run `drdrill check` as a `command` validation of an {kind} target", err=True)
        raise typer.Exit(2)
    # Imported here, not at the top: every `drdrill` command registers this group, and only an AWS
    # check needs the AWS SDK loaded.
    from drdrill.providers.aws import AwsProvider
    from drdrill.providers.base import ProviderError

    region = env.get("DRDRILL_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    provider = AwsProvider.from_environment(env, {"region": region})
    try:
        summary, problems = check(provider, region, env)
    except (ProviderError, LookupError) as exc:
        typer.echo(f"could not read the restored resource: {getattr(exc, 'message', exc)}", err=True)
        raise typer.Exit(3)
    finally:
        provider.close()
    typer.echo(summary)
    for problem in problems:
        typer.echo(problem, err=True)
    raise typer.Exit(1 if problems else 0)


def _one(items: list[dict], what: str) -> dict:
    if not items:
        raise LookupError(f"{what} not found")
    return items[0]


@check_app.command("aws-volume")
def aws_volume() -> None:
    """An aws.ebs restore: the volume is usable, from the expected snapshot, no smaller, tagged.

    Reads DRDRILL_VOLUME_ID, DRDRILL_EXPECTED_SNAPSHOT_ID, DRDRILL_REGION, DRDRILL_AWS_ENDPOINT_URL."""
    _run("DRDRILL_VOLUME_ID", "aws.ebs", _volume)


@check_app.command("aws-instance")
def aws_instance() -> None:
    """An aws.ec2 restore: running, private, in the drill's security group, data from the point.

    No public address, no security group but the drill's, each data volume restored from the chosen
    point's snapshot. Reads DRDRILL_INSTANCE_ID, DRDRILL_SECURITY_GROUP_ID, DRDRILL_DATA_SNAPSHOT_IDS, DRDRILL_REGION."""
    _run("DRDRILL_INSTANCE_ID", "aws.ec2", _instance)


@check_app.command("aws-db")
def aws_db() -> None:
    """An aws.rds restore: the DB instance is available and not publicly accessible.

    Reads DRDRILL_DB_INSTANCE_IDENTIFIER, DRDRILL_REGION, DRDRILL_AWS_ENDPOINT_URL."""
    _run("DRDRILL_DB_INSTANCE_IDENTIFIER", "aws.rds", _db)


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
    from drdrill.providers.aws.ec2 import instance_groups  # the AWS SDK: see _run

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


def register(app: typer.Typer) -> None:
    app.add_typer(check_app, name="check")
