"""Rejected usage that can be retried, on the real broker, Redis and ClickHouse: a stream rejects
an event for a subject no customer has; finance adds the customer and runs
`meterwax exceptions retry`; the stream rates the event. Retrying it again rates nothing more."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_stream import (  # noqa: F401
    CATALOG,
    ROOT,
    StreamRun,
    clickhouse,
    kill_when,
    ledger_rows,
)

from operators.retry import RetryFilter, input_key, subject_of
from schemas.records import ENCODER

pytestmark = pytest.mark.services

NEWCO = """
  - id: newco
    legal_entity: us-inc
    subjects: [newco-main]
    tax_registration: "US-11-2223334"
    payment_terms_days: 30
    subscriptions:
      - {id: sub-newco-1, plan: growth-usd, start: "2026-10-01T00:00:00Z", end: null}
"""


def with_newco(path: Path) -> None:
    """The example catalog with newco added at the end of its customers."""
    base = Path(CATALOG).read_text()
    end = base.index("\n# meterwax took over billing")  # the customers end there
    path.write_text(base[:end] + NEWCO + base[end:])


def ev(i: str, subject: str, time: str, **data: Any) -> bytes:
    return json.dumps({"specversion": "1.0", "id": i, "source": "//svc/api", "type": "api.request",
                       "subject": subject, "time": time, "data": data}).encode()


def retry(run: StreamRun, *args: str) -> subprocess.CompletedProcess[str]:
    env = run.env()
    return subprocess.run([sys.executable, "-m", "meterwax.cli", "exceptions", "retry", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_a_fixed_rejection_is_rated_once_however_often_it_is_retried(
        kafka_service, redis_service, clickhouse, tmp_path: Path) -> None:  # noqa: F811
    topic = kafka_service.new_topic("usage", partitions=1)
    lines = [ev("a1", "acme-prod", "2026-10-05T10:00:00Z"),
             ev("n1", "newco-main", "2026-10-05T10:01:00Z"),  # no such customer yet
             ev("a2", "acme-prod", "2026-10-05T10:02:00Z"),
             b"{not json"]
    kafka_service.produce(topic, lines)
    run = StreamRun(kafka_service, redis_service, clickhouse, tmp_path, topic)
    run.run()
    dead = kafka_service.consume_all(run.prefix + "dead-letter")
    assert sorted(dict(h)["meterwax.reason"] for *_, h in dead) == [b"INVALID_JSON",
                                                                     b"UNKNOWN_SUBJECT"]
    assert ledger_rows(clickhouse) == (2, 2)

    # A dry run counts and sends nothing; a bad --until is refused with the reason.
    dry = retry(run, "--reason", "UNKNOWN_SUBJECT", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "1 matched; would send 1" in dry.stdout
    bad = retry(run, "--since", "2026-10-02T00:00:00Z", "--until", "2026-10-01T00:00:00Z")
    assert bad.returncode == 2 and "--until: must be after --since" in bad.stderr

    # Finance adds the customer, then retries what was rejected for its subject.
    fixed = tmp_path / "catalog.yaml"
    with_newco(fixed)
    run.extra_env = {"METERWAX_CATALOG": str(fixed)}
    sent = retry(run, "--reason", "UNKNOWN_SUBJECT", "--subject", "newco-main")
    assert sent.returncode == 0, sent.stderr
    assert "2 dead letter(s) read" in sent.stdout and "sent 1 to" in sent.stdout
    retried = kafka_service.consume_all(topic)[-1]
    _p, _o, key, value, headers = retried
    assert value == lines[1] and key == b"//svc/api/n1"
    assert dict(headers)["meterwax.retry-of"].startswith(f"{run.prefix}dead-letter:".encode())
    run.run()  # resumes from its recovery store with the fixed catalog
    assert ledger_rows(clickhouse) == (3, 3)  # n1 is rated now

    # Retrying the same dead letter again: a duplicate of the rated copy, nothing more rated.
    again = retry(run, "--reason", "UNKNOWN_SUBJECT")
    assert again.returncode == 0 and "sent 1 to" in again.stdout
    run.run()
    assert ledger_rows(clickhouse) == (3, 3)
    dead = kafka_service.consume_all(run.prefix + "dead-letter")
    assert len(dead) == 2  # no new rejection either


def test_the_filter_reads_reason_subject_and_rejection_time() -> None:
    from datetime import UTC, datetime

    raw = ev("x", "acme-prod", "2026-10-05T10:00:00Z")
    at = datetime(2026, 11, 1, tzinfo=UTC)
    assert subject_of(raw) == "acme-prod" and input_key(raw) == b"//svc/api/x"
    assert subject_of(b"{not json") is None and input_key(b'{"id": 5}') is None
    cut = b'{"id": "x", "source": "//a\xe2\x82", "subject": "s"}'  # a cut UTF-8 sequence
    assert subject_of(cut) is None and input_key(cut) is None
    assert RetryFilter().matches(None, b"junk", None)
    assert RetryFilter(reason="UNKNOWN_SUBJECT").matches("UNKNOWN_SUBJECT", raw, at)
    assert not RetryFilter(reason="INVALID_VALUE").matches("UNKNOWN_SUBJECT", raw, at)
    assert not RetryFilter(subject="other").matches("UNKNOWN_SUBJECT", raw, at)
    window = RetryFilter(since=datetime(2026, 11, 1, tzinfo=UTC),
                         until=datetime(2026, 11, 2, tzinfo=UTC))
    assert window.matches("X", raw, at)
    assert not window.matches("X", raw, datetime(2026, 11, 2, tzinfo=UTC))  # half-open
    assert not window.matches("X", raw, None)


def test_ingest_counts_where_each_retried_event_landed_without_changing_any_output() -> None:
    from conftest import config, simple_catalog

    from operators.dedup import MemoryDedup
    from operators.ingest import Ingestor

    cat = simple_catalog()
    batch = list(enumerate([
        ev("a", "s1", "2026-10-05T10:00:00Z"),
        ev("b", "ghost", "2026-10-05T10:01:00Z"),  # UNKNOWN_SUBJECT
        ev("a", "s1", "2026-10-05T10:02:00Z"),  # a duplicate of a
        b"",
        ev("c", "s1", "2026-10-05T10:03:00Z"),
        b"{not json",
    ], start=1))
    plain = Ingestor(cat, config(), MemoryDedup(), "t", 0).process(batch)
    marked = Ingestor(cat, config(), MemoryDedup(), "t", 0).process(batch, retried=[2, 3, 4, 5, 6])
    assert marked.stats.retried == {"UNKNOWN_SUBJECT": 1, "duplicate": 1, "blank": 1, "rated": 1,
                                    "INVALID_JSON": 1}
    assert plain.stats.retried == {}

    def view(out: Any) -> tuple[Any, ...]:
        st = out.stats
        return (ENCODER.encode(out.exceptions), {k: repr(v) for k, v in out.ops.items()},
                (st.read, st.blank, st.duplicates, st.unmetered, st.rated, dict(st.exceptions)))

    assert view(marked) == view(plain)


def test_the_kafka_reader_marks_retried_messages(kafka_service) -> None:
    from services import read_input_chunks

    from flows.sources import PartitionIdle
    from operators.retry import RETRY_HEADER

    topic = kafka_service.new_topic("usage", partitions=1)
    kafka_service.produce(topic, [b"x", b"y", b"z"],
                          headers=[None, [(RETRY_HEADER, b"dl:0:7")], []])
    chunks = read_input_chunks(kafka_service.bootstrap, topic)
    usage = [chunk for chunk in chunks if isinstance(chunk[1], list)]
    lines = [line for chunk in usage for line in chunk[1]]
    assert lines == [(0, b"x"), (1, b"y"), (2, b"z")]
    assert [o for chunk in usage if len(chunk) > 2 for o in chunk[2]] == [1]
    # and at its end, once, that it has ended (flows/sources.py PartitionIdle)
    assert [chunk[1] for chunk in chunks[len(usage):]] == [PartitionIdle(ended=True)]


def test_killed_while_rating_retried_events_loses_and_doubles_nothing(
        kafka_service, redis_service, clickhouse, tmp_path: Path) -> None:  # noqa: F811
    topic = kafka_service.new_topic("usage", partitions=1)
    n = 30_000
    lines = [ev(f"n{i}", "newco-main", f"2026-10-05T10:{i % 60:02d}:{(i // 60) % 60:02d}Z")
             for i in range(n)] + [ev("a1", "acme-prod", "2026-10-06T00:00:00Z")]
    kafka_service.produce(topic, lines)
    run = StreamRun(kafka_service, redis_service, clickhouse, tmp_path, topic)
    run.run()
    assert ledger_rows(clickhouse) == (1, 1)
    fixed = tmp_path / "catalog.yaml"
    with_newco(fixed)
    run.extra_env = {"METERWAX_CATALOG": str(fixed)}
    sent = retry(run, "--reason", "UNKNOWN_SUBJECT")
    assert sent.returncode == 0 and f"sent {n} to" in sent.stdout, sent.stdout + sent.stderr

    # the retried events are being rated: kill now
    kill_when(run.start(), lambda: ledger_rows(clickhouse)[0] > 1)
    assert ledger_rows(clickhouse)[0] < n + 1, "killed too late to prove anything"
    run.run()  # resumes from the recovery store
    assert ledger_rows(clickhouse) == (n + 1, n + 1)
    assert rated_events(clickhouse) == n + 1  # and rated once each
    again = retry(run, "--reason", "UNKNOWN_SUBJECT")
    assert again.returncode == 0, again.stderr
    run.run()
    assert ledger_rows(clickhouse) == (n + 1, n + 1)  # every retry again is a duplicate
    assert rated_events(clickhouse) == n + 1


def rated_events(server: Any) -> int:
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=server.url, compress=False)
    return int(client.query("SELECT sum(event_count) FROM meterwax.rated_windows FINAL")
               .result_rows[0][0])
