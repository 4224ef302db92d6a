"""Query parameters of the admin list routes (``/audit``, ``/metrics/requests``).

Each is bounded so that a value the database cannot take is answered 422, not
500: an offset past a 64-bit integer, and a time that leaves the calendar when
moved to UTC (``0001-01-01T00:00:00+05:00``). Text holding NUL, which
PostgreSQL refuses, is searched for as the stores keep it (U+FFFD, see
:func:`app_kernel.db.types.storable_text`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Query
from pydantic import AfterValidator

__all__ = ("MAX_OFFSET", "PageOffset", "TextFilter", "TimeBound", "TraceIdFilter")

MAX_OFFSET = 1_000_000_000
"""The largest ``offset`` any listing takes (far past any page worth reading, far
below the 64-bit integers the drivers take): the list routes, ``JobClient.list_dead``,
the user store and the CLI."""


def _in_utc_range(value: datetime | None) -> datetime | None:
    """``value`` in UTC (naive means UTC); a ValueError when UTC has no such time."""
    if value is None or value.tzinfo is None:
        return value
    try:
        return value.astimezone(UTC)
    except OverflowError:
        msg = "the time is out of range once moved to UTC"
        raise ValueError(msg) from None


PageOffset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
TextFilter = Annotated[str | None, Query(max_length=1024)]
TraceIdFilter = Annotated[str | None, Query(pattern=r"^[0-9a-f]{32}$")]
TimeBound = Annotated[datetime | None, Query(), AfterValidator(_in_utc_range)]
