"""The rated-window writers (sinks/clickhouse/sink.py), against the real embedded engine: the
background writer of file mode stores exactly what the synchronous one does; stream mode's epoch
writer stores what was submitted before `wait` returns (what lets an epoch commit), coalesces
what piles up, bounds what waits; and a write that fails on either's thread fails the flow's
thread, with nothing after it written."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from test_clickhouse_store import JAN, rated

from schemas.records import RatedWindow
from sinks import clickhouse as ch
from sinks.clickhouse import ChdbStore, UnstorableValueError
from sinks.clickhouse.sink import EpochWriter, RatedWindowSink


@pytest.fixture(autouse=True)
def _no_session_left_open():
    yield
    assert not ch._SESSIONS, "a ChdbStore was left open"


def batches(count: int, size: int, prefix: str = "sub") -> list[list[RatedWindow]]:
    return [[rated(f"{prefix}-{b}", start=JAN + timedelta(minutes=i)) for i in range(size)]
            for b in range(count)]


def stored(store: ChdbStore) -> list[tuple[str, Decimal]]:
    return [(r["row_id"], r["amount_delta"]) for r in store.final_rows()]


def run_sink(store: ChdbStore, items: Sequence[list[RatedWindow]], **options: object) -> None:
    part = RatedWindowSink(store, **options).build("windows", 0, 1)  # type: ignore[arg-type]
    try:
        for chunk in items:
            part.write_batch([chunk])
    finally:
        part.close()


def test_background_writer_stores_what_the_synchronous_one_does(tmp_path: Path) -> None:
    items = batches(12, 250)  # 3,000 rows in buffers of 700: several inserts in flight
    with ChdbStore(tmp_path / "sync") as store:
        run_sink(store, items, flush_rows=700)
        expected = stored(store)
    with ChdbStore(tmp_path / "background") as store:
        run_sink(store, items, flush_rows=700, background=True)
        assert stored(store) == expected
    assert len(expected) == 3000


def test_writes_happen_off_the_flows_thread(tmp_path: Path) -> None:
    seen: list[str] = []

    class Recording(ChdbStore):
        def write(self, rows: Sequence[RatedWindow]) -> None:
            seen.append(threading.current_thread().name)
            super().write(rows)

    with Recording(tmp_path / "db") as store:
        run_sink(store, batches(4, 100), flush_rows=100, background=True)
        assert len(store.final_rows()) == 400
    assert seen and threading.current_thread().name not in seen


def test_a_failed_write_fails_the_flow_and_stops_writing(tmp_path: Path) -> None:
    bad = [rated("bad", amount_delta="1" + "0" * 25)]  # beyond Decimal(38, 18)
    items = [*batches(2, 50, "before"), bad, *batches(3, 50, "after")]
    with ChdbStore(tmp_path / "db") as store:
        part = RatedWindowSink(store, flush_rows=50, background=True).build("windows", 0, 1)
        with pytest.raises(UnstorableValueError, match="integer digits"):
            for chunk in items:
                part.write_batch([chunk])
            part.flush()
        with pytest.raises(UnstorableValueError):
            part.close()  # and again at close: the run must not end as if it had succeeded
        rows = {r["row_id"].split(":")[0] for r in store.final_rows()}
        assert "bad" not in rows
        # The batches before it are stored; nothing after the failure is.
        assert rows == {"before-0", "before-1"}


def test_a_background_writer_needs_a_buffer(tmp_path: Path) -> None:
    with ChdbStore(tmp_path / "db") as store, pytest.raises(ValueError, match="recovery"):
        RatedWindowSink(store, flush_rows=1, background=True)


class Gated(ChdbStore):
    """A real store whose writes wait for `gate`, recording each write's size and thread."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.started = threading.Event()
        self.writes: list[tuple[int, str]] = []

    def write(self, rows: Sequence[RatedWindow]) -> None:
        self.started.set()
        assert self.gate.wait(30)
        self.writes.append((len(rows), threading.current_thread().name))
        super().write(rows)


def test_epoch_writer_stores_everything_before_wait_returns(tmp_path: Path) -> None:
    items = batches(10, 100)
    with ChdbStore(tmp_path / "sync") as store:
        run_sink(store, items, flush_rows=1)
        expected = stored(store)
    with Gated(tmp_path / "epoch") as store:
        writer = EpochWriter(store.write, "test")
        try:
            writer.submit(items[0])
            assert store.started.wait(30)  # the writer took the first batch: held at the gate
            for chunk in items[1:]:
                writer.submit(chunk)
            waited = threading.Event()
            waiter = threading.Thread(target=lambda: (writer.wait(), waited.set()))
            waiter.start()
            # The first insert is held: `wait` (the rating step's snapshot) must not return.
            assert not waited.wait(0.3)
            store.gate.set()
            waiter.join(30)
            assert waited.is_set()
            assert stored(store) == expected  # every submitted row, as the sink stores them
        finally:
            store.gate.set()
            writer.close()
    # Written off the flow's thread, and what piled up behind the held insert went in one.
    assert {name for _, name in store.writes} == {"meterwax-test-writer"}
    assert len(store.writes) == 2
    assert sum(n for n, _ in store.writes) == 1000


def test_epoch_writer_bounds_what_waits(tmp_path: Path) -> None:
    with Gated(tmp_path / "db") as store:
        writer = EpochWriter(store.write, "test", max_rows=100)
        try:
            writer.submit(batches(1, 100)[0])  # taken by the writer, held at the gate
            assert store.started.wait(30)
            writer.submit(batches(1, 100, "second")[0])  # waits: max_rows rows now wait
            done = threading.Event()
            third = threading.Thread(
                target=lambda: (writer.submit(batches(1, 100, "third")[0]), done.set()))
            third.start()
            assert not done.wait(0.3), "a submit beyond max_rows must wait for the writer"
            store.gate.set()
            third.join(30)
            assert done.is_set()
            writer.wait()
            assert len(store.final_rows()) == 300
        finally:
            store.gate.set()
            writer.close()


def test_epoch_writer_failure_reaches_the_flow_and_stops_writing(tmp_path: Path) -> None:
    bad = [rated("bad", amount_delta="1" + "0" * 25)]  # beyond Decimal(38, 18)
    with ChdbStore(tmp_path / "db") as store:
        writer = EpochWriter(store.write, "test")
        writer.submit(batches(1, 50, "before")[0])
        writer.wait()
        writer.submit(bad)
        with pytest.raises(UnstorableValueError, match="integer digits"):
            writer.wait()  # the snapshot fails: the epoch does not commit
        with pytest.raises(UnstorableValueError):
            writer.submit(batches(1, 50, "after")[0])
        with pytest.raises(UnstorableValueError):
            writer.close()
        writer.close(raise_error=False)  # after the flow's own failure: that one is reported
        rows = {r["row_id"].split(":")[0] for r in store.final_rows()}
        assert rows == {"before-0"}


def test_epoch_writer_close_stores_what_was_submitted(tmp_path: Path) -> None:
    with ChdbStore(tmp_path / "db") as store:
        writer = EpochWriter(store.write, "test")
        for chunk in batches(5, 40):
            writer.submit(chunk)
        writer.close()
        assert len(store.final_rows()) == 200
        with pytest.raises(RuntimeError, match="closed"):
            writer.submit(batches(1, 1)[0])
