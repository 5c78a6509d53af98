"""The web console (issue 25), in a real browser: headless Chromium (Debian's) driven by Playwright,
against a console served by uvicorn, a real worker and the session's real Temporal, with simulated
drills. Nothing is stubbed: the pages ask app/queries.py, the gate checks the console's signature.

Set DRDRILL_CONSOLE_SCREENSHOTS=DIR to keep screenshots of the pages (the README's come from here).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest
from temporalio.client import WorkflowFailureError

from app import schedules
from app.console import ConsoleSettings, create_app
from app.console.auth import ConsoleConfigError
from app.console.signing import public_line
from drdrill.providers.spec import load_spec
from tests.console_harness import CHROMIUM, CHROMIUM_ARGS, LiveConsole, http

pytest.importorskip("playwright")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

SIM_CHECK = f"[{sys.executable}, -m, app.simulate, check]"
SHOTS = os.environ.get("DRDRILL_CONSOLE_SCREENSHOTS")
VIEWER, APPROVER = "viewer-token-0123456789abcdef", "approver-token-0123456789abcdef"


def ssh_key(folder: Path, name: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(folder / name)], check=True, capture_output=True)
    return (folder / f"{name}.pub").read_text().strip()


def drill_files(drills: Path, alice: str, console_key: str) -> None:
    head = "version: 1\nobjectives: {rto: 15m, rpo: 2h}\nmax_duration: 10m\n"
    (drills / "console-live.yaml").write_text(
        head + "name: console-live\ntargets:\n  - {name: db, provider: sim, source: {restore_time: 6s}}\n"
        f"validations:\n  - {{name: db-answers, type: command, target: db, timeout: 30s, argv: {SIM_CHECK}}}\n"
    )
    (drills / "console-gate.yaml").write_text(
        head + "name: console-gate\ntargets:\n  - {name: db, provider: sim, source: {restore_time: 0.2}}\n"
        "  - {name: api, provider: sim, source: {restore_time: 0.2}}\n"
        "plan:\n"
        f"  - {{group: data, targets: [db], checks: [{{name: db-ready, type: command, target: db, timeout: 30s, argv: {SIM_CHECK}}}]}}\n"
        f"  - {{group: app, targets: [api], after: [data], checks: [{{name: api-ready, type: command, target: api, timeout: 30s, argv: {SIM_CHECK}}}]}}\n"
        f'approve:\n  - {{before: app, timeout: 10m, approvers: [{{name: alice, key: "{alice}"}}, '
        f'{{name: drdrill-console, key: "{console_key}", role: console}}]}}\n'
    )
    (drills / "console-pg.yaml").write_text(  # a named resource: coverage has something to count
        head + "name: console-pg\ntargets:\n  - {name: shop, provider: postgres, source: {path: /var/backups/shop.dump}}\n"
    )
    (drills / "console-sched.yaml").write_text(
        head + "name: console-sched\ntargets:\n  - {name: db, provider: sim, source: {restore_time: 0.2}}\n"
        "schedule: {cron: '0 3 * * *', timezone: UTC}\n"
    )


@pytest.fixture(scope="module")
def live(temporal_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    state, drills, keys = root / "state", root / "drills", root / "keys"
    for d in (state, drills, keys):
        d.mkdir()
    drill_files(drills, ssh_key(keys, "alice"), public_line(state))
    saved = os.environ.get("DRDRILL_SIM_STATE")
    os.environ["DRDRILL_SIM_STATE"] = str(root / "sim.json")
    harness = LiveConsole(temporal_server.address, state, drills, root / "sim.json").start()
    harness.url = harness.serve(harness.settings(local_user="alice"))
    try:
        yield harness
    finally:
        harness.stop()
        if saved is None:
            os.environ.pop("DRDRILL_SIM_STATE", None)
        else:
            os.environ["DRDRILL_SIM_STATE"] = saved


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def shot(page, name: str, full: bool = False) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"console-{name}.png"), full_page=full)


def test_a_running_drill_is_followed_live_on_its_page_and_ends_with_its_evidence(live, browser):
    spec = load_spec(live.drills_dir / "console-live.yaml")
    handle, *others = [live.start_drill(spec) for _ in range(3)]  # three runs: the Drills page draws a trend
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{live.url}/runs/{handle.id}")
    expect(page.locator(".v-running")).to_be_visible(timeout=30_000)  # opened while it runs
    page.evaluate("window.__sameDocument = 'yes'")
    expect(page.locator("#run")).to_have_attribute("data-live", re.compile("open|closed"), timeout=30_000)
    expect(page.locator("#run .verdict").first).to_have_text("PASSED", timeout=120_000)
    expect(page.locator("#run")).to_have_attribute("data-done", "yes", timeout=30_000)
    # Updated by server-sent events, never reloaded: the marker set on the first document is still there.
    assert page.evaluate("window.__sameDocument") == "yes"
    assert int(page.locator("#run").get_attribute("data-updates")) >= 2
    body = page.locator("#run").inner_text()
    assert "db-answers" in body and "Isolation" in body and "Teardown" in body
    assert "verifies" in body and "record hash" in body and "signed log entry" in body
    assert page.locator("a", has_text="in the Temporal Web UI").get_attribute("href").endswith(f"/workflows/{handle.id}")
    bundle = page.request.get(f"{live.url}/runs/{handle.id}/bundle")
    assert bundle.status == 200 and bundle.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(bundle.body())) as z:
        assert {f"{handle.id}/evidence.json", f"{handle.id}/anchor.json", f"{handle.id}/SHA256SUMS"} <= set(z.namelist())
    page.locator("a", has_text="HTML report").click()
    expect(page.locator("body")).to_contain_text("console-live", timeout=30_000)
    page.goto(f"{live.url}/runs/{handle.id}")
    expect(page.locator("#run")).to_have_attribute("data-done", "yes")
    shot(page, "run", full=True)
    for other in others:
        assert live.result(other).verdict == "PASSED"
    page.goto(live.url + "/")
    card = page.locator("article.drill", has_text="console-live")
    expect(card.locator("svg.trend").first).to_be_visible()
    expect(card).to_contain_text("PASSED")
    page.close()


def test_a_gate_is_approved_from_the_browser_signed_by_the_console_for_its_user(live, browser):
    handle = live.start_drill(load_spec(live.drills_dir / "console-gate.yaml"))
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    gate = page.locator(f"article.gate[data-drill='{handle.id}']")
    for _ in range(120):  # the gates page is not live: look again until the drill waits (bounded)
        page.goto(f"{live.url}/gates")
        try:
            expect(gate).to_be_visible(timeout=1_000)
            break
        except AssertionError:
            continue
    expect(gate).to_contain_text("waits before group app")
    expect(gate).to_contain_text("alice")
    shot(page, "gates")
    gate.locator("input[name=note]").fill("data restored, app may start")
    gate.locator("button.approve").click()
    expect(page).to_have_url(f"{live.url}/runs/{handle.id}", timeout=30_000)
    expect(page.locator("#run")).to_have_attribute("data-done", "yes", timeout=120_000)
    expect(page.locator("#run .verdict").first).to_have_text("PASSED")
    expect(page.locator("#run")).to_contain_text("approved by alice")
    expect(page.locator("#run")).to_contain_text("signed by drdrill-console on their behalf")
    result = live.result(handle)
    approval = result.groups[1].approval
    assert (approval.decision, approval.by, approval.signer, approval.note) == ("approved", "alice", "drdrill-console", "data restored, app may start")
    assert json.loads(approval.payload)["on_behalf_of"] == "alice"
    page.close()


def test_a_schedule_is_paused_and_unpaused_from_the_browser(live, browser, caplog):
    caplog.set_level(logging.INFO, logger="drdrill.console")
    plan = live.call(schedules.sync(live.client, [live.drills_dir], live.queue))
    sid = "drdrill-console-sched"
    assert sid in plan.of("create") and not plan.problems
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{live.url}/schedules")
    row = page.locator(f"tr[data-schedule='{sid}']")
    expect(row.locator("td.state")).to_have_text("active")
    row.locator("button", has_text="Pause").click()
    expect(row.locator("td.state")).to_have_text("paused", timeout=30_000)
    expect(row).to_contain_text("paused from the console by alice")
    assert f"alice (local) paused schedule {sid}" in caplog.text  # who did it, in the log too
    desc = live.call(live.client.get_schedule_handle(sid).describe())
    assert desc.schedule.state.paused and "by alice" in desc.schedule.state.note
    page.goto(live.url + "/")
    expect(page.locator("article.drill", has_text="console-sched")).to_contain_text("paused")
    page.goto(f"{live.url}/schedules")
    row.locator("button", has_text="Unpause").click()
    expect(row.locator("td.state")).to_have_text("active", timeout=30_000)
    page.goto(live.url + "/")  # the Drills page gives its next run (03:00 UTC, plus the jitter)
    expect(page.locator("article.drill", has_text="console-sched")).to_contain_text(re.compile(r"next run\s*\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"))
    page.goto(f"{live.url}/schedules")
    row.locator("button", has_text="Run now").click()  # through the schedule: it shows as its last run
    assert f"alice (local) triggered schedule {sid}" in caplog.text
    last = row.locator("td a")
    for _ in range(120):  # the Schedules page is not live: look again until Temporal lists the run (bounded)
        page.goto(f"{live.url}/schedules")
        try:
            expect(last).to_be_visible(timeout=1_000)
            break
        except AssertionError:
            continue
    run_id = last.get_attribute("href").removeprefix("/runs/")
    assert run_id.startswith("console-sched-")
    assert live.result(live.client.get_workflow_handle(run_id)) is not None  # it ran to its end on the worker
    live.call(live.client.get_schedule_handle(sid).delete())
    page.close()


def test_coverage_and_the_period_report_render_with_their_charts(live, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    waiting = live.start_drill(load_spec(live.drills_dir / "console-gate.yaml"))  # running now, at its gate
    live.wait_for_phase(waiting, "waiting for approval")
    page.goto(live.url + "/")
    expect(page.locator("article.drill").first).to_be_visible()
    expect(page.locator("section", has_text="Running now")).to_contain_text("answer on the Gates page")
    shot(page, "drills")
    live.call(waiting.cancel())
    with pytest.raises(WorkflowFailureError):  # cancelled at its gate: it tears down
        live.result(waiting)
    page.goto(f"{live.url}/coverage")
    expect(page.locator("h1")).to_contain_text("Coverage")
    expect(page.locator("svg.chart")).to_be_visible()
    expect(page.locator("p.lead")).to_contain_text("0/1 protected resources restored")
    expect(page.locator("svg.chart")).to_contain_text("postgres")
    expect(page.locator("table")).to_contain_text("/var/backups/shop.dump")
    shot(page, "coverage", full=True)
    page.goto(f"{live.url}/reports/coverage.html")
    expect(page.locator("svg.chart")).to_be_visible()
    page.goto(f"{live.url}/reports/period")
    expect(page.locator("h1")).to_contain_text("Period report")
    expect(page.locator("table")).to_contain_text("SOC 2")
    shot(page, "period", full=True)
    page.goto(f"{live.url}/reports/period?period=not-a-period")
    expect(page.locator(".problem")).to_contain_text("is not a period")
    page.goto(f"{live.url}/evidence?check=log")
    expect(page.locator("body")).to_contain_text("runs stored")
    page.close()


def test_no_console_page_is_wider_than_a_narrow_window(live, browser):
    handle = live.start_drill(load_spec(live.drills_dir / "console-sched.yaml"))
    live.result(handle)
    some_run = f"/runs/{handle.id}"
    page = browser.new_page(viewport={"width": 800, "height": 900})
    wide = []
    for path in ("/", "/gates", "/schedules", some_run, "/coverage", "/reports/period", "/evidence?check=log"):
        page.goto(live.url + path)
        width = page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
        if width[0] > width[1]:
            wide.append(f"{path}: {width[0]}px wide in an {width[1]}px window")
    assert wide == []
    page.close()


def test_bound_elsewhere_a_request_needs_a_token_and_a_viewer_cannot_act(live, browser, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# token user role\n{VIEWER} victor viewer\n{APPROVER} alice approver\n")
    tokens.chmod(0o600)
    url = live.serve(live.settings(bind_host="0.0.0.0", tokens_file=tokens, proxy_header="X-Forwarded-User", proxy_addresses=("10.9.9.9",)))

    assert http("GET", url + "/")[0] == 401
    assert http("GET", url + "/", {"Authorization": "Bearer not-a-token-of-ours-at-all"})[0] == 401
    assert http("GET", url + "/", {"X-Forwarded-User": "alice"})[0] == 401  # not from the proxy's address
    assert http("GET", url + "/", {"X-Forwarded-User": "alice", "X-Forwarded-For": "10.9.9.9"})[0] == 401  # nor claiming to be
    status, body = http("GET", url + "/", {"Authorization": f"Bearer {VIEWER}"})
    assert status == 200 and "victor · viewer" in body
    assert http("POST", url + "/gates/console-gate-1/approve", {"Authorization": f"Bearer {VIEWER}"}, b"note=x")[0] == 403
    assert http("POST", url + "/schedules/drdrill-none/pause", {"Authorization": f"Bearer {VIEWER}"})[0] == 403
    assert http("POST", url + "/schedules/drdrill-none/pause", {"Authorization": f"Bearer {APPROVER}"})[0] == 404  # allowed; no such schedule
    # A form posted with the cookie but from another site's page: refused (CSRF).
    cookie = {"Cookie": f"drdrill_console_token={APPROVER}", "Origin": "http://evil.example"}
    assert http("POST", url + "/schedules/drdrill-none/pause", cookie)[0] == 403

    page = browser.new_page()
    response = page.goto(url + "/")
    assert response.status == 401
    page.locator("a", has_text="Sign in").click()
    page.locator("input[name=token]").fill(VIEWER)
    page.locator("button", has_text="Sign in").click()
    expect(page.locator(".who")).to_have_text("victor · viewer")
    page.goto(url + "/schedules")
    expect(page.locator("button", has_text="Pause")).to_have_count(0)  # a viewer is offered no action
    page.close()


def test_an_answer_for_someone_the_gate_does_not_list_is_refused_and_a_reject_stops_the_plan(live, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{APPROVER} alice approver\ncarol-token-0123456789abcdef carol approver\n")
    tokens.chmod(0o600)
    url = live.serve(live.settings(bind_host="0.0.0.0", tokens_file=tokens))
    handle = live.start_drill(load_spec(live.drills_dir / "console-gate.yaml"))
    live.wait_for_phase(handle, "waiting for approval")
    carol = {"Authorization": "Bearer carol-token-0123456789abcdef"}
    status, body = http("POST", f"{url}/gates/{handle.id}/approve", carol, b"group=app&note=looks+fine")
    assert status == 409 and "carol, who is not an approver of this gate" in body
    status, _ = http("POST", f"{url}/gates/{handle.id}/reject", {"Authorization": f"Bearer {APPROVER}"}, b"group=app&note=not+today")
    assert status == 303
    result = live.result(handle)
    assert result.verdict == "FAILED"
    approval = result.groups[1].approval
    assert (approval.decision, approval.by, approval.signer, approval.note) == ("rejected", "alice", "drdrill-console", "not today")
    refused = [f for f in result.findings if f.code == "APPROVAL_NOT_AN_APPROVER"]
    assert len(refused) == 1 and "console:carol" in refused[0].message  # the refusal is recorded, with who asked


def test_a_trusted_proxy_names_the_user_and_a_loopback_console_answers_only_to_loopback_names(live, tmp_path):
    url = live.serve(live.settings(bind_host="0.0.0.0", proxy_header="X-Forwarded-User", proxy_addresses=("127.0.0.1",),
                                   proxy_approvers=("alice",)))
    status, body = http("GET", url + "/", {"X-Forwarded-User": "bob"})
    assert status == 200 and "bob · viewer" in body
    assert http("POST", url + "/schedules/drdrill-none/pause", {"X-Forwarded-User": "bob", "Origin": url})[0] == 403
    assert http("POST", url + "/schedules/drdrill-none/pause", {"X-Forwarded-User": "alice", "Origin": url})[0] == 404  # may act
    assert http("GET", url + "/")[0] == 401  # from the proxy's address, but naming nobody
    # The local console, asked under another site's name (DNS rebinding), refuses.
    assert http("GET", live.url + "/", {"Host": "evil.example:80"})[0] == 403
    with urllib.request.urlopen(live.url + "/gates") as resp:  # no page of the console can be framed by another site
        assert resp.headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    assert http("GET", live.url + "/", {"Host": live.url.removeprefix("http://").replace("127.0.0.1", "localhost")})[0] == 200


def test_settings_that_would_leave_the_console_open_are_refused(tmp_path):
    async def nothing():
        raise AssertionError("not connected")

    with pytest.raises(ConsoleConfigError, match="needs a way to authenticate"):
        create_app(ConsoleSettings(state_dir=tmp_path, connect=nothing, bind_host="0.0.0.0"))
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{VIEWER} victor viewer\n")
    tokens.chmod(0o644)
    with pytest.raises(ConsoleConfigError, match="chmod 600"):
        create_app(ConsoleSettings(state_dir=tmp_path, connect=nothing, bind_host="0.0.0.0", tokens_file=tokens))


def test_on_loopback_only_the_servers_own_account_needs_no_login(live):
    """Another account on the same host reaches 127.0.0.1 too: it is not the local user (401)."""
    assert http("GET", live.url + "/")[0] == 200  # this test's process: the console's own uid
    ask = f"import urllib.request, urllib.error\ntry:\n    print(urllib.request.urlopen({live.url + '/gates'!r}, timeout=60).status)\nexcept urllib.error.HTTPError as e:\n    print(e.code)\n"
    proc = subprocess.run(["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "/usr/bin/python3", "-c", ask],
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.stdout.strip() == "401", proc.stdout + proc.stderr
