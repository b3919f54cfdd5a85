"""include.triggerflow.sources.bounded: the line splitter (linear, capped) and the JSON scanner that
finds members without recursion, checked against bytes.split and json.loads on generated input."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from include.triggerflow.sources.bounded import (
    LineSplitter,
    array_elements,
    index_at,
    object_members,
    scalar,
    strip_span,
)


def split_all(data: bytes, cuts: list[int], cap: int) -> list[tuple[bytes | None, int]]:
    splitter = LineSplitter(cap)
    out: list[tuple[bytes | None, int]] = []
    start = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts} | {len(data)}):
        out += splitter.feed(data[start:cut])
        start = cut
    tail = splitter.finish()
    if tail is not None:
        out.append(tail)
    return out


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=12),
    trailing_newline=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
    cap=st.integers(min_value=1, max_value=30),
)
def test_splitter_matches_split_with_the_cap_whatever_the_chunks(lines, trailing_newline, cuts, cap) -> None:
    data = b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")
    got = split_all(data, cuts, cap)
    expected_lines = data.split(b"\n")
    if data.endswith(b"\n") or not data:
        expected_lines = expected_lines[:-1]
    expected = []
    for i, line in enumerate(expected_lines):
        last_without_newline = i == len(expected_lines) - 1 and not data.endswith(b"\n")
        size = len(line) + (0 if last_without_newline else 1)
        expected.append((line if len(line) <= cap else None, size))
    assert got == expected
    assert sum(size for _, size in got) == len(data)  # every byte accounted for


def test_splitter_holds_no_more_than_the_cap_of_a_line_without_newline() -> None:
    splitter = LineSplitter(1000)
    for _ in range(500):
        assert list(splitter.feed(b"x" * 4096)) == []
        assert sum(len(p) for p in splitter._parts) <= 1000
    assert list(splitter.feed(b"tail\nok\n")) == [(None, 500 * 4096 + 5), (b"ok", 3)]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(doc=st.dictionaries(st.text(max_size=8), json_values, max_size=6), spaced=st.booleans())
def test_object_members_agree_with_json_loads(doc: dict[str, Any], spaced: bool) -> None:
    data = json.dumps(doc, indent=1 if spaced else None, ensure_ascii=False).encode("utf-8")
    members = object_members(data)
    assert members is not None
    assert set(members) == set(doc)
    for key, span in members.items():
        assert json.loads(strip_span(data, span)) == doc[key]


@settings(max_examples=100, deadline=None)
@given(items=st.lists(json_values, max_size=6))
def test_array_elements_agree_with_json_loads(items: list[Any]) -> None:
    data = json.dumps(items).encode()
    spans = array_elements(data)
    assert spans is not None
    assert [json.loads(strip_span(data, s)) for s in spans] == items


def test_members_are_found_at_any_depth_without_recursion() -> None:
    depth = 200_000
    data = b'{"envelopeType":"DATA","partition":7,"body":' + b"[" * depth + b"]" * depth + b',"offset":1234}'
    members = object_members(data)
    assert members is not None
    assert scalar(data, members["envelopeType"]) == "DATA"
    assert (index_at(data, members["partition"]), index_at(data, members["offset"])) == (7, 1234)


def test_scanner_refuses_what_is_not_a_whole_object() -> None:
    for data in (b"", b"[1]", b'{"a":1', b'{"a":"unterminated}', b"{" * 1000, b"nope", b'{"a":1}}'[:-2]):
        assert object_members(data) is None, data


def test_index_at_accepts_only_offsets_a_position_can_hold() -> None:
    data = b'{"a":12,"b":-1,"c":1.5,"d":"3","e":1234567890123456789}'
    members = object_members(data)
    assert members is not None
    assert [index_at(data, members[k]) for k in "abcde"] == [12, None, None, None, None]
