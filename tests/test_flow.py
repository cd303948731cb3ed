"""Whole-flow tests: the Bytewax dataflow over dirty input, with one and with two workers.

The sequential engine (operators/engine.py) is the specification; the dataflow must give exactly
the same outputs, however many workers and however the input is chunked.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from flows.pipeline import FILE_RATING_SHARDS, Sinks, build_flow
from meterwax.workload_customers import customers_workload, write_customers_catalog
from operators.catalog import Catalog, load_catalog
from operators.engine import EngineResult, run_engine
from operators.ingest import IngestConfig
from operators.reconcile import StatsTotal, reconcile, summarize
from schemas.records import ENCODER

CATALOG = "catalog/example.yaml"


def ev(i: int | str, subject: str, typ: str, time: str, data: dict[str, Any] | None = None,
       source: str = "svc") -> bytes:
    return ENCODER.encode({"specversion": "1.0", "id": str(i), "source": source, "type": typ,
                           "subject": subject, "time": time, "data": data or {}})


def dirty_lines() -> list[bytes]:
    """A small dirty workload touching every bucket, a plan change, late and very late events."""
    lines = [
        ev(1, "acme-prod", "api.request", "2026-10-01T00:00:10Z"),
        ev(2, "acme-prod", "llm.completion", "2026-10-01T00:00:20Z", {"usage": {"tokens": 1500}}),
        ev(2, "acme-prod", "llm.completion", "2026-10-01T00:00:21Z", {"usage": {"tokens": 9}}),
        b"{not json",
        b"\xff\xfe garbage",
        ev(3, "acme-prod", "api.request", "2026-10-01T00:01:00"),  # naive time
        ev(4, "ghost", "api.request", "2026-10-01T00:02:00Z"),  # unknown subject
        ev(4, "acme-prod", "api.request", "2026-10-01T00:02:00Z"),  # dup of a rejected first
        ev(5, "umbrella-tokyo", "api.request", "2026-10-05T00:00:00Z"),  # before its sub starts
        ev(6, "acme-dev", "payment.captured", "2026-10-02T10:00:00Z", {"amount": -3}),
        ev(7, "acme-dev", "page.view", "2026-10-02T10:00:00Z"),  # unmetered
        ev(8, "globex-main", "api.request", "2026-10-14T23:59:59Z"),  # starter plan
        ev(9, "globex-main", "api.request", "2026-10-15T00:00:00Z"),  # growth plan
        ev(10, "globex-main", "seats.set", "2026-10-14T12:00:00Z", {"count": 7}),
        ev(11, "acme-dev", "user.active", "2026-10-03T00:00:00Z", {"user_id": "u1"}),
        ev(12, "acme-dev", "user.active", "2026-10-03T00:00:30Z", {"user_id": "u2"}),
        ev(13, "acme-dev", "user.active", "2026-10-03T00:05:00Z", {"user_id": "u1"}),
        ev(14, "acme-prod", "storage.snapshot", "2026-10-20T00:00:00Z", {"gb": "120.5"}),
        ev(15, "acme-prod", "storage.snapshot", "2026-10-19T23:58:00Z", {"gb": 99}),  # ooo
        ev(16, "umbrella-osaka", "llm.completion", "2026-10-21T00:00:00Z",
           {"usage": {"tokens": 2001}}),
        ev(17, "tyrell-eu", "payment.captured", "2026-10-22T00:00:00Z", {"amount": "19.99"}),
        ev(18, "initech-app", "api.request", "2026-10-23T00:00:00Z"),
        ev(19, "acme-prod", "api.request", "2026-11-02T00:00:00Z"),  # closes October
        ev(20, "acme-prod", "storage.snapshot", "2026-10-25T00:00:00Z", {"gb": "130"}),  # late
        ev(21, "acme-prod", "api.request", "2026-10-31T23:59:59Z"),  # late, api tier 1: qty only
        ev(22, "acme-dev", "user.active", "2026-10-30T00:00:00Z", {"user_id": "u3"}),  # late
        ev(23, "hooli-prod", "api.request", "2026-11-21T00:00:00Z"),  # after hooli's sub ends
        ev(24, "hooli-prod", "api.request", "2026-11-20T11:59:59Z"),
        b"",
        ev(25, "acme-prod", "api.request", "2026-11-30T23:00:00Z"),
    ]
    return lines


def run_flow(catalog: Catalog, lines: list[bytes], workers: int, chunk: int = 3,
             config: IngestConfig | None = None, rating_shards: int | None = None
             ) -> EngineResult:
    chunks = [("file:0", [(n, line) for n, line in numbered])
              for numbered in _chunks(list(enumerate(lines, start=1)), chunk)]
    exc: list[Any] = []
    stats: list[Any] = []
    win: list[Any] = []
    cand: list[Any] = []
    flow = build_flow(catalog, config or IngestConfig(), TestingSource(chunks),
                      Sinks(TestingSink(exc), TestingSink(stats), TestingSink(win),
                            TestingSink(cand)),
                      recoverable=rating_shards is None, rating_shards=rating_shards)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    result = EngineResult()
    for s in stats:
        result.stats.add(s)
    result.exceptions = [e for chunk_ in exc for e in chunk_]
    result.windows = [w for chunk_ in win for w in chunk_]
    result.candidates = [c for chunk_ in cand for c in chunk_]
    return result


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def canonical(result: EngineResult) -> dict[str, Any]:
    """Order-free view: per-subscription order is what the flow guarantees, not global order."""
    def enc(x: Any) -> bytes:
        return ENCODER.encode(x)
    return {
        "exceptions": sorted(enc(e) for e in result.exceptions),
        "windows": sorted(enc(w) for w in result.windows),
        "candidates": sorted(enc(c) for c in result.candidates),
        "stats": (result.stats.read, result.stats.duplicates, result.stats.unmetered,
                  result.stats.rated, dict(result.stats.exceptions)),
    }


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(CATALOG)


@pytest.fixture(scope="module")
def expected(catalog: Catalog) -> EngineResult:
    return run_engine(catalog, dirty_lines(), IngestConfig())


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_flow_matches_engine(catalog: Catalog, expected: EngineResult, workers: int,
                             chunk: int) -> None:
    got = run_flow(catalog, dirty_lines(), workers, chunk)
    assert canonical(got) == canonical(expected)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(("chunk", "shards"), [(1, 1), (4, 3), (1000, 64)])
def test_sharded_rating_matches_engine(catalog: Catalog, expected: EngineResult, workers: int,
                                       chunk: int, shards: int) -> None:
    """File mode keys rating by shards of the subscriptions (FILE_RATING_SHARDS): the same
    outputs as keyed by subscription, and as the engine."""
    got = run_flow(catalog, dirty_lines(), workers, chunk, rating_shards=shards)
    assert canonical(got) == canonical(expected)


def test_sharded_rating_matches_engine_over_many_customers(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    write_customers_catalog(path, 120, seed=2)
    many = load_catalog(str(path))
    lines = list(customers_workload(many, 3000, seed=2))
    want = run_engine(many, lines, IngestConfig())
    for workers in (1, 2):
        got = run_flow(many, lines, workers, 500, rating_shards=FILE_RATING_SHARDS)
        assert canonical(got) == canonical(want)


def test_rating_shards_need_a_flow_without_recovery(catalog: Catalog) -> None:
    sinks = Sinks(TestingSink([]), TestingSink([]), TestingSink([]), TestingSink([]))
    with pytest.raises(ValueError, match="only without recovery"):
        build_flow(catalog, IngestConfig(), TestingSource([]), sinks, rating_shards=4)


def test_dirty_workload_buckets_and_reconciles(catalog: Catalog, expected: EngineResult) -> None:
    report = reconcile(catalog, expected.stats, summarize(expected.windows),
                       expected.candidates, expected.exceptions)
    assert report.balanced, report.problems
    events = report.events
    assert events.read == 29 and events.blank_lines_skipped == 1
    assert events.exceptions == {"INVALID_JSON": 2, "INVALID_EVENT": 1, "FUTURE_EVENT": 0,
                                    "LATE_BEYOND_RETENTION": 0,
                                    "BEFORE_BILLING_START": 0,
                                    "UNKNOWN_SUBJECT": 1, "NO_ACTIVE_SUBSCRIPTION": 2,
                                    "INVALID_VALUE": 1, "PERIOD_LIMIT_EXCEEDED": 0,
                                    "INTERNAL_ERROR": 0, "CONTRACT_REFUSED": 0}
    # id 2 resent. Id 4's first occurrence was rejected for its subject, which claims nothing,
    # so its good copy is rated.
    assert events.duplicates == 1
    assert events.unmetered == 1
    assert events.rated == 29 - 1 - 7 - 1
    assert events.late_after_close == 3


def test_late_events_produce_adjustments_that_sum_to_the_period(expected: EngineResult) -> None:
    by_id = {c.invoice_candidate_id: c for c in expected.candidates}
    adjustments = [c for c in expected.candidates if c.candidate_type == "adjustment"]
    # The three late events arrive within one adjustment cycle: one adjustment, settled when
    # the watermark passes the next day. Storage max 120.5 -> 130 changes the volume line; the
    # late api call changes only a quantity in the free tier; the late user u3 adds 4.00 and
    # shrinks the minimum true-up.
    assert [a.invoice_candidate_id for a in adjustments] == ["sub-acme-1:2026-10:adj-1"]
    lines = {line.line_id.removeprefix("sub-acme-1:2026-10:adj-1:"): line
             for line in adjustments[0].lines}
    assert lines["usage:storage_gb"].quantity == 130 - 120.5
    # volume: 120.5 GB in tier 2 = 120.5 * 0.20 + 5.00 = 29.10; 130 * 0.20 + 5.00 = 31.00
    assert str(lines["usage:storage_gb"].amount) == "1.90"
    api = lines["usage:api_calls"]
    assert (str(api.quantity), str(api.amount)) == ("1", "0.00")
    assert str(lines["usage:active_users"].amount) == "4.00"
    assert str(lines["minimum:active_users"].amount) == "-4.00"
    original = by_id["sub-acme-1:2026-10"]
    total = original.subtotal + sum(a.subtotal for a in adjustments)
    # The full October at the final quantities, priced from scratch:
    # platform 500.00 + api 0 + tokens ceil(1500/1000)*0.50 = 1.00 + storage 31.00
    # + active users 3 * 4.00 = 12.00 with minimum 50.00 -> true-up 38.00 + gmv 0 = 582.00
    assert str(total) == "582.00"


def test_plan_change_splits_the_month(expected: EngineResult) -> None:
    by_id = {c.invoice_candidate_id: c for c in expected.candidates}
    starter = by_id["sub-globex-starter:2026-10"]
    growth = by_id["sub-globex-growth:2026-10"]
    assert (starter.period_start.isoformat(), starter.period_end.isoformat()) == (
        "2026-10-01T00:00:00+00:00", "2026-10-15T00:00:00+00:00")
    assert growth.period_start.isoformat() == "2026-10-15T00:00:00+00:00"
    fee = {line.fee_id: str(line.amount) for line in starter.lines if line.kind == "fixed_fee"}
    # 14 of 31 days: 49.00 * 14/31 = 22.129... -> 22.13 ; 150.00 * 14/31 = 67.741... -> 67.74
    assert fee == {"base": "22.13", "onboarding": "67.74"}
    growth_fee = next(line for line in growth.lines if line.kind == "fixed_fee")
    assert str(growth_fee.amount) == "274.19"  # 500 * 17/31 = 274.193...
    seats = next(line for line in starter.lines if line.meter == "seats")
    assert (str(seats.quantity), str(seats.amount)) == ("7", "84.00")


def test_windows_have_deterministic_ids_and_revisions(expected: EngineResult) -> None:
    ids = [(w.row_id, w.revision) for w in expected.windows]
    assert len(ids) == len(set(ids))
    late = [w for w in expected.windows if w.after_close]
    assert {w.meter for w in late} == {"storage_gb", "api_calls", "active_users"}


def test_window_size_changes_windows_not_invoices(catalog: Catalog) -> None:
    one_minute = run_engine(catalog, dirty_lines(), IngestConfig())
    one_hour = run_engine(catalog, dirty_lines(), IngestConfig(window=timedelta(hours=1)))
    # u1 and u2 (00:00, 00:00:30) and u1 again (00:05) share one hourly window, not one minute
    def windows(result: EngineResult) -> set[tuple[str, str, object]]:
        return {(w.subscription_id, w.meter, w.window_start) for w in result.windows}

    assert len(windows(one_hour)) < len(windows(one_minute))
    assert sorted(ENCODER.encode(c) for c in one_hour.candidates) == sorted(
        ENCODER.encode(c) for c in one_minute.candidates)


def test_stats_total_is_mergeable() -> None:
    total = StatsTotal()
    assert total.read == 0 and total.rated == 0
