"""Notifications: a failed drill POSTs a Slack-compatible JSON message to the webhook named in its
notify.webhooks_env (a receiver on loopback here); a webhook that errors is retried; the URL never
enters the workflow history."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from drdrill.providers.activity_io import NotifyInput
from drdrill.notify import message
from tests.ops_helpers import pg_drill, service, spec_of, unique
from tests.pg_fixtures import cluster_root, shop_dsn, shop_repo  # noqa: F401


class Receiver:
    """A webhook on 127.0.0.1 that answers the first `fail_first` POSTs with HTTP 500."""

    def __init__(self, fail_first: int = 0):
        self.posts: list[dict] = []
        self.attempts = 0
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.attempts += 1
                if receiver.attempts <= receiver.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.posts.append({"path": self.path, "json": json.loads(body), "type": self.headers.get("Content-Type")})
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/s3cr3t-token"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_failed_drill_posts_to_the_webhook_with_retries(temporal_server, tmp_path, shop_repo, cluster_root, monkeypatch):
    name = unique("notified")
    spec = spec_of(
        pg_drill(
            shop_repo,
            name,
            validation='  - {type: sql, target: shop, name: no-orders, query: "SELECT count(*) FROM orders", expect: "== 0", timeout: 1s}',
            extra="notify: {webhooks_env: [DRDRILL_TEST_ALERTS], \"on\": [FAILED, ERROR]}",
        )
    )
    with Receiver(fail_first=1) as hook:
        monkeypatch.setenv("DRDRILL_TEST_ALERTS", hook.url)

        async def go():
            async with service(temporal_server.address, tmp_path) as svc:
                handle = await svc.start(spec)
                result = await svc.result(handle)
                history = json.dumps((await handle.fetch_history()).to_json_dict())
                return result, history

        result, history = asyncio.run(go())

    assert result.verdict == "FAILED"
    assert hook.attempts == 2  # the first POST got HTTP 500 and was retried
    assert len(hook.posts) == 1
    post = hook.posts[0]
    assert post["type"] == "application/json" and post["path"].startswith("/hooks/")
    body = post["json"]
    assert body["verdict"] == "FAILED" and body["drill"]["name"] == name and body["drill"]["id"] == result.drill_id
    assert f"drill *{name}* FAILED" in body["text"]
    assert any(f["code"] for f in body["findings"]) or body["objectives"]
    # The webhook URL was read on the worker: it is nowhere in the workflow's history.
    assert "s3cr3t-token" not in history and "127.0.0.1:" + str(hook.server.server_address[1]) not in history


def test_passed_drill_notifies_only_when_asked(temporal_server, tmp_path, shop_repo, cluster_root, monkeypatch):
    spec = spec_of(pg_drill(shop_repo, unique("quiet"), extra="notify: {webhooks_env: [DRDRILL_TEST_ALERTS]}"))
    with Receiver() as hook:
        monkeypatch.setenv("DRDRILL_TEST_ALERTS", hook.url)

        async def go():
            async with service(temporal_server.address, tmp_path) as svc:
                return await svc.result(await svc.start(spec))

        result = asyncio.run(go())
    assert result.verdict == "PASSED"
    assert hook.posts == []  # the default `on` is FAILED, COULD_NOT_VERIFY, ERROR, TEARDOWN


@pytest.mark.parametrize("event,verdict,expect", [("FAILED", "FAILED", ":x: drdrill: drill *shop* FAILED"), ("TEARDOWN", "PASSED", "teardown trouble")])
def test_message_is_slack_compatible_and_redacted(event, verdict, expect, monkeypatch):
    monkeypatch.setenv("SHOP_DB_PASSWORD", "hunter2-secret")
    body = message(
        NotifyInput(
            webhook_env="X",
            event=event,
            drill_id="shop-1",
            drill_name="shop",
            verdict=verdict,
            summary="could not log in with password hunter2-secret",
            findings=[{"code": "RESTORE_FAILED", "message": "postgresql://app:hunter2-secret@db/shop refused"}],
        )
    )
    assert expect in body["text"]
    assert "hunter2-secret" not in json.dumps(body)
