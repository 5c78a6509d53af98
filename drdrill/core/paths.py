"""Where drdrill keeps its state: evidence files, backups, the embedded Temporal and evidence store."""

from __future__ import annotations

import os
from typing import Mapping


def default_state_dir(env: Mapping[str, str] = os.environ) -> str:
    """DRDRILL_STATE_DIR, else $XDG_STATE_HOME/drdrill, else ~/.local/state/drdrill (an empty
    variable counts as unset). The CLI, the worker and the drill format (a drill's
    `${DRDRILL_STATE_DIR}` when the variable is unset) all use this one rule."""
    if env.get("DRDRILL_STATE_DIR"):
        return env["DRDRILL_STATE_DIR"]
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "drdrill")
