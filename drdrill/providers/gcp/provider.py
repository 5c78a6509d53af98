"""GcpProvider: the gcp family's drill steps (the package's docstring, drdrill/providers/gcp/__init__.py, describes them)."""


from __future__ import annotations

from typing import Any

from drdrill.core.models import DrillContext, Environment, IsolationProof, RecoveryPoint, RestoredResource
from drdrill.core.selection import ProtectedResource
from drdrill.providers.gcp import discover, disk, instance, isolation
from drdrill.providers.gcp.labels import LABEL_DRILL_ID, LABEL_EXPIRES_AT, LABEL_MANAGED, LABEL_TARGET, gcp_labels, gcp_name, label_value
from drdrill.providers.gcp.primitives import GcpPrimitives
from drdrill.providers.probes import with_password_reference


class GcpProvider(GcpPrimitives):
    """The drill's steps, each in the module of its concern; the primitives are GcpPrimitives'."""

    def find_recovery_point(self, ctx: DrillContext, target: Any) -> RecoveryPoint:
        source = disk if target.provider == "gcp.disk" else instance
        disks, description = source.source_disks(self, target)
        return disk.recovery_point(self, ctx, target, disks, description)

    def create_isolation(self, ctx: DrillContext, isolation_spec: Any, targets: list[Any]) -> Environment:
        return isolation.create_isolation(self, ctx, isolation_spec, targets)

    def verify_isolation(self, ctx: DrillContext, env: Environment) -> IsolationProof:
        return isolation.verify_isolation(self, ctx, env)

    def restore(self, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment) -> RestoredResource:
        kind = disk if target.provider == "gcp.disk" else instance
        return with_password_reference(kind.restore(self, ctx, target, point, env), env)

    def wait_ready(self, ctx: DrillContext, target: Any, resource: RestoredResource, timeout: float) -> RestoredResource:
        kind = disk if target.provider == "gcp.disk" else instance
        return kind.wait_ready(self, target, resource, timeout)

    def discover(self, kind: str, selection: Any) -> list[ProtectedResource]:
        return discover.discover(self, kind, selection)

    def protected_inventory(self, protected_tag: Any) -> list[ProtectedResource]:
        return discover.protected_inventory(self, protected_tag)


__all__ = ["GcpProvider", "LABEL_DRILL_ID", "LABEL_EXPIRES_AT", "LABEL_MANAGED", "LABEL_TARGET", "gcp_labels", "gcp_name", "label_value"]
