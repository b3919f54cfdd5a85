"""Signed one-click unsubscribe links (RFC 8058): the token, its signature and its checks.

Every email carries

    List-Unsubscribe: <https://airflow.example.com/triggerflow/unsubscribe/?token=TOKEN>
    List-Unsubscribe-Post: List-Unsubscribe=One-Click

(``include.triggerflow.mailer.list_unsubscribe_headers``) and the same URL in its footer. The URL
is served by the Airflow plugin ``plugins/unsubscribe.py`` (mounted at :data:`URL_PREFIX` in the
API server): a mail client's one-click ``POST`` records the opt-out at once; a human's ``GET``
shows a page with an "Unsubscribe" button (a GET never unsubscribes: mail scanners prefetch
links). The token travels as ``?token=``: Airflow's access log writes that parameter as ``***``.

**The token** is the only authentication of that public endpoint::

    v1.<payload>.<signature>

* ``payload`` = base64url (no padding) of the compact JSON ``["<customer id>", "<route>"|null,
  <issued at, epoch seconds>]``;
* ``signature`` = base64url of HMAC-SHA256 over the ASCII text ``v1.<payload>`` under a key
  derived once (per :class:`UnsubscribeLinks`) from the connection's secret:
  ``HMAC-SHA256(secret, "triggerflow-unsubscribe-v1")``, so the same secret used elsewhere never
  yields a valid token here. Only the canonical encoding of the signature is accepted and it is
  compared with :func:`hmac.compare_digest`.

Every character is in ``[A-Za-z0-9_.-]``, so the token needs no escaping in a URL or a header.
A token names a customer, it carries no secret; it is not encrypted (the customer id is readable
by whoever holds the link, like in any footer link). :meth:`UnsubscribeLinks.verify` checks the
version, then the signature, and only then decodes the payload, then the time: a token issued more
than :data:`FUTURE_SKEW` in the future is refused, and one older than ``max_age`` when a maximum
age is set. Rotating the secret invalidates every link already sent: keep links valid for as long
as recipients may reasonably use them (mailbox providers expect a one-click link to keep working;
the default is no expiry).

The endpoint runs :func:`check_token_format` (text only, no key) before it looks up the
connection, so junk never reaches the secrets backend.

The secret lives only in the Airflow connection ``triggerflow_unsubscribe``
(``include/triggerflow/hooks/unsubscribe.py``); it is never logged, and neither is a token's
signature (:func:`redact_token` gives a loggable form). The store writes of a verified claim are
in :mod:`include.triggerflow.unsubscribe.records`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from include.triggerflow.timeutil import as_utc, utcnow

#: where the plugin is mounted in the API server (not under a reserved prefix: /api/v2, /ui,
#: /execution, /auth, /pluginsv2)
URL_PREFIX = "/triggerflow/unsubscribe"
#: the path of the signed URL, below the base URL of the API server
URL_PATH = URL_PREFIX + "/"
#: the query parameter carrying the token. Named "token" on purpose: Airflow's HTTP access log
#: (api_fastapi/common/http_access_log.py) writes every request's query string but replaces the
#: value of parameters with sensitive names (token, password, secret...) by ***, so the API
#: server's logs never contain a token's signature.
TOKEN_PARAM = "token"

TOKEN_VERSION = "v1"
MIN_SECRET_BYTES = 16
#: a token issued up to this far in the future is accepted (clocks of workers and API server differ)
FUTURE_SKEW = timedelta(minutes=5)
#: longer tokens are refused before any work (a customer id and a route are at most 100 chars each)
MAX_TOKEN_CHARS = 1024
MAX_ID_CHARS = 100  # profiles.customer_id and tf_unsubscribe.route are String(100)

_KEY_INFO = b"triggerflow-unsubscribe-" + TOKEN_VERSION.encode("ascii")
_B64 = re.compile(r"[A-Za-z0-9_-]+")
_VERSION = re.compile(r"v[0-9]{1,3}")
#: base64url (unpadded) of a 32-byte HMAC-SHA256
_SIGNATURE_CHARS = 43


class InvalidUnsubscribeToken(ValueError):
    """The token cannot be trusted. ``reason`` is one of ``malformed``, ``version``, ``signature``,
    ``expired``, ``future``; the message says what is wrong, never the secret nor the signature."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class UnsubscribeClaim:
    """What a valid token says: this customer asked to stop receiving emails (of this route)."""

    customer_id: str
    route: str | None
    issued_at: datetime  # UTC, whole seconds
    #: sha256 hex of the token's signed part (set by :meth:`UnsubscribeLinks.verify`); None for a
    #: claim built by hand, whose :attr:`key` is then derived from the fields the same way
    token_key: str | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """The ``tf_unsubscribe.token_key`` of this claim: one link, one key (so recording is
        idempotent per customer and token)."""
        return self.token_key or token_key_for(self.customer_id, self.route, self.issued_at)


def _signed_part(customer_id: str, route: str | None, issued: int) -> str:
    """``v1.<payload>``: what :meth:`UnsubscribeLinks.sign` signs (and the token starts with)."""
    raw = json.dumps([customer_id, route or None, issued], separators=(",", ":"), ensure_ascii=False)
    return f"{TOKEN_VERSION}.{_b64encode(raw.encode('utf-8'))}"


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def token_key_for(customer_id: str, route: str | None, issued_at: datetime | None) -> str:
    """The token key of the link signed for these fields: sha256 hex of its signed part, equal
    to what :meth:`UnsubscribeLinks.verify` computes from the token itself (the payload encoding is
    canonical). Rows recorded before the key existed get theirs from this
    (:func:`backfill_token_keys`); a row without ``issued_at`` gets a key of its customer and
    route, marked ``legacy``."""
    if issued_at is None:
        return _sha256_hex("legacy:" + json.dumps([customer_id, route or None], separators=(",", ":"), ensure_ascii=False))
    when = as_utc(issued_at)  # SQLite: naive UTC
    return _sha256_hex(_signed_part(customer_id, route, int(when.timestamp())))


def check_token_format(token: object) -> tuple[str, str, str]:
    """``(version, payload, signature)`` of a token that is well-formed: a string of at most
    :data:`MAX_TOKEN_CHARS`, three non-empty dot-separated parts, version ``v1``, base64url
    payload and signature. :class:`InvalidUnsubscribeToken` otherwise.

    Pure text checks, no key needed: the endpoint runs this before it reads any connection or
    derives the key, so junk costs nothing but this."""
    if not isinstance(token, str) or not token:
        raise InvalidUnsubscribeToken("malformed", "malformed unsubscribe token: it is empty")
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidUnsubscribeToken("malformed", "malformed unsubscribe token: it is too long")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise InvalidUnsubscribeToken(
            "malformed", "malformed unsubscribe token: expected 3 dot-separated parts (version.payload.signature)"
        )
    version, payload, signature = parts
    if version != TOKEN_VERSION:
        shown = f" {version!r}" if _VERSION.fullmatch(version) else ""
        raise InvalidUnsubscribeToken("version", f"unknown unsubscribe token version{shown}: this server reads {TOKEN_VERSION!r}")
    if not _B64.fullmatch(payload) or not _B64.fullmatch(signature):
        raise InvalidUnsubscribeToken("malformed", "malformed unsubscribe token: payload or signature is not base64url")
    if len(signature) != _SIGNATURE_CHARS:
        raise InvalidUnsubscribeToken("malformed", "malformed unsubscribe token: the signature has the wrong length")
    return version, payload, signature


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def aware_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive value is refused rather than guessed: a caller passing a time to
    sign or verify with must say which time it means (the store's naive values use :func:`as_utc`)."""
    if value.tzinfo is None:
        raise ValueError("issued_at/now must be timezone-aware (UTC)")
    return as_utc(value)


def redact_token(token: str | None) -> str:
    """A token safe for logs: version and payload (customer id, route, time), never the signature."""
    if not token:
        return "<none>"
    head, _, _ = str(token)[:MAX_TOKEN_CHARS].rpartition(".")
    return f"{head}.<signature>" if head else "<malformed>"


def check_base_url(base_url: str) -> str:
    """``base_url`` without its trailing slash; ValueError unless it is an absolute http(s) URL
    with a host and without query or fragment (a path prefix, e.g. behind a proxy, is fine)."""
    if not isinstance(base_url, str) or not base_url.strip():
        raise ValueError("unsubscribe base URL is empty: set the public URL of the Airflow API server, e.g. https://airflow.example.com")
    text = base_url.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise ValueError(f"unsubscribe base URL {text!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"unsubscribe base URL {text!r} must be an absolute http:// or https:// URL with a host "
            "(the Airflow API server as recipients reach it, e.g. https://airflow.example.com)"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"unsubscribe base URL {text!r} must not have credentials, a query or a fragment")
    if any(c.isspace() or c in "<>\"'" for c in text):
        raise ValueError("unsubscribe base URL must not contain spaces, quotes or angle brackets")
    return text.rstrip("/")


def _secret_bytes(secret: str | bytes) -> bytes:
    if isinstance(secret, str):
        raw = secret.encode("utf-8")
    elif isinstance(secret, (bytes, bytearray)):
        raw = bytes(secret)
    else:
        raise TypeError("unsubscribe secret must be str or bytes")
    if len(raw) < MIN_SECRET_BYTES:
        # never echo the secret, not even its length beyond "too short"
        raise ValueError(
            f"unsubscribe signing secret is too short: use at least {MIN_SECRET_BYTES} bytes "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return raw


class UnsubscribeLinks:
    """Signs and verifies unsubscribe tokens, and builds the URLs that carry them.

    The signing key is derived once here; :meth:`url_for` then costs one HMAC-SHA256 (a copy of a
    keyed HMAC object), a small JSON dump and two base64 encodings.
    """

    __slots__ = ("_mac", "_url_head", "base_url", "max_age")

    def __init__(self, secret: str | bytes, base_url: str, *, max_age: timedelta | None = None) -> None:
        key = hmac.new(_secret_bytes(secret), _KEY_INFO, hashlib.sha256).digest()
        self.base_url = check_base_url(base_url)
        if max_age is not None and max_age <= timedelta(0):
            raise ValueError("unsubscribe max_age must be positive (or None: links never expire)")
        self.max_age = max_age
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self._url_head = f"{self.base_url}{URL_PATH}?{TOKEN_PARAM}="

    def __repr__(self) -> str:  # never the key
        return f"UnsubscribeLinks(base_url={self.base_url!r}, max_age={self.max_age!r})"

    def _signature(self, signed: str) -> str:
        mac = self._mac.copy()
        mac.update(signed.encode("ascii"))
        return _b64encode(mac.digest())

    def sign(self, customer_id: str, route: str | None = None, *, issued_at: datetime | None = None) -> str:
        """The token for this customer (and route), issued now or at ``issued_at`` (aware)."""
        if not isinstance(customer_id, str) or not customer_id:
            raise ValueError("customer_id must be a non-empty string")
        if len(customer_id) > MAX_ID_CHARS:
            raise ValueError(f"customer_id is longer than {MAX_ID_CHARS} characters")
        if route is not None and (not isinstance(route, str) or len(route) > MAX_ID_CHARS):
            raise ValueError(f"route must be None or a string of at most {MAX_ID_CHARS} characters")
        when = utcnow() if issued_at is None else aware_utc(issued_at)
        signed = _signed_part(customer_id, route, int(when.timestamp()))
        return f"{signed}.{self._signature(signed)}"

    def url_for(self, customer_id: str, route: str | None = None, *, issued_at: datetime | None = None) -> str:
        """``{base_url}/triggerflow/unsubscribe/?token=<token>``: the List-Unsubscribe and footer URL."""
        return self._url_head + self.sign(customer_id, route, issued_at=issued_at)

    def verify(self, token: str, *, now: datetime | None = None) -> UnsubscribeClaim:
        """The claim of a valid token; :class:`InvalidUnsubscribeToken` otherwise.
        (:func:`check_token_format` first, then the signature, then the payload and the time.)"""
        version, payload, signature = check_token_format(token)
        expected = self._signature(f"{version}.{payload}")
        if not hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii")):
            raise InvalidUnsubscribeToken(
                "signature", "bad unsubscribe token signature: the link was altered or signed with another secret"
            )
        # Authentic from here on: the payload was written by sign() with this key.
        try:
            customer_id, route, issued = json.loads(_b64decode(payload).decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
            raise InvalidUnsubscribeToken("malformed", "malformed unsubscribe token: the payload cannot be read") from None
        if (
            not isinstance(customer_id, str)
            or not customer_id
            or not (route is None or isinstance(route, str))
            or not isinstance(issued, int)
            or isinstance(issued, bool)
        ):
            raise InvalidUnsubscribeToken("malformed", "malformed unsubscribe token: unexpected payload fields")
        try:
            issued_at = datetime.fromtimestamp(issued, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidUnsubscribeToken("malformed", "malformed unsubscribe token: issued-at out of range") from None
        current = utcnow() if now is None else aware_utc(now)
        if issued_at - current > FUTURE_SKEW:
            raise InvalidUnsubscribeToken(
                "future", f"unsubscribe token issued in the future ({issued_at:%Y-%m-%dT%H:%M:%SZ}): check the workers' clocks"
            )
        if self.max_age is not None and current - issued_at > self.max_age:
            raise InvalidUnsubscribeToken(
                "expired",
                f"unsubscribe token expired: issued {issued_at:%Y-%m-%dT%H:%M:%SZ}, links are valid for {_age(self.max_age)}",
            )
        return UnsubscribeClaim(
            customer_id=customer_id, route=route, issued_at=issued_at, token_key=_sha256_hex(f"{version}.{payload}")
        )


def _age(value: timedelta) -> str:
    if value % timedelta(days=1) == timedelta(0):
        days = value // timedelta(days=1)
        return f"{days} day{'s' if days != 1 else ''}"
    return f"{int(value.total_seconds())} s"
