"""The aws part of the drill format: aws.ebs, aws.ec2 and aws.rds targets and AwsProbe. Pure models,
no SDK (drdrill/providers/spec.py reads this module to assemble DrillSpec; registry.py lists it)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional

from pydantic import Field, model_validator

from drdrill.core.schema import CloudProbe, InstanceRestoreOptions, Strict, TargetBase

FAMILY = "aws"
PROVIDER = "drdrill.providers.aws.provider:AwsProvider"

_AWS_SECRET_RE = r"^arn:aws(-[a-z]+)*:(secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@!-]+|ssm:[a-z0-9-]+:\d{12}:parameter/[A-Za-z0-9/_.-]+)$"


class AwsTarget(TargetBase):
    """What every aws target shares: selected by tag across regions, counted against its region."""

    SELECT_BY: ClassVar[tuple[str, ...]] = ("tags", "exclude_tags", "regions")
    SELECT_NEEDS: ClassVar[tuple[tuple[str, ...], str]] = (("tags",), "select needs something to select by: tags")

    @classmethod
    def isolation_scope(cls, isolation: Any) -> Optional[tuple[str, str]]:
        value = getattr(isolation, "aws_region", None)
        return (value, "isolation.aws_region") if value else None

    def own_scope(self) -> Optional[tuple[str, str]]:
        region = getattr(getattr(self, "source", None), "region", None)
        return (region, f"the region of target {self.name}") if region else None

    def permit_key(self, isolation: Any) -> str:
        region = getattr(getattr(self, "source", None), "region", None) or getattr(isolation, "aws_region", None) or "default"
        return f"aws:{region}"


class AwsEbsSource(Strict):
    volume_id: str = Field(pattern=r"^vol-[0-9a-f]+$")
    region: Optional[str] = None
    snapshot_tags: dict[str, str] = Field(default_factory=dict)


class AwsEc2Source(Strict):
    instance_id: str = Field(pattern=r"^i-[0-9a-f]+$")
    region: Optional[str] = None
    instance_type: str = "t3.micro"
    image_id: Optional[str] = Field(None, description="AMI to boot from (default: the instance's AMI or an AMI recovery point)")
    snapshot_tags: dict[str, str] = Field(default_factory=dict)


class AwsRdsSource(Strict):
    db_instance_identifier: str
    region: Optional[str] = None
    db_instance_class: str = "db.t3.micro"
    snapshot_type: Literal["any", "manual", "automated"] = "any"
    snapshot_tags: dict[str, str] = Field(default_factory=dict)
    point_in_time: bool = Field(False, description="with rule 'at': restore_db_instance_to_point_in_time")


class AwsEbsTarget(AwsTarget):
    provider: Literal["aws.ebs"]
    source: AwsEbsSource

    ID_FIELDS: ClassVar[tuple[str, ...]] = ("volume_id",)
    ENDPOINT_FIELDS: ClassVar[tuple[str, ...]] = ("volume_id", "snapshot_id", "expected_snapshot_id", "availability_zone", "size_gib", "region")


class AwsEc2Target(AwsTarget):
    provider: Literal["aws.ec2"]
    source: AwsEc2Source
    restore: InstanceRestoreOptions = Field(default_factory=InstanceRestoreOptions)

    ID_FIELDS: ClassVar[tuple[str, ...]] = ("instance_id",)
    ENDPOINT_FIELDS: ClassVar[tuple[str, ...]] = (
        "host", "private_ip", "instance_id", "image_id", "subnet_id", "volume_ids", "data_snapshot_ids",
        "security_group_id", "region",
    )


class AwsRdsTarget(AwsTarget):
    provider: Literal["aws.rds"]
    source: AwsRdsSource

    ID_FIELDS: ClassVar[tuple[str, ...]] = ("db_instance_identifier",)
    ENDPOINT_FIELDS: ClassVar[tuple[str, ...]] = ("host", "port", "dsn", "dbname", "user", "engine", "db_instance_identifier", "region")



class AwsProbe(CloudProbe):
    """`isolation.probe.aws`: an EC2 instance in the drill's VPC, from `ami` or `launch_template`."""

    ami: Optional[str] = Field(None, pattern=r"^ami-[0-9a-f]{8,17}$", description="an AMI with drdrill installed (deploy/aws/probe.md)")
    launch_template: Optional[str] = Field(
        None, pattern=r"^(lt-[0-9a-f]{8,17}|[A-Za-z0-9()./_-]{3,128})$", description="a launch template (id or name) giving the image"
    )
    instance_type: Optional[str] = Field(None, pattern=r"^[a-z0-9]+\.[a-z0-9]+$", description="default t3.micro (or the launch template's)")
    instance_profile: Optional[str] = Field(
        None, description="name or ARN of the instance profile whose role reads the probe's secrets, and nothing else"
    )
    # secrets: per target, a Secrets Manager secret ARN or SSM parameter ARN holding its database password
    SECRET_REFERENCE: ClassVar[tuple[str, str]] = (_AWS_SECRET_RE, "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-db-AbCdEf")

    @model_validator(mode="after")
    def _one_image(self) -> "AwsProbe":
        if (self.ami is None) == (self.launch_template is None):
            raise ValueError("probe.aws names its image with either 'ami' or 'launch_template', exactly one")
        return self



TARGETS = (AwsEbsTarget, AwsEc2Target, AwsRdsTarget)
PROBE = AwsProbe
