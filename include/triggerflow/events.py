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

Every scalar field has its JSON type or is ``None``: text fields (``message_id``, ``trigger_id``,
``mc_id``...) are ``str``, a number given for one becomes its text (``42`` → ``"42"``, what the
ledger columns and validation reasons show); integer fields (``partition``, ``offset``,
``create_time``, ``sent_time``) are ``int``. A value of another JSON type (true, an object...) gives
``None``. Any value that was not of its field's type is kept as it came in ``raw_fields`` under
its envelope name, and :meth:`TriggerEvent.raw` reads a field as the envelope gave it, so the
validation stage can quarantine the event with a reason that shows what was wrong.

JSON decoding and text cleaning live in :mod:`include.triggerflow.event_json`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from include.triggerflow.event_json import (
    LABEL_LIMIT,
    MAX_DEPTH,
    MAX_PROBLEMS,
    PIPELINE_MESSAGE,
    REPLACEMENT,
    TRIGGER_BODY,
    Cleaner,
    TextProblem,
    clean_text,
    decode_json,
    decode_payload,
    loads_json,
    may_hold_bad,
    nesting_exceeds,
)

__all__ = [
    "LABEL_LIMIT",
    "MAX_DEPTH",
    "MAX_PROBLEMS",
    "MAX_TRIGGER_MS",
    "MIN_TRIGGER_MS",
    "PIPELINE_MESSAGE",
    "REPLACEMENT",
    "TRIGGER_BODY",
    "TextProblem",
    "TriggerEvent",
    "as_int",
    "clean_text",
    "decode_payload",
    "loads_json",
    "nesting_exceeds",
    "parse_envelope",
]

#: triggerTimestamp bounds (epoch ms): what a datetime can hold, which is well inside BIGINT.
MIN_TRIGGER_MS = int(datetime(1, 1, 1, tzinfo=UTC).timestamp() * 1000)
MAX_TRIGGER_MS = int(datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC).timestamp() * 1000)

#: envelope name -> TriggerEvent attribute, for the typed scalar fields (see TriggerEvent.raw)
FIELD_NAMES: dict[str, str] = {
    "envelopeType": "envelope_type",
    "partition": "partition",
    "offset": "offset",
    "createTime": "create_time",
    "topic": "topic",
    "messageType": "message_type",
    "messageId": "message_id",
    "imsOrg": "ims_org",
    "sentTime": "sent_time",
    "triggerId": "trigger_id",
    "triggerTimestamp": "trigger_ts",
    "mcId": "mc_id",
}


#: the paths identity rules may name (``field_value``) -> envelope name
_FIELD_PATHS: dict[str, str] = {
    "mcId": "mcId",
    "triggerId": "triggerId",
    "messageId": "messageId",
    "header.messageId": "messageId",
    "imsOrg": "imsOrg",
    "header.imsOrg": "imsOrg",
}


@dataclass
class TriggerEvent:
    """One trigger message. Only fields a stage relies on are lifted out of the payload."""

    envelope_type: str | None = None
    partition: int | None = None
    offset: int | None = None
    #: epoch milliseconds, as Adobe writes them
    create_time: int | None = None
    topic: str | None = None
    message_type: str | None = None
    message_id: str | None = None
    ims_org: str | None = None
    sent_time: int | None = None
    trigger_id: str | None = None
    #: epoch milliseconds within datetime range, or None (the raw value is in ``raw_fields``)
    trigger_ts: int | None = None
    mc_id: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    #: dimension name (stripped) -> its value as sent, normally ``{"data": [...]}``
    dimensions: dict[str, Any] = field(default_factory=dict)
    products: dict[str, Any] = field(default_factory=dict)
    trigger_path: list[Any] = field(default_factory=list)
    parse_error: str | None = None
    #: what was wrong with the content although it parsed ("control character in eVar01",
    #: "triggerTimestamp out of range"): the validation stage quarantines on any of these
    problems: list[str] = field(default_factory=list)
    #: raw values of typed fields that were not of their type, by their envelope name
    raw_fields: dict[str, Any] = field(default_factory=dict)

    def raw(self, name: str) -> Any:
        """The scalar field ``name`` (its envelope name: ``messageId``, ``triggerTimestamp``...) as
        the envelope gave it: the refused value when there was one, else the typed field."""
        if name in self.raw_fields:
            return self.raw_fields[name]
        return getattr(self, FIELD_NAMES[name])

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
        name = _FIELD_PATHS.get(path)
        if name is None:
            return None
        # as the envelope gave it: an identity read from a number (or a true) keeps matching as text
        value = self.raw(name)
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


def _text_field(name: str, value: Any, raw_fields: dict[str, Any]) -> str | None:
    """A text field: a string as it is; a number as its text; anything else None (kept raw)."""
    if value is None or isinstance(value, str):
        return value
    raw_fields[name] = value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _int_field(name: str, value: Any, raw_fields: dict[str, Any]) -> int | None:
    """An integer field: an int as it is (not a bool); anything else None (kept raw)."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raw_fields[name] = value
    return None


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
    cleaner = Cleaner(problems)
    if isinstance(payload, (bytes, bytearray, memoryview)):
        payload = decode_payload(bytes(payload))
    if isinstance(payload, str):
        decoded, error = decode_json(payload)
        if error is not None:
            return TriggerEvent(parse_error=error)
        # most envelopes hold no escape or character that decodes to a bad one: no walk needed
        payload = cleaner.value(decoded, None) if may_hold_bad(payload) else decoded
    else:
        payload = cleaner.value(payload, None)
    if not isinstance(payload, dict):
        return TriggerEvent(parse_error=f"payload is a JSON {type(payload).__name__}, not an object")

    raw: dict[str, Any] = {}
    event = TriggerEvent(
        envelope_type=_text_field("envelopeType", payload.get("envelopeType"), raw),
        partition=_int_field("partition", payload.get("partition"), raw),
        offset=_int_field("offset", payload.get("offset"), raw),
        create_time=_int_field("createTime", payload.get("createTime"), raw),
        topic=_text_field("topic", payload.get("topic"), raw),
        problems=problems,
        raw_fields=raw,
    )
    message = payload.get(PIPELINE_MESSAGE)
    if not isinstance(message, dict):
        event.parse_error = f"envelope has no '{PIPELINE_MESSAGE}' object"
        return event

    header = message.get("header")
    if isinstance(header, dict):
        event.message_type = _text_field("messageType", header.get("messageType"), raw)
        event.message_id = _text_field("messageId", header.get("messageId"), raw)
        event.ims_org = _text_field("imsOrg", header.get("imsOrg"), raw)
        event.sent_time = _int_field("sentTime", header.get("sentTime"), raw)
        props = header.get("properties")
        if isinstance(props, list):
            for prop in props:
                if isinstance(prop, dict) and "name" in prop:
                    event.properties[str(prop["name"])] = str(prop.get("value"))

    body = message.get(TRIGGER_BODY)
    if not isinstance(body, dict):
        event.parse_error = f"pipeline message has no '{TRIGGER_BODY}' object"
        return event

    event.trigger_id = _text_field("triggerId", body.get("triggerId"), raw)
    raw_ts = body.get("triggerTimestamp")
    event.trigger_ts, ts_problem = _trigger_ms(raw_ts)
    if ts_problem is not None:
        raw["triggerTimestamp"] = raw_ts
        problems.append(ts_problem)  # past the cap on text problems: it decides the event alone
    event.mc_id = _text_field("mcId", body.get("mcId"), raw)
    path = body.get("triggerPath")
    event.trigger_path = path if isinstance(path, list) else []
    enrichments = body.get("enrichments")
    if isinstance(enrichments, str):
        # The XML form given to Campaign's JS connector carries enrichments as a JSON string.
        decoded, error = decode_json(enrichments)
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
