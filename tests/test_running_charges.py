"""RunningCharges against a real redis-server, and the pure fixed-fee accrual.

Pinned here: the highest rating_seq wins whatever the replay or order, exact Decimals and totals
per currency on read, fixed-fee accruals computed by hand (and equal to the invoice's fee line at
the end of the period), the key layout, one round trip per batch, and unavailability.
"""

from __future__ import annotations

import importlib.util
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis
from services import counting_client

from operators.catalog import Catalog, parse_catalog
from operators.invoicing import period_lines
from operators.periods import Month
from schemas.records import RatedWindow
from sinks.redis_dedup import RedisUnavailable, RetryPolicy
from sinks.running_charges import (
    ChargesUnavailable,
    RunningCharges,
    accrued_fixed_fees,
    fee_field,
    usage_field,
)

if importlib.util.find_spec("services") is None:  # tests/conftest.py loads it as a plugin
    @pytest.fixture(scope="session")
    def redis_service() -> Any:
        pytest.skip("needs a real Redis: tests/services.py (the redis_service fixture) is "
                    "not in this checkout")

D = Decimal


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# Customer `c` changes plan on 15 Oct 2026 at noon, from USD to JPY; customer `x:y` has an id
# with a colon and a subscription id with colons.
CATALOG: Catalog = parse_catalog({
    "legal_entities": [{"id": "le", "gl_accounts": {"receivable": "1200",
                                                    "usage_revenue": "4000"}}],
    "meters": [{"id": "calls", "event_type": "api.request", "aggregation": "count"},
               {"id": "tokens", "event_type": "llm.completion", "aggregation": "sum",
                "value": "tokens"}],
    "plans": [
        {"id": "usd", "currency": "USD",
         "fixed_fees": [{"id": "platform", "amount": "500.00", "revenue_recognition": "ratable"},
                        {"id": "onboarding", "amount": "150.00",
                         "revenue_recognition": "point_in_time"}],
         "charges": [{"meter": "calls", "model": "per_unit", "unit_price": "0.003"},
                     {"meter": "tokens", "model": "per_unit", "unit_price": "0.0000125"}]},
        {"id": "jpy", "currency": "JPY",
         "fixed_fees": [{"id": "platform", "amount": "50000", "revenue_recognition": "ratable"}],
         "charges": [{"meter": "calls", "model": "per_unit", "unit_price": "0.35"}]},
        {"id": "free", "currency": "USD", "fixed_fees": [],
         "charges": [{"meter": "calls", "model": "per_unit", "unit_price": "0.001"}]},
    ],
    "customers": [
        {"id": "c", "legal_entity": "le", "subjects": ["s1"], "tax_registration": "T",
         "payment_terms_days": 30,
         "subscriptions": [
             {"id": "sub-usd", "plan": "usd", "start": "2026-10-01T00:00:00Z",
              "end": "2026-10-15T12:00:00Z"},
             {"id": "sub-jpy", "plan": "jpy", "start": "2026-10-15T12:00:00Z", "end": None}]},
        {"id": "x:y", "legal_entity": "le", "subjects": ["s2"], "tax_registration": "T",
         "payment_terms_days": 30,
         "subscriptions": [{"id": "a:b:c", "plan": "free", "start": "2026-09-20T00:00:00Z",
                            "end": None}]},
    ],
})


def window(sub: str, meter: str, start: datetime, quantity: str, amount: str, seq: int,
           minutes: int = 1, revision: int = 0) -> RatedWindow:
    s = CATALOG.subscriptions[sub]
    plan = CATALOG.plans[s.plan_id]
    return RatedWindow(
        row_id=f"{sub}:{meter}:{int(start.timestamp())}", subscription_id=sub,
        customer_id=s.customer_id, plan_id=plan.id, legal_entity="le", currency=plan.currency,
        meter=meter, period=Month.of(start).key, window_start=start,
        window_end=start + timedelta(minutes=minutes), revision=revision, event_count=1,
        window_quantity=D(quantity), cumulative_quantity=D(quantity),
        amount_delta=D(amount), cumulative_amount=D(amount), rating_seq=seq, after_close=False)


# sub-usd: calls 1000 -> 3.000 (seq 1), then 1500 -> 4.500 (seq 3); tokens 12345 -> 0.1543125.
USD_1 = window("sub-usd", "calls", utc(2026, 10, 10, 23, 59), "1000", "3.000", 1)
USD_TOKENS = window("sub-usd", "tokens", utc(2026, 10, 10, 23, 59), "12345", "0.1543125", 2)
USD_2 = window("sub-usd", "calls", utc(2026, 10, 15, 11, 0), "1500", "4.500", 3)
# sub-jpy: calls 101 -> 35.35 (seq 1), ending 2026-10-16 00:00.
JPY_1 = window("sub-jpy", "calls", utc(2026, 10, 15, 23, 59), "101", "35.35", 1)


@pytest.fixture
def db(redis_service: Any) -> tuple[str, redis.Redis]:
    number = redis_service.fresh_db()
    return redis_service.url_for(number), redis_service.client(db=number)


@pytest.fixture
def charges(db: tuple[str, redis.Redis]) -> Iterator[RunningCharges]:
    store = RunningCharges(db[0], f"t-{uuid.uuid4().hex[:8]}")
    yield store
    store.close()


def usage(store: RunningCharges, customer: str = "c", period: str = "2026-10"
          ) -> dict[tuple[str, str], tuple[str, str, int]]:
    """(subscription, meter) -> (quantity text, amount text, rating_seq): the exact text kept."""
    got = store.read(customer, period)
    return {(s, m): (str(u["quantity"]), str(u["amount"]), u["rating_seq"])
            for s, e in got["subscriptions"].items() for m, u in e["usage"].items()}


# -- the pure accrual ----------------------------------------------------------------------------

@pytest.mark.parametrize(("sub", "as_of", "expected"), [
    # 10 of 31 days: 500 x 10/31 = 161.2903..., 150 x 10/31 = 48.3870...
    ("sub-usd", utc(2026, 10, 11), {"platform": D("161.29"), "onboarding": D("48.39")}),
    # the subscription ended at 15 Oct 12:00: 14.5 days whatever the as-of time after it.
    # 500 x 14.5/31 = 233.8709..., 150 x 14.5/31 = 70.1612...
    ("sub-usd", utc(2026, 10, 20), {"platform": D("233.87"), "onboarding": D("70.16")}),
    ("sub-usd", utc(2026, 12, 1), {"platform": D("233.87"), "onboarding": D("70.16")}),
    # before the month (or the subscription) starts: nothing yet.
    ("sub-usd", utc(2026, 9, 30), {"platform": D("0.00"), "onboarding": D("0.00")}),
    # JPY, no minor unit. Half a day: 50000 x 0.5/31 = 806.45... -> 806.
    ("sub-jpy", utc(2026, 10, 16), {"platform": D("806")}),
    # 10 days from 15 Oct 12:00: 50000 x 10/31 = 16129.03... -> 16129.
    ("sub-jpy", utc(2026, 10, 25, 12), {"platform": D("16129")}),
    # the whole service period, 16.5 days: 50000 x 16.5/31 = 26612.90... -> 26613.
    ("sub-jpy", utc(2026, 11, 1), {"platform": D("26613")}),
    ("a:b:c", utc(2026, 10, 31), {}),  # a plan without fixed fees
])
def test_accrued_fixed_fees_by_hand(sub: str, as_of: datetime, expected: dict[str, Decimal]
                                    ) -> None:
    s = CATALOG.subscriptions[sub]
    got = accrued_fixed_fees(CATALOG.plans[s.plan_id], s, Month(2026, 10), as_of)
    assert got == expected
    assert {k: str(v) for k, v in got.items()} == {k: str(v) for k, v in expected.items()}


def test_accrued_fixed_fees_half_up() -> None:
    doc = {"legal_entities": [{"id": "le", "gl_accounts": {}}], "meters": [], "customers": [
        {"id": "c", "legal_entity": "le", "subjects": ["s"],
         "subscriptions": [{"id": "s1", "plan": "p", "start": "2026-02-01T00:00:00Z",
                            "end": None}]}],
           "plans": [{"id": "p", "currency": "USD", "charges": [], "fixed_fees": [
               {"id": "f", "amount": "0.10", "revenue_recognition": "ratable"}]}]}
    cat = parse_catalog(doc)
    sub = cat.subscriptions["s1"]
    # February 2026 has 28 days: 0.10 x 7/28 = 0.025 exactly, rounded half up to 0.03.
    assert accrued_fixed_fees(cat.plans["p"], sub, Month(2026, 2), utc(2026, 2, 8)) == {
        "f": D("0.03")}


@pytest.mark.parametrize("sub", ["sub-usd", "sub-jpy"])
def test_accrual_at_period_end_is_the_invoice_fee_line(sub: str) -> None:
    s = CATALOG.subscriptions[sub]
    lines = period_lines(CATALOG, s, Month(2026, 10), {})
    fees = accrued_fixed_fees(CATALOG.plans[s.plan_id], s, Month(2026, 10), utc(2026, 11, 1))
    assert fees == {line.ref: line.amount for line in lines.values() if line.kind == "fixed_fee"}


# -- apply and read ------------------------------------------------------------------------------

def test_apply_and_read_exact_decimals_and_totals(charges: RunningCharges) -> None:
    charges.apply([USD_1, USD_TOKENS, JPY_1], CATALOG)
    got = charges.read("c", "2026-10")
    assert got["customer_id"] == "c" and got["period"] == "2026-10"
    usd = got["subscriptions"]["sub-usd"]
    assert usd["currency"] == "USD"
    assert usd["usage"] == {
        "calls": {"quantity": D("1000"), "amount": D("3.000"), "rating_seq": 1,
                  "as_of": utc(2026, 10, 11)},
        "tokens": {"quantity": D("12345"), "amount": D("0.1543125"), "rating_seq": 2,
                   "as_of": utc(2026, 10, 11)},
    }
    # As of the latest window end, 11 Oct 00:00: 10 days of 31.
    assert usd["fixed_fees"] == {
        "onboarding": {"amount": D("48.39"), "as_of": utc(2026, 10, 11)},
        "platform": {"amount": D("161.29"), "as_of": utc(2026, 10, 11)},
    }
    jpy = got["subscriptions"]["sub-jpy"]
    assert jpy["currency"] == "JPY"
    assert jpy["fixed_fees"] == {"platform": {"amount": D("806"), "as_of": utc(2026, 10, 16)}}
    # 3.000 + 0.1543125 + 161.29 + 48.39; 35.35 + 806. Exact, unrounded.
    assert got["totals"] == {"JPY": D("841.35"), "USD": D("212.8343125")}
    assert str(got["totals"]["USD"]) == "212.8343125"
    for entry in got["subscriptions"].values():
        for u in entry["usage"].values():
            assert type(u["quantity"]) is Decimal and type(u["amount"]) is Decimal
    assert str(usd["usage"]["calls"]["amount"]) == "3.000"  # the exact text, scale kept


def test_replay_is_idempotent_and_the_highest_rating_seq_wins(charges: RunningCharges) -> None:
    charges.apply([USD_1, USD_TOKENS], CATALOG)
    charges.apply([USD_2], CATALOG)
    after = charges.read("c", "2026-10")
    charges.apply([USD_1, USD_TOKENS, USD_2, USD_1], CATALOG)  # a replay, old windows last
    charges.apply([USD_1], CATALOG)
    replayed = charges.read("c", "2026-10")
    # The figures stay; only the time they were last written moves (on).
    assert replayed["updated_at"] is not None and after["updated_at"] is not None
    assert replayed["updated_at"] >= after["updated_at"]
    assert {**replayed, "updated_at": None} == {**after, "updated_at": None}
    assert usage(charges) == {("sub-usd", "calls"): ("1500", "4.500", 3),
                              ("sub-usd", "tokens"): ("12345", "0.1543125", 2)}


@pytest.mark.parametrize("order", [
    [[USD_2], [USD_1], [USD_TOKENS]],        # newest first, one per batch
    [[USD_2, USD_TOKENS, USD_1]],            # newest first within one batch
    [[USD_1, USD_2, USD_TOKENS]],
    [[USD_TOKENS], [USD_1, USD_2], [USD_1]],
])
def test_any_order_gives_the_same_state(redis_service: Any, order: list[list[RatedWindow]]
                                        ) -> None:
    store = RunningCharges(redis_service.url_for(redis_service.fresh_db()))
    for batch in order:
        store.apply(batch, CATALOG)
    got = store.read("c", "2026-10")
    assert usage(store) == {("sub-usd", "calls"): ("1500", "4.500", 3),
                            ("sub-usd", "tokens"): ("12345", "0.1543125", 2)}
    # The latest window ends 15 Oct 11:01: 14 days 11 h 1 min = 1,249,260 s of 2,678,400.
    # 500 x 1249260/2678400 = 233.2100...; 150 x ... = 69.9630...
    assert got["subscriptions"]["sub-usd"]["fixed_fees"] == {
        "onboarding": {"amount": D("69.96"), "as_of": utc(2026, 10, 15, 11, 1)},
        "platform": {"amount": D("233.21"), "as_of": utc(2026, 10, 15, 11, 1)},
    }
    assert got["totals"] == {"USD": D("4.500") + D("0.1543125") + D("233.21") + D("69.96")}


def test_a_late_rerated_window_updates_usage_but_never_winds_fees_back(
        charges: RunningCharges) -> None:
    charges.apply([USD_1, USD_2], CATALOG)
    # Late usage re-opens the 10 Oct window: rated again with a higher rating_seq.
    late = window("sub-usd", "calls", utc(2026, 10, 10, 23, 59), "1600", "4.800", 4, revision=1)
    charges.apply([late], CATALOG)
    got = charges.read("c", "2026-10")
    calls = got["subscriptions"]["sub-usd"]["usage"]["calls"]
    assert (calls["quantity"], calls["amount"], calls["rating_seq"]) == (D("1600"), D("4.800"), 4)
    assert calls["as_of"] == utc(2026, 10, 11)
    fees = got["subscriptions"]["sub-usd"]["fixed_fees"]
    assert fees["platform"] == {"amount": D("233.21"), "as_of": utc(2026, 10, 15, 11, 1)}


def test_key_layout(charges: RunningCharges, db: tuple[str, redis.Redis]) -> None:
    raw = db[1]
    ns = charges.namespace
    charges.apply([USD_1, window("a:b:c", "calls", utc(2026, 10, 3), "7", "0.007", 1)], CATALOG)
    oct_11 = int(utc(2026, 10, 11).timestamp())
    assert oct_11 == 1791676800
    written = raw.hget(f"{ns}:charges:c:2026-10", "t")
    assert written is not None and written.endswith(b"|")
    assert raw.hgetall(f"{ns}:charges:c:2026-10") == {
        b"t": written,
        b"u:7:sub-usd:calls": f"1|USD|1000|3.000|{oct_11}".encode(),
        b"f:7:sub-usd:platform": f"{oct_11}|USD|161.29".encode(),
        b"f:7:sub-usd:onboarding": f"{oct_11}|USD|48.39".encode(),
    }
    assert usage_field("a:b:c", "calls") == "u:5:a:b:c:calls"
    assert fee_field("a:b:c", "x") == "f:5:a:b:c:x"
    end = int(utc(2026, 10, 3, 0, 1).timestamp())
    assert raw.hgetall(f"{ns}:charges:x:y:2026-10") == {
        b"t": written, b"u:5:a:b:c:calls": f"1|USD|7|0.007|{end}".encode()}
    got = charges.read("x:y", "2026-10")
    assert got["subscriptions"] == {"a:b:c": {
        "currency": "USD", "fixed_fees": {},
        "usage": {"calls": {"quantity": D("7"), "amount": D("0.007"), "rating_seq": 1,
                            "as_of": utc(2026, 10, 3, 0, 1)}}}}
    assert got["totals"] == {"USD": D("0.007")}
    # Each hash expires 90 days after its period ends (1 Nov 2026 + 90 d = 30 Jan 2027).
    assert raw.expiretime(f"{ns}:charges:c:2026-10") == int(utc(2027, 1, 30).timestamp())


def test_windows_of_several_periods_and_customers_in_one_batch(charges: RunningCharges) -> None:
    sept = window("a:b:c", "calls", utc(2026, 9, 30, 23, 59), "5", "0.005", 1)
    octo = window("a:b:c", "calls", utc(2026, 10, 1), "2", "0.002", 2)
    charges.apply([sept, USD_1, octo], CATALOG)
    assert usage(charges, "x:y", "2026-09") == {("a:b:c", "calls"): ("5", "0.005", 1)}
    assert usage(charges, "x:y", "2026-10") == {("a:b:c", "calls"): ("2", "0.002", 2)}
    assert usage(charges, "c", "2026-10") == {("sub-usd", "calls"): ("1000", "3.000", 1)}


def test_unknown_period_reads_empty(charges: RunningCharges) -> None:
    assert charges.read("nobody", "2026-10") == {
        "customer_id": "nobody", "period": "2026-10", "subscriptions": {}, "totals": {},
        "updated_at": None}


def test_the_time_last_written_only_moves_forward(db: tuple[str, redis.Redis]) -> None:
    """A sink whose clock is behind (another replica, a replay after a clock step) never
    makes the figures look older than they are."""
    at = [utc(2026, 12, 2, 12)]
    store = RunningCharges(db[0], f"t-{uuid.uuid4().hex[:8]}", wall=lambda: at[0])
    try:
        store.apply([USD_1], CATALOG)
        assert store.read("c", "2026-10")["updated_at"] == utc(2026, 12, 2, 12)
        at[0] = utc(2026, 12, 2, 11)
        store.apply([USD_2], CATALOG)
        got = store.read("c", "2026-10")
        assert got["updated_at"] == utc(2026, 12, 2, 12)
        assert usage(store)[("sub-usd", "calls")][2] == 3  # the window itself was applied
        at[0] = utc(2026, 12, 2, 13) + timedelta(microseconds=250_000)
        store.apply([USD_TOKENS], CATALOG)
        assert store.read("c", "2026-10")["updated_at"] == at[0]
    finally:
        store.close()


def test_retention_none_sets_no_expiry(db: tuple[str, redis.Redis]) -> None:
    store = RunningCharges(db[0], "t", retention=None)
    store.apply([USD_1], CATALOG)
    assert db[1].ttl("t:charges:c:2026-10") == -1


def test_a_period_past_its_retention_is_not_brought_back(db: tuple[str, redis.Redis]) -> None:
    store = RunningCharges(db[0], "t", retention=timedelta(days=1))
    store.apply([window("a:b:c", "calls", utc(2020, 1, 5), "1", "0.001", 1)], CATALOG)
    assert db[1].exists("t:charges:x:y:2020-01") == 0


# -- round trips and unavailability --------------------------------------------------------------

def test_one_round_trip_per_apply_and_per_read(db: tuple[str, redis.Redis]) -> None:
    client, counter = counting_client(db[0])
    store = RunningCharges(client, "t")
    store.apply([USD_1], CATALOG)  # loads the script if this server has not seen it yet
    many = [window("sub-usd", "calls", utc(2026, 10, 2) + timedelta(minutes=i), str(i),
                   str(D(i) * D("0.003")), 10 + i) for i in range(500)]
    counter["sends"] = 0
    store.apply([*many, USD_TOKENS, JPY_1, USD_2], CATALOG)
    assert counter["sends"] == 1
    counter["sends"] = 0
    store.read("c", "2026-10")
    assert counter["sends"] == 1
    counter["sends"] = 0
    store.apply([], CATALOG)
    assert counter["sends"] == 0
    assert usage(store)[("sub-usd", "calls")] == ("499", "1.497", 509)


def test_apply_retries_through_a_restart(redis_service: Any, db: tuple[str, redis.Redis]
                                         ) -> None:
    store = RunningCharges(db[0], "t", sleep=lambda s: None)
    store.apply([USD_1], CATALOG)
    redis_service.restart(keep_data=True)
    store.apply([USD_2, JPY_1], CATALOG)
    assert usage(store) == {("sub-usd", "calls"): ("1500", "4.500", 3),
                            ("sub-jpy", "calls"): ("101", "35.35", 1)}


def test_apply_deadline_raises_charges_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    store = RunningCharges(f"redis://127.0.0.1:{port}/0", "t",
                           retry=RetryPolicy(deadline=timedelta(seconds=30)),
                           sleep=sleep, clock=lambda: now[0])
    with pytest.raises(ChargesUnavailable, match="running charges of 1 window"):
        store.apply([USD_1], CATALOG)
    assert 25 < now[0] <= 30


def test_the_async_hash_reader_reads_what_redis_py_reads(db: tuple[str, redis.Redis]) -> None:
    import asyncio

    from sinks.running_charges import AsyncHashReader

    url, raw = db
    key = f"t-{uuid.uuid4().hex[:8]}:h"
    raw.hset(key, mapping={"u:1:a:m": "1|USD|2|3.5|9", "t": "12|", "\u00e9": "x" * 100_000})
    raw.set(key + ":s", "a string")
    reader = AsyncHashReader.of(url)
    assert reader is not None
    assert AsyncHashReader.of("rediss://127.0.0.1:6380") is None  # TLS: redis-py's client
    assert AsyncHashReader.of("unix:///tmp/redis.sock") is None

    async def go() -> None:
        assert await reader.hgetall(key) == raw.hgetall(key)  # a 100 kB value: several reads
        assert await reader.hgetall("missing") == {}
        with pytest.raises(RedisUnavailable, match="WRONGTYPE"):
            await reader.hgetall(key + ":s")
        assert await reader.hgetall(key) == raw.hgetall(key)  # the pool recovers
        got = await asyncio.gather(*(reader.hgetall(key) for _ in range(40)))
        assert all(g == raw.hgetall(key) for g in got)
        # a server that never answers: a timeout, not a hang
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            mute = AsyncHashReader("127.0.0.1", silent.getsockname()[1], timeout=0.3)
            with pytest.raises(TimeoutError):
                await mute.hgetall(key)
        reader.close()

    asyncio.run(go())
