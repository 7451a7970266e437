"""What the WAL archiver's state is, and how the backlog was counted.

:class:`ArchiverStatus` is what :class:`~airflow_provider_walthrottle.hooks.wal_archival.WalArchivalHook`
returns. :func:`build_archiver_status` turns the rows the server returned into one; it is plain
Python, shared by the synchronous hook and the asynchronous trigger.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from airflow_provider_walthrottle.wal.segments import (
    WalFileKind,
    parse_lsn,
    parse_wal_file_name,
    segment_of_lsn,
)


class BacklogMethod(str, Enum):
    """How the number of segments waiting for ``archive_command`` was obtained."""

    #: Counted the ``.ready`` files of real segments with ``pg_ls_archive_statusdir()``.
    #: Needs PostgreSQL 12+ and ``pg_monitor`` (or superuser).
    EXACT = "exact"
    #: Derived from the WAL write position and ``pg_stat_archiver.last_archived_wal``, with the
    #: server's real segment size. Needs no privilege; right as long as the archiver works in order.
    LSN = "lsn"
    #: Nothing to count: archiving is off on this server, or it is a standby that does not archive.
    NOT_APPLICABLE = "not_applicable"


@dataclass(frozen=True)
class ServerArchiverState:
    """The raw facts one status query returns. Field names match the query's columns.

    :param archive_mode: ``off``, ``on`` or ``always``.
    :param wal_segment_size: bytes per WAL segment.
    :param in_recovery: whether the server is a standby.
    :param wal_lsn: the WAL write position (received position on a standby), as text.
    :param current_wal_file: the segment being written (``pg_walfile_name``); ``None`` on a standby.
    :param archived_count: ``pg_stat_archiver.archived_count``.
    :param last_archived_wal: ``pg_stat_archiver.last_archived_wal``.
    :param last_archived_time: ``pg_stat_archiver.last_archived_time``.
    :param failed_count: ``pg_stat_archiver.failed_count``.
    :param last_failed_wal: ``pg_stat_archiver.last_failed_wal``.
    :param last_failed_time: ``pg_stat_archiver.last_failed_time``.
    :param can_list_archive_status: whether the role may call ``pg_ls_archive_statusdir()``.
    """

    archive_mode: str
    wal_segment_size: int
    in_recovery: bool
    wal_lsn: str | None
    current_wal_file: str | None
    archived_count: int
    last_archived_wal: str | None
    last_archived_time: datetime.datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime.datetime | None
    can_list_archive_status: bool


@dataclass(frozen=True)
class ArchiverStatus:
    """The WAL archiver's state and its backlog, as measured once.

    :param pending_segments: WAL segments waiting for ``archive_command``; ``None`` when it cannot be
        known (see ``detail``).
    :param pending_bytes: ``pending_segments`` times ``wal_segment_size``; ``None`` when unknown.
    :param method: how ``pending_segments`` was measured.
    :param archive_mode: the server's ``archive_mode``.
    :param wal_segment_size: bytes per WAL segment, as the server reports it.
    :param in_recovery: whether the server is a standby.
    :param current_wal_file: the segment being written; ``None`` on a standby.
    :param archived_count: segments and files archived since the statistics were reset.
    :param failed_count: failed ``archive_command`` runs since the statistics were reset.
    :param last_failed_wal: the file of the last failure.
    :param last_failed_time: when the last failure happened.
    :param last_archived_wal: the last file archived successfully.
    :param last_archived_time: when it was archived.
    :param is_failing: whether the archiver is failing right now: its last attempt failed.
    :param detail: why the count is unknown or not applicable, or ``None`` when it is known.
    """

    pending_segments: int | None
    pending_bytes: int | None
    method: BacklogMethod
    archive_mode: str
    wal_segment_size: int
    in_recovery: bool
    current_wal_file: str | None
    archived_count: int
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime.datetime | None
    last_archived_wal: str | None
    last_archived_time: datetime.datetime | None
    is_failing: bool
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the status as JSON-ready values: enums as strings, times in ISO 8601."""
        result = asdict(self)
        result["method"] = self.method.value
        for key, value in result.items():
            if isinstance(value, datetime.datetime):
                result[key] = value.isoformat()
        return result


def archiving_applies(archive_mode: str, in_recovery: bool) -> bool:
    """Return whether a server with this mode archives its own WAL.

    :param archive_mode: ``off``, ``on`` or ``always``.
    :param in_recovery: whether the server is a standby; a standby archives only with ``always``.
    """
    if in_recovery:
        return archive_mode == "always"
    return archive_mode in ("on", "always")


def is_archiver_failing(
    last_failed_time: datetime.datetime | None, last_archived_time: datetime.datetime | None
) -> bool:
    """Return whether the archiver's most recent attempt failed.

    :param last_failed_time: ``pg_stat_archiver.last_failed_time``.
    :param last_archived_time: ``pg_stat_archiver.last_archived_time``.
    """
    if last_failed_time is None:
        return False
    return last_archived_time is None or last_failed_time > last_archived_time


def estimate_pending_segments(
    last_archived_wal: str | None, wal_lsn: str | None, wal_segment_size: int
) -> tuple[int | None, str | None]:
    """Count the segments waiting for archival from the write position and the last archived file.

    Every complete segment after the last archived one waits; the segment being written does not
    (it has no ``.ready`` file yet). The last archived file may be other than a segment:

    * ``…NN.partial`` (the last segment of an old timeline, archived at promotion): segments from
      ``NN`` on the new timeline wait;
    * ``…NN.XXXXXXXX.backup`` (a backup history file): segment ``NN`` was archived just before it;
    * ``TTTTTTTT.history`` (a timeline history file): it says nothing about segments, so the count
      is unknown until the archiver ships the next segment.

    :param last_archived_wal: ``pg_stat_archiver.last_archived_wal``.
    :param wal_lsn: the WAL write position, as text.
    :param wal_segment_size: bytes per WAL segment.
    :return: the count, or ``None`` with the reason it is unknown.
    """
    if wal_lsn is None:
        return None, "the server reports no WAL position yet"
    if last_archived_wal is None:
        return None, (
            "nothing has been archived since the statistics were reset, so the last archived segment "
            "is unknown; grant pg_monitor to the connection's role for an exact count"
        )
    try:
        last = parse_wal_file_name(last_archived_wal)
    except ValueError:
        return None, f"last_archived_wal {last_archived_wal!r} is not a WAL file name"
    current_segment = segment_of_lsn(parse_lsn(wal_lsn), wal_segment_size)
    last_segment = last.segment_number(wal_segment_size)
    if last_segment is None:
        return None, (
            f"the last archived file is the timeline history file {last_archived_wal}, which names no "
            "segment; the count is known again once the next segment is archived, or at once with "
            "pg_monitor"
        )
    if last.kind is WalFileKind.PARTIAL:
        last_segment -= 1
    return max(current_segment - 1 - last_segment, 0), None


def build_archiver_status(state: ServerArchiverState, ready_segments: int | None) -> ArchiverStatus:
    """Build the status from the server's facts.

    :param state: what the status query returned.
    :param ready_segments: the number of ``.ready`` segment files, when the role could count them.
    """
    detail: str | None = None
    pending: int | None
    if not archiving_applies(state.archive_mode, state.in_recovery):
        method = BacklogMethod.NOT_APPLICABLE
        pending = None
        if state.in_recovery:
            detail = (
                f"this server is a standby with archive_mode={state.archive_mode}: it archives nothing; "
                "point the connection at the primary, or use archive_mode=always on the standby"
            )
        else:
            detail = "archive_mode is off: no WAL waits for archive_command on this server"
    elif ready_segments is not None:
        method = BacklogMethod.EXACT
        pending = ready_segments
    else:
        method = BacklogMethod.LSN
        pending, detail = estimate_pending_segments(
            state.last_archived_wal, state.wal_lsn, state.wal_segment_size
        )

    return ArchiverStatus(
        pending_segments=pending,
        pending_bytes=None if pending is None else pending * state.wal_segment_size,
        method=method,
        archive_mode=state.archive_mode,
        wal_segment_size=state.wal_segment_size,
        in_recovery=state.in_recovery,
        current_wal_file=state.current_wal_file,
        archived_count=state.archived_count,
        failed_count=state.failed_count,
        last_failed_wal=state.last_failed_wal,
        last_failed_time=state.last_failed_time,
        last_archived_wal=state.last_archived_wal,
        last_archived_time=state.last_archived_time,
        is_failing=is_archiver_failing(state.last_failed_time, state.last_archived_time),
        detail=detail,
    )
