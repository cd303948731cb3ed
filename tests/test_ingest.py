"""Ingest: every input line lands in exactly one bucket, in the specified order of tests:
INVALID_JSON, INVALID_EVENT, duplicate, unmetered, UNKNOWN_SUBJECT, NO_ACTIVE_SUBSCRIPTION,
INVALID_VALUE, rated. Values are read exactly; identity is (source, id), first valid one wins."""

from __future__ import annotations

import base64
from decimal import Decimal

import msgspec
import pytest
from conftest import (
    DEFAULT_METERS,
    DELETE,
    D,
    buckets,
    candidate,
    candidate_ids,
    customer,
    event,
    lines_of,
    quantities_of,
    raw_event,
    reconcile,
    run,
    simple_doc,
    sub,
)

from operators.catalog import parse_catalog
from operators.dedup import MemoryDedup
from operators.engine import EngineResult
from operators.ingest import IngestConfig, Ingestor
from operators.money import fmt

METERS = [
    *DEFAULT_METERS,
    {"id": "gmv", "event_type": "payment.captured", "aggregation": "sum", "value": "amount"},
    # one event type feeding two meters
    {"id": "requests", "event_type": "api.multi", "aggregation": "count"},
    {"id": "bytes", "event_type": "api.multi", "aggregation": "sum", "value": "bytes"},
]


def ingest_catalog():
    doc = simple_doc(meters=METERS, charges=[
        {"meter": "calls", "model": "per_unit", "unit_price": "1.00"},
        {"meter": "tokens", "model": "per_unit", "unit_price": "1.00"},
        {"meter": "peak", "model": "per_unit", "unit_price": "1.00"},
        {"meter": "users", "model": "per_unit", "unit_price": "1.00"},
        {"meter": "seats", "model": "per_unit", "unit_price": "1.00"},
        {"meter": "requests", "model": "per_unit", "unit_price": "0.01"},
        {"meter": "bytes", "model": "per_unit", "unit_price": "0.001"},
        # gmv is a meter, but plan p does not price it
    ])
    doc["customers"].append(
        customer("d", ["s2"], [sub("sub-2", "p", "2026-10-10T00:00:00Z", "2026-10-20T00:00:00Z")]))
    return parse_catalog(doc)


CATALOG = ingest_catalog()


def run_lines(*lines: bytes, batch_size: int = 1000) -> EngineResult:
    result = run(CATALOG, lines, batch_size=batch_size)
    report = reconcile(CATALOG, result)
    assert report.balanced, report.problems
    assert report.events.read == report.events.buckets_total
    return result


def tokens(value: str, eid: str = "t1", **kw: str) -> bytes:
    """An llm.completion event whose data.usage.tokens is the JSON text `value`, verbatim."""
    return raw_event(eid, '{"usage": {"tokens": ' + value + "}}", **kw)


def ingested(result: EngineResult, meter: str, sub_id: str = "sub-1",
             period: str = "2026-10") -> Decimal | None:
    agg = result.stats.ingested.get((sub_id, period, meter))
    return None if agg is None else agg.quantity()


# -- one line, one bucket ------------------------------------------------------------------------

INVALID_JSON_LINES = [
    pytest.param(b"not json", id="text"),
    pytest.param(b'{"specversion": "1.0", "id": ', id="truncated"),
    # msgspec meets the bad specversion before the truncation; still not JSON
    pytest.param(b'{"specversion": "2.0", "id": ', id="truncated-after-schema-error"),
    pytest.param(b'{"specversion": 1.0, "id": "x"', id="unclosed-after-wrong-type"),
    pytest.param(event("e1") + b" trailing", id="trailing-garbage"),
    pytest.param(b"{'id': 'single-quotes'}", id="single-quotes"),
    pytest.param(b'{"data": NaN}', id="nan-literal"),
    pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
    pytest.param(event("e1").replace(b'"e1"', b'"e\xff1"'), id="invalid-utf8-inside-a-string"),
]


@pytest.mark.parametrize("line", INVALID_JSON_LINES)
def test_invalid_json(line: bytes) -> None:
    result = run_lines(line)
    assert buckets(result) == {"INVALID_JSON": 1}
    assert result.exceptions[0].error.startswith("not valid ")


INVALID_EVENTS = [
    pytest.param(event("e1", specversion=DELETE), id="no-specversion"),
    pytest.param(event("e1", specversion="0.3"), id="specversion-0.3"),
    pytest.param(event("e1", specversion=1.0), id="specversion-number"),
    pytest.param(event(""), id="empty-id"),
    pytest.param(event("e1", id=42), id="numeric-id"),
    pytest.param(event("e1", source=""), id="empty-source"),
    pytest.param(event("e1", source=DELETE), id="no-source"),
    pytest.param(event("e1", etype=""), id="empty-type"),
    pytest.param(event("e1", type=DELETE), id="no-type"),
    pytest.param(event("e1", subject=""), id="empty-subject"),
    pytest.param(event("e1", subject=DELETE), id="no-subject"),
    pytest.param(event("e1", subject=["s1"]), id="list-subject"),
    pytest.param(event("e1", time="2026-10-05T12:00:00"), id="naive-time"),
    pytest.param(event("e1", time="2026-10-05"), id="date-only"),
    pytest.param(event("e1", time="yesterday"), id="not-a-time"),
    pytest.param(event("e1", time="2026-10-05T12:00Z"), id="time-without-seconds"),
    pytest.param(event("e1", time="2026-10-05T24:00:00Z"), id="hour-24"),
    pytest.param(event("e1", time=1760000000), id="epoch-number-time"),
    pytest.param(event("e1", time=DELETE), id="no-time"),
    pytest.param(event("e1", data=None), id="null-data"),
    pytest.param(event("e1", data=[1, 2]), id="list-data"),
    pytest.param(event("e1", data="5"), id="string-data"),
    pytest.param(event("e1", data=DELETE), id="no-data"),
    pytest.param(b"[1, 2]", id="json-array"),
    pytest.param(b'"an event"', id="json-string"),
    pytest.param(b"{}", id="empty-object"),
]


@pytest.mark.parametrize("line", INVALID_EVENTS)
def test_invalid_event(line: bytes) -> None:
    result = run_lines(line)
    assert buckets(result) == {"INVALID_EVENT": 1}
    assert result.exceptions[0].error.startswith("invalid CloudEvent")


@pytest.mark.parametrize("line", [
    pytest.param(event("e1", datacontenttype="application/json", dataschema="urn:x",
                       traceparent="00-abc-def-01"), id="optional-attributes"),
    pytest.param(event("e1", xcustom={"nested": [1, 2]}, partitionkey=7), id="extensions"),
    pytest.param(event("e1", time="2026-10-05T21:00:00+09:00"), id="positive-offset"),
    pytest.param(event("e1", time="2026-10-05T07:00:00-05:00"), id="negative-offset"),
    pytest.param(event("e1", time="2026-10-05T12:00:00.123456Z"), id="fractional-seconds"),
])
def test_valid_events_are_rated(line: bytes) -> None:
    result = run_lines(line)
    assert buckets(result) == {"rated": 1}
    assert ingested(result, "calls") == 1


def test_event_time_offset_decides_the_utc_period() -> None:
    # 08:00 on 1 November in Tokyo is 23:00 on 31 October UTC
    result = run_lines(event("e1", time="2026-11-01T08:00:00+09:00"))
    assert ingested(result, "calls", period="2026-10") == 1
    # the watermark's period closes at end of input, for every subscription active in it
    assert candidate_ids(result) == ["sub-1:2026-10", "sub-2:2026-10"]


@pytest.mark.parametrize(("line", "bucket"), [
    pytest.param(event("e1", etype="no.such.type"), "unmetered", id="type-matches-no-meter"),
    pytest.param(event("e1", etype="payment.captured", data={"amount": "5"}), "unmetered",
                 id="meter-not-in-plan"),
    pytest.param(event("e1", subject="ghost"), "UNKNOWN_SUBJECT", id="unknown-subject"),
    pytest.param(event("e1", subject="S1"), "UNKNOWN_SUBJECT", id="subject-is-case-sensitive"),
    pytest.param(event("e1", subject="s2", time="2026-10-09T23:59:59Z"),
                 "NO_ACTIVE_SUBSCRIPTION", id="before-start"),
    pytest.param(event("e1", subject="s2", time="2026-10-10T00:00:00Z"), "rated",
                 id="exactly-at-start"),
    pytest.param(event("e1", subject="s2", time="2026-10-19T23:59:59.999999Z"), "rated",
                 id="last-microsecond"),
    pytest.param(event("e1", subject="s2", time="2026-10-20T00:00:00Z"),
                 "NO_ACTIVE_SUBSCRIPTION", id="exactly-at-end-excluded"),
    pytest.param(event("e1", subject="s2", time="2026-10-25T00:00:00Z"),
                 "NO_ACTIVE_SUBSCRIPTION", id="after-end"),
])
def test_routing_buckets(line: bytes, bucket: str) -> None:
    result = run_lines(line)
    assert buckets(result) == {bucket: 1}
    if bucket == "unmetered":
        assert result.exceptions == []  # counted, never an exception


def test_meter_not_in_plan_is_counted_as_unmetered_not_in_plan() -> None:
    result = run_lines(event("e1", etype="payment.captured", data={"amount": "5"}),
                       event("e2", etype="no.such.type"))
    assert (result.stats.unmetered, result.stats.unmetered_not_in_plan) == (2, 1)


# -- values ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    pytest.param("5", "5", id="integer"),
    pytest.param('"5"', "5", id="integer-string"),
    pytest.param("0.1", "0.1", id="json-fraction-is-exact"),
    pytest.param('"0.1"', "0.1", id="string-fraction"),
    pytest.param("1.50", "1.5", id="trailing-zero"),
    pytest.param("1e3", "1000", id="json-exponent"),
    pytest.param('"1e3"', "1000", id="string-exponent"),
    pytest.param("0", "0", id="zero"),
    pytest.param('"0.000000001"', "0.000000001", id="nine-places"),
    pytest.param("1.0000000000", "1", id="trailing-zeros-beyond-nine-places"),
    pytest.param("999999999999999999", "999999999999999999", id="just-below-10e18"),
])
def test_valid_quantity_values(value: str, expected: str) -> None:
    result = run_lines(tokens(value))
    assert buckets(result) == {"rated": 1}
    assert ingested(result, "tokens") == D(expected)


@pytest.mark.parametrize("data", [
    pytest.param("{}", id="missing"),
    pytest.param('{"usage": 5}', id="path-through-number"),
    pytest.param('{"usage": {"tokens": true}}', id="boolean-true"),
    pytest.param('{"usage": {"tokens": false}}', id="boolean-false"),
    pytest.param('{"usage": {"tokens": null}}', id="null"),
    pytest.param('{"usage": {"tokens": -1}}', id="negative-number"),
    pytest.param('{"usage": {"tokens": "-0.5"}}', id="negative-string"),
    pytest.param('{"usage": {"tokens": "NaN"}}', id="nan-string"),
    pytest.param('{"usage": {"tokens": "Infinity"}}', id="infinity-string"),
    pytest.param('{"usage": {"tokens": "abc"}}', id="word"),
    pytest.param('{"usage": {"tokens": ""}}', id="empty-string"),
    pytest.param('{"usage": {"tokens": " 5"}}', id="padded-string"),
    pytest.param('{"usage": {"tokens": "5 tokens"}}', id="unit-suffix"),
    pytest.param('{"usage": {"tokens": [5]}}', id="list"),
    pytest.param('{"usage": {"tokens": {"n": 5}}}', id="object"),
    pytest.param('{"usage": {"tokens": 1e18}}', id="out-of-range"),
    pytest.param('{"usage": {"tokens": 1e400}}', id="huge-exponent"),
    pytest.param('{"usage": {"tokens": "0.0000000001"}}', id="ten-places"),
])
def test_invalid_quantity_values(data: str) -> None:
    result = run_lines(raw_event("t1", data))
    assert buckets(result) == {"INVALID_VALUE": 1}
    assert result.exceptions[0].error.startswith("meter 'tokens': data.usage")
    assert ingested(result, "tokens") is None


@pytest.mark.parametrize("data", [
    pytest.param("{}", id="missing"),
    pytest.param('{"user_id": true}', id="boolean"),
    pytest.param('{"user_id": null}', id="null"),
    pytest.param('{"user_id": ""}', id="empty-string"),
    pytest.param('{"user_id": [42]}', id="list"),
    pytest.param('{"user_id": {"id": 42}}', id="object"),
])
def test_invalid_unique_count_values(data: str) -> None:
    result = run_lines(raw_event("u1", data, etype="user.active"))
    assert buckets(result) == {"INVALID_VALUE": 1}


@pytest.mark.parametrize(("values", "expected"), [
    # 0.1 + 0.2 is 0.30000000000000004 in binary floating point; here it is exactly 0.3
    pytest.param(["0.1", "0.2"], "0.3", id="json-numbers"),
    pytest.param(['"0.1"', '"0.2"'], "0.3", id="strings"),
    pytest.param(["0.1", '"0.2"'], "0.3", id="number-and-string"),
    pytest.param(["0.1"] * 10, "1.0", id="ten-tenths"),
    pytest.param(["1e-9", '"0.000000002"'], "0.000000003", id="smallest-scale"),
])
def test_json_numbers_sum_exactly(values: list[str], expected: str) -> None:
    result = run_lines(*[tokens(v, f"t{i}") for i, v in enumerate(values)])
    total = ingested(result, "tokens")
    assert total is not None
    assert fmt(total) == expected  # exactly; not 0.30000000000000004
    cand = candidate(result, "sub-1:2026-10")
    assert quantities_of(cand)["usage:tokens"] == D(expected)


def test_unique_count_treats_number_and_string_as_one_user() -> None:
    # documented decision: 42, "42" and 42.0 are one user; "abc" and 7 are two more
    values = ["42", '"42"', "42.0", '"abc"', "7", '"abc"']
    lines = [raw_event(f"u{i}", '{"user_id": ' + v + "}", etype="user.active")
             for i, v in enumerate(values)]
    result = run_lines(*lines)
    assert buckets(result) == {"rated": 6}
    assert ingested(result, "users") == 3
    assert lines_of(candidate(result, "sub-1:2026-10"))["usage:users"] == D("3.00")


@pytest.mark.parametrize(("meter", "etype", "field", "values", "expected"), [
    pytest.param("peak", "storage.snapshot", "gb", ["3", "10.5", "7"], "10.5", id="max"),
    # latest by event time, not input order: the 12:02 value arrives first
    pytest.param("seats", "seats.set", "count", ["9@12:02", "4@12:00", "6@12:01"], "9",
                 id="latest-by-time"),
    pytest.param("calls", "api.request", None, ["", "", ""], "3", id="count"),
])
def test_aggregations(meter: str, etype: str, field: str | None, values: list[str],
                      expected: str) -> None:
    lines = []
    for i, spec in enumerate(values):
        value, _, hhmm = spec.partition("@")
        time = f"2026-10-05T{hhmm or '12:00'}:{i:02d}Z" if not hhmm else f"2026-10-05T{hhmm}:00Z"
        data = {field: value} if field else {}
        lines.append(event(f"e{i}", etype=etype, data=data, time=time))
    result = run_lines(*lines)
    assert ingested(result, meter) == D(expected)
    assert quantities_of(candidate(result, "sub-1:2026-10"))[f"usage:{meter}"] == D(expected)


def test_one_event_type_feeds_several_meters() -> None:
    result = run_lines(event("m1", etype="api.multi", data={"bytes": 100}),
                       event("m2", etype="api.multi", data={"bytes": "250"}))
    assert buckets(result) == {"rated": 2}
    assert result.stats.contributions == {"requests": 2, "bytes": 2}
    assert (ingested(result, "requests"), ingested(result, "bytes")) == (2, 350)
    cand = candidate(result, "sub-1:2026-10")
    assert lines_of(cand)["usage:requests"] == D("0.02")   # 2 * 0.01
    assert lines_of(cand)["usage:bytes"] == D("0.35")      # 350 * 0.001


def test_one_invalid_meter_value_rejects_the_whole_event() -> None:
    result = run_lines(event("m1", etype="api.multi", data={"bytes": "lots"}))
    assert buckets(result) == {"INVALID_VALUE": 1}
    assert result.stats.contributions == {}
    assert result.exceptions[0].error.startswith("meter 'bytes'")


# -- precedence ------------------------------------------------------------------------------------

PRECEDENCE = [
    pytest.param([event("e1", etype="nope", subject="ghost", time="2026-10-05T12:00:00")],
                 {"INVALID_EVENT": 1}, id="invalid-event-before-unmetered"),
    pytest.param([event("e1", etype="nope", subject="ghost")], {"unmetered": 1},
                 id="unmetered-before-unknown-subject"),
    pytest.param([raw_event("e1", '{"usage": {"tokens": -1}}', etype="nope")],
                 {"unmetered": 1}, id="unmetered-before-invalid-value"),
    pytest.param([raw_event("e1", '{"usage": {"tokens": -1}}', subject="ghost")],
                 {"UNKNOWN_SUBJECT": 1}, id="unknown-subject-before-invalid-value"),
    pytest.param([raw_event("e1", '{"usage": {"tokens": -1}}', subject="s2",
                            time="2026-10-25T00:00:00Z")],
                 {"NO_ACTIVE_SUBSCRIPTION": 1}, id="no-subscription-before-invalid-value"),
    pytest.param([tokens("5"), tokens("-1", subject="ghost", etype="nope")],
                 {"rated": 1, "unmetered": 1}, id="unmetered-before-duplicate"),
    pytest.param([tokens("5"), tokens("5", subject="ghost")],
                 {"rated": 1, "UNKNOWN_SUBJECT": 1}, id="unknown-subject-before-duplicate"),
    pytest.param([tokens("5"), tokens("-1")],
                 {"rated": 1, "INVALID_VALUE": 1}, id="invalid-value-before-duplicate"),
    pytest.param([tokens("5"), tokens("5", subject="s2", time="2026-10-25T00:00:00Z")],
                 {"rated": 1, "NO_ACTIVE_SUBSCRIPTION": 1},
                 id="no-subscription-before-duplicate"),
    pytest.param([tokens("5"), b'{"specversion": "1.0", "id": "t1"'],
                 {"rated": 1, "INVALID_JSON": 1}, id="invalid-json-before-duplicate"),
    pytest.param([tokens("5"), tokens("5", time="2026-10-05T12:00:00")],
                 {"rated": 1, "INVALID_EVENT": 1}, id="invalid-event-before-duplicate"),
]


@pytest.mark.parametrize(("lines", "expected"), PRECEDENCE)
def test_bucket_precedence(lines: list[bytes], expected: dict[str, int]) -> None:
    assert buckets(run_lines(*lines)) == expected


# -- identity and duplicates -------------------------------------------------------------------

DEDUP = [
    pytest.param([tokens("5", "t1"), tokens("7", "t1")], {"rated": 1, "duplicate": 1}, "5",
                 id="later-payload-ignored"),
    pytest.param([tokens("5", "t1"), tokens("5", "t1"), tokens("5", "t1")],
                 {"rated": 1, "duplicate": 2}, "5", id="three-copies"),
    pytest.param([tokens("5", "t1", source="a"), tokens("7", "t1", source="b")],
                 {"rated": 2}, "12", id="same-id-other-source-is-another-event"),
    pytest.param([tokens("5", "c", source="ab"), tokens("7", "bc", source="a")],
                 {"rated": 2}, "12", id="source-id-concatenation-is-not-identity"),
    # A rejected or unmetered event claims nothing: the next copy is judged afresh, so a
    # corrupted copy arriving first cannot make the good one a duplicate.
    pytest.param([tokens("5", "t1", subject="ghost"), tokens("7", "t1")],
                 {"UNKNOWN_SUBJECT": 1, "rated": 1}, "7",
                 id="rejected-for-subject-claims-nothing"),
    pytest.param([tokens("-5", "t1"), tokens("7", "t1")],
                 {"INVALID_VALUE": 1, "rated": 1}, "7", id="rejected-for-value-claims-nothing"),
    pytest.param([tokens("5", "t1", subject="s2", time="2026-10-25T00:00:00Z"),
                  tokens("7", "t1")],
                 {"NO_ACTIVE_SUBSCRIPTION": 1, "rated": 1}, "7",
                 id="rejected-for-subscription-claims-nothing"),
    pytest.param([tokens("5", "t1", etype="nope"), tokens("7", "t1")],
                 {"unmetered": 1, "rated": 1}, "7", id="unmetered-claims-nothing"),
    pytest.param([tokens("-5", "t1"), tokens("-5", "t1"), tokens("7", "t1"), tokens("7", "t1")],
                 {"INVALID_VALUE": 2, "rated": 1, "duplicate": 1}, "7",
                 id="a-rejected-copy-is-rejected-again-then-the-good-one-wins"),
    pytest.param([tokens("5", "t1", time="2026-10-05T12:00:00"), tokens("7", "t1")],
                 {"INVALID_EVENT": 1, "rated": 1}, "7", id="invalid-event-is-not-an-occurrence"),
    pytest.param([b'{"id": "t1", "source": "test", ', tokens("7", "t1")],
                 {"INVALID_JSON": 1, "rated": 1}, "7", id="invalid-json-is-not-an-occurrence"),
]


@pytest.mark.parametrize("batch_size", [1, 1000], ids=["batch-1", "batch-1000"])
@pytest.mark.parametrize(("lines", "expected", "quantity"), DEDUP)
def test_identity_is_source_and_id_first_valid_occurrence_wins(
        lines: list[bytes], expected: dict[str, int], quantity: str | None,
        batch_size: int) -> None:
    result = run_lines(*lines, batch_size=batch_size)
    assert buckets(result) == expected
    assert ingested(result, "tokens") == (None if quantity is None else D(quantity))


def test_dedup_store_replay_of_the_same_origin_is_not_a_duplicate() -> None:
    # a restart re-reading the same offset must process it again (writes are idempotent)
    store = MemoryDedup()
    assert store.claim([("k", ("file", 0, 1)), ("k", ("file", 0, 2))]) == [True, False]
    assert store.claim([("k", ("file", 0, 1)), ("j", ("file", 0, 3))]) == [True, True]
    assert store.claim([("k", ("file", 1, 1))]) == [False]
    assert store.replays == 1  # the second batch's k: a replay recognised, not a duplicate


# -- exception records, blank lines, the watermark ----------------------------------------------

def test_exception_records_keep_the_line_and_its_position() -> None:
    bad_subject = event("e9", subject="ghost", source="crm")
    result = run_lines(b"", event("e1"), bad_subject, b"\xff\xfe")
    # records are keyed by position; within a batch, parse failures are written first
    by_id = {x.exception_id: x for x in result.exceptions}
    assert {k: x.reason for k, x in by_id.items()} == {
        "file:0:3": "UNKNOWN_SUBJECT",
        "file:0:4": "INVALID_JSON",
    }
    first, second = by_id["file:0:3"], by_id["file:0:4"]
    assert first.position == {"source": "file", "partition": 0, "line": 3}
    assert first.raw == bad_subject.decode()
    assert (first.event_id, first.event_source, first.subject) == ("e9", "crm", "ghost")
    assert "'ghost'" in first.error
    assert (second.raw, second.raw_base64) == (None, base64.b64encode(b"\xff\xfe").decode())
    assert (second.event_id, second.subject) == (None, None)


def test_blank_lines_are_skipped_not_read() -> None:
    result = run_lines(b"", b"   ", b"\n", event("e1"), b"\t")
    assert (result.stats.read, result.stats.blank, result.stats.rated) == (1, 4, 1)


def test_rejected_events_never_move_the_watermark() -> None:
    # Junk dated 2099 must not close October: the October event that follows is on the invoice,
    # not an adjustment, and no period after October is billed.
    result = run_lines(
        event("e1", time="2026-10-05T12:00:00Z"),
        event("j1", subject="ghost", time="2099-01-01T00:00:00Z"),
        event("j2", subject="s2", time="2099-01-01T00:00:00Z"),
        raw_event("j3", '{"usage": {"tokens": "x"}}', time="2099-01-01T00:00:00Z"),
        event("j4", etype="nope", time="2099-01-01T00:00:00Z"),
        event("j5", time="2099-01-01T00:00:00"),
        event("e2", time="2026-10-04T12:00:00Z"),
    )
    assert candidate_ids(result) == ["sub-1:2026-10", "sub-2:2026-10"]
    assert quantities_of(candidate(result, "sub-1:2026-10"))["usage:calls"] == 2
    assert result.stats.late_after_close == 0


def test_mixed_stream_reconciles_bucket_by_bucket() -> None:
    lines = [
        event("e1"), event("e1"), event("e2", subject="ghost"), b"{", b"",
        event("e3", time="2026-10-05T12:00:00"), event("e4", etype="nope"),
        event("e5", subject="s2", time="2026-10-01T00:00:00Z"),
        raw_event("e6", '{"usage": {"tokens": false}}'), tokens("3", "e7"),
    ]
    result = run(CATALOG, lines)
    report = reconcile(CATALOG, result)
    assert report.balanced, report.problems
    assert msgspec.to_builtins(report.events) == {
        "read": 9,
        "blank_lines_skipped": 1,
        "rated": 2,
        "duplicates": 1,
        "unmetered": 1,
        "unmetered_not_in_plan": 0,
        "exceptions": {"INVALID_JSON": 1, "INVALID_EVENT": 1, "FUTURE_EVENT": 0,
                       "LATE_BEYOND_RETENTION": 0, "BEFORE_BILLING_START": 0,
                       "UNKNOWN_SUBJECT": 1, "NO_ACTIVE_SUBSCRIPTION": 1, "INVALID_VALUE": 1,
                       "PERIOD_LIMIT_EXCEEDED": 0, "INTERNAL_ERROR": 0, "CONTRACT_REFUSED": 0},
        "exceptions_total": 5,
        "late_after_close": 0,
        "buckets_total": 9,
        "retried": {},
    }


def test_ingestor_batches_are_independent_of_how_lines_are_grouped() -> None:
    lines = [event("e1"), event("e1"), event("e2", subject="ghost"), tokens("2", "e3")]
    whole = Ingestor(CATALOG, IngestConfig(), MemoryDedup(), "file", 0)
    one = whole.process(list(enumerate(lines, start=1)))
    split = Ingestor(CATALOG, IngestConfig(), MemoryDedup(), "file", 0)
    parts = [split.process([(i, line)]) for i, line in enumerate(lines, start=1)]
    assert one.stats.duplicates == sum(p.stats.duplicates for p in parts) == 1
    assert one.ops["sub-1"] == [op for p in parts for op in p.ops.get("sub-1", [])]
    assert [x.exception_id for x in one.exceptions] == [
        x.exception_id for p in parts for x in p.exceptions] == ["file:0:3"]


@pytest.mark.parametrize("time", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_time_outside_utc_range_is_invalid_event_not_a_crash(time: str) -> None:
    from operators.catalog import load_catalog
    from operators.engine import run_engine
    from operators.ingest import IngestConfig

    line = (b'{"specversion":"1.0","id":"x","source":"s","type":"api.request",'
            b'"subject":"acme-prod","time":"' + time.encode() + b'","data":{}}')
    result = run_engine(load_catalog("catalog/example.yaml"), [line, line], IngestConfig())
    assert [e.reason for e in result.exceptions] == ["INVALID_EVENT", "INVALID_EVENT"]
    assert "outside the supported range" in result.exceptions[0].error
    assert result.stats.duplicates == 0  # an invalid envelope registers no identity
