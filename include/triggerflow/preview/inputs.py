"""What a preview or test send is made from: the route, the event, the profile and the catalogue.

Events may be given as the pipeline envelope (what ``tf_event.payload`` holds), as a Pipeline
producer message (``{"messageType": ..., "message": {...}}``) or as the bare trigger body; profiles
as a dict of profile columns (missing columns are filled with None, as a store row would have them).
Samples live in ``include/templates/samples/``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from include.triggerflow import TEMPLATES_DIR
from include.triggerflow.content import CatalogEntry
from include.triggerflow.events import PIPELINE_MESSAGE, TRIGGER_BODY, TriggerEvent, parse_envelope

if TYPE_CHECKING:
    from include.triggerflow.config import RoutingConfig, TriggerRoute

SAMPLES_DIR = TEMPLATES_DIR / "samples"
_SAMPLE_FALLBACK = "cart_abandonment"


class PreviewError(Exception):
    """The preview or test send cannot be made; the message says why and what to do."""


def find_route(routing: RoutingConfig, route_name: str) -> TriggerRoute:
    """The route called ``route_name``; PreviewError listing the available ones otherwise."""
    for route in routing.routes:
        if route.name == route_name:
            return route
    available = ", ".join(sorted(route.name for route in routing.routes)) or "(none)"
    raise PreviewError(f"unknown route {route_name!r}; available routes: {available}")


def as_envelope(payload: Mapping[str, Any] | str | bytes) -> dict[str, Any] | str | bytes:
    """A pipeline envelope for ``payload``: returned as is when it is one (or JSON text), wrapped
    when it is a producer message or a bare trigger body, so people can paste what they have."""
    if not isinstance(payload, Mapping):
        return payload
    data = dict(payload)
    if PIPELINE_MESSAGE in data:
        return data
    if isinstance(data.get("message"), Mapping) and "triggerId" in data["message"]:
        header = {k: data[k] for k in ("messageType", "source", "sentTime", "imsOrg", "messageId", "properties") if k in data}
        return {"envelopeType": "DATA", PIPELINE_MESSAGE: {"header": header, TRIGGER_BODY: dict(data["message"])}}
    if "triggerId" in data:
        return {"envelopeType": "DATA", PIPELINE_MESSAGE: {"header": {"messageType": "TRIGGER"}, TRIGGER_BODY: data}}
    return data


def parse_event(payload: Mapping[str, Any] | str | bytes) -> TriggerEvent:
    if isinstance(payload, (str, bytes)):
        try:
            payload = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PreviewError(f"event is not valid JSON: {exc}") from None
    event = parse_envelope(as_envelope(payload))
    if event.parse_error is not None:
        raise PreviewError(
            f"event cannot be read: {event.parse_error} (give a pipeline envelope, a producer message "
            "or a trigger body; see include/templates/samples/)"
        )
    return event


def complete_profile(profile: Mapping[str, Any]) -> dict[str, Any]:
    """``profile`` with every column of the ``profiles`` table present (missing ones None,
    ``opted_out`` False): a row from the store always has them all, so a hand-written profile must
    render the way the send stage would render that customer, not fail on an absent column."""
    from include.triggerflow.store.schema import profiles

    if not isinstance(profile, Mapping):
        raise PreviewError(f"profile must be a JSON object of profile columns, got {type(profile).__name__}")
    completed: dict[str, Any] = {column.name: None for column in profiles.columns}
    completed["opted_out"] = False
    completed.update(profile)
    return completed


def sample_event(route: TriggerRoute | None = None) -> dict[str, Any]:
    """The sample event shipped for ``route``'s template (``samples/<template>.event.json``), else
    the cart-abandonment sample: a realistic envelope with products, pages and image URLs."""
    names = [route.template] if route is not None else []
    for name in [*names, _SAMPLE_FALLBACK]:
        path = SAMPLES_DIR / f"{name}.event.json"
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    raise PreviewError(f"no sample event in {SAMPLES_DIR}")


def sample_profile(locale: str | None = None) -> dict[str, Any]:
    """The sample profile (``samples/profile.json``), or ``samples/profile.<locale>.json`` when it exists."""
    path = SAMPLES_DIR / f"profile.{locale}.json" if locale else SAMPLES_DIR / "profile.json"
    if not path.is_file():
        path = SAMPLES_DIR / "profile.json"
    return json.loads(path.read_text(encoding="utf-8"))


def sample_catalog() -> dict[str, CatalogEntry]:
    """The sample catalogue (``samples/catalog.json``: SKU -> name, names by locale, price, currency,
    url, image_url, in_stock) as catalogue items: the products of the sample events."""
    from include.triggerflow.catalog import CatalogItem

    path = SAMPLES_DIR / "catalog.json"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PreviewError(f"cannot read the sample catalogue {path}: {exc}") from None
    items: dict[str, CatalogEntry] = {}
    for sku, row in rows.items():
        try:
            price = Decimal(str(row["price"])) if row.get("price") is not None else None
        except InvalidOperation:
            raise PreviewError(f"sample catalogue {path}: {sku}: price {row['price']!r} is not a number") from None
        items[sku] = CatalogItem(
            sku=sku, name=row["name"], price=price, currency=row.get("currency"), url=row.get("url"),
            image_url=row.get("image_url"), in_stock=bool(row.get("in_stock", True)),
            names=MappingProxyType(dict(row.get("names") or {})),
        )
    return items


