"""The health gate: the one place where a task decides whether a migration may write now.

One check reads the flag, measures the backlog, evaluates it, decides, and records the metrics,
in that order, for every caller: the sensor's pokes and the operator's checks before and between
sub-batches. While a caller waits, :meth:`HealthGate.trigger` gives it the
:class:`~airflow_provider_walthrottle.triggers.wal_archival.WalArchivalTrigger` that repeats the
same check in the triggerer. Today the gate has one indicator, the WAL archival backlog.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_walthrottle.flags import health_check_flag
from airflow_provider_walthrottle.metrics import record_decision, task_stats
from airflow_provider_walthrottle.wal.health import (
    OnUnavailable,
    evaluate_wal_archival,
    exact_count_limit,
    parse_max_pending_segments,
)

if TYPE_CHECKING:
    import datetime
    from collections.abc import Callable

    from airflow_provider_walthrottle.triggers.wal_archival import WalArchivalTrigger
    from airflow_provider_walthrottle.wal.archiver_status import ArchiverStatus
    from airflow_provider_walthrottle.wal.health import HealthSignal


@dataclass(frozen=True)
class GateVerdict:
    """What one check of the gate decided.

    :param checked: whether the backlog was measured; ``False`` when the flag is off for the actor.
    :param proceed: whether the caller may go on.
    :param health: the evaluated backlog, when it was measured.
    """

    checked: bool
    proceed: bool
    health: HealthSignal | None = None

    def describe(self, conn_id: str, flag_variable: str, *, on_stop: str) -> str:
        """Return the check as one line for the task log.

        :param conn_id: the connection it was made on.
        :param flag_variable: the flag's Variable key.
        :param on_stop: what the caller does when it may not go on, e.g. ``waiting, next check in 60s``.
        """
        if self.health is None:
            return (
                f"Feature flag {flag_variable} is off: WAL archival check skipped, database not contacted. "
                f"Turn it on with `airflow variables set {flag_variable} true`."
            )
        return (
            f"WAL archival on {conn_id}: {self.health.summary()}; {'proceeding' if self.proceed else on_stop}"
        )

    def to_xcom(self, flag_variable: str) -> dict[str, Any]:
        """Return the verdict as the sensor pushes it: the flag, and the signal with its measurement.

        :param flag_variable: the flag's Variable key.
        """
        if self.health is None:
            return {"checked": False, "flag_variable": flag_variable, "signal": None}
        return {"checked": True, "flag_variable": flag_variable, **self.health.to_dict()}


@dataclass(frozen=True)
class HealthGate:
    """The throttle of one caller: its connection, threshold, flag and actor.

    :param postgres_conn_id: the Airflow connection to the PostgreSQL primary.
    :param max_pending_segments: the threshold; only a backlog above it stops.
    :param flag_variable: the flag's Variable key (a health-check flag: invalid reads as on).
    :param flag_default: the flag's answer while its Variable is missing.
    :param on_unavailable: what a "not available" or "unknown" backlog does.
    :param actor: who asks the flag, and the name the metrics are counted under.
    :param database: a database that overrides the connection's schema.
    """

    postgres_conn_id: str
    max_pending_segments: int
    flag_variable: str
    flag_default: bool
    on_unavailable: OnUnavailable
    actor: str | None
    database: str | None = None

    @classmethod
    def for_task(cls, task: Any, *, actor: str | None) -> HealthGate:
        """Return the gate of a sensor or an operator, from its rendered fields.

        :param task: a task with ``postgres_conn_id``, ``max_pending_segments`` (rendered; a whole
            number, or its digits), ``flag_variable``, ``flag_default``, ``on_unavailable`` and
            ``database``, as :class:`~airflow_provider_walthrottle.sensors.wal_archival.WalArchivalSensor`
            and :class:`~airflow_provider_walthrottle.operators.batched_migration.BatchedMigrationOperator`
            have them.
        :param actor: who asks the flag.
        :raises ValueError: for a threshold that is not a whole number of 0 or more.
        """
        return cls(
            postgres_conn_id=task.postgres_conn_id,
            max_pending_segments=parse_max_pending_segments(task.max_pending_segments),
            flag_variable=task.flag_variable,
            flag_default=task.flag_default,
            on_unavailable=task.on_unavailable,
            actor=actor,
            database=task.database,
        )

    def check(self, read_status: Callable[..., ArchiverStatus]) -> GateVerdict:
        """Check once: the flag, then the backlog; record the backlog and, if it stops, a throttle event.

        :param read_status: measures the backlog when called with ``exact_up_to``, the number of
            segments up to which it counts exactly
            (:func:`~airflow_provider_walthrottle.wal.health.exact_count_limit`), e.g.
            :meth:`WalArchivalHook.get_archiver_status
            <airflow_provider_walthrottle.hooks.wal_archival.WalArchivalHook.get_archiver_status>`.
        :raises HealthUnavailableError: on "not available" or "unknown" with ``on_unavailable="fail"``.
        """
        flag = health_check_flag(self.flag_variable, default=self.flag_default)
        if not flag.is_enabled(self.actor):
            return GateVerdict(checked=False, proceed=True)
        threshold = self.max_pending_segments
        health = evaluate_wal_archival(read_status(exact_up_to=exact_count_limit(threshold)), threshold)
        proceed = record_decision(
            task_stats(), health, self.on_unavailable, conn_id=self.postgres_conn_id, actor=self.actor
        )
        return GateVerdict(checked=True, proceed=proceed, health=health)

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

        return WalArchivalTrigger(
            postgres_conn_id=self.postgres_conn_id,
            max_pending_segments=(
                self.max_pending_segments if max_pending_segments is None else max_pending_segments
            ),
            flag_variable=self.flag_variable,
            flag_default=self.flag_default,
            actor=self.actor,
            on_unavailable=self.on_unavailable.value,
            poll_interval=poll_interval,
            database=self.database,
            deadline=deadline,
        )
