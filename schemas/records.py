"""Output records. Field names here are the public contract read by other tools.

Amounts and quantities are `Decimal` and encode as JSON strings ("12.50"), never numbers, so no
consumer can read them through a binary float. Every record carries a deterministic id, which is
the idempotency key downstream.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Final, Literal

import msgspec

# Exception reasons, in the order an event is tested against them.
INVALID_JSON: Final = "INVALID_JSON"
INVALID_EVENT: Final = "INVALID_EVENT"
UNKNOWN_SUBJECT: Final = "UNKNOWN_SUBJECT"
NO_ACTIVE_SUBSCRIPTION: Final = "NO_ACTIVE_SUBSCRIPTION"
FUTURE_EVENT: Final = "FUTURE_EVENT"  # dated too far ahead of the processing clock; retry it later
# Dated in a period retired past its retention horizon: its dedup record may be gone, so it can no
# longer be told from a replayed duplicate, and rating it could count it twice.
LATE_BEYOND_RETENTION: Final = "LATE_BEYOND_RETENTION"
# Dated before the catalog's `billing_start`: a month this deployment does not bill.
BEFORE_BILLING_START: Final = "BEFORE_BILLING_START"
INVALID_VALUE: Final = "INVALID_VALUE"
# Accepting the event would take its period's quantity or amount beyond what can be stored.
PERIOD_LIMIT_EXCEEDED: Final = "PERIOD_LIMIT_EXCEEDED"
# Anything unforeseen while judging or rating one event: the flow goes on without it.
INTERNAL_ERROR: Final = "INTERNAL_ERROR"
# A published contracts record the flow did not apply (invalid, or it would alter usage already
# rated): not an event, so `exceptions retry` never sends it; fix the catalog and publish again.
CONTRACT_REFUSED: Final = "CONTRACT_REFUSED"
REASONS = (INVALID_JSON, INVALID_EVENT, FUTURE_EVENT, LATE_BEYOND_RETENTION,
           BEFORE_BILLING_START, UNKNOWN_SUBJECT, NO_ACTIVE_SUBSCRIPTION, INVALID_VALUE,
           PERIOD_LIMIT_EXCEEDED, INTERNAL_ERROR, CONTRACT_REFUSED)
Reason = Literal["INVALID_JSON", "INVALID_EVENT", "FUTURE_EVENT", "LATE_BEYOND_RETENTION",
                 "BEFORE_BILLING_START", "UNKNOWN_SUBJECT", "NO_ACTIVE_SUBSCRIPTION",
                 "INVALID_VALUE", "PERIOD_LIMIT_EXCEEDED", "INTERNAL_ERROR",
                 "CONTRACT_REFUSED"]

LineKind = Literal["fixed_fee", "usage", "minimum_true_up", "discount"]
DiscountScope = Literal["usage", "fixed_fees", "all"]
CandidateType = Literal["invoice", "adjustment"]
CandidateStatus = Literal["ready", "held"]
# "proportional": a discount line, recognized in proportion to the lines it discounts.
Recognition = Literal["consumption", "ratable", "point_in_time", "proportional"]
RowKind = Literal["window", "correction"]


class MessageHeader(msgspec.Struct, omit_defaults=True, gc=False):
    """One Kafka header of a rejected message, as it arrived: `value` when it is UTF-8,
    `value_base64` otherwise, neither for a header without a value."""

    name: str
    value: str | None = None
    value_base64: str | None = None


class ExceptionRecord(msgspec.Struct, kw_only=True):
    exception_id: str  # "<source-name>:<partition>:<offset>": one per input position
    reason: Reason
    error: str
    position: dict[str, Any]  # file mode: {"file", "line"}; Kafka: {"topic", "partition", "offset"}
    raw: str | None  # the original line (a binary-mode message: its value) verbatim, when UTF-8
    raw_base64: str | None = None  # otherwise its bytes
    event_id: str | None = None
    event_source: str | None = None
    subject: str | None = None
    # A Kafka message in binary content mode (CloudEvents Kafka binding; operators/bindings.py):
    # its headers, every one in arrival order, repeated names kept, so the dead letter is the
    # message as it was sent and a retry is judged on exactly the same bytes (two `ce_id`
    # headers must stay two). UNSET, and so absent from the JSON, for every other line: the
    # records of structured messages and files are byte for byte what they were.
    headers: list[MessageHeader] | msgspec.UnsetType = msgspec.UNSET


# RatedWindow and AcceptedEvent take positional arguments (not kw_only): the rater makes one
# RatedWindow per window and ingest one AcceptedEvent per event, and building a struct of this
# many fields positionally costs a sixth of building it by keyword (0.09 against 0.55 µs).
class RatedWindow(msgspec.Struct):
    """One rating step of one subscription's meter: a row the store adds up.

    `row_kind` "window": the window's usage, rated once when the watermark reached its end (id
    `<sub>:<meter>:<window start>`). "correction": usage that arrived after its window's end had
    already passed the watermark (or after its period was invoiced), rated on its own (id
    `<window row>:c<rating_seq>`): only that usage's events, quantity and amount delta. A window
    has at most one window row and any number of corrections; the rater keeps neither once
    emitted. Summed over a period's rows, `event_count` and `amount_delta` are the period's; the
    row with the highest `rating_seq` carries the period's cumulative quantity and amount.
    `window_quantity` is the row's own usage, which adds up across rows for `sum` and `count`
    meters only (a max, a distinct count or a latest value of parts is not their sum).
    `revision` is 0 for every row written today (rows are never re-emitted; the store still
    collapses identical replayed copies by row id)."""

    row_id: str
    subscription_id: str
    customer_id: str
    plan_id: str
    legal_entity: str
    currency: str
    meter: str
    period: str  # YYYY-MM
    window_start: datetime
    window_end: datetime
    revision: int
    event_count: int
    window_quantity: Decimal
    cumulative_quantity: Decimal
    amount_delta: Decimal  # exact, unrounded: this window's share of the period amount
    cumulative_amount: Decimal  # exact, unrounded: period amount rated so far
    rating_seq: int  # order of rating steps within the subscription
    after_close: bool  # rated into a period whose invoice candidate was already issued
    row_kind: RowKind = "window"


class InvoiceLine(msgspec.Struct, kw_only=True, omit_defaults=True):
    line_id: str
    kind: LineKind
    amount: Decimal
    meter: str | None = None
    fee_id: str | None = None
    quantity: Decimal | None = None
    revenue_recognition: Recognition | None = None
    description: str | None = None
    # Usage lines: the exact, unrounded amount rated on each UTC day of the service period
    # (for an adjustment, the change per day). Drives consumption revenue schedules.
    consumption: list[tuple[str, Decimal]] | None = None
    # Discount lines (negative amounts): the subscription's discount id, and the lines it was
    # computed on ("usage": usage and minimum true-ups; "fixed_fees"; "all").
    discount_id: str | None = None
    applies_to: DiscountScope | None = None


class TaxAmount(msgspec.Struct, kw_only=True):
    """The tax of a candidate under one tax code: `amount = round_half_up(base x rate)` for an
    invoice; an adjustment carries the change of both (from-scratch tax less the tax issued)."""

    tax_code: str
    rate: Decimal
    base: Decimal
    amount: Decimal
    reverse_charge: bool


class CreditApplied(msgspec.Struct, kw_only=True):
    credit_id: str
    amount: Decimal


class InvoiceCandidate(msgspec.Struct, kw_only=True):
    invoice_candidate_id: str
    candidate_type: CandidateType
    adjusts: str | None  # the original candidate id, for adjustments
    customer_id: str
    subscription_id: str
    plan_id: str
    legal_entity: str
    currency: str
    billing_period: str  # YYYY-MM
    period_start: datetime
    period_end: datetime
    lines: list[InvoiceLine]
    subtotal: Decimal  # the sum of the lines, discounts included
    status: CandidateStatus
    hold_reasons: list[str]
    taxes: list[TaxAmount]  # empty when the legal entity computes no tax
    tax_total: Decimal
    total: Decimal  # subtotal + tax_total
    credits_applied: list[CreditApplied]  # prepaid credits, ready original invoices only
    amount_due: Decimal  # total - credits applied: what the receivable is


ENCODER = msgspec.json.Encoder(decimal_format="string")


class AcceptedEvent(msgspec.Struct):
    """An accepted (rated) usage event, as received: the immutable ledger that audit and
    re-rating read. Keyed by the event's identity (source, id); a replay writes the same row."""

    event_source: str
    event_id: str
    event_type: str
    subject: str
    time: datetime
    customer_id: str
    subscription_id: str
    period: str  # YYYY-MM
    origin_source: str  # topic (or "file")
    origin_partition: int
    origin_offset: int  # Kafka offset, or line number in file mode
    # The original message (UTF-8; undecodable bytes replaced, see README). For a Kafka message
    # in binary content mode, its structured form (operators/bindings.py): the document that was
    # judged and rated, attributes and data in one JSON line, as a structured producer sends it.
    raw: str


DocumentKind = Literal["candidate", "ar_invoice", "invoice_exception", "journal"]


class StoredDocument(msgspec.Struct, kw_only=True):
    """A billing document as the API lists it (ClickHouse table billing_documents): the
    fields it is found by, and `body`, the document's JSON exactly as the outputs carry it."""

    kind: DocumentKind
    id: str
    customer_id: str
    subscription_id: str
    billing_period: str
    # candidates: ready | held; AR: invoice | credit_memo; exceptions: their reasons; journals:
    # "journal" (customer and subscription empty: a journal sums a legal entity's month)
    status: str
    currency: str
    amount: Decimal  # total with tax (candidates, exceptions, AR) or total debit (journals)
    body: str
    written_at: datetime


class StoredRejection(msgspec.Struct, kw_only=True):
    """A rejected event as the API lists it (ClickHouse table rejected_events)."""

    exception_id: str
    reason: str
    error: str
    subject: str | None
    event_id: str | None
    event_source: str | None
    position: str  # JSON of ExceptionRecord.position
    raw: str | None
    raw_base64: str | None
    rejected_at: datetime
    # JSON of ExceptionRecord.headers (a binary-mode Kafka message's headers), else None
    # (migration 0006).
    headers: str | None = None
