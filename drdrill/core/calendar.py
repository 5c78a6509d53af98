"""When a drill is due: the calendar of a `schedule:` (quarterly, or a five-field cron line).

Date arithmetic, no Temporal, no clock. app/schedules.py turns a drill's schedule into a Temporal
Schedule from the same `Calendar` (`calendar_of`); the period report asks `scheduled_drills` which
drill files have a schedule and `due_times` which times fell due in a period (which drills were
due, which were missed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml

from drdrill.core.drill import ScheduleSpec as DrillSchedule

QUARTER_STARTS = (1, 4, 7, 10)
EVERY_WEEKDAY = frozenset(range(7))


@dataclass(frozen=True)
class Calendar:
    """The times a schedule fires: every combination of these fields, in the schedule's time zone.

    Days follow cron: a day matches when its day of month and its day of week both match, except
    when both fields are restricted (`either_day`): then either one suffices."""

    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int] = EVERY_WEEKDAY  # 0 = Sunday
    either_day: bool = False

    @classmethod
    def quarterly(cls, month: int, day: int, time: str) -> "Calendar":
        """`month` of each quarter (1-3), on `day`, at `time` ('HH:MM')."""
        hour, minute = (int(x) for x in time.split(":"))
        return cls(minutes=(minute,), hours=(hour,), days_of_month=frozenset({day}), months=frozenset(q + month - 1 for q in QUARTER_STARTS))

    @classmethod
    def cron(cls, expr: str) -> "Calendar":
        """A five-field cron line with numeric fields (`*`, lists, ranges, steps; 0 or 7 = Sunday)."""
        minute, hour, dom, month, dow = expr.split()
        return cls(
            minutes=tuple(sorted(_cron_field(minute, 0, 59))),
            hours=tuple(sorted(_cron_field(hour, 0, 23))),
            days_of_month=frozenset(_cron_field(dom, 1, 31)),
            months=frozenset(_cron_field(month, 1, 12)),
            days_of_week=frozenset(d % 7 for d in _cron_field(dow, 0, 7)),
            either_day=dom != "*" and dow != "*",
        )

    def day_matches(self, day) -> bool:
        if day.month not in self.months:
            return False
        dom_ok, dow_ok = day.day in self.days_of_month, (day.weekday() + 1) % 7 in self.days_of_week
        return dom_ok or dow_ok if self.either_day else dom_ok and dow_ok

    def times(self, start: datetime, end: datetime, tz: tzinfo) -> list[datetime]:
        """Every time this calendar fires in [start, end), as wall-clock times in `tz`, in order."""
        out = []
        day = start.astimezone(tz).date() - timedelta(days=1)
        last = end.astimezone(tz).date()
        while day <= last:
            if self.day_matches(day):
                for h in self.hours:
                    for mi in self.minutes:
                        t = datetime(day.year, day.month, day.day, h, mi, tzinfo=tz)
                        if start <= t < end:
                            out.append(t)
            day += timedelta(days=1)
        return out


def cron_times(expr: str, start: datetime, end: datetime, tz: tzinfo) -> list[datetime]:
    """Times a five-field cron expression fires in [start, end) (numeric fields; 0 or 7 = Sunday)."""
    return Calendar.cron(expr).times(start, end, tz)


def calendar_of(schedule: DrillSchedule) -> Calendar:
    """The times a drill's `schedule:` fires, in its time zone."""
    if schedule.quarterly is not None:
        q = schedule.quarterly
        return Calendar.quarterly(q.month, q.day, q.time)
    return Calendar.cron(schedule.cron)  # type: ignore[arg-type]


def due_times(schedule: DrillSchedule, start: datetime, end: datetime) -> list[datetime]:
    """When the drill was (or is) due in [start, end): the times its Temporal Schedule fires,
    before jitter, as wall-clock times in the schedule's time zone."""
    return calendar_of(schedule).times(start, end, ZoneInfo(schedule.timezone))


@dataclass
class ScheduledDrill:
    """A drill file with a schedule, read for the period report."""

    name: str
    path: str
    schedule: DrillSchedule
    controls: list[str]


def scheduled_drills(drills_dir: Path) -> tuple[list[ScheduledDrill], list[str]]:
    """Drill files in `drills_dir` that have a (not paused) schedule; and problems reading the others.

    Only the `schedule:` (and the name and controls) must be valid: whether a drill was due does
    not depend on the rest of its file, nor on the environment the file's other fields refer to."""
    found, problems = [], []
    for path in sorted(Path(drills_dir).glob("*.y*ml")):
        try:
            data = yaml.safe_load(path.read_text())
            if not isinstance(data, dict) or not data.get("schedule"):
                continue
            schedule = DrillSchedule.model_validate(data["schedule"])
        except Exception as exc:  # noqa: BLE001 - a broken file is reported, not fatal
            problems.append(f"{path}: schedule not readable: {exc}".splitlines()[0])
            continue
        if schedule.paused:
            continue
        controls = list((data.get("evidence") or {}).get("controls") or [])
        found.append(ScheduledDrill(str(data.get("name", path.stem)), str(path), schedule, controls))
    return found, problems


def parse_period(text: str) -> tuple[datetime, datetime]:
    """2026Q4 -> [2026-10-01, 2027-01-01) UTC; also 2026 (a year) and 2026-11 (a month)."""
    t = text.strip().upper()
    m = re.fullmatch(r"(\d{4})-?Q([1-4])", t)
    if m:
        year, q = int(m.group(1)), int(m.group(2))
        start = datetime(year, 3 * q - 2, 1, tzinfo=timezone.utc)
        end = datetime(year + 1, 1, 1, tzinfo=timezone.utc) if q == 4 else datetime(year, 3 * q + 1, 1, tzinfo=timezone.utc)
        return start, end
    m = re.fullmatch(r"(\d{4})-(\d{2})", t)
    if m and 1 <= int(m.group(2)) <= 12:
        year, month = int(m.group(1)), int(m.group(2))
        start = datetime(year, month, 1, tzinfo=timezone.utc)
        end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=timezone.utc)
        return start, end
    m = re.fullmatch(r"(\d{4})", t)
    if m:
        year = int(m.group(1))
        return datetime(year, 1, 1, tzinfo=timezone.utc), datetime(year + 1, 1, 1, tzinfo=timezone.utc)
    raise ValueError(f"{text!r} is not a period: write 2026Q4, 2026-11 or 2026")


def _cron_field(field: str, lo: int, hi: int) -> set[int]:
    out: set[int] = set()
    for part in field.split(","):
        step = 1
        if "/" in part:
            part, s = part.split("/", 1)
            step = int(s)
        if part in ("*", ""):
            a, b = lo, hi
        elif "-" in part:
            a, b = (int(v) for v in part.split("-", 1))
        else:
            a = b = int(part)
            if step != 1:
                b = hi
        out.update(range(a, b + 1, step))
    return out
