"""One small pricer per pricing model.

A pricer maps a period quantity Q to an exact, unrounded amount. Streaming rating calls it on the
cumulative quantity after every window and books the difference (see operators/rating.py), so a
pricer never needs to know about windows, deltas or rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_FLOOR, Decimal, localcontext

from operators.catalog import Charge
from operators.limits import STORE_LIMIT
from operators.money import ZERO

Pricer = Callable[[Charge, Decimal], Decimal]


def per_unit(charge: Charge, q: Decimal) -> Decimal:
    return q * charge.unit_price


def graduated(charge: Charge, q: Decimal) -> Decimal:
    """Each tier prices the units that fall inside it; its flat price applies once it is entered."""
    total = ZERO
    lower = ZERO
    for tier in charge.tiers:
        if q <= lower:
            break
        upper = q if tier.up_to is None else min(q, tier.up_to)
        total += (upper - lower) * tier.unit_price + tier.flat_price
        if tier.up_to is None:
            break
        lower = tier.up_to
    return total


def volume(charge: Charge, q: Decimal) -> Decimal:
    """All units at the price of the tier that Q falls in; nothing at all for Q = 0."""
    if q == 0:
        return ZERO
    for tier in charge.tiers:
        if tier.up_to is None or q <= tier.up_to:
            return q * tier.unit_price + tier.flat_price
    msg = "catalog guarantees an open last tier"
    raise AssertionError(msg)


def package(charge: Charge, q: Decimal) -> Decimal:
    whole, rest = divmod(q, charge.package_size)
    packages = whole + (1 if rest else 0)
    return packages * charge.package_price


def percentage(charge: Charge, q: Decimal) -> Decimal:
    return q * charge.rate


PRICERS: dict[str, Pricer] = {
    "per_unit": per_unit,
    "graduated": graduated,
    "volume": volume,
    "package": package,
    "percentage": percentage,
}


def price(charge: Charge, q: Decimal) -> Decimal:
    return PRICERS[charge.model](charge, q)


def quantity_cap(charge: Charge) -> Decimal:
    """The period quantity a charge can rate without leaving what is stored exactly: every
    quantity below it, and the amount any pricer gives for it, stay below `STORE_LIMIT`.

    Each model's amount is bounded by a line, amount <= q * slope + offset (the steepest tier,
    every flat price, one package started), so the cap is where that line meets the limit,
    rounded down. Ingest refuses usage that would take a period past it (PERIOD_LIMIT_EXCEEDED)
    instead of letting a store insert fail later.
    """
    if charge.model == "per_unit":
        slope, offset = charge.unit_price, ZERO
    elif charge.model in ("graduated", "volume"):
        slope = max(t.unit_price for t in charge.tiers)
        flats = [t.flat_price for t in charge.tiers]
        offset = sum(flats, ZERO) if charge.model == "graduated" else max(flats)
    elif charge.model == "package":
        slope, offset = charge.package_price / charge.package_size, charge.package_price
    else:
        slope, offset = charge.rate, ZERO
    if slope <= 0:
        return STORE_LIMIT
    with localcontext() as ctx:
        ctx.rounding = ROUND_FLOOR
        return min(STORE_LIMIT, (STORE_LIMIT - offset) / slope)
