"""``walthrottle plan`` and ``airflow walthrottle plan``: print a migration's plan before it runs.

The plan is :func:`~airflow_provider_walthrottle.migrations.plan.compute_plan`'s: exit 0 when it is
computed, 3 on an error. With ``--save NAME`` it is also saved under that migration name
(:func:`~airflow_provider_walthrottle.migrations.plan_store.save_plan`), so that the migrations
page shows it before the migration starts. :mod:`~airflow_provider_walthrottle.cli` adds the
command to both parsers, from :data:`PLAN_ARGUMENTS`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any, NoReturn

from airflow_provider_walthrottle.cli_common import (
    EXIT_OK,
    EXIT_UNKNOWN,
    TARGET_ARGUMENT,
    make_hook,
    threshold,
)
from airflow_provider_walthrottle.wal.health import DEFAULT_MAX_PENDING_SEGMENTS


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
    "durations, the peak backlog and warnings. With --save NAME, also save it under that migration "
    "name for the migrations page. Exit 0 when the plan is computed (and saved), 3 on an error."
)

#: ``plan``'s arguments, as ``(flags, add_argument keywords)``, as
#: :data:`~airflow_provider_walthrottle.cli.STATUS_ARGUMENTS`.
PLAN_ARGUMENTS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    TARGET_ARGUMENT,
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
            "type": threshold,
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
    (
        ("--save",),
        {
            "metavar": "NAME",
            "help": "save the plan in the database under this migration name, for the migrations page "
            "(creates the state tables if missing; replaces a plan saved under it)",
        },
    ),
    (("--json",), {"action": "store_true", "help": "print JSON instead of text"}),
)


def airflow_plan(args: argparse.Namespace) -> NoReturn:
    """Run ``airflow walthrottle plan``, and exit with its code.

    :param args: the parsed arguments.
    """
    sys.exit(plan(args))


def plan(args: argparse.Namespace) -> int:
    """Compute and print the plan of a migration; return the exit code: 0, or 3 on an error.

    :param args: ``plan``'s arguments, parsed (see :data:`PLAN_ARGUMENTS`).
    """
    with contextlib.redirect_stdout(sys.stderr):  # Airflow's import may log to stdout, as for status
        import psycopg

        from airflow_provider_walthrottle.exceptions import WalThrottleError
        from airflow_provider_walthrottle.migrations.definition import MigrationDefinition
        from airflow_provider_walthrottle.migrations.plan import MigrationPlanError, compute_plan
        from airflow_provider_walthrottle.migrations.plan_store import save_plan

        try:
            definition = MigrationDefinition(
                name=args.save or f"plan of {args.table}",
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
                if args.save:
                    try:
                        save_plan(conn, definition, result)
                    except psycopg.Error as error:  # the state tables: no privilege to create or write them
                        reason = " ".join(str(error).split())
                        print(
                            f"walthrottle: error: the plan was not saved as migration {args.save!r}: {reason}"
                        )
                        return EXIT_UNKNOWN
                    print(f"walthrottle: plan saved as the plan of migration {args.save!r}")
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
