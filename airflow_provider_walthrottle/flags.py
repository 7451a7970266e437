"""
Feature flags backed by Airflow Variables.

A :class:`FeatureFlag` reads its Variable each time it is asked, never when it is constructed, so
a flag object can live at module level in a DAG file without touching the secrets backends at parse
time, and an operator can flip it in the middle of an incident::

    airflow variables set batched_migrations_health_status_wal true   # roll out
    airflow variables set batched_migrations_health_status_wal false  # roll back

Besides the plain on/off words, a Variable may hold a JSON object for an incremental rollout, with
the semantics of GitLab's Flipper-based feature flags::

    {"enabled": false, "actors": ["migration_a", "dag_b"], "percentage_of_actors": 25}

``enabled: true`` turns the flag on for everybody. Otherwise it is on for an actor (a migration name
or a DAG id) that is listed in ``actors`` or that falls in the ``percentage_of_actors`` bucket.

Parsing (:func:`parse_flag_value`) and evaluation (:meth:`FlagState.is_enabled_for`) are pure; only
:meth:`FeatureFlag.is_enabled` reads Airflow, and it never raises. A missing Variable means the
flag's documented default. A Variable that is set but cannot be read or parsed (``flase``) means
the flag's *safe* value, if it has one, with one warning line that says so: the provider's safety
switches fail to the side that protects the database (:func:`health_check_flag` reads as on, so
migrations throttle; :func:`kill_switch` reads as off, so migrations stop).
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ACCEPTED_FORMS",
    "AUTOVACUUM_HEALTH_FLAG",
    "KILL_SWITCH_VARIABLE",
    "REPLICATION_LAG_HEALTH_FLAG",
    "REPLICATION_SLOTS_HEALTH_FLAG",
    "WAL_HEALTH_FLAG",
    "FeatureFlag",
    "FlagState",
    "InvalidFlagValueError",
    "actor_bucket",
    "health_check_flag",
    "kill_switch",
    "parse_flag_value",
]

log = logging.getLogger(__name__)

WAL_HEALTH_FLAG = "batched_migrations_health_status_wal"
"""Variable key of the flag that makes batched migrations throttle on the WAL archival backlog."""

REPLICATION_LAG_HEALTH_FLAG = "batched_migrations_health_status_replication_lag"
"""Variable key of the flag that makes batched migrations throttle on streaming standbys' lag."""

REPLICATION_SLOTS_HEALTH_FLAG = "batched_migrations_health_status_replication_slots"
"""Variable key of the flag that makes batched migrations throttle on the WAL replication slots retain."""

AUTOVACUUM_HEALTH_FLAG = "batched_migrations_health_status_autovacuum"
"""Variable key of the flag that makes batched migrations wait while autovacuum works on their table
(GitLab's own name for the same indicator)."""

KILL_SWITCH_VARIABLE = "execute_batched_migrations_on_schedule"
"""Variable key of the kill switch (on by default): off, every batched migration waits or skips."""

ACCEPTED_FORMS = (
    "true/false, on/off, 1/0 or yes/no (any case, surrounding whitespace ignored), or a JSON object "
    'such as {"enabled": false, "actors": ["migration_a", "dag_b"], "percentage_of_actors": 25} '
    "(all keys optional; enabled: true or false, actors: list of strings, "
    "percentage_of_actors: number from 0 to 100)"
)
"""Human-readable description of the values a flag Variable may hold, used in error messages."""

_TRUE_WORDS = frozenset({"true", "on", "1", "yes"})
_FALSE_WORDS = frozenset({"false", "off", "0", "no"})
_JSON_KEYS = frozenset({"enabled", "actors", "percentage_of_actors"})

# Percentage buckets: 100 % is split into BUCKETS slots, so percentages resolve to 0.001 %.
_SCALE = 1_000
_BUCKETS = 100 * _SCALE
_MAX_REPR = 200


def _one_line(text: str) -> str:
    """Collapse whitespace so a multi-line error message stays on one log line, and cut it short."""
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REPR else f"{text[:_MAX_REPR]}..."


def _short_repr(value: object) -> str:
    """Return ``repr(value)``, cut to about 200 characters so one bad value cannot flood a log."""
    text = repr(value)
    if len(text) > _MAX_REPR:
        return f"{text[:_MAX_REPR]}... ({len(text)} chars)"
    return text


class InvalidFlagValueError(ValueError):
    """
    Raised by :func:`parse_flag_value` for a value that is not one of :data:`ACCEPTED_FORMS`.

    :param raw: the value that was read.
    :param reason: what is wrong with it, in a few words.
    """

    def __init__(self, raw: object, reason: str) -> None:
        self.raw = raw
        self.reason = reason
        super().__init__(
            f"invalid feature flag value {_short_repr(raw)}: {reason}. Accepted: {ACCEPTED_FORMS}"
        )


def actor_bucket(flag_key: str, actor: str) -> int:
    """
    Return the percentage bucket, in ``[0, 100_000)``, of an actor for one flag.

    The bucket is ``crc32(f"{flag_key}:{actor}") % 100_000``, the scheme of GitLab's Flipper: stable
    across processes, hosts and Python versions (unlike ``hash()``), and independent between flags,
    so two flags at 25 % do not pick the same quarter of the actors. An actor is in a rollout of ``p``
    percent when its bucket is below ``p * 1000``, so raising ``p`` only ever adds actors.

    :param flag_key: the Variable key of the flag.
    :param actor: a migration name or a DAG id.
    """
    return zlib.crc32(f"{flag_key}:{actor}".encode()) % _BUCKETS


@dataclass(frozen=True)
class FlagState:
    """
    The parsed value of a flag Variable.

    :param enabled: on for everybody.
    :param actors: actors (migration names or DAG ids) for which the flag is on.
    :param percentage_of_actors: share of all actors, from 0 to 100, for which the flag is on.
    """

    enabled: bool = False
    actors: tuple[str, ...] = ()
    percentage_of_actors: float = 0.0

    def is_enabled_for(self, actor: str | None, *, flag_key: str) -> bool:
        """
        Return whether the flag is on for ``actor``.

        Without an actor only ``enabled`` counts. Otherwise the flag is on if it is enabled, if the actor
        is listed in ``actors``, or if the actor falls in the ``percentage_of_actors`` bucket.

        :param actor: a migration name or a DAG id, or ``None``.
        :param flag_key: the Variable key of the flag; it seeds the percentage bucketing.
        """
        if self.enabled:
            return True
        if actor is None:
            return False
        if actor in self.actors:
            return True
        return actor_bucket(flag_key, actor) < self.percentage_of_actors * _SCALE


_ON = FlagState(enabled=True)
_OFF = FlagState(enabled=False)


def parse_flag_value(raw: str) -> FlagState:
    """
    Parse the value of a flag Variable.

    :param raw: the Variable value: one of true/false, on/off, 1/0, yes/no (any case, surrounding
        whitespace ignored), or a JSON object with the optional keys ``enabled`` (bool), ``actors``
        (list of strings) and ``percentage_of_actors`` (number from 0 to 100).
    :raises InvalidFlagValueError: for anything else; the message lists the accepted forms.
    """
    if not isinstance(raw, str):
        raise InvalidFlagValueError(raw, f"expected a string, got {type(raw).__name__}")
    word = raw.strip().lower()
    if word in _TRUE_WORDS:
        return _ON
    if word in _FALSE_WORDS:
        return _OFF
    if not word.startswith("{"):
        reason = "empty value" if not word else "not a recognised word or a JSON object"
        raise InvalidFlagValueError(raw, reason)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise InvalidFlagValueError(raw, f"not valid JSON ({e})") from None
    return _state_from_json(raw, data)


def _state_from_json(raw: str, data: Any) -> FlagState:
    if not isinstance(data, dict):
        raise InvalidFlagValueError(raw, f"JSON value must be an object, got {type(data).__name__}")
    unknown = sorted(set(data) - _JSON_KEYS)
    if unknown:
        raise InvalidFlagValueError(raw, f"unknown key(s) {', '.join(map(repr, unknown))}")

    enabled = data.get("enabled", False)
    if not isinstance(enabled, bool):
        raise InvalidFlagValueError(raw, f'"enabled" must be true or false, got {_short_repr(enabled)}')

    actors = data.get("actors", [])
    if not isinstance(actors, list) or not all(isinstance(a, str) for a in actors):
        raise InvalidFlagValueError(raw, f'"actors" must be a list of strings, got {_short_repr(actors)}')

    percentage = data.get("percentage_of_actors", 0)
    # bool is a subclass of int, but `true` is not a percentage.
    if (
        isinstance(percentage, bool)
        or not isinstance(percentage, int | float)
        or not math.isfinite(percentage)
        or not 0 <= percentage <= 100
    ):
        raise InvalidFlagValueError(
            raw, f'"percentage_of_actors" must be a number from 0 to 100, got {_short_repr(percentage)}'
        )

    return FlagState(enabled=enabled, actors=tuple(actors), percentage_of_actors=float(percentage))


@dataclass(frozen=True)
class FeatureFlag:
    """
    A feature flag backed by an Airflow Variable, read on every call.

    Constructing a flag reads nothing, so it is safe at module level in a DAG file. Each call to
    :meth:`is_enabled` reads the Variable through ``airflow.sdk.Variable``, so a change takes effect at
    the next call. Inside a task or a trigger that means the configured secrets backend, then
    ``AIRFLOW_VAR_*``, then the API server; outside them (DAG parsing, scripts) Airflow 3 looks only at
    the configured secrets backend and ``AIRFLOW_VAR_*``, not at the metadata database, so a Variable
    set with ``airflow variables set`` reads as missing there.

    The answer never raises. A missing Variable gives ``default`` quietly. A Variable that cannot be
    read (a secrets backend error) or parsed (a typo such as ``flase``) gives ``safe_value`` when the
    flag has one, else ``default``, after one warning line naming the Variable, the value or error,
    the answer chosen and why, and the accepted forms.

    :param variable_key: the Airflow Variable key, e.g. :data:`WAL_HEALTH_FLAG`.
    :param default: the answer when the Variable is missing.
    :param safe_value: the answer when the Variable is set but unreadable or invalid: the side that
        protects the database. ``None`` (a flag with no safe side): ``default``.
    """

    variable_key: str
    default: bool = False
    safe_value: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.variable_key, str) or not self.variable_key:
            raise TypeError(f"variable_key must be a non-empty string, got {self.variable_key!r} instead")
        if not isinstance(self.default, bool):
            raise TypeError(f"default must be a bool, got {self.default!r} instead")
        if self.safe_value is not None and not isinstance(self.safe_value, bool):
            raise TypeError(f"safe_value must be a bool or None, got {self.safe_value!r} instead")

    def is_enabled(self, actor: str | None = None) -> bool:
        """
        Read the Variable and return whether the flag is on for ``actor``.

        :param actor: a migration name or a DAG id; without one, only an ``enabled`` flag is on.
        """
        return self.state().is_enabled_for(actor, flag_key=self.variable_key)

    def state(self) -> FlagState:
        """Read and parse the Variable now; fall back as the class describes when it is missing or bad."""
        try:
            from airflow.sdk import Variable

            raw = Variable.get(self.variable_key, default=None)
        except Exception as e:
            problem = f"could not be read ({type(e).__name__}: {_one_line(str(e))})"
            return self._fallback_for_broken(problem)
        if raw is None:
            log.debug(
                "Feature flag Variable %s is not set; using the default %s", self.variable_key, self.default
            )
            return _ON if self.default else _OFF
        try:
            return parse_flag_value(raw)
        except InvalidFlagValueError as e:
            return self._fallback_for_broken(f"has an invalid value {_short_repr(raw)} ({e.reason})")

    def _fallback_for_broken(self, problem: str) -> FlagState:
        """Log one warning for a Variable that is set but unusable, and return the safe (or default) state."""
        if self.safe_value is None:
            answer = self.default
            side = f"{'on' if answer else 'off'}, the default {answer}"
        else:
            answer = self.safe_value
            side = f"{'on' if answer else 'off'}, the safe side that protects the database"
        log.warning(
            "Feature flag Variable %s %s; treating it as %s, until it is fixed. Accepted: %s",
            self.variable_key,
            problem,
            side,
            ACCEPTED_FORMS,
        )
        return _ON if answer else _OFF


def health_check_flag(variable_key: str = WAL_HEALTH_FLAG, *, default: bool = False) -> FeatureFlag:
    """Return the flag that turns a health check on, such as :data:`WAL_HEALTH_FLAG`.

    Its safe side is on: a value that cannot be read or parsed makes migrations throttle.

    :param variable_key: the Variable key.
    :param default: the answer while the Variable is missing (off during a rollout).
    """
    return FeatureFlag(variable_key, default=default, safe_value=True)


def kill_switch(variable_key: str = KILL_SWITCH_VARIABLE) -> FeatureFlag:
    """Return the kill switch, :data:`KILL_SWITCH_VARIABLE` by default: on while missing.

    Its safe side is off: a value that cannot be read or parsed stops every migration.

    :param variable_key: the Variable key.
    """
    return FeatureFlag(variable_key, default=True, safe_value=False)
