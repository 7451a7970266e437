"""The real-scheduler section of ``docs/performance.md``, from ``bench/scheduler_suite.py``.

Kept apart from ``run_all.py`` (which renders the in-process benchmarks) so that each report reads
on its own; ``run_all.render`` adds these lines when the results have a ``scheduler`` entry.
"""

from __future__ import annotations

from typing import Any

#: The targets of issue 12, per case: (the figure, the target, how it is compared).
CORE_TARGET = 0.7
ARCHIVER_TARGET = 0.9
CELERY_SPEEDUP_TARGET = 2.0


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def share_between_batches(figures: dict[str, Any]) -> float | None:
    """Return the share of the migration's span in which no batch ran (the scheduler's gaps).

    :param figures: one case's figures, with its jobs' timeline.
    """
    if not figures.get("span_seconds"):
        return None
    # a job still open at the window's end counts as running to it
    span = figures["span_seconds"]
    spans = sorted(
        (job["started_after"], span if job["seconds"] is None else job["started_after"] + job["seconds"])
        for job in figures.get("jobs", [])
        if job["started_after"] is not None
    )
    if not spans:
        return None
    busy, end = 0.0, 0.0
    for start, stop in spans:  # the union of the batches' intervals: batches at once count once
        busy += max(stop - max(start, end), 0.0)
        end = max(end, stop)
    return max(1 - busy / span, 0.0)


def summary_rows(suite: dict[str, Any]) -> list[str]:
    """Return the summary table's rows for the real-scheduler targets.

    :param suite: the results of ``bench/scheduler_suite.py``.
    """
    cases = {case["name"]: case for case in suite["cases"]}
    rows = []
    fast = cases.get("fast")
    if fast:
        ratio = fast["figures"].get("fraction_of_core")
        rows.append(
            f"| real scheduler, defaults, fast archiver: rows/s against the core in-process | "
            f"≥ {CORE_TARGET} | {_ratio(ratio)} | {_verdict(ratio is not None and ratio >= CORE_TARGET)} |"
        )
    slow = cases.get("slow")
    if slow:
        figures = slow["figures"]
        ratio = figures.get("fraction_of_archiver_bound")
        allowed = suite["threshold"] + figures.get("largest_sub_batch_segments", 0)
        rows.append(
            f"| real scheduler, defaults, slow archiver: rows/s against the archiver-bound limit | "
            f"≥ {ARCHIVER_TARGET} | {_ratio(ratio)} | "
            f"{_verdict(ratio is not None and ratio >= ARCHIVER_TARGET)} |"
        )
        rows.append(
            f"| real scheduler, defaults, slow archiver: highest backlog | ≤ {allowed:.1f} (42 + one "
            f"sub-batch) | {figures['max_pending']} | {_verdict(figures['max_pending'] <= allowed)} |"
        )
    one, three = cases.get("celery_1"), cases.get("celery_3")
    if one and three:
        speedup = three["figures"]["rows_per_second"] / one["figures"]["rows_per_second"]
        rows.append(
            f"| CeleryExecutor, 2 workers: concurrency 3 against 1 | ≥ {CELERY_SPEEDUP_TARGET}x where "
            f"nothing else binds | {speedup:.2f}x | {_verdict(speedup >= CELERY_SPEEDUP_TARGET)} |"
        )
    return rows


def scheduler_section(suite: dict[str, Any]) -> list[str]:
    """Return the section's lines: what ran, a row per case, and what binds.

    :param suite: the results of ``bench/scheduler_suite.py``.
    """
    lines = [
        "## 5. Under a real scheduler",
        "",
        "What users run: a DAG built by `batched_migration_dag()` with **its defaults** (back-to-back "
        "runs, time-sized statements, pauses from the health signals, no batch cap), under a real "
        "Airflow: scheduler, dag-processor, triggerer and api-server, metadata in a PostgreSQL of its "
        "own, started as the end-to-end tests start them. The WAL flag is on. The target is a "
        "throwaway PostgreSQL with `archive_mode=on` and an archiver of a chosen pace "
        "(`archive_command` sleeps before each copy). The core's figure runs the batching core "
        "in-process on a fresh copy of the same table, with the same operator arguments, in the same "
        "run. Rates run from the first batch's start to the window's end (or the last batch's end): "
        "ramp-up included.",
        "",
        "```bash",
        suite["command"],
        "```",
        "",
        "| case | settings | rows/s | of the core | of the archiver-bound limit | max pending "
        "| s above 42 | batches | median batch | median gap | no batch running |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in suite["cases"]:
        figures, settings = case["figures"], case["settings"]
        batch = (
            f"{figures['median_batch_keys']:,.0f} keys, {figures['median_batch_seconds']:.1f} s"
            if figures.get("median_batch_keys")
            else "n/a"
        )
        lines.append(
            f"| {case['label']} | {settings['summary']} | {_rate(figures['rows_per_second'])} | "
            f"{_ratio(figures.get('fraction_of_core'))} | "
            f"{_ratio(figures.get('fraction_of_archiver_bound'))} "
            f"| {figures['max_pending']} | {figures['seconds_above_threshold']:.1f} | {figures['batches']} "
            f"| {batch} | {_seconds(figures.get('median_gap_seconds'))} "
            f"| {_share(share_between_batches(figures))} |"
        )
    lines += ["", *findings(suite), ""]
    return lines


def findings(suite: dict[str, Any]) -> list[str]:
    """Return what the figures say binds each case, one bullet each.

    :param suite: the results of ``bench/scheduler_suite.py``.
    """
    cases = {case["name"]: case for case in suite["cases"]}
    notes = []
    for case in suite["cases"]:
        figures = case["figures"]
        idle = share_between_batches(figures)
        jobs = [job for job in figures.get("jobs", []) if job["seconds"] is not None]
        largest = max(jobs, key=lambda job: job["keys_done"], default=None)
        text = f"- **{case['label']}**: "
        if idle is not None:
            text += (
                f"no batch ran for {idle:.0%} of the migration's span (the scheduler between two runs: "
                f"the sensor's task, then the operator's, each a task process of its own; median gap "
                f"{_seconds(figures.get('median_gap_seconds'))}). "
            )
        if largest is not None:
            text += (
                f"The largest batch walked {largest['keys_done']:,} keys in {largest['seconds']:.1f} s "
                f"({largest['sub_batches']} statements). "
            )
        if figures.get("fraction_of_archiver_bound") is not None:
            text += (
                f"Max pending {figures['max_pending']} against 42 plus one statement's WAL "
                f"({figures['largest_sub_batch_segments']:.1f} segments at most, a job's mean)."
            )
        if case.get("note"):
            text += f" *{case['note']}*"
        notes.append(text.rstrip())
    one, three = cases.get("celery_1"), cases.get("celery_3")
    if one and three:
        speedup = three["figures"]["rows_per_second"] / one["figures"]["rows_per_second"]
        notes.append(
            f"- **Celery**: concurrency 3 ran at {speedup:.2f}x the rate of concurrency 1, with at most "
            f"{three['figures']['max_batches_at_once']} batches at once. On these 2 cores PostgreSQL "
            "shares the CPU with the scheduler, the triggerer and two Celery workers: the server binds "
            "before the archiver does, so more batches at once share the same CPU."
        )
    return notes
