"""Both content modes of the CloudEvents Kafka binding, on the real broker, Redis and ClickHouse.

Events built with the official CloudEvents SDK (`cloudevents` on PyPI) are produced in
structured mode (the JSON document as the value) and in binary mode (the attributes in `ce_`
headers, the value only the data), interleaved, and `meterwax stream` must give exactly what file
mode gives for the same events as structured lines (the engine equals file mode: test_flow.py).
Hostile binary messages each land as an exception with its reason while the rest is rated, and
a binary message's dead letter goes back through `meterwax exceptions retry` as the same binary
message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cloudevents.v1.http import CloudEvent
from cloudevents.v1.kafka import to_binary, to_structured
from test_exceptions_retry import retry, with_newco
from test_flow import dirty_lines
from test_stream import (  # noqa: F401
    CATALOG,
    StreamRun,
    _assert_outputs_equal,
    clickhouse,
    engine_view,
    ledger_rows,
)

from meterwax.workload import generate
from operators.catalog import load_catalog
from operators.envelope import judge
from operators.retry import RETRY_HEADER
from schemas.events import CloudEvent as Judged

pytestmark = pytest.mark.services

Headers = list[tuple[str, bytes]]
# Every fourth event in structured mode, the others in binary mode, three ways (one with a
# charset parameter, two with an extension attribute, which is a `ce_` header in binary mode).
TYPES = ("application/json", "application/json; charset=utf-8", "application/json",
         "application/json")
EXTENSIONS: tuple[dict[str, str], ...] = ({}, {"region": "eu-west"}, {}, {"tenant": "t-7"})


def sdk_event(line: bytes, i: int) -> CloudEvent:
    doc = json.loads(line)
    data = doc.pop("data")
    attributes = {**doc, "datacontenttype": TYPES[i % 4], **EXTENSIONS[i % 4]}
    return CloudEvent(attributes, data)


def messages(lines: list[bytes]) -> tuple[list[bytes], list[Headers | None], list[bytes]]:
    """The lines as Kafka messages (value, headers), every valid CloudEvent built with the SDK
    and sent in its mode, and the file-mode lines for the same events: the SDK's structured
    form. What is not a valid CloudEvent (the dirty lines' junk) goes as it is, headerless."""
    values: list[bytes] = []
    headers: list[Headers | None] = []
    file_lines: list[bytes] = []
    for i, line in enumerate(lines):
        if not isinstance(judge(line), Judged):
            values.append(line)
            headers.append(None)
            file_lines.append(line)
            continue
        event = sdk_event(line, i)
        structured = to_structured(event)
        message = structured if i % 4 == 0 else to_binary(event)
        values.append(message.value)
        headers.append(list(message.headers.items()))
        file_lines.append(structured.value)
    return values, headers, file_lines


def dead_letters(run: StreamRun) -> dict[int, tuple[bytes, list[tuple[str, bytes]]]]:
    """Source offset -> (value, headers in order) of its dead letter."""
    out = {}
    for _p, _o, _k, value, headers in run.kafka.consume_all(run.prefix + "dead-letter"):
        offset = int(dict(headers)["meterwax.source.offset"])
        out[offset] = (value or b"", headers)
    return out


def stored_headers(clickhouse: Any) -> dict[str, list[dict[str, str]] | None]:  # noqa: F811
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=clickhouse.url, compress=False)
    rows = client.query("SELECT exception_id, headers FROM meterwax.rejected_events FINAL")
    return {r[0]: json.loads(r[1]) if r[1] is not None else None for r in rows.result_rows}


def test_structured_and_binary_messages_give_what_file_mode_gives(
        kafka_service, redis_service, clickhouse, tmp_path) -> None:  # noqa: F811
    catalog = load_catalog(CATALOG)
    lines = dirty_lines() + list(generate(catalog, 1500, seed=23))
    values, headers, file_lines = messages(lines)
    binary = {o for o, h in enumerate(headers) if h and "ce_specversion" in dict(h)}
    assert len(binary) > len(lines) // 2
    topic = kafka_service.new_topic("usage", partitions=1)
    kafka_service.produce(topic, values, headers=headers)
    run = StreamRun(kafka_service, redis_service, clickhouse, tmp_path, topic)
    run.run()

    result, expected = engine_view(catalog, file_lines)
    _assert_outputs_equal(run, clickhouse, result, expected)
    # Every rejection the same, with the same reason and message, and a binary one's dead
    # letter is the message as it was sent: its value and its headers, in order.
    dead = dead_letters(run)
    assert len(dead) == len(result.exceptions)
    rejected_binary = 0
    for exc in result.exceptions:
        offset = exc.position["line"] - 1  # file lines are 1-based
        value, got = dead[offset]
        named = dict(got)
        assert (named["meterwax.reason"].decode(), named["meterwax.error"].decode()) == (
            exc.reason, exc.error), offset
        assert value == values[offset], offset
        if offset in binary:
            rejected_binary += 1
            sent = headers[offset]
            assert sent is not None and got[:len(sent)] == sent
        else:  # a structured message's dead letter is as it always was
            assert all(name.startswith("meterwax.") for name, _ in got)
    assert rejected_binary > 0, "the workload must reject some binary messages"
    # and finance sees the headers beside the value in ClickHouse
    stored = stored_headers(clickhouse)
    assert sum(h is not None for h in stored.values()) == rejected_binary
    # and so does GET /v1/exceptions (the API's query over the same table)
    from meterwax.api.queries import rejected
    from sinks.clickhouse import open_store

    store = open_store(clickhouse.url, migrate=False)
    try:
        page = rejected(store.query, store.database, 500, None, None, None, None, None)
    finally:
        store.close()
    assert len(page.items) == len(stored) and page.next_cursor is None
    assert {i.exception_id: i.headers for i in page.items} == stored


# -- hostile binary messages, and a retry round trip ----------------------------------------------

SOURCE = "//svc/api"


def event(i: str, subject: str, time: str, data: Any = None, **more: str) -> CloudEvent:
    return CloudEvent({"type": "api.request", "source": SOURCE, "id": i, "subject": subject,
                       "time": time, "datacontenttype": "application/json", **more},
                      {} if data is None else data)


def as_binary(e: CloudEvent) -> tuple[bytes, Headers]:
    message = to_binary(e)
    return message.value, list(message.headers.items())


def with_header(e: CloudEvent, *extra: tuple[str, bytes], drop: str = "",
                value: bytes | None = None) -> tuple[bytes, Headers]:
    got, headers = as_binary(e)
    return (got if value is None else value,
            [h for h in headers if h[0] != drop] + list(extra))


def test_hostile_binary_messages_are_exceptions_and_a_dead_letter_retries_as_sent(
        kafka_service, redis_service, clickhouse, tmp_path: Path) -> None:  # noqa: F811
    t = "2026-10-05T10:{:02d}:00Z"
    valid = [event(f"v{i}", "acme-prod", t.format(i), tenant="t-1") for i in range(8)]
    hostile: list[tuple[str, tuple[bytes, Headers], str, str]] = [
        ("duplicate ce_id", with_header(event("h1", "acme-prod", t.format(20)),
                                        ("ce_id", b"h1-again")),
         "INVALID_JSON", "appears in two ce_id headers"),
        ("ce_data header", with_header(event("h2", "acme-prod", t.format(21)),
                                       ("ce_data", b'{"n": 1}')),
         "INVALID_EVENT", "ce_data is not an attribute"),
        ("two JSON values", with_header(event("h3", "acme-prod", t.format(22)),
                                        value=b'{"a":1},"subject":"x"'),
         "INVALID_JSON", "the data (message body) is not valid JSON"),
        ("non-JSON content type", with_header(event("h4", "acme-prod", t.format(23)),
                                              ("content-type", b"text/plain"),
                                              drop="content-type", value=b"hello"),
         "INVALID_EVENT", "'text/plain' is not JSON"),
        ("non-UTF-8 header", with_header(event("h5", "acme-prod", t.format(24)),
                                         ("ce_region", b"\xff\xfe")),
         "INVALID_EVENT", "header ce_region is not UTF-8"),
        ("missing ce_time", with_header(event("h6", "acme-prod", t.format(25)), drop="ce_time"),
         "INVALID_EVENT", "`time`"),
        ("empty value", with_header(event("h7", "acme-prod", t.format(26)), value=b""),
         "INVALID_EVENT", "`data`"),
    ]
    newco = as_binary(event("n1", "newco-main", t.format(30), {"path": "/x"}, tenant="t-9"))
    topic_values: list[bytes] = []
    topic_headers: list[Headers | None] = []
    expected_at: dict[int, tuple[str, str, str]] = {}
    for i, e in enumerate(valid):
        value, headers = as_binary(e) if i % 2 else (to_structured(e).value, [])
        topic_values.append(value)
        topic_headers.append(headers or None)
        if i < len(hostile):
            case, (bad_value, bad_headers), reason, error = hostile[i]
            expected_at[len(topic_values)] = (case, reason, error)
            topic_values.append(bad_value)
            topic_headers.append(bad_headers)
    newco_offset = len(topic_values)
    topic_values.append(newco[0])
    topic_headers.append(newco[1])
    expected_at[newco_offset] = ("unknown subject", "UNKNOWN_SUBJECT", "newco-main")

    topic = kafka_service.new_topic("usage", partitions=1)
    kafka_service.produce(topic, topic_values, headers=topic_headers)
    run = StreamRun(kafka_service, redis_service, clickhouse, tmp_path, topic)
    run.run()  # exit 0: no hostile message stops the flow

    dead = dead_letters(run)
    assert set(dead) == set(expected_at)
    for offset, (case, reason, error) in expected_at.items():
        value, headers = dead[offset]
        named = dict(headers)
        assert named["meterwax.reason"].decode() == reason, (case, named["meterwax.error"])
        assert error in named["meterwax.error"].decode(), case
        sent = topic_headers[offset]
        assert sent is not None
        assert value == topic_values[offset] and headers[:len(sent)] == sent, case
    # ClickHouse holds each one's headers beside its value, not-UTF-8 ones in base64
    stored = stored_headers(clickhouse)
    assert stored[f"{topic}:0:{newco_offset}"] == [{"name": n, "value": v.decode()}
                                                  for n, v in newco[1]]
    utf8 = next(o for o, (case, *_) in expected_at.items() if case == "non-UTF-8 header")
    assert {"name": "ce_region", "value_base64": "//4="} in (stored[f"{topic}:0:{utf8}"] or [])
    # the rest is rated exactly as the valid events alone, in file mode
    catalog = load_catalog(CATALOG)
    result, view = engine_view(catalog, [to_structured(e).value for e in valid])
    assert result.exceptions == []
    _assert_outputs_equal(run, clickhouse, result, view)

    # Finance adds newco and retries: the input topic gets the binary message back, with its
    # own headers (and the retry's mark), none of the dead letter's, keyed by its ce_ headers.
    fixed = tmp_path / "catalog.yaml"
    with_newco(fixed)
    run.extra_env = {"METERWAX_CATALOG": str(fixed)}
    sent = retry(run, "--reason", "UNKNOWN_SUBJECT", "--subject", "newco-main")
    assert sent.returncode == 0 and "sent 1 to" in sent.stdout, sent.stdout + sent.stderr
    _p, _o, key, value, headers = kafka_service.consume_all(topic)[-1]
    assert key == f"{SOURCE}/n1".encode() and value == newco[0]
    assert headers[:-1] == newco[1]
    assert headers[-1][0] == RETRY_HEADER
    run.run()  # resumes with the fixed catalog: n1 is rated now (late: October had closed)
    assert ledger_rows(clickhouse) == (len(valid) + 1, len(valid) + 1)
    assert len(dead_letters(run)) == len(expected_at)  # no new rejection
    assert "sub-newco-1:2026-10" in run.latest("invoice-candidates")


def test_the_kafka_reader_hands_on_the_headers_of_binary_messages_only(kafka_service) -> None:
    from services import read_input_chunks

    e = event("r1", "acme-prod", "2026-10-05T10:00:00Z")
    binary = as_binary(e)
    structured = to_structured(e)
    topic = kafka_service.new_topic("usage", partitions=1)
    kafka_service.produce(
        topic, [b"plain", structured.value, binary[0], binary[0]],
        headers=[None, list(structured.headers.items()), binary[1],
                 [*binary[1], (RETRY_HEADER, b"dl:0:1")]])
    chunks = read_input_chunks(kafka_service.bootstrap, topic)
    usage = [chunk for chunk in chunks if isinstance(chunk[1], list)]
    assert [line for chunk in usage for line in chunk[1]] == [
        (0, b"plain"), (1, structured.value), (2, binary[0]), (3, binary[0])]
    assert [o for chunk in usage if len(chunk) > 2 for o in chunk[2]] == [3]
    modes = {o: h for chunk in usage if len(chunk) > 3 for o, h in chunk[3].items()}
    assert modes == {2: binary[1], 3: [*binary[1], (RETRY_HEADER, b"dl:0:1")]}
