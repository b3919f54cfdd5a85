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

Token cache (include/triggerflow/adobe/ims_token.py): a token is reused until shortly before it
expires, per process and, with ``AdobeImsHook(token_store=engine)``, across tasks and runs through
the store's ``tf_ims_token`` table, Fernet-encrypted under a key derived from the client secret.
If the store cannot be read or written the hook warns and carries on with IMS.

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

import json
import time
from dataclasses import dataclass, field
from time import monotonic
from typing import TYPE_CHECKING, Any

import requests
import urllib3
from airflow.sdk import BaseHook

from include.triggerflow.adobe.extras import AuthType, ExtrasError, ImsExtras
from include.triggerflow.adobe.ims_jwt import (
    DEFAULT_JWT_TTL_S,
    DEFAULT_METASCOPES,
    MIN_RSA_KEY_BITS,
    KeyProblem,
    build_jwt_claims,
    check_jwt_ttl_s,
    check_technical_account_id,
    load_rsa_private_key,
    parse_metascopes,
    sign_jwt,
)
from include.triggerflow.adobe.ims_refusal import CredentialsRefused, refusal_message
from include.triggerflow.adobe.ims_token import (
    PROCESS_CACHE,
    ImsToken,
    TokenStore,
    clear_token_cache,
    secret_fingerprint,
    token_cache_key,
    token_lifetime,
)
from include.triggerflow.secrets import mask
from include.triggerflow.sources.bounded import BoundedReadError, read_body

if TYPE_CHECKING:
    from airflow.sdk import Connection
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from sqlalchemy import Engine

# ImsToken and clear_token_cache are re-exported: stages, fixtures and e2e helpers import them here.
__all__ = ["AdobeImsHook", "ImsAuthError", "ImsToken", "clear_token_cache"]

TOKEN_PATH = "/ims/token/v3"
JWT_EXCHANGE_PATH = "/ims/exchange/jwt"


DEFAULT_MAX_ANSWER_BYTES = 64 * 1024
DEFAULT_REQUEST_DEADLINE_S = 60.0


class ImsAuthError(RuntimeError):
    """IMS refused the credentials, or the connection is unusable; the message says what to fix."""


class ImsCredentialsRefused(ImsAuthError, CredentialsRefused):
    """IMS answered 400/401/403 to the token request: the credentials themselves were refused."""


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
    private_key: RSAPrivateKey | None = field(default=None)
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
        self._conn: Connection | None = None
        self._extras: ImsExtras | None = None
        self._settings_cache: _Settings | None = None
        # How many times this hook instance called IMS (token or JWT exchange endpoint).
        self.token_requests = 0

    def __repr__(self) -> str:
        store = self.token_store.dialect.name if self.token_store is not None else None
        return f"AdobeImsHook(adobe_ims_conn_id={self.adobe_ims_conn_id!r}, token_store={store!r})"

    # -- connection fields ----------------------------------------------------------------------------
    @property
    def conn(self) -> Connection:
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
        org = self.extras.org_id.strip()
        if not org:
            # The message Campaign administrators know from pipelined (CC-ts).
            raise self._problem("extra.org_id is empty — the subject must be a valid organization or client")
        return org

    @property
    def extra(self) -> dict[str, Any]:
        """The extras as stored (JSON values of any type; :attr:`extras` is the validated form)."""
        return dict(self.conn.extra_dejson or {})

    @property
    def extras(self) -> ImsExtras:
        """The extras validated (pydantic, unknown keys refused with a "did you mean" hint)."""
        if self._extras is None:
            try:
                self._extras = ImsExtras.parse(self.extra)
            except ExtrasError as exc:
                raise self._problem(str(exc)) from None
        return self._extras

    @property
    def auth_type(self) -> str:
        return self.extras.auth_type

    @property
    def metascopes(self) -> tuple[str, ...]:
        try:
            names = parse_metascopes(self.extras.metascopes)
        except ValueError as exc:
            raise self._problem(f"extra.metascopes {exc}") from None
        if not names:
            raise self._problem(
                "extra.metascopes is empty; leave it out for the default "
                f"{list(DEFAULT_METASCOPES)} or list the integration's metascopes"
            )
        return names

    def _scope_text(self, auth_type: str) -> str:
        if auth_type == AuthType.JWT:
            return ",".join(sorted(self.metascopes))
        return self.extras.scopes

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
        fingerprint = secret_fingerprint(client_secret, cache_key)
        settings = _Settings(
            base_url=base_url, client_id=client_id, client_secret=client_secret, org_id=org_id,
            auth_type=auth_type, scopes=scopes, cache_key=cache_key, fingerprint=fingerprint,
        )
        if auth_type == AuthType.JWT:
            extras = self.extras
            settings.metascopes = self.metascopes
            try:
                settings.technical_account_id = check_technical_account_id(extras.technical_account_id)
                settings.jwt_ttl_s = check_jwt_ttl_s(extras.value("jwt_ttl_s", DEFAULT_JWT_TTL_S))
            except ValueError as exc:
                raise self._problem(str(exc)) from None
            settings.private_key = self._private_key(extras.private_key)
        self._settings_cache = settings
        return settings

    def _private_key(self, raw: object) -> RSAPrivateKey:
        if isinstance(raw, str) and raw.strip():
            mask(raw.strip())
        try:
            return load_rsa_private_key(raw)
        except KeyProblem as problem:
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
        with PROCESS_CACHE.lock_for(settings.cache_key):
            if not force_refresh:
                cached = PROCESS_CACHE.get(settings.cache_key, settings.fingerprint)
                if cached is not None and cached.usable():
                    return cached
                stored = self._store_load(settings)
                if stored is not None and stored.usable():
                    PROCESS_CACHE.put(settings.cache_key, settings.fingerprint, stored)
                    self.log.info(
                        "IMS token for connection %r reused from the token store (%.0f s left)",
                        self.adobe_ims_conn_id, stored.expires_at - time.time(),
                    )
                    return stored
            token = self._request_token(settings)
            PROCESS_CACHE.put(settings.cache_key, settings.fingerprint, token)
            self._store_save(settings, token)
            return token

    def invalidate(self) -> None:
        """Forget this client's token in the process and in the token store."""
        key = self.cache_key
        with PROCESS_CACHE.lock_for(key):
            PROCESS_CACHE.drop(key)
            store = self._store()
            if store is not None:
                store.delete(key)

    def _store(self) -> TokenStore | None:
        if self.token_store is None:
            return None
        return TokenStore(self.token_store, conn_id=self.adobe_ims_conn_id, log=self.log)

    def _store_load(self, settings: _Settings) -> ImsToken | None:
        store = self._store()
        return None if store is None else store.load(settings.cache_key, settings.client_secret)

    def _store_save(self, settings: _Settings, token: ImsToken) -> None:
        store = self._store()
        if store is not None:
            store.save(settings.cache_key, settings.client_secret, token)

    # -- IMS ---------------------------------------------------------------------------------------
    def _request_token(self, settings: _Settings) -> ImsToken:
        if settings.auth_type == AuthType.JWT:
            claims = build_jwt_claims(
                base_url=settings.base_url,
                client_id=settings.client_id,
                org_id=settings.org_id,
                technical_account_id=settings.technical_account_id,
                metascopes=settings.metascopes,
                ttl_s=settings.jwt_ttl_s,
            )
            assert settings.private_key is not None  # _settings loads it for jwt
            assertion = sign_jwt(claims, settings.private_key)
            mask(assertion)
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
        extras = self.extras
        max_bytes = extras.max_answer_bytes
        deadline_s = extras.request_deadline_s
        timeout_s = extras.value("timeout_s", self.timeout)
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
            refused = ImsCredentialsRefused if resp.status_code in (400, 401, 403) else ImsAuthError
            raise refused(refusal_message(self.adobe_ims_conn_id, settings, what, resp.status_code, data))
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            raise ImsAuthError(f"IMS {what} to {url} answered 200 with a body that is not a JSON object")
        access_token = body.get("access_token")
        if not access_token or not isinstance(access_token, str):
            raise ImsAuthError(f"IMS {what} to {url} answered 200 without an access_token")
        mask(access_token)
        lifetime, problem = token_lifetime(body.get("expires_in"), expires_in_unit)
        if problem:
            self.log.warning(
                "IMS %s for connection %r: %s; using %.0f s", what, self.adobe_ims_conn_id, problem, lifetime
            )
        self.log.info(
            "IMS token minted for connection %r (%s, valid %.0f s)", self.adobe_ims_conn_id, settings.auth_type, lifetime
        )
        return ImsToken(access_token=access_token, expires_at=minted_at + lifetime, minted_at=minted_at)
