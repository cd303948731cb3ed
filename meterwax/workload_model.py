"""What a catalog implies for the demo workload (meterwax/workload.py): the time frame, the event
templates, the segments of time with a fixed set of active subscriptions, plan-change boundaries
and gaps without any subscription, and the time formatting every generated line goes through.

Everything here is deterministic: the only randomness is the seeded `random.Random` passed in.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from operators.catalog import Catalog, Customer, Meter, Subscription

# --------------------------------------------------------------------------------------------
# The time frame: two calendar months of event time.

START = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp())
NOV = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())
END = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp())
HOUR = 3600
DAY = 86400


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

VARIANTS = 128  # precomputed payloads per (template) for the high-volume types


# --------------------------------------------------------------------------------------------
# Time formatting from tables: an event's time is built from a day string and a second-of-day
# string, never through datetime.

DAY0 = START - 400 * DAY
DAYS: list[str] = []
SOD: list[str] = []
MS: list[str] = []


def build_tables() -> None:
    if SOD:
        return
    SOD.extend(f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60)
                for s in range(60))
    MS.extend(f".{i:03d}" for i in range(1000))
    DAYS.extend(datetime.fromtimestamp(DAY0 + i * DAY, UTC).strftime("%Y-%m-%dT")
                 for i in range(800))


def fmt_time(t: int, offset: int = 0, ms: int = -1, zone: bool = True) -> str:
    """RFC 3339 for epoch second `t`, written in local time at `offset` seconds east of UTC
    (without the zone suffix when `zone` is false)."""
    local = t + offset
    d, s = divmod(local - DAY0, DAY)
    if 0 <= d < len(DAYS):
        text = DAYS[d] + SOD[s]
    else:
        text = datetime.fromtimestamp(local, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if ms >= 0:
        text += MS[ms]
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


class Model:
    """What the catalog implies: event templates, segments of time with a fixed set of active
    subscriptions, plan-change boundaries, and gaps without any subscription."""

    def __init__(self, catalog: Catalog, seed: int, variants: int | None = None) -> None:
        self.catalog = catalog
        self.seed = seed
        # None: the demo's payload mix (VARIANTS, and a user population per customer). A catalog
        # of many customers passes a few: the payloads are kept per template, so the default
        # would hold millions of strings the stream hardly reuses.
        self.variants = variants
        self._by_customer: dict[str, list[Template]] | None = None
        self.templates = self._templates(random.Random(f"{seed}:templates"))
        self.segments = self._segments()
        self.seg_starts = [s.lo for s in self.segments]
        self.plan_changes = self._plan_changes()
        self.gaps = self._gaps()

    def templates_of(self, customer_id: str) -> list[Template]:
        """The customer's templates in index order (the faults that pick one per line would
        otherwise scan every template of the catalog each time)."""
        if self._by_customer is None:
            by: dict[str, list[Template]] = {}
            for tmpl in self.templates:
                by.setdefault(tmpl.customer.id, []).append(tmpl)
            self._by_customer = by
        return self._by_customer.get(customer_id, [])

    def _templates(self, rng: random.Random) -> list[Template]:
        """One template per (customer subject, event type), in catalog order."""
        catalog = self.catalog
        templates: list[Template] = []
        for cust in catalog.customers.values():
            cw = CUSTOMER_WEIGHTS.get(cust.id, DEFAULT_CUSTOMER_WEIGHT)
            subjects = cust.subjects
            for si, subject in enumerate(subjects):
                share = 1.0 if len(subjects) == 1 else (
                    0.75 if si == 0 else 0.25 / (len(subjects) - 1))
                for event_type, meters in sorted(catalog.meters_by_event_type.items()):
                    tw = TYPE_WEIGHTS.get(event_type, DEFAULT_TYPE_WEIGHT)
                    idx = len(templates)
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
                    templates.append(tmpl)
        return templates

    def _segments(self) -> list[Segment]:
        """Intervals of [START, END) in which the set of active subscriptions is fixed (needs
        the templates)."""
        cuts = {START, END}
        for sub in self.catalog.subscriptions.values():
            for at in (sub.start, sub.end):
                if at is not None and START < at.timestamp() < END:
                    cuts.add(int(at.timestamp()))
        self.cuts = sorted(cuts)
        return [Segment(self, lo, hi) for lo, hi in itertools.pairwise(self.cuts)]

    def _plan_changes(self) -> list[tuple[Customer, Subscription, Subscription]]:
        """Where one subscription of a customer ends exactly as the next starts, in time order."""
        out: list[tuple[Customer, Subscription, Subscription]] = []
        for cust in self.catalog.customers.values():
            subs = cust.subscriptions
            for a, b in itertools.pairwise(subs):
                if a.end is not None and a.end == b.start and START < b.start.timestamp() < END:
                    out.append((cust, a, b))
        out.sort(key=lambda x: x[2].start)
        return out

    def _gaps(self) -> list[tuple[int, int, Customer]]:
        """Stretches of at least a minute where a customer has no active subscription."""
        gaps: list[tuple[int, int, Customer]] = []
        for cust in self.catalog.customers.values():
            t = START
            for sub in cust.subscriptions:
                s0 = int(sub.start.timestamp())
                s1 = END if sub.end is None else int(sub.end.timestamp())
                if s0 > t:
                    gaps.append((t, min(s0, END), cust))
                t = max(t, s1)
            if t < END:
                gaps.append((t, END, cust))
        gaps = [(a, b, c) for a, b, c in gaps if b - a >= 60 and a < END]
        gaps.sort(key=lambda g: (g[0], g[2].id))
        return gaps

    # -- payloads -------------------------------------------------------------------------------

    def _variants(self, tmpl: Template, rng: random.Random) -> list[str]:
        et = tmpl.event_type
        cid = tmpl.customer.id
        if et in ("storage.snapshot", "seats.set"):
            return []  # computed per event: they move slowly with time
        n = VARIANTS if self.variants is None else self.variants
        out: list[str] = []
        if et == "api.request":
            routes = ("/v1/orders", "/v1/orders/{id}", "/v1/customers", "/v1/search",
                      "/v2/reports", "/v1/webhooks")
            for i in range(n):
                status = 200 if i % 17 else (500 if i % 2 else 429)
                out.append(_dumps({"method": "GET" if i % 4 else "POST",
                                   "route": routes[i % len(routes)], "status": status,
                                   "latency_ms": int(rng.lognormvariate(3.2, 0.7))}))
        elif et == "llm.completion":
            models = ("gpt-4.1-mini", "claude-haiku", "llama-3-70b")
            for i in range(n):
                tokens = max(1, int(rng.lognormvariate(6.5, 1.0)))
                out.append(_dumps({"model": models[i % 3],
                                   "usage": {"tokens": tokens,
                                             "prompt_tokens": tokens * 2 // 3}}))
        elif et == "user.active":
            population = {"acme": 300, "globex": 120, "umbrella": 80, "hooli": 60,
                          "tyrell": 40, "initech": 20}.get(cid, 30)
            if self.variants is not None:
                population = min(population, self.variants)
            for u in range(population):
                user: Any = 10000 + u if cid == "umbrella" else f"{cid}-u{u:04d}"
                out.append(_dumps({"user_id": user, "client": "web" if u % 3 else "ios"}))
        elif et == "payment.captured":
            for i in range(n):
                cents = int(rng.lognormvariate(7.5, 1.2))
                text = f"{cents // 100}.{cents % 100:02d}"
                amount: Any = text if i % 5 else float(text)  # a JSON number now and then
                out.append(_dumps({"amount": amount, "order_id": f"o-{rng.getrandbits(24):06x}"}))
        else:
            for i in range(n):
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


class Segment:
    """A stretch of time with a fixed set of active subscriptions and its weighted templates."""

    def __init__(self, model: Model, lo: int, hi: int) -> None:
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

