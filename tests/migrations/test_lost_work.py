"""Lost workers and lost connections use no attempt; a failed migration says why and leaves no job running."""

from __future__ import annotations

import functools
import os
import signal
import threading
from typing import TYPE_CHECKING

import pytest

from airflow_provider_walthrottle.migrations.definition import MigrationDefinition
from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
from airflow_provider_walthrottle.migrations.runner import (
    HealthVerdict,
    JobFailedError,
    Outcome,
    RunSettings,
    prepare,
)
from airflow_provider_walthrottle.migrations.state import MigrationStateError
from tests.support.migration_runs import (
    always_healthy,
    assert_ranges_partition,
    job_rows,
    lock_is_free,
    migration_row,
    run_bounded_batch,
    run_until_finished,
    start_worker,
)
from tests.support.migration_tables import (
    SCOPE,
    counter_histogram,
    in_scope_keys,
    make_table,
    poisoned_migration,
)
from tests.support.postgres_cluster import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import psycopg

    from tests.support.postgres_cluster import PostgresCluster


def slow_migration(name: str) -> MigrationDefinition:
    """A migration over ``name`` whose sub-batches sleep 0.2 s while ``{name}_control.slow``."""
    return MigrationDefinition(
        name=name,
        table=name,
        column="id",
        batch_sql=(
            "WITH pause AS MATERIALIZED ("
            f"SELECT pg_sleep(CASE WHEN (SELECT slow FROM {name}_control) THEN 0.2 ELSE 0 END)) "
            f"UPDATE {name} SET counter = counter + 1 FROM pause "
            f"WHERE id BETWEEN %(start)s AND %(end)s AND {SCOPE}"
        ),
        scope=SCOPE,
    )


def make_slow_table(cluster: PostgresCluster, name: str, rows: int) -> None:
    make_table(cluster, name, rows)
    cluster.execute(f"DROP TABLE IF EXISTS {name}_control")
    cluster.execute(f"CREATE TABLE {name}_control AS SELECT true AS slow")


def jobs_run_by(cluster: PostgresCluster, migration: str, dag_id: str, *, more_than: int) -> list[dict]:
    """Return the running jobs of ``dag_id`` that committed more than ``more_than`` sub-batches."""
    return [
        job
        for job in job_rows(cluster, migration)
        if job["status"] == "running" and job["dag_id"] == dag_id and job["sub_batches"] > more_than
    ]


def session_ended(cluster: PostgresCluster, job_id: int, application_name: str) -> bool:
    """Whether the killed worker's backend is gone, and with it the job's lock."""
    gone = not cluster.execute(
        "SELECT 1 FROM pg_stat_activity WHERE application_name = %s", [application_name]
    )
    return gone and lock_is_free(cluster, job_id)


def the_job(cluster: PostgresCluster, migration: str, job_id: int) -> dict:
    (job,) = [job for job in job_rows(cluster, migration) if job["id"] == job_id]
    return job


def test_killed_workers_and_server_restarts_use_no_attempt_and_the_migration_finishes(pg_cluster_factory):
    cluster = pg_cluster_factory(name="lost-work")
    make_slow_table(cluster, "lost", 1000)
    definition = slow_migration("lost")
    policy = BatchSizePolicy(min_batch_size=200, max_batch_size=200)

    # 1. kill the worker of the same job three times, each time after it committed a sub-batch
    job_id = None
    done = 0
    for kill in range(3):
        worker = start_worker(
            cluster,
            definition,
            dag_id=f"doomed-{kill}",
            batch_size=200,
            sub_batch_size=10,
            policy=policy,
            wait=False,
        )
        try:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            assert line.startswith('{"ready"'), (line, worker.stderr.read() if worker.stderr else "")
            running = wait_until(
                functools.partial(jobs_run_by, cluster, "lost", f"doomed-{kill}", more_than=done),
                timeout=60,
                what=f"worker {kill} to commit a sub-batch",
                interval=0.01,
            )
            os.kill(worker.pid, signal.SIGKILL)
        finally:
            if worker.poll() is None:
                worker.kill()
            worker.communicate(timeout=30)
        (job,) = running
        job_id = job["id"] if job_id is None else job_id
        assert job["id"] == job_id, "each worker took over the same orphaned job"
        wait_until(
            functools.partial(session_ended, cluster, job_id, f"doomed-{kill}"),
            timeout=30,
            what="the killed worker's session to end",
        )
        job = the_job(cluster, "lost", job_id)
        assert (job["status"], job["attempts"]) == ("running", 1), job
        done = job["sub_batches"]
    assert migration_row(cluster, "lost")["status"] == "active"

    # 2. restart the server three times during the same job, each time in the middle of a sub-batch
    settings = RunSettings(sub_batch_size=10, pause_ms=0, policy=policy, recheck_seconds=0)
    failures: list[JobFailedError] = []
    for _ in range(3):
        restarter = threading.Thread(target=restart_mid_statement, args=(cluster,))
        checks = iter(range(1000))

        def check_health(restarter: threading.Thread = restarter, checks=checks) -> HealthVerdict:
            if next(checks) == 2:  # after the second sub-batch of this call: restart during the third
                restarter.start()
            return HealthVerdict(proceed=True)

        with cluster.connect() as conn:
            store = prepare(conn, definition, batch_size=200)
            with pytest.raises(JobFailedError) as raised:
                run_bounded_batch(store, settings, check_health)
        restarter.join(timeout=120)
        assert not restarter.is_alive()
        failures.append(raised.value)
        job = the_job(cluster, "lost", job_id)
        assert (job["status"], job["attempts"]) == ("running", 1), job
        assert job["sub_batches"] >= done + 2, "the restart came before the job moved on"
        done = job["sub_batches"]
    assert all(not error.final and "lost the connection" in str(error) for error in failures), failures
    assert all("no attempt used" in str(error) for error in failures)

    # 3. the next worker takes the job over where it stopped, and the migration finishes
    cluster.execute("UPDATE lost_control SET slow = false")
    with cluster.connect() as conn:
        store = prepare(conn, definition, batch_size=200)
        first = run_bounded_batch(store, settings, always_healthy)
        assert first.job is not None and (first.job.id, first.job.attempts) == (job_id, 1)
        run_until_finished(store, settings)

    assert migration_row(cluster, "lost")["status"] == "finished"
    histogram = counter_histogram(cluster, "lost")
    assert set(histogram) == {(True, 1), (False, 0)}, histogram
    jobs = job_rows(cluster, "lost")
    assert {job["status"] for job in jobs} == {"succeeded"}
    assert all(job["attempts"] == 1 for job in jobs), jobs
    assert_ranges_partition(jobs, in_scope_keys(cluster, "lost"))


def terminate(cluster: PostgresCluster, conn: psycopg.Connection) -> HealthVerdict:
    """A health check that terminates the session of ``conn``, as a failover or a DBA would."""
    cluster.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
    return HealthVerdict(proceed=True)


def next_check(checks: Iterator[Callable[[], HealthVerdict]]) -> HealthVerdict:
    """Run the next check of ``checks``, then always-healthy ones."""
    return next(checks, always_healthy)()


def restart_mid_statement(cluster: PostgresCluster) -> None:
    """Restart the server (``pg_ctl restart -m fast``) once a sub-batch sleeps in its statement."""
    wait_until(
        lambda: cluster.execute(
            "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%%pg_sleep%%' "
            "AND pid <> pg_backend_pid()"
        ),
        timeout=30,
        what="a sub-batch in its statement",
        interval=0.01,
    )
    cluster.restart()


def test_a_failed_migration_records_why_and_leaves_no_job_running(migration_db):
    make_table(migration_db, "why_failed", 600)
    keys = in_scope_keys(migration_db, "why_failed")
    poison = keys[10]  # in the first job
    definition = poisoned_migration("why_failed", "why_failed", poison)
    settings = RunSettings(
        sub_batch_size=25, pause_ms=0, policy=BatchSizePolicy(min_batch_size=50, max_batch_size=50)
    )
    with migration_db.connect() as failing, migration_db.connect() as live, migration_db.connect() as peer:
        store = prepare(failing, definition, batch_size=50)
        for attempt in (1, 2):
            with pytest.raises(JobFailedError, match=f"attempt {attempt}/3"):
                run_bounded_batch(store, settings, always_healthy)
        # meanwhile (passing over job 1, which has only its last attempt left) another worker holds
        # a job and is between two sub-batches ...
        live_store = prepare(live, definition, batch_size=50)
        _, held = live_store.jobs.claim(50, max_attempts=2, dag_id="live")
        assert held is not None and held.id == 2
        assert live_store.executor.run(held, 25, None).keys == 25
        # ... and a third job's worker died with it running
        with migration_db.connect() as dying:
            _, orphan = prepare(dying, definition, batch_size=50).jobs.claim(
                50, max_attempts=2, dag_id="dead"
            )
        assert orphan is not None and orphan.id == 3
        wait_until(lambda: lock_is_free(migration_db, orphan.id), what="the dead session's lock to go")

        with pytest.raises(JobFailedError, match="attempt 3/3") as raised:
            run_bounded_batch(store, settings, always_healthy)
        assert raised.value.final

        jobs = {job["id"]: job for job in job_rows(migration_db, "why_failed")}
        assert not [job for job in jobs.values() if job["status"] == "running"], jobs
        failed = jobs[1]
        assert (failed["status"], failed["attempts"]) == ("failed", 3)
        assert "division by zero" in failed["last_error"]
        for stopped in (jobs[held.id], jobs[orphan.id]):
            assert stopped["status"] == "paused"
            assert (
                "the migration failed" in stopped["last_error"]
                and "division by zero" in stopped["last_error"]
            )
        migration = migration_row(migration_db, "why_failed")
        assert migration["status"] == "failed"
        assert "job 1 " in migration["last_error"] and "division by zero" in migration["last_error"]

        # the live worker stops at its next sub-batch, and says why
        with pytest.raises(
            MigrationStateError, match=r"migration 'why_failed' failed: job 1 .*division by zero"
        ):
            live_store.executor.run(held, 25, None)
        live_store.jobs.release(held)
        # every later task says why too
        with pytest.raises(
            MigrationStateError, match=r"failed: job 1 .*failed 3 times, the last with: division"
        ):
            run_bounded_batch(prepare(peer, definition, batch_size=50), settings, always_healthy)
    counters = dict(migration_db.execute("SELECT id, counter FROM why_failed"))
    assert max(counters.values()) <= 1


def test_the_job_of_a_lost_connection_is_taken_over_on_the_same_attempt(migration_db):
    make_table(migration_db, "lost_conn", 300)
    definition = slow_migration("lost_conn")
    migration_db.execute("DROP TABLE IF EXISTS lost_conn_control")
    migration_db.execute("CREATE TABLE lost_conn_control AS SELECT false AS slow")
    settings = RunSettings(sub_batch_size=10, pause_ms=0, recheck_seconds=0)
    for _ in range(4):  # more than max_attempts
        with migration_db.connect() as conn:
            store = prepare(conn, definition, batch_size=100)
            # the third check, after two sub-batches, ends the session: the third sub-batch finds it gone
            checks = iter([always_healthy, always_healthy, functools.partial(terminate, migration_db, conn)])
            with pytest.raises(JobFailedError, match="lost the connection") as raised:
                run_bounded_batch(store, settings, functools.partial(next_check, checks))
            assert not raised.value.final
        (job,) = job_rows(migration_db, "lost_conn")
        wait_until(
            functools.partial(lock_is_free, migration_db, job["id"]),
            what="the terminated session's lock to go",
        )
    (job,) = job_rows(migration_db, "lost_conn")
    assert (job["status"], job["attempts"], job["sub_batches"]) == ("running", 1, 8)
    with migration_db.connect() as conn:
        results = run_until_finished(prepare(conn, definition, batch_size=100), settings)
    assert results[-1].outcome is Outcome.FINISHED
    histogram = counter_histogram(migration_db, "lost_conn")
    assert set(histogram) == {(True, 1), (False, 0)}, histogram
