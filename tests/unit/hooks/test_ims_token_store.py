"""The IMS token store (``tf_ims_token``): tokens shared by tasks and runs, encrypted.

These pin the crypto (key derivation, encryption, the row key) and the expiry margin; the hook
against the emulator process and the store is in tests/integration/hooks/test_ims_token_store.py."""

from __future__ import annotations

import base64

import pytest

from include.triggerflow.adobe.ims_token import (
    EXPIRY_MARGIN_S,
    TOKEN_KEY_INFO,
    decrypt_token,
    derive_token_key,
    encrypt_token,
    expiry_margin,
    token_cache_key,
)
from include.triggerflow.hooks.ims import ImsToken

SECRET = "p8e-0123456789abcdefABCDEF-secret"


# -- pure: the row key, the key derivation, the ciphertext -------------------------------------------------
def test_cache_key_is_sha256_hex_of_url_client_scopes_and_mode() -> None:
    key = token_cache_key("https://ims-na1.adobelogin.com", "client-abc", "openid,AdobeID", "oauth")
    assert len(key) == 64 and int(key, 16) >= 0
    assert key == token_cache_key("https://ims-na1.adobelogin.com", "client-abc", "openid,AdobeID", "oauth")
    assert "client-abc" not in key
    others = {
        token_cache_key("https://ims-eu1.adobelogin.com", "client-abc", "openid,AdobeID", "oauth"),
        token_cache_key("https://ims-na1.adobelogin.com", "client-abd", "openid,AdobeID", "oauth"),
        token_cache_key("https://ims-na1.adobelogin.com", "client-abc", "openid", "oauth"),
        token_cache_key("https://ims-na1.adobelogin.com", "client-abc", "openid,AdobeID", "jwt"),
        # no ambiguity from where one field ends and the next begins
        token_cache_key("https://ims-na1.adobelogin.com", "client-ab", "copenid,AdobeID", "oauth"),
    }
    assert key not in others and len(others) == 5


def test_token_key_is_hkdf_sha256_of_the_secret_salted_with_the_cache_key() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    cache_key = "ab" * 32
    expected = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=cache_key.encode(), info=b"triggerflow-ims-token-v1"
    ).derive(SECRET.encode())
    assert TOKEN_KEY_INFO == b"triggerflow-ims-token-v1"
    assert derive_token_key(SECRET, cache_key) == base64.urlsafe_b64encode(expected)
    assert derive_token_key(SECRET, "cd" * 32) != derive_token_key(SECRET, cache_key)
    assert derive_token_key(SECRET + "x", cache_key) != derive_token_key(SECRET, cache_key)


def test_ciphertext_round_trips_only_with_the_same_secret_and_key() -> None:
    cache_key = token_cache_key("https://ims", "cid", "openid", "oauth")
    token = ImsToken(access_token="eyJ-the-access-token-0123456789", expires_at=2_000_000_000.0, minted_at=1_999_913_601.0)
    ciphertext = encrypt_token(token, SECRET, cache_key)
    assert "the-access-token" not in ciphertext and "eyJ" not in ciphertext
    assert "the-access-token" not in base64.urlsafe_b64decode(ciphertext).decode("latin-1")
    back = decrypt_token(ciphertext, SECRET, cache_key)
    assert back is not None
    assert (back.access_token, back.expires_at, back.minted_at) == (token.access_token, token.expires_at, token.minted_at)
    # Fernet output with the spec'd key: decryptable independently of the hook's helpers.
    from cryptography.fernet import Fernet

    assert b"the-access-token" in Fernet(derive_token_key(SECRET, cache_key)).decrypt(ciphertext.encode())
    # rotated secret, row copied under another key, tampering, garbage: not a token
    assert decrypt_token(ciphertext, "rotated-secret-value", cache_key) is None
    assert decrypt_token(ciphertext, SECRET, token_cache_key("https://ims", "cid", "openid", "jwt")) is None
    tampered = ciphertext[:-6] + ("AAAAAA" if not ciphertext.endswith("AAAAAA") else "BBBBBB")
    assert decrypt_token(tampered, SECRET, cache_key) is None
    assert decrypt_token("not a fernet token", SECRET, cache_key) is None
    assert decrypt_token("", SECRET, cache_key) is None


def test_the_same_token_encrypts_differently_each_time() -> None:
    cache_key = token_cache_key("https://ims", "cid", "openid", "oauth")
    token = ImsToken(access_token="tok-0123456789", expires_at=2_000_000_000.0, minted_at=1_999_990_000.0)
    assert encrypt_token(token, SECRET, cache_key) != encrypt_token(token, SECRET, cache_key)


# -- pure: the expiry margin -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("lifetime", "margin"),
    [(86_399, 300.0), (3_600, 300.0), (3_000, 300.0), (2_000, 200.0), (60, 6.0), (20, 2.0), (0, 0.0), (None, 300.0)],
)
def test_margin_is_the_smaller_of_300_s_and_10_percent(lifetime, margin) -> None:
    assert EXPIRY_MARGIN_S == 300
    assert expiry_margin(lifetime) == pytest.approx(margin)


def test_short_lived_token_is_reused_until_90_percent_of_its_life() -> None:
    minted = 1_000_000.0
    token = ImsToken(access_token="t", expires_at=minted + 60, minted_at=minted)
    assert token.usable(minted)
    assert token.usable(minted + 53.9)
    assert not token.usable(minted + 54.1)


def test_day_long_token_is_renewed_5_minutes_before_expiry() -> None:
    minted = 1_000_000.0
    token = ImsToken(access_token="t", expires_at=minted + 86_399, minted_at=minted)
    assert token.usable(minted + 86_399 - 301)
    assert not token.usable(minted + 86_399 - 299)


# -- with the emulator ------------------------------------------------------------------------------------
# -- short-lived tokens (a second emulator whose tokens last 20 s) ------------------------------------------
