"""File-mode sinks: JSON lines written per worker, merged into one sorted file at the end.

Each worker appends to its own part file (no locks, no interleaved lines). `finalize` merges the
parts, drops exact repeats of an id (outputs are at-least-once under recovery, so a sink must be
idempotent), orders by a deterministic key, and replaces the final file atomically, so the same
input always gives byte-identical files whatever the worker count.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from schemas.records import ENCODER

T = TypeVar("T")


class _PartWriter(StatelessSinkPartition[list[Any]]):
    def __init__(self, path: Path) -> None:
        self.fh = open(path, "ab")  # noqa: SIM115

    def write_batch(self, items: list[list[Any]]) -> None:
        buf = bytearray()
        for chunk in items:
            for record in chunk:
                buf += ENCODER.encode(record)
                buf += b"\n"
        if buf:
            self.fh.write(buf)

    def close(self) -> None:
        self.fh.close()


class JsonLinesPartsSink(DynamicSink[list[Any]]):
    """Writes chunks of records to DIR/.parts/NAME.<worker>.jsonl."""

    def __init__(self, out_dir: str | Path, name: str) -> None:
        self.parts = Path(out_dir) / ".parts"
        self.name = name
        self.parts.mkdir(parents=True, exist_ok=True)
        for old in self.parts.glob(f"{name}.*.jsonl"):
            old.unlink()

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _PartWriter:
        return _PartWriter(self.parts / f"{self.name}.{worker_index}.jsonl")

    def finalize(self, final: str | Path, record_type: type[T], id_of: Callable[[T], str],
                 sort_key: Callable[[T], Any]) -> list[T]:
        decoder = msgspec.json.Decoder(record_type)
        records: dict[str, T] = {}
        for part in sorted(self.parts.glob(f"{self.name}.*.jsonl")):
            with open(part, "rb") as fh:
                for line in fh:
                    record = decoder.decode(line)
                    records[id_of(record)] = record
            part.unlink()
        ordered = sorted(records.values(), key=sort_key)
        write_jsonl(final, ordered)
        return ordered


def write_jsonl(path: str | Path, records: Sequence[Any]) -> None:
    """Whole file at once, through a temporary name, so a reader never sees half a file."""
    tmp = Path(f"{path}.tmp")
    with open(tmp, "wb") as fh:
        for record in records:
            fh.write(ENCODER.encode(record))
            fh.write(b"\n")
    os.replace(tmp, path)
