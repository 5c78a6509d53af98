"""The consoles every command prints through.

rich's Console answers a closed pipe (`drdrill run x.yaml | head -1`) by pointing stdout at /dev/null
and raising SystemExit(1) from inside whatever wrote (rich.console.Console.on_broken_pipe). Under
asyncio that SystemExit escapes the event loop from a task, leaving the command's own tasks (its
worker, the drill it must cancel and tear down) to asyncio's final cancellation, which can wait
forever. Here a closed stdout is an ordinary BrokenPipeError for the command to handle (cancel its
drill, exit CLOSED_PIPE: app/errors.py), and a closed stderr only silences stderr.
"""

from __future__ import annotations

import errno

from rich.console import Console


class CommandConsole(Console):
    def on_broken_pipe(self) -> None:
        self.quiet = True  # nothing more can be shown there
        if not self.stderr:
            raise BrokenPipeError(errno.EPIPE, "stdout closed")


def console(*, stderr: bool = False, soft_wrap: bool = True, **options) -> Console:
    """A console on stdout (or stderr) that treats a closed pipe as described above."""
    return CommandConsole(stderr=stderr, highlight=False, soft_wrap=soft_wrap, **options)
