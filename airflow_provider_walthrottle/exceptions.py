"""Errors the provider raises, each a single line that names the problem and the fix."""

from __future__ import annotations

from urllib.parse import quote

from airflow.sdk.exceptions import AirflowException

#: What replaces a password that a driver's message happens to contain.
PASSWORD_HIDDEN = "[password hidden]"

#: Shorter passwords are not looked for: they would match ordinary words of the message. Airflow's
#: secrets masker draws the line at the same length.
MIN_HIDDEN_PASSWORD_LENGTH = 5


class WalThrottleError(AirflowException):
    """Base class of the provider's errors.

    :param message: the one-line message, for logs and for people who may read the connection.
    :param public: the same without the connection's host, port, database and login, for people who
        may not read the connection (the migrations page's Viewers); ``message`` when it has none.
    """

    def __init__(self, message: str, *, public: str | None = None) -> None:
        super().__init__(message)
        self.public_message = message if public is None else public


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


#: (what libpq says, the reason in words that name nothing of the connection, what to check)
_CONNECT_HINTS: tuple[tuple[str, str, str], ...] = (
    (
        "password authentication failed",
        "password authentication failed",
        "check the connection's login and password",
    ),
    ("no password supplied", "no password supplied", "set the connection's password"),
    (
        "permission denied for database",
        "permission denied for the database",
        "grant the role CONNECT on the database",
    ),
    (
        "does not exist",
        "the role or the database does not exist",
        "check the connection's login and its schema (the database name)",
    ),
    (
        "connection refused",
        "connection refused",
        "check the connection's host and port, and that the server is running",
    ),
    (
        "timeout expired",
        "no answer within the connect timeout",
        "check the connection's host and port, and that the server is reachable",
    ),
    ("could not translate host name", "unknown host name", "check the connection's host name"),
    ("failed to resolve host", "unknown host name", "check the connection's host name"),
    # psycopg before 3.2.13 resolves the host itself and gives only getaddrinfo's words
    ("name or service not known", "unknown host name", "check the connection's host name"),
    ("no route to host", "no route to host", "check the connection's host, and that the server is reachable"),
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


def hide_password(text: str, password: str | None) -> str:
    """Return ``text`` with every occurrence of ``password`` (as given or percent-encoded) replaced.

    libpq quotes parts of the connection string in some of its messages, and a mistyped one can put
    a password where a host name or a port is expected.

    :param text: a message to show or log.
    :param password: the connection's password, if any; one shorter than
        :data:`MIN_HIDDEN_PASSWORD_LENGTH` is not looked for.
    """
    if not password or len(password) < MIN_HIDDEN_PASSWORD_LENGTH:
        return text
    for form in {password, quote(password, safe=""), quote(password)}:
        text = text.replace(form, PASSWORD_HIDDEN)
    return text


def connect_error(
    target: str,
    error: BaseException,
    *,
    public_target: str | None = None,
    password: str | None = None,
) -> DatabaseConnectError:
    """Describe a failed connection attempt in one line, with what to check.

    :param target: who was connected to, e.g. ``connection 'warehouse' (db.example:5432/app as etl)``.
    :param error: the driver's error.
    :param public_target: the same without host, port, database and login, e.g.
        ``connection 'warehouse'``; the public message then gives the reason in words of its own
        (libpq's names hosts, databases and roles).
    :param password: the connection's password, removed from libpq's part of the message.
    """
    reason = hide_password(first_line(error), password)
    lowered = str(error).lower()
    public_reason, hint = next(
        ((words, fix) for needle, words, fix in _CONNECT_HINTS if needle in lowered),
        ("the connection failed", "check the connection"),
    )
    public = None
    if public_target is not None:
        public = f"Cannot connect to PostgreSQL with {public_target}: {public_reason}; {hint}."
    return DatabaseConnectError(
        f"Cannot connect to PostgreSQL with {target}: {reason}; {hint}.", public=public
    )
