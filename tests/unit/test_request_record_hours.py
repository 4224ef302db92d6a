"""The partition fields of a request record: UTC year, month, day and hour of its time."""

from __future__ import annotations

from datetime import UTC, datetime

from app_kernel.observability.request_metrics import _hour_of


def test_partition_fields_follow_the_clock_across_hour_day_and_year_ends() -> None:
    new_year = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    # In order, then a step back (a clock set back): each answer is for its own time.
    stamps = [new_year - 3600.5, new_year - 0.000001, new_year, new_year + 3599.9, new_year + 3600]
    stamps += [new_year - 1.0, new_year + 7200.25]
    for stamp in stamps:
        moment = datetime.fromtimestamp(stamp, UTC)
        assert _hour_of(stamp) == (moment.year, moment.month, moment.day, moment.hour), stamp
