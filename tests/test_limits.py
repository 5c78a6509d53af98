"""Concurrency limits: with DRDRILL_LIMITS '{"postgres": 1}', a second drill waits (shown as
queued) until the first has torn down, then runs; order is read from the timelines."""

from __future__ import annotations

import asyncio

from tests.conftest import wait_for_phase
from tests.ops_helpers import pg_drill, phase, service, spec_of, unique, wait_until
from tests.pg_fixtures import clusters_left, cluster_root, shop_dsn, shop_repo  # noqa: F401


def _event(result, name):
    return next(e for e in result.timeline if e.phase == name)


def test_with_a_limit_of_one_two_drills_run_one_after_the_other(temporal_server, tmp_path, shop_repo, cluster_root, monkeypatch):
    monkeypatch.setenv("DRDRILL_LIMITS", '{"postgres": 1}')
    first_spec = spec_of(pg_drill(shop_repo, unique("first"), extra="teardown: {hold: 1h}"))
    second_spec = spec_of(pg_drill(shop_repo, unique("second")))

    async def go():
        async with service(temporal_server.address, tmp_path) as svc:
            first = await svc.start(first_spec)
            await wait_for_phase(first, "hold")  # holds its permit while held
            second = await svc.start(second_spec)
            await wait_until(lambda: _is(second, "queued"), "the second drill to be queued")
            listing = await svc.cli("list", "--limit", "50")
            row = next(line for line in listing.output.splitlines() if second.id in line)
            assert "queued" in row
            assert await phase(first) == "hold"  # still only one at a time
            await first.signal("release")
            return await svc.result(first), await svc.result(second)

    first, second = asyncio.run(go())
    assert first.verdict == "PASSED" and second.verdict == "PASSED", (first.findings, second.findings)
    # The second drill's disaster was declared only after the first had torn down.
    assert _event(second, "declared").started >= _event(first, "teardown").ended
    queued = _event(second, "queued")
    assert "postgres" in queued.detail and "at most 1" in queued.detail
    assert not any(e.phase == "queued" for e in first.timeline)
    assert clusters_left(cluster_root) == []


async def _is(handle, wanted: str) -> bool:
    return await phase(handle) == wanted


def test_without_limits_drills_do_not_queue(temporal_server, tmp_path, shop_repo, cluster_root, monkeypatch):
    monkeypatch.delenv("DRDRILL_LIMITS", raising=False)
    specs = [spec_of(pg_drill(shop_repo, unique("free"), extra="teardown: {hold: 1h}")) for _ in range(2)]

    async def go():
        async with service(temporal_server.address, tmp_path) as svc:
            handles = [await svc.start(s) for s in specs]
            for h in handles:
                await wait_for_phase(h, "hold")  # both held at once
            for h in handles:
                await h.signal("release")
            return [await svc.result(h) for h in handles]

    results = asyncio.run(go())
    assert [r.verdict for r in results] == ["PASSED", "PASSED"]
    assert all(not any(e.phase == "queued" for e in r.timeline) for r in results)


def test_a_queued_drill_cancelled_from_the_cli_leaves_the_queue(temporal_server, tmp_path, shop_repo, cluster_root, monkeypatch):
    from temporalio.client import WorkflowExecutionStatus

    from drdrill.core.operations import LimiterState, limiter_workflow_id

    monkeypatch.setenv("DRDRILL_LIMITS", '{"postgres": 1}')
    first_spec = spec_of(pg_drill(shop_repo, unique("holder"), extra="teardown: {hold: 1h}"))
    second_spec = spec_of(pg_drill(shop_repo, unique("waiter")))

    async def go():
        async with service(temporal_server.address, tmp_path) as svc:
            first = await svc.start(first_spec)
            await wait_for_phase(first, "hold")
            second = await svc.start(second_spec)
            await wait_until(lambda: _is(second, "queued"), "the second drill to be queued")
            limiter = svc.client.get_workflow_handle(limiter_workflow_id(svc.queue, "drill", "postgres"))
            before = await limiter.query("state", result_type=LimiterState)
            out = await svc.cli("cancel", second.id)
            assert out.exit_code == 0, out.output

            async def cancelled():
                return (await second.describe()).status == WorkflowExecutionStatus.CANCELED

            await wait_until(cancelled, "the queued drill to be cancelled")

            async def left_queue():
                st = await limiter.query("state", result_type=LimiterState)
                return st if not st.queue else None

            after = await wait_until(left_queue, "the limiter to drop the cancelled request")
            await first.signal("release")
            return before, after, await svc.result(first)

    before, after, first = asyncio.run(go())
    assert [r.label for r in before.holders] == [first_spec.name] and [r.label for r in before.queue] == [second_spec.name]
    assert [r.label for r in after.holders] == [first_spec.name] and after.queue == []
    assert first.verdict == "PASSED" and clusters_left(cluster_root) == []
