"""Generic Bytewax sink adapters: hand each batch to a function, or convert each item before
another sink's partition writes it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from bytewax.outputs import DynamicSink, StatelessSinkPartition

T = TypeVar("T")


class _CallbackPartition(StatelessSinkPartition[Any]):
    def __init__(self, callback: Callable[[Sequence[Any]], None]) -> None:
        self.callback = callback

    def write_batch(self, items: list[Any]) -> None:
        self.callback(items)


class CallbackSink(DynamicSink[Any], Generic[T]):
    """Hands each batch to a function, serialized by a lock: for in-process collectors (counts,
    progress, a store client shared by the worker threads of one process)."""

    def __init__(self, callback: Callable[[Sequence[Any]], None]) -> None:
        self._lock = threading.Lock()
        self._callback = callback

    def _locked(self, items: Sequence[Any]) -> None:
        with self._lock:
            self._callback(items)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CallbackPartition:
        return _CallbackPartition(self._locked)


class _MappedPartition(StatelessSinkPartition[Any]):
    def __init__(self, inner: StatelessSinkPartition[Any], fn: Callable[[Any], Any]) -> None:
        self.inner, self.fn = inner, fn

    def write_batch(self, items: list[Any]) -> None:
        self.inner.write_batch([self.fn(item) for item in items])

    def close(self) -> None:
        self.inner.close()


class MappedSink(DynamicSink[Any]):
    """Converts each item before handing it to another sink's partition."""

    def __init__(self, inner: DynamicSink[Any], fn: Callable[[Any], Any]) -> None:
        self.inner, self.fn = inner, fn

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _MappedPartition:
        return _MappedPartition(self.inner.build(step_id, worker_index, worker_count), self.fn)
