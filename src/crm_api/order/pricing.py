"""Order arithmetic, in ``Decimal`` only, rounded half-up to the configured decimal places
(system setting ``amount_decimal_places``). Pure functions: no database, no HTTP.

Per line, in this order:

- ``subtotal`` = quantity x unit price, rounded;
- ``discount`` (an amount in the order's currency, at most the configured places) may not
  exceed the line's ``subtotal``;
- ``tax`` = (subtotal - discount) x the product's tax rate snapshot, rounded — per line,
  so every line's figures add up on their own and an invoice can print them;
- ``total`` = subtotal - discount + tax.

The order's ``subtotal``, ``discount``, ``tax`` and ``total`` are the sums of its lines'
(never rounded again: sums of rounded amounts are exact). Nothing here trusts a figure a
client sent; a client cannot send one (the input schemas have no such fields).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

#: Quantities and unit prices carry at most this many decimal places (1.125 kg, ¥0.0125
#: per unit); amounts are rounded to the configured places.
QUANTITY_PLACES = 3
UNIT_PRICE_PLACES = 6
ZERO = Decimal(0)
#: The largest amount an order or a line may reach (what a ``numeric(18, 4)`` holds).
MAX_AMOUNT = Decimal("99999999999999.9999")


class LineError(ValueError):
    """A line whose figures cannot make an order: ``field`` is the line's field at fault
    (``discount``), ``code`` the machine-readable reason."""

    def __init__(self, field: str, code: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.code = code
        self.message = message


def quantum(places: int) -> Decimal:
    """``Decimal('0.01')`` for 2 places, ``Decimal('1')`` for 0."""
    return Decimal(1).scaleb(-places)


def round_amount(value: Decimal, places: int) -> Decimal:
    """Half-up (``0.005`` → ``0.01``; ``-0.005`` → ``-0.01``) to ``places``."""
    return value.quantize(quantum(places), rounding=ROUND_HALF_UP)


def places_of(value: Decimal) -> int:
    """Decimal places ``value`` is written with, trailing zeros ignored (``1.50`` → 1)."""
    exponent = value.normalize().as_tuple().exponent
    assert isinstance(exponent, int), "finite decimals only"
    return max(0, -exponent)


@dataclass(frozen=True, slots=True)
class LineInput:
    quantity: Decimal
    unit_price: Decimal
    discount: Decimal
    #: A fraction (0.13 for 13 %), as the product's tax rate snapshot.
    tax_rate: Decimal


@dataclass(frozen=True, slots=True)
class LineAmounts:
    subtotal: Decimal
    discount: Decimal
    tax: Decimal
    total: Decimal


@dataclass(frozen=True, slots=True)
class OrderAmounts:
    subtotal: Decimal
    discount: Decimal
    tax: Decimal
    total: Decimal
    lines: tuple[LineAmounts, ...]


def price_line(line: LineInput, places: int) -> LineAmounts:
    """One line's amounts. Raises :class:`LineError` for a quantity that is not positive,
    a negative price or discount, a discount with more places than amounts have, or a
    discount above the line's subtotal."""
    if not line.quantity.is_finite() or line.quantity <= ZERO:
        raise LineError("quantity", "not_positive", "quantity must be greater than 0")
    if not line.unit_price.is_finite() or line.unit_price < ZERO:
        raise LineError("unit_price", "negative", "unit_price may not be negative")
    if not line.discount.is_finite() or line.discount < ZERO:
        raise LineError("discount", "negative", "discount may not be negative")
    if places_of(line.discount) > places:
        raise LineError(
            "discount",
            "too_many_decimal_places",
            f"discount has more than {places} decimal places",
        )
    if not line.tax_rate.is_finite() or line.tax_rate < ZERO:
        raise LineError("tax_rate", "negative", "tax rate may not be negative")
    subtotal = round_amount(line.quantity * line.unit_price, places)
    discount = round_amount(line.discount, places)
    if discount > subtotal:
        raise LineError(
            "discount",
            "exceeds_line_amount",
            f"discount {discount} exceeds the line amount {subtotal}",
        )
    tax = round_amount((subtotal - discount) * line.tax_rate, places)
    return LineAmounts(subtotal, discount, tax, subtotal - discount + tax)


def price_order(lines: Sequence[LineInput], places: int) -> OrderAmounts:
    """Every line priced (:func:`price_line`) and the order's sums. A :class:`LineError`
    names its line through ``index`` (set here)."""
    priced: list[LineAmounts] = []
    for index, line in enumerate(lines):
        try:
            priced.append(price_line(line, places))
        except LineError as exc:
            exc.field = f"lines.{index}.{exc.field}"
            raise
    zero = round_amount(ZERO, places)
    subtotal = sum((p.subtotal for p in priced), zero)
    discount = sum((p.discount for p in priced), zero)
    tax = sum((p.tax for p in priced), zero)
    return OrderAmounts(subtotal, discount, tax, subtotal - discount + tax, tuple(priced))
