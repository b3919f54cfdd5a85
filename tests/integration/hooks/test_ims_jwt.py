"""The legacy JWT service-account mode of AdobeImsHook against the real emulator process, started
with the integration's public key: it checks the JWT like IMS does. (The claims, the signature
and the extras are pinned in-process by tests/unit/hooks/test_ims_jwt.py.)
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable
from typing import Any

import pytest
import requests
from sqlalchemy import select

from include.triggerflow.adobe import ims_jwt as ims_jwt_module
from include.triggerflow.adobe.ims_token import decrypt_token, token_cache_key
from include.triggerflow.hooks.ims import AdobeImsHook, ImsAuthError, clear_token_cache
from include.triggerflow.store.schema import ims_token
from tests.ims_support import (
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


# -- pure: claims ----------------------------------------------------------------------------------------------
# -- pure: what the hook sends ---------------------------------------------------------------------------------
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


# -- against the emulator ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jwt_emulator(tmp_path_factory, keys):
    from devstack.processes import start_emulator

    base = tmp_path_factory.mktemp("jwt-emulator")
    public_key = base / "integration-public.pem"
    public_key.write_text(keys.public_pem)
    with start_emulator(
        jwt_public_key_path=public_key, technical_account_id=TECH_ACCT, metascope="ent_analytics_bulk_ingest_sdk",
        log_path=base / "emulator.log",
    ) as emu:
        yield emu


@pytest.fixture
def jemu(jwt_emulator, keys, monkeypatch):
    """The JWT-enabled emulator, reset, with connection adobe_ims in JWT mode pointing at it."""
    jwt_emulator.client.reset()
    clear_token_cache()
    configure_jwt(monkeypatch, jwt_emulator, keys)
    yield jwt_emulator
    clear_token_cache()


def configure_jwt(monkeypatch, emu, keys: KeyPair, *, host: str | None = None, password: str | None = None,
                  **overrides: Any) -> None:
    extra = jwt_extra(keys, org_id=emu.client.org_id)
    extra.update(overrides)
    set_conn(
        monkeypatch, host=host or emu.base_url, login=emu.client.client_id,
        password=emu.client.client_secret if password is None else password,
        extra={k: v for k, v in extra.items() if v is not None},
    )


def stats(emu) -> dict[str, int]:
    return emu.client.stats()


def test_jwt_token_is_minted_and_accepted_by_the_journal(jemu) -> None:
    hook = AdobeImsHook()
    token = hook.fetch_token()
    resp = requests.get(jemu.client.journal_url, headers=jemu.client.journal_headers(token.access_token), timeout=10)
    assert resp.status_code == 204
    # the emulator's tokens last 86399 s and its exchange says so in milliseconds
    assert token.lifetime_s == pytest.approx(86_399, abs=1)
    # refreshed 300 s before it expires (measured from its own expiry, not from a clock read later)
    assert token.usable(token.expires_at - 301) and not token.usable(token.expires_at - 299)
    assert hook.get_token() == token.access_token
    assert stats(jemu)["jwt_exchanges"] == 1
    assert stats(jemu)["token_requests"] == 0  # the OAuth endpoint was not used
    assert hook.token_requests == 1


def test_jwt_token_is_reused_across_processes_through_the_store(jemu, store_engine) -> None:
    hooks = []
    tokens = set()
    for _ in range(4):
        clear_token_cache()  # a new task process
        hook = AdobeImsHook(token_store=store_engine)
        tokens.add(hook.get_token())
        hooks.append(hook)
    assert len(tokens) == 1
    assert stats(jemu)["jwt_exchanges"] == 1
    assert [h.token_requests for h in hooks] == [1, 0, 0, 0]
    with store_engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(select(ims_token))]
    assert len(rows) == 1
    token = tokens.pop()
    assert token not in rows[0]["ciphertext"]
    assert rows[0]["cache_key"] == token_cache_key(
        jemu.base_url, jemu.client.client_id, "ent_analytics_bulk_ingest_sdk", "jwt"
    )
    assert decrypt_token(rows[0]["ciphertext"], jemu.client.client_secret, rows[0]["cache_key"]).access_token == token


def test_jwt_force_refresh_mints_a_second_token(jemu, store_engine) -> None:
    old = AdobeImsHook(token_store=store_engine).get_token()
    new = AdobeImsHook(token_store=store_engine).get_token(force_refresh=True)
    assert new != old
    assert stats(jemu)["jwt_exchanges"] == 2
    clear_token_cache()
    assert AdobeImsHook(token_store=store_engine).get_token() == new
    assert stats(jemu)["jwt_exchanges"] == 2


def test_jwt_with_several_metascopes_including_the_integrations(jemu, keys, monkeypatch) -> None:
    configure_jwt(monkeypatch, jemu, keys, metascopes=["ent_campaign_sdk", "ent_analytics_bulk_ingest_sdk"])
    assert AdobeImsHook().get_token()


def _refusal(monkeypatch, jemu, keys, **conf: Any) -> str:
    configure_jwt(monkeypatch, jemu, keys, **conf)
    with pytest.raises(ImsAuthError) as info:
        AdobeImsHook().get_token()
    message = str(info.value)
    assert "'adobe_ims'" in message
    for secret in (jemu.client.client_secret, "wrong-client-secret", keys.body_line):
        assert secret not in message
    return message


def test_jwt_wrong_client_secret(jemu, keys, monkeypatch) -> None:
    message = _refusal(monkeypatch, jemu, keys, password="wrong-client-secret")
    assert "401 invalid_client" in message
    assert "check the client id (login) and client secret (password) of connection 'adobe_ims'" in message
    assert stats(jemu)["tokens_issued"] == 0


def test_jwt_signed_with_another_key(jemu, keys, other_keys, monkeypatch) -> None:
    message = _refusal(monkeypatch, jemu, keys, private_key=other_keys.private_pem)
    assert "400 invalid_signature" in message
    assert (
        "IMS could not verify the JWT signature: extra.private_key does not match the certificate "
        "(public key) of the integration"
    ) in message
    assert other_keys.body_line not in message


def test_jwt_with_an_unknown_org(jemu, keys, monkeypatch) -> None:
    message = _refusal(monkeypatch, jemu, keys, org_id="SOMEONE0123456789ELSE@AdobeOrg")
    assert "400 invalid_token" in message
    assert "the subject must be a valid organization or client" in message
    assert "extra.org_id" in message


def test_jwt_with_another_technical_account(jemu, keys, monkeypatch) -> None:
    message = _refusal(monkeypatch, jemu, keys, technical_account_id="OTHER0000@techacct.adobe.com")
    assert "400 invalid_token" in message
    assert "extra.technical_account_id" in message


def test_jwt_with_a_metascope_the_integration_lacks(jemu, keys, monkeypatch) -> None:
    message = _refusal(monkeypatch, jemu, keys, metascopes="ent_campaign_sdk")
    assert "400 invalid_scope" in message
    assert "check extra.metascopes (now ['ent_campaign_sdk'])" in message


def test_jwt_expired_on_arrival_points_at_ttl_and_clock(jemu, keys, monkeypatch) -> None:
    # This machine's clock runs an hour late: the JWT's exp is already past for IMS.
    real_time = time.time
    monkeypatch.setattr(ims_jwt_module, "time", types.SimpleNamespace(time=lambda: real_time() - 3600))
    message = _refusal(monkeypatch, jemu, keys)
    assert "400 invalid_token" in message and "expired" in message
    assert "extra.jwt_ttl_s (now 300 s)" in message and "clock" in message


def test_jwt_audience_of_another_ims_host(jemu, keys, monkeypatch) -> None:
    # The same emulator reached as "localhost": the aud claim names a host IMS does not call itself.
    message = _refusal(monkeypatch, jemu, keys, host=jemu.base_url.replace("127.0.0.1", "localhost"))
    assert "400 invalid_client" in message
    assert "check the client id (login) and the IMS base URL (host) of connection 'adobe_ims'" in message


def test_jwt_empty_org_is_refused_before_any_request(jemu, keys, monkeypatch) -> None:
    message = _refusal(monkeypatch, jemu, keys, org_id="")
    assert "the subject must be a valid organization or client" in message
    assert stats(jemu)["jwt_exchanges"] == 0
