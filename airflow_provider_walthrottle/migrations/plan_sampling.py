"""Measure a migration for its plan: everything the plan reads from the database.

The rows in scope (counted, or estimated for a large table), the sample ranges and the run of
``batch_sql`` over them in a transaction that is rolled back, the archiver's pace from
``pg_stat_archiver``, and the index, trigger and foreign key warnings on the table.
:func:`~airflow_provider_walthrottle.migrations.plan.compute_plan` calls these in turn; the SQL is in
:mod:`~airflow_provider_walthrottle.migrations.plan_queries` and
:mod:`~airflow_provider_walthrottle.migrations.table_queries`.

.. seealso:: :doc:`/howto/plan`
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row

from airflow_provider_walthrottle.durations import format_duration
from airflow_provider_walthrottle.migrations import plan_queries, table_queries
from airflow_provider_walthrottle.migrations.definition import MigrationDefinitionError
from airflow_provider_walthrottle.migrations.plan_estimates import format_number
from airflow_provider_walthrottle.wal.segments import parse_lsn

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_walthrottle.migrations.table import MigrationTable

#: Above this many rows in scope, the sample's start keys are read from a page sample of the table.
_EXACT_STARTS_UP_TO = 200_000
#: Rows a page sample aims at, for the sample's start keys.
_PAGE_SAMPLE_ROWS = 20_000


class MigrationPlanError(RuntimeError):
    """The plan cannot be computed; the message says why, and what to do."""


@dataclass(frozen=True)
class SampleRange:
    """One sample range: its keys, what ``batch_sql`` did over it, rolled back afterwards.

    :param first_key: its first key, as text.
    :param last_key: its last key, as text.
    :param keys: keys in scope in it.
    :param rows_affected: the row count ``batch_sql`` reported.
    :param wal_bytes: WAL the statement wrote (the whole server's, during it).
    :param seconds: the statement's duration.
    """

    first_key: str
    last_key: str
    keys: int
    rows_affected: int
    wal_bytes: int
    seconds: float


@dataclass(frozen=True)
class ArchiverPace:
    """How fast the archiver ships WAL.

    :param source: ``"measured"`` (from ``pg_stat_archiver``), ``"given"`` (by the caller), or
        ``"none"`` (no segment archived in the window, and none given).
    :param segments_per_second: the pace, ``None`` when unknown.
    :param window_seconds: how long ``pg_stat_archiver`` was watched.
    :param archived: segments archived in the window.
    :param failed: failed attempts in the window.
    :param note: one line a person reads.
    """

    source: str
    segments_per_second: float | None
    window_seconds: float
    archived: int
    failed: int
    note: str


def rows_in_scope(
    conn: psycopg.Connection[Any], table: MigrationTable, reltuples: float, count_limit: int
) -> tuple[int, str, str | None, str | None]:
    """Return the rows in scope, ``"counted"`` or ``"estimated"``, and the first and last key.

    :param conn: a connection in autocommit mode.
    :param table: the migration's table.
    :param reltuples: the planner's row count of the table.
    :param count_limit: above this many rows by ``reltuples``, the rows in scope are estimated.
    :raises MigrationDefinitionError: for a scope that does not plan.
    """
    scope = table.definition.scope
    large = reltuples > count_limit
    query = (
        plan_queries.key_ends(table.identifier, table.column, scope)
        if large
        else table_queries.key_bounds(table.identifier, table.column, scope)
    )
    try:
        with conn.transaction(), conn.cursor() as cursor:
            # with parameters (none), so that %% in the scope reads as % as it does everywhere else
            cursor.execute(query, {})
            row = cursor.fetchone()
            assert row is not None
            if large:
                return _estimated_rows(cursor, table, reltuples), "estimated", row[0], row[1]
    except psycopg.Error as error:
        raise MigrationDefinitionError(
            f"scope {scope!r} of table {table.qualified_name} does not plan: {' '.join(str(error).split())}"
        ) from None
    return int(row[2]), "counted", row[0], row[1]


def _estimated_rows(cursor: psycopg.Cursor[Any], table: MigrationTable, reltuples: float) -> int:
    """Estimate the rows in scope: ``reltuples`` times the share in scope of a page sample, or the
    planner's estimate if the sample holds no row."""
    scope = table.definition.scope
    if not scope:
        return round(reltuples)
    percent = min(100.0, 100.0 * _PAGE_SAMPLE_ROWS / reltuples)
    cursor.execute(plan_queries.scope_share(table.identifier, scope), {"percent": percent})
    share = cursor.fetchone()
    assert share is not None
    if share[0]:
        return round(reltuples * share[1] / share[0])
    cursor.execute(plan_queries.estimated_rows(table.identifier, scope), {})
    explained = cursor.fetchone()
    assert explained is not None
    return int(explained[0][0]["Plan"]["Plan Rows"])


def sample_starts(
    conn: psycopg.Connection[Any],
    table: MigrationTable,
    rows: int,
    reltuples: float,
    first_key: str,
    sample_ranges: int,
    sample_keys: int,
) -> list[str] | None:
    """Return the first key of each sample range, spread across the keys in scope.

    ``None`` when the scope holds no more keys than the sample: then it walks them from the first.

    :param conn: a connection in autocommit mode.
    :param table: the migration's table.
    :param rows: the rows in scope.
    :param reltuples: the planner's row count of the table.
    :param first_key: the first key in scope, as text.
    :param sample_ranges: how many ranges to sample.
    :param sample_keys: keys per sample range.
    """
    if rows <= sample_ranges * sample_keys:
        return None
    sampled = rows > _EXACT_STARTS_UP_TO and reltuples > 0
    percent = min(100.0, 100.0 * _PAGE_SAMPLE_ROWS / reltuples) if sampled else 100.0
    query = plan_queries.sample_starts(
        table.identifier, table.column, table.definition.scope, sampled=sampled
    )
    with conn.transaction(), conn.cursor() as cursor:
        cursor.execute(
            query, {"fractions": [i / sample_ranges for i in range(sample_ranges)], "percent": percent}
        )
        starts = [key for (key,) in cursor.fetchall() if key is not None]
    return starts or [first_key]


def run_sample(
    conn: psycopg.Connection[Any],
    table: MigrationTable,
    starts: list[str] | None,
    first_key: str,
    last_key: str,
    sample_keys: int,
    sample_ranges: int,
    statement_timeout_ms: int,
    lock_timeout_ms: int,
) -> tuple[tuple[SampleRange, ...], float]:
    """Run ``batch_sql`` over the sample ranges in one transaction, and roll it back.

    :param conn: a connection in autocommit mode, whose role may run ``batch_sql``.
    :param table: the migration's table.
    :param starts: the first key of each range (:func:`sample_starts`), or ``None`` to walk the keys
        from ``first_key``.
    :param first_key: the first key in scope, as text.
    :param last_key: the last key in scope, as text.
    :param sample_keys: keys per sample range.
    :param sample_ranges: how many ranges to sample.
    :param statement_timeout_ms: ``SET LOCAL statement_timeout`` of the sample.
    :param lock_timeout_ms: ``SET LOCAL lock_timeout`` of the sample.
    :return: the ranges, and how long the transaction held its locks.
    :raises MigrationPlanError: when the sample times out, waits too long for a lock, or fails.
    """
    definition = table.definition
    statement = table_queries.batch_statement(definition.batch_sql)
    samples: list[SampleRange] = []
    began = time.monotonic()
    after: str | None = None
    try:
        with conn.transaction(force_rollback=True), conn.cursor() as cursor:
            cursor.execute(table_queries.set_statement_timeout(statement_timeout_ms))
            cursor.execute(plan_queries.set_lock_timeout(lock_timeout_ms))
            began = time.monotonic()
            for index in range(sample_ranges):
                if starts is None:  # few keys: walk them from the first
                    inclusive, start = after is None, first_key if after is None else after
                elif index < len(starts):
                    inclusive, start = True, starts[index]
                else:
                    break
                cursor.execute(
                    table.range_query(inclusive=inclusive, wal_position=True),
                    {"after": table.key(start), "last": table.key(last_key), "rows": sample_keys},
                )
                found_range = cursor.fetchone()
                assert found_range is not None
                first, last, keys, in_range, before = found_range
                if first is None or not keys:
                    break
                if not in_range:
                    raise MigrationPlanError(
                        str(table.escaped(f"the plan's sample from key {start} found keys {first}..{last}"))
                    )
                clock = time.monotonic()
                cursor.execute(statement, {"start": table.key(first), "end": table.key(last)})
                seconds = time.monotonic() - clock
                rows_affected = max(cursor.rowcount, 0)
                cursor.execute(plan_queries.WAL_INSERT_POSITION)
                position = cursor.fetchone()
                assert position is not None
                wal_bytes = max(parse_lsn(position[0]) - parse_lsn(before), 0)
                samples.append(SampleRange(first, last, int(keys), rows_affected, wal_bytes, seconds))
                after = last
            # the WAL is measured above, before this rollback (force_rollback)
    except psycopg.errors.QueryCanceled:
        raise MigrationPlanError(
            f"the plan's sample of {table.qualified_name} ran past its statement_timeout of "
            f"{statement_timeout_ms} ms and was rolled back; sample fewer keys (--sample-keys) or allow "
            "more time"
        ) from None
    except psycopg.errors.LockNotAvailable:
        raise MigrationPlanError(
            f"the plan's sample of {table.qualified_name} waited more than its lock_timeout of "
            f"{lock_timeout_ms} ms for a lock another session holds, and was rolled back; try again later"
        ) from None
    except psycopg.Error as error:
        raise MigrationPlanError(
            f"batch_sql failed in the plan's sample of {table.qualified_name} (rolled back): "
            f"{' '.join(str(error).split())}"
        ) from None
    return tuple(samples), time.monotonic() - began


def archiver_pace(
    conn: psycopg.Connection[Any],
    window_seconds: float,
    given: float | None,
    sleep: Callable[[float], None],
) -> ArchiverPace:
    """Return the archiver's pace: the one given, else segments archived over ``window_seconds``.

    :param conn: a connection in autocommit mode.
    :param window_seconds: how long to watch ``pg_stat_archiver``; 0 skips it.
    :param given: the archiver's pace, if known: used instead of a measure.
    :param sleep: how to wait out the window.
    """
    if given is not None:
        return ArchiverPace("given", given, 0.0, 0, 0, f"{format_number(given)} segments/s, as given")
    if window_seconds <= 0:
        return ArchiverPace("none", None, 0.0, 0, 0, "not measured; give the archiver's pace")
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(plan_queries.ARCHIVER_COUNTERS)
        before = cursor.fetchone()
        sleep(window_seconds)
        cursor.execute(plan_queries.ARCHIVER_COUNTERS)
        after = cursor.fetchone()
    assert before is not None and after is not None
    if before["archive_mode"] == "off":
        return ArchiverPace("none", None, 0.0, 0, 0, "archive_mode is off: no archiver binds this migration")
    seconds = max((after["now"] - before["now"]).total_seconds(), 1e-6)
    archived = int(after["archived_count"]) - int(before["archived_count"])
    failed = int(after["failed_count"]) - int(before["failed_count"])
    if archived <= 0:
        last = after["last_archived_time"]
        why = f"the last was at {last:%Y-%m-%d %H:%M:%S %Z}" if last is not None else "none since the reset"
        failing = f", {failed} attempts failed" if failed > 0 else ""
        return ArchiverPace(
            "none",
            None,
            seconds,
            0,
            max(failed, 0),
            f"no recent archiving to measure: no segment archived in {format_duration(seconds)} ({why}"
            f"{failing}); give its pace (--archiver-pace)",
        )
    pace = archived / seconds
    return ArchiverPace(
        "measured",
        pace,
        seconds,
        archived,
        max(failed, 0),
        f"{format_number(pace)} segments/s, measured over {format_duration(seconds)} "
        "(what it shipped: at most what it can)",
    )


def table_warnings(conn: psycopg.Connection[Any], table: MigrationTable) -> list[str]:
    """Return the index, trigger and foreign key warnings on the migration's table, one line each.

    :param conn: a connection in autocommit mode.
    :param table: the migration's table.
    """
    definition = table.definition
    names = {"schema": definition.schema_name, "table": definition.table_name}
    where = table.qualified_name
    warnings: list[str] = []
    with conn.transaction(force_rollback=True), conn.cursor(row_factory=dict_row) as cursor:
        if definition.scope:
            cursor.execute(plan_queries.PARTIAL_INDEXES, names)
            partial = {row["relname"] for row in cursor.fetchall()}
            cursor.execute(plan_queries.AVOID_SEQUENTIAL_SCANS)
            cursor.execute(plan_queries.scope_plan(table.identifier, table.column, definition.scope), {})
            explained = cursor.fetchone()
            assert explained is not None
            plan = next(iter(explained.values()))[0]["Plan"]
            if not _serves_scope(plan, partial):
                scope = definition.scope.replace("%%", "%")  # as the server reads it, and the plan's header
                warnings.append(
                    f"no index serves the scope {scope!r}: each range walks the key's index and "
                    f"reads every row to test it, and counting the scope reads all of {where}; an index "
                    f"on its columns, or a partial index WHERE {scope}, helps"
                )
        cursor.execute(plan_queries.TRIGGERS, names)
        for row in cursor.fetchall():
            state = "" if row["enabled"] else " (disabled)"
            warnings.append(
                f"trigger {row['name']}{state} on {where} runs for each row batch_sql changes; its work "
                "(and its WAL, in the sample) adds to every batch"
            )
        cursor.execute(plan_queries.FOREIGN_KEYS, names)
        for row in cursor.fetchall():
            if row["referencing"]:
                warnings.append(
                    f"foreign key {row['name']} of {where} references {row['other']}: each row whose key "
                    "columns batch_sql changes (or inserts) is checked there, under a share lock"
                )
            else:
                unindexed = (
                    "" if row["referencing_indexed"] else ", and no index leads with its columns there"
                )
                warnings.append(
                    f"foreign key {row['name']} of {row['other']} references {where}: each row batch_sql "
                    f"deletes, or whose referenced key it changes, is looked up in {row['other']}{unindexed}"
                )
    return warnings


_INDEX_NODES = ("Index Scan", "Index Only Scan", "Bitmap Index Scan")


def _serves_scope(plan: dict[str, Any], partial_indexes: set[str]) -> bool:
    """Whether an index in ``plan`` (EXPLAIN's JSON) applies the scope: with a condition, or partial."""
    if plan.get("Node Type") in _INDEX_NODES and (
        "Index Cond" in plan or plan.get("Index Name") in partial_indexes
    ):
        return True
    return any(_serves_scope(child, partial_indexes) for child in plan.get("Plans", ()))
