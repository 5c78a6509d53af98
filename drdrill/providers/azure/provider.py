"""AzureProvider: the azure family's drill steps (the package's docstring, drdrill/providers/azure/__init__.py, describes them)."""


from __future__ import annotations

from typing import Any, Mapping, Optional

from azure.identity import DefaultAzureCredential

from drdrill.core.models import DrillContext, Environment, IsolationProof, RecoveryPoint, RestoredResource
from drdrill.core.selection import ProtectedResource
from drdrill.providers.base import ProviderError
from drdrill.providers.azure import discover, disk, isolation, vm
from drdrill.providers.azure.primitives import PUBLIC_ARM, AzurePrimitives, parse_id
from drdrill.providers.probes import with_password_reference

__all__ = ["AzureProvider", "parse_id"]

_KINDS = {"azure.disk": disk, "azure.vm": vm}


class AzureProvider(AzurePrimitives):
    """The drill's steps on Azure; the SDK plumbing and the primitives of cleaning up are in
    `primitives.AzurePrimitives` (settings: see its constructor and `from_environment`)."""

    @classmethod
    def from_environment(cls, env: Mapping[str, str], settings: Optional[dict] = None) -> "AzureProvider":
        """Credentials from DefaultAzureCredential (environment, workload identity, managed identity, az login).

        AZURE_SUBSCRIPTION_ID: default subscription (drills may name another in isolation.azure_subscription_id);
        DRDRILL_AZURE_ARM_ENDPOINT: the ARM endpoint (sovereign clouds, Azure Stack; default the public cloud);
        DRDRILL_AZURE_CREDENTIAL_SCOPE: token scope (default <endpoint>/.default);
        DRDRILL_AZURE_LOCATION: default region for drill resource groups;
        DRDRILL_AZURE_CA_BUNDLE: a CA bundle for an endpoint behind a private CA;
        DRDRILL_AZURE_POLLING_INTERVAL: seconds between polls of a long-running operation (default 10).
        """
        settings = settings or {}
        endpoint = settings.get("endpoint") or env.get("DRDRILL_AZURE_ARM_ENDPOINT") or PUBLIC_ARM
        scope = settings.get("credential_scope") or env.get("DRDRILL_AZURE_CREDENTIAL_SCOPE")
        return cls(
            DefaultAzureCredential(),
            subscription_id=settings.get("subscription_id") or env.get("AZURE_SUBSCRIPTION_ID"),
            endpoint=endpoint,
            location=settings.get("location") or env.get("DRDRILL_AZURE_LOCATION"),
            credential_scopes=[scope] if scope else None,
            connection_verify=settings.get("ca_bundle") or env.get("DRDRILL_AZURE_CA_BUNDLE") or True,
            polling_interval=float(settings.get("polling_interval") or env.get("DRDRILL_AZURE_POLLING_INTERVAL") or 10.0),
        )

    @staticmethod
    def _module_for(target: Any) -> Any:
        """The module for the target's kind (azure.disk, azure.vm)."""
        module = _KINDS.get(target.provider)
        if module is None:
            raise ProviderError("BAD_TARGET", f"the Azure provider does not restore {target.provider}")
        return module

    def find_recovery_point(self, ctx: DrillContext, target: Any) -> RecoveryPoint:
        return self._module_for(target).find_recovery_point(self, ctx, target)

    def create_isolation(self, ctx: DrillContext, isolation_spec: Any, targets: list[Any]) -> Environment:
        return isolation.create_isolation(self, ctx, isolation_spec, targets)

    def verify_isolation(self, ctx: DrillContext, env: Environment) -> IsolationProof:
        return isolation.verify_isolation(self, ctx, env)

    def restore(self, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment) -> RestoredResource:
        module = self._module_for(target)
        location = env.details.get("location") or point.metadata.get("location") or self.location
        return with_password_reference(module.restore(self, ctx, target, point, env, location), env)

    def wait_ready(self, ctx: DrillContext, target: Any, resource: RestoredResource, timeout: float) -> RestoredResource:
        return self._module_for(target).wait_ready(self, resource, timeout)

    def discover(self, kind: str, selection: Any) -> list[ProtectedResource]:
        return discover.discover(self, kind, selection)

    def protected_inventory(self, protected_tag: Optional[str]) -> list[ProtectedResource]:
        return discover.protected_inventory(self, protected_tag)
