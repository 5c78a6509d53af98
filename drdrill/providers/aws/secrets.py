"""Resolving the AWS probe's secret references, on the probe, with its instance profile's credentials.

A reference is the ARN of a Secrets Manager secret or of an SSM parameter (a SecureString). A
secret holding JSON with a "password" key (as RDS-managed master passwords do) gives that key; any
other secret or parameter gives its whole value. The probe's role may read exactly the secrets the
drill names (deploy/aws/probe-policy.json). DRDRILL_AWS_ENDPOINT_URL points the clients elsewhere
(an emulator; in the VPC, endpoints resolve through the region's private DNS).
"""

from __future__ import annotations

import json
import os

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from drdrill.providers.base import ProviderError


def resolve(reference: str) -> str:
    """The value the ARN names: Secrets Manager GetSecretValue or SSM GetParameter (decrypted)."""
    parts = reference.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or parts[2] not in ("secretsmanager", "ssm"):
        raise ProviderError("SECRET_UNAVAILABLE", f"{reference} is not the ARN of a Secrets Manager secret or an SSM parameter")
    service, region = parts[2], parts[3]
    client = boto3.session.Session().client(
        service, region_name=region, endpoint_url=os.environ.get("DRDRILL_AWS_ENDPOINT_URL") or None,
        config=Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=30),
    )
    try:
        if service == "ssm":
            return client.get_parameter(Name=reference, WithDecryption=True)["Parameter"]["Value"]
        value = client.get_secret_value(SecretId=reference)["SecretString"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise ProviderError("SECRET_UNAVAILABLE", f"{reference}: {error.get('Code')}: {error.get('Message')}") from exc
    except (BotoCoreError, KeyError) as exc:
        raise ProviderError("SECRET_UNAVAILABLE", f"{reference}: {type(exc).__name__}: {exc}") from exc
    finally:
        client.close()
    return _password(value)


def _password(value: str) -> str:
    """The "password" of a JSON secret ({"username": ..., "password": ...}), else the value itself."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    if isinstance(parsed, dict) and isinstance(parsed.get("password"), str):
        return parsed["password"]
    return value
