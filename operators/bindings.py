"""The CloudEvents protocol bindings, pure: every way an event arrives becomes one JSON line.

meterwax judges an event as one structured-mode JSON document (operators/envelope.py `judge`,
the one copy of the envelope rules). The bindings carry the same event in other shapes:
- Kafka binary content mode (CloudEvents Kafka binding 1.0): the attributes in `ce_<name>`
  headers, the `content-type` header as `datacontenttype`, the message value as `data`;
- HTTP binary mode (HTTP binding 1.0): the same in `ce-<name>` headers, percent-encoded, with
  the body as `data`;
- HTTP batched mode (`application/cloudevents-batch+json`): a JSON array of structured events.

`structured_from_binary` rebuilds the structured document from a binary message, so `judge`
sees the exact event the headers and value describe, and every reason and message is the same
as for a structured line. It refuses, rather than guesses, wherever the binding is ambiguous: an
attribute in two headers, a header name that is not an attribute name, a header that is not
UTF-8, a `ce_data` header, a value that is not exactly one JSON value (spliced unchecked,
`{"a":1},"subject":"other"` would otherwise rewrite the envelope), data that is not JSON.

Which mode a Kafka message is in is decided per message (`kafka_mode`). The binding says a
`content-type` starting `application/cloudevents` means structured and anything else binary; but
the official Python SDK's own structured messages carry `content-type: application/json`, and
meterwax's producers have always sent structured values without headers. So: a message with a
`ce_specversion` header is binary unless its content-type says structured; every other message
is structured, as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal
from urllib.parse import unquote_to_bytes

import msgspec

from operators.envelope import Rejection, malformed
from operators.limits import MAX_BATCH_EVENTS, MAX_LINE_BYTES
from schemas.records import INVALID_EVENT, INVALID_JSON

KAFKA_PREFIX = "ce_"
HTTP_PREFIX = "ce-"
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
# CloudEvents 1.0: attribute names are lower-case ASCII letters and digits, at most 20 of them.
_NAME = re.compile(r"[a-z0-9]{1,20}")
_ENCODE = msgspec.json.Encoder()
_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])

Mode = Literal["structured", "binary"]
# A Kafka message's headers as confluent-kafka gives them: (name, value) in arrival order,
# repeated names kept, None for a header without a value. The one definition the reader,
# ingest and retry share.
Headers = Sequence[tuple[str, bytes | None]]


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type value, lower-cased, without its parameters."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str | None) -> bool:
    """Whether `data` of this content type is JSON (`application/json`, `text/json` or any
    `+json` suffix); no content type at all is taken as JSON, which is what meters read."""
    mt = media_type(content_type)
    return mt in ("", "application/json", "text/json") or mt.endswith("+json")


def kafka_mode(headers: Headers | None) -> Mode:
    """The content mode of a Kafka message, from its headers (module docstring)."""
    if not headers:
        return "structured"
    binary = False
    for name, value in headers:
        if name == "content-type" and value is not None and \
                media_type(value.decode("utf-8", "replace")).startswith("application/cloudevents"):
            return "structured"
        if name == "ce_specversion":
            binary = True
    return "binary" if binary else "structured"


def structured_from_binary(attributes: Iterable[tuple[str, bytes | str]], data: bytes,
                           content_type: bytes | str | None, *, where: str
                           ) -> bytes | Rejection:
    """The structured-mode JSON document of a binary-mode event: `attributes` are (name without
    its prefix, value) pairs in header order, `data` the message value or request body,
    `content_type` its content type. `where` names the headers in errors (`ce_` or `ce-`)."""
    seen: dict[str, str] = {}
    for name, value in attributes:
        if not _NAME.fullmatch(name):
            shown = name if len(name) <= 40 else f"{name[:40]}..."
            return Rejection(INVALID_EVENT, f"invalid CloudEvent: header {where}{shown!r} is not "
                                            "an attribute name (1 to 20 lower-case letters or "
                                            "digits)")
        if name == "data":
            return Rejection(INVALID_EVENT, f"invalid CloudEvent: {where}data is not an "
                                            "attribute; the event's data is the message body")
        if name in seen:
            return Rejection(INVALID_JSON, f"attribute {name!r} appears in two {where}{name} "
                                           "headers: the event is ambiguous")
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                return Rejection(INVALID_EVENT, f"invalid CloudEvent: header {where}{name} is "
                                                "not UTF-8")
        seen[name] = value
    if content_type is not None:
        if isinstance(content_type, bytes):
            try:
                content_type = content_type.decode("utf-8")
            except UnicodeDecodeError:
                return Rejection(INVALID_EVENT, "invalid CloudEvent: the content type is not "
                                                "UTF-8")
        if "datacontenttype" in seen:
            return Rejection(INVALID_JSON, f"datacontenttype given twice: in {where}"
                                           "datacontenttype and in the content type")
        seen["datacontenttype"] = content_type
    if not is_json(content_type):
        return Rejection(INVALID_EVENT, f"invalid CloudEvent: data of content type "
                                        f"{content_type!r} is not JSON; meterwax meters read "
                                        "JSON data (application/json)")
    envelope = _ENCODE.encode(seen)
    if not data.strip():
        return envelope  # no data: `judge` names what is missing
    if len(data) + len(envelope) > MAX_LINE_BYTES:
        return Rejection(INVALID_JSON, f"the event is longer than the limit of {MAX_LINE_BYTES} "
                                       "bytes (1 MiB)")
    bad = malformed(data)
    if bad is not None:
        return Rejection(bad.reason, f"the data (message body) is {bad.error}"
                         if bad.error.startswith("not ") else bad.error)
    head = envelope[:-1] + b"," if seen else b"{"
    return head + b'"data":' + data + b"}"


def kafka_attributes(headers: Headers
                     ) -> tuple[list[tuple[str, bytes]], bytes | None, int]:
    """From a binary Kafka message's headers: the `ce_` attributes, its content type (the last
    `content-type` header; several are refused by the caller through the count), and how
    many `content-type` headers it had."""
    attributes: list[tuple[str, bytes]] = []
    content_type: bytes | None = None
    types = 0
    for name, value in headers:
        if name.startswith(KAFKA_PREFIX):
            attributes.append((name[len(KAFKA_PREFIX):], value or b""))
        elif name == "content-type":
            content_type, types = value, types + 1
    return attributes, content_type, types


def from_kafka_binary(headers: Headers, value: bytes
                      ) -> bytes | Rejection:
    """The structured document of a binary-mode Kafka message."""
    attributes, content_type, types = kafka_attributes(headers)
    if types > 1:
        return Rejection(INVALID_JSON, "the message has several content-type headers: the "
                                       "event is ambiguous")
    return structured_from_binary(attributes, value, content_type, where=KAFKA_PREFIX)


def from_http_binary(headers: Iterable[tuple[bytes, bytes]], body: bytes,
                     content_type: str | None) -> bytes | Rejection:
    """The structured document of an HTTP binary-mode request: `headers` as ASGI gives them
    (lower-case names); `ce-` values are percent-decoded (HTTP binding 1.0.2, 3.1.3.2)."""
    attributes: list[tuple[str, bytes]] = []
    for name, value in headers:
        if name.startswith(b"ce-"):
            try:
                key = name[3:].decode("ascii")
            except UnicodeDecodeError:
                return Rejection(INVALID_EVENT, "invalid CloudEvent: a ce- header name is not "
                                                "ASCII")
            attributes.append((key, unquote_to_bytes(value)))
    return structured_from_binary(attributes, body, content_type, where=HTTP_PREFIX)


def batch_events(body: bytes) -> list[bytes] | Rejection:
    """The raw bytes of each event of a batched-mode body (a JSON array), each judged on its
    own afterwards; or why the body is not a batch. At most MAX_BATCH_EVENTS events."""
    bad = malformed(body)
    if bad is not None:
        return bad
    try:
        items = _RAW_LIST.decode(body)
    except msgspec.ValidationError:
        return Rejection(INVALID_JSON, "a batch (application/cloudevents-batch+json) is a JSON "
                                       "array of events")
    except (msgspec.DecodeError, RecursionError) as exc:
        return Rejection(INVALID_JSON, f"not valid JSON: {exc}")
    if len(items) > MAX_BATCH_EVENTS:
        return Rejection(INVALID_JSON, f"the batch holds {len(items)} events, more than the "
                                       f"limit of {MAX_BATCH_EVENTS}")
    return [bytes(item) for item in items]
