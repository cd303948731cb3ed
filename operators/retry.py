"""Which dead letters to send again, and how: the pure half of `meterwax exceptions retry`.

A dead letter is a rejected event's original bytes with why and where in its headers
(sinks/kafka.dead_letters). Retrying re-publishes those bytes to the input topic, where they are
judged afresh like any other event. Retrying is safe to repeat because only an event that reaches
dedup claims its identity (operators/ingest.py): a retried event that is rated claims it, so a
second retry of the same dead letter is a duplicate; one that is rejected again claims nothing
and leaves a new dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import msgspec

# The Kafka header of a retried event: the dead letter it came from (operators/ids.dead_letter_ref).
# Ingest counts where such events land (IngestStats.retried).
RETRY_HEADER = "meterwax.retry-of"


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


def subject_of(raw: bytes) -> str | None:
    """The event's `subject`, when the bytes are a JSON object that has a text one."""
    env = _envelope(raw)
    return env.subject if env is not None and isinstance(env.subject, str) else None


def input_key(raw: bytes) -> bytes | None:
    """The key the README asks producers to use, `source/id`, so copies of one event share an
    input partition (and "the first valid occurrence wins" stays well defined); None when the
    bytes do not name both."""
    env = _envelope(raw)
    if env is None or not isinstance(env.source, str) or not isinstance(env.id, str):
        return None
    return f"{env.source}/{env.id}".encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class RetryFilter:
    """Which dead letters to retry; every given condition must hold. Times are when the event
    was rejected (the dead letter's own timestamp), half-open: [since, until)."""

    reason: str | None = None
    subject: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, reason: str | None, raw: bytes, rejected_at: datetime | None) -> bool:
        if self.reason is not None and reason != self.reason:
            return False
        if self.since is not None and (rejected_at is None or rejected_at < self.since):
            return False
        if self.until is not None and (rejected_at is None or rejected_at >= self.until):
            return False
        return self.subject is None or subject_of(raw) == self.subject
