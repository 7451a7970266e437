"""Replication slot retention as a health indicator: the WAL that slots keep the primary from recycling.

A slot keeps every WAL segment from its ``restart_lsn`` on until its consumer confirms it: a CDC
consumer (Debezium, a logical subscriber) or a standby that falls behind during a big migration
makes the primary keep the migration's WAL until ``pg_wal`` fills the disk, or, with
``max_slot_wal_keep_size`` set, until the slot loses WAL it needs and its consumer must be rebuilt.
None of gh-ost, pt-online-schema-change or GitLab watches slots; this indicator does.

For each slot in ``pg_replication_slots`` (logical and physical, active and inactive):

- **retained**: ``pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)``, compared with
  ``max_retained_bytes``;
- **wal_status**: ``unreserved`` (its WAL goes at the next checkpoint) and ``lost`` (it is gone)
  stop at once;
- **safe_wal_size**: with ``max_slot_wal_keep_size`` set, the WAL that may still be written before
  the slot is lost; below the next batch's projected WAL, the batch would break the slot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from psycopg import sql

from airflow_provider_walthrottle.flags import REPLICATION_SLOTS_HEALTH_FLAG
from airflow_provider_walthrottle.indicators.base import (
    HealthIndicator,
    IndicatorContext,
    Reading,
    format_bytes,
    fraction_of,
    non_negative_number,
)
from airflow_provider_walthrottle.wal.health import Signal

if TYPE_CHECKING:
    from airflow_provider_walthrottle.indicators.base import Conversation

__all__ = ["DEFAULT_MAX_RETAINED_BYTES", "ReplicationSlotsIndicator"]

#: 1 GiB, PostgreSQL's default ``max_wal_size``: the WAL a server is sized to keep in ``pg_wal``
#: between checkpoints. A slot that retains more makes ``pg_wal`` grow past it (``wal_status``
#: ``extended``). A batch of 100,000 rows at the 346 WAL bytes per row measured in
#: docs/performance.md writes about 35 MB, which a logical slot retains until its consumer confirms
#: the commit: a consumer that keeps up stays far below the bound.
DEFAULT_MAX_RETAINED_BYTES = 1024 * 1024 * 1024

#: One row: whether the server is a standby. Readable by any role.
SERVER_STATE = sql.SQL("SELECT pg_is_in_recovery() AS in_recovery")

#: One row per replication slot: its name, type, plugin, database, whether it is active and by which
#: process, ``wal_status``, the WAL it retains in bytes and ``safe_wal_size``, with the server's
#: ``max_slot_wal_keep_size``. Readable by any role: ``pg_replication_slots`` and
#: ``pg_current_wal_lsn()`` are granted to ``PUBLIC`` and hide nothing from a role without
#: ``pg_monitor``. ``pg_current_wal_lsn()`` fails during recovery: run on a primary only.
SLOTS = sql.SQL(
    """
SELECT
    slot_name,
    slot_type,
    plugin,
    database,
    temporary,
    active,
    active_pid,
    wal_status,
    restart_lsn::text AS restart_lsn,
    greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint AS retained_bytes,
    safe_wal_size,
    current_setting('max_slot_wal_keep_size') AS max_slot_wal_keep_size
FROM pg_catalog.pg_replication_slots
ORDER BY slot_name
"""
)


def _slot_label(row: dict[str, Any]) -> str:
    state = "active" if row["active"] else "inactive"
    where = f", database {row['database']}" if row["database"] else ""
    plugin = f" ({row['plugin']}{where})" if row["plugin"] else ""
    return f"{state} {row['slot_type']} slot {row['slot_name']}{plugin}"


class ReplicationSlotsIndicator(HealthIndicator):
    """Stop while a replication slot retains too much WAL, or is about to lose the WAL it needs.

    Every slot counts: logical and physical (a standby's), active and inactive. An inactive slot
    (nobody streams from it) is the usual culprit: it retains WAL for as long as it exists.

    .. seealso:: :doc:`/howto/indicator-replication-slots`

    :param max_retained_bytes: the most WAL a slot may retain, in bytes; only more stops
        (templated). 1 GiB, PostgreSQL's default ``max_wal_size``.
    :param flag_variable: the flag's Variable, ``batched_migrations_health_status_replication_slots``
        by default.
    :param flag_default: the flag while its Variable is missing.
    """

    name: ClassVar[str] = "replication_slots"
    default_flag_variable: ClassVar[str] = REPLICATION_SLOTS_HEALTH_FLAG
    template_fields: ClassVar[tuple[str, ...]] = ("max_retained_bytes",)

    def __init__(
        self,
        *,
        max_retained_bytes: int | str = DEFAULT_MAX_RETAINED_BYTES,
        flag_variable: str | None = None,
        flag_default: bool = False,
    ) -> None:
        super().__init__(flag_variable=flag_variable, flag_default=flag_default)
        if not isinstance(max_retained_bytes, str):  # else checked once the template is rendered
            non_negative_number("max_retained_bytes", max_retained_bytes, unit="bytes", integral=True)
        self.max_retained_bytes = max_retained_bytes

    @property
    def threshold(self) -> int:
        """The rendered ``max_retained_bytes`` as a number.

        :raises ValueError: if it is not a whole number of bytes, 0 or more.
        """
        return int(
            non_negative_number("max_retained_bytes", self.max_retained_bytes, unit="bytes", integral=True)
        )

    def validate(self) -> None:
        """Check the rendered threshold.

        :raises ValueError: if it is not a whole number of bytes, 0 or more.
        """
        _ = self.threshold

    def conversation(self, context: IndicatorContext) -> Conversation:
        """Read every slot and judge its retention, ``wal_status`` and ``safe_wal_size``.

        :param context: ``next_batch_wal_bytes``, compared with each slot's ``safe_wal_size``.
        """
        limit = self.threshold
        server = (yield SERVER_STATE)[0]
        if server["in_recovery"]:
            return Reading(
                self.name,
                Signal.NOT_AVAILABLE,
                "this server is a standby (in recovery): the slots that hold WAL back from a migration "
                "are the primary's; point the connection at the primary",
                values={"slots": None, "max_slot_retained_bytes": None, "max_retained_bytes": limit},
            )
        rows = yield SLOTS
        return _judge(self.name, rows, limit, context.next_batch_wal_bytes)

    def serialize(self) -> dict[str, Any]:
        """Return the keyword arguments that rebuild this indicator."""
        return {"max_retained_bytes": self.max_retained_bytes, **super().serialize()}


def _judge(name: str, rows: list[dict[str, Any]], limit: int, next_batch: int | None) -> Reading:
    """Return the reading for the slots in ``rows`` (see :data:`SLOTS`)."""
    stops: list[str] = []
    entries = []
    headrooms: list[int] = []
    for row in rows:
        label = _slot_label(row)
        retained, safe, status = row["retained_bytes"], row["safe_wal_size"], row["wal_status"]
        over = []
        if status == "lost":
            over.append(
                "has lost WAL it needs (wal_status lost): its consumer cannot resume; drop the slot "
                "(pg_drop_replication_slot) and rebuild the consumer"
            )
        elif status == "unreserved":
            over.append(
                f"will lose its WAL at the next checkpoint (wal_status unreserved, retains "
                f"{format_bytes(retained or 0)} > max_slot_wal_keep_size {row['max_slot_wal_keep_size']})"
            )
        if retained is not None and retained > limit:
            over.append(f"retains {format_bytes(retained)} of WAL > {format_bytes(limit)}")
        if status != "lost" and safe is not None and next_batch is not None and safe < next_batch:
            over.append(
                f"would lose WAL within the next batch: safe_wal_size {format_bytes(safe)} "
                f"< {format_bytes(next_batch)} projected"
            )
        if over:
            stops.append(f"{label} {'; '.join(over)}")
        if status != "lost":
            if retained is not None:
                headrooms.append(max(limit - retained, 0))
            if safe is not None:
                headrooms.append(max(safe, 0))
        entries.append(
            {
                "slot_name": row["slot_name"],
                "slot_type": row["slot_type"],
                "plugin": row["plugin"],
                "database": row["database"],
                "temporary": row["temporary"],
                "active": row["active"],
                "active_pid": row["active_pid"],
                "wal_status": status,
                "restart_lsn": row["restart_lsn"],
                "retained_bytes": retained,
                "safe_wal_size": safe,
                "signal": "stop" if over else "normal",
            }
        )
    retained_all = [e for e in entries if e["retained_bytes"] is not None]
    safe_all = [e["safe_wal_size"] for e in entries if e["safe_wal_size"] is not None]
    inactive = sum(1 for e in entries if not e["active"])
    values: dict[str, float | int | None] = {
        "slots": len(entries),
        "inactive_slots": inactive,
        "max_slot_retained_bytes": max((e["retained_bytes"] for e in retained_all), default=None),
        "min_safe_wal_size": min(safe_all, default=None),
        "max_retained_bytes": limit,
    }
    details = {
        "slots": entries,
        "max_slot_wal_keep_size": rows[0]["max_slot_wal_keep_size"] if rows else None,
        "next_batch_wal_bytes": next_batch,
    }
    headroom = min(headrooms, default=None)
    load = fraction_of(values["max_slot_retained_bytes"], limit)
    bound = int(limit) if headroom is not None else None
    if stops:
        return Reading(
            name,
            Signal.STOP,
            "; ".join(stops),
            values,
            details,
            wal_headroom_bytes=headroom,
            load=load,
            wal_bound_bytes=bound,
        )
    if not entries:
        return Reading(
            name, Signal.NORMAL, "no replication slots", values, details, wal_headroom_bytes=headroom
        )
    reason = f"{len(entries)} slot(s), {inactive} inactive"
    if retained_all:
        largest = max(retained_all, key=lambda e: e["retained_bytes"])
        reason += (
            f"; the most WAL retained is {format_bytes(largest['retained_bytes'])} "
            f"({largest['slot_name']}) <= {format_bytes(limit)}"
        )
    if safe_all:
        reason += f"; least safe_wal_size {format_bytes(min(safe_all))}"
    return Reading(
        name,
        Signal.NORMAL,
        reason,
        values,
        details,
        wal_headroom_bytes=headroom,
        load=load,
        wal_bound_bytes=bound,
    )
