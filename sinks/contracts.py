"""The contracts topic, read once from its start (`contracts publish|show`, and `stream` before
it starts its flow). Its format is operators/contracts.py's."""

from __future__ import annotations

from dataclasses import dataclass, field

from operators.contracts import ContractsError, Spec, decode_record, put
from sinks.kafka import KafkaConfig, ensure_topics, read_topic


@dataclass
class TopicContracts:
    """What the contracts topic holds, read once from its start."""

    specs: dict[str, Spec] = field(default_factory=dict)  # in force, by record key
    versions: dict[str, int] = field(default_factory=dict)  # highest version seen, by key
    problems: list[str] = field(default_factory=list)  # messages that are not records
    end_offset: int = 0


def read_contracts(kafka: KafkaConfig, topic: str) -> TopicContracts:
    out = TopicContracts()
    ensure_contracts_topic(kafka, topic)
    for record in read_topic(kafka, topic):
        out.end_offset = max(out.end_offset, record.offset + 1)
        try:
            key, version, spec = decode_record(record.key, record.value or None)
        except ContractsError as exc:
            out.problems.append(f"offset {record.offset}: {exc}")
            continue
        put(out.specs, key, spec)
        if spec is not None:
            out.versions[key] = max(version, out.versions.get(key, 0))
    return out


def ensure_contracts_topic(kafka: KafkaConfig, topic: str) -> None:
    # One partition: the records have one order, the one every reader applies.
    ensure_topics(kafka, compacted=[topic], plain=[], partitions=1)


