"""Prometheus metrics for stream mode: where every event went, as counters an SRE can alert on
(a rising INVALID_VALUE rate, duplicates spiking after a producer retry storm, lateness)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, start_http_server

from operators.ingest import IngestStats

EVENTS = Counter("meterwax_events_total", "Events read, by the bucket they landed in",
                 ["bucket"])
LATE = Counter("meterwax_late_after_close_total",
               "Rated events for a period whose invoice candidate was already issued")
BLANK = Counter("meterwax_blank_lines_total", "Blank input messages skipped")


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


def serve(port: int) -> None:
    start_http_server(port, addr="0.0.0.0")
