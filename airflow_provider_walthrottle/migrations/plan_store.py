"""Keep a migration's plan in its database, so that the migrations page can show it before and while it runs.

A plan (:class:`~airflow_provider_walthrottle.migrations.plan.MigrationPlan`) is saved as JSON in
``walthrottle.batched_migration_plans``, one per migration name, by ``walthrottle plan --save
NAME``, the operator's ``plan()`` and its first run; saving again replaces it. It keeps its
definition's ``fingerprint`` (table, key column, ``batch_sql``, scope): when the migration that
runs under the name has another, the plan is **stale**: it was made for something else. The table
has no foreign key to the migrations, since a plan is usually saved before its migration starts.

Plain Python over psycopg; the SQL is in
:mod:`~airflow_provider_walthrottle.migrations.plan_store_queries`, the table's DDL with the other
state tables' in :mod:`~airflow_provider_walthrottle.migrations.schema_queries`.

.. seealso:: :doc:`/howto/plan`
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from airflow_provider_walthrottle.migrations import plan_store_queries
from airflow_provider_walthrottle.migrations.registry import MigrationRegistry
from airflow_provider_walthrottle.migrations.table import MigrationTable

if TYPE_CHECKING:
    import datetime

    import psycopg

    from airflow_provider_walthrottle.migrations.definition import MigrationDefinition
    from airflow_provider_walthrottle.migrations.plan import MigrationPlan


@dataclass(frozen=True)
class StoredPlan:
    """A migration's plan as it was saved.

    :param migration_name: the migration's name.
    :param fingerprint: the fingerprint of the definition it was made for.
    :param planned_at: when it was saved.
    :param plan: the plan, as :meth:`MigrationPlan.to_dict
        <airflow_provider_walthrottle.migrations.plan.MigrationPlan.to_dict>` returned it (its
        tuples read back as lists).
    """

    migration_name: str
    fingerprint: str
    planned_at: datetime.datetime
    plan: dict[str, Any]


@dataclass(frozen=True)
class PlanOfMigration:
    """A stored plan with what the migration of its name did so far, as the migrations page reads it.

    :param stored: the plan.
    :param migration_fingerprint: the running (or finished) migration's fingerprint; ``None`` when
        no migration of that name has started.
    :param migration_wal_bytes_per_row: the migration's own estimate of its WAL per key (the
        optimizer's), ``None`` before its first batch.
    :param wal_bytes: the WAL its jobs wrote so far (the whole server's, during their sub-batches).
    :param keys_done: the keys its jobs walked so far.
    """

    stored: StoredPlan
    migration_fingerprint: str | None = None
    migration_wal_bytes_per_row: float | None = None
    wal_bytes: int = 0
    keys_done: int = 0

    @property
    def name(self) -> str:
        """The migration's name."""
        return self.stored.migration_name

    @property
    def started(self) -> bool:
        """Whether a migration of that name has started (it has a row in the state tables)."""
        return self.migration_fingerprint is not None

    @property
    def stale(self) -> bool:
        """Whether the migration that started under the name is not the one the plan was made for."""
        return self.started and self.migration_fingerprint != self.stored.fingerprint

    @property
    def measured_wal_bytes_per_row(self) -> float | None:
        """WAL per key so far: the jobs' WAL over their keys, else the migration's estimate."""
        if self.keys_done > 0:
            return self.wal_bytes / self.keys_done
        return self.migration_wal_bytes_per_row


def save_plan(conn: psycopg.Connection[Any], definition: MigrationDefinition, plan: MigrationPlan) -> None:
    """Save ``plan`` as the plan of ``definition``'s migration, replacing the one saved under its name.

    Creates the state tables if they are missing (as a migration's first run does). The plan is kept
    with the definition's fingerprint and the time of saving.

    :param conn: a connection whose role may create the state tables (or they exist) and write them.
    :param definition: the migration the plan was computed for.
    :param plan: its plan, from :func:`~airflow_provider_walthrottle.migrations.plan.compute_plan`.
    :raises ValueError: if the plan is of another table or key column than the definition.
    """
    table = MigrationTable(definition)
    if (plan.table, plan.column) != (table.qualified_name, definition.column):
        raise ValueError(
            f"the plan is of {plan.table}.{plan.column}, but migration {definition.name!r} walks "
            f"{table.qualified_name}.{definition.column}; plan the migration's own definition"
        )
    MigrationRegistry(conn, table).ensure_state_tables()
    with conn.transaction(), conn.cursor() as cursor:
        cursor.execute(
            plan_store_queries.SAVE_PLAN,
            {"name": definition.name, "fingerprint": definition.fingerprint, "plan": Jsonb(plan.to_dict())},
        )


def load_plan(conn: psycopg.Connection[Any], name: str) -> StoredPlan | None:
    """Return the plan saved under ``name``; ``None`` if there is none.

    :param conn: a connection to the database (read-only is enough).
    :param name: the migration's name.
    """
    return _load(conn, name).get(name)


def load_plans(conn: psycopg.Connection[Any]) -> dict[str, StoredPlan]:
    """Return every saved plan, by migration name; ``{}`` when none was ever saved.

    :param conn: a connection to the database (read-only is enough).
    """
    return _load(conn, None)


def read_plans(conn: psycopg.Connection[Any], *, name: str | None = None) -> list[PlanOfMigration]:
    """Return the saved plans with what their migrations did so far, most recently planned first.

    :param conn: a connection to the database (read-only is enough), whose role may read the
        state tables.
    :param name: only this migration's plan.
    """
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(plan_store_queries.PLANS_TABLE_EXISTS)
        table = cursor.fetchone()
        if not table or not table["exist"]:
            return []
        cursor.execute(plan_store_queries.PLANS_WITH_MIGRATIONS, {"name": name})
        rows = cursor.fetchall()
    return [
        PlanOfMigration(
            stored=_stored(row),
            migration_fingerprint=row["migration_fingerprint"],
            migration_wal_bytes_per_row=row["migration_wal_bytes_per_row"],
            wal_bytes=row["wal_bytes"],
            keys_done=row["keys_done"],
        )
        for row in rows
    ]


def _load(conn: psycopg.Connection[Any], name: str | None) -> dict[str, StoredPlan]:
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(plan_store_queries.PLANS_TABLE_EXISTS)
        table = cursor.fetchone()
        if not table or not table["exist"]:
            return {}
        cursor.execute(plan_store_queries.LOAD_PLANS, {"name": name})
        return {row["migration_name"]: _stored(row) for row in cursor.fetchall()}


def _stored(row: dict[str, Any]) -> StoredPlan:
    return StoredPlan(
        migration_name=row["migration_name"],
        fingerprint=row["fingerprint"],
        planned_at=row["planned_at"],
        plan=row["plan"],
    )
