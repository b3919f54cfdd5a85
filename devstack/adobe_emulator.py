"""Local stand-in for the Adobe services triggerflow talks to, as one real HTTP server.

triggerflow cannot reach Adobe from a laptop or CI, so this process emulates the wire contracts
it depends on (reference/adobe-triggers.md):

* IMS OAuth Server-to-Server token endpoint, ``POST /ims/token/v3`` (DC-S2S, §6.1);
* the legacy IMS service-account (JWT) exchange, ``POST /ims/exchange/jwt`` (DC-JWT, §6.2);
  enabled with ``--jwt-public-key``. Unlike ``/ims/token/v3`` (``expires_in`` in *seconds*),
  Adobe's JWT exchange reports ``expires_in`` in *milliseconds*, and so does this emulator;
* the I/O Events Journaling API, ``GET /events/organizations/{org}/integrations/{int}/{reg}``
  (IOE-JRN, §1.11), serving pipeline envelopes (§1.7) wrapped as ``{event_id, event}``;
* the Pipeline v3 producer endpoint, ``POST /pipeline/topics/{topic}/messages`` (PIPE-API, §1.5),
  used by the demo and tests to feed both the journal and the pipeline topic;
* the Pipeline v3 consume endpoint, ``GET /pipeline/topics/{topic}/messages?group=&assign=&reset=
  &syncInterval=`` (PIPE-API, §1.5): a long-running ``application/x-ndjson`` stream of ``DATA``
  envelopes, ``SYNC`` markers and ``PING`` keep-alives, with per-partition retention, plus
  ``POST /pipeline/consumer/sync`` to commit a group's offsets from a ``syncMarker``;
* the endpoint discovery service Campaign's ``discoverPipelineEndpoint`` points at,
  ``GET /v1/endpoints?topic=`` (CC-img2, §1.4).

A small unauthenticated control plane under ``/_emulator/`` lets tests inject malformed events,
read counters, reset state, force token expiry, expire retained pipeline offsets and queue fault
rules (HTTP errors, cut/slow/stalled streams, duplicated or malformed lines).

Hostile servers and messages (issue 10), for the readers' bounds and keep-alive handling:

* ``POST /_emulator/raw`` ``{"items": [{"b64": "<base64>", "as": "envelope"|"pipeline_message",
  "partition": p}], "topic": "triggers"}`` publishes bytes no JSON value can express (invalid
  UTF-8, deep nesting, NaN...) to both views. ``as: "envelope"`` (default) serves the bytes
  verbatim as the consume stream's line and as the journal item's ``event``; they still take the
  next offset of ``partition`` (default 0), but the line carries whatever it says.
  ``as: "pipeline_message"`` wraps them as the value of the pipelineMessage member of an envelope
  the emulator builds at that real partition/offset, so the stream line is placeable.
* Consume fault kinds: ``ping_first`` (``count`` PINGs, ``delay_ms`` apart, before anything
  else), ``interleave_pings`` (a PING after every DATA line), ``pings_only`` (the stream sends
  only PINGs, every ``--ping-interval``, until it ends), ``huge_line`` (a line of ``size`` bytes,
  newline at its end, before DATA line ``after_messages``; never placeable).
* Request fault kinds: ``pad`` (token, exchange, journal, discovery: the next JSON answer gets a
  ``"_pad"`` member of ``size`` bytes and is sent chunked, without Content-Length; with
  ``delay_ms``, trickled in 64 KB chunks that far apart) and
  ``token_answer`` (token, exchange: the next answer's ``expires_in`` is the rule's
  ``expires_in``, any JSON value including ``Infinity``/``NaN``; a rule without ``expires_in``
  leaves it out).

Load generation (``POST /_emulator/generate``, for benchmarks): ``{"count": n, "seed": s,
"customers": N, "customer_offset": o, "mix": {...}, "start": i0, "trigger_ts_ms": t, "topic":
"triggers"}`` produces
messages ``i0 .. i0+n-1`` of :class:`devstack.loadgen.MessageFactory` as if each had been
published through the producer endpoint: each gets its partition (from its messageId, as a
publish would), the next offset there and the next journal position, and is served by the
journal and the consume stream exactly like a published message. Only the generation parameters
and a few integers are kept per message; the envelope is rendered again, identically, on every
read, so a journal of a million messages costs ~200 MB. ``start`` omitted continues after the
last message generated for the seed; ``trigger_ts_ms`` omitted is the time of the request
(``createTime`` always is). ``GET /_emulator/generate`` reports what was generated. A
``--max-limit`` above the default 1000 lets benchmark clients read large journal pages, and a
full journal page (``limit`` >= 100) has the next page rendered in the background while the
client reads it (``--no-read-ahead`` turns that off), so a reader's parsing and the emulator's
rendering overlap on a multi-core machine.

Run it with ``python -m devstack.adobe_emulator --port 0 --ready-file /tmp/x``; it prints
``adobe-emulator listening on http://127.0.0.1:<port>`` once bound. Standard library only, except
the JWT exchange, which verifies signatures with pyjwt/cryptography (imported only when a public
key is configured), so the emulator starts fast and runs anywhere the project runs.

Consume stream, in detail (what the emulator does; Adobe documents only the parameters):

* ``assign=p:o,...`` serves exactly the listed partitions, each from offset ``o`` (the *next*
  offset to read). Without ``assign`` every partition is served from the offsets the group
  committed through ``POST /pipeline/consumer/sync``, or per ``reset`` when it has none.
* An offset below the partition's earliest retained offset (expired) or above its end is
  replaced according to ``reset`` (PIPE-API default ``latest``): ``earliest`` = the earliest
  retained offset, ``latest`` = the end (only new messages).
* DATA lines come in offset order within a partition, partitions interleaved round-robin.
* A ``PING`` line is sent as soon as the stream has caught up (nothing more waiting), again
  every ``--ping-interval`` seconds while idle, and again each time it catches up after new data.
  ``SYNC`` lines are sent every ``syncInterval`` ms when it is > 0; their ``syncMarker`` is an
  opaque token for the stream's current offsets.
* The response stays open, serving messages as they are published, until the client
  disconnects or ``--stream-max-seconds`` passes; then it ends with the chunk terminator.
"""

from __future__ import annotations

import argparse
import bisect
import concurrent.futures
import json
import secrets
import signal
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

# The model (positions, entries, faults, state): devstack/emulator_state.py
from devstack.emulator_control import ControlPlane
from devstack.emulator_pipeline import PipelineEndpoints
from devstack.emulator_state import (
    CONSUMER_SYNC_PATH,
    DEFAULT_LIMIT,
    DEFAULT_METASCOPE,
    DEFAULT_PING_INTERVAL_S,
    DEFAULT_STREAM_MAX_SECONDS,
    DEFAULT_TECHNICAL_ACCOUNT_ID,
    DISCOVERY_PATH,
    FIRST_OFFSET,
    JOURNAL_PREFIX,
    JWT_EXCHANGE_PATH,
    MAX_BATCH_BYTES,
    MAX_LIMIT,
    MAX_RAW_BODY_BYTES,
    PRODUCER_RE,
    RAW_PATH,
    READ_AHEAD_MIN_LIMIT,
    READ_AHEAD_PAGES,
    RETRY_AFTER_SECONDS,
    TOKEN_PATH,
    ApiError,
    EmulatorSettings,
    EmulatorState,
    FaultRule,
    StreamFaults,
    _entry_seq,
    _journal_events_bytes,
    _status_slug,
    _StreamCut,
    decode_sync_marker,
    encode_sync_marker,
    format_position,
    loggable_path,
    parse_position,
    partition_for,
    redact,
)
from devstack.messages import DEMO_IMS_ORG
from devstack.readiness import write_ready_file

# What tools and tests import from here (the model lives in emulator_state, the endpoints in
# emulator_pipeline and emulator_control).
__all__ = [
    "AdobeEmulator", "EmulatorHandler", "EmulatorSettings", "EmulatorState", "build_arg_parser", "decode_sync_marker",
    "encode_sync_marker", "format_position", "main", "parse_position", "partition_for",
]


class EmulatorHandler(PipelineEndpoints, ControlPlane, BaseHTTPRequestHandler):
    server: _EmulatorHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "triggerflow-adobe-emulator/1.0"
    # A stuck client must not pin a worker thread forever.
    timeout = 30
    _body: bytes = b""
    # Set by a `pad` / `token_answer` fault for the answer of this request.
    _pad_bytes: int = 0
    _pad_delay_s: float = 0.0
    _token_answer: FaultRule | None = None

    # -- plumbing ----------------------------------------------------------------------------------
    @property
    def settings(self) -> EmulatorSettings:
        return self.server.emulator.settings

    @property
    def state(self) -> EmulatorState:
        return self.server.emulator.state

    @property
    def base_url(self) -> str:
        return self.server.emulator.base_url

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The default line contains the raw request line (query secrets included): replace it.
        status = code.value if isinstance(code, HTTPStatus) else code
        sys.stderr.write(f"adobe-emulator {self.command} {loggable_path(self.path)} {status}\n")

    def log_message(self, format: str, *args: Any) -> None:
        # Reached for protocol errors only; their text can quote the request line.
        sys.stderr.write("adobe-emulator " + redact(format % args) + "\n")

    def _read_body(self, max_bytes: int) -> bytes:
        """The whole request body, read up front for every request: with keep-alive, a body left
        unread (say, after an early 401) would be parsed as the next request."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise ApiError(411, "length_required", "send the body with a Content-Length")
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            size = int(length)
        except ValueError as exc:
            self.close_connection = True
            raise ApiError(400, "bad_request", "Content-Length is not an integer") from exc
        if size > max_bytes:
            # Not worth draining: answer and drop the connection.
            self.close_connection = True
            raise ApiError(413, "payload_too_large", f"request body exceeds {max_bytes} bytes")
        return self.rfile.read(size)

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        self._send_bytes(status, data, "application/json", headers)

    def _send_bytes(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        if self._pad_bytes and status == 200 and data.endswith(b"}"):
            self._send_padded(status, data, content_type, headers or {})
            return
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_padded(self, status: int, data: bytes, content_type: str, headers: dict[str, str]) -> None:
        """A `pad` fault: the JSON answer with a ``"_pad"`` member of that many bytes, chunked (no
        Content-Length, so the client has to count what it reads)."""
        size, self._pad_bytes = self._pad_bytes, 0
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self._chunk(data[:-1] + b',"_pad":"')
            # With delay_ms, a trickle: 64 KB blocks that far apart (a deadline, not a socket
            # timeout, has to end it).
            block = b"x" * min(size, 64 * 1024 if self._pad_delay_s else 1024 * 1024)
            left = size
            while left > 0:
                self._chunk(block[:left])
                left -= len(block)
                if self._pad_delay_s and left > 0:
                    self._sleep(self._pad_delay_s)
            self._chunk(b'"}')
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client stopped reading at its cap

    def _expires_in(self, default: Any) -> dict[str, Any]:
        """The ``expires_in`` member of a token answer (a `token_answer` fault may replace it)."""
        rule, self._token_answer = self._token_answer, None
        if rule is None:
            return {"expires_in": default}
        return {"expires_in": rule.expires_in} if rule.has_expires_in else {}

    def _send_empty(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = parse_qs(split.query, keep_blank_values=True)
        self._pad_bytes, self._token_answer = 0, None  # faults of an earlier request on this connection
        try:
            self._body = self._read_body(MAX_RAW_BODY_BYTES if path == RAW_PATH else MAX_BATCH_BYTES)
            if path == TOKEN_PATH:
                self._require_method(method, "POST")
                self._handle_token(query)
            elif path == JWT_EXCHANGE_PATH:
                self._require_method(method, "POST")
                self._handle_jwt_exchange()
            elif path.startswith(JOURNAL_PREFIX):
                self._require_method(method, "GET")
                self._handle_journal(path, query)
            elif PRODUCER_RE.match(path):
                topic = PRODUCER_RE.match(path).group("topic")  # type: ignore[union-attr]
                self._require_method(method, "GET", "POST")
                if method == "POST":
                    self._handle_publish(topic)
                else:
                    self._handle_consume(topic, query)
            elif path == CONSUMER_SYNC_PATH:
                self._require_method(method, "POST")
                self._handle_consumer_sync()
            elif path == DISCOVERY_PATH:
                self._require_method(method, "GET")
                self._handle_discovery(query)
            elif path.startswith("/_emulator/"):
                self._handle_control(method, path)
            else:
                raise ApiError(404, "not_found", f"no such endpoint: {method} {path}")
        except ApiError as err:
            self._send_json(err.status, err.body, err.headers)
        except _StreamCut:
            pass
        except Exception as exc:  # keep serving; report the bug to the client and the log
            self.log_message("internal error on %s: %r", loggable_path(self.path), exc)
            self._send_json(500, {"error": "internal_error", "error_description": repr(exc)})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    @staticmethod
    def _require_method(method: str, *allowed: str) -> None:
        if method not in allowed:
            text = ", ".join(allowed)
            raise ApiError(405, "method_not_allowed", f"use {text}", headers={"Allow": text})

    def _form(self, query: dict[str, list[str]] | None = None) -> dict[str, str]:
        """Query fields overlaid with the urlencoded body (the body wins)."""
        fields = {k: v[-1] for k, v in (query or {}).items()}
        if self._body:
            try:
                form = parse_qs(self._body.decode("utf-8"), keep_blank_values=True)
            except UnicodeDecodeError as exc:
                raise ApiError(400, "invalid_request", "form body is not UTF-8") from exc
            fields.update({k: v[-1] for k, v in form.items()})
        return fields

    # -- faults ------------------------------------------------------------------------------------
    def _request_faults(self, endpoint: str, *, pipeline_style: bool = False) -> None:
        """Apply the oldest queued rule of a request/response endpoint, if any: a status rule
        answers instead of the endpoint; slow/stall delay the answer. On the consume endpoint
        only status rules fire here (stream rules attach to the stream)."""
        with self.state.lock:
            rule = self.state.head_fault(endpoint)
            if rule is None or (endpoint == "consume" and rule.kind != "status"):
                return
            self.state.use_fault(rule)
            kind, status, retry_after = rule.kind, rule.status, rule.retry_after
            delay = rule.delay_ms / 1000 if kind == "slow" else rule.seconds
            message = rule.message or f"injected fault: HTTP {status}"
        if kind == "pad":
            self._pad_bytes, self._pad_delay_s = rule.size, rule.delay_ms / 1000
            return
        if kind == "token_answer":
            self._token_answer = rule
            return
        if kind != "status":
            self._sleep(delay)
            return
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        if pipeline_style:
            raise ApiError.pipeline(status, _status_slug(status), message, headers)
        raise ApiError(status, _status_slug(status), message, headers)

    def _stream_faults(self) -> StreamFaults:
        """Attach the leading run of stream rules queued for ``consume`` (one per kind, up to
        the next status rule) to the stream about to start."""
        taken = StreamFaults()
        with self.state.lock:
            for rule in list(self.state.faults):
                if rule.endpoint != "consume":
                    continue
                if rule.kind == "status" or taken.has(rule.kind):
                    break
                taken.attach(rule)
                if rule.kind in ("slow", "duplicate", "ping_first", "interleave_pings", "pings_only", "huge_line"):
                    self.state.use_fault(rule)  # fired for this whole stream
                elif rule.kind in ("cut", "stall"):
                    # Spent now (one stream each); counted as fired when it actually acts.
                    rule.times -= 1
                    if rule.times <= 0:
                        self.state.faults.remove(rule)
        return taken

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.state.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

    # -- IMS ---------------------------------------------------------------------------------------
    def _handle_token(self, query: dict[str, list[str]]) -> None:
        # DC-S2S prefers the form body but also accepts the query string; the body wins.
        with self.state.lock:
            self.state.stats["token_requests"] += 1
        self._request_faults("token")
        fields = self._form(query)
        grant_type = fields.get("grant_type", "")
        if grant_type != "client_credentials":
            raise ApiError(
                400,
                "unsupported_grant_type",
                f"grant_type must be client_credentials, got {grant_type!r}",
            )
        self._check_client(fields)
        token = self._mint_token()
        self._send_json(
            200, {"access_token": token, "token_type": "bearer", **self._expires_in(self.settings.token_ttl)}
        )

    def _check_client(self, fields: dict[str, str]) -> None:
        client_ok = secrets.compare_digest(fields.get("client_id", ""), self.settings.client_id)
        secret_ok = secrets.compare_digest(fields.get("client_secret", ""), self.settings.client_secret)
        if not (client_ok and secret_ok):
            raise ApiError(401, "invalid_client", "invalid client_id or client_secret")

    def _mint_token(self) -> str:
        token = secrets.token_urlsafe(48)
        with self.state.lock:
            self.state.tokens[token] = time.monotonic() + self.settings.token_ttl
            self.state.stats["tokens_issued"] += 1
        return token

    def _handle_jwt_exchange(self) -> None:
        """Legacy service-account exchange (DC-JWT): checks in Adobe's order, Adobe's codes.

        Success answers ``expires_in`` in MILLISECONDS, as Adobe's JWT exchange does (the OAuth
        S2S endpoint /ims/token/v3 answers seconds).
        """
        with self.state.lock:
            self.state.stats["jwt_exchanges"] += 1
        self._request_faults("exchange")
        fields = self._form()
        self._check_client(fields)
        key = self.server.emulator.jwt_public_key
        if key is None:
            raise ApiError(400, "invalid_client", "JWT is not configured for this client")
        jwt_token = fields.get("jwt_token", "").strip()
        if not jwt_token:
            raise ApiError(400, "invalid_token", "jwt_token is missing")

        import jwt  # pyjwt: only needed once JWT exchange is configured

        try:
            header = jwt.get_unverified_header(jwt_token)
        except jwt.InvalidTokenError as exc:
            raise ApiError(400, "invalid_signature", "jwt_token is not a JWT") from exc
        if header.get("alg") != "RS256":
            raise ApiError(
                400, "invalid_signature", f"JWT must be signed with RS256, not {header.get('alg')!r}"
            )
        try:
            # Signature only here; the claims are checked below, one by one, in Adobe's order.
            claims = jwt.decode(
                jwt_token,
                key,
                algorithms=["RS256"],
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "verify_sub": False,
                    "verify_jti": False,
                },
            )
        except jwt.InvalidTokenError as exc:
            raise ApiError(
                400, "invalid_signature", "JWT signature does not verify with the integration's public key"
            ) from exc

        exp = claims.get("exp")
        if exp is None:
            raise ApiError(400, "invalid_token", "JWT token has no exp claim")
        if isinstance(exp, bool) or not isinstance(exp, (int, float)):
            raise ApiError(400, "invalid_token", "JWT exp claim is not a number")
        if exp <= time.time():
            raise ApiError(400, "invalid_token", "JWT token expired")
        expected_aud = f"{self.base_url}/c/{self.settings.client_id}"
        aud = claims.get("aud")
        if not (aud == expected_aud or (isinstance(aud, list) and expected_aud in aud)):
            raise ApiError(400, "invalid_client", "client id and aud mismatch")
        iss = claims.get("iss")
        if not isinstance(iss, str) or not iss.strip() or iss != self.settings.org_id:
            # The wording pipelined logs for an empty or wrong IMSOrgId (CC-ts).
            raise ApiError(400, "invalid_token", "the subject must be a valid organization or client")
        if claims.get("sub") != self.settings.technical_account_id:
            raise ApiError(400, "invalid_token", "sub is not the technical account of this client")
        metascope = f"{self.base_url}/s/{self.settings.metascope}"
        if claims.get(metascope) is not True:
            raise ApiError(400, "invalid_scope", f"metascope claim {metascope} must be true")
        token = self._mint_token()
        self._send_json(
            200,
            # MILLISECONDS, unlike /ims/token/v3 (DC-JWT sample: "expires_in": 86399973).
            {"token_type": "bearer", "access_token": token, **self._expires_in(self.settings.token_ttl * 1000)},
        )

    def _require_token(self, *, pipeline_style: bool = False) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        make = ApiError.pipeline if pipeline_style else ApiError
        if scheme.lower() != "bearer" or not token.strip():
            raise make(401, "invalid_token", "missing Authorization: Bearer <access token>", challenge)
        with self.state.lock:
            expiry = self.state.tokens.get(token.strip())
        if expiry is None:
            raise make(401, "invalid_token", "unknown access token", challenge)
        if expiry <= time.monotonic():
            raise make(401, "invalid_token", "access token expired", challenge)

    # -- I/O Events journal ------------------------------------------------------------------------
    def _handle_journal(self, path: str, query: dict[str, list[str]]) -> None:
        with self.state.lock:
            self.state.stats["journal_requests"] += 1
        self._request_faults("journal")
        self._require_token()
        if self.headers.get("x-api-key", "") != self.settings.client_id:
            raise ApiError(403, "forbidden", "x-api-key does not match the integration's client id")
        if self.headers.get("x-ims-org-id", "") != self.settings.org_id:
            raise ApiError(
                403, "forbidden", "x-ims-org-id does not match the registration's organization"
            )
        if path != self.settings.journal_path:
            raise ApiError(404, "not_found", f"no journal for {path}")

        limit = self._limit(query)
        since_text = query["since"][-1] if "since" in query else None
        latest = query.get("latest", ["false"])[-1].lower() == "true"

        with self.state.lock:
            if since_text is not None:
                since_seq = parse_position(since_text)
                # Older than anything retained (an earlier emulator process): serve from the start.
                if since_seq is None or since_seq > self.state.last_seq:
                    raise ApiError(
                        400,
                        "invalid_position",
                        f"unknown journal position {since_text!r}",
                        position=since_text,
                    )
            elif latest:
                since_seq = self.state.last_seq
            else:
                since_seq = 0
            # Entries are appended in seq order: bisect for the first newer one.
            journal = self.state.journal
            first = bisect.bisect_right(journal, since_seq, key=_entry_seq)
            batch = journal[first : first + limit]
            self.state.stats["events_served"] += len(batch)
            ahead = self._read_ahead(journal, first, batch, since_seq, limit)

        base = f"{self.server.emulator.base_url}{path}"

        def next_link(position: str) -> str:
            return f'<{base}?since={quote(position, safe=":")}&limit={limit}>; rel="next"'

        if not batch:
            # Same since again: the client retries from where it is after retry-after seconds.
            headers = {"retry-after": str(RETRY_AFTER_SECONDS), "Link": next_link(format_position(since_seq))}
            self._send_empty(204, headers)
            return
        last = batch[-1].position
        link = next_link(last)
        # Compact JSON, the same bytes json.dumps({"events": [...], "_page": {...}}) would give,
        # assembled from the entries' own bytes (rendered ahead when this page was foreseen).
        events: bytes | None = None
        if ahead is not None:
            try:
                events = ahead.result()
            except concurrent.futures.CancelledError:
                events = None
        if events is None:
            events = _journal_events_bytes(batch)
        page = json.dumps({"last": last, "count": len(batch)}, separators=(",", ":")).encode("utf-8")
        data = b'{"events":' + events + b',"_page":' + page + b"}"
        self._send_bytes(200, data, "application/json", {"Link": link})

    def _read_ahead(
        self, journal: list[Any], first: int, batch: list[Any], since_seq: int, limit: int
    ) -> concurrent.futures.Future[bytes] | None:
        """The rendering of this page if it was started ahead, and start the next one. Only full
        pages are rendered ahead: the journal only grows, so a full page never changes.
        Caller holds the lock."""
        state = self.state
        pool = self.server.emulator.read_ahead_pool
        if pool is None or limit < READ_AHEAD_MIN_LIMIT or len(batch) < limit:
            return None
        ahead = state.read_ahead.pop((state.generation, since_seq, limit), None)
        following = journal[first + limit : first + 2 * limit]
        key = (state.generation, batch[-1].seq, limit)
        if len(following) == limit and key not in state.read_ahead:
            state.read_ahead[key] = pool.submit(_journal_events_bytes, following)
            while len(state.read_ahead) > READ_AHEAD_PAGES:
                state.read_ahead.pop(next(iter(state.read_ahead))).cancel()
        return ahead

    def _limit(self, query: dict[str, list[str]]) -> int:
        if "limit" not in query:
            return DEFAULT_LIMIT
        raw = query["limit"][-1]
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value <= 0:
            raise ApiError(400, "invalid_limit", f"limit must be a positive integer, got {raw!r}")
        return min(value, self.settings.max_limit)


class _EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: AdobeEmulator) -> None:
        self.emulator = emulator
        super().__init__(address, EmulatorHandler)


def load_jwt_public_key(pem: bytes) -> Any:
    """The RSA public key of the integration; ValueError if the PEM is not one."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(pem)
    if not isinstance(key, RSAPublicKey):
        raise ValueError("the JWT public key must be an RSA public key (PEM)")
    return key


class AdobeEmulator:
    """The emulator as an object: binds on construction, then ``serve_forever()``/``shutdown()``.

    ``start()`` runs it on a background thread for in-process use.
    """

    def __init__(self, settings: EmulatorSettings | None = None) -> None:
        self.settings = settings or EmulatorSettings()
        if self.settings.partitions <= 0:
            raise ValueError("partitions must be positive")
        self.jwt_public_key: Any = None
        if self.settings.jwt_public_key_pem is not None:
            self.jwt_public_key = load_jwt_public_key(self.settings.jwt_public_key_pem)
        if self.settings.first_offset < 0:
            raise ValueError("first_offset must be >= 0")
        if self.settings.max_limit < 1:
            raise ValueError("max_limit must be >= 1")
        self.state = EmulatorState(
            partitions=self.settings.partitions,
            topic_names=tuple(self.settings.topics),
            first_offset=self.settings.first_offset,
        )
        self.read_ahead_pool: concurrent.futures.ThreadPoolExecutor | None = None
        if self.settings.read_ahead:
            self.read_ahead_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal-read-ahead")
        self._httpd = _EmulatorHTTPServer((self.settings.host, self.settings.port), self)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    @property
    def journal_url(self) -> str:
        return f"{self.base_url}{self.settings.journal_path}"

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.2)

    def start(self) -> AdobeEmulator:
        self._thread = threading.Thread(target=self.serve_forever, name="adobe-emulator", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop serving and release the socket. Must not be called from the serving thread."""
        with self.state.lock:
            self.state.stopping = True  # open consume streams end
            self.state.changed.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.read_ahead_pool is not None:
            self.read_ahead_pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> AdobeEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.adobe_emulator",
        description="Emulate Adobe IMS, the I/O Events journal and the Pipeline API locally.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--client-id", default="triggerflow-local")
    parser.add_argument("--client-secret", default="local-dev-secret")
    parser.add_argument("--org-id", default=DEMO_IMS_ORG)
    parser.add_argument("--integration-id", default="triggerflow-int")
    parser.add_argument("--registration-id", default="triggerflow-reg")
    parser.add_argument("--token-ttl", type=int, default=86399, help="access token lifetime in seconds")
    parser.add_argument("--partitions", type=int, default=15)
    parser.add_argument(
        "--first-offset", type=int, default=FIRST_OFFSET,
        help="offset of the first message in every pipeline partition (default 1000)",
    )
    parser.add_argument(
        "--topic", action="append", dest="topics", metavar="NAME",
        help="a pipeline topic that exists from the start (repeatable; default: triggers)",
    )
    parser.add_argument(
        "--ping-interval", type=float, default=DEFAULT_PING_INTERVAL_S,
        help="seconds between PING lines on an idle consume stream (default 1.0)",
    )
    parser.add_argument(
        "--stream-max-seconds", type=float, default=DEFAULT_STREAM_MAX_SECONDS,
        help="a consume stream ends after this many seconds (default 30)",
    )
    parser.add_argument(
        "--jwt-public-key", metavar="PATH",
        help="PEM RSA public key of the service-account integration; enables POST /ims/exchange/jwt",
    )
    parser.add_argument("--technical-account-id", default=DEFAULT_TECHNICAL_ACCOUNT_ID)
    parser.add_argument("--metascope", default=DEFAULT_METASCOPE)
    parser.add_argument(
        "--max-limit", type=int, default=MAX_LIMIT,
        help=f"largest journal page served; a larger limit is capped (default {MAX_LIMIT})",
    )
    parser.add_argument(
        "--no-read-ahead", dest="read_ahead", action="store_false",
        help="do not render the next full journal page in the background",
    )
    parser.add_argument("--ready-file", help="write the base URL here once listening")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    pem: bytes | None = None
    if args.jwt_public_key:
        with open(args.jwt_public_key, "rb") as fh:
            pem = fh.read()
    settings = EmulatorSettings(
        host=args.host,
        port=args.port,
        client_id=args.client_id,
        client_secret=args.client_secret,
        org_id=args.org_id,
        integration_id=args.integration_id,
        registration_id=args.registration_id,
        token_ttl=args.token_ttl,
        partitions=args.partitions,
        first_offset=args.first_offset,
        topics=tuple(args.topics or ("triggers",)),
        ping_interval=args.ping_interval,
        stream_max_seconds=args.stream_max_seconds,
        jwt_public_key_pem=pem,
        technical_account_id=args.technical_account_id,
        metascope=args.metascope,
        max_limit=args.max_limit,
        read_ahead=args.read_ahead,
    )
    emulator = AdobeEmulator(settings)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    # shutdown() blocks until serve_forever() returns, so serving runs on a thread and the main
    # thread only waits for a signal.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    emulator.start()
    print(f"adobe-emulator listening on {emulator.base_url}", flush=True)
    if args.ready_file:
        write_ready_file(args.ready_file, emulator.base_url)
    while not stop.wait(0.5):
        pass
    emulator.shutdown()
    sys.stderr.write("adobe-emulator stopped\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
