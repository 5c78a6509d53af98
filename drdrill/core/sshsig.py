"""SSH signatures (`ssh-keygen -Y sign`), verified in pure Python: what approval gates check.

The format is OpenSSH's PROTOCOL.sshsig: an armored blob

    -----BEGIN SSH SIGNATURE-----
    base64( "SSHSIG" | uint32 version=1 | string publickey | string namespace | string reserved
            | string hash_algorithm | string signature )
    -----END SSH SIGNATURE-----

whose `signature` (an SSH signature: string format, string bytes) signs

    "SSHSIG" | string namespace | string reserved | string hash_algorithm | string H(message)

Keys: ssh-ed25519, ecdsa-sha2-nistp256/384/521 and ssh-rsa (signed rsa-sha2-256 or rsa-sha2-512).
Pure computation, no I/O: DrillWorkflow runs it to decide an approval, deterministically, and an
auditor gets the same answer from `ssh-keygen -Y verify`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

MAGIC = b"SSHSIG"
BEGIN = "-----BEGIN SSH SIGNATURE-----"
END = "-----END SSH SIGNATURE-----"
HASHES = {"sha512": hashlib.sha512, "sha256": hashlib.sha256}
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
_EC_HASH = {"ecdsa-sha2-nistp256": hashes.SHA256, "ecdsa-sha2-nistp384": hashes.SHA384, "ecdsa-sha2-nistp521": hashes.SHA512}
_RSA_HASH = {"rsa-sha2-512": hashes.SHA512, "rsa-sha2-256": hashes.SHA256}


class SignatureError(ValueError):
    """The signature is malformed, for another namespace or key, or does not verify: the message says which."""


@dataclass(frozen=True)
class PublicKey:
    """An SSH public key as `allowed_signers` and `authorized_keys` write it: `TYPE BASE64 [comment]`."""

    type: str
    blob: bytes

    @property
    def line(self) -> str:
        """`TYPE BASE64`: the key as an allowed_signers file and `ssh-keygen -Y verify` take it."""
        return f"{self.type} {base64.b64encode(self.blob).decode()}"

    @property
    def fingerprint(self) -> str:
        """`SHA256:…`, as `ssh-keygen -l` prints it."""
        return "SHA256:" + base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")


def parse_public_key(text: str) -> PublicKey:
    """`ssh-ed25519 AAAA… [comment]` → PublicKey; SignatureError naming what is wrong."""
    parts = text.strip().split()
    if len(parts) < 2:
        raise SignatureError("a public key is written `TYPE BASE64 [comment]`, as in ~/.ssh/id_ed25519.pub")
    kind, data = parts[0], parts[1]
    if kind not in KEY_TYPES:
        raise SignatureError(f"key type {kind!r} is not supported; use one of: {', '.join(KEY_TYPES)}")
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"the {kind} key is not valid base64") from None
    key = PublicKey(kind, blob)
    if _Reader(blob).string().decode("ascii", "replace") != kind:
        raise SignatureError(f"the key's data says it is not a {kind} key")
    _load(key)
    return key


def _load(key: PublicKey):
    try:
        return serialization.load_ssh_public_key(key.line.encode())
    except (ValueError, TypeError) as exc:  # cryptography's word for a malformed or unsupported key
        raise SignatureError(f"the {key.type} key cannot be read: {exc}") from None


def parse_allowed_signers(text: str) -> list[tuple[str, str]]:
    """[(principal, `TYPE BASE64`)] from git's and ssh-keygen's allowed_signers format:
    `principals [options] keytype base64 [comment]`, `#` comments, principals comma-separated.
    Options (namespaces=, valid-after=, cert-authority) are not honoured: a line with any is refused."""
    out: list[tuple[str, str]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 3 or parts[1] not in KEY_TYPES:
            raise SignatureError(f"line {n}: expected `principal {KEY_TYPES[0]} AAAA…` (options are not supported)")
        key = parse_public_key(" ".join(parts[1:3]))
        out += [(principal, key.line) for principal in parts[0].split(",") if principal]
    return out


class _Reader:
    """SSH wire format: uint32 lengths, big-endian."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise SignatureError("the signature is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def string(self) -> bytes:
        return self.take(self.uint32())

    def done(self) -> bool:
        return self.pos == len(self.data)


def _string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


@dataclass(frozen=True)
class Signature:
    """A parsed SSHSIG: the signer's key, the namespace, the hash, and the signature itself."""

    key: PublicKey
    namespace: str
    hash_algorithm: str
    sig_format: str
    sig: bytes
    reserved: bytes


def parse(armored: str) -> Signature:
    """The armored text `ssh-keygen -Y sign` writes → Signature (nothing verified yet)."""
    text = armored.strip()
    if not text.startswith(BEGIN) or not text.endswith(END):
        raise SignatureError(f"not an SSH signature: it must start with {BEGIN} and end with {END}")
    body = "".join(text[len(BEGIN) : -len(END)].split())
    try:
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the SSH signature is not valid base64") from None
    r = _Reader(blob)
    if r.take(6) != MAGIC:
        raise SignatureError("not an SSH signature (no SSHSIG preamble)")
    version = r.uint32()
    if version != 1:
        raise SignatureError(f"SSH signature version {version} is not supported (only 1)")
    key_blob, namespace, reserved, hash_alg, sig_blob = r.string(), r.string(), r.string(), r.string(), r.string()
    if not r.done():
        raise SignatureError("the SSH signature has trailing data")
    key_type = _Reader(key_blob).string().decode("ascii", "replace")
    if key_type not in KEY_TYPES:
        raise SignatureError(f"key type {key_type!r} is not supported; use one of: {', '.join(KEY_TYPES)}")
    s = _Reader(sig_blob)
    sig_format, sig = s.string().decode("ascii", "replace"), s.string()
    return Signature(PublicKey(key_type, key_blob), namespace.decode("utf-8", "replace"), hash_alg.decode("ascii", "replace"), sig_format, sig, reserved)


def signed_data(sig: Signature, message: bytes) -> bytes:
    digest = HASHES[sig.hash_algorithm](message).digest()
    return MAGIC + _string(sig.namespace.encode()) + _string(sig.reserved) + _string(sig.hash_algorithm.encode()) + _string(digest)


def verify(armored: str, message: bytes, namespace: str) -> PublicKey:
    """The key that signed `message` in `namespace`; SignatureError when it did not (whoever claims it).

    The caller decides whether that key may sign (an approver's key): this only proves who signed."""
    sig = parse(armored)
    if sig.namespace != namespace:
        raise SignatureError(f"the signature is for namespace {sig.namespace!r}, not {namespace!r}")
    if sig.hash_algorithm not in HASHES:
        raise SignatureError(f"hash algorithm {sig.hash_algorithm!r} is not allowed; use sha512 or sha256")
    key = _load(sig.key)
    data = signed_data(sig, message)
    try:
        _check(key, sig, data)
    except InvalidSignature:
        raise SignatureError(f"the signature by {sig.key.fingerprint} does not match the message") from None
    return sig.key


def _check(key, sig: Signature, data: bytes) -> None:
    if isinstance(key, ed25519.Ed25519PublicKey):
        _expect(sig, "ssh-ed25519")
        key.verify(sig.sig, data)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        _expect(sig, sig.key.type)
        r = _Reader(sig.sig)
        der = encode_dss_signature(int.from_bytes(r.string(), "big"), int.from_bytes(r.string(), "big"))
        key.verify(der, data, ec.ECDSA(_EC_HASH[sig.key.type]()))
    elif isinstance(key, rsa.RSAPublicKey):
        if sig.sig_format not in _RSA_HASH:
            raise SignatureError(f"an RSA signature must be rsa-sha2-512 or rsa-sha2-256, not {sig.sig_format!r}")
        key.verify(sig.sig, data, padding.PKCS1v15(), _RSA_HASH[sig.sig_format]())
    else:  # pragma: no cover - KEY_TYPES lists only the kinds above
        raise SignatureError(f"key type {sig.key.type!r} is not supported")


def _expect(sig: Signature, fmt: str) -> None:
    if sig.sig_format != fmt:
        raise SignatureError(f"a {sig.key.type} key cannot make a {sig.sig_format!r} signature")
