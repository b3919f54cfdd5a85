"""The legacy JWT service-account mode of AdobeImsHook (``extra.auth_type = "jwt"``).

Pure tests pin what the hook builds and sends: the claims, an RS256 signature that verifies with
the integration's public key (pyjwt), the exact form, the milliseconds of ``expires_in``, and the
key/extra mistakes caught before any request. What the hook sends is read from a small recording
HTTP server in a thread (the emulator checks a JWT but cannot show it). The exchange against the
emulator process, which checks the JWT like IMS does, is in tests/integration/hooks/test_ims_jwt.py.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from include.triggerflow.adobe.ims_jwt import DEFAULT_METASCOPES, build_jwt_claims, parse_metascopes
from include.triggerflow.adobe.ims_token import token_cache_key
from include.triggerflow.hooks.ims import AdobeImsHook, ImsAuthError, clear_token_cache
from tests.ims_support import (
    KEY_PHRASE,
    ORG,
    TECH_ACCT,
    KeyPair,
    ec_pem,
    encrypted_pem,
    jwt_extra,
    set_conn,
)

# -- keys ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys() -> KeyPair:
    """The integration's key pair: its public key is the certificate uploaded to Adobe."""
    return KeyPair()


@pytest.fixture(scope="module")
def other_keys() -> KeyPair:
    return KeyPair()


# -- a recording IMS double (pure tests only) -----------------------------------------------------------------
class RecordingIms:
    """Answers every POST with ``reply`` and records (path, form). Real HTTP, no checks."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.reply: tuple[int, dict[str, Any]] = (200, {"token_type": "bearer", "access_token": "x" * 40, "expires_in": 86_399_973})
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                outer.calls.append((self.path, {k: v[-1] for k, v in parse_qs(body).items()}))
                status, payload = outer.reply
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[RecordingIms]:
    clear_token_cache()
    ims = RecordingIms()
    yield ims
    ims.close()
    clear_token_cache()


def sent_jwt(recorder: RecordingIms) -> str:
    assert len(recorder.calls) == 1
    return recorder.calls[0][1]["jwt_token"]


# -- pure: claims ----------------------------------------------------------------------------------------------
def test_claims_follow_the_service_account_format() -> None:
    claims = build_jwt_claims(
        base_url="https://ims-na1.adobelogin.com", client_id="abc123", org_id=ORG, technical_account_id=TECH_ACCT,
        metascopes=["ent_analytics_bulk_ingest_sdk", "ent_campaign_sdk"], ttl_s=300, now=1_700_000_000.7,
    )
    assert claims == {
        "exp": 1_700_000_300,
        "iss": ORG,
        "sub": TECH_ACCT,
        "aud": "https://ims-na1.adobelogin.com/c/abc123",
        "https://ims-na1.adobelogin.com/s/ent_analytics_bulk_ingest_sdk": True,
        "https://ims-na1.adobelogin.com/s/ent_campaign_sdk": True,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ("ent_analytics_bulk_ingest_sdk",)),
        ("ent_campaign_sdk", ("ent_campaign_sdk",)),
        (" ent_a , ent_b ,", ("ent_a", "ent_b")),
        (["ent_a", "ent_b", "ent_a"], ("ent_a", "ent_b")),
        (["https://ims-na1.adobelogin.com/s/ent_campaign_sdk"], ("ent_campaign_sdk",)),
        ("", ()),
    ],
)
def test_metascopes_accept_a_list_or_comma_separated_names(value, expected) -> None:
    assert parse_metascopes(value) == expected
    assert DEFAULT_METASCOPES == ("ent_analytics_bulk_ingest_sdk",)


def test_metascopes_of_another_type_are_refused() -> None:
    with pytest.raises(ValueError):
        parse_metascopes({"ent_a": True})
    with pytest.raises(ValueError):
        parse_metascopes([1, 2])


# -- pure: what the hook sends ---------------------------------------------------------------------------------
def test_hook_posts_an_rs256_jwt_that_verifies_with_the_public_key(recorder, keys, other_keys, monkeypatch) -> None:
    set_conn(monkeypatch, host=recorder.base_url, extra=jwt_extra(keys))
    hook = AdobeImsHook()
    before = int(time.time())
    assert hook.get_token() == "x" * 40
    path, form = recorder.calls[0]
    assert path == "/ims/exchange/jwt"
    assert set(form) == {"client_id", "client_secret", "jwt_token"}
    assert (form["client_id"], form["client_secret"]) == ("cid-123", "client-secret-xyz")
    token = form["jwt_token"]
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(
        token, keys.public_pem, algorithms=["RS256"], audience=f"{recorder.base_url}/c/cid-123", issuer=ORG
    )
    assert claims.pop("exp") in range(before + 300, int(time.time()) + 301)
    assert claims == {
        "iss": ORG, "sub": TECH_ACCT, "aud": f"{recorder.base_url}/c/cid-123",
        f"{recorder.base_url}/s/ent_analytics_bulk_ingest_sdk": True,
    }
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, other_keys.public_pem, algorithms=["RS256"], options={"verify_aud": False})
    assert hook.token_requests == 1


def test_jwt_ttl_and_metascopes_come_from_the_extras(recorder, keys, monkeypatch) -> None:
    set_conn(monkeypatch, host=recorder.base_url,
             extra=jwt_extra(keys, jwt_ttl_s=120, metascopes="ent_campaign_sdk,ent_analytics_bulk_ingest_sdk"))
    before = int(time.time())
    AdobeImsHook().get_token()
    claims = jwt.decode(sent_jwt(recorder), keys.public_pem, algorithms=["RS256"], options={"verify_aud": False})
    assert before + 120 <= claims["exp"] <= int(time.time()) + 120
    assert claims[f"{recorder.base_url}/s/ent_campaign_sdk"] is True
    assert claims[f"{recorder.base_url}/s/ent_analytics_bulk_ingest_sdk"] is True


def test_jwt_exchange_expires_in_is_milliseconds(recorder, keys, monkeypatch) -> None:
    set_conn(monkeypatch, host=recorder.base_url, extra=jwt_extra(keys))
    recorder.reply = (200, {"token_type": "bearer", "access_token": "j" * 40, "expires_in": 86_399_973})
    token = AdobeImsHook().fetch_token()
    assert token.lifetime_s == pytest.approx(86_399.973)
    assert token.expires_at == pytest.approx(time.time() + 86_399.973, abs=5)


def test_oauth_expires_in_is_seconds(recorder, monkeypatch) -> None:
    set_conn(monkeypatch, host=recorder.base_url, extra={"org_id": ORG, "scopes": "openid"})
    recorder.reply = (200, {"token_type": "bearer", "access_token": "o" * 40, "expires_in": 86_399})
    token = AdobeImsHook().fetch_token()
    assert recorder.calls[0][0] == "/ims/token/v3"
    assert recorder.calls[0][1]["grant_type"] == "client_credentials"
    assert token.lifetime_s == pytest.approx(86_399)


def test_jwt_private_key_and_assertion_are_masked(recorder, keys, monkeypatch) -> None:
    import airflow.sdk.log

    masked: list[str] = []
    monkeypatch.setattr(airflow.sdk.log, "mask_secret", lambda secret, *a, **k: masked.append(secret))
    set_conn(monkeypatch, host=recorder.base_url, extra=jwt_extra(keys))
    token = AdobeImsHook().get_token()
    assert sent_jwt(recorder) in masked
    assert token in masked
    assert keys.private_pem.strip() in masked


@pytest.mark.parametrize("auth_type", ["jwt", "JWT", " jwt "])
def test_auth_type_is_read_case_insensitively(recorder, keys, monkeypatch, auth_type) -> None:
    set_conn(monkeypatch, host=recorder.base_url, extra=jwt_extra(keys, auth_type=auth_type))
    AdobeImsHook().get_token()
    assert recorder.calls[0][0] == "/ims/exchange/jwt"


def test_unknown_auth_type_is_named(recorder, monkeypatch) -> None:
    set_conn(monkeypatch, host=recorder.base_url, extra={"org_id": ORG, "auth_type": "imsJwtToken"})
    with pytest.raises(ImsAuthError, match=r"connection 'adobe_ims': extra.auth_type 'imsJwtToken' is not one of \('oauth', 'jwt'\)"):
        AdobeImsHook().get_token()
    assert recorder.calls == []


@pytest.mark.parametrize(
    ("auth", "status", "error", "expected"),
    [
        ("oauth", 400, "invalid_scope", "check extra.scopes (now 'openid,AdobeID') against the credential's scopes"),
        ("oauth", 401, "invalid_client", "check the client id (login) and client secret (password) of connection 'adobe_ims'"),
        ("oauth", 403, "forbidden", "the credential type is retired: use OAuth Server-to-Server"),
        ("jwt", 400, "invalid_scope", "check extra.metascopes (now ['ent_analytics_bulk_ingest_sdk'])"),
        ("jwt", 400, "invalid_signature", "extra.private_key does not match the certificate (public key)"),
        ("jwt", 400, "invalid_token", "check extra.jwt_ttl_s (now 300 s) and this machine's clock"),
        ("jwt", 400, "bad_request", "check the credential settings of connection 'adobe_ims'"),
        ("jwt", 502, "unknown_error", "IMS may be unavailable; retry later"),
    ],
)
def test_each_ims_refusal_is_explained(recorder, keys, monkeypatch, auth, status, error, expected) -> None:
    extra = jwt_extra(keys) if auth == "jwt" else {"org_id": ORG, "scopes": "openid,AdobeID"}
    set_conn(monkeypatch, host=recorder.base_url, extra=extra)
    recorder.reply = (status, {"error": error, "error_description": "as IMS said it"})
    with pytest.raises(ImsAuthError) as info:
        AdobeImsHook().get_token()
    message = str(info.value)
    assert f"({status} {error}: as IMS said it)" in message
    assert expected in message
    assert "client-secret-xyz" not in message and keys.body_line not in message


def test_refusal_without_a_json_body(recorder, monkeypatch) -> None:
    set_conn(monkeypatch, host=recorder.base_url, extra={"org_id": ORG})
    recorder.reply = (500, [])  # JSON, but not an object
    with pytest.raises(ImsAuthError, match=r"\(500 unknown_error\): IMS may be unavailable"):
        AdobeImsHook().get_token()


@pytest.mark.parametrize("body", [{"token_type": "bearer"}, {"access_token": ""}, ["x"]])
def test_success_without_a_token_is_an_error(recorder, monkeypatch, body) -> None:
    set_conn(monkeypatch, host=recorder.base_url, extra={"org_id": ORG})
    recorder.reply = (200, body)
    with pytest.raises(ImsAuthError, match=r"answered 200 (without an access_token|with a body that is not a JSON object)"):
        AdobeImsHook().get_token()


# -- pure: key and extra mistakes, caught before any request ------------------------------------------------------


BAD_KEYS: dict[str, tuple[Callable[[KeyPair], Any], str]] = {
    "missing": (lambda k: None, "it is missing"),
    "empty": (lambda k: "   ", "it is missing"),
    "not pem": (lambda k: "this is not a key", "it is not PEM"),
    "truncated pem": (lambda k: "\n".join(k.private_pem.splitlines()[:8]), "it could not be parsed"),
    "corrupted pem": (lambda k: k.private_pem.replace(k.body_line, "A" * len(k.body_line)), "it could not be parsed"),
    "ec key": (lambda k: ec_pem(), "not an RSA key"),
    "public key": (lambda k: k.public_pem, "it is a certificate or public key"),
    "encrypted": (encrypted_pem, "it is encrypted with a passphrase"),
    "a number": (lambda k: 12345, "it must be the PEM text"),
}


@pytest.mark.parametrize("case", list(BAD_KEYS))
def test_unreadable_private_key_is_explained_before_any_request(recorder, keys, monkeypatch, case) -> None:
    make, reason = BAD_KEYS[case]
    set_conn(monkeypatch, host=recorder.base_url, extra=jwt_extra(keys, private_key=make(keys)))
    hook = AdobeImsHook()
    with pytest.raises(ImsAuthError) as info:
        hook.get_token()
    message = str(info.value)
    assert message.startswith(KEY_PHRASE)
    assert reason in message
    assert keys.body_line not in message and "client-secret-xyz" not in message
    assert recorder.calls == [] and hook.token_requests == 0


def test_short_rsa_key_is_refused(recorder, monkeypatch) -> None:
    small = KeyPair(bits=1024)
    set_conn(monkeypatch, host=recorder.base_url, extra=jwt_extra(small))
    with pytest.raises(ImsAuthError, match="it is only 1024 bits") as info:
        AdobeImsHook().get_token()
    assert str(info.value).startswith(KEY_PHRASE)
    assert recorder.calls == []


@pytest.mark.parametrize(
    "variant",
    ["pkcs8", "pkcs1", "escaped newlines", "base64 of the pem"],
)
def test_private_key_forms_that_are_accepted(recorder, keys, monkeypatch, variant) -> None:
    pem = {
        "pkcs8": keys.private_pem,
        "pkcs1": keys.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ).decode(),
        "escaped newlines": keys.private_pem.replace("\n", "\\n"),
        "base64 of the pem": base64.b64encode(keys.private_pem.encode()).decode(),
    }[variant]
    set_conn(monkeypatch, host=recorder.base_url, extra=jwt_extra(keys, private_key=pem))
    AdobeImsHook().get_token()
    jwt.decode(sent_jwt(recorder), keys.public_pem, algorithms=["RS256"], options={"verify_aud": False})


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"technical_account_id": None}, "extra.technical_account_id is required for auth_type 'jwt'"),
        ({"technical_account_id": ORG}, "is not a technical account ID (...@techacct.adobe.com)"),
        ({"metascopes": ""}, "extra.metascopes is empty"),
        ({"metascopes": {"a": 1}}, "extra.metascopes must be a list"),
        ({"jwt_ttl_s": 0}, "extra.jwt_ttl_s 0 must be a whole number of seconds between 1 and 86400"),
        ({"jwt_ttl_s": "five minutes"}, "extra.jwt_ttl_s 'five minutes' must be a whole number"),
        ({"jwt_ttl_s": 12.5}, "extra.jwt_ttl_s 12.5 must be a whole number"),
        ({"org_id": " "}, "extra.org_id is empty — the subject must be a valid organization or client"),
    ],
)
def test_jwt_extras_are_checked_before_any_request(recorder, keys, monkeypatch, overrides, expected) -> None:
    set_conn(monkeypatch, host=recorder.base_url, extra=jwt_extra(keys, **overrides))
    hook = AdobeImsHook()
    with pytest.raises(ImsAuthError) as info:
        hook.get_token()
    assert expected in str(info.value)
    assert "connection 'adobe_ims'" in str(info.value)
    assert recorder.calls == [] and hook.token_requests == 0


def test_jwt_ttl_as_a_numeric_string_is_accepted(recorder, keys, monkeypatch) -> None:
    set_conn(monkeypatch, host=recorder.base_url, extra=jwt_extra(keys, jwt_ttl_s="60"))
    before = int(time.time())
    AdobeImsHook().get_token()
    claims = jwt.decode(sent_jwt(recorder), keys.public_pem, algorithms=["RS256"], options={"verify_aud": False})
    assert before + 60 <= claims["exp"] <= int(time.time()) + 60


def test_oauth_and_jwt_tokens_are_cached_apart(recorder, keys, monkeypatch) -> None:
    set_conn(monkeypatch, host=recorder.base_url, extra={"org_id": ORG})
    oauth = AdobeImsHook()
    set_conn(monkeypatch, host=recorder.base_url, extra=jwt_extra(keys), conn_id="adobe_ims_jwt")
    legacy = AdobeImsHook("adobe_ims_jwt")
    assert oauth.cache_key != legacy.cache_key
    assert legacy.cache_key == token_cache_key(recorder.base_url, "cid-123", "ent_analytics_bulk_ingest_sdk", "jwt")
    oauth.get_token()
    legacy.get_token()
    assert [path for path, _ in recorder.calls] == ["/ims/token/v3", "/ims/exchange/jwt"]


def test_unreachable_ims_names_the_exchange_url_and_the_error(keys, monkeypatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    set_conn(monkeypatch, host=f"http://127.0.0.1:{port}", extra=jwt_extra(keys))
    clear_token_cache()
    with pytest.raises(ImsAuthError) as info:
        AdobeImsHook(timeout=2).get_token()
    message = str(info.value)
    assert f"IMS JWT exchange to http://127.0.0.1:{port}/ims/exchange/jwt failed: ConnectionError" in message
    assert "host of connection 'adobe_ims'" in message
    assert "client-secret-xyz" not in message and keys.body_line not in message


# -- against the emulator ---------------------------------------------------------------------------------------
