"""The shipped IAM policy covers every AWS API action the provider calls, and deletes only tagged things.

Actions are recorded by the provider's botocore `before-call` hook (drdrill.providers.aws.
CALLED_ACTIONS) across the whole test session; this module also drives a full lifecycle of every
target kind itself so it is complete when run alone.
"""

from __future__ import annotations

import fnmatch
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from drdrill.core.models import DrillContext
from drdrill.providers.aws.clients import CALLED_ACTIONS
from drdrill.providers.sweep import sweep
from drdrill.providers.spec import parse_spec
from tests.moto_server import aws, moto_endpoint  # noqa: F401

POLICY = Path(__file__).resolve().parent.parent / "deploy" / "aws" / "iam-policy.json"
DESTRUCTIVE = ("Delete", "Terminate", "Deregister")


def _statements() -> list[dict]:
    doc = json.loads(POLICY.read_text())
    assert doc["Version"] == "2012-10-17"
    return doc["Statement"]


def _actions(stmt: dict) -> list[str]:
    a = stmt["Action"]
    return [a] if isinstance(a, str) else list(a)


def allowed(action: str) -> bool:
    return any(
        stmt["Effect"] == "Allow" and any(fnmatch.fnmatchcase(action.lower(), pat.lower()) for pat in _actions(stmt))
        for stmt in _statements()
    )


def _exercise_every_kind(world) -> None:
    """find -> isolate -> verify -> restore -> ready -> orphans -> teardown for ebs, ec2, rds (+ PITR)."""
    vol, _ = world.volume_with_snapshots(n=1)
    iid, _ = world.instance_with_snapshots()
    db, _ = world.db_with_snapshot()
    runner = world.ec2.create_security_group(GroupName="runner", Description="validation runner")["GroupId"]
    spec = parse_spec(
        f"""
name: iam
objectives: {{rto: 1h, rpo: 1d}}
isolation: {{allow_ingress_from: ["{runner}", "192.0.2.0/24"]}}
targets:
  - {{name: vol, provider: aws.ebs, source: {{volume_id: {vol}}}}}
  - {{name: web, provider: aws.ec2, source: {{instance_id: {iid}}}}}
  - {{name: db, provider: aws.rds, source: {{db_instance_identifier: {db}}}}}
  - name: db-pitr
    provider: aws.rds
    source: {{db_instance_identifier: {db}, point_in_time: true}}
    recovery_point: {{rule: at, at: "2999-01-01T00:00:00Z"}}
"""
    )
    now = datetime.now(timezone.utc)
    ctx = DrillContext(drill_id="iam-1", drill_name="iam", declared=now, expires_at=now + timedelta(hours=1))
    p = world.provider
    points = {t.name: p.find_recovery_point(ctx, t) for t in spec.targets}
    env = p.create_isolation(ctx, spec.isolation, spec.targets)
    assert p.verify_isolation(ctx, env).outcome == "PASSED"
    for t in spec.targets:
        p.wait_ready(ctx, t, p.restore(ctx, t, points[t.name], env), 60)
    # A restored DB that comes up public is made private (moto copies the source's flag on PITR).
    world.rds.modify_db_instance(DBInstanceIdentifier="drdrill-iam-1-db", PubliclyAccessible=True, ApplyImmediately=True)
    res = p.restore(ctx, spec.targets[2], points["db"], env)
    ready = p.wait_ready(ctx, spec.targets[2], res, 60)
    assert [f.code for f in ready.findings] == ["RDS_MADE_PRIVATE"]
    # Half the drill is swept as orphans (delete_orphan path), the rest torn down.
    orphans = [o for o in p.list_orphans(now, set()) if o.kind in ("ec2-instance", "ami")]
    assert {o.kind for o in orphans} == {"ec2-instance", "ami"}
    for o in orphans:
        assert p.delete_orphan(o).result == "deleted"
    p.teardown(ctx, env)
    assert sweep({"aws": p}, now=now, active_drill_ids=set(), dry_run=False) == []


def test_iam_policy_covers_every_action_the_provider_called(aws):
    _exercise_every_kind(aws)
    called = set(CALLED_ACTIONS)
    assert {"ec2:RunInstances", "rds:RestoreDBInstanceToPointInTime", "rds:RestoreDBInstanceFromDBSnapshot", "ec2:DeleteVpc"} <= called
    missing = sorted(a for a in called if not allowed(a))
    assert missing == [], f"deploy/aws/iam-policy.json lacks: {missing}"


def test_iam_policy_is_least_privilege():
    for stmt in _statements():
        actions = _actions(stmt)
        assert "*" not in actions and not any(a.endswith(":*") for a in actions), stmt
        for a in actions:
            verb = a.split(":", 1)[1]
            if verb.startswith(DESTRUCTIVE):
                cond = json.dumps(stmt.get("Condition", {}))
                assert "aws:ResourceTag/drdrill:drill-id" in cond, f"{a} must be conditioned on the drdrill:drill-id tag"
            if verb.startswith("Create") and verb != "CreateTags" and "Condition" not in stmt:
                # Unconditioned create statements may only name existing source resources.
                assert all(":image/" in r or ":snapshot/" in r for r in stmt["Resource"]), stmt
    tags = [s for s in _statements() if "ec2:CreateTags" in _actions(s)]
    assert tags and all("ec2:CreateAction" in json.dumps(s["Condition"]) for s in tags)


def _statements_allowing(action: str) -> list[dict]:
    return [s for s in _statements() if s["Effect"] == "Allow" and any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in _actions(s))]


def test_tags_go_on_only_as_drdrill_creates_and_databases_it_did_not_name_are_never_tagged_or_deleted():
    """Issue 22: a tag is what the deletes are conditioned on, so drdrill's role must not be able to
    put one on a resource it did not create (a production database, then deleted)."""
    for stmt in _statements_allowing("ec2:CreateTags"):
        cond = stmt["Condition"]
        assert cond["StringEquals"]["ec2:CreateAction"] and cond["Null"] == {"aws:RequestTag/drdrill:drill-id": "false"}, stmt
    for action in ("rds:AddTagsToResource", "rds:DeleteDBInstance", "rds:DeleteDBSubnetGroup"):
        stmts = _statements_allowing(action)
        assert stmts, action
        for stmt in stmts:
            resources = [stmt["Resource"]] if isinstance(stmt["Resource"], str) else stmt["Resource"]
            assert all(r.split(":")[-1] == "drdrill-*" for r in resources), (action, stmt)
    assert _statements_allowing("rds:AddTagsToResource")[0]["Condition"] == {"Null": {"aws:RequestTag/drdrill:drill-id": "false"}}
    # Nothing takes a tag off or changes one later.
    for action in ("ec2:DeleteTags", "rds:RemoveTagsFromResource", "tag:TagResources", "tag:UntagResources"):
        assert not allowed(action), action
