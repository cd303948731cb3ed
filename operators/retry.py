"""Which dead letters to send again, and how: the pure half of `meterwax exceptions retry`.

A dead letter is a rejected event's original bytes with why and where in its headers
(sinks/kafka.dead_letters). Retrying re-publishes those bytes to the input topic, where they are
judged afresh like any other event. Retrying is safe to repeat because only an event that reaches
dedup claims its identity (operators/ingest.py): a retried event that is rated claims it, so a
second retry of the same dead letter is a duplicate; one that is rejected again claims nothing
and leaves a new dead letter.

A message in binary content mode (CloudEvents Kafka binding, operators/bindings.py) is its value
and its headers: the dead letter carries both, and the retry sends both back, less the dead
letter's own headers, so it is judged as the same binary message (an ambiguous one stays
ambiguous: a retry never turns two `ce_id` headers into one).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

import msgspec

from operators.bindings import Headers, kafka_attributes, kafka_mode

# The Kafka header of a retried event: the dead letter it came from (operators/ids.dead_letter_ref).
# Ingest counts where such events land (IngestStats.retried).
RETRY_HEADER = "meterwax.retry-of"
# The headers sinks/kafka.dead_letters adds to a rejected message's own (its why and where).
DEAD_LETTER_HEADERS = frozenset((
    "meterwax.reason", "meterwax.error", "meterwax.source.topic", "meterwax.source.partition",
    "meterwax.source.offset", "meterwax.correlation_id", "meterwax.position"))


class _Envelope(msgspec.Struct):
    # Lenient on purpose: a dead letter may be anything, and only these attributes matter.
    subject: object = None
    source: object = None
    id: object = None


_ENVELOPE = msgspec.json.Decoder(_Envelope)


def _envelope(raw: bytes) -> _Envelope | None:
    try:
        return _ENVELOPE.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        # msgspec raises the last one for a string cut inside a UTF-8 sequence: a dead letter
        # of INVALID_JSON holds exactly such bytes, and must not stop the retry command.
        return None


def _binary_attributes(headers: Headers | None) -> dict[str, str] | None:
    """The `ce_` attributes of a binary-mode message that are named once and are UTF-8; None
    for a message in structured mode (its attributes are in its bytes)."""
    if not headers or kafka_mode(headers) != "binary":
        return None
    attributes, _, _ = kafka_attributes(headers)
    named = Counter(name for name, _ in attributes)
    out: dict[str, str] = {}
    for name, value in attributes:
        if named[name] == 1:
            try:
                out[name] = value.decode("utf-8")
            except UnicodeDecodeError:
                continue
    return out


def subject_of(raw: bytes, headers: Headers | None = None) -> str | None:
    """The event's `subject`: of a structured message, when the bytes are a JSON object that
    has a text one; of a binary-mode one (`headers`), its one `ce_subject` header."""
    attributes = _binary_attributes(headers)
    if attributes is not None:
        return attributes.get("subject")
    env = _envelope(raw)
    return env.subject if env is not None and isinstance(env.subject, str) else None


def input_key(raw: bytes, headers: Headers | None = None) -> bytes | None:
    """The key the README asks producers to use, `source/id`, so copies of one event share an
    input partition (and "the first valid occurrence wins" stays well defined); None when the
    bytes (a binary-mode message: its `ce_source` and `ce_id` headers) do not name both."""
    attributes = _binary_attributes(headers)
    source: object
    ident: object
    if attributes is not None:
        source, ident = attributes.get("source"), attributes.get("id")
    else:
        env = _envelope(raw)
        source, ident = (env.source, env.id) if env is not None else (None, None)
    if not isinstance(source, str) or not isinstance(ident, str):
        return None
    return f"{source}/{ident}".encode("utf-8", "surrogatepass")


def resent_headers(headers: Headers, ref: str) -> list[tuple[str, bytes | None]]:
    """The headers a retried dead letter is sent with: the rejected message's own, in order,
    without what the dead letter added (DEAD_LETTER_HEADERS) or an earlier retry's mark, and
    this retry's mark (RETRY_HEADER: the dead letter it came from)."""
    kept = [(name, value) for name, value in headers
            if name not in DEAD_LETTER_HEADERS and name != RETRY_HEADER]
    return [*kept, (RETRY_HEADER, ref.encode())]


@dataclass(frozen=True)
class RetryFilter:
    """Which dead letters to retry; every given condition must hold. Times are when the event
    was rejected (the dead letter's own timestamp), half-open: [since, until)."""

    reason: str | None = None
    subject: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, reason: str | None, raw: bytes, rejected_at: datetime | None,
                headers: Headers | None = None) -> bool:
        if self.reason is not None and reason != self.reason:
            return False
        if self.since is not None and (rejected_at is None or rejected_at < self.since):
            return False
        if self.until is not None and (rejected_at is None or rejected_at >= self.until):
            return False
        return self.subject is None or subject_of(raw, headers) == self.subject
