"""The operator that runs one batch of a named PostgreSQL data migration per task instance."""

from __future__ import annotations

import datetime
import functools
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSkipException,
)

from airflow_provider_walthrottle.flags import KILL_SWITCH_VARIABLE, WAL_HEALTH_FLAG, kill_switch
from airflow_provider_walthrottle.gate import HealthGate
from airflow_provider_walthrottle.links import BatchedMigrationLink
from airflow_provider_walthrottle.metrics import record_batch, record_throttle, task_stats
from airflow_provider_walthrottle.migrations.definition import (
    MigrationDefinition,
    MigrationDefinitionError,
    validate_operator_arguments,
)
from airflow_provider_walthrottle.migrations.optimizer import BATCH_GROWTH, BatchSizePolicy
from airflow_provider_walthrottle.wal.health import (
    DEFAULT_MAX_PENDING_SEGMENTS,
    HealthUnavailableError,
    OnUnavailable,
    parse_max_pending_segments,
)

# psycopg, the hook and the batching core are imported where a task runs: they cost about 300 ms to
# import, which every parse of a DAG file would pay.
if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

    from airflow_provider_walthrottle.gate import ReadIndicators
    from airflow_provider_walthrottle.hooks.batched_migration import BatchedMigrationHook
    from airflow_provider_walthrottle.indicators.base import HealthIndicator
    from airflow_provider_walthrottle.migrations.batch import NextStep
    from airflow_provider_walthrottle.migrations.plan import MigrationPlan
    from airflow_provider_walthrottle.migrations.run_settings import RunSettings
    from airflow_provider_walthrottle.migrations.runner import HealthVerdict


class BatchedMigrationOperator(BaseOperator):
    """
    Run one batch of a named data migration, exactly once, throttled on the database's health.

    Each task instance claims one range of about ``batch_size`` keys of ``table`` (walked by its
    unique key ``column``) and runs ``batch_sql`` over it in sub-batches (statements of about
    0.2 s, or ``sub_batch_size`` keys), each committed with its progress in the provider's state
    tables (schema ``walthrottle``), so retries, concurrent runs and killed workers never apply a
    range twice or skip one. Before the batch and between sub-batches it checks the health gate
    (:class:`~airflow_provider_walthrottle.gate.HealthGate`), as
    :class:`~airflow_provider_walthrottle.sensors.wal_archival.WalArchivalSensor` does: the WAL
    backlog, replication lag, replication slots and autovacuum on ``table``, each behind its own
    flag. It pauses between sub-batches as a reading nears its threshold; when one says stop, it
    stops with its progress committed, waits (deferred by default), and goes on where it stopped.
    The batch size adapts to a wall-clock target and to the WAL headroom. A finished migration's
    task ends as skipped. A new migration's first run plans it first (:meth:`plan`), in its log and
    the XCom ``plan``. The batching core's
    :func:`~airflow_provider_walthrottle.migrations.batch.run_batch` does the work.

    .. seealso::
        :doc:`/howto/operator`

    :param postgres_conn_id: the Airflow connection to the PostgreSQL primary. (templated)
    :param migration_name: a name unique in the database; progress is kept under it. (templated)
    :param table: the table, ``schema.table`` or ``table``. (templated)
    :param column: its key: unique, NOT NULL, indexed; integer, bigint, text or uuid. (templated)
    :param batch_sql: the statement per sub-batch, ``%(start)s`` and ``%(end)s`` bound to the first
        and last key of the range, inclusive; it must apply ``scope`` itself. (templated)
    :param scope: an SQL condition that narrows the rows planned into ranges. (templated)
    :param batch_size: the first batch's size in keys; later ones adapt.
    :param sub_batch_size: keys per statement; by default each statement is sized to about 0.2 s.
    :param pause_ms: milliseconds between sub-batches; by default no pause while every health
        reading is at most half its threshold, then pauses that grow as one nears it.
    :param max_pending_segments: the WAL threshold; only a backlog above it stops. (templated)
    :param flag_variable: the feature flag's Airflow Variable. (templated)
    :param flag_default: the flag while its Variable is missing; an unreadable value reads as on.
    :param kill_switch_variable: a Variable (on while missing) that pauses every migration when
        off; an unreadable value reads as off.
    :param indicators: the indicators instead of the defaults, as for the sensor. (templated)
    :param on_unavailable: what a "not available" or "unknown" reading does: wait, proceed or fail.
    :param on_paused: what a paused migration (or the kill switch) does: ``"wait"`` or ``"skip"``.
    :param min_batch_size: the smallest batch the optimizer plans.
    :param max_batch_size: the largest batch the optimizer plans; by default none: the time
        target and the WAL headroom size a batch.
    :param target_batch_seconds: the wall-clock duration the optimizer aims each batch at.
    :param max_attempts: failed runs of a job's ``batch_sql`` before the migration fails; a lost
        worker or connection uses none.
    :param statement_timeout_ms: ``statement_timeout`` of each sub-batch; repeated timeouts split the range.
    :param wait_interval: seconds between two checks while waiting.
    :param deferrable: wait in the triggerer (default) instead of rescheduling the task.
    :param database: a database that overrides the connection's schema. (templated)
    """

    template_fields: Sequence[str] = (
        "postgres_conn_id",
        "migration_name",
        "table",
        "column",
        "batch_sql",
        "scope",
        "max_pending_segments",
        "flag_variable",
        "database",
        "indicators",
    )
    template_fields_renderers = {"batch_sql": "sql", "scope": "sql"}
    ui_color = "#fde8d7"
    operator_extra_links = (BatchedMigrationLink(),)

    def __init__(
        self,
        *,
        migration_name: str,
        table: str,
        column: str,
        batch_sql: str,
        postgres_conn_id: str = "postgres_default",
        scope: str | None = None,
        batch_size: int = 1000,
        sub_batch_size: int | None = None,
        pause_ms: int | None = None,
        max_pending_segments: int | str = DEFAULT_MAX_PENDING_SEGMENTS,
        flag_variable: str = WAL_HEALTH_FLAG,
        flag_default: bool = False,
        kill_switch_variable: str = KILL_SWITCH_VARIABLE,
        indicators: Sequence[HealthIndicator] | None = None,
        on_unavailable: str | OnUnavailable = OnUnavailable.WAIT,
        on_paused: str = "wait",
        min_batch_size: int = 100,
        max_batch_size: int | None = None,
        target_batch_seconds: float = 30.0,
        max_attempts: int = 3,
        statement_timeout_ms: int | None = None,
        wait_interval: float = 60.0,
        deferrable: bool = True,
        database: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch_size, self.sub_batch_size = validate_operator_arguments(
            migration_name=migration_name,
            table=table,
            column=column,
            batch_size=batch_size,
            sub_batch_size=sub_batch_size,
            on_paused=on_paused,
            pause_ms=pause_ms,
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            target_batch_seconds=target_batch_seconds,
            max_attempts=max_attempts,
            statement_timeout_ms=statement_timeout_ms,
            wait_interval=wait_interval,
        )
        if not isinstance(max_pending_segments, str):  # else checked once the template is rendered
            parse_max_pending_segments(max_pending_segments)
        self.policy = BatchSizePolicy(
            min_batch_size=min(min_batch_size, self.batch_size),
            max_batch_size=None if max_batch_size is None else max(max_batch_size, self.batch_size),
            target_batch_seconds=target_batch_seconds,
            max_growth=BATCH_GROWTH,
        )
        self.postgres_conn_id = postgres_conn_id
        self.migration_name = migration_name
        self.table = table
        self.column = column
        self.batch_sql = batch_sql
        self.scope = scope
        self.pause_ms = pause_ms
        self.max_pending_segments = max_pending_segments
        self.flag_variable = flag_variable
        self.flag_default = flag_default
        self.kill_switch_variable = kill_switch_variable
        self.indicators = list(indicators) if indicators is not None else None
        self.on_unavailable = OnUnavailable.parse(on_unavailable)
        self.on_paused = on_paused
        self.max_attempts = max_attempts
        self.statement_timeout_ms = statement_timeout_ms
        self.wait_interval = wait_interval
        self.deferrable = deferrable
        self.database = database

    @functools.cached_property
    def hook(self) -> BatchedMigrationHook:
        """The hook whose connection the migration runs on."""
        from airflow_provider_walthrottle.hooks.batched_migration import BatchedMigrationHook

        return BatchedMigrationHook(postgres_conn_id=self.postgres_conn_id, database=self.database)

    @property
    def definition(self) -> MigrationDefinition:
        """The migration, from the rendered fields.

        :raises MigrationDefinitionError: for an invalid name, table, column, ``batch_sql`` or scope.
        """
        return MigrationDefinition(self.migration_name, self.table, self.column, self.batch_sql, self.scope)

    @property
    def gate(self) -> HealthGate:
        """The health check, from the rendered fields; the actor is the migration's name."""
        try:
            return HealthGate.for_task(self, actor=self.migration_name, table=self.table)
        except ValueError as error:
            raise AirflowFailException(str(error)) from None

    def run_settings(self, max_pending_segments: int) -> RunSettings:
        """How this operator's batches run: its arguments, under the threshold its gate keeps.

        :param max_pending_segments: the threshold (the rendered one, from :attr:`gate`).
        """
        from airflow_provider_walthrottle.migrations.run_settings import RunSettings

        return RunSettings(
            sub_batch_size=self.sub_batch_size,
            pause_ms=self.pause_ms,
            max_attempts=self.max_attempts,
            statement_timeout_ms=self.statement_timeout_ms,
            max_pending_segments=max_pending_segments,
            policy=self.policy,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        """Run one batch; wait, skip or fail as the migration's state says."""
        try:
            definition = self.definition
        except ValueError as error:
            raise AirflowFailException(str(error)) from None
        gate = self.gate
        if not kill_switch(self.kill_switch_variable).is_enabled(self.migration_name):
            # before connecting: nothing is registered or created while everything is paused
            self._paused(
                f"the kill switch Variable {self.kill_switch_variable} reads as off "
                f"(run migrations again with `airflow variables set {self.kill_switch_variable} true`)"
            )
        from airflow_provider_walthrottle.migration_plan import plan_first_run
        from airflow_provider_walthrottle.migrations.batch import run_batch
        from airflow_provider_walthrottle.migrations.runner import JobFailedError, prepare
        from airflow_provider_walthrottle.migrations.state import MigrationStateError

        settings = self.run_settings(gate.max_pending_segments)
        with self.hook.connect() as conn:  # health is checked on the migration's own connection
            read = functools.partial(self.hook.read_indicators, conn=conn)
            check = functools.partial(self._check, gate, read)
            try:
                store = prepare(conn, definition, self.batch_size)
                plan_first_run(self, store, context)  # once: in the run that registered it
                step = run_batch(
                    store,
                    settings,
                    check,
                    dag_id=self.dag_id,
                    run_id=context.get("run_id"),
                    try_number=getattr(context.get("ti"), "try_number", None),
                    log=self.log.debug,  # a line per sub-batch: thousands per task; the batch's is INFO
                )
            except JobFailedError as error:
                raise (AirflowFailException if error.final else AirflowException)(str(error)) from None
            except (MigrationStateError, MigrationDefinitionError) as error:
                raise AirflowFailException(str(error)) from None
        return self._follow(step)

    def plan(self, *, save: bool = False, **overrides: Any) -> MigrationPlan:
        """Plan this migration as it will run, on its connection, without changing a row.

        As :func:`~airflow_provider_walthrottle.migration_plan.plan_task`; see :doc:`/howto/plan`.

        :param save: also save the plan under the migration's name, for the migrations page.
        :param overrides: ``compute_plan``'s keyword arguments, over the operator's.
        """
        from airflow_provider_walthrottle.migration_plan import plan_task

        return plan_task(self, save=save, **overrides)

    def execute_complete(self, context: Context, event: Any = None, **kwargs: Any) -> dict[str, Any]:
        """Go on after a deferred wait: fail on a trigger error, else run the next batch."""
        if isinstance(event, dict) and event.get("status") == "error":
            raise AirflowException(event.get("message", f"WAL archival trigger failed: {event!r}"))
        return self.execute(context)

    #: The name of :meth:`execute_complete` before 0.2, kept for one release: tasks deferred with it
    #: resume through it.
    resume_after_wait = execute_complete

    def _check(self, gate: HealthGate, read: ReadIndicators) -> HealthVerdict:
        """Check the gate once, on the migration's connection; log a line when it stops the batch."""
        from airflow_provider_walthrottle.migrations.runner import HealthVerdict

        try:
            verdict = gate.check(read)
        except HealthUnavailableError as error:
            raise AirflowException(str(error)) from None
        if not verdict.proceed:
            stopping = "stopping with progress committed"
            self.log.info("%s", verdict.describe(self.postgres_conn_id, on_stop=stopping))
        return HealthVerdict.from_gate(verdict)

    def _follow(self, step: NextStep) -> dict[str, Any]:
        """Map the core's answer onto Airflow: return the batch's summary, wait, or skip."""
        from airflow_provider_walthrottle.migrations.batch import (
            BatchDone,
            Paused,
            WaitFixedTime,
            WaitForBacklog,
        )

        conn_id, name = self.postgres_conn_id, self.migration_name
        if isinstance(step, BatchDone):
            rows, seconds = step.result.rows_affected, step.result.seconds
            record_batch(task_stats(), conn_id=conn_id, migration=name, rows=rows, seconds=seconds)
            self.log.info("Migration %s: %s", name, step.describe())
            return step.summary
        if isinstance(step, Paused):
            self._paused(step.reason)
        if isinstance(step, WaitForBacklog | WaitFixedTime):
            if step.headroom:
                record_throttle(task_stats(), conn_id=conn_id, actor=name, reason="headroom")
            self._wait(step.reason, threshold=step.at_most if isinstance(step, WaitForBacklog) else None)
        raise AirflowSkipException(step.reason)  # finished, or nothing left to claim

    def _paused(self, reason: str) -> NoReturn:
        if self.on_paused == "skip":
            raise AirflowSkipException(f"Migration {self.migration_name} not run: {reason}")
        self._wait(reason, threshold=None)

    def _wait(self, reason: str, *, threshold: int | None) -> NoReturn:
        """Wait ``wait_interval`` seconds, or until the backlog is at most ``threshold`` if given."""
        moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=self.wait_interval)
        if threshold is None or not self.deferrable:
            self.log.info("Migration %s waits %gs: %s", self.migration_name, self.wait_interval, reason)
            if not self.deferrable:
                raise AirflowRescheduleException(moment)
            from airflow.providers.standard.triggers.temporal import DateTimeTrigger

            self.defer(trigger=DateTimeTrigger(moment=moment), method_name="execute_complete")
        waits = "Migration %s waits until the health gate clears (at most %s WAL segments pending): %s"
        self.log.info(waits, self.migration_name, threshold, reason)
        trigger = self.gate.trigger(poll_interval=self.wait_interval, max_pending_segments=threshold)
        self.defer(trigger=trigger, method_name="execute_complete")
