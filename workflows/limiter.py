"""Concurrency limits: one long-lived limiter workflow per (task queue, kind, key), and the
requester side used by DrillWorkflow.

    DrillWorkflow ── request_permit activity (signal-with-start "request") ──► DrillLimiterWorkflow
    DrillWorkflow ◄──────────── signal "permit_granted"(request id) ────────── (FIFO, at most `limit`)
    DrillWorkflow ─────────────── signal "release"(request id) ──────────────► (after teardown)

The limiter continues-as-new to bound its history, and frees the permits of holders that ended
without releasing (a terminated drill) whenever someone is waiting.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Optional

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.ops import OpsActivities
    from drdrill.providers.activity_io import PermitAnswer, RequestPermitInput
    from drdrill.core.operations import (
        LimiterRequest,
        LimiterState,
        PermitRequest,
        permit_key,
        permit_keys,
    )

from workflows import quick

STALE_CHECK = timedelta(seconds=30)
GRANT_GRACE = timedelta(seconds=1)
HISTORY_LIMIT = 2000
QUICK = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30), maximum_attempts=0)


@workflow.defn(name="DrillLimiterWorkflow")
class LimiterWorkflow:
    @workflow.init
    def __init__(self, state: LimiterState) -> None:
        self._state = state
        self._dirty = True
        self._regrant: set[str] = set()

    @workflow.signal
    def request(self, req: LimiterRequest) -> None:
        self._state.limit = max(1, req.limit)
        rid = req.request.request_id
        if any(h.request_id == rid for h in self._state.holders):
            self._regrant.add(rid)  # a retried request: answer again
        elif not any(q.request_id == rid for q in self._state.queue):
            r = req.request
            if r.requested_at is None:
                r.requested_at = workflow.now()
            self._state.queue.append(r)
        self._dirty = True

    @workflow.signal
    def release(self, request_id: str) -> None:
        self._state.holders = [h for h in self._state.holders if h.request_id != request_id]
        self._state.queue = [q for q in self._state.queue if q.request_id != request_id]
        self._dirty = True

    @workflow.query
    def state(self) -> LimiterState:
        return self._state

    @workflow.run
    async def run(self, state: LimiterState) -> None:
        s = self._state
        while True:
            granted: list[PermitRequest] = []
            while s.queue and len(s.holders) < s.limit:
                r = s.queue.pop(0)
                s.holders.append(r)
                granted.append(r)
            regrant, self._regrant = self._regrant, set()
            granted += [h for h in s.holders if h.request_id in regrant and h not in granted]
            for r in granted:
                await self._grant(r)
            self._dirty = False
            if workflow.info().is_continue_as_new_suggested() or workflow.info().get_current_history_length() > HISTORY_LIMIT:
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(s)
            waiting = bool(s.queue) and len(s.holders) >= s.limit
            try:
                await workflow.wait_condition(lambda: self._dirty, timeout=STALE_CHECK if waiting else None)
            except asyncio.TimeoutError:
                await self._free_stale()

    async def _grant(self, r: PermitRequest) -> None:
        try:
            # By name: the requester is a DrillWorkflow (workflows/drill.py), which imports this module.
            await workflow.get_external_workflow_handle(r.workflow_id).signal("permit_granted", r.request_id)
        except Exception:  # noqa: BLE001 - the requester is gone: its permit is free again
            workflow.logger.warning("requester %s is gone; freeing its permit", r.workflow_id)
            self.release(r.request_id)

    async def _free_stale(self) -> None:
        ids = sorted({h.workflow_id for h in self._state.holders})
        if not ids:
            return
        try:
            closed = await workflow.execute_activity_method(
                OpsActivities.closed_workflows, ids, start_to_close_timeout=timedelta(minutes=1), retry_policy=QUICK
            )
        except ActivityError:
            return
        for h in list(self._state.holders):
            if h.workflow_id in closed:
                workflow.logger.warning("holder %s ended without releasing; freeing its permit", h.workflow_id)
                self.release(h.request_id)


class Permits:
    """The requester side, owned by a DrillWorkflow (its `permit_granted` signal feeds `granted`)."""

    def __init__(self) -> None:
        self.granted: set[str] = set()
        self.held: dict[str, str] = {}  # request id -> limiter workflow id

    def on_granted(self, request_id: str) -> None:
        self.granted.add(request_id)

    async def acquire(self, kind: str, key: str, label: str, suffix: str = "", on_wait=None) -> Optional[int]:
        """Wait for a permit; returns the limit (None: no limit configured, nothing waited for).

        A broken limits configuration is logged and the drill runs unlimited: a typo in
        DRDRILL_LIMITS must not stop every drill (the worker log says so on each drill)."""
        info = workflow.info()
        rid = f"{info.workflow_id}/{info.run_id}/{kind}/{key}" + (f"/{suffix}" if suffix else "")
        try:
            answer = await self._request(kind, key, label, rid)
        except ActivityError as exc:
            if is_cancelled_exception(exc):  # the drill was cancelled while asking: it ends here, as when queued
                raise asyncio.CancelledError("cancelled while asking for a permit") from exc
            workflow.logger.error("concurrency limit for %s %s not applied: %s", kind, key, exc.cause or exc)
            return None
        if answer.limit is None:
            return None
        self.held[rid] = answer.limiter_id
        try:
            try:
                # A free permit arrives within moments; only a drill still waiting after that is "queued".
                await workflow.wait_condition(lambda: rid in self.granted, timeout=GRANT_GRACE.total_seconds())
            except asyncio.TimeoutError:
                if on_wait is not None:
                    on_wait()
                await workflow.wait_condition(lambda: rid in self.granted)
        except BaseException:
            await self.release(rid)  # cancelled while queued: leave the queue
            raise
        return answer.limit

    async def _request(self, kind: str, key: str, label: str, rid: str) -> PermitAnswer:
        info = workflow.info()
        # A local activity (workflows/quick.py): the limits are the worker's configuration.
        return await quick.call(
            OpsActivities.request_permit,
            RequestPermitInput(
                kind=kind,
                key=key,
                task_queue=info.task_queue,
                request=PermitRequest(request_id=rid, workflow_id=info.workflow_id, label=label, requested_at=workflow.now()),
            ),
            timeout=timedelta(minutes=1),
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30), maximum_attempts=10),
        )

    async def release(self, rid: str) -> None:
        limiter_id = self.held.pop(rid, None)
        if not limiter_id:
            return
        try:
            await asyncio.shield(
                asyncio.ensure_future(workflow.get_external_workflow_handle(limiter_id).signal(LimiterWorkflow.release, rid))
            )
        except Exception:  # noqa: BLE001 - the limiter also frees permits of ended drills
            workflow.logger.warning("could not release permit %s", rid)

    async def release_all(self, kind: Optional[str] = None) -> None:
        for rid in list(self.held):
            if kind is None or f"/{kind}/" in rid:
                await self.release(rid)

    async def acquire_drill(self, spec, status) -> Optional[str]:
        """Permits for every (family, account/region) of the drill; shows 'queued' while waiting.

        Returns a description of the wait for the timeline, or None when it did not wait."""
        waited = []
        for key in permit_keys(spec):
            queued: list[bool] = []

            def on_wait() -> None:
                status.phase = "queued"
                queued.append(True)

            limit = await self.acquire("drill", key, spec.name, on_wait=on_wait)
            if limit is not None and queued:
                waited.append(f"{key} (at most {limit} at once)")
        return "permit for " + ", ".join(waited) if waited else None

    async def acquire_restore(self, target, spec, on_wait=None) -> str:
        key = permit_key(target, spec.isolation)
        limit = await self.acquire("restore", key, f"{spec.name}/{target.name}", suffix=target.name, on_wait=on_wait)
        return key if limit is not None else ""

    async def release_restore(self, target, spec) -> None:
        info = workflow.info()
        key = permit_key(target, spec.isolation)
        await self.release(f"{info.workflow_id}/{info.run_id}/restore/{key}/{target.name}")
