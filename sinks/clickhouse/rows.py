"""Rows in and out of ClickHouse (shared by every backend): the storable-value checks, the
JSONEachRow batch encoding, its deduplication token and INSERT statements, and the decoding of
chdb's `FORMAT JSON` results."""

from __future__ import annotations

import decimal
import hashlib
import operator
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import msgspec

from schemas.erp import ArInvoice, InvoiceException, Journal
from schemas.records import (
    AcceptedEvent,
    ExceptionRecord,
    InvoiceCandidate,
    RatedWindow,
    StoredDocument,
    StoredRejection,
)
from sinks.clickhouse.errors import UnstorableValueError
from sinks.clickhouse.migrations import TABLE, check_database

# Columns written by `encode_batch`, in RatedWindow order. `inserted_at` is left to its DEFAULT.
COLUMNS: tuple[str, ...] = RatedWindow.__struct_fields__

# Decimal(38, 18): 20 integer digits and 18 fractional digits.
DECIMAL_SCALE = 18
DECIMAL_INTEGER_DIGITS = 38 - DECIMAL_SCALE


# --------------------------------------------------------------------------------------------
# Batch encoding (shared)


def _decimal_text(value: Decimal, field: str, integer_digits: int = DECIMAL_INTEGER_DIGITS
                  ) -> str:
    """`value` as plain decimal text, if Decimal(38, 18) (or `integer_digits` + 18) holds it
    exactly. ClickHouse silently truncates extra fractional digits, so they are refused here
    instead."""
    if not value.is_finite():
        msg = f"{field}: {value} is not finite"
        raise UnstorableValueError(msg)
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    end = len(digits)
    while exponent < -DECIMAL_SCALE and end > 1 and digits[end - 1] == 0:
        end -= 1  # trailing zeros do not change the value
        exponent += 1
    if exponent < -DECIMAL_SCALE and any(digits):
        msg = f"{field}: {value} has more than {DECIMAL_SCALE} fractional digits"
        raise UnstorableValueError(msg)
    if value and value.adjusted() >= integer_digits:
        msg = f"{field}: {value} has more than {integer_digits} integer digits"
        raise UnstorableValueError(msg)
    return format(value, "f")


def _datetime_text(value: datetime, field: str) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        msg = f"{field}: naive datetime {value.isoformat()} (need an aware one)"
        raise UnstorableValueError(msg)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


_DECIMAL_FIELDS = tuple(
    f for f, t in zip(RatedWindow.__struct_fields__,
                      msgspec.structs.fields(RatedWindow), strict=True)
    if t.type is Decimal or t.type == "Decimal"
)
_DATETIME_FIELDS = tuple(
    f for f, t in zip(RatedWindow.__struct_fields__,
                      msgspec.structs.fields(RatedWindow), strict=True)
    if t.type is datetime or t.type == "datetime"
)
# Decimals encode as JSON strings (exponent forms such as "1E+3" included, which ClickHouse
# parses exactly); datetimes as RFC 3339 with "Z", read with date_time_input_format=best_effort.
_ROW_ENCODER = msgspec.json.Encoder(decimal_format="string")


# The fast path of `check_row`: a finite value below 10^20 that is a whole multiple of 10^-18
# is exactly a Decimal(38, 18). The remainder is exact once the quotient (< 10^38) fits the
# precision; an explicit context keeps that true whatever context the calling thread has.
_QUANTUM = Decimal(1).scaleb(-DECIMAL_SCALE)
_EXACT = decimal.Context(prec=DECIMAL_INTEGER_DIGITS + DECIMAL_SCALE + 2)


def check_row(row: RatedWindow) -> None:
    """Refuse what Decimal(38, 18) / DateTime64 would silently alter. The fast path is three
    cheap Decimal calls per value (no `as_tuple`, which builds a tuple of digits); the exact
    check, with its messages, runs only when that is inconclusive."""
    for field in _DECIMAL_FIELDS:
        value = getattr(row, field)
        if not (value.is_finite() and value.adjusted() < DECIMAL_INTEGER_DIGITS
                and not _EXACT.remainder(value, _QUANTUM)):
            _decimal_text(value, field)
    for field in _DATETIME_FIELDS:
        value = getattr(row, field)
        if value.tzinfo is not UTC and (value.tzinfo is None or value.utcoffset() is None):
            _datetime_text(value, field)


# Rated windows are sent as JSON arrays in COLUMNS order, not objects: the engine then matches
# no keys, which halved its parse time (227k rows: 1.55 s as JSONEachRow, 0.7 s as this). The
# INSERT names the columns, so the order is checked by the statement, not assumed.
ROWS_FORMAT = "JSONCompactEachRow"


def encode_row(row: RatedWindow) -> bytes:
    """One ROWS_FORMAT line (no newline), after `check_row`."""
    check_row(row)
    return _ROW_ENCODER.encode(msgspec.structs.astuple(row))


def encode_batch(rows: Sequence[RatedWindow]) -> bytes:
    """A batch as newline-separated ROWS_FORMAT lines, ordered by (row_id, revision) so the same
    rows always encode to the same bytes (stable: equal keys keep their order, so the last one
    still wins a revision tie). Raises `UnstorableValueError` before anything is written."""
    ordered = sorted(rows, key=_BATCH_ORDER)
    for row in ordered:
        check_row(row)
    # One C call for the batch: the rows' `encode_row` lines, each followed by b"\n". Dropping
    # the last newline gives exactly the bytes b"\n".join would (the token hashes them).
    astuple = msgspec.structs.astuple
    return _ROW_ENCODER.encode_lines([astuple(row) for row in ordered])[:-1]


_BATCH_ORDER = operator.attrgetter("row_id", "revision")

EVENTS_TABLE = "usage_events"
EVENT_COLUMNS: tuple[str, ...] = AcceptedEvent.__struct_fields__
_EVENT_ORDER = operator.attrgetter("event_source", "event_id")


def encode_events(rows: Sequence[AcceptedEvent]) -> bytes:
    """Accepted events as JSONEachRow in identity order, so a replayed batch encodes to the same
    bytes and its dedup token matches."""
    for row in rows:
        if row.time.tzinfo is None:
            _datetime_text(row.time, "time")
    return _ROW_ENCODER.encode_lines(sorted(rows, key=_EVENT_ORDER))[:-1]


def events_insert_sql(database: str, token: str) -> str:
    return (
        f"INSERT INTO `{check_database(database)}`.{EVENTS_TABLE} ({', '.join(EVENT_COLUMNS)}) "
        f"SETTINGS insert_deduplication_token = '{token}', input_format_skip_unknown_fields = 0, "
        "date_time_input_format = 'best_effort' "
        "FORMAT JSONEachRow"
    )


DOCUMENTS_TABLE = "billing_documents"
DOCUMENT_AMOUNT_INTEGER_DIGITS = 76 - DECIMAL_SCALE  # Decimal(76, 18): migration 0005
DOCUMENT_COLUMNS: tuple[str, ...] = StoredDocument.__struct_fields__
REJECTED_TABLE = "rejected_events"
REJECTED_COLUMNS: tuple[str, ...] = StoredRejection.__struct_fields__


def documents_of(candidates: Sequence[InvoiceCandidate], ar_invoices: Sequence[ArInvoice],
                 exceptions: Sequence[InvoiceException], written_at: datetime,
                 journals: Sequence[Journal] = ()) -> list[StoredDocument]:
    """The billing documents of one batch as rows of billing_documents; `body` is each
    document's own JSON, as the files and topics carry it."""
    enc = _ROW_ENCODER.encode
    sub_of = {c.invoice_candidate_id: c.subscription_id for c in candidates}
    rows = [StoredDocument(kind="candidate", id=c.invoice_candidate_id, customer_id=c.customer_id,
                           subscription_id=c.subscription_id, billing_period=c.billing_period,
                           status=c.status, currency=c.currency, amount=c.total,
                           body=enc(c).decode(), written_at=written_at) for c in candidates]
    rows += [StoredDocument(kind="ar_invoice", id=a.ar_invoice_id, customer_id=a.customer_id,
                            subscription_id=a.subscription_id, billing_period=a.billing_period,
                            status=a.document_type, currency=a.currency, amount=a.total,
                            body=enc(a).decode(), written_at=written_at) for a in ar_invoices]
    rows += [StoredDocument(kind="invoice_exception", id=e.invoice_candidate_id,
                            customer_id=e.customer_id,
                            subscription_id=sub_of.get(e.invoice_candidate_id, ""),
                            billing_period=e.billing_period, status=",".join(e.reasons),
                            currency=e.currency, amount=e.total, body=enc(e).decode(),
                            written_at=written_at) for e in exceptions]
    rows += [StoredDocument(kind="journal", id=j.journal_id, customer_id="", subscription_id="",
                            billing_period=j.period, status="journal", currency=j.currency,
                            amount=j.total_debit, body=enc(j).decode(), written_at=written_at)
             for j in journals]
    return rows


def rejections_of(records: Sequence[ExceptionRecord], rejected_at: datetime
                  ) -> list[StoredRejection]:
    enc = _ROW_ENCODER.encode
    return [StoredRejection(exception_id=r.exception_id, reason=r.reason, error=r.error,
                            subject=r.subject, event_id=r.event_id, event_source=r.event_source,
                            position=enc(r.position).decode(), raw=r.raw,
                            raw_base64=r.raw_base64, rejected_at=rejected_at,
                            headers=enc(r.headers).decode() if r.headers else None)
            for r in records]


def encode_documents(rows: Sequence[StoredDocument]) -> bytes:
    for row in rows:
        _decimal_text(row.amount, "amount", DOCUMENT_AMOUNT_INTEGER_DIGITS)
        _datetime_text(row.written_at, "written_at")
    return _ROW_ENCODER.encode_lines(sorted(rows, key=_DOCUMENT_ORDER))[:-1]


def encode_rejections(rows: Sequence[StoredRejection]) -> bytes:
    for row in rows:
        _datetime_text(row.rejected_at, "rejected_at")
    return _ROW_ENCODER.encode_lines(sorted(rows, key=_REJECTED_ORDER))[:-1]


_DOCUMENT_ORDER = operator.attrgetter("kind", "id")
_REJECTED_ORDER = operator.attrgetter("exception_id")


def table_insert_sql(database: str, table: str, columns: Sequence[str], token: str) -> str:
    return (
        f"INSERT INTO `{check_database(database)}`.{table} ({', '.join(columns)}) "
        f"SETTINGS insert_deduplication_token = '{token}', input_format_skip_unknown_fields = 0, "
        "date_time_input_format = 'best_effort' "
        "FORMAT JSONEachRow"
    )


def batch_token(payload: bytes) -> str:
    """Deterministic insert_deduplication_token for an encoded batch.

    It hashes the whole payload, not only row ids and revisions: ClickHouse drops *any* insert
    whose token it has seen, whatever its data, so a token from ids and revisions alone would
    silently discard a corrected replay (same windows and revisions, different amounts, e.g.
    after a catalog fix) for as long as the first token is in the deduplication window.
    """
    return "rw1-" + hashlib.sha256(payload).hexdigest()


def insert_sql(database: str, token: str) -> str:
    """The INSERT statement for one encoded batch (data follows on the next line).

    input_format_skip_unknown_fields=0: a RatedWindow field with no column is an error, not a
    silently dropped value."""
    columns = ", ".join(COLUMNS)
    return (
        f"INSERT INTO `{check_database(database)}`.{TABLE} ({columns}) "
        f"SETTINGS insert_deduplication_token = '{token}', input_format_skip_unknown_fields = 0, "
        "date_time_input_format = 'best_effort' "
        f"FORMAT {ROWS_FORMAT}"
    )


# --------------------------------------------------------------------------------------------
# Query results (chdb JSON output -> Python values)

# Even unquoted JSON numbers decode as Decimal (exact), never through a binary float.
_DECODER = msgspec.json.Decoder(float_hook=Decimal)
_WRAPPER = re.compile(r"(?:Nullable|LowCardinality)\((.*)\)")


def _converter(ch_type: str) -> Any:
    while (match := _WRAPPER.fullmatch(ch_type)) is not None:
        ch_type = match[1]
    if ch_type.startswith("Decimal"):
        return Decimal
    if re.fullmatch(r"U?Int\d+", ch_type):
        return int
    if ch_type.startswith("Float"):
        return float
    if ch_type.startswith("DateTime"):
        return datetime.fromisoformat
    if ch_type in ("Date", "Date32"):
        return date.fromisoformat
    return None


def decode_json_result(payload: bytes) -> list[dict[str, Any]]:
    """Rows of a `FORMAT JSON` result, each value converted by its column type: Decimal ->
    Decimal, integers -> int, DateTime* -> aware datetime, Date -> date; others as decoded."""
    if not payload.strip():
        return []
    result = _DECODER.decode(payload)
    converters = {
        col["name"]: conv for col in result["meta"] if (conv := _converter(col["type"])) is not None
    }
    rows: list[dict[str, Any]] = result["data"]
    for row in rows:
        for name, conv in converters.items():
            value = row[name]
            if value is not None:
                row[name] = conv(value if isinstance(value, str) else str(value))
    return rows
