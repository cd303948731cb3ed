"""One small pricer per pricing model.

A pricer maps a period quantity Q to an exact, unrounded amount. Streaming rating calls it on the
cumulative quantity after every window and books the difference (see operators/rating.py), so a
pricer never needs to know about windows, deltas or rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from operators.catalog import Charge
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
