"""The file source's line reader (flows/sources.py) against a plain reference: for any bytes,
any read size and any chunk size, the same numbered lines (over-long ones cut one byte past the
limit, a trailing CR dropped, a leading UTF-8 BOM dropped) and, after every chunk, the byte
offset and line number a resumed run would start from."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows import sources
from flows.sources import FilePosition

LIMIT = 8  # the line limit, shrunk so that the property reaches it
BOM = b"\xef\xbb\xbf"


def reference(data: bytes, chunk_lines: int) -> list[tuple[list[tuple[int, bytes]], FilePosition]]:
    parts = data.split(b"\n")
    spans = [len(p) + 1 for p in parts[:-1]]
    if parts[-1]:
        spans.append(len(parts[-1]))
        lines = parts
    else:
        lines = parts[:-1]
    kept = [line[:LIMIT + 1] for line in lines]
    if kept and kept[0].startswith(BOM):
        kept[0] = kept[0][len(BOM):]
    kept = [raw[:-1] if raw.endswith(b"\r") else raw for raw in kept]
    out = []
    offset, number = 0, 1
    for start in range(0, len(kept), chunk_lines):
        chunk = list(enumerate(kept[start:start + chunk_lines], number))
        offset += sum(spans[start:start + chunk_lines])
        number += len(chunk)
        out.append((chunk, FilePosition(offset, number)))
    return out


def read(data: bytes, chunk_lines: int) -> list[tuple[list[tuple[int, bytes]], FilePosition]]:
    part = sources._FilePartition("file:0", io.BytesIO(data), None, chunk_lines, None)
    out = []
    while True:
        try:
            ((_, chunk),) = part.next_batch()
        except StopIteration:
            return out
        out.append((chunk, part.snapshot()))


pieces = st.sampled_from([b"a", b"{}", b"\n", b"\r", b"\r\n", b"x" * 7, b"y" * 9, b"z" * 20, BOM,
                          b"\xff", b" "])


@settings(max_examples=400, deadline=None)
@given(body=st.lists(pieces, max_size=40).map(b"".join), bom=st.booleans(),
       read_bytes=st.integers(1, 40), chunk_lines=st.integers(1, 6))
def test_the_reader_gives_what_the_reference_gives(body: bytes, bom: bool, read_bytes: int,
                                                   chunk_lines: int) -> None:
    data = (BOM if bom else b"") + body
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sources, "MAX_LINE_BYTES", LIMIT)
        mp.setattr(sources, "_READ_BYTES", read_bytes)
        assert read(data, chunk_lines) == reference(data, chunk_lines)
