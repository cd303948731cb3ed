"""The HTTP API over a run's folder (the embedded back end): every endpoint against the files
the run wrote, and every auth rule. The app is driven in-process over ASGI; the live server,
the OpenAPI fuzzing and the stream back end are in tests/test_api_live.py."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from meterwax.api.app import create_app, openapi_document
from meterwax.api.backends import BackendUnavailable, FolderBackend
from operators.tokens import TokenRecord, new_token, parse_scope

ROOT = Path(__file__).resolve().parents[1]
CUSTOMER_ROUTES = ("charges", "usage", "invoices")
FINANCE_ROUTES = ("/v1/exceptions", "/v1/exceptions/summary", "/v1/invoice-exceptions",
                  "/v1/reconciliation?month=2026-10")


def meterwax(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meterwax.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("api") / "demo"
    proc = meterwax("demo", "--size", "6000", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


class Clock:
    def __init__(self) -> None:
        self.at = datetime(2026, 12, 2, 12, tzinfo=UTC)
        self.mono = 1000.0

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return self.mono


@pytest.fixture(scope="module")
def backend(run_dir: Path) -> Iterator[FolderBackend]:
    b = FolderBackend(run_dir)
    yield b
    b.close()


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def client(backend: FolderBackend, clock: Clock) -> Iterator[TestClient[Any]]:
    app = create_app(backend, now=clock.now, monotonic=clock.monotonic, rate=1000, burst=10**6)
    with TestClient(app) as c:
        yield c


def token(backend: FolderBackend, scope: str, clock: Clock, **kw: Any) -> str:
    text, record = new_token(parse_scope(scope), clock.at, secrets.token_bytes(40), **kw)
    backend.tokens.add(record)
    return text


def bearer(text: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {text}"}


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def all_pages(client: TestClient[Any], path: str, headers: dict[str, str], limit: int
              ) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    sep = "&" if "?" in path else "?"
    while True:
        url = f"{path}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        r = client.get(url, headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= limit
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


# -- customer endpoints ------------------------------------------------------------------------

def test_charges_of_a_closed_period_are_its_candidate_lines(
        client: TestClient[Any], backend: FolderBackend, clock: Clock, run_dir: Path) -> None:
    """Once a period is wholly rated, its running charges are what was invoiced for it: the
    candidate plus its adjustments, line by line (same ids, same rounding), discounts, minimum
    true-ups and tax included."""
    invoiced: dict[str, Decimal] = Counter()  # type: ignore[assignment]
    quantities: dict[str, Decimal] = Counter()  # type: ignore[assignment]
    taxes: dict[str, Decimal] = Counter()  # type: ignore[assignment]
    for c in lines_of(run_dir / "invoice_candidates.jsonl"):
        if c["billing_period"] != "2026-10":
            continue
        original = c["adjusts"] or c["invoice_candidate_id"]
        taxes[c["subscription_id"]] += Decimal(c["tax_total"])
        for line in c["lines"]:
            key = original + line["line_id"][len(c["invoice_candidate_id"]):]
            invoiced[key] += Decimal(line["amount"])
            quantities[key] += Decimal(line.get("quantity") or 0)
    customers = {c["customer_id"] for c in lines_of(run_dir / "invoice_candidates.jsonl")}
    fin = bearer(token(backend, "finance", clock))
    seen: dict[str, Decimal] = {}
    for customer in sorted(customers):
        r = client.get(f"/v1/customers/{customer}/charges?period=2026-10", headers=fin)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["period"] == "2026-10"
        for sub in body["subscriptions"]:
            total = Decimal(0)
            for line in sub["lines"]:
                assert isinstance(line["amount"], str)
                seen[line["line_id"]] = Decimal(line["amount"])
                total += Decimal(line["amount"])
                if line["kind"] == "usage":
                    assert Decimal(line["quantity"]) == quantities[line["line_id"]], line
            assert Decimal(sub["subtotal"]) == total
            assert Decimal(sub["tax_total"]) == taxes[sub["subscription_id"]]
            assert Decimal(sub["total"]) == total + taxes[sub["subscription_id"]]
    assert any(k.split(":")[-2] == "discount" for k in seen)  # the example has discounts
    assert seen == dict(invoiced)


def test_charges_default_to_the_period_the_data_reached_and_say_how_fresh(
        client: TestClient[Any], backend: FolderBackend, clock: Clock, run_dir: Path) -> None:
    acme = bearer(token(backend, "customer:acme", clock))
    body = client.get("/v1/customers/acme/charges", headers=acme).json()
    assert body["period"] == "2026-11"  # the demo's data ends on 1 December
    assert body["as_of"] is not None and body["as_of"].startswith("2026-1")
    assert body["updated_at"] is not None
    totals = {t["currency"]: t["amount"] for t in body["totals"]}
    by_currency: dict[str, Decimal] = Counter()  # type: ignore[assignment]
    for sub in body["subscriptions"]:
        by_currency[sub["currency"]] += Decimal(sub["subtotal"])
    assert {c: Decimal(a) for c, a in totals.items()} == by_currency


def test_usage_buckets_add_up_to_what_was_rated(client: TestClient[Any], backend: FolderBackend,
                                                clock: Clock, run_dir: Path) -> None:
    acme = bearer(token(backend, "customer:acme", clock))
    r = client.get("/v1/customers/acme/usage?granularity=day&from=2026-10-01T00:00:00Z"
                   "&to=2026-11-01T00:00:00Z", headers=acme)
    assert r.status_code == 200, r.text
    buckets = r.json()["buckets"]
    assert buckets and all(b["start"] < "2026-11" for b in buckets)
    usage = {}
    for c in lines_of(run_dir / "invoice_candidates.jsonl"):
        if c["customer_id"] == "acme" and c["billing_period"] == "2026-10":
            for line in c["lines"]:
                if line["kind"] == "usage":
                    usage[line["meter"]] = usage.get(line["meter"], 0) + Decimal(line["quantity"])
    api_calls = sum(Decimal(b["quantity"]) for b in buckets if b["meter"] == "api_calls")
    assert api_calls == usage["api_calls"]
    # a max/latest meter's parts do not add up: no quantity, its period figure instead
    hourly = client.get("/v1/customers/acme/usage?meter=api_calls&granularity=hour"
                        "&from=2026-10-10T00:00:00Z&to=2026-10-11T00:00:00Z",
                        headers=acme).json()["buckets"]
    assert {b["meter"] for b in hourly} == {"api_calls"} and len(hourly) <= 24
    too_many = client.get("/v1/customers/acme/usage?granularity=minute"
                          "&from=2026-01-01T00:00:00Z&to=2026-12-01T00:00:00Z", headers=acme)
    assert too_many.status_code == 400
    assert "buckets" in too_many.json()["detail"]
    naive = client.get("/v1/customers/acme/usage?from=2026-10-01T00:00:00", headers=acme)
    assert naive.status_code == 400
    assert client.get("/v1/customers/acme/usage?meter=nope", headers=acme).status_code == 404


def test_invoices_page_through_every_candidate_and_ar_document(
        client: TestClient[Any], backend: FolderBackend, clock: Clock, run_dir: Path) -> None:
    customer = "acme"
    headers = bearer(token(backend, f"customer:{customer}", clock))
    items = all_pages(client, f"/v1/customers/{customer}/invoices", headers, limit=7)
    want = {("candidate", c["invoice_candidate_id"]): c
            for c in lines_of(run_dir / "invoice_candidates.jsonl")
            if c["customer_id"] == customer}
    want |= {("ar_invoice", a["ar_invoice_id"]): a
             for a in lines_of(run_dir / "erp_ar_invoices.jsonl") if a["customer_id"] == customer}
    got = {(i["kind"], i["id"]): i for i in items}
    assert len(items) == len(got) == len(want)
    assert set(got) == set(want)
    for key, item in got.items():
        assert item["document"] == want[key]  # byte-for-byte the record the outputs carry
        assert item["amount"] == want[key]["total"]  # with tax, for candidates and AR alike


# -- finance endpoints -------------------------------------------------------------------------

def test_exceptions_list_every_rejected_event_and_filter(
        client: TestClient[Any], backend: FolderBackend, clock: Clock, run_dir: Path) -> None:
    fin = bearer(token(backend, "finance", clock))
    want = {e["exception_id"]: e for e in lines_of(run_dir / "exceptions.jsonl")}
    items = all_pages(client, "/v1/exceptions", fin, limit=13)
    assert len(items) == len(want)
    for item in items:
        record = want[item["exception_id"]]
        assert (item["reason"], item["error"], item["raw"], item["raw_base64"],
                item["position"]) == (record["reason"], record["error"], record["raw"],
                                      record["raw_base64"], record["position"])
    reason = "INVALID_VALUE"
    only = all_pages(client, f"/v1/exceptions?reason={reason}", fin, limit=50)
    assert {i["exception_id"] for i in only} == {k for k, v in want.items()
                                                 if v["reason"] == reason}
    subject = next(v["subject"] for v in want.values() if v["subject"])
    by_subject = all_pages(client, f"/v1/exceptions?subject={subject}", fin, limit=50)
    assert by_subject and all(i["subject"] == subject for i in by_subject)
    later = client.get("/v1/exceptions?since=2100-01-01T00:00:00Z", headers=fin).json()
    assert later["items"] == []
    assert client.get("/v1/exceptions?reason=NOPE", headers=fin).status_code == 400
    assert client.get("/v1/exceptions?cursor=bm90LW91cnM", headers=fin).status_code == 400


def test_summary_counts_match_the_reconciliation(
        client: TestClient[Any], backend: FolderBackend, clock: Clock, run_dir: Path) -> None:
    fin = bearer(token(backend, "finance", clock))
    body = client.get("/v1/exceptions/summary", headers=fin).json()
    report = json.loads((run_dir / "reconciliation.json").read_text())
    assert body["total"] == report["events"]["exceptions_total"]
    assert body["by_reason"] == {k: v for k, v in report["events"]["exceptions"].items() if v}
    assert sum(d["count"] for d in body["by_day"]) == body["total"]


def test_invoice_exceptions_and_reconciliation(
        client: TestClient[Any], backend: FolderBackend, clock: Clock, run_dir: Path) -> None:
    fin = bearer(token(backend, "finance", clock))
    items = all_pages(client, "/v1/invoice-exceptions", fin, limit=5)
    want = lines_of(run_dir / "invoice_exceptions.jsonl")
    assert [i["document"] for i in sorted(items, key=lambda i: i["id"])] == sorted(
        want, key=lambda e: e["invoice_candidate_id"])
    assert all(i["document"]["details"] for i in items)  # what to fix, in words
    report = json.loads((run_dir / "reconciliation.json").read_text())
    body = client.get("/v1/reconciliation?month=2026-10", headers=fin).json()
    assert body["balanced"] is True and body["problems"] == []
    assert body["chain"] == [r for r in report["erp"]["chain"] if r["period"] == "2026-10"]
    assert client.get("/v1/reconciliation?month=2026-13", headers=fin).status_code == 400
    assert client.get("/v1/reconciliation", headers=fin).status_code == 400


def test_retry_needs_a_stream_deployment(client: TestClient[Any], backend: FolderBackend,
                                         clock: Clock) -> None:
    fin = bearer(token(backend, "finance", clock))
    r = client.post("/v1/exceptions/retry", json={"reason": "UNKNOWN_SUBJECT"}, headers=fin)
    assert r.status_code == 409
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "stream deployment" in r.json()["detail"]
    assert client.post("/v1/exceptions/retry", json={"bogus": 1},
                       headers=fin).status_code == 400


# -- auth ------------------------------------------------------------------------------------

def _customer_url(route: str, customer: str) -> str:
    return f"/v1/customers/{customer}/{route}"


def _norm(body: dict[str, Any], customer: str) -> dict[str, Any]:
    return {k: (v.replace(customer, "X") if isinstance(v, str) else v) for k, v in body.items()}


@pytest.mark.parametrize("route", CUSTOMER_ROUTES)
def test_a_customer_token_sees_only_its_own_customer(
        client: TestClient[Any], backend: FolderBackend, clock: Clock, route: str) -> None:
    acme = bearer(token(backend, "customer:acme", clock))
    assert client.get(_customer_url(route, "acme"), headers=acme).status_code == 200
    other = client.get(_customer_url(route, "globex"), headers=acme)
    missing = client.get(_customer_url(route, "no-such-co"), headers=acme)
    assert other.status_code == missing.status_code == 404
    # indistinguishable from a customer that does not exist
    assert _norm(other.json(), "globex") == _norm(missing.json(), "no-such-co")
    assert other.headers["content-type"] == missing.headers["content-type"]
    # ids that only look alike are other customers too
    for near in ("ACME", "acme ", "acme%2F..", "acme%00", "%61cme-x"):
        assert client.get(_customer_url(route, near), headers=acme).status_code in (404,)
    # a finance token reads any customer
    fin = bearer(token(backend, "finance", clock))
    assert client.get(_customer_url(route, "globex"), headers=fin).status_code == 200
    assert client.get(_customer_url(route, "no-such-co"), headers=fin).status_code == 404


@pytest.mark.parametrize("path", [*(_customer_url(r, "acme") for r in CUSTOMER_ROUTES),
                                  *FINANCE_ROUTES])
def test_no_token_or_a_bad_one_is_401_alike(client: TestClient[Any], backend: FolderBackend,
                                            clock: Clock, path: str) -> None:
    good = token(backend, "finance", clock)
    revoked = token(backend, "finance", clock)
    record = backend.tokens.revoke(revoked.split("_")[1], clock.at)
    assert record is not None and record.revoked_at is not None
    expired = token(backend, "finance", clock, expires_in=timedelta(seconds=1))
    clock.at += timedelta(seconds=2)
    clock.mono += 2  # past the record cache
    wrong_secret = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    answers = []
    for headers in ({}, bearer(""), bearer("nonsense"), bearer(revoked), bearer(expired),
                    bearer(wrong_secret), {"Authorization": f"Basic {good}"},
                    bearer("mwx_" + "0" * 16 + "_" + "A" * 43)):
        r = client.get(path, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
        answers.append(r.json())
    assert all(a == answers[0] for a in answers)
    assert client.get(path, headers=bearer(good)).status_code == 200


@pytest.mark.parametrize("path", FINANCE_ROUTES)
def test_a_customer_token_on_a_finance_route_is_403(
        client: TestClient[Any], backend: FolderBackend, clock: Clock, path: str) -> None:
    acme = bearer(token(backend, "customer:acme", clock))
    r = client.get(path, headers=acme)
    assert r.status_code == 403
    assert r.json()["title"] == "Forbidden"
    assert client.post("/v1/exceptions/retry", json={}, headers=acme).status_code == 403


class _Unbalanced(FolderBackend):
    """The run's folder with one variance named for 2026-11, and a check that fails once."""

    calls = 0

    def reconciliation(self, month: str) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 1:
            raise BackendUnavailable("ClickHouse did not answer")
        report = dict(super().reconciliation(month))
        return {**report, "problems": ["sub-acme 2026-11: invoiced 10.00 but rated 10.01"]}


def test_reconciliation_variances_are_gauges_checked_in_the_background(
        run_dir: Path, backend: FolderBackend, client: TestClient[Any], clock: Clock) -> None:
    def gauge(text: str, month: str) -> float | None:
        found = re.search(rf'^meterwax_reconciliation_variances{{month="{month}"}} (\S+)$',
                          text, re.M)
        return None if found is None else float(found.group(1))

    fin = bearer(token(backend, "finance", clock))
    assert client.get("/v1/reconciliation?month=2026-10", headers=fin).status_code == 200
    assert gauge(client.get("/metrics").text, "2026-10") == 0.0  # asked: a balanced month
    unbalanced = _Unbalanced(run_dir)
    at = Clock()
    at.at = datetime(2026, 12, 3, 6, tzinfo=UTC)
    # The checker reconciles the previous and the current month (2026-11, 2026-12) at start,
    # then every `reconcile_every`; the first check fails and is logged, not fatal.
    with TestClient(create_app(unbalanced, now=at.now, reconcile_every=0.05)) as c:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = c.get("/metrics").text
            if gauge(text, "2026-11") is not None and gauge(text, "2026-12") is not None:
                break
            time.sleep(0.05)
        assert gauge(text, "2026-11") == 1.0  # the variance naming 2026-11
        assert gauge(text, "2026-12") == 0.0
        checked = re.search(r'^meterwax_reconciliation_checked_timestamp_seconds'
                            r'{month="2026-12"} (\S+)$', text, re.M)
        assert checked is not None and float(checked.group(1)) == at.at.timestamp()
        assert c.get("/healthz").status_code == 200
    unbalanced.close()


def test_a_token_over_its_rate_limit_gets_429_then_recovers(backend: FolderBackend) -> None:
    clock = Clock()
    app = create_app(backend, now=clock.now, monotonic=clock.monotonic, rate=2, burst=3)
    text = token(backend, "customer:acme", clock)
    other = token(backend, "customer:acme", clock)
    with TestClient(app) as c:
        codes = [c.get("/v1/customers/acme/charges", headers=bearer(text)).status_code
                 for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = c.get("/v1/customers/acme/charges", headers=bearer(text))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        # per token: another token is not held back
        assert c.get("/v1/customers/acme/charges", headers=bearer(other)).status_code == 200
        clock.mono += 1.0  # two requests a second come back
        assert c.get("/v1/customers/acme/charges", headers=bearer(text)).status_code == 200


def test_the_short_path_answers_exactly_what_litestar_answers(backend: FolderBackend) -> None:
    """The first request of a token goes through Litestar (its record is not cached yet), the
    next ones through the short path in front of it: the same answer, byte for byte."""
    clock = Clock()
    app = create_app(backend, now=clock.now, monotonic=clock.monotonic, rate=1000, burst=1000)
    headers = bearer(token(backend, "customer:acme", clock))
    with TestClient(app) as c:
        for query in ("", "?period=2026-10"):
            first = c.get(f"/v1/customers/acme/charges{query}", headers=headers)
            second = c.get(f"/v1/customers/acme/charges{query}", headers=headers)
            assert first.status_code == second.status_code == 200
            assert first.content == second.content
            assert first.headers["content-type"] == second.headers["content-type"]
        # whatever the short path does not take, Litestar decides as always
        assert c.get("/v1/customers/acme/charges?period=2026-13",
                     headers=headers).status_code == 400
        assert c.get("/v1/customers/acme/charges?period=2026-10&x=1",
                     headers=headers).status_code == 200
        assert c.get("/v1/customers/globex/charges", headers=headers).status_code == 404
        assert c.get("/v1/customers/acme/charges").status_code == 401
        assert c.get("/v1/customers/acme%2Fx/charges", headers=headers).status_code == 404
        metrics = c.get("/metrics").text
    assert 'route="/v1/customers/{customer_id:str}/charges",status="200"' in metrics


def test_money_is_never_a_json_number(client: TestClient[Any], backend: FolderBackend,
                                      clock: Clock) -> None:
    fin = bearer(token(backend, "finance", clock))
    money = re.compile(r'"(amount|subtotal|total|quantity|rated_usage|invoiced_total)":\s*-?\d')
    for path in ("/v1/customers/acme/charges?period=2026-10", "/v1/customers/acme/usage",
                 "/v1/customers/acme/invoices", "/v1/invoice-exceptions",
                 "/v1/reconciliation?month=2026-10"):
        r = client.get(path, headers=fin)
        assert r.status_code == 200
        assert not money.search(r.text), path


# -- operations, OpenAPI, tokens command -------------------------------------------------------

def test_health_readiness_and_metrics(client: TestClient[Any], backend: FolderBackend,
                                      clock: Clock, tmp_path: Path) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").status_code == 200
    client.get("/v1/customers/acme/charges", headers=bearer(token(backend, "finance", clock)))
    text = client.get("/metrics").text
    assert 'meterwax_api_request_seconds_bucket{le="0.001",route="/v1/customers/{customer_id:str}/charges",status="200"}' in text  # noqa: E501
    empty = FolderBackend(tmp_path)
    with TestClient(create_app(empty)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "no finished run" in r.json()["problems"][0]
        assert c.get("/healthz").status_code == 200


def test_the_committed_openapi_document_is_the_apps(client: TestClient[Any]) -> None:
    served = client.get("/openapi.json")
    assert served.status_code == 200
    committed = (ROOT / "schemas" / "openapi.json").read_bytes()
    assert served.content == committed == openapi_document(create_app(FolderBackend("."))), (
        "regenerate: python -m meterwax.api.openapi > schemas/openapi.json")


def test_tokens_command_shows_a_token_once_and_keeps_only_its_hash(run_dir: Path) -> None:
    made = meterwax("tokens", "create", "--scope", "customer:acme", "--expires", "30d",
                    "--note", "portal", "--out", str(run_dir))
    assert made.returncode == 0, made.stderr
    text = made.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"mwx_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", text)
    token_id = text.split("_")[1]
    stored = (run_dir / "api_tokens.json").read_text()
    assert text not in stored and text.split("_", 2)[2] not in stored
    assert (run_dir / "api_tokens.json").stat().st_mode & 0o077 == 0
    listed = meterwax("tokens", "list", "--out", str(run_dir))
    assert token_id in listed.stdout and "portal" in listed.stdout
    assert text.split("_", 2)[2] not in listed.stdout
    record = FolderBackend(run_dir).tokens.get(token_id)
    assert isinstance(record, TokenRecord) and record.scope == "customer:acme"
    assert meterwax("tokens", "revoke", token_id, "--out", str(run_dir)).returncode == 0
    assert "revoked" in meterwax("tokens", "list", "--out", str(run_dir)).stdout
    bad = meterwax("tokens", "create", "--scope", "root", "--out", str(run_dir))
    assert bad.returncode == 2 and "expected customer:<id>, finance, admin, producer" in bad.stderr
    assert meterwax("tokens", "revoke", "zz", "--out", str(run_dir)).returncode == 2
