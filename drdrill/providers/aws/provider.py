"""AwsProvider: the aws family's drill steps (the package's docstring, drdrill/providers/aws/__init__.py, describes them)."""


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


__all__ = ["CALLED_ACTIONS", "CONTAINERS", "DELETE_ORDER", "AwsError", "AwsProvider", "read_back"]


def read_back(kind: str, env: Mapping[str, str]) -> Verdict:
    """`drdrill check aws-*`: read the restored resource of an `aws.ebs`, `aws.ec2` or `aws.rds`
    target (named by DRDRILL_* variables in `env`) back from AWS: (what it read, the problems)."""
    region = env.get("DRDRILL_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    provider = AwsProvider.from_environment(env, {"region": region})
    try:
        return read_with(provider, kind, region, env)
    finally:
        provider.close()
