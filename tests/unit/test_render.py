"""Tests for include.triggerflow.render and the shipped templates: content, escaping, strictness, caching."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import jinja2
import pytest

from include.triggerflow import DEFAULT_ROUTING_FILE
from include.triggerflow.config import IdentityRule, TriggerRoute, load_routing
from include.triggerflow.content import ProductSource
from include.triggerflow.events import TriggerEvent, parse_envelope
from include.triggerflow.render import (
    FILTERS,
    RenderedEmail,
    Renderer,
    TemplateRenderError,
    build_context,
    datetime_format,
    http_url,
    local_datetime,
    locale_chain,
    money,
    normalize_locale,
)

CART_ID = "5c2c6a3e-2b8f-4d6e-9a51-7f0d3c9b1a01"
BROWSE_ID = "9e4b1f27-6c3d-4a8e-b2f5-0d7c8a6e3b02"
# 2018-01-19 01:09:17.242 UTC (Adobe's FAQ sample trigger time)
TRIGGER_MS = 1516324157242


def envelope(
    *,
    trigger_id: str = CART_ID,
    pages: list[Any] | None = None,
    products: dict[str, Any] | None = None,
    trigger_ts: Any = TRIGGER_MS,
) -> dict[str, Any]:
    """A pipeline envelope as documented in events.py."""
    summary: dict[str, Any] = {
        "dimensions": {
            " eVar01": {"type": "string", "data": ["SHOP-42", "SHOP-42"]},
            "pageURL": {"type": "string", "data": pages if pages is not None else []},
        },
    }
    if products is not None:
        summary["products"] = products
    return {
        "envelopeType": "DATA",
        "partition": 13,
        "offset": 438465548,
        "createTime": 1516324157242,
        "topic": "triggers",
        "com.adobe.mcloud.pipeline.pipelineMessage": {
            "header": {
                "messageType": "TRIGGER",
                "source": "triggers",
                "sentTime": 1516324157242,
                "imsOrg": "ORG@AdobeOrg",
                "messageId": "1a2b3c4d-0000-4000-8000-000000000001",
                "properties": [{"name": "truncated", "value": "false"}],
            },
            "com.adobe.mcloud.protocol.trigger": {
                "triggerId": trigger_id,
                "triggerTimestamp": trigger_ts,
                "mcId": "12345678901234567890123456789012345678",
                "enrichments": {"analyticsHitSummary": summary},
                "triggerPath": [],
            },
        },
    }


CART_PAGES = [
    "https://shop.example.com/product/shoe",
    "https://shop.example.com/cart?step=1",
    "https://shop.example.com/my/cart",
    "https://shop.example.com/product/mug",
]
CART_PRODUCTS = {
    "SKU-1": {
        "name": "Trail Shoe",
        "price": 89.5,
        "quantity": 1,
        "url": "https://shop.example.com/product/shoe",
    },
    "SKU-2": {"name": "Coffee Mug", "price": "1234.5", "quantity": 2},
}


@pytest.fixture(scope="module")
def routing():
    return load_routing(DEFAULT_ROUTING_FILE)


# The shipped routes in event-only mode (products: event), so the templates show the event's own
# product details (names capped, URLs through link_hosts): what these tests feed them. Catalogue
# mode, the shipped default, is tested in test_render_catalog.py.
@pytest.fixture
def cart_route(routing) -> TriggerRoute:
    route = routing.route_for(CART_ID)
    assert route is not None
    return dataclasses.replace(route, products=ProductSource.EVENT)


@pytest.fixture
def browse_route(routing) -> TriggerRoute:
    route = routing.route_for(BROWSE_ID)
    assert route is not None
    return dataclasses.replace(route, products=ProductSource.EVENT)


@pytest.fixture
def renderer() -> Renderer:
    return Renderer()


def event_of(**kwargs: Any) -> TriggerEvent:
    event = parse_envelope(envelope(**kwargs))
    assert event.parse_error is None
    return event


UNSUBSCRIBE_URL = "https://shop.example.com/u?t=a&b=1"


def render(
    renderer: Renderer,
    route: TriggerRoute,
    profile: dict[str, Any],
    event: TriggerEvent,
    *,
    locale: str | None = None,
    **extra: Any,
) -> RenderedEmail:
    """Render with the columns every store row has (``timezone``, ``locale``: None unless given) and
    an unsubscribe URL unless given: what the send stage passes. Missing-variable tests call the
    renderer directly."""
    extra.setdefault("unsubscribe_url", UNSUBSCRIBE_URL)
    full = {"timezone": None, "locale": None, **profile}
    return renderer.render(route, build_context(profile=full, event=event, route=route, extra=extra), locale=locale)


# -- context ---------------------------------------------------------------------------------------
def test_build_context_shape(cart_route: TriggerRoute) -> None:
    event = event_of(pages=[*CART_PAGES, CART_PAGES[0]], products=CART_PRODUCTS)
    profile = {"first_name": "Ada", "email": "ada@example.com"}
    context = build_context(
        profile=profile, event=event, route=cart_route, extra={"unsubscribe_url": "https://u/1"}
    )

    assert context["profile"] == profile and context["profile"] is not profile
    assert context["unsubscribe_url"] == "https://u/1"
    ev = context["event"]
    assert ev["trigger_id"] == CART_ID
    assert ev["name"] == "cart_abandonment"
    assert ev["triggered_at"] == datetime(2018, 1, 19, 1, 9, 17, 242000, tzinfo=UTC)
    assert ev["pages"] == CART_PAGES  # distinct, in hit order, each on the route's link_hosts
    assert [p["name"] for p in ev["products"]] == ["Trail Shoe", "Coffee Mug"]
    assert ev["products"][1] == {"sku": "SKU-2", "name": "Coffee Mug", "price": Decimal("1234.5"), "quantity": 2,
                                 "currency": None, "symbol": None, "url": None, "image_url": None, "in_stock": None}
    # pageURL values are the checked page URLs (all allowed here); other dimension values are text
    assert ev["dimensions"] == {"eVar01": ["SHOP-42", "SHOP-42"], "pageURL": [*CART_PAGES, CART_PAGES[0]]}
    # the buttons' URLs come from the routing file
    assert context["links"] == {"cart": "https://shop.example.com/cart", "shop": "https://shop.example.com/"}


# -- the cart email ----------------------------------------------------------------------------------
def test_cart_email_content(renderer: Renderer, cart_route: TriggerRoute) -> None:
    event = event_of(pages=CART_PAGES, products=CART_PRODUCTS)
    email = render(renderer, cart_route, {"first_name": "Ada"}, event)

    assert email.subject == "Ada, you left something in your cart"
    assert email.locale is None
    for part in (email.text, email.html):
        assert "Hi Ada, your cart is waiting" in part
        assert "Trail Shoe" in part
        assert "Coffee Mug" in part
        assert "$89.50" in part
        assert "$1,234.50" in part
        assert "on 19 Jan 2018 at 01:09 UTC." in part  # no profile time zone: UTC, and it says so
        assert "triggerflow shop" in part
    # products listed, so pages are not
    assert "https://shop.example.com/product/mug" not in email.text
    # CTA: the route's configured cart link, whatever pages the event names
    assert 'href="https://shop.example.com/cart"' in email.html
    assert "Return to your cart: https://shop.example.com/cart\n" in email.text
    assert "https://shop.example.com/my/cart" not in email.html
    assert 'href="https://shop.example.com/product/shoe"' in email.html
    assert "- Trail Shoe x 1: $89.50\n  https://shop.example.com/product/shoe\n" in email.text
    assert "- Coffee Mug x 2: $1,234.50\n" in email.text


def test_cart_email_lists_pages_when_no_products(renderer: Renderer, cart_route: TriggerRoute) -> None:
    pages = ["https://shop.example.com/product/shoe", "https://shop.example.com/product/mug"]
    email = render(renderer, cart_route, {"first_name": "Ada"}, event_of(pages=pages))

    assert (
        "Pages you were looking at:\n"
        "- https://shop.example.com/product/shoe\n"
        "- https://shop.example.com/product/mug\n"
    ) in email.text
    assert '<a href="https://shop.example.com/product/mug"' in email.html
    # the route's configured cart link
    assert 'href="https://shop.example.com/cart"' in email.html
    assert "Return to your cart: https://shop.example.com/cart\n" in email.text


def test_html_is_a_complete_email_safe_document(renderer: Renderer, cart_route: TriggerRoute) -> None:
    email = render(renderer, cart_route, {"first_name": "Ada"}, event_of(products=CART_PRODUCTS))
    html = email.html
    assert html.startswith("<!DOCTYPE html>")
    assert html.rstrip().endswith("</html>")
    assert "max-width:600px" in html
    assert "<style" not in html  # inline CSS only
    assert 'role="presentation"' in html
    assert "Your cart is saved." in html  # preheader
    assert email.text.startswith("triggerflow shop\n")


@pytest.mark.parametrize("route_fixture", ["cart_route", "browse_route"])
def test_unsubscribe_link_in_both_footers(renderer: Renderer, route_fixture: str, request: pytest.FixtureRequest) -> None:
    route = request.getfixturevalue(route_fixture)
    email = render(renderer, route, {"first_name": "Ada"}, event_of(products=CART_PRODUCTS))
    assert '<a href="https://shop.example.com/u?t=a&amp;b=1" style="color:#4b5563;text-decoration:underline;">Unsubscribe</a>' in email.html
    assert "Unsubscribe with one click: https://shop.example.com/u?t=a&b=1\n" in email.text
    assert email.html.index("Unsubscribe") > email.html.index("Return to your cart" if route.name == "cart_abandonment" else "Continue browsing")


@pytest.mark.parametrize("route_fixture", ["cart_route", "browse_route"])
def test_unsubscribe_url_is_required(renderer: Renderer, route_fixture: str, request: pytest.FixtureRequest) -> None:
    """No email without a working unsubscribe link: missing is an undefined variable, and a value
    that is not an absolute http(s) URL fails the render instead of producing href=""."""
    route = request.getfixturevalue(route_fixture)
    event = event_of(products=CART_PRODUCTS)
    context = build_context(profile={"first_name": "Ada", "timezone": None}, event=event, route=route)
    with pytest.raises(TemplateRenderError) as info:
        renderer.render(route, context)
    assert "base.txt, line " in str(info.value)
    assert "undefined variable: 'unsubscribe_url' is undefined" in str(info.value)
    for bad in ("", "javascript:alert(1)", "/relative/unsubscribe"):
        with pytest.raises(TemplateRenderError, match="is not an absolute http\\(s\\) URL"):
            render(renderer, route, {"first_name": "Ada"}, event, unsubscribe_url=bad)


def test_null_first_name_falls_back_to_a_greeting(renderer: Renderer, cart_route: TriggerRoute) -> None:
    email = render(renderer, cart_route, {"first_name": None}, event_of(products=CART_PRODUCTS))
    assert email.subject == "Hello, you left something in your cart"
    assert "Hi there," in email.text and "None" not in email.text


def test_event_without_timestamp_omits_time(renderer: Renderer, cart_route: TriggerRoute) -> None:
    event = event_of(products=CART_PRODUCTS, trigger_ts="soon")
    email = render(renderer, cart_route, {"first_name": "Ada"}, event)
    assert "You left something in your cart. We kept it for you." in email.text
    assert "You left something in your cart. We kept it for you." in email.html


# -- untrusted data ----------------------------------------------------------------------------------
def test_html_escapes_event_and_profile_data_text_keeps_it(
    renderer: Renderer, cart_route: TriggerRoute
) -> None:
    products = {"X": {"name": "<script>alert('p')</script>", "price": 1, "quantity": "<b>2</b>"}}
    profile = {"first_name": "<script>alert('n')</script>"}
    email = render(renderer, cart_route, profile, event_of(products=products))

    assert "<script>" not in email.html
    assert "&lt;script&gt;alert(&#39;p&#39;)&lt;/script&gt;" in email.html
    assert "Hi &lt;script&gt;alert(&#39;n&#39;)&lt;/script&gt;," in email.html
    assert "&lt;b&gt;2&lt;/b&gt;" not in email.html and "<b>2</b>" not in email.text  # not a quantity: not shown
    assert "- <script>alert('p')</script>: $1.00" in email.text
    assert "Hi <script>alert('n')</script>," in email.text
    # the subject is a header, not HTML: no entity escaping
    assert email.subject == "<script>alert('n')</script>, you left something in your cart"


def test_unsafe_urls_are_not_linked(renderer: Renderer, cart_route: TriggerRoute) -> None:
    pages = ['javascript:alert(1)//cart', 'https://shop.example.com/x" onmouseover="alert(1)']
    products = {"X": {"name": "Shoe", "url": "javascript:alert(document.cookie)"}}
    email = render(renderer, cart_route, {"first_name": "Ada"}, event_of(pages=pages, products=products))
    assert "javascript:" not in email.html
    assert 'href="https://shop.example.com/cart"' in email.html  # the configured cart link
    assert "onmouseover" not in email.html


def test_quotes_in_links_cannot_break_the_attribute(renderer: Renderer, cart_route: TriggerRoute) -> None:
    pages = ['https://shop.example.com/a"b<c']
    email = render(renderer, cart_route, {"first_name": "Ada"}, event_of(pages=pages))
    # the link policy emits the URL rebuilt, quotes and brackets percent-encoded
    assert 'href="https://shop.example.com/a%22b%3Cc"' in email.html
    assert '"b<c' not in email.html


# -- errors ------------------------------------------------------------------------------------------
def test_missing_profile_column_raises_naming_it(renderer: Renderer, cart_route: TriggerRoute) -> None:
    with pytest.raises(TemplateRenderError) as info:
        render(renderer, cart_route, {"last_name": "Lovelace"}, event_of(products=CART_PRODUCTS))
    message = str(info.value)
    assert message.startswith("route 'cart_abandonment': subject, line 1: undefined variable:")
    assert "'first_name'" in message
    assert info.value.route == "cart_abandonment"


def test_undefined_variable_in_template_file_names_file_and_line(
    renderer: Renderer, cart_route: TriggerRoute
) -> None:
    route = dataclasses.replace(cart_route, subject="Your cart")
    context = build_context(
        profile={"email": "a@example.com", "timezone": None},
        event=event_of(products=CART_PRODUCTS),
        route=route,
        extra={"unsubscribe_url": UNSUBSCRIBE_URL},
    )
    with pytest.raises(TemplateRenderError) as info:
        renderer.render(route, context)
    message = str(info.value)
    assert "route 'cart_abandonment': cart_abandonment/email.txt, line " in message
    assert "undefined variable: 'dict object' has no attribute 'first_name'" in message


def test_undefined_top_level_variable_in_subject(renderer: Renderer, cart_route: TriggerRoute) -> None:
    route = dataclasses.replace(cart_route, subject="{{ coupon_code }} for you")
    with pytest.raises(TemplateRenderError, match="'coupon_code' is undefined"):
        render(renderer, route, {"first_name": "Ada"}, event_of())


@pytest.mark.parametrize(
    "bad", ["Ada\nBcc: victim@example.com", "Ada\r", "Ada\r\nX-Evil: 1", "Ada\0", "Ada\u2028Bcc: v@example.com", "Ada\x85X: 1", "A\x0bB"]
)
def test_subject_with_line_break_raises(renderer: Renderer, cart_route: TriggerRoute, bad: str) -> None:
    with pytest.raises(TemplateRenderError) as info:
        render(renderer, cart_route, {"first_name": bad}, event_of(products=CART_PRODUCTS))
    assert str(info.value).startswith(
        "route 'cart_abandonment': subject would contain a line break (CR, LF, NUL or another line separator) after rendering"
    )


def test_subject_is_stripped(renderer: Renderer, cart_route: TriggerRoute) -> None:
    route = dataclasses.replace(cart_route, subject="  {{ profile.first_name }}  ")
    # a trailing newline from data is outside the stripped subject, so it is harmless
    email = render(renderer, route, {"first_name": "Ada\n"}, event_of())
    assert email.subject == "Ada"


def test_empty_subject_raises(renderer: Renderer, cart_route: TriggerRoute) -> None:
    route = dataclasses.replace(cart_route, subject="{{ profile.first_name }}")
    with pytest.raises(TemplateRenderError, match="subject rendered empty"):
        render(renderer, route, {"first_name": "   "}, event_of())


def test_a_price_that_is_no_number_is_not_shown(renderer: Renderer, cart_route: TriggerRoute) -> None:
    products = {"X": {"name": "Shoe", "price": "free!"}, "Y": {"name": "Hat", "price": float("nan")}}
    email = render(renderer, cart_route, {"first_name": "Ada"}, event_of(products=products))
    assert "- Shoe\n" in email.text and "- Hat\n" in email.text
    assert "free!" not in email.html + email.text and "NaN" not in email.html + email.text


def test_the_money_filter_still_refuses_garbage(renderer: Renderer, cart_route: TriggerRoute) -> None:
    """A template that formats a value that is no number fails its email rather than print it."""
    route = dataclasses.replace(cart_route, subject="{{ 'free!'|money }}")
    with pytest.raises(TemplateRenderError, match="ValueError: money: 'free!' is not a number"):
        render(renderer, route, {"first_name": "Ada"}, event_of(products=CART_PRODUCTS))


def write_templates(root: Path, html: str, txt: str = "{{ profile.first_name }}") -> Path:
    (root / "t").mkdir(parents=True, exist_ok=True)
    (root / "t" / "email.html").write_text(html)
    (root / "t" / "email.txt").write_text(txt)
    return root


ROUTE_T = TriggerRoute(
    name="t", trigger_id="*", template="t", subject="Hi", identity=IdentityRule("field", "mcId", "ecid")
)


@pytest.mark.parametrize(
    ("trigger_id", "shown"),
    [("any-\u202eid\u0085", "any- id\ufffd"), (42, "42"), (True, ""), ({"a": 1}, "{'a': 1}"), (None, "")],
)
def test_a_catch_all_route_shows_the_trigger_id_as_the_event_gave_it(trigger_id: Any, shown: str) -> None:
    # the typed field holds text or None; the context shows the value as sent, cleaned as display text
    event = event_of(trigger_id=trigger_id)
    context = build_context(profile={}, event=event, route=ROUTE_T)
    assert context["event"]["trigger_id"] == shown
    assert event.trigger_id is None or type(event.trigger_id) is str


def test_error_in_parent_template_names_the_parent(tmp_path: Path) -> None:
    (tmp_path / "base.html").write_text("<p>top</p>\n<p>{{ brand }}</p>\n{% block content %}{% endblock %}")
    write_templates(tmp_path, '{% extends "base.html" %}{% block content %}x{% endblock %}')
    with pytest.raises(TemplateRenderError) as info:
        Renderer(tmp_path).render(ROUTE_T, {"profile": {"first_name": "A"}})
    assert str(info.value) == "route 't': base.html, line 2: undefined variable: 'brand' is undefined"


def test_template_syntax_error(tmp_path: Path) -> None:
    write_templates(tmp_path, "<p>\n{% if x %}\n</p>")
    with pytest.raises(TemplateRenderError) as info:
        Renderer(tmp_path).render(ROUTE_T, {"profile": {"first_name": "A"}})
    message = str(info.value)
    assert message.startswith("route 't': template t/email.html, line 3: Unexpected end of template.")


def test_missing_template_file(tmp_path: Path) -> None:
    write_templates(tmp_path, "<p>hi</p>")
    (tmp_path / "t" / "email.txt").unlink()
    with pytest.raises(TemplateRenderError) as info:
        Renderer(tmp_path).render(ROUTE_T, {"profile": {}})
    assert str(info.value) == f"route 't': template 't/email.txt' not found in {tmp_path}"


def test_autoescape_follows_extension(tmp_path: Path) -> None:
    write_templates(tmp_path, "<p>{{ profile.first_name }}</p>")
    email = Renderer(tmp_path).render(ROUTE_T, {"profile": {"first_name": "A&B <i>"}})
    assert email == RenderedEmail(subject="Hi", text="A&B <i>", html="<p>A&amp;B &lt;i&gt;</p>")


# -- caching -----------------------------------------------------------------------------------------
def test_templates_are_compiled_once_per_route(
    renderer: Renderer, cart_route: TriggerRoute, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = event_of(products=CART_PRODUCTS)
    first = render(renderer, cart_route, {"first_name": "Ada"}, event)
    compiled = renderer.compiled(cart_route)

    def no_more_loading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("template read or compiled again")

    # Reading a source file and compiling are the costly steps; neither may happen again
    # (base.html, reached through {% extends %}, comes from Jinja's own cache without a stat).
    monkeypatch.setattr(renderer.env.loader, "get_source", no_more_loading)
    monkeypatch.setattr(renderer.env, "compile", no_more_loading)
    second = render(renderer, cart_route, {"first_name": "Bob"}, event)

    assert renderer.compiled(cart_route) is compiled
    assert compiled.html.name == "cart_abandonment/email.html"
    assert compiled.text.name == "cart_abandonment/email.txt"
    assert first.subject == "Ada, you left something in your cart"
    assert second.subject == "Bob, you left something in your cart"
    # another route gets its own compiled templates
    other = dataclasses.replace(cart_route, subject="Other")
    monkeypatch.undo()
    assert renderer.compiled(other) is not compiled
    assert renderer.compiled(other) is renderer.compiled(other)


# -- browse email ------------------------------------------------------------------------------------
def test_browse_email(renderer: Renderer, browse_route: TriggerRoute) -> None:
    pages = ["https://shop.example.com/product/shoe", "https://shop.example.com/product/mug"]
    email = render(renderer, browse_route, {"first_name": "Ada"}, event_of(trigger_id=BROWSE_ID, pages=pages))
    assert email.subject == "Ada, still looking? Your picks are waiting"
    assert "Hi Ada," in email.text and "Hi Ada," in email.html
    assert "- https://shop.example.com/product/shoe\n- https://shop.example.com/product/mug\n" in email.text
    assert "Continue browsing: https://shop.example.com/\n" in email.text  # the route's shop link
    assert "on 19 Jan 2018 at 01:09 UTC." in email.html

    with_products = render(
        renderer, browse_route, {"first_name": "Ada"}, event_of(trigger_id=BROWSE_ID, products=CART_PRODUCTS)
    )
    assert "- Trail Shoe: $89.50\n" in with_products.text
    assert "Continue browsing: https://shop.example.com/\n" in with_products.text


# -- filters -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "args", "expected"),
    [
        (19.5, (), "$19.50"),
        (2.675, (), "$2.68"),  # rounds as written, not as binary float 2.67499...
        ("1234567.891", (), "$1,234,567.89"),
        (Decimal("-3.5"), (), "-$3.50"),
        (-0.004, (), "$0.00"),  # rounds to zero: no minus sign
        (0, ("€",), "€0.00"),
        (7, ("£",), "£7.00"),
    ],
)
def test_money(value: Any, args: tuple[str, ...], expected: str) -> None:
    assert money(value, *args) == expected


def test_money_remembers_catalogue_decimals_and_formats_equal_ones_alike() -> None:
    from include.triggerflow.render.filters import _money_cached

    _money_cached.cache_clear()
    assert [money(Decimal("39.9")), money(Decimal("39.90")), money(Decimal("39.9"), "€", "fr")] == [
        "$39.90", "$39.90", "39,90\u00a0€"]
    assert _money_cached.cache_info().hits == 1  # 39.9 and 39.90 are one amount


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity")])
def test_money_refuses_decimals_that_are_not_finite(value: Decimal) -> None:
    with pytest.raises(ValueError, match="money: "):
        money(value)


@pytest.mark.parametrize("value", ["abc", None, True, "nan", "inf", [1]])
def test_money_rejects_non_numbers(value: Any) -> None:
    with pytest.raises(ValueError, match="money: "):
        money(value)


def test_datetime_format() -> None:
    moment = datetime(2024, 3, 5, 14, 7, tzinfo=UTC)
    assert datetime_format(moment) == "05 Mar 2024 14:07 UTC"
    assert datetime_format(moment, "%Y-%m-%d") == "2024-03-05"
    # converted to UTC first, so the "UTC" label is true
    paris = datetime(2024, 3, 5, 15, 7, tzinfo=timezone(timedelta(hours=1)))
    assert datetime_format(paris) == "05 Mar 2024 14:07 UTC"
    with pytest.raises(ValueError, match="naive"):
        datetime_format(datetime(2024, 3, 5, 14, 7))
    with pytest.raises(TypeError, match="expected a datetime, got str"):
        datetime_format("2024-03-05")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://shop.example.com/cart", "https://shop.example.com/cart"),
        ("  http://shop.example.com/a?b=c  ", "http://shop.example.com/a?b=c"),
        ("javascript:alert(1)", ""),
        ("JavaScript:alert(1)", ""),
        ("data:text/html,<b>", ""),
        ("//shop.example.com/x", ""),
        ("/relative", ""),
        ("https://", ""),
        ("https://shop.example.com/a b", ""),
        ("https://shop.example.com/\tx", ""),
        (None, ""),
        (42, ""),
    ],
)
def test_http_url(value: Any, expected: str) -> None:
    assert http_url(value) == expected


def test_filters_registered() -> None:
    assert set(FILTERS) == {"money", "datetime_format", "local_datetime", "http_url", "last_page_ending"}
    env = Renderer().env
    assert env.filters["money"] is money
    assert env.filters["datetime_format"] is datetime_format
    assert env.filters["local_datetime"] is local_datetime


# -- locales -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "chain"),
    [
        ("fr", ["fr"]),
        ("fr_CA", ["fr-CA", "fr"]),
        ("FR-ca", ["fr-CA", "fr"]),
        (" fr-CA ", ["fr-CA", "fr"]),
        ("fr_FR", ["fr-FR", "fr"]),
        ("zh_hant_tw", ["zh-Hant-TW", "zh-Hant", "zh"]),
        ("es-419", ["es-419", "es"]),
        ("gsw", ["gsw"]),
    ],
)
def test_locale_chain_normalises(raw: str, chain: list[str]) -> None:
    assert locale_chain(raw) == chain
    assert normalize_locale(raw) == chain[0]


@pytest.mark.parametrize(
    "garbage",
    [
        None, "", "   ", 42, ["fr"], "f", "français", "fr_FR.UTF-8", "de_DE@euro", "POSIX", "fr-", "-fr",
        "fr--CA", "fr-C", "../fr", "fr/../../etc/passwd", "fr/x", "fr\\x", "fr.html", "fr-CA\r\nX: y",
        "fr\0", "fr CA", "fr-abcdefghi", "en-" + "-".join(["ab"] * 20),
    ],
)
def test_locale_chain_refuses_anything_but_a_plain_tag(garbage: Any) -> None:
    assert locale_chain(garbage) == []
    assert normalize_locale(garbage) is None


def test_locale_chain_entries_are_always_file_name_safe() -> None:
    import re

    safe = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*")
    nasty = ["fr-CA", "fr-..", "fr-%2e%2e", "en-US/../../x", "ｆｒ", "fr-ÇA", "fr-CA\u2028", "fr-CA;rm"]
    for value in nasty:
        for tag in locale_chain(value):
            assert safe.fullmatch(tag), (value, tag)
    assert locale_chain("fr-ÇA") == [] and locale_chain("ｆｒ") == []


@pytest.mark.parametrize("locale", ["fr", "fr_FR", "fr-CA", "FR", " fr-be "])
def test_french_variant_for_french_profiles(renderer: Renderer, cart_route: TriggerRoute, locale: str) -> None:
    email = render(
        renderer, cart_route, {"first_name": "Ada", "timezone": "Europe/Paris"}, event_of(products=CART_PRODUCTS), locale=locale
    )
    assert email.locale == "fr"
    for part in (email.text, email.html):
        assert "Bonjour Ada, votre panier vous attend" in part
        assert "le 19/01/2018 à 02:09 CET." in part
        assert "89,50\u00a0$" in part and "1\u202f234,50\u00a0$" in part
        assert "Hi Ada" not in part
    assert '<html lang="fr"' in email.html
    assert "Retourner à mon panier : https://shop.example.com/cart" in email.text
    assert "Se désabonner en un clic : https://shop.example.com/u?t=a&b=1" in email.text
    assert '<a href="https://shop.example.com/u?t=a&amp;b=1" style="color:#4b5563;text-decoration:underline;">Se désabonner</a>' in email.html
    # the shipped routing gives no French subject (yet): the default one
    if not cart_route.subjects:
        assert email.subject == "Ada, you left something in your cart"


@pytest.mark.parametrize("locale", [None, "", "de", "de_DE", "en_US", "fr_FR.UTF-8", "../fr"])
def test_default_templates_otherwise(renderer: Renderer, cart_route: TriggerRoute, locale: str | None) -> None:
    email = render(renderer, cart_route, {"first_name": "Ada"}, event_of(products=CART_PRODUCTS), locale=locale)
    assert email.locale is None
    assert "Hi Ada, your cart is waiting" in email.text and '<html lang="en"' in email.html


def test_browse_has_no_french_variant_so_french_profiles_get_the_default(
    renderer: Renderer, browse_route: TriggerRoute
) -> None:
    email = render(renderer, browse_route, {"first_name": "Ada"}, event_of(trigger_id=BROWSE_ID), locale="fr_FR")
    assert email.locale is None and "Hi Ada, still looking?" in email.text


def with_subjects(route: TriggerRoute, *subjects: tuple[str, str]) -> TriggerRoute:
    """The route with per-locale subjects (``subjects`` of the routing config)."""
    return dataclasses.replace(route, subjects=tuple(subjects))


@pytest.mark.parametrize(
    ("locale", "subject", "variant"),
    [
        ("fr_CA", "Ada, votre panier vous attend", "fr"),
        ("fr", "Ada, votre panier vous attend", "fr"),
        # a subject for the language but no template variant: translated subject, default body
        ("de_AT", "Ada, Ihr Warenkorb wartet", None),
        ("en_GB", "Ada, you left something in your cart", None),
        (None, "Ada, you left something in your cart", None),
    ],
)
def test_subject_follows_the_locale(
    renderer: Renderer, cart_route: TriggerRoute, locale: str | None, subject: str, variant: str | None
) -> None:
    route = with_subjects(
        cart_route,
        ("FR", "{{ profile.first_name }}, votre panier vous attend"),  # tags compare case-insensitively
        ("de", "{{ profile.first_name }}, Ihr Warenkorb wartet"),
    )
    email = render(renderer, route, {"first_name": "Ada"}, event_of(products=CART_PRODUCTS), locale=locale)
    assert (email.subject, email.locale) == (subject, variant)


def test_subject_of_the_chosen_variant_wins(renderer: Renderer, cart_route: TriggerRoute) -> None:
    # chain fr-CA, fr; only the fr templates exist, so the fr subject goes with them, not the fr-CA one
    route = with_subjects(cart_route, ("fr-CA", "Québec"), ("fr", "France"))
    email = render(renderer, route, {"first_name": "Ada"}, event_of(), locale="fr_CA")
    assert (email.subject, email.locale) == ("France", "fr")
    assert renderer.compiled(route, "fr_CA").subject_locale == "fr"


def test_locale_subject_is_checked_like_the_default(renderer: Renderer, cart_route: TriggerRoute) -> None:
    route = with_subjects(cart_route, ("fr", "{{ profile.first_name }} {{ coupon }}"))
    with pytest.raises(TemplateRenderError) as info:
        render(renderer, route, {"first_name": "Ada"}, event_of(), locale="fr")
    assert str(info.value) == "route 'cart_abandonment': subject (fr), line 1: undefined variable: 'coupon' is undefined"
    with pytest.raises(TemplateRenderError, match=r"subject \(fr\) would contain a line break"):
        render(renderer, with_subjects(cart_route, ("fr", "{{ profile.first_name }}")), {"first_name": "A\nBcc: x@y.z"}, event_of(), locale="fr")


def test_missing_variable_in_a_variant_names_the_variant_file(renderer: Renderer, cart_route: TriggerRoute) -> None:
    context = build_context(
        profile={"first_name": "Ada"},  # no timezone column
        event=event_of(products=CART_PRODUCTS),
        route=cart_route,
        extra={"unsubscribe_url": UNSUBSCRIBE_URL},
    )
    with pytest.raises(TemplateRenderError) as info:
        renderer.render(cart_route, context, locale="fr")
    message = str(info.value)
    assert message.startswith("route 'cart_abandonment': cart_abandonment/email.fr.txt, line ")
    assert message.endswith("undefined variable: 'dict object' has no attribute 'timezone'")
    assert info.value.template == "cart_abandonment/email.fr.txt"


def test_french_variant_escapes_like_the_default(renderer: Renderer, cart_route: TriggerRoute) -> None:
    products = {"X": {"name": "<script>alert('p')</script>", "price": 1, "quantity": 1}}
    email = render(renderer, cart_route, {"first_name": "<script>x</script>"}, event_of(products=products), locale="fr")
    assert email.locale == "fr"
    assert "<script>" not in email.html
    assert "&lt;script&gt;alert(&#39;p&#39;)&lt;/script&gt;" in email.html
    assert "Bonjour &lt;script&gt;x&lt;/script&gt;, votre panier" in email.html
    assert "- <script>alert('p')</script> x 1: 1,00\u00a0$" in email.text


def test_variant_needs_both_files_and_the_most_specific_wins(tmp_path: Path) -> None:
    write_templates(tmp_path, "<p>default</p>", "default")
    (tmp_path / "t" / "email.fr.html").write_text("<p>fr</p>")  # no email.fr.txt: incomplete
    (tmp_path / "t" / "email.fr-CA.html").write_text("<p>fr-CA</p>")
    (tmp_path / "t" / "email.fr-CA.txt").write_text("fr-CA")
    (tmp_path / "t" / "email.de.txt").write_text("de")
    (tmp_path / "t" / "email.de.html").write_text("<p>de</p>")
    (tmp_path / "t" / "email.notes.html").write_text("not a variant")  # 5 letters: not a tag
    renderer = Renderer(tmp_path)
    assert set(renderer.variants("t")) == {"fr-CA", "de"}

    def pick(locale: str | None) -> tuple[str | None, str, str]:
        email = renderer.render(ROUTE_T, {"profile": {}}, locale=locale)
        return email.locale, email.text, email.html

    assert pick("fr_CA") == ("fr-CA", "fr-CA", "<p>fr-CA</p>")
    assert pick("fr") == (None, "default", "<p>default</p>")  # never html of fr with the default text
    assert pick("fr_FR") == (None, "default", "<p>default</p>")
    assert pick("DE-de") == ("de", "de", "<p>de</p>")
    assert pick(None) == (None, "default", "<p>default</p>")


def test_variant_file_names_are_normalised_and_duplicates_refused(tmp_path: Path) -> None:
    write_templates(tmp_path, "<p>default</p>", "default")
    (tmp_path / "t" / "email.pt_br.html").write_text("<p>pt-BR</p>")
    (tmp_path / "t" / "email.pt_br.txt").write_text("pt-BR")
    assert Renderer(tmp_path).render(ROUTE_T, {"profile": {}}, locale="pt-BR").text == "pt-BR"

    (tmp_path / "t" / "email.pt-BR.txt").write_text("again")
    with pytest.raises(TemplateRenderError, match=re.escape("email.pt-BR.txt and email.pt_br.txt are both the 'pt-BR' variant")):
        Renderer(tmp_path).render(ROUTE_T, {"profile": {}}, locale="pt-BR")


def test_a_profile_locale_cannot_reach_outside_the_route_folder(tmp_path: Path) -> None:
    write_templates(tmp_path, "<p>default</p>", "default")
    (tmp_path / "email.html").write_text("<p>outside</p>")
    (tmp_path / "t" / "email..html").write_text("<p>dotdot</p>")
    (tmp_path / "t" / "email.x.html").write_text("<p>x</p>")
    renderer = Renderer(tmp_path)
    for locale in ["../", "..", ".", "/", "../t/email", "x", "", "fr/../.."]:
        assert renderer.render(ROUTE_T, {"profile": {}}, locale=locale).html == "<p>default</p>"


def test_compiled_once_per_route_and_variant(
    renderer: Renderer, cart_route: TriggerRoute, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = event_of(products=CART_PRODUCTS)
    render(renderer, cart_route, {"first_name": "Ada"}, event, locale="fr_FR")
    render(renderer, cart_route, {"first_name": "Ada"}, event)
    french = renderer.compiled(cart_route, "fr_FR")
    assert renderer.compiled(cart_route, "fr-CA") is french  # same variant, same compiled templates
    assert renderer.compiled(cart_route, "de") is renderer.compiled(cart_route, None) is not french
    assert french.html.name == "cart_abandonment/email.fr.html" and french.locale == "fr"

    def no_more_loading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("template read or compiled again")

    monkeypatch.setattr(renderer.env.loader, "get_source", no_more_loading)
    monkeypatch.setattr(renderer.env, "compile", no_more_loading)
    monkeypatch.setattr(renderer, "_list_variants", no_more_loading)
    for locale in ("fr", "fr-BE", "en", None, "nl"):
        render(renderer, cart_route, {"first_name": "Bob"}, event, locale=locale)


# -- time of the event in the customer's zone --------------------------------------------------------
@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        ("Europe/Paris", "on 19 Jan 2018 at 02:09 CET."),
        ("America/New_York", "on 18 Jan 2018 at 20:09 EST."),
        ("Asia/Kolkata", "on 19 Jan 2018 at 06:39 IST."),
        ("  Europe/Paris  ", "on 19 Jan 2018 at 02:09 CET."),
        ("Mars/Olympus_Mons", "on 19 Jan 2018 at 01:09 UTC."),
        ("../../../etc/passwd", "on 19 Jan 2018 at 01:09 UTC."),
        ("", "on 19 Jan 2018 at 01:09 UTC."),
        (None, "on 19 Jan 2018 at 01:09 UTC."),
    ],
)
def test_event_time_in_the_profile_time_zone(
    renderer: Renderer, cart_route: TriggerRoute, browse_route: TriggerRoute, tz: str | None, expected: str
) -> None:
    profile = {"first_name": "Ada", "timezone": tz}
    cart = render(renderer, cart_route, profile, event_of(products=CART_PRODUCTS))
    browse = render(renderer, browse_route, profile, event_of(trigger_id=BROWSE_ID, products=CART_PRODUCTS))
    for part in (cart.text, cart.html, browse.text, browse.html):
        assert expected in part


def test_local_datetime() -> None:
    winter = datetime(2024, 1, 5, 14, 7, tzinfo=UTC)
    summer = datetime(2024, 7, 5, 14, 7, tzinfo=UTC)
    assert local_datetime(winter, "Europe/Paris") == "05 Jan 2024 15:07 CET"
    assert local_datetime(summer, "Europe/Paris") == "05 Jul 2024 16:07 CEST"
    assert local_datetime(summer, "Europe/Paris", "%H:%M") == "16:07"
    assert local_datetime(summer, "UTC") == "05 Jul 2024 14:07 UTC"
    # a bad profile zone never fails the email: UTC, and the output says so
    for bad in (None, "", "  ", "Not/AZone", "Europe", "/etc/localtime", "x" * 500, 42, "Europe/Paris\0"):
        assert local_datetime(summer, bad) == "05 Jul 2024 14:07 UTC", bad
    with pytest.raises(ValueError, match="naive"):
        local_datetime(datetime(2024, 1, 5, 14, 7), "Europe/Paris")
    with pytest.raises(TypeError, match="expected a datetime, got str"):
        local_datetime("2024-01-05", "Europe/Paris")


def test_local_datetime_missing_variable_is_an_error() -> None:
    env = Renderer().env
    template = env.from_string("{{ when|local_datetime(profile.timezone) }}")
    moment = datetime(2024, 1, 5, 14, 7, tzinfo=UTC)
    assert template.render(when=moment, profile={"timezone": "Europe/Paris"}) == "05 Jan 2024 15:07 CET"
    with pytest.raises(jinja2.UndefinedError, match="has no attribute 'timezone'"):
        template.render(when=moment, profile={})


@pytest.mark.parametrize(
    ("value", "locale", "expected"),
    [
        (1234.5, "fr", "1\u202f234,50\u00a0$"),
        # CLDR's own region: Canadian French groups with a no-break space, France with a narrow one
        (1234.5, "fr_CA", "1\u00a0234,50\u00a0$"),
        (-3.5, "de", "-3,50\u00a0$"),
        (1234567.891, "en", "$1,234,567.89"),
        # Dutch and Portuguese (CLDR: Brazil) write the symbol first, with a no-break space
        (-3.5, "nl", "$\u00a0-3,50"),
        (1234.5, "pt", "$\u00a01.234,50"),
        (1234567.891, "en_IN", "$12,34,567.89"),
        (7, "xx", "$7.00"),
        (7, "zz-ZZ", "$7.00"),
        (7, None, "$7.00"),
        (7, "../fr", "$7.00"),
        (7, "fr_FR.UTF-8", "$7.00"),
    ],
)
def test_money_by_locale(value: Any, locale: str | None, expected: str) -> None:
    assert money(value, "$", locale) == expected


@pytest.mark.parametrize(
    ("symbol", "locale", "expected"),
    [
        ("", "fr", "1\u202f234,50"),  # no symbol: no space where it would stand either
        ("", "nl", "1.234,50"),
        ("", None, "1,234.50"),
        ("USD", "fr", "1\u202f234,50\u00a0USD"),  # printed as given, never translated ("$US")
        ("'€'", None, "'€'1,234.50"),  # Babel's pattern quoting does not touch the symbol
    ],
)
def test_money_prints_the_symbol_as_given(symbol: str, locale: str | None, expected: str) -> None:
    assert money(1234.5, symbol, locale) == expected


def test_http_url_required() -> None:
    assert http_url("https://x.example/u", required=True) == "https://x.example/u"
    for bad in ("", None, "javascript:alert(1)", "/u"):
        with pytest.raises(ValueError, match="is not an absolute http"):
            http_url(bad, required=True)


def test_last_page_ending_picks_the_last_matching_http_page() -> None:
    from include.triggerflow.render import last_page_ending

    pages = ["https://s.example/cart/", "javascript:alert(1)//cart", "https://s.example/p/1", "https://s.example/CART"]
    assert last_page_ending(pages, "cart", default="https://d.example/") == "https://s.example/CART"
    assert last_page_ending(["https://s.example/p/1"], "cart", default="https://d.example/") == "https://d.example/"
    assert last_page_ending(["javascript:x/cart"], "cart") == ""


@pytest.mark.parametrize("name", ["name", "missing", "items", "get", "keys", "__class__", "__len__", "values"])
def test_the_dict_attribute_path_finds_what_jinja_finds(name: str) -> None:
    from include.triggerflow.render.renderer import _Environment

    data = {"name": "Ada", "items": "a key named like a dict method", "values": None, "__len__": 3}
    fast, jinja = _Environment(undefined=jinja2.StrictUndefined), jinja2.Environment(undefined=jinja2.StrictUndefined)
    found, expected = fast.getattr(data, name), jinja.getattr(data, name)
    if isinstance(expected, jinja2.Undefined):
        assert isinstance(found, jinja2.StrictUndefined) and found._undefined_name == name
    else:
        assert found == expected
    template = "{{ d.name }} {{ d.get('name') }} {{ d['items'] }} {{ d.items is callable }}"
    assert fast.from_string(template).render(d=data) == jinja.from_string(template).render(d=data)
