"""The CloudEvents bindings as plain functions (operators/bindings.py), against the official
SDK's encodings: a binary-mode message is judged exactly as its structured form is."""

from __future__ import annotations

import warnings
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meterwax.api.ingest import Received, Refusal, judge_events, read_events
from operators.bindings import (
    batch_events,
    from_http_binary,
    from_kafka_binary,
    is_json,
    kafka_mode,
)
from operators.envelope import Rejection, judge
from operators.limits import MAX_BATCH_EVENTS
from operators.tokens import Scope, parse_scope

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from cloudevents.v1 import kafka as ce_kafka
    from cloudevents.v1.conversion import to_binary, to_json
    from cloudevents.v1.http import CloudEvent

_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                max_size=30)
_VALUES = st.one_of(st.integers(-10**12, 10**12), st.booleans(), _TEXT,
                    st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str))


@st.composite
def events(draw: Any) -> Any:
    attrs = {"type": draw(_TEXT), "source": draw(_TEXT), "subject": draw(_TEXT),
             "id": draw(_TEXT), "time": draw(st.sampled_from(
                 ["2026-10-01T00:00:00Z", "2026-10-31T23:59:59.999+02:00",
                  "2026-11-15T08:30:00-05:30"])),
             "datacontenttype": draw(st.sampled_from(
                 ["application/json", "application/json; charset=utf-8",
                  "application/vnd.usage+json"]))}
    if draw(st.booleans()):
        attrs["xtrace"] = draw(_TEXT)  # an extension attribute
    data = draw(st.dictionaries(st.text(min_size=1, max_size=8), _VALUES, max_size=4))
    return CloudEvent(attrs, data)


@settings(max_examples=150, deadline=None)
@given(events())
def test_binary_mode_is_judged_as_its_structured_form(event: Any) -> None:
    structured = judge(to_json(event))
    kafka = ce_kafka.to_binary(event)
    headers = list(kafka.headers.items())
    assert kafka_mode(headers) == "binary"
    rebuilt = from_kafka_binary(headers, kafka.value)
    assert isinstance(rebuilt, bytes)
    assert judge(rebuilt) == structured
    http_headers, body = to_binary(event)
    raw = [(k.lower().encode(), v.encode()) for k, v in http_headers.items()]
    over_http = from_http_binary(raw, body, http_headers.get("content-type"))
    assert isinstance(over_http, bytes)
    assert judge(over_http) == structured


def _kafka(event: Any) -> tuple[list[tuple[str, bytes | None]], bytes]:
    msg = ce_kafka.to_binary(event)
    return list(msg.headers.items()), msg.value


def _event(**more: Any) -> Any:
    return CloudEvent({"type": "api.request", "source": "svc", "subject": "acme-prod",
                       "id": "e1", "time": "2026-10-01T00:00:00Z",
                       "datacontenttype": "application/json", **more}, {"units": 3})


def test_structured_messages_keep_their_mode() -> None:
    assert kafka_mode(None) == "structured"
    assert kafka_mode([]) == "structured"
    # The SDK's own structured messages say application/json and carry no ce_ headers.
    assert kafka_mode(list(ce_kafka.to_structured(_event()).headers.items())) == "structured"
    headers, _ = _kafka(_event())
    assert kafka_mode([*headers, ("content-type", b"application/cloudevents+json")]) == \
        "structured"


def test_ambiguous_or_foreign_binary_messages_are_refused_with_why() -> None:
    headers, value = _kafka(_event())
    cases = {
        "two ce_id": ([*headers, ("ce_id", b"e2")], value, ("INVALID_JSON", "two ce_id")),
        "ce_data": ([*headers, ("ce_data", b"{}")], value, ("INVALID_EVENT", "ce_data")),
        "upper case": ([*headers, ("ce_Trace", b"x")], value, ("INVALID_EVENT", "ce_'Trace'")),
        "not utf-8": ([*headers, ("ce_xtrace", b"\xff")], value, ("INVALID_EVENT", "UTF-8")),
        "two values": (headers, value + b',"subject":"other"', ("INVALID_JSON", "trailing")),
        "not json": (headers, b"units=3", ("INVALID_JSON", "not valid JSON")),
        "xml": ([(k, b"application/xml" if k == "content-type" else v) for k, v in headers],
                value, ("INVALID_EVENT", "not JSON")),
        "two types": ([*headers, ("content-type", b"application/json")], value,
                      ("INVALID_JSON", "several content-type")),
    }
    for name, (hs, val, (reason, fragment)) in cases.items():
        got = from_kafka_binary(hs, val)
        assert isinstance(got, Rejection), name
        assert got.reason == reason and fragment in got.error, (name, got)
    # Missing attributes and empty data are the envelope's to name, as for a structured line.
    no_time = judge(from_kafka_binary([h for h in headers if h[0] != "ce_time"], value))
    assert isinstance(no_time, Rejection) and "time" in no_time.error
    empty = judge(from_kafka_binary(headers, b""))
    assert isinstance(empty, Rejection) and "data" in empty.error


def test_content_types_that_are_json() -> None:
    assert is_json(None) and is_json("application/json; charset=utf-8")
    assert is_json("application/vnd.acme.usage+json") and is_json("TEXT/JSON")
    assert not is_json("application/xml") and not is_json("text/plain")


def test_a_batch_is_split_into_each_event_as_sent() -> None:
    first, second = to_json(_event()), to_json(_event(id="e2"))
    assert batch_events(b"[ " + first + b" ,\n" + second + b" ]") == [first, second]
    assert batch_events(b"[]") == []
    for bad, fragment in ((b"{}", "JSON array"), (b"[1,", "not valid JSON"),
                          (b"[" + b",".join([first] * (MAX_BATCH_EVENTS + 1)) + b"]",
                           str(MAX_BATCH_EVENTS))):
        got = batch_events(bad)
        assert isinstance(got, Rejection) and fragment in got.error, got


def test_the_request_decides_the_mode() -> None:
    event = to_json(_event())
    assert read_events("application/cloudevents+json", [(b"ce-specversion", b"1.0")], event) \
        == Received([event], batched=False)
    assert read_events("application/json", [], b" [" + event + b"]") == \
        Received([event], batched=True)
    refused = read_events("text/plain", [], event)
    assert isinstance(refused, Refusal) and refused.status == 415
    too_many = read_events("application/cloudevents-batch+json", [],
                           b"[" + b",".join([event] * (MAX_BATCH_EVENTS + 1)) + b"]")
    assert isinstance(too_many, Refusal) and too_many.status == 413


def test_producer_scopes() -> None:
    received = Received([to_json(_event()), to_json(_event(source="other", id="e2")),
                         b'{"id":"e3","source":"svc"}'], batched=True)
    results, records = judge_events(received, parse_scope("producer:svc"))
    assert [r.status for r in results] == ["accepted", "forbidden", "rejected"]
    assert results[2].id == "e3" and results[2].reason == "INVALID_EVENT"
    assert [k for _, k, _ in records] == [b"svc/e1"]
    _, every = judge_events(received, Scope("producer"))
    assert [k for _, k, _ in every] == [b"svc/e1", b"other/e2"]
    assert str(parse_scope("producer:svc")) == "producer:svc"
    for scope in ("producer", "producer:svc"):
        s = parse_scope(scope)
        assert not s.finance and not s.may_read_customer("acme")
    assert not parse_scope("admin").may_send("svc")
