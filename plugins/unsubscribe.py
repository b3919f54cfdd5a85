"""Airflow plugin: the signed one-click unsubscribe endpoint (RFC 8058), served by the API server.

    POST /triggerflow/unsubscribe/?token=T   body ``List-Unsubscribe=One-Click`` (form-encoded or
                                             multipart): a mail client's one-click unsubscribe.
                                             Valid token -> the opt-out is recorded -> 200 page.
    GET  /triggerflow/unsubscribe/?token=T   a person clicking the footer link: a page with an
                                             "Unsubscribe" button (a form POSTing the same URL with
                                             ``List-Unsubscribe=One-Click`` and ``via=page``). A GET
                                             never unsubscribes: mail scanners prefetch links.

The parameter is called ``token`` so that Airflow's HTTP access log, which writes each request's
query string, replaces its value with ``***`` (it redacts parameters with sensitive names).

A bad, altered, expired or missing token is refused with 400 and a small page; nothing is recorded.
A POST without ``List-Unsubscribe=One-Click`` is refused with 400 too.

**Public on purpose.** Recipients are not Airflow users: the token's HMAC signature is the
authentication (``include/triggerflow/unsubscribe.py``). Nothing else is served here (no docs, no
OpenAPI), and the pages carry no cookies, no scripts and a strict Content-Security-Policy.

**Data.** The signing secret and base URL come from connection ``triggerflow_unsubscribe``
(``include/triggerflow/hooks/unsubscribe.py``), the store from ``triggers_db``, both read with
``airflow.models.connection.Connection`` (secrets backend, environment, metastore) in the API
server process. The opt-out sets ``profiles.opted_out`` and writes one ``tf_unsubscribe`` row per
customer and link in one transaction (``record_opt_out_in``: a repeated POST adds nothing); the
next reconcile decides ``suppressed:opt-out``.

**Under abuse** (the endpoint is public; the API server's thread pool is shared with Airflow's
UI and REST API):

* the token's format is checked first (length, 3 parts, version, base64url, signature length:
  ``check_token_format``), then its HMAC signature; only a valid token reaches the store. A
  malformed token costs no connection look-up, no key derivation and no query; a forged one an
  HMAC with the cached signer;
* the signer (connection look-up + key derivation) and the store engine are cached for
  :data:`CACHE_TTL_S` (a failed look-up for :data:`ERROR_TTL_S`), one look-up at a time;
* store calls go through ``include.triggerflow.store.guarded.StoreGuard``: PostgreSQL
  ``lock_timeout`` 2 s / ``statement_timeout`` 5 s per transaction and ``connect_timeout`` 5 s;
  SQLite a 2 s busy timeout; at most 4 store calls at once per process, a request waiting at most
  1 s (in the event loop, holding no thread) for a slot. A locked profile row or a slow store
  gives a 503 with ``Retry-After`` within seconds and never takes the API server's threads;
* 503 pages are generic ("try again later"): connection names, configuration and exception texts
  go to the log only. 400 pages keep their hints for the recipient.

Logs name the customer id and the refusal reason, never a token's signature nor the secret.

Plugins are imported by the scheduler, the DAG processor and the CLI too: this module imports only
FastAPI at the top; SQLAlchemy, Airflow's models and the triggerflow package load on first request.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

log = logging.getLogger(__name__)

#: must equal include.triggerflow.unsubscribe.URL_PREFIX (the links point here); not under one of
#: Airflow's reserved prefixes (/api/v2, /ui, /execution, /auth, /pluginsv2)
PREFIX = "/triggerflow/unsubscribe"
#: must equal include.triggerflow.unsubscribe.TOKEN_PARAM; a sensitive name, so Airflow's access
#: log writes token=*** instead of the token (see there)
TOKEN_PARAM = "token"
LINKS_CONN_ID = "triggerflow_unsubscribe"
STORE_CONN_ID = "triggers_db"
PG_CONNECT_TIMEOUT_S = 5
#: how long the signer (secret look-up + key derivation) and the store engine are reused
CACHE_TTL_S = 60.0
#: how long a failed look-up is remembered (a misconfiguration is not hammered, a fix shows soon)
ERROR_TTL_S = 5.0
#: how long a request waits for another request's look-up of the same thing
LOOKUP_WAIT_S = 2.0
#: Retry-After of a 503: the store is busy / the endpoint is unavailable (configuration, errors)
RETRY_BUSY_S, RETRY_UNAVAILABLE_S = 5, 60
#: the name of this plugin's StoreGuard (its own gate: the status plugin cannot take its slots)
GUARD_NAME = "unsubscribe"
MAX_BODY_BYTES = 16 * 1024
ONE_CLICK_FIELD, ONE_CLICK_VALUE = "List-Unsubscribe", "One-Click"
VIA_FIELD, VIA_PAGE = "via", "page"

HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


class Unavailable(Exception):
    """The request cannot be served now; the message says why (served as a 503 page)."""


class BadRequest(Exception):
    """The request is refused (served as a 400 page); the message is shown to the recipient."""


# -- pages -------------------------------------------------------------------------------------------
def render(title: str, message: str, *, status: int, form_token: str | None = None, element_id: str = "message") -> HTMLResponse:
    """A small self-contained page (include/templates/ui/unsubscribe.html, Jinja2 with autoescape:
    every dynamic text is escaped); with ``form_token``, the "Unsubscribe" button."""
    from include.triggerflow.pages import unsubscribe_page

    page = unsubscribe_page(
        title,
        message,
        element_id=element_id,
        form_action=None if form_token is None else f"?{TOKEN_PARAM}={form_token}",
        fields={"one_click": ONE_CLICK_FIELD, "one_click_value": ONE_CLICK_VALUE, "via": VIA_FIELD, "via_page": VIA_PAGE},
    )
    return HTMLResponse(page, status_code=status, headers=HEADERS)


def _invalid_page(reason: str) -> HTMLResponse:
    if reason == "expired":
        text = "This unsubscribe link has expired. Please use the link in a more recent email from us."
    elif reason == "missing":
        text = "This unsubscribe link is incomplete. Please copy the whole link from the email."
    else:
        text = "This unsubscribe link is not valid: it may be incomplete or altered. Please copy the whole link from the email."
    return render("Invalid unsubscribe link", text, status=400, element_id="invalid")


def _unavailable_page(*, busy: bool = False) -> HTMLResponse:
    """The one 503 page: generic on purpose (what went wrong is in the log, never on a public
    page), with Retry-After."""
    text = (
        "We are receiving many requests right now; please try again in a moment."
        if busy
        else "We cannot process unsubscribe requests right now; please try again later."
    )
    page = render("Unsubscribe unavailable", text, status=503, element_id="unavailable")
    page.headers["Retry-After"] = str(RETRY_BUSY_S if busy else RETRY_UNAVAILABLE_S)
    return page


# -- data --------------------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0][:300] if text else exc.__class__.__name__


def _connection(conn_id: str, what: str) -> Any:
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    try:
        return Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        raise Unavailable(f"Airflow connection {conn_id!r} is not defined: it names {what}") from None
    except Exception as exc:
        raise Unavailable(f"cannot read Airflow connection {conn_id!r}: {exc.__class__.__name__}") from None


def _package() -> None:
    try:
        import include.triggerflow.unsubscribe  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f"the triggerflow package cannot be imported ({exc.name}): put the project root on the API server's PYTHONPATH") from None


def get_links() -> Any:
    """UnsubscribeLinks from connection ``triggerflow_unsubscribe`` (a look-up and a key
    derivation: use :func:`_signer`, which caches it); Unavailable if unusable."""
    _package()
    from include.triggerflow.hooks.unsubscribe import (
        UnsubscribeConfigError,
        links_from_connection,
    )

    conn = _connection(LINKS_CONN_ID, "the unsubscribe links' base URL and signing secret")
    try:
        return links_from_connection(conn)
    except UnsubscribeConfigError as exc:  # messages never contain the secret
        raise Unavailable(str(exc)) from None


def get_store() -> Any:
    """The guarded store engine from connection ``triggers_db`` (short timeouts, a pool no larger
    than the gate; see :func:`_guard`). Use :func:`_store`, which caches it."""
    _package()
    from include.triggerflow.store.engines import StoreConfigError, request_url_from_connection

    conn = _connection(STORE_CONN_ID, "the triggerflow store")
    try:
        return _guard().engine(request_url_from_connection(conn, connect_timeout_s=PG_CONNECT_TIMEOUT_S))
    except StoreConfigError as exc:
        raise Unavailable(str(exc)) from None


class _Caches:
    """The process's look-up caches (built on first request: the plugin's import stays cheap)."""

    def __init__(self) -> None:
        from include.triggerflow.store.guarded import TTLCache

        self.links: Any = TTLCache(CACHE_TTL_S, error_ttl_s=ERROR_TTL_S, cache_errors=(Unavailable,))
        self.store: Any = TTLCache(CACHE_TTL_S, error_ttl_s=ERROR_TTL_S, cache_errors=(Unavailable,))


_caches: _Caches | None = None


def _cache() -> _Caches:
    global _caches
    if _caches is None:
        _package()
        _caches = _Caches()
    return _caches


def _guard() -> Any:
    from include.triggerflow.store.guarded import StoreGuard

    return StoreGuard.shared(GUARD_NAME)


def reset_caches() -> None:
    """Forget the cached signer and store engine (tests; after changing a connection the API
    server otherwise sees it within CACHE_TTL_S)."""
    global _caches
    _caches = None
    try:
        from include.triggerflow.store.guarded import StoreGuard
    except ImportError:  # pragma: no cover - the package is not importable: nothing was cached
        return
    StoreGuard.shared(GUARD_NAME).dispose()


async def _signer() -> Any:
    """The cached UnsubscribeLinks (one look-up and key derivation per CACHE_TTL_S)."""
    return await _cache().links.aget(LINKS_CONN_ID, get_links, wait_s=LOOKUP_WAIT_S)


async def _store() -> Any:
    """The cached guarded store engine."""
    return await _cache().store.aget(STORE_CONN_ID, get_store, wait_s=LOOKUP_WAIT_S)


def _check_format(token: str | None) -> None:
    """Text checks of the token, before anything is looked up (InvalidUnsubscribeToken)."""
    _package()
    from include.triggerflow.unsubscribe import (
        InvalidUnsubscribeToken,
        check_token_format,
    )

    if not token:
        raise InvalidUnsubscribeToken("missing", "no unsubscribe token in the request")
    check_token_format(token)


async def _form_fields(request: Request) -> dict[str, list[str]]:
    """The POST body's fields: application/x-www-form-urlencoded or multipart/form-data (RFC 8058
    allows both), read up to MAX_BODY_BYTES."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest("The request is too large.")
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() == "multipart/form-data":
        from email.parser import BytesParser
        from email.policy import HTTP

        message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
        fields: dict[str, list[str]] = {}
        if message.is_multipart():
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if name:
                    payload = part.get_payload(decode=True)
                    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
                    fields.setdefault(str(name), []).append(text.strip())
        return fields
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)


# What each route logs when it cannot answer normally (the texts operators grep for).
_BUSY_LOG = {"GET": "unsubscribe: busy (GET): %s", "POST": "unsubscribe: busy, answered 503 (POST): %s"}
_FAILED_LOG = {"GET": "unsubscribe: GET failed: %s: %s", "POST": "unsubscribe: could not record an opt-out: %s: %s"}


def _failure_page(exc: Exception, method: str) -> HTMLResponse:
    """The answer of either route to what stopped it, logged: a refused token or request (400,
    with its hint), a busy store or an unusable configuration (the generic 503), anything else
    (503; its class and first line in the log, never a traceback nor the token)."""
    if isinstance(exc, BadRequest):
        log.info("unsubscribe: refused a %s: %s", method, exc)
        return render("Not an unsubscribe request", str(exc), status=400, element_id="invalid")
    if isinstance(exc, Unavailable):
        log.warning("unsubscribe: unavailable (%s): %s", method, exc)
        return _unavailable_page()
    from include.triggerflow.store.guarded import StoreBusy  # importable: Unavailable says when not
    from include.triggerflow.unsubscribe import InvalidUnsubscribeToken

    if isinstance(exc, InvalidUnsubscribeToken):
        log.info("unsubscribe: refused a link (%s, %s): %s", method, exc.reason, exc)
        return _invalid_page(exc.reason)
    if isinstance(exc, StoreBusy):
        log.warning(_BUSY_LOG[method], exc)
        return _unavailable_page(busy=True)
    log.error(_FAILED_LOG[method], exc.__class__.__name__, _first_line(exc))
    return _unavailable_page()


# -- the app -----------------------------------------------------------------------------------------
app = FastAPI(title="triggerflow unsubscribe", docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/", response_class=HTMLResponse)
async def confirm(request: Request) -> HTMLResponse:
    """The footer link: verify, then offer the button. Records nothing and needs no store; with
    the signer cached it runs in the event loop without a worker thread."""
    token = request.query_params.get(TOKEN_PARAM)
    try:
        _check_format(token)
        links = await _signer()
        links.verify(token)
    except Exception as exc:
        return _failure_page(exc, "GET")
    return render(
        "Unsubscribe",
        "Do you want to stop receiving these emails? Press the button to unsubscribe.",
        status=200,
        form_token=token,
        element_id="question",
    )


@app.post("/", response_class=HTMLResponse)
async def unsubscribe(request: Request) -> HTMLResponse:
    """RFC 8058 one-click (or the page's button): check the format, verify the signature, then
    record under the store guard, confirm."""
    from include.triggerflow.unsubscribe import (
        METHOD_ONE_CLICK,
        METHOD_PAGE,
        log_opt_out,
        record_opt_out_in,
    )

    token = request.query_params.get(TOKEN_PARAM)
    try:
        _check_format(token)
        links = await _signer()
        claim = links.verify(token)
        fields = await _form_fields(request)
        if fields.get(ONE_CLICK_FIELD, [None])[-1] != ONE_CLICK_VALUE:
            raise BadRequest(f"This is not an unsubscribe request (expected {ONE_CLICK_FIELD}={ONE_CLICK_VALUE}).")
        method = METHOD_PAGE if fields.get(VIA_FIELD, [None])[-1] == VIA_PAGE else METHOD_ONE_CLICK
        engine = await _store()
        recorded = await _guard().acall(engine, record_opt_out_in, claim, method=method)
    except Exception as exc:
        return _failure_page(exc, "POST")
    log_opt_out(claim, recorded, method)
    return render(
        "You are unsubscribed",
        "Done: you will not receive these emails any more.",
        status=200,
        element_id="done",
    )


class UnsubscribePlugin(AirflowPlugin):
    name = "triggerflow_unsubscribe"
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "triggerflow unsubscribe"}]  # noqa: RUF012 - AirflowPlugin declares it
