"""The unsubscribe links named by connection ``triggerflow_unsubscribe``.

Connection ``triggerflow_unsubscribe`` (conn_type ``generic`` or ``http``):

    host       the public base URL of the Airflow API server as recipients reach it, e.g.
               https://airflow.example.com (a path prefix is kept: https://example.com/airflow);
               the links point at <host>/triggerflow/unsubscribe/?token=<token>. (A bare host name
               with schema = http/https and an optional port, HttpHook's way, works too.)
    password   the signing secret, at least 16 bytes; generate one with
               python -c 'import secrets; print(secrets.token_urlsafe(32))'.
               Changing it invalidates every link already sent.
    extra      optional {"max_age_days": 60,                     # links expire (default: never)
                         "mailto": "unsubscribe@example.com"}    # also offered in List-Unsubscribe

The same connection must be visible to the workers (which sign, in the send stage) and to the API
server (which verifies, in ``plugins/unsubscribe.py``): a secrets backend or the metastore, or the
same ``AIRFLOW_CONN_TRIGGERFLOW_UNSUBSCRIBE`` variable in both. The secret is registered with
Airflow's log masker when read and never logged.

    hook = UnsubscribeHook()
    links = hook.get_links()                            # once per task: derives the key
    url = links.url_for(customer_id, route.name)        # once per email, ~15 µs
    headers = mailer.list_unsubscribe_headers(url, hook.mailto)

RFC 8058 requires an HTTPS URL in List-Unsubscribe: :meth:`UnsubscribeHook.get_links` (the
signing side) refuses an ``http://`` host unless it is localhost or a loopback address (local
demo and tests). :func:`links_from_connection` (also used by the API server, which only verifies)
does not check the scheme.
"""

from __future__ import annotations

import ipaddress
import math
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook

from include.triggerflow.secrets import mask
from include.triggerflow.unsubscribe import UnsubscribeLinks

DEFAULT_CONN_ID = "triggerflow_unsubscribe"


class UnsubscribeConfigError(ValueError):
    """Connection ``triggerflow_unsubscribe`` is incomplete or invalid; the message says what to set."""


def is_loopback(host: str) -> bool:
    """localhost or a loopback IP address (127.0.0.0/8, ::1)."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _extra(conn: Any) -> dict[str, Any]:
    conn_id = getattr(conn, "conn_id", None) or DEFAULT_CONN_ID
    try:
        extra = conn.extra_dejson
    except Exception as exc:
        raise UnsubscribeConfigError(f"{conn_id}: extra is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(extra, dict):
        raise UnsubscribeConfigError(f"{conn_id}: extra must be a JSON object")
    return extra


def max_age_from_extra(extra: dict[str, Any], conn_id: str = DEFAULT_CONN_ID) -> timedelta | None:
    value = extra.get("max_age_days")
    if value in (None, ""):
        return None
    try:
        days = float(value)
    except (TypeError, ValueError):
        raise UnsubscribeConfigError(f"{conn_id}: extra.max_age_days must be a positive number of days, not {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(days) or not days > 0:  # refuses nan and inf too
        raise UnsubscribeConfigError(f"{conn_id}: extra.max_age_days must be a positive number of days, not {value!r}")
    return timedelta(days=days)


def mailto_from_extra(extra: dict[str, Any], conn_id: str = DEFAULT_CONN_ID) -> str | None:
    value = extra.get("mailto")
    if value in (None, ""):
        return None
    address = str(value).strip()
    if address.lower().startswith("mailto:"):
        address = address[len("mailto:"):]
    local, at, domain = address.partition("@")
    if not (local and at and domain) or any(c.isspace() or c in "<>,\"\0" for c in address):
        raise UnsubscribeConfigError(f"{conn_id}: extra.mailto must be an email address, e.g. unsubscribe@example.com")
    return address


def base_url_from_connection(conn: Any) -> str:
    """``host`` when it is a full URL; else HttpHook's convention: ``schema`` (http or https) +
    ``host`` + ``port``."""
    host = str(conn.host or "").strip()
    scheme = str(conn.schema or "").strip().lower()
    if "://" in host or scheme not in ("http", "https"):
        return host
    port = f":{conn.port}" if conn.port else ""
    name, slash, path = host.partition("/")
    return f"{scheme}://{name}{port}{slash}{path}"


def links_from_connection(conn: Any) -> UnsubscribeLinks:
    """:class:`UnsubscribeLinks` from an Airflow connection object (``airflow.sdk`` in a task, or
    ``airflow.models.connection.Connection`` in the API server). :class:`UnsubscribeConfigError`
    when the host or the secret is missing or invalid (the message never contains the secret)."""
    conn_id = getattr(conn, "conn_id", None) or DEFAULT_CONN_ID
    secret = conn.password or ""
    if not secret:
        raise UnsubscribeConfigError(
            f"{conn_id}: the signing secret is missing: set the connection's password "
            "(at least 16 bytes, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    mask(secret)
    if not conn.host:
        raise UnsubscribeConfigError(
            f"{conn_id}: host is missing: set the public base URL of the Airflow API server, e.g. https://airflow.example.com"
        )
    extra = _extra(conn)
    try:
        return UnsubscribeLinks(secret, base_url_from_connection(conn), max_age=max_age_from_extra(extra, conn_id))
    except UnsubscribeConfigError:
        raise
    except ValueError as exc:  # short secret, relative host: the messages never echo the secret
        raise UnsubscribeConfigError(f"{conn_id}: {exc}") from None


class UnsubscribeHook(BaseHook):
    """Signed one-click unsubscribe links (see the module doc for the connection)."""

    conn_name_attr = "unsubscribe_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "generic"
    hook_name = "triggerflow unsubscribe links"

    def __init__(self, unsubscribe_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.unsubscribe_conn_id = unsubscribe_conn_id
        self._conn: Any = None
        self._links: UnsubscribeLinks | None = None

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self.get_connection(self.unsubscribe_conn_id)
        return self._conn

    def get_links(self) -> UnsubscribeLinks:
        """The links of this connection (built once per hook: the key is derived once).
        UnsubscribeConfigError when incomplete, or http:// on a non-loopback host (RFC 8058)."""
        if self._links is None:
            links = links_from_connection(self._connection())
            parts = urlsplit(links.base_url)
            if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
                raise UnsubscribeConfigError(
                    f"{self.unsubscribe_conn_id}: host {links.base_url!r} must use https:// (RFC 8058 requires an "
                    "HTTPS one-click URL); http:// is accepted only for localhost / loopback addresses"
                )
            self._links = links
        return self._links

    def get_conn(self) -> UnsubscribeLinks:
        return self.get_links()

    @property
    def mailto(self) -> str | None:
        """``extra.mailto`` (an address without ``mailto:``), or None."""
        return mailto_from_extra(_extra(self._connection()), self.unsubscribe_conn_id)
