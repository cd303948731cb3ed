"""File input: JSON lines read in chunks, resumable from a byte offset.

One chunk is one Bytewax item (a list of (line number, raw bytes)). Moving lines a chunk at a time
keeps the runtime's per-item cost (routing, pickling between workers) off the per-event path, and
avoids the busy-spinning that one-item batches cause downstream (bytewax issue 578).
"""

from __future__ import annotations

import itertools
import operator
import os
import sys
from dataclasses import dataclass
from typing import BinaryIO, NoReturn

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from flows.judge_ahead import JudgeAhead
from operators.bindings import Headers
from operators.limits import MAX_LINE_BYTES

# (partition name, [(line number or offset, raw line)]), and from Kafka, when some of the lines
# are events retried from a dead letter (`meterwax exceptions retry`), their offsets; and when
# some are messages in binary content mode (CloudEvents Kafka binding: the line is the message
# value, the attributes are in headers), a fourth element: offset -> those messages' headers,
# which ingest turns into the structured event (operators/bindings.py) before judging it.
# In file mode, a chunk whose lines were judged ahead by the helper process comes as JudgedLines.
Chunk = (tuple[str, list[tuple[int, bytes]]] | tuple[str, list[tuple[int, bytes]], list[int]]
         | tuple[str, list[tuple[int, bytes]], list[int], dict[int, Headers]]
         | tuple[str, "ContractsBatch"] | tuple[str, "PartitionIdle"] | tuple[str, "JudgedLines"])


@dataclass(frozen=True)
class JudgedLines:
    """A chunk of lines with what the helper process found for them (flows/judge_ahead.py), the
    verdicts still encoded: ingest decodes them (a chunk that crosses to another worker thread
    is pickled, and bytes pickle for nothing)."""

    lines: list[tuple[int, bytes]]
    verdicts: bytes


@dataclass(frozen=True)
class PartitionIdle:
    """The partition has read nothing for the idle timeout (`ended`: it reached the end of a
    bounded run). Its ingest tells the raters not to wait for its closes (operators/protocol.py);
    an ended partition's ingest also needs to exist to say so at the end of the run, even if
    the partition held nothing."""

    ended: bool = False


@dataclass(frozen=True)
class ContractsBatch:
    """Messages of the contracts topic read by one input partition's reader (stream mode),
    travelling in its chunk stream so its ingest applies them exactly between the usage read
    before and after them. (offset, key, value), value None for a tombstone."""

    topic: str
    records: list[tuple[int, bytes | None, bytes | None]]

_READ_BYTES = 1 << 18
_LINE, _SPAN = operator.itemgetter(0), operator.itemgetter(1)
_BOM = b"\xef\xbb\xbf"


@dataclass
class Progress:
    """Shared, lock-free-enough counters for a progress indicator (read by another thread)."""

    total_bytes: int = 0
    read_bytes: int = 0
    lines: int = 0
    done: bool = False


@dataclass(frozen=True)
class FilePosition:
    offset: int  # byte offset of the next line
    line: int  # number of the next line (1-based)


class _FilePartition(StatefulSourcePartition[Chunk, FilePosition]):
    """Splits the file into lines itself, from fixed-size reads, so no line costs more memory
    than the 1 MiB limit however long it is: the part of an over-long line beyond the limit is
    read and dropped, and the kept prefix (one byte past the limit) reaches ingest, which
    rejects it as INVALID_JSON. A UTF-8 byte order mark at the start of the file is the file's
    encoding marker, not part of its first event, and is dropped."""

    def __init__(self, name: str, fh: BinaryIO, resume: FilePosition | None, chunk_lines: int,
                 progress: Progress | None, ahead: JudgeAhead | None = None) -> None:
        self.name = name
        self.ahead = ahead
        # With a helper: the next chunk, read and sent to it, and the position after it.
        self._next: tuple[list[tuple[int, bytes]], FilePosition] | None = None
        self._started = False
        self.fh = fh
        self.chunk_lines = chunk_lines
        self.progress = progress
        # `position`: after the last chunk handed to the flow (the snapshot); `_read`: after the
        # last chunk read, one chunk further when a helper judges ahead.
        self.position = resume or FilePosition(0, 1)
        self._read = self.position
        if self.position.offset:
            fh.seek(self.position.offset)
        self._buffer = b""  # bytes read after the last complete line (at most the limit + 1)
        self._overflow = False  # the buffered line already passed the limit
        self._pending = 0  # file bytes of the buffered line, kept or dropped
        self._ready: list[tuple[bytes, int]] = []  # complete lines and the bytes each spans
        self._cr = False  # a carriage return was read (lines may end in CRLF)
        self._eof = False

    def next_batch(self) -> list[Chunk]:
        ahead = self.ahead
        if ahead is not None and ahead.alive:
            return self._next_judged(ahead)
        if self._next is not None:  # read ahead for a helper given up since
            chunk, self.position = self._next
            self._next = None
            return [(self.name, chunk)]
        taken = self._take()
        if taken is None:
            self._finish()
        self.position = self._read
        return [(self.name, taken)]

    def _next_judged(self, ahead: JudgeAhead) -> list[Chunk]:
        if not self._started:
            self._started = True
            self._next = self._take_next()
            if self._next is not None:
                ahead.submit([raw for _, raw in self._next[0]])
        if self._next is None:
            self._finish()
        chunk, after = self._next
        verdicts = ahead.answer()
        # The chunk after it goes to the helper now, so it is judged while ingest works on this.
        self._next = self._take_next()
        if self._next is not None and verdicts is not None:
            ahead.submit([raw for _, raw in self._next[0]])
        self.position = after  # the snapshot's position: the chunk read ahead is not in it
        if verdicts is None:
            return [(self.name, chunk)]
        return [(self.name, JudgedLines(chunk, verdicts))]

    def _take_next(self) -> tuple[list[tuple[int, bytes]], FilePosition] | None:
        taken = self._take()
        return None if taken is None else (taken, self._read)

    def _finish(self) -> NoReturn:
        if self.progress is not None:
            self.progress.done = True
        raise StopIteration

    def _take(self) -> list[tuple[int, bytes]] | None:
        """The next chunk of lines, numbered, moving the read position past it; None at the
        end of the input."""
        ready = self._ready
        while len(ready) < self.chunk_lines and not self._eof:
            block = self.fh.read(_READ_BYTES)
            if not block:
                self._eof = True
                if self._buffer or self._pending:
                    ready.append((self._buffer, self._pending))
                    self._buffer, self._overflow, self._pending = b"", False, 0
                break
            self._split(block)
        if not ready:
            return None
        taken = ready[: self.chunk_lines]
        del ready[: self.chunk_lines]
        read = self._read
        first = read.line
        lines = list(map(_LINE, taken))
        if read.offset == 0 and lines[0].startswith(_BOM):
            lines[0] = lines[0][len(_BOM):]
        if self._cr:
            chunk = [(number, raw[:-1] if raw.endswith(b"\r") else raw)
                     for number, raw in enumerate(lines, first)]
        else:  # no carriage return read yet: the lines as they are, numbered at C speed
            chunk = list(zip(range(first, first + len(lines)), lines, strict=True))
        consumed = sum(map(_SPAN, taken))
        number = first + len(lines)
        self._read = FilePosition(read.offset + consumed, number)
        if self.progress is not None:
            self.progress.read_bytes += consumed
            self.progress.lines = number - 1
        return chunk

    def _split(self, block: bytes) -> None:
        """Queue the lines `block` completes, each with the file bytes it spans."""
        parts = block.split(b"\n")
        ready = self._ready
        if not self._cr and b"\r" in block:
            self._cr = True
        if len(parts) > 1:
            # The first part completes the line carried from the block before, if any.
            part = parts[0]
            ready.append((self._keep(part), self._pending + len(part) + 1))
            self._buffer, self._overflow, self._pending = b"", False, 0
            # Nothing is carried into the others: each is its line (cut one byte past the
            # limit), spanning itself and its newline, queued at C speed.
            rest = parts[1:-1]
            if rest:
                kept = (rest if max(map(len, rest)) <= MAX_LINE_BYTES
                        else [part[: MAX_LINE_BYTES + 1] for part in rest])
                ready.extend(zip(kept, map(operator.add, map(len, rest), itertools.repeat(1)),
                                 strict=True))
        tail = parts[-1]
        self._pending += len(tail)
        self._keep_tail(tail)

    def _keep(self, part: bytes) -> bytes:
        """The line that `part` completes, cut one byte past the limit."""
        if self._overflow:
            return self._buffer
        line = self._buffer + part if self._buffer else part
        return line[: MAX_LINE_BYTES + 1]

    def _keep_tail(self, tail: bytes) -> None:
        if self._overflow or not tail:
            return
        self._buffer += tail
        if len(self._buffer) > MAX_LINE_BYTES:
            self._buffer = self._buffer[: MAX_LINE_BYTES + 1]
            self._overflow = True

    def snapshot(self) -> FilePosition:
        return self.position

    def close(self) -> None:
        if self.fh is not sys.stdin.buffer:
            self.fh.close()


class JsonLinesSource(FixedPartitionedSource[Chunk, FilePosition]):
    """A file of JSON lines, or standard input when the path is "-" (not resumable then)."""

    def __init__(self, path: str, chunk_lines: int = 2000, progress: Progress | None = None,
                 ahead: JudgeAhead | None = None) -> None:
        """`ahead`: a helper process judging each chunk's lines while ingest works on the one
        before (flows/judge_ahead.py); whoever made it closes it."""
        self.path = path
        self.chunk_lines = chunk_lines
        self.progress = progress
        self.ahead = ahead
        if progress is not None and path != "-":
            progress.total_bytes = os.path.getsize(path)

    @property
    def partition(self) -> str:
        return "file:0"

    def list_parts(self) -> list[str]:
        return [self.partition]

    def build_part(self, step_id: str, for_part: str, resume_state: FilePosition | None
                   ) -> _FilePartition:
        fh: BinaryIO = sys.stdin.buffer if self.path == "-" else open(self.path, "rb")  # noqa: SIM115
        return _FilePartition(for_part, fh, resume_state, self.chunk_lines, self.progress,
                              self.ahead)
