"""Every range stays inside its bounds, and a table gone mid-migration stops it with one line."""

from __future__ import annotations

import pytest

from airflow_provider_walthrottle.migrations.definition import MigrationDefinition, MigrationDefinitionError
from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
from airflow_provider_walthrottle.migrations.runner import (
    HealthVerdict,
    Outcome,
    RunSettings,
    prepare,
)
from airflow_provider_walthrottle.migrations.state import JobStatus, MigrationStateError
from tests.support.migration_runs import (
    always_healthy,
    job_rows,
    migration_row,
    run_bounded_batch,
    run_until_finished,
    sub_batch_budget,
)
from tests.support.migration_tables import counter_histogram, in_scope_keys, increment_migration, make_table

#: The scope of issue 10: it closes the ``AND (`` it is wrapped in, so that every row matches.
ESCAPING_SCOPE = "true) OR (true"


def escaping_migration(name: str) -> MigrationDefinition:
    """The increment migration over ``name``, with a scope that escapes its parentheses.

    The definition refuses such a scope, so it is set past the check: it stands for any scope that
    the tokenizer reads differently from PostgreSQL.
    """
    definition = increment_migration(name, name)
    object.__setattr__(definition, "scope", ESCAPING_SCOPE)
    return definition


def test_a_sub_batch_that_does_not_move_past_its_resume_key_fails_before_applying_anything_twice(
    migration_db,
):
    make_table(migration_db, "escaped", 300)
    definition = escaping_migration("escaped")
    settings = RunSettings(sub_batch_size=10, pause_ms=0)
    with migration_db.connect() as conn:
        store = prepare(conn, definition, batch_size=100)
        # a job whose claim did not plan its sub-batches (as a job taken over): the executor plans
        # them, and finds the escaped range itself
        _, held = store.jobs.claim(100, max_attempts=3)
        assert held is not None
        store.jobs.release(held, status=JobStatus.PAUSED)
        with pytest.raises(MigrationStateError) as raised:
            run_bounded_batch(store, settings, always_healthy, log=sub_batch_budget(limit=50))
        message = str(raised.value)
        assert "\n" not in message
        assert message.startswith("migration 'escaped': job 1 (keys ")
        assert f"so its scope {ESCAPING_SCOPE!r} does not stay inside AND (...)" in message
        assert "nothing of that range was run" in message and "under a new migration_name" in message
        # the failure is the migration's: every later task stops at once, with the reason
        with pytest.raises(MigrationStateError, match="does not stay inside AND"):
            run_bounded_batch(store, settings, always_healthy)

    histogram = counter_histogram(migration_db, "escaped")
    assert max(counter for _, counter in histogram) == 1, histogram
    (job,) = job_rows(migration_db, "escaped")
    assert (job["status"], job["sub_batches"], job["attempts"]) == ("failed", 1, 1)
    assert job["last_error"] == message
    # only the first sub-batch ran, over the first ten keys of the table
    first_ten = [key for (key,) in migration_db.execute("SELECT id FROM escaped ORDER BY id LIMIT 10")]
    assert job["resume_key"] == str(first_ten[-1])
    touched = migration_db.execute("SELECT id FROM escaped WHERE counter > 0 ORDER BY id")
    assert {key for (key,) in touched} <= set(first_ten)
    assert migration_row(migration_db, "escaped") == {
        "status": "failed",
        "cursor_key": job["end_key"],
        "last_error": message,
    }


def test_a_new_job_planned_outside_the_migrations_bounds_fails_it_before_it_is_claimed(migration_db):
    make_table(migration_db, "escaped_plan", 300)
    definition = escaping_migration("escaped_plan")
    # one sub-batch per job: the first job stays in its range, the second one is planned after it
    settings = RunSettings(
        sub_batch_size=20, pause_ms=0, policy=BatchSizePolicy(min_batch_size=20, max_batch_size=20)
    )
    with migration_db.connect() as conn:
        store = prepare(conn, definition, batch_size=20)
        assert run_bounded_batch(store, settings, always_healthy).outcome is Outcome.COMPLETED
        with pytest.raises(MigrationStateError) as raised:
            run_bounded_batch(store, settings, always_healthy)
    message = str(raised.value)
    assert message.startswith(
        "migration 'escaped_plan' failed: migration 'escaped_plan': planning a new job found "
    )
    assert "does not stay inside AND (...)" in message
    assert [job["status"] for job in job_rows(migration_db, "escaped_plan")] == ["succeeded"]
    assert max(counter for _, counter in counter_histogram(migration_db, "escaped_plan")) == 1
    assert migration_row(migration_db, "escaped_plan")["status"] == "failed"


def test_a_claim_that_plans_the_sub_batches_finds_an_escaped_one_before_anything_runs(migration_db):
    make_table(migration_db, "escaped_ranges", 300)
    definition = escaping_migration("escaped_ranges")
    # fixed statements: the claim's walk of the first job plans its ten sub-batches, and the
    # second of them starts before the first one ends
    settings = RunSettings(sub_batch_size=10, pause_ms=0)
    with migration_db.connect() as conn:
        store = prepare(conn, definition, batch_size=100)
        with pytest.raises(MigrationStateError) as raised:
            run_bounded_batch(store, settings, always_healthy)
    message = str(raised.value)
    assert message.startswith(
        "migration 'escaped_ranges' failed: migration 'escaped_ranges': planning a new job found "
    )
    assert "does not stay inside AND (...)" in message
    assert job_rows(migration_db, "escaped_ranges") == []
    assert set(counter_histogram(migration_db, "escaped_ranges")) == {(True, 0), (False, 0)}
    assert migration_row(migration_db, "escaped_ranges")["status"] == "failed"


def test_a_table_renamed_mid_job_stops_it_with_one_line_and_it_resumes_once_restored(migration_db):
    make_table(migration_db, "renamed", 300)
    definition = increment_migration("renamed", "renamed")
    settings = RunSettings(sub_batch_size=10, pause_ms=0, recheck_seconds=0)
    checks = iter(range(1000))

    def rename_after_two_sub_batches() -> HealthVerdict:
        if next(checks) == 2:
            migration_db.execute("ALTER TABLE renamed RENAME TO renamed_elsewhere")
        return HealthVerdict(proceed=True)

    with migration_db.connect() as conn:
        store = prepare(conn, definition, batch_size=100)
        with pytest.raises(MigrationDefinitionError) as raised:
            run_bounded_batch(store, settings, rename_after_two_sub_batches)
        message = str(raised.value)
        assert message == (
            "migration 'renamed' cannot read table public.renamed: "
            'relation "public.renamed" does not exist; '
            "if the table or its column id was renamed or dropped since the migration began, restore it (the "
            "job resumes where it stopped), or run a new migration under a new migration_name"
        )
        (job,) = job_rows(migration_db, "renamed")
        assert (job["status"], job["attempts"], job["sub_batches"]) == ("paused", 1, 2)
        assert job["last_error"] == message
        assert migration_row(migration_db, "renamed")["status"] == "active"

        # the next task is refused before it claims anything, and says what to do
        with pytest.raises(MigrationDefinitionError) as refused:
            prepare(conn, definition, batch_size=100)
        assert str(refused.value) == (
            "migration 'renamed' was registered on table public.renamed, but table public.renamed does not "
            "exist (or this role cannot see it); if the table or its column was renamed or changed since, "
            "restore it and the migration resumes where it stopped, or start a new migration under a new "
            "migration_name"
        )

        migration_db.execute("ALTER TABLE renamed_elsewhere RENAME TO renamed")
        store = prepare(conn, definition, batch_size=100)
        first = run_bounded_batch(store, settings, always_healthy)
        assert first.job is not None and (first.job.id, first.job.attempts) == (job["id"], 1)
        run_until_finished(store, settings)
    histogram = counter_histogram(migration_db, "renamed")
    assert set(histogram) == {(True, 1), (False, 0)}, histogram
    assert sum(job["planned_rows"] for job in job_rows(migration_db, "renamed")) == len(
        in_scope_keys(migration_db, "renamed")
    )
