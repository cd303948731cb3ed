"""Accepted events from the HTTP ingest endpoint to the input topic, answered after the acks.

One idempotent producer per API process, shared by every request; a thread serves its delivery
callbacks and hands each request's outcome back to the event loop. `send` returns, per record,
None (the broker acknowledged it: durable, `acks=all`) or why it was not written. Nothing waits
in an unbounded queue:
- librdkafka's local queue is bounded (`max_queued` messages); a record that does not fit is
  answered at once as not written (`FULL`), the records before it still go, so the producer is
  told exactly which to send again;
- a record the broker does not acknowledge within `delivery_timeout` seconds (broker down,
  topic missing) fails with librdkafka's reason.
Either way the endpoint answers 503 with Retry-After. Writing an event twice (a retried request,
or the idempotent producer's own retries across a broker failover) is safe: the flow
deduplicates by (source, id), which is also the message key, so copies meet in one partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaException, Producer

from sinks.kafka import KafkaConfig

FULL = "the local producer queue is full (the broker is slow or unreachable)"


UNANSWERED = "no acknowledgement from Kafka in time"


class _Pending:
    """One request's records in flight: how many are still unanswered, and each outcome."""

    __slots__ = ("future", "lock", "loop", "outcomes", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.outcomes: list[str | None] = [UNANSWERED] * n
        self.waiting = n
        self.lock = threading.Lock()  # the poll thread's callbacks against the request

    def done(self, index: int, error: str | None) -> None:
        with self.lock:
            self.outcomes[index] = error
            self.waiting -= 1
            last = self.waiting == 0
        if last:
            self.loop.call_soon_threadsafe(_resolve, self.future)

    def settle(self, refused: dict[int, str]) -> bool:
        """Answer the records that were never queued; True when nothing else is awaited.
        Until this runs, `waiting` cannot reach 0 from callbacks alone while any was refused,
        so exactly one of this and the last callback sees the end."""
        with self.lock:
            for index, why in refused.items():
                self.outcomes[index] = why
            self.waiting -= len(refused)
            return self.waiting == 0


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class EventProducer:
    def __init__(self, settings: KafkaConfig, topic: str, *, max_queued: int = 100_000,
                 delivery_timeout: float = 10.0, linger_ms: int = 5) -> None:
        self.topic = topic
        self.delivery_timeout = delivery_timeout
        self._producer = Producer(settings.config(**{
            "enable.idempotence": True,  # implies acks=all
            "linger.ms": linger_ms,
            "compression.type": "lz4",
            "queue.buffering.max.messages": max_queued,
            "delivery.timeout.ms": int(delivery_timeout * 1000),
        }))
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True,
                                        name="meterwax-api-producer")
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def send(self, records: Sequence[tuple[bytes, bytes]]) -> list[str | None]:
        """Write (key, value) records; per record None once acknowledged, else why not."""
        if not records:
            return []
        pending = _Pending(asyncio.get_running_loop(), len(records))
        refused: dict[int, str] = {}
        produce = self._producer.produce
        for index, (key, value) in enumerate(records):
            if refused:  # once one did not fit, none after it goes: the order is kept
                refused[index] = FULL
                continue
            try:
                produce(self.topic, value=value, key=key, on_delivery=_callback(pending, index))
            except BufferError:
                refused[index] = FULL
            except KafkaException as exc:  # e.g. a message larger than the broker takes
                refused[index] = str(exc.args[0])
        if pending.settle(refused):
            return pending.outcomes
        # librdkafka answers every queued record within delivery.timeout.ms; the extra bound
        # is for the answer that never comes (a wedged client), so no request hangs forever.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pending.future), self.delivery_timeout + 5)
        with pending.lock:
            return list(pending.outcomes)

    def topic_problem(self, timeout: float = 5.0) -> str | None:
        """Why events cannot be written to the topic now (it does not exist, the broker does
        not answer), or None. Blocking: call it from a thread. Without it, an event for a
        missing topic waits out the delivery timeout and the producer is told to retry
        something that no retry fixes."""
        try:
            metadata = self._producer.list_topics(self.topic, timeout=timeout)
        except KafkaException as exc:
            return f"Kafka: {exc.args[0]}"
        found = metadata.topics.get(self.topic)
        if found is None or found.error is not None:
            return (f"Kafka: the input topic {self.topic!r} does not exist (create it, or fix "
                    "--input-topic / METERWAX_INPUT_TOPIC)")
        return None

    def close(self, timeout: float = 10.0) -> None:
        self._producer.flush(timeout)
        self._stop.set()
        self._poller.join(timeout)


def _callback(pending: _Pending, index: int) -> Any:
    def delivered(err: Any, _msg: Any) -> None:
        pending.done(index, None if err is None else str(err))
    return delivered
