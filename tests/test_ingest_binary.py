"""Kafka binary content mode through ingest, as plain functions: a binary message (attributes in
`ce_` headers, the value only the data) is judged as the structured document the binding builds
(operators/bindings.py), and whatever rejects it, its record, its dead letter and its stored row
keep the message as it came, so a retry sends the same message back."""

from __future__ import annotations

import base64
import json
from typing import Any

import msgspec
import pytest
from conftest import config, simple_catalog

from operators.bindings import kafka_mode
from operators.dedup import MemoryDedup
from operators.ingest import IngestConfig, Ingestor, IngestOutput, _kept_headers
from operators.limits import MAX_LINE_BYTES, RAW_KEEP_BYTES
from operators.retry import (
    DEAD_LETTER_HEADERS,
    RETRY_HEADER,
    RetryFilter,
    input_key,
    resent_headers,
    subject_of,
)
from schemas.records import ENCODER, ExceptionRecord, MessageHeader
from sinks.clickhouse.rows import rejections_of
from sinks.kafka import dead_letters

Headers = list[tuple[str, bytes | None]]


def structured(eid: str, subject: str = "s1", time: str = "2026-10-05T10:00:00Z",
               **data: Any) -> bytes:
    return json.dumps({"specversion": "1.0", "id": eid, "source": "//svc", "type": "api.request",
                       "subject": subject, "time": time, "data": data},
                      separators=(",", ":")).encode()


def binary(eid: str, subject: str = "s1", time: str | None = "2026-10-05T10:00:00Z",
           content_type: str = "application/json", **more: bytes | None) -> Headers:
    headers: Headers = [("ce_specversion", b"1.0"), ("ce_id", eid.encode()),
                        ("ce_source", b"//svc"), ("ce_type", b"api.request"),
                        ("ce_subject", subject.encode())]
    if time is not None:
        headers.append(("ce_time", time.encode()))
    headers += [(f"ce_{name}", value) for name, value in more.items()]
    headers.append(("content-type", content_type.encode()))
    return headers


def ingest(batch: list[tuple[int, bytes]], modes: dict[int, Headers] | None = None,
           retried: tuple[int, ...] = (), cfg: IngestConfig | None = None) -> IngestOutput:
    ingestor = Ingestor(simple_catalog(), cfg or config(), MemoryDedup(), "usage", 0,
                        position_key="offset")
    return ingestor.process(batch, retried, binary=modes)


def view(out: IngestOutput) -> tuple[Any, ...]:
    st = out.stats
    return ({k: repr(v) for k, v in out.ops.items()},
            (st.read, st.blank, st.duplicates, st.unmetered, st.rated, dict(st.exceptions)),
            [(r.exception_id, r.reason, r.error, r.event_id, r.subject) for r in out.exceptions])


def test_a_binary_message_is_rated_exactly_as_its_structured_form() -> None:
    lines = [structured("a"), structured("b", "ghost"),
             structured("c", time="2026-10-05T10:01:00Z", n=3)]
    plain = ingest(list(enumerate(lines)))
    # The same events: the first and last in binary mode (the last with an extension and a
    # charset parameter), the ghost structured, in the same order.
    batch = [(0, b"{}"), (1, lines[1]), (2, b'{"n":3}')]
    modes = {0: binary("a"),
             2: binary("c", time="2026-10-05T10:01:00Z", region=b"eu",
                       content_type="application/json; charset=utf-8")}
    mixed = ingest(batch, modes)
    assert view(mixed) == view(plain)
    assert mixed.stats.rated == 2
    # The structured record is what it always was: no `headers` in its JSON.
    (ghost,) = mixed.exceptions
    assert b'"headers"' not in ENCODER.encode(ghost)
    assert ENCODER.encode(ghost) == ENCODER.encode(plain.exceptions[0])


def test_the_ledger_keeps_the_structured_document_of_a_binary_message() -> None:
    cfg = IngestConfig(**{**{f: getattr(config(), f) for f in IngestConfig.__dataclass_fields__},
                          "ledger": True})
    out = ingest([(7, b'{"n":1}')], {7: binary("a", region=b"eu")}, cfg=cfg)
    (accepted,) = out.accepted
    doc = json.loads(accepted.raw)
    assert doc["id"] == "a" and doc["region"] == "eu" and doc["data"] == {"n": 1}
    assert doc["datacontenttype"] == "application/json"
    assert accepted.origin_offset == 7


HOSTILE: list[tuple[str, Headers, bytes, str, str]] = [
    ("two ce_id headers", [*binary("a"), ("ce_id", b"b")], b"{}", "INVALID_JSON",
     "appears in two ce_id headers"),
    ("a ce_data header", binary("a", data=b'{"n":1}'), b"{}", "INVALID_EVENT",
     "ce_data is not an attribute"),
    ("two JSON values", binary("a"), b'{"a":1},"subject":"x"', "INVALID_JSON",
     "the data (message body) is not valid JSON"),
    ("non-JSON content type", binary("a", content_type="text/plain"), b"hello",
     "INVALID_EVENT", "'text/plain' is not JSON"),
    ("a header that is not UTF-8", binary("a", region=b"\xff\xfe"), b"{}", "INVALID_EVENT",
     "header ce_region is not UTF-8"),
    ("no ce_time", binary("a", time=None), b"{}", "INVALID_EVENT", "`time`"),
    ("an empty value", binary("a"), b"", "INVALID_EVENT", "`data`"),
    ("a header name no attribute has", binary("a", **{"Bad-Name": b"x"}), b"{}",
     "INVALID_EVENT", "is not an attribute name"),
    ("two content-type headers", [*binary("a"), ("content-type", b"application/json")], b"{}",
     "INVALID_JSON", "several content-type headers"),
]


@pytest.mark.parametrize(("case", "headers", "value", "reason", "error"), HOSTILE,
                         ids=[c[0] for c in HOSTILE])
def test_a_hostile_binary_message_is_an_exception_that_keeps_the_message(
        case: str, headers: Headers, value: bytes, reason: str, error: str) -> None:
    assert kafka_mode(headers) == "binary"
    out = ingest([(0, structured("ok-1")), (1, value), (2, structured("ok-2"))], {1: headers})
    assert out.stats.rated == 2 and out.stats.blank == 0, case
    (record,) = out.exceptions
    assert (record.reason, record.exception_id) == (reason, "usage:0:1")
    assert error in record.error, record.error
    # The value as it came, and every header as it came, in order, repeated ones kept.
    assert (record.raw, record.raw_base64) == (value.decode(), None)
    assert record.headers
    assert [(h.name, _value(h)) for h in record.headers] == headers


def _value(header: MessageHeader) -> bytes | None:
    if header.value is not None:
        return header.value.encode()
    return base64.b64decode(header.value_base64) if header.value_base64 is not None else None


def test_headers_that_are_not_utf8_or_have_no_value_are_kept_exactly() -> None:
    headers = [*binary("a", subject="ghost"), ("trace", b"\xff"), ("empty", None)]
    (record,) = ingest([(0, b"\xfe{}")], {0: headers}).exceptions
    assert record.reason == "INVALID_JSON"  # the data is not UTF-8
    assert record.raw is None and record.raw_base64 == base64.b64encode(b"\xfe{}").decode()
    assert record.headers
    assert record.headers[-2:] == [MessageHeader("trace", value_base64="/w=="),
                                   MessageHeader("empty")]
    assert json.loads(ENCODER.encode(record))["headers"][-2:] == [
        {"name": "trace", "value_base64": "/w=="}, {"name": "empty"}]


def test_a_binary_message_rejected_after_the_envelope_keeps_it_too() -> None:
    headers = binary("g", subject="ghost", region=b"eu")
    (record,) = ingest([(4, b'{"n":1}')], {4: headers}).exceptions
    assert record.reason == "UNKNOWN_SUBJECT"
    assert (record.event_id, record.subject, record.raw) == ("g", "ghost", '{"n":1}')
    assert record.headers and [(h.name, _value(h)) for h in record.headers] == headers


def test_retried_binary_messages_are_counted_where_they_land() -> None:
    batch = [(0, b"{}"), (1, b"{}"), (2, b"")]
    modes = {0: [*binary("a"), (RETRY_HEADER, b"dl:0:1")], 1: [*binary("b"), ("ce_id", b"c")],
             2: binary("d")}
    out = ingest(batch, modes, retried=(0, 1, 2))
    assert out.stats.retried == {"rated": 1, "INVALID_JSON": 1, "INVALID_EVENT": 1}


def test_an_empty_structured_message_is_still_blank() -> None:
    out = ingest([(0, b""), (1, b"  ")], {})
    assert (out.stats.blank, out.exceptions) == (2, [])


def test_headers_past_the_line_limit_are_cut_like_raw() -> None:
    big = [(f"h{i}", b"x" * (RAW_KEEP_BYTES // 4)) for i in range(4 * MAX_LINE_BYTES
                                                                 // RAW_KEEP_BYTES + 1)]
    kept, error = _kept_headers(big, "why")
    assert len(kept) == 3 and error.startswith("why; its headers have ")
    assert error.endswith(f"the first 3 of {len(big)} headers are kept")
    small, same = _kept_headers(big[:3], "why")
    assert (len(small), same) == (3, "why")


# -- the dead letter, the retry and the stored row ----------------------------------------------


def _rejected(headers: Headers, value: bytes = b'{"n":1}') -> ExceptionRecord:
    (record,) = ingest([(3, value)], {3: headers}).exceptions
    return record


def test_the_dead_letter_is_the_message_as_it_came_and_a_retry_sends_it_back() -> None:
    headers = [*binary("g", subject="ghost", region=b"eu"), ("trace", b"\xff"), ("nil", None)]
    (letter,) = dead_letters("dl", [_rejected(headers)])
    assert letter.value == b'{"n":1}'
    assert letter.headers[:len(headers)] == headers
    added = [name for name, _ in letter.headers[len(headers):]]
    assert set(added) == DEAD_LETTER_HEADERS and len(added) == len(DEAD_LETTER_HEADERS)
    # as the retry reads it back: bytes (or None) per header, in order
    read = [(name, value.encode() if isinstance(value, str) else value)
            for name, value in letter.headers]
    assert resent_headers(read, "dl:0:9") == [*headers, (RETRY_HEADER, b"dl:0:9")]
    assert kafka_mode(resent_headers(read, "dl:0:9")) == "binary"
    # the retry's key and subject filter read the ce_ headers, not the data
    assert input_key(letter.value, read) == b"//svc/g"
    assert subject_of(letter.value, read) == "ghost"
    assert RetryFilter(subject="ghost").matches("UNKNOWN_SUBJECT", letter.value, None, read)
    assert not RetryFilter(subject="s1").matches("UNKNOWN_SUBJECT", letter.value, None, read)


def test_a_retried_dead_letter_drops_only_the_dead_letter_headers() -> None:
    again = [*binary("a"), (RETRY_HEADER, b"dl:0:1"), ("meterwax.reason", b"X"),
             ("meterwax.other", b"kept")]
    assert resent_headers(again, "dl:0:2") == [*binary("a"), ("meterwax.other", b"kept"),
                                               (RETRY_HEADER, b"dl:0:2")]
    # a structured dead letter: only the retry mark, as before
    assert resent_headers([("meterwax.reason", b"X")], "r") == [(RETRY_HEADER, b"r")]


def test_an_ambiguous_binary_message_has_no_key_or_subject_to_guess() -> None:
    twice = [*binary("a", subject="s1"), ("ce_id", b"b"), ("ce_subject", b"s2")]
    assert input_key(b"{}", twice) is None and subject_of(b"{}", twice) is None
    # data naming a source and an id is not the event's identity
    data = b'{"source": "x", "id": "y", "subject": "z"}'
    assert input_key(data, binary("a")) == b"//svc/a" and subject_of(data, binary("a")) == "s1"
    # headers of a structured message: the bytes are read, as before
    event = structured("e")
    assert input_key(event, [("content-type", b"application/json")]) == b"//svc/e"


def test_the_stored_rejection_holds_the_headers_as_json() -> None:
    from datetime import UTC, datetime

    headers = binary("g", subject="ghost")
    record = _rejected(headers)
    plain = ingest([(0, structured("x", "ghost"))]).exceptions[0]
    stored, old = rejections_of([record, plain], datetime(2026, 12, 1, tzinfo=UTC))
    assert stored.headers is not None and old.headers is None
    assert [(h["name"], h["value"].encode()) for h in json.loads(stored.headers)] == headers
    assert msgspec.json.decode(stored.headers, type=list[MessageHeader]) == record.headers
