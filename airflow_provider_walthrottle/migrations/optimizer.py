"""Choose the size of the next batch of a migration: a time target, bounded by WAL headroom.

Plain Python with no Airflow or database imports, so that the sizing rule can be read, tested and
benchmarked on its own. The rule works like pt-online-schema-change's ``--chunk-time``, with one more
bound:

1. **Time target.** Aim at :attr:`BatchSizePolicy.target_batch_seconds` per batch, using an
   exponentially weighted moving average (EWMA) of the rows per second of past batches.
2. **WAL headroom.** Never plan a batch whose projected WAL would push the archival backlog past the
   threshold: with ``pending_segments`` waiting for ``archive_command`` and a threshold of
   ``max_pending_segments``, a batch may write at most
   ``(max_pending_segments - pending_segments) * wal_segment_size`` bytes, which is that many bytes
   divided by the (EWMA of the) WAL bytes per row. The same holds under the replication headroom
   (``replication_headroom_bytes``: the WAL that replication slots may still retain, and standbys
   may still fall behind by, before they stop migrations). When batches run at once on the database,
   they share that headroom: a batch is sized to the WAL room left under the threshold after the
   other batches' reservations (``wal_room_bytes``; see
   :mod:`~airflow_provider_walthrottle.migrations.wal_budget`). With that budget, and an archiver
   that keeps up (at most :data:`ARCHIVER_KEEPING_UP_SEGMENTS` pending at the count), the headroom
   does not bound the batch's size: the archiver drains the batch as it is written, and the budget,
   asked again under fresh counts, bounds what the batch writes ahead of it. Otherwise a fast
   archiver would cut every batch to the threshold's WAL (672 MiB at 42 segments of 16 MiB, a few
   seconds of writing) and the gaps between batches would weigh on the whole migration.
3. **Smoothing.** Grow by at most :attr:`BatchSizePolicy.max_growth` times the current size per
   step; shrink at once.
4. **Clamp** to ``[min_batch_size, max_batch_size]``. The WAL bound alone may go below
   ``min_batch_size``: then the decision says :attr:`BatchSizeDecision.must_wait`, because running
   even the smallest batch would overshoot the threshold.

>>> estimate = ThroughputEstimate().observe(BatchObservation(rows=1000, seconds=10.0, wal_bytes=52_000))
>>> decision = next_batch_size(
...     1000, estimate, BatchSizePolicy(), pending_segments=None, max_pending_segments=42,
...     wal_segment_size=16 * 1024 * 1024,
... )
>>> decision.size, decision.limited_by
(2000, 'growth')
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from airflow_provider_walthrottle.migrations.headroom import (
    backlog_bound,
    backlog_for_min_batch,
    check_wal_counts,
    segments_for_rows,
    wal_row_bound,
)
from airflow_provider_walthrottle.migrations.throughput import (
    DEFAULT_ALPHA,
    BatchObservation,
    ThroughputEstimate,
)

__all__ = [
    "ARCHIVER_KEEPING_UP_SEGMENTS",
    "BATCH_GROWTH",
    "DEFAULT_ALPHA",
    "LARGEST_BATCH",
    "LIMITS",
    "BatchObservation",
    "BatchSizeDecision",
    "BatchSizePolicy",
    "ThroughputEstimate",
    "backlog_bound",
    "backlog_for_min_batch",
    "next_batch_size",
    "segments_for_rows",
    "wal_row_bound",
]

#: The largest batch the state tables hold (a PostgreSQL ``integer`` of keys).
LARGEST_BATCH = 2**31 - 1

#: How much a batch may grow over the last one, by default: sixteen times, so that a migration
#: reaches its time target within a few batches (from 1,000 keys to four million in three), each of
#: which pays the scheduler's gap between two runs. A batch's size no longer sets how long rows stay
#: locked (its statements are sized by time) nor how far the backlog can grow (the shared WAL budget
#: and the checks between statements bound that), only how long its task holds a worker slot; and
#: the time target still caps it at the measured rate times ``target_batch_seconds``.
BATCH_GROWTH = 16.0

#: A count of at most this many segments pending says the archiver keeps up with the WAL written
#: (the one segment it may be archiving): then, with the headroom shared through the budget, the
#: WAL headroom does not bound the batch's size, only what it writes ahead of the archiver.
ARCHIVER_KEEPING_UP_SEGMENTS = 1

#: The values of :attr:`BatchSizeDecision.limited_by`; a decision refuses any other.
LIMITS = ("time", "wal", "replication", "growth", "min", "max", "initial")


def _number(value: float) -> str:
    """Format a rate for a log line: whole numbers from 10 up, two significant decimals below."""
    if abs(value) >= 10:
        return f"{value:.0f}"
    return f"{value:.2f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class BatchSizePolicy:
    """How far the batch size may move.

    :param min_batch_size: fewest rows in a batch; below this, the migration waits instead.
    :param max_batch_size: most rows in a batch; ``None`` for no cap but :data:`LARGEST_BATCH` (the
        state tables' ``integer``), so that the time target and the WAL headroom size a batch.
    :param target_batch_seconds: how long a batch should take, all of it: statements, pauses and
        checks (the rate it is sized with is measured over the batch's wall-clock time).
    :param max_growth: largest factor by which the size may grow from one batch to the next.
    :raises ValueError: if a bound is impossible.
    """

    min_batch_size: int = 100
    max_batch_size: int | None = 100_000
    target_batch_seconds: float = 30.0
    max_growth: float = 2.0

    def __post_init__(self) -> None:
        if self.min_batch_size < 1:
            raise ValueError(f"min_batch_size must be 1 or more, got {self.min_batch_size!r} instead")
        if self.max_batch_size is not None and self.max_batch_size < self.min_batch_size:
            raise ValueError(
                f"max_batch_size must be at least min_batch_size ({self.min_batch_size!r}),"
                f" got {self.max_batch_size!r} instead"
            )
        if not (math.isfinite(self.target_batch_seconds) and self.target_batch_seconds > 0):
            raise ValueError(
                f"target_batch_seconds must be a positive number, got {self.target_batch_seconds!r} instead"
            )
        if not (math.isfinite(self.max_growth) and self.max_growth >= 1):
            raise ValueError(f"max_growth must be 1 or more (1 never grows), got {self.max_growth!r} instead")

    def clamp(self, size: int) -> int:
        """Return ``size`` within ``[min_batch_size, max_batch_size]``.

        :param size: a number of rows.
        """
        return max(self.min_batch_size, min(self.largest, size))

    @property
    def largest(self) -> int:
        """``max_batch_size``, or :data:`LARGEST_BATCH` without one."""
        return LARGEST_BATCH if self.max_batch_size is None else self.max_batch_size


@dataclass(frozen=True)
class BatchSizeDecision:
    """The size of the next batch and why.

    :param size: rows to plan now. When :attr:`must_wait` is true, this is what the WAL headroom
        allows (below ``min_batch_size``, possibly 0) and the caller should wait, not run.
    :param by_time: what the time target alone asked for; ``None`` before any rate is known.
    :param by_wal: what the WAL headroom allowed; ``None`` when the WAL does not bound the batch.
    :param limited_by: ``"time"``, ``"wal"``, ``"growth"``, ``"min"``, ``"max"`` or ``"initial"``
        (:data:`LIMITS`).
    :param must_wait: true when the WAL headroom allows fewer than ``min_batch_size`` rows.
    :param current_size: the size the decision started from.
    :param headroom_segments: ``max_pending_segments - pending_segments``; ``None`` if unknown.
    :param estimate: the throughput estimate the decision used.
    :param policy: the policy the decision used.
    :param replication_headroom_bytes: the WAL replication slots and standbys allowed; ``None`` if they
        set no bound.
    :param beyond_bound: whether the WAL or replication bound could not take ``min_batch_size`` even
        wholly free, so the smallest batch runs to measure again instead of waiting for ever.
    :param reserved_bytes: WAL that other batches on the database had reserved and not written yet,
        which the WAL bound left to them; ``None`` when the headroom was not shared.
    """

    size: int
    by_time: int | None
    by_wal: int | None
    limited_by: str
    must_wait: bool
    current_size: int | None = None
    headroom_segments: int | None = None
    estimate: ThroughputEstimate | None = None
    policy: BatchSizePolicy | None = None
    replication_headroom_bytes: int | None = None
    beyond_bound: bool = False
    reserved_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.limited_by not in LIMITS:
            raise ValueError(
                f"limited_by must be one of {', '.join(LIMITS)}, got {self.limited_by!r} instead"
            )

    def describe(self) -> str:
        """Return one line for a task log: the size, what limited it, and the numbers behind it.

        >>> BatchSizeDecision(
        ...     size=4000, by_time=9000, by_wal=4000, limited_by="wal", must_wait=False,
        ...     headroom_segments=12, estimate=ThroughputEstimate(300.0, 52.0),
        ... ).describe()
        'next batch 4000 rows (limited by wal: 12 segments of headroom allow 4000 rows at 52 WAL bytes/row; time target asks 9000)'
        """  # noqa: E501
        head = (
            f"wait: WAL headroom allows only {self.size} rows"
            if self.must_wait
            else f"next batch {self.size} rows"
        )
        notes = [f"limited by {self.limited_by}: {self._reason()}"]
        if self.beyond_bound:
            notes.append(
                "the smallest batch's projected WAL exceeds the whole bound: it runs to measure again"
            )
        if self.by_time is not None and self.limited_by != "time":
            notes.append(f"time target asks {self.by_time}")
        if self.by_wal is not None and self.limited_by != "wal":
            notes.append(f"WAL headroom allows {self.by_wal}")
        return f"{head} ({'; '.join(notes)})"

    def _reason(self) -> str:
        """Return the numbers behind :attr:`limited_by`."""
        policy = self.policy
        estimate = self.estimate
        if self.limited_by == "wal":
            per_row = estimate.wal_bytes_per_row if estimate is not None else None
            if self.headroom_segments is not None and self.headroom_segments <= 0:
                return (
                    f"{self.headroom_segments} segments of headroom, the backlog is at or past the threshold"
                )
            reason = f"{self.headroom_segments} segments of headroom allow {self.by_wal} rows"
            if self.reserved_bytes:
                reason = (
                    f"{self.headroom_segments} segments of headroom, less {self.reserved_bytes} WAL bytes"
                    f" other batches reserved, allow {self.by_wal} rows"
                )
            if per_row is not None:
                reason += f" at {_number(per_row)} WAL bytes/row"
            if self.must_wait and policy is not None:
                reason += f", below min_batch_size {policy.min_batch_size}"
            return reason
        if self.limited_by == "replication":
            per_row = estimate.wal_bytes_per_row if estimate is not None else None
            reason = f"replication allows {self.replication_headroom_bytes} more WAL bytes"
            if per_row is not None:
                reason += f", {self.size} rows at {_number(per_row)} WAL bytes/row"
            return reason
        if self.limited_by == "time":
            if policy is None or estimate is None or estimate.rows_per_second is None:
                return f"time target asks {self.by_time}"
            return (
                f"{_number(policy.target_batch_seconds)}s target"
                f" at {_number(estimate.rows_per_second)} rows/s"
            )
        if self.limited_by == "growth":
            growth = f"{_number(policy.max_growth)}x" if policy is not None else "the allowed growth"
            return f"at most {growth} the last {self.current_size}"
        if self.limited_by == "min":
            return f"min_batch_size {policy.min_batch_size}" if policy is not None else "min_batch_size"
        if self.limited_by == "max":
            return f"max_batch_size {policy.largest}" if policy is not None else "max_batch_size"
        return f"no throughput estimate yet, starting from {self.current_size}"


def _room_never_comes(
    limited_by: str,
    min_batch_size: int,
    wal_bytes_per_row: float | None,
    *,
    whole_wal_bytes: int | None,
    whole_replication_bytes: int | None,
) -> bool:
    """Whether the bound that limits a batch could not take ``min_batch_size`` even wholly free.

    ``None`` for a bound means: not wholly free yet, or unknown; a wait may still bring room.
    """
    whole = {"wal": whole_wal_bytes, "replication": whole_replication_bytes}.get(limited_by)
    if whole is None or wal_bytes_per_row is None or wal_bytes_per_row <= 0:
        return False
    return min_batch_size * wal_bytes_per_row > whole


def next_batch_size(
    current_size: int,
    estimate: ThroughputEstimate,
    policy: BatchSizePolicy,
    *,
    pending_segments: int | None,
    max_pending_segments: int,
    wal_segment_size: int,
    replication_headroom_bytes: int | None = None,
    replication_capacity_bytes: int | None = None,
    wal_room_bytes: int | None = None,
    reserved_bytes: int | None = None,
) -> BatchSizeDecision:
    """Decide how many rows the next batch should process.

    With no rate yet, the decision is ``current_size`` clamped to the policy (``"initial"``),
    still bounded by the WAL headroom.

    A bound that cannot take ``min_batch_size`` even wholly free (the archival threshold once
    nothing is pending, or the replication bound's capacity) does not make the caller wait,
    which would be for ever: the estimate of WAL bytes per row comes from the server's whole WAL
    during a batch, and another session's burst can inflate it, which only a batch that runs can
    correct. Then the decision is ``min_batch_size`` (:attr:`BatchSizeDecision.beyond_bound`).

    :param current_size: rows of the batch that ran last; at the start, the configured batch size.
    :param estimate: the throughput measured so far.
    :param policy: the bounds on the size.
    :param pending_segments: WAL segments waiting for ``archive_command`` now; ``None`` when the
        backlog is unknown, not applicable or not watched, which removes the WAL bound.
    :param max_pending_segments: the backlog threshold the migration must stay at or below.
    :param replication_headroom_bytes: the WAL that replication allows before it would stop the
        migration (a slot's retention threshold or ``safe_wal_size``, a standby's lag in bytes);
        ``None`` for no bound. A batch is sized under it as under the archival headroom.
    :param replication_capacity_bytes: that bound when nothing is retained or behind (the
        indicator's own threshold); ``None`` if unknown.
    :param wal_segment_size: the server's ``wal_segment_size`` in bytes.
    :param wal_room_bytes: the WAL this batch may write under the threshold when the headroom is
        shared (:attr:`BudgetRoom.free_bytes
        <airflow_provider_walthrottle.migrations.wal_budget.BudgetRoom.free_bytes>`: the room of the
        count, less what was written since and what other batches reserved); it bounds the batch
        besides ``(max_pending_segments - pending_segments) * wal_segment_size``. ``None`` when the
        headroom is not shared.
    :param reserved_bytes: what the other batches reserved, for the decision's description.
    :raises ValueError: if ``current_size`` is negative, or if the backlog is given with a negative
        count, threshold or segment size.
    """
    if current_size < 0:
        raise ValueError(f"current_size must be 0 or more, got {current_size!r} instead")
    start = policy.clamp(current_size)

    by_time: int | None = None
    if estimate.rows_per_second is None:
        size, limited_by = start, "initial"
    else:
        by_time = math.floor(estimate.rows_per_second * policy.target_batch_seconds)
        size, limited_by = by_time, "time"
        most = math.floor(start * policy.max_growth)
        if size > most:
            size, limited_by = most, "growth"
        if size > policy.largest:
            size, limited_by = policy.largest, "max"
        elif size < policy.min_batch_size:
            size, limited_by = policy.min_batch_size, "min"

    headroom_segments: int | None = None
    by_wal: int | None = None
    if pending_segments is not None:
        check_wal_counts(
            wal_segment_size, pending_segments=pending_segments, max_pending_segments=max_pending_segments
        )
        headroom_segments = max_pending_segments - pending_segments
        headroom_bytes = headroom_segments * wal_segment_size
        if wal_room_bytes is not None:  # shared: what the other batches reserved is not this batch's
            headroom_bytes = min(headroom_bytes, wal_room_bytes)
        by_wal = wal_row_bound(1, headroom_bytes, estimate.wal_bytes_per_row)
        # an archiver that keeps up drains a batch as it is written: the shared budget, asked again
        # under fresh counts as the batch writes, bounds what it writes ahead of the archiver
        keeping_up = wal_room_bytes is not None and pending_segments <= ARCHIVER_KEEPING_UP_SEGMENTS
        if by_wal is not None and by_wal < size and not keeping_up:
            size, limited_by = by_wal, "wal"
    if replication_headroom_bytes is not None:
        by_replication = wal_row_bound(1, max(replication_headroom_bytes, 0), estimate.wal_bytes_per_row)
        if by_replication is not None and by_replication < size:
            size, limited_by = by_replication, "replication"

    beyond_bound = False
    if size < policy.min_batch_size and _room_never_comes(
        limited_by,
        policy.min_batch_size,
        estimate.wal_bytes_per_row,
        # the archival bound is whole once nothing is pending, which a wait for the archiver brings
        whole_wal_bytes=max_pending_segments * wal_segment_size if pending_segments == 0 else None,
        whole_replication_bytes=replication_capacity_bytes,
    ):
        # waiting would not help: only a batch that runs can correct the estimate, and the gate
        # still stops it between sub-batches if the bound is really passed
        size, limited_by, beyond_bound = policy.min_batch_size, "min", True

    return BatchSizeDecision(
        size=size,
        by_time=by_time,
        by_wal=by_wal,
        limited_by=limited_by,
        must_wait=size < policy.min_batch_size,
        beyond_bound=beyond_bound,
        current_size=current_size,
        headroom_segments=headroom_segments,
        estimate=estimate,
        policy=policy,
        replication_headroom_bytes=replication_headroom_bytes,
        reserved_bytes=reserved_bytes if wal_room_bytes is not None else None,
    )
