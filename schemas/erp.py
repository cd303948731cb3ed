"""ERP-ready payloads: the documented contract an ERP adapter maps from.

These msgspec structs are the single definition; `schemas/erp.schema.json` is generated from them
(`python -m schemas.erp > schemas/erp.schema.json`, and a test keeps it in sync), so a NetSuite,
SAP or Dynamics adapter only maps fields. Amounts are decimal strings in the document's currency,
already rounded to its minor units; dates are ISO dates (YYYY-MM-DD) of the UTC calendar.
"""

from __future__ import annotations

import sys
from datetime import date, datetime
from decimal import Decimal
from typing import Literal

import msgspec

# "proportional": a discount line, recognized in proportion to the lines it discounts.
RevenueRecognition = Literal["consumption", "ratable", "point_in_time", "proportional"]
DocumentType = Literal["invoice", "credit_memo"]


class ArInvoiceLine(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One line of an AR invoice; `line_id` is the source invoice-candidate line id."""

    line_id: str
    kind: Literal["fixed_fee", "usage", "minimum_true_up", "discount"]
    item: str  # the meter id, the fixed fee id, or the discount id
    amount: Decimal  # negative for a discount
    # revenue account credited for this line (legal entity's GL); a discount's is debited
    gl_account: str
    revenue_recognition: RevenueRecognition
    service_period_start: datetime
    service_period_end: datetime
    quantity: Decimal | None = None
    performance_obligation: str  # "<subscription>:<item>": what is delivered over the period


class ArTaxLine(msgspec.Struct, kw_only=True):
    """The tax of an AR invoice under one tax code, credited to the entity's tax payable."""

    tax_code: str
    rate: Decimal
    base: Decimal
    amount: Decimal
    reverse_charge: bool  # rate 0: the customer accounts for the tax (see `notes`)
    gl_account: str


class ArCreditApplied(msgspec.Struct, kw_only=True):
    credit_id: str
    amount: Decimal
    gl_account: str  # the entity's customer_credits account, debited


class ArInvoice(msgspec.Struct, kw_only=True):
    """An accounts-receivable document for one ready invoice candidate. Adjustments are their own
    documents, referencing the invoice they adjust; a negative total is a credit memo."""

    ar_invoice_id: str
    invoice_candidate_id: str  # the idempotency key downstream
    document_type: DocumentType
    adjusts_ar_invoice_id: str | None
    customer_id: str
    tax_registration: str
    legal_entity: str
    receivable_account: str
    currency: str
    invoice_date: date  # last day of the service period
    due_date: date  # invoice date + the customer's payment terms
    payment_terms_days: int
    service_period_start: datetime
    service_period_end: datetime
    billing_period: str  # YYYY-MM
    subscription_id: str
    plan_id: str
    subtotal: Decimal  # the sum of the line amounts (discounts included), the candidate's
    tax_total: Decimal
    total: Decimal  # subtotal + tax_total
    amount_due: Decimal  # total - credits applied: the receivable
    lines: list[ArInvoiceLine]
    taxes: list[ArTaxLine]
    credits_applied: list[ArCreditApplied]
    notes: list[str]  # e.g. the reverse-charge statement the law requires on the invoice


class JournalLine(msgspec.Struct, kw_only=True):
    account: str
    role: Literal["receivable", "customer_credits", "usage_revenue", "subscription_revenue",
                  "discounts", "deferred_revenue", "tax_payable"]
    debit: Decimal
    credit: Decimal


class Journal(msgspec.Struct, kw_only=True):
    """A summary journal for one legal entity, currency and month. Debits (receivable: the
    amounts due; customer credits applied; discounts) equal credits (revenue, deferred revenue,
    tax payable) to the minor unit; the receivable equals the amounts due of that entity's
    posted candidates for the month."""

    journal_id: str
    legal_entity: str
    currency: str
    period: str  # YYYY-MM
    posting_date: date  # last day of the month
    lines: list[JournalLine]
    total_debit: Decimal
    total_credit: Decimal
    source_candidate_ids: list[str]
    source_ar_invoice_ids: list[str]


# Frozen: one entry object stands for the same day and amount in many schedules (every zero day
# of a currency, every day of a plan's ratable fee), which keeps millions of them out of memory
# for a large catalog. No references to other objects, so no cyclic-GC tracking either.
class ScheduleEntry(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    date: date
    amount: Decimal


class RevenueSchedule(msgspec.Struct, kw_only=True):
    """Daily revenue recognition for one AR invoice line; entries sum exactly to its amount."""

    schedule_id: str
    line_id: str
    ar_invoice_id: str
    legal_entity: str
    currency: str
    revenue_recognition: RevenueRecognition
    gl_account: str
    amount: Decimal
    entries: list[ScheduleEntry]


class InvoiceException(msgspec.Struct, kw_only=True):
    """An invoice candidate that must not reach the ERP until its master data is fixed."""

    invoice_candidate_id: str
    customer_id: str
    legal_entity: str
    currency: str
    billing_period: str
    subtotal: Decimal
    total: Decimal  # with tax: what the receivable would have been
    reasons: list[str]  # e.g. MISSING_TAX_REGISTRATION, MISSING_GL_ACCOUNT
    details: list[str]  # one readable sentence per reason, naming what to fix


ERP_TYPES = (ArInvoice, Journal, RevenueSchedule, InvoiceException)


def json_schema() -> bytes:
    _, components = msgspec.json.schema_components(ERP_TYPES, ref_template="#/$defs/{name}")
    doc = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "meterwax ERP payloads",
        "description": "AR invoices, summary journals, revenue schedules and invoice exceptions "
                       "(erp_*.jsonl, revenue_schedules.jsonl, invoice_exceptions.jsonl).",
        "$defs": components,
    }
    return msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"


if __name__ == "__main__":
    sys.stdout.buffer.write(json_schema())
