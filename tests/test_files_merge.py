"""The file-mode output merge: parts written in any order by any number of workers become one
file ordered by its key, each id once, while memory holds one sorted run at a time."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from sinks.files import JsonLinesFile, JsonLinesPartsSink


class Rec(msgspec.Struct):
    rid: str
    line: int
    note: str = ""


def _write(sink: JsonLinesPartsSink, parts: list[list[Rec]]) -> None:
    for worker, records in enumerate(parts):
        writer = sink.build("out", worker, len(parts))
        # Several batches per worker, like the flow's epochs.
        for start in range(0, len(records), 7):
            writer.write_batch([records[start:start + 7]])
        writer.close()


def _merge(tmp: Path, parts: list[list[Rec]], run_records: int) -> tuple[int, list[Rec], bytes]:
    sink = JsonLinesPartsSink(tmp, "recs")
    _write(sink, parts)
    final = tmp / "recs.jsonl"
    n = sink.finalize(final, Rec, lambda r: r.rid, lambda r: (r.line,), run_records=run_records)
    return n, list(JsonLinesFile(final, Rec)), final.read_bytes()


def test_runs_are_merged_in_key_order_and_repeats_dropped(tmp_path: Path) -> None:
    records = [Rec(f"r{i}", line=(i * 7919) % 1000, note="x" * (i % 5)) for i in range(1000)]
    shuffled = records[:]
    random.Random(3).shuffle(shuffled)
    # At-least-once: a third of the records written again, by another worker.
    parts = [shuffled[:400], shuffled[400:], shuffled[::3]]
    n, merged, _ = _merge(tmp_path, parts, run_records=50)  # about 27 runs
    assert n == 1000 == len(merged)
    assert merged == sorted(records, key=lambda r: (r.line, r.rid))
    assert not list((tmp_path / ".parts").iterdir())  # parts and runs removed
    assert not (tmp_path / "recs.jsonl.tmp").exists()


def test_an_empty_output_is_an_empty_file(tmp_path: Path) -> None:
    n, merged, raw = _merge(tmp_path, [[], []], run_records=10)
    assert (n, merged, raw) == (0, [], b"")


@settings(max_examples=40, deadline=None)
@given(records=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 5)), max_size=80),
       workers=st.integers(1, 4), run_records=st.integers(1, 20), seed=st.integers(0, 99))
def test_the_merge_does_not_depend_on_workers_runs_or_arrival(
        tmp_path_factory, records: list[tuple[int, int]], workers: int, run_records: int,
        seed: int) -> None:
    # One record per id (an id's repeats are the same record), spread over workers at random.
    unique = {rid: Rec(f"id{rid}", line=line) for rid, line in records}
    pool = list(unique.values()) + [unique[rid] for rid, _ in records[::2]]
    random.Random(seed).shuffle(pool)
    parts: list[list[Rec]] = [[] for _ in range(workers)]
    for i, rec in enumerate(pool):
        parts[i % workers].append(rec)
    _, _, raw = _merge(tmp_path_factory.mktemp("m"), parts, run_records)
    _, _, reference = _merge(tmp_path_factory.mktemp("ref"), [list(unique.values())], 10_000)
    assert raw == reference
    assert raw.count(b"\n") == len(unique)
