"""Prepaid credits (operators/credits.py): after tax, ready originals only, in invoice-date then
candidate-id order, the credit expiring first going first; and the same in the dataflow."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest
from conftest import event, run, sub, utc
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_flow import canonical, run_flow
from test_tax_discounts import ACCOUNTS, doc

from operators.catalog import CatalogError, parse_catalog
from operators.clock import fixed_clock
from operators.credits import credit_report, invoice_date
from operators.erp import build_erp
from operators.ingest import IngestConfig
from operators.reconcile import reconcile
from operators.reconcile import summarize as _summarize

D = Decimal


def credit(ident: str, amount: str, granted: str = "2026-10-01T00:00:00Z",
           expires: str = "2027-01-01T00:00:00Z", currency: str = "EUR") -> dict[str, Any]:
    return {"id": ident, "amount": amount, "currency": currency, "granted": granted,
            "expires": expires}


def with_credits(*credits: dict[str, Any], **kw: Any) -> dict[str, Any]:
    d = doc(**kw)
    d["customers"][0]["credits"] = list(credits)
    return d


def months(*spec: tuple[int, int], close: bool = True) -> list[bytes]:
    """`n` calls on the 5th of each month (1.00 each), and a call in December closing November."""
    lines = []
    for month, n in spec:
        lines += [event(f"m{month}-{i}", time=utc(2026, month, 5, 0, 0, i).isoformat())
                  for i in range(n)]
    return [*lines, event("close", time=utc(2026, 12, 3).isoformat())] if close else lines


def originals(result: Any) -> dict[str, Any]:
    return {c.billing_period: c for c in result.candidates if c.adjusts is None}


# 100.00 fee + n calls, 19 % VAT: October 10 calls -> 110.00 + 20.90 = 130.90
CASES = {
    "after tax, the rest carried to the next month": (
        [credit("prepaid", "200.00")], [(10, 10), (11, 10)],
        {"2026-10": [("prepaid", "130.90")], "2026-11": [("prepaid", "69.10")]},
        {"2026-10": "0.00", "2026-11": "61.80"}),
    "the one expiring first goes first": (
        [credit("long", "100.00"), credit("short", "50.00", expires="2026-12-01T00:00:00Z")],
        [(10, 10), (11, 10)],
        {"2026-10": [("short", "50.00"), ("long", "80.90")], "2026-11": [("long", "19.10")]},
        {"2026-10": "0.00", "2026-11": "111.80"}),
    "not yet granted on the invoice date": (
        [credit("later", "500.00", granted="2026-11-01T00:00:00Z")], [(10, 10), (11, 10)],
        {"2026-10": [], "2026-11": [("later", "130.90")]},
        {"2026-10": "130.90", "2026-11": "0.00"}),
    # dated 2026-10-31 at 00:00 UTC: a credit expiring then is no longer usable
    "expired on the invoice date": (
        [credit("gone", "500.00", expires="2026-10-31T00:00:00Z")], [(10, 10), (11, 10)],
        {"2026-10": [], "2026-11": []}, {"2026-10": "130.90", "2026-11": "130.90"}),
    "another currency": (
        [credit("usd", "500.00", currency="USD")], [(10, 10)],
        {"2026-10": []}, {"2026-10": "130.90"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_credit_rules(case: str) -> None:
    credits, spec, applied, due = CASES[case]
    cat = parse_catalog(with_credits(*credits))
    result = run(cat, months(*spec))
    got = originals(result)
    for period, want in applied.items():
        cand = got[period]
        assert [(c.credit_id, str(c.amount)) for c in cand.credits_applied] == want
        assert str(cand.amount_due) == due[period]
        assert cand.amount_due == cand.total - sum(c.amount for c in cand.credits_applied)
    report = reconcile(cat, result.stats, _summarize(result.windows), result.candidates,
                       result.exceptions, build_erp(cat, result.candidates))
    assert report.balanced, report.problems


def test_a_credit_that_expires_unused_is_reported_expired() -> None:
    cat = parse_catalog(with_credits(credit("q3", "40.00", granted="2026-07-01T00:00:00Z",
                                            expires="2026-10-01T00:00:00Z"),
                                     credit("q4", "500.00")))
    result = run(cat, months((10, 10), (11, 10)))
    last = max(invoice_date(c) for c in result.candidates)
    rows = {r["credit_id"]: r for r in credit_report(cat, result.candidates, last)}
    assert {k: rows["q3"][k] for k in ("applied", "remaining", "expired")} == {
        "applied": "0.00", "remaining": "0.00", "expired": "40.00"}
    # October and November 130.90 each, December (the closing call: 101.00 + VAT) 120.19
    assert {k: rows["q4"][k] for k in ("applied", "remaining", "expired")} == {
        "applied": "381.99", "remaining": "118.01", "expired": "0.00"}


def test_adjustments_and_held_candidates_consume_nothing() -> None:
    cat = parse_catalog(with_credits(credit("prepaid", "1000.00"), tax_code=None))
    result = run(cat, months((10, 10)))
    (held,) = [c for c in result.candidates if c.billing_period == "2026-10"]
    assert (held.status, held.credits_applied) == ("held", [])  # MISSING_TAX_CODE
    ready = parse_catalog(with_credits(credit("prepaid", "1000.00")))
    late = [*months((10, 10)), event("late", time=utc(2026, 10, 20).isoformat())]
    result = run(ready, late)
    adjustments = [c for c in result.candidates if c.adjusts]
    assert adjustments and all(c.credits_applied == [] for c in adjustments)
    assert all(c.amount_due == c.total for c in adjustments)


def test_a_held_customer_released_takes_its_turn_in_date_order() -> None:
    # Held for its missing tax code while the catalog is wrong, the customer's candidates
    # consume nothing; once the catalog is fixed and the run repeated, October comes first in
    # date order and the credit is spent on it before November.
    def catalog(tax_code: str | None) -> Any:
        d = with_credits(credit("prepaid", "150.00"), tax_code=tax_code)
        return parse_catalog(d)

    held = run(catalog(None), months((10, 10), (11, 10)))
    assert all(c.credits_applied == [] for c in held.candidates)
    released = run(catalog("DE-VAT-19"), months((10, 10), (11, 10)))
    got = originals(released)
    assert [(c.credit_id, str(c.amount)) for c in got["2026-10"].credits_applied] == [
        ("prepaid", "130.90")]
    assert [(c.credit_id, str(c.amount)) for c in got["2026-11"].credits_applied] == [
        ("prepaid", "19.10")]


def test_credits_across_subscriptions_go_by_invoice_date_then_id() -> None:
    d = with_credits(credit("prepaid", "150.00"))
    plan = d["customers"][0]["subscriptions"][0]["plan"]
    # sub-a ends mid-October (invoice dated the 14th), sub-b starts then (dated the 31st)
    d["customers"][0]["subscriptions"] = [
        sub("sub-b", plan, "2026-10-15T00:00:00Z"),
        sub("sub-a", plan, "2026-10-01T00:00:00Z", "2026-10-15T00:00:00Z")]
    cat = parse_catalog(d)
    lines = [event("a", time=utc(2026, 10, 3).isoformat()),
             event("b", time=utc(2026, 10, 20).isoformat()),
             event("close", time=utc(2026, 11, 3).isoformat())]
    result = run(cat, lines)
    by_id = {c.invoice_candidate_id: c for c in result.candidates}
    first, second = by_id["sub-a:2026-10"], by_id["sub-b:2026-10"]
    assert invoice_date(first) < invoice_date(second)
    assert first.amount_due == 0 and first.credits_applied[0].amount == first.total
    assert second.credits_applied[0].amount == min(second.total, D("150.00") - first.total)
    november = by_id["sub-b:2026-11"]
    assert november.credits_applied[0].amount == D("150.00") - first.total - second.total


CATALOG_ERRORS = {
    "expires before granted": (credit("x", "5.00", granted="2026-10-01T00:00:00Z",
                                      expires="2026-09-01T00:00:00Z"), "must be after granted"),
    "finer than the currency": (credit("x", "5.001"), "more decimals than EUR allows"),
    "unknown currency": (credit("x", "5.00", currency="EURO"), "unknown ISO 4217 currency"),
    "zero": (credit("x", "0"), "must be greater than zero"),
    "no offset": (credit("x", "5.00", granted="2026-10-01T00:00:00"), "has no UTC offset"),
}


@pytest.mark.parametrize("case", list(CATALOG_ERRORS))
def test_credit_catalog_errors(case: str) -> None:
    bad, expected = CATALOG_ERRORS[case]
    with pytest.raises(CatalogError) as err:
        parse_catalog(with_credits(bad))
    assert any(expected in p for p in err.value.problems), err.value.problems


def test_a_duplicate_credit_id_is_an_error() -> None:
    with pytest.raises(CatalogError) as err:
        parse_catalog(with_credits(credit("x", "5.00"), credit("x", "6.00")))
    assert any("duplicate credit id 'x'" in p for p in err.value.problems)


def test_ar_invoice_and_journal_carry_the_credit() -> None:
    cat = parse_catalog(with_credits(credit("prepaid", "100.00")))
    result = run(cat, months((10, 10)))
    erp = build_erp(cat, result.candidates)
    (inv,) = [a for a in erp.ar_invoices if a.billing_period == "2026-10"]
    assert [(c.credit_id, str(c.amount), c.gl_account) for c in inv.credits_applied] == [
        ("prepaid", "100.00", "2450")]
    assert (str(inv.total), str(inv.amount_due)) == ("130.90", "30.90")
    (journal,) = [j for j in erp.journals if j.period == "2026-10"]
    sides = {x.role: (str(x.debit), str(x.credit)) for x in journal.lines}
    assert sides["receivable"] == ("30.90", "0.00")
    assert sides["customer_credits"] == ("100.00", "0.00")
    assert journal.total_debit == journal.total_credit
    no_account = parse_catalog(with_credits(credit("prepaid", "100.00"), accounts={
        k: v for k, v in ACCOUNTS.items() if k != "customer_credits"}))
    (exc,) = [e for e in build_erp(no_account, run(no_account, months((10, 10))).candidates)
              .exceptions if e.billing_period == "2026-10"]
    assert exc.reasons == ["MISSING_GL_ACCOUNT"] and "customer_credits" in exc.details[0]


def test_the_dataflow_applies_credits_as_the_engine_does() -> None:
    d = with_credits(credit("short", "60.00", expires="2026-11-01T00:00:00Z"),
                     credit("long", "180.00"))
    # a second customer with its own credit, sharing nothing
    other = copy.deepcopy(d["customers"][0])
    other.update(id="c2", subjects=["s2"], credits=[credit("c2-credit", "75.00")],
                 subscriptions=[sub("sub-2", "p", "2026-10-01T00:00:00Z")])
    d["customers"].append(other)
    cat = parse_catalog(d)
    lines = [*months((10, 10), (11, 7), close=False),
             *[event(f"o{i}", subject="s2", time=utc(2026, 10, 9, 0, 0, i).isoformat())
               for i in range(4)],
             event("close", time=utc(2026, 12, 3).isoformat())]
    expected = run(cat, lines)
    assert any(c.credits_applied for c in expected.candidates if c.customer_id == "c2")
    for workers in (1, 2):
        for chunk in (1, 5, 1000):
            got = run_flow(cat, lines, workers, chunk,
                           IngestConfig(clock=fixed_clock(utc(2030, 1, 1))))
            assert canonical(got)["candidates"] == canonical(expected)["candidates"]


@settings(max_examples=40, deadline=None)
@given(grants=st.lists(st.tuples(st.sampled_from(["0.01", "25.00", "130.90", "400.00"]),
                                 st.sampled_from(["2026-10-01", "2026-11-01"]),
                                 st.sampled_from(["2026-11-01", "2026-12-01", "2027-01-01"])),
                       min_size=1, max_size=4),
       calls=st.lists(st.integers(0, 30), min_size=2, max_size=2))
def test_credits_never_exceed_grants_and_amounts_due_stay_non_negative(
        grants: list[tuple[str, str, str]], calls: list[int]) -> None:
    assume(all(g < e for _, g, e in grants))
    credits = [credit(f"c{n}", amount, f"{g}T00:00:00Z", f"{e}T00:00:00Z")
               for n, (amount, g, e) in enumerate(grants)]
    cat = parse_catalog(with_credits(*credits))
    result = run(cat, months((10, calls[0]), (11, calls[1])))
    used: dict[str, Decimal] = {}
    for cand in result.candidates:
        assert cand.amount_due >= 0
        assert cand.amount_due == cand.total - sum(c.amount for c in cand.credits_applied)
        for c in cand.credits_applied:
            used[c.credit_id] = used.get(c.credit_id, D(0)) + c.amount
    for n, (amount, _, _) in enumerate(grants):
        assert used.get(f"c{n}", D(0)) <= D(amount)
    erp = build_erp(cat, result.candidates)
    assert all(j.total_debit == j.total_credit for j in erp.journals)
