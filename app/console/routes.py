"""The console's routes: each page (app/console/pages.py, live.py) behind who may call it (web.guarded)."""

from __future__ import annotations

import functools

from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

import app.console.live as live
import app.console.pages as pages
from app.console.web import HERE, Console, guarded


def build(settings) -> Starlette:
    console = Console(settings)
    g = functools.partial(guarded, console)
    routes = [
        Route("/", g(pages.drills)),
        Route("/runs/{drill_id}", g(pages.run)),
        Route("/runs/{drill_id}/events", g(live.events)),
        Route("/runs/{drill_id}/files/{name}", g(pages.run_file)),
        Route("/runs/{drill_id}/bundle", g(pages.bundle)),
        Route("/gates", g(pages.gates)),
        Route("/gates/{drill_id}/{verb}", g(pages.answer, act=True), methods=["POST"]),
        Route("/schedules", g(pages.schedules)),
        Route("/schedules/{sid}/{op}", g(pages.schedule_op, act=True), methods=["POST"]),
        Route("/coverage", g(pages.coverage)),
        Route("/reports/coverage.html", g(pages.coverage_html)),
        Route("/reports/period", g(pages.period)),
        Route("/reports/period.html", g(pages.period_html)),
        Route("/evidence", g(pages.evidence)),
        Route("/login", g(pages.login, public=True), methods=["GET", "POST"]),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.console = console
    return app
