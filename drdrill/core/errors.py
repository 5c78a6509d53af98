"""ProviderError: a step that failed, with a stable finding code (e.g. RECOVERY_POINT_NOT_FOUND).

It lives in the core because both the providers and the local-PostgreSQL toolkit below them
(drdrill/localpg/) raise it; `drdrill.providers.base` hands it to every provider."""

from __future__ import annotations

from typing import Optional

from drdrill.core.models import Finding


class ProviderError(Exception):
    """A provider operation failed. `code` is a stable finding code (e.g. RECOVERY_POINT_NOT_FOUND)."""

    def __init__(self, code: str, message: str, *, retryable: bool = False, could_not_verify: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.could_not_verify = could_not_verify

    def finding(self, target: Optional[str] = None) -> Finding:
        return Finding(code=self.code, message=self.message, target=target, could_not_verify=self.could_not_verify)
