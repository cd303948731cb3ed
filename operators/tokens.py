"""API tokens, pure: their format, scopes, what a scope may read, and the per-token rate limit.

A token is `mwx_<token id>_<secret>`:
- the token id (16 hex digits) is public: `tokens list` shows it, `tokens revoke` takes it, the
  rate limit and the logs key on it;
- the secret (32 random bytes, URL-safe base64) is shown once, when the token is created, and
  only its SHA-256 is stored.

A fast hash is enough: the secret is 256 random bits, so a stolen hash cannot be searched back
to a secret the way a password's can, and every request verifies in microseconds. The stored
hash and the presented one are compared with `hmac.compare_digest` (constant time).

Scopes (`customer:<id>`, `finance`, `admin`, `producer`, `producer:<source>`) are checked by
construction: a customer token's customer id is the only one it can name, and every customer
route asks `may_read_customer` before it reads anything, so another customer's data cannot leak
through a route that forgot. A producer token reads nothing: it may only send events
(POST /v1/events), and `producer:<source>` only events whose CloudEvents `source` is exactly
that, so one service cannot send (or, through the dedup key `source/id`, shadow) another's.
Sending is a scope of its own, not part of `admin`: the token a service is deployed with
should not be able to read what every customer owes.
Time comes in as an argument (the caller's injected clock); nothing here reads the wall clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import msgspec

from operators.limits import MAX_ATTRIBUTE_CHARS, MAX_ID_LENGTH

PREFIX = "mwx_"
_TOKEN = re.compile(r"mwx_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_TOKEN_ID = re.compile(r"[0-9a-f]{16}")
# Customer ids are catalog ids: printable, no whitespace, bounded like every id.
_CUSTOMER = re.compile(r"[^\s\x00-\x1f\x7f]+")

ScopeKind = Literal["customer", "finance", "admin", "producer"]


class TokenError(ValueError):
    """A scope, expiry or token id that cannot be used, with why."""


@dataclass(frozen=True, slots=True)
class Scope:
    kind: ScopeKind
    customer_id: str | None = None  # for kind "customer" only
    source: str | None = None  # for kind "producer": the only source it may send, if any

    def __str__(self) -> str:
        if self.kind == "customer":
            return f"customer:{self.customer_id}"
        if self.kind == "producer" and self.source is not None:
            return f"producer:{self.source}"
        return self.kind

    @property
    def finance(self) -> bool:
        """Finance views: exceptions, invoice exceptions, reconciliation, every customer.
        `admin` is a superset of `finance` (today they read the same things; admin is the
        scope for operating the service itself)."""
        return self.kind in ("finance", "admin")

    def may_read_customer(self, customer_id: str) -> bool:
        return self.finance or (self.kind == "customer" and self.customer_id == customer_id)

    def may_send(self, source: str) -> bool:
        """Whether this token may send an event of this CloudEvents `source`."""
        return self.kind == "producer" and (self.source is None or self.source == source)


def parse_scope(text: str) -> Scope:
    if text in ("finance", "admin"):
        return Scope(text)  # type: ignore[arg-type]
    kind, sep, customer = text.partition(":")
    if kind == "customer" and sep:
        if not customer or len(customer) > MAX_ID_LENGTH or not _CUSTOMER.fullmatch(customer):
            msg = (f"scope {text!r}: the customer id must be 1 to {MAX_ID_LENGTH} printable "
                   "characters without spaces")
            raise TokenError(msg)
        return Scope("customer", customer)
    if text == "producer":
        return Scope("producer")
    if kind == "producer" and sep:
        # A source is a CloudEvents attribute: bounded like one, and printable.
        if not customer or len(customer) > MAX_ATTRIBUTE_CHARS or \
                not _CUSTOMER.fullmatch(customer):
            msg = (f"scope {text!r}: the source must be 1 to {MAX_ATTRIBUTE_CHARS} printable "
                   "characters without spaces")
            raise TokenError(msg)
        return Scope("producer", source=customer)
    msg = (f"scope {text!r}: expected customer:<id>, finance, admin, producer or "
           "producer:<source>")
    raise TokenError(msg)


class TokenRecord(msgspec.Struct, kw_only=True, frozen=True):
    """What is stored for a token: never the token itself."""

    token_id: str
    scope: str
    secret_sha256: str  # hex
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    note: str = ""

    def state(self, now: datetime) -> Literal["active", "revoked", "expired"]:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def new_token(scope: Scope, now: datetime, random_bytes: bytes, *,
              expires_in: timedelta | None = None, note: str = "") -> tuple[str, TokenRecord]:
    """(the token to show once, the record to store). `random_bytes`: 40 bytes from the
    caller's CSPRNG (`secrets.token_bytes(40)`): 8 for the id, 32 for the secret."""
    if len(random_bytes) != 40:
        msg = "a token needs 40 random bytes"
        raise TokenError(msg)
    if now.tzinfo is None:
        msg = "now must be an aware datetime"
        raise TokenError(msg)
    if expires_in is not None and expires_in <= timedelta(0):
        msg = "a token's expiry must be in the future"
        raise TokenError(msg)
    token_id = random_bytes[:8].hex()
    secret = base64.urlsafe_b64encode(random_bytes[8:]).decode("ascii").rstrip("=")
    record = TokenRecord(token_id=token_id, scope=str(scope), secret_sha256=_digest(secret),
                         created_at=now,
                         expires_at=now + expires_in if expires_in is not None else None,
                         note=note)
    return f"{PREFIX}{token_id}_{secret}", record


def split_token(token: str) -> tuple[str, str] | None:
    """(token id, secret) of a well-formed token; None for anything else."""
    m = _TOKEN.fullmatch(token)
    return (m.group(1), m.group(2)) if m else None


def check_token_id(token_id: str) -> str:
    if not _TOKEN_ID.fullmatch(token_id):
        msg = f"{token_id!r} is not a token id (16 hex digits, as `tokens list` shows)"
        raise TokenError(msg)
    return token_id


# Compared against when the id is unknown, so an unknown id costs the same hash and compare.
_NOBODY = "0" * 64


def verify(token: str, lookup: dict[str, TokenRecord] | None, now: datetime,
           record: TokenRecord | None = None) -> Scope | None:
    """The scope a presented token grants, or None (unknown, wrong secret, revoked, expired:
    the caller answers 401 to all alike). `record`: the stored record of the token's id
    (or pass `lookup`, id -> record)."""
    parts = split_token(token)
    if parts is None:
        return None
    token_id, secret = parts
    if record is None and lookup is not None:
        record = lookup.get(token_id)
    expected = record.secret_sha256 if record is not None else _NOBODY
    matches = hmac.compare_digest(expected, _digest(secret))
    if record is None or not matches or record.state(now) != "active":
        return None
    return parse_scope(record.scope)


class TokenBucket:
    """A per-token rate limit: `rate` requests a second on average, bursts of `burst`. Time is
    passed in (seconds, monotonic), so it is tested without sleeping."""

    __slots__ = ("_level", "_when", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._level = burst
        self._when = now

    def take(self, now: float) -> float:
        """0.0 when a request may go ahead (and it is counted); else the seconds to wait."""
        self._level = min(self.burst, self._level + (now - self._when) * self.rate)
        self._when = now
        if self._level >= 1.0:
            self._level -= 1.0
            return 0.0
        return (1.0 - self._level) / self.rate
