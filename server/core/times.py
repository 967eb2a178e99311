"""Times as the whole server computes and writes them: daily due times, RFC 3339 in UTC."""

import datetime
import zoneinfo


def next_run(now: datetime.datetime, at: str, zone: str) -> datetime.datetime:
    """The first moment after `now` when the clock in `zone` shows `at` (HH:MM), as an aware UTC datetime.

    The one computation of a daily due time: the maintenance daemon schedules by it,
    GET /api/maintenance shows it, and the time zone kind tries it. A wall time
    skipped by a DST change falls an hour later that day; a repeated one is due once,
    at its first occurrence.
    """
    tz = zoneinfo.ZoneInfo(zone)
    clock = datetime.time(*map(int, at.split(":")))
    day = now.astimezone(tz).date()
    for offset in (-1, 0, 1, 2):
        due = datetime.datetime.combine(day + datetime.timedelta(days=offset), clock, tzinfo=tz)
        due = due.astimezone(datetime.timezone.utc)
        if due > now:
            return due
    raise AssertionError("a daily time recurs within two days")


def previous_run(now: datetime.datetime, at: str, zone: str) -> datetime.datetime:
    """The last moment at or before `now` when the clock in `zone` showed `at`: the slot that passed last."""
    due = next_run(now - datetime.timedelta(days=2), at, zone)
    while True:
        later = next_run(due, at, zone)
        if later > now:
            return due
        due = later


def rfc3339(moment: datetime.datetime | None) -> str | None:
    """The one way the API writes a time: RFC 3339 in UTC with `Z`, microseconds as PostgreSQL keeps them."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339_ms(ts: float) -> str:
    """A log line's time (a Unix time): RFC 3339 in UTC with `Z` as the API writes times, to the millisecond."""
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:23] + "Z"


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
