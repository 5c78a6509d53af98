"""Selections and coverage on AWS: the EBS volumes, EC2 instances and RDS DB instances of every
region searched, each with the times of its recovery points (EBS snapshots; an instance's root
volume snapshots; DB snapshots, or the restorable window of a DB with automated backups).

Read-only (Describe* and ListTagsForResource, all in deploy/aws/iam-policy.json). Whatever carries
drdrill's own tag was restored by a drill, not backed up, and is never listed.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

from drdrill.core.models import TAG_DRILL_ID
from drdrill.core.selection import ProtectedResource, tags_match
from drdrill.core.schema import Selection
from drdrill.core.times import parse_time
from drdrill.providers.aws.clients import LIVE_INSTANCE_STATES, tags_of
from drdrill.providers.aws.ebs import EbsTargets
from drdrill.providers.base import ProviderError

KINDS = ("aws.ebs", "aws.ec2", "aws.rds")
_CHUNK = 200  # values per EC2 filter


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def tag_filters(selection: Selection) -> list[dict]:
    """EC2 filters narrowing the listing to the selection's tags (checked again client-side)."""
    return [
        {"Name": "tag-key", "Values": [k]} if v == "*" else {"Name": f"tag:{k}", "Values": [v]}
        for k, v in sorted(selection.tags.items())
    ]


class AwsDiscovery(EbsTargets):
    """`Provider.discover` and `Provider.protected_inventory` for the aws family."""

    def discover(self, kind: str, selection: Selection) -> list[ProtectedResource]:
        if kind not in KINDS:
            raise ProviderError("SELECTION_NOT_SUPPORTED", f"the aws provider does not select {kind} resources")
        found: list[ProtectedResource] = []
        for region in selection.regions or self.regions:
            found += self._resources(kind, region, tag_filters(selection), lambda tags: tags_match(tags, selection))
        return found

    def protected_inventory(self, protected_tag: Optional[str]) -> list[ProtectedResource]:
        found: list[ProtectedResource] = []
        for region in self.regions:
            for kind in KINDS:
                for r in self._resources(kind, region, [], lambda tags: True):
                    found.append(r.note_protection(protected_tag))
        return found

    # ------------------------------------------------------------------ per kind

    def _resources(self, kind: str, region: str, filters: list[dict], keep: Callable[[dict], bool]) -> list[ProtectedResource]:
        if kind == "aws.ebs":
            return self._volumes(region, filters, keep)
        if kind == "aws.ec2":
            return self._instances(region, filters, keep)
        return self._databases(region, keep)

    def _volumes(self, region: str, filters: list[dict], keep: Callable[[dict], bool]) -> list[ProtectedResource]:
        volumes = [
            v
            for v in self.pages(self.ec2(region), "describe_volumes", "Volumes", Filters=filters)
            if TAG_DRILL_ID not in tags_of(v.get("Tags")) and keep(tags_of(v.get("Tags")))
        ]
        times = self._snapshot_times(region, [v["VolumeId"] for v in volumes])
        return [
            _resource("aws.ebs", v["VolumeId"], tags_of(v.get("Tags")), region, {"volume_id": v["VolumeId"], "region": region}, times.get(v["VolumeId"], []))
            for v in volumes
        ]

    def _instances(self, region: str, filters: list[dict], keep: Callable[[dict], bool]) -> list[ProtectedResource]:
        state = [{"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}]
        reservations = self.pages(self.ec2(region), "describe_instances", "Reservations", Filters=filters + state)
        instances = [
            i
            for r in reservations
            for i in r.get("Instances", [])
            if TAG_DRILL_ID not in tags_of(i.get("Tags")) and keep(tags_of(i.get("Tags")))
        ]
        roots = {i["InstanceId"]: _root_volume(i) for i in instances}
        times = self._snapshot_times(region, [v for v in roots.values() if v])
        return [
            _resource(
                "aws.ec2", i["InstanceId"], tags_of(i.get("Tags")), region, {"instance_id": i["InstanceId"], "region": region},
                times.get(roots[i["InstanceId"]] or "", []),
            )
            for i in instances
        ]

    def _databases(self, region: str, keep: Callable[[dict], bool]) -> list[ProtectedResource]:
        rds = self.rds(region)
        found = []
        dbs = [(db, self._rds_tags(region, db)) for db in self.pages(rds, "describe_db_instances", "DBInstances")]
        dbs = [(db, tags) for db, tags in dbs if TAG_DRILL_ID not in tags and keep(tags)]
        snapshots: dict[str, list] = {}
        if dbs:
            for s in self.pages(rds, "describe_db_snapshots", "DBSnapshots"):
                if s.get("Status") == "available" and s.get("SnapshotCreateTime"):
                    snapshots.setdefault(s.get("DBInstanceIdentifier", ""), []).append(parse_time(s["SnapshotCreateTime"]))
        for db, tags in dbs:
            ident = db["DBInstanceIdentifier"]
            times = list(snapshots.get(ident, []))
            if db.get("BackupRetentionPeriod") and db.get("LatestRestorableTime"):
                times.append(parse_time(db["LatestRestorableTime"]))  # automated backups: any moment up to this one
            found.append(_resource("aws.rds", ident, tags, region, {"db_instance_identifier": ident, "region": region}, times))
        return found

    def _snapshot_times(self, region: str, volume_ids: list[str]) -> dict[str, list]:
        """{volume id: the times of its completed snapshots}."""
        out: dict[str, list] = {}
        for chunk in _chunks(sorted(set(volume_ids))):
            for s in self._snapshots(region, chunk, {}):
                out.setdefault(s["VolumeId"], []).append(parse_time(s["StartTime"]))
        return out


def _root_volume(instance: dict) -> Optional[str]:
    root = instance.get("RootDeviceName")
    for m in instance.get("BlockDeviceMappings", []):
        if m.get("DeviceName") == root:
            return (m.get("Ebs") or {}).get("VolumeId")
    mappings = instance.get("BlockDeviceMappings", [])
    return (mappings[0].get("Ebs") or {}).get("VolumeId") if mappings else None


def _resource(kind: str, ident: str, tags: dict, region: str, source: dict[str, Any], times: list) -> ProtectedResource:
    return ProtectedResource(
        kind=kind,
        id=ident,
        name=tags.get("Name") or ident,
        scope=region,
        source=source,
        tags=tags,
        newest_point=max(times) if times else None,
        oldest_point=min(times) if times else None,
        points=len(times),
    )
