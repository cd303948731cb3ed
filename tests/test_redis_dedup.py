"""RedisDedup against a real redis-server (the `redis_service` fixture of tests/services.py).

Pinned here: MemoryDedup's semantics (first wins, a replay of the same origin is not a duplicate,
any other origin is, within-batch duplicates), the key layout and TTL, exactly one round trip per
batch, retries through a server restart, the deadline, and a hypothesis property that RedisDedup
answers every sequence of batches exactly as MemoryDedup does.
"""

from __future__ import annotations

import importlib.util
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from conftest import FakeTime
from hypothesis import given, settings
from hypothesis import strategies as st
from services import counting_client

from operators.dedup import MemoryDedup, Origin
from sinks.redis_dedup import (
    DedupUnavailable,
    RedisDedup,
    RetryPolicy,
    connect,
)

if importlib.util.find_spec("services") is None:  # tests/conftest.py loads it as a plugin
    @pytest.fixture(scope="session")
    def redis_service() -> Any:
        pytest.skip("needs a real Redis: tests/services.py (the redis_service fixture) is "
                    "not in this checkout")

O1: Origin = ("events", 0, 1)
O2: Origin = ("events", 0, 2)
OTHER_PARTITION: Origin = ("events", 1, 1)
OTHER_SOURCE: Origin = ("events-eu", 0, 1)


@pytest.fixture
def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def db(redis_service: Any) -> tuple[str, redis.Redis]:
    """A database of its own (emptied first): its URL for the code under test, and a plain
    client on it to look at what was stored."""
    number = redis_service.fresh_db()
    return redis_service.url_for(number), redis_service.client(db=number)


@pytest.fixture
def url(db: tuple[str, redis.Redis]) -> str:
    return db[0]


@pytest.fixture
def raw(db: tuple[str, redis.Redis]) -> redis.Redis:
    return db[1]


@pytest.fixture
def dedup(url: str, namespace: str) -> Iterator[RedisDedup]:
    store = RedisDedup.from_url(url, namespace=namespace)
    yield store
    store.close()


def free_port() -> int:
    """A local port nothing listens on: connections to it are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- semantics -----------------------------------------------------------------------------------

LONG = "L" * 300

# (batches, expected answers), each case against an empty store.
SEMANTICS = {
    "first occurrence": ([[("a", O1)]], [[True]]),
    "same origin replayed in a later batch is processed again": (
        [[("a", O1)], [("a", O1)], [("a", O1)]], [[True], [True], [True]]),
    "another offset is a duplicate": ([[("a", O1)], [("a", O2)]], [[True], [False]]),
    "another partition is a duplicate": ([[("a", O1)], [("a", OTHER_PARTITION)]],
                                         [[True], [False]]),
    "another source is a duplicate": ([[("a", O1)], [("a", OTHER_SOURCE)]], [[True], [False]]),
    "within a batch the first wins": (
        [[("a", O1), ("a", O2), ("b", O2), ("a", O1), ("b", O1)]],
        [[True, False, True, True, False]]),
    "the duplicate's origin is never stored": (
        [[("a", O1)], [("a", O2)], [("a", O2), ("a", O1)]],
        [[True], [False], [False, True]]),
    "identities are verbatim text": (
        [[("x:y", O1), ("x", O1), ("ü€\x00\x1f", O1), ("", O1)], [("x:y", O2), ("", O1)]],
        [[True, True, True, True], [False, True]]),
    "long identities are hashed, still distinct": (
        [[(LONG, O1), (LONG + "!", O1), (LONG, O2)], [(LONG, O1), (LONG + "!", O2)]],
        [[True, True, False], [True, False]]),
    "origin fields are not confused": (
        [[("a", ("s\x1f0", 1, 2))], [("a", ("s", 0, 12)), ("a", ("s\x1f0", 1, 2))]],
        [[True], [False, True]]),
}


@pytest.mark.parametrize("case", list(SEMANTICS))
def test_semantics_table(dedup: RedisDedup, case: str) -> None:
    batches, expected = SEMANTICS[case]
    memory = MemoryDedup()
    for batch, want in zip(batches, expected, strict=True):
        assert memory.claim(batch) == want  # the table is MemoryDedup's own behaviour
        assert dedup.claim(batch) == want
        assert dedup.replays == memory.replays  # the same message again, counted alike


def test_empty_batch_is_no_round_trip(url: str, namespace: str) -> None:
    client, counter = counting_client(url)
    assert RedisDedup(client, namespace=namespace).claim([]) == []
    assert counter["sends"] == 0


def test_key_layout_origin_encoding_and_ttl(url: str, raw: redis.Redis, namespace: str) -> None:
    store = RedisDedup.from_url(url, namespace=namespace, ttl=timedelta(hours=2))
    assert store.claim([("7:sensorsid-1", ("events", 3, 41)), (LONG, O1)]) == [True, True]
    key = f"{namespace}:dedup:7:sensorsid-1".encode()
    assert raw.get(key) == b"events\x1f3\x1f41"
    assert 7190 < raw.ttl(key) <= 7200
    hashed = f"{namespace}:dedup#sha256:".encode()
    (long_key,) = raw.keys(hashed + b"*")
    assert len(long_key) == len(hashed) + 64
    assert raw.get(long_key) == b"events\x1f0\x1f1"
    # A replay answers True but does not extend the TTL: it runs from the first occurrence.
    raw.expire(key, 100)
    assert store.claim([("7:sensorsid-1", ("events", 3, 41))]) == [True]
    assert raw.ttl(key) <= 100
    assert set(raw.keys(f"{namespace}:*")) == {key, long_key}


def test_default_ttl_is_35_days(dedup: RedisDedup, raw: redis.Redis, namespace: str) -> None:
    dedup.claim([("a", O1)])
    ttl = raw.ttl(f"{namespace}:dedup:a")
    assert 35 * 86400 - 10 < ttl <= 35 * 86400


def test_bad_configuration_is_refused(url: str) -> None:
    for ttl in (timedelta(0), timedelta(milliseconds=1500)):
        with pytest.raises(ValueError, match="ttl"):
            RedisDedup(url, ttl=ttl)
    with pytest.raises(ValueError, match="namespace"):
        RedisDedup(url, namespace="")


def test_racing_partitions_each_identity_has_one_owner(url: str, namespace: str) -> None:
    """Four worker threads claim the same identities from their own partitions, sharing one
    store: every identity is first for exactly one of them."""
    store = RedisDedup.from_url(url, namespace=namespace)
    identities = [f"id-{i}" for i in range(3000)]
    answers: dict[int, list[bool]] = {}

    def worker(partition: int) -> None:
        out: list[bool] = []
        for lo in range(0, len(identities), 250):
            chunk = identities[lo:lo + 250]
            out += store.claim([(ident, ("events", partition, lo + i))
                                for i, ident in enumerate(chunk)])
        answers[partition] = out

    threads = [threading.Thread(target=worker, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(len(identities)):
        assert sum(answers[p][i] for p in range(4)) == 1


# -- one round trip ------------------------------------------------------------------------------

def test_exactly_one_round_trip_per_batch(url: str, namespace: str) -> None:
    client, counter = counting_client(url)
    store = RedisDedup(client, namespace=namespace)
    store.claim([("warm-up", O1)])  # loads the script if this server has not seen it yet
    batch = [(f"id-{i % 1500}", ("events", 0, i)) for i in range(2000)]  # 500 duplicates
    for _ in range(3):  # new identities, then replays: one round trip each
        counter["sends"] = 0
        store.claim(batch)
        assert counter["sends"] == 1


def test_lost_script_cache_falls_back_to_eval_once(url: str, raw: redis.Redis,
                                                   namespace: str) -> None:
    client, counter = counting_client(url)
    store = RedisDedup(client, namespace=namespace)
    store.claim([("a", O1)])
    raw.script_flush()
    counter["sends"] = 0
    assert store.claim([("a", O1), ("a", O2), ("b", O2)]) == [True, False, True]
    assert counter["sends"] == 2  # EVALSHA -> NOSCRIPT, then EVAL (which caches the script)
    counter["sends"] = 0
    assert store.claim([("b", O1)]) == [False]
    assert counter["sends"] == 1


# -- unavailability ------------------------------------------------------------------------------

def test_restart_between_batches_retries_and_loses_nothing(redis_service: Any, url: str,
                                                             raw: redis.Redis,
                                                             namespace: str) -> None:
    fake = FakeTime()
    store = RedisDedup.from_url(url, namespace=namespace, sleep=fake.sleep, clock=fake.clock)
    memory = MemoryDedup()
    first = [(f"id-{i}", ("events", 0, i)) for i in range(1000)]
    assert store.claim(first) == memory.claim(first) == [True] * 1000

    redis_service.restart(keep_data=True)

    # Replays of the first batch (same origins), copies of it (other offsets), new identities.
    second = ([(f"id-{i}", ("events", 0, i)) for i in range(0, 1000, 3)]
              + [(f"id-{i}", ("events", 0, 5000 + i)) for i in range(1, 1000, 3)]
              + [(f"new-{i}", ("events", 0, 9000 + i)) for i in range(500)])
    # redis-py's pool notices the dead connection and reconnects before sending; had the send
    # failed instead, the batch would have been retried (test_restart_while_claiming).
    assert store.claim(second) == memory.claim(second)
    assert raw.dbsize() == 1500  # the first batch's claims survived the restart


def test_restart_while_claiming(redis_service: Any, url: str, namespace: str) -> None:
    """The server restarts while a worker claims batch after batch: every batch is answered, and
    answered exactly as MemoryDedup answers the same sequence."""
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        stop.wait(seconds)

    stop = threading.Event()
    store = RedisDedup.from_url(url, namespace=namespace, sleep=sleep,
                                retry=RetryPolicy(initial=timedelta(milliseconds=10),
                                                  maximum=timedelta(milliseconds=200),
                                                  deadline=timedelta(seconds=60)))
    memory = MemoryDedup()
    failed: list[BaseException] = []

    def restart() -> None:
        try:
            redis_service.restart(keep_data=True)
        except BaseException as exc:  # a skip (not our server) or a failure: raised below
            failed.append(exc)

    restarter = threading.Thread(target=restart)
    n = 0
    while True:
        # Each batch: 200 new identities, and the previous batch's identities at new offsets.
        batch = [(f"id-{n + i}", ("events", 0, 10 * n + i)) for i in range(200)]
        batch += [(f"id-{n - 200 + i}", ("events", 0, 10 * n + 200 + i)) for i in range(200)]
        assert store.claim(batch) == memory.claim(batch)
        n += 200
        if n == 2000:
            restarter.start()
        if n > 2000 and not restarter.is_alive():
            break
    restarter.join()
    if failed:
        raise failed[0]
    assert sleeps


def test_deadline_raises_dedup_unavailable(namespace: str) -> None:
    fake = FakeTime()
    policy = RetryPolicy(initial=timedelta(milliseconds=100), maximum=timedelta(seconds=2),
                         deadline=timedelta(seconds=10), random=lambda: 0.5)
    store = RedisDedup.from_url(f"redis://127.0.0.1:{free_port()}/0", namespace=namespace,
                                retry=policy, sleep=fake.sleep, clock=fake.clock)
    with pytest.raises(DedupUnavailable, match="deadline 10s") as info:
        store.claim([("a", O1)])
    assert isinstance(info.value.__cause__, redis.ConnectionError)
    # jitter 0.5 x random 0.5: each wait is 75% of 0.1, 0.2, 0.4, ... capped at 2 s.
    assert fake.sleeps == pytest.approx([0.075, 0.15, 0.3, 0.6, 1.2] + [1.5] * 5)
    # 9.825 s slept; one more wait would end past the deadline, so the 11th failure raises.
    assert fake.now == pytest.approx(9.825)
    assert fake.now <= 10


def test_without_deadline_it_never_gives_up(namespace: str) -> None:
    class Enough(Exception):
        pass

    fake = FakeTime()

    def sleep(seconds: float) -> None:
        fake.sleep(seconds)
        if len(fake.sleeps) == 200:
            raise Enough

    store = RedisDedup.from_url(f"redis://127.0.0.1:{free_port()}/0", namespace=namespace,
                                retry=RetryPolicy(random=lambda: 0.0), sleep=sleep,
                                clock=fake.clock)
    with pytest.raises(Enough):
        store.claim([("a", O1)])
    assert max(fake.sleeps) == 5.0  # the cap
    assert fake.now > 900


def test_backoff_schedule() -> None:
    draws = iter([0.0, 1.0, 0.5, 0.0, 0.0])
    policy = RetryPolicy(initial=timedelta(seconds=1), maximum=timedelta(seconds=5),
                         multiplier=3, jitter=0.2, random=lambda: next(draws))
    assert [policy.delay(n) for n in range(1, 6)] == pytest.approx([1.0, 2.4, 4.5, 5, 5])
    assert RetryPolicy(jitter=0).delay(1) == 0.05
    with pytest.raises(ValueError, match="maximum"):
        RetryPolicy(initial=timedelta(seconds=2), maximum=timedelta(seconds=1))


def test_errors_that_are_not_unavailability_are_not_retried(url: str, raw: redis.Redis,
                                                              namespace: str) -> None:
    fake = FakeTime()
    store = RedisDedup.from_url(url, namespace=namespace, sleep=fake.sleep)
    raw.hset(f"{namespace}:dedup:a", "x", "1")  # a key of the wrong type
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        store.claim([("a", O1)])
    assert fake.sleeps == []


# -- the property --------------------------------------------------------------------------------

identities = st.one_of(
    st.sampled_from(["a", "b", "a:b", "", "ü€", "\x1f", "\ud800", "x" * 200, "x" * 201,
                     "x" * 201 + "y"]),
    st.text(max_size=3),
)
origins = st.tuples(st.sampled_from(["s", "t", "s\x1f0"]), st.integers(0, 2),
                    st.integers(0, 3))
batches = st.lists(st.lists(st.tuples(identities, origins), max_size=12), max_size=6)


@pytest.fixture(scope="module")
def shared_client(redis_service: Any) -> Iterator[redis.Redis]:
    client = connect(redis_service.url_for(redis_service.fresh_db()))
    yield client
    client.close()


@settings(max_examples=300, deadline=None)
@given(batches=batches)
def test_property_same_answers_as_memory_dedup(shared_client: redis.Redis,
                                               batches: list[list[tuple[str, Origin]]]) -> None:
    store = RedisDedup(shared_client, namespace=f"p-{uuid.uuid4().hex[:12]}")
    memory = MemoryDedup()
    for batch in batches:
        assert store.claim(batch) == memory.claim(batch)
