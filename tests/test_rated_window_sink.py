"""The Bytewax sink adapter for rated windows (sinks/clickhouse/sink.py), against the real embedded
engine: the background writer of file mode stores exactly what the synchronous one does, and a
write that fails on its thread fails the flow's thread, with nothing after it written."""

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
from sinks.clickhouse.sink import RatedWindowSink


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
