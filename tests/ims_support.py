"""What the IMS JWT tests share, unit and integration: the service account's ids, RSA key pairs
(the integration's, and another one), the adobe_ims connection, the JWT extras and unusable keys."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

TECH_ACCT = "TECHACCT1234@techacct.adobe.com"


ORG = "C0FFEE0123456789ABCDEF01@AdobeOrg"


KEY_PHRASE = (
    "invalid key: extra.private_key of connection 'adobe_ims' is not a readable RSA private key in PEM "
    "(generate a 2048+ bit RSA key with OpenSSL)"
)


class KeyPair:
    def __init__(self, bits: int = 2048) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        self.private_pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        self.public_pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    @property
    def body_line(self) -> str:
        """A line from the middle of the private key: must never show up in a message."""
        return self.private_pem.splitlines()[5]


def set_conn(monkeypatch: pytest.MonkeyPatch, *, host: str, login: str = "cid-123", password: str = "client-secret-xyz",
             extra: dict[str, Any] | None = None, conn_id: str = "adobe_ims") -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "http", "host": host, "login": login, "password": password, "extra": extra or {},
    }))


def jwt_extra(keys: KeyPair, **overrides: Any) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "org_id": ORG, "auth_type": "jwt", "technical_account_id": TECH_ACCT, "private_key": keys.private_pem,
    }
    extra.update(overrides)
    return {k: v for k, v in extra.items() if v is not None}


def ec_pem() -> str:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def encrypted_pem(keys: KeyPair) -> str:
    return keys.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    ).decode()
