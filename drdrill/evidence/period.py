"""The period report (HTML, JSON, CSV): drills of a quarter, month or year rolled up against
compliance controls, with the scheduled drills that did not run and the period's restore coverage.

Every report renders in drdrill/evidence/: the drill report (render.py), this one, and the
coverage report (coverage_report.py); `drdrill evidence report` only calls `period_report` and
`render_period`. HTML goes through the same Jinja2 environment and style as the per-drill report:
self-contained, no JavaScript, prints on A4/Letter.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any, Optional

import yaml
from markupsafe import Markup

from drdrill.core.calendar import ScheduledDrill, due_times, parse_period, scheduled_drills
from drdrill.core.durations import format_duration
from drdrill.core.schema import SpecError
from drdrill.core.times import parse_time
from drdrill.evidence.coverage import CONTROL as COVERAGE_CONTROL
from drdrill.evidence.coverage import CoverageReport, coverage_for
from drdrill.evidence.coverage_report import coverage_svg
from drdrill.evidence.render import COLOURS, DATA_CHECKS, environment, fmt_time, is_simulation

@dataclass(frozen=True)
class Control:
    key: str
    framework: str
    id: str
    title: str
    satisfied_by: str
    needs: tuple[str, ...]


CONTROLS: tuple[Control, ...] = (
    Control("SOC2-A1.2", "SOC 2", "A1.2", "Environmental protections, software, data backup processes and recovery infrastructure",
            "a drill in the period restored a recorded recovery point into an isolated environment", ("ran", "restored", "isolation")),
    Control("SOC2-A1.3", "SOC 2", "A1.3", "Recovery plan procedures supporting system recovery are tested",
            "a PASSED drill in the period whose validations all passed", ("passed", "validated")),
    Control("ISO27001-A.5.29", "ISO/IEC 27001:2022", "A.5.29", "Information security during disruption",
            "restores ran in an environment proven to have no route to production, and were torn down", ("isolation", "teardown")),
    Control("ISO27001-A.5.30", "ISO/IEC 27001:2022", "A.5.30", "ICT readiness for business continuity",
            "a PASSED drill in the period met its RTO and RPO objectives", ("passed", "objectives")),
    Control("ISO27001-A.8.13", "ISO/IEC 27001:2022", "A.8.13", "Information backup",
            "backups were restored and their data validated (checksum, row counts, queries, freshness)", ("restored", "data_validated")),
    Control("ISO27001-A.8.14", "ISO/IEC 27001:2022", "A.8.14", "Redundancy of information processing facilities",
            "the service was brought up from backup in a separate environment within its RTO", ("restored", "isolation", "rto")),
    Control("PCI-DSS-12.10.2", "PCI DSS v4.0", "12.10.2", "Incident response plan reviewed and tested at least once every 12 months",
            "a PASSED drill in the period, and no scheduled drill missed", ("passed", "on_schedule")),
    Control("HIPAA-164.308(a)(7)(ii)(D)", "HIPAA", "164.308(a)(7)(ii)(D)", "Contingency plan: testing and revision procedures",
            "a drill in the period with its results and findings recorded", ("ran",)),
    Control("DORA-Art.11", "DORA", "Art. 11", "Response and recovery: ICT business continuity plans tested",
            "a PASSED drill met its RTO and RPO objectives, on schedule", ("passed", "objectives", "on_schedule")),
    Control("DORA-Art.12", "DORA", "Art. 12", "Backup policies and procedures, restoration and recovery methods",
            "backups restored into an isolated environment, data validated, RPO met", ("restored", "isolation", "data_validated", "rpo")),
)

NEED_GAP = {
    "ran": "no drill ran in the period",
    "passed": "no PASSED drill in the period",
    "restored": "no drill restored every target",
    "isolation": "no drill proved its isolation",
    "teardown": "no drill proved a clean teardown",
    "validated": "no drill passed all of its validations",
    "data_validated": "no restore validation (checksum, row_count, sql or freshness) passed",
    "objectives": "no drill met both its RTO and RPO objectives",
    "rto": "RTO objective not met by any drill",
    "rpo": "RPO objective not met by any drill",
}


def run_facts(doc: dict) -> dict[str, bool]:
    objectives = {o.get("name"): o.get("outcome") for o in doc.get("objectives", [])}
    phase = {e.get("phase"): e.get("outcome") for e in doc.get("timeline", []) if not e.get("target")}
    vals = doc.get("validations", [])
    required = [v for v in vals if v.get("required", True)]
    teardown = doc.get("teardown", [])
    isolation = doc.get("isolation", [])
    return {
        "ran": True,
        "passed": doc.get("verdict") == "PASSED",
        "restored": bool(doc.get("restored")) and phase.get("restore") == "PASSED",
        "isolation": bool(isolation) and all(i.get("checks") and all(c.get("outcome") == "PASSED" for c in i["checks"]) for i in isolation),
        "teardown": bool(teardown) and all(not t.get("errors") for t in teardown) and phase.get("teardown") == "PASSED",
        "validated": bool(required) and all(v.get("outcome") == "PASSED" for v in required),
        "data_validated": any(v.get("type") in DATA_CHECKS and v.get("outcome") == "PASSED" for v in vals),
        "objectives": objectives.get("RTO") == "PASSED" and objectives.get("RPO") == "PASSED",
        "rto": objectives.get("RTO") == "PASSED",
        "rpo": objectives.get("RPO") == "PASSED",
    }


def _objective(doc: dict, name: str) -> dict:
    return next((o for o in doc.get("objectives", []) if o.get("name") == name), {})


def period_data(
    runs: list[dict],
    verified: dict[str, tuple[bool, str]],
    period: str,
    drills_dir: Optional[Path] = None,
    drill: Optional[str] = None,
    now: Optional[datetime] = None,
    schedule_since: Optional[dict[str, dict]] = None,
) -> dict:
    """Everything the period report shows, as plain data (the JSON format is exactly this).

    Simulations (drdrill/evidence/render.is_simulation) are listed apart and counted nowhere; a
    run whose evidence does not verify is listed as tampered and evidences no control. A scheduled
    drill is missed only from when its schedule provably existed (`schedule_since`:
    EvidenceStore.schedule_since)."""
    start, end = parse_period(period)
    now = now or datetime.now(timezone.utc)
    runs = [r for r in runs if start <= parse_time(r["declared"]) < end and (not drill or r.get("name") == drill)]
    runs.sort(key=lambda r: (parse_time(r["declared"]), r["drill_id"]))
    simulations = [_simulation_row(r) for r in runs if is_simulation(r)]
    runs = [r for r in runs if not is_simulation(r)]

    scheduled, problems = _scheduled(drills_dir)
    due = [sd for sd in scheduled if not drill or sd.name == drill]
    missed, upcoming, findings, unchecked = _due_drills(due, runs, start, end, now, schedule_since or {})
    problems += unchecked
    run_rows, run_findings = _run_rows(runs, verified)
    findings += run_findings
    missed_by_drill = group_missed(missed)
    return {
        "period": period.upper(),
        "start": start.isoformat(),
        "end": end.isoformat(),
        "drill": drill,
        "generated_at": now.isoformat(),
        "summary": _summary(run_rows, missed, simulations),
        "runs": run_rows,
        "simulations": simulations,
        "drills": _drill_rows(run_rows, missed),
        "missed": missed,
        "missed_by_drill": missed_by_drill,
        "upcoming": upcoming,
        "findings": findings,
        "controls": _controls(run_rows, missed_by_drill, _declared_by(runs, scheduled)),
        "problems": problems,
        "scheduled_checked": not problems,
    }


def _scheduled(drills_dir: Optional[Path]) -> tuple[list[ScheduledDrill], list[str]]:
    """The scheduled drill files of `drills_dir`, and problems reading them (or that there is none)."""
    if drills_dir is not None and Path(drills_dir).is_dir():
        return scheduled_drills(drills_dir)
    where = f" {drills_dir}" if drills_dir is not None else ""
    return [], [f"no drills directory{where}: scheduled drills were not checked (use --drills DIR)"]


def _summary(run_rows: list[dict], missed: list[dict], simulations: list[dict]) -> dict:
    """The period's counts: verdicts of the runs whose evidence is intact, the tampered, the missed."""
    intact = [row for row in run_rows if row["evidence_intact"]]
    verdicts = [row["verdict"] for row in intact]
    return {
        "runs": len(run_rows),
        "passed": verdicts.count("PASSED"),
        "failed": verdicts.count("FAILED"),
        "could_not_verify": verdicts.count("COULD_NOT_VERIFY"),
        "error": verdicts.count("ERROR"),
        "missed": len(missed),
        "evidence_intact": len(intact),
        "tampered": len(run_rows) - len(intact),
        "simulations": len(simulations),
    }


def _simulation_row(r: dict) -> dict:
    return {"drill_id": r["drill_id"], "name": r.get("name"), "declared": r.get("declared"), "verdict": r.get("verdict")}


def _drill_rows(run_rows: list[dict], missed: list[dict]) -> list[dict]:
    """Per drill: its runs in the period (tampered ones are not counted as passed) and their RTO/RPO points."""
    drills: dict[str, dict] = {}
    keys = ("drill_id", "declared", "verdict", "rto_seconds", "rto_objective_seconds", "rto_outcome", "rpo_seconds", "rpo_objective_seconds", "rpo_outcome")
    for row in run_rows:
        d = drills.setdefault(row["name"], {"name": row["name"], "runs": 0, "passed": 0, "last_verdict": None, "points": []})
        d["runs"] += 1
        d["passed"] += row["verdict"] == "PASSED" and row["evidence_intact"]
        d["last_verdict"] = row["verdict"]
        d["points"].append({**{k: row[k] for k in keys}, "intact": row["evidence_intact"]})
    for m in missed:
        drills.setdefault(m["drill"], {"name": m["drill"], "runs": 0, "passed": 0, "last_verdict": None, "points": []})
    return list(drills.values())


def schedule_existed_from(since: Optional[dict]) -> Optional[datetime]:
    """When a drill's schedule provably existed: Temporal's creation time or the first recorded
    `drdrill schedule sync`, whichever is known (the earlier), never before the drill's first
    recorded run or sync. None when drdrill has no record of the schedule."""
    if not since:
        return None
    known = [parse_time(since.get(k)) for k in ("schedule_created", "first_sync") if since.get(k)]
    if not known:
        return None
    floor = [parse_time(since.get(k)) for k in ("first_run", "first_sync") if since.get(k)]
    return max(min(known), min(floor)) if floor else None


def _due_drills(
    scheduled: list[ScheduledDrill], runs: list[dict], start: datetime, end: datetime, now: datetime, since: dict[str, dict]
) -> tuple[list[dict], list[dict], list[dict], list[str]]:
    """(missed, upcoming, findings, problems): every time a scheduled drill was due in the period,
    after its schedule provably existed, without a run declared between that time and the next
    (each widened by the jitter), as of `now`; one finding per drill."""
    missed: list[dict] = []
    upcoming: list[dict] = []
    problems: list[str] = []
    for sd in scheduled:
        existed = schedule_existed_from(since.get(sd.name))
        if existed is None:
            problems.append(
                f"drill {sd.name} ({sd.path}) has a schedule, but no `drdrill schedule sync` of it is recorded: "
                "its scheduled drills were not checked"
            )
            continue
        times = due_times(sd.schedule, max(start, existed), end)
        declared = [parse_time(r["declared"]) for r in runs if r.get("name") == sd.name]
        for i, t in enumerate(times):
            lo = start if i == 0 else t - sd.schedule.jitter
            hi = times[i + 1] - sd.schedule.jitter if i + 1 < len(times) else end
            if any(lo <= d < hi for d in declared):
                continue
            entry = {"drill": sd.name, "file": sd.path, "expected_at": t.astimezone(timezone.utc).isoformat()}
            (upcoming if t + sd.schedule.catchup_window + sd.schedule.jitter > now else missed).append(entry)
    findings = [
        {"code": "MISSED_SCHEDULED_DRILL", "severity": "error", "drill": g["drill"], "drill_id": None, "message": g["text"]}
        for g in group_missed(missed)
    ]
    return missed, upcoming, findings, problems


def group_missed(missed: list[dict]) -> list[dict]:
    """One entry per drill: how many scheduled runs it missed, the first and the last."""
    out: dict[str, dict] = {}
    for m in missed:
        g = out.setdefault(m["drill"], {"drill": m["drill"], "file": m["file"], "count": 0, "first": m["expected_at"], "last": m["expected_at"]})
        g["count"] += 1
        g["last"] = m["expected_at"]
    for g in out.values():
        if g["count"] == 1:
            g["text"] = f"drill {g['drill']} ({g['file']}) was scheduled for {fmt_time(g['first'])} but did not run"
        else:
            g["text"] = (f"drill {g['drill']} ({g['file']}) missed {g['count']} scheduled runs, "
                         f"from {fmt_time(g['first'])} to {fmt_time(g['last'])}")
    return list(out.values())


def _run_rows(runs: list[dict], verified: dict[str, tuple[bool, str]]) -> tuple[list[dict], list[dict]]:
    """One row per run (with the facts the controls need), and the findings about the runs."""
    run_rows, findings = [], []
    for r in runs:
        ok, message = verified.get(r["drill_id"], (False, "not verified"))
        rto, rpo = _objective(r, "RTO"), _objective(r, "RPO")
        facts = run_facts(r)
        facts["intact"] = ok
        run_rows.append(
            {
                "drill_id": r["drill_id"],
                "name": r.get("name"),
                "declared": r.get("declared"),
                "verdict": r.get("verdict"),
                "started_by": r.get("started_by"),
                "rto_seconds": rto.get("achieved_seconds"),
                "rto_objective_seconds": rto.get("objective_seconds"),
                "rto_outcome": rto.get("outcome"),
                "rpo_seconds": rpo.get("achieved_seconds"),
                "rpo_objective_seconds": rpo.get("objective_seconds"),
                "rpo_outcome": rpo.get("outcome"),
                "validations": [{"name": v.get("name"), "outcome": v.get("outcome")} for v in r.get("validations", [])],
                "findings": [f.get("code") for f in r.get("findings", [])],
                "evidence_intact": ok,
                "evidence_message": message,
                "chain_head": r.get("chain_head"),
                "facts": facts,
            }
        )
        if not ok:
            findings.append({"code": "EVIDENCE_TAMPERED", "severity": "error", "drill": r.get("name"), "drill_id": r["drill_id"],
                             "message": f"{message}: this run is not counted"})
            continue
        if r.get("verdict") != "PASSED":
            findings.append(
                {
                    "code": f"DRILL_{r.get('verdict')}",
                    "severity": "error" if r.get("verdict") in ("FAILED", "ERROR") else "warning",
                    "drill": r.get("name"),
                    "drill_id": r["drill_id"],
                    "message": f"run {r['drill_id']} ended {verdict_words(r.get('verdict'))}"
                    + (": " + ", ".join(f.get("code", "") for f in r.get("findings", [])) if r.get("findings") else ""),
                }
            )
    return run_rows, findings


def _declared_by(runs: list[dict], scheduled: list[ScheduledDrill]) -> dict[str, set[str]]:
    """{control key: names of the drills whose files say they evidence it}."""
    declared_by: dict[str, set[str]] = {}
    for r in runs:
        for key in _declared_controls(r):
            declared_by.setdefault(key, set()).add(r.get("name"))
    for sd in scheduled:
        for key in sd.controls:
            declared_by.setdefault(key, set()).add(sd.name)
    return declared_by


def _controls(run_rows: list[dict], missed_by_drill: list[dict], declared_by: dict[str, set[str]]) -> list[dict]:
    """Each compliance control: the intact runs that evidence it, and its gaps. A run whose evidence
    does not verify counts for nothing (the findings name it); it does not blemish the others."""
    intact = [row for row in run_rows if row["facts"]["intact"]]
    controls = []
    for c in CONTROLS:
        run_needs = [n for n in c.needs if n != "on_schedule"]
        evidencing = [row["drill_id"] for row in intact if all(row["facts"][n] for n in run_needs)]
        gaps = [NEED_GAP[n] for n in run_needs if not any(row["facts"][n] for row in intact)]
        judged = set(run_needs) | ({"rto", "rpo"} if "objectives" in run_needs else set())
        for which in ("rto", "rpo"):
            missed_by = [row["drill_id"] for row in intact if which in judged and row[f"{which}_outcome"] == "FAILED"]
            if len(missed_by) == 1:
                gaps.append(f"{which.upper()} objective missed by run {missed_by[0]}")
            elif missed_by:
                gaps.append(f"{which.upper()} objective missed by {len(missed_by)} runs: {', '.join(missed_by)}")
        if "on_schedule" in c.needs:
            gaps += [f"scheduled drill {g['text'].removeprefix('drill ')}" for g in missed_by_drill]
        if not intact and NEED_GAP["ran"] not in gaps:
            gaps.insert(0, NEED_GAP["ran"])
        controls.append(
            {
                "key": c.key,
                "framework": c.framework,
                "id": c.id,
                "title": c.title,
                "satisfied_by": c.satisfied_by,
                "evidenced_by": evidencing,
                "declared_by": sorted(declared_by.get(c.key, set())),
                "gaps": list(dict.fromkeys(gaps)),
                "status": "evidenced" if evidencing and not gaps else ("partial" if evidencing else "gap"),
            }
        )
    return controls


def verdict_words(verdict: Optional[str]) -> str:
    """COULD_NOT_VERIFY -> COULD NOT VERIFY: verdicts as people read them."""
    return (verdict or "").replace("_", " ")


def _declared_controls(doc: dict) -> list[str]:
    try:
        data = yaml.safe_load(doc.get("spec_text") or "") or {}
        return list((data.get("evidence") or {}).get("controls") or [])
    except Exception:  # noqa: BLE001
        return []


def trend_svg(points: list[dict], which: str) -> Markup:
    """RTO or RPO achieved per run (chronological) against the objective (dashed)."""
    key, obj_key, out_key = f"{which}_seconds", f"{which}_objective_seconds", f"{which}_outcome"
    w, h, left, top, bottom = 320, 120, 48, 12, 22
    values = [p[key] for p in points if p.get(key) is not None]
    objectives = [p[obj_key] for p in points if p.get(obj_key)]
    # An objective far above every value would squash the points at the bottom: the axis then
    # follows the values, and the objective is named above the chart instead of drawn.
    off_scale = bool(values and objectives and objectives[-1] > 3 * max(values))
    ymax = max(values + ([] if off_scale else objectives) + [1.0]) * 1.1
    n = max(len(points), 1)
    days = [fmt_time(p.get("declared"))[:10] for p in points]

    def px(i: int) -> float:
        return left + (w - left - 10) * (i + 0.5) / n

    def py(v: float) -> float:
        return top + (h - top - bottom) * (1 - v / ymax)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="trend" role="img" viewBox="0 0 {w} {h}" width="{w}" height="{h}" aria-label="{which.upper()} trend">']
    out.append(f'<line x1="{left}" y1="{py(0):.1f}" x2="{w - 10}" y2="{py(0):.1f}" stroke="#8c959f"/>')
    out.append(f'<text x="{left - 4}" y="{py(ymax / 1.1) + 4:.1f}" font-size="9" text-anchor="end" fill="#57606a">{escape(format_duration(ymax / 1.1))}</text>')
    out.append(f'<text x="{left - 4}" y="{py(0) + 3:.1f}" font-size="9" text-anchor="end" fill="#57606a">0</text>')
    if off_scale:
        out.append(f'<text x="{w - 12}" y="{top - 2}" font-size="9" text-anchor="end" fill="#cf222e">objective {escape(format_duration(objectives[-1]))} (above the scale)</text>')
    elif objectives:
        oy = py(objectives[-1])
        out.append(f'<line x1="{left}" y1="{oy:.1f}" x2="{w - 10}" y2="{oy:.1f}" stroke="#cf222e" stroke-dasharray="5 3"/>')
        out.append(f'<text x="{w - 12}" y="{oy - 3:.1f}" font-size="9" text-anchor="end" fill="#cf222e">objective {escape(format_duration(objectives[-1]))}</text>')
    line = [(px(i), py(p[key])) for i, p in enumerate(points) if p.get(key) is not None]
    if len(line) > 1:
        out.append('<polyline fill="none" stroke="#0969da" stroke-width="1.5" points="' + " ".join(f"{a:.1f},{b:.1f}" for a, b in line) + '"/>')
    for i, p in enumerate(points):
        label = days[i] if days.count(days[i]) == 1 else fmt_time(p.get("declared"))[5:16]  # same day: the time tells them apart
        if p.get(key) is None:
            out.append(f'<text x="{px(i):.1f}" y="{py(0) - 4:.1f}" font-size="9" text-anchor="middle" fill="#6e7781">n/a<title>{escape(p["drill_id"])}: not measured</title></text>')
        elif p.get("intact") is False:  # shown, hollow: its evidence does not verify, so it counts for nothing
            out.append(
                f'<circle cx="{px(i):.1f}" cy="{py(p[key]):.1f}" r="4" fill="#fff" stroke="#6e7781" stroke-width="1.5"><title>{escape(p["drill_id"])}: '
                f'{escape(which.upper())} {escape(format_duration(p[key]))} (evidence tampered, not counted)</title></circle>'
            )
        else:
            colour = COLOURS.get(p.get(out_key) or "", "#6e7781")
            out.append(
                f'<circle cx="{px(i):.1f}" cy="{py(p[key]):.1f}" r="4" fill="{colour}"><title>{escape(p["drill_id"])}: '
                f'{escape(which.upper())} {escape(format_duration(p[key]))} ({escape(p.get(out_key) or "")})</title></circle>'
            )
        if n <= 4 or i in (0, n - 1):
            out.append(f'<text x="{px(i):.1f}" y="{h - 6}" font-size="9" text-anchor="middle" fill="#57606a">{escape(label)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def render_period_html(data: dict) -> str:
    env = environment()
    trends = {d["name"]: {"rto": trend_svg(d["points"], "rto"), "rpo": trend_svg(d["points"], "rpo")} for d in data["drills"]}
    chart = coverage_svg(CoverageReport.model_validate(data["coverage"])) if data.get("coverage", {}).get("rows") is not None else ""
    return env.get_template("period_report.html.j2").render(data=data, trends=trends, coverage_chart=chart)


def render_period_json(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


CSV_COLUMNS = [
    "record", "period", "drill", "drill_id", "declared", "verdict", "rto_seconds", "rto_objective_seconds", "rto_outcome",
    "rpo_seconds", "rpo_objective_seconds", "rpo_outcome", "evidence_intact", "code", "control", "evidenced_by", "detail",
]


def render_period_csv(data: dict) -> str:
    """One row per run, per finding and per control (column `record` says which)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in data["runs"]:
        w.writerow({**r, "record": "run", "period": data["period"], "drill": r["name"], "detail": "; ".join(r["findings"])})
    for f in data["findings"]:
        w.writerow({"record": "finding", "period": data["period"], "drill": f.get("drill"), "drill_id": f.get("drill_id"), "code": f["code"], "detail": f["message"]})
    for r in (data.get("coverage") or {}).get("rows") or []:
        last = r.get("last_drill") or {}
        w.writerow(
            {
                "record": "coverage", "period": data["period"], "drill": last.get("drill"), "drill_id": last.get("drill_id"),
                "declared": last.get("at"), "verdict": last.get("verdict"), "code": r["status"],
                "detail": f"{r['kind']} {r['name'] or r['id']}: {' '.join(r['flags']) or 'no flags'}",
            }
        )
    for c in data["controls"]:
        w.writerow(
            {
                "record": "control",
                "period": data["period"],
                "control": f"{c['framework']} {c['id']}",
                "evidenced_by": " ".join(c["evidenced_by"]),
                "code": c["status"],
                "detail": "; ".join(c["gaps"]),
            }
        )
    return buf.getvalue()


def period_report(
    store: Any, period: str, drill: Optional[str] = None, drills_dir: Optional[Path] = None, now: Optional[datetime] = None,
    schedule_created: Optional[dict[str, datetime]] = None,
) -> dict:
    """Read the period's runs from the evidence store, verify each, and build the report data,
    with the period's restore coverage (coverage.py) and its control. `schedule_created`: when
    Temporal says each drill's schedule was created (read by the CLI when it can reach Temporal)."""
    start, end = parse_period(period)
    runs = store.runs(start, end, drill)
    verified = {v.drill_id: (v.ok, v.message) for d in runs for v in store.verify(d["drill_id"])}
    since = store.schedule_since()
    for name, created in (schedule_created or {}).items():
        entry = since.setdefault(name, {"first_run": None, "first_sync": None, "schedule_created": None})
        entry["schedule_created"] = min(filter(None, [parse_time(entry.get("schedule_created")), created]))
    data = period_data(runs, verified, period, drills_dir=drills_dir, drill=drill, now=now, schedule_since=since)
    data["coverage"] = coverage_section(store, period, drills_dir, now)
    data["controls"].append(coverage_control(data["coverage"]))
    return data


def coverage_section(store: Any, period: str, drills_dir: Optional[Path], now: Optional[datetime] = None) -> dict:
    """The coverage report of the period as plain data; without a drills directory, why not."""
    if drills_dir is None or not Path(drills_dir).is_dir():
        detail = "coverage not computed: the drill files say what is protected (use --drills DIR)"
        return {"control": {"text": COVERAGE_CONTROL, "status": "could not verify", "detail": detail, "gaps": [detail], "evidenced_by": []}}
    start, end = parse_period(period)
    try:
        return coverage_for(store, Path(drills_dir), period.upper(), start, end, now=now).model_dump(mode="json")
    except SpecError as exc:  # a coverage.yaml that does not load: say so, never guess a policy
        detail = f"coverage not computed: {exc}"
        return {"control": {"text": COVERAGE_CONTROL, "status": "could not verify", "detail": detail, "gaps": [detail], "evidenced_by": []}}


def coverage_control(coverage: dict) -> dict:
    """The control line "every protected resource restored at least once in the period"."""
    c = coverage["control"]
    status = "evidenced" if c["status"] == "met" else ("partial" if c["evidenced_by"] else "gap")
    return {
        "key": "COVERAGE",
        "framework": "drdrill coverage",
        "id": "restore coverage",
        "title": COVERAGE_CONTROL,
        "satisfied_by": "every protected resource (named or selected by a drill, or protected in its provider's inventory) "
        "restored by a PASSED drill in the period, as coverage.yaml's min_fraction requires",
        "evidenced_by": c["evidenced_by"],
        "declared_by": [],
        "gaps": c["gaps"] if c["status"] != "met" else [],
        "status": status,
    }


def render_period(data: dict, fmt: str) -> str:
    return {"html": render_period_html, "json": render_period_json, "csv": render_period_csv}[fmt](data)


