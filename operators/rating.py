"""Streaming delta rating for one subscription.

Usage arrives as ops from ingest (see operators/ingest.py). Contributions are aggregated per
period, meter and tumbling event-time window. When the watermark reaches a window's end the window
is rated as a delta: merge it into the period aggregate, price the new cumulative quantity with the
charge's pricer, and book the difference from what was rated before. The sum of a period's deltas
is therefore exactly the price of its quantity, whatever the window split or arrival order, and
the running charge is always current.

A rated window leaves the state: what a period keeps is its aggregates, amounts and what was
issued, never its windows, so the state follows the windows in flight, not the months elapsed.
Usage that arrives for a window whose end the watermark had already passed (the highest watermark
this rater has seen, so "late" means the same whatever the window's history) is rated on its own,
as a correction row with its own id, carrying only its events, quantity and delta; the store adds
it to the window row instead of replacing anything. A contribution to a period whose invoice
candidate was already issued is never dropped: it is rated the same way, as a correction, and
the period waits to be settled: on a Settle op (sent by ingest when the watermark crosses the
adjustment-cycle boundary after the subscription's first late contribution, and at the end of a
bounded input), every period whose late usage is not yet on a document gets one adjustment
candidate carrying the line deltas since the last document. So late usage arriving all day
gives finance one correction per period per day, not one per event; its ids stay `adj-1`,
`adj-2`, ... in settle order, which the op sequence alone decides.

A period is kept after its close only until its retention horizon (operators/ingest.py): a
Retire op drops its state (aggregates, amounts, what was issued, the daily amounts) and tells the
journal step the subscription will issue nothing more for it (PeriodRetired). Usage for a retired
period can reach a rater only from an input partition whose watermark is behind the one that
retired it; it becomes a LATE_BEYOND_RETENTION exception of the rating step, never a second
rating of usage whose dedup record may be gone.

The crash-safe boundary: `apply` never raises. An op whose rating fails becomes an exception
record (PERIOD_LIMIT_EXCEEDED when a period would pass what the store holds, which only several
input partitions together can reach, since each partition's ingest refuses it first; otherwise
INTERNAL_ERROR) naming the subscription, period, meter, window and event count, and the ops after
it are rated. Its events were counted as rated by ingest and are now in no window, so
reconciliation reports the gap for that subscription, period and meter: finance sees it, and
the flow does not stop for it.

Every decision depends only on the op sequence (each op carries the watermark computed upstream in
input order), so outputs are identical however the runtime batches or distributes the work.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec

from operators import ids
from operators.aggregators import Aggregate
from operators.catalog import Catalog, Subscription, SubscriptionTerms
from operators.invoicing import LineValue, candidate, diff_lines, period_lines
from operators.limits import STORE_LIMIT
from operators.money import ZERO
from operators.periods import Month, months_between
from operators.pricers import PRICERS
from operators.protocol import (
    Close,
    Idle,
    Op,
    PeriodRetired,
    Retire,
    Settle,
    Terms,
    Tick,
    Usage,
)
from schemas.records import (
    CONTRACT_REFUSED,
    INTERNAL_ERROR,
    LATE_BEYOND_RETENTION,
    PERIOD_LIMIT_EXCEEDED,
    ExceptionRecord,
    InvoiceCandidate,
    RatedWindow,
    Reason,
)

Output = RatedWindow | InvoiceCandidate | ExceptionRecord | PeriodRetired


class RatingLimitError(ValueError):
    """A period's quantity or amount would leave what the store holds exactly (below 10^20)."""


class RetiredPeriodError(ValueError):
    """Usage for a period this rater already retired (module docstring)."""


@functools.lru_cache(maxsize=4096)
def _utc(ts: int) -> datetime:
    """Window bounds as datetimes. Every subscription's windows share the same boundaries, and a
    window's end is the next one's start, so nearly every conversion is a cache hit."""
    return datetime.fromtimestamp(ts, UTC)


class Window(msgspec.Struct, gc=False):
    # A struct outside the cyclic GC, like the aggregate it holds (operators/aggregators.py): it
    # references only numbers and an aggregate, so it can hold no cycle.
    end: int
    agg: Aggregate  # the contributions not yet rated
    events: int
    correction: bool  # its end had passed the watermark when it was opened (module docstring)


@dataclass
class PeriodState:
    aggs: dict[str, Aggregate] = field(default_factory=dict)  # meter -> rated period aggregate
    rated: dict[str, Decimal] = field(default_factory=dict)  # meter -> exact rated amount
    windows: dict[tuple[str, int], Window] = field(default_factory=dict)  # open ones only
    closed: bool = False
    issued: dict[str, LineValue] = field(default_factory=dict)  # lines issued so far (summed)
    adjustments: int = 0
    # meter -> UTC day (days since the epoch) -> exact amount rated on windows starting that
    # day; and what of it the issued candidates already carry. Consumption revenue schedules
    # follow these (operators/erp.py).
    daily: dict[str, dict[int, Decimal]] = field(default_factory=dict)
    issued_daily: dict[str, dict[int, Decimal]] = field(default_factory=dict)


@dataclass
class RaterState:
    periods: dict[str, PeriodState] = field(default_factory=dict)
    closed: set[str] = field(default_factory=set)  # closed periods not yet retired
    retired_through: str | None = None  # YYYY-MM: every period up to it is forgotten
    heap: list[tuple[int, str, str, int]] = field(default_factory=list)  # (end, period, meter, ws)
    rating_seq: int = 0
    high: int = -1  # the highest watermark of any op applied (epoch seconds)
    failures: int = 0  # ops whose rating failed (see the module docstring); numbers their ids
    # Stream mode: the contract terms in force (a Terms op) and their version; None: the
    # catalog the rater was built with (file mode).
    terms: SubscriptionTerms | None = None
    terms_version: int = -1
    # Closed periods with late usage rated since their last document: settled (adjusted) by
    # the next Settle op, or before they retire.
    unsettled: set[str] = field(default_factory=set)
    # Several input partitions (`partitions`): each one's last Close, (through, start), and the
    # partitions that said they are idle (operators/protocol.py).
    votes: dict[str, tuple[str, str]] = field(default_factory=dict)
    idle: set[str] = field(default_factory=set)
    # Usage its own partition sent after closing its period, while another partition has not
    # closed it yet: held until this rater closes the period, then rated as late (an
    # adjustment), as its partition judged it. Without this, whether it reached the invoice or
    # an adjustment would depend on which partition's ops happened to arrive first.
    deferred: dict[str, list[Usage]] = field(default_factory=dict)
    settle_owed: bool = False  # a Settle came while usage was deferred: settle on its release

    def __setstate__(self, state: dict[str, object]) -> None:
        state.setdefault("unsettled", set())  # snapshots from before adjustment cycles
        # Snapshots from before the minimum watermark: their periods closed on any partition's
        # Close, and those closes stand.
        state.setdefault("votes", {})
        state.setdefault("idle", set())
        state.setdefault("deferred", {})
        state.setdefault("settle_owed", False)
        self.__dict__.update(state)


class SubscriptionRater:
    def __init__(self, catalog: Catalog, subscription_id: str, window: timedelta,
                 state: RaterState | None = None,
                 partitions: tuple[str, ...] | None = None) -> None:
        """`partitions`: every input partition of the flow, each of which must close a period
        (or be idle) before this rater closes it; None: a single input, whose Close is final."""
        self.window_seconds = int(window.total_seconds())
        self.partitions = partitions
        self.state = state if state is not None else RaterState()
        self._period_ends: dict[str, int] = {}
        terms = self.state.terms
        self._bind(terms.catalog() if terms is not None else catalog, subscription_id)

    def _bind(self, catalog: Catalog, subscription_id: str) -> None:
        self.catalog = catalog
        self.sub: Subscription = catalog.subscriptions[subscription_id]
        self.plan = catalog.plans[self.sub.plan_id]
        self.customer = catalog.customers[self.sub.customer_id]
        self._aggregation = {c.meter: catalog.meters[c.meter].aggregation
                             for c in self.plan.charges}
        self._charges = {c.meter: c for c in self.plan.charges}
        # The pricer of each meter's charge, looked up once rather than per rated window.
        self._pricers = {c.meter: PRICERS[c.model] for c in self.plan.charges}

    # -- ops ------------------------------------------------------------------------------------

    def apply(self, ops: list[Op], partition: str = "") -> list[Output]:
        """Apply one input partition's ops, in its order."""
        out: list[Output] = []
        state = self.state
        if partition in state.idle and not (ops and type(ops[-1]) is Idle):
            state.idle.discard(partition)  # it has read something again: wait for it again
        unsettled_by_it = False
        for op in ops:
            try:
                if op.watermark > state.high:
                    state.high = op.watermark
                if isinstance(op, Usage):
                    if self.partitions is not None:
                        if self._defers(op, partition):
                            state.deferred.setdefault(op.period, []).append(op)
                            continue
                        vote = state.votes.get(partition)
                        if op.period in state.closed and (vote is None
                                                          or op.period > vote[0]):
                            # Late here, not for its partition (idle when this period
                            # closed), whose ingest will send no Settle for it.
                            unsettled_by_it = True
                    self._usage(op, out)
                elif isinstance(op, Tick):
                    self._close_windows(op.watermark, out, set())
                elif isinstance(op, Close):
                    if self.partitions is None:
                        self._close_periods(Month.parse(op.through), Month.parse(op.start),
                                            op.watermark, out)
                    else:
                        vote = state.votes.get(partition)
                        if vote is None or op.through > vote[0]:
                            state.votes[partition] = (op.through, op.start)
                        self._close_agreed(op.watermark, out)
                elif isinstance(op, Idle):
                    if self.partitions is not None:
                        state.idle.add(partition)
                        self._close_agreed(op.watermark, out)
                elif isinstance(op, Retire):
                    self._retire(op.through, op.watermark, out)
                elif isinstance(op, Terms):
                    self._terms(op, out)
                elif isinstance(op, Settle):
                    if state.deferred:
                        state.settle_owed = True
                    self._settle_now(out)
                else:
                    msg = f"unknown op {op!r}"
                    raise ValueError(msg)
            except Exception as exc:  # the crash-safe boundary (module docstring)
                out.append(self._failure(exc, _describe(op)))
        if unsettled_by_it:
            try:
                self._settle_now(out)
            except Exception as exc:  # the crash-safe boundary (module docstring)
                out.append(self._failure(exc, {"op": "settle"}))
        return out

    def _close_agreed(self, wm_ts: int, out: list[Output]) -> None:
        """Close what every input partition has closed, leaving out the idle ones (all of them
        idle or ended: what any has closed)."""
        state = self.state
        assert self.partitions is not None
        votes = state.votes
        waited = [p for p in self.partitions if p not in state.idle]
        if waited:
            if any(p not in votes for p in waited):
                return
            through, start = min(votes[p] for p in waited)
        elif votes:
            through, start = max(votes.values())
        else:
            return
        self._close_periods(Month.parse(through), Month.parse(start), wm_ts, out)
        self._release(out)

    def _defers(self, op: Usage, partition: str) -> bool:
        """Whether this usage is late for its own partition (which closed its period) but
        its period is not closed here yet."""
        state = self.state
        vote = state.votes.get(partition)
        period = op.period
        return (vote is not None and period <= vote[0] and period not in state.closed
                and (state.retired_through is None or period > state.retired_through))

    def _release(self, out: list[Output]) -> None:
        """Rate the deferred usage of the periods now closed, as late usage."""
        state = self.state
        released = sorted(p for p in state.deferred if p in state.closed)
        if not released:
            return
        for period in released:
            for op in state.deferred.pop(period):
                try:
                    self._usage(op, out)
                except Exception as exc:  # the crash-safe boundary (module docstring)
                    out.append(self._failure(exc, _describe(op)))
        if state.settle_owed and not state.deferred:
            state.settle_owed = False
            self._settle_now(out)

    def _settle_now(self, out: list[Output]) -> None:
        """One adjustment for each period with late usage on no document yet."""
        state = self.state
        if state.unsettled:
            due = sorted(state.unsettled)
            state.unsettled.clear()
            self._adjust(due, out)

    def _failure(self, exc: Exception, what: dict[str, object]) -> ExceptionRecord:
        state = self.state
        state.failures += 1
        where: dict[str, object] = {"step": "rating", "subscription": self.sub.id} | what
        reason: Reason = (PERIOD_LIMIT_EXCEEDED if isinstance(exc, RatingLimitError)
                          else LATE_BEYOND_RETENTION if isinstance(exc, RetiredPeriodError)
                          else INTERNAL_ERROR)
        text = str(exc)
        if len(text) > 500:
            text = f"{text[:500]}... ({len(text)} characters)"
        return ExceptionRecord(
            exception_id=ids.rating_failure_id(self.sub.id, state.failures),
            reason=reason,
            error=f"rating failed, its events are in no rated window: {type(exc).__name__}: "
                  f"{text}",
            position=where,
            raw=None,
        )

    def _terms(self, op: Terms, out: list[Output]) -> None:
        """New contract terms (stream mode). Ingest refused any change that would alter usage it
        accepted; a rater fed by several input partitions has seen usage no single partition
        has, so it refuses again what would re-price its own rated usage: a plan, meter or
        legal entity change once anything was rated or invoiced. A refused version is reported
        once and the rater keeps rating on the terms it had."""
        state = self.state
        if op.version <= state.terms_version:
            return  # another input partition sent it (or a newer one) first
        state.terms_version = op.version
        new = op.terms
        if state.rating_seq or state.closed or state.retired_through is not None:
            cur = self.catalog.terms_of(self.sub.id)
            why = None
            if new.plan != cur.plan:
                why = (f"plan {cur.plan.id!r} would become {new.plan.id!r} (or be edited), but "
                       "this subscription has usage rated on it")
            elif new.meters != cur.meters:
                why = "a meter its plan charges would be edited, but it has usage rated on it"
            elif new.customer.legal_entity != cur.customer.legal_entity:
                why = (f"its customer would move from legal entity "
                       f"{cur.customer.legal_entity!r} to {new.customer.legal_entity!r}, but "
                       "it has usage rated or invoiced")
            if why is not None:
                state.failures += 1
                out.append(ExceptionRecord(
                    exception_id=ids.rating_failure_id(self.sub.id, state.failures),
                    reason=CONTRACT_REFUSED,
                    error=(f"contracts version {op.version} not applied to subscription "
                           f"{self.sub.id!r}: {why}; it is still rated on the terms it had"),
                    position={"step": "rating", "subscription": self.sub.id,
                              "op": "terms", "version": op.version},
                    raw=None))
                return
        state.terms = new
        self._bind(new.catalog(), self.sub.id)

    def _period_end(self, period: str) -> int:
        end = self._period_ends.get(period)
        if end is None:
            end = self._period_ends[period] = int(Month.parse(period).end.timestamp())
        return end

    def _usage(self, op: Usage, out: list[Output]) -> None:
        period, meter, window_start = op.period, op.meter, op.window_start
        partial, events, wm = op.partial, op.events, op.watermark
        state = self.state
        pstate = state.periods.get(period)
        if pstate is None:
            retired = state.retired_through
            if retired is not None and period <= retired:
                msg = (f"usage for period {period}, which this subscription retired (every "
                       f"period through {retired}): another input partition's watermark passed "
                       "its retention horizon first")
                raise RetiredPeriodError(msg)
            pstate = state.periods[period] = PeriodState(closed=period in state.closed)
        key = (meter, window_start)
        win = pstate.windows.get(key)
        if win is None:
            # A window cut by a month start begins off-boundary; it still ends at the next
            # boundary, or at the period's end.
            w = self.window_seconds
            w_end = min(window_start - window_start % w + w, self._period_end(period))
            win = pstate.windows[key] = Window(w_end, partial.copy(), events,
                                               pstate.closed or w_end <= state.high)
            heapq.heappush(state.heap, (w_end, period, meter, window_start))
        else:
            win.agg.merge(partial)
            win.events += events
        touched: set[str] = set()
        if state.heap[0][0] <= wm:
            self._close_windows(wm, out, touched)
        if pstate.closed and key in pstate.windows:
            # Usage for an issued period is adjusted at once. From a single input partition
            # its window has always ended by the watermark (closed above); from several, this
            # op's partition may be behind the one whose watermark closed the period, and
            # waiting for it would leave the usage in a window no close will ever rate.
            self._rate_window(period, meter, window_start, out, touched)
        if touched:
            state.unsettled |= touched

    def _close_windows(self, wm_ts: int, out: list[Output], touched: set[str]) -> None:
        heap = self.state.heap
        while heap and heap[0][0] <= wm_ts:
            _, period, meter, ws = heapq.heappop(heap)
            self._rate_window(period, meter, ws, out, touched)

    def _rate_window(self, period: str, meter: str, ws: int, out: list[Output],
                     touched: set[str]) -> None:
        state = self.state
        pstate = state.periods[period]
        # Rated or not, the window leaves the state: its heap entry may be stale (a window of a
        # closed period is rated as soon as it opens), and a later contribution opens a new one.
        win = pstate.windows.pop((meter, ws), None)
        if win is None:
            return
        opened = win.agg
        try:
            agg = pstate.aggs.get(meter)
            q = opened.quantity() if agg is None else agg.merged_quantity(opened)
            amount = self._pricers[meter](self._charges[meter], q)
            if q >= STORE_LIMIT or amount >= STORE_LIMIT or amount <= -STORE_LIMIT:
                msg = (f"period {period} meter {meter!r}: quantity {q} or amount {amount} is "
                       "beyond what the store holds exactly (below 10^20)")
                raise RatingLimitError(msg)
            # Priced: from here on nothing can fail, so the state changes only now.
            if agg is None:
                # The window is gone from the state, so its aggregate can become the period's.
                wq = q
                pstate.aggs[meter] = opened
            else:
                wq = opened.quantity()
                agg.merge(opened)
            delta = amount - pstate.rated.get(meter, ZERO)
            pstate.rated[meter] = amount
            if delta:
                days = pstate.daily.get(meter)
                if days is None:
                    days = pstate.daily[meter] = {}
                day = ws // 86400
                days[day] = days.get(day, ZERO) + delta
            state.rating_seq += 1
            if pstate.closed:
                touched.add(period)
            sub = self.sub
            # Positional, in RatedWindow's field order (schemas/records.py says why).
            out.append(RatedWindow(
                (ids.correction_row_id(sub.id, meter, ws, state.rating_seq)
                 if win.correction else ids.window_row_id(sub.id, meter, ws)),  # row_id
                sub.id,  # subscription_id
                self.customer.id,  # customer_id
                self.plan.id,  # plan_id
                self.customer.legal_entity,  # legal_entity
                self.plan.currency,  # currency
                meter,
                period,
                _utc(ws),  # window_start
                _utc(win.end),  # window_end
                0,  # revision
                win.events,  # event_count
                wq,  # window_quantity
                q,  # cumulative_quantity
                delta,  # amount_delta
                amount,  # cumulative_amount
                state.rating_seq,
                pstate.closed,  # after_close
                "correction" if win.correction else "window",  # row_kind
            ))
        except Exception as exc:  # the crash-safe boundary (module docstring)
            # Pricing comes before any change of state, so dropping the window's unrated
            # contributions leaves the subscription as if they had never arrived.
            out.append(self._failure(exc, {"op": "rate_window", "period": period, "meter": meter,
                                           "window_start": _utc(ws).isoformat(),
                                           "events": win.events}))

    def _quantities(self, pstate: PeriodState) -> dict[str, Decimal]:
        return {m: agg.quantity() for m, agg in pstate.aggs.items()}

    def _adjust(self, touched: Iterable[str], out: list[Output]) -> None:
        for period in sorted(touched):
            pstate = self.state.periods[period]
            month = Month.parse(period)
            now = period_lines(self.catalog, self.sub, month, self._quantities(pstate))
            delta = diff_lines(pstate.issued, now)
            if not delta:
                continue  # the late usage changed no quantity or amount on the invoice
            pstate.adjustments += 1
            base = ids.candidate_id(self.sub.id, period)
            out.append(candidate(self.catalog, self.sub, month, delta,
                                 ids.adjustment_id(base, pstate.adjustments), adjusts=base,
                                 consumption=_daily_change(pstate.issued_daily, pstate.daily)))
            pstate.issued = now
            pstate.issued_daily = {m: dict(d) for m, d in pstate.daily.items()}

    def _close_periods(self, through: Month, start: Month, wm_ts: int, out: list[Output]) -> None:
        state = self.state
        touched: set[str] = set()
        self._close_windows(wm_ts, out, touched)
        state.unsettled |= touched
        sub = self.sub
        first = max(start, Month.of(sub.start))
        last = through
        if sub.end is not None:
            # [start, end) excludes `end`: the last billed month holds the instant before it.
            last = min(last, Month.of(sub.end - timedelta(microseconds=1)))
        months = {m.key for m in months_between(first, last)} if first <= last else set()
        months |= {p for p in state.periods if p <= through.key}
        retired = state.retired_through
        for period in sorted(months - state.closed):
            if retired is None or period > retired:
                self._close_period(period, out)

    def _retire(self, through: str, wm_ts: int, out: list[Output]) -> None:
        state = self.state
        if state.retired_through is not None and through <= state.retired_through:
            return  # another input partition retired it first
        if state.votes:
            # A partition retires a period it closed a retention horizon ago; another may not
            # have closed it yet (still that far behind): close it here first, so no period
            # is forgotten without its invoice.
            start = min(v[1] for v in state.votes.values())
            self._close_periods(Month.parse(through), Month.parse(start), wm_ts, out)
            self._release(out)
        state.retired_through = through
        due = sorted(p for p in state.unsettled if p <= through)
        if due:  # never forget late usage that is on no document yet
            state.unsettled.difference_update(due)
            self._adjust(due, out)
        sub = self.sub
        for period in sorted(p for p in state.periods if p <= through):
            pstate = state.periods.pop(period)
            if pstate.closed:
                out.append(PeriodRetired(sub.id, self.customer.legal_entity, self.plan.currency,
                                         period, self.customer.id))
        state.closed = {p for p in state.closed if p > through}
        self._period_ends = {p: end for p, end in self._period_ends.items() if p > through}
        if any(h[1] <= through for h in state.heap):
            state.heap = [h for h in state.heap if h[1] > through]
            heapq.heapify(state.heap)

    def _close_period(self, period: str, out: list[Output]) -> None:
        state = self.state
        pstate = state.periods.get(period)
        if pstate is None:
            pstate = state.periods[period] = PeriodState()
        # At end of input the watermark's own period closes with windows still open: rate them
        # first, in window order, so the invoice includes every accepted event.
        pending = sorted((w.end, m, ws) for (m, ws), w in pstate.windows.items())
        for _, meter, ws in pending:
            self._rate_window(period, meter, ws, out, set())
        state.heap = [h for h in state.heap if h[1] != period]
        heapq.heapify(state.heap)
        month = Month.parse(period)
        lines = period_lines(self.catalog, self.sub, month, self._quantities(pstate))
        out.append(candidate(self.catalog, self.sub, month, lines,
                             ids.candidate_id(self.sub.id, period), consumption=pstate.daily))
        pstate.issued = lines
        pstate.issued_daily = {m: dict(d) for m, d in pstate.daily.items()}
        pstate.closed = True
        state.closed.add(period)


def _daily_change(before: dict[str, dict[int, Decimal]], after: dict[str, dict[int, Decimal]]
                  ) -> dict[str, dict[int, Decimal]]:
    out: dict[str, dict[int, Decimal]] = {}
    for meter, days in after.items():
        old = before.get(meter, {})
        change = {d: v - old.get(d, ZERO) for d, v in days.items() if v != old.get(d, ZERO)}
        if change:
            out[meter] = change
    return out


def _describe(op: Op) -> dict[str, object]:
    """What a failed op was, for its exception record (the op itself may be malformed)."""
    try:
        if isinstance(op, Usage):
            return {"op": "usage", "period": op.period, "meter": op.meter,
                    "window_start": _utc(op.window_start).isoformat(), "events": op.events}
        if isinstance(op, Tick):
            return {"op": "tick"}
        if isinstance(op, Close):
            return {"op": "close", "through": op.through}
        if isinstance(op, Retire):
            return {"op": "retire", "through": op.through}
        if isinstance(op, Terms):
            return {"op": "terms", "version": op.version}
        if isinstance(op, Settle):
            return {"op": "settle"}
        if isinstance(op, Idle):
            return {"op": "idle"}
    except Exception:  # a malformed op is described by its text alone
        return {"op": repr(op)[:200]}
    return {"op": repr(op)[:200]}
