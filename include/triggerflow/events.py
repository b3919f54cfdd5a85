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

Event data is untrusted. Parsing never raises on bad content: fields that are missing or of the
wrong type come back as ``None`` and the raw value is kept in ``raw_fields`` so the validation
stage can quarantine the event with a reason that shows what was wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

PIPELINE_MESSAGE = "com.adobe.mcloud.pipeline.pipelineMessage"
TRIGGER_BODY = "com.adobe.mcloud.protocol.trigger"

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
    trigger_ts: Any = None
    mc_id: Any = None
    properties: dict[str, str] = field(default_factory=dict)
    dimensions: dict[str, dict[str, Any]] = field(default_factory=dict)
    products: dict[str, Any] = field(default_factory=dict)
    trigger_path: list[Any] = field(default_factory=list)
    parse_error: str | None = None

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
                return datetime.fromtimestamp(self.trigger_ts / 1000, tz=timezone.utc)
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


def parse_envelope(payload: str | bytes | dict[str, Any]) -> TriggerEvent:
    """Parse one pipeline envelope (JSON text or an already decoded dict)."""
    if isinstance(payload, (str, bytes)):
        try:
            payload = loads_json(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            return TriggerEvent(parse_error=f"payload is not valid JSON: {exc}")
    if not isinstance(payload, dict):
        return TriggerEvent(parse_error=f"payload is a JSON {type(payload).__name__}, not an object")

    event = TriggerEvent(
        envelope_type=payload.get("envelopeType"),
        partition=payload.get("partition"),
        offset=payload.get("offset"),
        create_time=payload.get("createTime"),
        topic=payload.get("topic"),
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
    event.trigger_ts = body.get("triggerTimestamp")
    event.mc_id = body.get("mcId")
    path = body.get("triggerPath")
    event.trigger_path = path if isinstance(path, list) else []
    enrichments = body.get("enrichments")
    if isinstance(enrichments, str):
        # The XML form given to Campaign's JS connector carries enrichments as a JSON string.
        try:
            enrichments = loads_json(enrichments)
        except ValueError:
            enrichments = None
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
