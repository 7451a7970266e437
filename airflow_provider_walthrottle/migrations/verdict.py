"""What a batch needs to know of a health check: go on or not, and how much room is left.

The gate (:mod:`airflow_provider_walthrottle.gate`) decides; the runner keeps its answer between
sub-batches as a :class:`HealthVerdict`, trusts it while the WAL written since cannot have crossed
a threshold, and paces its statements by how near the readings are to stopping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_provider_walthrottle.migrations.headroom import backlog_bound
from airflow_provider_walthrottle.wal.segments import parse_wal_file_name

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow_provider_walthrottle.gate import GateVerdict
    from airflow_provider_walthrottle.wal.health import HealthSignal


@dataclass(frozen=True)
class HealthVerdict:
    """What the caller's health check decided.

    :param proceed: whether the migration may write now.
    :param health: the WAL archival backlog's signal, or ``None`` when it was not read (flag off).
    :param stopped_by: the indicators that said stop, by name.
    :param replication_capacity_bytes: the whole replication bound (see
        :attr:`GateVerdict.replication_capacity_bytes
        <airflow_provider_walthrottle.gate.GateVerdict.replication_capacity_bytes>`), or ``None``.
    :param load: the highest reading's share of its stop threshold (see
        :attr:`GateVerdict.load <airflow_provider_walthrottle.gate.GateVerdict.load>`), or ``None``.
    :param replication_headroom_bytes: the WAL that replication slots and standbys allow before they
        stop the migration (see :attr:`GateVerdict.replication_headroom_bytes
        <airflow_provider_walthrottle.gate.GateVerdict.replication_headroom_bytes>`), or ``None``.
    :param values: the numbers each indicator read, by indicator name (each reading's ``values``:
        see :class:`~airflow_provider_walthrottle.indicators.base.Reading`); a job keeps those of
        its last check for the migrations page's chart.
    """

    proceed: bool
    health: HealthSignal | None = None
    replication_headroom_bytes: int | None = None
    load: float | None = None
    stopped_by: tuple[str, ...] = ()
    replication_capacity_bytes: int | None = None
    values: Mapping[str, Mapping[str, float | int | None]] = field(default_factory=dict)

    @classmethod
    def from_gate(cls, verdict: GateVerdict) -> HealthVerdict:
        """Return what the batch needs of a check of the health gate.

        :param verdict: from :meth:`HealthGate.check <airflow_provider_walthrottle.gate.HealthGate.check>`.
        """
        stopped_by = tuple(reading.indicator for reading in verdict.stopping)
        return cls(
            verdict.proceed,
            verdict.health,
            verdict.replication_headroom_bytes,
            verdict.load,
            stopped_by,
            verdict.replication_capacity_bytes,
            {reading.indicator: dict(reading.values) for reading in verdict.readings},
        )

    def load_now(self, wal_bytes_since: int) -> float | None:
        """The highest reading's share of its stop threshold, with the WAL written since counted in.

        The WAL backlog's share is taken at its bound
        (:func:`~airflow_provider_walthrottle.migrations.headroom.backlog_bound`, less the segment
        being written) rather than at the count, so pauses grow as the migration writes between two
        counts.

        :param wal_bytes_since: WAL bytes the migration's statements saw written since this check.
        """
        health, load = self.health, self.load
        pending = health.status.pending_segments if health is not None else None
        if health is None or pending is None or health.status.wal_segment_size <= 0:
            return load
        threshold = health.max_pending_segments
        bound = backlog_bound(pending, wal_bytes_since, health.status.wal_segment_size) - 1
        wal_load = bound / threshold if threshold > 0 else float(bound > 0)
        return max(wal_load, load or 0.0)

    def wal_ceiling(self, max_pending_segments: int | None = None) -> int | None:
        """The WAL position the server may reach before this count could pass the threshold.

        The count read the segment being written (``current_wal_file``) before it listed the
        ``.ready`` files, so a segment completed in between is counted twice, never missed. Each
        segment completed since adds one ``.ready`` file, so the backlog stays at or below
        ``max_pending_segments`` while the WAL insert position stays below
        ``(current segment + max_pending_segments - pending_segments + 1) * wal_segment_size``:
        the exact room of the count, the rest of the segment being written included. The shared
        WAL budget (:mod:`~airflow_provider_walthrottle.migrations.wal_budget`) hands out the WAL
        between the insert position and this ceiling.

        :param max_pending_segments: the threshold; the one the count was compared with if ``None``.
        :return: a byte position (as :func:`~airflow_provider_walthrottle.wal.segments.parse_lsn`
            reads one); ``None`` when the backlog or the segment being written was not read (the
            flag off, a standby, the count unknown).
        """
        health = self.health
        if health is None:
            return None
        status = health.status
        if status.pending_segments is None or status.current_wal_file is None or status.wal_segment_size <= 0:
            return None
        segment = parse_wal_file_name(status.current_wal_file).segment_number(status.wal_segment_size)
        if segment is None:
            return None
        threshold = health.max_pending_segments if max_pending_segments is None else max_pending_segments
        return (segment + threshold - status.pending_segments + 1) * status.wal_segment_size

    def recheck_due(
        self,
        wal_bytes_since: int,
        seconds_since: float,
        *,
        recheck_seconds: float,
        reserved_bytes: int = 0,
    ) -> bool:
        """Whether to check the backlog again before the next sub-batch, rather than trust this count.

        With the backlog not watched (its flag off), the check is trusted for ``recheck_seconds``,
        so that a flag turned on takes effect within that time without a read of the flags' Variables
        before every statement. Else this count is trusted only when it was a number under which the
        migration went on, it is younger than ``recheck_seconds``, and the WAL written since cannot
        have completed enough segments to pass the threshold it was compared with (see
        :func:`~airflow_provider_walthrottle.migrations.optimizer.backlog_bound`), nor more than the
        replication headroom (slots, standbys' lag). That WAL is what the server wrote during this
        migration's statements (a difference of WAL positions: other sessions' included); what
        other sessions write between two of its statements is not in it. Other batches on the
        database write only WAL they reserved in the shared budget
        (:mod:`~airflow_provider_walthrottle.migrations.wal_budget`), so their reservations
        (``reserved_bytes``) are counted in as if written; what the rest of the server writes
        between two sub-batches is bounded by the re-check every ``recheck_seconds``.

        :param wal_bytes_since: WAL bytes the migration's statements saw written since this count.
        :param seconds_since: seconds since this count.
        :param recheck_seconds: the longest a count is trusted; 0 trusts none.
        :param reserved_bytes: WAL the other batches on the database have reserved and not written.
        """
        health = self.health
        if not self.proceed or seconds_since >= recheck_seconds:
            return True
        if self.replication_headroom_bytes is not None and wal_bytes_since >= self.replication_headroom_bytes:
            return True  # the replication bound may be passed
        if health is None:  # the backlog is not watched (its flag off): read the flags again in time
            return False
        status = health.status
        if status.pending_segments is None or status.wal_segment_size <= 0:
            return True
        written = wal_bytes_since + max(reserved_bytes, 0)
        bound = backlog_bound(status.pending_segments, written, status.wal_segment_size)
        return bound > health.max_pending_segments
