"""Hostile input in stream mode, against the real Kafka broker, Redis and ClickHouse over HTTP.

A valid workload with one poison message of each kind (tests/hostile_cases.py: the engine's
table, a period pushed past what the store holds, a message dated years ahead, an empty value and
a tombstone) is produced into a fresh topic and run through `meterwax stream --stop-at-end` as a
real process, like tests/test_stream.py does. The process must finish (exit 0: no poison
message crashes it), every poison message must be on the dead-letter topic with its reason and
its original bytes, and everything else must be exactly what the engine gives for the valid
messages alone. Then the same topic again, killed with SIGKILL mid-run and restarted from the
recovery store: no crash loop, the same outputs.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hostile_cases import (
    BASE_START,
    CATALOG_DOC,
    HOSTILE,
    NOW,
    Case,
    base_lines,
    config,
    kept,
    line,
    rfc3339,
    series,
)
from test_stream import (
    StreamRun,
    _has_output,
    _norm_rows,
    _running_charges_match,
    engine_view,
    expected_rows,
    ledger_rows,
    rated_rows,
)

from operators.catalog import Catalog, load_catalog
from operators.engine import EngineResult
from operators.limits import MAX_LINE_BYTES
from schemas.records import FUTURE_EVENT, PERIOD_LIMIT_EXCEEDED

pytestmark = pytest.mark.services

# The largest poison message is a little over 1 MiB: above Kafka's default message size, so the
# input topic and the test's producer allow more (the broker keeps the topic's setting).
MAX_MESSAGE = str(4 * MAX_LINE_BYTES)


@pytest.fixture(autouse=True)
def _after_the_workload() -> None:
    # The hostile lines are dated just before 2026-12-02 and the workload before that: judged by
    # the wall clock (stream mode has no --now), they are only due from then on.
    if datetime.now(UTC) < NOW:
        pytest.skip("the workload is dated for a wall clock from 2026-12-02")


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(CATALOG_DOC, sort_keys=False))
    return path


@pytest.fixture
def clickhouse(tmp_path: Path) -> Iterator[Any]:
    from sinks.clickhouse.http import ChdbHttpServer

    with ChdbHttpServer(str(tmp_path / "ch")) as server:
        yield server


class HostileRun(StreamRun):
    """A stream run over the hostile catalog, with the future horizon set explicitly."""

    def __init__(self, kafka: Any, redis: Any, clickhouse: Any, tmp: Path, topic: str,
                 catalog: Path) -> None:
        super().__init__(kafka, redis, clickhouse, tmp, topic)
        self.catalog = catalog

    def env(self, workers: int = 1, recovery: Path | None = None) -> dict[str, str]:
        return {**super().env(workers, recovery), "METERWAX_CATALOG": str(self.catalog),
                "METERWAX_MAX_FUTURE": "24h"}


@dataclass
class Workload:
    messages: list[bytes | None]  # the topic, in offset order (None: a tombstone)
    poison: dict[int, Case]  # offset -> the case that must be dead-lettered
    valid: list[bytes]  # every other non-blank message, in offset order


def poison_cases() -> list[Case]:
    """The engine's table, with the wall-clock-relative future case replaced by one a week
    ahead of this run (stream mode judges by the wall clock)."""
    week = rfc3339(datetime.now(UTC).replace(microsecond=0) + timedelta(days=7))
    cases = [c for c in HOSTILE if c.id != "one-second-past-the-horizon"]
    cases.append(Case("a-week-ahead", line(eid="hostile-week", time=week), FUTURE_EVENT,
                      ("24h",)))
    return cases


def workload(base_events: int) -> Workload:
    """100 events that fill sub-whale's October to just below 10^20 and the 101st that would
    pass it (PERIOD_LIMIT_EXCEEDED), then the base stream with a poison message every few
    events, the first ones at the very start (so a killed run has already dead-lettered some),
    and an empty message and a tombstone in the middle."""
    whale = series("whale-1", 101, start=BASE_START - timedelta(minutes=5))
    period = Case("period-limit-exceeded", whale[-1], PERIOD_LIMIT_EXCEEDED, ("10^20",))
    cases = poison_cases()
    base = base_lines(base_events)
    messages: list[bytes | None] = [*whale]
    poison = {len(whale) - 1: period}
    valid = whale[:-1]
    every = max(1, len(base) // len(cases))
    for i, event in enumerate(base):
        if i % every == 0 and i // every < len(cases):
            poison[len(messages)] = cases[i // every]
            messages.append(cases[i // every].line)
        if i == len(base) // 2:
            messages += [b"", None]
        messages.append(event)
        valid.append(event)
    assert len(poison) == len(cases) + 1
    return Workload(messages, poison, valid)


def produce(kafka: Any, topic: str, values: list[bytes | None]) -> None:
    """In order, with messages up to MAX_MESSAGE bytes (KafkaService.produce uses the default)."""
    from confluent_kafka import Producer

    errors: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(f"{msg.offset()}: {err}")

    producer = Producer(kafka.config(**{"enable.idempotence": True, "linger.ms": 5,
                                        "message.max.bytes": MAX_MESSAGE}))
    for value in values:
        while True:
            try:
                producer.produce(topic, value=value, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(60)
    assert not left and not errors, (left, errors[:5])


def expected(catalog: Catalog, lines: list[bytes]) -> tuple[EngineResult, dict[str, Any]]:
    """The engine over the valid messages alone, as the keyed views of the output topics."""
    result, view = engine_view(catalog, lines, config())
    assert result.exceptions == [], "the valid messages must all be judged normally"
    return result, view


def dead_letters(run: StreamRun) -> dict[int, list[tuple[bytes, dict[str, bytes]]]]:
    """Source offset -> every dead letter for it (a replayed epoch may repeat one)."""
    out: dict[int, list[tuple[bytes, dict[str, bytes]]]] = {}
    for _p, _o, _k, value, headers in run.kafka.consume_all(run.prefix + "dead-letter"):
        named = dict(headers)
        offset = int(named["meterwax.source.offset"])
        out.setdefault(offset, []).append((value or b"", named))
    return out


def assert_poison_dead_lettered(run: StreamRun, load: Workload) -> None:
    dead = dead_letters(run)
    unexpected = sorted(set(dead) - set(load.poison))
    assert not unexpected, [(o, dead[o][0][1].get("meterwax.reason")) for o in unexpected[:5]]
    problems = []
    for offset, case in sorted(load.poison.items()):
        copies = dead.get(offset)
        if not copies:
            problems.append(f"{case.id}: not on the dead-letter topic")
            continue
        for value, headers in copies:
            reason = headers.get("meterwax.reason", b"").decode()
            if reason != case.reason:
                error = headers.get("meterwax.error", b"").decode()[:200]
                problems.append(f"{case.id}: reason {reason}, expected {case.reason}: {error}")
            elif value != kept(case.line):
                problems.append(f"{case.id}: the dead letter holds other bytes "
                                f"({len(value)} bytes, expected {len(kept(case.line))})")
    assert not problems, problems


def assert_outputs_equal(run: StreamRun, clickhouse: Any, result: EngineResult,
                         view: dict[str, Any]) -> None:
    assert ledger_rows(clickhouse) == (result.stats.rated, result.stats.rated)
    for name, want in view.items():
        got = run.latest(name)
        differing = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        assert not differing, (name, [(k, got.get(k), want.get(k)) for k in differing[:2]])
    assert _norm_rows(rated_rows(clickhouse)) == expected_rows(result)


def test_poison_messages_are_dead_lettered_and_the_rest_is_rated_as_without_them(
        kafka_service: Any, redis_service: Any, clickhouse: Any, tmp_path: Path,
        catalog_path: Path) -> None:
    catalog = load_catalog(str(catalog_path))
    load = workload(3000)
    topic = kafka_service.new_topic("hostile", partitions=1,
                                    config={"max.message.bytes": MAX_MESSAGE})
    produce(kafka_service, topic, load.messages)
    run = HostileRun(kafka_service, redis_service, clickhouse, tmp_path, topic, catalog_path)
    run.run()  # exit 0: no poison message stops the flow
    assert_poison_dead_lettered(run, load)
    result, view = expected(catalog, load.valid)
    assert result.stats.rated == len(load.valid)
    assert_outputs_equal(run, clickhouse, result, view)


def test_poisoned_topic_killed_mid_run_resumes_to_the_same_outputs(
        kafka_service: Any, redis_service: Any, clickhouse: Any, tmp_path: Path,
        catalog_path: Path) -> None:
    """A message that crashed the flow would crash it again at every restart (recovery replays
    the epoch): after SIGKILL and a restart the run must finish, with the outputs of one clean
    run."""
    catalog = load_catalog(str(catalog_path))
    # Enough events that the kill lands mid-run now that the stream is faster (90,000 once
    # finished before the first dead letter was seen and the kill came).
    load = workload(150_000)
    topic = kafka_service.new_topic("hostile", partitions=1,
                                    config={"max.message.bytes": MAX_MESSAGE})
    produce(kafka_service, topic, load.messages)
    run = HostileRun(kafka_service, redis_service, clickhouse, tmp_path, topic, catalog_path)
    proc = run.start()
    deadline = time.monotonic() + 120
    while not _has_output(run, "dead-letter"):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        assert time.monotonic() < deadline, "no dead letter within 120 s"
        time.sleep(0.5)
    time.sleep(1.0)
    assert proc.poll() is None, "the run finished before it could be killed: use more events"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run.run()  # resumes from the recovery store, over the same poison, to the end
    assert_poison_dead_lettered(run, load)
    result, view = expected(catalog, load.valid)
    assert_outputs_equal(run, clickhouse, result, view)
    _running_charges_match(run, catalog, result)
