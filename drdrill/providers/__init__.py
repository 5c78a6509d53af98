"""Provider registry: family name -> module, imported lazily so a worker needs only the SDKs it uses."""

from __future__ import annotations

import importlib
import os
from typing import Optional

from drdrill.core.spec import IsolationSpec, set_endpoint_fields
from drdrill.providers.base import Provider, ProviderError

FAMILIES = {
    "postgres": "drdrill.providers.postgres:PostgresProvider",
    "aws": "drdrill.providers.aws:AwsProvider",
    "azure": "drdrill.providers.azure:AzureProvider",
    "gcp": "drdrill.providers.gcp:GcpProvider",
    "sim": "drdrill.providers.sim:SimProvider",
}


# Families whose resources live on the worker's own machine (a local cluster on a Unix socket):
# every activity of one drill for them must run on the same host. See DrillActivities.claim_host.
HOST_BOUND = {"postgres"}


def family_of(provider: str) -> str:
    return provider.split(".", 1)[0]


def endpoint_fields(kind: str, isolation: IsolationSpec) -> Optional[tuple[str, ...]]:
    """The endpoint fields a `kind` target publishes (its provider's ENDPOINT_FIELDS), for linting
    tcp/http checks and url templates. None when its provider cannot be loaded here (no SDK)."""
    family = family_of(kind)
    if family not in FAMILIES:
        return None
    module_name, cls_name = FAMILIES[family].split(":")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except ImportError:
        return None
    return cls.published_fields(kind, isolation)


# `drdrill lint` (spec.parse_spec) checks templates against the providers' own lists.
set_endpoint_fields(endpoint_fields)


def load_provider(family: str, settings: Optional[dict] = None) -> Provider:
    """Build the provider for `family`; each reads its settings from the environment (DRDRILL_*)."""
    if family not in FAMILIES:
        raise ProviderError("UNKNOWN_PROVIDER", f"unknown provider family {family!r}; known: {', '.join(FAMILIES)}")
    module_name, cls_name = FAMILIES[family].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ProviderError(
            "PROVIDER_UNAVAILABLE", f"provider {family!r} cannot be loaded on this worker: {exc}"
        ) from exc
    cls = getattr(module, cls_name)
    return cls.from_environment(os.environ, settings or {})


__all__ = ["FAMILIES", "HOST_BOUND", "Provider", "ProviderError", "endpoint_fields", "family_of", "load_provider"]
