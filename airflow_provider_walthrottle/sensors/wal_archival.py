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
    Wait until at most ``max_pending_segments`` WAL segments wait for ``archive_command``.

    Each check is one :meth:`HealthGate.check <airflow_provider_walthrottle.gate.HealthGate.check>`
    over its indicators, each behind its own flag (an Airflow Variable): with every flag off it
    succeeds without contacting the database; otherwise it succeeds once no indicator that is on
    says stop (the backlog at or below the threshold...), with the readings as its XCom. By default
    the indicators are the WAL archival backlog (the arguments below), replication lag and
    replication slot retention, and autovacuum on ``table`` if one is given; only the WAL flag is
    rolled out until you turn the others on. By default the wait is deferred to the triggerer; with
    ``deferrable=False`` the sensor reschedules itself.

    .. seealso::
        :doc:`/howto/sensor`

    :param postgres_conn_id: the Airflow connection to the PostgreSQL primary. (templated)
    :param max_pending_segments: only a backlog *above* it waits. (templated)
    :param flag_variable: the Airflow Variable holding the feature flag. (templated)
    :param flag_default: the flag's answer while the Variable is missing (``True`` once released);
        a value that cannot be read or parsed reads as on, the safe side.
    :param on_unavailable: what "not available" or "unknown" does: ``"wait"`` (default: a wrong
        connection never lets a migration run unthrottled), ``"proceed"`` or ``"fail"``.
    :param database: a database name that overrides the connection's schema. (templated)
    :param indicators: the indicators to evaluate instead of the defaults, e.g.
        ``[WalArchivalIndicator(max_pending_segments=20), ReplicationLagIndicator(max_lag_seconds=5)]``
        (their thresholds are templated); then the WAL threshold and flag go to
        :class:`~airflow_provider_walthrottle.indicators.wal_archival.WalArchivalIndicator`.
    :param table: a table whose autovacuum the sensor waits for, with the autovacuum indicator's
        flag on. (templated)
    :param flag_actor: who asks the flag (``actors`` lists, percentage rollouts): the DAG id by
        default; a migration DAG's sensor asks as its migration, as the operator does. (templated)
    :param deferrable: wait in the triggerer instead of rescheduling the task. Either way the wait
        ends after ``timeout`` (``AirflowSensorTimeout``, or skipped with ``soft_fail``), also under
        ``dag.test()``: the trigger keeps the deadline itself.
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
        self.database = database
        self.flag_actor = flag_actor
        self.indicators = list(indicators) if indicators is not None else None
        self.table = table
        self.deferrable = deferrable

    @cached_property
    def hook(self) -> WalArchivalHook:
        """The hook that measures the backlog."""
        from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook  # not at parse time

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
        if first:
            return first.xcom_value  # the poke logged "proceeding"
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
        else:
            readings = verdict["indicators"].values()
            passed = "; ".join(f"{r['indicator']} {r['signal']}: {r['reason']}" for r in readings)
            self.log.info("Health check passed: %s", passed)
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
