"""The operator that runs one batch of a named PostgreSQL data migration per task instance."""

from __future__ import annotations

import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from airflow_provider_walthrottle.flags import (
    KILL_SWITCH_VARIABLE,
    WAL_HEALTH_FLAG,
    health_check_flag,
    kill_switch,
)
from airflow_provider_walthrottle.health import (
    DEFAULT_MAX_PENDING_SEGMENTS,
    HealthUnavailableError,
    OnUnavailable,
    evaluate_wal_archival,
    exact_count_limit,
    parse_max_pending_segments,
)
from airflow_provider_walthrottle.links import BatchedMigrationLink
from airflow_provider_walthrottle.metrics import record_batch, record_decision, record_throttle, task_stats
from airflow_provider_walthrottle.migrations.definition import (
    MigrationDefinition,
    MigrationDefinitionError,
    refuse_nul_bytes,
    validate_batch_sizes,
    validate_run_parameters,
)
from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy

# The hook, psycopg and the batching core are imported where a task runs, not here: psycopg and
# PostgresHook cost about 300 ms to import, which every parse of a DAG file would pay.
if TYPE_CHECKING:
    from collections.abc import Sequence

    import psycopg
    from airflow.sdk import Context

    from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook
    from airflow_provider_walthrottle.migrations.runner import BatchResult, HealthVerdict
    from airflow_provider_walthrottle.migrations.store import MigrationStore


class BatchedMigrationOperator(BaseOperator):
    """
    Run one batch of a named data migration, exactly once, throttled on the WAL archival backlog.

    The migration walks ``table`` by its unique key ``column`` in ranges of about ``batch_size``
    keys; each task instance claims one range (a job) and runs ``batch_sql`` over it in sub-batches
    of ``sub_batch_size`` keys. Each sub-batch commits together with its progress, in the
    provider's state tables (schema ``walthrottle``) in the target database, so retries, backfills,
    concurrent runs and killed workers never apply a range twice or skip one.

    Before the batch and between sub-batches the operator checks the WAL backlog, as
    :class:`~airflow_provider_walthrottle.sensors.wal_archival.WalArchivalSensor` does, behind the
    same flag. Above the threshold it stops with its progress committed and waits (deferred, holding
    no worker slot), then continues where it stopped. The batch size adapts to a target duration
    and to the WAL headroom. A finished migration's task ends as skipped.

    .. seealso::
        :doc:`/howto/operator`

    :param postgres_conn_id: the Airflow connection to the PostgreSQL primary. (templated)
    :param migration_name: a name unique in the database; progress is kept under it. (templated)
    :param table: the table, ``schema.table`` or ``table``. (templated)
    :param column: its key: unique, NOT NULL, indexed; integer, bigint, text or uuid. (templated)
    :param batch_sql: the statement per sub-batch, with ``%(start)s`` and ``%(end)s`` bound to the
        first and last key of the range, inclusive; it must apply ``scope`` itself. (templated)
    :param scope: an SQL condition that narrows the rows planned into ranges. (templated)
    :param batch_size: the first batch's size in keys; later ones adapt.
    :param sub_batch_size: keys per statement.
    :param pause_ms: milliseconds between sub-batches.
    :param max_pending_segments: the WAL threshold; only a backlog above it stops. (templated)
    :param flag_variable: the feature flag's Airflow Variable. (templated)
    :param flag_default: the flag's answer while its Variable is missing; a value that cannot be
        read or parsed reads as on (throttle), the safe side.
    :param kill_switch_variable: a Variable (on while missing) that pauses every migration when off;
        a value that cannot be read or parsed reads as off, the safe side.
    :param on_unavailable: what a "not available" or "unknown" backlog does: wait, proceed or fail.
    :param on_paused: what a paused migration (or the kill switch) does: ``"wait"`` or ``"skip"``.
    :param min_batch_size: the smallest batch the optimizer plans.
    :param max_batch_size: the largest batch the optimizer plans.
    :param target_batch_seconds: the duration the optimizer aims each batch at.
    :param max_attempts: failed runs of a job's ``batch_sql`` before the migration fails (GitLab's 3);
        a lost worker or connection uses none.
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
    )
    template_fields_renderers = {"batch_sql": "sql", "scope": "sql"}
    ui_color = "#fde8d7"

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
        sub_batch_size: int = 100,
        pause_ms: int = 100,
        max_pending_segments: int | str = DEFAULT_MAX_PENDING_SEGMENTS,
        flag_variable: str = WAL_HEALTH_FLAG,
        flag_default: bool = False,
        kill_switch_variable: str = KILL_SWITCH_VARIABLE,
        on_unavailable: str | OnUnavailable = OnUnavailable.WAIT,
        on_paused: str = "wait",
        min_batch_size: int = 100,
        max_batch_size: int = 100_000,
        target_batch_seconds: float = 30.0,
        max_attempts: int = 3,
        statement_timeout_ms: int | None = None,
        wait_interval: float = 60.0,
        deferrable: bool = True,
        database: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch_size, self.sub_batch_size = validate_batch_sizes(batch_size, sub_batch_size)
        validate_run_parameters(
            pause_ms=pause_ms,
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            target_batch_seconds=target_batch_seconds,
            max_attempts=max_attempts,
            statement_timeout_ms=statement_timeout_ms,
            wait_interval=wait_interval,
        )
        # the rest of the definition is checked when it runs, once templates are rendered
        for label, value in (("migration_name", migration_name), ("table", table), ("column", column)):
            refuse_nul_bytes(label, value)
        if not isinstance(max_pending_segments, str):
            parse_max_pending_segments(max_pending_segments)
        if on_paused not in ("wait", "skip"):
            raise ValueError(f"on_paused must be 'wait' or 'skip', got {on_paused!r}")
        self.policy = BatchSizePolicy(
            min_batch_size=min(min_batch_size, self.batch_size),
            max_batch_size=max(max_batch_size, self.batch_size),
            target_batch_seconds=target_batch_seconds,
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
        self.on_unavailable = OnUnavailable.parse(on_unavailable)
        self.on_paused = on_paused
        self.max_attempts = max_attempts
        self.statement_timeout_ms = statement_timeout_ms
        self.wait_interval = wait_interval
        self.deferrable = deferrable
        self.database = database

    @cached_property
    def hook(self) -> WalArchivalHook:
        """The hook whose connection the migration runs on."""
        from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook

        return WalArchivalHook(postgres_conn_id=self.postgres_conn_id, database=self.database)

    operator_extra_links = (BatchedMigrationLink(),)

    def execute(self, context: Context) -> dict[str, Any]:
        """Run one batch; wait, skip or fail as the migration's state says."""
        try:
            definition = MigrationDefinition(
                name=self.migration_name,
                table=self.table,
                column=self.column,
                batch_sql=self.batch_sql,
                scope=self.scope,
            )
            threshold = parse_max_pending_segments(self.max_pending_segments)
        except ValueError as error:
            raise AirflowFailException(str(error)) from None
        if not kill_switch(self.kill_switch_variable).is_enabled(self.migration_name):
            # before connecting: nothing is registered or created while everything is paused
            return self._paused(
                f"the kill switch Variable {self.kill_switch_variable} reads as off "
                f"(run migrations again with `airflow variables set {self.kill_switch_variable} true`)"
            )
        from airflow_provider_walthrottle.migrations.runner import prepare

        with self.hook.connect() as conn:
            try:
                store = prepare(conn, definition, self.batch_size)
            except MigrationDefinitionError as error:
                raise AirflowFailException(str(error)) from None
            return self._run_batch(context, store, threshold)

    def resume_after_wait(self, context: Context, event: Any = None, **kwargs: Any) -> dict[str, Any]:
        """Go on after a deferred wait: fail on a trigger error, else run the batch."""
        if isinstance(event, dict) and event.get("status") == "error":
            raise AirflowException(event.get("message", f"WAL archival trigger failed: {event!r}"))
        return self.execute(context)

    def _run_batch(self, context: Context, store: MigrationStore, threshold: int) -> dict[str, Any]:
        import psycopg

        from airflow_provider_walthrottle.migrations.runner import JobFailedError, RunSettings, run_one_batch
        from airflow_provider_walthrottle.migrations.store import MigrationStateError

        conn = store.conn
        store.end_throttle()
        settings = RunSettings(
            sub_batch_size=self.sub_batch_size,
            pause_ms=self.pause_ms,
            max_attempts=self.max_attempts,
            statement_timeout_ms=self.statement_timeout_ms,
            max_pending_segments=threshold,
            policy=self.policy,
        )
        ti = context.get("ti")
        try:
            result = run_one_batch(
                store,
                settings,
                lambda: self._check_health(conn, threshold),
                dag_id=self.dag_id,
                run_id=context.get("run_id"),
                try_number=getattr(ti, "try_number", None),
                # a line per sub-batch: thousands per task, so at DEBUG; the batch's line is INFO
                log=self.log.debug,
            )
        except JobFailedError as error:
            if error.final:
                raise AirflowFailException(str(error)) from None
            raise AirflowException(str(error)) from None
        except (MigrationStateError, MigrationDefinitionError) as error:
            raise AirflowFailException(str(error)) from None
        except psycopg.OperationalError as error:
            if not conn.broken:
                raise
            # e.g. a restart while the backlog was checked: the job stays claimable as it was
            raise AirflowException(
                f"Migration {self.migration_name}: lost the connection {self.postgres_conn_id} "
                f"({' '.join(str(error).split())}); no attempt used, the job resumes where it stopped"
            ) from None
        return self._conclude(result, store, threshold)

    def _check_health(self, conn: psycopg.Connection[Any], threshold: int) -> HealthVerdict:
        from airflow_provider_walthrottle.hooks.wal_archival_sql import read_archiver_status
        from airflow_provider_walthrottle.migrations.runner import HealthVerdict

        flag = health_check_flag(self.flag_variable, default=self.flag_default)
        if not flag.is_enabled(self.migration_name):
            return HealthVerdict(proceed=True)
        status = read_archiver_status(conn, exact_up_to=exact_count_limit(threshold))
        health = evaluate_wal_archival(status, threshold)
        try:
            proceed = record_decision(
                task_stats(),
                health,
                self.on_unavailable,
                conn_id=self.postgres_conn_id,
                actor=self.migration_name,
            )
        except HealthUnavailableError as error:
            raise AirflowException(str(error)) from None
        if not proceed:
            self.log.info(
                "WAL archival on %s: %s; stopping with progress committed",
                self.postgres_conn_id,
                health.summary(),
            )
        return HealthVerdict(proceed=proceed, health=health)

    def _conclude(self, result: BatchResult, store: MigrationStore, threshold: int) -> dict[str, Any]:
        from airflow_provider_walthrottle.migrations.runner import Outcome

        progress = result.progress
        if result.job is not None and result.health is not None:
            pending = result.health.status.pending_segments
            if pending is not None:
                store.note_backlog(result.job.id, pending)
        summary: dict[str, Any] = {
            "migration": self.migration_name,
            "outcome": result.outcome.value,
            "job_id": result.job.id if result.job else None,
            "range": [result.job.start_key, result.job.end_key] if result.job else None,
            "keys": result.keys,
            "rows_affected": result.rows_affected,
            "job_rows_affected": (result.job.rows_affected if result.job else 0) + result.rows_affected,
            "seconds": round(result.seconds, 3),
            "wal_bytes": result.wal_bytes,
            "rows_done": progress.rows_affected,
            "keys_done": progress.keys_done,
            "total_keys": progress.total_rows,
            "percentage": round(progress.percentage, 2),
            "key_position": progress.cursor_key,
            "rows_per_second": round(result.rows_per_second, 1) if result.rows_per_second else None,
            "eta_seconds": round(progress.eta_seconds, 1) if progress.eta_seconds is not None else None,
            "throttled_seconds": round(progress.throttled_seconds, 1),
            "batch_size": result.decision.size if result.decision else None,
        }
        if result.outcome is Outcome.COMPLETED:
            record_batch(
                task_stats(),
                conn_id=self.postgres_conn_id,
                migration=self.migration_name,
                rows=result.rows_affected,
                seconds=result.seconds,
            )
            self.log.info(
                "Migration %s: job %s (keys %s..%s) done, %s rows (%s in this try, %.1fs); "
                "%.1f%% of %s keys, %s rows/s, ETA %s s (throttled %.0f s so far)",
                self.migration_name,
                summary["job_id"],
                *summary["range"],
                summary["job_rows_affected"],
                result.rows_affected,
                result.seconds,
                progress.percentage,
                progress.total_rows,
                summary["rows_per_second"],
                summary["eta_seconds"],
                progress.throttled_seconds,
            )
            return summary
        if result.outcome is Outcome.THROTTLED:
            store.begin_throttle()
            if result.decision is not None and result.decision.must_wait:
                # the backlog is below the threshold, but not by enough for the smallest batch:
                # wait until it leaves room for one (or a fixed interval if that is not known)
                record_throttle(
                    task_stats(), conn_id=self.postgres_conn_id, actor=self.migration_name, reason="headroom"
                )
                self._wait(
                    f"throttled: {result.decision.describe()}",
                    threshold=_room_for_smallest_batch(result, threshold),
                )
            reason = result.health.summary() if result.health else "the WAL backlog is too long"
            self._wait(f"throttled: {reason}", threshold=threshold)
        if result.outcome is Outcome.PAUSED:
            return self._paused(f"migration {self.migration_name} is paused")
        if result.outcome is Outcome.FINISHED:
            raise AirflowSkipException(
                f"Migration {self.migration_name} is finished: {progress.rows_affected} rows affected over "
                f"{progress.total_rows} keys in {progress.jobs_succeeded} batches; nothing left to do"
            )
        raise AirflowSkipException(
            f"Migration {self.migration_name}: every remaining range is being run by another task "
            f"({progress.jobs_open} open); nothing to claim"
        )

    def _paused(self, reason: str) -> NoReturn:
        if self.on_paused == "skip":
            raise AirflowSkipException(f"Migration {self.migration_name} not run: {reason}")
        self._wait(reason, threshold=None)

    def _wait(self, reason: str, *, threshold: int | None) -> NoReturn:
        """Wait ``wait_interval`` seconds, or until the backlog is at or below ``threshold`` if given."""
        if threshold is None or not self.deferrable:
            self.log.info("Migration %s waits %gs: %s", self.migration_name, self.wait_interval, reason)
        else:
            self.log.info(
                "Migration %s waits until at most %s WAL segments are pending: %s",
                self.migration_name,
                threshold,
                reason,
            )
        if not self.deferrable:
            from airflow.sdk.exceptions import AirflowRescheduleException

            raise AirflowRescheduleException(_now() + datetime.timedelta(seconds=self.wait_interval))
        if threshold is not None:
            from airflow_provider_walthrottle.triggers.wal_archival import WalArchivalTrigger

            trigger: Any = WalArchivalTrigger(
                postgres_conn_id=self.postgres_conn_id,
                max_pending_segments=threshold,
                flag_variable=self.flag_variable,
                flag_default=self.flag_default,
                actor=self.migration_name,
                on_unavailable=self.on_unavailable.value,
                poll_interval=self.wait_interval,
                database=self.database,
            )
        else:
            from airflow.providers.standard.triggers.temporal import DateTimeTrigger

            trigger = DateTimeTrigger(moment=_now() + datetime.timedelta(seconds=self.wait_interval))
        self.defer(trigger=trigger, method_name="resume_after_wait")


def _room_for_smallest_batch(result: BatchResult, threshold: int) -> int | None:
    """Return the backlog at which the smallest batch fits under ``threshold``; ``None`` if unknown."""
    from airflow_provider_walthrottle.migrations.optimizer import segments_for_rows

    decision, health = result.decision, result.health
    if decision is None or decision.policy is None or health is None:
        return None
    wal_bytes_per_row = decision.estimate.wal_bytes_per_row if decision.estimate else None
    # before any batch measured its WAL, the optimizer asks for one whole segment of headroom
    needed = segments_for_rows(
        decision.policy.min_batch_size, health.status.wal_segment_size, wal_bytes_per_row
    )
    return max(threshold - (needed or 1), 0)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
