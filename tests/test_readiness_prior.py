"""A target's earlier drills set when its readiness is expected: the second drill of a target in a
state directory polls around the first one's restore → ready time, and its evidence says so."""

from __future__ import annotations

import json

from tests.pg_fixtures import cluster_root, shop_dsn, shop_repo  # noqa: F401
from tests.test_postgres_drill import drill_yaml


def test_the_second_drill_of_a_target_expects_it_ready_when_the_first_was(drill_harness, shop_repo, cluster_root):  # noqa: F811
    spec = drill_harness.spec(drill_yaml(shop_repo))
    first = drill_harness.run(spec)
    assert first.verdict == "PASSED", first.findings
    span = next(e for e in first.timeline if e.phase == "restore" and e.target == "shop")
    assert span.started <= span.ended  # the target's own restore span is in the timeline
    assert "readiness_prior" not in first.restored[0].details  # a first drill has no prior

    second = drill_harness.run(spec)
    assert second.verdict == "PASSED", second.findings
    prior = second.restored[0].details["readiness_prior"]
    assert prior["earlier_runs"] == 1
    assert prior["expected_seconds"] == round((span.ended - span.started).total_seconds(), 3)
    evidence = json.loads((drill_harness.state_dir / "runs" / second.drill_id / "evidence.json").read_text())
    assert evidence["restored"][0]["details"]["readiness_prior"] == prior
