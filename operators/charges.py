"""A customer's running charges as the API shows them, pure: the lines the period's invoice
candidate will carry, from what has been rated so far.

The input is what the running-charges store holds (sinks/running_charges.py, or the same
figures read from the rated windows of an embedded run): per subscription, the cumulative
quantity and exact amount of each meter, and each fixed fee accrued up to the latest window
end. Each usage line is the exact amount rounded once to the currency's minor unit, as
`operators.invoicing.period_lines` rounds the candidate's line, with the same line id; so
once the period is fully rated these lines are the candidate's lines. Minimum true-ups are
decided when the period closes, so they appear once its candidate is issued (`closed`). The
subscription's discounts and its tax are computed on what has accrued so far by the invoice's
own function (`operators.invoicing.discounted_and_taxed`): a 20 % usage discount is already
taken off the usage shown, and `total` is what the customer owes with tax as of `as_of`.

Fixed fees accrue with event time: the fee prorated over the subscription's active time up to
the latest window it has rated (`operators.invoicing.accrued_fixed_fees`, the running-charges
sink's own function), and the whole fee once the period's candidate is issued (`closed`): the
period is over then, whatever time its last event had, and the figure is the invoice's line.

Every subscription of the customer that is active in the period is listed, in catalog order,
even before anything was rated for it (zero lines, `as_of` None), so a customer sees all that
will be billed.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from datetime import datetime
from decimal import Decimal
from typing import Any

from operators import ids
from operators.catalog import Catalog
from operators.invoicing import LineValue, accrued_fixed_fees, discounted_and_taxed
from operators.money import ZERO, fmt, fmt_value, round_money
from operators.periods import Month, service_period
from schemas.api import ChargeLine, Charges, CurrencyTotal, SubscriptionCharges


def running_charges(catalog: Catalog, customer_id: str, period: str,
                    held: Mapping[str, Mapping[str, Any]],
                    updated_at: datetime | None, closed: Set[str] = frozenset()) -> Charges:
    """`held`: subscription id -> {"usage": {meter: {"quantity", "amount", "as_of"}},
    "fixed_fees": {fee id: {"amount", "as_of"}}} (RunningCharges.read's `subscriptions`).
    `closed`: the subscriptions whose candidate for the period was issued."""
    month = Month.parse(period)
    customer = catalog.customers.get(customer_id)
    subs = [s for s in (customer.subscriptions if customer is not None else ())
            if service_period(month, s.start, s.end) is not None]
    out: list[SubscriptionCharges] = []
    totals: dict[str, list[Decimal]] = {}  # currency -> [subtotal, tax]
    latest: datetime | None = None
    for sub in subs:
        plan = catalog.plans[sub.plan_id]
        cur = plan.currency
        data = held.get(sub.id, {})
        usage: Mapping[str, Any] = data.get("usage", {})
        candidate = ids.candidate_id(sub.id, period)
        as_of: datetime | None = None
        for rated in usage.values():
            if as_of is None or rated["as_of"] > as_of:
                as_of = rated["as_of"]
        for accrual in data.get("fixed_fees", {}).values():
            if as_of is None or accrual["as_of"] > as_of:
                as_of = accrual["as_of"]
        fee_as_of = month.end if sub.id in closed else as_of
        fees = (accrued_fixed_fees(plan, sub, month, fee_as_of) if fee_as_of is not None
                else {})
        zero = round_money(ZERO, cur)
        values: dict[str, LineValue] = {}
        for fee in plan.fixed_fees:
            values[ids.fee_line_key(fee.id)] = LineValue(
                "fixed_fee", fee.id, None, fees.get(fee.id, zero), fee.revenue_recognition)
        for charge in plan.charges:
            rated = usage.get(charge.meter)
            quantity = rated["quantity"] if rated else ZERO
            amount = round_money(rated["amount"] if rated else ZERO, cur)
            values[ids.usage_line_key(charge.meter)] = LineValue(
                "usage", charge.meter, quantity, amount, "consumption")
            # Decided at close, as the candidate decides it: only once the period is issued.
            if sub.id in closed and charge.minimum is not None and amount < charge.minimum:
                values[ids.minimum_line_key(charge.meter)] = LineValue(
                    "minimum_true_up", charge.meter, None, charge.minimum - amount,
                    "consumption")
        discounted_and_taxed(catalog, sub, month, values)
        lines: list[ChargeLine] = []
        subtotal = tax_total = zero
        for key, v in values.items():
            if v.kind == "tax":
                tax_total += v.amount
                continue
            subtotal += v.amount
            lines.append(ChargeLine(
                line_id=ids.line_id(candidate, key), kind=v.kind, amount=fmt(v.amount),
                meter=v.ref if v.kind in ("usage", "minimum_true_up") else None,
                fee_id=v.ref if v.kind == "fixed_fee" else None,
                discount_id=v.ref if v.kind == "discount" else None,
                quantity=fmt_value(v.quantity) if v.kind == "usage" and v.quantity is not None
                else None))
        sums = totals.setdefault(cur, [ZERO, ZERO])
        sums[0] += subtotal
        sums[1] += tax_total
        if as_of is not None and (latest is None or as_of > latest):
            latest = as_of
        out.append(SubscriptionCharges(subscription_id=sub.id, plan_id=plan.id, currency=cur,
                                       lines=lines, subtotal=fmt(subtotal),
                                       tax_total=fmt(tax_total), total=fmt(subtotal + tax_total),
                                       as_of=as_of))
    return Charges(customer_id=customer_id, period=period, subscriptions=out,
                   totals=[CurrencyTotal(currency=c, amount=fmt(a), tax_total=fmt(t),
                                         total=fmt(a + t))
                           for c, (a, t) in sorted(totals.items())],
                   as_of=latest, updated_at=updated_at)
