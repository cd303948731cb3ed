"""Billing periods: calendar months in UTC, cut to a subscription's active interval [start, end)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True, slots=True, order=True)
class Month:
    year: int
    month: int

    @classmethod
    def of(cls, at: datetime) -> Month:
        at = at.astimezone(UTC)
        return cls(at.year, at.month)

    @classmethod
    def parse(cls, key: str) -> Month:
        year, month = key.split("-")
        return cls(int(year), int(month))

    @property
    def key(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.next().start

    def next(self) -> Month:
        if self.month == 12:
            return Month(self.year + 1, 1)
        return Month(self.year, self.month + 1)

    def seconds(self) -> int:
        return int((self.end - self.start).total_seconds())

    def __str__(self) -> str:
        return self.key


def months_between(first: Month, last: Month) -> list[Month]:
    """Inclusive range of months."""
    out = []
    cur = first
    while cur <= last:
        out.append(cur)
        cur = cur.next()
    return out


def service_period(
    month: Month, start: datetime, end: datetime | None
) -> tuple[datetime, datetime] | None:
    """The month cut to [start, end); None when they do not overlap."""
    lo = max(month.start, start)
    hi = month.end if end is None else min(month.end, end)
    if lo >= hi:
        return None
    return lo, hi


def active_seconds(month: Month, start: datetime, end: datetime | None) -> int:
    cut = service_period(month, start, end)
    if cut is None:
        return 0
    lo, hi = cut
    delta: timedelta = hi - lo
    return delta.days * 86400 + delta.seconds  # whole seconds; sub-second starts are truncated


def iso(at: datetime) -> str:
    """RFC 3339 in UTC with a Z suffix; microseconds only when present."""
    at = at.astimezone(UTC)
    if at.microsecond:
        return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")
