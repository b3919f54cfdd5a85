"""Fuzzing the envelope parser: on any JSON value, text or bytes, ``parse_envelope`` returns, and
what it returns is safe to store and render.

Bounded by the ``ci`` Hypothesis profile in the default suite; ``HYPOTHESIS_PROFILE=long`` runs
2,000 random examples per test (tests/unit/fuzz/conftest.py)."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from include.triggerflow.events import (
    MAX_PROBLEMS,
    MAX_TRIGGER_MS,
    MIN_TRIGGER_MS,
    TriggerEvent,
    parse_envelope,
)
from tests.unit.fuzz.strategies import (
    dumps,
    hostile_chars,
    hostile_payloads,
    json_values,
    mutated_envelopes,
)

NOW_MS = 1_772_366_400_000
# what must never leave the parser in a string: NUL, C0 but tab/LF/CR, DEL, C1, lone surrogates
BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def strings_in(value: Any) -> list[str]:
    """Every key and string inside ``value`` (recursively)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*strings_in(k), *strings_in(v))]
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in strings_in(item)]
    return []


def assert_safe(ev: TriggerEvent) -> None:
    assert isinstance(ev, TriggerEvent)
    assert ev.trigger_ts is None or (
        type(ev.trigger_ts) is int and MIN_TRIGGER_MS <= ev.trigger_ts <= MAX_TRIGGER_MS
    )
    assert ev.parse_error is None or isinstance(ev.parse_error, str)
    # the typed fields hold their type or None, whatever the payload (refused values are in raw_fields)
    for text in (ev.envelope_type, ev.message_id, ev.trigger_id, ev.mc_id, ev.ims_org, ev.topic, ev.message_type):
        assert text is None or type(text) is str
    for number in (ev.partition, ev.offset, ev.create_time, ev.sent_time):
        assert number is None or type(number) is int
    assert isinstance(ev.raw_fields, dict) and isinstance(ev.dimensions, dict) and isinstance(ev.products, dict)
    # text problems are capped; the timestamp and enrichments problems come on top
    assert len(ev.problems) <= MAX_PROBLEMS + 2
    lifted = [ev.envelope_type, ev.message_id, ev.trigger_id, ev.mc_id, ev.ims_org, ev.topic, ev.message_type,
              ev.properties, ev.dimensions, ev.products, ev.trigger_path, ev.problems, ev.parse_error]
    for text in strings_in(lifted):
        assert BAD.search(text) is None, repr(text)
        text.encode("utf-8")  # storable everywhere
    # what routing, reconciliation and templates call on an event
    for name in [*list(ev.dimensions)[:5], "eVar01", "pageURL"]:
        ev.dimension_values(name)
        first = ev.dimension_first(name)
        assert first is None or BAD.search(first) is None
    for path in ("mcId", "messageId", "triggerId", "header.imsOrg"):
        ev.field_value(path)
    ev.pages()
    ev.product_list()
    ev.triggered_at  # noqa: B018 - must not raise
    json.dumps(ev.problems)


@given(json_values, st.booleans())
def test_any_json_value_parses(value: Any, ascii_only: bool) -> None:
    text = dumps(value, ascii_only)
    assert_safe(parse_envelope(text))
    assert_safe(parse_envelope(text.encode("utf-8", "surrogatepass")))
    if isinstance(value, dict):
        assert_safe(parse_envelope(value))


@given(mutated_envelopes(NOW_MS), st.booleans())
@example(  # the reproductions, always tried
    {"com.adobe.mcloud.pipeline.pipelineMessage": {"header": {"messageId": "\ud800"},
     "com.adobe.mcloud.protocol.trigger": {"triggerId": "x\x00", "triggerTimestamp": 2**70}}},
    False,
)
def test_any_envelope_with_hostile_fields_parses(doc: dict[str, Any], ascii_only: bool) -> None:
    text = dumps(doc, ascii_only)
    from_text = parse_envelope(text)
    assert_safe(from_text)
    assert_safe(parse_envelope(doc))
    # One normalisation, whatever the input form: text (where most envelopes skip the walk) gives
    # what its decoded value gives. (Not ``doc`` itself: JSON text joins a surrogate pair that a
    # Python str keeps as two lone surrogates.)
    from_dict = parse_envelope(json.loads(text))
    assert from_text.problems == from_dict.problems
    assert (from_text.trigger_id, from_text.trigger_ts, from_text.message_id) == (
        from_dict.trigger_id, from_dict.trigger_ts, from_dict.message_id,
    )


@given(st.text(hostile_chars, max_size=300))
def test_any_text_parses(text: str) -> None:
    assert_safe(parse_envelope(text))


@given(st.binary(max_size=300))
def test_any_bytes_parse(data: bytes) -> None:
    assert_safe(parse_envelope(data))


@given(hostile_payloads(NOW_MS))
def test_any_payload_a_source_may_deliver_parses(payload: str | bytes) -> None:
    assert_safe(parse_envelope(payload))
