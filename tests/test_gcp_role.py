"""Least privilege: deploy/gcp/role.yaml grants exactly what the REST methods the provider calls need.

deploy/gcp/methods.yaml lists each method (id, REST path, permissions). This test drives a whole
drill of both target kinds plus an orphan sweep through the provider against the fake, then checks
that every method any GCP test drove is listed, that every listed method was driven, that the
paths agree with the fake's, and that the role holds exactly the union of the permissions.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from drdrill.providers.spec import parse_spec
from tests import gcp_fake
from tests.test_gcp import DISK_DRILL, INSTANCE_DRILL, NOW, _ctx  # noqa: F401 - shared fixtures below
from tests.test_gcp import fake, gcp  # noqa: F401 - pytest fixtures

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "gcp"


def _drive_everything(provider) -> None:
    for text in (DISK_DRILL.replace("[192.0.2.0/24]", "[]"), INSTANCE_DRILL):
        spec = parse_spec(text)
        ctx = _ctx("role")
        target = spec.targets[0]
        point = provider.find_recovery_point(ctx, target)
        env = provider.create_isolation(ctx, spec.isolation, spec.targets)
        assert provider.verify_isolation(ctx, env).outcome == "PASSED"
        res = provider.wait_ready(ctx, target, provider.restore(ctx, target, point, env), timeout=30)
        assert res.ready
        if target.provider == "gcp.disk":
            provider.teardown(ctx, env)
        else:
            # Left for the sweep.
            order = {"instance": 0, "disk": 1, "firewall": 2, "subnetwork": 3, "network": 4}
            for orphan in sorted(provider.list_orphans(NOW, set()), key=lambda o: order[o.kind]):
                provider.delete_orphan(orphan)


def _norm(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def test_role_covers_exactly_the_methods_the_provider_calls(fake, gcp):  # noqa: F811
    _drive_everything(gcp)
    called = fake.methods_called() | gcp_fake.ALL_CALLS
    methods = yaml.safe_load((DEPLOY / "methods.yaml").read_text())
    role = yaml.safe_load((DEPLOY / "role.yaml").read_text())

    unlisted = called - set(methods)
    assert not unlisted, f"methods the provider called that deploy/gcp/methods.yaml does not list: {sorted(unlisted)}"
    undriven = set(methods) - called
    assert not undriven, f"methods listed but never driven by a test: {sorted(undriven)}"
    for mid, entry in methods.items():
        assert _norm(entry["rest"]) == _norm(gcp_fake.REST_PATHS[mid]), mid

    needed = {p for entry in methods.values() for p in entry["permissions"]}
    granted = set(role["includedPermissions"])
    assert needed - granted == set(), f"role.yaml lacks {sorted(needed - granted)}"
    assert granted - needed == set(), f"role.yaml grants more than the provider needs: {sorted(granted - needed)}"
    assert role["stage"] == "GA" and role["title"]
