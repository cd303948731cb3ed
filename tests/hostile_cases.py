"""Hostile event lines, shared by tests/test_hostile.py (the engine) and
tests/test_stream_hostile.py (Kafka, Redis and ClickHouse).

One catalog (`CATALOG_DOC`), a valid base stream over October and November 2026
(`base_lines`), and the table of hostile lines (`HOSTILE`): each one names the reason it must
land in and fragments its error message must contain. Every hostile line is otherwise a good
event for a real subject with an active subscription, dated `LATE_TIME`: just before the
processing clock `NOW` and after every base event. A hostile line that wrongly moved the
watermark would therefore close December and bill it, which the tests see as extra candidates.

Lines are written as JSON text by hand (`line`), never through json.dumps, so number text,
key spelling and bytes reach the decoder exactly as written here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from conftest import DEFAULT_METERS

from operators.clock import fixed_clock
from operators.ingest import IngestConfig
from operators.limits import MAX_ATTRIBUTE_CHARS, MAX_DEPTH, MAX_LINE_BYTES, RAW_KEEP_BYTES
from schemas.records import (
    BEFORE_BILLING_START,
    FUTURE_EVENT,
    INVALID_EVENT,
    INVALID_JSON,
    INVALID_VALUE,
    UNKNOWN_SUBJECT,
    ExceptionRecord,
)

# The processing clock of every hostile test ("today"), and the time of the hostile lines.
NOW = datetime(2026, 12, 2, tzinfo=UTC)
LATE_TIME = "2026-12-01T12:00:00Z"
HORIZON = NOW + timedelta(hours=24)  # IngestConfig's default max_future

SOURCE = "svc"  # the base stream's CloudEvents source

# -- the catalog ------------------------------------------------------------------------------

# The suite's usual meters, plus one event type feeding two meters.
METERS: tuple[dict[str, Any], ...] = (
    *DEFAULT_METERS,
    {"id": "requests", "event_type": "api.multi", "aggregation": "count"},
    {"id": "bytes", "event_type": "api.multi", "aggregation": "sum", "value": "bytes"},
)


def _per_unit(meter: str, price: str) -> dict[str, str]:
    return {"meter": meter, "model": "per_unit", "unit_price": price}


def _customer(cid: str, subjects: Sequence[str], sub_id: str, plan: str,
              start: str = "2026-10-01T00:00:00Z") -> dict[str, Any]:
    return {"id": cid, "legal_entity": "le-us", "subjects": list(subjects),
            "tax_registration": f"TAX-{cid}", "payment_terms_days": 30,
            "subscriptions": [{"id": sub_id, "plan": plan, "start": start, "end": None}]}


CATALOG_DOC: dict[str, Any] = {
    # globex starts in September; the events begin in October, which is where billing starts.
    "billing_start": "2026-10",
    "legal_entities": [{
        "id": "le-us",
        "gl_accounts": {"receivable": "1200", "usage_revenue": "4000",
                        "subscription_revenue": "4010", "deferred_revenue": "2400"},
        "currencies": ["USD"],
    }],
    "meters": [dict(m) for m in METERS],
    "plans": [
        {"id": "std", "currency": "USD",
         "fixed_fees": [{"id": "base", "amount": "10.00", "revenue_recognition": "ratable"}],
         "charges": [_per_unit("calls", "0.01"), _per_unit("tokens", "0.001"),
                     _per_unit("peak", "1.00"), _per_unit("users", "2.00"),
                     _per_unit("seats", "5.00"), _per_unit("requests", "0.01"),
                     _per_unit("bytes", "0.001")]},
        # initech's own plan, so a test can make exactly its tokens charge fail to rate
        {"id": "victim", "currency": "USD", "fixed_fees": [],
         "charges": [_per_unit("calls", "0.01"), _per_unit("tokens", "0.001")]},
        # one unit of tokens is one dollar: the period quantity reaches 10^20 first
        {"id": "whale", "currency": "USD", "fixed_fees": [],
         "charges": [_per_unit("tokens", "1.00")]},
        # ten dollars a unit: the period amount reaches 10^20 before the quantity does
        {"id": "pricey", "currency": "USD", "fixed_fees": [],
         "charges": [_per_unit("tokens", "10.00")]},
    ],
    "customers": [
        _customer("acme", ["acme-prod", "acme-dev"], "sub-acme", "std"),
        _customer("globex", ["globex-main"], "sub-globex", "std", start="2026-09-01T00:00:00Z"),
        _customer("initech", ["initech-app"], "sub-initech", "victim"),
        _customer("whale", ["whale-1"], "sub-whale", "whale"),
        _customer("pricey", ["pricey-1"], "sub-pricey", "pricey"),
    ],
}

VICTIM_SUB = "sub-initech"


def config(**kwargs: Any) -> IngestConfig:
    """The hostile tests' ingest config: always judged as of NOW, never the wall clock."""
    kwargs.setdefault("clock", fixed_clock(NOW))
    return IngestConfig(**kwargs)


# -- writing lines ----------------------------------------------------------------------------

def q(text: str) -> str:
    """A JSON string literal (non-ASCII escaped, so the line stays plain ASCII)."""
    return json.dumps(text)


def line(eid: str = "hostile-1", etype: str = "llm.completion", subject: str = "acme-prod",
         time: str = LATE_TIME, data: str = '{"usage":{"tokens":5}}', source: str = "hostile",
         *, raw: dict[str, str] | None = None, before: Sequence[tuple[str, str]] = (),
         after: Sequence[tuple[str, str]] = ()) -> bytes:
    """One compact event line. `data` is JSON text, verbatim. `raw` replaces an attribute's JSON
    text (its value as written); `before` and `after` add (key text, value text) pairs, keys
    written as given (with their quotes), around the standard attributes."""
    values = {"specversion": q("1.0"), "id": q(eid), "source": q(source), "type": q(etype),
              "subject": q(subject), "time": q(time), "data": data}
    values.update(raw or {})
    pairs = [*before, *((q(k), v) for k, v in values.items()), *after]
    return ("{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}").encode()


def tokens(value: str, **kwargs: Any) -> bytes:
    """An llm.completion event whose usage.tokens is the JSON text `value`."""
    return line(data='{"usage":{"tokens":' + value + "}}", **kwargs)


def nested(levels: int, leaf: str = "1", opener: str = '{"n":', closer: str = "}") -> str:
    return opener * levels + leaf + closer * levels


def depth_line(total_depth: int, etype: str = "api.request", eid: str = "hostile-deep",
               arrays: bool = False) -> bytes:
    """An event whose JSON is `total_depth` levels deep, counting the envelope object as level 1
    and `data` as level 2 (the counting of operators/envelope.py)."""
    opener, closer = ("[", "]") if arrays else ('{"n":', "}")
    return line(eid=eid, etype=etype,
                data='{"x":' + nested(total_depth - 2, "1", opener, closer) + "}")


def sized_line(size: int, eid: str = "hostile-long") -> bytes:
    """A good tokens event padded (inside `data`) to exactly `size` bytes."""
    empty = line(eid=eid, data='{"usage":{"tokens":5},"pad":""}')
    pad = size - len(empty)
    assert pad >= 0
    return line(eid=eid, data='{"usage":{"tokens":5},"pad":"' + "x" * pad + '"}')


def with_bytes(template: bytes, marker: bytes, replacement: bytes) -> bytes:
    assert template.count(marker) == 1
    return template.replace(marker, replacement)


NOTE = line(data='{"usage":{"tokens":5},"note":"@@"}')  # "@@" is replaced by hostile bytes


# -- the base stream --------------------------------------------------------------------------

BASE_START = datetime(2026, 10, 1, 0, 10, tzinfo=UTC)
BASE_END = datetime(2026, 11, 25, tzinfo=UTC)
_BASE_SUBJECTS = ("acme-prod", "acme-dev", "globex-main", "initech-app")
_STD_KINDS = ("llm.completion", "api.request", "storage.snapshot", "user.active", "seats.set",
              "api.multi")


def rfc3339(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def base_event(i: int, n: int) -> bytes:
    """The i-th of n valid events, spread evenly over BASE_START .. BASE_END in time order, every
    meter used. Up to 79,000 events they are at least a minute apart: one event per window."""
    at = BASE_START + (BASE_END - BASE_START) * i / n
    at = at.replace(microsecond=0) + timedelta(seconds=i % 7)
    subject = _BASE_SUBJECTS[i % 4]
    kinds = ("llm.completion", "api.request") if subject == "initech-app" else _STD_KINDS
    etype = kinds[(i // 4) % len(kinds)]
    value = str(100 + i * 37 % 900) if i % 3 else f'"{i % 50}.25"'
    data = {
        "llm.completion": '{"usage":{"tokens":' + value + "}}",
        "api.request": '{"path":"/v1/x"}',
        "storage.snapshot": f'{{"gb":"{i % 40}.5"}}',
        "user.active": f'{{"user_id":"u{i % 6}"}}',
        "seats.set": f'{{"count":{1 + i % 9}}}',
        "api.multi": f'{{"bytes":{i * 1000}}}',
    }[etype]
    return line(eid=f"base-{i:06d}", etype=etype, subject=subject, time=rfc3339(at), data=data,
                source=SOURCE)


def base_lines(n: int = 48) -> list[bytes]:
    return [base_event(i, n) for i in range(n)]


def series(subject: str, count: int, value: str = "999999999999999999",
           start: datetime = datetime(2026, 10, 1, tzinfo=UTC), prefix: str = "big"
           ) -> list[bytes]:
    """`count` tokens events of `value` for `subject`, one second apart from `start`."""
    return [tokens(value, eid=f"{prefix}-{subject}-{k:04d}", subject=subject,
                   time=rfc3339(start + timedelta(seconds=k)), source=SOURCE)
            for k in range(count)]


# -- the hostile table --------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    line: bytes
    reason: str
    fragments: tuple[str, ...] = ()


def _case(cid: str, raw: bytes, reason: str, *fragments: str) -> Case:
    # Each case its own identity, so that, all in one stream, none is a duplicate of another.
    unique = raw.replace(b'"id":"hostile-1"', b'"id":' + q(f"hostile-{cid}").encode(), 1)
    return Case(cid, unique, reason, fragments)


_LONG = "a" * (MAX_ATTRIBUTE_CHARS + 1)
_FIVE_THOUSAND_DIGITS = "9" * 5000
_LIMIT = str(MAX_LINE_BYTES)

HOSTILE: list[Case] = [
    # -- nesting ----------------------------------------------------------------------------
    _case("nested-33-levels", depth_line(MAX_DEPTH + 1), INVALID_JSON, "nested", "32"),
    _case("nested-1000-levels", line(data=nested(1000, "1")), INVALID_JSON, "nested", "32"),
    _case("nested-100000-levels", line(data=nested(100_000, "1")), INVALID_JSON,
          "nested", "32"),
    _case("nested-100000-arrays", line(data='{"n":' + nested(100_000, "1", "[", "]") + "}"),
          INVALID_JSON, "nested", "32"),
    _case("nested-extension-1000-levels",
          line(after=[('"xdeep"', nested(1000, "1"))]), INVALID_JSON, "nested", "32"),
    # -- size -------------------------------------------------------------------------------
    _case("line-1-MiB-plus-1", sized_line(MAX_LINE_BYTES + 1), INVALID_JSON, _LIMIT),
    _case("line-3-MiB-not-utf8", b"\xff" * (3 * MAX_LINE_BYTES), INVALID_JSON, _LIMIT),
    # -- duplicate keys ---------------------------------------------------------------------
    _case("duplicate-subject", line(before=[('"subject"', q("nobody"))]), INVALID_JSON,
          "duplicate key"),
    _case("duplicate-subject-escaped", line(before=[('"subj\\u0065ct"', q("nobody"))]),
          INVALID_JSON, "duplicate key"),
    _case("duplicate-id", line(before=[('"id"', q("other"))]), INVALID_JSON, "duplicate key"),
    _case("duplicate-time", line(before=[('"time"', q("2099-01-01T00:00:00Z"))]),
          INVALID_JSON, "duplicate key"),
    _case("duplicate-specversion", line(before=[('"specversion"', q("0.3"))]), INVALID_JSON,
          "duplicate key"),
    _case("duplicate-data", line(before=[('"data"', '{"usage":{"tokens":1e30}}')]),
          INVALID_JSON, "duplicate key"),
    _case("duplicate-extension", line(after=[('"xtrace"', "1"), ('"xtrace"', "2")]),
          INVALID_JSON, "duplicate key"),
    _case("duplicate-data-key", line(data='{"tokens":1,"tokens":5}'), INVALID_JSON,
          "duplicate key"),
    _case("duplicate-value-key", tokens('1,"tokens":5'), INVALID_JSON, "duplicate key"),
    _case("duplicate-value-key-escaped", line(data='{"usage":{"tokens":1,"t\\u006fkens":5}}'),
          INVALID_JSON, "duplicate key"),
    _case("duplicate-non-ascii-key-escaped",
          line(data='{"usage":{"tokens":5},"caf\\u00e9":1,"café":2}'), INVALID_JSON,
          "duplicate key"),
    _case("duplicate-key-in-a-list", line(data='{"usage":{"tokens":5},"l":[{"a":1,"a":2}]}'),
          INVALID_JSON, "duplicate key"),
    _case("duplicate-key-10-levels-down",
          line(data='{"usage":{"tokens":5},"n":' + nested(8, '{"k":1,"k":2}') + "}"),
          INVALID_JSON, "duplicate key"),
    _case("duplicate-key-pretty-printed",
          line(raw={"subject": ' "nobody" , "subject" : "acme-prod"'}), INVALID_JSON,
          "duplicate key"),
    # -- encoding ---------------------------------------------------------------------------
    _case("invalid-utf8-byte", with_bytes(NOTE, b"@@", b"\xff"), INVALID_JSON),
    _case("overlong-utf8", with_bytes(NOTE, b"@@", b"\xc0\xaf"), INVALID_JSON),
    _case("utf8-encoded-surrogate", with_bytes(NOTE, b"@@", b"\xed\xa0\x80"), INVALID_JSON),
    _case("truncated-utf8-sequence", with_bytes(NOTE, b"@@", b"\xe2\x82"), INVALID_JSON),
    _case("latin1-subject", with_bytes(line(subject="acme-pr@@d"), b"@@", b"\xf6"),
          INVALID_JSON),
    _case("lone-high-surrogate-escape", with_bytes(NOTE, b"@@", b"\\ud800"), INVALID_JSON),
    _case("lone-low-surrogate-escape", with_bytes(NOTE, b"@@", b"\\udfff"), INVALID_JSON),
    _case("reversed-surrogate-pair", with_bytes(NOTE, b"@@", b"\\udc00\\ud800"), INVALID_JSON),
    _case("lone-surrogate-in-subject", line(raw={"subject": '"acme-prod\\ud800"'}),
          INVALID_JSON),
    _case("nul-in-a-string", with_bytes(NOTE, b"@@", b"a\x00b"), INVALID_JSON),
    _case("nul-between-tokens", line().replace(b',"data"', b',\x00"data"'), INVALID_JSON),
    _case("nul-after-the-object", line() + b"\x00", INVALID_JSON),
    _case("raw-tab-in-a-string", with_bytes(NOTE, b"@@", b"a\tb"), INVALID_JSON),
    _case("raw-control-char-in-a-string", with_bytes(NOTE, b"@@", b"\x01"), INVALID_JSON),
    _case("utf8-bom-mid-input", b"\xef\xbb\xbf" + line(), INVALID_JSON),
    _case("utf16-with-bom", line().decode().encode("utf-16"), INVALID_JSON),
    _case("utf16-le-without-bom", line().decode().encode("utf-16-le"), INVALID_JSON),
    # -- time -------------------------------------------------------------------------------
    _case("time-9999", line(time="9999-12-31T23:59:59Z"), INVALID_EVENT, "supported range"),
    _case("time-9999-west-of-utc", line(time="9999-12-31T23:59:59-01:00"), INVALID_EVENT,
          "supported range"),
    _case("time-0001-east-of-utc", line(time="0001-01-01T00:00:00+01:00"), INVALID_EVENT,
          "supported range"),
    _case("time-1969", line(time="1969-12-31T23:59:59Z"), INVALID_EVENT, "supported range"),
    _case("time-1969-last-microsecond", line(time="1969-12-31T23:59:59.999999Z"),
          INVALID_EVENT, "supported range"),
    _case("time-2200-exactly", line(time="2200-01-01T00:00:00Z"), INVALID_EVENT,
          "supported range"),
    _case("time-2200-by-its-offset", line(time="2199-12-31T23:30:00-00:30"), INVALID_EVENT,
          "supported range"),
    # -- attribute lengths ------------------------------------------------------------------
    _case("id-1025-chars", line(eid=_LONG), INVALID_EVENT, "1024"),
    _case("source-1025-chars", line(source=_LONG), INVALID_EVENT, "1024"),
    _case("type-1025-chars", line(etype=_LONG), INVALID_EVENT, "1024"),
    _case("subject-1025-chars", line(subject=_LONG), INVALID_EVENT, "1024"),
    _case("subject-100000-chars", line(subject="s" * 100_000), INVALID_EVENT, "1024"),
    # -- the future -------------------------------------------------------------------------
    _case("time-2099", line(time="2099-01-01T00:00:00Z"), FUTURE_EVENT, "24h"),
    _case("time-2199", line(time="2199-12-31T23:59:59.999999Z"), FUTURE_EVENT, "24h"),
    _case("one-second-past-the-horizon", line(time=rfc3339(HORIZON + timedelta(seconds=1))),
          FUTURE_EVENT, "24h"),
    # a base event's identity: the future is judged before duplicates
    _case("future-copy-of-a-base-event",
          line(eid="base-000001", source=SOURCE, time="2099-01-01T00:00:00Z"), FUTURE_EVENT,
          "24h"),
    # -- values: sum ------------------------------------------------------------------------
    _case("sum-1e5000", tokens("1e5000"), INVALID_VALUE, "tokens", "10^18"),
    _case("sum-1e999999999", tokens("1e999999999"), INVALID_VALUE, "tokens", "10^18"),
    _case("sum-minus-1e999999999", tokens("-1e999999999"), INVALID_VALUE, "tokens",
          "negative"),
    _case("sum-1e-999999999", tokens("1e-999999999"), INVALID_VALUE, "tokens",
          "9 fractional digits"),
    _case("sum-ten-fractional-digits", tokens("0.0000000001"), INVALID_VALUE, "tokens",
          "9 fractional digits"),
    _case("sum-ten-fractional-digits-string", tokens('"1.0000000001"'), INVALID_VALUE,
          "tokens", "9 fractional digits"),
    _case("sum-10^18", tokens("1000000000000000000"), INVALID_VALUE, "tokens", "10^18"),
    _case("sum-1E+18", tokens("1E+18"), INVALID_VALUE, "tokens", "10^18"),
    _case("sum-5000-digit-integer", tokens(_FIVE_THOUSAND_DIGITS), INVALID_VALUE, "tokens",
          "10^18"),
    _case("sum-5000-digit-negative-integer", tokens("-" + _FIVE_THOUSAND_DIGITS),
          INVALID_VALUE, "tokens", "negative"),
    _case("sum-2^64", tokens(str(2**64)), INVALID_VALUE, "tokens", "10^18"),
    _case("sum-1e5000-string", tokens('"1e5000"'), INVALID_VALUE, "tokens", "10^18"),
    _case("sum-NaN-string", tokens('"NaN"'), INVALID_VALUE, "tokens"),
    _case("sum-sNaN-string", tokens('"sNaN"'), INVALID_VALUE, "tokens"),
    _case("sum-Infinity-string", tokens('"Infinity"'), INVALID_VALUE, "tokens"),
    _case("sum-minus-Infinity-string", tokens('"-Infinity"'), INVALID_VALUE, "tokens"),
    _case("sum-5000-digit-string", tokens(q(_FIVE_THOUSAND_DIGITS)), INVALID_VALUE, "tokens"),
    # -- values: max, latest, unique_count ---------------------------------------------------
    _case("max-1e5000", line(etype="storage.snapshot", data='{"gb":1e5000}'), INVALID_VALUE,
          "peak", "10^18"),
    _case("max-10^18", line(etype="storage.snapshot", data='{"gb":1000000000000000000}'),
          INVALID_VALUE, "peak", "10^18"),
    _case("max-5000-digit-integer",
          line(etype="storage.snapshot", data='{"gb":' + _FIVE_THOUSAND_DIGITS + "}"),
          INVALID_VALUE, "peak", "10^18"),
    _case("latest-1e999999999", line(etype="seats.set", data='{"count":1e999999999}'),
          INVALID_VALUE, "seats", "10^18"),
    _case("latest-ten-fractional-digits", line(etype="seats.set", data='{"count":1e-10}'),
          INVALID_VALUE, "seats", "9 fractional digits"),
    _case("latest-5000-digit-integer",
          line(etype="seats.set", data='{"count":' + _FIVE_THOUSAND_DIGITS + "}"),
          INVALID_VALUE, "seats", "10^18"),
    _case("unique-1e5000", line(etype="user.active", data='{"user_id":1e5000}'),
          INVALID_VALUE, "users", "1024"),
    _case("unique-1e-5000", line(etype="user.active", data='{"user_id":1e-5000}'),
          INVALID_VALUE, "users", "1024"),
    _case("unique-5000-digit-integer",
          line(etype="user.active", data='{"user_id":' + _FIVE_THOUSAND_DIGITS + "}"),
          INVALID_VALUE, "users", "1024"),
    _case("unique-1025-char-string", line(etype="user.active", data='{"user_id":' + q(_LONG)
                                          + "}"), INVALID_VALUE, "users", "1024"),
]

# Lines at or just inside a limit: judged like any other event, into this bucket.
EDGES: list[tuple[str, bytes, str]] = [
    ("nested-32-levels", depth_line(MAX_DEPTH), "rated"),
    ("nested-32-levels-of-arrays", depth_line(MAX_DEPTH, arrays=True), "rated"),
    ("line-exactly-1-MiB", sized_line(MAX_LINE_BYTES), "rated"),
    ("id-1024-chars", line(eid="i" * MAX_ATTRIBUTE_CHARS), "rated"),
    ("source-1024-chars", line(source="s" * MAX_ATTRIBUTE_CHARS), "rated"),
    ("subject-1024-chars", line(subject="s" * MAX_ATTRIBUTE_CHARS), UNKNOWN_SUBJECT),
    ("type-1024-chars", line(etype="t" * MAX_ATTRIBUTE_CHARS), "unmetered"),
    ("time-1970-epoch", line(time="1970-01-01T00:00:00Z"), BEFORE_BILLING_START),
    ("time-2199-in-range-via-offset", line(time="2200-01-01T00:30:00+01:00"), FUTURE_EVENT),
    ("time-exactly-at-the-horizon", line(time=rfc3339(HORIZON)), "rated"),
    ("escaped-key-without-a-duplicate", line().replace(b'"subject"', b'"subj\\u0065ct"'),
     "rated"),
    ("escaped-bom-inside-a-string", with_bytes(NOTE, b"@@", b"\\ufeff"), "rated"),
    ("valid-surrogate-pair-escape", with_bytes(NOTE, b"@@", b"\\ud83d\\ude00"), "rated"),
    ("crlf-line-ending", line() + b"\r", "rated"),
    ("pretty-printed", line().replace(b",", b", ").replace(b":", b" : ", 3), "rated"),
    ("value-just-below-10^18", tokens("999999999999999999"), "rated"),
    ("value-nine-fractional-digits", tokens("0.000000001"), "rated"),
    ("value-1e-9", tokens("1e-9"), "rated"),
    ("value-trailing-zeros-beyond-nine-places", tokens("1.00000000000000000000"), "rated"),
    ("unique-1024-char-string", line(etype="user.active", data='{"user_id":' +
                                     q("u" * MAX_ATTRIBUTE_CHARS) + "}"), "rated"),
]


# -- reading records back -----------------------------------------------------------------------

def kept(raw: bytes) -> bytes:
    """What an exception record keeps of an input line."""
    return raw[:RAW_KEEP_BYTES] if len(raw) > MAX_LINE_BYTES else raw


def record_bytes(exc: ExceptionRecord) -> bytes:
    """The bytes an exception record holds: `raw` as UTF-8, or `raw_base64` decoded."""
    if exc.raw is not None:
        assert exc.raw_base64 is None, exc.exception_id
        return exc.raw.encode("utf-8")
    assert exc.raw_base64 is not None, f"{exc.exception_id} keeps neither raw nor raw_base64"
    return base64.b64decode(exc.raw_base64, validate=True)


STORE_LIMIT = Decimal(10) ** 20


def storable(value: Decimal) -> bool:
    """Whether ClickHouse Decimal(38, 18) holds `value` exactly: below 10^20 in magnitude, at
    most 18 significant fractional digits. Exact for any exponent (no arithmetic)."""
    if not value.is_finite() or abs(value) >= STORE_LIMIT:
        return False
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    if exponent >= 0 or not any(digits):
        return True
    trailing = len(digits) - len(bytes(digits).rstrip(b"\0"))
    return -exponent - trailing <= 18
