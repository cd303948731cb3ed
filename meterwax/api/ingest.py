"""POST /v1/events, without the I/O: from a request to the events to write and the answer.

The endpoint speaks the CloudEvents HTTP binding (operators/bindings.py does the binding itself):
- `application/cloudevents+json`: one event, structured mode;
- `application/cloudevents-batch+json`: a JSON array of events, batched mode;
- any other request with a `ce-specversion` header: one event, binary mode (attributes in
  `ce-` headers, the body is `data`, Content-Type its `datacontenttype`);
- plain `application/json` without `ce-` headers: an event object, or an array of them, the way
  OpenMeter and Lago accept it.
A Content-Type of `application/cloudevents...` wins over `ce-` headers, as the binding says.

Every event is judged by the flow's own `judge` (operators/envelope.py): the endpoint refuses
exactly what the flow would put in the exception stream as INVALID_JSON or INVALID_EVENT, with the
same words; everything else about an event (its subject, its subscription, its value) needs the
catalog and the flow's clock and is judged there. Accepted events are written as their
structured JSON: the bytes received for the structured and batched modes, the document rebuilt
from the headers for binary mode. The message key is the event's identity, `source/id`, so its
copies meet in one partition and the flow's dedup drops them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from operators.bindings import BATCH, STRUCTURED, batch_events, from_http_binary, media_type
from operators.envelope import Rejection, judge
from operators.limits import MAX_ATTRIBUTE_CHARS
from operators.tokens import Scope
from schemas.api import EventResult, IngestResult
from schemas.events import CloudEvent

_OBJECT = msgspec.json.Decoder()


@dataclass(frozen=True)
class Refusal:
    """The request as a whole cannot be read: nothing of it is written."""

    status: int  # 400, 413 or 415
    detail: str


@dataclass(frozen=True)
class Received:
    items: list[bytes | Rejection]  # each event's structured JSON, or why it has none
    batched: bool


def read_events(content_type: str | None, headers: Iterable[tuple[bytes, bytes]], body: bytes
                ) -> Received | Refusal:
    headers = list(headers)
    mt = media_type(content_type)
    if mt == BATCH:
        return _batch(body)
    if mt == STRUCTURED:
        return Received([body], batched=False)
    if any(name == b"ce-specversion" for name, _ in headers):
        return Received([from_http_binary(headers, body, content_type)], batched=False)
    if mt in ("application/json", "text/json") or (
            mt.endswith("+json") and not mt.startswith("application/cloudevents")):
        if body.lstrip()[:1] == b"[":
            return _batch(body)
        return Received([body], batched=False)
    return Refusal(415, f"Content-Type {content_type or '(none)'!r}: send "
                        f"{STRUCTURED} (one event), {BATCH} (a JSON array of events), "
                        "application/json, or an event in binary mode (ce- headers)")


def _batch(body: bytes) -> Received | Refusal:
    events = batch_events(body)
    if isinstance(events, Rejection):
        too_many = events.error.startswith("the batch holds")
        return Refusal(413 if too_many else 400, events.error)
    return Received(list(events), batched=True)


def judge_events(received: Received, scope: Scope
                 ) -> tuple[list[EventResult], list[tuple[int, bytes, bytes]]]:
    """Each event's result so far (accepted ones are answered once Kafka acknowledged them),
    and the (index, key, value) records to write."""
    results: list[EventResult] = []
    records: list[tuple[int, bytes, bytes]] = []
    for index, item in enumerate(received.items):
        judged: CloudEvent | Rejection = item if isinstance(item, Rejection) else judge(item)
        if isinstance(judged, Rejection):
            named = judged.event
            eid, src = ((named.id, named.source) if named is not None
                        else _identity(item) if isinstance(item, bytes) else (None, None))
            results.append(EventResult(index=index, status="rejected", reason=judged.reason,
                                       error=judged.error, id=eid, source=src))
            continue
        result = EventResult(index=index, status="accepted", id=judged.id, source=judged.source)
        if not scope.may_send(judged.source):
            result.status = "forbidden"
            result.error = f"this token may only send events of source {scope.source!r}"
        else:
            assert isinstance(item, bytes)
            records.append((index, f"{judged.source}/{judged.id}".encode(), item))
        results.append(result)
    return results, records


def _identity(raw: bytes) -> tuple[str | None, str | None]:
    """The `id` and `source` a refused event names, when it is a JSON object that has them as
    short strings, so a producer can tell which of its events it was; else None."""
    try:
        doc = _OBJECT.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    found = [doc.get(k) for k in ("id", "source")]
    eid, src = (v if isinstance(v, str) and 0 < len(v) <= MAX_ATTRIBUTE_CHARS else None
                for v in found)
    return eid, src


def answered(results: list[EventResult], records: list[tuple[int, bytes, bytes]],
             outcomes: list[str | None]) -> IngestResult:
    """The answer, once every written record has its outcome from Kafka."""
    for (index, _, _), outcome in zip(records, outcomes, strict=True):
        if outcome is not None:
            result = results[index]
            result.status = "unavailable"
            result.error = f"not written: {outcome}; send it again"
    counts = {"accepted": 0, "rejected": 0, "forbidden": 0, "unavailable": 0}
    for result in results:
        counts[result.status] += 1
    return IngestResult(accepted=counts["accepted"],
                        rejected=counts["rejected"] + counts["forbidden"],
                        unavailable=counts["unavailable"], results=results)

