"""Hypothesis strategies for hostile trigger messages.

Adobe Analytics hits are unauthenticated: any text, number or shape can arrive in any field of a
trigger. These strategies generate that: text with NUL, C0/C1 controls, lone surrogates, BOMs,
bidi overrides and emoji; numbers from NaN to beyond 64 bits; arbitrary JSON values put in place
of any field of a good envelope; raw bytes; nesting deeper than the parser accepts.

Profiles (tests/unit/fuzz/conftest.py): ``ci`` by default (50 derandomized examples per test),
``long`` with ``HYPOTHESIS_PROFILE=long`` (2,000 random examples per test).
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any, cast

from hypothesis import strategies as st

from devstack.messages import CART_ABANDONMENT_TRIGGER_ID, envelope, trigger_message
from include.triggerflow.events import PIPELINE_MESSAGE, TRIGGER_BODY

#: characters that broke (or could break) a stage: NUL, controls, surrogates, BOM, bidi, zero-width
NASTY_CHARS = "\x00\x01\x08\x0b\x1b\x1f\x7f\x85\x9f\ufeff\u202e\u200b\ufffd\U0001f6d2é"

hostile_chars = st.one_of(
    st.characters(),
    st.sampled_from(NASTY_CHARS),
    st.integers(0xD800, 0xDFFF).map(chr),  # lone surrogates: st.characters() never makes them
)
hostile_text = st.text(hostile_chars, max_size=40)

hostile_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=2**62, max_value=2**80),
    st.integers(min_value=-(2**80), max_value=-(2**62)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e30, -1e30, 2**63, 2**64, -(2**63) - 1, 0, -1, 1516324157242, 1516324157242.5]),
)

json_scalars = st.one_of(st.none(), st.booleans(), hostile_numbers, hostile_text)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(hostile_text, inner, max_size=4),
    ),
    max_leaves=12,
)

#: where a fuzzed value may replace part of a good envelope (path below the envelope root)
_BODY = (PIPELINE_MESSAGE, TRIGGER_BODY)
_HEADER = (PIPELINE_MESSAGE, "header")
_DIMS = (*_BODY, "enrichments", "analyticsHitSummary", "dimensions")
FIELD_PATHS: tuple[tuple[str | int, ...], ...] = (
    ("envelopeType",),
    (PIPELINE_MESSAGE,),
    (*_HEADER, "messageId"),
    (*_HEADER, "properties"),
    _HEADER,
    (*_BODY, "triggerId"),
    (*_BODY, "triggerTimestamp"),
    (*_BODY, "mcId"),
    (*_BODY, "enrichments"),
    (*_BODY, "triggerPath"),
    _DIMS,
    (*_DIMS, "eVar01"),
    (*_DIMS, "eVar01", "data"),
    (*_DIMS, "eVar01", "data", 0),
    (*_DIMS, "pageURL", "data", 0),
    (*_BODY, "enrichments", "analyticsHitSummary", "products"),
)


def good_envelope(now_ms: int, shopper_id: str = "SHOP-ADA") -> dict[str, Any]:
    """A valid cart-abandonment envelope for ``shopper_id``, unique message id, fired at ``now_ms``."""
    message = trigger_message(
        trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id=shopper_id, triggered_at_ms=now_ms,
        message_id=str(uuid.uuid4()),
    )
    return envelope(message, partition=0, offset=1)


def _set(doc: Any, path: tuple[str | int, ...], value: Any) -> None:
    for key in path[:-1]:
        if (isinstance(doc, dict) and key in doc) or (isinstance(doc, list) and isinstance(key, int) and key < len(doc)):
            doc = cast(Any, doc)[key]  # a dict key or an index in range, checked just above
        else:
            return
    last = path[-1]
    if (isinstance(doc, dict) and isinstance(last, str)) or (isinstance(doc, list) and isinstance(last, int) and last < len(doc)):
        cast(Any, doc)[last] = value


@st.composite
def mutated_envelopes(draw: st.DrawFn, now_ms: int) -> dict[str, Any]:
    """A good envelope with one to three fields replaced by arbitrary JSON values."""
    doc = copy.deepcopy(good_envelope(now_ms))
    for path in draw(st.lists(st.sampled_from(FIELD_PATHS), min_size=1, max_size=3)):
        _set(doc, path, draw(json_values))
    return doc


def dumps(value: Any, ascii_only: bool) -> str:
    """JSON text as a producer would write it; NaN/Infinity and lone surrogates included."""
    return json.dumps(value, ensure_ascii=ascii_only)


@st.composite
def hostile_payloads(draw: st.DrawFn, now_ms: int) -> str | bytes:
    """One message as a source hands it over: text or bytes, any shape."""
    kind = draw(st.sampled_from(["mutated", "mutated-bytes", "value", "text", "bytes", "deep", "cut"]))
    if kind in ("mutated", "mutated-bytes"):
        text = dumps(draw(mutated_envelopes(now_ms)), draw(st.booleans()))
        return text.encode("utf-8", "surrogatepass") if kind == "mutated-bytes" else text
    if kind == "value":
        return dumps(draw(json_values), draw(st.booleans()))
    if kind == "text":
        return draw(st.text(hostile_chars, max_size=200))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        depth = draw(st.integers(min_value=1, max_value=5_000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return opener * depth + "1" + closer * draw(st.integers(min_value=0, max_value=depth))
    # a good envelope cut short, with a byte order mark maybe
    text = dumps(good_envelope(now_ms), True)
    cut = draw(st.integers(min_value=0, max_value=len(text)))
    return ("\ufeff" if draw(st.booleans()) else "") + text[:cut]
