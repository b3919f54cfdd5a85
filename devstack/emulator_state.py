"""The Adobe emulator's model: positions, journal entries, partition logs, fault rules and the
shared state the request handler (devstack/adobe_emulator.py) serves from.

Kept apart from the HTTP handler so the data rules (where a message sits, what a fault does, how
a sync marker encodes offsets) read on their own; everything here is re-exported by
devstack.adobe_emulator, the module tools and tests import.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import hashlib
import json
import re
import secrets
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from devstack.loadgen import MessageFactory, event_id_for
from devstack.messages import DEMO_IMS_ORG, now_ms
from include.triggerflow.events import PIPELINE_MESSAGE

TOKEN_PATH = "/ims/token/v3"
JWT_EXCHANGE_PATH = "/ims/exchange/jwt"
DISCOVERY_PATH = "/v1/endpoints"
CONSUMER_SYNC_PATH = "/pipeline/consumer/sync"
JOURNAL_PREFIX = "/events/organizations/"
PRODUCER_RE = re.compile(r"^/pipeline/topics/(?P<topic>[^/]+)/messages$")
JOURNAL_RE = re.compile(
    r"^/events/organizations/(?P<org>[^/]+)/integrations/(?P<integration>[^/]+)/(?P<registration>[^/]+)$"
)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000  # default cap of the journal's ``limit``; --max-limit raises it
# POST /_emulator/generate: messages per request.
MAX_GENERATE = 5_000_000
# Journal read-ahead: full pages of at least this many entries have the next page rendered in
# the background; at most this many rendered pages are kept.
READ_AHEAD_MIN_LIMIT = 100
READ_AHEAD_PAGES = 2
RETRY_AFTER_SECONDS = 10
FIRST_OFFSET = 1000
# PIPE-API limits: 1 MB for one message, 2 MB for a batch.
MAX_SINGLE_MESSAGE_BYTES = 1_000_000
MAX_BATCH_BYTES = 2_000_000
# POST /_emulator/raw (base64 of messages larger than Pipeline accepts, on purpose).
RAW_PATH = "/_emulator/raw"
MAX_RAW_BODY_BYTES = 64 * 1024 * 1024

POSITION_PREFIX = "v2:"
POSITION_RE = re.compile(r"^v2:(\d{12,18})$")

DEFAULT_TECHNICAL_ACCOUNT_ID = "TECHACCT1234@techacct.adobe.com"
DEFAULT_METASCOPE = "ent_analytics_bulk_ingest_sdk"
DEFAULT_PING_INTERVAL_S = 1.0
DEFAULT_STREAM_MAX_SECONDS = 30.0
# DATA lines taken from the store per lock acquisition while streaming.
STREAM_BATCH = 200
# Pipeline Central's location codes (PIPE-CEN); any of them would do for a local emulator.
DISCOVERY_LOCATION = "VA7"

FAULT_ENDPOINTS = ("consume", "journal", "token", "discovery", "exchange")
FAULT_KINDS = (
    "status", "cut", "slow", "duplicate", "malformed", "stall",
    "ping_first", "interleave_pings", "pings_only", "huge_line", "pad", "token_answer",
)
# Request/response endpoints have no stream to cut, duplicate or garble.
_REQUEST_FAULT_KINDS = ("status", "slow", "stall", "pad", "token_answer")
_STREAM_FAULT_KINDS = (
    "cut", "slow", "duplicate", "malformed", "stall", "ping_first", "interleave_pings", "pings_only", "huge_line",
)
_TOKEN_ENDPOINTS = ("token", "exchange")
# POST /_emulator/raw: how the bytes are served.
RAW_AS = ("envelope", "pipeline_message")
# Largest generated line or padding (a fault, not a body the control plane has to receive).
MAX_FAULT_SIZE = 512 * 1024 * 1024
_INT_RE = re.compile(r"^\d{1,18}$")

# Query parameters whose values must never reach the log.
_SECRET_PARAMS = frozenset({"client_secret", "access_token", "token", "jwt_token", "code", "password"})
_SECRET_TEXT_RE = re.compile(
    r"(?i)(client_secret|access_token|jwt_token|password)=[^&\s'\"]*|bearer\s+[^\s'\"]+"
)


def format_position(seq: int) -> str:
    return f"{POSITION_PREFIX}{seq:012d}"


def parse_position(text: str) -> int | None:
    match = POSITION_RE.match(text)
    return int(match.group(1)) if match else None


def partition_for(message_id: str, partitions: int) -> int:
    """Stable partition of a message id; ``hash()`` is salted per process, so use a digest."""
    digest = hashlib.sha256(message_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % partitions


@dataclass
class EmulatorSettings:
    host: str = "127.0.0.1"
    port: int = 0
    client_id: str = "triggerflow-local"
    client_secret: str = "local-dev-secret"
    org_id: str = DEMO_IMS_ORG
    integration_id: str = "triggerflow-int"
    registration_id: str = "triggerflow-reg"
    token_ttl: int = 86399
    partitions: int = 15
    # Offset of the first message of every partition (also after /_emulator/reset). Pipeline
    # offsets restart here with each emulator process, like a recreated topic; a consumer whose
    # stored offsets are beyond it drops the reused offsets as already read, so a long-lived dev
    # stack that restarts the emulator should pass a growing value (e.g. the epoch seconds).
    first_offset: int = FIRST_OFFSET
    # Topics that exist from the start; the producer endpoint creates others on first publish.
    topics: tuple[str, ...] = ("triggers",)
    ping_interval: float = DEFAULT_PING_INTERVAL_S
    stream_max_seconds: float = DEFAULT_STREAM_MAX_SECONDS
    # PEM of the RSA public key of the (legacy) service-account integration; None = JWT is off.
    jwt_public_key_pem: bytes | None = field(default=None, repr=False)
    technical_account_id: str = DEFAULT_TECHNICAL_ACCOUNT_ID
    metascope: str = DEFAULT_METASCOPE
    # Largest journal page served (a larger ``limit`` is capped to it).
    max_limit: int = MAX_LIMIT
    # Render the next full journal page in the background while the client reads this one.
    read_ahead: bool = True

    @property
    def journal_path(self) -> str:
        return (
            f"/events/organizations/{self.org_id}"
            f"/integrations/{self.integration_id}/{self.registration_id}"
        )


@dataclass
class JournalEntry:
    seq: int
    event_id: str
    event: Any

    @property
    def position(self) -> str:
        return format_position(self.seq)

    def as_json(self) -> dict[str, Any]:
        return {"position": self.position, "event": {"event_id": self.event_id, "event": self.event}}

    def item_bytes(self) -> bytes:
        """This entry as one element of a journal page's ``events`` (compact JSON)."""
        return json.dumps(self.as_json(), separators=(",", ":")).encode("utf-8")


class GeneratedRun:
    """The parameters shared by the messages of one ``POST /_emulator/generate``."""

    __slots__ = ("create_time_ms", "factory", "salt", "topic", "trigger_ts_ms")

    def __init__(self, factory: MessageFactory, trigger_ts_ms: int, create_time_ms: int, topic: str, salt: int) -> None:
        self.factory = factory
        self.trigger_ts_ms = trigger_ts_ms
        self.create_time_ms = create_time_ms
        self.topic = topic
        self.salt = salt


class GeneratedEntry:
    """One generated message: both a journal entry and a pipeline partition's message.

    Nothing of the message is stored; :meth:`envelope_bytes` renders it from (run, i) and its
    placement, the same bytes on every call."""

    __slots__ = ("i", "offset", "partition", "run", "seq")

    def __init__(self, run: GeneratedRun, i: int, seq: int, partition: int, offset: int) -> None:
        self.run = run
        self.i = i
        self.seq = seq
        self.partition = partition
        self.offset = offset

    @property
    def position(self) -> str:
        return format_position(self.seq)

    @property
    def event_id(self) -> str:
        return event_id_for(self.run.salt, self.seq)

    @property
    def create_time(self) -> int:
        return self.run.create_time_ms

    def envelope_bytes(self) -> bytes:
        run = self.run
        return run.factory.render_envelope(
            self.i, run.trigger_ts_ms, partition=self.partition, offset=self.offset,
            create_time_ms=run.create_time_ms, topic=run.topic,
        )

    @property
    def event(self) -> dict[str, Any]:
        """The envelope as a dict (what a published entry stores)."""
        return json.loads(self.envelope_bytes())

    def as_json(self) -> dict[str, Any]:
        return {"position": self.position, "event": {"event_id": self.event_id, "event": self.event}}

    def item_bytes(self) -> bytes:
        run = self.run
        return run.factory.render_journal_item(
            self.i, run.trigger_ts_ms, partition=self.partition, offset=self.offset,
            create_time_ms=run.create_time_ms, topic=run.topic,
            position=format_position(self.seq), event_id=event_id_for(run.salt, self.seq),
        )


class RawEntry:
    """Bytes published with ``POST /_emulator/raw``: served as they are, never parsed."""

    __slots__ = ("create_time", "data", "event_id", "offset", "partition", "seq", "topic", "wrap")

    def __init__(
        self, seq: int, partition: int, offset: int, data: bytes, *, wrap: bool, topic: str
    ) -> None:
        self.seq = seq
        self.event_id = str(uuid.uuid4())
        self.partition = partition
        self.offset = offset
        self.data = data
        self.wrap = wrap
        self.create_time = now_ms()
        self.topic = topic

    @property
    def position(self) -> str:
        return format_position(self.seq)

    def envelope_bytes(self) -> bytes:
        if not self.wrap:
            return self.data
        head = {
            "envelopeType": "DATA", "partition": self.partition, "offset": self.offset,
            "createTime": self.create_time, "topic": self.topic,
        }
        text = json.dumps(head, separators=(",", ":"))[:-1] + "," + json.dumps(PIPELINE_MESSAGE) + ":"
        return text.encode("utf-8") + self.data + b"}"

    def item_bytes(self) -> bytes:
        head = json.dumps({"position": self.position}, separators=(",", ":"))[:-1]
        wrapper = json.dumps({"event_id": self.event_id}, separators=(",", ":"))[:-1]
        return f'{head},"event":{wrapper},"event":'.encode() + self.envelope_bytes() + b"}}"


def _entry_seq(entry: JournalEntry | GeneratedEntry | RawEntry) -> int:
    return entry.seq


def _journal_events_bytes(batch: list[Any]) -> bytes:
    """The ``"events":[...]`` array of a journal page, compact JSON."""
    return b"[" + b",".join([e.item_bytes() for e in batch]) + b"]"


def _as_envelope(message: Any) -> Any:
    """A partition log's message as a dict (generated ones are rendered; raw bytes have none)."""
    if isinstance(message, RawEntry):
        return None
    return message.event if isinstance(message, GeneratedEntry) else message


@dataclass
class PartitionLog:
    """One partition of a pipeline topic: the retained envelopes, at contiguous offsets that end
    just before ``next_offset``. Expiry drops from the front, so the earliest retained offset
    moves up; offsets are never reused."""

    next_offset: int = FIRST_OFFSET
    # Envelope dicts (published) or GeneratedEntry objects (rendered when read).
    messages: list[Any] = field(default_factory=list)

    @property
    def earliest(self) -> int:
        return self.next_offset - len(self.messages)

    def append(self, message: Any) -> None:
        self.messages.append(message)
        self.next_offset += 1

    def at(self, offset: int) -> Any:
        return self.messages[offset - self.earliest]

    def expire_before(self, offset: int) -> int:
        """Drop every retained message below ``offset``; returns how many were dropped."""
        drop = max(0, min(len(self.messages), offset - self.earliest))
        del self.messages[:drop]
        return drop

    def expire_created_before(self, ms: int) -> int:
        drop = 0
        while drop < len(self.messages) and _create_time(self.messages[drop]) < ms:
            drop += 1
        del self.messages[:drop]
        return drop


def _create_time(message: Any) -> int:
    if isinstance(message, RawEntry):
        return message.create_time
    if isinstance(message, GeneratedEntry):
        return message.run.create_time_ms
    value = message.get("createTime")
    return value if isinstance(value, int) else 0


@dataclass
class FaultRule:
    """One queued fault. ``times`` counts requests (status, and slow/stall on request/response
    endpoints), streams (cut, slow, duplicate, stall on the consume stream) or lines
    (malformed)."""

    endpoint: str
    kind: str
    times: int = 1
    status: int = 503
    retry_after: float | None = None
    after_messages: int = 0
    delay_ms: int = 0
    seconds: float = 0.0
    # malformed: only the message at this partition/offset (both optional), or a raw line to
    # insert before the next DATA line instead of garbling a message body.
    partition: int | None = None
    offset: int | None = None
    line: str | None = None
    message: str | None = None
    # ping_first: PINGs before anything else; huge_line / pad: bytes of the line or padding
    count: int = 1
    size: int = 0
    # token_answer: the expires_in to answer (any JSON value); left out when the rule has none
    expires_in: Any = None
    has_expires_in: bool = False
    rule_id: int = 0

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "has_expires_in"}


def parse_fault_rules(payload: Any) -> list[FaultRule]:
    """Validate ``POST /_emulator/faults`` (a rule or a list of rules); ApiError 400 otherwise."""
    items = payload if isinstance(payload, list) else [payload]
    rules: list[FaultRule] = []
    for index, item in enumerate(items):
        where = f"rule #{index}"
        if not isinstance(item, dict):
            raise ApiError(400, "bad_request", f"{where} is not a JSON object")
        endpoint, kind = item.get("endpoint"), item.get("kind")
        if endpoint not in FAULT_ENDPOINTS:
            raise ApiError(400, "bad_request", f"{where}: endpoint must be one of {FAULT_ENDPOINTS}")
        if kind not in FAULT_KINDS:
            raise ApiError(400, "bad_request", f"{where}: kind must be one of {FAULT_KINDS}")
        if endpoint != "consume" and kind not in _REQUEST_FAULT_KINDS:
            raise ApiError(
                400, "bad_request", f"{where}: kind {kind!r} applies to the consume stream only"
            )
        if kind == "token_answer" and endpoint not in _TOKEN_ENDPOINTS:
            raise ApiError(400, "bad_request", f"{where}: kind 'token_answer' applies to {_TOKEN_ENDPOINTS}")
        unknown = set(item) - {f for f in FaultRule.__dataclass_fields__ if f not in ("rule_id", "has_expires_in")}
        if unknown:
            raise ApiError(400, "bad_request", f"{where}: unknown fields {sorted(unknown)}")

        def number(
            name: str, default: Any, *, integer: bool = False, minimum: float = 0,
            item: dict[str, Any] = item, where: str = where,  # this rule's, bound now
        ) -> Any:
            value = item.get(name, default)
            if value is None:
                return None
            ok = isinstance(value, int) if integer else isinstance(value, (int, float))
            if isinstance(value, bool) or not ok or value < minimum:
                kind_text = "an integer" if integer else "a number"
                raise ApiError(400, "bad_request", f"{where}: {name} must be {kind_text} >= {minimum}")
            return value

        status = number("status", 503, integer=True, minimum=100)
        if status > 599:
            raise ApiError(400, "bad_request", f"{where}: status must be an HTTP status code")
        line = item.get("line")
        if line is not None and (not isinstance(line, str) or "\n" in line or "\r" in line):
            raise ApiError(400, "bad_request", f"{where}: line must be one line of text")
        message = item.get("message")
        if message is not None and not isinstance(message, str):
            raise ApiError(400, "bad_request", f"{where}: message must be a string")
        rules.append(
            FaultRule(
                endpoint=endpoint,
                kind=kind,
                times=number("times", 1, integer=True, minimum=1),
                status=status,
                retry_after=number("retry_after", None),
                after_messages=number("after_messages", 0, integer=True),
                delay_ms=number("delay_ms", 0, integer=True),
                seconds=number("seconds", 0.0),
                partition=number("partition", None, integer=True),
                offset=number("offset", None, integer=True),
                line=line,
                message=message,
                count=number("count", 1, integer=True, minimum=1),
                size=_fault_size(number("size", 0, integer=True), where),
                expires_in=item.get("expires_in"),
                has_expires_in="expires_in" in item,
            )
        )
    return rules


def _fault_size(size: int, where: str) -> int:
    if size > MAX_FAULT_SIZE:
        raise ApiError(400, "bad_request", f"{where}: size must be at most {MAX_FAULT_SIZE}")
    return size


def _new_stats() -> dict[str, int]:
    return {
        "token_requests": 0,
        "tokens_issued": 0,
        "journal_requests": 0,
        "events_served": 0,
        "journal_size": 0,
        "published": 0,
        "consume_requests": 0,
        "data_lines_streamed": 0,
        "discovery_requests": 0,
        "faults_fired": 0,
        "jwt_exchanges": 0,
    }


@dataclass
class EmulatorState:
    """Everything mutable, guarded by one lock: requests are served on many threads."""

    partitions: int
    topic_names: tuple[str, ...] = ("triggers",)
    first_offset: int = FIRST_OFFSET
    lock: threading.Lock = field(default_factory=threading.Lock)
    # In seq order (bisected by seq); GeneratedEntry objects are shared with the topic logs.
    journal: list[Any] = field(default_factory=list)
    # Sequence numbers are never reused, not even across /_emulator/reset or a restart of the
    # emulator: they start at the start-up time in microseconds, so a position stored by a client
    # of an earlier emulator process is *older* than this journal (served from its start, like a
    # position whose events aged out of Adobe's 7-day retention), never a different event.
    last_seq: int = field(default_factory=lambda: time.time_ns() // 1000)
    tokens: dict[str, float] = field(default_factory=dict)
    # topic -> its partitions (index = partition number)
    topics: dict[str, list[PartitionLog]] = field(default_factory=dict)
    # (group, topic) -> {partition: next offset}, committed through POST /pipeline/consumer/sync
    group_offsets: dict[tuple[str, str], dict[int, int]] = field(default_factory=dict)
    faults: list[FaultRule] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    # POST /_emulator/generate: next message index per seed, messages generated.
    generated_next: dict[int, int] = field(default_factory=dict)
    generated: int = 0
    # Salt of the event_id of generated entries (derived from their seq).
    event_salt: int = field(default_factory=lambda: secrets.randbits(64))
    # (generation, since seq, limit) -> the rendered events of that full page, being rendered.
    read_ahead: dict[tuple[int, int, int], concurrent.futures.Future[bytes]] = field(default_factory=dict)
    # Bumped on every change open streams care about (publish, expiry); they wait on `changed`.
    version: int = 0
    # Bumped by clear(): streams opened before a reset end.
    generation: int = 0
    stopping: bool = False
    changed: threading.Condition = field(init=False)
    _next_rule_id: int = 0

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)
        self.clear()

    def clear(self) -> None:
        """Caller holds the lock (or is the constructor) and notifies ``changed`` afterwards."""
        self.journal = []
        self.tokens = {}
        self.topics = {name: self._new_topic() for name in self.topic_names}
        self.group_offsets = {}
        self.faults = []
        self.stats = _new_stats()
        self.generated_next = {}
        self.generated = 0
        for pending in self.read_ahead.values():
            pending.cancel()
        self.read_ahead = {}
        self.version += 1
        self.generation += 1

    def _new_topic(self) -> list[PartitionLog]:
        return [PartitionLog(next_offset=self.first_offset) for _ in range(self.partitions)]

    def topic(self, name: str, *, create: bool = False) -> list[PartitionLog] | None:
        """Caller holds the lock."""
        if name not in self.topics and create:
            self.topics[name] = self._new_topic()
        return self.topics.get(name)

    def append(self, event: Any) -> JournalEntry:
        """Caller holds the lock."""
        self.last_seq += 1
        entry = JournalEntry(seq=self.last_seq, event_id=str(uuid.uuid4()), event=event)
        self.journal.append(entry)
        self.stats["journal_size"] = len(self.journal)
        return entry

    def append_generated(self, run: GeneratedRun, start: int, partitions: list[int]) -> tuple[int, int]:
        """Place generated messages ``start ..`` (their partitions given) in the topic and the
        journal, as publishing them would; returns (first seq, last seq). Caller holds the lock."""
        logs = self.topic(run.topic, create=True)
        assert logs is not None
        journal = self.journal
        seq = self.last_seq
        first = seq + 1
        for k, partition in enumerate(partitions):
            log = logs[partition]
            seq += 1
            entry = GeneratedEntry(run, start + k, seq, partition, log.next_offset)
            log.messages.append(entry)
            log.next_offset += 1
            journal.append(entry)
        self.last_seq = seq
        self.stats["journal_size"] = len(journal)
        self.stats["published"] += len(partitions)
        self.generated += len(partitions)
        return first, seq

    def add_faults(self, rules: list[FaultRule]) -> None:
        """Caller holds the lock."""
        for rule in rules:
            self._next_rule_id += 1
            rule.rule_id = self._next_rule_id
            self.faults.append(rule)

    def head_fault(self, endpoint: str) -> FaultRule | None:
        """The oldest queued rule for ``endpoint``. Caller holds the lock."""
        return next((r for r in self.faults if r.endpoint == endpoint), None)

    def use_fault(self, rule: FaultRule) -> None:
        """Count one firing of ``rule`` and drop it once spent. Caller holds the lock."""
        rule.times -= 1
        self.stats["faults_fired"] += 1
        if rule.times <= 0 and rule in self.faults:
            self.faults.remove(rule)


class ApiError(Exception):
    """An error response: status, JSON body and extra headers.

    IMS and I/O Events errors are ``{"error", "error_description"}``; Pipeline errors are
    ``{"error", "message"}`` (see :meth:`pipeline`).
    """

    def __init__(
        self,
        status: int,
        error: str,
        description: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(f"{status} {error}: {description}")
        self.status = status
        self.body: dict[str, Any] = {"error": error, "error_description": description, **extra}
        self.headers = headers or {}

    @classmethod
    def pipeline(
        cls, status: int, error: str, message: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> ApiError:
        err = cls(status, error, message, headers)
        err.body = {"error": error, "message": message, **extra}
        return err


def _status_slug(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return f"http_{status}"


def encode_sync_marker(group: str, topic: str, offsets: dict[int, int]) -> str:
    """Opaque to clients: base64url of the group, topic and next offsets of a stream."""
    raw = json.dumps({"g": group, "t": topic, "o": {str(p): o for p, o in offsets.items()}}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii").rstrip("=")


def decode_sync_marker(marker: str) -> tuple[str, str, dict[int, int]]:
    try:
        padded = marker.strip() + "=" * (-len(marker.strip()) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        offsets = {int(p): int(o) for p, o in data["o"].items()}
        return str(data["g"]), str(data["t"]), offsets
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, UnicodeError) as exc:
        raise ApiError.pipeline(400, "bad_request", "body is not a syncMarker from a SYNC envelope") from exc


def redact(text: str) -> str:
    return _SECRET_TEXT_RE.sub(lambda m: (m.group(1) + "=***") if m.group(1) else "Bearer ***", text)


def loggable_path(raw_path: str) -> str:
    """Path and query with secret-bearing parameters masked."""
    parts = urlsplit(raw_path)
    if not parts.query:
        return parts.path
    pairs = parse_qs(parts.query, keep_blank_values=True)
    safe = [
        (k, "***" if k.lower() in _SECRET_PARAMS else v) for k, values in pairs.items() for v in values
    ]
    return f"{parts.path}?{urlencode(safe, safe=':*,')}"


class _StreamCut(Exception):
    """A cut fault fired: the connection was dropped on purpose."""


@dataclass
class StreamFaults:
    """The stream-level rules attached to one consume stream."""

    cut: FaultRule | None = None
    slow: FaultRule | None = None
    duplicate: FaultRule | None = None
    malformed: FaultRule | None = None
    stall: FaultRule | None = None
    ping_first: FaultRule | None = None
    interleave_pings: FaultRule | None = None
    pings_only: FaultRule | None = None
    huge_line: FaultRule | None = None
    stalled: bool = False
    huge_sent: bool = False

    def has(self, kind: str) -> bool:
        return getattr(self, kind) is not None

    def attach(self, rule: FaultRule) -> None:
        setattr(self, rule.kind, rule)
