"""The health gate: the one place where the provider decides whether a migration may write now.

One check reads each indicator's flag, measures the indicators that are on, decides over all
their readings (:func:`decide`), and records the metrics, in that order, for every caller: the
sensor's pokes, the operator's checks before and between sub-batches, and the trigger's polls
(:meth:`HealthGate.acheck`). ``walthrottle status`` and the migrations page read and decide through
the same :func:`decide`. The indicators are in :mod:`airflow_provider_walthrottle.indicators`; by
default a task has all four, each behind its own flag, off until rolled out
(:func:`default_indicators`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from airflow_provider_walthrottle.flags import health_check_flag
from airflow_provider_walthrottle.indicators.base import IndicatorContext, Reading
from airflow_provider_walthrottle.indicators.wal_archival import WalArchivalIndicator, WalArchivalReading
from airflow_provider_walthrottle.metrics import record_readings, record_throttle, task_stats, triggerer_stats
from airflow_provider_walthrottle.wal.health import (
    DEFAULT_MAX_PENDING_SEGMENTS,
    OnUnavailable,
    may_proceed,
)

if TYPE_CHECKING:
    import datetime

    from airflow_provider_walthrottle.indicators.base import HealthIndicator
    from airflow_provider_walthrottle.triggers.wal_archival import WalArchivalTrigger
    from airflow_provider_walthrottle.wal.health import HealthSignal

#: Reads the given indicators on one connection (sync), e.g. :meth:`WalArchivalHook.read_indicators
#: <airflow_provider_walthrottle.hooks.wal_archival.WalArchivalHook.read_indicators>`.
ReadIndicators = Callable[[Sequence["HealthIndicator"], IndicatorContext], Sequence[Reading]]
#: The same, on an asynchronous connection (the trigger).
AsyncReadIndicators = Callable[[Sequence["HealthIndicator"], IndicatorContext], Awaitable[Sequence[Reading]]]


def decide(readings: Sequence[Reading], on_unavailable: OnUnavailable) -> tuple[Reading, ...]:
    """Return the readings that stop the caller; none means it may go on.

    Each reading is judged by :func:`~airflow_provider_walthrottle.wal.health.may_proceed`: ``stop``
    stops, and "not available" and "unknown" do what ``on_unavailable`` says. Any one stopping
    reading stops the caller, as any ``Stop`` indicator pauses a GitLab migration.

    :param readings: every indicator read.
    :param on_unavailable: what "not available" and "unknown" mean.
    :raises HealthUnavailableError: on "not available" or "unknown" with ``on_unavailable="fail"``.
    """
    return tuple(reading for reading in readings if not may_proceed(reading, on_unavailable))


@dataclass(frozen=True)
class GateVerdict:
    """What one check of the gate decided.

    :param checked: whether any indicator was read; ``False`` when every flag is off for the actor.
    :param proceed: whether the caller may go on.
    :param readings: what each indicator that was on found.
    :param stopping: those of them that stop the caller.
    :param flags_off: the flag Variables of the indicators that were not read because their flag
        is off.
    """

    checked: bool
    proceed: bool
    readings: tuple[Reading, ...] = ()
    stopping: tuple[Reading, ...] = ()
    flags_off: tuple[str, ...] = ()

    @property
    def health(self) -> HealthSignal | None:
        """The WAL archival backlog's signal, when it was read."""
        for reading in self.readings:
            if isinstance(reading, WalArchivalReading):
                return reading.health
        return None

    @property
    def replication_headroom_bytes(self) -> int | None:
        """The least WAL the indicators other than the archival backlog allow (slots, standbys' lag)."""
        bounds = [
            reading.wal_headroom_bytes
            for reading in self.readings
            if reading.wal_headroom_bytes is not None and not isinstance(reading, WalArchivalReading)
        ]
        return min(bounds) if bounds else None

    @property
    def replication_capacity_bytes(self) -> int | None:
        """The whole bound of the reading that gives :attr:`replication_headroom_bytes`."""
        bound = [
            reading
            for reading in self.readings
            if reading.wal_headroom_bytes is not None and not isinstance(reading, WalArchivalReading)
        ]
        if not bound:
            return None
        return min(bound, key=lambda reading: reading.wal_headroom_bytes or 0).wal_bound_bytes

    @property
    def load(self) -> float | None:
        """The highest reading's share of its stop threshold (1 at the threshold), or ``None``."""
        loads = [reading.load for reading in self.readings if reading.load is not None]
        return max(loads) if loads else None

    def describe(self, conn_id: str, *, on_stop: str) -> str:
        """Return the check as one line for the task log.

        :param conn_id: the connection it was made on.
        :param on_stop: what the caller does when it may not go on, e.g. ``waiting, next check in 60s``.
        """
        if not self.checked:
            flags = self.flags_off
            if len(flags) == 1:
                return (
                    f"Feature flag {flags[0]} is off: WAL archival check skipped, database not contacted. "
                    f"Turn it on with `airflow variables set {flags[0]} true`."
                )
            return (
                f"Feature flags {', '.join(flags)} are off: no health check made, database not "
                "contacted. Turn one on with `airflow variables set <flag> true`."
            )
        shown = self.stopping or self.readings
        lines = "; ".join(reading.headline(conn_id) for reading in shown)
        return f"{lines}; {'proceeding' if self.proceed else on_stop}"

    def to_xcom(self, flag_variable: str) -> dict[str, Any]:
        """Return the verdict as the sensor pushes it.

        The top level is the WAL archival backlog's, as before the other indicators existed; every
        reading is under ``indicators``, by name.

        :param flag_variable: the WAL archival flag's Variable key.
        """
        health = self.health
        wal: dict[str, Any] = {"signal": None} if health is None else health.to_dict()
        return {
            "checked": self.checked,
            "proceed": self.proceed,
            "flag_variable": flag_variable,
            **wal,
            "indicators": {reading.indicator: reading.to_dict() for reading in self.readings},
            "stopped_by": [reading.indicator for reading in self.stopping],
            "flags_off": list(self.flags_off),
        }


def default_indicators(wal: WalArchivalIndicator) -> tuple[HealthIndicator, ...]:
    """Return the indicators a task evaluates unless it names its own: all four, each behind its flag.

    :param wal: the WAL archival indicator, from the task's ``max_pending_segments``,
        ``flag_variable`` and ``flag_default``.
    """
    from airflow_provider_walthrottle.indicators.autovacuum import AutovacuumIndicator
    from airflow_provider_walthrottle.indicators.replication_lag import ReplicationLagIndicator
    from airflow_provider_walthrottle.indicators.replication_slots import ReplicationSlotsIndicator

    return (wal, ReplicationLagIndicator(), ReplicationSlotsIndicator(), AutovacuumIndicator())


def task_indicators(task: Any) -> tuple[HealthIndicator, ...]:
    """Return a sensor's or an operator's indicators, from its rendered fields, checked.

    :param task: a task with ``indicators`` (``None`` for :func:`default_indicators`),
        ``max_pending_segments``, ``flag_variable`` and ``flag_default``.
    :raises ValueError: for a threshold that is not valid, or for WAL arguments given both ways.
    """
    configured = task.indicators
    if configured is None:
        indicators = default_indicators(
            WalArchivalIndicator(
                max_pending_segments=task.max_pending_segments,
                flag_variable=task.flag_variable,
                flag_default=task.flag_default,
            )
        )
    else:
        indicators = tuple(configured)
        wal_arguments = (task.max_pending_segments, task.flag_variable, task.flag_default)
        if wal_arguments != (DEFAULT_MAX_PENDING_SEGMENTS, WalArchivalIndicator.default_flag_variable, False):
            raise ValueError(
                "with indicators=[...], give the WAL threshold and flag to WalArchivalIndicator("
                "max_pending_segments=..., flag_variable=..., flag_default=...) in that list, not to the task"
            )
    names = [indicator.name for indicator in indicators]
    if len(set(names)) != len(names):
        raise ValueError(f"indicators must name each indicator once, got {names}")
    for indicator in indicators:
        indicator.validate()
    return indicators


@dataclass(frozen=True)
class HealthGate:
    """The throttle of one caller: its connection, indicators and actor.

    :param postgres_conn_id: the Airflow connection to the PostgreSQL primary.
    :param indicators: what to evaluate, each behind its own flag.
    :param on_unavailable: what a "not available" or "unknown" reading does.
    :param actor: who asks the flags, and the name the metrics are counted under.
    :param database: a database that overrides the connection's schema.
    :param table: the migrated table, for the indicators that watch one (autovacuum); without it
        they are left out.
    """

    postgres_conn_id: str
    indicators: tuple[HealthIndicator, ...]
    on_unavailable: OnUnavailable
    actor: str | None
    database: str | None = None
    table: str | None = None

    @classmethod
    def for_task(cls, task: Any, *, actor: str | None, table: str | None = None) -> HealthGate:
        """Return the gate of a sensor or an operator, from its rendered fields.

        :param task: a task with ``postgres_conn_id``, ``on_unavailable``, ``database`` and the
            fields :func:`task_indicators` reads, as
            :class:`~airflow_provider_walthrottle.sensors.wal_archival.WalArchivalSensor` and
            :class:`~airflow_provider_walthrottle.operators.batched_migration.BatchedMigrationOperator`
            have them.
        :param actor: who asks the flags.
        :param table: the migrated table, if any.
        :raises ValueError: as :func:`task_indicators`.
        """
        return cls(
            postgres_conn_id=task.postgres_conn_id,
            indicators=task_indicators(task),
            on_unavailable=task.on_unavailable,
            actor=actor,
            database=task.database,
            table=table,
        )

    @property
    def wal(self) -> WalArchivalIndicator | None:
        """The WAL archival indicator, if the gate has one."""
        return next((i for i in self.indicators if isinstance(i, WalArchivalIndicator)), None)

    @property
    def wal_flag_variable(self) -> str:
        """The WAL archival indicator's flag Variable (the default key without one), for the XCom."""
        wal = self.wal
        return wal.flag_variable if wal is not None else WalArchivalIndicator.default_flag_variable

    @property
    def max_pending_segments(self) -> int:
        """The WAL threshold the batch-size optimizer keeps under (42 without a WAL indicator)."""
        wal = self.wal
        return wal.threshold if wal is not None else DEFAULT_MAX_PENDING_SEGMENTS

    def _applicable(self) -> list[HealthIndicator]:
        return [i for i in self.indicators if not (i.needs_table and self.table is None)]

    def _split_by_flag(self) -> tuple[list[HealthIndicator], list[HealthIndicator]]:
        on: list[HealthIndicator] = []
        off: list[HealthIndicator] = []
        for indicator in self._applicable():
            flag = health_check_flag(indicator.flag_variable, default=indicator.flag_default)
            (on if flag.is_enabled(self.actor) else off).append(indicator)
        return on, off

    def _verdict(
        self,
        on: Sequence[HealthIndicator],
        off: Sequence[HealthIndicator],
        readings: Sequence[Reading],
        stats: Any,
        *,
        count_stops: bool,
    ) -> GateVerdict:
        flags_off = tuple(indicator.flag_variable for indicator in off)
        if not on:
            return GateVerdict(checked=False, proceed=True, flags_off=flags_off)
        conn_id, actor = self.postgres_conn_id, self.actor
        record_readings(stats, readings, conn_id=conn_id, actor=actor)
        stopping = decide(readings, self.on_unavailable)
        for reading in stopping if count_stops else ():
            reason = reading.signal.value
            record_throttle(stats, conn_id=conn_id, actor=actor, reason=reason, indicator=reading.indicator)
        return GateVerdict(True, not stopping, tuple(readings), stopping, flags_off)

    def context(self, next_batch_wal_bytes: int | None = None) -> IndicatorContext:
        """Return what the indicators may need to know.

        :param next_batch_wal_bytes: the next batch's projected WAL, if known.
        """
        return IndicatorContext(table=self.table, next_batch_wal_bytes=next_batch_wal_bytes)

    def check(self, read: ReadIndicators, *, next_batch_wal_bytes: int | None = None) -> GateVerdict:
        """Check once: the flags, then the indicators that are on; record them and any throttle event.

        :param read: reads indicators on a connection, e.g. :meth:`WalArchivalHook.read_indicators
            <airflow_provider_walthrottle.hooks.wal_archival.WalArchivalHook.read_indicators>`; not
            called when every flag is off.
        :param next_batch_wal_bytes: the next batch's projected WAL, if known.
        :raises HealthUnavailableError: on "not available" or "unknown" with ``on_unavailable="fail"``.
        """
        on, off = self._split_by_flag()
        readings = read(on, self.context(next_batch_wal_bytes)) if on else ()
        return self._verdict(on, off, readings, task_stats(), count_stops=True)

    async def acheck(self, read: AsyncReadIndicators) -> GateVerdict:
        """Check once from the triggerer, as :meth:`check` does, but count no throttle event.

        The flags are read in a thread.

        :param read: reads indicators on an asynchronous connection, e.g.
            :meth:`WalArchivalHook.aread_indicators
            <airflow_provider_walthrottle.hooks.wal_archival.WalArchivalHook.aread_indicators>`.
        :raises HealthUnavailableError: as :meth:`check`.
        """
        from asgiref.sync import sync_to_async

        on, off = await sync_to_async(self._split_by_flag)()
        readings = await read(on, self.context()) if on else ()
        # the task that deferred counted the stop that started this wait: a poll that is still
        # stopped is the same throttle event, not a new one; only the gauges follow the wait
        return self._verdict(on, off, readings, triggerer_stats(), count_stops=False)

    def with_wal_threshold(self, max_pending_segments: int | None) -> HealthGate:
        """Return this gate with another WAL threshold, e.g. a lower one that leaves room for a batch.

        :param max_pending_segments: the threshold; ``None`` keeps this gate's.
        """
        wal = self.wal
        if max_pending_segments is None or wal is None:
            return self
        lower = WalArchivalIndicator(
            max_pending_segments=max_pending_segments,
            flag_variable=wal.flag_variable,
            flag_default=wal.flag_default,
        )
        return replace(self, indicators=tuple(lower if i is wal else i for i in self.indicators))

    def trigger(
        self,
        *,
        poll_interval: float,
        max_pending_segments: int | None = None,
        deadline: datetime.datetime | None = None,
    ) -> WalArchivalTrigger:
        """Return the trigger that waits, in the triggerer, until this gate lets the caller go on.

        :param poll_interval: the most seconds between two checks.
        :param max_pending_segments: wait for a lower backlog than the threshold (room for a batch).
        :param deadline: when the wait ends with a ``timeout`` event.
        """
        from airflow_provider_walthrottle.triggers.wal_archival import WalArchivalTrigger

        gate = self.with_wal_threshold(max_pending_segments)
        return WalArchivalTrigger(
            postgres_conn_id=gate.postgres_conn_id,
            indicators=[[i.classpath(), i.serialize()] for i in gate.indicators],
            actor=gate.actor,
            on_unavailable=gate.on_unavailable.value,
            poll_interval=poll_interval,
            database=gate.database,
            table=gate.table,
            deadline=deadline,
        )
