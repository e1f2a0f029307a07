"""Integer micro-dollars in and out of text, through Decimal (never a float)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from tokenfactory.billing.errors import BillingInputError

MICRO = 1_000_000


def usd(micro: int) -> str:
    """12345 -> "0.012345"; 3_000_000 -> "3"."""
    text = format(Decimal(micro) / MICRO, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def parse_usd(text: str | int | float | Decimal, what: str = "amount") -> int:
    """"12.5" -> 12_500_000 micro-dollars; refuses negatives and sub-micro-dollar precision."""
    try:
        value = Decimal(str(text).strip().lstrip("$"))
    except InvalidOperation:
        raise BillingInputError(f"{what} {text!r} is not a number of US dollars") from None
    if not value.is_finite() or value < 0:
        raise BillingInputError(f"{what} must be a dollar amount >= 0, got {text!r}")
    micro = value * MICRO
    if micro != micro.to_integral_value():
        raise BillingInputError(f"{what} {text!r} is finer than a micro-dollar")
    return int(micro)
