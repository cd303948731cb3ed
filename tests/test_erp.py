"""ERP-ready summaries: AR invoices, journals, revenue schedules, invoice exceptions."""

from __future__ import annotations

import copy
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from test_flow import dirty_lines

from meterwax.workload import generate
from operators.catalog import Catalog, load_catalog, parse_catalog
from operators.engine import EngineResult, run_engine
from operators.erp import ErpOutput, build_erp, cumulative_split, erp_chain
from operators.ingest import IngestConfig
from operators.money import round_money
from operators.reconcile import summarize
from schemas.erp import json_schema
from schemas.records import ENCODER

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "catalog" / "example.yaml"


def example_doc() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


def run(catalog: Catalog, lines: list[bytes]) -> tuple[EngineResult, ErpOutput]:
    result = run_engine(catalog, lines, IngestConfig())
    return result, build_erp(catalog, result.candidates)


@pytest.fixture(scope="module")
def dirty() -> tuple[Catalog, EngineResult, ErpOutput]:
    catalog = load_catalog(str(EXAMPLE))
    result, erp = run(catalog, dirty_lines())
    return catalog, result, erp


def by_id(items: list[Any], attr: str) -> dict[str, Any]:
    return {getattr(x, attr): x for x in items}


# -- AR invoices -------------------------------------------------------------------------------


def test_one_ar_invoice_per_ready_candidate_with_lines_summing_to_the_subtotal(dirty) -> None:
    _, result, erp = dirty
    ready = [c for c in result.candidates if c.status == "ready"
             and not (c.adjusts and all(x.amount == 0 for x in c.lines))]
    assert sorted(a.invoice_candidate_id for a in erp.ar_invoices) == sorted(
        c.invoice_candidate_id for c in ready)
    cands = by_id(result.candidates, "invoice_candidate_id")
    for inv in erp.ar_invoices:
        cand = cands[inv.invoice_candidate_id]
        assert (inv.subtotal, inv.tax_total, inv.total, inv.amount_due) == (
            cand.subtotal, cand.tax_total, cand.total, cand.amount_due)
        assert sum(x.amount for x in inv.lines) == inv.subtotal
        assert inv.subtotal + inv.tax_total == inv.total
        assert [x.line_id for x in inv.lines] == [
            x.line_id for x in cands[inv.invoice_candidate_id].lines]


def test_ar_invoice_fields_gl_accounts_and_recognition(dirty) -> None:
    _, _, erp = dirty
    inv = by_id(erp.ar_invoices, "ar_invoice_id")["sub-acme-1:2026-10"]
    assert (inv.invoice_date, inv.due_date) == (date(2026, 10, 31), date(2026, 11, 30))
    assert (inv.legal_entity, inv.receivable_account, inv.currency) == ("us-inc", "1200", "USD")
    lines = {x.line_id.rsplit(":", 2)[-2] + ":" + x.item: x for x in inv.lines}
    assert lines["fee:platform"].gl_account == "4010"
    assert lines["fee:platform"].revenue_recognition == "ratable"
    assert lines["usage:tokens"].gl_account == "4000"
    assert lines["usage:tokens"].revenue_recognition == "consumption"
    assert lines["minimum:active_users"].revenue_recognition == "consumption"
    assert lines["usage:tokens"].performance_obligation == "sub-acme-1:tokens"


def test_jpy_documents_have_no_minor_units(dirty) -> None:
    _, _, erp = dirty
    inv = by_id(erp.ar_invoices, "ar_invoice_id")["sub-umbrella-1:2026-10"]
    assert inv.currency == "JPY" and inv.due_date == date(2026, 10, 31) + timedelta(days=60)
    # platform fee 50000 prorated over 22 of 31 days = 35483.87... -> 35484
    fee = next(x for x in inv.lines if x.kind == "fixed_fee")
    assert str(fee.amount) == "35484"
    for line in inv.lines:
        schedule = by_id(erp.schedules, "line_id")[line.line_id]
        assert all(e.amount == e.amount.to_integral() for e in schedule.entries)
        assert sum(e.amount for e in schedule.entries) == line.amount
    journal = by_id(erp.journals, "journal_id")["jp-kk:JPY:2026-10"]
    assert str(journal.total_debit) == str(journal.total_credit) == str(inv.total)


def test_plan_change_gives_two_documents_each_over_its_own_days(dirty) -> None:
    _, _, erp = dirty
    docs = by_id(erp.ar_invoices, "ar_invoice_id")
    starter, growth = docs["sub-globex-starter:2026-10"], docs["sub-globex-growth:2026-10"]
    assert starter.invoice_date == date(2026, 10, 14)  # last day before the 15th
    assert growth.invoice_date == date(2026, 10, 31)
    schedules = by_id(erp.schedules, "line_id")
    base = schedules[next(x.line_id for x in starter.lines if x.item == "base")]
    assert [e.date for e in base.entries] == [date(2026, 10, 1) + timedelta(days=i)
                                              for i in range(14)]
    # 22.13 over 14 days, cumulative rounding: 1.58 or 1.59 a day, summing exactly
    assert {str(e.amount) for e in base.entries} <= {"1.58", "1.59"}
    assert sum(e.amount for e in base.entries) == Decimal("22.13")
    onboarding = schedules[next(x.line_id for x in starter.lines if x.item == "onboarding")]
    assert [(e.date, str(e.amount)) for e in onboarding.entries if e.amount] == [
        (date(2026, 10, 14), "67.74")]  # point_in_time: the last day


def test_adjustment_is_its_own_document_referencing_the_original(dirty) -> None:
    _, _, erp = dirty
    docs = by_id(erp.ar_invoices, "ar_invoice_id")
    late = docs["sub-acme-1:2026-10:adj-1"]  # the period's one adjustment of its cycle
    assert late.adjusts_ar_invoice_id == "sub-acme-1:2026-10"
    # 1.90 of late storage (the late api call and user move 0.00 net), and acme's 8.875 % New
    # York sales tax on it
    assert late.document_type == "invoice" and str(late.subtotal) == "1.90"
    assert (str(late.tax_total), str(late.total)) == ("0.17", "2.07")
    users = {x.kind: str(x.amount) for x in late.lines if x.item == "active_users"}
    assert users == {"usage": "4.00", "minimum_true_up": "-4.00"}
    assert not [d for d in docs if d.startswith("sub-acme-1:2026-10:adj-2")]
    journal = by_id(erp.journals, "journal_id")["us-inc:USD:2026-10"]
    assert {"sub-acme-1:2026-10", "sub-acme-1:2026-10:adj-1"} <= set(
        journal.source_candidate_ids)


def test_late_user_above_a_minimum_moves_amount_from_true_up_to_usage() -> None:
    doc = example_doc()
    doc["plans"][0]["charges"][3]["minimum"] = "10.00"  # active users, 4.00 each
    catalog = parse_catalog(doc)
    lines = [
        _ev(1, "acme-prod", "user.active", "2026-10-02T00:00:00Z", {"user_id": "a"}),
        _ev(2, "acme-prod", "api.request", "2026-11-02T00:00:00Z"),
        # late: a second active user lifts usage 4.00 -> 8.00 and shrinks the true-up 6 -> 2
        _ev(3, "acme-prod", "user.active", "2026-10-03T00:00:00Z", {"user_id": "b"}),
    ]
    result, erp = run(catalog, lines)
    adj = next(c for c in result.candidates if c.invoice_candidate_id == "sub-acme-1:2026-10:adj-1")
    assert [(x.kind, str(x.amount)) for x in adj.lines] == [
        ("usage", "4.00"), ("minimum_true_up", "-4.00")]
    assert sum(x.amount for x in adj.lines) == 0
    # its lines change amounts (usage up, true-up down), so it is posted though it nets to 0
    doc_ = by_id(erp.ar_invoices, "ar_invoice_id")["sub-acme-1:2026-10:adj-1"]
    assert doc_.total == 0 and doc_.document_type == "invoice"


def _ev(i: int, subject: str, typ: str, time: str, data: dict | None = None) -> bytes:
    return ENCODER.encode({"specversion": "1.0", "id": str(i), "source": "t", "type": typ,
                           "subject": subject, "time": time, "data": data or {}})


def test_credit_memo_when_late_usage_lowers_the_amount() -> None:
    doc = example_doc()
    # Volume tiers without a flat price on the top tier: 100 GB = 25.00 but 101 GB = 20.20,
    # so a late, larger max lowers the period amount.
    doc["plans"][0]["charges"][2]["tiers"] = [{"up_to": "100", "unit_price": "0.25"},
                                              {"unit_price": "0.20"}]
    catalog = parse_catalog(doc)
    lines = [
        _ev(1, "acme-prod", "storage.snapshot", "2026-10-02T00:00:00Z", {"gb": 100}),
        _ev(2, "acme-prod", "api.request", "2026-11-02T00:00:00Z"),
        _ev(3, "acme-prod", "storage.snapshot", "2026-10-20T00:00:00Z", {"gb": 101}),
    ]
    _, erp = run(catalog, lines)
    memo = by_id(erp.ar_invoices, "ar_invoice_id")["sub-acme-1:2026-10:adj-1"]
    assert memo.document_type == "credit_memo" and str(memo.subtotal) == "-4.80"
    # with the tax it reverses: the period's tax from scratch less the tax already issued
    assert str(memo.total) == "-5.22"
    original = by_id(erp.ar_invoices, "ar_invoice_id")["sub-acme-1:2026-10"]
    assert original.tax_total + memo.tax_total == round_money(
        (original.subtotal + memo.subtotal) * Decimal("0.08875"), "USD")
    journal = by_id(erp.journals, "journal_id")["us-inc:USD:2026-10"]
    assert journal.total_debit == journal.total_credit
    receivable = next(x for x in journal.lines if x.role == "receivable")
    # the memo reduces the month's receivable: it is the amount due of every posted document
    assert receivable.debit - receivable.credit == sum(
        a.amount_due for a in erp.ar_invoices
        if (a.legal_entity, a.currency, a.billing_period) == ("us-inc", "USD", "2026-10"))
    assert memo.total in [a.total for a in erp.ar_invoices]


# -- journals ---------------------------------------------------------------------------------


def test_journal_per_entity_currency_month_balances_and_matches_ready_candidates(dirty) -> None:
    _, result, erp = dirty
    assert sorted(j.journal_id for j in erp.journals) == [
        "eu-bv:EUR:2026-10", "eu-bv:EUR:2026-11", "jp-kk:JPY:2026-10", "jp-kk:JPY:2026-11",
        "us-inc:USD:2026-10", "us-inc:USD:2026-11"]
    posted = {a.invoice_candidate_id for a in erp.ar_invoices}
    for j in erp.journals:
        assert j.total_debit == j.total_credit
        receivable = next(x for x in j.lines if x.role == "receivable")
        expected = sum(c.amount_due for c in result.candidates
                       if c.invoice_candidate_id in posted and c.legal_entity == j.legal_entity
                       and c.currency == j.currency and c.billing_period == j.period)
        assert receivable.debit - receivable.credit == expected
        assert j.posting_date.strftime("%Y-%m") == j.period


# -- revenue schedules ------------------------------------------------------------------------


def test_consumption_follows_the_days_usage_was_rated() -> None:
    catalog = load_catalog(str(EXAMPLE))
    lines = [
        _ev(1, "tyrell-eu", "payment.captured", "2026-10-03T10:00:00Z", {"amount": "100.00"}),
        _ev(2, "tyrell-eu", "payment.captured", "2026-10-03T11:00:00Z", {"amount": "20.00"}),
        _ev(3, "tyrell-eu", "payment.captured", "2026-10-07T09:00:00Z", {"amount": "0.30"}),
    ]
    _, erp = run(catalog, lines)
    schedule = next(s for s in erp.schedules if s.line_id == "sub-tyrell-1:2026-10:usage:gmv")
    nonzero = [(e.date.isoformat(), str(e.amount)) for e in schedule.entries if e.amount]
    # gmv 2.5 %: 3 Oct 120.00 -> 3.00; 7 Oct 0.30 -> 0.0075, cumulative 3.0075 -> 3.01
    assert nonzero == [("2026-10-03", "3.00"), ("2026-10-07", "0.01")]
    assert len(schedule.entries) == 31 and schedule.amount == Decimal("3.01")


@pytest.mark.parametrize(("shares", "total", "currency", "expected"), [
    (["0.333333", "0.333333", "0.333334"], "1.00", "USD", ["0.33", "0.34", "0.33"]),
    (["0.005", "0.005"], "0.01", "USD", ["0.01", "0.00"]),
    (["10", "-4", "0.5"], "6.50", "USD", ["10.00", "-4.00", "0.50"]),
    (["333.4", "333.3", "333.3"], "1000", "JPY", ["333", "334", "333"]),
], ids=["thirds", "half-cents", "negative-day", "jpy"])
def test_cumulative_split_table(shares, total, currency, expected) -> None:
    days = [date(2026, 10, 1) + timedelta(days=i) for i in range(len(shares))]
    entries = cumulative_split(days, dict(zip(days, map(Decimal, shares), strict=True)),
                               Decimal(total), currency)
    assert [str(e.amount) for e in entries] == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.decimals(min_value=-1000, max_value=1000, places=6, allow_nan=False),
                min_size=1, max_size=40),
       st.sampled_from(["USD", "JPY", "KWD"]))
def test_cumulative_split_sums_exactly_and_stays_within_a_minor_unit(shares, currency) -> None:
    from operators.money import minor_units, round_money

    days = [date(2026, 10, 1) + timedelta(days=i) for i in range(len(shares))]
    total = round_money(sum(shares, Decimal(0)), currency)
    entries = cumulative_split(days, dict(zip(days, shares, strict=True)), total, currency)
    assert sum(e.amount for e in entries) == total
    unit = Decimal(1).scaleb(-minor_units(currency))
    running = Decimal(0)
    booked = Decimal(0)
    for share, entry in zip(shares, entries, strict=True):
        running += share
        booked += entry.amount
        assert abs(booked - running) <= unit  # never more than one minor unit off


# -- invoice exceptions -----------------------------------------------------------------------


def test_held_candidates_never_reach_the_erp_and_are_itemised(dirty) -> None:
    _, result, erp = dirty
    held = {c.invoice_candidate_id for c in result.candidates if c.status == "held"}
    assert held == {e.invoice_candidate_id for e in erp.exceptions}
    assert not held & {a.invoice_candidate_id for a in erp.ar_invoices}
    reasons = {e.invoice_candidate_id: e.reasons for e in erp.exceptions}
    assert reasons["sub-initech-1:2026-10"] == ["MISSING_TAX_REGISTRATION"]
    assert reasons["sub-hooli-1:2026-11"] == ["MISSING_PAYMENT_TERMS"]


def test_missing_gl_account_and_unpostable_currency_are_exceptions() -> None:
    doc = example_doc()
    del doc["legal_entities"][1]["gl_accounts"]["usage_revenue"]  # eu-bv
    doc["legal_entities"][2]["currencies"] = ["USD"]  # jp-kk cannot post JPY
    catalog = parse_catalog(doc)
    _, erp = run(catalog, dirty_lines())
    by_cand = {e.invoice_candidate_id: e for e in erp.exceptions}
    tyrell = by_cand["sub-tyrell-1:2026-10"]
    assert tyrell.reasons == ["MISSING_GL_ACCOUNT"]
    assert tyrell.details == ["legal entity 'eu-bv' has no usage_revenue GL account"]
    umbrella = by_cand["sub-umbrella-1:2026-10"]
    assert umbrella.reasons == ["CURRENCY_NOT_POSTABLE"]
    assert not {"eu-bv", "jp-kk"} & {a.legal_entity for a in erp.ar_invoices}


def test_fixing_the_master_data_and_rerunning_posts_the_same_ids_once() -> None:
    doc = example_doc()
    broken = parse_catalog(doc)
    _, before = run(broken, dirty_lines())
    fixed_doc = copy.deepcopy(doc)
    fixed_doc["customers"][2]["tax_registration"] = "US-77-0000001"  # initech
    fixed_doc["customers"][5]["payment_terms_days"] = 30  # hooli
    _, after = run(parse_catalog(fixed_doc), dirty_lines())
    assert after.exceptions == []
    before_docs = {a.ar_invoice_id: ENCODER.encode(a) for a in before.ar_invoices}
    after_docs = {a.ar_invoice_id: ENCODER.encode(a) for a in after.ar_invoices}
    # everything posted before is posted again unchanged (same id, same bytes): no double post
    assert {k: after_docs[k] for k in before_docs} == before_docs
    # and exactly the previously held candidates are added
    assert set(after_docs) - set(before_docs) == {
        e.invoice_candidate_id for e in before.exceptions
        if not e.invoice_candidate_id.startswith("sub-initech-1:2026-10:adj")
        or e.subtotal != 0} - set(before.quantity_only) - set(after.quantity_only)


# -- the chain, and the published schema --------------------------------------------------------


def test_chain_names_a_variance(dirty) -> None:
    catalog, result, erp = dirty
    rated = {k: v.cumulative_amount for k, v in summarize(result.windows).items()}
    rows, problems = erp_chain(catalog, rated, result.candidates, erp)
    assert problems == []
    usd = next(r for r in rows if r.legal_entity == "us-inc" and r.period == "2026-10")
    # globex's prepaid credits (50.00 + 300.00) settle part of the month's AR invoices
    assert Decimal(usd.ar_credits_applied) == Decimal("350.00")
    assert Decimal(usd.ar_total) - Decimal(usd.ar_credits_applied) == Decimal(
        usd.journal_receivable)
    assert usd.ar_credits_applied == usd.journal_customer_credits
    assert set(usd.not_posted_by_reason) == {"MISSING_PAYMENT_TERMS",
                                               "MISSING_TAX_REGISTRATION"}
    erp.journals[0].lines[0].debit += Decimal("0.01")
    erp.journals[0].total_debit += Decimal("0.01")
    _, problems = erp_chain(catalog, rated, result.candidates, erp)
    assert any("journal debits" in p for p in problems)
    assert any("journal receivable" in p for p in problems)


def test_published_json_schema_is_in_sync() -> None:
    assert (ROOT / "schemas" / "erp.schema.json").read_bytes() == json_schema()


@settings(max_examples=12, deadline=None)
@given(st.integers(min_value=200, max_value=1500), st.integers(min_value=0, max_value=10_000),
       st.sets(st.sampled_from(["acme", "globex", "tyrell", "umbrella"]), max_size=2))
def test_erp_invariants_on_generated_workloads(size, seed, untaxed) -> None:
    doc = example_doc()
    for customer in doc["customers"]:
        if customer["id"] in untaxed:
            customer["tax_registration"] = None
    catalog = parse_catalog(doc)
    result, erp = run(catalog, list(generate(catalog, size, seed)))
    posted = {a.invoice_candidate_id for a in erp.ar_invoices}
    for j in erp.journals:
        assert j.total_debit == j.total_credit
        receivable = next(x for x in j.lines if x.role == "receivable")
        assert receivable.debit - receivable.credit == sum(
            c.amount_due for c in result.candidates if c.invoice_candidate_id in posted
            and (c.legal_entity, c.currency, c.billing_period)
            == (j.legal_entity, j.currency, j.period))
    schedules = by_id(erp.schedules, "line_id")
    for inv in erp.ar_invoices:
        for line in inv.lines:
            assert sum(e.amount for e in schedules[line.line_id].entries) == line.amount
    kept_out = {e.invoice_candidate_id for e in erp.exceptions}
    for cand in result.candidates:
        assert (cand.invoice_candidate_id in posted or cand.invoice_candidate_id in kept_out
                or cand.invoice_candidate_id in erp.quantity_only)
        if cand.customer_id in untaxed:
            assert cand.invoice_candidate_id not in posted
