"""The "Batched migrations" page: HTML rendered on the server from Jinja2 templates, with an SVG chart.

The page is shown in the Airflow UI in an iframe (an external view); its buttons call the plugin's
JSON endpoints with the browser's Airflow session cookie. The page comes from ``templates/`` with
autoescaping on, so everything that comes from a database, a Variable or the request is escaped by
the template engine, not by hand; and it is served with a Content-Security-Policy
(:func:`content_security_policy`) that lets only its own script and stylesheet run: no other script,
no ``style`` attribute, nothing loaded from elsewhere. Times are shown in Airflow's
``[core] default_timezone``, with their zone (:mod:`~airflow_provider_walthrottle.plugins.timefmt`).

Each connection has a row per health indicator (:class:`~.readings.IndicatorRow`): its signal,
what it would do to a migration and whether its flag enforces that (:func:`enforcement`,
:func:`indicator_effect`). Each migration's chart draws, per finished job, every measurement that
has a stop threshold (:data:`CHART_SERIES`) as a share of it, so that the signals share one axis
and one stop line. A migration's saved plan shows with it (``templates/plan.html``): the whole plan
while it has not started, its plan against what it did once it runs
(:mod:`~airflow_provider_walthrottle.migrations.plan_actual`).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
from collections.abc import Mapping
from importlib.resources import files
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import jinja2
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from airflow_provider_walthrottle.durations import format_duration
from airflow_provider_walthrottle.indicators.base import format_bytes, fraction_of
from airflow_provider_walthrottle.migrations.plan_actual import PlannedFigures, compare
from airflow_provider_walthrottle.plugins.readings import MEASURED_AGAINST
from airflow_provider_walthrottle.plugins.timefmt import TimeDisplay
from airflow_provider_walthrottle.wal.health import Signal

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow_provider_walthrottle.migrations.catalog import HistoryPoint
    from airflow_provider_walthrottle.plugins.flag_variables import FlagView
    from airflow_provider_walthrottle.plugins.overview import ConnectionOverview
    from airflow_provider_walthrottle.plugins.readings import IndicatorRow

#: Seconds between two automatic reloads of the page.
REFRESH_SECONDS = 15

#: The page's template, in ``templates/``; its parts (the bar, the buttons, the chart) are macros in
#: ``templates/macros.html``.
PAGE_TEMPLATE = "migrations.html"

#: Why a disabled Pause or Resume button is disabled.
NO_PAUSE = "Pausing and resuming needs permission to edit DAGs (the User role)"

#: Why a disabled Turn on or Turn off button is disabled.
NO_TOGGLE = "Changing Variables needs the Op role"


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


def _duration(seconds: float | None, *, estimate: bool = False) -> str:
    return "-" if seconds is None else format_duration(seconds, estimate=estimate)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _rate(keys_per_second: float | None, unit: bool = True) -> str:
    """``12,345 keys/s``, ``42.5 keys/s``, ``0.35 keys/s``: at most three figures below 100."""
    if keys_per_second is None:
        return "-"
    if keys_per_second == 0 or keys_per_second >= 100:
        number = f"{keys_per_second:,.0f}"
    else:
        number = f"{keys_per_second:.{1 if keys_per_second >= 1 else 2}f}"
    return f"{number} keys/s" if unit else number


def _bytes(count: float | None) -> str:
    return "-" if count is None else format_bytes(count)


def _deviation(share: float | None) -> str:
    """``+12%``, ``-8%``, ``0%``: how far a measured figure is from its plan; ``-`` when unknown."""
    if share is None:
        return "-"
    percent = round(share * 100)
    return f"{percent:+d}%" if percent else "0%"


def _share(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 0.0


def _percent(part: float, whole: float) -> str:
    """``42%``; ``<1%`` for a part too small to round to 1 % that is not nothing."""
    share = 100 * _share(part, whole)
    return "<1%" if 0 < share < 0.5 else f"{share:.0f}%"


def _thousands(value: int) -> str:
    return f"{value:,}"


def _path_segment(value: str) -> str:
    # one segment of a URL path: a "/" in a migration's name is encoded too
    return quote(value, safe="")


def measure(value: float | None, name: str) -> str:
    """Return a reading's number as a person reads it, in the unit its name ends with.

    ``..._bytes`` and ``..._size`` in powers of 1024 (``1.5 MiB``), ``..._seconds`` with
    milliseconds below 10 s (``0.250 s``), counts as whole numbers; ``?`` when not measured.

    :param value: the number.
    :param name: its name in the reading's values, e.g. ``max_replay_lag_bytes``.
    """
    if value is None:
        return "?"
    if name.endswith(("_bytes", "_size")):
        return format_bytes(value)
    if name.endswith("_seconds"):
        return f"{value:.3f} s" if value < 10 else format_duration(value)
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def enforcement(flag: FlagView | None, migrations: Sequence[str]) -> tuple[str, str]:
    """Return whether an indicator's flag enforces it on a connection: a badge kind and words.

    :param flag: its flag, as the page read it; ``None`` for a Variable the page does not show.
    :param migrations: the unfinished migrations the indicator holds when it stops.
    """
    if flag is None:
        return "off", "its flag is not one the page reads"
    if flag.enabled is True:
        return "on", "enforced"
    if flag.enabled is False:
        return "off", "flag off — not enforced"
    enforced = flag.enforced_for(migrations)
    if not enforced:
        return "rollout", "rollout: enforced for none of the migrations here"
    return "rollout", f"rollout: enforced for {', '.join(enforced)}"


def indicator_effect(row: IndicatorRow, flag: FlagView | None) -> tuple[str, str]:
    """Return what an indicator's reading does to migrations with its flag as it is: a kind and words.

    :param row: the indicator's row.
    :param flag: its flag, as the page read it.
    """
    if row.reading is None:
        return "off", "not read: no unfinished migration here has a table to watch"
    if not row.stops:
        return "normal", "lets migrations go on"
    why = "" if row.reading.signal is Signal.STOP else f" ({row.reading.signal.value} waits, as on stop)"
    kind, _ = enforcement(flag, row.migrations)
    if kind == "on":
        return "stop", f"stops migrations{why}"
    if kind == "rollout":
        return "rollout", f"stops the migrations its rollout covers{why}"
    return "off", f"would stop migrations{why}, but its flag does not enforce it"


@dataclasses.dataclass(frozen=True)
class SeriesSpec:
    """A measurement the migration's chart draws per job, as a share of its stop threshold.

    :param indicator: the indicator's name.
    :param value: the measurement's name in the reading's values; its threshold is the value
        :data:`~.readings.MEASURED_AGAINST` names.
    :param label: its name on the chart.
    :param css: its CSS class, which gives its colour.
    """

    indicator: str
    value: str
    label: str
    css: str

    @property
    def threshold(self) -> str:
        """The name of the value it is compared with, e.g. ``max_lag_bytes``."""
        return MEASURED_AGAINST[(self.indicator, self.value)]


#: The chart's series: every measurement with a stop threshold, drawn where its jobs have it.
CHART_SERIES = (
    SeriesSpec("wal_archival", "pending_segments", "pending WAL segments", "s-wal"),
    SeriesSpec("replication_lag", "max_replay_lag_bytes", "replication lag, bytes", "s-lag-bytes"),
    SeriesSpec("replication_lag", "max_replay_lag_seconds", "replication lag, seconds", "s-lag-seconds"),
    SeriesSpec("replication_slots", "max_slot_retained_bytes", "WAL retained by a slot", "s-slots"),
)


@dataclasses.dataclass(frozen=True)
class SeriesPoint:
    """One job's measurement: its position among the charted jobs, the value, and its threshold."""

    index: int
    value: float
    threshold: float

    @property
    def share(self) -> float:
        """The value as a share of its threshold: 1 at the threshold."""
        return fraction_of(self.value, self.threshold) or 0.0


@dataclasses.dataclass(frozen=True)
class Series:
    """A measurement over a migration's finished jobs, as :func:`chart_series` finds it."""

    spec: SeriesSpec
    points: tuple[SeriesPoint, ...]

    @property
    def highest(self) -> SeriesPoint:
        """The point nearest its threshold (the first of equals)."""
        return max(self.points, key=lambda point: point.share)

    def describe(self, point: SeriesPoint) -> str:
        """Return a point as ``12 of 42 (29%)``, in the measurement's unit."""
        value, threshold = measure(point.value, self.spec.value), measure(point.threshold, self.spec.value)
        return f"{value} of {threshold} ({point.share * 100:.0f}%)"


def chart_series(history: Sequence[HistoryPoint], threshold: int) -> list[Series]:
    """Return the series a migration's chart draws: each of :data:`CHART_SERIES` its jobs measured.

    A job's numbers are those its last check saw (``indicator_values``), each against the threshold
    it was checked with; a job that kept only its backlog (before 0.2) has it against ``threshold``.

    :param history: the migration's finished jobs, oldest first.
    :param threshold: the page's WAL threshold.
    """
    found = []
    for spec in CHART_SERIES:
        points = []
        for index, job in enumerate(history):
            numbers = (job.indicator_values or {}).get(spec.indicator) or {}
            value, limit = numbers.get(spec.value), numbers.get(spec.threshold)
            if spec.indicator == "wal_archival" and value is None:
                value = job.pending_segments
                limit = threshold if limit is None else limit
            if value is not None and limit is not None:
                points.append(SeriesPoint(index, float(value), float(limit)))
        if points:
            found.append(Series(spec, tuple(points)))
    return found


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("airflow_provider_walthrottle.plugins", "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the page, not shows nothing
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        duration=_duration,
        number=_number,
        rate=_rate,
        share=_share,
        percent=_percent,
        thousands=_thousands,
        path_segment=_path_segment,
        measure=measure,
        bytes=_bytes,
        deviation=_deviation,
    )
    return environment


#: The page's templates, as FastAPI serves them (``templates.TemplateResponse``).
templates = Jinja2Templates(env=_environment())


def page_context(
    connections: Sequence[ConnectionOverview],
    flags: Sequence[FlagView],
    *,
    threshold: int,
    api_base: str,
    can_pause: bool,
    can_toggle_flags: bool | Mapping[str, bool],
    highlight: tuple[str | None, str | None] = (None, None),
    filters: dict[str, str] | None = None,
    times: TimeDisplay | None = None,
) -> dict[str, Any]:
    """Return what the page's template is rendered with.

    :param connections: each configured connection's backlog and migrations.
    :param flags: the flag Variables.
    :param threshold: the threshold the backlogs are compared with.
    :param api_base: the path of the plugin's API, e.g. ``/walthrottle/api``.
    :param can_pause: whether the user may pause and resume migrations (DAG edit permission).
    :param can_toggle_flags: whether the user may change the flag Variables (Variable edit
        permission): for all of them, or by Variable key.
    :param highlight: ``(conn_id, migration)`` to scroll to, from the task's extra link; a ``conn_id``
        of ``None`` highlights the migration on every connection.
    :param filters: what narrowed the page (``dag_id``, ``run_id``), shown above the migrations.
    :param times: the zone and the moment to show times in; by default ``[core] default_timezone``, now.
    """
    conn_id, migration = highlight

    def highlighted(candidate_conn_id: str, candidate_migration: str) -> bool:
        return candidate_migration == migration and conn_id in (None, candidate_conn_id)

    def may_toggle(key: str) -> bool:
        if isinstance(can_toggle_flags, Mapping):
            return bool(can_toggle_flags.get(key, False))
        return can_toggle_flags

    return {
        "connections": connections,
        "flags": flags,
        "flags_by_key": {flag.key: flag for flag in flags},
        "threshold": threshold,
        "api_base": api_base,
        "can_pause": can_pause,
        "may_toggle": may_toggle,
        "no_toggle": NO_TOGGLE,
        "enforcement": enforcement,
        "indicator_effect": indicator_effect,
        "chart_series": chart_series,
        "compare": compare,
        "planned_figures": PlannedFigures.of,
        "highlighted": highlighted,
        "filters": filters or {},
        "times": times or TimeDisplay.configured(),
        "no_pause": NO_PAUSE,
        "refresh_seconds": REFRESH_SECONDS,
        # the page's own files, inlined as they are: the Content-Security-Policy allows them by hash
        "stylesheet": Markup(_asset("migrations.css")),
        "script": Markup(_asset("migrations.js")),
    }


def render_page(
    connections: Sequence[ConnectionOverview],
    flags: Sequence[FlagView],
    **options: Any,
) -> str:
    """Return the whole page as a string (the app serves it with ``templates.TemplateResponse``).

    :param connections: each configured connection's backlog and migrations.
    :param flags: the flag Variables.
    :param options: the keyword arguments of :func:`page_context`.
    """
    return templates.get_template(PAGE_TEMPLATE).render(page_context(connections, flags, **options))
