"""What importing the provider and parsing ``example_dags/`` add to DAG parsing, over an empty DAG.

Each measurement runs in a fresh interpreter that imports Airflow's DagBag first (so Airflow's own
start-up is not counted), then times ``DagBag(dag_folder=...)`` on one folder: an empty DAG file,
or the example DAGs (whose first file also imports the provider). The median of ``--repeat`` fresh
interpreters is reported.

The provider, the example DAGs and the empty DAG are compiled to bytecode first, as ``pip install``
does for an installed package (and as the dag-processor's own imports leave them). Without it, an
editable checkout under ``PYTHONDONTWRITEBYTECODE`` compiles every module of the provider from
source in every parse, which Airflow's own, installed modules never do.

    .venv/bin/python bench/parse_cost.py
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cluster import ROOT, machine, markdown_table, write_json  # a private AIRFLOW_HOME for the children

EXAMPLE_DAGS = ROOT / "example_dags"

EMPTY_DAG = """
import datetime
from airflow.sdk import DAG
with DAG("empty", schedule=None, start_date=datetime.datetime(2026, 1, 1)) as dag:
    pass
"""

TIME_PARSE = """
import sys, time
from airflow.dag_processing.dagbag import DagBag
started = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
elapsed = time.perf_counter() - started
assert not bag.import_errors, bag.import_errors
print("RESULT", elapsed * 1000, len(bag.dag_ids))
"""


TIME_IMPORT = """
import importlib, sys, time
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import DAG
started = time.perf_counter()
for module in sys.argv[1:]:
    importlib.import_module(module)
print("RESULT", (time.perf_counter() - started) * 1000)
"""

#: What the example DAGs import from the provider, and from other providers.
PROVIDER_MODULES = (
    "airflow_provider_walthrottle.sensors.wal_archival",
    "airflow_provider_walthrottle.operators.batched_migration",
    "airflow_provider_walthrottle.migration_dag",
)
OTHER_MODULES = ("airflow.providers.common.sql.operators.sql",)


def import_ms(modules: tuple[str, ...], repeat: int) -> float:
    """Return the median time to import ``modules`` in a fresh interpreter that has Airflow's DagBag."""
    samples = []
    for _ in range(repeat):
        stdout = subprocess.run(
            [sys.executable, "-c", TIME_IMPORT, *modules], capture_output=True, text=True, check=True
        ).stdout
        (result,) = [line.split() for line in stdout.splitlines() if line.startswith("RESULT ")]
        samples.append(float(result[1]))
    return statistics.median(samples)


def parse_ms(folder: Path, repeat: int) -> tuple[float, int]:
    """Return the median parse time of ``folder`` in milliseconds, and its number of DAGs."""
    samples, dags = [], 0
    for _ in range(repeat):
        stdout = subprocess.run(
            [sys.executable, "-c", TIME_PARSE, str(folder)], capture_output=True, text=True, check=True
        ).stdout
        (result,) = [line.split() for line in stdout.splitlines() if line.startswith("RESULT ")]
        samples.append(float(result[1]))
        dags = int(result[2])
    return statistics.median(samples), dags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    for folder in (ROOT / "airflow_provider_walthrottle", EXAMPLE_DAGS):
        compileall.compile_dir(folder, quiet=1)
    with tempfile.TemporaryDirectory() as empty:
        (Path(empty) / "empty_dag.py").write_text(EMPTY_DAG)
        compileall.compile_dir(empty, quiet=1)
        baseline, _ = parse_ms(Path(empty), args.repeat)
    examples, dags = parse_ms(EXAMPLE_DAGS, args.repeat)
    provider_ms = import_ms(PROVIDER_MODULES, args.repeat)
    other_ms = import_ms(OTHER_MODULES, args.repeat)
    results = {
        "provider_import_ms": provider_ms,
        "other_providers_import_ms": other_ms,
        "repeat": args.repeat,
        "empty_ms": baseline,
        "examples_ms": examples,
        "example_dags": dags,
        "added_ms": examples - baseline,
        "machine": machine(),
    }
    print(table(results))
    print(f"\nadded over the empty DAG: {examples - baseline:.1f} ms")
    print(f"of which importing the provider's sensor, operator and DAG helper: {provider_ms:.1f} ms")
    print(f"and importing SQLExecuteQueryOperator (common.sql), used by one example: {other_ms:.1f} ms")
    write_json(args.json, results)
    return 0


def table(results: dict[str, Any]) -> str:
    """Return the Markdown table of the results."""
    return markdown_table(
        ("folder", "DAGs", "parse median ms"),
        [
            ("one empty DAG", 1, f"{results['empty_ms']:.1f}"),
            (
                "example_dags/ (imports the provider)",
                results["example_dags"],
                f"{results['examples_ms']:.1f}",
            ),
        ],
        "lrr",
    )


if __name__ == "__main__":
    sys.exit(main())
