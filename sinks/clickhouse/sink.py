"""Writers for ClickHouse rows: the Bytewax sink of file mode's rated windows (buffered, large
batches, optionally on a thread of its own) and stream mode's `EpochWriter`, which a stateful
step hands its rows to and waits for in its snapshot.

Rows are idempotent by their ids in the store, so a batch re-written after a restart changes
nothing; buffering only trades latency for fewer, larger inserts. Retries are the store's
(`ClickHouseConnectStore` retries a failed INSERT under `sinks.retry`'s policy): a write blocks
while the server is unavailable and raises `ClickHouseUnavailable` only after the deadline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from schemas.records import RatedWindow

T = TypeVar("T")


class RowWriter(Protocol):
    def write(self, rows: Sequence[RatedWindow]) -> None: ...


class _Writer:
    """Writes to the store on the calling thread: a flushed row is stored when `write_batch`
    returns (the reference the background writer is tested against)."""

    def __init__(self, store: RowWriter, lock: threading.Lock, flush_rows: int) -> None:
        self.store, self.lock = store, lock

    def submit(self, rows: list[RatedWindow]) -> None:
        with self.lock:
            self.store.write(rows)

    def wait(self) -> None:
        pass

    def close(self) -> None:
        pass


class _BackgroundWriter(_Writer):
    """Writes to the store on a thread of its own (an `EpochWriter`) while the flow rates the
    next batch. The engine parses and merges an insert without holding the GIL (measured: a
    Python loop runs at full speed beside a chdb INSERT), so on a second core the insert costs
    the flow nothing but the encoding; it was about a quarter of a file run's wall clock.

    The writer's bound is one buffer: every submitted buffer holds at least `flush_rows` rows,
    so at most one waits behind the one being written and memory stays at three buffers
    whatever the input's length. A write that fails is raised again, as it was, on the flow's
    thread at its next `submit`, `wait` or `close`, and nothing after it is written: file mode
    then fails the run, as a failure on the flow's thread would (it has no recovery, and the
    output folder is only replaced once the run finished)."""

    def __init__(self, store: RowWriter, lock: threading.Lock, flush_rows: int) -> None:
        super().__init__(store, lock, flush_rows)
        self._thread: EpochWriter[RatedWindow] = EpochWriter(
            super().submit, "rated-window", max_rows=flush_rows)

    def submit(self, rows: list[RatedWindow]) -> None:
        self._thread.submit(rows)

    def wait(self) -> None:
        self._thread.wait()

    def close(self) -> None:
        self._thread.close()


class _BufferedPartition(StatelessSinkPartition[list[RatedWindow]]):
    def __init__(self, writer: _Writer, flush_rows: int) -> None:
        self.writer, self.flush_rows = writer, flush_rows
        self.buffer: list[RatedWindow] = []

    def write_batch(self, items: list[list[RatedWindow]]) -> None:
        for chunk in items:
            self.buffer.extend(chunk)
        if len(self.buffer) >= self.flush_rows:
            self._submit()

    def _submit(self) -> None:
        if self.buffer:
            self.writer.submit(self.buffer)
            self.buffer = []

    def flush(self) -> None:
        """Write everything buffered and wait until it is stored."""
        self._submit()
        self.writer.wait()

    def close(self) -> None:
        try:
            self._submit()
        finally:
            self.writer.close()


class RatedWindowSink(DynamicSink[list[RatedWindow]]):
    """File mode's rated windows: 20,000 rows buffered for fewer, larger inserts, and with
    `background` written on a thread of their own (`_BackgroundWriter`). `flush_rows=1` writes
    at the end of every batch; a flow with recovery needs that or, as stream mode does, an
    `EpochWriter` awaited at its snapshots: a row still buffered when Bytewax commits an epoch
    would be lost in a crash."""

    def __init__(self, store: RowWriter, flush_rows: int = 20_000, *,
                 background: bool = False) -> None:
        if background and flush_rows <= 1:
            msg = "a background writer needs a buffer: it is for file mode, never with recovery"
            raise ValueError(msg)
        self.store = store
        self.flush_rows = flush_rows
        self.background = background
        self._lock = threading.Lock()  # worker threads of one process share one store client

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _BufferedPartition:
        writer = (_BackgroundWriter if self.background else _Writer)(self.store, self._lock,
                                                                     self.flush_rows)
        return _BufferedPartition(writer, self.flush_rows)


class EpochWriter(Generic[T]):
    """Stream mode's ClickHouse rows (rated windows, the usage ledger, rejections), stored on a
    thread of their own while the flow works on.

    The step that makes the rows hands them over as it emits them (`submit`) and calls `wait`
    in its `snapshot`: Bytewax takes every touched key's snapshot when an epoch closes and
    commits the epoch only once they are written, so an epoch is never committed before its
    rows are stored, exactly as when a synchronous sink wrote every batch, while the inserts
    overlap the flow's work instead of stopping it (measured: waiting on ClickHouse was about
    a third of a stream run's main thread). What piles up while an insert is in flight goes in
    one insert, so a busy stream makes fewer, larger ones.

    Once `max_rows` rows wait, a further `submit` blocks until the writer took them, so memory
    follows the work in flight. A failed write (the store's retries exhausted) is raised
    on the flow's thread at the next `submit` or `wait`, and nothing is written after it: the
    flow stops, and a restart replays from the last committed epoch (every table is idempotent
    by its rows' ids). Several worker threads of one process may share one writer."""

    def __init__(self, write: Callable[[list[T]], None], name: str,
                 max_rows: int = 50_000) -> None:
        if max_rows < 1:
            msg = "max_rows must be at least 1"
            raise ValueError(msg)
        self.write, self.max_rows = write, max_rows
        self._cond = threading.Condition()
        self._pending: list[T] = []
        self._writing = False
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=f"meterwax-{name}-writer",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._pending and not self._closed:
                    cond.wait()
                if not self._pending:
                    return  # closed, and everything submitted is stored
                rows, self._pending = self._pending, []
                self._writing = True
                cond.notify_all()  # room again for a blocked submit
            try:
                self.write(rows)
            except BaseException as exc:  # handed to the flow's thread (class docstring)
                with cond:
                    self._error = exc
                    self._pending = []
                    self._writing = False
                    cond.notify_all()
                return
            with cond:
                self._writing = False
                cond.notify_all()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, rows: Sequence[T]) -> None:
        if not rows:
            return
        with self._cond:
            self._raise()
            if self._closed:
                msg = "the epoch writer is closed"
                raise RuntimeError(msg)
            while len(self._pending) >= self.max_rows and self._error is None:
                self._cond.wait()
            self._raise()
            self._pending.extend(rows)
            self._cond.notify_all()

    def wait(self) -> None:
        """Return once every row submitted so far is stored; raise a failed write."""
        with self._cond:
            while (self._pending or self._writing) and self._error is None:
                self._cond.wait()
            self._raise()

    def close(self, *, raise_error: bool = True) -> None:
        """Store what was submitted, stop the thread; `raise_error=False` after the flow
        already failed, so its own error is the one reported."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        if raise_error:
            self._raise()
