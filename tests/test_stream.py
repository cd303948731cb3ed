"""Stream mode against real services: a Kafka broker, Redis, and ClickHouse over HTTP.

Each test produces a workload into a fresh topic, runs `meterwax stream --stop-at-end` as a real
process (so it can be killed), and compares what landed in Kafka, ClickHouse and Redis with the
sequential engine's outputs for the same events (the engine equals file mode: test_flow.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from test_flow import dirty_lines

from meterwax.workload import generate
from operators.catalog import load_catalog
from operators.engine import EngineResult, run_engine
from operators.erp import build_erp
from operators.ingest import IngestConfig
from operators.reconcile import summarize
from schemas.records import ENCODER

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[1]
CATALOG = str(ROOT / "catalog" / "example.yaml")


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(CATALOG)


@pytest.fixture
def clickhouse(tmp_path: Path) -> Iterator[Any]:
    from sinks.clickhouse.http import ChdbHttpServer

    with ChdbHttpServer(str(tmp_path / "ch")) as server:
        yield server


class StreamRun:
    def __init__(self, kafka: Any, redis: Any, clickhouse: Any, tmp: Path, topic: str) -> None:
        self.kafka, self.redis, self.clickhouse = kafka, redis, clickhouse
        self.topic = topic
        self.prefix = f"out-{uuid.uuid4().hex[:8]}."
        self.recovery = tmp / "recovery"  # output topics are created by the stream itself
        self.extra_env: dict[str, str] = {}

    def env(self, workers: int = 1) -> dict[str, str]:
        return {
            **os.environ,
            "METERWAX_CATALOG": CATALOG,
            "METERWAX_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "METERWAX_INPUT_TOPIC": self.topic,
            "METERWAX_REDIS_URL": self.redis.url,
            "METERWAX_CLICKHOUSE": self.clickhouse.url,
            "METERWAX_RECOVERY_DIR": str(self.recovery),
            "METERWAX_TOPIC_PREFIX": self.prefix,
            "METERWAX_REDIS_NAMESPACE": self.prefix.rstrip("."),
            "METERWAX_WORKERS": str(workers),
            **self.extra_env,
        }

    def start(self, workers: int = 1, *extra: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "meterwax.cli", "stream", "--stop-at-end", *extra],
            cwd=ROOT, env=self.env(workers), stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def run(self, workers: int = 1, timeout: float = 300) -> None:
        proc = self.start(workers)
        _out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err.decode()[-3000:]

    def latest(self, name: str) -> dict[str, Any]:
        """The keyed view of an output topic: the last value per key."""
        view: dict[str, Any] = {}
        for _p, _o, key, value, _h in self.kafka.consume_all(self.prefix + name):
            view[key.decode()] = json.loads(value)
        return view


def engine_view(catalog, lines: list[bytes], config: IngestConfig | None = None
                ) -> tuple[EngineResult, dict[str, Any]]:
    result = run_engine(catalog, lines, config or IngestConfig())
    erp = build_erp(catalog, result.candidates)
    view = {
        "invoice-candidates": {c.invoice_candidate_id: json.loads(ENCODER.encode(c))
                               for c in result.candidates},
        "ar-invoices": {a.ar_invoice_id: json.loads(ENCODER.encode(a)) for a in erp.ar_invoices},
        "revenue-schedules": {s.schedule_id: json.loads(ENCODER.encode(s))
                              for s in erp.schedules},
        "invoice-exceptions": {e.invoice_candidate_id: json.loads(ENCODER.encode(e))
                               for e in erp.exceptions},
        "journals": {j.journal_id: json.loads(ENCODER.encode(j)) for j in erp.journals},
    }
    return result, view


def rated_rows(clickhouse: Any) -> dict[str, tuple[Any, ...]]:
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=clickhouse.url, compress=False)
    rows = client.query(
        "SELECT row_id, revision, event_count, toString(window_quantity), "
        "toString(amount_delta), toString(cumulative_amount) FROM meterwax.rated_windows FINAL"
    ).result_rows
    return {r[0]: tuple(r[1:]) for r in rows}


def expected_rows(result: EngineResult) -> dict[str, tuple[Any, ...]]:
    final: dict[str, Any] = {}
    for w in result.windows:
        if w.row_id not in final or w.revision > final[w.row_id].revision:
            final[w.row_id] = w
    return {k: (w.revision, w.event_count, _dec(w.window_quantity), _dec(w.amount_delta),
                _dec(w.cumulative_amount)) for k, w in final.items()}


def _dec(d: Decimal) -> str:
    text = format(d.normalize(), "f")
    return text


def _norm_rows(rows: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    return {k: (v[0], v[1], _dec(Decimal(v[2])), _dec(Decimal(v[3])), _dec(Decimal(v[4])))
            for k, v in rows.items()}


def test_kafka_path_gives_exactly_what_file_mode_gives(catalog, kafka_service, redis_service,
                                                       clickhouse, tmp_path) -> None:
    lines = dirty_lines() + list(generate(catalog, 3000, seed=11))
    topic = kafka_service.new_topic("usage", partitions=1)
    kafka_service.produce(topic, lines)
    run = StreamRun(kafka_service, redis_service, clickhouse, tmp_path, topic)
    run.run()
    result, expected = engine_view(catalog, lines)
    for name, view in expected.items():
        assert run.latest(name) == view, name
    dead = kafka_service.consume_all(run.prefix + "dead-letter")
    assert len(dead) == len(result.exceptions)
    by_offset = {int(dict(h)["meterwax.source.offset"]): (v, dict(h)) for _p, _o, _k, v, h in dead}
    for exc in result.exceptions:
        value, headers = by_offset[exc.position["line"] - 1]  # file lines are 1-based
        assert headers["meterwax.reason"] == exc.reason.encode()
        assert value == (exc.raw.encode() if exc.raw is not None else value)
    assert _norm_rows(rated_rows(clickhouse)) == expected_rows(result)
    assert ledger_rows(clickhouse) == (result.stats.rated, result.stats.rated)


def ledger_rows(clickhouse: Any) -> tuple[int, int]:
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=clickhouse.url, compress=False)
    final, distinct = client.query(
        "SELECT count(), uniqExact(event_source, event_id) FROM meterwax.usage_events FINAL"
    ).result_rows[0]
    return int(final), int(distinct)


def _assert_outputs_equal(run: StreamRun, clickhouse: Any, result: EngineResult,
                          expected: dict[str, Any]) -> None:
    # the ledger holds every accepted event once, replays collapsed
    assert ledger_rows(clickhouse) == (result.stats.rated, result.stats.rated)
    for name, view in expected.items():
        got = run.latest(name)
        differing = sorted(k for k in set(got) | set(view) if got.get(k) != view.get(k))
        assert not differing, (name, [(k, got.get(k), view.get(k)) for k in differing[:2]])
    assert _norm_rows(rated_rows(clickhouse)) == expected_rows(result)


def _running_charges_match(run: StreamRun, catalog, result: EngineResult) -> None:
    from sinks.running_charges import RunningCharges

    charges = RunningCharges(run.redis.url, namespace=run.prefix.rstrip("."))
    final = summarize(result.windows)
    for (sub_id, period, meter), summary in final.items():
        customer = catalog.subscriptions[sub_id].customer_id
        got = charges.read(customer, period)
        usage = got["subscriptions"][sub_id]["usage"][meter]
        assert Decimal(usage["amount"]) == summary.cumulative_amount, (sub_id, period, meter)
        assert Decimal(usage["quantity"]) == summary.cumulative_quantity


def _has_output(run: StreamRun, name: str) -> bool:
    try:
        return bool(run.kafka.consume_all(run.prefix + name, timeout=1, idle=0.2))
    except TimeoutError:  # records are arriving faster than a 1 s read drains them
        return True
    except RuntimeError:  # the stream has not created its topics yet
        return False


def kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], pause: float = 0.2,
              settle: float = 0.0) -> None:
    """SIGKILL the running stream once `ready()`, failing if it ended or took over 120 s."""
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(pause)
    time.sleep(settle)
    assert proc.poll() is None, "the run finished before it could be killed: use more events"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_killed_mid_stream_and_restarted_loses_and_doubles_nothing(
        catalog, kafka_service, redis_service, clickhouse, tmp_path) -> None:
    lines = dirty_lines() + list(generate(catalog, 90_000, seed=5))
    topic = kafka_service.new_topic("usage", partitions=1)
    kafka_service.produce(topic, lines)
    run = StreamRun(kafka_service, redis_service, clickhouse, tmp_path, topic)
    # wait until the first epochs have committed output, then kill without warning
    kill_when(run.start(), lambda: _has_output(run, "dead-letter"), pause=0.5, settle=1.0)
    run.run()  # resumes from the recovery store and reads to the end
    result, expected = engine_view(catalog, lines)
    _assert_outputs_equal(run, clickhouse, result, expected)
    _running_charges_match(run, catalog, result)


def test_killed_across_period_retirements_loses_and_doubles_nothing(
        catalog, kafka_service, redis_service, clickhouse, tmp_path) -> None:
    """A one-day horizon retires October on 2 November, while the workload still sends October
    usage: the resumed run must retire at the same input positions, refuse the same events as
    LATE_BEYOND_RETENTION, and drop the retired months' journals with the same final values."""
    lines = list(generate(catalog, 90_000, seed=5))
    horizon = timedelta(days=1)
    topic = kafka_service.new_topic("usage", partitions=1)
    kafka_service.produce(topic, lines)
    run = StreamRun(kafka_service, redis_service, clickhouse, tmp_path, topic)
    run.extra_env = {"METERWAX_DEDUP_TTL": "1d"}
    # October closed: its retirement is next
    kill_when(run.start(), lambda: _has_output(run, "invoice-candidates"))
    run.run()
    result, expected = engine_view(catalog, lines, IngestConfig(retention=horizon))
    late = [e for e in result.exceptions if e.reason == "LATE_BEYOND_RETENTION"]
    assert late, "the workload must send usage past the horizon"
    _assert_outputs_equal(run, clickhouse, result, expected)
    dead = run.kafka.consume_all(run.prefix + "dead-letter")
    refused = {int(dict(h)["meterwax.source.offset"]) for _p, _o, _k, _v, h in dead
               if dict(h)["meterwax.reason"] == b"LATE_BEYOND_RETENTION"}
    assert refused == {e.position["line"] - 1 for e in late}  # file lines are 1-based


def test_redis_restarted_mid_run(catalog, kafka_service, redis_service, clickhouse,
                                 tmp_path) -> None:
    lines = dirty_lines() + list(generate(catalog, 40_000, seed=9))
    topic = kafka_service.new_topic("usage", partitions=1)
    kafka_service.produce(topic, lines)
    run = StreamRun(kafka_service, redis_service, clickhouse, tmp_path, topic)
    proc = run.start()
    time.sleep(4)
    redis_service.restart(keep_data=True)  # production Redis persists (AOF): see README
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]
    result, expected = engine_view(catalog, lines)
    _assert_outputs_equal(run, clickhouse, result, expected)


@pytest.mark.parametrize("mode", ["2-workers", "2-processes"])
def test_scale_out_gives_the_same_results(catalog, kafka_service, redis_service, clickhouse,
                                          tmp_path, mode) -> None:
    lines = dirty_lines() + list(generate(catalog, 4000, seed=3))
    topic = kafka_service.new_topic("usage", partitions=1)
    kafka_service.produce(topic, lines)
    run = StreamRun(kafka_service, redis_service, clickhouse, tmp_path, topic)
    if mode == "2-workers":
        run.run(workers=2)
    else:
        import socket

        ports = []
        for _ in range(2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        addresses = [arg for p in ports for arg in ("-a", f"127.0.0.1:{p}")]
        procs = [run.start(1, "-i", str(i), *addresses) for i in range(2)]
        for proc in procs:
            _out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err.decode()[-3000:]
    result, expected = engine_view(catalog, lines)
    _assert_outputs_equal(run, clickhouse, result, expected)


def test_three_partitions_reconcile_to_the_same_totals(catalog, kafka_service, redis_service,
                                                       clickhouse, tmp_path) -> None:
    """With several partitions each has its own watermark, so which late events become
    adjustments depends on timing (README, known limits). What must not depend on it: every
    event in one bucket, and each period's net invoiced amount per line. Messages are keyed by
    event identity, as the README recommends: copies of one event share a partition, so "the
    first occurrence" is well defined (across partitions there is no input order)."""
    lines = dirty_lines() + list(generate(catalog, 6000, seed=21))
    topic = kafka_service.new_topic("usage", partitions=3)
    keys = []
    for line in lines:
        try:
            event = json.loads(line)
            keys.append(f"{event.get('source')}/{event.get('id')}")
        except (ValueError, AttributeError):
            keys.append("")
    kafka_service.produce(topic, lines, keys=[k.encode() for k in keys])
    run = StreamRun(kafka_service, redis_service, clickhouse, tmp_path, topic)
    run.run(workers=2)
    result, _ = engine_view(catalog, lines)

    def net(candidates: list[Any]) -> dict[tuple[str, str, str], Decimal]:
        out: dict[tuple[str, str, str], Decimal] = {}
        for c in candidates:
            for line in c["lines"]:
                key = (c["subscription_id"], c["billing_period"],
                       line["line_id"].split(":", 2)[2].split(":", 1)[-1]
                       if c["adjusts"] else line["line_id"].split(":", 2)[2])
                out[key] = out.get(key, Decimal(0)) + Decimal(line["amount"])
        return {k: v for k, v in out.items() if v}

    got = net(list(run.latest("invoice-candidates").values()))
    want = net([json.loads(ENCODER.encode(c)) for c in result.candidates])
    assert got == want
    dead = kafka_service.consume_all(run.prefix + "dead-letter")
    assert len(dead) == len(result.exceptions)
    assert ledger_rows(clickhouse) == (result.stats.rated, result.stats.rated)
