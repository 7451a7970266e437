"""Run the DAG author's ``batch_sql`` over the next keys of a job, one sub-batch per transaction.

A sub-batch and its progress commit together: a crash at any instant loses at most one
uncommitted sub-batch and never applies one twice. The ranges of a job's sub-batches are planned
ahead, many in one query, and each is checked again in its sub-batch's own transaction; a range
is checked to lie inside the job's bounds before anything of it runs, so a scope that escapes its
``AND (...)`` fails the migration before anything of that range is applied.
"""

from __future__ import annotations

import collections
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import psycopg

from airflow_provider_walthrottle.migrations import job_queries, table_queries
from airflow_provider_walthrottle.migrations.state import MigrationStateError, MigrationStatus, SubBatchResult

if TYPE_CHECKING:
    from collections.abc import Callable

    from psycopg import sql

    from airflow_provider_walthrottle.migrations.state import Job
    from airflow_provider_walthrottle.migrations.table import MigrationTable

#: The most ranges one planning query plans ahead for a job.
MAX_PLANNED_RANGES = 64
#: The most keys one planning query walks: a plan of large statements is a plan of few.
MAX_PLANNED_KEYS = 100_000


class PlannedRange(NamedTuple):
    """A sub-batch's range as planned: its first and last key (as text), its keys, whether in bounds."""

    first: str | None
    last: str | None
    keys: int
    in_range: bool


@dataclass
class _Plan:
    """The ranges planned ahead for a job, each of ``keys`` keys, the first right after ``after``."""

    job_id: int
    keys: int
    after: str | None
    ranges: collections.deque[PlannedRange]


class _Stale(NamedTuple):
    """A sub-batch rolled back because its planned range was out of date: where the job resumes."""

    resume_key: str | None


class SubBatchExecutor:
    """
    Run the sub-batches of the jobs this session holds.

    A sub-batch is one transaction in two round trips, in psycopg's pipeline mode (and now and then
    a third before it, which plans the next ranges):

    1. ``BEGIN``; the job's row lock, which reads where the job resumes; the first key after it
       and the WAL insert position; the DAG author's statement over the planned range (between
       ``SET LOCAL statement_timeout`` and its reset, when a timeout is set).
    2. The progress update, which reads the WAL the statement wrote, and ``COMMIT``; or
       ``ROLLBACK``, when the range turned out to be out of date.

    The statement's row count is known before the progress is sent, so the progress that commits
    with the statement is exact. The result's ``seconds``, which the statement sizer learns from,
    time the statement's round trip: the statement, and the lock and the probe sent before it (well
    under a millisecond).

    The ranges are planned ahead, per job. A new job's come from its claim, whose walk of the job's
    keys plans them too when the statements' size is fixed (:meth:`adopt`). Otherwise one query
    (:func:`~.table_queries.range_plan`, outside the sub-batch's transaction) plans the next ranges
    at the size asked, as many as were used up last time at that size, doubled (up to
    :data:`MAX_PLANNED_RANGES` and :data:`MAX_PLANNED_KEYS`), or one after a change of size.

    A range is checked before its statement is sent: inside the job's bounds, or the migration
    fails with nothing of it run. It is checked again in the sub-batch's transaction, after the
    job's row lock: the job must still be ``running``, resume where this executor left it, and
    the first key after that must still be the range's first key. If a key arrived in front of the
    range, or another session moved the job on, the transaction is rolled back, statement and all,
    and the sub-batch runs again over a range planned afresh: nothing is applied twice, and no key
    in front of a range is skipped.

    :param conn: a connection in autocommit mode; each sub-batch is a transaction of its own.
    :param table: the migration's table, registered (its key type known).
    """

    def __init__(self, conn: psycopg.Connection[Any], table: MigrationTable) -> None:
        self.conn = conn
        self.table = table
        #: Where each job resumes after the last sub-batch this executor committed on it.
        self._resume_keys: dict[int, str | None] = {}
        #: The ranges planned ahead for the job worked on.
        self._ahead: _Plan | None = None
        #: The size of the last plan, and the ranges the next plan at that size asks for: twice as
        #: many as the last one (a new job at the same size goes on from there), one at a new size.
        self._planned_keys = 0
        self._next_count = 1
        #: The queries, composed once: composing one costs as much as a round trip.
        self._queries: dict[str, bytes] = {}

    def adopt(self, job_id: int, keys: int, ranges: list[tuple[Any, ...]]) -> None:
        """Take the ranges of a new job's sub-batches, planned by the walk of its claim.

        :param job_id: the job, claimed by this session and not started.
        :param keys: the keys of each range (the last may have fewer).
        :param ranges: from its start, as :func:`~.table_queries.range_plan` returns them.
        """
        self._ahead = _Plan(job_id, keys, None, collections.deque(PlannedRange(*row) for row in ranges))
        self._planned_keys, self._next_count = keys, MAX_PLANNED_RANGES

    def run(self, job: Job, sub_batch_size: int, statement_timeout_ms: int | None) -> SubBatchResult:
        """Run ``batch_sql`` over the next keys of the job, and record it, in one transaction.

        :param job: a job this session holds.
        :param sub_batch_size: keys per statement.
        :param statement_timeout_ms: ``statement_timeout`` for the statement, if any.
        :raises MigrationStateError: if the job is no longer ``running`` (the migration failed, or
            a peer stopped it), or a range escaped its bounds
            (:class:`~airflow_provider_walthrottle.migrations.state.RangeEscapedError`).
        :raises MigrationDefinitionError: if the table or its key column is gone.
        :raises psycopg.Error: the statement's own error; the transaction is rolled back.
        """
        resume_key = self._resume_keys.get(job.id, job.resume_key)
        while True:
            planned = self._next_range(job, resume_key, sub_batch_size)
            try:
                done = self._transaction(job, resume_key, planned, statement_timeout_ms)
            except BaseException:
                self._ahead = None
                self._roll_back()
                raise
            if isinstance(done, SubBatchResult):
                break
            # rolled back, nothing applied: plan again from where the job resumes
            self._ahead = None
            resume_key = done.resume_key
        if done.job_finished:
            self._resume_keys.pop(job.id, None)
            self._ahead = None
        else:
            self._resume_keys[job.id] = done.last_key
            if self._ahead is not None:
                self._ahead.after = done.last_key
                self._ahead.ranges.popleft()
        return done

    # ------------------------------------------------------------------------------------- planning

    def _next_range(self, job: Job, resume_key: str | None, keys: int) -> PlannedRange:
        """Return the range planned after ``resume_key`` at ``keys`` keys, planning ahead if none is.

        :raises RangeEscapedError: if it lies outside the job's bounds; nothing of it ran.
        """
        plan = self._ahead
        if (
            plan is None
            or (plan.job_id, plan.keys, plan.after) != (job.id, keys, resume_key)
            or not plan.ranges
        ):
            count = self._next_count if keys == self._planned_keys else 1
            count = max(1, min(count, MAX_PLANNED_RANGES, MAX_PLANNED_KEYS // keys))
            plan = self._ahead = _Plan(job.id, keys, resume_key, self._plan(job, resume_key, keys, count))
            self._planned_keys, self._next_count = keys, count * 2
        planned = plan.ranges[0]
        if not planned.in_range:  # before batch_sql is sent: nothing is applied twice
            self._ahead = None
            bounds = f"after {resume_key}" if resume_key is not None else f"from {job.start_key}"
            raise self.table.escaped(
                f"{job.describe()}: its next sub-batch found keys {planned.first}..{planned.last}, "
                f"not all {bounds} up to {job.end_key}"
            )
        return planned

    def _plan(
        self, job: Job, resume_key: str | None, keys: int, count: int
    ) -> collections.deque[PlannedRange]:
        """Plan up to ``count`` ranges of ``keys`` keys of the job after ``resume_key``, in one query."""
        table = self.table
        inclusive = resume_key is None
        query = self._query(
            f"plan_{inclusive}",
            lambda: table_queries.range_plan(
                table.identifier, table.column, table.definition.scope, inclusive=inclusive
            ),
        )
        params = {
            "after": table.key(job.start_key if resume_key is None else resume_key),
            "last": table.key(job.end_key),
            "rows": keys,
            "total": keys * count,
        }
        with table.reading():
            rows = self.conn.execute(query, params).fetchall()
        return collections.deque(PlannedRange(*row) for row in rows)

    # ---------------------------------------------------------------------------------- transaction

    def _transaction(
        self, job: Job, resume_key: str | None, planned: PlannedRange, statement_timeout_ms: int | None
    ) -> SubBatchResult | _Stale:
        """Run one sub-batch's transaction over ``planned``: committed, or rolled back if it is stale.

        :raises MigrationStateError: if the job is no longer ``running``.
        :raises MigrationDefinitionError: if the table or its key column is gone.
        :raises psycopg.Error: the statement's own error, once the transaction is rolled back.
        """
        conn, table = self.conn, self.table
        inclusive = resume_key is None
        probe_query = self._query(
            f"first_{inclusive}",
            lambda: table_queries.first_key_after(
                table.identifier, table.column, table.definition.scope, inclusive=inclusive
            ),
        )
        after = table.key(job.start_key if resume_key is None else resume_key)
        rows_affected, finished = 0, False
        with (
            conn.cursor() as control,
            conn.cursor() as lock,
            conn.cursor() as probe,
            conn.cursor() as statement,
        ):
            try:
                with conn.pipeline() as pipeline:
                    # round trip 1: BEGIN, the job's row lock, the first key after where it resumes
                    # and the WAL position, the DAG author's statement
                    started = time.perf_counter()
                    control.execute(self._query("begin", lambda: job_queries.BEGIN))
                    lock.execute(self._query("lock", lambda: job_queries.RUNNING_JOB_RESUME_KEY), [job.id])
                    probe.execute(probe_query, {"after": after, "last": table.key(job.end_key)})
                    if planned.keys:
                        self._statement(control, statement, planned, statement_timeout_ms)
                    pipeline.sync()
                    seconds = time.perf_counter() - started
                    locked, found = _first_row(lock), _first_row(probe)
                    if locked and locked[0] == resume_key and found and found[0] == planned.first:
                        rows_affected = max(statement.rowcount, 0) if planned.keys else 0
                        finished = planned.keys == 0 or planned.last == job.end_key
                        # round trip 2, as the pipeline ends: the progress, which reads the WAL the
                        # statement wrote before it writes, and COMMIT
                        statement.execute(
                            self._query("record", lambda: job_queries.RECORD_SUB_BATCH),
                            {
                                "last": planned.last,
                                "rows": rows_affected,
                                "keys": planned.keys,
                                "one": 1 if planned.keys else 0,
                                "seconds": seconds,
                                "wal_before": found[1] if planned.keys else None,
                                "finished": finished,
                                "id": job.id,
                            },
                        )
                        control.execute(self._query("commit", lambda: job_queries.COMMIT))
                    else:  # round trip 2: nothing of it stays
                        control.execute(self._query("rollback", lambda: job_queries.ROLLBACK))
            except psycopg.Error:
                if conn.closed or conn.broken:
                    raise  # the server rolls back with the session; the job resumes where it stopped
                self._roll_back()
                stale = self._stale(job, resume_key, planned, lock, probe)
                if stale is not None:
                    return stale  # the statement may have failed over a range it must not run
                if lock.pgresult is not None and probe.pgresult is None:  # the probe of the table failed
                    with table.reading():
                        raise
                raise
            stale = self._stale(job, resume_key, planned, lock, probe)
            if stale is not None:
                return stale
            recorded = _row(statement)
        return SubBatchResult(
            first_key=planned.first or "",
            last_key=planned.last or "",
            keys=planned.keys,
            rows_affected=rows_affected,
            seconds=seconds,
            wal_bytes=int(recorded[0]),
            job_finished=finished,
        )

    def _statement(
        self,
        control: psycopg.Cursor[Any],
        statement: psycopg.Cursor[Any],
        planned: PlannedRange,
        statement_timeout_ms: int | None,
    ) -> None:
        """Queue ``batch_sql`` over the planned range, with ``statement_timeout`` for it alone.

        The ``SET LOCAL`` and its reset ride in the statement's round trip, so that the bookkeeping
        around it does not time out.
        """
        table = self.table
        if statement_timeout_ms:
            control.execute(table_queries.set_statement_timeout(statement_timeout_ms))
        statement.execute(
            self._query("statement", lambda: table_queries.batch_statement(table.definition.batch_sql)),
            {"start": table.key(planned.first or ""), "end": table.key(planned.last or "")},
        )
        if statement_timeout_ms:
            control.execute(self._query("reset", lambda: table_queries.RESET_STATEMENT_TIMEOUT))

    def _stale(
        self,
        job: Job,
        resume_key: str | None,
        planned: PlannedRange,
        lock: psycopg.Cursor[Any],
        probe: psycopg.Cursor[Any],
    ) -> _Stale | None:
        """Say where to plan again from if ``planned`` was out of date, once its transaction ended.

        :return: where the job resumes, if another session moved it on or a key arrived in front
            of the range; ``None`` if the range held, or if the round trip failed before the job's
            row and the first key were read.
        :raises MigrationStateError: if the job is no longer ``running``.
        """
        if not _answered(lock):
            return None
        locked = _first_row(lock)
        if locked is None:
            raise MigrationStateError(self._why_not_running(job))
        if locked[0] != resume_key:  # another session moved the job on: plan from there
            return _Stale(locked[0])
        found = _first_row(probe) if _answered(probe) else None
        if found is not None and found[0] != planned.first:  # a key arrived in front of the range
            return _Stale(resume_key)
        return None

    def _query(self, name: str, compose: Callable[[], sql.Composable]) -> bytes:
        """Return the query ``name``, composed once (by ``compose``) for this connection."""
        query = self._queries.get(name)
        if query is None:
            query = self._queries[name] = compose().as_bytes(self.conn)
        return query

    def _roll_back(self) -> None:
        """End a sub-batch that failed: roll its transaction back, if the connection still works.

        psycopg's rollback also forgets the statements it may have prepared in the failed
        transaction.
        """
        if self.conn.closed or self.conn.broken:
            return  # the server rolls back when the session ends
        with contextlib.suppress(psycopg.Error):
            self.conn.rollback()

    def _why_not_running(self, job: Job) -> str:
        """Say why a job this worker claimed is no longer ``running``."""
        name = self.table.definition.name
        row = self.conn.execute(job_queries.JOB_AND_MIGRATION_STATUS, [job.id]).fetchone()
        if row is None:
            return f"job {job.id} of migration {name!r} no longer exists"
        job_status, job_error, migration_status, migration_error = row
        if migration_status == MigrationStatus.FAILED:
            return f"migration {name!r} failed: {migration_error}; job {job.id} stopped"
        because = f" ({job_error})" if job_error else ""
        return f"job {job.id} of migration {name!r} is {job_status} now, not running{because}"


def _answered(cursor: psycopg.Cursor[Any]) -> bool:
    """Whether the server answered the cursor's query with rows (not an error, not skipped)."""
    return cursor.pgresult is not None and cursor.pgresult.status == psycopg.pq.ExecStatus.TUPLES_OK


def _first_row(cursor: psycopg.Cursor[Any]) -> tuple[Any, ...] | None:
    """Return the first row of the cursor's answer, read or not yet; ``None`` if it has none."""
    if cursor.pgresult is None or not cursor.pgresult.ntuples:
        return None
    cursor.scroll(0, "absolute")
    return cursor.fetchone()


def _row(cursor: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    """Return the one row of the cursor's answer."""
    row = _first_row(cursor)
    assert row is not None
    return row
