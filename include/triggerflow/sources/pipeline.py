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

import logging
import time
from collections.abc import Callable, Generator, Iterator, Mapping

import requests

from include.triggerflow.adobe.http import (
    RETRYABLE_STATUS,
    RetryableFailure,
    RetryPolicy,
    Unauthorized,
)
from include.triggerflow.adobe.ims_refusal import SourceCredentialsRefused
from include.triggerflow.sources.base import RESET_POLICIES, Page, SourceError
from include.triggerflow.sources.bounded import CHUNK_BYTES, LineSplitter
from include.triggerflow.sources.pipeline_endpoint import (
    DISCOVERY_MAX_BYTES,
    ERROR_BODY_BYTES,
    ERROR_BODY_DEADLINE_S,
    TRANSPORT_ERRORS,
    EndpointOrigin,
    PipelineEndpoint,
    adobe_message,
    describe,
    gave_up,
)
from include.triggerflow.sources.pipeline_lines import (
    MAX_OFFSET,
    LineKind,
    PipelineLines,
    PipelineStats,
    ReadEnd,
    ReadState,
)

# Re-exported: the trigger source hook and the tests read these from here.
__all__ = [
    "DEFAULT_CAUGHT_UP_PINGS", "DEFAULT_DISCOVERY_URL", "DEFAULT_KEEPALIVE_WAIT_S", "DEFAULT_MAX_LINE_BYTES",
    "DEFAULT_MAX_READ_BYTES", "DEFAULT_PAGE_SIZE", "DEFAULT_PARTITIONS", "DEFAULT_READ_DEADLINE_S", "DEFAULT_TOPIC",
    "DISCOVERY_MAX_BYTES", "ERROR_BODY_BYTES", "ERROR_BODY_DEADLINE_S", "MAX_OFFSET", "RESET_POLICIES",
    "RETRYABLE_STATUS", "PipelineSource", "ReadEnd",
]

log = logging.getLogger(__name__)

DEFAULT_DISCOVERY_URL = "https://producer-pipeline-pnw.adobe.net"
DEFAULT_TOPIC = "triggers"
DEFAULT_PARTITIONS = 15
DEFAULT_PAGE_SIZE = 1000  # pipelined's pointerFlushMessageCount

DEFAULT_MAX_LINE_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_READ_BYTES = 256 * 1024 * 1024
DEFAULT_READ_DEADLINE_S = 45.0
DEFAULT_KEEPALIVE_WAIT_S = 5.0
DEFAULT_CAUGHT_UP_PINGS = 2


class PipelineSource(PipelineEndpoint, PipelineLines):
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
        sleep: Callable[[float], None] = time.sleep,
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
        # 401 once, Retry-After, consecutive failures: the one Adobe retry rule (adobe/http.py)
        self.retry_policy = RetryPolicy(max_tries=max_tries, max_wait_s=max_retry_wait_s)
        self.sleep = sleep
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
        self.endpoint_origin = EndpointOrigin.FORCED if self.forced_endpoint else EndpointOrigin.UNRESOLVED
        self.stats = PipelineStats()

    def __repr__(self) -> str:
        return f"PipelineSource({self.source_key!r}, endpoint={self.endpoint!r} ({self.endpoint_origin.value}))"

    # The retry settings live on the retry policy; tests and the hostile corpus tune them here.
    @property
    def max_tries(self) -> int:
        return self.retry_policy.max_tries

    @max_tries.setter
    def max_tries(self, value: int) -> None:
        self.retry_policy.max_tries = value

    @property
    def max_retry_wait_s(self) -> float:
        return self.retry_policy.max_wait_s

    @max_retry_wait_s.setter
    def max_retry_wait_s(self, value: float) -> None:
        self.retry_policy.max_wait_s = value

    @property
    def unplaceable(self) -> int:
        """Lines that could not be placed at a partition/offset (not JSON, no offset...)."""
        return self.stats.unplaceable

    def read(self, positions: Mapping[int, str], max_messages: int) -> Iterator[Page]:
        if max_messages <= 0:
            return
        self._read_started = time.monotonic()  # discovery counts against the read's deadline
        endpoint = self.resolve_endpoint()
        log.info(
            "%s: reading from pipeline endpoint %s (%s)", self.source_key, endpoint,
            "forced by the connection, no discovery" if self.endpoint_origin == EndpointOrigin.FORCED
            else f"discovered via {self.discovery_url}",
        )
        st = ReadState(
            max_messages=max_messages, next_offsets=self._stored_offsets(positions), started=self._read_started
        )
        url = f"{endpoint}/pipeline/topics/{self.topic}/messages"
        retry = self.new_retry()

        def give_up(failure: RetryableFailure, tries: int) -> SourceError:
            if retry.deadline_passed():
                return SourceError(
                    f"pipeline stream from {endpoint} failed without progress until the read's "
                    f"{self.read_deadline_s:g} s deadline ({describe(st.last_error)})"
                )
            return gave_up(failure, tries)

        while True:
            if retry.deadline_passed():
                if retry.failures:
                    raise give_up(RetryableFailure("deadline", kind="deadline"), retry.failures)
                self._end(st, ReadEnd.DEADLINE)
                page = st.take_page()
                if page is not None:
                    yield page
                return
            assigned: dict[int, int | None] = {p: st.next_offsets.get(p) for p in range(self.partitions)}
            resp = retry.call(
                lambda refresh, assigned=assigned: self._open_stream(url, endpoint, assigned, refresh, st),  # type: ignore[misc]
                give_up=give_up,
                refused_twice=lambda: SourceCredentialsRefused(
                    f"pipeline {endpoint} refused a freshly minted IMS token (401 twice): check "
                    f"that the adobe_ims credential has access to topic '{self.topic}'"
                ),
            )
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
            self.stats.reconnects += 1
            if progressed:
                retry.reset()
                if outcome == ReadEnd.FAILED:
                    log.warning(
                        "%s: stream from %s broke after progress (%s); reconnecting from the advanced offsets",
                        self.source_key, endpoint, describe(st.last_error),
                    )
                continue
            retry.failed(
                RetryableFailure(
                    f"pipeline stream from {endpoint} failed without progress ({describe(st.last_error)})", kind="stream"
                ),
                give_up,
            )

    def _open_stream(
        self, url: str, endpoint: str, assigned: Mapping[int, int | None], refresh: bool, st: ReadState
    ) -> requests.Response:
        """One consume request; the 200 answer is the stream (raises what adobe/http.py retries)."""
        params = {
            "group": self.consumer,
            # No stored offset: 0, which Pipeline treats as expired, so `reset` applies.
            "assign": ",".join(f"{p}:{0 if o is None else o}" for p, o in assigned.items()),
            "reset": self.reset,
        }
        self.stats.requests += 1
        try:
            resp = self.session.get(
                url, params=params, headers=self._headers(refresh), stream=True,
                timeout=(self.read_timeout_s, self.read_timeout_s),
            )
        except TRANSPORT_ERRORS as exc:
            st.last_error = exc
            raise RetryableFailure(
                f"pipeline {endpoint} unreachable ({exc.__class__.__name__}: {exc})", cause=exc
            ) from None
        status = resp.status_code
        if status == 200:
            return resp
        message = adobe_message(resp)
        resp.close()
        if status == 401:
            raise Unauthorized  # expired or revoked: adobe/http.py mints a new token once
        if status in RETRYABLE_STATUS:
            st.last_error = SourceError(f"HTTP {status}: {message}")
            raise RetryableFailure(
                f"pipeline {endpoint} answered HTTP {status}: {message}", kind="status", status=status,
                retry_after=resp.headers.get("Retry-After"),
            )
        if status == 404:
            raise SourceError(f"topic '{self.topic}' missing or not accessible (404) at {endpoint}")
        if status == 400:
            raise SourceError(f"pipeline {endpoint} rejected the request (400, not retried): {message}")
        raise SourceError(f"pipeline {endpoint} answered HTTP {status}: {message}")

    def _end(self, st: ReadState, why: ReadEnd) -> None:
        log.info(
            "%s: read ended (%s) after %d messages, %d bytes, %d keep-alives, %.1f s",
            self.source_key, why.value, st.accepted, st.total_bytes, self.stats.pings,
            time.monotonic() - st.started,
        )

    def _consume(
        self, resp: requests.Response, st: ReadState, assigned: Mapping[int, int | None]
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
                    if kind == LineKind.DATA:
                        last_data = time.monotonic()
                    if kind == LineKind.PING and st.received_data and st.pings_in_row >= self.caught_up_pings:
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
                        self.source_key, self.keepalive_wait_s, self.stats.pings,
                    )
                    return ReadEnd.NOTHING_CAME
                if self.idle_stop_s is not None and now - last_data >= self.idle_stop_s:
                    log.info("%s: no DATA for %.1f s, stopping this read", self.source_key, self.idle_stop_s)
                    return ReadEnd.IDLE
        except TRANSPORT_ERRORS as exc:
            st.last_error = exc
            return ReadEnd.FAILED
        finally:
            resp.close()
