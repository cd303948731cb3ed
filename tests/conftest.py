"""Shared helpers for the pure-domain tests (operators/, schemas/events.py, schemas/records.py).

Test modules import these with `from conftest import ...` (tests/ has no __init__.py, so pytest puts
this directory on sys.path). Catalogs are built from small inline dicts with `parse_catalog`, the
same code path as the YAML loader, so every test catalog is also a validated one.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from operators import reconcile as _reconcile
from operators.catalog import Catalog, Charge, parse_catalog
from operators.clock import fixed_clock
from operators.engine import EngineResult, run_engine
from operators.ingest import IngestConfig
from operators.limits import DEFAULT_RETENTION
from schemas.reconciliation import Reconciliation
from schemas.records import InvoiceCandidate, RatedWindow

pytest_plugins = ["services"]

D = Decimal

def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
        microsecond: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


# -- catalogs ------------------------------------------------------------------------------------

LEGAL_ENTITY = {
    "id": "le-us",
    "gl_accounts": {"receivable": "1200", "usage_revenue": "4000"},
    "currencies": ["USD"],
}


def customer(cid: str, subjects: Sequence[str], subscriptions: Sequence[Mapping[str, Any]],
             tax: str | None = "TAX-1", terms: int | None = 30,
             legal_entity: str = "le-us") -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": cid,
        "legal_entity": legal_entity,
        "subjects": list(subjects),
        "subscriptions": [dict(s) for s in subscriptions],
    }
    if tax is not None:
        out["tax_registration"] = tax
    if terms is not None:
        out["payment_terms_days"] = terms
    return out


def sub(sid: str, plan: str, start: str, end: str | None = None) -> dict[str, Any]:
    return {"id": sid, "plan": plan, "start": start, "end": end}


def simple_doc(charges: Sequence[Mapping[str, Any]] | None = None,
               fees: Sequence[Mapping[str, Any]] | None = None,
               currency: str = "USD",
               meters: Sequence[Mapping[str, Any]] | None = None,
               start: str = "2026-10-01T00:00:00Z", end: str | None = None,
               tax: str | None = "TAX-1", terms: int | None = 30) -> dict[str, Any]:
    """One legal entity, one plan `p`, one customer `c` (subject `s1`) with subscription `sub-1`.

    Default meters: calls (api.request, count), tokens (llm.completion, sum of usage.tokens),
    peak (storage.snapshot, max of gb), users (user.active, unique_count of user_id),
    seats (seats.set, latest of count).
    """
    return {
        "legal_entities": [dict(LEGAL_ENTITY, currencies=[])],
        "meters": [dict(m) for m in (meters if meters is not None else DEFAULT_METERS)],
        "plans": [{
            "id": "p",
            "currency": currency,
            "fixed_fees": [dict(f) for f in (fees or [])],
            "charges": [dict(c) for c in (charges if charges is not None else
                                          [{"meter": "calls", "model": "per_unit",
                                            "unit_price": "1.00"}])],
        }],
        "customers": [customer("c", ["s1"], [sub("sub-1", "p", start, end)], tax, terms)],
    }


DEFAULT_METERS: tuple[dict[str, Any], ...] = (
    {"id": "calls", "event_type": "api.request", "aggregation": "count"},
    {"id": "tokens", "event_type": "llm.completion", "aggregation": "sum",
     "value": "usage.tokens"},
    {"id": "peak", "event_type": "storage.snapshot", "aggregation": "max", "value": "gb"},
    {"id": "users", "event_type": "user.active", "aggregation": "unique_count",
     "value": "user_id"},
    {"id": "seats", "event_type": "seats.set", "aggregation": "latest", "value": "count"},
)


def simple_catalog(**kwargs: Any) -> Catalog:
    return parse_catalog(simple_doc(**kwargs))


def charge_of(model: str, currency: str = "USD", **fields: Any) -> Charge:
    """Parse a one-charge plan and return its validated Charge (meter `tokens`, a sum)."""
    raw = {"meter": "tokens", "model": model, **fields}
    cat = parse_catalog(simple_doc(charges=[raw], currency=currency))
    charge = cat.plans["p"].charge_for("tokens")
    assert charge is not None
    return charge


def mutated(doc: Mapping[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `doc` with the dotted/indexed `path` set (or deleted when value is DELETE)."""
    out = copy.deepcopy(dict(doc))
    parts = _split(path)
    node: Any = out
    for part in parts[:-1]:
        node = node[part]
    if value is DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return out


DELETE = object()


def _split(path: str) -> list[Any]:
    parts: list[Any] = []
    for chunk in path.split("."):
        while "[" in chunk:
            name, rest = chunk.split("[", 1)
            if name:
                parts.append(name)
            index, chunk = rest.split("]", 1)
            parts.append(int(index))
        if chunk:
            parts.append(chunk)
    return parts


# -- events --------------------------------------------------------------------------------------

EMPTY = object()


def event(eid: Any, etype: Any = "api.request", subject: Any = "s1",
          time: Any = "2026-10-05T12:00:00Z", data: Any = EMPTY, source: Any = "test",
          **extra: Any) -> bytes:
    """One CloudEvents 1.0 JSON line (`data` defaults to {}; None writes null). `extra` adds (or,
    with DELETE, removes) attributes."""
    body: dict[str, Any] = {
        "specversion": "1.0", "id": eid, "source": source, "type": etype,
        "subject": subject, "time": time, "data": {} if data is EMPTY else data,
    }
    body.update(extra)
    return json.dumps({k: v for k, v in body.items() if v is not DELETE}).encode()


def raw_event(eid: str, data_json: str, etype: str = "llm.completion", subject: str = "s1",
              time: str = "2026-10-05T12:00:00Z", source: str = "test") -> bytes:
    """Like `event`, but `data` is written verbatim, so JSON number text reaches the decoder
    exactly as given (json.dumps would go through a float)."""
    head = json.dumps({"specversion": "1.0", "id": eid, "source": source, "type": etype,
                       "subject": subject, "time": time})
    return (head[:-1] + ', "data": ' + data_json + "}").encode()


# -- running -------------------------------------------------------------------------------------

# The processing clock of the pure tests: after every time they generate, so no event is
# quarantined as FUTURE_EVENT and results never depend on the day the suite runs.
TEST_NOW = datetime(2030, 1, 1, tzinfo=UTC)


def config(window: timedelta = timedelta(minutes=1), lateness: timedelta = timedelta(hours=1),
           retention: timedelta = DEFAULT_RETENTION,
           adjustment_cycle: timedelta = timedelta(days=1)) -> IngestConfig:
    return IngestConfig(window=window, allowed_lateness=lateness, retention=retention,
                        clock=fixed_clock(TEST_NOW), adjustment_cycle=adjustment_cycle)


def run(catalog: Catalog, lines: Iterable[bytes], batch_size: int = 1000,
        **config_kwargs: Any) -> EngineResult:
    return run_engine(catalog, list(lines), config(**config_kwargs), batch_size)


def reconcile(catalog: Catalog, result: EngineResult) -> Reconciliation:
    """Reconcile an engine result, whichever form the rated side takes (rows, or the
    per-(subscription, period, meter) summary computed by `summarize`)."""
    rated: Any = result.windows
    summarize = getattr(_reconcile, "summarize", None)
    if summarize is not None:
        rated = summarize(result.windows)
    return _reconcile.reconcile(catalog, result.stats, rated, result.candidates,
                                result.exceptions)


def buckets(result: EngineResult) -> dict[str, int]:
    s = result.stats
    out = {"duplicate": s.duplicates, "unmetered": s.unmetered, "rated": s.rated}
    out.update(s.exceptions)
    return {k: v for k, v in out.items() if v}


def line_key(cand: InvoiceCandidate, line_id: str) -> str:
    prefix = cand.invoice_candidate_id + ":"
    assert line_id.startswith(prefix)
    return line_id[len(prefix):]


def lines_of(cand: InvoiceCandidate) -> dict[str, Decimal]:
    """Line key ('fee:base', 'usage:calls', 'minimum:calls') -> amount."""
    return {line_key(cand, ln.line_id): ln.amount for ln in cand.lines}


def quantities_of(cand: InvoiceCandidate) -> dict[str, Decimal | None]:
    return {line_key(cand, ln.line_id): ln.quantity for ln in cand.lines}


def candidate(result: EngineResult, cid: str) -> InvoiceCandidate:
    found = [c for c in result.candidates if c.invoice_candidate_id == cid]
    assert len(found) == 1, [c.invoice_candidate_id for c in result.candidates]
    return found[0]


def candidate_ids(result: EngineResult) -> list[str]:
    return [c.invoice_candidate_id for c in result.candidates]


def period_totals(candidates: Iterable[InvoiceCandidate]) -> dict[tuple[str, str, str], Decimal]:
    """(subscription, period, line key) -> amount summed over the invoice and its adjustments."""
    out: dict[tuple[str, str, str], Decimal] = {}
    for cand in candidates:
        for ln in cand.lines:
            key = (cand.subscription_id, cand.billing_period, line_key(cand, ln.line_id))
            out[key] = out.get(key, D(0)) + ln.amount
    return out


def final_windows(rows: Iterable[RatedWindow]) -> dict[str, RatedWindow]:
    """The highest revision of each window row."""
    out: dict[str, RatedWindow] = {}
    for row in rows:
        if row.row_id not in out or row.revision > out[row.row_id].revision:
            out[row.row_id] = row
    return out


def delta_sums(rows: Iterable[RatedWindow]) -> dict[tuple[str, str, str], Decimal]:
    """(subscription, period, meter) -> sum of the final revisions' amount deltas."""
    out: dict[tuple[str, str, str], Decimal] = {}
    for row in final_windows(rows).values():
        key = (row.subscription_id, row.period, row.meter)
        out[key] = out.get(key, D(0)) + row.amount_delta
    return out


def last_cumulative(rows: Iterable[RatedWindow]) -> dict[tuple[str, str, str], RatedWindow]:
    """(subscription, period, meter) -> the row of the last rating step."""
    out: dict[tuple[str, str, str], RatedWindow] = {}
    for row in rows:
        key = (row.subscription_id, row.period, row.meter)
        if key not in out or row.rating_seq > out[key].rating_seq:
            out[key] = row
    return out


class FakeTime:
    """An injected clock and sleep: sleeping advances the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
