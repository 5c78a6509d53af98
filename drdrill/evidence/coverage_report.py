"""The coverage report rendered (`drdrill coverage`: what have we never restored?): HTML, JSON, CSV.

The report's content is coverage.py's (the drill files and coverage.yaml say what is protected,
each provider's inventory adds what it backs up, the evidence store says what was restored); this
module only renders it. HTML goes through the per-drill report's Jinja2 environment and style:
self-contained, an inline SVG chart of coverage by provider, no JavaScript.
"""

from __future__ import annotations

import csv
import io
import json
from html import escape

from markupsafe import Markup

from drdrill.evidence.coverage import CoverageReport, describe_age
from drdrill.evidence.render import environment, fmt_time

STATUS_COLOURS = {"covered": "#1a7f37", "could not verify": "#bf8700", "not covered": "#cf222e"}


def coverage_svg(report: CoverageReport) -> Markup:
    """One bar per provider: its protected resources, covered (green), could not verify (amber)
    and not covered (red), with the count restored in the period."""
    by = report.summary.get("by_provider") or {}
    families = [p.family for p in report.providers] or list(by)
    w, row_h, left, top = 640, 26, 90, 8
    h = top + row_h * max(len(families), 1) + 24
    scale = (w - left - 250) / max([b["protected"] for b in by.values()] + [1])  # 250: room for the label after the bar
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {w} {h}" width="100%" aria-label="coverage by provider">']
    for i, family in enumerate(families):
        b = by.get(family, {"protected": 0, "covered": 0, "could_not_verify": 0})
        y = top + i * row_h
        out.append(f'<text x="{left - 8}" y="{y + 16}" font-size="12" text-anchor="end">{escape(family)}</text>')
        x = float(left)
        parts = [("covered", b["covered"]), ("could not verify", b["could_not_verify"]), ("not covered", b["protected"] - b["covered"] - b["could_not_verify"])]
        for status, n in parts:
            if n <= 0:
                continue
            out.append(
                f'<rect x="{x:.1f}" y="{y + 4}" width="{n * scale:.1f}" height="{row_h - 8}" fill="{STATUS_COLOURS[status]}">'
                f"<title>{escape(family)}: {n} {escape(status)}</title></rect>"
            )
            x += n * scale
        label = f"{b['covered']}/{b['protected']} restored" if b["protected"] else "no protected resource"
        if not next((p.read for p in report.providers if p.family == family), True):
            label += " · inventory not read"
        out.append(f'<text x="{x + 6:.1f}" y="{y + 16}" font-size="11" fill="#57606a">{escape(label)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def render_coverage_html(report: CoverageReport) -> str:
    data = report.model_dump(mode="json")
    return environment().get_template("coverage_report.html.j2").render(
        data=data, chart=coverage_svg(report), age=describe_age, ts=fmt_time
    )


def render_coverage_json(report: CoverageReport) -> str:
    return json.dumps(report.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


CSV_COLUMNS = [
    "period", "provider", "kind", "resource", "id", "scope", "protected", "protected_by", "status", "flags", "drills",
    "last_drill", "last_drill_id", "last_verdict", "last_restored", "restored_in_period_by", "newest_recovery_point", "recovery_point_age_seconds",
]


def render_coverage_csv(report: CoverageReport) -> str:
    """One row per resource (protected or not)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in report.rows:
        w.writerow(
            {
                "period": report.period,
                "provider": r.family,
                "kind": r.kind,
                "resource": r.name or r.id,
                "id": r.id,
                "scope": r.scope or "",
                "protected": "yes" if r.protected else "no",
                "protected_by": "; ".join(r.protected_by),
                "status": r.status,
                "flags": " ".join(r.flags),
                "drills": " ".join(f"{d.drill}/{d.target}" for d in r.drills),
                "last_drill": r.last_drill.drill if r.last_drill else "",
                "last_drill_id": r.last_drill.drill_id if r.last_drill else "",
                "last_verdict": r.last_drill.verdict if r.last_drill else "",
                "last_restored": r.last_restored.at.isoformat() if r.last_restored else "",
                "restored_in_period_by": r.restored_in_period.drill_id if r.restored_in_period else "",
                "newest_recovery_point": r.newest_point.isoformat() if r.newest_point else "",
                "recovery_point_age_seconds": f"{r.point_age_seconds:.0f}" if r.point_age_seconds is not None else "",
            }
        )
    return buf.getvalue()


def render_coverage(report: CoverageReport, fmt: str) -> str:
    return {"html": render_coverage_html, "json": render_coverage_json, "csv": render_coverage_csv}[fmt](report)
