"""Compose the flag, the sensor and the operator into a task group or a whole migration DAG.

With :func:`batched_migration_dag` a migration DAG is one call; with :func:`wal_throttled_migration`
the same tasks go into a DAG of your own. Nothing here touches a database: it only builds tasks.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import TYPE_CHECKING, Any

import pendulum
from airflow.sdk import (
    DAG,
    Asset,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    DeltaTriggerTimetable,
    TaskGroup,
)

from airflow_provider_walthrottle.flags import WAL_HEALTH_FLAG
from airflow_provider_walthrottle.operators.batched_migration import BatchedMigrationOperator
from airflow_provider_walthrottle.sensors.wal_archival import WalArchivalSensor
from airflow_provider_walthrottle.wal.health import DEFAULT_MAX_PENDING_SEGMENTS

if TYPE_CHECKING:
    from collections.abc import Mapping

    # by its full name in hints, which the docs then show as such (no Airflow inventory to link to)
    import airflow.sdk.bases.timetable

#: Retries of each batch: a failed batch is retried first, from where it stopped.
DEFAULT_RETRIES = 3
DEFAULT_RETRY_DELAY = datetime.timedelta(minutes=1)


def wal_throttled_migration(
    *,
    postgres_conn_id: str,
    migration_name: str,
    table: str,
    column: str,
    batch_sql: str,
    scope: str | None = None,
    group_id: str | None = None,
    max_pending_segments: int | str = DEFAULT_MAX_PENDING_SEGMENTS,
    flag_variable: str = WAL_HEALTH_FLAG,
    flag_default: bool = False,
    concurrency: int = 1,
    pool: str | None = None,
    retries: int = DEFAULT_RETRIES,
    retry_delay: datetime.timedelta = DEFAULT_RETRY_DELAY,
    poke_interval: float = 60.0,
    sensor_kwargs: Mapping[str, Any] | None = None,
    operator_kwargs: Mapping[str, Any] | None = None,
) -> TaskGroup:
    """
    Add a task group ``flag → WalArchivalSensor → BatchedMigrationOperator`` to the current DAG.

    Call it inside a ``with DAG(...)`` block. The sensor gates each run on the WAL backlog (behind
    the flag); the operator applies one batch and re-checks between sub-batches. Both use the same
    connection, threshold and flag, and both ask the flag for the migration's name, so an
    ``actors`` list or a percentage rollout turns them on or off together.

    .. seealso::
        :doc:`/howto/migration_dag`

    :param postgres_conn_id: the Airflow connection to the PostgreSQL primary.
    :param migration_name: the migration's name; also the task group's id unless ``group_id`` is given.
    :param table: the table, ``schema.table`` or ``table``.
    :param column: the unique key column.
    :param batch_sql: the statement per sub-batch, with ``%(start)s`` and ``%(end)s``.
    :param scope: an optional SQL condition that narrows the rows.
    :param group_id: the task group's id.
    :param max_pending_segments: the WAL threshold.
    :param flag_variable: the feature flag's Variable.
    :param flag_default: the flag's answer while its Variable is missing.
    :param concurrency: batches of this migration running at once, across all runs of the DAG
        (``max_active_tis_per_dag``): 1 by default, as a one-slot pool would give.
    :param pool: an Airflow pool for the batch task, e.g. one slot shared by several migrations of
        one database (create it with ``airflow pools set NAME 1 "..."``).
    :param retries: retries of the batch task (with exponential backoff from ``retry_delay``).
    :param retry_delay: the first delay between retries.
    :param poke_interval: seconds between two checks of the backlog while waiting.
    :param sensor_kwargs: more arguments for the sensor.
    :param operator_kwargs: more arguments for the operator.
    """
    with TaskGroup(
        group_id=group_id or migration_name, tooltip=f"batched migration {migration_name}"
    ) as group:
        wait = WalArchivalSensor(
            task_id="wait_for_wal_archival",
            postgres_conn_id=postgres_conn_id,
            max_pending_segments=max_pending_segments,
            flag_variable=flag_variable,
            flag_default=flag_default,
            # the operator asks the flag for the migration's name: both must get the same answer
            flag_actor=migration_name,
            poke_interval=poke_interval,
            retries=retries,
            retry_delay=retry_delay,
            **dict(sensor_kwargs or {}),
        )
        extra: dict[str, Any] = {"pool": pool} if pool else {}
        batch = BatchedMigrationOperator(
            task_id="apply_batch",
            postgres_conn_id=postgres_conn_id,
            migration_name=migration_name,
            table=table,
            column=column,
            batch_sql=batch_sql,
            scope=scope,
            max_pending_segments=max_pending_segments,
            flag_variable=flag_variable,
            flag_default=flag_default,
            wait_interval=poke_interval,
            max_active_tis_per_dag=concurrency,
            retries=retries,
            retry_delay=retry_delay,
            retry_exponential_backoff=True,
            **extra,
            **dict(operator_kwargs or {}),
        )
        wait >> batch
    return group


def batch_asset(dag_id: str) -> Asset:
    """
    Return the asset that the batch task of a back-to-back migration DAG updates with each batch.

    The DAG is scheduled on it (see :class:`BackToBack`). Other DAGs may be scheduled on it too, to
    follow the migration batch by batch.

    :param dag_id: the migration DAG's id.
    """
    return Asset(name=f"walthrottle/{dag_id}/batch_applied", group="walthrottle")


@dataclasses.dataclass(frozen=True)
class BackToBack:
    """
    Run a migration's batches back to back, and stop once it is finished: the default schedule.

    The batch task of a DAG from :func:`batched_migration_dag` then updates the DAG's own asset
    (:func:`batch_asset`) each time it applies a batch, and the DAG is scheduled on that asset or on
    a timetable (Airflow's ``AssetOrTimeSchedule``):

    - each applied batch starts the next run at once, as ``"@continuous"`` would;
    - a finished migration's batch task ends skipped and updates nothing, so the chain stops by
      itself, where ``"@continuous"`` would start a skipped run every few seconds forever;
    - ``every`` starts the first run once the DAG is unpaused, starts the chain again after a run
      that did not apply a batch (a failure, the kill switch with ``on_paused="skip"``), and gives
      ``airflow backfill create`` its logical dates, one per ``every``. A finished migration runs
      (skipped) once per ``every``, as a DAG scheduled every ``every`` alone would.

    .. seealso::
        :doc:`/howto/migration_dag`

    :param every: the time part: a ``timedelta``, or a cron expression read in the DAG's start
        date's time zone (``"@hourly"``, ``"*/10 * * * *"``).
    """

    every: datetime.timedelta | str = datetime.timedelta(minutes=5)

    def schedule(self, *, dag_id: str, start_date: datetime.datetime) -> AssetOrTimeSchedule:
        """Return the DAG's schedule: its batch asset, or the time part.

        :param dag_id: the DAG's id, which names its asset.
        :param start_date: the DAG's start date, whose time zone a cron expression is read in.
        """
        return AssetOrTimeSchedule(timetable=self._time_part(start_date), assets=batch_asset(dag_id))

    def _time_part(self, start_date: datetime.datetime) -> airflow.sdk.bases.timetable.BaseTimetable:
        # what DAG(schedule=every) builds by default in Airflow 3: a trigger timetable, a run per tick
        if isinstance(self.every, datetime.timedelta):
            return DeltaTriggerTimetable(self.every)
        if isinstance(self.every, str):
            # as DAG reads it: in the start date's zone (pendulum takes a naive one as UTC)
            return CronTriggerTimetable(self.every, timezone=pendulum.instance(start_date).timezone or "UTC")
        raise TypeError(f"BackToBack(every=...) takes a timedelta or a cron expression, got {self.every!r}")


#: The default schedule of :func:`batched_migration_dag`.
BACK_TO_BACK = BackToBack()


def batched_migration_dag(
    *,
    dag_id: str,
    start_date: datetime.datetime,
    schedule: BackToBack | str | datetime.timedelta | airflow.sdk.bases.timetable.BaseTimetable | None = (
        BACK_TO_BACK
    ),
    max_active_runs: int = 1,
    catchup: bool = False,
    tags: list[str] | None = None,
    dag_kwargs: Mapping[str, Any] | None = None,
    **migration: Any,
) -> DAG:
    """
    Return a DAG that applies one batch of a migration per run, by default back to back.

    Each run waits on the WAL backlog, then applies one batch; once the migration is finished its
    runs end with the batch skipped. By default (:class:`BackToBack`) the next run starts as soon
    as a batch is applied, and a finished migration stops starting them. Backfills
    (``airflow backfill create``) are safe: every range is applied exactly once whatever the number
    of runs.

    .. seealso::
        :doc:`/howto/migration_dag`

    :param dag_id: the DAG's id.
    :param start_date: the DAG's start date.
    :param schedule: :class:`BackToBack` (the default: the next batch as soon as the last one is
        applied, and a run every 5 minutes to start and restart the chain), or anything ``DAG``
        takes, such as ``"@daily"`` or a ``timedelta``: then each run applies one batch, and
        nothing else starts the next one.
    :param max_active_runs: runs at once; their batches are still limited by ``concurrency``.
    :param catchup: whether the scheduler creates runs for past intervals.
    :param tags: the DAG's tags; ``walthrottle`` is always added.
    :param dag_kwargs: more arguments for the DAG, e.g. ``end_date`` or ``default_args``.
    :param migration: the arguments of :func:`wal_throttled_migration`.
    """
    if isinstance(schedule, BackToBack):
        operator_kwargs = dict(migration.get("operator_kwargs") or {})
        operator_kwargs["outlets"] = [*operator_kwargs.get("outlets", ()), batch_asset(dag_id)]
        migration = {**migration, "operator_kwargs": operator_kwargs}
        schedule = schedule.schedule(dag_id=dag_id, start_date=start_date)
    with DAG(
        dag_id=dag_id,
        schedule=schedule,
        start_date=start_date,
        catchup=catchup,
        max_active_runs=max_active_runs,
        tags=sorted({"walthrottle", *(tags or [])}),
        doc_md=f"Batched migration `{migration.get('migration_name')}`, throttled on the WAL backlog.",
        **dict(dag_kwargs or {}),
    ) as dag:
        wal_throttled_migration(**migration)
    return dag
