"""A plan's derived figures, and the plan as text: what the measures add up to.

From what :mod:`~airflow_provider_walthrottle.migrations.plan_sampling` measured: the batch sizes the
optimizer would plan, the peak backlog to expect, one sentence of advice, the sample's side effects,
and the text block of :func:`render_plan`. Plain arithmetic, with no database connection.

.. seealso:: :doc:`/howto/plan`
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from airflow_provider_walthrottle.durations import format_duration
from airflow_provider_walthrottle.migrations.optimizer import (
    BatchObservation,
    ThroughputEstimate,
    next_batch_size,
)

if TYPE_CHECKING:
    from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
    from airflow_provider_walthrottle.migrations.plan import MigrationPlan
    from airflow_provider_walthrottle.migrations.plan_sampling import ArchiverPace, SampleRange


def batch_sizes(
    rows: int,
    first_batch_size: int,
    policy: BatchSizePolicy,
    rows_per_second: float | None,
    wal_bytes_per_row: float | None,
) -> list[int]:
    """Return the batch sizes the optimizer would plan for ``rows`` rows at the measured rates.

    Batches run at the sampled rate and are not throttled (the archiver's bound is reckoned apart).
    Once the size stops changing, the rest are that size.

    :param rows: the rows in scope.
    :param first_batch_size: the first batch.
    :param policy: the optimizer's policy.
    :param rows_per_second: keys per second of ``batch_sql``, from the sample; ``None`` when unknown.
    :param wal_bytes_per_row: WAL per key, from the sample; ``None`` when unknown.
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


def peak_backlog(
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
    """Return the backlog to expect at its peak, in segments, and why (from ``pending_now`` on).

    :param wal_rate: the migration's WAL bytes per second, ``None`` when unknown.
    :param archiver_bytes: the archiver's pace in bytes per second, ``None`` when unknown.
    :param total_wal_bytes: the projected WAL of the whole migration.
    :param wal_segment_size: the server's ``wal_segment_size``.
    :param max_pending_segments: the threshold.
    :param sub_batch_wal: the WAL of one sub-batch, by which the gate may pass the threshold.
    :param database_seconds: the database-bound duration, ``None`` when unknown.
    :param pending_now: the backlog now, ``None`` when unknown.
    """
    start = pending_now or 0
    if total_wal_bytes == 0:
        return start, "the migration writes no WAL to speak of"
    if archiver_bytes is None or wal_rate is None:
        return None, "unknown without the archiver's pace"
    if wal_rate <= archiver_bytes:
        keeps_up = (
            f"the archiver keeps up ({format_number(archiver_bytes / wal_rate)}x the migration's WAL rate)"
        )
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


def advice(
    binding: str | None,
    policy: BatchSizePolicy,
    sizes: list[int],
    interval_seconds: float | None,
    archiver: ArchiverPace,
    rows_per_second: float | None,
) -> str:
    """Return one sentence on what to change to go faster.

    :param binding: the bound that wins, ``None`` when none is known.
    :param policy: the optimizer's policy.
    :param sizes: the batch sizes the optimizer would plan (:func:`batch_sizes`).
    :param interval_seconds: the DAG's interval, ``None`` for back to back.
    :param archiver: the archiver's pace.
    :param rows_per_second: keys per second of ``batch_sql``, ``None`` when unknown.
    """
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


def side_effects(samples: tuple[SampleRange, ...], seconds: float) -> str:
    """Return what the sample did to the database, in one sentence.

    :param samples: the sample ranges.
    :param seconds: how long the sample's transaction held its locks.
    """
    if not samples:
        return "none: nothing to sample, no statement ran"
    keys = sum(sample.keys for sample in samples)
    wal = sum(sample.wal_bytes for sample in samples)
    return (
        f"the sample locked the rows of {keys:,} keys for {_measured(seconds)} and wrote "
        f"{_bytes(wal)} of WAL, then rolled back: no row changed (sequences it advanced stay advanced)"
    )


# ------------------------------------------------------------------------------------------- render


def format_number(value: float) -> str:
    """Return ``value`` with three significant digits, or whole with thousands separators from 100.

    :param value: the number.
    """
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
        rate = f"{format_number(plan.rows_per_second)} rows/s" if plan.rows_per_second else "rate unknown"
        lines.append(
            f"  per row          : {format_number(plan.wal_bytes_per_row)} WAL bytes; "
            f"{rate} (batch_sql alone)"
        )
    lines.append(
        f"  projected WAL    : {_bytes(plan.total_wal_bytes)} = {plan.wal_segments:,} segments of "
        f"{_bytes(plan.wal_segment_size)}"
    )
    lines.append(f"  archiver         : {plan.archiver.note}")
    schedule = (
        f"back to back, about {format_number(plan.batch_gap_seconds)} s between batches"
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
