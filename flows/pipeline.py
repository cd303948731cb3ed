"""The meterwax dataflow: the same wiring for every source and sink.

    input chunks ─key: partition─▶ ingest ─┬─ exceptions ──────────────────────▶ sink
    (file / Kafka)                 (decode, ├─ stats ───────────────────────────▶ sink
                                   validate,└─ ops ─key: subscription─▶ rate ─┬─ windows ──▶ sink
                                   dedup,                              (delta └─ candidates ▶ sink
                                   watermark)                          rating)

Ingest is keyed by input partition, so one partition's events are judged in input order (dedup's
"first occurrence wins", the watermark); rating is keyed by subscription, so it spreads over
workers. Every item between steps is a list (a chunk), which keeps the runtime's per-item cost off
the per-event path. Only sources and sinks differ between file mode and production.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from flows.sources import Chunk
from operators import ids
from operators.catalog import Catalog
from operators.dedup import DedupStore, MemoryDedup
from operators.ingest import IngestConfig, Ingestor, IngestOutput, IngestState
from operators.protocol import Op
from operators.rating import SubscriptionRater
from schemas.records import AcceptedEvent, ExceptionRecord, InvoiceCandidate, RatedWindow

EXC, STATS, OPS, LEDGER = "exc", "stats", "ops", "ledger"


@dataclass(frozen=True)
class Sinks:
    """Where each output stream goes. A field may hold one sink or several (fan-out: e.g. rated
    windows to ClickHouse and to the running charges in Redis)."""

    exceptions: Sink[list[ExceptionRecord]] | Sequence[Sink[list[ExceptionRecord]]]
    stats: Sink[Any] | Sequence[Sink[Any]]
    windows: Sink[list[RatedWindow]] | Sequence[Sink[list[RatedWindow]]]
    candidates: Sink[list[InvoiceCandidate]] | Sequence[Sink[list[InvoiceCandidate]]]
    # Accepted events, for the ClickHouse usage ledger (needs IngestConfig.ledger).
    ledger: Sequence[Sink[list[AcceptedEvent]]] = ()


def _outputs(step: str, stream: Any, sinks: Any) -> None:
    for n, sink in enumerate(sinks if isinstance(sinks, Sequence) else [sinks]):
        op.output(f"{step}_{n}" if n else step, stream, sink)


def _frozen(state: Any) -> bytes:
    """An immutable snapshot: the pickled bytes themselves. Bytewax would pickle the snapshot
    anyway, and pickling is several times faster than `copy.deepcopy` on this state."""
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


# Bytewax builds stateful logic without telling it its key, so both logics below learn it from
# their first item (each item carries it) and keep it in their snapshot.


class IngestLogic(StatefulBatchLogic[Chunk, tuple[str, Any], Any]):
    def __init__(self, catalog: Catalog, config: IngestConfig,
                 dedup_factory: Callable[[Any], DedupStore], resume: Any,
                 recoverable: bool = True) -> None:
        self.catalog, self.config, self.dedup_factory = catalog, config, dedup_factory
        self.recoverable = recoverable
        self.ingestor: Ingestor | None = None
        if resume is not None:
            partition, state, dedup_snapshot = pickle.loads(resume)
            self._build(partition, state, dedup_snapshot)

    def _build(self, partition: str, state: IngestState | None, dedup_snapshot: Any) -> Ingestor:
        self.partition = partition
        self.dedup = self.dedup_factory(dedup_snapshot)
        source, number = ids.parse_partition(partition)
        self.ingestor = Ingestor(self.catalog, self.config, self.dedup, source, number,
                                 state=state)
        return self.ingestor

    @staticmethod
    def _emit(out: IngestOutput, into: list[tuple[str, Any]]) -> None:
        if out.exceptions:
            into.append((EXC, out.exceptions))
        if out.accepted:
            into.append((LEDGER, out.accepted))
        into.append((STATS, out.stats))
        for sub_id, ops in out.ops.items():
            into.append((OPS, (sub_id, ops)))

    def on_batch(self, values: list[Chunk]) -> tuple[Iterable[tuple[str, Any]], bool]:
        ingestor = self.ingestor or self._build(values[0][0], None, None)
        emitted: list[tuple[str, Any]] = []
        for _, lines in values:
            self._emit(ingestor.process(lines), emitted)
        return emitted, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[tuple[str, Any]], bool]:
        emitted: list[tuple[str, Any]] = []
        if self.ingestor is not None:
            self._emit(self.ingestor.finish(), emitted)
        return emitted, StatefulBatchLogic.RETAIN

    def snapshot(self) -> Any:
        if self.ingestor is None or not self.recoverable:
            return None
        return _frozen((self.partition, self.ingestor.state, self.dedup.snapshot()))


def memory_dedup(snapshot: Any) -> DedupStore:
    store = MemoryDedup()
    if snapshot:
        store.first = dict(snapshot)
    return store


SubOps = tuple[str, list[Op]]


class RateLogic(StatefulBatchLogic[SubOps, tuple[str, list[Any]], Any]):
    def __init__(self, catalog: Catalog, config: IngestConfig, resume: Any,
                 recoverable: bool = True) -> None:
        self.catalog, self.config = catalog, config
        self.recoverable = recoverable
        self.rater: SubscriptionRater | None = None
        if resume is not None:
            sub_id, state = pickle.loads(resume)
            self.rater = SubscriptionRater(catalog, sub_id, config.window, state=state)

    def on_batch(self, values: list[SubOps]) -> tuple[Iterable[tuple[str, list[Any]]], bool]:
        rater = self.rater
        if rater is None:
            rater = self.rater = SubscriptionRater(self.catalog, values[0][0], self.config.window)
        windows: list[RatedWindow] = []
        candidates: list[InvoiceCandidate] = []
        failures: list[ExceptionRecord] = []
        for _, ops in values:
            for item in rater.apply(ops):
                if isinstance(item, RatedWindow):
                    windows.append(item)
                elif isinstance(item, ExceptionRecord):
                    failures.append(item)
                else:
                    candidates.append(item)
        out: list[tuple[str, list[Any]]] = []
        if windows:
            out.append(("win", windows))
        if candidates:
            out.append(("cand", candidates))
        if failures:
            out.append((EXC, failures))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> Any:
        if self.rater is None or not self.recoverable:
            return None
        return _frozen((self.rater.sub.id, self.rater.state))


def build_flow(catalog: Catalog, config: IngestConfig, source: Source[Chunk], sinks: Sinks,
               dedup_factory: Callable[[Any], DedupStore] = memory_dedup,
               flow_id: str = "meterwax", recoverable: bool = True,
               with_candidates: Callable[[Any], None] | None = None) -> Dataflow:
    """`recoverable=False` (file mode, no recovery store) makes snapshots empty: Bytewax asks
    for them at every epoch end even when nothing will ever read them, and pickling all window
    state was 13% of a file run. `with_candidates` receives the candidate stream to attach more
    steps to it (stream mode's journal step)."""
    flow = Dataflow(flow_id)
    chunks = op.input("input", flow, source)
    by_partition = op.key_on("key_partition", chunks, lambda chunk: chunk[0])
    ingested = op.stateful_batch(
        "ingest", by_partition,
        lambda resume: IngestLogic(catalog, config, dedup_factory, resume, recoverable),
    )
    tagged = op.key_rm("ingest_unkey", ingested)
    split = op.branch("split_ingest", tagged, lambda item: item[0] == OPS)
    others = split.falses
    exceptions = op.filter_map("exceptions", others,
                               lambda item: item[1] if item[0] == EXC else None)
    stats = op.filter_map("stats", others, lambda item: item[1] if item[0] == STATS else None)
    _outputs("stats_out", stats, sinks.stats)
    if sinks.ledger:
        ledger = op.filter_map("ledger", others,
                               lambda item: item[1] if item[0] == LEDGER else None)
        _outputs("ledger_out", ledger, sinks.ledger)

    ops = op.map("ops_payload", split.trues, lambda item: item[1])
    by_sub = op.key_on("key_subscription", ops, lambda item: item[0])
    rated = op.stateful_batch(
        "rate", by_sub, lambda resume: RateLogic(catalog, config, resume, recoverable))
    rated_items = op.key_rm("rate_unkey", rated)
    windows = op.filter_map("windows", rated_items,
                            lambda item: item[1] if item[0] == "win" else None)
    candidates = op.filter_map("candidates", rated_items,
                               lambda item: item[1] if item[0] == "cand" else None)
    # Ops whose rating failed (operators/rating.py) join the rejected events.
    rating_failures = op.filter_map("rating_failures", rated_items,
                                    lambda item: item[1] if item[0] == EXC else None)
    _outputs("exceptions_out", op.merge("all_exceptions", exceptions, rating_failures),
             sinks.exceptions)
    _outputs("windows_out", windows, sinks.windows)
    _outputs("candidates_out", candidates, sinks.candidates)
    if with_candidates is not None:
        with_candidates(candidates)
    return flow
