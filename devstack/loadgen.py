"""Load generator for benchmarks: a million synthetic customers and a million trigger messages.

Library and CLI (``python -m devstack.loadgen ...``):

* ``profiles --count N`` bulk-loads N synthetic customers into the store's ``profiles`` table
  (PostgreSQL: ``COPY`` from an in-memory CSV; SQLite: ``executemany`` in big transactions),
  puts ~0.5 % of their addresses on the block list (``tf_suppression``, source ``block-list``)
  and loads the demo product catalogue (devstack/demo_catalog.csv: every SKU the messages name;
  the shipped routes email only products the catalogue knows).
* ``backlog --count N`` injects N trigger messages into a running Adobe emulator at once.
* ``rate --per-second R --duration S`` injects R messages per second (drift-corrected) for S s.
* ``sample --count N`` prints messages as JSON, to look at what is generated.

Everything is deterministic: customer ``c`` (1-based) of a seed always has the same profile, and
message ``i`` of a seed is always the same message for a given ``triggerTimestamp``.

Customers: ``customer_id`` ``C%07d``, ``shopper_id`` ``SHOP-%07d``, ``email``
``c%07d@example.test`` (~0.2 % deliberately invalid: ``c%07d at example.test``), names from small
lists, a locale mix (en_US, en_GB, fr_FR, de_DE, ...) with matching IANA time zones, ~3 %
``opted_out``, ~1 % with their ECID in ``ecid``, ~0.5 % block-listed.

Messages (:func:`make_message`): Pipeline producer messages of exactly the shape
:func:`devstack.messages.trigger_message` builds (cart or browse abandonment, 1-3 products from
``DEMO_CATALOG``, the shopper id in ``eVar01`` once per hit, page URLs, ``timeGMT``, the rule
path), with a :class:`Mix` of deliberately bad ones: ~2 % malformed (no ``triggerTimestamp``, a
text timestamp, no ``eVar01`` identity, or a trigger body that is not an object), ~5 % for
unknown shoppers (ids beyond the profile count) and ~3 % of a trigger that routing does not know.
Known customers are drawn by a seeded pseudo-random permutation of ``1..customers``: message
``i`` goes to customer ``perm(i mod customers)``, so no customer gets two messages within any
``customers`` consecutive messages (the dedup window would otherwise turn repeats into
``duplicate`` decisions); ``Mix(draw="random")`` draws with replacement instead.
``customer_offset`` shifts the range to ``offset+1..offset+customers`` (unknown shoppers stay
beyond it), so a second phase can address customers the first one did not. Opted-out and
block-listed customers are hit in their share of the population by construction. A customer's
ECID (the message's ``mcId``) does not depend on the seed.

Injection goes through the emulator's ``POST /_emulator/generate``: the emulator keeps only the
generation parameters and a few integers per message and renders each message again, byte for
byte the same, whenever it is read (:meth:`MessageFactory.render_envelope`, a template renderer
checked against :func:`make_message` and :func:`devstack.messages.envelope` by the tests). A
million messages take ~200 MB in the emulator and are injected in seconds.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from devstack.messages import (
    _FIRE_TO_SEND_MS,
    _HIT_SPACING_MS,
    _INACTIVITY_TIMEOUT_MINUTES,
    BROWSE_ABANDONMENT_TRIGGER_ID,
    CART_ABANDONMENT_TRIGGER_ID,
    DEMO_CATALOG,
    DEMO_IMS_ORG,
    _default_pages,
    _page_hits,
    load_demo_catalog,
    now_ms,
    trigger_message,
)
from include.triggerflow.events import PIPELINE_MESSAGE, TRIGGER_BODY

DEFAULT_EMULATOR_URL = "http://127.0.0.1:8765"  # bin/demo's emulator (airflow_settings.yaml)
DEFAULT_SEED = 7
DEFAULT_CUSTOMERS = 1_000_000
DEFAULT_INJECT_CHUNK = 50_000
DEFAULT_LOAD_CHUNK = 100_000

# Other triggers an Analytics admin defined that routing.yaml does not list: "ignored".
UNCONFIGURED_TRIGGER_IDS: tuple[str, ...] = (
    "3f1d2c4b-7a8e-4b6f-9c0d-1e2f3a4b5c03",  # e.g. a search-without-results trigger
    "b7e6d5c4-3b2a-4c1d-8e9f-0a1b2c3d4e04",  # e.g. a high-value-visit trigger
    "6a5b4c3d-2e1f-4a0b-9c8d-7e6f5a4b3c05",  # e.g. a logo-upload trigger (Adobe's own example)
)
MALFORMED_KINDS: tuple[str, ...] = ("no_timestamp", "text_timestamp", "no_identity", "not_object")
_CATALOG_SKUS: tuple[str, ...] = tuple(DEMO_CATALOG)
# Products of a session: 1-3 catalog items (1: 45 %, 2: 35 %, 3: 20 % of sessions).
_COMBOS: dict[int, tuple[tuple[str, ...], ...]] = {
    size: tuple(itertools.combinations(_CATALOG_SKUS, size)) for size in (1, 2, 3)
}
_ZERO_MCID = "0" * 38

# -- a fast deterministic hash (SplitMix64) ------------------------------------------------------
_M64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


@lru_cache(maxsize=1024)
def _key(seed: int, purpose: int) -> int:
    return _mix64(_mix64(seed & _M64) ^ purpose)


def ecid_for(customer: int) -> str:
    """The Experience Cloud ID (38 digits) of a visitor; independent of the seed."""
    h = _mix64(0xEC1D0000 ^ customer)
    return f"{h % 10**19:019d}{((h * 0xD6E8FEB86659FD93) & _M64) % 10**19:019d}"


def shopper_id_for(customer: int) -> str:
    return f"SHOP-{customer:07d}"


def event_id_for(salt: int, seq: int) -> str:
    """A journal entry's ``event_id`` (UUID v4 shape): 48 bits of ``salt`` and the entry's
    ``seq`` (< 2**74), so unique per journal position for a salt and the same on every read."""
    return (
        f"{(salt >> 32) & 0xFFFFFFFF:08x}-{(salt >> 16) & 0xFFFF:04x}-4{(seq >> 62) & 0xFFF:03x}-"
        f"{0x8000 | ((seq >> 48) & 0x3FFF):04x}-{seq & 0xFFFFFFFFFFFF:012x}"
    )


# -- the message mix -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Mix:
    """Shares of the message population (each message is in exactly one band).

    ``malformed`` (split evenly over :data:`MALFORMED_KINDS`), ``unknown`` (a shopper id beyond
    the profile count), ``unconfigured`` (a trigger id routing does not list, for a known
    customer); the rest are routed triggers for known customers, ``browse`` of them browse
    abandonment and the others cart abandonment. ``draw``: ``permutation`` (no customer twice
    within ``customers`` consecutive messages) or ``random`` (with replacement).
    """

    malformed: float = 0.02
    unknown: float = 0.05
    unconfigured: float = 0.03
    browse: float = 0.40
    draw: str = "permutation"

    def __post_init__(self) -> None:
        for name in ("malformed", "unknown", "unconfigured", "browse"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"mix.{name} must be a number in [0, 1], got {value!r}")
        if self.malformed + self.unknown + self.unconfigured > 1:
            raise ValueError("mix.malformed + mix.unknown + mix.unconfigured must be <= 1")
        if self.draw not in ("permutation", "random"):
            raise ValueError(f"mix.draw must be 'permutation' or 'random', got {self.draw!r}")

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Mix:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError("mix must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"mix: unknown keys {unknown} (known: {sorted(known)})")
        return cls(**dict(data))


@dataclass(frozen=True)
class Plan:
    """What message ``i`` is, before rendering."""

    i: int
    message_id: str
    category: str  # known | unknown | unconfigured | malformed
    malformed: str | None  # one of MALFORMED_KINDS for category "malformed"
    trigger_id: str
    customer: int  # 1-based; > customer_offset + customers for unknown shoppers
    skus: tuple[str, ...]


def _text_timestamp(ts_ms: int) -> str:
    """A timestamp as ISO text: what a producer that forgot the epoch convention would send."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class _Shape:
    """Pre-rendered JSON of everything that depends only on (trigger, products), %-escaped."""

    __slots__ = ("n_hits", "pages_json", "products_json", "trigger_json", "vmi_json")

    def __init__(self, trigger_id: str, skus: tuple[str, ...]) -> None:
        products = {sku: dict(DEMO_CATALOG[sku]) for sku in skus}
        pages = _default_pages(trigger_id, products)
        hits = _page_hits(pages)
        self.n_hits = len(hits)
        self.pages_json = _esc(_dumps(hits))
        self.products_json = _esc(_dumps(products))
        last_page = next((p for p in reversed(pages) if p), "")
        condition_page = last_page.split("://", 1)[-1] if last_page else "shop.example.com/cart"
        self.vmi_json = _esc(_dumps(f"conditional -> select * where evars.evars.eVar3 like '{condition_page}'"))
        self.trigger_json = _esc(_dumps(trigger_id))


def _esc(text: str) -> str:
    return text.replace("%", "%%")


_NOTIFY_WAIT_JSON = _esc(_dumps("states visited -> [StateVisitedNode [stateId=vmi_and_1, count=1, operator=GE]]"))
_NOTIFY_JSON = _esc(_dumps(f"inactive_timeout -> {_INACTIVITY_TIMEOUT_MINUTES}"))
_ENVELOPE_HEAD = (
    '{"envelopeType":"DATA","partition":%d,"offset":%d,"createTime":%d,"topic":%s,'
    + _esc(_dumps(PIPELINE_MESSAGE)) + ':{"header":{'
)
_ENVELOPE_BODY_KEY = "}," + _esc(_dumps(TRIGGER_BODY)) + ":"
_C2 = 0xD6E8FEB86659FD93
_HIT_SPACING_S = _HIT_SPACING_MS // 1000
assert _HIT_SPACING_S * 1000 == _HIT_SPACING_MS, "the renderer assumes hits a whole number of seconds apart"
_SCALE24 = float(1 << 24)


def _body_template(shape: _Shape, variant: str) -> str:
    """The trigger body with placeholders, in this order: triggerTimestamp (``%d``, or ``%s``
    text for ``text_timestamp``, absent for ``no_timestamp``), mcId and eVar01 data (both absent
    for ``no_identity``), timeGMT data, then the four triggerPath timestamps."""
    if variant == "no_timestamp":
        ts_field = ""
    elif variant == "text_timestamp":
        ts_field = '"triggerTimestamp":"%s",'
    else:
        ts_field = '"triggerTimestamp":%d,'
    if variant == "no_identity":
        mcid, evar = _ZERO_MCID, ""
    else:
        mcid, evar = "%s", '"eVar01":{"type":"string","data":[%s],"name":"eVar01","source":"session summary"},'
    return (
        '{"triggerId":' + shape.trigger_json + "," + ts_field + '"mcId":"' + mcid + '",'
        '"enrichments":{"analyticsHitSummary":{"dimensions":{' + evar
        + '"pageURL":{"type":"string","data":' + shape.pages_json + ',"name":"pageURL","source":"session summary"},'
        '"timeGMT":{"type":"int","data":[%s],"name":"timeGMT","source":"session summary"}},'
        '"products":' + shape.products_json + "}},"
        '"triggerPath":[{"timestamp":%d,"stateId":"start_and_and","transition":"null"},'
        '{"timestamp":%d,"stateId":"vmi_and_1","transition":' + shape.vmi_json + "},"
        '{"timestamp":%d,"stateId":"notify_wait","transition":' + _NOTIFY_WAIT_JSON + "},"
        '{"timestamp":%d,"stateId":"notify","transition":' + _NOTIFY_JSON + "}]}"
    )


class MessageFactory:
    """Messages of one (seed, customers, mix): :meth:`message` (a dict, built with
    :func:`devstack.messages.trigger_message`) and :meth:`render_producer` /
    :meth:`render_envelope` (the same message as compact JSON bytes from cached templates,
    several times faster; the tests check they are byte for byte the same)."""

    def __init__(
        self,
        seed: int = DEFAULT_SEED,
        customers: int = DEFAULT_CUSTOMERS,
        mix: Mix | None = None,
        *,
        customer_offset: int = 0,
        ims_org: str = DEMO_IMS_ORG,
    ) -> None:
        if isinstance(customers, bool) or not isinstance(customers, int) or customers < 1:
            raise ValueError(f"customers must be an integer >= 1, got {customers!r}")
        if isinstance(customer_offset, bool) or not isinstance(customer_offset, int) or customer_offset < 0:
            raise ValueError(f"customer_offset must be an integer >= 0, got {customer_offset!r}")
        self.customer_offset = customer_offset
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        self.customers = customers
        self.mix = mix or Mix()
        self.ims_org = ims_org
        self._k = _key(seed, 0x1D)
        # Affine permutation c = (a*i + b) mod N with gcd(a, N) = 1.
        a = max(1, int(customers * 0.6180339887498949)) | 1
        while math.gcd(a, customers) != 1:
            a += 1
        self._perm_a = a % customers or 1
        self._perm_b = _key(seed, 0xB) % customers
        m = self.mix
        # Bands on the top 24 bits of the message's hash.
        self._t_malformed = int(m.malformed * _SCALE24)
        self._t_unknown = int((m.malformed + m.unknown) * _SCALE24)
        self._t_unconfigured = int((m.malformed + m.unknown + m.unconfigured) * _SCALE24)
        self._t_browse = int(m.browse * 65536)
        self._random_draw = m.draw == "random"
        self._unknown_span = max(customers, 1000)
        self._shapes: dict[tuple[str, tuple[str, ...]], _Shape] = {}
        self._templates: dict[tuple[str, tuple[str, ...], str | None], tuple[str, str, str, str, int]] = {}
        self._header = (
            '"messageType":"TRIGGER","source":"triggers","sentTime":%d,"imsOrg":' + _esc(_dumps(ims_org))
            + ',"messageId":"%s","properties":[{"name":"triggerFiredTimestamp","value":"%d"},'
            '{"name":"sourceFirstTimestamp","value":"%d"},{"name":"sourceLastTimestamp","value":"%d"},'
            '{"name":"trace","value":"false"}]'
        )
        self._topics: dict[str, str] = {}
        self._lock = threading.Lock()

    # -- what message i is ---------------------------------------------------------------------
    def _choose(self, i: int) -> tuple[str, int, str | None, str, int, tuple[str, ...]]:
        """(message id, category band, malformed kind, trigger id, customer, skus) of message i:
        one SplitMix64 hash of (seed, i) decides everything."""
        x = ((self._k ^ i) + 0x9E3779B97F4A7C15) & _M64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
        h = x ^ (x >> 31)
        h2 = (h * _C2) & _M64
        message_id = (
            f"{h >> 32:08x}-{(h >> 16) & 0xFFFF:04x}-4{h & 0xFFF:03x}-"
            f"{0x8000 | ((h2 >> 48) & 0x3FFF):04x}-{h2 & 0xFFFFFFFFFFFF:012x}"
        )
        band = h >> 40
        kind = None
        if band < self._t_malformed:
            category = 0
            kind = MALFORMED_KINDS[(h >> 38) & 3]
        elif band < self._t_unknown:
            category = 1
        elif band < self._t_unconfigured:
            category = 2
        else:
            category = 3
        if category == 2:
            trigger_id = UNCONFIGURED_TRIGGER_IDS[(h2 >> 20) % len(UNCONFIGURED_TRIGGER_IDS)]
        elif ((h >> 22) & 0xFFFF) < self._t_browse:
            trigger_id = BROWSE_ABANDONMENT_TRIGGER_ID
        else:
            trigger_id = CART_ABANDONMENT_TRIGGER_ID
        n = self.customers
        if category == 1:
            customer = self.customer_offset + n + 1 + (h2 >> 8) % self._unknown_span
        elif self._random_draw:
            customer = self.customer_offset + 1 + (h2 >> 8) % n
        else:
            customer = self.customer_offset + 1 + (self._perm_a * (i % n) + self._perm_b) % n
        size_u = (h >> 16) & 0x3F
        combos = _COMBOS[1 if size_u < 29 else 2 if size_u < 51 else 3]  # 45 % / 35 % / 20 %
        return message_id, category, kind, trigger_id, customer, combos[(h & 0xFFFF) % len(combos)]

    def message_id(self, i: int) -> str:
        return self._choose(i)[0]

    def plan(self, i: int) -> Plan:
        if i < 0:
            raise ValueError(f"message index must be >= 0, got {i}")
        message_id, category, kind, trigger_id, customer, skus = self._choose(i)
        name = ("malformed", "unknown", "unconfigured", "known")[category]
        return Plan(i, message_id, name, kind, trigger_id, customer, skus)

    # -- the reference form: a dict ------------------------------------------------------------
    def message(self, i: int, trigger_ts_ms: int) -> dict[str, Any]:
        """Message ``i`` as a Pipeline producer message (see :func:`make_message`)."""
        p = self.plan(i)
        no_identity = p.malformed == "no_identity"
        msg = trigger_message(
            trigger_id=p.trigger_id,
            shopper_id=None if no_identity else shopper_id_for(p.customer),
            mc_id=_ZERO_MCID if no_identity else ecid_for(p.customer),
            products=list(p.skus),
            triggered_at_ms=trigger_ts_ms,
            ims_org=self.ims_org,
            message_id=p.message_id,
        )
        body = msg["message"]
        if p.malformed == "no_timestamp":
            del body["triggerTimestamp"]
        elif p.malformed == "text_timestamp":
            body["triggerTimestamp"] = _text_timestamp(trigger_ts_ms)
        elif p.malformed == "not_object":
            # Double-encoded: the trigger body arrives as a JSON *string*.
            msg["message"] = _dumps(body)
        return msg

    # -- the fast form: JSON bytes -------------------------------------------------------------
    def _template(self, trigger_id: str, skus: tuple[str, ...], kind: str | None) -> tuple[str, str, str, str, int]:
        """(producer, envelope, journal item, body, hits) templates of a message shape; the
        ``not_object`` ones take the already rendered (string-encoded) body as one ``%s``."""
        key = (trigger_id, skus, kind)
        found = self._templates.get(key)
        if found is not None:
            return found
        with self._lock:
            shape = self._shapes.get((trigger_id, skus))
            if shape is None:
                shape = self._shapes[(trigger_id, skus)] = _Shape(trigger_id, skus)
            body = _body_template(shape, kind or "ok")
            body_slot = "%s" if kind == "not_object" else body
            envelope = _ENVELOPE_HEAD + self._header + _ENVELOPE_BODY_KEY + body_slot + "}}"
            found = (
                "{" + self._header + ',"message":' + body_slot + "}",
                envelope,
                '{"position":"%s","event":{"event_id":"%s","event":' + envelope + "}}",
                body,
                shape.n_hits,
            )
            self._templates[key] = found
        return found

    def _args(self, i: int, trigger_ts_ms: int) -> tuple[tuple[str, str, str, str, int], tuple[Any, ...]]:
        """(the message's templates, the arguments after the envelope head) of message i."""
        message_id, _, kind, trigger_id, customer, skus = self._choose(i)
        templates = self._templates.get((trigger_id, skus, kind)) or self._template(trigger_id, skus, kind)
        n = templates[4]
        ts = int(trigger_ts_ms)
        fired = ts - _FIRE_TO_SEND_MS
        notify = fired - 1
        last_hit = notify - _INACTIVITY_TIMEOUT_MINUTES * 60_000
        first_hit = last_hit - (n - 1) * _HIT_SPACING_MS
        first_s = first_hit // 1000
        # Hits are a whole number of seconds apart, so their epoch seconds step exactly.
        times = ",".join(map(str, range(first_s, first_s + _HIT_SPACING_S * n, _HIT_SPACING_S)))
        if kind is None:
            return templates, (
                ts, message_id, fired, first_s, last_hit // 1000,
                ts, ecid_for(customer), ",".join((f'"SHOP-{customer:07d}"',) * n), times,
                first_hit, last_hit, last_hit, notify,
            )
        head = (ts, message_id, fired, first_s, last_hit // 1000)
        path = (first_hit, last_hit, last_hit, notify)
        shopper = ",".join((f'"SHOP-{customer:07d}"',) * n)
        if kind == "not_object":
            body = templates[3] % (ts, ecid_for(customer), shopper, times, *path)
            return templates, (*head, _dumps(body))
        if kind == "no_timestamp":
            return templates, (*head, ecid_for(customer), shopper, times, *path)
        if kind == "text_timestamp":
            return templates, (*head, _text_timestamp(ts), ecid_for(customer), shopper, times, *path)
        return templates, (*head, ts, times, *path)  # no_identity

    def _topic_json(self, topic: str) -> str:
        found = self._topics.get(topic)
        if found is None:
            found = self._topics.setdefault(topic, _dumps(topic))
        return found

    def render_producer(self, i: int, trigger_ts_ms: int) -> bytes:
        """``json.dumps(self.message(i, ts), separators=(",", ":"))``, byte for byte, fast."""
        templates, args = self._args(i, trigger_ts_ms)
        return (templates[0] % args).encode("ascii")

    def render_envelope(
        self, i: int, trigger_ts_ms: int, *, partition: int, offset: int, create_time_ms: int, topic: str = "triggers"
    ) -> bytes:
        """The pipeline envelope a consumer sees for message ``i``: byte for byte
        ``json.dumps(devstack.messages.envelope(message, ...), separators=(",", ":"))``."""
        templates, args = self._args(i, trigger_ts_ms)
        return (templates[1] % (partition, offset, create_time_ms, self._topic_json(topic), *args)).encode("ascii")

    def render_journal_item(
        self, i: int, trigger_ts_ms: int, *, partition: int, offset: int, create_time_ms: int, topic: str,
        position: str, event_id: str,
    ) -> bytes:
        """One element of a journal page's ``events``: ``{"position", "event": {"event_id",
        "event": <the envelope>}}`` as compact JSON."""
        templates, args = self._args(i, trigger_ts_ms)
        head = (position, event_id, partition, offset, create_time_ms, self._topic_json(topic))
        return (templates[2] % (head + args)).encode("ascii")


@lru_cache(maxsize=32)
def factory_for(seed: int, customers: int, mix: Mix, customer_offset: int = 0) -> MessageFactory:
    return MessageFactory(seed, customers, mix, customer_offset=customer_offset)


def make_message(
    i: int,
    *,
    seed: int = DEFAULT_SEED,
    customers: int = DEFAULT_CUSTOMERS,
    mix: Mix | None = None,
    trigger_ts_ms: int | None = None,
    customer_offset: int = 0,
) -> dict[str, Any]:
    """Message ``i`` of ``seed``: a Pipeline producer message (the shape of
    :func:`devstack.messages.trigger_message`). Deterministic in (seed, customers, mix, i,
    trigger_ts_ms, customer_offset); ``trigger_ts_ms`` defaults to now (``triggerTimestamp`` =
    ``sentTime``)."""
    ts = now_ms() if trigger_ts_ms is None else int(trigger_ts_ms)
    return factory_for(seed, customers, mix or Mix(), customer_offset).message(i, ts)


# -- profiles ------------------------------------------------------------------------------------
FIRST_NAMES: tuple[str, ...] = (
    "Ada", "Alan", "Grace", "Linus", "Margaret", "Dennis", "Barbara", "Ken", "Frances", "Edsger",
    "Radia", "Tim", "Hedy", "Guido", "Karen", "Niklaus", "Sophie", "Lucas", "Emma", "Jonas",
    "Chloé", "Léa", "Jürgen", "Anna", "Mateo", "Giulia", "Sven", "Marta", "Noah", "Mia",
)
LAST_NAMES: tuple[str, ...] = (
    "Lovelace", "Turing", "Hopper", "Torvalds", "Hamilton", "Ritchie", "Liskov", "Thompson",
    "Allen", "Dijkstra", "Perlman", "Berners-Lee", "Lamarr", "van Rossum", "Spärck Jones", "Wirth",
    "Martin", "Dubois", "Müller", "Schmidt", "García", "Rossi", "de Vries", "O'Brien", "Smith",
    "Johnson", "Bernard", "Fischer", "López", "Bianchi",
)
# (locale, cumulative share, time zones)
LOCALES: tuple[tuple[str, float, tuple[str, ...]], ...] = (
    ("en_US", 0.40, ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")),
    ("en_GB", 0.55, ("Europe/London",)),
    ("fr_FR", 0.70, ("Europe/Paris",)),
    ("de_DE", 0.82, ("Europe/Berlin",)),
    ("es_ES", 0.89, ("Europe/Madrid", "Atlantic/Canary")),
    ("it_IT", 0.94, ("Europe/Rome",)),
    ("nl_NL", 0.98, ("Europe/Amsterdam",)),
    ("en_AU", 1.00, ("Australia/Sydney",)),
)
PROFILE_COLUMNS: tuple[str, ...] = (
    "customer_id", "email", "first_name", "last_name", "locale", "timezone",
    "shopper_id", "ecid", "declared_id", "opted_out", "updated_at",
)
BLOCK_LIST_REASON = "loadgen synthetic block list"


@dataclass(frozen=True)
class ProfileShares:
    opted_out: float = 0.03
    ecid: float = 0.01
    invalid_email: float = 0.002
    block_listed: float = 0.005  # among valid addresses


@dataclass(frozen=True)
class Profile:
    customer: int
    customer_id: str
    email: str
    first_name: str
    last_name: str
    locale: str
    timezone: str
    shopper_id: str
    ecid: str | None
    declared_id: str
    opted_out: bool
    invalid_email: bool
    block_listed: bool


def customer_id_for(customer: int) -> str:
    return f"C{customer:07d}"


def _invalid_blocked(g: int, shares: ProfileShares) -> tuple[bool, bool]:
    invalid = ((g >> 40) & 0xFFFFFF) / 16777216.0 < shares.invalid_email
    return invalid, not invalid and ((g >> 16) & 0xFFFFFF) / 16777216.0 < shares.block_listed


def block_listed_email(customer: int, seed: int = DEFAULT_SEED, shares: ProfileShares = ProfileShares()) -> str | None:
    """The (lower-case) address of ``customer`` if it is on the synthetic block list."""
    g = _mix64(_mix64(_key(seed, 0x9F) ^ customer) ^ 0x51)
    return f"c{customer:07d}@example.test" if _invalid_blocked(g, shares)[1] else None


def profile_for(customer: int, seed: int = DEFAULT_SEED, shares: ProfileShares = ProfileShares()) -> Profile:
    """Customer ``customer`` (1-based) of ``seed``."""
    h = _mix64(_key(seed, 0x9F) ^ customer)
    g = _mix64(h ^ 0x51)
    k = _mix64(g ^ 0x77)
    opted_out = ((h >> 40) & 0xFFFFFF) / 16777216.0 < shares.opted_out
    has_ecid = ((h >> 16) & 0xFFFFFF) / 16777216.0 < shares.ecid
    invalid, blocked = _invalid_blocked(g, shares)
    u_locale = ((k >> 40) & 0xFFFFFF) / 16777216.0
    locale, _, zones = next(entry for entry in LOCALES if u_locale < entry[1])
    email = ("c%07d at example.test" if invalid else "c%07d@example.test") % customer
    return Profile(
        customer=customer,
        customer_id=customer_id_for(customer),
        email=email,
        first_name=FIRST_NAMES[(g & 0xFFFF) % len(FIRST_NAMES)],
        last_name=LAST_NAMES[(k & 0xFFFF) % len(LAST_NAMES)],
        locale=locale,
        timezone=zones[((k >> 16) & 0xFF) % len(zones)],
        shopper_id=shopper_id_for(customer),
        ecid=ecid_for(customer) if has_ecid else None,
        declared_id=f"crm-{customer:07d}",
        opted_out=opted_out,
        invalid_email=invalid,
        block_listed=blocked,
    )


@dataclass
class ProfileLoadResult:
    requested: int
    inserted: int
    skipped_existing: int
    block_listed: int
    seconds: float
    dialect: str
    #: products in the store's catalogue after loading the demo catalogue
    catalog_products: int = 0

    @property
    def rows_per_s(self) -> float:
        return self.inserted / self.seconds if self.seconds > 0 else 0.0


def _progress(total: int, desc: str, enabled: bool, unit: str = "rows") -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the project's dependencies
        return None
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, smoothing=0.05, dynamic_ncols=True)


def _synthetic_ids_filter(column: Any) -> Any:
    """``C%07d`` ids only (the demo's own ``C0001`` style ids are shorter)."""
    from sqlalchemy import and_, func

    return and_(column >= "C0000000", column <= "C9999999", func.length(column) == 8)


def load_profiles(
    engine: Any,
    count: int,
    *,
    seed: int = DEFAULT_SEED,
    replace: bool = False,
    chunk: int = DEFAULT_LOAD_CHUNK,
    shares: ProfileShares = ProfileShares(),
    progress: bool = False,
) -> ProfileLoadResult:
    """Create the store schema and load customers ``1..count``; existing ids are skipped (with
    ``replace``, every synthetic ``C%07d`` profile and the synthetic block list go first). The demo
    catalogue is loaded too (upserted): without it the shipped catalogue-mode routes would send
    nothing for these customers' triggers.
    PostgreSQL: ``COPY`` per chunk; SQLite: ``executemany`` per chunk with
    ``synchronous=OFF`` for this connection while loading."""
    from sqlalchemy import delete, func, select

    from include.triggerflow.catalog import catalog_size
    from include.triggerflow.store.bulk import insert_ignore
    from include.triggerflow.store.migrations import create_schema
    from include.triggerflow.store.schema import profiles, suppression

    if count < 0:
        raise ValueError("count must be >= 0")
    create_schema(engine)
    dialect = engine.dialect.name
    started = time.perf_counter()
    if replace:
        with engine.begin() as conn:
            conn.execute(delete(profiles).where(_synthetic_ids_filter(profiles.c.customer_id)))
            conn.execute(delete(suppression).where(suppression.c.reason == BLOCK_LIST_REASON))
    now = datetime.now(UTC)
    if dialect == "sqlite":
        bind = profiles.c.updated_at.type._cached_bind_processor(engine.dialect)  # SQLAlchemy's own format
        stamp: Any = bind(now) if bind is not None else now.isoformat(sep=" ")
    else:
        stamp = now.isoformat()
    inserted = skipped = 0
    blocked: list[str] = []
    bar = _progress(count, "profiles", progress)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        if dialect == "sqlite":
            cur.execute("PRAGMA synchronous=OFF")
        placeholders = ",".join("?" if dialect == "sqlite" else "%s" for _ in PROFILE_COLUMNS)
        insert_sql = f"INSERT INTO profiles ({','.join(PROFILE_COLUMNS)}) VALUES ({placeholders})"
        copy_sql = f"COPY profiles ({','.join(PROFILE_COLUMNS)}) FROM STDIN WITH (FORMAT csv)"
        for lo in range(1, count + 1, chunk):
            hi = min(count, lo + chunk - 1)
            cur.execute(
                "SELECT customer_id FROM profiles WHERE customer_id >= %s AND customer_id <= %s AND length(customer_id) = 8".replace(
                    "%s", "?" if dialect == "sqlite" else "%s"
                ),
                (customer_id_for(lo), customer_id_for(hi)),
            )
            existing = {row[0] for row in cur.fetchall()}
            rows = []
            if len(existing) == hi - lo + 1:
                # The whole chunk is there already (a rerun): only its block-list entries matter.
                for c in range(lo, hi + 1):
                    address = block_listed_email(c, seed, shares)
                    if address is not None:
                        blocked.append(address)
            else:
                for c in range(lo, hi + 1):
                    p = profile_for(c, seed, shares)
                    if p.block_listed:
                        blocked.append(p.email.lower())
                    if p.customer_id not in existing:
                        rows.append(
                            (p.customer_id, p.email, p.first_name, p.last_name, p.locale, p.timezone,
                             p.shopper_id, p.ecid, p.declared_id, p.opted_out, stamp)
                        )
            if rows:
                if dialect == "postgresql":
                    buf = io.StringIO()
                    writer = csv.writer(buf, lineterminator="\n")
                    for r in rows:
                        writer.writerow(["" if v is None else ("t" if v is True else "f" if v is False else v) for v in r])
                    buf.seek(0)
                    cur.copy_expert(copy_sql, buf)
                else:
                    cur.executemany(insert_sql, [(*r[:9], 1 if r[9] else 0, r[10]) for r in rows])
                raw.commit()
            inserted += len(rows)
            skipped += (hi - lo + 1) - len(rows)
            if bar is not None:
                bar.update(hi - lo + 1)
        if dialect == "sqlite":
            cur.execute("PRAGMA synchronous=NORMAL")
        elif inserted:
            cur.execute("ANALYZE profiles")
            raw.commit()
        cur.close()
    finally:
        raw.close()
        if bar is not None:
            bar.close()
    block_rows = [
        {"address": a, "source": "block-list", "reason": BLOCK_LIST_REASON, "smtp_code": None, "created_at": now}
        for a in blocked
    ]
    with engine.begin() as conn:
        for part in range(0, len(block_rows), 10_000):
            insert_ignore(conn, suppression, block_rows[part : part + 10_000], keys=["address"])
        total_blocked = conn.execute(
            select(func.count()).select_from(suppression).where(suppression.c.reason == BLOCK_LIST_REASON)
        ).scalar_one()
    load_demo_catalog(engine)
    with engine.connect() as conn:
        products = catalog_size(conn)
    return ProfileLoadResult(
        requested=count,
        inserted=inserted,
        skipped_existing=skipped,
        block_listed=int(total_blocked),
        seconds=time.perf_counter() - started,
        dialect=dialect,
        catalog_products=products,
    )


# -- injection into the emulator ------------------------------------------------------------------
class Injector:
    """Feeds a running emulator through ``POST /_emulator/generate``."""

    def __init__(self, emulator_url: str = DEFAULT_EMULATOR_URL, *, timeout: float = 120.0) -> None:
        import requests

        self.base_url = emulator_url.rstrip("/")
        self.session = requests.Session()
        self.timeout = timeout

    def generate(
        self,
        count: int,
        *,
        start: int | None = None,
        seed: int = DEFAULT_SEED,
        customers: int = DEFAULT_CUSTOMERS,
        mix: Mix | None = None,
        trigger_ts_ms: int | None = None,
        topic: str = "triggers",
        customer_offset: int = 0,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"count": count, "seed": seed, "customers": customers, "topic": topic}
        if customer_offset:
            body["customer_offset"] = customer_offset
        if start is not None:
            body["start"] = start
        if mix is not None:
            body["mix"] = mix.as_json()
        if trigger_ts_ms is not None:
            body["trigger_ts_ms"] = trigger_ts_ms
        response = self.session.post(f"{self.base_url}/_emulator/generate", json=body, timeout=self.timeout)
        if response.status_code != 200:
            raise RuntimeError(f"POST /_emulator/generate -> HTTP {response.status_code}: {response.text[:500]}")
        return response.json()

    def close(self) -> None:
        self.session.close()


@dataclass
class InjectionResult:
    injected: int
    seconds: float
    first_start: int | None
    next_start: int | None

    @property
    def per_second(self) -> float:
        return self.injected / self.seconds if self.seconds > 0 else 0.0


def inject_backlog(
    emulator_url: str,
    count: int,
    *,
    start: int | None = None,
    seed: int = DEFAULT_SEED,
    customers: int = DEFAULT_CUSTOMERS,
    mix: Mix | None = None,
    trigger_ts_ms: int | None = None,
    chunk: int = DEFAULT_INJECT_CHUNK,
    progress: bool = False,
    customer_offset: int = 0,
) -> InjectionResult:
    """Inject ``count`` messages in chunks. ``triggerTimestamp``: ``trigger_ts_ms`` for every
    message when given, else the time each chunk is generated. ``start`` None continues after
    the last message the emulator generated for ``seed``."""
    injector = Injector(emulator_url)
    bar = _progress(count, "backlog", progress, "msgs")
    started = time.perf_counter()
    done = 0
    first = next_start = None
    try:
        while done < count:
            n = min(chunk, count - done)
            answer = injector.generate(
                n, start=None if start is None else start + done, seed=seed, customers=customers, mix=mix,
                trigger_ts_ms=trigger_ts_ms, customer_offset=customer_offset,
            )
            if first is None:
                first = answer["start"]
            next_start = answer["next_start"]
            done += n
            if bar is not None:
                bar.update(n)
    finally:
        injector.close()
        if bar is not None:
            bar.close()
    return InjectionResult(done, time.perf_counter() - started, first, next_start)


@dataclass
class RateResult:
    injected: int
    seconds: float
    target_per_second: float
    late_ticks: int

    @property
    def per_second(self) -> float:
        return self.injected / self.seconds if self.seconds > 0 else 0.0


def inject_rate(
    emulator_url: str,
    per_second: float,
    duration_s: float,
    *,
    start: int | None = None,
    seed: int = DEFAULT_SEED,
    customers: int = DEFAULT_CUSTOMERS,
    mix: Mix | None = None,
    tick_s: float = 1.0,
    progress: bool = False,
    report: Any = None,
    customer_offset: int = 0,
) -> RateResult:
    """Inject ``per_second`` messages per second for ``duration_s`` seconds: every ``tick_s`` the
    number due since the start (``floor(rate * elapsed)`` minus what was sent) goes in one
    request stamped with the injection time, so a slow tick is caught up by the next one and the
    long-run rate does not drift. ``report(sent, elapsed)`` is called after each tick."""
    if per_second <= 0 or duration_s <= 0:
        raise ValueError("per_second and duration_s must be > 0")
    total = int(per_second * duration_s)
    injector = Injector(emulator_url)
    bar = _progress(total, "rate", progress, "msgs")
    t0 = time.monotonic()
    sent = late = 0
    next_start = start
    tick = 0
    try:
        while sent < total:
            tick += 1
            due_at = t0 + tick * tick_s
            now = time.monotonic()
            if due_at > now:
                time.sleep(due_at - now)
            elif now - due_at > tick_s:
                # More than a tick behind (a slow request, a busy machine): skip the missed ticks;
                # what they would have sent is due now.
                late += 1
                tick = int((now - t0) / tick_s)
            elapsed = time.monotonic() - t0
            due = min(total, int(per_second * min(elapsed, duration_s))) - sent
            if due <= 0:
                continue
            answer = injector.generate(
                due, start=next_start, seed=seed, customers=customers, mix=mix, trigger_ts_ms=now_ms(),
                customer_offset=customer_offset,
            )
            next_start = answer["next_start"]
            sent += due
            if bar is not None:
                bar.update(due)
                bar.set_postfix_str(f"{sent / max(time.monotonic() - t0, 1e-9):.1f}/s")
            if report is not None:
                report(sent, time.monotonic() - t0)
    finally:
        injector.close()
        if bar is not None:
            bar.close()
    return RateResult(sent, time.monotonic() - t0, per_second, late)


# -- CLI ------------------------------------------------------------------------------------------
def _store_engine(db_url: str | None) -> Any:
    from include.triggerflow.store.engines import get_engine

    url = db_url or os.environ.get("TRIGGERFLOW_DB_URL")
    if not url:
        from include.triggerflow.hooks.store import TriggersStoreHook

        url = TriggersStoreHook().get_url()
    return get_engine(url)


def _mix_from_args(args: argparse.Namespace) -> Mix:
    data = json.loads(args.mix) if args.mix else {}
    for name in ("malformed", "unknown", "unconfigured", "browse", "draw"):
        value = getattr(args, name, None)
        if value is not None:
            data[name] = value
    return Mix.from_json(data)


def _add_message_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"message seed (default {DEFAULT_SEED})")
    parser.add_argument(
        "--customers", type=int, default=DEFAULT_CUSTOMERS,
        help=f"profile count the messages refer to (default {DEFAULT_CUSTOMERS}); match `profiles --count`",
    )
    parser.add_argument(
        "--customer-offset", type=int, default=0,
        help="address customers offset+1..offset+customers (default 0); e.g. a rate phase after a backlog",
    )
    parser.add_argument("--start", type=int, help="index of the first message (default: continue after the last one the emulator generated for this seed)")
    parser.add_argument("--mix", help='JSON object, e.g. \'{"malformed": 0.02, "unknown": 0.05}\'')
    parser.add_argument("--malformed", type=float)
    parser.add_argument("--unknown", type=float)
    parser.add_argument("--unconfigured", type=float)
    parser.add_argument("--browse", type=float)
    parser.add_argument("--draw", choices=("permutation", "random"))


def _add_emulator_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--emulator-url", default=DEFAULT_EMULATOR_URL, help=f"default {DEFAULT_EMULATOR_URL} (bin/demo's emulator)")


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devstack.loadgen", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    prof = sub.add_parser("profiles", help="bulk-load N synthetic customers into the store")
    prof.add_argument("--count", type=int, required=True)
    prof.add_argument("--db-url", help="SQLAlchemy URL of the store (default: $TRIGGERFLOW_DB_URL or connection triggers_db)")
    prof.add_argument("--seed", type=int, default=DEFAULT_SEED)
    prof.add_argument("--replace", action="store_true", help="delete the synthetic profiles and block list first")
    prof.add_argument("--chunk", type=int, default=DEFAULT_LOAD_CHUNK, help="rows per transaction / COPY")

    back = sub.add_parser("backlog", help="inject N messages into the emulator now")
    back.add_argument("--count", type=int, required=True)
    back.add_argument("--chunk", type=int, default=DEFAULT_INJECT_CHUNK, help="messages per request")
    back.add_argument("--trigger-ts-ms", type=int, help="triggerTimestamp of every message (default: when its chunk is generated)")
    _add_emulator_args(back)
    _add_message_args(back)

    rate = sub.add_parser("rate", help="inject R messages per second for S seconds")
    rate.add_argument("--per-second", type=float, required=True)
    rate.add_argument("--duration", type=float, required=True, help="seconds")
    rate.add_argument("--tick", type=float, default=1.0, help="seconds between injections (default 1)")
    _add_emulator_args(rate)
    _add_message_args(rate)

    sample = sub.add_parser("sample", help="print messages as JSON lines")
    sample.add_argument("--count", type=int, default=3)
    sample.add_argument("--envelope", action="store_true", help="print the pipeline envelope instead of the producer message")
    _add_message_args(sample)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    tty = sys.stderr.isatty()
    if args.command == "profiles":
        from include.triggerflow.store.engines import describe

        engine = _store_engine(args.db_url)
        print(f"loading {args.count} profiles into {describe(engine)}", file=sys.stderr)
        result = load_profiles(engine, args.count, seed=args.seed, replace=args.replace, chunk=args.chunk, progress=True)
        print(
            f"profiles: {result.inserted} inserted, {result.skipped_existing} already there, "
            f"{result.block_listed} block-listed addresses; {result.seconds:.1f} s "
            f"({result.rows_per_s:,.0f} rows/s) on {result.dialect}; {result.catalog_products} catalogue products"
        )
        return 0
    mix = _mix_from_args(args)
    if args.command == "sample":
        factory = MessageFactory(args.seed, args.customers, mix, customer_offset=args.customer_offset)
        ts = now_ms()
        for i in range(args.start or 0, (args.start or 0) + args.count):
            if args.envelope:
                print(factory.render_envelope(i, ts, partition=0, offset=1000 + i, create_time_ms=ts).decode())
            else:
                print(json.dumps(factory.message(i, ts)))
        return 0
    if args.command == "backlog":
        backlog = inject_backlog(
            args.emulator_url, args.count, start=args.start, seed=args.seed, customers=args.customers, mix=mix,
            trigger_ts_ms=args.trigger_ts_ms, chunk=args.chunk, progress=True, customer_offset=args.customer_offset,
        )
        print(
            f"backlog: {backlog.injected} messages (i = {backlog.first_start}..{(backlog.next_start or 1) - 1}) "
            f"in {backlog.seconds:.1f} s = {backlog.per_second:,.0f}/s"
        )
        return 0
    # rate
    last_print = [time.monotonic()]

    def _report(sent: int, elapsed: float) -> None:
        if not tty and time.monotonic() - last_print[0] >= 10:
            last_print[0] = time.monotonic()
            print(f"rate: {sent} sent in {elapsed:.0f} s = {sent / elapsed:.1f}/s", flush=True)

    rate = inject_rate(
        args.emulator_url, args.per_second, args.duration, start=args.start, seed=args.seed,
        customers=args.customers, mix=mix, tick_s=args.tick, progress=True, report=_report,
        customer_offset=args.customer_offset,
    )
    print(
        f"rate: {rate.injected} messages in {rate.seconds:.1f} s = {rate.per_second:.1f}/s "
        f"(target {rate.target_per_second:g}/s, late ticks {rate.late_ticks})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
