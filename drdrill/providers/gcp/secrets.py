"""Resolving the GCP probe's secret references, on the probe, as its service account.

A reference is a Secret Manager secret version, `projects/<p>/secrets/<s>/versions/<v|latest>`,
read with Secret Manager's REST method `versions.access` (GET
https://secretmanager.googleapis.com/v1/<reference>:access) using Application Default Credentials:
on the probe, the instance's service account from the metadata server. That account holds
roles/secretmanager.secretAccessor on exactly the secrets the drill names (deploy/gcp/probe.md).

Settings: DRDRILL_GCP_SECRETMANAGER_ENDPOINT (another endpoint, e.g. a private one),
DRDRILL_GCP_ANONYMOUS=1 (anonymous credentials: fakes only).
"""

from __future__ import annotations

import base64
import binascii
import os
import re

import google.auth
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import GoogleAuthError
from google.auth.transport.requests import AuthorizedSession
from requests import RequestException

from drdrill.providers.base import ProviderError

ENDPOINT = "https://secretmanager.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_REFERENCE = re.compile(r"^projects/[^/]+/secrets/[^/]+/versions/[^/]+$")


def resolve(reference: str) -> str:
    """The payload of the secret version the reference names, as text."""
    if not _REFERENCE.match(reference):
        raise ProviderError("SECRET_UNAVAILABLE", f"{reference} is not a Secret Manager secret version (projects/P/secrets/S/versions/V)")
    try:
        if os.environ.get("DRDRILL_GCP_ANONYMOUS", "").lower() in ("1", "true", "yes"):
            credentials = AnonymousCredentials()
        else:
            credentials, _ = google.auth.default(scopes=[SCOPE])
        endpoint = (os.environ.get("DRDRILL_GCP_SECRETMANAGER_ENDPOINT") or ENDPOINT).rstrip("/")
        with AuthorizedSession(credentials) as session:
            response = session.get(f"{endpoint}/v1/{reference}:access", timeout=30)
    except (GoogleAuthError, RequestException) as exc:
        raise ProviderError("SECRET_UNAVAILABLE", f"{reference}: Secret Manager could not be asked: {exc}") from exc
    if response.status_code != 200:
        try:
            error = response.json().get("error") or {}
        except ValueError:
            error = {}
        raise ProviderError("SECRET_UNAVAILABLE", f"{reference}: Secret Manager answered {response.status_code} {error.get('status', '')}: {error.get('message', '')}".rstrip(": "))
    try:
        return base64.b64decode(response.json()["payload"]["data"]).decode()
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ProviderError("SECRET_UNAVAILABLE", f"{reference}: Secret Manager's answer holds no readable payload") from exc
