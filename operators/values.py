"""Reading a meter's value out of an event's `data`, exactly and strictly."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from operators.money import MAX_SCALE, MoneyError, parse_decimal, scale

# Quantities are stored as Decimal(38, 18); values at or above 10^18 could overflow a period sum.
_LIMIT = Decimal(10) ** 18


class InvalidValue(ValueError):
    """The meter's value is missing or not an acceptable quantity."""


def lookup(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    for i, part in enumerate(path):
        if not isinstance(node, dict) or part not in node:
            where = "data." + ".".join(path[: i + 1])
            msg = f"{where} is missing"
            raise InvalidValue(msg)
        node = node[part]
    return node


def quantity(data: dict[str, Any], path: tuple[str, ...]) -> Decimal:
    """A non-negative, finite decimal: a JSON number or a string holding one."""
    raw = lookup(data, path)
    where = "data." + ".".join(path)
    if isinstance(raw, bool) or raw is None:
        msg = f"{where} must be a number, got {_json(raw)}"
        raise InvalidValue(msg)
    if isinstance(raw, int):
        value = Decimal(raw)
    elif isinstance(raw, Decimal):
        value = raw
    elif isinstance(raw, str):
        try:
            value = parse_decimal(raw)
        except MoneyError:
            msg = f"{where} must be a number or a decimal string, got {raw!r}"
            raise InvalidValue(msg) from None
    else:
        msg = f"{where} must be a number, got a {_kind(raw)}"
        raise InvalidValue(msg)
    if not value.is_finite():
        msg = f"{where} must be finite, got {raw!r}"
        raise InvalidValue(msg)
    if value < 0:
        msg = f"{where} must not be negative, got {raw!r}"
        raise InvalidValue(msg)
    if value >= _LIMIT:
        msg = f"{where} is out of range (>= 10^18): {raw!r}"
        raise InvalidValue(msg)
    if scale(value) > MAX_SCALE:
        msg = f"{where} has more than {MAX_SCALE} fractional digits: {raw!r}"
        raise InvalidValue(msg)
    return value


def distinct_key(data: dict[str, Any], path: tuple[str, ...]) -> str:
    """The identity counted by unique_count. A number and the same number written as a string are
    one value (user 42 is "42"), because producers are rarely consistent about ids."""
    raw = lookup(data, path)
    where = "data." + ".".join(path)
    if isinstance(raw, str):
        if not raw:
            msg = f"{where} must not be empty"
            raise InvalidValue(msg)
        return raw
    if isinstance(raw, bool) or raw is None:
        msg = f"{where} must be a string or a number, got {_json(raw)}"
        raise InvalidValue(msg)
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, Decimal):
        if not raw.is_finite():
            msg = f"{where} must be finite"
            raise InvalidValue(msg)
        normal = raw.normalize()
        return format(normal, "f") if normal != normal.to_integral() else str(int(normal))
    msg = f"{where} must be a string or a number, got a {_kind(raw)}"
    raise InvalidValue(msg)


def _json(raw: Any) -> str:
    return {None: "null", True: "true", False: "false"}.get(raw, repr(raw))


def _kind(raw: Any) -> str:
    return "object" if isinstance(raw, dict) else "list" if isinstance(raw, list) else "value"
