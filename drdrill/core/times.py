"""Times as drdrill reads and writes them: timezone-aware, UTC, ISO 8601 with a 'Z'."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Optional


_FRACTION = re.compile(r"(\.\d+)")


def parse_time(value: Any) -> Optional[datetime]:
    """An aware datetime from an ISO 8601 string or a datetime (naive means UTC); None for ""/None.

    Raises ValueError for text that is not a time."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    text = _FRACTION.sub(lambda m: m.group(1)[:7].ljust(7, "0"), str(value).strip().replace("Z", "+00:00").replace("z", "+00:00"))
    parsed = datetime.fromisoformat(text)  # fractions as microseconds (ARM writes 7 digits; Python 3.10 reads only 3 or 6)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def parse_time_or_none(value: Any) -> Optional[datetime]:
    """parse_time, but None for text that is not a time (a malformed tag is no expiry)."""
    try:
        return parse_time(value)
    except (TypeError, ValueError):
        return None


def format_time(value: datetime) -> str:
    """2026-11-29T18:00:00Z (seconds, UTC): the form of drdrill's tags and labels."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
