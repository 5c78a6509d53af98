"""The one way into the embedded Temporal: a Unix socket in a 0700 directory of the state directory.

`temporal server start-dev` has no authentication and no TLS: on the host's loopback, every local
user could start workflows that drdrill's worker runs (as root, when drdrill runs as root). So the
dev server runs inside a network namespace of its own (`unshare --user --map-root-user --net`: the
same for root and for any other user), where its frontend, HTTP API, metrics and internal ports
listen on that namespace's loopback and nowhere else. This gate runs in the same namespace and
serves a Unix socket, a filesystem object that crosses the namespace boundary, in a directory only
drdrill's uid can enter. It forwards each connection to the frontend, either as a tunnel (HTTP
CONNECT, as the Temporal SDK's `http_connect_proxy_config` with a `unix:` target speaks) or as
plain gRPC (HTTP/2 straight away, as grpcio's `unix:` targets speak).

    unshare --user --map-root-user --net -- python -m app.temporal_gate --socket PATH --port P -- temporal server start-dev ...
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

from drdrill.core import paths

# What a CONNECT request may be before it is refused (a request line and a few headers).
_MAX_HEADER = 8192


def _die_with_parent() -> None:
    """SIGTERM when the parent dies. Entering a user namespace resets the setting inherited from
    `unshare`'s caller, so the gate sets it again for itself, and for the server it starts."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM
    except (OSError, AttributeError):
        pass


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
    """A tunnel (CONNECT: the SDK) or plain gRPC (grpcio), always to this namespace's frontend."""
    try:
        first = await reader.readexactly(8)
        if first == b"CONNECT ":
            head = first + await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_HEADER:
                raise ValueError("CONNECT request too long")
            writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
            await writer.drain()
            first = b""
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError):
        writer.close()
        return
    up_writer.write(first)
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    for w in (writer, up_writer):
        w.close()


async def serve(socket_path: str, port: int, server_argv: list[str], log: Optional[str]) -> int:
    """Bring the namespace's loopback up, start the dev server, serve the socket until SIGTERM or
    until the server exits; then stop the server."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    out = open(log, "ab") if log else subprocess.DEVNULL
    server = subprocess.Popen(server_argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    Path(socket_path).unlink(missing_ok=True)
    old = os.umask(0o177)
    try:
        gate = await asyncio.start_unix_server(lambda r, w: _handle(r, w, port), paths.socket_path(socket_path))
    finally:
        os.umask(old)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    exited = loop.run_in_executor(None, server.wait)
    async with gate:
        await asyncio.wait([asyncio.ensure_future(stop.wait()), exited], return_when=asyncio.FIRST_COMPLETED)
    Path(socket_path).unlink(missing_ok=True)
    if server.poll() is None:
        server.terminate()
        try:
            await asyncio.wait_for(exited, 20)
        except asyncio.TimeoutError:
            server.kill()
    return server.wait() if server.returncode is None else server.returncode


def main(argv: Optional[list[str]] = None) -> int:
    _die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m app.temporal_gate")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log")
    parser.add_argument("server", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    server = args.server[1:] if args.server[:1] == ["--"] else args.server
    return asyncio.run(serve(args.socket, args.port, server, args.log))


if __name__ == "__main__":
    sys.exit(main())
