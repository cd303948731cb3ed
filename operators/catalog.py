"""The catalog: legal entities, meters, plans and customers, validated once.

`load_catalog` reads YAML and returns an immutable `Catalog`, or raises `CatalogError` listing
every problem with its YAML path, so an operator fixes the file in one pass rather than one error
per run. Money and quantities must be quoted decimal strings: PyYAML would turn `0.1` into a binary
float before we ever saw its text, so an unquoted number there is refused, not converted.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import yaml

from operators.money import MAX_SCALE, MINOR_UNITS, MoneyError, parse_decimal, scale

AGGREGATIONS = ("count", "sum", "max", "unique_count", "latest")
MODELS = ("per_unit", "graduated", "volume", "package", "percentage")
RECOGNITION = ("ratable", "point_in_time")
GL_ROLES = ("receivable", "usage_revenue", "subscription_revenue", "deferred_revenue")


class CatalogError(Exception):
    """The catalog is unusable. `problems` lists each one as 'path: message'."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            f"catalog has {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems)
        )


@dataclass(frozen=True, slots=True)
class LegalEntity:
    id: str
    gl_accounts: Mapping[str, str]
    currencies: tuple[str, ...] = ()  # empty: any currency may be posted


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
    revenue_recognition: str


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

    def active_at(self, at: datetime) -> bool:
        return self.start <= at and (self.end is None or at < self.end)


@dataclass(frozen=True, slots=True)
class Customer:
    id: str
    legal_entity: str
    subjects: tuple[str, ...]
    tax_registration: str | None
    payment_terms_days: int | None
    subscriptions: tuple[Subscription, ...]  # sorted by start, non-overlapping

    def hold_reasons(self) -> tuple[str, ...]:
        reasons = []
        if not self.tax_registration:
            reasons.append("MISSING_TAX_REGISTRATION")
        if self.payment_terms_days is None:
            reasons.append("MISSING_PAYMENT_TERMS")
        return tuple(reasons)


@dataclass(frozen=True)
class Catalog:
    legal_entities: Mapping[str, LegalEntity]
    meters: Mapping[str, Meter]
    plans: Mapping[str, Plan]
    customers: Mapping[str, Customer]
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


def load_catalog(path: str) -> Catalog:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except OSError as exc:
        raise CatalogError([f"{path}: cannot read: {exc.strerror}"]) from exc
    except yaml.YAMLError as exc:
        raise CatalogError([f"{path}: not valid YAML: {exc}"]) from exc
    return parse_catalog(doc)


def parse_catalog(doc: Any) -> Catalog:
    return _Parser().parse(doc)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


class _Parser:
    """Collects every problem instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def err(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    # -- field readers: each returns None after recording a problem ---------------------------

    def text(self, obj: Mapping[str, Any], key: str, path: str, required: bool = True
             ) -> str | None:
        value = obj.get(key)
        if value is None:
            if required:
                self.err(f"{path}.{key}", "is required")
            return None
        if not isinstance(value, str) or not value.strip():
            self.err(f"{path}.{key}", f"must be a non-empty string, got {value!r}")
            return None
        return value

    def amount(
        self, obj: Mapping[str, Any], key: str, path: str, required: bool = True,
        positive: bool = False,
    ) -> Decimal | None:
        value = obj.get(key)
        where = f"{path}.{key}"
        if value is None:
            if required:
                self.err(where, "is required")
            return None
        if isinstance(value, bool) or not isinstance(value, str):
            if isinstance(value, float):
                self.err(where, f"unquoted float {value!r}: write money and quantities as "
                                f"quoted decimal strings, e.g. \"{value}\"")
            else:
                self.err(where, f"must be a quoted decimal string, got {value!r}")
            return None
        try:
            parsed = parse_decimal(value)
        except MoneyError as exc:
            self.err(where, str(exc))
            return None
        if parsed < 0:
            self.err(where, f"must not be negative, got {value!r}")
            return None
        if positive and parsed == 0:
            self.err(where, "must be greater than zero")
            return None
        if scale(parsed) > MAX_SCALE:
            self.err(where, f"has more than {MAX_SCALE} fractional digits")
            return None
        return parsed

    def instant(self, obj: Mapping[str, Any], key: str, path: str, required: bool = True
                ) -> datetime | None:
        value = obj.get(key)
        where = f"{path}.{key}"
        if value is None:
            if required:
                self.err(where, "is required")
            return None
        if isinstance(value, datetime):
            parsed = value
        elif isinstance(value, date):
            self.err(where, f"must be a timestamp with an offset, got the date {value}")
            return None
        elif isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                self.err(where, f"not an RFC 3339 timestamp: {value!r}")
                return None
        else:
            self.err(where, f"must be an RFC 3339 timestamp, got {value!r}")
            return None
        if parsed.tzinfo is None:
            self.err(where, f"timestamp {value!s} has no UTC offset")
            return None
        return parsed.astimezone(UTC)

    def items(self, obj: Mapping[str, Any], key: str, path: str) -> list[tuple[str, Any]]:
        value = obj.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.err(f"{path}.{key}", "must be a list")
            return []
        out = []
        for i, item in enumerate(value):
            where = f"{path}.{key}[{i}]" if path else f"{key}[{i}]"
            if not isinstance(item, dict):
                self.err(where, "must be a mapping")
                continue
            out.append((where, item))
        return out

    def unique(self, seen: dict[str, str], ident: str | None, where: str, what: str) -> bool:
        if ident is None:
            return False
        if ident in seen:
            self.err(where, f"duplicate {what} id {ident!r} (first at {seen[ident]})")
            return False
        seen[ident] = where
        return True

    # -- sections ------------------------------------------------------------------------------

    def parse(self, doc: Any) -> Catalog:
        if not isinstance(doc, dict):
            raise CatalogError(["catalog: the document must be a mapping"])
        for section in ("legal_entities", "meters", "plans", "customers"):
            if section not in doc:
                self.err(section, "section is required")
        for key in doc:
            if key not in ("legal_entities", "meters", "plans", "customers"):
                self.err(str(key), "unknown section")
        # Ids declared in each section, valid or not: a reference to a declared-but-broken
        # definition is not reported again as "unknown" (one problem, one message).
        self.declared = {
            section: {item["id"] for item in _as_list(doc.get(section))
                      if isinstance(item, dict) and isinstance(item.get("id"), str)}
            for section in ("legal_entities", "meters", "plans")
        }
        entities = self.legal_entities(doc)
        meters = self.meters(doc)
        plans = self.plans(doc, meters)
        customers = self.customers(doc, entities, plans)
        if self.problems:
            raise CatalogError(self.problems)
        return Catalog(entities, meters, plans, customers)

    def legal_entities(self, doc: Mapping[str, Any]) -> dict[str, LegalEntity]:
        out: dict[str, LegalEntity] = {}
        seen: dict[str, str] = {}
        for where, item in self.items(doc, "legal_entities", ""):
            ident = self.text(item, "id", where)
            accounts_raw = item.get("gl_accounts") or {}
            accounts: dict[str, str] = {}
            if not isinstance(accounts_raw, dict):
                self.err(f"{where}.gl_accounts", "must be a mapping")
            else:
                for role, account in accounts_raw.items():
                    if role not in GL_ROLES:
                        self.err(f"{where}.gl_accounts.{role}",
                                 f"unknown GL role; expected one of {', '.join(GL_ROLES)}")
                    elif not isinstance(account, str) or not account:
                        self.err(f"{where}.gl_accounts.{role}",
                                 f"account must be a quoted string, got {account!r}")
                    else:
                        accounts[role] = account
            currencies: list[str] = []
            for i, cur in enumerate(item.get("currencies") or []):
                if cur not in MINOR_UNITS:
                    self.err(f"{where}.currencies[{i}]", f"unknown currency {cur!r}")
                else:
                    currencies.append(cur)
            if self.unique(seen, ident, where, "legal entity") and ident:
                out[ident] = LegalEntity(ident, accounts, tuple(currencies))
        return out

    def meters(self, doc: Mapping[str, Any]) -> dict[str, Meter]:
        out: dict[str, Meter] = {}
        seen: dict[str, str] = {}
        for where, item in self.items(doc, "meters", ""):
            ident = self.text(item, "id", where)
            event_type = self.text(item, "event_type", where)
            aggregation = self.text(item, "aggregation", where)
            if aggregation is not None and aggregation not in AGGREGATIONS:
                self.err(f"{where}.aggregation",
                         f"unknown aggregation {aggregation!r}; expected one of "
                         f"{', '.join(AGGREGATIONS)}")
                aggregation = None
            value = self.text(item, "value", where, required=aggregation not in (None, "count"))
            path: tuple[str, ...] = ()
            if value is not None:
                path = tuple(value.split("."))
                if any(not part for part in path):
                    self.err(f"{where}.value", f"bad dotted path {value!r}")
            if (self.unique(seen, ident, where, "meter") and ident and event_type
                    and aggregation):
                out[ident] = Meter(ident, event_type, aggregation, path)
        return out

    def plans(self, doc: Mapping[str, Any], meters: Mapping[str, Meter]) -> dict[str, Plan]:
        out: dict[str, Plan] = {}
        seen: dict[str, str] = {}
        for where, item in self.items(doc, "plans", ""):
            ident = self.text(item, "id", where)
            currency = self.text(item, "currency", where)
            if currency is not None and currency not in MINOR_UNITS:
                self.err(f"{where}.currency", f"unknown ISO 4217 currency {currency!r}")
                currency = None
            fees = []
            fee_ids: dict[str, str] = {}
            for fwhere, fee in self.items(item, "fixed_fees", where):
                fid = self.text(fee, "id", fwhere)
                amount = self.amount(fee, "amount", fwhere)
                rec = fee.get("revenue_recognition", "ratable")
                if rec not in RECOGNITION:
                    self.err(f"{fwhere}.revenue_recognition",
                             f"must be one of {', '.join(RECOGNITION)}, got {rec!r}")
                if amount is not None and currency and scale(amount) > MINOR_UNITS[currency]:
                    self.err(f"{fwhere}.amount", f"{fee['amount']} has more decimals than "
                                                 f"{currency} allows ({MINOR_UNITS[currency]})")
                    amount = None
                if self.unique(fee_ids, fid, fwhere, "fixed fee") and fid and amount is not None:
                    fees.append(FixedFee(fid, amount, rec))
            charges = []
            charged: dict[str, str] = {}
            for cwhere, raw in self.items(item, "charges", where):
                charge = self.charge(raw, cwhere, meters)
                if charge is None:
                    continue
                if (charge.minimum is not None and currency
                        and scale(charge.minimum) > MINOR_UNITS[currency]):
                    self.err(f"{cwhere}.minimum", f"{raw['minimum']} has more decimals than "
                                                  f"{currency} allows ({MINOR_UNITS[currency]})")
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

    def charge(self, raw: Mapping[str, Any], where: str, meters: Mapping[str, Meter]
               ) -> Charge | None:
        meter = self.text(raw, "meter", where)
        if meter is not None and meter not in self.declared["meters"]:
            self.err(f"{where}.meter", f"unknown meter {meter!r}")
            meter = None
        model = self.text(raw, "model", where)
        if model is not None and model not in MODELS:
            self.err(f"{where}.model", f"unknown pricing model {model!r}; expected one of "
                                       f"{', '.join(MODELS)}")
            return None
        minimum = self.amount(raw, "minimum", where, required=False)
        if meter is None or model is None:
            return None
        before = len(self.problems)
        if model == "per_unit":
            unit = self.amount(raw, "unit_price", where)
            if len(self.problems) == before and unit is not None:
                return Charge(meter, model, unit_price=unit, minimum=minimum)
        elif model in ("graduated", "volume"):
            tiers = self.tiers(raw, where)
            if len(self.problems) == before and tiers:
                return Charge(meter, model, tiers=tiers, minimum=minimum)
        elif model == "package":
            size = self.amount(raw, "package_size", where, positive=True)
            price = self.amount(raw, "package_price", where)
            if len(self.problems) == before and size is not None and price is not None:
                return Charge(meter, model, package_size=size, package_price=price,
                              minimum=minimum)
        else:  # percentage
            rate = self.amount(raw, "rate", where)
            if len(self.problems) == before and rate is not None:
                return Charge(meter, model, rate=rate, minimum=minimum)
        return None

    def tiers(self, raw: Mapping[str, Any], where: str) -> tuple[Tier, ...]:
        listed = self.items(raw, "tiers", where)
        if not listed:
            self.err(f"{where}.tiers", "at least one tier is required")
            return ()
        tiers = []
        previous: Decimal | None = None
        for i, (twhere, tier) in enumerate(listed):
            last = i == len(listed) - 1
            up_to = self.amount(tier, "up_to", twhere, required=False, positive=True)
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

    def customers(self, doc: Mapping[str, Any], entities: Mapping[str, LegalEntity],
                  plans: Mapping[str, Plan]) -> dict[str, Customer]:
        out: dict[str, Customer] = {}
        seen: dict[str, str] = {}
        subject_owner: dict[str, str] = {}
        sub_ids: dict[str, str] = {}
        for where, item in self.items(doc, "customers", ""):
            ident = self.text(item, "id", where)
            entity = self.text(item, "legal_entity", where)
            if entity is not None and entity not in self.declared["legal_entities"]:
                self.err(f"{where}.legal_entity", f"unknown legal entity {entity!r}")
            subjects: list[str] = []
            raw_subjects = item.get("subjects")
            if not isinstance(raw_subjects, list) or not raw_subjects:
                self.err(f"{where}.subjects", "must be a non-empty list of subject strings")
            else:
                for i, subj in enumerate(raw_subjects):
                    swhere = f"{where}.subjects[{i}]"
                    if not isinstance(subj, str) or not subj:
                        self.err(swhere, f"must be a non-empty string, got {subj!r}")
                    elif subj in subject_owner:
                        self.err(swhere, f"subject {subj!r} already belongs to "
                                         f"{subject_owner[subj]}")
                    else:
                        subject_owner[subj] = where
                        subjects.append(subj)
            tax = item.get("tax_registration")
            if tax is not None and not isinstance(tax, str):
                self.err(f"{where}.tax_registration", f"must be a string, got {tax!r}")
                tax = None
            terms = item.get("payment_terms_days")
            if terms is not None and (isinstance(terms, bool) or not isinstance(terms, int)
                                      or terms < 0):
                self.err(f"{where}.payment_terms_days",
                         f"must be a whole number of days >= 0, got {terms!r}")
                terms = None
            subs = []
            for swhere, sub in self.items(item, "subscriptions", where):
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
                if (self.unique(sub_ids, sid, swhere, "subscription") and sid and plan
                        and start and ident):
                    subs.append((swhere, Subscription(sid, ident, plan, start, end)))
            subs.sort(key=lambda pair: pair[1].start)
            for (_, a), (bwhere, b) in itertools.pairwise(subs):
                if a.end is None or a.end > b.start:
                    self.err(bwhere, f"subscription {b.id!r} overlaps {a.id!r} of the same "
                                     "customer")
            if self.unique(seen, ident, where, "customer") and ident and entity:
                out[ident] = Customer(ident, entity, tuple(subjects), tax or None, terms,
                                      tuple(s for _, s in subs))
        return out
