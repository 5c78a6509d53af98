"""Readiness polling: the schedule's guarantees, poll_until on a simulated clock, and the prior
that earlier drills' evidence gives.

Every wait here runs on a virtual clock that only poll_until's injected `sleep` advances, so hours
of waiting take milliseconds and the assertions are on simulated times and probe counts.
"""

from __future__ import annotations

import time
import dataclasses
import math
import statistics
from datetime import datetime, timedelta, timezone

import pytest
from temporalio.testing import ActivityEnvironment

from drdrill.evidence.record import write_evidence_file
from drdrill.core.models import DrillResult, RestoredResource, TimelineEvent
from drdrill.providers.base import NotReadyYet, ProviderError, poll_until
from drdrill.providers.readiness import ReadinessSchedule, expected_window, ready_time, reported_ready_at
from drdrill.evidence.history import restore_history


class Resource:
    """A resource that becomes ready `ready_in` seconds after the wait starts, on a virtual clock."""

    def __init__(self, ready_in: float):
        self.now = 0.0
        self.ready_in = ready_in
        self.probes: list[float] = []
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds

    def probe(self) -> dict:
        self.probes.append(self.now)
        if self.now < self.ready_in:
            raise NotReadyYet("still starting")
        return {"noticed": self.now}

    def wait(self, timeout: float | None = None, **kw) -> dict:
        timeout = timeout if timeout is not None else 10 * self.ready_in + 600
        return poll_until(self.probe, timeout=timeout, what="volume vol-1", sleep=self.sleep, clock=self.clock, **kw)

    @property
    def delay(self) -> float:
        return self.probes[-1] - self.ready_in


def fixed_15s_probes(ready_in: float) -> int:
    """Probes of polling every 15 s from the start (0, 15, 30 … until one sees it ready)."""
    return math.ceil(ready_in / 15) + 1


def goal(ready_in: float) -> float:
    return max(5.0, 0.002 * ready_in)


# ------------------------------------------------------------------ with a prior


@pytest.mark.parametrize("expected", [120, 3600, 7200])
def test_a_resource_ready_around_the_expected_finish_is_noticed_within_5s_or_0_2_percent(expected):
    for factor in [0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2]:  # prior = actual × factor
        for seed in range(3):
            res = Resource(expected / factor)
            res.wait(expected=expected, seed=seed)
            assert 0 <= res.delay <= goal(res.ready_in), (expected, factor, seed, res.delay)


@pytest.mark.parametrize("expected", [600, 1800])
def test_where_the_budget_cannot_pay_for_5s_the_delay_stays_near_it(expected):
    """At 10 and 30 minutes a ±20% window needs more probes at 5 s than fixed 15 s polling makes:
    the schedule spreads what the budget allows (documented: about 6 s)."""
    delays = []
    for factor in [0.8 + 0.02 * i for i in range(21)]:
        for seed in range(3):
            res = Resource(expected / factor)
            res.wait(expected=expected, seed=seed)
            delays.append(res.delay)
    assert max(delays) <= 7.0
    assert statistics.median(delays) <= 5.0


def test_a_resource_ready_long_before_its_window_is_noticed_within_twice_its_time():
    for ready_in in [1, 4, 12, 60, 400, 1500]:
        res = Resource(ready_in)
        res.wait(expected=3600, seed=1)
        assert res.probes[-1] <= max(2 * ready_in, ready_in + 5)


def test_a_resource_later_than_its_window_is_still_noticed_within_30s():
    for ready_in in [5000, 6000, 9000]:
        res = Resource(ready_in)
        res.wait(expected=3600, seed=2)
        assert res.delay <= 30


def test_the_window_is_where_a_prior_20_percent_off_puts_the_actual_time():
    lo, hi = expected_window(1000, 200)
    assert lo == pytest.approx(1000 / 1.2) and hi == pytest.approx(1000 / 0.8)
    assert expected_window(0, 30) == (0.0, 30.0)


# ------------------------------------------------------------------ without a prior


def test_without_a_prior_a_quick_resource_is_noticed_within_5s_and_any_within_30s():
    for ready_in in [0.5, 3, 11, 29]:
        res = Resource(ready_in)
        res.wait(seed=0)
        assert res.delay <= 5.0
    for ready_in in [45, 130, 333, 600, 1234, 3600, 7200]:
        res = Resource(ready_in)
        res.wait(seed=0)
        assert res.delay <= 30.0, ready_in


def test_a_resource_ready_at_once_costs_one_probe_and_no_sleep():
    res = Resource(0)
    assert res.wait(expected=600) == {"noticed": 0.0}
    assert res.probes == [0.0] and res.sleeps == []


# ------------------------------------------------------------------ the budget


@pytest.mark.parametrize(
    "prior",
    [None, 1.0, 0.8, 1.2, 1 / 3, 3.0, "early window"],
    ids=["no prior", "exact", "prior 20% low", "prior 20% high", "prior 3x too short", "prior 3x too long", "window before 10 min"],
)
def test_a_wait_of_10_minutes_or_more_costs_no_more_probes_than_fixed_15s_polling(prior):
    for ready_in in range(600, 7201, 97):
        for seed in range(2):
            res = Resource(ready_in)
            if prior is None:
                res.wait(seed=seed)
            elif prior == "early window":  # everything spent on a window just before 10 minutes
                res.wait(expected=450, spread=90, seed=seed)
            else:
                res.wait(expected=ready_in * prior, seed=seed)
            assert len(res.probes) <= fixed_15s_probes(ready_in), (prior, ready_in, seed, len(res.probes))


def test_the_budget_never_holds_back_a_fast_poller_in_its_first_minutes():
    """Tests poll every 50 ms: hundreds of probes early must not stall the wait."""
    res = Resource(20)
    res.wait(initial=0.01, maximum=0.05)
    assert res.delay <= 3.0  # 15% of the wait, not a wait for the 10-minute mark
    assert len(res.probes) > 40


# ------------------------------------------------------------------ the deadline, heartbeats, seeds


@pytest.mark.parametrize("expected", [None, 100, 5000])
def test_a_resource_never_ready_is_probed_at_the_deadline_and_never_slept_past_it(expected):
    res = Resource(math.inf)
    with pytest.raises(ProviderError) as err:
        res.wait(timeout=1800, expected=expected, seed=3)
    assert err.value.code == "READY_TIMEOUT"
    assert "volume vol-1 was not ready after 1800s" in err.value.message
    assert res.probes[-1] == pytest.approx(1800)
    assert res.now == pytest.approx(1800)
    assert all(p < 1800 for p in res.probes[:-1])


def test_every_probe_heartbeats_and_a_long_sleep_heartbeats_every_third_of_the_timeout():
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(seconds=30))
    res = Resource(4000)
    beats: list[tuple[float, dict]] = []
    env.on_heartbeat = lambda *details: beats.append((res.now, details[0]))
    env.run(res.wait, expected=3600, seed=4)
    after_probe = [d for _, d in beats if "sleeping" not in d]
    assert [d["polls"] for d in after_probe] == list(range(1, len(res.probes)))
    assert all(d["waiting_for"] == "volume vol-1" and d["last"] == "still starting" for d in after_probe)
    times = [0.0] + [t for t, _ in beats] + [res.now]
    assert max(b - a for a, b in zip(times, times[1:])) <= 10.0 + 1e-9
    assert max(res.sleeps) <= 10.0 + 1e-9


def test_a_seeded_schedule_is_reproducible():
    runs = []
    for seed in (7, 7, 8):
        res = Resource(2500)
        res.wait(expected=2400, seed=seed)
        runs.append(res.probes)
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_the_schedule_alone_says_how_long_to_sleep():
    schedule = ReadinessSchedule(expected=1000, deadline=1200, seed=0)
    assert schedule.next_sleep(0, 1) <= 5.0
    lo, _ = schedule.window
    assert 500 + schedule.next_sleep(500, 8) == pytest.approx(lo)  # the sparse phase lands on the window
    assert schedule.next_sleep(1190, 150) <= 10  # never past the deadline
    assert schedule.next_sleep(1200, 151) == 0


def test_old_style_callers_keep_working():
    res = Resource(3)
    value = poll_until(res.probe, timeout=60, what="disk d", initial=0.05, maximum=0.5, sleep=res.sleep, clock=res.clock)
    assert value == {"noticed": res.probes[-1]}
    assert res.delay <= 0.5


# ------------------------------------------------------------------ the provider's own ready time


def test_the_providers_own_ready_time_is_used_when_plausible():
    noticed = datetime.now(timezone.utc)
    started = noticed - timedelta(minutes=20)
    said = noticed - timedelta(seconds=40)
    resource = RestoredResource(target="shop", provider="aws", id="vol-1", details={"ready_at": said.isoformat()})
    assert reported_ready_at(resource) == said
    assert reported_ready_at({"ready_at": said.isoformat().replace("+00:00", "Z")}) == said
    assert ready_time(reported_ready_at(resource), noticed=noticed, not_before=started) == said
    assert ready_time(noticed + timedelta(seconds=5), noticed=noticed, not_before=started) == noticed  # clock skew
    assert ready_time(started - timedelta(seconds=1), noticed=noticed, not_before=started) == noticed
    assert ready_time(None, noticed=noticed) == noticed
    assert reported_ready_at(RestoredResource(target="shop", provider="aws", id="v", details={"ready_at": "2030-01-01T00:00:00"})) is None  # no zone


# ------------------------------------------------------------------ the prior from earlier drills


def _run(state_dir, name, target, *, start, seconds, provider="postgres", ready_at=None, ready=True, drill_id=None):
    """Write one run's evidence the way record_evidence does: restore starts at `start`, the drill
    notices `target` ready `seconds` later."""
    noticed = start + timedelta(seconds=seconds)
    timeline = [
        TimelineEvent(phase="declared", started=start - timedelta(seconds=30), ended=start - timedelta(seconds=30)),
        TimelineEvent(phase="isolate", started=start - timedelta(seconds=20), ended=start - timedelta(seconds=5)),
    ]
    restored = []
    if ready:
        timeline.append(TimelineEvent(phase="ready", started=noticed, ended=noticed, target=target, detail="ready"))
        details = {"ready_at": ready_at.isoformat()} if ready_at else {}
        restored.append(RestoredResource(target=target, provider=provider, id=f"{target}-1", details=details, ready=True))
    else:
        timeline.append(TimelineEvent(phase="restore", started=noticed, ended=noticed, target=target, outcome="FAILED"))
    timeline.append(TimelineEvent(phase="restore", started=start, ended=noticed + timedelta(seconds=1), outcome="PASSED" if ready else "FAILED"))
    timeline.append(TimelineEvent(phase="teardown", started=noticed + timedelta(seconds=9), ended=noticed + timedelta(seconds=10)))
    result = DrillResult(
        drill_id=drill_id or f"{name}-{start.strftime('%Y%m%d%H%M%S')}-{target}",
        name=name,
        verdict="PASSED" if ready else "ERROR",
        declared=start - timedelta(seconds=30),
        ended=noticed + timedelta(seconds=10),
        restored=restored,
        timeline=timeline,
    )
    write_evidence_file(state_dir, result)


def test_the_prior_is_the_median_of_earlier_restores_of_the_same_drill_and_target(tmp_path):
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=30)
    for i, seconds in enumerate([600, 660, 780, 540]):
        _run(tmp_path, "shop-nightly", "shop", start=t0 + timedelta(days=i), seconds=seconds)
    _run(tmp_path, "shop-nightly", "orders", start=t0 + timedelta(days=1, hours=1), seconds=60)  # another target
    _run(tmp_path, "shop-weekly", "shop", start=t0 + timedelta(days=2, hours=1), seconds=3000)  # another drill
    _run(tmp_path, "shop-nightly", "shop", start=t0 + timedelta(days=5), seconds=9999, ready=False)  # never ready
    _run(tmp_path, "shop-nightly", "shop", start=t0 + timedelta(days=6), seconds=2, provider="sim")  # a --simulate run
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "evidence.json").write_text("{not json")

    history = restore_history(tmp_path, "shop-nightly", "shop", provider="postgres")
    assert history is not None
    assert history.durations == (600, 660, 780, 540)
    assert history.typical == 630
    assert history.spread == pytest.approx(630 * 150 / 780)  # 630 is 19% short of the 780 s run
    assert history.runs == 4
    lo, hi = expected_window(history.typical, history.spread)
    assert lo <= 540 and hi >= 780  # every earlier run is inside the window poll_until polls densely
    assert restore_history(tmp_path, "shop-nightly", "orders").typical == 60
    assert restore_history(tmp_path, "shop-nightly", "shop").runs == 5  # without a provider, the dry run counts
    assert restore_history(tmp_path, "shop-nightly", "billing") is None
    assert restore_history(tmp_path / "nowhere", "shop-nightly", "shop") is None


def test_the_prior_uses_the_providers_ready_time_and_only_recent_runs(tmp_path):
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=60)
    for i in range(12):  # the two oldest took far longer; only the latest 10 count
        seconds = 5000 if i < 2 else 1000 + 10 * i
        start = t0 + timedelta(days=i)
        said = start + timedelta(seconds=seconds - 80)  # the provider says 80 s before the drill noticed
        _run(tmp_path, "vm-restore", "app", start=start, seconds=seconds, provider="aws", ready_at=said)
    history = restore_history(tmp_path, "vm-restore", "app", provider="aws")
    assert history.runs == 10
    assert history.durations == tuple(1000 + 10 * i - 80 for i in range(2, 12))
    assert history.typical == statistics.median(history.durations)
    assert history.spread == pytest.approx(0.1 * history.typical)  # runs within 5% of each other: the 10% floor


def test_a_single_earlier_run_gives_a_prior_with_a_20_percent_spread(tmp_path):
    _run(tmp_path, "db", "main", start=datetime.now(timezone.utc).replace(microsecond=0), seconds=300)
    history = restore_history(tmp_path, "db", "main")
    assert (history.typical, history.spread, history.runs) == (300, 60, 1)


def test_an_evidence_file_written_again_is_read_again(tmp_path):
    """restore_history keeps what each evidence file held while the file stays as it was: a run
    recorded again under the same drill id (a new file) counts with its new content."""
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1)
    _run(tmp_path, "db", "main", start=start, seconds=300, drill_id="db-1")
    assert restore_history(tmp_path, "db", "main").durations == (300,)
    assert restore_history(tmp_path, "db", "main").durations == (300,)  # the second time from what was kept
    _run(tmp_path, "db", "main", start=start, seconds=450, drill_id="db-1")
    assert restore_history(tmp_path, "db", "main").durations == (450,)
    (tmp_path / "runs" / "db-1" / "evidence.json").write_text("{not json")
    assert restore_history(tmp_path, "db", "main") is None


def test_an_expected_ready_time_set_around_a_wait_reaches_every_poll_within_it():
    """The activity sets the expectation once; each poll inside the provider's wait_ready gets the
    time left until that moment, and none outside the block does."""
    from drdrill.providers.readiness import expected_from_now, expecting_ready_in

    assert expected_from_now(time.monotonic()) == (None, None)
    with expecting_ready_in(600.0, spread=60.0):
        start = time.monotonic()
        left, spread = expected_from_now(start)
        assert 599.0 <= left <= 600.0 and spread == 60.0
        assert expected_from_now(start + 700.0)[0] == 0.0  # later than expected: due now
    assert expected_from_now(time.monotonic()) == (None, None)
    with expecting_ready_in(None):
        assert expected_from_now(time.monotonic()) == (None, None)
