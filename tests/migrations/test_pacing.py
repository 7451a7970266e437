"""Statements sized by time, pauses paced by the health signals, batches sized on their wall time.

Against real PostgreSQL: the backlog the pauses follow is real (segments held back by the
archive gate) and read through the real gate. The pauses are recorded by a ``sleep`` that really
sleeps and notes how long; nothing here asserts how fast anything ran.
"""

from __future__ import annotations

import itertools
import re
import time

import psycopg
import pytest

from airflow_provider_walthrottle.gate import HealthGate
from airflow_provider_walthrottle.indicators.base import read_indicators
from airflow_provider_walthrottle.indicators.wal_archival import WalArchivalIndicator
from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
from airflow_provider_walthrottle.migrations.pacing import FIRST_STATEMENT_KEYS, MAX_STATEMENT_GROWTH
from airflow_provider_walthrottle.migrations.runner import HealthVerdict, Outcome, RunSettings, prepare
from airflow_provider_walthrottle.wal.health import OnUnavailable
from tests.support.migration_runs import run_bounded_batch
from tests.support.migration_tables import increment_migration, make_table

WAL_FLAG_ENV = "AIRFLOW_VAR_BATCHED_MIGRATIONS_HEALTH_STATUS_WAL"
LINE = re.compile(r"keys (\d+)\.\.(\d+) of .*, (\d+) rows in (\d+) ms")


class RecordingSleep:
    """Sleeps as asked, and keeps every pause."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)
        time.sleep(seconds)


def statements(lines: list[str]) -> list[tuple[int, int]]:
    """Return (keys, milliseconds) of each sub-batch line the runner logged.

    The increment migration changes every key in its scope once, so a statement's rows are its keys.
    """
    found = [LINE.search(line) for line in lines]
    return [(int(m[3]), int(m[4])) for m in found if m]


def one_batch(cluster, table: str, keys: int, settings: RunSettings, check=None, sleep=None):
    make_table(cluster, table, keys)
    lines: list[str] = []
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        store = prepare(conn, increment_migration(table, table), batch_size=keys)
        extra = {"sleep": sleep} if sleep is not None else {}
        result = run_bounded_batch(
            store, settings, check or (lambda: HealthVerdict(proceed=True)), log=lines.append, **extra
        )
    assert result.outcome is Outcome.COMPLETED
    return result, statements(lines)


def test_statements_start_small_and_grow_toward_the_time_target(migration_db):
    settings = RunSettings(pause_ms=0, target_statement_seconds=0.05)
    result, sizes = one_batch(migration_db, "sized_by_time", 60_000, settings)

    keys = [k for k, _ in sizes]
    assert keys[0] == FIRST_STATEMENT_KEYS
    assert keys[1] > keys[0], keys  # 100 keys take far less than 50 ms here
    # never more than four times the last, and the range is walked whole
    assert all(b <= a * MAX_STATEMENT_GROWTH for a, b in itertools.pairwise(keys)), keys
    assert sum(keys) == result.progress.total_keys


def test_a_fixed_sub_batch_size_is_kept(migration_db):
    result, sizes = one_batch(migration_db, "fixed", 6_000, RunSettings(sub_batch_size=250, pause_ms=0))
    keys = [k for k, _ in sizes]
    assert keys[:-1] == [250] * (len(keys) - 1)
    assert 0 < keys[-1] <= 250 and sum(keys) == result.progress.total_keys


def wal_gate(threshold: int) -> HealthGate:
    return HealthGate(
        "unused", (WalArchivalIndicator(max_pending_segments=threshold),), OnUnavailable.WAIT, actor="t"
    )


@pytest.mark.parametrize(("backlog", "paused"), [(0, False), (30, True)])
def test_pauses_come_from_how_near_the_backlog_is_to_its_threshold(
    monkeypatch, pg_drained, migration_db, backlog, paused
):
    monkeypatch.setenv(WAL_FLAG_ENV, "true")
    if backlog:
        pg_drained.archive_one_segment()
        pg_drained.make_backlog(backlog)  # 30 of 40: three quarters of the threshold
    gate = wal_gate(40)
    sleep = RecordingSleep()
    with psycopg.connect(pg_drained.dsn(), autocommit=True) as health_conn:

        def check() -> HealthVerdict:
            return HealthVerdict.from_gate(gate.check(lambda i, c: read_indicators(health_conn, i, c)))

        settings = RunSettings(sub_batch_size=200, recheck_seconds=0)  # pause_ms unset: the signals pace
        result, sizes = one_batch(migration_db, f"paced_{backlog}", 5_000, settings, check, sleep)

    assert len(sizes) >= 10 and sum(k for k, _ in sizes) == result.progress.total_keys
    if not paused:
        assert sleep.pauses == []  # a healthy server gets statements back to back
        return
    # at 75 % of the threshold the migration writes half the time: each pause is as long as the
    # statement before it (the log rounds that to whole milliseconds)
    assert len(sleep.pauses) == len(sizes) - 1
    for pause, (_, ms) in zip(sleep.pauses, sizes[:-1], strict=True):
        assert abs(pause * 1000 - ms) <= 1, (sleep.pauses, sizes)


def test_a_batch_is_sized_on_its_wall_time_pauses_included(migration_db):
    """The time target covers the whole batch: 9 pauses of 50 ms make 1,000 keys take over 0.45 s."""
    # 2,500 rows of which 1,000 are in scope: ten statements of 100 keys, nine pauses
    settings = RunSettings(
        sub_batch_size=100, pause_ms=50, policy=BatchSizePolicy(min_batch_size=100, max_batch_size=None)
    )
    result, sizes = one_batch(migration_db, "wall_time", 2_500, settings)
    assert len(sizes) >= 10  # at least nine pauses of 50 ms
    [(rate,)] = migration_db.execute(
        "SELECT rows_per_second FROM walthrottle.batched_migrations WHERE name = 'wall_time'"
    )
    paused = 0.05 * (len(sizes) - 1)  # seconds the batch slept, at the least
    assert 0 < rate <= result.progress.total_keys / paused
