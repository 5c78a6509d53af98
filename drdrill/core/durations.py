"""Durations and times as a drill file writes them: `30m`, `1h30m`, `7d`; times with a timezone."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError
from pydantic.functional_validators import BeforeValidator

_DURATION_RE = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
MAX_DURATION = timedelta(days=3660)
# Built once: every duration of a spec sent through Temporal arrives in ISO form and passes here, and
# building an adapter per value was 4% of a worker's Python CPU in a burst (bench/RESULTS.md §18).
_ISO_DURATION = TypeAdapter(timedelta)


def parse_duration(value: Any) -> timedelta:
    """Parse `30m`, `1h30m`, `2d`, `45s` (or a number of seconds) into a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration such as 30s, 15m, 1h30m or 7d, not a boolean")
    if isinstance(value, (int, float)):
        if value < 0 or value != value or value > MAX_DURATION.total_seconds():
            raise ValueError("a duration must be between 0 and 3660d")
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise ValueError("a duration such as 30s, 15m, 1h30m or 7d")
    if value.strip().upper().startswith("P"):
        # ISO 8601 ("PT30M", "P7Y"): how pydantic serializes a timedelta, e.g. a DrillSpec sent
        # to the workflow through Temporal's pydantic converter and validated again there.
        try:
            result = _ISO_DURATION.validate_python(value.strip())
        except ValidationError:
            raise ValueError(f"{value!r} is not a duration: write it like 30s, 15m, 1h30m, 7d or 1y") from None
        if result < timedelta(0) or result > MAX_DURATION:
            raise ValueError("a duration must be between 0 and 3660d")
        return result
    text = value.strip().replace(" ", "")
    match = _DURATION_RE.match(text)
    if not text or not match or not any(match.groups()):
        raise ValueError(f"{value!r} is not a duration: write it like 30s, 15m, 1h30m, 7d or 1y")
    y, w, d, h, m, s = (int(g) if g else 0 for g in match.groups())
    if max(y, w, d, h, m, s) > 10**7:
        raise ValueError(f"{value!r} is too large: a duration must be at most 3660d")
    result = timedelta(days=365 * y + 7 * w + d, hours=h, minutes=m, seconds=s)
    if result > MAX_DURATION:
        raise ValueError(f"{value!r} is too large: a duration must be at most 3660d")
    return result


def format_duration(td: timedelta | float | None) -> str:
    """Render seconds or a timedelta compactly: 4.2s, 33s, 15m, 1h30m."""
    if td is None:
        return "-"
    seconds = td.total_seconds() if isinstance(td, timedelta) else float(td)
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    days, rem = divmod(seconds, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    parts = []
    if days:
        parts.append(f"{days}d")
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if secs and not days:
        parts.append(f"{secs}s")
    return "".join(parts) or "0s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _aware(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        raise ValueError("a time needs a timezone, e.g. 2026-11-24T14:00:00Z")
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an ISO 8601 time such as 2026-11-24T14:00:00Z") from exc
        if parsed.tzinfo is None:
            raise ValueError("a time needs a timezone, e.g. 2026-11-24T14:00:00Z")
        return parsed
    return value


AwareTime = Annotated[datetime, BeforeValidator(_aware)]
