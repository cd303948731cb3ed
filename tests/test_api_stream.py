"""The HTTP API over a stream deployment: real Kafka, Redis, and ClickHouse's HTTP interface
(chDB served by `meterwax serve-clickhouse` in its own process). The stream runs the events
once; the same events run through `meterwax run` give a folder; both back ends must then
answer alike, and retry must reach Kafka."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from test_flow import dirty_lines
from test_stream import CATALOG, StreamRun

from flows.settings import ApiSettings
from meterwax.api.app import create_app
from meterwax.api.backends import FolderBackend, StreamBackend
from meterwax.workload import generate
from operators.catalog import load_catalog
from operators.tokens import new_token, parse_scope

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parents[1]


class _Served:
    def __init__(self, url: str) -> None:
        self.url = url


@pytest.fixture(scope="module")
def deployment(kafka_service: Any, redis_service: Any,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StreamRun, Path]]:
    tmp = tmp_path_factory.mktemp("api-stream")
    (tmp / "ch").mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "meterwax.cli", "serve-clickhouse", "--path", str(tmp / "ch"),
         "--port", "0", "--writable"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        url = re.search(r"(http://\S+)", line)
        assert url, line
        lines = dirty_lines() + list(generate(load_catalog(CATALOG), 2500, seed=5))
        topic = kafka_service.new_topic("usage", partitions=1)
        kafka_service.produce(topic, lines)
        run = StreamRun(kafka_service, redis_service, _Served(url.group(1)), tmp, topic)
        run.run()
        events = tmp / "events.jsonl"
        events.write_bytes(b"\n".join(lines) + b"\n")
        folder = tmp / "run"
        proc = subprocess.run([sys.executable, "-m", "meterwax.cli", "run", "--catalog",
                               CATALOG, "--events", str(events), "--out", str(folder)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr
        yield run, folder
    finally:
        server.terminate()
        server.wait(30)


def settings_of(run: StreamRun) -> ApiSettings:
    return ApiSettings.from_mapping({
        "redis_url": run.redis.url, "clickhouse": run.clickhouse.url,
        "kafka_bootstrap": run.kafka.bootstrap, "input_topic": run.topic,
        "topic_prefix": run.prefix, "redis_namespace": run.prefix.rstrip(".")}, environ={})


@pytest.fixture(scope="module")
def stream(deployment: tuple[StreamRun, Path]) -> Iterator[tuple[TestClient[Any], Any]]:
    backend = StreamBackend(settings_of(deployment[0]))
    with TestClient(create_app(backend, rate=10_000, burst=10_000)) as client:
        yield client, backend
    backend.close()


@pytest.fixture(scope="module")
def folder(deployment: tuple[StreamRun, Path]) -> Iterator[tuple[TestClient[Any], Any]]:
    backend = FolderBackend(deployment[1])
    with TestClient(create_app(backend, rate=10_000, burst=10_000)) as client:
        yield client, backend
    backend.close()


def bearer(backend: Any, scope: str) -> dict[str, str]:
    text, record = new_token(parse_scope(scope), datetime.now(UTC), secrets.token_bytes(40))
    backend.tokens.add(record)
    return {"Authorization": f"Bearer {text}"}


def pages(client: TestClient[Any], path: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        sep = "&" if "?" in path else "?"
        r = client.get(path + sep + "limit=50" + (f"&cursor={cursor}" if cursor else ""),
                       headers=headers)
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if not cursor:
            return items


def test_stream_mode_writes_what_the_api_lists_to_clickhouse(
        deployment: tuple[StreamRun, Path]) -> None:
    run, _ = deployment
    import clickhouse_connect

    ch = clickhouse_connect.get_client(dsn=run.clickhouse.url, compress=False)
    docs = {(k, i): json.loads(b) for k, i, b in ch.query(
        "SELECT kind, id, body FROM meterwax.billing_documents FINAL").result_rows}
    for kind, topic in (("candidate", "invoice-candidates"), ("ar_invoice", "ar-invoices"),
                        ("invoice_exception", "invoice-exceptions")):
        want = run.latest(topic)
        got = {i: b for (k, i), b in docs.items() if k == kind}
        assert got == want, kind
    dead = run.kafka.consume_all(run.prefix + "dead-letter")
    rows = ch.query("SELECT reason, raw FROM meterwax.rejected_events FINAL").result_rows
    assert len(rows) == len(dead)
    assert Counter(r[0] for r in rows) == Counter(
        dict(h)["meterwax.reason"].decode() for *_x, h in dead)


def test_both_back_ends_answer_alike(stream: tuple[TestClient[Any], Any],
                                     folder: tuple[TestClient[Any], Any]) -> None:
    s_client, s_backend = stream
    f_client, f_backend = folder
    s_fin, f_fin = bearer(s_backend, "finance"), bearer(f_backend, "finance")
    catalog = load_catalog(CATALOG)
    for customer in sorted(catalog.customers):
        for period in ("2026-10", "2026-11"):
            path = f"/v1/customers/{customer}/charges?period={period}"
            a, b = s_client.get(path, headers=s_fin), f_client.get(path, headers=f_fin)
            assert a.status_code == b.status_code == 200, (a.text, b.text)
            ja, jb = a.json(), b.json()
            assert ja["updated_at"] and jb["updated_at"]
            ja["updated_at"] = jb["updated_at"] = None
            assert ja == jb, (customer, period, _first_difference(ja, jb))
        path = f"/v1/customers/{customer}/usage?from=2026-10-01T00:00:00Z" \
               "&to=2026-12-01T00:00:00Z&granularity=day"
        assert s_client.get(path, headers=s_fin).json() == \
            f_client.get(path, headers=f_fin).json()
        inv = f"/v1/customers/{customer}/invoices"
        assert pages(s_client, inv, s_fin) == pages(f_client, inv, f_fin)
    assert pages(s_client, "/v1/invoice-exceptions", s_fin) == \
        pages(f_client, "/v1/invoice-exceptions", f_fin)
    # Rejected events: the same reasons and original bytes; positions say Kafka or file.
    sa = pages(s_client, "/v1/exceptions", s_fin)
    fa = pages(f_client, "/v1/exceptions", f_fin)
    assert Counter((e["reason"], e["raw"], e["raw_base64"]) for e in sa) == \
        Counter((e["reason"], e["raw"], e["raw_base64"]) for e in fa)
    assert {e["position"]["source"] for e in sa} != {"file"}
    summary = s_client.get("/v1/exceptions/summary", headers=s_fin).json()
    assert summary["by_reason"] == f_client.get("/v1/exceptions/summary",
                                                headers=f_fin).json()["by_reason"]


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path}: {a!r} != {b!r}"


def test_stream_tokens_live_in_redis_and_revocation_is_honoured(
        deployment: tuple[StreamRun, Path], stream: tuple[TestClient[Any], Any]) -> None:
    run, _ = deployment
    client, _backend = stream
    ns = run.prefix.rstrip(".")
    made = subprocess.run([sys.executable, "-m", "meterwax.cli", "tokens", "create", "--scope",
                           "customer:globex", "--redis-url", run.redis.url,
                           "--redis-namespace", ns], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    text = made.stdout.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {text}"}
    assert client.get("/v1/customers/globex/charges", headers=headers).status_code == 200
    assert client.get("/v1/customers/acme/charges", headers=headers).status_code == 404
    assert client.get("/v1/exceptions", headers=headers).status_code == 403
    subprocess.run([sys.executable, "-m", "meterwax.cli", "tokens", "revoke",
                    text.split("_")[1], "--redis-url", run.redis.url, "--redis-namespace", ns],
                   cwd=ROOT, check=True, capture_output=True, timeout=60)
    import time

    time.sleep(1.1)  # the API keeps a token's record for at most a second
    assert client.get("/v1/customers/globex/charges", headers=headers).status_code == 401


def test_retry_over_the_api_sends_dead_letters_to_the_input_topic(
        deployment: tuple[StreamRun, Path], stream: tuple[TestClient[Any], Any]) -> None:
    run, _ = deployment
    client, backend = stream
    fin = bearer(backend, "finance")
    dry = client.post("/v1/exceptions/retry", json={"reason": "UNKNOWN_SUBJECT",
                                                    "dry_run": True}, headers=fin)
    assert dry.status_code == 200, dry.text
    want = dry.json()["matched"]
    assert want > 0 and dry.json()["sent"] == 0
    before = len(run.kafka.consume_all(run.topic))
    sent = client.post("/v1/exceptions/retry", json={"reason": "UNKNOWN_SUBJECT"}, headers=fin)
    assert sent.status_code == 200 and sent.json()["sent"] == want
    after = run.kafka.consume_all(run.topic)
    assert len(after) == before + want
    assert all(any(k == "meterwax.retry-of" for k, _v in (r[4] or ())) for r in after[before:])
    assert client.get("/readyz").status_code == 200


def test_the_stream_reconciliation_is_the_folders_from_rated_usage_on(
        stream: tuple[TestClient[Any], Any], folder: tuple[TestClient[Any], Any]) -> None:
    """From the documents the stream actually wrote (not recomputed): the same chain as file
    mode's, row for row, but for the ingested quantities a stream keeps in its metrics."""
    s_client, s_backend = stream
    f_client, f_backend = folder
    for month in ("2026-10", "2026-11"):
        a = s_client.get(f"/v1/reconciliation?month={month}", headers=bearer(s_backend,
                                                                             "finance"))
        b = f_client.get(f"/v1/reconciliation?month={month}", headers=bearer(f_backend,
                                                                             "finance"))
        assert a.status_code == b.status_code == 200, a.text
        sa, fb = a.json(), b.json()
        assert sa["chain"], month
        assert sa["balanced"] is fb["balanced"] is True, (sa["problems"], fb["problems"])
        assert [{**r, "usage_quantities": {}} for r in sa["chain"]] == [
            {**r, "usage_quantities": {}} for r in fb["chain"]]


def test_retry_from_the_workbench_page_reaches_kafka(deployment: tuple[StreamRun, Path]) -> None:
    """The page's Retry button, in a real Chromium, against a real `meterwax api` process
    serving the stream deployment."""
    from playwright.sync_api import sync_playwright
    from test_workbench import chromium, start_api

    run, _ = deployment
    ns = run.prefix.rstrip(".")
    made = subprocess.run([sys.executable, "-m", "meterwax.cli", "tokens", "create", "--scope",
                           "finance", "--redis-url", run.redis.url, "--redis-namespace", ns],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    token = made.stdout.strip().splitlines()[-1]
    proc, base = start_api("--redis-url", run.redis.url, "--clickhouse", run.clickhouse.url,
                           "--kafka-bootstrap", run.kafka.bootstrap, "--input-topic", run.topic,
                           "--topic-prefix", run.prefix, "--redis-namespace", ns)
    try:
        before = len(run.kafka.consume_all(run.topic))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(base + "/")
            page.fill("#token", token)
            page.click("#login button[type=submit]")
            page.wait_for_selector("body[data-ready=true]", timeout=60_000)
            count = int(page.inner_text("#rejected-rows tr[data-reason=NO_ACTIVE_SUBSCRIPTION]"
                                        " td.num"))
            page.click("#rejected-rows button[data-reason=NO_ACTIVE_SUBSCRIPTION]")
            page.wait_for_selector("#retry-result.ok", timeout=60_000)
            text = page.inner_text("#retry-result")
            browser.close()
        assert f"{count} matched, sent {count} to the input topic" in text, text
        after = run.kafka.consume_all(run.topic)
        assert len(after) == before + count
    finally:
        proc.terminate()
        proc.wait(30)
