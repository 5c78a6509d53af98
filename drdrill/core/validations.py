"""The `validations:` of a drill file (and a plan group's `checks:`): what is checked on the restored
targets, one model per check type. drdrill/validation.py runs them."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator
from pydantic.functional_validators import BeforeValidator

from drdrill.core.durations import Duration
from drdrill.core.schema import Strict, discriminators, template_fields

_EXPECT_RE = re.compile(r"^\s*(==|!=|>=|<=|>|<)\s*(.+?)\s*$")


class ValidationBase(Strict):
    name: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,79}$")
    required: bool = Field(True, description="a required check gates the verdict and the RTO")
    timeout: Duration = Field(timedelta(minutes=5), description="how long the check may keep retrying")


class DataValidation(ValidationBase):
    target: str = Field(description="name of a restored target")
    database: Optional[str] = None


class SqlValidation(DataValidation):
    type: Literal["sql"]
    query: str = Field(min_length=1)
    expect: str = Field(description="comparison with the first column of the first row: '> 0', '== 42', \"== 'ok'\"")

    @field_validator("expect")
    @classmethod
    def _expect(cls, v: str) -> str:
        if not _EXPECT_RE.match(v):
            raise ValueError(f"{v!r} is not a comparison: write '> 0', '>= 10', '== 42', '!= 0' or \"== 'ok'\"")
        return v


class RowCountValidation(DataValidation):
    type: Literal["row_count"]
    table: str = Field(min_length=1)
    min: Optional[int] = Field(None, ge=0)
    equals_manifest: bool = Field(False, description="the count must equal the backup manifest's count")

    @model_validator(mode="after")
    def _one(self) -> "RowCountValidation":
        if self.min is None and not self.equals_manifest:
            raise ValueError("row_count needs 'min: N' or 'equals_manifest: true'")
        return self


class ChecksumValidation(DataValidation):
    type: Literal["checksum"]
    tables: Optional[list[str]] = Field(None, description="default: every table in the manifest")


class FreshnessValidation(DataValidation):
    type: Literal["freshness"]
    table: str = Field(min_length=1)
    column: str = Field(min_length=1, description="a timestamp column; its newest value is the measured recovery point")
    max_lag: Optional[Duration] = Field(None, description="default: the drill's RPO objective")


def _percent(value: Any) -> float:
    """`10%` (or a number of percent) -> 10.0, between 0 and 100."""
    text = value.strip()[:-1].strip() if isinstance(value, str) and value.strip().endswith("%") else None
    try:
        number = float(text) if text is not None else (float(value) if not isinstance(value, (bool, str)) else None)
    except (TypeError, ValueError):
        number = None
    if number is None or number != number:
        raise ValueError(f"{value!r} is not a percentage: write it like 10%")
    if not 0 <= number <= 100:
        raise ValueError(f"{value!r} is not between 0% and 100%")
    return number


Percent = Annotated[float, BeforeValidator(_percent)]


class VolumeValidation(DataValidation):
    """Row counts against the last PASSED run of the same drill: a table that lost more than
    `tolerance` of its rows fails; growth never does. The first run has nothing to compare with."""

    type: Literal["volume"]
    tolerance: Percent = Field(10.0, description="a table may lose at most this share of its rows, e.g. 10%")
    tables: Optional[list[str]] = Field(None, description="default: every table of the restore (and of the earlier run)")



class BoundaryValidation(DataValidation):
    """The moment recovered to, proven from both sides: rows written at or before it survived (the
    newest is at most `max_gap` older than it) and no row written after it exists. The moment is the
    recovery target of a point-in-time recovery, the moment its replay reached for `latest`, or the
    recovery point's consistent time otherwise."""

    type: Literal["boundary"]
    table: Optional[str] = Field(None, min_length=1, description="a table whose rows carry the time they were written")
    column: Optional[str] = Field(None, min_length=1, description="with table: the timestamp column")
    query: Optional[str] = Field(None, min_length=1, description="instead of table and column: a query returning one timestamp per row")
    max_gap: Duration = Field(
        timedelta(minutes=1),
        description="how much older than the moment the newest surviving row may be: how often the table is written (1s-marker rows: 2s)",
    )

    @model_validator(mode="after")
    def _rows(self) -> "BoundaryValidation":
        if self.query is None and (self.table is None or self.column is None):
            raise ValueError("boundary needs 'table' and 'column' (a timestamp column), or 'query' returning one timestamp per row")
        if self.query is not None and (self.table is not None or self.column is not None):
            raise ValueError("boundary takes either 'table' and 'column' or 'query', not both")
        return self



class TcpValidation(ValidationBase):
    """A TCP connect: to a fixed `host`, or to a restored `target`'s host (its endpoint's `host`)."""

    type: Literal["tcp"]
    host: Optional[str] = Field(None, description="a fixed host; or name a target instead")
    target: Optional[str] = Field(None, description="a restored target: its endpoint's host")
    port: Optional[int] = Field(None, ge=1, le=65535, description="default with a target: its endpoint's port")

    @model_validator(mode="after")
    def _one_address(self) -> "TcpValidation":
        if (self.host is None) == (self.target is None):
            raise ValueError("a tcp check names either 'host' (a fixed address) or 'target' (a restored target), exactly one")
        if self.host is not None and self.port is None:
            raise ValueError("a tcp check with a fixed host needs 'port'")
        return self


class HttpValidation(ValidationBase):
    """An HTTP GET of a fixed `url`, a url template filled from a restored `target`'s endpoint
    (`http://{host}:8080/health`), or `target` + `path` + `port`."""

    type: Literal["http"]
    url: Optional[str] = Field(None, pattern=r"^https?://", description="a URL, or a template naming endpoint fields: http://{host}:8080/health")
    target: Optional[str] = Field(None, description="a restored target whose endpoint fills the template or gives the host")
    path: Optional[str] = Field(None, pattern=r"^/", description="with target and port: the path to GET")
    port: Optional[int] = Field(None, ge=1, le=65535, description="with target and path")
    scheme: Literal["http", "https"] = "http"
    expect_status: int = Field(200, ge=100, le=599)
    contains: Optional[str] = None

    @model_validator(mode="after")
    def _one_address(self) -> "HttpValidation":
        if (self.url is None) == (self.path is None):
            raise ValueError("an http check has either 'url' (a URL or a template such as http://{host}:8080/health) or 'path' with 'target' and 'port'")
        if self.path is not None and (self.target is None or self.port is None):
            raise ValueError("'path' needs 'target' and 'port': the URL is <scheme>://<the target's host>:<port><path>")
        if self.url is not None:
            if template_fields(self.url) and self.target is None:
                raise ValueError(f"{self.url!r} names endpoint fields: add 'target:' to say whose")
            if self.port is not None:
                raise ValueError("'port' goes with 'path'; put the port in the url")
        return self


class CommandValidation(ValidationBase):
    type: Literal["command"]
    argv: list[str] = Field(min_length=1)
    expect_exit: int = 0
    target: Optional[str] = Field(None, description="target whose connection details are passed as DRDRILL_* variables")
    env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        default_factory=list,
        description="names of the worker's variables the command gets (its secrets, say); their values are redacted "
        "wherever they appear. Nothing else of the worker's environment is passed but PATH, locale and the cloud SDKs' own",
    )


Validation = Annotated[
    Union[
        SqlValidation,
        RowCountValidation,
        ChecksumValidation,
        FreshnessValidation,
        VolumeValidation,
        BoundaryValidation,
        TcpValidation,
        HttpValidation,
        CommandValidation,
    ],
    Field(discriminator="type"),
]

VALIDATION_TYPES = discriminators(Validation, "type")
