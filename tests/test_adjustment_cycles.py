"""One adjustment per period per adjustment cycle (operators/rating.py, operators/ingest.py).

Late usage for an issued period is rated at once (correction rows, running charges) but waits
for the watermark to cross the adjustment-cycle boundary after the subscription's first late
contribution, or for the end of a bounded input, before it becomes an adjustment candidate.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from conftest import candidate, candidate_ids, event, lines_of, reconcile, run, simple_catalog

from operators.erp import build_erp
from operators.ingest import IngestConfig

D = Decimal
PLAN = {"fees": [{"id": "base", "amount": "31.00"}],
        "charges": [{"meter": "calls", "model": "per_unit", "unit_price": "1.00"}]}


def calls(*times: str, prefix: str) -> list[bytes]:
    return [event(f"{prefix}{n}", time=t) for n, t in enumerate(times)]


OCTOBER = calls("2026-10-05T00:00:00Z", "2026-10-06T00:00:00Z", prefix="oct")
CLOSES = calls("2026-11-03T10:00:00Z", prefix="nov")  # October closed, watermark 11-03 10:00


CASES = {
    # three late calls on the same watermark day, then the watermark passes midnight
    "one cycle, one adjustment": (
        [*OCTOBER, *CLOSES, *calls(*["2026-10-20T00:00:00Z"] * 3, prefix="late"),
         *calls("2026-11-04T00:00:01Z", prefix="next")],
        timedelta(days=1), {"sub-1:2026-10:adj-1": {"usage:calls": D("3.00")}}),
    # late usage on two watermark days: one adjustment per cycle, in order
    "two cycles, two adjustments": (
        [*OCTOBER, *CLOSES, *calls("2026-10-20T00:00:00Z", prefix="a"),
         *calls("2026-11-04T09:00:00Z", prefix="next"),
         *calls("2026-10-21T00:00:00Z", "2026-10-22T00:00:00Z", prefix="b"),
         *calls("2026-11-05T09:00:00Z", prefix="later")],
        timedelta(days=1), {"sub-1:2026-10:adj-1": {"usage:calls": D("1.00")},
                            "sub-1:2026-10:adj-2": {"usage:calls": D("2.00")}}),
    # a week-long cycle gathers both days into one
    "a longer cycle gathers more": (
        [*OCTOBER, *CLOSES, *calls("2026-10-20T00:00:00Z", prefix="a"),
         *calls("2026-11-04T09:00:00Z", prefix="next"),
         *calls("2026-10-21T00:00:00Z", "2026-10-22T00:00:00Z", prefix="b"),
         *calls("2026-11-05T09:00:00Z", prefix="later")],
        timedelta(days=7), {"sub-1:2026-10:adj-1": {"usage:calls": D("3.00")}}),
    # nothing after the late usage: the end of the bounded input settles it
    "the end of the input settles": (
        [*OCTOBER, *CLOSES, *calls("2026-10-20T00:00:00Z", "2026-10-21T00:00:00Z",
                                   prefix="late")],
        timedelta(days=1), {"sub-1:2026-10:adj-1": {"usage:calls": D("2.00")}}),
    # an hourly cycle: a late call each hour is its own adjustment
    "an hourly cycle": (
        [*OCTOBER, *CLOSES, *calls("2026-10-20T00:00:00Z", prefix="a"),
         *calls("2026-11-03T11:00:01Z", prefix="next"),
         *calls("2026-10-20T01:00:00Z", prefix="b")],
        timedelta(hours=1), {"sub-1:2026-10:adj-1": {"usage:calls": D("1.00")},
                             "sub-1:2026-10:adj-2": {"usage:calls": D("1.00")}}),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("batch_size", [1, 2, 1000])
def test_adjustments_per_cycle(case: str, batch_size: int) -> None:
    lines, cycle, expected = CASES[case]
    cat = simple_catalog(**PLAN)
    result = run(cat, lines, batch_size=batch_size, adjustment_cycle=cycle)
    adjustments = [c for c in result.candidates if c.adjusts]
    assert {c.invoice_candidate_id: lines_of(c) for c in adjustments} == expected
    # the period from scratch: the candidate and its adjustments add up to every call
    october = [c for c in result.candidates if c.billing_period == "2026-10"]
    late = sum(amounts["usage:calls"] for amounts in expected.values())
    assert sum(c.subtotal for c in october) == D("31.00") + 2 + late
    assert reconcile(cat, result).balanced


def test_late_usage_that_changes_no_amount_is_recorded_but_not_posted() -> None:
    # The first 1000 calls are free: a late call moves a quantity, not an amount.
    cat = simple_catalog(charges=[{"meter": "calls", "model": "graduated", "tiers": [
        {"up_to": "1000", "unit_price": "0"}, {"unit_price": "0.01"}]}])
    result = run(cat, [*OCTOBER, *CLOSES, *calls("2026-10-20T00:00:00Z", prefix="late")])
    adj = candidate(result, "sub-1:2026-10:adj-1")
    assert [(x.kind, x.quantity, x.amount) for x in adj.lines] == [("usage", 1, D("0.00"))]
    erp = build_erp(cat, result.candidates)
    assert erp.quantity_only == ["sub-1:2026-10:adj-1"]
    assert "sub-1:2026-10:adj-1" not in {a.ar_invoice_id for a in erp.ar_invoices}
    assert reconcile(cat, result).balanced  # its quantity is invoiced all the same


def test_a_period_retiring_before_its_cycle_ends_settles_first() -> None:
    # A 30-day cycle (its next boundary after the late call is 2026-12-03) but a three-day
    # retention: October retires on 2026-11-04 01:00, before the cycle ends. Its late usage
    # must be on a document before its state goes.
    cat = simple_catalog(**PLAN)
    lines = [*OCTOBER, *CLOSES, *calls("2026-10-20T00:00:00Z", prefix="late"),
             *calls("2026-11-06T00:00:00Z", prefix="after")]
    result = run(cat, lines, adjustment_cycle=timedelta(days=30), retention=timedelta(days=3))
    assert [r.period for r in result.retired] == ["2026-10"]
    assert candidate_ids(result)[-1] == "sub-1:2026-11"  # adj-1 came before: on retiring
    assert lines_of(candidate(result, "sub-1:2026-10:adj-1")) == {"usage:calls": D("1.00")}
    assert reconcile(cat, result).balanced


def test_one_cycle_settles_every_period_it_touched() -> None:
    cat = simple_catalog(**PLAN, start="2026-09-01T00:00:00Z")
    lines = [*calls("2026-09-10T00:00:00Z", prefix="sep"), *OCTOBER, *CLOSES,
             *calls("2026-09-11T00:00:00Z", "2026-10-20T00:00:00Z", prefix="late")]
    result = run(cat, lines)
    assert [c for c in candidate_ids(result) if ":adj-" in c] == [
        "sub-1:2026-09:adj-1", "sub-1:2026-10:adj-1"]


@pytest.mark.parametrize("cycle", [timedelta(0), timedelta(seconds=1.5), timedelta(days=4000)])
def test_an_adjustment_cycle_must_be_whole_positive_seconds(cycle: timedelta) -> None:
    with pytest.raises(ValueError, match="adjustment"):
        IngestConfig(adjustment_cycle=cycle)
