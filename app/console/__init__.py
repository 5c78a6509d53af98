"""The web console of `drdrill server` (issue 25): a thin ASGI layer over the same queries the CLI
uses (app/queries.py). `app/server.py` builds a `ConsoleSettings` and serves `create_app(settings)`
with uvicorn; nothing else in drdrill imports this package.

Serve it with `uvicorn.Config(..., proxy_headers=False)`: the console decides from the peer's own
address whether a request comes from the trusted proxy (proxy_addresses); uvicorn's default would
replace that address with whatever X-Forwarded-For a local process sends.
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
    local_user: Optional[str] = None                 # on loopback: who the local user is (default: the server's user name)
    proxy_approvers: tuple[str, ...] = ()            # users the proxy names who may act (others only view)
    console_key: Optional[Path] = None               # the console's SSH key (default <state dir>/console/console-key)
    console_name: str = "drdrill-console"            # its name among a gate's approvers (role: console)
    evidence_dsn: Optional[str] = None               # the evidence store (default: DRDRILL_EVIDENCE_DSN, else the state dir's)


def create_app(settings: ConsoleSettings):
    """The console's ASGI application: pages over app/queries.py, authentication (app/console/auth.py).
    Raises ConsoleConfigError (a clear message) for settings that cannot be used, e.g. a tokens file
    readable by others, or a non-loopback address with no way to authenticate."""
    from app.console.routes import build

    return build(settings)
