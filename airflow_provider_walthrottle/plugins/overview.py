"""What the migrations page shows, read in the api-server: backlogs, migrations and flags.

Each configured connection is read on its own: one that is missing, unreachable or not allowed
shows its error on the page and does not hide the others. Variables are read and written with
Airflow's core ``Variable`` model (the api-server has the metadata database; the Task SDK's
``Variable`` is for tasks).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from airflow_provider_walthrottle.flags import (
    KILL_SWITCH_VARIABLE,
    WAL_HEALTH_FLAG,
    InvalidFlagValueError,
    parse_flag_value,
)
from airflow_provider_walthrottle.health import DEFAULT_MAX_PENDING_SEGMENTS, evaluate_wal_archival

if TYPE_CHECKING:
    from airflow_provider_walthrottle.health import HealthSignal
    from airflow_provider_walthrottle.migrations.catalog import MigrationSummary

#: The configuration section of the provider (``[walthrottle]`` in ``airflow.cfg``).
CONFIG_SECTION = "walthrottle"


@dataclasses.dataclass(frozen=True)
class FlagView:
    """A flag Variable as the page shows it.

    :param key: the Variable key.
    :param description: what turning it on does.
    :param default: the answer while the Variable is unset or invalid.
    :param raw: the Variable's value, or ``None`` when it is unset.
    :param enabled: on for everybody (``True``), off (``False``), or a partial rollout (``None``).
    :param state: the value in words, e.g. ``"on"``, ``"off (unset: default)"``, ``"rollout: 25%"``.
    """

    key: str
    description: str
    default: bool
    raw: str | None
    enabled: bool | None
    state: str

    def to_dict(self) -> dict[str, Any]:
        """Return the flag as JSON-ready values."""
        return dataclasses.asdict(self)


#: The Variables the page shows and lets operators (Airflow's ``Op`` role and up) toggle.
FLAGS: dict[str, tuple[str, bool]] = {
    WAL_HEALTH_FLAG: ("Throttle sensors and migrations on the WAL archival backlog", False),
    KILL_SWITCH_VARIABLE: ("Run batched migrations at all (off: every migration waits or skips)", True),
}


class FlagNotWritableError(RuntimeError):
    """The Variable is defined outside the metadata database, which wins over what the page writes."""


@dataclasses.dataclass(frozen=True)
class ConnectionOverview:
    """One connection's backlog and migrations, or the error that kept them from being read.

    :param conn_id: the Airflow connection.
    :param health: the backlog against the page's threshold; ``None`` when it could not be read.
    :param migrations: the batched migrations in its database.
    :param error: why the backlog or the migrations could not be read, in one line.
    """

    conn_id: str
    health: HealthSignal | None
    migrations: tuple[MigrationSummary, ...] = ()
    error: str | None = None

    @property
    def throttling(self) -> bool:
        """Whether any of its migrations waits on the backlog now."""
        return any(migration.throttling for migration in self.migrations)

    def to_dict(self) -> dict[str, Any]:
        """Return the connection's part of the page as JSON-ready values."""
        return {
            "conn_id": self.conn_id,
            "error": self.error,
            "throttling": self.throttling,
            "health": self.health.to_dict() if self.health else None,
            "migrations": [migration.to_dict() for migration in self.migrations],
        }


def configured_connection_ids() -> list[str]:
    """Return ``[walthrottle] ui_connection_ids``, the connections the page reads, in order."""
    from airflow.configuration import conf

    raw = conf.get(CONFIG_SECTION, "ui_connection_ids", fallback="postgres_default") or ""
    return list(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))


def configured_threshold() -> int:
    """Return ``[walthrottle] max_pending_segments``, the threshold the page compares backlogs with."""
    from airflow.configuration import conf

    return conf.getint(CONFIG_SECTION, "max_pending_segments", fallback=DEFAULT_MAX_PENDING_SEGMENTS)


def read_connection(conn_id: str, threshold: int, **filters: Any) -> ConnectionOverview:
    """Read one connection's backlog and migrations; never raise for a connection's own problem.

    :param conn_id: the Airflow connection.
    :param threshold: the threshold to compare the backlog with.
    :param filters: passed to :meth:`~.WalArchivalHook.get_archiver_status_and_migrations`.
    """
    from airflow_provider_walthrottle.exceptions import WalThrottleError
    from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook

    hook = WalArchivalHook(postgres_conn_id=conn_id)
    try:
        status, migrations = hook.get_archiver_status_and_migrations(**filters)
    except WalThrottleError as error:
        return ConnectionOverview(conn_id=conn_id, health=None, error=str(error))
    health = evaluate_wal_archival(status, threshold)
    return ConnectionOverview(conn_id=conn_id, health=health, migrations=tuple(migrations))


def read_flags() -> list[FlagView]:
    """Read the flag Variables the page shows."""
    return [read_flag(key) for key in FLAGS]


def read_flag(key: str) -> FlagView:
    """Read one flag Variable and say what it means.

    :param key: one of :data:`FLAGS`.
    """
    from airflow.models import Variable

    description, default = FLAGS[key]
    raw = Variable.get(key, default_var=None)
    default_word = "on" if default else "off"
    if raw is None:
        return FlagView(key, description, default, None, default, f"{default_word} (unset: the default)")
    try:
        state = parse_flag_value(raw)
    except InvalidFlagValueError as error:
        return FlagView(key, description, default, raw, default, f"{default_word} (invalid: {error.reason})")
    if state.enabled:
        return FlagView(key, description, default, raw, True, "on")
    if state.actors or state.percentage_of_actors:
        parts = [f"{state.percentage_of_actors:g}% of actors"] if state.percentage_of_actors else []
        parts += [f"{len(state.actors)} listed actor(s)"] if state.actors else []
        return FlagView(key, description, default, raw, None, "rollout: " + ", ".join(parts))
    return FlagView(key, description, default, raw, False, "off")


def write_flag(key: str, enabled: bool) -> FlagView:
    """Set a flag Variable to ``true`` or ``false`` in the metadata database; return it read back.

    :param key: one of :data:`FLAGS`.
    :param enabled: the new value.
    :raises FlagNotWritableError: when an environment variable or a secrets backend defines the
        Variable, so the written value would not take effect.
    """
    from airflow.models import Variable

    value = "true" if enabled else "false"
    Variable.set(key, value, description=FLAGS[key][0])
    flag = read_flag(key)
    if flag.raw != value:
        raise FlagNotWritableError(
            f"Variable {key} is defined outside the metadata database (an AIRFLOW_VAR_{key.upper()} "
            "environment variable or a secrets backend), which wins over the value written here; "
            "change it there"
        )
    return flag
