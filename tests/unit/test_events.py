"""Tests for include.triggerflow.events: the pipeline envelope parsed into a TriggerEvent.

Event data is untrusted: parsing must never raise, and must say what was wrong."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from include.triggerflow.events import PIPELINE_MESSAGE, TRIGGER_BODY, as_int, parse_envelope

TRIGGER_ID = "5c2c6a3e-2b8f-4d6e-9a51-7f0d3c9b1a01"
MESSAGE_ID = "6b0ed1b6-2b4d-4b44-9b3a-1f8f0a1e2d3c"
MC_ID = "63414232495406281051419829407713574233"


def faq_sample() -> dict[str, Any]:
    """Shaped like the I/O Events FAQ sample: header + trigger body, the shopper eVar under the key
    " eVar01" (leading space, as in Adobe's sample), one blank page URL, a repeated page."""
    return {
        "envelopeType": "DATA",
        "partition": 13,
        "offset": 438465548,
        "createTime": 1516324157242,
        "topic": "triggers",
        PIPELINE_MESSAGE: {
            "header": {
                "messageType": "TRIGGER",
                "source": "triggers",
                "sentTime": 1516324157242,
                "imsOrg": "C0FFEE0123456789ABCDEF01@AdobeOrg",
                "messageId": MESSAGE_ID,
                "properties": [
                    {"name": "triggerFiredTimestamp", "value": "1516324154009"},
                    {"name": "sourceFirstTimestamp", "value": 1516323856},
                    {"value": "no name: skipped"},
                    "not a dict: skipped",
                ],
            },
            TRIGGER_BODY: {
                "triggerId": TRIGGER_ID,
                "triggerTimestamp": 1516324157242,
                "mcId": MC_ID,
                "enrichments": {
                    "analyticsHitSummary": {
                        "dimensions": {
                            " eVar01": {
                                "type": "string",
                                "data": ["", " PI4INF ", "PI4INF"],
                                "name": " eVar01",
                                "source": "session summary",
                            },
                            "pageURL": {
                                "type": "string",
                                "data": [
                                    "https://shop.example.com/",
                                    "",
                                    None,
                                    "  https://shop.example.com/p/TRL-RUN-42 ",
                                    "https://shop.example.com/",
                                    "https://shop.example.com/cart",
                                ],
                                "name": "pageURL",
                                "source": "session summary",
                            },
                            "timeGMT": {"type": "int", "data": [1516323856, 1516323893], "name": "timeGMT"},
                        },
                        "products": {
                            "TRL-RUN-42": {"name": "Trail Runner 2", "price": 129.95, "quantity": 1},
                            "GIFT-CARD": "Gift card",
                            "NO-NAME": {"price": 5, "sku": "overridden?"},
                        },
                    }
                },
                "triggerPath": [{"timestamp": 1516323856000, "stateId": "start_and_and", "transition": "null"}],
            },
        },
    }


def test_faq_sample_fields_are_lifted() -> None:
    ev = parse_envelope(json.dumps(faq_sample()))
    assert ev.parse_error is None
    assert (ev.envelope_type, ev.partition, ev.offset, ev.create_time, ev.topic) == (
        "DATA", 13, 438465548, 1516324157242, "triggers"
    )
    assert (ev.message_type, ev.message_id, ev.sent_time) == ("TRIGGER", MESSAGE_ID, 1516324157242)
    assert ev.ims_org == "C0FFEE0123456789ABCDEF01@AdobeOrg"
    assert (ev.trigger_id, ev.trigger_ts, ev.mc_id) == (TRIGGER_ID, 1516324157242, MC_ID)
    assert ev.properties == {"triggerFiredTimestamp": "1516324154009", "sourceFirstTimestamp": "1516323856"}
    assert ev.trigger_path == [{"timestamp": 1516323856000, "stateId": "start_and_and", "transition": "null"}]
    assert ev.triggered_at == datetime(2018, 1, 19, 1, 9, 17, 242000, tzinfo=timezone.utc)


def test_bytes_and_dict_payloads_parse_the_same() -> None:
    sample = faq_sample()
    from_dict = parse_envelope(sample)
    from_bytes = parse_envelope(json.dumps(sample).encode("utf-8"))
    assert from_dict == from_bytes
    assert from_dict.trigger_id == TRIGGER_ID


def test_whitespace_in_dimension_keys_is_ignored() -> None:
    ev = parse_envelope(faq_sample())
    assert " eVar01" not in ev.dimensions
    assert "eVar01" in ev.dimensions
    # Either spelling finds the dimension; the first non-blank value is stripped.
    assert ev.dimension_first("eVar01") == "PI4INF"
    assert ev.dimension_first(" eVar01 ") == "PI4INF"
    assert ev.dimension_values("eVar01") == ["", " PI4INF ", "PI4INF"]
    assert ev.dimension_first("eVar99") is None
    assert ev.dimension_values("eVar99") == []


def test_pages_drops_blanks_and_duplicates_in_hit_order() -> None:
    ev = parse_envelope(faq_sample())
    assert ev.pages() == [
        "https://shop.example.com/",
        "https://shop.example.com/p/TRL-RUN-42",
        "https://shop.example.com/cart",
    ]


def test_product_list_normalises_the_product_map() -> None:
    ev = parse_envelope(faq_sample())
    assert ev.product_list() == [
        {"sku": "TRL-RUN-42", "name": "Trail Runner 2", "price": 129.95, "quantity": 1},
        {"sku": "GIFT-CARD", "name": "Gift card"},
        # the map key is the sku (a "sku" inside the details does not override it); name defaults to it
        {"sku": "NO-NAME", "price": 5, "name": "NO-NAME"},
    ]


def test_product_list_of_unknown_shape_is_empty() -> None:
    sample = faq_sample()
    sample[PIPELINE_MESSAGE][TRIGGER_BODY]["enrichments"]["analyticsHitSummary"]["products"] = ["a", "b"]
    ev = parse_envelope(sample)
    assert ev.products == {}
    assert ev.product_list() == []


def test_enrichments_given_as_a_json_string() -> None:
    sample = faq_sample()
    body = sample[PIPELINE_MESSAGE][TRIGGER_BODY]
    body["enrichments"] = json.dumps(body["enrichments"])
    ev = parse_envelope(sample)
    assert ev.parse_error is None
    assert ev.dimension_first("eVar01") == "PI4INF"
    assert [p["sku"] for p in ev.product_list()] == ["TRL-RUN-42", "GIFT-CARD", "NO-NAME"]


def test_enrichments_string_that_is_not_json_gives_no_dimensions_and_no_error() -> None:
    sample = faq_sample()
    sample[PIPELINE_MESSAGE][TRIGGER_BODY]["enrichments"] = "{not json"
    ev = parse_envelope(sample)
    assert ev.parse_error is None
    assert ev.dimensions == {}
    assert ev.trigger_id == TRIGGER_ID


def test_non_json_text() -> None:
    ev = parse_envelope("not even an object")
    assert ev.parse_error is not None
    assert ev.parse_error.startswith("payload is not valid JSON")
    assert ev.trigger_id is None and ev.message_id is None


def test_invalid_utf8_bytes() -> None:
    ev = parse_envelope(b"\xff\xfe{")
    assert ev.parse_error is not None and ev.parse_error.startswith("payload is not valid JSON")


@pytest.mark.parametrize(
    ("payload", "kind"),
    [("[1, 2, 3]", "list"), ('"a string"', "str"), ("42", "int"), ("null", "NoneType")],
)
def test_json_that_is_not_an_object(payload: str, kind: str) -> None:
    ev = parse_envelope(payload)
    assert ev.parse_error == f"payload is a JSON {kind}, not an object"


def test_envelope_without_pipeline_message_keeps_envelope_fields() -> None:
    ev = parse_envelope({"envelopeType": "DATA", "partition": 1, "offset": 5})
    assert ev.parse_error == f"envelope has no '{PIPELINE_MESSAGE}' object"
    assert (ev.envelope_type, ev.partition, ev.offset) == ("DATA", 1, 5)


def test_pipeline_message_without_trigger_body_keeps_header() -> None:
    sample = faq_sample()
    del sample[PIPELINE_MESSAGE][TRIGGER_BODY]
    ev = parse_envelope(sample)
    assert ev.parse_error == f"pipeline message has no '{TRIGGER_BODY}' object"
    assert ev.message_id == MESSAGE_ID
    assert ev.trigger_id is None


def test_wrong_types_come_back_raw_without_error() -> None:
    sample = faq_sample()
    body = sample[PIPELINE_MESSAGE][TRIGGER_BODY]
    body["triggerTimestamp"] = "yesterday"
    body["triggerPath"] = "not a list"
    sample[PIPELINE_MESSAGE]["header"]["properties"] = {"not": "a list"}
    ev = parse_envelope(sample)
    assert ev.parse_error is None
    assert ev.trigger_ts == "yesterday"
    assert ev.triggered_at is None
    assert ev.trigger_path == []
    assert ev.properties == {}


def test_field_value() -> None:
    ev = parse_envelope(faq_sample())
    assert ev.field_value("mcId") == MC_ID
    assert ev.field_value("header.messageId") == MESSAGE_ID
    assert ev.field_value("messageId") == MESSAGE_ID
    assert ev.field_value("imsOrg") == "C0FFEE0123456789ABCDEF01@AdobeOrg"
    assert ev.field_value("unknownField") is None
    sample = faq_sample()
    sample[PIPELINE_MESSAGE][TRIGGER_BODY]["mcId"] = "   "
    assert parse_envelope(sample).field_value("mcId") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1516324157242, 1516324157242),
        ("1516324157242", 1516324157242),
        (" 42 ", 42),
        ("-5", -5),
        (True, None),
        (1.5e12, None),
        ("yesterday", None),
        ("", None),
        ("-", None),
        (None, None),
        # Malformed text must give None, never raise: landing calls this on untrusted payloads.
        ("--5", None),
        ("²", None),
        ("١٢٣", 123),  # int() reads any Unicode decimal digits, as the validation regex \d does
    ],
)
def test_as_int(value: Any, expected: int | None) -> None:
    assert as_int(value) == expected
