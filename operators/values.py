"""Reading a meter's value out of an event's `data`, exactly and strictly."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from operators.money import MAX_SCALE, MoneyError, parse_decimal, scale

# Quantities are stored as Decimal(38, 18); values at or above 10^18 could overflow a period sum.
_LIMIT = Decimal(10) ** 18
_INT_LIMIT = 10**18


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
    return value


def _quantity_problem(value: Decimal, raw: Any) -> str | None:
    if not value.is_finite():
        return f"must be finite, got {raw!r}"
    if value < 0:
        return f"must not be negative, got {raw!r}"
    if value >= _LIMIT:
        return f"is out of range (>= 10^18): {raw!r}"
    if scale(value) > MAX_SCALE:
        return f"has more than {MAX_SCALE} fractional digits: {raw!r}"
    return None


def distinct_key(data: dict[str, Any], path: tuple[str, ...]) -> str:
    """The identity counted by unique_count. A number and the same number written as a string are
    one value (user 42 is "42"), because producers are rarely consistent about ids."""
    raw = lookup(data, path)
    if isinstance(raw, str):
        if not raw:
            msg = f"{_where(path)} must not be empty"
            raise InvalidValue(msg)
        return raw
    if isinstance(raw, bool) or raw is None:
        msg = f"{_where(path)} must be a string or a number, got {_json(raw)}"
        raise InvalidValue(msg)
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, Decimal):
        if not raw.is_finite():
            msg = f"{_where(path)} must be finite"
            raise InvalidValue(msg)
        normal = raw.normalize()
        return format(normal, "f") if normal != normal.to_integral() else str(int(normal))
    msg = f"{_where(path)} must be a string or a number, got a {_kind(raw)}"
    raise InvalidValue(msg)


def _json(raw: Any) -> str:
    return {None: "null", True: "true", False: "false"}.get(raw, repr(raw))


def _kind(raw: Any) -> str:
    return "object" if isinstance(raw, dict) else "list" if isinstance(raw, list) else "value"
