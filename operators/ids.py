"""Every deterministic id meterwax emits, built (and where needed parsed) in this one module.

Ids are the idempotency keys downstream: Kafka keys of compacted topics, ReplacingMergeTree
row keys, ERP document numbers. Each is a pure function of what it names, so a replay or a
second worker produces the same id for the same thing, and nothing else in the code formats one.

    input partition        <source>:<number>                   file:0, usage-events:3
    exception              <source>:<number>:<offset or line>  file:0:17
    retried dead letter    <dead-letter topic>:<partition>:<offset>
    rating failure         <subscription>:rating-failure-<n>
    rated window row       <subscription>:<meter>:<window start, epoch seconds>
    correction row         <window row>:c<rating seq>          sub-acme-1:tokens:1790812800:c57
    invoice candidate      <subscription>:<YYYY-MM>            sub-acme-1:2026-10
    adjustment             <candidate>:adj-<n>                 sub-acme-1:2026-10:adj-2
    line (key)             fee:<fee> | usage:<meter> | minimum:<meter>
    line id                <candidate>:<line key>              sub-acme-1:2026-10:usage:tokens
    AR invoice             the candidate id
    revenue schedule       rs:<line id>
    journal                <legal entity>:<currency>:<YYYY-MM>
    performance obligation <subscription>:<meter or fee>
"""

from __future__ import annotations

import re

_ADJUSTMENT = re.compile(r":adj-(\d+)$")


def partition_name(source: str, number: int) -> str:
    return f"{source}:{number}"


def parse_partition(name: str) -> tuple[str, int]:
    """(source, number) of a partition name; the source may itself contain ':'."""
    source, _, number = name.rpartition(":")
    return source, int(number)


def dedup_identity(source: str, event_id: str) -> str:
    """An event's identity for dedup: (source, id), the source's length first so that no two
    pairs share one text ("ab", "c" against "a", "bc")."""
    return f"{len(source)}:{source}{event_id}"


def exception_id(source: str, partition: int, position: int) -> str:
    return f"{source}:{partition}:{position}"


def dead_letter_ref(topic: str, partition: int, offset: int) -> str:
    """What a retried event's `meterwax.retry-of` header names: the dead letter it came from."""
    return f"{topic}:{partition}:{offset}"


def contract_refusal_id(topic: str, offset: int) -> str:
    """A contracts record the flow did not apply: the same id from every input partition that
    refused it, so the copies deduplicate downstream."""
    return f"{topic}:0:{offset}:refused"


def rating_failure_id(subscription_id: str, n: int) -> str:
    return f"{subscription_id}:rating-failure-{n}"


def window_row_id(subscription_id: str, meter: str, window_start: int) -> str:
    return f"{subscription_id}:{meter}:{window_start}"


def correction_row_id(subscription_id: str, meter: str, window_start: int, rating_seq: int
                      ) -> str:
    """A late contribution's own row: the rating step (numbered within the subscription) is
    what makes it unique, and the same op sequence numbers it the same way on a replay."""
    return f"{window_row_id(subscription_id, meter, window_start)}:c{rating_seq}"


def candidate_id(subscription_id: str, period: str) -> str:
    return f"{subscription_id}:{period}"


def adjustment_id(original: str, n: int) -> str:
    return f"{original}:adj-{n}"


def adjustment_number(invoice_candidate_id: str) -> int:
    """n of an adjustment id, 0 for an original candidate: the order candidates are listed in."""
    match = _ADJUSTMENT.search(invoice_candidate_id)
    return int(match.group(1)) if match else 0


def fee_line_key(fee_id: str) -> str:
    return f"fee:{fee_id}"


def usage_line_key(meter: str) -> str:
    return f"usage:{meter}"


def minimum_line_key(meter: str) -> str:
    return f"minimum:{meter}"


def discount_line_key(discount_id: str) -> str:
    return f"discount:{discount_id}"


def tax_key(tax_code: str) -> str:
    """Not a line: a candidate's tax under one code, kept beside its lines (invoicing)."""
    return f"tax:{tax_code}"


def line_id(invoice_candidate_id: str, key: str) -> str:
    return f"{invoice_candidate_id}:{key}"


def schedule_id(line: str) -> str:
    return f"rs:{line}"


def journal_id(legal_entity: str, currency: str, period: str) -> str:
    return f"{legal_entity}:{currency}:{period}"


def performance_obligation(subscription_id: str, ref: str) -> str:
    return f"{subscription_id}:{ref}"
