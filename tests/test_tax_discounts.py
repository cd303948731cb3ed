"""Taxes and discounts on invoice candidates, AR invoices and journals: every rule as a table.

The rules (operators/invoicing.py): percent discounts on the undiscounted lines of their scope,
each rounded once; then amount discounts in the order listed, each capped so the subtotal never
goes below zero; tax once per candidate, round_half_up(subtotal x rate); an adjustment carries
the deltas of lines, discount lines and tax, so candidate + adjustments = the period from scratch.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from conftest import event, run, simple_doc, utc
from hypothesis import given, settings
from hypothesis import strategies as st

from operators import ids
from operators.catalog import Catalog, CatalogError, parse_catalog
from operators.erp import build_erp, erp_chain
from operators.invoicing import candidate, period_lines
from operators.periods import Month
from schemas.records import InvoiceCandidate

D = Decimal
OCT = Month(2026, 10)
ACCOUNTS = {"receivable": "1300", "usage_revenue": "4100", "subscription_revenue": "4110",
            "deferred_revenue": "2500", "tax_payable": "2700", "discounts": "4190",
            "customer_credits": "2450"}
TAX_CODES = [{"id": "DE-VAT-19", "rate": "0.19"},
             {"id": "EU-REVERSE-CHARGE", "rate": "0", "reverse_charge": True},
             {"id": "JP-CT-10", "rate": "0.10"}]


def doc(*, currency: str = "EUR", tax_code: str | None = "DE-VAT-19",
        discounts: list[dict[str, Any]] | None = None, fee: str | None = "100.00",
        unit_price: str = "1.00", minimum: str | None = None,
        tax_codes: list[dict[str, Any]] | None = None,
        accounts: dict[str, str] | None = None) -> dict[str, Any]:
    charge: dict[str, Any] = {"meter": "calls", "model": "per_unit", "unit_price": unit_price}
    if minimum is not None:
        charge["minimum"] = minimum
    fees = [{"id": "platform", "amount": fee}] if fee is not None else []
    out = simple_doc(charges=[charge], fees=fees, currency=currency)
    entity = out["legal_entities"][0]
    entity["gl_accounts"] = dict(ACCOUNTS if accounts is None else accounts)
    entity["tax_codes"] = copy.deepcopy(TAX_CODES if tax_codes is None else tax_codes)
    customer = out["customers"][0]
    if tax_code is not None:
        customer["tax_code"] = tax_code
    if discounts is not None:
        customer["subscriptions"][0]["discounts"] = discounts
    return out


def priced(cat: Catalog, calls: str, month: Month = OCT) -> InvoiceCandidate:
    sub = cat.subscriptions["sub-1"]
    lines = period_lines(cat, sub, month, {"calls": D(calls)})
    return candidate(cat, sub, month, lines, ids.candidate_id(sub.id, month.key))


def amounts(cand: InvoiceCandidate) -> dict[str, str]:
    return {x.line_id.removeprefix(cand.invoice_candidate_id + ":"): str(x.amount)
            for x in cand.lines}


# -- discounts --------------------------------------------------------------------------------

DISCOUNT_CASES = {
    # 20 % of usage only: 20 % of 333.33 = 66.666 -> 66.67, the fee untouched
    "percent of usage": (
        [{"id": "launch", "percent": "20", "applies_to": "usage", "from": "2026-10"}],
        "333.33", {"fee:platform": "100.00", "usage:calls": "333.33",
                   "discount:launch": "-66.67"}, "366.66"),
    "percent of fixed fees": (
        [{"id": "f", "percent": "10", "applies_to": "fixed_fees", "from": "2026-10"}],
        "50", {"fee:platform": "100.00", "usage:calls": "50.00", "discount:f": "-10.00"},
        "140.00"),
    "percent of all, the default scope": (
        [{"id": "a", "percent": "12.5", "from": "2026-10"}],
        "0.04", {"fee:platform": "100.00", "usage:calls": "0.04", "discount:a": "-12.51"},
        "87.53"),
    # two percents are each on the undiscounted lines, not compounded
    "two percents, not compounded": (
        [{"id": "a", "percent": "10", "from": "2026-10"},
         {"id": "b", "percent": "10", "from": "2026-10"}],
        "100", {"fee:platform": "100.00", "usage:calls": "100.00", "discount:a": "-20.00",
                "discount:b": "-20.00"}, "160.00"),
    # percent first, then the amount, whatever the order listed
    "amount after percent": (
        [{"id": "goodwill", "amount": "25.00", "from": "2026-10"},
         {"id": "launch", "percent": "50", "from": "2026-10"}],
        "100", {"fee:platform": "100.00", "usage:calls": "100.00",
                "discount:goodwill": "-25.00", "discount:launch": "-100.00"}, "75.00"),
    "an amount that would go below zero is capped": (
        [{"id": "big", "amount": "150.00", "from": "2026-10"}],
        "20", {"fee:platform": "100.00", "usage:calls": "20.00", "discount:big": "-120.00"},
        "0.00"),
    "amounts in order, the second capped to what is left": (
        [{"id": "one", "amount": "100.00", "from": "2026-10"},
         {"id": "two", "amount": "100.00", "from": "2026-10"}],
        "30", {"fee:platform": "100.00", "usage:calls": "30.00", "discount:one": "-100.00",
               "discount:two": "-30.00"}, "0.00"),
    "not yet in force": (
        [{"id": "later", "percent": "20", "from": "2026-11"}],
        "10", {"fee:platform": "100.00", "usage:calls": "10.00"}, "110.00"),
    "expired after its months": (
        [{"id": "past", "percent": "20", "from": "2026-08", "months": 2}],
        "10", {"fee:platform": "100.00", "usage:calls": "10.00"}, "110.00"),
    "its last month": (
        [{"id": "last", "percent": "20", "from": "2026-08", "months": 3}],
        "10", {"fee:platform": "100.00", "usage:calls": "10.00", "discount:last": "-22.00"},
        "88.00"),
    # a minimum true-up is usage: the usage discount applies to it too
    "usage scope includes the minimum true-up": (
        [{"id": "u", "percent": "10", "applies_to": "usage", "from": "2026-10"}],
        "5", {"fee:platform": "100.00", "usage:calls": "5.00", "minimum:calls": "45.00",
              "discount:u": "-5.00"}, "145.00"),
}


@pytest.mark.parametrize("case", list(DISCOUNT_CASES))
def test_discount_rules(case: str) -> None:
    discounts, calls, want, subtotal = DISCOUNT_CASES[case]
    minimum = "50.00" if "minimum" in case else None
    cand = priced(parse_catalog(doc(discounts=discounts, minimum=minimum)), calls)
    assert amounts(cand) == want
    assert str(cand.subtotal) == subtotal
    assert cand.subtotal == sum(x.amount for x in cand.lines)
    for line in cand.lines:
        if line.kind == "discount":
            assert line.line_id == f"sub-1:2026-10:discount:{line.discount_id}"
            assert line.amount <= 0 and line.revenue_recognition == "proportional"


# -- tax ----------------------------------------------------------------------------------------

TAX_CASES = {
    # 366.66 x 0.19 = 69.6654 -> 69.67
    "VAT on the discounted subtotal": ("EUR", "DE-VAT-19", "333.33", [
        {"id": "launch", "percent": "20", "applies_to": "usage", "from": "2026-10"}],
        "366.66", "69.67", False),
    # JPY has no minor unit: 1005 x 0.10 = 100.5 rounds half up to 101
    "JPY rounds half up to the yen": ("JPY", "JP-CT-10", "905", [], "1005", "101", False),
    "reverse charge: rate 0, said so": ("EUR", "EU-REVERSE-CHARGE", "10", [], "110.00",
                                        "0.00", True),
    "a zero subtotal has zero tax": ("EUR", "DE-VAT-19", "0", [
        {"id": "all", "amount": "1000.00", "from": "2026-10"}], "0.00", "0.00", False),
}


@pytest.mark.parametrize("case", list(TAX_CASES))
def test_tax_rules(case: str) -> None:
    currency, code, calls, discounts, subtotal, tax, reverse = TAX_CASES[case]
    fee = "100" if currency == "JPY" else "100.00"
    cand = priced(parse_catalog(doc(currency=currency, tax_code=code, discounts=discounts,
                                    fee=fee)), calls)
    assert (str(cand.subtotal), str(cand.tax_total)) == (subtotal, tax)
    assert cand.total == cand.subtotal + cand.tax_total == cand.amount_due
    (line,) = cand.taxes
    assert (line.tax_code, str(line.base), str(line.amount), line.reverse_charge) == (
        code, subtotal, tax, reverse)
    assert cand.status == "ready"


def test_an_entity_without_tax_codes_computes_no_tax() -> None:
    cand = priced(parse_catalog(doc(tax_code=None, tax_codes=[])), "10")
    assert (cand.taxes, cand.tax_total, cand.total) == ([], D("0.00"), D("110.00"))
    assert cand.status == "ready"


def test_a_missing_tax_code_holds_the_candidate_and_names_the_fix() -> None:
    cat = parse_catalog(doc(tax_code=None))
    cand = priced(cat, "10")
    assert (cand.status, cand.hold_reasons, cand.taxes) == ("held", ["MISSING_TAX_CODE"], [])
    erp = build_erp(cat, [cand])
    (exc,) = erp.exceptions
    assert exc.reasons == ["MISSING_TAX_CODE"] and exc.total == D("110.00")
    assert "tax_code" in exc.details[0] and "DE-VAT-19" in exc.details[0]
    assert erp.ar_invoices == []


# -- catalog errors: a careless editor ---------------------------------------------------------

def _problems(d: dict[str, Any]) -> list[str]:
    with pytest.raises(CatalogError) as err:
        parse_catalog(d)
    return err.value.problems


def _with_discount(**fields: Any) -> dict[str, Any]:
    return doc(discounts=[{"id": "d", "from": "2026-10", **fields}])


CATALOG_ERRORS = {
    "unknown tax code": (doc(tax_code="DE-VAT-7"), "customers[0].tax_code: unknown tax code"),
    "tax code on an entity with none": (doc(tax_codes=[]), "declares no tax_codes"),
    "rate above 1": (doc(tax_codes=[{"id": "DE-VAT-19", "rate": "19"}]), "at most 1"),
    "unquoted rate": (doc(tax_codes=[{"id": "DE-VAT-19", "rate": 0.19}]), "unquoted float"),
    "reverse charge with a rate": (
        doc(tax_codes=[{"id": "DE-VAT-19", "rate": "0.19", "reverse_charge": True}]),
        "reverse-charge tax code has rate"),
    "reverse charge not a bool": (
        doc(tax_codes=[{"id": "DE-VAT-19", "rate": "0", "reverse_charge": "yes"}]),
        "must be true or false"),
    "duplicate tax code": (
        doc(tax_codes=[{"id": "DE-VAT-19", "rate": "0.19"}, {"id": "DE-VAT-19", "rate": "0"}]),
        "duplicate tax code id"),
    "percent and amount": (_with_discount(percent="10", amount="5.00"),
                           "give exactly one of percent and amount"),
    "neither": (_with_discount(), "give exactly one of percent and amount"),
    "percent above 100": (_with_discount(percent="120"), "must be at most 100"),
    "zero percent": (_with_discount(percent="0"), "must be greater than zero"),
    "amount with a scope": (_with_discount(amount="5.00", applies_to="usage"),
                            "applies to the whole invoice"),
    "amount finer than the currency": (_with_discount(amount="5.001"),
                                       "more decimals than EUR allows"),
    "unknown scope": (_with_discount(percent="5", applies_to="usgae"), "did you mean 'usage'"),
    "bad month": (_with_discount(percent="5", **{"from": "2026-13"}), "is not a month"),
    "zero months": (_with_discount(percent="5", months=0), "whole number of billing periods"),
    "misspelt key": (_with_discount(percent="5", month=2), "did you mean 'months'"),
    "unknown GL role": (doc(accounts={**ACCOUNTS, "tax_payble": "2700"}),
                        "did you mean 'tax_payable'"),
}


@pytest.mark.parametrize("case", list(CATALOG_ERRORS))
def test_catalog_errors(case: str) -> None:
    bad, expected = CATALOG_ERRORS[case]
    problems = _problems(bad)
    assert any(expected in p for p in problems), problems


def test_a_month_without_from_is_reported() -> None:
    problems = _problems(doc(discounts=[{"id": "d", "percent": "5"}]))
    assert any(p.endswith("discounts[0].from: is required") for p in problems), problems


# -- AR invoices and journals -----------------------------------------------------------------

def test_ar_invoice_carries_discount_and_tax_lines_and_the_journal_balances() -> None:
    cat = parse_catalog(doc(discounts=[
        {"id": "launch", "percent": "20", "applies_to": "usage", "from": "2026-10"},
        {"id": "goodwill", "amount": "25.00", "from": "2026-10"}]))
    cand = priced(cat, "333.33")  # 100.00 + 333.33 - 66.67 - 25.00 = 341.66; tax 64.92
    assert (str(cand.subtotal), str(cand.tax_total), str(cand.total)) == (
        "341.66", "64.92", "406.58")
    erp = build_erp(cat, [cand])
    (inv,) = erp.ar_invoices
    assert (inv.subtotal, inv.tax_total, inv.total, inv.amount_due) == (
        cand.subtotal, cand.tax_total, cand.total, cand.total)
    discounts = {x.item: (str(x.amount), x.gl_account) for x in inv.lines if x.kind == "discount"}
    assert discounts == {"launch": ("-66.67", "4190"), "goodwill": ("-25.00", "4190")}
    (tax,) = inv.taxes
    assert (tax.tax_code, str(tax.base), str(tax.amount), tax.gl_account) == (
        "DE-VAT-19", "341.66", "64.92", "2700")
    assert inv.notes == []
    (journal,) = erp.journals
    sides = {x.role: (str(x.debit), str(x.credit)) for x in journal.lines}
    assert sides["receivable"] == ("406.58", "0.00")
    assert sides["tax_payable"] == ("0.00", "64.92")
    assert sides["discounts"] == ("91.67", "0.00")  # contra revenue, debited
    assert journal.total_debit == journal.total_credit
    schedules = {s.line_id: s for s in erp.schedules}
    for line in inv.lines:
        assert sum(e.amount for e in schedules[line.line_id].entries) == line.amount
    # the usage discount follows the usage line's recognition: on the last day here (no daily
    # consumption on a hand-built candidate), like the usage it discounts
    launch = schedules["sub-1:2026-10:discount:launch"].entries
    assert [e for e in launch if e.amount] == [e for e in launch if e.date.day == 31]
    rows, problems = erp_chain(cat, {("sub-1", "2026-10", "calls"): D("333.33")}, [cand], erp,
                               with_schedules=True)
    assert problems == []
    (row,) = rows
    assert (row.invoiced_tax, row.ar_tax, row.journal_tax_payable) == ("64.92",) * 3
    assert (row.invoiced_discounts, row.ar_discounts) == ("-91.67", "-91.67")


def test_reverse_charge_is_said_on_the_invoice_and_posts_no_tax() -> None:
    cat = parse_catalog(doc(tax_code="EU-REVERSE-CHARGE"))
    erp = build_erp(cat, [priced(cat, "10")])
    (inv,) = erp.ar_invoices
    assert inv.taxes[0].reverse_charge and inv.tax_total == 0
    assert len(inv.notes) == 1 and "Reverse charge" in inv.notes[0]
    assert "tax_payable" not in {x.role for x in erp.journals[0].lines}


@pytest.mark.parametrize(("missing", "discounts"), [
    ("tax_payable", None),
    ("discounts", [{"id": "d", "percent": "5", "from": "2026-10"}])])
def test_a_missing_account_for_tax_or_discounts_is_an_invoice_exception(
        missing: str, discounts: list[dict[str, Any]] | None) -> None:
    accounts = {k: v for k, v in ACCOUNTS.items() if k != missing}
    cat = parse_catalog(doc(accounts=accounts, discounts=discounts))
    erp = build_erp(cat, [priced(cat, "10")])
    (exc,) = erp.exceptions
    assert exc.reasons == ["MISSING_GL_ACCOUNT"] and missing in exc.details[0]


# -- through the engine: late usage after a discount and tax ------------------------------------

def _calls(n: int, day: int, prefix: str = "e") -> list[bytes]:
    return [event(f"{prefix}{day}-{i}", time=utc(2026, 10, day, 12, 0, i).isoformat())
            for i in range(n)]


def test_an_adjustment_after_a_discount_and_tax_sums_to_the_period_from_scratch() -> None:
    cat = parse_catalog(doc(unit_price="0.37", discounts=[
        {"id": "launch", "percent": "15", "applies_to": "usage", "from": "2026-10"},
        {"id": "goodwill", "amount": "105.00", "from": "2026-10"}]))
    # October's usage, then November's events close it; then late October usage arrives
    late = [event(f"late-{i}", time=utc(2026, 10, 30, 8, 0, i).isoformat()) for i in range(7)]
    lines = [*_calls(13, 5), event("nov", time=utc(2026, 11, 3).isoformat()), *late]
    result = run(cat, lines, lateness=timedelta(minutes=5))
    october = [c for c in result.candidates if c.billing_period == "2026-10"]
    # the seven late calls arrive within one adjustment cycle: one adjustment
    assert [c.candidate_type for c in october] == ["invoice", "adjustment"]
    whole = priced(cat, "20")
    assert sum(c.subtotal for c in october) == whole.subtotal
    assert sum(c.tax_total for c in october) == whole.tax_total
    assert sum(c.total for c in october) == whole.total
    by_line: dict[str, Decimal] = {}
    for c in october:
        for x in c.lines:
            key = x.line_id.replace(c.invoice_candidate_id, whole.invoice_candidate_id)
            by_line[key] = by_line.get(key, D(0)) + x.amount
    assert {k: v for k, v in by_line.items() if v} == {
        x.line_id: x.amount for x in whole.lines if x.amount}
    assert sum(t.amount for c in october[1:] for t in c.taxes) == \
        whole.tax_total - october[0].tax_total != 0
    erp = build_erp(cat, result.candidates)
    assert all(j.total_debit == j.total_credit for j in erp.journals)


@settings(max_examples=60, deadline=None)
@given(first=st.integers(0, 40), late=st.integers(0, 40),
       price=st.sampled_from(["0.37", "1.00", "2.345", "0.005"]),
       percent=st.sampled_from(["5", "12.5", "33.333", "100"]),
       scope=st.sampled_from(["usage", "fixed_fees", "all"]),
       amount=st.sampled_from(["0.01", "7.50", "99.99", "500.00"]),
       code=st.sampled_from(["DE-VAT-19", "EU-REVERSE-CHARGE", "JP-CT-10"]),
       currency=st.sampled_from(["EUR", "JPY"]))
def test_candidate_and_adjustments_equal_the_period_from_scratch(
        first: int, late: int, price: str, percent: str, scope: str, amount: str, code: str,
        currency: str) -> None:
    yen = {"0.01": "1", "7.50": "750", "99.99": "9999", "500.00": "50000"}
    fee, amt = ("100", yen[amount]) if currency == "JPY" else ("100.00", amount)
    cat = parse_catalog(doc(currency=currency, tax_code=code, fee=fee, unit_price=price,
                            discounts=[{"id": "p", "percent": percent, "applies_to": scope,
                                        "from": "2026-10"},
                                       {"id": "a", "amount": amt, "from": "2026-10"}]))
    lines = (_calls(first, 5) + [event("nov", time=utc(2026, 11, 3).isoformat())]
             + [event(f"late-{i}", time=utc(2026, 10, 30, 8, 0, i).isoformat())
                for i in range(late)])
    result = run(cat, lines, lateness=timedelta(minutes=5))
    october = [c for c in result.candidates if c.billing_period == "2026-10"]
    whole = priced(cat, str(first + late))
    assert sum(c.subtotal for c in october) == whole.subtotal
    assert sum(c.tax_total for c in october) == whole.tax_total
    assert october[0].subtotal >= 0 and october[0].amount_due >= 0
    erp = build_erp(cat, result.candidates)
    for journal in erp.journals:
        assert journal.total_debit == journal.total_credit
    schedules = {s.line_id: s for s in erp.schedules}
    for inv in erp.ar_invoices:
        assert inv.subtotal + inv.tax_total == inv.total
        for line in inv.lines:
            assert sum(e.amount for e in schedules[line.line_id].entries) == line.amount
