"""The flag Variables the migrations page shows and toggles: each indicator's flag and the kill switch.

Variables are read and written with Airflow's core ``Variable`` model (the api-server has the
metadata database; the Task SDK's ``Variable`` is for tasks). A value that cannot be parsed reads as
the flag's safe side, as the tasks read it, and the page says so.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from airflow_provider_walthrottle.flags import (
    AUTOVACUUM_HEALTH_FLAG,
    KILL_SWITCH_VARIABLE,
    REPLICATION_LAG_HEALTH_FLAG,
    REPLICATION_SLOTS_HEALTH_FLAG,
    WAL_HEALTH_FLAG,
    InvalidFlagValueError,
    parse_flag_value,
)

if TYPE_CHECKING:
    from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class FlagView:
    """A flag Variable as the page shows it.

    :param key: the Variable key.
    :param description: what turning it on does.
    :param default: the answer while the Variable is unset.
    :param raw: the Variable's value, or ``None`` when it is unset.
    :param enabled: on for everybody (``True``), off (``False``), or a partial rollout (``None``).
    :param state: the value in words, e.g. ``"on"``, ``"off (unset: the default)"``, ``"rollout: 25%"``.
    :param invalid: the value cannot be parsed, so the flag reads as its safe side (``enabled``).
    """

    key: str
    description: str
    default: bool
    raw: str | None
    enabled: bool | None
    state: str
    invalid: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the flag as JSON-ready values."""
        return dataclasses.asdict(self)

    def is_enabled_for(self, actor: str | None) -> bool:
        """Return whether the flag is on for ``actor`` (a migration's name), as the tasks read it.

        :param actor: a migration name; without one, only a flag on for everybody is on.
        """
        if self.enabled is not None or self.raw is None:
            return bool(self.enabled)
        try:
            state = parse_flag_value(self.raw)
        except InvalidFlagValueError:  # read_flag() gives such a value its safe side as `enabled`
            spec = FLAGS.get(self.key)
            return spec is not None and spec.safe
        return state.is_enabled_for(actor, flag_key=self.key)

    def enforced_for(self, actors: Sequence[str]) -> list[str]:
        """Return those of ``actors`` (migration names) for which the flag is on.

        :param actors: migration names.
        """
        return [actor for actor in actors if self.is_enabled_for(actor)]


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    """A safety switch the page shows.

    :param description: what turning it on does.
    :param default: its answer while the Variable is unset.
    :param safe: its answer while the Variable holds a value that cannot be parsed: the side that
        protects the database.
    """

    description: str
    default: bool
    safe: bool


#: The Variables the page shows and lets operators (Airflow's ``Op`` role and up) toggle, with their
#: safe sides: each indicator's flag throttles (on), the kill switch stops migrations (off).
FLAGS: dict[str, FlagSpec] = {
    WAL_HEALTH_FLAG: FlagSpec(
        "Throttle sensors and migrations on the WAL archival backlog", default=False, safe=True
    ),
    REPLICATION_LAG_HEALTH_FLAG: FlagSpec(
        "Throttle sensors and migrations on streaming standbys' replay lag", default=False, safe=True
    ),
    REPLICATION_SLOTS_HEALTH_FLAG: FlagSpec(
        "Throttle sensors and migrations on the WAL replication slots retain", default=False, safe=True
    ),
    AUTOVACUUM_HEALTH_FLAG: FlagSpec(
        "Hold a migration while autovacuum processes its table", default=False, safe=True
    ),
    KILL_SWITCH_VARIABLE: FlagSpec(
        "Run batched migrations at all (off: every migration waits or skips)", default=True, safe=False
    ),
}


class FlagNotWritableError(RuntimeError):
    """The Variable is defined outside the metadata database, which wins over what the page writes."""


def read_flags() -> list[FlagView]:
    """Read the flag Variables the page shows."""
    return [read_flag(key) for key in FLAGS]


def read_flag(key: str) -> FlagView:
    """Read one flag Variable and say what it means.

    A value that cannot be parsed reads as the flag's safe side (``safe`` of its :class:`FlagSpec`), as the
    sensor, the trigger and the operator read it, and says so.

    :param key: one of :data:`FLAGS`.
    """
    from airflow.models import Variable

    spec = FLAGS[key]
    description, default = spec.description, spec.default
    raw = Variable.get(key, default_var=None)
    if raw is None:
        return FlagView(key, description, default, None, default, f"{_word(default)} (unset: the default)")
    try:
        state = parse_flag_value(raw)
    except InvalidFlagValueError as error:
        safe = _word(spec.safe)
        shown = raw if len(raw) <= 40 else f"{raw[:40]}…"
        return FlagView(
            key,
            description,
            default,
            raw,
            spec.safe,
            f"{safe} (invalid value {shown!r}: treated as {safe}, the safe side; {error.reason})",
            invalid=True,
        )
    if state.enabled:
        return FlagView(key, description, default, raw, True, "on")
    if state.actors or state.percentage_of_actors:
        parts = [f"{state.percentage_of_actors:g}% of actors"] if state.percentage_of_actors else []
        parts += [f"{len(state.actors)} listed actor(s)"] if state.actors else []
        return FlagView(key, description, default, raw, None, "rollout: " + ", ".join(parts))
    return FlagView(key, description, default, raw, False, "off")


def _word(enabled: bool) -> str:
    return "on" if enabled else "off"


def write_flag(key: str, enabled: bool) -> FlagView:
    """Set a flag Variable to ``true`` or ``false`` in the metadata database; return it read back.

    :param key: one of :data:`FLAGS`.
    :param enabled: the new value.
    :raises FlagNotWritableError: when an environment variable or a secrets backend defines the
        Variable, so the written value would not take effect.
    """
    from airflow.models import Variable

    value = "true" if enabled else "false"
    Variable.set(key, value, description=FLAGS[key].description)
    flag = read_flag(key)
    if flag.raw != value:
        raise FlagNotWritableError(
            f"Variable {key} is defined outside the metadata database (an AIRFLOW_VAR_{key.upper()} "
            "environment variable or a secrets backend), which wins over the value written here; "
            "change it there"
        )
    return flag
