"""The plan of a migration, on real PostgreSQL: rows, WAL per row, the archiver, warnings, no change."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from airflow_provider_walthrottle.migrations.definition import MigrationDefinition, MigrationDefinitionError
from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
from airflow_provider_walthrottle.migrations.plan import MigrationPlanError, compute_plan
from airflow_provider_walthrottle.migrations.plan_estimates import batch_sizes, peak_backlog
from airflow_provider_walthrottle.migrations.runner import RunSettings, prepare
from tests.support.migration_runs import run_until_finished
from tests.support.migration_tables import in_scope_keys, increment_migration, make_table

MIB = 1024 * 1024


def checksum(cluster, table: str) -> str:
    """Return a digest of every row of ``table``, in key order: equal digests, equal contents."""
    query = sql.SQL("SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY id), '')) FROM {} AS t").format(
        sql.Identifier(table)
    )
    return str(cluster.execute(query)[0][0])


def plan(cluster, definition: MigrationDefinition, **kwargs):
    kwargs.setdefault("archiver_window_seconds", 0)
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        return compute_plan(conn, definition, **kwargs)


# ------------------------------------------------------------------------------------ on real tables


def test_the_plan_counts_the_scope_and_changes_no_row(migration_db):
    make_table(migration_db, "plan_items", 30_000)
    before = checksum(migration_db, "plan_items")

    result = plan(migration_db, increment_migration("plan_items", "plan_items"))

    assert checksum(migration_db, "plan_items") == before
    keys = in_scope_keys(migration_db, "plan_items")
    assert (result.rows, result.rows_method) == (len(keys), "counted")
    assert len(result.samples) == 5
    assert all(sample.keys == 1000 and sample.rows_affected == 1000 for sample in result.samples)
    # spread across the keys in scope, from the first, without overlapping
    firsts = [int(sample.first_key) for sample in result.samples]
    assert firsts[0] == keys[0]
    assert firsts[-1] >= keys[len(keys) * 3 // 4]
    for earlier, later in zip(result.samples, result.samples[1:], strict=False):
        assert int(earlier.last_key) < int(later.first_key)
    assert result.wal_bytes_per_row is not None and result.wal_bytes_per_row > 0
    assert result.total_wal_bytes == round(result.rows * result.wal_bytes_per_row)
    assert result.wal_segment_size == 16 * MIB
    assert "rolled back: no row changed" in result.side_effects
    assert result.to_dict()["samples"][0]["keys"] == 1000


def test_a_small_scope_is_sampled_whole(migration_db):
    make_table(migration_db, "plan_small", 6000)
    keys = in_scope_keys(migration_db, "plan_small")

    result = plan(migration_db, increment_migration("plan_small", "plan_small"))

    assert len(keys) < 5 * 1000
    assert sum(sample.keys for sample in result.samples) == len(keys) == result.rows
    assert int(result.samples[0].first_key) == keys[0]
    assert int(result.samples[-1].last_key) == keys[-1]


def test_the_wal_per_row_is_near_what_the_migration_then_writes(migration_db):
    make_table(migration_db, "plan_real", 30_000)
    definition = increment_migration("plan_real", "plan_real")
    migration_db.execute("CHECKPOINT")  # both the sample and the run start with full-page writes due

    result = plan(migration_db, definition)
    migration_db.execute("CHECKPOINT")
    with psycopg.connect(migration_db.dsn(), autocommit=True) as conn:
        store = prepare(conn, definition, batch_size=result.rows)
        runs = run_until_finished(store, RunSettings(sub_batch_size=1000, pause_ms=0))

    keys = sum(run.keys for run in runs)
    real = sum(run.wal_bytes for run in runs) / keys
    assert keys == result.rows
    assert result.wal_bytes_per_row is not None
    assert 0.5 <= result.wal_bytes_per_row / real <= 2.0, (result.wal_bytes_per_row, real)


def test_a_large_table_is_estimated_by_the_planner(migration_db):
    make_table(migration_db, "plan_large", 30_000)
    migration_db.execute("ANALYZE plan_large")
    real = len(in_scope_keys(migration_db, "plan_large"))

    result = plan(migration_db, increment_migration("plan_large", "plan_large"), count_limit=10_000)

    assert result.rows_method == "estimated"
    assert 0.5 * real <= result.rows <= 2 * real
    assert "and a page sample, not counted" in result.render()
    assert sum(sample.keys for sample in result.samples) == 5000


def test_no_index_for_the_scope_and_a_trigger_are_warned_about(migration_db):
    make_table(migration_db, "plan_warned", 3000)
    definition = increment_migration("plan_warned", "plan_warned")

    unindexed = plan(migration_db, definition)
    migration_db.execute("CREATE INDEX plan_warned_scope ON plan_warned (id) WHERE tenant % 3 = 0")
    migration_db.execute(
        "CREATE FUNCTION plan_warned_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$"
    )
    migration_db.execute(
        "CREATE TRIGGER plan_touch BEFORE UPDATE ON plan_warned "
        "FOR EACH ROW EXECUTE FUNCTION plan_warned_touch()"
    )
    migration_db.execute(
        "CREATE TABLE plan_warned_child (id int PRIMARY KEY, parent bigint REFERENCES plan_warned)"
    )
    try:
        indexed = plan(migration_db, definition)
    finally:
        migration_db.execute("DROP TABLE plan_warned_child")
        migration_db.execute("DROP TABLE plan_warned")
        migration_db.execute("DROP FUNCTION plan_warned_touch()")

    (no_index,) = [w for w in unindexed.warnings if w.startswith("no index serves the scope")]
    assert "'tenant % 3 = 0'" in no_index and "%%" not in no_index  # the scope as the server reads it
    assert not [w for w in unindexed.warnings if "trigger" in w]
    assert not [w for w in indexed.warnings if w.startswith("no index serves the scope")], indexed.warnings
    assert [w for w in indexed.warnings if w.startswith("trigger plan_touch on public.plan_warned")]
    (foreign,) = [w for w in indexed.warnings if w.startswith("foreign key")]
    assert "plan_warned_child references public.plan_warned" in foreign
    assert "no index leads with its columns" in foreign
    assert "warnings" in indexed.render()


def test_no_recent_archiving_is_said_and_a_given_pace_is_used(migration_db):
    make_table(migration_db, "plan_paced", 6000)
    definition = increment_migration("plan_paced", "plan_paced")
    migration_db.make_backlog(3)  # the gate closed: nothing can be archived in the window

    silent = plan(migration_db, definition, archiver_window_seconds=0.3)
    given = plan(migration_db, definition, archiver_window_seconds=0.3, archiver_segments_per_second=0.5)

    assert silent.archiver.source == "none"
    assert silent.archiver.segments_per_second is None
    assert silent.archiver.note.startswith("no recent archiving to measure")
    assert silent.bounds["archiver"] is None
    assert silent.peak_backlog_segments is None
    assert silent.pending_segments == given.pending_segments == 3
    assert "3 pending now" in given.render()
    assert given.archiver.source == "given"
    assert given.bounds["archiver"] == pytest.approx(given.total_wal_bytes / (0.5 * 16 * MIB))


def test_the_archiver_pace_is_measured_from_what_it_archives(migration_db):
    make_table(migration_db, "plan_measured", 6000)
    definition = increment_migration("plan_measured", "plan_measured")

    def window(_seconds: float) -> None:  # the window: three segments archived within it
        before = migration_db.archiver_stats()["archived_count"]
        for _ in range(3):
            migration_db.write_wal_and_switch()
        migration_db.wait_until(
            lambda: migration_db.archiver_stats()["archived_count"] >= before + 3,
            what="three segments archived",
        )

    result = plan(migration_db, definition, archiver_window_seconds=1, sleep=window)

    assert result.archiver.source == "measured"
    assert result.archiver.archived >= 3
    assert result.archiver.segments_per_second == pytest.approx(
        result.archiver.archived / result.archiver.window_seconds
    )
    assert result.bounds["archiver"] is not None


def test_a_locked_row_makes_the_sample_give_up_and_change_nothing(migration_db):
    make_table(migration_db, "plan_locked", 6000)
    keys = in_scope_keys(migration_db, "plan_locked")
    before = checksum(migration_db, "plan_locked")
    with psycopg.connect(migration_db.dsn()) as holder:
        holder.execute("SELECT 1 FROM plan_locked WHERE id = %s FOR UPDATE", [keys[10]])
        with pytest.raises(MigrationPlanError, match="lock_timeout of 100 ms"):
            plan(migration_db, increment_migration("plan_locked", "plan_locked"), lock_timeout_ms=100)
        holder.rollback()
    assert checksum(migration_db, "plan_locked") == before


def test_an_empty_scope_runs_nothing(migration_db):
    make_table(migration_db, "plan_empty", 0)

    result = plan(migration_db, increment_migration("plan_empty", "plan_empty"))

    assert (result.rows, result.samples, result.batches, result.total_wal_bytes) == (0, (), 0, 0)
    assert result.binding is None
    assert result.advice == "Nothing to migrate."
    assert result.side_effects == "none: nothing to sample, no statement ran"
    assert "sample           : none (no keys in scope)" in result.render()


def test_a_table_that_does_not_exist_is_refused(migration_db):
    with pytest.raises(MigrationDefinitionError, match=r"table public\.plan_nowhere does not exist"):
        plan(migration_db, increment_migration("plan_nowhere", "plan_nowhere"))


def test_a_failing_batch_sql_is_reported_rolled_back(migration_db):
    make_table(migration_db, "plan_failing", 3000)
    definition = MigrationDefinition(
        name="plan_failing",
        table="plan_failing",
        column="id",
        batch_sql="UPDATE plan_failing SET counter = 1 / (id - id) WHERE id BETWEEN %(start)s AND %(end)s",
    )
    with pytest.raises(MigrationPlanError, match=r"batch_sql failed in the plan's sample .*division by zero"):
        plan(migration_db, definition)


# ------------------------------------------------------------------------------------ pure arithmetic


@pytest.mark.parametrize(
    ("rows", "rate", "max_batch_size", "expected"),
    [
        (0, 1000.0, None, []),
        (500, 1000.0, None, [500]),
        # first 1000, then 4x a batch, until the 30 s target (30,000 rows at 1,000 rows/s)
        (60_000, 1000.0, None, [1000, 4000, 16000, 30000, 9000]),
        # capped by max_batch_size
        (10_000, 1000.0, 2000, [1000, 2000, 2000, 2000, 2000, 1000]),
    ],
)
def test_batch_sizes_follow_the_optimizer(rows, rate, max_batch_size, expected):
    policy = BatchSizePolicy(
        min_batch_size=100, max_batch_size=max_batch_size, target_batch_seconds=30.0, max_growth=4.0
    )

    assert batch_sizes(rows, 1000, policy, rate, 100.0) == expected


@pytest.mark.parametrize(
    ("wal_rate", "archiver", "database_seconds", "expected"),
    [
        (None, 1.0 * MIB, 10.0, None),  # no measured rate
        (1.0 * MIB, None, 10.0, None),  # no archiver pace
        (1.0 * MIB, 2.0 * MIB, 100.0, 1),  # the archiver keeps up
        (3.0 * MIB, 1.0 * MIB, 40.0, 5),  # ends before the threshold: 2 MiB/s for 40 s = 5 segments
        (20.0 * MIB, 1.0 * MIB, 1000.0, 43),  # held at the threshold, passed by one sub-batch's segment
    ],
)
def test_the_peak_backlog(wal_rate, archiver, database_seconds, expected):
    peak, note = peak_backlog(
        wal_rate,
        archiver,
        10_000 * MIB,
        16 * MIB,
        42,
        sub_batch_wal=1.0 * MIB,
        database_seconds=database_seconds,
    )

    assert peak == expected, note


@pytest.mark.parametrize(
    ("wal_rate", "pending_now", "expected"),
    [
        (1.0 * MIB, 7, 7),  # the archiver keeps up: the backlog only drains
        (3.0 * MIB, 7, 12),  # 5 segments more than the 7 pending
        (3.0 * MIB, 40, 43),  # which would pass the threshold: held there
    ],
)
def test_the_peak_backlog_starts_from_the_backlog_now(wal_rate, pending_now, expected):
    peak, note = peak_backlog(
        wal_rate,
        2.0 * MIB if wal_rate < 2.0 * MIB else 1.0 * MIB,
        10_000 * MIB,
        16 * MIB,
        42,
        sub_batch_wal=1.0 * MIB,
        database_seconds=40.0,
        pending_now=pending_now,
    )

    assert peak == expected, note


def test_a_threshold_of_zero_plans_as_the_operator_runs_it(migration_db):
    # the operator takes 0 (stop while any segment waits): its plan must too, not refuse it
    make_table(migration_db, "plan_zero", 3000)
    try:
        result = plan(migration_db, increment_migration("plan_zero", "plan_zero"), max_pending_segments=0)
    finally:
        migration_db.execute("DROP TABLE plan_zero")

    assert result.max_pending_segments == 0
    assert "threshold 0" in result.render()
