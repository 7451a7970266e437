"""The sensor that holds a DAG run while PostgreSQL's health says stop: first of all, the WAL backlog."""

from __future__ import annotations

import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout

from airflow_provider_walthrottle.flags import WAL_HEALTH_FLAG
from airflow_provider_walthrottle.gate import HealthGate
from airflow_provider_walthrottle.wal.health import (
    DEFAULT_MAX_PENDING_SEGMENTS,
    HealthUnavailableError,
    OnUnavailable,
    parse_max_pending_segments,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

    from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook
    from airflow_provider_walthrottle.indicators.base import HealthIndicator


class WalArchivalSensor(BaseSensorOperator):
    """
    Wait until the database's health lets migrations go on: first of all, the WAL archival backlog.

    Each check is one :meth:`HealthGate.check <airflow_provider_walthrottle.gate.HealthGate.check>`
    over the indicators, each behind its own flag (an Airflow Variable): the WAL backlog (the
    arguments below), replication lag, replication slots, and autovacuum on ``table`` if given.
    With every flag off it succeeds without contacting the database; otherwise once no indicator
    says stop, with the readings as its XCom. It waits deferred, or rescheduled with
    ``deferrable=False``.

    .. seealso::
        :doc:`/howto/sensor`

    :param postgres_conn_id: the Airflow connection to the PostgreSQL primary. (templated)
    :param max_pending_segments: only a backlog *above* it waits. (templated)
    :param flag_variable: the Airflow Variable holding the feature flag. (templated)
    :param flag_default: the flag while its Variable is missing; an unreadable value reads as on.
    :param on_unavailable: what "not available" or "unknown" does: ``"wait"``, ``"proceed"`` or ``"fail"``.
    :param database: a database name that overrides the connection's schema. (templated)
    :param indicators: the indicators instead of the defaults (thresholds templated), e.g.
        ``[WalArchivalIndicator(max_pending_segments=20), ReplicationLagIndicator(max_lag_seconds=5)]``.
    :param table: a table whose autovacuum the sensor waits for (its flag on). (templated)
    :param flag_actor: who asks the flag (``actors`` lists, percentage rollouts): the DAG id by
        default; a migration DAG's sensor asks as its migration, as the operator does. (templated)
    :param deferrable: wait in the triggerer instead of rescheduling the task. Either way the wait
        ends after ``timeout``, also under ``dag.test()``: the trigger keeps the deadline itself.
    :param poke_interval: seconds between two checks.
    """

    template_fields: Sequence[str] = (
        "postgres_conn_id",
        "max_pending_segments",
        "flag_variable",
        "database",
        "flag_actor",
        "indicators",
        "table",
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
        indicators: Sequence[HealthIndicator] | None = None,
        table: str | None = None,
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
        self.database, self.flag_actor = database, flag_actor
        self.indicators, self.table = None if indicators is None else list(indicators), table
        self.deferrable = deferrable

    @cached_property
    def hook(self) -> WalArchivalHook:
        """The hook that reads the indicators (imported here: not at parse time)."""
        from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook

        return WalArchivalHook(postgres_conn_id=self.postgres_conn_id, database=self.database)

    @property
    def gate(self) -> HealthGate:
        """The gate, from the rendered fields; the actor is ``flag_actor``, else the DAG id."""
        try:
            return HealthGate.for_task(self, actor=self.flag_actor or self.dag_id, table=self.table)
        except ValueError as error:
            raise AirflowFailException(str(error)) from None

    def execute(self, context: Context) -> Any:
        """Check once; then wait by deferring, or by the base sensor's reschedule loop."""
        if not self.deferrable:
            return super().execute(context)
        first = self.poke(context)
        if first:  # the poke logged "proceeding"
            return first.xcom_value
        timeout = datetime.timedelta(seconds=self.timeout)
        deadline = datetime.datetime.now(datetime.timezone.utc) + timeout
        trigger = self.gate.trigger(poll_interval=self.poke_interval, deadline=deadline)
        self.defer(trigger=trigger, method_name="execute_complete", timeout=timeout)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Finish after the trigger fired: time out or fail as the event says, else return the XCom value."""
        if event.get("status") == "timeout":  # soft_fail makes it a skip (BaseSensorOperator)
            raise AirflowSensorTimeout(f"Sensor timed out after {self.timeout:g}s: {event['message']}")
        if event.get("status") != "success":
            raise AirflowException(event.get("message", f"WAL archival trigger failed: {event!r}"))
        verdict: dict[str, Any] = event["verdict"]
        if not verdict["checked"]:
            flags = ", ".join(verdict["flags_off"])
            self.log.info("Feature flags %s are off, turned off during the wait: proceeding", flags)
        for reading in verdict["indicators"].values():
            self.log.info("%s check passed: %s", reading["label"], reading["reason"])
        return verdict

    def poke(self, context: Context) -> PokeReturnValue:
        """Check the gate once; log one line saying what was found and what happens."""
        gate = self.gate
        try:
            verdict = gate.check(self.hook.read_indicators)
        except HealthUnavailableError as error:
            raise AirflowException(str(error)) from None
        waiting = f"waiting, next check in {self.poke_interval:g}s"
        self.log.info("%s", verdict.describe(self.postgres_conn_id, on_stop=waiting))
        return PokeReturnValue(is_done=verdict.proceed, xcom_value=verdict.to_xcom(gate.wal_flag_variable))
