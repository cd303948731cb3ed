"""Benchmark: `meterwax stream` on the real Kafka broker, Redis and ClickHouse, against a floor.

    scripts/services.sh start && eval "$(scripts/services.sh env)"
    .venv/bin/python bench/bench_stream.py [--size 200000] [--partitions 1] [-w W] [--processes 1]
                                           [--clickhouse-path [DIR]] [--rate 2000 --seconds 20]
                                           [--latency | --skip-latency | --soak] [--keep]
                                           [--soak-months 12 --soak-rate 3000
                                            --soak-seconds-per-month 15 --dedup-ttl 35d]

Three phases, each against fresh resources (a new input topic, a unique output-topic prefix and
Redis namespace, a new recovery directory, a new ClickHouse directory). By default throughput
then latency; --latency or --skip-latency runs one of them, --soak runs the soak phase alone:

  throughput  N events from meterwax.workload.generate (the example catalog; dirty, two months of
              event time) are produced into a fresh topic (--partitions, keyed by subject), then
    floor       a bare confluent-kafka consumer reads every message of the topic and decodes it
                with schemas.events.EVENT_DECODER (errors caught): the least any Kafka pipeline
                must do per event (one librdkafka setting differs from the stream's reader: see
                floor_pass);
    stream      `meterwax stream --stop-at-end` as a subprocess, timed by wall clock from spawn
                to exit, so process start-up, Bytewax, Redis dedup and running charges, the
                output topics and every ClickHouse insert are included (at exit every rated
                window is in ClickHouse). Its Prometheus counters are polled to split that into
                start-up, reading and shutdown. ClickHouse is a ChdbHttpServer in this process
                (the stream writes over clickhouse-connect), or with --clickhouse-path the
                stream's own embedded chDB directory. The rows are then counted, and with one
                partition compared with operators.engine.run_engine over the same events.
    cluster     with --processes N > 1 (--partitions >= N; -w workers in each process): the
                same topic again, read by N processes of one Bytewax cluster (`-i <i> -a
                127.0.0.1:<port> ...`, as the StatefulSet scales), each with its own recovery
                directory and metrics port, a fresh output-topic prefix and Redis namespace and
                a fresh ClickHouse (a ChdbHttpServer: processes cannot share an embedded chDB
                directory). Timed from the spawn of the first process to the exit of the last;
                the ratio to the one-process stream is the scale-out; CPU seconds per process
                come from os.wait4. Then both passes' invoice-candidates topics are read (the
                last value per key) and compared: every invoice (a candidate that adjusts
                nothing) without its per-day consumption, and the net amount per
                (subscription, billing period, line) over invoices and adjustments together.
                (With several partitions an invoice is decided by each partition's contents
                alone; how late usage groups into adjustments, and the daily consumption
                split, can follow arrival order: README, known limits.) A difference is a
                problem.

  latency     `meterwax stream --window 1s` (no --stop-at-end) tails a fresh topic while this
              process produces events at a steady --rate for --seconds. All events belong to one
              subscription and meter (acme-prod api.request: sub-acme-1 api_calls, a count), and
              each event's time is its production instant shifted to --event-base, so event time
              advances with wall-clock time and a 1 s window closes as soon as the first event of
              the next second is read. ClickHouse is polled (every --poll-ms) for that meter's
              rated_windows rows; an event counts as visible at the end of the first poll whose
              row for its window (row_id sub-acme-1:api_calls:<window start>) has an event_count
              of at least the event's rank in its window (the stream judges one partition in
              order, so the first k events of a window are the ones a count of k includes).
              Reported, over the events produced during the measured --seconds (after a
              --warmup that also absorbs the stream's start-up backlog):
    event -> row    production of each event to its window row being queryable: includes the wait
                    for the window to close (up to the window length; about half of it on
                    average), which is inherent to windowed rating, not pipeline work;
    close -> row    per window, from production of the event that closes it (the first event of
                    the next window, which moves the watermark past its end) to the row being
                    queryable: the pipeline's own latency;
    close -> insert the same, to the row's ClickHouse `inserted_at` (set by the engine in this
                    process at insert time, same clock): latency without the polling resolution.

  soak        does the state follow the work in flight or the months elapsed? `meterwax stream
              --window 1m --dedup-ttl 35d --max-future 3660d` (no --stop-at-end; recovery is always
              on in stream mode) tails a fresh topic while this process produces --soak-rate
              events/s whose event time accelerates: simulated time starts at 2026-10-01T00:00Z
              and runs one calendar month per --soak-seconds-per-month wall seconds, for
              --soak-months months. (--max-future is the most the stream allows: it judges
              FUTURE_EVENT against the wall clock, and simulated time runs months ahead of it.)
              Events are spread over six subjects of the example catalog and three meters
              (api.request: api_calls, a count; llm.completion: tokens, a sum of usage.tokens;
              user.active: active_users, a unique_count over 200 user ids); --soak-late (1%) are
              dated 1-5 simulated minutes back (correction rows for closed windows) and
              --soak-old (0.1%) anywhere in the previous month once it has closed (adjustments),
              so periods close, get late usage, and are retired once the watermark is past their
              close plus the dedup TTL (35 simulated days: about a month and a bit here). Every
              --soak-sample s this process reads
    RSS             VmRSS (/proc/<pid>/status) of the stream process and its descendants (the
                    meterwax console script is the Python process itself);
    snapshot bytes  Bytewax's recovery partitions (part-*.sqlite3, opened read-only while the
                    stream writes them; WAL, so reads never block it). Bytewax 0.21 writes, per
                    epoch (2 s in stream mode), one row per state key that changed in table
                    `snaps` (step_id, state_key, snap_epoch, ser_change: NULL for a discarded
                    key), marks the epoch in `commits`, and then garbage-collects each key's
                    older rows. Each sample reads, in one read transaction, the epochs committed
                    since the last one and records, per epoch (summed over partitions, as first
                    seen): sum(length(ser_change)), the keys snapshotted and the discards; and
                    the live state: every key's newest snapshot, i.e. what a resume loads
                    (its NULL rows are tombstones of discarded keys). A sample that finds a
                    partition busy skips it; an epoch first read only after a later one was
                    committed may have lost rows to the garbage collection, and is counted;
    progress        the stream's Prometheus counters (events counted, by bucket): the lag.
              Reported per simulated month (the epochs committed while it was produced): events
              produced (late, previous month), epochs, median and max snapshot bytes per epoch,
              median keys per epoch, and at the month's last sample the live state, the RSS and
              the lag; then the last month's median bytes/epoch, RSS and live state over the
              second month's (the first has no closed period yet), and what ClickHouse holds.
              The month an epoch is counted in is the one being produced when it was read: the
              stream runs about a second behind (the lag column), so a month's first epoch may
              still hold the end of the month before.

Prints a table and, last, one JSON line with every figure. A benchmark, not a test: nothing here
asserts a speed. Exit status 0; 1 when a stream run failed or a check did not hold (shown on
stderr, with the stream's stderr tail); 2 on bad arguments or missing services.
Everything this run creates (subprocesses, temp dirs, topics, Redis keys) is removed at exit
unless --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import random
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
from confluent_kafka import (  # noqa: E402
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from bench.bench_run import default_meterwax  # noqa: E402
from meterwax.compare import invoices as compare_invoices  # noqa: E402
from meterwax.compare import net_by_line  # noqa: E402
from meterwax.workload import compose, generate  # noqa: E402
from operators.catalog import load_catalog  # noqa: E402
from operators.periods import Month  # noqa: E402
from schemas.events import EVENT_DECODER  # noqa: E402

DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)

# The latency phase's one subject, event type, subscription and meter (catalog/example.yaml).
LAT_SUBJECT, LAT_TYPE = "acme-prod", "api.request"
LAT_SUBSCRIPTION, LAT_METER = "sub-acme-1", "api_calls"
LAT_SOURCE = "//acme.example/api-gateway/acme-prod"
# Mid-month and after every workload month, inside sub-acme-1 (open-ended): no period closes
# during the phase, and its rows never mix with the throughput phase's Oct-Nov 2026 windows.
DEFAULT_EVENT_BASE = "2027-01-10T00:00:00Z"


class BenchFailed(Exception):
    pass


# -- helpers --------------------------------------------------------------------------------------


def service_addresses(kafka: str | None, redis_url: str | None) -> tuple[str, str]:
    """Flags, then METERWAX_* variables, then what `scripts/services.sh env` says when its
    services are running."""
    kafka = kafka or os.environ.get("METERWAX_KAFKA_BOOTSTRAP")
    redis_url = redis_url or os.environ.get("METERWAX_REDIS_URL")
    script = ROOT / "scripts" / "services.sh"
    if not (kafka and redis_url) and script.exists():
        status = subprocess.run([str(script), "status"], cwd=ROOT, capture_output=True,
                                text=True, check=False)
        if status.returncode == 0:
            env = subprocess.run([str(script), "env"], cwd=ROOT, capture_output=True, text=True,
                                 check=False).stdout
            found = dict(line[len("export "):].split("=", 1) for line in env.splitlines()
                         if line.startswith("export ") and "=" in line)
            kafka = kafka or found.get("METERWAX_KAFKA_BOOTSTRAP")
            redis_url = redis_url or found.get("METERWAX_REDIS_URL")
    if not (kafka and redis_url):
        msg = ("no Kafka broker / Redis server: run `scripts/services.sh start` and "
               "`eval \"$(scripts/services.sh env)\"`, or pass --kafka-bootstrap and --redis-url")
        raise BenchFailed(msg)
    return kafka, redis_url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (all bound at once, so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted `values`."""
    return values[max(0, math.ceil(q * len(values)) - 1)]


def summary_ms(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"samples": 0}
    s = sorted(values)
    return {"samples": len(s), "p50_ms": round(1000 * pct(s, 0.50), 1),
            "p99_ms": round(1000 * pct(s, 0.99), 1), "max_ms": round(1000 * s[-1], 1),
            "min_ms": round(1000 * s[0], 1), "mean_ms": round(1000 * sum(s) / len(s), 1)}


def tail_of(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_bytes().decode("utf-8", "replace").rstrip().splitlines()
    except OSError:
        return "  | (no output)"
    return "\n".join(f"  | {line}" for line in text[-lines:]) or "  | (empty)"


class _Key(msgspec.Struct):
    subject: str | None = None


_KEY_DECODER = msgspec.json.Decoder(_Key)


def subject_key(line: bytes) -> bytes | None:
    """The partition key a producer would use: the event's subject (None for junk)."""
    try:
        subject = _KEY_DECODER.decode(line).subject
    except DECODE_ERRORS:
        return None
    return subject.encode() if isinstance(subject, str) else None


# -- resources: Kafka topics, Redis namespaces, subprocesses, temp dirs ---------------------------


@dataclass
class Resources:
    kafka: str
    redis_url: str
    tmp: Path
    keep: bool
    topics: list[str] = field(default_factory=list)
    topic_prefixes: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.admin = AdminClient({"bootstrap.servers": self.kafka})

    def kafka_config(self, **more: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self.kafka, **more}

    def new_topic(self, prefix: str, partitions: int) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        futures = self.admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=30, request_timeout=30)
        futures[name].result(timeout=60)
        self.topics.append(name)
        deadline = time.monotonic() + 30
        while True:
            meta = self.admin.list_topics(topic=name, timeout=5).topics.get(name)
            if (meta is not None and meta.error is None and len(meta.partitions) == partitions
                    and all(p.leader >= 0 for p in meta.partitions.values())):
                return name
            if time.monotonic() > deadline:
                msg = f"topic {name} has no leader for every partition after 30 s"
                raise BenchFailed(msg)
            time.sleep(0.1)

    def unique(self, what: str) -> tuple[str, str]:
        """A topic prefix and Redis namespace for one stream run."""
        tag = f"bench-{what}-{uuid.uuid4().hex[:10]}"
        self.topic_prefixes.append(tag + ".")
        self.namespaces.append(tag)
        return tag + ".", tag

    def spawn(self, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        out = open(log.with_suffix(".out"), "wb")  # noqa: SIM115 (closed when the child exits)
        err = open(log.with_suffix(".err"), "wb")  # noqa: SIM115
        try:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            out.close()
            err.close()
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], grace: float) -> str:
        """SIGTERM, then SIGKILL after `grace` seconds; how it ended."""
        if proc.poll() is not None:
            return f"exited {proc.returncode} by itself"
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
            return f"exited {proc.returncode} after SIGTERM"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
            return f"killed (SIGKILL) {grace:.0f} s after SIGTERM"

    def cleanup(self) -> list[str]:
        notes: list[str] = []
        for proc in self.procs:
            if proc.poll() is None:
                notes.append(f"stream pid {proc.pid} {self.stop(proc, 10)}")
        for close in reversed(self.closers):
            try:
                close()
            except Exception as exc:
                notes.append(f"close: {exc!r}")
        if self.keep:
            notes.append(f"kept: {self.tmp}, topics {self.topics} and prefixes "
                         f"{self.topic_prefixes}, Redis namespaces {self.namespaces}")
            return notes
        try:
            existing = set(self.admin.list_topics(timeout=10).topics)
            ours = [t for t in existing
                    if t in self.topics or t.startswith(tuple(self.topic_prefixes or ["\0"]))]
            if ours:
                for topic, future in self.admin.delete_topics(ours, operation_timeout=30).items():
                    try:
                        future.result(timeout=60)
                    except Exception as exc:
                        notes.append(f"delete topic {topic}: {exc}")
        except Exception as exc:
            notes.append(f"topics not deleted: {exc!r}")
        if self.namespaces:
            try:
                import redis

                client = redis.Redis.from_url(self.redis_url)
                for ns in self.namespaces:
                    batch: list[bytes] = []
                    for key in client.scan_iter(match=f"{ns}:*", count=5000):
                        batch.append(key)
                        if len(batch) >= 5000:
                            client.unlink(*batch)
                            batch = []
                    if batch:
                        client.unlink(*batch)
                client.close()
            except Exception as exc:
                notes.append(f"Redis keys not deleted: {exc!r}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        return notes


def stream_env(res: Resources, topic: str, prefix: str, namespace: str, clickhouse: str,
               recovery: Path, workers: int | None) -> dict[str, str]:
    env = {
        **os.environ,
        "METERWAX_CATALOG": str(CATALOG),
        "METERWAX_KAFKA_BOOTSTRAP": res.kafka,
        "METERWAX_INPUT_TOPIC": topic,
        "METERWAX_REDIS_URL": res.redis_url,
        "METERWAX_CLICKHOUSE": clickhouse,
        "METERWAX_RECOVERY_DIR": str(recovery),
        "METERWAX_TOPIC_PREFIX": prefix,
        "METERWAX_REDIS_NAMESPACE": namespace,
    }
    if workers is not None:
        env["METERWAX_WORKERS"] = str(workers)
    else:
        env.pop("METERWAX_WORKERS", None)
    return env


CATALOG = ROOT / "catalog" / "example.yaml"


# -- ClickHouse in this process -------------------------------------------------------------------


class LocalClickHouse:
    """A ChdbHttpServer on `path` for the stream, plus a ChdbStore on the same path (the same
    chdb session) for this process's own queries. The store is opened first, so the schema
    exists before the stream starts (the stream's migrations then find it applied)."""

    def __init__(self, path: Path) -> None:
        from sinks.clickhouse import ChdbStore
        from sinks.clickhouse.http import ChdbHttpServer

        self.store = ChdbStore(str(path))
        try:
            self.server = ChdbHttpServer(str(path)).start()
        except BaseException:
            self.store.close()
            raise
        self.url = self.server.url

    def close(self) -> None:
        try:
            self.server.stop()
        finally:
            self.store.close()


def count_rows(query: Callable[[str], list[dict[str, Any]]]) -> dict[str, int]:
    row = query("SELECT count() AS windows, sum(event_count) AS events, "
                "countIf(revision > 0) AS revised FROM meterwax.rated_windows_final")[0]
    raw = query("SELECT count() AS n FROM meterwax.rated_windows")[0]
    return {"windows": int(row["windows"]), "events": int(row["events"] or 0),
            "revised_windows": int(row["revised"]), "rows_with_revisions": int(raw["n"])}


# -- produce and floor ----------------------------------------------------------------------------


def produce_all(res: Resources, topic: str, lines: Sequence[bytes], keyed: bool,
                compression: str) -> float:
    errors: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None and len(errors) < 5:
            errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    producer = Producer(res.kafka_config(**{
        "enable.idempotence": True, "linger.ms": 20, "compression.type": compression,
        "queue.buffering.max.messages": 500_000, "batch.size": 1_000_000}))
    t0 = time.perf_counter()
    produce, poll = producer.produce, producer.poll
    for i, line in enumerate(lines):
        key = subject_key(line) if keyed else None
        while True:
            try:
                produce(topic, value=line, key=key, on_delivery=delivered)
                break
            except BufferError:
                poll(0.05)
        if i % 1000 == 0:
            poll(0)
    left = producer.flush(120)
    seconds = time.perf_counter() - t0
    if left or errors:
        msg = f"produce to {topic}: {left} undelivered, errors {errors}"
        raise BenchFailed(msg)
    return seconds


def _from_start(consumer: Any, topic: str, partitions: Any
                ) -> tuple[dict[int, int], list[Any]]:
    """Each non-empty partition's end offset, and the assignment that reads it from its start."""
    ends: dict[int, int] = {}
    assign = []
    for p in sorted(partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
        if high > low:
            ends[p] = high
            assign.append(TopicPartition(topic, p, low))
    return ends, assign


def floor_pass(res: Resources, topic: str, chunk: int) -> dict[str, Any]:
    """A bare consumer reads every partition to its end offset as of the start, in batches of
    `chunk` like the stream's reader, and decodes every message. Timed from consumer creation.

    Its settings are the stream's (flows/kafka_io.py) plus `fetch.queue.backoff.ms=10`: with
    librdkafka's default (1000 ms) a consumer that drains faster than about 100k messages/s
    (queued.min.messages) finds its queue empty while the next fetch is postponed, and sits idle
    about 1 s per 100k messages: an artefact that would halve this floor. The stream reads far
    slower than that, so the setting does not matter to it."""
    admin_meta = res.admin.list_topics(topic=topic, timeout=10).topics[topic]
    t0 = time.perf_counter()
    consumer = Consumer(res.kafka_config(**{
        "group.id": "meterwax-bench-floor", "enable.auto.commit": False,
        "fetch.min.bytes": 1, "fetch.queue.backoff.ms": 10}))
    try:
        ends, assign = _from_start(consumer, topic, admin_meta.partitions)
        consumer.assign(assign)
        decode = EVENT_DECODER.decode
        read = ok = 0
        open_parts = set(ends)
        deadline = time.monotonic() + 300
        while open_parts:
            for msg in consumer.consume(chunk, 0.05):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(err)
                p, offset = msg.partition() or 0, msg.offset() or 0
                if offset >= ends[p]:
                    continue
                read += 1
                try:
                    decode(msg.value() or b"")
                    ok += 1
                except DECODE_ERRORS:
                    pass
                if offset == ends[p] - 1:
                    open_parts.discard(p)
            if time.monotonic() > deadline:
                msg_text = f"floor: partitions {sorted(open_parts)} not read to the end in 300 s"
                raise BenchFailed(msg_text)
        seconds = time.perf_counter() - t0
    finally:
        consumer.close()
    return {"read": read, "decoded": ok, "seconds": seconds}


# -- throughput phase -----------------------------------------------------------------------------


def scrape_metrics(url: str) -> dict[str, float] | None:
    """The stream's meterwax_* Prometheus samples, by name and labels as exposed (e.g.
    `meterwax_events_total{bucket="rated"}`); None while the endpoint does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=0.5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("meterwax_"):
            name, _, value = line.rpartition(" ")
            try:
                samples[name] = float(value)
            except ValueError:
                continue
    return samples


def counted(samples: dict[str, float] | None) -> int | None:
    """Events the stream counted (once ingest judged them), blank messages included."""
    if samples is None:
        return None
    return int(sum(value for name, value in samples.items()
                   if name.startswith(("meterwax_events_total{", "meterwax_blank_lines_total"))))


class MetricsWatcher(threading.Thread):
    """Polls the stream's Prometheus endpoint (one per process of a cluster, summed, each at
    the last count it answered): when the first events were counted and when all `expected`
    were (events are counted per chunk, once ingest has judged them)."""

    def __init__(self, ports: Sequence[int], expected: int, t0: float,
                 every: float = 0.1) -> None:
        super().__init__(daemon=True, name="metrics-watcher")
        self.urls = [f"http://127.0.0.1:{port}/metrics" for port in ports]
        self.expected, self.t0, self.every = expected, t0, every
        self.stop_flag = threading.Event()
        self.first: tuple[float, int] | None = None  # (seconds since spawn, count then)
        self.all_at: float | None = None
        self.last = 0
        self._by_url: dict[str, int] = {}

    def count(self) -> int | None:
        for url in self.urls:
            n = counted(scrape_metrics(url))
            if n is not None:
                self._by_url[url] = n
        return sum(self._by_url.values()) if self._by_url else None

    def run(self) -> None:
        while not self.stop_flag.wait(self.every):
            n = self.count()
            now = time.perf_counter() - self.t0
            if n is None:
                continue
            self.last = n
            if n > 0 and self.first is None:
                self.first = (now, n)
            if n >= self.expected and self.all_at is None:
                self.all_at = now
                return


def wait_exits(procs: Sequence[subprocess.Popen[bytes]], timeout: float
               ) -> tuple[list[float | None], list[float | None]]:
    """Waits (os.wait4, which also gives each child's CPU time) until every process has exited,
    one has failed (a non-zero status: its peers in a cluster would wait for it forever), or
    `timeout` s have passed. Each process's exit instant (time.perf_counter(), None while it
    runs) and its user + system CPU seconds. Polled every 10 ms."""
    ends: list[float | None] = [None] * len(procs)
    cpu: list[float | None] = [None] * len(procs)
    deadline = time.perf_counter() + timeout
    while True:
        for i, proc in enumerate(procs):
            if ends[i] is not None:
                continue
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                ends[i] = time.perf_counter()
                cpu[i] = usage.ru_utime + usage.ru_stime
                proc.returncode = os.waitstatus_to_exitcode(status)
        if (all(end is not None for end in ends)
                or any(proc.returncode not in (None, 0) for proc in procs)
                or time.perf_counter() > deadline):
            return ends, cpu
        time.sleep(0.01)


def latest_view(res: Resources, topic: str, timeout: float = 120) -> dict[str, Any]:
    """The keyed view of an output topic: the last value per key (a key's records are all in
    one partition, read here in offset order), each partition read to its end as of the start
    (the stream has exited: nothing more comes)."""
    meta = res.admin.list_topics(topic=topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None:
        what = f"output topic {topic}: {meta.error if meta is not None else 'missing'}"
        raise BenchFailed(what)
    consumer = Consumer(res.kafka_config(**{
        "group.id": f"meterwax-bench-read-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
        "fetch.min.bytes": 1, "fetch.wait.max.ms": 50}))
    view: dict[str, Any] = {}
    try:
        ends, assign = _from_start(consumer, topic, meta.partitions)
        if not assign:
            return view
        consumer.assign(assign)
        open_parts = set(ends)
        deadline = time.monotonic() + timeout
        while open_parts:
            for msg in consumer.consume(1000, 0.1):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(err)
                p, offset = msg.partition() or 0, msg.offset() or 0
                if offset >= ends[p]:
                    continue
                key, value = msg.key(), msg.value()
                if key is not None:
                    if value is None:
                        view.pop(key.decode(), None)
                    else:
                        view[key.decode()] = json.loads(value)
                if offset >= ends[p] - 1:
                    open_parts.discard(p)
            for tp in consumer.position([TopicPartition(topic, p) for p in sorted(open_parts)]):
                if tp.offset >= ends[tp.partition]:
                    open_parts.discard(tp.partition)
            if time.monotonic() > deadline:
                msg_text = (f"{topic}: partitions {sorted(open_parts)} not read to the end in "
                            f"{timeout:.0f} s")
                raise BenchFailed(msg_text)
    finally:
        consumer.close()
    return view


def throughput_phase(args: argparse.Namespace, res: Resources, cmd_base: list[str],
                     figures: dict[str, Any]) -> list[str]:
    """Returns the problems found (empty when the run and its checks were fine)."""
    problems: list[str] = []
    catalog = load_catalog(str(CATALOG))
    comp = compose(catalog, args.size, args.seed)
    t0 = time.perf_counter()
    lines = list(generate(catalog, args.size, args.seed))
    gen_s = time.perf_counter() - t0
    n = len(lines)
    mb = sum(map(len, lines)) / 1e6
    print(f"workload: {n:,} events, {mb:,.1f} MB ({comp.summary()})")
    figures.update(lines=n, payload_mb=round(mb, 1), generate_s=round(gen_s, 3))

    topic = res.new_topic("bench-usage", args.partitions)
    produce_s = produce_all(res, topic, lines, keyed=True,
                            compression=args.compression)
    figures.update(produce_s=round(produce_s, 3), produce_events_per_s=round(n / produce_s))
    print(f"produced into {topic} ({args.partitions} partition(s), keyed by subject, "
          f"{args.compression} compression) in {produce_s:.2f} s")

    floor = floor_pass(res, topic, args.chunk)
    if floor["read"] != n:
        problems.append(f"floor read {floor['read']} messages, {n} were produced")
    floor_rate = n / floor["seconds"]
    figures.update(floor_s=round(floor["seconds"], 3), floor_events_per_s=round(floor_rate),
                   floor_decoded=floor["decoded"])

    # The stream run.
    prefix, namespace = res.unique("tp")
    recovery = res.tmp / "recovery-throughput"
    local: LocalClickHouse | None = None
    if args.clickhouse_path is not None:
        ch_path = Path(args.clickhouse_path or res.tmp / "chdb-throughput").resolve()
        if ch_path.exists() and any(ch_path.iterdir()):
            msg = f"--clickhouse-path {ch_path} exists and is not empty: give a fresh directory"
            raise BenchFailed(msg)
        clickhouse, ch_mode = str(ch_path), "chdb-path"
    else:
        local = LocalClickHouse(res.tmp / "ch-throughput")
        res.closers.append(local.close)
        clickhouse, ch_mode = local.url, "clickhouse-connect"
    figures["clickhouse"] = ch_mode
    watcher: MetricsWatcher | None = None
    try:
        port = free_port()
        cmd = [*cmd_base, "stream", "--stop-at-end", "--metrics-port", str(port)]
        if args.window:
            cmd += ["--window", args.window]
        env = stream_env(res, topic, prefix, namespace, clickhouse, recovery, args.workers)
        print(f"running: {shlex.join(cmd)}  (ClickHouse: {ch_mode} {clickhouse})")
        own_cpu0 = time.process_time()
        t0 = time.perf_counter()
        proc = res.spawn(cmd, env, res.tmp / "stream-throughput")
        watcher = MetricsWatcher([port], n, t0)
        watcher.start()
        (end,), (cpu,) = wait_exits([proc], args.timeout)
        if end is None:
            how = res.stop(proc, 10)
            msg = (f"`meterwax stream --stop-at-end` did not finish within {args.timeout:.0f} s "
                   f"({how}); stderr tail:\n{tail_of(res.tmp / 'stream-throughput.err')}")
            raise BenchFailed(msg)
        stream_s = end - t0
        figures.update(stream_cpu_s=round(cpu or 0.0, 2),
                       bench_process_cpu_s=round(time.process_time() - own_cpu0, 2))
        watcher.stop_flag.set()
        watcher.join(2)
        if proc.returncode != 0:
            msg = (f"`meterwax stream --stop-at-end` failed with exit status {proc.returncode}; "
                   f"stderr tail:\n{tail_of(res.tmp / 'stream-throughput.err')}")
            raise BenchFailed(msg)
        stream_rate = n / stream_s
        figures.update(stream_s=round(stream_s, 3), stream_events_per_s=round(stream_rate),
                       stream_vs_floor_pct=round(100 * stream_rate / floor_rate, 2))
        if watcher.first is not None and watcher.all_at is not None:
            first_s, first_n = watcher.first
            reading_s = watcher.all_at - first_s
            figures.update(
                stream_startup_s=round(first_s, 2), stream_reading_s=round(reading_s, 2),
                stream_shutdown_s=round(stream_s - watcher.all_at, 2),
                stream_reading_events_per_s=(round((n - first_n) / reading_s)
                                             if reading_s > 0 else None))
        else:
            figures["stream_phases"] = (f"metrics incomplete (last count {watcher.last}); "
                                        "start-up and reading not split")

        # What landed in ClickHouse.
        if local is not None:
            rows = count_rows(local.store.query)
        else:
            from sinks.clickhouse import ChdbStore

            with ChdbStore(clickhouse) as store:
                rows = count_rows(store.query)
    finally:
        if watcher is not None:
            watcher.stop_flag.set()
        if local is not None:  # closed here: the latency phase opens another path
            local.close()
            res.closers.remove(local.close)
    figures["clickhouse_rows"] = rows
    if args.verify and args.partitions == 1:
        from meterwax.cli import parse_duration
        from operators.engine import run_engine
        from operators.ingest import IngestConfig

        config = (IngestConfig(window=parse_duration(args.window)) if args.window
                  else IngestConfig())
        t1 = time.perf_counter()
        result = run_engine(catalog, lines, config)
        final: dict[str, Any] = {}
        for w in result.windows:
            if w.row_id not in final or w.revision > final[w.row_id].revision:
                final[w.row_id] = w
        expected = {"windows": len(final), "events": sum(w.event_count for w in final.values()),
                    "rated": result.stats.rated}
        figures["engine_expected"] = expected
        figures["engine_check_s"] = round(time.perf_counter() - t1, 2)
        if (rows["windows"], rows["events"]) != (expected["windows"], expected["events"]):
            problems.append(f"ClickHouse holds {rows['windows']} windows / {rows['events']} "
                            f"events; the engine rates {expected['windows']} / "
                            f"{expected['events']}")
        figures["clickhouse_check"] = "match" if not problems else "MISMATCH"
    elif args.verify:
        figures["clickhouse_check"] = "skipped (several partitions: another order than the file)"
    if args.processes > 1:
        problems += cluster_pass(args, res, cmd_base, topic, n, floor_rate, prefix, figures)
    return problems


def cluster_pass(args: argparse.Namespace, res: Resources, cmd_base: list[str], topic: str,
                 n: int, floor_rate: float, one_prefix: str,
                 figures: dict[str, Any]) -> list[str]:
    """The same topic again, read by --processes processes of one Bytewax cluster (-i/-a, as
    the StatefulSet runs them), each with its own recovery directory and metrics port, a fresh
    output-topic prefix and Redis namespace and a fresh ClickHouse. Timed from the spawn of the
    first process to the exit of the last; then its invoices are compared with the one-process
    pass's (whose output topics start with `one_prefix`)."""
    problems: list[str] = []
    k = args.processes
    prefix, namespace = res.unique("tpc")
    cl: dict[str, Any] = {"processes": k, "workers_per_process": args.workers}
    figures["cluster"] = cl
    ports = free_ports(2 * k)
    peers, metrics_ports = ports[:k], ports[k:]
    addresses = [arg for p in peers for arg in ("-a", f"127.0.0.1:{p}")]
    window = ["--window", args.window] if args.window else []
    cmds = [[*cmd_base, "stream", "--stop-at-end", "-i", str(i), *addresses,
             "--metrics-port", str(metrics_ports[i]), *window] for i in range(k)]
    logs = [res.tmp / f"stream-cluster-{i}" for i in range(k)]
    local = LocalClickHouse(res.tmp / "ch-cluster")
    res.closers.append(local.close)
    watcher: MetricsWatcher | None = None
    try:
        envs = [stream_env(res, topic, prefix, namespace, local.url,
                           res.tmp / f"recovery-cluster-{i}", args.workers) for i in range(k)]
        print(f"running {k} processes of one cluster: {shlex.join(cmds[0])}  (and -i 1..{k - 1} "
              f"likewise, each with its own recovery dir and metrics port; ClickHouse: "
              f"clickhouse-connect {local.url})")
        own_cpu0 = time.process_time()
        t0 = time.perf_counter()
        procs = [res.spawn(cmd, env, log) for cmd, env, log in zip(cmds, envs, logs, strict=True)]
        watcher = MetricsWatcher(metrics_ports, n, t0)
        watcher.start()
        ends, cpu = wait_exits(procs, args.timeout)
        watcher.stop_flag.set()
        watcher.join(2)
        failed = [i for i, proc in enumerate(procs) if proc.returncode not in (None, 0)]
        if failed or None in ends:
            hows = [res.stop(proc, 10) for proc in procs]
            what = (f"process {failed[0]} failed with exit status {procs[failed[0]].returncode}"
                    if failed else f"did not finish within {args.timeout:.0f} s")
            tails = "\n".join(f"process -i {i} ({how}); stderr tail:\n"
                               f"{tail_of(log.with_suffix('.err'))}"
                               for i, (how, log) in enumerate(zip(hows, logs, strict=True)))
            msg = f"the {k}-process `meterwax stream --stop-at-end` cluster: {what}\n{tails}"
            raise BenchFailed(msg)
        exits = [end - t0 for end in ends if end is not None]
        cluster_s = max(exits)
        rate = n / cluster_s
        cl.update(seconds=round(cluster_s, 3), events_per_s=round(rate),
                  vs_floor_pct=round(100 * rate / floor_rate, 2),
                  scale_out=round(rate / figures["stream_events_per_s"], 3),
                  exit_s=[round(x, 2) for x in exits],
                  cpu_s=[round(c or 0.0, 2) for c in cpu],
                  bench_process_cpu_s=round(time.process_time() - own_cpu0, 2))
        if watcher.first is not None and watcher.all_at is not None:
            first_s, first_n = watcher.first
            reading_s = watcher.all_at - first_s
            cl.update(startup_s=round(first_s, 2), reading_s=round(reading_s, 2),
                      shutdown_s=round(cluster_s - watcher.all_at, 2),
                      reading_events_per_s=(round((n - first_n) / reading_s)
                                            if reading_s > 0 else None))
        else:
            cl["phases"] = (f"metrics incomplete (last count {watcher.last}); start-up and "
                            "reading not split")
        cl["clickhouse_rows"] = count_rows(local.store.query)
    finally:
        if watcher is not None:
            watcher.stop_flag.set()
        local.close()  # the latency phase opens another path
        res.closers.remove(local.close)

    # Identical results: every invoice (candidates that adjust nothing), per-day consumption
    # aside, and the net amount per (subscription, period, line) over invoices and adjustments.
    one = latest_view(res, one_prefix + "invoice-candidates")
    many = latest_view(res, prefix + "invoice-candidates")
    got, want = compare_invoices(many), compare_invoices(one)
    differing = sorted(key for key in set(got) | set(want) if got.get(key) != want.get(key))
    net_one, net_many = net_by_line(list(one.values())), net_by_line(list(many.values()))
    net_differing = sorted(key for key in set(net_one) | set(net_many)
                           if net_one.get(key) != net_many.get(key))
    cl["invoices"] = {
        "one_process": len(want), f"{k}_processes": len(got),
        "adjustments_one_process": len(one) - len(want),
        f"adjustments_{k}_processes": len(many) - len(got),
        "check": "identical" if not differing else "DIFFER",
        "differing_ids": differing[:50], "differing_count": len(differing),
        "net_lines": len(net_one),
        "net_check": "identical" if not net_differing else "DIFFER",
        "net_differing": [{"key": list(key), "one_process": str(net_one.get(key)),
                           f"{k}_processes": str(net_many.get(key))}
                          for key in net_differing[:20]],
        "net_differing_count": len(net_differing)}
    if not want:
        problems.append("the one-process pass issued no invoice: nothing to compare "
                        "(a larger --size closes a period)")
    if differing:
        problems.append(f"{len(differing)} invoice(s) differ between one process and {k}: "
                        f"{', '.join(differing[:10])}")
    if net_differing:
        problems.append(f"the net amount differs between one process and {k} for "
                        f"{len(net_differing)} (subscription, period, line): "
                        f"{net_differing[:5]}")
    return problems


# -- latency phase --------------------------------------------------------------------------------


def _rfc3339_ms(epoch_ms: int) -> str:
    sec, ms = divmod(epoch_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{ms:03d}Z"


class _Worker(threading.Thread):
    """A thread whose failure is kept for the phase to report, not printed and lost."""

    error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _run(self) -> None:
        raise NotImplementedError


class SteadyProducer(_Worker):
    """Produces one event every 1/rate s (bursting to catch up, never skipping). Event time =
    --event-base + (production instant - t0), in ms; records (production time, window start,
    rank in window) per event, in production order (= offset order: one partition, idempotent
    producer)."""

    def __init__(self, res: Resources, topic: str, rate: float, base_ms: int, window_s: int,
                 linger_ms: float, compression: str, run_id: str) -> None:
        super().__init__(daemon=True, name="steady-producer")
        self.producer = Producer(res.kafka_config(**{
            "enable.idempotence": True, "linger.ms": linger_ms,
            "compression.type": compression}))
        self.topic, self.rate, self.base_ms, self.window_s = topic, rate, base_ms, window_s
        self.run_id = run_id
        self.stop_flag = threading.Event()
        self.records: list[tuple[float, int, int]] = []
        self.counts: dict[int, int] = {}
        self.errors: list[str] = []
        self.t0 = 0.0
        self.error: BaseException | None = None
        head = ('{"specversion":"1.0","id":"lat-' + run_id + '-')
        self.head = head
        self.mid = ('","source":"' + LAT_SOURCE + '","type":"' + LAT_TYPE + '","subject":"'
                    + LAT_SUBJECT + '","time":"')
        self.tail = '","data":{"method":"GET","route":"/v1/orders","status":200}}'

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None and len(self.errors) < 5:
            self.errors.append(str(err))

    def _run(self) -> None:
        produce, poll = self.producer.produce, self.producer.poll
        period = 1.0 / self.rate
        w_ms = self.window_s * 1000
        self.t0 = t0 = time.time()
        i = 0
        while not self.stop_flag.is_set():
            now = time.time()
            due = t0 + i * period
            if due > now:
                poll(0)
                time.sleep(min(due - now, 0.002))
                continue
            while due <= now:
                p = time.time()
                ev_ms = self.base_ms + int((p - t0) * 1000)
                ws = ev_ms // w_ms * self.window_s
                rank = self.counts[ws] = self.counts.get(ws, 0) + 1
                value = (self.head + str(i) + self.mid + _rfc3339_ms(ev_ms) + self.tail).encode()
                while True:
                    try:
                        produce(self.topic, value=value, key=LAT_SUBJECT.encode(),
                                on_delivery=self._delivered)
                        break
                    except BufferError:
                        poll(0.01)
                self.records.append((p, ws, rank))
                i += 1
                due = t0 + i * period
            poll(0)
        self.producer.flush(30)


class RowPoller(threading.Thread):
    """Every `every` s: the latency meter's rated_windows rows. Keeps, per window start, each
    (revision, event_count) the first time it is seen, with the poll's end time and the row's
    inserted_at."""

    def __init__(self, store: Any, base_s: int, every: float) -> None:
        super().__init__(daemon=True, name="row-poller")
        self.store, self.every = store, every
        self.sql = ("SELECT toUnixTimestamp(window_start) AS ws, revision, event_count, "
                    "toUnixTimestamp64Micro(inserted_at) AS ins FROM meterwax.rated_windows "
                    f"WHERE subscription_id = '{LAT_SUBSCRIPTION}' AND meter = '{LAT_METER}' "
                    f"AND window_start >= toDateTime64({base_s}, 6, 'UTC')")
        self.stop_flag = threading.Event()
        self.seen: dict[int, list[tuple[float, int, float]]] = {}  # ws -> [(t, count, ins)]
        self._keys: set[tuple[int, int, int]] = set()
        self.polls = 0
        self.query_s = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        next_at = time.time()
        while not self.stop_flag.is_set():
            try:
                q0 = time.time()
                rows = self.store.query(self.sql)
                q1 = time.time()
            except Exception as exc:  # the table exists (store opened first): a real failure
                self.error = exc
                return
            self.polls += 1
            self.query_s += q1 - q0
            for r in rows:
                key = (int(r["ws"]), int(r["revision"]), int(r["event_count"]))
                if key not in self._keys:
                    self._keys.add(key)
                    self.seen.setdefault(key[0], []).append(
                        (q1, key[2], int(r["ins"]) / 1e6))
            next_at += self.every
            self.stop_flag.wait(max(0.0, next_at - time.time()))

    def visible(self, ws: int, count: int) -> tuple[float, float] | None:
        """(poll time, inserted_at) of the first row of window `ws` whose event_count >= count."""
        best: tuple[float, float] | None = None
        for t, c, ins in self.seen.get(ws, ()):
            if c >= count and (best is None or t < best[0]):
                best = (t, ins)
        return best


def latency_phase(args: argparse.Namespace, res: Resources, cmd_base: list[str],
                  figures: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    window_s = args.latency_window
    base = datetime.fromisoformat(args.event_base.replace("Z", "+00:00"))
    if base.tzinfo is None:
        base = base.replace(tzinfo=UTC)
    base_ms = int(base.timestamp()) * 1000
    topic = res.new_topic("bench-latency", 1)
    prefix, namespace = res.unique("lat")
    local = LocalClickHouse(res.tmp / "ch-latency")
    res.closers.append(local.close)
    # The events are dated from --event-base, ahead of the processing clock whenever the bench
    # runs before it: without this they would all be FUTURE_EVENT and no window ever rated.
    cmd = [*cmd_base, "stream", "--window", f"{window_s}s", "--max-future", SOAK_MAX_FUTURE]
    env = stream_env(res, topic, prefix, namespace, local.url, res.tmp / "recovery-latency",
                     args.workers)
    print(f"\nrunning: {shlex.join(cmd)}  (tailing {topic}; ClickHouse: clickhouse-connect "
          f"{local.url})")
    lat = figures["latency"] = {
        "window_s": window_s, "rate": args.rate, "seconds": args.seconds,
        "warmup_s": args.warmup, "poll_ms": args.poll_ms, "linger_ms": args.linger_ms,
        "event_base": args.event_base, "subscription": LAT_SUBSCRIPTION, "meter": LAT_METER}
    err_log = res.tmp / "stream-latency.err"
    t_spawn = time.time()
    proc = res.spawn(cmd, env, res.tmp / "stream-latency")
    poller = RowPoller(local.store, base_ms // 1000, args.poll_ms / 1000)
    producer = SteadyProducer(res, topic, args.rate, base_ms, window_s, args.linger_ms,
                              args.compression, uuid.uuid4().hex[:8])
    poller.start()
    producer.start()

    def alive_or_fail(doing: str) -> None:
        if proc.poll() is not None:
            msg = (f"`meterwax stream` exited ({proc.returncode}) while {doing}; stderr tail:\n"
                   f"{tail_of(err_log)}")
            raise BenchFailed(msg)
        for thread in (producer, poller):
            if thread.error is not None:
                msg = f"{thread.name} failed while {doing}: {thread.error!r}"
                raise BenchFailed(msg)

    try:
        # Start-up: until the first window row is queryable (the events produced meanwhile are a
        # backlog the stream reads at once; the warm-up lets it catch up before sampling).
        deadline = time.time() + args.startup_timeout
        while not poller.seen:
            alive_or_fail("starting")
            if time.time() > deadline:
                msg = (f"no rated window in ClickHouse {args.startup_timeout:.0f} s after "
                       f"starting the stream; stderr tail:\n{tail_of(err_log)}")
                raise BenchFailed(msg)
            time.sleep(0.05)
        lat["startup_to_first_row_s"] = round(time.time() - t_spawn, 2)
        end_warmup = time.time() + args.warmup
        while time.time() < end_warmup:
            alive_or_fail("warming up")
            time.sleep(0.05)
        sample_from = time.time()
        sample_to = sample_from + args.seconds
        print(f"  stream up after {lat['startup_to_first_row_s']} s; warmed up {args.warmup} s; "
              f"sampling {args.seconds} s at {args.rate:,.0f} events/s ...")
        while time.time() < sample_to:
            alive_or_fail("sampling")
            time.sleep(0.05)
        # Drain: keep producing (unsampled) so the last sampled window closes, until it is
        # visible with the last sampled event in it.
        recs = producer.records
        last = next((r for r in reversed(recs[:len(recs)]) if r[0] < sample_to), None)
        drain_deadline = time.time() + args.drain_timeout
        while last is not None and poller.visible(last[1], last[2]) is None:
            alive_or_fail("draining")
            if time.time() > drain_deadline:
                problems.append(f"the last sampled window was not queryable within "
                                f"{args.drain_timeout:.0f} s after sampling ended")
                break
            time.sleep(0.05)
        time.sleep(3 * args.poll_ms / 1000)  # a few more polls
    finally:
        producer.stop_flag.set()
        poller.stop_flag.set()
        producer.join(35)
        poller.join(5)
        how = Resources.stop(proc, args.stop_timeout)
        lat["stream_stop"] = how
        print(f"  stream stopped: {how}")
    if producer.errors:
        problems.append(f"delivery errors: {producer.errors}")

    # Analysis.
    records = producer.records
    produced_s = (records[-1][0] - producer.t0) if records else 0.0
    lat["produced_total"] = len(records)
    lat["produced_rate"] = round(len(records) / produced_s) if produced_s else None
    samples = [r for r in records if sample_from <= r[0] < sample_to]
    lat["sampled_rate"] = round(len(samples) / args.seconds)
    event_lat: list[float] = []
    missing = 0
    for p, ws, rank in samples:
        seen = poller.visible(ws, rank)
        if seen is None:
            missing += 1
        else:
            event_lat.append(seen[0] - p)
    lat["event_to_row"] = summary_ms(event_lat)
    lat["event_to_row"]["missing"] = missing
    # Per window: its closing event = the first event of a later window.
    close_lat: list[float] = []
    close_ins: list[float] = []
    count_mismatch: list[str] = []
    for prev, cur in itertools.pairwise(records):
        if cur[1] == prev[1] or not sample_from <= cur[0] < sample_to:
            continue
        ws, total = prev[1], producer.counts[prev[1]]
        seen = poller.visible(ws, total)
        if seen is None:
            continue  # counted as missing above when it holds sampled events
        close_lat.append(seen[0] - cur[0])
        close_ins.append(seen[1] - cur[0])
        counts = [c for _t, c, _i in poller.seen.get(ws, ())]
        if max(counts) != total:
            count_mismatch.append(f"window {ws}: event_count {max(counts)}, produced {total}")
    lat["close_to_row"] = summary_ms(close_lat)
    lat["close_to_insert"] = summary_ms(close_ins)
    lat["polls"] = poller.polls
    lat["poll_query_mean_ms"] = (round(1000 * poller.query_s / poller.polls, 2)
                                 if poller.polls else None)
    if missing:
        problems.append(f"{missing} sampled events never became visible")
    if count_mismatch:
        problems.append("rated event_count differs from what was produced: "
                        + "; ".join(count_mismatch[:3]))
    return problems


# -- soak phase -----------------------------------------------------------------------------------

SOAK_START = Month(2026, 10)  # the example catalog's first subscription month
# The most --max-future allows (operators/limits.py MAX_DURATION). Simulated time runs far ahead
# of the wall clock, and the stream judges FUTURE_EVENT against the wall clock.
SOAK_MAX_FUTURE = "3660d"
# Subjects of the example catalog (five customers; umbrella's subscription starts 2026-10-10, so
# its first days are NO_ACTIVE_SUBSCRIPTION), with a CloudEvents source each.
SOAK_SUBJECTS = tuple(
    (subject, f"//{subject.split('-')[0]}.example/soak/{subject}")
    for subject in ("acme-prod", "acme-dev", "globex-main", "initech-app", "umbrella-tokyo",
                    "tyrell-eu"))
# Event types and their cumulative shares: api.request (api_calls, a count), llm.completion
# (tokens, a sum of usage.tokens), user.active (active_users, a unique_count of user_id). Plans
# that lack a meter (initech's starter-usd has no tokens) make some events unmetered.
SOAK_TYPES = (("api.request", 0.60), ("llm.completion", 0.85), ("user.active", 1.0))
SOAK_USERS = 200  # distinct user ids: a period's unique_count state is bounded by this
# An event dated in the previous month is produced only once the simulated time is this far into
# the current month: past the default allowed lateness (1h), so that period has closed.
SOAK_CLOSED_AFTER_MS = 3 * 3600 * 1000


class SoakProducer(_Worker):
    """Produces --soak-rate events/s (bursting to catch up, never skipping) for --soak-months
    simulated months of --soak-seconds-per-month wall seconds each. The simulated clock starts at
    the start of SOAK_START and runs linearly through each calendar month, one month per
    --soak-seconds-per-month (months of 28 and 31 days take the same wall time). An event is
    dated at the simulated instant of its production, except a --soak-late share dated 1-5
    simulated minutes earlier (late for its window) and a --soak-old share dated anywhere in the
    previous month once that month has closed (late usage for a closed period: adjustments).
    Subjects, types and values come from a seeded RNG; ids are unique per run. Counts what it
    produced per simulated month; `month` is the month being produced (-1 before the start,
    --soak-months once done)."""

    def __init__(self, res: Resources, topic: str, args: argparse.Namespace,
                 run_id: str) -> None:
        super().__init__(daemon=True, name="soak-producer")
        self.producer = Producer(res.kafka_config(**{
            "enable.idempotence": True, "linger.ms": args.linger_ms,
            "compression.type": args.compression}))
        self.topic, self.rate, self.months = topic, args.soak_rate, args.soak_months
        self.per_month = args.soak_seconds_per_month
        self.late_share, self.old_share = args.soak_late, args.soak_old
        self.rng = random.Random(args.seed)
        bounds, month = [], SOAK_START
        for _ in range(self.months + 1):
            bounds.append(int(month.start.timestamp()) * 1000)
            month = month.next()
        self.bounds_ms = bounds
        self.labels = [Month.of(datetime.fromtimestamp(b / 1000, UTC)).key for b in bounds]
        self.head = '{"specversion":"1.0","id":"soak-' + run_id + "-"
        self.stop_flag = threading.Event()
        self.month = -1
        self.produced = [0] * self.months
        self.late = [0] * self.months
        self.old = [0] * self.months
        self.total = 0
        self.t0 = 0.0
        self.errors: list[str] = []
        self.error: BaseException | None = None

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None and len(self.errors) < 5:
            self.errors.append(str(err))

    def _event(self, i: int, at_ms: int) -> tuple[bytes, bytes]:
        rng = self.rng
        subject, source = SOAK_SUBJECTS[rng.randrange(len(SOAK_SUBJECTS))]
        pick = rng.random()
        kind = next(k for k, (_t, share) in enumerate(SOAK_TYPES) if pick < share)
        if kind == 0:
            data = '{"method":"GET","route":"/v1/orders","status":200}'
        elif kind == 1:
            data = '{"model":"m1","usage":{"tokens":' + str(rng.randint(1, 4000)) + "}}"
        else:
            data = '{"user_id":"u' + str(rng.randrange(SOAK_USERS)) + '"}'
        value = (self.head + str(i) + '","source":"' + source + '","type":"'
                 + SOAK_TYPES[kind][0] + '","subject":"' + subject + '","time":"'
                 + _rfc3339_ms(at_ms) + '","data":' + data + "}")
        return value.encode(), subject.encode()

    def _send(self, value: bytes, key: bytes) -> None:
        while True:
            try:
                self.producer.produce(self.topic, value=value, key=key,
                                      on_delivery=self._delivered)
                return
            except BufferError:
                self.producer.poll(0.01)

    def probe(self) -> None:
        """One event dated at the start of the first month, before the clock starts: the stream
        is up once it has counted it."""
        self._send(*self._event(0, self.bounds_ms[0]))
        self.producer.flush(30)
        self.produced[0] += 1
        self.total += 1

    def _run(self) -> None:
        poll, rng = self.producer.poll, self.rng
        period = 1.0 / self.rate
        bounds, per_month, months = self.bounds_ms, self.per_month, self.months
        self.t0 = t0 = time.time()
        self.month = 0
        i, n = 1, 0  # i: event id (0 was the probe); n: events due since t0
        while not self.stop_flag.is_set():
            now = time.time()
            m = int((now - t0) / per_month)
            if m >= months:
                break
            self.month = m
            due = t0 + n * period
            if due > now:
                poll(0)
                time.sleep(min(due - now, 0.002))
                continue
            while due <= now:
                elapsed = time.time() - t0
                m = min(int(elapsed / per_month), months - 1)
                frac = min(1.0, elapsed / per_month - m)
                sim = bounds[m] + int(frac * (bounds[m + 1] - bounds[m]))
                r = rng.random()
                at = sim
                if r < self.old_share and m > 0 and sim - bounds[m] > SOAK_CLOSED_AFTER_MS:
                    at = rng.randrange(bounds[m - 1], bounds[m])
                    self.old[m] += 1
                elif r < self.old_share + self.late_share and sim - bounds[0] > 300_000:
                    at = sim - rng.randrange(60_000, 300_001)
                    self.late[m] += 1
                self._send(*self._event(i, at))
                self.produced[m] += 1
                self.total += 1
                i += 1
                n += 1
                due = t0 + n * period
            poll(0)
        self.month = months
        self.producer.flush(30)


def _status_kb(pid: int, name: str) -> int | None:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM); None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return 0  # a zombie has no VmRSS line


def tree_rss_kb(pid: int) -> tuple[int, int] | None:
    """VmRSS of `pid` plus all its descendants, in kB, and how many processes that is (None once
    `pid` is gone). `meterwax stream` is the console script itself (a Python process, no
    wrapper); its children, if Bytewax or a library ever spawned any, are counted too."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"{entry.path}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
            ppid = int(stat.rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    own = _status_kb(pid, "VmRSS")
    if own is None:
        return None
    total, count, todo = own, 1, list(children.get(pid, ()))
    while todo:
        child = todo.pop()
        kb = _status_kb(child, "VmRSS")
        if kb is not None:
            total += kb
            count += 1
        todo.extend(children.get(child, ()))
    return total, count


class SnapshotReader:
    """Reads the stream's Bytewax recovery partitions (part-*.sqlite3, bytewax.recovery
    .init_db_dir) read-only while the stream writes them. Bytewax 0.21's schema: table `snaps`
    (step_id, state_key, snap_epoch, ser_change BLOB; NULL when a key was discarded) and table
    `commits` (part_index, commit_epoch); WAL journal, so reading never blocks the writer.
    Bytewax writes, per epoch, one row for each key whose state changed, and at each commit
    garbage-collects every snapshot of a key older than its newest one at or before the commit
    epoch: an epoch's rows only stay until a later committed epoch snapshots the same keys. So
    each poll reads the epochs committed since the last poll (snap_epoch <= commit_epoch, in one
    read transaction), and keeps each epoch's figures as first seen, summed over partitions.
    An epoch first read after a later epoch was also committed may have lost rows to that
    garbage collection: those are counted (`late_reads`). Also read, per poll: the live state,
    i.e. the newest snapshot of every key (what a resume loads), and its discarded keys
    (tombstones: a NULL row stays as a key's newest until the key is snapshotted again)."""

    COLUMNS = frozenset({"step_id", "state_key", "snap_epoch", "ser_change"})

    def __init__(self, recovery: Path) -> None:
        self.recovery = recovery
        self.conns: dict[Path, sqlite3.Connection] = {}
        self.last: dict[Path, int] = {}
        # epoch -> {"month", "t", "keys", "bytes", "discards", "steps": {step: [keys, bytes]}}
        self.epochs: dict[int, dict[str, Any]] = {}
        self.busy = 0  # partition reads skipped because the database was busy
        self.late_reads = 0
        self.polls = 0

    def _conn(self, path: Path) -> sqlite3.Connection:
        conn = self.conns.get(path)
        if conn is None:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.5,
                                   isolation_level=None)
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            cols = {r[1] for r in conn.execute("PRAGMA table_info(snaps)")}
            if "commits" not in tables or not cols >= self.COLUMNS:
                conn.close()
                msg = (f"{path.name}: not Bytewax 0.21's recovery schema (tables {sorted(tables)}, "
                       f"snaps columns {sorted(cols)}); bench_stream reads snaps and commits")
                raise BenchFailed(msg)
            self.conns[path] = conn
        return conn

    def poll(self, month: int, now: float) -> dict[str, Any] | None:
        """Records newly committed epochs under `month`; returns the live state (None when no
        partition could be read)."""
        self.polls += 1
        live: dict[str, Any] = {"keys": 0, "bytes": 0, "tombstones": 0, "steps": {},
                                "db_bytes": 0}
        read_any = False
        for path in sorted(self.recovery.glob("part-*.sqlite3")):
            try:
                conn = self._conn(path)
                conn.execute("BEGIN")
                try:
                    commit = conn.execute("SELECT max(commit_epoch) FROM commits").fetchone()[0]
                    last = self.last.get(path, -1)
                    rows = [] if commit is None else conn.execute(
                        "SELECT snap_epoch, step_id, count(*), "
                        "coalesce(sum(length(ser_change)), 0), count(*) - count(ser_change) "
                        "FROM snaps WHERE snap_epoch > ? AND snap_epoch <= ? "
                        "GROUP BY snap_epoch, step_id", (last, commit)).fetchall()
                    # SQLite: a bare column next to max() comes from the row holding the max.
                    steps = conn.execute(
                        "SELECT step_id, count(l), coalesce(sum(l), 0), count(*) - count(l) "
                        "FROM (SELECT step_id, max(snap_epoch), length(ser_change) AS l "
                        "FROM snaps GROUP BY step_id, state_key) GROUP BY step_id").fetchall()
                finally:
                    conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if "locked" in text or "busy" in text:
                    self.busy += 1
                    continue
                raise
            read_any = True
            for suffix in ("", "-wal"):
                with contextlib.suppress(OSError):
                    live["db_bytes"] += os.stat(f"{path}{suffix}").st_size
            newest = last
            for epoch, step, keys, size, discards in rows:
                rec = self.epochs.get(epoch)
                if rec is None:
                    rec = self.epochs[epoch] = {"month": month, "t": now, "keys": 0, "bytes": 0,
                                                "discards": 0, "steps": {}}
                    if epoch < commit:
                        self.late_reads += 1
                rec["keys"] += keys
                rec["bytes"] += size
                rec["discards"] += discards
                per = rec["steps"].setdefault(step, [0, 0])
                per[0] += keys
                per[1] += size
                newest = max(newest, epoch)
            if commit is not None:  # every epoch up to it is read (or had no rows)
                self.last[path] = max(newest, commit)
            for step, keys, size, tombstones in steps:
                live["keys"] += keys
                live["bytes"] += size
                live["tombstones"] += tombstones
                per = live["steps"].setdefault(step, [0, 0])
                per[0] += keys
                per[1] += size
        return live if read_any else None

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def soak_phase(args: argparse.Namespace, res: Resources, cmd_base: list[str],
               figures: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    months = args.soak_months
    window = args.soak_window or "1m"
    topic = res.new_topic("bench-soak", 1)
    prefix, namespace = res.unique("soak")
    local = LocalClickHouse(res.tmp / "ch-soak")
    res.closers.append(local.close)
    recovery = res.tmp / "recovery-soak"
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    cmd = [*cmd_base, "stream", "--window", window, "--dedup-ttl", args.dedup_ttl,
           "--max-future", SOAK_MAX_FUTURE, "--metrics-port", str(port)]
    env = stream_env(res, topic, prefix, namespace, local.url, recovery, args.workers)
    producer = SoakProducer(res, topic, args, uuid.uuid4().hex[:8])
    soak = figures["soak"] = {
        "months": months, "first_month": producer.labels[0], "rate": args.soak_rate,
        "seconds_per_month": args.soak_seconds_per_month, "window": window,
        "dedup_ttl": args.dedup_ttl, "max_future": SOAK_MAX_FUTURE,
        "late_share": args.soak_late, "old_share": args.soak_old,
        "sample_s": args.soak_sample, "subjects": [s for s, _ in SOAK_SUBJECTS],
        "types": [t for t, _ in SOAK_TYPES]}
    print(f"\nrunning: {shlex.join(cmd)}  (tailing {topic}; ClickHouse: clickhouse-connect "
          f"{local.url}; recovery {recovery})")
    err_log = res.tmp / "stream-soak.err"
    t_spawn = time.time()
    proc = res.spawn(cmd, env, res.tmp / "stream-soak")
    reader = SnapshotReader(recovery)
    samples: list[dict[str, Any]] = []
    last_metrics: dict[str, float] | None = None

    def alive_or_fail(doing: str) -> None:
        if proc.poll() is not None:
            msg = (f"`meterwax stream` exited ({proc.returncode}) while {doing}; stderr tail:\n"
                   f"{tail_of(err_log)}")
            raise BenchFailed(msg)
        if producer.error is not None:
            msg = f"{producer.name} failed while {doing}: {producer.error!r}"
            raise BenchFailed(msg)

    def sample(month: int) -> dict[str, Any]:
        nonlocal last_metrics
        now = time.time()
        rss = tree_rss_kb(proc.pid)
        live = reader.poll(month, now)
        metrics = scrape_metrics(url)
        if metrics is not None:
            last_metrics = metrics
        s = {"t": round(now - t_spawn, 2), "month": month,
             "rss_kb": rss[0] if rss else None, "procs": rss[1] if rss else None,
             "produced": producer.total, "counted": counted(metrics), "live": live}
        samples.append(s)
        return s

    def month_line(m: int, s: dict[str, Any]) -> str:
        live = s["live"] or {}
        rss = f"{s['rss_kb'] / 1024:,.0f} MB" if s["rss_kb"] else "-"
        return (f"  {producer.labels[m]} done at {s['t']:.0f} s: produced {s['produced']:,}, "
                f"stream counted {s['counted'] or 0:,}; RSS {rss}; live state "
                f"{live.get('bytes', 0) / 1024:,.1f} KB in {live.get('keys', 0):,} keys; "
                f"{len(reader.epochs)} epochs read")

    try:
        # Start-up: the probe (dated at the first month's start) is counted once the flow reads.
        producer.probe()
        deadline = t_spawn + args.startup_timeout
        while (counted(scrape_metrics(url)) or 0) < 1:
            alive_or_fail("starting")
            if time.time() > deadline:
                msg = (f"the stream did not count its first event {args.startup_timeout:.0f} s "
                       f"after starting; stderr tail:\n{tail_of(err_log)}")
                raise BenchFailed(msg)
            time.sleep(0.1)
        soak["startup_s"] = round(time.time() - t_spawn, 2)
        print(f"  stream up after {soak['startup_s']} s; producing {args.soak_rate:,.0f} "
              f"events/s, one simulated month per {args.soak_seconds_per_month:g} s, "
              f"{months} months from {producer.labels[0]} ...")
        producer.start()
        next_at = time.time()
        prev: dict[str, Any] | None = None
        while True:
            alive_or_fail(f"soaking ({producer.labels[max(0, producer.month)]})")
            month = producer.month
            s = sample(month)
            if prev is not None and prev["month"] != month and 0 <= prev["month"] < months:
                print(month_line(prev["month"], prev))
            prev = s
            if month >= months or not producer.is_alive():
                break
            next_at += args.soak_sample
            time.sleep(max(0.0, next_at - time.time()))
        # Drain: at least --soak-drain s, and until the stream counted every event.
        producer.join(35)
        t_end = time.time()
        soak["produce_s"] = round(t_end - producer.t0, 2)
        while True:
            alive_or_fail("draining")
            s = sample(months)
            waited = time.time() - t_end
            if waited >= args.soak_drain and (s["counted"] or 0) >= producer.total:
                break
            if waited > args.soak_drain + args.drain_timeout:
                # None: its metrics endpoint did not answer (a stream busy snapshotting).
                seen = "?" if s["counted"] is None else f"{s['counted']:,}"
                problems.append(f"the stream counted {seen} of {producer.total:,} "
                                f"events {waited:.0f} s after production ended")
                break
            time.sleep(args.soak_sample)
    finally:
        producer.stop_flag.set()
        if producer.is_alive():
            producer.join(35)
        how = Resources.stop(proc, args.stop_timeout)
        soak["stream_stop"] = how
        reader.close()
        print(f"  stream stopped: {how}")
    if producer.errors:
        problems.append(f"delivery errors: {producer.errors}")

    # Analysis, per simulated month (the drain is its own row).
    rows_out: list[dict[str, Any]] = []
    for m in range(months + 1):
        eps = [e for e in reader.epochs.values() if e["month"] == m]
        month_samples = [s for s in samples if s["month"] == m]
        end = month_samples[-1] if month_samples else None
        sizes = sorted(e["bytes"] for e in eps)
        keys = sorted(e["keys"] for e in eps)
        live = (end or {}).get("live") or {}
        steps = sorted({st for e in eps for st in e["steps"]})
        row: dict[str, Any] = {
            "month": producer.labels[m] if m < months else "drain",
            "produced": producer.produced[m] if m < months else 0,
            "late": producer.late[m] if m < months else 0,
            "previous_month": producer.old[m] if m < months else 0,
            "epochs": len(eps),
            "bytes_per_epoch_p50": _median(sizes), "bytes_per_epoch_max": max(sizes or [0]),
            "keys_per_epoch_p50": _median(keys),
            "discards": sum(e["discards"] for e in eps),
            "bytes_per_epoch_p50_by_step": {
                st: _median([e["steps"].get(st, [0, 0])[1] for e in eps]) for st in steps},
            "rss_mb_end": round(end["rss_kb"] / 1024, 1) if end and end["rss_kb"] else None,
            "live_state_bytes_end": live.get("bytes"), "live_keys_end": live.get("keys"),
            "tombstones_end": live.get("tombstones"), "recovery_db_bytes_end":
                live.get("db_bytes"),
            "live_state_by_step_end": live.get("steps"),
            "stream_lag_end": (end["produced"] - (end["counted"] or 0)) if end else None,
        }
        rows_out.append(row)
    soak["per_month"] = rows_out
    soak["produced_total"] = producer.total
    soak["epochs_read"] = len(reader.epochs)
    soak["epochs_first_read_late"] = reader.late_reads
    soak["busy_skips"] = reader.busy
    soak["samples"] = len(samples)
    rss_all = [s["rss_kb"] for s in samples if s["rss_kb"]]
    soak["rss_mb_max"] = round(max(rss_all) / 1024, 1) if rss_all else None
    soak["processes_measured"] = max((s["procs"] or 0) for s in samples) if samples else None
    if reader.epochs:
        span = sorted(reader.epochs)
        soak["epoch_range"] = [span[0], span[-1]]
        soak["epochs_missing"] = span[-1] - span[0] + 1 - len(span)
    base, last = rows_out[1], rows_out[months - 1]

    def ratio(key: str) -> float | None:
        a, b = base.get(key), last.get(key)
        return round(b / a, 3) if a and b is not None else None

    soak["ratios_last_to_second"] = {
        "bytes_per_epoch_p50": ratio("bytes_per_epoch_p50"), "rss": ratio("rss_mb_end"),
        "live_state_bytes": ratio("live_state_bytes_end"),
        "keys_per_epoch_p50": ratio("keys_per_epoch_p50")}
    if last_metrics is not None:
        soak["stream_counters"] = {k: v for k, v in sorted(last_metrics.items())
                                   if k.startswith(("meterwax_events_total{",
                                                    "meterwax_late_after_close_total",
                                                    "meterwax_internal_errors_total{",
                                                    "meterwax_blank_lines_total"))}
        internal = sum(v for k, v in last_metrics.items()
                       if k.startswith("meterwax_internal_errors_total{"))
        if internal:
            problems.append(f"the stream reported {internal:.0f} INTERNAL_ERROR(s)")
    soak["clickhouse_rows"] = count_rows(local.store.query)
    soak["clickhouse_row_kinds"] = [
        {"row_kind": r["row_kind"], "after_close": bool(r["after_close"]), "rows": int(r["n"]),
         "events": int(r["events"] or 0)}
        for r in local.store.query(
            "SELECT row_kind, after_close, count() AS n, sum(event_count) AS events "
            "FROM meterwax.rated_windows_final GROUP BY row_kind, after_close "
            "ORDER BY row_kind, after_close")]
    if not reader.epochs:
        problems.append("no snapshot epoch was read from the recovery directory")
    return problems


# -- output ---------------------------------------------------------------------------------------


def _fmt_rate(rate: float | None) -> str:
    return f"{rate:>13,.0f}" if rate is not None else f"{'-':>13}"


def _print_rows(rows: list[tuple[str, float | None, float | None, bool]], floor_rate: float
                ) -> None:
    """(measure, events/s, seconds, show % of the floor) as table lines."""
    for name, rate, secs, show_pct in rows:
        pct_txt = (f"{100 * rate / floor_rate:>11.1f}%" if show_pct and rate is not None
                   else f"{'':>12}")
        secs_txt = f"{secs:>10.2f}" if secs is not None else f"{'-':>10}"
        print(f"  {name:<40}{_fmt_rate(rate)}{secs_txt}{pct_txt}")


def print_throughput(args: argparse.Namespace, f: dict[str, Any]) -> None:
    n = f["lines"]
    floor_rate = f["floor_events_per_s"]
    workers = args.workers if args.workers is not None else "default"
    print()
    print(f"meterwax stream bench: {n:,} events, seed {args.seed}, {args.partitions} "
          f"partition(s), workers {workers}, window {args.window or '1m (default)'}, "
          f"ClickHouse via {f.get('clickhouse')}, {os.cpu_count()} CPUs")
    print(f"  {'measure':<40}{'events/s':>13}{'seconds':>10}{'% of floor':>12}")
    rows: list[tuple[str, float | None, float | None, bool]] = [
        ("generate (meterwax.workload)", n / f["generate_s"], f["generate_s"], False),
        ("produce (confluent-kafka)", f["produce_events_per_s"], f["produce_s"], False),
        ("floor (consume + EVENT_DECODER)", floor_rate, f["floor_s"], True),
        ("stream --stop-at-end (wall clock)" if "cluster" not in f
         else "stream --stop-at-end, 1 process (wall)", f.get("stream_events_per_s"),
         f.get("stream_s"), True),
    ]
    if "stream_startup_s" in f:
        rows += [
            ("  start-up (spawn to first counted)", None, f["stream_startup_s"], False),
            ("  reading (first to last counted)", f["stream_reading_events_per_s"],
             f["stream_reading_s"], True),
            ("  shutdown (last counted to exit)", None, f["stream_shutdown_s"], False),
        ]
    _print_rows(rows, floor_rate)
    cl = f.get("cluster") or {}
    if "events_per_s" in cl:
        k = cl["processes"]
        rows = [(f"stream, {k} processes (wall)", cl["events_per_s"],
                 cl["seconds"], True)]
        if "startup_s" in cl:
            rows += [
                ("  start-up (spawn to first counted)", None, cl["startup_s"], False),
                ("  reading (first to last counted)", cl["reading_events_per_s"],
                 cl["reading_s"], True),
                ("  shutdown (last counted to last exit)", None, cl["shutdown_s"], False),
            ]
        _print_rows(rows, floor_rate)
    if "stream_events_per_s" in f:
        print(f"  stream / floor: {100 * f['stream_events_per_s'] / floor_rate:.1f}% (wall "
              "clock, process start-up and shutdown included)")
    if "events_per_s" in cl:
        k = cl["processes"]
        per = f"-w {args.workers}" if args.workers is not None else "default -w"
        print(f"  scale-out, {k} processes / 1 (one cluster, -i/-a, {per} each, "
              f"{args.partitions} partitions): x{cl['scale_out']:.2f} ({cl['vs_floor_pct']:.1f}% "
              f"vs {f['stream_vs_floor_pct']:.1f}% of the floor; {os.cpu_count()} CPUs)")
        print(f"  CPU seconds (user + system): 1 process {f['stream_cpu_s']:.1f}; {k} processes "
              + " + ".join(f"{c:.1f}" for c in cl["cpu_s"]) + f" = {sum(cl['cpu_s']):.1f}")
        print(f"    this bench process meanwhile (its ClickHouse server, metrics polling): "
              f"{f['bench_process_cpu_s']:.1f} and {cl['bench_process_cpu_s']:.1f}; the {k} "
              "processes exited " + ", ".join(f"{x:.2f}" for x in cl["exit_s"])
              + " s after the first spawn")
    rows_ch = f.get("clickhouse_rows")
    if rows_ch:
        exp = f.get("engine_expected")
        check = (f"; engine: {exp['windows']:,} windows / {exp['events']:,} events -> "
                 f"{f['clickhouse_check']}" if exp else
                 f"; {f['clickhouse_check']}" if "clickhouse_check" in f else "")
        print(f"  ClickHouse after exit: {rows_ch['windows']:,} windows holding "
              f"{rows_ch['events']:,} rated events{check}")
    if cl.get("clickhouse_rows"):
        r = cl["clickhouse_rows"]
        print(f"  ClickHouse after the {cl['processes']}-process exit: {r['windows']:,} windows "
              f"holding {r['events']:,} rated events")
    inv = cl.get("invoices")
    if inv:
        k = cl["processes"]
        adj = (f"{inv['adjustments_one_process']:,} / {inv[f'adjustments_{k}_processes']:,} "
               "adjustments")
        if inv["check"] == "identical":
            print(f"  invoices: identical ({inv['one_process']:,} invoices, per-day "
                  f"consumption aside; {adj} by 1 / {k} processes)")
        else:
            print(f"  invoices: DIFFER ({inv['differing_count']:,} of {inv['one_process']:,} / "
                  f"{inv[f'{k}_processes']:,}): {', '.join(inv['differing_ids'][:20])}")
        if inv["net_check"] == "identical":
            print(f"  net amount per (subscription, period, line), invoices and adjustments: "
                  f"identical ({inv['net_lines']:,} lines)")
        else:
            print(f"  net amount per (subscription, period, line): DIFFER for "
                  f"{inv['net_differing_count']:,}: {inv['net_differing'][:5]}")


def print_latency(f: dict[str, Any]) -> None:
    lat = f["latency"]
    w = lat["window_s"]
    print()
    print(f"latency: meterwax stream --window {w}s (a {w}-second window for this phase only: a "
          "window's row can appear only once the watermark passes its end, so the default 1m "
          "would add up to a minute), "
          f"{lat['rate']:,.0f} events/s for {lat['seconds']} s after a {lat['warmup_s']} s "
          f"warm-up; one subject and meter ({LAT_SUBJECT} {LAT_TYPE} -> {LAT_SUBSCRIPTION} "
          f"{LAT_METER}); ClickHouse polled every {lat['poll_ms']} ms "
          f"({lat['polls']} polls, {lat['poll_query_mean_ms']} ms each)")
    print(f"  produced {lat['produced_total']:,} events in all ({lat['produced_rate']:,}/s), "
          f"sampled {lat['event_to_row'].get('samples', 0):,} ({lat['sampled_rate']:,}/s); "
          f"stream up (first row queryable) {lat.get('startup_to_first_row_s')} s after spawn")
    print(f"  {'measure':<40}{'samples':>9}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}"
          f"{'mean ms':>10}")
    for name, key in (("event produced -> window row queryable", "event_to_row"),
                      ("window closed -> row queryable", "close_to_row"),
                      ("window closed -> row inserted_at", "close_to_insert")):
        s = lat[key]
        if not s.get("samples"):
            print(f"  {name:<40}{0:>9}")
            continue
        print(f"  {name:<40}{s['samples']:>9,}{s['p50_ms']:>10,.1f}{s['p99_ms']:>10,.1f}"
              f"{s['max_ms']:>10,.1f}{s['mean_ms']:>10,.1f}")
    print("  event -> row: from each sampled event's produce() call to the end of the first poll "
          "whose row for its window")
    print("    has an event_count >= the event's rank in that window; it includes the wait for "
          f"the window to close (0-{w} s,")
    print(f"    ~{w / 2:g} s on average at a steady rate). window closed -> row: per window, from "
          "producing the first event of")
    print("    the next window (which moves the watermark past its end) to the full row being "
          "queryable: pipeline latency")
    print(f"    alone, overstated by up to one poll interval ({lat['poll_ms']} ms) + query; "
          "-> inserted_at uses ClickHouse's own insert time.")


def _num(value: float | None, fmt: str, width: int) -> str:
    return f"{value:>{width}{fmt}}" if value is not None else f"{'-':>{width}}"


def print_soak(f: dict[str, Any]) -> None:
    soak = f["soak"]
    rows = soak["per_month"]
    print()
    print(f"soak: meterwax stream --window {soak['window']} --dedup-ttl {soak['dedup_ttl']} "
          f"--max-future {soak['max_future']}, {soak['rate']:,.0f} events/s, "
          f"{soak['months']} simulated months from {soak['first_month']} at "
          f"{soak['seconds_per_month']:g} s each; {soak['late_share']:.1%} of events a few "
          f"minutes late, {soak['old_share']:.2%} dated in the closed previous month; sampled "
          f"every {soak['sample_s']:g} s; stream up {soak.get('startup_s')} s after spawn")
    print(f"  {'month':<8}{'produced':>10}{'late':>6}{'prev':>6}{'epochs':>7}"
          f"{'bytes/epoch':>13}{'max':>11}{'keys/ep':>9}{'live KB':>10}{'live keys':>10}"
          f"{'tombst':>7}{'RSS MB':>8}{'lag':>8}")
    for r in rows:
        live_kb = (r["live_state_bytes_end"] / 1024
                   if r["live_state_bytes_end"] is not None else None)
        print(f"  {r['month']:<8}{r['produced']:>10,}{r['late']:>6,}{r['previous_month']:>6,}"
              f"{r['epochs']:>7}{_num(r['bytes_per_epoch_p50'], ',.0f', 13)}"
              f"{r['bytes_per_epoch_max']:>11,}{_num(r['keys_per_epoch_p50'], ',.0f', 9)}"
              f"{_num(live_kb, ',.1f', 10)}{_num(r['live_keys_end'], ',', 10)}"
              f"{_num(r['tombstones_end'], ',', 7)}{_num(r['rss_mb_end'], ',.1f', 8)}"
              f"{_num(r['stream_lag_end'], ',', 8)}")
    ratios = soak["ratios_last_to_second"]
    second, last = rows[1]["month"], rows[soak["months"] - 1]["month"]
    print(f"  {last} / {second} (the first month has no closed period yet): bytes/epoch "
          f"(median) x{ratios['bytes_per_epoch_p50']}, RSS x{ratios['rss']}, live state "
          f"x{ratios['live_state_bytes']}, keys/epoch x{ratios['keys_per_epoch_p50']}")
    steps = sorted(set(rows[1]["bytes_per_epoch_p50_by_step"])
                   | set(rows[soak["months"] - 1]["bytes_per_epoch_p50_by_step"]))
    if steps:
        print(f"  median bytes/epoch by step, {second} -> {last}: " + "; ".join(
            f"{st} {rows[1]['bytes_per_epoch_p50_by_step'].get(st) or 0:,.0f} -> "
            f"{rows[soak['months'] - 1]['bytes_per_epoch_p50_by_step'].get(st) or 0:,.0f}"
            for st in steps))
    ch = soak.get("clickhouse_rows") or {}
    counters = soak.get("stream_counters") or {}
    buckets = ", ".join(f"{k.split('bucket=')[1].strip(chr(34) + '}')} {v:,.0f}"
                        for k, v in counters.items() if "bucket=" in k and v)
    late_after = counters.get("meterwax_late_after_close_total")
    print(f"  produced {soak['produced_total']:,} events; the stream counted: {buckets}; "
          f"late after close {late_after or 0:,.0f}")
    if ch:
        kinds = "; ".join(f"{k['row_kind']}{' after close' if k['after_close'] else ''} "
                          f"{k['rows']:,} rows / {k['events']:,} events"
                          for k in soak.get("clickhouse_row_kinds") or [])
        print(f"  ClickHouse: {ch['windows']:,} rated rows holding {ch['events']:,} events "
              f"({kinds})")
    print(f"  {soak['epochs_read']} snapshot epochs read (range {soak.get('epoch_range')}, "
          f"{soak.get('epochs_missing')} missing, {soak['epochs_first_read_late']} first read "
          f"after a later commit, {soak['busy_skips']} busy skips); peak RSS "
          f"{soak['rss_mb_max']} MB over {soak['processes_measured']} process(es); stream "
          f"stop: {soak.get('stream_stop')}")
    print("  bytes/epoch, keys/ep: per Bytewax epoch, the sum of length(ser_change) and the "
          "rows (keys snapshotted,")
    print("    discards included) over the recovery partitions, for the epochs committed during "
          "that month; live: the newest")
    print("    snapshot of every key at the month's last sample (tombst: discarded keys whose "
          "newest row is NULL); RSS:")
    print("    VmRSS of the stream process and its children then; lag: events produced minus "
          "events the stream counted.")


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=200_000, help="events for the throughput phase")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--partitions", type=int, default=1, help="input topic partitions")
    ap.add_argument("-w", "--workers", type=int, default=None,
                    help="stream workers (default: the command's own); per process with "
                         "--processes")
    ap.add_argument("--processes", type=int, default=1,
                    help="throughput phase: then read the same topic again with this many "
                         "processes of one Bytewax cluster (-i/-a; needs --partitions >= it) "
                         "and compare rates and invoices with the one-process pass")
    ap.add_argument("--window", default=None, help="throughput phase window (default: 1m)")
    ap.add_argument("--clickhouse-path", nargs="?", const="", default=None, metavar="DIR",
                    help="throughput phase: the stream writes to an embedded chDB directory "
                         "(DIR, fresh; default a temp dir) instead of clickhouse-connect")
    ap.add_argument("--compression", default="lz4", help="producer compression.type")
    ap.add_argument("--chunk", type=int, default=2000,
                    help="floor consumer batch (the stream's chunk is 2000)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds for the stream run")
    ap.add_argument("--no-verify", dest="verify", action="store_false",
                    help="skip comparing the ClickHouse rows with the in-process engine")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--latency", action="store_true", help="the latency phase only")
    mode.add_argument("--skip-latency", action="store_true", help="the throughput phase only")
    mode.add_argument("--soak", action="store_true",
                      help="the soak phase only: snapshot bytes and RSS over simulated months")
    ap.add_argument("--rate", type=float, default=2000, help="latency phase: events/s")
    ap.add_argument("--seconds", type=float, default=20, help="latency phase: sampled seconds")
    ap.add_argument("--warmup", type=float, default=3,
                    help="latency phase: seconds produced after the stream is up, not sampled")
    ap.add_argument("--latency-window", type=int, default=1, metavar="SECONDS",
                    help="latency phase window (default 1 s)")
    ap.add_argument("--poll-ms", type=float, default=50, help="latency phase: ClickHouse poll")
    ap.add_argument("--linger-ms", type=float, default=5, help="latency phase: producer linger")
    ap.add_argument("--event-base", default=DEFAULT_EVENT_BASE,
                    help="latency phase: event time of the first event (an instant inside an "
                         "active sub-acme-1 month, away from its end)")
    ap.add_argument("--soak-months", type=int, default=12, help="soak phase: simulated months")
    ap.add_argument("--soak-rate", type=float, default=3000, help="soak phase: events/s")
    ap.add_argument("--soak-seconds-per-month", type=float, default=15, metavar="SECONDS",
                    help="soak phase: wall seconds per simulated month")
    ap.add_argument("--soak-window", default=None, help="soak phase window (default: 1m)")
    ap.add_argument("--dedup-ttl", default="35d",
                    help="soak phase: the stream's --dedup-ttl (its retention horizon)")
    ap.add_argument("--soak-late", type=float, default=0.01,
                    help="soak phase: share of events dated 1-5 simulated minutes late")
    ap.add_argument("--soak-old", type=float, default=0.001,
                    help="soak phase: share of events dated in the previous, closed month")
    ap.add_argument("--soak-sample", type=float, default=1.0, metavar="SECONDS",
                    help="soak phase: RSS and recovery-snapshot sampling interval")
    ap.add_argument("--soak-drain", type=float, default=5, metavar="SECONDS",
                    help="soak phase: seconds sampled after production ends")
    ap.add_argument("--startup-timeout", type=float, default=90)
    ap.add_argument("--drain-timeout", type=float, default=20)
    ap.add_argument("--stop-timeout", type=float, default=15,
                    help="seconds between SIGTERM and SIGKILL when stopping the stream")
    ap.add_argument("--kafka-bootstrap", default=None)
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--meterwax", default=None,
                    help="the meterwax command (default: .venv/bin/meterwax of this repo)")
    ap.add_argument("--keep", action="store_true",
                    help="keep temp dirs, topics and Redis keys")
    args = ap.parse_args(argv)
    if args.size <= 0 or args.partitions <= 0 or args.rate <= 0 or args.seconds <= 0:
        ap.error("--size, --partitions, --rate and --seconds must be positive")
    if args.workers is not None and args.workers <= 0:
        ap.error("--workers must be positive")
    if args.processes <= 0:
        ap.error("--processes must be positive")
    if args.processes > 1:
        if args.partitions < args.processes:
            ap.error(f"--processes {args.processes} needs --partitions >= {args.processes} "
                     "(a process with no partition would have nothing to read)")
        if args.latency or args.soak:
            ap.error("--processes applies to the throughput phase")
        if args.clickhouse_path is not None:
            ap.error("--processes > 1 writes over clickhouse-connect: several processes cannot "
                     "share one embedded chDB directory (--clickhouse-path)")
    if args.latency_window <= 0:
        ap.error("--latency-window must be positive")
    if args.clickhouse_path is not None and (args.latency or args.soak):
        ap.error("--clickhouse-path applies to the throughput phase; --latency and --soak query "
                 "ClickHouse from this process, so it always serves it (ChdbHttpServer)")
    if args.soak_months < 2:
        ap.error("--soak-months must be at least 2 (the ratios compare with the second month)")
    if args.soak_rate <= 0 or args.soak_seconds_per_month <= 0 or args.soak_sample <= 0:
        ap.error("--soak-rate, --soak-seconds-per-month and --soak-sample must be positive")
    if min(args.soak_late, args.soak_old) < 0 or args.soak_late + args.soak_old > 1:
        ap.error("--soak-late and --soak-old are shares between 0 and 1")
    if args.soak_drain < 0:
        ap.error("--soak-drain must not be negative")
    try:
        kafka, redis_url = service_addresses(args.kafka_bootstrap, args.redis_url)
    except BenchFailed as exc:
        print(f"bench_stream: {exc}", file=sys.stderr)
        return 2
    cmd_base = shlex.split(args.meterwax) if args.meterwax else default_meterwax()

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    res = Resources(kafka, redis_url, Path(tempfile.mkdtemp(prefix="meterwax-bench-stream-")),
                    args.keep)
    figures: dict[str, Any] = {
        "bench": "bench_stream", "size": args.size, "seed": args.seed,
        "partitions": args.partitions, "workers": args.workers, "processes": args.processes,
        "window": args.window or "1m",
        "compression": args.compression, "cpus": os.cpu_count()}
    problems: list[str] = []
    status = 0
    def throughput() -> None:
        problems.extend(throughput_phase(args, res, cmd_base, figures))
        print_throughput(args, figures)

    def latency() -> None:
        problems.extend(latency_phase(args, res, cmd_base, figures))
        print_latency(figures)

    def soak() -> None:
        problems.extend(soak_phase(args, res, cmd_base, figures))
        print_soak(figures)

    phases: list[tuple[str, Callable[[], None]]] = []
    if args.soak:
        phases.append(("soak", soak))
    else:
        if not args.latency:
            phases.append(("throughput", throughput))
        if not args.skip_latency:
            phases.append(("latency", latency))
    try:
        for name, run in phases:
            try:
                run()
            except BenchFailed as exc:  # the other phase still runs
                print(f"\n{name.upper()} NOT MEASURED: {exc}", file=sys.stderr)
                figures["status"] = "failed"
                figures.setdefault("errors", {})[name] = str(exc)[-3000:]
                status = 1
    finally:
        for note in res.cleanup():
            print(f"cleanup: {note}", file=sys.stderr)
    if problems:
        status = 1
        for p in problems:
            print(f"PROBLEM: {p}", file=sys.stderr)
        figures["problems"] = problems
    figures.setdefault("status", "ok" if not problems else "problems")
    print(json.dumps(figures, sort_keys=True))
    return status


if __name__ == "__main__":
    sys.exit(main())
