"""What the embedded Temporal's guard costs (docs/security.md): the dev server started on the host's
loopback (public, as before) or in its own namespace behind its gate socket (private, what drdrill's
commands now use), interleaved run by run. Per run: seconds until the server answers its health
check, and the median latency of sequential DescribeNamespace calls (each a round trip through the
gate, or straight to the frontend).

    python -m bench.embedded_gate [--runs 5] [--calls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest

from app.temporal import DevServer
from bench.common import load, summary, time_limit, write_result
from worker import connect


async def one(private: bool, calls: int, work: Path) -> dict:
    t0 = time.perf_counter()
    server = DevServer(log_path=str(work / "temporal.log"), private_dir=work / "temporal" if private else None).start()
    started = time.perf_counter() - t0
    try:
        client = await connect(server.address, proxy=server.proxy)
        request = DescribeNamespaceRequest(namespace="default")
        await client.workflow_service.describe_namespace(request)  # warm the connection
        latencies = []
        for _ in range(calls):
            t = time.perf_counter()
            await client.workflow_service.describe_namespace(request)
            latencies.append(time.perf_counter() - t)
    finally:
        server.stop()
    return {"start_s": started, "call_ms": statistics.median(latencies) * 1000, "load": load()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    time_limit(110)
    runs: dict[str, list[dict]] = {"public": [], "private": []}
    for _ in range(args.runs):
        for kind in ("public", "private"):  # interleaved: background load falls on both alike
            work = Path(tempfile.mkdtemp(prefix="drdrill-bench-gate-"))
            try:
                runs[kind].append(asyncio.run(one(kind == "private", args.calls, work)))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    result = {
        kind: {"start_s": summary(r["start_s"] for r in rs), "call_ms": summary(r["call_ms"] for r in rs), "loads": [r["load"] for r in rs]}
        for kind, rs in runs.items()
    }
    path = write_result("embedded_gate", {"calls_per_run": args.calls, **result})
    for kind in runs:
        print(f"{kind:8} start {result[kind]['start_s']['median']:.2f} s   DescribeNamespace {result[kind]['call_ms']['median']:.2f} ms (median)")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
