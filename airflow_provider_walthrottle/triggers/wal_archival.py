"""The trigger that waits, in the triggerer, until the health gate lets a migration go on."""

from __future__ import annotations

import asyncio
import datetime
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_walthrottle.exceptions import WalThrottleError
from airflow_provider_walthrottle.gate import HealthGate
from airflow_provider_walthrottle.indicators.base import indicator_from_serialized
from airflow_provider_walthrottle.indicators.wal_archival import WalArchivalIndicator, WalArchivalReading
from airflow_provider_walthrottle.wal.health import (
    DEFAULT_MAX_PENDING_SEGMENTS,
    HealthUnavailableError,
    OnUnavailable,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from airflow_provider_walthrottle.indicators.base import Reading


class WalArchivalTrigger(BaseTrigger):
    """
    Poll the health gate with an async connection until migrations may go on.

    Each poll is one :meth:`HealthGate.acheck <airflow_provider_walthrottle.gate.HealthGate.acheck>`
    over the same indicators as the task that deferred: the WAL archival backlog and whichever
    other indicators it has, each behind its own flag. It fires one event:
    ``{"status": "success", "checked": bool, "verdict": dict}`` once no indicator stops (or every
    flag is off, or ``on_unavailable`` lets a reading pass), where ``verdict`` is
    :meth:`GateVerdict.to_xcom <airflow_provider_walthrottle.gate.GateVerdict.to_xcom>`;
    ``{"status": "timeout", "message": str}`` when ``deadline`` passes first; or
    ``{"status": "error", "message": str}`` when the check cannot be made.

    :param postgres_conn_id: the Airflow connection to the PostgreSQL server.
    :param indicators: the indicators, as ``[classpath, kwargs]`` pairs
        (:meth:`~airflow_provider_walthrottle.indicators.base.HealthIndicator.serialize`); their
        flags are re-read on every poll, so turning a flag off releases the wait.
    :param actor: who asks, for a percentage rollout of the flags (a DAG id or migration name).
    :param on_unavailable: what a "not available" or "unknown" reading does.
    :param poll_interval: the most seconds between two checks. While the backlog drains, the next
        check comes when the drain rate seen so far says the backlog will be at the threshold, but
        never sooner than ``min_poll_interval``: a migration goes on about when the backlog
        allows, not up to a whole ``poll_interval`` later (see :func:`next_check_in`).
    :param database: a database name that overrides the connection's schema.
    :param table: the migrated table, for the indicators that watch one.
    :param min_poll_interval: the fewest seconds between two checks.
    :param deadline: when the wait ends with a ``timeout`` event if the indicators have not
        cleared. The trigger keeps it itself, so a wait ends on time even where the deferral's own
        timeout is not enforced (``dag.test()`` and ``airflow dags test`` run triggers inline and
        ignore it).
    :param max_pending_segments: before 0.2 (triggers deferred by an older release): the WAL
        threshold, with ``flag_variable`` and ``flag_default``; used when ``indicators`` is ``None``.
    :param flag_variable: see ``max_pending_segments``.
    :param flag_default: see ``max_pending_segments``.
    """

    def __init__(
        self,
        *,
        postgres_conn_id: str,
        actor: str | None,
        on_unavailable: str,
        poll_interval: float,
        indicators: list[list[Any]] | None = None,
        database: str | None = None,
        table: str | None = None,
        min_poll_interval: float = 1.0,
        deadline: datetime.datetime | None = None,
        max_pending_segments: int | None = None,
        flag_variable: str | None = None,
        flag_default: bool = False,
    ) -> None:
        super().__init__()
        if deadline is not None and deadline.tzinfo is None:
            raise ValueError(f"deadline must be timezone-aware, got {deadline!r}")
        if indicators is None:  # serialized by an older release: the WAL archival backlog alone
            wal = WalArchivalIndicator(
                max_pending_segments=DEFAULT_MAX_PENDING_SEGMENTS
                if max_pending_segments is None
                else max_pending_segments,
                flag_variable=flag_variable,
                flag_default=flag_default,
            )
            indicators = [[wal.classpath(), wal.serialize()]]
        self.indicators = indicators
        self.deadline = deadline
        self.min_poll_interval = min_poll_interval
        self.postgres_conn_id = postgres_conn_id
        self.actor = actor
        self.on_unavailable = on_unavailable
        self.poll_interval = poll_interval
        self.database = database
        self.table = table

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the classpath and the arguments that recreate this trigger."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "postgres_conn_id": self.postgres_conn_id,
                "indicators": self.indicators,
                "actor": self.actor,
                "on_unavailable": self.on_unavailable,
                "poll_interval": self.poll_interval,
                "database": self.database,
                "table": self.table,
                "min_poll_interval": self.min_poll_interval,
                "deadline": self.deadline,
            },
        )

    def gate(self) -> HealthGate:
        """Return the gate this trigger polls."""
        return HealthGate(
            postgres_conn_id=self.postgres_conn_id,
            indicators=tuple(indicator_from_serialized(path, kwargs) for path, kwargs in self.indicators),
            on_unavailable=OnUnavailable.parse(self.on_unavailable),
            actor=self.actor,
            database=self.database,
            table=self.table,
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Check, then sleep, until one event can be fired."""
        from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook

        hook = WalArchivalHook(postgres_conn_id=self.postgres_conn_id, database=self.database)
        loop = asyncio.get_running_loop()
        previous: tuple[float, int] | None = None  # (when, pending) of the last check
        while True:
            try:
                gate = self.gate()
                verdict = await gate.acheck(hook.aread_indicators)
            except (WalThrottleError, HealthUnavailableError, ValueError) as error:
                yield TriggerEvent({"status": "error", "message": str(error)})
                return
            wal = gate.wal
            if verdict.proceed:
                if not verdict.checked:
                    self.log.info("Feature flags %s are off: the wait ends", ", ".join(verdict.flags_off))
                xcom = verdict.to_xcom(gate.wal_flag_variable)
                yield TriggerEvent({"status": "success", "checked": verdict.checked, "verdict": xcom})
                return
            now = loop.time()
            health = verdict.health
            pending = health.status.pending_segments if health is not None else None
            delay = self.poll_interval
            if wal is not None and health is not None and _only_the_backlog_stops(verdict.stopping):
                drain_rate = None
                if previous is not None and pending is not None and now > previous[0]:
                    drain_rate = (previous[1] - pending) / (now - previous[0])
                delay = next_check_in(
                    pending=pending,
                    target=wal.threshold,
                    drain_rate=drain_rate,
                    poll_interval=self.poll_interval,
                    min_interval=self.min_poll_interval,
                )
            previous = (now, pending) if pending is not None else None
            waiting = verdict.describe(self.postgres_conn_id, on_stop="waiting")
            remaining = self._seconds_to_deadline()
            if remaining is not None and remaining <= 0:
                message = (
                    f"Health on {self.postgres_conn_id} did not clear by the deadline "
                    f"{self.deadline:%Y-%m-%d %H:%M:%S %Z}: {waiting}"
                )
                self.log.info("%s; the wait ends", message)
                yield TriggerEvent({"status": "timeout", "message": message})
                return
            if remaining is not None:
                delay = min(delay, remaining)
            self.log.info("%s, next check in %.3gs", waiting, delay)
            await asyncio.sleep(delay)

    def _seconds_to_deadline(self) -> float | None:
        if self.deadline is None:
            return None
        return (self.deadline - datetime.datetime.now(datetime.timezone.utc)).total_seconds()


def _only_the_backlog_stops(stopping: tuple[Reading, ...]) -> bool:
    """Whether the WAL archival backlog is the one reading that stops (its drain can be timed)."""
    return len(stopping) == 1 and isinstance(stopping[0], WalArchivalReading)


#: Seconds before the second check of a wait, at most: soon enough to measure how fast it drains.
FIRST_RECHECK_SECONDS = 5.0


def next_check_in(
    *,
    pending: int | None,
    target: int,
    drain_rate: float | None,
    poll_interval: float,
    min_interval: float,
) -> float:
    """Return the seconds until the next check of a backlog that is above its target.

    At the drain rate seen between the last two checks, the backlog reaches ``target`` in
    ``(pending - target) / drain_rate`` seconds: check then, within ``[min_interval,
    poll_interval]``. Without a rate yet, check again within :data:`FIRST_RECHECK_SECONDS` to
    measure one; with a backlog that does not drain, or an unknown one, after ``poll_interval``.

    >>> next_check_in(pending=50, target=42, drain_rate=2.0, poll_interval=60, min_interval=1)
    4.0
    >>> next_check_in(pending=500, target=42, drain_rate=2.0, poll_interval=60, min_interval=1)
    60
    >>> next_check_in(pending=50, target=42, drain_rate=None, poll_interval=60, min_interval=1)
    5.0

    :param pending: the backlog just measured, or ``None`` if unknown.
    :param target: the backlog at which the wait ends.
    :param drain_rate: segments a second the backlog shrank by since the last check, or ``None``.
    :param poll_interval: the most seconds to wait.
    :param min_interval: the fewest seconds to wait.
    """
    low = min(min_interval, poll_interval)
    if pending is None or (drain_rate is not None and drain_rate <= 0):
        return poll_interval
    if drain_rate is None:
        return max(low, min(poll_interval, FIRST_RECHECK_SECONDS))
    return max(low, min(poll_interval, (pending - target) / drain_rate))
