"""Prepaid credits, applied to invoice candidates. Pure: catalog and candidates in, candidates out.

A credit belongs to a customer, in one currency, and is usable by invoices dated (the last day of
the service period) in [granted, expires). Credits apply after tax, to ready original candidates
only: an adjustment settles through receivables, and a held candidate consumes nothing (fixing
its master data and running again gives it its turn in the order below). They apply in invoice
date order, then candidate id order; among several usable credits, the one expiring first goes
first, then the one listed first. A candidate carries `credits_applied` and
`amount_due = total - applied`, never below zero.

The order is the whole contract: `settle` applies it to a run's candidates at once (file mode's
reference, operators/engine.py), and the dataflow's credits step (flows/pipeline.py) applies it to
one customer's months as they complete, which gives the same result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal

import msgspec

from operators.catalog import Catalog, Credit, Customer
from operators.erp import last_service_day
from operators.money import ZERO, round_money
from schemas.records import CreditApplied, InvoiceCandidate


def invoice_date(cand: InvoiceCandidate) -> date:
    return last_service_day(cand.period_end)


def order_key(cand: InvoiceCandidate) -> tuple[date, str]:
    return invoice_date(cand), cand.invoice_candidate_id


def may_use_credits(customer: Customer | None, cand: InvoiceCandidate) -> bool:
    """Whether `cand` is one credits apply to (before looking at what is left of them)."""
    if customer is None or cand.adjusts is not None or cand.status != "ready":
        return False
    if cand.total <= 0:
        return False
    day = invoice_date(cand)
    return any(c.currency == cand.currency and c.usable_on(day) for c in customer.credits)


def apply(customer: Customer, cand: InvoiceCandidate, applied: dict[str, Decimal]
          ) -> InvoiceCandidate:
    """`cand` with the customer's usable credits applied; `applied` (credit id -> amount
    applied so far, to every candidate before this one) is updated."""
    if not may_use_credits(customer, cand):
        return cand
    day = invoice_date(cand)
    usable = sorted((c for c in customer.credits
                     if c.currency == cand.currency and c.usable_on(day)),
                    key=lambda c: c.expires)  # stable: the listed order among equal expiries
    due = cand.total
    taken: list[CreditApplied] = []
    for credit in usable:
        left = credit.amount - applied.get(credit.id, ZERO)
        if left <= 0:
            continue
        amount = min(left, due)
        applied[credit.id] = applied.get(credit.id, ZERO) + amount
        taken.append(CreditApplied(credit_id=credit.id, amount=amount))
        due -= amount
        if due == 0:
            break
    if not taken:
        return cand
    return msgspec.structs.replace(cand, credits_applied=taken, amount_due=due)


def settle(catalog: Catalog, candidates: Sequence[InvoiceCandidate]) -> list[InvoiceCandidate]:
    """Every candidate of a run, in its order, with credits applied (module docstring)."""
    applied: dict[str, dict[str, Decimal]] = {}
    eligible = sorted((c for c in candidates
                       if may_use_credits(catalog.customers.get(c.customer_id), c)),
                      key=lambda c: (c.customer_id, *order_key(c)))
    settled: dict[str, InvoiceCandidate] = {}
    for cand in eligible:
        customer = catalog.customers[cand.customer_id]
        settled[cand.invoice_candidate_id] = apply(
            customer, cand, applied.setdefault(customer.id, {}))
    return [settled.get(c.invoice_candidate_id, c) for c in candidates]


def credit_report(catalog: Catalog, candidates: Iterable[InvoiceCandidate],
                  as_of: date | None) -> list[dict[str, str]]:
    """Each credit: granted, applied, remaining and expired (what was left when it expired, as
    of `as_of`, the last invoice date of the run; None: nothing invoiced)."""
    applied: dict[tuple[str, str], Decimal] = {}
    for cand in candidates:
        for c in cand.credits_applied:
            key = (cand.customer_id, c.credit_id)
            applied[key] = applied.get(key, ZERO) + c.amount
    out = []
    for customer in catalog.customers.values():
        for credit in customer.credits:
            used = applied.get((customer.id, credit.id), ZERO)
            left = credit.amount - used
            expired = _expired(credit, as_of)
            zero = round_money(ZERO, credit.currency)
            out.append({"customer_id": customer.id, "credit_id": credit.id,
                        "currency": credit.currency, "granted": str(credit.amount),
                        "applied": str(used + zero),
                        "remaining": str(zero if expired and left > 0 else left + zero),
                        "expired": str(left + zero if expired and left > 0 else zero),
                        "expires": credit.expires.isoformat()})
    return out


def over_granted(report: Iterable[Mapping[str, str]]) -> list[str]:
    """Problems: a credit applied beyond what was granted."""
    return [f"credit {r['credit_id']} of {r['customer_id']}: applied {r['applied']} "
            f"{r['currency']} of {r['granted']} granted"
            for r in report if Decimal(r["applied"]) > Decimal(r["granted"])]


def _expired(credit: Credit, as_of: date | None) -> bool:
    """Expired by the run's last invoice date: no invoice dated from then on can use it."""
    return as_of is not None and datetime(as_of.year, as_of.month, as_of.day,
                                          tzinfo=UTC) >= credit.expires
