"""A run's page, live: server-sent events carrying the run's body as HTML each time it changes
(static/live.js swaps it in; the page is never reloaded). The stream ends with the run's final,
recorded state."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse

from app.console.pages import _drill_id, run_context
from app.console.web import Console

POLL = 1.0  # seconds between two looks at a running drill (its status query)
KEEPALIVE = 15.0


def sse(event: str, html: str) -> str:
    """One server-sent event; each line of the HTML is a data line."""
    return f"event: {event}\n" + "".join(f"data: {line}\n" for line in html.splitlines() or [""]) + "\n"


async def events(console: Console, request: Request) -> Response:
    try:
        drill_id = _drill_id(request)
    except ValueError:
        return HTMLResponse("not a drill id\n", status_code=404)
    template = console.templates.get_template("_run_body.html.j2")
    who = request.state.identity

    async def stream():
        last, quiet = None, 0.0
        while True:
            ctx = await run_context(console, drill_id, verify=True)
            html = template.render(who=who, settings=console.settings, **ctx)
            if html != last:
                yield sse("update", html)
                last, quiet = html, 0.0
            elif quiet >= KEEPALIVE:
                yield ": still here\n\n"
                quiet = 0.0
            if ctx["done"]:
                yield sse("done", "")
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(POLL)  # allowed: the stream's polling interval, not a synchronisation
            quiet += POLL

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
