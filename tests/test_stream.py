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
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from test_flow import dirty_lines

from meterwax.compare import invoices as compare_invoices
from meterwax.compare import net_by_line
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

    def env(self, workers: int = 1, recovery: Path | None = None) -> dict[str, str]:
        return {
            **os.environ,
            "METERWAX_CATALOG": CATALOG,
            "METERWAX_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "METERWAX_INPUT_TOPIC": self.topic,
            "METERWAX_REDIS_URL": self.redis.url,
            "METERWAX_CLICKHOUSE": self.clickhouse.url,
            "METERWAX_RECOVERY_DIR": str(recovery or self.recovery),
            "METERWAX_TOPIC_PREFIX": self.prefix,
            "METERWAX_REDIS_NAMESPACE": self.prefix.rstrip("."),
            "METERWAX_WORKERS": str(workers),
            **self.extra_env,
        }

    def start(self, workers: int = 1, *extra: str, recovery: Path | None = None,
              stop_at_end: bool = True) -> subprocess.Popen[bytes]:
        """`stop_at_end=False`: a live stream, which only a signal stops (a test that must kill
        it mid-stream cannot then lose the race to its end)."""
        bounded = ["--stop-at-end"] if stop_at_end else []
        return subprocess.Popen(
            [sys.executable, "-m", "meterwax.cli", "stream", *bounded, *extra],
            cwd=ROOT, env=self.env(workers, recovery), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)

    def start_cluster(self, processes: int, recoveries: list[Path] | None = None
                      ) -> list[subprocess.Popen[bytes]]:
        """`processes` processes of one Bytewax cluster (-i/-a), each with its own recovery
        folder when `recoveries` are given (as each pod of the StatefulSet has its volume)."""
        addresses = [arg for p in _free_ports(processes) for arg in ("-a", f"127.0.0.1:{p}")]
        return [self.start(1, "-i", str(i), *addresses,
                           recovery=recoveries[i] if recoveries else None)
                for i in range(processes)]

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


def _ledger_started(clickhouse: Any) -> bool:
    """The stream has stored accepted events (False before it has created its tables)."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    try:
        return ledger_rows(clickhouse)[0] > 0
    except DatabaseError:
        return False


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
    # Enough events that the kill lands mid-stream with a margin (90,000 once finished first).
    lines = dirty_lines() + list(generate(catalog, 150_000, seed=5))
    topic = kafka_service.new_topic("usage", partitions=1)
    kafka_service.produce(topic, lines)
    run = StreamRun(kafka_service, redis_service, clickhouse, tmp_path, topic)
    # Wait until the first epochs have stored output, then kill without warning. Asked of
    # ClickHouse (one HTTP query), not of the dead-letter topic: a consumer joining a broker that
    # holds the whole suite's topics can take seconds per look, which the stream outran.
    kill_when(run.start(), lambda: _ledger_started(clickhouse), pause=0.2, settle=1.0)
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
        procs = run.start_cluster(2)
        for proc in procs:
            _out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err.decode()[-3000:]
    result, expected = engine_view(catalog, lines)
    _assert_outputs_equal(run, clickhouse, result, expected)


def _free_ports(n: int) -> list[int]:
    import socket

    ports = []
    for _ in range(n):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    return ports


def _identity_keys(lines: list[bytes]) -> list[bytes]:
    """Each line's Kafka key as the README asks producers to set it: `source/id`."""
    keys = []
    for line in lines:
        try:
            event = json.loads(line)
            keys.append(f"{event.get('source')}/{event.get('id')}".encode())
        except (ValueError, AttributeError):
            keys.append(b"")
    return keys


DOCUMENTS = ("invoice-candidates", "ar-invoices", "revenue-schedules", "invoice-exceptions",
             "journals")


def test_two_processes_over_two_partitions_killed_and_resumed_issue_one_process_invoices(
        catalog, kafka_service, redis_service, clickhouse, tmp_path) -> None:
    """The StatefulSet's layout (k8s/statefulset.yaml): two processes of one cluster, each
    with its own recovery folder, over a topic of two partitions; both SIGKILLed mid-stream and
    started again. Every invoice is exactly the one a single process reading the same topic
    issues: periods close on the minimum of the partitions' watermarks and usage late for its
    own partition waits for the close (operators/protocol.py), so neither process's speed
    decides what an invoice holds. The money over invoices and adjustments is file mode's.
    (How late usage groups into adjustments, and a tiered charge's split over days, still
    follow arrival order: README, known limits.)"""
    lines = dirty_lines() + list(generate(catalog, 150_000, seed=5))
    topic = kafka_service.new_topic("usage", partitions=2)
    kafka_service.produce(topic, lines, keys=_identity_keys(lines))
    one = StreamRun(kafka_service, redis_service, clickhouse, tmp_path / "one", topic)
    one.run()
    two = StreamRun(kafka_service, redis_service, clickhouse, tmp_path / "two", topic)
    recoveries = [tmp_path / "two" / f"recovery-{i}" for i in range(2)]
    procs = two.start_cluster(2, recoveries)
    # October invoiced (closed on both partitions), the rest of the input still ahead
    kill_when(procs[0], lambda: _has_output(two, "invoice-candidates"), pause=0.1)
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    assert [sorted(p.name for p in r.glob("part-*.sqlite3")) for r in recoveries] == [
        ["part-0.sqlite3"], ["part-1.sqlite3"]]
    for proc in two.start_cluster(2, recoveries):
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
    got, want = compare_invoices(two.latest("invoice-candidates")), compare_invoices(
        one.latest("invoice-candidates"))
    differing = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    assert not differing, [(k, got.get(k), want.get(k)) for k in differing[:2]]
    result, _ = engine_view(catalog, lines)
    assert set(want) == {c.invoice_candidate_id for c in result.candidates if c.adjusts is None}
    file_mode = net_by_line([json.loads(ENCODER.encode(c)) for c in result.candidates])
    assert net_by_line(list(two.latest("invoice-candidates").values())) == file_mode
    assert net_by_line(list(one.latest("invoice-candidates").values())) == file_mode
    assert ledger_rows(clickhouse) == (result.stats.rated, result.stats.rated)


def test_an_idle_partition_stops_holding_back_the_close(catalog, kafka_service, redis_service,
                                                        clickhouse, tmp_path) -> None:
    """A live stream over two partitions, one of which never receives anything: once it has
    been silent for --idle-timeout, October closes on the other partition's watermark alone.
    (Without the timeout it would wait for that partition forever.)"""
    lines = [line for line in generate(catalog, 3000, seed=4)
             if b'"2026-11-0' in line or b'"2026-10-' in line]
    topic = kafka_service.new_topic("usage", partitions=2)
    kafka_service.produce(topic, lines, partition=0)
    run = StreamRun(kafka_service, redis_service, clickhouse, tmp_path, topic)
    proc = run.start(1, "--idle-timeout", "2s", stop_at_end=False)
    try:
        deadline = time.monotonic() + 120
        while not any(k.endswith(":2026-10") for k in _latest_or_none(run)):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            assert time.monotonic() < deadline, "October never closed"
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    issued = _latest_or_none(run)
    assert {k for k in issued if k.endswith(":2026-10")} == {
        f"{s}:2026-10" for s, sub in catalog.subscriptions.items()
        if sub.start < datetime(2026, 11, 1, tzinfo=UTC)}


def _latest_or_none(run: StreamRun) -> dict[str, Any]:
    try:
        return run.latest("invoice-candidates")
    except (RuntimeError, TimeoutError):  # not created yet, or still being written
        return {}


def test_three_partitions_reconcile_to_the_same_totals(catalog, kafka_service, redis_service,
                                                       clickhouse, tmp_path) -> None:
    """Three partitions over two workers: every event in one bucket, and each period's net
    invoiced amount per line equal to file mode's. (Which events are late can differ from a
    single input's order, since across partitions there is none: README, known limits.)
    Messages are keyed by event identity, as the README recommends: copies of one event share
    a partition, so "the first occurrence" is well defined."""
    lines = dirty_lines() + list(generate(catalog, 6000, seed=21))
    topic = kafka_service.new_topic("usage", partitions=3)
    kafka_service.produce(topic, lines, keys=_identity_keys(lines))
    run = StreamRun(kafka_service, redis_service, clickhouse, tmp_path, topic)
    run.run(workers=2)
    result, _ = engine_view(catalog, lines)

    got = net_by_line(list(run.latest("invoice-candidates").values()))
    want = net_by_line([json.loads(ENCODER.encode(c)) for c in result.candidates])
    assert got == want
    dead = kafka_service.consume_all(run.prefix + "dead-letter")
    assert len(dead) == len(result.exceptions)
    assert ledger_rows(clickhouse) == (result.stats.rated, result.stats.rated)
