"""Adobe Pipeline v3 consumer: the route Campaign's ``pipelined`` reads triggers from.

Wire contract (reference/adobe-triggers.md §1.4-§1.9, PIPE-API, CC-pipe):

* Endpoint: the connection's forced endpoint (Campaign's ``forcedPipelineEndpoint``), or the
  ``httpEndPoint`` that discovery (``discoverPipelineEndpoint``, default
  ``https://producer-pipeline-pnw.adobe.net``) lists for the topic:
  ``GET {discovery_url}/v1/endpoints?topic=<topic>`` with ``Authorization: Bearer`` and
  ``x-gw-ims-org-id``. Adobe does not document that answer (§9); we read
  ``{"endpoints": [{"topic", "httpEndPoint", "partitions", "location"}]}``, the shape of a
  Pipeline Central topic record (PIPE-CEN), which is what the local emulator serves.
* ``GET {endpoint}/pipeline/topics/{topic}/messages?group=<consumer>&assign=p:o,...&reset=<policy>``
  with ``Authorization: Bearer <IMS token>`` and ``Accept: application/json``. The answer is a
  long-running stream, one JSON envelope per line: ``DATA`` (the trigger envelope, §1.7),
  ``SYNC`` (a ``syncMarker`` for Pipeline-managed offsets) and ``PING`` (keep-alive; sent once
  the stream has caught up).

How triggerflow uses it:

* Offsets are triggerflow's, stored per (consumer, topic, partition) in ``tf_source_position``
  (the ``xtk:pipelineOffset`` analogue) and committed by the landing stage in the same
  transaction as the messages. The source therefore always sends ``assign`` for every partition
  and never commits to Pipeline: SYNC lines are ignored. ``source_key`` includes the consumer
  name because Pipeline gives every consumer name its own full copy of the topic, so dev, stage
  and prod consumers each keep their own offsets.
* A partition without a stored offset is assigned offset 0 *and* ``reset=<policy>`` is sent.
  Pipeline applies ``reset`` when no stored offset exists or the given one is no longer retained
  (PIPE-API), and offset 0 of a topic that has been running for days is long expired, so the
  policy decides where a new consumer starts. (Only on a brand-new topic whose offset 0 is still
  retained would ``latest`` read from its start instead.)
* A stored offset is the *next* offset to read. When the first DATA line of a partition on a
  connection is past the offset we asked for, Pipeline skipped what we asked for (retention
  expiry, or reset): the page reports a :class:`Gap`. A partition read for the first time always
  reports one (expected ``None``), since nothing tells us where the topic started.
* When a read ends (each bound is an extra of connection ``adobe_triggers``):

  - ``max_messages`` DATA lines taken, or ``max_read_bytes`` received (default 256 MiB);
  - ``read_deadline_s`` after it started (default 45 s; checked after every socket read, so at
    most ``read_timeout_s`` late), whatever the server sends: PINGs, SYNCs or a trickle;
  - **caught up**: ``caught_up_pings`` PINGs in a row (default 2) with no DATA between them, once
    this read has received DATA. A PING says the stream has caught up, but some servers send
    PINGs on a timer, between DATA lines; two in a row with nothing between mean nothing was
    waiting for a whole keep-alive interval. Set 1 to end on the first PING after DATA;
  - **nothing came**: ``keepalive_wait_s`` (default 5 s) after it started without any DATA. A
    PING never ends a read that has received no DATA: a server that opens every stream with a
    PING (or sends only PINGs) would otherwise be read as "nothing waiting" forever. The PINGs
    of a read are counted in ``Page.keepalives`` so landing can show reads that got only those;
  - ``idle_stop_s`` without DATA while other lines (SYNC) still arrive (default 30 s).

  Pages hold at most ``page_size`` messages (pipelined's ``pointerFlushMessageCount``, 1000).
* Delivery is at-least-once: a DATA line below the next expected offset of its partition is a
  duplicate and is dropped (counted), so a page never repeats a position nor carries one that is
  already landed. A line that cannot be placed at a position is counted in ``Page.dropped`` by
  reason (blank, byte order mark, not JSON, not a JSON object, no integer partition/offset, larger
  than ``max_line_bytes``) and logged. A DATA line with a valid partition/offset but a garbled
  body is yielded as is (bytes when it is not UTF-8; landing decodes it with replacement) and
  validation quarantines it; a line nested too deep for the JSON parser still gets its partition
  and offset from a scanner that does not recurse.
* Lines are split by :class:`~include.triggerflow.sources.bounded.LineSplitter`: linear in the
  line length, holding at most ``max_line_bytes`` (default 4 MiB, four times Pipeline's 1 MB
  message limit, so a message over Pipeline's limit still lands and validation quarantines it
  with its size) of a line; a longer line is skipped to its newline and counted as dropped.
* Failures: 401 → one forced token refresh, a second 401 is an error; 429/500/502/503/504 →
  ``Retry-After`` (capped at ``max_retry_wait_s``) or exponential back-off; connection errors, read
  timeouts and streams cut mid-way → what was read is yielded first, then the source reconnects
  from the advanced offsets. ``max_tries`` consecutive failures without progress end the read
  with :class:`SourceError`; 400 and 404 are errors at once (not retried).
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import msgspec
import requests
import urllib3

from include.triggerflow.sources.base import Gap, Page, RawMessage, SourceError
from include.triggerflow.sources.bounded import (
    CHUNK_BYTES,
    BoundedReadError,
    LineSplitter,
    index_at,
    object_members,
    read_body,
    scalar,
)

log = logging.getLogger(__name__)

DEFAULT_DISCOVERY_URL = "https://producer-pipeline-pnw.adobe.net"
DEFAULT_TOPIC = "triggers"
DEFAULT_PARTITIONS = 15
DEFAULT_PAGE_SIZE = 1000  # pipelined's pointerFlushMessageCount
RESET_POLICIES = ("earliest", "latest")
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
# What a dropped connection, a read timeout or a stream cut mid-chunk surfaces as.
_TRANSPORT_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)
_OFFSET_RE = re.compile(r"^\d{1,18}$")
_BOM = b"\xef\xbb\xbf"
MAX_OFFSET = 10**18 - 1  # what tf_source_position (and _OFFSET_RE) can hold

DEFAULT_MAX_LINE_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_READ_BYTES = 256 * 1024 * 1024
DEFAULT_READ_DEADLINE_S = 45.0
DEFAULT_KEEPALIVE_WAIT_S = 5.0
DEFAULT_CAUGHT_UP_PINGS = 2
# Discovery answers list a few endpoints; error answers carry a sentence.
DISCOVERY_MAX_BYTES = 1024 * 1024
ERROR_BODY_BYTES = 64 * 1024
ERROR_BODY_DEADLINE_S = 10.0


class ReadEnd(StrEnum):
    """Why one stream (or the whole read) stopped."""

    CAUGHT_UP = "caught up"  # caught_up_pings PINGs in a row after DATA
    MAX = "max messages"
    BYTES = "max bytes"
    DEADLINE = "deadline"
    NOTHING_CAME = "no DATA"  # keepalive_wait_s without DATA
    IDLE = "idle"  # idle_stop_s without DATA while SYNCs arrive
    EOF = "eof"
    FAILED = "failed"


# Only the fields that place a line; the body is skipped (and checked to be JSON) unparsed.
class _Envelope(msgspec.Struct):
    envelopeType: Any = None
    partition: Any = None
    offset: Any = None


_decode_envelope = msgspec.json.Decoder(_Envelope).decode


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass
class _ReadState:
    """What one ``read()`` call has seen so far."""

    max_messages: int
    # partition -> next offset to read (stored, then advanced by every accepted message)
    next_offsets: dict[int, int]
    accepted: int = 0
    messages: list[RawMessage] = field(default_factory=list)
    page_next: dict[int, str] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)
    bytes: int = 0
    last_error: BaseException | None = None
    started: float = field(default_factory=time.monotonic)
    total_bytes: int = 0
    received_data: bool = False  # any DATA line in this read (also duplicates)
    pings_in_row: int = 0  # PINGs since the last DATA line
    keepalives: int = 0  # PINGs not yet reported in a page
    dropped: dict[str, int] = field(default_factory=dict)  # not yet reported in a page

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def take_page(self) -> Page | None:
        if not (self.messages or self.gaps or self.dropped or self.keepalives):
            return None
        page = Page(
            messages=self.messages, next_positions=self.page_next, bytes_read=self.bytes, gaps=self.gaps,
            dropped=self.dropped, keepalives=self.keepalives,
        )
        self.messages, self.page_next, self.gaps, self.bytes = [], {}, [], 0
        self.dropped, self.keepalives = {}, 0
        return page


class PipelineSource:
    """Reads a Pipeline v3 topic as consumer ``consumer`` with explicit partition offsets."""

    def __init__(
        self,
        *,
        consumer: str,
        topic: str = DEFAULT_TOPIC,
        partitions: int = DEFAULT_PARTITIONS,
        token_provider: Callable[[bool], str],
        org_id: str,
        forced_endpoint: str | None = None,
        discovery_url: str = DEFAULT_DISCOVERY_URL,
        reset: str = "earliest",
        read_timeout_s: float = 10.0,
        idle_stop_s: float | None = 30.0,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_tries: int = 4,
        max_retry_wait_s: float = 30.0,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_read_bytes: int = DEFAULT_MAX_READ_BYTES,
        read_deadline_s: float = DEFAULT_READ_DEADLINE_S,
        keepalive_wait_s: float = DEFAULT_KEEPALIVE_WAIT_S,
        caught_up_pings: int = DEFAULT_CAUGHT_UP_PINGS,
        session: requests.Session | None = None,
    ) -> None:
        if not consumer or not consumer.strip():
            raise SourceError("adobe_triggers: the pipeline consumer name is empty")
        if reset not in RESET_POLICIES:
            raise SourceError(f"adobe_triggers: reset must be 'earliest' or 'latest', not {reset!r}")
        if partitions < 1 or page_size < 1 or max_tries < 1 or caught_up_pings < 1:
            raise SourceError(
                "adobe_triggers: partitions, page_size, max_tries and caught_up_pings must be at least 1"
            )
        if max_line_bytes < 1 or max_read_bytes < 1 or read_deadline_s <= 0 or keepalive_wait_s <= 0:
            raise SourceError(
                "adobe_triggers: max_line_bytes, max_read_bytes, read_deadline_s and keepalive_wait_s "
                "must be positive"
            )
        self.consumer = consumer.strip()
        self.topic = topic
        self.partitions = partitions
        self._token = token_provider
        self.org_id = org_id
        self.forced_endpoint = forced_endpoint.rstrip("/") if forced_endpoint else None
        self.discovery_url = discovery_url.rstrip("/")
        self.reset = reset
        self.read_timeout_s = read_timeout_s
        self.idle_stop_s = idle_stop_s
        self.page_size = page_size
        self.max_tries = max_tries
        self.max_retry_wait_s = max_retry_wait_s
        self.max_line_bytes = max_line_bytes
        self.max_read_bytes = max_read_bytes
        self.read_deadline_s = read_deadline_s
        self.keepalive_wait_s = keepalive_wait_s
        self.caught_up_pings = caught_up_pings
        self.session = session or requests.Session()
        self._read_started: float | None = None
        # Offsets belong to a consumer name: every consumer gets its own full copy of the topic.
        self.source_key = f"pipeline:{self.consumer}:{topic}"
        # Until discovery has run this names where we are about to go.
        self.endpoint: str = self.forced_endpoint or self.discovery_url
        self.endpoint_origin = "forced" if self.forced_endpoint else "unresolved"
        self.stats: dict[str, int] = {
            "bytes_read": 0,
            "data_lines": 0,
            "duplicates_dropped": 0,
            "unplaceable": 0,
            "oversize_lines": 0,
            "reconnects": 0,
            "pings": 0,
            "syncs": 0,
            "requests": 0,
            "gaps": 0,
            "rewinds": 0,
        }

    def __repr__(self) -> str:
        return f"PipelineSource({self.source_key!r}, endpoint={self.endpoint!r} ({self.endpoint_origin}))"

    @property
    def unplaceable(self) -> int:
        """Lines that could not be placed at a partition/offset (not JSON, no offset...)."""
        return self.stats["unplaceable"]

    # -- endpoint ----------------------------------------------------------------------------------
    def resolve_endpoint(self) -> str:
        """The consume host: forced, or discovered once per source instance."""
        if self.endpoint_origin != "unresolved":
            return self.endpoint
        url = f"{self.discovery_url}/v1/endpoints"
        body = self._discovery_answer(url)
        entries = body.get("endpoints") if isinstance(body, dict) else None
        entry = next(
            (
                e for e in (entries if isinstance(entries, list) else [])
                if isinstance(e, dict) and e.get("topic") == self.topic
                and isinstance(e.get("httpEndPoint"), str) and e["httpEndPoint"].startswith(("http://", "https://"))
            ),
            None,
        )
        if entry is None:
            raise SourceError(
                f"pipeline discovery at {url} lists no endpoint for topic '{self.topic}' "
                f"(answer: {json.dumps(body)[:300]}); check the topic name, or set the connection "
                "host to force an endpoint"
            )
        discovered_partitions = entry.get("partitions")
        if _is_index(discovered_partitions) and discovered_partitions and discovered_partitions != self.partitions:
            log.warning(
                "%s: discovery says topic '%s' has %d partitions, the connection says %d; reading %d",
                self.source_key, self.topic, discovered_partitions, self.partitions, discovered_partitions,
            )
            self.partitions = discovered_partitions
        self.endpoint = entry["httpEndPoint"].rstrip("/")
        self.endpoint_origin = "discovered"
        log.info(
            "%s: pipeline endpoint %s (discovered via %s, location %s)",
            self.source_key, self.endpoint, url, entry.get("location"),
        )
        return self.endpoint

    def _discovery_answer(self, url: str) -> Any:
        refresh = False
        failures = 0
        while True:
            headers = {**self._headers(refresh), "x-gw-ims-org-id": self.org_id}
            self.stats["requests"] += 1
            started = time.monotonic()
            try:
                resp = self.session.get(
                    url, params={"topic": self.topic}, headers=headers, timeout=self.read_timeout_s, stream=True
                )
                data = (
                    read_body(
                        resp, what=f"the discovery answer of {url}", max_bytes=DISCOVERY_MAX_BYTES,
                        deadline_s=self.read_deadline_s, started=started,
                    )
                    if resp.status_code == 200 else b""
                )
            except BoundedReadError as exc:
                raise SourceError(f"pipeline discovery: {exc}; set the connection host to force an endpoint") from None
            except _TRANSPORT_ERRORS as exc:
                failures += 1
                self._give_up_or_wait(failures, None, f"discovery {url} unreachable ({exc.__class__.__name__})")
                continue
            requested_refresh, refresh = refresh, False
            if resp.status_code == 200:
                try:
                    return json.loads(data)
                except (ValueError, RecursionError):
                    raise SourceError(
                        f"pipeline discovery at {url} answered 200 with no JSON: "
                        f"{data[:200].decode('utf-8', 'replace')}"
                    ) from None
            if resp.status_code == 401 and not requested_refresh:
                refresh = True
                continue
            if resp.status_code == 401:
                raise SourceError(
                    f"pipeline discovery at {url} refused a freshly minted IMS token (401 twice): "
                    "check that the adobe_ims credential has access to Pipeline"
                )
            if resp.status_code in RETRYABLE_STATUS:
                failures += 1
                self._give_up_or_wait(
                    failures, resp.headers.get("Retry-After"),
                    f"discovery {url} answered HTTP {resp.status_code}: {_adobe_message(resp)}",
                )
                continue
            raise SourceError(
                f"pipeline discovery at {url} answered HTTP {resp.status_code}: {_adobe_message(resp)}"
            )

    # -- reading -----------------------------------------------------------------------------------
    def read(self, positions: Mapping[int, str], max_messages: int) -> Iterator[Page]:
        if max_messages <= 0:
            return
        self._read_started = time.monotonic()  # discovery counts against the read's deadline
        endpoint = self.resolve_endpoint()
        log.info(
            "%s: reading from pipeline endpoint %s (%s)", self.source_key, endpoint,
            "forced by the connection, no discovery" if self.endpoint_origin == "forced"
            else f"discovered via {self.discovery_url}",
        )
        st = _ReadState(
            max_messages=max_messages, next_offsets=self._stored_offsets(positions), started=self._read_started
        )
        url = f"{endpoint}/pipeline/topics/{self.topic}/messages"
        failures = 0
        refresh = False
        while True:
            if self._deadline_passed(st):
                if failures:
                    raise SourceError(
                        f"pipeline stream from {endpoint} failed without progress until the read's "
                        f"{self.read_deadline_s:g} s deadline ({_describe(st.last_error)})"
                    )
                self._end(st, ReadEnd.DEADLINE)
                page = st.take_page()
                if page is not None:
                    yield page
                return
            assigned: dict[int, int | None] = {p: st.next_offsets.get(p) for p in range(self.partitions)}
            params = {
                "group": self.consumer,
                # No stored offset: 0, which Pipeline treats as expired, so `reset` applies.
                "assign": ",".join(f"{p}:{0 if o is None else o}" for p, o in assigned.items()),
                "reset": self.reset,
            }
            self.stats["requests"] += 1
            try:
                resp = self.session.get(
                    url, params=params, headers=self._headers(refresh), stream=True,
                    timeout=(self.read_timeout_s, self.read_timeout_s),
                )
            except _TRANSPORT_ERRORS as exc:
                failures += 1
                st.last_error = exc
                self._give_up_or_wait(failures, None, f"pipeline {endpoint} unreachable ({exc.__class__.__name__}: {exc})")
                continue
            requested_refresh, refresh = refresh, False
            if resp.status_code != 200:
                message = _adobe_message(resp)
                resp.close()
                if resp.status_code == 401 and not requested_refresh:
                    refresh = True  # expired or revoked: mint a new token once
                    continue
                if resp.status_code == 401:
                    raise SourceError(
                        f"pipeline {endpoint} refused a freshly minted IMS token (401 twice): check "
                        f"that the adobe_ims credential has access to topic '{self.topic}'"
                    )
                if resp.status_code in RETRYABLE_STATUS:
                    failures += 1
                    st.last_error = SourceError(f"HTTP {resp.status_code}: {message}")
                    self._give_up_or_wait(
                        failures, resp.headers.get("Retry-After"),
                        f"pipeline {endpoint} answered HTTP {resp.status_code}: {message}",
                    )
                    continue
                if resp.status_code == 404:
                    raise SourceError(f"topic '{self.topic}' missing or not accessible (404) at {endpoint}")
                if resp.status_code == 400:
                    raise SourceError(f"pipeline {endpoint} rejected the request (400, not retried): {message}")
                raise SourceError(f"pipeline {endpoint} answered HTTP {resp.status_code}: {message}")

            before = st.accepted
            outcome = yield from self._consume(resp, st, assigned)
            progressed = st.accepted > before
            page = st.take_page()
            if page is not None:
                yield page  # landed before any reconnect: nothing read is ever lost
            if outcome not in (ReadEnd.EOF, ReadEnd.FAILED):
                self._end(st, outcome)
                return
            if outcome == ReadEnd.EOF and not progressed:
                self._end(st, outcome)
                return  # the stream ended without anything for us: nothing is waiting
            self.stats["reconnects"] += 1
            if progressed:
                failures = 0
                if outcome == ReadEnd.FAILED:
                    log.warning(
                        "%s: stream from %s broke after progress (%s); reconnecting from the advanced offsets",
                        self.source_key, endpoint, _describe(st.last_error),
                    )
                continue
            failures += 1
            self._give_up_or_wait(
                failures, None, f"pipeline stream from {endpoint} failed without progress ({_describe(st.last_error)})"
            )

    def _deadline_passed(self, st: _ReadState) -> bool:
        return time.monotonic() - st.started >= self.read_deadline_s

    def _end(self, st: _ReadState, why: ReadEnd) -> None:
        log.info(
            "%s: read ended (%s) after %d messages, %d bytes, %d keep-alives, %.1f s",
            self.source_key, why.value, st.accepted, st.total_bytes, self.stats["pings"],
            time.monotonic() - st.started,
        )

    def _consume(
        self, resp: requests.Response, st: _ReadState, assigned: Mapping[int, int | None]
    ) -> Generator[Page, None, ReadEnd]:
        """Read one stream; yield full pages; return why it ended."""
        seen: set[int] = set()
        last_data = time.monotonic()
        lines = LineSplitter(self.max_line_bytes)
        try:
            while True:
                # read1: what one socket read brought (a chunk of a chunked answer), so bounds
                # are checked even while a line is still incomplete
                chunk = resp.raw.read1(CHUNK_BYTES)
                if not chunk:
                    tail = lines.finish()  # a last line without newline, stream ended cleanly
                    if tail is not None:
                        self._take(tail, st, assigned, seen)
                    return ReadEnd.EOF
                for item in lines.feed(chunk):
                    kind = self._take(item, st, assigned, seen)
                    if kind == "data":
                        last_data = time.monotonic()
                    if kind == "ping" and st.received_data and st.pings_in_row >= self.caught_up_pings:
                        return ReadEnd.CAUGHT_UP
                    if st.accepted >= st.max_messages:
                        return ReadEnd.MAX
                    if len(st.messages) >= self.page_size:
                        page = st.take_page()
                        if page is not None:
                            yield page
                now = time.monotonic()
                if st.total_bytes + lines.pending >= self.max_read_bytes:
                    return ReadEnd.BYTES
                if now - st.started >= self.read_deadline_s:
                    return ReadEnd.DEADLINE
                if not st.received_data and now - st.started >= self.keepalive_wait_s:
                    log.info(
                        "%s: no DATA within %.1f s (%d keep-alives), stopping this read",
                        self.source_key, self.keepalive_wait_s, self.stats["pings"],
                    )
                    return ReadEnd.NOTHING_CAME
                if self.idle_stop_s is not None and now - last_data >= self.idle_stop_s:
                    log.info("%s: no DATA for %.1f s, stopping this read", self.source_key, self.idle_stop_s)
                    return ReadEnd.IDLE
        except _TRANSPORT_ERRORS as exc:
            st.last_error = exc
            return ReadEnd.FAILED
        finally:
            resp.close()

    def _take(
        self, item: tuple[bytes | None, int], st: _ReadState, assigned: Mapping[int, int | None], seen: set[int]
    ) -> str:
        """Account for one line (None = over the line cap) and place it; returns its kind."""
        raw, size = item
        st.bytes += size
        st.total_bytes += size
        self.stats["bytes_read"] += size
        if raw is None:
            self.stats["oversize_lines"] += 1
            return self._unplaceable(st, b"", f"line larger than {self.max_line_bytes} bytes", size=size)
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        return self._take_line(raw, st, assigned, seen)

    def _take_line(
        self, raw: bytes, st: _ReadState, assigned: Mapping[int, int | None], seen: set[int]
    ) -> str:
        if not raw.strip():
            return self._unplaceable(st, raw, "blank line")
        if raw.startswith(_BOM):
            return self._unplaceable(st, raw, "line starts with a byte order mark")
        try:
            env = _decode_envelope(raw)
            envelope_type, partition, offset = env.envelopeType, env.partition, env.offset
        except msgspec.ValidationError:
            return self._unplaceable(st, raw, "not a JSON object")
        except (msgspec.DecodeError, RecursionError):
            # Nested deeper than the parser follows, or not strict JSON further in (NaN, a broken
            # body): find the placing members with a scanner that neither recurses nor judges
            # values, so the message lands at its position and validation says what is wrong.
            members = object_members(raw)
            if members is None:
                return self._unplaceable(st, raw, "not JSON")
            envelope_type = scalar(raw, members["envelopeType"]) if "envelopeType" in members else None
            partition = index_at(raw, members["partition"]) if "partition" in members else None
            offset = index_at(raw, members["offset"]) if "offset" in members else None
        if envelope_type == "PING":
            self.stats["pings"] += 1
            st.keepalives += 1
            st.pings_in_row += 1
            return "ping"
        if envelope_type == "SYNC":
            self.stats["syncs"] += 1  # triggerflow keeps its own offsets: never committed
            return "sync"
        if not _is_index(partition) or not _is_index(offset) or offset > MAX_OFFSET:
            return self._unplaceable(st, raw, "no integer partition/offset")
        self.stats["data_lines"] += 1
        st.received_data = True
        st.pings_in_row = 0
        if partition not in seen:
            seen.add(partition)
            self._check_resume(st, partition, offset, assigned.get(partition))
        expected = st.next_offsets.get(partition)
        if expected is not None and offset < expected:
            self.stats["duplicates_dropped"] += 1  # at-least-once delivery: already read
            return "duplicate"
        try:
            payload: str | bytes = raw.decode("utf-8")
        except UnicodeDecodeError:
            payload = raw  # landing decodes with replacement and keeps these bytes
        st.messages.append(RawMessage(partition=partition, position=str(offset), payload=payload))
        st.next_offsets[partition] = offset + 1
        st.page_next[partition] = str(offset + 1)
        st.accepted += 1
        return "data"

    def _check_resume(self, st: _ReadState, partition: int, offset: int, asked: int | None) -> None:
        """First DATA line of a partition on this connection: did Pipeline start where asked?"""
        if asked is None:
            reason = f"first read of this partition (reset={self.reset})"
            st.gaps.append(Gap(partition=partition, expected=None, resumed=str(offset), reason=reason))
            self.stats["gaps"] += 1
        elif offset > asked:
            reason = (
                f"the source resumed past the requested offset: offsets {asked}..{offset - 1} expired "
                f"from retention or were skipped by reset={self.reset}"
            )
            st.gaps.append(Gap(partition=partition, expected=str(asked), resumed=str(offset), reason=reason))
            self.stats["gaps"] += 1
            log.warning("%s partition %d: asked for offset %d, resumed at %d", self.source_key, partition, asked, offset)
        elif offset < asked:
            # Redelivery below what we asked for: those lines are dropped as already landed.
            self.stats["rewinds"] += 1
            log.warning(
                "%s partition %d: asked for offset %d, the source restarted at %d; lines below %d are "
                "dropped as already landed (a topic recreated with reused offsets would lose them)",
                self.source_key, partition, asked, offset, asked,
            )

    def _unplaceable(self, st: _ReadState, raw: bytes, why: str, *, size: int | None = None) -> str:
        self.stats["unplaceable"] += 1
        st.drop(why)
        log.warning(
            "%s: unplaceable line (%s, %d bytes) from %s, not landed: %r",
            self.source_key, why, len(raw) if size is None else size, self.endpoint, raw[:80],
        )
        return "unplaceable"

    # -- helpers -----------------------------------------------------------------------------------
    def _stored_offsets(self, positions: Mapping[int, str]) -> dict[int, int]:
        offsets: dict[int, int] = {}
        for partition, position in positions.items():
            p = int(partition)
            if not 0 <= p < self.partitions:
                log.warning(
                    "%s: stored position for partition %d ignored (topic has partitions 0..%d)",
                    self.source_key, p, self.partitions - 1,
                )
                continue
            text = str(position).strip()
            if not _OFFSET_RE.match(text):
                raise SourceError(
                    f"{self.source_key}: stored position {position!r} of partition {p} is not a "
                    "Pipeline offset (tf_source_position)"
                )
            offsets[p] = int(text)
        return offsets

    def _headers(self, refresh: bool) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._token(refresh)}",
            "Accept": "application/json",
            "x-gw-ims-org-id": self.org_id,
        }

    def _give_up_or_wait(self, failures: int, retry_after: str | None, what: str) -> None:
        if failures >= self.max_tries:
            raise SourceError(f"{what}; gave up after {failures} consecutive tries without progress")
        wait = min(_retry_after_seconds(retry_after, failures), self.max_retry_wait_s)
        if self._read_started is not None:
            # never wait past the read's deadline; the loop then ends the read with this error
            wait = min(wait, max(0.0, self._read_started + self.read_deadline_s - time.monotonic()))
        log.warning("%s: %s; retrying in %.2f s (try %d of %d)", self.source_key, what, wait, failures, self.max_tries)
        time.sleep(wait)


def _retry_after_seconds(value: str | None, failures: int) -> float:
    backoff = 0.5 * 2 ** (failures - 1)
    if value is None:
        return backoff
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return backoff


def _adobe_message(resp: requests.Response) -> str:
    """Adobe's own words from an error answer (Pipeline: message; IMS style: error_description),
    read with a size cap and a deadline like every answer."""
    try:
        data = read_body(
            resp, what="the error answer", max_bytes=ERROR_BODY_BYTES, deadline_s=ERROR_BODY_DEADLINE_S,
            started=time.monotonic(),
        )
    except BoundedReadError as exc:
        return f"{resp.reason or ''} ({exc})"
    except _TRANSPORT_ERRORS as exc:
        return f"{resp.reason or ''} (answer unreadable: {exc.__class__.__name__})"
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return data[:300].decode("utf-8", "replace") or resp.reason or ""
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("error", "message", "error_description") if body.get(k)]
        if parts:
            return ": ".join(parts)[:300]
    return json.dumps(body)[:300]


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "stream ended"
    return f"{exc.__class__.__name__}: {exc}"[:300]
