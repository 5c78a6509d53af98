"""Hold for inspection: the environment stays up after validation until released, extended (never
past teardown.max_hold) or expired; every way out tears down. Driven through the CLI."""

from __future__ import annotations

import asyncio
from datetime import timedelta


from drdrill.core.models import DrillStatus
from tests.conftest import wait_for_phase
from tests.ops_helpers import pg_drill, service, spec_of, unique
from tests.pg_fixtures import clusters_left, cluster_root, shop_dsn, shop_repo  # noqa: F401


def test_hold_keeps_the_restore_until_released_from_the_cli(temporal_server, tmp_path, shop_repo, cluster_root):
    spec = spec_of(pg_drill(shop_repo, unique("hold"), extra="teardown: {hold: 2h, max_hold: 4h}"))

    async def go():
        async with service(temporal_server.address, tmp_path) as svc:
            handle = await svc.start(spec)
            held = await wait_for_phase(handle, "hold")
            assert held.hold_until is not None
            # The restored database is there to inspect while the drill holds.
            assert clusters_left(cluster_root)
            out = await svc.cli("status", handle.id)
            assert "phase hold" in out.output
            out = await svc.cli("release", handle.id)
            assert out.exit_code == 0 and "released" in out.output
            return await svc.result(handle)

    result = asyncio.run(go())
    assert result.verdict == "PASSED", result.findings
    hold = next(e for e in result.timeline if e.phase == "hold")
    assert "released" in hold.detail
    assert result.teardown[0].deleted and clusters_left(cluster_root) == []


def test_unreleased_hold_tears_down_at_its_bound_even_when_extended(temporal_server, tmp_path, shop_repo, cluster_root):
    spec = spec_of(pg_drill(shop_repo, unique("bound"), extra="teardown: {hold: 2s, max_hold: 4s}"))

    async def go():
        async with service(temporal_server.address, tmp_path) as svc:
            handle = await svc.start(spec)
            held = await wait_for_phase(handle, "hold")
            # Ask for an hour more: the hold is capped at max_hold after the hold began.
            out = await svc.cli("extend", handle.id, "1h")
            assert out.exit_code == 0, out.output
            st: DrillStatus = await handle.query("status", result_type=DrillStatus)
            hold_started = held.hold_until - timedelta(seconds=2)
            assert st.hold_until == hold_started + timedelta(seconds=4)
            assert f"held until {st.hold_until:%Y-%m-%d %H:%M:%S}" in out.output
            # Nobody releases it.
            return await svc.result(handle)

    result = asyncio.run(go())
    hold = next(e for e in result.timeline if e.phase == "hold")
    assert "hold expired" in hold.detail
    assert hold.ended >= hold.started + timedelta(seconds=4)  # held to the bound, not to the hour asked
    assert result.verdict == "PASSED"
    assert result.teardown[0].deleted and clusters_left(cluster_root) == []
