"""The provider's ``[walthrottle]`` configuration: its section, its defaults, and the one reader of them.

The options are listed, with their defaults and descriptions, in the provider info
(``airflow_provider_walthrottle.get_provider_info``) and in :doc:`/configuration`.
"""

from __future__ import annotations

from airflow_provider_walthrottle.exceptions import UnsupportedConfigurationError

__all__ = [
    "CONFIG_SECTION",
    "DEFAULT_CONNECT_TIMEOUT_SECONDS",
    "DEFAULT_READ_ONLY_STATEMENT_TIMEOUT_SECONDS",
    "configured_connect_timeout",
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


def _configured_seconds(option: str, default: int) -> int:
    """Return a ``[walthrottle]`` option that holds whole seconds, 0 or more.

    :param option: the option's name.
    :param default: its value when it is not set.
    :raises UnsupportedConfigurationError: when it is set to something else.
    """
    from airflow.configuration import conf

    raw = conf.get(CONFIG_SECTION, option, fallback=None)
    if raw is None or not str(raw).strip():
        return default
    text = str(raw).strip()
    if not text.isdigit():
        raise UnsupportedConfigurationError(
            f"[{CONFIG_SECTION}] {option} must be a whole number of seconds (0 or more), got {text!r}; "
            f"fix it in airflow.cfg or AIRFLOW__{CONFIG_SECTION.upper()}__{option.upper()}"
        )
    return int(text)


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
