"""Invoice candidates: the lines of one subscription's billing period, rounded once.

Lines, in plan order: each fixed fee (prorated by the active share of the calendar month), then
per charge a usage line (zero included) and, if the charge has a minimum the rounded usage does
not reach, a minimum true-up line. Then the subscription's discounts that apply in the period,
in the order listed: first every `percent` discount, computed on the undiscounted lines of its
scope and rounded once; then every `amount` discount, capped so that the subtotal never goes
below zero. Each is a negative line (`<candidate>:discount:<id>`). Each line is rounded once;
the subtotal is the sum of the rounded lines, discounts included.

Tax, when the customer's legal entity declares tax codes: once per candidate, on the subtotal,
`round_half_up(subtotal x rate)` under the customer's tax code. A customer of such an entity
without a tax code is held (MISSING_TAX_CODE) and no tax is computed until it has one.

Adjustments carry only what changed, as deltas: lines, discount lines, and the tax (the tax of
the period priced from scratch less the tax already issued, with the change of its base). So a
candidate plus its adjustments always sums exactly to the full period priced from scratch, tax
included, which a rounding of each adjustment's own subtotal would not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from typing import Literal

from operators import ids
from operators.catalog import Catalog, Discount, Plan, Subscription
from operators.money import ZERO, round_fraction, round_money
from operators.periods import Month, service_period
from operators.pricers import price
from schemas.records import (
    DiscountScope,
    InvoiceCandidate,
    InvoiceLine,
    LineKind,
    Recognition,
    TaxAmount,
)

# "tax": a candidate's tax under one tax code, kept with the lines so that adjustments take its
# delta like any line's; `quantity` holds its base. Never an invoice line.
ValueKind = LineKind | Literal["tax"]
SCOPE_KINDS: dict[DiscountScope, frozenset[str]] = {
    "usage": frozenset({"usage", "minimum_true_up"}),
    "fixed_fees": frozenset({"fixed_fee"}),
    "all": frozenset({"usage", "minimum_true_up", "fixed_fee"}),
}


@dataclass(frozen=True, slots=True)
class LineValue:
    kind: ValueKind
    ref: str  # fee id, meter id, discount id or tax code
    quantity: Decimal | None  # usage: the quantity; tax: the base
    amount: Decimal
    recognition: Recognition | None
    applies_to: DiscountScope | None = None  # discount lines


def _micros(delta: timedelta) -> int:
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def prorated_fees(plan: Plan, month: Month, start: datetime, end: datetime
                  ) -> dict[str, Decimal]:
    """Fee id -> the fee for the active time [start, end) within `month`: the fee times the
    active microseconds over the month's, rounded half up once to minor units. The invoice's
    fee lines and the running charges' accrual (sinks/running_charges.py) are both this."""
    active, whole = _micros(end - start), _micros(month.end - month.start)
    return {fee.id: _prorated(fee.amount, plan.currency, active, whole)
            for fee in plan.fixed_fees}


# Every subscription of a plan active for the same time of a month owes the same fee: worked out
# once (exact Fractions are most of a period close's cost for ten thousand subscriptions). The
# result depends on the fee's value only (Fraction and round_fraction ignore its exponent).
@lru_cache(maxsize=4096)
def _prorated(amount: Decimal, currency: str, active: int, whole: int) -> Decimal:
    return round_fraction(Fraction(amount) * Fraction(active, whole), currency)


def accrued_fixed_fees(plan: Plan, sub: Subscription, month: Month, as_of: datetime
                       ) -> dict[str, Decimal]:
    """Fee id -> fee accrued by `as_of`: the subscription's active time in the month up to
    `as_of`. Once `as_of` reaches the end of the service period this is exactly the invoice's
    fee line."""
    cut = service_period(month, sub.start, sub.end)
    if cut is None:
        return {}
    lo, hi = cut
    return prorated_fees(plan, month, lo, min(max(as_of, lo), hi))


def period_lines(catalog: Catalog, sub: Subscription, month: Month,
                 quantities: Mapping[str, Decimal]) -> dict[str, LineValue]:
    """Line key -> value, in presentation order (dicts keep insertion order)."""
    plan = catalog.plans[sub.plan_id]
    cut = service_period(month, sub.start, sub.end)
    assert cut is not None, "a period outside the subscription is never billed"
    fees = prorated_fees(plan, month, cut[0], cut[1])
    lines: dict[str, LineValue] = {}
    for fee in plan.fixed_fees:
        lines[ids.fee_line_key(fee.id)] = LineValue("fixed_fee", fee.id, None, fees[fee.id],
                                                    fee.revenue_recognition)
    for charge in plan.charges:
        q = quantities.get(charge.meter, ZERO)
        usage = round_money(price(charge, q), plan.currency)
        lines[ids.usage_line_key(charge.meter)] = LineValue("usage", charge.meter, q, usage,
                                                            "consumption")
        if charge.minimum is not None and usage < charge.minimum:
            lines[ids.minimum_line_key(charge.meter)] = LineValue(
                "minimum_true_up", charge.meter, None, charge.minimum - usage, "consumption")
    return discounted_and_taxed(catalog, sub, month, lines)


def discounted_and_taxed(catalog: Catalog, sub: Subscription, month: Month,
                         lines: dict[str, LineValue]) -> dict[str, LineValue]:
    """`lines` (fees, usage, true-ups) with the discount lines of `month` and the tax entry
    added (module docstring). The running charges (operators/charges.py) finish what has
    accrued so far with this same function, so their discounts and tax are the invoice's."""
    currency = catalog.plans[sub.plan_id].currency
    apply_discounts(lines, [d for d in sub.discounts if d.applies_in(month)], currency)
    customer = catalog.customers[sub.customer_id]
    entity = catalog.legal_entities[customer.legal_entity]
    code = entity.tax_codes.get(customer.tax_code) if customer.tax_code else None
    if code is not None:
        base = sum((line.amount for line in lines.values()), ZERO)
        lines[ids.tax_key(code.id)] = LineValue("tax", code.id, base,
                                                round_money(base * code.rate, currency), None)
    return lines


def apply_discounts(lines: dict[str, LineValue], discounts: list[Discount], currency: str
                    ) -> None:
    """Add the discount lines of one period to `lines` (module docstring for the rules)."""
    undiscounted = list(lines.values())
    for d in discounts:
        if d.percent is None:
            continue
        kinds = SCOPE_KINDS[d.applies_to]
        base = sum((x.amount for x in undiscounted if x.kind in kinds), ZERO)
        off = round_money(base * d.percent / 100, currency)
        lines[ids.discount_line_key(d.id)] = LineValue("discount", d.id, None, -off,
                                                       "proportional", d.applies_to)
    subtotal = sum((x.amount for x in lines.values()), ZERO)
    for d in discounts:
        if d.amount is None:
            continue
        off = min(d.amount, max(subtotal, ZERO))
        subtotal -= off
        lines[ids.discount_line_key(d.id)] = LineValue("discount", d.id, None,
                                                       round_money(-off, currency),
                                                       "proportional", "all")


def diff_lines(before: Mapping[str, LineValue], after: Mapping[str, LineValue]
               ) -> dict[str, LineValue]:
    """The lines of an adjustment: what changed, as deltas of quantity and rounded amount."""
    out: dict[str, LineValue] = {}
    for key in list(before) + [k for k in after if k not in before]:
        old, new = before.get(key), after.get(key)
        ref = (new or old).ref  # type: ignore[union-attr]
        kind = (new or old).kind  # type: ignore[union-attr]
        rec = (new or old).recognition  # type: ignore[union-attr]
        amount = (new.amount if new else ZERO) - (old.amount if old else ZERO)
        quantity = None
        if kind in ("usage", "tax"):
            quantity = (new.quantity if new and new.quantity is not None else ZERO) - (
                old.quantity if old and old.quantity is not None else ZERO)
        if amount != 0 or (quantity is not None and quantity != 0):
            out[key] = LineValue(kind, ref, quantity, amount, rec, (new or old).applies_to)  # type: ignore[union-attr]
    return out


def _consumption(days: Mapping[int, Decimal] | None) -> list[tuple[str, Decimal]] | None:
    if not days:
        return None
    return [(_day_text(d), days[d]) for d in sorted(days)]


_EPOCH = date(1970, 1, 1)


@lru_cache(maxsize=8192)
def _day_text(day: int) -> str:
    """The ISO date of UTC day number `day` (the same few dozen days for every subscription)."""
    return (_EPOCH + timedelta(days=day)).isoformat()


def candidate(catalog: Catalog, sub: Subscription, month: Month, lines: Mapping[str, LineValue],
              candidate_id: str, adjusts: str | None = None,
              consumption: Mapping[str, Mapping[int, Decimal]] | None = None
              ) -> InvoiceCandidate:
    """`consumption`: meter -> UTC day number -> exact amount rated that day (for an
    adjustment, the change), carried on usage lines for consumption revenue schedules."""
    plan = catalog.plans[sub.plan_id]
    customer = catalog.customers[sub.customer_id]
    cut = service_period(month, sub.start, sub.end)
    assert cut is not None
    rendered = []
    taxes = []
    entity = catalog.legal_entities[customer.legal_entity]
    for key, line in lines.items():
        if line.kind == "tax":
            code = entity.tax_codes.get(line.ref)
            taxes.append(TaxAmount(
                tax_code=line.ref, rate=code.rate if code else ZERO,
                base=round_money(line.quantity or ZERO, plan.currency),
                amount=line.amount, reverse_charge=bool(code and code.reverse_charge)))
            continue
        rendered.append(InvoiceLine(
            line_id=ids.line_id(candidate_id, key),
            kind=line.kind,
            amount=line.amount,
            meter=line.ref if line.kind in ("usage", "minimum_true_up") else None,
            fee_id=line.ref if line.kind == "fixed_fee" else None,
            quantity=line.quantity,
            revenue_recognition=line.recognition,
            consumption=_consumption((consumption or {}).get(line.ref))
            if line.kind == "usage" else None,
            discount_id=line.ref if line.kind == "discount" else None,
            applies_to=line.applies_to if line.kind == "discount" else None,
        ))
    holds = list(customer.hold_reasons(entity))
    start: datetime = cut[0]
    end: datetime = cut[1]
    subtotal = round_money(sum((line.amount for line in rendered), ZERO), plan.currency)
    tax_total = round_money(sum((t.amount for t in taxes), ZERO), plan.currency)
    return InvoiceCandidate(
        invoice_candidate_id=candidate_id,
        candidate_type="adjustment" if adjusts else "invoice",
        adjusts=adjusts,
        customer_id=customer.id,
        subscription_id=sub.id,
        plan_id=plan.id,
        legal_entity=customer.legal_entity,
        currency=plan.currency,
        billing_period=month.key,
        period_start=start,
        period_end=end,
        lines=rendered,
        subtotal=subtotal,
        status="held" if holds else "ready",
        hold_reasons=holds,
        taxes=taxes,
        tax_total=tax_total,
        total=subtotal + tax_total,
        credits_applied=[],
        amount_due=subtotal + tax_total,
    )
