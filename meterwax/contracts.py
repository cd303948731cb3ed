"""`meterwax contracts publish|show`: the catalog as records on the compacted contracts topic
(operators/contracts.py says what a record is and which changes are refused).

`publish CATALOG.yaml` treats the file as the whole catalog that should be in force: it is
validated like any catalog (every problem with its YAML path), compared with what the topic holds,
checked against what is already rated (the stream's running charges in Redis, when given) and
invoiced (the candidates topic), and only then are the changed records sent, with a tombstone for
each record the file no longer has. On any problem nothing is sent. The flow checks every record
again when it applies it: this check is the early, friendly one; the flow's is authoritative.

The topic has one partition, so its records have one order, and every reader (each input
partition of the stream, `show`) applies them in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from flows.settings import ContractsSettings
from operators.catalog import CatalogError, load_catalog_document
from operators.contracts import (
    Frozen,
    catalog_of,
    changes,
    encode_record,
    refusals,
    specs_of,
)
from operators.periods import Month
from sinks.contracts import read_contracts
from sinks.kafka import Header, KafkaConfig, KafkaDeliveryError, publish, read_topic


@dataclass
class PublishReport:
    changed: list[tuple[str, int, str]] = field(default_factory=list)  # key, version, what
    refused: dict[str, str] = field(default_factory=dict)  # key -> why
    sent: int = 0
    unchanged: int = 0


def _frozen(settings: ContractsSettings, kafka: KafkaConfig) -> Frozen:
    """What is rated (running charges) or invoiced (candidates) already, per subscription."""
    until: dict[str, datetime] = {}
    decoder = msgspec.json.Decoder(dict[str, Any])
    try:
        candidates = read_topic(kafka, settings.topics.candidates)
    except KafkaDeliveryError:  # no stream has run yet: nothing is invoiced
        candidates = []
    for record in candidates:
        try:
            cand = decoder.decode(record.value)
            sub, period = str(cand["subscription_id"]), Month.parse(str(cand["billing_period"]))
        except (msgspec.DecodeError, KeyError, ValueError):
            continue
        if sub not in until or period.end > until[sub]:
            until[sub] = period.end
    if settings.redis_url:
        from sinks.running_charges import RunningCharges

        charges = RunningCharges(settings.redis_url, namespace=settings.redis_namespace)
        try:
            for sub, end in charges.rated_through().items():
                if sub not in until or end > until[sub]:
                    until[sub] = end
        finally:
            charges.close()
    return Frozen(subscriptions=until)


def publish_catalog(settings: ContractsSettings, path: str) -> PublishReport:
    """CatalogError when the file is not a valid catalog; otherwise what was (or, with
    `dry_run` or refusals, would be) sent."""
    doc, catalog = load_catalog_document(path)
    kafka = settings.kafka()
    topic = settings.topics.contracts
    contracts = read_contracts(kafka, topic)
    try:
        before = catalog_of(contracts.specs)
    except CatalogError:
        # The topic holds records a file could not (written by something else): compare with
        # an empty catalog, so every change is checked as new, and let the flow refuse.
        before = catalog_of({})
    wanted = specs_of(doc)
    report = PublishReport()
    diff = changes(contracts.specs, wanted)
    report.unchanged = len(wanted) - sum(1 for _, spec in diff if spec is not None)
    report.refused = refusals(before, catalog, _frozen(settings, kafka))
    batch: list[tuple[bytes | None, bytes | None, list[Header]]] = []
    for key, spec in diff:
        version = contracts.versions.get(key, 0) + 1
        what = ("removed" if spec is None else
                "changed" if key in contracts.specs else "added")
        report.changed.append((key, version if spec is not None else 0, what))
        batch.append((key.encode(), None if spec is None else encode_record(key, version, spec),
                      []))
    if batch and not report.refused and not settings.dry_run:
        report.sent = publish(kafka, topic, batch)
    return report
