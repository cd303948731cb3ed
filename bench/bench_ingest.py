"""Benchmark: POST /v1/events into Kafka under 50 concurrent producers, single events and
batches, against a bare confluent-kafka producer on the same machine, in one run.

    eval "$(scripts/services.sh env)"
    .venv/bin/python bench/bench_ingest.py [--clients 50] [--seconds 10] [--batch 100]

What it does:
  1. the floor: one bare confluent-kafka producer (idempotent, lz4, linger 5 ms, the
     endpoint's own settings) writing the same event bytes to a fresh topic as fast as it can,
     flushed: what Kafka and librdkafka take per event here before any HTTP;
  2. `meterwax api` as its own process over a stream deployment (Redis for the tokens, an
     embedded chDB served over ClickHouse's HTTP interface, the real broker), input topic a
     fresh one;
  3. `--clients` asyncio connections with HTTP/1.1 keep-alive, one producer token each,
     sending back to back for `--seconds`: first one structured event a request
     (application/cloudevents+json), then `--batch` events a request
     (application/cloudevents-batch+json). Every request is answered only after Kafka
     acknowledged its events, so the latency is the acknowledged request's;
  4. afterwards the input topic is read back: the number of messages must equal the events
     the endpoint answered as accepted (nothing lost, nothing invented).

Prints events/s and requests/s, p50 and p99 per mode next to the floor, and last one JSON line
with every figure. A benchmark, not a test. The clients share the 2 cores with the server and
the broker: on this machine they take part of the CPU the server would otherwise have.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_api import free_port, percentile  # noqa: E402
from operators.tokens import new_token, parse_scope  # noqa: E402

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"


def event(n: int, client: int) -> bytes:
    return (b'{"specversion":"1.0","id":"bench-%d-%d","source":"bench/ingest",'
            b'"type":"api.request","subject":"acme-prod","time":"2026-10-01T12:00:00Z",'
            b'"data":{"path":"/v1/x","units":3}}' % (client, n))


def floor(bootstrap: str, topic: str, count: int) -> dict[str, Any]:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "linger.ms": 5, "compression.type": "lz4",
                         "queue.buffering.max.messages": 100_000})
    values = [event(n, 0) for n in range(count)]
    t0 = time.perf_counter()
    for n, value in enumerate(values):
        key = b"bench/ingest/bench-0-%d" % n
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.01)
        if n % 1000 == 999:
            producer.poll(0)  # serve delivery reports without paying a call per message
    left = producer.flush(60)
    seconds = time.perf_counter() - t0
    assert left == 0, f"{left} messages not delivered"
    return {"events": count, "seconds": round(seconds, 3), "events_per_s": round(count / seconds)}


async def drive(port: int, tokens: list[str], seconds: float, batch: int
                ) -> tuple[int, int, list[float], dict[int, int]]:
    """(requests, events accepted, latencies, statuses)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    accepted = 0
    stop = time.perf_counter() + seconds

    async def client(c: int) -> None:
        nonlocal accepted
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = 0
        try:
            while time.perf_counter() < stop:
                if batch == 1:
                    body, kind = event(n, c), STRUCTURED
                else:
                    body = b"[" + b",".join(event(n + k, c) for k in range(batch)) + b"]"
                    kind = BATCH
                n += batch
                head_out = (f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            f"Authorization: Bearer {tokens[c]}\r\nContent-Type: {kind}\r\n"
                            f"Content-Length: {len(body)}\r\n\r\n").encode()
                t0 = time.perf_counter()
                writer.write(head_out + body)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                found = re.search(rb"(?i)content-length:\s*(\d+)", head)
                assert found is not None, head
                answer = await reader.readexactly(int(found.group(1)))
                latencies.append(time.perf_counter() - t0)
                statuses[status] = statuses.get(status, 0) + 1
                if status in (200, 202, 503):
                    accepted += int(json.loads(answer).get("accepted", 0))
        finally:
            writer.close()

    await asyncio.gather(*(client(c) for c in range(len(tokens))))
    return len(latencies), accepted, latencies, statuses


def count_messages(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4()}"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def create_topic(bootstrap: str, name: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, 1, 1)])[name].result(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=100, help="events a batched request")
    parser.add_argument("--floor-events", type=int, default=200_000)
    # The events of one client never repeat within a mode (ids bench-<client>-<n>).
    args = parser.parse_args()
    bootstrap = os.environ.get("METERWAX_KAFKA_BOOTSTRAP")
    redis_url = os.environ.get("METERWAX_REDIS_URL")
    if not bootstrap or not redis_url:
        msg = ('needs METERWAX_KAFKA_BOOTSTRAP and METERWAX_REDIS_URL: eval "$(scripts/'
               'services.sh env)"')
        raise SystemExit(msg)
    from sinks.clickhouse.http import ChdbHttpServer
    from sinks.tokens import RedisTokenStore

    run = uuid.uuid4().hex[:8]
    floor_topic, api_topics = f"bench-ingest-floor-{run}", {}
    create_topic(bootstrap, floor_topic)
    result: dict[str, Any] = {"bench": "bench_ingest", "clients": args.clients,
                              "seconds": args.seconds, "batch": args.batch,
                              "cpus": os.cpu_count()}
    result["floor"] = floor(bootstrap, floor_topic, args.floor_events)
    namespace = f"bench-ingest-{run}"
    store = RedisTokenStore(redis_url, namespace)
    now = datetime.now(UTC)
    tokens = []
    for _ in range(args.clients):
        text, record = new_token(parse_scope("producer"), now, secrets.token_bytes(40))
        store.add(record)
        tokens.append(text)
    with tempfile.TemporaryDirectory() as tmp, ChdbHttpServer(str(Path(tmp) / "ch")) as ch:
        for mode, batch in (("single", 1), ("batched", args.batch)):
            topic = api_topics[mode] = f"bench-ingest-{mode}-{run}"
            create_topic(bootstrap, topic)
            port = free_port()
            env = {**os.environ, "METERWAX_INPUT_TOPIC": topic, "METERWAX_CLICKHOUSE": ch.url,
                   "METERWAX_REDIS_NAMESPACE": namespace,
                   "METERWAX_TOPIC_PREFIX": f"{namespace}."}
            log = Path(tmp) / f"api-{mode}.log"
            proc = subprocess.Popen(
                [sys.executable, "-m", "meterwax.cli", "api", "--port", str(port),
                 "--ingest-rate-limit", "1000000"], cwd=ROOT, env=env,
                stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
            try:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if "serving" not in line:
                    msg = f"meterwax api did not start: {line}"
                    raise SystemExit(msg)
                time.sleep(1.0)
                warm = asyncio.run(drive(port, tokens, 1.0, batch))[1]  # written too
                requests, accepted, lat, statuses = asyncio.run(
                    drive(port, tokens, args.seconds, batch))
            finally:
                proc.terminate()
                proc.wait(30)
            written = count_messages(bootstrap, topic)
            if any(code >= 500 and code != 503 for code in statuses):
                print(f"server errors in {mode} mode; the server's log ends:\n"
                      f"{log.read_text()[-3000:]}", file=sys.stderr)
            result[mode] = {
                "requests": requests, "requests_per_s": round(requests / args.seconds),
                "events_accepted": accepted,
                "events_per_s": round(accepted / args.seconds),
                "p50_ms": round(percentile(lat, 0.5) * 1000, 2),
                "p99_ms": round(percentile(lat, 0.99) * 1000, 2), "statuses": statuses,
                "topic_messages": written, "accepted_incl_warmup": warm + accepted,
                "nothing_lost_or_invented": written == warm + accepted,
                "vs_floor_pct": round(100 * accepted / args.seconds
                                      / result["floor"]["events_per_s"], 1)}
    f = result["floor"]
    print(f"meterwax bench_ingest: {args.clients} clients, {args.seconds:g} s each mode, "
          f"{os.cpu_count()} CPUs")
    print(f"  {'measure':44} {'events/s':>10} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8}"
          f" {'% of floor':>10}")
    print(f"  {'floor: bare confluent-kafka producer':44} {f['events_per_s']:>10,} "
          f"{'-':>11} {'-':>8} {'-':>8} {100.0:>9.1f}%")
    for mode, label in (("single", "POST /v1/events, 1 event a request"),
                        ("batched", f"POST /v1/events, {args.batch} events a request")):
        m = result[mode]
        print(f"  {label:44} {m['events_per_s']:>10,} {m['requests_per_s']:>11,} "
              f"{m['p50_ms']:>8} {m['p99_ms']:>8} {m['vs_floor_pct']:>9.1f}%")
        check = "equal" if m["nothing_lost_or_invented"] else "DIFFERENT"
        print(f"    statuses {m['statuses']}; topic holds {m['topic_messages']:,} messages, "
              f"accepted (warm-up included) {m['accepted_incl_warmup']:,}: {check}")
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
