from __future__ import annotations

import dataclasses

import pytest

from airflow_provider_walthrottle.wal.archiver_status import ArchiverStatus, BacklogMethod
from airflow_provider_walthrottle.wal.health import (
    HealthUnavailableError,
    OnUnavailable,
    Signal,
    evaluate_wal_archival,
    may_proceed,
    parse_max_pending_segments,
)

STATUS = ArchiverStatus(
    pending_segments=0,
    pending_bytes=0,
    method=BacklogMethod.EXACT,
    archive_mode="on",
    wal_segment_size=16 * 1024 * 1024,
    in_recovery=False,
    current_wal_file=None,
    archived_count=0,
    failed_count=0,
    last_failed_wal=None,
    last_failed_time=None,
    last_archived_wal=None,
    last_archived_time=None,
    is_failing=False,
)


def _status(**changes):
    return dataclasses.replace(STATUS, **changes)


@pytest.mark.parametrize(
    ("pending", "threshold", "signal"),
    [
        (0, 42, Signal.NORMAL),
        (42, 42, Signal.NORMAL),
        (43, 42, Signal.STOP),
        (1, 0, Signal.STOP),
        (0, 0, Signal.NORMAL),
    ],
)
def test_only_above_the_threshold_stops(pending, threshold, signal):
    health = evaluate_wal_archival(_status(pending_segments=pending), threshold)
    assert health.signal is signal
    assert str(pending) in health.reason and str(threshold) in health.reason


def test_default_threshold_is_42():
    assert evaluate_wal_archival(_status(pending_segments=42)).signal is Signal.NORMAL
    assert evaluate_wal_archival(_status(pending_segments=43)).signal is Signal.STOP


def test_not_applicable_and_unknown_carry_their_reason():
    na = evaluate_wal_archival(
        _status(method=BacklogMethod.NOT_APPLICABLE, pending_segments=None, detail="archive_mode is off")
    )
    unknown = evaluate_wal_archival(
        _status(method=BacklogMethod.LSN, pending_segments=None, detail="nothing has been archived")
    )
    assert (na.signal, na.reason) == (Signal.NOT_AVAILABLE, "archive_mode is off")
    assert unknown.signal is Signal.UNKNOWN and "nothing has been archived" in unknown.reason


def test_summary_names_method_and_failing_archiver():
    summary = evaluate_wal_archival(_status(pending_segments=50, is_failing=True)).summary()
    assert summary == "stop: 50 WAL segments pending archival > threshold 42 (method exact, archiver failing)"


@pytest.mark.parametrize(
    ("signal_status", "on_unavailable", "expected"),
    [
        (dict(pending_segments=1), OnUnavailable.WAIT, True),
        (dict(pending_segments=99), OnUnavailable.PROCEED, False),
        (dict(pending_segments=None, detail="x"), OnUnavailable.WAIT, False),
        (dict(pending_segments=None, detail="x"), OnUnavailable.PROCEED, True),
    ],
)
def test_may_proceed(signal_status, on_unavailable, expected):
    assert may_proceed(evaluate_wal_archival(_status(**signal_status)), on_unavailable) is expected


def test_may_proceed_fails_on_unknown_when_asked():
    with pytest.raises(HealthUnavailableError, match=r"unknown.*on_unavailable='fail'"):
        may_proceed(evaluate_wal_archival(_status(pending_segments=None, detail="x")), OnUnavailable.FAIL)


@pytest.mark.parametrize(("value", "expected"), [(42, 42), ("42", 42), (" 7 ", 7), (0, 0)])
def test_parse_max_pending_segments(value, expected):
    assert parse_max_pending_segments(value) == expected


@pytest.mark.parametrize("value", ["forty-two", "", "-1", -1, 4.2, True, None, "{{ var.value.x }}"])
def test_parse_max_pending_segments_rejects_non_numbers(value):
    with pytest.raises(ValueError, match=r"max_pending_segments must be a whole number.*got"):
        parse_max_pending_segments(value)


@pytest.mark.parametrize("value", ["WAIT", "proceed", OnUnavailable.FAIL])
def test_on_unavailable_parse(value):
    assert OnUnavailable.parse(value) in OnUnavailable


def test_on_unavailable_parse_lists_accepted_values():
    with pytest.raises(ValueError, match="'proceed', 'wait', 'fail', got 'skip'"):
        OnUnavailable.parse("skip")


def test_the_exact_count_limit_is_twice_the_threshold_and_at_least_16():
    from airflow_provider_walthrottle.wal.health import exact_count_limit

    assert exact_count_limit(42) == 84
    assert exact_count_limit(3) == 16
    assert exact_count_limit(0) == 16
