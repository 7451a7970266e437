from __future__ import annotations

import datetime
import json

import pytest

from airflow_provider_walthrottle.wal.archiver_status import (
    BacklogMethod,
    ServerArchiverState,
    build_archiver_status,
    estimate_pending_segments,
    is_archiver_failing,
)

MB = 1024 * 1024
T0 = datetime.datetime(2026, 11, 27, 10, 0, tzinfo=datetime.timezone.utc)
T1 = T0 + datetime.timedelta(seconds=5)


@pytest.mark.parametrize(
    ("last_archived", "lsn", "size", "expected"),
    [
        # writing segment 9, segment 2 archived: 3..8 wait
        ("000000010000000000000002", "0/9000100", 16 * MB, 6),
        # exactly at a segment boundary, segment 8 is complete and the new one is empty
        ("000000010000000000000002", "0/9000000", 16 * MB, 6),
        # the segment being written is never counted
        ("000000010000000000000008", "0/9000100", 16 * MB, 0),
        # 64 MB segments across a log-id boundary, where a 16 MB assumption counts ~190 too many
        ("00000001000000000000003F", "1/4000000", 64 * MB, 1),
        # 1 MB segments, where the 16 MB formula goes negative
        ("000000010000000000000FFA", "1/100000", 1 * MB, 6),
        # a backup history file: its segment was archived just before it
        ("000000010000000000000002.00000028.backup", "0/5000000", 16 * MB, 2),
        # a partial segment of the old timeline: its segment on the new timeline waits
        ("000000010000000000000003.partial", "0/5000000", 16 * MB, 2),
        # archived past the write position (stats from before a pg_resetwal): nothing waits
        ("000000010000000000000009", "0/3000000", 16 * MB, 0),
    ],
)
def test_estimate_pending_segments(last_archived, lsn, size, expected):
    assert estimate_pending_segments(last_archived, lsn, size) == (expected, None)


@pytest.mark.parametrize(
    ("last_archived", "lsn", "reason"),
    [
        (None, "0/9000000", "nothing has been archived"),
        ("00000002.history", "0/9000000", "timeline history file 00000002.history"),
        ("garbage", "0/9000000", "is not a WAL file name"),
        ("000000010000000000000002", None, "no WAL position"),
    ],
)
def test_estimate_is_unknown_not_zero_and_not_an_error(last_archived, lsn, reason):
    pending, detail = estimate_pending_segments(last_archived, lsn, 16 * MB)
    assert pending is None
    assert reason in detail


@pytest.mark.parametrize(
    ("failed", "archived", "expected"),
    [(None, None, False), (None, T0, False), (T0, None, True), (T1, T0, True), (T0, T1, False)],
)
def test_is_archiver_failing(failed, archived, expected):
    assert is_archiver_failing(failed, archived) is expected


def _state(**overrides):
    values = dict(
        archive_mode="on",
        wal_segment_size=16 * MB,
        in_recovery=False,
        wal_lsn="0/9000100",
        current_wal_file="000000010000000000000009",
        archived_count=2,
        last_archived_wal="000000010000000000000002",
        last_archived_time=T0,
        failed_count=3,
        last_failed_wal="000000010000000000000003",
        last_failed_time=T1,
        can_list_archive_status=True,
    )
    values.update(overrides)
    return ServerArchiverState(**values)


def test_exact_count_wins_over_the_estimate():
    status = build_archiver_status(_state(), ready_segments=4)
    assert (status.method, status.pending_segments, status.pending_bytes) == (BacklogMethod.EXACT, 4, 64 * MB)
    assert status.is_failing


def test_without_the_exact_count_the_lsn_estimate_is_used():
    status = build_archiver_status(_state(can_list_archive_status=False), ready_segments=None)
    assert (status.method, status.pending_segments) == (BacklogMethod.LSN, 6)


@pytest.mark.parametrize(
    ("archive_mode", "in_recovery", "applicable"),
    [
        ("off", False, False),
        ("on", False, True),
        ("always", False, True),
        ("on", True, False),
        ("always", True, True),
    ],
)
def test_archiving_applies_only_where_the_server_archives(archive_mode, in_recovery, applicable):
    status = build_archiver_status(
        _state(archive_mode=archive_mode, in_recovery=in_recovery), ready_segments=4
    )
    assert (status.method is not BacklogMethod.NOT_APPLICABLE) is applicable
    if applicable:
        assert status.pending_segments == 4
    else:
        assert (status.method, status.pending_segments) == (BacklogMethod.NOT_APPLICABLE, None)
        assert status.detail


def test_to_dict_is_json_ready():
    data = build_archiver_status(_state(), ready_segments=4).to_dict()
    assert json.loads(json.dumps(data))["last_failed_time"] == T1.isoformat()
    assert data["method"] == "exact"
