"""Smoke tests of the real services (tests/services.py): each one makes a real round trip."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.services


def test_kafka_round_trip_keeps_partition_key_and_headers(kafka_service):
    topic = kafka_service.new_topic("smoke", partitions=3)
    kafka_service.produce(topic, [b'{"id": "e-1"}'], keys=[b"sub-1"], partition=2,
                          headers=[[("source", b"smoke"), ("trace", b"\x00\x01")]])

    records = kafka_service.consume_all(topic, timeout=30)

    assert records == [(2, 0, b"sub-1", b'{"id": "e-1"}',
                        [("source", b"smoke"), ("trace", b"\x00\x01")])]


def test_kafka_keyed_messages_stay_on_one_partition_in_order(kafka_service):
    topic = kafka_service.new_topic("keyed", partitions=3)
    keys = [f"k{i % 5}".encode() for i in range(60)]
    values = [str(i).encode() for i in range(60)]
    kafka_service.produce(topic, values, keys=keys)

    records = kafka_service.consume_all(topic)

    assert sorted(int(r[3]) for r in records) == list(range(60))
    partition_of: dict[bytes, int] = {}
    for partition, _offset, key, _value, headers in records:
        assert partition_of.setdefault(key, partition) == partition
        assert headers == []
    per_partition: dict[int, list[int]] = {}
    for partition, offset, _key, value, _headers in records:
        per_partition.setdefault(partition, []).append(int(value))
        assert offset == len(per_partition[partition]) - 1
    for seen in per_partition.values():
        assert seen == sorted(seen)


def test_kafka_topics_are_not_auto_created(kafka_service):
    from confluent_kafka import Producer

    producer = Producer(kafka_service.config(**{"message.timeout.ms": 1000}))
    errors = []
    producer.produce("never-created-topic", b"x", on_delivery=lambda err, _msg: errors.append(err))
    producer.flush(10)
    assert len(errors) == 1 and errors[0] is not None


def test_kafka_restart_keeps_topics_and_messages(kafka_service):
    topic = kafka_service.new_topic("restart", partitions=2)
    kafka_service.produce(topic, [b"before"], partition=1)

    kafka_service.restart()
    kafka_service.produce(topic, [b"after"], partition=1)

    assert [(r[0], r[1], r[3]) for r in kafka_service.consume_all(topic)] == \
        [(1, 0, b"before"), (1, 1, b"after")]


def test_redis_set_get_on_isolated_databases(redis_service):
    first = redis_service.client()
    second = redis_service.client()
    first.set("meterwax:smoke", "one")

    assert first.get("meterwax:smoke") == b"one"
    assert second.get("meterwax:smoke") is None
    assert first.connection_pool.connection_kwargs["db"] != \
        second.connection_pool.connection_kwargs["db"]


def test_redis_restart_then_clients_reconnect(redis_service):
    db = redis_service.fresh_db()
    client = redis_service.client(db)
    client.set("before", "1")

    redis_service.restart(keep_data=True)
    assert client.get("before") == b"1"  # the same client, reconnected, sees the snapshot

    redis_service.restart()
    assert client.get("before") is None  # no persistence: a plain restart comes back empty
    client.set("after", "2")
    assert client.get("after") == b"2"
    assert redis_service.client(db).get("after") == b"2"
