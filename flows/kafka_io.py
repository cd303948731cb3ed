"""Kafka input and output for the dataflow, over confluent-kafka.

Input: one Bytewax partition per topic partition, read in chunks (like the file source), resumed
from the offset in the recovery snapshot, so input and state are restored together.

Output: keyed messages to several topics from one sink. The producer is flushed at the end of
every `write_batch` before Bytewax can close the epoch, so a snapshot never covers output that is
still only in the producer's memory; delivery errors stop the flow rather than dropping data,
and a full local queue waits (poll) instead of crashing. Outputs are at-least-once; every message
is keyed by its deterministic id so consumers (and compacted topics) deduplicate.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from flows.sources import Chunk
from schemas.records import ENCODER, ExceptionRecord


class KafkaDeliveryError(RuntimeError):
    """The broker refused or lost a message: the flow stops so recovery replays the epoch."""


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
        low, high = self.consumer.get_watermark_offsets(tp, timeout=30)
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
        return [(self.name, lines)] if lines else []

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


Header = tuple[str, str | bytes | None]


class Message(msgspec.Struct, array_like=True, gc=False):
    """One record for an output topic: keyed by its deterministic id, so a compacted topic
    keeps the latest version of each document and a replay overwrites instead of adding."""

    topic: str
    key: str
    value: bytes
    headers: list[Header] = []


class _ProducerPartition(StatelessSinkPartition[list[Message]]):
    def __init__(self, settings: KafkaSettings) -> None:
        self.producer = Producer(settings.config(**{
            "linger.ms": 20,
            "enable.idempotence": True,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500_000,
        }))
        self.errors: list[str] = []

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(f"{msg.topic()}[{msg.key()!r}]: {err}")

    def write_batch(self, items: list[list[Message]]) -> None:
        produce = self.producer.produce
        for chunk in items:
            for m in chunk:
                while True:
                    try:
                        produce(m.topic, value=m.value, key=m.key.encode(),
                                headers=m.headers or None, on_delivery=self._delivered)
                        break
                    except BufferError:
                        self.producer.poll(0.1)  # local queue full: wait, never drop
        remaining = self.producer.flush(60)
        if remaining or self.errors:
            msg = (f"{remaining} message(s) undelivered after 60 s; errors: "
                   f"{'; '.join(self.errors[:5])}")
            raise KafkaDeliveryError(msg)

    def close(self) -> None:
        self.producer.flush(60)


class KafkaTopicsSink(DynamicSink[list[Message]]):
    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProducerPartition:
        return _ProducerPartition(self.settings)


# -- record -> message ------------------------------------------------------------------------


def keyed(topic: str, records: Sequence[Any], key_field: str) -> list[Message]:
    return [Message(topic, getattr(r, key_field), ENCODER.encode(r)) for r in records]


def dead_letters(topic: str, records: Sequence[ExceptionRecord]) -> list[Message]:
    """Rejected events: the original bytes, with why and where in headers."""
    out: list[Message] = []
    for r in records:
        raw = r.raw.encode() if r.raw is not None else base64.b64decode(r.raw_base64 or "")
        pos = r.position
        headers: list[Header] = [
            ("meterwax.reason", r.reason.encode()),
            ("meterwax.error", r.error.encode()),
            ("meterwax.source.topic", str(pos.get("source", "")).encode()),
            ("meterwax.source.partition", str(pos.get("partition", "")).encode()),
            ("meterwax.source.offset", str(pos.get("offset", pos.get("line", ""))).encode()),
            ("meterwax.correlation_id", (r.event_id or r.exception_id).encode()),
            # The whole position: for a rating failure it names the subscription, period,
            # meter and window instead of an input offset.
            ("meterwax.position", ENCODER.encode(pos)),
        ]
        out.append(Message(topic, r.exception_id, raw, headers))
    return out


def ensure_topics(settings: KafkaSettings, compacted: Sequence[str], plain: Sequence[str],
                  partitions: int = 3, timeout: float = 30.0) -> list[str]:
    """Create missing output topics; returns the ones created. Keyed outputs are compacted, so
    the topic itself converges to one message per id (the latest), which is what consumers of an
    at-least-once stream want; the dead-letter topic keeps everything."""
    from confluent_kafka.admin import NewTopic

    admin = AdminClient(settings.config())
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [NewTopic(t, partitions, config={"cleanup.policy": "compact"})
              for t in compacted if t not in existing]
    wanted += [NewTopic(t, partitions) for t in plain if t not in existing]
    if not wanted:
        return []
    created = []
    for topic, future in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            future.result()
            created.append(topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created
