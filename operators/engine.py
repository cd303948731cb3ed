"""The whole rating pipeline as one sequential function, with no runtime underneath.

This is the specification the Bytewax flow must match: property tests run it over generated
workloads, and flow tests compare the dataflow's outputs against it. It is the same Ingestor and
SubscriptionRater the flow uses, driven in input order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from operators.catalog import Catalog
from operators.credits import settle
from operators.dedup import MemoryDedup
from operators.ingest import IngestConfig, Ingestor, IngestOutput
from operators.protocol import PeriodRetired
from operators.rating import SubscriptionRater
from operators.reconcile import StatsTotal
from schemas.records import ExceptionRecord, InvoiceCandidate, RatedWindow


@dataclass
class EngineResult:
    stats: StatsTotal = field(default_factory=StatsTotal)
    exceptions: list[ExceptionRecord] = field(default_factory=list)
    windows: list[RatedWindow] = field(default_factory=list)
    candidates: list[InvoiceCandidate] = field(default_factory=list)
    retired: list[PeriodRetired] = field(default_factory=list)


def run_engine(catalog: Catalog, lines: Iterable[bytes], config: IngestConfig,
               batch_size: int = 1000) -> EngineResult:
    ingestor = Ingestor(catalog, config, MemoryDedup(), "file", 0)
    raters: dict[str, SubscriptionRater] = {}
    result = EngineResult()

    def drain(out: IngestOutput) -> None:
        result.stats.add(out.stats)
        result.exceptions.extend(out.exceptions)
        for sub_id, ops in out.ops.items():
            rater = raters.get(sub_id)
            if rater is None:
                rater = raters[sub_id] = SubscriptionRater(catalog, sub_id, config.window)
            for item in rater.apply(ops):
                if isinstance(item, RatedWindow):
                    result.windows.append(item)
                elif isinstance(item, ExceptionRecord):
                    result.exceptions.append(item)
                elif isinstance(item, PeriodRetired):
                    result.retired.append(item)
                else:
                    result.candidates.append(item)

    batch: list[tuple[int, bytes]] = []
    for number, line in enumerate(lines, start=1):
        batch.append((number, line))
        if len(batch) >= batch_size:
            drain(ingestor.process(batch))
            batch = []
    drain(ingestor.process(batch))
    drain(ingestor.finish())
    result.candidates = settle(catalog, result.candidates)
    return result
