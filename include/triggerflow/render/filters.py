"""The Jinja filters templates use (``money``, ``datetime_format``, ``local_datetime``, ``http_url``,
``last_page_ending``) and the locale chain that picks a template variant.

Every filter takes untrusted values (event data, profile columns): a value that cannot be shown
correctly raises ValueError/TypeError, which the renderer turns into a failed render naming the
template line, never a wrong amount or a blank link. A *missing* variable (StrictUndefined) always
raises, because that is a template or context bug. The filters run once per email or per product
on the send stage's hot path, so what repeats (amounts, URLs, zones, locales) is memoised, bounded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import jinja2
from babel import Locale
from babel.numbers import NumberPattern

from include.triggerflow.locales import find_zone, locale_chain

__all__ = [
    "DEFAULT_DATETIME_FORMAT",
    "DEFAULT_LOCAL_DATETIME_FORMAT",
    "FILTERS",
    "datetime_format",
    "http_url",
    "last_page_ending",
    "local_datetime",
    "money",
]

DEFAULT_DATETIME_FORMAT = "%d %b %Y %H:%M UTC"
#: ``%Z`` prints the zone's abbreviation (``CET``, ``EDT``) or ``UTC`` after the fallback.
DEFAULT_LOCAL_DATETIME_FORMAT = "%d %b %Y %H:%M %Z"


# -- locales -----------------------------------------------------------------------------------------
def _raise_if_undefined(value: Any) -> None:
    # str() on a StrictUndefined raises UndefinedError naming the missing variable, which is far more
    # useful than a filter complaining about a value of type "StrictUndefined".
    if isinstance(value, jinja2.Undefined):
        str(value)


# -- money -------------------------------------------------------------------------------------------
#: The locale amounts are written in when the template names none, or one CLDR does not know.
MONEY_FALLBACK_LOCALE = "en"


@lru_cache(maxsize=256)
def _money_format(tag: str | None) -> tuple[Locale, NumberPattern]:
    """The CLDR locale and currency pattern for a template's ``locale`` argument: the most specific
    tag of its chain that CLDR knows (``fr-CA``, else ``fr``), else English. Cached: one look-up
    per distinct value, whatever a template or profile passes."""
    for candidate in locale_chain(tag):
        try:
            found = Locale.parse(candidate, sep="-")
            return found, found.currency_formats["standard"]
        except Exception:  # unknown or malformed: Babel raises several kinds; try the next tag
            continue
    fallback = Locale.parse(MONEY_FALLBACK_LOCALE)
    return fallback, fallback.currency_formats["standard"]


def money(value: Any, symbol: str = "$", locale: str | None = None) -> str:
    """``19.5`` → ``$19.50``: two decimals (half-up), in the number format of ``locale`` (CLDR, via
    Babel): separators, the symbol's place and spacing. English when the locale is None or unknown.

    ``money(1234.5, "$", "fr")`` → ``1 234,50 $`` (narrow no-break space, no-break space), so a
    translated template does not show English number formatting. The symbol is printed as given:
    the currency itself is the caller's choice, and a symbol is never translated.

    Accepts int, float, Decimal and numeric strings (event payloads carry prices either way); anything
    else raises ValueError so a garbled price fails the render instead of showing a wrong amount.
    """
    _raise_if_undefined(value)
    if type(symbol) is str and (locale is None or type(locale) is str) and (
        type(value) in _CACHEABLE_AMOUNTS or (type(value) is Decimal and value.is_finite())
    ):
        # Prices repeat (a catalog): remember the formatted amounts (bounded; errors are not cached).
        # A catalogue's prices are Decimals (equal ones, 39.9 and 39.90, format the same); a NaN
        # Decimal may not hash and is refused by _money anyway.
        return _money_cached(value, symbol, locale)
    return _money(value, symbol, locale)


def _money(value: Any, symbol: str, locale: str | None) -> str:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"money: {value!r} is not a number")
    try:
        # str() first so a float such as 2.675 rounds as written, not as its binary approximation.
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"money: {str(value)[:40]!r} is not a number") from None
    if not amount.is_finite():
        raise ValueError(f"money: {value!r} is not a finite number")
    # Rounded here, half-up as shop prices are; Babel's own rounding is half-even.
    amount = amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    if amount.is_zero():
        amount = abs(amount)  # -0.0 and -0.004 are no debt: "$0.00", not "-$0.00"
    # What babel.numbers.format_currency does, minus its currency look-ups: the locale's currency
    # pattern (two decimals) applied without a currency leaves "¤" where the symbol goes. The
    # caller's symbol goes in as given: Babel would translate one that is an ISO code ("USD" →
    # "$US" in French), and spends half its time naming the currency, unused here.
    cldr_locale, pattern = _money_format(locale)
    text = pattern.apply(amount, cldr_locale)
    symbol = str(symbol)
    if not symbol:
        # no symbol: no space where it would have stood either ("1 234,50", not "1 234,50 ")
        return text.replace("\u00a4", "").strip()
    return text.replace("\u00a4", symbol)


# What JSON payloads carry (and catalogue Decimals, above). typed: 1 and 1.0 are different keys, as
# are "1" and 1; equal floats (0.0 and -0.0 too) format the same.
_CACHEABLE_AMOUNTS = frozenset({int, float, str})
_money_cached = lru_cache(maxsize=4096, typed=True)(_money)


# -- dates -------------------------------------------------------------------------------------------
def _require_aware(value: Any, filter_name: str) -> datetime:
    """The value if it is an aware datetime; naive ones are refused, not taken as UTC: in a template
    their zone is unknown, so printing them as UTC could be wrong (unlike timeutil.as_utc's store
    values, which are UTC by construction)."""
    _raise_if_undefined(value)
    if not isinstance(value, datetime):
        raise TypeError(f"{filter_name}: expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{filter_name}: naive datetime (no time zone)")
    return value


def datetime_format(value: Any, fmt: str = DEFAULT_DATETIME_FORMAT) -> str:
    """strftime on an aware datetime, converted to UTC first (the default format says "UTC").

    Naive datetimes are refused: their time zone is unknown, so printing them as UTC could be wrong.
    """
    return _require_aware(value, "datetime_format").astimezone(UTC).strftime(fmt)


def local_datetime(value: Any, tz_name: Any = None, fmt: str = DEFAULT_LOCAL_DATETIME_FORMAT) -> str:
    """strftime of an aware datetime in the customer's time zone (an IANA name, ``Europe/Paris``).

    A blank, unknown or non-string zone falls back to UTC, and the default format's ``%Z`` then says
    ``UTC``: a profile with a bad ``timezone`` column still gets a correct (if less friendly) time,
    never a failed email. A naive datetime is refused as in :func:`datetime_format`; a *missing*
    variable (StrictUndefined) still raises, because that is a template or context bug.
    """
    moment = _require_aware(value, "local_datetime")
    _raise_if_undefined(tz_name)
    return moment.astimezone(find_zone(tz_name) or UTC).strftime(fmt)


# -- links -------------------------------------------------------------------------------------------
def http_url(value: Any, required: bool = False) -> str:
    """The value if it is an absolute http(s) URL, else ``""`` (or ValueError when ``required``).

    Autoescaping stops a URL from breaking out of an ``href`` attribute but not ``javascript:`` or
    ``data:`` URLs, so links built from event data go through this filter first. ``required=True`` is
    for links an email must not go out without (the unsubscribe link): an empty ``href`` there would
    be a silent compliance failure, so the render fails instead.
    """
    _raise_if_undefined(value)
    result = _http_url(value)
    if required and not result:
        shown = value if not isinstance(value, str) else (value if len(value) <= 80 else value[:80] + "...")
        raise ValueError(f"http_url: {shown!r} is not an absolute http(s) URL")
    return result


# Whitespace (exactly what str.isspace() matches: both use Py_UNICODE_ISSPACE), C0 controls and DEL.
_URL_REFUSED = re.compile(r"[\s\x00-\x1f\x7f]")
_URL_CACHE_MAX_CHARS = 2048


def _http_url(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    if type(value) is str and len(value) <= _URL_CACHE_MAX_CHARS:
        # Every email checks the same catalog and page URLs: remember the answers (bounded).
        return _http_url_cached(value)
    return _check_http_url(value)


def _check_http_url(value: str) -> str:
    text = value.strip()
    if not text or _URL_REFUSED.search(text) is not None:
        return ""
    try:
        parts = urlsplit(text)
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return ""
    return text


_http_url_cached = lru_cache(maxsize=4096)(_check_http_url)


def last_page_ending(pages: Any, suffix: str, default: str = "") -> str:
    """The last http(s) page URL of ``pages`` whose path ends with ``suffix`` (case-insensitive,
    trailing "/" ignored), else ``default``: e.g. the cart page a visitor left, for the button."""
    _raise_if_undefined(pages)
    found = default
    for page in pages or ():
        url = http_url(page)
        if url and url.rstrip("/").lower().endswith(suffix.lower()):
            found = url
    return found


FILTERS: dict[str, Callable[..., Any]] = {
    "money": money,
    "datetime_format": datetime_format,
    "local_datetime": local_datetime,
    "http_url": http_url,
    "last_page_ending": last_page_ending,
}
