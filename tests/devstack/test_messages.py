"""Tests of devstack.messages: producer messages and envelopes match the Adobe wire shapes and
parse cleanly with triggerflow's own envelope parser."""

from __future__ import annotations

import uuid

import pytest

from devstack.messages import (
    BROWSE_ABANDONMENT_TRIGGER_ID,
    CART_ABANDONMENT_TRIGGER_ID,
    DEMO_CATALOG,
    DEMO_IMS_ORG,
    envelope,
    trigger_message,
)
from include.triggerflow.events import PIPELINE_MESSAGE, TRIGGER_BODY, parse_envelope

TS = 1_716_000_000_000
PAGES = ["https://shop.example.com/", "https://shop.example.com/p/TI-BTL-750", "https://shop.example.com/cart"]


def _cart(**kwargs):
    defaults = dict(
        trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id="CUST-000123", triggered_at_ms=TS, pages=PAGES
    )
    defaults.update(kwargs)
    return trigger_message(**defaults)


def test_producer_message_header_fields() -> None:
    msg = _cart(message_id="11111111-2222-4333-8444-555555555555")
    assert msg["messageType"] == "TRIGGER"
    assert msg["source"] == "triggers"
    assert msg["sentTime"] == TS
    assert msg["imsOrg"] == DEMO_IMS_ORG
    assert msg["messageId"] == "11111111-2222-4333-8444-555555555555"
    props = {p["name"]: p["value"] for p in msg["properties"]}
    assert set(props) == {"triggerFiredTimestamp", "sourceFirstTimestamp", "sourceLastTimestamp", "trace"}
    assert all(isinstance(v, str) for v in props.values())
    assert props["trace"] == "false"
    fired = int(props["triggerFiredTimestamp"])
    assert TS - 10_000 < fired < TS
    first, last = int(props["sourceFirstTimestamp"]), int(props["sourceLastTimestamp"])
    assert first < last < fired // 1000


def test_message_id_defaults_to_fresh_uuid4() -> None:
    a, b = _cart(), _cart()
    assert uuid.UUID(a["messageId"]).version == 4
    assert a["messageId"] != b["messageId"]


def test_trigger_body_dimensions_one_value_per_hit() -> None:
    body = _cart()["message"]
    assert body["triggerId"] == CART_ABANDONMENT_TRIGGER_ID
    assert body["triggerTimestamp"] == TS
    assert body["mcId"] == "0" * 38
    dims = body["enrichments"]["analyticsHitSummary"]["dimensions"]
    assert set(dims) == {"eVar01", "pageURL", "timeGMT"}
    # three pages plus the one blank hit Adobe's session summaries contain
    assert dims["pageURL"] == {
        "type": "string",
        "data": [PAGES[0], "", PAGES[1], PAGES[2]],
        "name": "pageURL",
        "source": "session summary",
    }
    assert dims["eVar01"] == {
        "type": "string",
        "data": ["CUST-000123"] * 4,
        "name": "eVar01",
        "source": "session summary",
    }
    times = dims["timeGMT"]["data"]
    assert dims["timeGMT"]["type"] == "int"
    assert len(times) == 4 and all(isinstance(t, int) for t in times)
    assert times == sorted(times) and len(set(times)) == 4
    assert times[-1] < TS // 1000


def test_trigger_path_is_the_rule_state_machine_before_the_trigger() -> None:
    body = _cart()["message"]
    path = body["triggerPath"]
    assert [step["stateId"] for step in path] == ["start_and_and", "vmi_and_1", "notify_wait", "notify"]
    assert path[-1]["transition"] == "inactive_timeout -> 5"
    stamps = [step["timestamp"] for step in path]
    assert stamps == sorted(stamps)
    assert stamps[-1] < TS
    first_hit_s = body["enrichments"]["analyticsHitSummary"]["dimensions"]["timeGMT"]["data"][0]
    assert stamps[0] // 1000 == first_hit_s


def test_products_from_skus_mapping_and_default() -> None:
    summary = _cart(products=["ALP-SHL-JKT", "HDL-LMP-400"])["message"]["enrichments"]["analyticsHitSummary"]
    by_sku = summary["products"]
    assert by_sku == {"ALP-SHL-JKT": DEMO_CATALOG["ALP-SHL-JKT"], "HDL-LMP-400": DEMO_CATALOG["HDL-LMP-400"]}
    custom = {"X-1": {"name": "Thing", "price": 1.5, "quantity": 3, "url": "https://shop.example.com/p/X-1"}}
    assert _cart(products=custom)["message"]["enrichments"]["analyticsHitSummary"]["products"] == custom
    default = _cart()["message"]["enrichments"]["analyticsHitSummary"]["products"]
    assert len(default) == 2 and set(default) <= set(DEMO_CATALOG)
    with pytest.raises(KeyError, match="NOPE"):
        _cart(products=["NOPE"])


def test_catalog_is_realistic() -> None:
    assert 5 <= len(DEMO_CATALOG) <= 8
    for sku, item in DEMO_CATALOG.items():
        assert set(item) == {"name", "price", "quantity", "url"}
        assert isinstance(item["price"], float) and item["price"] > 0
        assert item["url"] == f"https://shop.example.com/p/{sku}"


def test_default_pages_depend_on_trigger() -> None:
    cart = trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, products=["TI-BTL-750"], triggered_at_ms=TS)
    browse = trigger_message(
        trigger_id=BROWSE_ABANDONMENT_TRIGGER_ID, products=["TI-BTL-750"], triggered_at_ms=TS
    )
    cart_pages = cart["message"]["enrichments"]["analyticsHitSummary"]["dimensions"]["pageURL"]["data"]
    browse_pages = browse["message"]["enrichments"]["analyticsHitSummary"]["dimensions"]["pageURL"]["data"]
    product_url = DEMO_CATALOG["TI-BTL-750"]["url"]
    assert cart_pages == ["https://shop.example.com/", "", product_url, "https://shop.example.com/cart"]
    assert browse_pages == ["https://shop.example.com/", "", product_url]


def test_no_shopper_means_no_shopper_dimension_and_custom_dimension_name() -> None:
    anon = _cart(shopper_id=None)["message"]["enrichments"]["analyticsHitSummary"]["dimensions"]
    assert "eVar01" not in anon
    custom = _cart(shopper_dimension="eVar7")["message"]["enrichments"]["analyticsHitSummary"]["dimensions"]
    assert custom["eVar7"]["data"] == ["CUST-000123"] * 4 and "eVar01" not in custom


def test_extra_dimensions_merge_and_override() -> None:
    extra = {
        "eVar3": {"type": "string", "data": ["a", "b"], "name": "eVar3", "source": "session summary"},
        "pageURL": {"type": "string", "data": ["https://elsewhere.example/"], "name": "pageURL", "source": "x"},
    }
    dims = _cart(extra_dimensions=extra)["message"]["enrichments"]["analyticsHitSummary"]["dimensions"]
    assert dims["eVar3"]["data"] == ["a", "b"]
    assert dims["pageURL"]["data"] == ["https://elsewhere.example/"]
    assert dims["eVar01"]["data"][0] == "CUST-000123"
    extra["eVar3"]["data"].append("c")  # the message must not share state with the caller
    assert dims["eVar3"]["data"] == ["a", "b"]


def test_envelope_shape_and_round_trip_through_parser() -> None:
    msg = _cart(message_id="0d9a4b2c-1e3f-4a5b-8c7d-9e0f1a2b3c4d", mc_id="1" * 38)
    env = envelope(msg, partition=7, offset=1234, create_time_ms=TS + 15)
    assert list(env)[:5] == ["envelopeType", "partition", "offset", "createTime", "topic"]
    assert (env["envelopeType"], env["partition"], env["offset"], env["createTime"], env["topic"]) == (
        "DATA", 7, 1234, TS + 15, "triggers",
    )
    pm = env[PIPELINE_MESSAGE]
    assert set(pm) == {"header", TRIGGER_BODY}
    header_keys = ("messageType", "source", "sentTime", "imsOrg", "messageId", "properties")
    assert pm["header"] == {k: msg[k] for k in header_keys}
    assert pm[TRIGGER_BODY] == msg["message"]

    event = parse_envelope(env)
    assert event.parse_error is None
    assert (event.partition, event.offset, event.topic) == (7, 1234, "triggers")
    assert event.message_id == "0d9a4b2c-1e3f-4a5b-8c7d-9e0f1a2b3c4d"
    assert event.trigger_id == CART_ABANDONMENT_TRIGGER_ID
    assert event.trigger_ts == TS
    assert event.mc_id == "1" * 38
    assert event.dimension_first("eVar01") == "CUST-000123"
    assert event.pages() == PAGES
    assert event.properties["trace"] == "false"
    assert [p["sku"] for p in event.product_list()] == ["TRL-RUN-42", "MRN-WOOL-SCK"]


def test_envelope_does_not_alias_the_message() -> None:
    msg = _cart()
    env = envelope(msg, partition=0, offset=1000, topic="other")
    msg["message"]["triggerId"] = "changed"
    msg["properties"].append({"name": "x", "value": "y"})
    assert env["topic"] == "other"
    assert env[PIPELINE_MESSAGE][TRIGGER_BODY]["triggerId"] == CART_ABANDONMENT_TRIGGER_ID
    assert len(env[PIPELINE_MESSAGE]["header"]["properties"]) == 4
