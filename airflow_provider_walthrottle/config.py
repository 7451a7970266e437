"""The provider's ``[walthrottle]`` configuration: its section, its defaults, and the one reader of them.

The options are listed, with their defaults and descriptions, in the provider info
(``airflow_provider_walthrottle.get_provider_info``) and in :doc:`/configuration`.
"""

from __future__ import annotations

from airflow_provider_walthrottle.exceptions import UnsupportedConfigurationError

__all__ = [
    "CONFIG_SECTION",
    "DEFAULT_CONNECT_TIMEOUT_SECONDS",
    "DEFAULT_PLAN_ARCHIVER_WINDOW_SECONDS",
    "DEFAULT_READ_ONLY_STATEMENT_TIMEOUT_SECONDS",
    "MAX_PLAN_ARCHIVER_WINDOW_SECONDS",
    "configured_connect_timeout",
    "configured_first_run_plan",
    "configured_plan_archiver_window",
    "configured_read_only_statement_timeout",
]

#: The configuration section of the provider (``[walthrottle]`` in ``airflow.cfg``).
CONFIG_SECTION = "walthrottle"

#: Seconds libpq waits for a server to answer a connection attempt, unless the Airflow connection's
#: extra sets ``connect_timeout`` or ``[walthrottle] connect_timeout`` another default. Without it, a
#: server that accepts TCP and never answers would hold the caller forever.
DEFAULT_CONNECT_TIMEOUT_SECONDS = 10

#: ``statement_timeout`` of the read-only connections (the checks of the sensor, the trigger, the
#: CLI and the migrations page), unless ``[walthrottle] read_only_statement_timeout`` sets another
#: (0: none). Their queries take milliseconds; one that runs this long is stuck behind something.
DEFAULT_READ_ONLY_STATEMENT_TIMEOUT_SECONDS = 30

#: Seconds the plan of a migration's first run watches ``pg_stat_archiver`` for the archiver's pace,
#: unless ``[walthrottle] plan_archiver_window_seconds`` sets another (0: not measured), at most
#: :data:`MAX_PLAN_ARCHIVER_WINDOW_SECONDS`. The first batch starts that much later, once.
DEFAULT_PLAN_ARCHIVER_WINDOW_SECONDS = 10
#: The longest window ``[walthrottle] plan_archiver_window_seconds`` may set, as ``walthrottle plan``'s.
MAX_PLAN_ARCHIVER_WINDOW_SECONDS = 600

#: Airflow's spellings of a boolean option (``conf.getboolean``), lower-cased.
_TRUE, _FALSE = ("t", "true", "1"), ("f", "false", "0")


def _configured(option: str) -> str | None:
    """Return a ``[walthrottle]`` option as set, stripped; ``None`` when it is not set or empty."""
    from airflow.configuration import conf

    raw = conf.get(CONFIG_SECTION, option, fallback=None)
    text = "" if raw is None else str(raw).strip()
    return text or None


def _fix(option: str) -> str:
    """Return where to fix ``option``, for an error message."""
    return f"fix it in airflow.cfg or AIRFLOW__{CONFIG_SECTION.upper()}__{option.upper()}"


def _configured_seconds(option: str, default: int, maximum: int | None = None) -> int:
    """Return a ``[walthrottle]`` option that holds whole seconds, 0 or more.

    :param option: the option's name.
    :param default: its value when it is not set.
    :param maximum: the largest value allowed, if any.
    :raises UnsupportedConfigurationError: when it is set to something else.
    """
    text = _configured(option)
    if text is None:
        return default
    if not text.isdigit() or (maximum is not None and int(text) > maximum):
        within = "0 or more" if maximum is None else f"0 to {maximum}"
        raise UnsupportedConfigurationError(
            f"[{CONFIG_SECTION}] {option} must be a whole number of seconds ({within}), got {text!r}; "
            f"{_fix(option)}"
        )
    return int(text)


def _configured_boolean(option: str, default: bool) -> bool:
    """Return a ``[walthrottle]`` option that holds a boolean, spelled as Airflow reads one.

    :param option: the option's name.
    :param default: its value when it is not set.
    :raises UnsupportedConfigurationError: when it is set to something else.
    """
    text = _configured(option)
    if text is None:
        return default
    if text.lower() in _TRUE + _FALSE:
        return text.lower() in _TRUE
    raise UnsupportedConfigurationError(
        f"[{CONFIG_SECTION}] {option} must be True or False, got {text!r}; {_fix(option)}"
    )


def configured_connect_timeout() -> int:
    """Return the default ``connect_timeout`` in seconds.

    It is ``[walthrottle] connect_timeout``, else :data:`DEFAULT_CONNECT_TIMEOUT_SECONDS`.
    """
    return _configured_seconds("connect_timeout", DEFAULT_CONNECT_TIMEOUT_SECONDS)


def configured_read_only_statement_timeout() -> int:
    """Return the ``statement_timeout`` of read-only connections in seconds (0: none).

    It is ``[walthrottle] read_only_statement_timeout``, else
    :data:`DEFAULT_READ_ONLY_STATEMENT_TIMEOUT_SECONDS`.
    """
    return _configured_seconds("read_only_statement_timeout", DEFAULT_READ_ONLY_STATEMENT_TIMEOUT_SECONDS)


def configured_first_run_plan() -> bool:
    """Return whether a migration's first run plans it (logs the plan, pushes it as XCom, keeps it).

    It is ``[walthrottle] first_run_plan``, else ``True``.
    """
    return _configured_boolean("first_run_plan", True)


def configured_plan_archiver_window() -> int:
    """Return the seconds the plan of a migration's first run watches the archiver (0: not measured).

    It is ``[walthrottle] plan_archiver_window_seconds``, else
    :data:`DEFAULT_PLAN_ARCHIVER_WINDOW_SECONDS`; at most :data:`MAX_PLAN_ARCHIVER_WINDOW_SECONDS`.
    """
    return _configured_seconds(
        "plan_archiver_window_seconds", DEFAULT_PLAN_ARCHIVER_WINDOW_SECONDS, MAX_PLAN_ARCHIVER_WINDOW_SECONDS
    )
