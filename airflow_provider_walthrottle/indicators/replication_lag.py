"""Replication lag as a health indicator: how far behind the primary each streaming standby replays.

gh-ost (``--max-lag-millis``, 1500 ms) and pt-online-schema-change (``--max-lag``, 1 s) pause a
migration while a replica lags; this is the same signal, read on the primary from
``pg_stat_replication``. A standby is judged on two numbers:

- **bytes**: ``pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)``, the WAL written on the primary
  and not replayed yet. Always current.
- **seconds**: ``replay_lag``, which the primary measures when the standby reports replay progress.
  It is ``NULL`` on an idle primary once the standby has caught up, it keeps the last burst's value
  for several seconds after the standby has caught up, and on an idle primary it is refreshed only
  every ``wal_receiver_status_interval`` (10 s). So a standby with nothing left to replay (0 bytes
  behind) counts as 0 s behind, whatever ``replay_lag`` still says, and a ``NULL`` while bytes are
  outstanding means "not measured yet": the standby is then judged on its bytes alone.

A standby named in ``expected_standbys`` that is not connected stops the migration: a standby that
has dropped out lags without limit, and an empty ``pg_stat_replication`` looks healthy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from psycopg import sql

from airflow_provider_walthrottle.flags import REPLICATION_LAG_HEALTH_FLAG
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

__all__ = [
    "DEFAULT_MAX_LAG_BYTES",
    "DEFAULT_MAX_LAG_SECONDS",
    "ReplicationLagIndicator",
    "parse_expected_standbys",
]

#: gh-ost's ``--max-lag-millis`` default, 1500 ms. pt-online-schema-change's ``--max-lag`` is 1 s, but
#: it compares whole seconds (``Seconds_Behind_Master``), so it lets through up to just under 2 s;
#: ``replay_lag`` is measured to the microsecond, like gh-ost's heartbeat.
DEFAULT_MAX_LAG_SECONDS = 1.5

#: 64 MiB, four 16 MiB segments: a standby replaying at 43 MiB/s or more catches up from it within
#: gh-ost's 1.5 s. It bounds a standby whose ``replay_lag`` is not measured (see the module's text).
DEFAULT_MAX_LAG_BYTES = 64 * 1024 * 1024

#: One row: whether the server is a standby, the role's name quoted for a ``GRANT``, and whether the
#: role sees other roles' WAL senders (``pg_read_all_stats``, part of ``pg_monitor``; superusers
#: have it). Readable by any role.
SERVER_STATE = sql.SQL(
    """
SELECT
    pg_is_in_recovery() AS in_recovery,
    quote_ident(current_user) AS role_name,
    pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS can_read_all_stats
"""
)

#: One row per WAL sender: its standby's name and address, its state, how many bytes of WAL it has
#: not replayed, ``replay_lag`` in seconds, the age of the standby's last report, and the logical
#: slot it streams from (a logical WAL sender is no standby). Readable by any role, but for a WAL
#: sender of another role, a role without ``pg_read_all_stats`` (``pg_monitor``) gets only ``pid``
#: and ``application_name``: ``state``, the positions and the lags come back ``NULL``.
#: ``pg_current_wal_lsn()`` fails during recovery: run on a primary only.
STANDBYS = sql.SQL(
    """
SELECT
    r.pid,
    r.application_name,
    host(r.client_addr) AS client_addr,
    r.state,
    r.sync_state,
    r.replay_lsn::text AS replay_lsn,
    greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn), 0)::bigint AS replay_lag_bytes,
    extract(epoch FROM r.replay_lag)::float8 AS replay_lag_seconds,
    extract(epoch FROM now() - r.reply_time)::float8 AS reply_age_seconds,
    s.slot_name AS logical_slot
FROM pg_catalog.pg_stat_replication AS r
LEFT JOIN pg_catalog.pg_replication_slots AS s ON s.active_pid = r.pid AND s.slot_type = 'logical'
ORDER BY r.application_name, r.pid
"""
)

#: WAL sender states of a standby (``backup`` is ``pg_basebackup``, not a standby).
_STANDBY_STATES = frozenset({"startup", "catchup", "streaming", "stopping"})

#: Expected standbys: a count, or their ``application_name`` values.
ExpectedStandbys = int | tuple[str, ...] | None


def parse_expected_standbys(value: object) -> ExpectedStandbys:
    """Return the expected standbys as a count or a tuple of names, or ``None`` for none expected.

    Accepts ``None``, a whole number, a list of names, or text (a rendered template): digits for a
    count, a JSON list of names, or names separated by commas.

    :param value: the ``expected_standbys`` argument, after templating.
    :raises ValueError: for anything else, naming what it takes.
    """
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text.isdigit():
            value = int(text)
        elif text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                value = text
        else:
            value = [name.strip() for name in text.split(",")]
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value or None
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        names = tuple(value)
        if all(isinstance(name, str) and name.strip() for name in names):
            return tuple(name.strip() for name in names) or None
    raise ValueError(
        "expected_standbys must be a whole number of standbys or a list of their application_name "
        f"values (a template may render digits, a JSON list or names separated by commas), got {value!r}"
    )


def _seconds(value: float) -> str:
    return f"{value:.3f} s" if value < 60 else f"{value:.0f} s"


def _standby_label(row: dict[str, Any]) -> str:
    address = row.get("client_addr")
    return f"{row['application_name']} ({address})" if address else str(row["application_name"])


class ReplicationLagIndicator(HealthIndicator):
    """Stop while a streaming standby replays more than ``max_lag_seconds`` late or ``max_lag_bytes`` behind.

    Read on the primary from ``pg_stat_replication``; only the primary's direct standbys are seen
    (a cascaded standby reports to its upstream standby). Logical WAL senders and base backups are
    listed in the details but not judged (the slot indicator watches logical consumers).

    .. seealso:: :doc:`/howto/indicator-replication-lag`

    :param max_lag_seconds: the most seconds a standby may replay late (``replay_lag``); only a lag
        *above* it stops (templated). gh-ost's default, 1.5.
    :param max_lag_bytes: the most bytes of WAL a standby may have left to replay; only more stops
        (templated). 64 MiB.
    :param expected_standbys: the standbys that must be connected: a count, or a list of their
        ``application_name`` values (set in the standby's ``primary_conninfo``); a missing one stops
        (templated). ``None``: none expected.
    :param flag_variable: the flag's Variable, ``batched_migrations_health_status_replication_lag``
        by default.
    :param flag_default: the flag while its Variable is missing.
    """

    name: ClassVar[str] = "replication_lag"
    default_flag_variable: ClassVar[str] = REPLICATION_LAG_HEALTH_FLAG
    template_fields: ClassVar[tuple[str, ...]] = ("max_lag_seconds", "max_lag_bytes", "expected_standbys")

    def __init__(
        self,
        *,
        max_lag_seconds: float | str = DEFAULT_MAX_LAG_SECONDS,
        max_lag_bytes: int | str = DEFAULT_MAX_LAG_BYTES,
        expected_standbys: int | Sequence[str] | str | None = None,
        flag_variable: str | None = None,
        flag_default: bool = False,
    ) -> None:
        super().__init__(flag_variable=flag_variable, flag_default=flag_default)
        # a string may be a template: checked by validate() once rendered
        if not isinstance(max_lag_seconds, str):
            non_negative_number("max_lag_seconds", max_lag_seconds, unit="seconds")
        if not isinstance(max_lag_bytes, str):
            non_negative_number("max_lag_bytes", max_lag_bytes, unit="bytes", integral=True)
        if isinstance(expected_standbys, Sequence) and not isinstance(expected_standbys, str):
            expected_standbys = list(expected_standbys)
        if not isinstance(expected_standbys, str):
            parse_expected_standbys(expected_standbys)
        self.max_lag_seconds = max_lag_seconds
        self.max_lag_bytes = max_lag_bytes
        self.expected_standbys = expected_standbys

    def thresholds(self) -> tuple[float, int, ExpectedStandbys]:
        """Return the rendered thresholds: seconds, bytes, and the expected standbys.

        :raises ValueError: naming the first threshold that is not valid.
        """
        return (
            non_negative_number("max_lag_seconds", self.max_lag_seconds, unit="seconds"),
            int(non_negative_number("max_lag_bytes", self.max_lag_bytes, unit="bytes", integral=True)),
            parse_expected_standbys(self.expected_standbys),
        )

    def validate(self) -> None:
        """Check the rendered thresholds.

        :raises ValueError: naming the first threshold that is not valid.
        """
        self.thresholds()

    def conversation(self, context: IndicatorContext) -> Conversation:
        """Read every WAL sender on the primary and judge each standby against the thresholds.

        :param context: not used: lag is the server's, whatever the table.
        """
        max_seconds, max_bytes, expected = self.thresholds()
        limits = {"max_lag_seconds": max_seconds, "max_lag_bytes": max_bytes}
        server = (yield SERVER_STATE)[0]
        if server["in_recovery"]:
            return Reading(
                self.name,
                Signal.NOT_AVAILABLE,
                "this server is a standby (in recovery): replication lag is read on the primary; "
                "point the connection at the primary",
                values={
                    "standbys": None,
                    "max_replay_lag_seconds": None,
                    "max_replay_lag_bytes": None,
                    **limits,
                },
            )
        rows = yield STANDBYS
        return _judge(self.name, rows, server, max_seconds, max_bytes, expected)

    def serialize(self) -> dict[str, Any]:
        """Return the keyword arguments that rebuild this indicator."""
        return {
            "max_lag_seconds": self.max_lag_seconds,
            "max_lag_bytes": self.max_lag_bytes,
            "expected_standbys": self.expected_standbys,
            **super().serialize(),
        }


def _judge(
    name: str,
    rows: list[dict[str, Any]],
    server: dict[str, Any],
    max_seconds: float,
    max_bytes: int,
    expected: ExpectedStandbys,
) -> Reading:
    """Return the reading for the WAL senders in ``rows`` (see :data:`STANDBYS`)."""
    standbys: list[dict[str, Any]] = []
    hidden: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for row in rows:
        if row["logical_slot"] is not None:
            others.append({**row, "kind": "logical"})
        elif row["state"] is None:
            hidden.append(row)
        elif row["state"] in _STANDBY_STATES:
            standbys.append(row)
        else:
            others.append({**row, "kind": row["state"]})

    stops: list[str] = []
    unknowns: list[str] = []
    role = server["role_name"]
    grant = f"GRANT pg_monitor TO {role}"

    # who is expected and missing: names are visible to every role, so absence is certain
    seen = {row["application_name"] for row in standbys}
    maybe = {row["application_name"] for row in hidden}
    missing: list[str] = []
    if isinstance(expected, tuple):
        missing = [n for n in expected if n not in seen and n not in maybe]
        stops += [f"expected standby {n} is not connected" for n in missing]
        unsure = [n for n in expected if n not in seen and n in maybe]
        if unsure:
            unknowns.append(f"expected standby {', '.join(unsure)} cannot be told from another WAL sender")
    elif isinstance(expected, int) and len(standbys) < expected:
        if len(standbys) + len(hidden) < expected:
            stops.append(f"{len(standbys) + len(hidden)} of {expected} expected standbys connected")
        else:
            unknowns.append(f"{len(standbys)} of {expected} expected standbys seen")

    entries = []
    for row in standbys:
        lag_bytes = row["replay_lag_bytes"]
        reported = row["replay_lag_seconds"]
        # nothing left to replay: 0 s behind, whatever replay_lag still shows (NULL once idle, or
        # the last burst's lag, for several seconds after catching up)
        lag_seconds = None if lag_bytes is None else 0.0 if lag_bytes == 0 else reported
        label = _standby_label(row)
        verdict = "normal"
        if lag_bytes is None:
            verdict = "unknown"
            unknowns.append(f"standby {label} has not reported a replay position yet (state {row['state']})")
        else:
            over = []
            if lag_bytes > max_bytes:
                over.append(f"{format_bytes(lag_bytes)} behind > {format_bytes(max_bytes)}")
            if lag_seconds is not None and lag_seconds > max_seconds:
                over.append(f"replays {_seconds(lag_seconds)} late > {_seconds(max_seconds)}")
            if over:
                verdict = "stop"
                stops.append(f"standby {label} {' and '.join(over)}")
        entries.append(
            {
                "application_name": row["application_name"],
                "client_addr": row["client_addr"],
                "pid": row["pid"],
                "state": row["state"],
                "sync_state": row["sync_state"],
                "replay_lsn": row["replay_lsn"],
                "replay_lag_bytes": lag_bytes,
                "replay_lag_seconds": lag_seconds,
                "replay_lag_reported_seconds": reported,
                "reply_age_seconds": row["reply_age_seconds"],
                "signal": verdict,
            }
        )
    if hidden:
        names = ", ".join(sorted({str(row["application_name"]) for row in hidden}))
        unknowns.append(
            f"this role cannot see the state or lag of {len(hidden)} WAL sender(s) ({names}): {grant}"
        )

    measured_bytes = [e["replay_lag_bytes"] for e in entries if e["replay_lag_bytes"] is not None]
    measured_seconds = [e["replay_lag_seconds"] for e in entries if e["replay_lag_seconds"] is not None]
    values: dict[str, float | int | None] = {
        "standbys": len(standbys),
        "max_replay_lag_seconds": max(measured_seconds, default=None),
        "max_replay_lag_bytes": max(measured_bytes, default=None),
        "max_lag_seconds": max_seconds,
        "max_lag_bytes": max_bytes,
    }
    details = {
        "standbys": entries,
        "expected_standbys": list(expected) if isinstance(expected, tuple) else expected,
        "missing_standbys": missing,
        "hidden_wal_senders": [{"pid": r["pid"], "application_name": r["application_name"]} for r in hidden],
        "other_wal_senders": [
            {"pid": r["pid"], "application_name": r["application_name"], "kind": r["kind"]} for r in others
        ],
        "can_read_all_stats": server["can_read_all_stats"],
    }
    # a batch that the slowest standby does not replay at all leaves it at most this far behind
    headroom = max(max_bytes - max(measured_bytes), 0) if measured_bytes else None

    if stops:
        signal, reason = Signal.STOP, "; ".join(stops + unknowns)
    elif unknowns:
        signal, reason = Signal.UNKNOWN, "; ".join(unknowns)
    elif not standbys:
        signal, reason = Signal.NORMAL, "no streaming standby is connected, and none is expected"
        if not server["can_read_all_stats"]:
            reason += f" (this role would not see a standby's lag: {grant})"
    else:
        furthest = max(entries, key=lambda e: (e["replay_lag_bytes"], e["replay_lag_seconds"] or 0.0))
        late = furthest["replay_lag_seconds"]
        late_text = "replay lag not measured yet" if late is None else _seconds(late)
        signal = Signal.NORMAL
        reason = (
            f"{len(standbys)} standby(s) within {_seconds(max_seconds)} and {format_bytes(max_bytes)}: "
            f"the furthest behind, {furthest['application_name']}, "
            f"{format_bytes(furthest['replay_lag_bytes'])} and {late_text}"
        )
    loads = [
        fraction_of(values["max_replay_lag_seconds"], max_seconds),
        fraction_of(values["max_replay_lag_bytes"], max_bytes),
    ]
    load = max((x for x in loads if x is not None), default=None)
    bound = int(max_bytes) if headroom is not None else None
    return Reading(
        name, signal, reason, values, details, wal_headroom_bytes=headroom, load=load, wal_bound_bytes=bound
    )
