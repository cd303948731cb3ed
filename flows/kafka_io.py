"""Kafka input for the dataflow, over confluent-kafka, and the connection settings.

One Bytewax partition per topic partition, read in chunks (like the file source), resumed from
the offset in the recovery snapshot, so input and state are restored together. The output side
(keyed messages, dead letters, topic creation) is sinks/kafka.py.

Both content modes of the CloudEvents Kafka binding are read. A message is handed on as its
value either way; one in binary mode (`operators.bindings.kafka_mode`: a `ce_specversion`
header) also has its headers handed on, by offset, so ingest can build the structured event
from them and a rejection can keep the message as it came. The reader only sorts messages: what
a binary message means, and whether it is an event, is ingest's to judge.
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

from flows.metrics import kafka_statistics
from flows.settings import DEFAULT_IDLE_TIMEOUT as _IDLE
from flows.sources import Chunk, ContractsBatch, PartitionIdle
from operators.bindings import Headers, kafka_mode
from operators.retry import RETRY_HEADER
from sinks.kafka import KafkaDeliveryError, as_bytes, delivered


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str
    extra: tuple[tuple[str, str], ...] = ()  # more librdkafka settings, e.g. security

    def config(self, **more: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, **dict(self.extra), **more}

    def __repr__(self) -> str:  # `extra` may hold sasl.password: never print it
        from flows.settings import hide_secrets

        return f"KafkaSettings(bootstrap={self.bootstrap!r}, extra={hide_secrets(self.extra)!r})"


DEFAULT_IDLE_TIMEOUT = _IDLE.total_seconds()  # seconds, the reader's unit


# A reader's snapshot: the next input offset, or with live contracts (input offset, contracts
# offset). A plain int is also what builds before live contracts wrote.
Position = int | tuple[int, int]


def _consumer(settings: KafkaSettings) -> Any:
    return Consumer(settings.config(**{
        "group.id": "meterwax-reader",  # required by librdkafka; assign() uses no group
        "enable.auto.commit": False,
        "fetch.min.bytes": 1,
        # librdkafka's default (1000 ms) idles a fast reader about 1 s per 100k messages.
        "fetch.queue.backoff.ms": 10,
        # Per-partition lag for the meterwax_consumer_lag_messages gauge.
        "statistics.interval.ms": 5000,
        "stats_cb": kafka_statistics,
    }))


class _PartitionReader(StatefulSourcePartition[Chunk, Position]):
    """One input partition, and with `contracts` the whole (one-partition) contracts topic
    alongside it: its records travel in this partition's chunk stream (flows/sources.py
    ContractsBatch), so this partition's ingest applies each at one point of its input order,
    and the snapshot holds both offsets, so recovery resumes both together. Before reading any
    usage, the reader reads the contracts topic up to its end as of its start (the bootstrap),
    so usage is never judged against less than what was published before the flow started."""

    def __init__(self, settings: KafkaSettings, topic: str, partition: int,
                 resume: Position | None, chunk: int, stop_at_end: bool,
                 contracts: str | None = None, idle_timeout: float = DEFAULT_IDLE_TIMEOUT
                 ) -> None:
        self.name = f"{topic}:{partition}"
        self.chunk = chunk
        # Idle: no usage read for `idle_timeout` seconds of processing time (an I/O fact, so
        # the monotonic clock), said once per quiet spell (flows/sources.py PartitionIdle).
        self.idle_timeout = idle_timeout
        self._last_read = time.monotonic()
        self._idle_said = False
        self._ended = False
        self.consumer = _consumer(settings)
        resumed_contracts: int | None = None
        if isinstance(resume, tuple):
            resume, resumed_contracts = resume
        tp = TopicPartition(topic, partition)
        low, high = watermarks(self.consumer, tp)
        self.next_offset = resume if resume is not None else low
        self.contracts = contracts
        self.c_consumer: Any = None
        self.c_next = 0
        self.c_boot_end = 0
        if contracts is not None:
            self.c_consumer = _consumer(settings)
            c_low, c_high = watermarks(self.c_consumer, TopicPartition(contracts, 0))
            self.c_next = resumed_contracts if resumed_contracts is not None else c_low
            self.c_boot_end = c_high
            self.c_consumer.assign([TopicPartition(contracts, 0, max(self.c_next, c_low))])
        # A bounded run stops at the end offset as of its start. Not at an end-of-partition
        # event: librdkafka can report one early around a broker restart, which would end the
        # run with events unread.
        self.end = high if stop_at_end else None
        self.consumer.assign([TopicPartition(topic, partition, self.next_offset)])

    def _contract_records(self, wait: bool) -> list[tuple[int, bytes | None, bytes | None]]:
        """What the contracts topic holds past `c_next`: with `wait`, everything up to the
        bootstrap end (blocking; a broker that has the records but sends none for 60 s is an
        error); otherwise whatever has arrived, without waiting."""
        out: list[tuple[int, bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 60
        while True:
            msgs = self.c_consumer.consume(1000, 0.5 if wait else 0)
            for msg in delivered(msgs):
                offset = msg.offset()
                assert offset is not None
                out.append((offset, as_bytes(msg.key()), as_bytes(msg.value())))
                self.c_next = offset + 1
            if not wait or self.c_next >= self.c_boot_end:
                return out
            if msgs:
                deadline = time.monotonic() + 60
            elif time.monotonic() > deadline:
                msg_ = (f"contracts topic {self.contracts!r}: no record for 60 s before offset "
                        f"{self.c_boot_end}, its end when the flow started")
                raise KafkaDeliveryError(msg_)

    def next_batch(self) -> list[Chunk]:
        out: list[Chunk] = []
        if self.c_consumer is not None:
            booting = self.c_next < self.c_boot_end
            records = self._contract_records(wait=booting)
            if records or booting:
                out.append((self.name, ContractsBatch(self.contracts or "", records)))
            if booting:
                return out  # usage from the next call on, after every bootstrap record
        if self.end is not None and self.next_offset >= self.end:
            if out:
                return out
            if not self._ended:
                # Once, so that this partition's ingest exists, even if it read nothing, to
                # tell the raters at the end of the run that it has ended.
                self._ended = True
                return [(self.name, PartitionIdle(ended=True))]
            raise StopIteration
        lines: list[tuple[int, bytes]] = []
        retried: list[int] = []  # offsets of events retried from a dead letter
        binary: dict[int, Headers] = {}  # offset -> headers of a binary-mode message
        for msg in delivered(self.consumer.consume(self.chunk, 0.05)):
            offset = msg.offset()
            assert offset is not None  # a delivered message always has one
            if self.end is not None and offset >= self.end:
                continue  # produced after a bounded run started: not part of it
            lines.append((offset, msg.value() or b""))
            self.next_offset = offset + 1
            headers = msg.headers()
            if headers:  # a structured message without headers costs only this test
                if any(h[0] == RETRY_HEADER for h in headers):
                    retried.append(offset)
                if kafka_mode(headers) == "binary":
                    binary[offset] = headers
        now = time.monotonic()
        if lines:
            if binary:
                out.append((self.name, lines, retried, binary))
            else:
                out.append((self.name, lines, retried) if retried else (self.name, lines))
            self._last_read, self._idle_said = now, False
        elif not self._idle_said and now - self._last_read >= self.idle_timeout:
            self._idle_said = True
            out.append((self.name, PartitionIdle()))
        return out

    def snapshot(self) -> Position:
        if self.c_consumer is not None:
            return (self.next_offset, self.c_next)
        return self.next_offset

    def close(self) -> None:
        self.consumer.close()
        if self.c_consumer is not None:
            self.c_consumer.close()


class KafkaChunkSource(FixedPartitionedSource[Chunk, Position]):
    """Every partition of `topic`. `stop_at_end=True` reads each partition up to its end offset
    as of the run's start and stops (a bounded run: tests, backfills); otherwise it tails
    forever. `contracts`: the contracts topic each partition's reader also follows."""

    def __init__(self, settings: KafkaSettings, topic: str, chunk: int = 2000,
                 stop_at_end: bool = False, contracts: str | None = None,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> None:
        self.settings, self.topic, self.chunk, self.stop_at_end = (
            settings, topic, chunk, stop_at_end)
        self.contracts = contracts
        self.idle_timeout = idle_timeout

    def list_parts(self) -> list[str]:
        admin = AdminClient(self.settings.config())
        meta = admin.list_topics(self.topic, timeout=30)
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None:
            msg = f"Kafka topic {self.topic!r} is not available: {topic.error if topic else ''}"
            raise KafkaDeliveryError(msg)
        return [f"{self.topic}:{p}" for p in sorted(topic.partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: Position | None
                   ) -> _PartitionReader:
        topic, _, partition = for_part.rpartition(":")
        return _PartitionReader(self.settings, topic, int(partition), resume_state, self.chunk,
                                self.stop_at_end, self.contracts, self.idle_timeout)


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
