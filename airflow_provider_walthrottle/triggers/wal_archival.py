"""The trigger that waits, in the triggerer, for the WAL archival backlog to drain."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent
from asgiref.sync import sync_to_async

from airflow_provider_walthrottle.exceptions import WalThrottleError
from airflow_provider_walthrottle.flags import FeatureFlag
from airflow_provider_walthrottle.health import (
    HealthUnavailableError,
    OnUnavailable,
    evaluate_wal_archival,
    exact_count_limit,
    may_proceed,
)
from airflow_provider_walthrottle.metrics import record_health, triggerer_stats

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class WalArchivalTrigger(BaseTrigger):
    """
    Poll the WAL archival backlog with an async connection until migrations may go on.

    Fires one event: ``{"status": "success", "checked": bool, "health": dict | None}`` once the
    backlog is at or below the threshold (or the flag is off, or ``on_unavailable`` lets it pass),
    or ``{"status": "error", "message": str}`` when the check cannot be made.

    :param postgres_conn_id: the Airflow connection to the PostgreSQL server.
    :param max_pending_segments: the most segments that may wait.
    :param flag_variable: the Airflow Variable holding the feature flag; re-read on every poll, so
        turning the flag off releases the wait.
    :param flag_default: the flag's answer while the Variable is missing or unreadable.
    :param actor: who asks, for a percentage rollout of the flag (a DAG id or migration name).
    :param on_unavailable: what a "not available" or "unknown" reading does.
    :param poll_interval: seconds between two checks.
    :param database: a database name that overrides the connection's schema.
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
    ) -> None:
        super().__init__()
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
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Check, then sleep ``poll_interval`` seconds, until one event can be fired."""
        from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook

        flag = FeatureFlag(self.flag_variable, default=self.flag_default)
        hook = WalArchivalHook(postgres_conn_id=self.postgres_conn_id, database=self.database)
        on_unavailable = OnUnavailable.parse(self.on_unavailable)
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
            self.log.info(
                "WAL archival on %s: %s; waiting, next check in %gs",
                self.postgres_conn_id,
                health.summary(),
                self.poll_interval,
            )
            await asyncio.sleep(self.poll_interval)
