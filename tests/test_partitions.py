"""Several input partitions that agree (operators/protocol.py): a period is invoiced once every
partition has closed it or is idle, never on the watermark of the one that runs ahead, and what
its invoice holds does not depend on the order in which the partitions' ops reach a rater.

The harness is the flow's own pieces without a runtime: one Ingestor per partition (each with its
own dedup, as in the flow), one SubscriptionRater per subscription that knows the partitions, and
a delivery order chosen by the test (each partition's ops stay in their own order, as Bytewax
keeps them; between partitions anything goes).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from datetime import timedelta

from conftest import D, config, event, lines_of, period_totals, simple_catalog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.aggregators import Count
from operators.catalog import Catalog
from operators.dedup import MemoryDedup
from operators.ingest import Ingestor, IngestOutput
from operators.protocol import Close, Idle, Usage
from operators.rating import RaterState, SubscriptionRater
from operators.reconcile import StatsTotal
from schemas.records import InvoiceCandidate

PARTS = ("usage:0", "usage:1")
MINUTE = timedelta(minutes=1)


def partition_outputs(catalog: Catalog, lines: Sequence[bytes], parts: Sequence[int],
                      batch: int = 1) -> list[list[IngestOutput]]:
    """Each partition's ingest outputs, in its order: line i goes to partition parts[i]."""
    outs: list[list[IngestOutput]] = []
    for p in range(len(PARTS)):
        ing = Ingestor(catalog, config(), MemoryDedup(), "usage", p)
        mine = [(n, line) for n, (line, q) in enumerate(zip(lines, parts, strict=True)) if q == p]
        outs.append([ing.process(mine[i:i + batch]) for i in range(0, len(mine), batch)]
                    + [ing.finish()])
    return outs


def deliver(catalog: Catalog, outs: list[list[IngestOutput]], order: Sequence[int],
            partitions: tuple[str, ...] | None = PARTS) -> tuple[list[InvoiceCandidate],
                                                                  StatsTotal]:
    """Apply the partitions' outputs to the raters, taking the next output of partition
    order[k] at step k (then whatever is left, partition by partition)."""
    raters: dict[str, SubscriptionRater] = {}
    cursors = [0] * len(outs)
    stats = StatsTotal()
    candidates: list[InvoiceCandidate] = []
    schedule = [*order, *[p for p, o in enumerate(outs) for _ in o]]
    for p in schedule:
        if cursors[p] >= len(outs[p]):
            continue
        out = outs[p][cursors[p]]
        cursors[p] += 1
        stats.add(out.stats)
        for sub_id, ops in out.ops.items():
            rater = raters.get(sub_id)
            if rater is None:
                rater = raters[sub_id] = SubscriptionRater(catalog, sub_id, MINUTE,
                                                           partitions=partitions)
            candidates += [o for o in rater.apply(ops, PARTS[p])
                           if isinstance(o, InvoiceCandidate)]
    return candidates, stats


def ids_of(cands: list[InvoiceCandidate]) -> list[str]:
    return [c.invoice_candidate_id for c in cands]


def calls(*times: str, prefix: str = "e") -> list[bytes]:
    return [event(f"{prefix}{i}", time=t) for i, t in enumerate(times)]


def test_a_partition_that_runs_ahead_does_not_invoice_for_the_others() -> None:
    """Partition 0 reads into November (it closes October) while partition 1 still holds
    October usage: the invoice waits for partition 1 and holds all of it, no adjustment."""
    cat = simple_catalog()
    lines = calls("2026-10-05T10:00:00Z", "2026-11-03T00:00:00Z",  # partition 0
                  "2026-10-20T10:00:00Z", "2026-10-30T10:00:00Z",  # partition 1
                  "2026-11-04T00:00:00Z")
    outs = partition_outputs(cat, lines, [0, 0, 1, 1, 1])
    # all of partition 0 first, its end of input too
    cands, _ = deliver(cat, outs, [0, 0, 0])
    assert ids_of(cands) == ["sub-1:2026-10", "sub-1:2026-11"]
    assert lines_of(cands[0]) == {"usage:calls": D("3.00")}
    # per-partition watermarks (no partition list): partition 0 invoices October alone
    alone, _ = deliver(cat, outs, [0, 0, 0], partitions=None)
    assert lines_of(alone[0]) == {"usage:calls": D("1.00")}


def test_usage_late_for_its_own_partition_is_an_adjustment_whatever_arrives_first() -> None:
    """Partition 0 closes October, then sends late October usage; partition 1 has not closed
    October yet. The late usage is held, and rated as late once October closes: the invoice
    is the same whichever partition's ops reach the rater first."""
    cat = simple_catalog()
    lines = calls("2026-10-05T10:00:00Z", "2026-11-02T00:00:00Z",
                  "2026-10-28T00:00:00Z",  # late for partition 0: October is closed there
                  "2026-10-20T10:00:00Z", "2026-11-02T05:00:00Z")
    parts = [0, 0, 0, 1, 1]
    outs = partition_outputs(cat, lines, parts)
    seen = set()
    for order in ([0, 0, 0, 0], [1, 1, 1], [0, 1, 0, 1, 0, 1], [1, 0, 1, 0, 0]):
        cands, _ = deliver(cat, outs, order)
        invoice = [c for c in cands if c.adjusts is None and c.billing_period == "2026-10"]
        assert len(invoice) == 1
        assert lines_of(invoice[0]) == {"usage:calls": D("2.00")}, order
        assert period_totals(cands)[("sub-1", "2026-10", "usage:calls")] == D("3.00")
        seen.add(tuple(sorted(ids_of(cands))))
    assert seen == {("sub-1:2026-10", "sub-1:2026-10:adj-1", "sub-1:2026-11")}


def test_an_idle_partition_is_not_waited_for_until_it_sends_again() -> None:
    cat = simple_catalog()
    rater = SubscriptionRater(cat, "sub-1", MINUTE, partitions=PARTS)
    ts = 1_790_000_000  # 2026-09-21: a window of October below
    usage = Usage("2026-10", "calls", 1_790_899_200, _count(1), 1, ts)
    assert rater.apply([usage], PARTS[0]) == []
    close = Close("2026-10", "2026-10", 1_793_500_000)
    assert not _candidates(rater.apply([close], PARTS[0]))  # partition 1 may still hold usage
    (cand,) = _candidates(rater.apply([Idle(-1)], PARTS[1]))  # it says it is idle: invoice
    assert cand.invoice_candidate_id == "sub-1:2026-10"
    assert rater.state.idle == {PARTS[1]}
    # it sends October usage after all: late here though not for it (it closed nothing, so
    # its ingest sends no Settle): adjusted at once, never left on no document
    late = rater.apply([Usage("2026-10", "calls", 1_792_000_000, _count(2), 2, 1_792_000_000)],
                       PARTS[1])
    (adj,) = _candidates(late)
    assert adj.invoice_candidate_id == "sub-1:2026-10:adj-1"
    assert lines_of(adj) == {"usage:calls": D("2.00")}
    # it sends again: waited for again, for November
    rater.apply([Usage("2026-11", "calls", 1_793_600_000, _count(1), 1, 1_793_600_000)],
                PARTS[1])
    assert rater.state.idle == set()
    assert not _candidates(rater.apply([Close("2026-11", "2026-10", 1_796_200_000)],
                                       PARTS[0]))
    (nov,) = _candidates(rater.apply([Close("2026-11", "2026-10", 1_796_200_000)], PARTS[1]))
    assert nov.invoice_candidate_id == "sub-1:2026-11"


def test_every_partition_ended_closes_what_any_closed() -> None:
    cat = simple_catalog()
    rater = SubscriptionRater(cat, "sub-1", MINUTE, partitions=PARTS)
    assert not _candidates(rater.apply([Close("2026-11", "2026-10", 1), Idle(1)], PARTS[0]))
    got = _candidates(rater.apply([Idle(-1)], PARTS[1]))  # an empty partition, at its end
    assert ids_of(got) == ["sub-1:2026-10", "sub-1:2026-11"]


def test_a_snapshot_from_before_partitions_agreed_resumes() -> None:
    state = RaterState()
    for name in ("votes", "idle", "deferred", "settle_owed"):
        del state.__dict__[name]
    restored = pickle.loads(pickle.dumps(state))
    assert (restored.votes, restored.idle, restored.deferred, restored.settle_owed) == (
        {}, set(), {}, False)


def _count(n: int) -> Count:
    return Count(n)


def _candidates(out: list[object]) -> list[InvoiceCandidate]:
    return [o for o in out if isinstance(o, InvoiceCandidate)]


# -- any delivery order -------------------------------------------------------------------------

_TIMES = st.sampled_from([
    "2026-10-03T10:00:00Z", "2026-10-15T08:30:00Z", "2026-10-31T23:59:00Z",
    "2026-11-01T00:30:00Z", "2026-11-01T02:00:00Z", "2026-11-02T00:00:00Z",
    "2026-11-15T12:00:00Z", "2026-12-01T03:00:00Z"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(times=st.lists(st.tuples(_TIMES, st.integers(0, 1)), min_size=1, max_size=14),
       orders=st.lists(st.lists(st.integers(0, 1), max_size=30), min_size=2, max_size=4),
       batch=st.integers(1, 3))
def test_invoices_do_not_depend_on_the_delivery_order(times: list[tuple[str, int]],
                                                      orders: list[list[int]],
                                                      batch: int) -> None:
    """Whatever order the partitions' ops reach the raters in: the same invoices (each period's
    first document), and the same net amount per line over invoices and adjustments."""
    cat = simple_catalog(charges=[{"meter": "calls", "model": "per_unit", "unit_price": "1.00",
                                   "minimum": "5.00"}])
    lines = [event(f"e{i}", time=t) for i, (t, _) in enumerate(times)]
    outs = partition_outputs(cat, lines, [p for _, p in times], batch)
    results = [deliver(cat, outs, order) for order in orders]
    invoices = [sorted((c.invoice_candidate_id, sorted(lines_of(c).items()))
                       for c in cands if c.adjusts is None) for cands, _ in results]
    totals = [{k: v for k, v in period_totals(cands).items() if v} for cands, _ in results]
    assert all(i == invoices[0] for i in invoices)
    assert all(t == totals[0] for t in totals)
    # every accepted event is billed once, at 1.00 a call, over invoices and adjustments
    billed = sum(v for (_, _, line), v in totals[0].items() if line == "usage:calls")
    assert billed == results[0][1].rated
