"""Know before you run: how much WAL a migration will write, how long it will take, and what binds it.

:func:`compute_plan` reads a :class:`~airflow_provider_walthrottle.migrations.definition.MigrationDefinition`
on an open connection and returns a :class:`MigrationPlan`:

* the **rows in scope**, counted, or estimated for a large table from the planner's row count and
  a page sample (it says which);
* **WAL per row and rows per second**, measured by running ``batch_sql`` over a few sample ranges
  spread across the key space, in a transaction that is **rolled back**: the sampled rows are
  locked for as long as the sample runs, and the WAL it writes stays written, but no row changes;
* the **projected WAL**, in bytes and in WAL segments;
* the **archiver's pace**, from ``pg_stat_archiver`` sampled over a short window, or a pace given
  by the caller;
* three **durations**: archiver-bound (WAL ÷ the archiver's pace), database-bound (rows ÷ the
  measured rows per second) and schedule-bound (the batches the optimizer would plan, each costing
  the gap between two batches, or the DAG's interval); which one wins, and what to change;
* the **peak backlog** to expect under the threshold;
* **warnings**: no index that serves the scope, triggers on the table, foreign keys that
  ``batch_sql`` may have to check.

Plain Python over psycopg, with no Airflow import; the SQL is in
:mod:`~airflow_provider_walthrottle.migrations.plan_queries` and
:mod:`~airflow_provider_walthrottle.migrations.table_queries`.

.. seealso:: :doc:`/howto/plan`
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row

from airflow_provider_walthrottle.durations import format_duration
from airflow_provider_walthrottle.migrations import plan_queries, table_queries
from airflow_provider_walthrottle.migrations.definition import MigrationDefinitionError, whole_number
from airflow_provider_walthrottle.migrations.optimizer import (
    BatchObservation,
    BatchSizePolicy,
    ThroughputEstimate,
    next_batch_size,
)
from airflow_provider_walthrottle.migrations.registry import MigrationRegistry
from airflow_provider_walthrottle.migrations.table import MigrationTable
from airflow_provider_walthrottle.wal.queries import read_archiver_status
from airflow_provider_walthrottle.wal.segments import parse_lsn

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_walthrottle.migrations.definition import MigrationDefinition

#: Above this many rows by ``reltuples``, the rows in scope are estimated by the planner, not counted.
DEFAULT_COUNT_LIMIT = 5_000_000
#: Sample ranges, and keys in each: one sub-batch each.
DEFAULT_SAMPLE_RANGES = 5
DEFAULT_SAMPLE_KEYS = 1000
#: Seconds over which ``pg_stat_archiver`` is sampled for the archiver's pace.
DEFAULT_ARCHIVER_WINDOW_SECONDS = 10.0
#: The operator's defaults the schedule-bound duration is planned with: its first batch, the
#: optimizer's growth per batch, its time target per batch, its smallest batch.
DEFAULT_FIRST_BATCH = 1000
DEFAULT_MAX_GROWTH = 4.0
DEFAULT_TARGET_BATCH_SECONDS = 30.0
DEFAULT_MIN_BATCH_SIZE = 100
#: The wall-clock gap between two batches scheduled back to back, measured under a real scheduler
#: (about 2.6 s; see :doc:`/howto/migration_dag`).
DEFAULT_BATCH_GAP_SECONDS = 3.0
#: ``statement_timeout`` and ``lock_timeout`` of the sample's statements, in milliseconds.
DEFAULT_SAMPLE_STATEMENT_TIMEOUT_MS = 30_000
DEFAULT_SAMPLE_LOCK_TIMEOUT_MS = 1_000
#: Above this many rows in scope, the sample's start keys are read from a page sample of the table.
_EXACT_STARTS_UP_TO = 200_000
#: Rows a page sample aims at, for the sample's start keys.
_PAGE_SAMPLE_ROWS = 20_000
#: The bounds a plan weighs, as its ``bounds`` and ``binding`` name them.
BOUNDS = ("archiver", "database", "schedule")


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


@dataclass(frozen=True)
class MigrationPlan:
    """What a migration will write and how long it will take, measured before it runs.

    Durations are in seconds, ``None`` when they cannot be known (no archiver pace, no rows).

    :param table: ``schema.table``.
    :param column: the key column.
    :param scope: the scope, if any.
    :param key_type: the key column's type.
    :param rows: rows (keys) in scope.
    :param rows_method: ``"counted"``, or ``"estimated"`` for a large table: the planner's row count
        of the table (``reltuples``) times the share in scope of a page sample.
    :param reltuples: the planner's row count of the whole table (-1 before its first ``ANALYZE``).
    :param samples: the sample ranges.
    :param sample_seconds: how long the sample's transaction held its locks, from its first
        statement to its rollback.
    :param wal_bytes_per_row: WAL per key in scope: the median of the sample ranges' (the WAL is the
        whole server's, so a burst of another session's during one range inflates that one only).
    :param rows_per_second: keys per second of ``batch_sql`` alone, from the sample.
    :param total_wal_bytes: the projected WAL of the whole migration.
    :param wal_segment_size: the server's ``wal_segment_size``.
    :param wal_segments: the projected WAL in segments, rounded up.
    :param archiver: the archiver's pace.
    :param max_pending_segments: the threshold.
    :param pending_segments: the backlog when the plan was made, ``None`` when unknown.
    :param batch_sizes: the first batch size, the largest and the number of batches the optimizer
        would plan.
    :param interval_seconds: the DAG's interval, ``None`` for back to back.
    :param batch_gap_seconds: the gap between two batches back to back.
    :param bounds: ``{"archiver": s, "database": s, "schedule": s}``.
    :param expected_seconds: the wall-clock estimate: the archiver's bound, or the batches with their
        gaps (or intervals), whichever is longer.
    :param binding: the bound that wins (:data:`BOUNDS`).
    :param advice: one sentence on what to change to go faster.
    :param peak_backlog_segments: the backlog to expect at its peak, ``None`` when unknown.
    :param peak_backlog_note: why.
    :param warnings: index, trigger and foreign key warnings, one line each.
    :param side_effects: what the sample did to the database.
    """

    table: str
    column: str
    scope: str | None
    key_type: str
    rows: int
    rows_method: str
    reltuples: float
    samples: tuple[SampleRange, ...]
    sample_seconds: float
    wal_bytes_per_row: float | None
    rows_per_second: float | None
    total_wal_bytes: int
    wal_segment_size: int
    wal_segments: int
    archiver: ArchiverPace
    max_pending_segments: int
    pending_segments: int | None
    batches: int
    first_batch_size: int
    largest_batch_size: int
    interval_seconds: float | None
    batch_gap_seconds: float
    bounds: dict[str, float | None]
    expected_seconds: float | None
    binding: str | None
    advice: str
    peak_backlog_segments: int | None
    peak_backlog_note: str
    warnings: tuple[str, ...] = field(default=())
    side_effects: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the plan as JSON-ready data."""
        return dataclasses.asdict(self)

    def render(self) -> str:
        """Return the plan as a short block a person reads."""
        return render_plan(self)


# ------------------------------------------------------------------------------------------- compute


def compute_plan(
    conn: psycopg.Connection[Any],
    definition: MigrationDefinition,
    *,
    max_pending_segments: int = 42,
    sample_ranges: int = DEFAULT_SAMPLE_RANGES,
    sample_keys: int = DEFAULT_SAMPLE_KEYS,
    archiver_window_seconds: float = DEFAULT_ARCHIVER_WINDOW_SECONDS,
    archiver_segments_per_second: float | None = None,
    first_batch_size: int = DEFAULT_FIRST_BATCH,
    min_batch_size: int = DEFAULT_MIN_BATCH_SIZE,
    max_batch_size: int | None = None,
    target_batch_seconds: float = DEFAULT_TARGET_BATCH_SECONDS,
    interval_seconds: float | None = None,
    batch_gap_seconds: float = DEFAULT_BATCH_GAP_SECONDS,
    count_limit: int = DEFAULT_COUNT_LIMIT,
    statement_timeout_ms: int = DEFAULT_SAMPLE_STATEMENT_TIMEOUT_MS,
    lock_timeout_ms: int = DEFAULT_SAMPLE_LOCK_TIMEOUT_MS,
    sleep: Callable[[float], None] = time.sleep,
) -> MigrationPlan:
    """Plan ``definition`` on ``conn``: measure it, without changing a row.

    The sample runs ``batch_sql`` over ``sample_ranges`` ranges of ``sample_keys`` keys each, spread
    across the keys in scope, in one transaction that is rolled back: the sampled rows stay locked
    until then, the WAL it writes stays written, and sequences it advances stay advanced.

    :param conn: a connection in autocommit mode, whose role may run ``batch_sql``.
    :param definition: the migration.
    :param max_pending_segments: the WAL threshold the migration will run under.
    :param sample_ranges: how many ranges to sample.
    :param sample_keys: keys per sample range (one sub-batch).
    :param archiver_window_seconds: how long to watch ``pg_stat_archiver``; 0 skips it.
    :param archiver_segments_per_second: the archiver's pace, if known: used instead of a measure.
    :param first_batch_size: the operator's ``batch_size``: its first batch.
    :param min_batch_size: the optimizer's smallest batch.
    :param max_batch_size: its largest batch; ``None`` for none (the operator's default).
    :param target_batch_seconds: the duration it aims a batch at.
    :param interval_seconds: the DAG's interval between two runs; ``None`` for back to back.
    :param batch_gap_seconds: the gap between two batches back to back.
    :param count_limit: above this many rows by ``reltuples``, the rows in scope are estimated.
    :param statement_timeout_ms: ``SET LOCAL statement_timeout`` of the sample.
    :param lock_timeout_ms: ``SET LOCAL lock_timeout`` of the sample.
    :param sleep: how to wait out the archiver's window.
    :raises MigrationDefinitionError: for a table, key column, scope or ``batch_sql`` that does not
        fit (the checks a migration's first run makes).
    :raises MigrationPlanError: when the sample times out, waits too long for a lock, or fails.
    """
    whole_number("sample_ranges", sample_ranges, minimum=1, unit="ranges")
    whole_number("sample_keys", sample_keys, minimum=1, unit="keys")
    whole_number("max_pending_segments", max_pending_segments, minimum=1, unit="segments")
    whole_number("first_batch_size", first_batch_size, minimum=1, unit="rows")
    if archiver_segments_per_second is not None and not (
        math.isfinite(archiver_segments_per_second) and archiver_segments_per_second > 0
    ):
        raise MigrationDefinitionError(
            f"the archiver's pace must be a number of segments per second above 0, "
            f"got {archiver_segments_per_second!r}"
        )
    policy = BatchSizePolicy(
        min_batch_size=min(min_batch_size, first_batch_size),
        max_batch_size=None if max_batch_size is None else max(max_batch_size, first_batch_size),
        target_batch_seconds=target_batch_seconds,
        max_growth=DEFAULT_MAX_GROWTH,
    )
    table = MigrationTable(definition)
    registry = MigrationRegistry(conn, table)
    key_type = registry.inspect_key_column()
    table.key_type = key_type
    names = {"schema": definition.schema_name, "table": definition.table_name}

    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(plan_queries.WAL_SETTINGS)
        settings = cursor.fetchone()
        cursor.execute(plan_queries.TABLE_SIZE, names)
        size = cursor.fetchone()
    assert settings is not None and size is not None  # the key column was found
    wal_segment_size = int(settings["wal_segment_size"])
    reltuples = float(size["reltuples"])

    rows, rows_method, first_key, last_key = _rows_in_scope(conn, table, reltuples, count_limit)
    if first_key is not None:
        registry.check_batch_sql(key_type, first_key)
    warnings = _warnings(conn, table)
    if settings["in_recovery"]:
        raise MigrationPlanError(
            f"the server is a standby, where batch_sql cannot run; plan {table.qualified_name} on the primary"
        )

    samples: tuple[SampleRange, ...] = ()
    sample_seconds = 0.0
    if first_key is not None and last_key is not None:
        starts = _sample_starts(conn, table, rows, reltuples, first_key, sample_ranges, sample_keys)
        samples, sample_seconds = _run_sample(
            conn,
            table,
            starts,
            first_key,
            last_key,
            sample_keys,
            sample_ranges,
            statement_timeout_ms,
            lock_timeout_ms,
        )
    sampled_keys = sum(sample.keys for sample in samples)
    sampled_seconds = sum(sample.seconds for sample in samples)
    # the median range's: another session's burst, or a segment switch (archive_timeout), during one
    # range inflates that range alone
    per_range = [sample.wal_bytes / sample.keys for sample in samples if sample.keys]
    wal_bytes_per_row = statistics.median(per_range) if per_range else None
    rows_per_second = sampled_keys / sampled_seconds if sampled_keys and sampled_seconds > 0 else None

    archiver = _archiver_pace(conn, archiver_window_seconds, archiver_segments_per_second, sleep)
    pending_now = read_archiver_status(conn).pending_segments
    total_wal_bytes = round(rows * wal_bytes_per_row) if wal_bytes_per_row is not None else 0
    wal_segments = math.ceil(total_wal_bytes / wal_segment_size)

    sizes = _batch_sizes(rows, first_batch_size, policy, rows_per_second, wal_bytes_per_row)
    batch_seconds = [size / rows_per_second for size in sizes] if rows_per_second else []
    archiver_bytes = (
        archiver.segments_per_second * wal_segment_size if archiver.segments_per_second is not None else None
    )
    bounds: dict[str, float | None] = {
        "archiver": total_wal_bytes / archiver_bytes if archiver_bytes else None,
        "database": rows / rows_per_second if rows_per_second else (0.0 if rows == 0 else None),
        "schedule": len(sizes) * (batch_gap_seconds if interval_seconds is None else interval_seconds),
    }
    if interval_seconds is None:
        walked = sum(seconds + batch_gap_seconds for seconds in batch_seconds)
    else:
        walked = sum(max(seconds, interval_seconds) for seconds in batch_seconds)
    expected: float | None = None
    if rows_per_second or rows == 0:
        expected = max(walked, bounds["archiver"] or 0.0)
    known = {name: seconds for name, seconds in bounds.items() if seconds is not None}
    binding = max(known, key=lambda name: known[name]) if known and rows else None
    wal_rate = wal_bytes_per_row * rows_per_second if wal_bytes_per_row and rows_per_second else None
    peak, peak_note = _peak_backlog(
        wal_rate,
        archiver_bytes,
        total_wal_bytes,
        wal_segment_size,
        max_pending_segments,
        sub_batch_wal=sample_keys * (wal_bytes_per_row or 0.0),
        database_seconds=bounds["database"],
        pending_now=pending_now,
    )
    return MigrationPlan(
        table=table.qualified_name,
        column=definition.column,
        scope=definition.scope,
        key_type=key_type,
        rows=rows,
        rows_method=rows_method,
        reltuples=reltuples,
        samples=samples,
        sample_seconds=sample_seconds,
        wal_bytes_per_row=wal_bytes_per_row,
        rows_per_second=rows_per_second,
        total_wal_bytes=total_wal_bytes,
        wal_segment_size=wal_segment_size,
        wal_segments=wal_segments,
        archiver=archiver,
        max_pending_segments=max_pending_segments,
        pending_segments=pending_now,
        batches=len(sizes),
        first_batch_size=sizes[0] if sizes else 0,
        largest_batch_size=max(sizes, default=0),
        interval_seconds=interval_seconds,
        batch_gap_seconds=batch_gap_seconds,
        bounds=bounds,
        expected_seconds=expected,
        binding=binding,
        advice=_advice(binding, policy, sizes, interval_seconds, archiver, rows_per_second),
        peak_backlog_segments=peak,
        peak_backlog_note=peak_note,
        warnings=tuple(warnings),
        side_effects=_side_effects(samples, sample_seconds),
    )


def _rows_in_scope(
    conn: psycopg.Connection[Any], table: MigrationTable, reltuples: float, count_limit: int
) -> tuple[int, str, str | None, str | None]:
    """Return the rows in scope, ``"counted"`` or ``"estimated"``, and the first and last key."""
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


def _sample_starts(
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


def _run_sample(
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

    :return: the ranges, and how long the transaction held its locks.
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


def _archiver_pace(
    conn: psycopg.Connection[Any],
    window_seconds: float,
    given: float | None,
    sleep: Callable[[float], None],
) -> ArchiverPace:
    """Return the archiver's pace: the one given, else segments archived over ``window_seconds``."""
    if given is not None:
        return ArchiverPace("given", given, 0.0, 0, 0, f"{_number(given)} segments/s, as given")
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
        f"{_number(pace)} segments/s, measured over {format_duration(seconds)} "
        "(what it shipped: at most what it can)",
    )


def _batch_sizes(
    rows: int,
    first_batch_size: int,
    policy: BatchSizePolicy,
    rows_per_second: float | None,
    wal_bytes_per_row: float | None,
) -> list[int]:
    """Return the batch sizes the optimizer would plan for ``rows`` rows at the measured rates.

    Batches run at the sampled rate and are not throttled (the archiver's bound is reckoned apart).
    Once the size stops changing, the rest are that size.
    """
    sizes: list[int] = []
    remaining = rows
    size = first_batch_size
    estimate = ThroughputEstimate()
    while remaining > 0:
        decision = next_batch_size(
            size, estimate, policy, pending_segments=None, max_pending_segments=1, wal_segment_size=1
        )
        if sizes and decision.size == sizes[-1]:
            sizes.extend([decision.size] * (math.ceil(remaining / decision.size) - 1))
            sizes.append(remaining - decision.size * (math.ceil(remaining / decision.size) - 1))
            break
        size = min(decision.size, remaining)
        sizes.append(size)
        remaining -= size
        if rows_per_second:
            estimate = estimate.observe(
                BatchObservation(
                    rows=size,
                    seconds=size / rows_per_second,
                    wal_bytes=round(size * (wal_bytes_per_row or 0)),
                )
            )
    return sizes


def _peak_backlog(
    wal_rate: float | None,
    archiver_bytes: float | None,
    total_wal_bytes: int,
    wal_segment_size: int,
    max_pending_segments: int,
    *,
    sub_batch_wal: float,
    database_seconds: float | None,
    pending_now: int | None = None,
) -> tuple[int | None, str]:
    """Return the backlog to expect at its peak, in segments, and why (from ``pending_now`` on)."""
    start = pending_now or 0
    if total_wal_bytes == 0:
        return start, "the migration writes no WAL to speak of"
    if archiver_bytes is None or wal_rate is None:
        return None, "unknown without the archiver's pace"
    if wal_rate <= archiver_bytes:
        keeps_up = f"the archiver keeps up ({_number(archiver_bytes / wal_rate)}x the migration's WAL rate)"
        if start > 1:
            return start, f"{keeps_up}: the backlog pending now only drains"
        return 1, f"{keeps_up}: about the segment just completed"
    growth = (wal_rate - archiver_bytes) * (database_seconds or 0.0) / wal_segment_size
    overshoot = math.ceil(sub_batch_wal / wal_segment_size)
    if start + growth <= max_pending_segments:
        return max(1, math.ceil(start + growth)), (
            "the migration writes WAL faster than the archiver ships it, but ends before the backlog "
            "reaches the threshold"
        )
    return max_pending_segments + overshoot, (
        f"the backlog climbs to the threshold and is held there: the gate checks between sub-batches, "
        f"so it may pass it by {overshoot} segment{'s' if overshoot != 1 else ''}"
    )


def _warnings(conn: psycopg.Connection[Any], table: MigrationTable) -> list[str]:
    """Return the index, trigger and foreign key warnings on the migration's table."""
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
                warnings.append(
                    f"no index serves the scope {definition.scope!r}: each range walks the key's index and "
                    f"reads every row to test it, and counting the scope reads all of {where}; an index "
                    f"on its columns, or a partial index WHERE {definition.scope}, helps"
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


def _advice(
    binding: str | None,
    policy: BatchSizePolicy,
    sizes: list[int],
    interval_seconds: float | None,
    archiver: ArchiverPace,
    rows_per_second: float | None,
) -> str:
    """Return one sentence on what to change to go faster."""
    if binding is None:
        return "Nothing to migrate." if not sizes else "Measure the archiver's pace to know the bound."
    if binding == "archiver":
        return (
            "The archiver is the limit: nothing on the migration's side helps, only a faster "
            "archive_command (or less WAL per row)."
        )
    at_max = policy.max_batch_size is not None and max(sizes, default=0) >= policy.max_batch_size
    if binding == "schedule" and interval_seconds is not None:
        return (
            f"The schedule is the limit, one batch per {format_duration(interval_seconds)}: schedule it "
            "back to back (BackToBack()), or make batches larger (target_batch_seconds"
            + (", max_batch_size)." if at_max else ").")
        )
    if binding == "schedule":
        if at_max:
            return (
                f"The gaps between batches are the limit: raise max_batch_size (now {policy.max_batch_size}) "
                "for fewer, larger batches."
            )
        by_time = (rows_per_second or 0.0) * policy.target_batch_seconds
        if max(sizes, default=0) < by_time:  # still growing from the first batch when it ends
            return (
                "The gaps between batches are the limit, while batches grow from the first: raise "
                "batch_size (the first batch) for fewer, larger batches."
            )
        return "The gaps between batches are the limit: raise target_batch_seconds for fewer, larger batches."
    note = "" if archiver.segments_per_second is not None else " (the archiver's pace is unknown)"
    return (
        "The statements are the limit: make batch_sql cheaper per row (an index for its WHERE, fewer "
        f"indexes on the columns it sets), or run with pause_ms=0 and a larger sub_batch_size{note}."
    )


def _side_effects(samples: tuple[SampleRange, ...], seconds: float) -> str:
    if not samples:
        return "none: nothing to sample, no statement ran"
    keys = sum(sample.keys for sample in samples)
    wal = sum(sample.wal_bytes for sample in samples)
    return (
        f"the sample locked the rows of {keys:,} keys for {_measured(seconds)} and wrote "
        f"{_bytes(wal)} of WAL, then rolled back: no row changed (sequences it advanced stay advanced)"
    )


# ------------------------------------------------------------------------------------------- render


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _bytes(value: float) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("kiB", 1024)):
        if value >= size:
            return f"{value / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{value:.0f} bytes"


def _measured(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else format_duration(seconds)


def _duration(seconds: float | None) -> str:
    return "unknown" if seconds is None else format_duration(seconds, estimate=True)


def render_plan(plan: MigrationPlan) -> str:
    """Return the plan as a short block a person reads.

    :param plan: the plan.
    """
    method = (
        "counted"
        if plan.rows_method == "counted"
        else f"estimated from reltuples ({plan.reltuples:,.0f}) and a page sample, not counted"
    )
    scope = f", scope {plan.scope.replace('%%', '%')}" if plan.scope else ""
    lines = [f"Plan of a migration of {plan.table} (key {plan.column}{scope})"]
    lines.append(f"  rows in scope    : {plan.rows:,} ({method})")
    keys = sum(s.keys for s in plan.samples)
    if plan.samples:
        lines.append(
            f"  sample           : {len(plan.samples)} ranges, {keys:,} keys, "
            f"{sum(s.rows_affected for s in plan.samples):,} rows changed in "
            f"{_measured(sum(s.seconds for s in plan.samples))}, rolled back"
        )
    else:
        lines.append("  sample           : none (no keys in scope)")
    if plan.wal_bytes_per_row is not None:
        rate = f"{_number(plan.rows_per_second)} rows/s" if plan.rows_per_second else "rate unknown"
        lines.append(
            f"  per row          : {_number(plan.wal_bytes_per_row)} WAL bytes; {rate} (batch_sql alone)"
        )
    lines.append(
        f"  projected WAL    : {_bytes(plan.total_wal_bytes)} = {plan.wal_segments:,} segments of "
        f"{_bytes(plan.wal_segment_size)}"
    )
    lines.append(f"  archiver         : {plan.archiver.note}")
    schedule = (
        f"back to back, about {_number(plan.batch_gap_seconds)} s between batches"
        if plan.interval_seconds is None
        else f"one per {format_duration(plan.interval_seconds)}"
    )
    lines.append(f"  archiver-bound   : {_duration(plan.bounds['archiver'])}")
    lines.append(f"  database-bound   : {_duration(plan.bounds['database'])}")
    lines.append(
        f"  schedule-bound   : {_duration(plan.bounds['schedule'])} ({plan.batches:,} batches of "
        f"{plan.first_batch_size:,} to {plan.largest_batch_size:,} rows, {schedule})"
    )
    winner = f"; bound by the {plan.binding}" if plan.binding else ""
    lines.append(f"  expected         : {_duration(plan.expected_seconds)}{winner}")
    lines.append(f"  to go faster     : {plan.advice}")
    peak = plan.peak_backlog_segments
    peak_text = "unknown" if peak is None else f"{peak} segment{'' if peak == 1 else 's'}"
    lines.append(
        f"  peak backlog     : {peak_text} (threshold {plan.max_pending_segments}, "
        f"{'unknown' if plan.pending_segments is None else plan.pending_segments} pending now): "
        f"{plan.peak_backlog_note}"
    )
    for index, warning in enumerate(plan.warnings):
        lines.append(f"  {'warnings' if index == 0 else '':<17}: {warning}")
    lines.append(f"  side effects     : {plan.side_effects}")
    return "\n".join(lines)
