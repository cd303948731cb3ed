"""A catalog of many customers for the workload generator (meterwax/workload.py), to measure what
a subscription costs the pipeline.

`write_customers_catalog(path, customers, seed)` writes a catalog YAML with the example catalog's
legal entities, meters and plans (every plan, so every pricing model the catalog supports) and
`customers` generated customers, each with one subject and one subscription:

* plans in turn (customer i has plan i mod the number of plans), each customer in the first legal
  entity that posts its plan's currency, with one of that entity's tax codes;
* most subscriptions start on 1 October and run on; some start on 10 or 20 October (a prorated
  first month), some end on 20 November (a prorated last month, then usage outside any
  subscription), so the workload keeps its proration and gap cases at any size;
* every 21st subscription has a percent discount on usage, every 25th customer a prepaid credit,
  every 97th customer no payment terms (its invoices are held), as in the example catalog; the
  periods 21, 25 and 97 are coprime to the four plans, so each case falls on every plan.

`customers_workload(catalog, size, seed)` is the workload over such a catalog: the same generator
with a few payload variants per template instead of 128 (`CUSTOMERS_VARIANTS`), since the variants
are held per (customer, event type). Generated customers all have the same weight
(workload_model.DEFAULT_CUSTOMER_WEIGHT), so the clean usage spreads evenly over the subscriptions
active at each time.

Everything is drawn from `random.Random(f"{seed}:customers")`: a seed gives the same file on every
run and platform.

    python -m meterwax.workload_customers --customers 10000 --size 500000 --out DIR

writes DIR/catalog.yaml and DIR/events.jsonl, for `meterwax run --catalog DIR/catalog.yaml
--events DIR/events.jsonl --out ... --now 2026-12-01T00:00:00+00:00`.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

from meterwax.workload import Workload, write_workload
from operators.catalog import Catalog, load_catalog

EXAMPLE = Path(__file__).with_name("example_catalog.yaml")
CUSTOMERS_VARIANTS = 4
MAX_CUSTOMERS = 1_000_000

# (start, end) of a subscription and its share of the customers.
TERMS = (
    (("2026-10-01T00:00:00Z", None), 0.80),
    (("2026-10-10T00:00:00Z", None), 0.07),
    (("2026-10-20T00:00:00Z", None), 0.07),
    (("2026-10-01T00:00:00Z", "2026-11-20T12:00:00Z"), 0.06),
)
PAYMENT_TERMS = (14, 30, 30, 45, 60)


def _head(example_text: str) -> str:
    """The example catalog without its customers: entities, meters and plans, as written."""
    head, sep, _ = example_text.partition("\ncustomers:")
    if not sep:
        msg = f"{EXAMPLE}: no customers section to cut the catalog at"
        raise ValueError(msg)
    lines = head.rstrip("\n").split("\n")
    while lines and lines[0].startswith("#"):  # the example's own header counts its customers
        lines.pop(0)
    return "\n".join(lines) + "\n"


def _credit_amount(minor_units: int) -> str:
    return "40.00" if minor_units == 2 else "5000" if minor_units == 0 else "40"


def write_customers_catalog(path: str | os.PathLike[str], customers: int, seed: int = 7) -> int:
    """Write the catalog of `customers` generated customers to `path`; return the count."""
    if not 1 <= customers <= MAX_CUSTOMERS:
        msg = f"customers must be between 1 and {MAX_CUSTOMERS:,}, got {customers}"
        raise ValueError(msg)
    from operators.money import MINOR_UNITS

    text = EXAMPLE.read_text(encoding="utf-8")
    base = load_catalog(str(EXAMPLE))
    plans = list(base.plans.values())
    entity_of = {}
    for plan in plans:
        entity_of[plan.id] = next(e for e in base.legal_entities.values()
                                  if not e.currencies or plan.currency in e.currencies)
    rng = random.Random(f"{seed}:customers")
    terms = [t for t, _ in TERMS]
    cum = []
    acc = 0.0
    for _, share in TERMS:
        acc += share
        cum.append(acc)
    width = max(6, len(str(customers - 1)))
    with open(path, "w", encoding="utf-8", buffering=1 << 20) as fh:
        fh.write(f"# {customers} generated customers over the example catalog's plans "
                 f"(meterwax/workload_customers.py, seed {seed}).\n")
        fh.write(_head(text))
        fh.write("\ncustomers:\n")
        for i in range(customers):
            cid = f"cust-{i:0{width}d}"
            plan = plans[i % len(plans)]
            entity = entity_of[plan.id]
            (start, end), = rng.choices(terms, cum_weights=cum, k=1)
            codes = sorted(entity.tax_codes)
            tax_code = rng.choice(codes) if codes else None
            days = rng.choice(PAYMENT_TERMS)
            lines = [f"  - id: {cid}",
                     f"    legal_entity: {entity.id}",
                     f"    subjects: [{cid}-prod]",
                     f'    tax_registration: "REG-{i:0{width}d}"']
            if tax_code is not None:
                lines.append(f"    tax_code: {tax_code}")
            if i % 97 != 96:
                lines.append(f"    payment_terms_days: {days}")
            if i % 25 == 24:
                amount = _credit_amount(MINOR_UNITS[plan.currency])
                lines.append(f"    credits:\n      - {{id: prepaid, amount: \"{amount}\", "
                             f"currency: {plan.currency}, granted: \"2026-10-01T00:00:00Z\", "
                             f'expires: "2027-10-01T00:00:00Z"}}')
            lines.append("    subscriptions:")
            lines.append(f"      - id: sub-{cid}")
            lines.append(f"        plan: {plan.id}")
            lines.append(f'        start: "{start}"')
            lines.append(f'        end: "{end}"' if end else "        end: null")
            if i % 21 == 20:
                lines.append('        discounts: [{id: loyalty, percent: "10", '
                             'applies_to: usage, from: "2026-10", months: 2}]')
            fh.write("\n".join(lines))
            fh.write("\n")
        fh.write('\nbilling_start: "2026-10"\n')
    return customers


def customers_workload(catalog: Catalog, size: int, seed: int = 7) -> Workload:
    """The workload generator over a catalog of many customers (see the module's docstring)."""
    return Workload(catalog, size, seed, variants=CUSTOMERS_VARIANTS)


def write_customers_workload(path: str | os.PathLike[str], catalog: Catalog, size: int,
                             seed: int = 7) -> int:
    """Write `customers_workload` to `path`, one newline-terminated line per event."""
    return write_workload(path, catalog, size, seed, variants=CUSTOMERS_VARIANTS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, required=True)
    ap.add_argument("--size", type=int, default=500_000, help="events to generate")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, required=True,
                    help="folder for catalog.yaml and events.jsonl")
    args = ap.parse_args(argv)
    if not 1 <= args.customers <= MAX_CUSTOMERS or args.size < 0:
        ap.error(f"--customers must be 1 to {MAX_CUSTOMERS:,} and --size not negative")
    args.out.mkdir(parents=True, exist_ok=True)
    catalog_path = args.out / "catalog.yaml"
    write_customers_catalog(catalog_path, args.customers, args.seed)
    catalog = load_catalog(str(catalog_path))
    n = write_customers_workload(args.out / "events.jsonl", catalog, args.size, args.seed)
    print(f"{len(catalog.customers):,} customers, {len(catalog.subscriptions):,} subscriptions "
          f"-> {catalog_path}; {n:,} events -> {args.out / 'events.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["CUSTOMERS_VARIANTS", "customers_workload", "write_customers_catalog",
           "write_customers_workload"]
