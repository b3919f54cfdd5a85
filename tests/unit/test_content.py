"""What of a trigger may reach an email (include/triggerflow/content.py): catalogue products by SKU,
event-only products capped and as text, every URL through the route's link_hosts, lists bounded."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.triggerflow.catalog import CatalogItem as Item
from include.triggerflow.config import IdentityRule, TriggerRoute
from include.triggerflow.content import (
    MAX_NAME_CHARS,
    MAX_PAGES,
    MAX_PRODUCTS,
    EmailContent,
    ProductSource,
    clean_display_text,
    email_content,
    event_skus,
    sku_of,
)
from include.triggerflow.events import TriggerEvent
from include.triggerflow.links import LinkPolicy, LinkRefusal

SHOP = "https://shop.example.com"


CATALOG = {
    "TRL-RUN-42": Item("TRL-RUN-42", "Trail Runner 2 Running Shoes", Decimal("129.95"), "USD",
                       f"{SHOP}/p/TRL-RUN-42", f"{SHOP}/img/TRL-RUN-42.jpg",
                       names={"fr": "Chaussures de trail Trail Runner 2"}),
    "MRN-WOOL-SCK": Item("MRN-WOOL-SCK", "Merino Wool Hiking Socks", Decimal("24.50"), "EUR", f"{SHOP}/p/MRN-WOOL-SCK"),
    # a catalogue row whose URLs are not on the route's hosts: they are dropped like any other
    "ODD-URL": Item("ODD-URL", "Odd", Decimal(1), None, "https://partner.example/p/odd", "http://shop.example.com/i.jpg",
                    in_stock=False),
}


def route(products: ProductSource = ProductSource.CATALOG, hosts: tuple[str, ...] = ("shop.example.com",),
          links: tuple[tuple[str, str], ...] = (("cart", f"{SHOP}/cart"),)) -> TriggerRoute:
    return TriggerRoute(
        name="cart_abandonment", trigger_id="t-1", template="cart_abandonment", subject="Hi",
        identity=IdentityRule("dimension", "eVar01", "shopper_id"),
        products=products, link_policy=LinkPolicy.of(hosts), links=links,
    )


def event(products: Any = None, pages: list[Any] | None = None, **dimensions: list[Any]) -> TriggerEvent:
    dims = {name: {"data": values} for name, values in dimensions.items()}
    if pages is not None:
        dims["pageURL"] = {"data": pages}
    return TriggerEvent(trigger_id="t-1", products=products if products is not None else {}, dimensions=dims)


def test_catalogue_mode_takes_everything_but_the_quantity_from_the_catalogue() -> None:
    forged = event({
        "TRL-RUN-42": {"name": "CLICK HERE https://evil.example", "price": 0.01, "quantity": 2,
                       "url": "https://evil.example/login", "image_url": "https://evil.example/pixel.gif"},
        "MRN-WOOL-SCK": {"quantity": "lots"},
    })
    content = email_content(forged, route(), CATALOG, "en_US")
    assert [p.as_context() for p in content.products] == [
        {"sku": "TRL-RUN-42", "name": "Trail Runner 2 Running Shoes", "price": Decimal("129.95"), "currency": "USD",
         "symbol": "$", "quantity": 2, "url": f"{SHOP}/p/TRL-RUN-42", "image_url": f"{SHOP}/img/TRL-RUN-42.jpg",
         "in_stock": True},
        {"sku": "MRN-WOOL-SCK", "name": "Merino Wool Hiking Socks", "price": Decimal("24.50"), "currency": "EUR",
         "symbol": "€", "quantity": None, "url": f"{SHOP}/p/MRN-WOOL-SCK", "image_url": None, "in_stock": True},
    ]
    # the event's own URLs were never looked at: nothing to drop
    assert (content.requested_skus, content.unknown_skus, content.dropped_links) == (2, 0, 0)
    assert content.note() == ""
    assert not content.no_products


def test_catalogue_names_follow_the_profile_locale() -> None:
    content = email_content(event({"TRL-RUN-42": {}}), route(), CATALOG, "fr_FR")
    assert content.products[0].name == "Chaussures de trail Trail Runner 2"


@pytest.mark.parametrize("quantity", [0, -1, 100, 1.5, True, "2", None, [2]])
def test_a_quantity_is_a_whole_number_from_1_to_99_or_nothing(quantity: Any) -> None:
    content = email_content(event({"TRL-RUN-42": {"quantity": quantity}}), route(), CATALOG)
    assert content.products[0].quantity is None


def test_unknown_skus_are_left_out_and_counted() -> None:
    content = email_content(event({"TRL-RUN-42": {}, "EVIL-1": {"name": "x"}, "EVIL-2": {}}), route(), CATALOG)
    assert [p.sku for p in content.products] == ["TRL-RUN-42"]
    assert (content.requested_skus, content.unknown_skus) == (3, 2)
    assert content.note() == "2 of 3 SKUs not in the catalogue"
    assert not content.no_products


def test_only_unknown_skus_leave_no_products() -> None:
    content = email_content(event({"EVIL-1": {"name": "Free money", "url": "https://evil.example/"}}, pages=[
        "https://evil.example/login"]), route(), CATALOG)
    assert content.products == ()
    assert content.no_products
    assert content.no_products_detail() == (
        "none of the 1 SKUs the event named is in the catalogue (1 unknown); 1 links dropped; nothing to show, no email"
    )


def test_an_event_without_products_is_not_a_no_products_email() -> None:
    content = email_content(event(pages=[f"{SHOP}/c/hiking"]), route(), CATALOG)
    assert (content.products, content.requested_skus, content.no_products) == ((), 0, False)
    assert content.pages == (f"{SHOP}/c/hiking",)


def test_catalogue_urls_pass_the_route_policy_too() -> None:
    content = email_content(event({"ODD-URL": {}}), route(), CATALOG)
    [product] = content.products
    assert (product.url, product.image_url, product.in_stock) == (None, None, False)
    assert content.dropped == {LinkRefusal.HOST_NOT_ALLOWED: 1, LinkRefusal.SCHEME: 1}


def test_pages_keep_only_allowed_urls_rebuilt_without_repeats() -> None:
    pages = [
        f"{SHOP}/", "https://SHOP.example.com./", f"{SHOP}/cart", "https://evil.example/login",
        "https://shop.example.com@evil.example/", "https://shop.example.com.evil.example/cart", "javascript:alert(1)",
        "not a url",
    ]
    content = email_content(event(pages=pages), route(), CATALOG)
    assert content.pages == (f"{SHOP}/", f"{SHOP}/cart")
    assert content.dropped == {LinkRefusal.HOST_NOT_ALLOWED: 2, LinkRefusal.USERINFO: 1, LinkRefusal.SCHEME: 1,
                               LinkRefusal.BAD_CHARACTER: 1}
    assert content.note() == "5 links dropped (bad-character 1, host-not-allowed 2, scheme 1, userinfo 1)"


def test_lists_are_bounded() -> None:
    many_pages = [f"{SHOP}/p/{i}" for i in range(MAX_PAGES + 5)]
    many_products = {f"SKU-{i}": {"name": f"P{i}"} for i in range(MAX_PRODUCTS + 3)}
    content = email_content(event(many_products, pages=many_pages), route(ProductSource.EVENT), {})
    assert len(content.pages) == MAX_PAGES
    assert len(content.products) == MAX_PRODUCTS
    assert content.over_limit == 5 + 3
    assert content.requested_skus == MAX_PRODUCTS + 3


def test_route_links_come_from_configuration() -> None:
    content = email_content(event(), route(links=(("cart", f"{SHOP}/cart"), ("shop", f"{SHOP}/"))), CATALOG)
    assert dict(content.links) == {"cart": f"{SHOP}/cart", "shop": f"{SHOP}/"}


def test_a_route_without_link_hosts_shows_no_url() -> None:
    bare = TriggerRoute(name="r", trigger_id="t", template="cart_abandonment", subject="s",
                        identity=IdentityRule("dimension", "eVar01", "shopper_id"))
    content = email_content(event({"TRL-RUN-42": {}}, pages=[f"{SHOP}/"]), bare, CATALOG)
    assert bare.products is ProductSource.CATALOG
    assert (content.pages, content.products[0].url, content.products[0].image_url) == ((), None, None)
    assert content.dropped_links == 3


# -- event-only mode ---------------------------------------------------------------------------------------
def test_event_mode_names_are_capped_plain_text() -> None:
    forged = event({
        "LONG": {"name": "N" * 100_000},
        "TRICKS": {"name": "\u202egnp.exe\u200d Jacket\r\nBcc: victim@example.org\u2028<b>x</b>\x00"},
        "NONAME": {"price": 3},
        "LIST": ["not", "details"],
    })
    content = email_content(forged, route(ProductSource.EVENT), {})
    names = {p.sku: p.name for p in content.products}
    assert names["LONG"] == "N" * (MAX_NAME_CHARS - 1) + "\u2026"
    assert len(names["LONG"]) == MAX_NAME_CHARS
    assert names["TRICKS"] == "gnp.exe Jacket Bcc: victim@example.org <b>x</b>"
    assert names["NONAME"] == "NONAME"
    assert names["LIST"] == "LIST"
    assert content.capped_texts == 1
    assert content.note() == "1 texts cut at their limit"


@pytest.mark.parametrize(
    ("price", "shown"),
    [
        (19.5, Decimal("19.5")), (0, Decimal(0)), ("12.50", Decimal("12.50")), (Decimal(3), Decimal(3)),
        (float("nan"), None), (float("inf"), None), (-1, None), ("free", None), ("12.50 EUR", None),
        (True, None), (None, None), ([1], None), (10**12, None), ("1e3", None),
    ],
)
def test_event_mode_prices_only_when_a_finite_non_negative_number(price: Any, shown: Decimal | None) -> None:
    content = email_content(event({"HAT": {"name": "Hat", "price": price}}), route(ProductSource.EVENT), {})
    assert content.products[0].price == shown


def test_event_mode_urls_pass_the_route_policy() -> None:
    forged = event({
        "GOOD": {"name": "Good", "url": f"{SHOP}/p/GOOD", "image_url": f"{SHOP}/img/GOOD.jpg"},
        "JS": {"name": "Shoes", "url": "javascript:alert(document.cookie)", "image_url": "https://evil.example/pixel.gif"},
    })
    content = email_content(forged, route(ProductSource.EVENT), {})
    urls = {p.sku: (p.url, p.image_url) for p in content.products}
    assert urls == {"GOOD": (f"{SHOP}/p/GOOD", f"{SHOP}/img/GOOD.jpg"), "JS": (None, None)}
    assert content.dropped == {LinkRefusal.SCHEME: 1, LinkRefusal.HOST_NOT_ALLOWED: 1}


def test_skus_that_cannot_be_skus_are_unknown() -> None:
    forged = event({"": {}, "  ": {}, "A\u0000B": {}, "X" * 101: {}, "TRL-RUN-42": {}, " TRL-RUN-42 ": {}})
    assert event_skus(forged) == ["TRL-RUN-42"]
    content = email_content(forged, route(), CATALOG)
    assert [p.sku for p in content.products] == ["TRL-RUN-42"]
    assert content.unknown_skus == 4


@pytest.mark.parametrize("products", [12, ["TRL-RUN-42", None, 3], None, "TRL-RUN-42"])
def test_products_that_are_not_an_object_name_nothing(products: Any) -> None:
    forged = TriggerEvent(products=products)
    content = email_content(forged, route(), CATALOG)
    assert (content.products, content.requested_skus, content.no_products) == ((), 0, False)
    assert event_skus(forged) == []


def test_dimensions_show_checked_urls_and_capped_text() -> None:
    forged = event(pages=[f"{SHOP}/", "https://evil.example/"],
                   eVar02=["https://evil.example/x", f"{SHOP}/y", "javascript:x", "T" * 200, 7, None, {"a": 1}])
    content = email_content(forged, route(), CATALOG)
    assert content.dimensions["eVar02"] == (f"{SHOP}/y", "T" * 79 + "\u2026", "7")
    assert content.dimensions["pageURL"] == (f"{SHOP}/",)
    # the pages' refusal is counted once (pages), eVar02's two refusals once each
    assert content.dropped_links == 3


def test_lazy_dimensions_are_worked_out_on_first_use_and_equal_the_eager_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    import include.triggerflow.content as content_module
    from include.triggerflow.render import build_context

    forged = event(pages=[f"{SHOP}/", "https://evil.example/"], eVar02=["https://evil.example/x", f"{SHOP}/y", "T" * 200])
    eager = email_content(forged, route(), CATALOG)
    calls = []
    real = content_module._dimensions
    monkeypatch.setattr(content_module, "_dimensions", lambda *a: calls.append(1) or real(*a))
    lazy = email_content(forged, route(), CATALOG, lazy_dimensions=True)
    context = build_context(profile={"customer_id": "C1"}, event=forged, route=route(), content=lazy)
    assert calls == []  # nothing read them yet: never worked out
    assert dict(context["event"]["dimensions"]) == {k: list(v) for k, v in eager.dimensions.items()}
    assert dict(lazy.dimensions) == dict(eager.dimensions) and calls == [1]  # once, then remembered
    assert (lazy.dropped_links, eager.dropped_links) == (1, 2)  # the lazy ones' refusal is not tallied


def test_clean_display_text() -> None:
    assert clean_display_text("  a \t b  ") == ("a b", False)
    assert clean_display_text(None) == ("", False)
    assert clean_display_text(12) == ("12", False)
    assert clean_display_text("x" * 81) == ("x" * 79 + "\u2026", True)
    assert clean_display_text("a\u200bb\u00a0\u00a0c\u202e") == ("a b c", False)  # format, separator chars


def _clean_per_character(value: str, limit: int) -> tuple[str, bool]:
    """clean_display_text as first written: every character looked up (the reference for the fast path)."""
    import re
    import unicodedata
    text = value[: 4 * 80]
    cleaned = re.sub(r"\s+", " ", "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in text)).strip()
    if len(cleaned) > limit or len(value) > 4 * 80:
        return cleaned[: limit - 1].rstrip() + "\u2026", True
    return cleaned, False


@given(st.text(max_size=400) | st.text(alphabet=" a\t\u00a0\u200b\u202e\u2028\x1f\x85é", max_size=40),
       st.sampled_from([1, 2, 80, 200]))
@settings(max_examples=400, deadline=None)
def test_clean_display_text_is_the_per_character_cleaning(value: str, limit: int) -> None:
    assert clean_display_text(value, limit) == _clean_per_character(value, limit)


def test_content_is_total_on_odd_routes_and_events() -> None:
    content = email_content(TriggerEvent(), route(), {})
    assert content == EmailContent(source=ProductSource.CATALOG, links=content.links, dimensions={})


@given(st.text(max_size=120) | st.text(alphabet=" a\t\u00a0\u200b\u202e\u2028\x1f\x85é", max_size=20))
@settings(max_examples=400, deadline=None)
def test_sku_of_refuses_exactly_the_texts_with_a_control_character(value: str) -> None:
    import unicodedata
    text = value.strip()
    expected = None if not text or len(text) > 100 or any(unicodedata.category(c)[0] == "C" for c in text) else text
    assert sku_of(value) == expected

