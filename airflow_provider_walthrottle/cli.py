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
runs (:mod:`~airflow_provider_walthrottle.cli_plan`): exit 0 when it is computed, 3 on an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from airflow_provider_walthrottle import __version__
from airflow_provider_walthrottle.cli_common import (
    EXIT_CRITICAL,
    EXIT_OK,
    EXIT_UNKNOWN,
    TARGET_ARGUMENT,
    make_hook,
    threshold,
)
from airflow_provider_walthrottle.cli_plan import (
    PLAN_ARGUMENTS,
    PLAN_DESCRIPTION,
    PLAN_HELP,
    airflow_plan,
    plan,
)
from airflow_provider_walthrottle.wal.health import DEFAULT_MAX_PENDING_SEGMENTS, Signal

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.cli.cli_config import CLICommand

    from airflow_provider_walthrottle.indicators.base import HealthIndicator, Reading

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


STATUS_HELP = "print every health indicator's reading; exit 2 if one says stop"
STATUS_DESCRIPTION = (
    "Print the archiver's state and backlog, and a line per other health indicator (replication "
    "lag, replication slots, autovacuum on --table). Exit 0 when all are normal, 2 when one says "
    "stop, 3 when one cannot be judged."
)

#: ``status``'s arguments, as ``(flags, add_argument keywords)``: the standalone parser and
#: ``airflow walthrottle status`` both take them from here.
STATUS_ARGUMENTS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    TARGET_ARGUMENT,
    (
        ("--max-pending-segments",),
        {
            "type": threshold,
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


if __name__ == "__main__":
    sys.exit(main())
