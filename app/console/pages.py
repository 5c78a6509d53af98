"""The console's pages: each asks app/queries.py and renders a template of app/console/templates/.

Drills (/), a drill run (/runs/ID, live through /runs/ID/events), Gates (/gates), Schedules
(/schedules), Coverage (/coverage) and the period report (/reports/period), Evidence (/evidence).
Every action (an answer at a gate, a schedule paused, unpaused or triggered, a bundle exported)
is logged with who did it; an answer is also signed on their behalf into the drill's evidence.
"""

from __future__ import annotations

import asyncio
import io
import re
import secrets
import shutil
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from temporalio.client import WorkflowUpdateFailedError

from app import queries
from app.console.auth import COOKIE
from app.console.signing import public_line, sign_for
from app.console.web import Console, form, log
from drdrill.core.calendar import parse_period
from drdrill.evidence.coverage_report import coverage_svg, render_coverage_html
from drdrill.evidence.period import render_period_html, trend_svg
from drdrill.core.schema import SpecError

DRILL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,250}$")
RUN_FILES = {"report.html": "text/html", "evidence.json": "application/json", "junit.xml": "application/xml"}
TRENDS = 12  # runs per drill in the Drills page's trends


def _drill_id(request: Request) -> str:
    drill_id = request.path_params["drill_id"]
    if not DRILL_ID.match(drill_id):
        raise ValueError(drill_id)
    return drill_id


async def _temporal(console: Console, what):
    """what(client), or (None, why) when Temporal cannot be reached: the page still shows the evidence."""
    try:
        client = await asyncio.wait_for(console.client(), timeout=10)
        return await what(client), ""
    except Exception as exc:  # noqa: BLE001 - Temporal down: say so on the page
        return None, f"Temporal could not be reached: {exc}"


async def _stored(console: Console, fn):
    """(fn(store), "") or ((empty answers), why) when the evidence store cannot be read."""
    try:
        return await console.store(fn), ""
    except Exception as exc:  # noqa: BLE001 - a store out of reach: the page says so
        return ({}, [], 0), f"the evidence store could not be read: {exc}"


# ------------------------------------------------------------------ Drills


async def drills(console: Console, request: Request) -> Response:
    files = await asyncio.to_thread(queries.drill_files, console.settings.drills_dir)
    names = [f.name for f in files]

    def from_store(store):
        return queries.runs_by_drill(store, names, TRENDS), queries.recent_runs(store, 25), queries.count_runs(store)

    async def from_temporal(client):
        return await asyncio.gather(queries.running_now(client, 50), queries.next_runs(client, console.settings.task_queue))

    stored, (live, problem) = await asyncio.gather(_stored(console, from_store), _temporal(console, from_temporal))
    (by_drill, recent, total), store_problem = stored
    problem = "; ".join(p for p in (problem, store_problem) if p)
    running, schedules = live or ([], {})
    rows = []
    for f in files:
        runs = by_drill.get(f.name, [])
        points = queries.trend_points(runs, f.rto_seconds, f.rpo_seconds)
        sched = schedules.get(queries.schedule_handle_id(f.name))
        rows.append({
            "file": f, "last": runs[0] if runs else None, "schedule": sched,
            "rto": trend_svg(points, "rto") if points else "", "rpo": trend_svg(points, "rpo") if points else "",
            "running": [r for r in running if r["status"] is not None and r["status"].name == f.name],
        })
    return console.render("drills.html.j2", request, rows=rows, running=running, recent=recent, total=total, problem=problem)


# ------------------------------------------------------------------ a drill run


async def run_context(console: Console, drill_id: str, *, verify: bool = True) -> dict[str, Any]:
    """What a run's page shows: Temporal's state and the drill's status while it runs; its evidence
    document and whether it verifies once it is recorded."""
    state, problem = await _temporal(console, lambda client: queries.run_state(client, drill_id))
    running = state is not None and state.state == "RUNNING"
    doc = verification = None
    if not running:
        def from_store(store):
            try:
                doc = store.load(drill_id)
            except KeyError:
                return None, None
            keys = console.trusted()
            return doc, queries.verify_run(store, Path(console.settings.state_dir), drill_id, keys) if verify else None

        doc, verification = await console.store(from_store)
    files = [n for n in RUN_FILES if (Path(console.settings.state_dir) / "runs" / drill_id / n).is_file()]
    ui = console.settings.temporal_ui_url
    temporal_link = f"{ui.rstrip('/')}/namespaces/{console.settings.namespace}/workflows/{drill_id}" if ui else ""
    return {"drill_id": drill_id, "state": state, "problem": problem, "running": running, "doc": doc,
            "verification": verification, "files": files, "temporal_link": temporal_link,
            "done": not running and (doc is not None or state is None or not state.found or state.state != "RUNNING")}


async def run(console: Console, request: Request) -> Response:
    try:
        drill_id = _drill_id(request)
    except ValueError:
        return HTMLResponse("not a drill id\n", status_code=404)
    ctx = await run_context(console, drill_id)
    if ctx["doc"] is None and (ctx["state"] is None or not ctx["state"].found):
        return console.render("run.html.j2", request, status=404, **ctx)
    return console.render("run.html.j2", request, **ctx)


async def run_file(console: Console, request: Request) -> Response:
    """runs/ID/report.html, evidence.json or junit.xml, as the worker wrote them."""
    name = request.path_params["name"]
    try:
        drill_id = _drill_id(request)
    except ValueError:
        return HTMLResponse("not a drill id\n", status_code=404)
    path = Path(console.settings.state_dir) / "runs" / drill_id / name
    if name not in RUN_FILES or not path.is_file():
        return HTMLResponse("no such file\n", status_code=404)
    return FileResponse(path, media_type=RUN_FILES[name])


async def bundle(console: Console, request: Request) -> Response:
    """The run's exported bundle (`drdrill evidence export`), as a zip."""
    try:
        drill_id = _drill_id(request)
    except ValueError:
        return HTMLResponse("not a drill id\n", status_code=404)
    work = Path(console.settings.state_dir) / "console" / "exports" / f"{drill_id}-{secrets.token_hex(4)}"

    def export(store):
        try:
            _, paths, result, entry, _ = queries.export_run(store, drill_id, work)
        except KeyError:
            return None
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for p in sorted(work.iterdir()):
                z.write(p, f"{drill_id}/{p.name}")
        return buf.getvalue(), result.ok and entry is not None

    try:
        out = await console.store(export)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if out is None:
        return HTMLResponse("no such run in the evidence store\n", status_code=404)
    who = request.state.identity
    log.info("console: %s (%s) exported the evidence bundle of %s (verifies: %s)", who.user, who.how, drill_id, out[1])
    return Response(out[0], media_type="application/zip", headers={"Content-Disposition": f'attachment; filename="{drill_id}.zip"'})


# ------------------------------------------------------------------ Gates


async def gates(console: Console, request: Request, message: str = "", status: int = 200) -> Response:
    waiting, problem = await _temporal(console, lambda client: queries.gates_waiting(client))
    key = await asyncio.to_thread(public_line, Path(console.settings.state_dir), console.settings.console_key)
    return console.render("gates.html.j2", request, status=status, waiting=waiting or [], problem=problem, message=message,
                          console_key=key, now=datetime.now(timezone.utc))


async def answer(console: Console, request: Request) -> Response:
    """Approve or reject a gate: signed with the console's key on behalf of the signed-in person."""
    verb = request.path_params["verb"]
    try:
        drill_id = _drill_id(request)
    except ValueError:
        return HTMLResponse("not a drill id\n", status_code=404)
    if verb not in ("approve", "reject"):
        return HTMLResponse("approve or reject\n", status_code=404)
    fields = await form(request)
    who = request.state.identity
    note, group = fields.get("note", "")[:2000], fields.get("group") or None
    settings = console.settings

    def sign(waiting: str):
        return sign_for(Path(settings.state_dir), settings.console_key, drill_id, waiting, verb, note, who.user)

    log.info("console: %s (%s) answers %s to drill %s, group %s", who.user, who.how, verb, drill_id, group or "(waiting)")
    try:
        client = await console.client()
        record = await queries.send_answer(client, drill_id, verb, group, sign)
    except WorkflowUpdateFailedError as exc:
        why = getattr(exc.cause, "message", None) or str(exc.cause or exc)
        log.warning("console: the %s of %s by %s was refused: %s", verb, drill_id, who.user, why)
        return await gates(console, request, f"{drill_id}: not {verb}d: {why}", status=409)
    except Exception as exc:  # noqa: BLE001 - not found, closed, not signed: said on the page
        log.warning("console: the %s of %s by %s failed: %s", verb, drill_id, who.user, exc)
        return await gates(console, request, f"{drill_id}: not {verb}d: {exc}", status=409)
    log.info("console: group %s of %s %s by %s (signed by the console's key on their behalf)", record.group, drill_id, record.decision, record.by)
    return RedirectResponse(f"/runs/{drill_id}", status_code=303)


# ------------------------------------------------------------------ Schedules


async def schedules(console: Console, request: Request, message: str = "", status: int = 200) -> Response:
    rows, problem = await _temporal(console, lambda client: queries.schedule_rows(client, console.settings.task_queue))
    return console.render("schedules.html.j2", request, status=status, rows=rows or [], problem=problem, message=message)


async def schedule_op(console: Console, request: Request) -> Response:
    sid, op = request.path_params["sid"], request.path_params["op"]
    if op not in ("pause", "unpause", "trigger") or not DRILL_ID.match(sid):
        return HTMLResponse("no such action\n", status_code=404)
    fields = await form(request)
    who = request.state.identity
    note = f"{op}d from the console by {who.user}" + (f": {fields['note'][:500]}" if fields.get("note") else "")
    try:
        client = await console.client()
        managed = {r.schedule_id for r in await queries.schedule_rows(client, console.settings.task_queue)}
        if sid not in managed:
            return await schedules(console, request, f"{sid}: not a schedule this console manages", status=404)
        await queries.schedule_action(client, sid, op, note)
    except Exception as exc:  # noqa: BLE001 - said on the page
        return await schedules(console, request, f"{sid}: not {op}d: {exc}", status=409)
    log.info("console: %s (%s) %s schedule %s", who.user, who.how, {"pause": "paused", "unpause": "unpaused", "trigger": "triggered"}[op], sid)
    return RedirectResponse("/schedules", status_code=303)


# ------------------------------------------------------------------ Coverage and the period report


def _current_quarter() -> str:
    now = datetime.now(timezone.utc)
    return f"{now.year}Q{(now.month - 1) // 3 + 1}"


def _period(request: Request, default: Optional[str]) -> Optional[str]:
    period = (request.query_params.get("period") or "").strip() or default
    if period is not None:
        parse_period(period)  # ValueError for one that is not
    return period.upper() if period else None


async def _coverage_report(console: Console, request: Request):
    period = _period(request, None)
    drills_dir = console.settings.drills_dir
    if drills_dir is None:
        raise SpecError("<console>", [("drills_dir", "the console was given no drills directory: start the server with --drills DIR")])
    return await console.store(lambda store: queries.coverage_report(store, Path(drills_dir), period))


async def coverage(console: Console, request: Request) -> Response:
    try:
        report = await _coverage_report(console, request)
    except (ValueError, SpecError) as exc:
        return console.render("coverage.html.j2", request, status=400, report=None, chart="", problem=str(exc))
    return console.render("coverage.html.j2", request, report=report, chart=coverage_svg(report), problem="")


async def coverage_html(console: Console, request: Request) -> Response:
    try:
        report = await _coverage_report(console, request)
    except (ValueError, SpecError) as exc:
        return HTMLResponse(f"{exc}\n", status_code=400)
    return HTMLResponse(render_coverage_html(report))


async def _period_data(console: Console, request: Request) -> dict:
    period = _period(request, _current_quarter())
    drills_dir = console.settings.drills_dir
    return await console.store(lambda store: queries.period_report_data(store, period, Path(drills_dir) if drills_dir else None))


async def period(console: Console, request: Request) -> Response:
    try:
        data = await _period_data(console, request)
    except ValueError as exc:
        return console.render("period.html.j2", request, status=400, data=None, trends={}, chart="", problem=str(exc))
    trends = {d["name"]: (trend_svg(d["points"], "rto"), trend_svg(d["points"], "rpo")) for d in data["drills"]}
    cov = data.get("coverage") or {}
    chart = ""
    if cov.get("rows") is not None:
        from drdrill.evidence.coverage import CoverageReport

        chart = coverage_svg(CoverageReport.model_validate(cov))
    return console.render("period.html.j2", request, data=data, trends=trends, chart=chart, problem="")


async def period_html(console: Console, request: Request) -> Response:
    try:
        data = await _period_data(console, request)
    except ValueError as exc:
        return HTMLResponse(f"{exc}\n", status_code=400)
    return HTMLResponse(render_period_html(data))


# ------------------------------------------------------------------ Evidence


async def evidence(console: Console, request: Request) -> Response:
    """The store at a glance; the signed log walked on request (it reads every entry); one run verified."""
    run = (request.query_params.get("run") or "").strip()
    check_log = request.query_params.get("check") == "log"
    if run and not DRILL_ID.match(run):
        run = ""
    state_dir = Path(console.settings.state_dir)

    def from_store(store):
        keys = console.trusted()
        head = store.log_head()
        total = queries.count_runs(store)
        walked = store.verify_log(keys) if check_log else None
        one = None
        if run:
            one = queries.verify_run(store, state_dir, run, keys)
        return head, total, walked, one, keys

    try:
        head, total, walked, one, keys = await console.store(from_store)
    except Exception as exc:  # noqa: BLE001 - a store out of reach, a key that cannot be read
        return console.render("evidence.html.j2", request, status=503, problem=str(exc), head=None, total=0, walked=None, one=None, keys={}, run=run)
    return console.render("evidence.html.j2", request, problem="", head=head, total=total, walked=walked, one=one, keys=keys, run=run)


# ------------------------------------------------------------------ signing in with a token


async def login(console: Console, request: Request) -> Response:
    """A form for the API token (bound to a non-loopback address): kept in an HttpOnly cookie."""
    if request.method == "POST":
        token = (await form(request)).get("token", "").strip()
        found = console.tokens.find(token)
        if found is None:
            log.warning("console: a sign-in with an unknown token from %s", request.client.host if request.client else "?")
            return console.render("login.html.j2", request, status=401, message="that token is not accepted")
        log.info("console: %s signed in (%s)", found[0], found[1])
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/")
        return response
    return console.render("login.html.j2", request, message="")
