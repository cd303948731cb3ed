"""Reconciliation must catch each kind of leak between stages, naming where it is."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest
from test_flow import dirty_lines

from operators.catalog import load_catalog
from operators.engine import EngineResult, run_engine
from operators.ingest import IngestConfig
from operators.reconcile import reconcile, summarize
from schemas.reconciliation import Reconciliation

CATALOG = load_catalog("catalog/example.yaml")


@pytest.fixture
def result() -> EngineResult:
    return run_engine(CATALOG, dirty_lines(), IngestConfig())


def check(result: EngineResult) -> Reconciliation:
    return reconcile(CATALOG, result.stats, summarize(result.windows), result.candidates,
                     result.exceptions)


def test_untouched_run_balances(result: EngineResult) -> None:
    report = check(result)
    assert report.balanced and report.problems == []


def test_a_lost_rated_window_is_named(result: EngineResult) -> None:
    lost = next(w for w in result.windows if w.meter == "tokens")
    result.windows = [w for w in result.windows if w is not lost]
    report = check(result)
    assert not report.balanced
    assert any(p.startswith("sub-acme-1 2026-10 tokens: ingested 1500, rated 0")
               for p in report.problems), report.problems
    # umbrella's tokens are still there: 2 accepted, 1 left in windows
    assert "meter tokens: 2 accepted values, 1 counted in rated windows" in report.problems


def test_a_dropped_invoice_line_is_named(result: EngineResult) -> None:
    cand = next(c for c in result.candidates if c.invoice_candidate_id == "sub-acme-1:2026-10")
    line = next(x for x in cand.lines if x.meter == "tokens")
    cand.lines.remove(line)
    cand.subtotal -= line.amount
    report = check(result)
    assert "sub-acme-1 2026-10 tokens: ingested 1500, rated 1500, invoiced 0" in report.problems
    assert any("tokens: rated" in p and "invoiced 0" in p for p in report.problems)


def test_a_subtotal_that_is_not_the_sum_of_lines_is_named(result: EngineResult) -> None:
    cand = result.candidates[0]
    cand.subtotal += Decimal("0.01")
    report = check(result)
    assert any(p.startswith(f"candidate {cand.invoice_candidate_id}: lines sum to")
               for p in report.problems)


def test_a_candidate_emitted_twice_is_named(result: EngineResult) -> None:
    result.candidates.append(msgspec.structs.replace(result.candidates[0]))
    report = check(result)
    assert (f"candidate {result.candidates[0].invoice_candidate_id} emitted twice"
            in report.problems)


def test_a_lost_exception_record_is_named(result: EngineResult) -> None:
    result.exceptions = [e for e in result.exceptions if e.reason != "UNKNOWN_SUBJECT"]
    report = check(result)
    assert "exceptions UNKNOWN_SUBJECT: counted 1, written 0" in report.problems


def test_an_event_in_no_bucket_is_named(result: EngineResult) -> None:
    result.stats.read += 1
    report = check(result)
    assert "events: read 30 but buckets hold 29" in report.problems


def test_window_deltas_that_do_not_add_up_are_named(result: EngineResult) -> None:
    row = next(w for w in result.windows if w.meter == "storage_gb")
    row.amount_delta += Decimal("0.000001")
    report = check(result)
    assert any("storage_gb: window deltas sum to" in p for p in report.problems)
