"""One small aggregator per meter aggregation.

An aggregator folds accepted usage values into a period quantity. `merge` combines two partial
aggregates of the same meter (a window into its period, or batches in reconciliation), which is
what lets windows be aggregated on their own and still give the exact period quantity.

Aggregates are msgspec structs with `gc=False`: a rater keeps one or two per window for the whole
run, and as ordinary objects they made up most of what the cyclic garbage collector re-scanned on
every full collection (about a quarter of the run time). They hold only numbers, datetimes and
strings (a set of strings for unique_count), so they can never be part of a reference cycle, which
is the condition for opting out. They also pickle (snapshots) in C, without a Python-level
`__getstate__`.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Protocol

import msgspec

from operators.money import ZERO


class Aggregate(Protocol):
    def add(self, value: Decimal | str, at: datetime, seq: int) -> None: ...
    def merge(self, other: Aggregate) -> None: ...
    def quantity(self) -> Decimal: ...
    # The quantity `merge(other)` would give, leaving self unchanged: rating prices it first
    # and merges only once pricing succeeded (operators/rating.py).
    def merged_quantity(self, other: Aggregate) -> Decimal: ...
    def copy(self) -> Aggregate: ...


class Count(msgspec.Struct, gc=False):
    n: int = 0

    def add(self, value: Decimal | str, at: datetime, seq: int) -> None:
        self.n += 1

    def merge(self, other: Aggregate) -> None:
        assert isinstance(other, Count)
        self.n += other.n

    def quantity(self) -> Decimal:
        return Decimal(self.n)

    def merged_quantity(self, other: Aggregate) -> Decimal:
        assert isinstance(other, Count)
        return Decimal(self.n + other.n)

    def copy(self) -> Count:
        return Count(self.n)


class Sum(msgspec.Struct, gc=False):
    total: Decimal = ZERO

    def add(self, value: Decimal | str, at: datetime, seq: int) -> None:
        assert isinstance(value, Decimal)
        self.total += value

    def merge(self, other: Aggregate) -> None:
        assert isinstance(other, Sum)
        self.total += other.total

    def quantity(self) -> Decimal:
        return self.total

    def merged_quantity(self, other: Aggregate) -> Decimal:
        assert isinstance(other, Sum)
        return self.total + other.total

    def copy(self) -> Sum:
        return Sum(self.total)


class Max(msgspec.Struct, gc=False):
    best: Decimal | None = None

    def add(self, value: Decimal | str, at: datetime, seq: int) -> None:
        assert isinstance(value, Decimal)
        if self.best is None or value > self.best:
            self.best = value

    def merge(self, other: Aggregate) -> None:
        assert isinstance(other, Max)
        if other.best is not None and (self.best is None or other.best > self.best):
            self.best = other.best

    def quantity(self) -> Decimal:
        return ZERO if self.best is None else self.best

    def merged_quantity(self, other: Aggregate) -> Decimal:
        assert isinstance(other, Max)
        if other.best is not None and (self.best is None or other.best > self.best):
            return other.best
        return self.quantity()

    def copy(self) -> Max:
        return Max(self.best)


class UniqueCount(msgspec.Struct, gc=False):
    seen: set[str] = msgspec.field(default_factory=set)

    def add(self, value: Decimal | str, at: datetime, seq: int) -> None:
        assert isinstance(value, str)
        self.seen.add(value)

    def merge(self, other: Aggregate) -> None:
        assert isinstance(other, UniqueCount)
        self.seen |= other.seen

    def quantity(self) -> Decimal:
        return Decimal(len(self.seen))

    def merged_quantity(self, other: Aggregate) -> Decimal:
        assert isinstance(other, UniqueCount)
        seen = self.seen
        return Decimal(len(seen) + sum(1 for v in other.seen if v not in seen))

    def copy(self) -> UniqueCount:
        return UniqueCount(set(self.seen))


class Latest(msgspec.Struct, gc=False):
    """Value of the event with the greatest time; equal times go to the later input position."""

    at: datetime | None = None
    seq: int = -1
    value: Decimal = ZERO

    def add(self, value: Decimal | str, at: datetime, seq: int) -> None:
        assert isinstance(value, Decimal)
        if self.at is None or (at, seq) > (self.at, self.seq):
            self.at, self.seq, self.value = at, seq, value

    def merge(self, other: Aggregate) -> None:
        assert isinstance(other, Latest)
        if other.at is not None:
            self.add(other.value, other.at, other.seq)

    def quantity(self) -> Decimal:
        return self.value

    def merged_quantity(self, other: Aggregate) -> Decimal:
        assert isinstance(other, Latest)
        if other.at is not None and (self.at is None
                                     or (other.at, other.seq) > (self.at, self.seq)):
            return other.value
        return self.value

    def copy(self) -> Latest:
        return Latest(self.at, self.seq, self.value)


AGGREGATORS: dict[str, type] = {
    "count": Count,
    "sum": Sum,
    "max": Max,
    "unique_count": UniqueCount,
    "latest": Latest,
}


def new_aggregate(aggregation: str) -> Aggregate:
    agg: Aggregate = AGGREGATORS[aggregation]()
    return agg
