"""One WAL headroom per database, shared by the batches that run on it at once.

A single batch sizes itself to the WAL headroom under the archival threshold. Batches that run at
once (several tasks of one migration with ``concurrency`` above 1, or several migrations on one
database) must not each take all of it, or together they overshoot by several batches' WAL. So
they share it through a budget kept in the state schema (``walthrottle.wal_reservations``, SQL in
:mod:`~airflow_provider_walthrottle.migrations.wal_budget_queries`):

- **The room.** A count of the backlog gives a ceiling
  (:meth:`~airflow_provider_walthrottle.migrations.verdict.HealthVerdict.wal_ceiling`): the WAL
  position the server may reach before that count could pass the threshold. The room of a batch is
  the ceiling, less the WAL insert position now, less what the other batches reserved. WAL already
  written is in the position (and, once its segment is complete, in the backlog), so a reservation
  covers only WAL not yet written, and nothing is counted twice but what is being written meanwhile.
- **Reserve.** A batch is sized to its room
  (:func:`~airflow_provider_walthrottle.migrations.optimizer.next_batch_size`), claims its job, and
  reserves the batch's projected WAL under a lock that serializes grants. As it writes, it counts
  its reservation down by the WAL its statements saw written (a difference of WAL positions, so
  other sessions' WAL during them too: it runs out early, never late). Before a statement its
  reservation does not cover, it asks again, under the last count, then under a fresh one; if the
  room is still too small, it stops, throttled, and releases what it holds. After each count it
  lowers its row to what it has left, so that the others see the room it no longer needs.
- **Release.** A row counts only while its session holds the job's advisory lock, which the job
  queue drops when the batch ends and PostgreSQL drops when the worker dies: a killed worker holds
  no budget. The next grant deletes such rows; a batch that ends normally deletes its own.

So between two grants every batch writes only WAL it reserved, and each grant leaves the others'
reservations whole: the server's WAL position stays under the newest ceiling, and the backlog at
or below the threshold, up to one statement whose WAL was larger than projected. WAL written by
the rest of the server is not reserved; the check every ``recheck_seconds`` bounds it, as before.
Batches on other databases of the same server share its archiver but not this budget: their WAL
shows in the position and the backlog only once written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row

from airflow_provider_walthrottle.migrations import wal_budget_queries
from airflow_provider_walthrottle.migrations.headroom import wal_for_rows
from airflow_provider_walthrottle.migrations.optimizer import next_batch_size

if TYPE_CHECKING:
    import datetime

    from airflow_provider_walthrottle.migrations import throughput
    from airflow_provider_walthrottle.migrations.optimizer import BatchSizeDecision, BatchSizePolicy
    from airflow_provider_walthrottle.migrations.state import Job
    from airflow_provider_walthrottle.migrations.store import MigrationStore
    from airflow_provider_walthrottle.migrations.verdict import HealthVerdict

#: The segment size assumed when no count read it (the budget is not shared then).
DEFAULT_WAL_SEGMENT_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True)
class BudgetRoom:
    """The budget as one read of it found it.

    :param ceiling: the WAL position the server may reach before the count could pass the threshold.
    :param wal_position: the WAL insert position when it was read, in bytes.
    :param reserved_elsewhere: WAL the other batches on the database reserved and not written yet.
    :param batches_elsewhere: how many other batches hold a reservation.
    :param granted: what this batch reserved in the same transaction; 0 for a read.
    """

    ceiling: int
    wal_position: int
    reserved_elsewhere: int
    batches_elsewhere: int
    granted: int = 0

    @property
    def free_bytes(self) -> int:
        """The WAL this batch may write: to the ceiling, less the others' reservations (may be negative)."""
        return self.ceiling - self.wal_position - self.reserved_elsewhere


@dataclass(frozen=True)
class BudgetShortfall:
    """The budget could not cover a batch's next statement, even under a fresh count.

    :param needed_bytes: the statement's projected WAL.
    :param free_bytes: the room left for it (0 or more).
    :param reserved_elsewhere: WAL the other batches had reserved.
    :param batches_elsewhere: how many other batches held a reservation.
    :param wal_segment_size: the server's ``wal_segment_size`` in bytes.
    """

    needed_bytes: int
    free_bytes: int
    reserved_elsewhere: int
    batches_elsewhere: int
    wal_segment_size: int

    def describe(self) -> str:
        """Return one line for the task log.

        >>> BudgetShortfall(524288, 131072, 3145728, 2, 1048576).describe()
        'the shared WAL budget has 131072 bytes free under the threshold, the next statement needs 524288 (other batches on this database reserved 3145728 bytes, 2 batches)'
        """  # noqa: E501
        return (
            f"the shared WAL budget has {self.free_bytes} bytes free under the threshold, the next "
            f"statement needs {self.needed_bytes} (other batches on this database reserved "
            f"{self.reserved_elsewhere} bytes, {self.batches_elsewhere} batches)"
        )

    def backlog_to_wait_for(self, max_pending_segments: int) -> int:
        """Return the backlog at which the statement fits beside what the others reserved.

        >>> BudgetShortfall(524288, 131072, 3145728, 2, 1048576).backlog_to_wait_for(8)
        4

        :param max_pending_segments: the threshold.
        :return: from 0 to ``max_pending_segments - 1``.
        """
        needed = math.ceil((self.needed_bytes + self.reserved_elsewhere) / max(self.wal_segment_size, 1))
        return max(max_pending_segments - max(needed, 1), 0)


@dataclass(frozen=True)
class Reservation:
    """A row of the budget: the WAL (``bytes``) job ``job_id`` of ``migration_name`` may still write.

    ``backend_pid`` is the session that holds it, since ``reserved_at`` (changed ``updated_at``);
    ``live`` says whether it counts: whether that session still holds the job's advisory lock.
    """

    job_id: int
    migration_name: str
    backend_pid: int
    bytes: int
    reserved_at: datetime.datetime
    updated_at: datetime.datetime
    live: bool


def reservations(conn: psycopg.Connection[Any]) -> list[Reservation]:
    """Return every row of the budget, oldest first, those that no longer count included.

    :param conn: a connection in autocommit mode to the migrations' database.
    """
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(wal_budget_queries.RESERVATIONS)
        return [Reservation(**row) for row in cursor.fetchall()]


class WalBudget:
    """
    The shared WAL budget of one database, as one session uses it: read, reserve, shrink, release.

    :param conn: a connection in autocommit mode, whose session holds (through the job queue) the
        advisory locks of the jobs it reserves for; a reservation for a job it does not hold counts
        for nothing.
    :param migration_name: the migration whose batches this session runs.
    """

    def __init__(self, conn: psycopg.Connection[Any], migration_name: str) -> None:
        self.conn = conn
        self.migration_name = migration_name

    def room(self, ceiling: int, *, job_id: int | None = None) -> BudgetRoom:
        """Read the room under ``ceiling``, beside every reservation but the job's, without a lock.

        :param ceiling: from the last count.
        :param job_id: the job whose own reservation is not counted, if any.
        """
        with self.conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(wal_budget_queries.ROOM, {"job_id": job_id})
            row = cursor.fetchone()
        assert row is not None
        return BudgetRoom(ceiling, **row)

    def reserve(self, job_id: int, ceiling: int, *, want: int, need: int = 0) -> BudgetRoom:
        """Set the job's reservation to up to ``want`` bytes, if ``need`` are free; else to nothing.

        One transaction under the budget's lock: it deletes the rows that no longer count, reads
        the room left beside the others, and writes the job's row.

        :param job_id: a job this session holds.
        :param ceiling: from the last count.
        :param want: what the job would like to hold: its projected WAL.
        :param need: the least that is worth holding: its next statement's projected WAL.
        :return: the room the grant saw, with what it ``granted``.
        """
        with self.conn.transaction(), self.conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(wal_budget_queries.LOCK_BUDGET)
            cursor.execute(wal_budget_queries.ROOM_AFTER_CLEANUP, {"job_id": job_id})
            row = cursor.fetchone()
            assert row is not None
            room = BudgetRoom(ceiling, **row)
            free = room.free_bytes
            granted = max(min(max(want, need), free), 0) if free >= need else 0
            cursor.execute(
                wal_budget_queries.RESERVE,
                {"job_id": job_id, "migration": self.migration_name, "bytes": granted},
            )
        return dataclasses.replace(room, granted=granted)

    def shrink(self, job_id: int, remaining: int) -> int:
        """Lower the job's reservation to ``remaining`` bytes; return what the others hold.

        No lock: lowering a reservation leaves every grant's arithmetic safe.

        :param job_id: a job this session holds.
        :param remaining: what it has left of its reservation.
        """
        with self.conn.cursor() as cursor:
            cursor.execute(wal_budget_queries.SHRINK, {"job_id": job_id, "bytes": max(remaining, 0)})
            row = cursor.fetchone()
        assert row is not None
        return int(row[0])

    def release(self, job_id: int) -> None:
        """Delete the job's reservation.

        :param job_id: a job this session held.
        """
        self.conn.execute(wal_budget_queries.RELEASE, {"job_id": job_id})


class BatchBudget:
    """
    One batch's share of the budget, from its sizing to its end.

    It is shared only when the caller asks for it and the check counted the backlog (it gives a
    ceiling); otherwise every method answers as if the budget were endless, and the batch is sized
    to the whole headroom, as before 0.2. Make one with :meth:`open`.

    :param budget: the database's budget, or ``None`` when not shared.
    :param verdict: the check the batch was sized by.
    :param max_pending_segments: the threshold.
    :param room: the room read for the sizing, or ``None`` when not shared.
    """

    def __init__(
        self,
        budget: WalBudget | None,
        verdict: HealthVerdict,
        max_pending_segments: int,
        room: BudgetRoom | None = None,
    ) -> None:
        self.budget = budget
        self.verdict = verdict
        self.max_pending_segments = max_pending_segments
        self.room = room
        health = verdict.health
        self.wal_segment_size = health.status.wal_segment_size if health else DEFAULT_WAL_SEGMENT_SIZE
        #: The ceiling of the last count.
        self.ceiling = room.ceiling if room is not None else 0
        #: What is left of this batch's reservation, as it counts it down.
        self.remaining = 0
        #: What the other batches held at the last grant or count.
        self.reserved_elsewhere = 0
        #: Why the budget stopped the batch, if it did.
        self.shortfall: BudgetShortfall | None = None
        self._job: Job | None = None
        self._projected: int | None = None  # to reserve before the first statement
        self._keys_left = 0
        self._wal_bytes_per_key: float | None = None
        self._written_bytes = self._written_keys = 0

    @classmethod
    def open(
        cls, store: MigrationStore, verdict: HealthVerdict, max_pending_segments: int, *, shared: bool = True
    ) -> BatchBudget:
        """Return the batch's share, with the room read for its sizing when shared.

        :param store: the migration's store; its connection is the session that claims the job.
        :param verdict: the check before the batch.
        :param max_pending_segments: the threshold.
        :param shared: whether to share the headroom at all (``RunSettings.share_wal_budget``).
        """
        ceiling = verdict.wal_ceiling(max_pending_segments) if shared else None
        if ceiling is None:
            return cls(None, verdict, max_pending_segments)
        budget = WalBudget(store.conn, store.definition.name)
        return cls(budget, verdict, max_pending_segments, budget.room(ceiling))

    def size(
        self, current_size: int, estimate: throughput.ThroughputEstimate, policy: BatchSizePolicy
    ) -> BatchSizeDecision:
        """Decide the batch's size under the check's readings and, when shared, its room.

        :param current_size: the migration's current batch size.
        :param estimate: its throughput so far.
        :param policy: the bounds and time target of the size.
        """
        verdict, room = self.verdict, self.room
        status = verdict.health.status if verdict.health is not None else None
        return next_batch_size(
            current_size,
            estimate,
            policy,
            pending_segments=status.pending_segments if status is not None else None,
            max_pending_segments=self.max_pending_segments,
            wal_segment_size=self.wal_segment_size,
            replication_headroom_bytes=verdict.replication_headroom_bytes,
            replication_capacity_bytes=verdict.replication_capacity_bytes,
            wal_room_bytes=room.free_bytes if room is not None else None,
            reserved_bytes=room.reserved_elsewhere if room is not None else None,
        )

    def hold(self, job: Job, decision: BatchSizeDecision) -> None:
        """Take the job the batch claimed; its first :meth:`covers` reserves the batch's projected WAL.

        :param job: the job (this session holds its advisory lock).
        :param decision: the size it was planned with; before any WAL was measured, the batch
            reserves one segment, as the smallest batch is taken to need one.
        """
        self._job, self._keys_left = job, job.planned_keys
        self._wal_bytes_per_key = decision.estimate.wal_bytes_per_row if decision.estimate else None
        rows = min(decision.size, job.planned_keys)
        self._projected = wal_for_rows(rows, self._wal_bytes_per_key) or self.wal_segment_size

    def covers(self, keys: int) -> bool:
        """Whether the reservation covers a statement of ``keys`` keys, asking for more under the last count.

        The first call reserves the batch's projected WAL; a later one that finds too little left
        asks for the rest of the job's.

        :param keys: the next statement's keys.
        """
        if self.budget is None or self._job is None:
            return True
        need = self._need(keys)
        if self._projected is not None:
            want, self._projected = self._projected, None
            return self._grant(want, need)
        if need <= self.remaining:
            return True
        return self._grant(self._need(self._keys_left), need)

    def wrote(self, wal_bytes: int, keys: int) -> None:
        """Count a statement's WAL off the reservation.

        :param wal_bytes: the WAL written during it (other sessions' included).
        :param keys: the keys it walked.
        """
        self._written_bytes += wal_bytes
        self._written_keys += keys
        self.remaining = max(self.remaining - wal_bytes, 0)
        self._keys_left = max(self._keys_left - keys, 0)
        if self._written_keys:
            self._wal_bytes_per_key = self._written_bytes / self._written_keys

    def counted(self, verdict: HealthVerdict) -> None:
        """Take a fresh count: its ceiling for the next grants, and the row lowered to what is left.

        :param verdict: the fresh check; when it says stop, the batch stops and nothing is asked.
        """
        if self.budget is None or self._job is None or not verdict.proceed:
            return
        self.ceiling = verdict.wal_ceiling(self.max_pending_segments) or self.ceiling
        self.reserved_elsewhere = self.budget.shrink(self._job.id, self.remaining)

    def release(self) -> None:
        """Delete the batch's reservation; a row left behind (the connection lost) counts no more anyway."""
        if self.budget is None or self._job is None or self.budget.conn.closed or self.budget.conn.broken:
            return
        with contextlib.suppress(psycopg.Error):  # its job's lock is released: the row counts no more
            self.budget.release(self._job.id)

    def _need(self, keys: int) -> int:
        """Return the projected WAL of ``keys`` keys, capped at the whole threshold; 1 byte while unknown.

        A statement larger than the whole threshold runs when all of it is free, as the smallest
        batch does (:attr:`~.optimizer.BatchSizeDecision.beyond_bound`).
        """
        projected = wal_for_rows(keys, self._wal_bytes_per_key) or min(keys, 1)
        return min(projected, self.max_pending_segments * self.wal_segment_size)

    def _grant(self, want: int, need: int) -> bool:
        """Ask for ``want`` bytes, of which ``need`` at least; keep what was granted."""
        assert self.budget is not None and self._job is not None
        room = self.budget.reserve(self._job.id, self.ceiling, want=want, need=need)
        self.remaining, self.reserved_elsewhere = room.granted, room.reserved_elsewhere
        if room.granted >= need:
            self.shortfall = None
            return True
        free = max(room.free_bytes, 0)
        elsewhere = (room.reserved_elsewhere, room.batches_elsewhere)
        self.shortfall = BudgetShortfall(need, free, *elsewhere, self.wal_segment_size)
        return False
