"""Contracts as versioned records: the catalog split into one record per legal entity, meter,
plan, customer (with its subscriptions) and setting, as published on the compacted contracts
topic, and the rule that keeps what was already rated from changing under it.

A record's key is `<kind>/<id>` (`plan/growth-usd`, `customer/acme`, `setting/billing_start`);
its value names the kind, the id, a version (1 for the first publication of the key, one more
for each change) and the spec: the catalog file's mapping for it, as JSON. A removed record is a
tombstone (no value). The catalog in force is the one assembled from the latest record of every
key, validated by the same parser as a file (operators/catalog.py), so a record can never make
the flow hold a catalog a file could not.

Subscriptions stay inside their customer's record, as in the file: a customer's subjects and
subscriptions change together, and the record is what is applied or refused as a whole.

Immutability (`refusals`): once anything of a subscription has been rated or invoiced, the
contract terms that priced it may not change. Its plan, its customer and that customer's legal
entity are fixed; its start and end may move only where no rated usage or invoiced period lies
between the old and the new instant; a plan or meter that priced rated usage is never edited
(a price change is a new plan, and the subscription moves to it at an effective time: one
subscription ends where the next starts). A subscription may not be added in a period already
retired (it could never be invoiced). `billing_start` is fixed once anything was rated or
invoiced. What may always change: subjects, tax registration, payment terms, GL accounts, new
plans, meters, customers and subscriptions, and an end moved within the future.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import msgspec

from operators.catalog import Catalog, Subscription, parse_catalog

KINDS = ("setting", "legal_entity", "meter", "plan", "customer")
_SECTION = {"legal_entity": "legal_entities", "meter": "meters", "plan": "plans",
            "customer": "customers"}
_KIND_OF = {v: k for k, v in _SECTION.items()}
SETTING_KEYS = ("billing_start",)
Spec = dict[str, Any]


class ContractRecord(msgspec.Struct, kw_only=True):
    """The value of one message on the contracts topic."""

    kind: str
    id: str
    version: int
    spec: Spec


class ContractsError(ValueError):
    """A contracts message that is not a record of this format (a hostile or mistaken
    producer): it is refused, never applied."""


def record_key(kind: str, ident: str) -> str:
    return f"{kind}/{ident}"


def _plain(value: Any) -> Any:
    """The YAML document's values as JSON can hold them: timestamps as RFC 3339 text (the
    parser reads both), everything else as it is."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def specs_of(doc: Mapping[str, Any]) -> dict[str, Spec]:
    """Record key -> spec for every definition of a catalog document that parsed without a
    problem (so every item is a mapping with a string id, and ids are unique)."""
    out: dict[str, Spec] = {}
    for section, kind in _KIND_OF.items():
        for item in doc.get(section) or ():
            out[record_key(kind, item["id"])] = _plain(item)
    for name in SETTING_KEYS:
        if doc.get(name) is not None:
            out[record_key("setting", name)] = {"value": _plain(doc[name])}
    return out


def document_of(specs: Mapping[str, Spec]) -> dict[str, Any]:
    """The catalog document the records make: each section in id order."""
    doc: dict[str, Any] = {section: [] for section in _KIND_OF}
    for key in sorted(specs):
        kind, _, ident = key.partition("/")
        if kind == "setting":
            doc[ident] = specs[key].get("value")
        else:
            spec = specs[key]
            doc[_SECTION[kind]].append({"id": spec.get("id"), **{
                k: v for k, v in spec.items() if k != "id"}})
    return doc


def catalog_of(specs: Mapping[str, Spec]) -> Catalog:
    """The validated catalog; CatalogError (every problem) when the records do not make one."""
    return parse_catalog(document_of(specs))


def changes(current: Mapping[str, Spec], wanted: Mapping[str, Spec]
            ) -> list[tuple[str, Spec | None]]:
    """What to publish to go from `current` to `wanted`: the changed and new records, and a
    tombstone (None) for each record `wanted` no longer has; in key order."""
    out: list[tuple[str, Spec | None]] = []
    for key in sorted(set(current) | set(wanted)):
        new = wanted.get(key)
        if current.get(key) != new:
            out.append((key, new))
    return out


_DECODER = msgspec.json.Decoder(ContractRecord)
_ENCODER = msgspec.json.Encoder(order="sorted")


def encode_record(key: str, version: int, spec: Spec) -> bytes:
    kind, _, ident = key.partition("/")
    return _ENCODER.encode(ContractRecord(kind=kind, id=ident, version=version, spec=spec))


def decode_record(key: bytes | None, value: bytes | None) -> tuple[str, int, Spec | None]:
    """(record key, version, spec or None for a tombstone) of one contracts message, or
    ContractsError saying why it is not one."""
    if key is None:
        msg = "a contracts message without a key"
        raise ContractsError(msg)
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        msg = f"a contracts message whose key is not UTF-8: {key[:80]!r}"
        raise ContractsError(msg) from None
    kind, sep, ident = text.partition("/")
    if not sep or kind not in KINDS or not ident:
        msg = (f"key {text[:200]!r} is not <kind>/<id> with a kind of "
               f"{', '.join(KINDS)}")
        raise ContractsError(msg)
    if kind == "setting" and ident not in SETTING_KEYS:
        msg = f"key {text[:200]!r}: unknown setting; expected one of {', '.join(SETTING_KEYS)}"
        raise ContractsError(msg)
    if value is None:
        return text, 0, None
    try:
        record = _DECODER.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        msg = f"{text[:200]}: not a contracts record: {str(exc)[:200]}"
        raise ContractsError(msg) from None
    if record.kind != kind or record.id != ident:
        msg = (f"{text[:200]}: the record says {record.kind}/{record.id[:200]}, not what its "
               "key says")
        raise ContractsError(msg)
    if kind == "setting" and set(record.spec) != {"value"}:
        msg = f"{text[:200]}: a setting's spec is {{\"value\": ...}}"
        raise ContractsError(msg)
    if kind != "setting" and record.spec.get("id") != ident:
        msg = f"{text[:200]}: the spec's id is {record.spec.get('id')!r}, not its key's"
        raise ContractsError(msg)
    return text, record.version, record.spec


# -- what may change -------------------------------------------------------------------------------

_NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Frozen:
    """What is rated or invoiced already, the basis of `refusals`.

    `subscriptions`: for each subscription with rated usage, an instant its latest rated usage
    lies before (the end of its latest rated window). `closed_end`: the end of the last closed
    period, through which every active subscription was invoiced. `retired_end`: the end of the
    last retired period."""

    subscriptions: Mapping[str, datetime] = field(default_factory=dict)
    closed_end: datetime | None = None
    retired_end: datetime | None = None

    def until(self, sub: Subscription) -> datetime | None:
        """The instant before which `sub` is rated or invoiced (None: nothing of it is)."""
        rated = self.subscriptions.get(sub.id)
        closed = self.closed_end if (self.closed_end is not None
                                     and sub.start < self.closed_end) else None
        if rated is None or (closed is not None and closed > rated):
            rated = closed
        return rated if rated is not None and sub.start < rated else None

    @property
    def anything(self) -> bool:
        return bool(self.subscriptions) or self.closed_end is not None


def _at(value: datetime | None) -> str:
    if value is None:
        return "open-ended"
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def refusals(old: Catalog, new: Catalog, frozen: Frozen) -> dict[str, str]:
    """Record key -> why the change from `old` to `new` of that record would alter usage
    already rated or invoiced (module docstring). Empty: `new` may be applied."""
    out: dict[str, str] = {}

    def refuse(key: str, why: str) -> None:
        out.setdefault(key, why)

    used_plans: dict[str, tuple[str, datetime]] = {}
    for sub in old.subscriptions.values():
        until = frozen.until(sub)
        if until is None:
            continue
        key = record_key("customer", sub.customer_id)
        if sub.plan_id not in used_plans:
            used_plans[sub.plan_id] = (sub.id, until)
        now = new.subscriptions.get(sub.id)
        where = f"subscription {sub.id!r} is rated or invoiced through {_at(until)}"
        if now is None:
            refuse(key, f"{where}; it cannot be removed (end it instead)")
            continue
        if now.plan_id != sub.plan_id:
            refuse(key, f"{where} on plan {sub.plan_id!r}; it cannot move to plan "
                        f"{now.plan_id!r}: end it and start a new subscription on the new plan "
                        "where it ends")
        if now.customer_id != sub.customer_id:
            refuse(key, f"{where}; it cannot move to customer {now.customer_id!r}")
        if now.start != sub.start and min(now.start, sub.start) < until:
            refuse(key, f"{where}; its start cannot move from {_at(sub.start)} to "
                        f"{_at(now.start)}")
        old_end, new_end = sub.end or _NEVER, now.end or _NEVER
        if old_end != new_end and min(old_end, new_end) < until:
            refuse(key, f"{where}; its end cannot move from {_at(sub.end)} to {_at(now.end)}, "
                        "before that")
        before, after = old.customers[sub.customer_id], new.customers.get(sub.customer_id)
        if after is not None and after.legal_entity != before.legal_entity:
            refuse(key, f"{where} by legal entity {before.legal_entity!r}; the customer cannot "
                        f"move to {after.legal_entity!r}")
    for plan_id, (sub_id, until) in sorted(used_plans.items()):
        plan = old.plans[plan_id]
        if new.plans.get(plan_id) != plan:
            refuse(record_key("plan", plan_id),
                   f"plan {plan_id!r} priced subscription {sub_id!r}, rated or invoiced through "
                   f"{_at(until)}; it cannot be edited or removed: publish the new prices as a "
                   "new plan and move the subscription to it at an effective time")
        for charge in plan.charges:
            meter = old.meters[charge.meter]
            if new.meters.get(meter.id) != meter:
                refuse(record_key("meter", meter.id),
                       f"meter {meter.id!r} is charged by plan {plan_id!r}, which priced "
                       f"subscription {sub_id!r} through {_at(until)}; it cannot be edited or "
                       "removed: define a new meter")
    if old.billing_start != new.billing_start and frozen.anything:
        refuse(record_key("setting", "billing_start"),
               f"billing_start cannot move from {old.billing_start or 'unset'} to "
               f"{new.billing_start or 'unset'}: usage is already rated or invoiced")
    if frozen.retired_end is not None:
        for sub in new.subscriptions.values():
            if sub.id not in old.subscriptions and sub.start < frozen.retired_end:
                refuse(record_key("customer", sub.customer_id),
                       f"subscription {sub.id!r} starts at {_at(sub.start)}, in a period "
                       f"already retired (every period before {_at(frozen.retired_end)}): it "
                       "could never be invoiced; start it later and bill the rest by hand")
    return out


def put(specs: dict[str, Spec], key: str, spec: Spec | None) -> None:
    """Apply one record to the specs in force (None, a tombstone, removes the key)."""
    if spec is None:
        specs.pop(key, None)
    else:
        specs[key] = spec


def in_force(records: Iterable[tuple[str, Spec | None]]) -> dict[str, Spec]:
    """The latest spec of every key, in topic order (a tombstone removes it)."""
    out: dict[str, Spec] = {}
    for key, spec in records:
        put(out, key, spec)
    return out


