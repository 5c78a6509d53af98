"""Cleaning up on AWS: what carries drdrill's tag, what tags a resource carries now, deleting it.

The base class builds teardown, the orphan listing and the orphan deletion from these primitives
(drdrill/providers/base.py). A resource's `scope` is its region: the inventory searches the
environment's region during a teardown and every configured region (DRDRILL_AWS_REGIONS) for a
sweep.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

from drdrill.core.models import TAG_DRILL_ID, Environment
from drdrill.providers.aws.clients import LIVE_INSTANCE_STATES, AwsBase, AwsError, tags_of
from drdrill.providers.base import NotReadyYet, ProviderError, Resource, poll_until, require_drill_tag

# Teardown order: what uses a thing goes before the thing.
DELETE_ORDER = ("rds-instance", "ec2-instance", "ami", "volume", "rds-subnet-group", "security-group", "subnet", "vpc")
# A subnet or VPC holding anything not provably this drill's is kept.
CONTAINERS = frozenset({"subnet", "vpc"})

# AWS refuses these deletions while something still depends on the resource; they clear by themselves.
_DEPENDENCY = {
    "DependencyViolation",
    "InvalidDBSubnetGroupStateFault",
    "InvalidDBInstanceState",
    "InvalidDBInstanceStateFault",
    "IncorrectState",
    "VolumeInUse",
}


class _Ec2Kind(NamedTuple):
    """How one EC2 resource kind is read by id and deleted."""

    describe: str
    ids: str
    key: str
    delete: str
    id: str


_EC2_KINDS = {
    "ami": _Ec2Kind("describe_images", "ImageIds", "Images", "deregister_image", "ImageId"),
    "volume": _Ec2Kind("describe_volumes", "VolumeIds", "Volumes", "delete_volume", "VolumeId"),
    "security-group": _Ec2Kind("describe_security_groups", "GroupIds", "SecurityGroups", "delete_security_group", "GroupId"),
    "subnet": _Ec2Kind("describe_subnets", "SubnetIds", "Subnets", "delete_subnet", "SubnetId"),
    "vpc": _Ec2Kind("describe_vpcs", "VpcIds", "Vpcs", "delete_vpc", "VpcId"),
}


class AwsPrimitives(AwsBase):
    DELETE_ORDER = DELETE_ORDER
    CONTAINERS = CONTAINERS

    # ------------------------------------------------------------------ inventory

    def inventory(self, drill_id: Optional[str] = None, env: Optional[Environment] = None) -> list[Resource]:
        """Every resource carrying drdrill's tag in the environment's region (every configured
        region without one), this drill's only when `drill_id` is given."""
        regions = [env.details["region"]] if env is not None and env.details.get("region") else self.regions
        return [res for region in regions for res in self._rds_inventory(region, drill_id) + self._ec2_inventory(region, drill_id)]

    def _rds_inventory(self, region: str, drill_id: Optional[str]) -> list[Resource]:
        """RDS cannot filter by tag: list drdrill's names and read their tags."""
        rds = self.rds(region)
        found: list[Resource] = []
        for db in self.pages(rds, "describe_db_instances", "DBInstances"):
            ident = db["DBInstanceIdentifier"]
            if "TagList" not in db and not ident.startswith("drdrill-"):
                continue
            tags = self._rds_tags(region, db)
            if require_drill_tag(tags, drill_id):
                found.append(Resource("rds-instance", ident, tags, scope=region, state=db.get("DBInstanceStatus", "")))
        for g in self.pages(rds, "describe_db_subnet_groups", "DBSubnetGroups"):
            if not g["DBSubnetGroupName"].startswith("drdrill-"):
                continue
            tags = self._rds_tags(region, g)
            if require_drill_tag(tags, drill_id):
                found.append(Resource("rds-subnet-group", g["DBSubnetGroupName"], tags, scope=region))
        return found

    def _ec2_inventory(self, region: str, drill_id: Optional[str]) -> list[Resource]:
        ec2 = self.ec2(region)
        flt = [{"Name": f"tag:{TAG_DRILL_ID}", "Values": [drill_id]}] if drill_id else [{"Name": "tag-key", "Values": [TAG_DRILL_ID]}]
        found: list[Resource] = []

        def add(kind: str, rid: str, obj: dict, state: str = "", **extra: Any) -> None:
            tags = tags_of(obj.get("Tags"))
            if require_drill_tag(tags, drill_id):
                found.append(Resource(kind, rid, tags, scope=region, state=state, extra=extra))

        live = [{"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}]
        for r in self.pages(ec2, "describe_instances", "Reservations", Filters=flt + live):
            for i in r.get("Instances", []):
                if i["State"]["Name"] != "terminated":
                    add("ec2-instance", i["InstanceId"], i, i["State"]["Name"])
        for img in self.pages(ec2, "describe_images", "Images", Owners=["self"], Filters=flt):
            add("ami", img["ImageId"], img, img.get("State", ""))
        for v in self.pages(ec2, "describe_volumes", "Volumes", Filters=flt):
            if v.get("State") != "deleted":
                add("volume", v["VolumeId"], v, v.get("State", ""))
        for g in self.pages(ec2, "describe_security_groups", "SecurityGroups", Filters=flt):
            if g.get("GroupName") != "default":
                add("security-group", g["GroupId"], g, vpc_id=g.get("VpcId"))
        for s in self.pages(ec2, "describe_subnets", "Subnets", Filters=flt):
            add("subnet", s["SubnetId"], s, vpc_id=s.get("VpcId"))
        for v in self.pages(ec2, "describe_vpcs", "Vpcs", Filters=flt):
            add("vpc", v["VpcId"], v)
        return found

    def named_resources(self, env: Environment) -> list[Resource]:
        """The network the environment record names: a piece the tag search did not find is gone,
        or no longer carries the drill's tag (then it and its VPC are kept)."""
        d = env.details
        region = d.get("region") or self.region
        named = [("vpc", d.get("vpc_id")), ("security-group", d.get("security_group_id")), ("ec2-instance", d.get("probe_instance_id"))]
        named += [("subnet", s["id"]) for s in d.get("subnets", [])]
        named.append(("rds-subnet-group", d.get("db_subnet_group")))
        return [Resource(kind, rid, scope=region) for kind, rid in named if rid]

    # ------------------------------------------------------------------ current tags

    def current_tags(self, resource: Resource) -> Optional[dict[str, str]]:
        """The resource's tags as AWS has them now; None when it does not exist (a terminated
        instance counts as gone)."""
        region = resource.scope or self.region
        kind, rid = resource.kind, resource.id
        try:
            if kind == "rds-instance":
                db = self._db_instance(region, rid)
                return None if db is None else self._rds_tags(region, db)
            if kind == "rds-subnet-group":
                groups = self.call(self.rds(region).describe_db_subnet_groups, DBSubnetGroupName=rid).get("DBSubnetGroups", [])
                return self._rds_tags(region, groups[0]) if groups else None
            if kind == "ec2-instance":
                reservations = self.call(self.ec2(region).describe_instances, InstanceIds=[rid]).get("Reservations", [])
                found = [i for r in reservations for i in r["Instances"] if i["State"]["Name"] != "terminated"]
            else:
                spec = _ec2_kind(kind)
                found = self.call(getattr(self.ec2(region), spec.describe), **{spec.ids: [rid]}).get(spec.key, [])
        except AwsError as exc:
            if exc.not_found:
                return None
            raise
        return tags_of(found[0].get("Tags")) if found else None

    # ------------------------------------------------------------------ delete

    def delete(self, resource: Resource) -> bool:
        """Delete the resource; instances and DB instances are waited for until they are gone
        (what they use cannot be deleted before). True if deleted, False if already gone."""
        region = resource.scope or self.region
        ec2, rds = self.ec2(region), self.rds(region)
        rid = resource.id
        if resource.kind == "rds-instance":
            db = self._db_instance(region, rid)
            if db is None:
                return False
            # Already being deleted (a retried teardown, another sweep): wait for it like our own.
            deleted = db.get("DBInstanceStatus") == "deleting" or self._attempt(
                resource, lambda: self.call(rds.delete_db_instance, DBInstanceIdentifier=rid, SkipFinalSnapshot=True, DeleteAutomatedBackups=True)
            )
            self._wait_gone(resource, lambda: self._db_instance(region, rid) is not None)
            return deleted
        if resource.kind == "ec2-instance":
            deleted = self._attempt(resource, lambda: self.call(ec2.terminate_instances, InstanceIds=[rid]))
            self._wait_gone(resource, lambda: self.current_tags(resource) is not None)
            return deleted
        if resource.kind == "rds-subnet-group":
            return self._attempt(resource, lambda: self.call(rds.delete_db_subnet_group, DBSubnetGroupName=rid))
        spec = _ec2_kind(resource.kind)
        return self._attempt(resource, lambda: self.call(getattr(ec2, spec.delete), **{spec.id: rid}))

    def _attempt(self, resource: Resource, delete: Callable[[], Any]) -> bool:
        """Run one delete call: True when it deleted, False when the resource was already gone.
        While something still depends on the resource AWS refuses; that is polled until it clears,
        for up to `dependency_wait`, then TEARDOWN_BLOCKED hands back to the retry policy."""

        def once() -> bool:
            try:
                delete()
                return True
            except AwsError as exc:
                if exc.not_found:
                    return False
                if exc.aws_code in _DEPENDENCY:
                    raise NotReadyYet(exc.message) from exc
                raise

        try:
            return poll_until(once, timeout=self.dependency_wait, what=f"deleting {resource.label}", **self.poll_schedule)
        except ProviderError as exc:
            if exc.code == "READY_TIMEOUT":
                raise ProviderError("TEARDOWN_BLOCKED", exc.message, retryable=True) from exc
            raise

    def _wait_gone(self, resource: Resource, exists: Callable[[], bool]) -> None:
        def gone() -> None:
            if exists():
                raise NotReadyYet(f"{resource.label} still exists")

        poll_until(gone, timeout=self.dependency_wait, what=f"deletion of {resource.label}", **self.poll_schedule)


def _ec2_kind(kind: str) -> _Ec2Kind:
    if kind not in _EC2_KINDS:
        raise ProviderError("BAD_STATE", f"aws: unknown resource kind {kind!r}")
    return _EC2_KINDS[kind]
