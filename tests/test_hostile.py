"""Hostile input against the sequential engine (operators/engine.py): no line can crash or hang
the pipeline, land in two buckets, lose its bytes, or change how the other events are rated.

1. The table (tests/hostile_cases.py): each hostile line, inserted in the middle of a valid base
   stream, lands in its reason with a message naming the limit and its bytes kept, and the base
   events are rated exactly as without it. Lines at a limit are judged like any other event.
2. File input: a byte order mark at the start is dropped, CRLF is fine, over-long lines.
3. FUTURE_EVENT neither moves the watermark nor claims its identity.
4. PERIOD_LIMIT_EXCEEDED: a period stops below what the store holds, in quantity and amount.
5. INTERNAL_ERROR: a fault injected into one step for one event (or one rating op) becomes a
   record, and the rest of the stream is rated as without it.
6. A fuzzer: 100 examples of 1,000 mutated lines each, byte-wise and structural, mixed into the
   base stream, plus the same stream with every line repeated.
"""

from __future__ import annotations

import functools
import json
import random
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import buckets, reconcile
from hostile_cases import (
    BASE_START,
    CATALOG_DOC,
    EDGES,
    HOSTILE,
    NOW,
    VICTIM_SUB,
    Case,
    base_lines,
    config,
    kept,
    line,
    q,
    record_bytes,
    rfc3339,
    series,
    sized_line,
    storable,
    tokens,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import operators.envelope
import operators.ingest
import operators.values
from operators.aggregators import Sum
from operators.catalog import Subscription, parse_catalog
from operators.clock import fixed_clock
from operators.dedup import MemoryDedup
from operators.engine import EngineResult, run_engine
from operators.ingest import Ingestor, IngestState
from operators.limits import MAX_LINE_BYTES, RAW_KEEP_BYTES
from operators.pricers import PRICERS
from schemas.records import (
    ENCODER,
    FUTURE_EVENT,
    INTERNAL_ERROR,
    INVALID_EVENT,
    INVALID_JSON,
    PERIOD_LIMIT_EXCEEDED,
    REASONS,
    ExceptionRecord,
)

CATALOG = parse_catalog(CATALOG_DOC)
BASE = base_lines()
MIDDLE = len(BASE) // 2
BOM = b"\xef\xbb\xbf"


@contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Fail instead of hanging (pytest-timeout is not installed): SIGALRM interrupts the run."""
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"{what} did not finish within {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run(lines: Sequence[bytes], **kwargs: Any) -> EngineResult:
    with deadline(120, f"an engine run over {len(lines)} lines"):
        return run_engine(CATALOG, list(lines), config(**kwargs))


@functools.cache
def base_result() -> EngineResult:
    result = run(BASE)
    assert buckets(result) == {"rated": len(BASE)}
    assert {c.billing_period for c in result.candidates} == {"2026-10", "2026-11"}
    return result


def inserted(extra: bytes | Sequence[bytes], at: int = MIDDLE) -> list[bytes]:
    more = [extra] if isinstance(extra, bytes) else list(extra)
    return [*BASE[:at], *more, *BASE[at:]]


def outputs(result: EngineResult, without: Iterable[str] = ()
            ) -> dict[tuple[str, str], list[bytes]]:
    """(kind, subscription) -> its candidates or rated windows, encoded, in emission order.
    Order is compared per subscription only: across subscriptions it follows how ingest
    happened to batch the lines, which no output depends on."""
    skip = set(without)
    out: dict[tuple[str, str], list[bytes]] = {}
    for kind, items in (("candidates", result.candidates), ("windows", result.windows)):
        for item in items:
            if item.subscription_id not in skip:
                out.setdefault((kind, item.subscription_id), []).append(ENCODER.encode(item))
    return out


def assert_same_outputs(result: EngineResult, reference: EngineResult,
                        without: Iterable[str] = ()) -> None:
    got, want = outputs(result, without), outputs(reference, without)
    assert sorted(got) == sorted(want)
    for key in sorted(want):
        assert got[key] == want[key], f"{key[0]} of {key[1]} differ from the reference run"


def assert_buckets_add_up(result: EngineResult) -> None:
    s = result.stats
    held = s.rated + s.duplicates + s.unmetered + sum(s.exceptions.values())
    assert s.read == held, f"read {s.read}, buckets hold {held}: {buckets(result)}"


def ingest_records(result: EngineResult) -> list[ExceptionRecord]:
    return [x for x in result.exceptions if x.position.get("step") != "rating"]


def assert_records_keep_their_lines(result: EngineResult, lines: Sequence[bytes]) -> None:
    """Every ingest record: a known reason, an error, and exactly the input line's bytes."""
    records = ingest_records(result)
    ids = [x.exception_id for x in result.exceptions]
    assert len(ids) == len(set(ids)), "exception ids repeat"
    for exc in records:
        assert exc.reason in REASONS, exc.reason
        assert exc.error.strip(), exc.exception_id
        source = lines[exc.position["line"] - 1]
        assert record_bytes(exc) == kept(source), (exc.exception_id, source[:200])


def rejected(result: EngineResult) -> list[tuple[str, int]]:
    return [(x.reason, x.position["line"]) for x in ingest_records(result)]


# -- 1. the table ---------------------------------------------------------------------------------

@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in HOSTILE])
def test_hostile_line_lands_in_its_reason_and_changes_nothing_else(case: Case) -> None:
    lines = inserted(case.line)
    result = run(lines)
    assert_buckets_add_up(result)
    assert result.stats.read == len(BASE) + 1
    assert rejected(result) == [(case.reason, MIDDLE + 1)], [x.error[:300]
                                                             for x in result.exceptions]
    exc = result.exceptions[0]
    for fragment in case.fragments:
        assert fragment in exc.error, exc.error[:500]
    assert record_bytes(exc) == kept(case.line)
    assert result.stats.rated == len(BASE)
    assert_same_outputs(result, base_result())
    report = reconcile(CATALOG, result)
    assert report.balanced, report.problems


@pytest.mark.parametrize(("raw", "bucket"), [pytest.param(raw, b, id=cid) for cid, raw, b in EDGES])
def test_line_at_a_limit_is_judged_like_any_other(raw: bytes, bucket: str) -> None:
    lines = inserted(raw)
    result = run(lines)
    assert_buckets_add_up(result)
    before, after = buckets(base_result()), buckets(result)
    change = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
    assert {k: v for k, v in change.items() if v} == {bucket: 1}, \
        [x.error[:300] for x in result.exceptions]
    assert_records_keep_their_lines(result, lines)
    if bucket != "rated":
        assert_same_outputs(result, base_result())


def test_over_long_line_keeps_its_first_bytes_and_says_how_long_it_was() -> None:
    long = sized_line(3 * MAX_LINE_BYTES)
    result = run(inserted(long))
    (exc,) = result.exceptions
    assert exc.reason == INVALID_JSON
    assert record_bytes(exc) == long[:RAW_KEEP_BYTES]
    assert str(len(long)) in exc.error


def test_a_duplicate_key_decides_before_any_schema_error() -> None:
    # The first `subject` is too long, the second is good: the line is ambiguous first of all
    # (INVALID_JSON comes before INVALID_EVENT), whichever value a parser would keep.
    raw = line(before=[('"subject"', q("s" * 2000))])
    result = run(inserted(raw))
    assert rejected(result) == [(INVALID_JSON, MIDDLE + 1)], result.exceptions[0].error
    assert "duplicate key" in result.exceptions[0].error


# -- 2. file input --------------------------------------------------------------------------------

def read_file(path: Path) -> list[bytes]:
    """The lines file mode feeds to ingest (flows/sources.py), in order."""
    from flows.sources import JsonLinesSource

    part = JsonLinesSource(str(path)).build_part("input", "file:0", None)
    out: list[bytes] = []
    try:
        while True:
            for _name, chunk in part.next_batch():
                out.extend(raw for _number, raw in chunk)
    except StopIteration:
        pass
    finally:
        part.close()
    return out


@pytest.mark.parametrize(("head", "newline"), [
    pytest.param(BOM, b"\n", id="bom"),
    pytest.param(b"", b"\r\n", id="crlf"),
    pytest.param(BOM, b"\r\n", id="bom-and-crlf"),
])
def test_file_with_a_leading_bom_or_crlf_is_read_as_its_events(tmp_path: Path, head: bytes,
                                                                newline: bytes) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(head + newline.join(BASE) + newline)
    lines = read_file(path)
    assert lines == BASE
    assert_same_outputs(run(lines), base_result())


def test_bom_later_in_a_file_is_invalid_json_with_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    bommed = BOM + BASE[MIDDLE]
    path.write_bytes(b"\n".join([*BASE[:MIDDLE], bommed, *BASE[MIDDLE + 1:]]) + b"\n")
    lines = read_file(path)
    result = run(lines)
    assert rejected(result) == [(INVALID_JSON, MIDDLE + 1)]
    assert record_bytes(result.exceptions[0]) == bommed


def test_over_long_line_in_a_file_is_cut_and_the_next_lines_keep_their_numbers(
        tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    long = b'{"data":"' + b"\xc3\xa9" * (2 * MAX_LINE_BYTES) + b'"}'
    path.write_bytes(b"\n".join(inserted([long, b"{"])) + b"\n")
    result = run(read_file(path))
    assert rejected(result) == [(INVALID_JSON, MIDDLE + 1), (INVALID_JSON, MIDDLE + 2)]
    assert record_bytes(result.exceptions[0]) == long[:RAW_KEEP_BYTES]
    assert_same_outputs(result, base_result())


# -- 3. the future --------------------------------------------------------------------------------

def test_future_event_first_in_the_stream_closes_and_bills_nothing() -> None:
    # Were the watermark at 2099 from the first line, every base event would be late.
    future = line(eid="far", time="2099-06-01T00:00:00Z")
    result = run([future, *BASE])
    assert rejected(result) == [(FUTURE_EVENT, 1)]
    assert result.stats.late_after_close == 0
    assert_same_outputs(result, base_result())


def test_future_event_does_not_claim_its_identity_in_the_same_run() -> None:
    future = line(eid="early", time="2099-06-01T00:00:00Z")
    due = line(eid="early", time="2026-11-20T10:00:00Z")
    result = run(inserted([future, due]))
    assert rejected(result) == [(FUTURE_EVENT, MIDDLE + 1)]
    assert (result.stats.rated, result.stats.duplicates) == (len(BASE) + 1, 0)


def test_a_replay_is_recognised_and_counted_apart_from_duplicates() -> None:
    # A restart re-reads the same positions: the same messages are rated again (writes are
    # idempotent) and counted as replays; a copy at a new position is still a duplicate.
    dedup, state = MemoryDedup(), IngestState()
    batch = list(enumerate(BASE, start=1))
    first = Ingestor(CATALOG, config(), dedup, "file", 0, state).process(batch)
    assert (first.stats.rated, first.stats.duplicates, first.stats.replays) == (len(BASE), 0, 0)
    again = Ingestor(CATALOG, config(), dedup, "file", 0, state).process(
        [*batch[:3], (len(BASE) + 1, BASE[0])])
    assert (again.stats.rated, again.stats.duplicates, again.stats.replays) == (3, 1, 3)


def test_future_event_replayed_once_due_is_judged_normally() -> None:
    soon = NOW + timedelta(days=2)
    future = line(eid="early", time=rfc3339(soon))
    dedup, state = MemoryDedup(), IngestState()
    today = Ingestor(CATALOG, config(), dedup, "file", 0, state)
    first = today.process([*enumerate(BASE, start=1), (len(BASE) + 1, future)])
    assert [x.reason for x in first.exceptions] == [FUTURE_EVENT]
    watermark = state.watermark
    assert watermark is not None and watermark < int(NOW.timestamp())
    later = Ingestor(CATALOG, config(clock=fixed_clock(soon + timedelta(hours=1))), dedup,
                     "file", 0, state)
    again = later.process([(len(BASE) + 2, future)])
    assert again.exceptions == []
    assert (again.stats.rated, again.stats.duplicates) == (1, 0)
    assert ("sub-acme", "2026-12", "tokens") in again.stats.ingested


# -- 4. period limits -----------------------------------------------------------------------------

def assert_everything_storable(result: EngineResult) -> None:
    for w in result.windows:
        for name in ("window_quantity", "cumulative_quantity", "amount_delta",
                     "cumulative_amount"):
            assert storable(getattr(w, name)), (w.row_id, name, getattr(w, name))
    for c in result.candidates:
        assert storable(c.subtotal), c.invoice_candidate_id
        for ln in c.lines:
            assert storable(ln.amount), ln.line_id
            assert ln.quantity is None or storable(ln.quantity), ln.line_id


@pytest.mark.parametrize(("subject", "sub_id", "events", "rated", "amount"), [
    # 100 x (10^18 - 1) is below 10^20; one more is not (per_unit 1.00: quantity binds)
    pytest.param("whale-1", "sub-whale", 103, 100, "99999999999999999900.00", id="quantity"),
    # per_unit 10.00: ten events make an amount just below 10^20, the eleventh would pass it
    pytest.param("pricey-1", "sub-pricey", 12, 10, "99999999999999999900.00", id="amount"),
])
def test_period_stops_below_what_the_store_holds(subject: str, sub_id: str, events: int,
                                                 rated: int, amount: str) -> None:
    big = series(subject, events, start=BASE_START - timedelta(minutes=5))
    result = run([*big, *BASE])
    assert rejected(result) == [(PERIOD_LIMIT_EXCEEDED, n) for n in range(rated + 1, events + 1)]
    assert all("10^20" in x.error for x in result.exceptions), result.exceptions[0].error
    assert_records_keep_their_lines(result, [*big, *BASE])
    assert result.stats.rated == rated + len(BASE)
    (october,) = [c for c in result.candidates
                  if c.invoice_candidate_id == f"{sub_id}:2026-10"]
    (usage,) = [ln for ln in october.lines if ln.kind == "usage"]
    assert usage.quantity == rated * Decimal("999999999999999999")
    assert usage.amount == Decimal(amount)
    assert_everything_storable(result)
    assert_same_outputs(result, base_result(), without=[sub_id])
    report = reconcile(CATALOG, result)
    assert report.balanced, report.problems


@pytest.mark.parametrize(("written", "kept"), [
    ("0e-999999999", "0"),
    ("1.00000000000000000000", "1"),
    ("2.123456789000", "2.123456789"),
    ("1.50", "1.50"),  # within the digits allowed, a value is kept as written
])
def test_values_written_with_surplus_zeros_are_rated_without_them(written: str,
                                                                  kept: str) -> None:
    """Only zeros beyond 9 fractional digits are dropped: the value is exact either way, but a
    written exponent of -999999999 must not travel into sums and invoice quantities."""
    result = run(inserted(tokens(written, eid="surplus-zeros")))
    assert rejected(result) == []
    rows = [w for w in result.windows if w.window_start.day == 1 and w.period == "2026-12"]
    assert [str(w.window_quantity) for w in rows] == [kept]
    assert_everything_storable(result)
    for c in result.candidates:
        for ln in c.lines:
            if ln.quantity is not None:
                assert ln.quantity.as_tuple().exponent >= -9, (ln.line_id, ln.quantity)


# -- 5. internal errors ---------------------------------------------------------------------------

MARK_TIME = "2026-12-01T12:34:56Z"  # after every base event: a fault that moved the watermark
MARK_AT = datetime.fromisoformat(MARK_TIME)  # would close and bill December
MARK_VALUE = Decimal("4242.4242")


def patch_for_ingest(monkeypatch: pytest.MonkeyPatch, module: Any, name: str,
                     fake: Callable[..., Any]) -> None:
    """Replace `module.name`, and the name operators/ingest.py imported it under, if any."""
    assert hasattr(module, name), f"{module.__name__}.{name} no longer exists: adjust the test"
    monkeypatch.setattr(module, name, fake)
    if module is not operators.ingest and hasattr(operators.ingest, name):
        monkeypatch.setattr(operators.ingest, name, fake)


class _Exploding(dict[str, Any]):
    """`data` that raises as soon as anything looks into it."""

    def _boom(self, *args: Any) -> Any:
        raise RuntimeError("injected: validation failed")

    __len__ = __iter__ = __getitem__ = values = items = keys = get = _boom


class _ValidationFault:
    def __init__(self, real: Any) -> None:
        self.real = real

    def decode(self, raw: bytes) -> Any:
        event = self.real.decode(raw)
        if b"internal-fault" in raw:
            return msgspec.structs.replace(event, data=_Exploding(event.data))
        return event


def fault_in_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    real = operators.envelope.judge

    def judge(raw: bytes) -> Any:
        if b"internal-fault" in raw:
            raise RuntimeError("injected: decoding failed")
        return real(raw)

    patch_for_ingest(monkeypatch, operators.envelope, "judge", judge)


def fault_in_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    assert hasattr(operators.envelope, "EVENT_DECODER"), "adjust the test"
    monkeypatch.setattr(operators.envelope, "EVENT_DECODER",
                        _ValidationFault(operators.envelope.EVENT_DECODER))


def fault_in_classification(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Subscription.active_at

    def active_at(self: Subscription, at: datetime) -> bool:
        if at == MARK_AT:
            raise RuntimeError("injected: classification failed")
        return real(self, at)

    monkeypatch.setattr(Subscription, "active_at", active_at)


def fault_in_value_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    real = operators.values.quantity

    def quantity(data: dict[str, Any], path: tuple[str, ...]) -> Decimal:
        value = real(data, path)
        if value == MARK_VALUE:
            raise RuntimeError("injected: value reading failed")
        return value

    patch_for_ingest(monkeypatch, operators.values, "quantity", quantity)


def fault_in_accepting(monkeypatch: pytest.MonkeyPatch) -> None:
    # After the bucket is decided: the event's window contribution fails to aggregate.
    real = Sum.add

    def add(self: Sum, value: Decimal | str, at: datetime, seq: int) -> None:
        if value == MARK_VALUE:
            raise RuntimeError("injected: aggregation failed")
        real(self, value, at, seq)

    monkeypatch.setattr(Sum, "add", add)


MARKED = tokens(str(MARK_VALUE), eid="internal-fault", time=MARK_TIME)
# An event for two meters (requests: count, bytes: sum) whose second contribution fails.
MARKED_MULTI = line(eid="internal-fault", etype="api.multi", time=MARK_TIME,
                    data='{"bytes":' + str(MARK_VALUE) + "}")


@pytest.mark.parametrize(("inject", "marked"), [
    pytest.param(fault_in_decoding, MARKED, id="decoding"),
    pytest.param(fault_in_validation, MARKED, id="validation"),
    pytest.param(fault_in_classification, MARKED, id="classification"),
    pytest.param(fault_in_value_reading, MARKED, id="value-reading"),
    pytest.param(fault_in_accepting, MARKED, id="accepting"),
    pytest.param(fault_in_accepting, MARKED_MULTI, id="accepting-the-second-meter"),
])
def test_unforeseen_failure_for_one_event_is_an_internal_error_record(
        monkeypatch: pytest.MonkeyPatch, inject: Callable[[pytest.MonkeyPatch], None],
        marked: bytes) -> None:
    lines = inserted(marked)
    inject(monkeypatch)
    result = run(lines)
    assert rejected(result) == [(INTERNAL_ERROR, MIDDLE + 1)], \
        [x.error[:300] for x in result.exceptions]
    exc = result.exceptions[0]
    assert "injected" in exc.error and "RuntimeError" in exc.error, exc.error
    assert record_bytes(exc) == marked
    assert_buckets_add_up(result)
    assert result.stats.rated == len(BASE)
    assert not any(key[1] == "2026-12" for key in result.stats.ingested)
    assert_same_outputs(result, base_result())
    report = reconcile(CATALOG, result)
    assert report.balanced, report.problems


VICTIM_CHARGE = CATALOG.plans["victim"].charge_for("tokens")
# The victim's first tokens event: alone in its window, so its rating op holds only it.
VICTIM_FIRST = next(i for i, raw in enumerate(BASE)
                    if b'"initech-app"' in raw and b'"llm.completion"' in raw)


def failing_pricer(monkeypatch: pytest.MonkeyPatch, times: int | None) -> None:
    """The victim subscription's tokens charge fails to price (its first `times` calls, or
    always); every other charge prices as before."""
    real = PRICERS["per_unit"]
    calls = {"failed": 0}

    def per_unit(charge: Any, quantity: Decimal) -> Decimal:
        if charge is VICTIM_CHARGE and (times is None or calls["failed"] < times):
            calls["failed"] += 1
            raise RuntimeError("injected: pricing failed")
        return real(charge, quantity)

    monkeypatch.setitem(PRICERS, "per_unit", per_unit)


def rating_failures(result: EngineResult) -> list[ExceptionRecord]:
    return [x for x in result.exceptions if x.position.get("step") == "rating"]


@pytest.mark.parametrize("times", [1, None], ids=["once", "always"])
def test_rating_failure_is_a_record_reconciliation_reports(monkeypatch: pytest.MonkeyPatch,
                                                           times: int | None) -> None:
    failing_pricer(monkeypatch, times)
    result = run(BASE)
    failures = rating_failures(result)
    assert failures, "no rating failure record"
    assert ingest_records(result) == []
    for exc in failures:
        assert exc.reason == INTERNAL_ERROR
        assert "injected" in exc.error
        assert exc.position["subscription"] == VICTIM_SUB
    report = reconcile(CATALOG, result)
    assert not report.balanced
    assert any(VICTIM_SUB in p for p in report.problems), report.problems
    assert_same_outputs(result, base_result(), without=[VICTIM_SUB])


def test_rating_failure_record_names_the_period_meter_window_and_events(
        monkeypatch: pytest.MonkeyPatch) -> None:
    failing_pricer(monkeypatch, 1)
    (exc,) = rating_failures(run(BASE))
    at = datetime.fromisoformat(json.loads(BASE[VICTIM_FIRST])["time"])
    window = rfc3339(at.replace(second=0)).replace("Z", "+00:00")
    where = {k: exc.position.get(k) for k in ("period", "meter", "window_start", "events")}
    assert where == {"period": "2026-10", "meter": "tokens", "window_start": window,
                     "events": 1}, exc.position


def test_after_a_failed_rating_op_the_subscription_rates_as_without_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The failed op's events are in no window and on no invoice: the subscription's later
    windows and its candidates are those of a stream without that event."""
    without = run([raw for i, raw in enumerate(BASE) if i != VICTIM_FIRST])
    failing_pricer(monkeypatch, 1)
    result = run(BASE)
    assert len(rating_failures(result)) == 1
    assert_same_outputs(result, without)


# -- 6. the fuzzer --------------------------------------------------------------------------------

SUBJECTS = ("acme-prod", "acme-dev", "globex-main", "initech-app", "whale-1", "pricey-1",
            "ghost")
DATA = {
    "api.request": '{"path":"/v1/x","n":@V}',
    "llm.completion": '{"usage":{"tokens":@V}}',
    "storage.snapshot": '{"gb":@V}',
    "user.active": '{"user_id":@V}',
    "seats.set": '{"count":@V}',
    "api.multi": '{"bytes":@V}',
    "page.view": '{"v":@V}',
}
VALID_VALUES = ("5", '"5"', "0.5", "12.25", '"0.000000001"', "1e3", "999999999999999999", "0",
                '"u7"', "42")
HOSTILE_VALUES = (
    "1e5000", "1e999999999", "-1e999999999", "1e-999999999", "0.0000000001",
    "1000000000000000000", "9" * 5000, "-" + "9" * 5000, '"1e5000"', '"NaN"', '"sNaN"',
    '"Infinity"', '"-Infinity"', '"nan"', "0e-999999999", "0e999999999", "-0", "-0.0",
    "1E+18", "1e18", '"0x10"', '"1_000"', '" 5"', "18446744073709551616",
    "-9223372036854775809", "9223372036854775807", "1.7976931348623157e309", "5e-324",
    '"' + "1" * 65 + '"', "true", "false", "null", "[]", "{}", "[1]", '"\\u0031"',
    '"123456789012345678.123456789"', "123456789012345678.1234567891", "1.0000000000",
    '"' + "x" * 1025 + '"', '""', "01", "1.", ".5", "+1", "--1", "1e", "Infinity", "NaN",
)
TIMES = (
    "0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-01:00", "1969-12-31T23:59:59Z", "1970-01-01T00:00:00Z",
    "2199-12-31T23:59:59.999999Z", "2200-01-01T00:00:00Z", "2099-01-01T00:00:00Z",
    rfc3339(NOW + timedelta(hours=24, seconds=1)), rfc3339(NOW + timedelta(hours=24)),
    "2026-02-29T00:00:00Z", "2026-06-30T23:59:60Z", "2026-10-05T12:00:00+24:00",
    "2026-10-05T12:00:00+23:59", "2026-10-05T12:00:00-23:59", "2026-10-05t12:00:00z",
    "2026-10-05T12:00:00.123456789Z", "2026-10-05 12:00:00Z", "2026-10-05T12:00:00",
    "", "now", "2026-13-01T00:00:00Z", "+2026-10-05T12:00:00Z",
)
RETYPED = ("null", "0", "-1", "1.5", "true", "[]", "{}", "[1]", '{"a":1}', '""', "1e400",
           "18446744073709551616", q("x" * 1025), q("1.0"), '"\\u0000"')
STRING_ESCAPES = ("\\ud800", "\\udfff", "\\udc00\\ud800", "\\u0000", "\\ufeff", "\\ud83d\\ude00",
                  "\\u00e9", "\\u2028", "\\\\", '\\"', "\\x41", "\\u12", "é")
INTERESTING_BYTES = (b'"', b"{", b"}", b"[", b"]", b":", b",", b"\\", b"\x00", b"\x01", b"\t",
                     b"\n", b"\r", b" ", b"\x7f", b"\x80", b"\xc0", b"\xed", b"\xef\xbb\xbf",
                     b"\xff", b"\xfe", b"e", b"E", b"-", b"+", b".", b"0", b"9", b"\\u",
                     b"\\ud800", b"\xed\xa0\x80", b"\xf4\x90\x80\x80")

STRUCTURAL = ("value", "time", "drop", "retype", "duplicate", "escape-key", "nest", "long",
              "extension", "unicode", "shuffle", "spacing", "subject", "type")
BYTEWISE = ("flip", "set", "insert", "delete", "truncate", "repeat", "bom", "swap")
OPS = STRUCTURAL + BYTEWISE


def _escape_key(key: str, rng: random.Random) -> str:
    name = key[1:-1]
    i = rng.randrange(len(name))
    return '"' + name[:i] + f"\\u{ord(name[i]):04x}" + name[i + 1:] + '"'


def mutant(rng: random.Random, k: int, ops: Sequence[str]) -> bytes:
    """One mutated event line, id "fuzz-<k>": a structural stage on (key, value) text pairs,
    then a byte-wise stage. At least one mutation is applied."""
    etype = rng.choice(tuple(DATA))
    # From mid-September (before most subscriptions start) to the end of November.
    at = BASE_START - timedelta(days=15) + timedelta(seconds=rng.randrange(76 * 86400))
    value = rng.choice(VALID_VALUES)
    # Mostly fresh ids; some reuse an earlier mutant's, so mutants also meet as duplicates.
    eid = f"fuzz-{k if rng.random() < 0.85 else rng.randrange(k + 1)}"
    pairs = [['"specversion"', q("1.0")], ['"id"', q(eid)], ['"source"', q("fuzz")],
             ['"type"', q(etype)], ['"subject"', q(rng.choice(SUBJECTS))],
             ['"time"', q(rfc3339(at))], ['"data"', DATA[etype].replace("@V", value)]]
    chosen = rng.sample(list(ops), k=min(len(ops), rng.choice((1, 1, 1, 2, 2, 3))))
    separator, colon = ",", ":"
    for op in (o for o in chosen if o in STRUCTURAL):
        pair = rng.choice(pairs) if pairs else None
        if op == "value":
            for p in pairs:
                if p[0] == '"data"':
                    p[1] = DATA[etype].replace("@V", rng.choice(HOSTILE_VALUES))
        elif op == "time":
            for p in pairs:
                if p[0] == '"time"':
                    p[1] = q(rng.choice(TIMES)) if rng.random() < 0.9 else rng.choice(RETYPED)
        elif op == "drop" and pairs:
            pairs.remove(rng.choice(pairs))
        elif op == "retype" and pair is not None:
            pair[1] = rng.choice(RETYPED)
        elif op == "duplicate" and pair is not None:
            copy = [pair[0], rng.choice([pair[1], *RETYPED[:4], q("acme-prod")])]
            if rng.random() < 0.3:
                copy[0] = _escape_key(copy[0], rng)
            pairs.insert(rng.randrange(len(pairs) + 1), copy)
        elif op == "escape-key" and pair is not None:
            pair[0] = _escape_key(pair[0], rng)
        elif op == "nest":
            depth = rng.choice((29, 30, 31, 32, 33, 64, 1000))
            for p in pairs:
                if p[0] == '"data"':
                    p[1] = p[1][:-1] + ',"deep":' + "[" * depth + "1" + "]" * depth + "}"
        elif op == "long" and pair is not None:
            pair[1] = q("x" * rng.choice((1023, 1024, 1025, 4096)))
        elif op == "extension":
            pairs.insert(rng.randrange(len(pairs) + 1),
                         [q("x" + str(rng.randrange(3))), rng.choice(RETYPED)])
        elif op == "unicode" and pair is not None and pair[1].startswith('"'):
            cut = rng.randrange(1, len(pair[1]))
            pair[1] = pair[1][:cut] + rng.choice(STRING_ESCAPES) + pair[1][cut:]
        elif op == "shuffle":
            rng.shuffle(pairs)
        elif op == "spacing":
            separator, colon = rng.choice(((", ", ": "), (" ,", " :"), ("\t,", "\t:"),
                                           (",\r", ":\n")))
        elif op == "subject":
            for p in pairs:
                if p[0] == '"subject"':
                    p[1] = q(rng.choice(("", "ACME-PROD", "acme-prod ", "whale-1", "nobody")))
        elif op == "type":
            for p in pairs:
                if p[0] == '"type"':
                    p[1] = q(rng.choice((*DATA, "API.REQUEST", "")))
    raw = bytearray(("{" + separator.join(f"{k_}{colon}{v}" for k_, v in pairs) + "}").encode())
    for op in (o for o in chosen if o in BYTEWISE):
        for _ in range(rng.randint(1, 3)):
            if not raw:
                break
            i = rng.randrange(len(raw))
            if op == "flip":
                raw[i] ^= 1 << rng.randrange(8)
            elif op == "set":
                raw[i] = rng.randrange(256)
            elif op == "insert":
                raw[i:i] = rng.choice(INTERESTING_BYTES)
            elif op == "delete":
                del raw[i:i + rng.randint(1, 8)]
            elif op == "truncate":
                del raw[i:]
            elif op == "repeat":
                raw[i:i] = raw[i:i + rng.randint(1, 40)]
            elif op == "bom":
                raw[0:0] = b"\xef\xbb\xbf"
            elif op == "swap":
                j = rng.randrange(len(raw))
                raw[i], raw[j] = raw[j], raw[i]
    # Rare and costly: a line past the size limit, or nested 100,000 levels deep.
    roll = rng.random()
    if roll < 0.001:
        raw += b" " * (MAX_LINE_BYTES + 1 - len(raw))
    elif roll < 0.003:
        raw = bytearray(tokens("5", eid=f"fuzz-{k}").replace(
            b'"usage"', b'"deep":' + b"[" * 100_000 + b"]" * 100_000 + b',"usage"'))
    return bytes(raw)


def mixed_stream(seed: int, ops: Sequence[str], count: int) -> tuple[list[bytes], list[bool]]:
    """The base stream with `count` mutants inserted at random places; flags mark the base."""
    rng = random.Random(seed)
    items: list[tuple[bool, bytes]] = [(True, raw) for raw in BASE]
    for k in range(count):
        items.insert(rng.randrange(len(items) + 1), (False, mutant(rng, k, ops)))
    return [raw for _, raw in items], [is_base for is_base, _ in items]


def accepted_positions(lines: Sequence[bytes]) -> set[int]:
    """The line numbers ingest rates, from its usage ledger (IngestConfig.ledger)."""
    ingestor = Ingestor(CATALOG, config(ledger=True), MemoryDedup(), "file", 0)
    positions: set[int] = set()
    for start in range(0, len(lines), 1000):
        batch = list(enumerate(lines[start:start + 1000], start=start + 1))
        positions.update(a.origin_offset for a in ingestor.process(batch).accepted)
    return positions


# No shrinking: a mutant stream is drawn from one seed, so a smaller seed is not a simpler
# failure, and each attempt costs a run. A failure prints its seed and operations instead.
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                phases=[Phase.explicit, Phase.reuse, Phase.generate])
MUTANTS = 1000
seeds = st.integers(min_value=0, max_value=2**64 - 1)
focus = st.lists(st.sampled_from(OPS), min_size=1, max_size=len(OPS), unique=True)


@FUZZ
@given(seed=seeds, ops=focus)
def test_fuzzed_lines_never_break_the_buckets_or_the_base_stream(seed: int,
                                                                 ops: list[str]) -> None:
    """Whatever the mutants are: every line in one bucket, every record keeps its bytes, nothing
    needs the crash-safe boundary, everything written is storable, reconciliation balances, and
    the outputs are those of the base stream plus only the mutants that were rated (so with no
    mutant rated, exactly the base stream's)."""
    lines, is_base = mixed_stream(seed, ops, MUTANTS)
    result = run(lines)
    assert_buckets_add_up(result)
    assert result.stats.read + result.stats.blank == len(lines)
    assert_records_keep_their_lines(result, lines)
    internal = [(x.error, lines[x.position["line"] - 1][:300]) for x in result.exceptions
                if x.reason == INTERNAL_ERROR]
    assert not internal, internal[:3]
    assert_everything_storable(result)
    report = reconcile(CATALOG, result)
    assert report.balanced, report.problems[:5]

    accepted = accepted_positions(lines)
    assert len(accepted) == result.stats.rated
    assert all(n in accepted for n, base in enumerate(is_base, start=1) if base)
    reference = [raw for n, (raw, base) in enumerate(zip(lines, is_base, strict=True), start=1)
                 if base or n in accepted]
    assert_same_outputs(result, base_result() if len(reference) == len(BASE)
                        else run(reference))


@settings(FUZZ, max_examples=20)
@given(seed=seeds, ops=focus)
def test_fuzzed_stream_fed_twice_dedups_to_the_same_outputs(seed: int, ops: list[str]) -> None:
    lines, _ = mixed_stream(seed, ops, MUTANTS)
    once = run(lines)
    twice = run([raw for raw in lines for _ in range(2)])
    assert_same_outputs(twice, once)
    assert twice.stats.rated == once.stats.rated
    # Only lines that reach dedup claim an identity: their copies are duplicates. Every line
    # rejected or unmetered before it claims nothing, so its copy lands where it did. Only
    # PERIOD_LIMIT_EXCEEDED (and an internal error while admitting) comes after dedup.
    o, t = once.stats, twice.stats
    after = (PERIOD_LIMIT_EXCEEDED,)
    reached = o.rated + o.duplicates + sum(o.exceptions[r] for r in after)
    assert t.duplicates == o.duplicates + reached
    assert t.unmetered == 2 * o.unmetered
    assert o.exceptions[INTERNAL_ERROR] == 0  # else its side of dedup would be unknown here
    for reason in REASONS:
        factor = 1 if reason in after else 2
        assert t.exceptions[reason] == factor * o.exceptions[reason], reason


def test_fuzzer_mutants_reach_every_bucket() -> None:
    """The fuzzer is not only producing junk: across one stream its mutants reach every stage
    of judging (so the properties above are tested at each of them)."""
    lines, _ = mixed_stream(7, OPS, 3000)
    result = run(lines)
    reached = {k for k, v in buckets(result).items() if v}
    assert {"rated", "duplicate", "unmetered", INVALID_JSON, INVALID_EVENT, FUTURE_EVENT,
            "UNKNOWN_SUBJECT", "BEFORE_BILLING_START", "INVALID_VALUE"} <= reached, reached
