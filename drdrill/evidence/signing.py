"""Who signs the evidence: one key per state directory, or a key in a cloud KMS.

The key never lives in the evidence store: whoever can write the store cannot sign.

- Without DRDRILL_EVIDENCE_KEY: an Ed25519 key in `<state dir>/evidence-signing-key.pem`, made on
  first use (O_EXCL, 0600, then linked into place, so two processes never make two keys and no
  one ever reads half a key). A key file that others can read or write is refused.
- DRDRILL_EVIDENCE_KEY=awskms:<key id, ARN or alias>: AWS KMS signs. An ECC_NIST_EDWARDS25519 key
  signs with ED25519_SHA_512 (plain Ed25519), an ECC_NIST_P256 key with ECDSA_SHA_256; the
  algorithm is recorded with every signature.
- DRDRILL_EVIDENCE_KEY=gcpkms:projects/…/cryptoKeyVersions/N: Cloud KMS signs (EC_SIGN_ED25519 or
  EC_SIGN_P256_SHA256).
- DRDRILL_EVIDENCE_KEY=azurekv:https://<vault>.vault.azure.net/keys/<name>[/<version>]: Key Vault signs
  with an EC P-256 key (ES256; Key Vault has no Ed25519).

Every signature is recorded with its algorithm (`ed25519` or `ecdsa-p256-sha256`) and the public key
in OpenSSH form, whose SHA256 fingerprint (as `ssh-keygen -l` prints it) names the key.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path
from typing import Iterable, Optional, Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from drdrill.core.paths import default_state_dir

KEY_FILE = "evidence-signing-key.pem"
TRUSTED_KEYS_FILE = "evidence-trusted-keys"
ED25519 = "ed25519"
ECDSA_P256 = "ecdsa-p256-sha256"


class SigningError(Exception):
    """The signing key cannot be made, read or used (the message names the key and the fix).
    `retryable`: a KMS that could not be reached, rather than a key that is wrong."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class Signer(Protocol):
    alg: str
    public_key: str  # OpenSSH form

    def sign(self, payload: bytes) -> bytes: ...


# ------------------------------------------------------------------ public keys


def openssh(public_key) -> str:
    return public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def fingerprint(public_key_openssh: str) -> str:
    """SHA256:<base64, unpadded> of the key blob, as `ssh-keygen -l` prints it."""
    blob = base64.b64decode(public_key_openssh.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def pem(public_key_openssh: str) -> str:
    key = serialization.load_ssh_public_key(" ".join(public_key_openssh.split()[:2]).encode())
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def parse_public_keys(text: str, source: str) -> list[str]:
    """Public keys (OpenSSH form) in a PEM file or in OpenSSH lines (`ssh-ed25519 AAAA… comment`,
    blank lines and `#` comments ignored)."""
    if "-----BEGIN PUBLIC KEY-----" in text:
        try:
            return [openssh(serialization.load_pem_public_key(text.encode()))]
        except ValueError as exc:
            raise SigningError(f"{source}: not a PEM public key ({exc})") from None
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(openssh(serialization.load_ssh_public_key(" ".join(line.split()[:2]).encode())))
        except (ValueError, IndexError, UnsupportedAlgorithm):
            raise SigningError(f"{source} line {n}: not a public key; write one key per line, as `drdrill evidence key` prints it") from None
    return keys


def verify_signature(alg: str, public_key_openssh: str, payload: bytes, signature: bytes) -> bool:
    try:
        key = serialization.load_ssh_public_key(" ".join(public_key_openssh.split()[:2]).encode())
        if alg == ED25519 and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, payload)
        elif alg == ECDSA_P256 and isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
            key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except (InvalidSignature, ValueError, IndexError, UnsupportedAlgorithm):
        return False
    return True


# ------------------------------------------------------------------ the key file


class FileSigner:
    alg = ED25519

    def __init__(self, path: Path):
        self.path = path
        self._key = _load_or_create(path)
        self.public_key = openssh(self._key.public_key())

    def sign(self, payload: bytes) -> bytes:
        return self._key.sign(payload)


def key_path(state_dir: Optional[str | Path] = None) -> Path:
    return Path(state_dir or default_state_dir()).expanduser() / KEY_FILE


def _load_or_create(path: Path) -> ed25519.Ed25519PrivateKey:
    if not path.exists():
        _create(path)
    st = path.stat()
    if st.st_mode & 0o077 or st.st_uid != os.geteuid():
        raise SigningError(
            f"{path}: the evidence signing key must be yours and private (mode {stat.S_IMODE(st.st_mode):o}); "
            f"fix it with `chmod 600 {path}`, or move it away to make a new key"
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningError(f"{path}: not a readable evidence signing key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SigningError(f"{path}: not an Ed25519 private key")
    return key


def _create(path: Path) -> None:
    """Write a new key to a private temporary file (O_EXCL, 0600) and link it into place: if
    another process made the key meanwhile, the link fails and its key is used."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------ cloud KMS


class AwsKmsSigner:
    """A KMS asymmetric key (KeyUsage SIGN_VERIFY): ECC_NIST_EDWARDS25519 or ECC_NIST_P256."""

    SPECS = {"ECC_NIST_EDWARDS25519": (ED25519, "ED25519_SHA_512"), "ECC_NIST_P256": (ECDSA_P256, "ECDSA_SHA_256")}

    def __init__(self, key_id: str):
        import boto3  # only when a KMS key is configured
        from botocore.exceptions import BotoCoreError, ClientError

        self.key_id = key_id
        region = key_id.split(":")[3] if key_id.startswith("arn:") else None
        self._errors = (BotoCoreError, ClientError)
        self._kms = boto3.client("kms", endpoint_url=os.environ.get("DRDRILL_AWS_ENDPOINT_URL") or None, region_name=region)
        try:
            info = self._kms.get_public_key(KeyId=key_id)
        except self._errors as exc:
            raise SigningError(f"DRDRILL_EVIDENCE_KEY=awskms:{key_id}: cannot read the public key: {exc}", retryable=True) from None
        spec = info.get("KeySpec") or info.get("CustomerMasterKeySpec")
        if spec not in self.SPECS or info.get("KeyUsage") != "SIGN_VERIFY":
            raise SigningError(
                f"DRDRILL_EVIDENCE_KEY=awskms:{key_id}: a {spec} key for {info.get('KeyUsage')}; "
                "use a SIGN_VERIFY key of spec ECC_NIST_EDWARDS25519 or ECC_NIST_P256"
            )
        self.alg, self._kms_alg = self.SPECS[spec]
        self.public_key = openssh(serialization.load_der_public_key(info["PublicKey"]))

    def sign(self, payload: bytes) -> bytes:
        try:
            return self._kms.sign(KeyId=self.key_id, Message=payload, MessageType="RAW", SigningAlgorithm=self._kms_alg)["Signature"]
        except self._errors as exc:
            raise SigningError(f"DRDRILL_EVIDENCE_KEY=awskms:{self.key_id}: signing failed: {exc}", retryable=True) from None


class GcpKmsSigner:
    """A Cloud KMS key version (purpose ASYMMETRIC_SIGN), over its REST API:
    `projects/P/locations/L/keyRings/R/cryptoKeys/K/cryptoKeyVersions/V`. EC_SIGN_ED25519 signs the
    payload itself; EC_SIGN_P256_SHA256 signs its SHA-256 digest. DRDRILL_GCP_KMS_ENDPOINT points
    at another endpoint; DRDRILL_GCP_ANONYMOUS=1 uses no credentials (fakes only)."""

    ALGORITHMS = {"EC_SIGN_ED25519": ED25519, "EC_SIGN_P256_SHA256": ECDSA_P256}
    SCOPE = "https://www.googleapis.com/auth/cloud-platform"

    def __init__(self, name: str):
        import google.auth  # only when a Cloud KMS key is configured
        from google.auth.credentials import AnonymousCredentials
        from google.auth.exceptions import GoogleAuthError
        from google.auth.transport.requests import AuthorizedSession
        from requests import RequestException

        self.name = name
        self._errors = (GoogleAuthError, RequestException)
        self._endpoint = (os.environ.get("DRDRILL_GCP_KMS_ENDPOINT") or "https://cloudkms.googleapis.com").rstrip("/")
        try:
            if os.environ.get("DRDRILL_GCP_ANONYMOUS", "").lower() in ("1", "true", "yes"):
                credentials = AnonymousCredentials()
            else:
                credentials, _ = google.auth.default(scopes=[self.SCOPE])
        except self._errors as exc:
            raise SigningError(f"DRDRILL_EVIDENCE_KEY=gcpkms:{name}: no Google credentials: {exc}") from None
        self._session = AuthorizedSession(credentials)
        info = self._call("GET", "/publicKey")
        if info.get("algorithm") not in self.ALGORITHMS:
            raise SigningError(f"DRDRILL_EVIDENCE_KEY=gcpkms:{name}: a {info.get('algorithm')} key; use EC_SIGN_ED25519 or EC_SIGN_P256_SHA256")
        self.alg = self.ALGORITHMS[info["algorithm"]]
        self.public_key = openssh(serialization.load_pem_public_key(info["pem"].encode()))

    def _call(self, method: str, suffix: str, body: Optional[dict] = None) -> dict:
        where = f"DRDRILL_EVIDENCE_KEY=gcpkms:{self.name}"
        try:
            response = self._session.request(method, f"{self._endpoint}/v1/{self.name}{suffix}", json=body, timeout=30)
        except self._errors as exc:
            raise SigningError(f"{where}: Cloud KMS could not be asked: {exc}", retryable=True) from None
        return _answer(response, f"{where}: Cloud KMS", "status")

    def sign(self, payload: bytes) -> bytes:
        if self.alg == ED25519:
            body = {"data": base64.b64encode(payload).decode()}
        else:
            body = {"digest": {"sha256": base64.b64encode(hashlib.sha256(payload).digest()).decode()}}
        return base64.b64decode(self._call("POST", ":asymmetricSign", body)["signature"])


class AzureKeyVaultSigner:
    """A Key Vault key, `https://<vault>.vault.azure.net/keys/<name>[/<version>]`, over the REST API
    (api-version 7.4). Key Vault has no Ed25519: an EC P-256 key signs ES256 (the SHA-256 digest; its
    r||s signature is recorded DER-encoded, as `ecdsa-p256-sha256`). The token comes from
    DefaultAzureCredential (AZURE_TOKEN_CREDENTIALS narrows it) for DRDRILL_AZURE_KEYVAULT_SCOPE
    (default https://vault.azure.net/.default). Plain http is accepted for a loopback host only (fakes)."""

    API_VERSION = "7.4"

    def __init__(self, url: str):
        from urllib.parse import urlsplit

        from azure.core.exceptions import AzureError
        from azure.identity import DefaultAzureCredential
        from requests import RequestException

        self.url, self._where = url.rstrip("/"), f"DRDRILL_EVIDENCE_KEY=azurekv:{url}"
        parts = urlsplit(self.url)
        path = parts.path.strip("/").split("/")
        secure = parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1"))
        if not secure or len(path) not in (2, 3) or path[0] != "keys":
            raise SigningError(f"{self._where}: not a Key Vault key URL; write azurekv:https://<vault>.vault.azure.net/keys/<name>[/<version>]")
        self._errors = (AzureError, RequestException)
        self._credential = DefaultAzureCredential()
        self._scope = os.environ.get("DRDRILL_AZURE_KEYVAULT_SCOPE") or "https://vault.azure.net/.default"
        key = self._call("GET", self.url).get("key") or {}
        if key.get("kty") not in ("EC", "EC-HSM") or key.get("crv") != "P-256":
            raise SigningError(f"{self._where}: a {key.get('kty')} {key.get('crv') or ''} key; use an EC key on curve P-256")
        self._kid = key["kid"]
        numbers = ec.EllipticCurvePublicNumbers(_b64url_int(key["x"]), _b64url_int(key["y"]), ec.SECP256R1())
        self.alg, self.public_key = ECDSA_P256, openssh(numbers.public_key())

    def _call(self, method: str, url: str, body: Optional[dict] = None) -> dict:
        import requests

        try:
            token = self._credential.get_token(self._scope).token
            response = requests.request(method, url, params={"api-version": self.API_VERSION}, json=body, timeout=30,
                                        headers={"Authorization": f"Bearer {token}"}, verify=os.environ.get("DRDRILL_AZURE_CA_BUNDLE") or True)
        except self._errors as exc:
            raise SigningError(f"{self._where}: Key Vault could not be asked: {exc}", retryable=True) from None
        return _answer(response, f"{self._where}: Key Vault", "code")

    def sign(self, payload: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

        digest = base64.urlsafe_b64encode(hashlib.sha256(payload).digest()).decode().rstrip("=")
        raw = _b64url(self._call("POST", f"{self._kid}/sign", {"alg": "ES256", "value": digest})["value"])
        return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64url_int(text: str) -> int:
    return int.from_bytes(_b64url(text), "big")


def signer(state_dir: Optional[str | Path] = None) -> Signer:
    """The signer of this state directory: DRDRILL_EVIDENCE_KEY if set, else its key file (made now
    if it does not exist yet)."""
    ref = os.environ.get("DRDRILL_EVIDENCE_KEY", "").strip()
    if not ref:
        return FileSigner(key_path(state_dir))
    scheme, _, rest = ref.partition(":")
    if scheme == "awskms" and rest:
        return AwsKmsSigner(rest)
    if scheme == "gcpkms" and rest:
        return GcpKmsSigner(rest)
    if scheme == "azurekv" and rest:
        return AzureKeyVaultSigner(rest)
    raise SigningError(f"DRDRILL_EVIDENCE_KEY={ref}: not a key reference; write awskms:<key id or ARN>, gcpkms:projects/…/cryptoKeyVersions/N or azurekv:https://<vault>/keys/<name>, or unset it for the key file")


def own_public_key(state_dir: Optional[str | Path] = None) -> Optional[str]:
    """This state directory's public key, without making a key file that does not exist yet."""
    if not os.environ.get("DRDRILL_EVIDENCE_KEY", "").strip() and not key_path(state_dir).exists():
        return None
    return signer(state_dir).public_key


def trusted_keys(state_dir: Optional[str | Path] = None, extra: Iterable[Path] = ()) -> dict[str, str]:
    """{fingerprint: public key} that verification accepts: this state directory's own key, the
    keys listed in `<state dir>/evidence-trusted-keys` (earlier keys after a rotation, other
    workers' keys) and the files in `extra` (`--trust`)."""
    keys: list[str] = []
    own = own_public_key(state_dir)
    if own:
        keys.append(own)
    listed = Path(state_dir or default_state_dir()).expanduser() / TRUSTED_KEYS_FILE
    for path in ([listed] if listed.exists() else []) + list(extra):
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise SigningError(f"{path}: cannot read trusted keys ({exc.strerror})") from None
        keys += parse_public_keys(text, str(path))
    return {fingerprint(k): k for k in keys}


def _answer(response, who: str, reason: str) -> dict:
    """A key service's JSON answer; anything but 200 is a SigningError naming `who`, the status and
    the service's own `error.<reason>` and message (retryable for throttling and server errors)."""
    try:
        data = response.json()
    except ValueError:
        data = {}
    if response.status_code != 200:
        error = data.get("error") or {}
        raise SigningError(f"{who} answered {response.status_code} {error.get(reason, '')}: {error.get('message', '')}",
                           retryable=response.status_code in (429, 500, 502, 503, 504))
    return data
