"""Where drdrill keeps its state: evidence files, backups, the embedded Temporal and evidence store."""

from __future__ import annotations

import os


def default_state_dir() -> str:
    """DRDRILL_STATE_DIR, else $XDG_STATE_HOME/drdrill, else ~/.local/state/drdrill."""
    if os.environ.get("DRDRILL_STATE_DIR"):
        return os.environ["DRDRILL_STATE_DIR"]
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "drdrill")
