"""aws.ec2 targets: snapshot sets of an instance's volumes (or an AMI) -> a new instance in the isolated subnet.

The boot disk comes from an AMI registered from the root snapshot (or the source's `image_id`), the
data volumes from snapshots of the same recovery point: snapshots of the instance's volumes taken
within SNAPSHOT_SET_TOLERANCE of each other form one point, as new as its oldest member.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Optional

from drdrill.core.models import TAG_DRILL_ID, DrillContext, Environment, Finding, RecoveryPoint, RestoredResource
from drdrill.core.times import parse_time
from drdrill.providers.aws.clients import GIB, LIVE_INSTANCE_STATES, AwsError, client_token, tag_list, tags_of, target_filters
from drdrill.providers.aws.ebs import EbsTargets
from drdrill.providers.base import NotReadyYet, ProviderError, poll_until

# Snapshots of an instance's volumes taken within this of each other form one recovery point.
SNAPSHOT_SET_TOLERANCE = timedelta(minutes=10)


def instance_groups(inst: dict) -> list[str]:
    """Security groups of an instance: those of its network interfaces (authoritative in a VPC) and
    the instance-level list (moto fills only the former when launched with NetworkInterfaces)."""
    groups = {g["GroupId"] for n in inst.get("NetworkInterfaces", []) for g in n.get("Groups", [])}
    groups |= {g["GroupId"] for g in inst.get("SecurityGroups", [])}
    return sorted(groups)


class Ec2Targets(EbsTargets):
    """Recovery points, restore and readiness of aws.ec2 targets."""

    # ------------------------------------------------------------------ recovery points

    def _ec2_points(self, target: Any) -> list[RecoveryPoint]:
        region = self._target_region(target)
        src = target.source
        inst = self._source_instance(target, region)
        root_dev = inst.get("RootDeviceName") or "/dev/xvda"
        volumes = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in inst.get("BlockDeviceMappings", []) if "Ebs" in m}
        base = {
            "region": region,
            "instance_id": src.instance_id,
            "root_device": root_dev,
            "architecture": inst.get("Architecture", "x86_64"),
            "source_image_id": inst.get("ImageId"),
            "image_id": src.image_id,
        }
        if src.image_id and not any(d != root_dev for d in volumes):
            return [self._image_point(target, region, base)]
        return self._snapshot_sets(target, region, volumes, base)

    def _source_instance(self, target: Any, region: str) -> dict:
        """The source instance: drdrill reads its volume list (and architecture) from it."""
        src = target.source
        missing = f"target {target.name}: instance {src.instance_id} not found in {region}"
        try:
            res = self.call(self.ec2(region).describe_instances, InstanceIds=[src.instance_id])
        except AwsError as exc:
            if exc.not_found or exc.aws_code == "InvalidInstanceID.Malformed":
                raise ProviderError("SOURCE_NOT_FOUND", f"{missing}; drdrill reads its volume list from the instance") from exc
            raise
        instances = [i for r in res.get("Reservations", []) for i in r.get("Instances", [])]
        if not instances:
            raise ProviderError("SOURCE_NOT_FOUND", missing)
        return instances[0]

    def _image_point(self, target: Any, region: str, base: dict) -> RecoveryPoint:
        """An instance without data volumes and with `image_id`: the AMI is the whole recovery point."""
        image_id = base["image_id"]
        imgs = self.call(self.ec2(region).describe_images, ImageIds=[image_id]).get("Images", [])
        if not imgs:
            raise ProviderError("RECOVERY_POINT_NOT_FOUND", f"target {target.name}: AMI {image_id} not found in {region}")
        return RecoveryPoint(
            target=target.name,
            provider=target.provider,
            id=image_id,
            consistent_time=parse_time(imgs[0]["CreationDate"]),
            metadata={**base, "data": {}},
        )

    def _snapshot_sets(self, target: Any, region: str, volumes: dict[str, str], base: dict) -> list[RecoveryPoint]:
        """One point per snapshot of the anchor volume (the root, or the first data volume when the
        boot disk is an AMI) for which every other volume has a snapshot within the tolerance."""
        src = target.source
        root_dev, image_id = base["root_device"], base["image_id"]
        data_devs = [d for d in volumes if d != root_dev]
        anchor_dev = data_devs[0] if image_id else root_dev
        if anchor_dev not in volumes:
            raise ProviderError("SOURCE_NOT_FOUND", f"target {target.name}: instance {src.instance_id} has no EBS root volume")
        by_volume: dict[str, list[dict]] = {}
        for s in self._snapshots(region, list(volumes.values()), src.snapshot_tags):
            by_volume.setdefault(s["VolumeId"], []).append(s)
        others = [d for d in volumes if d != anchor_dev and not (image_id and d == root_dev)]
        points: list[RecoveryPoint] = []
        incomplete = 0
        for anchor in by_volume.get(volumes[anchor_dev], []):
            chosen = _nearest_set(anchor_dev, anchor, {d: by_volume.get(volumes[d], []) for d in others})
            if chosen is None:
                incomplete += 1
                continue
            points.append(
                RecoveryPoint(
                    target=target.name,
                    provider=target.provider,
                    id=anchor["SnapshotId"],
                    # The set is only as new as its oldest member.
                    consistent_time=min(parse_time(s["StartTime"]) for s in chosen.values()),
                    size_bytes=sum(int(s.get("VolumeSize", 0)) for s in chosen.values()) * GIB or None,
                    metadata={
                        **base,
                        "root_snapshot": None if image_id else anchor["SnapshotId"],
                        "data": {d: s["SnapshotId"] for d, s in chosen.items() if d != root_dev},
                        "sizes_gib": {d: s.get("VolumeSize") for d, s in chosen.items()},
                    },
                )
            )
        if not points:
            tagged = f" tagged {src.snapshot_tags}" if src.snapshot_tags else ""
            more = f" ({incomplete} incomplete set(s): a volume lacked a snapshot within {SNAPSHOT_SET_TOLERANCE})" if incomplete else ""
            raise ProviderError(
                "RECOVERY_POINT_NOT_FOUND",
                f"target {target.name}: no complete snapshot set{tagged} of instance {src.instance_id}'s volumes "
                f"({', '.join(f'{d}={v}' for d, v in volumes.items())}) in {region}{more}",
            )
        return points

    # ------------------------------------------------------------------ restore

    def _restore_ec2(self, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment, region: str) -> RestoredResource:
        ec2 = self.ec2(region)
        meta = point.metadata
        subnet_id, sg_id = env.details["subnets"][0]["id"], env.details["security_group_id"]
        # Looked up by tag first: an emulator may ignore the ClientToken, and a retry must not launch twice.
        live = [
            i
            for r in self.pages(ec2, "describe_instances", "Reservations", Filters=target_filters(ctx, target.name, [{"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}]))
            for i in r.get("Instances", [])
        ]
        image_id = meta.get("image_id") or target.source.image_id
        registered = None
        if live:
            inst = live[0]
        else:
            if not image_id:
                image_id = registered = self._register_image(ctx, target, point, region)
            inst = self._run_instance(ctx, target, point, env, region, image_id)
        return RestoredResource(
            target=target.name,
            provider=target.provider,
            id=inst["InstanceId"],
            description=f"instance {inst['InstanceId']} from {point.id} in subnet {subnet_id}",
            details={
                "region": region,
                "kind": "instance",
                "instance_id": inst["InstanceId"],
                "image_id": inst.get("ImageId", image_id),
                "registered_image": registered,
                "data_snapshots": meta.get("data", {}),
                "subnet_id": subnet_id,
                "security_group_id": sg_id,
            },
        )

    def _run_instance(self, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment, region: str, image_id: str) -> dict:
        """Launch into the drill's first subnet and security group, no public address, IMDSv2 only,
        the data volumes from the point's snapshots; instance, volumes and interface tagged at launch."""
        tagged = tag_list({**ctx.tags(target.name), "Name": ctx.resource_name(target.name, max_len=128)})
        mappings = [
            {"DeviceName": dev, "Ebs": {"SnapshotId": snap, "DeleteOnTermination": True, "VolumeType": "gp3"}}
            for dev, snap in sorted(point.metadata.get("data", {}).items())
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
                    "SubnetId": env.details["subnets"][0]["id"],
                    "Groups": [env.details["security_group_id"]],
                    "AssociatePublicIpAddress": False,
                    "DeleteOnTermination": True,
                }
            ],
            MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},
            TagSpecifications=[{"ResourceType": kind, "Tags": tagged} for kind in ("instance", "volume", "network-interface")],
        )
        if mappings:
            kwargs["BlockDeviceMappings"] = mappings
        return self.call(self.ec2(region).run_instances, **kwargs)["Instances"][0]

    def _register_image(self, ctx: DrillContext, target: Any, point: RecoveryPoint, region: str) -> str:
        """The boot AMI registered from the point's root snapshot (found again by tag, then by name)."""
        ec2 = self.ec2(region)
        tags = ctx.tags(target.name)
        name = ctx.resource_name(target.name, max_len=128)
        found = self.pages(ec2, "describe_images", "Images", Owners=["self"], Filters=target_filters(ctx, target.name))
        if not found:
            # No ClientToken on RegisterImage: the deterministic name is the idempotency key.
            found = self.pages(ec2, "describe_images", "Images", Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])
            owner = tags_of(found[0].get("Tags")).get(TAG_DRILL_ID) if found else None
            if owner not in (None, ctx.drill_id):
                raise ProviderError("NAME_CONFLICT", f"AMI {name} exists and belongs to drill {owner}")
        if found:
            image_id = found[0]["ImageId"]
        else:
            meta = point.metadata
            root = meta["root_device"]
            image_id = self.call(
                ec2.register_image,
                Name=name,
                Description=f"drdrill drill {ctx.drill_id}: {target.name} from {meta['root_snapshot']}",
                Architecture=meta.get("architecture", "x86_64"),
                RootDeviceName=root,
                VirtualizationType="hvm",
                EnaSupport=True,
                BlockDeviceMappings=[{"DeviceName": root, "Ebs": {"SnapshotId": meta["root_snapshot"], "DeleteOnTermination": True, "VolumeType": "gp3"}}],
                TagSpecifications=[{"ResourceType": "image", "Tags": tag_list({**tags, "Name": name})}],
            )["ImageId"]
        # Tags go on at registration. An emulator that drops them (moto's RegisterImage does) would
        # leave an untraceable AMI: tag it now so teardown finds it.
        imgs = self.call(ec2.describe_images, ImageIds=[image_id]).get("Images", [])
        if not imgs or tags_of(imgs[0].get("Tags")).get(TAG_DRILL_ID) != ctx.drill_id:
            self.call(ec2.create_tags, Resources=[image_id], Tags=tag_list(tags))
        return image_id

    # ------------------------------------------------------------------ readiness

    def _wait_instance(self, ctx: DrillContext, region: str, res: RestoredResource, timeout: float) -> None:
        """Running, both status checks ok, every volume tagged, and still isolated (a finding if not)."""
        inst = self._wait_running(region, res, timeout)
        self._wait_status_checks(region, res, timeout)
        volumes = [m["Ebs"]["VolumeId"] for m in inst.get("BlockDeviceMappings", []) if "Ebs" in m]
        self._tag_volumes(ctx, region, res.target, volumes)
        public = inst.get("PublicIpAddress") or next(
            (n["Association"]["PublicIp"] for n in inst.get("NetworkInterfaces", []) if n.get("Association", {}).get("PublicIp")), None
        )
        groups = instance_groups(inst)
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
                "host": inst.get("PrivateIpAddress", ""),
            }
        )

    def _wait_running(self, region: str, res: RestoredResource, timeout: float) -> dict:
        ec2 = self.ec2(region)

        def running() -> dict:
            reservations = self.call(ec2.describe_instances, InstanceIds=[res.id]).get("Reservations", [])
            found = [i for r in reservations for i in r.get("Instances", [])]
            if not found:
                raise NotReadyYet("instance not visible yet")
            state = found[0]["State"]["Name"]
            if state in ("shutting-down", "terminated", "stopping", "stopped"):
                reason = found[0].get("StateReason", {}).get("Message", "")
                raise ProviderError("RESTORE_FAILED", f"instance {res.id} is {state}: {reason}")
            if state != "running":
                raise NotReadyYet(f"instance is {state}")
            return found[0]

        return poll_until(running, timeout=timeout, what=f"instance {res.id}", **self.poll_schedule)

    def _wait_status_checks(self, region: str, res: RestoredResource, timeout: float) -> None:
        ec2 = self.ec2(region)

        def status_ok() -> None:
            st = self.call(ec2.describe_instance_status, InstanceIds=[res.id]).get("InstanceStatuses", [])
            if not st:
                raise NotReadyYet("no status checks yet")
            sys_s, inst_s = st[0].get("SystemStatus", {}).get("Status"), st[0].get("InstanceStatus", {}).get("Status")
            if "impaired" in (sys_s, inst_s):
                raise ProviderError("RESTORE_FAILED", f"instance {res.id} status checks: system {sys_s}, instance {inst_s}")
            if (sys_s, inst_s) != ("ok", "ok"):
                raise NotReadyYet(f"status checks: system {sys_s}, instance {inst_s}")

        poll_until(status_ok, timeout=timeout, what=f"status checks of {res.id}", **self.poll_schedule)

    def _tag_volumes(self, ctx: DrillContext, region: str, target: str, volumes: list[str]) -> None:
        """TagSpecifications "volume" covers an instance's volumes in AWS; an emulator may skip them:
        keep teardown able to find them regardless."""
        if not volumes:
            return
        ec2 = self.ec2(region)
        vols = self.call(ec2.describe_volumes, VolumeIds=volumes).get("Volumes", [])
        untagged = [v["VolumeId"] for v in vols if tags_of(v.get("Tags")).get(TAG_DRILL_ID) != ctx.drill_id]
        if untagged:
            self.call(ec2.create_tags, Resources=untagged, Tags=tag_list(ctx.tags(target)))


def _nearest_set(anchor_dev: str, anchor: dict, candidates: dict[str, list[dict]]) -> Optional[dict[str, dict]]:
    """The anchor snapshot plus, for each other device, its snapshot nearest in time within the
    tolerance; None when a device has none (the set is incomplete)."""
    t0 = parse_time(anchor["StartTime"])
    chosen = {anchor_dev: anchor}
    for dev, snaps in candidates.items():
        near = [s for s in snaps if abs(parse_time(s["StartTime"]) - t0) <= SNAPSHOT_SET_TOLERANCE]
        if not near:
            return None
        chosen[dev] = min(near, key=lambda s: abs(parse_time(s["StartTime"]) - t0))
    return chosen
