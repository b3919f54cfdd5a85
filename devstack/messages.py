"""Realistic Adobe Analytics trigger messages for the local dev stack and the tests.

Two shapes are built here, both following reference/adobe-triggers.md:

* :func:`trigger_message` — a *producer* message as posted to the Pipeline v3 producer endpoint
  (PIPE-API, §1.5): header fields at top level and the trigger body under ``message``.
* :func:`envelope` — the pipeline *envelope* a consumer receives (IOE-FAQ, §1.7):
  ``envelopeType/partition/offset/createTime/topic`` plus
  ``com.adobe.mcloud.pipeline.pipelineMessage = {header, com.adobe.mcloud.protocol.trigger}``.

The trigger body mimics what Analytics sends for an abandonment trigger: a session summary whose
dimensions hold one value per hit (the shopper eVar repeated, a blank page URL for a hit that had
none), a product map, and the rule state machine path that fired the trigger.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.triggerflow.events import PIPELINE_MESSAGE, TRIGGER_BODY

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from include.triggerflow.profiles import LoadResult

CART_ABANDONMENT_TRIGGER_ID = "5c2c6a3e-2b8f-4d6e-9a51-7f0d3c9b1a01"
BROWSE_ABANDONMENT_TRIGGER_ID = "9e4b1f27-6c3d-4a8e-b2f5-0d7c8a6e3b02"
DEMO_IMS_ORG = "C0FFEE0123456789ABCDEF01@AdobeOrg"

SHOP_BASE_URL = "https://shop.example.com"

DEMO_CATALOG: dict[str, dict[str, Any]] = {
    "TRL-RUN-42": {
        "name": "Trail Runner 2 Running Shoes",
        "price": 129.95,
        "quantity": 1,
        "url": f"{SHOP_BASE_URL}/p/TRL-RUN-42",
    },
    "MRN-WOOL-SCK": {
        "name": "Merino Wool Hiking Socks (3-pack)",
        "price": 24.5,
        "quantity": 2,
        "url": f"{SHOP_BASE_URL}/p/MRN-WOOL-SCK",
    },
    "ALP-SHL-JKT": {
        "name": "Alpine Shell Waterproof Jacket",
        "price": 249.0,
        "quantity": 1,
        "url": f"{SHOP_BASE_URL}/p/ALP-SHL-JKT",
    },
    "UL-DAY-PCK": {
        "name": "Ultralight 22L Day Pack",
        "price": 89.99,
        "quantity": 1,
        "url": f"{SHOP_BASE_URL}/p/UL-DAY-PCK",
    },
    "TI-BTL-750": {
        "name": "Titanium Water Bottle 750 ml",
        "price": 39.9,
        "quantity": 1,
        "url": f"{SHOP_BASE_URL}/p/TI-BTL-750",
    },
    "HDL-LMP-400": {
        "name": "Headlamp 400 Lumen Rechargeable",
        "price": 54.0,
        "quantity": 1,
        "url": f"{SHOP_BASE_URL}/p/HDL-LMP-400",
    },
}

DEFAULT_PRODUCT_SKUS: tuple[str, ...] = ("TRL-RUN-42", "MRN-WOOL-SCK")

#: The demo shop's product catalogue: every SKU of :data:`DEMO_CATALOG` (the only SKUs the demo,
#: the emulator's generator and the load generator put in triggers) with the same names, prices and
#: URLs, plus images and a few French names. The shipped routes show products from the catalogue
#: (issue 11): a trigger whose SKUs are not in it gets no email. tests/devstack/test_demo_catalog.py
#: keeps the two in step.
DEMO_CATALOG_CSV = Path(__file__).with_name("demo_catalog.csv")


def load_demo_catalog(engine: Engine) -> LoadResult:
    """Load :data:`DEMO_CATALOG_CSV` into the store's ``catalog`` table through the real loader
    (``cli catalog load`` does the same); upserts, so it is safe to run on every start."""
    from include.triggerflow.catalog import load_catalog_csv

    return load_catalog_csv(engine, DEMO_CATALOG_CSV)

# Timeline of the fake session, modelled on the I/O Events FAQ sample: Analytics fires the
# trigger a few seconds after the rule reached ``notify``, ``notify`` is reached once the visitor
# has been inactive for the configured timeout, and hits are tens of seconds apart.
_FIRE_TO_SEND_MS = 3_233
_INACTIVITY_TIMEOUT_MINUTES = 5
_HIT_SPACING_MS = 37_000


def now_ms() -> int:
    return int(time.time() * 1000)


def _resolve_products(products: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    """Products as ``{sku: {name, price, quantity, url}}``.

    A mapping is taken as-is (deep-copied so callers can reuse it); an iterable of SKUs is looked
    up in :data:`DEMO_CATALOG`; ``None`` gives two catalog items.
    """
    if products is None:
        return {sku: dict(DEMO_CATALOG[sku]) for sku in DEFAULT_PRODUCT_SKUS}
    if isinstance(products, Mapping):
        return copy.deepcopy(dict(products))
    resolved: dict[str, Any] = {}
    for sku in products:
        if sku not in DEMO_CATALOG:
            raise KeyError(f"unknown SKU {sku!r}; known: {', '.join(sorted(DEMO_CATALOG))}")
        resolved[sku] = dict(DEMO_CATALOG[sku])
    return resolved


def _default_pages(trigger_id: str, products: Mapping[str, Any]) -> list[str]:
    product_urls = [
        str(details.get("url") or f"{SHOP_BASE_URL}/p/{sku}")
        if isinstance(details, Mapping)
        else f"{SHOP_BASE_URL}/p/{sku}"
        for sku, details in products.items()
    ]
    pages = [f"{SHOP_BASE_URL}/", *product_urls]
    if trigger_id != BROWSE_ABANDONMENT_TRIGGER_ID:
        pages.append(f"{SHOP_BASE_URL}/cart")
    return pages


def _page_hits(pages: list[str]) -> list[str]:
    """One ``pageURL`` entry per hit. Adobe's session summary contains blank entries for hits
    without a page URL (link tracking calls); keep exactly one, after the landing page."""
    if not pages:
        return [""]
    return [pages[0], "", *pages[1:]]


def _trigger_path(
    first_hit_ms: int, last_hit_ms: int, notify_ms: int, last_page: str
) -> list[dict[str, Any]]:
    # The transitions copy the wording of the rule engine in Adobe's sample payload.
    condition_page = last_page.split("://", 1)[-1] if last_page else "shop.example.com/cart"
    return [
        {"timestamp": first_hit_ms, "stateId": "start_and_and", "transition": "null"},
        {
            "timestamp": last_hit_ms,
            "stateId": "vmi_and_1",
            "transition": f"conditional -> select * where evars.evars.eVar3 like '{condition_page}'",
        },
        {
            "timestamp": last_hit_ms,
            "stateId": "notify_wait",
            "transition": (
                "states visited -> [StateVisitedNode [stateId=vmi_and_1, count=1, operator=GE]]"
            ),
        },
        {
            "timestamp": notify_ms,
            "stateId": "notify",
            "transition": f"inactive_timeout -> {_INACTIVITY_TIMEOUT_MINUTES}",
        },
    ]


def trigger_message(
    *,
    trigger_id: str,
    shopper_id: str | None = None,
    mc_id: str = "0" * 38,
    pages: list[str] | None = None,
    products: Mapping[str, Any] | Iterable[str] | None = None,
    triggered_at_ms: int | None = None,
    ims_org: str = DEMO_IMS_ORG,
    message_id: str | None = None,
    shopper_dimension: str = "eVar01",
    extra_dimensions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Pipeline producer message (PIPE-API) carrying one Analytics trigger.

    ``pages`` are the page URLs of the session in hit order (default: landing page, product pages
    and, except for browse abandonment, the cart). ``products`` is either ``{sku: details}`` or a
    list of SKUs from :data:`DEMO_CATALOG`. ``extra_dimensions`` maps dimension names to raw
    dimension dicts and overrides generated ones of the same name.
    """
    trigger_ts = now_ms() if triggered_at_ms is None else int(triggered_at_ms)
    product_map = _resolve_products(products)
    page_list = list(pages) if pages is not None else _default_pages(trigger_id, product_map)
    hits = _page_hits(page_list)
    n_hits = len(hits)

    fired_ms = trigger_ts - _FIRE_TO_SEND_MS
    notify_ms = fired_ms - 1
    last_hit_ms = notify_ms - _INACTIVITY_TIMEOUT_MINUTES * 60_000
    hit_times_ms = [last_hit_ms - (n_hits - 1 - i) * _HIT_SPACING_MS for i in range(n_hits)]
    hit_times_s = [t // 1000 for t in hit_times_ms]

    dimensions: dict[str, Any] = {}
    if shopper_id is not None:
        dimensions[shopper_dimension] = {
            "type": "string",
            "data": [shopper_id] * n_hits,
            "name": shopper_dimension,
            "source": "session summary",
        }
    dimensions["pageURL"] = {
        "type": "string", "data": hits, "name": "pageURL", "source": "session summary"
    }
    dimensions["timeGMT"] = {
        "type": "int", "data": hit_times_s, "name": "timeGMT", "source": "session summary"
    }
    if extra_dimensions:
        dimensions.update(copy.deepcopy(dict(extra_dimensions)))

    last_page = next((p for p in reversed(page_list) if p), "")
    body = {
        "triggerId": trigger_id,
        "triggerTimestamp": trigger_ts,
        "mcId": mc_id,
        "enrichments": {"analyticsHitSummary": {"dimensions": dimensions, "products": product_map}},
        "triggerPath": _trigger_path(hit_times_ms[0], last_hit_ms, notify_ms, last_page),
    }
    return {
        "messageType": "TRIGGER",
        "source": "triggers",
        "sentTime": trigger_ts,
        "imsOrg": ims_org,
        "messageId": message_id if message_id is not None else str(uuid.uuid4()),
        "properties": [
            {"name": "triggerFiredTimestamp", "value": str(fired_ms)},
            {"name": "sourceFirstTimestamp", "value": str(hit_times_s[0])},
            {"name": "sourceLastTimestamp", "value": str(hit_times_s[-1])},
            {"name": "trace", "value": "false"},
        ],
        "message": body,
    }


HEADER_FIELDS: tuple[str, ...] = (
    "messageType", "source", "sentTime", "imsOrg", "messageId", "properties"
)


def envelope(
    message: Mapping[str, Any],
    *,
    partition: int,
    offset: int,
    topic: str = "triggers",
    create_time_ms: int | None = None,
) -> dict[str, Any]:
    """The pipeline envelope a consumer sees for one producer ``message`` (IOE-FAQ shape).

    Header fields missing from ``message`` are left out rather than invented, so a deliberately
    incomplete producer message stays incomplete downstream.
    """
    header = {name: copy.deepcopy(message[name]) for name in HEADER_FIELDS if name in message}
    return {
        "envelopeType": "DATA",
        "partition": partition,
        "offset": offset,
        "createTime": now_ms() if create_time_ms is None else int(create_time_ms),
        "topic": topic,
        PIPELINE_MESSAGE: {
            "header": header,
            TRIGGER_BODY: copy.deepcopy(message.get("message")),
        },
    }
