"""Kafka output over confluent-kafka: keyed messages to several topics from one sink.

The producer is flushed at the end of every `write_batch` before Bytewax can close the epoch, so
a snapshot never covers output that is still only in the producer's memory; delivery errors stop
the flow rather than dropping data, and a full local queue waits (poll) instead of crashing.
Outputs are at-least-once; every message is keyed by its deterministic id so consumers (and
compacted topics) deduplicate.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import msgspec
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from schemas.records import ENCODER, ExceptionRecord, MessageHeader


class KafkaConfig(Protocol):
    """The connection settings (flows/kafka_io.KafkaSettings): librdkafka properties."""

    def config(self, **more: Any) -> dict[str, Any]: ...


class KafkaDeliveryError(RuntimeError):
    """The broker refused or lost a message: the flow stops so recovery replays the epoch."""


Header = tuple[str, str | bytes | None]


class Message(msgspec.Struct, array_like=True, gc=False):
    """One record for an output topic: keyed by its deterministic id, so a compacted topic
    keeps the latest version of each document and a replay overwrites instead of adding."""

    topic: str
    key: str
    value: bytes
    headers: list[Header] = []


class _ProducerPartition(StatelessSinkPartition[list[Message]]):
    def __init__(self, settings: KafkaConfig) -> None:
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
    def __init__(self, settings: KafkaConfig) -> None:
        self.settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProducerPartition:
        return _ProducerPartition(self.settings)


# -- record -> message ------------------------------------------------------------------------


def keyed(topic: str, records: Sequence[Any], key_field: str) -> list[Message]:
    return [Message(topic, getattr(r, key_field), ENCODER.encode(r)) for r in records]


def _header_bytes(header: MessageHeader) -> bytes | None:
    if header.value is not None:
        return header.value.encode()
    return base64.b64decode(header.value_base64) if header.value_base64 is not None else None


def dead_letters(topic: str, records: Sequence[ExceptionRecord]) -> list[Message]:
    """Rejected events: the original bytes, and the original headers of a binary-mode message
    (so a retry sends the message as it came), then why and where in headers of its own."""
    out: list[Message] = []
    for r in records:
        raw = r.raw.encode() if r.raw is not None else base64.b64decode(r.raw_base64 or "")
        pos = r.position
        headers: list[Header] = [(h.name, _header_bytes(h)) for h in r.headers or ()]
        # Named in operators/retry.DEAD_LETTER_HEADERS: a retry drops exactly these.
        headers += [
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


def ensure_topics(settings: KafkaConfig, compacted: Sequence[str], plain: Sequence[str],
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


# -- reading a topic once, and publishing a batch (`meterwax exceptions retry`) -----------------


def delivered(batch: Sequence[Any]) -> Iterator[Any]:
    """The messages of one `consume()` call: end-of-partition events skipped, any other error
    raised, so a reader never passes over a message it did not get."""
    for msg in batch:
        err = msg.error()
        if err is None:
            yield msg
        elif err.code() != KafkaError._PARTITION_EOF:
            raise KafkaException(err)


def as_bytes(value: str | bytes | None) -> bytes | None:
    """A message key or value as bytes (librdkafka may hand back str)."""
    return value.encode() if isinstance(value, str) else value


class Record(msgspec.Struct, gc=False):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]  # by name, the last of repeated ones
    timestamp_ms: int | None  # the broker's or producer's timestamp, when it has one
    # Every header as it came, in order, repeated names kept, None for one without a value.
    header_list: list[tuple[str, bytes | None]] = []


def read_topic(settings: KafkaConfig, topic: str, timeout: float = 30.0) -> list[Record]:
    """Every record of `topic`, each partition read from its start to its end as of the call
    (a bounded read: records produced meanwhile are left for the next one)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(settings.config(**{"group.id": "meterwax-tools",
                                           "enable.auto.commit": False}))
    try:
        meta = consumer.list_topics(topic=topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            msg = f"topic {topic!r} cannot be read: {meta.error if meta else 'missing'}"
            raise KafkaDeliveryError(msg)
        ends: dict[int, int] = {}
        assignment = []
        for partition in sorted(meta.partitions):
            tp = TopicPartition(topic, partition)
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
            if high > low:
                ends[partition] = high
                assignment.append(TopicPartition(topic, partition, low))
        out: list[Record] = []
        if not assignment:
            return out
        consumer.assign(assignment)
        done: set[int] = set()
        quiet_since = time.monotonic()
        while len(done) < len(ends):
            # A short wait per call: consume() returns only once it has `num_messages` or its
            # timeout passed, so a long one would idle through the timeout near the end.
            batch = consumer.consume(1000, 0.2)
            if not batch:
                if time.monotonic() - quiet_since > timeout:
                    msg = (f"topic {topic!r}: no record for {timeout:.0f} s before its end "
                           "offsets")
                    raise KafkaDeliveryError(msg)
                continue
            quiet_since = time.monotonic()
            for m in delivered(batch):
                partition, offset = m.partition(), m.offset()
                assert partition is not None and offset is not None  # a delivered record
                if partition in done or offset >= ends[partition]:
                    done.add(partition)
                    continue
                kind, ts = m.timestamp()
                pairs = [(str(k), as_bytes(v)) for k, v in m.headers() or ()]
                headers = {k: v or b"" for k, v in pairs}
                out.append(Record(topic, partition, offset, as_bytes(m.key()),
                                  as_bytes(m.value()) or b"", headers, ts if kind else None,
                                  pairs))
                if offset + 1 >= ends[partition]:
                    done.add(partition)
        return out
    finally:
        consumer.close()


def publish(settings: KafkaConfig, topic: str,
            records: Sequence[tuple[bytes | None, bytes | None, list[Header]]]) -> int:
    """Send (key, value, headers) records to `topic` with the idempotent producer and wait for
    every acknowledgement; returns how many the broker acknowledged, and raises if any was
    refused (those are listed), so a caller never reports a retry that did not happen. A value
    of None is a tombstone (a compacted topic then forgets the key)."""
    producer = Producer(settings.config(**{"enable.idempotence": True, "linger.ms": 5}))
    errors: list[str] = []
    acked = 0

    def delivered(err: Any, _msg: Any) -> None:
        nonlocal acked
        if err is None:
            acked += 1
        elif len(errors) < 5:
            errors.append(str(err))

    for key, value, headers in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers or None,
                                 on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
    remaining = producer.flush(60)
    if remaining or errors:
        msg = (f"{acked} of {len(records)} record(s) acknowledged by {topic!r}; "
               f"{remaining} undelivered after 60 s; errors: {'; '.join(errors)}")
        raise KafkaDeliveryError(msg)
    return acked
