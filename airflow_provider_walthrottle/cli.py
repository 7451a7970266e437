"""``walthrottle``: print what the hook sees, for a person or for a Nagios-style check.

Exit codes follow the Nagios plugin convention: 0 when the backlog is at or below the threshold,
2 when it is above, 3 when it cannot be judged (not available, unknown, or an error).

The same ``status`` command is ``airflow walthrottle status``, registered through the provider
info's ``cli`` key (:func:`get_cli_commands`). Only its usage errors differ: Airflow's parser exits
2 for them, so a Nagios check should call the standalone ``walthrottle`` script.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from airflow_provider_walthrottle import __version__
from airflow_provider_walthrottle.wal.health import DEFAULT_MAX_PENDING_SEGMENTS, Signal

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.cli.cli_config import CLICommand

    from airflow_provider_walthrottle.hooks.wal_archival import WalArchivalHook
    from airflow_provider_walthrottle.wal.health import HealthSignal

EXIT_OK = 0
EXIT_CRITICAL = 2
EXIT_UNKNOWN = 3

_EXIT_CODES = {
    Signal.NORMAL: EXIT_OK,
    Signal.STOP: EXIT_CRITICAL,
    Signal.NOT_AVAILABLE: EXIT_UNKNOWN,
    Signal.UNKNOWN: EXIT_UNKNOWN,
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors exit 3 (UNKNOWN), not 2, which means CRITICAL here."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_UNKNOWN, f"{self.prog}: error: {message}\n")


def _threshold(text: str) -> int:
    from airflow_provider_walthrottle.wal.health import parse_max_pending_segments

    try:
        return parse_max_pending_segments(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


STATUS_HELP = "print the archiver's state and backlog; exit 2 above the threshold"
STATUS_DESCRIPTION = (
    "Print the archiver's state and backlog. Exit 0 at or below the threshold, 2 above it, "
    "3 when it cannot be judged."
)

#: ``status``'s arguments, as ``(flags, add_argument keywords)``: the standalone parser and
#: ``airflow walthrottle status`` both take them from here.
STATUS_ARGUMENTS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (
        ("target",),
        {"help": "an Airflow connection id, or a PostgreSQL DSN (postgresql://… or 'host=… user=…')"},
    ),
    (
        ("--max-pending-segments",),
        {
            "type": _threshold,
            "default": DEFAULT_MAX_PENDING_SEGMENTS,
            "metavar": "N",
            "help": f"the threshold above which migrations stop (default {DEFAULT_MAX_PENDING_SEGMENTS})",
        },
    ),
    (("--database",), {"help": "a database that overrides the connection's own"}),
    (("--json",), {"action": "store_true", "help": "print JSON instead of text"}),
)


def build_parser() -> argparse.ArgumentParser:
    """Return the command line parser."""
    parser = _Parser(
        prog="walthrottle",
        description="Inspect PostgreSQL's WAL archival backlog as the walthrottle provider sees it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    status_parser = commands.add_parser("status", help=STATUS_HELP, description=STATUS_DESCRIPTION)
    for flags, options in STATUS_ARGUMENTS:
        status_parser.add_argument(*flags, **options)
    return parser


def get_cli_commands() -> list[CLICommand]:
    """Return ``airflow walthrottle status``, for the provider info's ``cli`` key.

    Airflow calls this to build its parser, on every ``airflow`` command: it only describes the
    command, whose work is imported when it runs.
    """
    from airflow.cli.cli_config import ActionCommand, Arg, GroupCommand

    status_command = ActionCommand(
        name="status",
        help=STATUS_HELP,
        description=f"{STATUS_DESCRIPTION} For Nagios, call the walthrottle script: here a usage "
        "error exits 2.",
        func=airflow_status,
        args=tuple(Arg(flags, **options) for flags, options in STATUS_ARGUMENTS),
    )
    return [
        GroupCommand(
            name="walthrottle",
            help="Inspect PostgreSQL's WAL archival backlog as the walthrottle provider sees it",
            subcommands=(status_command,),
        )
    ]


def airflow_status(args: argparse.Namespace) -> NoReturn:
    """Run ``airflow walthrottle status``, and exit with its code (Airflow ignores a return value).

    :param args: the parsed arguments.
    """
    sys.exit(status(args))


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


def render_text(health: HealthSignal, target: str) -> str:
    """Return the status as lines for a person: a Nagios-style headline, then the details.

    :param health: the evaluated signal.
    :param target: what was inspected, for the headline.
    """
    status = health.status
    mib = 1024 * 1024
    if status.pending_segments is None:
        pending = f"unknown ({status.detail})"
    else:
        pending = f"{status.pending_segments} segments ({(status.pending_bytes or 0) / mib:.0f} MiB)"
    perf = ""
    if status.pending_segments is not None:
        perf = f" | pending={status.pending_segments};;{health.max_pending_segments}"
    lines = [
        f"WAL ARCHIVAL {health.signal.value.upper()} - {target}: {health.reason}{perf}",
        f"  pending segments : {pending}",
        f"  threshold        : {health.max_pending_segments} (stop above it)",
        f"  method           : {status.method.value}",
        f"  archive_mode     : {status.archive_mode} ({'standby' if status.in_recovery else 'primary'})",
        f"  segment size     : {status.wal_segment_size // mib} MiB",
        f"  writing          : {status.current_wal_file or '-'}",
        f"  last archived    : {status.last_archived_wal or '-'} at {status.last_archived_time or '-'}",
        f"  last failure     : {status.last_failed_wal or '-'} at {status.last_failed_time or '-'}",
        f"  archiver         : {'FAILING' if status.is_failing else 'not failing'}, "
        f"{status.archived_count} archived, {status.failed_count} failed since stats reset",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code.

    :param argv: the arguments, without the program name; ``sys.argv[1:]`` by default.
    """
    return status(build_parser().parse_args(argv))


def status(args: argparse.Namespace) -> int:
    """Print the status of ``args.target``; return the exit code.

    :param args: ``status``'s arguments, parsed (see :data:`STATUS_ARGUMENTS`).
    """
    # A Nagios check's first line of output must be its headline, and Airflow logs to the stdout it
    # finds when it is imported (the secrets masker warns about short extra values, for one): until
    # the result is printed, stdout is stderr, Airflow's import included.
    with contextlib.redirect_stdout(sys.stderr):
        from airflow_provider_walthrottle.exceptions import WalThrottleError
        from airflow_provider_walthrottle.wal.health import evaluate_wal_archival

        try:
            hook = make_hook(args.target, args.database)
            health = evaluate_wal_archival(hook.get_archiver_status(), args.max_pending_segments)
            target = hook.describe_target()
        except (WalThrottleError, ValueError) as error:
            print(f"walthrottle: error: {error}")
            return EXIT_UNKNOWN
    if args.json:
        print(json.dumps(health.to_dict(), indent=2))
    else:
        print(render_text(health, target))
    return _EXIT_CODES[health.signal]


if __name__ == "__main__":
    sys.exit(main())
