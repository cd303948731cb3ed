"""File-mode sinks: JSON lines written per worker, merged into one sorted file at the end.

Each worker appends to its own part file (no locks, no interleaved lines). `finalize` merges the
parts by streaming (sorted runs, then a k-way merge: memory is one run, not the whole output),
drops repeats of an id (outputs are at-least-once under recovery, so a sink must be idempotent),
orders by a deterministic key, and replaces the final file atomically, so the same
input always gives byte-identical files whatever the worker count.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import msgspec
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from schemas.records import ENCODER

T = TypeVar("T")

# Records per sorted run when the parts are merged: bounds the memory of `finalize` (an
# exception record keeps up to 64 KiB of its original line, so a run stays well under 1 GB even
# of the largest; typical records are a few hundred bytes).
RUN_RECORDS = 10_000
# Records encoded per write by `write_jsonl`.
WRITE_RECORDS = 1000


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
                 sort_key: Callable[[T], Any], run_records: int = RUN_RECORDS) -> int:
        """Merge the parts into `final`, ordered by (sort_key, id), each id once; the number of
        records written. Memory holds one sorted run of `run_records` at a time, never the
        whole output: each part is cut into sorted run files, and the runs are merged by
        streaming (`heapq.merge`). A repeat of an id is the same record written again under
        at-least-once delivery, so it sorts next to its first copy and is dropped there."""
        decoder = msgspec.json.Decoder(record_type)

        def key(line: bytes) -> tuple[Any, str]:
            record = decoder.decode(line)
            return sort_key(record), id_of(record)

        runs: list[Path] = []
        for part in sorted(self.parts.glob(f"{self.name}.*.jsonl")):
            with open(part, "rb") as fh:
                while batch := list(itertools.islice(fh, run_records)):
                    batch = [line if line.endswith(b"\n") else line + b"\n" for line in batch]
                    batch.sort(key=key)
                    run = self.parts / f"{self.name}.run-{len(runs)}"
                    run.write_bytes(b"".join(batch))
                    runs.append(run)
            part.unlink()
        tmp = Path(f"{final}.tmp")
        written = 0
        def keyed(fh: IO[bytes]) -> Iterator[tuple[tuple[Any, str], bytes]]:
            # Each line decoded once for the merge; the id is the key's last part. Equal keys
            # are repeats of one id, so comparing on to their bytes is harmless.
            return ((key(line), line) for line in fh)

        with contextlib.ExitStack() as stack, open(tmp, "wb") as out:
            readers = [keyed(stack.enter_context(open(run, "rb"))) for run in runs]
            last_id: str | None = None
            for (_, record_id), line in heapq.merge(*readers):
                if record_id != last_id:
                    out.write(line)
                    written += 1
                    last_id = record_id
        for run in runs:
            run.unlink()
        os.replace(tmp, final)
        return written


class JsonLinesFile(Iterable[T]):
    """The records of a JSON-lines file, decoded as they are read; each iteration reads the
    file again, so a long output is never held in memory to be used twice."""

    def __init__(self, path: str | Path, record_type: type[T]) -> None:
        self.path = Path(path)
        self._decoder = msgspec.json.Decoder(record_type)

    def __iter__(self) -> Iterator[T]:
        with open(self.path, "rb") as fh:
            for line in fh:
                yield self._decoder.decode(line)


def write_jsonl(path: str | Path, records: Sequence[Any]) -> None:
    """Whole file at once, through a temporary name, so a reader never sees half a file."""
    tmp = Path(f"{path}.tmp")
    with open(tmp, "wb") as fh:
        # encode_lines gives the same bytes as encode + newline per record, a run of records
        # per call (revenue schedules are millions of entries for ten thousand subscriptions).
        for i in range(0, len(records), WRITE_RECORDS):
            fh.write(ENCODER.encode_lines(records[i:i + WRITE_RECORDS]))
    os.replace(tmp, path)
