"""Errors the provider raises, each a single line that names the problem and the fix."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException


class WalThrottleError(AirflowException):
    """Base class of the provider's errors."""


class ConnectionNotDefinedError(WalThrottleError):
    """The Airflow connection id is not defined."""


class DatabaseConnectError(WalThrottleError):
    """The PostgreSQL server could not be reached or refused the login."""


class InsufficientPrivilegeError(WalThrottleError):
    """The connection's role lacks a privilege the provider needs."""


class DatabaseQueryError(WalThrottleError):
    """A query failed for another reason than a missing privilege (a timeout, a restart, …)."""


class UnsupportedConfigurationError(WalThrottleError):
    """The installed drivers or the connection's options are not supported here."""


_CONNECT_HINTS: tuple[tuple[str, str], ...] = (
    ("password authentication failed", "check the connection's login and password"),
    ("no password supplied", "set the connection's password"),
    ("permission denied for database", "grant the role CONNECT on the database"),
    ("does not exist", "check the connection's login and its schema (the database name)"),
    ("connection refused", "check the connection's host and port, and that the server is running"),
    ("timeout expired", "check the connection's host and port, and that the server is reachable"),
    ("could not translate host name", "check the connection's host name"),
    ("failed to resolve host", "check the connection's host name"),
    ("no route to host", "check the connection's host, and that the server is reachable"),
)


def first_line(error: BaseException) -> str:
    """Return the meaningful first line of a driver error, without libpq's "connection failed" prefix.

    :param error: the error raised by psycopg.
    """
    lines = [" ".join(line.split()) for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    # libpq reports 'connection failed: connection to server at "h" (ip), port p failed: <reason>'
    return lines[0].rsplit(" failed: ", 1)[-1]


def connect_error(target: str, error: BaseException) -> DatabaseConnectError:
    """Describe a failed connection attempt in one line, with what to check.

    :param target: who was connected to, e.g. ``connection 'warehouse' (db.example:5432/app as etl)``.
    :param error: the driver's error.
    """
    reason = first_line(error)
    lowered = str(error).lower()
    hint = next((fix for needle, fix in _CONNECT_HINTS if needle in lowered), "check the connection")
    return DatabaseConnectError(f"Cannot connect to PostgreSQL with {target}: {reason}; {hint}.")
