"""The sweep deletes only what drdrill created (issue 22), as a user runs it: the real `drdrill sweep`
in a subprocess, against AWS on moto_server, with a real worker on the session's Temporal dev server.

A tag is not proof: a production volume given `drdrill:drill-id` by hand (here: the very id of a
drill that ended) is refused, "not created by drdrill", while what that drill created and recorded
in the evidence store goes. Without the evidence store, nothing is deleted, and the sweep says why.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from temporalio.client import WorkflowExecutionStatus

from app.temporal import free_port
from drdrill.core.models import TAG_DRILL_ID
from drdrill.providers.sweep import NOT_CREATED
from tests.conftest import wait_for_phase
from tests.moto_server import aws, moto_endpoint  # noqa: F401
from tests.ops_helpers import created, service, spec_of, unique, wait_until
from tests.test_aws_drill import CHECK, drill
from tests.test_sweep_cli import evidence_of, sweep_cli, tagged_vpc


def test_a_production_volume_tagged_by_hand_is_refused_and_what_the_drill_created_is_deleted(temporal_server, tmp_path, aws):
    production, _ = aws.volume_with_snapshots(n=1)
    spec = spec_of(
        drill(
            unique("killed"),
            f"  - {{name: data, provider: aws.ebs, source: {{volume_id: {production}}}}}",
            f"  - {{type: command, name: volume-restored, target: data, argv: {CHECK}}}",
            "teardown: {hold: 1h}",
        )
    )

    async def go():
        async with service(temporal_server.address, tmp_path, providers={"aws": aws.provider}) as svc:
            handle = await svc.start(spec)
            await wait_for_phase(handle, "hold")
            made = set(aws.tagged())
            await handle.terminate("killed by the test: no teardown runs")

            async def ended():
                running = [w async for w in svc.client.list_workflows(f"WorkflowId = '{handle.id}' AND ExecutionStatus = 'Running'")]
                return (await handle.describe()).status == WorkflowExecutionStatus.TERMINATED and not running

            await wait_until(ended, "the kill to be visible")
            # Someone with ec2:CreateTags gives the production volume the ended drill's tag.
            aws.ec2.create_tags(Resources=[production], Tags=[{"Key": TAG_DRILL_ID, "Value": handle.id}])
            return handle.id, made, await asyncio.to_thread(sweep_cli, svc.env(), "--provider", "aws")

    drill_id, made, proc = asyncio.run(go())
    # The drill recorded everything it made, as it made it.
    made_ids = {m.split()[1] for m in made}
    assert made_ids and made_ids <= {rid for _, rid in created("aws")["aws"]}

    # Refused, so the sweep exits 4; the production volume is still there, and says why.
    assert proc.returncode == 4, proc.stdout + proc.stderr
    actions = {a["orphan"]["id"]: a["outcome"] for a in evidence_of(proc)["actions"]}
    assert actions[production]["result"] == "refused"
    assert actions[production]["reason"] == f"{NOT_CREATED}: no drill recorded creating volume {production}, whatever its tags say"
    (row,) = [line for line in proc.stdout.splitlines() if production in line]
    assert row.split()[:5] == ["aws", "volume", production, drill_id, "refused"] and NOT_CREATED in row
    assert aws.ec2.describe_volumes(VolumeIds=[production])["Volumes"]
    # Everything the killed drill created (and recorded) went.
    assert {i: o["result"] for i, o in actions.items() if i != production} == {i: "deleted" for i in made_ids}
    assert aws.tagged() == [f"volume {production}"]
    aws.ec2.delete_tags(Resources=[production], Tags=[{"Key": TAG_DRILL_ID}])  # its owner takes the tag back


def test_without_the_evidence_store_the_sweep_deletes_nothing_and_says_why(tmp_path, aws):
    now = datetime.now(timezone.utc)
    expired = tagged_vpc(aws, "10.9.0.0/16", unique("expired"), now - timedelta(hours=1))
    unreachable = f"host=127.0.0.1 port={free_port()} user=postgres dbname=none connect_timeout=2"
    env = {"TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}", "DRDRILL_STATE_DIR": str(tmp_path / "state"), "DRDRILL_EVIDENCE_DSN": unreachable}

    proc = sweep_cli(env, "--provider", "aws")

    assert proc.returncode == 4, proc.stdout + proc.stderr
    (action,) = evidence_of(proc)["actions"]
    assert (action["orphan"]["id"], action["outcome"]["result"]) == (expired, "refused")
    assert action["outcome"]["reason"].startswith("nothing is deleted without drdrill's record of what it created, which could not be read")
    assert aws.ec2.describe_vpcs(VpcIds=[expired])["Vpcs"]
    aws.ec2.delete_vpc(VpcId=expired)  # what the next sweep, with its store, does; the fixture checks for leftovers
