"""CLI: `drdrill evidence verify|export|import|list|key` and `drdrill report --period`.

Registered by app.cli through `register(app)`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, Optional

import typer
import yaml
from rich.table import Table

from app import output, queries
from app.runtime import state_dir, temporal
from app.schedules import schedule_id
from drdrill.core.calendar import parse_period, scheduled_drills
from drdrill.core.durations import format_duration, parse_duration
from drdrill.evidence.bundle import BundleError, check_files, check_import, read_anchor
from drdrill.evidence.period import period_report, render_period
from drdrill.evidence.render import fmt_time, is_simulation
from drdrill.evidence.signing import SigningError, fingerprint, pem, signer, trusted_keys
from drdrill.evidence.store import EvidenceConflict, EvidenceStoreError, open_store
from drdrill.evidence.embedded import embedded_server
from drdrill.localpg.cluster import ClusterError

console = output.console()
err = output.console(stderr=True)

evidence_app = typer.Typer(no_args_is_help=True, help="The evidence store: verify the signed log and the hash chains, export bundles.")

DEFAULT_DRILLS = Path("drills")


@contextmanager
def command_store() -> Iterator:
    """The evidence store, for one command: an embedded server the command starts is stopped when
    it ends. A store that cannot be reached or started is a clear message, not a traceback."""
    with embedded_server(), ExitStack() as stack:
        try:
            store = stack.enter_context(open_store())
        except (EvidenceStoreError, ClusterError) as exc:
            err.print(str(exc), markup=False)
            raise typer.Exit(4)  # drdrill could not do it (README, exit codes)
        yield store


def keys_or_exit(trust: list[Path]) -> dict[str, str]:
    try:
        return trusted_keys(state_dir(), trust)
    except SigningError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(2)


TRUST = typer.Option([], "--trust", help="a public key (OpenSSH line(s) or PEM) to accept besides the state directory's own and <state dir>/evidence-trusted-keys")


@evidence_app.command("verify")
def verify(
    run: Optional[str] = typer.Argument(None, help="drill id (default: every run in the store, and the whole log)"),
    against: Optional[Path] = typer.Option(None, "--against", help="an exported bundle (or its anchor.json): prove nothing at or before its anchored head changed"),
    trust: list[Path] = TRUST,
) -> None:
    """Check the signed log, every run's hash chain and each runs/<id>/evidence.json against the
    store; name the first broken link. Exit 1 if anything is broken."""
    keys = keys_or_exit(trust)
    try:
        anchor = read_anchor(against) if against else None
    except BundleError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(2)
    if anchor is not None and fingerprint(anchor["public_key"]) not in keys:
        err.print(f"{against}: its head is signed by {fingerprint(anchor['public_key'])}, not a trusted key; add --trust KEYFILE", markup=False)
        raise typer.Exit(1)
    with command_store() as store:
        results = store.verify(run)
        log = store.verify_log(keys, anchor) if run is None or anchor is not None else None
        entry_problem = queries.entry_problem(store, run, keys) if run is not None else None
        stored = {r.drill_id: store.load(r.drill_id) for r in results if r.ok}
    problems = ([entry_problem] if entry_problem else []) + check_files(state_dir(), stored, every=run is None)
    if not results and not problems and (log is None or log.ok) and anchor is None:
        console.print("the evidence store holds no runs")
        return
    bad = [r for r in results if not r.ok]
    for r in results:
        console.print(("ok       " if r.ok else "TAMPERED ") + r.message, markup=False, style=None if r.ok else "bold red")
    if log is not None:
        console.print(("ok       " if log.ok else "BROKEN   ") + log.message, markup=False, style=None if log.ok else "bold red")
    if anchor is not None and log is not None and log.ok:
        console.print(f"ok       nothing at or before the anchored head (entry {anchor['seq']}, {anchor['hash']}) changed", markup=False)
    for p in problems:
        console.print("TAMPERED " + p, markup=False, style="bold red")
    broken = len(problems) + (0 if log is None or log.ok else 1)
    if not bad and not broken:
        console.print(f"{len(results)}/{len(results)} runs intact", markup=False)
        return
    console.print(f"NOT INTACT: {len(results) - len(bad)}/{len(results)} runs' own hash chains verify; {broken} broken link(s) "
                  "in the signed log or the files, named above", markup=False, style="bold red")
    raise typer.Exit(1)


@evidence_app.command("list")
def list_runs(
    period: Optional[str] = typer.Option(None, "--period", help="e.g. 2026Q4"),
    as_json: bool = typer.Option(False, "--json", help="print the runs as JSON"),
) -> None:
    """List the runs in the evidence store (a simulation says SIMULATION beside its verdict)."""
    since = until = None
    if period:
        try:
            since, until = parse_period(period)
        except ValueError as exc:
            err.print(str(exc), markup=False)
            raise typer.Exit(2)
    with command_store() as store:
        docs = store.runs(since, until)
    rows = [
        {"declared": d["declared"], "drill": d["name"], "run": d["drill_id"], "verdict": d["verdict"], "simulation": is_simulation(d),
         "rto_seconds": d.get("rto_seconds"), "rpo_seconds": d.get("rpo_seconds")}
        for d in docs
    ]
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    print_rows(
        ["declared", "drill", "run", "verdict", "RTO", "RPO"],
        [[fmt_time(r["declared"]), r["drill"], r["run"], r["verdict"].replace("_", " ") + (" (SIMULATION)" if r["simulation"] else ""),
          format_duration(r["rto_seconds"]), format_duration(r["rpo_seconds"])] for r in rows],
    )


def print_rows(columns: list[str], rows: list[list[str]]) -> None:
    """A table on a terminal; on a pipe, tab-separated lines that never cut an id or a time."""
    if not console.is_terminal:
        for row in [columns] + rows:
            print("\t".join(str(v) for v in row))
        return
    table = Table(box=None, header_style="bold")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*[str(v) for v in row])
    console.print(table)


@evidence_app.command("import")
def import_files(
    paths: list[Path] = typer.Argument(..., help="evidence.json files or directories holding runs/*/evidence.json"),
    trust: list[Path] = TRUST,
) -> None:
    """Store evidence.json files (e.g. from another state directory): only those whose chain verifies
    and whose log entry is signed, for exactly that record, by a trusted key."""
    keys = keys_or_exit(trust)
    files: list[Path] = []
    for p in paths:
        files += sorted(p.rglob("evidence.json")) if p.is_dir() else [p]
    stored = skipped = bad = 0
    with command_store() as store:
        key = signer_or_exit()
        for f in files:
            try:
                doc = json.loads(f.read_text())
            except (OSError, ValueError) as exc:
                err.print(f"{f}: not readable: {exc}", markup=False)
                bad += 1
                continue
            problem = check_import(doc, keys) if isinstance(doc, dict) else "not an evidence document"
            if problem:
                err.print(f"{f}: not imported: {problem}", markup=False)
                bad += 1
                continue
            doc.pop("log_entry", None)  # signed into this store's log anew, by this state directory's key
            try:
                if store.record(doc, key):
                    stored += 1
                else:
                    skipped += 1
            except EvidenceConflict as exc:
                err.print(f"{f}: not imported: {exc}", markup=False)
                bad += 1
    console.print(f"{stored} runs stored, {skipped} already there, {bad} refused", markup=False)
    if bad:
        raise typer.Exit(1)


def signer_or_exit():
    try:
        return signer(state_dir())
    except SigningError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(2)


@evidence_app.command("key")
def key(as_pem: bool = typer.Option(False, "--pem", help="PEM (SubjectPublicKeyInfo, for openssl) instead of an OpenSSH line")) -> None:
    """Print the public key that signs this state directory's evidence (made on first use); publish it
    for auditors (docs/evidence.md)."""
    public = signer_or_exit().public_key
    if as_pem:
        print(pem(public), end="")
    else:
        print(f"{public} drdrill-evidence {fingerprint(public)}")


@evidence_app.command("export")
def export(
    run: str = typer.Argument(..., help="drill id"),
    out: Path = typer.Option(..., "--out", help="directory to write the bundle into"),
    s3_bucket: Optional[str] = typer.Option(None, "--s3-bucket", help="also copy the bundle to this S3 Object Lock bucket (default: the spec's evidence.s3_bucket)"),
    s3_prefix: str = typer.Option("drdrill", "--s3-prefix", help="key prefix in the bucket"),
) -> None:
    """Write a bundle: evidence.json, report.html, junit.xml, the run's signed log entry, the log's
    anchored head (anchor.json), SHA256SUMS (optionally write-once to S3)."""
    with command_store() as store:
        try:
            doc, paths, result, entry, head = queries.export_run(store, run, out)
        except KeyError:
            err.print(f"no run {run} in the evidence store", markup=False)
            raise typer.Exit(2)
    console.print(f"bundle for {run} in {out}", markup=False)
    for p in paths:
        console.print(f"  {p.name}", markup=False)
    if head is not None:
        console.print(f"anchored head: log entry {head['seq']} {head['hash']} signed by {fingerprint(head['public_key'])}", markup=False)
    bucket = s3_bucket or spec_evidence(doc).get("s3_bucket")
    if bucket:
        keys = copy_to_s3(paths, bucket, f"{s3_prefix.strip('/')}/{run}", retention_until(doc))
        console.print(f"copied to s3://{bucket}/{s3_prefix.strip('/')}/{run}/ (Object Lock COMPLIANCE until {retention_until(doc):%Y-%m-%d})", markup=False)
        for k in keys:
            console.print(f"  {k}", markup=False)
    if not result.ok or not entry:
        err.print(f"WARNING: the evidence of this run does not verify: {result.message if not result.ok else 'it is not in the signed log'}", markup=False)
        raise typer.Exit(1)


def spec_evidence(doc: dict) -> dict:
    try:
        data = yaml.safe_load(doc.get("spec_text") or "") or {}
        return dict(data.get("evidence") or {})
    except Exception:  # noqa: BLE001
        return {}


def retention_until(doc: dict) -> datetime:
    """When the bundle may be deleted: the run's end plus the spec's evidence.retention (default 7y)."""
    retention = spec_evidence(doc).get("retention") or "7y"
    try:
        delta = parse_duration(retention)
    except ValueError:
        delta = timedelta(days=7 * 365)
    ended = doc.get("ended") or doc["declared"]
    return datetime.fromisoformat(str(ended).replace("Z", "+00:00")).astimezone(timezone.utc) + delta


def copy_to_s3(paths: list[Path], bucket: str, prefix: str, retain_until: datetime) -> list[str]:
    """put_object each file with Object Lock in COMPLIANCE mode: nobody, root included, can delete or
    overwrite it before `retain_until`. The bucket must have Object Lock enabled."""
    import boto3  # the AWS SDK, only for this optional copy: not loaded by every drdrill command

    endpoint = os.environ.get("DRDRILL_AWS_ENDPOINT_URL") or None
    s3 = boto3.client("s3", endpoint_url=endpoint)
    keys = []
    for p in paths:
        body = p.read_bytes()
        key = f"{prefix}/{p.name}"
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=body,
            ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode(),  # noqa: S324 - required by Object Lock
            ObjectLockMode="COMPLIANCE",
            ObjectLockRetainUntilDate=retain_until,
            Metadata={"sha256": hashlib.sha256(body).hexdigest()},
        )
        keys.append(key)
    return keys


def report(
    period: str = typer.Option(..., "--period", help="2026Q4 (a quarter), 2026-11 (a month) or 2026 (a year)"),
    drill: Optional[str] = typer.Option(None, "--drill", help="only this drill (by name)"),
    fmt: str = typer.Option("html", "--format", help="html, json or csv"),
    out: Optional[Path] = typer.Option(None, "--out", help="write here (default: <state>/reports/<period>.<format>; '-' for stdout)"),
    drills_dir: Path = typer.Option(DEFAULT_DRILLS, "--drills", help="drill files, to know which drills were scheduled"),
) -> None:
    """Every drill in a period: verdicts, RTO/RPO against objectives, missed scheduled drills, controls."""
    if fmt not in ("html", "json", "csv"):
        err.print(f"--format {fmt}: use html, json or csv", markup=False)
        raise typer.Exit(2)
    try:
        parse_period(period)
    except ValueError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(2)
    created = temporal_schedule_times(drills_dir)
    with command_store() as store:
        data = period_report(store, period, drill=drill, drills_dir=drills_dir, schedule_created=created)
    text = render_period(data, fmt)
    if out is not None and str(out) == "-":
        print(text, end="")
        for p in data["problems"]:  # the coverage's are in the report itself
            err.print(f"problem: {p}", markup=False)
        raise typer.Exit(report_exit_code(data))
    if out is None:
        name = f"{data['period']}{'-' + drill if drill else ''}.{fmt}"
        out = state_dir() / "reports" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    _print_period_summary(data)
    console.print(f"report: {out}", markup=False)
    raise typer.Exit(report_exit_code(data))


def temporal_schedule_times(drills_dir: Path) -> dict[str, datetime]:
    """{drill name: when its Temporal Schedule was created}, when TEMPORAL_ADDRESS names a
    long-lived Temporal (the embedded one holds no schedules worth starting it for); {} otherwise."""
    if not os.environ.get("TEMPORAL_ADDRESS") or not Path(drills_dir).is_dir():
        return {}
    names = [sd.name for sd in scheduled_drills(drills_dir)[0]]

    async def go() -> dict[str, datetime]:
        out = {}
        async with temporal(with_worker=False) as client:
            for name in names:
                try:
                    out[name] = (await client.get_schedule_handle(schedule_id(name)).describe()).info.created_at
                except Exception:  # noqa: BLE001 - no such schedule: nothing proven
                    continue
        return out

    try:
        return asyncio.run(asyncio.wait_for(go(), timeout=30))
    except Exception as exc:  # noqa: BLE001 - unreachable: the recorded syncs still count
        err.print(f"note: Temporal at {os.environ['TEMPORAL_ADDRESS']} could not be read ({exc}); missed drills count from recorded syncs", markup=False)
        return {}


REPORT_EXIT = {"tampered": 1, "not checked": 3}


def report_exit_code(data: dict) -> int:
    """0: the report is complete; 1: evidence of a run does not verify (it counts for nothing);
    3: scheduled drills were not checked (no drills directory, a schedule never synced)."""
    if data["summary"].get("tampered"):
        return REPORT_EXIT["tampered"]
    return 0 if data.get("scheduled_checked", True) else REPORT_EXIT["not checked"]


def _print_period_summary(data: dict) -> None:
    s = data["summary"]
    tampered = f" ({s['tampered']} with tampered evidence, not counted)" if s.get("tampered") else ""
    sims = f"; {s['simulations']} simulation{'' if s['simulations'] == 1 else 's'} (not evidence)" if s.get("simulations") else ""
    console.print(
        f"{data['period']}: {s['runs']} runs{tampered}, {s['passed']} passed, {s['missed']} scheduled drills missed, "
        f"{sum(1 for c in data['controls'] if c['status'] == 'evidenced')}/{len(data['controls'])} controls evidenced{sims}",
        markup=False,
    )
    for f in data["findings"]:
        console.print(f"  finding {f['code']}: {f['message']}", markup=False)
    for p in report_problems(data):
        err.print(f"problem: {p}", markup=False)


def report_problems(data: dict) -> list[str]:
    """Everything the period report could not check: its own problems and its coverage's."""
    cov = data.get("coverage") or {}
    extra = list(cov.get("problems") or [])
    if (cov.get("control") or {}).get("status") == "could not verify":
        extra.append(f"restore coverage: {cov['control'].get('detail')}")
    return list(dict.fromkeys(data["problems"] + extra))


def register(app: typer.Typer) -> None:
    app.add_typer(evidence_app, name="evidence")
    app.command("report")(report)
