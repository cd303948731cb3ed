"""What a finance or platform engineer wants to see after a run, as plain text."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
from typing import TextIO

from flows.runner import RunResult
from operators.money import ZERO, fmt
from schemas.records import InvoiceCandidate


def _table(rows: list[list[str]], out: TextIO, right: set[int] | None = None) -> None:
    right = right or set()
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                 for i, c in enumerate(row)]
        out.write("  " + "  ".join(cells).rstrip() + "\n")
        if n == 0:
            out.write("  " + "  ".join("-" * w for w in widths) + "\n")


def print_run_summary(result: RunResult, out: TextIO, detailed: bool = True) -> None:
    report = result.report
    events = report.events
    if detailed:
        out.write("\nCharges per customer (invoice candidates + adjustments)\n")
        per: dict[tuple[str, str, str], Decimal] = defaultdict(lambda: ZERO)
        for c in result.candidates:
            per[(c.customer_id, c.billing_period, c.currency)] += c.total
        rows = [["customer", "period", "currency", "amount with tax"]]
        rows += [[cust, period, cur, fmt(amount)] for (cust, period, cur), amount
                 in sorted(per.items())]
        _table(rows, out, right={3})

        out.write("\nInvoice candidates (adjustments from late usage folded into their original)\n")
        adjustments: dict[str, list[InvoiceCandidate]] = defaultdict(list)
        for c in result.candidates:
            if c.adjusts:
                adjustments[c.adjusts].append(c)
        rows = [["candidate", "customer", "service period", "lines", "subtotal", "tax", "total",
                 "adj", "adjusted total", "status"]]
        for c in result.candidates:
            if c.adjusts:
                continue
            adj = adjustments.get(c.invoice_candidate_id, [])
            total = c.total + sum((a.total for a in adj), ZERO)
            status = c.status if c.status == "ready" else "HELD: " + ", ".join(c.hold_reasons)
            rows.append([
                c.invoice_candidate_id, c.customer_id,
                f"{c.period_start:%Y-%m-%d %H:%M} → {c.period_end:%Y-%m-%d %H:%M}",
                str(len(c.lines)), f"{fmt(c.subtotal)} {c.currency}", fmt(c.tax_total),
                fmt(c.total), str(len(adj)), f"{fmt(total)} {c.currency}" if adj else "",
                status,
            ])
        _table(rows, out, right={3, 4, 5, 6, 7, 8})

    if detailed:
        _print_terms(result.candidates, out)
        if report.credits:
            out.write("\nPrepaid credits (as of the last invoice date)\n")
            rows = [["customer", "credit", "currency", "granted", "applied", "remaining",
                     "expired", "expires"]]
            rows += [[b.customer_id, b.credit_id, b.currency, b.granted, b.applied, b.remaining,
                      b.expired, b.expires[:10]] for b in report.credits]
            _table(rows, out, right={3, 4, 5, 6})
        _print_erp(result, out)

    out.write("\nEvents by bucket\n")
    rows = [["bucket", "events"], ["rated", str(events.rated)],
            ["duplicate", str(events.duplicates)], ["unmetered", str(events.unmetered)]]
    rows += [[f"exception {reason}", str(n)] for reason, n in events.exceptions.items()]
    rows += [["total", str(events.buckets_total)], ["read", str(events.read)]]
    _table(rows, out, right={1})
    if events.late_after_close:
        out.write(f"  {events.late_after_close} rated event(s) arrived after their period "
                  f"closed: {report.invoiced.adjustments} adjustment candidate(s)\n")
    if detailed and (events.exceptions_total or report.rating_failures):
        out.write("\nFirst exceptions\n")
        seen: set[str] = set()
        for e in result.exceptions:
            if e.reason in seen:
                continue
            seen.add(e.reason)
            where = e.position.get("line", e.position.get("offset"))
            out.write(f"  line {where}: {e.reason}: {e.error}\n")

    out.write("\nReconciliation (ingested = rated = invoiced, per subscription, period, meter)\n")
    rows = [["meter", "ingested", "rated", "invoiced", "values", "in windows"]]
    for meter, m in report.meters.items():
        rows.append([meter, m.ingested, m.rated, m.invoiced,
                     str(m.accepted_values), str(m.rated_window_events)])
    if len(rows) > 1:
        _table(rows, out, right={1, 2, 3, 4, 5})
    inv = report.invoiced
    for cur, totals in inv.totals_by_currency.items():
        out.write(f"  invoiced {cur}: ready {totals.ready}, held {totals.held}\n")
    out.write(f"  {inv.candidates} invoice candidates + {inv.adjustments} adjustments "
              f"({inv.ready} ready, {inv.held} held), "
              f"{report.rated_windows} rated windows + {report.rated_corrections} corrections\n")
    if report.balanced:
        out.write("  VERDICT: BALANCED — every event is in exactly one bucket and every total "
                  "agrees\n")
    else:
        out.write(f"  VERDICT: NOT BALANCED — {len(report.problems)} problem(s):\n")
        for p in report.problems[:20]:
            out.write(f"    - {p}\n")
    run = report.run
    if run is not None:
        out.write(f"\nThroughput: {events.read} events in {run.elapsed_seconds} s = "
                  f"{run.events_per_second} events/s with {run.workers} worker(s)\n")


def _print_terms(candidates: Sequence[InvoiceCandidate], out: TextIO) -> None:
    """Discounts and taxes, summed over candidates and adjustments, per entity and currency."""
    out.write("\nDiscounts and taxes (candidates + adjustments, per legal entity and currency)\n")
    discounts: dict[tuple[str, str, str], Decimal] = defaultdict(lambda: ZERO)
    taxes: dict[tuple[str, str, str], list[Decimal]] = defaultdict(lambda: [ZERO, ZERO])
    reverse: set[str] = set()
    for c in candidates:
        for line in c.lines:
            if line.kind == "discount":
                discounts[(c.legal_entity, c.currency, line.discount_id or "")] += line.amount
        for t in c.taxes:
            sums = taxes[(c.legal_entity, c.currency, f"{t.tax_code} ({t.rate})")]
            sums[0] += t.base
            sums[1] += t.amount
            if t.reverse_charge:
                reverse.add(t.tax_code)
    rows = [["entity", "currency", "discount / tax code", "base", "amount"]]
    rows += [[e, cur, f"discount {d}", "", fmt(v)] for (e, cur, d), v in sorted(discounts.items())]
    rows += [[e, cur, code, fmt(b), fmt(a)] for (e, cur, code), (b, a) in sorted(taxes.items())]
    if len(rows) == 1:
        out.write("  none (no legal entity declares tax codes, no subscription has discounts)\n")
        return
    _table(rows, out, right={3, 4})
    if reverse:
        out.write(f"  reverse charge ({', '.join(sorted(reverse))}): the customer accounts for "
                  "the tax; the AR invoices say so\n")


def _print_erp(result: RunResult, out: TextIO) -> None:
    erp = result.erp
    out.write("\nERP journals (one per legal entity, currency and month; debits = credits)\n")
    rows = [["journal", "account", "role", "debit", "credit"]]
    for j in erp.journals:
        for n, line in enumerate(j.lines):
            rows.append([j.journal_id if n == 0 else "", line.account, line.role,
                         fmt(line.debit), fmt(line.credit)])
        rows.append(["", "", "balanced" if j.total_debit == j.total_credit else "UNBALANCED",
                     fmt(j.total_debit), fmt(j.total_credit)])
    if len(rows) > 1:
        _table(rows, out, right={3, 4})
    quantity_only = (f", {len(erp.quantity_only)} quantity-only adjustments (nothing to post)"
                     if erp.quantity_only else "")
    out.write(f"  {len(erp.ar_invoices)} AR invoices, {len(erp.schedules)} revenue schedules"
              f"{quantity_only}\n")
    out.write("\nInvoice exceptions (kept out of the ERP until the master data is fixed)\n")
    if not erp.exceptions:
        out.write("  none\n")
    for exc in erp.exceptions:
        out.write(f"  {exc.invoice_candidate_id:<34} {fmt(exc.total):>10} {exc.currency}  "
                  f"{', '.join(exc.reasons)}: {'; '.join(exc.details)}\n")
