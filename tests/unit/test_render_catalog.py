"""The shipped cart and browse emails in catalogue mode (the shipped default) for a forged trigger:
the email shows the catalogue's products and the routing file's links, and nothing of the event's
own text or foreign URLs."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest

from include.triggerflow import DEFAULT_ROUTING_FILE
from include.triggerflow.config import TriggerRoute, load_routing
from include.triggerflow.content import ProductSource, email_content
from include.triggerflow.render import Renderer, build_context
from tests.unit.test_content import Item
from tests.unit.test_render import BROWSE_ID, CART_ID, event_of

SHOP = "https://shop.example.com"
CATALOG = {
    "TRL-RUN-42": Item("TRL-RUN-42", "Trail Runner 2 Running Shoes", Decimal("129.95"), "USD", f"{SHOP}/p/TRL-RUN-42",
                       f"{SHOP}/img/TRL-RUN-42.jpg", names={"fr": "Chaussures Trail Runner 2"}),
    "MRN-WOOL-SCK": Item("MRN-WOOL-SCK", "Merino Wool Hiking Socks (3-pack)", Decimal("24.50"), "EUR",
                         f"{SHOP}/p/MRN-WOOL-SCK", None),
}
ATTACKER_TEXT = "Your account is locked, log in at evil"
FORGED_PRODUCTS = {
    "TRL-RUN-42": {"name": ATTACKER_TEXT, "price": 0.01, "quantity": 1, "url": "https://evil.example/login",
                   "image_url": "https://evil.example/pixel.gif"},
    "MRN-WOOL-SCK": {"name": "<a href=https://evil.example>x</a>", "quantity": 2},
    "EVIL-SKU": {"name": ATTACKER_TEXT, "url": "https://shop.example.com@evil.example/"},
}
FORGED_PAGES = [
    "https://shop.example.com.evil.example/cart", "https://evil.example/login", "javascript:alert(1)",
    "https://shop.example.com@evil.example/cart", f"{SHOP}/p/TRL-RUN-42",
]
URL_RE = re.compile(r"""(?:href|src)="([^"]*)"|(https?://[^\s"'<>]+)""")


@pytest.fixture(scope="module")
def routes() -> dict[str, TriggerRoute]:
    routing = load_routing(DEFAULT_ROUTING_FILE)
    return {"cart": routing.route_for(CART_ID), "browse": routing.route_for(BROWSE_ID)}  # type: ignore[dict-item]


def render(route: TriggerRoute, locale: str | None, **event: Any):
    parsed = event_of(trigger_id=route.trigger_id, **event)
    profile = {"first_name": "Ada", "timezone": None, "locale": locale}
    content = email_content(parsed, route, CATALOG, locale)
    context = build_context(profile=profile, event=parsed, route=route, content=content,
                            extra={"unsubscribe_url": f"{SHOP}/u?t=1"})
    return Renderer().render(route, context, locale=locale)


def hosts_of(text: str) -> set[str]:
    """Every host a link, an image or a bare URL of ``text`` names (base.html's XHTML namespace
    declaration is no link)."""
    found = set()
    for match in URL_RE.finditer(text.replace('xmlns="http://www.w3.org/1999/xhtml"', "")):
        url = match.group(1) or match.group(2)
        if url.startswith(("http://", "https://")):
            found.add(url.split("/")[2])
        elif url:
            found.add(url)  # a link that is no http(s) URL at all
    return found


@pytest.mark.parametrize(("name", "locale"), [("cart", None), ("cart", "fr_FR"), ("browse", None)])
def test_a_forged_trigger_shows_only_the_catalogue_and_the_shop(routes, name: str, locale: str | None) -> None:
    route = routes[name]
    assert route.products is ProductSource.CATALOG
    email = render(route, locale, products=FORGED_PRODUCTS, pages=FORGED_PAGES)
    for part in (email.text, email.html):
        assert hosts_of(part) == {"shop.example.com"}, part
        assert "evil" not in part
        assert ATTACKER_TEXT not in part
        assert "0.01" not in part and "0,01" not in part
    expected = "Chaussures Trail Runner 2" if locale else "Trail Runner 2 Running Shoes"
    assert expected in email.text and expected in email.html
    assert "Merino Wool Hiking Socks (3-pack)" in email.text
    assert "EVIL-SKU" not in email.text + email.html
    assert f'src="{SHOP}/img/TRL-RUN-42.jpg"' in email.html
    button = f"{SHOP}/cart" if name == "cart" else f"{SHOP}/"
    assert f'href="{button}"' in email.html


def test_catalogue_prices_use_the_catalogue_currency(routes) -> None:
    email = render(routes["cart"], None, products={"TRL-RUN-42": {}, "MRN-WOOL-SCK": {"quantity": 2}})
    assert "- Trail Runner 2 Running Shoes: $129.95\n" in email.text
    assert "- Merino Wool Hiking Socks (3-pack) x 2: €24.50\n" in email.text


def test_a_route_without_links_shows_no_button(routes) -> None:
    import dataclasses

    route = dataclasses.replace(routes["cart"], links=())
    email = render(route, None, products={"TRL-RUN-42": {}})
    assert "Return to your cart" not in email.text + email.html
