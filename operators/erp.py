"""From invoice candidates to what an ERP posts: AR invoices, summary journals, revenue
schedules, and the invoice exceptions that keep bad master data out of the books.

Pure: catalog and candidates in, ERP payloads (schemas/erp.py) out. The ERP is the system of
record, so only *ready* candidates whose legal entity can post them become documents; everything
else is an `InvoiceException` naming what to fix. Ids derive from candidate ids, so re-running
after the catalog is fixed produces the same ids: nothing is posted twice, nothing is lost.

Rounding: every amount here is already rounded to minor units (invoice lines are rounded once, in
invoicing). Schedules split a line by day with *cumulative rounding*: entry d is
round(cumulative exact amount through d) - round(cumulative through d-1), and the last entry takes
the line amount exactly. Entries therefore sum to the line to the minor unit, each is within one
minor unit of its exact share, and negative daily shares (a volume tier that lowers the amount)
need no special case.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache

from operators import ids
from operators.catalog import Catalog
from operators.invoicing import SCOPE_KINDS
from operators.money import ZERO, quantum, round_money
from operators.periods import Month
from schemas.erp import (
    ArCreditApplied,
    ArInvoice,
    ArInvoiceLine,
    ArTaxLine,
    InvoiceException,
    Journal,
    JournalLine,
    RevenueSchedule,
    ScheduleEntry,
)
from schemas.reconciliation import ChainQuantities, ChainRow
from schemas.records import InvoiceCandidate, InvoiceLine

_REVENUE_ROLE = {"usage": "usage_revenue", "minimum_true_up": "usage_revenue",
                 "fixed_fee": "subscription_revenue", "discount": "discounts"}

_ONE_US = timedelta(microseconds=1)


@dataclass
class ErpOutput:
    ar_invoices: list[ArInvoice] = field(default_factory=list)
    journals: list[Journal] = field(default_factory=list)
    schedules: list[RevenueSchedule] = field(default_factory=list)
    exceptions: list[InvoiceException] = field(default_factory=list)
    # Ready adjustments whose lines changed only quantities: nothing to post.
    quantity_only: list[str] = field(default_factory=list)


def last_service_day(end: datetime) -> date:
    """[start, end) excludes `end`: the last day is the one holding the instant before it."""
    return (end - _ONE_US).date()


def service_days(start: datetime, end: datetime) -> list[date]:
    return list(_service_days(start, end))


# Every subscription billed for the same month has the same service days: a run over ten
# thousand subscriptions asked for the same few ranges a hundred thousand times.
@lru_cache(maxsize=1024)
def _service_days(start: datetime, end: datetime) -> tuple[date, ...]:
    first, last = start.date(), last_service_day(end)
    return tuple(first + timedelta(days=i) for i in range((last - first).days + 1))


# -- schedules --------------------------------------------------------------------------------


def cumulative_split(days: Sequence[date], exact: Mapping[date, Decimal], total: Decimal,
                     currency: str) -> list[ScheduleEntry]:
    """Entries for every day in `days`, summing exactly to `total` (see module docstring).
    `exact` holds each day's exact share; shares on days outside `days` count on the nearest
    day inside, so no amount is lost to a date mismatch."""
    if not days:
        msg = "a schedule needs at least one day"
        raise ValueError(msg)
    first, last = days[0], days[-1]
    shares: dict[date, Decimal] = dict.fromkeys(days, ZERO)
    for day, amount in exact.items():
        shares[min(max(day, first), last)] += amount
    q = quantum(currency)
    running = ZERO
    booked = ZERO.quantize(q)
    entries: list[ScheduleEntry] = []
    append = entries.append
    for day in days[:-1]:
        share = shares[day]
        if share:
            running += share
            upto = running.quantize(q, rounding=ROUND_HALF_UP)
            append(ScheduleEntry(date=day, amount=upto - booked))
            booked = upto
        else:
            # Nothing added: the rounded running total is `booked` again, and booked - booked
            # is the currency's zero. Most days of a usage line's schedule are such days.
            append(_zero_entry(day, currency))
    append(ScheduleEntry(date=last, amount=total - booked))  # the line amount exactly
    return entries


@lru_cache(maxsize=4096)
def _zero_entry(day: date, currency: str) -> ScheduleEntry:
    """The entry of a day that recognizes nothing, one object for every schedule (entries are
    frozen): ten thousand subscriptions' usage schedules hold millions of them."""
    return ScheduleEntry(date=day, amount=round_money(ZERO, currency))


@lru_cache(maxsize=1024)
def _ratable(amount_text: str, start: datetime, end: datetime, currency: str
             ) -> tuple[ScheduleEntry, ...]:
    """A ratable line's entries. The same for every subscription of a plan billed for the same
    days, so worked out once per fee, period and text of the amount (the text, not the value:
    450.0 and 450.00 end on days of different exponents), and shared (entries are frozen)."""
    days = _service_days(start, end)
    amount = Decimal(amount_text)
    per_day = amount / len(days)
    return tuple(cumulative_split(days, dict.fromkeys(days, per_day), amount, currency))


def schedule_entries(line: InvoiceLine, start: datetime, end: datetime, currency: str
                     ) -> list[ScheduleEntry]:
    days = _service_days(start, end)
    recognition = line.revenue_recognition
    if recognition == "ratable":
        return list(_ratable(str(line.amount), start, end, currency))
    if recognition == "consumption" and line.kind == "usage" and line.consumption:
        daily = {date.fromisoformat(day): Decimal(amount) for day, amount in line.consumption}
        return cumulative_split(days, daily, line.amount, currency)
    # point_in_time, minimum true-ups (the shortfall exists only once the period is over), and
    # usage lines with no rated consumption: recognized on the last day of the service period.
    return cumulative_split(days, {days[-1]: line.amount}, line.amount, currency)


def discount_entries(line: InvoiceLine, scope: Sequence[RevenueSchedule], start: datetime,
                     end: datetime, currency: str) -> list[ScheduleEntry]:
    """A discount is recognized as the revenue it reduces: each day's exact share of the
    discount is the day's share of the discounted lines' schedules. With nothing (net) to
    follow, on the last day of the service period, like a point-in-time line."""
    days = service_days(start, end)
    by_day: dict[date, Decimal] = defaultdict(lambda: ZERO)
    for schedule in scope:
        for entry in schedule.entries:
            by_day[entry.date] += entry.amount
    base = sum(by_day.values(), ZERO)
    if base == 0:
        return cumulative_split(days, {days[-1]: line.amount}, line.amount, currency)
    exact = {day: line.amount * amount / base for day, amount in by_day.items()}
    return cumulative_split(days, exact, line.amount, currency)


# -- checks -----------------------------------------------------------------------------------


def _problems(catalog: Catalog, cand: InvoiceCandidate) -> list[tuple[str, str]]:
    """(reason, detail) for everything that keeps this candidate out of the ERP."""
    out: list[tuple[str, str]] = []
    customer = catalog.customers[cand.customer_id]
    entity = catalog.legal_entities[cand.legal_entity]
    for reason in cand.hold_reasons:
        what = {"MISSING_TAX_REGISTRATION": "tax_registration",
                "MISSING_PAYMENT_TERMS": "payment_terms_days",
                "MISSING_TAX_CODE": "tax_code"}.get(reason, reason)
        detail = f"customer {customer.id!r} has no {what}"
        if reason == "MISSING_TAX_CODE":
            detail += (f" (legal entity {entity.id!r} taxes with one of "
                       f"{', '.join(sorted(entity.tax_codes))})")
        out.append((reason, detail))
    if entity.currencies and cand.currency not in entity.currencies:
        out.append(("CURRENCY_NOT_POSTABLE",
                    f"legal entity {entity.id!r} posts {', '.join(entity.currencies)}, "
                    f"not {cand.currency}"))
    needed = {"receivable"} | {_REVENUE_ROLE[line.kind] for line in cand.lines}
    if cand.taxes:
        needed.add("tax_payable")
    if cand.credits_applied:
        needed.add("customer_credits")
    for role in sorted(needed):
        if role not in entity.gl_accounts:
            out.append(("MISSING_GL_ACCOUNT",
                        f"legal entity {entity.id!r} has no {role} GL account"))
    return out


# -- documents --------------------------------------------------------------------------------


def _ar_invoice(catalog: Catalog, cand: InvoiceCandidate) -> ArInvoice:
    customer = catalog.customers[cand.customer_id]
    entity = catalog.legal_entities[cand.legal_entity]
    assert customer.payment_terms_days is not None and customer.tax_registration
    invoice_date = last_service_day(cand.period_end)
    lines = [
        ArInvoiceLine(
            line_id=line.line_id,
            kind=line.kind,
            item=(line.meter or line.fee_id or line.discount_id or ""),
            amount=line.amount,
            gl_account=entity.gl_accounts[_REVENUE_ROLE[line.kind]],
            revenue_recognition=line.revenue_recognition,  # type: ignore[arg-type]
            service_period_start=cand.period_start,
            service_period_end=cand.period_end,
            quantity=line.quantity,
            performance_obligation=ids.performance_obligation(
                cand.subscription_id, line.meter or line.fee_id or line.discount_id or ""),
        )
        for line in cand.lines
    ]
    taxes = [ArTaxLine(tax_code=t.tax_code, rate=t.rate, base=t.base, amount=t.amount,
                       reverse_charge=t.reverse_charge,
                       gl_account=entity.gl_accounts["tax_payable"]) for t in cand.taxes]
    notes = [f"Reverse charge: the customer accounts for the tax (tax code {t.tax_code}, "
             f"customer tax registration {customer.tax_registration})."
             for t in cand.taxes if t.reverse_charge]
    return ArInvoice(
        ar_invoice_id=cand.invoice_candidate_id,
        invoice_candidate_id=cand.invoice_candidate_id,
        document_type="credit_memo" if cand.total < 0 else "invoice",
        adjusts_ar_invoice_id=cand.adjusts,
        customer_id=customer.id,
        tax_registration=customer.tax_registration,
        legal_entity=entity.id,
        receivable_account=entity.gl_accounts["receivable"],
        currency=cand.currency,
        invoice_date=invoice_date,
        due_date=invoice_date + timedelta(days=customer.payment_terms_days),
        payment_terms_days=customer.payment_terms_days,
        service_period_start=cand.period_start,
        service_period_end=cand.period_end,
        billing_period=cand.billing_period,
        subscription_id=cand.subscription_id,
        plan_id=cand.plan_id,
        subtotal=cand.subtotal,
        tax_total=cand.tax_total,
        total=cand.total,
        amount_due=cand.amount_due,
        lines=lines,
        taxes=taxes,
        credits_applied=[ArCreditApplied(credit_id=c.credit_id, amount=c.amount,
                                         gl_account=entity.gl_accounts["customer_credits"])
                         for c in cand.credits_applied],
        notes=notes,
    )


def _side(amount: Decimal, zero: Decimal, natural_debit: bool) -> tuple[Decimal, Decimal]:
    """(debit, credit) for an amount on an account whose normal side is debit or credit."""
    if (amount >= 0) == natural_debit:
        return abs(amount) + zero, zero
    return zero, abs(amount) + zero


def _journal(catalog: Catalog, entity_id: str, currency: str, period: str,
             invoices: Sequence[ArInvoice], schedules: Mapping[str, RevenueSchedule]
             ) -> Journal:
    entity = catalog.legal_entities[entity_id]
    month_end = last_service_day(Month.parse(period).end)
    zero = round_money(ZERO, currency)
    receivable = sum((inv.amount_due for inv in invoices), zero)
    applied = sum((c.amount for inv in invoices for c in inv.credits_applied), zero)
    tax = sum((t.amount for inv in invoices for t in inv.taxes), zero)
    # Signed amounts on the credit side: revenue positive, discounts (contra revenue) negative.
    credits: dict[str, Decimal] = defaultdict(lambda: zero)
    for inv in invoices:
        # Schedule entries fall on service days only (cumulative_split), so a line whose
        # service ends within the month has none later: no need to look at its entries.
        within = last_service_day(inv.service_period_end) <= month_end
        for line in inv.lines:
            role = _REVENUE_ROLE[line.kind]
            later = zero if within else sum((e.amount for e in schedules[line.line_id].entries
                                             if e.date > month_end), zero)
            credits[role] += line.amount - later
            if later:
                credits["deferred_revenue"] += later
    lines = [JournalLine(account=entity.gl_accounts["receivable"], role="receivable",
                         **dict(zip(("debit", "credit"), _side(receivable, zero, True),
                                    strict=True)))]
    if applied:
        debit, credit = _side(applied, zero, natural_debit=True)
        lines.append(JournalLine(account=entity.gl_accounts["customer_credits"],
                                 role="customer_credits", debit=debit, credit=credit))
    credits["tax_payable"] = tax
    for role in ("usage_revenue", "subscription_revenue", "discounts", "deferred_revenue",
                 "tax_payable"):
        amount = credits.get(role, zero)
        if amount:
            debit, credit = _side(amount, zero, natural_debit=False)
            lines.append(JournalLine(account=entity.gl_accounts[role], role=role,  # type: ignore[arg-type]
                                     debit=debit, credit=credit))
    sources = sorted(inv.invoice_candidate_id for inv in invoices)
    return Journal(
        journal_id=ids.journal_id(entity_id, currency, period),
        legal_entity=entity_id,
        currency=currency,
        period=period,
        posting_date=month_end,
        lines=lines,
        total_debit=sum((x.debit for x in lines), zero),
        total_credit=sum((x.credit for x in lines), zero),
        source_candidate_ids=sources,
        source_ar_invoice_ids=sources,
    )


def build_erp(catalog: Catalog, candidates: Iterable[InvoiceCandidate]) -> ErpOutput:
    out = ErpOutput()
    blocked: set[str] = set()
    ready: list[InvoiceCandidate] = []
    for cand in candidates:
        problems = _problems(catalog, cand)
        # An adjustment of a document that never reached the ERP cannot be posted either.
        if cand.adjusts in blocked and not problems:
            problems = [("ORIGINAL_NOT_POSTED",
                         f"adjusts {cand.adjusts}, which is itself an invoice exception")]
        if problems:
            blocked.add(cand.invoice_candidate_id)
            out.exceptions.append(InvoiceException(
                invoice_candidate_id=cand.invoice_candidate_id,
                customer_id=cand.customer_id,
                legal_entity=cand.legal_entity,
                currency=cand.currency,
                billing_period=cand.billing_period,
                subtotal=cand.subtotal,
                total=cand.total,
                reasons=sorted({reason for reason, _ in problems}),
                details=[detail for _, detail in problems],
            ))
            continue
        if cand.adjusts and all(line.amount == 0 for line in cand.lines) \
                and all(t.amount == 0 for t in cand.taxes):
            out.quantity_only.append(cand.invoice_candidate_id)
            continue
        ready.append(cand)

    schedules: dict[str, RevenueSchedule] = {}
    groups: dict[tuple[str, str, str], list[ArInvoice]] = defaultdict(list)
    for cand in ready:
        invoice = _ar_invoice(catalog, cand)
        out.ar_invoices.append(invoice)
        groups[(invoice.legal_entity, invoice.currency, invoice.billing_period)].append(invoice)
        own: list[RevenueSchedule] = []
        kind_of = {line.line_id: line.kind for line in cand.lines}
        position = {line.line_id: n for n, line in enumerate(cand.lines)}
        # Discount lines follow the schedules of the lines they discount: those first.
        order = sorted(zip(cand.lines, invoice.lines, strict=True),
                       key=lambda pair: pair[0].kind == "discount")
        for src, line in order:
            if src.kind == "discount":
                follow = SCOPE_KINDS[src.applies_to or "all"]  # the lines it discounts
                entries = discount_entries(
                    src, [x for x in own if kind_of[x.line_id] in follow],
                    cand.period_start, cand.period_end, cand.currency)
            else:
                entries = schedule_entries(src, cand.period_start, cand.period_end,
                                           cand.currency)
            schedule = RevenueSchedule(
                schedule_id=ids.schedule_id(line.line_id),
                line_id=line.line_id,
                ar_invoice_id=invoice.ar_invoice_id,
                legal_entity=invoice.legal_entity,
                currency=invoice.currency,
                revenue_recognition=line.revenue_recognition,
                gl_account=line.gl_account,
                amount=line.amount,
                entries=entries,
            )
            own.append(schedule)
            schedules[line.line_id] = schedule
        out.schedules.extend(sorted(own, key=lambda x: position[x.line_id]))
    for (entity_id, currency, period), invoices in sorted(groups.items()):
        out.journals.append(_journal(catalog, entity_id, currency, period, invoices,
                                     schedules))
    return out


# -- reconciliation: usage -> rated -> invoiced -> ERP receivable ------------------------------


def erp_chain(catalog: Catalog, rated_amounts: Mapping[tuple[str, str, str], Decimal],
              candidates: Sequence[InvoiceCandidate], erp: ErpOutput,
              usage: Mapping[tuple[str, str, str], tuple[Decimal, Decimal]] | None = None,
              *, with_schedules: bool = True) -> tuple[list[ChainRow], list[str]]:
    """Per legal entity, currency and month: rated usage (rounded like invoice lines), invoiced
    usage, invoiced total, what was kept out of the ERP and why, AR total and journal receivable.
    Returns the rows and the problems (each naming entity, currency, month and the variance).

    `rated_amounts`: (subscription, period, meter) -> exact rated cumulative amount.
    `usage`: (subscription, period, meter) -> (ingested quantity, rated quantity), shown per
    meter in each row beside the invoiced quantity, so the chain starts at the raw usage.
    `with_schedules=False`: `erp` holds no revenue schedules (a reader of the stream's
    ClickHouse tables), so AR invoices are checked against their totals only."""
    chain = _Chain(catalog, candidates)
    if usage is not None:
        chain.add_usage(usage)
    chain.add_rated(rated_amounts)
    chain.add_candidates(candidates, with_quantities=usage is not None)
    chain.add_erp(erp)
    rows, problems = chain.report()
    return rows, problems + _document_problems(erp, with_schedules)


_ChainKey = tuple[str, str, str]  # (legal entity, currency, period)
_CHAIN_FIELDS = ("rated_usage", "invoiced_usage", "invoiced_total", "not_posted", "ar_total",
                 "journal_receivable", "journal_debit", "journal_credit", "invoiced_tax",
                 "invoiced_discounts", "not_posted_tax", "ar_tax", "ar_discounts",
                 "posted_discounts", "ar_credits_applied", "journal_tax_payable",
                 "journal_customer_credits")


class _Chain:
    """The chain's rows as they are summed up, one stage at a time."""

    def __init__(self, catalog: Catalog, candidates: Sequence[InvoiceCandidate]) -> None:
        self.catalog = catalog
        self.zero_of = {c.currency: round_money(ZERO, c.currency) for c in candidates}
        self.rows: dict[_ChainKey, dict[str, Decimal]] = {}
        self.kept_out: dict[_ChainKey, dict[str, Decimal]] = defaultdict(dict)
        # key -> meter -> [ingested, rated, invoiced] quantity
        self.quantities: dict[_ChainKey, dict[str, list[Decimal]]] = defaultdict(dict)
        self.discounts: dict[str, Decimal] = {}  # candidate id -> its discount lines' sum

    def row(self, key: _ChainKey) -> dict[str, Decimal]:
        if key not in self.rows:
            self.rows[key] = dict.fromkeys(_CHAIN_FIELDS, round_money(ZERO, key[1]))
        return self.rows[key]

    def key_of(self, sub_id: str, period: str) -> _ChainKey:
        catalog = self.catalog
        sub = catalog.subscriptions[sub_id]
        entity = catalog.customers[sub.customer_id].legal_entity
        return entity, catalog.plans[sub.plan_id].currency, period

    def add_usage(self, usage: Mapping[tuple[str, str, str], tuple[Decimal, Decimal]]) -> None:
        for (sub_id, period, meter), (ingested, rated_q) in usage.items():
            q = self.quantities[self.key_of(sub_id, period)].setdefault(meter, [ZERO] * 3)
            q[0] += ingested
            q[1] += rated_q

    def add_rated(self, rated_amounts: Mapping[tuple[str, str, str], Decimal]) -> None:
        for (sub_id, period, _meter), amount in rated_amounts.items():
            key = self.key_of(sub_id, period)
            self.row(key)["rated_usage"] += round_money(amount, key[1])

    def add_candidates(self, candidates: Sequence[InvoiceCandidate], with_quantities: bool
                       ) -> None:
        for cand in candidates:
            key = (cand.legal_entity, cand.currency, cand.billing_period)
            if with_quantities:
                for x in cand.lines:
                    if x.kind == "usage" and x.meter is not None:
                        q = self.quantities[key].setdefault(x.meter, [ZERO] * 3)
                        q[2] += x.quantity or ZERO
            r = self.row(key)
            zero = self.zero_of[cand.currency]
            r["invoiced_total"] += cand.total
            r["invoiced_tax"] += cand.tax_total
            r["invoiced_usage"] += sum((x.amount for x in cand.lines if x.kind == "usage"), zero)
            discounts = sum((x.amount for x in cand.lines if x.kind == "discount"), zero)
            r["invoiced_discounts"] += discounts
            self.discounts[cand.invoice_candidate_id] = discounts

    def add_erp(self, erp: ErpOutput) -> None:
        for exc in erp.exceptions:
            key = (exc.legal_entity, exc.currency, exc.billing_period)
            self.row(key)["not_posted"] += exc.total
            self.row(key)["not_posted_tax"] += exc.total - exc.subtotal
            for reason in exc.reasons:
                self.kept_out[key][reason] = self.kept_out[key].get(reason, ZERO) + exc.total
        for inv in erp.ar_invoices:
            r = self.row((inv.legal_entity, inv.currency, inv.billing_period))
            r["ar_total"] += inv.total
            r["ar_tax"] += inv.tax_total
            r["ar_discounts"] += sum((x.amount for x in inv.lines if x.kind == "discount"), ZERO)
            r["posted_discounts"] += self.discounts.get(inv.invoice_candidate_id, ZERO)
            r["ar_credits_applied"] += sum((c.amount for c in inv.credits_applied), ZERO)
        for j in erp.journals:
            r = self.row((j.legal_entity, j.currency, j.period))
            for x in j.lines:
                if x.role == "receivable":
                    r["journal_receivable"] += x.debit - x.credit
                elif x.role == "customer_credits":
                    r["journal_customer_credits"] += x.debit - x.credit
                elif x.role == "tax_payable":
                    r["journal_tax_payable"] += x.credit - x.debit
            r["journal_debit"] += j.total_debit
            r["journal_credit"] += j.total_credit

    def report(self) -> tuple[list[ChainRow], list[str]]:
        problems: list[str] = []
        out: list[ChainRow] = []
        for key in sorted(self.rows):
            r = self.rows[key]
            label = " ".join(key)
            problems.extend(_row_problems(label, r))
            quantities = sorted(self.quantities[key].items())
            for meter, q in quantities:
                if not q[0] == q[1] == q[2]:
                    problems.append(f"{label} {meter}: ingested {q[0]}, rated {q[1]}, "
                                    f"invoiced {q[2]}")
            out.append(ChainRow(
                legal_entity=key[0], currency=key[1], period=key[2],
                usage_quantities={m: ChainQuantities(str(q[0]), str(q[1]), str(q[2]))
                                  for m, q in quantities},
                rated_usage=str(r["rated_usage"]), invoiced_usage=str(r["invoiced_usage"]),
                invoiced_total=str(r["invoiced_total"]), not_posted=str(r["not_posted"]),
                ar_total=str(r["ar_total"]), journal_receivable=str(r["journal_receivable"]),
                journal_debit=str(r["journal_debit"]), journal_credit=str(r["journal_credit"]),
                not_posted_by_reason={k: str(v) for k, v in sorted(self.kept_out[key].items())},
                invoiced_tax=str(r["invoiced_tax"]),
                invoiced_discounts=str(r["invoiced_discounts"]), ar_tax=str(r["ar_tax"]),
                ar_discounts=str(r["ar_discounts"]),
                ar_credits_applied=str(r["ar_credits_applied"]),
                journal_tax_payable=str(r["journal_tax_payable"]),
                journal_customer_credits=str(r["journal_customer_credits"]),
            ))
        return out, problems


def _row_problems(label: str, r: Mapping[str, Decimal]) -> list[str]:
    """Where one row's stages disagree: rated vs invoiced usage, invoiced less not posted vs AR,
    AR vs journal receivable, journal debits vs credits."""
    problems = []
    expected_posted = r["invoiced_total"] - r["not_posted"]
    if r["rated_usage"] != r["invoiced_usage"]:
        problems.append(f"{label}: rated usage {r['rated_usage']} but invoiced usage "
                        f"{r['invoiced_usage']}")
    if expected_posted != r["ar_total"]:
        problems.append(f"{label}: invoiced {r['invoiced_total']} less not posted "
                        f"{r['not_posted']} is {expected_posted}, AR invoices total "
                        f"{r['ar_total']}")
    due = r["ar_total"] - r["ar_credits_applied"]
    if due != r["journal_receivable"]:
        problems.append(f"{label}: AR invoices total {r['ar_total']} less credits applied "
                        f"{r['ar_credits_applied']} is {due}, journal receivable "
                        f"{r['journal_receivable']}")
    if r["ar_credits_applied"] != r["journal_customer_credits"]:
        problems.append(f"{label}: AR credits applied {r['ar_credits_applied']}, journal "
                        f"customer credits {r['journal_customer_credits']}")
    posted_tax = r["invoiced_tax"] - r["not_posted_tax"]
    if posted_tax != r["ar_tax"]:
        problems.append(f"{label}: invoiced tax {r['invoiced_tax']} less not posted "
                        f"{r['not_posted_tax']} is {posted_tax}, AR tax {r['ar_tax']}")
    if r["ar_tax"] != r["journal_tax_payable"]:
        problems.append(f"{label}: AR tax {r['ar_tax']}, journal tax payable "
                        f"{r['journal_tax_payable']}")
    if r["posted_discounts"] != r["ar_discounts"]:
        problems.append(f"{label}: discounts of the posted candidates "
                        f"{r['posted_discounts']}, on their AR invoices {r['ar_discounts']}")
    if r["journal_debit"] != r["journal_credit"]:
        problems.append(f"{label}: journal debits {r['journal_debit']} != credits "
                        f"{r['journal_credit']}")
    return problems


def _document_problems(erp: ErpOutput, with_schedules: bool = True) -> list[str]:
    """Every AR invoice sums to its total, and every revenue schedule to its line."""
    problems = []
    by_line = {s.line_id: s for s in erp.schedules}
    for inv in erp.ar_invoices:
        zero = round_money(ZERO, inv.currency)
        if sum((x.amount for x in inv.lines), zero) != inv.subtotal:
            problems.append(f"AR invoice {inv.ar_invoice_id}: lines do not sum to its subtotal")
        if sum((t.amount for t in inv.taxes), zero) != inv.tax_total \
                or inv.subtotal + inv.tax_total != inv.total:
            problems.append(f"AR invoice {inv.ar_invoice_id}: subtotal {inv.subtotal} and tax "
                            f"{inv.tax_total} do not make its total {inv.total}")
        if inv.total - sum((c.amount for c in inv.credits_applied), zero) != inv.amount_due:
            problems.append(f"AR invoice {inv.ar_invoice_id}: total less credits applied is "
                            f"not its amount due {inv.amount_due}")
        if not with_schedules:
            continue
        for line in inv.lines:
            schedule = by_line[line.line_id]
            if sum((e.amount for e in schedule.entries), ZERO) != line.amount:
                problems.append(f"revenue schedule of {line.line_id} does not sum to "
                                f"{line.amount}")
    return problems
