"""Tests for include.triggerflow.events: the pipeline envelope parsed into a TriggerEvent.

Event data is untrusted: parsing must never raise, and must say what was wrong."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from include.triggerflow.events import (
    MAX_DEPTH,
    MAX_PROBLEMS,
    MAX_TRIGGER_MS,
    MIN_TRIGGER_MS,
    PIPELINE_MESSAGE,
    TRIGGER_BODY,
    TextProblem,
    as_int,
    clean_text,
    nesting_exceeds,
    parse_envelope,
)

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
    assert ev.triggered_at == datetime(2018, 1, 19, 1, 9, 17, 242000, tzinfo=UTC)


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
    assert ev.trigger_ts is None
    assert ev.raw_fields == {"triggerTimestamp": "yesterday"}
    assert ev.problems == ["triggerTimestamp is a JSON string, not a number"]
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


# -- hostile content: parsing never raises, is bounded, and names what it found ----------------------
def envelope_with(**body: Any) -> dict[str, Any]:
    sample = faq_sample()
    sample[PIPELINE_MESSAGE][TRIGGER_BODY].update(body)
    return sample


def with_evar(value: Any) -> dict[str, Any]:
    sample = faq_sample()
    dims = sample[PIPELINE_MESSAGE][TRIGGER_BODY]["enrichments"]["analyticsHitSummary"]["dimensions"]
    dims[" eVar01"]["data"] = [value]
    return sample


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 2_000, 100_000])
@pytest.mark.parametrize("bracket", ["[", '{"a":'])
def test_nesting_beyond_the_limit_is_a_parse_error_not_a_recursion(depth: int, bracket: str) -> None:
    closer = "]" if bracket == "[" else "}"
    text = bracket * depth + "1" + closer * depth
    ev = parse_envelope(text)
    assert ev.parse_error == f"nesting deeper than {MAX_DEPTH}"
    assert parse_envelope(text.encode()).parse_error == f"nesting deeper than {MAX_DEPTH}"


def test_nesting_at_the_limit_parses_and_brackets_inside_strings_do_not_count() -> None:
    assert parse_envelope("[" * MAX_DEPTH + "]" * MAX_DEPTH).parse_error == "payload is a JSON list, not an object"
    sample = faq_sample()
    sample[PIPELINE_MESSAGE]["header"]["messageType"] = "[{" * 5_000  # text, not structure
    ev = parse_envelope(json.dumps(sample))
    assert ev.parse_error is None and ev.message_type == "[{" * 5_000
    assert nesting_exceeds('["' + "[" * 100 + '\\"' + '"]') is False  # an escaped quote does not end the string
    assert nesting_exceeds('"' + "[" * 100) is True  # unterminated string: brackets count (invalid anyway)


def test_deep_nesting_inside_an_enrichments_string_is_a_problem() -> None:
    sample = envelope_with(enrichments="[" * 3_000 + "]" * 3_000)
    ev = parse_envelope(json.dumps(sample))
    assert ev.parse_error is None
    assert ev.problems == [f"enrichments nesting deeper than {MAX_DEPTH}"]
    assert ev.dimensions == {}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("x\u0000", "control character in eVar01"),
        ("\u0007bell", "control character in eVar01"),
        ("del\u007f", "control character in eVar01"),
        ("c1\u0085", "control character in eVar01"),
        ("\ud800", "invalid text in eVar01"),
        ("ok\udfffok", "invalid text in eVar01"),
    ],
)
def test_bad_characters_in_an_evar_are_replaced_and_named(value: str, problem: str) -> None:
    for payload in (json.dumps(with_evar(value)), json.dumps(with_evar(value), ensure_ascii=False), with_evar(value)):
        ev = parse_envelope(payload)
        assert ev.parse_error is None
        assert ev.problems == [problem]
        [stored] = ev.dimension_values("eVar01")
        assert "\ufffd" in stored
        stored.encode("utf-8")  # storable: a lone surrogate would raise here
        assert "\x00" not in stored


def test_tab_newline_and_ordinary_unicode_are_not_problems() -> None:
    text = "tab\there\nnew line\r, café, 🛒, \u202eRTL, zero\u200bwidth"
    ev = parse_envelope(json.dumps(with_evar(text)))
    assert ev.problems == []
    assert ev.dimension_values("eVar01") == [text]


@pytest.mark.parametrize(
    ("place", "problem"),
    [("messageId", "invalid text in messageId"), ("imsOrg", "control character in imsOrg")],
)
def test_bad_characters_in_header_fields_are_named_after_the_field(place: str, problem: str) -> None:
    sample = faq_sample()
    sample[PIPELINE_MESSAGE]["header"][place] = "\ud83d" if "invalid" in problem else "org\u0000"
    ev = parse_envelope(json.dumps(sample))
    assert ev.problems == [problem]
    assert "\ufffd" in (ev.field_value(place) or "")


def test_bad_characters_in_trigger_id_and_keys() -> None:
    sample = envelope_with(triggerId="t\u0000id")
    dims = sample[PIPELINE_MESSAGE][TRIGGER_BODY]["enrichments"]["analyticsHitSummary"]["dimensions"]
    dims["eVar\u000002"] = {"data": ["v"]}
    ev = parse_envelope(json.dumps(sample))
    assert ev.trigger_id == "t\ufffdid"
    assert ev.problems == ["control character in triggerId", "control character in eVar\ufffd02"]
    assert ev.dimension_values("eVar\ufffd02") == ["v"]


def test_problems_are_listed_once_each_and_capped() -> None:
    sample = faq_sample()
    dims = sample[PIPELINE_MESSAGE][TRIGGER_BODY]["enrichments"]["analyticsHitSummary"]["dimensions"]
    for i in range(200):
        dims[f"eVar{i:03d}"] = {"data": ["\u0000", "\u0001"]}
    sample[PIPELINE_MESSAGE][TRIGGER_BODY]["triggerTimestamp"] = 2**70
    ev = parse_envelope(json.dumps(sample))
    text_problems = [p for p in ev.problems if p.startswith("control")]
    assert len(text_problems) == MAX_PROBLEMS == len(set(text_problems))
    # the timestamp's problem is never crowded out by text problems
    assert ev.problems[-1] == "triggerTimestamp out of range"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1e30", "triggerTimestamp out of range"),
        (str(2**70), "triggerTimestamp out of range"),
        (str(-(2**64)), "triggerTimestamp out of range"),
        (str(MAX_TRIGGER_MS + 1), "triggerTimestamp out of range"),
        ("1e300", "triggerTimestamp out of range"),
        ("NaN", "triggerTimestamp is not a finite number"),
        ("Infinity", "triggerTimestamp is not a finite number"),
        ("-Infinity", "triggerTimestamp is not a finite number"),
        ("1e400", "triggerTimestamp is not a finite number"),  # the json module reads it as inf
        ("1516324157242.5", "triggerTimestamp is not a whole number of milliseconds"),
        ("1516324157242.0", "triggerTimestamp is not a whole number of milliseconds"),
        ('"123"', "triggerTimestamp is a JSON string, not a number"),
        ('"1516324157242"', "triggerTimestamp is a JSON string, not a number"),
        ("true", "triggerTimestamp is a JSON boolean, not a number"),
        ("[1]", "triggerTimestamp is a JSON array, not a number"),
        ('{"ms": 1}', "triggerTimestamp is a JSON object, not a number"),
    ],
)
def test_trigger_timestamps_that_are_not_usable_give_none_and_a_reason(text: str, problem: str) -> None:
    base = json.dumps(envelope_with(triggerTimestamp=123456))
    payload = base.replace('"triggerTimestamp": 123456', f'"triggerTimestamp": {text}')
    assert payload != base
    ev = parse_envelope(payload)
    assert ev.parse_error is None
    assert ev.trigger_ts is None and ev.triggered_at is None
    assert ev.problems == [problem]
    assert "triggerTimestamp" in ev.raw_fields


@pytest.mark.parametrize("ms", [0, 1516324157242, MAX_TRIGGER_MS, MIN_TRIGGER_MS])
def test_trigger_timestamps_in_range_are_ints(ms: int) -> None:
    ev = parse_envelope(json.dumps(envelope_with(triggerTimestamp=ms)))
    assert (ev.trigger_ts, ev.problems, ev.raw_fields) == (ms, [], {})
    assert ev.triggered_at is not None


@pytest.mark.parametrize(
    ("value", "typed"),
    [("an-id", "an-id"), (42, "42"), (1.5, "1.5"), (True, None), ({"a": 1}, None), ([1, "x"], None), (None, None)],
)
def test_text_fields_are_text_and_refused_values_stay_readable(value: Any, typed: str | None) -> None:
    sample = faq_sample()
    sample["envelopeType"] = value
    sample[PIPELINE_MESSAGE]["header"].update(messageId=value, imsOrg=value, messageType=value)
    sample[PIPELINE_MESSAGE][TRIGGER_BODY].update(triggerId=value, mcId=value)
    ev = parse_envelope(json.dumps(sample))
    assert ev.parse_error is None and ev.problems == []
    names = {"envelopeType": ev.envelope_type, "messageId": ev.message_id, "imsOrg": ev.ims_org,
             "messageType": ev.message_type, "triggerId": ev.trigger_id, "mcId": ev.mc_id}
    for name, field_value in names.items():
        assert field_value == typed and (field_value is None or type(field_value) is str), name
        assert ev.raw(name) == value, name  # what the validation reason shows
    expected_raw = {} if value is None or isinstance(value, str) else dict.fromkeys(names, value)
    assert ev.raw_fields == expected_raw
    # identity rules read the value as the envelope gave it, as text
    assert ev.field_value("mcId") == (None if value is None else str(value).strip())


@pytest.mark.parametrize(("value", "typed"), [(7, 7), (-1, -1), (2**70, 2**70), ("7", None), (7.0, None), (True, None)])
def test_integer_fields_are_ints(value: Any, typed: int | None) -> None:
    sample = faq_sample()
    sample.update(partition=value, offset=value, createTime=value)
    sample[PIPELINE_MESSAGE]["header"]["sentTime"] = value
    ev = parse_envelope(json.dumps(sample))
    for name, field_value in {"partition": ev.partition, "offset": ev.offset, "createTime": ev.create_time,
                              "sentTime": ev.sent_time}.items():
        assert field_value == typed and (typed is None or type(field_value) is int), name
        assert ev.raw(name) == value
    assert ev.raw_fields == ({} if typed is not None else dict.fromkeys(["partition", "offset", "createTime", "sentTime"], value))


def test_missing_trigger_timestamp_is_left_to_the_not_null_expectation() -> None:
    sample = faq_sample()
    del sample[PIPELINE_MESSAGE][TRIGGER_BODY]["triggerTimestamp"]
    ev = parse_envelope(sample)
    assert (ev.trigger_ts, ev.problems) == (None, [])


def test_bytes_are_decoded_with_replacement_and_a_bom_is_allowed() -> None:
    good = json.dumps(faq_sample()).encode()
    assert parse_envelope(b"\xef\xbb\xbf" + good).message_id == MESSAGE_ID
    broken = good.replace(b'"triggers"', b'"trig\xffgers"', 1)
    ev = parse_envelope(broken)
    assert ev.parse_error is None and ev.topic == "trig\ufffdgers"
    assert parse_envelope(json.dumps(faq_sample()).encode("utf-16")).message_id == MESSAGE_ID


def test_clean_text_reports_what_it_replaced() -> None:
    assert clean_text("plain é 🛒\t\n") == ("plain é 🛒\t\n", ())
    assert clean_text("a\x00b\ud800") == ("a\ufffdb\ufffd", (TextProblem.CONTROL, TextProblem.INVALID))


@pytest.mark.parametrize(
    "payload",
    ["", "   ", "\ufeff{}", "\x00", "\ud800", b"", b"\x00\x00", b"\xff" * 10, "[" * 65, "{" * 100_000, '"' + "\\" * 1001,
     '{"a":' * 64 + "1" + "}" * 64, "1" * 5000, "-" + "9" * 5000],
)
def test_odd_payloads_give_a_parse_error_never_an_exception(payload: Any) -> None:
    ev = parse_envelope(payload)
    assert ev.parse_error is not None
    assert ev.trigger_id is None and ev.trigger_ts is None


def test_a_dict_payload_nested_beyond_recursion_gives_a_parse_error() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5_000):
        node["a"] = {}
        node = node["a"]
    assert parse_envelope(deep).parse_error == "payload could not be parsed (RecursionError)"
