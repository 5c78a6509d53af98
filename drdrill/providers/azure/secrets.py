"""Resolving the Azure probe's secret references, on the probe, with its managed identity.

A reference is a Key Vault secret URL, `https://<vault>.vault.azure.net/secrets/<name>[/<version>]`.
The token comes from the VM's managed identity (azure-identity's ManagedIdentityCredential, which
asks the instance metadata service): the user-assigned identity named by
DRDRILL_AZURE_MANAGED_IDENTITY (its ARM id; the probe's script sets it), else the system-assigned
one. The secret is read with Key Vault's REST API (GET {vault}/secrets/{name}/{version},
api-version 7.4). The identity may read exactly the secrets the drill names (deploy/azure/probe.md).

Settings: DRDRILL_AZURE_KEYVAULT_SCOPE (default https://vault.azure.net/.default; sovereign clouds
differ), DRDRILL_AZURE_CA_BUNDLE (a vault behind a private CA).
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import requests
from azure.core.exceptions import AzureError
from azure.identity import ManagedIdentityCredential

from drdrill.providers.base import ProviderError

API_VERSION = "7.4"
DEFAULT_SCOPE = "https://vault.azure.net/.default"


def resolve(reference: str) -> str:
    """The value of the Key Vault secret the URL names (its latest version unless it names one)."""
    parts = urlsplit(reference)
    path = parts.path.strip("/").split("/")
    if parts.scheme != "https" or len(path) not in (2, 3) or path[0] != "secrets":
        raise ProviderError("SECRET_UNAVAILABLE", f"{reference} is not a Key Vault secret URL (https://<vault>/secrets/<name>[/<version>])")
    identity = os.environ.get("DRDRILL_AZURE_MANAGED_IDENTITY")
    try:
        with ManagedIdentityCredential(identity_config={"resource_id": identity} if identity else None) as credential:
            token = credential.get_token(os.environ.get("DRDRILL_AZURE_KEYVAULT_SCOPE") or DEFAULT_SCOPE).token
    except AzureError as exc:
        raise ProviderError("SECRET_UNAVAILABLE", f"{reference}: no token from the VM's managed identity: {exc}") from exc
    url = f"{parts.scheme}://{parts.netloc}/{'/'.join(path)}"
    try:
        response = requests.get(
            url,
            params={"api-version": API_VERSION},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            verify=os.environ.get("DRDRILL_AZURE_CA_BUNDLE") or True,
        )
    except requests.RequestException as exc:
        raise ProviderError("SECRET_UNAVAILABLE", f"{reference}: Key Vault could not be reached: {exc}") from exc
    if response.status_code != 200:
        try:
            error = response.json().get("error") or {}
        except ValueError:
            error = {}
        raise ProviderError("SECRET_UNAVAILABLE", f"{reference}: Key Vault answered {response.status_code} {error.get('code', '')}: {error.get('message', '')}".rstrip(": "))
    value = response.json().get("value")
    if not isinstance(value, str):
        raise ProviderError("SECRET_UNAVAILABLE", f"{reference}: Key Vault's answer holds no value")
    return value
