"""IMS answers are bounded (issue 10): ``expires_in`` clamped whatever IMS says, the answer read
with a byte cap and an overall deadline. A small real HTTP server (in-process) plays IMS and
answers exactly the bytes each test gives it, including JSON no encoder would write."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from include.triggerflow.adobe.ims_token import MAX_TOKEN_LIFETIME_S, MIN_TOKEN_LIFETIME_S, token_lifetime
from include.triggerflow.hooks.ims import AdobeImsHook, ImsAuthError, clear_token_cache


class RawIms:
    """Answers POST /ims/token/v3 with ``body`` (bytes); ``chunked`` sends it without
    Content-Length; ``trickle_s`` sends it a few bytes at a time, that far apart."""

    def __init__(self) -> None:
        self.body = b'{"access_token":"tok","expires_in":3600}'
        self.chunked = False
        self.trickle_s = 0.0
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests += 1
                body = outer.body
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Connection", "close")
                if outer.chunked or outer.trickle_s:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if not (outer.chunked or outer.trickle_s):
                        self.wfile.write(body)
                        return
                    step = 4 if outer.trickle_s else 64 * 1024
                    for i in range(0, len(body), step):
                        part = body[i : i + step]
                        self.wfile.write(b"%X\r\n%s\r\n" % (len(part), part))
                        self.wfile.flush()
                        if outer.trickle_s:
                            time.sleep(outer.trickle_s)
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass  # the client gave up at its bound

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ims(monkeypatch: pytest.MonkeyPatch) -> Iterator[RawIms]:
    clear_token_cache()
    server = RawIms()
    conn = {"conn_type": "http", "host": server.base_url, "login": "cid", "password": "secret-xyz", "extra": {"org_id": "ORG@AdobeOrg"}}
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", json.dumps(conn))

    def set_extra(**extra: Any) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", json.dumps({**conn, "extra": {**conn["extra"], **extra}}))

    server.set_extra = set_extra  # type: ignore[attr-defined]
    yield server
    server.close()
    clear_token_cache()


@pytest.mark.parametrize(
    ("raw", "unit", "seconds", "clamped"),
    [
        (3600, 1.0, 3600.0, False),
        (20, 1.0, 20.0, False),  # short but real: kept (the reuse margin scales with it)
        (86_399_973, 1000.0, 86_399.973, False),  # the JWT exchange's milliseconds
        (1e12, 1.0, MAX_TOKEN_LIFETIME_S, True),
        (float("inf"), 1.0, MAX_TOKEN_LIFETIME_S, True),
        ("Infinity", 1.0, MAX_TOKEN_LIFETIME_S, True),
        (10**400, 1.0, MAX_TOKEN_LIFETIME_S, True),
        (float("nan"), 1.0, MIN_TOKEN_LIFETIME_S, True),
        (-5, 1.0, MIN_TOKEN_LIFETIME_S, True),
        (0, 1.0, MIN_TOKEN_LIFETIME_S, True),
        ("soon", 1.0, MIN_TOKEN_LIFETIME_S, True),
        (None, 1.0, MIN_TOKEN_LIFETIME_S, True),
        (True, 1.0, MIN_TOKEN_LIFETIME_S, True),
        ([3600], 1.0, MIN_TOKEN_LIFETIME_S, True),
    ],
)
def test_token_lifetime_is_clamped_and_says_why(raw: Any, unit: float, seconds: float, clamped: bool) -> None:
    lifetime, problem = token_lifetime(raw, unit)
    assert lifetime == pytest.approx(seconds)
    assert (problem is not None) == clamped
    if problem:
        assert problem.startswith("expires_in ")


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [(b"1e12", MAX_TOKEN_LIFETIME_S), (b"Infinity", MAX_TOKEN_LIFETIME_S), (b"NaN", MIN_TOKEN_LIFETIME_S),
     (b"-1", MIN_TOKEN_LIFETIME_S), (b'"3600"', 3600.0), (b"1" + b"0" * 400, MAX_TOKEN_LIFETIME_S), (None, MIN_TOKEN_LIFETIME_S)],
)
def test_any_expires_in_mints_a_token_that_the_store_keeps(ims: RawIms, store_engine, expires_in, lifetime) -> None:
    ims.body = b'{"access_token":"tok-1"' + (b',"expires_in":' + expires_in if expires_in is not None else b"") + b"}"
    token = AdobeImsHook(token_store=store_engine).fetch_token()
    assert token.access_token == "tok-1"
    assert token.lifetime_s == pytest.approx(lifetime)
    clear_token_cache()  # a new task process: the token comes back from the store, not from IMS
    assert AdobeImsHook(token_store=store_engine).get_token() == "tok-1"
    assert ims.requests == 1


@pytest.mark.parametrize("chunked", [False, True])
def test_answer_over_the_cap_is_an_auth_error_naming_the_extra(ims: RawIms, chunked: bool) -> None:
    ims.body = b'{"access_token":"tok","expires_in":3600,"pad":"' + b"x" * 100_000 + b'"}'
    ims.chunked = chunked
    ims.set_extra(max_answer_bytes=50_000)
    with pytest.raises(ImsAuthError, match=r"larger than 50000 bytes \(extra.max_answer_bytes") as caught:
        AdobeImsHook().get_token()
    assert "secret-xyz" not in str(caught.value)


def test_default_cap_lets_an_ordinary_answer_through(ims: RawIms) -> None:
    ims.body = b'{"access_token":"tok","expires_in":3600,"pad":"' + b"x" * 30_000 + b'"}'
    ims.chunked = True
    assert AdobeImsHook().get_token() == "tok"


def test_trickled_answer_ends_at_the_request_deadline(ims: RawIms) -> None:
    # every socket read gets bytes well within the timeout: only an overall deadline ends this
    ims.body = b'{"access_token":"tok","expires_in":3600,"pad":"' + b"x" * 400 + b'"}'
    ims.trickle_s = 0.02
    ims.set_extra(request_deadline_s=0.3, timeout_s=5)
    with pytest.raises(ImsAuthError, match=r"deadline \(extra.max_answer_bytes / extra.request_deadline_s"):
        AdobeImsHook().get_token()


def test_unusable_bounds_in_the_extras_are_named(ims: RawIms) -> None:
    ims.set_extra(max_answer_bytes="lots")
    with pytest.raises(ImsAuthError, match=r"extra.max_answer_bytes must be a positive whole number, got 'lots'"):
        AdobeImsHook().get_token()
