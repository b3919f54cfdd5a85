"""The routing file's content keys (issue 11): ``products``, ``link_hosts``, ``allow_http`` and
``links``, and the rule that a route whose templates render event URLs must list its link_hosts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from include.triggerflow import TEMPLATES_DIR
from include.triggerflow.config import (
    RoutingConfigError,
    event_url_references,
    load_routing,
)
from include.triggerflow.content import ProductSource
from include.triggerflow.links import NO_LINKS, LinkPolicy


def _route(**extra: Any) -> dict[str, Any]:
    return {"name": "cart", "trigger_id": "id-cart", "template": "cart_abandonment", "subject": "Hi",
            "identity": {"dimension": "eVar01", "profile_column": "shopper_id"}, **extra}


def _write(tmp_path: Path, *routes: dict[str, Any]) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(json.dumps({"version": 1, "triggers": list(routes)}), encoding="utf-8")
    return path


def _problems(tmp_path: Path, *routes: dict[str, Any], templates: Path = TEMPLATES_DIR) -> list[str]:
    with pytest.raises(RoutingConfigError) as info:
        load_routing(_write(tmp_path, *routes), templates_dir=templates)
    return [p.split("routing.yaml: ", 1)[1] for p in info.value.problems]


def test_the_shipped_routing_uses_the_catalogue_and_its_own_links() -> None:
    routes = {r.name: r for r in load_routing().routes}
    for route in routes.values():
        assert route.products is ProductSource.CATALOG
        assert route.link_policy == LinkPolicy.of(["shop.example.com"])
    assert dict(routes["cart_abandonment"].links) == {"cart": "https://shop.example.com/cart", "shop": "https://shop.example.com/"}
    assert dict(routes["browse_abandonment"].links) == {"shop": "https://shop.example.com/"}


def test_content_keys_are_loaded(tmp_path: Path) -> None:
    [route] = load_routing(_write(tmp_path, _route(
        products="event", link_hosts=["Shop.Example.com", "*.cdn.example.com"], allow_http=True,
        links={"cart": "http://shop.example.com/cart", "shop": "https://shop.example.com"},
    ))).routes
    assert route.products is ProductSource.EVENT
    assert route.link_policy == LinkPolicy.of(["shop.example.com", "*.cdn.example.com"], allow_http=True)
    # links are stored as the policy emits them
    assert route.links == (("cart", "http://shop.example.com/cart"), ("shop", "https://shop.example.com/"))


def test_an_explicit_empty_link_hosts_shows_no_event_url(tmp_path: Path) -> None:
    [route] = load_routing(_write(tmp_path, _route(link_hosts=[]))).routes
    assert route.link_policy == NO_LINKS
    assert route.products is ProductSource.CATALOG


def test_a_route_rendering_event_urls_needs_link_hosts(tmp_path: Path) -> None:
    [problem] = _problems(tmp_path, _route())
    assert problem.startswith(
        "triggers[0] (cart): template 'cart_abandonment' renders URLs taken from the event "
        "(cart_abandonment/email.fr.html: event.pages; cart_abandonment/email.fr.html: event.products; "
    )
    assert "but the route has no link_hosts: event data is unauthenticated" in problem
    assert "Add link_hosts: [your.shop.host] (exact hosts or '*.domain'), or link_hosts: [] to show none of them" in problem


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"products": "both", "link_hosts": []},
         ("triggers[0] (cart): products 'both' must be one of: catalog (names, prices, URLs and images from the "
         "catalogue by SKU; the default) or event (from the event itself, names cut at 80 characters)")),
        ({"link_hosts": "shop.example.com"},
         "triggers[0] (cart): link_hosts must be a list of hosts such as [shop.example.com, '*.cdn.example.com'], got str"),
        ({"link_hosts": ["shop.example.com", "https://evil.example/x"]},
         ("triggers[0] (cart): link_hosts[1]: 'https://evil.example/x' is not a host name: give the host only "
         "(shop.example.com), without scheme, path or user")),
        ({"link_hosts": ["*"]},
         ("triggers[0] (cart): link_hosts[0]: '*' alone would allow every host: list the hosts (shop.example.com) or "
         "a domain's subdomains (*.example.com)")),
        ({"link_hosts": [], "allow_http": "yes"}, "triggers[0] (cart): allow_http must be true or false, got 'yes'"),
        ({"links": {"cart": "https://shop.example.com/cart"}, "link_hosts": "x"},
         "triggers[0] (cart): link_hosts must be a list of hosts such as [shop.example.com, '*.cdn.example.com'], got str"),
        ({"link_hosts": ["shop.example.com"], "links": ["https://shop.example.com/cart"]},
         "triggers[0] (cart): links must be a mapping of name -> URL such as {cart: 'https://shop.example.com/cart'}, got list"),
        ({"link_hosts": ["shop.example.com"], "links": {"cart": "https://shop.example.com.evil.example/cart"}},
         ("triggers[0] (cart): links['cart']: 'https://shop.example.com.evil.example/cart' is refused by the route's "
         "link_hosts (https to shop.example.com): host-not-allowed; give an absolute URL on one of those hosts")),
        ({"link_hosts": ["shop.example.com"], "links": {"cart": "http://shop.example.com/cart"}},
         ("triggers[0] (cart): links['cart']: 'http://shop.example.com/cart' is refused by the route's "
         "link_hosts (https to shop.example.com): scheme; give an absolute URL on one of those hosts")),
        ({"link_hosts": ["shop.example.com"], "links": {"Cart Button": "https://shop.example.com/cart"}},
         "triggers[0] (cart): links['Cart Button']: a link name must match [a-z0-9_]+ (templates use it as links.<name>)"),
    ],
)
def test_content_key_problems_are_named(tmp_path: Path, extra: dict[str, Any], expected: str) -> None:
    assert _problems(tmp_path, _route(**extra)) == [expected]


def test_links_without_link_hosts(tmp_path: Path, templates: Path) -> None:
    problems = _problems(tmp_path, _route(template="plain", links={"cart": "https://shop.example.com/cart"}),
                         templates=templates)
    assert problems == [
        ("triggers[0] (cart): links need link_hosts: list the hosts of these URLs (link_hosts: [shop.example.com]); "
        "every URL of an email must be on one of the route's link_hosts")
    ]


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """Template folders exercising each way a template can reach event URLs (or not)."""
    root = tmp_path / "templates"
    files = {
        "plain/email.html": "<p>{{ event.name }} {{ event.trigger_id }} {{ event.triggered_at }} {{ links.cart }}</p>",
        "plain/email.txt": "{# event.pages would be a comment #}{{ 'event.products' }} {{ profile.first_name }}",
        "variant/email.html": "<p>hi</p>",
        "variant/email.txt": "hi",
        "variant/email.fr.html": "{% for p in event['products'] %}{{ p.url }}{% endfor %}",
        "variant/email.fr.txt": "salut",
        "extends/email.html": '{% extends "_base_pages.html" %}',
        "extends/email.txt": "hi",
        "_base_pages.html": "{% for page in event.pages %}{{ page }}{% endfor %}",
        "macro/email.html": '{% import "_macros_x.html" as m %}{{ m.show(event) }}',
        "macro/email.txt": '{% include "_dims.txt" %}',
        "_macros_x.html": "{% macro show(e) %}{{ e }}{% endmacro %}",
        "_dims.txt": "{{ event.dimensions.eVar02 }}",
        "alias/email.html": "{% set e = event %}{{ e.pages }}",
        "alias/email.txt": "hi",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("template", "found"),
    [
        ("plain", []),
        ("variant", ["variant/email.fr.html: event.products"]),
        ("extends", ["_base_pages.html: event.pages"]),
        ("macro", ["_dims.txt: event.dimensions", "macro/email.html: event"]),
        ("alias", ["alias/email.html: event"]),
        ("missing", []),
    ],
)
def test_event_url_references_walk_the_syntax_tree(templates: Path, template: str, found: list[str]) -> None:
    assert event_url_references(templates, template) == found


def test_templates_reading_only_safe_fields_need_no_link_hosts(tmp_path: Path, templates: Path) -> None:
    [route] = load_routing(_write(tmp_path, _route(template="plain")), templates_dir=templates).routes
    assert route.link_policy == NO_LINKS


def test_campaign_handlers_take_the_content_keys(tmp_path: Path) -> None:
    option = {"topics": [{"name": "triggers", "consumer": "c", "triggers": [{"name": "*", "jsConnector": "j"}]}]}
    (tmp_path / "nms.json").write_text(json.dumps(option))
    path = tmp_path / "routing.yaml"
    handler = {"template": "cart_abandonment", "subject": "Hi", "identity": {"dimension": "eVar01", "profile_column": "shopper_id"}}
    path.write_text(json.dumps({"version": 1, "campaign": {"config": "nms.json", "handlers": {"j": handler}}}))
    with pytest.raises(RoutingConfigError, match=r"campaign.handlers\['j'\]: template 'cart_abandonment' renders URLs"):
        load_routing(path)
    handler.update(products="event", link_hosts=["shop.example.com"], links={"cart": "https://shop.example.com/cart"})
    path.write_text(json.dumps({"version": 1, "campaign": {"config": "nms.json", "handlers": {"j": handler}}}))
    [route] = load_routing(path).routes
    assert (route.products, route.link_policy, route.links) == (
        ProductSource.EVENT, LinkPolicy.of(["shop.example.com"]), (("cart", "https://shop.example.com/cart"),)
    )
