"""Comparing the invoice candidates two runs published (their JSON, as read back from the
candidates topic), for the tests and benchmarks that check a cluster against one process.

With several input partitions an invoice depends on each partition's contents alone, while how
late usage groups into adjustments and a graduated charge's split over days follow arrival
order (README, known limits): so two runs are compared by their invoices without the per-day
consumption, and by the net amount per line over invoices and adjustments together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any


def invoices(view: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The invoices (not adjustments) of a keyed candidates view, without `consumption`."""
    return {key: {**cand, "lines": [{k: v for k, v in line.items() if k != "consumption"}
                                    for line in cand["lines"]]}
            for key, cand in view.items() if cand["adjusts"] is None}


def net_by_line(candidates: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], Decimal]:
    """(subscription, period, line) -> amount over the invoice and its adjustments; lines that
    net to zero are left out. An adjustment's line id carries the adjusted line's after its
    kind (`adj:<kind>:<line>`), so both add up under the invoice line's key."""
    out: dict[tuple[str, str, str], Decimal] = {}
    for c in candidates:
        for line in c["lines"]:
            kind_and_line = line["line_id"].split(":", 2)[2]
            key = (c["subscription_id"], c["billing_period"],
                   kind_and_line.split(":", 1)[-1] if c["adjusts"] else kind_and_line)
            out[key] = out.get(key, Decimal(0)) + Decimal(line["amount"])
    return {k: v for k, v in out.items() if v}
