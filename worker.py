"""The drdrill worker: every workflow and activity, against the Temporal named by the environment.

    TEMPORAL_ADDRESS     host:port of the Temporal frontend (default localhost:7233)
    TEMPORAL_NAMESPACE   namespace (default "default")
    DRDRILL_TASK_QUEUE   task queue (default "drdrill"; one per provider family lets cloud work run
                         only where its credentials are)
    DRDRILL_STATE_DIR    where evidence files and local clusters live
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from drdrill.temporal import connect, running_worker, task_queue


async def main() -> None:
    logging.basicConfig(level=os.environ.get("DRDRILL_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    client = await connect()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_worker(client, max_concurrent_activities=int(os.environ.get("DRDRILL_MAX_ACTIVITIES", "100"))):
        logging.getLogger("drdrill.worker").info("worker polling task queue %s", task_queue())
        await stop.wait()
    logging.getLogger("drdrill.worker").info("worker stopped cleanly")


if __name__ == "__main__":
    asyncio.run(main())
