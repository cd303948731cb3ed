"""API tokens and the rate limit, as plain functions (operators/tokens.py)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators.tokens import (
    Scope,
    TokenBucket,
    TokenError,
    check_token_id,
    new_token,
    parse_scope,
    split_token,
    verify,
)

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)


def made(scope: str = "customer:acme", **kw: object) -> tuple[str, object]:
    return new_token(parse_scope(scope), NOW, secrets.token_bytes(40), **kw)  # type: ignore[arg-type]


def test_a_token_grants_its_scope_and_only_its_hash_is_kept() -> None:
    text, record = made()
    assert text.startswith("mwx_") and split_token(text) is not None
    token_id, secret = split_token(text)  # type: ignore[misc]
    assert record.token_id == token_id  # type: ignore[attr-defined]
    assert secret not in repr(record) and text not in repr(record)
    assert verify(text, None, NOW, record) == Scope("customer", "acme")  # type: ignore[arg-type]


@given(st.integers(min_value=0), st.sampled_from("AZaz09-_"))
def test_any_other_secret_is_refused(position: int, char: str) -> None:
    text, record = made("finance")
    i = len("mwx_") + 17 + position % 43  # a character of the secret
    other = text[:i] + char + text[i + 1:]
    expected = None if other != text else Scope("finance")
    assert verify(other, None, NOW, record) == expected  # type: ignore[arg-type]


def test_revoked_expired_unknown_and_malformed_tokens_grant_nothing() -> None:
    text, record = made(expires_in=timedelta(days=30))
    assert verify(text, None, NOW + timedelta(days=29), record) is not None  # type: ignore[arg-type]
    assert verify(text, None, NOW + timedelta(days=30), record) is None  # type: ignore[arg-type]
    import msgspec

    revoked = msgspec.structs.replace(record, revoked_at=NOW)  # type: ignore[type-var]
    assert verify(text, None, NOW, revoked) is None
    assert verify(text, {}, NOW) is None  # unknown id
    for bad in ("", "mwx_", "Bearer x", text + "x", text.upper(), text.replace("mwx_", "mwy_")):
        assert verify(bad, None, NOW, record) is None  # type: ignore[arg-type]


def test_scopes() -> None:
    assert parse_scope("finance").finance and parse_scope("admin").finance
    acme = parse_scope("customer:acme")
    assert acme.may_read_customer("acme") and not acme.may_read_customer("ACME")
    assert not acme.finance and str(acme) == "customer:acme"
    assert parse_scope("customer:a:b").customer_id == "a:b"  # ids may hold ':'
    for bad in ("", "root", "customer:", "customer", "customer:a b", "Finance",
                "customer:" + "x" * 1025):
        with pytest.raises(TokenError):
            parse_scope(bad)
    with pytest.raises(TokenError):
        check_token_id("not-hex")
    with pytest.raises(TokenError):
        new_token(acme, NOW, b"short")
    with pytest.raises(TokenError):
        new_token(acme, NOW, secrets.token_bytes(40), expires_in=timedelta(0))


def test_the_rate_limit_allows_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = bucket.take(0.0)
    assert wait == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0  # one more after half a second
    assert bucket.take(0.5) > 0
    assert [bucket.take(10.0) for _ in range(3)] == [0.0] * 3  # refilled to the burst, no more
    assert bucket.take(10.0) > 0
