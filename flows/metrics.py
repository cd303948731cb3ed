"""Prometheus metrics for stream mode: where every event went, as counters an SRE can alert on
(a rising INVALID_VALUE rate, duplicates spiking after a producer retry storm, lateness)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Gauge, start_http_server

from operators.ingest import IngestStats
from schemas.records import CONTRACT_REFUSED, INTERNAL_ERROR, ExceptionRecord

EVENTS = Counter("meterwax_events_total", "Events read, by the bucket they landed in",
                 ["bucket"])
LATE = Counter("meterwax_late_after_close_total",
               "Rated events for a period whose invoice candidate was already issued")
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


def contracts_applied(version: int) -> None:
    CONTRACTS_VERSION.set(version)


def record(batches: Sequence[IngestStats]) -> None:
    for s in batches:
        EVENTS.labels("rated").inc(s.rated)
        EVENTS.labels("duplicate").inc(s.duplicates)
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
