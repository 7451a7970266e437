"""The example DAGs parse cleanly, with no database contact at parse time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE_DAGS = Path(__file__).resolve().parent.parent / "example_dags"

# Runs in a fresh interpreter. Any attempt to open a PostgreSQL connection while the DAG files are
# parsed raises, so a DAG that touches the database at parse time shows up as an import error.
# (This guard replaces psycopg's connect functions; it does not stand in for a database.)
PARSE = """
import sys, psycopg
def refuse(*args, **kwargs):
    raise RuntimeError("a DAG file opened a PostgreSQL connection at parse time")
psycopg.connect = psycopg.Connection.connect = refuse
psycopg.AsyncConnection.connect = refuse
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
for path, error in bag.import_errors.items():
    print("IMPORT ERROR", path, error)
print("DAGS", sorted(bag.dag_ids))
sys.exit(1 if bag.import_errors else 0)
"""


def parse(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", PARSE, str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_example_dags_parse_without_errors_or_database_access():
    result = parse(EXAMPLE_DAGS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "example_wal_archival_sensor" in result.stdout
    assert "example_batched_migration" in result.stdout
    assert "example_backfill_migration" in result.stdout


def test_the_guard_catches_a_dag_that_queries_at_parse_time(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PARSE_TIME", "postgresql://u:p@127.0.0.1:1/db")
    (tmp_path / "bad_dag.py").write_text(
        "# an airflow dag file (DagBag skips files without both words)\n"
        "from airflow_provider_walthrottle import WalArchivalHook\n"
        "WalArchivalHook(postgres_conn_id='parse_time').get_archiver_status()\n"
    )
    result = parse(tmp_path)
    assert result.returncode == 1
    assert "opened a PostgreSQL connection at parse time" in result.stdout
