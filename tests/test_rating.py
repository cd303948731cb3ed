"""Streaming rating: tumbling event-time windows rated as deltas of the period amount, periods
closed by the watermark, late usage as correction rows and adjustment candidates, end-of-input
closes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
from conftest import (
    D,
    buckets,
    candidate,
    candidate_ids,
    customer,
    delta_sums,
    event,
    last_cumulative,
    lines_of,
    period_totals,
    quantities_of,
    reconcile,
    run,
    simple_catalog,
    simple_doc,
    sub,
    utc,
)

from operators.aggregators import Count
from operators.catalog import Catalog, load_catalog, parse_catalog
from operators.engine import EngineResult
from operators.protocol import Usage
from operators.rating import SubscriptionRater
from schemas.reconciliation import Reconciliation
from schemas.records import RatedWindow

EXAMPLE = Path(__file__).resolve().parent.parent / "catalog" / "example.yaml"
HOUR = timedelta(hours=1)



def agg_of(n: int) -> Count:
    return Count(n)


def calls(*times: str, prefix: str = "e", subject: str = "s1") -> list[bytes]:
    return [event(f"{prefix}{i}", time=t, subject=subject) for i, t in enumerate(times)]


def balanced(catalog: Catalog, result: EngineResult) -> Reconciliation:
    report = reconcile(catalog, result)
    assert report.balanced, report.problems
    return report


# calls: 2 units at 1.00, then 0.10 each plus 5.00 once the second tier is entered
GRADUATED_CALLS = [{"meter": "calls", "model": "graduated", "tiers": [
    {"up_to": "2", "unit_price": "1.00"},
    {"unit_price": "0.10", "flat_price": "5"},
]}]


# -- windows and deltas ----------------------------------------------------------------------------

def test_tumbling_windows_rated_as_deltas_of_the_cumulative_amount() -> None:
    cat = simple_catalog(charges=GRADUATED_CALLS)
    result = run(cat, calls("2026-10-05T10:00:05Z", "2026-10-05T10:00:50Z",
                            "2026-10-05T10:01:10Z", "2026-10-05T10:01:20Z",
                            "2026-10-05T10:03:00Z"))
    rows = [(r.window_start, r.window_end, r.revision, r.event_count, r.window_quantity,
             r.cumulative_quantity, r.amount_delta, r.cumulative_amount, r.rating_seq,
             r.after_close) for r in result.windows]
    assert rows == [
        # q 2: 2 * 1.00
        (utc(2026, 10, 5, 10, 0), utc(2026, 10, 5, 10, 1), 0, 2, 2, 2, D("2.00"), D("2.00"), 1,
         False),
        # q 4: 2.00 + 2 * 0.10 + 5 = 7.20, delta 5.20
        (utc(2026, 10, 5, 10, 1), utc(2026, 10, 5, 10, 2), 0, 2, 2, 4, D("5.20"), D("7.20"), 2,
         False),
        # q 5: 7.30, delta 0.10; rated when the period closes at end of input
        (utc(2026, 10, 5, 10, 3), utc(2026, 10, 5, 10, 4), 0, 1, 1, 5, D("0.10"), D("7.30"), 3,
         False),
    ]
    first = result.windows[0]
    ws = int(utc(2026, 10, 5, 10, 0).timestamp())
    assert first.row_id == f"sub-1:calls:{ws}"
    assert (first.subscription_id, first.customer_id, first.plan_id, first.legal_entity,
            first.currency, first.meter, first.period) == (
        "sub-1", "c", "p", "le-us", "USD", "calls", "2026-10")
    assert lines_of(candidate(result, "sub-1:2026-10"))["usage:calls"] == D("7.30")
    balanced(cat, result)


def test_negative_deltas_when_volume_pricing_drops_the_unit_price() -> None:
    cat = simple_catalog(charges=[{"meter": "calls", "model": "volume", "tiers": [
        {"up_to": "2", "unit_price": "1.00"}, {"unit_price": "0.10"}]}])
    result = run(cat, calls("2026-10-05T10:00:05Z", "2026-10-05T10:00:06Z",
                            "2026-10-05T10:01:05Z"))
    # q 2 -> 2.00; q 3 -> all three at 0.10 = 0.30, so the second window books -1.70
    assert [r.amount_delta for r in result.windows] == [D("2.00"), D("-1.70")]
    assert sum(r.amount_delta for r in result.windows) == D("0.30")
    assert lines_of(candidate(result, "sub-1:2026-10"))["usage:calls"] == D("0.30")


@pytest.mark.parametrize(("window", "expected"), [
    pytest.param(timedelta(seconds=1), [1, 1, 1, 1, 1], id="1s"),
    pytest.param(timedelta(minutes=1), [2, 2, 1], id="1min-default"),
    pytest.param(timedelta(minutes=5), [5], id="5min"),
    pytest.param(timedelta(hours=1), [5], id="1h"),
])
def test_window_size_changes_the_split_not_the_amount(window: timedelta,
                                                      expected: list[int]) -> None:
    cat = simple_catalog(charges=GRADUATED_CALLS)
    result = run(cat, calls("2026-10-05T10:00:05Z", "2026-10-05T10:00:50Z",
                            "2026-10-05T10:01:10Z", "2026-10-05T10:01:20Z",
                            "2026-10-05T10:03:00Z"), window=window)
    assert [r.event_count for r in result.windows] == expected
    assert sum(r.amount_delta for r in result.windows) == D("7.30")
    balanced(cat, result)


def test_windows_are_cut_at_month_boundaries() -> None:
    # 7-day windows are aligned to the epoch (a Thursday): [Thu 29 Oct, Thu 5 Nov) straddles
    # the month end, so it is cut into [29 Oct, 1 Nov) and [1 Nov, 5 Nov)
    cat = simple_catalog()
    result = run(cat, calls("2026-10-31T23:00:00Z", "2026-11-01T01:00:00Z"),
                 window=timedelta(days=7))
    assert sorted((r.period, r.window_start, r.window_end) for r in result.windows) == [
        ("2026-10", utc(2026, 10, 29), utc(2026, 11, 1)),
        ("2026-11", utc(2026, 11, 1), utc(2026, 11, 5)),
    ]
    balanced(cat, result)


def test_late_usage_in_a_rated_window_is_a_correction_row_of_its_own() -> None:
    cat = simple_catalog()   # calls per_unit 1.00
    result = run(cat, calls("2026-10-05T10:00:10Z", "2026-10-05T10:05:00Z",
                            "2026-10-05T10:00:30Z"))
    w0 = int(utc(2026, 10, 5, 10, 0).timestamp())
    w5 = int(utc(2026, 10, 5, 10, 5).timestamp())
    assert [(r.row_id, r.row_kind, r.revision, r.event_count, r.window_quantity,
             r.amount_delta, r.cumulative_quantity, r.cumulative_amount, r.rating_seq)
            for r in result.windows] == [
        # closed by the 10:05 event
        (f"sub-1:calls:{w0}", "window", 0, 1, 1, D("1.00"), 1, D("1.00"), 1),
        # the late 10:00:30: only its own event and delta, under its own id
        (f"sub-1:calls:{w0}:c2", "correction", 0, 1, 1, D("1.00"), 2, D("2.00"), 2),
        # closed at end of input
        (f"sub-1:calls:{w5}", "window", 0, 1, 1, D("1.00"), 3, D("3.00"), 3),
    ]
    assert delta_sums(result.windows) == {("sub-1", "2026-10", "calls"): D("3.00")}
    assert result.candidates[0].subtotal == D("3.00")
    balanced(cat, result)


def test_a_rated_window_leaves_the_state_and_late_usage_opens_a_correction() -> None:
    """The rater's state holds only the windows not yet rated: after the watermark passed them
    nothing of them is left, however many there were, and every late contribution is its own
    correction row (never a second window row under an emitted id)."""
    cat = simple_catalog()
    rater = SubscriptionRater(cat, "sub-1", timedelta(minutes=1))
    base = int(utc(2026, 10, 5).timestamp())
    out = []
    for i in range(500):
        ts = base + 60 * i + 5
        out += rater.apply([Usage("2026-10", "calls", ts - ts % 60, agg_of(1), 1, ts)])
    pstate = rater.state.periods["2026-10"]
    assert len(pstate.windows) == 1  # only the newest window is open
    late = base + 60 * 10 + 30
    out += rater.apply([Usage("2026-10", "calls", late - late % 60, agg_of(1), 1, ts)])
    out += rater.apply([Usage("2026-10", "calls", late - late % 60, agg_of(1), 1, ts)])
    assert len(pstate.windows) == 1
    rows = [r for r in out if isinstance(r, RatedWindow)]
    assert len({r.row_id for r in rows}) == len(rows) == 499 + 2
    assert [r.row_kind for r in rows[-2:]] == ["correction", "correction"]
    assert [r.row_id for r in rows[-2:]] == [
        f"sub-1:calls:{base + 600}:c500", f"sub-1:calls:{base + 600}:c501"]
    # 502 events: the newest window's is not rated yet.
    assert sum(r.event_count for r in rows) == rows[-1].cumulative_quantity == 501


def test_each_meter_has_its_own_windows() -> None:
    cat = simple_catalog(charges=[
        {"meter": "calls", "model": "per_unit", "unit_price": "0.01"},
        {"meter": "tokens", "model": "package", "package_size": "1000",
         "package_price": "0.50"},
    ])
    result = run(cat, [
        event("a", time="2026-10-05T10:00:01Z"),
        event("b", etype="llm.completion", data={"usage": {"tokens": 1500}},
              time="2026-10-05T10:00:02Z"),
    ])
    assert {r.meter: (r.cumulative_quantity, r.cumulative_amount) for r in result.windows} == {
        "calls": (D(1), D("0.01")),
        "tokens": (D(1500), D("1.00")),      # ceil(1500 / 1000) * 0.50
    }
    assert len({r.row_id for r in result.windows}) == 2


# -- closing periods -------------------------------------------------------------------------------

@pytest.mark.parametrize(("lateness", "trigger", "closed"), [
    pytest.param(HOUR, "2026-11-01T00:30:00Z", False, id="inside-lateness"),
    pytest.param(HOUR, "2026-11-01T01:00:00Z", False, id="exactly-end-plus-lateness"),
    pytest.param(HOUR, "2026-11-01T01:00:01Z", True, id="one-second-past"),
    pytest.param(timedelta(0), "2026-11-01T00:00:00Z", False, id="no-lateness-exactly-end"),
    pytest.param(timedelta(0), "2026-11-01T00:00:01Z", True, id="no-lateness-one-second-past"),
    pytest.param(timedelta(days=2), "2026-11-02T23:59:59Z", False, id="two-days-inside"),
    pytest.param(timedelta(days=2), "2026-11-03T00:00:01Z", True, id="two-days-past"),
])
def test_period_closes_when_the_watermark_passes_end_plus_lateness(
        lateness: timedelta, trigger: str, closed: bool) -> None:
    cat = simple_catalog()
    result = run(cat, calls("2026-10-31T22:00:00Z", trigger, "2026-10-31T23:00:00Z"),
                 lateness=lateness)
    october = candidate(result, "sub-1:2026-10")
    if closed:
        # the last October event came after the candidate: it is an adjustment
        assert quantities_of(october)["usage:calls"] == 1
        adj = candidate(result, "sub-1:2026-10:adj-1")
        assert quantities_of(adj) == {"usage:calls": D(1)}
        assert result.stats.late_after_close == 1
    else:
        assert quantities_of(october)["usage:calls"] == 2
        assert "sub-1:2026-10:adj-1" not in candidate_ids(result)
        assert result.stats.late_after_close == 0
    balanced(cat, result)


MINIMUM_PLAN = {
    "fees": [{"id": "base", "amount": "31.00"}],
    "charges": [{"meter": "calls", "model": "per_unit", "unit_price": "4.00",
                 "minimum": "50.00"}],
}


def late_stream() -> list[bytes]:
    return [
        *calls(*["2026-10-31T22:00:00Z"] * 10, prefix="a"),        # 10 October calls
        *calls("2026-11-01T00:30:00Z", prefix="b"),                # November; October open
        *calls("2026-10-31T23:59:00Z", prefix="c"),                # late, inside lateness
        *calls("2026-11-01T01:00:00Z", prefix="d"),                # exactly end + lateness
        *calls("2026-10-31T23:00:00Z", prefix="e"),                # still inside
        *calls("2026-11-01T01:00:01Z", prefix="f"),                # passes it: October closes
        *calls("2026-10-31T23:30:00Z", prefix="g"),                # after close: adj-1
        *calls("2026-11-02T06:00:00Z", prefix="i"),                # a day later: settles it
        *calls("2026-10-15T00:00:00Z", prefix="h"),                # after close: adj-2
    ]


def test_usage_after_close_becomes_adjustment_candidates() -> None:
    cat = simple_catalog(**MINIMUM_PLAN)
    result = run(cat, late_stream())
    # adj-1 when the watermark crossed the next day; adj-2 (a later cycle) at end of input
    assert candidate_ids(result) == ["sub-1:2026-10", "sub-1:2026-10:adj-1",
                                     "sub-1:2026-11", "sub-1:2026-10:adj-2"]
    invoice = candidate(result, "sub-1:2026-10")
    # 12 calls at close: 48.00 usage + 2.00 true-up to the 50.00 minimum + 31.00 fee
    assert lines_of(invoice) == {"fee:base": D("31.00"), "usage:calls": D("48.00"),
                                 "minimum:calls": D("2.00")}
    assert invoice.subtotal == D("81.00")
    adj1 = candidate(result, "sub-1:2026-10:adj-1")
    assert (adj1.candidate_type, adj1.adjusts, adj1.billing_period) == (
        "adjustment", "sub-1:2026-10", "2026-10")
    # 13 calls: usage +4.00 (52.00), the 2.00 true-up goes away
    assert lines_of(adj1) == {"usage:calls": D("4.00"), "minimum:calls": D("-2.00")}
    assert quantities_of(adj1) == {"usage:calls": D(1), "minimum:calls": None}
    assert adj1.subtotal == D("2.00")
    assert [ln.line_id for ln in adj1.lines] == ["sub-1:2026-10:adj-1:usage:calls",
                                                 "sub-1:2026-10:adj-1:minimum:calls"]
    adj2 = candidate(result, "sub-1:2026-10:adj-2")
    assert lines_of(adj2) == {"usage:calls": D("4.00")}
    assert adj2.subtotal == D("4.00")
    # November: 4 calls, 16.00 + 34.00 true-up + 31.00
    assert candidate(result, "sub-1:2026-11").subtotal == D("81.00")
    assert result.stats.late_after_close == 2
    after_close = [r for r in result.windows if r.after_close]
    assert [r.period for r in after_close] == ["2026-10", "2026-10"]
    report = balanced(cat, result)
    assert report.invoiced.adjustments == 2
    assert report.events.late_after_close == 2


def test_candidate_plus_adjustments_equals_the_full_period_rated_in_order() -> None:
    cat = simple_catalog(**MINIMUM_PLAN)
    late = run(cat, late_stream())
    ordered = sorted(late_stream(), key=lambda line: line.split(b'"time": ')[1])
    in_order = run(cat, ordered, lateness=timedelta(days=60))
    assert [c.candidate_type for c in in_order.candidates] == ["invoice", "invoice"]
    # October in full: 14 calls = 56.00, no true-up, + 31.00 fee
    assert period_totals(late.candidates) == period_totals(in_order.candidates) | {
        ("sub-1", "2026-10", "minimum:calls"): D("0.00")}
    assert lines_of(candidate(in_order, "sub-1:2026-10")) == {
        "fee:base": D("31.00"), "usage:calls": D("56.00")}
    assert sum(c.subtotal for c in late.candidates if c.billing_period == "2026-10") == D("87.00")


def test_late_usage_that_changes_nothing_issues_no_adjustment() -> None:
    # A max meter: a lower late value re-rates its window (delta 0) but no invoice line changes.
    cat = simple_catalog(charges=[{"meter": "peak", "model": "per_unit", "unit_price": "2.00"}])
    result = run(cat, [
        event("p1", etype="storage.snapshot", data={"gb": "10"}, time="2026-10-10T00:00:00Z"),
        event("p2", etype="storage.snapshot", data={"gb": "1"}, time="2026-11-05T00:00:00Z"),
        event("p3", etype="storage.snapshot", data={"gb": "3"}, time="2026-10-11T00:00:00Z"),
    ])
    assert candidate_ids(result) == ["sub-1:2026-10", "sub-1:2026-11"]
    late = [r for r in result.windows if r.after_close]
    assert [(r.period, r.amount_delta, r.cumulative_quantity) for r in late] == [
        ("2026-10", D(0), D(10))]
    assert lines_of(candidate(result, "sub-1:2026-10"))["usage:peak"] == D("20.00")
    balanced(cat, result)


def test_late_usage_in_a_free_tier_adjusts_the_quantity_only() -> None:
    cat = simple_catalog(charges=[{"meter": "calls", "model": "graduated", "tiers": [
        {"up_to": "1000", "unit_price": "0"}, {"unit_price": "0.01"}]}])
    result = run(cat, calls("2026-10-10T00:00:00Z", "2026-11-05T00:00:00Z",
                            "2026-10-11T00:00:00Z"))
    adj = candidate(result, "sub-1:2026-10:adj-1")
    assert [(ln.kind, ln.quantity, ln.amount) for ln in adj.lines] == [
        ("usage", D(1), D("0.00"))]
    assert adj.subtotal == D("0.00")
    balanced(cat, result)


# -- end of input ----------------------------------------------------------------------------------

def test_end_of_input_closes_every_period_through_the_watermark_including_empty_ones() -> None:
    cat = simple_catalog(start="2026-08-01T00:00:00Z", **MINIMUM_PLAN)
    result = run(cat, calls("2026-09-10T00:00:00Z", "2026-11-05T00:00:00Z"))
    # August had no event but is billed from the subscription's start; October had no usage
    # either and still bills its fee and the minimum; November is the watermark's own month.
    assert candidate_ids(result) == ["sub-1:2026-08", "sub-1:2026-09", "sub-1:2026-10",
                                     "sub-1:2026-11"]
    assert lines_of(candidate(result, "sub-1:2026-10")) == {
        "fee:base": D("31.00"), "usage:calls": D("0.00"), "minimum:calls": D("50.00")}
    assert quantities_of(candidate(result, "sub-1:2026-10"))["usage:calls"] == D(0)
    assert [c.subtotal for c in result.candidates] == [D("81.00")] * 4
    balanced(cat, result)


def test_a_subscription_is_billed_from_its_start_not_from_its_first_event() -> None:
    # Started 1 August, first event 10 September: August's fee and minimum are still owed.
    cat = simple_catalog(start="2026-08-01T00:00:00Z", **MINIMUM_PLAN)
    result = run(cat, calls("2026-09-10T00:00:00Z"))
    assert candidate_ids(result) == ["sub-1:2026-08", "sub-1:2026-09"]
    assert lines_of(candidate(result, "sub-1:2026-08")) == {
        "fee:base": D("31.00"), "usage:calls": D("0.00"), "minimum:calls": D("50.00")}
    assert balanced(cat, result).excluded_by_billing_start == []


def test_billing_start_excludes_the_months_before_it_and_reconciliation_lists_them() -> None:
    doc = simple_doc(start="2026-07-15T00:00:00Z", **MINIMUM_PLAN)
    doc["billing_start"] = "2026-09"
    cat = parse_catalog(doc)
    result = run(cat, calls("2026-08-20T00:00:00Z", "2026-09-10T00:00:00Z",
                            "2026-09-11T00:00:00Z"))
    assert candidate_ids(result) == ["sub-1:2026-09"]
    assert buckets(result) == {"rated": 2, "BEFORE_BILLING_START": 1}
    (exc,) = result.exceptions
    assert "billing_start (2026-09)" in exc.error
    report = balanced(cat, result)
    assert report.billing_start == "2026-09"
    assert [(m.subscription_id, m.period) for m in report.excluded_by_billing_start] == [
        ("sub-1", "2026-07"), ("sub-1", "2026-08")]


def test_no_accepted_event_bills_nothing() -> None:
    cat = simple_catalog(**MINIMUM_PLAN)
    result = run(cat, [event("x", subject="ghost"), b"junk"])
    assert (result.windows, result.candidates) == ([], [])
    balanced(cat, result)


def test_subscription_ending_mid_month_is_billed_up_to_its_end() -> None:
    cat = simple_catalog(start="2026-10-01T00:00:00Z", end="2026-11-20T12:00:00Z",
                         fees=[{"id": "base", "amount": "300.00"}],
                         charges=[{"meter": "calls", "model": "per_unit", "unit_price": "1.00"}])
    result = run(cat, calls("2026-10-05T00:00:00Z", "2026-11-20T11:59:59Z", "2026-12-03T00:00:00Z"))
    assert result.stats.exceptions["NO_ACTIVE_SUBSCRIPTION"] == 1
    # the December event was rejected, so the watermark is in November
    assert candidate_ids(result) == ["sub-1:2026-10", "sub-1:2026-11"]
    nov = candidate(result, "sub-1:2026-11")
    # 300 * 19.5/30 = 195.00
    assert lines_of(nov) == {"fee:base": D("195.00"), "usage:calls": D("1.00")}
    assert (nov.period_start, nov.period_end) == (utc(2026, 11, 1), utc(2026, 11, 20, 12))


# -- plan changes ----------------------------------------------------------------------------------

def plan_change_catalog() -> Catalog:
    doc = simple_doc()
    doc["plans"] = [
        {"id": "starter", "currency": "USD", "fixed_fees": [{"id": "base", "amount": "31.00"}],
         "charges": [{"meter": "calls", "model": "per_unit", "unit_price": "1.00"}]},
        {"id": "growth", "currency": "USD", "fixed_fees": [{"id": "base", "amount": "62.00"}],
         "charges": [{"meter": "calls", "model": "per_unit", "unit_price": "0.50"}]},
    ]
    doc["customers"] = [customer("c", ["s1"], [
        sub("old", "starter", "2026-09-01T00:00:00Z", "2026-10-15T00:00:00Z"),
        sub("new", "growth", "2026-10-15T00:00:00Z"),
    ])]
    return parse_catalog(doc)


def test_plan_change_routes_each_event_to_the_subscription_active_at_its_time() -> None:
    cat = plan_change_catalog()
    result = run(cat, calls("2026-10-14T23:59:59Z", "2026-10-15T00:00:00Z",
                            "2026-10-20T00:00:00Z"))
    # "old" started in September: billed from there, without an event in it.
    assert sorted(candidate_ids(result)) == ["new:2026-10", "old:2026-09", "old:2026-10"]
    old, new = candidate(result, "old:2026-10"), candidate(result, "new:2026-10")
    # 31 * 14/31 = 14.00 and one call; 62 * 17/31 = 34.00 and two calls at 0.50
    assert lines_of(old) == {"fee:base": D("14.00"), "usage:calls": D("1.00")}
    assert lines_of(new) == {"fee:base": D("34.00"), "usage:calls": D("1.00")}
    assert quantities_of(new)["usage:calls"] == 2
    assert (old.period_start, old.period_end) == (utc(2026, 10, 1), utc(2026, 10, 15))
    assert (new.period_start, new.period_end) == (utc(2026, 10, 15), utc(2026, 11, 1))
    balanced(cat, result)


def test_late_usage_for_a_subscription_that_ended_before_the_first_event() -> None:
    # Regression: the first accepted event is in October, but both subscriptions started in
    # September, so September is billed (closed with October); a September event arriving
    # after that close, for a subscription that ended in September, is an adjustment, never lost.
    doc = simple_doc(fees=[{"id": "base", "amount": "30.00"}])
    doc["customers"] = [
        customer("a", ["sa"], [sub("sub-a", "p", "2026-09-01T00:00:00Z",
                                   "2026-09-20T00:00:00Z")]),
        customer("b", ["sb"], [sub("sub-b", "p", "2026-09-01T00:00:00Z")]),
    ]
    cat = parse_catalog(doc)
    result = run(cat, [
        event("1", subject="sb", time="2026-10-05T00:00:00Z"),
        event("2", subject="sb", time="2026-11-05T00:00:00Z"),   # closes October
        event("3", subject="sa", time="2026-09-10T00:00:00Z"),   # late: September issued
        event("4", subject="sb", time="2026-09-10T00:00:00Z"),
        event("5", subject="sb", time="2026-09-11T00:00:00Z"),   # September already issued
    ])
    assert result.stats.late_after_close == 3
    # sub-a was active 19 of 30 September days: 30 * 19/30 = 19.00
    assert lines_of(candidate(result, "sub-a:2026-09")) == {
        "fee:base": D("19.00"), "usage:calls": D("0.00")}
    assert lines_of(candidate(result, "sub-a:2026-09:adj-1")) == {"usage:calls": D("1.00")}
    assert lines_of(candidate(result, "sub-b:2026-09")) == {
        "fee:base": D("30.00"), "usage:calls": D("0.00")}
    # Both late September events of sub-b fall in one adjustment cycle: one adjustment.
    assert lines_of(candidate(result, "sub-b:2026-09:adj-1")) == {"usage:calls": D("2.00")}
    assert "sub-b:2026-09:adj-2" not in candidate_ids(result)
    balanced(cat, result)


# -- holds and the example catalog -----------------------------------------------------------------

def test_held_candidates_are_emitted_not_dropped() -> None:
    cat = simple_catalog(tax="", terms=None, **MINIMUM_PLAN)
    result = run(cat, calls("2026-10-05T00:00:00Z"))
    cand = candidate(result, "sub-1:2026-10")
    assert (cand.status, cand.hold_reasons) == (
        "held", ["MISSING_TAX_REGISTRATION", "MISSING_PAYMENT_TERMS"])
    assert cand.subtotal == D("81.00")   # 31.00 + 4.00 + 46.00 true-up
    report = balanced(cat, result)
    assert report.invoiced.held == 1
    assert msgspec.to_builtins(report.invoiced.totals_by_currency) == {"USD": {"ready": "0.00",
                                                                 "held": "81.00"}}


def test_example_catalog_october() -> None:
    cat = load_catalog(str(EXAMPLE))

    def ev(i: int, etype: str, data: dict[str, object], subject: str = "acme-prod") -> bytes:
        return event(f"x{i}", etype=etype, subject=subject, data=data,
                     time=f"2026-10-20T12:{i:02d}:00Z")

    lines = [
        ev(1, "api.request", {}), ev(2, "api.request", {}, "acme-dev"), ev(3, "api.request", {}),
        ev(4, "llm.completion", {"usage": {"tokens": 600}}),
        ev(5, "llm.completion", {"usage": {"tokens": "900"}}),
        ev(6, "storage.snapshot", {"gb": 80}), ev(7, "storage.snapshot", {"gb": "120"}),
        ev(8, "user.active", {"user_id": "u1"}), ev(9, "user.active", {"user_id": "u2"}),
        ev(10, "user.active", {"user_id": "u1"}),
        ev(11, "payment.captured", {"amount": "100.00"}),
        ev(12, "api.request", {}, "umbrella-osaka"),
    ]
    result = run(cat, lines)
    acme = candidate(result, "sub-acme-1:2026-10")
    assert lines_of(acme) == {
        "fee:platform": D("500.00"),
        "usage:api_calls": D("0.00"),          # 3 calls, first 1000 free
        "usage:tokens": D("1.00"),             # 1500 tokens: 2 packages of 1000 at 0.50
        "usage:storage_gb": D("29.00"),        # max 120 GB: volume tier 2, 120*0.20 + 5.00
        "usage:active_users": D("8.00"),       # u1, u2: 2 * 4.00
        "minimum:active_users": D("42.00"),    # 50.00 - 8.00
        "usage:gmv": D("2.90"),                # 2.9% of 100.00
    }
    assert acme.subtotal == D("582.90")
    subtotals = {c.invoice_candidate_id: (c.currency, c.subtotal, c.status, c.hold_reasons)
                 for c in result.candidates}
    assert subtotals == {
        "sub-acme-1:2026-10": ("USD", D("582.90"), "ready", []),
        # 49 * 14/31 = 22.129 -> 22.13; 150 * 14/31 = 67.741 -> 67.74
        "sub-globex-starter:2026-10": ("USD", D("89.87"), "ready", []),
        # 500 * 17/31 = 274.193 -> 274.19; + 50.00 minimum on active users
        # 20 % off its 50.00 of usage (the example's `launch` discount)
        "sub-globex-growth:2026-10": ("USD", D("314.19"), "ready", []),
        "sub-initech-1:2026-10": ("USD", D("199.00"), "held", ["MISSING_TAX_REGISTRATION"]),
        # 50000 * 22/31 = 35483.87 -> 35484; + 10000 minimum; one call is in the free tier
        "sub-umbrella-1:2026-10": ("JPY", D("45484"), "ready", []),
        "sub-tyrell-1:2026-10": ("EUR", D("450.00"), "ready", []),
        "sub-hooli-1:2026-10": ("USD", D("550.00"), "held", ["MISSING_PAYMENT_TERMS"]),
    }
    assert str(candidate(result, "sub-umbrella-1:2026-10").subtotal) == "45484"
    report = balanced(cat, result)
    assert msgspec.to_builtins(report.invoiced.totals_by_currency) == {
        "EUR": {"ready": "450.00", "held": "0.00"},
        # totals with tax: 45484 + 10 % consumption tax (4548.4 -> 4548)
        "JPY": {"ready": "50032", "held": "0"},
        # 634.63 (582.90 + 8.875 % NY) + 96.39 (89.87 + 7.25 % CA) + 336.97 (314.19 + 7.25 %);
        # held: 199.00 (exempt) + 589.88 (550.00 + 7.25 %)
        "USD": {"ready": "1067.99", "held": "788.88"},
    }
    last = last_cumulative(result.windows)
    assert last[("sub-acme-1", "2026-10", "gmv")].cumulative_amount == D("2.900")
