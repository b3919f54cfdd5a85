"""What landing makes of a delivered message: storable text, and why it differs from what arrived.

Landing never fails on content (see :mod:`include.triggerflow.stages.land`): bytes are decoded as
UTF-8 with replacement, a leading byte order mark is removed, NUL and lone surrogates (which no
store can hold as text) are replaced, and a message over the size cap keeps its first bytes with
its real size. Each change is named by a :class:`LandingNote`; validate quarantines on them
(except :data:`BENIGN_NOTES`). Pure functions: no store access.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from include.triggerflow.event_json import clean_text

#: Pipeline's own limit for one message (reference/adobe-triggers.md §1.7): anything larger did not
#: come from Adobe as sent and is quarantined with its size.
MAX_MESSAGE_BYTES = 1024 * 1024
#: message_id / trigger_id columns are String(200)
ID_LIMIT = 200
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
UTF8_BOM = b"\xef\xbb\xbf"
# What no store can hold in a text column: NUL (PostgreSQL) and lone surrogates (both).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class LandingNote(StrEnum):
    """Why a stored payload differs from what arrived (``tf_event.landing_note``, "; "-joined).

    The size note carries the limit: :func:`oversize_note`."""

    INVALID_UTF8 = "invalid UTF-8"
    BOM_REMOVED = "byte order mark removed"
    NUL_REPLACED = "NUL replaced"
    INVALID_TEXT = "lone surrogate replaced"
    UNSTORABLE = "the store refused the message as text; only its raw bytes are kept"


#: notes that do not make an event invalid: RFC 8259 lets a parser ignore a byte order mark
BENIGN_NOTES = frozenset({LandingNote.BOM_REMOVED})


def oversize_note(limit: int) -> str:
    return f"message larger than {limit} bytes"


@dataclass(frozen=True)
class LandedPayload:
    """A message made storable: the text to store, and what arrived when it differs."""

    payload: str
    raw_size: int  # bytes as received, before any cap
    raw_payload: bytes | None = None  # what arrived (capped), only when ``payload`` differs
    notes: tuple[str, ...] = ()

    @property
    def landing_note(self) -> str | None:
        return "; ".join(self.notes) or None


def prepare_payload(payload: str | bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> LandedPayload:
    """Turn whatever a source delivered into text every store can hold; never raises."""
    notes: list[str] = []
    data: bytes | None = None
    if isinstance(payload, str):
        text = payload
        if text.isascii():
            size = len(text)
        else:  # surrogatepass: a str holding a lone surrogate still has bytes to keep
            data = text.encode("utf-8", "surrogatepass")
            size = len(data)
    else:
        data = bytes(payload)
        size = len(data)
        text = ""
    if size > max_bytes:
        if data is None:
            data = text.encode("utf-8", "surrogatepass")
        data = _cut(data, max_bytes)
        notes.append(oversize_note(max_bytes))
        payload = data  # the cut bytes are decoded below like any delivered bytes
    if not isinstance(payload, str):
        assert data is not None
        body = data
        if body.startswith(UTF8_BOM):
            body = body[len(UTF8_BOM):]
            notes.append(LandingNote.BOM_REMOVED)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = body.decode("utf-8", errors="replace")
            notes.append(LandingNote.INVALID_UTF8)
    elif text.startswith("\ufeff"):
        text = text[1:]
        notes.append(LandingNote.BOM_REMOVED)
    # Text decoded from bytes, or ASCII, can hold no surrogate: a substring test settles it.
    may_hold_surrogate = isinstance(payload, str) and not text.isascii()
    if ("\x00" in text) if not may_hold_surrogate else _UNSTORABLE.search(text) is not None:
        if "\x00" in text:
            notes.append(LandingNote.NUL_REPLACED)
        if _SURROGATE.search(text) is not None:
            notes.append(LandingNote.INVALID_TEXT)
        text = _UNSTORABLE.sub("\ufffd", text)
    if not notes:
        # bytes that decoded cleanly are stored as their text; nothing else to keep
        return LandedPayload(payload=text, raw_size=size)
    if data is None:
        data = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else bytes(payload)
    return LandedPayload(payload=text, raw_size=size, raw_payload=data[:max_bytes], notes=tuple(notes))


def _cut(data: bytes, limit: int) -> bytes:
    """The first ``limit`` bytes, backed off to a UTF-8 character boundary when the cut falls
    inside one (so a cap alone never reads as invalid UTF-8)."""
    end = limit
    while end > 0 and limit - end < 3 and (data[end] & 0xC0) == 0x80:
        end -= 1
    return data[:end] if (data[end] & 0xC0) != 0x80 else data[:limit]


def id_text(value: Any) -> str | None:
    """An id column's value: text without NUL or lone surrogates, at most ID_LIMIT characters.
    Containers and booleans are not ids."""
    if value is None or isinstance(value, (bool, dict, list)):
        return None
    text = clean_text(value if isinstance(value, str) else str(value))[0]
    return text[:ID_LIMIT]


def bigint_or_none(value: int | None) -> int | None:
    """A trigger timestamp the BIGINT column can hold, else None."""
    return value if value is not None and BIGINT_MIN <= value <= BIGINT_MAX else None
