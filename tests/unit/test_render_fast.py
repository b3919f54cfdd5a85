"""The renderer's shortcuts give exactly what plain Jinja and the uncached filters give: templates
rendered through render.renderer._render_template (flattened globals, the direct call of built-in methods)
against Template.render, and the memoised money / http_url filters against their computations."""

from __future__ import annotations

import dataclasses
import random
from decimal import Decimal
from typing import Any

import jinja2
import pytest

from include.triggerflow import DEFAULT_ROUTING_FILE
from include.triggerflow import render as R
from include.triggerflow.config import load_routing
from include.triggerflow.content import ProductSource
from include.triggerflow.events import parse_envelope
from include.triggerflow.render import filters
from include.triggerflow.render import renderer as render_module
from tests.fixtures import envelope_json

UNSUB = "http://localhost:8080/triggerflow/unsubscribe/?token=v1.abc.def"
NAMES = ["Ada", "Zoë", None, "", "<b>Bold</b> & Co", "O'Brien \"Jr\""]
ZONES = [None, "Europe/Paris", "Asia/Tokyo", "Not/AZone", "", 42]
PRODUCTS = [
    ["TRL-RUN-42"], ["TRL-RUN-42", "MRN-WOOL-SCK", "ALP-SHL-JKT"],
    {"X1": {"name": "No price"}, "X2": {"name": "Bad url", "url": "javascript:alert(1)", "price": "12.5", "quantity": 0}},
    {"X3": {"name": "Image", "image_url": "https://img.example/x.png", "price": 1234.5, "quantity": 3}},
    {},
]


def contexts(seed: int, count: int = 60) -> list[tuple[Any, dict[str, Any], Any]]:
    rng = random.Random(seed)
    routing = load_routing(DEFAULT_ROUTING_FILE)
    # both product modes: event-only mode puts the event's (capped) product details in the context
    routes = [*routing.routes, *(dataclasses.replace(r, products=ProductSource.EVENT) for r in routing.routes)]
    out = []
    for _ in range(count):
        route = rng.choice(routes)
        event = parse_envelope(envelope_json(
            trigger_id=route.trigger_id, products=rng.choice(PRODUCTS),
            pages=rng.choice([None, [], ["https://shop.example.com/cart", "ftp://x", " https://shop.example.com/p/1 "]]),
        ))
        profile = {"customer_id": "C1", "first_name": rng.choice(NAMES), "timezone": rng.choice(ZONES),
                   "locale": rng.choice([None, "fr_FR", "en", "fr-CA", "de"])}
        context = R.build_context(profile=profile, event=event, route=route, extra={"unsubscribe_url": UNSUB})
        out.append((route, context, profile["locale"]))
    return out


def plain_render(template: jinja2.Template, context: dict[str, Any]) -> str:
    return jinja2.Template.render(template, context)


@pytest.mark.parametrize("seed", range(3))
def test_templates_render_as_with_plain_jinja(seed: int) -> None:
    renderer = R.Renderer()
    plain = R.Renderer()
    plain.env.context_class = jinja2.runtime.Context  # Jinja's own context: no direct calls
    for route, context, locale in contexts(seed):
        fast = renderer.compiled(route, locale)
        reference = plain.compiled(route, locale)
        for fast_template, reference_template in ((fast.subject, reference.subject), (fast.text, reference.text),
                                                  (fast.html, reference.html)):
            assert render_module._render_template(fast_template, context) == plain_render(reference_template, context)
        assert renderer.render(route, context, locale) == plain.render(route, context, locale)


def test_errors_are_the_same_as_with_plain_jinja() -> None:
    renderer = R.Renderer()
    route, context, locale = contexts(0, 1)[0]
    del context["unsubscribe_url"]
    compiled = renderer.compiled(route, locale)
    with pytest.raises(jinja2.UndefinedError) as fast:
        render_module._render_template(compiled.text, context)
    with pytest.raises(jinja2.UndefinedError) as reference:
        plain_render(compiled.text, context)
    assert str(fast.value) == str(reference.value)
    with pytest.raises(R.TemplateRenderError, match=r"base\.txt, line \d+: undefined variable"):
        renderer.render(route, context, locale)


def test_the_compiled_templates_follow_each_profile_locale() -> None:
    renderer = R.Renderer()
    route = load_routing(DEFAULT_ROUTING_FILE).routes[0]
    for locale in ["fr_FR", None, "fr", "en", "fr-CA", "xx", "fr_FR"]:
        assert renderer._compiled_for(route, locale) is renderer.compiled(route, locale)


@pytest.mark.parametrize(
    "value",
    [0, 1, -1, 1.0, 0.0, -0.0, 19.5, 2.675, 1234567.891, "19.5", " 7 ", "1e3", "-0.005", 10**20, Decimal("2.675"), True,
     None, "abc", float("nan"), float("inf"), [1]],
)
@pytest.mark.parametrize("symbol,locale", [("$", None), ("€", "fr"), ("", "de-DE"), ("£", "en_GB")])
def test_money_is_the_same_with_and_without_the_memo(value: Any, symbol: str, locale: str | None) -> None:
    def outcome(func: Any) -> Any:
        try:
            return func(value, symbol, locale)
        except Exception as exc:
            return type(exc), str(exc)

    assert outcome(R.money) == outcome(filters._money) == outcome(R.money)  # twice: the second from the memo


@pytest.mark.parametrize(
    "value",
    ["https://shop.example.com/p/1", " https://shop.example.com/p/1 ", "http://x", "javascript:alert(1)", "https://",
     "https://a b.example", "https://a\u00a0b.example", "https://a\x7f.example", "HTTPS://UP.EXAMPLE", "", None, 5,
     "https://[::1]:80/x", "https://[bad/x", "x" * 3000],
)
def test_http_url_is_the_same_with_and_without_the_memo(value: Any) -> None:
    uncached = filters._check_http_url(value) if isinstance(value, str) else ""
    assert R.http_url(value) == uncached == R.http_url(value)


@pytest.mark.parametrize("locale", ["en", "fr", "fr-CA", "de", "de-CH", "es", "it", "nl", "pt", "en-IN", "ja", "sr-Latn"])
@pytest.mark.parametrize("amount", ["0.00", "0.01", "-3.50", "1234.50", "-1234567.89", "9999999999.99"])
def test_money_is_babels_format_currency(locale: str, amount: str) -> None:
    """The filter applies the locale's CLDR currency pattern itself (no currency look-ups, the
    symbol as given): the result is exactly babel.numbers.format_currency's."""
    from babel.numbers import format_currency

    slot = "\ue000"  # not an ISO code: Babel prints it as given, like the filter prints its symbol
    expected = format_currency(Decimal(amount), slot, locale=locale.replace("-", "_"), currency_digits=False)
    assert R.money(amount, "CHF", locale) == expected.replace(slot, "CHF")
