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

Plain Python over psycopg, with no Airflow import. The measures are taken in
:mod:`~airflow_provider_walthrottle.migrations.plan_sampling`, the figures derived from them and the
text rendered in :mod:`~airflow_provider_walthrottle.migrations.plan_estimates`; the SQL is in
:mod:`~airflow_provider_walthrottle.migrations.plan_queries` and
:mod:`~airflow_provider_walthrottle.migrations.table_queries`.
:class:`~airflow_provider_walthrottle.migrations.plan_sampling.MigrationPlanError` and
:func:`~airflow_provider_walthrottle.migrations.plan_estimates.render_plan` are importable from here
too, with the plan's other types.

.. seealso:: :doc:`/howto/plan`
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row

from airflow_provider_walthrottle.migrations import plan_queries
from airflow_provider_walthrottle.migrations.definition import MigrationDefinitionError, whole_number
from airflow_provider_walthrottle.migrations.optimizer import BATCH_GROWTH, BatchSizePolicy
from airflow_provider_walthrottle.migrations.plan_estimates import (
    advice,
    batch_sizes,
    peak_backlog,
    render_plan,
    side_effects,
)
from airflow_provider_walthrottle.migrations.plan_sampling import (
    ArchiverPace,
    MigrationPlanError,
    SampleRange,
    archiver_pace,
    rows_in_scope,
    run_sample,
    sample_starts,
    table_warnings,
)
from airflow_provider_walthrottle.migrations.registry import MigrationRegistry
from airflow_provider_walthrottle.migrations.table import MigrationTable
from airflow_provider_walthrottle.wal.queries import read_archiver_status

if TYPE_CHECKING:
    from collections.abc import Callable

    import psycopg

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
DEFAULT_MAX_GROWTH = BATCH_GROWTH
DEFAULT_TARGET_BATCH_SECONDS = 30.0
DEFAULT_MIN_BATCH_SIZE = 100
#: The wall-clock gap between two batches scheduled back to back, measured under a real scheduler
#: (about 2.6 s; see :doc:`/howto/migration_dag`).
DEFAULT_BATCH_GAP_SECONDS = 3.0
#: ``statement_timeout`` and ``lock_timeout`` of the sample's statements, in milliseconds.
DEFAULT_SAMPLE_STATEMENT_TIMEOUT_MS = 30_000
DEFAULT_SAMPLE_LOCK_TIMEOUT_MS = 1_000
#: The bounds a plan weighs, as its ``bounds`` and ``binding`` name them.
BOUNDS = ("archiver", "database", "schedule")


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
        """Return the plan as JSON data: dicts, lists, strings, numbers and ``None``.

        Its tuples are lists, so that an XCom or a ``jsonb`` column gives back what was put in.
        """
        return _json_ready(dataclasses.asdict(self))

    def render(self) -> str:
        """Return the plan as a short block a person reads."""
        return render_plan(self)


def _json_ready(value: Any) -> Any:
    """Return ``value`` with every tuple in it, however deep, a list."""
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    return value


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
    whole_number("max_pending_segments", max_pending_segments, minimum=0, unit="segments")
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

    rows, rows_method, first_key, last_key = rows_in_scope(conn, table, reltuples, count_limit)
    if first_key is not None:
        registry.check_batch_sql(key_type, first_key)
    warnings = table_warnings(conn, table)
    if settings["in_recovery"]:
        raise MigrationPlanError(
            f"the server is a standby, where batch_sql cannot run; plan {table.qualified_name} on the primary"
        )

    samples: tuple[SampleRange, ...] = ()
    sample_seconds = 0.0
    if first_key is not None and last_key is not None:
        starts = sample_starts(conn, table, rows, reltuples, first_key, sample_ranges, sample_keys)
        samples, sample_seconds = run_sample(
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

    archiver = archiver_pace(conn, archiver_window_seconds, archiver_segments_per_second, sleep)
    pending_now = read_archiver_status(conn).pending_segments
    total_wal_bytes = round(rows * wal_bytes_per_row) if wal_bytes_per_row is not None else 0
    wal_segments = math.ceil(total_wal_bytes / wal_segment_size)

    sizes = batch_sizes(rows, first_batch_size, policy, rows_per_second, wal_bytes_per_row)
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
    peak, peak_note = peak_backlog(
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
        advice=advice(binding, policy, sizes, interval_seconds, archiver, rows_per_second),
        peak_backlog_segments=peak,
        peak_backlog_note=peak_note,
        warnings=tuple(warnings),
        side_effects=side_effects(samples, sample_seconds),
    )
