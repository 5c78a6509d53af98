"""The AWS provider's clients and the one translation of AWS errors into ProviderErrors.

`AwsBase` holds what every part of the provider shares: one boto3 client per (service, region),
each hooked so the IAM action of every call is recorded (`CALLED_ACTIONS`: tests compare it with
deploy/aws/iam-policy.json), `map_error` for `Provider.call`, pagination, and the tag lookups the
idempotent creates and the teardown rely on.
"""

from __future__ import annotations

import hashlib
import re
import threading
from typing import Any, Iterable, Mapping, Optional

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from drdrill.core.models import TAG_DRILL_ID, TAG_TARGET, DrillContext
from drdrill.providers.base import Provider, ProviderError

# Every IAM action any AwsProvider called in this process ("ec2:DescribeVpcs", ...).
CALLED_ACTIONS: set[str] = set()
_CALLED_LOCK = threading.Lock()
_IAM_PREFIX = {"ec2": "ec2", "rds": "rds", "sts": "sts"}

GIB = 1024**3
# Teardown keeps retrying dependency errors (ENIs of a deleted DB linger for minutes) this long,
# then hands back to Temporal's retry policy.
DEPENDENCY_WAIT = 15 * 60.0

EC2_NOT_FOUND = frozenset(
    {
        "InvalidInstanceID.NotFound",
        "InvalidAMIID.NotFound",
        "InvalidAMIID.Unavailable",
        "InvalidVolume.NotFound",
        "InvalidGroup.NotFound",
        "InvalidSubnetID.NotFound",
        "InvalidVpcID.NotFound",
        "InvalidSnapshot.NotFound",
    }
)
RDS_NOT_FOUND = frozenset(
    {"DBInstanceNotFound", "DBInstanceNotFoundFault", "DBSubnetGroupNotFoundFault", "DBSnapshotNotFound", "DBSnapshotNotFoundFault"}
)
NOT_FOUND = EC2_NOT_FOUND | RDS_NOT_FOUND
_SNAPSHOT_NOT_FOUND = {"InvalidSnapshot.NotFound", "DBSnapshotNotFound", "DBSnapshotNotFoundFault"}
_RETRYABLE = {"Throttling", "ThrottlingException", "RequestLimitExceeded", "InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable"}
_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthFailure"}

# Instance states in which an instance still exists (and may be drdrill's).
LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]


class AwsError(ProviderError):
    """A ProviderError made from an AWS API error. `aws_code` is AWS's own code
    (InvalidVpcID.NotFound, InvalidGroup.Duplicate): where "not found" or "already exists" is an
    answer rather than a failure, the caller reads it."""

    def __init__(self, code: str, message: str, *, aws_code: str = "", retryable: bool = False):
        super().__init__(code, message, retryable=retryable)
        self.aws_code = aws_code

    @property
    def not_found(self) -> bool:
        return self.aws_code in NOT_FOUND


def map_error(exc: Exception) -> Optional[AwsError]:
    """The stable finding code for an AWS error: access denied (pointing at the shipped policy),
    unavailable (retryable), a missing snapshot (RECOVERY_POINT_NOT_FOUND), else AWS_<ITS CODE>."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, msg = error.get("Code", ""), error.get("Message", str(exc))
        what = f"{exc.operation_name}: {code}: {msg}"
        if code in _DENIED:
            return AwsError("AWS_ACCESS_DENIED", f"{what} (see deploy/aws/iam-policy.json)", aws_code=code)
        if code in _RETRYABLE or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400) >= 500:
            return AwsError("AWS_UNAVAILABLE", what, aws_code=code, retryable=True)
        if code in _SNAPSHOT_NOT_FOUND:
            return AwsError("RECOVERY_POINT_NOT_FOUND", what, aws_code=code)
        return AwsError(f"AWS_{re.sub(r'[^A-Z0-9]+', '_', code.upper()).strip('_') or 'ERROR'}", what, aws_code=code)
    if isinstance(exc, ParamValidationError):  # a request botocore would not send: retrying cannot help
        return AwsError("AWS_INVALID_PARAMETER", str(exc))
    if isinstance(exc, BotoCoreError):  # no answer at all: endpoint unreachable, connection reset
        return AwsError("AWS_UNAVAILABLE", str(exc), retryable=True)
    return None


def tags_of(items: Optional[Iterable[Mapping[str, str]]]) -> dict[str, str]:
    """AWS's [{"Key": k, "Value": v}] as a dict."""
    return {t["Key"]: t["Value"] for t in (items or [])}


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def drill_filters(ctx: DrillContext, extra: Optional[list] = None) -> list[dict]:
    """EC2 filters for what carries this drill's tag (and `extra`)."""
    return [{"Name": f"tag:{TAG_DRILL_ID}", "Values": [ctx.drill_id]}] + (extra or [])


def target_filters(ctx: DrillContext, target: str, extra: Optional[list] = None) -> list[dict]:
    """EC2 filters for what this drill restored for `target`: found again before creating twice."""
    return drill_filters(ctx, [{"Name": f"tag:{TAG_TARGET}", "Values": [target]}] + (extra or []))


def client_token(ctx: DrillContext, target: str, what: str) -> str:
    """A ClientToken (<= 64 ASCII) stable across retries of the same drill step."""
    return "drdrill-" + hashlib.sha256(f"{ctx.drill_id}/{target}/{what}".encode()).hexdigest()[:40]


def rds_identifier(name: str) -> str:
    """RDS identifiers: letters, digits, single hyphens, start with a letter, <= 63, no trailing '-'."""
    name = re.sub(r"[^a-z0-9-]", "-", name.lower())
    name = re.sub(r"-{2,}", "-", name).strip("-")
    if not name or not name[0].isalpha():
        name = "d" + name
    return name[:63].rstrip("-")


class AwsBase(Provider):
    """Clients, settings and shared lookups; the drill steps and cleaning up are in the mixins."""

    family = "aws"

    def __init__(
        self,
        session: Optional[boto3.session.Session] = None,
        *,
        endpoint_url: Optional[str] = None,
        region: Optional[str] = None,
        regions: Optional[list[str]] = None,
        clients: Optional[dict[tuple[str, str], Any]] = None,
        config: Optional[Config] = None,
        poll_initial: float = 0.25,
        poll_max: float = 15.0,
        dependency_wait: float = DEPENDENCY_WAIT,
    ):
        self.session = session or boto3.session.Session()
        self.endpoint_url = endpoint_url or None
        self.region = region or self.session.region_name or "us-east-1"
        self.regions = list(dict.fromkeys(regions or [self.region]))
        self.config = config or Config(
            retries={"mode": "standard", "max_attempts": 8},
            connect_timeout=10,
            read_timeout=60,
            user_agent_extra="drdrill",
        )
        self.called: set[str] = set()
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self.poll_initial = poll_initial
        self.poll_max = poll_max
        self.dependency_wait = dependency_wait
        for (service, reg), c in (clients or {}).items():
            self._hook(c)
            self._clients[(service, reg)] = c

    @classmethod
    def from_environment(cls, env: Mapping[str, str], settings: Optional[dict] = None) -> "AwsBase":
        """Credentials from boto3's default chain; DRDRILL_AWS_ENDPOINT_URL (moto, LocalStack, a VPC
        endpoint), DRDRILL_AWS_REGION / AWS_REGION / AWS_DEFAULT_REGION, DRDRILL_AWS_REGIONS (orphan sweeps)."""
        settings = settings or {}
        region = settings.get("region") or env.get("DRDRILL_AWS_REGION") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        regions_text = settings.get("regions") or env.get("DRDRILL_AWS_REGIONS") or ""
        regions = [r.strip() for r in (regions_text.split(",") if isinstance(regions_text, str) else regions_text) if r.strip()]
        endpoint = settings.get("endpoint_url") or env.get("DRDRILL_AWS_ENDPOINT_URL") or None
        profile = settings.get("profile") or env.get("DRDRILL_AWS_PROFILE") or None
        session = boto3.session.Session(profile_name=profile, region_name=region) if profile else boto3.session.Session(region_name=region)
        region = region or session.region_name or "us-east-1"
        if region not in regions:
            regions = [region] + regions
        return cls(session, endpoint_url=endpoint, region=region, regions=regions)

    # ------------------------------------------------------------------ clients

    def _hook(self, client: Any) -> None:
        client.meta.events.register("before-call", self._record)

    def _record(self, model: Any = None, **_: Any) -> None:
        if model is None:
            return
        service = model.service_model.service_name
        action = f"{_IAM_PREFIX.get(service, service)}:{model.name}"
        self.called.add(action)
        with _CALLED_LOCK:
            CALLED_ACTIONS.add(action)

    def client(self, service: str, region: Optional[str] = None) -> Any:
        region = region or self.region
        with self._lock:
            c = self._clients.get((service, region))
            if c is None:
                c = self.session.client(service, region_name=region, endpoint_url=self.endpoint_url, config=self.config)
                self._hook(c)
                self._clients[(service, region)] = c
            return c

    def ec2(self, region: Optional[str] = None) -> Any:
        return self.client("ec2", region)

    def rds(self, region: Optional[str] = None) -> Any:
        return self.client("rds", region)

    def close(self) -> None:
        with self._lock:
            for c in self._clients.values():
                try:
                    c.close()
                except Exception:  # noqa: BLE001 - best effort
                    pass
            self._clients.clear()

    def map_error(self, exc: Exception) -> Optional[ProviderError]:
        return map_error(exc)

    @property
    def poll_schedule(self) -> dict[str, float]:
        """How often `poll_until` asks AWS (the tests poll moto faster)."""
        return {"initial": self.poll_initial, "maximum": self.poll_max}

    # ------------------------------------------------------------------ shared lookups

    def _target_region(self, target: Any) -> str:
        """Where the target's recovery points are: its source's region, else the provider's."""
        return getattr(target.source, "region", None) or self.region

    def pages(self, client: Any, op: str, key: str, **kwargs: Any) -> list[dict]:
        """Every item under `key` of every page of `op`."""
        if not client.can_paginate(op):
            return self.call(getattr(client, op), **kwargs).get(key, [])
        pages = self.call(lambda: list(client.get_paginator(op).paginate(**kwargs)))
        return [item for page in pages for item in page.get(key, [])]

    def _rds_tags(self, region: str, obj: dict) -> dict[str, str]:
        """An RDS object's tags: from its TagList when the describe call returned one, else asked for."""
        if "TagList" in obj:
            return tags_of(obj["TagList"])
        arn = obj.get("DBSnapshotArn") or obj.get("DBInstanceArn") or obj.get("DBSubnetGroupArn")
        if not arn:
            return {}
        return tags_of(self.call(self.rds(region).list_tags_for_resource, ResourceName=arn).get("TagList"))

    def _db_instance(self, region: str, identifier: str) -> Optional[dict]:
        """The DB instance, or None when it does not exist."""
        try:
            dbs = self.call(self.rds(region).describe_db_instances, DBInstanceIdentifier=identifier)
        except AwsError as exc:
            if exc.not_found:
                return None
            raise
        found = dbs.get("DBInstances", [])
        return found[0] if found else None
