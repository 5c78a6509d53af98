"""The probe relay's outer half: a gRPC proxy that forwards only the probe's own calls to Temporal.

Everything inside a drill's network namespace (the restored server, a `restore.after` application,
whatever a hostile backup starts there) can reach this relay, so it must not hand out the Temporal
frontend. It decodes each call (temporalio's generated protobufs) and forwards only what an
activity worker polling the drill's probe queue needs:

- GetSystemInfo (the SDK's connection handshake) and DescribeNamespace of the probe's namespace;
- PollActivityTaskQueue, in the probe's namespace, on the drill's probe queue only;
- RespondActivityTaskCompleted / Failed / Canceled and RecordActivityTaskHeartbeat, only for a task
  token this relay handed out from such a poll (a token forged for another activity is refused);
- ShutdownWorker, RecordWorkerHeartbeat for the probe queue's worker (the SDK's clean stop).

Every other method (StartWorkflowExecution, UpdateWorkflowExecution, SignalWorkflowExecution,
polls of any other queue, the by-id responses, the OperatorService …) is refused with
PERMISSION_DENIED and logged. The relay runs outside the namespace, as the worker's uid; its
upstream is the worker's Temporal (`host:port`, or `unix:PATH`, the embedded server's gate).
The postgres provider starts it (by module name: the layers below the activities know no Temporal).

    python -m app.probe_relay --listen unix:PATH --to HOST:PORT|unix:PATH --queue Q --namespace NS
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

import grpc
from google.protobuf.message import DecodeError

from drdrill.core import paths
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    PollActivityTaskQueueRequest,
    PollActivityTaskQueueResponse,
    RecordActivityTaskHeartbeatRequest,
    RecordWorkerHeartbeatRequest,
    RespondActivityTaskCanceledRequest,
    RespondActivityTaskCompletedRequest,
    RespondActivityTaskFailedRequest,
    ShutdownWorkerRequest,
)

SERVICE = "/temporal.api.workflowservice.v1.WorkflowService/"
# How many handed-out task tokens are remembered (a probe runs at most a few dozen checks at once).
MAX_TOKENS = 10_000
# Metadata a proxy must not copy from one call to the next (transport headers, set by grpc itself).
_TRANSPORT = {"user-agent", "content-type", "te", "host"}

log = logging.getLogger("drdrill.probe_relay")


class Refused(Exception):
    """A call the relay does not forward (PERMISSION_DENIED)."""


class ProbeRelay(grpc.GenericRpcHandler):
    """The filter: which calls pass, for one drill's probe queue in one namespace."""

    def __init__(self, upstream: str, queue: str, namespace: str):
        self.upstream = upstream
        self.queue = queue
        self.namespace = namespace
        self.tokens: dict[bytes, None] = {}  # handed out by polls, insertion-ordered (oldest first)
        self.channel: Optional[grpc.aio.Channel] = None
        self.checks: dict[str, Callable[[bytes], Any]] = {
            "GetSystemInfo": lambda raw: None,
            "DescribeNamespace": lambda raw: self._namespace(DescribeNamespaceRequest, raw),
            "PollActivityTaskQueue": self._poll,
            "RespondActivityTaskCompleted": lambda raw: self._token(RespondActivityTaskCompletedRequest, raw),
            "RespondActivityTaskFailed": lambda raw: self._token(RespondActivityTaskFailedRequest, raw),
            "RespondActivityTaskCanceled": lambda raw: self._token(RespondActivityTaskCanceledRequest, raw),
            "RecordActivityTaskHeartbeat": lambda raw: self._token(RecordActivityTaskHeartbeatRequest, raw),
            "ShutdownWorker": lambda raw: self._own_queue(ShutdownWorkerRequest, raw),
            "RecordWorkerHeartbeat": lambda raw: self._namespace(RecordWorkerHeartbeatRequest, raw),
        }

    # ---------------------------------------------------------------- what passes

    def check(self, method: str, raw: bytes) -> Any:
        """The decoded request when `method` with request `raw` is one of the probe's own calls;
        else Refused."""
        name = method[len(SERVICE):] if method.startswith(SERVICE) else None
        if name not in self.checks:
            raise Refused("not one of the probe's calls (activity polls, responses and heartbeats on its own task queue)")
        return self.checks[name](raw)

    def _decode(self, kind, raw: bytes):
        try:
            return kind.FromString(raw)
        except DecodeError as exc:
            raise Refused(f"{kind.DESCRIPTOR.name} could not be decoded: {exc}") from None

    def _namespace(self, kind, raw: bytes):
        request = self._decode(kind, raw)
        if request.namespace != self.namespace:
            raise Refused(f"namespace {request.namespace!r} is not the probe's ({self.namespace!r})")
        return request

    def _poll(self, raw: bytes):
        request = self._namespace(PollActivityTaskQueueRequest, raw)
        if request.task_queue.name != self.queue:
            raise Refused(f"task queue {request.task_queue.name!r} is not the drill's probe queue")
        return request

    def _own_queue(self, kind, raw: bytes):
        request = self._namespace(kind, raw)
        if request.task_queue and request.task_queue != self.queue:
            raise Refused(f"task queue {request.task_queue!r} is not the drill's probe queue")
        return request

    def _token(self, kind, raw: bytes):
        request = self._namespace(kind, raw)
        if request.task_token not in self.tokens:
            raise Refused(f"{kind.DESCRIPTOR.name}: a task token this relay did not hand out")
        return request

    def _handed_out(self, raw_response: bytes) -> None:
        token = PollActivityTaskQueueResponse.FromString(raw_response).task_token
        if token:
            self.tokens[token] = None
            while len(self.tokens) > MAX_TOKENS:
                self.tokens.pop(next(iter(self.tokens)))

    # ---------------------------------------------------------------- forwarding

    def service(self, handler_call_details: grpc.HandlerCallDetails):
        method = handler_call_details.method
        return grpc.unary_unary_rpc_method_handler(self._behaviour(method))

    def _behaviour(self, method: str) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        async def forward(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                request = self.check(method, raw)
            except Refused as exc:
                log.warning("refused %s: %s", method, exc)
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"the probe relay refused {method}: {exc}")
            metadata = [(m.key, m.value) for m in context.invocation_metadata() or () if _copied(m.key)]
            call = self.channel.unary_unary(method)
            try:
                response = await call(raw, metadata=metadata, timeout=context.time_remaining())
            except grpc.aio.AioRpcError as exc:  # the server's own answer (NotFound …), details included
                trailing = tuple((k, v) for k, v in exc.trailing_metadata() or () if _copied(k) or k == "grpc-status-details-bin")
                await context.abort(exc.code(), exc.details() or "", trailing)
            if method.endswith("/PollActivityTaskQueue"):
                self._handed_out(response)
            elif "/RespondActivityTask" in method:  # answered: the token is spent
                self.tokens.pop(request.task_token, None)
            return response

        return forward


def _copied(key: str) -> bool:
    return not key.startswith((":", "grpc-")) and key not in _TRANSPORT


async def serve(listen: str, upstream: str, queue: str, namespace: str, ready_file: Optional[str] = None) -> None:
    """Serve the relay on `listen` (`unix:PATH` or `HOST:PORT`) until SIGTERM."""
    relay = ProbeRelay(upstream, queue, namespace)
    relay.channel = grpc.aio.insecure_channel(paths.reachable(upstream))
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((relay,))
    if listen.startswith("unix:"):
        Path(listen[5:]).unlink(missing_ok=True)
    server.add_insecure_port(paths.reachable(listen))
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready_file:
        Path(ready_file).write_text(f"{listen} -> {upstream} (probe queue {queue})\n")
    log.info("forwarding the probe's calls on task queue %s from %s to %s", queue, listen, upstream)
    await stop.wait()
    await server.stop(grace=2)
    await relay.channel.close()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.probe_relay")
    parser.add_argument("--listen", required=True, help="unix:PATH or HOST:PORT")
    parser.add_argument("--to", required=True, help="the Temporal frontend: HOST:PORT or unix:PATH")
    parser.add_argument("--queue", required=True, help="the drill's probe task queue")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--ready-file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.listen, args.to, args.queue, args.namespace, args.ready_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
