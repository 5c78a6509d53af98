"""Typed teardown and sweep outcomes, as a user meets them, for providers other than AWS.

A refusal (a resource adopted by someone else between the listing and the deletion) makes
`drdrill sweep` exit non-zero and is recorded with its reason in the sweep's evidence file and in
the evidence store; the metrics count deletions per provider; postgres refuses a cluster whose tag
changed and one outside its worker's cluster root; a deletion that fails is a `failed` outcome;
a teardown that leaves something alone says what and why.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from app.temporal import free_port
from drdrill import metrics
from drdrill.core.models import TAG_DRILL_ID, TAG_EXPIRES_AT, DrillContext, Environment
from drdrill.providers.activity_io import SweepInput, SweepRecord
from drdrill.core.times import format_time
from drdrill.evidence.store import open_store
from drdrill.providers.postgres.provider import PostgresProvider
from drdrill.providers.sim.provider import SimProvider, SimState
from drdrill.providers.sweep import delete_one, failed, sweep
from tests.conftest import wait_for_phase
from tests.ops_helpers import created, recorded, service, unique
from tests.pg_fixtures import cluster_root  # noqa: F401
from tests.sim_harness import run_sim, sim_yaml, wait_until
from tests.test_metrics import sample, scrape

DRDRILL = str(Path(sys.executable).parent / "drdrill")


def sweep_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    """`drdrill sweep ARGS` as a user runs it, with the service's environment."""
    return subprocess.run([DRDRILL, "sweep", *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=240)


def evidence_of(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(Path(proc.stdout.split("evidence: ")[1].split()[0]).read_text())


def _tags(drill_id: str, now: datetime) -> dict[str, str]:
    """Tags as a drill writes them; its expiry is an hour away, so only the drill having ended counts."""
    return {TAG_DRILL_ID: drill_id, TAG_EXPIRES_AT: format_time(now + timedelta(hours=1))}


def _cluster_dir(path: Path, drill_id: str, now: datetime) -> Path:
    """A cluster directory as an ended drill leaves it (its marker first; the server already gone)."""
    path.mkdir(mode=0o700)
    (path / "drdrill.json").write_text(json.dumps(_tags(drill_id, now)))
    return path


def _rows(stdout: str, provider: str) -> dict[str, list[str]]:
    """The sweep table's rows by resource id: provider, kind, id, drill, outcome, then the reason's words."""
    return {words[2]: words for words in map(str.split, stdout.splitlines()) if words and words[0] == provider}


def test_a_refused_deletion_makes_drdrill_sweep_fail_and_is_recorded(temporal_server, tmp_path):
    now = datetime.now(timezone.utc)
    state = tmp_path / "sim.json"
    cloud = SimState(state)
    a, b = f"a-ended-{uuid.uuid4().hex[:6]}", f"b-ended-{uuid.uuid4().hex[:6]}"
    net_a, db_a, db_b = f"drdrill-{a}", f"drdrill-{a}-db0", f"drdrill-{b}-db0"
    # Two ended drills; deleting in drill a's network takes 3 s per resource.
    cloud.plant(net_a, kind="network", tags=_tags(a, now), faults={"latency": {"teardown": {"fixed": 3}}})
    cloud.plant(db_a, kind="database", tags=_tags(a, now), env=net_a)
    cloud.plant(db_b, kind="database", tags=_tags(b, now))
    recorded(a, "sim", ("network", net_a), ("database", db_a))
    recorded(b, "sim", ("database", db_b))

    async def go():
        async with service(temporal_server.address, tmp_path, providers={"sim": SimProvider(state)}) as svc:
            cli = asyncio.ensure_future(asyncio.to_thread(sweep_cli, svc.env(), "--provider", "sim"))
            # The sweep listed all three and deleted a's database; while it deletes a's network,
            # someone adopts b's database: its tag no longer names b.
            await wait_until(lambda: db_a not in cloud.resources() or cli.done(), timeout=120, what="the first deletion")
            with cloud.edit() as s:
                s["resources"][db_b]["tags"][TAG_DRILL_ID] = "someone-else"
            return await cli

    proc = asyncio.run(go())
    assert proc.returncode == 4, proc.stdout + proc.stderr
    rows = _rows(proc.stdout, "sim")
    assert rows[db_a][4] == "deleted" and rows[net_a][4] == "deleted"
    assert rows[db_b][:5] == ["sim", "database", db_b, b, "refused"]
    assert " ".join(rows[db_b][5:]) == f"tag {TAG_DRILL_ID} is 'someone-else', expected '{b}'"
    assert sorted(cloud.resources()) == [db_b]  # left alone
    record = evidence_of(proc)
    outcomes = {x["orphan"]["id"]: x["outcome"] for x in record["actions"]}
    assert [outcomes[i]["result"] for i in (db_a, net_a, db_b)] == ["deleted", "deleted", "refused"]
    assert "someone-else" in outcomes[db_b]["reason"]
    # The sweep reached the evidence store too, exactly as recorded in its file.
    with open_store() as store:
        assert [s for s in store.sweeps() if s["sweep_id"] == record["sweep_id"]] == [record]


def test_metrics_count_deleted_outcomes_per_provider(temporal_server, tmp_path, cluster_root):
    now = datetime.now(timezone.utc)
    state = tmp_path / "sim.json"
    sim_drill, pg_drill = unique("ended"), unique("ended")
    SimState(state).plant("drdrill-sim-orphan", kind="database", tags=_tags(sim_drill, now))
    cluster = _cluster_dir(cluster_root / "drdrill-pg-orphan", pg_drill, now)
    recorded(sim_drill, "sim", ("database", "drdrill-sim-orphan"))
    recorded(pg_drill, "postgres", ("cluster", str(cluster)))
    port = metrics.serve(free_port(), addr="127.0.0.1")
    providers = {"sim": SimProvider(state), "postgres": PostgresProvider()}

    def counts() -> dict[tuple[str, str], float]:
        text = scrape(port)
        return {
            (name, p): sample(text, f"drdrill_orphans_{name}_total", provider=p) or 0.0
            for name in ("found", "deleted")
            for p in ("sim", "postgres")
        }

    async def go():
        async with service(temporal_server.address, tmp_path, providers=providers) as svc:
            records = []
            for dry_run in (True, False):
                before = counts()
                records.append(
                    await svc.client.execute_workflow(
                        "OrphanSweepWorkflow",
                        SweepInput(families=["sim", "postgres"], dry_run=dry_run),
                        id=unique("sweep"),
                        task_queue=svc.queue,
                        result_type=SweepRecord,
                    )
                )
                after = counts()
                records.append({k: after[k] - before[k] for k in after})
            return records

    dry, dry_counts, real, real_counts = asyncio.run(go())
    assert [a.outcome.result for a in dry.actions] == ["would_delete", "would_delete"]
    assert dry_counts == {("found", "sim"): 1, ("found", "postgres"): 1, ("deleted", "sim"): 0, ("deleted", "postgres"): 0}
    assert [(a.orphan.provider, a.outcome.result) for a in real.actions] == [("sim", "deleted"), ("postgres", "deleted")]
    assert real_counts == {("found", "sim"): 1, ("found", "postgres"): 1, ("deleted", "sim"): 1, ("deleted", "postgres"): 1}
    assert SimState(state).resources() == {} and not cluster.exists()


def test_postgres_refuses_a_cluster_whose_tag_changed_and_one_outside_its_root(tmp_path, cluster_root):
    now = datetime.now(timezone.utc)
    drill = unique("ended")
    provider = PostgresProvider()
    mine = _cluster_dir(cluster_root / f"drdrill-{drill}", drill, now)
    (orphan,) = provider.list_orphans(now, set())
    assert (orphan.id, orphan.drill_id) == (str(mine), drill)

    # Between the listing and the deletion, the directory's tag file names another drill.
    (mine / "drdrill.json").write_text(json.dumps(_tags("another-drill", now)))
    changed = provider.delete_orphan(orphan)
    assert (changed.result, changed.reason) == ("refused", f"tag {TAG_DRILL_ID} is 'another-drill', expected '{drill}'")
    assert mine.exists()

    # A directory outside this worker's cluster root is never ours, whatever its tags say.
    outside = _cluster_dir(tmp_path / f"drdrill-{drill}", drill, now)
    forged = provider.delete_orphan(orphan.model_copy(update={"id": str(outside)}))
    assert (forged.result, forged.reason) == ("refused", f"outside this worker's cluster root {cluster_root}")
    # Nor is a symlink in the root leading there: not listed, so no teardown follows it.
    link = cluster_root / f"drdrill-{drill}-link"
    link.symlink_to(outside)
    try:
        assert [o.id for o in provider.list_orphans(now, set())] == [str(mine)]
        ctx = DrillContext(drill_id=drill, drill_name="x", declared=now, expires_at=now + timedelta(hours=1))
        env = Environment(family="postgres", drill_id=drill, id=str(outside), details={"path": str(outside)})
        report = provider.teardown(ctx, env)
    finally:
        link.unlink()
    assert report.refused == [f"cluster {outside} (outside this worker's cluster root {cluster_root})"]
    assert report.deleted == [] and outside.exists() and mine.exists()


def test_a_failing_deletion_is_a_failed_outcome_and_a_dry_run_deletes_nothing(tmp_path):
    now = datetime.now(timezone.utc)
    state = tmp_path / "sim.json"
    drill = unique("ended")
    SimState(state).plant("drdrill-orphan", kind="database", tags=_tags(drill, now))
    recorded(drill, "sim", ("database", "drdrill-orphan"))
    provider = SimProvider(state)

    planned = sweep({"sim": provider}, now, dry_run=True, created=created("sim"))
    assert [(o.id, outcome.result) for o, outcome in planned] == [("drdrill-orphan", "would_delete")]
    assert failed(planned) == [] and "drdrill-orphan" in SimState(state).resources()

    # The cloud breaks after the listing: the deletion fails, and says why.
    state.write_text("{ not json")
    outcome = delete_one(provider, planned[0][0])
    assert outcome.result == "failed" and f"the sim state file {state} cannot be read" in outcome.reason
    assert failed([(planned[0][0], outcome)]) == [(planned[0][0], outcome)]


def test_a_teardown_that_leaves_something_alone_says_what_and_why(temporal_server, tmp_path):
    state = tmp_path / "sim.json"
    cloud = SimState(state)

    async def during(handle):
        await wait_for_phase(handle, "hold")
        (network,) = [r["id"] for r in cloud.tagged(handle.id) if r["kind"] == "network"]
        # Someone puts a production database into the held drill's network.
        cloud.plant("prod-db", kind="database", tags={"owner": "payments"}, env=network)
        await handle.signal("release")

    result, handle = run_sim(temporal_server.address, sim_yaml(extra="teardown: {hold: 10m}"), state, tmp_path, during=during)
    network = f"drdrill-{handle.id}".lower()
    (finding,) = [f for f in result.findings if f.code == "TEARDOWN_REFUSED_UNTAGGED"]
    assert finding.message == (
        "left alone, not provably this drill's: "
        f"database prod-db (it lacks {TAG_DRILL_ID}={handle.id}); "
        f"network {network} (kept: it holds resources without this drill's tag)"
    )
    # The drill's database went; the production database and the network holding it stayed.
    assert sorted(cloud.resources()) == sorted(["prod-db", network])
