"""The isolation proof, run from inside a drill's sandbox (or network namespace): what a restored
backup could reach. Standard library only, so that it runs as a script under the system's
python3 inside the sandbox, which sees neither drdrill's checkout nor its virtual environment:

    python3 -I proof.py --production unix:/var/run/postgresql/.s.PGSQL.5432 --hidden STATE_DIR …

Each check is a dict {name, outcome, detail}; one that cannot run is COULD_NOT_VERIFY.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import sys
from pathlib import Path
from typing import Optional

# Outside the namespace, routed nowhere (TEST-NET-1 and the IPv6 documentation prefix): a broken
# isolation would send a packet to no one, and a sound one answers "network unreachable" at once.
OUTSIDE = (("192.0.2.1", 443), ("2001:db8::1", 443))
# Where libpq and Debian's PostgreSQL put production's Unix sockets by default.
SOCKET_DIRS = ("/var/run/postgresql", "/run/postgresql", "/tmp")


def _address(text: str) -> tuple[str, str, int]:
    """'tcp:HOST:PORT' -> ('tcp', HOST, PORT); 'unix:PATH' -> ('unix', PATH, 0)."""
    kind, _, rest = text.partition(":")
    if kind == "unix" and rest:
        return kind, rest, 0
    host, _, port = rest.rpartition(":")
    if kind != "tcp" or not host or not port.isdigit():
        raise ValueError(f"{text!r}: write tcp:HOST:PORT or unix:PATH")
    return kind, host.strip("[]"), int(port)




def _connect(family: int, address, timeout: float) -> Optional[OSError]:
    """None when it connected; else the error."""
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        return exc
    sock.settimeout(timeout)
    try:
        sock.connect(address)
        return None
    except OSError as exc:
        return exc
    finally:
        sock.close()


def _why(exc: OSError) -> str:
    if isinstance(exc, socket.timeout):
        return "no answer (timed out)"
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


def _routes() -> list[str]:
    """Routes through anything but the loopback (IPv4 and IPv6), as 'dest via dev'."""
    out = []
    try:
        for line in Path("/proc/net/route").read_text().splitlines()[1:]:
            cols = line.split()
            if cols and cols[0] != "lo":
                out.append(f"IPv4 {cols[1]} dev {cols[0]}")
    except OSError:
        pass
    try:
        for line in Path("/proc/net/ipv6_route").read_text().splitlines():
            cols = line.split()
            if cols and cols[-1] != "lo":
                out.append(f"IPv6 {cols[0]}/{int(cols[1], 16)} dev {cols[-1]}")
    except OSError:
        pass
    return out


def check_interfaces() -> dict:
    names = [name for _, name in socket.if_nameindex()]
    ok = names == ["lo"]
    return {"name": "only a loopback interface", "outcome": "PASSED" if ok else "FAILED", "detail": "interfaces: " + ", ".join(names)}


def check_no_route_out(timeout: float = 2.0) -> dict:
    routes = _routes()
    parts, ok = [], not routes
    parts.append("routes: " + ("; ".join(routes) if routes else "loopback only"))
    for host, port in OUTSIDE:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        error = _connect(family, (host, port), timeout)
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if error is None:
            ok = False
            parts.append(f"{where}: connected")
        elif error.errno in (errno.ENETUNREACH, errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            parts.append(f"{where}: {_why(error)}")
        else:
            ok = False
            parts.append(f"{where}: {_why(error)} (expected network unreachable)")
    return {"name": "no route out of the namespace", "outcome": "PASSED" if ok else "FAILED", "detail": "; ".join(parts)}


def check_production(endpoints: list[str], timeout: float = 2.0) -> dict:
    """Each production endpoint ('tcp:HOST:PORT' or 'unix:PATH') must not answer from inside."""
    name = "production unreachable from inside"
    if not endpoints:
        return {"name": name, "outcome": "COULD_NOT_VERIFY", "detail": "no production DSN known: set the target's source.dsn_env or isolation.production_dsn_env"}
    parts, outcome = [], "PASSED"
    for endpoint in endpoints:
        kind, where, port = _address(endpoint)
        if kind == "unix":
            error = _connect(socket.AF_UNIX, where, timeout)
            label = f"Unix socket {where}"
            if error is None:
                outcome = "FAILED"
                parts.append(f"{label}: connected (filesystem sockets cross network namespaces)")
            else:
                parts.append(f"{label}: {_why(error)}")
            continue
        label = f"{where}:{port}"
        try:
            infos = socket.getaddrinfo(where, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            parts.append(f"{label}: cannot be resolved inside ({exc.strerror})")
            continue
        for family, _, _, _, address in infos:
            error = _connect(family, address, timeout)
            if error is None:
                outcome = "FAILED"
                parts.append(f"{label} ({address[0]}): connected")
            elif isinstance(error, socket.timeout):
                outcome = "FAILED"
                parts.append(f"{label} ({address[0]}): no answer within {timeout:.0f}s: packets leave the namespace")
            else:
                note = " (the namespace's own loopback)" if address[0] in ("127.0.0.1", "::1") else ""
                parts.append(f"{label} ({address[0]}): {_why(error)}{note}")
    return {"name": name, "outcome": outcome, "detail": "; ".join(parts)}


# The HTTP/2 client preface and an empty SETTINGS frame: gRPC (the Temporal frontend) answers with SETTINGS.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def check_temporal(address: str, timeout: float = 5.0) -> dict:
    """The Temporal frontend answers HTTP/2 at `address` (the relay's inner half). When it does
    not, the isolation is not in doubt, but the probe cannot work: COULD_NOT_VERIFY."""
    name = "Temporal frontend reachable through the relay"
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(_H2_PREFACE)
            header = b""
            while len(header) < 9:
                chunk = sock.recv(9 - len(header))
                if not chunk:
                    break
                header += chunk
    except OSError as exc:
        return {"name": name, "outcome": "COULD_NOT_VERIFY", "detail": f"{address}: {_why(exc)}"}
    if len(header) == 9 and header[3] == 0x04:
        return {"name": name, "outcome": "PASSED", "detail": f"{address} answered HTTP/2 (gRPC)"}
    return {"name": name, "outcome": "COULD_NOT_VERIFY", "detail": f"{address} did not answer HTTP/2 (got {header[:9]!r})"}


def _reach(endpoint: str, timeout: float) -> tuple[bool, list[str]]:
    """Try one 'tcp:HOST:PORT' or 'unix:PATH'; (connected anywhere, what each attempt said)."""
    kind, where, port = _address(endpoint)
    if kind == "unix":
        error = _connect(socket.AF_UNIX, where, timeout)
        return error is None, [f"Unix socket {where}: " + ("connected" if error is None else _why(error))]
    try:
        infos = socket.getaddrinfo(where, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return False, [f"{where}:{port}: cannot be resolved inside ({exc.strerror})"]
    hit, parts = False, []
    for family, _, _, _, address in infos:
        error = _connect(family, address, timeout)
        hit = hit or error is None or isinstance(error, socket.timeout)
        parts.append(f"{where}:{port} ({address[0]}): " + ("connected" if error is None else _why(error)))
    return hit, parts


def check_socket_dirs(dirs: tuple[str, ...] = SOCKET_DIRS, timeout: float = 2.0) -> dict:
    """The default socket directories hold no PostgreSQL socket that answers: from inside the
    sandbox they are private (tmpfs), whatever production keeps there on the host."""
    name = "production's socket directories private"
    parts, outcome = [], "PASSED"
    for d in dirs:
        try:
            sockets = sorted(e for e in os.listdir(d) if e.startswith(".s.PGSQL.") and not e.endswith(".lock"))
        except FileNotFoundError:
            parts.append(f"{d}: not there")
            continue
        except OSError as exc:
            parts.append(f"{d}: {_why(exc)}")
            continue
        if not sockets:
            parts.append(f"{d}: no PostgreSQL socket")
        for s in sockets:
            error = _connect(socket.AF_UNIX, os.path.join(d, s), timeout)
            if error is None:
                outcome = "FAILED"
            parts.append(f"{d}/{s}: " + ("connected" if error is None else _why(error)))
    return {"name": name, "outcome": outcome, "detail": "; ".join(parts)}


def check_evidence(endpoints: list[str], root: Optional[str], timeout: float = 2.0) -> dict:
    """The evidence store cannot be reached: its DSN's address and every embedded store's socket."""
    name = "evidence store unreachable from inside"
    parts, outcome = [], "PASSED"
    for endpoint in endpoints:
        hit, said = _reach(endpoint, timeout)
        outcome = "FAILED" if hit else outcome
        parts += said
    if root:
        try:
            seen = sorted(e for e in os.listdir(root) if e.startswith("evidence-"))
        except OSError as exc:
            seen = []
            parts.append(f"cluster root {root}: {_why(exc)}")
        if seen:
            outcome = "FAILED"
            parts.append(f"visible under {root}: {', '.join(seen)}")
        else:
            parts.append(f"no evidence store's directory visible under {root}")
    if not parts:
        return {"name": name, "outcome": "COULD_NOT_VERIFY", "detail": "no evidence store address known"}
    return {"name": name, "outcome": outcome, "detail": "; ".join(parts)}


def check_hidden(paths: list[str]) -> dict:
    """drdrill's state directory (evidence files, the embedded stores' data) is not visible."""
    name = "state directory not visible from inside"
    if not paths:
        return {"name": name, "outcome": "COULD_NOT_VERIFY", "detail": "no state directory known"}
    visible = [p for p in paths if os.path.lexists(p)]
    detail = "; ".join(f"{p}: " + ("VISIBLE" if p in visible else "not there") for p in paths)
    return {"name": name, "outcome": "FAILED" if visible else "PASSED", "detail": detail}


def check_temporal_unreachable(addresses: list[str], timeout: float = 2.0) -> dict:
    """Without a probe, nothing inside reaches Temporal."""
    name = "Temporal unreachable (no probe asked for)"
    parts, outcome = [], "PASSED"
    for address in addresses:
        hit, said = _reach(address if address.startswith(("tcp:", "unix:")) else f"tcp:{address}", timeout)
        outcome = "FAILED" if hit else outcome
        parts += said
    return {"name": name, "outcome": outcome, "detail": "; ".join(parts) or "no Temporal address known"}


def prove(production: list[str], temporal: Optional[str], *, sandboxed: bool = False, evidence: Optional[list[str]] = None,
          evidence_root: Optional[str] = None, hidden: Optional[list[str]] = None, temporal_outside: Optional[list[str]] = None) -> list[dict]:
    """The isolation proof, run inside: production cannot be reached, nothing else can, and (with a
    probe) the Temporal frontend can, through the relay. From inside the sandbox (`sandboxed`), also
    production's socket directories, the evidence store, the state directory and Temporal."""
    checks = [check_production(production), check_interfaces(), check_no_route_out()]
    if sandboxed:
        checks += [check_socket_dirs(), check_evidence(evidence or [], evidence_root), check_hidden(hidden or [])]
        if not temporal:
            checks.append(check_temporal_unreachable(temporal_outside or []))
    if temporal:
        checks.append(check_temporal(temporal))
    return checks


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="proof.py")
    parser.add_argument("--production", action="append", default=[])
    parser.add_argument("--temporal")
    parser.add_argument("--sandboxed", action="store_true")
    parser.add_argument("--evidence", action="append", default=[])
    parser.add_argument("--evidence-root")
    parser.add_argument("--hidden", action="append", default=[])
    parser.add_argument("--temporal-outside", action="append", default=[])
    args = parser.parse_args(argv)
    print(json.dumps(prove(args.production, args.temporal, sandboxed=args.sandboxed, evidence=args.evidence,
                           evidence_root=args.evidence_root, hidden=args.hidden, temporal_outside=args.temporal_outside)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
