"""POST /v1/events against the real parts: `meterwax api` as a process (uvicorn), the real Kafka
broker, Redis for the tokens and ClickHouse's HTTP interface (chDB) for the back end. Events are
built and encoded by the official CloudEvents SDK, the client a producer would use."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hostile_cases import HOSTILE
from test_flow import dirty_lines
from test_stream import CATALOG, StreamRun, engine_view

from meterwax.workload import generate
from operators.catalog import load_catalog
from operators.envelope import Rejection, judge
from operators.limits import MAX_BATCH_EVENTS, MAX_EVENTS_BODY_BYTES

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from cloudevents.v1.conversion import to_binary, to_json, to_structured
    from cloudevents.v1.http import CloudEvent

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parents[1]
BATCH = "application/cloudevents-batch+json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Api:
    """`meterwax api` over a stream deployment whose input topic is `topic`."""

    def __init__(self, kafka: Any, redis: Any, clickhouse: Any, topic: str,
                 extra_env: dict[str, str] | None = None) -> None:
        self.kafka, self.topic = kafka, topic
        self.namespace = f"ingest-{uuid.uuid4().hex[:8]}"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "METERWAX_KAFKA_BOOTSTRAP": kafka.bootstrap,
                    "METERWAX_INPUT_TOPIC": topic, "METERWAX_REDIS_URL": redis.url,
                    "METERWAX_CLICKHOUSE": clickhouse.url,
                    "METERWAX_TOPIC_PREFIX": f"{self.namespace}.",
                    "METERWAX_REDIS_NAMESPACE": self.namespace, **(extra_env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meterwax.cli", "api", "--port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                _, err = self.proc.communicate(timeout=5)
                pytest.fail(f"meterwax api did not start: {err.decode()[-2000:]}")
            time.sleep(0.2)

    def token(self, scope: str) -> dict[str, str]:
        made = subprocess.run(
            [sys.executable, "-m", "meterwax.cli", "tokens", "create", "--scope", scope],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60, check=True)
        return {"Authorization": f"Bearer {made.stdout.strip().splitlines()[-1]}"}

    def written(self) -> list[tuple[bytes, bytes]]:
        """(key, value) of everything in the input topic, in order."""
        return [(k, v) for _p, _o, k, v, _h in self.kafka.consume_all(self.topic)]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture
def clickhouse(tmp_path: Path) -> Iterator[Any]:
    from sinks.clickhouse.http import ChdbHttpServer

    with ChdbHttpServer(str(tmp_path / "ch")) as server:
        yield server


@pytest.fixture
def api(kafka_service: Any, redis_service: Any, clickhouse: Any) -> Iterator[Api]:
    served = Api(kafka_service, redis_service, clickhouse,
                 kafka_service.new_topic("ingest", partitions=1))
    yield served
    served.stop()


def sdk_event(line: bytes) -> Any:
    """The SDK's CloudEvent of one structured JSON line (its attributes and data)."""
    doc = json.loads(line)
    data = doc.pop("data", None)
    return CloudEvent(doc, data)


def test_sdk_events_in_all_three_http_modes_give_what_the_same_events_give_from_a_file(
        api: Api, redis_service: Any, clickhouse: Any, tmp_path: Path) -> None:
    catalog = load_catalog(CATALOG)
    # Only lines with a valid envelope reach Kafka through the endpoint; the rest of the dirty
    # lines (unknown subjects, bad values, duplicates, late events) are the flow's to judge.
    source = [ln for ln in dirty_lines() + list(generate(catalog, 600, seed=3))
              if not isinstance(judge(ln), Rejection)]
    events = [sdk_event(ln) for ln in source]
    token = api.token("producer")
    file_lines: list[bytes] = []
    with httpx.Client(base_url=api.url, headers=token, timeout=30) as client:
        for start in range(0, len(events), 12):
            group = events[start:start + 12]
            mode = (start // 12) % 3
            if mode == 0:
                body = b"[" + b",".join(to_json(e) for e in group) + b"]"
                r = client.post("/v1/events", content=body, headers={"content-type": BATCH})
                assert r.status_code == 200, r.text
                assert r.json()["accepted"] == len(group), r.text
                file_lines += [to_json(e) for e in group]
            for e in group if mode else []:
                headers, body = (to_structured if mode == 1 else to_binary)(e)
                r = client.post("/v1/events", content=body, headers=headers)
                assert r.status_code == 202, r.text
                assert r.json()["results"][0]["status"] == "accepted"
                file_lines.append(to_json(e))
    written = api.written()
    assert len(written) == len(events)
    assert [k for k, _ in written] == [f"{e['source']}/{e['id']}".encode() for e in events]
    run = StreamRun(api.kafka, redis_service, clickhouse, tmp_path, api.topic)
    run.run()
    result, expected = engine_view(catalog, file_lines)
    assert result.candidates, "the events must bill something"
    for name, view in expected.items():
        assert run.latest(name) == view, name
    dead = api.kafka.consume_all(run.prefix + "dead-letter")
    assert sorted(dict(h)["meterwax.reason"].decode() for *_, h in dead) == \
        sorted(e.reason for e in result.exceptions)


def test_a_batch_answers_per_event_and_writes_exactly_the_accepted(api: Api) -> None:
    token = api.token("producer")
    good = [to_json(sdk_event(ln)) for ln in generate(load_catalog(CATALOG), 5, seed=9)]
    bad_json = b'{"specversion":"1.0","id":"x"'  # cut short: the batch itself is then invalid
    missing = b'{"specversion":"1.0","id":"m1","source":"svc","type":"t","subject":"s","data":{}}'
    batch = [good[0], missing, good[1], b'"just a string"', good[2]]
    with httpx.Client(base_url=api.url, headers=token, timeout=30) as client:
        r = client.post("/v1/events", content=b"[" + b",".join(batch) + b"]",
                        headers={"content-type": BATCH})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["accepted"], body["rejected"], body["unavailable"]) == (3, 2, 0)
        statuses = [(x["index"], x["status"], x.get("reason")) for x in body["results"]]
        assert statuses == [(0, "accepted", None), (1, "rejected", "INVALID_EVENT"),
                            (2, "accepted", None), (3, "rejected", "INVALID_EVENT"),
                            (4, "accepted", None)]
        flow = judge(missing)
        assert isinstance(flow, Rejection)
        assert body["results"][1]["error"] == flow.error  # the flow's own words
        assert body["results"][1]["id"] == "m1"
        r = client.post("/v1/events", content=b"[" + good[3] + b"," + bad_json + b"]",
                        headers={"content-type": BATCH})
        assert r.status_code == 400 and "not valid JSON" in r.json()["detail"], r.text
        # Sent again as a whole: written again (the flow deduplicates), answered the same.
        r2 = client.post("/v1/events", content=b"[" + b",".join(batch) + b"]",
                         headers={"content-type": BATCH})
        assert r2.json() == body
    written = api.written()
    assert [v for _, v in written] == [good[0], good[1], good[2]] * 2


def test_limits_and_wrong_requests_write_nothing(api: Api) -> None:
    producer = api.token("producer")
    event = to_json(sdk_event(next(iter(generate(load_catalog(CATALOG), 1, seed=1)))))
    with httpx.Client(base_url=api.url, timeout=30) as client:
        too_many = b"[" + b",".join([event] * (MAX_BATCH_EVENTS + 1)) + b"]"
        r = client.post("/v1/events", content=too_many, headers={**producer, "content-type": BATCH})
        assert r.status_code == 413 and str(MAX_BATCH_EVENTS) in r.json()["detail"], r.text
        huge = b"[" + b" " * MAX_EVENTS_BODY_BYTES + event + b"]"
        r = client.post("/v1/events", content=huge, headers={**producer, "content-type": BATCH})
        assert r.status_code == 413, r.text
        r = client.post("/v1/events", content=event,
                        headers={**producer, "content-type": "text/plain"})
        assert r.status_code == 415, r.text
        r = client.post("/v1/events", content=event,
                        headers={"content-type": "application/cloudevents+json"})
        assert r.status_code == 401, r.text
        for scope in ("finance", "admin", "customer:acme"):
            r = client.post("/v1/events", content=event,
                            headers={**api.token(scope),
                                     "content-type": "application/cloudevents+json"})
            assert r.status_code == 403, (scope, r.text)
        # A producer token reads nothing.
        assert client.get("/v1/customers/acme/charges", headers=producer).status_code == 404
        assert client.get("/v1/exceptions", headers=producer).status_code == 403
        r = client.post("/v1/events", content=b'{"specversion":"1.0"}',
                        headers={**producer, "content-type": "application/cloudevents+json"})
        assert r.status_code == 400 and r.json()["detail"].startswith("INVALID_EVENT: "), r.text
    assert api.written() == []


def test_a_source_scoped_token_sends_only_its_own_source(api: Api) -> None:
    lines = list(generate(load_catalog(CATALOG), 2, seed=4))
    mine, theirs = sdk_event(lines[0]), sdk_event(lines[1])
    mine["source"], theirs["source"] = "billing/svc-a", "billing/svc-b"
    token = api.token("producer:billing/svc-a")
    with httpx.Client(base_url=api.url, headers=token, timeout=30) as client:
        headers, body = to_structured(theirs)
        r = client.post("/v1/events", content=body, headers=headers)
        assert r.status_code == 403 and "billing/svc-a" in r.json()["detail"], r.text
        batch = b"[" + to_json(mine) + b"," + to_json(theirs) + b"]"
        r = client.post("/v1/events", content=batch, headers={"content-type": BATCH})
        assert [x["status"] for x in r.json()["results"]] == ["accepted", "forbidden"]
    assert api.written() == [(f"billing/svc-a/{mine['id']}".encode(), to_json(mine))]


def test_binary_mode_headers_are_percent_decoded_and_ambiguity_refused(api: Api) -> None:
    token = api.token("producer")
    line = next(iter(generate(load_catalog(CATALOG), 1, seed=2)))
    event = sdk_event(line)
    headers, body = to_binary(event)
    headers = {**headers, "ce-subject": headers["ce-subject"].replace("-", "%2D")}
    with httpx.Client(base_url=api.url, headers=token, timeout=30) as client:
        r = client.post("/v1/events", content=body, headers=headers)
        assert r.status_code == 202, r.text
        two_values = client.post("/v1/events", content=body + b',"subject":"someone-else"',
                                 headers=headers)
        assert two_values.status_code == 400, two_values.text
        assert "INVALID_JSON" in two_values.json()["detail"]
        not_json = client.post("/v1/events", content=b"<usage/>",
                               headers={**headers, "content-type": "application/xml"})
        assert not_json.status_code == 400 and "not JSON" in not_json.json()["detail"]
    (_key, value), = api.written()
    written = judge(value)
    assert not isinstance(written, Rejection)
    assert written.subject == event["subject"] and written.data == json.loads(body)


def test_kafka_back_pressure_is_503_with_retry_after_and_says_what_to_send_again(
        kafka_service: Any, redis_service: Any, clickhouse: Any) -> None:
    # A producer queue of 3 messages: a batch of 8 fills it within one request.
    api = Api(kafka_service, redis_service, clickhouse, kafka_service.new_topic("ingest"),
              {"METERWAX_INGEST_QUEUE": "3"})
    try:
        token = api.token("producer")
        events = [to_json(sdk_event(ln)) for ln in generate(load_catalog(CATALOG), 8, seed=6)]
        r = httpx.post(f"{api.url}/v1/events", content=b"[" + b",".join(events) + b"]",
                       headers={**token, "content-type": BATCH}, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        body = r.json()
        assert [x["status"] for x in body["results"]] == ["accepted"] * 3 + ["unavailable"] * 5
        assert "send it again" in body["results"][3]["error"]
        assert [v for _, v in api.written()] == events[:3]
    finally:
        api.stop()


def test_the_hostile_suite_against_the_endpoint(api: Api) -> None:
    """Every hostile line, sent one by one and in batches: never a 5xx; the envelope's
    refusals come back with the flow's reason and words and are not written; everything else
    is written byte for byte, once, for the flow to judge."""
    token = api.token("producer")
    expected_written: list[bytes] = []
    with httpx.Client(base_url=api.url, headers=token, timeout=60) as client:
        for case in HOSTILE:
            flow = judge(case.line)
            r = client.post("/v1/events", content=case.line,
                            headers={"content-type": "application/cloudevents+json"})
            assert r.status_code < 500, (case.id, r.text)
            if len(case.line) > MAX_EVENTS_BODY_BYTES:
                assert r.status_code == 413, case.id
            elif isinstance(flow, Rejection):
                assert r.status_code == 400, (case.id, r.text)
                assert r.json()["detail"] == f"{flow.reason}: {flow.error}", case.id
                assert flow.reason == case.reason, case.id
            else:
                assert r.status_code == 202, (case.id, r.text)
                expected_written.append(case.line)
        small = [c for c in HOSTILE if len(c.line) < 64 * 1024]
        for start in range(0, len(small), 25):
            group = small[start:start + 25]
            body = b"[" + b",".join(c.line for c in group) + b"]"
            r = client.post("/v1/events", content=body, headers={"content-type": BATCH})
            assert r.status_code < 500, r.text
            if r.status_code == 400:
                # A line that is not JSON makes the whole array unreadable: nothing written.
                assert "JSON" in r.json()["detail"], r.text
                continue
            assert r.status_code == 200, r.text
            for case, result in zip(group, r.json()["results"], strict=True):
                flow = judge(case.line)
                if isinstance(flow, Rejection):
                    assert (result["status"], result["reason"]) == ("rejected", flow.reason)
                else:
                    assert result["status"] == "accepted", case.id
                    expected_written.append(case.line)
    assert [v for _, v in api.written()] == expected_written


def test_redis_down_is_503_not_500(kafka_service: Any, clickhouse: Any) -> None:
    """The token store does not answer (Redis down or restarting): every event request is a
    503 with Retry-After, which a producer retries, and nothing is written."""

    class _Nowhere:
        url = f"redis://127.0.0.1:{_free_port()}/0"

    api = Api(kafka_service, _Nowhere(), clickhouse, kafka_service.new_topic("ingest"))
    try:
        event = to_json(sdk_event(next(iter(generate(load_catalog(CATALOG), 1, seed=1)))))
        r = httpx.post(f"{api.url}/v1/events", content=event, timeout=30, headers={
            "content-type": "application/cloudevents+json",
            "Authorization": "Bearer mwx_0123456789abcdef_" + "A" * 43})
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "Redis" in r.json()["detail"]
        assert api.written() == []
    finally:
        api.stop()


def test_a_missing_input_topic_is_named_in_the_503(kafka_service: Any, redis_service: Any,
                                                   clickhouse: Any) -> None:
    missing = f"no-such-topic-{uuid.uuid4().hex[:8]}"
    api = Api(kafka_service, redis_service, clickhouse, missing)
    try:
        event = to_json(sdk_event(next(iter(generate(load_catalog(CATALOG), 1, seed=1)))))
        t0 = time.monotonic()
        r = httpx.post(f"{api.url}/v1/events", content=event, timeout=30, headers={
            **api.token("producer"), "content-type": "application/cloudevents+json"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert missing in r.json()["detail"] and "does not exist" in r.json()["detail"]
        assert time.monotonic() - t0 < 8, "answered at once, not after the delivery timeout"
        # Not a readiness problem: the reads go on (this store has no tables yet, which is).
        problems = httpx.get(f"{api.url}/readyz", timeout=10).json().get("problems", [])
        assert not any(missing in p for p in problems), problems
    finally:
        api.stop()
