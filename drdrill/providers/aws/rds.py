"""aws.rds targets: a DB snapshot (manual or automated) or a point in time -> a new DB instance in
the drill's subnet group and security group. Never publicly accessible: a restore that comes up
public anyway is made private before any check runs, and the drill says so."""

from __future__ import annotations

from psycopg.conninfo import make_conninfo

from datetime import datetime, timedelta
from typing import Any

from drdrill.core.models import TAG_DRILL_ID, DrillContext, Environment, Finding, RecoveryPoint, RestoredResource
from drdrill.core.times import parse_time
from drdrill.providers.aws.clients import GIB, RDS_NOT_FOUND, AwsBase, AwsError, rds_identifier, tag_list
from drdrill.providers.base import NotReadyYet, ProviderError, poll_until

_FAILED_STATES = ("failed", "incompatible-restore", "incompatible-parameters", "incompatible-network", "restore-error", "deleting", "storage-full")


class RdsTargets(AwsBase):
    """Recovery points, restore and readiness of aws.rds targets."""

    # ------------------------------------------------------------------ recovery points

    def _rds_points(self, target: Any) -> list[RecoveryPoint]:
        region = self._target_region(target)
        src = target.source
        kwargs: dict[str, Any] = {"DBInstanceIdentifier": src.db_instance_identifier}
        if src.snapshot_type != "any":
            kwargs["SnapshotType"] = src.snapshot_type
        snaps = [
            s
            for s in self.pages(self.rds(region), "describe_db_snapshots", "DBSnapshots", **kwargs)
            if s.get("Status") == "available"
            and s.get("DBInstanceIdentifier") == src.db_instance_identifier
            and (src.snapshot_type == "any" or s.get("SnapshotType") == src.snapshot_type)
            and s.get("SnapshotCreateTime")
        ]
        if src.snapshot_tags:
            snaps = [s for s in snaps if all(self._rds_tags(region, s).get(k) == v for k, v in src.snapshot_tags.items())]
        if not snaps:
            which = "" if src.snapshot_type == "any" else f"{src.snapshot_type} "
            tagged = f" tagged {src.snapshot_tags}" if src.snapshot_tags else ""
            raise ProviderError(
                "RECOVERY_POINT_NOT_FOUND",
                f"target {target.name}: no available {which}DB snapshot{tagged} of {src.db_instance_identifier} in {region}",
            )
        return [
            RecoveryPoint(
                target=target.name,
                provider=target.provider,
                id=s["DBSnapshotIdentifier"],
                consistent_time=parse_time(s["SnapshotCreateTime"]),
                size_bytes=int(s.get("AllocatedStorage", 0)) * GIB or None,
                metadata={
                    "region": region,
                    "kind": "snapshot",
                    "snapshot_type": s.get("SnapshotType"),
                    "snapshot_arn": s.get("DBSnapshotArn"),
                    "engine": s.get("Engine"),
                    "engine_version": s.get("EngineVersion"),
                    "port": s.get("Port"),
                    "master_username": s.get("MasterUsername"),
                    "encrypted": bool(s.get("Encrypted")),
                },
            )
            for s in snaps
        ]

    def _rds_pitr_point(self, ctx: DrillContext, target: Any) -> RecoveryPoint:
        """Rule `at` with point_in_time: the requested time, bounded by the source's restorable window."""
        region = self._target_region(target)
        src = target.source
        db = self._db_instance(region, src.db_instance_identifier)
        if db is None:
            raise ProviderError(
                "RECOVERY_POINT_NOT_FOUND",
                f"target {target.name}: DB instance {src.db_instance_identifier} not found in {region}; "
                "point-in-time restore needs the source instance (use a snapshot rule instead)",
            )
        latest, retention = db.get("LatestRestorableTime"), int(db.get("BackupRetentionPeriod") or 0)
        if not latest or retention == 0:
            raise ProviderError(
                "RECOVERY_POINT_NOT_FOUND",
                f"target {target.name}: {src.db_instance_identifier} has no automated backups "
                f"(BackupRetentionPeriod {retention}); point-in-time restore is impossible",
            )
        latest = parse_time(latest)
        when, findings = _restore_time(ctx, target, db, latest, retention)
        age = ctx.declared - when
        if target.recovery_point.max_age is not None and age > target.recovery_point.max_age:
            findings.append(
                Finding(
                    code="RECOVERY_POINT_STALE",
                    target=target.name,
                    message=f"target {target.name}: the chosen recovery point is {age} old, older than max_age {target.recovery_point.max_age}",
                )
            )
        return RecoveryPoint(
            target=target.name,
            provider=target.provider,
            id=f"pitr:{src.db_instance_identifier}@{when.strftime('%Y-%m-%dT%H:%M:%SZ')}",
            consistent_time=when,
            size_bytes=int(db.get("AllocatedStorage", 0)) * GIB or None,
            metadata={
                "region": region,
                "kind": "pitr",
                "source_db": src.db_instance_identifier,
                "restore_time": when.isoformat(),
                "latest_restorable_time": latest.isoformat(),
                "engine": db.get("Engine"),
                "port": (db.get("Endpoint") or {}).get("Port"),
                "master_username": db.get("MasterUsername"),
            },
            findings=findings,
            candidates=1,
        )

    # ------------------------------------------------------------------ restore

    def _restore_rds(self, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment, region: str) -> RestoredResource:
        ident = rds_identifier(ctx.resource_name(target.name))
        # RDS names the instance: one of that name must be this drill's (a retried activity's), never another's.
        existing = self._db_instance(region, ident)
        if existing is not None and self._rds_tags(region, existing).get(TAG_DRILL_ID) != ctx.drill_id:
            raise ProviderError("NAME_CONFLICT", f"DB instance {ident} exists but lacks {TAG_DRILL_ID}={ctx.drill_id}: refusing to use it")
        if existing is None:
            try:
                self._start_restore(ctx, target, point, env, region, ident)
            except AwsError as exc:
                if exc.aws_code in ("DBInstanceAlreadyExists", "DBInstanceAlreadyExistsFault"):
                    return self._restore_rds(ctx, target, point, env, region)
                if exc.aws_code in RDS_NOT_FOUND:
                    raise ProviderError("RECOVERY_POINT_NOT_FOUND", f"target {target.name}: {point.id} is gone: {exc.message}") from exc
                raise
        return RestoredResource(
            target=target.name,
            provider=target.provider,
            id=ident,
            description=f"DB instance {ident} from {point.id}",
            details={
                "region": region,
                "kind": "db-instance",
                "db_instance_identifier": ident,
                "source": point.id,
                "security_group_id": env.details["security_group_id"],
                "db_subnet_group": env.details["db_subnet_group"],
            },
        )

    def _start_restore(self, ctx: DrillContext, target: Any, point: RecoveryPoint, env: Environment, region: str, ident: str) -> None:
        """RestoreDBInstanceToPointInTime or …FromDBSnapshot into the drill's network, private, tagged."""
        rds = self.rds(region)
        common = dict(
            DBInstanceClass=target.source.db_instance_class,
            DBSubnetGroupName=env.details["db_subnet_group"],
            VpcSecurityGroupIds=[env.details["security_group_id"]],
            PubliclyAccessible=False,
            MultiAZ=False,
            DeletionProtection=False,
            CopyTagsToSnapshot=False,
            AutoMinorVersionUpgrade=False,
            Tags=tag_list({**ctx.tags(target.name), "Name": ident}),
        )
        if point.metadata.get("kind") == "pitr":
            self.call(
                rds.restore_db_instance_to_point_in_time,
                SourceDBInstanceIdentifier=point.metadata["source_db"],
                TargetDBInstanceIdentifier=ident,
                RestoreTime=parse_time(point.metadata["restore_time"]),
                **common,
            )
        else:
            self.call(rds.restore_db_instance_from_db_snapshot, DBInstanceIdentifier=ident, DBSnapshotIdentifier=point.id, **common)

    # ------------------------------------------------------------------ readiness

    def _wait_db(self, region: str, res: RestoredResource, timeout: float) -> None:
        """Available, private (made so if it came up public), in the drill's network; endpoint filled in."""

        def available() -> dict:
            db = self._db_instance(region, res.id)
            if db is None:
                raise NotReadyYet("DB instance not visible yet")
            status = db.get("DBInstanceStatus")
            if status in _FAILED_STATES:
                raise ProviderError("RESTORE_FAILED", f"DB instance {res.id} is {status}")
            if status != "available":
                raise NotReadyYet(f"DB instance is {status}")
            return db

        db = poll_until(available, timeout=timeout, what=f"DB instance {res.id}", **self.poll_schedule)
        made_private = bool(db.get("PubliclyAccessible"))
        if made_private:
            # Restores ask for PubliclyAccessible=False (an emulator may ignore it): fix it and say so.
            self.call(self.rds(region).modify_db_instance, DBInstanceIdentifier=res.id, PubliclyAccessible=False, ApplyImmediately=True)
            db = poll_until(available, timeout=timeout, what=f"DB instance {res.id} (made private)", **self.poll_schedule)
        problems = _isolation_problems(db, res)
        if problems:
            res.findings.append(Finding(code="ISOLATION_BROKEN", target=res.target, message=f"restored DB {res.id} " + " and ".join(problems)))
        elif made_private:
            res.findings.append(
                Finding(
                    code="RDS_MADE_PRIVATE",
                    severity="warning",
                    target=res.target,
                    message=f"restored DB {res.id} came up publicly accessible although the restore asked otherwise; drdrill made it private before any check",
                )
            )
        res.endpoint.update(_db_endpoint(db, region, res.id))


def _restore_time(ctx: DrillContext, target: Any, db: dict, latest: datetime, retention: int) -> tuple[datetime, list[Finding]]:
    """The requested time bounded by LatestRestorableTime (a warning says so) and the declared
    disaster, in whole seconds; before the earliest restorable time is no recovery point."""
    src, requested = target.source, target.recovery_point.at
    findings: list[Finding] = []
    earliest = ctx.declared - timedelta(days=retention)
    created = parse_time(db.get("InstanceCreateTime"))
    if created and created > earliest:
        earliest = created
    when = requested
    if requested > latest:
        when = latest
        findings.append(
            Finding(
                code="RECOVERY_POINT_BOUNDED",
                severity="warning",
                target=target.name,
                message=f"target {target.name}: requested {requested.isoformat()} is after LatestRestorableTime "
                f"{latest.isoformat()}; restoring to LatestRestorableTime",
            )
        )
    # Never past the declared disaster (an emulator's LatestRestorableTime can be "now"), and
    # in whole seconds so the point id and RestoreTime say the same thing.
    when = min(when, ctx.declared).replace(microsecond=0)
    if when < earliest.replace(microsecond=0):
        raise ProviderError(
            "RECOVERY_POINT_NOT_FOUND",
            f"target {target.name}: {when.isoformat()} is before the earliest restorable time of "
            f"{src.db_instance_identifier} (about {earliest.isoformat()}, retention {retention} days)",
        )
    return when, findings


def _isolation_problems(db: dict, res: RestoredResource) -> list[str]:
    """How the restored DB escapes the drill's network: public, other security groups, other subnet group."""
    groups = sorted(g["VpcSecurityGroupId"] for g in db.get("VpcSecurityGroups", []))
    subnet_group = (db.get("DBSubnetGroup") or {}).get("DBSubnetGroupName")
    problems = []
    if db.get("PubliclyAccessible"):
        problems.append("is publicly accessible")
    if groups and groups != [res.details.get("security_group_id", "")]:
        problems.append(f"has security groups {groups}")
    if subnet_group and subnet_group != res.details.get("db_subnet_group", subnet_group):
        problems.append(f"is in subnet group {subnet_group}")
    return problems


def _db_endpoint(db: dict, region: str, ident: str) -> dict[str, Any]:
    """How validations reach the DB. For PostgreSQL a DSN without password: the source's master
    password reaches the worker as PGPASSWORD (or .pgpass)."""
    ep = db.get("Endpoint") or {}
    engine = db.get("Engine", "")
    dbname = db.get("DBName") or ("postgres" if "postgres" in engine else "")
    user = db.get("MasterUsername", "")
    endpoint: dict[str, Any] = {
        "host": ep.get("Address", ""),
        "port": ep.get("Port", ""),
        "dbname": dbname,
        "user": user,
        "engine": engine,
        "db_instance_identifier": ident,
        "region": region,
    }
    if "postgres" in engine and ep.get("Address"):
        endpoint["dsn"] = make_conninfo(host=ep["Address"], port=ep.get("Port", 5432), dbname=dbname, user=user, sslmode="require")
    return endpoint
