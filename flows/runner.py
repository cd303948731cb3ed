"""File mode: run the dataflow over a JSON-lines file and write every output under one folder.

The folder is replaced whole, and only by a run that finished: outputs are written into a fresh
sibling (`OUT.partial-<pid>`) and swapped in at the end, so a run that fails or is killed leaves
the previous outputs as they were (`staged_output`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
from bytewax.run import cli_main
from bytewax.testing import run_main

from flows.judge_ahead import JudgeAhead, available_cpus
from flows.pipeline import FILE_RATING_SHARDS, Sinks, build_flow
from flows.sources import JsonLinesSource, Progress
from operators import ids
from operators.catalog import Catalog, load_catalog
from operators.clock import fixed_clock, system_clock
from operators.erp import ErpOutput, build_erp
from operators.ingest import IngestConfig, IngestStats
from operators.limits import DEFAULT_ADJUSTMENT_CYCLE, DEFAULT_MAX_FUTURE, DEFAULT_RETENTION
from operators.reconcile import RatedKey, RatedSummary, StatsTotal, reconcile
from schemas.erp import InvoiceException
from schemas.reconciliation import Reconciliation, RunFacts
from schemas.records import ExceptionRecord, InvoiceCandidate
from sinks.adapters import CallbackSink
from sinks.clickhouse.rows import documents_of, rejections_of
from sinks.clickhouse.sink import RatedWindowSink
from sinks.files import JsonLinesFile, JsonLinesPartsSink, write_jsonl
from sinks.tokens import TOKENS_FILE


@dataclass(frozen=True)
class RunOptions:
    catalog: str
    events: str  # a path, or "-" for standard input
    out_dir: str
    window: timedelta = timedelta(minutes=1)
    allowed_lateness: timedelta = timedelta(hours=1)
    workers: int = 1
    chunk_lines: int = 2000
    max_future: timedelta = DEFAULT_MAX_FUTURE
    retention: timedelta = DEFAULT_RETENTION  # and file mode's dedup memory (operators/dedup.py)
    # Judge the input as of this instant instead of the system clock (replays, the demo).
    now: datetime | None = None
    adjustment_cycle: timedelta = DEFAULT_ADJUSTMENT_CYCLE
    # Judge the input's lines in a helper process a chunk ahead of ingest (flows/judge_ahead.py);
    # None: when it pays (`_helper_pays`). The outputs are the same either way.
    judge_ahead: bool | None = None

    def ingest_config(self) -> IngestConfig:
        return IngestConfig(window=self.window, allowed_lateness=self.allowed_lateness,
                            max_future=self.max_future,
                            retention=self.retention, adjustment_cycle=self.adjustment_cycle,
                            clock=system_clock if self.now is None else fixed_clock(self.now))


@dataclass
class RunResult:
    catalog: Catalog
    report: Reconciliation
    candidates: list[InvoiceCandidate]
    # Streamed from the run's exceptions.jsonl at each use (see `_run`): never held in memory.
    exceptions: Iterable[ExceptionRecord]
    elapsed_s: float
    progress: Progress = field(default_factory=Progress)
    erp: ErpOutput = field(default_factory=ErpOutput)

    @property
    def balanced(self) -> bool:
        return self.report.balanced


FILE_EPOCH = timedelta(days=3650)


def candidate_order(c: InvoiceCandidate | _CandidateKey) -> tuple[str, str, int]:
    return (c.subscription_id, c.billing_period, ids.adjustment_number(c.invoice_candidate_id))


# What the merge of the part files reads of each record: its id and sort key, not the whole
# record (a candidate's consumption days, an exception's original line), which was most of
# the merge's time. msgspec skips the other fields.
class _CandidateKey(msgspec.Struct):
    invoice_candidate_id: str
    subscription_id: str
    billing_period: str


class _ExceptionKey(msgspec.Struct):
    exception_id: str
    position: dict[str, Any]


def _exception_order(e: _ExceptionKey) -> tuple[Any, Any, Any]:
    return (e.position.get("source", ""), e.position.get("partition", 0),
            e.position.get("line", e.position.get("offset", 0)))


RATED_SUMMARY_SQL = """
SELECT subscription_id, period, meter, any(currency) AS currency,
       toString(argMax(cumulative_quantity, rating_seq)) AS cumulative_quantity,
       toString(argMax(cumulative_amount, rating_seq)) AS cumulative_amount,
       toString(sum(toDecimal256(amount_delta, 18))) AS delta_sum,
       toUInt64(sum(event_count)) AS events,
       toUInt64(countIf(row_kind = 'window')) AS windows,
       toUInt64(countIf(row_kind = 'correction')) AS corrections
FROM {db}.rated_windows FINAL
GROUP BY subscription_id, period, meter
"""


def rated_summary(store: Any, database: str) -> dict[RatedKey, RatedSummary]:
    """The rated side of reconciliation, read back from the store itself."""
    out = {}
    for row in store.query(RATED_SUMMARY_SQL.format(db=database)):
        out[(row["subscription_id"], row["period"], row["meter"])] = RatedSummary(
            currency=row["currency"],
            cumulative_quantity=Decimal(row["cumulative_quantity"]),
            cumulative_amount=Decimal(row["cumulative_amount"]),
            delta_sum=Decimal(row["delta_sum"]),
            events=int(row["events"]),
            windows=int(row["windows"]),
            corrections=int(row["corrections"]),
        )
    return out


def open_embedded_store(out_dir: Path, database: str) -> Any:
    from sinks.clickhouse import ChdbStore

    return ChdbStore(str(out_dir / "clickhouse"), database=database)


# --------------------------------------------------------------------------------------------
# The output folder, replaced whole

# What a run (or the demo) writes into its folder. A folder holding anything else is not a
# previous run's, and is refused: the swap deletes the old folder, so `--out ~` must not be
# taken as "replace my home folder".
OUTPUT_NAMES = frozenset({
    "invoice_candidates.jsonl", "exceptions.jsonl", "reconciliation.json",
    "erp_ar_invoices.jsonl", "erp_journals.jsonl", "revenue_schedules.jsonl",
    "invoice_exceptions.jsonl", "clickhouse", ".parts", "events.jsonl", "catalog.yaml",
    TOKENS_FILE,
})
_LEFTOVER = re.compile(r"\.(partial|previous)-([1-9][0-9]{0,9})")


def _is_output_name(name: str) -> bool:
    # write_jsonl goes through NAME.tmp; an older, killed run may have left one behind.
    return name in OUTPUT_NAMES or name.removesuffix(".tmp") in OUTPUT_NAMES


def _sibling(final: Path, kind: str, pid: int) -> Path:
    # Beside the final folder, not in /tmp: the swap must be a rename on one filesystem.
    return final.with_name(f"{final.name}.{kind}-{pid}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        # This process runs one flow at a time (chDB hosts one store path per process), so a
        # folder named after it can only be what an earlier, failed cleanup left.
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    except (OverflowError, ValueError):  # not a pid this system can have
        return False
    return True


def sweep_leftovers(final: Path) -> None:
    """Remove what killed runs on `final` left beside it.

    Only folders named after a process that is gone: another run on the same folder may be
    writing its own partial folder right now, and removing it would break that run half-way. A
    reused pid only delays the cleanup of its folder to a later run.
    """
    parent = final.parent
    try:
        names = os.listdir(parent)
    except OSError:
        return
    stale: dict[str, list[Path]] = {"previous": [], "partial": []}
    for name in names:
        if not name.startswith(final.name):
            continue
        match = _LEFTOVER.fullmatch(name, len(final.name))
        if match and not _pid_alive(int(match.group(2))):
            stale[match.group(1)].append(parent / name)
    for aside in sorted(stale["previous"]):
        if not os.path.lexists(final):
            # Killed between the two renames of a swap: the previous outputs are only here.
            os.rename(aside, final)
        else:
            shutil.rmtree(aside, ignore_errors=True)
    for partial in stale["partial"]:
        shutil.rmtree(partial, ignore_errors=True)


def _swap_in(work: Path, final: Path) -> None:
    tokens = final / TOKENS_FILE
    if tokens.is_file():
        # API tokens are not outputs of a run (sinks/tokens.py): the new folder keeps them.
        shutil.copy2(tokens, work / TOKENS_FILE)
    if not os.path.lexists(final):
        os.rename(work, final)
        return
    aside = _sibling(final, "previous", os.getpid())
    os.rename(final, aside)
    try:
        os.rename(work, final)
    except BaseException:
        os.rename(aside, final)
        raise
    # The new outputs are in place; if this fails, the next run removes what is left.
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def staged_output(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh folder beside `out_dir` to write a run into; swapped in for `out_dir` when the
    block ends normally, removed (and `out_dir` left untouched) when it raises."""
    # Resolved, so a symlinked --out keeps pointing at the outputs after the swap.
    final = Path(os.path.realpath(out_dir))
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(final)
    work = _sibling(final, "partial", os.getpid())
    if os.path.lexists(work):
        shutil.rmtree(work)
    work.mkdir()
    try:
        # Finance data: a folder its owner closed to others stays closed, while the run writes
        # and after the swap (the owner keeps write access while the run lasts).
        mode = stat.S_IMODE(final.stat().st_mode) if final.is_dir() else None
        if mode is not None:
            os.chmod(work, mode | stat.S_IRWXU)
        yield work
        if mode is not None:
            os.chmod(work, mode)
        _swap_in(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _stat(path: Path) -> tuple[os.stat_result | None, str | None]:
    """(stat, None); (None, None) when nothing is there; (None, why) when it cannot be told."""
    try:
        return path.stat(), None
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    except OSError as exc:
        return None, exc.strerror or str(exc)
    except ValueError as exc:  # e.g. an embedded NUL byte
        return None, str(exc)


def out_dir_problems(out_dir: str) -> list[str]:
    """Why `out_dir` cannot take a run's outputs (empty: it can). Touches nothing there."""
    if not out_dir:
        return ["must not be empty"]
    try:
        final = Path(os.path.realpath(out_dir))
        cwd = Path(os.path.realpath(os.getcwd()))
    except (OSError, ValueError) as exc:
        return [f"unusable path: {exc}"]
    if final.parent == final:
        return ["is the root folder; give the outputs a folder of their own"]
    if final == cwd or final in cwd.parents:
        return ["is the current folder or holds it; a run replaces its --out whole, so give "
                "the outputs a folder of their own"]
    problems = []
    st, why = _stat(final)
    if why:
        problems.append(f"cannot be inspected: {why}")
    elif st is not None and not stat.S_ISDIR(st.st_mode):
        problems.append(f"{out_dir} exists and is not a folder")
    elif st is not None:
        try:
            names = os.listdir(final)
        except OSError as exc:
            names = []
            problems.append(f"cannot be read: {exc.strerror}")
        foreign = sorted(n if n.isprintable() else repr(n) for n in names
                         if not _is_output_name(n))
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            problems.append(f"holds files a run did not write ({', '.join(foreign[:3])}{more}); "
                            "a run replaces the folder whole, so give an empty or new folder")
        if not os.access(final, os.W_OK | os.X_OK):
            problems.append("is not writable")
        if os.path.ismount(final):
            problems.append(f"{out_dir} is a mount point, which the run cannot replace by a "
                            "rename; give a folder inside it")
    parent = final.parent
    pst, why = _stat(parent)
    if why:
        problems.append(f"its parent folder {parent} cannot be inspected: {why}")
    elif pst is None:
        problems.append(f"its parent folder {parent} does not exist")
    elif not stat.S_ISDIR(pst.st_mode):
        problems.append(f"its parent {parent} is not a folder")
    else:
        # The run writes a sibling folder and renames it in, so the parent must take new
        # entries. access() only judges permissions, which root always has, while some
        # filesystems refuse new entries anyway (/proc, sysfs): ask the filesystem itself.
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".meterwax-probe-", dir=parent))
        except OSError as exc:
            problems.append(f"cannot create folders in {parent}: {exc.strerror}")
    return problems


def run_file(opts: RunOptions, progress: Progress | None = None,
             on_start: Callable[[], None] | None = None, *,
             catalog: Catalog | None = None) -> RunResult:
    """Validate the catalog, run the flow, write the outputs, reconcile. A bad catalog raises
    CatalogError before anything is written; the outputs replace `opts.out_dir` only once the
    run finished (balanced or not), so a failed run leaves the previous ones whole."""
    catalog = catalog if catalog is not None else load_catalog(opts.catalog)
    opts.ingest_config()  # a bad option raises here, before the folder is touched
    with staged_output(opts.out_dir) as work:
        return run_into(opts, work, catalog=catalog, progress=progress, on_start=on_start)


def run_into(opts: RunOptions, work: Path, *, catalog: Catalog | None = None,
             events: str | None = None, progress: Progress | None = None,
             on_start: Callable[[], None] | None = None) -> RunResult:
    """The run itself, writing into `work` (a folder from `staged_output`) and naming its
    outputs as they will be once swapped into `opts.out_dir`. `events` is the file to read
    when it is not `opts.events` (the demo generates its input inside `work`)."""
    catalog = catalog if catalog is not None else load_catalog(opts.catalog)
    config = opts.ingest_config()
    out = Path(opts.out_dir)
    # The contracts the run rated against, kept with its outputs: the API reads them (fees
    # accrued, customers), and an auditor sees what the figures were priced on.
    shutil.copyfile(opts.catalog, work / "catalog.yaml")
    database = "meterwax"
    store = open_embedded_store(work, database)
    try:
        return _run(opts, catalog, config, work, out, store, database,
                    opts.events if events is None else events, progress, on_start)
    finally:
        # Before the swap: chDB hosts one path per process, and `meterwax sql` (or the next
        # run in this process) opens the final folder, not this one.
        store.close()


def _run(opts: RunOptions, catalog: Catalog, config: IngestConfig, work: Path, out: Path,
         store: Any, database: str, events: str, progress: Progress | None,
         on_start: Callable[[], None] | None) -> RunResult:
    progress = progress or Progress()
    stats = StatsTotal()

    def collect(items: Sequence[IngestStats]) -> None:
        for s in items:
            stats.add(s)

    exc_sink = JsonLinesPartsSink(work, "exceptions")
    cand_sink = JsonLinesPartsSink(work, "invoice_candidates")
    sinks = Sinks(exceptions=exc_sink, stats=CallbackSink(collect),
                  windows=RatedWindowSink(store, background=True), candidates=cand_sink)
    wanted = opts.judge_ahead if opts.judge_ahead is not None else _helper_pays(events)
    with contextlib.ExitStack() as stack:
        ahead = JudgeAhead(catalog) if wanted else None
        if ahead is not None:
            stack.callback(ahead.close)
        flow = build_flow(catalog, config,
                          JsonLinesSource(events, opts.chunk_lines, progress, ahead), sinks,
                          recoverable=False, rating_shards=FILE_RATING_SHARDS)
        if on_start:
            on_start()
        elapsed = _execute(flow, opts.workers)
    judged = ("off" if ahead is None else "on" if ahead.gave_up is None
              else f"given up: {ahead.gave_up}")
    progress.done = True
    with _fewer_collections():
        return _finish(opts, catalog, stats, work, out, store, database, exc_sink, cand_sink,
                       elapsed, progress, judged)


def _finish(opts: RunOptions, catalog: Catalog, stats: StatsTotal, work: Path, out: Path,
            store: Any, database: str, exc_sink: JsonLinesPartsSink,
            cand_sink: JsonLinesPartsSink, elapsed: float, progress: Progress,
            judged: str) -> RunResult:
    """After the flow: the sorted output files, the ERP payloads, the documents in the store,
    and reconciliation."""
    exc_sink.finalize(work / "exceptions.jsonl", _ExceptionKey, lambda e: e.exception_id,
                      _exception_order)
    # Exceptions can be as many as the input's lines: read from their file when used, never
    # held. Candidates are one per subscription and month (plus adjustments), and the ERP
    # mapping needs them together.
    exceptions = JsonLinesFile(work / "exceptions.jsonl", ExceptionRecord)
    cand_sink.finalize(work / "invoice_candidates.jsonl", _CandidateKey,
                       lambda c: c.invoice_candidate_id, candidate_order)
    candidates = list(JsonLinesFile(work / "invoice_candidates.jsonl", InvoiceCandidate))
    rated = rated_summary(store, database)
    erp = build_erp(catalog, candidates)
    _write_erp(work, erp)
    _store_documents(store, candidates, erp, exceptions, opts.now or system_clock())
    report = msgspec.structs.replace(
        reconcile(catalog, stats, rated, candidates, exceptions, erp),
        run=_run_facts(opts, elapsed, stats, out, judged))
    with open(work / "reconciliation.json", "w", encoding="utf-8") as fh:
        json.dump(msgspec.to_builtins(report), fh, indent=2, sort_keys=False)
        fh.write("\n")
    # The caller reads the result once the outputs were swapped into place (`staged_output`).
    return RunResult(catalog, report, candidates,
                     JsonLinesFile(out / "exceptions.jsonl", ExceptionRecord), elapsed, progress,
                     erp)


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """The flow, and the ERP mapping after it, allocate millions of acyclic objects; the
    default collector thresholds re-scan the long-lived catalog, state and outputs over and
    over. Freeze what exists and collect less often meanwhile (measured: about 8% of the flow's
    time, and a fifth of building the ERP payloads of 100,000 subscriptions)."""
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(50_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


# Starting the helper (a spawned interpreter, its imports, the catalog unpickled) costs about a
# tenth of a second before the first chunk is answered, and judging ahead saves about 2 µs an
# event: below roughly 50,000 events (12 MiB of the demo's lines) it does not pay.
HELPER_MIN_BYTES = 16 << 20


def _helper_pays(events: str) -> bool:
    """`--judge-ahead auto`: a second CPU to run on, and an input large enough (standard input,
    whose size is unknown, counts as large)."""
    if available_cpus() < 2:
        return False
    try:
        return events == "-" or os.path.getsize(events) >= HELPER_MIN_BYTES
    except OSError:
        return True  # the source reports the problem with the file


def _execute(flow: Any, workers: int) -> float:
    """Run the flow to the end of its input; the seconds it took."""
    started = time.perf_counter()
    with _fewer_collections():
        # File mode keeps no recovery store, so one epoch for the whole file: Bytewax
        # snapshots every stateful key at each epoch end even without recovery.
        if workers <= 1:
            run_main(flow, epoch_interval=FILE_EPOCH)
        else:
            cli_main(flow, workers_per_process=workers, epoch_interval=FILE_EPOCH)
    return time.perf_counter() - started


def _store_documents(store: Any, candidates: Sequence[InvoiceCandidate], erp: ErpOutput,
                     exceptions: Iterable[ExceptionRecord], at: datetime,
                     batch: int = 10_000, documents_batch: int = 2000) -> None:
    """What the API lists, into the run's embedded store beside the rated windows (the same
    tables stream mode fills), stamped with the run's clock: the API of a folder and of a
    stream deployment then answer from the same SQL."""
    # In batches, like the rejections below: one insert of every document held each body
    # several times over (the row, its JSON line, the SQL text), 1.3 GB at the peak for ten
    # thousand subscriptions. The table is a ReplacingMergeTree keyed by (kind, customer, id),
    # so the rows stored are the same however they are cut.
    # An invoice exception names its subscription through its candidate: it goes with the
    # batch that holds that candidate.
    kept_out: dict[str, list[InvoiceException]] = {}
    for exc in erp.exceptions:
        kept_out.setdefault(exc.invoice_candidate_id, []).append(exc)
    step = documents_batch
    for i in range(0, len(candidates), step):
        cands = candidates[i:i + step]
        store.write_documents(documents_of(
            cands, [], [e for c in cands for e in kept_out.pop(c.invoice_candidate_id, ())],
            at))
    for i in range(0, len(erp.ar_invoices), step):
        store.write_documents(documents_of([], erp.ar_invoices[i:i + step], [], at))
    store.write_documents(documents_of([], [], [e for es in kept_out.values() for e in es], at,
                                       erp.journals))
    chunk: list[ExceptionRecord] = []
    for record in exceptions:
        chunk.append(record)
        if len(chunk) >= batch:
            store.write_rejections(rejections_of(chunk, at))
            chunk = []
    store.write_rejections(rejections_of(chunk, at))


def _write_erp(work: Path, erp: ErpOutput) -> None:
    write_jsonl(work / "erp_ar_invoices.jsonl", erp.ar_invoices)
    write_jsonl(work / "erp_journals.jsonl", erp.journals)
    write_jsonl(work / "revenue_schedules.jsonl", erp.schedules)
    write_jsonl(work / "invoice_exceptions.jsonl", erp.exceptions)


def _run_facts(opts: RunOptions, elapsed: float, stats: StatsTotal, out: Path,
               judged: str) -> RunFacts:
    return RunFacts(
        catalog=opts.catalog,
        events=opts.events,
        window_seconds=int(opts.window.total_seconds()),
        allowed_lateness_seconds=int(opts.allowed_lateness.total_seconds()),
        workers=opts.workers,
        max_future_seconds=int(opts.max_future.total_seconds()),
        retention_seconds=int(opts.retention.total_seconds()),
        adjustment_cycle_seconds=int(opts.adjustment_cycle.total_seconds()),
        now=None if opts.now is None else opts.now.astimezone(UTC).isoformat(),
        elapsed_seconds=round(elapsed, 3),
        events_per_second=round(stats.read / elapsed) if elapsed > 0 else None,
        rated_windows_store=str(out / "clickhouse"),
        judged_ahead=judged,
    )
