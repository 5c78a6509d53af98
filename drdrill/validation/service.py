"""Service checks: tcp, http, command. A restored service may take a while to start, so these are
tried again until their deadline (drdrill/validation/run.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

from drdrill.providers.activity_io import ValidateInput
from drdrill.core.progress import heartbeat
from drdrill.core.durations import format_duration
from drdrill.validation.common import CouldNotVerify, Failed, endpoint_field, render_template


def tcp_address(inp: ValidateInput) -> tuple[str, int]:
    """Where a tcp check connects: its fixed host, or its target's host (and port, unless given)."""
    v = inp.validation
    if v.host is not None:
        return v.host, v.port
    host = endpoint_field(inp, "host")
    return host, v.port if v.port is not None else int(endpoint_field(inp, "port"))


def http_url(inp: ValidateInput) -> str:
    """What an http check GETs: its url (a template filled from the target's endpoint), or the
    target's host with `port` and `path`."""
    v = inp.validation
    if v.url is not None:
        return render_template(inp, v.url) if v.target is not None else v.url
    host = endpoint_field(inp, "host")
    return f"{v.scheme}://{f'[{host}]' if ':' in host else host}:{v.port}{v.path}"


def check_tcp(inp: ValidateInput, ct: float):
    v = inp.validation
    host, port = tcp_address(inp)
    try:
        with socket.create_connection((host, port), timeout=min(ct, v.timeout.total_seconds() or ct)):
            return f"{host}:{port} accepts connections", {}, True
    except ConnectionRefusedError as exc:
        raise Failed(f"{host}:{port} refused the connection: nothing listens there") from exc
    except (socket.gaierror, socket.timeout, OSError) as exc:
        raise CouldNotVerify(f"{host}:{port} could not be reached: {exc}") from exc


def check_http(inp: ValidateInput, ct: float):
    v = inp.validation
    url = http_url(inp)
    req = urllib.request.Request(url, headers={"User-Agent": "drdrill-validation"})
    try:
        with urllib.request.urlopen(req, timeout=ct) as resp:  # noqa: S310 - the user's URL
            status, body = resp.status, resp.read(1 << 20).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        status, body = exc.code, (exc.read(1 << 20) or b"").decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        raise CouldNotVerify(f"{url} could not be reached: {getattr(exc, 'reason', exc)}") from exc
    if status != v.expect_status:
        raise Failed(f"{url} answered {status}, expected {v.expect_status}")
    if v.contains is not None and v.contains not in body:
        raise Failed(f"{url} answered {status} but the body lacks {v.contains!r}")
    return f"{url} answered {status}" + (f" containing {v.contains!r}" if v.contains else ""), {"status": status}, True


def check_command(inp: ValidateInput, ct: float):
    v = inp.validation
    env = command_env(v.env, drdrill_check=_is_drdrill_check(v.argv))
    if inp.resource is not None:
        for k, val in inp.resource.endpoint.items():
            env[f"DRDRILL_{k.upper()}"] = str(val)
    try:
        proc = subprocess.Popen(v.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    except (FileNotFoundError, PermissionError) as exc:
        raise CouldNotVerify(f"command cannot be run: {v.argv[0]}: {exc.strerror}", retry=False) from exc
    deadline = time.monotonic() + max(1.0, v.timeout.total_seconds())
    try:
        while True:
            try:
                output, _ = proc.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                heartbeat({"command": os.path.basename(v.argv[0])})  # raises when the drill is cancelled
                if time.monotonic() > deadline:
                    raise CouldNotVerify(f"command did not finish within {format_duration(v.timeout)}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    tail = (output or "").strip().splitlines()[-3:]
    detail = f"{os.path.basename(v.argv[0])} exited {proc.returncode} (expected {v.expect_exit})" + (
        f": {' | '.join(tail)}" if tail else ""
    )
    if proc.returncode != v.expect_exit:
        raise Failed(detail)
    return detail, {"exit": proc.returncode}, True


_COMMAND_BASE = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH", "VIRTUAL_ENV")


# The cloud SDKs' own configuration, handed only to drdrill's own `drdrill check …` (it reads the
# restored resource through the worker's cloud identity); their secrets are redacted by name and
# shape. Any other command gets none of it: only what the drill names.
_COMMAND_PREFIXES = ("AWS_", "AZURE_", "ARM_", "GOOGLE_", "CLOUDSDK_", "DRDRILL_")


def _is_drdrill_check(argv: list[str]) -> bool:
    return len(argv) >= 2 and os.path.basename(argv[0]) == "drdrill" and argv[1] == "check"


def command_env(named: list[str], environ=None, drdrill_check: bool = False) -> dict[str, str]:
    """What a command check runs with: not the worker's environment, but PATH and the locale, the
    variables the drill names (each value registered for redaction whatever its name) and, for
    drdrill's own `drdrill check`, the cloud SDKs' configuration (DRDRILL_* but its secrets)."""
    from drdrill.core.redact import register_secret, secret_name

    environ = os.environ if environ is None else environ
    env = {k: environ[k] for k in _COMMAND_BASE if k in environ}
    if drdrill_check:
        env.update({k: val for k, val in environ.items() if k.startswith(_COMMAND_PREFIXES) and not (k.startswith("DRDRILL_") and secret_name(k))})
    missing = [n for n in named if n not in environ]
    if missing:
        raise CouldNotVerify(f"the command's variable{'s' if len(missing) > 1 else ''} {', '.join(missing)} {'are' if len(missing) > 1 else 'is'} not set on this worker", retry=False)
    for name in named:
        register_secret(environ[name])
        env[name] = environ[name]
    return env
