"""Safety: teardown and sweep never delete a resource lacking the drill's tag, whatever the provider
state. A property test over random simulated clouds: resources tagged by this drill, by other
drills (active, ended, expired), with empty or malformed tags, untagged production resources
sitting inside the drill's environment, and forged orphans handed to delete_orphan."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from tempfile import TemporaryDirectory

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drdrill.core.models import TAG_DRILL_ID, TAG_EXPIRES_AT, DrillContext, Environment, Orphan
from drdrill.providers.sim.provider import SimProvider, SimState
from drdrill.providers.sweep import sweep

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
DRILLS = ["d1", "d2", "D1", "d1 ", ""]

tag_values = st.one_of(st.sampled_from(DRILLS), st.text(max_size=6), st.none(), st.integers(0, 3))
tags = st.one_of(
    st.none(),
    st.just({}),
    st.fixed_dictionaries(
        {},
        optional={
            TAG_DRILL_ID: tag_values,
            TAG_EXPIRES_AT: st.sampled_from(["2026-06-01T11:00:00Z", "2026-06-01T13:00:00Z", "garbage", ""]),
            "Name": st.text(max_size=5),
            "drdrill:drill-id ": st.sampled_from(DRILLS),  # a look-alike key
        },
    ),
)
resource = st.fixed_dictionaries(
    {"kind": st.sampled_from(["database", "network", "disk", "snapshot"]), "tags": tags},
    optional={"env": st.sampled_from(["drdrill-d1", "drdrill-d2", "prod-vpc"])},
)
ids = st.one_of(st.sampled_from(["drdrill-d1", "drdrill-d1-db", "drdrill-d2", "prod-db", "prod-vpc"]), st.text(min_size=1, max_size=8))
clouds = st.dictionaries(ids, resource, max_size=12)


def _ours(rec: dict, drill_id: str) -> bool:
    t = rec.get("tags")
    return isinstance(t, dict) and isinstance(t.get(TAG_DRILL_ID), str) and t.get(TAG_DRILL_ID) == drill_id and drill_id != ""


def _load(path: Path, cloud: dict) -> dict:
    resources = {rid: {"id": rid, **rec} for rid, rec in cloud.items()}
    path.write_text(json.dumps({"version": 1, "resources": resources, "counters": {}, "running": {}, "events": []}))
    return resources


def _ctx(drill_id: str) -> DrillContext:
    return DrillContext(drill_id=drill_id, drill_name="x", declared=NOW, expires_at=NOW + timedelta(hours=2))


SAFETY = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@SAFETY
@given(cloud=clouds, drill_id=st.sampled_from(["d1", "d2"]), env_id=st.sampled_from(["drdrill-d1", "drdrill-d2", "prod-vpc"]))
def test_teardown_deletes_only_what_carries_this_drills_tag(cloud, drill_id, env_id):
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "sim.json"
        before = _load(path, cloud)
        sim = SimProvider(path)
        report = sim.teardown(_ctx(drill_id), Environment(family="sim", drill_id=drill_id, id=env_id))
        after = SimState(path).resources()
        deleted = set(before) - set(after)
        for rid in deleted:
            assert _ours(before[rid], drill_id), f"teardown of {drill_id} deleted {rid} tagged {before[rid].get('tags')}"
        # ...and everything it left in its environment that is not its own was reported as refused,
        # as was a network of its own kept because something not its own was found.
        refused = {o.id: o for o in report.outcomes if o.result == "refused"}
        for rid, outcome in refused.items():
            assert rid in after and outcome.reason
            assert not _ours(after[rid], drill_id) or outcome.reason.startswith("kept:"), outcome
        # Nothing else of its own survives a teardown.
        assert not [rid for rid, rec in after.items() if _ours(rec, drill_id) and rid not in refused]


@SAFETY
@given(
    cloud=clouds,
    active=st.sets(st.sampled_from(DRILLS)),
    forged=st.lists(st.builds(Orphan, provider=st.just("sim"), id=ids, kind=st.just("database"), drill_id=st.sampled_from(DRILLS)), max_size=5),
)
def test_sweep_never_deletes_an_untagged_resource_nor_an_active_drills(cloud, active, forged):
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "sim.json"
        before = _load(path, cloud)
        sim = SimProvider(path)
        rows = sweep({"sim": sim}, NOW, active)
        # A forged orphan (wrong drill id, an untagged id) must be refused, not deleted.
        forged_results = [(o, sim.delete_orphan(o)) for o in forged]
        after = SimState(path).resources()
        for rid in set(before) - set(after):
            t = before[rid].get("tags")
            assert isinstance(t, dict) and isinstance(t.get(TAG_DRILL_ID), str) and t[TAG_DRILL_ID], f"swept untagged {rid}: {t}"
        for orphan, outcome in rows:
            if outcome.result == "deleted":
                drill = before[orphan.id]["tags"][TAG_DRILL_ID]
                expires = before[orphan.id]["tags"].get(TAG_EXPIRES_AT)
                assert drill not in active or expires == "2026-06-01T11:00:00Z", (drill, active, expires)
        for orphan, outcome in forged_results:
            if outcome.result == "deleted":
                assert _ours(before[orphan.id], orphan.drill_id)
            elif not _ours(before.get(orphan.id, {}), orphan.drill_id) and orphan.id in after:
                assert outcome.result == "refused" and outcome.reason, outcome
