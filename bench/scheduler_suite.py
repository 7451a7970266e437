"""The real-scheduler cases of issue 12, one after the other, for ``docs/performance.md``.

Each case is one run of ``bench/scheduler_throughput.py`` (a real Airflow, a DAG from
``batched_migration_dag()`` with its defaults, a throwaway target PostgreSQL):

- **fast**: an archiver that keeps up (16 MiB segments, no delay), with the core in-process on a
  copy of the same table for the ratio;
- **slow**: an archiver of at most 8 segments a second (1 MiB segments, ``archive_command`` sleeping
  0.125 s), on a table whose migration writes many times the threshold's WAL;
- **celery_1** and **celery_3**: the CeleryExecutor with two workers, ``concurrency`` 1 and 3. The
  default schedule keeps one chain of runs (one batch at a time whatever ``concurrency`` says), so
  these run ``@daily`` with ``catchup``: the scheduler starts the past days' runs, N at a time.

    .venv/bin/python bench/scheduler_suite.py --json results.json [--quick] [--only fast,slow]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scheduler_throughput
from _cluster import machine, write_json

from airflow_provider_walthrottle.wal.health import DEFAULT_MAX_PENDING_SEGMENTS

#: The Celery cases' common arguments: two workers, and runs of past days started N at a time.
CELERY = ["--executor", "celery", "--workers", "2", "--schedule", "@daily", "--catchup"]

#: name: (label, arguments of the full run, arguments of a quick run)
CASES: dict[str, tuple[str, list[str], list[str]]] = {
    "fast": (
        "fast archiver",
        ["--rows", "20000000", "--seconds", "120", "--core"],
        ["--rows", "2000000", "--seconds", "30", "--core"],
    ),
    "slow": (
        "slow archiver (8 segments/s of 1 MiB)",
        ["--rows", "2000000", "--seconds", "60", "--wal-segsize-mb", "1", "--archive-delay", "0.125"],
        ["--rows", "500000", "--seconds", "30", "--wal-segsize-mb", "1", "--archive-delay", "0.125"],
    ),
    "celery_1": (
        "CeleryExecutor, concurrency 1",
        ["--rows", "10000000", "--seconds", "90", *CELERY, "--concurrency", "1"],
        ["--rows", "1000000", "--seconds", "30", *CELERY, "--concurrency", "1"],
    ),
    "celery_3": (
        "CeleryExecutor, concurrency 3",
        ["--rows", "10000000", "--seconds", "90", *CELERY, "--concurrency", "3"],
        ["--rows", "1000000", "--seconds", "30", *CELERY, "--concurrency", "3"],
    ),
}


def summarize(settings: dict[str, Any]) -> str:
    """Return one case's settings as a table cell."""
    parts = [f"{settings['rows']:,} rows", settings["executor"]]
    if settings["archive_delay_seconds"]:
        delay = settings["archive_delay_seconds"]
        parts.append(f"{settings['wal_segsize_mb']} MiB segments, archiver sleeps {delay} s")
    else:
        parts.append(f"{settings['wal_segsize_mb']} MiB segments, no archiver delay")
    if settings["schedule"] != "the helper's default":
        parts.append(f"schedule {settings['schedule']}{', catchup' if settings['catchup'] else ''}")
    if settings["concurrency"] != "the helper's default (1)":
        parts.append(f"concurrency {settings['concurrency']}")
    return "; ".join(parts)


def largest_sub_batch_segments(figures: dict[str, Any], wal_segsize_mb: int) -> float:
    """Return the largest mean WAL of one statement over the jobs, in segments (WAL / statements)."""
    means = [job["wal_bytes"] / job["sub_batches"] for job in figures.get("jobs", []) if job["sub_batches"]]
    return max(means, default=0.0) / (wal_segsize_mb * 1024 * 1024)


def main(argv: list[str] | None = None) -> int:
    """Run the cases, one after the other; write their results as one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--quick", action="store_true", help="smaller tables and shorter windows")
    parser.add_argument("--only", help="comma-separated cases (default: all)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(CASES)
    cases = []
    for name in names:
        label, full, quick = CASES[name]
        case_args = quick if args.quick else full
        print(f"[scheduler] {name}: bench/scheduler_throughput.py {shlex.join(case_args)}", flush=True)
        result = scheduler_throughput.run(scheduler_throughput.build_parser().parse_args(case_args))
        result["settings"]["summary"] = summarize(result["settings"])
        result["figures"]["largest_sub_batch_segments"] = largest_sub_batch_segments(
            result["figures"], result["settings"]["wal_segsize_mb"]
        )
        cases.append({"name": name, "label": label, "command": shlex.join(case_args), **result})
    results = {
        "quick": args.quick,
        "threshold": DEFAULT_MAX_PENDING_SEGMENTS,
        "command": ".venv/bin/python bench/scheduler_suite.py" + (" --quick" if args.quick else ""),
        "cases": cases,
        "machine": machine(),
    }
    print(json.dumps({case["name"]: case["figures"].get("rows_per_second") for case in cases}))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
