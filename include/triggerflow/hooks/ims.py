"""Adobe IMS: OAuth Server-to-Server access tokens for the trigger sources.

Connection ``adobe_ims`` (conn_type ``http``):

    host       IMS base URL, e.g. https://ims-na1.adobelogin.com (the emulator's URL locally)
    login      client id (also sent as ``x-api-key`` to Adobe I/O)
    password   client secret
    extra      {"org_id": "...@AdobeOrg", "scopes": "openid,AdobeID,..."}

Why not HttpHook: it sends unknown extras as HTTP headers and the login/password as Basic auth on
every request (reference/airflow-3.3-notes.md finding 8), which would leak the client secret to
the journal. This hook posts the credentials only to the token endpoint.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import requests

from airflow.sdk import BaseHook

TOKEN_PATH = "/ims/token/v3"
# Renew this long before IMS says the token expires, so a token never dies mid-pull.
EXPIRY_MARGIN_S = 300


class ImsAuthError(RuntimeError):
    """IMS refused the credentials; the message says which setting to check."""


@dataclass
class ImsToken:
    access_token: str
    expires_at: float  # time.time() seconds

    def usable(self, now: float | None = None) -> bool:
        return (now or time.time()) < self.expires_at - EXPIRY_MARGIN_S

    def __repr__(self) -> str:  # never show the token itself in logs or tracebacks
        return f"ImsToken(expires_at={self.expires_at:.0f})"


# Process-wide cache: every hook instance for the same client shares one token.
_token_cache: dict[tuple[str, str, str], ImsToken] = {}
_cache_lock = threading.Lock()


class AdobeImsHook(BaseHook):
    """Mints and caches IMS access tokens (OAuth client credentials)."""

    conn_name_attr = "adobe_ims_conn_id"
    default_conn_name = "adobe_ims"
    conn_type = "http"
    hook_name = "Adobe IMS"

    def __init__(self, adobe_ims_conn_id: str = default_conn_name, *, timeout: float = 30.0) -> None:
        super().__init__()
        self.adobe_ims_conn_id = adobe_ims_conn_id
        self.timeout = timeout
        self._conn: Any = None
        self.token_requests = 0

    @property
    def conn(self) -> Any:
        if self._conn is None:
            self._conn = self.get_connection(self.adobe_ims_conn_id)
        return self._conn

    @property
    def base_url(self) -> str:
        host = (self.conn.host or "").rstrip("/")
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
    def org_id(self) -> str:
        org = str(self.extra.get("org_id") or "").strip()
        if not org:
            # The message Campaign administrators know from pipelined (CC-ts).
            raise ImsAuthError(
                f"connection {self.adobe_ims_conn_id!r}: extra.org_id is empty — "
                "the subject must be a valid organization or client"
            )
        return org

    @property
    def extra(self) -> dict[str, Any]:
        return dict(self.conn.extra_dejson or {})

    def get_conn(self) -> str:
        return self.get_token()

    def get_token(self, *, force_refresh: bool = False) -> str:
        key = (self.base_url, self.client_id, str(self.extra.get("scopes", "")))
        with _cache_lock:
            cached = _token_cache.get(key)
            if cached and cached.usable() and not force_refresh:
                return cached.access_token
            token = self._request_token()
            _token_cache[key] = token
            return token.access_token

    def invalidate(self) -> None:
        key = (self.base_url, self.client_id, str(self.extra.get("scopes", "")))
        with _cache_lock:
            _token_cache.pop(key, None)

    def _request_token(self) -> ImsToken:
        if not self.conn.password:
            raise ImsAuthError(f"connection {self.adobe_ims_conn_id!r} has no password (the client secret)")
        self.token_requests += 1
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self.conn.password,
            "scope": str(self.extra.get("scopes", "")),
        }
        url = f"{self.base_url}{TOKEN_PATH}"
        try:
            resp = requests.post(url, data=form, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ImsAuthError(f"IMS token request to {url} failed: {exc.__class__.__name__}: {exc}") from None
        if resp.status_code in (400, 401):
            error = _error_of(resp)
            hint = {
                "invalid_client": "check the client id (login) and client secret (password) of "
                f"connection {self.adobe_ims_conn_id!r}",
                "invalid_scope": "check extra.scopes",
            }.get(error, "")
            raise ImsAuthError(f"IMS refused the token request ({resp.status_code} {error}){': ' + hint if hint else ''}")
        if resp.status_code != 200:
            raise ImsAuthError(f"IMS token request failed with HTTP {resp.status_code}: {resp.text[:200]}")
        body = resp.json()
        access_token = body.get("access_token")
        if not access_token:
            raise ImsAuthError("IMS answered 200 without an access_token")
        _mask(access_token)
        expires_in = float(body.get("expires_in", 0) or 0)
        return ImsToken(access_token=access_token, expires_at=time.time() + expires_in)


def _error_of(resp: requests.Response) -> str:
    try:
        return str(resp.json().get("error", "unknown_error"))
    except ValueError:
        return "unknown_error"


def _mask(secret: str) -> None:
    """Register a runtime secret with Airflow's log masker (no-op outside Airflow)."""
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - Airflow is always installed in this project
        return
    mask_secret(secret)


def clear_token_cache() -> None:
    with _cache_lock:
        _token_cache.clear()
