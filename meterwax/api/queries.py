"""The API's reads, as SQL over the tables both back ends hold (rated_windows_final,
billing_documents, rejected_events), with bound parameters only: nothing a caller sends is
ever spliced into SQL text.

Lists page by keyset: the cursor is the sort key of the last item returned (opaque to callers:
URL-safe base64 of a small JSON array), so a page costs the same however deep it is, and a
document written meanwhile never shifts the pages around it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec

from operators.money import fmt_value
from schemas.api import (
    DayCount,
    Document,
    DocumentPage,
    ExceptionSummary,
    RejectedEvent,
    RejectedPage,
    UsageBucket,
)

Query = Callable[[str, Mapping[str, Any] | None], list[dict[str, Any]]]

_AMOUNT_FIELD = {"candidate": "total", "ar_invoice": "total", "invoice_exception": "total",
                 "journal": "total_debit"}
_CURSOR_PART_CHARS = 1024


class BadCursor(ValueError):
    """A cursor this API did not hand out."""


def encode_cursor(key: Sequence[str | int]) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(list(key))).decode().rstrip("=")


def decode_cursor(text: str, shape: Sequence[type]) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        key = msgspec.json.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        msg = "cursor: not one this API returned"
        raise BadCursor(msg) from exc
    if (not isinstance(key, list) or len(key) != len(shape)
            or not all(type(v) is t for v, t in zip(key, shape, strict=True))
            or any(isinstance(v, str) and len(v) > _CURSOR_PART_CHARS for v in key)):
        msg = "cursor: not one this API returned"
        raise BadCursor(msg)
    return key


def _document(row: dict[str, Any]) -> Document:
    body = msgspec.json.decode(row["body"])
    return Document(kind=row["kind"], id=row["id"], customer_id=row["customer_id"],
                    subscription_id=row["subscription_id"],
                    billing_period=row["billing_period"], status=row["status"],
                    currency=row["currency"],
                    amount=str(body.get(_AMOUNT_FIELD[row["kind"]], "")), document=body)


def documents(query: Query, db: str, kinds: Sequence[str], limit: int,
              cursor: str | None, customer_id: str | None = None) -> DocumentPage:
    # One scalar parameter per kind: chDB and clickhouse-connect bind arrays differently.
    where = [f"kind IN ({', '.join(f'{{k{i}:String}}' for i in range(len(kinds)))})"]
    params: dict[str, Any] = {f"k{i}": k for i, k in enumerate(kinds)}
    params["n"] = limit + 1
    if customer_id is not None:
        where.append("customer_id = {customer:String}")
        params["customer"] = customer_id
    if cursor:
        period, kind, ident = decode_cursor(cursor, (str, str, str))
        where.append("(billing_period, kind, id) > ({cp:String}, {ck:String}, {ci:String})")
        params.update(cp=period, ck=kind, ci=ident)
    rows = query(
        "SELECT kind, id, customer_id, subscription_id, billing_period, status, currency, body "
        f"FROM `{db}`.billing_documents FINAL WHERE {' AND '.join(where)} "
        "ORDER BY billing_period, kind, id LIMIT {n:UInt32}", params)
    items = [_document(r) for r in rows[:limit]]
    nxt = (encode_cursor([items[-1].billing_period, items[-1].kind, items[-1].id])
           if len(rows) > limit else None)
    return DocumentPage(items=items, next_cursor=nxt)


def _rejected_filters(reason: str | None, subject: str | None, since: datetime | None,
                      until: datetime | None) -> tuple[list[str], dict[str, Any]]:
    where: list[str] = []
    params: dict[str, Any] = {}
    if reason:
        where.append("reason = {reason:String}")
        params["reason"] = reason
    if subject:
        where.append("subject = {subject:String}")
        params["subject"] = subject
    if since:
        where.append("toUnixTimestamp64Micro(rejected_at) >= {since:Int64}")
        params["since"] = _micros(since)
    if until:
        where.append("toUnixTimestamp64Micro(rejected_at) < {until:Int64}")
        params["until"] = _micros(until)
    return where, params


def _micros(at: datetime) -> int:
    delta = at.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _has_column(query: Query, db: str, table: str, column: str) -> bool:
    rows = query("SELECT count() AS n FROM system.columns WHERE database = {db:String} AND "
                 "table = {t:String} AND name = {c:String}", {"db": db, "t": table, "c": column})
    return int(rows[0]["n"]) > 0


def rejected(query: Query, db: str, limit: int, cursor: str | None, reason: str | None,
             subject: str | None, since: datetime | None, until: datetime | None
             ) -> RejectedPage:
    where, params = _rejected_filters(reason, subject, since, until)
    params["n"] = limit + 1
    if cursor:
        at, ident = decode_cursor(cursor, (int, str))
        where.append("(toUnixTimestamp64Micro(rejected_at), exception_id) > "
                     "({ca:Int64}, {ci:String})")
        params.update(ca=at, ci=ident)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    # A stream deployment's store is migrated by the stream, not the API: one the stream of
    # this version has not reached yet has no `headers` column, and its rows have none.
    headers = "headers" if _has_column(query, db, "rejected_events", "headers") else \
        "CAST(NULL, 'Nullable(String)') AS headers"
    rows = query(
        "SELECT exception_id, reason, error, subject, event_id, event_source, position, raw, "
        f"raw_base64, {headers}, rejected_at, toUnixTimestamp64Micro(rejected_at) AS at_us "
        f"FROM `{db}`.rejected_events FINAL {clause}"
        "ORDER BY at_us, exception_id LIMIT {n:UInt32}", params)
    items = [RejectedEvent(exception_id=r["exception_id"], reason=r["reason"], error=r["error"],
                           subject=r["subject"], event_id=r["event_id"],
                           event_source=r["event_source"],
                           position=msgspec.json.decode(r["position"]), raw=r["raw"],
                           raw_base64=r["raw_base64"], rejected_at=r["rejected_at"],
                           headers=msgspec.json.decode(r["headers"]) if r["headers"] else None)
             for r in rows[:limit]]
    nxt = (encode_cursor([int(rows[limit - 1]["at_us"]), rows[limit - 1]["exception_id"]])
           if len(rows) > limit else None)
    return RejectedPage(items=items, next_cursor=nxt)


def rejected_summary(query: Query, db: str, reason: str | None, subject: str | None,
                     since: datetime | None, until: datetime | None) -> ExceptionSummary:
    where, params = _rejected_filters(reason, subject, since, until)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    rows = query(
        "SELECT toString(toDate(rejected_at)) AS day, reason, count() AS n "
        f"FROM `{db}`.rejected_events FINAL {clause}GROUP BY day, reason ORDER BY day, reason",
        params)
    by_reason: dict[str, int] = {}
    days = []
    for r in rows:
        n = int(r["n"])
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + n
        days.append(DayCount(day=r["day"], reason=r["reason"], count=n))
    return ExceptionSummary(total=sum(by_reason.values()),
                            by_reason=dict(sorted(by_reason.items())), by_day=days)


_INTERVAL = {"minute": "MINUTE", "hour": "HOUR", "day": "DAY"}


def usage(query: Query, db: str, customer_id: str, meter: str | None, start: datetime,
          end: datetime, granularity: str, additive: Callable[[str], bool]
          ) -> list[UsageBucket]:
    where = ["customer_id = {customer:String}",
             "toUnixTimestamp64Micro(window_start) >= {f:Int64}",
             "toUnixTimestamp64Micro(window_start) < {t:Int64}"]
    params: dict[str, Any] = {"customer": customer_id, "f": _micros(start), "t": _micros(end)}
    if meter:
        where.append("meter = {meter:String}")
        params["meter"] = meter
    # toDecimal256: sum() over Decimal(38, 18) wraps silently near 1.7e20 (migration 0001).
    rows = query(
        f"SELECT toStartOfInterval(window_start, INTERVAL 1 {_INTERVAL[granularity]}) AS b, "
        "subscription_id, meter, sum(event_count) AS ev, "
        "toString(sum(toDecimal256(amount_delta, 18))) AS amt, "
        "toString(sum(toDecimal256(window_quantity, 18))) AS q, "
        "toString(argMax(cumulative_quantity, rating_seq)) AS pq "
        f"FROM `{db}`.rated_windows_final WHERE {' AND '.join(where)} "
        "GROUP BY b, subscription_id, meter ORDER BY b, subscription_id, meter", params)
    return [UsageBucket(start=_aware(r["b"]), subscription_id=r["subscription_id"],
                        meter=r["meter"], events=int(r["ev"]),
                        amount=fmt_value(Decimal(r["amt"])),
                        quantity=fmt_value(Decimal(r["q"])) if additive(r["meter"]) else None,
                        period_quantity=fmt_value(Decimal(r["pq"])))
            for r in rows]


def _aware(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


_RATED_OF_MONTH = """
SELECT subscription_id, meter, toString(argMax(cumulative_amount, rating_seq)) AS amount
FROM `{db}`.rated_windows_final WHERE period = {{month:String}}
GROUP BY subscription_id, meter
"""


def stream_reconciliation(query: Query, db: str, catalog: Any, month: str) -> dict[str, Any]:
    """The month's chain from what a stream deployment wrote to ClickHouse: the rated windows,
    the candidates, the AR invoices, the invoice exceptions and the journals actually emitted
    (not recomputed), through the same `erp_chain` file mode reconciles with. It starts at the
    rated usage: the ingest counts of a stream are in its metrics, not in ClickHouse."""
    from operators.erp import ErpOutput, erp_chain
    from schemas.erp import ArInvoice, InvoiceException, Journal
    from schemas.records import InvoiceCandidate

    decoders: dict[str, msgspec.json.Decoder[Any]] = {
        "candidate": msgspec.json.Decoder(InvoiceCandidate),
        "ar_invoice": msgspec.json.Decoder(ArInvoice),
        "invoice_exception": msgspec.json.Decoder(InvoiceException),
        "journal": msgspec.json.Decoder(Journal)}
    docs: dict[str, list[Any]] = {k: [] for k in decoders}
    for row in query(f"SELECT kind, body FROM `{db}`.billing_documents FINAL "
                     "WHERE billing_period = {month:String} ORDER BY kind, id",
                     {"month": month}):
        docs[row["kind"]].append(decoders[row["kind"]].decode(row["body"]))
    rated = {(r["subscription_id"], month, r["meter"]): Decimal(r["amount"])
             for r in query(_RATED_OF_MONTH.format(db=db), {"month": month})
             if r["subscription_id"] in catalog.subscriptions}
    erp = ErpOutput(ar_invoices=docs["ar_invoice"], journals=docs["journal"],
                    exceptions=docs["invoice_exception"])
    chain, problems = erp_chain(catalog, rated, docs["candidate"], erp, with_schedules=False)
    return {"erp": {"chain": msgspec.to_builtins(chain)}, "problems": problems}
