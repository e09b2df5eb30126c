"""Money as Decimal, quantised to the currency's ISO 4217 minor unit.

Amounts travel as decimal strings in JSON and as Decimal in Python. A line
total is computed from quantity, unit price and discounts at full precision
and rounded once, at the line; the unit price is never rounded first.
"""

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

# ISO 4217 currencies whose minor unit is not 2 digits. Every other valid
# three-letter code is taken to have 2.
MINOR_UNITS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0,
    "KRW": 0, "PYG": 0, "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0,
    "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
    "CLF": 4, "UYW": 4,
}  # fmt: skip


class MoneyError(ValueError):
    pass


def to_decimal(value, what: str = "amount") -> Decimal:
    """Parse a decimal string or integer. Floats are refused: they lose cents."""
    if isinstance(value, bool) or isinstance(value, float):
        raise MoneyError(f"The {what} {value!r} is a binary float; send it as a decimal string.")
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, str) and value.strip():
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise MoneyError(f"The {what} {value!r} is not a decimal number.") from None
    else:
        raise MoneyError(f"The {what} is missing or empty.")
    if not number.is_finite():
        raise MoneyError(f"The {what} {value!r} is not a finite number.")
    return number


def minor_unit(currency: str) -> int:
    if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha()):
        raise MoneyError(f"{currency!r} is not an ISO 4217 currency code.")
    return MINOR_UNITS.get(currency.upper(), 2)


def quantize(amount: Decimal, currency: str, rounding: str = ROUND_HALF_UP) -> Decimal:
    exponent = Decimal(1).scaleb(-minor_unit(currency))
    return amount.quantize(exponent, rounding=rounding)


def format_amount(amount: Decimal, currency: str) -> str:
    return str(quantize(amount, currency))


def line_total(
    quantity,
    unit_price,
    currency: str,
    discount_percent=None,
    discount_amount=None,
    rounding: str = ROUND_HALF_UP,
) -> Decimal:
    """Compute a line's net total, rounded once to the currency's minor unit.

    ``discount_percent`` reduces the unit price by that percentage and
    ``discount_amount`` by that amount per unit; both may be given.
    """
    qty = to_decimal(quantity, "quantity")
    price = to_decimal(unit_price, "unit price")
    net_unit = price
    if discount_percent not in (None, ""):
        pct = to_decimal(discount_percent, "discount percent")
        if not Decimal(0) <= pct <= Decimal(100):
            raise MoneyError(f"The discount percent {discount_percent} is not between 0 and 100.")
        net_unit = net_unit * (Decimal(100) - pct) / Decimal(100)
    if discount_amount not in (None, ""):
        net_unit = net_unit - to_decimal(discount_amount, "discount amount")
    return quantize(qty * net_unit, currency, rounding)
