"""Fuzzing (hypothesis) of what a trigger may put into an email: the link allow-list on any text and
on URLs assembled from the tricks attackers use, and email_content -> build_context -> the shipped
templates on any product and page data, in both product modes.

Properties: nothing raises; every URL let through is on the route's hosts, https, without userinfo,
whitespace, controls or backslashes, and is a fixed point of the policy (checking the emitted URL
again gives the same URL); event-only product names are short plain text; the rendered email links
to no host but the shop and the unsubscribe endpoint.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import Any
from urllib.parse import urlsplit

from hypothesis import given
from hypothesis import strategies as st

from include.triggerflow import DEFAULT_ROUTING_FILE
from include.triggerflow.config import load_routing
from include.triggerflow.content import (
    MAX_NAME_CHARS,
    MAX_PAGES,
    MAX_PRODUCTS,
    ProductSource,
    email_content,
)
from include.triggerflow.events import TriggerEvent
from include.triggerflow.links import MAX_URL_CHARS, LinkPolicy
from include.triggerflow.render import Renderer, build_context
from tests.unit.fuzz.strategies import hostile_text, json_values
from tests.unit.test_content import Item

POLICY = LinkPolicy.of(["shop.example.com", "*.cdn.example.com"])
ALLOWED = ("shop.example.com",)

schemes = st.sampled_from(["https", "HTTPS", "http", "javascript", "data", "ftp", "", "hTTps", "java\tscript"])
hosts = st.sampled_from([
    "shop.example.com", "SHOP.EXAMPLE.COM", "shop.example.com.", "img.cdn.example.com", "cdn.example.com",
    "evil.example", "shop.example.com.evil.example", "shop-example.com.evil.example", "shop.example.com@evil.example",
    "evil.example@shop.example.com", "shop.example.com\\@evil.example", "shop.ex\u0430mple.com", "shop.example.com%2eevil",
    "[::1]", "127.0.0.1", "shop.example.com:443", "shop.example.com:8443", "shop.example.com:", "", "xn--bcher-kva.example",
    "shop.example.com\u200b", "shop..example.com", "user:pw@shop.example.com",
])
separators = st.sampled_from(["://", ":/", ":", ":///", "://\t", ":\\\\", "//"])
paths = st.one_of(st.just(""), st.text(st.sampled_from("/abc%?#&=@:\\\" <>é\u202e\x00."), max_size=12), hostile_text)
assembled_urls = st.builds(lambda s, sep, h, p: f"{s}{sep}{h}{p}", schemes, separators, hosts, paths)
any_url = st.one_of(assembled_urls, hostile_text, json_values)
_REFUSED = re.compile(r"[\s\x00-\x1f\x7f-\x9f\\]")


def _is_safe(url: str) -> bool:
    parts = urlsplit(url)
    host = parts.hostname or ""
    return (
        parts.scheme == "https"
        and "@" not in parts.netloc
        and (host in ALLOWED or host.endswith(".cdn.example.com"))
        and parts.port in (None,)
        and _REFUSED.search(url) is None
        and len(url) <= MAX_URL_CHARS
    )


@given(any_url)
def test_the_policy_lets_through_only_safe_urls_and_is_idempotent(value: Any) -> None:
    verdict = POLICY.check(value)
    assert (verdict.url is None) != (verdict.refusal is None)
    if verdict.url is not None:
        assert _is_safe(verdict.url), (value, verdict.url)
        assert POLICY.url(verdict.url) == verdict.url


ROUTING = load_routing(DEFAULT_ROUTING_FILE)
ROUTES = [*ROUTING.routes, *(dataclasses.replace(r, products=ProductSource.EVENT) for r in ROUTING.routes)]
CATALOG = {"TRL-RUN-42": Item("TRL-RUN-42", "Trail Runner 2", None, "USD", "https://shop.example.com/p/1",
                              "https://evil.example/i.gif")}
sku_keys = st.one_of(st.just("TRL-RUN-42"), hostile_text)
product_details = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={
        "name": st.one_of(hostile_text, st.text(max_size=300), json_values), "price": json_values,
        "quantity": json_values, "url": any_url, "image_url": any_url,
    }),
)
products = st.one_of(st.dictionaries(sku_keys, product_details, max_size=6), json_values)
pages = st.lists(st.one_of(assembled_urls, hostile_text, json_values), max_size=8)
locales = st.one_of(st.none(), st.sampled_from(["fr_FR", "en", "de"]), hostile_text)


@given(st.sampled_from(ROUTES), products, pages, locales)
def test_email_content_is_total_and_lets_through_only_allowed_urls(route, products: Any, pages: list[Any], locale: Any) -> None:
    event = TriggerEvent(products=products, dimensions={"pageURL": {"data": pages}})
    content = email_content(event, route, CATALOG, locale if isinstance(locale, str) else None)
    urls = [*content.pages, *content.links.values()]
    urls += [u for p in content.products for u in (p.url, p.image_url) if u is not None]
    for url in urls:
        assert route.link_policy.url(url) == url
        assert urlsplit(url).hostname == "shop.example.com", url
    assert len(content.products) <= MAX_PRODUCTS and len(content.pages) <= MAX_PAGES
    assert 0 <= content.unknown_skus <= content.requested_skus
    assert content.no_products == (content.requested_skus > 0 and not content.products)
    for product in content.products:
        if route.products is ProductSource.EVENT:
            assert len(product.name) <= MAX_NAME_CHARS
            assert all(unicodedata.category(c)[0] not in "CZ" or c == " " for c in product.name), product.name
            assert product.price is None or (product.price.is_finite() and product.price >= 0)
        else:
            assert product.name == "Trail Runner 2"
        assert product.quantity is None or 1 <= product.quantity <= 99


_LINK = re.compile(r"""(?:href|src)="([^"]*)\"""")
RENDERER = Renderer()


@given(st.sampled_from(ROUTES), products, pages, st.sampled_from([None, "fr_FR"]))
def test_the_rendered_email_links_only_to_the_shop(route, products: Any, pages: list[Any], locale: str | None) -> None:
    event = TriggerEvent(trigger_id=route.trigger_id, products=products, dimensions={"pageURL": {"data": pages}})
    content = email_content(event, route, CATALOG, locale)
    profile = {"first_name": "Ada", "timezone": None, "locale": locale}
    context = build_context(profile=profile, event=event, route=route, content=content,
                            extra={"unsubscribe_url": "http://localhost:8080/u?t=1"})
    email = RENDERER.render(route, context, locale=locale)
    for link in _LINK.findall(email.html):
        assert urlsplit(link.replace("&amp;", "&")).netloc in ("shop.example.com", "localhost:8080"), link
    assert "evil.example" not in email.html and "evil.example" not in email.text
