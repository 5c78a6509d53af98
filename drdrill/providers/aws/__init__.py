"""AWS provider: EBS volumes, EC2 instances and RDS DB instances restored into a per-drill VPC.

Targets
- aws.ebs: a volume's snapshots -> a new volume in the isolated environment's availability zone.
- aws.ec2: snapshot sets of an instance's volumes (or an AMI) -> a new instance in the isolated
  subnet; the boot disk comes from an AMI registered from the root snapshot (or `image_id`), the
  data volumes from the same recovery point.
- aws.rds: a DB snapshot (manual or automated) -> restore_db_instance_from_db_snapshot, or with rule
  `at` and `point_in_time: true` -> restore_db_instance_to_point_in_time. Never publicly accessible.

Isolation: one VPC per drill with no internet gateway, NAT, peering, VPC endpoint, VPN or transit
gateway attachment; private subnets in two availability zones (RDS needs two); a security group
without any egress rule and ingress only from the sources the spec names for validation.

Every created resource carries the drill's tags at creation (TagSpecifications / Tags). Creation is
idempotent: deterministic names (drdrill-<drill id>-<target>) where AWS names resources, ClientToken
where a call takes one, and a lookup by tag before every create. Teardown finds what to delete by
the drill's tag, deletes in dependency order, treats "not found" as done and refuses anything that
lacks the tag.

Every API call goes through a botocore `before-call` hook that records the IAM action
(`CALLED_ACTIONS`); tests compare it with deploy/aws/iam-policy.json.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping, Optional

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from drdrill.core.models import (
    TAG_DRILL_ID,
    TAG_EXPIRES_AT,
    TAG_TARGET,
    DrillContext,
    Environment,
    Finding,
    IsolationCheck,
    IsolationProof,
    Orphan,
    RecoveryPoint,
    RestoredResource,
    TeardownReport,
)
from drdrill.providers.base import NotReadyYet, Provider, ProviderError, heartbeat, poll_until, select_for_target

# Every IAM action any AwsProvider called in this process ("ec2:DescribeVpcs", ...).
CALLED_ACTIONS: set[str] = set()
_CALLED_LOCK = threading.Lock()
_IAM_PREFIX = {"ec2": "ec2", "rds": "rds", "sts": "sts"}

GIB = 1024**3
# Snapshots of an instance's volumes taken within this of each other form one recovery point.
SNAPSHOT_SET_TOLERANCE = timedelta(minutes=10)
# Teardown keeps retrying dependency errors (ENIs of a deleted DB linger for minutes) this long,
# then hands back to Temporal's retry policy.
DEPENDENCY_WAIT = 15 * 60.0

_EC2_NOT_FOUND = {
    "InvalidInstanceID.NotFound",
    "InvalidAMIID.NotFound",
    "InvalidAMIID.Unavailable",
    "InvalidVolume.NotFound",
    "InvalidGroup.NotFound",
    "InvalidSubnetID.NotFound",
    "InvalidVpcID.NotFound",
    "InvalidSnapshot.NotFound",
}
_RDS_NOT_FOUND = {"DBInstanceNotFound", "DBInstanceNotFoundFault", "DBSubnetGroupNotFoundFault", "DBSnapshotNotFound", "DBSnapshotNotFoundFault"}
_NOT_FOUND = _EC2_NOT_FOUND | _RDS_NOT_FOUND
_RETRYABLE = {"Throttling", "ThrottlingException", "RequestLimitExceeded", "InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable"}
_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthFailure"}

# Teardown order: what uses a thing goes before the thing.
DELETE_ORDER = ["rds-instance", "ec2-instance", "ami", "volume", "rds-subnet-group", "security-group", "subnet", "vpc"]

_PENDING_INSTANCE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _tags(items: Optional[Iterable[Mapping[str, str]]]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in (items or [])}


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _aware(t: Any) -> datetime:
    if isinstance(t, str):
        t = datetime.fromisoformat(t.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _parse_expiry(value: Optional[str]) -> Optional[datetime]:
    if not value:
        return None
    try:
        return _aware(value)
    except ValueError:
        return None


def client_token(ctx: DrillContext, target: str, what: str) -> str:
    """A ClientToken (<= 64 ASCII) stable across retries of the same drill step."""
    return "drdrill-" + hashlib.sha256(f"{ctx.drill_id}/{target}/{what}".encode()).hexdigest()[:40]


def rds_identifier(name: str) -> str:
    """RDS identifiers: letters, digits, single hyphens, start with a letter, <= 63, no trailing '-'."""
    name = re.sub(r"[^a-z0-9-]", "-", name.lower())
    name = re.sub(r"-{2,}", "-", name).strip("-")
    if not name or not name[0].isalpha():
        name = "d" + name
    return name[:63].rstrip("-")


def _translated(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Public operations: an AWS error no code path handled becomes a typed ProviderError."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            code = _code(exc)
            msg = exc.response.get("Error", {}).get("Message", str(exc))
            if code in ("InvalidSnapshot.NotFound", "DBSnapshotNotFound", "DBSnapshotNotFoundFault"):
                raise ProviderError("RECOVERY_POINT_NOT_FOUND", f"{code}: {msg}") from exc
            raise ProviderError(f"AWS_{re.sub(r'[^A-Z0-9]+', '_', code.upper()).strip('_') or 'ERROR'}", f"{code}: {msg}") from exc

    return wrapper


@dataclass
class Item:
    """One tagged AWS resource found by an inventory."""

    kind: str
    id: str
    region: str
    tags: dict[str, str]
    state: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class AwsProvider(Provider):
    family = "aws"

    def __init__(
        self,
        session: Optional[boto3.session.Session] = None,
        *,
        endpoint_url: Optional[str] = None,
        region: Optional[str] = None,
        regions: Optional[list[str]] = None,
        clients: Optional[dict[tuple[str, str], Any]] = None,
        config: Optional[Config] = None,
        poll_initial: float = 0.25,
        poll_max: float = 15.0,
        dependency_wait: float = DEPENDENCY_WAIT,
    ):
        self.session = session or boto3.session.Session()
        self.endpoint_url = endpoint_url or None
        self.region = region or self.session.region_name or "us-east-1"
        self.regions = list(dict.fromkeys(regions or [self.region]))
        self.config = config or Config(
            retries={"mode": "standard", "max_attempts": 8},
            connect_timeout=10,
            read_timeout=60,
            user_agent_extra="drdrill",
        )
        self.called: set[str] = set()
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self.poll_initial = poll_initial
        self.poll_max = poll_max
        self.dependency_wait = dependency_wait
        for (service, reg), c in (clients or {}).items():
            self._hook(c)
            self._clients[(service, reg)] = c

    @classmethod
    def from_environment(cls, env: Mapping[str, str], settings: Optional[dict] = None) -> "AwsProvider":
        """Credentials from boto3's default chain; DRDRILL_AWS_ENDPOINT_URL (moto, LocalStack, a VPC
        endpoint), DRDRILL_AWS_REGION / AWS_REGION / AWS_DEFAULT_REGION, DRDRILL_AWS_REGIONS (orphan sweeps)."""
        settings = settings or {}
        region = settings.get("region") or env.get("DRDRILL_AWS_REGION") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        regions_text = settings.get("regions") or env.get("DRDRILL_AWS_REGIONS") or ""
        regions = [r.strip() for r in (regions_text.split(",") if isinstance(regions_text, str) else regions_text) if r.strip()]
        endpoint = settings.get("endpoint_url") or env.get("DRDRILL_AWS_ENDPOINT_URL") or None
        profile = settings.get("profile") or env.get("DRDRILL_AWS_PROFILE") or None
        session = boto3.session.Session(profile_name=profile, region_name=region) if profile else boto3.session.Session(region_name=region)
        region = region or session.region_name or "us-east-1"
        if region not in regions:
            regions = [region] + regions
        return cls(session, endpoint_url=endpoint, region=region, regions=regions)

    # ------------------------------------------------------------------ clients

    def _hook(self, client: Any) -> None:
        client.meta.events.register("before-call", self._record)

    def _record(self, model: Any = None, **_: Any) -> None:
        if model is None:
            return
        service = model.service_model.service_name
        action = f"{_IAM_PREFIX.get(service, service)}:{model.name}"
        self.called.add(action)
        with _CALLED_LOCK:
            CALLED_ACTIONS.add(action)

    def client(self, service: str, region: Optional[str] = None) -> Any:
        region = region or self.region
        with self._lock:
            c = self._clients.get((service, region))
            if c is None:
                c = self.session.client(service, region_name=region, endpoint_url=self.endpoint_url, config=self.config)
                self._hook(c)
                self._clients[(service, region)] = c
            return c

    def ec2(self, region: Optional[str] = None) -> Any:
        return self.client("ec2", region)

    def rds(self, region: Optional[str] = None) -> Any:
        return self.client("rds", region)

    def close(self) -> None:
        with self._lock:
            for c in self._clients.values():
                try:
                    c.close()
                except Exception:  # noqa: BLE001 - best effort
                    pass
            self._clients.clear()

    def _call(self, fn: Callable[..., Any], what: str, **kwargs: Any) -> Any:
        """Call the SDK; turn its errors into ProviderErrors with stable codes."""
        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = _code(exc)
            msg = exc.response.get("Error", {}).get("Message", str(exc))
            if code in _DENIED:
                raise ProviderError("AWS_ACCESS_DENIED", f"{what}: {code}: {msg} (see deploy/aws/iam-policy.json)") from exc
            if code in _RETRYABLE or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400) >= 500:
                raise ProviderError("AWS_UNAVAILABLE", f"{what}: {code}: {msg}", retryable=True) from exc
            raise
        except (EndpointConnectionError, BotoCoreError) as exc:
            raise ProviderError("AWS_UNAVAILABLE", f"{what}: {exc}", retryable=True) from exc

    def _pages(self, client: Any, op: str, key: str, **kwargs: Any) -> list[dict]:
        out: list[dict] = []
        if client.can_paginate(op):
            for page in self._call(lambda **kw: list(client.get_paginator(op).paginate(**kw)), op, **kwargs):
                out.extend(page.get(key, []))
        else:
            out.extend(self._call(getattr(client, op), op, **kwargs).get(key, []))
        return out

    def _poll(self, probe: Callable[[], Any], *, timeout: float, what: str) -> Any:
        return poll_until(probe, timeout=timeout, what=what, initial=self.poll_initial, maximum=self.poll_max)

    # ------------------------------------------------------------------ regions

    def _target_region(self, target: Any) -> str:
        return getattr(target.source, "region", None) or self.region

    def _env_region(self, isolation: Any, targets: list[Any]) -> str:
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

    # ------------------------------------------------------------------ recovery points

    @_translated
    def find_recovery_point(self, ctx: DrillContext, target: Any) -> RecoveryPoint:
        kind = target.provider
        if kind == "aws.ebs":
            points = self._ebs_points(target)
        elif kind == "aws.ec2":
            points = self._ec2_points(target)
        elif kind == "aws.rds":
            if target.recovery_point.rule == "at" and target.source.point_in_time:
                return self._rds_pitr_point(ctx, target)
            points = self._rds_points(target)
        else:
            raise ProviderError("BAD_SPEC", f"the aws provider does not handle {kind!r}")
        return select_for_target(points, ctx, target)

    def _snapshots(self, region: str, volume_ids: list[str], snapshot_tags: Mapping[str, str]) -> list[dict]:
        filters = [{"Name": "volume-id", "Values": volume_ids}, {"Name": "status", "Values": ["completed"]}]
        filters += [{"Name": f"tag:{k}", "Values": [v]} for k, v in snapshot_tags.items()]
        snaps = self._pages(self.ec2(region), "describe_snapshots", "Snapshots", OwnerIds=["self"], Filters=filters)
        # Defence in depth: an emulator or a proxy that ignores a filter must not widen the choice.
        return [
            s
            for s in snaps
            if s.get("VolumeId") in volume_ids
            and s.get("State", "completed") == "completed"
            and all(_tags(s.get("Tags")).get(k) == v for k, v in snapshot_tags.items())
        ]

    def _ebs_points(self, target: Any) -> list[RecoveryPoint]:
        region = self._target_region(target)
        src = target.source
        snaps = self._snapshots(region, [src.volume_id], src.snapshot_tags)
        if not snaps:
            tagged = f" tagged {src.snapshot_tags}" if src.snapshot_tags else ""
            raise ProviderError(
                "RECOVERY_POINT_NOT_FOUND",
                f"target {target.name}: no completed snapshot{tagged} of volume {src.volume_id} in {region}",
            )
        return [
            RecoveryPoint(
                target=target.name,
                provider=target.provider,
                id=s["SnapshotId"],
                consistent_time=_aware(s["StartTime"]),
                size_bytes=int(s.get("VolumeSize", 0)) * GIB or None,
                metadata={
                    "region": region,
                    "volume_id": s.get("VolumeId"),
                    "volume_size_gib": s.get("VolumeSize"),
                    "encrypted": bool(s.get("Encrypted")),
                    "kms_key_id": s.get("KmsKeyId"),
                    "description": s.get("Description", ""),
                },
            )
            for s in snaps
        ]

    def _ec2_points(self, target: Any) -> list[RecoveryPoint]:
        region = self._target_region(target)
        src = target.source
        try:
            res = self._call(self.ec2(region).describe_instances, "describe_instances", InstanceIds=[src.instance_id])
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND or _code(exc) == "InvalidInstanceID.Malformed":
                raise ProviderError(
                    "SOURCE_NOT_FOUND",
                    f"target {target.name}: instance {src.instance_id} not found in {region}; drdrill reads its volume "
                    "list from the instance",
                ) from exc
            raise
        instances = [i for r in res.get("Reservations", []) for i in r.get("Instances", [])]
        if not instances:
            raise ProviderError("SOURCE_NOT_FOUND", f"target {target.name}: instance {src.instance_id} not found in {region}")
        inst = instances[0]
        root_dev = inst.get("RootDeviceName") or "/dev/xvda"
        volumes = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in inst.get("BlockDeviceMappings", []) if "Ebs" in m}
        data = {d: v for d, v in volumes.items() if d != root_dev}
        image_id = src.image_id
        base = {
            "region": region,
            "instance_id": src.instance_id,
            "root_device": root_dev,
            "architecture": inst.get("Architecture", "x86_64"),
            "source_image_id": inst.get("ImageId"),
            "image_id": image_id,
        }
        if image_id and not data:
            # The AMI is the whole recovery point.
            imgs = self._call(self.ec2(region).describe_images, "describe_images", ImageIds=[image_id]).get("Images", [])
            if not imgs:
                raise ProviderError("RECOVERY_POINT_NOT_FOUND", f"target {target.name}: AMI {image_id} not found in {region}")
            return [
                RecoveryPoint(
                    target=target.name,
                    provider=target.provider,
                    id=image_id,
                    consistent_time=_aware(imgs[0]["CreationDate"]),
                    metadata={**base, "data": {}},
                )
            ]
        anchor_dev = next(iter(data)) if image_id else root_dev
        if anchor_dev not in volumes:
            raise ProviderError("SOURCE_NOT_FOUND", f"target {target.name}: instance {src.instance_id} has no EBS root volume")
        snaps = self._snapshots(region, list(volumes.values()), src.snapshot_tags)
        by_volume: dict[str, list[dict]] = {}
        for s in snaps:
            by_volume.setdefault(s["VolumeId"], []).append(s)
        points: list[RecoveryPoint] = []
        incomplete = 0
        for anchor in by_volume.get(volumes[anchor_dev], []):
            t0 = _aware(anchor["StartTime"])
            chosen = {anchor_dev: anchor}
            for dev, vol in volumes.items():
                if dev == anchor_dev or (image_id and dev == root_dev):
                    continue
                near = [s for s in by_volume.get(vol, []) if abs(_aware(s["StartTime"]) - t0) <= SNAPSHOT_SET_TOLERANCE]
                if not near:
                    break
                chosen[dev] = min(near, key=lambda s: abs(_aware(s["StartTime"]) - t0))
            else:
                points.append(
                    RecoveryPoint(
                        target=target.name,
                        provider=target.provider,
                        id=anchor["SnapshotId"],
                        # The set is only as new as its oldest member.
                        consistent_time=min(_aware(s["StartTime"]) for s in chosen.values()),
                        size_bytes=sum(int(s.get("VolumeSize", 0)) for s in chosen.values()) * GIB or None,
                        metadata={
                            **base,
                            "root_snapshot": None if image_id else anchor["SnapshotId"],
                            "data": {d: s["SnapshotId"] for d, s in chosen.items() if d != root_dev},
                            "sizes_gib": {d: s.get("VolumeSize") for d, s in chosen.items()},
                        },
                    )
                )
                continue
            incomplete += 1
        if not points:
            tagged = f" tagged {src.snapshot_tags}" if src.snapshot_tags else ""
            more = f" ({incomplete} incomplete set(s): a volume lacked a snapshot within {SNAPSHOT_SET_TOLERANCE})" if incomplete else ""
            raise ProviderError(
                "RECOVERY_POINT_NOT_FOUND",
                f"target {target.name}: no complete snapshot set{tagged} of instance {src.instance_id}'s volumes "
                f"({', '.join(f'{d}={v}' for d, v in volumes.items())}) in {region}{more}",
            )
        return points

    def _rds_points(self, target: Any) -> list[RecoveryPoint]:
        region = self._target_region(target)
        src = target.source
        kwargs: dict[str, Any] = {"DBInstanceIdentifier": src.db_instance_identifier}
        if src.snapshot_type != "any":
            kwargs["SnapshotType"] = src.snapshot_type
        snaps = self._pages(self.rds(region), "describe_db_snapshots", "DBSnapshots", **kwargs)
        snaps = [
            s
            for s in snaps
            if s.get("Status") == "available"
            and s.get("DBInstanceIdentifier") == src.db_instance_identifier
            and (src.snapshot_type == "any" or s.get("SnapshotType") == src.snapshot_type)
            and s.get("SnapshotCreateTime")
        ]
        if src.snapshot_tags:
            snaps = [s for s in snaps if all(self._rds_tags(region, s).get(k) == v for k, v in src.snapshot_tags.items())]
        if not snaps:
            which = "" if src.snapshot_type == "any" else f"{src.snapshot_type} "
            tagged = f" tagged {src.snapshot_tags}" if src.snapshot_tags else ""
            raise ProviderError(
                "RECOVERY_POINT_NOT_FOUND",
                f"target {target.name}: no available {which}DB snapshot{tagged} of {src.db_instance_identifier} in {region}",
            )
        return [
            RecoveryPoint(
                target=target.name,
                provider=target.provider,
                id=s["DBSnapshotIdentifier"],
                consistent_time=_aware(s["SnapshotCreateTime"]),
                size_bytes=int(s.get("AllocatedStorage", 0)) * GIB or None,
                metadata={
                    "region": region,
                    "kind": "snapshot",
                    "snapshot_type": s.get("SnapshotType"),
                    "snapshot_arn": s.get("DBSnapshotArn"),
                    "engine": s.get("Engine"),
                    "engine_version": s.get("EngineVersion"),
                    "port": s.get("Port"),
                    "master_username": s.get("MasterUsername"),
                    "encrypted": bool(s.get("Encrypted")),
                },
            )
            for s in snaps
        ]

    def _rds_tags(self, region: str, obj: dict) -> dict[str, str]:
        if "TagList" in obj:
            return _tags(obj["TagList"])
        arn = obj.get("DBSnapshotArn") or obj.get("DBInstanceArn") or obj.get("DBSubnetGroupArn")
        if not arn:
            return {}
        return _tags(self._call(self.rds(region).list_tags_for_resource, "list_tags_for_resource", ResourceName=arn).get("TagList"))

    def _rds_pitr_point(self, ctx: DrillContext, target: Any) -> RecoveryPoint:
        region = self._target_region(target)
        src = target.source
        rule = target.recovery_point
        db = self._db_instance(region, src.db_instance_identifier)
        if db is None:
            raise ProviderError(
                "RECOVERY_POINT_NOT_FOUND",
                f"target {target.name}: DB instance {src.db_instance_identifier} not found in {region}; "
                "point-in-time restore needs the source instance (use a snapshot rule instead)",
            )
        latest = db.get("LatestRestorableTime")
        retention = int(db.get("BackupRetentionPeriod") or 0)
        if not latest or retention == 0:
            raise ProviderError(
                "RECOVERY_POINT_NOT_FOUND",
                f"target {target.name}: {src.db_instance_identifier} has no automated backups "
                f"(BackupRetentionPeriod {retention}); point-in-time restore is impossible",
            )
        latest = _aware(latest)
        created = _aware(db["InstanceCreateTime"]) if db.get("InstanceCreateTime") else None
        earliest = ctx.declared - timedelta(days=retention)
        if created and created > earliest:
            earliest = created
        requested = rule.at
        findings: list[Finding] = []
        when = requested
        if requested > latest:
            when = latest
            findings.append(
                Finding(
                    code="RECOVERY_POINT_BOUNDED",
                    severity="warning",
                    target=target.name,
                    message=f"target {target.name}: requested {requested.isoformat()} is after LatestRestorableTime "
                    f"{latest.isoformat()}; restoring to LatestRestorableTime",
                )
            )
        # Never past the declared disaster (an emulator's LatestRestorableTime can be "now"), and
        # in whole seconds so the point id and RestoreTime say the same thing.
        when = min(when, ctx.declared).replace(microsecond=0)
        if when < earliest.replace(microsecond=0):
            raise ProviderError(
                "RECOVERY_POINT_NOT_FOUND",
                f"target {target.name}: {when.isoformat()} is before the earliest restorable time of "
                f"{src.db_instance_identifier} (about {earliest.isoformat()}, retention {retention} days)",
            )
        point = RecoveryPoint(
            target=target.name,
            provider=target.provider,
            id=f"pitr:{src.db_instance_identifier}@{when.strftime('%Y-%m-%dT%H:%M:%SZ')}",
            consistent_time=when,
            size_bytes=int(db.get("AllocatedStorage", 0)) * GIB or None,
            metadata={
                "region": region,
                "kind": "pitr",
                "source_db": src.db_instance_identifier,
                "restore_time": when.isoformat(),
                "latest_restorable_time": latest.isoformat(),
                "engine": db.get("Engine"),
                "port": (db.get("Endpoint") or {}).get("Port"),
                "master_username": db.get("MasterUsername"),
            },
            findings=findings,
            candidates=1,
        )
        age = ctx.declared - when
        if rule.max_age is not None and age > rule.max_age:
            point.findings.append(
                Finding(
                    code="RECOVERY_POINT_STALE",
                    target=target.name,
                    message=f"target {target.name}: the chosen recovery point is {age} old, older than max_age {rule.max_age}",
                )
            )
        return point

    def _db_instance(self, region: str, identifier: str) -> Optional[dict]:
        try:
            dbs = self._call(self.rds(region).describe_db_instances, "describe_db_instances", DBInstanceIdentifier=identifier)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            raise
        found = dbs.get("DBInstances", [])
        return found[0] if found else None

    # ------------------------------------------------------------------ isolation

    def _drill_filters(self, ctx: DrillContext, extra: Optional[list] = None) -> list[dict]:
        return [{"Name": f"tag:{TAG_DRILL_ID}", "Values": [ctx.drill_id]}] + (extra or [])

    @_translated
    def create_isolation(self, ctx: DrillContext, isolation: Any, targets: list[Any]) -> Environment:
        region = self._env_region(isolation, targets)
        ec2 = self.ec2(region)
        try:
            net = ipaddress.ip_network(isolation.network_cidr)
        except ValueError as exc:
            raise ProviderError("BAD_SPEC", f"isolation.network_cidr {isolation.network_cidr!r}: {exc}") from exc
        if net.version != 4 or not (16 <= net.prefixlen <= 26):
            raise ProviderError("BAD_SPEC", f"isolation.network_cidr {net} must be an IPv4 block between /16 and /26 (a VPC's limits)")
        tags = ctx.tags()
        name = ctx.resource_name()

        def spec(kind: str, extra_name: str) -> list[dict]:
            return [{"ResourceType": kind, "Tags": _tag_list({**tags, "Name": extra_name})}]

        # VPC (looked up by tag first: a retried activity finds the one it made)
        vpcs = self._pages(ec2, "describe_vpcs", "Vpcs", Filters=self._drill_filters(ctx))
        if vpcs:
            vpc_id = vpcs[0]["VpcId"]
        else:
            vpc_id = self._call(ec2.create_vpc, "create_vpc", CidrBlock=str(net), TagSpecifications=spec("vpc", name))["Vpc"]["VpcId"]
        heartbeat({"vpc": vpc_id})
        self._poll(lambda: self._vpc_available(ec2, vpc_id), timeout=300, what=f"VPC {vpc_id}")

        # Two private subnets in two availability zones (an RDS subnet group needs two).
        zones = sorted(
            z["ZoneName"]
            for z in self._call(ec2.describe_availability_zones, "describe_availability_zones", Filters=[{"Name": "state", "Values": ["available"]}]).get(
                "AvailabilityZones", []
            )
            if z.get("ZoneType", "availability-zone") == "availability-zone"
        )
        if not zones:
            raise ProviderError("AWS_UNAVAILABLE", f"no available availability zone in {region}", retryable=True)
        zones = zones[:2]
        blocks = list(net.subnets(new_prefix=min(net.prefixlen + 2, 28)))
        existing = {s["AvailabilityZone"]: s for s in self._pages(ec2, "describe_subnets", "Subnets", Filters=self._drill_filters(ctx, [{"Name": "vpc-id", "Values": [vpc_id]}]))}
        subnets: list[dict] = []
        for i, az in enumerate(zones):
            if az in existing:
                subnets.append({"id": existing[az]["SubnetId"], "az": az, "cidr": existing[az]["CidrBlock"]})
                continue
            sn = self._call(
                ec2.create_subnet,
                "create_subnet",
                VpcId=vpc_id,
                CidrBlock=str(blocks[i]),
                AvailabilityZone=az,
                TagSpecifications=spec("subnet", f"{name}-{i}"),
            )["Subnet"]
            subnets.append({"id": sn["SubnetId"], "az": az, "cidr": sn["CidrBlock"]})
        heartbeat({"subnets": [s["id"] for s in subnets]})

        # Security group: no egress at all; ingress only from the named validation sources.
        sg_name = ctx.resource_name(suffix="sg", max_len=255)
        sgs = self._pages(
            ec2, "describe_security_groups", "SecurityGroups",
            Filters=self._drill_filters(ctx, [{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": [sg_name]}]),
        )
        if sgs:
            sg = sgs[0]
        else:
            try:
                sg_id = self._call(
                    ec2.create_security_group,
                    "create_security_group",
                    GroupName=sg_name,
                    Description=f"drdrill drill {ctx.drill_id}: no egress, ingress only for validation",
                    VpcId=vpc_id,
                    TagSpecifications=spec("security-group", sg_name),
                )["GroupId"]
            except ClientError as exc:
                if _code(exc) != "InvalidGroup.Duplicate":
                    raise
                sg_id = None
            sg = self._pages(ec2, "describe_security_groups", "SecurityGroups",
                             Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": [sg_name]}])[0]
            assert sg_id is None or sg["GroupId"] == sg_id
        sg_id = sg["GroupId"]
        if sg.get("IpPermissionsEgress"):
            self._call(ec2.revoke_security_group_egress, "revoke_security_group_egress", GroupId=sg_id, IpPermissions=_strip_perms(sg["IpPermissionsEgress"]))
        wanted = _ingress_permissions(isolation.allow_ingress_from)
        have = _perm_sources(sg.get("IpPermissions", []))
        missing = [p for p in wanted if not _perm_sources([p]) <= have]
        unwanted = [p for p in _strip_perms(sg.get("IpPermissions", [])) if not _perm_sources([p]) <= _perm_sources(wanted)]
        if unwanted:
            self._call(ec2.revoke_security_group_ingress, "revoke_security_group_ingress", GroupId=sg_id, IpPermissions=unwanted)
        if missing:
            try:
                self._call(ec2.authorize_security_group_ingress, "authorize_security_group_ingress", GroupId=sg_id, IpPermissions=missing)
            except ClientError as exc:
                if _code(exc) != "InvalidPermission.Duplicate":
                    raise

        details: dict[str, Any] = {
            "region": region,
            "vpc_id": vpc_id,
            "cidr": str(net),
            "subnets": subnets,
            "availability_zone": subnets[0]["az"],
            "security_group_id": sg_id,
            "allow_ingress_from": list(isolation.allow_ingress_from),
        }
        if any(t.provider == "aws.rds" for t in targets):
            details["db_subnet_group"] = self._db_subnet_group(ctx, region, [s["id"] for s in subnets])
        return Environment(
            family="aws",
            drill_id=ctx.drill_id,
            id=vpc_id,
            description=f"VPC {vpc_id} ({net}) in {region}: no internet gateway, NAT, peering or endpoints; "
            f"security group {sg_id} without egress",
            details=details,
        )

    def _vpc_available(self, ec2: Any, vpc_id: str) -> dict:
        vpcs = self._call(ec2.describe_vpcs, "describe_vpcs", VpcIds=[vpc_id]).get("Vpcs", [])
        if not vpcs or vpcs[0].get("State") != "available":
            raise NotReadyYet(f"VPC {vpc_id} is {vpcs[0].get('State') if vpcs else 'not visible yet'}")
        return vpcs[0]

    def _db_subnet_group(self, ctx: DrillContext, region: str, subnet_ids: list[str]) -> str:
        rds = self.rds(region)
        name = rds_identifier(ctx.resource_name(suffix="db", max_len=255))
        try:
            groups = self._call(rds.describe_db_subnet_groups, "describe_db_subnet_groups", DBSubnetGroupName=name).get("DBSubnetGroups", [])
        except ClientError as exc:
            if _code(exc) not in _NOT_FOUND:
                raise
            groups = []
        if groups:
            if self._rds_tags(region, groups[0]).get(TAG_DRILL_ID) != ctx.drill_id:
                raise ProviderError("NAME_CONFLICT", f"DB subnet group {name} exists but is not this drill's (no {TAG_DRILL_ID}={ctx.drill_id} tag)")
            return name
        try:
            self._call(
                rds.create_db_subnet_group,
                "create_db_subnet_group",
                DBSubnetGroupName=name,
                DBSubnetGroupDescription=f"drdrill drill {ctx.drill_id}: isolated private subnets",
                SubnetIds=subnet_ids,
                Tags=_tag_list(ctx.tags()),
            )
        except ClientError as exc:
            if _code(exc) not in ("DBSubnetGroupAlreadyExists", "DBSubnetGroupAlreadyExistsFault"):
                raise
        return name

    @_translated
    def verify_isolation(self, ctx: DrillContext, env: Environment) -> IsolationProof:
        d = env.details
        region = d.get("region", self.region)
        ec2 = self.ec2(region)
        vpc_id = d.get("vpc_id", env.id)
        proof = IsolationProof(family="aws", environment_id=vpc_id)

        def check(name: str, fn: Callable[[], tuple[bool, str]]) -> None:
            try:
                ok, detail = fn()
                proof.checks.append(IsolationCheck(name=name, outcome="PASSED" if ok else "FAILED", detail=detail))
            except ProviderError as exc:
                proof.checks.append(IsolationCheck(name=name, outcome="COULD_NOT_VERIFY", detail=exc.message))
            except ClientError as exc:
                proof.checks.append(IsolationCheck(name=name, outcome="COULD_NOT_VERIFY", detail=f"{_code(exc)}: {exc}"))
            heartbeat({"checked": name})

        vpc_filter = [{"Name": "vpc-id", "Values": [vpc_id]}]

        def vpc() -> tuple[bool, str]:
            vpcs = self._call(ec2.describe_vpcs, "describe_vpcs", VpcIds=[vpc_id]).get("Vpcs", [])
            if not vpcs:
                return False, f"VPC {vpc_id} not found"
            tags = _tags(vpcs[0].get("Tags"))
            cidrs = [a["CidrBlock"] for a in vpcs[0].get("CidrBlockAssociationSet", []) if a.get("CidrBlockState", {}).get("State", "associated") == "associated"] or [vpcs[0].get("CidrBlock")]
            v6 = [a.get("Ipv6CidrBlock") for a in vpcs[0].get("Ipv6CidrBlockAssociationSet", []) or []]
            ok = tags.get(TAG_DRILL_ID) == ctx.drill_id and not v6
            return ok, f"VPC {vpc_id} tagged {TAG_DRILL_ID}={tags.get(TAG_DRILL_ID)}; CIDR {', '.join(cidrs)}; IPv6 blocks: {v6 or 'none'}"

        def igw() -> tuple[bool, str]:
            found = self._pages(ec2, "describe_internet_gateways", "InternetGateways", Filters=[{"Name": "attachment.vpc-id", "Values": [vpc_id]}])
            found = [g for g in found if any(a.get("VpcId") == vpc_id for a in g.get("Attachments", []))]
            eigw = self._pages(ec2, "describe_egress_only_internet_gateways", "EgressOnlyInternetGateways")
            eigw = [g for g in eigw if any(a.get("VpcId") == vpc_id for a in g.get("Attachments", []))]
            ids = [g["InternetGatewayId"] for g in found] + [g["EgressOnlyInternetGatewayId"] for g in eigw]
            return not ids, f"internet gateways and egress-only internet gateways attached to {vpc_id}: {ids or 'none'}"

        def nat() -> tuple[bool, str]:
            found = self._pages(ec2, "describe_nat_gateways", "NatGateways", Filters=vpc_filter)
            live = [g["NatGatewayId"] for g in found if g.get("VpcId", vpc_id) == vpc_id and g.get("State") not in ("deleted", "failed")]
            return not live, f"NAT gateways in {vpc_id}: {live or 'none'}"

        def peering() -> tuple[bool, str]:
            seen = []
            for side in ("requester-vpc-info.vpc-id", "accepter-vpc-info.vpc-id"):
                for p in self._pages(ec2, "describe_vpc_peering_connections", "VpcPeeringConnections", Filters=[{"Name": side, "Values": [vpc_id]}]):
                    ends = {p.get("RequesterVpcInfo", {}).get("VpcId"), p.get("AccepterVpcInfo", {}).get("VpcId")}
                    if vpc_id in ends and p.get("Status", {}).get("Code") not in ("deleted", "rejected", "failed", "expired"):
                        seen.append(p["VpcPeeringConnectionId"])
            return not seen, f"VPC peering connections of {vpc_id} (requester or accepter, not deleted/rejected): {sorted(set(seen)) or 'none'}"

        def endpoints() -> tuple[bool, str]:
            found = self._pages(ec2, "describe_vpc_endpoints", "VpcEndpoints", Filters=vpc_filter)
            live = [e["VpcEndpointId"] for e in found if e.get("VpcId") == vpc_id and e.get("State", "").lower() not in ("deleted", "deleting", "rejected", "failed")]
            return not live, f"VPC endpoints in {vpc_id}: {live or 'none'}"

        def vpn_tgw() -> tuple[bool, str]:
            vgw = self._call(ec2.describe_vpn_gateways, "describe_vpn_gateways", Filters=[{"Name": "attachment.vpc-id", "Values": [vpc_id]}]).get("VpnGateways", [])
            vgw = [g["VpnGatewayId"] for g in vgw if any(a.get("VpcId") == vpc_id and a.get("State") in ("attaching", "attached") for a in g.get("VpcAttachments", []))]
            tgw = self._pages(ec2, "describe_transit_gateway_vpc_attachments", "TransitGatewayVpcAttachments", Filters=vpc_filter)
            tgw = [a["TransitGatewayAttachmentId"] for a in tgw if a.get("VpcId") == vpc_id and a.get("State") not in ("deleted", "deleting", "rejected", "failed")]
            return not (vgw or tgw), f"virtual private gateways attached: {vgw or 'none'}; transit gateway attachments: {tgw or 'none'}"

        def routes() -> tuple[bool, str]:
            tables = self._pages(ec2, "describe_route_tables", "RouteTables", Filters=vpc_filter)
            bad, n = [], 0
            for t in tables:
                for r in t.get("Routes", []):
                    n += 1
                    dest = r.get("DestinationCidrBlock") or r.get("DestinationIpv6CidrBlock") or r.get("DestinationPrefixListId")
                    if r.get("GatewayId") == "local":
                        continue
                    via = next((r[k] for k in ("GatewayId", "NatGatewayId", "VpcPeeringConnectionId", "TransitGatewayId", "NetworkInterfaceId",
                                                 "InstanceId", "EgressOnlyInternetGatewayId", "CarrierGatewayId", "LocalGatewayId", "CoreNetworkArn") if r.get(k)), "?")
                    bad.append(f"{t['RouteTableId']}: {dest} via {via}")
            ids = [t["RouteTableId"] for t in tables]
            return (not bad and bool(tables)), (
                f"{len(tables)} route table(s) {ids}, {n} route(s); non-local routes: {bad or 'none'}" if tables else f"no route table found for {vpc_id}"
            )

        def subnets() -> tuple[bool, str]:
            found = self._pages(ec2, "describe_subnets", "Subnets", Filters=vpc_filter)
            public = [s["SubnetId"] for s in found if s.get("MapPublicIpOnLaunch") or s.get("AssignIpv6AddressOnCreation")]
            return not public, f"subnets {[s['SubnetId'] for s in found]}; assigning public addresses on launch: {public or 'none'}"

        def security_group() -> tuple[bool, str]:
            sg_id = d.get("security_group_id")
            if not sg_id:
                return False, "the environment names no security group"
            sgs = self._call(ec2.describe_security_groups, "describe_security_groups", GroupIds=[sg_id]).get("SecurityGroups", [])
            if not sgs:
                return False, f"security group {sg_id} not found"
            sg = sgs[0]
            egress = _describe_perms(sg.get("IpPermissionsEgress", []))
            allowed = _perm_sources(_ingress_permissions(d.get("allow_ingress_from", [])))
            ingress_sources = _perm_sources(sg.get("IpPermissions", []))
            extra = sorted(ingress_sources - allowed)
            ok = not egress and not extra and sg.get("VpcId") == vpc_id
            return ok, (
                f"security group {sg_id} in {sg.get('VpcId')}: egress rules: {egress or 'none'}; "
                f"ingress sources: {sorted(ingress_sources) or 'none'} (allowed: {sorted(allowed) or 'none'}); not allowed: {extra or 'none'}"
            )

        check("vpc", vpc)
        check("no internet gateway", igw)
        check("no NAT gateway", nat)
        check("no VPC peering", peering)
        check("no VPC endpoints", endpoints)
        check("no VPN or transit gateway", vpn_tgw)
        check("only local routes", routes)
        check("private subnets", subnets)
        check("security group", security_group)
        return proof

    # ------------------------------------------------------------------ restore

    @_translated
    def restore(self, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment) -> RestoredResource:
        region = env.details.get("region", self.region)
        if target.provider == "aws.ebs":
            return self._restore_ebs(ctx, target, point, env, region)
        if target.provider == "aws.ec2":
            return self._restore_ec2(ctx, target, point, env, region)
        if target.provider == "aws.rds":
            return self._restore_rds(ctx, target, point, env, region)
        raise ProviderError("BAD_SPEC", f"the aws provider does not handle {target.provider!r}")

    def _target_filters(self, ctx: DrillContext, target: str, extra: Optional[list] = None) -> list[dict]:
        return self._drill_filters(ctx, [{"Name": f"tag:{TAG_TARGET}", "Values": [target]}] + (extra or []))

    def _restore_ebs(self, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment, region: str) -> RestoredResource:
        ec2 = self.ec2(region)
        az = env.details["availability_zone"]
        found = [
            v for v in self._pages(ec2, "describe_volumes", "Volumes", Filters=self._target_filters(ctx, target.name))
            if v.get("State") not in ("deleting", "deleted", "error")
        ]
        if found:
            vol = found[0]
        else:
            vol = self._call(
                ec2.create_volume,
                "create_volume",
                SnapshotId=point.id,
                AvailabilityZone=az,
                VolumeType="gp3",
                ClientToken=client_token(ctx, target.name, "volume"),
                TagSpecifications=[{"ResourceType": "volume", "Tags": _tag_list({**ctx.tags(target.name), "Name": ctx.resource_name(target.name, max_len=255)})}],
            )
        return RestoredResource(
            target=target.name,
            provider=target.provider,
            id=vol["VolumeId"],
            description=f"volume {vol['VolumeId']} from {point.id} in {az}",
            details={"region": region, "kind": "volume", "volume_id": vol["VolumeId"], "snapshot_id": point.id, "availability_zone": az},
        )

    def _restore_ec2(self, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment, region: str) -> RestoredResource:
        ec2 = self.ec2(region)
        meta = point.metadata
        tags = ctx.tags(target.name)
        name = ctx.resource_name(target.name, max_len=128)
        live = [
            i
            for r in self._pages(ec2, "describe_instances", "Reservations", Filters=self._target_filters(ctx, target.name, [{"Name": "instance-state-name", "Values": _PENDING_INSTANCE_STATES}]))
            for i in r.get("Instances", [])
        ]
        image_id = meta.get("image_id") or target.source.image_id
        registered = None
        if not live and not image_id:
            image_id, registered = self._register_image(ctx, target, point, region, name, tags)
        if live:
            inst = live[0]
        else:
            subnet = env.details["subnets"][0]
            mappings = [
                {"DeviceName": dev, "Ebs": {"SnapshotId": snap, "DeleteOnTermination": True, "VolumeType": "gp3"}}
                for dev, snap in sorted(meta.get("data", {}).items())
            ]
            kwargs: dict[str, Any] = dict(
                ImageId=image_id,
                InstanceType=target.source.instance_type,
                MinCount=1,
                MaxCount=1,
                ClientToken=client_token(ctx, target.name, "instance"),
                NetworkInterfaces=[
                    {
                        "DeviceIndex": 0,
                        "SubnetId": subnet["id"],
                        "Groups": [env.details["security_group_id"]],
                        "AssociatePublicIpAddress": False,
                        "DeleteOnTermination": True,
                    }
                ],
                MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},
                TagSpecifications=[
                    {"ResourceType": "instance", "Tags": _tag_list({**tags, "Name": name})},
                    {"ResourceType": "volume", "Tags": _tag_list({**tags, "Name": name})},
                    {"ResourceType": "network-interface", "Tags": _tag_list({**tags, "Name": name})},
                ],
            )
            if mappings:
                kwargs["BlockDeviceMappings"] = mappings
            inst = self._call(ec2.run_instances, "run_instances", **kwargs)["Instances"][0]
        return RestoredResource(
            target=target.name,
            provider=target.provider,
            id=inst["InstanceId"],
            description=f"instance {inst['InstanceId']} from {point.id} in subnet {env.details['subnets'][0]['id']}",
            details={
                "region": region,
                "kind": "instance",
                "instance_id": inst["InstanceId"],
                "image_id": inst.get("ImageId", image_id),
                "registered_image": registered,
                "data_snapshots": meta.get("data", {}),
                "subnet_id": env.details["subnets"][0]["id"],
                "security_group_id": env.details["security_group_id"],
            },
        )

    def _register_image(self, ctx: DrillContext, target: Any, point: RecoveryPoint, region: str, name: str, tags: dict) -> tuple[str, str]:
        ec2 = self.ec2(region)
        found = self._pages(ec2, "describe_images", "Images", Owners=["self"], Filters=self._target_filters(ctx, target.name))
        if not found:
            # No ClientToken on RegisterImage: the deterministic name is the idempotency key.
            found = self._pages(ec2, "describe_images", "Images", Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])
            if found and _tags(found[0].get("Tags")).get(TAG_DRILL_ID) not in (None, ctx.drill_id):
                raise ProviderError("NAME_CONFLICT", f"AMI {name} exists and belongs to drill {_tags(found[0].get('Tags')).get(TAG_DRILL_ID)}")
        if found:
            image_id = found[0]["ImageId"]
        else:
            meta = point.metadata
            root = meta["root_device"]
            image_id = self._call(
                ec2.register_image,
                "register_image",
                Name=name,
                Description=f"drdrill drill {ctx.drill_id}: {target.name} from {meta['root_snapshot']}",
                Architecture=meta.get("architecture", "x86_64"),
                RootDeviceName=root,
                VirtualizationType="hvm",
                EnaSupport=True,
                BlockDeviceMappings=[{"DeviceName": root, "Ebs": {"SnapshotId": meta["root_snapshot"], "DeleteOnTermination": True, "VolumeType": "gp3"}}],
                TagSpecifications=[{"ResourceType": "image", "Tags": _tag_list({**tags, "Name": name})}],
            )["ImageId"]
        self._ensure_tags(ec2, image_id, tags, "image")
        return image_id, image_id

    def _ensure_tags(self, ec2: Any, resource_id: str, tags: dict, what: str) -> None:
        """Tags go on at creation (TagSpecifications). An emulator that drops them (moto's
        RegisterImage does) would leave an untraceable resource: tag it now so teardown finds it."""
        if what == "image":
            imgs = self._call(ec2.describe_images, "describe_images", ImageIds=[resource_id]).get("Images", [])
            have = _tags(imgs[0].get("Tags")) if imgs else {}
        else:
            have = {}
        if have.get(TAG_DRILL_ID) != tags[TAG_DRILL_ID]:
            self._call(ec2.create_tags, "create_tags", Resources=[resource_id], Tags=_tag_list(tags))

    def _restore_rds(self, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment, region: str) -> RestoredResource:
        rds = self.rds(region)
        ident = rds_identifier(ctx.resource_name(target.name))
        existing = self._db_instance(region, ident)
        if existing is not None:
            if self._rds_tags(region, existing).get(TAG_DRILL_ID) != ctx.drill_id:
                raise ProviderError("NAME_CONFLICT", f"DB instance {ident} exists but lacks {TAG_DRILL_ID}={ctx.drill_id}: refusing to use it")
            db = existing
        else:
            common = dict(
                DBInstanceClass=target.source.db_instance_class,
                DBSubnetGroupName=env.details["db_subnet_group"],
                VpcSecurityGroupIds=[env.details["security_group_id"]],
                PubliclyAccessible=False,
                MultiAZ=False,
                DeletionProtection=False,
                CopyTagsToSnapshot=False,
                AutoMinorVersionUpgrade=False,
                Tags=_tag_list({**ctx.tags(target.name), "Name": ident}),
            )
            try:
                if point.metadata.get("kind") == "pitr":
                    db = self._call(
                        rds.restore_db_instance_to_point_in_time,
                        "restore_db_instance_to_point_in_time",
                        SourceDBInstanceIdentifier=point.metadata["source_db"],
                        TargetDBInstanceIdentifier=ident,
                        RestoreTime=_aware(point.metadata["restore_time"]),
                        **common,
                    )["DBInstance"]
                else:
                    db = self._call(
                        rds.restore_db_instance_from_db_snapshot,
                        "restore_db_instance_from_db_snapshot",
                        DBInstanceIdentifier=ident,
                        DBSnapshotIdentifier=point.id,
                        **common,
                    )["DBInstance"]
            except ClientError as exc:
                code = _code(exc)
                if code in ("DBInstanceAlreadyExists", "DBInstanceAlreadyExistsFault"):
                    return self._restore_rds(ctx, target, point, env, region)
                if code in _RDS_NOT_FOUND:
                    raise ProviderError("RECOVERY_POINT_NOT_FOUND", f"target {target.name}: {point.id} is gone: {exc}") from exc
                raise
        return RestoredResource(
            target=target.name,
            provider=target.provider,
            id=ident,
            description=f"DB instance {ident} from {point.id}",
            details={
                "region": region,
                "kind": "db-instance",
                "db_instance_identifier": ident,
                "source": point.id,
                "security_group_id": env.details["security_group_id"],
                "db_subnet_group": env.details["db_subnet_group"],
            },
        )

    # ------------------------------------------------------------------ readiness

    @_translated
    def wait_ready(self, ctx: DrillContext, target: Any, resource: RestoredResource, timeout: float) -> RestoredResource:
        region = resource.details.get("region", self.region)
        kind = resource.details.get("kind")
        res = resource.model_copy(deep=True)
        if kind == "volume":
            self._wait_volume(region, res, timeout)
        elif kind == "instance":
            self._wait_instance(ctx, region, res, timeout)
        elif kind == "db-instance":
            self._wait_db(region, res, timeout)
        else:
            raise ProviderError("BAD_STATE", f"unknown restored resource kind {kind!r}")
        if self.endpoint_url:
            res.endpoint["aws_endpoint_url"] = self.endpoint_url
        res.ready = True
        return res

    def _wait_volume(self, region: str, res: RestoredResource, timeout: float) -> None:
        ec2 = self.ec2(region)

        def probe() -> dict:
            vols = self._call(ec2.describe_volumes, "describe_volumes", VolumeIds=[res.id]).get("Volumes", [])
            if not vols:
                raise NotReadyYet("volume not visible yet")
            state = vols[0].get("State")
            if state == "error":
                raise ProviderError("RESTORE_FAILED", f"volume {res.id} from {res.details['snapshot_id']} went into state 'error'")
            if state not in ("available", "in-use"):
                raise NotReadyYet(f"volume is {state}")
            return vols[0]

        vol = self._poll(probe, timeout=timeout, what=f"volume {res.id}")
        res.endpoint.update(
            {
                "volume_id": res.id,
                "snapshot_id": vol.get("SnapshotId") or res.details["snapshot_id"],
                "expected_snapshot_id": res.details["snapshot_id"],
                "availability_zone": vol.get("AvailabilityZone"),
                "size_gib": vol.get("Size"),
                "region": region,
            }
        )

    def _wait_instance(self, ctx: DrillContext, region: str, res: RestoredResource, timeout: float) -> None:
        ec2 = self.ec2(region)

        def probe() -> dict:
            found = [i for r in self._call(ec2.describe_instances, "describe_instances", InstanceIds=[res.id]).get("Reservations", []) for i in r.get("Instances", [])]
            if not found:
                raise NotReadyYet("instance not visible yet")
            state = found[0]["State"]["Name"]
            if state in ("shutting-down", "terminated", "stopping", "stopped"):
                reason = found[0].get("StateReason", {}).get("Message", "")
                raise ProviderError("RESTORE_FAILED", f"instance {res.id} is {state}: {reason}")
            if state != "running":
                raise NotReadyYet(f"instance is {state}")
            return found[0]

        inst = self._poll(probe, timeout=timeout, what=f"instance {res.id}")

        def status_ok() -> None:
            st = self._call(ec2.describe_instance_status, "describe_instance_status", InstanceIds=[res.id]).get("InstanceStatuses", [])
            if not st:
                raise NotReadyYet("no status checks yet")
            sys_s, inst_s = st[0].get("SystemStatus", {}).get("Status"), st[0].get("InstanceStatus", {}).get("Status")
            if "impaired" in (sys_s, inst_s):
                raise ProviderError("RESTORE_FAILED", f"instance {res.id} status checks: system {sys_s}, instance {inst_s}")
            if (sys_s, inst_s) != ("ok", "ok"):
                raise NotReadyYet(f"status checks: system {sys_s}, instance {inst_s}")

        self._poll(status_ok, timeout=timeout, what=f"status checks of {res.id}")
        tags = ctx.tags(res.target)
        volumes = [m["Ebs"]["VolumeId"] for m in inst.get("BlockDeviceMappings", []) if "Ebs" in m]
        if volumes:
            vols = self._call(ec2.describe_volumes, "describe_volumes", VolumeIds=volumes).get("Volumes", [])
            untagged = [v["VolumeId"] for v in vols if _tags(v.get("Tags")).get(TAG_DRILL_ID) != ctx.drill_id]
            if untagged:  # TagSpecifications "volume" covers these in AWS; keep teardown able to find them regardless
                self._call(ec2.create_tags, "create_tags", Resources=untagged, Tags=_tag_list(tags))
        public = inst.get("PublicIpAddress") or next(
            (n["Association"]["PublicIp"] for n in inst.get("NetworkInterfaces", []) if n.get("Association", {}).get("PublicIp")), None
        )
        groups = _instance_groups(inst)
        if public or groups != [res.details["security_group_id"]]:
            res.findings.append(
                Finding(
                    code="ISOLATION_BROKEN",
                    target=res.target,
                    message=f"restored instance {res.id} has public address {public or 'none'} and security groups {groups}",
                )
            )
        res.endpoint.update(
            {
                "instance_id": res.id,
                "private_ip": inst.get("PrivateIpAddress", ""),
                "image_id": inst.get("ImageId", ""),
                "subnet_id": inst.get("SubnetId", ""),
                "volume_ids": ",".join(volumes),
                "data_snapshot_ids": ",".join(f"{d}={s}" for d, s in sorted(res.details.get("data_snapshots", {}).items())),
                "security_group_id": res.details["security_group_id"],
                "region": region,
            }
        )
        res.endpoint["host"] = inst.get("PrivateIpAddress", "")

    def _wait_db(self, region: str, res: RestoredResource, timeout: float) -> None:
        rds = self.rds(region)
        made_private = False

        def probe() -> dict:
            db = self._db_instance(region, res.id)
            if db is None:
                raise NotReadyYet("DB instance not visible yet")
            status = db.get("DBInstanceStatus")
            if status in ("failed", "incompatible-restore", "incompatible-parameters", "incompatible-network", "restore-error", "deleting", "storage-full"):
                raise ProviderError("RESTORE_FAILED", f"DB instance {res.id} is {status}")
            if status != "available":
                raise NotReadyYet(f"DB instance is {status}")
            return db

        db = self._poll(probe, timeout=timeout, what=f"DB instance {res.id}")
        if db.get("PubliclyAccessible"):
            # Restores ask for PubliclyAccessible=False; if the result is public anyway, fix it and say so.
            self._call(rds.modify_db_instance, "modify_db_instance", DBInstanceIdentifier=res.id, PubliclyAccessible=False, ApplyImmediately=True)
            made_private = True
            db = self._poll(probe, timeout=timeout, what=f"DB instance {res.id} (made private)")
        groups = sorted(g["VpcSecurityGroupId"] for g in db.get("VpcSecurityGroups", []))
        subnet_group = (db.get("DBSubnetGroup") or {}).get("DBSubnetGroupName")
        problems = []
        if db.get("PubliclyAccessible"):
            problems.append("is publicly accessible")
        if groups and groups != [self._sg_of(res)]:
            problems.append(f"has security groups {groups}")
        if subnet_group and subnet_group != res.details.get("db_subnet_group", subnet_group):
            problems.append(f"is in subnet group {subnet_group}")
        if problems:
            res.findings.append(Finding(code="ISOLATION_BROKEN", target=res.target, message=f"restored DB {res.id} " + " and ".join(problems)))
        elif made_private:
            res.findings.append(
                Finding(
                    code="RDS_MADE_PRIVATE",
                    severity="warning",
                    target=res.target,
                    message=f"restored DB {res.id} came up publicly accessible although the restore asked otherwise; drdrill made it private before any check",
                )
            )
        ep = db.get("Endpoint") or {}
        engine = db.get("Engine", "")
        dbname = db.get("DBName") or ("postgres" if "postgres" in engine else "")
        user = db.get("MasterUsername", "")
        res.endpoint.update(
            {
                "host": ep.get("Address", ""),
                "port": ep.get("Port", ""),
                "dbname": dbname,
                "user": user,
                "engine": engine,
                "db_instance_identifier": res.id,
                "region": region,
            }
        )
        if "postgres" in engine and ep.get("Address"):
            # The password is the source's master password: give it to the worker as PGPASSWORD (or .pgpass).
            res.endpoint["dsn"] = f"host={ep['Address']} port={ep.get('Port', 5432)} dbname={dbname} user={user} sslmode=require"

    def _sg_of(self, res: RestoredResource) -> str:
        return res.details.get("security_group_id", "")

    # ------------------------------------------------------------------ inventory and teardown

    def inventory(self, region: str, drill_id: Optional[str] = None) -> list[Item]:
        """Every resource in `region` carrying drdrill's tag (this drill's only, when given)."""
        ec2, rds = self.ec2(region), self.rds(region)
        flt = [{"Name": f"tag:{TAG_DRILL_ID}", "Values": [drill_id]}] if drill_id else [{"Name": "tag-key", "Values": [TAG_DRILL_ID]}]
        items: list[Item] = []

        def keep(tags: dict) -> bool:
            return TAG_DRILL_ID in tags and (drill_id is None or tags[TAG_DRILL_ID] == drill_id)

        for db in self._pages(rds, "describe_db_instances", "DBInstances"):
            ident = db["DBInstanceIdentifier"]
            if "TagList" not in db and not ident.startswith("drdrill-"):
                continue
            tags = self._rds_tags(region, db)
            if keep(tags):
                items.append(Item("rds-instance", ident, region, tags, db.get("DBInstanceStatus", "")))
        for r in self._pages(ec2, "describe_instances", "Reservations", Filters=flt + [{"Name": "instance-state-name", "Values": _PENDING_INSTANCE_STATES}]):
            for i in r.get("Instances", []):
                tags = _tags(i.get("Tags"))
                if keep(tags) and i["State"]["Name"] != "terminated":
                    items.append(Item("ec2-instance", i["InstanceId"], region, tags, i["State"]["Name"]))
        for img in self._pages(ec2, "describe_images", "Images", Owners=["self"], Filters=flt):
            tags = _tags(img.get("Tags"))
            if keep(tags):
                items.append(Item("ami", img["ImageId"], region, tags, img.get("State", "")))
        for v in self._pages(ec2, "describe_volumes", "Volumes", Filters=flt):
            tags = _tags(v.get("Tags"))
            if keep(tags) and v.get("State") != "deleted":
                items.append(Item("volume", v["VolumeId"], region, tags, v.get("State", "")))
        for g in self._pages(rds, "describe_db_subnet_groups", "DBSubnetGroups"):
            if not g["DBSubnetGroupName"].startswith("drdrill-"):
                continue
            tags = self._rds_tags(region, g)
            if keep(tags):
                items.append(Item("rds-subnet-group", g["DBSubnetGroupName"], region, tags))
        for g in self._pages(ec2, "describe_security_groups", "SecurityGroups", Filters=flt):
            tags = _tags(g.get("Tags"))
            if keep(tags) and g.get("GroupName") != "default":
                items.append(Item("security-group", g["GroupId"], region, tags, extra={"vpc_id": g.get("VpcId")}))
        for s in self._pages(ec2, "describe_subnets", "Subnets", Filters=flt):
            tags = _tags(s.get("Tags"))
            if keep(tags):
                items.append(Item("subnet", s["SubnetId"], region, tags, extra={"vpc_id": s.get("VpcId")}))
        for v in self._pages(ec2, "describe_vpcs", "Vpcs", Filters=flt):
            tags = _tags(v.get("Tags"))
            if keep(tags):
                items.append(Item("vpc", v["VpcId"], region, tags))
        return items

    @_translated
    def teardown(self, ctx: DrillContext, env: Environment) -> TeardownReport:
        """Teardown never gives up: every failure is retryable (the workflow retries it forever and alerts)."""
        try:
            return self._teardown(ctx, env)
        except ProviderError as exc:
            exc.retryable = True
            raise
        except ClientError as exc:
            raise ProviderError("TEARDOWN_FAILED", f"{_code(exc)}: {exc}", retryable=True) from exc

    def _teardown(self, ctx: DrillContext, env: Environment) -> TeardownReport:
        report = TeardownReport(family="aws", environment_id=env.id)
        regions = [env.details["region"]] if env.details.get("region") else self.regions
        for region in regions:
            items = self.inventory(region, ctx.drill_id)
            ids = {i.id for i in items}
            # Things the environment names but the tag search did not find: gone, or not ours.
            named: list[tuple[str, str]] = []
            if env.details.get("vpc_id"):
                named.append(("vpc", env.details["vpc_id"]))
            if env.details.get("security_group_id"):
                named.append(("security-group", env.details["security_group_id"]))
            named += [("subnet", s["id"]) for s in env.details.get("subnets", [])]
            if env.details.get("db_subnet_group"):
                named.append(("rds-subnet-group", env.details["db_subnet_group"]))
            for kind, rid in named:
                if rid in ids or env.details.get("region", region) != region:
                    continue
                tags = self._current_tags(region, kind, rid)
                if tags is None:
                    report.already_gone.append(f"{kind} {rid}")
                elif tags.get(TAG_DRILL_ID) != ctx.drill_id:
                    report.refused.append(f"{kind} {rid} (in {region})")
            for item in sorted(items, key=lambda i: DELETE_ORDER.index(i.kind)):
                if item.tags.get(TAG_DRILL_ID) != ctx.drill_id:  # never: the search filters by tag
                    report.refused.append(f"{item.kind} {item.id}")
                    continue
                if report.refused and item.kind in ("subnet", "vpc"):
                    # Something in the network is not provably ours: keep the network, say why.
                    report.refused.append(f"{item.kind} {item.id} (kept: the network holds resources without this drill's tag)")
                    continue
                heartbeat({"deleting": f"{item.kind} {item.id}"})
                try:
                    outcome = self._delete(item)
                except ProviderError as exc:
                    if report.refused:
                        raise ProviderError(
                            exc.code,
                            f"{exc.message}; left alone because they lack {TAG_DRILL_ID}={ctx.drill_id}: {', '.join(report.refused)}",
                            retryable=True,
                        ) from exc
                    raise
                (report.deleted if outcome == "deleted" else report.already_gone).append(f"{item.kind} {item.id}")
        return report

    def _current_tags(self, region: str, kind: str, rid: str) -> Optional[dict[str, str]]:
        """The resource's tags now, or None when it does not exist."""
        ec2, rds = self.ec2(region), self.rds(region)
        try:
            if kind == "ec2-instance":
                found = [i for r in self._call(ec2.describe_instances, "describe_instances", InstanceIds=[rid]).get("Reservations", []) for i in r["Instances"]]
                found = [i for i in found if i["State"]["Name"] != "terminated"]
            elif kind == "ami":
                found = self._call(ec2.describe_images, "describe_images", ImageIds=[rid]).get("Images", [])
            elif kind == "volume":
                found = self._call(ec2.describe_volumes, "describe_volumes", VolumeIds=[rid]).get("Volumes", [])
            elif kind == "security-group":
                found = self._call(ec2.describe_security_groups, "describe_security_groups", GroupIds=[rid]).get("SecurityGroups", [])
            elif kind == "subnet":
                found = self._call(ec2.describe_subnets, "describe_subnets", SubnetIds=[rid]).get("Subnets", [])
            elif kind == "vpc":
                found = self._call(ec2.describe_vpcs, "describe_vpcs", VpcIds=[rid]).get("Vpcs", [])
            elif kind == "rds-instance":
                db = self._db_instance(region, rid)
                return None if db is None else self._rds_tags(region, db)
            elif kind == "rds-subnet-group":
                groups = self._call(rds.describe_db_subnet_groups, "describe_db_subnet_groups", DBSubnetGroupName=rid).get("DBSubnetGroups", [])
                return self._rds_tags(region, groups[0]) if groups else None
            else:
                raise ProviderError("BAD_STATE", f"unknown resource kind {kind!r}")
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            raise
        return _tags(found[0].get("Tags")) if found else None

    def _delete(self, item: Item) -> str:
        """Delete one resource and wait until it is gone. Returns 'deleted' or 'already gone'."""
        ec2, rds = self.ec2(item.region), self.rds(item.region)
        kind, rid = item.kind, item.id
        what = f"{kind} {rid}"

        def attempt(fn: Callable[[], Any]) -> str:
            """Run a delete; not-found is done; dependency errors are polled until they clear."""

            def once() -> str:
                try:
                    fn()
                    return "deleted"
                except ClientError as exc:
                    code = _code(exc)
                    if code in _NOT_FOUND:
                        return "already gone"
                    if code in ("DependencyViolation", "InvalidDBSubnetGroupStateFault", "InvalidDBInstanceState", "InvalidDBInstanceStateFault", "IncorrectState", "VolumeInUse"):
                        raise NotReadyYet(f"{code}: {exc.response.get('Error', {}).get('Message', '')}") from exc
                    raise

            try:
                return self._poll(once, timeout=self.dependency_wait, what=f"deleting {what}")
            except ProviderError as exc:
                if exc.code == "READY_TIMEOUT":
                    raise ProviderError("TEARDOWN_BLOCKED", exc.message, retryable=True) from exc
                raise

        if kind == "rds-instance":
            if item.state == "deleting":
                outcome = "deleted"
            else:
                outcome = attempt(lambda: self._call(rds.delete_db_instance, "delete_db_instance", DBInstanceIdentifier=rid, SkipFinalSnapshot=True, DeleteAutomatedBackups=True))
            self._poll(lambda: self._gone(self._db_instance(item.region, rid) is None, what), timeout=self.dependency_wait, what=f"deletion of {what}")
            return outcome
        if kind == "ec2-instance":
            outcome = attempt(lambda: self._call(ec2.terminate_instances, "terminate_instances", InstanceIds=[rid]))
            self._poll(lambda: self._gone(self._current_tags(item.region, kind, rid) is None, what), timeout=self.dependency_wait, what=f"termination of {what}")
            return outcome
        if kind == "ami":
            return attempt(lambda: self._call(ec2.deregister_image, "deregister_image", ImageId=rid))
        if kind == "volume":
            return attempt(lambda: self._call(ec2.delete_volume, "delete_volume", VolumeId=rid))
        if kind == "rds-subnet-group":
            return attempt(lambda: self._call(rds.delete_db_subnet_group, "delete_db_subnet_group", DBSubnetGroupName=rid))
        if kind == "security-group":
            return attempt(lambda: self._call(ec2.delete_security_group, "delete_security_group", GroupId=rid))
        if kind == "subnet":
            return attempt(lambda: self._call(ec2.delete_subnet, "delete_subnet", SubnetId=rid))
        if kind == "vpc":
            return attempt(lambda: self._call(ec2.delete_vpc, "delete_vpc", VpcId=rid))
        raise ProviderError("BAD_STATE", f"unknown resource kind {kind!r}")

    @staticmethod
    def _gone(is_gone: bool, what: str) -> None:
        if not is_gone:
            raise NotReadyYet(f"{what} still exists")

    # ------------------------------------------------------------------ orphans

    @_translated
    def list_orphans(self, now: datetime, active_drill_ids: set[str]) -> list[Orphan]:
        out: list[Orphan] = []
        for region in self.regions:
            for item in self.inventory(region):
                drill = item.tags.get(TAG_DRILL_ID, "")
                expires = _parse_expiry(item.tags.get(TAG_EXPIRES_AT))
                expired = expires is not None and expires < now
                if drill in active_drill_ids and not expired:
                    continue
                out.append(
                    Orphan(
                        provider="aws",
                        id=item.id,
                        kind=item.kind,
                        drill_id=drill,
                        expires_at=expires,
                        region=region,
                        details={
                            "target": item.tags.get(TAG_TARGET),
                            "state": item.state,
                            "reason": "expired" if expired else "drill not active",
                            "delete_order": DELETE_ORDER.index(item.kind),
                        },
                    )
                )
        return sorted(out, key=lambda o: (o.drill_id, o.details["delete_order"], o.id))

    @_translated
    def delete_orphan(self, orphan: Orphan) -> str:
        region = orphan.region or self.region
        if orphan.kind not in DELETE_ORDER:
            raise ProviderError("BAD_STATE", f"unknown resource kind {orphan.kind!r}")
        tags = self._current_tags(region, orphan.kind, orphan.id)
        if tags is None:
            return f"{orphan.kind} {orphan.id}: already gone"
        if tags.get(TAG_DRILL_ID) != orphan.drill_id or not orphan.drill_id:
            return f"{orphan.kind} {orphan.id}: refused (tag {TAG_DRILL_ID} is {tags.get(TAG_DRILL_ID)!r}, expected {orphan.drill_id!r})"
        state = ""
        if orphan.kind == "rds-instance":
            db = self._db_instance(region, orphan.id)
            state = (db or {}).get("DBInstanceStatus", "")
        outcome = self._delete(Item(orphan.kind, orphan.id, region, tags, state))
        return f"{orphan.kind} {orphan.id}: {outcome}"


# ---------------------------------------------------------------------- security group rules


def _instance_groups(inst: dict) -> list[str]:
    """Security groups of an instance: those of its network interfaces (authoritative in a VPC) and
    the instance-level list (moto fills only the former when launched with NetworkInterfaces)."""
    groups = {g["GroupId"] for n in inst.get("NetworkInterfaces", []) for g in n.get("Groups", [])}
    groups |= {g["GroupId"] for g in inst.get("SecurityGroups", [])}
    return sorted(groups)


def _ingress_permissions(sources: Iterable[str]) -> list[dict]:
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


def _perm_sources(perms: Iterable[dict]) -> set[str]:
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


def _describe_perms(perms: Iterable[dict]) -> list[str]:
    out = []
    for p in perms:
        proto = "all" if p.get("IpProtocol") == "-1" else p.get("IpProtocol")
        ports = "" if p.get("FromPort") in (None, -1) else f":{p.get('FromPort')}-{p.get('ToPort')}"
        for s in sorted(_perm_sources([p])):
            out.append(f"{proto}{ports} {s}")
    return out


# ---------------------------------------------------------------------- a check for `command` validations


def check_restored(argv: Optional[list[str]] = None, env: Optional[Mapping[str, str]] = None) -> int:
    """`python -m drdrill.providers.aws check`: read the restored resource back from AWS.

    A `command` validation runs it with the resource's endpoint as DRDRILL_* variables. It proves
    what the AWS API can prove: the volume/instance/DB exists, is usable, came from the chosen
    recovery point, sits in the drill's isolated network and carries the drill's tags. It does not
    read the data on a volume (that needs an instance and an agent: add your own command for that).
    """
    env = dict(os.environ if env is None else env)
    endpoint = env.get("DRDRILL_AWS_ENDPOINT_URL")
    region = env.get("DRDRILL_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    provider = AwsProvider(boto3.session.Session(region_name=region), endpoint_url=endpoint, region=region)
    ec2, rds = provider.ec2(region), provider.rds(region)
    problems: list[str] = []
    try:
        if env.get("DRDRILL_VOLUME_ID") and not env.get("DRDRILL_INSTANCE_ID"):
            vid = env["DRDRILL_VOLUME_ID"]
            vols = ec2.describe_volumes(VolumeIds=[vid])["Volumes"]
            v = vols[0]
            want = env.get("DRDRILL_EXPECTED_SNAPSHOT_ID")
            if v.get("State") not in ("available", "in-use"):
                problems.append(f"volume {vid} is {v.get('State')}")
            if want and v.get("SnapshotId") != want:
                problems.append(f"volume {vid} was created from {v.get('SnapshotId')}, not {want}")
            snap = ec2.describe_snapshots(SnapshotIds=[v["SnapshotId"]])["Snapshots"][0] if v.get("SnapshotId") else None
            if snap and int(v.get("Size", 0)) < int(snap.get("VolumeSize", 0)):
                problems.append(f"volume {vid} is {v.get('Size')} GiB, smaller than its snapshot ({snap.get('VolumeSize')} GiB)")
            if TAG_DRILL_ID not in _tags(v.get("Tags")):
                problems.append(f"volume {vid} lacks the {TAG_DRILL_ID} tag")
            print(f"volume {vid}: {v.get('State')}, {v.get('Size')} GiB from {v.get('SnapshotId')} in {v.get('AvailabilityZone')}")
        elif env.get("DRDRILL_INSTANCE_ID"):
            iid = env["DRDRILL_INSTANCE_ID"]
            inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
            if inst["State"]["Name"] != "running":
                problems.append(f"instance {iid} is {inst['State']['Name']}")
            if inst.get("PublicIpAddress"):
                problems.append(f"instance {iid} has a public address {inst['PublicIpAddress']}")
            groups = _instance_groups(inst)
            if env.get("DRDRILL_SECURITY_GROUP_ID") and groups != [env["DRDRILL_SECURITY_GROUP_ID"]]:
                problems.append(f"instance {iid} has security groups {groups}")
            vols = [m["Ebs"]["VolumeId"] for m in inst.get("BlockDeviceMappings", []) if "Ebs" in m]
            have = {v["VolumeId"]: v.get("SnapshotId") for v in ec2.describe_volumes(VolumeIds=vols)["Volumes"]} if vols else {}
            for pair in filter(None, (env.get("DRDRILL_DATA_SNAPSHOT_IDS") or "").split(",")):
                dev, snap = pair.split("=", 1)
                attached = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in inst.get("BlockDeviceMappings", []) if "Ebs" in m}
                if have.get(attached.get(dev, "")) != snap:
                    problems.append(f"{dev} is not restored from {snap} (found {have.get(attached.get(dev, ''))})")
            print(f"instance {iid}: {inst['State']['Name']} at {inst.get('PrivateIpAddress')} in {inst.get('SubnetId')}, volumes {have}")
        elif env.get("DRDRILL_DB_INSTANCE_IDENTIFIER"):
            ident = env["DRDRILL_DB_INSTANCE_IDENTIFIER"]
            db = rds.describe_db_instances(DBInstanceIdentifier=ident)["DBInstances"][0]
            if db.get("DBInstanceStatus") != "available":
                problems.append(f"DB {ident} is {db.get('DBInstanceStatus')}")
            if db.get("PubliclyAccessible"):
                problems.append(f"DB {ident} is publicly accessible")
            print(f"DB {ident}: {db.get('DBInstanceStatus')} {db.get('Engine')} at {(db.get('Endpoint') or {}).get('Address')}")
        else:
            print("no DRDRILL_VOLUME_ID, DRDRILL_INSTANCE_ID or DRDRILL_DB_INSTANCE_IDENTIFIER: nothing to check", file=sys.stderr)
            return 2
    except (ClientError, BotoCoreError, IndexError, KeyError) as exc:
        print(f"could not read the restored resource: {exc}", file=sys.stderr)
        return 3
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":  # pragma: no cover - exercised through command validations
    sys.exit(check_restored(sys.argv[1:]))
