"""The trigger that waits, in the triggerer, for the WAL archival backlog to drain."""

from __future__ import annotations

import asyncio
import datetime
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent
from asgiref.sync import sync_to_async

from airflow_provider_walthrottle.exceptions import WalThrottleError
from airflow_provider_walthrottle.flags import health_check_flag
from airflow_provider_walthrottle.metrics import record_health, triggerer_stats
from airflow_provider_walthrottle.wal.health import (
    HealthUnavailableError,
    OnUnavailable,
    evaluate_wal_archival,
    exact_count_limit,
    may_proceed,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class WalArchivalTrigger(BaseTrigger):
    """
    Poll the WAL archival backlog with an async connection until migrations may go on.

    Fires one event: ``{"status": "success", "checked": bool, "health": dict | None}`` once the
    backlog is at or below the threshold (or the flag is off, or ``on_unavailable`` lets it pass),
    ``{"status": "timeout", "message": str}`` when ``deadline`` passes first, or
    ``{"status": "error", "message": str}`` when the check cannot be made.

    :param postgres_conn_id: the Airflow connection to the PostgreSQL server.
    :param max_pending_segments: the most segments that may wait.
    :param flag_variable: the Airflow Variable holding the feature flag; re-read on every poll, so
        turning the flag off releases the wait.
    :param flag_default: the flag's answer while the Variable is missing (a value that cannot be
        read or parsed reads as on).
    :param actor: who asks, for a percentage rollout of the flag (a DAG id or migration name).
    :param on_unavailable: what a "not available" or "unknown" reading does.
    :param poll_interval: the most seconds between two checks. While the backlog drains, the next
        check comes when the drain rate seen so far says the backlog will be at the threshold, but
        never sooner than ``min_poll_interval``: a migration goes on about when the backlog
        allows, not up to a whole ``poll_interval`` later (see :func:`next_check_in`).
    :param database: a database name that overrides the connection's schema.
    :param min_poll_interval: the fewest seconds between two checks.
    :param deadline: when the wait ends with a ``timeout`` event if the backlog has not drained. The
        trigger keeps it itself, so a wait ends on time even where the deferral's own timeout is
        not enforced (``dag.test()`` and ``airflow dags test`` run triggers inline and ignore it).
    """

    def __init__(
        self,
        *,
        postgres_conn_id: str,
        max_pending_segments: int,
        flag_variable: str,
        flag_default: bool,
        actor: str | None,
        on_unavailable: str,
        poll_interval: float,
        database: str | None = None,
        min_poll_interval: float = 1.0,
        deadline: datetime.datetime | None = None,
    ) -> None:
        super().__init__()
        if deadline is not None and deadline.tzinfo is None:
            raise ValueError(f"deadline must be timezone-aware, got {deadline!r}")
        self.deadline = deadline
        self.min_poll_interval = min_poll_interval
        self.postgres_conn_id = postgres_conn_id
        self.max_pending_segments = max_pending_segments
        self.flag_variable = flag_variable
        self.flag_default = flag_default
        self.actor = actor
        self.on_unavailable = on_unavailable
        self.poll_interval = poll_interval
        self.database = database

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the classpath and the arguments that recreate this trigger."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "postgres_conn_id": self.postgres_conn_id,
                "max_pending_segments": self.max_pending_segments,
                "flag_variable": self.flag_variable,
                "flag_default": self.flag_default,
                "actor": self.actor,
                "on_unavailable": self.on_unavailable,
                "poll_interval": self.poll_interval,
                "database": self.database,
                "min_poll_interval": self.min_poll_interval,
                "deadline": self.deadline,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Check, then sleep ``poll_interval`` seconds, until one event can be fired."""
        from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook

        flag = health_check_flag(self.flag_variable, default=self.flag_default)
        hook = WalArchivalHook(postgres_conn_id=self.postgres_conn_id, database=self.database)
        on_unavailable = OnUnavailable.parse(self.on_unavailable)
        loop = asyncio.get_running_loop()
        previous: tuple[float, int] | None = None  # (when, pending) of the last check
        while True:
            if not await sync_to_async(flag.is_enabled)(self.actor):
                self.log.info("Feature flag %s is off: the wait ends without a check", self.flag_variable)
                yield TriggerEvent({"status": "success", "checked": False, "health": None})
                return
            try:
                status = await hook.aget_archiver_status(
                    exact_up_to=exact_count_limit(self.max_pending_segments)
                )
                health = evaluate_wal_archival(status, self.max_pending_segments)
                record_health(triggerer_stats(), health, conn_id=self.postgres_conn_id, actor=self.actor)
                proceed = may_proceed(health, on_unavailable)
            except (WalThrottleError, HealthUnavailableError) as error:
                yield TriggerEvent({"status": "error", "message": str(error)})
                return
            if proceed:
                yield TriggerEvent({"status": "success", "checked": True, "health": health.to_dict()})
                return
            now, pending = loop.time(), health.status.pending_segments
            drain_rate = None
            if previous is not None and pending is not None and now > previous[0]:
                drain_rate = (previous[1] - pending) / (now - previous[0])
            delay = next_check_in(
                pending=pending,
                target=self.max_pending_segments,
                drain_rate=drain_rate,
                poll_interval=self.poll_interval,
                min_interval=self.min_poll_interval,
            )
            previous = (now, pending) if pending is not None else None
            remaining = self._seconds_to_deadline()
            if remaining is not None and remaining <= 0:
                message = (
                    f"WAL archival on {self.postgres_conn_id} did not drain by the deadline "
                    f"{self.deadline:%Y-%m-%d %H:%M:%S %Z}: {health.summary()}"
                )
                self.log.info("%s; the wait ends", message)
                yield TriggerEvent({"status": "timeout", "message": message})
                return
            if remaining is not None:
                delay = min(delay, remaining)
            self.log.info(
                "WAL archival on %s: %s; waiting, next check in %.3gs",
                self.postgres_conn_id,
                health.summary(),
                delay,
            )
            await asyncio.sleep(delay)

    def _seconds_to_deadline(self) -> float | None:
        if self.deadline is None:
            return None
        return (self.deadline - datetime.datetime.now(datetime.timezone.utc)).total_seconds()


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
