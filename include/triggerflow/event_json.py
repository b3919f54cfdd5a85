"""JSON decoding and text cleaning of event payloads: bounded, never raising on hostile input.

What :func:`events.parse_envelope` builds on, and what landing uses on its own (``clean_text`` on
the payload text):

* JSON nested deeper than :data:`MAX_DEPTH` is refused before any decoder recurses into it;
* :func:`loads_json` is ``json.loads`` through msgspec where that gives the same value;
* :func:`clean_text` / :class:`Cleaner` replace lone surrogates and control characters (NUL, C0
  other than tab, newline and carriage return, DEL, C1) in keys and strings with U+FFFD, so they
  reach neither the store (PostgreSQL refuses NUL, both stores refuse lone surrogates) nor a
  template, and name where each was found ("control character in eVar01").
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Any

__all__ = [
    "LABEL_LIMIT",
    "MAX_DEPTH",
    "MAX_PROBLEMS",
    "PIPELINE_MESSAGE",
    "REPLACEMENT",
    "TRIGGER_BODY",
    "Cleaner",
    "TextProblem",
    "clean_text",
    "decode_json",
    "decode_payload",
    "loads_json",
    "may_hold_bad",
    "nesting_exceeds",
]

PIPELINE_MESSAGE = "com.adobe.mcloud.pipeline.pipelineMessage"
TRIGGER_BODY = "com.adobe.mcloud.protocol.trigger"

#: Deepest JSON nesting accepted. Adobe's envelope nests 7 levels; json and msgspec both recurse
#: per level, so a hit nested 100,000 deep must be refused before either sees it.
MAX_DEPTH = 64
#: at most this many problems are listed per event (a hit can carry thousands of bad strings)
MAX_PROBLEMS = 20
LABEL_LIMIT = 40
REPLACEMENT = "\ufffd"


class TextProblem(StrEnum):
    """What normalisation found in a string of the event."""

    CONTROL = "control character"  # NUL, C0 other than tab/LF/CR, DEL, C1
    INVALID = "invalid text"  # a lone surrogate (an escape JSON allows, no encoding can store)


# Tab, newline and carriage return are ordinary in free text and every store keeps them.
_CONTROL = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_SURROGATE = "\ud800-\udfff"
_BAD_CHAR = re.compile(f"[{_CONTROL}{_SURROGATE}]")
_CONTROL_CHAR = re.compile(f"[{_CONTROL}]")
_SURROGATE_CHAR = re.compile(f"[{_SURROGATE}]")
# An escape that decodes to a bad character (\b, \f, \u0000-\u001f, \u007f-\u009f, \ud800-\udfff).
_BAD_ESCAPE = re.compile(r"\\(?:[bf]|u(?:00[0189]|007[fF]|[dD][89a-fA-F]))")
# A JSON string (escapes included) or one bracket: the depth scan skips brackets inside strings.
_STRUCTURE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.S)
# Keys of the envelope's containers: a problem is named after the first key below them, so an
# eVar reads "eVar01" and a header field "messageId".
_CONTAINER_KEYS = frozenset(
    {PIPELINE_MESSAGE, TRIGGER_BODY, "header", "enrichments", "analyticsHitSummary", "dimensions"}
)

_fast_decode: Callable[[str], Any] | None
try:  # msgspec (installed with Airflow) decodes a 2 KB envelope in half the time of the json module
    import msgspec as _msgspec

    _fast_decode = _msgspec.json.Decoder().decode
    _FAST_ERRORS: tuple[type[BaseException], ...] = (_msgspec.MsgspecError, ValueError, RecursionError)
except ImportError:  # pragma: no cover - msgspec is pinned in requirements.txt
    _fast_decode = None
    _FAST_ERRORS = ()


def loads_json(text: str | bytes) -> Any:
    """``json.loads``, faster, with the same values and the same errors.

    msgspec decodes the common case (big integers stay exact ints, as with the json module). What
    it refuses and the json module accepts (NaN, Infinity, numbers beyond float range, lone
    surrogates) or refuses differently (invalid JSON) goes to the json module, so a value and an
    error message are always exactly those of ``json.loads``.
    """
    if _fast_decode is not None and isinstance(text, str):
        try:
            return _fast_decode(text)
        except _FAST_ERRORS:
            pass
    return json.loads(text)


def clean_text(text: str) -> tuple[str, tuple[TextProblem, ...]]:
    """``text`` with lone surrogates and control characters replaced by U+FFFD, and what was found.

    The one place event text is made safe for the store and templates (landing uses it for the
    payload text, parsing for every key and string of the envelope)."""
    if _BAD_CHAR.search(text) is None:
        return text, ()
    found: list[TextProblem] = []
    if _CONTROL_CHAR.search(text) is not None:
        found.append(TextProblem.CONTROL)
    if _SURROGATE_CHAR.search(text) is not None:
        found.append(TextProblem.INVALID)
    return _BAD_CHAR.sub(REPLACEMENT, text), tuple(found)


def nesting_exceeds(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text nests arrays/objects deeper than ``limit``, found without recursion.

    Brackets inside strings do not count. Text with fewer brackets than ``limit`` cannot nest
    deeper, which settles nearly every envelope with two C-speed counts."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for match in _STRUCTURE.finditer(text):
        token = match.group()
        if token[0] == '"':
            continue
        if token in "[{":
            depth += 1
            if depth > limit:
                return True
        elif depth:
            depth -= 1
    return False


def decode_payload(payload: bytes) -> str:
    """Bytes as the JSON module reads them (UTF-8, or UTF-16/32 by their BOM or zero bytes), with
    U+FFFD for what does not decode: parsing works on text and never fails on encoding."""
    encoding = json.detect_encoding(payload)
    return payload.decode(encoding, errors="replace")


def may_hold_bad(text: str) -> bool:
    """Whether JSON text that decoded may hold a bad character (a false hit only costs a walk).

    Raw C0 characters cannot be inside a JSON string, so after a successful decode only an escape,
    DEL, C1 or a lone surrogate can produce one; ASCII text is settled without a character scan."""
    if "\\" in text and _BAD_ESCAPE.search(text) is not None:
        return True
    if text.isascii():
        return "\x7f" in text
    return _BAD_CHAR.search(text) is not None


def decode_json(text: str) -> tuple[Any, str | None]:
    """(value, None) or (None, why the text is not a JSON value); never raises."""
    if nesting_exceeds(text):
        return None, f"nesting deeper than {MAX_DEPTH}"
    try:
        return loads_json(text), None
    except RecursionError:  # pragma: no cover - nesting_exceeds refuses what could recurse this deep
        return None, f"nesting deeper than {MAX_DEPTH}"
    except ValueError as exc:
        return None, f"payload is not valid JSON: {exc}"


class Cleaner:
    """Walks a decoded JSON value once, replacing bad characters in keys and strings and listing
    where they were found (at most MAX_PROBLEMS, each named once)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def note(self, problem: str) -> None:
        if len(self.problems) < MAX_PROBLEMS and problem not in self.problems:
            self.problems.append(problem)

    def text(self, value: str, label: str | None) -> str:
        cleaned, found = clean_text(value)
        for kind in found:
            self.note(f"{kind} in {label or 'payload'}")
        return cleaned

    def value(self, value: Any, label: str | None) -> Any:
        if isinstance(value, str):
            return self.text(value, label)
        if isinstance(value, list):
            return [self.value(item, label) for item in value]
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            for key, item in value.items():
                found: tuple[TextProblem, ...] = ()
                if isinstance(key, str):
                    key, found = clean_text(key)
                child = label if label is not None or key in _CONTAINER_KEYS else _label(key)
                for kind in found:
                    self.note(f"{kind} in {child or 'payload'}")
                out[key] = self.value(item, child)
            return out
        return value


def _label(key: Any) -> str:
    text = str(key).strip()
    return text[:LABEL_LIMIT] + "…" if len(text) > LABEL_LIMIT else text


