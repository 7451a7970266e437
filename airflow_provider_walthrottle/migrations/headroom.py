"""The WAL headroom in numbers: how many rows fit it, and how far the backlog can have grown.

With ``pending_segments`` waiting for ``archive_command`` and a threshold of
``max_pending_segments``, the migration may write at most
``(max_pending_segments - pending_segments) * wal_segment_size`` bytes before the backlog could
pass the threshold. The functions here turn that into rows (at a measured WAL bytes per row) and
back, and bound the backlog a count taken earlier can have grown to. The divisions are exact
(:class:`~fractions.Fraction`): a bound is never passed by a rounding error.
"""

from __future__ import annotations

import math
from fractions import Fraction


def wal_row_bound(
    headroom_segments: int, wal_segment_size: int, wal_bytes_per_row: float | None
) -> int | None:
    """Return the most rows whose projected WAL fits the headroom, or ``None`` if unbounded.

    The division is exact (through :class:`~fractions.Fraction`), so ``rows * wal_bytes_per_row``
    never exceeds ``headroom_segments * wal_segment_size`` by a rounding error.

    >>> wal_row_bound(12, 16 * 1024 * 1024, 1000.0)
    201326

    :param headroom_segments: segments that may still pile up before the threshold.
    :param wal_segment_size: the server's ``wal_segment_size`` in bytes.
    :param wal_bytes_per_row: WAL bytes per row; ``None`` (not measured yet) or 0 means no bound,
        unless the headroom is already gone.
    """
    headroom_bytes = headroom_segments * wal_segment_size
    if headroom_bytes <= 0:
        return 0
    if wal_bytes_per_row is None or wal_bytes_per_row <= 0:
        return None
    return math.floor(Fraction(headroom_bytes) / Fraction(wal_bytes_per_row))


def segments_for_rows(rows: int, wal_segment_size: int, wal_bytes_per_row: float | None) -> int | None:
    """Return the WAL segments ``rows`` rows are expected to fill, rounded up; ``None`` if unknown.

    The inverse of :func:`wal_row_bound`: a batch of ``rows`` fits a headroom of this many segments.

    >>> segments_for_rows(201326, 16 * 1024 * 1024, 1000.0)
    12

    :param rows: the rows of a batch.
    :param wal_segment_size: the server's ``wal_segment_size`` in bytes.
    :param wal_bytes_per_row: WAL bytes per row; ``None`` (not measured yet) or 0 gives ``None``.
    """
    if wal_bytes_per_row is None or wal_bytes_per_row <= 0 or wal_segment_size <= 0:
        return None
    return math.ceil(Fraction(rows) * Fraction(wal_bytes_per_row) / wal_segment_size)


def wal_for_rows(rows: int, wal_bytes_per_row: float | None) -> int | None:
    """Return the WAL bytes ``rows`` rows are expected to write, rounded up; ``None`` if unknown.

    >>> wal_for_rows(1000, 52.5)
    52500

    :param rows: the rows of a batch or a statement.
    :param wal_bytes_per_row: WAL bytes per row; ``None`` (not measured yet) or 0 gives ``None``.
    """
    if wal_bytes_per_row is None or wal_bytes_per_row <= 0:
        return None
    return math.ceil(Fraction(max(rows, 0)) * Fraction(wal_bytes_per_row))


def backlog_for_min_batch(
    min_batch_size: int,
    wal_bytes_per_row: float | None,
    *,
    max_pending_segments: int,
    wal_segment_size: int,
    reserved_bytes: int = 0,
) -> int:
    """Return the backlog at or below which the smallest batch fits under the threshold.

    A migration whose WAL headroom is too small for ``min_batch_size`` waits for this backlog
    rather than for the threshold itself. Before any batch measured its WAL, the smallest batch is
    taken to need one whole segment of room. The WAL other batches reserved on the database (see
    :mod:`~airflow_provider_walthrottle.migrations.wal_budget`) needs room beside it.

    >>> backlog_for_min_batch(1024, 81920.0, max_pending_segments=42, wal_segment_size=16 * 1024 * 1024)
    37
    >>> backlog_for_min_batch(
    ...     1024, 81920.0, max_pending_segments=42, wal_segment_size=16 * 1024 * 1024,
    ...     reserved_bytes=20 * 1024 * 1024,
    ... )
    35

    :param min_batch_size: the smallest batch the optimizer plans (``BatchSizePolicy.min_batch_size``).
    :param wal_bytes_per_row: WAL bytes per row so far; ``None`` before any was measured.
    :param max_pending_segments: the threshold.
    :param wal_segment_size: the server's ``wal_segment_size`` in bytes.
    :param reserved_bytes: WAL other batches on the database have reserved and not written yet.
    :return: a backlog from 0 to ``max_pending_segments - 1``; 0 when the smallest batch needs more
        room than the threshold gives.
    """
    if wal_segment_size <= 0:
        return max(max_pending_segments - 1, 0)
    batch_bytes = wal_for_rows(min_batch_size, wal_bytes_per_row) or wal_segment_size
    needed = math.ceil(Fraction(batch_bytes + max(reserved_bytes, 0), wal_segment_size))
    return max(max_pending_segments - max(needed, 1), 0)


def backlog_bound(pending_segments: int, wal_bytes_since: int, wal_segment_size: int) -> int:
    """Return the most WAL segments that can be pending now, given an earlier count and the WAL since.

    Only a completed segment adds a ``.ready`` file, and only the archiver removes one. WAL of
    ``wal_bytes_since`` bytes, measured as a difference of WAL positions, completes at most the
    segment that was being written at the count and then one segment per ``wal_segment_size``
    bytes. So while this bound is at or below the threshold, a new count could not stop the
    migration, and the runner may skip it.

    >>> backlog_bound(10, 0, 16 * 1024 * 1024)
    11
    >>> backlog_bound(10, 40 * 1024 * 1024, 16 * 1024 * 1024)
    13

    :param pending_segments: the pending segments counted earlier.
    :param wal_bytes_since: WAL written since that count, as far as the caller measured it.
    :param wal_segment_size: the server's ``wal_segment_size`` in bytes.
    :raises ValueError: if a count, the bytes or the segment size is impossible.
    """
    check_wal_counts(wal_segment_size, pending_segments=pending_segments, wal_bytes_since=wal_bytes_since)
    return pending_segments + wal_bytes_since // wal_segment_size + 1


def check_wal_counts(wal_segment_size: int, **counts: int) -> None:
    """Refuse negative counts and a segment size that is not positive, naming them.

    :param wal_segment_size: the server's ``wal_segment_size`` in bytes.
    :param counts: counts of segments or bytes, by the name the message gives them.
    :raises ValueError: naming the counts, or the segment size.
    """
    if any(value < 0 for value in counts.values()):
        raise ValueError(
            f"{' and '.join(counts)} must be 0 or more,"
            f" got {' and '.join(repr(value) for value in counts.values())} instead"
        )
    if wal_segment_size <= 0:
        raise ValueError(f"wal_segment_size must be positive, got {wal_segment_size!r} instead")
