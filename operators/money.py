"""Money: exact decimals, ISO 4217 minor units, one rounding rule.

Every amount is a `Decimal` built from text, never from a binary float. Amounts stay unrounded
while they are rated; an invoice line is rounded once, ROUND_HALF_UP, to its currency's minor unit.
"""

from __future__ import annotations

import decimal
import re
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

# Precision high enough that no product of a catalog price (<= 9 fractional digits) and a usage
# quantity ever rounds. Set on DefaultContext too, because Bytewax runs workers in threads and
# each new thread copies DefaultContext.
PRECISION = 60
decimal.DefaultContext.prec = PRECISION
decimal.getcontext().prec = PRECISION

ZERO = Decimal(0)

# ISO 4217 minor units for the currencies we accept. An unknown currency is a catalog error
# rather than a guess at its exponent.
MINOR_UNITS: dict[str, int] = {
    "AED": 2, "AUD": 2, "BHD": 3, "BRL": 2, "CAD": 2, "CHF": 2, "CLP": 0, "CNY": 2, "CZK": 2,
    "DKK": 2, "EUR": 2, "GBP": 2, "HKD": 2, "HUF": 2, "IDR": 2, "ILS": 2, "INR": 2, "ISK": 0,
    "JOD": 3, "JPY": 0, "KRW": 0, "KWD": 3, "MXN": 2, "MYR": 2, "NOK": 2, "NZD": 2, "OMR": 3,
    "PHP": 2, "PLN": 2, "RON": 2, "SAR": 2, "SEK": 2, "SGD": 2, "THB": 2, "TND": 3, "TRY": 2,
    "TWD": 2, "UGX": 0, "USD": 2, "VND": 0, "XAF": 0, "XOF": 0, "ZAR": 2,
}

# Fractional digits allowed in catalog prices and in usage values. 9 + 9 = 18, the scale of the
# Decimal(38, 18) columns the rated windows are stored in, so no stored amount is ever rounded.
MAX_SCALE = 9

_DECIMAL_TEXT = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


class MoneyError(ValueError):
    """A text is not an exact, finite decimal of the accepted scale."""


def parse_decimal(text: str) -> Decimal:
    """Parse a decimal written as text. Rejects NaN, infinities, blanks and stray characters."""
    if not _DECIMAL_TEXT.fullmatch(text):
        msg = f"{text!r} is not a decimal number"
        raise MoneyError(msg)
    return Decimal(text)


def scale(value: Decimal) -> int:
    """Number of fractional digits needed to write `value` exactly."""
    exponent = value.normalize().as_tuple().exponent
    assert isinstance(exponent, int)  # finite by construction
    return max(0, -exponent)


def minor_units(currency: str) -> int:
    return MINOR_UNITS[currency]


# Built once: round_money runs for every day of every revenue schedule line (millions of calls
# for a catalog of ten thousand subscriptions), and building the quantum was half its cost.
_QUANTA: dict[str, Decimal] = {c: Decimal(1).scaleb(-u) for c, u in MINOR_UNITS.items()}


def quantum(currency: str) -> Decimal:
    """The currency's minor unit as a Decimal exponent (Decimal("0.01") for USD)."""
    return _QUANTA[currency]


def round_money(amount: Decimal, currency: str) -> Decimal:
    """The single rounding step: ROUND_HALF_UP to the currency's minor unit."""
    return amount.quantize(_QUANTA[currency], rounding=ROUND_HALF_UP)


def round_fraction(value: Fraction, currency: str) -> Decimal:
    """Round an exact rational amount (a prorated fee) half up to minor units, exactly."""
    digits = MINOR_UNITS[currency]
    scaled = value * 10**digits
    sign = -1 if scaled < 0 else 1
    magnitude = abs(scaled)
    units = magnitude.numerator // magnitude.denominator
    if (magnitude - units) * 2 >= 1:
        units += 1
    return Decimal(sign * units).scaleb(-digits)


def fmt(value: Decimal) -> str:
    """Canonical text of a decimal: plain notation, no exponent, trailing zeros kept as given."""
    return format(value, "f")


def fmt_value(value: Decimal) -> str:
    """A quantity as plain text without trailing zeros ("1025.4", "1200"): the same text
    whichever store it was read from (Redis keeps the scale it was given, ClickHouse's
    Decimal(38, 18) does not)."""
    if not value:
        return "0"
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
