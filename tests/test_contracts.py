"""Contracts as records (operators/contracts.py): the catalog survives the split into records,
publishing sends only what changed, and a change that would alter rated or invoiced usage is
refused with the subscription and the time named, while the changes a live deployment needs
(a new customer, a future plan change, a corrected tax registration) go through."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import customer, simple_doc, sub

from operators.catalog import CatalogError, load_catalog_document, parse_catalog
from operators.contracts import (
    ContractsError,
    Frozen,
    catalog_of,
    changes,
    decode_record,
    document_of,
    encode_record,
    in_force,
    refusals,
    specs_of,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "catalog" / "example.yaml"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_the_example_catalog_survives_the_split_into_records() -> None:
    doc, catalog = load_catalog_document(str(EXAMPLE))
    specs = specs_of(doc)
    assert "setting/billing_start" in specs and "customer/globex" in specs
    again = catalog_of(specs)
    assert again.plans == catalog.plans and again.customers == catalog.customers
    assert again.meters == catalog.meters and again.legal_entities == catalog.legal_entities
    assert again.billing_start == catalog.billing_start
    # Through the wire format too: each record encoded and decoded.
    wire = [decode_record(k.encode(), encode_record(k, 1, s)) for k, s in specs.items()]
    assert catalog_of(in_force((k, s) for k, _, s in wire)).customers == catalog.customers
    assert document_of(specs)["customers"][0]["id"] == "acme"  # id first, in id order


def test_changes_are_only_what_differs_with_a_tombstone_for_what_is_gone() -> None:
    doc = simple_doc()
    base = specs_of(doc)
    assert changes(base, base) == []
    edited = copy.deepcopy(doc)
    edited["customers"][0]["tax_registration"] = "TAX-2"
    edited["customers"].append(customer("d", ["sd"], [sub("sub-d", "p", "2026-11-01T00:00:00Z")]))
    del edited["meters"][-1]
    got = changes(base, specs_of(edited))
    assert [(k, s is None) for k, s in got] == [
        ("customer/c", False), ("customer/d", False), ("meter/seats", True)]


@pytest.mark.parametrize(("key", "value", "fragment"), [
    (None, b"{}", "without a key"),
    (b"plan", b"{}", "is not <kind>/<id>"),
    (b"invoice/x", b"{}", "is not <kind>/<id>"),
    (b"setting/colour", b"{}", "unknown setting"),
    (b"plan/p", b"not json", "not a contracts record"),
    (b"plan/p", b'{"kind": "plan", "id": "q", "version": 1, "spec": {"id": "q"}}',
     "not what its key says"),
    (b"plan/p", b'{"kind": "plan", "id": "p", "version": 1, "spec": {"id": "q"}}',
     "the spec's id"),
    (b"\xff/x", b"{}", "not UTF-8"),
])
def test_a_message_that_is_not_a_record_is_refused_with_why(
        key: bytes | None, value: bytes, fragment: str) -> None:
    with pytest.raises(ContractsError, match=fragment):
        decode_record(key, value)


def test_a_tombstone_removes_the_record() -> None:
    assert decode_record(b"plan/p", None) == ("plan/p", 0, None)
    assert in_force([("plan/p", {"id": "p"}), ("plan/p", None)]) == {}


def test_records_that_make_no_valid_catalog_are_an_error_listing_every_problem() -> None:
    specs = specs_of(simple_doc())
    specs["customer/c"] = dict(specs["customer/c"], legal_entity="nowhere",
                               payment_terms_days=-1)
    with pytest.raises(CatalogError) as info:
        catalog_of(specs)
    assert len(info.value.problems) >= 2


# -- what may change -------------------------------------------------------------------------------

def two_plans(**sub_fields: Any) -> dict[str, Any]:
    doc = simple_doc()
    doc["plans"].append(dict(copy.deepcopy(doc["plans"][0]), id="p2"))
    doc["plans"][1]["charges"][0]["unit_price"] = "2.00"
    s = dict(sub("sub-1", "p", "2026-10-01T00:00:00Z"), **sub_fields)
    doc["customers"][0]["subscriptions"] = [s]
    return doc


RATED = Frozen(subscriptions={"sub-1": at("2026-10-20T00:00:00Z")})


def refused(before: dict[str, Any], after: dict[str, Any], frozen: Frozen = RATED
            ) -> dict[str, str]:
    return refusals(parse_catalog(before), parse_catalog(after), frozen)


def test_a_plan_move_a_plan_edit_and_an_end_before_rated_usage_are_refused() -> None:
    base = two_plans()
    moved = copy.deepcopy(base)
    moved["customers"][0]["subscriptions"][0]["plan"] = "p2"
    why = refused(base, moved)
    assert list(why) == ["customer/c"]
    assert "subscription 'sub-1' is rated or invoiced through 2026-10-20T00:00:00Z" in why[
        "customer/c"]
    assert "cannot move to plan 'p2'" in why["customer/c"]

    edited = copy.deepcopy(base)
    edited["plans"][0]["charges"][0]["unit_price"] = "1.50"
    assert "plan 'p' priced subscription 'sub-1'" in refused(base, edited)["plan/p"]

    ended = copy.deepcopy(base)
    ended["customers"][0]["subscriptions"][0]["end"] = "2026-10-15T00:00:00Z"
    assert "its end cannot move from open-ended to 2026-10-15T00:00:00Z" in refused(
        base, ended)["customer/c"]

    started = copy.deepcopy(base)
    started["customers"][0]["subscriptions"][0]["start"] = "2026-10-05T00:00:00Z"
    assert "its start cannot move" in refused(base, started)["customer/c"]

    removed = copy.deepcopy(base)
    removed["customers"][0]["subscriptions"] = []
    assert "cannot be removed" in refused(base, removed)["customer/c"]

    meter = copy.deepcopy(base)
    meter["meters"][0]["event_type"] = "api.call"
    assert "meter 'calls' is charged by plan 'p'" in refused(base, meter)["meter/calls"]


def test_the_changes_a_live_deployment_needs_are_accepted() -> None:
    base = two_plans()
    future = copy.deepcopy(base)
    # A plan change at a future time: sub-1 ends where sub-2 on the new plan starts.
    future["customers"][0]["subscriptions"] = [
        sub("sub-1", "p", "2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z"),
        sub("sub-2", "p2", "2026-11-01T00:00:00Z")]
    future["customers"][0]["tax_registration"] = "TAX-CORRECTED"
    future["customers"][0]["subjects"].append("s1-eu")
    future["customers"].append(customer("d", ["sd"], [sub("sub-d", "p2", "2026-09-01T00:00:00Z")]))
    future["plans"].append(dict(copy.deepcopy(base["plans"][0]), id="p3"))
    assert refused(base, future) == {}
    # An unused plan may still be edited.
    unused = copy.deepcopy(base)
    unused["plans"][1]["charges"][0]["unit_price"] = "3.00"
    assert refused(base, unused) == {}


def test_an_invoiced_month_freezes_a_subscription_without_usage() -> None:
    base = two_plans()
    moved = copy.deepcopy(base)
    moved["customers"][0]["subscriptions"][0]["start"] = "2026-09-01T00:00:00Z"
    closed = Frozen(closed_end=at("2026-11-01T00:00:00Z"))
    assert "through 2026-11-01T00:00:00Z" in refused(base, moved, closed)["customer/c"]
    # Nothing rated or closed: anything goes.
    assert refused(base, moved, Frozen()) == {}


def test_billing_start_is_fixed_once_anything_is_rated() -> None:
    base = two_plans()
    later = dict(copy.deepcopy(base), billing_start="2026-11")
    assert "billing_start cannot move from unset to 2026-11" in refused(
        base, later)["setting/billing_start"]
    assert refused(base, later, Frozen()) == {}


def test_a_subscription_cannot_be_added_in_a_retired_period() -> None:
    base = two_plans()
    late = copy.deepcopy(base)
    late["customers"].append(customer("d", ["sd"], [sub("sub-d", "p", "2026-08-01T00:00:00Z")]))
    frozen = Frozen(closed_end=at("2026-11-01T00:00:00Z"), retired_end=at("2026-09-01T00:00:00Z"))
    assert "in a period already retired" in refused(base, late, frozen)["customer/d"]
