"""Running for months: a period is kept after its close only until its retention horizon, then
forgotten by ingest (its bounds, its dedup identities), by the raters and by the journal step;
usage dated in it is LATE_BEYOND_RETENTION, with its original bytes, never rated twice."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from conftest import (
    D,
    buckets,
    candidate_ids,
    config,
    event,
    lines_of,
    reconcile,
    run,
    simple_catalog,
)
from test_flow import canonical, run_flow

from flows.stream import JournalLogic
from operators.aggregators import Count
from operators.catalog import Catalog, load_catalog
from operators.dedup import MemoryDedup
from operators.engine import EngineResult
from operators.ingest import IngestConfig, Ingestor
from operators.periods import Month
from operators.protocol import Close, PeriodRetired, Retire, Usage
from operators.rating import SubscriptionRater
from schemas.records import ExceptionRecord, InvoiceCandidate

HOURS = timedelta(hours=1)
DAYS3 = timedelta(days=3)


def timeline() -> list[bytes]:
    """Retention 3 days, lateness 1 hour: October closes on 1 November 01:00 and retires on
    4 November 01:00; November closes on 1 December 01:00 and retires on 4 December 01:00."""
    return [
        event("e1", time="2026-10-05T10:00:00Z"),
        event("e2", time="2026-10-20T10:00:00Z"),
        event("e3", time="2026-11-02T00:00:00Z"),  # closes October
        event("e4", time="2026-10-21T10:00:00Z"),  # late, within the horizon: an adjustment
        event("e5", time="2026-11-04T02:00:00Z"),  # retires October
        event("e1", time="2026-10-05T10:00:00Z"),  # a copy of e1, beyond the horizon
        event("e6", time="2026-10-22T10:00:00Z"),  # new usage for October, beyond it
        event("e3", time="2026-11-02T00:00:00Z"),  # a copy of e3: November is not retired
        event("e7", time="2026-12-10T00:00:00Z"),  # closes and retires November
    ]


def test_usage_past_the_horizon_is_an_exception_with_its_bytes_and_never_a_duplicate() -> None:
    cat = simple_catalog()
    lines = timeline()
    result = run(cat, lines, batch_size=1, retention=DAYS3)
    counts = buckets(result)
    assert counts["LATE_BEYOND_RETENTION"] == 2
    assert counts["duplicate"] == 1  # only the copy of e3
    late = [e for e in result.exceptions if e.reason == "LATE_BEYOND_RETENTION"]
    assert [(e.event_id, e.raw, e.position["line"]) for e in late] == [
        ("e1", lines[5].decode(), 6), ("e6", lines[6].decode(), 7)]
    assert "every period through 2026-10 is retired" in late[0].error
    assert "retention horizon (3d)" in late[0].error
    # October: two calls, then one late call as an adjustment; nothing for the refused two.
    assert candidate_ids(result) == ["sub-1:2026-10", "sub-1:2026-10:adj-1", "sub-1:2026-11",
                                     "sub-1:2026-12"]
    assert lines_of(result.candidates[1]) == {"usage:calls": D("1.00")}
    assert [(r.subscription_id, r.period) for r in result.retired] == [
        ("sub-1", "2026-10"), ("sub-1", "2026-11")]
    report = reconcile(cat, result)
    assert report.balanced, report.problems


def test_at_the_horizon_itself_late_usage_is_still_rated() -> None:
    """Retired only once the watermark is past end + lateness + retention, not at it."""
    cat = simple_catalog()
    result = run(cat, [
        event("a", time="2026-10-05T10:00:00Z"),
        event("b", time="2026-11-04T01:00:00Z"),  # exactly 31 Oct 24:00 + 1h + 3d
        event("c", time="2026-10-31T23:00:00Z"),
    ], batch_size=1, retention=DAYS3)
    assert "LATE_BEYOND_RETENTION" not in buckets(result)
    assert "sub-1:2026-10:adj-1" in candidate_ids(result)


def test_the_same_input_in_any_batching_gives_the_same_outputs() -> None:
    cat = simple_catalog()
    lines = timeline()
    reference = canonical(run(cat, lines, batch_size=1000, retention=DAYS3))
    for size in (1, 2, 3, 5):
        assert canonical(run(cat, lines, batch_size=size, retention=DAYS3)) == reference


@pytest.mark.parametrize(("workers", "chunk"), [(1, 1), (1, 4), (2, 2), (2, 3)])
def test_the_flow_equals_the_engine_with_retention(workers: int, chunk: int) -> None:
    cat = simple_catalog()
    lines = timeline()
    cfg = config(retention=DAYS3)
    expected = run(cat, lines, retention=DAYS3)
    assert canonical(run_flow(cat, lines, workers, chunk, cfg)) == canonical(expected)


# -- what is kept ----------------------------------------------------------------------------


class Driver:
    """The engine's loop (operators/engine.py), with its ingestor, dedup and raters in reach."""

    def __init__(self, catalog: Catalog, cfg: IngestConfig) -> None:
        self.catalog, self.cfg = catalog, cfg
        self.dedup = MemoryDedup()
        self.ingestor = Ingestor(catalog, cfg, self.dedup, "file", 0)
        self.raters: dict[str, SubscriptionRater] = {}
        self.result = EngineResult()
        self.line = 0

    def feed(self, lines: list[bytes]) -> None:
        batch = []
        for raw in lines:
            self.line += 1
            batch.append((self.line, raw))
        self._drain(self.ingestor.process(batch))

    def finish(self) -> None:
        self._drain(self.ingestor.finish())

    def _drain(self, out: Any) -> None:
        self.result.stats.add(out.stats)
        self.result.exceptions.extend(out.exceptions)
        for sub_id, ops in out.ops.items():
            rater = self.raters.get(sub_id)
            if rater is None:
                rater = self.raters[sub_id] = SubscriptionRater(self.catalog, sub_id,
                                                                self.cfg.window)
            for item in rater.apply(ops):
                if isinstance(item, InvoiceCandidate):
                    self.result.candidates.append(item)
                elif isinstance(item, ExceptionRecord):
                    self.result.exceptions.append(item)
                elif isinstance(item, PeriodRetired):
                    self.result.retired.append(item)
                else:
                    self.result.windows.append(item)


def month_of_events(month: Month, per_day: int, prefix: str) -> list[bytes]:
    """`per_day` calls a day through `month`, then one late call for the previous month."""
    lines = []
    days = (month.end - month.start).days
    for day in range(days):
        for n in range(per_day):
            at = month.start + timedelta(days=day, minutes=n * (1440 // per_day))
            lines.append(event(f"{prefix}-{day}-{n}", time=at.isoformat()))
    late = month.start - timedelta(hours=5)
    lines.insert(len(lines) // 3, event(f"{prefix}-late", time=late.isoformat()))
    return lines


def test_state_follows_the_months_in_flight_not_the_months_elapsed() -> None:
    """A year of usage with the default horizon (35 days): at every month's end the rater holds
    at most the current month and the closed ones still within their horizon, the dedup store
    only their identities, and ingest's period bounds only theirs."""
    cat = simple_catalog()
    driver = Driver(cat, config())
    month = Month(2026, 10)
    kept: list[tuple[int, int, int]] = []
    for n in range(12):
        driver.feed(month_of_events(month, 24, f"m{n}"))
        state = driver.raters["sub-1"].state
        kept.append((len(state.periods), len(state.closed), len(driver.dedup.first)))
        month = month.next()
    driver.finish()
    # Months 1 and 2 have nothing retired yet; from then on a steady state.
    periods = [k[0] for k in kept]
    assert max(periods) <= 3 and periods[-1] == periods[-6]
    assert max(k[1] for k in kept) <= 2
    identities = [k[2] for k in kept]
    assert max(identities) <= 3 * 31 * 24 + 3
    assert identities[-1] < 2 * identities[1]
    # Nothing was refused: every late call came within its horizon, and the year reconciles.
    counts = buckets(driver.result)
    assert "LATE_BEYOND_RETENTION" not in counts and "duplicate" not in counts
    assert len([c for c in driver.result.candidates if c.candidate_type == "adjustment"]) == 11
    report = reconcile(cat, driver.result)
    assert report.balanced, report.problems


def test_file_mode_dedup_forgets_identities_by_event_time() -> None:
    store = MemoryDedup()
    oct_end = int(Month(2026, 10).end.timestamp())
    nov_end = int(Month(2026, 11).end.timestamp())
    assert store.claim([("a", ("f", 0, 1)), ("b", ("f", 0, 2))], [oct_end, nov_end]) == [True,
                                                                                         True]
    assert store.claim([("a", ("f", 0, 3))], [oct_end]) == [False]  # a copy: duplicate
    store.expire(oct_end)
    assert set(store.first) == {"b"}
    assert store.claim([("b", ("f", 0, 4))], [nov_end]) == [False]
    restored = MemoryDedup.restore(store.snapshot())
    assert restored.first == store.first and restored.by_expiry == store.by_expiry
    restored.expire(nov_end)
    assert restored.first == {} and restored.by_expiry == {}
    # A snapshot from before expiry existed (the identities alone) still restores.
    assert MemoryDedup.restore({"x": ("f", 0, 1)}).first == {"x": ("f", 0, 1)}


def test_ingest_forgets_the_period_bounds_of_retired_periods() -> None:
    cat = simple_catalog(charges=[{"meter": "tokens", "model": "per_unit",
                                   "unit_price": "1000000"}])
    ingestor = Ingestor(cat, config(retention=DAYS3), MemoryDedup(), "file", 0)

    def tokens(eid: str, at: str) -> bytes:
        return event(eid, etype="llm.completion", time=at, data={"usage": {"tokens": 5}})

    ingestor.process([(1, tokens("a", "2026-10-05T00:00:00Z")),
                      (2, tokens("b", "2026-11-02T00:00:00Z"))])
    assert {k[1] for k in ingestor.state.totals} == {"2026-10", "2026-11"}
    out = ingestor.process([(3, tokens("c", "2026-11-05T00:00:00Z"))])
    assert {k[1] for k in ingestor.state.totals} == {"2026-11"}
    assert ingestor.state.retired_through == Month(2026, 10)
    assert [type(o).__name__ for o in out.ops["sub-1"]] == ["Usage", "Retire"]


def test_a_rater_refuses_usage_for_a_period_it_retired() -> None:
    """Only several input partitions can send it: the one behind still accepts usage that the
    one ahead already retired. It is an exception of the rating step, never rated."""
    cat = simple_catalog()
    rater = SubscriptionRater(cat, "sub-1", timedelta(minutes=1))
    ts = int(Month(2026, 10).start.timestamp()) + 3600
    wm = int(Month(2026, 11).end.timestamp())
    out = rater.apply([Usage("2026-10", "calls", ts, Count(1), 1, ts),
                       Close("2026-10", "2026-10", wm), Retire("2026-10", wm),
                       Usage("2026-10", "calls", ts, Count(2), 2, wm)])
    assert [type(o).__name__ for o in out] == ["RatedWindow", "InvoiceCandidate",
                                               "PeriodRetired", "ExceptionRecord"]
    failure = out[-1]
    assert isinstance(failure, ExceptionRecord)
    assert failure.reason == "LATE_BEYOND_RETENTION"
    assert failure.position == {"step": "rating", "subscription": "sub-1", "op": "usage",
                                "period": "2026-10", "meter": "calls",
                                "window_start": "2026-10-01T01:00:00+00:00", "events": 2}
    assert rater.state.periods == {} and rater.state.closed == set()
    # A second partition's Retire and Close of the same period change nothing.
    assert rater.apply([Close("2026-10", "2026-10", wm), Retire("2026-10", wm)]) == []


# -- the journal step ------------------------------------------------------------------------


def test_a_journal_month_is_dropped_once_every_subscription_retired_it() -> None:
    catalog = load_catalog("catalog/example.yaml")
    result = run(catalog, [
        event("a", subject="acme-prod", time="2026-10-05T10:00:00Z"),
        event("b", subject="hooli-prod", time="2026-10-06T10:00:00Z"),
        event("c", subject="acme-prod", time="2026-11-02T10:00:00Z"),
    ], retention=DAYS3)
    october = [c for c in result.candidates
               if c.billing_period == "2026-10" and c.legal_entity == "us-inc"
               and c.currency == "USD"]
    subs = sorted({c.subscription_id for c in october})
    assert len(subs) >= 2
    logic = JournalLogic(catalog, None)
    journals, keep = logic.on_batch(list(october))
    assert journals and keep == JournalLogic.RETAIN
    marker = [PeriodRetired(s, "us-inc", "USD", "2026-10") for s in subs]
    assert logic.on_batch(marker[:1]) == ([], JournalLogic.RETAIN)  # one still may adjust
    resumed = JournalLogic(catalog, logic.snapshot())  # the marker survives a restart
    assert resumed.retired == {subs[0]}
    assert resumed.on_batch(marker[1:]) == ([], JournalLogic.DISCARD)


def test_a_journal_snapshot_from_before_retirement_resumes() -> None:
    from schemas.records import ENCODER

    catalog = load_catalog("catalog/example.yaml")
    result = run(catalog, [event("a", subject="acme-prod", time="2026-10-05T10:00:00Z")])
    logic = JournalLogic(catalog, ENCODER.encode(result.candidates))
    assert set(logic.candidates) == {c.invoice_candidate_id for c in result.candidates}
    assert logic.retired == set()


def test_a_later_dated_duplicate_keeps_the_identity_until_its_own_period_retires() -> None:
    """The first copy is dated in October, a second in November: forgetting the identity with
    October would let a third copy, dated in November, be rated a second time."""
    cat = simple_catalog()
    result = run(cat, [
        event("x", time="2026-10-30T10:00:00Z"),
        event("x", time="2026-11-01T10:00:00Z"),  # a duplicate, dated in November
        event("y", time="2026-11-10T00:00:00Z"),  # retires October (3-day horizon)
        event("x", time="2026-11-02T10:00:00Z"),  # still a duplicate
    ], batch_size=1, retention=DAYS3)
    assert buckets(result) == {"rated": 2, "duplicate": 2}
    store = MemoryDedup()
    oct_end, nov_end = (int(Month(2026, m).end.timestamp()) for m in (10, 11))
    store.claim([("x", ("f", 0, 1)), ("x", ("f", 0, 2))], [oct_end, nov_end])
    store.expire(oct_end)
    assert "x" in store.first
    assert MemoryDedup.restore(store.snapshot()).by_expiry == store.by_expiry
    store.expire(nov_end)
    assert store.first == {} and store.until == {}
