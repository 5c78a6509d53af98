"""The postgres part of the drill format: PostgresTarget (its sources: drdrill's repository, pg_dump
files, point-in-time sources; its restore options) and PostgresProbe. Pure models: no driver, no I/O
(drdrill/providers/spec.py reads this module to assemble DrillSpec; registry.py lists it)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, ClassVar, Iterator, Literal, Optional

from pydantic import Field, field_validator, model_validator

from drdrill.core.durations import Duration
from drdrill.core.schema import ProbeBase, RefError, RestoreOptions, Selection, Strict, TargetBase, check_environment

FAMILY = "postgres"
PROVIDER = "drdrill.providers.postgres.provider:PostgresProvider"
# Its resources live on the worker's own machine (a local cluster on a Unix socket): every activity
# of one drill for this family must run on the same host. See DrillActivities.claim_host.
HOST_BOUND = True

# What a check may name (url templates, tcp/http targets): host and port only on TCP, i.e. with
# isolation.postgres: network; the default cluster has no TCP listener at all.
SOCKET_FIELDS = ("dsn", "database", "socket_dir")
NETWORK_FIELDS = ("host", "port") + SOCKET_FIELDS


class S3Location(Strict):
    """Objects under a prefix of an S3 bucket (or an S3-compatible store), read with boto3's default
    credential chain only: nothing secret is ever written in a drill file."""

    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
    prefix: str = Field("", description="every object under it (but `.sha256` sidecars) is a candidate recovery point")
    region: Optional[str] = None
    endpoint_url: Optional[str] = Field(None, pattern=r"^https?://", description="an S3-compatible store (MinIO, Ceph, moto)")


_NAME_TIME_DIRECTIVES = {"Y": r"\d{4}", "m": r"\d{2}", "d": r"\d{2}", "H": r"\d{2}", "M": r"\d{2}", "S": r"\d{2}", "j": r"\d{3}", "z": r"[+-]\d{4}", "%": "%"}
_NAME_TIME_RE = re.compile(r"\{time:([^}]+)\}")


def name_time_regex(pattern: str) -> tuple[re.Pattern, str]:
    """`shop-{time:%Y%m%dT%H%M%SZ}.dump` -> (a regex whose group `time` is the stamp, its strptime format).
    The regex is searched in an object's name, so the pattern may be just the time part."""
    found = _NAME_TIME_RE.findall(pattern)
    if len(found) != 1:
        raise ValueError(f"{pattern!r} needs exactly one {{time:FORMAT}}, e.g. \"{{time:%Y%m%dT%H%M%SZ}}\"")
    fmt = found[0]
    parts = re.split(r"(%.)", fmt)
    rx = ""
    for part in parts:
        if part.startswith("%") and len(part) == 2:
            if part[1] not in _NAME_TIME_DIRECTIVES:
                raise ValueError(f"{pattern!r}: %{part[1]} is not supported in a name time; use %Y %m %d %H %M %S %j %z")
            rx += _NAME_TIME_DIRECTIVES[part[1]]
        else:
            rx += re.escape(part)
    if "%Y" not in fmt:
        raise ValueError(f"{pattern!r}: the time needs at least a year, month and day (%Y%m%d)")
    before, _, after = _NAME_TIME_RE.sub("\0", pattern).partition("\0")
    return re.compile(re.escape(before) + f"(?P<time>{rx})" + re.escape(after)), fmt


# ---------------------------------------------------------------- postgres sources: point in time
# Physical backups plus a WAL archive, recovered with the tools that wrote them (issue 15). drdrill
# only reads the repository; the recovered server never reaches it (its WAL comes through drdrill).

class PointInTimeSource(Strict):
    """What every point-in-time source has: the role checks connect as in the recovered cluster."""

    user: str = Field("postgres", min_length=1, description="a superuser of the backed-up cluster, for the checks")


class PgBackRestSource(PointInTimeSource):
    """A pgBackRest stanza, in any repository type pgBackRest reads (posix, S3, Azure, GCS, SFTP)."""

    stanza: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="the stanza (pgbackrest --stanza)")
    config: Optional[str] = Field(None, description="pgbackrest.conf (relative to the drill file); default: pgBackRest's own")
    repo: Optional[int] = Field(None, ge=1, le=256, description="the repository to read (--repo); default: pgBackRest's choice")
    env: list[str] = Field(
        default_factory=list,
        description="names of the PGBACKREST_* variables configuring the repository (e.g. PGBACKREST_REPO1_S3_KEY); "
        "passed to pgBackRest by name, their values never written anywhere",
    )

    @field_validator("env")
    @classmethod
    def _pgbackrest_variables(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not re.match(r"^PGBACKREST_[A-Z0-9_]+$", n)]
        if bad:
            raise ValueError(
                f"{', '.join(map(repr, bad))}: name PGBACKREST_* variables (e.g. PGBACKREST_REPO1_S3_KEY); "
                "their values stay in the worker's environment"
            )
        return names


class BarmanSource(PointInTimeSource):
    """Backups and WAL written by barman-cloud-backup / barman-cloud-wal-archive to S3."""

    source_url: str = Field(pattern=r"^s3://[^/]+", description="s3://bucket/path, as given to barman-cloud-backup")
    server: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="the server name given to barman-cloud-backup")
    endpoint_url: Optional[str] = Field(None, pattern=r"^https?://", description="an S3-compatible endpoint")
    env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        default_factory=list,
        description="names of the variables holding the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "AWS_SESSION_TOKEN, AWS_DEFAULT_REGION, AWS_PROFILE); passed by name, their values never written anywhere",
    )


class WalArchiveSource(PointInTimeSource):
    """Plain pg_basebackup directories plus the directory `archive_command = 'cp %p /archive/%f'` fills."""

    base_backups: str = Field(description="a pg_basebackup -Fp directory, or a directory of them (relative to the drill file)")
    archive: str = Field(description="the WAL archive directory (relative to the drill file)")


class PostgresSource(Strict):
    """Where a postgres target's backups are: exactly one kind of source (SOURCE_KINDS)."""

    # --- the kinds of source: exactly one is given (SOURCE_KINDS; a new kind adds a field and an entry)
    repository: Optional[str] = Field(None, description="drdrill's own backup repository (`drdrill backup`; relative to the drill file)")
    path: Optional[str] = Field(None, description="pg_dump files already on disk: a directory and a glob, e.g. /backups/shop/*.dump")
    s3: Optional[S3Location] = Field(None, description="pg_dump files in an S3 bucket: {bucket, prefix, region, endpoint_url}")
    url_env: Optional[str] = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="name of the environment variable holding a presigned HTTPS URL of one pg_dump file",
    )
    # --- pg_dump files (path, s3, url_env): how to read and trust them
    name_time: Optional[str] = Field(
        None, description='the recovery point\'s time in the file name, e.g. "{time:%Y%m%dT%H%M%SZ}" (UTC unless %z)'
    )
    sha256: Optional[str] = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="the artefact's expected sha256")
    size: Optional[int] = Field(None, ge=0, description="the artefact's expected size in bytes")
    # --- common
    dsn_env: Optional[str] = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="name of the environment variable holding the source DSN (for `drdrill backup`)",
    )
    format: Optional[str] = Field(  # checked per kind of source below: an error lists only the ones that apply
        None,
        description="repository: custom (pg_dump -Fc, the default), directory (-Fd) or base (pg_basebackup); "
        "pg_dump files: auto (the default: read from the file), custom, directory, tar or plain (SQL, also .gz or .zst)",
    )
    database: Optional[str] = Field(
        None, description="database name inside the restored cluster (default: target name; `postgres` for a point-in-time source)"
    )
    # Point in time: physical backups plus WAL.
    pgbackrest: Optional[PgBackRestSource] = Field(None, description="a pgBackRest stanza")
    barman: Optional[BarmanSource] = Field(None, description="barman-cloud backups and WAL in S3")
    wal_archive: Optional[WalArchiveSource] = Field(None, description="pg_basebackup directories and a WAL archive directory")
    # Set by drdrill from the drill's validations, never written in a drill file: the names of the
    # boundary checks of this target (a point-in-time recovery without one proves no moment).
    boundary_checks: list[str] = Field(default_factory=list, description="set by drdrill")

    @property
    def kind(self) -> str:
        """Which kind of source this is: one of SOURCE_KINDS."""
        return next(k for k in SOURCE_KINDS if getattr(self, k) is not None)

    @property
    def pitr(self) -> bool:
        """Recovered to a point in time: a base backup plus WAL replay."""
        return self.kind in PITR_KINDS

    @model_validator(mode="after")
    def _one_kind(self) -> "PostgresSource":
        given = [k for k in SOURCE_KINDS if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(
                f"a postgres source names exactly one of {', '.join(SOURCE_KINDS)}; this one names {' and '.join(given)}: "
                "keep the one where this target's backups are"
            )
        if not given:
            raise ValueError(
                f"a postgres source names exactly one of {', '.join(SOURCE_KINDS)}; this one names none: add where this "
                "target's backups are, e.g. `path: /backups/shop/*.dump` or `s3: {bucket: BUCKET, prefix: shop/}`"
            )
        dumps = self.kind in DUMP_SOURCE_KINDS
        allowed = ("auto", "custom", "directory", "tar", "plain") if dumps else ("custom", "directory", "base")
        if self.format is None:
            self.format = "auto" if dumps else "custom"
        if self.kind in PITR_KINDS:
            allowed = (self.format,)  # a physical backup has no pg_dump format: nothing to choose
        if self.format not in allowed:
            raise ValueError(f"format {self.format!r} does not apply to a {self.kind} source; allowed: {', '.join(allowed)}")
        extras = [k for k in ("name_time", "sha256", "size") if getattr(self, k) is not None]
        if extras and not dumps:
            raise ValueError(
                f"{' and '.join(extras)} {'applies' if len(extras) == 1 else 'apply'} only to pg_dump files (path, s3, url_env), "
                "not to a repository: remove it; "
                "drdrill's repository checks its archives against their manifests"
            )
        if self.name_time is not None:
            name_time_regex(self.name_time)
        if self.dsn_env is not None and self.kind != "repository":
            raise ValueError("dsn_env is for `drdrill backup`, which writes a repository: remove it, or use `repository:`")
        return self


# The kinds of postgres source, in the order an error lists them. Each is a field of PostgresSource
# and a RecoverySource (drdrill/providers/postgres/provider.py `source_of`).
SOURCE_KINDS: list[str] = ["repository", "path", "s3", "url_env", "pgbackrest", "barman", "wal_archive"]
# The kinds that read pg_dump files written by someone else (no manifest).
DUMP_SOURCE_KINDS: tuple[str, ...] = ("path", "s3", "url_env")
# The kinds recovered to a point in time (a base backup plus WAL replay).
PITR_KINDS: tuple[str, ...] = ("pgbackrest", "barman", "wal_archive")


class AfterRestore(Strict):
    """An application started from the restored data inside the drill's network namespace
    (`isolation.postgres: network`), so `http` and `tcp` checks through the probe reach it. It gets
    the restored database as DRDRILL_DSN, DRDRILL_HOST, DRDRILL_PORT and DRDRILL_DATABASE, runs
    until the environment is torn down, and logs to the cluster directory. It runs in the drill's
    restore sandbox: it sees /usr, its argv[0], the restored socket directory and `paths` only."""

    argv: list[str] = Field(min_length=1, description="the command; argv[0] is found on PATH, so prefer absolute paths")
    paths: list[str] = Field(
        default_factory=list,
        description="files and directories the application reads (read-only in its sandbox, besides /usr and the "
        "restored database's socket directory); each must be reachable by an unprivileged uid (relative to the drill file)",
    )


class IntegrityOptions(Strict):
    """Proof that the restored data is sound (integrity.py): pg_amcheck of heaps and B-trees,
    collation versions, page checksums of physical restores; what the budget leaves unchecked is
    COULD NOT VERIFY."""

    enabled: bool = Field(True, description="run the corruption checks after the restore (off: the report says they did not run)")
    budget: Duration = Field(timedelta(minutes=30), description="time for the checks; relations left unchecked when it runs out are named")


class PostgresRestoreOptions(RestoreOptions):
    integrity: IntegrityOptions = Field(default_factory=IntegrityOptions, description="corruption checks after the restore")
    structure_reference: Optional[str] = Field(
        None,
        description="file listing the catalog objects the restore must have (relative to the drill file; "
        "written by `drdrill reference write`): STRUCTURE_MISSING / STRUCTURE_UNEXPECTED against it",
    )
    after: Optional[AfterRestore] = Field(None, description="start an application from the restored data (isolation.postgres: network only)")
    # pg_dump files (path, s3, url_env): bounds on what a backup can make drdrill read (issue 21).
    max_expanded_bytes: int = Field(
        1 << 40, ge=1, description="a gzip/zstd plain dump that decompresses to more bytes than this is ARTEFACT_TOO_LARGE (default 1 TiB)"
    )
    max_expansion_ratio: float = Field(
        1000, ge=1, description="… or to more than this many times its compressed size (a decompression bomb; default 1000)"
    )
    stall_after: Duration = Field(
        timedelta(minutes=5), description="a dump stream that delivers no byte for this long ends the restore: RESTORE_STALLED"
    )
    environment: dict[str, str] = Field(
        default_factory=dict,
        description="more variables for restore.after: {targets.<target>.<field>} (an earlier group's endpoint) or "
        "{env.<VARIABLE>} (a secret reference, read on the worker that starts it)",
    )

    @field_validator("environment")
    @classmethod
    def _environment(cls, v: dict[str, str]) -> dict[str, str]:
        return check_environment(v)


PHYSICAL_KINDS = ("pgbackrest", "barman", "wal_archive")  # recovered from a physical backup plus WAL


class PostgresTarget(TargetBase):
    provider: Literal["postgres"]
    source: PostgresSource
    restore: PostgresRestoreOptions = Field(default_factory=PostgresRestoreOptions)

    SELECT_BY: ClassVar[tuple[str, ...]] = ("repositories",)
    SELECT_NEEDS: ClassVar[tuple[tuple[str, ...], str]] = (
        ("repositories",), "a postgres selection needs 'repositories:' (directories, or globs such as backups/*)"
    )
    ID_FIELDS: ClassVar[tuple[str, ...]] = ("repository",)
    ENDPOINT_FIELDS: ClassVar[tuple[str, ...]] = NETWORK_FIELDS
    NO_HOST_FIX: ClassVar[str] = "the default isolation has no TCP listener (use an sql check); set isolation.postgres: network for one"
    INVENTORY_BY_POINT: ClassVar[bool] = True  # dump files, a stanza, …: no inventory lists them

    def stages(self, isolation: Any) -> bool:
        """A physical source's backup is laid down beside the isolation (staging.py); not on the network isolation."""
        return self.source is not None and self.source.kind in PHYSICAL_KINDS and getattr(isolation, "postgres", "socket") != "network"

    def inventory_selection(self) -> Optional[Selection]:
        """drdrill's own repository is found as a selection of it finds it."""
        return Selection(repositories=[self.source.repository]) if self.source is not None and self.source.repository else None

    def source_label(self) -> str:
        """A postgres source as a person names it: its path, bucket, variable, stanza, server or archive."""
        source = self.source
        kind = source.kind
        if kind == "path":
            return str(source.path)
        if kind == "s3":
            return f"s3://{source.s3.bucket}/{source.s3.prefix}"  # type: ignore[union-attr]
        if kind == "url_env":
            return f"${source.url_env}"
        if kind == "pgbackrest":
            return f"pgBackRest stanza {source.pgbackrest.stanza}" + (f" (repo {source.pgbackrest.repo})" if source.pgbackrest.repo else "")  # type: ignore[union-attr]
        if kind == "barman":
            return f"barman server {source.barman.server} in {source.barman.source_url}"  # type: ignore[union-attr]
        if kind == "wal_archive":
            return f"WAL archive {source.wal_archive.archive}"  # type: ignore[union-attr]
        return str(source.repository)

    @classmethod
    def endpoint_fields(cls, isolation: Any) -> tuple[str, ...]:
        return NETWORK_FIELDS if getattr(isolation, "postgres", "socket") == "network" else SOCKET_FIELDS

    def drill_problem(self, spec: Any, index: int) -> Optional[RefError]:
        """restore.after runs only in the drill's own network namespace, and environment goes only to it."""
        if self.restore.after is not None and spec.isolation.postgres != "network":
            return RefError(
                ("targets", index, "restore", "after"),
                "restore.after starts an application inside the drill's network namespace: set isolation.postgres: network "
                "(on the default private socket it would run on the worker's own network, next to production)",
            )
        if self.restore.environment and self.restore.after is None:
            return RefError(
                ("targets", index, "restore", "environment"),
                "restore.environment is handed to the application restore.after starts: add restore.after, or remove environment",
            )
        return None

    def attach_checks(self, spec: Any) -> None:
        """The boundary checks of this target: a point-in-time recovery without one proves no moment (PITR_UNASSERTED)."""
        if self.source is not None:
            self.source.boundary_checks = [
                spec.validation_name(i) for i, v in enumerate(spec.validations) if v.type == "boundary" and v.target == self.name
            ]

    def warnings(self, index: int) -> Iterator[tuple[str, str]]:
        """A point-in-time recovery that merely came up proves nothing about the moment it reached."""
        if self.source is not None and self.source.pitr and not self.source.boundary_checks:
            yield (
                f"targets[{index}]",
                f"target {self.name} is recovered to a point in time but no boundary check proves the moment: the drill "
                f"ends COULD_NOT_VERIFY (PITR_UNASSERTED); add {{type: boundary, target: {self.name}, table: ..., column: ...}}",
            )

    def load_problems(self, index: int, now: datetime) -> Iterator[tuple[str, str]]:
        """A point-in-time recovery to a moment that has not happened can only run out of WAL."""
        at = self.recovery_point.at
        if self.source is not None and self.source.pitr and at is not None and at > now:
            yield (
                f"targets[{index}].recovery_point.at",
                f"{at.isoformat()} is in the future (now {now.replace(microsecond=0).isoformat()}): the archive cannot "
                "reach it; give a moment that has passed, or use rule latest",
            )

    def file_fields(self, index: int) -> Iterator[tuple[str, Any, Any]]:
        """The repository, dump path, pgBackRest config, WAL archive, structure reference and restore.after's paths."""
        if self.source is not None:
            for field, owner, attr in (
                ("repository", self.source, "repository"),
                ("path", self.source, "path"),
                ("pgbackrest.config", self.source.pgbackrest, "config"),
                ("wal_archive.base_backups", self.source.wal_archive, "base_backups"),
                ("wal_archive.archive", self.source.wal_archive, "archive"),
            ):
                if owner is not None and getattr(owner, attr) is not None:
                    yield f"targets[{index}].source.{field}", owner, attr
            if self.restore.structure_reference:
                yield f"targets[{index}].restore.structure_reference", self.restore, "structure_reference"
            for j in range(len(self.restore.after.paths) if self.restore.after else 0):
                yield f"targets[{index}].restore.after.paths[{j}]", self.restore.after.paths, j  # type: ignore[union-attr]
        yield from super().file_fields(index)


class PostgresProbe(ProbeBase):
    """The probe of `isolation.postgres: network`: a process inside the drill's network namespace,
    reaching Temporal only through a relay (a Unix socket in the cluster directory)."""

    start_timeout: Duration = Field(timedelta(minutes=2), description="how long the drill waits for the probe to start polling")
    temporal_address: Optional[str] = Field(
        None,
        pattern=r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$",
        description="host:port of the Temporal frontend the relay forwards to (default: the worker's own)",
    )
    temporal_namespace: Optional[str] = Field(None, description="the probe's Temporal namespace (default: the worker's own)")


    def isolation_problem(self, isolation: Any) -> Optional[str]:
        if isolation.postgres != "network":
            return "probe.postgres runs inside the drill's network namespace: set 'postgres: network' in isolation, or remove probe.postgres"
        return None


TARGETS = (PostgresTarget,)
PROBE = PostgresProbe
