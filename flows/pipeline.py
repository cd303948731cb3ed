"""The meterwax dataflow: the same wiring for every source and sink.

    input chunks ─key: partition─▶ ingest ─┬─ exceptions ─────────────────────────┬─▶ sink
    (file / Kafka)                 (decode, ├─ stats ─────────────────────────────│─▶ sink
                                   validate,├─ ledger (stream mode) ──────────────│─▶ sink
                                   dedup,   └─ ops ─key: subscription─▶ rate ─┬─ failures
                                   watermark)                         (delta  ├─ windows ──▶ sink
                                                                       rating)└─ candidates ▶ sink

Ingest is keyed by input partition, so one partition's events are judged in input order (dedup's
"first occurrence wins", the watermark); rating is keyed by subscription, so it spreads over
workers. `ingest` and `rate` are composite steps that return their outputs as a dataclass of
typed streams, split by item type. Every item between steps is a list (a chunk), which keeps the
runtime's per-item cost off the per-event path. Only sources and sinks differ between file mode
and production.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from flows.sources import Chunk
from operators import ids
from operators.catalog import Catalog
from operators.dedup import DedupStore, MemoryDedup
from operators.ingest import IngestConfig, Ingestor, IngestOutput, IngestState, IngestStats
from operators.protocol import PeriodRetired, SubscriptionOps
from operators.rating import SubscriptionRater
from schemas.records import AcceptedEvent, ExceptionRecord, InvoiceCandidate, RatedWindow


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


# What the two stateful steps emit, one type per kind of item, so each stream is split off by
# type (never by a string tag). Lists move whole: one item per batch, not per record.


class Rejected(msgspec.Struct, array_like=True, gc=False):
    records: list[ExceptionRecord]


class Accepted(msgspec.Struct, array_like=True, gc=False):
    events: list[AcceptedEvent]


class RatedRows(msgspec.Struct, array_like=True, gc=False):
    rows: list[RatedWindow]


class Candidates(msgspec.Struct, array_like=True, gc=False):
    items: list[InvoiceCandidate]


class Retirements(msgspec.Struct, array_like=True, gc=False):
    items: list[PeriodRetired]


IngestItem = Rejected | Accepted | IngestStats | SubscriptionOps
RatingItem = RatedRows | Candidates | Rejected | Retirements
# What the journal step reads (stream mode): one subscription's candidates and retirements in the
# order its rater emitted them, so a retirement never overtakes a candidate it follows.
JournalFeed = list[InvoiceCandidate | PeriodRetired]


@dataclass(frozen=True)
class IngestStreams:
    """The ingest step's outputs, split by type (like Bytewax's `KafkaSourceOut(oks, errs)`)."""

    exceptions: Stream[list[ExceptionRecord]]
    stats: Stream[IngestStats]
    ops: Stream[SubscriptionOps]
    ledger: Stream[list[AcceptedEvent]]


@dataclass(frozen=True)
class RatingStreams:
    windows: Stream[list[RatedWindow]]
    candidates: Stream[list[InvoiceCandidate]]
    failures: Stream[list[ExceptionRecord]]  # rating steps that failed (operators/rating.py)
    journal_feed: Stream[JournalFeed]


# Bytewax builds stateful logic without telling it its key, so both logics below learn it from
# their first item (each item carries it) and keep it in their snapshot.


class IngestLogic(StatefulBatchLogic[Chunk, IngestItem, Any]):
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
    def _emit(out: IngestOutput, into: list[IngestItem]) -> None:
        if out.exceptions:
            into.append(Rejected(out.exceptions))
        if out.accepted:
            into.append(Accepted(out.accepted))
        into.append(out.stats)
        for sub_id, ops in out.ops.items():
            into.append(SubscriptionOps(sub_id, ops))

    def on_batch(self, values: list[Chunk]) -> tuple[Iterable[IngestItem], bool]:
        ingestor = self.ingestor or self._build(values[0][0], None, None)
        emitted: list[IngestItem] = []
        for chunk in values:
            self._emit(ingestor.process(chunk[1], chunk[2] if len(chunk) > 2 else ()), emitted)
        return emitted, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[IngestItem], bool]:
        emitted: list[IngestItem] = []
        if self.ingestor is not None:
            self._emit(self.ingestor.finish(), emitted)
        return emitted, StatefulBatchLogic.RETAIN

    def snapshot(self) -> Any:
        if self.ingestor is None or not self.recoverable:
            return None
        return _frozen((self.partition, self.ingestor.state, self.dedup.snapshot()))


def memory_dedup(snapshot: Any) -> DedupStore:
    return MemoryDedup.restore(snapshot)


class RateLogic(StatefulBatchLogic[SubscriptionOps, RatingItem, Any]):
    def __init__(self, catalog: Catalog, config: IngestConfig, resume: Any,
                 recoverable: bool = True) -> None:
        self.catalog, self.config = catalog, config
        self.recoverable = recoverable
        self.rater: SubscriptionRater | None = None
        if resume is not None:
            sub_id, state = pickle.loads(resume)
            self.rater = SubscriptionRater(catalog, sub_id, config.window, state=state)

    def on_batch(self, values: list[SubscriptionOps]) -> tuple[Iterable[RatingItem], bool]:
        rater = self.rater
        if rater is None:
            rater = self.rater = SubscriptionRater(self.catalog, values[0].subscription_id,
                                                   self.config.window)
        windows: list[RatedWindow] = []
        candidates: list[InvoiceCandidate] = []
        failures: list[ExceptionRecord] = []
        retired: list[PeriodRetired] = []
        for item in values:
            for output in rater.apply(item.ops):
                if isinstance(output, RatedWindow):
                    windows.append(output)
                elif isinstance(output, ExceptionRecord):
                    failures.append(output)
                elif isinstance(output, PeriodRetired):
                    retired.append(output)
                else:
                    candidates.append(output)
        out: list[RatingItem] = []
        if windows:
            out.append(RatedRows(windows))
        if candidates:
            out.append(Candidates(candidates))
        if failures:
            out.append(Rejected(failures))
        if retired:
            # After the candidates: a batch's retirements follow everything it issued.
            out.append(Retirements(retired))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> Any:
        if self.rater is None or not self.recoverable:
            return None
        return _frozen((self.rater.sub.id, self.rater.state))


def _of_type(step: str, stream: Stream[Any], kind: type, unwrap: Callable[[Any], Any]
             ) -> Stream[Any]:
    return op.filter_map(step, stream, lambda item: unwrap(item) if type(item) is kind else None)


def ingest(catalog: Catalog, config: IngestConfig, chunks: Stream[Chunk],
           dedup_factory: Callable[[Any], DedupStore], recoverable: bool) -> IngestStreams:
    """Judge every event, keyed by input partition so one partition is judged in input order
    (dedup's "first occurrence wins", the watermark)."""
    by_partition = op.key_on("key_partition", chunks, lambda chunk: chunk[0])
    judged = op.key_rm("ingest_unkey", op.stateful_batch(
        "ingest", by_partition,
        lambda resume: IngestLogic(catalog, config, dedup_factory, resume, recoverable)))
    return IngestStreams(
        exceptions=_of_type("exceptions", judged, Rejected, lambda r: r.records),
        stats=_of_type("stats", judged, IngestStats, lambda s: s),
        ops=_of_type("ops", judged, SubscriptionOps, lambda o: o),
        ledger=_of_type("ledger", judged, Accepted, lambda a: a.events),
    )


def rate(catalog: Catalog, config: IngestConfig, ops: Stream[SubscriptionOps],
         recoverable: bool) -> RatingStreams:
    """Rate every subscription's ops, keyed by subscription so the work spreads over workers."""
    by_sub = op.key_on("key_subscription", ops, lambda item: item.subscription_id)
    rated = op.key_rm("rate_unkey", op.stateful_batch(
        "rate", by_sub, lambda resume: RateLogic(catalog, config, resume, recoverable)))
    return RatingStreams(
        windows=_of_type("windows", rated, RatedRows, lambda r: r.rows),
        candidates=_of_type("candidates", rated, Candidates, lambda c: c.items),
        failures=_of_type("rating_failures", rated, Rejected, lambda r: r.records),
        journal_feed=op.filter_map("journal_feed", rated, _journal_items),
    )


def _journal_items(item: RatingItem) -> JournalFeed | None:
    if type(item) is Candidates or type(item) is Retirements:
        return list(item.items)
    return None


def build_flow(catalog: Catalog, config: IngestConfig, source: Source[Chunk], sinks: Sinks,
               dedup_factory: Callable[[Any], DedupStore] = memory_dedup,
               flow_id: str = "meterwax", recoverable: bool = True,
               with_journal_feed: Callable[[Stream[JournalFeed]], None] | None = None
               ) -> Dataflow:
    """`recoverable=False` (file mode, no recovery store) makes snapshots empty: Bytewax asks
    for them at every epoch end even when nothing will ever read them, and pickling all window
    state was 13% of a file run. `with_journal_feed` receives the candidates and retirements, in
    rating order, to attach stream mode's journal step to."""
    flow = Dataflow(flow_id)
    judged = ingest(catalog, config, op.input("input", flow, source), dedup_factory,
                    recoverable)
    _outputs("stats_out", judged.stats, sinks.stats)
    if sinks.ledger:
        _outputs("ledger_out", judged.ledger, sinks.ledger)
    rated = rate(catalog, config, judged.ops, recoverable)
    _outputs("exceptions_out", op.merge("all_exceptions", judged.exceptions, rated.failures),
             sinks.exceptions)
    _outputs("windows_out", rated.windows, sinks.windows)
    _outputs("candidates_out", rated.candidates, sinks.candidates)
    if with_journal_feed is not None:
        with_journal_feed(rated.journal_feed)
    return flow
