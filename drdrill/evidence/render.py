"""The per-drill report: self-contained HTML (Jinja2, autoescaped; inline CSS and SVG, no JavaScript,
print CSS for A4/Letter) and JUnit XML, rendered from a run's evidence document.
"""

from __future__ import annotations

import functools
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from drdrill.core.durations import format_duration
from drdrill.core.times import parse_time

TEMPLATES = Path(__file__).resolve().parent / "templates"
COLOURS = {"PASSED": "#1a7f37", "FAILED": "#cf222e", "COULD_NOT_VERIFY": "#bf8700", "NOT_RUN": "#6e7781", "ERROR": "#8250df"}
DATA_CHECKS = {"checksum", "row_count", "sql", "freshness"}


def is_simulation(doc: dict) -> bool:
    """A run on the `sim` provider (`drdrill run --simulate`): it restored nothing real. Runs
    recorded before `simulated` existed say so by the simulated resources they restored."""
    if doc.get("simulated"):
        return True
    resources = doc.get("resources") or {}
    return isinstance(resources, dict) and any(str(k).startswith("sim:") for k in resources.values())


def fmt_time(value: Any) -> str:
    t = parse_time(value)
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") if t else "-"


def human_size(value: Any) -> str:
    """12345678 -> '11.8 MiB'."""
    if value is None or value == "":
        return "-"
    size = float(value)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)


def short_id(value: Any, keep: int = 28) -> str:
    """A long path as its last part: '/tmp/drdrill-clusters/…/drdrill-shop-1' -> '…/drdrill-shop-1';
    an id without '/' reads whole up to 48 characters."""
    text = str(value or "")
    if len(text) <= keep or ("/" not in text and len(text) <= 48):  # a drill's own id reads whole
        return text
    last = text.rstrip("/").rsplit("/", 1)[-1]
    return ("…/" + last) if len(last) <= 64 else ("…" + text[-64:])


def measured_lines(measured: Any) -> list[tuple[str, str]]:
    """A check's measurements as (name, value) lines for a person: nested values flattened."""
    if not isinstance(measured, dict):
        return [("value", str(measured))]
    out = []
    for key, value in sorted(measured.items()):
        if isinstance(value, dict):
            out += [(f"{key} {k}", str(v)) for k, v in sorted(value.items())] or [(str(key), "none")]
        elif isinstance(value, list):
            out.append((str(key), ", ".join(map(str, value)) or "none"))
        else:
            out.append((str(key).replace("_", " "), str(value)))
    return out


def _dur(value: Any) -> str:
    return format_duration(value) if value is not None else "not measured"


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """One Environment per process, so each template is parsed and compiled once, not for every
    drill (a fresh Environment per report made template compilation ~20% of a worker's CPU at
    fleet scale: bench/RESULTS.md §3). Nothing mutates it after it is built."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["dur"] = _dur
    env.filters["ts"] = fmt_time
    env.filters["size"] = human_size
    env.filters["short"] = short_id
    env.filters["measured"] = measured_lines
    env.filters["words"] = lambda verdict: str(verdict or "").replace("_", " ")
    env.filters["colour"] = lambda outcome: COLOURS.get(outcome or "", "#6e7781")
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)
    return env


# ------------------------------------------------------------------ per-drill report


def _seconds_since(t: Any, t0: datetime) -> float:
    parsed = parse_time(t)
    return (parsed - t0).total_seconds() if parsed else 0.0


def _ticks(span: float, n: int = 6) -> list[float]:
    if span <= 0:
        return [0.0]
    raw = span / (n - 1)
    nice = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400, 604800]
    step = next((s for s in nice if s >= raw), raw)
    ticks, x = [], 0.0
    while x <= span + 1e-9:
        ticks.append(round(x, 3))
        x += step
    return ticks


BAND_COLOURS = ("#ddf4ff", "#fff8c5")  # a recovery plan's groups, alternating


def _group_of(e: dict) -> str:
    return str((e.get("data") or {}).get("group") or "")


@dataclass(frozen=True)
class _Chart:
    """The timeline chart's geometry: seconds since the drill was declared, placed on the x axis."""

    declared: datetime
    span: float
    top: int
    left: int = 200
    width: int = 660
    row_h: int = 22

    def x(self, sec: float) -> float:
        return self.left + self.width * max(0.0, sec) / self.span

    def at(self, when: Any) -> float:
        return _seconds_since(when, self.declared)


def timeline_svg(doc: dict) -> Markup:
    """A Gantt-style chart: one bar per phase, one marker per target event, the RTO line; with a
    recovery plan, each group as a band behind its phases, labelled with its RTO."""
    declared = parse_time(doc["declared"])
    events = [e for e in doc.get("timeline", []) if e.get("phase") != "declared"]
    bands = [e for e in events if e.get("phase") == "group" and not e.get("target")]
    phases = [e for e in events if not e.get("target") and e.get("phase") != "group"]
    targets = [e for e in events if e.get("target")]
    ends = [_seconds_since(e.get("ended") or e.get("started"), declared) for e in events]
    span = max(ends + [_seconds_since(doc.get("ended"), declared), 1.0])
    if doc.get("rto_seconds"):
        span = max(span, float(doc["rto_seconds"]))
    c = _Chart(declared=declared, span=span, top=44 if bands else 24)
    bottom = c.top + (len(phases) + len(targets)) * c.row_h
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {c.left + c.width + 20} {bottom + 30}" '
        f'width="100%" aria-label="timeline of every phase and target">'
    ]
    out += [_band(c, i, band, bottom) for i, band in enumerate(bands)]
    for tick in _ticks(span):
        out.append(f'<line x1="{c.x(tick):.1f}" y1="{c.top - 6}" x2="{c.x(tick):.1f}" y2="{bottom}" stroke="#d0d7de" stroke-width="1"/>')
        out.append(f'<text x="{c.x(tick):.1f}" y="{c.top - 10}" font-size="10" text-anchor="middle" fill="#57606a">+{escape(format_duration(tick))}</text>')
    rows = [(_phase_row, e) for e in phases] + [(_target_row, e) for e in targets]
    out += [row(c, e, c.top + i * c.row_h) for i, (row, e) in enumerate(rows)]
    if doc.get("rto_seconds") is not None:
        out.append(_rto_line(c, float(doc["rto_seconds"]), bottom))
    out.append("</svg>")
    return Markup("".join(out))


def _band(c: _Chart, i: int, band: dict, bottom: int) -> str:
    """A recovery plan's group: a band behind its phases, labelled with the group's RTO."""
    s, end = c.at(band.get("started")), c.at(band.get("ended") or band.get("started"))
    group, rto = _group_of(band), (band.get("data") or {}).get("rto_seconds")
    label = f"group {group} · RTO {format_duration(rto) if rto is not None else 'not measured'}"
    return (
        f'<g data-group="{escape(group)}"><rect x="{c.x(s):.1f}" y="2" width="{max(2.0, c.x(end) - c.x(s)):.1f}" height="{bottom - 2}" '
        f'fill="{BAND_COLOURS[i % 2]}" stroke="{COLOURS.get(band.get("outcome", ""), "#6e7781")}" stroke-width="1">'
        f"<title>{escape(label)}: {escape(band.get('outcome', ''))}</title></rect>"
        f'<text x="{c.x(s) + 4:.1f}" y="14" font-size="11" font-weight="600">{escape(label)}</text></g>'
    )


def _phase_row(c: _Chart, e: dict, y: int) -> str:
    """A phase: its label, its bar, and its outcome and duration beside the bar (before it when the
    chart has no room after it)."""
    s, end = c.at(e.get("started")), c.at(e.get("ended") or e.get("started"))
    colour = COLOURS.get(e.get("outcome", ""), "#6e7781")
    label = f"{_group_of(e)} · {e.get('phase', '')}" if _group_of(e) else e.get("phase", "")
    took = format_duration(end - s)
    note = f"{str(e.get('outcome', '')).replace('_', ' ')} {took}"
    fits = c.x(end) + 4 + 5.8 * len(note) <= c.left + c.width + 18
    return (
        f'<text x="{c.left - 8}" y="{y + 15}" font-size="12" text-anchor="end">{escape(_fit(label, 30))}<title>{escape(label)}</title></text>'
        f'<rect x="{c.x(s):.1f}" y="{y + 4}" width="{max(2.0, c.x(end) - c.x(s)):.1f}" height="{c.row_h - 8}" fill="{colour}" rx="2">'
        f"<title>{escape(label)}: {escape(e.get('outcome', ''))}, {escape(took)}</title></rect>"
        f'<text x="{(c.x(end) + 4) if fits else (c.x(s) - 4):.1f}" y="{y + 15}" font-size="10" fill="#57606a"'
        f'{"" if fits else chr(32) + "text-anchor=" + chr(34) + "end" + chr(34)}>{escape(note)}</text>'
    )


def _target_row(c: _Chart, e: dict, y: int) -> str:
    """A target's event: its label and a diamond at the moment it happened."""
    s = c.at(e.get("started"))
    colour = COLOURS.get(e.get("outcome", ""), "#6e7781")
    label = f"{e.get('target')} · {e.get('phase')}"
    cx, cy = c.x(s), y + c.row_h / 2
    at = f"+{format_duration(s)}"
    return (
        f'<text x="{c.left - 8}" y="{y + 15}" font-size="11" text-anchor="end" fill="#57606a">{escape(_fit(label, 32))}<title>{escape(label)}</title></text>'
        f'<polygon points="{cx:.1f},{cy - 6:.1f} {cx + 6:.1f},{cy:.1f} {cx:.1f},{cy + 6:.1f} {cx - 6:.1f},{cy:.1f}" fill="{colour}">'
        f"<title>{escape(label)} {escape(e.get('outcome', ''))} at +{escape(format_duration(s))}</title></polygon>"
        f'<text x="{min(cx + 10, c.left + c.width + 16 - 5.8 * len(at)):.1f}" y="{y + 15}" font-size="10" fill="#57606a">{escape(at)}</text>'
    )


def _rto_line(c: _Chart, rto: float, bottom: int) -> str:
    """The RTO: a dashed line across the chart, labelled below it."""
    rx = c.x(rto)
    label = f"RTO {format_duration(rto)}"
    lx = min(max(rx, c.left + 3.5 * len(label)), c.left + c.width + 18 - 3.5 * len(label))  # centred on the line, inside the chart
    return (
        f'<line x1="{rx:.1f}" y1="{c.top - 4}" x2="{rx:.1f}" y2="{bottom}" stroke="#0969da" stroke-width="2" stroke-dasharray="4 3"/>'
        f'<text x="{lx:.1f}" y="{bottom + 14}" font-size="11" text-anchor="middle" fill="#0969da">{escape(label)}</text>'
    )


def timeline_rows(timeline: list[dict]) -> list[dict]:
    """The timeline as a table shows it: a phase that one target went through is one row (the
    drill's line and the target's line merged), not two."""
    by_phase: dict[str, list[dict]] = {}
    for e in timeline:
        if e.get("target"):
            by_phase.setdefault(str(e.get("phase")), []).append(e)
    rows, merged = [], set()
    for e in timeline:
        phase = str(e.get("phase"))
        targets = by_phase.get(phase, [])
        if not e.get("target") and len(targets) == 1 and not (e.get("data") or {}).get("group"):
            t = targets[0]
            details = [d for d in (e.get("detail"), t.get("detail")) if d]
            if len(details) == 2 and (details[0] in details[1] or details[1] in details[0]):
                details = [max(details, key=len)]
            rows.append({**e, "target": t.get("target"), "detail": "; ".join(dict.fromkeys(details)),
                         "started": min(filter(None, [e.get("started"), t.get("started")]), default=None)})
            merged.add(id(t))
        else:
            rows.append(e)
    return [r for r in rows if id(r) not in merged]


def point_facts(p: dict) -> dict:
    """What a report says of a recovery point besides its time: the dump's format, which pg_dump
    made it, and how its content was checked (a sidecar, a manifest, the drill's sha256, nothing)."""
    meta = p.get("metadata") or {}
    header, expect = meta.get("header") or {}, meta.get("expect") or {}
    if expect.get("problem"):
        verified = f"not verified: {expect['problem']}"
    elif expect.get("said_by"):
        what = [w for w, present in (("sha256", expect.get("sha256")), ("size", expect.get("size") is not None), ("per-file sha256", expect.get("files"))) if present]
        verified = f"{' and '.join(what) or 'content'} expected by {expect['said_by']}: a restore that does not match fails"
    elif expect:
        verified = "nothing to check it against (no sha256 or size in the drill, no sidecar)"
    else:
        verified = ""
    return {"format": meta.get("format") or "", "pg_dump_version": header.get("pg_dump_version") or "", "verified": verified,
            "restore_with": meta.get("restore_with") or ""}


def declared_controls(doc: dict) -> list[str]:
    """The controls the drill file says it evidences (`evidence.controls`)."""
    import yaml

    try:
        data = yaml.safe_load(doc.get("spec_text") or "") or {}
        return [str(c) for c in ((data.get("evidence") or {}).get("controls") or [])]
    except Exception:  # noqa: BLE001 - a spec that does not parse declares nothing
        return []


def _fit(label: str, chars: int) -> str:
    """A chart label that fits its column: cut with '…' (the whole label is in the element's title)."""
    return label if len(label) <= chars else label[: chars - 1] + "…"


def drill_context(doc: dict) -> dict:
    declared = parse_time(doc["declared"])
    points = []
    for p in doc.get("recovery_points", []):
        t = parse_time(p.get("consistent_time"))
        points.append({**p, "age_seconds": (declared - t).total_seconds() if t else None, "facts": point_facts(p)})
    timeline = {e.get("phase"): e for e in doc.get("timeline", []) if not e.get("target")}
    teardown_event = timeline.get("teardown")
    checks = [v for v in doc.get("validations", [])]
    for v in checks:
        v["first_passed_offset"] = _seconds_since(v["first_passed_at"], declared) if v.get("first_passed_at") else None
    groups = doc.get("groups") or []
    for g in groups:
        for key in ("started", "recovered"):
            g[f"{key}_offset"] = _seconds_since(g[key], declared) if g.get(key) else None
    return {
        "doc": doc,
        "declared": declared,
        "points": points,
        "checks": checks,
        "groups": groups,
        "objectives": doc.get("objectives", []),
        "timeline_svg": timeline_svg(doc),
        "teardown_event": teardown_event,
        "phase_events": [e for e in doc.get("timeline", []) if not e.get("target")],
        "target_events": [e for e in doc.get("timeline", []) if e.get("target")],
        "generated": datetime.now(timezone.utc),
        "simulation": is_simulation(doc),
        "timeline_rows": timeline_rows(doc.get("timeline", [])),
        "controls": declared_controls(doc),
        "integrity": integrity_rows(doc),
    }


def integrity_rows(doc: dict) -> list[dict]:
    """The report's Integrity section, one row per restored postgres target (providers/postgres/integrity.py)."""
    rows = []
    for r in doc.get("restored", []) or []:
        found = (r.get("details") or {}).get("integrity")
        if not isinstance(found, dict):
            continue
        am, col, pages = found.get("amcheck") or {}, found.get("collations") or {}, found.get("page_checksums")
        server = found.get("server_checksums") or {}
        if not found.get("enabled"):
            amcheck = "not run (restore.integrity.enabled: false)"
        elif am.get("unavailable"):
            amcheck = f"could not run: {am['unavailable']}"
        else:
            amcheck = (f"{am.get('relations_checked', 0)} of {am.get('tables', 0) + am.get('indexes', 0)} relations checked "
                       f"({am.get('tables', 0)} tables, {am.get('indexes', 0)} B-tree indexes) with {am.get('tool', '')} in {am.get('seconds', 0)} s; "
                       f"{len(am.get('relations_not_checked') or [])} not checked; corrupt: {', '.join(am.get('corrupt') or {}) or 'none'}")
        mismatched = col.get("mismatched")
        collations = ("not checked" if mismatched is None else "all recorded versions match this host's"
                      if not mismatched else "; ".join(f"{m['collation']}: recorded {m['recorded']}, now {m['actual']}" for m in mismatched))
        if pages is None:
            page = (f"checked by the server while amcheck read the pages: {server.get('failures', 0)} failures"
                    if server.get("enabled") else "not applicable: a logical restore writes new pages" if server else "not recorded")
        elif pages.get("enabled") is False:
            page = "off in the backed-up cluster (DATA_CHECKSUMS_OFF)"
        elif pages.get("checked"):
            page = f"pg_checksums --check before start: {len(pages.get('failures') or [])} failures"
        else:
            page = f"enabled; checked by the server after recovery ({server.get('failures', 0)} failures)" if pages.get("after_recovery") else pages.get("error", "")
        manifest = [f"{v['name']}: {v['outcome']}" for v in doc.get("validations", [])
                    if v.get("target") == r.get("target") and v.get("type") in ("checksum", "row_count")]
        rows.append({"target": r.get("target"), "amcheck": amcheck, "collations": collations, "pages": page,
                     "manifest": "; ".join(manifest) or "no manifest comparison in this drill"})
    return rows


def render_drill_html(doc: dict) -> str:
    return environment().get_template("drill_report.html.j2").render(**drill_context(json.loads(json.dumps(doc, default=str))))


def render_junit(doc: dict) -> str:
    """One testsuite per drill: a testcase per validation and per objective (RTO, RPO)."""
    name = doc.get("name", "drill")
    declared = parse_time(doc.get("declared"))
    stamp = declared.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") if declared else ""
    simulation = is_simulation(doc)
    suite_name = f"SIMULATION drdrill.{name}" if simulation else f"drdrill.{name}"
    suite = ET.Element("testsuite", name=suite_name, timestamp=stamp, hostname="drdrill")
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total = 0.0

    def case(classname: str, case_name: str, outcome: str, detail: str, seconds: float = 0.0) -> None:
        nonlocal total
        tc = ET.SubElement(suite, "testcase", classname=classname, name=case_name, time=f"{max(seconds, 0.0):.3f}")
        counts["tests"] += 1
        total += max(seconds, 0.0)
        if outcome == "FAILED":
            counts["failures"] += 1
            el = ET.SubElement(tc, "failure", message=detail[:500] or "failed", type="FAILED")
            el.text = detail
        elif outcome in ("COULD_NOT_VERIFY", "ERROR"):
            counts["errors"] += 1
            el = ET.SubElement(tc, "error", message=detail[:500] or outcome, type=outcome)
            el.text = detail
        elif outcome == "NOT_RUN":
            counts["skipped"] += 1
            ET.SubElement(tc, "skipped", message=detail[:500] or "not run")
        elif detail:
            ET.SubElement(tc, "system-out").text = detail

    for v in doc.get("validations", []):
        started, finished = parse_time(v.get("started")), parse_time(v.get("finished"))
        secs = (finished - started).total_seconds() if started and finished else 0.0
        case(f"drdrill.{name}.validation", v.get("name", "?"), v.get("outcome", "ERROR"), v.get("detail", ""), secs)
    for o in doc.get("objectives", []):
        detail = f"achieved {_dur(o.get('achieved_seconds'))}, objective {format_duration(o.get('objective_seconds'))}. {o.get('detail', '')}"
        case(f"drdrill.{name}.objective", o.get("name", "?"), o.get("outcome", "ERROR"), detail.strip())
    for key, value in counts.items():
        suite.set(key, str(value))
    suite.set("time", f"{total:.3f}")
    props = ET.Element("properties")
    for key in ("drill_id", "verdict", "started_by", "spec_sha256", "chain_head", "drdrill_version"):
        ET.SubElement(props, "property", name=key, value=str(doc.get(key) or ""))
    ET.SubElement(props, "property", name="simulation", value="true" if simulation else "false")
    suite.insert(0, props)
    root = ET.Element("testsuites", name="drdrill", tests=str(counts["tests"]), failures=str(counts["failures"]), errors=str(counts["errors"]))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
