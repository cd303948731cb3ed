"""The meterwax dataflow: the same wiring for every source and sink.

    input chunks ─key: partition─▶ ingest ─┬─ exceptions ─────────────────────────┬─▶ sink
    (file / Kafka)                 (decode, ├─ stats ─────────────────────────────│─▶ sink
                                   validate,│  (stream mode: the ledger, to its writer)
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
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from flows.judge_ahead import decode_verdicts
from flows.metrics import state_snapshot
from flows.sources import Chunk, ContractsBatch, JudgedLines, PartitionIdle
from operators import ids
from operators.catalog import Catalog, CatalogError
from operators.contracts import KINDS, ContractsError, catalog_of, decode_record, put, refusals
from operators.credits import apply as apply_credits
from operators.credits import may_use_credits, order_key
from operators.dedup import DedupStore, MemoryDedup
from operators.ingest import IngestConfig, Ingestor, IngestOutput, IngestState, IngestStats
from operators.periods import Month, service_period
from operators.protocol import PeriodRetired, SubscriptionOps, Terms
from operators.rating import SubscriptionRater
from schemas.records import (
    CONTRACT_REFUSED,
    ExceptionRecord,
    InvoiceCandidate,
    RatedWindow,
)


class EpochWrites(Protocol):
    """Rows a stateful step stores itself, and waits for in its snapshot, so its epoch commits
    only once they are stored (sinks.clickhouse.sink.EpochWriter)."""

    def submit(self, rows: Sequence[Any]) -> None: ...

    def wait(self) -> None: ...


@dataclass(frozen=True)
class Writers:
    """Stream mode's ClickHouse tables, written by the steps that make their rows (ingest: the
    ledger and its rejections; rating: the rated windows and its failures) instead of by sinks
    after them. The rows still flow on where a sink also wants them (the windows to the running
    charges, the rejections to the dead-letter topic)."""

    windows: EpochWrites | None = None
    ledger: EpochWrites | None = None
    rejections: EpochWrites | None = None

    def wait(self, *writers: EpochWrites | None) -> None:
        for writer in writers:
            if writer is not None:
                writer.wait()


@dataclass(frozen=True)
class Sinks:
    """Where each output stream goes. A field may hold one sink or several (fan-out: e.g. rated
    windows to ClickHouse and to the running charges in Redis)."""

    exceptions: Sink[list[ExceptionRecord]] | Sequence[Sink[list[ExceptionRecord]]]
    stats: Sink[Any] | Sequence[Sink[Any]]
    windows: Sink[list[RatedWindow]] | Sequence[Sink[list[RatedWindow]]]
    candidates: Sink[list[InvoiceCandidate]] | Sequence[Sink[list[InvoiceCandidate]]]
    # Stream mode's tables written by the steps themselves; the accepted events of
    # IngestConfig.ledger go only to `writers.ledger`.
    writers: Writers = Writers()


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


class RatedRows(msgspec.Struct, array_like=True, gc=False):
    rows: list[RatedWindow]


class Candidates(msgspec.Struct, array_like=True, gc=False):
    items: list[InvoiceCandidate]


class Retirements(msgspec.Struct, array_like=True, gc=False):
    items: list[PeriodRetired]


class ShardOps(msgspec.Struct, array_like=True, gc=False):
    """The ops of one ingest batch for the subscriptions of one rating shard (`rating_shards`
    in build_flow), each subscription's in input order."""

    shard: str
    items: list[SubscriptionOps]


IngestItem = Rejected | IngestStats | SubscriptionOps | ShardOps
RatingItem = RatedRows | Candidates | Rejected | Retirements
# What the journal step reads (stream mode): one subscription's candidates and retirements in the
# order its rater emitted them, so a retirement never overtakes a candidate it follows.
JournalFeed = list[InvoiceCandidate | PeriodRetired]


@dataclass(frozen=True)
class IngestStreams:
    """The ingest step's outputs, split by type (like Bytewax's `KafkaSourceOut(oks, errs)`)."""

    exceptions: Stream[list[ExceptionRecord]]
    stats: Stream[IngestStats]
    ops: Stream[SubscriptionOps] | Stream[ShardOps]  # ShardOps with rating shards


@dataclass(frozen=True)
class RatingStreams:
    windows: Stream[list[RatedWindow]]
    candidates: Stream[list[InvoiceCandidate]]
    failures: Stream[list[ExceptionRecord]]  # rating steps that failed (operators/rating.py)
    journal_feed: Stream[JournalFeed]


# Bytewax builds stateful logic without telling it its key, so both logics below learn it from
# their first item (each item carries it) and keep it in their snapshot.


class LiveCatalog:
    """Stream mode: the newest catalog any ingest partition of this process has applied, for
    the sinks that build outputs from the catalog (ERP payloads, journals, running charges).
    Ingest and raters do not read it: they hold the contracts their own input order gives
    them (recovered with their state)."""

    def __init__(self, catalog: Catalog, version: int = 0,
                 on_update: Callable[[int], None] | None = None) -> None:
        self.current, self.version = catalog, version
        self.on_update = on_update
        self._changed = threading.Condition()
        if on_update is not None:
            on_update(version)

    def update(self, version: int, catalog: Catalog) -> None:
        with self._changed:
            if version > self.version:
                self.current, self.version = catalog, version
                self._changed.notify_all()
                if self.on_update is not None:
                    self.on_update(version)

    def holding(self, subscriptions: Iterable[str], timeout: float = 60.0) -> Catalog:
        """The current catalog once it holds every one of `subscriptions`. A window or
        candidate can reach a sink of a process whose own input partitions have not yet read
        the contract it was rated on (a cluster: each process reads the contracts topic
        itself); that is a matter of milliseconds, so wait, and fail loudly past `timeout`."""
        wanted = set(subscriptions)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                missing = wanted - self.current.subscriptions.keys()
                if not missing:
                    return self.current
                left = deadline - time.monotonic()
                if left <= 0:
                    msg = (f"subscriptions {sorted(missing)[:5]} are not in the contracts this "
                           f"process has read (version {self.version}) after {timeout:.0f} s")
                    raise LookupError(msg)
                self._changed.wait(min(left, 1.0))


class _Held(msgspec.Struct, array_like=True):
    """The contracts an ingest partition applied: the specs in force and the topic offset to
    read from next. Kept encoded in the snapshot (encoded again only when they change)."""

    specs: dict[str, dict[str, Any]]
    offset: int


_HELD = msgspec.json.Decoder(_Held)


class IngestLogic(StatefulBatchLogic[Chunk, IngestItem, Any]):
    def __init__(self, catalog: Catalog, config: IngestConfig,
                 dedup_factory: Callable[[Any], DedupStore], resume: Any,
                 recoverable: bool = True, live: LiveCatalog | None = None,
                 shards: int | None = None, writers: Writers | None = None) -> None:
        self.catalog, self.config, self.dedup_factory = catalog, config, dedup_factory
        self.writers = writers or Writers()
        if config.ledger and self.writers.ledger is None:
            msg = "IngestConfig.ledger needs Writers.ledger: the accepted events go only there"
            raise ValueError(msg)
        self.recoverable = recoverable
        self.shards = shards
        self.live = live
        self.ingestor: Ingestor | None = None
        # Stream mode: the contracts applied, and their encoded form for the snapshot.
        self.held = _Held({}, 0)
        self._held_blob = msgspec.json.encode(self.held)
        if resume is not None:
            partition, state, dedup_snapshot, *rest = pickle.loads(resume)
            if rest and rest[0] is not None and live is not None:
                self._held_blob = rest[0]
                self.held = _HELD.decode(rest[0])
                self.catalog = catalog_of(self.held.specs)
                live.update(self.held.offset, self.catalog)
            self._build(partition, state, dedup_snapshot)

    def _build(self, partition: str, state: IngestState | None, dedup_snapshot: Any) -> Ingestor:
        self.partition = partition
        self.dedup = self.dedup_factory(dedup_snapshot)
        source, number = ids.parse_partition(partition)
        self.ingestor = Ingestor(self.catalog, self.config, self.dedup, source, number,
                                 state=state,
                                 terms_version=self.held.offset if self.live else None)
        return self.ingestor

    def _contracts(self, batch: ContractsBatch, ingestor: Ingestor, into: list[IngestItem]
                   ) -> None:
        """Apply published contracts (operators/contracts.py): whatever would not make a valid
        catalog, or would alter usage already rated, is refused (CONTRACT_REFUSED) and the rest
        applied, so the catalog in force is always one a file could hold."""
        refused: list[ExceptionRecord] = []
        raw: dict[str, tuple[int, bytes | None]] = {}  # key -> its last message in the batch
        decoded: list[tuple[int, str, dict[str, Any] | None]] = []
        last = self.held.offset
        for offset, key, value in batch.records:
            last = max(last, offset + 1)
            try:
                record_key, _, spec = decode_record(key, value)
            except ContractsError as exc:
                refused.append(_refusal(batch.topic, offset, key, value, str(exc)))
                continue
            decoded.append((offset, record_key, spec))
            raw[record_key] = (offset, value)
        specs = dict(self.held.specs)
        for _, record_key, spec in decoded:
            put(specs, record_key, spec)
        try:
            catalog = catalog_of(specs)
        except CatalogError:
            # Key by key (each key's last record in the batch), so one bad record does not hold
            # back the others: what others refer to first (settings, legal entities, meters,
            # plans, then customers), and removals after, in the reverse order.
            specs, catalog = dict(self.held.specs), self.catalog
            final = {k: (off, spec) for off, k, spec in decoded}
            rank = {kind: n for n, kind in enumerate(KINDS)}

            def order(key: str) -> tuple[int, int, str]:
                kind_rank = rank.get(key.partition("/")[0], 0)
                removal = final[key][1] is None
                return (int(removal), -kind_rank if removal else kind_rank, key)

            for record_key in sorted(final, key=order):
                offset, spec = final[record_key]
                trial = dict(specs)
                put(trial, record_key, spec)
                try:
                    catalog = catalog_of(trial)
                except CatalogError as exc:
                    refused.append(_refusal(batch.topic, offset, record_key.encode(),
                                            raw[record_key][1],
                                            f"the catalog it would make is invalid: {exc}"))
                    continue
                specs = trial
        why = refusals(self.catalog, catalog, ingestor.frozen())
        if why:
            for record_key in why:
                put(specs, record_key, self.held.specs.get(record_key))
            try:
                catalog = catalog_of(specs)
                again = refusals(self.catalog, catalog, ingestor.frozen())
            except CatalogError:
                again = {"": "the rest of the batch depends on the refused records"}
            if again:  # what is left depends on what was refused: apply nothing
                why = {k: why.get(k) or again.get(k)
                       or "published with records that were refused, so not applied either"
                       for k in {k for _, k, _ in decoded}}
                specs, catalog = dict(self.held.specs), self.catalog
            for record_key, message in sorted(why.items()):
                offset, value = raw.get(record_key, (last - 1, None))
                refused.append(_refusal(batch.topic, offset, record_key.encode(), value,
                                        f"not applied: {message}"))
        old = self.catalog
        changed = {s for s in catalog.subscriptions
                   if s not in old.subscriptions or catalog.terms_of(s) != old.terms_of(s)}
        self.catalog = catalog
        self.held = _Held(specs, last)
        self._held_blob = msgspec.json.encode(self.held)
        self._emit(ingestor.set_catalog(catalog, last, changed), into)
        if refused:
            self._rejected(refused, into)
        if self.live is not None:
            self.live.update(last, catalog)

    def _rejected(self, records: list[ExceptionRecord], into: list[IngestItem]) -> None:
        into.append(Rejected(records))
        if self.writers.rejections is not None:
            self.writers.rejections.submit(records)

    def _emit(self, out: IngestOutput, into: list[IngestItem]) -> None:
        if out.exceptions:
            self._rejected(out.exceptions, into)
        if out.accepted:
            assert self.writers.ledger is not None  # __init__ refuses a ledger without it
            self.writers.ledger.submit(out.accepted)
        into.append(out.stats)
        partition = self.partition
        if self.shards is None:
            for sub_id, ops in out.ops.items():
                into.append(SubscriptionOps(sub_id, ops, partition))
            return
        by_shard: dict[str, list[SubscriptionOps]] = {}
        for sub_id, ops in out.ops.items():
            by_shard.setdefault(shard_of(sub_id, self.shards), []).append(
                SubscriptionOps(sub_id, ops, partition))
        for shard, items in by_shard.items():
            into.append(ShardOps(shard, items))

    def on_batch(self, values: list[Chunk]) -> tuple[Iterable[IngestItem], bool]:
        ingestor = self.ingestor or self._build(values[0][0], None, None)
        emitted: list[IngestItem] = []
        for chunk in values:
            lines = chunk[1]
            if type(lines) is ContractsBatch:
                self._contracts(lines, ingestor, emitted)
                continue
            if type(lines) is PartitionIdle:
                # At the end of a bounded run, finish() (on_eof) says it after its closes.
                if not lines.ended:
                    self._emit(ingestor.idle(), emitted)
                continue
            if type(lines) is JudgedLines:
                self._emit(ingestor.process(lines.lines, ahead=decode_verdicts(lines.verdicts)),
                           emitted)
                continue
            assert isinstance(lines, list)
            if len(chunk) == 2:
                out = ingestor.process(lines)
            elif len(chunk) == 3:
                out = ingestor.process(lines, chunk[2])
            else:
                out = ingestor.process(lines, chunk[2], binary=chunk[3])
            self._emit(out, emitted)
        return emitted, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[IngestItem], bool]:
        emitted: list[IngestItem] = []
        if self.ingestor is not None:
            self._emit(self.ingestor.finish(), emitted)
        return emitted, StatefulBatchLogic.RETAIN

    def snapshot(self) -> Any:
        # The epoch this snapshot closes commits only after the rows it made are stored.
        self.writers.wait(self.writers.ledger, self.writers.rejections)
        if self.ingestor is None or not self.recoverable:
            return None
        blob = _frozen((self.partition, self.ingestor.state, self.dedup.snapshot(),
                        self._held_blob if self.live is not None else None))
        state_snapshot("ingest", self.partition, len(blob))
        return blob


def _refusal(topic: str, offset: int, key: bytes | None, value: bytes | None, why: str
             ) -> ExceptionRecord:
    text = value.decode("utf-8", "replace") if value is not None else None
    shown_key = key.decode("utf-8", "replace")[:200] if key is not None else None
    return ExceptionRecord(
        exception_id=ids.contract_refusal_id(topic, offset), reason=CONTRACT_REFUSED,
        error=f"contracts record {shown_key!r} at offset {offset}: {why}"[:4000],
        position={"topic": topic, "partition": 0, "offset": offset, "key": shown_key},
        raw=text[:65536] if text is not None else None)


def memory_dedup(snapshot: Any) -> DedupStore:
    return MemoryDedup.restore(snapshot)


class RateLogic(StatefulBatchLogic[SubscriptionOps, RatingItem, Any]):
    def __init__(self, catalog: Catalog, config: IngestConfig, resume: Any,
                 recoverable: bool = True, partitions: tuple[str, ...] | None = None,
                 writers: Writers | None = None) -> None:
        self.catalog, self.config = catalog, config
        self.recoverable = recoverable
        self.partitions = partitions
        self.writers = writers or Writers()
        self.rater: SubscriptionRater | None = None
        if resume is not None:
            sub_id, state = pickle.loads(resume)
            self.rater = SubscriptionRater(catalog, sub_id, config.window, state=state,
                                           partitions=partitions)

    def on_batch(self, values: list[SubscriptionOps]) -> tuple[Iterable[RatingItem], bool]:
        rater = self.rater
        if rater is None:
            rater = self.rater = _new_rater(self.catalog, self.config, values[0],
                                            self.partitions)
        outputs = _RatingOutputs()
        for item in values:
            outputs.add(rater.apply(item.ops, item.partition))
        writers = self.writers
        if writers.windows is not None:
            writers.windows.submit(outputs.windows)
        if writers.rejections is not None:
            writers.rejections.submit(outputs.failures)
        return outputs.items(), StatefulBatchLogic.RETAIN

    def snapshot(self) -> Any:
        # The epoch this snapshot closes commits only after the rows it made are stored.
        self.writers.wait(self.writers.windows, self.writers.rejections)
        if self.rater is None or not self.recoverable:
            return None
        blob = _frozen((self.rater.sub.id, self.rater.state))
        state_snapshot("rate", self.rater.sub.id, len(blob))
        return blob


# The steps between the stateful ones work a batch at a time (flat_map_batch), not an item at
# a time: the rating step emits one item per subscription per input chunk, so with ten thousand
# subscriptions a chunk of 2,000 lines becomes about 2,000 items, and Bytewax's per-item
# operators (filter_map, key_on, key_rm: a generator and a call per item each) cost more than
# rating them.


def _new_rater(catalog: Catalog, config: IngestConfig, first: SubscriptionOps,
               partitions: tuple[str, ...] | None = None) -> SubscriptionRater:
    # Stream mode: ingest sends a new rater its terms first (operators/protocol.py).
    op0 = first.ops[0] if first.ops else None
    terms = op0.terms.catalog() if isinstance(op0, Terms) else catalog
    return SubscriptionRater(terms, first.subscription_id, config.window,
                             partitions=partitions)


class _RatingOutputs:
    """What raters emitted in one batch, split by kind."""

    __slots__ = ("candidates", "failures", "retired", "windows")

    def __init__(self) -> None:
        self.windows: list[RatedWindow] = []
        self.candidates: list[InvoiceCandidate] = []
        self.failures: list[ExceptionRecord] = []
        self.retired: list[PeriodRetired] = []

    def add(self, outputs: Iterable[Any]) -> None:
        for output in outputs:
            if isinstance(output, RatedWindow):
                self.windows.append(output)
            elif isinstance(output, ExceptionRecord):
                self.failures.append(output)
            elif isinstance(output, PeriodRetired):
                self.retired.append(output)
            else:
                self.candidates.append(output)

    def items(self) -> list[RatingItem]:
        out: list[RatingItem] = []
        if self.windows:
            out.append(RatedRows(self.windows))
        if self.candidates:
            out.append(Candidates(self.candidates))
        if self.failures:
            out.append(Rejected(self.failures))
        if self.retired:
            # After the candidates: a batch's retirements follow everything it issued (for each
            # subscription: a shard's batch holds several).
            out.append(Retirements(self.retired))
        return out


# Without recovery, nothing reads a rater's snapshot by its key, so the Bytewax key need not be
# the subscription: file mode keys rating by a shard of the subscriptions instead. Keyed by
# subscription, each ingest chunk became one item per subscription it touched (about 2,000 of
# 2,000 lines with ten thousand subscriptions), and Bytewax's cost per key and item (routing,
# a logic call, the steps after it) was a tenth of the run. Each subscription stays in one
# shard, so its ops are applied in the same order as before, and every decision depends only
# on that order (operators/protocol.py): the outputs are the same.
FILE_RATING_SHARDS = 64


def shard_of(subscription_id: str, shards: int) -> str:
    """The rating shard of a subscription: the same in every process and run (unlike hash())."""
    return str(zlib.crc32(subscription_id.encode()) % shards)


class ShardRateLogic(StatefulBatchLogic[ShardOps, RatingItem, Any]):
    """The raters of one shard's subscriptions (file mode: snapshots are never taken)."""

    def __init__(self, catalog: Catalog, config: IngestConfig) -> None:
        self.catalog, self.config = catalog, config
        self.raters: dict[str, SubscriptionRater] = {}

    def on_batch(self, values: list[ShardOps]) -> tuple[Iterable[RatingItem], bool]:
        outputs = _RatingOutputs()
        raters = self.raters
        for shard_ops in values:
            for item in shard_ops.items:
                rater = raters.get(item.subscription_id)
                if rater is None:
                    rater = raters[item.subscription_id] = _new_rater(self.catalog, self.config,
                                                                      item)
                outputs.add(rater.apply(item.ops, item.partition))
        return outputs.items(), StatefulBatchLogic.RETAIN

    def snapshot(self) -> Any:
        return None


def _of_type(step: str, stream: Stream[Any], kind: type, unwrap: Callable[[Any], Any]
             ) -> Stream[Any]:
    return op.flat_map_batch(
        step, stream, lambda items: [unwrap(item) for item in items if type(item) is kind])


def _keyed(step: str, stream: Stream[Any], key: Callable[[Any], str]) -> Stream[Any]:
    """`op.key_on`, a batch at a time (the keys here are ids: always strings)."""
    return op.flat_map_batch(step, stream, lambda items: [(key(item), item) for item in items])


def _unkeyed(step: str, stream: Stream[Any]) -> Stream[Any]:
    """`op.key_rm`, a batch at a time."""
    return op.flat_map_batch(step, stream, lambda items: [value for _, value in items])


def ingest(catalog: Catalog, config: IngestConfig, chunks: Stream[Chunk],
           dedup_factory: Callable[[Any], DedupStore], recoverable: bool,
           live: LiveCatalog | None = None, rating_shards: int | None = None,
           writers: Writers | None = None) -> IngestStreams:
    """Judge every event, keyed by input partition so one partition is judged in input order
    (dedup's "first occurrence wins", the watermark). With `rating_shards`, the ops come out
    grouped by rating shard (ShardOps)."""
    by_partition = _keyed("key_partition", chunks, _partition_of)
    judged = _unkeyed("ingest_unkey", op.stateful_batch(
        "ingest", by_partition,
        lambda resume: IngestLogic(catalog, config, dedup_factory, resume, recoverable, live,
                                   rating_shards, writers)))
    return IngestStreams(
        exceptions=_of_type("exceptions", judged, Rejected, lambda r: r.records),
        stats=_of_type("stats", judged, IngestStats, lambda s: s),
        ops=_of_type("ops", judged, SubscriptionOps if rating_shards is None else ShardOps,
                     lambda o: o),
    )


def _partition_of(chunk: Chunk) -> str:
    return chunk[0]


def rate(catalog: Catalog, config: IngestConfig,
         ops: Stream[SubscriptionOps] | Stream[ShardOps], recoverable: bool,
         rating_shards: int | None = None, partitions: tuple[str, ...] | None = None,
         writers: Writers | None = None) -> RatingStreams:
    """Rate every subscription's ops, keyed by subscription (or, with `rating_shards`, by
    shard of the subscriptions) so the work spreads over workers. `partitions`: every input
    partition, each of which a period waits for (operators/protocol.py). `writers`: see
    `Writers` (only per subscription: the shards keep no snapshots)."""
    if writers is not None and writers != Writers() and rating_shards is not None:
        msg = "writers are awaited at the rating snapshots, which shards do not take"
        raise ValueError(msg)
    if rating_shards is None:
        rated = _unkeyed("rate_unkey", op.stateful_batch(
            "rate", _keyed("key_subscription", ops, _subscription_of),
            lambda resume: RateLogic(catalog, config, resume, recoverable, partitions,
                                     writers)))
    else:
        rated = _unkeyed("rate_unkey", op.stateful_batch(
            "rate", _keyed("key_shard", ops, _shard_key),
            lambda resume: ShardRateLogic(catalog, config)))
    return RatingStreams(
        windows=_of_type("windows", rated, RatedRows, lambda r: r.rows),
        candidates=_of_type("candidates", rated, Candidates, lambda c: c.items),
        failures=_of_type("rating_failures", rated, Rejected, lambda r: r.records),
        journal_feed=op.flat_map_batch("journal_feed", rated, _journal_items),
    )


def _subscription_of(item: SubscriptionOps) -> str:
    return item.subscription_id


def _shard_key(item: ShardOps) -> str:
    return item.shard


class CreditLogic(StatefulBatchLogic[InvoiceCandidate | PeriodRetired, JournalFeed, Any]):
    """One customer's candidates with its prepaid credits applied (operators/credits.py), in
    the order file mode applies them: invoice date, then candidate id.

    A customer without usable credits, and every candidate credits do not apply to, passes
    straight through. A ready original that credits may apply to waits until its month is
    complete for the customer (every subscription active in it has issued its candidate, which
    the raters do on one Close), and months are settled in order; a retirement of the month, or
    the end of a bounded input, settles what waits first. So the same input gives the same
    credits whatever the worker count or batching. Retirements pass through this step, after
    the candidates they follow, so the journal step still sees them in that order. State: the
    amounts applied per credit (for as long as the customer has credits) and the months in
    flight, never the months elapsed."""

    def __init__(self, catalog: Catalog | LiveCatalog, resume: Any, recoverable: bool) -> None:
        self.catalog = catalog
        self.recoverable = recoverable
        self.applied: dict[str, Any] = {}  # credit id -> Decimal applied so far
        self.pending: dict[str, list[InvoiceCandidate]] = {}  # period -> waiting originals
        self.arrived: dict[str, set[str]] = {}  # period -> subscriptions that issued it
        if resume is not None:
            self.applied, self.pending, self.arrived = pickle.loads(resume)

    def _current(self) -> Catalog:
        catalog = self.catalog
        return catalog.current if isinstance(catalog, LiveCatalog) else catalog

    def on_batch(self, values: list[InvoiceCandidate | PeriodRetired]
                 ) -> tuple[Iterable[JournalFeed], bool]:
        catalog = self._current()
        out: JournalFeed = []
        for item in values:
            if type(item) is PeriodRetired:
                self._settle(catalog, out, through=item.period)
                for period in [p for p in self.arrived if p <= item.period]:
                    del self.arrived[period]
                out.append(item)
                continue
            assert isinstance(item, InvoiceCandidate)
            period = item.billing_period
            if item.adjusts is None:
                self.arrived.setdefault(period, set()).add(item.subscription_id)
            if may_use_credits(catalog.customers.get(item.customer_id), item):
                self.pending.setdefault(period, []).append(item)
            else:
                out.append(item)
        self._settle(catalog, out)
        return ([out] if out else []), StatefulBatchLogic.RETAIN

    def _complete(self, catalog: Catalog, customer_id: str, period: str) -> bool:
        customer = catalog.customers.get(customer_id)
        if customer is None:
            return True
        month = Month.parse(period)
        start = catalog.billing_start
        expected = {s.id for s in customer.subscriptions
                    if service_period(month, s.start, s.end) is not None
                    and (start is None or month >= start)}
        return expected <= self.arrived.get(period, set())

    def _settle(self, catalog: Catalog, out: JournalFeed, through: str | None = None,
                every: bool = False) -> None:
        """Apply credits to the waiting months that are complete (or through `through`, or
        all of them with `every`), oldest first."""
        for period in sorted(self.pending):
            waiting = self.pending[period]
            customer = catalog.customers.get(waiting[0].customer_id)
            ready = (every or (through is not None and period <= through)
                     or self._complete(catalog, waiting[0].customer_id, period))
            if not ready:
                break  # months settle in order: a later one waits for this one
            del self.pending[period]
            for cand in sorted(waiting, key=order_key):
                out.append(apply_credits(customer, cand, self.applied)
                           if customer is not None else cand)

    def on_eof(self) -> tuple[Iterable[JournalFeed], bool]:
        out: JournalFeed = []
        self._settle(self._current(), out, every=True)
        return ([out] if out else []), StatefulBatchLogic.RETAIN

    def snapshot(self) -> Any:
        if not self.recoverable:
            return None
        return _frozen((self.applied, self.pending, self.arrived))


def credit(catalog: Catalog | LiveCatalog, feed: Stream[JournalFeed], recoverable: bool
           ) -> Stream[JournalFeed]:
    """Apply prepaid credits, keyed by customer (CreditLogic)."""
    singles = op.flat_map("credits_each", feed, lambda items: items)
    by_customer = _keyed("key_customer", singles, _customer_of)
    return _unkeyed("credits_unkey", op.stateful_batch(
        "credits", by_customer, lambda resume: CreditLogic(catalog, resume, recoverable)))


def _customer_of(item: InvoiceCandidate | PeriodRetired) -> str:
    return item.customer_id


def _journal_items(items: list[RatingItem]) -> list[JournalFeed]:
    return [list(item.items) for item in items
            if type(item) is Candidates or type(item) is Retirements]


def build_flow(catalog: Catalog, config: IngestConfig, source: Source[Chunk], sinks: Sinks,
               dedup_factory: Callable[[Any], DedupStore] = memory_dedup,
               flow_id: str = "meterwax", recoverable: bool = True,
               with_journal_feed: Callable[[Stream[JournalFeed]], None] | None = None,
               live: LiveCatalog | None = None, rating_shards: int | None = None,
               partitions: Sequence[str] | None = None) -> Dataflow:
    """`recoverable=False` (file mode, no recovery store) makes snapshots empty: Bytewax asks
    for them at every epoch end even when nothing will ever read them, and pickling all window
    state was 13% of a file run. `rating_shards` (only without recovery: see
    FILE_RATING_SHARDS) keys rating by that many shards of the subscriptions instead of by
    subscription. `with_journal_feed` receives the candidates and retirements, in
    rating order, to attach stream mode's journal step to. `partitions`: the names of every
    input partition the source reads (the keys of its chunks); with more than one, a period is
    closed once all of them have closed it or are idle (operators/protocol.py)."""
    if rating_shards is not None and recoverable:
        msg = "rating shards keep no per-subscription snapshots: only without recovery"
        raise ValueError(msg)
    flow = Dataflow(flow_id)
    if live is not None:
        # Live contracts: ingest starts from none and applies what the source reads from the
        # contracts topic (a fresh start reads it whole before any usage); raters get their
        # terms from ingest, and `catalog` is only their fallback.
        catalog = live.current
    judged = ingest(catalog_of({}) if live is not None else catalog, config,
                    op.input("input", flow, source), dedup_factory, recoverable, live,
                    rating_shards, sinks.writers)
    _outputs("stats_out", judged.stats, sinks.stats)
    # One input partition's closes are final; with several, a period closes on all of them.
    waited = tuple(partitions) if partitions is not None and len(partitions) > 1 else None
    if waited is not None and rating_shards is not None:
        msg = "rating shards are for file mode, which reads one input partition"
        raise ValueError(msg)
    rated = rate(catalog, config, judged.ops, recoverable, rating_shards, waited,
                 sinks.writers)
    _outputs("exceptions_out", op.merge("all_exceptions", judged.exceptions, rated.failures),
             sinks.exceptions)
    _outputs("windows_out", rated.windows, sinks.windows)
    credited = credit(live if live is not None else catalog, rated.journal_feed, recoverable)
    _outputs("candidates_out", op.filter_map("credited_candidates", credited, _candidates_of),
             sinks.candidates)
    if with_journal_feed is not None:
        with_journal_feed(credited)
    return flow


def _candidates_of(items: JournalFeed) -> list[InvoiceCandidate] | None:
    cands = [c for c in items if type(c) is InvoiceCandidate]
    return cands or None
