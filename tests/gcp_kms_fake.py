"""A small in-process HTTP fake of Cloud KMS (REST v1), for evidence signing with a gcpkms: key.

It serves only the two methods drdrill calls, with the shapes of the official REST reference:
- GET  /v1/{cryptoKeyVersion name}/publicKey        -> PublicKey {pem, algorithm, pemCrc32c, name, protectionLevel}
- POST /v1/{cryptoKeyVersion name}:asymmetricSign   AsymmetricSignRequest {data} (EC_SIGN_ED25519: the
  message itself) or {digest: {sha256}} (EC_SIGN_P256_SHA256) -> AsymmetricSignResponse {signature, name, …}
Errors are Google's `{"error": {"code", "message", "status"}}`: NOT_FOUND for an unknown key version,
INVALID_ARGUMENT for data sent to a digest key or a digest to an Ed25519 key.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed


class CloudKmsFake:
    def __init__(self):
        self.keys: dict[str, tuple[str, object]] = {}  # name -> (algorithm, private key)
        self.calls: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_key(self, name: str, algorithm: str) -> str:
        key = ed25519.Ed25519PrivateKey.generate() if algorithm == "EC_SIGN_ED25519" else ec.generate_private_key(ec.SECP256R1())
        self.keys[name] = (algorithm, key)
        return name

    def __enter__(self) -> "CloudKmsFake":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def handle(self, method: str, path: str, body: dict) -> tuple[int, dict]:
        if not path.startswith("/v1/"):
            return 404, _error(404, "NOT_FOUND", f"no such method {path}")
        name, _, verb = path[4:].partition(":")
        if method == "GET" and name.endswith("/publicKey"):
            name, verb = name[: -len("/publicKey")], "publicKey"
        if name not in self.keys:
            return 404, _error(404, "NOT_FOUND", f"CryptoKeyVersion {name} not found.")
        algorithm, key = self.keys[name]
        self.calls.append(f"{verb} {name}")
        if method == "GET" and verb == "publicKey":
            pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
            return 200, {"pem": pem, "algorithm": algorithm, "name": name, "protectionLevel": "SOFTWARE"}
        if method == "POST" and verb == "asymmetricSign":
            if algorithm == "EC_SIGN_ED25519":
                if "data" not in body or "digest" in body:
                    return 400, _error(400, "INVALID_ARGUMENT", "EC_SIGN_ED25519 keys sign data, not a digest")
                signature = key.sign(base64.b64decode(body["data"]))
            else:
                digest = (body.get("digest") or {}).get("sha256")
                if digest is None or "data" in body:
                    return 400, _error(400, "INVALID_ARGUMENT", "EC_SIGN_P256_SHA256 keys sign a SHA-256 digest")
                signature = key.sign(base64.b64decode(digest), ec.ECDSA(Prehashed(hashes.SHA256())))
            return 200, {"signature": base64.b64encode(signature).decode(), "name": name, "protectionLevel": "SOFTWARE",
                         "verifiedDataCrc32c": "data" in body, "verifiedDigestCrc32c": False}
        return 400, _error(400, "INVALID_ARGUMENT", f"{method} {verb} is not served by this fake")

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, answer = fake.handle(method, self.path.split("?")[0], json.loads(raw) if raw else {})
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


def _error(code: int, status: str, message: str) -> dict:
    return {"error": {"code": code, "message": message, "status": status}}
