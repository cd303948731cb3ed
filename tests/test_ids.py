"""The id module: every id's format is pinned here, because ids are idempotency keys downstream
(compacted topics, ReplacingMergeTree rows, ERP document numbers) and must never drift."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators import ids


def test_every_id_has_its_documented_format() -> None:
    cand = ids.candidate_id("sub-acme-1", "2026-10")
    assert cand == "sub-acme-1:2026-10"
    assert ids.adjustment_id(cand, 2) == "sub-acme-1:2026-10:adj-2"
    assert ids.line_id(cand, ids.usage_line_key("tokens")) == "sub-acme-1:2026-10:usage:tokens"
    assert ids.fee_line_key("platform") == "fee:platform"
    assert ids.minimum_line_key("tokens") == "minimum:tokens"
    assert ids.schedule_id("s:2026-10:fee:platform") == "rs:s:2026-10:fee:platform"
    assert ids.journal_id("us-inc", "USD", "2026-10") == "us-inc:USD:2026-10"
    assert ids.window_row_id("sub-acme-1", "tokens", 1790812800) == "sub-acme-1:tokens:1790812800"
    assert (ids.correction_row_id("sub-acme-1", "tokens", 1790812800, 57)
            == "sub-acme-1:tokens:1790812800:c57")
    assert ids.exception_id("file", 0, 17) == "file:0:17"
    assert ids.rating_failure_id("sub-acme-1", 3) == "sub-acme-1:rating-failure-3"
    assert ids.performance_obligation("sub-acme-1", "tokens") == "sub-acme-1:tokens"
    assert ids.partition_name("usage-events", 3) == "usage-events:3"


@pytest.mark.parametrize(("candidate", "n"), [
    ("sub-acme-1:2026-10", 0),
    ("sub-acme-1:2026-10:adj-1", 1),
    ("sub-acme-1:2026-10:adj-31", 31),
    ("sub-adj-1:2026-10", 0),  # "adj" inside the subscription id is not an adjustment
])
def test_adjustment_number_orders_an_original_before_its_adjustments(candidate: str,
                                                                     n: int) -> None:
    assert ids.adjustment_number(candidate) == n


@given(st.text(min_size=1, max_size=40), st.integers(min_value=0, max_value=10**6))
def test_a_partition_name_parses_back_whatever_its_source(source: str, number: int) -> None:
    assert ids.parse_partition(ids.partition_name(source, number)) == (source, number)


@given(st.integers(min_value=1, max_value=10**6))
def test_an_adjustment_id_parses_back_to_its_number(n: int) -> None:
    assert ids.adjustment_number(ids.adjustment_id("s:2026-10", n)) == n
