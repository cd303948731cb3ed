"""Kafka input for the dataflow, over confluent-kafka, and the connection settings.

One Bytewax partition per topic partition, read in chunks (like the file source), resumed from
the offset in the recovery snapshot, so input and state are restored together. The output side
(keyed messages, dead letters, topic creation) is sinks/kafka.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from flows.sources import Chunk
from operators.retry import RETRY_HEADER
from sinks.kafka import KafkaDeliveryError


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str
    extra: tuple[tuple[str, str], ...] = ()  # more librdkafka settings, e.g. security

    def config(self, **more: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, **dict(self.extra), **more}

    def __repr__(self) -> str:  # `extra` may hold sasl.password: never print it
        from flows.settings import hide_secrets

        return f"KafkaSettings(bootstrap={self.bootstrap!r}, extra={hide_secrets(self.extra)!r})"


class _PartitionReader(StatefulSourcePartition[Chunk, int]):
    def __init__(self, settings: KafkaSettings, topic: str, partition: int, resume: int | None,
                 chunk: int, stop_at_end: bool) -> None:
        self.name = f"{topic}:{partition}"
        self.chunk = chunk
        self.consumer = Consumer(settings.config(**{
            "group.id": "meterwax-reader",  # required by librdkafka; assign() uses no group
            "enable.auto.commit": False,
            "fetch.min.bytes": 1,
            # librdkafka's default (1000 ms) idles a fast reader about 1 s per 100k messages.
            "fetch.queue.backoff.ms": 10,
        }))
        tp = TopicPartition(topic, partition)
        low, high = watermarks(self.consumer, tp)
        self.next_offset = resume if resume is not None else low
        # A bounded run stops at the end offset as of its start. Not at an end-of-partition
        # event: librdkafka can report one early around a broker restart, which would end the
        # run with events unread.
        self.end = high if stop_at_end else None
        self.consumer.assign([TopicPartition(topic, partition, self.next_offset)])

    def next_batch(self) -> list[Chunk]:
        if self.end is not None and self.next_offset >= self.end:
            raise StopIteration
        lines: list[tuple[int, bytes]] = []
        retried: list[int] = []  # offsets of events retried from a dead letter
        for msg in self.consumer.consume(self.chunk, 0.05):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(err)
            offset = msg.offset()
            assert offset is not None  # a delivered message always has one
            if self.end is not None and offset >= self.end:
                continue  # produced after a bounded run started: not part of it
            lines.append((offset, msg.value() or b""))
            self.next_offset = offset + 1
            headers = msg.headers()
            if headers and any(h[0] == RETRY_HEADER for h in headers):
                retried.append(offset)
        if not lines:
            return []
        return [(self.name, lines, retried)] if retried else [(self.name, lines)]

    def snapshot(self) -> int:
        return self.next_offset

    def close(self) -> None:
        self.consumer.close()


class KafkaChunkSource(FixedPartitionedSource[Chunk, int]):
    """Every partition of `topic`. `stop_at_end=True` reads each partition up to its end offset
    as of the run's start and stops (a bounded run: tests, backfills); otherwise it tails
    forever."""

    def __init__(self, settings: KafkaSettings, topic: str, chunk: int = 2000,
                 stop_at_end: bool = False) -> None:
        self.settings, self.topic, self.chunk, self.stop_at_end = (
            settings, topic, chunk, stop_at_end)

    def list_parts(self) -> list[str]:
        admin = AdminClient(self.settings.config())
        meta = admin.list_topics(self.topic, timeout=30)
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None:
            msg = f"Kafka topic {self.topic!r} is not available: {topic.error if topic else ''}"
            raise KafkaDeliveryError(msg)
        return [f"{self.topic}:{p}" for p in sorted(topic.partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None
                   ) -> _PartitionReader:
        topic, _, partition = for_part.rpartition(":")
        return _PartitionReader(self.settings, topic, int(partition), resume_state, self.chunk,
                                self.stop_at_end)


# Answers a broker gives while a new topic's partition leaders are still being elected.
_NOT_YET = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
            KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART)


def watermarks(consumer: Any, tp: Any, within: float = 30.0) -> tuple[int, int]:
    """(low, high) offsets of a partition. A just-created topic answers "not leader" for a
    moment: that is waited out (up to `within` seconds), any other error is raised."""
    deadline = time.monotonic() + within
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=within, cached=False)
            return int(low), int(high)
        except KafkaException as exc:
            if exc.args[0].code() not in _NOT_YET or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
