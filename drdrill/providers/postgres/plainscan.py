"""A plain pg_dump is a psql script, and psql runs meta-commands (`\\!`, `\\o |cmd`, `\\copy … program`,
`\\setenv`, backticks) on the machine that restores it (CVE-2025-8714). drdrill reads every line the
way psql's lexer (psqlscan.l) would before handing it over, and refuses the first meta-command that
pg_dump itself never writes: DUMP_META_COMMAND, naming the line, with psql stopped before that line.

pg_dump writes only `\\connect` (to a database name), the `\\.` ending COPY data and, since the fix of
CVE-2025-8714, `\\restrict KEY` … `\\unrestrict KEY`. The lexer follows psql's rules: a backslash
outside quotes, dollar quotes and comments starts a meta-command anywhere in a line (`SELECT 1 \\! id`),
never inside them; `\\;` and `\\:` are literal. COPY … FROM STDIN data is data, until the line `\\.`.

A COPY that fails on the server (a syntax error, an aborted transaction) makes psql read its data lines
as commands. So from each COPY on, a second reading follows the data as psql would then read it, and
refuses what would run there too, until both readings agree again. pg_dump's own data escapes (`\\N`,
`\\t`, `\\n`, `\\\\`, …) read as harmless invalid commands in that reading and are let through.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from typing import Optional

from drdrill.providers.base import ProviderError

DUMP_COMPLETE = "-- PostgreSQL database dump complete"

# Only the identifiers that matter are tokens: one holding a `$` (not a dollar quote) or ending at a
# quote (`somE'…'` is not an E'' string). Every other word is skipped inside the regex engine.
_IDENT = r"[A-Za-z\x80-\xff_][A-Za-z\x80-\xff_0-9]*(?:\$[A-Za-z\x80-\xff_0-9$]*|(?='))"
_SQL = re.compile(r"--|/\*|[eE]'|[uU]&'|[uU]&\"|'|\"|\$(?:[A-Za-z\x80-\xff_][A-Za-z\x80-\xff_0-9]*)?\$|" + _IDENT + r"|\\|;")
_XQ = re.compile(r"''|'")
_XE = re.compile(r"\\.|''|'", re.S)
_XD = re.compile(r'""|"')
_XC = re.compile(r"/\*|\*/")
_NAME = re.compile(r"[^\s\\]*")
_COPY_STDIN = re.compile(r"^\s*COPY\b.*\bFROM\s+STDIN\b", re.I | re.S)
_STD_STRINGS = re.compile(r"^\s*SET\s+standard_conforming_strings\s*(?:=|TO)\s*'?(on|off|true|false)'?\s*$", re.I)
_CLIENT_ENCODING = re.compile(r"^\s*SET\s+client_encoding\s*(?:=|TO)\s*'?([A-Za-z0-9_]+)'?\s*$", re.I)
# Client encodings whose multibyte characters may end in the byte of a backslash: psql reads those
# bytes as part of a character, a byte-wise reading would not. pg_dump writes them only with -E.
_UNSAFE_ENCODINGS = {"sjis", "shiftjis", "shift_jis_2004", "big5", "gbk", "uhc", "gb18030", "johab", "win932", "win936", "win949", "win950", "cp932", "cp936", "cp949", "cp950"}
# `\connect` as pg_dump writes it: a database name, alone or as the conninfo `dbname='…'`.
_CONNECT_ARGS = re.compile(r"""^\s*(?:-reuse-previous=on\s+"dbname='(?:[^'"\\]|'')*'"|"[^"=\\]+"|[A-Za-z0-9_]+)\s*$""")
_KEY = re.compile(r"^\s*([A-Za-z0-9]+)\s*$")
# In the reading of a failed COPY's data: what pg_dump's escapes become (\N, \t, \n, \r, \b, \f, \v,
# \\, octal digits, the \. line). Other letters are commands pg_dump never writes there.
_DATA_ESCAPE_STARTS = set("bfnrtvN01234567.")
_RESTRICT_SINCE = {13: 22, 14: 19, 15: 14, 16: 10, 17: 6}  # the minor releases that added \restrict
_TAKES_ARGS = {"t", "timing", "f", "bind", "bind_named"}  # psql expands `backticks` in their arguments
_MAX_STATEMENT_HEAD = 1 << 20
_SPECIAL_CHAR = re.compile(rb"['\"$;`\\]")
_DATA_ESCAPES = frozenset(b"bfnrtvN01234567\\")


def _special(buf: bytes, pos: int, end: int, data: bool, seen: dict) -> Optional[int]:
    """Where the first byte is that makes a line need reading one by one (None: nowhere before
    `end`): in SQL, any quote, comment, `;` or backslash; in COPY data, what a failed COPY's reading
    would act on (pg_dump's own escapes, `\\N` `\\t` …, pass in bulk). Searched with bytes.find and
    one character class: table data goes through at memory speed."""
    for pair in (b"--", b"/*", b"*/"):  # `seen`: where each was found last, so a buffer is searched once
        if seen.get(pair, pos) is not None and seen.get(pair, -1) < pos:
            found = buf.find(pair, pos, end)
            seen[pair] = found if found >= 0 else None
    first = [i for i in seen.values() if i is not None]
    limit = min(first) if first else end
    while True:
        m = _SPECIAL_CHAR.search(buf, pos, limit)
        if m is None:
            return limit if first else None
        i = m.start()
        if data and buf[i] == 0x5C and i + 1 < end and buf[i + 1] in _DATA_ESCAPES:
            pos = i + 2
            continue
        return i


class DumpRefused(ProviderError):
    """The dump holds something psql must not be given."""


@dataclass
class _Lexer:
    """psql's lexer state between lines: in SQL, a quoted string, a dollar quote or a comment; and
    whether the lines now are COPY data."""

    state: str = "sql"  # sql | xq | xe | xd | xdolq | xc
    tag: str = ""
    depth: int = 0
    std_strings: bool = True
    copy_data: bool = False
    stmt: str = ""  # the statement so far (its head; all of it when it is a COPY)
    shadow_of: int = 0  # 0: the reading where every COPY succeeds; else the line of the COPY assumed failed
    events: list = field(default_factory=list)

    def signature(self) -> tuple:
        return (self.state, self.tag, self.depth, self.std_strings, self.copy_data, self.stmt.strip()[:_MAX_STATEMENT_HEAD])

    def line(self, text: str) -> list[tuple[int, str, str]]:
        """Lex one line (without its newline); the meta-commands in it as (column, name, arguments)."""
        if self.copy_data:
            if text.rstrip("\r") == "\\.":
                self.copy_data = False
            return []
        found, pos, n = [], 0, len(text)
        while pos < n:
            pos = self._step(text, pos, found)
        if self.state == "sql":
            self._add_stmt("\n")
        return found

    def _step(self, text: str, pos: int, found: list) -> int:
        if self.state == "xc":
            m = _XC.search(text, pos)
            if not m:
                return len(text)
            self.depth += 1 if m.group() == "/*" else -1
            if self.depth == 0:
                self.state = "sql"
            return m.end()
        if self.state in ("xq", "xe", "xd"):
            m = {"xq": _XQ, "xe": _XE, "xd": _XD}[self.state].search(text, pos)
            if not m:
                self._add_stmt(text[pos:])
                return len(text)
            self._add_stmt(text[pos : m.end()])
            if m.group() in ("'", '"'):
                self.state = "sql"
            return m.end()
        if self.state == "xdolq":
            end = text.find(self.tag, pos)
            if end < 0:
                return len(text)
            end, self.state, self.tag = end + len(self.tag), "sql", ""
            return end
        m = _SQL.search(text, pos)
        if not m:
            self._add_stmt(text[pos:])
            return len(text)
        self._add_stmt(text[pos : m.start()])
        tok = m.group()
        if tok == "--":
            return len(text)
        if tok == "/*":
            self.state, self.depth = "xc", 1
            return m.end()
        if tok == "\\":
            if text[m.end() : m.end() + 1] in (";", ":"):
                self._add_stmt(text[m.end()])
                return m.end() + 1
            # `\\` is a command of its own (an invalid one, or psql's separator); else the name runs
            # to whitespace or the next backslash.
            name = "\\" if text[m.end() : m.end() + 1] == "\\" else _NAME.match(text, m.end()).group()
            found.append((m.start(), name, text[m.end() + len(name) :]))
            return self._after_command(text, m.end() + len(name), name)
        self._add_stmt(tok)
        if tok == ";":
            self._statement_end()
        elif tok.startswith("$"):
            self.state, self.tag = "xdolq", tok
        elif tok.endswith("'"):
            self.state = "xe" if tok[0] in "eE" or (tok == "'" and not self.std_strings) else "xq"
        elif tok.endswith('"'):
            self.state = "xd"
        return m.end()

    def _after_command(self, text: str, pos: int, name: str) -> int:
        """psql reads a known command's arguments to the end of the line; after an unknown one it
        goes on lexing SQL. The primary reading refuses every command but the allowed ones (which
        take the whole line); a shadow reading lets unknown ones through, so it lexes on."""
        if self.shadow_of and (name == "\\" or (name and name[0] in _DATA_ESCAPE_STARTS)) and name not in _TAKES_ARGS:
            return pos
        return len(text)

    def _add_stmt(self, s: str) -> None:
        if len(self.stmt) < 64 or (self.stmt.lstrip()[:4].upper() == "COPY" and len(self.stmt) < _MAX_STATEMENT_HEAD):
            self.stmt += s

    def _statement_end(self) -> None:
        stmt, self.stmt = self.stmt[:-1], ""
        if _COPY_STDIN.match(stmt):
            self.copy_data = True
            return
        std = _STD_STRINGS.match(stmt)
        if std:
            self.std_strings = std.group(1).lower() in ("on", "true")
        enc = _CLIENT_ENCODING.match(stmt)
        if enc and enc.group(1).lower().replace("-", "_") in _UNSAFE_ENCODINGS:
            raise DumpRefused(
                "DUMP_META_COMMAND",
                f"it sets client_encoding {enc.group(1)}, whose characters can hide a backslash from a byte-wise "
                "reading: drdrill cannot tell its psql commands from its data; dump it again in UTF8 (pg_dump -E UTF8)",
            )


class PlainDumpScanner:
    """Reads a plain dump's bytes line by line, as psql will, and passes on only the lines that are
    safe to give psql (pg_dump's own `\\restrict` lines become empty: drdrill restricts psql itself)."""

    def __init__(self, place: str, connect_wrap: Optional[str] = None):
        self.place = place
        self.connect_wrap = connect_wrap  # drdrill's own \restrict key: a \connect is let through inside it
        self.lineno = 0
        self.readings: list[_Lexer] = [_Lexer()]
        self._carry = b""
        self._key: Optional[str] = None
        self.last_lines: list[str] = []  # the last non-empty lines (for the closing marker)

    @property
    def in_copy_data(self) -> bool:
        return self.readings[0].copy_data

    def feed(self, data: bytes) -> bytes:
        """The complete lines of `data` (with what came before), checked; raises DumpRefused at the
        first line psql must not see (nothing from it on is returned)."""
        buf = self._carry + data
        cut = buf.rfind(b"\n") + 1
        self._carry = buf[cut:]
        out, pos, seen = [], 0, {}
        while pos < cut:
            # Lines with nothing any reading could act on go through in bulk (table data, mostly).
            at = _special(buf, pos, cut, self.in_copy_data, seen)
            stop = cut if at is None else buf.rfind(b"\n", pos, at) + 1
            if stop > pos:
                self._bulk(buf[pos:stop])
                out.append(buf[pos:stop])
                pos = stop
                continue
            end = buf.index(b"\n", pos) + 1
            out.append(self._line(buf[pos : end - 1]) + b"\n")
            pos = end
        return b"".join(out)

    def _bulk(self, run: bytes) -> None:
        self.lineno += run.count(b"\n")
        for reading in self.readings:
            if reading.state == "sql" and not reading.copy_data:
                reading._add_stmt(run[:64].decode("latin-1"))
        tail = [ln.decode("latin-1").rstrip("\r") for ln in run[-1024:].split(b"\n") if ln.strip()]
        if tail:
            self.last_lines = (self.last_lines + tail)[-4:]

    def finish(self) -> bytes:
        """The last line, when the file does not end with a newline."""
        if not self._carry:
            return b""
        raw, self._carry = self._carry, b""
        return self._line(raw)

    def _line(self, raw: bytes) -> bytes:
        self.lineno += 1
        text = raw.decode("latin-1")
        primary = self.readings[0]
        was_copy = [r.copy_data for r in self.readings]
        replacement = raw
        allowed = primary.line(text)
        for col, name, args in allowed:
            replacement = self._primary_command(name, args, raw, col)
        for reading in self.readings[1:]:
            # A line the primary reading let through as pg_dump's own command (or blanked) reads
            # the same in every reading: only its arguments follow, and they hold no backslash.
            for _col, name, args in reading.line(text):
                if not allowed:
                    self._shadow_command(reading, name, args)
        # From a COPY on, also read its data as psql would if the COPY failed.
        for reading, before in zip(list(self.readings), was_copy):
            if reading.copy_data and not before:
                self.readings.append(_Lexer(std_strings=reading.std_strings, shadow_of=self.lineno))
        self._converge()
        if text.strip():
            self.last_lines = (self.last_lines + [text.rstrip("\r")])[-4:]
        return replacement

    def _converge(self) -> None:
        primary, seen, kept = self.readings[0], set(), [self.readings[0]]
        seen.add(primary.signature())
        for r in self.readings[1:]:
            sig = r.signature()
            if sig not in seen:
                seen.add(sig)
                kept.append(r)
        if len(kept) > 32:
            self._refuse("its COPY blocks cannot be read one way only (over 32 readings of them at once)")
        self.readings = kept

    def _primary_command(self, name: str, args: str, raw: bytes, col: int) -> bytes:
        if col == 0 and name in ("restrict", "unrestrict") and _KEY.match(args):
            key = _KEY.match(args).group(1)  # type: ignore[union-attr]
            if name == "restrict" and self._key is None:
                self._key = key
                return b""
            if name == "unrestrict" and self._key == key:
                self._key = None
                return b""
            self._refuse(f"`\\{name}` with a key that does not match its `\\restrict`" if name == "unrestrict" else "`\\restrict` twice")
        if col == 0 and name in ("connect", "c") and _CONNECT_ARGS.match(args) and "`" not in args:
            if self.connect_wrap:
                k = self.connect_wrap.encode()
                return b"\\unrestrict " + k + b"\n" + raw + b"\n\\restrict " + k
            return raw
        shown = ("\\" + name + args)[:80]
        self._refuse(f"the psql meta-command `{shown}`" + (" after SQL on the same line" if col else "") + ", which pg_dump never writes")
        return b""  # not reached

    def _shadow_command(self, reading: _Lexer, name: str, args: str) -> None:
        if (name == "\\" or (name and name[0] in _DATA_ESCAPE_STARTS)) and not (name in _TAKES_ARGS and "`" in args):
            return
        shown = ("\\" + name + args)[:80]
        self._refuse(
            f"`{shown}`, which psql would run as a command if the COPY of line {reading.shadow_of} failed "
            "(psql then reads COPY data as commands; pg_dump's data never reads so)"
        )

    def _refuse(self, what: str) -> None:
        raise DumpRefused("DUMP_META_COMMAND", f"{self.place} line {self.lineno}: {what}: the dump is refused before psql reads that line")

    def complete(self) -> str:
        """Why the dump is not complete by pg_dump's structure ("" when it is): its last non-empty
        line (before an `\\unrestrict`, and pg_dump's `--`) is the closing marker, outside COPY data."""
        if self.in_copy_data:
            return "it ends inside a table's COPY data"
        lines = [ln for ln in self.last_lines if ln.strip() not in ("--",) and not ln.startswith("\\unrestrict ")]
        if not lines or lines[-1].strip() != DUMP_COMPLETE:
            return f"its last line is not pg_dump's closing `{DUMP_COMPLETE}`"
        return ""


def tail_complete(tail: bytes) -> bool:
    """The closing marker is the last non-empty line of the tail (before `--` and an `\\unrestrict`)."""
    lines = [ln.strip() for ln in tail.decode("latin-1").splitlines() if ln.strip()]
    lines = [ln for ln in lines if ln != "--" and not ln.startswith("\\unrestrict ")]
    return bool(lines) and lines[-1] == DUMP_COMPLETE


def supports_restrict(version: str) -> bool:
    """psql's `\\restrict` (CVE-2025-8714's fix): PostgreSQL 18, and 13.22/14.19/15.14/16.10/17.6 on."""
    m = re.search(r"(\d+)\.(\d+)", version or "")
    if not m:
        return False
    major, minor = int(m.group(1)), int(m.group(2))
    return major >= 18 or (major in _RESTRICT_SINCE and minor >= _RESTRICT_SINCE[major])


def tool_version(tool: str) -> str:
    try:
        return subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def tool_env() -> dict[str, str]:
    """What a restore tool inherits: where it runs and its locale, never the worker's secrets."""
    keep = ("PATH", "LD_LIBRARY_PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME")
    return {k: os.environ[k] for k in keep if k in os.environ}
