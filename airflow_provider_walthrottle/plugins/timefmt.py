"""Times on the migrations page: in Airflow's ``[core] default_timezone``, always with their zone.

The database returns ``timestamptz`` values in its session's time zone (the PostgreSQL server's
``timezone`` setting), and the api-server runs in yet another; the page converts every time with
pendulum, as Airflow does, into the zone Airflow is configured with, and prints that zone.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import TYPE_CHECKING

import pendulum
from pendulum.tz.local_timezone import get_local_timezone

if TYPE_CHECKING:
    import datetime

log = logging.getLogger(__name__)


def display_timezone() -> pendulum.Timezone | pendulum.FixedTimezone:
    """Return Airflow's ``[core] default_timezone``: an IANA name, ``utc`` or ``system``.

    A name pendulum does not know reads as UTC, as Airflow itself reads it, with a warning.
    """
    from airflow.configuration import conf

    return _parse_timezone((conf.get("core", "default_timezone", fallback="utc") or "utc").strip())


@functools.cache  # the page is read every 15 s: warn about a wrong name once
def _parse_timezone(name: str) -> pendulum.Timezone | pendulum.FixedTimezone:
    if name == "system":
        return get_local_timezone()
    if name.lower() == "utc":  # Airflow's default, in lower case
        return pendulum.UTC
    try:
        return pendulum.Timezone(name)  # what pendulum.timezone(name) returns for an IANA name
    except ValueError:  # pendulum's InvalidTimezone, or a name that is no zone at all
        log.warning("[core] default_timezone %r is not a time zone; the migrations page shows UTC", name)
        return pendulum.UTC


@dataclasses.dataclass(frozen=True)
class TimeDisplay:
    """Show times in one zone, with the zone; leave out the date of a time on the page's own day.

    :param timezone: the zone to show times in.
    :param now: when the page was read.
    """

    timezone: pendulum.Timezone | pendulum.FixedTimezone
    now: pendulum.DateTime

    @classmethod
    def configured(cls, now: datetime.datetime | None = None) -> TimeDisplay:
        """Return the display in :func:`display_timezone`, read now (or at ``now``)."""
        timezone = display_timezone()
        moment = pendulum.instance(now) if now else pendulum.now("UTC")
        return cls(timezone, moment.in_timezone(timezone))

    def local(self, value: datetime.datetime) -> pendulum.DateTime:
        """Return ``value`` in the display's zone (a naive ``value`` is taken as UTC)."""
        return pendulum.instance(value).in_timezone(self.timezone)

    def short(self, value: datetime.datetime) -> str:
        """Return ``14:03:05 CET``, with the date in front when it is not the page's day."""
        local = self.local(value)
        if local.date() == self.now.date():
            return local.format("HH:mm:ss zz")
        return local.format("YYYY-MM-DD HH:mm:ss zz")

    def full(self, value: datetime.datetime) -> str:
        """Return ``2026-12-02 14:03:05 CET``."""
        return self.local(value).format("YYYY-MM-DD HH:mm:ss zz")

    def iso(self, value: datetime.datetime) -> str:
        """Return ``2026-12-02T14:03:05+01:00``, for a ``<time datetime>`` attribute."""
        return self.local(value).isoformat(timespec="seconds")

    @property
    def zone(self) -> str:
        """Return the zone's name and its offset now: ``Europe/Amsterdam, UTC+01:00``, or ``UTC``."""
        offset = self.now.format("Z")
        if offset == "+00:00" and self.timezone.name in ("UTC", "Etc/UTC"):
            return "UTC"
        return f"{self.timezone.name}, UTC{offset}"
