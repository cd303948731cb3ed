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




class ContractsEnd:
    """The contracts topic's end offset, asked of one long-lived consumer: a reader that
    follows the topic (the HTTP API) reads it again only when this moved, instead of opening
    a consumer and reading every record every few seconds."""

    def __init__(self, kafka: KafkaConfig, topic: str) -> None:
        from confluent_kafka import Consumer

        self.topic = topic
        self._consumer = Consumer(kafka.config(**{"group.id": "meterwax-api",
                                                  "enable.auto.commit": False}))

    def end(self, timeout: float = 10.0) -> int:
        from confluent_kafka import TopicPartition

        _low, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, 0),
                                                          timeout=timeout, cached=False)
        return int(high)

    def close(self) -> None:
        self._consumer.close()
