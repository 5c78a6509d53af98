"""Redaction: secrets never reach logs, events or evidence.

Two layers: values of secret-looking environment variables (and any registered at run time) are
replaced wherever they appear, and secret-shaped substrings (passwords in DSNs and URLs, AWS keys,
bearer tokens, presigned-URL signatures) are masked by pattern.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Optional

MASK = "***"
_SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|_DSN$|^DSN|_KEY$|CREDENTIAL|WEBHOOK|_URL_SECRET)", re.I)
_registered: set[str] = set()

_PATTERNS = [
    # key=value in libpq conninfo strings
    (re.compile(r"(password\s*=\s*)('[^']*'|[^\s]+)", re.I), r"\1" + MASK),
    # scheme://user:password@host
    (re.compile(r"([a-z][a-z0-9+.-]*://[^/\s:@]+:)([^@\s/]+)(@)", re.I), r"\1" + MASK + r"\3"),
    # presigned URL signatures and tokens in query strings
    (re.compile(r"((?:X-Amz-Signature|X-Amz-Security-Token|X-Amz-Credential|sig|signature|token|access_token|code)=)([^&\s\"']+)", re.I), r"\1" + MASK),
    # Authorization headers
    (re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}", re.I), r"\1" + MASK),
    # AWS access key ids
    (re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"), MASK),
    # Slack-style webhook paths
    (re.compile(r"(hooks\.slack\.com/services/)[A-Za-z0-9/]+"), r"\1" + MASK),
    # GCS signed URLs and Azure SAS / connection strings
    (re.compile(r"((?:X-Goog-Signature|X-Goog-Credential)=)([^&\s\"']+)", re.I), r"\1" + MASK),
    (re.compile(r"((?:AccountKey|SharedAccessKey|SharedAccessSignature|AccountSecret)=)([^;\s\"']+)", re.I), r"\1" + MASK),
    # well-known token shapes: GitHub, Slack, JSON Web Tokens, private keys
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}\b"), MASK),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), MASK),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), MASK),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S), MASK),
    # "password": "...", password: ... inside free text (JSON or YAML fragments)
    (re.compile(r"""((?:["']?)(?:password|passwd|secret|token|api[_-]?key|secret[_-]?access[_-]?key)["']?\s*[:=]\s*["']?)([^"'\s,;}&]+)""", re.I), r"\1" + MASK),
]

# Keys whose whole value is a secret (or a DSN, which may carry one): masked in structured evidence.
_SECRET_KEY = re.compile(
    r"(^|[_-])(password|passwd|pwd|secret|token|dsn|conninfo|api[_-]?key|access[_-]?key|secret[_-]?key|private[_-]?key|"
    r"authorization|credentials?|connection[_-]?string|presigned[_-]?url|signed[_-]?url|sas[_-]?url|webhook(_url)?)$",
    re.I,
)


def register_secret(value: str) -> None:
    if value and len(value) >= 4:
        _registered.add(value)


def secret_name(name: str) -> bool:
    """A variable whose name says it holds a secret."""
    return bool(_SECRET_NAME.search(name))


def secret_values() -> list[str]:
    values = set(_registered)
    for name, value in os.environ.items():
        if _SECRET_NAME.search(name) and value and len(value) >= 4:
            values.add(value)
    return sorted(values, key=len, reverse=True)


def redact(text: str, _values: Optional[list[str]] = None) -> str:
    if not text:
        return text
    for value in secret_values() if _values is None else _values:
        if value in text:
            text = text.replace(value, MASK)
    for rx, repl in _PATTERNS:
        text = rx.sub(repl, text)
    return text


def redact_keeping(text: str, keep: list[str]) -> str:
    """Redact `text` but for the literal strings in `keep`: a check's own expected text, which the
    drill file states in the open (`containing 'token=abc'` must not read `token=***`)."""
    kept = sorted({k for k in keep if k} | {repr(k)[1:-1] for k in keep if k}, key=len, reverse=True)
    if not text or not kept:
        return redact(text)
    parts = re.split("(" + "|".join(map(re.escape, kept)) + ")", text)
    values = secret_values()
    return "".join(p if i % 2 else redact(p, values) for i, p in enumerate(parts))


def redact_obj(obj: Any, _values: Optional[list[str]] = None) -> Any:
    """Redact every string inside a JSON-like structure (the secret values are read once)."""
    if _values is None:
        _values = secret_values()
    if isinstance(obj, str):
        return redact(obj, _values)
    if isinstance(obj, dict):
        return {k: (MASK if _secret_key(k, v) else redact_obj(v, _values)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v, _values) for v in obj]
    return obj


def _secret_key(key: Any, value: Any) -> bool:
    return isinstance(key, str) and isinstance(value, str) and bool(value) and bool(_SECRET_KEY.search(key))


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001
            return True
        record.msg = redact(message)
        record.args = ()
        return True


def install_log_redaction() -> None:
    root = logging.getLogger()
    for h in root.handlers:
        h.addFilter(RedactingFilter())
    root.addFilter(RedactingFilter())
