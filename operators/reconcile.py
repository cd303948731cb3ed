"""Reconciliation: prove that usage, rated and invoiced totals agree, and say where they do not.

Inputs are the pipeline's own outputs (ingest counts, rated window rows, invoice candidates,
exception records), so the proof covers the hand-offs between stages, not just the arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from operators.catalog import Catalog
from operators.credits import credit_report, invoice_date, over_granted
from operators.erp import ErpOutput, erp_chain
from operators.ingest import IngestStats
from operators.money import ZERO, fmt, round_money
from schemas.reconciliation import (
    CreditBalance,
    ErpSummary,
    EventBuckets,
    ExcludedMonth,
    InvoicedSummary,
    MeterTotals,
    Reconciliation,
    StatusTotals,
)
from schemas.records import REASONS, ExceptionRecord, InvoiceCandidate, RatedWindow


class StatsTotal(IngestStats):
    """The counts of a whole run: every batch's IngestStats merged."""

    def add(self, s: IngestStats) -> None:
        self.read += s.read
        self.blank += s.blank
        self.duplicates += s.duplicates
        self.unmetered += s.unmetered
        self.unmetered_not_in_plan += s.unmetered_not_in_plan
        self.rated += s.rated
        self.late_after_close += s.late_after_close
        for reason, n in s.exceptions.items():
            self.exceptions[reason] += n
        for key, agg in s.ingested.items():
            mine = self.ingested.get(key)
            if mine is None:
                self.ingested[key] = agg.copy()
            else:
                mine.merge(agg)
        for meter, n in s.contributions.items():
            self.contributions[meter] = self.contributions.get(meter, 0) + n
        for outcome, n in s.retried.items():
            self.retried[outcome] = self.retried.get(outcome, 0) + n


@dataclass(frozen=True, slots=True)
class RatedSummary:
    """What the rated-window store holds for one (subscription, period, meter), final revisions
    only. Computed by `summarize` from rows, or by one GROUP BY in ClickHouse."""

    currency: str
    cumulative_quantity: Decimal  # of the last rating step
    cumulative_amount: Decimal  # of the last rating step
    delta_sum: Decimal  # sum of the rows' amount deltas
    events: int  # sum of the rows' event counts
    windows: int  # window rows
    corrections: int = 0  # correction rows (schemas/records.RatedWindow)


RatedKey = tuple[str, str, str]


def summarize(rows: Iterable[RatedWindow]) -> dict[RatedKey, RatedSummary]:
    final: dict[str, RatedWindow] = {}
    for row in rows:
        prev = final.get(row.row_id)
        if prev is None or row.revision > prev.revision:
            final[row.row_id] = row
    groups: dict[RatedKey, list[RatedWindow]] = {}
    for row in final.values():
        groups.setdefault((row.subscription_id, row.period, row.meter), []).append(row)
    out = {}
    for key, group in groups.items():
        last = max(group, key=lambda r: r.rating_seq)
        out[key] = RatedSummary(
            currency=last.currency,
            cumulative_quantity=last.cumulative_quantity,
            cumulative_amount=last.cumulative_amount,
            delta_sum=sum((r.amount_delta for r in group), ZERO),
            events=sum(r.event_count for r in group),
            windows=sum(1 for r in group if r.row_kind == "window"),
            corrections=sum(1 for r in group if r.row_kind == "correction"),
        )
    return out


@dataclass
class _Invoiced:
    """The invoiced side: candidates plus their adjustments, per (subscription, period, meter)."""

    quantity: dict[RatedKey, Decimal]
    amount: dict[RatedKey, Decimal]
    totals: dict[str, dict[str, Decimal]]  # currency -> status -> total with tax
    billed: set[tuple[str, str]]  # (subscription, period) with an original candidate
    counts: dict[str, int]


def reconcile(catalog: Catalog, stats: StatsTotal, rated: dict[RatedKey, RatedSummary],
              candidates: Sequence[InvoiceCandidate], exceptions: Iterable[ExceptionRecord],
              erp: ErpOutput | None = None) -> Reconciliation:
    """The whole proof. Given the ERP output, it also follows each legal entity, currency and
    month from raw usage to the journal's receivable, and the chain's problems count like any
    other: `balanced` is false if any stage disagrees."""
    problems: list[str] = []
    exc_total, bucketed, rating_failures = _buckets(stats, exceptions, problems)
    window_events: dict[str, int] = {}
    for (_, _, meter), r in rated.items():
        window_events[meter] = window_events.get(meter, 0) + r.events
    invoiced = _invoiced(candidates, problems)
    per_meter = _per_meter(stats, rated, invoiced, problems)
    for meter in sorted(set(stats.contributions) | set(window_events)):
        if stats.contributions.get(meter, 0) != window_events.get(meter, 0):
            problems.append(f"meter {meter}: {stats.contributions.get(meter, 0)} accepted values, "
                            f"{window_events.get(meter, 0)} counted in rated windows")
    erp_summary = None if erp is None else _erp_summary(catalog, stats, rated, candidates, erp,
                                                         problems)
    dates = [invoice_date(c) for c in candidates]
    balances = credit_report(catalog, candidates, max(dates) if dates else None)
    problems.extend(over_granted(balances))
    counts = invoiced.counts
    return Reconciliation(
        balanced=not problems,
        problems=problems,
        events=EventBuckets(
            read=stats.read,
            blank_lines_skipped=stats.blank,
            rated=stats.rated,
            duplicates=stats.duplicates,
            unmetered=stats.unmetered,
            unmetered_not_in_plan=stats.unmetered_not_in_plan,
            exceptions=dict(stats.exceptions),
            exceptions_total=exc_total,
            late_after_close=stats.late_after_close,
            buckets_total=bucketed,
            retried=dict(sorted(stats.retried.items())),
        ),
        rating_failures=rating_failures,
        meters={
            meter: MeterTotals(ingested=fmt(vals["ingested"]), rated=fmt(vals["rated"]),
                               invoiced=fmt(vals["invoiced"]),
                               accepted_values=stats.contributions.get(meter, 0),
                               rated_window_events=window_events.get(meter, 0))
            for meter, vals in sorted(per_meter.items())
        },
        invoiced=InvoicedSummary(
            candidates=counts["invoice"],
            adjustments=counts["adjustment"],
            ready=counts["ready"],
            held=counts["held"],
            totals_by_currency={cur: StatusTotals(ready=fmt(t["ready"]), held=fmt(t["held"]))
                                for cur, t in sorted(invoiced.totals.items())},
        ),
        rated_windows=sum(r.windows for r in rated.values()),
        rated_corrections=sum(r.corrections for r in rated.values()),
        billing_start=catalog.billing_start.key if catalog.billing_start else None,
        excluded_by_billing_start=[
            ExcludedMonth(customer_id=c, subscription_id=s, period=p)
            for c, s, p in catalog.excluded_months()],
        erp=erp_summary,
        credits=[CreditBalance(**b) for b in balances],
    )


def _erp_summary(catalog: Catalog, stats: StatsTotal, rated: dict[RatedKey, RatedSummary],
                 candidates: Sequence[InvoiceCandidate], erp: ErpOutput, problems: list[str]
                 ) -> ErpSummary:
    """The ERP section: document counts and the usage -> rated -> invoiced -> receivable
    chain; the chain's problems are added to `problems`."""
    usage = {key: (stats.ingested[key].quantity() if key in stats.ingested else ZERO,
                   rated[key].cumulative_quantity if key in rated else ZERO)
             for key in set(stats.ingested) | set(rated)}
    chain, chain_problems = erp_chain(
        catalog, {k: v.cumulative_amount for k, v in rated.items()}, candidates, erp, usage)
    problems.extend(chain_problems)
    return ErpSummary(
        ar_invoices=len(erp.ar_invoices),
        journals=len(erp.journals),
        revenue_schedules=len(erp.schedules),
        invoice_exceptions=len(erp.exceptions),
        quantity_only_adjustments_not_posted=len(erp.quantity_only),
        chain=chain,
    )


def _buckets(stats: StatsTotal, exceptions: Iterable[ExceptionRecord], problems: list[str]
             ) -> tuple[int, int, int]:
    """Every event read lands in exactly one bucket, and every counted exception was written.
    Returns (exceptions counted, events in buckets, rating failures)."""
    exc_total = sum(stats.exceptions.values())
    bucketed = stats.duplicates + stats.unmetered + exc_total + stats.rated
    if bucketed != stats.read:
        problems.append(f"events: read {stats.read} but buckets hold {bucketed}")
    written: dict[str, int] = dict.fromkeys(REASONS, 0)
    rating_failures = 0
    for exc in exceptions:
        if exc.position.get("step") == "rating":
            # Its events were counted as rated at ingest; the gap shows per meter.
            rating_failures += 1
            problems.append(f"{exc.exception_id}: {exc.reason}: {exc.error}")
            continue
        written[exc.reason] += 1
    for reason in REASONS:
        if written[reason] != stats.exceptions[reason]:
            problems.append(f"exceptions {reason}: counted {stats.exceptions[reason]}, "
                            f"written {written[reason]}")
    return exc_total, bucketed, rating_failures


def _invoiced(candidates: Iterable[InvoiceCandidate], problems: list[str]) -> _Invoiced:
    side = _Invoiced({}, {}, {}, set(), {"invoice": 0, "adjustment": 0, "ready": 0, "held": 0})
    seen_ids: set[str] = set()
    for cand in candidates:
        if cand.invoice_candidate_id in seen_ids:
            problems.append(f"candidate {cand.invoice_candidate_id} emitted twice")
        seen_ids.add(cand.invoice_candidate_id)
        side.counts[cand.candidate_type] += 1
        side.counts[cand.status] += 1
        if cand.candidate_type == "invoice":
            side.billed.add((cand.subscription_id, cand.billing_period))
        line_sum = sum((line.amount for line in cand.lines), ZERO)
        if line_sum != cand.subtotal:
            problems.append(f"candidate {cand.invoice_candidate_id}: lines sum to {line_sum}, "
                            f"subtotal says {cand.subtotal}")
        tax_sum = sum((t.amount for t in cand.taxes), ZERO)
        applied = sum((c.amount for c in cand.credits_applied), ZERO)
        if tax_sum != cand.tax_total or cand.subtotal + cand.tax_total != cand.total \
                or cand.total - applied != cand.amount_due:
            problems.append(f"candidate {cand.invoice_candidate_id}: subtotal {cand.subtotal}, "
                            f"tax {cand.tax_total} (taxes sum to {tax_sum}), total {cand.total}, "
                            f"credits {applied} and amount due {cand.amount_due} disagree")
        zero = round_money(ZERO, cand.currency)
        cur = side.totals.setdefault(cand.currency, {"ready": zero, "held": zero})
        cur[cand.status] += cand.total
        for line in cand.lines:
            if line.kind == "usage" and line.meter is not None:
                key = (cand.subscription_id, cand.billing_period, line.meter)
                side.quantity[key] = side.quantity.get(key, ZERO) + (line.quantity or ZERO)
                side.amount[key] = side.amount.get(key, ZERO) + line.amount
    return side


def _per_meter(stats: StatsTotal, rated: dict[RatedKey, RatedSummary], invoiced: _Invoiced,
               problems: list[str]) -> dict[str, dict[str, Decimal]]:
    """Per (subscription, period, meter): ingested == rated == invoiced, window deltas sum to the
    cumulative amount, and the rounded rated amount is what was invoiced. Returns per-meter
    totals."""
    per_meter: dict[str, dict[str, Decimal]] = {}
    keys = set(stats.ingested) | set(rated) | {k for k, v in invoiced.quantity.items() if v}
    for key in sorted(keys):
        sub_id, period, meter = key
        ingested = stats.ingested[key].quantity() if key in stats.ingested else ZERO
        summary = rated.get(key)
        rated_q = summary.cumulative_quantity if summary else ZERO
        billed_q = invoiced.quantity.get(key, ZERO)
        m = per_meter.setdefault(meter, {"ingested": ZERO, "rated": ZERO, "invoiced": ZERO})
        m["ingested"] += ingested
        m["rated"] += rated_q
        m["invoiced"] += billed_q
        label = f"{sub_id} {period} {meter}"
        if not ingested == rated_q == billed_q:
            problems.append(f"{label}: ingested {ingested}, rated {rated_q}, "
                            f"invoiced {billed_q}")
        if summary is not None:
            if summary.delta_sum != summary.cumulative_amount:
                problems.append(f"{label}: window deltas sum to {summary.delta_sum}, "
                                f"cumulative is {summary.cumulative_amount}")
            rounded = round_money(summary.cumulative_amount, summary.currency)
            if rounded != invoiced.amount.get(key, ZERO):
                problems.append(f"{label}: rated {summary.cumulative_amount} rounds to "
                                f"{rounded}, invoiced {invoiced.amount.get(key, ZERO)}")
        if (sub_id, period) not in invoiced.billed and (ingested or rated_q):
            problems.append(f"{label}: usage with no invoice candidate for the period")
    return per_meter
