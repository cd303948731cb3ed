"""Ingest: from raw input lines to one bucket per event, and rating ops per subscription.

Each event lands in exactly one bucket, tested in this order: INVALID_JSON, INVALID_EVENT
(both judged by operators/envelope.py), FUTURE_EVENT, LATE_BEYOND_RETENTION,
BEFORE_BILLING_START, unmetered,
UNKNOWN_SUBJECT, NO_ACTIVE_SUBSCRIPTION, INVALID_VALUE, unmetered (no meter of the type in the
plan), duplicate, PERIOD_LIMIT_EXCEEDED, rated.

Only an event that gets as far as dedup claims its identity: a rejected event claims nothing, so
a copy of it is judged afresh. Finance can fix the master data and replay it, and a corrupted
copy arriving first cannot make the good one a "duplicate". Everything before dedup is judged
from the event and the contracts alone, so it can run for the whole batch before the one dedup
round trip; PERIOD_LIMIT_EXCEEDED depends on what was accepted before, so it comes after
(Ingestor._admit).

Retention: a period closes once the watermark passes its end plus the allowed lateness, and is
retired once it passes that plus the retention horizon (default the dedup TTL, 35 days). Its
state is then dropped everywhere (this partition's period bounds and dedup identities, each
rater's period, the journal), and an event dated in it is LATE_BEYOND_RETENTION before dedup is
asked: its first copy's dedup record may be gone, so it could not be told from a replay.

A Kafka message in binary content mode (CloudEvents Kafka binding: the attributes in `ce_`
headers, the value only the data) comes with its headers (`process(binary=...)`) and is first
turned into its structured document (operators/bindings.py `from_kafka_binary`), which is then
judged exactly like a structured line; what the binding refuses (two `ce_id` headers, a `ce_data`
header, data that is not one JSON value...) is an exception with the binding's reason. Whatever
bucket rejects it, its record keeps the message as it came, the value as `raw` and the headers as
`headers`, so its dead letter can be retried as the same message; the ledger keeps the structured
document (AcceptedEvent.raw), the form that was rated.

The crash-safe boundary: judging one event can never raise out of `process`. An unforeseen
exception while decoding or classifying an event makes that event an INTERNAL_ERROR record (the
error text and its original bytes) and the batch goes on, because in stream mode an exception
that reaches Bytewax stops the flow, and recovery would replay the same message into the same
exception for ever. Rating has its own boundary (operators/rating.py).

The ingest step also owns the event-time watermark: the greatest event time among *accepted*
(rated) events. Junk cannot move it: an event from an unknown subject dated 2099 must not close
every open period. The watermark is computed here, in input order, and stamped on every op, so
what the raters downstream decide (window closes, period closes, adjustments) depends only on the
input sequence, never on how the runtime batched it or how many workers it used.

The ops sent to a subscription's rater are defined in operators/protocol.py. A Usage op
pre-aggregates the chunk's contributions to one window (see `_accept`), which keeps the number of
ops, and so the runtime's per-item cost, well below the number of events.
"""

from __future__ import annotations

import base64
import heapq
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec

from operators import ids
from operators.aggregators import Aggregate, new_aggregate
from operators.bindings import Headers, from_kafka_binary
from operators.catalog import Catalog, Customer, Meter, Subscription
from operators.clock import Clock, system_clock
from operators.contracts import Frozen
from operators.dedup import DedupStore, Origin
from operators.envelope import Rejection, judge
from operators.limits import (
    DEFAULT_ADJUSTMENT_CYCLE,
    DEFAULT_MAX_FUTURE,
    DEFAULT_RETENTION,
    MAX_DURATION,
    MAX_LINE_BYTES,
    MAX_TS,
    RAW_KEEP_BYTES,
)
from operators.money import ZERO
from operators.periods import Month
from operators.pricers import quantity_cap
from operators.protocol import Close, Idle, Op, Retire, Settle, Terms, Tick, Usage
from operators.values import InvalidValue, distinct_key, quantity
from schemas.events import CloudEvent
from schemas.records import (
    BEFORE_BILLING_START,
    FUTURE_EVENT,
    INTERNAL_ERROR,
    INVALID_VALUE,
    LATE_BEYOND_RETENTION,
    NO_ACTIVE_SUBSCRIPTION,
    PERIOD_LIMIT_EXCEEDED,
    REASONS,
    UNKNOWN_SUBJECT,
    AcceptedEvent,
    ExceptionRecord,
    MessageHeader,
    Reason,
)

_ONE = Decimal(1)
# How a meter's period quantity is bounded (Ingestor._over_limit).
_UNBOUNDED, _BY_VALUE, _BY_SUM, _BY_COUNT = 0, 1, 2, 3
# A period cannot hold this many events (a million a second for thirty years), so a count cap
# at or above it needs no counting.
_MAX_EVENTS = Decimal(10) ** 15
_Limits = tuple[tuple[Decimal, int], ...]  # (cap, how it is bounded) per routed meter
# An event judged rateable, waiting for dedup's answer (Ingestor._judge, Ingestor._admit):
# (position, raw, event, customer, subscription, values of the routed meters, their limits,
# (period key, period start, period end), its time). The event is None when the line was judged
# ahead (`Ingestor.judge_ahead`): a record that names it judges the line again (`_event`).
_Judged = tuple[int, bytes, CloudEvent | None, Customer, Subscription,
                list[tuple[Meter, Decimal | str]], _Limits | None, tuple[str, int, int], datetime]
# What `Ingestor.judge_ahead` found for one line that would reach dedup: (its index in the batch,
# its time, its subscription, its type, its dedup identity, the routed meters' values in route
# order, each (0, "") counted once, (1, text) an exact quantity or (2, text) a distinct key).
Verdict = tuple[int, datetime, str, str, str, list[tuple[int, str]]]



@dataclass(frozen=True, slots=True)
class IngestConfig:
    window: timedelta = timedelta(minutes=1)
    allowed_lateness: timedelta = timedelta(hours=1)
    # Emit every accepted event (IngestOutput.accepted) for the ClickHouse usage ledger.
    ledger: bool = False
    # Events dated more than this ahead of `clock()` are FUTURE_EVENT: they do not move the
    # watermark and do not claim their dedup identity, so they can be retried once due.
    max_future: timedelta = DEFAULT_MAX_FUTURE
    # How long after its close a period keeps taking late usage (module docstring).
    retention: timedelta = DEFAULT_RETENTION
    clock: Clock = system_clock
    # Late usage for an issued period is collected for this long, in watermark time, into one
    # adjustment per subscription and period (module docstring of operators/rating.py).
    adjustment_cycle: timedelta = DEFAULT_ADJUSTMENT_CYCLE

    def __post_init__(self) -> None:
        if self.window <= timedelta(0) or self.window.total_seconds() % 1:
            msg = "window must be a positive whole number of seconds"
            raise ValueError(msg)
        if self.allowed_lateness < timedelta(0):
            msg = "allowed lateness must not be negative"
            raise ValueError(msg)
        if self.retention <= timedelta(0):
            msg = "retention must be positive"
            raise ValueError(msg)
        cycle = self.adjustment_cycle
        if cycle <= timedelta(0) or cycle.total_seconds() % 1:
            msg = "adjustment cycle must be a positive whole number of seconds"
            raise ValueError(msg)
        for name in ("window", "allowed_lateness", "max_future", "retention",
                     "adjustment_cycle"):
            if getattr(self, name) > MAX_DURATION:
                msg = f"{name} must be at most {MAX_DURATION.days} days"
                raise ValueError(msg)
        if self.max_future < timedelta(0):
            msg = "max_future must not be negative"
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
    # Events retried from a dead letter (`meterwax exceptions retry`), by the bucket they landed
    # in this time: "rated", "duplicate", "unmetered", "blank" or an exception reason.
    retried: dict[str, int] = field(default_factory=dict)
    # Events the dedup store let through again because the same message (same origin) had
    # claimed them before: replays after a restart, processed again with idempotent writes.
    # Already counted in `rated` (or wherever they landed); for metrics, not reconciliation.
    replays: int = 0


@dataclass
class IngestOutput:
    exceptions: list[ExceptionRecord]
    ops: dict[str, list[Op]]  # subscription id -> ops in input order
    stats: IngestStats
    accepted: list[AcceptedEvent] = field(default_factory=list)  # with IngestConfig.ledger


@dataclass
class IngestState:
    watermark: int | None = None  # epoch seconds of the greatest accepted event time
    bill_from: Month | None = None
    closed_through: Month | None = None
    retired_through: Month | None = None  # the last period past its retention horizon
    pending: dict[str, int] = field(default_factory=dict)  # sub -> end of its newest open window
    heap: list[tuple[int, str]] = field(default_factory=list)
    # (subscription, period, meter) -> upper bound of the period quantity accepted so far, for
    # the charges whose cap a period could reach (see `Ingestor._over_limit`).
    totals: dict[tuple[str, str, str], Decimal] = field(default_factory=dict)
    # subscription -> end (epoch s) of the latest window it was sent usage for: with the closed
    # and retired periods, what a contracts change may no longer alter (operators/contracts.py).
    rated_until: dict[str, int] = field(default_factory=dict)
    # subscription -> the adjustment-cycle boundary (epoch s) at which its late usage since the
    # last Settle is settled into adjustments: the first boundary after the watermark at its
    # first late contribution.
    settle: dict[str, int] = field(default_factory=dict)

    def __setstate__(self, state: dict[str, object]) -> None:
        # A snapshot of the builds before live contracts has no `rated_until`: resume with
        # none (the closed and retired periods still freeze what they cover). One from before
        # adjustment cycles has no `settle`: its raters adjusted at once, so nothing waits.
        state.setdefault("rated_until", {})
        state.setdefault("settle", {})
        self.__dict__.update(state)


class Ingestor:
    """Pure ingest logic for one input partition. The dedup store is a port."""

    def __init__(self, catalog: Catalog, config: IngestConfig, dedup: DedupStore,
                 source_name: str, partition: int, state: IngestState | None = None,
                 position_key: str = "line", terms_version: int | None = None) -> None:
        """`terms_version`: stream mode, where contracts change while it runs (`set_catalog`):
        every rater is sent its subscription's terms (a Terms op of this version) before the
        first op this ingestor sends it, and again after they change. None: file mode, where
        every step holds the same catalog."""
        self.catalog = catalog
        self.terms_version = terms_version
        self._sent: set[str] = set()  # subscriptions sent the terms of `terms_version`
        self.config = config
        self.dedup = dedup
        self.source_name = source_name
        self.partition = partition
        self.position_key = position_key
        self.state = state or IngestState()
        if self.state.bill_from is None:
            # The catalog's `billing_start`, or every subscription's start: never the usage
            # seen, so a month without events still bills its fixed fee (Catalog).
            self.state.bill_from = catalog.first_billed_month()
        self._window_s = int(config.window.total_seconds())
        self._month_cache: dict[tuple[int, int], tuple[str, int, int]] = {}
        # (plan, event type) -> the meters the plan charges, and how each one's period is
        # bounded (`_over_limit`; None when no period can reach its cap).
        self._routes: dict[tuple[str, str], tuple[tuple[Meter, ...], _Limits | None]] = {}
        # customer id -> the subscription its previous event fell in. A customer's events come
        # mostly in time order, so the next one nearly always falls in the same subscription, and
        # since subscriptions never overlap, "still active" settles it without the bisect.
        self._last_sub: dict[str, Subscription] = {}
        self._open_ops: dict[tuple[str, str, str, int], Usage] = {}
        # The batch's binary-mode messages (`process`): position -> headers, and the value of
        # each one already turned into its structured document (what its record keeps).
        self._binary: Mapping[int, Headers] = {}
        self._originals: dict[int, bytes] = {}
        # The batch's lines judged ahead (`process`), by index; None: none were.
        self._ahead: list[Verdict | None] | None = None
        # (subscription id, event type) of a verdict -> what `_judged_ahead` rebuilds from it.
        self._ahead_routes: dict[tuple[str, str], tuple[Subscription, Customer,
                                                        tuple[Meter, ...], _Limits | None]] = {}
        # Watermark (s) below which no period can close or retire; -1: unknown.
        self._next_close = -1
        self._cycle = int(config.adjustment_cycle.total_seconds())
        self._next_settle = min(self.state.settle.values(), default=MAX_TS)
        # A closed period retires once the watermark is this far past its end.
        self._retire_after = config.allowed_lateness + config.retention
        # Events dated before this are in a retired period (LATE_BEYOND_RETENTION).
        retired = self.state.retired_through
        self._retired_end: datetime | None = retired.end if retired else None
        # The period key ("YYYY-MM") of closed_through, compared with every accepted event's
        # period: kept as text rather than rebuilt from the Month per event (`_close` sets it).
        self._closed_key = self.state.closed_through.key if self.state.closed_through else None
        # Events dated before this are BEFORE_BILLING_START (the catalog's `billing_start`).
        start = catalog.billing_start
        self._billing_start: datetime | None = start.start if start else None

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

    def _exception(self, out: IngestOutput, position: int, raw: bytes, reason: Reason, error: str,
                   event: CloudEvent | None = None) -> None:
        out.stats.exceptions[reason] += 1
        headers: list[MessageHeader] | msgspec.UnsetType = msgspec.UNSET
        if self._binary:
            given = self._binary.get(position)
            if given is not None:  # the message as it came, not the document built from it
                raw = self._originals.get(position, raw)
                headers, error = _kept_headers(given, error)
        if len(raw) > MAX_LINE_BYTES:
            error = f"{error}; the line has {len(raw)} bytes, the first {RAW_KEEP_BYTES} are kept"
            raw = raw[:RAW_KEEP_BYTES]
        try:
            text: str | None = raw.decode("utf-8")
            b64 = None
        except UnicodeDecodeError:
            text, b64 = None, base64.b64encode(raw).decode("ascii")
        out.exceptions.append(ExceptionRecord(
            exception_id=ids.exception_id(self.source_name, self.partition, position),
            reason=reason,
            error=error,
            position={"source": self.source_name, "partition": self.partition,
                      self.position_key: position},
            raw=text,
            raw_base64=b64,
            event_id=event.id if event else None,
            event_source=event.source if event else None,
            subject=event.subject if event else None,
            headers=headers,
        ))

    # -- the batch ------------------------------------------------------------------------------

    def _new_output(self) -> IngestOutput:
        self._open_ops = {}
        return IngestOutput([], {}, IngestStats())

    def process(self, batch: Sequence[tuple[int, bytes]],
                retried: Collection[int] = (),
                binary: Mapping[int, Headers] | None = None,
                ahead: Sequence[Verdict] | None = None) -> IngestOutput:
        """`retried`: the positions in `batch` of events sent again from a dead letter; each is
        judged like any other, and where it landed is counted in `IngestStats.retried`.
        `binary`: the positions of Kafka messages in binary content mode, with their headers;
        each one's line is its value (module docstring).
        `ahead`: what `judge_ahead` found for `batch`'s lines on this ingestor's catalog (file
        mode runs it in another process); those lines are not decoded or classified again, and
        the outcome is the same as without it."""
        out = self._new_output()
        self._binary, self._originals = binary or {}, {}
        if ahead and not binary:
            size = len(batch)
            fast: list[Verdict | None] = [None] * size
            for verdict in ahead:
                if 0 <= verdict[0] < size:  # any other is no line of this batch: ignored
                    fast[verdict[0]] = verdict
            self._ahead = fast
        # Read once per batch: the horizon only has to be right to within a batch.
        now = self.config.clock()
        start, end = 0, len(batch)
        if retried:
            wanted = set(retried)
            for index, (position, _) in enumerate(batch):
                if position in wanted and index >= start:
                    while start < index:
                        start = self._part(out, batch, start, now, index)
                    before = _counts(out.stats)
                    start = self._part(out, batch, index, now, index + 1)
                    outcome = _landed(before, _counts(out.stats))
                    out.stats.retried[outcome] = out.stats.retried.get(outcome, 0) + 1
        while start < end:
            start = self._part(out, batch, start, now)
        self._binary, self._originals, self._ahead = {}, {}, None
        self._tally(out)
        self._send_terms(out)
        return out

    def _send_terms(self, out: IngestOutput) -> None:
        version = self.terms_version
        if version is None:
            return
        sent, subs = self._sent, self.catalog.subscriptions
        for sub_id, ops in out.ops.items():
            if sub_id not in sent and sub_id in subs:
                # Before the ops, so they are rated on these terms. Its watermark says nothing
                # (-1): the batch's watermark would make the rater see its first windows late.
                ops.insert(0, Terms(version, self.catalog.terms_of(sub_id), -1))
                sent.add(sub_id)

    def frozen(self) -> Frozen:
        """What a contracts change may no longer alter, as far as this partition knows."""
        state = self.state
        return Frozen(
            subscriptions={s: datetime.fromtimestamp(t, UTC)
                           for s, t in state.rated_until.items()},
            closed_end=state.closed_through.end if state.closed_through else None,
            retired_end=state.retired_through.end if state.retired_through else None)

    def set_catalog(self, catalog: Catalog, version: int, changed: Collection[str]
                    ) -> IngestOutput:
        """Rate against `catalog` from the next event on (stream mode: contracts published
        while it runs; the caller has validated it and refused what would alter rated usage).
        `changed`: the subscriptions whose terms changed or are new. Each is sent its terms
        again, and one that starts before the end of the last closed period is closed through
        it, so its closed months are invoiced (a customer published after usage was retried
        for it, say)."""
        out = self._new_output()
        state = self.state
        self.catalog = catalog
        self.terms_version = version
        self._routes = {}
        self._last_sub = {}
        self._ahead_routes = {}
        start = catalog.billing_start
        self._billing_start = start.start if start else None
        if state.closed_through is None:
            state.bill_from = catalog.first_billed_month()
            self._next_close = -1
        self._sent -= set(changed)
        closed = state.closed_through
        if closed is not None:
            wm = state.watermark if state.watermark is not None else -1
            for sub_id in sorted(changed):
                sub = catalog.subscriptions.get(sub_id)
                if sub is not None and sub.start < closed.end:
                    # From its own start (a month before the first one billed so far is
                    # still owed), unless billing_start excludes it.
                    first = start or Month.of(sub.start)
                    out.ops.setdefault(sub_id, []).append(Close(closed.key, first.key, wm))
        self._send_terms(out)
        return out

    def _part(self, out: IngestOutput, batch: Sequence[tuple[int, bytes]], start: int,
              now: datetime, stop: int | None = None) -> int:
        """Judge `batch` from `start` up to and including the first event that could retire a
        period (`_split_at`); return where the next part starts.

        Dedup is asked once per part, before its events are classified in input order. A
        retirement forgets identities (operators/dedup.py), so it must fall between two claims,
        never inside one: otherwise a copy claimed in the same call as the event that retired
        its first occurrence's period would be judged by how the input happened to be batched.
        Parts end only at such events, which come about once a month."""
        stats = out.stats
        source_name, partition = self.source_name, self.partition
        decoded: list[_Judged] = []  # events that reach dedup, in input order
        claims: list[tuple[str, Origin]] = []  # (identity, origin) of each decoded event
        expires: list[int] = []  # and the end of its period (operators/dedup.py)
        retired_end = self._retired_end
        billing_start = self._billing_start
        horizon = now + self.config.max_future
        split_at = self._split_at()
        binary = self._binary
        fast = self._ahead
        blank = 0
        stop = len(batch) if stop is None else stop
        index = start
        event: CloudEvent | None
        while index < stop:
            position, raw = batch[index]
            verdict = fast[index] if fast is not None else None
            index += 1
            if verdict is not None:
                # Decoded and classified in the other process: what is left is what needs the
                # clock or this partition's state, in the same order as below.
                event = None
                at = verdict[1]
            else:
                if binary and position in binary:
                    # Not blank even with no value: its headers are the event (or why it is
                    # none).
                    structured = self._structured(out, position, raw, binary[position])
                    if structured is None:
                        continue
                    raw = structured
                elif not raw or raw.isspace():  # `not raw.strip()`, without copying every line
                    blank += 1
                    continue
                try:
                    judged_event = judge(raw)
                except Exception as exc:  # the crash-safe boundary (module docstring)
                    self._internal(out, position, raw, "decoding", exc)
                    continue
                if type(judged_event) is Rejection:
                    self._exception(out, position, raw, judged_event.reason, judged_event.error,
                                    judged_event.event)
                    continue
                assert isinstance(judged_event, CloudEvent)
                event = judged_event
                at = event.time
            if at > horizon:
                # Neither the watermark nor the dedup store sees it: once it is due, the same
                # bytes replayed are judged like any other event.
                self._exception(out, position, raw, FUTURE_EVENT,
                                f"`time` {at.isoformat()} is more than "
                                f"{_duration(self.config.max_future)} ahead of the processing "
                                f"clock ({now.isoformat()}); replay it once it is due",
                                event or self._event(raw))
                continue
            if retired_end is not None and at < retired_end:
                # Refused before dedup is asked: its first copy's record may be gone.
                self._exception(out, position, raw, LATE_BEYOND_RETENTION,
                                self._beyond_retention(at), event or self._event(raw))
                continue
            if billing_start is not None and at < billing_start:
                self._exception(out, position, raw, BEFORE_BILLING_START,
                                f"`time` {at.isoformat()} is before the catalog's billing_start "
                                f"({Month.of(billing_start).key}): meterwax does not bill the "
                                "months before it, so the event is not rated",
                                event or self._event(raw))
                continue
            month = self._month(at)
            period_end = month[2]
            try:
                if verdict is None:
                    assert event is not None
                    judged = self._judge(out, position, raw, event, month)
                else:
                    judged = self._judged_ahead(position, raw, verdict, month)
            except Exception as exc:  # the crash-safe boundary (module docstring)
                self._internal(out, position, raw, "classifying", exc, event or self._event(raw))
                judged = None
            if judged is not None:
                # Only an event that would be rated claims its identity (module docstring).
                decoded.append(judged)
                if event is not None:
                    identity = ids.dedup_identity(event.source, event.id)
                else:
                    assert verdict is not None  # judged ahead: the helper sent its identity
                    identity = verdict[4]
                claims.append((identity, (source_name, partition, position)))
                expires.append(period_end)
            if split_at is not None and at > split_at:
                break
        stats.blank += blank
        stats.read += index - start - blank

        replays = self.dedup.replays
        firsts = self.dedup.claim(claims, expires) if claims else []
        stats.replays += self.dedup.replays - replays
        admit = self._admit
        duplicates = 0
        for judged, first in zip(decoded, firsts, strict=True):
            if first:
                rated, late = stats.rated, stats.late_after_close
                try:
                    admit(out, judged)
                except Exception as exc:  # the crash-safe boundary
                    stats.rated, stats.late_after_close = rated, late
                    self._internal(out, judged[0], judged[1], "classifying", exc,
                                   judged[2] or self._event(judged[1]))
            else:
                duplicates += 1
        stats.duplicates += duplicates
        return index

    def _structured(self, out: IngestOutput, position: int, value: bytes, headers: Headers
                    ) -> bytes | None:
        """The structured document of a binary-mode message, to be judged like a structured
        line; or None, its rejection recorded, when the binding refuses the message."""
        self._originals[position] = value
        try:
            converted = from_kafka_binary(headers, value)
        except Exception as exc:  # the crash-safe boundary (module docstring)
            self._internal(out, position, value, "decoding", exc)
            return None
        if isinstance(converted, Rejection):
            self._exception(out, position, value, converted.reason, converted.error)
            return None
        return converted

    def _split_at(self) -> datetime | None:
        """The event time past which accepting an event may retire a period (None: no period
        is known yet that could)."""
        state = self.state
        first = state.retired_through.next() if state.retired_through else state.bill_from
        return None if first is None else first.end + self._retire_after

    def _beyond_retention(self, at: datetime) -> str:
        # Only what is fixed at this input position: the watermark moves within a part, and the
        # same input in other batches must give the same record.
        retired = self.state.retired_through
        assert retired is not None
        return (f"`time` {at.isoformat()} is in period {Month.of(at).key}, and every period "
                f"through {retired.key} is retired: the watermark passed its end plus the "
                f"allowed lateness ({_duration(self.config.allowed_lateness)}) and the "
                f"retention horizon ({_duration(self.config.retention)}). A copy this late "
                "can no longer be told from a replayed duplicate, so it is not rated; if it is "
                "genuine usage, bill it by hand")

    @staticmethod
    def _event(raw: bytes) -> CloudEvent | None:
        """The event of a line judged ahead, for the record that names it (a rare path): the
        line judged again, as `_part` would have."""
        event = judge(raw)
        return event if type(event) is CloudEvent else None

    def _internal(self, out: IngestOutput, position: int, raw: bytes, step: str,
                  exc: BaseException, event: CloudEvent | None = None) -> None:
        """An unforeseen failure judging one event: that event becomes an INTERNAL_ERROR record
        (counted, so an alert fires) and the rest of the stream goes on."""
        self._exception(out, position, raw, INTERNAL_ERROR,
                        f"internal error while {step} the event: {type(exc).__name__}: "
                        f"{_clip(str(exc))}", event)

    def _tally(self, out: IngestOutput) -> None:
        """The ingested side of reconciliation, from the same pre-aggregates the raters get."""
        ingested = out.stats.ingested
        contributions = out.stats.contributions
        rated_until = self.state.rated_until
        w = self._window_s
        for sub_id, ops in out.ops.items():
            for op in ops:
                if type(op) is not Usage:
                    continue
                end = op.window_start - op.window_start % w + w
                if end > rated_until.get(sub_id, 0):
                    rated_until[sub_id] = end
                meter = op.meter
                key = (sub_id, op.period, meter)
                mine = ingested.get(key)
                if mine is None:
                    ingested[key] = op.partial.copy()
                else:
                    mine.merge(op.partial)
                contributions[meter] = contributions.get(meter, 0) + op.events

    def _route(self, plan_id: str, event_type: str
               ) -> tuple[tuple[Meter, ...], _Limits | None]:
        """The meters of `event_type` that `plan_id` charges and their limits, cached: asked
        once per event."""
        key = (plan_id, event_type)
        hit = self._routes.get(key)
        if hit is None:
            plan = self.catalog.plans[plan_id]
            meters = tuple(m for m in self.catalog.meters_by_event_type.get(event_type, ())
                           if plan.charge_for(m.id) is not None)
            limits = tuple(self._limit(plan_id, m) for m in meters)
            bounded = any(kind != _UNBOUNDED for _, kind in limits)
            hit = self._routes[key] = (meters, limits if bounded else None)
        return hit

    def _subscription_at(self, customer: Customer, at: datetime) -> Subscription | None:
        """`Catalog.subscription_at`, asking first whether the customer's previous subscription
        is still the active one (see `_last_sub`)."""
        sub = self._last_sub.get(customer.id)
        if sub is not None and sub.active_at(at):
            return sub
        sub = self.catalog.subscription_at(customer, at)
        if sub is not None:
            self._last_sub[customer.id] = sub
        return sub

    def _judge(self, out: IngestOutput, position: int, raw: bytes, event: CloudEvent,
               month: tuple[str, int, int]) -> _Judged | None:
        """What an event is, from the event and the contracts alone: unmetered, UNKNOWN_SUBJECT,
        NO_ACTIVE_SUBSCRIPTION, INVALID_VALUE (against every meter of its type, whichever the
        plan prices: validity is a property of the telemetry and the meter definitions, so a
        contract change must not change it), or unmetered again when the plan prices none of
        its meters. Rejected or unmetered, it is recorded here and claims nothing, so a copy is
        judged afresh (after the master data is fixed, say); otherwise the event to admit."""
        catalog = self.catalog
        event_type = event.type
        type_meters = catalog.meters_by_event_type.get(event_type)
        if type_meters is None:
            out.stats.unmetered += 1
            return None
        customer = catalog.customer_by_subject.get(event.subject)
        if customer is None:
            self._exception(out, position, raw, UNKNOWN_SUBJECT,
                            f"subject {event.subject!r} belongs to no customer in the catalog",
                            event)
            return None
        at = event.time  # UTC: operators/envelope.judge converted it
        sub = self._subscription_at(customer, at)
        if sub is None:
            self._exception(out, position, raw, NO_ACTIVE_SUBSCRIPTION,
                            f"customer {customer.id!r} has no subscription active at "
                            f"{at.isoformat()}", event)
            return None
        values: list[tuple[Meter, Decimal | str]] = []
        data = event.data
        for meter in type_meters:
            aggregation = meter.aggregation
            try:
                if aggregation == "count":
                    value: Decimal | str = _ONE
                elif aggregation == "unique_count":
                    value = distinct_key(data, meter.value_path)
                else:
                    value = quantity(data, meter.value_path)
            except InvalidValue as exc:
                self._exception(out, position, raw, INVALID_VALUE,
                                f"meter {meter.id!r}: {exc}", event)
                return None
            values.append((meter, value))
        route = self._routes.get((sub.plan_id, event_type))
        if route is None:
            route = self._route(sub.plan_id, event_type)
        meters, limits = route
        if not meters:
            stats = out.stats
            # A metered type, but the subscription's plan prices none of its meters.
            stats.unmetered += 1
            stats.unmetered_not_in_plan += 1
            return None
        if len(meters) != len(values):
            values = [(m, v) for m, v in values if m in meters]
        return (position, raw, event, customer, sub, values, limits, month, at)

    def _judged_ahead(self, position: int, raw: bytes, verdict: Verdict,
                      month: tuple[str, int, int]) -> _Judged:
        """What `_judge` returns for a line `judge_ahead` judged, rebuilt from its verdict."""
        _, at, sub_id, event_type, _, given = verdict
        key = (sub_id, event_type)
        hit = self._ahead_routes.get(key)
        if hit is None:
            sub = self.catalog.subscriptions[sub_id]
            meters, limits = self._route(sub.plan_id, event_type)
            hit = self._ahead_routes[key] = (sub, self.catalog.customers[sub.customer_id],
                                             meters, limits)
        sub, customer, meters, limits = hit
        if len(meters) != len(given):
            msg = (f"judged ahead with {len(given)} meter values, but the plan routes "
                   f"{len(meters)}: the other process judged on another catalog")
            raise ValueError(msg)
        values: list[tuple[Meter, Decimal | str]]
        if len(given) == 1:  # most event types feed one meter
            kind, text = given[0]
            values = [(meters[0], _ONE if kind == 0 else Decimal(text) if kind == 1 else text)]
        else:
            values = [(meter, _ONE if kind == 0 else Decimal(text) if kind == 1 else text)
                      for meter, (kind, text) in zip(meters, given, strict=True)]
        return (position, raw, None, customer, sub, values, limits, month, at)

    def judge_ahead(self, lines: Sequence[bytes]) -> list[Verdict]:
        """What `process` decides for each of `lines` from the line and the catalog alone: the
        lines that reach dedup unless the clock or this partition's state (the future horizon,
        retention, the billing start, dedup, the period limit) says otherwise, as `Verdict`s.
        File mode runs this in another process on the same catalog, a batch ahead of
        `process(ahead=...)`, which then neither decodes nor classifies those lines again;
        every other line (blank, rejected, unmetered, or failing here in any way) is not in the
        answer, and `process` judges it itself, so the outcome is the same as without it."""
        scratch = IngestOutput([], {}, IngestStats())  # the rejections here are not kept
        verdicts: list[Verdict] = []
        append = verdicts.append
        for index, raw in enumerate(lines):
            if not raw or raw.isspace():
                continue
            try:
                event = judge(raw)
                if type(event) is not CloudEvent:
                    continue
                at = event.time
                judged = self._judge(scratch, index, raw, event, self._month(at))
            except Exception:  # `process` judges the line again and records why
                continue
            if judged is None:
                if len(scratch.exceptions) > 1000:
                    scratch.exceptions.clear()
                continue
            append((index, at, judged[4].id, event.type, ids.dedup_identity(event.source, event.id),
                    [(0, "") if value is _ONE else (2, value) if type(value) is str
                     else (1, str(value)) for _, value in judged[5]]))
        return verdicts

    def _admit(self, out: IngestOutput, judged: _Judged) -> None:
        """A first occurrence: rated, unless it would take its period past what the store
        holds (PERIOD_LIMIT_EXCEEDED). That limit depends on the usage accepted before the event
        in input order, which only exists once dedup has answered, so it is the one rejection
        judged after dedup, and its identity stays claimed: a copy is a duplicate. Only a
        hostile or broken producer reaches 10^20; a retry path for it is not worth a second
        round trip to the dedup store per batch."""
        position, raw, event, customer, sub, values, limits, month, at = judged
        bounds: list[tuple[tuple[str, str, str], Decimal]] = []
        if limits is not None:
            over = self._over_limit(sub, month[0], values, limits, bounds)
            if over is not None:
                self._exception(out, position, raw, PERIOD_LIMIT_EXCEEDED, over,
                                event or self._event(raw))
                return
        self._accept(out, sub, at, position, values, month)
        if bounds:
            totals = self.state.totals
            for key, bound in bounds:
                totals[key] = bound
        if self.config.ledger:
            event = event or self._event(raw)
            assert event is not None
            # Positional, in AcceptedEvent's field order (schemas/records.py says why).
            out.accepted.append(AcceptedEvent(
                event.source, event.id, event.type, event.subject, at, customer.id, sub.id,
                month[0], self.source_name, self.partition, position,
                raw.decode("utf-8", errors="replace")))

    def _over_limit(self, sub: Subscription, period: str,
                    values: list[tuple[Meter, Decimal | str]], limits: _Limits,
                    bounds: list[tuple[tuple[str, str, str], Decimal]]) -> str | None:
        """Why accepting these values would take the period past what its charge can rate and
        store (operators/pricers.quantity_cap), or None, with the period's new bounds put in
        `bounds` for the caller to record once the event is accepted.

        `sum` periods are bounded by the running sum of accepted values, `count` and
        `unique_count` by the number of accepted events, `max` and `latest` by the value
        itself. Counting is skipped where the cap is beyond any event count a period can have.
        The bounds are per input partition: with several partitions the rater checks again.
        """
        totals = self.state.totals
        for (meter, value), (cap, kind) in zip(values, limits, strict=True):
            if kind == _UNBOUNDED:
                continue
            if kind == _BY_VALUE:
                assert isinstance(value, Decimal)
                bound = value
            else:
                key = (sub.id, period, meter.id)
                bound = totals.get(key, ZERO) + (value if kind == _BY_SUM else _ONE)  # type: ignore[operator]
                bounds.append((key, bound))
            if bound >= cap:
                return (f"meter {meter.id!r}: accepting this event would take period {period}'s "
                        f"quantity to {_clip(str(bound))}, beyond what its charge can rate and "
                        f"store exactly (quantity below {_clip(str(cap))}, amount below 10^20)")
        return None

    def _limit(self, plan_id: str, meter: Meter) -> tuple[Decimal, int]:
        charge = self.catalog.plans[plan_id].charge_for(meter.id)
        assert charge is not None  # routed meters are charged
        cap = quantity_cap(charge)
        aggregation = meter.aggregation
        if aggregation in ("max", "latest"):
            kind = _BY_VALUE
        elif aggregation == "sum":
            kind = _BY_SUM
        else:
            kind = _BY_COUNT if cap < _MAX_EVENTS else _UNBOUNDED
        return cap, kind

    def _accept(self, out: IngestOutput, sub: Subscription, at: datetime, seq: int,
                values: list[tuple[Meter, Decimal | str]], month: tuple[str, int, int]
                ) -> None:
        # The contributions are added first and the state changed only after them, so an
        # aggregate that raises (the crash-safe boundary in `process` catches it) leaves the
        # watermark, the first billed month and the counts as if the event had not been seen.
        state = self.state
        stats = out.stats
        ts = int(at.timestamp())
        period, p_start, p_end = month
        closed = self._closed_key
        late = closed is not None and period <= closed
        wm = state.watermark
        advanced = wm is None or ts > wm
        if advanced:
            wm = ts
        assert wm is not None  # it is ts, or an earlier event's

        w = self._window_s
        aligned = ts - ts % w
        window_start = max(aligned, p_start)
        window_end = min(aligned + w, p_end)
        sub_id = sub.id
        ops = out.ops.get(sub_id)
        new_ops = ops is None
        if ops is None:
            ops = []
        open_ops = self._open_ops
        # Pre-aggregate: a contribution joins this chunk's op for the same window while the
        # watermark has not reached the window's end. The rater cannot close that window in
        # between, so the merged op rates exactly as the separate contributions would.
        window_open = window_end > wm
        if len(values) == 1:
            meter, value = values[0]
            key = (sub_id, period, meter.id, window_start)
            usage = open_ops.get(key) if window_open else None
            if usage is None:
                agg = new_aggregate(meter.aggregation)
                agg.add(value, at, seq)
                usage = Usage(period, meter.id, window_start, agg, 1, wm)
                ops.append(usage)
                open_ops[key] = usage
            else:
                usage.partial.add(value, at, seq)  # one add: it changes nothing if it raises
                usage.events += 1
        else:
            # Several meters: every contribution is built before any joins an op, so one that
            # raises leaves none of the others behind.
            built = []
            for meter, value in values:
                agg = new_aggregate(meter.aggregation)
                agg.add(value, at, seq)
                built.append((meter, agg))
            for meter, agg in built:
                key = (sub_id, period, meter.id, window_start)
                usage = open_ops.get(key) if window_open else None
                if usage is None:
                    usage = Usage(period, meter.id, window_start, agg, 1, wm)
                    ops.append(usage)
                    open_ops[key] = usage
                else:
                    usage.partial.merge(agg)
                    usage.events += 1
        if new_ops:
            out.ops[sub_id] = ops
        stats.rated += 1
        if late:
            stats.late_after_close += 1
            if sub_id not in state.settle:
                due = (wm // self._cycle + 1) * self._cycle
                state.settle[sub_id] = due
                if due < self._next_settle:
                    self._next_settle = due
        if advanced:
            state.watermark = ts
        if window_open:
            pending = state.pending
            if pending.get(sub_id, 0) < window_end:
                pending[sub_id] = window_end
                heapq.heappush(state.heap, (window_end, sub_id))
        # Most events move the watermark; only call `_advance` when that can tick a window or
        # close a period (its own two early exits, tested here to save a call per event).
        if advanced and ((state.heap and state.heap[0][0] <= ts) or ts > self._next_close
                         or ts >= self._next_settle):
            self._advance(out, ts)

    def _advance(self, out: IngestOutput, wm: int) -> None:
        """The watermark moved: tick subscriptions whose open windows have ended, and close the
        periods whose end plus allowed lateness it has passed."""
        state = self.state
        heap = state.heap
        while heap and heap[0][0] <= wm:
            end, sub_id = heapq.heappop(heap)
            if state.pending.get(sub_id) == end:
                del state.pending[sub_id]
                ops = out.ops.get(sub_id)
                if ops is None:
                    ops = out.ops[sub_id] = []
                ops.append(Tick(wm))
        if wm >= self._next_settle:
            self._settle(out, wm)
        if wm <= self._next_close:
            return
        first = state.closed_through.next() if state.closed_through else state.bill_from
        if first is None:
            return
        lateness = int(self.config.allowed_lateness.total_seconds())
        through: Month | None = None
        month = first
        while int(month.end.timestamp()) + lateness < wm:
            through = month
            month = month.next()
        next_close = int(month.end.timestamp()) + lateness
        if through is not None:
            self._close(out, through, wm)
        self._next_close = min(next_close, self._advance_retirement(out, wm, lateness))

    def _settle(self, out: IngestOutput, wm: int, every: bool = False) -> None:
        """Tell the subscriptions whose adjustment cycle ended (all of them with `every`, at the
        end of a bounded input) to settle their late usage into adjustments."""
        settle = self.state.settle
        for sub_id in sorted(s for s, due in settle.items() if every or due <= wm):
            del settle[sub_id]
            out.ops.setdefault(sub_id, []).append(Settle(wm))
        self._next_settle = min(settle.values(), default=MAX_TS)

    def _advance_retirement(self, out: IngestOutput, wm: int, lateness: int) -> int:
        """Retire the closed periods whose horizon the watermark passed; the watermark at which
        the next one retires (or a large number while none is closed)."""
        state = self.state
        closed = state.closed_through
        if closed is None:
            return MAX_TS
        first = state.retired_through.next() if state.retired_through else state.bill_from
        assert first is not None  # something closed, so something was accepted
        horizon = lateness + int(self.config.retention.total_seconds())
        through: Month | None = None
        month = first
        while month <= closed and int(month.end.timestamp()) + horizon < wm:
            through = month
            month = month.next()
        if through is not None:
            self._retire(out, through, wm)
        # A period retires only once closed; its close is then what `_advance` waits for.
        return int(month.end.timestamp()) + horizon if month <= closed else MAX_TS

    def _retire(self, out: IngestOutput, through: Month, wm: int) -> None:
        """Forget every period through `through` (module docstring): its bounds here, its
        identities in dedup, and, by a Retire op, its state in every rater that may hold it."""
        state = self.state
        previous = state.retired_through
        state.retired_through = through
        self._retired_end = through.end
        key = through.key
        if state.totals:
            state.totals = {k: v for k, v in state.totals.items() if k[1] > key}
        # Everything before the retired end is frozen anyway (Frozen.retired_end).
        end_ts = int(through.end.timestamp())
        state.rated_until = {s: t for s, t in state.rated_until.items() if t > end_ts}
        self.dedup.expire(int(through.end.timestamp()))
        for sub in self.catalog.subscriptions.values():
            if sub.start >= through.end:
                continue
            if previous is not None and sub.end is not None and sub.end <= previous.end:
                continue  # everything it had was retired by an earlier retirement
            out.ops.setdefault(sub.id, []).append(Retire(key, wm))

    def _close(self, out: IngestOutput, through: Month, wm: int) -> None:
        state = self.state
        start = state.bill_from or through
        previous = state.closed_through
        state.closed_through = through
        self._closed_key = through.key
        for sub in self.catalog.subscriptions.values():
            if sub.start >= through.end:
                continue
            if sub.end is not None and sub.end <= start.start:
                continue
            if previous is not None and sub.end is not None and sub.end <= previous.end:
                continue  # everything it had was closed by an earlier close
            out.ops.setdefault(sub.id, []).append(Close(through.key, start.key, wm))

    def finish(self) -> IngestOutput:
        """End of a finite input: close every period up to the watermark's own, and tell every
        rater not to wait for this partition's closes any more (it has ended: the other
        partitions may still close later months)."""
        out = self._new_output()
        wm = self.state.watermark
        if wm is not None:
            last = Month.of(datetime.fromtimestamp(wm, UTC))
            if self.state.closed_through is None or self.state.closed_through < last:
                self._close(out, last, wm)
            self._settle(out, wm, every=True)
        self._announce_idle(out)
        self._send_terms(out)
        return out

    def idle(self) -> IngestOutput:
        """This partition has read nothing for the idle timeout: the raters close periods
        without waiting for it until it sends anything again (operators/protocol.py)."""
        out = self._new_output()
        self._announce_idle(out)
        self._send_terms(out)
        return out

    def _announce_idle(self, out: IngestOutput) -> None:
        # Every subscription, not only those this partition sent usage: any rater may be
        # waiting for this partition's Close.
        wm = self.state.watermark
        idle = Idle(wm if wm is not None else -1)
        for sub_id in self.catalog.subscriptions:
            out.ops.setdefault(sub_id, []).append(idle)


def _counts(s: IngestStats) -> tuple[int, ...]:
    return (s.rated, s.duplicates, s.unmetered, s.blank, *s.exceptions.values())


_COUNTED = ("rated", "duplicate", "unmetered", "blank", *REASONS)


def _landed(before: tuple[int, ...], after: tuple[int, ...]) -> str:
    """The bucket one event landed in: the one counter that moved while it was judged."""
    moved = [name for name, b, a in zip(_COUNTED, before, after, strict=True) if a != b]
    return moved[0] if len(moved) == 1 else "unknown"  # never raise from here (the boundary)


def _kept_headers(headers: Headers, error: str) -> tuple[list[MessageHeader], str]:
    """A rejected binary-mode message's headers for its record, and its error: all of them, as
    they came, unless together they pass the line limit (only a broker configured for messages
    above 1 MiB lets that through); then the first ones within RAW_KEEP_BYTES, as for `raw`."""
    kept: list[MessageHeader] = []
    total = sum(len(name) + len(value or b"") for name, value in headers)
    size = 0
    for name, value in headers:
        size += len(name) + len(value or b"")
        if total > MAX_LINE_BYTES and size > RAW_KEEP_BYTES:
            error = (f"{error}; its headers have {total} bytes, the first {len(kept)} of "
                     f"{len(headers)} headers are kept")
            break
        if value is None:
            kept.append(MessageHeader(name))
            continue
        try:
            kept.append(MessageHeader(name, value=value.decode("utf-8")))
        except UnicodeDecodeError:
            kept.append(MessageHeader(name, value_base64=base64.b64encode(value).decode("ascii")))
    return kept, error


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds >= 2 * 86400 and seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
