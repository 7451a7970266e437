"""``walthrottle``: print what the hook sees, for a person or for a Nagios-style check.

It reads every health indicator, as the gate does (the WAL archival backlog, replication lag,
replication slot retention, and autovacuum on ``--table`` if given), whatever their flags: it shows
what each would decide. Exit codes follow the Nagios plugin convention and are the worst of them:
2 when any says stop, 3 when none does but one cannot be judged (not available, unknown, or an
error), 0 when all are normal.

The same ``status`` command is ``airflow walthrottle status``, registered through the provider
info's ``cli`` key (:func:`get_cli_commands`). Only its usage errors differ: Airflow's parser exits
2 for them, so a Nagios check should call the standalone ``walthrottle`` script.

``plan`` (``walthrottle plan``, ``airflow walthrottle plan``) prints a migration's plan before it
runs (:mod:`~airflow_provider_walthrottle.migrations.plan`): exit 0 when it is computed, 3 on an
error.
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
    from airflow_provider_walthrottle.indicators.base import HealthIndicator, Reading

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


STATUS_HELP = "print every health indicator's reading; exit 2 if one says stop"
STATUS_DESCRIPTION = (
    "Print the archiver's state and backlog, and a line per other health indicator (replication "
    "lag, replication slots, autovacuum on --table). Exit 0 when all are normal, 2 when one says "
    "stop, 3 when one cannot be judged."
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
    (
        ("--max-lag-seconds",),
        {"type": float, "default": None, "metavar": "S", "help": "replication lag's threshold in seconds"},
    ),
    (
        ("--max-lag-bytes",),
        {"type": int, "default": None, "metavar": "B", "help": "replication lag's threshold in bytes"},
    ),
    (
        ("--max-retained-bytes",),
        {"type": int, "default": None, "metavar": "B", "help": "the WAL a replication slot may retain"},
    ),
    (("--table",), {"help": "a migrated table whose autovacuum to report (schema.table)"}),
    (("--database",), {"help": "a database that overrides the connection's own"}),
    (("--json",), {"action": "store_true", "help": "print JSON instead of text"}),
)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text!r}")
    return value


def _window(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 <= value <= 600):
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 0 to 600, got {text!r}")
    return value


def _whole(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number above 0, got {text!r}")
    return int(text)


PLAN_HELP = "plan a batched migration: its WAL, its duration and what binds it; changes no row"
PLAN_DESCRIPTION = (
    "Count the rows in scope, run batch_sql over a few sample ranges in a transaction that is rolled "
    "back (the sampled rows are locked briefly and WAL is written, but no row changes), watch the "
    "archiver's pace, and print the projected WAL, the archiver-, database- and schedule-bound "
    "durations, the peak backlog and warnings. Exit 0 when the plan is computed, 3 on an error."
)

#: ``plan``'s arguments, as ``(flags, add_argument keywords)``, as :data:`STATUS_ARGUMENTS`.
PLAN_ARGUMENTS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    STATUS_ARGUMENTS[0],
    (("--table",), {"required": True, "help": "the table to migrate (schema.table)"}),
    (("--column",), {"required": True, "help": "its key column: unique, NOT NULL, indexed"}),
    (
        ("--batch-sql",),
        {
            "required": True,
            "metavar": "SQL",
            "help": "the statement per range, with %%(start)s and %%(end)s; %%%% for a literal %%",
        },
    ),
    (("--scope",), {"help": "an SQL condition on the rows to migrate; %%%% for a literal %%"}),
    (
        ("--max-pending-segments",),
        {
            "type": _threshold,
            "default": DEFAULT_MAX_PENDING_SEGMENTS,
            "metavar": "N",
            "help": f"the threshold the migration runs under (default {DEFAULT_MAX_PENDING_SEGMENTS})",
        },
    ),
    (
        ("--archiver-pace",),
        {
            "type": _positive_float,
            "default": None,
            "metavar": "SEGMENTS_PER_S",
            "help": "the archiver's pace, instead of measuring it",
        },
    ),
    (
        ("--archiver-window",),
        {
            "type": _window,
            "default": 10.0,
            "metavar": "S",
            "help": "seconds to watch pg_stat_archiver for its pace (default 10)",
        },
    ),
    (
        ("--sample-ranges",),
        {"type": _whole, "default": 5, "metavar": "N", "help": "sample ranges (default 5)"},
    ),
    (
        ("--sample-keys",),
        {"type": _whole, "default": 1000, "metavar": "N", "help": "keys per sample range (default 1000)"},
    ),
    (
        ("--batch-size",),
        {"type": _whole, "default": 1000, "metavar": "N", "help": "the first batch (default 1000)"},
    ),
    (
        ("--max-batch-size",),
        {"type": _whole, "default": None, "metavar": "N", "help": "the largest batch (default none)"},
    ),
    (
        ("--target-batch-seconds",),
        {"type": _positive_float, "default": 30.0, "metavar": "S", "help": "a batch's duration (default 30)"},
    ),
    (
        ("--interval",),
        {
            "type": _positive_float,
            "default": None,
            "metavar": "S",
            "help": "seconds between two runs of the DAG (default: back to back, about 3 s between batches)",
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
    plan_parser = commands.add_parser("plan", help=PLAN_HELP, description=PLAN_DESCRIPTION)
    for flags, options in PLAN_ARGUMENTS:
        plan_parser.add_argument(*flags, **options)
    return parser


def get_cli_commands() -> list[CLICommand]:
    """Return ``airflow walthrottle status`` and ``plan``, for the provider info's ``cli`` key.

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
    plan_command = ActionCommand(
        name="plan",
        help=PLAN_HELP,
        description=PLAN_DESCRIPTION,
        func=airflow_plan,
        args=tuple(Arg(flags, **options) for flags, options in PLAN_ARGUMENTS),
    )
    return [
        GroupCommand(
            name="walthrottle",
            help="Inspect PostgreSQL's WAL archival backlog as the walthrottle provider sees it",
            subcommands=(status_command, plan_command),
        )
    ]


def airflow_status(args: argparse.Namespace) -> NoReturn:
    """Run ``airflow walthrottle status``, and exit with its code (Airflow ignores a return value).

    :param args: the parsed arguments.
    """
    sys.exit(status(args))


def airflow_plan(args: argparse.Namespace) -> NoReturn:
    """Run ``airflow walthrottle plan``, and exit with its code.

    :param args: the parsed arguments.
    """
    sys.exit(plan(args))


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


def status_indicators(args: argparse.Namespace) -> list[HealthIndicator]:
    """Return the indicators ``status`` reads, with the thresholds given on the command line.

    :param args: ``status``'s arguments, parsed.
    :raises ValueError: for a threshold an indicator refuses.
    """
    from airflow_provider_walthrottle.indicators.autovacuum import AutovacuumIndicator
    from airflow_provider_walthrottle.indicators.replication_lag import ReplicationLagIndicator
    from airflow_provider_walthrottle.indicators.replication_slots import ReplicationSlotsIndicator
    from airflow_provider_walthrottle.indicators.wal_archival import WalArchivalIndicator

    def given(**thresholds: Any) -> dict[str, Any]:
        return {name: value for name, value in thresholds.items() if value is not None}

    indicators: list[HealthIndicator] = [
        WalArchivalIndicator(max_pending_segments=args.max_pending_segments),
        ReplicationLagIndicator(
            **given(max_lag_seconds=args.max_lag_seconds, max_lag_bytes=args.max_lag_bytes)
        ),
        ReplicationSlotsIndicator(**given(max_retained_bytes=args.max_retained_bytes)),
    ]
    if args.table:
        indicators.append(AutovacuumIndicator())
    for indicator in indicators:
        indicator.validate()
    return indicators


#: The Nagios order of the signals, best first: the exit code is the worst reading's.
_SEVERITY = (Signal.NORMAL, Signal.NOT_AVAILABLE, Signal.UNKNOWN, Signal.STOP)


def worst(readings: Sequence[Reading]) -> Reading:
    """Return the reading that decides the exit code: a stop, else one that cannot be judged.

    :param readings: what each indicator found, the WAL archival backlog's first.
    """
    return max(readings, key=lambda reading: _SEVERITY.index(reading.signal))


def render_text(readings: Sequence[Reading], target: str) -> str:
    """Return the status as lines for a person: a Nagios-style headline, the backlog, then a line per
    other indicator.

    :param readings: what each indicator found, the WAL archival backlog's first.
    :param target: what was inspected, for the headline.
    """
    from airflow_provider_walthrottle.indicators.wal_archival import WalArchivalReading

    headline = worst(readings)
    perf = " ".join(_perf_data(reading) for reading in readings).strip()
    lines = [
        f"{headline.label.upper()} {headline.signal.value.upper()} - {target}: {headline.reason}"
        + (f" | {perf}" if perf else "")
    ]
    for reading in readings:
        if isinstance(reading, WalArchivalReading) and reading.health is not None:
            lines.extend(_backlog_lines(reading.health))
        else:
            lines.append(f"  {reading.label:<17}: {reading.summary()}")
    return "\n".join(lines)


def _perf_data(reading: Reading) -> str:
    """Nagios performance data: ``pending=P;;T`` for the backlog, ``<indicator>.<value>=N`` else."""
    from airflow_provider_walthrottle.indicators.wal_archival import WalArchivalReading

    if isinstance(reading, WalArchivalReading):
        pending = reading.values.get("pending_segments")
        return "" if pending is None else f"pending={pending};;{reading.values['max_pending_segments']}"
    return " ".join(
        f"{reading.indicator}.{name}={value}" for name, value in reading.values.items() if value is not None
    )


def _backlog_lines(health: Any) -> list[str]:
    status = health.status
    mib = 1024 * 1024
    if status.pending_segments is None:
        pending = f"unknown ({status.detail})"
    else:
        pending = f"{status.pending_segments} segments ({(status.pending_bytes or 0) / mib:.0f} MiB)"
    return [
        f"  WAL archival     : {health.signal.value}: {health.reason}",
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code.

    :param argv: the arguments, without the program name; ``sys.argv[1:]`` by default.
    """
    args = build_parser().parse_args(argv)
    return plan(args) if args.command == "plan" else status(args)


def status(args: argparse.Namespace) -> int:
    """Print the status of ``args.target``; return the exit code.

    :param args: ``status``'s arguments, parsed (see :data:`STATUS_ARGUMENTS`).
    """
    # A Nagios check's first line of output must be its headline, and Airflow logs to the stdout it
    # finds when it is imported (the secrets masker warns about short extra values, for one): until
    # the result is printed, stdout is stderr, Airflow's import included.
    with contextlib.redirect_stdout(sys.stderr):
        from airflow_provider_walthrottle.exceptions import WalThrottleError
        from airflow_provider_walthrottle.indicators.base import IndicatorContext

        try:
            hook = make_hook(args.target, args.database)
            context = IndicatorContext(table=args.table)
            readings = hook.read_indicators(status_indicators(args), context)
            target = hook.describe_target()
        except (WalThrottleError, ValueError) as error:
            print(f"walthrottle: error: {error}")
            return EXIT_UNKNOWN
    if args.json:
        # the backlog's fields at the top level, as before the other indicators; every reading by name
        backlog = getattr(readings[0], "health", None)
        document = {
            **(backlog.to_dict() if backlog is not None else {}),
            "worst_signal": worst(readings).signal.value,
            "indicators": {reading.indicator: reading.to_dict() for reading in readings},
        }
        print(json.dumps(document, indent=2))
    else:
        print(render_text(readings, target))
    return _EXIT_CODES[worst(readings).signal]


def plan(args: argparse.Namespace) -> int:
    """Compute and print the plan of a migration; return the exit code: 0, or 3 on an error.

    :param args: ``plan``'s arguments, parsed (see :data:`PLAN_ARGUMENTS`).
    """
    with contextlib.redirect_stdout(sys.stderr):  # Airflow's import may log to stdout, as for status
        import psycopg

        from airflow_provider_walthrottle.exceptions import WalThrottleError
        from airflow_provider_walthrottle.migrations.definition import MigrationDefinition
        from airflow_provider_walthrottle.migrations.plan import MigrationPlanError, compute_plan

        try:
            definition = MigrationDefinition(
                name=f"plan of {args.table}",
                table=args.table,
                column=args.column,
                batch_sql=args.batch_sql,
                scope=args.scope,
            )
            hook = make_hook(args.target, args.database)
            with hook.connect() as conn:
                result = compute_plan(
                    conn,
                    definition,
                    max_pending_segments=args.max_pending_segments,
                    sample_ranges=args.sample_ranges,
                    sample_keys=args.sample_keys,
                    archiver_window_seconds=args.archiver_window,
                    archiver_segments_per_second=args.archiver_pace,
                    first_batch_size=args.batch_size,
                    max_batch_size=args.max_batch_size,
                    target_batch_seconds=args.target_batch_seconds,
                    interval_seconds=args.interval,
                )
        except (WalThrottleError, ValueError, MigrationPlanError) as error:
            print(f"walthrottle: error: {error}")
            return EXIT_UNKNOWN
        except psycopg.Error as error:  # the connection lost, a query refused
            print(f"walthrottle: error: {' '.join(str(error).split())}")
            return EXIT_UNKNOWN
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print(result.render())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
