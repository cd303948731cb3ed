"""Reading a meter's value out of an event's `data`, exactly and strictly."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from operators.limits import MAX_ATTRIBUTE_CHARS, MAX_VALUE, MAX_VALUE_INT
from operators.money import MAX_SCALE, MoneyError, parse_decimal

_LIMIT = MAX_VALUE
_INT_LIMIT = MAX_VALUE_INT
# A decimal string longer than this cannot be an acceptable value (18 integer digits, a point,
# 9 fractional digits, and room for leading zeros or an exponent); refusing it by length first
# keeps Decimal from ever parsing a megabyte of digits.
_MAX_TEXT = 64


class InvalidValue(ValueError):
    """The meter's value is missing or not an acceptable quantity."""


def lookup(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    try:
        for part in path:
            node = node[part]
    except (KeyError, TypeError):
        # Decoded JSON holds only dicts, lists, strings, numbers, booleans and null: indexing by
        # a string succeeds only on a dict that has the key. Find where it failed, for the message.
        node = data
        for i, part in enumerate(path):
            if not isinstance(node, dict) or part not in node:
                msg = f"{_where(path[: i + 1])} is missing"
                raise InvalidValue(msg) from None
            node = node[part]
    return node


def _where(path: tuple[str, ...]) -> str:
    # Built only for error messages: on the per-event path it would be a join per value.
    return "data." + ".".join(path)


def quantity(data: dict[str, Any], path: tuple[str, ...]) -> Decimal:
    """A non-negative, finite decimal: a JSON number or a string holding one."""
    raw = lookup(data, path)
    if isinstance(raw, bool) or raw is None:
        msg = f"{_where(path)} must be a number, got {_json(raw)}"
        raise InvalidValue(msg)
    if isinstance(raw, int):
        if 0 <= raw < _INT_LIMIT:  # an int has no fractional digits: the common case, settled
            return Decimal(raw)
        value = Decimal(raw)
    elif isinstance(raw, Decimal):
        value = raw
    elif isinstance(raw, str):
        if len(raw) > _MAX_TEXT:
            msg = (f"{_where(path)} must be a decimal below 10^18 with at most {MAX_SCALE} "
                   f"fractional digits, got a string of {len(raw)} characters")
            raise InvalidValue(msg)
        try:
            value = parse_decimal(raw)
        except MoneyError:
            msg = f"{_where(path)} must be a number or a decimal string, got {raw!r}"
            raise InvalidValue(msg) from None
    else:
        msg = f"{_where(path)} must be a number, got a {_kind(raw)}"
        raise InvalidValue(msg)
    problem = _quantity_problem(value, raw)
    if problem is not None:
        msg = f"{_where(path)} {problem}"
        raise InvalidValue(msg)
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent < -MAX_SCALE:
        # Written with more zeros than digits allowed (0e-999999999, 1.00000000000000000000):
        # the value is fine, but its exponent would travel into every sum and invoice text.
        # Dropping only zeros, this is exact.
        value = value.quantize(Decimal(1).scaleb(-_fractional_digits(value)))
    return value


def _quantity_problem(value: Decimal, raw: Any) -> str | None:
    # Only comparisons and `as_tuple` here: they are exact for any exponent, while arithmetic
    # or `normalize()` on 1e999999999 raises decimal.Overflow.
    if value.is_infinite():
        # JSON has no infinity: operators/envelope.py gives one for a number whose exponent
        # Decimal cannot hold.
        return "is out of range (the limit is below 10^18): its exponent is beyond any limit"
    if not value.is_finite():
        return f"must be finite, got {_short(raw)}"
    if value < 0:
        return f"must not be negative, got {_short(raw)}"
    if value >= _LIMIT:
        return f"is out of range (the limit is below 10^18): {_short(raw)}"
    if _fractional_digits(value) > MAX_SCALE:
        return f"has more than {MAX_SCALE} fractional digits: {_short(raw)}"
    return None


def _fractional_digits(value: Decimal) -> int:
    """Digits after the point needed to write `value` exactly (trailing zeros do not count)."""
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    if exponent >= 0 or not any(digits):
        return 0
    trailing = len(digits) - len(bytes(digits).rstrip(b"\0"))
    return max(0, -exponent - trailing)


def _short(raw: Any) -> str:
    """A value for a message: hostile values can be megabytes long."""
    text = repr(raw) if not isinstance(raw, Decimal) else str(raw)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def distinct_key(data: dict[str, Any], path: tuple[str, ...]) -> str:
    """The identity counted by unique_count. A number and the same number written as a string are
    one value (user 42 is "42"), because producers are rarely consistent about ids."""
    raw = lookup(data, path)
    if isinstance(raw, str):
        if not raw:
            msg = f"{_where(path)} must not be empty"
            raise InvalidValue(msg)
        if len(raw) > MAX_ATTRIBUTE_CHARS:
            msg = (f"{_where(path)} is longer than the limit of {MAX_ATTRIBUTE_CHARS} "
                   f"characters ({len(raw)})")
            raise InvalidValue(msg)
        return raw
    if isinstance(raw, bool) or raw is None:
        msg = f"{_where(path)} must be a string or a number, got {_json(raw)}"
        raise InvalidValue(msg)
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, Decimal):
        if not raw.is_finite():
            msg = (f"{_where(path)} is a number too long to count as a distinct value (its "
                   "exponent is beyond any limit)")
            raise InvalidValue(msg)
        return _canonical(raw, path)
    msg = f"{_where(path)} must be a string or a number, got a {_kind(raw)}"
    raise InvalidValue(msg)


def _canonical(value: Decimal, path: tuple[str, ...]) -> str:
    """The exact shortest plain text of a number (1.50 and 1.5 and 15e-1 are "1.5"; 4.2e1 is
    "42"), built from its digits: `normalize()` would round past the context precision (two
    long ids would collide) and overflow on large exponents."""
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    text = bytes(d + 48 for d in digits).decode().lstrip("0")
    if not text:
        return "0"
    stripped = text.rstrip("0")
    exponent += len(text) - len(stripped)
    # The written length is known before it is built: refuse anything a key should not be.
    length = len(stripped) + abs(exponent) + 2
    if length > MAX_ATTRIBUTE_CHARS:
        msg = (f"{_where(path)} is a number too long to count as a distinct value (more than "
               f"{MAX_ATTRIBUTE_CHARS} characters written out)")
        raise InvalidValue(msg)
    if exponent >= 0:
        plain = stripped + "0" * exponent
    elif -exponent >= len(stripped):
        plain = "0." + "0" * (-exponent - len(stripped)) + stripped
    else:
        plain = f"{stripped[:exponent]}.{stripped[exponent:]}"
    return ("-" if sign else "") + plain


def _json(raw: Any) -> str:
    return {None: "null", True: "true", False: "false"}.get(raw, repr(raw))


def _kind(raw: Any) -> str:
    return "object" if isinstance(raw, dict) else "list" if isinstance(raw, list) else "value"
