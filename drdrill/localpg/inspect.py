"""What a restored database must look like beyond "pg_restore exited 0".

A restore can end with exit 0 and still have lost what a team would need on the day: a sequence
whose position was dumped behind its column (the next insert reuses an id), a materialized view
restored without data (every query on it fails until someone refreshes it), or nothing at all (a
dump of the wrong database). `inspect_restored` looks for each in the catalog of the restored
database, whatever its source, and lists its catalog objects ("structure"): one stable line per
object, sorted, which `drdrill reference write` saves beside the drill file and later drills compare
with (STRUCTURE_MISSING, STRUCTURE_UNEXPECTED).

Every finding here is about the restored data, so it FAILS the drill (severity error); only the
structure objects the restore has beyond the reference are a warning (a schema that grew). When
the inspection itself cannot run, or the reference cannot be read, the drill is COULD_NOT_VERIFY:
a check that did not run is never a pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import psycopg
from psycopg import sql

from drdrill.core.models import Finding
from drdrill.core.progress import heartbeat

# How many objects a finding's message names; the evidence keeps the full lists.
LISTED = 50

# Objects of the user's schemas only: not PostgreSQL's own, and not those an extension created
# (they come back with the extension, whatever the dump held).
_USER_SCHEMA = "n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'"


def _not_extension_member(catalog: str, oid: str) -> str:
    return (
        f"NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass "
        f"AND e.objid = {oid} AND e.deptype = 'e')"
    )


_REL = f"{_USER_SCHEMA} AND {_not_extension_member('pg_class', 'c.oid')}"

# One query per kind of object; each row is one line of the structure. The session's search_path
# is empty, so every name the server renders (types, REFERENCES, index definitions) is qualified
# the same way whatever the restored database's settings.
STRUCTURE_QUERIES = {
    "extension": "SELECT format('extension %I', extname) FROM pg_extension",
    "schema": f"SELECT format('schema %I', n.nspname) FROM pg_namespace n WHERE {_USER_SCHEMA} "
    f"AND {_not_extension_member('pg_namespace', 'n.oid')}",
    "table": f"""SELECT format('table %I.%I', n.nspname, c.relname) || CASE c.relkind WHEN 'p' THEN ' (partitioned)' ELSE '' END
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND {_REL}""",
    "column": f"""SELECT format('column %I.%I.%I %s', n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod))
            || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p') AND {_REL}""",
    "index": f"""SELECT format('index %I.%I on %I.%I ', n.nspname, ic.relname, n.nspname, c.relname)
            || CASE WHEN i.indisunique THEN 'unique ' ELSE '' END
            || regexp_replace(pg_get_indexdef(i.indexrelid), '^.*? USING ', 'using ')
        FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class c ON c.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_REL}""",
    # Not-null constraints (contype 'n', PostgreSQL 18+) are on their column's line instead, so a
    # reference means the same on every major.
    "constraint": f"""SELECT format('constraint %I.%I.%I %s', n.nspname, c.relname, con.conname, pg_get_constraintdef(con.oid))
        FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE con.contype IN ('c', 'f', 'p', 'u', 'x', 't') AND {_REL}""",
    "sequence": f"""SELECT format('sequence %I.%I %s', n.nspname, c.relname, format_type(s.seqtypid, NULL))
        FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_REL}""",
    "view": f"""SELECT format(CASE c.relkind WHEN 'm' THEN 'materialized view %I.%I' ELSE 'view %I.%I' END, n.nspname, c.relname)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('v', 'm') AND {_REL}""",
    "function": f"""SELECT format('%s %I.%I(%s)',
                CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' WHEN 'w' THEN 'window function' ELSE 'function' END,
                n.nspname, p.proname, pg_get_function_identity_arguments(p.oid))
            || CASE WHEN p.prokind IN ('f', 'w') THEN ' returns ' || pg_get_function_result(p.oid) ELSE '' END
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE {_USER_SCHEMA} AND {_not_extension_member('pg_proc', 'p.oid')}""",
}

# Every (sequence, column it feeds): the column owning it (serial, identity) and every column whose
# default is nextval() of it. Only integer columns: their max() compares with a sequence position.
SEQUENCE_COLUMNS = f"""
WITH fed AS (
    SELECT d.objid AS seq, d.refobjid AS rel, d.refobjsubid AS att
    FROM pg_depend d
    WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
      AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0
    UNION
    SELECT d.refobjid, ad.adrelid, ad.adnum
    FROM pg_attrdef ad
    JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid AND d.refclassid = 'pg_class'::regclass
)
SELECT sn.nspname, s.relname, n.nspname, c.relname, a.attname, seq.seqincrement
FROM fed
JOIN pg_sequence seq ON seq.seqrelid = fed.seq
JOIN pg_class s ON s.oid = fed.seq JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_class c ON c.oid = fed.rel JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = fed.rel AND a.attnum = fed.att AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p') AND {_REL}
  AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'numeric'::regtype)
ORDER BY 1, 2, 3, 4, 5
"""

UNPOPULATED_MATVIEWS = f"""
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'm' AND NOT c.relispopulated AND {_REL} ORDER BY 1, 2
"""


@dataclass
class Inspection:
    """What the inspection found, and what it records in the restored resource's details."""

    findings: list[Finding] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def inspect_restored(dsn: str, name: str, structure_reference: Optional[str] = None) -> Inspection:
    """Inspect the database target `name` was restored into: sequences, materialized views, emptiness,
    and its structure against the target's reference (`restore.structure_reference`), if any.

    Read-only and idempotent: a retried wait_ready inspects again and finds the same."""
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SELECT set_config('search_path', '', false)")
            structure = read_structure(conn)
            findings = [*_empty(structure, name), *_unpopulated_matviews(conn, name), *_sequences_behind(conn, name)]
    except psycopg.Error as exc:
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return Inspection(
            findings=[
                Finding(
                    code="INSPECTION_INCOMPLETE",
                    message=f"target {name}: the restored database could not be inspected: {message}",
                    target=name,
                    could_not_verify=True,
                )
            ]
        )
    details: dict[str, Any] = {"structure": structure}
    if structure_reference:
        findings += compare_structure(structure, structure_reference, name, details)
    return Inspection(findings=findings, details=details)


def read_structure(conn: psycopg.Connection) -> list[str]:
    """The database's catalog objects, one line each, sorted (byte order: the same everywhere)."""
    lines: list[str] = []
    for kind, query in STRUCTURE_QUERIES.items():
        heartbeat({"step": "inspect", "objects": kind})
        lines += [row[0] for row in conn.execute(query).fetchall()]
    return sorted(set(lines))


def _empty(structure: list[str], target: str) -> list[Finding]:
    if any(line.startswith("table ") for line in structure):
        return []
    return [
        Finding(
            code="EMPTY_RESTORE",
            message=f"target {target}: the restore produced no tables at all (a dump of an empty or the wrong database, "
            "or a restore that skipped every table)",
            target=target,
        )
    ]


def _unpopulated_matviews(conn: psycopg.Connection, target: str) -> list[Finding]:
    return [
        Finding(
            code="MATVIEW_UNPOPULATED",
            message=f"target {target}: materialized view {_qualified(schema, view)} was restored without data "
            "(ispopulated = false): every query on it fails until REFRESH MATERIALIZED VIEW; its refresh failed "
            "during the restore, or the source never populated it",
            target=target,
        )
        for schema, view in conn.execute(UNPOPULATED_MATVIEWS).fetchall()
    ]


def _sequences_behind(conn: psycopg.Connection, target: str) -> list[Finding]:
    """A sequence whose next value is one its column already holds: the next insert that takes a
    default fails on a unique key, or silently duplicates an id where there is none."""
    findings = []
    for seq_schema, seq, schema, table, column, increment in conn.execute(SEQUENCE_COLUMNS).fetchall():
        heartbeat({"step": "inspect", "sequence": f"{seq_schema}.{seq}"})
        edge = "max" if increment > 0 else "min"
        last_value, is_called, extreme = conn.execute(
            sql.SQL("SELECT s.last_value, s.is_called, (SELECT {}({}) FROM {}) FROM {} AS s").format(
                sql.SQL(edge), sql.Identifier(column), sql.Identifier(schema, table), sql.Identifier(seq_schema, seq)
            )
        ).fetchone()
        if extreme is None:
            continue  # an empty table: any position is ahead of it
        following = last_value + increment if is_called else last_value
        behind = following <= extreme if increment > 0 else following >= extreme
        if behind:
            sequence, fed = _qualified(seq_schema, seq), f"{_qualified(schema, table)}.{column}"
            findings.append(
                Finding(
                    code="SEQUENCE_BEHIND",
                    message=f"target {target}: sequence {sequence} is behind {fed}: last_value {last_value}, "
                    f"{edge}({column}) {extreme}; the next insert gets {following}, a value the column already holds "
                    f"(fix the source: SELECT setval('{sequence}', {edge}({column})) FROM {_qualified(schema, table)})",
                    target=target,
                )
            )
    return findings


def _qualified(schema: str, name: str) -> str:
    return f"{schema}.{name}"


# ------------------------------------------------------------------ the structure reference


def render_reference(structure: list[str], header: list[str]) -> str:
    """The reference file: `# ` header lines, then one object per line, sorted."""
    return "".join(f"# {line}\n" for line in header) + "".join(f"{line}\n" for line in sorted(structure))


def parse_reference(text: str) -> list[str]:
    """The objects of a reference file (comments and blank lines are not objects)."""
    return sorted({line.rstrip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")})


def compare_structure(structure: list[str], reference_path: str, target: str, details: dict[str, Any]) -> list[Finding]:
    """STRUCTURE_MISSING (in the reference, not restored: FAILED) and STRUCTURE_UNEXPECTED (restored,
    not in the reference: a warning); the full lists go into `details`."""
    path = Path(reference_path)
    try:
        reference = parse_reference(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [
            Finding(
                code="STRUCTURE_REFERENCE_MISSING",
                message=f"target {target}: structure reference {path} does not exist: write it from a restore with "
                "`drdrill reference write <drill file>` and commit it beside the drill",
                target=target,
                could_not_verify=True,
            )
        ]
    except (OSError, UnicodeDecodeError) as exc:
        return [
            Finding(
                code="STRUCTURE_REFERENCE_MISSING",
                message=f"target {target}: structure reference {path} cannot be read: {exc}",
                target=target,
                could_not_verify=True,
            )
        ]
    restored = set(structure)
    missing = [line for line in reference if line not in restored]
    unexpected = sorted(restored - set(reference))
    details["structure_reference"] = str(path)
    details["structure_missing"] = missing
    details["structure_unexpected"] = unexpected
    findings = []
    if missing:
        findings.append(
            Finding(
                code="STRUCTURE_MISSING",
                message=f"target {target}: {len(missing)} objects of the structure reference {path.name} were not restored: "
                + _listed(missing),
                target=target,
            )
        )
    if unexpected:
        findings.append(
            Finding(
                code="STRUCTURE_UNEXPECTED",
                severity="warning",
                message=f"target {target}: {len(unexpected)} restored objects are not in the structure reference {path.name} "
                "(rewrite it with `drdrill reference write` if the schema changed on purpose): " + _listed(unexpected),
                target=target,
            )
        )
    return findings


def _listed(lines: list[str]) -> str:
    shown = "; ".join(lines[:LISTED])
    return shown + (f"; … and {len(lines) - LISTED} more (the evidence lists them all)" if len(lines) > LISTED else "")


def reference_header(drill: str, target: str, run: str, declared: Optional[str], verdict: Optional[str], drill_file: str) -> list[str]:
    return [
        f"drdrill structure reference of target {target} in drill {drill}: one catalog object per line, sorted",
        f"from the restore of run {run} (declared {declared}, verdict {verdict})",
        f"rewrite it with: drdrill reference write {drill_file}",
    ]
