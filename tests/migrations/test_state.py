"""Progress in wall-clock time, as plain Python: the recent pace, the time accounts, the ETA and its hold."""

from __future__ import annotations

import dataclasses
import datetime

import pytest

from airflow_provider_walthrottle.migrations.progress import Progress, RecentPace
from airflow_provider_walthrottle.migrations.state import Activity, MigrationStatus
from airflow_provider_walthrottle.migrations.time_accounts import TimeAccounts, TimeBreakdown

START = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.timezone.utc)


def at(seconds: float) -> datetime.datetime:
    return START + datetime.timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("figures", "expected", "words"),
    [
        pytest.param(
            # 3 batches of 1,000 keys in 30 min, the first at once: the 2 after it, in 2 whole cycles
            {"read": 1800, "minutes": (1, 1000), "last": (3, 3000, None), "first": (10, 1000)},
            RecentPace(2000, 1790.0, 2, None, since_first_batch=True),
            ("since the first batch", "at the pace since the first batch"),
            id="early-since-the-first-batch",
        ),
        pytest.param(
            # a 5-minute schedule: 3 batches in 15 min, so the last 10 batches, from the 11th's end
            {
                "read": 3 * 3600,
                "minutes": (3, 3000),
                "last": (10, 10_000, 3 * 3600 - 50 * 60),
                "first": (5, 1000),
            },
            RecentPace(10_000, 3000.0, 10, None, since_first_batch=False),
            ("the last 10 batches", "at the last 10 batches' pace"),
            id="slow-schedule-last-10-batches",
        ),
        pytest.param(
            # batches every 30 s: 30 of them in the last 15 minutes, which is the window
            {"read": 3600, "minutes": (30, 30_000), "last": (10, 10_000, 3600 - 300), "first": (5, 1000)},
            RecentPace(30_000, 900.0, 30, 15, since_first_batch=False),
            ("the last 15 min", "at the last 15 minutes' pace"),
            id="fast-schedule-last-15-minutes",
        ),
        pytest.param(
            # 12 batches in the first 10 minutes: the 15-minute window begins at the first batch
            {"read": 600, "minutes": (12, 12_000), "last": (10, 10_000, 100), "first": (2, 1000)},
            RecentPace(11_000, 598.0, 11, None, since_first_batch=True),
            ("since the first batch", "at the pace since the first batch"),
            id="fifteen-minutes-cut-at-the-first-batch",
        ),
        pytest.param(
            {"read": 60, "minutes": (1, 1000), "last": (1, 1000, None), "first": (5, 1000)},
            RecentPace(0, 55.0, 0, None, since_first_batch=True),
            ("since the first batch", "at the pace since the first batch"),
            id="one-batch-no-cycle-yet",
        ),
        pytest.param(
            {"read": 60, "minutes": (0, 0), "last": (0, 0, None), "first": None},
            RecentPace(0, 0.0, 0, None, since_first_batch=True),
            ("since the first batch", "at the pace since the first batch"),
            id="no-batch-finished-yet",
        ),
    ],
)
def test_the_recent_pace_is_the_last_15_minutes_or_the_last_10_batches(figures, expected, words):
    last_batches, last_keys, last_since = figures["last"]
    first_at, first_keys = figures["first"] or (None, None)
    pace = RecentPace.choose(
        read_at=at(figures["read"]),
        minutes_batches=figures["minutes"][0],
        minutes_keys=figures["minutes"][1],
        last_batches=last_batches,
        last_batches_keys=last_keys,
        last_batches_since=None if last_since is None else at(last_since),
        first_batch_at=None if first_at is None else at(first_at),
        first_batch_keys=first_keys,
    )
    assert pace == expected
    assert (pace.description, pace.assumption) == words
    if pace.batches:
        assert pace.keys_per_second == pytest.approx(pace.keys / pace.seconds)
    else:
        assert pace.keys_per_second is None


def test_the_recent_pace_follows_a_slower_schedule_where_the_pace_since_the_start_does_not():
    # 100 batches of 1,000 keys every 30 s, then the schedule became every 5 minutes: 10 more batches
    changed = 100 * 30
    read = changed + 10 * 300
    pace = RecentPace.choose(
        read_at=at(read),
        minutes_batches=3,
        minutes_keys=3000,
        last_batches=10,
        last_batches_keys=10_000,
        last_batches_since=at(changed),
        first_batch_at=at(1),
        first_batch_keys=1000,
    )
    assert pace.keys_per_second == pytest.approx(1000 / 300)  # the new schedule's pace
    since_start = 110_000 / read
    assert since_start > 3 * pace.keys_per_second


def accounts(**changes) -> TimeAccounts:
    base = TimeAccounts(
        started_at=START,
        read_at=at(1000),
        activity=Activity.WAITING,
        activity_since=at(990),
        running_seconds=100.0,
        waiting_seconds=500.0,
        paused_seconds=200.0,
        failed_seconds=40.0,
        throttled_by={"wal_archival": 150.0},
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({}, {"waiting": 510.0}, id="waiting-since-990"),
        pytest.param({"activity": Activity.RUNNING}, {"running": 110.0}, id="running"),
        pytest.param({"activity": Activity.PAUSED}, {"paused": 210.0}, id="paused"),
        pytest.param({"activity": Activity.FAILED}, {"failed": 50.0}, id="failed-and-retried"),
        pytest.param(
            {"activity": Activity.THROTTLED, "activity_reason": "replication_lag"},
            {"throttled_by": {"wal_archival": 150.0, "replication_lag": 10.0}},
            id="throttled-by-another-signal",
        ),
        pytest.param(
            {"activity": Activity.FINISHED, "activity_since": at(990)},
            {"wall_clock": 990.0},
            id="finished-stops-the-clock",
        ),
    ],
)
def test_the_open_entry_goes_to_its_account_and_the_parts_add_up_to_the_wall_clock(changes, expected):
    breakdown = accounts(**changes).breakdown()
    closed = {
        "wall_clock": 1000.0,
        "running": 100.0,
        "throttled_by": {"wal_archival": 150.0},
        "waiting": 500.0,
        "paused": 200.0,
        "failed": 40.0,
    }
    assert dataclasses.asdict(breakdown) == {**closed, **expected}
    recorded = sum(seconds for kind, _, seconds in breakdown.parts() if kind != "not_recorded")
    assert recorded + breakdown.not_recorded == pytest.approx(breakdown.wall_clock)


def test_time_before_the_accounts_were_kept_shows_as_not_recorded():
    # a migration of 0.1, upgraded 600 s into its life: only its waits were known then
    upgraded = accounts(
        activity=Activity.WAITING,
        activity_since=at(600),
        running_seconds=0.0,
        waiting_seconds=0.0,
        paused_seconds=0.0,
        failed_seconds=0.0,
        throttled_by={"wal_archival": 100.0},
    ).breakdown()
    assert upgraded.not_recorded == pytest.approx(500.0)
    assert upgraded.parts()[-1] == ("not_recorded", "not recorded (before 0.2)", pytest.approx(500.0))
    assert upgraded.to_dict()["not_recorded"] == 500.0


def test_the_breakdown_reads_in_words_and_as_json():
    breakdown = TimeBreakdown(
        wall_clock=1800.0,
        running=70.0,
        throttled_by={"wal_archival": 4.0},
        waiting=1726.0,
        paused=0.0,
        failed=0.0,
    )
    assert breakdown.describe() == (
        "wall clock 30 min: running 1 min 10 s, throttled by wal_archival 4.0 s, "
        "waiting between batches 28 min 46 s"
    )
    assert breakdown.to_dict() == {
        "wall_clock": 1800.0,
        "running": 70.0,
        "throttled": 4.0,
        "throttled_by": {"wal_archival": 4.0},
        "waiting_between_batches": 1726.0,
        "paused": 0.0,
        "failed_and_retried": 0.0,
        "not_recorded": 0.0,
    }


def progress(status=MigrationStatus.ACTIVE, **time_changes) -> Progress:
    return Progress(
        rows_affected=5000,
        keys_done=5000,
        total_keys=20_000,
        jobs_succeeded=5,
        jobs_open=0,
        active_seconds=5.0,  # the statements: 1,000 keys/s while they run
        throttled_seconds=0.0,
        cursor_key="5000",
        status=status,
        time=accounts(**time_changes),
        pace=RecentPace(keys=4000, seconds=800.0, batches=4, minutes=None, since_first_batch=False),
    )


def test_the_eta_is_the_keys_left_at_the_recent_wall_clock_pace_and_says_so():
    running = progress()
    assert running.recent_keys_per_second == 5.0
    assert running.effective_keys_per_second == 5.0  # 5,000 keys in 1,000 s
    assert running.eta_seconds == pytest.approx(15_000 / 5.0)
    assert running.eta_assumes == "at the last 4 batches' pace"
    # the time statements ran alone would promise 15 s
    assert running.eta_seconds > 100 * 15_000 / running.statement_keys_per_second
    assert (running.held_by, running.held_seconds) == (None, None)


@pytest.mark.parametrize(
    ("status", "changes", "held_by", "held_seconds"),
    [
        pytest.param(
            MigrationStatus.ACTIVE,
            {"activity": Activity.THROTTLED, "activity_reason": "wal_archival", "held_since": at(700)},
            "throttled by wal_archival",
            300.0,
            id="throttled-since-700",
        ),
        pytest.param(
            MigrationStatus.PAUSED,
            {"activity": Activity.PAUSED, "activity_since": at(880), "held_since": at(880)},
            "paused",
            120.0,
            id="paused-since-880",
        ),
        pytest.param(
            MigrationStatus.PAUSED,  # paused by hand in SQL: found so by no task yet
            {"activity": Activity.WAITING, "activity_since": at(950)},
            "paused",
            50.0,
            id="paused-by-hand",
        ),
    ],
)
def test_a_held_migration_shows_how_long_it_has_been_held_instead_of_an_eta(
    status, changes, held_by, held_seconds
):
    held = progress(status, **changes)
    assert (held.eta_seconds, held.eta_assumes) == (None, None)
    assert held.held_by == held_by
    assert held.held_seconds == pytest.approx(held_seconds)


def test_a_finished_migration_has_nothing_left_and_a_failed_one_no_eta():
    finished = progress(MigrationStatus.FINISHED, activity=Activity.FINISHED, activity_since=at(990))
    assert (finished.eta_seconds, finished.percentage) == (0.0, 100.0)
    assert finished.effective_keys_per_second == pytest.approx(5000 / 990)
    failed = progress(MigrationStatus.FAILED, activity=Activity.FAILED)
    assert (failed.eta_seconds, failed.held_by) == (None, None)


def test_without_a_recent_batch_the_eta_falls_back_to_the_pace_since_the_start():
    early = dataclasses.replace(progress(), pace=RecentPace(0, 990.0, 0, None, since_first_batch=True))
    assert early.eta_seconds == pytest.approx(15_000 / 5.0)
    assert early.eta_assumes == "at the pace since it started"
    nothing = dataclasses.replace(early, keys_done=0)
    assert (nothing.eta_seconds, nothing.eta_assumes) == (None, None)
