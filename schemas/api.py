"""The HTTP API's response bodies (meterwax/api/): the field names customers, dashboards and
finance tools read, published in `schemas/openapi.json`.

Money and quantities are decimal strings ("12.50") here, already formatted by the domain: the
API never holds an amount as a number, so no JSON encoder or client can send it through a
binary float. Times are RFC 3339 UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from schemas.records import Reason


class ChargeLine(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A line as the period's invoice candidate will carry it: same id, kind and rounding."""

    line_id: str
    kind: str  # fixed_fee | usage | minimum_true_up (once issued) | discount
    amount: str  # negative for a discount
    meter: str | None = None
    fee_id: str | None = None
    discount_id: str | None = None
    quantity: str | None = None


class SubscriptionCharges(msgspec.Struct, kw_only=True):
    subscription_id: str
    plan_id: str
    currency: str
    lines: list[ChargeLine]
    subtotal: str  # the lines, discounts included
    tax_total: str  # the customer's tax on the subtotal (0 where its entity computes none)
    total: str
    as_of: datetime | None  # the event time this subscription is rated up to; None: nothing yet


class CurrencyTotal(msgspec.Struct, kw_only=True):
    currency: str
    amount: str  # the subtotals
    tax_total: str
    total: str  # with tax


class Charges(msgspec.Struct, kw_only=True):
    """A customer's running charges for one billing period, with its discounts and tax on what
    has accrued so far. Minimum true-ups are decided when the period closes and appear here
    once its candidate is issued."""

    customer_id: str
    period: str
    subscriptions: list[SubscriptionCharges]
    totals: list[CurrencyTotal]
    as_of: datetime | None  # the latest event time rated into the period
    updated_at: datetime | None  # when these figures were last written


class UsageBucket(msgspec.Struct, kw_only=True):
    start: datetime
    subscription_id: str
    meter: str
    events: int
    amount: str  # exact rated amount of the bucket's usage (unrounded)
    # Sum of the bucket's usage, for `sum` and `count` meters; None for `max`, `unique_count`
    # and `latest`, whose parts do not add up (period_quantity is their figure).
    quantity: str | None
    period_quantity: str  # the period's quantity as of the end of the bucket


class Usage(msgspec.Struct, kw_only=True):
    customer_id: str
    granularity: str
    start: datetime
    end: datetime
    buckets: list[UsageBucket]


class Document(msgspec.Struct, kw_only=True):
    """A billing document: an invoice candidate or adjustment, an AR invoice or credit memo,
    or an invoice exception. `document` is the record exactly as the outputs carry it."""

    kind: str  # candidate | ar_invoice | invoice_exception
    id: str
    customer_id: str
    subscription_id: str
    billing_period: str
    status: str  # candidates: ready | held; AR: invoice | credit_memo; exceptions: reasons
    currency: str
    amount: str
    document: dict[str, Any]


class DocumentPage(msgspec.Struct, kw_only=True):
    items: list[Document]
    next_cursor: str | None


class RejectedEvent(msgspec.Struct, kw_only=True):
    exception_id: str
    reason: str
    error: str
    subject: str | None
    event_id: str | None
    event_source: str | None
    position: dict[str, Any]
    raw: str | None
    raw_base64: str | None
    rejected_at: datetime
    # A message in Kafka's binary content mode: its headers as they came ({"name", "value"} or
    # {"name", "value_base64"}, in order); `raw` is then its value, the event's data only.
    headers: list[dict[str, str]] | None = None


class RejectedPage(msgspec.Struct, kw_only=True):
    items: list[RejectedEvent]
    next_cursor: str | None


class DayCount(msgspec.Struct, kw_only=True):
    day: str  # YYYY-MM-DD (UTC)
    reason: str
    count: int


class ExceptionSummary(msgspec.Struct, kw_only=True):
    total: int
    by_reason: dict[str, int]
    by_day: list[DayCount]


class RetryRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Reason | None = None
    subject: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    dry_run: bool = False


class RetryResult(msgspec.Struct, kw_only=True):
    read: int
    matched: int
    sent: int
    dry_run: bool
    by_reason: dict[str, int]


class Reconciliation(msgspec.Struct, kw_only=True):
    """The usage → rated → invoiced → receivable chain of one month, per legal entity and
    currency, and every variance named (an empty `problems` list: the month balances)."""

    month: str
    balanced: bool
    chain: list[dict[str, Any]]
    problems: list[str]


class Me(msgspec.Struct, kw_only=True):
    scope: str  # customer:<id> | finance | admin
    token_id: str
    customer_id: str | None
    current_period: str
    previous_period: str


class CustomerList(msgspec.Struct, kw_only=True):
    customers: list[str]


class Health(msgspec.Struct, kw_only=True):
    status: str
    backend: str
    problems: list[str] = msgspec.field(default_factory=list)


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None


EventStatus = Literal["accepted", "rejected", "forbidden", "unavailable"]


class EventResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What became of one event of a POST /v1/events request (`index`: its place in the
    batch, 0 for a single event). `accepted`: Kafka acknowledged it, it will be rated (or
    land in the exception stream for a reason only the flow can judge, like an unknown
    subject). `rejected`: its envelope is not a valid event (`reason`, `error`: the flow's own
    words); fix it, sending it again as it is gets the same answer. `forbidden`: the token
    may not send this `source`. `unavailable`: not written (Kafka is slow or down); send it
    again."""

    index: int
    status: EventStatus
    id: str | None = None
    source: str | None = None
    reason: Reason | None = None
    error: str | None = None


class IngestResult(msgspec.Struct, kw_only=True):
    accepted: int
    rejected: int  # rejected and forbidden
    unavailable: int
    results: list[EventResult]
