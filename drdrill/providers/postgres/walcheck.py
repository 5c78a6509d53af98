"""Checks of a fetched WAL segment before the recovered server may replay it.

- pgBackRest names each archived segment with the SHA1 of its content
  (`000000010000000000000003-<sha1>.gz`): the fetched, decompressed segment must hash to it.
- Every segment starts with an XLogLongPageHeaderData: its magic (the WAL format of the major),
  the timeline and the segment's start address must be those of its name, its segment size that
  of the backup, and (where known) its system identifier that of the backup's cluster.

Damage in the middle of a segment without a checksum (Barman, a WAL archive directory) is caught
after replay instead: replay that ends before the newest archived segment is REPLAY_ENDED_EARLY
(recovery.py).
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Optional

# XLOG_PAGE_MAGIC of each major (src/include/access/xlog_internal.h).
PAGE_MAGIC = {12: 0xD101, 13: 0xD106, 14: 0xD10D, 15: 0xD110, 16: 0xD113, 17: 0xD116, 18: 0xD118}
XLP_LONG_HEADER = 0x0002
_LONG_HEADER = struct.Struct("<HHIQI4xQII")  # magic, info, tli, pageaddr, rem_len, (pad), sysid, seg_size, blcksz


class WalDamaged(Exception):
    """A fetched WAL file is not what the archive says it is (its text says how)."""


def sha1_of(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_checksum(name: str, path: Path, expected: set[str]) -> None:
    """The segment hashes to (one of) the SHA1(s) in its repository file name."""
    if not expected:
        return
    got = sha1_of(path)
    if got not in expected:
        raise WalDamaged(f"its SHA1 is {got}, but the repository names it {name}-{sorted(expected)[0]}: its content changed after it was archived")


def check_header(name: str, path: Path, segment_size: int, major: Optional[int], sysid: Optional[int]) -> None:
    """The segment's first page header matches its name, the backup's WAL format and segment size."""
    tli, log, seg = int(name[:8], 16), int(name[8:16], 16), int(name[16:24], 16)
    start = log * 0x100000000 + seg * segment_size
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(_LONG_HEADER.size)
    if len(head) < _LONG_HEADER.size:
        raise WalDamaged(f"it holds {size} bytes, too few for a WAL segment header")
    magic, info, page_tli, pageaddr, _rem, page_sysid, seg_size, _blcksz = _LONG_HEADER.unpack(head)
    wrong = []
    want_magic = PAGE_MAGIC.get(major or 0)
    if want_magic is not None and magic != want_magic:
        wrong.append(f"page magic {magic:#06x} (PostgreSQL {major} writes {want_magic:#06x})")
    elif want_magic is None and magic not in PAGE_MAGIC.values():
        wrong.append(f"page magic {magic:#06x} is no PostgreSQL WAL format")
    if not info & XLP_LONG_HEADER:
        wrong.append("its first page has no long header")
    if page_tli != tli:
        wrong.append(f"timeline {page_tli} (its name says {tli})")
    if pageaddr != start:
        wrong.append(f"start address {pageaddr >> 32:X}/{pageaddr & 0xFFFFFFFF:X} (its name says {start >> 32:X}/{start & 0xFFFFFFFF:X})")
    if seg_size != segment_size or size != segment_size:
        wrong.append(f"segment size {seg_size} in its header, {size} bytes on disk (the backup's is {segment_size})")
    if sysid and page_sysid and page_sysid != sysid:
        wrong.append(f"system identifier {page_sysid} (the backup's cluster is {sysid}): it belongs to another cluster")
    if wrong:
        raise WalDamaged("its header does not match: " + "; ".join(wrong))


class WalChecks:
    """What every WAL file fetched for one recovery is checked against: the repository's SHA1s (by
    segment name), the backup's segment size, WAL format and system identifier."""

    def __init__(self, archived: list, segment_size: int, major: Optional[int], sysid: Optional[int]):
        self.checksums: dict[str, set[str]] = {}
        for w in archived:
            if getattr(w, "checksum", None):
                self.checksums.setdefault(w.name, set()).add(w.checksum)
        self.segment_size = segment_size
        self.major = major
        self.sysid = sysid
        self.checked = 0
        self.by_checksum = 0

    def check(self, name: str, path: Path) -> None:
        """Raise WalDamaged when the segment `name` at `path` is not what the archive says."""
        if len(name) != 24:
            return  # a timeline history file: text, read by the server itself
        if name in self.checksums:
            check_checksum(name, path, self.checksums[name])
            self.by_checksum += 1
        check_header(name, path, self.segment_size, self.major, self.sysid)
        self.checked += 1

    def summary(self, feeder) -> dict:  # noqa: ANN001 - recovery.WalFeeder (imported there, not here)
        return {
            "segments_checked": self.checked,
            "against_repository_sha1": self.by_checksum,
            "header_checked": self.checked,
            "damaged": dict(feeder.damaged),
        }
