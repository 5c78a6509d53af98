"""The web console of `drdrill server` (issue 25): a thin ASGI layer over the same queries the CLI
uses (app/queries.py). `app/server.py` builds a `ConsoleSettings` and serves `create_app(settings)`
with uvicorn; nothing else in drdrill imports this package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Optional

from temporalio.client import Client


@dataclass(frozen=True)
class ConsoleSettings:
    state_dir: Path                                  # the server's state directory (evidence, schedules, keys)
    connect: Callable[[], Awaitable[Client]]         # a connected Temporal client (the server's own)
    namespace: str = "default"
    task_queue: str = "drdrill"
    drills_dir: Optional[Path] = None                # drill files the console lists (default: the server's --drills)
    bind_host: str = "127.0.0.1"                     # loopback: no login for the local user; else auth required
    tokens_file: Optional[Path] = None               # API tokens: one "<token> <user> <viewer|approver>" per line
    proxy_header: Optional[str] = None               # trusted reverse proxy identity header (e.g. X-Forwarded-User)
    proxy_addresses: tuple[str, ...] = ()            # addresses the proxy's requests come from
    temporal_ui_url: Optional[str] = None            # links to the run in the Temporal Web UI, when known
    extra: dict = field(default_factory=dict)


def create_app(settings: ConsoleSettings):
    """The console's ASGI application (issue 25: built in app/console/)."""
    raise NotImplementedError("the web console is built by issue 25")
