"""A corpus of malformed and adversarial trigger messages (issue 10), each with the bucket it must
end in.

Adobe Analytics hits are unauthenticated: anyone can send a hit with any eVar, page URL or product
data, and it comes back to us as a trigger. Each :class:`HostileCase` names what it attacks and
where it must end after land -> validate -> reconcile -> send:

* :attr:`Bucket.QUARANTINED` — ``tf_quarantine`` holds it with a reason containing ``reason``;
* :attr:`Bucket.DECIDED` — valid, with the decision ``reason`` (``unmatched``, ``ignored``...);
* :attr:`Bucket.SENT` — valid, matched and emailed once, with none of ``forbidden`` in its HTML
  (a script element, a ``javascript:`` link) and no header the message put there;
* :attr:`Bucket.FAILED` — matched, but its email could not be made: the ledger row is ``failed``
  with a reply containing ``reason``, and nothing else of the batch is affected.

The shipped routing shows products from the catalogue by SKU (issue 11): cases that attack what an
email shows of a product name :data:`KNOWN_SKU`, a SKU of the demo catalogue, with the attacker's
name, price and URLs, and must be sent with none of them in the email; a case naming only unknown
SKUs is decided ``no-products``.

Every case carries its own customer (shopper id ``SHOP-HOSTILE-<nn>``; :func:`corpus_profiles`
gives the profiles), so a case that must not be sent would be sent if the attack went unnoticed.

A payload is the message as its producer sent it: a JSON value (:attr:`Delivery.VALUE`) or bytes
no JSON value can express — invalid UTF-8, deep nesting, duplicate keys, NaN, a BOM, text that is
not JSON (:attr:`Delivery.BYTES`). :meth:`HostileCase.journal_event` gives what the I/O Events
journal carries for it.

Used by tests/e2e/test_hostile_corpus.py; ``python -m devstack.hostile_corpus`` lists the cases.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from devstack.messages import CART_ABANDONMENT_TRIGGER_ID, envelope, trigger_message
from include.triggerflow.events import PIPELINE_MESSAGE, TRIGGER_BODY

#: Pipeline's own message size limit, which landing applies too (a bigger message is quarantined)
MAX_MESSAGE_BYTES = 1024 * 1024
DAY_MS = 24 * 3600 * 1000


class Bucket(StrEnum):
    QUARANTINED = "quarantined"
    DECIDED = "decided"
    SENT = "sent"
    FAILED = "failed"


class Delivery(StrEnum):
    VALUE = "value"  # a JSON value, serialised by the emulator
    BYTES = "bytes"  # these exact bytes as the journal item's event


@dataclass(frozen=True)
class HostileCase:
    name: str
    attacks: str
    expect: Bucket
    #: a substring of the quarantine reasons or of the failed row's reply, the decision code, or
    #: ``sent``
    reason: str
    payload: Any
    delivery: Delivery = Delivery.VALUE
    shopper_id: str | None = None
    #: markup the HTML part of a SENT case's email must not contain (text shown escaped is fine)
    forbidden: tuple[str, ...] = field(default_factory=tuple)

    def journal_event(self) -> Any:
        """The journal item's ``event`` for this message as a JSON value: the value itself, or,
        for bytes that are UTF-8, a JSON string holding the text (the journal serves messages in a
        JSON page, so text that is not one JSON value travels as a string; the reader lands the
        string's text). Bytes that are not UTF-8 raise ``UnicodeDecodeError``: they travel
        verbatim (``EmulatorClient.publish_bytes``)."""
        if self.delivery is Delivery.VALUE:
            return self.payload
        return self.payload.decode("utf-8")

    def as_bytes(self) -> bytes:
        """The message as bytes on the wire."""
        return self.payload if isinstance(self.payload, bytes) else _json_bytes(self.payload)

    def pipeline_message_bytes(self) -> bytes | None:
        """The bytes of the envelope's pipelineMessage member, or None when the case attacks the
        envelope itself (its type, its other members, the document as a whole). A Pipeline
        consumer gets envelopes the pipeline builds around a producer's message, so only a
        pipelineMessage travels there as the producer wrote it (``publish_bytes(...,
        as_="pipeline_message")``)."""
        data = self.as_bytes()
        marker = b"," + _json_bytes(PIPELINE_MESSAGE) + b":"
        head, found, rest = data.partition(marker)
        good_head = _json_bytes(_with(good_envelope("S", 0), ((PIPELINE_MESSAGE,), _DELETE)))[:-1]
        if not found or not rest.endswith(b"}") or _envelope_fields(head) != _envelope_fields(good_head):
            return None
        if self.delivery is Delivery.VALUE and list(self.payload)[-1] != PIPELINE_MESSAGE:
            return None
        return rest[:-1]

    @property
    def size(self) -> int:
        return len(self.as_bytes())


# -- building blocks ---------------------------------------------------------------------------------
Path = tuple[str, ...]
ENVELOPE: Path = ()
HEADER: Path = (PIPELINE_MESSAGE, "header")
BODY: Path = (PIPELINE_MESSAGE, TRIGGER_BODY)
SUMMARY: Path = (*BODY, "enrichments", "analyticsHitSummary")
DIMENSIONS: Path = (*SUMMARY, "dimensions")
EVAR: Path = (*DIMENSIONS, "eVar01")
PRODUCTS: Path = (*SUMMARY, "products")
#: a SKU of the demo catalogue (devstack/messages.DEMO_CATALOG): the catalogue's details are shown
KNOWN_SKU = "TRL-RUN-42"
_DELETE = object()


def good_envelope(shopper_id: str, trigger_ts_ms: int, *, message_id: str | None = None) -> dict[str, Any]:
    """A well-formed cart-abandonment envelope, as a consumer receives it."""
    message = trigger_message(
        trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id=shopper_id, triggered_at_ms=trigger_ts_ms,
        message_id=message_id or str(uuid.uuid4()),
    )
    return envelope(message, partition=0, offset=0, create_time_ms=trigger_ts_ms + 500)


def _with(base: dict[str, Any], *changes: tuple[Path, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with each (path, value) set (``_DELETE`` removes the key)."""
    doc = copy.deepcopy(base)
    for path, value in changes:
        parent: Any = doc
        for key in path[:-1]:
            parent = parent[key]
        if value is _DELETE:
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = value
    return doc


def _envelope_fields(head: bytes) -> bytes:
    """The envelope members before pipelineMessage, without the createTime value (it varies)."""
    start = head.find(b'"createTime":')
    end = head.find(b",", start)
    return head if start < 0 or end < 0 else head[:start] + head[end:]


def _evar(*values: Any) -> dict[str, Any]:
    return {"type": "string", "data": list(values), "name": "eVar01", "source": "session summary"}


def _json_bytes(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


def _splice(doc: dict[str, Any], marker: str, raw: bytes) -> bytes:
    """``doc`` as JSON bytes with the string value ``marker`` replaced by the raw JSON ``raw``:
    how a case puts text no JSON value can express (NaN, invalid UTF-8, deep nesting) into an
    otherwise ordinary envelope."""
    data = _json_bytes(doc)
    quoted = json.dumps(marker).encode()
    assert data.count(quoted) == 1, marker
    return data.replace(quoted, raw)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


# -- the corpus --------------------------------------------------------------------------------------
#: build(good envelope, shopper id, trigger ts) -> payload
_Build = Callable[[dict[str, Any], str, int], Any]
#: (name, attacks, bucket, reason, build), build None for the repeat of another case's message, or
#: (name, attacks, bucket, reason, build, forbidden)
_Spec = tuple[str, str, Bucket, str, _Build | None] | tuple[str, str, Bucket, str, _Build, tuple[str, ...]]


def _specs() -> list[_Spec]:
    """(name, attacks, bucket, reason, build(good envelope, shopper id, trigger ts) -> payload[,
    forbidden])."""
    Q, D, S = Bucket.QUARANTINED, Bucket.DECIDED, Bucket.SENT
    return [
        # -- the reproductions
        ("evar_nul", "NUL in the identity eVar (failed the batch's decision insert on PostgreSQL)", Q,
         "control character in eVar01", lambda g, s, t: _with(g, (EVAR, _evar(s + "\u0000")))),
        ("evar_lone_surrogate", "a lone surrogate in the identity eVar (UnicodeEncodeError on both stores)", Q,
         "invalid text in eVar01", lambda g, s, t: _with(g, (EVAR, _evar("\ud800" + s)))),
        ("message_id_nul", "NUL in messageId (landing failed, the source stalled)", Q,
         "control character in messageId", lambda g, s, t: _with(g, ((*HEADER, "messageId"), f"{uuid.uuid4()}\u0000"))),
        ("message_id_lone_surrogate", "a lone surrogate in messageId", Q,
         "invalid text in messageId", lambda g, s, t: _with(g, ((*HEADER, "messageId"), f"{uuid.uuid4()}\udfff"))),
        ("trigger_id_nul", "NUL in triggerId", Q,
         "control character in triggerId", lambda g, s, t: _with(g, ((*BODY, "triggerId"), CART_ABANDONMENT_TRIGGER_ID + "\u0000"))),
        ("trigger_id_lone_surrogate", "a lone surrogate in triggerId", Q,
         "invalid text in triggerId", lambda g, s, t: _with(g, ((*BODY, "triggerId"), "\ud83d" + CART_ABANDONMENT_TRIGGER_ID))),
        ("ts_beyond_64_bit", "triggerTimestamp 2**70 (OverflowError / NumericValueOutOfRange at landing)", Q,
         "triggerTimestamp out of range", lambda g, s, t: _with(g, ((*BODY, "triggerTimestamp"), 2**70))),
        ("ts_1e30", "triggerTimestamp 1e30, a float beyond every integer type", Q,
         "triggerTimestamp", lambda g, s, t: _with(g, ((*BODY, "triggerTimestamp"), 1e30))),
        ("nested_2000", "JSON nested 2,000 deep in a dimension (RecursionError)", Q, "nesting deeper than",
         lambda g, s, t: _splice(_with(g, ((*DIMENSIONS, "eVar99"), "@@NEST@@")), "@@NEST@@", _nested(2_000))),
        ("nested_100000", "JSON nested 100,000 deep in a dimension", Q, "nesting deeper than",
         lambda g, s, t: _splice(_with(g, ((*DIMENSIONS, "eVar99"), "@@NEST@@")), "@@NEST@@", _nested(100_000))),
        ("invalid_utf8", "bytes that are not UTF-8 inside the identity eVar (UnicodeDecodeError)", Q, "invalid UTF-8",
         lambda g, s, t: _splice(_with(g, (EVAR, _evar("@@BAD@@"))), '@@BAD@@', b'"' + s.encode() + b'\xff\xfe\xc0\xaf"')),
        ("message_2_5_mb", "a 2.5 MB message (Pipeline's own limit is 1 MB; it made a 7.8 MB email)", Q,
         "larger than", lambda g, s, t: _with(g, ((*DIMENSIONS, "prop01"), _evar("x" * 2_500_000)))),
        # -- wrong types at every level
        ("envelope_list", "the envelope is a JSON array", Q, "not an object", lambda g, s, t: [g]),
        ("envelope_number", "the envelope is a number", Q, "not an object", lambda g, s, t: 42),
        ("envelope_null", "the envelope is null", Q, "not an object", lambda g, s, t: None),
        ("envelope_string", "the envelope is a JSON string holding no JSON", Q, "not valid JSON",
         lambda g, s, t: "trigger for " + s),
        ("pipeline_message_list", "pipelineMessage is an array", Q, PIPELINE_MESSAGE,
         lambda g, s, t: _with(g, ((PIPELINE_MESSAGE,), [g[PIPELINE_MESSAGE]]))),
        ("header_list", "the header is an array", Q, "message_id",
         lambda g, s, t: _with(g, (HEADER, [g[PIPELINE_MESSAGE]["header"]]))),
        ("header_string", "the header is a string", Q, "message_id",
         lambda g, s, t: _with(g, (HEADER, json.dumps(g[PIPELINE_MESSAGE]["header"])))),
        ("trigger_body_list", "the trigger body is an array", Q, TRIGGER_BODY,
         lambda g, s, t: _with(g, (BODY, [g[PIPELINE_MESSAGE][TRIGGER_BODY]]))),
        ("enrichments_number", "enrichments is a number", Q, "identity",
         lambda g, s, t: _with(g, ((*BODY, "enrichments"), 7))),
        ("dimensions_string", "dimensions is a string", Q, "identity", lambda g, s, t: _with(g, (DIMENSIONS, s))),
        ("dimensions_list", "dimensions is an array", Q, "identity", lambda g, s, t: _with(g, (DIMENSIONS, [_evar(s)]))),
        ("evar_dimension_string", "the eVar dimension is a bare string", Q, "identity", lambda g, s, t: _with(g, (EVAR, s))),
        ("evar_data_not_list", "the eVar's data is a string, not a list", Q, "identity",
         lambda g, s, t: _with(g, ((*EVAR, "data"), s))),
        ("evar_data_empty", "the eVar's data is an empty list", Q, "identity", lambda g, s, t: _with(g, ((*EVAR, "data"), []))),
        ("evar_data_number", "the eVar's data holds a number", D, "unmatched", lambda g, s, t: _with(g, (EVAR, _evar(31337)))),
        ("products_number", "products is a number (decoration only)", S, "sent", lambda g, s, t: _with(g, (PRODUCTS, 12))),
        ("products_list", "products is an array", S, "sent", lambda g, s, t: _with(g, (PRODUCTS, ["TRL-RUN-42", None, 3]))),
        ("product_details_garbage", "product details of every wrong type, SKUs no catalogue knows", D, "no-products",
         lambda g, s, t: _with(g, (PRODUCTS, {"A": 12, "B": None, "C": [1, 2], "D": "Socks", "E": {"name": ["x"]}}))),
        ("product_price_word", "a price that is a word (the catalogue's price is shown)", S, "sent",
         lambda g, s, t: _with(g, (PRODUCTS, {KNOWN_SKU: {"name": "Hat", "price": "free"}})), ("Hat", "free")),
        ("properties_string", "header properties is a string", S, "sent", lambda g, s, t: _with(g, ((*HEADER, "properties"), "trace"))),
        ("properties_garbage", "header properties hold items of every type", S, "sent",
         lambda g, s, t: _with(g, ((*HEADER, "properties"), [1, "x", None, {"name": None}, {"value": 3}]))),
        ("trigger_path_string", "triggerPath is a string", S, "sent", lambda g, s, t: _with(g, ((*BODY, "triggerPath"), "start"))),
        ("numbers_as_strings", "partition and offset as strings", S, "sent",
         lambda g, s, t: _with(g, (("partition",), "0"), (("offset",), "17"))),
        ("unknown_fields", "unknown fields at every level", S, "sent",
         lambda g, s, t: _with(g, (("x-evil",), {"a": [1]}), ((*HEADER, "x"), 1), ((*BODY, "x"), None), ((*EVAR, "x"), "y"))),
        # -- envelope type and missing fields, one at a time
        ("envelope_type_unknown", "an unknown envelopeType", Q, "envelope_type",
         lambda g, s, t: _with(g, (("envelopeType",), "HEARTBEAT"))),
        ("envelope_type_missing", "no envelopeType", Q, "envelope_type", lambda g, s, t: _with(g, (("envelopeType",), _DELETE))),
        ("missing_pipeline_message", "no pipelineMessage", Q, PIPELINE_MESSAGE,
         lambda g, s, t: _with(g, ((PIPELINE_MESSAGE,), _DELETE))),
        ("missing_header", "no header", Q, "message_id", lambda g, s, t: _with(g, (HEADER, _DELETE))),
        ("missing_message_id", "no messageId", Q, "message_id", lambda g, s, t: _with(g, ((*HEADER, "messageId"), _DELETE))),
        ("missing_trigger_body", "no trigger body", Q, TRIGGER_BODY, lambda g, s, t: _with(g, (BODY, _DELETE))),
        ("missing_trigger_id", "no triggerId", Q, "trigger_id", lambda g, s, t: _with(g, ((*BODY, "triggerId"), _DELETE))),
        ("missing_trigger_ts", "no triggerTimestamp", Q, "trigger_ts", lambda g, s, t: _with(g, ((*BODY, "triggerTimestamp"), _DELETE))),
        ("missing_enrichments", "no enrichments", Q, "identity", lambda g, s, t: _with(g, ((*BODY, "enrichments"), _DELETE))),
        ("missing_evar", "no identity eVar", Q, "identity", lambda g, s, t: _with(g, (EVAR, _DELETE))),
        ("missing_mc_id", "no mcId (not the route's identity)", S, "sent", lambda g, s, t: _with(g, ((*BODY, "mcId"), _DELETE))),
        ("missing_partition_offset", "no partition, offset, createTime or topic (the journal places by its own position)", S,
         "sent", lambda g, s, t: _with(g, (("partition",), _DELETE), (("offset",), _DELETE), (("createTime",), _DELETE),
                                      (("topic",), _DELETE))),
        ("missing_message_type", "no messageType", S, "sent", lambda g, s, t: _with(g, ((*HEADER, "messageType"), _DELETE))),
        ("missing_ims_org", "no imsOrg", S, "sent", lambda g, s, t: _with(g, ((*HEADER, "imsOrg"), _DELETE))),
        ("missing_products", "no products (the email lists the pages instead)", S, "sent", lambda g, s, t: _with(g, (PRODUCTS, _DELETE))),
        ("missing_dimensions", "no dimensions", Q, "identity", lambda g, s, t: _with(g, (DIMENSIONS, _DELETE))),
        ("empty_object", "an empty object", Q, "envelope_type", lambda g, s, t: {}),
        ("empty_message_id", "messageId is an empty string", Q, "message_id", lambda g, s, t: _with(g, ((*HEADER, "messageId"), ""))),
        ("empty_trigger_id", "triggerId is an empty string", Q, "trigger_id", lambda g, s, t: _with(g, ((*BODY, "triggerId"), ""))),
        ("empty_evar", "the identity eVar holds only empty and blank strings", Q, "identity",
         lambda g, s, t: _with(g, (EVAR, _evar("", "   ", "\t")))),
        ("message_id_object", "messageId is an object", Q, "message_id",
         lambda g, s, t: _with(g, ((*HEADER, "messageId"), {"id": str(uuid.uuid4())}))),
        ("trigger_id_number", "triggerId is a number", D, "ignored", lambda g, s, t: _with(g, ((*BODY, "triggerId"), 5))),
        ("trigger_id_unknown", "a trigger id no route knows", D, "ignored",
         lambda g, s, t: _with(g, ((*BODY, "triggerId"), str(uuid.uuid4())))),
        ("trigger_id_100kb", "a 100 KB triggerId", D, "ignored", lambda g, s, t: _with(g, ((*BODY, "triggerId"), "T" * 100_000))),
        # -- timestamps
        ("ts_nan", "triggerTimestamp NaN (a literal JSON does not allow)", Q, "triggerTimestamp",
         lambda g, s, t: _splice(_with(g, ((*BODY, "triggerTimestamp"), "@@TS@@")), "@@TS@@", b"NaN")),
        ("ts_infinity", "triggerTimestamp Infinity", Q, "triggerTimestamp",
         lambda g, s, t: _splice(_with(g, ((*BODY, "triggerTimestamp"), "@@TS@@")), "@@TS@@", b"Infinity")),
        ("ts_minus_infinity", "triggerTimestamp -Infinity", Q, "triggerTimestamp",
         lambda g, s, t: _splice(_with(g, ((*BODY, "triggerTimestamp"), "@@TS@@")), "@@TS@@", b"-Infinity")),
        ("ts_string", "triggerTimestamp as a string of digits", Q, "triggerTimestamp",
         lambda g, s, t: _with(g, ((*BODY, "triggerTimestamp"), str(t)))),
        ("ts_400_digits", "triggerTimestamp as a 400-digit string", Q, "triggerTimestamp",
         lambda g, s, t: _with(g, ((*BODY, "triggerTimestamp"), "9" * 400))),
        ("ts_fraction", "triggerTimestamp with a fraction", Q, "triggerTimestamp",
         lambda g, s, t: _with(g, ((*BODY, "triggerTimestamp"), t + 0.5))),
        ("ts_bool", "triggerTimestamp true", Q, "triggerTimestamp", lambda g, s, t: _with(g, ((*BODY, "triggerTimestamp"), True))),
        ("ts_negative", "a negative triggerTimestamp", Q, "trigger_ts", lambda g, s, t: _with(g, ((*BODY, "triggerTimestamp"), -1))),
        ("ts_seconds", "triggerTimestamp in seconds, not milliseconds", Q, "trigger_ts",
         lambda g, s, t: _with(g, ((*BODY, "triggerTimestamp"), t // 1000))),
        ("ts_next_year", "a trigger from a year ahead", Q, "trigger_age_ms",
         lambda g, s, t: _with(g, ((*BODY, "triggerTimestamp"), t + 365 * DAY_MS))),
        ("ts_month_old", "a trigger a month old", Q, "trigger_age_ms",
         lambda g, s, t: _with(g, ((*BODY, "triggerTimestamp"), t - 30 * DAY_MS))),
        # -- text: controls, invisible and bidirectional characters, sizes, injections
        ("evar_c1_control", "a C1 control character (NEL) in the identity eVar", Q, "control character in eVar01",
         lambda g, s, t: _with(g, (EVAR, _evar(s + "\u0085")))),
        ("evar_backspace_escape", "\\b and \\f escapes in the identity eVar", Q, "control character in eVar01",
         lambda g, s, t: _with(g, (EVAR, _evar("\b" + s + "\f")))),
        ("evar_rtl_override", "a right-to-left override in the identity eVar", D, "unmatched",
         lambda g, s, t: _with(g, (EVAR, _evar("\u202e" + s)))),
        ("evar_zero_width", "a zero-width space in the identity eVar", D, "unmatched",
         lambda g, s, t: _with(g, (EVAR, _evar(s + "\u200b")))),
        ("evar_bom_char", "a byte-order mark inside the identity eVar", D, "unmatched",
         lambda g, s, t: _with(g, (EVAR, _evar("\ufeff" + s)))),
        ("evar_emoji", "emoji as the identity", D, "unmatched", lambda g, s, t: _with(g, (EVAR, _evar("🛒👩‍👩‍👧‍👦")))),
        ("evar_100kb", "a 100 KB identity", D, "unmatched", lambda g, s, t: _with(g, (EVAR, _evar(s * (100_000 // len(s)))))),
        ("evar_sql", "SQL in the identity eVar", D, "unmatched",
         lambda g, s, t: _with(g, (EVAR, _evar(f"{s}' OR '1'='1'; DROP TABLE profiles; --")))),
        ("evar_header_injection", "CRLF and a Bcc header in the identity eVar", D, "unmatched",
         lambda g, s, t: _with(g, (EVAR, _evar(f"{s}\r\nBcc: victim@example.org")))),
        ("evar_padded", "the identity padded with whitespace (trimmed, like Adobe's own sample keys)", S, "sent",
         lambda g, s, t: _with(g, (EVAR, _evar(f"  {s}\t")))),
        ("evar_case_changed", "the identity in another case", D, "unmatched", lambda g, s, t: _with(g, (EVAR, _evar(s.lower())))),
        ("evar_fullwidth", "the identity in full-width letters (NFKC would fold them)", D, "unmatched",
         lambda g, s, t: _with(g, (EVAR, _evar(s.translate({c: c + 0xFEE0 for c in range(0x21, 0x7F)}))))),
        ("evar_homoglyph", "a Cyrillic letter that looks like the Latin one", D, "unmatched",
         lambda g, s, t: _with(g, (EVAR, _evar(s.replace("S", "\u0405", 1))))),
        ("product_name_nul", "NUL in a product name (text that reaches the email)", Q, "control character",
         lambda g, s, t: _with(g, (PRODUCTS, {"N": {"name": "Hat\u0000", "price": 1, "quantity": 1}}))),
        ("product_name_lone_surrogate", "a lone surrogate in a product name", Q, "invalid text",
         lambda g, s, t: _with(g, (PRODUCTS, {"N": {"name": "Hat \udc00", "price": 1, "quantity": 1}}))),
        ("product_name_line_separators", "U+2028/U+2029 and a tab in a product name", S, "sent",
         lambda g, s, t: _with(g, (PRODUCTS, {KNOWN_SKU: {"name": "Hat\u2028Scarf\u2029\tGloves", "price": 1, "quantity": 1}})),
         ("Scarf", "\u2028")),
        ("message_id_sql", "SQL in messageId", Q, "message_id",
         lambda g, s, t: _with(g, ((*HEADER, "messageId"), "1'; DROP TABLE tf_event; --"))),
        ("message_id_header_injection", "CRLF and a Bcc header in messageId", Q, "message_id",
         lambda g, s, t: _with(g, ((*HEADER, "messageId"), f"{uuid.uuid4()}\r\nBcc: victim@example.org"))),
        ("message_id_100kb", "a 100 KB messageId", Q, "message_id", lambda g, s, t: _with(g, ((*HEADER, "messageId"), "m" * 100_000))),
        ("mc_id_100kb", "a 100 KB mcId (not the route's identity)", S, "sent", lambda g, s, t: _with(g, ((*BODY, "mcId"), "7" * 100_000))),
        # -- content that reaches the email: it must be escaped, refused or left out
        ("product_name_script", "HTML and script in a product name", S, "sent",
         lambda g, s, t: _with(g, (PRODUCTS, {KNOWN_SKU: {"name": "<script>alert(1)</script><img src=x onerror=alert(2)>",
                                                         "price": 1, "quantity": 1}})),
         ("<script", "<img src=x", "alert(")),
        ("product_url_javascript", "a javascript: product URL", S, "sent",
         lambda g, s, t: _with(g, (PRODUCTS, {KNOWN_SKU: {"name": "Shoes", "price": 10, "quantity": 1,
                                                         "url": "javascript:alert(document.cookie)"}})),
         ("javascript:", "document.cookie")),
        ("page_url_javascript", "javascript: and data: page URLs", S, "sent",
         lambda g, s, t: _with(g, (PRODUCTS, {}), ((*DIMENSIONS, "pageURL"), _evar("javascript:alert(1)", "data:text/html,<script>x</script>"))),
         ('href="javascript:', 'href="data:', "<script")),
        ("product_name_header_injection", "CRLF and a Bcc header in a product name", S, "sent",
         lambda g, s, t: _with(g, (PRODUCTS, {KNOWN_SKU: {"name": "Socks\r\nBcc: victim@example.org\r\n\r\nbody", "price": 5,
                                                         "quantity": 1}})), ("Bcc", "victim")),
        ("product_text_unicode", "right-to-left override, zero-width joiners and emoji in product names", S, "sent",
         lambda g, s, t: _with(g, (PRODUCTS, {KNOWN_SKU: {"name": "\u202egnp.exe\u200d🛒 Jacket", "price": 3, "quantity": 1}})),
         ("\u202e", "gnp.exe")),
        ("product_name_100kb", "a 100 KB product name", S, "sent",
         lambda g, s, t: _with(g, (PRODUCTS, {KNOWN_SKU: {"name": "N" * 100_000, "price": 1, "quantity": 1}})), ("NNNNNNNNNN",)),
        ("product_price_nan", "NaN as a price (the catalogue's price is shown)", S, "sent",
         lambda g, s, t: _splice(_with(g, (PRODUCTS, {KNOWN_SKU: {"name": "Hat", "price": "@@P@@", "quantity": 1}})),
                                 "@@P@@", b"NaN"), ("NaN", "Hat")),
        ("product_price_string", "a price given as text with its currency (the catalogue's price is shown)", S, "sent",
         lambda g, s, t: _with(g, (PRODUCTS, {KNOWN_SKU: {"name": "Hat", "price": "12.50 EUR", "quantity": "two"}})),
         ("12.50 EUR", "two")),
        ("huge_array", "an identity eVar with 30,000 hits", S, "sent",
         lambda g, s, t: _with(g, (EVAR, _evar(*([s] * 30_000))))),
        ("huge_page_list", "20,000 page URLs", S, "sent",
         lambda g, s, t: _with(g, ((*DIMENSIONS, "pageURL"), _evar(*(f"https://shop.example.com/p/{i}" for i in range(20_000)))))),
        # -- JSON the parser must take as JSON says
        ("duplicate_keys", "duplicate keys: a bad triggerId first, the good one last (the last wins)", S, "sent",
         lambda g, s, t: _json_bytes(_with(g, ((*BODY, "triggerId"), "@@DUP@@"))).replace(
             b'"triggerId":"@@DUP@@"', b'"triggerId":"\\u0000bad","triggerId":' + json.dumps(CART_ABANDONMENT_TRIGGER_ID).encode())),
        ("payload_bom", "a UTF-8 byte-order mark before the JSON (RFC 8259 lets a parser ignore it)", S, "sent",
         lambda g, s, t: b"\xef\xbb\xbf" + _json_bytes(g)),
        ("not_json", "text that is not JSON", Q, "not valid JSON", lambda g, s, t: b"trigger: " + s.encode()),
        ("truncated_json", "an envelope cut in the middle", Q, "not valid JSON", lambda g, s, t: _json_bytes(g)[:300]),
        ("same_message_twice", "the exact message of another case again (the source redelivers)", D, "duplicate", None),
    ]


def _shopper(i: int) -> str:
    return f"SHOP-HOSTILE-{i:03d}"


def hostile_corpus(now_ms: int) -> list[HostileCase]:
    """The corpus, with trigger timestamps a minute before ``now_ms`` (so age checks pass) and a
    customer per case. The last case repeats the first SENT case's message byte for byte."""
    cases: list[HostileCase] = []
    for i, (name, attacks, bucket, reason, build, *rest) in enumerate(_specs(), start=1):
        shopper = _shopper(i)
        ts = now_ms - 60_000 + i
        if build is None:  # same_message_twice
            first = next(c for c in cases if c.expect is Bucket.SENT and c.delivery is Delivery.VALUE)
            cases.append(HostileCase(name, attacks, bucket, reason, copy.deepcopy(first.payload), first.delivery,
                                     first.shopper_id))
            continue
        payload = build(good_envelope(shopper, ts), shopper, ts)
        delivery = Delivery.BYTES if isinstance(payload, bytes) else Delivery.VALUE
        forbidden = tuple(rest[0]) if rest else ()
        cases.append(HostileCase(name, attacks, bucket, reason, payload, delivery, shopper, forbidden))
    names = [c.name for c in cases]
    assert len(set(names)) == len(names), "case names must be unique"
    return cases


def corpus_profiles(cases: list[HostileCase]) -> list[dict[str, Any]]:
    """One known, opted-in customer per case (the shopper id its message carries)."""
    shoppers = sorted({c.shopper_id for c in cases if c.shopper_id})
    return [
        {"customer_id": s.replace("SHOP-", ""), "email": f"{s.lower()}@example.com", "first_name": "Hostile",
         "last_name": None, "locale": "en_US", "timezone": "UTC", "shopper_id": s, "ecid": None,
         "declared_id": None, "opted_out": False}
        for s in shoppers
    ]


if __name__ == "__main__":  # pragma: no cover - a listing for people
    import time

    for case in hostile_corpus(int(time.time() * 1000)):
        print(f"{case.name:32} {case.expect:12} {case.reason[:40]:40} {case.delivery:6} {case.size:>9} B  {case.attacks}")
