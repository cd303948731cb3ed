"""pytest plugin: the real Kafka broker and Redis server, as session fixtures.

Loaded by tests/conftest.py (`pytest_plugins = ["services"]`). The servers come from
`scripts/services.sh`:

- When METERWAX_KAFKA_BOOTSTRAP / METERWAX_REDIS_URL are set (scripts/test.sh sets both), those
  servers are used as they are.
- Otherwise the fixture runs `scripts/services.sh start kafka|redis`, takes the addresses from
  `scripts/services.sh env`, exports them to os.environ (so subprocesses see them too), and stops
  at the end of the session whatever it started itself. METERWAX_SERVICES_KEEP=1 leaves them
  running for the next run (a start then costs nothing).

`kafka_service` (session):
    .bootstrap                          "127.0.0.1:19092"
    .config(**extra) -> dict            client config with bootstrap.servers
    .new_topic(prefix, partitions=1, config=None) -> str
                                        a unique topic, created and waited for until every
                                        partition has a leader
    .produce(topic, values, keys=None, partition=None, headers=None)
                                        values[i] with keys[i] and headers[i] (a list of
                                        (name, bytes)); flushed and checked before it returns
    .consume_all(topic, timeout=30, idle=0.5) -> [(partition, offset, key, value, headers)]
                                        everything in the topic from the beginning, sorted by
                                        (partition, offset): read until every partition reached
                                        its high watermark and nothing new came for `idle` s
    .restart()                          stop and start the broker (same port, data kept)

`redis_service` (session):
    .url                                "redis://127.0.0.1:16379/0"
    .client(db=None, **kwargs) -> redis.Redis
                                        isolation is by database number: with db=None, the next
                                        database of 1..N-1 (round robin; the server has 64),
                                        flushed first, so each call, and so each test, starts
                                        empty. Database 0 is never handed out.
    .fresh_db() -> int, .url_for(db) -> str
                                        the same, for code under test that takes a URL
    .restart(keep_data=False)           stop and start redis-server on the same port, wait for
                                        PING. Without keep_data it comes back empty (no
                                        persistence is configured); with keep_data=True it saves
                                        a snapshot on shutdown and loads it. Clients reconnect
                                        on their next command (redis-py retries).

Tests that use either fixture get the `services` marker automatically (and should say
`@pytest.mark.services` anyway), so `pytest -m "not services"` runs without any server.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from flows.kafka_io import watermarks

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "services.sh"
STATE = Path(os.environ.get("METERWAX_SERVICES_DIR", ROOT / ".cache" / "services"))

Record = tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes]]]


def _script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run scripts/services.sh; a failure fails the test with the script's own explanation."""
    proc = subprocess.run([str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, check=False)
    if proc.returncode != 0 and args[0] != "status":
        pytest.fail(f"scripts/services.sh {' '.join(args)} failed ({proc.returncode}):\n"
                    f"{proc.stdout}{proc.stderr}", pytrace=False)
    return proc


def _script_env() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in _script("env").stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            name, value = line[len("export "):].split("=", 1)
            out[name] = value
    return out


class _Managed:
    """Starts one service through scripts/services.sh unless its variable is set; stops it at
    the end of the session only when this session started it."""

    def __init__(self, service: str, variable: str) -> None:
        self.service = service
        self.variable = variable
        self.started_here = False

    def address(self) -> str:
        given = os.environ.get(self.variable)
        if given:
            return given
        running = _script("status", self.service).returncode == 0
        _script("start", self.service)
        self.started_here = not running
        value = _script_env()[self.variable]
        os.environ[self.variable] = value
        return value

    def finish(self) -> None:
        if self.started_here and os.environ.get("METERWAX_SERVICES_KEEP") != "1":
            _script("stop", self.service)
            os.environ.pop(self.variable, None)


def _require_ours(service: str, port: int, what: str) -> None:
    """Only a server that scripts/services.sh runs (on that port) can be restarted from a test."""
    state_port = STATE / service / "port"
    ours = (state_port.is_file() and state_port.read_text().strip() == str(port)
            and _script("status", service).returncode == 0)
    if not ours:
        pytest.skip(f"{what} was not started by scripts/services.sh: it cannot be restarted "
                    "from here")


def _wait(what: str, probe: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = probe()
        except Exception as exc:
            result, error = None, exc
        else:
            error = None
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not within {timeout:.0f} s (last error: {error!r})")
        time.sleep(0.2)


# -- Kafka ---------------------------------------------------------------------------------------

class KafkaService:
    def __init__(self, bootstrap: str) -> None:
        from confluent_kafka.admin import AdminClient

        self.bootstrap = bootstrap
        self._admin = AdminClient(self.config())

    def config(self, **extra: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, **extra}

    def wait_ready(self, timeout: float = 30.0) -> None:
        _wait(f"Kafka at {self.bootstrap}",
              lambda: self._admin.list_topics(timeout=5).brokers, timeout)

    def new_topic(self, prefix: str = "t", partitions: int = 1,
                  config: dict[str, str] | None = None) -> str:
        from confluent_kafka.admin import NewTopic

        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        futures = self._admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1,
                      config=config or {})], operation_timeout=30, request_timeout=30)
        futures[name].result(timeout=60)

        def ready() -> bool:
            topic = self._admin.list_topics(topic=name, timeout=5).topics.get(name)
            return (topic is not None and topic.error is None
                    and len(topic.partitions) == partitions
                    and all(p.leader >= 0 for p in topic.partitions.values()))

        _wait(f"topic {name}", ready, 30)
        return name

    def produce(self, topic: str, values: Sequence[bytes],
                keys: Sequence[bytes | None] | None = None, partition: int | None = None,
                headers: Sequence[Sequence[tuple[str, bytes]] | None] | None = None) -> None:
        from confluent_kafka import Producer

        if keys is not None and len(keys) != len(values):
            raise ValueError("keys and values differ in length")
        if headers is not None and len(headers) != len(values):
            raise ValueError("headers and values differ in length")
        errors: list[str] = []

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

        producer = Producer(self.config(**{"enable.idempotence": True, "linger.ms": 5}))
        for i, value in enumerate(values):
            kwargs: dict[str, Any] = {"value": value, "on_delivery": delivered}
            if keys is not None and keys[i] is not None:
                kwargs["key"] = keys[i]
            if partition is not None:
                kwargs["partition"] = partition
            if headers is not None and headers[i]:
                kwargs["headers"] = list(headers[i] or ())
            while True:
                try:
                    producer.produce(topic, **kwargs)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        left = producer.flush(30)
        if left or errors:
            raise RuntimeError(f"produce to {topic}: {left} undelivered, errors {errors[:5]}")

    def consume_all(self, topic: str, timeout: float = 30.0, idle: float = 0.5) -> list[Record]:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        meta = self._admin.list_topics(topic=topic, timeout=10).topics[topic]
        if meta.error is not None:
            raise RuntimeError(f"topic {topic}: {meta.error}")
        consumer = Consumer(self.config(**{
            "group.id": f"meterwax-test-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # Short fetch waits: watermark queries queue behind an open fetch on the connection.
            "fetch.wait.max.ms": 50,
        }))
        tps = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(meta.partitions)]
        consumer.assign(tps)
        out: list[Record] = []
        try:
            deadline = time.monotonic() + timeout
            last = time.monotonic()
            while True:
                msg = consumer.poll(0.1)
                now = time.monotonic()
                if msg is not None:
                    if msg.error():
                        raise RuntimeError(f"consume {topic}: {msg.error()}")
                    out.append((msg.partition(), msg.offset(), msg.key(), msg.value(),
                                list(msg.headers() or ())))
                    last = now
                    continue
                behind = self._behind(consumer, tps)
                if not behind and now - last >= idle:
                    break
                if now >= deadline:
                    raise TimeoutError(f"consume {topic}: partitions {behind} not read to the "
                                       f"end within {timeout} s ({len(out)} records read)")
        finally:
            consumer.close()
        return sorted(out, key=lambda r: (r[0], r[1]))

    @staticmethod
    def _behind(consumer: Any, tps: list[Any]) -> list[int]:
        behind = []
        for tp, pos in zip(tps, consumer.position(tps), strict=True):
            # A topic the flow has just created may not have its leaders yet.
            _low, high = watermarks(consumer, tp, within=10)
            reached = pos.offset if pos.offset >= 0 else 0
            if high > reached:
                behind.append(tp.partition)
        return behind

    def restart(self) -> None:
        port = int(self.bootstrap.rsplit(":", 1)[1])
        _require_ours("kafka", port, f"Kafka at {self.bootstrap}")
        _script("restart", "kafka")
        self.wait_ready()


# -- Redis ---------------------------------------------------------------------------------------

class RedisService:
    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        self.port = parts.port or 6379
        self._parts = parts
        admin = self._connect(0)
        _wait(f"Redis at {url}", admin.ping, 30)
        try:
            self.databases = int(admin.config_get("databases")["databases"])
        except Exception:
            self.databases = 16
        admin.close()
        self._next = 0

    def _connect(self, db: int, **kwargs: Any) -> Any:
        import redis

        return redis.Redis.from_url(self.url_for(db), **kwargs)

    def url_for(self, db: int) -> str:
        return urlunsplit(self._parts._replace(path=f"/{db}"))

    def fresh_db(self) -> int:
        db = 1 + self._next % (self.databases - 1)
        self._next += 1
        conn = self._connect(db)
        conn.flushdb()
        conn.close()
        return db

    def client(self, db: int | None = None, **kwargs: Any) -> Any:
        return self._connect(self.fresh_db() if db is None else db, **kwargs)

    def restart(self, keep_data: bool = False) -> None:
        _require_ours("redis", self.port, f"Redis at {self.url}")
        _script("restart", "redis", *(["--keep-data"] if keep_data else []))
        conn = self._connect(0)
        _wait(f"Redis at {self.url} after restart", conn.ping, 30)
        conn.close()


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def kafka_service() -> Iterator[KafkaService]:
    managed = _Managed("kafka", "METERWAX_KAFKA_BOOTSTRAP")
    try:
        service = KafkaService(managed.address())
        service.wait_ready()
        yield service
    finally:
        managed.finish()


@pytest.fixture(scope="session")
def redis_service() -> Iterator[RedisService]:
    managed = _Managed("redis", "METERWAX_REDIS_URL")
    try:
        yield RedisService(managed.address())
    finally:
        managed.finish()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        if ("kafka_service" in names or "redis_service" in names) and \
                item.get_closest_marker("services") is None:
            item.add_marker(pytest.mark.services)


def counting_client(url: str) -> tuple[Any, dict[str, int]]:
    """A real Redis client that counts the packets it sends: one per round trip (a pipeline or a
    script call is one). Lets tests prove "one round trip per batch"."""
    import redis

    from sinks.redis_dedup import connect

    counter = {"sends": 0}

    class Counting(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            counter["sends"] += 1
            super().send_packed_command(command, check_health)

    client = connect(url, connection_class=Counting)
    client.ping()  # connect (and its handshake) before anything is counted
    counter["sends"] = 0
    return client, counter


def read_input_chunks(bootstrap: str, topic: str) -> list[Any]:
    """Every chunk meterwax's Kafka reader (flows/kafka_io.py) gives for partition 0 of
    `topic` in a bounded run, to its end."""
    from flows.kafka_io import KafkaChunkSource, KafkaSettings

    source = KafkaChunkSource(KafkaSettings(bootstrap), topic, stop_at_end=True)
    part = source.build_part("input", f"{topic}:0", None)
    chunks: list[Any] = []
    try:
        while True:
            chunks += part.next_batch()
    except StopIteration:
        pass
    finally:
        part.close()
    return chunks
