"""Autovacuum on the migrated table as a health indicator: GitLab's ``autovacuum_active_on_table``.

A batched migration and an autovacuum worker on the same table compete for the same pages, and the
migration's dead tuples are what the worker is there to clean: GitLab pauses a migration while
autovacuum processes its table. An **anti-wraparound** autovacuum always stops it: that worker is
not cancelled when another session needs a conflicting lock, so it must run to its end, and more
writes only lengthen it.

The table is the ``table`` of the
:class:`~airflow_provider_walthrottle.indicators.base.IndicatorContext`, named as the migration names
it (``schema.table``, or ``table`` in ``public``; no quotes); its partitions and TOAST tables count
as the table. The workers are read from ``pg_stat_progress_vacuum`` joined with
``pg_stat_activity`` (``backend_type = 'autovacuum worker'``; ``(to prevent wraparound)`` at the end
of its ``query``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from psycopg import sql

from airflow_provider_walthrottle.flags import AUTOVACUUM_HEALTH_FLAG
from airflow_provider_walthrottle.indicators.base import HealthIndicator, IndicatorContext, Reading
from airflow_provider_walthrottle.migrations.definition import parse_table_name
from airflow_provider_walthrottle.wal.health import Signal

if TYPE_CHECKING:
    from airflow_provider_walthrottle.indicators.base import Conversation

__all__ = ["AutovacuumIndicator"]

#: One row: the table's name as the server prints it (``NULL`` if there is no such table), the
#: relations a vacuum of it works on (the table, its partitions and their TOAST tables), the role's
#: name quoted for a ``GRANT``, and whether the role sees autovacuum workers' tables
#: (``pg_read_all_stats``, part of ``pg_monitor``; superusers have it). Readable by any role.
#: ``{schema}`` and ``{table}`` are literals, each taken as one identifier (quoted by
#: ``quote_ident``), as the migration itself quotes them.
TABLE_RELATIONS = sql.SQL(
    """
WITH target AS (
    SELECT to_regclass(quote_ident({schema}) || '.' || quote_ident({table})) AS relid
), relations AS (
    SELECT relid::oid AS relid FROM target WHERE relid IS NOT NULL
    UNION
    SELECT tree.relid::oid FROM target, pg_catalog.pg_partition_tree(target.relid) AS tree
)
SELECT
    (SELECT relid::text FROM target) AS table_name,
    ARRAY(
        SELECT relid FROM relations
        UNION
        SELECT c.reltoastrelid FROM relations JOIN pg_catalog.pg_class AS c ON c.oid = relations.relid
        WHERE c.reltoastrelid <> 0
    ) AS relids,
    quote_ident(current_user) AS role_name,
    pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS can_read_all_stats
"""
)

#: One row per vacuum in progress in this database: its process, the relation it works on, its
#: phase and heap progress, the process's ``backend_type``, whether its ``query`` says
#: ``(to prevent wraparound)``, and for how long its transaction has run. Readable by any role, but
#: an autovacuum worker runs as no role (``usesysid`` is ``NULL``), so a role without
#: ``pg_read_all_stats`` (``pg_monitor``) sees only its ``pid`` and database: ``relid``, the phase,
#: ``backend_type`` and ``query`` come back ``NULL`` (``query``: ``<insufficient privilege>``).
VACUUMS_IN_PROGRESS = sql.SQL(
    """
SELECT
    v.pid,
    v.relid::oid AS relid,
    v.relid::regclass::text AS relation,
    v.phase,
    v.heap_blks_total,
    v.heap_blks_scanned,
    a.backend_type,
    strpos(a.query, '(to prevent wraparound)') > 0 AS to_prevent_wraparound,
    extract(epoch FROM now() - a.xact_start)::float8 AS running_seconds
FROM pg_catalog.pg_stat_progress_vacuum AS v
LEFT JOIN pg_catalog.pg_stat_activity AS a ON a.pid = v.pid
WHERE v.datid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
ORDER BY v.pid
"""
)

_AUTOVACUUM_WORKER = "autovacuum worker"


def _progress(row: dict[str, Any]) -> str:
    total, scanned = row["heap_blks_total"], row["heap_blks_scanned"]
    parts = [f"phase {row['phase']}"]
    if total:
        parts.append(f"{100 * (scanned or 0) // total}% of the heap scanned")
    if row["running_seconds"] is not None:
        parts.append(f"running {row['running_seconds']:.0f} s")
    return ", ".join(parts)


class AutovacuumIndicator(HealthIndicator):
    """Stop while an autovacuum worker processes the migrated table; always for an anti-wraparound one.

    A manual ``VACUUM`` on the table is listed in the details but does not stop: it is somebody's
    decision, and it is cancelled like any other session.

    .. seealso:: :doc:`/howto/indicator-autovacuum`

    :param flag_variable: the flag's Variable, ``batched_migrations_health_status_autovacuum`` by
        default (GitLab's own name).
    :param flag_default: the flag while its Variable is missing.
    """

    name: ClassVar[str] = "autovacuum"
    default_flag_variable: ClassVar[str] = AUTOVACUUM_HEALTH_FLAG
    #: Always: without the migrated table there is nothing to watch, and the gate leaves it out.
    needs_table: ClassVar[bool] = True

    def conversation(self, context: IndicatorContext) -> Conversation:
        """Resolve the table, then read the vacuums in progress in this database.

        :param context: ``table``, the migrated table; without one, the reading is not available.
        """
        if context.table is None:
            return Reading(
                self.name, Signal.NOT_AVAILABLE, "no table to watch: this indicator needs the migrated table"
            )
        try:
            schema, table = parse_table_name(context.table)
        except ValueError as error:
            return Reading(self.name, Signal.UNKNOWN, str(error))
        rows = yield TABLE_RELATIONS.format(schema=sql.Literal(schema), table=sql.Literal(table))
        target = rows[0]
        if target["table_name"] is None:
            return Reading(
                self.name,
                Signal.UNKNOWN,
                f"table {schema}.{table} does not exist in this database (or this role may not see "
                "its schema); check the migration's table and the connection's database",
                details={"table": context.table},
            )
        vacuums = yield VACUUMS_IN_PROGRESS
        return _judge(self.name, target, vacuums)


def _judge(name: str, target: dict[str, Any], vacuums: list[dict[str, Any]]) -> Reading:
    """Return the reading for the table ``target`` (see :data:`TABLE_RELATIONS`) and ``vacuums``."""
    table = target["table_name"]
    relids = set(target["relids"])
    grant = f"GRANT pg_monitor TO {target['role_name']}"
    on_table = [v for v in vacuums if v["relid"] in relids and v["backend_type"] == _AUTOVACUUM_WORKER]
    hidden = [v for v in vacuums if v["relid"] is None]
    manual = [v for v in vacuums if v["relid"] in relids and v not in on_table]
    elsewhere = [v for v in vacuums if v["relid"] is not None and v["relid"] not in relids]
    wraparound = [v for v in on_table if v["to_prevent_wraparound"]]
    values: dict[str, float | int | None] = {
        "autovacuums_on_table": None if hidden else len(on_table),
        "anti_wraparound_autovacuums_on_table": None if hidden else len(wraparound),
    }
    details = {
        "table": table,
        "vacuums": [
            {
                "pid": v["pid"],
                "relation": v["relation"],
                "backend_type": v["backend_type"],
                "to_prevent_wraparound": v["to_prevent_wraparound"],
                "phase": v["phase"],
                "heap_blks_total": v["heap_blks_total"],
                "heap_blks_scanned": v["heap_blks_scanned"],
                "running_seconds": v["running_seconds"],
                "on_table": v in on_table,
            }
            for v in vacuums
        ],
        "can_read_all_stats": target["can_read_all_stats"],
    }
    if on_table:
        reasons = []
        for v in on_table:
            relation = table if v["relation"] == table else f"{v['relation']} (of {table})"
            if v["to_prevent_wraparound"]:
                reasons.append(
                    f"an anti-wraparound autovacuum (pid {v['pid']}) is vacuuming {relation}: it is not "
                    f"cancelled by lock conflicts and must finish first ({_progress(v)})"
                )
            else:
                reasons.append(f"autovacuum (pid {v['pid']}) is vacuuming {relation} ({_progress(v)})")
        return Reading(name, Signal.STOP, "; ".join(reasons), values, details)
    if hidden:
        pids = ", ".join(str(v["pid"]) for v in hidden)
        return Reading(
            name,
            Signal.UNKNOWN,
            f"{len(hidden)} vacuum(s) in progress in this database (pid {pids}) on a table this role "
            f"cannot see, maybe {table}: {grant}",
            values,
            details,
        )
    reason = f"no autovacuum is processing {table}"
    notes = [f"a manual VACUUM is (pid {v['pid']})" for v in manual]
    others = sorted({str(v["relation"]) for v in elsewhere})
    if others:
        notes.append(f"vacuums in progress on {', '.join(others)}")
    if notes:
        reason += f" ({'; '.join(notes)})"
    if not target["can_read_all_stats"]:
        reason += f"; this role would not see which table an autovacuum works on: {grant}"
    return Reading(name, Signal.NORMAL, reason, values, details)
