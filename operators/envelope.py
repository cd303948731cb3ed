"""Judging one raw line as a CloudEvent: the rules a line must pass before it is an event.

`judge(raw)` returns the decoded event with its time in UTC, or a `Rejection` naming the reason
(INVALID_JSON or INVALID_EVENT) and what is wrong. It never raises for any input: every limit a
hostile producer could reach (size, nesting, duplicate keys, times no datetime can hold) is
tested here before anything else uses the event. This is the one copy of the envelope rules;
every way in (file, Kafka, later HTTP) calls it.

Duplicate keys are refused because they are ambiguous: msgspec (like most parsers) keeps the last
value, others keep the first, so two systems reading the same bytes would see different events.
meterwax accepts I-JSON (RFC 7493), which forbids them. The check is exact and usually cheap: in
a line with no backslash no string can hold a quote, so once whitespace is removed every `":`
ends exactly one key, and comparing that count with the keys the decoder kept proves there was
no duplicate. Equal counts also prove there are no extension attributes (each would be a key
the struct did not keep). Any other line is re-read by the standard library with a hook that
sees every key.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import msgspec

from operators.limits import MAX_DEPTH, MAX_LINE_BYTES, MAX_TIME, MIN_TIME
from schemas.events import EVENT_DECODER, REQUIRED_ATTRIBUTES, CloudEvent
from schemas.records import INVALID_EVENT, INVALID_JSON, Reason

_GENERIC = msgspec.json.Decoder()
_T = TypeVar("_T")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_UTF8_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n"  # JSON's whitespace


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    error: str
    event: CloudEvent | None = None  # when it decoded, so the record can name it


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def judge(raw: bytes) -> CloudEvent | Rejection:
    """The event in `raw` (its `time` converted to UTC), or why it is not one."""
    if len(raw) > MAX_LINE_BYTES:
        return Rejection(INVALID_JSON, f"the line is longer than the limit of {MAX_LINE_BYTES} "
                                       "bytes (1 MiB)")
    try:
        # The common path, inlined: this runs once per event.
        event = EVENT_DECODER.decode(raw)
    except Exception:  # every failure of the fast path is judged below, in bucket order
        decoded = _judge_undecodable(raw)
        if isinstance(decoded, Rejection):
            return decoded
        event = decoded
    at = event.time
    tz = at.tzinfo
    if tz is None:
        return Rejection(INVALID_EVENT,
                         "invalid CloudEvent: `time` has no UTC offset - at `$.time`", event)
    if tz is not UTC:
        try:
            at = at.astimezone(UTC)
        except OverflowError:
            # 0001-01-01T00:00:00+01:00 has no UTC instant a datetime can hold.
            return _out_of_range(event.time, event)
        event = msgspec.structs.replace(event, time=at)
    if not MIN_TIME <= at < MAX_TIME:
        return _out_of_range(at, event)
    if raw.count(b"{") == 2 and b"[" not in raw:
        # Only the envelope and `data` are objects, so `data` holds only scalars (a brace
        # inside a string only makes the count larger and takes the general walk).
        shape = len(event.data)
    else:
        walked = _data_shape(event.data)
        if walked is None:
            return _too_deep()
        shape = walked
    # Proof that no key repeats (module docstring), inlined for the same reason.
    if b"\\" in raw or raw.translate(None, _WHITESPACE).count(b'":') != (
            REQUIRED_ATTRIBUTES + shape + (event.datacontenttype is not None)
            + (event.dataschema is not None)):
        duplicate = _duplicate_key(raw)
        if duplicate is not None:
            return duplicate
    return event


def _schema_error(raw: bytes, exc: msgspec.ValidationError) -> CloudEvent | Rejection:
    """msgspec refused the line while parsing it. Decide, in bucket order, whether it is not
    JSON, ambiguous JSON (a duplicate key decides before any schema rule), or JSON that is not a
    CloudEvent. One case is not a refusal: an integer beyond 64 bits, which msgspec cannot hold
    but JSON allows. That line is read again by the standard library, with every number an
    exact Decimal, so a meter reading it judges the value (INVALID_VALUE, naming the limit)."""
    malformed_ = malformed(raw)
    if malformed_ is not None:
        return malformed_
    if not str(exc).startswith("Integer value out of range"):
        return _duplicate_key(raw) or Rejection(INVALID_EVENT, f"invalid CloudEvent: {exc}")
    doc = _strict_parse(raw, parse_int=Decimal, parse_float=_exact_number,
                        parse_constant=_no_constant)
    if isinstance(doc, Rejection):
        return doc
    try:
        return msgspec.convert(doc, CloudEvent)
    except msgspec.ValidationError as invalid:
        return Rejection(INVALID_EVENT, f"invalid CloudEvent: {invalid}")


def _exact_number(text: str) -> Decimal:
    """Decimal(text), or a signed infinity when its exponent is beyond what Decimal holds."""
    try:
        return Decimal(text)
    except InvalidOperation:
        return Decimal("-Infinity") if text.startswith("-") else Decimal("Infinity")


_SAFE_DECODER = msgspec.json.Decoder(CloudEvent, float_hook=_exact_number)


def _no_constant(name: str) -> Any:
    msg = f"{name} is not a JSON number"
    raise ValueError(msg)


def _judge_undecodable(raw: bytes) -> CloudEvent | Rejection:
    try:
        return _decoded(raw, _decode_event)
    except msgspec.ValidationError as exc:
        return _schema_error(raw, exc)


def _decode_event(raw: bytes) -> CloudEvent:
    try:
        return EVENT_DECODER.decode(raw)
    except InvalidOperation:
        # A number whose exponent Decimal cannot even represent (1e99999999999999999999):
        # read again with every such number as an infinity, which any meter refuses as out of
        # range. Only these rare lines pay for the slower hook.
        return _SAFE_DECODER.decode(raw)


def _decoded(raw: bytes, decode: Callable[[bytes], _T]) -> _T | Rejection:
    """`decode(raw)`, or the INVALID_JSON it is. A msgspec.ValidationError (well-formed so far,
    but not the expected shape) is the caller's to judge."""
    try:
        return decode(raw)
    except msgspec.ValidationError:
        raise
    except msgspec.DecodeError as exc:
        return Rejection(INVALID_JSON, _not_json(raw, exc))
    except UnicodeDecodeError as exc:
        # msgspec reports invalid UTF-8 inside a string this way rather than as a DecodeError.
        return Rejection(INVALID_JSON, f"not valid UTF-8 JSON: {exc}")
    except RecursionError:
        return _too_deep()


def malformed(raw: bytes) -> Rejection | None:
    """The INVALID_JSON `raw` is (not JSON, not UTF-8, nested too deep), or None when it is
    well-formed JSON of any shape."""
    try:
        result = _decoded(raw, _GENERIC.decode)
    except msgspec.ValidationError:
        return None  # well-formed, but beyond what msgspec holds (an integer of 20 digits)
    return result if isinstance(result, Rejection) else None


def _not_json(raw: bytes, exc: Exception) -> str:
    if raw.startswith(_UTF16_BOMS):
        return "not valid JSON: the input is UTF-16 (it starts with a byte order mark); " \
               "meterwax reads UTF-8 JSON lines"
    if raw.startswith(_UTF8_BOM):
        return "not valid JSON: a UTF-8 byte order mark is only allowed at the start of the input"
    return f"not valid JSON: {exc}"


def _too_deep() -> Rejection:
    return Rejection(INVALID_JSON, f"JSON nested more than {MAX_DEPTH} levels deep")


def _out_of_range(at: datetime, event: CloudEvent) -> Rejection:
    return Rejection(INVALID_EVENT, f"invalid CloudEvent: `time` {at.isoformat()} is outside the "
                                    f"supported range {MIN_TIME.date()} .. {MAX_TIME.date()} "
                                    "(UTC, end exclusive) - at `$.time`", event)


def _data_shape(data: dict[str, Any]) -> int | None:
    """The number of keys in `data` at every level, or None when it nests deeper than MAX_DEPTH
    (counting the envelope as level 1). Iterative: depth is what is being bounded."""
    keys = 0
    stack: list[tuple[Any, int]] = [(data, 2)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return None
        if isinstance(node, dict):
            keys += len(node)
            values: Any = node.values()
        else:
            values = node
        for value in values:
            if isinstance(value, dict | list):
                stack.append((value, depth + 1))
    return keys


def _duplicate(key: str) -> Rejection:
    shown = key if len(key) <= 80 else f"{key[:60]}... ({len(key)} characters)"
    return Rejection(INVALID_JSON, f"duplicate key {shown!r}: the line is ambiguous (parsers "
                                   "disagree on which value counts); keys must be unique "
                                   "(I-JSON, RFC 7493)")


def _check_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def _duplicate_key(raw: bytes) -> Rejection | None:
    # Numbers stay text: the standard library would otherwise convert them (and refuse
    # integers of more than 4300 digits), and only the keys matter here.
    doc = _strict_parse(raw, parse_int=str, parse_float=str, parse_constant=str)
    return doc if isinstance(doc, Rejection) else None


def _strict_parse(raw: bytes, *, parse_int: Callable[[str], Any],
                  parse_float: Callable[[str], Any], parse_constant: Callable[[str], Any]
                  ) -> Any:
    """The standard library's reading of `raw`, seeing every key (a repeated one is refused),
    or the Rejection it is. msgspec accepted the line before either caller gets here; the
    standard library disagreeing is itself a reason to refuse it rather than guess which
    reading is right."""
    try:
        return json.loads(raw, object_pairs_hook=_check_pairs, parse_int=parse_int,
                          parse_float=parse_float, parse_constant=parse_constant)
    except _Duplicate as dup:
        return _duplicate(dup.key)
    except RecursionError:
        return _too_deep()
    except ValueError as exc:
        return Rejection(INVALID_JSON, f"not valid JSON: {exc}")
