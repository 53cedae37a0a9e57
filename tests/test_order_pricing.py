"""Order arithmetic (crm_api.order.pricing): Decimal only, half-up per line, sums exact."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from crm_api.order.pricing import (
    LineError,
    LineInput,
    places_of,
    price_line,
    price_order,
    round_amount,
)
from crm_api.order.states import FINAL, OrderAction, OrderStatus, transition


def line(q: str, p: str, d: str = "0", t: str = "0") -> LineInput:
    return LineInput(D(q), D(p), D(d), D(t))


@pytest.mark.parametrize(
    ("value", "places", "expected"),
    [
        ("0.005", 2, "0.01"),
        ("0.0049999", 2, "0.00"),
        ("2.675", 2, "2.68"),  # binary floats round this to 2.67; Decimal does not
        ("-0.005", 2, "-0.01"),
        ("0.5", 0, "1"),
        ("1.5", 0, "2"),
        ("2.5", 0, "3"),  # half-up, not banker's rounding
        ("1.0005", 3, "1.001"),
        ("123.4", 4, "123.4000"),
    ],
)
def test_rounding_is_half_up(value, places, expected):
    got = round_amount(D(value), places)
    assert got == D(expected) and str(got) == expected


def test_places_of_ignores_trailing_zeros():
    assert places_of(D("1.50")) == 1
    assert places_of(D("100")) == 0
    assert places_of(D("1E+2")) == 0
    assert places_of(D("0.001")) == 3


def test_line_rounds_subtotal_then_tax_on_the_discounted_amount():
    # 3 x 33.335 = 100.005 → 100.01; - 10.00 = 90.01; x 13 % = 11.7013 → 11.70
    got = price_line(line("3", "33.335", "10", "0.13"), 2)
    assert (got.subtotal, got.discount, got.tax, got.total) == (
        D("100.01"),
        D("10.00"),
        D("11.70"),
        D("101.71"),
    )
    assert str(got.total) == "101.71"


def test_tax_half_up_per_line():
    # 0.05 x 10 % = 0.005 → 0.01 on each line: two lines carry 0.02 of tax, where rounding
    # the order's tax once would give 0.01. Per line is the documented rule.
    order = price_order([line("1", "0.05", t="0.1"), line("1", "0.05", t="0.1")], 2)
    assert order.tax == D("0.02")
    assert order.total == D("0.12")


def test_zero_places_and_four_places():
    assert price_line(line("3", "0.5"), 0).subtotal == D("2")  # 1.5 → 2
    got = price_line(line("3", "0.333333", t="0.06"), 4)
    assert got.subtotal == D("1.0000") and got.tax == D("0.0600")


def test_discount_equal_to_the_line_amount_is_free():
    got = price_line(line("2", "9.99", "19.98", "0.13"), 2)
    assert got.total == D("0.00") and got.tax == D("0.00")


@pytest.mark.parametrize(
    ("item", "field", "code"),
    [
        (line("0", "1"), "quantity", "not_positive"),
        (line("-1", "1"), "quantity", "not_positive"),
        (line("1", "-0.01"), "unit_price", "negative"),
        (line("1", "1", "-1"), "discount", "negative"),
        (line("1", "1", "1.01"), "discount", "exceeds_line_amount"),
        (line("1", "10", "0.001"), "discount", "too_many_decimal_places"),
        (LineInput(D("NaN"), D(1), D(0), D(0)), "quantity", "not_positive"),
        (LineInput(D(1), D("Infinity"), D(0), D(0)), "unit_price", "negative"),
    ],
)
def test_bad_lines_name_the_field(item, field, code):
    with pytest.raises(LineError) as err:
        price_order([line("1", "1"), item], 2)
    assert err.value.field == f"lines.1.{field}" and err.value.code == code


def test_many_lines_sum_exactly():
    lines = [line("1", "0.01", t="0.13") for _ in range(10_000)]
    order = price_order(lines, 2)
    # each line: 0.01, tax 0.0013 → 0.00
    assert order.subtotal == D("100.00") and order.tax == D("0.00")
    assert order.total == D("100.00")
    mixed = [line(str(i % 7 + 1), f"{i}.{i % 100:02d}", "0.5", "0.09") for i in range(1, 501)]
    got = price_order(mixed, 2)
    assert got.subtotal == sum(p.subtotal for p in got.lines)
    assert got.total == got.subtotal - got.discount + got.tax
    assert all(p.total == p.subtotal - p.discount + p.tax for p in got.lines)


def test_large_quantities_keep_every_digit():
    # 10⁹ units at 99,999.999999: a float would lose the last places
    got = price_line(line("1000000000", "99999.999999", "0.01", "0.13"), 2)
    assert got.subtotal == D("99999999999000.00")
    assert got.tax == round_amount((D("99999999999000.00") - D("0.01")) * D("0.13"), 2)
    assert got.tax == D("12999999999869.9987").quantize(D("0.01"), rounding="ROUND_HALF_UP")
    assert got.total == D("99999999999000.00") - D("0.01") + got.tax
    assert price_line(line("999999.999", "0.000001"), 2).subtotal == D("1.00")


def test_empty_order_is_zero_at_the_configured_places():
    got = price_order([], 3)
    assert str(got.total) == "0.000"


# --- the state machine -----------------------------------------------------------------------
LEGAL = {
    (OrderAction.confirm, OrderStatus.pending): OrderStatus.confirmed,
    (OrderAction.ship, OrderStatus.confirmed): OrderStatus.shipped,
    (OrderAction.deliver, OrderStatus.shipped): OrderStatus.delivered,
    (OrderAction.complete, OrderStatus.delivered): OrderStatus.completed,
    (OrderAction.cancel, OrderStatus.pending): OrderStatus.cancelled,
    (OrderAction.cancel, OrderStatus.confirmed): OrderStatus.cancelled,
}


@pytest.mark.parametrize("action", list(OrderAction))
@pytest.mark.parametrize("status", list(OrderStatus))
def test_every_action_from_every_status(action, status):
    got = transition(action, status)
    expected = LEGAL.get((action, status))
    assert (got.target if got else None) == expected


def test_final_statuses():
    assert {OrderStatus.completed, OrderStatus.cancelled} == FINAL
