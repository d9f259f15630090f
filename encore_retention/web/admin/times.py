"""How the admin shows times: in the store's time zone, to the minute, with the zone's abbreviation.

Every template writes a time through one filter, `when` (`{{ run.started_at|when(run.shop_id) }}` ->
`2026-12-03 09:00 CET`); a trace's message, which holds the ISO instants the engine wrote, goes
through `times_in`. The zone is the row's store's (`Shop.timezone`), else the viewed store's, else
DEFAULT_TIMEZONE.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo
from typing import Any

from flask import g

from encore_retention.flows import dates
from encore_retention.web.admin.auth import blueprint

FORMAT = "%Y-%m-%d %H:%M %Z"
_ISO = re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:?\d{2})?(?![\d:])")


def instant(value: Any) -> datetime | None:
    """An aware datetime from a datetime (naive is UTC) or its ISO text; None for anything else."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def local_time(value: Any, tz: tzinfo) -> str:
    """`2026-12-03 09:00 CET`: the instant in `tz`, to the minute; text that is no instant is shown as is."""
    moment = instant(value)
    if moment is None:
        return "" if value is None else str(value)
    return moment.astimezone(tz).strftime(FORMAT)


def local_times_in(text: str, tz: tzinfo) -> str:
    """`text` with every ISO instant in it (`2026-12-03T08:00:00.123456+00:00`) written as `local_time` does."""
    return _ISO.sub(lambda match: local_time(match.group(0), tz), text)


def viewer_zone(shop: int | str | None = None) -> tzinfo:
    """The zone of `shop` (an id or a domain), else of the one store being viewed, else DEFAULT_TIMEZONE."""
    viewer = g.get("viewer")
    return dates.zone(viewer.zone_name(shop) if viewer is not None else None)


@blueprint.app_template_filter("when")
def when(value: Any, shop: int | str | None = None) -> str:
    """The template filter: `{{ value|when(shop_id) }}`."""
    return local_time(value, viewer_zone(shop))


@blueprint.app_template_filter("times_in")
def times_in(text: Any, shop: int | str | None = None) -> str:
    """The template filter for text holding instants (a trace's message): `{{ line.message|times_in(shop_id) }}`."""
    return local_times_in("" if text is None else str(text), viewer_zone(shop))
