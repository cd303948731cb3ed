"""The stream's business metrics, as plain functions: what each observes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

from prometheus_client import REGISTRY

from flows import metrics
from operators.ingest import IngestStats
from schemas.erp import InvoiceException
from schemas.records import RatedWindow


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def window(end: datetime, kind: str = "window") -> RatedWindow:
    return RatedWindow(
        row_id="s:m:0", subscription_id="s", customer_id="c", plan_id="p", legal_entity="le",
        currency="USD", meter="m", period="2026-10", window_start=end, window_end=end,
        revision=0, event_count=1, window_quantity=Decimal(1), cumulative_quantity=Decimal(1),
        amount_delta=Decimal(0), cumulative_amount=Decimal(0), rating_seq=1, after_close=False,
        row_kind=kind)  # type: ignore[arg-type]


def test_freshness_is_measured_from_the_window_end_and_skips_corrections() -> None:
    end = datetime(2026, 10, 1, 12, tzinfo=UTC)
    before = sample("meterwax_event_to_queryable_seconds_count")
    under_2s = sample("meterwax_event_to_queryable_seconds_bucket", le="2.0")
    metrics.windows_rated([window(end), window(end, "correction")], queryable=True,
                          now=end.timestamp() + 1.5)
    assert sample("meterwax_event_to_queryable_seconds_count") == before + 1
    assert sample("meterwax_event_to_queryable_seconds_bucket", le="2.0") == under_2s + 1


def test_consumer_lag_comes_from_librdkafka_statistics() -> None:
    stats = {"topics": {"usage": {"partitions": {
        "0": {"consumer_lag": 42}, "1": {"consumer_lag": -1}, "-1": {"consumer_lag": 7}}}}}
    metrics.kafka_statistics(json.dumps(stats))
    assert sample("meterwax_consumer_lag_messages", topic="usage", partition="0") == 42
    assert REGISTRY.get_sample_value("meterwax_consumer_lag_messages",
                                     {"topic": "usage", "partition": "-1"}) is None
    metrics.kafka_statistics("not json")  # a bad callback payload changes nothing


def test_invoice_exceptions_count_by_reason_and_amount_by_currency() -> None:
    before = sample("meterwax_invoice_exceptions_total", reason="MISSING_PAYMENT_TERMS")
    amount = sample("meterwax_invoice_exceptions_amount_total", currency="EUR")
    metrics.invoice_exceptions([InvoiceException(
        invoice_candidate_id="s:2026-10", customer_id="c", legal_entity="le", currency="EUR",
        billing_period="2026-10", subtotal=Decimal("10.50"), total=Decimal("12.50"),
        reasons=["MISSING_PAYMENT_TERMS", "MISSING_TAX_REGISTRATION"], details=["x", "y"])])
    assert sample("meterwax_invoice_exceptions_total",
                  reason="MISSING_PAYMENT_TERMS") == before + 1
    assert sample("meterwax_invoice_exceptions_amount_total", currency="EUR") == amount + 12.5


def test_state_size_is_the_latest_snapshot_of_each_key_summed() -> None:
    metrics.state_snapshot("rate", "sub-x", 100)
    metrics.state_snapshot("rate", "sub-y", 50)
    base = sample("meterwax_state_snapshot_bytes", step="rate")
    metrics.state_snapshot("rate", "sub-x", 120)  # the same key again: replaced, not added
    assert sample("meterwax_state_snapshot_bytes", step="rate") == base + 20


def test_replays_and_duplicates_are_counted_apart() -> None:
    replays = sample("meterwax_replays_recognised_total")
    duplicates = sample("meterwax_events_total", bucket="duplicate")
    metrics.record([IngestStats(duplicates=2, replays=5), IngestStats(replays=1)])
    assert sample("meterwax_replays_recognised_total") == replays + 6
    assert sample("meterwax_events_total", bucket="duplicate") == duplicates + 2
