"""One I/O Events journal page, parsed: its items' positions and pipeline envelopes.

The page is split without judging the items: an envelope is handed over as the bytes it arrived
as (text when valid UTF-8), an item without a usable position is counted as dropped, and a page
nested deeper than the JSON decoder follows is split by the non-recursive scanner
(sources/bounded.py). Validation, later, says what is wrong with each message.
"""

from __future__ import annotations

from typing import Any

import msgspec

from include.triggerflow.sources.base import Page, RawMessage, SourceError
from include.triggerflow.sources.bounded import array_elements, object_members, scalar

JOURNAL_PARTITION = 0
NO_POSITION = "journal item without a position"


# The page is decoded with msgspec (installed with Airflow) into these shapes, and each pipeline
# envelope is kept as the raw bytes it arrived as: decoding a whole page with json and re-encoding
# every envelope cost ~90 us per message, the slowest step of a backlog drain.
class _Wrapped(msgspec.Struct):
    """An I/O Events event: ``{"event_id", "event": <pipeline envelope>}``."""

    event: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


class _Item(msgspec.Struct):
    position: Any = None
    event: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


class _PageInfo(msgspec.Struct):
    last: Any = None


class _Body(msgspec.Struct):
    events: list[_Item] | None = None
    _page: _PageInfo | None = msgspec.field(default=None, name="_page")


_decode_body = msgspec.json.Decoder(_Body).decode
_decode_wrapped = msgspec.json.Decoder(_Wrapped).decode


def _text_or_bytes(raw: bytes) -> str | bytes:
    """Valid UTF-8 as text; anything else as received, for landing to decode with replacement."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _payload(inner: bytes) -> str | bytes:
    """The envelope of one journal item: the inner ``event`` of an I/O Events wrapper, or the
    item's event itself; a JSON string is stored as its text (as landed before). Never raises."""
    raw = inner
    if raw[:1] == b"{":
        try:
            wrapped = _decode_wrapped(raw)
            if len(wrapped.event):
                raw = bytes(wrapped.event)
        except (msgspec.DecodeError, RecursionError):
            # too deep, or not strict JSON (a lone surrogate escape, NaN): the scanner finds the
            # inner event without recursing or judging it
            members = object_members(raw)
            if members is not None and "event" in members:
                start, end = members["event"]
                raw = raw[start:end].strip()
    if raw[:1] == b'"':
        try:
            text = msgspec.json.decode(raw)
            if isinstance(text, str):
                text.encode("utf-8")  # a lone surrogate escape cannot be stored as text
                return text
        except (msgspec.DecodeError, UnicodeEncodeError):
            pass
    return _text_or_bytes(raw)


def _items_without_recursion(content: bytes) -> tuple[list[tuple[Any, bytes]], Any] | None:
    """(position, event bytes) of each item and ``_page.last`` of a page nested too deep for the
    decoder, found by the non-recursive scanner; None if it is not a journal page."""
    page = object_members(content)
    if page is None or "events" not in page:
        return None
    elements = array_elements(content, *page["events"])
    if elements is None:
        return None
    items: list[tuple[Any, bytes]] = []
    for start, end in elements:
        members = object_members(content, start, end) or {}
        position = scalar(content, members["position"]) if "position" in members else None
        event = content[members["event"][0] : members["event"][1]].strip() if "event" in members else b""
        items.append((position, event))
    last = None
    info = object_members(content, *page["_page"]) if "_page" in page else None
    if info and "last" in info:
        last = scalar(content, info["last"])
    return items, last


def position_text(value: Any) -> str | None:
    """A journal position as stored (tf_source_position), or None when the item has none."""
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        return None
    text = str(value)
    if not text or len(text) > 200 or any(ch in text for ch in "\x00\r\n"):
        return None
    return text


def parse_page(content: bytes) -> Page | None:
    """The page of a 200 journal answer; None when it has no items. Never lets an item's content
    fail the page: only a page without any usable position is an error (SourceError)."""
    entries: list[tuple[Any, bytes | msgspec.Raw]]
    try:
        body = _decode_body(content)
        entries = [(item.position, item.event) for item in body.events or []]
        last: Any = body._page.last if body._page is not None else None
    except (msgspec.DecodeError, RecursionError) as exc:
        # An item nested deeper than the decoder follows, or not strict JSON (a lone
        # surrogate escape, NaN): split the page with the scanner, which neither recurses nor
        # judges the items; validation says what is wrong with each.
        found = _items_without_recursion(content)
        if found is None:
            raise SourceError(f"journal answered 200 with a body that is not a journal page: {exc}") from None
        entries, last = found
    if not entries:
        return None
    messages: list[RawMessage] = []
    dropped: dict[str, int] = {}
    seen: set[str] = set()
    for position, event in entries:
        text = position_text(position)
        if text is None or text in seen:
            reason = NO_POSITION if text is None else "journal position repeated in one page"
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        seen.add(text)
        messages.append(RawMessage(partition=JOURNAL_PARTITION, position=text, payload=_payload(bytes(event))))
    next_position = position_text(last) or (messages[-1].position if messages else None)
    if next_position is None:
        raise SourceError(
            f"journal page of {len(entries)} items has no usable position (no _page.last and no item "
            "position): the stored position cannot advance"
        )
    return Page(
        messages=messages, next_positions={JOURNAL_PARTITION: next_position}, bytes_read=len(content),
        dropped=dropped,
    )
