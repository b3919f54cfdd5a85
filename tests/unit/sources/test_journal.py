"""Tests for include.triggerflow.sources.journal's page parsing, in-process (no server). Reads
against the emulator process are in tests/integration/sources/test_journal.py; its retry rules in
tests/unit/adobe/test_http.py and, through real HTTP, tests/unit/sources/test_readers_inthread.py."""

from __future__ import annotations

import json

import pytest

from include.triggerflow.sources.base import SourceError
from include.triggerflow.sources.journal_page import JOURNAL_PARTITION, parse_page


# -- hostile pages (issue 10): the page decoder alone, on bytes no server of ours would send -------------
def page_bytes(items: list[bytes], last: str | None) -> bytes:
    tail = b"" if last is None else b',"_page":{"last":' + json.dumps(last).encode() + b',"count":1}'
    return b'{"events":[' + b",".join(items) + b"]" + tail + b"}"


def item(position: bytes, event: bytes) -> bytes:
    return b'{"position":' + position + b',"event":{"event_id":"e","event":' + event + b"}}"


def test_items_without_a_usable_position_are_counted_and_the_page_advances() -> None:
    ok = b'{"envelopeType":"DATA"}'
    content = page_bytes(
        [item(b'"v2:1"', ok), item(b"null", ok), item(b'{"a":1}', ok), item(b'"v2:1"', ok), item(b'"v2:3"', ok),
         b'{"event":{"event":{}}}'],
        last="v2:9",
    )
    page = parse_page(content)
    assert page is not None
    assert [m.position for m in page.messages] == ["v2:1", "v2:3"]
    assert page.dropped == {"journal item without a position": 3, "journal position repeated in one page": 1}
    assert page.next_positions == {JOURNAL_PARTITION: "v2:9"}


def test_page_nested_deeper_than_the_decoder_is_split_without_recursion() -> None:
    deep = b'{"envelopeType":"DATA","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    bad_utf8 = b'{"envelopeType":"DATA","x":"\xff"}'
    content = page_bytes([item(b'"v2:1"', deep), item(b'"v2:2"', bad_utf8), item(b'"v2:3"', b'"a \\u00e9 string"')], last="v2:3")
    page = parse_page(content)
    assert page is not None
    assert [(m.position, m.payload) for m in page.messages] == [
        ("v2:1", deep.decode()), ("v2:2", bad_utf8), ("v2:3", "a \u00e9 string"),
    ]
    assert page.next_positions == {JOURNAL_PARTITION: "v2:3"} and page.dropped == {}


def test_lone_surrogate_escapes_neither_stall_the_page_nor_reach_text() -> None:
    # msgspec refuses a lone surrogate escape even in what it skips: the scanner takes over
    as_string = b'"x \\ud800 y"'
    in_envelope = b'{"envelopeType":"DATA","eVar01":"\\ud800"}'
    content = page_bytes([item(b'"v2:1"', as_string), item(b'"v2:2"', in_envelope)], last="v2:2")
    page = parse_page(content)
    assert page is not None
    # kept as the JSON text received (no text with a lone surrogate is ever made)
    assert [(m.position, m.payload) for m in page.messages] == [
        ("v2:1", as_string.decode()), ("v2:2", in_envelope.decode()),
    ]


def test_page_without_any_position_is_a_source_error_not_a_silent_stall() -> None:
    content = page_bytes([item(b"null", b"{}")], last=None)
    with pytest.raises(SourceError, match="no usable position"):
        parse_page(content)
