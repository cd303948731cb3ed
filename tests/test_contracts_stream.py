"""Contracts published while the stream runs, on the real broker, Redis and ClickHouse.

The proof the issue asks for: a stream rates against catalog A from the contracts topic; catalog
B is published while it runs, adding a customer (initech) and moving acme to a new plan at a
future time; more usage streams; the usage that arrived before initech's contract is retried
from the dead-letter topic. The invoice totals per subscription and month then equal file mode
over catalog B and all the events. Then the same with a kill -9 while B is being applied.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_stream import (  # noqa: F401
    CATALOG,
    ROOT,
    StreamRun,
    catalog,
    clickhouse,
    kill_when,
)

from meterwax.workload import generate
from operators.catalog import load_catalog_document, parse_catalog
from operators.engine import run_engine
from operators.ingest import IngestConfig
from operators.retry import subject_of

pytestmark = pytest.mark.services


def catalogs(tmp: Path, change_at: datetime) -> tuple[Path, Path, Any]:
    """A: the example without initech. B: the example, with acme moving at `change_at` from
    growth-usd to a new plan with other prices (one subscription ends where the next starts)."""
    doc, _ = load_catalog_document(CATALOG)
    a = copy.deepcopy(doc)
    a["customers"] = [c for c in a["customers"] if c["id"] != "initech"]
    b = copy.deepcopy(doc)
    plan = copy.deepcopy(next(p for p in b["plans"] if p["id"] == "growth-usd"))
    plan["id"] = "growth-usd-2027"
    plan["fixed_fees"][0]["amount"] = "650.00"
    plan["charges"][0]["tiers"][1]["unit_price"] = "0.003"
    b["plans"].append(plan)
    acme = next(c for c in b["customers"] if c["id"] == "acme")
    when = change_at.isoformat().replace("+00:00", "Z")
    acme["subscriptions"] = [
        {"id": "sub-acme-1", "plan": "growth-usd", "start": "2026-10-01T00:00:00Z", "end": when},
        {"id": "sub-acme-2", "plan": "growth-usd-2027", "start": when, "end": None}]
    paths = tmp / "catalog-a.yaml", tmp / "catalog-b.yaml"
    for path, content in zip(paths, (a, b), strict=True):
        path.write_text(yaml.safe_dump(content, sort_keys=False))
    return paths[0], paths[1], parse_catalog(b)


def split_with_change(lines: list[bytes], at: int) -> datetime:
    """A plan change time after every usage of the first `at` lines (so it alters nothing
    rated) and well inside the rest."""
    latest = datetime(2026, 10, 1, tzinfo=UTC)
    for raw in lines[:at]:
        try:
            t = datetime.fromisoformat(json.loads(raw)["time"]).astimezone(UTC)
        except Exception:
            continue
        if t < datetime(2026, 12, 1, tzinfo=UTC):
            latest = max(latest, t)
    return (latest + timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)


def meterwax(run: StreamRun, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meterwax.cli", *args], cwd=ROOT,
                          env=run.env(), capture_output=True, text=True, timeout=120,
                          check=False)


def rows_of(store: Any, subscription: str) -> int:
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=store.url, compress=False)
    try:
        return int(client.query(
            "SELECT count() FROM meterwax.rated_windows WHERE subscription_id = "
            "{s:String}", parameters={"s": subscription}).result_rows[0][0])
    except Exception:
        return 0


def wait_for(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str,
             within: float = 120) -> None:
    deadline = time.monotonic() + within
    while not ready():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def totals(candidates: list[dict[str, Any]]) -> dict[tuple[str, str], Decimal]:
    """Invoice totals per subscription and month: candidates plus their adjustments."""
    out: dict[tuple[str, str], Decimal] = {}
    for c in candidates:
        key = (c["subscription_id"], c["billing_period"])
        out[key] = out.get(key, Decimal(0)) + Decimal(str(c["subtotal"]))
    return out


def expected_totals(catalog_b: Any, lines: list[bytes]) -> dict[tuple[str, str], Decimal]:
    result = run_engine(catalog_b, lines, IngestConfig())
    return totals([json.loads(json.dumps({"subscription_id": c.subscription_id,
                                          "billing_period": c.billing_period,
                                          "subtotal": str(c.subtotal)}))
                   for c in result.candidates])


def publish(run: StreamRun, path: Path) -> str:
    out = meterwax(run, "contracts", "publish", str(path))
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_contracts_published_while_running_are_rated_without_a_restart(
        catalog, kafka_service, redis_service, clickhouse, tmp_path: Path  # noqa: F811
) -> None:
    lines = list(generate(catalog, 24_000, seed=11))
    half = len(lines) // 2
    change_at = split_with_change(lines, half)
    path_a, path_b, catalog_b = catalogs(tmp_path, change_at)
    topic = kafka_service.new_topic("usage", partitions=1)
    run = StreamRun(kafka_service, redis_service, clickhouse, tmp_path, topic)
    run.extra_env = {"METERWAX_CATALOG": ""}  # contracts come from the topic only
    assert "published 19 record(s)" in publish(run, path_a)
    shown = meterwax(run, "contracts", "show")
    assert shown.returncode == 0 and "customer/initech" not in shown.stdout, shown.stdout
    kafka_service.produce(topic, lines[:half])

    proc = subprocess.Popen([sys.executable, "-m", "meterwax.cli", "stream"], cwd=ROOT,
                            env=run.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Phase 1 rated against A; initech's usage is UNKNOWN_SUBJECT (before its contract).
        wait_for(lambda: rows_of(clickhouse, "sub-hooli-1") > 0, proc, "phase 1")
        wait_for(lambda: dead_subjects(run).get("initech-app", 0) > 0, proc, "initech rejected")
        changed = publish(run, path_b)
        assert "added    customer/initech" in changed and "changed  customer/acme" in changed
        assert "added    plan/growth-usd-2027" in changed
        time.sleep(3)  # the contract reaches the flow before the usage it governs
        kafka_service.produce(topic, lines[half:])
        # The new subscription is rated by the running flow, no restart.
        wait_for(lambda: rows_of(clickhouse, "sub-acme-2") > 0, proc, "sub-acme-2 rated")
        sent = meterwax(run, "exceptions", "retry", "--reason", "UNKNOWN_SUBJECT")
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: rows_of(clickhouse, "sub-initech-1") > 0, proc, "initech rated")
    finally:
        proc.kill()
        proc.wait()
    run.run()  # resumes from its recovery store and reads whatever the tailing run left
    got = totals(list(run.latest("invoice-candidates").values()))
    assert got == expected_totals(catalog_b, lines)
    assert ("sub-acme-2", change_at.strftime("%Y-%m")) in got
    assert ("sub-initech-1", "2026-10") in got
    # What is in force now is B, version 2 of acme's record.
    shown = meterwax(run, "contracts", "show")
    assert "customer/acme  v2" in shown.stdout and "customer/initech  v1" in shown.stdout


def dead_subjects(run: StreamRun) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        dead = run.kafka.consume_all(run.prefix + "dead-letter", timeout=5, idle=0.5)
    except (RuntimeError, TimeoutError):
        return out
    for _p, _o, _k, value, _h in dead:
        subject = subject_of(value)
        if subject:
            out[subject] = out.get(subject, 0) + 1
    return out


def test_killed_while_a_contracts_change_is_applied_loses_and_doubles_nothing(
        catalog, kafka_service, redis_service, clickhouse, tmp_path: Path  # noqa: F811
) -> None:
    lines = list(generate(catalog, 60_000, seed=12))
    half = len(lines) * 3 // 4
    change_at = split_with_change(lines, half)
    path_a, path_b, catalog_b = catalogs(tmp_path, change_at)
    topic = kafka_service.new_topic("usage", partitions=1)
    run = StreamRun(kafka_service, redis_service, clickhouse, tmp_path, topic)
    run.extra_env = {"METERWAX_CATALOG": ""}
    publish(run, path_a)
    kafka_service.produce(topic, lines[:half])
    # Live, not bounded: it cannot finish the first part before the kill (it did, on a fast run)
    proc = run.start(stop_at_end=False)

    def changing() -> bool:
        if rows_of(clickhouse, "sub-hooli-1") == 0:
            return False
        publish(run, path_b)  # B lands somewhere in the middle of the first part
        return True

    kill_when(proc, changing, pause=0.3, settle=0.4)
    kafka_service.produce(topic, lines[half:])
    run.run()  # resumes: B is applied (again, or for the first time) from the snapshot's offset
    sent = meterwax(run, "exceptions", "retry", "--reason", "UNKNOWN_SUBJECT")
    assert sent.returncode == 0, sent.stderr
    run.run()
    assert totals(list(run.latest("invoice-candidates").values())) == expected_totals(
        catalog_b, lines)


def test_publish_validates_refuses_and_sends_only_what_changed(
        kafka_service, redis_service, clickhouse, tmp_path: Path  # noqa: F811
) -> None:
    run = StreamRun(kafka_service, redis_service, clickhouse, tmp_path, "unused")
    broken = tmp_path / "broken.yaml"
    broken.write_text(Path(CATALOG).read_text().replace(
        "plan: growth-usd, start", "plan: growht-usd, start").replace(
        'amount: "500.00"', "amount: 500.00"))
    out = meterwax(run, "contracts", "publish", str(broken))
    assert out.returncode == 2, out.stderr
    assert "customers[0].subscriptions[0].plan: unknown plan 'growht-usd'" in out.stderr
    assert "plans[0].fixed_fees[0].amount: unquoted float 500.0" in out.stderr
    assert "nothing was published" in out.stderr
    assert "0 record(s)" in meterwax(run, "contracts", "show").stdout

    assert "published 20 record(s)" in publish(run, Path(CATALOG))
    assert "published 0 record(s) to" in publish(run, Path(CATALOG))
    # `show` prints a catalog `publish` takes back unchanged.
    shown = meterwax(run, "contracts", "show")
    assert "#   2026-09  sub-globex-starter  (customer globex)" in shown.stdout
    copy_path = tmp_path / "shown.yaml"
    copy_path.write_text(shown.stdout)
    assert "published 0 record(s) to" in publish(run, copy_path)
    assert "20 unchanged" in publish(run, copy_path)

    # Once acme is invoiced for October, moving its start is refused, and nothing is sent.
    from flows.kafka_io import KafkaSettings
    from sinks.kafka import ensure_topics
    from sinks.kafka import publish as produce

    kafka = KafkaSettings(kafka_service.bootstrap)
    ensure_topics(kafka, compacted=[run.prefix + "invoice-candidates"], plain=[])
    produce(kafka, run.prefix + "invoice-candidates", [
        (b"sub-acme-1:2026-10", json.dumps({"subscription_id": "sub-acme-1",
                                            "billing_period": "2026-10"}).encode(), [])])
    moved = tmp_path / "moved.yaml"
    moved.write_text(Path(CATALOG).read_text().replace(
        '{id: sub-acme-1, plan: growth-usd, start: "2026-10-01T00:00:00Z"',
        '{id: sub-acme-1, plan: growth-usd, start: "2026-10-10T00:00:00Z"').replace(
        'tax_registration: "US-12-3456789"', 'tax_registration: "US-12-0000000"'))
    out = meterwax(run, "contracts", "publish", str(moved))
    assert out.returncode == 3, out.stdout + out.stderr
    assert ("customer/acme: refused: subscription 'sub-acme-1' is rated or invoiced through "
            "2026-11-01T00:00:00Z; its start cannot move") in out.stderr
    assert "nothing was published" in out.stderr
    assert "customer/acme  v1" in meterwax(run, "contracts", "show").stdout


def test_the_flow_refuses_a_record_written_around_publish(
        catalog, kafka_service, redis_service, clickhouse, tmp_path: Path  # noqa: F811
) -> None:
    """`contracts publish` would refuse a price edit of a plan with rated usage; a producer
    that writes the topic directly gets the flow's refusal: a CONTRACT_REFUSED dead letter, and
    the usage goes on being rated at the old prices (as file mode over the old catalog)."""
    from flows.kafka_io import KafkaSettings
    from operators.contracts import encode_record, specs_of
    from sinks.kafka import publish as produce

    lines = list(generate(catalog, 6_000, seed=13))
    topic = kafka_service.new_topic("usage", partitions=1)
    run = StreamRun(kafka_service, redis_service, clickhouse, tmp_path, topic)
    run.extra_env = {"METERWAX_CATALOG": ""}
    publish(run, Path(CATALOG))
    kafka_service.produce(topic, lines[:3000])
    run.run()
    doc, _ = load_catalog_document(CATALOG)
    edited = copy.deepcopy(doc)
    next(p for p in edited["plans"] if p["id"] == "growth-usd")["fixed_fees"][0]["amount"] = (
        "900.00")
    spec = specs_of(edited)["plan/growth-usd"]
    produce(KafkaSettings(kafka_service.bootstrap), run.prefix + "contracts", [
        (b"plan/growth-usd", encode_record("plan/growth-usd", 2, spec), []),
        (b"plan/nothing-here", b"{\"kind\": 1}", [])])
    kafka_service.produce(topic, lines[3000:])
    run.run()
    refused = [(dict(h), v) for *_, v, h in kafka_service.consume_all(run.prefix + "dead-letter")
               if dict(h)["meterwax.reason"] == b"CONTRACT_REFUSED"]
    assert len(refused) == 2, refused
    errors = sorted(h["meterwax.error"].decode() for h, _ in refused)
    assert "plan 'growth-usd' priced subscription" in errors[0] and "not applied" in errors[0]
    assert "plan/nothing-here" in errors[1] and "not a contracts record" in errors[1]
    _, old = load_catalog_document(CATALOG)
    assert totals(list(run.latest("invoice-candidates").values())) == expected_totals(old, lines)
