"""The "Batched migrations" page: HTML rendered on the server from Jinja2 templates, with an SVG chart.

The page is shown in the Airflow UI in an iframe (an external view); its buttons call the plugin's
JSON endpoints with the browser's Airflow session cookie. The page comes from ``templates/`` with
autoescaping on, so everything that comes from a database, a Variable or the request is escaped by
the template engine, not by hand; and it is served with a Content-Security-Policy
(:func:`content_security_policy`) that lets only its own script and stylesheet run: no other script,
no ``style`` attribute, nothing loaded from elsewhere. Times are shown in Airflow's
``[core] default_timezone``, with their zone (:mod:`~airflow_provider_walthrottle.plugins.timefmt`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
from importlib.resources import files
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import jinja2
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from airflow_provider_walthrottle.durations import format_duration
from airflow_provider_walthrottle.plugins.timefmt import TimeDisplay

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow_provider_walthrottle.plugins.overview import ConnectionOverview, FlagView

#: Seconds between two automatic reloads of the page.
REFRESH_SECONDS = 15

#: The page's template, in ``templates/``; its parts (the bar, the buttons, the chart) are macros in
#: ``templates/macros.html``.
PAGE_TEMPLATE = "migrations.html"

#: Why a disabled Pause or Resume button is disabled.
NO_PAUSE = "Pausing and resuming needs permission to edit DAGs (the User role)"


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
    can_toggle_flags: bool,
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
    :param can_toggle_flags: whether the user may change the flag Variables (Variable edit permission).
    :param highlight: ``(conn_id, migration)`` to scroll to, from the task's extra link; a ``conn_id``
        of ``None`` highlights the migration on every connection.
    :param filters: what narrowed the page (``dag_id``, ``run_id``), shown above the migrations.
    :param times: the zone and the moment to show times in; by default ``[core] default_timezone``, now.
    """
    conn_id, migration = highlight

    def highlighted(candidate_conn_id: str, candidate_migration: str) -> bool:
        return candidate_migration == migration and conn_id in (None, candidate_conn_id)

    return {
        "connections": connections,
        "flags": flags,
        "threshold": threshold,
        "api_base": api_base,
        "can_pause": can_pause,
        "can_toggle_flags": can_toggle_flags,
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
