"""The batching core against real PostgreSQL: exactly once, concurrency, killed workers, throttling."""

from __future__ import annotations

import psycopg

from airflow_provider_walthrottle.migrations.runner import (
    HealthVerdict,
    Outcome,
    RunSettings,
    prepare,
    run_one_batch,
)
from tests.migrations.conftest import counter_histogram, increment_migration, make_table


def always_healthy():
    return HealthVerdict(proceed=True)


def test_exactly_once_over_100k_rows_with_gaps_and_a_scope(migration_db):
    make_table(migration_db, "exactly_once", 100_000)
    definition = increment_migration("exactly_once", "exactly_once")
    with psycopg.connect(migration_db.dsn(), autocommit=True) as conn:
        store = prepare(conn, definition, batch_size=5000)
        outcomes = []
        while True:
            result = run_one_batch(store, RunSettings(sub_batch_size=1000, pause_ms=0), always_healthy)
            outcomes.append(result.outcome)
            if result.outcome is not Outcome.COMPLETED:
                break
    assert outcomes[-1] is Outcome.FINISHED
    histogram = counter_histogram(migration_db, "exactly_once")
    assert set(histogram) == {(True, 1), (False, 0)}, histogram
    assert result.progress.status == "finished"
    assert result.progress.keys_done == result.progress.total_rows == histogram[(True, 1)]
