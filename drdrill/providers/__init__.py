"""Provider registry: family name -> provider, imported lazily so a worker needs only the SDKs it uses.

The families are listed once, in registry.py; each names its Provider class in its schema module."""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from drdrill.providers.base import Provider, ProviderError
    from drdrill.providers.registry import FAMILIES
    from drdrill.providers.spec import HOST_BOUND, SCHEMAS

# Imported on first use (PEP 562), not with the package: `drdrill dump` imports its modules under
# drdrill.providers.postgres and needs none of these (base and spec load pydantic: 0.4 s of CPU).
_LAZY = {"Provider": "base", "ProviderError": "base", "FAMILIES": "registry", "HOST_BOUND": "spec", "SCHEMAS": "spec"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"drdrill.providers.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'drdrill.providers' has no attribute {name!r}")


def family_of(provider: str) -> str:
    return provider.split(".", 1)[0]


def load_provider(family: str, settings: Optional[dict] = None) -> Provider:
    """Build the provider for `family`; each reads its settings from the environment (DRDRILL_*)."""
    from drdrill.providers.base import ProviderError
    from drdrill.providers.registry import FAMILIES
    from drdrill.providers.spec import SCHEMAS

    if family not in FAMILIES:
        raise ProviderError("UNKNOWN_PROVIDER", f"unknown provider family {family!r}; known: {', '.join(FAMILIES)}")
    module_name, cls_name = SCHEMAS[family].PROVIDER.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ProviderError(
            "PROVIDER_UNAVAILABLE", f"provider {family!r} cannot be loaded on this worker: {exc}"
        ) from exc
    cls = getattr(module, cls_name)
    return cls.from_environment(os.environ, settings or {})


__all__ = ["FAMILIES", "HOST_BOUND", "Provider", "ProviderError", "family_of", "load_provider"]
