"""`drdrill reference write DRILL`: save what a restore of each postgres target looked like, as the
structure reference its later drills compare with (STRUCTURE_MISSING, STRUCTURE_UNEXPECTED).

The structure comes from the evidence, not from a new restore: every postgres restore is inspected
(drdrill/localpg/inspect.py), and the run records its catalog objects in the restored
resource. So the reference is exactly what a drill restored (not what production looks like today),
writing it costs no second restore, and the run it came from is named in the file's header. Run the
drill, write the reference, review the diff and commit it beside the drill file.

Registered by app.cli through `register(app)`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from app import output
from app.cli_evidence import command_store
from drdrill.core.schema import SpecError
from drdrill.providers.postgres.schema import PostgresTarget
from drdrill.providers.spec import DrillSpec, load_spec
from drdrill.localpg.inspect import parse_reference, reference_header, render_reference

console = output.console()
err = output.console(stderr=True)

reference_app = typer.Typer(no_args_is_help=True, help="Structure references: the catalog objects a restore must have.")


@reference_app.command("write")
def write(
    drill: Path = typer.Argument(..., help="drill file whose postgres targets' references to write"),
    targets: Optional[List[str]] = typer.Option(None, "--target", "-t", help="only this target (repeatable)"),
    run: Optional[str] = typer.Option(None, "--run", help="drill id of the run to take it from (default: the latest that restored the target)"),
) -> None:
    """Write each postgres target's `restore.structure_reference` from the structure a drill restored."""
    spec = _load(drill)
    chosen = _targets(drill, spec, targets)
    with command_store() as store:
        found = {t.name: _restored_structure(store, spec.name, t.name, run) for _, t in chosen}
    missing = [name for name, hit in found.items() if hit is None]
    if missing:  # nothing is written unless every reference can be
        where = f"run {run}" if run else f"the evidence of drill {spec.name}"
        err.print(
            f"{drill}: {where} holds no inspected restore of target {', '.join(missing)}: run the drill first "
            f"(`drdrill run {drill}`), then write the reference",
            markup=False,
        )
        raise typer.Exit(2)
    for _, t in chosen:
        doc, structure = found[t.name]  # type: ignore[misc]
        path = Path(t.restore.structure_reference)  # type: ignore[arg-type]
        before = set(parse_reference(path.read_text(encoding="utf-8"))) if path.is_file() else None
        header = reference_header(spec.name, t.name, doc["drill_id"], doc.get("declared"), doc.get("verdict"), str(drill))
        _write_atomically(path, render_reference(structure, header))
        change = "" if before is None else f"; {len(set(structure) - before)} added, {len(before - set(structure))} removed"
        console.print(
            f"target {t.name}: wrote {path} ({len(structure)} objects from run {doc['drill_id']}, verdict {doc.get('verdict')}{change})",
            markup=False,
        )


def _load(drill: Path) -> DrillSpec:
    try:
        return load_spec(drill)
    except SpecError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(2)


def _targets(drill: Path, spec: DrillSpec, names: Optional[List[str]]) -> list[tuple[int, PostgresTarget]]:
    """The postgres targets to write, each with its index; every one must name its reference file."""
    postgres = [(i, t) for i, t in enumerate(spec.targets) if isinstance(t, PostgresTarget)]
    unknown = [n for n in names or [] if n not in {t.name for _, t in postgres}]
    if unknown:
        err.print(f"--target {unknown[0]}: no postgres target of that name in {drill}", markup=False)
        raise typer.Exit(2)
    chosen = [(i, t) for i, t in postgres if not names or t.name in names]
    if not chosen:
        err.print(f"{drill}: no postgres targets: a structure reference lists a PostgreSQL restore's catalog objects", markup=False)
        raise typer.Exit(2)
    unset = [(i, t) for i, t in chosen if not t.restore.structure_reference]
    if unset:
        i, t = unset[0]
        err.print(
            f"{drill}: targets[{i}].restore.structure_reference is not set: add "
            f"`structure_reference: {drill.stem}.reference/{t.name}.txt` under targets[{i}].restore "
            "(relative to the drill file), then write it",
            markup=False,
        )
        raise typer.Exit(2)
    return chosen


def _restored_structure(store, drill_name: str, target: str, run: Optional[str]) -> Optional[tuple[dict, list[str]]]:
    """(the run's evidence, the structure it restored) of the newest run of `drill_name` (or run
    `run`) whose restore of `target` was inspected."""
    ids = [run] if run else list(reversed(store.drill_ids(name=drill_name)))
    for drill_id in ids:
        try:
            doc = store.load(drill_id)
        except KeyError:
            return None
        if doc.get("name") != drill_name:
            return None
        for resource in doc.get("restored") or []:
            structure = (resource.get("details") or {}).get("structure") if isinstance(resource, dict) else None
            if resource.get("target") == target and isinstance(structure, list):
                return doc, [str(line) for line in structure]
    return None


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def register(app: typer.Typer) -> None:
    app.add_typer(reference_app, name="reference")
