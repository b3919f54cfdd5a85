"""Local stand-in for the Adobe services triggerflow talks to, as one real HTTP server.

triggerflow cannot reach Adobe from a laptop or CI, so this process emulates the three wire
contracts it depends on (reference/adobe-triggers.md):

* IMS OAuth Server-to-Server token endpoint, ``POST /ims/token/v3`` (DC-S2S, §6.1);
* the I/O Events Journaling API, ``GET /events/organizations/{org}/integrations/{int}/{reg}``
  (IOE-JRN, §1.11), serving pipeline envelopes (§1.7) wrapped as ``{event_id, event}``;
* the Pipeline v3 producer endpoint, ``POST /pipeline/topics/{topic}/messages`` (PIPE-API, §1.5),
  used by the demo and tests to feed the journal with realistic trigger messages.

A small unauthenticated control plane under ``/_emulator/`` lets tests inject malformed events,
read counters, reset state and force token expiry.

Run it with ``python -m devstack.adobe_emulator --port 0 --ready-file /tmp/x``; it prints
``adobe-emulator listening on http://127.0.0.1:<port>`` once bound. Standard library only, so it
starts fast and runs anywhere the project runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from devstack.messages import DEMO_IMS_ORG, envelope

TOKEN_PATH = "/ims/token/v3"
JOURNAL_PREFIX = "/events/organizations/"
PRODUCER_RE = re.compile(r"^/pipeline/topics/(?P<topic>[^/]+)/messages$")
JOURNAL_RE = re.compile(
    r"^/events/organizations/(?P<org>[^/]+)/integrations/(?P<integration>[^/]+)/(?P<registration>[^/]+)$"
)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
RETRY_AFTER_SECONDS = 10
FIRST_OFFSET = 1000
# PIPE-API limits: 1 MB for one message, 2 MB for a batch.
MAX_SINGLE_MESSAGE_BYTES = 1_000_000
MAX_BATCH_BYTES = 2_000_000

POSITION_PREFIX = "v2:"
POSITION_RE = re.compile(r"^v2:(\d{12,18})$")

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


@dataclass
class EmulatorState:
    """Everything mutable, guarded by one lock: requests are served on many threads."""

    partitions: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    journal: list[JournalEntry] = field(default_factory=list)
    # Sequence numbers are never reused, not even across /_emulator/reset or a restart of the
    # emulator: they start at the start-up time in microseconds, so a position stored by a client
    # of an earlier emulator process is *older* than this journal (served from its start, like a
    # position whose events aged out of Adobe's 7-day retention), never a different event.
    last_seq: int = field(default_factory=lambda: time.time_ns() // 1000)
    tokens: dict[str, float] = field(default_factory=dict)
    next_offsets: dict[int, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.journal = []
        self.tokens = {}
        self.next_offsets = {p: FIRST_OFFSET for p in range(self.partitions)}
        self.stats = {
            "token_requests": 0,
            "tokens_issued": 0,
            "journal_requests": 0,
            "events_served": 0,
            "journal_size": 0,
            "published": 0,
        }

    def append(self, event: Any) -> JournalEntry:
        """Caller holds the lock."""
        self.last_seq += 1
        entry = JournalEntry(seq=self.last_seq, event_id=str(uuid.uuid4()), event=event)
        self.journal.append(entry)
        self.stats["journal_size"] = len(self.journal)
        return entry


class ApiError(Exception):
    """An error response: status, JSON body and extra headers."""

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
    return f"{parts.path}?{urlencode(safe, safe=':*')}"


class EmulatorHandler(BaseHTTPRequestHandler):
    server: _EmulatorHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "triggerflow-adobe-emulator/1.0"
    # A stuck client must not pin a worker thread forever.
    timeout = 30
    _body: bytes = b""

    # -- plumbing ----------------------------------------------------------------------------------
    @property
    def settings(self) -> EmulatorSettings:
        return self.server.emulator.settings

    @property
    def state(self) -> EmulatorState:
        return self.server.emulator.state

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The default line contains the raw request line (query secrets included): replace it.
        status = code.value if isinstance(code, HTTPStatus) else code
        sys.stderr.write(f"adobe-emulator {self.command} {loggable_path(self.path)} {status}\n")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # Reached for protocol errors only; their text can quote the request line.
        sys.stderr.write("adobe-emulator " + redact(format % args) + "\n")

    def _read_body(self) -> bytes:
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
        if size > MAX_BATCH_BYTES:
            # Not worth draining: answer and drop the connection.
            self.close_connection = True
            raise ApiError(413, "payload_too_large", f"request body exceeds {MAX_BATCH_BYTES} bytes")
        return self.rfile.read(size)

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_empty(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = parse_qs(split.query, keep_blank_values=True)
        try:
            self._body = self._read_body()
            if path == TOKEN_PATH:
                self._require_method(method, "POST")
                self._handle_token(query)
            elif path.startswith(JOURNAL_PREFIX):
                self._require_method(method, "GET")
                self._handle_journal(path, query)
            elif PRODUCER_RE.match(path):
                self._require_method(method, "POST")
                self._handle_publish(PRODUCER_RE.match(path).group("topic"))  # type: ignore[union-attr]
            elif path.startswith("/_emulator/"):
                self._handle_control(method, path)
            else:
                raise ApiError(404, "not_found", f"no such endpoint: {method} {path}")
        except ApiError as err:
            self._send_json(err.status, err.body, err.headers)
        except Exception as exc:  # keep serving; report the bug to the client and the log
            self.log_message("internal error on %s: %r", loggable_path(self.path), exc)
            self._send_json(500, {"error": "internal_error", "error_description": repr(exc)})

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    @staticmethod
    def _require_method(method: str, allowed: str) -> None:
        if method != allowed:
            raise ApiError(405, "method_not_allowed", f"use {allowed}", headers={"Allow": allowed})

    # -- IMS ---------------------------------------------------------------------------------------
    def _handle_token(self, query: dict[str, list[str]]) -> None:
        # DC-S2S prefers the form body but also accepts the query string; the body wins.
        fields = {k: v[-1] for k, v in query.items()}
        body = self._body
        if body:
            try:
                form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
            except UnicodeDecodeError as exc:
                raise ApiError(400, "invalid_request", "form body is not UTF-8") from exc
            fields.update({k: v[-1] for k, v in form.items()})
        with self.state.lock:
            self.state.stats["token_requests"] += 1
        grant_type = fields.get("grant_type", "")
        if grant_type != "client_credentials":
            raise ApiError(
                400,
                "unsupported_grant_type",
                f"grant_type must be client_credentials, got {grant_type!r}",
            )
        client_ok = secrets.compare_digest(fields.get("client_id", ""), self.settings.client_id)
        secret_ok = secrets.compare_digest(fields.get("client_secret", ""), self.settings.client_secret)
        if not (client_ok and secret_ok):
            raise ApiError(401, "invalid_client", "invalid client_id or client_secret")
        token = secrets.token_urlsafe(48)
        with self.state.lock:
            self.state.tokens[token] = time.monotonic() + self.settings.token_ttl
            self.state.stats["tokens_issued"] += 1
        self._send_json(
            200, {"access_token": token, "token_type": "bearer", "expires_in": self.settings.token_ttl}
        )

    def _require_token(self) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401, "invalid_token", "missing Authorization: Bearer <access token>", challenge
            )
        with self.state.lock:
            expiry = self.state.tokens.get(token.strip())
        if expiry is None:
            raise ApiError(401, "invalid_token", "unknown access token", challenge)
        if expiry <= time.monotonic():
            raise ApiError(401, "invalid_token", "access token expired", challenge)

    # -- I/O Events journal ------------------------------------------------------------------------
    def _handle_journal(self, path: str, query: dict[str, list[str]]) -> None:
        with self.state.lock:
            self.state.stats["journal_requests"] += 1
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
            # Entries are appended in seq order, so the first newer entry can be bisected; a
            # linear scan is fine at dev-stack sizes and easier to trust.
            batch = [e for e in self.state.journal if e.seq > since_seq][:limit]
            self.state.stats["events_served"] += len(batch)

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
        body = {"events": [e.as_json() for e in batch], "_page": {"last": last, "count": len(batch)}}
        self._send_json(200, body, {"Link": link})

    @staticmethod
    def _limit(query: dict[str, list[str]]) -> int:
        if "limit" not in query:
            return DEFAULT_LIMIT
        raw = query["limit"][-1]
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value <= 0:
            raise ApiError(400, "invalid_limit", f"limit must be a positive integer, got {raw!r}")
        return min(value, MAX_LIMIT)

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
            for message in messages:
                if not isinstance(message.get("messageId"), str) or not message["messageId"]:
                    message = {**message, "messageId": str(uuid.uuid4())}
                partition = partition_for(message["messageId"], self.state.partitions)
                offset = self.state.next_offsets[partition]
                self.state.next_offsets[partition] = offset + 1
                wrapped = envelope(message, partition=partition, offset=offset, topic=topic)
                entry = self.state.append(wrapped)
                self.state.stats["published"] += 1
                accepted.append({"partition": partition, "offset": offset, "position": entry.position})
        self._send_json(200, {"accepted": len(accepted), "positions": accepted})

    # -- control plane -----------------------------------------------------------------------------
    def _handle_control(self, method: str, path: str) -> None:
        action = path[len("/_emulator/"):]
        routes = {
            "journal": "POST",
            "stats": "GET",
            "reset": "POST",
            "health": "GET",
            "expire-tokens": "POST",
        }
        if action not in routes:
            raise ApiError(404, "not_found", f"no such control endpoint: {path}")
        self._require_method(method, routes[action])
        state = self.state
        if action == "health":
            self._send_json(200, {"ok": True})
        elif action == "stats":
            with state.lock:
                stats = dict(state.stats)
            self._send_json(200, stats)
        elif action == "reset":
            with state.lock:
                state.clear()
            self._send_json(200, {"ok": True})
        elif action == "expire-tokens":
            with state.lock:
                expired = len(state.tokens)
                # Keep the tokens so requests using them get "expired", not "unknown".
                state.tokens = {token: 0.0 for token in state.tokens}
            self._send_json(200, {"expired": expired})
        else:  # journal
            try:
                payload = json.loads(self._body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from exc
            if not isinstance(payload, dict) or "events" not in payload:
                raise ApiError(400, "bad_request", 'body must be {"events": <value or list of values>}')
            raw = payload["events"]
            items = raw if isinstance(raw, list) else [raw]
            with state.lock:
                positions = [state.append(item).position for item in items]
            self._send_json(200, {"accepted": len(positions), "positions": positions})


class _EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: AdobeEmulator) -> None:
        self.emulator = emulator
        super().__init__(address, EmulatorHandler)


class AdobeEmulator:
    """The emulator as an object: binds on construction, then ``serve_forever()``/``shutdown()``.

    ``start()`` runs it on a background thread for in-process use.
    """

    def __init__(self, settings: EmulatorSettings | None = None) -> None:
        self.settings = settings or EmulatorSettings()
        if self.settings.partitions <= 0:
            raise ValueError("partitions must be positive")
        self.state = EmulatorState(partitions=self.settings.partitions)
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
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> AdobeEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def write_ready_file(path: str, content: str) -> None:
    """Write then rename, so a poller never reads a half-written file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.adobe_emulator",
        description="Emulate Adobe IMS, the I/O Events journal and the Pipeline producer API locally.",
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
    parser.add_argument("--ready-file", help="write the base URL here once listening")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
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
