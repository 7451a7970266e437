"""The SQL of the shared WAL budget: the reservations of the batches running on one database.

Each running batch keeps one row in ``walthrottle.wal_reservations`` (created with the other state
tables, :data:`~airflow_provider_walthrottle.migrations.schema_queries.CREATE_STATE`): the WAL it
may still write before it asks again, under its job's id. A row counts only while its session holds
that job's advisory lock (namespace
:data:`~airflow_provider_walthrottle.migrations.schema_queries.LOCK_NAMESPACE`, the job's id), the
lock the job queue takes when it claims the job and drops when the job is released; when the
worker dies, PostgreSQL drops the lock with its session, and the row counts no more. ``pg_locks``
is readable by every role, so no privilege beyond the table's is needed.

Grants are serialized by a transaction-scoped advisory lock (:data:`LOCK_BUDGET`), taken in a
statement of its own: in ``READ COMMITTED`` a statement's snapshot is taken when it starts, so a
statement that took the lock and read the reservations at once could miss a grant committed while
it waited for the lock. :mod:`~airflow_provider_walthrottle.migrations.wal_budget` runs these.
"""

from __future__ import annotations

from psycopg import sql

from airflow_provider_walthrottle.migrations.schema_queries import LOCK_NAMESPACE, WAL_RESERVATIONS

#: The second key of the budget's lock (the first is ``LOCK_NAMESPACE``): no job has it (job ids
#: start at 1), and the creation of the state tables takes 0.
BUDGET_LOCK_KEY = -1

#: Whether the row ``r`` still counts: the session it names holds its job's advisory lock, in this
#: database. A predicate over ``r``, a row of the reservations.
_HELD = sql.SQL(
    """EXISTS (
    SELECT 1 FROM pg_catalog.pg_locks AS l
    WHERE l.locktype = 'advisory' AND l.granted AND l.pid = r.backend_pid
      AND l.database = (SELECT d.oid FROM pg_catalog.pg_database AS d WHERE d.datname = current_database())
      AND l.classid = {namespace}::oid AND l.objid = r.job_id::oid AND l.objsubid = 2)"""
).format(namespace=sql.Literal(LOCK_NAMESPACE))

#: Serialize the grants of the budget on this database until the transaction ends. One row; takes
#: a transaction-scoped advisory lock, which any role may take.
LOCK_BUDGET = sql.SQL("SELECT pg_advisory_xact_lock({}, {})").format(
    sql.Literal(LOCK_NAMESPACE), sql.Literal(BUDGET_LOCK_KEY)
)

#: The WAL insert position (``wal_position``, in bytes) and the reservations that count, but the
#: one of job ``job_id`` (NULL for none): their sum (``reserved_elsewhere``) and number
#: (``batches_elsewhere``). One row; no lock; needs SELECT on the reservations.
ROOM = sql.SQL(
    """
SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint AS wal_position,
       coalesce(sum(r.bytes), 0)::bigint AS reserved_elsewhere,
       count(r.job_id) AS batches_elsewhere
FROM {reservations} AS r
WHERE {held} AND r.job_id IS DISTINCT FROM %(job_id)s"""
).format(reservations=WAL_RESERVATIONS, held=_HELD)

#: The same as :data:`ROOM`, after deleting the rows that no longer count (their sessions ended or
#: released their jobs). Run under :data:`LOCK_BUDGET`; needs DELETE on the reservations.
ROOM_AFTER_CLEANUP = sql.SQL(
    """
WITH released AS (
    DELETE FROM {reservations} AS r WHERE NOT {held} RETURNING r.job_id
)
{room}"""
).format(reservations=WAL_RESERVATIONS, held=_HELD, room=ROOM)

#: Set the reservation of job ``job_id`` of migration ``migration`` to ``bytes``, for this session.
#: Run under :data:`LOCK_BUDGET`, by the session that holds the job. Returns nothing; takes the
#: row's lock; needs INSERT and UPDATE on the reservations.
RESERVE = sql.SQL(
    """
INSERT INTO {} AS r (job_id, migration_name, backend_pid, bytes)
VALUES (%(job_id)s, %(migration)s, pg_backend_pid(), %(bytes)s)
ON CONFLICT (job_id) DO UPDATE
SET migration_name = excluded.migration_name, bytes = excluded.bytes, updated_at = now(),
    reserved_at = CASE WHEN r.backend_pid = excluded.backend_pid THEN r.reserved_at ELSE now() END,
    backend_pid = excluded.backend_pid"""
).format(WAL_RESERVATIONS)

#: Lower this session's reservation of job ``job_id`` to ``bytes`` (never raise it: that takes
#: :data:`LOCK_BUDGET`), and return what the other reservations that count hold
#: (``reserved_elsewhere``). One row; takes the row's lock; needs UPDATE on the reservations.
SHRINK = sql.SQL(
    """
WITH mine AS (
    UPDATE {reservations} SET bytes = least(bytes, %(bytes)s), updated_at = now()
    WHERE job_id = %(job_id)s AND backend_pid = pg_backend_pid()
)
SELECT coalesce(sum(r.bytes), 0)::bigint AS reserved_elsewhere
FROM {reservations} AS r
WHERE {held} AND r.job_id <> %(job_id)s"""
).format(reservations=WAL_RESERVATIONS, held=_HELD)

#: Drop this session's reservation of job ``job_id``. Returns nothing; takes the row's lock; needs
#: DELETE on the reservations.
RELEASE = sql.SQL("DELETE FROM {} WHERE job_id = %(job_id)s AND backend_pid = pg_backend_pid()").format(
    WAL_RESERVATIONS
)

#: Every reservation, in the fields of :class:`~.wal_budget.Reservation`, oldest first; ``live``
#: says whether it counts. No lock; needs SELECT on the reservations.
RESERVATIONS = sql.SQL(
    """
SELECT r.job_id, r.migration_name, r.backend_pid, r.bytes, r.reserved_at, r.updated_at, {held} AS live
FROM {reservations} AS r
ORDER BY r.reserved_at, r.job_id"""
).format(reservations=WAL_RESERVATIONS, held=_HELD)
