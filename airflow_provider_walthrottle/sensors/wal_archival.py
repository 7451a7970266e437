"""The sensor that holds a DAG run while PostgreSQL's WAL archival backlog is too long."""

from __future__ import annotations

import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout

from airflow_provider_walthrottle.flags import WAL_HEALTH_FLAG, health_check_flag
from airflow_provider_walthrottle.metrics import record_decision, task_stats
from airflow_provider_walthrottle.wal.health import (
    DEFAULT_MAX_PENDING_SEGMENTS,
    HealthUnavailableError,
    OnUnavailable,
    evaluate_wal_archival,
    exact_count_limit,
    parse_max_pending_segments,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

    from airflow_provider_walthrottle.flags import FeatureFlag
    from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook


class WalArchivalSensor(BaseSensorOperator):
    """
    Wait until at most ``max_pending_segments`` WAL segments wait for ``archive_command``.

    The check sits behind a feature flag kept in an Airflow Variable, read at run time. With the
    flag off the sensor succeeds at once without contacting the database. With it on, the sensor
    measures the backlog through :class:`~airflow_provider_walthrottle.hooks.wal_archival.WalArchivalHook`
    and succeeds when it is at or below the threshold, pushing the measurement as its XCom.

    By default the wait is deferred to the triggerer (no worker slot is held, and apache/airflow#71172,
    which can fail reschedule-mode sensors, does not apply to deferred tasks). With
    ``deferrable=False`` the sensor uses ``mode="reschedule"``; give it ``retries`` to ride out that race.

    .. seealso::
        :doc:`/howto/sensor`

    :param postgres_conn_id: the Airflow connection to the PostgreSQL primary. (templated)
    :param max_pending_segments: the most segments that may wait; only a backlog *above* it waits.
        (templated)
    :param flag_variable: the Airflow Variable holding the feature flag. (templated)
    :param flag_default: the flag's answer while the Variable is missing. Off during the rollout;
        ``True`` once the check is released to everybody, so the Variable can be deleted. A value
        that cannot be read or parsed reads as on (check), the safe side.
    :param on_unavailable: what a reading of "not available" (archiving off, or a standby that does
        not archive) or "unknown" does: ``"wait"`` (default, the safe choice: a wrong connection
        never lets a migration run unthrottled), ``"proceed"`` or ``"fail"``.
    :param database: a database name that overrides the connection's schema. (templated)
    :param flag_actor: who asks the flag, for ``actors`` lists and percentage rollouts: the DAG id by
        default; :func:`~airflow_provider_walthrottle.migration_dag.wal_throttled_migration` passes
        the migration's name, so that its sensor and its operator are always both on or both off.
        (templated)
    :param deferrable: wait in the triggerer instead of rescheduling the task. The wait ends after
        ``timeout`` seconds either way (with ``AirflowSensorTimeout``, or skipped with ``soft_fail``):
        the trigger keeps the deadline itself, so ``dag.test()`` honours it too.
    :param poke_interval: seconds between two checks.
    """

    template_fields: Sequence[str] = (
        "postgres_conn_id",
        "max_pending_segments",
        "flag_variable",
        "database",
        "flag_actor",
    )
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        postgres_conn_id: str = "postgres_default",
        max_pending_segments: int | str = DEFAULT_MAX_PENDING_SEGMENTS,
        flag_variable: str = WAL_HEALTH_FLAG,
        flag_default: bool = False,
        on_unavailable: str | OnUnavailable = OnUnavailable.WAIT,
        database: str | None = None,
        flag_actor: str | None = None,
        deferrable: bool = True,
        poke_interval: datetime.timedelta | float = 60,
        mode: str = "reschedule",
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, mode=mode, **kwargs)
        if not isinstance(max_pending_segments, str):
            parse_max_pending_segments(max_pending_segments)
        self.postgres_conn_id = postgres_conn_id
        self.max_pending_segments = max_pending_segments
        self.flag_variable = flag_variable
        self.flag_default = flag_default
        self.on_unavailable = OnUnavailable.parse(on_unavailable)
        self.database = database
        self.flag_actor = flag_actor
        self.deferrable = deferrable

    @cached_property
    def hook(self) -> WalArchivalHook:
        """The hook that measures the backlog."""
        # imported here, not at module level: PostgresHook costs ~190 ms, which DAG parsing need not pay
        from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook

        return WalArchivalHook(postgres_conn_id=self.postgres_conn_id, database=self.database)

    @property
    def actor(self) -> str:
        """Who asks the flag: ``flag_actor``, else the DAG id."""
        return self.flag_actor or self.dag_id

    @property
    def threshold(self) -> int:
        """The rendered ``max_pending_segments``, checked."""
        try:
            return parse_max_pending_segments(self.max_pending_segments)
        except ValueError as error:
            raise AirflowFailException(str(error)) from None

    def execute(self, context: Context) -> Any:
        """Check once; then wait by deferring, or by the base sensor's reschedule loop."""
        if not self.deferrable:
            return super().execute(context)
        first = self.poke(context)
        if first:
            self.log.info("Success criteria met. Exiting.")
            return first.xcom_value if isinstance(first, PokeReturnValue) else None
        from airflow_provider_walthrottle.triggers.wal_archival import WalArchivalTrigger

        timeout = datetime.timedelta(seconds=self.timeout)
        self.defer(
            trigger=WalArchivalTrigger(
                postgres_conn_id=self.postgres_conn_id,
                max_pending_segments=self.threshold,
                flag_variable=self.flag_variable,
                flag_default=self.flag_default,
                actor=self.actor,
                on_unavailable=self.on_unavailable.value,
                poll_interval=self.poke_interval,
                database=self.database,
                deadline=datetime.datetime.now(datetime.timezone.utc) + timeout,
            ),
            method_name="execute_complete",
            timeout=timeout,
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Finish after the trigger fired: time out or fail as the event says, else return the XCom value."""
        if event.get("status") == "timeout":
            # soft_fail turns this into a skip (BaseSensorOperator.resume_execution)
            raise AirflowSensorTimeout(f"Sensor timed out after {self.timeout:g}s: {event['message']}")
        if event.get("status") != "success":
            raise AirflowException(event.get("message", f"WAL archival trigger failed: {event!r}"))
        if not event["checked"]:
            self.log.info("Feature flag %s was turned off during the wait: proceeding", self.flag_variable)
            return self._unchecked_result()
        self.log.info("WAL archival check passed: %s", event["health"]["reason"])
        return {"checked": True, "flag_variable": self.flag_variable, **event["health"]}

    def poke(self, context: Context) -> PokeReturnValue:
        """Check the flag, then the backlog; log one line saying what was found and what happens."""
        threshold = self.threshold
        if not self._flag().is_enabled(self.actor):
            self.log.info(
                "Feature flag %s is off: WAL archival check skipped, database not contacted. "
                "Turn it on with `airflow variables set %s true`.",
                self.flag_variable,
                self.flag_variable,
            )
            return PokeReturnValue(is_done=True, xcom_value=self._unchecked_result())
        health = evaluate_wal_archival(
            self.hook.get_archiver_status(exact_up_to=exact_count_limit(threshold)), threshold
        )
        try:
            proceed = record_decision(
                task_stats(), health, self.on_unavailable, conn_id=self.postgres_conn_id, actor=self.actor
            )
        except HealthUnavailableError as error:
            raise AirflowException(str(error)) from None
        self.log.info(
            "WAL archival on %s: %s; %s",
            self.postgres_conn_id,
            health.summary(),
            "proceeding" if proceed else f"waiting, next check in {self.poke_interval:g}s",
        )
        xcom = {"checked": True, "flag_variable": self.flag_variable, **health.to_dict()}
        return PokeReturnValue(is_done=proceed, xcom_value=xcom)

    def _flag(self) -> FeatureFlag:
        """The flag, with the rendered Variable key."""
        return health_check_flag(self.flag_variable, default=self.flag_default)

    def _unchecked_result(self) -> dict[str, Any]:
        return {"checked": False, "flag_variable": self.flag_variable, "signal": None}
