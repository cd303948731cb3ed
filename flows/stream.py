"""`meterwax stream`: the production dataflow. Kafka in; ClickHouse, Redis and Kafka out.

The dataflow is `flows.pipeline.build_flow`, the same one file mode runs; only the sources and
sinks differ:

    input               file                      every partition of --input-topic, resumed
    dedup               in memory                 Redis, replay-safe, 35-day TTL
    rejected events     exceptions.jsonl          dead-letter topic: original bytes + headers
    rated windows       embedded chDB             ClickHouse (server or chDB) + running charges
    invoice candidates  invoice_candidates.jsonl  candidates topic, keyed by candidate id
    ERP payloads        erp_*.jsonl               AR invoices, schedules, invoice exceptions

Recovery (Bytewax's SQLite store) snapshots input offsets together with all ingest, window,
period and dedup-origin state, so a restarted flow resumes exactly; outputs are at-least-once
and every sink is idempotent by id (ClickHouse ReplacingMergeTree + dedup tokens, keyed Kafka
messages, sequence-guarded Redis hashes).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bytewax.operators as op
import msgspec
from bytewax.operators import StatefulBatchLogic
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from flows.kafka_io import KafkaChunkSource
from flows.metrics import (
    contracts_applied,
    invoice_exceptions,
    record_exceptions,
    windows_rated,
)
from flows.pipeline import LiveCatalog, Sinks, Writers, build_flow
from flows.runner import candidate_order

# The settings live in flows.settings; SettingsError is re-exported for code that knew it here.
from flows.settings import SettingsError as SettingsError
from flows.settings import StreamSettings, Topics
from operators.catalog import Catalog, CatalogError
from operators.contracts import catalog_of
from operators.erp import build_erp
from operators.ingest import IngestConfig, IngestStats
from operators.protocol import PeriodRetired
from schemas.erp import Journal
from schemas.records import (
    ENCODER,
    ExceptionRecord,
    InvoiceCandidate,
    RatedWindow,
)
from sinks.adapters import CallbackSink, MappedSink
from sinks.clickhouse.rows import documents_of, rejections_of
from sinks.contracts import read_contracts
from sinks.kafka import KafkaTopicsSink, Message, dead_letters, ensure_topics, keyed


def _catalog_for(catalog: Catalog | LiveCatalog, subscriptions: Iterable[str]) -> Catalog:
    return catalog.holding(subscriptions) if isinstance(catalog, LiveCatalog) else catalog


def erp_messages(catalog: Catalog | LiveCatalog, topics: Topics,
                 candidates: Sequence[InvoiceCandidate]) -> list[Message]:
    """Candidates and the per-candidate ERP payloads, as keyed messages. Journals summarise a
    month across subscriptions and come from their own step (`JournalLogic`). With live
    contracts, the ERP payloads use the newest contracts this process has read (a corrected
    tax registration shows on the next invoice built)."""
    erp = build_erp(_catalog_for(catalog, {c.subscription_id for c in candidates}), candidates)
    return (keyed(topics.candidates, candidates, "invoice_candidate_id")
            + keyed(topics.ar_invoices, erp.ar_invoices, "ar_invoice_id")
            + keyed(topics.schedules, erp.schedules, "schedule_id")
            + keyed(topics.invoice_exceptions, erp.exceptions, "invoice_candidate_id"))


class JournalState(msgspec.Struct, kw_only=True):
    candidates: list[InvoiceCandidate]
    retired: list[str]  # subscriptions that will issue nothing more for this month


class JournalLogic(StatefulBatchLogic[InvoiceCandidate | PeriodRetired, Journal, Any]):
    """One summary journal per legal entity, currency and month, kept current as candidates
    arrive. Each emission is the whole journal under its id, so the compacted journals topic
    converges to exactly the journal file mode writes; an ERP adapter upserts by journal id and
    posts it when it locks the period. Candidates are kept by id, which makes replays
    idempotent.

    The month's state is dropped once every subscription that issued a candidate into it has
    retired the period (operators/rating.py): none of them can issue another, so the journal
    last emitted is final, and the step's state follows the months within their retention
    horizon, not the months elapsed. Each subscription's retirement reaches this key after its
    candidates (one rater emits both, in order, into the same feed)."""

    def __init__(self, catalog: Catalog | LiveCatalog, resume: Any) -> None:
        self.catalog = catalog
        self.candidates: dict[str, InvoiceCandidate] = {}
        self.retired: set[str] = set()
        if resume is not None:
            state = _JOURNAL_STATE.decode(resume)
            if isinstance(state, JournalState):
                self.candidates = {c.invoice_candidate_id: c for c in state.candidates}
                self.retired = set(state.retired)
            else:  # the snapshot of the builds before retirement: the candidates alone
                self.candidates = {c.invoice_candidate_id: c for c in state}

    def on_batch(self, values: list[InvoiceCandidate | PeriodRetired]
                 ) -> tuple[list[Journal], bool]:
        changed = False
        for item in values:
            if isinstance(item, PeriodRetired):
                self.retired.add(item.subscription_id)
            else:
                self.candidates[item.invoice_candidate_id] = item
                changed = True
        journals: list[Journal] = []
        if changed:
            ordered = sorted(self.candidates.values(), key=candidate_order)
            catalog = _catalog_for(self.catalog, {c.subscription_id for c in ordered})
            journals = build_erp(catalog, ordered).journals
        if self.retired >= {c.subscription_id for c in self.candidates.values()}:
            return journals, StatefulBatchLogic.DISCARD
        return journals, StatefulBatchLogic.RETAIN

    def snapshot(self) -> Any:
        return ENCODER.encode(JournalState(candidates=list(self.candidates.values()),
                                           retired=sorted(self.retired)))


_JOURNAL_STATE = msgspec.json.Decoder(JournalState | list[InvoiceCandidate])


def build_stream(settings: StreamSettings, catalog: LiveCatalog,
                 on_stats: Callable[[Sequence[IngestStats]], None] | None = None) -> Any:
    """The production dataflow. `catalog`: the contracts as read when the process started;
    the flow itself follows the contracts topic (flows/kafka_io.py) and keeps it current."""
    from sinks.clickhouse import open_store
    from sinks.clickhouse.sink import EpochWriter
    from sinks.redis_dedup import RedisDedup
    from sinks.running_charges import RunningCharges

    kafka = settings.kafka()
    topics = settings.topics
    store = open_store(settings.clickhouse)
    charges = RunningCharges(settings.redis_url, namespace=settings.redis_namespace)
    producer = KafkaTopicsSink(kafka)
    # Each table's rows are stored by the step that makes them, awaited at its snapshots
    # (flows/pipeline.py Writers), rather than by a sink that stops the flow for every insert.
    writing: tuple[EpochWriter[Any], ...] = (
        EpochWriter(store.write, "rated-windows"),
        EpochWriter(store.write_events, "ledger"),
        EpochWriter(lambda records: store.write_rejections(
            rejections_of(records, datetime.now(UTC))), "rejections"))
    writers = Writers(windows=writing[0], ledger=writing[1], rejections=writing[2])

    def dedup_factory(_snapshot: Any) -> Any:
        # The dedup state lives in Redis, not in the Bytewax snapshot.
        return RedisDedup(settings.redis_url, namespace=settings.redis_namespace,
                          ttl=settings.dedup_ttl)

    def exceptions_to_messages(records: list[ExceptionRecord]) -> list[Message]:
        record_exceptions(records)
        return dead_letters(topics.dead_letter, records)

    def candidates_to_messages(cands: list[InvoiceCandidate]) -> list[Message]:
        return erp_messages(catalog, topics, cands)

    def apply_charges(items: Sequence[list[RatedWindow]]) -> None:
        windows = [w for chunk in items for w in chunk]
        windows_rated(windows, queryable=False)
        charges.apply(windows, catalog.holding({w.subscription_id for w in windows}))
        windows_rated(windows, queryable=True)

    # What the API lists, to ClickHouse beside the Kafka topics (idempotent: replayed copies
    # collapse by id). The ERP payloads are built again here rather than shared with the Kafka
    # mapping: candidates are a few per subscription and month, and the two sinks stay apart.
    def store_documents(items: Sequence[list[InvoiceCandidate]]) -> None:
        cands = [c for chunk in items for c in chunk]
        if cands:
            erp = build_erp(_catalog_for(catalog, {c.subscription_id for c in cands}), cands)
            store.write_documents(documents_of(cands, erp.ar_invoices, erp.exceptions,
                                               datetime.now(UTC)))
            invoice_exceptions(erp.exceptions)

    def store_journals(items: Sequence[list[Journal]]) -> None:
        journals = [j for chunk in items for j in chunk]
        if journals:
            store.write_documents(documents_of([], [], [], datetime.now(UTC), journals))

    sinks = Sinks(
        exceptions=MappedSink(producer, exceptions_to_messages),
        stats=CallbackSink(on_stats or (lambda _items: None)),
        windows=CallbackSink(apply_charges),
        candidates=[MappedSink(producer, candidates_to_messages), CallbackSink(store_documents)],
        writers=writers,
    )
    config = IngestConfig(window=settings.window, allowed_lateness=settings.allowed_lateness,
                          max_future=settings.max_future, retention=settings.dedup_ttl,
                          adjustment_cycle=settings.adjustment_cycle, ledger=True)
    source = KafkaChunkSource(kafka, settings.input_topic, settings.chunk, settings.stop_at_end,
                              contracts=topics.contracts,
                              idle_timeout=settings.idle_timeout.total_seconds())
    def journals(feed: Any) -> None:
        singles = op.flat_map("journal_each", feed, lambda chunk: chunk)
        keyed_c = op.key_on("key_journal", singles,
                            _journal_key)
        js = op.stateful_batch("journal", keyed_c,
                               lambda resume: JournalLogic(catalog, resume))
        unkeyed = op.key_rm("journal_unkey", js)
        out = op.map("journal_messages", unkeyed,
                     lambda j: keyed(topics.journals, [j], "journal_id"))
        op.output("journals_out", out, producer)
        # Beside the topic, in ClickHouse: the API's reconciliation reads the journals there.
        op.output("journals_store", op.map("journal_rows", unkeyed, lambda j: [j]),
                  CallbackSink(store_journals))

    flow = build_flow(catalog.current, config, source, sinks, dedup_factory=dedup_factory,
                      flow_id="meterwax_stream", recoverable=True, with_journal_feed=journals,
                      live=catalog, partitions=source.list_parts())
    return flow, store, writing


def _journal_key(item: InvoiceCandidate | PeriodRetired) -> str:
    if isinstance(item, PeriodRetired):
        return f"{item.legal_entity}|{item.currency}|{item.period}"
    return f"{item.legal_entity}|{item.currency}|{item.billing_period}"


def prepare_recovery_dir(recovery: Path, partitions: int, process_id: int = 0,
                         processes: int = 1) -> Path:
    """Create the recovery partitions this process owns that the folder lacks: of the cluster's
    `partitions` (one per worker, so snapshot writes do not contend), those whose index is
    `process_id` modulo `processes`.

    Bytewax finds a cluster's partitions in the folders of all its processes and needs each
    exactly once (every partition file records its index and the count). Each process creating
    only its own share makes both layouts work: one shared folder, or a folder per process, as
    each pod of the StatefulSet has its own volume (k8s/statefulset.yaml). A folder that exists
    but holds none (a fresh volume, possibly with its `lost+found`) is initialized, not refused;
    existing partitions are never touched, since they are the state to resume from. The count is
    fixed when the partitions are created: a cluster of another size needs a new store."""
    recovery.mkdir(parents=True, exist_ok=True)
    mine = [k for k in range(partitions) if k % processes == process_id]
    held = recovery.glob("part-*.sqlite3") if processes == 1 else (
        recovery / f"part-{k}.sqlite3" for k in mine)
    if any(p.exists() for p in held):
        # Resuming: left as they are, even if the worker count changed (Bytewax then reports
        # the partitions inconsistent, rather than this silently starting from nothing).
        return recovery
    if processes == 1:
        init_db_dir(recovery, partitions)
        return recovery
    # Bytewax creates whole sets only: make one beside the folder's own files and keep this
    # process's share, each moved in by a rename (never half a file under its final name).
    scratch = Path(tempfile.mkdtemp(prefix=".init-", dir=recovery))
    try:
        init_db_dir(scratch, partitions)
        for k in mine:
            os.replace(scratch / f"part-{k}.sqlite3", recovery / f"part-{k}.sqlite3")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return recovery


def run_stream(settings: StreamSettings,
               on_stats: Callable[[Sequence[IngestStats]], None] | None = None) -> None:
    kafka = settings.kafka()
    topics = settings.topics
    held = read_contracts(kafka, topics.contracts)  # creates the topic when missing
    try:
        catalog = catalog_of(held.specs)
    except CatalogError:
        # Records no file could hold (written around `contracts publish`): the flow applies
        # what it can of them and refuses the rest; the sinks start from none.
        catalog = catalog_of({})
    processes = max(1, len(settings.addresses))
    recovery = prepare_recovery_dir(Path(settings.recovery_dir),
                                    max(1, settings.workers * processes),
                                    settings.process_id or 0, processes)
    ensure_topics(kafka,
                  compacted=[topics.candidates, topics.ar_invoices, topics.journals,
                             topics.schedules, topics.invoice_exceptions],
                  plain=[topics.dead_letter])
    live = LiveCatalog(catalog, held.end_offset, on_update=contracts_applied)
    flow, store, writing = build_stream(settings, live, on_stats)
    finished = False
    try:
        cli_main(flow, workers_per_process=settings.workers, process_id=settings.process_id,
                 addresses=list(settings.addresses) or None,
                 epoch_interval=settings.epoch_interval,
                 recovery_config=RecoveryConfig(str(recovery)))
        finished = True
    finally:
        try:
            # What the last epoch made is stored before the process ends. After a failure of
            # the flow, that failure is the one reported, not a write that failed with it.
            for writer in writing:
                writer.close(raise_error=finished)
        finally:
            store.close()
