"""The azure part of the drill format: azure.disk and azure.vm targets and AzureProbe. Pure models,
no SDK (drdrill/providers/spec.py reads this module to assemble DrillSpec; registry.py lists it)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar, Literal, Optional

from pydantic import Field

from drdrill.core.durations import Duration
from drdrill.core.schema import CloudProbe, Strict, TargetBase

FAMILY = "azure"
PROVIDER = "drdrill.providers.azure.provider:AzureProvider"

_AZURE_SECRET_RE = r"^https://[A-Za-z0-9.:-]+/secrets/[A-Za-z0-9-]{1,127}(/[0-9a-fA-F]{32})?$"


class AzureTarget(TargetBase):
    """What every azure target shares: selected by tag and resource group, counted against its subscription."""

    SELECT_BY: ClassVar[tuple[str, ...]] = ("tags", "exclude_tags", "resource_groups")
    SELECT_NEEDS: ClassVar[tuple[tuple[str, ...], str]] = (
        ("tags", "resource_groups"), "select needs something to select by: tags or resource_groups"
    )

    @classmethod
    def isolation_scope(cls, isolation: Any) -> Optional[tuple[str, str]]:
        value = getattr(isolation, "azure_location", None)
        return (value, "isolation.azure_location") if value else None

    def permit_key(self, isolation: Any) -> str:
        sub = getattr(isolation, "azure_subscription_id", None) or getattr(getattr(self, "source", None), "subscription_id", None) or "default"
        return f"azure:{sub}"


class AzureDiskSource(Strict):
    disk_id: str = Field(description="ARM id of the source managed disk")
    snapshot_tags: dict[str, str] = Field(default_factory=dict)
    disk_sku: Optional[str] = Field(None, description="SKU of the restored disk, e.g. Premium_LRS (default: Azure's, Standard_LRS)")


class AzureVmSource(Strict):
    vm_id: str = Field(description="ARM id of the source VM")
    vm_size: str = "Standard_B1s"
    snapshot_tags: dict[str, str] = Field(default_factory=dict)
    disk_sku: Optional[str] = Field(None, description="SKU of the restored disks, e.g. Premium_LRS (default: Azure's, Standard_LRS)")
    snapshot_group_window: Duration = Field(
        timedelta(minutes=15),
        description="snapshots of the VM's OS and data disks taken within this of each other form one recovery point",
    )


class AzureDiskTarget(AzureTarget):
    provider: Literal["azure.disk"]
    source: AzureDiskSource

    ID_FIELDS: ClassVar[tuple[str, ...]] = ("disk_id",)
    ENDPOINT_FIELDS: ClassVar[tuple[str, ...]] = ("disk_id", "resource_group", "source_snapshot_id", "disk_state", "size_gb")


class AzureVmTarget(AzureTarget):
    provider: Literal["azure.vm"]
    source: AzureVmSource

    ID_FIELDS: ClassVar[tuple[str, ...]] = ("vm_id",)
    ENDPOINT_FIELDS: ClassVar[tuple[str, ...]] = (
        "host", "private_ip", "vm_id", "nic_id", "os_disk_id", "resource_group", "power_state", "public_ip",
    )



class AzureProbe(CloudProbe):
    """`isolation.probe.azure`: a VM in the drill's subnet, from `image`, started by its custom data."""

    image: str = Field(
        pattern=r"^(/subscriptions/.+|[^:\s]+:[^:\s]+:[^:\s]+:[^:\s]+)$",
        description="an image with drdrill installed: an ARM image id, or publisher:offer:sku:version (deploy/azure/probe.md)",
    )
    size: str = Field("Standard_B1s", pattern=r"^[A-Za-z0-9_]+$", description="the VM size")
    managed_identity: Optional[str] = Field(
        None,
        pattern=r"^/subscriptions/[^/]+/resource[gG]roups/[^/]+/providers/Microsoft\.ManagedIdentity/userAssignedIdentities/[^/]+$",
        description="ARM id of the user-assigned identity that may read the probe's secrets, and nothing else",
    )
    # secrets: per target, a Key Vault secret URL holding its database password
    SECRET_REFERENCE: ClassVar[tuple[str, str]] = (_AZURE_SECRET_RE, "https://shop-vault.vault.azure.net/secrets/shop-db-password")



TARGETS = (AzureDiskTarget, AzureVmTarget)
PROBE = AzureProbe
