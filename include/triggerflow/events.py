"""The Adobe pipeline envelope, parsed into a flat, typed view.

A trigger message reaches us as the pipeline envelope documented by Adobe (I/O Events FAQ sample,
reference/adobe-triggers.md §1.7 and §2)::

    {"envelopeType": "DATA", "partition": 13, "offset": 438465548, "createTime": 1516324157242,
     "topic": "triggers",
     "com.adobe.mcloud.pipeline.pipelineMessage": {
        "header": {"messageType": "TRIGGER", "source": "triggers", "sentTime": ..., "imsOrg": ...,
                   "messageId": "<uuid>", "properties": [{"name": ..., "value": ...}]},
        "com.adobe.mcloud.protocol.trigger": {
            "triggerId": "<guid>", "triggerTimestamp": <ms>, "mcId": "<ecid>",
            "enrichments": {"analyticsHitSummary": {"dimensions": {...}, "products": {...}}},
            "triggerPath": [...]}}}

Event data is untrusted (Analytics hits are unauthenticated). Parsing never raises and is bounded:

* JSON nested deeper than :data:`MAX_DEPTH` is refused before any decoder recurses into it
  (``parse_error`` "nesting deeper than 64").
* Text is normalised once, here: lone surrogates and control characters (NUL, C0 other than tab,
  newline and carriage return, DEL, C1) in any key or string become U+FFFD, so they can reach
  neither the store (PostgreSQL refuses NUL, both stores refuse lone surrogates) nor a template.
  Each finding is listed in ``problems`` ("control character in eVar01", "invalid text in
  messageId") for the validation stage to quarantine with.
* ``trigger_ts`` is an ``int`` within the range of a datetime, or ``None``: a float, NaN, a
  number beyond 64 bits, a number given as a string or a bool gives ``None``, the raw value in
  ``raw_fields["triggerTimestamp"]`` and a problem ("triggerTimestamp out of range").

Other fields that are missing or of the wrong type come back as they were (or ``None``) so the
validation stage can quarantine the event with a reason that shows what was wrong.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

PIPELINE_MESSAGE = "com.adobe.mcloud.pipeline.pipelineMessage"
TRIGGER_BODY = "com.adobe.mcloud.protocol.trigger"

#: Deepest JSON nesting accepted. Adobe's envelope nests 7 levels; json and msgspec both recurse
#: per level, so a hit nested 100,000 deep must be refused before either sees it.
MAX_DEPTH = 64
#: triggerTimestamp bounds (epoch ms): what a datetime can hold, which is well inside BIGINT.
MIN_TRIGGER_MS = int(datetime(1, 1, 1, tzinfo=UTC).timestamp() * 1000)
MAX_TRIGGER_MS = int(datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC).timestamp() * 1000)
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


@dataclass
class TriggerEvent:
    """One trigger message. Only fields a stage relies on are lifted out of the payload."""

    envelope_type: Any = None
    partition: Any = None
    offset: Any = None
    create_time: Any = None
    topic: Any = None
    message_type: Any = None
    message_id: Any = None
    ims_org: Any = None
    sent_time: Any = None
    trigger_id: Any = None
    #: epoch milliseconds within datetime range, or None (the raw value is in ``raw_fields``)
    trigger_ts: int | None = None
    mc_id: Any = None
    properties: dict[str, str] = field(default_factory=dict)
    dimensions: dict[str, dict[str, Any]] = field(default_factory=dict)
    products: dict[str, Any] = field(default_factory=dict)
    trigger_path: list[Any] = field(default_factory=list)
    parse_error: str | None = None
    #: what was wrong with the content although it parsed ("control character in eVar01",
    #: "triggerTimestamp out of range"): the validation stage quarantines on any of these
    problems: list[str] = field(default_factory=list)
    #: raw values of typed fields that were refused, by their envelope name
    raw_fields: dict[str, Any] = field(default_factory=dict)

    # -- accessors used by routing, reconciliation and templates ---------------------------------
    def dimension_values(self, name: str) -> list[Any]:
        """The ``data`` list of a dimension; keys are matched ignoring surrounding whitespace
        (Adobe's own sample uses ``" eVar01"``)."""
        dim = self.dimensions.get(name.strip())
        if not isinstance(dim, dict):
            return []
        data = dim.get("data")
        return data if isinstance(data, list) else []

    def dimension_first(self, name: str) -> str | None:
        """First non-blank value of a dimension, as a stripped string (the session summary repeats
        the value once per hit)."""
        for value in self.dimension_values(name):
            if value is None:
                continue
            text = str(value).strip()
            if text:
                return text
        return None

    def field_value(self, path: str) -> str | None:
        """A top-level trigger field (``mcId``, ``triggerId``...) or a header field
        (``header.messageId``), as a stripped string."""
        lookup = {
            "mcId": self.mc_id,
            "triggerId": self.trigger_id,
            "messageId": self.message_id,
            "header.messageId": self.message_id,
            "imsOrg": self.ims_org,
            "header.imsOrg": self.ims_org,
        }
        if path not in lookup:
            return None
        value = lookup[path]
        if value is None:
            return None
        text = str(value).strip()
        return text or None

    def pages(self) -> list[str]:
        """Distinct, non-blank page URLs of the session in hit order."""
        seen: list[str] = []
        for value in self.dimension_values("pageURL"):
            text = str(value).strip() if value is not None else ""
            if text and text not in seen:
                seen.append(text)
        return seen

    def product_list(self) -> list[dict[str, Any]]:
        """Products of the session as a list of dicts with at least ``sku`` and ``name``.

        Adobe documents ``analyticsHitSummary.products`` only as an object; triggerflow reads it as
        ``{sku: {name, price, quantity, url}}`` (what the local emulator produces). Unknown shapes
        give an empty list rather than an error: products are decoration, not identity.
        """
        items: list[dict[str, Any]] = []
        if not isinstance(self.products, dict):
            return items
        for sku, details in self.products.items():
            if isinstance(details, dict):
                item = {"sku": str(sku), **{k: v for k, v in details.items() if k != "sku"}}
                item.setdefault("name", str(sku))
            else:
                item = {"sku": str(sku), "name": str(details)}
            items.append(item)
        return items

    @property
    def triggered_at(self) -> datetime | None:
        if isinstance(self.trigger_ts, int) and not isinstance(self.trigger_ts, bool):
            try:
                return datetime.fromtimestamp(self.trigger_ts / 1000, tz=UTC)
            except (OverflowError, OSError, ValueError):
                return None
        return None


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        # isdigit() also accepts text int() refuses ("--5", "²"): never raise on event data.
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


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


def _may_hold_bad(text: str) -> bool:
    """Whether JSON text that decoded may hold a bad character (a false hit only costs a walk).

    Raw C0 characters cannot be inside a JSON string, so after a successful decode only an escape,
    DEL, C1 or a lone surrogate can produce one; ASCII text is settled without a character scan."""
    if "\\" in text and _BAD_ESCAPE.search(text) is not None:
        return True
    if text.isascii():
        return "\x7f" in text
    return _BAD_CHAR.search(text) is not None


def _decode(text: str) -> tuple[Any, str | None]:
    """(value, None) or (None, why the text is not a JSON value); never raises."""
    if nesting_exceeds(text):
        return None, f"nesting deeper than {MAX_DEPTH}"
    try:
        return loads_json(text), None
    except RecursionError:  # pragma: no cover - nesting_exceeds refuses what could recurse this deep
        return None, f"nesting deeper than {MAX_DEPTH}"
    except ValueError as exc:
        return None, f"payload is not valid JSON: {exc}"


class _Cleaner:
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


def _trigger_ms(raw: Any) -> tuple[int | None, str | None]:
    """triggerTimestamp as epoch ms, or (None, why not)."""
    name = "triggerTimestamp"
    if raw is None:
        return None, None  # missing: the validation suite's not-null expectation names it
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return None, f"{name} is a JSON {_json_type(raw)}, not a number"
    if isinstance(raw, float):
        if not math.isfinite(raw):
            return None, f"{name} is not a finite number"
        if not MIN_TRIGGER_MS <= raw <= MAX_TRIGGER_MS:
            return None, f"{name} out of range"
        return None, f"{name} is not a whole number of milliseconds"
    if not MIN_TRIGGER_MS <= raw <= MAX_TRIGGER_MS:
        return None, f"{name} out of range"
    return raw, None


def _json_type(value: Any) -> str:
    return {bool: "boolean", str: "string", list: "array", dict: "object", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def parse_envelope(payload: str | bytes | dict[str, Any]) -> TriggerEvent:
    """Parse one pipeline envelope (JSON text or bytes, or an already decoded dict).

    Never raises: what cannot be read is ``parse_error``, what was read but is wrong is listed in
    ``problems``."""
    try:
        return _parse(payload)
    except Exception as exc:
        return TriggerEvent(parse_error=f"payload could not be parsed ({exc.__class__.__name__})")


def _parse(payload: str | bytes | dict[str, Any]) -> TriggerEvent:
    problems: list[str] = []
    cleaner = _Cleaner(problems)
    if isinstance(payload, (bytes, bytearray, memoryview)):
        payload = decode_payload(bytes(payload))
    if isinstance(payload, str):
        decoded, error = _decode(payload)
        if error is not None:
            return TriggerEvent(parse_error=error)
        # most envelopes hold no escape or character that decodes to a bad one: no walk needed
        payload = cleaner.value(decoded, None) if _may_hold_bad(payload) else decoded
    else:
        payload = cleaner.value(payload, None)
    if not isinstance(payload, dict):
        return TriggerEvent(parse_error=f"payload is a JSON {type(payload).__name__}, not an object")

    event = TriggerEvent(
        envelope_type=payload.get("envelopeType"),
        partition=payload.get("partition"),
        offset=payload.get("offset"),
        create_time=payload.get("createTime"),
        topic=payload.get("topic"),
        problems=problems,
    )
    message = payload.get(PIPELINE_MESSAGE)
    if not isinstance(message, dict):
        event.parse_error = f"envelope has no '{PIPELINE_MESSAGE}' object"
        return event

    header = message.get("header")
    if isinstance(header, dict):
        event.message_type = header.get("messageType")
        event.message_id = header.get("messageId")
        event.ims_org = header.get("imsOrg")
        event.sent_time = header.get("sentTime")
        props = header.get("properties")
        if isinstance(props, list):
            for prop in props:
                if isinstance(prop, dict) and "name" in prop:
                    event.properties[str(prop["name"])] = str(prop.get("value"))

    body = message.get(TRIGGER_BODY)
    if not isinstance(body, dict):
        event.parse_error = f"pipeline message has no '{TRIGGER_BODY}' object"
        return event

    event.trigger_id = body.get("triggerId")
    raw_ts = body.get("triggerTimestamp")
    event.trigger_ts, ts_problem = _trigger_ms(raw_ts)
    if ts_problem is not None:
        event.raw_fields["triggerTimestamp"] = raw_ts
        problems.append(ts_problem)  # past the cap on text problems: it decides the event alone
    event.mc_id = body.get("mcId")
    path = body.get("triggerPath")
    event.trigger_path = path if isinstance(path, list) else []
    enrichments = body.get("enrichments")
    if isinstance(enrichments, str):
        # The XML form given to Campaign's JS connector carries enrichments as a JSON string.
        decoded, error = _decode(enrichments)
        if error is not None and error.startswith("nesting"):
            problems.append(f"enrichments {error}")
        enrichments = cleaner.value(decoded, None) if error is None else None
    summary = enrichments.get("analyticsHitSummary") if isinstance(enrichments, dict) else None
    if isinstance(summary, dict):
        dims = summary.get("dimensions")
        if isinstance(dims, dict):
            event.dimensions = {str(k).strip(): v for k, v in dims.items()}
        products = summary.get("products")
        if isinstance(products, dict):
            event.products = products
    return event


def as_int(value: Any) -> int | None:
    """Public helper: an integer field (e.g. ``triggerTimestamp``) or None when not integral."""
    return _int_or_none(value)
