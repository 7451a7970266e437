"""What a migration's batches measured: rows per second and WAL bytes per row, as moving averages.

The batch-size optimizer (:mod:`airflow_provider_walthrottle.migrations.optimizer`) sizes the next
batch from them; the runner observes each finished batch over its whole wall-clock time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DEFAULT_ALPHA", "BatchObservation", "ThroughputEstimate"]

#: Weight of the newest observation in the moving averages.
DEFAULT_ALPHA = 0.3


def _ewma(previous: float | None, sample: float, alpha: float) -> float:
    """Blend ``sample`` into ``previous``; the first sample seeds the average."""
    if previous is None:
        return float(sample)
    return alpha * sample + (1.0 - alpha) * previous


@dataclass(frozen=True)
class BatchObservation:
    """What one finished batch (or sub-batch) measured.

    :param rows: rows the batch processed.
    :param seconds: wall-clock time the batch took.
    :param wal_bytes: WAL the batch wrote, as the difference of ``pg_current_wal_insert_lsn()``
        before and after it.
    """

    rows: int
    seconds: float
    wal_bytes: int

    def __post_init__(self) -> None:
        if self.rows < 0:
            raise ValueError(f"rows must be 0 or more, got {self.rows!r} instead")
        if not math.isfinite(self.seconds):
            raise ValueError(f"seconds must be a finite number, got {self.seconds!r} instead")
        if self.wal_bytes < 0:
            raise ValueError(
                f"wal_bytes must be 0 or more, got {self.wal_bytes!r} instead;"
                " measure it as the LSN after the batch minus the LSN before it"
            )


@dataclass(frozen=True)
class ThroughputEstimate:
    """Moving averages of a migration's throughput, kept by the caller between tasks.

    Both figures are plain floats (or ``None``), so ``dataclasses.asdict(estimate)`` is JSON-ready
    and ``ThroughputEstimate(**data)`` reads it back.

    :param rows_per_second: EWMA of rows processed per second; ``None`` before any timed batch.
    :param wal_bytes_per_row: EWMA of WAL bytes written per row; ``None`` before any batch with rows.
    """

    rows_per_second: float | None = None
    wal_bytes_per_row: float | None = None

    def __post_init__(self) -> None:
        for name in ("rows_per_second", "wal_bytes_per_row"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number of 0 or more, got {value!r} instead")

    def observe(self, observation: BatchObservation, alpha: float = DEFAULT_ALPHA) -> ThroughputEstimate:
        """Return a new estimate with ``observation`` blended in.

        A batch that took no measurable time (``seconds <= 0``) leaves the rate unchanged, and a
        batch without rows leaves the WAL bytes per row unchanged.

        :param observation: what the last batch measured.
        :param alpha: weight of the new observation, in ``(0, 1]``; 1 forgets the past at once.
        :raises ValueError: if ``alpha`` is outside ``(0, 1]``.
        """
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r} instead")
        rows_per_second = self.rows_per_second
        if observation.seconds > 0:
            rows_per_second = _ewma(rows_per_second, observation.rows / observation.seconds, alpha)
        wal_bytes_per_row = self.wal_bytes_per_row
        if observation.rows > 0:
            wal_bytes_per_row = _ewma(wal_bytes_per_row, observation.wal_bytes / observation.rows, alpha)
        return ThroughputEstimate(rows_per_second=rows_per_second, wal_bytes_per_row=wal_bytes_per_row)
