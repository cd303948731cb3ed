"""The reconciliation report: what `reconciliation.json` holds, field for field.

Finance tooling and dashboards read these names, so they are a published shape like the records
in `records.py`. Amounts are decimal strings, never floats. The ERP section and the run facts are
present after a full run; a reconciliation of the rating side alone (tests, the engine) leaves
them out.
"""

from __future__ import annotations

import msgspec


class EventBuckets(msgspec.Struct, frozen=True):
    """Every event read lands in exactly one bucket: `buckets_total` must equal `read`."""

    read: int
    blank_lines_skipped: int
    rated: int
    duplicates: int
    unmetered: int
    unmetered_not_in_plan: int
    exceptions: dict[str, int]
    exceptions_total: int
    late_after_close: int
    buckets_total: int
    # Events sent again from a dead letter, by where they landed this time (rated, duplicate,
    # unmetered or an exception reason): how the backlog of rejected usage is being worked.
    retried: dict[str, int] = {}


class MeterTotals(msgspec.Struct, frozen=True):
    """One meter over every subscription and period: quantities as decimal strings."""

    ingested: str
    rated: str
    invoiced: str
    accepted_values: int
    rated_window_events: int


class StatusTotals(msgspec.Struct, frozen=True):
    ready: str
    held: str


class InvoicedSummary(msgspec.Struct, frozen=True):
    candidates: int
    adjustments: int
    ready: int
    held: int
    totals_by_currency: dict[str, StatusTotals]


class ChainQuantities(msgspec.Struct, frozen=True):
    ingested: str
    rated: str
    invoiced: str


class ChainRow(msgspec.Struct, frozen=True):
    """One legal entity, currency and month, from raw usage to the journal's receivable."""

    legal_entity: str
    currency: str
    period: str
    usage_quantities: dict[str, ChainQuantities]
    rated_usage: str
    invoiced_usage: str
    invoiced_total: str
    not_posted: str
    ar_total: str
    journal_receivable: str
    journal_debit: str
    journal_credit: str
    not_posted_by_reason: dict[str, str]
    # Tax, discounts and prepaid credits through the same stages: invoiced (every candidate),
    # on the AR invoices, and in the journal (tax payable credited, customer credits debited).
    invoiced_tax: str
    invoiced_discounts: str
    ar_tax: str
    ar_discounts: str
    ar_credits_applied: str
    journal_tax_payable: str
    journal_customer_credits: str


class CreditBalance(msgspec.Struct, frozen=True):
    """A prepaid credit as of the run's last invoice date: `granted` = `applied` + `remaining` +
    `expired` (what was left when it expired)."""

    customer_id: str
    credit_id: str
    currency: str
    granted: str
    applied: str
    remaining: str
    expired: str
    expires: str


class ErpSummary(msgspec.Struct, frozen=True):
    ar_invoices: int
    journals: int
    revenue_schedules: int
    invoice_exceptions: int
    quantity_only_adjustments_not_posted: int
    chain: list[ChainRow]


class RunFacts(msgspec.Struct, frozen=True):
    """How the run was made, so a report can be reproduced. `now`: the instant the input was
    judged as of (null: the system clock at run time). `judged_ahead` explains a slow run, never
    a figure: the outputs are the same either way."""

    catalog: str
    events: str
    window_seconds: int
    allowed_lateness_seconds: int
    workers: int
    max_future_seconds: int
    retention_seconds: int  # the retention horizon and dedup TTL
    adjustment_cycle_seconds: int
    now: str | None
    elapsed_seconds: float
    events_per_second: int | None
    rated_windows_store: str
    # "on": a helper process judged the input ahead (flows/judge_ahead.py), "off": ingest alone,
    # "given up: <why>": the helper failed and ingest judged the rest (the outputs are the same).
    judged_ahead: str = "off"


class ExcludedMonth(msgspec.Struct, frozen=True):
    """A month a subscription was active in but this deployment does not bill: it is before the
    catalog's `billing_start` (billed by whatever came before)."""

    customer_id: str
    subscription_id: str
    period: str


class Reconciliation(msgspec.Struct, frozen=True, omit_defaults=True):
    """`balanced` is true exactly when `problems` is empty; `problems` includes the ERP chain's
    when the ERP section is present."""

    balanced: bool
    problems: list[str]
    events: EventBuckets
    rating_failures: int
    meters: dict[str, MeterTotals]
    invoiced: InvoicedSummary
    rated_windows: int  # window rows in the store
    rated_corrections: int = 0  # correction rows (late usage rated on its own)
    # The catalog's first billed month, and the subscription-months before it (not billed here).
    billing_start: str | None = None
    excluded_by_billing_start: list[ExcludedMonth] = []
    erp: ErpSummary | None = None
    run: RunFacts | None = None
    credits: list[CreditBalance] = []
