"""`meterwax exceptions retry`: read the dead-letter topic once, send the matching dead letters'
original bytes (and a binary-mode message's own headers) to the input topic again
(operators/retry.py says why that is safe)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from flows.settings import RetrySettings
from operators import ids
from operators.retry import input_key, resent_headers
from schemas.records import CONTRACT_REFUSED
from sinks.kafka import Header, publish, read_topic


@dataclass
class RetryReport:
    read: int = 0
    matched: int = 0
    sent: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)  # matched, per reason


def retry_dead_letters(settings: RetrySettings) -> RetryReport:
    kafka = settings.kafka()
    topic = settings.topics.dead_letter
    report = RetryReport()
    batch: list[tuple[bytes | None, bytes, list[Header]]] = []
    for record in read_topic(kafka, topic):
        report.read += 1
        reason = record.headers.get("meterwax.reason", b"").decode("utf-8", "replace") or None
        rejected_at = (datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)
                       if record.timestamp_ms is not None else None)
        if reason == CONTRACT_REFUSED or not settings.select.matches(
                reason, record.value, rejected_at, record.header_list):
            continue  # a refused contracts record is not an event: fix and publish the catalog
        report.matched += 1
        label = reason or "(no reason)"
        report.by_reason[label] = report.by_reason.get(label, 0) + 1
        ref = ids.dead_letter_ref(record.topic, record.partition, record.offset)
        headers: list[Header] = [*resent_headers(record.header_list, ref)]
        batch.append((input_key(record.value, record.header_list), record.value, headers))
    if batch and not settings.dry_run:
        report.sent = publish(kafka, settings.input_topic, batch)
    return report
