"""Catalog validation: exact decimals, known references, no overlaps, every problem at once."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import DELETE, D, customer, mutated, simple_doc, sub, utc

from operators.catalog import CatalogError, Tier, load_catalog, parse_catalog

EXAMPLE = Path(__file__).resolve().parent.parent / "catalog" / "example.yaml"



def tiered_doc(tiers: list[dict[str, object]], model: str = "graduated") -> dict[str, object]:
    return simple_doc(charges=[{"meter": "calls", "model": model, "tiers": tiers}])


def two_sub_doc(first: tuple[str, str | None], second: tuple[str, str | None]) -> dict:
    doc = simple_doc()
    doc["customers"] = [customer("c", ["s1"], [
        sub("sub-a", "p", first[0], first[1]),
        sub("sub-b", "p", second[0], second[1]),
    ])]
    return doc


def problems_of(doc: object) -> list[str]:
    with pytest.raises(CatalogError) as info:
        parse_catalog(doc)
    return info.value.problems


# -- the example catalog ---------------------------------------------------------------------------

def test_example_catalog_loads_with_exact_decimals_and_utc_instants() -> None:
    cat = load_catalog(str(EXAMPLE))
    assert sorted(cat.legal_entities) == ["eu-bv", "jp-kk", "us-inc"]
    assert sorted(cat.meters) == ["active_users", "api_calls", "gmv", "seats", "storage_gb",
                                  "tokens"]
    assert sorted(cat.plans) == ["growth-eur", "growth-usd", "scale-jpy", "starter-usd"]
    assert len(cat.customers) == 6
    growth = cat.plans["growth-usd"]
    api = growth.charge_for("api_calls")
    assert api is not None
    assert api.tiers == (
        Tier(D("1000"), D("0"), D("0")),
        Tier(D("100000"), D("0.002"), D("0")),
        Tier(None, D("0.001"), D("0")),
    )
    # read from the text: exactly 0.002, not the binary float nearest to it
    assert api.tiers[1].unit_price == D("0.002")
    gmv = growth.charge_for("gmv")
    assert gmv is not None
    assert gmv.rate == D("0.029")
    active = growth.charge_for("active_users")
    assert active is not None
    assert active.minimum == D("50.00")
    assert cat.meters["tokens"].value_path == ("usage", "tokens")
    # "2026-10-10T09:00:00+09:00" is midnight UTC
    assert cat.subscriptions["sub-umbrella-1"].start == utc(2026, 10, 10)
    assert cat.subscriptions["sub-hooli-1"].end == utc(2026, 11, 20, 12)
    assert cat.customer_by_subject["acme-dev"].id == "acme"


@pytest.mark.parametrize(
    ("customer_id", "reasons"),
    [
        pytest.param("acme", (), id="complete-customer-ready"),
        pytest.param("initech", ("MISSING_TAX_REGISTRATION",), id="empty-tax-registration"),
        pytest.param("hooli", ("MISSING_PAYMENT_TERMS",), id="missing-payment-terms"),
    ],
)
def test_example_catalog_hold_reasons(customer_id: str, reasons: tuple[str, ...]) -> None:
    cat = load_catalog(str(EXAMPLE))
    assert cat.customers[customer_id].hold_reasons() == reasons


def test_one_event_type_may_feed_several_meters() -> None:
    meters = [
        {"id": "requests", "event_type": "api.request", "aggregation": "count"},
        {"id": "bytes", "event_type": "api.request", "aggregation": "sum", "value": "bytes"},
    ]
    cat = parse_catalog(simple_doc(meters=meters, charges=[
        {"meter": "requests", "model": "per_unit", "unit_price": "0.01"},
        {"meter": "bytes", "model": "per_unit", "unit_price": "0.000001"},
    ]))
    assert [m.id for m in cat.meters_by_event_type["api.request"]] == ["requests", "bytes"]


# -- one problem at a time -----------------------------------------------------------------------

SINGLE_PROBLEMS = [
    pytest.param("plans[0].charges[0].unit_price", 0.1,
                 "plans[0].charges[0].unit_price: unquoted float 0.1", id="unquoted-float-price"),
    pytest.param("plans[0].charges[0].unit_price", 2,
                 "plans[0].charges[0].unit_price: must be a quoted decimal string, got 2",
                 id="unquoted-int-price"),
    pytest.param("plans[0].charges[0].unit_price", "NaN",
                 "plans[0].charges[0].unit_price: 'NaN' is not a decimal number", id="nan-price"),
    pytest.param("plans[0].charges[0].unit_price", "1,5",
                 "plans[0].charges[0].unit_price: '1,5' is not a decimal number",
                 id="comma-decimal"),
    pytest.param("plans[0].charges[0].unit_price", "-0.01",
                 "plans[0].charges[0].unit_price: must not be negative", id="negative-price"),
    pytest.param("plans[0].charges[0].unit_price", "0.0000000001",
                 "plans[0].charges[0].unit_price: has more than 9 fractional digits",
                 id="price-scale-over-9"),
    # A reference to a declared but invalid definition is not reported again as unknown.
    pytest.param("plans[0].currency", "XYZ",
                 "plans[0].currency: unknown ISO 4217 currency 'XYZ'",
                 id="unknown-plan-currency"),
    pytest.param("legal_entities[0].currencies", ["USD", "ABC"],
                 "legal_entities[0].currencies[1]: unknown currency 'ABC'",
                 id="unknown-entity-currency"),
    pytest.param("plans[0].charges[0].meter", "nope",
                 "plans[0].charges[0].meter: unknown meter 'nope'", id="unknown-meter"),
    pytest.param("plans[0].charges[0].model", "flat",
                 "plans[0].charges[0].model: unknown pricing model 'flat'", id="unknown-model"),
    pytest.param("customers[0].subscriptions[0].plan", "ghost",
                 "customers[0].subscriptions[0].plan: unknown plan 'ghost'", id="unknown-plan"),
    pytest.param("customers[0].legal_entity", "le-mars",
                 "customers[0].legal_entity: unknown legal entity 'le-mars'",
                 id="unknown-legal-entity"),
    pytest.param("customers[0].subscriptions[0].start", "2026-10-01T00:00:00",
                 "customers[0].subscriptions[0].start: timestamp 2026-10-01T00:00:00 has no UTC "
                 "offset", id="naive-subscription-start"),
    pytest.param("customers[0].subscriptions[0].end", "2026-09-01T00:00:00Z",
                 "customers[0].subscriptions[0].end: must be after start", id="end-before-start"),
    pytest.param("meters[0].aggregation", "avg",
                 "meters[0].aggregation: unknown aggregation 'avg'", id="unknown-aggregation"),
    pytest.param("meters[1].value", DELETE, "meters[1].value: is required",
                 id="sum-meter-without-value"),
    pytest.param("customers[0].payment_terms_days", "30",
                 "customers[0].payment_terms_days: must be a whole number of days >= 0",
                 id="payment-terms-as-text"),
    pytest.param("legal_entities[0].gl_accounts", {"bogus": "1"},
                 "legal_entities[0].gl_accounts.bogus: unknown GL role", id="unknown-gl-role"),
    pytest.param("legal_entities[0].gl_accounts", {"receivable": 1200},
                 "legal_entities[0].gl_accounts.receivable: account must be a quoted string",
                 id="unquoted-gl-account"),
    pytest.param("plans", DELETE, ("plans: section is required",
                                   "customers[0].subscriptions[0].plan: unknown plan 'p'"),
                 id="missing-section"),
]


@pytest.mark.parametrize(("path", "value", "expected"), SINGLE_PROBLEMS)
def test_single_problem_is_reported_with_its_yaml_path(path: str, value: object,
                                                        expected: str | tuple[str, ...]) -> None:
    wanted = (expected,) if isinstance(expected, str) else expected
    problems = problems_of(mutated(simple_doc(), path, value))
    assert len(problems) == len(wanted), problems
    for got, want in zip(problems, wanted, strict=True):
        assert got.startswith(want), problems


FEE_CURRENCY_PROBLEMS = [
    pytest.param("JPY", "1.5", "plans[0].fixed_fees[0].amount: 1.5 has more decimals than JPY "
                               "allows (0)", id="jpy-fee-with-decimals"),
    pytest.param("USD", "9.999", "plans[0].fixed_fees[0].amount: 9.999 has more decimals than "
                                 "USD allows (2)", id="usd-fee-with-3-decimals"),
    pytest.param("USD", 49.0, "plans[0].fixed_fees[0].amount: unquoted float 49.0",
                 id="unquoted-float-fee"),
]


@pytest.mark.parametrize(("currency", "amount", "expected"), FEE_CURRENCY_PROBLEMS)
def test_fixed_fee_amount_problems(currency: str, amount: object, expected: str) -> None:
    doc = simple_doc(currency=currency, fees=[{"id": "base", "amount": amount}])
    problems = problems_of(doc)
    assert len(problems) == 1
    assert problems[0].startswith(expected)


@pytest.mark.parametrize(("currency", "amount"), [
    pytest.param("KWD", "1.125", id="kwd-three-decimals"),
    pytest.param("JPY", "50000", id="jpy-whole"),
    pytest.param("USD", "49.00", id="usd-two-decimals"),
    pytest.param("USD", "49.500", id="usd-trailing-zero-is-fine"),
])
def test_fixed_fee_within_currency_minor_units_is_accepted(currency: str, amount: str) -> None:
    cat = parse_catalog(simple_doc(currency=currency, fees=[{"id": "base", "amount": amount}]))
    assert cat.plans["p"].fixed_fees[0].amount == D(amount)


TIER_PROBLEMS = [
    pytest.param([{"up_to": "100", "unit_price": "1"}, {"up_to": "50", "unit_price": "0.5"},
                  {"unit_price": "0.1"}],
                 ["plans[0].charges[0].tiers[1].up_to: tiers must ascend: 50 is not above 100"],
                 id="unsorted-tiers"),
    pytest.param([{"up_to": "100", "unit_price": "1"}, {"up_to": "100", "unit_price": "0.5"},
                  {"unit_price": "0.1"}],
                 ["plans[0].charges[0].tiers[1].up_to: tiers must ascend: 100 is not above 100"],
                 id="equal-tier-bounds"),
    pytest.param([{"up_to": "100", "unit_price": "1"}, {"up_to": "200", "unit_price": "0.5"}],
                 ["plans[0].charges[0].tiers[1].up_to: the last tier must be open (no up_to)"],
                 id="closed-last-tier"),
    pytest.param([{"unit_price": "1"}, {"unit_price": "0.5"}],
                 ["plans[0].charges[0].tiers[0].up_to: only the last tier may be open"],
                 id="open-middle-tier"),
    pytest.param([{"up_to": 100, "unit_price": "1"}, {"unit_price": "0.5"}],
                 ["plans[0].charges[0].tiers[0].up_to: must be a quoted decimal string, got 100"],
                 id="unquoted-tier-bound"),
    pytest.param([{"up_to": "0", "unit_price": "1"}, {"unit_price": "0.5"}],
                 ["plans[0].charges[0].tiers[0].up_to: must be greater than zero"],
                 id="zero-tier-bound"),
    pytest.param([], ["plans[0].charges[0].tiers: at least one tier is required"],
                 id="no-tiers"),
]


@pytest.mark.parametrize("model", ["graduated", "volume"])
@pytest.mark.parametrize(("tiers", "expected"), TIER_PROBLEMS)
def test_tier_problems(model: str, tiers: list[dict[str, object]], expected: list[str]) -> None:
    problems = problems_of(tiered_doc(tiers, model))
    assert len(problems) == len(expected), problems
    for got, want in zip(problems, expected, strict=True):
        assert got.startswith(want)


@pytest.mark.parametrize(("raw", "expected"), [
    pytest.param({"model": "package", "package_size": "0", "package_price": "1.00"},
                 "plans[0].charges[0].package_size: must be greater than zero",
                 id="zero-package-size"),
    pytest.param({"model": "package", "package_size": "1000"},
                 "plans[0].charges[0].package_price: is required", id="package-without-price"),
    pytest.param({"model": "percentage", "rate": 0.029},
                 "plans[0].charges[0].rate: unquoted float 0.029", id="unquoted-rate"),
    pytest.param({"model": "per_unit", "unit_price": "4.00", "minimum": "50.001"},
                 "plans[0].charges[0].minimum: 50.001 has more decimals than USD allows (2)",
                 id="minimum-finer-than-currency"),
])
def test_charge_problems(raw: dict[str, object], expected: str) -> None:
    problems = problems_of(simple_doc(charges=[{"meter": "calls", **raw}]))
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected)


def test_two_charges_on_one_meter_is_an_error() -> None:
    doc = simple_doc(charges=[
        {"meter": "calls", "model": "per_unit", "unit_price": "1.00"},
        {"meter": "calls", "model": "per_unit", "unit_price": "2.00"},
    ])
    assert problems_of(doc) == [
        "plans[0].charges[1].meter: meter 'calls' is already charged at plans[0].charges[0]"
    ]


@pytest.mark.parametrize(("section", "duplicate", "expected"), [
    pytest.param("meters", {"id": "calls", "event_type": "x", "aggregation": "count"},
                 "meters[5]: duplicate meter id 'calls' (first at meters[0])", id="meter-id"),
    pytest.param("customers", customer("c", ["s2"], []),
                 "customers[1]: duplicate customer id 'c' (first at customers[0])",
                 id="customer-id"),
    pytest.param("customers", customer("d", ["s1"], []),
                 "customers[1].subjects[0]: subject 's1' already belongs to customers[0]",
                 id="subject-owned-twice"),
])
def test_duplicate_identities(section: str, duplicate: dict[str, object],
                              expected: str) -> None:
    doc = simple_doc()
    doc[section].append(duplicate)
    assert problems_of(doc) == [expected]


# -- subscriptions -------------------------------------------------------------------------------

@pytest.mark.parametrize(("first", "second"), [
    pytest.param(("2026-09-01T00:00:00Z", "2026-10-15T00:00:01Z"), ("2026-10-15T00:00:00Z", None),
                 id="one-second-overlap"),
    pytest.param(("2026-09-01T00:00:00Z", None), ("2026-10-15T00:00:00Z", None),
                 id="open-ended-then-another"),
    pytest.param(("2026-10-15T00:00:00Z", None), ("2026-09-01T00:00:00Z", "2026-12-01T00:00:00Z"),
                 id="listed-out-of-order"),
    pytest.param(("2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z"),
                 ("2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z"), id="identical-intervals"),
    pytest.param(("2026-10-15T09:00:00+09:00", None), ("2026-10-15T00:00:00Z", None),
                 id="overlap-only-in-utc"),
])
def test_overlapping_subscriptions_of_one_customer_are_an_error(
        first: tuple[str, str | None], second: tuple[str, str | None]) -> None:
    problems = problems_of(two_sub_doc(first, second))
    assert len(problems) == 1, problems
    assert "overlaps" in problems[0]
    assert problems[0].startswith("customers[0].subscriptions[")


def test_adjacent_subscriptions_do_not_overlap() -> None:
    # [start, end): one ends exactly where the next starts -- a plan change
    cat = parse_catalog(two_sub_doc(("2026-09-01T00:00:00Z", "2026-10-15T00:00:00Z"),
                                    ("2026-10-15T00:00:00Z", None)))
    c = cat.customers["c"]
    assert [s.id for s in c.subscriptions] == ["sub-a", "sub-b"]


@pytest.mark.parametrize(("at", "expected"), [
    pytest.param(utc(2026, 8, 31, 23, 59, 59), None, id="before-first-start"),
    pytest.param(utc(2026, 9, 1), "sub-a", id="exactly-first-start"),
    pytest.param(datetime(2026, 10, 14, 23, 59, 59, 999999, tzinfo=UTC), "sub-a",
                 id="last-microsecond-of-old-plan"),
    pytest.param(utc(2026, 10, 15), "sub-b", id="exactly-plan-change-goes-to-new"),
    pytest.param(utc(2026, 11, 30, 23, 59, 59), "sub-b", id="inside-second"),
    pytest.param(utc(2026, 12, 1), None, id="exactly-end-is-excluded"),
])
def test_subscription_at(at: datetime, expected: str | None) -> None:
    cat = parse_catalog(two_sub_doc(("2026-09-01T00:00:00Z", "2026-10-15T00:00:00Z"),
                                    ("2026-10-15T00:00:00Z", "2026-12-01T00:00:00Z")))
    found = cat.subscription_at(cat.customers["c"], at)
    assert (found.id if found else None) == expected


def test_subscription_gap_has_no_active_subscription() -> None:
    cat = parse_catalog(two_sub_doc(("2026-09-01T00:00:00Z", "2026-10-01T00:00:00Z"),
                                    ("2026-10-10T00:00:00Z", None)))
    c = cat.customers["c"]
    assert cat.subscription_at(c, utc(2026, 10, 5)) is None
    found = cat.subscription_at(c, utc(2026, 10, 10))
    assert found is not None and found.id == "sub-b"


# -- all problems at once ------------------------------------------------------------------------

def test_bad_catalog_lists_every_problem_at_once() -> None:
    doc = simple_doc(
        charges=[
            {"meter": "calls", "model": "per_unit", "unit_price": 0.003},            # 1 float
            {"meter": "tokenz", "model": "per_unit", "unit_price": "0.01"},          # 2 meter
            {"meter": "peak", "model": "graduated", "tiers": [                        # 3 order
                {"up_to": "500", "unit_price": "0.25"},
                {"up_to": "100", "unit_price": "0.20"},
                {"unit_price": "0.10"},
            ]},
        ],
        currency="USD",
    )
    doc["legal_entities"][0]["currencies"] = ["EUR", "XXY"]                          # 4 currency
    doc["customers"] = [
        customer("c", ["s1"], [
            sub("sub-1", "p", "2026-10-01T00:00:00Z", None),
            sub("sub-2", "p", "2026-11-01T00:00:00Z", None),                         # 5 overlap
        ]),
        customer("d", ["s2"], [sub("sub-3", "premium", "2026-10-01T00:00:00Z")]),    # 6 plan
    ]
    with pytest.raises(CatalogError) as info:
        parse_catalog(doc)
    problems = info.value.problems
    assert len(problems) == 6, problems
    assert [p.split(":", 1)[0] for p in problems] == [
        "legal_entities[0].currencies[1]",
        "plans[0].charges[0].unit_price",
        "plans[0].charges[1].meter",
        "plans[0].charges[2].tiers[1].up_to",
        "customers[0].subscriptions[1]",
        "customers[1].subscriptions[0].plan",
    ]
    assert "unquoted float 0.003" in problems[1]
    assert "unknown meter 'tokenz'" in problems[2]
    assert "tiers must ascend" in problems[3]
    assert "'sub-2' overlaps 'sub-1'" in problems[4]
    assert "unknown plan 'premium'" in problems[5]
    assert str(info.value).startswith("catalog has 6 problem(s):\n  - legal_entities[0]")


def test_yaml_unquoted_float_is_refused_not_converted(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace('unit_price: "0.003"', "unit_price: 0.003")
    assert "unit_price: 0.003}" in text
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError) as info:
        load_catalog(str(path))
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(
        "plans[1].charges[0].unit_price: unquoted float 0.003")


@pytest.mark.parametrize(("content", "fragment"), [
    pytest.param(None, "cannot read", id="missing-file"),
    pytest.param("meters: [unclosed", "not valid YAML", id="broken-yaml"),
    pytest.param("- just\n- a list\n", "the document must be a mapping", id="not-a-mapping"),
])
def test_unloadable_catalog_files(tmp_path: Path, content: str | None, fragment: str) -> None:
    path = tmp_path / "catalog.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CatalogError) as info:
        load_catalog(str(path))
    assert len(info.value.problems) == 1
    assert fragment in info.value.problems[0]


YAML_TEMPLATE = """
legal_entities: [{id: le}]
meters: [{id: calls, event_type: api.request, aggregation: count}]
plans:
  - {id: p, currency: USD, charges: [{meter: calls, model: per_unit, unit_price: "1.00"}]}
customers:
  - id: c
    legal_entity: le
    subjects: [s1]
    subscriptions: [{id: sub-1, plan: p, start: START}]
"""


@pytest.mark.parametrize(("start", "expected"), [
    pytest.param('"2026-10-01T00:00:00Z"', utc(2026, 10, 1), id="quoted-utc"),
    pytest.param("2026-10-01T00:00:00Z", utc(2026, 10, 1), id="unquoted-utc"),
    pytest.param("2026-10-01T09:00:00+09:00", utc(2026, 10, 1), id="unquoted-offset"),
    pytest.param("2026-10-01 00:00:00", "customers[0].subscriptions[0].start: timestamp "
                 "2026-10-01 00:00:00 has no UTC offset", id="unquoted-naive"),
    pytest.param("2026-10-01", "customers[0].subscriptions[0].start: must be a timestamp with an "
                 "offset, got the date 2026-10-01", id="unquoted-date"),
    pytest.param('"tomorrow"', "customers[0].subscriptions[0].start: not an RFC 3339 timestamp",
                 id="not-a-timestamp"),
])
def test_yaml_subscription_instants(tmp_path: Path, start: str,
                                    expected: datetime | str) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(YAML_TEMPLATE.replace("START", start))
    if isinstance(expected, datetime):
        assert load_catalog(str(path)).subscriptions["sub-1"].start == expected
    else:
        with pytest.raises(CatalogError) as info:
            load_catalog(str(path))
        assert len(info.value.problems) == 1
        assert info.value.problems[0].startswith(expected)
