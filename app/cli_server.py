"""`drdrill server`: run the drill programme as a service (app/server.py).

Registered by app.cli through `register(app)`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import List, Optional

import typer

from app import output


err = output.console(stderr=True)
DEFAULT_LISTEN = ("127.0.0.1", 7470)  # app.server's; not imported here, so other commands do not load uvicorn


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        err.print(f"--listen {text}: expected HOST:PORT, e.g. 127.0.0.1:{DEFAULT_LISTEN[1]} (port 0: any free port)", markup=False)
        raise typer.Exit(2)
    return host, int(port)


def server(
    listen: str = typer.Option(f"{DEFAULT_LISTEN[0]}:{DEFAULT_LISTEN[1]}", "--listen", metavar="HOST:PORT",
                               help="where the console, /healthz and /metrics listen (loopback: no login for the local user)"),
    temporal: Optional[str] = typer.Option(None, "--temporal", metavar="ADDRESS",
                                           help="run against this Temporal cluster (default TEMPORAL_ADDRESS): no embedded Temporal; "
                                                "replicas share the task queue"),
    console: bool = typer.Option(True, "--console/--no-console", help="serve the web console (--no-console: a worker-only replica)"),
    drills: Optional[Path] = typer.Option(None, "--drills", metavar="DIR", help="the drill files the console lists"),
    tokens: Optional[Path] = typer.Option(None, "--tokens", metavar="FILE",
                                          help='console API tokens, one "<token> <user> <viewer|approver>" per line (needed off loopback)'),
    proxy_header: Optional[str] = typer.Option(None, "--proxy-header", help="identity header set by a trusted reverse proxy, e.g. X-Forwarded-User"),
    proxy_address: List[str] = typer.Option([], "--proxy-address", help="address the trusted proxy connects from (repeatable)"),
    temporal_ui: Optional[str] = typer.Option(None, "--temporal-ui", metavar="URL", help="the Temporal Web UI, for links from the console"),
    max_activities: int = typer.Option(int(os.environ.get("DRDRILL_MAX_ACTIVITIES", "100")), "--max-activities",
                                       help="activities this worker runs at once"),
) -> None:
    """Run drdrill as a service until Ctrl-C or SIGTERM: schedules fire, gates wait, a console shows it all.

    It runs the embedded Temporal (persisted in the state directory), the worker, the evidence store,
    Prometheus metrics and the web console. Other drdrill commands on this host find it through the
    state directory and run their drills in it."""
    from app.server import ServerOptions, serve  # the web stack: only for this command

    opts = ServerOptions(
        listen=_listen(listen),
        temporal=temporal or os.environ.get("TEMPORAL_ADDRESS") or None,
        console=console,
        drills_dir=drills,
        tokens_file=tokens,
        proxy_header=proxy_header,
        proxy_addresses=tuple(proxy_address),
        temporal_ui_url=temporal_ui,
        max_concurrent_activities=max_activities,
        announce=[lambda line: err.print(line, markup=False)],
    )
    raise typer.Exit(asyncio.run(serve(opts)))


def register(app: typer.Typer) -> None:
    app.command("server")(server)
