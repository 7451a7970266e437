"""The "Batched migrations" page: HTML rendered on the server, with an SVG chart and no external assets.

The page is shown in the Airflow UI in an iframe (an external view); its buttons call the plugin's
JSON endpoints with the browser's Airflow session cookie. Everything that comes from a database or
a Variable is escaped, and the page is served with a Content-Security-Policy
(:func:`content_security_policy`) that lets only its own script and stylesheet run: no other script,
no ``style`` attribute, nothing loaded from elsewhere.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import hashlib
import json
from html import escape
from importlib.resources import files
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow_provider_walthrottle.migrations.catalog import HistoryPoint, MigrationSummary
    from airflow_provider_walthrottle.plugins.overview import ConnectionOverview, FlagView

#: Seconds between two automatic reloads of the page.
REFRESH_SECONDS = 15


@functools.cache
def _asset(name: str) -> str:
    return (files("airflow_provider_walthrottle.plugins") / "assets" / name).read_text(encoding="utf-8")


def _sha256_source(text: str) -> str:
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    return f"'sha256-{digest}'"


@functools.cache
def content_security_policy() -> str:
    """Return the page's ``Content-Security-Policy`` header.

    The page inlines one script and one stylesheet (``assets/``), allowed by their SHA-256 hashes;
    nothing else may run or load. Its buttons ``fetch()`` the plugin's API on the same origin, and
    only the Airflow UI (same origin) may frame it.
    """
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {_sha256_source(_asset('migrations.js'))}",
            f"style-src {_sha256_source(_asset('migrations.css'))}",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'self'",
        ]
    )


@dataclasses.dataclass(frozen=True)
class _Context:
    """What every part of the page needs to know besides its own data."""

    threshold: int
    api_base: str
    can_pause: bool
    highlight: tuple[str | None, str | None]


def render_page(
    connections: Sequence[ConnectionOverview],
    flags: Sequence[FlagView],
    *,
    threshold: int,
    api_base: str,
    can_pause: bool,
    can_toggle_flags: bool,
    highlight: tuple[str | None, str | None] = (None, None),
    filters: dict[str, str] | None = None,
    now: datetime.datetime | None = None,
) -> str:
    """Return the whole page.

    :param connections: each configured connection's backlog and migrations.
    :param flags: the flag Variables.
    :param threshold: the threshold the backlogs are compared with.
    :param api_base: the path of the plugin's API, e.g. ``/walthrottle/api``.
    :param can_pause: whether the user may pause and resume migrations (DAG edit permission).
    :param can_toggle_flags: whether the user may change the flag Variables (Variable edit permission).
    :param highlight: ``(conn_id, migration)`` to scroll to, from the task's extra link.
    :param filters: what narrowed the page (``dag_id``, ``run_id``), shown above the migrations.
    :param now: the time the page was read, for the header.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    narrowed = ", ".join(f"{key} {escape(value)}" for key, value in (filters or {}).items() if value)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>Batched migrations</title><style>{_asset('migrations.css')}</style></head>",
        f"<body data-refresh-seconds='{REFRESH_SECONDS}'>",
        "<h1>Batched migrations</h1>",
        f"<div class='muted'>Read {escape(now.strftime('%Y-%m-%d %H:%M:%S %Z'))}; "
        f"refreshes every {REFRESH_SECONDS} s. Threshold: {threshold} pending WAL segments"
        + (f". Only migrations run by {narrowed}." if narrowed else ".")
        + "</div><div id='message' role='status'></div>",
        _render_flags(flags, api_base=api_base, can_toggle=can_toggle_flags),
    ]
    if not connections:
        parts.append(
            "<div class='card'>No connection is configured: set <code>[walthrottle] ui_connection_ids</code> "
            "to a comma-separated list of Airflow connection ids.</div>"
        )
    context = _Context(threshold=threshold, api_base=api_base, can_pause=can_pause, highlight=highlight)
    parts.extend(_render_connection(overview, context) for overview in connections)
    parts.append(f"<script>{_asset('migrations.js')}</script></body></html>")
    return "".join(parts)


def _render_flags(flags: Sequence[FlagView], *, api_base: str, can_toggle: bool) -> str:
    rows = []
    for flag in flags:
        kind = "on" if flag.enabled else ("rollout" if flag.enabled is None else "off")
        if flag.invalid:
            kind = "invalid"
        turn_on = flag.enabled is not True
        rows.append(
            f"<tr id='flag-{escape(flag.key)}'>"
            f"<td><code>{escape(flag.key)}</code></td>"
            f"<td><span class='badge b-{kind}'>{escape(flag.state)}</span></td>"
            f"<td>{escape(flag.description)}</td>"
            f"<td class='{'error' if flag.invalid else 'muted'}'>"
            f"{escape(flag.raw) if flag.raw is not None else 'unset'}</td>"
            f"<td>{_button('Turn on' if turn_on else 'Turn off', 'PUT', f'{api_base}/flags/{_q(flag.key)}', {'enabled': turn_on}, enabled=can_toggle, refused='Changing Variables needs the Op role')}</td>"  # noqa: E501
            "</tr>"
        )
    return (
        "<div class='card'><h2>Flags</h2><table><thead><tr><th>Variable</th><th>State</th><th>Effect</th>"
        "<th>Value</th><th></th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>"
    )


def _render_connection(overview: ConnectionOverview, context: _Context) -> str:
    threshold = context.threshold
    head = f"<h2>Connection <code>{escape(overview.conn_id)}</code></h2>"
    health = overview.health
    if overview.error or health is None:
        error = overview.error or "the backlog could not be read"
        return f"<div class='card'>{head}<p class='error'>{escape(error)}</p></div>"
    pending = health.status.pending_segments
    backlog = (
        f"<span class='kv'><b>{pending}</b> of {threshold} segments pending</span>"
        if pending is not None
        else "<span class='kv'><b>?</b> pending</span>"
    )
    fraction = (pending or 0) / threshold if threshold else (1.0 if pending else 0.0)
    throttling = (
        "<span class='badge b-throttled'>throttling</span>"
        if overview.throttling
        else "<span class='badge b-normal'>not throttling</span>"
    )
    summary = (
        f"<div class='row'>{backlog}{_bar(fraction, '?' if pending is None else f'{pending}/{threshold}')}"
        f"<span class='badge b-{health.signal.value}'>{escape(health.signal.value)}</span>{throttling}"
        f"<span class='muted'>{escape(health.reason)} (method {escape(health.status.method.value)}"
        f"{', archiver failing' if health.status.is_failing else ''})</span></div>"
    )
    if not overview.migrations:
        body = "<p class='muted'>No batched migration in this database yet.</p>"
    else:
        body = _render_migrations(overview, context)
    return f"<div class='card' id='conn-{escape(overview.conn_id)}'>{head}{summary}{body}</div>"


def _render_migrations(overview: ConnectionOverview, context: _Context) -> str:
    highlight, can_pause = context.highlight, context.can_pause
    rows = []
    details = []
    for migration in overview.migrations:
        chosen = highlight == (overview.conn_id, migration.name) or (
            highlight[0] is None and highlight[1] == migration.name
        )
        status = "throttled" if migration.throttling else migration.status
        url = f"{context.api_base}/connections/{_q(overview.conn_id)}/migrations/{_q(migration.name)}"
        if migration.status == "paused":
            action = _button("Resume", "POST", f"{url}/resume", {}, enabled=can_pause, refused=_NO_PAUSE)
        elif migration.status == "active":
            action = _button("Pause", "POST", f"{url}/pause", {}, enabled=can_pause, refused=_NO_PAUSE)
        else:
            action = ""
        rows.append(
            f"<tr id='migration-{escape(overview.conn_id)}-{escape(migration.name)}'"
            f"{' class=highlight' if chosen else ''}>"
            f"<td><b>{escape(migration.name)}</b><div class='muted'>{escape(migration.table)}"
            f".{escape(migration.column_name)}</div></td>"
            f"<td><span class='badge b-{status}'>{status}</span></td>"
            f"<td>{_bar(migration.percentage / 100, f'{migration.percentage:.1f}%')}"
            f"<div class='muted'>{migration.keys_done:,} of {migration.total_rows:,} keys</div></td>"
            f"<td class='num'>{_number(migration.rows_per_second)}</td>"
            f"<td class='num'>{_duration(migration.eta_seconds)}</td>"
            f"<td class='num'>{migration.batch_size:,}</td>"
            f"<td class='num'>{_duration(migration.throttled_seconds_total)}</td>"
            f"<td>{action}</td></tr>"
        )
        error = f"<p class='error'>{escape(migration.last_error)}</p>" if migration.last_error else ""
        details.append(
            f"<details{' open' if chosen or len(overview.migrations) == 1 else ''}>"
            f"<summary><b>{escape(migration.name)}</b>: last jobs and history</summary>{error}"
            f"{_chart(migration.history, threshold=context.threshold)}{_jobs_table(migration)}</details>"
        )
    return (
        "<h3>Migrations</h3><table><thead><tr><th>Migration</th><th>Status</th><th>Progress</th>"
        "<th class='num'>Rows/s</th><th class='num'>ETA</th><th class='num'>Batch size</th>"
        "<th class='num'>Throttled</th><th></th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        + "".join(details)
    )


_NO_PAUSE = "Pausing and resuming needs permission to edit DAGs (the User role)"


def _jobs_table(migration: MigrationSummary) -> str:
    if not migration.recent_jobs:
        return "<p class='muted'>No job yet.</p>"
    rows = []
    for job in migration.recent_jobs:
        run = " ".join(part for part in (job.dag_id, job.run_id) if part)
        rows.append(
            f"<tr><td class='num'>{job.id}</td><td><code>{escape(job.start_key)}</code> .. "
            f"<code>{escape(job.end_key)}</code></td>"
            f"<td><span class='badge b-{escape(job.status)}'>{escape(job.status)}</span></td>"
            f"<td class='num'>{job.attempts}</td><td class='num'>{job.planned_rows:,}</td>"
            f"<td class='num'>{job.rows_affected:,}</td><td class='num'>{job.duration_seconds:.1f} s</td>"
            f"<td class='num'>{'' if job.pending_segments is None else job.pending_segments}</td>"
            f"<td class='muted'>{escape(run)}{f' try {job.try_number}' if job.try_number else ''}</td>"
            f"<td class='muted'>{_time(job.finished_at)}</td></tr>"
        )
    return (
        "<table><thead><tr><th class='num'>Job</th><th>Keys</th><th>Status</th><th class='num'>Attempts</th>"
        "<th class='num'>Planned</th><th class='num'>Rows</th><th class='num'>Time</th>"
        "<th class='num'>Pending seg.</th><th>Run</th><th>Finished</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _chart(history: Sequence[HistoryPoint], *, threshold: int) -> str:
    """Pending segments (left axis, with the threshold) and batch size (right axis) per finished job.

    :param history: the migration's last finished jobs, oldest first.
    :param threshold: the threshold line.
    """
    if len(history) < 2:
        return "<p class='muted'>The chart appears after two finished jobs.</p>"
    width, height, left, right, top, bottom = 720, 180, 44, 60, 10, 22
    # one step per job, in the order they finished: jobs of a fast migration finish in the same
    # second, which a time axis would pile up
    steps = len(history) - 1
    pendings = [point.pending_segments for point in history if point.pending_segments is not None]
    y_max = max([threshold * 1.25, *pendings, 1])
    b_max = max(point.batch_size for point in history) * 1.1

    def x(index: int) -> float:
        return left + (width - left - right) * index / steps

    def y(value: float, top_value: float) -> float:
        return top + (height - top - bottom) * (1 - value / top_value)

    batch = " ".join(f"{x(i):.1f},{y(p.batch_size, b_max):.1f}" for i, p in enumerate(history))
    pending = " ".join(
        f"{x(i):.1f},{y(p.pending_segments, y_max):.1f}"
        for i, p in enumerate(history)
        if p.pending_segments is not None
    )
    limit = y(threshold, y_max)
    return (
        f"<svg role='img' aria-label='pending WAL segments and batch size per job' width='{width}' "
        f"height='{height}' viewBox='0 0 {width} {height}'>"
        f"<rect x='{left}' y='{top}' width='{width - left - right}' height='{height - top - bottom}' "
        "fill='none' stroke='currentColor' stroke-opacity='.2'/>"
        f"<line x1='{left}' x2='{width - right}' y1='{limit:.1f}' y2='{limit:.1f}' stroke='#c53030' "
        "stroke-dasharray='5 4'/>"
        f"<text x='{left + 4}' y='{limit - 3:.1f}'>threshold {threshold}</text>"
        f"<polyline points='{batch}' fill='none' stroke='#d97706' stroke-width='1.5'/>"
        f"<polyline points='{pending}' fill='none' stroke='#3182ce' stroke-width='2'/>"
        f"<text x='4' y='{top + 10}'>{y_max:.0f}</text><text x='4' y='{height - bottom}'>0</text>"
        f"<text x='{width - right + 4}' y='{top + 10}'>{b_max:,.0f}</text>"
        f"<text x='{left}' y='{height - 6}'>{_time(history[0].at)}</text>"
        f"<text x='{width - right}' y='{height - 6}' text-anchor='end'>{_time(history[-1].at)}</text>"
        f"<text x='{width - right + 4}' y='{height / 2:.0f}'>batch size</text>"
        f"<text x='{width / 2:.0f}' y='{height - 6}' fill='#3182ce'>pending segments</text>"
        "</svg>"
    )


def _button(label: str, method: str, url: str, body: dict[str, Any], *, enabled: bool, refused: str) -> str:
    attributes = (
        f"data-method='{method}' data-url='{escape(url)}' data-body='{escape(json.dumps(body))}'"
        if enabled
        else f"disabled title='{escape(refused)}'"
    )
    return f"<button type='button' {attributes}>{escape(label)}</button>"


def _bar(fraction: float, label: str) -> str:
    # an SVG rect, not a style attribute, which the Content-Security-Policy refuses
    width = max(0.0, min(fraction, 1.0)) * 100
    return (
        f"<div class='bar{' over' if fraction > 1 else ''}'>"
        f"<svg viewBox='0 0 100 1' preserveAspectRatio='none' aria-hidden='true'>"
        f"<rect width='{width:.1f}' height='1'/></svg><em>{escape(label)}</em></div>"
    )


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _time(value: datetime.datetime | None) -> str:
    return "" if value is None else escape(value.strftime("%H:%M:%S"))


def _q(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")
