"""The Adobe emulator's Pipeline endpoints: the producer (publish), the consume stream with its
faults, the consumer sync and discovery. A mixin of devstack.adobe_emulator.EmulatorHandler, which
brings the plumbing (sending, reading bodies, faults, tokens) these methods call.
"""

from __future__ import annotations

import json
import math
import socket
import time
import uuid
from typing import Any

from devstack.emulator_handler_base import HandlerBase

# The model (positions, entries, faults, state): devstack/emulator_state.py
from devstack.emulator_state import (
    _INT_RE,
    DISCOVERY_LOCATION,
    MAX_SINGLE_MESSAGE_BYTES,
    STREAM_BATCH,
    ApiError,
    FaultRule,
    GeneratedEntry,
    RawEntry,
    StreamFaults,
    _as_envelope,
    _StreamCut,
    decode_sync_marker,
    encode_sync_marker,
    partition_for,
)
from devstack.messages import envelope, now_ms
from include.triggerflow.events import PIPELINE_MESSAGE


class PipelineEndpoints(HandlerBase):
    """Pipeline endpoints of the emulator's request handler (a mixin: see EmulatorHandler)."""

    # -- Pipeline producer -------------------------------------------------------------------------
    def _handle_publish(self, topic: str) -> None:
        self._require_token()
        try:
            payload = json.loads(self._body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from exc
        messages = payload if isinstance(payload, list) else [payload]
        if not messages:
            raise ApiError(400, "bad_request", "no messages in request body")
        # Validate the whole batch before appending anything: a rejected batch leaves no trace.
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                kind = type(message).__name__
                raise ApiError(400, "bad_request", f"message #{index} is a JSON {kind}, not an object")
            size = len(json.dumps(message, separators=(",", ":")).encode("utf-8"))
            if size > MAX_SINGLE_MESSAGE_BYTES:
                raise ApiError(
                    413, "payload_too_large", f"message #{index} exceeds {MAX_SINGLE_MESSAGE_BYTES} bytes"
                )

        accepted = []
        with self.state.lock:
            logs = self.state.topic(topic, create=True)
            assert logs is not None
            for message in messages:
                if not isinstance(message.get("messageId"), str) or not message["messageId"]:
                    message = {**message, "messageId": str(uuid.uuid4())}
                partition = partition_for(message["messageId"], self.state.partitions)
                offset = logs[partition].next_offset
                wrapped = envelope(message, partition=partition, offset=offset, topic=topic)
                # One envelope, two views: the I/O Events journal and the pipeline topic.
                logs[partition].append(wrapped)
                entry = self.state.append(wrapped)
                self.state.stats["published"] += 1
                accepted.append({"partition": partition, "offset": offset, "position": entry.position})
            self.state.version += 1
            self.state.changed.notify_all()
        self._send_json(200, {"accepted": len(accepted), "positions": accepted})

    # -- Pipeline consume --------------------------------------------------------------------------
    def _require_json_accept(self) -> None:
        accept = self.headers.get("Accept", "")
        types = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
        if "application/json" not in types:
            raise ApiError.pipeline(
                406,
                "not_acceptable",
                "only application/json is served here (send Accept: application/json; "
                "Pipeline's x-protobuf default is not emulated)",
            )

    @staticmethod
    def _param(query: dict[str, list[str]], name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    def _parse_assign(self, text: str) -> dict[int, int]:
        def bad(why: str) -> ApiError:
            return ApiError.pipeline(
                400, "bad_request", f"invalid assign parameter {text!r}: {why}", parameter="assign"
            )

        assigned: dict[int, int] = {}
        for item in text.split(","):
            partition, sep, offset = item.strip().partition(":")
            if not sep or not _INT_RE.match(partition) or not _INT_RE.match(offset):
                raise bad(f"{item!r} is not <partition>:<offset>")
            p, o = int(partition), int(offset)
            if p >= self.state.partitions:
                raise bad(f"partition {p} is not in 0..{self.state.partitions - 1}")
            if p in assigned:
                raise bad(f"partition {p} is listed twice")
            assigned[p] = o
        return assigned

    def _handle_consume(self, topic: str, query: dict[str, list[str]]) -> None:
        with self.state.lock:
            self.state.stats["consume_requests"] += 1
        self._request_faults("consume", pipeline_style=True)
        self._require_token(pipeline_style=True)
        self._require_json_accept()
        with self.state.lock:
            known = topic in self.state.topics
        if not known:
            raise ApiError.pipeline(404, "not_found", "topic missing or not accessible")
        group = (self._param(query, "group") or "").strip()
        if not group:
            raise ApiError.pipeline(
                400, "bad_request", "missing required query parameter 'group' (the consumer name)",
                parameter="group",
            )
        reset = self._param(query, "reset") or "latest"  # PIPE-API default
        if reset not in ("earliest", "latest"):
            raise ApiError.pipeline(
                400, "bad_request", f"reset must be 'earliest' or 'latest', not {reset!r}", parameter="reset"
            )
        sync_text = self._param(query, "syncInterval")
        if sync_text is not None and not _INT_RE.match(sync_text):
            raise ApiError.pipeline(
                400, "bad_request", f"syncInterval must be milliseconds >= 0, not {sync_text!r}",
                parameter="syncInterval",
            )
        sync_ms = int(sync_text or 0)
        assign_text = self._param(query, "assign")
        assigned = self._parse_assign(assign_text) if assign_text is not None else None

        with self.state.lock:
            logs = self.state.topics[topic]
            if assigned is None:
                committed = self.state.group_offsets.get((group, topic), {})
                wanted: dict[int, int | None] = {p: committed.get(p) for p in range(len(logs))}
            else:
                wanted = dict(assigned)
            cursors: dict[int, int] = {}
            for p, offset in wanted.items():
                log = logs[p]
                if offset is None or offset < log.earliest or offset > log.next_offset:
                    # No committed offset, expired, or beyond the end: the reset policy decides.
                    offset = log.earliest if reset == "earliest" else log.next_offset
                cursors[p] = offset
        self._stream(topic, group, cursors, sync_ms, self._stream_faults())

    def _gather(self, topic: str, cursors: dict[int, int], limit: int) -> list[tuple[int, int, Any]]:
        """Up to ``limit`` retained messages at or after the cursors, partitions interleaved
        round-robin, advancing the cursors. Caller holds the lock."""
        logs = self.state.topics.get(topic)
        out: list[tuple[int, int, Any]] = []
        if logs is None:
            return out
        progressed = True
        while progressed and len(out) < limit:
            progressed = False
            for p in sorted(cursors):
                log = logs[p]
                cursor = max(cursors[p], log.earliest)  # expired while the stream was open
                if cursor < log.next_offset:
                    out.append((p, cursor, log.at(cursor)))
                    cursor += 1
                    progressed = True
                cursors[p] = cursor
                if len(out) >= limit:
                    break
        return out

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))

    def _line(self, obj: Any) -> None:
        self._chunk(json.dumps(obj, separators=(",", ":")).encode("utf-8") + b"\n")

    def _cut(self) -> None:
        with self.state.lock:
            self.state.stats["faults_fired"] += 1
        self.close_connection = True
        try:
            # No chunk terminator: the client sees the body end mid-stream.
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise _StreamCut()

    def _stream_checkpoint(self, faults: StreamFaults, data_sent: int) -> None:
        """Fire a cut or a stall once the stream has sent enough DATA lines."""
        if faults.cut is not None and data_sent >= faults.cut.after_messages:
            self._cut()
        if faults.stall is not None and not faults.stalled and data_sent >= faults.stall.after_messages:
            faults.stalled = True
            with self.state.lock:
                self.state.stats["faults_fired"] += 1
            self._sleep(faults.stall.seconds)

    def _huge_line_due(self, faults: StreamFaults, data_sent: int) -> None:
        """A `huge_line` fault: ``size`` bytes of a line that is not JSON, then its newline."""
        rule = faults.huge_line
        if rule is None or faults.huge_sent or data_sent < rule.after_messages:
            return
        faults.huge_sent = True
        block = b"x" * min(rule.size, 1024 * 1024)
        left = rule.size
        while left > 0:
            self._chunk(block[:left])
            left -= len(block)
        self._chunk(b"\n")

    def _malformed(self, faults: StreamFaults, partition: int, offset: int) -> FaultRule | None:
        """The malformed rule to apply to this message, counted as fired, or None."""
        rule = faults.malformed
        if rule is None:
            return None
        if rule.line is None and (
            (rule.partition is not None and rule.partition != partition)
            or (rule.offset is not None and rule.offset != offset)
        ):
            return None
        with self.state.lock:
            if rule.times <= 0:
                faults.malformed = None
                return None
            self.state.use_fault(rule)
        return rule

    def _stream(
        self, topic: str, group: str, cursors: dict[int, int], sync_ms: int, faults: StreamFaults
    ) -> None:
        state, settings = self.state, self.settings
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()

        started = time.monotonic()
        deadline = started + settings.stream_max_seconds
        next_sync = started + sync_ms / 1000 if sync_ms > 0 else math.inf
        ping_interval = max(settings.ping_interval, 0.01)
        last_ping = -math.inf
        pinged_since_data = False
        data_sent = 0
        with state.lock:
            generation = state.generation

        def sync_due() -> None:
            nonlocal next_sync
            now = time.monotonic()
            if now >= next_sync:
                with state.lock:
                    marker = encode_sync_marker(group, topic, dict(cursors))
                self._line({"envelopeType": "SYNC", "syncMarker": marker, "createTime": now_ms()})
                next_sync = now + sync_ms / 1000

        def ping() -> None:
            self._line({"envelopeType": "PING", "createTime": now_ms()})

        try:
            if faults.ping_first is not None:
                for i in range(faults.ping_first.count):
                    if i:
                        self._sleep(faults.ping_first.delay_ms / 1000)
                    ping()
            while True:
                self._stream_checkpoint(faults, data_sent)
                self._huge_line_due(faults, data_sent)
                if time.monotonic() >= deadline:
                    break
                with state.lock:
                    if state.stopping or state.generation != generation:
                        break
                    version = state.version
                    # pings_only: a server that never serves what is waiting
                    batch = [] if faults.pings_only is not None else self._gather(topic, cursors, STREAM_BATCH)
                if batch:
                    for partition, offset, message in batch:
                        self._stream_checkpoint(faults, data_sent)
                        self._huge_line_due(faults, data_sent)
                        rule = self._malformed(faults, partition, offset)
                        if rule is not None and rule.line is not None:
                            self._chunk(rule.line.encode("utf-8") + b"\n")
                        elif rule is not None and not isinstance(message, RawEntry):
                            # Still placeable (partition/offset intact), but the body is garbage.
                            message = {**_as_envelope(message), PIPELINE_MESSAGE: "not an object"}
                        copies = 2 if faults.duplicate is not None else 1
                        for _ in range(copies):
                            if isinstance(message, (GeneratedEntry, RawEntry)):
                                self._chunk(message.envelope_bytes() + b"\n")
                            else:
                                self._line(message)
                        if faults.interleave_pings is not None:
                            ping()
                        data_sent += 1
                        with state.lock:
                            state.stats["data_lines_streamed"] += copies
                        if faults.slow is not None:
                            self._sleep(faults.slow.delay_ms / 1000)
                        sync_due()
                    pinged_since_data = False
                    continue
                now = time.monotonic()
                if not pinged_since_data or now - last_ping >= ping_interval:
                    # Caught up: nothing more is waiting for this stream.
                    ping()
                    pinged_since_data, last_ping = True, now
                sync_due()
                wake = min(deadline, last_ping + ping_interval, next_sync)
                with state.changed:
                    state.changed.wait_for(
                        lambda version=version: (  # type: ignore[misc]
                            state.version != version or state.stopping or state.generation != generation
                        ),
                        timeout=max(0.0, min(wake - time.monotonic(), 1.0)),
                    )
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            # The client went away (read timeout, disconnect): nothing to answer.
            self.close_connection = True

    def _handle_consumer_sync(self) -> None:
        """``POST /pipeline/consumer/sync``, body = a syncMarker: commit the group's offsets."""
        self._require_token(pipeline_style=True)
        try:
            marker = self._body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError.pipeline(400, "bad_request", "body is not UTF-8 text") from exc
        group, topic, offsets = decode_sync_marker(marker)
        with self.state.lock:
            committed = self.state.group_offsets.setdefault((group, topic), {})
            committed.update(offsets)
            result = {"group": group, "topic": topic, "offsets": {str(p): o for p, o in sorted(committed.items())}}
        self._send_json(200, result)

    # -- discovery ---------------------------------------------------------------------------------
    def _handle_discovery(self, query: dict[str, list[str]]) -> None:
        """``GET /v1/endpoints?topic=``: which HTTP broker serves the topic (CC-img2).

        Adobe does not document this response (reference §9, open questions). It is modelled on
        the Pipeline Central topic record (PIPE-CEN, §1.6): ``httpEndPoint`` (the HTTP service
        that produces/consumes the topic), ``partitions`` and ``location``.
        """
        with self.state.lock:
            self.state.stats["discovery_requests"] += 1
        self._request_faults("discovery", pipeline_style=True)
        self._require_token(pipeline_style=True)
        if self.headers.get("x-gw-ims-org-id", "") != self.settings.org_id:
            raise ApiError.pipeline(403, "forbidden", "x-gw-ims-org-id does not match this organization")
        wanted = self._param(query, "topic")
        with self.state.lock:
            names = sorted(self.state.topics)
        endpoints = [
            {
                "topic": name,
                "httpEndPoint": self.base_url,
                "location": DISCOVERY_LOCATION,
                "partitions": self.state.partitions,
            }
            for name in names
            if wanted is None or name == wanted
        ]
        self._send_json(200, {"endpoints": endpoints})
