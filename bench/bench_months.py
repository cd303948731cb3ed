"""Benchmark: does a file run's memory follow the work in flight or the months it covers?

    .venv/bin/python bench/bench_months.py [--months 2 6 12] [--per-month 100000]

For each month count N it writes N months of the demo's dirty workload at the same rate: the
two-month workload (meterwax/workload.py, October and November 2026) generated N/2 times with
different seeds, each copy moved two calendar months later than the one before and its event ids
prefixed with the copy's number, so copies neither overlap nor deduplicate into each other. Each
copy keeps its own late, duplicated and malformed events. Then it runs
`meterwax run --catalog ... --events FILE --out DIR --now END` as a subprocess and reports its
wall clock and peak resident set size (the kernel's ru_maxrss for the child), the ratio of each
peak to the shortest run's, and what the run reported (balanced or not, rows and candidates).

Events are moved by a whole number of days, so a copy's October lands on its target pair's first
month and its last days may spill a little into the month after; what matters here is that every
copy holds the same work at the same rate. A benchmark, not a test: nothing here asserts a size.
Prints a table and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

from bench.bench_run import default_meterwax  # noqa: E402
from meterwax.workload import generate  # noqa: E402
from operators.catalog import load_catalog  # noqa: E402
from operators.periods import Month  # noqa: E402

FIRST = Month(2026, 10)  # the workload's first month
_TIME = re.compile(rb'"time":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)(Z|[+-]\d\d:\d\d)"')
_ID = re.compile(rb'"id":"')


def _months_later(month: Month, n: int) -> Month:
    for _ in range(n):
        month = month.next()
    return month


def shifted(line: bytes, days: int, prefix: bytes) -> bytes:
    """`line` with its top-level time moved `days` later and its id prefixed. Lines the pattern
    does not match (malformed on purpose) are kept as they are."""
    def move(m: re.Match[bytes]) -> bytes:
        at = datetime.fromisoformat(m[1].decode() + m[2].decode().replace("Z", "+00:00"))
        text = (at + timedelta(days=days)).isoformat()
        if m[2] == b"Z":
            text = text.replace("+00:00", "Z")
        return b'"time":"' + text.encode() + b'"'
    line = _TIME.sub(move, line, count=1)
    return _ID.sub(b'"id":"' + prefix, line, count=1)


def write_months(path: Path, catalog_path: Path, months: int, per_month: int, seed: int
                 ) -> tuple[int, datetime]:
    """Write `months` months of workload; return the event count and the data's end."""
    catalog = load_catalog(str(catalog_path))
    count = 0
    with open(path, "wb", buffering=1 << 20) as fh:
        for copy in range(months // 2):
            target = _months_later(FIRST, 2 * copy)
            days = (target.start - FIRST.start).days
            prefix = f"m{copy}-".encode()
            for line in generate(catalog, 2 * per_month, seed + copy):
                fh.write(shifted(line, days, prefix) if copy else line)
                fh.write(b"\n")
                count += 1
    end = _months_later(FIRST, months).start
    return count, end


def run_measured(cmd: list[str]) -> tuple[int, float, int, str]:
    """(exit status, wall seconds, peak RSS in bytes, stdout) of `cmd` as a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    return proc.returncode, wall, usage.ru_maxrss * 1024, output.decode("utf-8", "replace")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--months", type=int, nargs="+", default=[2, 6, 12],
                    help="month counts to run (even numbers)")
    ap.add_argument("--per-month", type=int, default=100_000, help="events per month")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--catalog", type=Path, default=ROOT / "catalog" / "example.yaml")
    ap.add_argument("--meterwax", default=None, help="the command to run (default: .venv's)")
    ap.add_argument("--keep", action="store_true", help="keep the events files and outputs")
    args = ap.parse_args(argv)
    if any(m < 2 or m % 2 for m in args.months):
        ap.error("--months takes even numbers of at least 2")
    cmd_base = args.meterwax.split() if args.meterwax else default_meterwax()
    work = Path(tempfile.mkdtemp(prefix="meterwax-months-"))
    rows: list[dict[str, Any]] = []
    for months in args.months:
        events = work / f"events-{months}.jsonl"
        count, end = write_months(events, args.catalog, months, args.per_month, args.seed)
        out = work / f"out-{months}"
        status, wall, rss, output = run_measured(
            [*cmd_base, "run", "--catalog", str(args.catalog), "--events", str(events),
             "--out", str(out), "--now", end.astimezone(UTC).isoformat()])
        report: dict[str, Any] = {}
        if (out / "reconciliation.json").exists():
            report = json.loads((out / "reconciliation.json").read_text())
        rows.append({
            "months": months, "events": count, "exit_status": status,
            "wall_s": round(wall, 2), "peak_rss_mib": round(rss / 2**20, 1),
            "balanced": report.get("balanced"),
            "rated_windows": report.get("rated_windows"),
            "rated_corrections": report.get("rated_corrections"),
            "candidates": report.get("invoiced", {}).get("candidates"),
            "adjustments": report.get("invoiced", {}).get("adjustments"),
            "late_beyond_retention": report.get("events", {}).get("exceptions", {}).get(
                "LATE_BEYOND_RETENTION"),
        })
        if status not in (0, 1):
            print(output[-3000:], file=sys.stderr)
        if not args.keep:
            events.unlink()
    base = rows[0]["peak_rss_mib"]
    print(f"{'months':>6} {'events':>10} {'wall s':>8} {'peak RSS MiB':>13} {'× first':>8} "
          f"{'balanced':>9} {'windows':>9} {'corrections':>12} {'late>ret':>9}")
    for r in rows:
        r["rss_ratio"] = round(r["peak_rss_mib"] / base, 3) if base else None
        print(f"{r['months']:>6} {r['events']:>10,} {r['wall_s']:>8} {r['peak_rss_mib']:>13} "
              f"{r['rss_ratio']:>8} {r['balanced']!s:>9} {r['rated_windows']!s:>9} "
              f"{r['rated_corrections']!s:>12} {r['late_beyond_retention']!s:>9}")
    print(json.dumps({"per_month": args.per_month, "runs": rows}))
    if not args.keep:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept in {work}", file=sys.stderr)
    return 0 if all(r["exit_status"] in (0, 1) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
