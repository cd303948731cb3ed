"""Property tests (hypothesis) over the sequential engine and the pricers.

1. Window deltas sum to the period amount whatever the window size, arrival order (within the
   allowed lateness) and batch size; the invoices do not change.
2. Every line of an arbitrary dirty input lands in exactly one bucket, and reconciliation balances.
3. Pricer bounds and monotonicity.
4. Feeding every line twice deduplicates to the same outputs.
5. The batch size never changes any output.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from conftest import (
    DEFAULT_METERS,
    D,
    charge_of,
    customer,
    delta_sums,
    last_cumulative,
    line_key,
    reconcile,
    run,
    simple_doc,
    sub,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.catalog import Catalog, parse_catalog
from operators.engine import EngineResult
from operators.pricers import graduated, package, per_unit, percentage, price, volume
from schemas.reconciliation import Reconciliation
from schemas.records import ENCODER

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FAST = settings(max_examples=300, deadline=None)
HOUR = timedelta(hours=1)


def property_catalog() -> Catalog:
    doc = simple_doc(meters=DEFAULT_METERS)
    doc["plans"] = [
        {"id": "mix", "currency": "USD", "fixed_fees": [{"id": "base", "amount": "100.00"}],
         "charges": [
             {"meter": "calls", "model": "graduated", "minimum": "5.00", "tiers": [
                 {"up_to": "3", "unit_price": "1.00"},
                 {"up_to": "10", "unit_price": "0.50", "flat_price": "2"},
                 {"unit_price": "0.25", "flat_price": "1"}]},
             {"meter": "tokens", "model": "package", "package_size": "10",
              "package_price": "0.75"},
             {"meter": "peak", "model": "volume", "tiers": [
                 {"up_to": "5", "unit_price": "2.00"},
                 {"unit_price": "0.50", "flat_price": "3"}]},
             {"meter": "users", "model": "per_unit", "unit_price": "1.00"},
             {"meter": "seats", "model": "per_unit", "unit_price": "3.00"},
         ]},
        {"id": "alt", "currency": "JPY", "fixed_fees": [{"id": "base", "amount": "3000"}],
         "charges": [
             {"meter": "calls", "model": "per_unit", "unit_price": "7"},
             {"meter": "tokens", "model": "percentage", "rate": "0.5"},
             {"meter": "users", "model": "per_unit", "unit_price": "100", "minimum": "500"},
         ]},
    ]
    doc["customers"] = [
        customer("c1", ["s1"], [sub("sub-1", "mix", "2026-09-01T00:00:00Z")]),
        # a plan change on 15 October, to a JPY plan that does not charge peak or seats
        customer("c2", ["s2"], [sub("sub-2a", "mix", "2026-09-01T00:00:00Z",
                                    "2026-10-15T00:00:00Z"),
                                sub("sub-2b", "alt", "2026-10-15T00:00:00Z")],
                 tax=None),
        # August only: its usage may arrive after later months were already closed
        customer("c3", ["s3"], [sub("sub-3", "mix", "2026-08-01T00:00:00Z",
                                    "2026-09-01T00:00:00Z")]),
    ]
    return parse_catalog(doc)


CATALOG = property_catalog()

TYPES = {
    "calls": "api.request",
    "tokens": "llm.completion",
    "peak": "storage.snapshot",
    "users": "user.active",
    "seats": "seats.set",
}


def line(eid: str, kind: str, subject: str, time: str, value: str, source: str = "src") -> bytes:
    """An event whose data carries `value` (JSON text, verbatim) at every meter's path."""
    head = json.dumps({"specversion": "1.0", "id": eid, "source": source,
                       "type": TYPES.get(kind, kind), "subject": subject, "time": time})
    data = (f'{{"usage": {{"tokens": {value}}}, "gb": {value}, "user_id": {value}, '
            f'"count": {value}}}')
    return (head[:-1] + ', "data": ' + data + "}").encode()


def rfc3339(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def decimal_text(value: Decimal, quoted: bool) -> str:
    text = format(value, "f")
    return f'"{text}"' if quoted else text


# -- strategies ------------------------------------------------------------------------------------

ANCHORS = (datetime(2026, 10, 14, 23, 0, tzinfo=UTC), datetime(2026, 10, 31, 23, 0, tzinfo=UTC))

valid_values = st.builds(
    decimal_text,
    st.decimals(min_value=0, max_value=500, places=2, allow_nan=False, allow_infinity=False),
    st.booleans(),
)
user_values = st.sampled_from(["1", '"1"', "1.0", "2", '"u2"', '"u3"', "3"])


@st.composite
def clean_events(draw: st.DrawFn) -> list[tuple[datetime, bytes]]:
    """Accepted events with distinct times around the plan change and a month end."""
    offsets = draw(st.lists(st.tuples(st.sampled_from(ANCHORS), st.integers(0, 2 * 3600 - 1),
                                      st.sampled_from([0, 500_000])),
                            min_size=1, max_size=30, unique=True))
    out = []
    for i, (anchor, seconds, micros) in enumerate(offsets):
        at = anchor + timedelta(seconds=seconds, microseconds=micros)
        kind = draw(st.sampled_from(sorted(TYPES)))
        value = draw(user_values if kind == "users" else valid_values)
        subject = draw(st.sampled_from(["s1", "s2"]))
        out.append((at, line(f"e{i}", kind, subject, rfc3339(at), value)))
    return out


bad_values = st.sampled_from(["-1", '"-0.5"', "true", "null", '"abc"', '"NaN"', '""', "[1]",
                              "1e400", '"0.0000000001"', "{}"])
# hypothesis takes naive bounds and attaches the timezone itself
wide_times = st.datetimes(min_value=datetime(2026, 8, 1),  # noqa: DTZ001
                          max_value=datetime(2026, 12, 31),  # noqa: DTZ001
                          timezones=st.just(UTC))
august = st.datetimes(min_value=datetime(2026, 8, 1),  # noqa: DTZ001
                      max_value=datetime(2026, 8, 31, 23, 59),  # noqa: DTZ001
                      timezones=st.just(UTC))


@st.composite
def dirty_event(draw: st.DrawFn, dirty: bool = True) -> tuple[datetime, bytes]:
    """Any event (`dirty`), or one that is likely accepted unless it is a duplicate or its
    subject has no subscription at its time."""
    subject = draw(st.sampled_from(["s1", "s2", "s3", "ghost"] if dirty else
                                   ["s1", "s1", "s2", "s2", "s3"]))
    at = draw(wide_times if dirty or subject != "s3" else august)
    if not dirty and subject != "s3":
        at = max(at, datetime(2026, 9, 1, tzinfo=UTC))
    times = [rfc3339(at), at.astimezone(timezone(timedelta(hours=9))).isoformat()]
    if dirty:
        times.append(at.replace(tzinfo=None).isoformat())          # naive: INVALID_EVENT
    kinds = [*sorted(TYPES), "nope"] if dirty else sorted(TYPES)
    values = st.one_of(valid_values, user_values, bad_values) if dirty else valid_values
    return at, line(
        eid=draw(st.sampled_from([f"e{i}" for i in range(16)])),    # ids collide: duplicates
        kind=draw(st.sampled_from(kinds)),
        subject=subject,
        time=draw(st.sampled_from(times)),
        value=draw(values),
        source=draw(st.sampled_from(["src", "other"])),
    )


def _junk(raw: st.SearchStrategy[bytes]) -> st.SearchStrategy[tuple[datetime, bytes]]:
    return st.tuples(wide_times, raw)


@st.composite
def dirty_lines(draw: st.DrawFn) -> list[bytes]:
    items = draw(st.lists(st.one_of(
        dirty_event(dirty=False),
        dirty_event(dirty=False),
        dirty_event(dirty=False),
        dirty_event(dirty=False),
        dirty_event(),
        dirty_event().map(lambda e: (e[0], e[1][: len(e[1]) // 2])),              # truncated
        dirty_event().map(lambda e: (e[0], e[1].replace(b'"1.0"', b'"0.3"', 1))),  # specversion
        _junk(st.binary(max_size=24)),                                   # garbage, maybe blank
        _junk(st.sampled_from([b"", b"   ", b"\t"])),                    # blank lines
    ), min_size=1, max_size=40))
    order = draw(st.sampled_from(["as-drawn", "by-time", "rotated"]))
    if order != "as-drawn":
        items.sort(key=lambda item: item[0])
    if order == "rotated":
        # the newer part first: periods close, then the older usage arrives long after them
        k = draw(st.integers(0, len(items)))
        items = items[k:] + items[:k]
    lines = [raw for _, raw in items]
    # exact copies of earlier lines, somewhere later
    for _ in range(draw(st.integers(0, 5))):
        i = draw(st.integers(0, len(lines) - 1))
        j = draw(st.integers(i + 1, len(lines)))
        lines.insert(j, lines[i])
    return lines


# -- helpers ---------------------------------------------------------------------------------------

def assert_balanced(result: EngineResult) -> Reconciliation:
    report = reconcile(CATALOG, result)
    assert report.balanced, report.problems
    return report


def invoices(result: EngineResult) -> dict[str, Any]:
    return {c.invoice_candidate_id: (c.candidate_type, c.subtotal, c.status,
                                     [(line_key(c, ln.line_id), ln.amount, ln.quantity)
                                      for ln in c.lines])
            for c in result.candidates}


def canonical(result: EngineResult) -> dict[str, Any]:
    """Everything the engine outputs. Per-subscription order is kept (the rater's guarantee);
    exception records are keyed by their position id."""
    windows: dict[str, list[bytes]] = defaultdict(list)
    for w in result.windows:
        windows[w.subscription_id].append(ENCODER.encode(w))
    candidates: dict[str, list[bytes]] = defaultdict(list)
    for c in result.candidates:
        candidates[c.subscription_id].append(ENCODER.encode(c))
    s = result.stats
    return {
        "windows": dict(windows),
        "candidates": dict(candidates),
        "exceptions": sorted(ENCODER.encode(e) for e in result.exceptions),
        "stats": (s.read, s.blank, s.duplicates, s.unmetered, s.unmetered_not_in_plan, s.rated,
                  s.late_after_close, dict(s.exceptions), dict(s.contributions),
                  {k: v.quantity() for k, v in s.ingested.items()}),
    }


# -- 1. deltas sum to the period amount ----------------------------------------------------------

@SETTINGS
@given(events=clean_events(),
       jitter=st.lists(st.integers(0, 3599), min_size=30, max_size=30),
       window=st.sampled_from([timedelta(seconds=1), timedelta(minutes=1), timedelta(minutes=5),
                               HOUR, timedelta(days=1)]),
       batch_size=st.sampled_from([1, 3, 7, 1000]))
def test_window_deltas_sum_to_the_period_amount(events: list[tuple[datetime, bytes]],
                                                jitter: list[int], window: timedelta,
                                                batch_size: int) -> None:
    in_order = [b for _, b in sorted(events)]
    reference = run(CATALOG, in_order, lateness=HOUR)
    # Arrival order: each event is delayed by less than the allowed lateness, so no event ever
    # arrives after its period closed.
    arrivals = sorted(range(len(events)),
                      key=lambda i: events[i][0] + timedelta(seconds=jitter[i]))
    shuffled = run(CATALOG, [events[i][1] for i in arrivals], batch_size=batch_size,
                   window=window, lateness=HOUR)

    for result in (reference, shuffled):
        assert_balanced(result)
        assert all(c.candidate_type == "invoice" for c in result.candidates)
        last = last_cumulative(result.windows)
        sums = delta_sums(result.windows)
        assert sums.keys() == last.keys()
        for key, row in last.items():
            sub_id, _, meter = key
            plan = CATALOG.plans[CATALOG.subscriptions[sub_id].plan_id]
            charge = plan.charge_for(meter)
            assert charge is not None
            quantity = result.stats.ingested[key].quantity()
            assert row.cumulative_quantity == quantity
            assert sums[key] == row.cumulative_amount == price(charge, quantity)
    assert delta_sums(shuffled.windows) == delta_sums(reference.windows)
    assert invoices(shuffled) == invoices(reference)


# -- 2. exactly one bucket per line --------------------------------------------------------------

@settings(SETTINGS, max_examples=150)
@given(lines=dirty_lines(),
       lateness=st.sampled_from([timedelta(0), HOUR, timedelta(days=2)]),
       window=st.sampled_from([timedelta(seconds=1), timedelta(minutes=1), HOUR]),
       batch_size=st.sampled_from([1, 7, 1000]))
def test_every_line_lands_in_exactly_one_bucket(lines: list[bytes], lateness: timedelta,
                                                window: timedelta, batch_size: int) -> None:
    result = run(CATALOG, lines, batch_size=batch_size, lateness=lateness, window=window)
    report = assert_balanced(result)
    events = report.events
    numbered = list(enumerate(lines, start=1))
    non_blank = {n for n, raw in numbered if raw.strip()}
    assert events.read == len(non_blank)
    assert events.blank_lines_skipped == len(lines) - len(non_blank)
    assert events.buckets_total == events.read == (
        events.duplicates + events.unmetered + events.exceptions_total
        + events.rated)
    # one exception record per rejected line, never two for one line, never for a blank one
    positions = [e.position["line"] for e in result.exceptions]
    assert len(positions) == len(set(positions)) == events.exceptions_total
    assert set(positions) <= non_blank
    assert [e.exception_id for e in result.exceptions] == [f"file:0:{p}" for p in positions]


# -- 3. pricers ------------------------------------------------------------------------------------

money = st.decimals(min_value=0, max_value=100, places=4, allow_nan=False, allow_infinity=False)
flats = st.decimals(min_value=0, max_value=50, places=2, allow_nan=False, allow_infinity=False)
quantities = st.decimals(min_value=0, max_value=20000, places=3, allow_nan=False,
                         allow_infinity=False)


@st.composite
def tier_lists(draw: st.DrawFn, with_flats: bool = True) -> list[dict[str, str]]:
    bounds = sorted(draw(st.lists(
        st.decimals(min_value=D("0.01"), max_value=10000, places=2, allow_nan=False,
                    allow_infinity=False),
        max_size=3, unique=True)))
    tiers = []
    for up_to in [*bounds, None]:
        tier = {"unit_price": format(draw(money), "f")}
        if with_flats:
            tier["flat_price"] = format(draw(flats), "f")
        if up_to is not None:
            tier["up_to"] = format(up_to, "f")
        tiers.append(tier)
    return tiers


def graduated_oracle(tiers: list[dict[str, str]], q: Decimal) -> Decimal:
    total, lower = D(0), D(0)
    for tier in tiers:
        upper = D(tier["up_to"]) if "up_to" in tier else None
        units = max(D(0), (q if upper is None else min(q, upper)) - lower)
        if units > 0:
            total += units * D(tier["unit_price"]) + D(tier.get("flat_price", "0"))
        if upper is None:
            break
        lower = upper
    return total


@FAST
@given(tiers=tier_lists(), q1=quantities, q2=quantities)
def test_graduated_bound_oracle_and_monotone(tiers: list[dict[str, str]], q1: Decimal,
                                             q2: Decimal) -> None:
    charge = charge_of("graduated", tiers=tiers)
    lo, hi = sorted((q1, q2))
    max_unit = max(D(t["unit_price"]) for t in tiers)
    all_flats = sum((D(t["flat_price"]) for t in tiers), D(0))
    for q in (lo, hi):
        assert graduated(charge, q) == graduated_oracle(tiers, q)
        assert graduated(charge, q) <= q * max_unit + all_flats
    assert graduated(charge, lo) <= graduated(charge, hi)


@FAST
@given(tiers=tier_lists(), q1=quantities, q2=quantities)
def test_volume_bound_and_monotone_within_a_tier(tiers: list[dict[str, str]], q1: Decimal,
                                                 q2: Decimal) -> None:
    charge = charge_of("volume", tiers=tiers)
    lo, hi = sorted((q1, q2))
    max_unit = max(D(t["unit_price"]) for t in tiers)
    max_flat = max(D(t["flat_price"]) for t in tiers)

    def tier_of(q: Decimal) -> int:
        return next(i for i, t in enumerate(tiers) if "up_to" not in t or q <= D(t["up_to"]))

    for q in (lo, hi):
        assert volume(charge, q) <= q * max_unit + max_flat
    if lo > 0 and tier_of(lo) == tier_of(hi):
        assert volume(charge, lo) <= volume(charge, hi)


@FAST
@given(tiers=tier_lists(with_flats=False), q1=quantities, q2=quantities)
def test_volume_without_flats_is_monotone_when_unit_prices_do_not_fall(
        tiers: list[dict[str, str]], q1: Decimal, q2: Decimal) -> None:
    prices = sorted(D(t["unit_price"]) for t in tiers)
    for tier, unit in zip(tiers, prices, strict=True):
        tier["unit_price"] = format(unit, "f")
    charge = charge_of("volume", tiers=tiers)
    lo, hi = sorted((q1, q2))
    assert volume(charge, lo) <= volume(charge, hi)


@FAST
@given(size=st.decimals(min_value=D("0.5"), max_value=5000, places=1, allow_nan=False,
                        allow_infinity=False),
       unit=money, q1=quantities, q2=quantities)
def test_package_is_ceiling_and_monotone(size: Decimal, unit: Decimal, q1: Decimal,
                                         q2: Decimal) -> None:
    charge = charge_of("package", package_size=format(size, "f"), package_price=format(unit, "f"))
    lo, hi = sorted((q1, q2))
    assert package(charge, lo) <= package(charge, hi)
    packages = package(charge, hi) / unit if unit else None
    if packages is not None:
        # the fewest whole packages that hold hi
        assert packages == packages.to_integral_value()
        assert (packages - 1) * size < hi <= packages * size or hi == packages == 0


@FAST
@given(unit=money, q1=quantities, q2=quantities)
def test_per_unit_and_percentage_are_linear(unit: Decimal, q1: Decimal, q2: Decimal) -> None:
    pu = charge_of("per_unit", unit_price=format(unit, "f"))
    pct = charge_of("percentage", rate=format(unit, "f"))
    assert per_unit(pu, q1 + q2) == per_unit(pu, q1) + per_unit(pu, q2) == (q1 + q2) * unit
    assert percentage(pct, q1 + q2) == percentage(pct, q1) + percentage(pct, q2)


# -- 4. the same stream twice ---------------------------------------------------------------------

@SETTINGS
@given(lines=dirty_lines(), lateness=st.sampled_from([timedelta(0), HOUR, timedelta(days=2)]))
def test_feeding_every_line_twice_dedups_to_the_same_outputs(lines: list[bytes],
                                                             lateness: timedelta) -> None:
    once = run(CATALOG, lines, lateness=lateness)
    each_twice = run(CATALOG, [x for raw in lines for x in (raw, raw)], lateness=lateness)
    stream_twice = run(CATALOG, lines + lines, lateness=lateness)
    first = canonical(once)
    s = once.stats
    exc = s.exceptions
    # Only lines that reach dedup (rated, duplicates, PERIOD_LIMIT_EXCEEDED) claim an identity:
    # every later copy of them is a duplicate. A line rejected or unmetered before dedup claims
    # nothing, and its copy lands where it did.
    reached = s.duplicates + s.rated + exc["PERIOD_LIMIT_EXCEEDED"]
    early = [r for r in exc if r not in ("PERIOD_LIMIT_EXCEEDED", "LATE_BEYOND_RETENTION")]
    assert exc["INTERNAL_ERROR"] == 0
    for again in (each_twice, stream_twice):
        assert_balanced(again)
        got = canonical(again)
        assert got["windows"] == first["windows"]
        assert got["candidates"] == first["candidates"]
        a = again.stats
        assert (a.rated, a.late_after_close) == (s.rated, s.late_after_close)
        # A copy dated in a period retired by the time it is read is refused as such instead
        # (never rated either way). Right after its original that cannot happen; a whole second
        # pass meets the periods the first pass retired.
        late = a.exceptions["LATE_BEYOND_RETENTION"] - 2 * exc["LATE_BEYOND_RETENTION"]
        assert late >= 0 and (again is stream_twice or late == 0)
        assert a.exceptions["PERIOD_LIMIT_EXCEEDED"] == exc["PERIOD_LIMIT_EXCEEDED"]
        missing_duplicates = reached + s.duplicates - a.duplicates
        missing_early = (2 * s.unmetered - a.unmetered
                         + sum(2 * exc[r] - a.exceptions[r] for r in early))
        assert missing_duplicates >= 0 and missing_early >= 0
        assert missing_duplicates + missing_early == late
        assert {k: v.quantity() for k, v in a.ingested.items()} == first["stats"][-1]


# -- 5. batch size never changes an output --------------------------------------------------------

@SETTINGS
@given(lines=dirty_lines(), lateness=st.sampled_from([timedelta(0), HOUR]),
       window=st.sampled_from([timedelta(seconds=1), timedelta(minutes=1), HOUR]))
def test_batch_size_never_changes_any_output(lines: list[bytes], lateness: timedelta,
                                             window: timedelta) -> None:
    outputs = [canonical(run(CATALOG, lines, batch_size=n, lateness=lateness, window=window))
               for n in (1, 7, 1000)]
    assert outputs[0] == outputs[1] == outputs[2]


@SETTINGS
@given(events=clean_events(), batch_size=st.sampled_from([1, 7]))
def test_batch_size_never_changes_clean_outputs(events: list[tuple[datetime, bytes]],
                                                batch_size: int) -> None:
    lines = [b for _, b in events]     # in generation order: late windows, revisions
    assert canonical(run(CATALOG, lines, batch_size=batch_size)) == canonical(
        run(CATALOG, lines, batch_size=1000))
