"""Money (exact decimals, one half-up rounding to ISO 4217 minor units), calendar-month periods,
and the invoice lines built from them: prorated fixed fees, usage lines, minimum true-ups, holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction

import pytest
from conftest import D, customer, simple_catalog, simple_doc, sub, utc

from operators.catalog import Catalog, parse_catalog
from operators.invoicing import candidate, diff_lines, period_lines
from operators.money import (
    MoneyError,
    fmt,
    minor_units,
    parse_decimal,
    round_fraction,
    round_money,
    scale,
)
from operators.periods import Month, active_seconds, iso, months_between, service_period

# -- decimals ------------------------------------------------------------------------------------

def test_decimals_are_exact_where_floats_are_not() -> None:
    assert 0.1 + 0.2 != 0.3  # the problem
    assert parse_decimal("0.1") + parse_decimal("0.2") == parse_decimal("0.3")
    assert sum([parse_decimal("0.1")] * 10, D(0)) == D("1.0")


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("0.1", D("0.1"), id="fraction"),
    pytest.param("42", D(42), id="integer"),
    pytest.param(".5", D("0.5"), id="leading-dot"),
    pytest.param("10.", D(10), id="trailing-dot"),
    pytest.param("1e3", D(1000), id="exponent"),
    pytest.param("-2.50", D("-2.5"), id="negative-is-parsed"),  # callers reject it where needed
])
def test_parse_decimal_accepts(text: str, expected: Decimal) -> None:
    assert parse_decimal(text) == expected


@pytest.mark.parametrize("text", [
    pytest.param("NaN", id="nan"),
    pytest.param("Infinity", id="infinity"),
    pytest.param("", id="empty"),
    pytest.param(" 1", id="leading-space"),
    pytest.param("1,000", id="thousands-comma"),
    pytest.param("0x10", id="hex"),
    pytest.param("1e", id="dangling-exponent"),
    pytest.param("one", id="word"),
])
def test_parse_decimal_rejects(text: str) -> None:
    with pytest.raises(MoneyError):
        parse_decimal(text)


@pytest.mark.parametrize(("value", "expected"), [
    pytest.param("1", 0, id="integer"),
    pytest.param("1.50", 1, id="trailing-zero-not-counted"),
    pytest.param("0.000000001", 9, id="nine"),
    pytest.param("1E+3", 0, id="positive-exponent"),
])
def test_scale(value: str, expected: int) -> None:
    assert scale(D(value)) == expected


@pytest.mark.parametrize(("currency", "digits"), [
    pytest.param("USD", 2, id="USD"),
    pytest.param("EUR", 2, id="EUR"),
    pytest.param("JPY", 0, id="JPY"),
    pytest.param("KRW", 0, id="KRW"),
    pytest.param("KWD", 3, id="KWD"),
    pytest.param("BHD", 3, id="BHD"),
])
def test_minor_units(currency: str, digits: int) -> None:
    assert minor_units(currency) == digits


ROUNDING = [
    pytest.param("0.125", "USD", "0.13", id="usd-half-up-not-bankers"),
    pytest.param("0.135", "USD", "0.14", id="usd-half-up-odd"),
    pytest.param("0.1249999", "USD", "0.12", id="usd-just-below-half"),
    pytest.param("37.035", "USD", "37.04", id="usd-product"),
    pytest.param("-0.125", "USD", "-0.13", id="usd-negative-half-away-from-zero"),
    pytest.param("2", "USD", "2.00", id="usd-integer-gets-cents"),
    pytest.param("2.5", "JPY", "3", id="jpy-half-up"),
    pytest.param("1.5", "JPY", "2", id="jpy-half-up-odd"),
    pytest.param("0.4999", "JPY", "0", id="jpy-below-half"),
    pytest.param("35483.870967", "JPY", "35484", id="jpy-large"),
    pytest.param("1.0005", "KWD", "1.001", id="kwd-half-up"),
    pytest.param("1.0004", "KWD", "1.000", id="kwd-below-half"),
]


@pytest.mark.parametrize(("amount", "currency", "expected"), ROUNDING)
def test_round_money_half_up_to_minor_units(amount: str, currency: str, expected: str) -> None:
    rounded = round_money(D(amount), currency)
    assert rounded == D(expected)
    assert fmt(rounded) == expected  # exactly the currency's number of places


@pytest.mark.parametrize(("value", "currency", "expected"), [
    pytest.param(Fraction(1, 8), "USD", "0.13", id="eighth-half-up"),
    pytest.param(Fraction(1, 3), "USD", "0.33", id="third"),
    pytest.param(Fraction(2, 3), "USD", "0.67", id="two-thirds"),
    pytest.param(Fraction(-1, 8), "USD", "-0.13", id="negative-eighth"),
    pytest.param(Fraction(1, 2), "JPY", "1", id="jpy-half"),
    pytest.param(Fraction(5100 * 50000, 31 * 300), "JPY", "27419", id="jpy-27419.35"),
    pytest.param(Fraction(1, 2000), "KWD", "0.001", id="kwd-half-of-minor"),
])
def test_round_fraction_is_exact_half_up(value: Fraction, currency: str, expected: str) -> None:
    assert fmt(round_fraction(value, currency)) == expected


# -- months --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("month", "seconds"), [
    pytest.param(Month(2026, 2), 28 * 86400, id="feb-2026"),
    pytest.param(Month(2028, 2), 29 * 86400, id="feb-2028-leap"),
    pytest.param(Month(2026, 4), 30 * 86400, id="april"),
    pytest.param(Month(2026, 10), 31 * 86400, id="october"),
    pytest.param(Month(2026, 12), 31 * 86400, id="december-into-next-year"),
])
def test_month_seconds(month: Month, seconds: int) -> None:
    assert month.seconds() == seconds


@pytest.mark.parametrize(("at", "key"), [
    pytest.param(utc(2026, 10, 31, 23, 59, 59), "2026-10", id="last-second"),
    pytest.param(utc(2026, 11, 1), "2026-11", id="first-instant"),
    pytest.param(datetime(2026, 11, 1, 8, 0, tzinfo=timezone(timedelta(hours=9))), "2026-10",
                 id="tokyo-november-is-utc-october"),
    pytest.param(datetime(2026, 10, 31, 20, 0, tzinfo=timezone(timedelta(hours=-5))), "2026-11",
                 id="new-york-october-is-utc-november"),
])
def test_month_of_uses_utc(at: datetime, key: str) -> None:
    assert Month.of(at).key == key


def test_month_navigation() -> None:
    assert Month(2026, 12).next() == Month(2027, 1)
    assert Month(2026, 12).end == utc(2027, 1, 1)
    assert Month.parse("2026-03") == Month(2026, 3)
    assert str(Month(2026, 3)) == "2026-03"
    assert [m.key for m in months_between(Month(2026, 11), Month(2027, 2))] == [
        "2026-11", "2026-12", "2027-01", "2027-02"]
    assert months_between(Month(2026, 11), Month(2026, 10)) == []


@pytest.mark.parametrize(("start", "end", "expected"), [
    pytest.param(utc(2026, 9, 1), None, 31 * 86400, id="whole-month"),
    pytest.param(utc(2026, 10, 15), None, 17 * 86400, id="starts-mid-month"),
    pytest.param(utc(2026, 9, 1), utc(2026, 10, 15), 14 * 86400, id="ends-mid-month"),
    pytest.param(utc(2026, 10, 10, 12), utc(2026, 10, 20, 12), 10 * 86400, id="inside"),
    pytest.param(utc(2026, 11, 1), None, 0, id="starts-after"),
    pytest.param(utc(2026, 9, 1), utc(2026, 10, 1), 0, id="ends-exactly-at-start"),
])
def test_active_seconds_in_october(start: datetime, end: datetime | None, expected: int) -> None:
    assert active_seconds(Month(2026, 10), start, end) == expected


def test_service_period_cuts_the_month_to_the_subscription() -> None:
    oct_ = Month(2026, 10)
    assert service_period(oct_, utc(2026, 10, 15), None) == (utc(2026, 10, 15), utc(2026, 11, 1))
    assert service_period(oct_, utc(2026, 9, 1), utc(2026, 10, 15)) == (
        utc(2026, 10, 1), utc(2026, 10, 15))
    assert service_period(oct_, utc(2026, 11, 1), None) is None


@pytest.mark.parametrize(("at", "text"), [
    pytest.param(utc(2026, 10, 1), "2026-10-01T00:00:00Z", id="whole-seconds"),
    pytest.param(datetime(2026, 10, 1, 0, 0, 0, 5000, tzinfo=UTC), "2026-10-01T00:00:00.005000Z",
                 id="microseconds"),
    pytest.param(datetime(2026, 10, 10, 9, tzinfo=timezone(timedelta(hours=9))),
                 "2026-10-10T00:00:00Z", id="offset-to-utc"),
])
def test_iso(at: datetime, text: str) -> None:
    assert iso(at) == text


# -- invoice lines ---------------------------------------------------------------------------------

def fee_catalog(amount: str, currency: str, start: str, end: str | None = None) -> Catalog:
    return simple_catalog(fees=[{"id": "base", "amount": amount}], currency=currency,
                          start=start, end=end, charges=[])


PRORATION = [
    # (fee, currency, subscription start, end, month, expected line)
    pytest.param("300.00", "USD", "2026-10-01T00:00:00Z", None, Month(2026, 10), "300.00",
                 id="full-month"),
    pytest.param("300.00", "USD", "2026-10-01T00:00:00Z", None, Month(2026, 11), "300.00",
                 id="following-full-month"),
    # 300 * 17/31 = 164.516...
    pytest.param("300.00", "USD", "2026-10-15T00:00:00Z", None, Month(2026, 10), "164.52",
                 id="starts-mid-month"),
    # 300 * 14/31 = 135.483...; with the line above, a plan change bills 300.00 in all
    pytest.param("300.00", "USD", "2026-09-01T00:00:00Z", "2026-10-15T00:00:00Z", Month(2026, 10),
                 "135.48", id="ends-mid-month"),
    # 300 * 10/31 = 96.774...
    pytest.param("300.00", "USD", "2026-10-10T12:00:00Z", "2026-10-20T12:00:00Z",
                 Month(2026, 10), "96.77", id="starts-and-ends-mid-month"),
    # 300 * 14/28 = 150 exactly in February; the same 14 days of October would be 135.48
    pytest.param("300.00", "USD", "2026-02-15T00:00:00Z", None, Month(2026, 2), "150.00",
                 id="february-28-days"),
    # 300 * 15/29 = 155.172... in a leap February
    pytest.param("300.00", "USD", "2028-02-15T00:00:00Z", None, Month(2028, 2), "155.17",
                 id="february-29-days"),
    # 300 * 1/31 = 9.677...
    pytest.param("300.00", "USD", "2026-03-31T00:00:00Z", None, Month(2026, 3), "9.68",
                 id="last-day-of-31-day-month"),
    # 300 * 1/2678400 = 0.000112...
    pytest.param("300.00", "USD", "2026-10-31T23:59:59Z", None, Month(2026, 10), "0.00",
                 id="last-second"),
    # 09:00+09:00 is midnight UTC: 300 * 22/31 = 212.903...
    pytest.param("300.00", "USD", "2026-10-10T09:00:00+09:00", None, Month(2026, 10), "212.90",
                 id="offset-start"),
    # 0.25 * 14/28 = 0.125 -> half up
    pytest.param("0.25", "USD", "2026-02-15T00:00:00Z", None, Month(2026, 2), "0.13",
                 id="usd-half-up"),
    # 50000 * 22/31 = 35483.87...
    pytest.param("50000", "JPY", "2026-10-10T00:00:00Z", None, Month(2026, 10), "35484",
                 id="jpy-whole-yen"),
    # 1 * 14/28 = 0.5 -> 1
    pytest.param("1", "JPY", "2026-02-15T00:00:00Z", None, Month(2026, 2), "1",
                 id="jpy-half-up"),
    # 10 * 10/30 = 3.3333...
    pytest.param("10.000", "KWD", "2026-11-21T00:00:00Z", None, Month(2026, 11), "3.333",
                 id="kwd-three-places"),
]


@pytest.mark.parametrize(("fee", "currency", "start", "end", "month", "expected"), PRORATION)
def test_fixed_fee_prorated_by_active_share_of_month(fee: str, currency: str, start: str,
                                                     end: str | None, month: Month,
                                                     expected: str) -> None:
    cat = fee_catalog(fee, currency, start, end)
    lines = period_lines(cat, cat.subscriptions["sub-1"], month, {})
    assert list(lines) == ["fee:base"]
    line = lines["fee:base"]
    assert (line.kind, line.ref, line.quantity) == ("fixed_fee", "base", None)
    assert fmt(line.amount) == expected


def test_plan_change_mid_month_bills_both_sides_of_the_boundary() -> None:
    doc = simple_doc(fees=[{"id": "base", "amount": "300.00"}], charges=[])
    doc["customers"] = [customer("c", ["s1"], [
        sub("old", "p", "2026-09-01T00:00:00Z", "2026-10-15T00:00:00Z"),
        sub("new", "p", "2026-10-15T00:00:00Z"),
    ])]
    cat = parse_catalog(doc)
    oct_ = Month(2026, 10)
    old = period_lines(cat, cat.subscriptions["old"], oct_, {})["fee:base"].amount
    new = period_lines(cat, cat.subscriptions["new"], oct_, {})["fee:base"].amount
    assert (old, new) == (D("135.48"), D("164.52"))   # 300 * 14/31, 300 * 17/31
    assert old + new == D("300.00")


USAGE_ROUNDING = [
    # (currency, unit price, quantity, expected usage line)
    pytest.param("USD", "0.005", "25", "0.13", id="usd-0.125-half-up"),
    pytest.param("USD", "0.005", "23", "0.12", id="usd-0.115-half-up"),
    pytest.param("USD", "0.003", "12345", "37.04", id="usd-37.035"),
    pytest.param("USD", "0.004", "1", "0.00", id="usd-rounds-to-zero"),
    pytest.param("JPY", "0.35", "10", "4", id="jpy-3.5"),
    pytest.param("JPY", "0.35", "3", "1", id="jpy-1.05"),
    pytest.param("KWD", "0.0005", "1", "0.001", id="kwd-0.0005"),
    pytest.param("USD", "4.00", "0", "0.00", id="zero-usage-still-a-line"),
]


@pytest.mark.parametrize(("currency", "unit", "q", "expected"), USAGE_ROUNDING)
def test_usage_line_rounded_once_half_up(currency: str, unit: str, q: str,
                                         expected: str) -> None:
    cat = simple_catalog(currency=currency,
                         charges=[{"meter": "calls", "model": "per_unit", "unit_price": unit}])
    lines = period_lines(cat, cat.subscriptions["sub-1"], Month(2026, 10), {"calls": D(q)})
    assert list(lines) == ["usage:calls"]
    line = lines["usage:calls"]
    assert (line.kind, line.ref, line.quantity) == ("usage", "calls", D(q))
    assert fmt(line.amount) == expected


MINIMUMS = [
    # per_unit 4.00 with minimum 50.00; (quantity, usage line, true-up line or None, subtotal)
    pytest.param("0", "0.00", "50.00", "50.00", id="no-usage-whole-minimum"),
    pytest.param("3", "12.00", "38.00", "50.00", id="below-minimum"),          # 50 - 12
    pytest.param("12.5", "50.00", None, "50.00", id="exactly-minimum-no-line"),
    pytest.param("13", "52.00", None, "52.00", id="above-minimum"),
]


@pytest.mark.parametrize(("q", "usage", "true_up", "subtotal"), MINIMUMS)
def test_minimum_true_up(q: str, usage: str, true_up: str | None, subtotal: str) -> None:
    cat = simple_catalog(charges=[{"meter": "calls", "model": "per_unit", "unit_price": "4.00",
                                   "minimum": "50.00"}])
    s = cat.subscriptions["sub-1"]
    lines = period_lines(cat, s, Month(2026, 10), {"calls": D(q)})
    assert fmt(lines["usage:calls"].amount) == usage
    if true_up is None:
        assert "minimum:calls" not in lines
    else:
        line = lines["minimum:calls"]
        assert (line.kind, line.ref, fmt(line.amount)) == ("minimum_true_up", "calls", true_up)
    cand = candidate(cat, s, Month(2026, 10), lines, "sub-1:2026-10")
    assert fmt(cand.subtotal) == subtotal


def test_minimum_true_up_is_against_the_rounded_usage() -> None:
    # 3 * 0.333 = 0.999 rounds to 1.00; the true-up is 5.00 - 1.00 = 4.00, not 4.001
    cat = simple_catalog(charges=[{"meter": "calls", "model": "per_unit", "unit_price": "0.333",
                                   "minimum": "5.00"}])
    lines = period_lines(cat, cat.subscriptions["sub-1"], Month(2026, 10), {"calls": D(3)})
    assert fmt(lines["usage:calls"].amount) == "1.00"
    assert fmt(lines["minimum:calls"].amount) == "4.00"


def test_minimum_is_not_prorated() -> None:
    # a subscription active 17 of 31 days still owes the whole 50.00 minimum
    cat = simple_catalog(start="2026-10-15T00:00:00Z",
                         fees=[{"id": "base", "amount": "31.00"}],
                         charges=[{"meter": "calls", "model": "per_unit", "unit_price": "4.00",
                                   "minimum": "50.00"}])
    lines = period_lines(cat, cat.subscriptions["sub-1"], Month(2026, 10), {"calls": D(1)})
    assert {k: fmt(v.amount) for k, v in lines.items()} == {
        "fee:base": "17.00",          # 31 * 17/31
        "usage:calls": "4.00",
        "minimum:calls": "46.00",     # 50 - 4, in full
    }


def test_every_plan_charge_gets_a_usage_line_in_plan_order() -> None:
    cat = simple_catalog(fees=[{"id": "base", "amount": "10.00"},
                               {"id": "support", "amount": "5.00",
                                "revenue_recognition": "point_in_time"}],
                         charges=[
                             {"meter": "tokens", "model": "package", "package_size": "1000",
                              "package_price": "0.50"},
                             {"meter": "calls", "model": "per_unit", "unit_price": "0.01",
                              "minimum": "1.00"},
                             {"meter": "peak", "model": "volume",
                              "tiers": [{"up_to": "10", "unit_price": "1", "flat_price": "2"},
                                        {"unit_price": "0.5"}]},
                         ])
    lines = period_lines(cat, cat.subscriptions["sub-1"], Month(2026, 10), {})
    assert [(k, v.kind, v.quantity, fmt(v.amount), v.recognition) for k, v in lines.items()] == [
        ("fee:base", "fixed_fee", None, "10.00", "ratable"),
        ("fee:support", "fixed_fee", None, "5.00", "point_in_time"),
        ("usage:tokens", "usage", D(0), "0.00", "consumption"),
        ("usage:calls", "usage", D(0), "0.00", "consumption"),
        ("minimum:calls", "minimum_true_up", None, "1.00", "consumption"),
        ("usage:peak", "usage", D(0), "0.00", "consumption"),   # volume: Q=0 costs 0, no flat
    ]


@pytest.mark.parametrize(("q_a", "q_b", "subtotal"), [
    # each line 0.004 -> 0.00; rounding the unrounded sum 0.008 would give 0.01
    pytest.param("1", "1", "0.00", id="two-lines-each-rounding-down"),
    # each 0.005 -> 0.01; rounding the unrounded sum 0.010 would give 0.01
    pytest.param("1.25", "1.25", "0.02", id="two-lines-each-rounding-up"),
])
def test_subtotal_is_sum_of_rounded_lines(q_a: str, q_b: str, subtotal: str) -> None:
    cat = simple_catalog(charges=[
        {"meter": "calls", "model": "per_unit", "unit_price": "0.004"},
        {"meter": "tokens", "model": "per_unit", "unit_price": "0.004"},
    ])
    s = cat.subscriptions["sub-1"]
    lines = period_lines(cat, s, Month(2026, 10), {"calls": D(q_a), "tokens": D(q_b)})
    cand = candidate(cat, s, Month(2026, 10), lines, "sub-1:2026-10")
    assert fmt(cand.subtotal) == subtotal
    assert cand.subtotal == sum((ln.amount for ln in cand.lines), D(0))


HOLDS = [
    pytest.param("TAX-1", 30, "ready", [], id="complete"),
    pytest.param("TAX-1", 0, "ready", [], id="zero-day-terms-are-terms"),
    pytest.param("", 30, "held", ["MISSING_TAX_REGISTRATION"], id="empty-tax-registration"),
    pytest.param(None, 30, "held", ["MISSING_TAX_REGISTRATION"], id="no-tax-registration"),
    pytest.param("TAX-1", None, "held", ["MISSING_PAYMENT_TERMS"], id="no-payment-terms"),
    pytest.param(None, None, "held", ["MISSING_TAX_REGISTRATION", "MISSING_PAYMENT_TERMS"],
                 id="both-missing"),
]


@pytest.mark.parametrize(("tax", "terms", "status", "reasons"), HOLDS)
def test_candidate_status_and_hold_reasons(tax: str | None, terms: int | None, status: str,
                                           reasons: list[str]) -> None:
    cat = simple_catalog(tax=tax, terms=terms, start="2026-10-15T00:00:00Z",
                         fees=[{"id": "base", "amount": "31.00"}],
                         charges=[{"meter": "calls", "model": "per_unit", "unit_price": "0.10"}])
    s = cat.subscriptions["sub-1"]
    month = Month(2026, 10)
    cand = candidate(cat, s, month, period_lines(cat, s, month, {"calls": D(7)}), "sub-1:2026-10")
    assert (cand.status, cand.hold_reasons) == (status, reasons)
    # held or not, the candidate is complete: 31 * 17/31 + 7 * 0.10
    assert cand.subtotal == D("17.70")
    assert cand.invoice_candidate_id == "sub-1:2026-10"
    assert (cand.candidate_type, cand.adjusts) == ("invoice", None)
    assert (cand.customer_id, cand.subscription_id, cand.plan_id, cand.legal_entity,
            cand.currency, cand.billing_period) == ("c", "sub-1", "p", "le-us", "USD", "2026-10")
    assert (cand.period_start, cand.period_end) == (utc(2026, 10, 15), utc(2026, 11, 1))
    assert [(ln.line_id, ln.kind, ln.fee_id, ln.meter) for ln in cand.lines] == [
        ("sub-1:2026-10:fee:base", "fixed_fee", "base", None),
        ("sub-1:2026-10:usage:calls", "usage", None, "calls"),
    ]


def test_diff_lines_carries_only_changed_lines_as_deltas() -> None:
    cat = simple_catalog(charges=[{"meter": "calls", "model": "per_unit", "unit_price": "4.00",
                                   "minimum": "50.00"}],
                         fees=[{"id": "base", "amount": "10.00"}])
    s = cat.subscriptions["sub-1"]
    month = Month(2026, 10)
    before = period_lines(cat, s, month, {"calls": D(10)})   # 10 + 40 + true-up 10
    after = period_lines(cat, s, month, {"calls": D(13)})    # 10 + 52
    delta = diff_lines(before, after)
    assert {k: (v.quantity, v.amount) for k, v in delta.items()} == {
        "usage:calls": (D(3), D("12.00")),
        "minimum:calls": (None, D("-10.00")),
    }
    assert diff_lines(after, after) == {}
