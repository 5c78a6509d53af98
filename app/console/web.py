"""The console's application: routes, who may call them, and what every page shares (the Temporal
client, the evidence store, the templates). The pages themselves are in app/console/pages.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Optional
from urllib.parse import parse_qs, urlsplit

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from temporalio.client import Client

from app.console.auth import ConsoleConfigError, Identity, Tokens, is_local_user, is_loopback, local_user, same_origin, token_of
from drdrill.evidence.render import environment as report_environment
from drdrill.evidence.signing import fingerprint, trusted_keys
from drdrill.evidence.store import EvidenceStore, evidence_dsn

HERE = Path(__file__).resolve().parent
log = logging.getLogger("drdrill.console")


class Stores:
    """A few open evidence-store connections, each used by one request at a time (psycopg
    connections are not shared between threads)."""

    def __init__(self, dsn: Optional[str], state_dir: Path, size: int = 4):
        self.dsn, self.state_dir = dsn, state_dir
        self.idle: queue.LifoQueue[EvidenceStore] = queue.LifoQueue(maxsize=size)
        self.migrated = False

    @contextmanager
    def one(self) -> Iterator[EvidenceStore]:
        try:
            store = self.idle.get_nowait()
        except queue.Empty:
            store = EvidenceStore(self.dsn or evidence_dsn(self.state_dir))
            if not self.migrated:
                store.migrate()
                self.migrated = True
        try:
            yield store
        except Exception:
            store.close()
            raise
        try:
            self.idle.put_nowait(store)
        except queue.Full:
            store.close()


class Console:
    """What every page shares."""

    def __init__(self, settings):
        self.settings = settings
        self.tokens = Tokens(settings.tokens_file)
        self.loopback = is_loopback(settings.bind_host)
        if not self.loopback and settings.tokens_file is None and not (settings.proxy_header and settings.proxy_addresses):
            raise ConsoleConfigError(
                f"the console is bound to {settings.bind_host}, not loopback: it needs a way to authenticate: "
                "a tokens file (`TOKEN USER viewer|approver` a line, mode 0600), or a reverse proxy's identity header "
                "and the proxy's addresses; or bind it to 127.0.0.1"
            )
        self.stores = Stores(settings.evidence_dsn, Path(settings.state_dir))
        self._client: Optional[Client] = None
        self._trusted: Optional[tuple[float, dict[str, str]]] = None
        self._client_lock = asyncio.Lock()
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(HERE / "templates")), autoescape=True, undefined=jinja2.StrictUndefined,
            trim_blocks=True, lstrip_blocks=True,
        )
        env.filters.update(report_environment().filters)  # the reports' words, times and durations
        env.filters["fingerprint"] = lambda key: fingerprint(key) if key else ""
        self.templates = env

    async def client(self) -> Client:
        async with self._client_lock:
            if self._client is None:
                self._client = await self.settings.connect()
            return self._client

    def trusted(self) -> dict[str, str]:
        """The keys evidence verification accepts (drdrill.evidence.signing.trusted_keys), read
        again at most once a minute: with a KMS key, reading it is a call to the service."""
        now = time.monotonic()
        if self._trusted is None or now - self._trusted[0] > 60:
            self._trusted = (now, trusted_keys(self.settings.state_dir))
        return self._trusted[1]

    async def store(self, fn: Callable[[EvidenceStore], Any]) -> Any:
        """fn(store) in a thread, with one of the pooled connections."""

        def run():
            with self.stores.one() as store:
                return fn(store)

        return await asyncio.to_thread(run)

    def render(self, name: str, request: Request, status: int = 200, **values) -> HTMLResponse:
        who: Identity = request.state.identity
        html = self.templates.get_template(name).render(who=who, settings=self.settings, path=request.url.path, **values)
        return HTMLResponse(html, status_code=status)

    def identity(self, request: Request) -> Optional[Identity]:
        """Who sends this request, or None (then it is refused)."""
        s = self.settings
        if self.loopback and is_local_user(request.scope.get("client"), request.scope.get("server")):
            return Identity(local_user(s.local_user), "approver", "local")
        peer = request.client.host if request.client else ""
        if s.proxy_header and peer in s.proxy_addresses:
            user = request.headers.get(s.proxy_header, "").strip()
            if user:
                return Identity(user, "approver" if user in s.proxy_approvers else "viewer", "proxy")
        token, _ = token_of(request.headers, request.cookies)
        found = self.tokens.find(token)
        return Identity(found[0], found[1], "token") if found else None


Handler = Callable[[Console, Request], Awaitable[Response]]


def guarded(console: Console, handler: Handler, *, act: bool = False, public: bool = False):
    """The handler behind authentication (401), the role check for actions (403) and, for a POST,
    the same-origin check (403)."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        if console.loopback and not is_loopback(urlsplit("//" + request.headers.get("host", "")).hostname or ""):
            # Another site's name resolved to 127.0.0.1 (DNS rebinding) would otherwise be the local user.
            log.warning("console: refused a request for host %r on a loopback console", request.headers.get("host", ""))
            return _refused(console, request, 403, "refused: this console answers to 127.0.0.1 or localhost only")
        who = console.identity(request)
        request.state.identity = who
        if who is None and not public:
            return _refused(console, request, 401, "sign in: this console needs an API token (or your organisation's sign-in)")
        if request.method == "POST":
            _, in_header = token_of(request.headers, request.cookies)
            if not (in_header and who is not None and who.how == "token") and not same_origin(request.headers, request.url.scheme):
                log.warning("console: refused a POST to %s without this console's origin (from %s)", request.url.path, _peer(request))
                return _refused(console, request, 403, "refused: this form was not sent from the console's own page")
        if act and (who is None or not who.may_act):
            log.warning("console: %s (%s) may not %s %s", who.user if who else "nobody", who.role if who else "-", request.method, request.url.path)
            return _refused(console, request, 403, f"{who.user if who else 'you'}: viewers may look, not act; ask for the approver role")
        response = await handler(console, request)
        response.headers.update(SAFE_HEADERS)
        return response

    return endpoint


# No framing (an approve button under another site's page), no script but the console's own file,
# no guessing of content types.
SAFE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _peer(request: Request) -> str:
    return request.client.host if request.client else "?"


def _refused(console: Console, request: Request, status: int, why: str) -> Response:
    headers = {**SAFE_HEADERS, **({"WWW-Authenticate": 'Bearer realm="drdrill console"'} if status == 401 else {})}
    if "text/html" not in request.headers.get("accept", ""):
        return PlainTextResponse(why + "\n", status_code=status, headers=headers)
    html = console.templates.get_template("refused.html.j2").render(status=status, why=why, who=None, settings=console.settings, path="")
    return HTMLResponse(html, status_code=status, headers=headers)


async def form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (first value each); no multipart parser needed."""
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
