"""The `wait_for_probe` activity: has the drill's probe started polling its task queue?

A probe (`drdrill probe --task-queue Q`) runs a drill's checks inside its isolated network. Before
sending it any, the workflow asks Temporal, here, who polls Q (DescribeTaskQueue's pollers), until
someone does or the bound passes: the workflow itself never sleeps on it.
"""

from __future__ import annotations

import asyncio
import time

from temporalio import activity
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from drdrill.providers.activity_io import ProbeStatus, WaitForProbeInput


class ProbeActivities:
    """Activities that ask Temporal about probes (async: they need the worker's client)."""

    @activity.defn(name="wait_for_probe")
    async def wait_for_probe(self, inp: WaitForProbeInput) -> ProbeStatus:
        """Return as soon as an activity poller is on `queue`, or `polling=False` after the timeout."""
        client = activity.client()
        request = DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=inp.queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        )
        started = time.monotonic()
        while True:
            response = await client.workflow_service.describe_task_queue(request)
            waited = time.monotonic() - started
            pollers = [p.identity for p in response.pollers]
            if pollers or waited >= inp.timeout_seconds:
                return ProbeStatus(queue=inp.queue, polling=bool(pollers), pollers=pollers, waited_seconds=round(waited, 3))
            activity.heartbeat({"waiting_for_probe": inp.queue, "seconds": round(waited, 1)})
            await asyncio.sleep(min(inp.poll_seconds, max(0.0, inp.timeout_seconds - waited)))
