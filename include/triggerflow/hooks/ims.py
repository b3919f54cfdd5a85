"""Adobe IMS: access tokens for the trigger sources (OAuth Server-to-Server or a JWT service account).

Connection ``adobe_ims`` (conn_type ``http``):

    host       IMS base URL, e.g. https://ims-na1.adobelogin.com (the emulator's URL locally)
    login      client id (also sent as ``x-api-key`` to Adobe I/O)
    password   client secret (both modes)
    extra      {"org_id": "...@AdobeOrg",        # required in both modes
                "auth_type": "oauth",             # "oauth" (default) or "jwt", see below
                "scopes": "openid,AdobeID,..."}   # oauth only: the credential's scopes

``auth_type`` chooses how a token is obtained (reference/adobe-triggers.md §6):

* ``"oauth"`` — OAuth Server-to-Server: ``POST <host>/ims/token/v3`` with the client credentials
  and ``extra.scopes``. The current way, and the only one for new credentials.
* ``"jwt"`` — the deprecated Service Account (JWT) credential, Campaign's ``authType="imsJwtToken"``
  era (Adobe stops accepting them in 2025/2026; migrate to OAuth when you can). The hook signs a
  JWT (RS256, pyjwt) and exchanges it at ``POST <host>/ims/exchange/jwt``. Extras for this mode:

      "technical_account_id": "...@techacct.adobe.com"    # required (Developer Console)
      "private_key": "-----BEGIN PRIVATE KEY-----\\n..."  # required: the PEM RSA private key
                     # (2048+ bits) matching the integration's certificate; literal "\\n"
                     # escapes and Campaign's base64-of-the-PEM form are accepted too
      "metascopes": ["ent_analytics_bulk_ingest_sdk"]     # list or "a,b"; this is the default
                                                          # (Campaign's own: ent_campaign_sdk)
      "jwt_ttl_s": 300                                    # the JWT's `exp`, seconds from now;
                                                          # Adobe: keep it a few minutes

  The JWT carries ``exp``, ``iss`` = org_id, ``sub`` = technical_account_id,
  ``aud`` = ``<host>/c/<client id>`` and ``<host>/s/<metascope>: true`` per metascope.
  ``private_key`` contains "private_key", so Airflow masks it like the password.

Token cache. IMS tokens last about a day and Adobe may throttle integrations that mint too many,
so a token is reused until shortly before it expires (the margin is the smaller of 5 minutes and
10% of the token's lifetime, so short-lived tokens are reused too):

* per process — every hook instance for the same client shares it;
* optionally across tasks and runs — ``AdobeImsHook(token_store=engine)`` also keeps it in the
  store's ``tf_ims_token`` table. The row is keyed by a sha256 of (IMS URL, client id, scopes,
  auth type) and the token is Fernet-encrypted under a key derived (HKDF-SHA256) from the client
  secret, which lives only in the connection: the store alone is useless to a reader. A row that
  no longer decrypts (the secret was rotated) is ignored and replaced. Two processes minting at
  once is harmless: both tokens are valid and the last writer's row stays. If the store cannot be
  read or written the hook warns and carries on with IMS.

Bounded answers (issue 10). Extras ``max_answer_bytes`` (default 65536: a token answer is about
1 KB) and ``request_deadline_s`` (default 60: one token request, send to last byte; ``timeout_s``,
default 30, bounds each socket read) cap what IMS can make a pull read or wait for. IMS's
``expires_in`` is clamped with a warning: above 24 h (``1e12``, ``Infinity``) to 24 h, which a
timestamp can hold; absent, not a number, NaN, zero or negative to 60 s (a short positive value
is kept as IMS said).

``get_token(force_refresh=True)`` (after a source answered 401) mints a new token and replaces both
cache entries; ``invalidate()`` drops them. Every token minted or loaded is registered with
Airflow's log masker; tokens, secrets, JWTs and keys are never logged nor shown by ``repr``.

Why not HttpHook: it sends unknown extras as HTTP headers and the login/password as Basic auth on
every request (reference/airflow-3.3-notes.md finding 8), which would leak the client secret to
the journal. This hook posts the credentials only to the token endpoint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import monotonic
from typing import TYPE_CHECKING, Any

import requests
import urllib3
from airflow.sdk import BaseHook

from include.triggerflow.sources.bounded import BoundedReadError, read_body

if TYPE_CHECKING:
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from sqlalchemy import Engine

TOKEN_PATH = "/ims/token/v3"
JWT_EXCHANGE_PATH = "/ims/exchange/jwt"

AUTH_OAUTH = "oauth"
AUTH_JWT = "jwt"
AUTH_TYPES = (AUTH_OAUTH, AUTH_JWT)

# Renew a token this long before IMS says it expires, so it never dies mid-pull: the smaller of
# EXPIRY_MARGIN_S and EXPIRY_MARGIN_FRACTION of its lifetime (a 60 s token is reused for 54 s).
EXPIRY_MARGIN_S = 300
EXPIRY_MARGIN_FRACTION = 0.10

# Sane bounds for IMS's expires_in (seconds): IMS tokens last about 24 h.
MIN_TOKEN_LIFETIME_S = 60.0
MAX_TOKEN_LIFETIME_S = 86_400.0
DEFAULT_MAX_ANSWER_BYTES = 64 * 1024
DEFAULT_REQUEST_DEADLINE_S = 60.0

DEFAULT_METASCOPES = ("ent_analytics_bulk_ingest_sdk",)
DEFAULT_JWT_TTL_S = 300
MAX_JWT_TTL_S = 86_400
MIN_RSA_KEY_BITS = 2048
TECHNICAL_ACCOUNT_SUFFIX = "@techacct.adobe.com"

# HKDF "info" of the key that encrypts stored tokens; bump it to orphan every stored row.
TOKEN_KEY_INFO = b"triggerflow-ims-token-v1"
_PAYLOAD_VERSION = 1


class ImsAuthError(RuntimeError):
    """IMS refused the credentials, or the connection is unusable; the message says what to fix."""


def expiry_margin(lifetime_s: float | None) -> float:
    """How long before expiry a token stops being reused (unknown lifetime: the full margin)."""
    if lifetime_s is None:
        return float(EXPIRY_MARGIN_S)
    return max(0.0, min(float(EXPIRY_MARGIN_S), EXPIRY_MARGIN_FRACTION * lifetime_s))


@dataclass(repr=False)
class ImsToken:
    access_token: str
    expires_at: float  # time.time() seconds
    minted_at: float | None = None  # time.time() seconds, when known (sets the margin)

    @property
    def lifetime_s(self) -> float | None:
        return None if self.minted_at is None else self.expires_at - self.minted_at

    def usable(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return now < self.expires_at - expiry_margin(self.lifetime_s)

    def __repr__(self) -> str:  # never show the token itself in logs or tracebacks
        return f"ImsToken(expires_at={self.expires_at:.0f})"


# -- the token store's crypto (pure functions) --------------------------------------------------------
def token_cache_key(base_url: str, client_id: str, scopes: str, auth_type: str) -> str:
    """sha256 hex of (IMS base URL, client id, scopes, auth type): the row key, never the id in clear."""
    material = json.dumps([base_url, client_id, scopes, auth_type], separators=(",", ":"))
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def derive_token_key(client_secret: str, cache_key: str) -> bytes:
    """The Fernet key for one cache row: HKDF-SHA256(client secret, salt=cache_key, info=v1)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    raw = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=cache_key.encode("ascii"), info=TOKEN_KEY_INFO
    ).derive(client_secret.encode("utf-8"))
    return base64.urlsafe_b64encode(raw)


def _fernet(client_secret: str, cache_key: str) -> Fernet:
    from cryptography.fernet import Fernet

    return Fernet(derive_token_key(client_secret, cache_key))


def encrypt_token(token: ImsToken, client_secret: str, cache_key: str) -> str:
    """Ciphertext (text) of the token and its validity, authenticated by Fernet."""
    payload = json.dumps({
        "v": _PAYLOAD_VERSION,
        "access_token": token.access_token,
        "expires_at": token.expires_at,
        "minted_at": token.minted_at,
    })
    return _fernet(client_secret, cache_key).encrypt(payload.encode("utf-8")).decode("ascii")


def decrypt_token(ciphertext: str, client_secret: str, cache_key: str) -> ImsToken | None:
    """The stored token, or None when it does not decrypt with this secret (rotated, tampered)."""
    from cryptography.fernet import InvalidToken

    try:
        plain = _fernet(client_secret, cache_key).decrypt(ciphertext.encode("ascii"))
        payload = json.loads(plain)
        if payload.get("v") != _PAYLOAD_VERSION or not payload.get("access_token"):
            return None
        minted_at = payload.get("minted_at")
        return ImsToken(
            access_token=str(payload["access_token"]),
            expires_at=float(payload["expires_at"]),
            minted_at=None if minted_at is None else float(minted_at),
        )
    except (InvalidToken, UnicodeError, ValueError, TypeError, KeyError, AttributeError):
        return None


# -- JWT service account (pure functions) -------------------------------------------------------------
def parse_metascopes(value: Any) -> tuple[str, ...]:
    """extra.metascopes as names: a list or "a,b"; a full ``<host>/s/<name>`` keeps its name."""
    if value is None:
        return DEFAULT_METASCOPES
    if isinstance(value, str):
        items: Iterable[Any] = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise ValueError("must be a list of metascope names or a comma-separated string")
    names = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError("must be a list of metascope names or a comma-separated string")
        name = item.strip()
        if "/s/" in name:
            name = name.rsplit("/s/", 1)[1]
        if name and name not in names:
            names.append(name)
    return tuple(names)


def build_jwt_claims(
    *,
    base_url: str,
    client_id: str,
    org_id: str,
    technical_account_id: str,
    metascopes: Iterable[str],
    ttl_s: int = DEFAULT_JWT_TTL_S,
    now: float | None = None,
) -> dict[str, Any]:
    """The claims IMS expects in a service-account JWT (DC-JWT)."""
    now = time.time() if now is None else now
    claims: dict[str, Any] = {
        "exp": int(now) + int(ttl_s),
        "iss": org_id,
        "sub": technical_account_id,
        "aud": f"{base_url}/c/{client_id}",
    }
    for name in metascopes:
        claims[f"{base_url}/s/{name}"] = True
    return claims


def sign_jwt(claims: dict[str, Any], private_key: RSAPrivateKey) -> str:
    import jwt

    return jwt.encode(claims, private_key, algorithm="RS256")


class _KeyProblem(ValueError):
    """Why extra.private_key is unusable (never contains the key)."""


def load_rsa_private_key(text: Any) -> RSAPrivateKey:
    """Parse extra.private_key; raises _KeyProblem with a reason a user can act on."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if text is None or (isinstance(text, str) and not text.strip()):
        raise _KeyProblem("it is missing")
    if not isinstance(text, str):
        raise _KeyProblem("it must be the PEM text, not " + type(text).__name__)
    pem = text.strip()
    if "-----BEGIN" not in pem:
        # Campaign's -setimsjwtauth takes `base64 ./private.key`: accept that form too.
        try:
            decoded = base64.b64decode("".join(pem.split()), validate=True).decode("ascii")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise _KeyProblem("it is not PEM (no -----BEGIN line)") from None
        if "-----BEGIN" not in decoded:
            raise _KeyProblem("it is not PEM (no -----BEGIN line)")
        pem = decoded.strip()
    if "\n" not in pem and "\\n" in pem:  # pasted into a one-line field with escaped newlines
        pem = pem.replace("\\n", "\n")
    if "BEGIN CERTIFICATE" in pem or "BEGIN PUBLIC KEY" in pem or "BEGIN RSA PUBLIC KEY" in pem:
        raise _KeyProblem("it is a certificate or public key; put the private key here")
    try:
        key = serialization.load_pem_private_key(pem.encode("ascii", "replace"), password=None)
    except TypeError:
        raise _KeyProblem("it is encrypted with a passphrase; store it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise _KeyProblem("it could not be parsed") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise _KeyProblem(f"it is a {type(key).__name__.lstrip('_')}, not an RSA key")
    if key.key_size < MIN_RSA_KEY_BITS:
        raise _KeyProblem(f"it is only {key.key_size} bits")
    return key


# -- process-wide cache ---------------------------------------------------------------------------------
# cache_key -> (fingerprint of the secret-derived key, token): every hook instance for the same
# client shares one token, but a hook with another secret for the same client does not get it.
_token_cache: dict[str, tuple[str, ImsToken]] = {}
_cache_lock = threading.Lock()
_key_locks: dict[str, threading.Lock] = {}


def _lock_for(cache_key: str) -> threading.Lock:
    with _cache_lock:
        return _key_locks.setdefault(cache_key, threading.Lock())


def clear_token_cache() -> None:
    """Forget every token of this process (tests use it to simulate a new task process)."""
    with _cache_lock:
        _token_cache.clear()


@dataclass(repr=False)
class _Settings:
    """The validated connection; holds secrets, so it has no useful repr."""

    base_url: str
    client_id: str
    client_secret: str
    org_id: str
    auth_type: str
    scopes: str  # oauth: extra.scopes as given; jwt: the metascopes joined
    cache_key: str
    fingerprint: str
    metascopes: tuple[str, ...] = ()
    technical_account_id: str = ""
    private_key: Any = field(default=None)
    jwt_ttl_s: int = DEFAULT_JWT_TTL_S

    def __repr__(self) -> str:
        return f"_Settings(auth_type={self.auth_type!r})"


class AdobeImsHook(BaseHook):
    """Mints and caches IMS access tokens (OAuth client credentials or a JWT service account)."""

    conn_name_attr = "adobe_ims_conn_id"
    default_conn_name = "adobe_ims"
    conn_type = "http"
    hook_name = "Adobe IMS"

    def __init__(
        self,
        adobe_ims_conn_id: str = default_conn_name,
        *,
        token_store: Engine | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__()
        self.adobe_ims_conn_id = adobe_ims_conn_id
        self.token_store = token_store
        self.timeout = timeout
        self._conn: Any = None
        self._settings_cache: _Settings | None = None
        # How many times this hook instance called IMS (token or JWT exchange endpoint).
        self.token_requests = 0

    def __repr__(self) -> str:
        store = self.token_store.dialect.name if self.token_store is not None else None
        return f"AdobeImsHook(adobe_ims_conn_id={self.adobe_ims_conn_id!r}, token_store={store!r})"

    # -- connection fields ----------------------------------------------------------------------------
    @property
    def conn(self) -> Any:
        if self._conn is None:
            self._conn = self.get_connection(self.adobe_ims_conn_id)
        return self._conn

    def _problem(self, what: str) -> ImsAuthError:
        return ImsAuthError(f"connection {self.adobe_ims_conn_id!r}: {what}")

    @property
    def base_url(self) -> str:
        host = (self.conn.host or "").strip().rstrip("/")
        if not host:
            raise ImsAuthError(f"connection {self.adobe_ims_conn_id!r} has no host (the IMS base URL)")
        if "://" not in host:
            host = f"{self.conn.schema or 'https'}://{host}"
            if self.conn.port:
                host = f"{host}:{self.conn.port}"
        return host

    @property
    def client_id(self) -> str:
        if not self.conn.login:
            raise ImsAuthError(f"connection {self.adobe_ims_conn_id!r} has no login (the client id)")
        return self.conn.login

    @property
    def client_secret(self) -> str:
        if not self.conn.password:
            raise ImsAuthError(f"connection {self.adobe_ims_conn_id!r} has no password (the client secret)")
        return self.conn.password

    @property
    def org_id(self) -> str:
        org = str(self.extra.get("org_id") or "").strip()
        if not org:
            # The message Campaign administrators know from pipelined (CC-ts).
            raise self._problem("extra.org_id is empty — the subject must be a valid organization or client")
        return org

    @property
    def extra(self) -> dict[str, Any]:
        return dict(self.conn.extra_dejson or {})

    @property
    def auth_type(self) -> str:
        raw = self.extra.get("auth_type")
        value = str(raw if raw is not None else AUTH_OAUTH).strip().lower() or AUTH_OAUTH
        if value not in AUTH_TYPES:
            raise self._problem(f"extra.auth_type {raw!r} is not one of {AUTH_TYPES}")
        return value

    @property
    def metascopes(self) -> tuple[str, ...]:
        try:
            names = parse_metascopes(self.extra.get("metascopes"))
        except ValueError as exc:
            raise self._problem(f"extra.metascopes {exc}") from None
        if not names:
            raise self._problem(
                "extra.metascopes is empty; leave it out for the default "
                f"{list(DEFAULT_METASCOPES)} or list the integration's metascopes"
            )
        return names

    def _scope_text(self, auth_type: str) -> str:
        if auth_type == AUTH_JWT:
            return ",".join(sorted(self.metascopes))
        return str(self.extra.get("scopes", ""))

    @property
    def cache_key(self) -> str:
        auth_type = self.auth_type
        return token_cache_key(self.base_url, self.client_id, self._scope_text(auth_type), auth_type)

    def _settings(self) -> _Settings:
        """Everything needed to mint, validated before any request (both modes)."""
        if self._settings_cache is not None:
            return self._settings_cache
        base_url, client_id, client_secret = self.base_url, self.client_id, self.client_secret
        org_id, auth_type = self.org_id, self.auth_type
        scopes = self._scope_text(auth_type)
        cache_key = token_cache_key(base_url, client_id, scopes, auth_type)
        fingerprint = hashlib.sha256(derive_token_key(client_secret, cache_key)).hexdigest()
        settings = _Settings(
            base_url=base_url, client_id=client_id, client_secret=client_secret, org_id=org_id,
            auth_type=auth_type, scopes=scopes, cache_key=cache_key, fingerprint=fingerprint,
        )
        if auth_type == AUTH_JWT:
            extra = self.extra
            settings.metascopes = self.metascopes
            settings.technical_account_id = self._technical_account_id(extra)
            settings.jwt_ttl_s = self._jwt_ttl_s(extra)
            settings.private_key = self._private_key(extra)
        self._settings_cache = settings
        return settings

    def _technical_account_id(self, extra: dict[str, Any]) -> str:
        value = str(extra.get("technical_account_id") or "").strip()
        if not value:
            raise self._problem(
                "extra.technical_account_id is required for auth_type 'jwt' (the integration's "
                f"Technical account ID, ...{TECHNICAL_ACCOUNT_SUFFIX}, from the Developer Console)"
            )
        if not value.lower().endswith(TECHNICAL_ACCOUNT_SUFFIX):
            raise self._problem(
                f"extra.technical_account_id {value!r} is not a technical account ID "
                f"(...{TECHNICAL_ACCOUNT_SUFFIX}); the organization ID goes in extra.org_id"
            )
        return value

    def _jwt_ttl_s(self, extra: dict[str, Any]) -> int:
        raw = extra.get("jwt_ttl_s", DEFAULT_JWT_TTL_S)
        try:
            ttl = int(raw)
            if isinstance(raw, bool) or ttl != float(raw):
                raise ValueError
        except (TypeError, ValueError):
            ttl = 0
        if not 1 <= ttl <= MAX_JWT_TTL_S:
            raise self._problem(
                f"extra.jwt_ttl_s {raw!r} must be a whole number of seconds between 1 and {MAX_JWT_TTL_S} "
                f"(Adobe: keep the JWT's exp a few minutes; default {DEFAULT_JWT_TTL_S})"
            )
        return ttl

    def _private_key(self, extra: dict[str, Any]) -> RSAPrivateKey:
        raw = extra.get("private_key")
        if isinstance(raw, str) and raw.strip():
            _mask(raw.strip())
        try:
            return load_rsa_private_key(raw)
        except _KeyProblem as problem:
            raise ImsAuthError(
                f"invalid key: extra.private_key of connection {self.adobe_ims_conn_id!r} is not a readable "
                f"RSA private key in PEM (generate a {MIN_RSA_KEY_BITS}+ bit RSA key with OpenSSL): {problem}"
            ) from None

    # -- tokens ------------------------------------------------------------------------------------
    def get_conn(self) -> str:
        return self.get_token()

    def get_token(self, *, force_refresh: bool = False) -> str:
        """A usable access token: process cache, then the token store, then IMS."""
        return self.fetch_token(force_refresh=force_refresh).access_token

    def fetch_token(self, *, force_refresh: bool = False) -> ImsToken:
        """Like get_token, with the expiry (``force_refresh``: mint and replace both cache entries)."""
        settings = self._settings()
        with _lock_for(settings.cache_key):
            if not force_refresh:
                with _cache_lock:
                    cached = _token_cache.get(settings.cache_key)
                if cached and cached[0] == settings.fingerprint and cached[1].usable():
                    return cached[1]
                stored = self._store_load(settings)
                if stored is not None and stored.usable():
                    with _cache_lock:
                        _token_cache[settings.cache_key] = (settings.fingerprint, stored)
                    self.log.info(
                        "IMS token for connection %r reused from the token store (%.0f s left)",
                        self.adobe_ims_conn_id, stored.expires_at - time.time(),
                    )
                    return stored
            token = self._request_token(settings)
            with _cache_lock:
                _token_cache[settings.cache_key] = (settings.fingerprint, token)
            self._store_save(settings, token)
            return token

    def invalidate(self) -> None:
        """Forget this client's token in the process and in the token store."""
        key = self.cache_key
        with _lock_for(key):
            with _cache_lock:
                _token_cache.pop(key, None)
            if self.token_store is not None:
                from sqlalchemy import delete
                from sqlalchemy.exc import SQLAlchemyError

                from include.triggerflow.store.schema import ims_token

                try:
                    with self.token_store.begin() as conn:
                        conn.execute(delete(ims_token).where(ims_token.c.cache_key == key))
                except SQLAlchemyError as exc:
                    self._store_warning("delete the stored token", exc)

    # -- the token store ---------------------------------------------------------------------------
    def _store_warning(self, action: str, exc: Exception) -> None:
        first_line = str(exc).splitlines()[0][:200] if str(exc) else ""
        self.log.warning(
            "IMS token store: could not %s for connection %r (%s: %s); carrying on without it",
            action, self.adobe_ims_conn_id, exc.__class__.__name__, first_line,
        )

    def _store_load(self, settings: _Settings) -> ImsToken | None:
        if self.token_store is None:
            return None
        from sqlalchemy import select
        from sqlalchemy.exc import SQLAlchemyError

        from include.triggerflow.store.schema import ims_token

        try:
            with self.token_store.connect() as conn:
                ciphertext = conn.execute(
                    select(ims_token.c.ciphertext).where(ims_token.c.cache_key == settings.cache_key)
                ).scalar_one_or_none()
        except SQLAlchemyError as exc:
            self._store_warning("read the stored token", exc)
            return None
        if ciphertext is None:
            return None
        token = decrypt_token(ciphertext, settings.client_secret, settings.cache_key)
        if token is None:
            self.log.info(
                "IMS token store: the stored token of connection %r does not decrypt with its client secret "
                "(rotated?); minting a new one",
                self.adobe_ims_conn_id,
            )
            return None
        _mask(token.access_token)
        return token

    def _store_save(self, settings: _Settings, token: ImsToken) -> None:
        if self.token_store is None or token.lifetime_s is None or token.lifetime_s <= 0:
            return
        from sqlalchemy.exc import SQLAlchemyError

        values = {
            "cache_key": settings.cache_key,
            "ciphertext": encrypt_token(token, settings.client_secret, settings.cache_key),
            "expires_at": datetime.fromtimestamp(token.expires_at, UTC),
            "minted_at": datetime.fromtimestamp(token.minted_at or time.time(), UTC),
        }
        try:
            with self.token_store.begin() as conn:
                _upsert_token_row(conn, values)
        except SQLAlchemyError as exc:
            self._store_warning("store the new token", exc)

    # -- IMS ---------------------------------------------------------------------------------------
    def _request_token(self, settings: _Settings) -> ImsToken:
        if settings.auth_type == AUTH_JWT:
            claims = build_jwt_claims(
                base_url=settings.base_url,
                client_id=settings.client_id,
                org_id=settings.org_id,
                technical_account_id=settings.technical_account_id,
                metascopes=settings.metascopes,
                ttl_s=settings.jwt_ttl_s,
            )
            assertion = sign_jwt(claims, settings.private_key)
            _mask(assertion)
            url = f"{settings.base_url}{JWT_EXCHANGE_PATH}"
            what = "JWT exchange"
            form = {"client_id": settings.client_id, "client_secret": settings.client_secret, "jwt_token": assertion}
            expires_in_unit = 1000.0  # /ims/exchange/jwt answers expires_in in milliseconds
        else:
            url = f"{settings.base_url}{TOKEN_PATH}"
            what = "token request"
            form = {
                "grant_type": "client_credentials",
                "client_id": settings.client_id,
                "client_secret": settings.client_secret,
                "scope": settings.scopes,
            }
            expires_in_unit = 1.0  # /ims/token/v3 answers seconds
        self.token_requests += 1
        minted_at = time.time()
        max_bytes = self._positive_extra("max_answer_bytes", DEFAULT_MAX_ANSWER_BYTES, integer=True)
        deadline_s = self._positive_extra("request_deadline_s", DEFAULT_REQUEST_DEADLINE_S)
        timeout_s = self._positive_extra("timeout_s", self.timeout)
        started = monotonic()
        try:
            resp = requests.post(url, data=form, timeout=timeout_s, stream=True)
            data = read_body(resp, what=f"the IMS {what} answer", max_bytes=max_bytes, deadline_s=deadline_s, started=started)
        except BoundedReadError as exc:
            raise ImsAuthError(
                f"IMS {what} to {url}: {exc} (extra.max_answer_bytes / extra.request_deadline_s of connection "
                f"{self.adobe_ims_conn_id!r} set these bounds)"
            ) from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise ImsAuthError(
                f"IMS {what} to {url} failed: {exc.__class__.__name__}: {exc} (is the host of connection "
                f"{self.adobe_ims_conn_id!r} right, and IMS reachable from this worker?)"
            ) from None
        if resp.status_code != 200:
            raise self._refusal(settings, what, resp.status_code, data)
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            raise ImsAuthError(f"IMS {what} to {url} answered 200 with a body that is not a JSON object")
        access_token = body.get("access_token")
        if not access_token or not isinstance(access_token, str):
            raise ImsAuthError(f"IMS {what} to {url} answered 200 without an access_token")
        _mask(access_token)
        lifetime, problem = token_lifetime(body.get("expires_in"), expires_in_unit)
        if problem:
            self.log.warning(
                "IMS %s for connection %r: %s; using %.0f s", what, self.adobe_ims_conn_id, problem, lifetime
            )
        self.log.info(
            "IMS token minted for connection %r (%s, valid %.0f s)", self.adobe_ims_conn_id, settings.auth_type, lifetime
        )
        return ImsToken(access_token=access_token, expires_at=minted_at + lifetime, minted_at=minted_at)

    def _positive_extra(self, name: str, default: float, *, integer: bool = False) -> float:
        raw = self.extra.get(name, default)
        try:
            value = float(raw)
            ok = not isinstance(raw, bool) and value > 0 and value == value and value != float("inf")
            if integer:
                ok = ok and value == int(value)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            kind = "a positive whole number" if integer else "a positive number"
            raise self._problem(f"extra.{name} must be {kind}, got {raw!r}")
        return int(value) if integer else value

    def _refusal(self, settings: _Settings, what: str, status: int, body: bytes) -> ImsAuthError:
        conn = self.adobe_ims_conn_id
        error, description = _error_of(body)
        jwt_mode = settings.auth_type == AUTH_JWT
        head = f"connection {conn!r}: IMS refused the {what} ({status} {error}"
        head += f": {description})" if description else ")"
        credentials = f"check the client id (login) and client secret (password) of connection {conn!r}"
        if error == "invalid_client":
            if jwt_mode and status == 400:
                hint = (
                    f"the JWT audience {settings.base_url}/c/{settings.client_id} was refused: check the client "
                    f"id (login) and the IMS base URL (host) of connection {conn!r}"
                )
            else:
                hint = credentials
        elif error == "invalid_signature":
            hint = (
                "IMS could not verify the JWT signature: extra.private_key does not match the certificate "
                "(public key) of the integration — upload the certificate of this key in the Developer Console, "
                "or put the key of the uploaded certificate in extra.private_key"
            )
        elif error == "invalid_token" and jwt_mode:
            text = description.lower()
            if "organization" in text or "subject" in text or "technical" in text:
                hint = (
                    f"check extra.org_id ({settings.org_id}) and extra.technical_account_id "
                    "— the subject must be a valid organization or client"
                )
            else:
                hint = (
                    f"the JWT was missing or expired on arrival: check extra.jwt_ttl_s (now {settings.jwt_ttl_s} s) "
                    "and this machine's clock (clock skew makes a fresh JWT look expired)"
                )
        elif error == "invalid_scope":
            if jwt_mode:
                hint = (
                    f"check extra.metascopes (now {list(settings.metascopes)}): each must be a metascope "
                    "of the integration, e.g. ent_analytics_bulk_ingest_sdk"
                )
            else:
                hint = f"check extra.scopes (now {settings.scopes!r}) against the credential's scopes"
        elif status in (400, 401, 403):
            hint = f"check the credential settings of connection {conn!r}"
            if status == 403 and not jwt_mode:
                hint += " (a 403 from IMS usually means the credential type is retired: use OAuth Server-to-Server)"
        else:
            hint = "IMS may be unavailable; retry later"
        return ImsAuthError(f"{head}: {hint}")


def _upsert_token_row(conn: Any, values: dict[str, Any]) -> None:
    """INSERT ... ON CONFLICT (cache_key) DO UPDATE: concurrent writers leave the last one's row."""
    from include.triggerflow.store.schema import ims_token

    dialect = conn.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only the two supported dialects exist
        from sqlalchemy import delete
        from sqlalchemy import insert as plain_insert

        conn.execute(delete(ims_token).where(ims_token.c.cache_key == values["cache_key"]))
        conn.execute(plain_insert(ims_token).values(**values))
        return
    stmt = insert(ims_token).values(**values)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[ims_token.c.cache_key],
            set_={name: stmt.excluded[name] for name in ("ciphertext", "expires_at", "minted_at")},
        )
    )


def token_lifetime(value: Any, unit_s_per_value: float) -> tuple[float, str | None]:
    """IMS's ``expires_in`` as seconds, at most MAX_TOKEN_LIFETIME_S, and what was wrong with it
    (None when it was usable as is). A value that is absent, not a number, NaN or not positive
    counts as MIN_TOKEN_LIFETIME_S: reused briefly (a source's 401 forces a new one) rather than
    minting a token for every request. A short positive lifetime is kept: IMS may mint short
    tokens, and the reuse margin scales with the lifetime. ``unit_s_per_value`` is 1000 for the
    JWT exchange (milliseconds). Never raises: an answer must not crash the pull."""
    shown = repr(value)[:40]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        number = None
    else:
        try:
            number = float(value)
        except ValueError:
            number = None
        except OverflowError:  # an int beyond any float: as good as infinite
            number = float("inf") if value > 0 else float("-inf")
    if number is None or number != number:  # absent, not a number, NaN
        return MIN_TOKEN_LIFETIME_S, f"expires_in {shown} is not a number of seconds"
    seconds = number / unit_s_per_value
    if seconds <= 0:
        return MIN_TOKEN_LIFETIME_S, f"expires_in {shown} is not positive"
    if seconds > MAX_TOKEN_LIFETIME_S:
        return MAX_TOKEN_LIFETIME_S, f"expires_in {shown} is beyond {MAX_TOKEN_LIFETIME_S:.0f} s"
    return seconds, None


def _error_of(data: bytes) -> tuple[str, str]:
    """(error, error_description) of an IMS error answer; never raises."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return "unknown_error", ""
    if not isinstance(body, dict):
        return "unknown_error", ""
    error = str(body.get("error") or body.get("error_code") or "unknown_error")[:100]
    description = str(body.get("error_description") or body.get("message") or "")[:200]
    return error, description


def _mask(secret: str) -> None:
    """Register a runtime secret with Airflow's log masker (no-op outside Airflow)."""
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - Airflow is always installed in this project
        return
    mask_secret(secret)
