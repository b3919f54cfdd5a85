"""IMS access tokens: the record, how long one is reused, and where it is kept between requests.

IMS tokens last about a day and Adobe may throttle integrations that mint too many, so a token is
reused until shortly before it expires (the margin is the smaller of 5 minutes and 10% of the
token's lifetime, so short-lived tokens are reused too):

* per process (:class:`ProcessTokenCache`) — every hook instance for the same client shares it;
* optionally across tasks and runs (:class:`TokenStore`) — the store's ``tf_ims_token`` table. The
  row is keyed by a sha256 of (IMS URL, client id, scopes, auth type) and the token is
  Fernet-encrypted under a key derived (HKDF-SHA256) from the client secret, which lives only in
  the connection: the store alone is useless to a reader. A row that no longer decrypts (the
  secret was rotated) is ignored and replaced. Two processes minting at once is harmless: both
  tokens are valid and the last writer's row stays.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from include.triggerflow.secrets import mask

if TYPE_CHECKING:
    from cryptography.fernet import Fernet
    from sqlalchemy import Connection, Engine

# Renew a token this long before IMS says it expires, so it never dies mid-pull: the smaller of
# EXPIRY_MARGIN_S and EXPIRY_MARGIN_FRACTION of its lifetime (a 60 s token is reused for 54 s).
EXPIRY_MARGIN_S = 300
EXPIRY_MARGIN_FRACTION = 0.10

# Sane bounds for IMS's expires_in (seconds): IMS tokens last about 24 h.
MIN_TOKEN_LIFETIME_S = 60.0
MAX_TOKEN_LIFETIME_S = 86_400.0

# HKDF "info" of the key that encrypts stored tokens; bump it to orphan every stored row.
TOKEN_KEY_INFO = b"triggerflow-ims-token-v1"
_PAYLOAD_VERSION = 1


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


def token_lifetime(value: object, unit_s_per_value: float) -> tuple[float, str | None]:
    """IMS's ``expires_in`` as seconds, at most MAX_TOKEN_LIFETIME_S, and what was wrong with it
    (None when it was usable as is). A value that is absent, not a number, NaN or not positive
    counts as MIN_TOKEN_LIFETIME_S: reused briefly (a source's 401 forces a new one) rather than
    minting a token for every request. A short positive lifetime is kept: IMS may mint short
    tokens, and the reuse margin scales with the lifetime. ``unit_s_per_value`` is 1000 for the
    JWT exchange (milliseconds). Never raises: an answer must not crash the pull."""
    shown = repr(value)[:40]
    number: float | None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        number = None
    else:
        try:
            number = float(value)
        except ValueError:
            number = None
        except OverflowError:  # an int beyond any float: as good as infinite
            number = float("inf") if isinstance(value, int) and value > 0 else float("-inf")
    if number is None or math.isnan(number):  # absent, not a number, NaN
        return MIN_TOKEN_LIFETIME_S, f"expires_in {shown} is not a number of seconds"
    seconds = number / unit_s_per_value
    if seconds <= 0:
        return MIN_TOKEN_LIFETIME_S, f"expires_in {shown} is not positive"
    if seconds > MAX_TOKEN_LIFETIME_S:
        return MAX_TOKEN_LIFETIME_S, f"expires_in {shown} is beyond {MAX_TOKEN_LIFETIME_S:.0f} s"
    return seconds, None


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


def secret_fingerprint(client_secret: str, cache_key: str) -> str:
    """Tells two secrets of one client apart without keeping either (the process cache's check)."""
    return hashlib.sha256(derive_token_key(client_secret, cache_key)).hexdigest()


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


# -- process-wide cache ---------------------------------------------------------------------------------
class ProcessTokenCache:
    """cache_key -> (fingerprint of the secret-derived key, token): every hook instance for the
    same client shares one token, but a hook with another secret for the same client does not
    get it. One lock per cache key serialises minting, so threads of one task mint once."""

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[str, ImsToken]] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    def lock_for(self, cache_key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(cache_key, threading.Lock())

    def get(self, cache_key: str, fingerprint: str) -> ImsToken | None:
        with self._lock:
            cached = self._tokens.get(cache_key)
        return cached[1] if cached and cached[0] == fingerprint else None

    def put(self, cache_key: str, fingerprint: str, token: ImsToken) -> None:
        with self._lock:
            self._tokens[cache_key] = (fingerprint, token)

    def drop(self, cache_key: str) -> None:
        with self._lock:
            self._tokens.pop(cache_key, None)

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()


PROCESS_CACHE = ProcessTokenCache()


def clear_token_cache() -> None:
    """Forget every token of this process (tests use it to simulate a new task process)."""
    PROCESS_CACHE.clear()


# -- the store (tf_ims_token) -----------------------------------------------------------------------------
class Log(Protocol):
    """The hook's logger (Airflow's structlog logger or a stdlib one): messages keep its name."""

    def warning(self, event: str, *args: Any) -> Any: ...

    def info(self, event: str, *args: Any) -> Any: ...


class TokenStore:
    """Encrypted token rows in the store. A store that cannot be read or written must not stop a
    pull that IMS can serve: every SQLAlchemyError is logged as a warning naming the connection
    and the hook carries on with IMS."""

    def __init__(self, engine: Engine, *, conn_id: str, log: Log) -> None:
        self.engine = engine
        self.conn_id = conn_id
        self.log = log

    def _warn(self, action: str, exc: Exception) -> None:
        first_line = str(exc).splitlines()[0][:200] if str(exc) else ""
        self.log.warning(
            "IMS token store: could not %s for connection %r (%s: %s); carrying on without it",
            action, self.conn_id, exc.__class__.__name__, first_line,
        )

    def load(self, cache_key: str, client_secret: str) -> ImsToken | None:
        """The stored token of ``cache_key`` if it decrypts with ``client_secret``."""
        from sqlalchemy import select
        from sqlalchemy.exc import SQLAlchemyError

        from include.triggerflow.store.schema import ims_token

        try:
            with self.engine.connect() as conn:
                ciphertext = conn.execute(
                    select(ims_token.c.ciphertext).where(ims_token.c.cache_key == cache_key)
                ).scalar_one_or_none()
        except SQLAlchemyError as exc:
            self._warn("read the stored token", exc)
            return None
        if ciphertext is None:
            return None
        token = decrypt_token(ciphertext, client_secret, cache_key)
        if token is None:
            self.log.info(
                "IMS token store: the stored token of connection %r does not decrypt with its client secret "
                "(rotated?); minting a new one",
                self.conn_id,
            )
            return None
        mask(token.access_token)
        return token

    def save(self, cache_key: str, client_secret: str, token: ImsToken) -> None:
        if token.lifetime_s is None or token.lifetime_s <= 0:
            return
        from sqlalchemy.exc import SQLAlchemyError

        values = {
            "cache_key": cache_key,
            "ciphertext": encrypt_token(token, client_secret, cache_key),
            "expires_at": datetime.fromtimestamp(token.expires_at, UTC),
            "minted_at": datetime.fromtimestamp(token.minted_at or time.time(), UTC),
        }
        try:
            with self.engine.begin() as conn:
                _upsert_token_row(conn, values)
        except SQLAlchemyError as exc:
            self._warn("store the new token", exc)

    def delete(self, cache_key: str) -> None:
        from sqlalchemy import delete
        from sqlalchemy.exc import SQLAlchemyError

        from include.triggerflow.store.schema import ims_token

        try:
            with self.engine.begin() as conn:
                conn.execute(delete(ims_token).where(ims_token.c.cache_key == cache_key))
        except SQLAlchemyError as exc:
            self._warn("delete the stored token", exc)


def _upsert_token_row(conn: Connection, values: dict[str, object]) -> None:
    """INSERT ... ON CONFLICT (cache_key) DO UPDATE: concurrent writers leave the last one's row."""
    from include.triggerflow.store.schema import ims_token

    dialect = conn.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
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
