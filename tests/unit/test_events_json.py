"""events.loads_json (msgspec, with the json module behind it) gives exactly what json.loads gives:
the same values (exact big integers, NaN, lone surrogates...) and the same error messages, for
hand-picked edge cases and for many mutated envelopes."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from include.triggerflow.events import loads_json, parse_envelope
from tests.fixtures import envelope_json

EDGE_CASES = [
    '{"a":1,"a":2}', '{"a":123456789012345678901234567890}', '{"a":-9223372036854775809}', '{"a":18446744073709551616}',
    '{"a":NaN}', '{"a":Infinity}', '{"a":-Infinity}', '{"a":"\\ud800"}', '[1e400]', '{"a":1.0000000000000002}',
    '{"a":-0}', '{"a":-0.0}', '{"a": 1} x', '{"a":1E2}', '{"a":1.5e-400}', '{"a":"\\u0000\\u00e9"}', '12345678901234567890123',
    '{"a":"x\ny"}', '{"a":01}', '{"a":+1}', '{"a":1,}', "{'a':1}", '{"a":1.}', '{"a":.5}', '\ufeff{"a":1}', ' \t\r\n{"a":1}',
    '{"a":"\\x"}', '{"a":tru}', '', 'not even an object', '[1, 2]', '"text"', 'null', '[' * 3000 + ']' * 3000,
]


def outcome(func: Any, text: str) -> Any:
    try:
        return "ok", func(text)
    except Exception as exc:
        return type(exc).__name__, str(exc)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("text", EDGE_CASES)
def test_edge_cases_decode_like_the_json_module(text: str) -> None:
    assert same(outcome(loads_json, text), outcome(json.loads, text))


def test_mutated_envelopes_decode_like_the_json_module() -> None:
    rng = random.Random(11)
    base = envelope_json(products=["TRL-RUN-42", "MRN-WOOL-SCK"])
    alphabet = '{}[]":,0123456789-+.eE \n\t\\ufntrlasxNaIy'
    for _ in range(20_000):
        chars = list(base)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(chars))
            op = rng.random()
            if op < 0.4:
                chars[pos] = rng.choice(alphabet)
            elif op < 0.7:
                del chars[pos]
            else:
                chars.insert(pos, rng.choice(alphabet))
        text = "".join(chars)
        assert same(outcome(loads_json, text), outcome(json.loads, text)), text


def test_parse_errors_keep_the_json_modules_message() -> None:
    assert parse_envelope("not even an object").parse_error == (
        "payload is not valid JSON: Expecting value: line 1 column 1 (char 0)"
    )
    assert parse_envelope(b'{"envelopeType": "DATA"}').envelope_type == "DATA"  # bytes: the json module
