"""WAL file names and LSN arithmetic, as PostgreSQL defines them.

Plain Python with no database access, so that the backlog arithmetic can be read and tested on
its own. The rules follow PostgreSQL's ``access/xlog_internal.h``:

* an LSN ``X/Y`` is the 64-bit byte position ``X << 32 | Y``;
* segment number ``n`` of a timeline is the segment holding bytes ``[n * size, (n + 1) * size)``;
* a segment file is named ``TTTTTTTTXXXXXXXXYYYYYYYY`` (timeline, then ``n`` split into a
  "log id" and the segment within it, with ``2**32 // size`` segments per log id).

The last rule is the one GitLab's formula gets wrong: it assumes 256 segments per log id, which is
only true for 16 MB segments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

_SEGMENT = re.compile(r"^(?P<tli>[0-9A-F]{8})(?P<log>[0-9A-F]{8})(?P<seg>[0-9A-F]{8})$")
_PARTIAL = re.compile(r"^(?P<tli>[0-9A-F]{8})(?P<log>[0-9A-F]{8})(?P<seg>[0-9A-F]{8})\.partial$")
_BACKUP = re.compile(r"^(?P<tli>[0-9A-F]{8})(?P<log>[0-9A-F]{8})(?P<seg>[0-9A-F]{8})\.[0-9A-F]{8}\.backup$")
_HISTORY = re.compile(r"^(?P<tli>[0-9A-F]{8})\.history$")
_LSN = re.compile(r"^(?P<hi>[0-9A-Fa-f]{1,8})/(?P<lo>[0-9A-Fa-f]{1,8})$")

_LOG_ID_BYTES = 0x1_0000_0000


class WalFileKind(str, Enum):
    """What kind of file the archiver handled."""

    SEGMENT = "segment"
    PARTIAL = "partial"
    BACKUP_HISTORY = "backup_history"
    TIMELINE_HISTORY = "timeline_history"


@dataclass(frozen=True)
class WalFileName:
    """A parsed name of a file that ``archive_command`` ships.

    :param name: the file name as PostgreSQL reports it, e.g. ``000000010000000000000003``.
    :param kind: which kind of file the name denotes.
    :param timeline: the timeline in the name.
    :param log_id: the "log id" part of a segment name; ``None`` for a timeline history file.
    :param segment_in_log: the segment within the log id; ``None`` for a timeline history file.
    """

    name: str
    kind: WalFileKind
    timeline: int
    log_id: int | None = None
    segment_in_log: int | None = None

    def segment_number(self, wal_segment_size: int) -> int | None:
        """Return the absolute segment number the name refers to, or ``None`` if it names none.

        :param wal_segment_size: the server's ``wal_segment_size`` in bytes.
        """
        if self.log_id is None or self.segment_in_log is None:
            return None
        return self.log_id * segments_per_log_id(wal_segment_size) + self.segment_in_log


def parse_wal_file_name(name: str) -> WalFileName:
    """Parse the name of a file the archiver handles.

    >>> parse_wal_file_name("00000002.history").kind
    <WalFileKind.TIMELINE_HISTORY: 'timeline_history'>

    :param name: a name as found in ``pg_stat_archiver.last_archived_wal``.
    :raises ValueError: if the name is none of the files PostgreSQL archives.
    """
    for pattern, kind in (
        (_SEGMENT, WalFileKind.SEGMENT),
        (_PARTIAL, WalFileKind.PARTIAL),
        (_BACKUP, WalFileKind.BACKUP_HISTORY),
    ):
        match = pattern.match(name)
        if match:
            return WalFileName(
                name=name,
                kind=kind,
                timeline=int(match["tli"], 16),
                log_id=int(match["log"], 16),
                segment_in_log=int(match["seg"], 16),
            )
    match = _HISTORY.match(name)
    if match:
        return WalFileName(name=name, kind=WalFileKind.TIMELINE_HISTORY, timeline=int(match["tli"], 16))
    raise ValueError(f"{name!r} is not the name of a WAL segment, partial segment or history file")


def segments_per_log_id(wal_segment_size: int) -> int:
    """Return how many segments one "log id" (4 GiB of WAL) holds.

    :param wal_segment_size: the server's ``wal_segment_size`` in bytes, a power of two from 1 MB
        to 1 GB.
    """
    if wal_segment_size <= 0 or wal_segment_size & (wal_segment_size - 1):
        raise ValueError(f"wal_segment_size must be a power of two, got {wal_segment_size!r}")
    return _LOG_ID_BYTES // wal_segment_size


def parse_lsn(lsn: str) -> int:
    """Return the byte position of an LSN written as PostgreSQL prints it, e.g. ``16/B374D848``.

    :param lsn: the text form of a ``pg_lsn``.
    :raises ValueError: if the text is not an LSN.
    """
    match = _LSN.match(lsn.strip())
    if not match:
        raise ValueError(f"{lsn!r} is not an LSN such as '16/B374D848'")
    return int(match["hi"], 16) << 32 | int(match["lo"], 16)


def segment_of_lsn(lsn: int, wal_segment_size: int) -> int:
    """Return the number of the segment that holds byte ``lsn``.

    :param lsn: a byte position, as returned by :func:`parse_lsn`.
    :param wal_segment_size: the server's ``wal_segment_size`` in bytes.
    """
    return lsn // wal_segment_size


def segment_file_name(timeline: int, segment_number: int, wal_segment_size: int) -> str:
    """Return the file name of a segment, as ``pg_walfile_name`` would.

    :param timeline: the timeline id.
    :param segment_number: the absolute segment number.
    :param wal_segment_size: the server's ``wal_segment_size`` in bytes.
    """
    per_log = segments_per_log_id(wal_segment_size)
    return f"{timeline:08X}{segment_number // per_log:08X}{segment_number % per_log:08X}"
