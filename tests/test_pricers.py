"""Pricers: one exact, unrounded amount per period quantity, per pricing model."""

from __future__ import annotations

from decimal import Decimal

import pytest
from conftest import D, charge_of

from operators.pricers import PRICERS, graduated, package, per_unit, percentage, price, volume

# tier 1: units (0, 100] at 1.00; tier 2: (100, 1000] at 0.50 + 10 flat; tier 3: (1000, inf) at
# 0.10 + 5 flat
GRADUATED = charge_of("graduated", tiers=[
    {"up_to": "100", "unit_price": "1.00"},
    {"up_to": "1000", "unit_price": "0.50", "flat_price": "10"},
    {"unit_price": "0.10", "flat_price": "5"},
])

# Q <= 100: Q * 1.00; Q <= 1000: Q * 0.50 + 20; above: Q * 0.25 + 50
VOLUME = charge_of("volume", tiers=[
    {"up_to": "100", "unit_price": "1.00"},
    {"up_to": "1000", "unit_price": "0.50", "flat_price": "20"},
    {"unit_price": "0.25", "flat_price": "50"},
])

# a first tier that is all flat: 5.00 for the first 10 units, then 1.00 each
FLAT_FIRST_GRADUATED = charge_of("graduated", tiers=[
    {"up_to": "10", "unit_price": "0", "flat_price": "5"},
    {"unit_price": "1"},
])
FLAT_FIRST_VOLUME = charge_of("volume", tiers=[
    {"up_to": "10", "unit_price": "0", "flat_price": "5"},
    {"unit_price": "1"},
])

PACKAGE = charge_of("package", package_size="1000", package_price="0.50")
FRACTIONAL_PACKAGE = charge_of("package", package_size="2.5", package_price="3")
PER_UNIT = charge_of("per_unit", unit_price="0.003")
PERCENTAGE = charge_of("percentage", rate="0.029")


@pytest.mark.parametrize(("q", "expected"), [
    pytest.param("0", "0", id="zero-enters-no-tier"),
    pytest.param("1", "1.00", id="one-unit"),
    pytest.param("99.5", "99.500", id="fractional-in-tier-1"),
    pytest.param("100", "100.00", id="exactly-up-to-stays-in-tier-1"),          # 100 * 1.00
    pytest.param("100.5", "110.25", id="half-unit-into-tier-2"),                # 100 + .5*.5 + 10
    pytest.param("101", "110.50", id="just-above-tier-1"),                      # 100 + 1*.5 + 10
    pytest.param("1000", "560.00", id="exactly-top-of-tier-2"),                 # 100 + 450 + 10
    pytest.param("1000.001", "565.0001", id="tiny-bit-into-tier-3"),            # 560+.0001+5
    pytest.param("1001", "565.10", id="just-above-tier-2"),                     # 560 + .1 + 5
    pytest.param("2500", "715.00", id="deep-in-open-tier"),                     # 560 + 150 + 5
])
def test_graduated(q: str, expected: str) -> None:
    assert graduated(GRADUATED, D(q)) == D(expected)


@pytest.mark.parametrize(("q", "expected"), [
    pytest.param("0", "0", id="zero-no-flat"),
    pytest.param("0.5", "5", id="flat-applies-once-entered"),
    pytest.param("10", "5", id="exactly-up-to"),
    pytest.param("11", "6", id="above"),                                         # 5 + 1*1
])
def test_graduated_flat_first_tier(q: str, expected: str) -> None:
    assert graduated(FLAT_FIRST_GRADUATED, D(q)) == D(expected)


@pytest.mark.parametrize(("q", "expected"), [
    pytest.param("0", "0", id="zero-costs-nothing"),
    pytest.param("1", "1.00", id="one-unit"),
    pytest.param("100", "100.00", id="exactly-up-to-tier-1"),                   # 100 * 1.00
    pytest.param("100.5", "70.25", id="just-above-tier-1-all-units-cheaper"),   # 50.25 + 20
    pytest.param("1000", "520.00", id="exactly-up-to-tier-2"),                  # 500 + 20
    pytest.param("1000.001", "300.00025", id="fractionally-into-open-tier"),    # 250.00025 + 50
    pytest.param("4000", "1050.00", id="deep-in-open-tier"),                    # 1000 + 50
])
def test_volume(q: str, expected: str) -> None:
    assert volume(VOLUME, D(q)) == D(expected)


@pytest.mark.parametrize(("q", "expected"), [
    pytest.param("0", "0", id="zero-even-with-flat-first-tier"),
    pytest.param("0.001", "5", id="tiny-quantity-pays-the-flat"),              # .001*0 + 5
    pytest.param("10", "5", id="exactly-up-to"),
    pytest.param("10.5", "10.5", id="above-uses-second-tier-for-all"),          # 10.5 * 1
])
def test_volume_flat_first_tier(q: str, expected: str) -> None:
    assert volume(FLAT_FIRST_VOLUME, D(q)) == D(expected)


@pytest.mark.parametrize(("charge", "q", "expected"), [
    pytest.param(PACKAGE, "0", "0", id="zero-no-package"),
    pytest.param(PACKAGE, "0.001", "0.50", id="fraction-buys-a-package"),
    pytest.param(PACKAGE, "1", "0.50", id="one-unit"),
    pytest.param(PACKAGE, "999", "0.50", id="just-below-size"),
    pytest.param(PACKAGE, "1000", "0.50", id="exactly-size"),
    pytest.param(PACKAGE, "1000.5", "1.00", id="fraction-above-size"),
    pytest.param(PACKAGE, "1001", "1.00", id="just-above-size"),
    pytest.param(PACKAGE, "2000", "1.00", id="exactly-two"),
    pytest.param(PACKAGE, "123456", "62.00", id="ceil-of-123.456"),               # 124 * 0.50
    pytest.param(FRACTIONAL_PACKAGE, "5", "6", id="fractional-size-exact"),      # 2 * 3
    pytest.param(FRACTIONAL_PACKAGE, "5.01", "9", id="fractional-size-above"),   # 3 * 3
])
def test_package(charge: object, q: str, expected: str) -> None:
    assert package(charge, D(q)) == D(expected)  # type: ignore[arg-type]


@pytest.mark.parametrize(("q", "expected"), [
    pytest.param("0", "0", id="zero"),
    pytest.param("1", "0.003", id="one"),
    pytest.param("12345", "37.035", id="many"),                                  # unrounded
    pytest.param("2.5", "0.0075", id="fractional"),
])
def test_per_unit(q: str, expected: str) -> None:
    assert per_unit(PER_UNIT, D(q)) == D(expected)


@pytest.mark.parametrize(("q", "expected"), [
    pytest.param("0", "0", id="zero"),
    pytest.param("100.00", "2.90", id="hundred"),
    pytest.param("1234.56", "35.80224", id="unrounded-product"),                  # .029 * 1234.56
    pytest.param("0.01", "0.00029", id="one-cent"),
])
def test_percentage(q: str, expected: str) -> None:
    assert percentage(PERCENTAGE, D(q)) == D(expected)


@pytest.mark.parametrize(("charge", "q", "expected"), [
    pytest.param(PER_UNIT, "3", "0.009", id="per_unit"),
    pytest.param(GRADUATED, "101", "110.5", id="graduated"),
    pytest.param(VOLUME, "101", "70.5", id="volume"),
    pytest.param(PACKAGE, "1001", "1.00", id="package"),
    pytest.param(PERCENTAGE, "100", "2.9", id="percentage"),
])
def test_price_dispatches_on_the_model(charge: object, q: str, expected: str) -> None:
    result = price(charge, D(q))  # type: ignore[arg-type]
    assert isinstance(result, Decimal)
    assert result == D(expected)


def test_every_catalog_model_has_a_pricer() -> None:
    from operators.catalog import MODELS

    assert set(PRICERS) == set(MODELS)


def test_prices_are_exact_at_high_precision() -> None:
    # 0.000000001 * 999999999999999999 must not lose a digit (a float would)
    charge = charge_of("per_unit", unit_price="0.000000001")
    assert per_unit(charge, D("999999999999999999")) == D("999999999.999999999")
