"""Prometheus metrics for stream mode: where every event went, as counters an SRE can alert on
(a rising INVALID_VALUE rate, duplicates spiking after a producer retry storm, lateness)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from operators.ingest import IngestStats
from schemas.erp import InvoiceException
from schemas.records import CONTRACT_REFUSED, INTERNAL_ERROR, ExceptionRecord, RatedWindow

EVENTS = Counter("meterwax_events_total", "Events read, by the bucket they landed in",
                 ["bucket"])
LATE = Counter("meterwax_late_after_close_total",
               "Rated events for a period whose invoice candidate was already issued")
# Dedup at work: a duplicate is prevented (EVENTS{bucket="duplicate"}); a replay is the same
# message read again after a restart or rebalance, recognised by its origin and let through (its
# writes are idempotent). Replays after every restart are normal; duplicates rising is a producer.
REPLAYS = Counter("meterwax_replays_recognised_total",
                  "Events read again from the same input position and recognised as replays, "
                  "not duplicates (processed again; every write is idempotent)")
BLANK = Counter("meterwax_blank_lines_total", "Blank input messages skipped")
# The backlog of rejected usage being worked: retried events by where they landed this time.
RETRIED = Counter("meterwax_retried_events_total",
                  "Events sent again from a dead letter, by the bucket they landed in",
                  ["outcome"])
# Page on any increase: the flow goes on without the event (see operators/ingest.py), but an
# INTERNAL_ERROR is a bug or an input nobody foresaw, and its usage is not billed until fixed.
INTERNAL = Counter("meterwax_internal_errors_total",
                   "Events or rating steps that failed unexpectedly and were set aside",
                   ["step"])

# Live contracts: the newest contracts topic offset applied in this process (all pods should
# agree within seconds after a publication), and records not applied (each is a dead letter).
CONTRACTS_VERSION = Gauge("meterwax_contracts_version",
                          "Offset after the last contracts record applied in this process")
CONTRACTS_REFUSED = Counter("meterwax_contracts_refused_total",
                            "Contracts records refused (CONTRACT_REFUSED dead letters; each "
                            "refusing input partition counts its own)")


# Freshness, as finance and dashboards feel it: from the end of a window in event time (the
# latest usage it can hold) to its rated row reaching the sinks, and to its running charge
# being written to Redis, where the API reads it. Includes the window itself being waited for
# (a 1 m window's first event is up to 1 m older), and the watermark's wait for later events.
_LATENCY_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)
TO_RATED = Histogram("meterwax_event_to_rated_seconds",
                     "From a window's end (event time) to its rated row reaching the sinks",
                     buckets=_LATENCY_BUCKETS)
TO_QUERYABLE = Histogram("meterwax_event_to_queryable_seconds",
                         "From a window's end (event time) to its running charge in Redis",
                         buckets=_LATENCY_BUCKETS)
CONSUMER_LAG = Gauge("meterwax_consumer_lag_messages",
                     "Messages behind the end of each input partition (librdkafka statistics, "
                     "every 5 s)", ["topic", "partition"])
# What finance looks at first: candidates kept out of the ERP, by reason, and their amount
# with tax (a float here, for dashboards; the books are the invoice-exceptions topic and table).
INVOICE_EXCEPTIONS = Counter("meterwax_invoice_exceptions_total",
                             "Invoice candidates held or unpostable, by reason", ["reason"])
INVOICE_EXCEPTION_AMOUNT = Counter("meterwax_invoice_exceptions_amount_total",
                                   "Subtotal of held or unpostable candidates, by currency",
                                   ["currency"])


# What recovery pays every epoch (Bytewax snapshots every touched key): per step, the bytes of
# the latest snapshot of each key this process holds, summed. A rise that follows the months
# elapsed rather than the work in flight is a leak.
STATE_BYTES = Gauge("meterwax_state_snapshot_bytes",
                    "Bytes of the latest recovery snapshot of every key this process holds, "
                    "per step", ["step"])
_STATE: dict[str, dict[str, int]] = {"ingest": {}, "rate": {}}
_STATE_TOTAL: dict[str, int] = {"ingest": 0, "rate": 0}
_STATE_LOCK = threading.Lock()


def state_snapshot(step: str, key: str, size: int) -> None:
    with _STATE_LOCK:  # a running total: every key's snapshot is taken every epoch
        sizes = _STATE[step]
        _STATE_TOTAL[step] += size - sizes.get(key, 0)
        sizes[key] = size
        STATE_BYTES.labels(step).set(_STATE_TOTAL[step])


def windows_rated(windows: Sequence[RatedWindow], *, queryable: bool,
                  now: float | None = None) -> None:
    at = time.time() if now is None else now
    histogram = TO_QUERYABLE if queryable else TO_RATED
    for w in windows:
        if w.row_kind == "window":  # correction rows are late usage, not freshness
            histogram.observe(max(0.0, at - w.window_end.timestamp()))


def invoice_exceptions(exceptions: Sequence[InvoiceException]) -> None:
    for e in exceptions:
        for reason in e.reasons:
            INVOICE_EXCEPTIONS.labels(reason).inc()
        INVOICE_EXCEPTION_AMOUNT.labels(e.currency).inc(float(e.total))


def kafka_statistics(text: str) -> None:
    """librdkafka's statistics callback (`stats_cb`): each assigned partition's lag."""
    try:
        stats = json.loads(text)
    except ValueError:
        return
    for topic, t in (stats.get("topics") or {}).items():
        for partition, p in (t.get("partitions") or {}).items():
            lag = p.get("consumer_lag", -1)
            if partition != "-1" and isinstance(lag, int) and lag >= 0:
                CONSUMER_LAG.labels(topic, partition).set(lag)


def contracts_applied(version: int) -> None:
    CONTRACTS_VERSION.set(version)


def record(batches: Sequence[IngestStats]) -> None:
    for s in batches:
        EVENTS.labels("rated").inc(s.rated)
        EVENTS.labels("duplicate").inc(s.duplicates)
        REPLAYS.inc(s.replays)
        EVENTS.labels("unmetered").inc(s.unmetered)
        for reason, n in s.exceptions.items():
            if n:
                EVENTS.labels(reason).inc(n)
        LATE.inc(s.late_after_close)
        BLANK.inc(s.blank)
        for outcome, n in s.retried.items():
            RETRIED.labels(outcome).inc(n)
        internal = s.exceptions.get(INTERNAL_ERROR, 0)
        if internal:
            INTERNAL.labels("ingest").inc(internal)


def record_exceptions(records: Sequence[ExceptionRecord]) -> None:
    """Rating failures: they are exception records, not ingest counts."""
    for r in records:
        if r.reason == CONTRACT_REFUSED:
            CONTRACTS_REFUSED.inc()
        elif r.position.get("step") == "rating":
            INTERNAL.labels("rating").inc()


def serve(port: int) -> None:
    start_http_server(port, addr="0.0.0.0")
