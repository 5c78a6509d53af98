"""AWS provider: EBS volumes, EC2 instances and RDS DB instances restored into a per-drill VPC.

Targets
- aws.ebs (ebs.py): a volume's snapshots -> a new volume in the isolated environment's availability zone.
- aws.ec2 (ec2.py): snapshot sets of an instance's volumes (or an AMI) -> a new instance in the
  isolated subnet; the boot disk comes from an AMI registered from the root snapshot (or
  `image_id`), the data volumes from the same recovery point.
- aws.rds (rds.py): a DB snapshot (manual or automated) -> restore_db_instance_from_db_snapshot, or
  with rule `at` and `point_in_time: true` -> restore_db_instance_to_point_in_time. Never publicly
  accessible.

Isolation (isolation.py): one VPC per drill with no internet gateway, NAT, peering, VPC endpoint,
VPN or transit gateway attachment; private subnets in two availability zones (RDS needs two); a
security group without any egress rule and ingress only from the sources the spec names for validation.
The worker cannot reach it; `isolation.probe.aws` (probe.py) boots an instance inside it that runs
the checks, with one egress rule out, to the Temporal frontend, and reads its secrets (secrets.py).

Every created resource carries the drill's tags at creation (TagSpecifications / Tags). Creation is
idempotent: deterministic names (drdrill-<drill id>-<target>) where AWS names resources, ClientToken
where a call takes one, and a lookup by tag before every create (an emulator may ignore the token).

Selections and coverage (discover.py): volumes, instances and DB instances by tag across regions,
with their recovery points' times (read-only).

Cleaning up (primitives.py): the inventory finds resources by drdrill's tag; the base class tears
down in DELETE_ORDER, lists and deletes orphans, and refuses anything that lacks the drill's tag.

Every API call goes through a botocore `before-call` hook that records the IAM action
(`CALLED_ACTIONS`); tests compare it with deploy/aws/iam-policy.json. `drdrill check aws-volume`
(aws-instance, aws-db) reads a restored resource back for a `command` validation (checks.py `read_back`).
"""

from __future__ import annotations

from typing import Any, Mapping

from drdrill.core.models import DrillContext, Environment, RecoveryPoint, RestoredResource
from drdrill.providers.aws.checks import Verdict, read_with
from drdrill.providers.aws.clients import CALLED_ACTIONS, AwsError
from drdrill.providers.aws.discover import AwsDiscovery
from drdrill.providers.aws.ec2 import Ec2Targets
from drdrill.providers.aws.isolation import AwsIsolation
from drdrill.providers.aws.primitives import CONTAINERS, DELETE_ORDER, AwsPrimitives
from drdrill.providers.aws.rds import RdsTargets
from drdrill.providers.base import ProviderError, select_for_target
from drdrill.providers.probes import with_password_reference


class AwsProvider(Ec2Targets, RdsTargets, AwsIsolation, AwsPrimitives, AwsDiscovery):
    """The aws family: each drill step dispatches on the target kind (aws.ebs, aws.ec2, aws.rds)."""

    ENDPOINT_FIELDS = {
        "aws.ebs": ("volume_id", "snapshot_id", "expected_snapshot_id", "availability_zone", "size_gib", "region"),
        "aws.ec2": (
            "host", "private_ip", "instance_id", "image_id", "subnet_id", "volume_ids", "data_snapshot_ids",
            "security_group_id", "region",
        ),
        "aws.rds": ("host", "port", "dsn", "dbname", "user", "engine", "db_instance_identifier", "region"),
    }

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

    def restore(self, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment) -> RestoredResource:
        region = env.details.get("region", self.region)
        if target.provider == "aws.ebs":
            restored = self._restore_ebs(ctx, target, point, env, region)
        elif target.provider == "aws.ec2":
            restored = self._restore_ec2(ctx, target, point, env, region)
        elif target.provider == "aws.rds":
            restored = self._restore_rds(ctx, target, point, env, region)
        else:
            raise ProviderError("BAD_SPEC", f"the aws provider does not handle {target.provider!r}")
        return with_password_reference(restored, env)

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


def read_back(kind: str, env: Mapping[str, str]) -> Verdict:
    """`drdrill check aws-*`: read the restored resource of an `aws.ebs`, `aws.ec2` or `aws.rds`
    target (named by DRDRILL_* variables in `env`) back from AWS: (what it read, the problems)."""
    region = env.get("DRDRILL_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    provider = AwsProvider.from_environment(env, {"region": region})
    try:
        return read_with(provider, kind, region, env)
    finally:
        provider.close()


__all__ = ["CALLED_ACTIONS", "CONTAINERS", "DELETE_ORDER", "AwsError", "AwsProvider", "read_back"]
