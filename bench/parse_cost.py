"""What importing the provider and parsing ``example_dags/`` add to DAG parsing, over an empty DAG.

Each measurement runs in a fresh interpreter that imports Airflow's DagBag first (so Airflow's own
start-up is not counted), then times ``DagBag(dag_folder=...)`` on one folder: an empty DAG file,
or the example DAGs (whose first file also imports the provider). The median of ``--repeat`` fresh
interpreters is reported.

    .venv/bin/python bench/parse_cost.py
"""

from __future__ import annotations

import argparse
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
    with tempfile.TemporaryDirectory() as empty:
        (Path(empty) / "empty_dag.py").write_text(EMPTY_DAG)
        baseline, _ = parse_ms(Path(empty), args.repeat)
    examples, dags = parse_ms(EXAMPLE_DAGS, args.repeat)
    results = {
        "repeat": args.repeat,
        "empty_ms": baseline,
        "examples_ms": examples,
        "example_dags": dags,
        "added_ms": examples - baseline,
        "machine": machine(),
    }
    print(table(results))
    print(f"\nadded over the empty DAG: {examples - baseline:.1f} ms")
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
