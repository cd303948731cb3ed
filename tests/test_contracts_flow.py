"""Live contracts inside the flow's steps, as plain objects: the ingest logic applies contracts
records between usage batches, refuses what it must (CONTRACT_REFUSED) and applies the rest,
sends raters their terms, closes the months of a subscription published late, and resumes from
its snapshot with the contracts it had. The real-broker proof is test_contracts_stream.py."""

from __future__ import annotations

import copy
from typing import Any

from conftest import TEST_NOW, customer, event, simple_doc, sub

from flows.pipeline import (
    IngestLogic,
    LiveCatalog,
    Rejected,
    memory_dedup,
)
from flows.sources import ContractsBatch
from operators.clock import fixed_clock
from operators.contracts import catalog_of, encode_record, specs_of
from operators.ingest import IngestConfig, IngestStats
from operators.protocol import SubscriptionOps, Terms
from operators.rating import SubscriptionRater
from schemas.records import ExceptionRecord, InvoiceCandidate, RatedWindow

CONFIG = IngestConfig(clock=fixed_clock(TEST_NOW), ledger=False)
PART = "usage:0"


class Driver:
    """The ingest logic of one partition and a rater per subscription, wired like the flow."""

    def __init__(self, resume: Any = None) -> None:
        self.live = LiveCatalog(catalog_of({}))
        self.ingest = IngestLogic(catalog_of({}), CONFIG, memory_dedup, resume, True, self.live)
        self.raters: dict[str, SubscriptionRater] = {}
        self.offset = 0
        self.position = 0
        self.exceptions: list[ExceptionRecord] = []
        self.candidates: list[InvoiceCandidate] = []
        self.windows: list[RatedWindow] = []
        self.ops: list[SubscriptionOps] = []

    def publish(self, doc: dict[str, Any], *extra: tuple[bytes, bytes | None]) -> None:
        records: list[tuple[int, bytes | None, bytes | None]] = []
        for key, spec in sorted(specs_of(doc).items()):
            records.append((self.offset, key.encode(), encode_record(key, 1, spec)))
            self.offset += 1
        for key, value in extra:
            records.append((self.offset, key, value))
            self.offset += 1
        self._feed([(PART, ContractsBatch("contracts", records))])

    def usage(self, *lines: bytes) -> None:
        batch = []
        for line in lines:
            self.position += 1
            batch.append((self.position, line))
        self._feed([(PART, batch)])

    def finish(self) -> None:
        out, _ = self.ingest.on_eof()
        self._route(list(out))

    def _feed(self, chunks: list[Any]) -> None:
        out, _ = self.ingest.on_batch(chunks)
        self._route(list(out))

    def _route(self, items: list[Any]) -> None:
        for item in items:
            if isinstance(item, Rejected):
                self.exceptions.extend(item.records)
            elif isinstance(item, SubscriptionOps):
                self.ops.append(item)
                rater = self.raters.get(item.subscription_id)
                if rater is None:
                    first = item.ops[0]
                    assert isinstance(first, Terms), "a rater's first op is its terms"
                    rater = self.raters[item.subscription_id] = SubscriptionRater(
                        first.terms.catalog(), item.subscription_id, CONFIG.window)
                for out in rater.apply(item.ops):
                    if isinstance(out, RatedWindow):
                        self.windows.append(out)
                    elif isinstance(out, InvoiceCandidate):
                        self.candidates.append(out)
                    elif isinstance(out, ExceptionRecord):
                        self.exceptions.append(out)
            else:
                assert isinstance(item, IngestStats)

    def reasons(self) -> list[str]:
        return [e.reason for e in self.exceptions]


def base_doc() -> dict[str, Any]:
    return simple_doc(fees=[{"id": "base", "amount": "30.00"}])


def with_d(doc: dict[str, Any], start: str = "2026-10-01T00:00:00Z") -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["customers"].append(customer("d", ["sd"], [sub("sub-d", "p", start)]))
    return out


def test_a_subscription_published_before_its_usage_is_rated_without_a_restart() -> None:
    run = Driver()
    run.publish(base_doc())
    run.usage(event("1"), event("2", subject="sd"))
    assert run.reasons() == ["UNKNOWN_SUBJECT"]  # read before its contract
    run.publish(with_d(base_doc()))
    run.usage(event("3", subject="sd", time="2026-10-05T12:01:00Z"))
    run.finish()
    assert {c.invoice_candidate_id for c in run.candidates} == {"sub-1:2026-10",
                                                                 "sub-d:2026-10"}
    # Each rater got its terms once, first, and the live catalog (for the sinks) has d.
    terms = [(o.subscription_id, type(op).__name__) for o in run.ops for op in o.ops
             if isinstance(op, Terms)]
    assert sorted(terms) == [("sub-1", "Terms"), ("sub-d", "Terms")]
    assert "sub-d" in run.live.current.subscriptions


def test_a_customer_published_after_its_month_closed_is_invoiced_for_it() -> None:
    run = Driver()
    run.publish(base_doc())
    run.usage(event("1", time="2026-10-05T00:00:00Z"), event("2", subject="sd",
                                                             time="2026-10-06T00:00:00Z"),
              event("3", time="2026-11-05T00:00:00Z"))  # closes October
    assert [c.invoice_candidate_id for c in run.candidates] == ["sub-1:2026-10"]
    run.publish(with_d(base_doc()))
    # October closed before d existed: its close comes with the contract, fixed fee included.
    (october,) = [c for c in run.candidates if c.subscription_id == "sub-d"]
    assert october.billing_period == "2026-10" and october.subtotal == 30
    # The retried usage for it is an adjustment of that candidate, settled once the watermark
    # passes the end of the adjustment cycle it arrived in.
    run.usage(event("2", subject="sd", time="2026-10-06T00:00:00Z"))
    assert run.candidates[-1].invoice_candidate_id == "sub-d:2026-10"
    run.usage(event("4", time="2026-11-06T00:00:00Z"))
    assert run.candidates[-1].invoice_candidate_id == "sub-d:2026-10:adj-1"
    assert run.candidates[-1].subtotal == 1


def test_an_invalid_record_is_refused_and_the_others_applied() -> None:
    run = Driver()
    bad_customer = encode_record("customer/x", 1, {"id": "x", "legal_entity": "nowhere",
                                                   "subjects": ["sx"], "subscriptions": []})
    run.publish(with_d(base_doc()), (b"customer/x", bad_customer), (b"junk", b"{}"))
    refused = [e for e in run.exceptions if e.reason == "CONTRACT_REFUSED"]
    assert len(refused) == 2
    assert "is not <kind>/<id>" in refused[0].error
    assert "customer/x" in refused[1].error and "invalid" in refused[1].error
    assert refused[1].raw is not None and '"nowhere"' in refused[1].raw
    assert set(run.ingest.catalog.customers) == {"c", "d"}


def test_a_plan_edit_after_rated_usage_is_refused_and_the_old_prices_stay() -> None:
    run = Driver()
    run.publish(base_doc())
    run.usage(event("1", time="2026-10-05T00:00:00Z"))
    edited = base_doc()
    edited["plans"][0]["charges"][0]["unit_price"] = "9.00"
    edited["customers"][0]["tax_registration"] = "TAX-CORRECTED"  # fine on its own
    spec = specs_of(edited)
    run.offset += 1
    run._feed([(PART, ContractsBatch("contracts", [
        (run.offset, b"plan/p", encode_record("plan/p", 2, spec["plan/p"])),
        (run.offset + 1, b"customer/c", encode_record("customer/c", 2, spec["customer/c"]))]))])
    (refused,) = [e for e in run.exceptions if e.reason == "CONTRACT_REFUSED"]
    assert "plan 'p' priced subscription 'sub-1'" in refused.error
    assert run.ingest.catalog.plans["p"].charges[0].unit_price == 1
    assert run.ingest.catalog.customers["c"].tax_registration == "TAX-CORRECTED"
    run.usage(event("2", time="2026-10-06T00:00:00Z"))
    run.finish()
    (cand,) = run.candidates
    assert cand.subtotal == 32  # 30.00 fee + 2 calls at the old 1.00


def test_the_contracts_resume_from_the_snapshot() -> None:
    run = Driver()
    run.publish(with_d(base_doc()))
    run.usage(event("1"))
    resumed = Driver(resume=run.ingest.snapshot())
    assert set(resumed.ingest.catalog.customers) == {"c", "d"}
    assert resumed.live.version == run.offset
    resumed.usage(event("2", subject="sd"))
    assert resumed.reasons() == []


def test_a_rater_refuses_a_plan_change_once_it_rated_usage() -> None:
    doc = base_doc()
    doc["plans"].append(dict(copy.deepcopy(doc["plans"][0]), id="p2"))
    catalog = catalog_of(specs_of(doc))
    rater = SubscriptionRater(catalog, "sub-1", CONFIG.window)
    moved = copy.deepcopy(doc)
    moved["customers"][0]["subscriptions"][0]["plan"] = "p2"
    new_terms = catalog_of(specs_of(moved)).terms_of("sub-1")
    # Before anything is rated the new terms apply...
    assert rater.apply([Terms(1, new_terms, -1)]) == []
    assert rater.plan.id == "p2"
    # ...after, they are refused and the rater keeps its plan.
    fresh = SubscriptionRater(catalog, "sub-1", CONFIG.window)
    fresh.state.rating_seq = 3
    (out,) = fresh.apply([Terms(2, new_terms, -1)])
    assert isinstance(out, ExceptionRecord) and out.reason == "CONTRACT_REFUSED"
    assert fresh.plan.id == "p"
    assert fresh.apply([Terms(2, new_terms, -1)]) == []  # reported once


def test_a_subscription_published_late_is_billed_from_its_own_start() -> None:
    # No billing_start: every month since its start is owed, even one before the first month
    # billed so far (September, while sub-1 began in October).
    run = Driver()
    run.publish(base_doc())
    run.usage(event("1", time="2026-10-05T00:00:00Z"), event("3", time="2026-11-05T00:00:00Z"))
    run.publish(with_d(base_doc(), start="2026-09-01T00:00:00Z"))
    assert sorted(c.invoice_candidate_id for c in run.candidates
                  if c.subscription_id == "sub-d") == ["sub-d:2026-09", "sub-d:2026-10"]
    # Publishing an unrelated change again closes nothing twice.
    again = with_d(base_doc(), start="2026-09-01T00:00:00Z")
    again["customers"][1]["tax_registration"] = "TAX-D"
    run.publish(again)
    assert len([c for c in run.candidates if c.subscription_id == "sub-d"]) == 2
