"""A small in-process HTTP fake of Azure Key Vault keys (REST, api-version 7.4), for evidence signing
with an azurekv: key.

Only what drdrill calls, with the shapes of the official REST reference:
- GET  /keys/{name}[/{version}]?api-version=7.4  -> KeyBundle {key: JsonWebKey {kid, kty: "EC", crv: "P-256",
  x, y, key_ops}, attributes}
- POST /keys/{name}/{version}/sign?api-version=7.4  KeySignParameters {alg: "ES256", value: base64url
  SHA-256 digest} -> KeyOperationResult {kid, value: base64url r||s}
Every request needs `Authorization: Bearer <token>` (else 401 Unauthorized) and an api-version (else
400 BadParameter); errors are Key Vault's `{"error": {"code", "message"}}`.

`bin_with_az(dir, token)` writes a fake `az` (the Azure CLI) that answers
`az account get-access-token --resource https://vault.azure.net` with that token, as
azure-identity's AzureCliCredential reads it.
"""

from __future__ import annotations

import base64
import json
import stat
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class KeyVaultFake:
    def __init__(self, token: str):
        self.token = token
        self.keys: dict[str, tuple[str, ec.EllipticCurvePrivateKey]] = {}  # name -> (version, key)
        self.calls: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_key(self, name: str) -> str:
        self.keys[name] = (uuid.uuid4().hex, ec.generate_private_key(ec.SECP256R1()))
        return f"{self.url}/keys/{name}"

    def __enter__(self) -> "KeyVaultFake":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def handle(self, method: str, raw_path: str, headers, body: dict) -> tuple[int, dict]:
        parts = urlsplit(raw_path)
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}}
        if "api-version" not in parse_qs(parts.query):
            return 400, {"error": {"code": "BadParameter", "message": "The request URI is missing the api-version."}}
        path = parts.path.strip("/").split("/")
        if len(path) < 2 or path[0] != "keys" or path[1] not in self.keys:
            return 404, {"error": {"code": "KeyNotFound", "message": f"A key with (name/id) {'/'.join(path[1:3])} was not found in this key vault."}}
        version, key = self.keys[path[1]]
        if len(path) >= 3 and path[2] != version:
            return 404, {"error": {"code": "KeyNotFound", "message": f"A key with (name/id) {path[1]}/{path[2]} was not found in this key vault."}}
        kid = f"{self.url}/keys/{path[1]}/{version}"
        self.calls.append(f"{method} {'/'.join(path)}")
        if method == "GET" and len(path) in (2, 3):
            numbers = key.public_key().public_numbers()
            jwk = {"kid": kid, "kty": "EC", "crv": "P-256", "key_ops": ["sign", "verify"],
                   "x": _b64url(numbers.x.to_bytes(32, "big")), "y": _b64url(numbers.y.to_bytes(32, "big"))}
            return 200, {"key": jwk, "attributes": {"enabled": True, "recoveryLevel": "Recoverable+Purgeable"}}
        if method == "POST" and len(path) == 4 and path[3] == "sign":
            if body.get("alg") != "ES256":
                return 400, {"error": {"code": "BadParameter", "message": f"Invalid algorithm {body.get('alg')} for an EC P-256 key"}}
            digest = base64.urlsafe_b64decode(body["value"] + "=" * (-len(body["value"]) % 4))
            if len(digest) != 32:
                return 400, {"error": {"code": "BadParameter", "message": "ES256 signs a 32-byte SHA-256 digest"}}
            r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
            return 200, {"kid": kid, "value": _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))}
        return 405, {"error": {"code": "BadParameter", "message": f"{method} {parts.path} is not served by this fake"}}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, answer = fake.handle(method, self.path, self.headers, json.loads(raw) if raw else {})
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

        return Handler


def bin_with_az(folder: Path, token: str) -> Path:
    """A directory holding a fake `az` that hands out `token` for Key Vault, and nothing else."""
    folder.mkdir(parents=True, exist_ok=True)
    az = folder / "az"
    answer = json.dumps({"accessToken": token, "expires_on": 4102444800, "tokenType": "Bearer"})  # 2100-01-01
    az.write_text(
        "#!/bin/sh\n"
        'case "$*" in *"get-access-token"*"--resource https://vault.azure.net"*) ;; *) echo "fake az: unexpected: $*" >&2; exit 1;; esac\n'
        f"echo '{answer}'\n"
    )
    az.chmod(az.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder
