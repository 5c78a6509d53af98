"""Azure provider: managed-disk snapshots restored to disks (azure.disk) and to VMs (azure.vm).

One resource group per drill (`drdrill-<drill id>`, tagged) holds everything the drill creates:
a VNet with one subnet and no peering or gateway, an NSG that denies all outbound traffic and
admits inbound traffic only from `isolation.allow_ingress_from`, the restored disks, NICs (no
public IP) and VMs, each tagged too. Teardown and the orphan sweep are the provider template's
(drdrill/providers/base.py): they delete the drill's tagged resources one by one, in DELETE_ORDER,
then the group, which is kept, and reported, when it holds anything without the drill's tag.

Modules: `primitives` (clients, error mapping, waiting on operations, inventory / current_tags /
delete), `isolation` (the VNet and NSG, and the proof of isolation), `probe` (the VM inside the
VNet that runs the checks, `isolation.probe.azure`), `secrets` (the probe's Key Vault references),
`disk` and `vm` (recovery points, restore, readiness of each target kind), `discover` (selections
by tag and resource group, and the protected inventory, for coverage).

The clients are the real azure-mgmt-* SDK clients (synchronous; activities run in a thread pool).
Bodies are sent and read in ARM's wire JSON (the SDK's models are mappings over it), so the
REST contract is exactly what this package writes. Every REST operation used:

  GET    /subscriptions/{s}/providers/Microsoft.Compute/snapshots                            2026-03-02
  GET    /subscriptions/{s}/providers/Microsoft.Compute/disks                                2026-03-02  (selections, coverage)
  GET    /subscriptions/{s}/providers/Microsoft.Compute/virtualMachines                      2026-04-01  (selections, coverage)
  GET|PUT|PATCH|DELETE /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{disk}   2026-03-02
  GET|PUT|DELETE /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{vm}  2026-04-01
  GET    /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{vm}/instanceView  2026-04-01
  GET|PUT|DELETE /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Network/networkSecurityGroups/{nsg}  2026-03-01
  GET|PUT|DELETE /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworks/{vnet}      2026-03-01
  GET    /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworks/{vnet}/subnets/{subnet}  2026-03-01
  GET|PUT|DELETE /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Network/networkInterfaces/{nic}     2026-03-01
  GET|PUT|DELETE /subscriptions/{s}/resourcegroups/{rg}                                     2025-04-01
  GET    /subscriptions/{s}/resourcegroups?$filter=tagName eq 'drdrill:drill-id'             2025-04-01
  GET    /subscriptions/{s}/resourcegroups/{rg}/resources                                    2025-04-01
  and the long-running-operation monitors the responses point at (Azure-AsyncOperation /
  Location): .../providers/Microsoft.{Compute,Network}/locations/{l}/operations/{id} and
  /subscriptions/{s}/operationresults/{id}.

deploy/azure/role.json is the least-privilege custom role for exactly these.
"""

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

    ENDPOINT_FIELDS = {
        "azure.disk": ("disk_id", "resource_group", "source_snapshot_id", "disk_state", "size_gb"),
        "azure.vm": ("host", "private_ip", "vm_id", "nic_id", "os_disk_id", "resource_group", "power_state", "public_ip"),
    }

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
