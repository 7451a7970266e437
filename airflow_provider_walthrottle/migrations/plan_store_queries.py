"""The SQL of the stored plans: ``walthrottle.batched_migration_plans``, one plan per migration name.

The table is created with the other state tables
(:data:`~airflow_provider_walthrottle.migrations.schema_queries.CREATE_STATE`); a plan's
``fingerprint`` is its definition's, so that a plan saved for another definition under the same
name reads as stale. :mod:`~airflow_provider_walthrottle.migrations.plan_store` runs these.
"""

from __future__ import annotations

from psycopg import sql

from airflow_provider_walthrottle.migrations.schema_queries import JOBS, MIGRATIONS, PLANS, STATE_SCHEMA

#: One row: whether the plans' table exists (``exist``); a database whose state tables were created
#: before it, and where no task or ``save_plan`` ran since, has none. No lock; readable by any role.
PLANS_TABLE_EXISTS = sql.SQL("SELECT to_regclass({}) IS NOT NULL AS exist").format(
    sql.Literal(f"{STATE_SCHEMA}.batched_migration_plans")
)

#: Save a migration's plan, replacing the plan saved under its name, if any, and its time:
#: ``name``, ``fingerprint``, ``plan`` (``jsonb``). Returns nothing. Takes the row's lock.
SAVE_PLAN = sql.SQL(
    """
INSERT INTO {} AS p (migration_name, fingerprint, plan, planned_at)
VALUES (%(name)s, %(fingerprint)s, %(plan)s, now())
ON CONFLICT (migration_name) DO UPDATE
SET fingerprint = excluded.fingerprint, plan = excluded.plan, planned_at = excluded.planned_at"""
).format(PLANS)

#: The stored plans, in the fields of :class:`~.plan_store.StoredPlan`, by name: ``name`` (NULL for
#: all). No lock; readable with SELECT on the plans' table.
LOAD_PLANS = sql.SQL(
    """
SELECT migration_name, fingerprint, planned_at, plan FROM {}
WHERE %(name)s::text IS NULL OR migration_name = %(name)s
ORDER BY migration_name"""
).format(PLANS)

#: The stored plans with what their migrations did so far, most recently planned first: the
#: plan's fields; the migration's ``migration_fingerprint`` (NULL: no migration of that name has
#: started) and its ``migration_wal_bytes_per_row`` (the optimizer's estimate); the WAL its jobs
#: wrote, ``wal_bytes``, over the keys they walked, ``keys_done`` (both 0 before its first
#: sub-batch). ``name`` (NULL for all). No lock; reads the jobs by ``migration_name``; needs SELECT
#: on the three state tables.
PLANS_WITH_MIGRATIONS = sql.SQL(
    """
SELECT p.migration_name, p.fingerprint, p.planned_at, p.plan,
       m.fingerprint AS migration_fingerprint, m.wal_bytes_per_row AS migration_wal_bytes_per_row,
       coalesce(w.wal_bytes, 0)::bigint AS wal_bytes, coalesce(w.keys_done, 0)::bigint AS keys_done
FROM {plans} AS p
LEFT JOIN {migrations} AS m ON m.name = p.migration_name
LEFT JOIN LATERAL (
    SELECT sum(j.wal_bytes) AS wal_bytes, sum(j.keys_done) AS keys_done
    FROM {jobs} AS j WHERE j.migration_name = m.name
) AS w ON true
WHERE %(name)s::text IS NULL OR p.migration_name = %(name)s
ORDER BY p.planned_at DESC, p.migration_name"""
).format(plans=PLANS, migrations=MIGRATIONS, jobs=JOBS)
