"""Invoice candidates: the lines of one subscription's billing period, rounded once.

Lines, in plan order: each fixed fee (prorated by the active share of the calendar month), then
per charge a usage line (zero included) and, if the charge has a minimum the rounded usage does
not reach, a minimum true-up line. Each line is rounded once; the subtotal is the sum of the
rounded lines. Adjustments carry only the lines that changed, as deltas, so a candidate plus its
adjustments always sums to the full period exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from operators import ids
from operators.catalog import Catalog, Plan, Subscription
from operators.money import ZERO, round_fraction, round_money
from operators.periods import Month, service_period
from operators.pricers import price
from schemas.records import InvoiceCandidate, InvoiceLine, LineKind, Recognition


@dataclass(frozen=True, slots=True)
class LineValue:
    kind: LineKind
    ref: str  # fee id or meter id
    quantity: Decimal | None
    amount: Decimal
    recognition: Recognition | None


def _micros(delta: timedelta) -> int:
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def prorated_fees(plan: Plan, month: Month, start: datetime, end: datetime
                  ) -> dict[str, Decimal]:
    """Fee id -> the fee for the active time [start, end) within `month`: the fee times the
    active microseconds over the month's, rounded half up once to minor units. The invoice's
    fee lines and the running charges' accrual (sinks/running_charges.py) are both this."""
    share = Fraction(_micros(end - start), _micros(month.end - month.start))
    return {fee.id: round_fraction(Fraction(fee.amount) * share, plan.currency)
            for fee in plan.fixed_fees}


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
    return lines


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
        if kind == "usage":
            quantity = (new.quantity if new and new.quantity is not None else ZERO) - (
                old.quantity if old and old.quantity is not None else ZERO)
        if amount != 0 or (quantity is not None and quantity != 0):
            out[key] = LineValue(kind, ref, quantity, amount, rec)
    return out


def _consumption(days: Mapping[int, Decimal] | None) -> list[tuple[str, Decimal]] | None:
    if not days:
        return None
    return [((_EPOCH + timedelta(days=d)).isoformat(), days[d]) for d in sorted(days)]


_EPOCH = date(1970, 1, 1)


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
    for key, line in lines.items():
        rendered.append(InvoiceLine(
            line_id=ids.line_id(candidate_id, key),
            kind=line.kind,
            amount=line.amount,
            meter=line.ref if line.kind != "fixed_fee" else None,
            fee_id=line.ref if line.kind == "fixed_fee" else None,
            quantity=line.quantity,
            revenue_recognition=line.recognition,
            consumption=_consumption((consumption or {}).get(line.ref))
            if line.kind == "usage" else None,
        ))
    holds = list(customer.hold_reasons())
    start: datetime = cut[0]
    end: datetime = cut[1]
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
        subtotal=round_money(sum((line.amount for line in lines.values()), ZERO), plan.currency),
        status="held" if holds else "ready",
        hold_reasons=holds,
    )
