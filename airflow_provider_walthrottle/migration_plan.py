"""The plan of an operator's migration: from its arguments and its DAG's schedule, and at its first run.

:func:`plan_task` is what the operator's
:meth:`~airflow_provider_walthrottle.operators.batched_migration.BatchedMigrationOperator.plan`
does, and :func:`plan_first_run` what its first run of a new migration does. Both plan with
:func:`~airflow_provider_walthrottle.migrations.plan.compute_plan`, with the arguments
:func:`plan_options` reads from the operator: the plan is the CLI's, for the migration as it will run.

.. seealso:: :doc:`/howto/plan`
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

import pendulum
import psycopg

from airflow_provider_walthrottle.config import configured_first_run_plan, configured_plan_archiver_window
from airflow_provider_walthrottle.exceptions import WalThrottleError, first_line
from airflow_provider_walthrottle.gate import HealthGate
from airflow_provider_walthrottle.migrations.plan import MigrationPlanError, compute_plan
from airflow_provider_walthrottle.migrations.plan_options import PlanOptions
from airflow_provider_walthrottle.migrations.plan_store import save_plan

if TYPE_CHECKING:
    # by its full name in hints, which the docs then show as such (no Airflow inventory to link to)
    import airflow.sdk

    from airflow_provider_walthrottle.migrations.plan import MigrationPlan
    from airflow_provider_walthrottle.migrations.store import MigrationStore
    from airflow_provider_walthrottle.operators.batched_migration import BatchedMigrationOperator

#: The XCom key the first run of a new migration pushes its plan under, as ``plan.to_dict()``.
PLAN_XCOM_KEY = "plan"

#: A cron schedule's interval is the mean gap between its next this many runs, so that a schedule
#: of weekdays only counts its weekends.
CRON_RUNS_AVERAGED = 10


def schedule_interval_seconds(timetable: object, *, now: datetime.datetime | None = None) -> float | None:
    """Return the seconds between two runs of a DAG on ``timetable``; ``None`` for back to back.

    - a ``timedelta`` schedule (a timetable with a ``delta``, as Airflow's ``DeltaTriggerTimetable``
      and ``DeltaDataIntervalTimetable`` have): the delta;
    - a cron schedule (a timetable with a cron ``expression``, as ``CronTriggerTimetable`` and
      ``CronDataIntervalTimetable`` have): the mean gap between its next :data:`CRON_RUNS_AVERAGED`
      runs, read in its time zone;
    - anything else: ``None``. That is ``"@continuous"``, an asset schedule (which the helper's
      back-to-back schedule, :class:`~airflow_provider_walthrottle.migration_dag.BackToBack`, is:
      each batch starts the next run), and ``None`` or ``"@once"``, whose runs someone triggers.

    :param timetable: the DAG's ``timetable``, or ``None`` for a task without a DAG.
    :param now: where a cron schedule's runs are counted from; now by default.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    delta = getattr(timetable, "delta", None)
    if delta is not None:  # a timedelta, or a dateutil relativedelta ("every month")
        return float(((now + delta) - now).total_seconds())
    expression = getattr(timetable, "expression", None)
    if isinstance(expression, str):
        from croniter import croniter  # Airflow's own cron library

        zone = getattr(timetable, "timezone", None) or "UTC"
        start = now.astimezone(pendulum.timezone(zone) if isinstance(zone, str) else zone)
        runs = croniter(expression, start)
        times = [runs.get_next(datetime.datetime) for _ in range(CRON_RUNS_AVERAGED + 1)]
        return (times[-1] - times[0]).total_seconds() / CRON_RUNS_AVERAGED
    return None


def plan_options(task: BatchedMigrationOperator) -> PlanOptions:
    """Return the plan options of the operator's migration, from its own arguments and its DAG.

    The threshold is the one its health gate keeps under (its rendered ``max_pending_segments``, or
    the WAL indicator's among its ``indicators``); the batches are ``batch_size``,
    ``min_batch_size``, ``max_batch_size`` and ``target_batch_seconds``; ``sub_batch_size``, when set,
    is the sample's keys per range; the interval is its DAG's (:func:`schedule_interval_seconds`).

    :param task: the operator.
    :raises ValueError: for a threshold that is not a whole number (a template not rendered yet).
    """
    gate = HealthGate.for_task(task, actor=task.migration_name, table=task.table)
    timetable = task.dag.timetable if task.has_dag() else None
    return PlanOptions.for_run(
        max_pending_segments=gate.max_pending_segments,
        first_batch_size=task.batch_size,
        policy=task.policy,
        sub_batch_size=task.sub_batch_size,
        interval_seconds=schedule_interval_seconds(timetable),
    )


def plan_task(task: BatchedMigrationOperator, *, save: bool = False, **overrides: Any) -> MigrationPlan:
    """Plan the operator's migration on its hook's connection, without changing a row.

    The arguments are :func:`plan_options`' (the operator's own and its DAG's interval), then the
    overrides. Outside a task, the operator's templated fields are taken as written.

    :param task: the operator.
    :param save: also save the plan under the migration's name
        (:func:`~airflow_provider_walthrottle.migrations.plan_store.save_plan`), for the
        migrations page.
    :param overrides: :func:`~airflow_provider_walthrottle.migrations.plan.compute_plan`'s keyword
        arguments, over :func:`plan_options`'.
    :raises MigrationDefinitionError: for a table, key column, scope or ``batch_sql`` that does not fit.
    :raises MigrationPlanError: when the sample times out, waits too long for a lock, or fails.
    :raises WalThrottleError: when the connection is not defined or the server cannot be reached.
    """
    arguments = {**plan_options(task).arguments(), **overrides}
    definition = task.definition
    with task.hook.connect() as conn:
        plan = compute_plan(conn, definition, **arguments)
        if save:
            save_plan(conn, definition, plan)
    return plan


def plan_first_run(
    task: BatchedMigrationOperator, store: MigrationStore, context: airflow.sdk.Context
) -> MigrationPlan | None:
    """Plan a migration in the run that registered it: log the plan, push it as XCom, keep it.

    It plans only when this run registered the migration
    (:attr:`~airflow_provider_walthrottle.migrations.registry.MigrationRegistry.registered_now`): a
    retry, a later run or a resumed wait never plans again, and of two first runs that race, the
    one whose registration won plans. ``[walthrottle] first_run_plan = False`` turns it off, and
    ``[walthrottle] plan_archiver_window_seconds`` is how long it watches the archiver.

    The plan is logged as one block, pushed as the XCom :data:`PLAN_XCOM_KEY` and saved with
    :func:`~airflow_provider_walthrottle.migrations.plan_store.save_plan`. A plan that fails (its
    sample's lock or statement timeout, a failing ``batch_sql``, an option set wrong) logs one
    warning that says why, and the batch goes on; a ``batch_sql`` that fails then fails the batch
    with its own error.

    :param task: the operator.
    :param store: the migration's store, from
        :func:`~airflow_provider_walthrottle.migrations.runner.prepare` in this run.
    :param context: the task's context.
    :return: the plan, or ``None`` when it did not plan.
    """
    if not store.registry.registered_now:
        return None
    name = task.migration_name
    try:
        if not configured_first_run_plan():
            return None
        arguments = plan_options(task).arguments()
        window = configured_plan_archiver_window()
        plan = compute_plan(store.conn, store.definition, archiver_window_seconds=window, **arguments)
    except (MigrationPlanError, WalThrottleError, ValueError, psycopg.Error) as error:
        task.log.warning(
            "Migration %s: not planned at its first run, the batch goes on: %s", name, first_line(error)
        )
        return None
    task.log.info("Migration %s, planned at its first run:\n%s", name, plan.render())
    context["ti"].xcom_push(key=PLAN_XCOM_KEY, value=plan.to_dict())
    try:
        save_plan(store.conn, store.definition, plan)
    except psycopg.Error as error:
        task.log.warning(
            "Migration %s: its plan was not kept in the state tables: %s", name, first_line(error)
        )
    return plan
