"""Benchmark: the file-mode pipeline against a floor measured in the same run.

    .venv/bin/python bench/bench_run.py --size 1000000 [--workers 2] [--repeat 3]

Generates a dirty workload (meterwax/workload.py) into a temporary file, then times, best of R:

  floor     read the file line by line and decode every line with schemas.events.EVENT_DECODER
            (decode errors caught): the least any pipeline must do per event;
  engine    operators.engine.run_engine over the same file, in-process: the domain logic alone,
            no Bytewax, no sinks;
  pipeline  `meterwax run --catalog ... --events FILE --out DIR [--workers W]` as a subprocess:
            wall clock, so process start-up, Bytewax and the sinks are included.

With `--ab-judge-ahead`, also runs `meterwax run --judge-ahead off` and `on` over the same file,
alternated `--repeat` times: median wall clock and CPU time of each, and whether every output
file of the first pair is byte-identical (exit status 1 if not). `--judge-ahead MODE` passes a
mode to every pipeline run.

Prints a table (rates in events/s and as a percentage of the floor) and, last, one JSON line with
every figure, for scripts to collect. A benchmark, not a test: nothing here asserts a speed.
Exit status: 0, or 1 when the pipeline command could not run or failed.

    .venv/bin/python bench/bench_run.py --customers 10000 --size 500000 [--repeat 2]

instead compares catalogs: `meterwax run` over the six-customer example workload and over a
catalog of N generated customers (meterwax/workload_customers.py) with the same number of events,
alternated, `--repeat` times each. For each run: wall clock, the dataflow's own time (the
run's reconciliation.json) and so the time outside it, and the peak resident set size of that
`meterwax run` process alone: its VmHWM (/proc/PID/status) sampled while it runs, beside the
ru_maxrss of os.wait4 on that one child (not RUSAGE_CHILDREN, a maximum over every child ever
waited for; and ru_maxrss also counts what the child held before exec, a copy of this process,
so the workloads are generated in a separate process). Then the throughput ratio (best wall
clock of six customers over best of N) and the memory per subscription, (peak RSS of N - peak
RSS of six) / (subscriptions of N - subscriptions of six).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from meterwax.demo import DATA_END  # noqa: E402
from meterwax.workload import compose, write_workload  # noqa: E402
from operators.catalog import load_catalog  # noqa: E402
from operators.engine import run_engine  # noqa: E402
from operators.ingest import IngestConfig  # noqa: E402
from schemas.events import EVENT_DECODER  # noqa: E402

DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)


def floor_pass(path: Path) -> int:
    """Read and decode every line; returns how many decoded into an event."""
    decode = EVENT_DECODER.decode
    ok = 0
    with open(path, "rb") as fh:
        for line in fh:
            try:
                decode(line)
            except DECODE_ERRORS:
                continue
            ok += 1
    return ok


def _lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        for line in fh:
            yield line.rstrip(b"\n")


def engine_pass(path: Path, catalog_path: Path) -> dict[str, Any]:
    catalog = load_catalog(str(catalog_path))
    result = run_engine(catalog, _lines(path), IngestConfig())
    return {"rated": result.stats.rated, "windows": len(result.windows),
            "candidates": len(result.candidates)}


def default_meterwax() -> list[str]:
    for candidate in (ROOT / ".venv" / "bin" / "meterwax",
                      Path(sys.executable).parent / "meterwax"):
        if candidate.exists():
            return [str(candidate)]
    found = shutil.which("meterwax")
    if found:
        return [found]
    return [sys.executable, "-m", "meterwax.cli"]


class PipelineFailed(Exception):
    pass


def run_command(cmd_base: list[str], events: Path, catalog_path: Path, out_dir: Path,
                workers: int | None, judge_ahead: str | None = None) -> list[str]:
    # Judged as of the generated data's end, like the demo: the figures must not depend on the
    # day the benchmark runs (FUTURE_EVENT).
    cmd = [*cmd_base, "run", "--catalog", str(catalog_path), "--events", str(events),
           "--out", str(out_dir), "--now", DATA_END.isoformat()]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    if judge_ahead is not None:
        cmd += ["--judge-ahead", judge_ahead]
    return cmd


def pipeline_pass(cmd_base: list[str], path: Path, catalog_path: Path, out_dir: Path,
                  workers: int | None, timeout: float | None,
                  judge_ahead: str | None = None) -> dict[str, Any]:
    cmd = run_command(cmd_base, path, catalog_path, out_dir, workers, judge_ahead)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        msg = (f"the pipeline command is not available: {shlex.join(cmd)}\n  ({exc}); install "
               f"meterwax into .venv (scripts/bootstrap.sh) or pass --meterwax")
        raise PipelineFailed(msg) from exc
    except subprocess.TimeoutExpired as exc:
        msg = f"the pipeline command timed out after {timeout}s: {shlex.join(cmd)}"
        raise PipelineFailed(msg) from exc
    # 0: balanced; 1: finished, but reconciliation found a difference (still a complete run,
    # provided it wrote its outputs: an exit status of 1 without them is a failure).
    wrote = out_dir.is_dir() and any(out_dir.iterdir())
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not wrote):
        tail = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip().splitlines()[-15:]
        msg = (f"the pipeline command failed with exit status {proc.returncode}:\n  "
               f"{shlex.join(cmd)}\n" + "\n".join(f"  | {line}" for line in tail))
        raise PipelineFailed(msg)
    return {"exit_status": proc.returncode, "balanced": proc.returncode == 0,
            "stdout_tail": proc.stdout.decode("utf-8", "replace").strip().splitlines()[-3:]}


def measured_run(cmd_base: list[str], events: Path, catalog_path: Path, out_dir: Path,
                 workers: int | None, timeout: float | None,
                 judge_ahead: str | None = None) -> dict[str, Any]:
    """One `meterwax run` as a child process: wall clock, its own peak RSS and CPU time (its
    helper process's included once it was waited for), the dataflow's time from its
    reconciliation.json."""
    cmd = run_command(cmd_base, events, catalog_path, out_dir, workers, judge_ahead)
    log = out_dir.with_name(out_dir.name + ".log")
    with open(log, "wb") as fh:
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        except FileNotFoundError as exc:
            msg = f"the pipeline command is not available: {shlex.join(cmd)} ({exc})"
            raise PipelineFailed(msg) from exc
        deadline = None if timeout is None else t0 + timeout
        hwm = 0
        while True:
            # VmHWM while it runs, and wait4 on this one pid at the end (its rusage alone):
            # ru_maxrss also counts what the child held before exec, a copy of this process.
            hwm = max(hwm, _peak_rss_kib(proc.pid) or 0)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                proc.wait()
                msg = f"the pipeline command timed out after {timeout}s: {shlex.join(cmd)}"
                raise PipelineFailed(msg)
            time.sleep(0.05)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1) or not (out_dir / "reconciliation.json").is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        msg = (f"the pipeline command failed with exit status {proc.returncode}:\n  "
               f"{shlex.join(cmd)}\n" + "\n".join(f"  | {line}" for line in tail))
        raise PipelineFailed(msg)
    report = json.loads((out_dir / "reconciliation.json").read_text(encoding="utf-8"))
    dataflow = float(report["run"]["elapsed_seconds"])
    # Both in KiB on Linux. VmHWM, sampled every 50 ms, misses a peak only in the last 50 ms
    # before exit; ru_maxrss is exact unless this process was larger than the child.
    return {"wall_s": round(wall, 2), "dataflow_s": round(dataflow, 2),
            "outside_s": round(wall - dataflow, 2), "peak_rss_mib": round(hwm / 1024),
            "ru_maxrss_mib": round(usage.ru_maxrss / 1024), "balanced": report["balanced"],
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}


def judge_ahead_ab(cmd_base: list[str], events: Path, catalog_path: Path, tmp: Path,
                   args: argparse.Namespace, figures: dict[str, Any]) -> bool:
    """`meterwax run --judge-ahead off` and `on` over the same file, alternated `--repeat`
    times (drift hits both); medians, and whether every output file is byte-identical between
    the first pair. Returns False when they differ."""
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    same = True
    for i in range(args.repeat):
        for mode in ("off", "on"):
            out = tmp / f"ab-{mode}-{i}"
            runs[mode].append(measured_run(cmd_base, events, catalog_path, out, args.workers,
                                           args.timeout, mode))
            print(f"  judge-ahead {mode:>3}, run {i + 1}: {runs[mode][-1]['wall_s']:.2f} s wall, "
                  f"{runs[mode][-1]['cpu_s']:.2f} CPU-s")
        if i == 0:
            names = sorted(p.name for p in (tmp / "ab-off-0").glob("*.jsonl"))
            same = bool(names) and all(
                (tmp / "ab-off-0" / name).read_bytes() == (tmp / "ab-on-0" / name).read_bytes()
                for name in names)
        for mode in ("off", "on"):
            if i > 0:
                shutil.rmtree(tmp / f"ab-{mode}-{i}", ignore_errors=True)
    median = {m: statistics.median(r["wall_s"] for r in rs) for m, rs in runs.items()}
    cpu = {m: statistics.median(r["cpu_s"] for r in rs) for m, rs in runs.items()}
    print(f"  judge-ahead off vs on, median of {args.repeat}: {median['off']:.2f} s vs "
          f"{median['on']:.2f} s (x{median['on'] / median['off']:.2f} time), CPU "
          f"{cpu['off']:.2f} vs {cpu['on']:.2f} s; output files "
          + ("byte-identical" if same else "DIFFER"))
    figures.update(judge_ahead_runs=runs, judge_ahead_median_s=median,
                   judge_ahead_cpu_s=cpu, judge_ahead_identical=same)
    return same


def _generate(name: str, catalog_path: Path, events: Path, customers: int, size: int,
              seed: int) -> tuple[int, int]:
    """Write one case's events (and, for "many", its catalog): (lines, subscriptions)."""
    from meterwax.workload_customers import write_customers_catalog, write_customers_workload

    if name == "many":
        write_customers_catalog(catalog_path, customers, seed)
    catalog = load_catalog(str(catalog_path))
    count = (write_workload(events, catalog, size, seed) if name == "six"
             else write_customers_workload(events, catalog, size, seed))
    return count, len(catalog.subscriptions)


def _peak_rss_kib(pid: int) -> int | None:
    """VmHWM of a running process (its own peak, reset at exec), None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def customers_main(args: argparse.Namespace, cmd_base: list[str]) -> int:
    """The --customers comparison (module docstring)."""
    n = args.customers
    tmp = Path(tempfile.mkdtemp(prefix="meterwax-bench-customers-"))
    spawn = multiprocessing.get_context("spawn")
    figures: dict[str, Any] = {"bench": "bench_run --customers", "customers": n,
                               "size": args.size, "seed": args.seed, "repeat": args.repeat,
                               "workers": args.workers}
    try:
        six_catalog = args.catalog.resolve()
        many_catalog = tmp / "catalog.yaml"
        t0 = time.perf_counter()
        cases = {"six": (six_catalog, tmp / "six.jsonl"), "many": (many_catalog,
                                                                   tmp / "many.jsonl")}
        subscriptions = {}
        # Generated in a fresh process: the generator of 100,000 customers holds over a GB,
        # and a child started from a large parent starts its ru_maxrss from the parent's.
        with spawn.Pool(1) as pool:
            for name, (cat_path, events) in cases.items():
                count, subscriptions[name] = pool.apply(
                    _generate, (name, cat_path, events, n, args.size, args.seed))
                figures[f"{name}_lines"] = count
        figures["generate_s"] = round(time.perf_counter() - t0, 1)
        print(f"workloads: {figures['six_lines']:,} events over the example catalog "
              f"({subscriptions['six']} subscriptions), {figures['many_lines']:,} over {n:,} "
              f"generated customers ({subscriptions['many']:,} subscriptions), in {tmp}")
        runs: dict[str, list[dict[str, Any]]] = {"six": [], "many": []}
        for i in range(args.repeat):
            for name, (cat_path, events) in cases.items():  # alternated: drift hits both
                run = measured_run(cmd_base, events, cat_path, tmp / f"out-{name}-{i}",
                                   args.workers, args.timeout, args.judge_ahead)
                runs[name].append(run)
                print(f"  run {i + 1} {name:>4}: {run['wall_s']:7.2f} s wall "
                      f"(dataflow {run['dataflow_s']:.2f} s, outside {run['outside_s']:.2f} s), "
                      f"peak RSS {run['peak_rss_mib']:,} MiB"
                      + ("" if run["balanced"] else ", NOT BALANCED"))
                shutil.rmtree(tmp / f"out-{name}-{i}", ignore_errors=True)
    except PipelineFailed as exc:
        print(f"PIPELINE NOT MEASURED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    best = {name: min(r["wall_s"] for r in rs) for name, rs in runs.items()}
    rss = {name: min(r["peak_rss_mib"] for r in rs) for name, rs in runs.items()}
    extra_subs = subscriptions["many"] - subscriptions["six"]
    per_sub_kib = (rss["many"] - rss["six"]) * 1024 / extra_subs if extra_subs else None
    ratio = best["six"] / best["many"]
    print(f"\nmeterwax bench: {args.size:,} events, six customers vs {n:,}, best of "
          f"{args.repeat}, {os.cpu_count()} CPUs")
    print(f"  wall clock: {best['six']:.2f} s vs {best['many']:.2f} s: throughput with {n:,} "
          f"customers is {ratio:.2f}x the six-customer workload's")
    print(f"  peak RSS: {rss['six']:,} MiB vs {rss['many']:,} MiB"
          + (f": {per_sub_kib:,.1f} KiB per further subscription" if per_sub_kib else ""))
    figures.update(subscriptions=subscriptions, runs=runs, best_wall_s=best,
                   peak_rss_mib=rss, throughput_ratio=round(ratio, 3),
                   kib_per_subscription=round(per_sub_kib, 1) if per_sub_kib else None)
    print(json.dumps(figures, sort_keys=True))
    return 0 if all(r["balanced"] for rs in runs.values() for r in rs) else 1


def best_of(repeat: int, run: Callable[[int], Any]) -> tuple[float, list[float], Any]:
    times: list[float] = []
    info: Any = None
    for i in range(repeat):
        t0 = time.perf_counter()
        info = run(i)
        times.append(time.perf_counter() - t0)
    return min(times), times, info


def _rate(n: int, seconds: float | None) -> float | None:
    return n / seconds if seconds else None


def _fmt_rate(rate: float | None) -> str:
    return f"{rate:>13,.0f}" if rate is not None else f"{'-':>13}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=200_000, help="events to generate")
    ap.add_argument("--workers", type=int, default=None,
                    help="Bytewax workers for the pipeline (default: the command's own)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each measure; best is kept")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--catalog", type=Path, default=ROOT / "catalog" / "example.yaml")
    ap.add_argument("--meterwax", default=None,
                    help="the meterwax command (default: .venv/bin/meterwax of this repo)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per pipeline run")
    ap.add_argument("--skip-engine", action="store_true",
                    help="skip the in-process engine (it keeps every output in memory)")
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the events file and outputs")
    ap.add_argument("--judge-ahead", choices=("auto", "on", "off"), default=None,
                    help="passed to `meterwax run` (default: its own, auto)")
    ap.add_argument("--ab-judge-ahead", action="store_true",
                    help="also run the pipeline with --judge-ahead off and on, alternated "
                         "--repeat times, and compare their outputs")
    ap.add_argument("--customers", type=int, default=None, metavar="N",
                    help="compare the six-customer workload with one over N generated "
                         "customers (same --size), instead of the floor comparison")
    args = ap.parse_args(argv)
    if args.size <= 0 or args.repeat <= 0:
        ap.error("--size and --repeat must be positive")
    if args.workers is not None and args.workers <= 0:
        ap.error("--workers must be positive")
    if args.customers is not None and args.customers <= 0:
        ap.error("--customers must be positive")
    catalog_path: Path = args.catalog.resolve()
    cmd_base = shlex.split(args.meterwax) if args.meterwax else default_meterwax()
    if args.customers is not None:
        return customers_main(args, cmd_base)
    catalog = load_catalog(str(catalog_path))

    tmp = Path(tempfile.mkdtemp(prefix="meterwax-bench-"))
    events = tmp / "events.jsonl"
    figures: dict[str, Any] = {"bench": "bench_run", "size": args.size, "seed": args.seed,
                               "workers": args.workers, "repeat": args.repeat}
    status = 0
    try:
        comp = compose(catalog, args.size, args.seed)
        t0 = time.perf_counter()
        n = write_workload(events, catalog, args.size, args.seed)
        gen_s = time.perf_counter() - t0
        size_mb = events.stat().st_size / 1e6
        print(f"workload: {n:,} lines, {size_mb:,.1f} MB in {events}")
        print(f"  {comp.summary()}")
        figures.update(lines=n, file_mb=round(size_mb, 1), generate_s=round(gen_s, 3),
                       generate_lines_per_s=round(n / gen_s))

        floor_s, floor_runs, decoded = best_of(args.repeat, lambda _: floor_pass(events))
        figures.update(floor_s=round(floor_s, 3), floor_runs_s=[round(t, 3) for t in floor_runs],
                       floor_events_per_s=round(n / floor_s), floor_decoded=decoded)

        engine_s: float | None = None
        if not args.skip_engine:
            engine_s, engine_runs, engine_info = best_of(
                args.repeat, lambda _: engine_pass(events, catalog_path))
            figures.update(engine_s=round(engine_s, 3),
                           engine_runs_s=[round(t, 3) for t in engine_runs],
                           engine_events_per_s=round(n / engine_s), engine=engine_info)

        pipeline_s: float | None = None
        if not args.skip_pipeline:
            try:
                pipeline_s, pipe_runs, pipe_info = best_of(
                    args.repeat, lambda i: pipeline_pass(cmd_base, events, catalog_path,
                                                         tmp / f"out-{i}", args.workers,
                                                         args.timeout, args.judge_ahead))
                figures.update(pipeline_s=round(pipeline_s, 3),
                               pipeline_runs_s=[round(t, 3) for t in pipe_runs],
                               pipeline_events_per_s=round(n / pipeline_s),
                               pipeline_exit_status=pipe_info["exit_status"],
                               pipeline_status="ok" if pipe_info["balanced"] else "unbalanced")
                if not pipe_info["balanced"]:
                    print("note: the pipeline finished but its reconciliation reported a "
                          "difference (exit status 1)")
            except PipelineFailed as exc:
                print(f"PIPELINE NOT MEASURED: {exc}", file=sys.stderr)
                figures["pipeline_status"] = "failed"
                figures["pipeline_error"] = str(exc).splitlines()[0]
                status = 1

        if args.ab_judge_ahead:
            try:
                if not judge_ahead_ab(cmd_base, events, catalog_path, tmp, args, figures):
                    status = 1
            except PipelineFailed as exc:
                print(f"JUDGE-AHEAD COMPARISON NOT MEASURED: {exc}", file=sys.stderr)
                status = 1

        floor_rate = n / floor_s
        engine_rate = _rate(n, engine_s)
        pipe_rate = _rate(n, pipeline_s)
        figures["engine_vs_floor_pct"] = (round(100 * engine_rate / floor_rate, 2)
                                          if engine_rate else None)
        figures["pipeline_vs_floor_pct"] = (round(100 * pipe_rate / floor_rate, 2)
                                            if pipe_rate else None)

        workers = args.workers if args.workers is not None else "default"
        print()
        print(f"meterwax bench: {n:,} events, seed {args.seed}, workers {workers}, "
              f"best of {args.repeat}, {os.cpu_count()} CPUs")
        print(f"  {'measure':<32}{'events/s':>13}{'seconds':>10}{'% of floor':>12}")
        rows: list[tuple[str, float | None, float | None]] = [
            ("generate (write_workload)", n / gen_s, gen_s),
            ("floor (read + EVENT_DECODER)", floor_rate, floor_s),
            ("engine (run_engine, in-process)", engine_rate, engine_s),
            ("pipeline (meterwax run)", pipe_rate, pipeline_s),
        ]
        for name, rate, secs in rows:
            pct = (f"{100 * rate / floor_rate:>11.1f}%"
                   if rate is not None and name.startswith(("engine", "pipeline", "floor"))
                   else f"{'':>12}")
            secs_txt = f"{secs:>10.2f}" if secs is not None else f"{'-':>10}"
            print(f"  {name:<32}{_fmt_rate(rate)}{secs_txt}{pct}")
        if pipe_rate is not None:
            print(f"  pipeline / floor: {100 * pipe_rate / floor_rate:.1f}% "
                  "(wall clock, process start-up included)")
        print(json.dumps(figures, sort_keys=True))
    finally:
        if args.keep:
            print(f"kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
