"""Judging ahead (flows/judge_ahead.py): file mode's helper process decodes and classifies each
chunk's lines while ingest works on the one before, and the outcome is the same, line for line,
as ingest judging every line itself: the same ops, exceptions and counts for every batch (here
with lines that land in every bucket, including the ones only the clock or the partition's state
decides), the same chunks and positions from the file source, and the same output files from a
run. When the helper dies, ingest judges the rest itself and nothing is lost or doubled."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
from hostile_cases import (
    BASE_START,
    CATALOG_DOC,
    HOSTILE,
    base_lines,
    config,
    line,
    series,
)

from flows.judge_ahead import _ENCODER, _LINES_DECODER, JudgeAhead, decode_verdicts
from flows.runner import RunOptions, run_file
from flows.sources import JsonLinesSource, JudgedLines
from meterwax.demo import DATA_END
from meterwax.workload import write_workload
from operators.catalog import load_catalog, parse_catalog
from operators.dedup import MemoryDedup
from operators.ingest import IngestConfig, Ingestor

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "catalog" / "example.yaml"
HOSTILE_CATALOG = parse_catalog(CATALOG_DOC)


def _stream() -> list[bytes]:
    """Lines for every bucket: good usage, every hostile line, copies (duplicates), blank
    lines, an event past the processing clock's horizon, one before billing starts, one in a
    period retired by then, and a series that takes its period past what the store holds."""
    good = base_lines(120)
    future = line(eid="ahead-future", time="2026-12-09T00:00:00Z")
    before_billing = line(eid="ahead-early", subject="globex-main", time="2026-09-20T00:00:00Z")
    late = line(eid="ahead-late", time="2026-10-02T00:00:00Z")  # October retires first
    lines = [*series("pricey-1", 12, start=BASE_START - timedelta(minutes=5)),
             *good[:60], b"", b"   ", future, before_billing, *good[:5],
             *(case.line for case in HOSTILE), *good[60:], late, good[3]]
    return lines


def _ingest(lines: list[bytes], batch: int, *, ahead: bool, cfg: IngestConfig,
            catalog=HOSTILE_CATALOG) -> list[object]:
    ingestor = Ingestor(catalog, cfg, MemoryDedup(), "file", 0)
    helper = Ingestor(catalog, IngestConfig(), MemoryDedup(), "ahead", 0)
    outputs: list[object] = []
    for start in range(0, len(lines), batch):
        chunk = lines[start:start + batch]
        numbered = list(enumerate(chunk, start + 1))
        verdicts = None
        if ahead:
            # Through the helper's wire format, as in a run.
            sent = _LINES_DECODER.decode(_ENCODER.encode(chunk))
            verdicts = decode_verdicts(_ENCODER.encode(helper.judge_ahead(sent)))
        out = ingestor.process(numbered, ahead=verdicts)
        outputs.append(msgspec.to_builtins(out))
    outputs.append(msgspec.to_builtins(ingestor.finish()))
    return outputs


@pytest.mark.parametrize("batch", [1, 7, 64, 10_000])
def test_ingest_with_verdicts_equals_ingest_alone(batch: int) -> None:
    lines = _stream()
    # Retention of three days: October retires in early November, so the late October event
    # at the end is LATE_BEYOND_RETENTION, decided by state, not by the helper.
    cfg = config(retention=timedelta(days=3))
    alone = _ingest(lines, batch, ahead=False, cfg=cfg)
    judged = _ingest(lines, batch, ahead=True, cfg=cfg)
    assert judged == alone
    reasons = {r["reason"] for out in alone for r in out["exceptions"]}  # type: ignore[index]
    # The buckets decided after the helper's verdict are all exercised.
    assert {"FUTURE_EVENT", "BEFORE_BILLING_START", "LATE_BEYOND_RETENTION",
            "PERIOD_LIMIT_EXCEEDED"} <= reasons


def test_the_helper_leaves_out_every_line_it_cannot_vouch_for() -> None:
    helper = Ingestor(HOSTILE_CATALOG, IngestConfig(), MemoryDedup(), "ahead", 0)
    good = base_lines(10)
    chunk = [good[0], b"", b"{", *(case.line for case in HOSTILE), good[1]]
    verdicts = helper.judge_ahead(chunk)
    # Only the good lines (and hostile lines that are good events until the clock or the state
    # judges them) are vouched for; the rest are judged by ingest itself.
    indexes = [v[0] for v in verdicts]
    assert indexes[0] == 0 and indexes[-1] == len(chunk) - 1
    assert 1 not in indexes and 2 not in indexes
    rejected_alone = {i for i, case in enumerate(HOSTILE, 3)
                      if case.reason not in ("FUTURE_EVENT", "BEFORE_BILLING_START",
                                             "PERIOD_LIMIT_EXCEEDED")}
    assert not rejected_alone & set(indexes)


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def _drain(part, n: int | None = None) -> list[tuple[list[tuple[int, bytes]], bool, object]]:
    """The chunks `part` hands over (`n` of them, or all): lines, judged ahead?, snapshot."""
    chunks = []
    while n is None or len(chunks) < n:
        try:
            batch = part.next_batch()
        except StopIteration:
            break
        ((_, item),) = batch
        judged = type(item) is JudgedLines
        chunks.append((item.lines if judged else item, judged, part.snapshot()))
    return chunks


def test_file_source_hands_over_the_same_chunks_and_positions(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    _write(path, [b"\xef\xbb\xbf" + base_lines(1)[0], *_stream(), b"x" * 50, b"tail\r"])
    plain = _drain(JsonLinesSource(str(path), chunk_lines=16).build_part("in", "file:0", None))
    ahead = JudgeAhead(HOSTILE_CATALOG)
    try:
        judged = _drain(JsonLinesSource(str(path), chunk_lines=16, ahead=ahead)
                        .build_part("in", "file:0", None))
    finally:
        ahead.close()
    assert [(c, s) for c, _, s in judged] == [(c, s) for c, _, s in plain]
    assert all(j for _, j, _ in judged)


def test_a_helper_that_dies_leaves_ingest_to_judge_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    _write(path, _stream() * 3)
    plain = _drain(JsonLinesSource(str(path), chunk_lines=32).build_part("in", "file:0", None))
    ahead = JudgeAhead(HOSTILE_CATALOG)
    part = JsonLinesSource(str(path), chunk_lines=32, ahead=ahead).build_part(
        "in", "file:0", None)
    try:
        first = _drain(part, 3)
        ahead._process.kill()  # the helper is gone while a chunk is with it
        ahead._process.join()
        rest = _drain(part)
    finally:
        ahead.close()
    got = first + rest
    assert [(c, s) for c, _, s in got] == [(c, s) for c, _, s in plain]
    assert [j for _, j, _ in first] == [True, True, True]
    assert not any(j for _, j, _ in rest)
    assert not ahead.alive
    assert ahead.gave_up is not None and "it stopped" in ahead.gave_up  # the run reports it


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())
            if p.suffix == ".jsonl"}


def test_a_run_writes_the_same_outputs_with_and_without_the_helper(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    write_workload(events, load_catalog(str(EXAMPLE)), 20_000, seed=11)
    with open(events, "ab") as fh:  # and some hostile lines among them
        fh.write(b"\n".join(case.line for case in HOSTILE[:40]) + b"\n")
    results = {}
    for mode in (False, True):
        out = tmp_path / f"out-{mode}"
        opts = RunOptions(catalog=str(EXAMPLE), events=str(events), out_dir=str(out),
                          now=DATA_END, judge_ahead=mode)
        result = run_file(opts)
        assert result.balanced
        assert result.report.run is not None
        assert result.report.run.judged_ahead == ("on" if mode else "off")
        results[mode] = (_outputs(out), result.report.events, result.report.rated_windows)
    assert results[True] == results[False]
    assert len(results[True][0]) == 6



def test_auto_starts_the_helper_only_where_it_pays(tmp_path: Path, monkeypatch) -> None:
    from flows import runner

    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    small.write_bytes(b"{}\n")
    with open(large, "wb") as fh:
        fh.truncate(runner.HELPER_MIN_BYTES)
    monkeypatch.setattr(runner, "available_cpus", lambda: 2)
    assert [runner._helper_pays(str(p)) for p in (small, large)] == [False, True]
    assert runner._helper_pays("-")  # standard input: its size is unknown
    monkeypatch.setattr(runner, "available_cpus", lambda: 1)
    assert not runner._helper_pays(str(large))  # no second CPU to run it on


def test_a_helper_that_cannot_start_leaves_ingest_to_judge_every_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    _write(path, _stream())
    plain = _drain(JsonLinesSource(str(path), chunk_lines=16).build_part("in", "file:0", None))
    ahead = JudgeAhead(lambda: None)  # type: ignore[arg-type]  # a catalog that cannot travel
    assert not ahead.alive
    assert ahead.gave_up is not None and ahead.gave_up.startswith("it could not start")
    got = _drain(JsonLinesSource(str(path), chunk_lines=16, ahead=ahead)
                 .build_part("in", "file:0", None))
    assert got == plain
