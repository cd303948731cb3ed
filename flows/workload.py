"""A realistic, deterministic, dirty usage workload for the example catalog (or any catalog).

`generate(catalog, size, seed)` yields about `size` JSON lines (CloudEvents 1.0, structured mode,
no trailing newline) covering two billing months, 2026-10 and 2026-11:

* clean usage for every customer subject, only while that customer has an active subscription,
  for the event types its plan prices, with a daily and weekly rhythm and per-customer volumes
  (acme biggest), in rough time order (each event is jittered inside its time slot);
* injected, in small proportions, everything a real feed does wrong: exact re-sends, re-sends with
  another payload, events a few minutes out of order, October events arriving in November (after
  October closed: they become adjustments), malformed lines (truncated JSON, not JSON, invalid
  UTF-8), invalid envelopes, unknown subjects, usage outside any subscription, invalid meter
  values, unmetered event types, metered types the customer's plan does not price, and a burst on
  both sides of every mid-month plan change.

Everything comes from seeded `random.Random` instances and the catalog: no wall clock, so a seed
gives the same bytes on every run and platform. `Composition` (from `compose`, or
`Workload.composition`) says how many lines of each kind the stream holds, exactly, and which
pipeline bucket each lands in (`expected_buckets`), so tests can check the pipeline against it.

Generation streams in chunks of at most one hour of event time; memory stays constant apart from
the re-sends waiting for their slot (hours of duplicates, a few hundred lines at most).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import orjson

from operators.catalog import Catalog, Customer, Meter, Subscription
from schemas.records import REASONS

# --------------------------------------------------------------------------------------------
# The time frame: two calendar months of event time.

START = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp())
NOV = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())
END = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp())
HOUR = 3600
DAY = 86400

# Late October events are emitted in this stretch of November: well after October's close, which
# happens once the watermark passes 2026-11-01T01:00Z (period end + the default 1 h lateness).
LATE_EMIT = (NOV + DAY, NOV + 25 * DAY)

# Injected kinds and their share of `size`. Below MIN_SIZE_ALL_KINDS a kind gets round(rate*size)
# lines (possibly none); from it on, at least one each (plan-change: one per side per boundary).
RATES: dict[str, float] = {
    "duplicate_exact": 0.010,
    "duplicate_conflict": 0.002,
    "out_of_order": 0.010,
    "late": 0.003,
    "malformed_truncated": 0.0010,
    "malformed_not_json": 0.0010,
    "malformed_invalid_utf8": 0.0006,
    "envelope_missing_subject": 0.0004,
    "envelope_naive_time": 0.0004,
    "envelope_bad_specversion": 0.0004,
    "envelope_data_not_object": 0.0004,
    "unknown_subject": 0.0010,
    "no_active_subscription": 0.0010,
    "invalid_value": 0.0020,
    "unmetered_type": 0.0050,
    "not_in_plan": 0.0010,
    "plan_change": 0.0005,
}
MIN_SIZE_ALL_KINDS = 1000
PLAN_CHANGE_MAX = 2000

# Relative volume per customer (unknown customers get DEFAULT_CUSTOMER_WEIGHT) and per event type.
CUSTOMER_WEIGHTS = {"acme": 40.0, "globex": 12.0, "umbrella": 10.0, "tyrell": 8.0, "hooli": 6.0,
                    "initech": 4.0}
DEFAULT_CUSTOMER_WEIGHT = 5.0
TYPE_WEIGHTS = {"api.request": 70.0, "llm.completion": 12.0, "user.active": 8.0,
                "payment.captured": 4.0, "storage.snapshot": 1.5, "seats.set": 0.5}
DEFAULT_TYPE_WEIGHT = 3.0
SERVICES = {"api.request": "api-gateway", "llm.completion": "llm-proxy",
            "storage.snapshot": "storage-metrics", "user.active": "auth",
            "seats.set": "admin-console", "payment.captured": "payments"}
# Producers in Japan stamp local time with an offset; some producers send milliseconds.
TZ_OFFSETS = {"umbrella": 9 * HOUR}
MS_TYPES = {"llm.completion", "payment.captured"}
UNMETERED_TYPES = ("page.view", "session.start", "invoice.viewed", "search.query")
NOT_JSON_LINES = (
    b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
    b"GET /healthz HTTP/1.1 200 2ms",
    b"acme-prod,api.request,2026-10-03T10:00:00Z,1",
    b"{'specversion': '1.0', 'id': 'py-repr', 'type': 'api.request'}",
    b"Traceback (most recent call last): ConnectionResetError: [Errno 104]",
    b"<<<<<<< HEAD",
    b"undefined",
    b"{specversion:1.0,type:api.request}",
)

VARIANTS = 128  # precomputed payloads per (template) for the high-volume types


@dataclass
class Composition:
    """How many lines of each kind a workload holds (exact, not estimated)."""

    size: int = 0
    total: int = 0
    normal: int = 0
    duplicate_exact: int = 0
    duplicate_conflict: int = 0
    out_of_order: int = 0
    late: int = 0
    malformed_truncated: int = 0
    malformed_not_json: int = 0
    malformed_invalid_utf8: int = 0
    envelope_missing_subject: int = 0
    envelope_naive_time: int = 0
    envelope_bad_specversion: int = 0
    envelope_data_not_object: int = 0
    unknown_subject: int = 0
    no_active_subscription: int = 0
    invalid_value: int = 0
    unmetered_type: int = 0
    not_in_plan: int = 0
    plan_change: int = 0
    # Subscription boundaries inside the two months where one plan ends as the next begins.
    plan_change_boundaries: list[str] = field(default_factory=list)

    KINDS = tuple(RATES)

    @property
    def duplicates(self) -> int:
        return self.duplicate_exact + self.duplicate_conflict

    @property
    def malformed(self) -> int:
        return self.malformed_truncated + self.malformed_not_json + self.malformed_invalid_utf8

    @property
    def invalid_envelope(self) -> int:
        return (self.envelope_missing_subject + self.envelope_naive_time
                + self.envelope_bad_specversion + self.envelope_data_not_object)

    @property
    def injected(self) -> int:
        return sum(getattr(self, k) for k in self.KINDS)

    def kinds(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.KINDS}

    def expected_buckets(self) -> dict[str, Any]:
        """Where each line should land in the ingest buckets (see operators/ingest.py)."""
        return {
            "read": self.total,
            "rated": self.normal + self.out_of_order + self.late + self.plan_change,
            "duplicates": self.duplicates,
            "unmetered": self.unmetered_type + self.not_in_plan,
            "unmetered_not_in_plan": self.not_in_plan,
            "late_after_close": self.late,
            "exceptions": dict.fromkeys(REASONS, 0) | {
                "INVALID_JSON": self.malformed,
                "INVALID_EVENT": self.invalid_envelope,
                "UNKNOWN_SUBJECT": self.unknown_subject,
                "NO_ACTIVE_SUBSCRIPTION": self.no_active_subscription,
                "INVALID_VALUE": self.invalid_value,
            },
        }

    def summary(self) -> str:
        return (
            f"{self.total} lines: {self.normal} clean usage; injected: "
            f"{self.duplicates} duplicates ({self.duplicate_exact} exact, "
            f"{self.duplicate_conflict} with another payload), "
            f"{self.out_of_order} out of order, {self.late} late (after October closed), "
            f"{self.malformed} malformed ({self.malformed_truncated} truncated, "
            f"{self.malformed_not_json} not JSON, {self.malformed_invalid_utf8} invalid UTF-8), "
            f"{self.invalid_envelope} invalid envelopes, {self.unknown_subject} unknown subject, "
            f"{self.no_active_subscription} outside any subscription, "
            f"{self.invalid_value} invalid values, {self.unmetered_type} unmetered types, "
            f"{self.not_in_plan} not in the plan, {self.plan_change} at plan changes"
        )

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(duplicates=self.duplicates, malformed=self.malformed,
                   invalid_envelope=self.invalid_envelope, injected=self.injected)
        return out


# --------------------------------------------------------------------------------------------
# Time formatting from tables: an event's time is built from a day string and a second-of-day
# string, never through datetime.

_DAY0 = START - 400 * DAY
_DAYS: list[str] = []
_SOD: list[str] = []
_MS: list[str] = []


def _tables() -> None:
    if _SOD:
        return
    _SOD.extend(f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60)
                for s in range(60))
    _MS.extend(f".{i:03d}" for i in range(1000))
    _DAYS.extend(datetime.fromtimestamp(_DAY0 + i * DAY, UTC).strftime("%Y-%m-%dT")
                 for i in range(800))


def _fmt_time(t: int, offset: int = 0, ms: int = -1, zone: bool = True) -> str:
    """RFC 3339 for epoch second `t`, written in local time at `offset` seconds east of UTC
    (without the zone suffix when `zone` is false)."""
    local = t + offset
    d, s = divmod(local - _DAY0, DAY)
    if 0 <= d < len(_DAYS):
        text = _DAYS[d] + _SOD[s]
    else:
        text = datetime.fromtimestamp(local, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if ms >= 0:
        text += _MS[ms]
    return text + _offset_suffix(offset) if zone else text


def _offset_suffix(offset: int) -> str:
    if offset == 0:
        return "Z"
    sign = "+" if offset > 0 else "-"
    h, m = divmod(abs(offset) // 60, 60)
    return f"{sign}{h:02d}:{m:02d}"


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


# --------------------------------------------------------------------------------------------
# Templates: one per (customer subject, event type), pre-rendered around the id, time and data.


@dataclass(slots=True)
class Template:
    index: int
    customer: Customer
    subject: str
    event_type: str
    meter: Meter | None
    weight: float
    head: str  # up to and including the opening quote of the id
    id_prefix: str
    mid: str  # from the closing quote of the id to the opening quote of the time
    offset: int
    suffix: str  # the time's zone suffix and the text up to and including `"data":`
    ms: bool
    variants: list[str]  # pre-rendered payloads; empty for payloads computed per event
    source: str


def _render_parts(subject: str, event_type: str, source: str, ctype: bool, offset: int
                  ) -> tuple[str, str, str]:
    head = '{"specversion":"1.0","id":"'
    mid = (f'","source":{_dumps(source)},"type":{_dumps(event_type)},'
           f'"subject":{_dumps(subject)},"time":"')
    tail = '",' + ('"datacontenttype":"application/json",' if ctype else "") + '"data":'
    return head, mid, _offset_suffix(offset) + tail


class _Model:
    """What the catalog implies: event templates, segments of time with a fixed set of active
    subscriptions, plan-change boundaries, and gaps without any subscription."""

    def __init__(self, catalog: Catalog, seed: int) -> None:
        self.catalog = catalog
        self.seed = seed
        rng = random.Random(f"{seed}:templates")
        self.templates: list[Template] = []
        for cust in catalog.customers.values():
            cw = CUSTOMER_WEIGHTS.get(cust.id, DEFAULT_CUSTOMER_WEIGHT)
            subjects = cust.subjects
            for si, subject in enumerate(subjects):
                share = 1.0 if len(subjects) == 1 else (
                    0.75 if si == 0 else 0.25 / (len(subjects) - 1))
                for event_type, meters in sorted(catalog.meters_by_event_type.items()):
                    tw = TYPE_WEIGHTS.get(event_type, DEFAULT_TYPE_WEIGHT)
                    idx = len(self.templates)
                    source = f"//{cust.id}.example/{SERVICES.get(event_type, 'app')}/{subject}"
                    offset = TZ_OFFSETS.get(cust.id, 0)
                    head, mid, suffix = _render_parts(subject, event_type, source,
                                                      ctype=(idx % 3 == 0), offset=offset)
                    tmpl = Template(
                        index=idx, customer=cust, subject=subject, event_type=event_type,
                        meter=meters[0], weight=cw * share * tw, head=head,
                        id_prefix=f"{rng.getrandbits(32):08x}-", mid=mid, offset=offset,
                        suffix=suffix, ms=event_type in MS_TYPES, variants=[], source=source)
                    tmpl.variants = self._variants(tmpl, rng)
                    self.templates.append(tmpl)

        # Segments: intervals of [START, END) in which the set of active subscriptions is fixed.
        cuts = {START, END}
        for sub in catalog.subscriptions.values():
            for at in (sub.start, sub.end):
                if at is not None and START < at.timestamp() < END:
                    cuts.add(int(at.timestamp()))
        self.cuts = sorted(cuts)
        self.segments: list[_Segment] = []
        for lo, hi in itertools.pairwise(self.cuts):
            self.segments.append(_Segment(self, lo, hi))
        self.seg_starts = [s.lo for s in self.segments]

        # Plan changes: one subscription of a customer ends exactly where the next starts.
        self.plan_changes: list[tuple[Customer, Subscription, Subscription]] = []
        for cust in catalog.customers.values():
            subs = cust.subscriptions
            for a, b in itertools.pairwise(subs):
                if a.end is not None and a.end == b.start and START < b.start.timestamp() < END:
                    self.plan_changes.append((cust, a, b))
        self.plan_changes.sort(key=lambda x: x[2].start)

        # Gaps: stretches of the two months where a customer has no active subscription.
        self.gaps: list[tuple[int, int, Customer]] = []
        for cust in catalog.customers.values():
            t = START
            for sub in cust.subscriptions:
                s0 = int(sub.start.timestamp())
                s1 = END if sub.end is None else int(sub.end.timestamp())
                if s0 > t:
                    self.gaps.append((t, min(s0, END), cust))
                t = max(t, s1)
            if t < END:
                self.gaps.append((t, END, cust))
        self.gaps = [(a, b, c) for a, b, c in self.gaps if b - a >= 60 and a < END]
        self.gaps.sort(key=lambda g: (g[0], g[2].id))

    # -- payloads -------------------------------------------------------------------------------

    def _variants(self, tmpl: Template, rng: random.Random) -> list[str]:
        et = tmpl.event_type
        cid = tmpl.customer.id
        if et in ("storage.snapshot", "seats.set"):
            return []  # computed per event: they move slowly with time
        out: list[str] = []
        if et == "api.request":
            routes = ("/v1/orders", "/v1/orders/{id}", "/v1/customers", "/v1/search",
                      "/v2/reports", "/v1/webhooks")
            for i in range(VARIANTS):
                status = 200 if i % 17 else (500 if i % 2 else 429)
                out.append(_dumps({"method": "GET" if i % 4 else "POST",
                                   "route": routes[i % len(routes)], "status": status,
                                   "latency_ms": int(rng.lognormvariate(3.2, 0.7))}))
        elif et == "llm.completion":
            models = ("gpt-4.1-mini", "claude-haiku", "llama-3-70b")
            for i in range(VARIANTS):
                tokens = max(1, int(rng.lognormvariate(6.5, 1.0)))
                out.append(_dumps({"model": models[i % 3],
                                   "usage": {"tokens": tokens,
                                             "prompt_tokens": tokens * 2 // 3}}))
        elif et == "user.active":
            population = {"acme": 300, "globex": 120, "umbrella": 80, "hooli": 60,
                          "tyrell": 40, "initech": 20}.get(cid, 30)
            for u in range(population):
                user: Any = 10000 + u if cid == "umbrella" else f"{cid}-u{u:04d}"
                out.append(_dumps({"user_id": user, "client": "web" if u % 3 else "ios"}))
        elif et == "payment.captured":
            for i in range(VARIANTS):
                cents = int(rng.lognormvariate(7.5, 1.2))
                text = f"{cents // 100}.{cents % 100:02d}"
                amount: Any = text if i % 5 else float(text)  # a JSON number now and then
                out.append(_dumps({"amount": amount, "order_id": f"o-{rng.getrandbits(24):06x}"}))
        else:
            for i in range(VARIANTS):
                out.append(_dumps({"value": i}))
        return out

    def dynamic_data(self, tmpl: Template, t: int, rng: random.Random) -> str:
        """Payloads that follow time: storage grows through the months, seats change weekly."""
        frac = (t - START) / (END - START)
        if tmpl.event_type == "storage.snapshot":
            base = 40 + len(tmpl.subject) * 9
            gb = base * (1 + 0.6 * frac) + rng.random() * 3
            text = f"{gb:.1f}"
            return ('{"gb":"' + text + '","volume":"data"}') if int(gb * 10) % 3 else (
                '{"gb":' + text + ',"volume":"data"}')
        if tmpl.event_type == "seats.set":
            seats = 5 + len(tmpl.customer.id) + (t - START) // (7 * DAY)
            return '{"count":' + str(seats) + ',"changed_by":"admin"}'
        return "{}"


class _Segment:
    """A stretch of time with a fixed set of active subscriptions and its weighted templates."""

    def __init__(self, model: _Model, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        at = datetime.fromtimestamp(lo, UTC)
        catalog = model.catalog
        self.active: dict[str, Subscription] = {}
        for cust in catalog.customers.values():
            sub = catalog.subscription_at(cust, at)
            if sub is not None:
                self.active[cust.id] = sub
        charged: list[Template] = []
        not_charged: list[Template] = []
        for tmpl in model.templates:
            sub = self.active.get(tmpl.customer.id)
            if sub is None or tmpl.meter is None:
                continue
            plan = catalog.plans[sub.plan_id]
            (charged if plan.charge_for(tmpl.meter.id) else not_charged).append(tmpl)
        self.templates = charged
        self.not_charged = not_charged
        self.value_templates = [t for t in charged if t.meter and t.meter.value_path]
        self.rate = sum(t.weight for t in charged)
        # A flat population of (template, payload) so one choices() call picks both.
        pop: list[tuple[Template, str | None]] = []
        cum: list[float] = []
        acc = 0.0
        for tmpl in charged:
            if tmpl.variants:
                w = tmpl.weight / len(tmpl.variants)
                for v in tmpl.variants:
                    acc += w
                    pop.append((tmpl, v))
                    cum.append(acc)
            else:
                acc += tmpl.weight
                pop.append((tmpl, None))
                cum.append(acc)
        self.population = pop
        self.cum = cum
        self.tmpl_cum = list(_accumulate(t.weight for t in charged))


def _accumulate(values: Any) -> Iterator[float]:
    acc = 0.0
    for v in values:
        acc += v
        yield acc


def _diurnal(t: int) -> float:
    """Relative traffic for the hour starting at epoch second `t` (UTC): a working-day bump
    centred on 15:00 UTC and quieter weekends."""
    hour = (t // HOUR) % 24
    weekday = ((t // DAY) + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    dist = min(abs(hour - 15), 24 - abs(hour - 15))
    level = 0.35 + 0.65 * max(0.0, 1 - dist / 9)
    return level * (0.6 if weekday >= 5 else 1.0)


# --------------------------------------------------------------------------------------------
# The plan: counts per kind, exact.


def _plan_counts(model: _Model, size: int) -> dict[str, int]:
    if size < 0:
        msg = "size must not be negative"
        raise ValueError(msg)
    counts: dict[str, int] = {}
    for kind, rate in RATES.items():
        n = round(rate * size)
        if size >= MIN_SIZE_ALL_KINDS:
            n = max(n, 1)
        counts[kind] = n
    # Kinds the catalog makes impossible get nothing.
    if not model.plan_changes:
        counts["plan_change"] = 0
    else:
        per = 2 * len(model.plan_changes)
        n = min(max(counts["plan_change"], per if size >= MIN_SIZE_ALL_KINDS else 0),
                PLAN_CHANGE_MAX)
        counts["plan_change"] = n
    if not any(s.not_charged for s in model.segments):
        counts["not_in_plan"] = 0
    if not any(s.value_templates for s in model.segments):
        counts["invalid_value"] = 0
    if not any(s.templates for s in model.segments):
        for kind in ("duplicate_exact", "duplicate_conflict", "out_of_order", "late",
                     "unmetered_type", "plan_change"):
            counts[kind] = 0
    if not any(s.templates and s.lo < NOV for s in model.segments):
        counts["late"] = 0
    if not model.gaps and not model.catalog.customers:
        counts["no_active_subscription"] = 0
    injected = sum(counts.values())
    if injected > size // 5:  # tiny sizes: keep the stream mostly clean
        scale = (size // 5) / injected if injected else 0
        counts = {k: int(v * scale) for k, v in counts.items()}
    return counts


def compose(catalog: Catalog, size: int, seed: int = 7) -> Composition:
    """The exact composition `generate(catalog, size, seed)` will produce, without generating."""
    return Workload(catalog, size, seed).composition


# --------------------------------------------------------------------------------------------
# The generator.


class Workload:
    """`iter(Workload(...))` yields the lines; `.composition` says what they are."""

    def __init__(self, catalog: Catalog, size: int, seed: int = 7) -> None:
        _tables()
        self.catalog = catalog
        self.size = size
        self.seed = seed
        self.model = _Model(catalog, seed)
        counts = _plan_counts(self.model, size)
        comp = Composition(size=size)
        for kind, n in counts.items():
            setattr(comp, kind, n)
        comp.normal = size - sum(counts.values())
        comp.total = size
        comp.plan_change_boundaries = [
            f"{c.id}: {a.id} -> {b.id} at {b.start.isoformat()}"
            for c, a, b in self.model.plan_changes]
        self.composition = comp

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks():
            yield from chunk

    # -- scheduling -------------------------------------------------------------------------------

    def _chunks_plan(self) -> list[tuple[int, int, _Segment, float]]:
        """(lo, hi, segment, weight) per chunk: hours cut at segment boundaries."""
        out = []
        for seg in self.model.segments:
            t = seg.lo
            while t < seg.hi:
                nxt = min((t // HOUR + 1) * HOUR, seg.hi)
                out.append((t, nxt, seg, _diurnal(t) * (nxt - t) / HOUR * seg.rate))
                t = nxt
        return out

    def _occurrences(self, kind: str, count: int) -> Iterator[tuple[float, int, str, Any]]:
        """Emission times of `count` occurrences of `kind`, ascending, spread evenly with jitter
        over the kind's allowed stretches. Yields (time, order, kind, extra)."""
        if count <= 0:
            return
        rng = random.Random(f"{self.seed}:{kind}")
        model = self.model
        order = list(RATES).index(kind)
        if kind == "plan_change":
            # Spread over every boundary, alternating sides: just before it (the old plan) and
            # from it on (the new plan; the first one exactly on the boundary).
            items: list[tuple[float, int, str, Any]] = []
            slots = 2 * len(model.plan_changes)
            for slot in range(slots):
                n = count // slots + (1 if slot < count % slots else 0)
                cust, before, after = model.plan_changes[slot // 2]
                side = slot % 2
                b = int(after.start.timestamp())
                gap = max(1, 240 // max(n, 1))
                for j in range(n):
                    if side:
                        t = b + j * gap + (rng.randrange(gap) if j else 0)
                        items.append((float(t), order, kind, (cust, after, t)))
                    else:
                        t = b - 1 - j * gap - rng.randrange(gap)
                        items.append((float(t), order, kind, (cust, before, t)))
            items.sort(key=lambda x: x[0])
            yield from items
            return
        if kind == "late":
            spans = [LATE_EMIT]
        elif kind == "no_active_subscription":
            spans = [(a, b) for a, b, _ in model.gaps] or [(START, END)]
        elif kind == "not_in_plan":
            spans = [(s.lo, s.hi) for s in model.segments if s.not_charged]
        elif kind == "invalid_value":
            spans = [(s.lo, s.hi) for s in model.segments if s.value_templates]
        else:
            spans = [(s.lo, s.hi) for s in model.segments if s.templates] or [(START, END)]
        spans = _merge_spans(spans)
        total = sum(b - a for a, b in spans)
        si, acc = 0, 0.0
        for j in range(count):
            x = (j + rng.random()) / count * total
            while si < len(spans) - 1 and x >= acc + (spans[si][1] - spans[si][0]):
                acc += spans[si][1] - spans[si][0]
                si += 1
            yield (spans[si][0] + (x - acc), order, kind, None)

    def chunks(self) -> Iterator[list[bytes]]:
        """The lines, a chunk (at most an hour of event time) at a time."""
        comp = self.composition
        model = self.model
        plan = self._chunks_plan()
        total_w = sum(w for *_, w in plan) or 1.0
        n_normal = comp.normal
        schedule = heapq.merge(*(self._occurrences(k, getattr(comp, k)) for k in RATES))
        nxt = next(schedule, None)
        rng = random.Random(f"{self.seed}:stream")
        inj = _Injector(self, random.Random(f"{self.seed}:inject"))
        rnd = rng.random
        pending: list[tuple[float, int, bytes]] = []  # (emit time, tiebreak, line): re-sends
        deferred: list[str] = []  # duplicate requests waiting for a chunk with clean lines
        cum_w = 0.0
        made = 0
        seq = 0
        days, sod, ms_tab = _DAYS, _SOD, _MS
        day0 = _DAY0
        dyn = model.dynamic_data
        emitted = 0
        for ci, (lo, hi, seg, w) in enumerate(plan):
            last_chunk = ci == len(plan) - 1
            cum_w += w
            target = n_normal if last_chunk else round(n_normal * cum_w / total_w)
            n = target - made
            made = target
            span = hi - lo
            # -- clean usage --
            lines: list[bytes] = []
            times: list[float] = []  # ascending: each clean line has its own slot of the chunk
            if n > 0:
                picks = rng.choices(seg.population, cum_weights=seg.cum, k=n)
                step = span / n
                for k, (tp, data) in enumerate(picks):
                    tf = lo + (k + rnd()) * step
                    times.append(tf)
                    t = int(tf)
                    if data is None:
                        data = dyn(tp, t, rng)
                    d, s = divmod(t + tp.offset - day0, 86400)
                    if tp.ms:
                        ts = days[d] + sod[s] + ms_tab[int((tf - t) * 1000)]
                    else:
                        ts = days[d] + sod[s]
                    seq += 1
                    lines.append(
                        f"{tp.head}{tp.id_prefix}{seq:x}{tp.mid}{ts}{tp.suffix}{data}}}".encode())
                inj.last_clean = (lines[-1], (picks[-1][0], hi - 1))
            # -- injections due in this chunk --
            # (position among the clean lines, emission time, tiebreak, line)
            extra: list[tuple[int, float, int, bytes]] = []
            kinds_here: list[tuple[float, str, Any]] = []
            while nxt is not None and (nxt[0] < hi or last_chunk):
                kinds_here.append((nxt[0], nxt[2], nxt[3]))
                nxt = next(schedule, None)
            if lines:
                kinds_here.extend((float(lo), k, None) for k in deferred)
                deferred = []
            for t_emit, kind, info in kinds_here:
                pos = bisect.bisect_right(times, t_emit)
                if kind in ("duplicate_exact", "duplicate_conflict"):
                    if not lines:
                        deferred.append(kind)
                        continue
                    i = inj.rng.randrange(n)
                    copy = inj.duplicate(kind, lines[i], (picks[i][0], int(times[i])))
                    delay = inj.rng.choice((5, 30, 90, 600, 1800, 3600, 4 * 3600, 6 * 3600))
                    emit_at = times[i] + delay * (0.5 + inj.rng.random())
                    seq += 1
                    heapq.heappush(pending, (emit_at, seq, copy))
                    inj.count(kind)
                    continue
                t_evt = int(t_emit)
                line = inj.make(kind, t_evt, info)
                seq += 1
                extra.append((pos, t_emit, seq, line))
            # -- re-sends due in this chunk --
            while pending and (pending[0][0] < hi or last_chunk):
                emit_at, tb, line = heapq.heappop(pending)
                pos = bisect.bisect_right(times, emit_at)
                extra.append((pos, emit_at, tb, line))
            if last_chunk and deferred:
                # No clean line left to copy after the request: copy the last clean line seen.
                for kind in deferred:
                    if inj.last_clean is None:
                        msg = "no clean line to duplicate"
                        raise RuntimeError(msg)
                    line, mt = inj.last_clean
                    seq += 1
                    extra.append((n, float(hi), seq, inj.duplicate(kind, line, mt)))
                    inj.count(kind)
                deferred = []
            if extra:
                extra.sort()
                out: list[bytes] = []
                prev = 0
                for pos, _, _, line in extra:
                    if pos > prev:
                        out.extend(lines[prev:pos])
                        prev = pos
                    out.append(line)
                out.extend(lines[prev:])
                lines = out
            emitted += len(lines)
            if lines:
                yield lines
        planned = {k: v for k, v in comp.kinds().items() if v}
        if emitted != comp.total or inj.done != planned:  # pragma: no cover - a generator bug
            msg = (f"workload generator emitted {emitted} lines {inj.done}, planned "
                   f"{comp.total} {planned}")
            raise RuntimeError(msg)


def _merge_spans(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out or [(START, END)]


class _Injector:
    """Builds the injected lines. Low volume: clarity over speed."""

    def __init__(self, workload: Workload, rng: random.Random) -> None:
        self.w = workload
        self.model = workload.model
        self.rng = rng
        self.n = 0
        self.done: dict[str, int] = {}
        self.last_clean: tuple[bytes, tuple[Template, int]] | None = None

    # -- helpers ----------------------------------------------------------------------------------

    def count(self, kind: str) -> None:
        self.done[kind] = self.done.get(kind, 0) + 1

    def _segment(self, t: int) -> _Segment:
        segs = self.model.segments
        i = bisect.bisect_right(self.model.seg_starts, t) - 1
        return segs[max(0, min(i, len(segs) - 1))]

    def _pick(self, seg: _Segment) -> Template:
        if not seg.templates:  # no active subscription at all here: borrow any template
            return self.rng.choice(self.model.templates)
        return self.rng.choices(seg.templates, cum_weights=seg.tmpl_cum, k=1)[0]

    def _new_id(self, tmpl: Template) -> str:
        self.n += 1
        return f"{tmpl.id_prefix}x{self.n:x}"

    def _data(self, tmpl: Template, t: int) -> str:
        if tmpl.variants:
            return self.rng.choice(tmpl.variants)
        return self.model.dynamic_data(tmpl, t, self.rng)

    def _envelope(self, tmpl: Template, t: int, *, subject: str | None = None,
                  event_type: str | None = None, data: Any = None, ms: bool | None = None
                  ) -> dict[str, Any]:
        use_ms = tmpl.ms if ms is None else ms
        return {
            "specversion": "1.0",
            "id": self._new_id(tmpl),
            "source": tmpl.source,
            "type": event_type or tmpl.event_type,
            "subject": subject or tmpl.subject,
            "time": _fmt_time(t, tmpl.offset, self.rng.randrange(1000) if use_ms else -1),
            "data": data if data is not None else orjson.loads(self._data(tmpl, t)),
        }

    def _line(self, tmpl: Template, t: int, data: str | None = None) -> bytes:
        """A clean event exactly as the fast path renders it."""
        d = self._data(tmpl, t) if data is None else data
        ts = _fmt_time(t, tmpl.offset, self.rng.randrange(1000) if tmpl.ms else -1, zone=False)
        return f"{tmpl.head}{self._new_id(tmpl)}{tmpl.mid}{ts}{tmpl.suffix}{d}}}".encode()

    # -- kinds ------------------------------------------------------------------------------------

    def duplicate(self, kind: str, line: bytes, meta: tuple[Template, int]) -> bytes:
        if kind == "duplicate_exact":
            return line
        tmpl, t = meta
        # Same source and id, another payload: a producer that re-sent after recomputing.
        cut = line.rindex(b'"data":') + len(b'"data":')
        old = line[cut:-1]
        for _ in range(8):
            new = self._data(tmpl, t).encode()
            if new != old:
                break
        else:
            new = b'{"resent":true}'
        if new == old:
            new = old[:-1] + b',"resent":true}'
        return line[:cut] + new + b"}"

    def make(self, kind: str, t: int, info: Any) -> bytes:
        self.count(kind)
        rng = self.rng
        if kind == "out_of_order":
            t_evt = max(START, t - rng.randrange(120, 900))
            return self._line(self._pick(self._segment(t_evt)), t_evt)
        if kind == "late":
            t_evt = START + rng.randrange(NOV - START)
            seg = self._segment(t_evt)
            tries = 0
            while not seg.templates and tries < 50:
                t_evt = START + rng.randrange(NOV - START)
                seg = self._segment(t_evt)
                tries += 1
            return self._line(self._pick(seg), t_evt)
        if kind == "plan_change":
            cust, sub, t_evt = info
            plan = self.w.catalog.plans[sub.plan_id]
            cands = [tp for tp in self.model.templates if tp.customer.id == cust.id
                     and tp.meter is not None and plan.charge_for(tp.meter.id)]
            cands.sort(key=lambda tp: (tp.event_type != "api.request", tp.index))
            tmpl = cands[0] if rng.random() < 0.8 else rng.choice(cands)
            return self._line(tmpl, t_evt)
        if kind == "malformed_truncated":
            tmpl = self._pick(self._segment(t))
            line = self._line(tmpl, t)
            cut = rng.randrange(1, len(line) - 1)
            return line[:cut]
        if kind == "malformed_not_json":
            return rng.choice(NOT_JSON_LINES)
        if kind == "malformed_invalid_utf8":
            tmpl = self._pick(self._segment(t))
            variant = self.done[kind] % 3
            if variant == 0:  # binary garbage from a torn write
                return b"\x00\x00\xff\xfe" + bytes(rng.randrange(128, 256) for _ in range(24))
            env = self._envelope(tmpl, t)
            text = orjson.dumps(env)
            if variant == 1:  # a Latin-1 byte inside a JSON string (the subject)
                subj = orjson.dumps(env["subject"])
                return text.replace(subj, subj[:-1] + b"\xe9" + b'"', 1)
            # a truncated multi-byte sequence inside the source
            src = orjson.dumps(env["source"])
            return text.replace(src, src[:-1] + b"\xe2\x82" + b'"', 1)
        if kind.startswith("envelope_"):
            tmpl = self._pick(self._segment(t))
            env = self._envelope(tmpl, t)
            if kind == "envelope_missing_subject":
                del env["subject"]
            elif kind == "envelope_naive_time":
                env["time"] = _fmt_time(t)[:-1]
            elif kind == "envelope_bad_specversion":
                env["specversion"] = "0.3"
            else:
                env["data"] = rng.choice(("api call", [1, 2, 3], None, 42))
            return orjson.dumps(env)
        if kind == "unknown_subject":
            tmpl = self._pick(self._segment(t))
            known = self.w.catalog.customer_by_subject
            subject = rng.choice((f"{tmpl.customer.id}-staging", "wayne-enterprises",
                                  tmpl.subject.upper(), f"{tmpl.subject}-old"))
            while subject in known:
                subject += "-x"
            return orjson.dumps(self._envelope(tmpl, t, subject=subject))
        if kind == "no_active_subscription":
            gaps = [g for g in self.model.gaps if g[0] <= t < g[1]]
            if gaps:
                cust = rng.choice(gaps)[2]
                t_evt = t
            else:  # no gap in the months: usage from before the customer's first subscription
                cust = rng.choice(sorted(self.w.catalog.customers.values(),
                                         key=lambda c: c.id))
                t_evt = int(cust.subscriptions[0].start.timestamp()) - rng.randrange(
                    HOUR, 10 * DAY) if cust.subscriptions else t
            cands = [tp for tp in self.model.templates if tp.customer.id == cust.id]
            cands.sort(key=lambda tp: (tp.event_type != "api.request", tp.index))
            tmpl = cands[0] if rng.random() < 0.7 else rng.choice(cands)
            return self._line(tmpl, t_evt)
        if kind == "invalid_value":
            seg = self._segment(t)
            tmpls = seg.value_templates or [tp for s in self.model.segments
                                            for tp in s.value_templates]
            tmpl = rng.choice(tmpls)
            assert tmpl.meter is not None
            data = _bad_value(tmpl.meter, self.done[kind], rng)
            return orjson.dumps(self._envelope(tmpl, t, data=data))
        if kind == "unmetered_type":
            tmpl = self._pick(self._segment(t))
            et = rng.choice(UNMETERED_TYPES)
            data = {"url": f"/app/{rng.choice(('home', 'billing', 'settings'))}",
                    "session": f"s-{rng.getrandbits(32):08x}"}
            return orjson.dumps(self._envelope(tmpl, t, event_type=et, data=data))
        if kind == "not_in_plan":
            seg = self._segment(t)
            cands = seg.not_charged or [tp for s in self.model.segments for tp in s.not_charged]
            tmpl = rng.choice(cands)
            return self._line(tmpl, t)
        msg = f"unknown injection kind {kind!r}"
        raise ValueError(msg)


def _bad_value(meter: Meter, n: int, rng: random.Random) -> dict[str, Any]:
    """A payload whose value at the meter's path is unacceptable, cycling through the ways."""
    path = meter.value_path
    if meter.aggregation == "unique_count":
        bads: list[Any] = [True, "", None, {"id": 7}, [1, 2], "__missing__"]
    else:
        bads = [-rng.randrange(1, 500), True, "abc", None, "__missing__", "12,5", "-0.5", [3],
                "1e999"]
    bad = bads[n % len(bads)]
    data: dict[str, Any] = {}
    node = data
    for part in path[:-1]:
        node[part] = {}
        node = node[part]
    if bad != "__missing__":
        node[path[-1]] = bad
    else:
        node["note"] = "value omitted by producer"
    return data


# --------------------------------------------------------------------------------------------
# Public API.


def generate(catalog: Catalog, size: int, seed: int = 7) -> Iterator[bytes]:
    """About `size` (exactly `size`) JSON lines, without trailing newlines, for the catalog."""
    return iter(Workload(catalog, size, seed))


def write_workload(path: str | os.PathLike[str], catalog: Catalog, size: int, seed: int = 7
                   ) -> int:
    """Write the workload to `path`, one newline-terminated line per event; return the count."""
    count = 0
    with open(path, "wb", buffering=1 << 20) as fh:
        for chunk in Workload(catalog, size, seed).chunks():
            fh.write(b"\n".join(chunk))
            fh.write(b"\n")
            count += len(chunk)
    return count


__all__ = ["Composition", "Workload", "compose", "generate", "write_workload"]
