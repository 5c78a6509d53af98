"""A worker replica for `bench.scale_out --state memory`: `python worker.py` exactly, except that
the sim's cloud lives in this process's memory (bench/simdrill.py MemoryState) and, so that every
activity of a drill sees that memory, the sim is pinned to the replica that claimed the drill, as
postgres drills are (worker.host_queue). Measures the orchestration without the sim's one-lock
state file.

    DRDRILL_HOST_ID=replica0 TEMPORAL_ADDRESS=... DRDRILL_TASK_QUEUE=... python -m bench.scale_worker
"""

from __future__ import annotations

import asyncio
import tempfile

import activities.drill
import worker
from bench.simdrill import sim_provider


def main() -> None:
    # The families whose drills stay on the replica that claimed them (a frozenset the drill format
    # computes): the sim joins them here, in this benchmark's worker only.
    activities.drill.HOST_BOUND = activities.drill.HOST_BOUND | {"sim"}
    sim = sim_provider("memory", tempfile.gettempdir() + "/drb-scale-sim.json")
    worker.exit_without_finalizing(lambda: asyncio.run(worker.main(providers={"sim": sim})))


if __name__ == "__main__":
    main()
