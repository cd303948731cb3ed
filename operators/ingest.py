"""Ingest: from raw input lines to one bucket per event, and rating ops per subscription.

Each event lands in exactly one bucket, tested in this order: INVALID_JSON, INVALID_EVENT,
duplicate, unmetered, UNKNOWN_SUBJECT, NO_ACTIVE_SUBSCRIPTION, INVALID_VALUE, rated.

The ingest step also owns the event-time watermark: the greatest event time among *accepted*
(rated) events. Junk cannot move it: an event from an unknown subject dated 2099 must not close
every open period. The watermark is computed here, in input order, and stamped on every op, so
what the raters downstream decide (window closes, period closes, adjustments) depends only on the
input sequence, never on how the runtime batched it or how many workers it used.

Ops sent to a subscription's rater (plain tuples: they cross worker boundaries by the million):
    (USAGE, period, meter, window_start, value, time, seq, watermark)
    (TICK, watermark)                       close the windows that end at or before watermark
    (CLOSE, through_period, from_period, watermark)
"""

from __future__ import annotations

import base64
import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec

from operators.aggregators import Aggregate, new_aggregate
from operators.catalog import Catalog, Meter, Subscription
from operators.dedup import DedupStore, Origin
from operators.periods import Month
from operators.values import InvalidValue, distinct_key, quantity
from schemas.events import EVENT_DECODER, CloudEvent
from schemas.records import (
    INVALID_EVENT,
    INVALID_JSON,
    INVALID_VALUE,
    NO_ACTIVE_SUBSCRIPTION,
    REASONS,
    UNKNOWN_SUBJECT,
    ExceptionRecord,
)

USAGE, TICK, CLOSE = 0, 1, 2

Op = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class IngestConfig:
    window: timedelta = timedelta(minutes=1)
    allowed_lateness: timedelta = timedelta(hours=1)
    # First month to bill. None: the month of the earliest accepted event, fixed at the first
    # period close. meterwax bills what it saw; months before it were billed elsewhere.
    bill_from: Month | None = None

    def __post_init__(self) -> None:
        if self.window <= timedelta(0) or self.window.total_seconds() % 1:
            msg = "window must be a positive whole number of seconds"
            raise ValueError(msg)
        if self.allowed_lateness < timedelta(0):
            msg = "allowed lateness must not be negative"
            raise ValueError(msg)


@dataclass
class IngestStats:
    """Counts for one batch; merged by reconciliation."""

    read: int = 0
    blank: int = 0
    duplicates: int = 0
    unmetered: int = 0
    unmetered_not_in_plan: int = 0
    rated: int = 0
    late_after_close: int = 0
    exceptions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    # (subscription, period, meter) -> aggregate of the accepted values: the "ingested" side of
    # reconciliation, computed independently of windows and rating.
    ingested: dict[tuple[str, str, str], Aggregate] = field(default_factory=dict)
    contributions: dict[str, int] = field(default_factory=dict)  # meter -> accepted values
    first_position: int | None = None
    last_position: int | None = None


@dataclass
class IngestOutput:
    exceptions: list[ExceptionRecord]
    ops: dict[str, list[Op]]  # subscription id -> ops in input order
    stats: IngestStats


@dataclass
class IngestState:
    watermark: datetime | None = None
    bill_from: Month | None = None
    closed_through: Month | None = None
    pending: dict[str, int] = field(default_factory=dict)  # sub -> end of its newest open window
    heap: list[tuple[int, str]] = field(default_factory=list)


class Ingestor:
    """Pure ingest logic for one input partition. The dedup store is a port."""

    def __init__(self, catalog: Catalog, config: IngestConfig, dedup: DedupStore,
                 source_name: str, partition: int, state: IngestState | None = None,
                 position_key: str = "line") -> None:
        self.catalog = catalog
        self.config = config
        self.dedup = dedup
        self.source_name = source_name
        self.partition = partition
        self.position_key = position_key
        self.state = state or IngestState()
        if self.state.bill_from is None and config.bill_from is not None:
            self.state.bill_from = config.bill_from
        self._window_s = int(config.window.total_seconds())
        self._month_cache: dict[tuple[int, int], tuple[str, int, int]] = {}

    # -- helpers --------------------------------------------------------------------------------

    def _month(self, at: datetime) -> tuple[str, int, int]:
        """(period key, period start ts, period end ts), cached: called once per event."""
        ym = (at.year, at.month)
        hit = self._month_cache.get(ym)
        if hit is None:
            m = Month(*ym)
            hit = (m.key, int(m.start.timestamp()), int(m.end.timestamp()))
            self._month_cache[ym] = hit
        return hit

    def _exception(self, out: IngestOutput, position: int, raw: bytes, reason: str, error: str,
                   event: CloudEvent | None = None) -> None:
        out.stats.exceptions[reason] += 1
        try:
            text: str | None = raw.decode("utf-8")
            b64 = None
        except UnicodeDecodeError:
            text, b64 = None, base64.b64encode(raw).decode("ascii")
        out.exceptions.append(ExceptionRecord(
            exception_id=f"{self.source_name}:{self.partition}:{position}",
            reason=reason,
            error=error,
            position={"source": self.source_name, "partition": self.partition,
                      self.position_key: position},
            raw=text,
            raw_base64=b64,
            event_id=event.id if event else None,
            event_source=event.source if event else None,
            subject=event.subject if event else None,
        ))

    # -- the batch ------------------------------------------------------------------------------

    def process(self, batch: Sequence[tuple[int, bytes]]) -> IngestOutput:
        out = IngestOutput([], {}, IngestStats())
        stats = out.stats
        if batch:
            stats.first_position = batch[0][0]
            stats.last_position = batch[-1][0]
        decoded: list[tuple[int, bytes, CloudEvent]] = []
        for position, raw in batch:
            if not raw.strip():
                stats.blank += 1
                continue
            stats.read += 1
            try:
                event = EVENT_DECODER.decode(raw)
            except msgspec.ValidationError as exc:
                self._exception(out, position, raw, INVALID_EVENT, f"invalid CloudEvent: {exc}")
                continue
            except msgspec.DecodeError as exc:
                self._exception(out, position, raw, INVALID_JSON, f"not valid JSON: {exc}")
                continue
            if event.time.tzinfo is None:
                self._exception(out, position, raw, INVALID_EVENT,
                                "invalid CloudEvent: `time` has no UTC offset - at `$.time`",
                                event)
                continue
            decoded.append((position, raw, event))

        origin_base = (self.source_name, self.partition)
        firsts = self.dedup.claim([
            (f"{len(ev.source)}:{ev.source}{ev.id}", (*origin_base, pos))
            for pos, _, ev in decoded
        ])
        for (position, raw, event), first in zip(decoded, firsts, strict=True):
            if not first:
                stats.duplicates += 1
                continue
            self._classify(out, position, raw, event)
        return out

    def _classify(self, out: IngestOutput, position: int, raw: bytes, event: CloudEvent) -> None:
        catalog = self.catalog
        stats = out.stats
        meters = catalog.meters_by_event_type.get(event.type)
        if not meters:
            stats.unmetered += 1
            return
        customer = catalog.customer_by_subject.get(event.subject)
        if customer is None:
            self._exception(out, position, raw, UNKNOWN_SUBJECT,
                            f"subject {event.subject!r} belongs to no customer in the catalog",
                            event)
            return
        at = event.time
        if at.utcoffset():
            at = at.astimezone(UTC)
        sub = catalog.subscription_at(customer, at)
        if sub is None:
            self._exception(out, position, raw, NO_ACTIVE_SUBSCRIPTION,
                            f"customer {customer.id!r} has no subscription active at "
                            f"{at.isoformat()}", event)
            return
        plan = catalog.plans[sub.plan_id]
        values: list[tuple[Meter, Decimal | str]] = []
        for meter in meters:
            if plan.charge_for(meter.id) is None:
                continue
            try:
                if meter.aggregation == "count":
                    value: Decimal | str = Decimal(1)
                elif meter.aggregation == "unique_count":
                    value = distinct_key(event.data, meter.value_path)
                else:
                    value = quantity(event.data, meter.value_path)
            except InvalidValue as exc:
                self._exception(out, position, raw, INVALID_VALUE,
                                f"meter {meter.id!r}: {exc}", event)
                return
            values.append((meter, value))
        if not values:
            # A metered type, but the subscription's plan prices none of its meters.
            stats.unmetered += 1
            stats.unmetered_not_in_plan += 1
            return
        self._accept(out, sub, at, position, values)

    def _accept(self, out: IngestOutput, sub: Subscription, at: datetime, seq: int,
                values: list[tuple[Meter, Decimal | str]]) -> None:
        state = self.state
        stats = out.stats
        stats.rated += 1
        period, p_start, p_end = self._month(at)
        closed = state.closed_through
        if closed is not None and period <= closed.key:
            stats.late_after_close += 1
        wm = state.watermark
        if wm is None or at > wm:
            wm = state.watermark = at
            advanced = True
        else:
            advanced = False
        if state.closed_through is None and (state.bill_from is None
                                             or period < state.bill_from.key):
            state.bill_from = Month.parse(period)

        ts = int(at.timestamp())
        w = self._window_s
        window_start = max(ts - ts % w, p_start)
        window_end = min(window_start - window_start % w + w, p_end)
        ops = out.ops.setdefault(sub.id, [])
        for meter, value in values:
            ops.append((USAGE, period, meter.id, window_start, value, at, seq, wm))
            key = (sub.id, period, meter.id)
            agg = stats.ingested.get(key)
            if agg is None:
                agg = stats.ingested[key] = new_aggregate(meter.aggregation)
            agg.add(value, at, seq)
            stats.contributions[meter.id] = stats.contributions.get(meter.id, 0) + 1
        wm_ts = int(wm.timestamp())
        if window_end > wm_ts and state.pending.get(sub.id, 0) < window_end:
            state.pending[sub.id] = window_end
            heapq.heappush(state.heap, (window_end, sub.id))
        if advanced:
            self._advance(out, wm)

    def _advance(self, out: IngestOutput, wm: datetime) -> None:
        """The watermark moved: tick subscriptions whose open windows have ended, and close the
        periods whose end plus allowed lateness it has passed."""
        state = self.state
        wm_ts = int(wm.timestamp())
        heap = state.heap
        while heap and heap[0][0] <= wm_ts:
            end, sub_id = heapq.heappop(heap)
            if state.pending.get(sub_id) == end:
                del state.pending[sub_id]
                out.ops.setdefault(sub_id, []).append((TICK, wm))
        first = state.closed_through.next() if state.closed_through else state.bill_from
        if first is None:
            return
        lateness = self.config.allowed_lateness
        through: Month | None = None
        month = first
        while month.end + lateness < wm:
            through = month
            month = month.next()
        if through is not None:
            self._close(out, through, wm)

    def _close(self, out: IngestOutput, through: Month, wm: datetime) -> None:
        state = self.state
        start = state.bill_from or through
        previous = state.closed_through
        state.closed_through = through
        for sub in self.catalog.subscriptions.values():
            if sub.start >= through.end:
                continue
            if sub.end is not None and sub.end <= start.start:
                continue
            if previous is not None and sub.end is not None and sub.end <= previous.end:
                # Everything it had was closed by an earlier close; a rater with open
                # late usage is still closed by its own adjustment logic.
                continue
            out.ops.setdefault(sub.id, []).append((CLOSE, through.key, start.key, wm))

    def finish(self) -> IngestOutput:
        """End of a finite input: close every period up to the watermark's own."""
        out = IngestOutput([], {}, IngestStats())
        if self.state.watermark is not None:
            last = Month.of(self.state.watermark)
            if self.state.closed_through is None or self.state.closed_through < last:
                self._close(out, last, self.state.watermark)
        return out
