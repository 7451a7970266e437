"""The batching core against real PostgreSQL: exactly once, concurrency, killed workers, throttling."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import os
import re
import signal
import threading

import psycopg
import pytest
from psycopg import sql

from airflow_provider_walthrottle.migrations.definition import (
    MigrationDefinition,
    MigrationDefinitionError,
    validate_batch_sizes,
)
from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
from airflow_provider_walthrottle.migrations.runner import (
    HealthVerdict,
    JobFailedError,
    Outcome,
    RunSettings,
    prepare,
    run_one_batch,
)
from airflow_provider_walthrottle.migrations.state import MigrationStateError
from airflow_provider_walthrottle.wal.health import (
    Signal,
    evaluate_wal_archival,
)
from airflow_provider_walthrottle.wal.queries import read_archiver_status
from tests.support.migration_runs import (
    ArchiveHealth,
    always_healthy,
    assert_ranges_partition,
    job_rows,
    lock_is_free,
    migration_row,
    run_bounded_batch,
    run_until_finished,
    start_worker,
    sub_batch_budget,
)
from tests.support.migration_tables import (
    IN_SCOPE,
    SCOPE,
    counter_histogram,
    in_scope_keys,
    increment_migration,
    make_table,
    poisoned_migration,
)
from tests.support.postgres_cluster import wait_until


def test_exactly_once_over_100k_rows_with_gaps_and_a_scope(migration_db):
    make_table(migration_db, "exactly_once", 100_000)
    definition = increment_migration("exactly_once", "exactly_once")
    with psycopg.connect(migration_db.dsn(), autocommit=True) as conn:
        store = prepare(conn, definition, batch_size=5000)
        outcomes = []
        for _ in range(100):  # about 7 batches are needed; a bound instead of a hang if none ends
            result = run_one_batch(store, RunSettings(sub_batch_size=1000, pause_ms=0), always_healthy)
            outcomes.append(result.outcome)
            if result.outcome is not Outcome.COMPLETED:
                break
    assert outcomes[-1] is Outcome.FINISHED
    histogram = counter_histogram(migration_db, "exactly_once")
    assert set(histogram) == {(True, 1), (False, 0)}, histogram
    assert result.progress.status == "finished"
    assert result.progress.keys_done == result.progress.total_keys == histogram[(True, 1)]


def test_a_migration_whose_rows_were_deleted_under_it_reads_100_percent_once_finished(migration_db):
    make_table(migration_db, "deleted_under", 3000)
    definition = increment_migration("deleted_under", "deleted_under")
    settings = RunSettings(sub_batch_size=100, pause_ms=0)
    with psycopg.connect(migration_db.dsn(), autocommit=True) as conn:
        store = prepare(conn, definition, batch_size=200)
        first = run_one_batch(store, settings, always_healthy)
        assert first.outcome is Outcome.COMPLETED and first.progress.percentage < 100
        # half the keys still to walk disappear before the migration gets to them
        conn.execute("DELETE FROM deleted_under WHERE id > (SELECT max(id) / 2 FROM deleted_under)")
        while (result := run_one_batch(store, settings, always_healthy)).outcome is Outcome.COMPLETED:
            pass
    assert result.outcome is Outcome.FINISHED
    assert result.progress.keys_done < result.progress.total_keys
    assert result.progress.percentage == 100.0


# --------------------------------------------------------------------------------------------------
# concurrency
# --------------------------------------------------------------------------------------------------


def test_eight_worker_processes_apply_every_range_exactly_once(migration_db):
    make_table(migration_db, "concurrent", 100_000)
    definition = increment_migration("concurrent", "concurrent")
    policy = BatchSizePolicy(min_batch_size=100, max_batch_size=500)
    workers = [
        start_worker(
            migration_db,
            definition,
            dag_id=f"worker-{index}",
            batch_size=500,
            sub_batch_size=100,
            policy=policy,
            wait=True,
        )
        for index in range(8)
    ]
    try:
        # every worker prepared the migration (concurrently, on a fresh state schema) before any starts
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            assert line.startswith('{"ready"'), (line, worker.stderr.read() if worker.stderr else "")
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        reports = []
        for worker in workers:
            out, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err
            reports.append([json.loads(line) for line in out.splitlines()])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

    outcomes = [report[-1]["outcome"] for report in reports]
    assert set(outcomes) <= {"finished", "nothing_to_claim"}, outcomes
    assert "finished" in outcomes  # whoever completes the last job finds the migration finished
    assert migration_row(migration_db, "concurrent")["status"] == "finished"

    histogram = counter_histogram(migration_db, "concurrent")
    assert set(histogram) == {(True, 1), (False, 0)}, histogram

    jobs = job_rows(migration_db, "concurrent")
    assert {job["status"] for job in jobs} == {"succeeded"}
    assert all(job["attempts"] == 1 and job["resume_key"] == job["end_key"] for job in jobs)
    keys = in_scope_keys(migration_db, "concurrent")
    assert_ranges_partition(jobs, keys)
    assert sum(job["rows_affected"] for job in jobs) == histogram[(True, 1)] == len(keys)

    # the work was shared, and jobs of different workers really ran at the same time
    by_worker = collections.Counter(job["dag_id"] for job in jobs)
    assert len(by_worker) >= 2, by_worker
    reported = collections.Counter(
        f"worker-{index}" for index, report in enumerate(reports) for line in report if line["job"]
    )
    assert reported == by_worker
    overlapping = [
        (a["id"], b["id"])
        for a, b in itertools.combinations(jobs, 2)
        if a["dag_id"] != b["dag_id"]
        and a["started_at"] < b["finished_at"]
        and b["started_at"] < a["finished_at"]
    ]
    assert overlapping, "no two workers ever ran a job at the same time"


# --------------------------------------------------------------------------------------------------
# killed worker
# --------------------------------------------------------------------------------------------------


def test_a_job_whose_worker_was_killed_is_taken_over_at_once_and_resumes(migration_db):
    make_table(migration_db, "killed", 1000)
    migration_db.execute("DROP TABLE IF EXISTS killed_control")
    migration_db.execute("CREATE TABLE killed_control AS SELECT true AS slow")
    # each sub-batch sleeps while killed_control.slow, so that the worker dies inside one
    definition = MigrationDefinition(
        name="killed",
        table="killed",
        column="id",
        batch_sql=(
            "WITH pause AS MATERIALIZED ("
            "SELECT pg_sleep(CASE WHEN (SELECT slow FROM killed_control) THEN 0.3 ELSE 0 END)) "
            "UPDATE killed SET counter = counter + 1 FROM pause "
            f"WHERE id BETWEEN %(start)s AND %(end)s AND {SCOPE}"
        ),
        scope=SCOPE,
    )
    policy = BatchSizePolicy(min_batch_size=100, max_batch_size=200)
    worker = start_worker(
        migration_db,
        definition,
        dag_id="doomed",
        batch_size=200,
        sub_batch_size=20,
        policy=policy,
        wait=False,
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().startswith('{"ready"')  # prepared: the state tables exist
        running = wait_until(
            lambda: [
                j for j in job_rows(migration_db, "killed") if j["status"] == "running" and j["sub_batches"]
            ],
            timeout=30,
            what="the worker to commit a sub-batch",
            interval=0.01,
        )
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.communicate(timeout=30)
    assert worker.returncode == -signal.SIGKILL
    (orphan,) = running
    # PostgreSQL ends the session once its statement returns, releasing the job's lock
    wait_until(
        lambda: not migration_db.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = 'doomed'"),
        timeout=30,
        what="the killed worker's backend to exit",
    )
    migration_db.execute("UPDATE killed_control SET slow = false")

    (orphan,) = [job for job in job_rows(migration_db, "killed") if job["id"] == orphan["id"]]
    assert (orphan["status"], orphan["attempts"], orphan["dag_id"]) == ("running", 1, "doomed")
    assert orphan["sub_batches"] >= 1 and orphan["resume_key"] is not None
    assert orphan["resume_key"] != orphan["end_key"], "the worker was not killed mid-batch"
    assert lock_is_free(migration_db, orphan["id"])
    # the committed sub-batches are applied; the one in flight was rolled back with the session
    resume = int(orphan["resume_key"])
    applied = migration_db.execute(
        "SELECT id <= %s, counter, count(*) FROM killed WHERE id BETWEEN %s AND %s AND tenant %% 3 = 0 "
        "GROUP BY 1, 2",
        [resume, int(orphan["start_key"]), int(orphan["end_key"])],
    )
    assert {(done, counter) for done, counter, _ in applied} == {(True, 1), (False, 0)}, applied

    lines: list[str] = []
    with migration_db.connect() as conn:
        store = prepare(conn, definition, batch_size=200)
        settings = RunSettings(sub_batch_size=20, pause_ms=0, policy=policy)
        first = run_bounded_batch(
            store, settings, always_healthy, dag_id="rescuer", log=sub_batch_budget(lines)
        )
        assert first.outcome is Outcome.COMPLETED
        assert first.job is not None
        # the orphan first, from where it stopped, on the same attempt: a lost worker uses none
        assert (first.job.id, first.job.attempts, first.job.resume_key) == (
            orphan["id"],
            1,
            orphan["resume_key"],
        )
        next_key = min(key for key in in_scope_keys(migration_db, "killed") if key > resume)
        assert lines[0].startswith(f"job {orphan['id']}: keys {next_key}.."), lines[0]
        run_until_finished(store, settings)

    (taken_over,) = [job for job in job_rows(migration_db, "killed") if job["id"] == orphan["id"]]
    assert (taken_over["status"], taken_over["attempts"], taken_over["dag_id"]) == ("succeeded", 1, "rescuer")
    histogram = counter_histogram(migration_db, "killed")
    assert set(histogram) == {(True, 1), (False, 0)}, histogram
    jobs = job_rows(migration_db, "killed")
    assert_ranges_partition(jobs, in_scope_keys(migration_db, "killed"))


# --------------------------------------------------------------------------------------------------
# throttled mid-migration
# --------------------------------------------------------------------------------------------------


def test_the_migrations_own_wal_throttles_it_between_sub_batches_and_it_resumes(pg_drained, migration_db):
    cluster = pg_drained
    cluster.execute("DROP TABLE IF EXISTS wide")
    cluster.execute(
        "CREATE TABLE wide "
        "(id bigint PRIMARY KEY, counter int NOT NULL DEFAULT 0, padding text NOT NULL DEFAULT '')"
    )
    cluster.execute("INSERT INTO wide (id) SELECT generate_series(1, 30000)")
    # a backfill of a wide column: about 2 kB of WAL per row, 2 MB per sub-batch of 1000 rows
    definition = MigrationDefinition(
        name="wide_backfill",
        table="wide",
        column="id",
        batch_sql=(
            "UPDATE wide SET counter = counter + 1, padding = repeat(md5(id::text), 60) "
            "WHERE id BETWEEN %(start)s AND %(end)s"
        ),
    )
    settings = RunSettings(
        sub_batch_size=1000,
        pause_ms=0,
        max_pending_segments=2,
        policy=BatchSizePolicy(min_batch_size=100, max_batch_size=30000),
        share_wal_budget=False,  # the gate's stop; the shared budget stops it sooner (test_wal_budget)
    )
    cluster.archive_one_segment()
    cluster.make_backlog(1)  # gate closed, one segment waiting: below the threshold of 2
    with cluster.connect() as checks, cluster.connect() as conn:
        health = ArchiveHealth(checks, max_pending_segments=2)
        store = prepare(conn, definition, batch_size=30000)

        throttled = run_bounded_batch(store, settings, health)

        assert health.seen[0].signal is Signal.NORMAL  # it started below the threshold
        assert throttled.outcome is Outcome.THROTTLED
        assert throttled.health is not None and throttled.health.signal is Signal.STOP
        assert (throttled.health.status.pending_segments or 0) > 2
        assert len(cluster.ready_segments()) > 2  # a real backlog, of the migration's own WAL
        assert throttled.job is not None and 0 < throttled.keys < 30000
        (job,) = job_rows(cluster, "wide_backfill")
        assert (job["id"], job["status"], job["attempts"]) == (throttled.job.id, "paused", 1)
        assert job["end_key"] == "30000", "the job should have held the whole table"
        assert job["sub_batches"] >= 1 and job["resume_key"] is not None
        resume = int(job["resume_key"])
        assert job["rows_affected"] == throttled.rows_affected == throttled.keys == resume
        # exactly the rows of the committed sub-batches are done
        assert dict(
            cluster.execute("SELECT counter, count(*) FROM wide WHERE id <= %s GROUP BY 1", [resume])
        ) == {1: resume}
        assert dict(
            cluster.execute("SELECT counter, count(*) FROM wide WHERE id > %s GROUP BY 1", [resume])
        ) == {0: 30000 - resume}
        assert migration_row(cluster, "wide_backfill")["status"] == "active"

        # still above the threshold: the next task stops before claiming anything
        waiting = run_bounded_batch(store, settings, health)
        assert (waiting.outcome, waiting.job, waiting.keys) == (Outcome.THROTTLED, None, 0)
        assert job_rows(cluster, "wide_backfill") == [job]

        cluster.drain()
        results = []
        for _ in range(20):
            results.append(run_bounded_batch(store, settings, health))
            if results[-1].outcome is Outcome.FINISHED:
                break
            if results[-1].outcome is Outcome.THROTTLED:  # the archiver fell behind; let it catch up
                cluster.drain()
        assert results[-1].outcome is Outcome.FINISHED, [result.outcome for result in results]
        resumed = results[0]
        assert resumed.job is not None
        # the paused job first, where it stopped; a pause is not an attempt
        assert (resumed.job.id, resumed.job.attempts, resumed.job.resume_key) == (job["id"], 1, str(resume))

    assert dict(cluster.execute("SELECT counter, count(*) FROM wide GROUP BY 1")) == {1: 30000}
    assert cluster.execute("SELECT count(*) FROM wide WHERE padding = ''") == [(0,)]
    assert {job["status"] for job in job_rows(cluster, "wide_backfill")} == {"succeeded"}


@pytest.mark.parametrize(
    ("recheck_seconds", "pause_ms", "checks"),
    [
        (3600.0, 0, "once"),  # far under the threshold: only the check before the batch
        (0.0, 0, "always"),  # 0: before the batch and between every two sub-batches
        (0.01, 20, "always"),  # each count is older than recheck_seconds by the next sub-batch
    ],
)
def test_checks_between_sub_batches_are_skipped_while_the_backlog_cannot_pass_the_threshold(
    migration_db, recheck_seconds, pause_ms, checks
):
    make_table(migration_db, "recheck", 300)
    in_scope = sum(1 for i in range(1, 300 * 7 // 6 + 1) if i % 7 and (i % 10) % 3 == 0)
    sub_batches = -(-in_scope // 10)
    definition = increment_migration("recheck", "recheck")
    threshold = 42
    settings = RunSettings(
        sub_batch_size=10,
        pause_ms=pause_ms,
        max_pending_segments=threshold,
        recheck_seconds=recheck_seconds,
        policy=BatchSizePolicy(min_batch_size=1000, max_batch_size=1000),
    )
    migration_db.archive_one_segment()
    migration_db.make_backlog(1)  # gate closed: one segment pending, a few kB of WAL to come
    with migration_db.connect() as checks_conn, migration_db.connect() as conn:
        health = ArchiveHealth(checks_conn, max_pending_segments=threshold)
        store = prepare(conn, definition, batch_size=1000)
        result = run_bounded_batch(store, settings, health)
    assert result.outcome is Outcome.COMPLETED and result.keys == in_scope
    expected = 1 if checks == "once" else sub_batches  # the first before the batch, then between
    assert [signal.status.pending_segments for signal in health.seen] == [1] * expected
    histogram = counter_histogram(migration_db, "recheck")
    assert set(histogram) == {(True, 1), (False, 0)}, histogram


def test_a_check_is_due_once_the_wal_since_the_last_count_could_pass_the_threshold(pg_drained):
    with pg_drained.connect() as conn:
        status = read_archiver_status(conn)
    segment = status.wal_segment_size

    def counted(pending: int | None, proceed: bool = True) -> HealthVerdict:
        health = evaluate_wal_archival(dataclasses.replace(status, pending_segments=pending), 42)
        return HealthVerdict(proceed=proceed, health=health)

    def due(verdict: HealthVerdict, wal_bytes_since: int, seconds_since: float) -> bool:
        return verdict.recheck_due(wal_bytes_since, seconds_since, recheck_seconds=1.0)

    assert not due(counted(0), 0, 0.5)
    assert not due(counted(41), segment - 1, 0.5)  # at most 42 now: a count could not stop it
    assert due(counted(41), segment, 0.5)  # one more segment completed could make 43
    assert due(counted(20), 30 * segment, 0.5)
    assert due(counted(0), 0, 1.0)  # the count is too old
    assert due(counted(None, proceed=True), 0, 0.0)  # unknown, went on anyway (on_unavailable)
    # the flag was off: no count to trust, but the flags need not be read before every statement
    assert not due(HealthVerdict(proceed=True), 0, 0.5)
    assert due(HealthVerdict(proceed=True), 0, 1.0)  # read again within recheck_seconds
    assert counted(0).recheck_due(0, 0.0, recheck_seconds=0)


# --------------------------------------------------------------------------------------------------
# failures: split and retry, max attempts
# --------------------------------------------------------------------------------------------------


def test_a_range_that_keeps_timing_out_is_split_until_its_halves_pass(migration_db):
    make_table(migration_db, "split_retry", 20)
    # a sub-batch of more than one key outlasts the 50 ms statement_timeout
    definition = MigrationDefinition(
        name="split_retry",
        table="split_retry",
        column="id",
        batch_sql=(
            "WITH pause AS MATERIALIZED (SELECT pg_sleep(CASE WHEN %(start)s = %(end)s THEN 0 ELSE 0.2 END)) "
            "UPDATE split_retry SET counter = counter + 1 FROM pause "
            f"WHERE id BETWEEN %(start)s AND %(end)s AND {SCOPE}"
        ),
        scope=SCOPE,
    )
    settings = RunSettings(sub_batch_size=100, pause_ms=0, statement_timeout_ms=50)
    keys = in_scope_keys(migration_db, "split_retry")
    assert len(keys) == 9
    failures: list[JobFailedError] = []
    with migration_db.connect() as conn:
        store = prepare(conn, definition, batch_size=100)
        for _ in range(100):
            try:
                result = run_bounded_batch(store, settings, always_healthy)
            except JobFailedError as error:
                failures.append(error)
                continue
            if result.outcome is Outcome.FINISHED:
                break
        else:
            pytest.fail("the migration did not finish")

    assert not any(error.final for error in failures)
    assert all("canceling statement due to statement timeout" in str(error) for error in failures)
    split = [error for error in failures if "its range was split in two" in str(error)]
    retried = [error for error in failures if str(error).endswith("it will be retried")]
    # halving 9 keys down to single keys takes 8 splits, each after its second timeout
    assert (len(split), len(retried), len(failures)) == (8, 8, 16)
    assert all("attempt 2/3" in str(error) for error in split)
    assert all("attempt 1/3" in str(error) for error in retried)

    jobs = job_rows(migration_db, "split_retry")
    parents = [job for job in jobs if job["status"] == "split"]
    done = [job for job in jobs if job["status"] == "succeeded"]
    assert len(parents) == 8 and len(done) == 9 and len(jobs) == 17
    assert all(job["attempts"] == 2 and "statement timeout" in job["last_error"] for job in parents)
    assert all(job["planned_rows"] == 1 for job in done)
    assert_ranges_partition(done, keys)
    histogram = counter_histogram(migration_db, "split_retry")
    assert set(histogram) == {(True, 1), (False, 0)}, histogram


def test_a_job_failing_three_times_fails_the_migration_without_applying_anything_twice(migration_db):
    make_table(migration_db, "max_attempts", 600)
    keys = in_scope_keys(migration_db, "max_attempts")
    poison = keys[160]  # in the second job (keys 100..199), its third sub-batch (150..174)
    definition = poisoned_migration("max_attempts", "max_attempts", poison)
    settings = RunSettings(
        sub_batch_size=25, pause_ms=0, policy=BatchSizePolicy(min_batch_size=100, max_batch_size=100)
    )
    failures: list[JobFailedError] = []
    outcomes = []
    with migration_db.connect() as conn:
        store = prepare(conn, definition, batch_size=100)
        for _ in range(20):
            try:
                outcomes.append(run_bounded_batch(store, settings, always_healthy).outcome)
            except JobFailedError as error:
                failures.append(error)
            except MigrationStateError as error:
                stopped = error
                break
        else:
            pytest.fail(f"the migration never failed: {outcomes}")
        assert "failed: job " in str(stopped) and "failed 3 times, the last with: division by zero" in str(
            stopped
        )
        assert set(outcomes) == {Outcome.COMPLETED}

        # the failure is final: a later task, even a new one, stops at once
        with pytest.raises(MigrationStateError, match="failed"):
            run_bounded_batch(store, settings, always_healthy)
        with pytest.raises(MigrationStateError, match="failed"):
            run_bounded_batch(prepare(conn, definition, batch_size=100), settings, always_healthy)

    (failed,) = [job for job in job_rows(migration_db, "max_attempts") if job["status"] == "failed"]
    assert [error.final for error in failures] == [False, False, True]
    for attempt, failure in enumerate(failures, start=1):
        assert f"job {failed['id']} " in str(failure) and f"attempt {attempt}/3" in str(failure)
        assert "division by zero" in str(failure)
    assert (failed["start_key"], failed["end_key"]) == (str(keys[100]), str(keys[199]))
    assert failed["attempts"] == 3 and "division by zero" in failed["last_error"]
    # each retry resumed after the two sub-batches that had committed, and reapplied neither
    assert (failed["resume_key"], failed["sub_batches"]) == (str(keys[149]), 2)
    migration = migration_row(migration_db, "max_attempts")
    assert migration["status"] == "failed" and "division by zero" in migration["last_error"]

    counters = dict(migration_db.execute(f"SELECT id, counter FROM max_attempts WHERE {IN_SCOPE}"))
    assert max(counters.values()) == 1
    done = [job for job in job_rows(migration_db, "max_attempts") if job["status"] == "succeeded"]
    applied = {key for key in keys for job in done if int(job["start_key"]) <= key <= int(job["end_key"])}
    applied |= set(keys[100:150])
    assert {key for key, counter in counters.items() if counter == 1} == applied
    assert poison not in applied
    histogram = counter_histogram(migration_db, "max_attempts")
    assert (False, 1) not in histogram


# --------------------------------------------------------------------------------------------------
# bad input: refused before any row is touched
# --------------------------------------------------------------------------------------------------

#: The statement of the bad-input cases, over ``bad_input`` keyed by ``{column}``.
BAD_INPUT_SQL = "UPDATE bad_input SET counter = counter + 1 WHERE {column} BETWEEN %(start)s AND %(end)s"


def make_bad_input_table(cluster, key_type: str, *extra: str) -> None:
    """Create ``bad_input`` with 50 rows, then run ``extra``.

    :param key_type: the definition of column ``k`` (``id`` is always a good key).
    :param extra: statements to run after, e.g. ``CREATE INDEX``.
    """
    value = "to_timestamp(i)" if key_type.startswith("timestamptz") else f"i::text::{key_type.split()[0]}"
    cluster.execute("DROP TABLE IF EXISTS bad_input")
    cluster.execute(
        f"CREATE TABLE bad_input (id bigint PRIMARY KEY, counter int NOT NULL DEFAULT 0, k {key_type})"
    )
    cluster.execute(f"INSERT INTO bad_input (id, k) SELECT i, {value} FROM generate_series(1, 50) AS i")
    for statement in extra:
        cluster.execute(statement)


def assert_nothing_touched(cluster) -> None:
    assert cluster.execute("SELECT count(*) FROM bad_input WHERE counter <> 0") == [(0,)]
    assert cluster.execute("SELECT count(*) FROM walthrottle.batched_migration_jobs") == [(0,)]


@pytest.mark.parametrize(
    ("key_type", "extra", "changes", "words"),
    [
        pytest.param(
            "bigint",
            (),
            {"table": "no_such_table"},
            ["table public.no_such_table does not exist"],
            id="table",
        ),
        pytest.param(
            "bigint",
            (),
            {"table": "nowhere.bad_input"},
            ["table nowhere.bad_input does not exist"],
            id="schema",
        ),
        pytest.param(
            "bigint",
            (),
            {"column": "nope"},
            ["column 'nope' does not exist in table public.bad_input"],
            id="column",
        ),
        pytest.param(
            "bigint NOT NULL",
            ("CREATE INDEX ON bad_input (k)",),
            {"column": "k"},
            ["public.bad_input.k is indexed but not unique", "CREATE UNIQUE INDEX"],
            id="plain-index",
        ),
        pytest.param(
            "bigint NOT NULL",
            ("CREATE UNIQUE INDEX ON bad_input (k, id)",),
            {"column": "k"},
            ["public.bad_input.k is indexed but not unique", "unique index of its own"],
            id="unique-only-with-another-column",
        ),
        pytest.param(
            "bigint NOT NULL",
            (),
            {"column": "k"},
            ["public.bad_input.k is not indexed", "CREATE UNIQUE INDEX"],
            id="not-indexed",
        ),
        pytest.param(
            "bigint UNIQUE",
            (),
            {"column": "k"},
            ["public.bad_input.k may be NULL", "must be NOT NULL"],
            id="nullable",
        ),
        pytest.param(
            "numeric NOT NULL UNIQUE",
            (),
            {"column": "k"},
            ["public.bad_input.k is of type numeric", "smallint, integer, bigint, text, varchar or uuid"],
            id="numeric",
        ),
        pytest.param(
            "timestamptz NOT NULL UNIQUE",
            (),
            {"column": "k"},
            ["public.bad_input.k is of type timestamptz", "smallint, integer, bigint, text, varchar or uuid"],
            id="timestamptz",
        ),
        pytest.param(
            "text COLLATE walthrottle_test_ci NOT NULL UNIQUE",
            (),
            {"column": "k"},
            ["public.bad_input.k has a nondeterministic collation", "order"],
            id="nondeterministic-collation",
        ),
        pytest.param(
            "bigint",
            (),
            {"batch_sql": "UPDATE bad_input SET counter = counter + WHERE id BETWEEN %(start)s AND %(end)s"},
            ["batch_sql of migration 'bad_input' does not plan", "syntax error"],
            id="batch-sql-syntax",
        ),
        pytest.param(
            "bigint",
            (),
            {"batch_sql": "UPDATE bad_input SET countr = countr + 1 WHERE id BETWEEN %(start)s AND %(end)s"},
            ["batch_sql of migration 'bad_input' does not plan", 'column "countr" does not exist'],
            id="batch-sql-unknown-column",
        ),
        pytest.param(
            "bigint",
            (),
            {
                "batch_sql": "UPDATE bad_input SET counter = 1 WHERE id % 2 = 0 AND "
                + BAD_INPUT_SQL.split("WHERE ")[1]
            },
            ["batch_sql of migration 'bad_input' does not plan", "use '%%'"],
            id="batch-sql-single-percent",
        ),
    ],
)
def test_bad_input_is_refused_before_any_row_is_touched(migration_db, key_type, extra, changes, words):
    migration_db.execute(
        "DO $$ BEGIN CREATE COLLATION walthrottle_test_ci "
        "(provider = icu, locale = 'und-u-ks-level2', deterministic = false); "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    make_bad_input_table(migration_db, key_type, *extra)
    fields = {"name": "bad_input", "table": "bad_input", "column": "id", **changes}
    fields.setdefault("batch_sql", BAD_INPUT_SQL.format(column=fields["column"]))
    with migration_db.connect() as conn, pytest.raises(MigrationDefinitionError) as raised:
        prepare(conn, MigrationDefinition(**fields), batch_size=10)
    for word in words:
        assert word in str(raised.value)
    assert_nothing_touched(migration_db)


@pytest.mark.parametrize(
    ("batch_sql", "words"),
    [
        (
            "UPDATE t SET counter = counter + 1",
            ["must use the range parameters", "missing %(start)s, %(end)s"],
        ),
        ("UPDATE t SET counter = 1 WHERE id >= %(start)s", ["missing %(end)s"]),
        ("UPDATE t SET counter = 1 WHERE id BETWEEN %(first)s AND %(end)s", ["missing %(start)s"]),
        (
            "UPDATE t SET counter = %(value)s WHERE id BETWEEN %(start)s AND %(end)s",
            ["may only use %(start)s and %(end)s", "%(value)s"],
        ),
    ],
)
def test_batch_sql_without_the_range_parameters_is_refused_by_the_definition(batch_sql, words):
    with pytest.raises(MigrationDefinitionError) as raised:
        MigrationDefinition(name="m", table="t", column="id", batch_sql=batch_sql)
    for word in words:
        assert word in str(raised.value)


def test_a_migration_name_reused_for_another_migration_is_refused(migration_db):
    make_bad_input_table(migration_db, "bigint")
    migration_db.execute("DROP TABLE IF EXISTS other_input")
    migration_db.execute("CREATE TABLE other_input AS SELECT * FROM bad_input")
    migration_db.execute("ALTER TABLE other_input ADD PRIMARY KEY (id)")
    original = MigrationDefinition(
        name="reused", table="bad_input", column="id", batch_sql=BAD_INPUT_SQL.format(column="id")
    )
    others = [
        dataclasses.replace(
            original,
            table="other_input",
            batch_sql=BAD_INPUT_SQL.format(column="id").replace("bad_", "other_"),
        ),
        dataclasses.replace(original, batch_sql=original.batch_sql.replace("+ 1", "+ 2")),
        dataclasses.replace(original, scope="id > 10"),
    ]
    with migration_db.connect() as conn:
        prepare(conn, original, batch_size=10)
        for other in others:
            with pytest.raises(MigrationDefinitionError) as raised:
                prepare(conn, other, batch_size=10)
            assert "migration name 'reused' is already used" in str(raised.value)
            assert "choose a new migration_name" in str(raised.value)
        prepare(conn, original, batch_size=10)  # the same migration again is fine
    assert migration_db.execute("SELECT table_name, batch_sql FROM walthrottle.batched_migrations") == [
        ("bad_input", original.batch_sql)
    ]
    assert_nothing_touched(migration_db)
    assert migration_db.execute("SELECT count(*) FROM other_input WHERE counter <> 0") == [(0,)]


@pytest.mark.parametrize(
    ("batch_size", "sub_batch_size", "words"),
    [
        (0, 10, "batch_size must be a whole number of rows above 0, got 0"),
        (10, 0, "sub_batch_size must be a whole number of rows above 0, got 0"),
        (-1, 10, "batch_size must be a whole number of rows above 0, got -1"),
        (10, -5, "sub_batch_size must be a whole number of rows above 0, got -5"),
        (1.5, 10, "batch_size must be a whole number of rows above 0, got 1.5"),
        (True, 10, "batch_size must be a whole number of rows above 0, got True"),
        (None, 10, "batch_size must be a whole number of rows above 0, got None"),
    ],
)
def test_batch_sizes_must_be_whole_numbers_above_zero(batch_size, sub_batch_size, words):
    with pytest.raises(MigrationDefinitionError, match="^" + re.escape(words) + "$"):
        validate_batch_sizes(batch_size, sub_batch_size)


def test_valid_batch_sizes_are_returned():
    assert validate_batch_sizes(1000, 100) == (1000, 100)
    assert validate_batch_sizes(1, 1) == (1, 1)


# --------------------------------------------------------------------------------------------------
# text and uuid keys
# --------------------------------------------------------------------------------------------------

#: Keys that sort differently under "C" and a linguistic collation, and need quoting in SQL text.
AWKWARD_KEYS = ["", " ", "A", "a", "B", "b", "é", "e", "Z%", "it's", "ß", "ss", "10", "9", "\\"]


@pytest.mark.parametrize(
    ("key_type", "key_expr", "awkward", "as_key"),
    [
        pytest.param('text COLLATE "C"', "md5(i::text)", True, '({} COLLATE "C")', id="text-C"),
        pytest.param(
            'text COLLATE "en-x-icu"', "md5(i::text)", True, '({} COLLATE "en-x-icu")', id="text-icu"
        ),
        pytest.param("varchar(40)", "'k' || i", True, "{}::varchar", id="varchar"),
        pytest.param(
            "uuid",
            "md5(i::text)::uuid",
            False,
            "{}::uuid",
            id="uuid",
        ),
    ],
)
def test_text_and_uuid_keys_are_walked_exactly_once(migration_db, key_type, key_expr, awkward, as_key):
    migration_db.execute("DROP TABLE IF EXISTS keyed")
    migration_db.execute(
        f"CREATE TABLE keyed "
        f"(key {key_type} PRIMARY KEY, tenant int NOT NULL, counter int NOT NULL DEFAULT 0)"
    )
    migration_db.execute(
        f"INSERT INTO keyed (key, tenant) SELECT {key_expr}, i % 10 FROM generate_series(1, 2000) AS i"
    )
    if awkward:
        for key in AWKWARD_KEYS:
            migration_db.execute("INSERT INTO keyed (key, tenant) VALUES (%s, 0)", [key])
    definition = MigrationDefinition(
        name="keyed",
        table="keyed",
        column="key",
        batch_sql=(
            f"UPDATE keyed SET counter = counter + 1 WHERE key BETWEEN %(start)s AND %(end)s AND {SCOPE}"
        ),
        scope=SCOPE,
    )
    settings = RunSettings(
        sub_batch_size=40, pause_ms=0, policy=BatchSizePolicy(min_batch_size=100, max_batch_size=150)
    )
    with migration_db.connect() as conn:
        store = prepare(conn, definition, batch_size=150)
        results = run_until_finished(store, settings)
    assert len(results) > 5  # several jobs, several sub-batches each

    histogram = counter_histogram(migration_db, "keyed")
    assert set(histogram) == {(True, 1), (False, 0)}, histogram
    jobs = job_rows(migration_db, "keyed")
    assert {job["status"] for job in jobs} == {"succeeded"}
    assert sum(job["planned_rows"] for job in jobs) == histogram[(True, 1)]
    # in the column's own order, every key in scope lies in exactly one job's range
    misplaced = migration_db.execute(
        "SELECT k.key, count(j.id) FROM keyed AS k LEFT JOIN walthrottle.batched_migration_jobs AS j "
        "ON j.migration_name = 'keyed' AND j.status = 'succeeded' "
        f"AND k.key BETWEEN {as_key.format('j.start_key')} AND {as_key.format('j.end_key')} "
        f"WHERE k.{IN_SCOPE} GROUP BY k.key HAVING count(j.id) <> 1"
    )
    assert misplaced == []


# --------------------------------------------------------------------------------------------------
# edge cases found in review: each test states the behaviour the issue asks for
# --------------------------------------------------------------------------------------------------


def failing_twice(cluster, name: str) -> MigrationDefinition:
    """Make table ``name`` of 100 rows and a migration whose ``batch_sql`` fails twice, then passes.

    Its first job's next start is then its last attempt.
    """
    make_table(cluster, name, 100)
    runs = sql.Identifier(f"{name}_runs")  # a sequence: its count survives the failed transactions
    cluster.execute(sql.SQL("DROP SEQUENCE IF EXISTS {}").format(runs))
    cluster.execute(sql.SQL("CREATE SEQUENCE {}").format(runs))
    definition = MigrationDefinition(
        name=name,
        table=name,
        column="id",
        batch_sql=(
            f"WITH run AS MATERIALIZED (SELECT nextval('{name}_runs') AS n) "
            f"UPDATE {name} SET counter = counter + 1 FROM run "
            f"WHERE id BETWEEN %(start)s AND %(end)s AND {SCOPE} "
            "AND 1 / CASE WHEN n <= 2 THEN 0 ELSE 1 END = 1"
        ),
        scope=SCOPE,
    )
    with cluster.connect() as conn:
        store = prepare(conn, definition, batch_size=100)
        for attempt in (1, 2):
            with pytest.raises(JobFailedError, match=f"attempt {attempt}/3: division by zero"):
                run_bounded_batch(store, RunSettings(sub_batch_size=10, pause_ms=0), always_healthy)
    return definition


def test_a_batch_sql_refused_by_prepare_can_be_fixed_under_the_same_name(migration_db):
    make_bad_input_table(migration_db, "bigint")
    good = MigrationDefinition(
        name="fixed_later", table="bad_input", column="id", batch_sql=BAD_INPUT_SQL.format(column="id")
    )
    typo = dataclasses.replace(good, batch_sql=good.batch_sql.replace("counter + 1", "countr + 1"))
    with migration_db.connect() as conn:
        with pytest.raises(MigrationDefinitionError, match="does not plan"):
            prepare(conn, typo, batch_size=10)
        prepare(conn, good, batch_size=10)


def test_a_peer_does_not_fail_the_migration_while_a_last_attempt_is_still_running(migration_db):
    definition = failing_twice(migration_db, "last_attempt")
    settings = RunSettings(sub_batch_size=10, pause_ms=0)
    with migration_db.connect() as worker, migration_db.connect() as peer:
        store = prepare(worker, definition, batch_size=100)
        _, job = store.jobs.claim(100, max_attempts=3)
        assert job is not None and job.attempts == 3
        # the only job is held by a live worker: a peer finds nothing to do, and must not fail it
        peer_result = run_bounded_batch(prepare(peer, definition, batch_size=100), settings, always_healthy)
        assert peer_result.outcome is Outcome.NOTHING_TO_CLAIM
        for _ in range(10):
            if store.executor.run(job, 10, None).job_finished:
                break
        store.jobs.release(job)
        assert run_bounded_batch(store, settings, always_healthy).outcome is Outcome.FINISHED


def test_a_job_throttled_on_its_last_attempt_resumes(migration_db):
    definition = failing_twice(migration_db, "paused_last")
    # checked between every two statements: these verdicts carry no count to trust for a while
    settings = RunSettings(sub_batch_size=10, pause_ms=0, recheck_seconds=0)
    with migration_db.connect() as conn:
        store = prepare(conn, definition, batch_size=100)
        verdicts = iter([True, False])  # go before the batch, stop after its first sub-batch
        throttled = run_bounded_batch(store, settings, lambda: HealthVerdict(proceed=next(verdicts)))
        assert throttled.outcome is Outcome.THROTTLED
        assert throttled.job is not None and throttled.job.attempts == 3
        run_until_finished(store, settings)
    histogram = counter_histogram(migration_db, "paused_last")
    assert set(histogram) == {(True, 1), (False, 0)}, histogram


def test_a_single_key_that_keeps_timing_out_is_recorded_as_failed(migration_db):
    migration_db.execute("DROP TABLE IF EXISTS one_key")
    migration_db.execute("CREATE TABLE one_key (id bigint PRIMARY KEY, counter int NOT NULL DEFAULT 0)")
    migration_db.execute("INSERT INTO one_key VALUES (1, 0)")
    definition = MigrationDefinition(
        name="one_key",
        table="one_key",
        column="id",
        batch_sql=(
            "WITH pause AS MATERIALIZED (SELECT pg_sleep(0.2)) UPDATE one_key SET counter = counter + 1 "
            "FROM pause WHERE id BETWEEN %(start)s AND %(end)s"
        ),
    )
    settings = RunSettings(sub_batch_size=10, pause_ms=0, statement_timeout_ms=50)
    failures = []
    with migration_db.connect() as conn:
        store = prepare(conn, definition, batch_size=100)
        for _ in range(3):
            with pytest.raises(JobFailedError) as raised:
                run_bounded_batch(store, settings, always_healthy)
            failures.append(raised.value)
            (job,) = job_rows(migration_db, "one_key")
            assert job["status"] == "failed", f"after attempt {len(failures)}: {job}"
            assert "statement timeout" in (job["last_error"] or "")
        assert [error.final for error in failures] == [False, False, True]
        with pytest.raises(MigrationStateError):
            run_bounded_batch(store, settings, always_healthy)
    assert "statement timeout" in (migration_row(migration_db, "one_key")["last_error"] or "")


def test_splitting_a_range_that_gained_rows_skips_no_key(migration_db):
    migration_db.execute("DROP TABLE IF EXISTS gained")
    migration_db.execute("DROP TABLE IF EXISTS gained_control")
    migration_db.execute("CREATE TABLE gained (id bigint PRIMARY KEY, counter int NOT NULL DEFAULT 0)")
    migration_db.execute("INSERT INTO gained (id) SELECT 10 * i FROM generate_series(1, 10) AS i")
    migration_db.execute("CREATE TABLE gained_control AS SELECT true AS slow")
    definition = MigrationDefinition(
        name="gained",
        table="gained",
        column="id",
        batch_sql=(
            "WITH pause AS MATERIALIZED ("
            "SELECT pg_sleep(CASE WHEN (SELECT slow FROM gained_control) THEN 0.2 ELSE 0 END)) "
            "UPDATE gained SET counter = counter + 1 FROM pause WHERE id BETWEEN %(start)s AND %(end)s"
        ),
    )
    settings = RunSettings(sub_batch_size=100, pause_ms=0, statement_timeout_ms=50)
    with migration_db.connect() as conn:
        store = prepare(conn, definition, batch_size=100)
        with pytest.raises(JobFailedError, match="will be retried"):
            run_bounded_batch(store, settings, always_healthy)
        # the application inserts rows into the gaps of the planned range 10..100
        migration_db.execute(
            "INSERT INTO gained (id) SELECT i FROM generate_series(11, 99) AS i WHERE i % 10 <> 0"
        )
        with pytest.raises(JobFailedError, match="split in two"):
            run_bounded_batch(store, settings, always_healthy)
        migration_db.execute("UPDATE gained_control SET slow = false")
        run_until_finished(store, settings)
    skipped = migration_db.execute("SELECT array_agg(id ORDER BY id) FROM gained WHERE counter <> 1")[0][0]
    assert skipped is None, f"keys never migrated: {skipped}"


def test_progress_reaches_100_percent_after_a_split_of_a_half_done_job(migration_db):
    make_table(migration_db, "half_split", 20)
    keys = in_scope_keys(migration_db, "half_split")
    poison = keys[6]
    # a sub-batch holding the poison key and another one times out: the first two sub-batches pass
    definition = MigrationDefinition(
        name="half_split",
        table="half_split",
        column="id",
        batch_sql=(
            "WITH pause AS MATERIALIZED (SELECT pg_sleep("
            f"CASE WHEN %(start)s <> %(end)s AND {poison} BETWEEN %(start)s AND %(end)s "
            "THEN 0.2 ELSE 0 END)) "
            "UPDATE half_split SET counter = counter + 1 FROM pause "
            f"WHERE id BETWEEN %(start)s AND %(end)s AND {SCOPE}"
        ),
        scope=SCOPE,
    )
    settings = RunSettings(sub_batch_size=3, pause_ms=0, statement_timeout_ms=50)
    with migration_db.connect() as conn:
        store = prepare(conn, definition, batch_size=100)
        for _ in range(50):
            try:
                result = run_bounded_batch(store, settings, always_healthy)
            except JobFailedError:
                continue
            if result.outcome is Outcome.FINISHED:
                break
    histogram = counter_histogram(migration_db, "half_split")
    assert set(histogram) == {(True, 1), (False, 0)}, histogram  # exactly once holds
    parent = job_rows(migration_db, "half_split")[0]
    assert (parent["status"], parent["resume_key"]) == ("split", str(keys[5]))
    assert (result.progress.keys_done, result.progress.percentage) == (len(keys), 100.0)


def test_a_unique_index_with_included_columns_is_accepted(migration_db):
    make_bad_input_table(
        migration_db, "bigint NOT NULL", "CREATE UNIQUE INDEX ON bad_input (k) INCLUDE (counter)"
    )
    definition = MigrationDefinition(
        name="included", table="bad_input", column="k", batch_sql=BAD_INPUT_SQL.format(column="k")
    )
    with migration_db.connect() as conn:
        prepare(conn, definition, batch_size=10)


def test_a_scope_that_does_not_plan_is_a_definition_error(migration_db):
    make_bad_input_table(migration_db, "bigint")
    definition = MigrationDefinition(
        name="bad_scope",
        table="bad_input",
        column="id",
        batch_sql=BAD_INPUT_SQL.format(column="id"),
        scope="no_such_column > 0",
    )
    with migration_db.connect() as conn, pytest.raises(MigrationDefinitionError, match="scope"):
        prepare(conn, definition, batch_size=10)


def test_a_peers_claim_does_not_stall_a_running_sub_batch(migration_db):
    migration_db.execute("DROP TABLE IF EXISTS stalled")
    migration_db.execute("CREATE TABLE stalled (id bigint PRIMARY KEY, counter int NOT NULL DEFAULT 0)")
    migration_db.execute("INSERT INTO stalled (id) SELECT generate_series(1, 250)")
    # the scope takes 2 ms per key above 100: planning the second job takes 0.2 s, the first none
    migration_db.execute(
        "CREATE OR REPLACE FUNCTION stalled_scope(key bigint) RETURNS boolean LANGUAGE sql VOLATILE "
        "AS $$ SELECT key <= 100 OR (SELECT true FROM pg_sleep(0.002)) $$"
    )
    definition = MigrationDefinition(
        name="stalled",
        table="stalled",
        column="id",
        batch_sql="UPDATE stalled SET counter = counter + 1 WHERE id BETWEEN %(start)s AND %(end)s",
        scope="stalled_scope(id)",
    )
    with migration_db.connect() as worker, migration_db.connect() as peer:
        store = prepare(worker, definition, batch_size=100)
        peer_store = prepare(peer, definition, batch_size=100)
        _, job = store.jobs.claim(100, max_attempts=3)
        assert job is not None and job.end_key == "100"
        peer_pid = peer.info.backend_pid
        claimed = []
        claiming = threading.Thread(target=lambda: claimed.append(peer_store.jobs.claim(100, max_attempts=3)))
        claiming.start()
        try:
            wait_until(
                lambda: migration_db.execute(
                    "SELECT 1 FROM pg_stat_activity "
                    "WHERE pid = %s AND state = 'active' AND query LIKE '%%LIMIT%%'",
                    [peer_pid],
                ),
                what="the peer to plan its job",
                interval=0.005,
            )
            # the peer plans a range far from this job's: this job's next sub-batch has no reason to wait
            result = store.executor.run(job, 10, 50)
        finally:
            claiming.join(timeout=30)
        assert result.keys == 10
        assert claimed and claimed[0][1] is not None and claimed[0][1].start_key == "101"
