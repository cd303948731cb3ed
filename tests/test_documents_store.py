"""Billing documents and rejected events in the real ClickHouse engine (chDB): what the API
lists, stored idempotently by id, amounts exact however large the limits let them be."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from schemas.erp import InvoiceException
from schemas.records import ExceptionRecord, InvoiceCandidate, InvoiceLine
from sinks.clickhouse import ChdbStore
from sinks.clickhouse.rows import documents_of, rejections_of

AT = datetime(2026, 12, 2, 12, tzinfo=UTC)


def candidate(subtotal: str, status: str = "ready") -> InvoiceCandidate:
    return InvoiceCandidate(
        invoice_candidate_id="sub-1:2026-10", candidate_type="invoice", adjusts=None,
        customer_id="c", subscription_id="sub-1", plan_id="p", legal_entity="le",
        currency="USD", billing_period="2026-10",
        period_start=datetime(2026, 10, 1, tzinfo=UTC),
        period_end=datetime(2026, 11, 1, tzinfo=UTC),
        lines=[InvoiceLine(line_id="sub-1:2026-10:usage:m", kind="usage",
                           amount=Decimal(subtotal), meter="m", quantity=Decimal(1))],
        subtotal=Decimal(subtotal), status=status, hold_reasons=[],  # type: ignore[arg-type]
        taxes=[], tax_total=Decimal("0.00"), total=Decimal(subtotal), credits_applied=[],
        amount_due=Decimal(subtotal))


def test_documents_are_stored_once_by_id_with_their_exact_json(tmp_path: Path) -> None:
    # Beyond Decimal(38, 18)'s 20 integer digits: a subtotal the period limits allow.
    huge = "100000000000000178500.29"
    exc = InvoiceException(invoice_candidate_id="sub-1:2026-10", customer_id="c",
                           legal_entity="le", currency="USD", billing_period="2026-10",
                           subtotal=Decimal(huge), total=Decimal(huge),
                           reasons=["MISSING_TAX_REGISTRATION"],
                           details=["customer 'c' has no tax_registration"])
    with ChdbStore(str(tmp_path / "ch")) as store:
        rows = documents_of([candidate(huge, "held")], [], [exc], AT)
        store.write_documents(rows)
        store.write_documents(rows)  # a replay
        # released from hold: written again later, it replaces the held copy
        store.write_documents(documents_of([candidate(huge)], [], [], AT.replace(hour=13)))
        got = store.query("SELECT kind, id, status, toString(amount) AS amount, body "
                          "FROM meterwax.billing_documents FINAL ORDER BY kind")
    assert [(r["kind"], r["id"], r["status"], r["amount"]) for r in got] == [
        ("candidate", "sub-1:2026-10", "ready", huge),
        ("invoice_exception", "sub-1:2026-10", "MISSING_TAX_REGISTRATION", huge)]
    assert json.loads(got[0]["body"])["subtotal"] == huge  # decimal text, not a number
    assert got[1]["body"] == json.dumps(json.loads(got[1]["body"]), separators=(",", ":"))


def test_rejected_events_keep_their_original_bytes(tmp_path: Path) -> None:
    records = [ExceptionRecord(exception_id=f"usage:0:{i}", reason="INVALID_JSON",
                               error="not valid UTF-8 JSON", position={"source": "usage",
                                                                       "partition": 0,
                                                                       "offset": i},
                               raw=None, raw_base64="/w==")
               for i in range(3)]
    records[0] = ExceptionRecord(exception_id="usage:0:0", reason="INVALID_EVENT",
                                 error="missing id", position={"source": "usage",
                                                               "partition": 0, "offset": 0},
                                 raw='{"a":"\u00e9\\u0000"}', subject=None)
    with ChdbStore(str(tmp_path / "ch")) as store:
        store.write_rejections(rejections_of(records, AT))
        store.write_rejections(rejections_of(records, AT))
        got = store.query("SELECT exception_id, reason, raw, raw_base64, position "
                          "FROM meterwax.rejected_events FINAL ORDER BY exception_id")
    assert len(got) == 3
    assert got[0]["raw"] == '{"a":"\u00e9\\u0000"}'
    assert got[1]["raw"] is None and got[1]["raw_base64"] == "/w=="
    assert json.loads(got[2]["position"]) == {"source": "usage", "partition": 0, "offset": 2}


def test_rejected_events_gain_the_headers_column_and_keep_their_rows(tmp_path: Path) -> None:
    """A store from before migration 0006 (no `headers` column) opens, keeps its rows (headers
    NULL), and then stores the headers of a binary-mode Kafka message."""
    from schemas.records import MessageHeader
    from sinks.clickhouse.migrations import load_migrations
    from sinks.clickhouse.rows import REJECTED_COLUMNS, REJECTED_TABLE, encode_rejections

    old = load_migrations()[:-1]
    assert old[-1].version == 5
    before = rejections_of([ExceptionRecord(
        exception_id="usage:0:0", reason="INVALID_JSON", error="e",
        position={"source": "usage", "partition": 0, "offset": 0}, raw="{x")], AT)
    columns = [c for c in REJECTED_COLUMNS if c != "headers"]
    with ChdbStore(str(tmp_path / "ch"), migrations=old) as store:
        payload = b"\n".join(json.dumps({k: v for k, v in json.loads(line).items()
                                         if k in columns}).encode()
                             for line in encode_rejections(before).splitlines())
        store._write_table(REJECTED_TABLE, columns, payload)
    binary = ExceptionRecord(
        exception_id="usage:0:1", reason="UNKNOWN_SUBJECT", error="e",
        position={"source": "usage", "partition": 0, "offset": 1}, raw='{"n":1}',
        headers=[MessageHeader("ce_id", "a"), MessageHeader("ce_id", "b"),
                 MessageHeader("x", value_base64="/w=="), MessageHeader("nil")])
    with ChdbStore(str(tmp_path / "ch")) as store:
        assert store.applied == [6]
        store.write_rejections(rejections_of([binary], AT))
        got = store.query("SELECT exception_id, raw, headers FROM meterwax.rejected_events FINAL "
                          "ORDER BY exception_id")
    assert [(r["exception_id"], r["raw"]) for r in got] == [("usage:0:0", "{x"),
                                                            ("usage:0:1", '{"n":1}')]
    assert got[0]["headers"] is None
    assert json.loads(got[1]["headers"]) == [
        {"name": "ce_id", "value": "a"}, {"name": "ce_id", "value": "b"},
        {"name": "x", "value_base64": "/w=="}, {"name": "nil"}]
