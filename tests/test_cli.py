"""``walthrottle status`` against real clusters: text, JSON and Nagios-style exit codes."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_walthrottle.cli import EXIT_CRITICAL, EXIT_OK, EXIT_UNKNOWN, main


def one_error_line(capsys, code: int) -> str:
    """Assert that a command exited UNKNOWN with one ``walthrottle: error:`` line on stderr, nothing on
    stdout; return that line."""
    captured = capsys.readouterr()
    assert code == EXIT_UNKNOWN
    assert captured.out == ""
    assert captured.err.startswith("walthrottle: error: ")
    assert captured.err.count("\n") == 1
    return captured.err


def test_status_above_the_threshold_exits_critical(pg_drained, capsys):
    pg_drained.archive_one_segment()
    pg_drained.make_backlog(5)

    code = main(["status", pg_drained.uri(), "--max-pending-segments", "4"])

    out = capsys.readouterr().out
    assert code == EXIT_CRITICAL
    headline = out.splitlines()[0]
    assert headline.startswith("WAL ARCHIVAL STOP - connection 'dsn' (127.0.0.1:")
    assert "5 WAL segments pending archival > threshold 4 | pending=5;;4" in headline
    assert "pending segments : 5 segments (80 MiB)" in out
    assert "archiver         : FAILING" in out
    assert pg_drained.superuser_password not in out


def test_status_has_a_line_per_indicator_and_exits_with_the_worst(pg_drained, capsys):
    pg_drained.execute("SELECT pg_create_physical_replication_slot('cli_held', true)")
    try:
        pg_drained.execute("CREATE TABLE IF NOT EXISTS cli_items (id int PRIMARY KEY)")
        argv = ["status", pg_drained.uri(), "--table", "public.cli_items"]

        normal = main(argv)
        text = capsys.readouterr().out
        stopped = main([*argv, "--max-retained-bytes", "0", "--json"])  # the slot holds WAL already
        data = json.loads(capsys.readouterr().out)
    finally:
        pg_drained.execute("SELECT pg_drop_replication_slot('cli_held')")

    assert normal == EXIT_OK, text
    assert text.splitlines()[0].startswith("WAL ARCHIVAL NORMAL - connection 'dsn'")
    for line in (
        "  replication lag  : normal: ",
        "  replication slots: normal: ",
        "  autovacuum       : normal: ",
    ):
        assert line in text, text
    assert stopped == EXIT_CRITICAL
    assert data["signal"] == "normal"  # the backlog's fields stay at the top level
    assert data["worst_signal"] == "stop"
    assert sorted(data["indicators"]) == [
        "autovacuum",
        "replication_lag",
        "replication_slots",
        "wal_archival",
    ]
    assert data["indicators"]["replication_slots"]["signal"] == "stop"
    assert "cli_held" in data["indicators"]["replication_slots"]["reason"]


def test_status_json_at_or_below_the_threshold_exits_ok(pg_drained, capsys, monkeypatch):
    pg_drained.archive_one_segment()
    pg_drained.make_backlog(2)
    monkeypatch.setenv("AIRFLOW_CONN_CLI_PRIMARY", pg_drained.uri())

    code = main(["status", "cli_primary", "--json"])

    data = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK
    assert data["signal"] == "normal"
    assert data["max_pending_segments"] == 42
    assert data["status"]["pending_segments"] == 2
    assert data["status"]["method"] == "exact"


def test_keyword_dsn_and_lsn_method(pg_drained, capsys):
    pg_drained.archive_one_segment()
    if not pg_drained.execute("SELECT 1 FROM pg_roles WHERE rolname = 'cli_plain'"):
        pg_drained.create_role("cli_plain", "cli-pw", pg_monitor=False)

    code = main(["status", pg_drained.dsn(user="cli_plain", password="cli-pw"), "--json"])

    data = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK
    assert (data["status"]["method"], data["status"]["pending_segments"]) == ("lsn", 0)


def test_archive_mode_off_exits_unknown(pg_cluster_factory, capsys):
    cluster = pg_cluster_factory(name="cli-archive-off", archive_mode="off")

    code = main(["status", cluster.uri()])

    assert code == EXIT_UNKNOWN
    assert capsys.readouterr().out.startswith("WAL ARCHIVAL NOT_AVAILABLE")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "no_such_conn"], "Airflow connection 'no_such_conn' is not defined"),
        (["status", "host=127.0.0.1 port={port} user=x password=y"], "Connection refused"),
        (["status", "host=127.0.0.1 port=notaport"], "the DSN is malformed"),
    ],
)
def test_errors_are_one_line_on_stderr(capsys, args, message):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = main([arg.format(port=port) for arg in args])

    assert message in one_error_line(capsys, code)


def test_a_threshold_that_is_not_a_number_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["status", "whatever", "--max-pending-segments", "lots"])
    assert exited.value.code == EXIT_UNKNOWN
    assert "max_pending_segments must be a whole number" in capsys.readouterr().err


def test_console_script_is_installed(pg_drained):
    executable = shutil.which("walthrottle", path=str(Path(sys.executable).parent))
    assert executable, "pip install should put the walthrottle console script beside python"
    result = subprocess.run(
        [executable, "status", pg_drained.uri(), "--json"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == EXIT_OK, result.stderr
    assert json.loads(result.stdout)["signal"] == "normal"


def test_the_headline_is_the_first_line_even_when_airflow_logs(pg_drained):
    # a short extra value makes Airflow's secrets masker log a warning, on stdout by default;
    # Nagios reads the first line of a check's output
    executable = shutil.which("walthrottle", path=str(Path(sys.executable).parent))
    assert executable
    uri = f"{pg_drained.uri()}{'&' if '?' in pg_drained.uri() else '?'}connect_timeout=3"
    result = subprocess.run([executable, "status", uri], capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout.splitlines()[0].startswith("WAL ARCHIVAL NORMAL - connection 'dsn'"), result.stdout


def test_connection_stored_in_the_metadata_database(pg_drained, capsys):
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    from tests.support.dag_testing import migrate_metadata_db

    migrate_metadata_db()
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == "cli_db_only").delete()
        session.add(Connection(conn_id="cli_db_only", uri=pg_drained.uri()))

    code = main(["status", "cli_db_only", "--json"])

    assert code == EXIT_OK
    assert json.loads(capsys.readouterr().out)["signal"] == "normal"


# ------------------------------------------------------------------- airflow walthrottle status


def run_airflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airflow", *args], capture_output=True, text=True, timeout=120
    )


def test_airflow_and_the_script_parse_status_alike():
    import argparse

    from airflow_provider_walthrottle.cli import airflow_status, build_parser, get_cli_commands

    (group,) = get_cli_commands()
    command = group.subcommands[0]
    assert (group.name, command.name, command.func) == ("walthrottle", "status", airflow_status)
    airflows = argparse.ArgumentParser()
    for arg in command.args:
        arg.add_to_parser(airflows)
    argv = ["warehouse", "--max-pending-segments", "7", "--database", "app", "--json"]

    parsed = vars(airflows.parse_args(argv))

    assert parsed == {
        "target": "warehouse",
        "max_pending_segments": 7,
        "max_lag_seconds": None,
        "max_lag_bytes": None,
        "max_retained_bytes": None,
        "table": None,
        "database": "app",
        "json": True,
    }
    assert parsed == {
        k: v for k, v in vars(build_parser().parse_args(["status", *argv])).items() if k != "command"
    }
    assert vars(airflows.parse_args(["warehouse"]))["max_pending_segments"] == 42


def test_airflow_lists_walthrottle_status_among_its_commands():
    result = run_airflow("walthrottle", "status", "--help")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: airflow walthrottle status"), result.stdout
    for argument in ("target", "--max-pending-segments N", "--database", "--json"):
        assert argument in result.stdout, argument
    assert "For Nagios, call the walthrottle script" in result.stdout


def test_airflow_walthrottle_status_above_the_threshold_exits_critical(pg_drained):
    pg_drained.archive_one_segment()
    pg_drained.make_backlog(5)

    result = run_airflow("walthrottle", "status", pg_drained.uri(), "--max-pending-segments", "4", "--json")

    assert result.returncode == EXIT_CRITICAL, result.stderr
    data = json.loads(result.stdout)
    assert (data["signal"], data["status"]["pending_segments"], data["max_pending_segments"]) == (
        "stop",
        5,
        4,
    )


# ------------------------------------------------------------------------- passwords, silent servers


@pytest.mark.parametrize(
    ("dsn", "secrets"),
    [
        # libpq: invalid percent-encoded token: "p%zzword"
        ("postgresql://mon:p%zzword@127.0.0.1/postgres", ["p%zzword", "zzword"]),
        # libpq: end of string reached when looking for matching "]" ...: "<the whole URI>"
        ("postgresql://mon:s3cretword@[::1/postgres", ["s3cretword"]),
        # libpq: missing "=" after "secretword" in connection info string
        ("host=127.0.0.1 user=mon password=my secretword dbname=postgres", ["secretword", "my secret"]),
        # an unencoded @ in the password: libpq takes "qx7zz@127.0.0.1" for the host
        ("postgresql://mon:p@qx7zz@127.0.0.1/postgres", ["p@qx7zz", "qx7zz"]),
        # the password where the port goes
        ("postgresql://mon@127.0.0.1:s3cretword/postgres", ["s3cretword"]),
    ],
)
def test_a_malformed_dsn_is_refused_without_quoting_it(capsys, dsn, secrets):
    code = main(["status", dsn])

    error = one_error_line(capsys, code)
    assert error.startswith("walthrottle: error: the DSN is malformed")
    assert "expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE" in error
    for secret in secrets:
        assert secret not in error


def test_the_console_script_prints_no_password_of_a_malformed_dsn():
    executable = shutil.which("walthrottle", path=str(Path(sys.executable).parent))
    assert executable
    result = subprocess.run(
        [executable, "status", "postgresql://mon:p%zzword@127.0.0.1/postgres"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == EXIT_UNKNOWN
    assert "zzword" not in result.stdout + result.stderr
    assert "the DSN is malformed" in result.stderr


def test_a_dsn_gets_the_default_connect_timeout_unless_it_sets_one():
    from airflow_provider_walthrottle.cli import make_hook

    assert make_hook("postgresql://u:p@db.example/app", None).connection_kwargs()["connect_timeout"] == 10
    kwargs = make_hook("host=db.example user=u connect_timeout=3", None).connection_kwargs(read_only=True)
    assert kwargs["connect_timeout"] == "3"
    assert kwargs["options"] == "-c statement_timeout=30000"


@pytest.mark.slow
def test_status_of_a_silent_server_exits_unknown_within_the_timeout():
    import os
    import time

    from tests.support.silent_server import SilentServer

    executable = shutil.which("walthrottle", path=str(Path(sys.executable).parent))
    assert executable
    # 3 s instead of the default 10 s (checked above), through [walthrottle] connect_timeout
    env = {**os.environ, "AIRFLOW__WALTHROTTLE__CONNECT_TIMEOUT": "3"}
    with SilentServer() as server:
        started = time.monotonic()
        try:
            result = subprocess.run(
                [executable, "status", f"postgresql://mon:mon-secret@127.0.0.1:{server.port}/db"],
                capture_output=True,
                text=True,
                timeout=30,
                env=env,
            )
        except subprocess.TimeoutExpired:
            pytest.fail("walthrottle status still waits for a silent server after 30 s")
        waited = time.monotonic() - started
        assert server.accepted == 1
    assert result.returncode == EXIT_UNKNOWN, result
    assert waited < 3 + 8  # the timeout, plus the start of a Python with Airflow
    assert result.stdout == ""
    assert result.stderr.startswith("walthrottle: error: Cannot connect to PostgreSQL with connection 'dsn'")
    assert "timeout expired" in result.stderr and result.stderr.count("\n") == 1
    assert "mon-secret" not in result.stderr


# ------------------------------------------------------------------------------------- walthrottle plan

PLAN_BATCH_SQL = (
    "UPDATE cli_plan SET counter = counter + 1 WHERE id BETWEEN %(start)s AND %(end)s AND {scope}"
)


def plan_argv(target: str, *more: str) -> list[str]:
    from tests.support.migration_tables import SCOPE

    return [
        "plan",
        target,
        "--table",
        "public.cli_plan",
        "--column",
        "id",
        "--batch-sql",
        PLAN_BATCH_SQL.format(scope=SCOPE),
        "--scope",
        SCOPE,
        "--archiver-window",
        "0.2",
        *more,
    ]


def test_plan_prints_the_block_and_the_json_and_changes_nothing(pg_drained, capsys):
    from tests.support.migration_tables import in_scope_keys, make_table

    make_table(pg_drained, "cli_plan", 12_000)
    digest = "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM cli_plan AS t"
    before = pg_drained.execute(digest)

    text_code = main(plan_argv(pg_drained.uri(), "--archiver-pace", "2"))
    text = capsys.readouterr().out
    json_code = main(plan_argv(pg_drained.uri(), "--json"))
    data = json.loads(capsys.readouterr().out)

    assert pg_drained.execute(digest) == before
    rows = len(in_scope_keys(pg_drained, "cli_plan"))
    assert (text_code, json_code) == (EXIT_OK, EXIT_OK)
    lines = text.splitlines()
    assert lines[0] == "Plan of a migration of public.cli_plan (key id, scope tenant % 3 = 0)", text
    assert f"  rows in scope    : {rows:,} (counted)" in lines
    for label in ("sample", "per row", "projected WAL", "archiver-bound", "database-bound", "schedule-bound"):
        assert any(line.startswith(f"  {label:<17}: ") for line in lines), label
    assert "  archiver         : 2 segments/s, as given" in lines
    assert "rolled back: no row changed" in text
    assert pg_drained.superuser_password not in text
    assert data["rows"] == rows
    assert data["rows_method"] == "counted"
    assert data["archiver"]["source"] in ("none", "measured")
    assert len(data["samples"]) == 5
    assert set(data["bounds"]) == {"archiver", "database", "schedule"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--table", "public.cli_plan_nowhere"], "table public.cli_plan_nowhere does not exist"),
        (["--column", "tenant"], "column public.cli_plan.tenant"),
        (["--batch-sql", "UPDATE cli_plan SET counter = 1 WHERE id = %(start)s"], "%(end)s"),
    ],
)
def test_plan_errors_are_one_line_and_exit_unknown(pg_drained, capsys, argv, message):
    from tests.support.migration_tables import make_table

    make_table(pg_drained, "cli_plan", 100)
    args = plan_argv(pg_drained.uri())
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        args[args.index(flag) + 1] = value

    code = main(args)

    assert message in one_error_line(capsys, code)


def test_plan_of_an_unreachable_server_exits_unknown(capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    code = main(plan_argv(f"host=127.0.0.1 port={port} user=x password=y"))

    captured = capsys.readouterr()
    assert code == EXIT_UNKNOWN
    assert "Connection refused" in captured.err
    assert captured.err.count("\n") == 1


def test_airflow_and_the_script_parse_plan_alike():
    import argparse

    from airflow_provider_walthrottle.cli import airflow_plan, build_parser, get_cli_commands

    (group,) = get_cli_commands()
    assert [command.name for command in group.subcommands] == ["status", "plan"]
    command = group.subcommands[1]
    assert command.func is airflow_plan
    airflows = argparse.ArgumentParser()
    for arg in command.args:
        arg.add_to_parser(airflows)
    argv = plan_argv("warehouse", "--archiver-pace", "1.5", "--interval", "300", "--json")[1:]

    parsed = vars(airflows.parse_args(argv))

    assert parsed["archiver_pace"] == 1.5
    assert parsed["interval"] == 300.0
    assert parsed["scope"] == "tenant %% 3 = 0"
    assert parsed["max_pending_segments"] == 42
    assert parsed == {
        k: v for k, v in vars(build_parser().parse_args(["plan", *argv])).items() if k != "command"
    }


@pytest.mark.parametrize("flag", ["--archiver-pace", "--sample-keys", "--interval"])
def test_plan_refuses_a_bad_number_as_a_usage_error(capsys, flag):
    with pytest.raises(SystemExit) as exited:
        main([*plan_argv("whatever"), flag, "0"])
    assert exited.value.code == EXIT_UNKNOWN
    assert "must be" in capsys.readouterr().err


def test_airflow_walthrottle_plan_prints_json(pg_drained):
    from tests.support.migration_tables import make_table

    make_table(pg_drained, "cli_plan", 3000)

    result = run_airflow("walthrottle", *plan_argv(pg_drained.uri(), "--json"))

    assert result.returncode == EXIT_OK, result.stderr
    assert json.loads(result.stdout)["table"] == "public.cli_plan"
