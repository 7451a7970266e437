"""What the ``walthrottle`` commands share: their exit codes, the target they inspect, its hook.

Both commands, :mod:`~airflow_provider_walthrottle.cli`'s ``status`` and
:mod:`~airflow_provider_walthrottle.cli_plan`'s ``plan``, take an Airflow connection id or a PostgreSQL
DSN as their first argument (:data:`TARGET_ARGUMENT`), and :func:`make_hook` turns it into a hook.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook

EXIT_OK = 0
EXIT_CRITICAL = 2
EXIT_UNKNOWN = 3

#: The first argument of every command, as ``(flags, add_argument keywords)``.
TARGET_ARGUMENT: tuple[tuple[str, ...], dict[str, Any]] = (
    ("target",),
    {"help": "an Airflow connection id, or a PostgreSQL DSN (postgresql://… or 'host=… user=…')"},
)


def threshold(text: str) -> int:
    """Parse ``--max-pending-segments``: an argparse type, for ``status`` and ``plan`` alike.

    :param text: the argument as given.
    :raises argparse.ArgumentTypeError: for a threshold that is not a whole number above 0.
    """
    from airflow_provider_walthrottle.wal.health import parse_max_pending_segments

    try:
        return parse_max_pending_segments(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


#: What a DSN given on the command line looks like, for the error that refuses a malformed one.
DSN_FORMS = (
    "expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE, with special characters percent-encoded "
    "(@ as %40, % as %25, / as %2F, : as %3A), or 'host=HOST port=PORT user=USER password=PASSWORD "
    "dbname=DATABASE', with a value that holds spaces or quotes in single quotes (password='a b')"
)


def make_hook(target: str, database: str | None) -> WalArchivalHook:
    """Return a hook for an Airflow connection id, or for a DSN given on the command line.

    A malformed DSN is refused with a message that quotes nothing of it: libpq's own parse errors
    quote the text around the mistake, which can be the password.

    :param target: a connection id, or a DSN in URI or keyword form.
    :param database: a database that overrides the connection's own.
    :raises ValueError: for a malformed DSN.
    """
    from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook

    if "=" not in target and "://" not in target:
        return WalArchivalHook(
            postgres_conn_id=target, database=database, connection=lookup_connection(target)
        )

    from airflow.sdk import Connection
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(target)
    except Exception:  # psycopg raises ProgrammingError, whose text can quote the password
        raise ValueError(f"the DSN is malformed; {DSN_FORMS}") from None
    port = str(params.pop("port", None) or 5432)
    if not port.isdigit():
        raise ValueError(f"the DSN is malformed: its port is not a number; {DSN_FORMS}")
    host = str(params.pop("host", "localhost"))
    if "@" in host:  # postgresql://user:p@ss@host/db puts "ss@host", part of the password, in the host
        raise ValueError(f"the DSN is malformed: its host contains '@'; {DSN_FORMS}")
    connection = Connection(
        conn_id="dsn",
        conn_type="postgres",
        host=host,
        port=int(port),
        login=_optional(params.pop("user", None)),
        password=_optional(params.pop("password", None)),
        schema=_optional(params.pop("dbname", None)),
        extra=json.dumps({key: str(value) for key, value in params.items()}) if params else None,
    )
    return WalArchivalHook(postgres_conn_id="dsn", connection=connection, database=database)


def lookup_connection(conn_id: str) -> Any:
    """Find a connection the way Airflow's own CLI does: secrets backends, env, then the metadata DB.

    Outside a task, the Task SDK does not read the metadata database, so a connection made with
    ``airflow connections add`` would look undefined. Returns ``None`` when it is not found or the
    metadata database cannot be read; the hook then reports the connection as not defined.

    :param conn_id: the Airflow connection id.
    """
    from airflow.models.connection import Connection as StoredConnection

    try:
        return StoredConnection.get_connection_from_secrets(conn_id)
    except Exception:  # not found, or no metadata database on this machine
        return None


def _optional(value: object) -> str | None:
    return None if value is None else str(value)
