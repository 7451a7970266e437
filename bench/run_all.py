"""Run every benchmark and rewrite ``docs/performance.md`` (tables and plots) from their results.

This is what ``./dev bench`` runs. Each benchmark runs in an interpreter of its own, as a reader
would run it alone (``.venv/bin/python bench/<name>.py``), and hands its results back as JSON. The
page records the machine, the command and how long the whole run took. Nothing here is a test:
the numbers are reported, never asserted.

    ./dev bench            # the full run, about 40 minutes on 2 cores; rewrites docs/performance.md
    ./dev bench --quick    # a smoke run, about 12 minutes; writes into a temporary directory
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _plan_report
import _scheduler_report
import check_cost
import migration_throughput
import overhead
import parse_cost
import throttle_fidelity
from _cluster import ROOT, machine

BENCH = ROOT / "bench"

#: name: (script, arguments of the full run, arguments of a quick run)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "fidelity": ("throttle_fidelity.py", [], ["--rows", "300000"]),
    "overhead": ("overhead.py", [], ["--rows", "50000", "--repeat", "1"]),
    "check_cost": ("check_cost.py", [], ["--repeat", "20"]),
    "parse_cost": ("parse_cost.py", [], ["--repeat", "2"]),
    "throughput": ("migration_throughput.py", [], ["--rows", "100000"]),
    "plan_accuracy": ("plan_accuracy.py", [], ["--quick"]),
    "scheduler": ("scheduler_suite.py", [], ["--quick"]),
}


def run_benchmark(name: str, quick: bool, work: Path, images: Path) -> tuple[dict[str, Any], float]:
    """Run one benchmark script; return its JSON results and its wall time in seconds."""
    script, full_args, quick_args = BENCHMARKS[name]
    out = work / f"{name}.json"
    command = [sys.executable, str(BENCH / script), "--json", str(out), *(quick_args if quick else full_args)]
    if name == "fidelity":
        command += ["--plots", str(images)]
    print(f"[bench] {name}: {shlex.join(command[1:])}", flush=True)
    log = work / f"{name}.log"
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as stderr:
        proc = subprocess.run(command, stdout=None, stderr=stderr, cwd=ROOT, check=False)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8").splitlines()[-40:])
        raise SystemExit(f"[bench] {name} failed with exit code {proc.returncode}:\n{tail}")
    print(f"[bench] {name}: {elapsed:.0f} s", flush=True)
    return json.loads(out.read_text(encoding="utf-8")), elapsed


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def render(results: dict[str, Any], images: Path, page: Path) -> str:
    """Return the text of ``docs/performance.md``."""
    host = results["machine"]
    fidelity = results["fidelity"]
    over = results["overhead"]
    checks = results["check_cost"]
    parse = results["parse_cost"]
    runs = {run["policy"]: run for run in fidelity["runs"]}
    ours = runs["ours"]
    image_dir = Path(os.path.relpath(images, page.parent))
    cost_at_1000 = {row["method"]: row for row in checks["rows"] if row["pending"] == 1000}
    largest = ours["largest_batch_segments"]
    ours_ok = ours["max_pending"] <= fidelity["threshold"] + largest
    headline = over["cases"][0]
    wall = results["wall_seconds"]
    lines = [
        "# Performance",
        "",
        "<!-- Written by bench/run_all.py (`./dev bench`); edit that script, not this page. -->",
        "",
        "Four benchmarks, from the benchmarks issue, and the raw throughput of the batching core, run",
        "against throwaway PostgreSQL clusters (the test suite's harness, `fsync=off`) in-process, with",
        "no scheduler; then the same migrations under a real Airflow scheduler with the DAG helper's",
        "defaults (section 5), and the plan's accuracy. They are measurements, not tests: the test",
        "suite asserts no timing.",
        "",
        "```bash",
        results["command"],
        "```",
        "",
        f"That command ran every benchmark below and wrote this page on {results['date']}, in "
        f"{wall / 60:.1f} minutes. Each benchmark can also run alone; its command is given in its section.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {host['cpu']}, {host['cores']} cores |",
        f"| memory | {host['memory_gib']} GiB |",
        f"| OS | {host['os']} |",
        f"| PostgreSQL | {host['postgres']} |",
        f"| Python | {host['python']} |",
        f"| Airflow | {host['airflow']} (psycopg {host['psycopg']}) |",
        "",
        "The machine is a small shared VM: between two full runs here, rates moved by up to a third "
        "and the overhead ratios by a tenth. Read the ratios and the shapes, not the last digit.",
        "",
        "## Summary",
        "",
        "| benchmark | target | measured | |",
        "|---|---|---|---|",
        f"| throttle fidelity: highest backlog, ours | ≤ 42 + one batch (ours: {largest:.1f} segments) "
        f"| {ours['max_pending']} | {_verdict(ours_ok)} |",
        f"| throttle fidelity: throughput, ours | ≥ 0.9 of the archiver-bound limit | {ours['ratio']:.2f} "
        f"| {_verdict(ours['ratio'] >= 0.9)} |",
        f"| overhead against plain psycopg, WAL check on ({headline['sub_batch_size']:,} keys a statement) "
        f"| ≤ 1.1 | {headline['ratio_check_on']:.2f} | {_verdict(headline['ratio_check_on'] <= 1.1)} |",
        f"| one backlog check at 1,000 pending, exact | well under 1 ms | "
        f"{cost_at_1000['exact']['queries_median_ms']:.2f} ms | "
        f"{_verdict(cost_at_1000['exact']['queries_median_ms'] < 0.5)} |",
        f"| one backlog check at 1,000 pending, LSN | well under 1 ms | "
        f"{cost_at_1000['lsn']['queries_median_ms']:.2f} ms | "
        f"{_verdict(cost_at_1000['lsn']['queries_median_ms'] < 0.5)} |",
        f"| one backlog check at 1,000 pending, as the sensor, trigger and operator make it (exact up to "
        f"84, the estimate above) | well under 1 ms | {cost_at_1000['lsn']['queries_median_ms']:.2f} ms | "
        f"{_verdict(cost_at_1000['lsn']['queries_median_ms'] < 0.5)} |",
        f"| parse cost of the provider and example_dags/ | < 50 ms | {parse['added_ms']:.0f} ms "
        f"| {_verdict(parse['added_ms'] < 50)} |",
        f"| of it, importing the provider (sensor, operator, DAG helper) | < 50 ms | "
        f"{parse['provider_import_ms']:.0f} ms | {_verdict(parse['provider_import_ms'] < 50)} |",
        *(_scheduler_report.summary_rows(results["scheduler"]) if "scheduler" in results else []),
        "",
    ]
    lines += fidelity_section(fidelity, runs, image_dir)
    lines += overhead_section(over, results["seconds"]["overhead"])
    lines += check_cost_section(checks)
    lines += parse_cost_section(parse)
    lines += throughput_section(results["throughput"])
    if "scheduler" in results:  # results kept before it existed render without it
        lines += _scheduler_report.scheduler_section(results["scheduler"])
    if "plan_accuracy" in results:  # results kept before it existed render without it
        lines += _plan_report.section(results["plan_accuracy"])
    return "\n".join(lines) + "\n"


def fidelity_section(fidelity: dict[str, Any], runs: dict[str, Any], image_dir: Path) -> list[str]:
    ours = runs["ours"]
    wal_x = ours["wal_bytes"] / fidelity["segment_bytes"] / fidelity["threshold"]
    return [
        "## 1. Throttle fidelity",
        "",
        f"A table of {fidelity['rows']:,} rows, every row updated once "
        "(`UPDATE items SET migrated = true WHERE id BETWEEN %(start)s AND %(end)s`, sub-batches of "
        f"{fidelity['sub_batch_size']:,} keys, no pause), which writes "
        f"{ours['wal_bytes'] / 2**20:,.0f} MiB of WAL: {wal_x:.0f} times the threshold of "
        f"{fidelity['threshold']} segments. Each policy runs on a fresh cluster with 1 MiB WAL segments "
        f"(`initdb --wal-segsize=1`, so that a run takes a minute, not an hour) whose `archive_command` "
        f"sleeps {1 / fidelity['nominal_archive_rate']:g} s and copies: at most "
        f"{fidelity['nominal_archive_rate']:g} segments a second. The archiver's real pace, measured on "
        "each cluster before the run by draining a backlog of 60 segments, is the `archiver segments/s` "
        "column; the process start-up of each copy makes it a little slower than nominal. "
        "A second connection counts the `.ready` segments (`pg_ls_archive_statusdir()`) every 100 ms.",
        "",
        f"- **no throttle**: fixed batches of {fidelity['batch_size']:,} keys, back to back.",
        "- **GitLab**: fixed batches of "
        f"{fidelity['batch_size']:,} keys; before each batch (that is, after the last one) check the "
        f"backlog, and above 42 hold for a fixed time, then check again. GitLab holds 10 minutes; here "
        f"the hold is scaled by {fidelity['time_scale']:g} to {fidelity['gitlab_hold_seconds']:g} s.",
        "- **ours**: `BatchedMigrationOperator`'s own batch loop, in-process: `run_batch()` as the "
        "operator drives it (the runner with its check between sub-batches, and the batch-size optimizer, "
        f"starting at {fidelity['batch_size']:,} keys) with the WAL flag on, called again after each "
        "batch. When it says to wait for the backlog, the benchmark runs the trigger the operator defers "
        "on (the real `WalArchivalTrigger`) to its first event, or sleeps for a fixed wait when the "
        "backlog that would make room for the smallest batch is unknown. Its "
        "`wait_interval` (60 s by default) is scaled by the same factor, to "
        f"{fidelity['wait_interval']:g} s. "
        "What a real scheduler adds between tasks (queueing, a worker's start, the triggerer's round "
        "trip) is not modelled.",
        "- **ours, default wait_interval**: the same, with `wait_interval` left at 60 s (not scaled): "
        "the trigger it defers on checks again when the drain rate it measured says the backlog is "
        "back at 42 (at least 1 s and at most `wait_interval` apart).",
        "",
        "The archiver-bound limit is the archiver's pace times the segment size, divided by the WAL bytes "
        "a row costs (measured with `pg_current_wal_lsn()` before and after the migration, so the "
        "provider's bookkeeping is counted): no policy can go faster for long without growing the "
        "backlog. A policy that ends with a backlog beats it a little, because the last 42 segments "
        "need not be shipped within the run: here that is "
        f"{42 * fidelity['segment_bytes'] / ours['wal_bytes']:.0%} of the WAL. The seconds above 42 run "
        "until the backlog is back at or below 42, after the "
        "migration for the policy that never waits.",
        "",
        "```bash",
        ".venv/bin/python bench/throttle_fidelity.py --plots docs/images",
        "```",
        "",
        throttle_fidelity.table(fidelity),
        "",
        f"![The WAL backlog over time, by policy]({image_dir.as_posix()}/throttle_fidelity_backlog.png)",
        "",
        *fidelity_findings(fidelity, runs),
        "",
        f"![Our batch size over time]({image_dir.as_posix()}/throttle_fidelity_batch_size.png)",
        "",
        "Our batches start at the configured size, double while the time target allows, and shrink to the "
        "WAL headroom once the backlog nears 42.",
        "",
    ]


def fidelity_findings(fidelity: dict[str, Any], runs: dict[str, Any]) -> list[str]:
    """Return the paragraphs that read the fidelity table, with its numbers."""
    ours, gitlab, none = runs["ours"], runs["gitlab"], runs["none"]
    threshold = fidelity["threshold"]
    drain = threshold / gitlab["archive_rate"]
    hold = fidelity["gitlab_hold_seconds"]
    segment_mb = 16
    real_rate = threshold / 60  # segments a second that ship 42 in a minute
    return [
        f"Without a throttle the backlog peaks at {none['max_pending']} segments and stays above "
        f"{threshold} for {none['seconds_above']:.0f} s. GitLab's check between batches keeps the peak "
        f"to {gitlab['max_pending']} ({gitlab['overshoot']} over; a fixed batch writes "
        f"{gitlab['largest_batch_segments']:.1f} segments) and reaches {gitlab['ratio']:.2f} of the limit. "
        f"Ours peaks at {ours['max_pending']} ({ours['overshoot']} over) and reaches {ours['ratio']:.2f} of "
        f"the limit, spending {ours['seconds_above']:.1f} s above {threshold}: it sizes each batch to the "
        f"headroom left under {threshold} at the measured WAL bytes per row, and checks between "
        "sub-batches, so the backlog stays just under the threshold. The archiver sat idle "
        f"{ours['seconds_idle']:.1f} s of the {ours['seconds']:.0f} s under ours, "
        f"{gitlab['seconds_idle']:.1f} s of {gitlab['seconds']:.0f} s under GitLab's policy.",
        "",
        f"GitLab does well here because of the scaling: the archiver ships {threshold} segments in "
        f"{drain:.1f} s, about the {hold:g} s hold, so it seldom runs dry during a hold. Once the hold is "
        f"the longer, the policy's throughput falls to about (time to ship {threshold} segments) / (hold): "
        f"with GitLab's real 10 minutes and an archiver that ships {threshold} segments of {segment_mb} MB "
        f"in a minute ({real_rate * segment_mb:.0f} MB/s), a tenth of the limit.",
        "",
        *_default_wait_findings(runs, threshold, real_rate, segment_mb),
    ]


def _default_wait_findings(
    runs: dict[str, Any], threshold: int, real_rate: float, segment_mb: int
) -> list[str]:
    default = runs.get("ours_default")
    if default is None:
        return []
    return [
        f"Ours at its default `wait_interval` of 60 s, not scaled, peaks at {default['max_pending']} and "
        f"reaches {default['ratio']:.2f} of the limit, with the archiver idle "
        f"{default['seconds_idle']:.1f} s. "
        "A wait does not last `wait_interval`: the trigger measures how fast the backlog drains between "
        f"its checks and checks again when it should be back at {threshold}, so the migration goes on "
        "about when the archiver has made room. A long `wait_interval` only caps the time between two "
        f"checks; it does not leave a fast archiver (say {threshold} segments of {segment_mb} MB in a "
        f"minute, {real_rate * segment_mb:.0f} MB/s) idle the way GitLab's fixed hold does.",
    ]


def overhead_section(over: dict[str, Any], seconds: float) -> list[str]:
    return [
        "## 2. Overhead against a plain psycopg loop",
        "",
        f"The same {over['rows']:,} rows updated by the same statements over the same key ranges: by "
        "a plain psycopg loop (autocommit, one statement a transaction, nothing else), and by "
        "`BatchedMigrationOperator`'s batch loop in-process (`prepare()` and `run_batch()` as the "
        f"operator drives them, once per task, batches starting at {over['batch_size']:,} keys, no pause "
        "between sub-batches), "
        "with the WAL flag on and off. Each run migrates a fresh copy of the table, after a `CHECKPOINT`; "
        f"the order rotates, and the median of {over['repeat']} runs is reported. Connecting, which "
        "each real task does once, and the scheduler are left out.",
        "",
        "```bash",
        ".venv/bin/python bench/overhead.py",
        "```",
        "",
        overhead.table(over),
        "",
        "The *progress loop* is the plain loop with what exactly once needs and nothing else: each "
        "statement and an update of a progress row with its row count, committed together. It is the "
        "floor of any loop that cannot repeat or skip a range after a crash.",
        "",
        "Where the operator's time goes, timed by part of the loop in one more run with the check on "
        "(time per statement, and its share):",
        "",
        overhead.breakdown_table(over),
        "",
        "The server's time per statement, from `pg_stat_statements`:",
        "",
        overhead.server_table(over),
        "",
        "Per sub-batch the operator sends one transaction in two round trips of psycopg's pipeline "
        "mode: `BEGIN`, the job row's lock, a probe for the first key after where the job resumes (with "
        "the WAL position) and the statement; then the progress update and `COMMIT` (or `ROLLBACK`, "
        "should the range have gone out of date: a key arrived in front of it, or the job moved on, and "
        "it runs again over a fresh plan). The statement's row count is needed before its progress "
        "is, so two round trips is the floor while both stay in one transaction. Ranges are planned "
        "ahead, many per query (`table_queries.range_plan`), and with a fixed `sub_batch_size` by the "
        "claim's walk of the job's keys itself, so each key is walked once. What is left over the "
        "progress loop is walking the key's index to find each range's end (the plain loops compute "
        "their ranges arithmetically), the lock and the probe, and the per-task work: `prepare()`, "
        "which runs the state tables' DDL (`IF NOT EXISTS`), the health check before the batch, and "
        "the runner's bookkeeping. Batches here "
        f"are small (they start at {over['batch_size']:,} keys on a table of {over['rows']:,}), so the "
        "per-task costs weigh more than in a migration whose batches last the 30 s target.",
        "",
    ]


def check_cost_section(checks: dict[str, Any]) -> list[str]:
    return [
        "## 3. Cost of one backlog check",
        "",
        "One check, by method, at 10, 1,000 and 10,000 pending segments: the queries alone on an open "
        "connection (what the operator does between sub-batches), and a whole "
        "`WalArchivalHook.get_archiver_status()` call, connect included (what the sensor and the CLI "
        "do). Past the first ten, the pending segments are `.ready` files the script writes into "
        "`archive_status` (thousands of real segments would take tens of GB of WAL): the exact method "
        "lists that directory, so its cost is measured as it would be; the LSN method does not look at "
        f"the directory, so it reports the ten real ones. Median and 95th percentile of {checks['repeat']} "
        "checks.",
        "",
        "```bash",
        ".venv/bin/python bench/check_cost.py",
        "```",
        "",
        check_cost.table(checks),
        "",
        "The exact method costs what `pg_ls_archive_statusdir()` costs: it `stat`s every file of the "
        "directory. The LSN method does arithmetic on `pg_stat_archiver` and costs the same at any "
        "backlog. A whole hook call is dominated by opening the connection (scram-sha-256 over TCP).",
        "",
        "So the sensor, the trigger and the operator count exactly only while the LSN estimate is at "
        "most twice the threshold (84 segments by default; `exact_up_to` of the hook): near the "
        "threshold, where the exact number decides, it costs well under a millisecond (the 10-segment "
        "row), and far above it they run the estimate's one query, the LSN row's cost at any backlog. "
        "(The `.ready` files this script adds do not move the estimate, so its exact rows measure the "
        "listing, as `walthrottle status` and the migrations page, which always count exactly, pay it.)",
        "",
    ]


def parse_cost_section(parse: dict[str, Any]) -> list[str]:
    return [
        "## 4. Parse cost",
        "",
        "What parsing `example_dags/` (whose DAGs import the provider) costs over one empty DAG, each "
        "in a fresh interpreter that has already imported Airflow's `DagBag`; median of "
        f"{parse['repeat']} interpreters.",
        "",
        "```bash",
        ".venv/bin/python bench/parse_cost.py",
        "```",
        "",
        parse_cost.table(parse),
        "",
        f"That is {parse['added_ms']:.0f} ms added, against a target of less than 50 ms. Two "
        "separate imports, each in a fresh interpreter with Airflow's `DagBag` and `DAG` loaded, tell "
        "where it goes: the provider's sensor, operator and DAG helper take "
        f"{parse['provider_import_ms']:.0f} ms to import, and `SQLExecuteQueryOperator` (the common.sql "
        "provider's, which the sensor example runs after its check) "
        f"{parse['other_providers_import_ms']:.0f} ms; the rest is building the DAGs' tasks. The "
        "provider, the example DAGs and the empty DAG are compiled to bytecode first, as `pip install` "
        "leaves an installed package; the psycopg driver, `PostgresHook` and the batching core are "
        "imported only when a task runs.",
        "",
    ]


def throughput_section(throughput: dict[str, Any]) -> list[str]:
    return [
        "## Raw throughput of the batching core",
        "",
        "The batching core alone (`run_batch`, what the operator calls once per task) over a fresh "
        "table, fixed batch sizes, no WAL check, no pause, until the migration is finished:",
        "",
        "```bash",
        ".venv/bin/python bench/migration_throughput.py",
        "```",
        "",
        migration_throughput.table(throughput),
        "",
        "Each sub-batch is one transaction in two round trips: the job's row lock, the first key after "
        "where it resumes (with the WAL position) and the statement; then the progress update and "
        "`COMMIT`. Ranges are planned ahead, many at once (by the claim's walk of the job's keys when "
        "the statement size is fixed). At 100 keys per sub-batch that fixed cost dominates; at 1,000 "
        "it is amortized.",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run, written to a temporary dir")
    parser.add_argument("--output", type=Path, help="the page to write (default: docs/performance.md)")
    parser.add_argument("--only", help="comma-separated benchmarks to run, for trying one out")
    parser.add_argument("--render", type=Path, help="only rewrite the page from a results.json kept before")
    args = parser.parse_args(argv)

    if args.output is None:
        args.output = (
            Path(tempfile.mkdtemp(prefix="walthrottle-bench-quick-")) / "performance.md"
            if args.quick
            else ROOT / "docs" / "performance.md"
        )
    images = args.output.parent / "images"
    if args.render:
        results = json.loads(args.render.read_text(encoding="utf-8"))
        args.output.write_text(render(results, images, args.output), encoding="utf-8")
        print(f"[bench] wrote {args.output} from {args.render}")
        return 0
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    started = time.monotonic()
    results: dict[str, Any] = {"seconds": {}}
    with tempfile.TemporaryDirectory(prefix="walthrottle-bench-") as work:
        for name in names:
            results[name], results["seconds"][name] = run_benchmark(name, args.quick, Path(work), images)
    if args.only:
        print(json.dumps({name: results["seconds"][name] for name in names}))
        return 0
    results["wall_seconds"] = time.monotonic() - started
    results["machine"] = machine()
    results["date"] = datetime.date.today().isoformat()
    results["command"] = shlex.join(["./dev", "bench", *(argv if argv is not None else sys.argv[1:])])
    kept = Path(tempfile.gettempdir()) / "walthrottle-bench-results.json"
    kept.write_text(json.dumps(results) + "\n", encoding="utf-8")
    args.output.write_text(render(results, images, args.output), encoding="utf-8")
    print(f"[bench] results kept in {kept} (re-render with --render {kept})")
    print(f"[bench] wrote {args.output} and its plots in {images} ({results['wall_seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
