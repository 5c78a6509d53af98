"""What replaying a drill's history costs a worker (issue 24: DrillWorkflow restructured).

A worker that picks up a running drill (after a crash, or when its cache evicted the drill) replays
its history first. This replays every history in tests/fixtures/histories/ (recorded by
tests/record_histories.py) `--rounds` times with the worker's own sandbox and data converter, and
prints the median milliseconds per history. Run from a checkout's root:

    .venv/bin/python bench/replay_cost.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))

from temporalio.client import WorkflowHistory  # noqa: E402
from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402
from temporalio.worker import Replayer  # noqa: E402
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions  # noqa: E402

from worker import workflows  # noqa: E402


async def main(histories: Path, rounds: int) -> None:
    runner = SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules("pydantic", "yaml", "drdrill", "activities"))
    replayer = Replayer(workflows=workflows(), data_converter=pydantic_data_converter, workflow_runner=runner)
    for path in sorted(histories.glob("*.json")):
        history = WorkflowHistory.from_json(path.stem, path.read_text())
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
            times.append((time.perf_counter() - started) * 1000)
            assert result.replay_failure is None, result.replay_failure
        print(f"{path.stem:20} {len(history.events):4} events  {statistics.median(times):7.1f} ms (median of {rounds})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--histories", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "histories")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.histories, args.rounds))
