"""`meterwax demo`: a realistic dirty workload from the shipped catalog, run end to end.

It writes the workload to DIR/events.jsonl, runs exactly the dataflow `meterwax run` runs (same
sources, sinks and embedded ClickHouse store), shows a progress line while it works, then prints
what finance and platform engineers look at first.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flows.runner import RunOptions, run_into, staged_output
from flows.sources import Progress
from meterwax import workload as generator
from meterwax.report import print_run_summary
from meterwax.workload import Workload
from operators.catalog import Catalog, load_catalog
from operators.limits import DEFAULT_ADJUSTMENT_CYCLE, DEFAULT_MAX_FUTURE, DEFAULT_RETENTION

# The generated events span [workload.START, workload.END); judging them as of the end makes
# the demo give the same result whatever today's date (none is in the future, none is stale).
DATA_END = datetime.fromtimestamp(generator.END, UTC)


@dataclass(frozen=True)
class DemoOptions:
    size: int = 200_000
    seed: int = 7
    out: str = "demo-out"
    catalog: str | None = None  # None: the shipped example
    window: timedelta = timedelta(minutes=1)
    allowed_lateness: timedelta = timedelta(hours=1)
    max_future: timedelta = DEFAULT_MAX_FUTURE
    retention: timedelta = DEFAULT_RETENTION
    workers: int = 1
    adjustment_cycle: timedelta = DEFAULT_ADJUSTMENT_CYCLE
    now: datetime | None = None  # None: DATA_END
    judge_ahead: bool | None = None  # None: when it pays (flows/runner.py `_helper_pays`)


def example_catalog_path() -> str:
    """The example catalog shipped inside the package (identical to catalog/example.yaml)."""
    return str(Path(__file__).with_name("example_catalog.yaml"))


def _progress_line(progress: Progress, started: float) -> str:
    frac = min(1.0, progress.read_bytes / (progress.total_bytes or 1))
    elapsed = time.perf_counter() - started
    rate = progress.lines / elapsed if elapsed > 0 else 0
    bar = "#" * int(frac * 30)
    return (f"  rating [{bar:<30}] {frac:6.1%}  {progress.lines:>10,} events  "
            f"{rate:>9,.0f} ev/s")


def _progress_loop(progress: Progress, stop: threading.Event, started: list[float]) -> None:
    """Redraws one line on a terminal; prints a line every 2 s into a log."""
    tty = sys.stderr.isatty()
    while not stop.wait(0.25 if tty else 2.0):
        if started:
            line = _progress_line(progress, started[0])
            sys.stderr.write(f"\r{line}" if tty else f"{line}\n")
            sys.stderr.flush()
    if started:
        line = _progress_line(progress, started[0])
        sys.stderr.write(f"\r{line}\n" if tty else f"{line}\n")
        sys.stderr.flush()


def run_demo(opts: DemoOptions, catalog: Catalog | None = None) -> int:
    catalog_path = opts.catalog or example_catalog_path()
    catalog = catalog if catalog is not None else load_catalog(catalog_path)
    out = Path(opts.out)
    final_events = out / "events.jsonl"
    print(f"meterwax demo: {len(catalog.customers)} customers, "
          f"{len(catalog.legal_entities)} legal entities, {len(catalog.plans)} plans "
          f"({catalog_path})")
    # The workload is generated into the staged folder too: a demo that fails half-way leaves
    # the previous demo's events and outputs together, as they were.
    with staged_output(out) as work:
        events = work / "events.jsonl"
        t0 = time.perf_counter()
        workload = Workload(catalog, opts.size, opts.seed)
        count = 0
        with open(events, "wb", buffering=1 << 20) as fh:
            for chunk in workload.chunks():
                fh.write(b"\n".join(chunk))
                fh.write(b"\n")
                count += len(chunk)
        print(f"generated {count:,} events in {time.perf_counter() - t0:.1f} s "
              f"-> {final_events}")
        print(f"  {workload.composition.summary()}")

        progress = Progress()
        stop = threading.Event()
        started: list[float] = []
        ticker = threading.Thread(target=_progress_loop, args=(progress, stop, started),
                                  daemon=True)
        ticker.start()
        run_opts = RunOptions(catalog=catalog_path, events=str(final_events), out_dir=str(out),
                              window=opts.window, allowed_lateness=opts.allowed_lateness,
                              workers=opts.workers,
                              max_future=opts.max_future, retention=opts.retention,
                              adjustment_cycle=opts.adjustment_cycle,
                              now=DATA_END if opts.now is None else opts.now,
                              judge_ahead=opts.judge_ahead)
        try:
            result = run_into(run_opts, work, catalog=catalog, events=str(events),
                              progress=progress,
                              on_start=lambda: started.append(time.perf_counter()))
        finally:
            stop.set()
            ticker.join()
    print_run_summary(result, sys.stdout, detailed=True)
    print(f"\nOutputs in {out}/: invoice_candidates.jsonl, exceptions.jsonl, reconciliation.json,"
          f" and the rated windows in the embedded ClickHouse store {out}/clickhouse "
          f"(table meterwax.rated_windows)")
    print(f"\nOpen it over HTTP (charges, usage, invoices, exceptions, reconciliation):\n"
          f"  meterwax tokens create --scope finance --out {out}   # prints a token, once\n"
          f"  meterwax api --out {out}                             # http://127.0.0.1:8080\n"
          f"  curl -H 'Authorization: Bearer <token>' "
          f"http://127.0.0.1:8080/v1/customers/acme/charges")
    return 0 if result.balanced else 1
