"""Progress from long waits (restores, readiness polls, checks), reported without knowing who listens.

Providers and validations call `heartbeat(...)` on every poll. They know nothing of Temporal: the
activities layer installs the listener (activities/__init__.py), which heartbeats the running
activity and raises when the drill was cancelled, so a cancellation stops the wait. Outside an
activity (`drdrill backup`, a unit test) nobody listens and `heartbeat` does nothing.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

_listener: Optional[Callable[..., None]] = None
_interval: Optional[Callable[[], Optional[float]]] = None


def set_listener(listener: Optional[Callable[..., None]], interval: Optional[Callable[[], Optional[float]]] = None) -> None:
    """Install the function that receives every heartbeat (None: nobody listens), and the one that
    says how often the listener needs one (seconds; None when it does not care)."""
    global _listener, _interval
    _listener, _interval = listener, interval


def heartbeat_interval(default: float = 10.0) -> float:
    """How long work may go without a heartbeat: what the listener asks for, else `default`."""
    wanted = _interval() if _interval is not None else None
    return wanted if wanted else default


def heartbeat(*details: Any, stop_if_cancelled: bool = True) -> None:
    """Report progress; the listener raises to stop the work when the drill was cancelled.

    `stop_if_cancelled=False`: only say "still alive" (a blocking call in progress that cannot be
    interrupted at this point)."""
    if _listener is not None:
        _listener(*details, stop_if_cancelled=stop_if_cancelled)
