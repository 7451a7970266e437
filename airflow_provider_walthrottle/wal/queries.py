"""The queries :class:`~airflow_provider_walthrottle.hooks.wal_archival.WalArchivalHook` runs.

Each is read-only and needs no privilege beyond ``CONNECT``, except where its comment says so.
The synchronous hook and the asynchronous trigger run the same text.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import psycopg
from psycopg import sql

from airflow_provider_walthrottle.conversation import converse
from airflow_provider_walthrottle.wal.archiver_status import (
    ArchiverStatus,
    ServerArchiverState,
    build_archiver_status,
)

#: One row: the server settings, the archiver statistics and the WAL position that the backlog is
#: measured from, plus whether this role may list ``archive_status``. Readable by any role:
#: ``pg_stat_archiver``, ``current_setting`` and the WAL position functions are public.
#: ``pg_walfile_name_offset`` names the segment that holds the position (``pg_walfile_name`` names
#: the previous one when the position is on a segment boundary).
#: ``pg_current_wal_lsn()`` and ``pg_walfile_name_offset()`` fail during recovery, so a standby reports its
#: received position instead (its replayed one before streaming starts) and no file name.
#: ``has_function_privilege`` is asked through ``to_regprocedure`` so that servers older than
#: PostgreSQL 12, which lack ``pg_ls_archive_statusdir()``, answer ``false`` instead of failing.
ARCHIVER_STATE = sql.SQL(
    """
SELECT
    current_setting('archive_mode') AS archive_mode,
    pg_size_bytes(current_setting('wal_segment_size')) AS wal_segment_size,
    pg_is_in_recovery() AS in_recovery,
    CASE WHEN pg_is_in_recovery()
        THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
        ELSE pg_current_wal_lsn()
    END::text AS wal_lsn,
    CASE WHEN NOT pg_is_in_recovery()
        THEN (pg_walfile_name_offset(pg_current_wal_lsn())).file_name
    END AS current_wal_file,
    a.archived_count,
    a.last_archived_wal,
    a.last_archived_time,
    a.failed_count,
    a.last_failed_wal,
    a.last_failed_time,
    coalesce(
        has_function_privilege(to_regprocedure('pg_catalog.pg_ls_archive_statusdir()'), 'EXECUTE'),
        false
    ) AS can_list_archive_status
FROM pg_stat_archiver AS a
"""
)

#: One row, one column: the number of real WAL segments marked ready for ``archive_command``:
#: names of 24 hex digits followed by ``.ready`` (``^[0-9A-F]{24}\.ready$``), so that ``.ready`` files
#: of timeline history, backup history and partial segments are not counted. The test is written
#: without a regular expression: at 1,000 files the regex made the query 10 ms here, this form
#: 4.2 ms, nearly all of it the directory listing itself. Needs superuser or ``pg_monitor``
#: (PostgreSQL 12+).
READY_SEGMENT_COUNT = sql.SQL(
    """
SELECT count(*) FROM pg_catalog.pg_ls_archive_statusdir()
WHERE length(name) = 30 AND right(name, 6) = '.ready' AND ltrim(left(name, 24), {hex_digits}) = ''"""
).format(hex_digits=sql.Literal("0123456789ABCDEF"))


#: A measurement as a conversation: it yields each query to run and receives that query's rows, so
#: the synchronous and the asynchronous connection drive the very same steps.
StatusConversation = Generator[sql.SQL | sql.Composed, list[dict[str, Any]], ArchiverStatus]


def read_archiver_status(conn: psycopg.Connection[Any], *, exact_up_to: int | None = None) -> ArchiverStatus:
    """Measure the archiver's state on an open connection, in a transaction of its own.

    :param conn: a psycopg connection in autocommit mode (or with no transaction open).
    :param exact_up_to: see :func:`archiver_status_conversation`.
    """
    return converse(conn, archiver_status_conversation(exact_up_to=exact_up_to))


def archiver_status_conversation(*, exact_up_to: int | None = None) -> StatusConversation:
    """Yield the queries that measure the archiver's state, and return the status they describe.

    The exact count is asked for only when the role may list ``archive_status``, so that a role
    without ``pg_monitor`` never fills the server log with "permission denied".

    :param exact_up_to: count exactly only while the LSN estimate is at most this many segments;
        above it, return the estimate. Listing ``archive_status`` costs a ``stat`` per file (about
        5 ms at 1,000 pending segments, 50 ms at 10,000, on a server that is already behind), while
        the estimate costs nothing more; far above the threshold the exact number would not change
        the decision. An estimate too high only makes a migration wait, never run. ``None``: always
        count exactly.
    """
    rows = yield ARCHIVER_STATE
    state = ServerArchiverState(**rows[0])
    if not state.can_list_archive_status:
        return build_archiver_status(state, None)
    if exact_up_to is not None:
        estimate = build_archiver_status(state, None)
        if estimate.pending_segments is not None and estimate.pending_segments > exact_up_to:
            return estimate
    rows = yield READY_SEGMENT_COUNT
    return build_archiver_status(state, int(rows[0]["count"]))
