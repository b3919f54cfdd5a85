"""What of a trigger may reach an email: one pure function, :func:`email_content`, used by both
reconcile (to decide ``no-products`` and count what was left out) and send (to build the template
context), so the two can never disagree about what an email shows.

A trigger is an unauthenticated Analytics hit: its page URLs, product names, prices, URLs and
images are whatever the sender typed. So:

* **Catalogue mode** (``products: catalog``, the default): the event only *names* products by SKU.
  Name (in the profile's language where the catalogue has it), price, currency, URL and image come
  from the ``catalog`` table; the event's own product details are ignored, except the quantity,
  taken only as a whole number from 1 to :data:`MAX_QUANTITY`. SKUs the catalogue does not know
  are left out and counted (``unknown_skus``).
* **Event-only mode** (``products: event``): product names come from the event but as plain text,
  cleaned of control and invisible format characters and cut at :data:`MAX_NAME_CHARS` characters
  (``capped_texts`` counts the names cut); a price is shown only when it is a finite number from
  0 to :data:`MAX_PRICE`; product URLs and images still go through the route's links policy.
* **Every URL** (event pages, product URLs and images, URL-looking dimension values, the route's
  own ``links``) must pass the route's :class:`~include.triggerflow.links.LinkPolicy`; a refused
  URL is dropped and counted by cause (``dropped_links``). The URL emitted is the policy's rebuilt
  one, never the event's text.
* Lists are bounded: at most :data:`MAX_PRODUCTS` products, :data:`MAX_PAGES` pages and
  :data:`MAX_DIMENSION_VALUES` values per dimension reach the context (``over_limit`` counts the
  rest), so a 20,000-page session does not make a 20,000-line email.

The function takes the catalogue as a mapping (SKU -> item), looked up by the caller in one
set-based query per batch or chunk (:func:`event_skus` gives the SKUs to look up).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from include.triggerflow.content_values import (
    CURRENCY_SYMBOLS,
    MAX_NAME_CHARS,
    MAX_PRICE,
    MAX_QUANTITY,
    MAX_SKU_CHARS,
    clean_display_text,
    currency_symbol,
    event_price,
    event_products,
    event_skus,
    quantity_of,
    sku_of,
)
from include.triggerflow.links import NO_LINKS, LinkPolicy, LinkRefusal

if TYPE_CHECKING:
    from include.triggerflow.config import TriggerRoute
    from include.triggerflow.events import TriggerEvent

__all__ = [
    "CURRENCY_SYMBOLS",
    "MAX_DIMENSION_TEXT",
    "MAX_DIMENSION_VALUES",
    "MAX_NAME_CHARS",
    "MAX_PAGES",
    "MAX_PRICE",
    "MAX_PRODUCTS",
    "MAX_QUANTITY",
    "MAX_SKU_CHARS",
    "CatalogEntry",
    "EmailContent",
    "EmailProduct",
    "ProductSource",
    "clean_display_text",
    "email_content",
    "event_skus",
]

MAX_PRODUCTS = 20
MAX_PAGES = 20
MAX_DIMENSION_VALUES = 20
MAX_DIMENSION_TEXT = 80
# "scheme:" at the start: a value a mail client could turn into a link (javascript:, https:, data:)
_URL_LIKE = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*:|\s*//")


class ProductSource(StrEnum):
    """Where an email's product details come from (a route's ``products`` key)."""

    CATALOG = "catalog"
    EVENT = "event"


class CatalogEntry(Protocol):
    """What :func:`email_content` reads of a catalogue item (``catalog.CatalogItem`` has it)."""

    @property
    def sku(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def price(self) -> Decimal | None: ...
    @property
    def currency(self) -> str | None: ...
    @property
    def url(self) -> str | None: ...
    @property
    def image_url(self) -> str | None: ...
    @property
    def in_stock(self) -> bool: ...

    def name_for(self, locale: str | None) -> str: ...


@dataclass(frozen=True)
class EmailProduct:
    """One product as an email shows it: every field already checked."""

    sku: str
    name: str
    price: Decimal | None = None
    currency: str | None = None
    quantity: int | None = None
    url: str | None = None
    image_url: str | None = None
    in_stock: bool | None = None

    def as_context(self) -> dict[str, Any]:
        """The template's view: a plain dict (templates call ``item.get("url")``)."""
        return {
            "sku": self.sku,
            "name": self.name,
            "price": self.price,
            "currency": self.currency,
            "symbol": currency_symbol(self.currency),
            "quantity": self.quantity,
            "url": self.url,
            "image_url": self.image_url,
            "in_stock": self.in_stock,
        }


@dataclass(frozen=True)
class EmailContent:
    """What of one trigger an email may show, and what was left out (for the decision detail)."""

    source: ProductSource
    products: tuple[EmailProduct, ...] = ()
    pages: tuple[str, ...] = ()
    #: the route's own links (``cart``, ``shop``...), already checked against its policy
    links: Mapping[str, str] = field(default_factory=dict)
    #: dimension name -> its values as shown (URL-looking values checked, text cut)
    dimensions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: distinct SKUs the event named (before any was left out)
    requested_skus: int = 0
    #: SKUs the catalogue does not know (catalogue mode) or that are no usable SKU
    unknown_skus: int = 0
    #: URLs refused by the route's links policy, by cause
    dropped: Mapping[LinkRefusal, int] = field(default_factory=dict)
    #: texts cut at their limit (product names, dimension values)
    capped_texts: int = 0
    #: list entries beyond MAX_PRODUCTS / MAX_PAGES / MAX_DIMENSION_VALUES
    over_limit: int = 0

    @property
    def dropped_links(self) -> int:
        return sum(self.dropped.values())

    @property
    def no_products(self) -> bool:
        """The event named products and none can be shown: the email would be about nothing."""
        return self.requested_skus > 0 and not self.products

    def note(self) -> str:
        """What was left out, for a decision's detail (empty when nothing was)."""
        parts: list[str] = []
        if self.unknown_skus:
            where = "not in the catalogue" if self.source is ProductSource.CATALOG else "not usable"
            parts.append(f"{self.unknown_skus} of {self.requested_skus} SKUs {where}")
        if self.dropped:
            causes = ", ".join(f"{cause} {n}" for cause, n in sorted(self.dropped.items()))
            parts.append(f"{self.dropped_links} links dropped ({causes})")
        if self.capped_texts:
            parts.append(f"{self.capped_texts} texts cut at their limit")
        if self.over_limit:
            parts.append(f"{self.over_limit} list entries over the limit left out")
        return "; ".join(parts)

    def no_products_detail(self) -> str:
        """The detail of a ``no-products`` decision: how many SKUs were unknown, how many links dropped."""
        where = "in the catalogue" if self.source is ProductSource.CATALOG else "usable"
        return (
            f"none of the {self.requested_skus} SKUs the event named is {where} "
            f"({self.unknown_skus} unknown); {self.dropped_links} links dropped; nothing to show, no email"
        )


# -- the function --------------------------------------------------------------------------------------
class _Tally:
    def __init__(self, policy: LinkPolicy) -> None:
        self.policy = policy
        self.dropped: Counter[LinkRefusal] = Counter()
        self.capped = 0
        self.over = 0

    def url(self, value: Any) -> str | None:
        """The policy's URL for ``value``; a refused non-empty value is counted."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        verdict = self.policy.check(value)
        if verdict.refusal is not None:
            self.dropped[verdict.refusal] += 1
        return verdict.url

    def text(self, value: Any, limit: int) -> str:
        text, cut = clean_display_text(value, limit)
        self.capped += cut
        return text


class LazyDimensions(Mapping[str, tuple[str, ...]]):
    """An email's dimensions, worked out on first use (the shipped templates show none; a custom
    template that reads ``event.dimensions`` gets exactly what :func:`email_content` would give).
    Their refusals and cuts are not counted in the content's tallies: only reconcile's decision
    detail reads those, and reconcile works the dimensions out eagerly."""

    __slots__ = ("_event", "_policy", "_value")

    def __init__(self, event: TriggerEvent, policy: LinkPolicy) -> None:
        self._event = event
        self._policy = policy
        self._value: dict[str, tuple[str, ...]] | None = None

    def _shown(self) -> dict[str, tuple[str, ...]]:
        if self._value is None:
            self._value = _dimensions(self._event, _Tally(self._policy))
        return self._value

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return self._shown()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._shown())

    def __len__(self) -> int:
        return len(self._shown())


def email_content(
    event: TriggerEvent,
    route: TriggerRoute,
    catalog: Mapping[str, CatalogEntry],
    locale: str | None = None,
    *,
    lazy_dimensions: bool = False,
) -> EmailContent:
    """What ``event`` may show in ``route``'s email (see the module docstring).

    :param catalog: SKU -> catalogue item, for at least the SKUs of :func:`event_skus` (extra items
        are ignored); unused in event-only mode.
    :param locale: the profile's locale, for catalogue names in its language.
    :param lazy_dimensions: the dimensions as a :class:`LazyDimensions` (the send stage: worked out
        only if a template reads them; their tallies are then left out).
    Pure and total: any event value gives a result, never an exception.
    """
    source = ProductSource(getattr(route, "products", ProductSource.CATALOG))
    tally = _Tally(getattr(route, "link_policy", NO_LINKS))
    raw_products = event_products(event)

    products: list[EmailProduct] = []
    seen: set[str] = set()
    requested = unknown = 0
    for key, details in raw_products.items():
        sku = sku_of(key)
        if sku is None:
            requested += 1
            unknown += 1
            continue
        if sku in seen:
            continue
        seen.add(sku)
        requested += 1
        if len(products) >= MAX_PRODUCTS:
            tally.over += 1
            continue
        if source is ProductSource.CATALOG:
            item = catalog.get(sku)
            if item is None:
                unknown += 1
                continue
            products.append(_from_catalog(item, details, tally, locale))
        else:
            products.append(_from_event(sku, details, tally))

    pages: list[str] = []
    for page in event.pages():
        url = tally.url(page)
        if url is None or url in pages:
            continue
        if len(pages) >= MAX_PAGES:
            tally.over += 1
            continue
        pages.append(url)

    links: dict[str, str] = {}
    for name, target in getattr(route, "links", ()):
        url = tally.url(target)
        if url is not None:
            links[name] = url

    return EmailContent(
        source=source,
        products=tuple(products),
        pages=tuple(pages),
        links=MappingProxyType(links),
        dimensions=LazyDimensions(event, tally.policy) if lazy_dimensions else MappingProxyType(_dimensions(event, tally)),
        requested_skus=requested,
        unknown_skus=unknown,
        dropped=MappingProxyType(dict(tally.dropped)),
        capped_texts=tally.capped,
        over_limit=tally.over,
    )


def _from_catalog(item: CatalogEntry, details: Any, tally: _Tally, locale: str | None) -> EmailProduct:
    # Catalogue text is the brand's own; still cleaned of controls (it reaches a text/plain part).
    name, _ = clean_display_text(item.name_for(locale) or item.name, limit=200)
    price = item.price if item.price is not None and item.price.is_finite() and item.price >= 0 else None
    return EmailProduct(
        sku=item.sku,
        name=name or item.sku,
        price=price,
        currency=item.currency,
        quantity=quantity_of(details),
        url=tally.url(item.url),
        image_url=tally.url(item.image_url),
        in_stock=bool(item.in_stock),
    )


def _from_event(sku: str, details: Any, tally: _Tally) -> EmailProduct:
    raw_name = details.get("name") if isinstance(details, dict) else details
    name = tally.text(raw_name if isinstance(raw_name, str) else None, MAX_NAME_CHARS)
    shown_sku, _ = clean_display_text(sku, MAX_NAME_CHARS)
    url = image = None
    if isinstance(details, dict):
        url = tally.url(details.get("url"))
        image = tally.url(details.get("image_url"))
    return EmailProduct(
        sku=shown_sku,
        name=name or shown_sku,
        price=event_price(details),
        quantity=quantity_of(details),
        url=url,
        image_url=image,
    )


def _dimensions(event: TriggerEvent, tally: _Tally) -> dict[str, tuple[str, ...]]:
    """Each dimension's first values as text: URL-looking values through the links policy (the
    page URLs are a dimension too), other text cleaned and cut."""
    shown: dict[str, tuple[str, ...]] = {}
    names: Sequence[str] = [name for name in event.dimensions if isinstance(name, str)]
    for name in names:
        values: list[str] = []
        for value in event.dimension_values(name):
            if value is None or isinstance(value, dict | list):
                continue
            if len(values) >= MAX_DIMENSION_VALUES:
                if name.strip() != "pageURL":  # the pages list counted its own
                    tally.over += 1
                break
            if isinstance(value, str) and _URL_LIKE.match(value):
                # pageURL values are the pages: their refusals are already counted once
                url = tally.policy.url(value) if name.strip() == "pageURL" else tally.url(value)
                if url is not None:
                    values.append(url)
                continue
            text = tally.text(value, MAX_DIMENSION_TEXT)
            if text:
                values.append(text)
        shown[name.strip()] = tuple(values)
    return shown

