"""The demo catalogue (devstack/demo_catalog.csv) and the SKUs the dev stack puts in triggers stay in
step: the shipped routes show products from the catalogue (issue 11), so a SKU the demo, the
emulator's generator or the load generator can produce but the catalogue lacks would silently turn
those triggers into ``no-products`` decisions instead of emails."""

from __future__ import annotations

import csv
import itertools
import random
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from devstack import loadgen, run_local
from devstack.hostile_corpus import KNOWN_SKU
from devstack.loadgen import MessageFactory, Mix, load_profiles
from devstack.messages import (
    CART_ABANDONMENT_TRIGGER_ID,
    DEFAULT_PRODUCT_SKUS,
    DEMO_CATALOG,
    DEMO_CATALOG_CSV,
    SHOP_BASE_URL,
    load_demo_catalog,
    trigger_message,
)
from devstack.run_local import DemoTriggers, demo_shoppers
from include.triggerflow.catalog import catalog_size, lookup, read_csv
from include.triggerflow.store.schema import catalog


def csv_skus() -> set[str]:
    with DEMO_CATALOG_CSV.open(newline="", encoding="utf-8") as fh:
        return {row["sku"] for row in csv.DictReader(fh)}


def skus_of(message: dict[str, Any]) -> set[str]:
    """The product SKUs of a producer message (what catalogue-mode reconcile looks up)."""
    products = message["message"]["enrichments"]["analyticsHitSummary"]["products"]
    return set(products) if isinstance(products, dict) else set()


def test_the_demo_catalogue_passes_the_real_loader_with_every_demo_sku_as_the_triggers_show_it() -> None:
    rows, errors = read_csv(DEMO_CATALOG_CSV)
    assert errors == []
    by_sku = {r["sku"]: r for r in rows}
    assert set(by_sku) == set(DEMO_CATALOG)
    for sku, details in DEMO_CATALOG.items():
        row = by_sku[sku]
        # the same name, price and page as the demo triggers carry: the demo emails look as before
        assert (row["name"], row["price"], row["url"]) == (
            details["name"], Decimal(str(details["price"])).quantize(Decimal("0.01")), details["url"]
        )
        assert row["currency"] == "USD"
        assert row["image_url"] == f"{SHOP_BASE_URL}/img/{sku}.jpg"
        assert row["url"].startswith(f"{SHOP_BASE_URL}/") and row["in_stock"] is True
    french = {sku for sku, r in by_sku.items() if r["names"].get("fr")}
    assert 2 <= len(french) < len(by_sku)  # a few: the others show the default name in French emails


def test_every_sku_the_dev_stack_can_produce_is_in_the_demo_catalogue() -> None:
    known = csv_skus()
    # the declared sources of SKUs
    assert set(DEMO_CATALOG) <= known
    assert set(DEFAULT_PRODUCT_SKUS) <= known
    assert KNOWN_SKU in known
    assert {sku for combos in loadgen._COMBOS.values() for combo in combos for sku in combo} <= known
    # and what the generators actually put in messages
    assert skus_of(trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-ADA")) <= known
    factory = MessageFactory(seed=11, customers=500, mix=Mix(malformed=0.0))
    produced = set(itertools.chain.from_iterable(skus_of(factory.message(i, 1_772_366_400_000)) for i in range(2000)))
    assert produced == known  # every demo SKU is used, and none the catalogue lacks
    demo = DemoTriggers(demo_shoppers(), random.Random(5))
    assert set(itertools.chain.from_iterable(skus_of(m) for m in demo.batch(500))) <= known
    assert run_local.DEMO_CATALOG_FILE == DEMO_CATALOG_CSV


def test_load_demo_catalog_upserts_through_the_loader(store_engine) -> None:
    first = load_demo_catalog(store_engine)
    again = load_demo_catalog(store_engine)
    assert (first.inserted, first.updated, again.inserted, again.updated) == (len(DEMO_CATALOG), 0, 0, len(DEMO_CATALOG))
    with store_engine.connect() as conn:
        items = lookup(conn, DEMO_CATALOG)
        assert catalog_size(conn) == len(DEMO_CATALOG)
    assert items["TRL-RUN-42"].name_for("fr_FR") == "Chaussures de trail Trail Runner 2"
    assert items["HDL-LMP-400"].name_for("fr_FR") == "Headlamp 400 Lumen Rechargeable"


def test_loadgen_profiles_load_the_demo_catalogue_too(store_engine) -> None:
    result = load_profiles(store_engine, 50, seed=3)
    assert (result.inserted, result.catalog_products) == (50, len(DEMO_CATALOG))
    with store_engine.connect() as conn:
        assert set(conn.execute(select(catalog.c.sku)).scalars()) == set(DEMO_CATALOG)
        assert conn.execute(select(func.count()).select_from(catalog)).scalar_one() == len(DEMO_CATALOG)
