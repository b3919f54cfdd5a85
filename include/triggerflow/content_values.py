"""Event values as an email may show them: display text, SKUs, quantities, prices, symbols.

The small total functions :mod:`include.triggerflow.content` builds an email's content from. Each
takes any value an event may carry (text, numbers, objects, nothing) and gives a checked value or
None; none raises.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from include.triggerflow.events import TriggerEvent

__all__ = [
    "CURRENCY_SYMBOLS",
    "MAX_NAME_CHARS",
    "MAX_PRICE",
    "MAX_QUANTITY",
    "MAX_SKU_CHARS",
    "clean_display_text",
    "currency_symbol",
    "event_price",
    "event_products",
    "event_skus",
    "quantity_of",
    "sku_of",
]

MAX_NAME_CHARS = 80
#: the catalogue's sku column width: a longer SKU cannot be in it
MAX_SKU_CHARS = 100
MAX_QUANTITY = 99
MAX_PRICE = Decimal(1000000)
#: how much of an event string is looked at before cleaning (a 100 KB name costs no more than this)
_SCAN_CHARS = 4 * MAX_NAME_CHARS
_ELLIPSIS = "\u2026"
_PRICE_TEXT = re.compile(r"\d{1,12}(?:\.\d{1,6})?")
_SPACES = re.compile(r"\s+")
#: currency code -> the symbol the money filter prints; other codes are printed as the code
CURRENCY_SYMBOLS = MappingProxyType({"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "CAD": "CA$", "AUD": "A$", "CHF": "CHF"})


def clean_display_text(value: Any, limit: int = MAX_NAME_CHARS) -> tuple[str, bool]:
    """Event text as an email may show it, and whether it was cut.

    Control, format (bidi overrides, zero-width joiners, BOM), separator and private-use characters
    become spaces, runs of whitespace become one space, and the result is cut at ``limit``
    characters (ending with an ellipsis). Only the first few hundred characters are ever looked at.
    Text only: the templates autoescape it; nothing here makes markup.
    """
    text = value if isinstance(value, str) else ("" if value is None or isinstance(value, bool) else str(value))
    longer = len(text) > _SCAN_CHARS
    text = text[:_SCAN_CHARS]
    if not text.isprintable():
        text = "".join([" " if unicodedata.category(c)[0] in "CZ" else c for c in text])
    # (printable text has no C or Z character but the ASCII space: nothing to replace, and the
    # one scan in C spares the per-character look-up most names and dimension values would pay)
    cleaned = (_SPACES.sub(" ", text) if "  " in text else text).strip()
    if len(cleaned) > limit or longer:
        return cleaned[: limit - 1].rstrip() + _ELLIPSIS, True
    return cleaned, False


def sku_of(value: Any) -> str | None:
    """A SKU as the catalogue stores it, or None when it cannot be one (blank, too long, controls)."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > MAX_SKU_CHARS:
        return None
    # (printable text has no C character: only text that is not needs the per-character look-up)
    if not text.isprintable() and any(unicodedata.category(c)[0] == "C" for c in text):
        return None
    return text


def event_products(event: TriggerEvent) -> dict[str, Any]:
    raw = event.products
    return raw if isinstance(raw, dict) else {}


def event_skus(event: TriggerEvent) -> list[str]:
    """The usable SKUs an event names, in its order, without repeats (what to look up)."""
    seen: dict[str, None] = {}
    for key in event_products(event):
        sku = sku_of(key)
        if sku is not None:
            seen.setdefault(sku)
    return list(seen)


def quantity_of(details: Any) -> int | None:
    value = details.get("quantity") if isinstance(details, dict) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 1 <= value <= MAX_QUANTITY:
        return value
    return None


def event_price(details: Any) -> Decimal | None:
    """A price from the event only when it is a finite number from 0 to MAX_PRICE (a plain decimal
    text counts); anything else (a word, NaN, a currency suffix, a negative) shows no price."""
    value = details.get("price") if isinstance(details, dict) else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        if not _PRICE_TEXT.fullmatch(value.strip()):
            return None
        value = value.strip()
    elif not isinstance(value, int | float | Decimal):
        return None
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    if not amount.is_finite() or amount < 0 or amount > MAX_PRICE:
        return None
    return amount


def currency_symbol(currency: str | None) -> str | None:
    if not currency:
        return None
    return CURRENCY_SYMBOLS.get(currency.upper(), currency.upper())
