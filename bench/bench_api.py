"""Benchmark: the charges endpoint under 50 concurrent clients, against a bare Redis read from
the same client machinery, in one run.

    .venv/bin/python bench/bench_api.py [--clients 50] [--seconds 10] [--backend folder|stream|both]

What it does:
  1. `meterwax demo --size 20000` into a temporary folder (the data both back ends serve);
  2. folder back end: `meterwax api --out DIR` as its own process;
  3. stream back end (needs METERWAX_REDIS_URL and METERWAX_KAFKA_BOOTSTRAP, e.g.
     `eval "$(scripts/services.sh env)"`): the demo's rated windows applied to Redis by the
     running-charges sink, its catalog published to a fresh contracts topic, and
     `meterwax api --redis-url ... --clickhouse <the demo's chDB> --kafka-bootstrap ...`;
  4. each back end: `--clients` asyncio connections with HTTP/1.1 keep-alive, each sending
     `GET /v1/customers/<c>/charges` back to back for `--seconds` (customers round-robin, one
     finance token per client so no client hits the per-token rate limit);
  5. floors: the same number of asyncio clients doing the one HGETALL the stream back end does
     per request, on the same hash, for the same time; and the same HTTP clients against a bare
     ASGI app under the same uvicorn answering a fixed body (bench/asgi_floor.py): what the
     server and client machinery cost on this machine before meterwax does anything.

Prints requests/s, p50 and p99 per back end next to the floor, and last one JSON line with every
figure. A benchmark, not a test: nothing here asserts a speed. The clients share the machine
with the server: on 2 cores they take part of the CPU the server would otherwise have.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import socket
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

from operators.tokens import new_token, parse_scope  # noqa: E402

CUSTOMERS = ("acme", "globex", "initech", "hooli", "tyrell", "umbrella")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def drive_http(port: int, tokens: list[str], customers: list[str], seconds: float
                     ) -> tuple[int, list[float], dict[int, int]]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stop = time.perf_counter() + seconds

    async def client(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = n
        try:
            while time.perf_counter() < stop:
                customer = customers[i % len(customers)]
                i += 1
                request = (f"GET /v1/customers/{customer}/charges HTTP/1.1\r\n"
                           f"Host: 127.0.0.1\r\nAuthorization: Bearer {tokens[n]}\r\n\r\n")
                t0 = time.perf_counter()
                writer.write(request.encode())
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                found = re.search(rb"(?i)content-length:\s*(\d+)", head)
                assert found is not None, head
                await reader.readexactly(int(found.group(1)))
                latencies.append(time.perf_counter() - t0)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(client(n) for n in range(len(tokens))))
    return len(latencies), latencies, statuses


async def drive_redis(url: str, key: str, clients: int, seconds: float
                      ) -> tuple[int, list[float]]:
    import redis.asyncio as aredis

    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client() -> None:
        r = aredis.Redis.from_url(url)
        try:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                await r.hgetall(key)
                latencies.append(time.perf_counter() - t0)
        finally:
            await r.aclose()

    await asyncio.gather(*(client() for _ in range(clients)))
    return len(latencies), latencies


def start_api(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "meterwax.cli", "api", "--port", str(port),
                             "--rate-limit", "100000", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "serving" not in line:
        msg = f"meterwax api did not start: {line}{proc.stderr.read() if proc.stderr else ''}"
        raise SystemExit(msg)
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    return proc, port


def measure(name: str, proc_port: tuple[subprocess.Popen[str], int], tokens: list[str],
            seconds: float) -> dict[str, Any]:
    proc, port = proc_port
    try:
        asyncio.run(drive_http(port, tokens, list(CUSTOMERS), 1.0))  # warm up
        n, lat, statuses = asyncio.run(drive_http(port, tokens, list(CUSTOMERS), seconds))
    finally:
        proc.terminate()
        proc.wait(30)
    return {"backend": name, "requests": n, "rps": round(n / seconds),
            "p50_ms": round(percentile(lat, 0.5) * 1000, 2),
            "p99_ms": round(percentile(lat, 0.99) * 1000, 2), "statuses": statuses}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--backend", choices=("folder", "stream", "both"), default="both")
    parser.add_argument("--stream-workers", type=int, default=2,
                        help="API processes for the stream back end (a folder takes one)")
    opts = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        subprocess.run([sys.executable, "-m", "meterwax.cli", "demo", "--size", "20000",
                        "--out", str(out)], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        now = datetime.now(UTC)

        def tokens_into(store: Any) -> list[str]:
            made = []
            for _ in range(opts.clients):
                text, record = new_token(parse_scope("finance"), now, secrets.token_bytes(40))
                store.add(record)
                made.append(text)
            return made

        floor: dict[str, Any] | None = None
        if opts.backend in ("folder", "both"):
            from sinks.tokens import FileTokenStore

            tokens = tokens_into(FileTokenStore(out))
            results.append(measure("folder", start_api(["--out", str(out)], env), tokens,
                                   opts.seconds))
        redis_url = os.environ.get("METERWAX_REDIS_URL")
        bootstrap = os.environ.get("METERWAX_KAFKA_BOOTSTRAP")
        if opts.backend in ("stream", "both") and redis_url and bootstrap:
            ns = f"bench-{uuid.uuid4().hex[:8]}"
            prefix = f"{ns}."
            load_stream(out, redis_url, ns)
            subprocess.run([sys.executable, "-m", "meterwax.cli", "contracts", "publish",
                            str(out / "catalog.yaml"), "--kafka-bootstrap", bootstrap,
                            "--topic-prefix", prefix], cwd=ROOT, env=env, check=True,
                           stdout=subprocess.DEVNULL)
            from sinks.tokens import RedisTokenStore

            tokens = tokens_into(RedisTokenStore(redis_url, ns))
            # ClickHouse over HTTP, as a deployment has it (the demo's store, served read-only).
            ch = subprocess.Popen([sys.executable, "-m", "meterwax.cli", "serve-clickhouse",
                                   "--path", str(out), "--port", "0"], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, text=True)
            try:
                assert ch.stdout is not None
                ch_url = re.search(r"(http://\S+)", ch.stdout.readline())
                assert ch_url, "serve-clickhouse did not start"
                api = start_api(["--redis-url", redis_url, "--clickhouse", ch_url.group(1),
                                 "--kafka-bootstrap", bootstrap, "--topic-prefix", prefix,
                                 "--redis-namespace", ns, "-w", str(opts.stream_workers)], env)
                results.append(measure(f"stream (-w {opts.stream_workers})", api, tokens,
                                       opts.seconds))
            finally:
                ch.terminate()
                ch.wait(30)
            period = datetime.now(UTC).strftime("%Y-%m")
            key = f"{ns}:charges:acme:{period}"
            n, lat = asyncio.run(drive_redis(redis_url, key, opts.clients, opts.seconds))
            floor = {"backend": "floor: bare Redis HGETALL", "requests": n,
                     "rps": round(n / opts.seconds),
                     "p50_ms": round(percentile(lat, 0.5) * 1000, 3),
                     "p99_ms": round(percentile(lat, 0.99) * 1000, 3)}
        elif opts.backend in ("stream", "both"):
            print("stream back end skipped: set METERWAX_REDIS_URL and METERWAX_KAFKA_BOOTSTRAP "
                  '(eval "$(scripts/services.sh env)")', file=sys.stderr)
    port = free_port()
    bare = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.asgi_floor:app", "--port",
                             str(port), "--log-level", "warning", "--no-access-log"],
                            cwd=ROOT, env=env, text=True)
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    http_floor = measure("floor: bare ASGI app", (bare, port), ["-"] * opts.clients,
                         opts.seconds)
    print(f"{opts.clients} clients, {opts.seconds:g} s each, GET /v1/customers/<c>/charges")
    print(f"{'back end':28} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'% of Redis floor':>17}")
    for r in [*results, http_floor, *([floor] if floor else [])]:
        share = f"{100 * r['rps'] / floor['rps']:.1f}%" if floor else "-"
        print(f"{r['backend']:28} {r['rps']:>8} {r['p50_ms']:>8} {r['p99_ms']:>8} {share:>17}")
    print(json.dumps({"clients": opts.clients, "seconds": opts.seconds, "results": results,
                      "floor": floor, "http_floor": http_floor}))
    return 0


def load_stream(out: Path, redis_url: str, namespace: str) -> None:
    """The demo's rated windows, applied by the stream's own running-charges sink, re-dated
    into the current month so the default period has figures (the stream's current period is
    the wall clock's)."""
    from datetime import timedelta

    import msgspec

    from operators.catalog import load_catalog
    from operators.periods import Month
    from schemas.records import RatedWindow
    from sinks.clickhouse import ChdbStore
    from sinks.running_charges import RunningCharges

    catalog = load_catalog(str(out / "catalog.yaml"))
    with ChdbStore(str(out / "clickhouse")) as store:
        rows = store.query("SELECT * EXCEPT inserted_at FROM meterwax.rated_windows_final "
                           "WHERE period = '2026-11'")
    this = Month.of(datetime.now(UTC))
    shift = this.start - Month(2026, 11).start
    windows = []
    for r in rows:
        r["period"] = str(this)
        r["window_start"] = r["window_start"] + shift
        r["window_end"] = r["window_end"] + shift
        windows.append(msgspec.convert(r, RatedWindow))
    if shift < timedelta(0):
        return
    charges = RunningCharges(redis_url, namespace)
    # Subscriptions must be active this month for the fee accrual: the example catalog's are
    # open-ended or end in the past; those that ended accrue nothing, which is what they owe.
    charges.apply([w for w in windows if w.subscription_id in catalog.subscriptions], catalog)
    charges.close()


if __name__ == "__main__":
    sys.exit(main())
