"""The catalog: legal entities, meters, plans and customers, validated once.

`load_catalog` reads YAML and returns an immutable `Catalog`, or raises `CatalogError` listing
every problem with its YAML path, so an operator fixes the file in one pass rather than one error
per run. It never raises anything else, whatever the file holds: the catalog is edited by hand,
and a traceback tells its editor nothing.

The YAML is read strictly (operators/catalog_file.py): one UTF-8 document, no duplicate keys,
no anchors or aliases, no tags beyond the plain scalars, string keys only, bounded nesting. Then
every mapping is checked against the keys its kind may hold, so a misspelt `ends:` is an
error instead of a subscription that never ends, and every value is checked for type and range
before use (`operators/limits.py`). Money and quantities must be quoted decimal strings: PyYAML
would turn `0.1` into a binary float before we ever saw its text, so an unquoted number there is
refused, not converted.
"""

from __future__ import annotations

import bisect
import difflib
import gc
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, cast

from operators.catalog_file import MAX_PROBLEMS, CatalogError, compose, join_path, read_text, show
from operators.limits import (
    MAX_ATTRIBUTE_CHARS,
    MAX_DEPTH,
    MAX_PRICE,
    MAX_QUANTITY,
    MAX_TIME,
    MIN_TIME,
)
from operators.money import MAX_SCALE, MINOR_UNITS, MoneyError, parse_decimal
from operators.periods import Month

AGGREGATIONS = ("count", "sum", "max", "unique_count", "latest")
MODELS = ("per_unit", "graduated", "volume", "package", "percentage")
RECOGNITION = ("ratable", "point_in_time")
FeeRecognition = Literal["ratable", "point_in_time"]
GL_ROLES = ("receivable", "usage_revenue", "subscription_revenue", "deferred_revenue",
            "tax_payable", "discounts", "customer_credits")
DISCOUNT_SCOPES = ("usage", "fixed_fees", "all")
DiscountScope = Literal["usage", "fixed_fees", "all"]

# The keys each kind of mapping may hold: anything else is a problem, with the nearest valid key
# suggested. Kept next to the parser below, which reads exactly these.
SECTIONS = ("legal_entities", "meters", "plans", "customers")
# Top-level settings, each optional.
SETTINGS = ("billing_start",)
LEGAL_ENTITY_KEYS = ("id", "gl_accounts", "currencies", "tax_codes")
TAX_CODE_KEYS = ("id", "rate", "reverse_charge")
METER_KEYS = ("id", "event_type", "aggregation", "value")
PLAN_KEYS = ("id", "currency", "fixed_fees", "charges")
FIXED_FEE_KEYS = ("id", "amount", "revenue_recognition")
CHARGE_KEYS = ("meter", "model", "minimum")  # common to every model
MODEL_KEYS: Mapping[str, tuple[str, ...]] = {
    "per_unit": ("unit_price",),
    "graduated": ("tiers",),
    "volume": ("tiers",),
    "package": ("package_size", "package_price"),
    "percentage": ("rate",),
}
TIER_KEYS = ("up_to", "unit_price", "flat_price")
CUSTOMER_KEYS = ("id", "legal_entity", "subjects", "tax_registration", "payment_terms_days",
                 "tax_code", "credits", "subscriptions")
CREDIT_KEYS = ("id", "amount", "currency", "granted", "expires")
SUBSCRIPTION_KEYS = ("id", "plan", "start", "end", "discounts")
DISCOUNT_KEYS = ("id", "percent", "amount", "applies_to", "from", "months")

# Size limits of the file and its lists. The file limit keeps a mistaken path (a log, a dump)
# from being read into memory; list limits bound the work per event (meters of one type are all
# judged for each event, tiers are walked for each window) and a careless paste.
MAX_METERS = 1000
MAX_TIERS = 100
MAX_FIXED_FEES = 100
MAX_SUBJECTS = 10_000
MAX_SUBSCRIPTIONS = 10_000
MAX_PAYMENT_TERMS_DAYS = 3650
MAX_TAX_CODES = 100
MAX_DISCOUNTS = 100
MAX_CREDITS = 1000
MAX_DISCOUNT_MONTHS = 1200  # a hundred years: beyond it, leave `months` out (no end)
# A decimal text longer than this is a paste accident, and `Decimal` itself raises on exponents
# beyond its range: the text is refused before it is converted.
MAX_NUMBER_CHARS = 64

_RANGE = f"{MIN_TIME.date().isoformat()} .. {MAX_TIME.date().isoformat()}"
# C0 and C1 controls and the Unicode line separators: invisible in an editor, and they break the
# keys and log lines ids end up in.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# No control characters, no whitespace at either end, not empty.
_CLEAN = re.compile("[^\\s\x00-\x1f\x7f-\x9f\u2028\u2029](?:[^\x00-\x1f\x7f-\x9f\u2028\u2029]*"
                    "[^\\s\x00-\x1f\x7f-\x9f\u2028\u2029])?")
_INTERNAL = "the catalog could not be checked"
_MONTH = re.compile(r"\d{4}-\d{2}")


@dataclass(frozen=True, slots=True)
class TaxCode:
    id: str
    rate: Decimal  # a fraction: "0.19" is 19 %
    reverse_charge: bool = False  # the buyer accounts for the tax: rate 0, said on the invoice


@dataclass(frozen=True, slots=True)
class LegalEntity:
    id: str
    gl_accounts: Mapping[str, str]
    currencies: tuple[str, ...] = ()  # empty: any currency may be posted
    # Empty: this entity computes no tax (every candidate's tax_total is 0). Otherwise every
    # customer of the entity names one of these, or its candidates are held (MISSING_TAX_CODE).
    tax_codes: Mapping[str, TaxCode] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Discount:
    """A subscription's commercial discount over the billing periods [first, first + months).

    Exactly one of `percent` (of the undiscounted lines of `applies_to`) and `amount` (off the
    whole invoice, capped so the subtotal never goes below zero) is set."""

    id: str
    first: Month
    months: int | None  # None: no end
    percent: Decimal | None = None  # 0 < percent <= 100
    amount: Decimal | None = None  # in the plan's currency, at most its minor units
    applies_to: DiscountScope = "all"

    def applies_in(self, month: Month) -> bool:
        if month < self.first:
            return False
        if self.months is None:
            return True
        elapsed = (month.year - self.first.year) * 12 + month.month - self.first.month
        return elapsed < self.months


@dataclass(frozen=True, slots=True)
class Meter:
    id: str
    event_type: str
    aggregation: str
    value_path: tuple[str, ...]  # empty for count


@dataclass(frozen=True, slots=True)
class Tier:
    up_to: Decimal | None  # None: the open last tier
    unit_price: Decimal
    flat_price: Decimal


@dataclass(frozen=True, slots=True)
class Charge:
    meter: str
    model: str
    unit_price: Decimal = Decimal(0)
    tiers: tuple[Tier, ...] = ()
    package_size: Decimal = Decimal(1)
    package_price: Decimal = Decimal(0)
    rate: Decimal = Decimal(0)
    minimum: Decimal | None = None


@dataclass(frozen=True, slots=True)
class FixedFee:
    id: str
    amount: Decimal
    revenue_recognition: FeeRecognition


@dataclass(frozen=True, slots=True)
class Plan:
    id: str
    currency: str
    fixed_fees: tuple[FixedFee, ...]
    charges: tuple[Charge, ...]

    def charge_for(self, meter: str) -> Charge | None:
        for charge in self.charges:
            if charge.meter == meter:
                return charge
        return None


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    customer_id: str
    plan_id: str
    start: datetime
    end: datetime | None
    discounts: tuple[Discount, ...] = ()  # in the order listed: amount discounts apply so

    def active_at(self, at: datetime) -> bool:
        return self.start <= at and (self.end is None or at < self.end)


@dataclass(frozen=True, slots=True)
class Credit:
    """A prepaid credit: usable, in its currency, by the customer's invoices dated (the last day
    of the service period, at 00:00 UTC) in [granted, expires)."""

    id: str
    amount: Decimal
    currency: str
    granted: datetime
    expires: datetime

    def usable_on(self, invoice_date: date) -> bool:
        at = datetime(invoice_date.year, invoice_date.month, invoice_date.day, tzinfo=UTC)
        return self.granted <= at < self.expires


@dataclass(frozen=True, slots=True)
class Customer:
    id: str
    legal_entity: str
    subjects: tuple[str, ...]
    tax_registration: str | None
    payment_terms_days: int | None
    subscriptions: tuple[Subscription, ...]  # sorted by start, non-overlapping
    tax_code: str | None = None  # one of its legal entity's tax codes
    credits: tuple[Credit, ...] = ()

    def hold_reasons(self, entity: LegalEntity | None = None) -> tuple[str, ...]:
        """Why this customer's candidates are held; `entity`: its legal entity, whose tax codes
        decide whether a missing tax code holds them."""
        reasons = []
        if not self.tax_registration:
            reasons.append("MISSING_TAX_REGISTRATION")
        if self.payment_terms_days is None:
            reasons.append("MISSING_PAYMENT_TERMS")
        if entity is not None and entity.tax_codes and self.tax_code is None:
            reasons.append("MISSING_TAX_CODE")
        return tuple(reasons)


@dataclass(frozen=True, slots=True)
class SubscriptionTerms:
    subscription: Subscription
    customer: Customer  # with this subscription only
    plan: Plan
    meters: tuple[Meter, ...]  # those the plan charges
    legal_entity: LegalEntity

    def catalog(self) -> Catalog:
        """A catalog of this subscription alone, for the code that reads a Catalog."""
        return Catalog(legal_entities={self.legal_entity.id: self.legal_entity},
                       meters={m.id: m for m in self.meters},
                       plans={self.plan.id: self.plan},
                       customers={self.customer.id: self.customer})


@dataclass(frozen=True)
class Catalog:
    legal_entities: Mapping[str, LegalEntity]
    meters: Mapping[str, Meter]
    plans: Mapping[str, Plan]
    customers: Mapping[str, Customer]
    # The first month meterwax bills (UTC). Months before it were billed by whatever came
    # before this deployment: they are excluded, and listed by reconciliation. None: every
    # subscription is billed from its start.
    billing_start: Month | None = None
    subscriptions: Mapping[str, Subscription] = field(init=False)
    customer_by_subject: Mapping[str, Customer] = field(init=False)
    meters_by_event_type: Mapping[str, tuple[Meter, ...]] = field(init=False)
    _starts: Mapping[str, list[datetime]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        subs = {s.id: s for c in self.customers.values() for s in c.subscriptions}
        by_subject = {subj: c for c in self.customers.values() for subj in c.subjects}
        by_type: dict[str, list[Meter]] = {}
        for meter in self.meters.values():
            by_type.setdefault(meter.event_type, []).append(meter)
        object.__setattr__(self, "subscriptions", subs)
        object.__setattr__(self, "customer_by_subject", by_subject)
        object.__setattr__(
            self, "meters_by_event_type", {k: tuple(v) for k, v in by_type.items()}
        )
        object.__setattr__(
            self,
            "_starts",
            {c.id: [s.start for s in c.subscriptions] for c in self.customers.values()},
        )

    def subscription_at(self, customer: Customer, at: datetime) -> Subscription | None:
        """The customer's subscription active at `at` (subscriptions never overlap)."""
        idx = bisect.bisect_right(self._starts[customer.id], at) - 1
        if idx < 0:
            return None
        sub = customer.subscriptions[idx]
        return sub if sub.active_at(at) else None

    def plan_of(self, sub: Subscription) -> Plan:
        return self.plans[sub.plan_id]

    def terms_of(self, subscription_id: str) -> SubscriptionTerms:
        """Everything of the catalog one subscription's rater reads (stream mode sends it to
        the rater when it changes, flows/pipeline.py)."""
        sub = self.subscriptions[subscription_id]
        customer = self.customers[sub.customer_id]
        plan = self.plans[sub.plan_id]
        return SubscriptionTerms(
            subscription=sub,
            customer=replace(customer, subscriptions=(sub,)),
            plan=plan,
            meters=tuple(self.meters[c.meter] for c in plan.charges),
            legal_entity=self.legal_entities[customer.legal_entity])

    def first_billed_month(self) -> Month | None:
        """`billing_start`, or else the month of the earliest subscription start (None: no
        subscription). Never inferred from the usage seen: a subscription that started on 1
        September with its first event in October still owes September's fixed fee."""
        if self.billing_start is not None:
            return self.billing_start
        starts = [s.start for s in self.subscriptions.values()]
        return Month.of(min(starts)) if starts else None

    def excluded_months(self) -> list[tuple[str, str, str]]:
        """(customer, subscription, period) of every subscription-month before
        `billing_start`: what this deployment does not bill, for reconciliation to list."""
        first = self.billing_start
        if first is None:
            return []
        out: list[tuple[str, str, str]] = []
        for sub in self.subscriptions.values():
            if sub.start >= first.start:
                continue
            last = first if sub.end is None or sub.end > first.start else Month.of(
                sub.end - timedelta(microseconds=1)).next()
            month = Month.of(sub.start)
            while month < last:
                out.append((sub.customer_id, sub.id, month.key))
                month = month.next()
        return sorted(out)


def load_catalog(path: str) -> Catalog:
    return load_catalog_document(path)[1]


def load_catalog_document(path: str) -> tuple[Any, Catalog]:
    """The file's document (what `contracts publish` splits into records) and its catalog."""
    # The cyclic collector would walk the growing heap again and again while millions of
    # acyclic dicts and lists are built (a quarter of the time for 100,000 customers); the
    # loaded catalog holds no cycles, so pausing it loses nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        doc, problems, refused = compose(read_text(path), path)
        return doc, _Parser(problems, refused).parse(doc)
    except CatalogError:
        raise
    except Exception as exc:
        # Whatever the file holds, the caller gets a CatalogError: a traceback from a checker is
        # a bug to report, but it must not be how an editor learns the file is wrong.
        raise CatalogError([_internal(path, exc)]) from exc
    finally:
        if collecting:
            gc.enable()


def parse_catalog(doc: Any) -> Catalog:
    try:
        return _Parser([], frozenset()).parse(doc)
    except CatalogError:
        raise
    except Exception as exc:
        raise CatalogError([_internal("catalog", exc)]) from exc


def _internal(where: str, exc: Exception) -> str:
    return (f"{where}: {_INTERNAL} ({type(exc).__name__}: {str(exc)[:200]}); "
            "this is a bug in meterwax, please report it")


# -- values ----------------------------------------------------------------------------------------

def _text_problem(value: Any) -> str | None:
    """Why `value` is not usable as an id, subject or reference, or None."""
    # The common case in one match: this runs for every id of every customer.
    if value.__class__ is str and len(value) <= MAX_ATTRIBUTE_CHARS and _CLEAN.fullmatch(value):
        return None
    if not isinstance(value, str) or not value.strip():
        return f"must be a non-empty string, got {show(value)}"
    if len(value) > MAX_ATTRIBUTE_CHARS:
        return f"is {len(value)} characters long; at most {MAX_ATTRIBUTE_CHARS} are allowed"
    if _CONTROL.search(value):
        return f"must not contain control characters, got {show(value)}"
    if value != value.strip():
        return f"has leading or trailing whitespace: {show(value)}"
    return None


def _exact_scale(value: Decimal) -> int:
    """Fractional digits needed to write `value` exactly. Unlike money.scale it never rounds or
    raises: normalize() rounds to the context's 60 digits and traps huge exponents."""
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite by construction
    if not any(digits):
        return 0
    end = len(digits)
    while digits[end - 1] == 0:
        end -= 1
    return max(0, -(exponent + len(digits) - end))


def _currency_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be an ISO 4217 currency code, got {show(value)}"
    if value in MINOR_UNITS:
        return None
    hint = f"; did you mean {value.upper()!r}?" if value.upper() in MINOR_UNITS else ""
    return f"{show(value)}{hint}"


class _Parser:
    """Collects every problem instead of stopping at the first.

    `problems` and `refused` come from the loader: what it found in the file's structure, and the
    paths of values it refused (the parser says nothing more about those).
    """

    def __init__(self, problems: list[str], refused: frozenset[str]) -> None:
        self.problems: list[str] = problems
        self.count = len(problems)
        self.refused = refused

    def err(self, path: str, message: str) -> None:
        if path in self.refused:
            return
        self.count += 1
        if self.count <= MAX_PROBLEMS:
            self.problems.append(f"{path}: {message}")

    def nearest(self, word: str, choices: tuple[str, ...]) -> str | None:
        """The choice `word` was probably meant to be, for the message."""
        # difflib is quadratic in the word's length, and a large file may hold a million
        # misspellings: a pasted paragraph, or a problem past the listed ones, gets none.
        if len(word) > 64 or self.count >= MAX_PROBLEMS:
            return None
        match = difflib.get_close_matches(word, choices, n=1)
        return match[0] if match else None

    def suggest(self, key: str, allowed: tuple[str, ...]) -> str:
        match = self.nearest(key, allowed)
        if match is not None:
            return f"; did you mean {match!r}?"
        return f"; expected one of {', '.join(allowed)}"

    # -- field readers: each returns None after recording a problem ---------------------------

    def keys(self, obj: Mapping[Any, Any], allowed: tuple[str, ...], where: str,
             what: str = "key") -> None:
        for key in obj:
            if key in allowed:
                continue
            if not isinstance(key, str):
                self.err(where or "catalog", f"{what} {show(key)} is not a string")
            else:
                self.err(join_path(where, key), f"unknown {what}{self.suggest(key, allowed)}")

    def given(self, obj: Mapping[str, Any], key: str, path: str, required: bool) -> Any:
        """`obj[key]`, or None when it is absent (a problem when `required`)."""
        value = obj.get(key)
        if value is None and required:
            self.err(join_path(path, key), "is required")
        return value

    def text(self, obj: Mapping[str, Any], key: str, path: str, required: bool = True
             ) -> str | None:
        value = self.given(obj, key, path, required)
        if value is None:
            return None
        problem = _text_problem(value)
        if problem is not None:
            self.err(join_path(path, key), problem)
            return None
        return str(value)

    def amount(
        self, obj: Mapping[str, Any], key: str, path: str, required: bool = True,
        positive: bool = False, below: Decimal = MAX_PRICE,
    ) -> Decimal | None:
        value = self.given(obj, key, path, required)
        if value is None:
            return None
        problem = None
        parsed = None
        if isinstance(value, bool) or not isinstance(value, str):
            if isinstance(value, float):
                problem = (f"unquoted float {value!r}: write money and quantities as quoted "
                           f"decimal strings, e.g. \"{value}\"")
            else:
                problem = f"must be a quoted decimal string, got {show(value)}"
        elif len(value) > MAX_NUMBER_CHARS:
            problem = (f"is {len(value)} characters long; a decimal has at most "
                       f"{MAX_NUMBER_CHARS}")
        else:
            try:
                parsed = parse_decimal(value)
            except MoneyError as exc:
                problem = str(exc)
            except ArithmeticError:  # Decimal refuses exponents beyond its own range
                problem = f"{value!r} is out of range"
        if parsed is not None:
            exponent = parsed.as_tuple().exponent
            assert isinstance(exponent, int)  # the pattern admits finite decimals only
            if parsed.is_signed():
                problem = f"must not be negative, got {value!r}"
            elif parsed >= below:
                problem = f"must be below 10^{below.adjusted()}, got {value!r}"
            elif positive and parsed == 0:
                problem = "must be greater than zero"
            elif _exact_scale(parsed) > MAX_SCALE:
                problem = f"has more than {MAX_SCALE} fractional digits"
            elif not -MAX_NUMBER_CHARS <= exponent <= MAX_NUMBER_CHARS:
                # "0e-999999" is zero, but formatting it would write a million zeros
                problem = f"{value!r} has an out-of-range exponent"
        if problem is not None:
            self.err(join_path(path, key), problem)
            return None
        return parsed

    def instant(self, obj: Mapping[str, Any], key: str, path: str, required: bool = True
                ) -> datetime | None:
        value = self.given(obj, key, path, required)
        if value is None:
            return None
        problem = None
        parsed = None
        if isinstance(value, datetime):
            parsed = value
        elif isinstance(value, date):
            problem = f"must be a timestamp with an offset, got the date {value}"
        elif isinstance(value, str) and len(value) <= MAX_NUMBER_CHARS:
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                problem = f"not an RFC 3339 timestamp: {value!r}"
        elif isinstance(value, str):
            problem = f"not an RFC 3339 timestamp: {show(value)}"
        else:
            problem = f"must be an RFC 3339 timestamp, got {show(value)}"
        utc = None
        if parsed is not None:
            try:
                offset = parsed.utcoffset()
                # 0001-01-01T00:00:00+01:00 is a valid datetime whose UTC time is not
                utc = parsed.astimezone(UTC) if offset is not None else None
            except (OverflowError, ValueError):
                offset = timedelta(0)
            if offset is None:
                problem = f"timestamp {value!s} has no UTC offset"
            elif utc is None or not MIN_TIME <= utc < MAX_TIME:
                problem = f"timestamp {value!s} is out of the supported range {_RANGE}"
                utc = None
        if problem is not None:
            self.err(join_path(path, key), problem)
        return utc

    def items(self, obj: Mapping[str, Any], key: str, path: str, limit: int | None = None
              ) -> list[tuple[str, dict[str, Any]]]:
        """The mappings listed under `key`, each with its path. `limit`: None for the sections,
        which only the file size bounds."""
        value = obj.get(key)
        if value is None:
            return []
        where = join_path(path, key)
        if not isinstance(value, list | tuple):
            self.err(where, f"must be a list, got {show(value)}")
            return []
        if limit is not None and len(value) > limit:
            self.err(where, f"has {len(value)} entries; at most {limit} are allowed")
            return []
        out = []
        for i, item in enumerate(value):
            iwhere = f"{where}[{i}]"
            if not isinstance(item, dict):
                self.err(iwhere, f"must be a mapping, got {show(item)}")
                continue
            out.append((iwhere, item))
        return out

    def unique(self, seen: dict[str, str], ident: str | None, where: str, what: str) -> bool:
        if ident is None:
            return False
        if ident in seen:
            self.err(where, f"duplicate {what} id {ident!r} (first at {seen[ident]})")
            return False
        seen[ident] = where
        return True

    def currency(self, obj: Mapping[str, Any], where: str) -> str | None:
        """`obj["currency"]`, an ISO 4217 code, or None after recording why not."""
        currency = obj.get("currency")
        if currency is None:
            self.err(f"{where}.currency", "is required")
            return None
        problem = _currency_problem(currency)
        if problem is not None:
            self.err(f"{where}.currency", f"unknown ISO 4217 currency {problem}"
                     if isinstance(currency, str) else problem)
            return None
        return str(currency)

    def in_minor_units(self, amount: Decimal | None, obj: Mapping[str, Any], key: str,
                       where: str, currency: str | None) -> Decimal | None:
        """`amount` (read from `obj[key]`), or None when it has more decimals than `currency`
        allows: a price can be finer than the currency, an amount billed as it stands cannot."""
        if amount is not None and currency and _exact_scale(amount) > MINOR_UNITS[currency]:
            self.err(f"{where}.{key}", f"{obj[key]} has more decimals than {currency} allows "
                                       f"({MINOR_UNITS[currency]})")
            return None
        return amount

    # -- sections ------------------------------------------------------------------------------

    def parse(self, doc: Any) -> Catalog:
        if not isinstance(doc, dict):
            if not self.problems:  # else the loader has said why (an unreadable file, say)
                got = "an empty document" if doc is None else show(doc)
                self.err("catalog", f"the document must be a mapping, got {got}")
            raise CatalogError(self.problems)
        for section in SECTIONS:
            if section not in doc:
                self.err(section, "section is required")
        self.keys(doc, SECTIONS + SETTINGS, "", what="section")
        # Ids declared in each section, valid or not: a reference to a declared-but-broken
        # definition is not reported again as "unknown" (one problem, one message).
        self.declared: dict[str, set[str]] = {}
        for section in ("legal_entities", "meters", "plans"):
            listed = doc.get(section)
            self.declared[section] = {
                item["id"] for item in (listed if isinstance(listed, list | tuple) else ())
                if isinstance(item, dict) and isinstance(item.get("id"), str)}
        self.entity_tax_codes: dict[str, frozenset[str]] = {}
        entities = self.legal_entities(doc)
        meters = self.meters(doc)
        plans = self.plans(doc)
        self.plan_currency = {p.id: p.currency for p in plans.values()}
        customers = self.customers(doc)
        billing_start = self.month(doc, "billing_start")
        if self.count > len(self.problems):
            self.problems.append(f"catalog: {self.count - len(self.problems)} more problem(s) "
                                 "not listed")
        if self.problems:
            raise CatalogError(self.problems)
        return Catalog(entities, meters, plans, customers, billing_start)

    def month(self, doc: Mapping[str, Any], key: str, where: str = "",
              required: bool = False) -> Month | None:
        value = self.given(doc, key, where, required)
        if value is None:
            return None
        path = join_path(where, key)
        if not isinstance(value, str) or not _MONTH.fullmatch(value):
            self.err(path, f"must be a quoted month \"YYYY-MM\" (UTC), got {show(value)}")
            return None
        month = Month.parse(value)
        if not MIN_TIME.year <= month.year < MAX_TIME.year or not 1 <= month.month <= 12:
            self.err(path, f"{value} is not a month within {_RANGE}")
            return None
        return month

    def legal_entities(self, doc: Mapping[str, Any]) -> dict[str, LegalEntity]:
        out: dict[str, LegalEntity] = {}
        seen: dict[str, str] = {}
        for where, item in self.items(doc, "legal_entities", ""):
            self.keys(item, LEGAL_ENTITY_KEYS, where)
            ident = self.text(item, "id", where)
            accounts = self.gl_accounts(item.get("gl_accounts"), f"{where}.gl_accounts")
            currencies = self.currencies(item.get("currencies"), f"{where}.currencies")
            codes = self.tax_codes(item, where)
            if self.unique(seen, ident, where, "legal entity") and ident:
                out[ident] = LegalEntity(ident, accounts, currencies, codes)
        return out

    def tax_codes(self, entity: Mapping[str, Any], where: str) -> dict[str, TaxCode]:
        out: dict[str, TaxCode] = {}
        seen: dict[str, str] = {}
        for twhere, item in self.items(entity, "tax_codes", where, limit=MAX_TAX_CODES):
            self.keys(item, TAX_CODE_KEYS, twhere)
            ident = self.text(item, "id", twhere)
            rate = self.amount(item, "rate", twhere)
            if rate is not None and rate > 1:
                self.err(f"{twhere}.rate", f"is a fraction (\"0.19\" is 19 %), at most 1; got "
                                           f"{item['rate']!r}")
                rate = None
            reverse = item.get("reverse_charge", False)
            if not isinstance(reverse, bool):
                self.err(f"{twhere}.reverse_charge", f"must be true or false, got {show(reverse)}")
                reverse = None
            elif reverse and rate is not None and rate != 0:
                self.err(f"{twhere}.rate", "a reverse-charge tax code has rate \"0\" (the "
                                           "buyer accounts for the tax)")
                rate = None
            if (self.unique(seen, ident, twhere, "tax code") and ident and rate is not None
                    and reverse is not None):
                out[ident] = TaxCode(ident, rate, reverse)
        self.entity_tax_codes[str(entity.get("id"))] = frozenset(seen)
        return out

    def gl_accounts(self, raw: Any, where: str) -> dict[str, str]:
        accounts: dict[str, str] = {}
        if raw is None:
            return accounts
        if not isinstance(raw, dict):
            self.err(where, f"must be a mapping, got {show(raw)}")
            return accounts
        for role, account in raw.items():
            if not isinstance(role, str):
                self.err(where, f"GL role {show(role)} is not a string")
            elif role not in GL_ROLES:
                match = self.nearest(role, GL_ROLES)
                hint = f"did you mean {match!r}? " if match else ""
                self.err(join_path(where, role),
                         f"unknown GL role; {hint}expected one of {', '.join(GL_ROLES)}")
            elif not isinstance(account, str) or not account:
                self.err(join_path(where, role),
                         f"account must be a quoted string, got {show(account)}")
            elif (problem := _text_problem(account)) is not None:
                self.err(join_path(where, role), f"account {problem}")
            else:
                accounts[role] = account
        return accounts

    def currencies(self, raw: Any, where: str) -> tuple[str, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list | tuple):
            self.err(where, f"must be a list of ISO 4217 currency codes, got {show(raw)}")
            return ()
        out: list[str] = []
        for i, cur in enumerate(raw):
            problem = _currency_problem(cur)
            if problem is not None:
                self.err(f"{where}[{i}]", f"unknown currency {problem}"
                         if isinstance(cur, str) else problem)
            elif cur in out:
                self.err(f"{where}[{i}]", f"currency {cur!r} is listed twice")
            else:
                out.append(cur)
        return tuple(out)

    def meters(self, doc: Mapping[str, Any]) -> dict[str, Meter]:
        out: dict[str, Meter] = {}
        seen: dict[str, str] = {}
        for where, item in self.items(doc, "meters", "", limit=MAX_METERS):
            self.keys(item, METER_KEYS, where)
            ident = self.text(item, "id", where)
            event_type = self.text(item, "event_type", where)
            aggregation = self.choice(item, "aggregation", where, AGGREGATIONS, "aggregation")
            path: tuple[str, ...] = ()
            if aggregation == "count":
                # A count ignores the event's data: a value there means the editor expected a
                # sum, and would silently get a count.
                if item.get("value") is not None:
                    self.err(f"{where}.value", "'value' does not apply to aggregation count")
            else:
                value = self.text(item, "value", where, required=aggregation is not None)
                if value is not None:
                    path = tuple(value.split("."))
                    if any(not part for part in path):
                        self.err(f"{where}.value", f"bad dotted path {value!r}")
                    elif len(path) > MAX_DEPTH:
                        # event data nested deeper than this is refused on ingest
                        self.err(f"{where}.value",
                                 f"has {len(path)} parts; event data is at most {MAX_DEPTH} "
                                 "levels deep")
            if (self.unique(seen, ident, where, "meter") and ident and event_type
                    and aggregation):
                out[ident] = Meter(ident, event_type, aggregation, path)
        return out

    def choice(self, obj: Mapping[str, Any], key: str, where: str, choices: tuple[str, ...],
               what: str, default: str | None = None) -> str | None:
        value = obj.get(key, default)
        if value is None:
            self.err(join_path(where, key), "is required")
            return None
        if not isinstance(value, str) or value not in choices:
            shown = show(value)
            hint = ""
            if isinstance(value, str):
                match = self.nearest(value, choices)
                hint = f"did you mean {match!r}? " if match else ""
            self.err(join_path(where, key),
                     f"unknown {what} {shown}; {hint}expected one of {', '.join(choices)}")
            return None
        return value

    def plans(self, doc: Mapping[str, Any]) -> dict[str, Plan]:
        out: dict[str, Plan] = {}
        seen: dict[str, str] = {}
        for where, item in self.items(doc, "plans", ""):
            self.keys(item, PLAN_KEYS, where)
            ident = self.text(item, "id", where)
            currency = self.currency(item, where)
            fees = []
            fee_ids: dict[str, str] = {}
            for fwhere, fee in self.items(item, "fixed_fees", where, limit=MAX_FIXED_FEES):
                self.keys(fee, FIXED_FEE_KEYS, fwhere)
                fid = self.text(fee, "id", fwhere)
                amount = self.in_minor_units(self.amount(fee, "amount", fwhere), fee, "amount",
                                             fwhere, currency)
                rec = self.choice(fee, "revenue_recognition", fwhere, RECOGNITION,
                                  "revenue recognition", default="ratable")
                if (self.unique(fee_ids, fid, fwhere, "fixed fee") and fid and amount is not None
                        and rec):
                    # `choice` admitted only a name in RECOGNITION.
                    fees.append(FixedFee(fid, amount, cast(FeeRecognition, rec)))
            charges = []
            charged: dict[str, str] = {}
            for cwhere, raw in self.items(item, "charges", where, limit=MAX_METERS):
                charge = self.charge(raw, cwhere)
                if charge is None:
                    continue
                if self.in_minor_units(charge.minimum, raw, "minimum", cwhere,
                                       currency) is None and charge.minimum is not None:
                    continue
                # One charge per meter per plan: line ids are keyed by meter, and two prices on
                # one meter is better written as tiers.
                if charge.meter in charged:
                    self.err(f"{cwhere}.meter", f"meter {charge.meter!r} is already charged at "
                                                f"{charged[charge.meter]}")
                    continue
                charged[charge.meter] = cwhere
                charges.append(charge)
            if self.unique(seen, ident, where, "plan") and ident and currency:
                out[ident] = Plan(ident, currency, tuple(fees), tuple(charges))
        return out

    def charge_keys(self, raw: Mapping[Any, Any], where: str, model: str | None) -> None:
        allowed = CHARGE_KEYS + (MODEL_KEYS[model] if model else ())
        every = CHARGE_KEYS + tuple(k for keys in MODEL_KEYS.values() for k in keys)
        for key in raw:
            if key in allowed or (model is None and key in every):
                continue
            if not isinstance(key, str):
                self.err(where, f"key {show(key)} is not a string")
            elif key in every:
                users = ", ".join(m for m, keys in MODEL_KEYS.items() if key in keys)
                self.err(join_path(where, key), f"{key!r} does not apply to model {model} "
                                            f"(only to {users})")
            else:
                self.err(join_path(where, key),
                         f"unknown key{self.suggest(key, allowed if model else every)}")

    def charge(self, raw: Mapping[str, Any], where: str) -> Charge | None:
        meter = self.text(raw, "meter", where)
        if meter is not None and meter not in self.declared["meters"]:
            self.err(f"{where}.meter", f"unknown meter {meter!r}")
            meter = None
        model = raw.get("model")
        if model is None:
            self.err(f"{where}.model", "is required")
        elif not isinstance(model, str) or model not in MODELS:
            self.err(f"{where}.model", f"unknown pricing model {show(model)}; expected one of "
                                       f"{', '.join(MODELS)}")
            model = None
        self.charge_keys(raw, where, model)
        minimum = self.amount(raw, "minimum", where, required=False)
        if model is None:
            return None
        before = self.count
        built = None
        if model == "per_unit":
            unit = self.amount(raw, "unit_price", where)
            if unit is not None:
                built = Charge(meter or "", model, unit_price=unit, minimum=minimum)
        elif model in ("graduated", "volume"):
            tiers = self.tiers(raw, where)
            if tiers:
                built = Charge(meter or "", model, tiers=tiers, minimum=minimum)
        elif model == "package":
            size = self.amount(raw, "package_size", where, positive=True, below=MAX_QUANTITY)
            price = self.amount(raw, "package_price", where)
            if size is not None and price is not None:
                built = Charge(meter or "", model, package_size=size, package_price=price,
                               minimum=minimum)
        else:  # percentage
            rate = self.amount(raw, "rate", where)
            if rate is not None:
                built = Charge(meter or "", model, rate=rate, minimum=minimum)
        if meter is None or self.count != before:
            return None
        return built

    def tiers(self, raw: Mapping[str, Any], where: str) -> tuple[Tier, ...]:
        given = raw.get("tiers")
        if given is None or (isinstance(given, list | tuple) and not given):
            self.err(f"{where}.tiers", "at least one tier is required")
            return ()
        listed = self.items(raw, "tiers", where, limit=MAX_TIERS)
        tiers = []
        previous: Decimal | None = None
        for i, (twhere, tier) in enumerate(listed):
            self.keys(tier, TIER_KEYS, twhere)
            last = i == len(listed) - 1
            up_to = self.amount(tier, "up_to", twhere, required=False, positive=True,
                                below=MAX_QUANTITY)
            if "up_to" in tier and tier["up_to"] is None and not last:
                self.err(f"{twhere}.up_to", "only the last tier may be open")
            if up_to is None and not last and "up_to" not in tier:
                self.err(f"{twhere}.up_to", "only the last tier may be open")
            if last and up_to is not None:
                self.err(f"{twhere}.up_to", "the last tier must be open (no up_to)")
            if up_to is not None and previous is not None and up_to <= previous:
                self.err(f"{twhere}.up_to", f"tiers must ascend: {up_to} is not above "
                                            f"{previous}")
            unit = self.amount(tier, "unit_price", twhere)
            flat = self.amount(tier, "flat_price", twhere, required=False)
            if up_to is not None:
                previous = up_to
            if unit is not None:
                tiers.append(Tier(up_to, unit, flat if flat is not None else Decimal(0)))
        return tuple(tiers)

    def customers(self, doc: Mapping[str, Any]) -> dict[str, Customer]:
        out: dict[str, Customer] = {}
        seen: dict[str, str] = {}
        subject_owner: dict[str, str] = {}
        sub_ids: dict[str, str] = {}
        customer_keys = frozenset(CUSTOMER_KEYS)
        subscription_keys = frozenset(SUBSCRIPTION_KEYS)
        for where, item in self.items(doc, "customers", ""):
            # The common case, settled with one set comparison: this loop runs per customer.
            if not item.keys() <= customer_keys:
                self.keys(item, CUSTOMER_KEYS, where)
            ident = self.text(item, "id", where)
            entity = self.text(item, "legal_entity", where)
            if entity is not None and entity not in self.declared["legal_entities"]:
                self.err(f"{where}.legal_entity", f"unknown legal entity {entity!r}")
            subjects = self.subjects(item.get("subjects"), f"{where}.subjects", where,
                                     subject_owner)
            tax = item.get("tax_registration")
            if tax is not None and tax != "":  # "": a customer without one is held, not dropped
                problem = (_text_problem(tax) if isinstance(tax, str)
                           else f"must be a string, got {show(tax)}")
                if problem is not None:
                    self.err(f"{where}.tax_registration",
                             f"{problem} (leave it empty if unknown)")
                    tax = None
            tax_code = self.text(item, "tax_code", where, required=False)
            if tax_code is not None and entity is not None \
                    and entity in self.entity_tax_codes:
                codes = self.entity_tax_codes[entity]
                if not codes:
                    self.err(f"{where}.tax_code", f"legal entity {entity!r} declares no "
                                                  "tax_codes")
                elif tax_code not in codes:
                    self.err(f"{where}.tax_code", f"unknown tax code {tax_code!r} of legal "
                                                  f"entity {entity!r}"
                                                  f"{self.suggest(tax_code, tuple(sorted(codes)))}")
            terms = item.get("payment_terms_days")
            if terms is not None and (isinstance(terms, bool) or not isinstance(terms, int)
                                      or not 0 <= terms <= MAX_PAYMENT_TERMS_DAYS):
                self.err(f"{where}.payment_terms_days",
                         f"must be a whole number of days >= 0 (at most "
                         f"{MAX_PAYMENT_TERMS_DAYS}), got {show(terms)}")
                terms = None
            subs = []
            for swhere, sub in self.items(item, "subscriptions", where,
                                          limit=MAX_SUBSCRIPTIONS):
                if not sub.keys() <= subscription_keys:
                    self.keys(sub, SUBSCRIPTION_KEYS, swhere)
                sid = self.text(sub, "id", swhere)
                plan = self.text(sub, "plan", swhere)
                if plan is not None and plan not in self.declared["plans"]:
                    self.err(f"{swhere}.plan", f"unknown plan {plan!r}")
                    plan = None
                start = self.instant(sub, "start", swhere)
                end = self.instant(sub, "end", swhere, required=False)
                if start and end and end <= start:
                    self.err(f"{swhere}.end", "must be after start")
                    continue
                discounts = self.discounts(sub, swhere, self.plan_currency.get(plan or ""))
                if (self.unique(sub_ids, sid, swhere, "subscription") and sid and plan
                        and start and ident):
                    subs.append((swhere, Subscription(sid, ident, plan, start, end,
                                                      discounts)))
            subs.sort(key=lambda pair: pair[1].start)
            for (_, a), (bwhere, b) in itertools.pairwise(subs):
                if a.end is None or a.end > b.start:
                    self.err(bwhere, f"subscription {b.id!r} overlaps {a.id!r} of the same "
                                     "customer")
            if self.unique(seen, ident, where, "customer") and ident and entity:
                out[ident] = Customer(ident, entity, subjects, tax or None, terms,
                                      tuple(s for _, s in subs), tax_code,
                                      self.credits(item, where))
        return out

    def credits(self, customer: Mapping[str, Any], where: str) -> tuple[Credit, ...]:
        out: list[Credit] = []
        seen: dict[str, str] = {}
        for cwhere, item in self.items(customer, "credits", where, limit=MAX_CREDITS):
            self.keys(item, CREDIT_KEYS, cwhere)
            ident = self.text(item, "id", cwhere)
            currency = self.currency(item, cwhere)
            amount = self.in_minor_units(self.amount(item, "amount", cwhere, positive=True),
                                         item, "amount", cwhere, currency)
            granted = self.instant(item, "granted", cwhere)
            expires = self.instant(item, "expires", cwhere)
            if granted and expires and expires <= granted:
                self.err(f"{cwhere}.expires", "must be after granted")
                expires = None
            if (self.unique(seen, ident, cwhere, "credit") and ident and amount is not None
                    and currency and granted and expires):
                out.append(Credit(ident, amount, currency, granted, expires))
        return tuple(out)

    def discounts(self, sub: Mapping[str, Any], where: str, currency: str | None
                  ) -> tuple[Discount, ...]:
        out: list[Discount] = []
        seen: dict[str, str] = {}
        for dwhere, item in self.items(sub, "discounts", where, limit=MAX_DISCOUNTS):
            self.keys(item, DISCOUNT_KEYS, dwhere)
            ident = self.text(item, "id", dwhere)
            first = self.month(item, "from", dwhere, required=True)
            months = item.get("months")
            if months is not None and (isinstance(months, bool) or not isinstance(months, int)
                                       or not 1 <= months <= MAX_DISCOUNT_MONTHS):
                self.err(f"{dwhere}.months", f"must be a whole number of billing periods from 1 "
                                             f"to {MAX_DISCOUNT_MONTHS} (leave it out for no "
                                             f"end), got {show(months)}")
                months = None
                first = None
            has_percent, has_amount = "percent" in item, "amount" in item
            percent = amount = None
            scope: str | None = "all"
            if has_percent == has_amount:
                self.err(dwhere, "give exactly one of percent and amount")
            elif has_percent:
                percent = self.amount(item, "percent", dwhere, positive=True)
                if percent is not None and percent > 100:
                    self.err(f"{dwhere}.percent", f"must be at most 100, got {item['percent']!r}")
                    percent = None
                scope = self.choice(item, "applies_to", dwhere, DISCOUNT_SCOPES, "scope",
                                    default="all")
            else:
                amount = self.in_minor_units(self.amount(item, "amount", dwhere, positive=True),
                                             item, "amount", dwhere, currency)
                if "applies_to" in item:
                    self.err(f"{dwhere}.applies_to", "an amount discount applies to the whole "
                                                     "invoice; applies_to is for percent ones")
            if (self.unique(seen, ident, dwhere, "discount") and ident and first is not None
                    and scope is not None and (percent is not None or amount is not None)):
                out.append(Discount(ident, first, months, percent, amount,
                                    cast(DiscountScope, scope)))
        return tuple(out)

    def subjects(self, raw: Any, where: str, owner: str, subject_owner: dict[str, str]
                 ) -> tuple[str, ...]:
        if not isinstance(raw, list | tuple) or not raw:
            self.err(where, "must be a non-empty list of subject strings")
            return ()
        if len(raw) > MAX_SUBJECTS:
            self.err(where, f"has {len(raw)} entries; at most {MAX_SUBJECTS} are allowed")
            return ()
        subjects = []
        for i, subj in enumerate(raw):
            problem = _text_problem(subj)
            if problem is not None:
                self.err(f"{where}[{i}]", problem)
            elif subj in subject_owner:
                self.err(f"{where}[{i}]", f"subject {subj!r} already belongs to "
                                          f"{subject_owner[subj]}")
            else:
                subject_owner[subj] = owner
                subjects.append(subj)
        return tuple(subjects)
