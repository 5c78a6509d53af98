"""The drdrill worker: every workflow and activity, against the Temporal named by the environment.

    TEMPORAL_ADDRESS     host:port of the Temporal frontend (default localhost:7233)
    TEMPORAL_NAMESPACE   namespace (default "default")
    DRDRILL_TASK_QUEUE   task queue (default "drdrill"; one per provider family lets cloud work run
                         only where its credentials are)
    DRDRILL_STATE_DIR    where evidence files and local clusters live
    DRDRILL_LIMITS       drills at once per provider account/region, JSON ('{"postgres": 1, "aws:us-east-1": 4}')
    DRDRILL_RESTORE_LIMITS  restores at once per key, JSON (same keys)
    DRDRILL_METRICS_PORT drdrill's Prometheus metrics on this port (/metrics); unset: not served
    DRDRILL_SDK_METRICS_PORT  the Temporal SDK's Prometheus metrics (default DRDRILL_METRICS_PORT + 1)
    DRDRILL_LOG_FORMAT   text (default) or json; every line carries drill_id and run_id when known
    DRDRILL_LOG_LEVEL    INFO (default), DEBUG, WARNING …
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from drdrill.evidence_store import embedded_server
from drdrill.temporal import connect, running_worker, task_queue


async def main() -> None:
    from drdrill import logs, metrics

    logs.setup()
    port = metrics.serve()
    runtime = metrics.sdk_runtime()
    if port:
        logging.getLogger("drdrill.worker").info("drdrill metrics on :%d/metrics; Temporal SDK metrics per DRDRILL_SDK_METRICS_PORT (default the next port)", port)
    client = await connect(runtime=runtime)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The embedded evidence PostgreSQL (without DRDRILL_EVIDENCE_DSN) runs while the worker lives
    # and is stopped when it exits.
    with embedded_server():
        async with running_worker(client, max_concurrent_activities=int(os.environ.get("DRDRILL_MAX_ACTIVITIES", "100"))):
            logging.getLogger("drdrill.worker").info("worker polling task queue %s", task_queue())
            await stop.wait()
    logging.getLogger("drdrill.worker").info("worker stopped cleanly")


if __name__ == "__main__":
    asyncio.run(main())
