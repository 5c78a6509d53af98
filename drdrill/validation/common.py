"""What every check shares: how it says it could not verify or failed, how it compares a value with
`expect`, and how it reads its restored target's endpoint.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Optional

from drdrill.providers.activity_io import ValidateInput
from drdrill.core.schema import ENDPOINT_TEMPLATE_RE


class CouldNotVerify(Exception):
    """The check could not be carried out (no connection, bad query, missing tool).

    `retry`: worth trying again until the deadline (a connection refused while a service starts);
    False when trying again cannot help (no manifest to compare with, a query that does not parse).
    """

    def __init__(self, message: str, retry: bool = True, measured: Optional[dict] = None):
        super().__init__(message)
        self.retry = retry
        self.measured = measured or {}  # what the check did measure (a volume check's first counts)


class Failed(Exception):
    """The check ran and the answer was wrong."""


_EXPECT_RE = re.compile(r"^\s*(==|!=|>=|<=|>|<)\s*(.+?)\s*$")


def compare(actual: Any, expect: str) -> bool:
    op, raw = _EXPECT_RE.match(expect).groups()  # type: ignore[union-attr]
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        expected: Any = raw[1:-1]
        actual = "" if actual is None else str(actual)
    elif raw.lower() in ("true", "false"):
        expected = raw.lower() == "true"
    elif raw.lower() == "null":
        expected = None
    else:
        try:
            expected = Decimal(raw)
        except Exception as exc:  # noqa: BLE001
            raise CouldNotVerify(f"cannot compare with {raw!r}: quote text values, e.g. == 'ok'", retry=False) from exc
        if isinstance(actual, bool) or actual is None:
            raise Failed(f"got {actual!r}, expected a number {expect}")
        try:
            actual = Decimal(str(actual))
        except Exception as exc:  # noqa: BLE001
            raise Failed(f"got {actual!r}, expected a number {expect}") from exc
    if expected is None or isinstance(expected, bool):
        if op not in ("==", "!="):
            raise CouldNotVerify(f"{expect}: only == and != apply to {raw}", retry=False)
    try:
        return {
            "==": lambda a, b: a == b,
            "!=": lambda a, b: a != b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
        }[op](actual, expected)
    except TypeError as exc:
        raise Failed(f"got {actual!r}, which cannot be compared {expect}") from exc


def now() -> datetime:
    return datetime.now(timezone.utc)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def short(q: str, n: int = 60) -> str:
    q = " ".join(q.split())
    return q if len(q) <= n else q[: n - 1] + "…"


def jsonable(value: Any) -> Any:
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


def endpoint_field(inp: ValidateInput, name: str) -> str:
    """A field of the check's restored target's endpoint (its host, port, private_ip, …)."""
    res = inp.resource
    endpoint = res.endpoint if res is not None else {}
    value = endpoint.get(name)
    if value in (None, ""):
        target = getattr(inp.validation, "target", None) or "?"
        known = ", ".join(k for k, val in endpoint.items() if val not in (None, "")) or "nothing"
        raise CouldNotVerify(f"target {target} publishes no {name!r} (its endpoint has: {known})", retry=False)
    return str(value)


def render_template(inp: ValidateInput, template: str) -> str:
    """A url template with each {field} replaced by the target's endpoint field."""
    return ENDPOINT_TEMPLATE_RE.sub(lambda m: endpoint_field(inp, m.group(1)), template)
