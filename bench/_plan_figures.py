"""The plan-accuracy benchmark's arithmetic and tables: no database, so that they can be tested alone.

:func:`figures` turns one case of ``bench/plan_accuracy.py`` (the plan, as
:meth:`~airflow_provider_walthrottle.migrations.plan.MigrationPlan.to_dict` gives it, and what the
run measured) into projected-against-measured ratios; :func:`what_if` adds the ratios the plan would
reach with its full-page images capped (:func:`with_image_cap`), a fix of the estimator that is
described, not made. :func:`parse_waldump_stats` and :func:`wal_parts` read
``pg_waldump --stats=record``; the ``*_table`` functions render the results as Markdown.
"""

from __future__ import annotations

import re
from typing import Any

from _cluster import markdown_table

#: The issue's goals: projected WAL within 20 % of the measured, the archiver-bound duration within 30 %.
WAL_GOAL = 0.20
DURATION_GOAL = 0.30

#: One line of ``pg_waldump --stats=record``: type, count, record bytes, full-page image bytes.
_STATS_LINE = re.compile(
    r"^(?P<type>\S+)\s+(?P<n>\d+)\s+\(\s*[\d.]+\)\s+(?P<record>\d+)\s+\(\s*[\d.]+\)"
    r"\s+(?P<fpi>\d+)\s+\(\s*[\d.]+\)\s+\d+\s+\(\s*[\d.]+\)\s*$"
)


def parse_waldump_stats(text: str) -> dict[str, dict[str, int]]:
    """Return ``{record type: {"n", "record", "fpi"}}`` from ``pg_waldump --stats=record`` output.

    :param text: its standard output.
    """
    stats: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        match = _STATS_LINE.match(line.strip())
        if match:
            stats[match["type"]] = {key: int(match[key]) for key in ("n", "record", "fpi")}
    return stats


def wal_parts(stats: dict[str, dict[str, int]]) -> dict[str, int]:
    """Sum parsed ``pg_waldump`` stats into full-page images, records by kind, and checkpoints.

    :param stats: from :func:`parse_waldump_stats`.
    """
    parts = {"fpi": 0, "heap_records": 0, "btree_records": 0, "other_records": 0, "checkpoints": 0}
    for kind, row in stats.items():
        parts["fpi"] += row["fpi"]
        rmgr = kind.split("/", 1)[0]
        key = {"Heap": "heap_records", "Heap2": "heap_records", "Btree": "btree_records"}.get(rmgr)
        parts[key or "other_records"] += row["record"]
        if kind.startswith("XLOG/CHECKPOINT_ONLINE"):
            parts["checkpoints"] += row["n"]
    parts["total"] = parts["fpi"] + parts["heap_records"] + parts["btree_records"] + parts["other_records"]
    return parts


def ratio(projected: float | None, measured: float) -> float | None:
    """Return projected ÷ measured, ``None`` when either is unknown or 0.

    :param projected: the plan's figure.
    :param measured: the run's.
    """
    return projected / measured if projected and measured else None


def within(value: float | None, goal: float) -> bool:
    """Whether a ratio is within ``goal`` of 1 (``0.2``: from 0.8 to 1.2).

    :param value: projected ÷ measured.
    :param goal: the allowed relative error.
    """
    return value is not None and abs(value - 1) <= goal + 1e-9


def archiver_in_run(samples: list[tuple[float, int, int]]) -> dict[str, float]:
    """Return the archiver's pace over the run and its idle seconds, from the backlog's samples.

    :param samples: ``(seconds since the migration started, pending, archived so far)``, from
        before the start until the backlog is drained.
    """
    run = [sample for sample in samples if sample[0] >= 0]
    busy = [i for i, sample in enumerate(run) if sample[1] > 0]
    if not busy or busy[-1] + 1 >= len(run):  # nothing to ship, or not drained when sampling ended
        return dict.fromkeys(
            ("archiver_segments_per_second", "archiver_busy_segments_per_second", "archiver_idle_seconds"),
            0.0,
        )
    began, drained = busy[0], busy[-1] + 1
    idle = sum(
        run[i + 1][0] - run[i][0] for i in range(began, drained) if run[i][1] == 0 and run[i + 1][1] == 0
    )
    span = run[drained][0] - run[0][0]
    shipped = run[drained][2] - run[0][2]
    return {
        "archiver_segments_per_second": shipped / span,
        "archiver_busy_segments_per_second": shipped / (span - idle),
        "archiver_idle_seconds": idle,
    }


def parse_size(text: str) -> int:
    """Return the bytes of a size setting as ``SHOW`` reports it (``64MB``, ``8GB``, ``8kB``).

    :param text: the setting's value.
    """
    match = re.fullmatch(r"(\d+)\s*(B|kB|MB|GB|TB)?", text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    units = {"B": 1, "kB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}
    return int(match[1]) * units[match[2] or "B"]


def parse_seconds(text: str) -> float:
    """Return the seconds of a time setting as ``SHOW`` reports it (``5min``, ``30s``, ``1h``).

    :param text: the setting's value.
    """
    match = re.fullmatch(r"(\d+)\s*(ms|s|min|h|d)?", text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    units = {"ms": 0.001, "s": 1, "min": 60, "h": 3600, "d": 86400}
    return int(match[1]) * units[match[2] or "s"]


def with_image_cap(
    wal_bytes: float,
    record_bytes: float,
    relation_bytes: int,
    distance: float,
    seconds: float,
    timeout: float,
) -> float:
    """Return the projected WAL with its full-page images capped: each page once per checkpoint cycle.

    The sample's WAL splits into records, which grow with the rows, and full-page images, which
    PostgreSQL writes only for the first change of a page after a checkpoint. So the images of the
    whole migration are at most the table's pages (heap, TOAST, indexes) once per cycle, and a
    cycle's images are at most its WAL; cycles are ``1 + WAL / distance`` (``max_wal_size``) or
    ``1 + seconds / checkpoint_timeout``, whichever are more.

    :param wal_bytes: the plan's projected WAL.
    :param record_bytes: the part of it that is records: the rows times the sample's record bytes per key.
    :param relation_bytes: the table's size, with TOAST and indexes.
    :param distance: the WAL between two checkpoints that ``max_wal_size`` asks for.
    :param seconds: the projected duration.
    :param timeout: ``checkpoint_timeout`` in seconds.
    """
    records = min(record_bytes, wal_bytes)
    images = wal_bytes - records
    projected = wal_bytes
    for _ in range(50):  # a fixed point: the cycles depend on the WAL
        cycles = 1 + max(projected / distance, seconds / timeout)
        projected = records + min(images, min(relation_bytes, distance) * cycles)
    return projected


def figures(result: dict[str, Any]) -> dict[str, Any]:
    """Return the projected-against-measured figures of one case, and those of :func:`what_if`.

    :param result: what :func:`run_case` returns.
    """
    plan, measured = result["plan"], result["measured"]
    bounds = plan["bounds"]
    wal = ratio(plan["total_wal_bytes"], measured["wal_bytes"])
    archiver = ratio(bounds["archiver"], measured["seconds"])
    return {
        "wal_ratio": wal,
        "wal_met": within(wal, WAL_GOAL),
        "archiver_ratio": archiver,
        "archiver_met": within(archiver, DURATION_GOAL),
        "archiver_to_drained_ratio": ratio(bounds["archiver"], measured["drained_seconds"]),
        "database_ratio": ratio(bounds["database"], measured["statement_seconds"]),
        "pace_ratio": ratio(
            plan["archiver"]["segments_per_second"], measured["archiver_segments_per_second"]
        ),
        "projected_wal_bytes_per_row": plan["wal_bytes_per_row"],
        "measured_wal_bytes_per_row": measured["wal_bytes"] / measured["rows"],
        "statement_share": measured["statement_seconds"] / measured["seconds"],
        **what_if(result),
    }


def what_if(result: dict[str, Any]) -> dict[str, Any]:
    """Return the ratios the plan would reach with its full-page images capped (not done in the plan).

    :func:`with_image_cap`, with the sample's record bytes (its WAL less its full-page images) from
    ``pg_waldump``; the plan itself could count the images of each sample range with
    ``EXPLAIN (ANALYZE, WAL)``.

    :param result: what :func:`run_case` returns.
    """
    plan, measured, server, sample = (
        result["plan"],
        result["measured"],
        result["server"],
        result["sample_wal"],
    )
    keys = sum(part["keys"] for part in plan["samples"])
    pace = plan["archiver"]["segments_per_second"] * plan["wal_segment_size"]
    capped = with_image_cap(
        plan["total_wal_bytes"],
        plan["rows"] * (sample["total"] - sample["fpi"]) / keys,
        result["relation_bytes"],
        parse_size(server["max_wal_size"]) / (1 + float(server["checkpoint_completion_target"])),
        max(plan["bounds"]["archiver"] or 0, plan["bounds"]["database"] or 0),
        parse_seconds(server["checkpoint_timeout"]),
    )
    wal = ratio(capped, measured["wal_bytes"])
    archiver = ratio(capped / pace, measured["seconds"])
    return {
        "image_cap_wal_bytes": capped,
        "wal_ratio_image_cap": wal,
        "wal_met_image_cap": within(wal, WAL_GOAL),
        "archiver_ratio_image_cap": archiver,
        "archiver_met_image_cap": within(archiver, DURATION_GOAL),
    }


# ---------------------------------------------------------------------------------------- reporting


def mib(value: float) -> str:
    """Return bytes as whole MiB, with thousands separators."""
    return f"{value / 2**20:,.0f}"


def format_ratio(value: float | None) -> str:
    """Return a ratio with two decimals, or a dash when unknown."""
    return "-" if value is None else f"{value:.2f}"


def _met(met: bool) -> str:
    return "yes" if met else "**no**"


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def wal_table(results: dict[str, Any]) -> str:
    """Return the Markdown table of projected against measured WAL, one row a case."""
    rows = []
    for case in results["cases"]:
        plan, measured, fig = case["plan"], case["measured"], case["figures"]
        sample, run = case["sample_wal"], case["run_wal"]
        rows.append(
            (
                case["title"],
                f"{measured['rows']:,}",
                f"{fig['projected_wal_bytes_per_row']:,.0f}",
                f"{fig['measured_wal_bytes_per_row']:,.0f}",
                mib(plan["total_wal_bytes"]),
                mib(measured["wal_bytes"]),
                format_ratio(fig["wal_ratio"]),
                _met(fig["wal_met"]),
                _share(sample["fpi"], sample["total"]),
                _share(run["fpi"], run["total"]),
                measured["checkpoints"],
            )
        )
    header = (
        "table and migration",
        "rows",
        "WAL bytes/row, plan",
        "WAL bytes/row, run",
        "projected WAL MiB",
        "measured WAL MiB",
        "ratio",
        "within ±20 %",
        "full-page images, sample",
        "full-page images, run",
        "checkpoints in the run",
    )
    return markdown_table(header, rows, "lrrrrrrlrrr")


def duration_table(results: dict[str, Any]) -> str:
    """Return the Markdown table of projected against measured durations, one row a case."""
    rows = []
    for case in results["cases"]:
        plan, measured, fig = case["plan"], case["measured"], case["figures"]
        bounds = plan["bounds"]
        rows.append(
            (
                case["title"],
                f"{plan['archiver']['segments_per_second']:.2f} / "
                f"{measured['archiver_busy_segments_per_second']:.2f}",
                f"{bounds['archiver']:.0f}",
                f"{measured['seconds']:.0f}",
                format_ratio(fig["archiver_ratio"]),
                _met(fig["archiver_met"]),
                f"{measured['drained_seconds']:.0f}",
                f"{measured['archiver_idle_seconds']:.1f} ({measured['waits']})",
                f"{bounds['database']:.1f}",
                f"{measured['statement_seconds']:.1f}",
                format_ratio(fig["database_ratio"]),
                plan["binding"],
                f"{plan['peak_backlog_segments']} / {measured['max_pending']}",
            )
        )
    header = (
        "table and migration",
        "archiver segments/s, plan / run",
        "archiver-bound s, plan",
        "migration s, run",
        "ratio",
        "within ±30 %",
        "s until archived, run",
        "s archiver idle (waits), run",
        "database-bound s, plan",
        "s in batch_sql, run",
        "ratio",
        "binds, plan",
        "peak backlog, plan / run",
    )
    return markdown_table(header, rows, "lrrrrlrrrrrlr")


def fixes_table(results: dict[str, Any]) -> str:
    """Return the Markdown table of the plan's ratios now and with its full-page images capped."""
    rows = [
        (
            case["title"],
            format_ratio(fig["wal_ratio"]),
            f"{format_ratio(fig['wal_ratio_image_cap'])} ({_met(fig['wal_met_image_cap'])})",
            format_ratio(fig["archiver_ratio"]),
            f"{format_ratio(fig['archiver_ratio_image_cap'])} ({_met(fig['archiver_met_image_cap'])})",
        )
        for case in results["cases"]
        for fig in (case["figures"],)
    ]
    header = (
        "table and migration",
        "WAL ratio, plan",
        "with images capped (within ±20 %)",
        "archiver-bound ratio, plan",
        "with images capped (within ±30 %)",
    )
    return markdown_table(header, rows, "lrrrr")


def parts_table(results: dict[str, Any]) -> str:
    """Return the Markdown table of what the WAL consists of, per row, in the sample and in the run."""
    rows = []
    for case in results["cases"]:
        keys = sum(sample["keys"] for sample in case["plan"]["samples"])
        for label, parts, count in (("sample", case["sample_wal"], keys), ("run", case["run_wal"], None)):
            count = count or case["measured"]["rows"]
            rows.append(
                (
                    case["title"] if label == "sample" else "",
                    label,
                    f"{parts['total'] / count:,.0f}",
                    f"{parts['fpi'] / count:,.0f}",
                    f"{parts['heap_records'] / count:,.0f}",
                    f"{parts['btree_records'] / count:,.0f}",
                    f"{parts['other_records'] / count:,.0f}",
                )
            )
    header = (
        "table and migration",
        "",
        "WAL bytes/row",
        "full-page images",
        "heap and TOAST records",
        "index records",
        "other records",
    )
    return markdown_table(header, rows, "llrrrrr")
