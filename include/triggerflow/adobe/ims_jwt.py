"""The legacy Service Account (JWT) credential: claims, signature and the private key check.

Campaign's ``authType="imsJwtToken"`` era; Adobe stops accepting these credentials in 2025/2026,
so new integrations use OAuth Server-to-Server. Pure functions: the hook (hooks/ims.py) signs a
JWT with them and exchanges it at ``POST <host>/ims/exchange/jwt``.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

DEFAULT_METASCOPES = ("ent_analytics_bulk_ingest_sdk",)
DEFAULT_JWT_TTL_S = 300
MAX_JWT_TTL_S = 86_400
MIN_RSA_KEY_BITS = 2048
TECHNICAL_ACCOUNT_SUFFIX = "@techacct.adobe.com"

#: the claims of a service-account JWT: exp (int), iss/sub/aud (str) and one ``True`` per metascope
JwtClaims = dict[str, int | str | bool]


def parse_metascopes(value: object) -> tuple[str, ...]:
    """extra.metascopes as names: a list or "a,b"; a full ``<host>/s/<name>`` keeps its name."""
    if value is None:
        return DEFAULT_METASCOPES
    if isinstance(value, str):
        items: Iterable[object] = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise ValueError("must be a list of metascope names or a comma-separated string")
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError("must be a list of metascope names or a comma-separated string")
        name = item.strip()
        if "/s/" in name:
            name = name.rsplit("/s/", 1)[1]
        if name and name not in names:
            names.append(name)
    return tuple(names)


def check_technical_account_id(raw: object) -> str:
    """extra.technical_account_id, or ValueError saying where to find the right one."""
    value = str(raw or "").strip()
    if not value:
        raise ValueError(
            "extra.technical_account_id is required for auth_type 'jwt' (the integration's "
            f"Technical account ID, ...{TECHNICAL_ACCOUNT_SUFFIX}, from the Developer Console)"
        )
    if not value.lower().endswith(TECHNICAL_ACCOUNT_SUFFIX):
        raise ValueError(
            f"extra.technical_account_id {value!r} is not a technical account ID "
            f"(...{TECHNICAL_ACCOUNT_SUFFIX}); the organization ID goes in extra.org_id"
        )
    return value


def check_jwt_ttl_s(raw: object) -> int:
    """extra.jwt_ttl_s as whole seconds in 1..MAX_JWT_TTL_S, or ValueError."""
    try:
        ttl = int(raw)  # type: ignore[call-overload]
        if isinstance(raw, bool) or ttl != float(raw):  # type: ignore[arg-type]
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        ttl = 0
    if not 1 <= ttl <= MAX_JWT_TTL_S:
        raise ValueError(
            f"extra.jwt_ttl_s {raw!r} must be a whole number of seconds between 1 and {MAX_JWT_TTL_S} "
            f"(Adobe: keep the JWT's exp a few minutes; default {DEFAULT_JWT_TTL_S})"
        )
    return ttl


def build_jwt_claims(
    *,
    base_url: str,
    client_id: str,
    org_id: str,
    technical_account_id: str,
    metascopes: Iterable[str],
    ttl_s: int = DEFAULT_JWT_TTL_S,
    now: float | None = None,
) -> JwtClaims:
    """The claims IMS expects in a service-account JWT (DC-JWT)."""
    now = time.time() if now is None else now
    claims: JwtClaims = {
        "exp": int(now) + int(ttl_s),
        "iss": org_id,
        "sub": technical_account_id,
        "aud": f"{base_url}/c/{client_id}",
    }
    for name in metascopes:
        claims[f"{base_url}/s/{name}"] = True
    return claims


def sign_jwt(claims: JwtClaims, private_key: RSAPrivateKey) -> str:
    import jwt

    return jwt.encode(claims, private_key, algorithm="RS256")


class KeyProblem(ValueError):
    """Why extra.private_key is unusable (never contains the key)."""


def load_rsa_private_key(text: object) -> RSAPrivateKey:
    """Parse extra.private_key; raises KeyProblem with a reason a user can act on."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if text is None or (isinstance(text, str) and not text.strip()):
        raise KeyProblem("it is missing")
    if not isinstance(text, str):
        raise KeyProblem("it must be the PEM text, not " + type(text).__name__)
    pem = text.strip()
    if "-----BEGIN" not in pem:
        # Campaign's -setimsjwtauth takes `base64 ./private.key`: accept that form too.
        try:
            decoded = base64.b64decode("".join(pem.split()), validate=True).decode("ascii")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise KeyProblem("it is not PEM (no -----BEGIN line)") from None
        if "-----BEGIN" not in decoded:
            raise KeyProblem("it is not PEM (no -----BEGIN line)")
        pem = decoded.strip()
    if "\n" not in pem and "\\n" in pem:  # pasted into a one-line field with escaped newlines
        pem = pem.replace("\\n", "\n")
    if "BEGIN CERTIFICATE" in pem or "BEGIN PUBLIC KEY" in pem or "BEGIN RSA PUBLIC KEY" in pem:
        raise KeyProblem("it is a certificate or public key; put the private key here")
    try:
        key = serialization.load_pem_private_key(pem.encode("ascii", "replace"), password=None)
    except TypeError:
        raise KeyProblem("it is encrypted with a passphrase; store it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyProblem("it could not be parsed") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyProblem(f"it is a {type(key).__name__.lstrip('_')}, not an RSA key")
    if key.key_size < MIN_RSA_KEY_BITS:
        raise KeyProblem(f"it is only {key.key_size} bits")
    return key
