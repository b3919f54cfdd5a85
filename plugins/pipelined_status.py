"""Airflow plugin: Campaign's ``pipelined`` status web service, served by the Airflow API server.

    GET /pipelined/status    the status document (JSON), same indicator names as Campaign's
                             ``GET :7781/pipelined/status`` (include/triggerflow/status.py)
    GET /pipelined/          the same as a page: the indicators to watch, a bar chart of messages
                             per hour over the last 5 days, and every indicator in a table
    ?source=KEY              either route, authenticated only: another source the store has read
                             (a ``tf_source_health`` row); any other key is a 404
    ?consumer=NAME           either route, authenticated only: the consumer name shown
    GET /pipelined/runs, /run, /quarantine, /search, /alerts; POST /pipelined/reprocess
                             the Triggers console an operator works from (always authenticated,
                             even in public mode: it shows customer data):
                             include/triggerflow/console/routes.py

The page also appears in the Airflow UI: a "Triggers status" entry in the navigation opens it in
an iframe (``/plugin/pipelined``).

**Authentication.** Plugin apps are not protected by Airflow (a mount inherits no dependency), so
every route here requires an authenticated Airflow user, checked with Airflow's own ``get_user``:
the UI's ``_token`` cookie (the iframe sends it), or ``Authorization: Bearer <token>`` for a
monitoring tool, with the token from ``POST /auth/token`` (``{"username": ..., "password": ...}``).
No token: 401; an invalid one: 403; an expired one: 401. Any authenticated user may read it (counts,
positions, the source host, routing and settings; no customer data).

**Public mode.** ``TRIGGERFLOW_STATUS_PUBLIC=true`` (in the API server's environment) turns
authentication off, for legacy monitors that polled Campaign's unauthenticated port. Anyone can
then poll it, so it serves ONE minimal document (:func:`public_document`): counters and ages only —
no consumer, source key, organisation/integration/registration ids, pipeline host, offsets,
routing map, settings or error text. Query parameters are ignored (no ``?source=``: a caller
cannot make it read anything else). Errors are a generic ``{"status": 503, "error": "status
unavailable"}`` (the reason goes to the API server log). A reverse proxy in front should still
rate-limit it per IP and fix the Host header (README, Monitoring).

**Cost.** The document is read from small summary tables (include/triggerflow/stats.py), so one
computation costs the same however many events are stored; and it is cached for
:data:`CACHE_TTL_S` seconds (``$TRIGGERFLOW_STATUS_CACHE_SECONDS``): one public document, or one per
source for authenticated users, so a burst of requests costs one store read. Store reads go through
the ``pipelined_status`` :class:`~include.triggerflow.store.guarded.StoreGuard`: short lock and
statement timeouts, at most a few at once, awaited without holding a thread; when all slots are
busy the answer is 503 with ``Retry-After``. Failures are cached for a few seconds too.

**Data.** Read in the API server process: the store from connection ``triggers_db`` and the
consumer and settings from ``adobe_triggers`` (``airflow.models.connection.Connection``, which
includes the metastore), the routing from ``include/routing.yaml`` (or $TRIGGERFLOW_ROUTING_FILE).
The project root must be importable (it is on PYTHONPATH under Astro). For an authenticated user a
missing connection or an unreachable store gives a 503 with the reason as JSON (as HTML on the
page), never a stack trace.

Plugins are imported by the scheduler, the DAG processor and the CLI too: this module imports
only FastAPI at the top; Airflow's security module, SQLAlchemy and the triggerflow package are
imported on the first request.
"""

from __future__ import annotations

import copy
import html
import logging
import os
import threading
from typing import Annotated, Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

log = logging.getLogger(__name__)

PREFIX = "/pipelined"
PUBLIC_ENV = "TRIGGERFLOW_STATUS_PUBLIC"
CACHE_ENV = "TRIGGERFLOW_STATUS_CACHE_SECONDS"
STORE_CONN_ID = "triggers_db"
SOURCE_CONN_ID = "adobe_triggers"
PG_CONNECT_TIMEOUT_S = 5
PAGE_REFRESH_S = 60
#: how long a computed document is served again (seconds; $TRIGGERFLOW_STATUS_CACHE_SECONDS)
CACHE_TTL_S = 5.0
#: the name of this plugin's store guard (its own slots: the unsubscribe plugin has others)
GUARD_NAME = "pipelined_status"
#: what a public caller sees when the status cannot be computed; the reason is logged
PUBLIC_ERROR = "status unavailable"
#: Campaign's advice: watch these three, which should stay at 0 (reference §4)
WATCHED = ("current-messages", "trigger-discarded", "trigger-failures")
#: the only parts of the document the public mode serves: counters and ages
PUBLIC_FIELDS: dict[str, tuple[str, ...] | None] = {
    "generated-at": None,
    "http-request": ("last-alive-ms-ago", "last-failed-cnx-ms-ago", "last-data-ms-ago", "empty-reads"),
    "pointer": ("last-flush-ms-ago", "processed-since-last-flush"),
    "stats": None,
    "messages-per-hour": None,
    "warnings": None,
}


class StatusUnavailable(Exception):
    """The status cannot be computed; the message says why and what to check (served as 503 to
    authenticated users, as a generic 503 in public mode)."""


class UnknownSource(Exception):
    """``?source=`` names no source the store has read (404)."""


def status_is_public() -> bool:
    return os.environ.get(PUBLIC_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def cache_ttl_s() -> float:
    raw = os.environ.get(CACHE_ENV, "").strip()
    if not raw:
        return CACHE_TTL_S
    try:
        value = float(raw)
    except ValueError:
        log.warning("pipelined status: %s=%r is not a number of seconds; using %s", CACHE_ENV, raw, CACHE_TTL_S)
        return CACHE_TTL_S
    return min(max(value, 0.5), 300.0)  # at least a burst's worth, at most 5 minutes


async def require_user(request: Request) -> Any:
    """An authenticated Airflow user (Bearer header, else the UI's ``_token`` cookie), unless
    $TRIGGERFLOW_STATUS_PUBLIC is true. Airflow's ``get_user`` raises 401/403 itself."""
    if status_is_public():
        return None
    return await _authenticated_user(request)


async def require_operator(request: Request) -> Any:
    """An authenticated Airflow user whatever $TRIGGERFLOW_STATUS_PUBLIC says: the console's views
    show customer data (addresses, payloads) and start DAG runs."""
    return await _authenticated_user(request)


async def _authenticated_user(request: Request) -> Any:
    # Imported here: it costs ~1.7 s and plugins load in every Airflow process.
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    credentials = await bearer_scheme(request)
    try:
        return await get_user(request, _oauth_token=None, bearer_credentials=credentials)
    except RuntimeError as exc:  # get_auth_manager(): not running inside an initialised API server
        log.warning("pipelined status: cannot check the token: %s", exc)
        raise HTTPException(status_code=503, detail="Airflow's auth manager is not initialised in this process") from None


# -- the guard and the cache (built on first use: they import SQLAlchemy) ---------------------------
_state_lock = threading.Lock()
_guard: Any = None
_cache: Any = None


def store_guard() -> Any:
    """This plugin's :class:`StoreGuard` (short timeouts, bounded concurrency, cached engines)."""
    global _guard
    with _state_lock:
        if _guard is None:
            from include.triggerflow.store.guarded import StoreGuard

            _guard = StoreGuard.shared(GUARD_NAME)
        return _guard


def document_cache() -> Any:
    """The documents computed lately, by ``("public",)`` or ``("user", source)``; failures
    (:class:`StatusUnavailable`) are kept for a few seconds too."""
    global _cache
    with _state_lock:
        if _cache is None:
            from include.triggerflow.store.guarded import TTLCache

            _cache = TTLCache(cache_ttl_s(), error_ttl_s=min(5.0, cache_ttl_s()), cache_errors=(StatusUnavailable,))
        return _cache


def reset() -> None:
    """Forget the cached documents and the guard's engines (tests; a changed connection)."""
    global _cache
    with _state_lock:
        _cache = None
        if _guard is not None:
            _guard.dispose()


# -- collecting the document -------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _connection(conn_id: str, *, required: bool) -> Any:
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    try:
        return Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        if required:
            raise StatusUnavailable(
                f"Airflow connection {conn_id!r} is not defined: it names the triggerflow store "
                "(see README, Connections)"
            ) from None
    except Exception as exc:
        if required:
            raise StatusUnavailable(f"cannot read Airflow connection {conn_id!r}: {_first_line(exc)}") from None
        log.warning("pipelined status: connection %s unreadable: %s", conn_id, _first_line(exc))
    return None


def _store_url(conn: Any) -> str:
    from include.triggerflow.store.engines import StoreConfigError, request_url_from_connection

    try:
        return request_url_from_connection(conn, connect_timeout_s=PG_CONNECT_TIMEOUT_S)
    except StoreConfigError as exc:
        raise StatusUnavailable(str(exc)) from None


def collect_status(source: str | None = None, consumer: str | None = None) -> dict[str, Any]:
    """The status document, from the Airflow connections, read in one guarded transaction
    (call it holding a slot of :func:`store_guard`) by the collector the CLI uses too
    (``include.triggerflow.status.collector``). Raises :class:`StatusUnavailable`, or
    :class:`UnknownSource` when ``source`` is not a source the store has read."""
    try:
        from sqlalchemy.exc import SQLAlchemyError

        from include.triggerflow.status import collector
        from include.triggerflow.store.engines import describe
    except ImportError as exc:
        raise StatusUnavailable(
            f"the triggerflow package cannot be imported ({exc}): put the project root on the API "
            "server's PYTHONPATH"
        ) from None

    guard = store_guard()
    engine = guard.engine(_store_url(_connection(STORE_CONN_ID, required=True)))
    source_conn = _connection(SOURCE_CONN_ID, required=False)
    try:
        with guard.transaction(engine) as conn:
            return collector.collect_status(conn, source_conn, source=source, consumer=consumer, known_only=True)
    except collector.UnknownSource:
        raise UnknownSource(source) from None
    except SQLAlchemyError as exc:
        raise StatusUnavailable(
            f"the triggerflow store at {describe(engine)} cannot be read: {_first_line(exc)} "
            "(if its tables are missing: python -m include.triggerflow.cli init-db, or run the DAG once)"
        ) from None


def _read_store(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(conn, *args, **kwargs)`` in one guarded read transaction of the store (the console's
    queries; call it holding a guard slot). Raises :class:`StatusUnavailable`."""
    try:
        from sqlalchemy.exc import SQLAlchemyError

        from include.triggerflow.store.engines import describe
    except ImportError as exc:
        raise StatusUnavailable(f"the triggerflow package cannot be imported ({exc}): put the project root on PYTHONPATH") from None
    guard = store_guard()
    engine = guard.engine(_store_url(_connection(STORE_CONN_ID, required=True)))
    try:
        with guard.transaction(engine) as conn:
            return fn(conn, *args, **kwargs)
    except SQLAlchemyError as exc:
        raise StatusUnavailable(
            f"the triggerflow store at {describe(engine)} cannot be read: {_first_line(exc)} "
            "(if its tables are missing: python -m include.triggerflow.cli init-db, or run the DAG once)"
        ) from None


async def read_store(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """The console's store read: under a guard slot (awaited in the event loop), in a worker
    thread; any failure becomes ConsoleUnavailable (503 page, never a stack trace)."""
    from include.triggerflow.console.routes import ConsoleUnavailable
    from include.triggerflow.store.guarded import StoreBusy

    try:
        return await store_guard().arun(lambda: _read_store(fn, *args, **kwargs))
    except StoreBusy as exc:
        log.warning("pipelined console: %s", exc)
        raise ConsoleUnavailable("the store is busy: try again shortly", {"Retry-After": str(exc.retry_after_s)}) from None
    except StatusUnavailable as exc:
        raise ConsoleUnavailable(str(exc)) from None
    except Exception as exc:
        log.exception("pipelined console: store read failed")
        raise ConsoleUnavailable(f"the store cannot be read: {exc.__class__.__name__}: {_first_line(exc)}") from None


async def active_alert_count() -> int | None:
    """Active alerts for the status page's link (None when they cannot be counted: the status
    page does not fail for it)."""
    try:
        from include.triggerflow.console.queries import active_alert_count as count

        return int(await read_store(count))
    except Exception as exc:
        log.warning("pipelined status: active alerts not counted: %s", _first_line(exc))
        return None


def _collect_or_raise(source: str | None, consumer: str | None = None) -> dict[str, Any]:
    try:
        return collect_status(source, consumer)
    except (StatusUnavailable, UnknownSource):
        raise
    except Exception as exc:
        log.exception("pipelined status failed")
        raise StatusUnavailable(f"status unavailable: {exc.__class__.__name__}: {_first_line(exc)}") from None


def public_document(document: dict[str, Any]) -> dict[str, Any]:
    """The public mode's document: :data:`PUBLIC_FIELDS` of ``document`` and nothing else —
    counters and ages; warnings by code only."""
    public: dict[str, Any] = {}
    for key, keep in PUBLIC_FIELDS.items():
        if key not in document:
            continue
        value = document[key]
        if keep is not None and isinstance(value, dict):
            value = {name: value.get(name) for name in keep}
        public[key] = copy.deepcopy(value)
    public["warnings"] = [{"code": w.get("code")} for w in public.get("warnings") or [] if isinstance(w, dict)]
    return public


def _load_public() -> dict[str, Any]:
    try:
        return public_document(_collect_or_raise(None))
    except StatusUnavailable as exc:
        log.warning("pipelined status (public): unavailable: %s", exc)  # the reason, for the operator only
        raise


async def get_document(public: bool, source: str | None, consumer: str | None) -> dict[str, Any]:
    """The document for this request: from the cache when fresh, else computed under a guard
    slot (waited for in the event loop). Raises StatusUnavailable, UnknownSource or StoreBusy."""
    cache = document_cache()
    key: tuple[Any, ...] = ("public",) if public else ("user", source)
    document = cache.peek(key)  # re-raises a cached failure
    if document is cache.MISSING:
        loader = _load_public if public else (lambda: _collect_or_raise(source))
        document = await store_guard().arun(cache.get, key, loader)
    if not public and consumer is not None and consumer.strip():
        document = {**document, "consumer": consumer.strip()}  # as resolve_consumer's explicit name
    return document


async def _answer(public: bool, source: str | None, consumer: str | None) -> tuple[dict[str, Any] | None, int, str, dict[str, str]]:
    """(document, status code, error text, headers) for either route."""
    from include.triggerflow.store.guarded import StoreBusy

    if public:
        source = consumer = None  # query parameters are ignored in public mode
    try:
        document = await get_document(public, source, consumer)
    except UnknownSource:
        return None, 404, "unknown source: not a source this store has read", {"Cache-Control": "no-store"}
    except StoreBusy as exc:
        log.warning("pipelined status: %s", exc)
        busy = PUBLIC_ERROR if public else "the store is busy: try again shortly"
        return None, 503, busy, {"Retry-After": str(exc.retry_after_s), "Cache-Control": "no-store"}
    except StatusUnavailable as exc:
        return None, 503, PUBLIC_ERROR if public else str(exc), {"Cache-Control": "no-store"}
    cache = f"max-age={int(cache_ttl_s())}" if public else "no-store"
    return document, 200, "", {"Cache-Control": cache}


# -- the page ----------------------------------------------------------------------------------------
def render_page(document: dict[str, Any], *, json_href: str = "status", active_alerts: int | None = None) -> str:
    """The status as an HTML page: watched indicators, the 5-day chart, then every indicator
    (include/templates/ui/status.html, Jinja2 with autoescape: include/triggerflow/pages.py)."""
    from include.triggerflow.pages import status_page

    return status_page(document, watched=WATCHED, json_href=json_href, refresh_s=PAGE_REFRESH_S, active_alerts=active_alerts)


def _error_page(message: str) -> str:
    try:
        from include.triggerflow.pages import status_error_page
    except ImportError:  # the package is not importable: the message says so; escape it here
        return f"<!doctype html><title>Triggers status unavailable</title><p id=\"error\">{html.escape(message)}</p>"
    return status_error_page(message, refresh_s=PAGE_REFRESH_S)


# -- the app -----------------------------------------------------------------------------------------
app = FastAPI(title="triggerflow pipelined status", docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/status")
async def status(
    source: str | None = Query(None, description="source key (authenticated only; default: the one adobe_triggers reads)"),
    consumer: str | None = Query(None, description="consumer name to show (authenticated only)"),
    _user: Annotated[Any, Depends(require_user)] = None,
) -> JSONResponse:
    document, code, error, headers = await _answer(status_is_public(), source, consumer)
    if document is None:
        return JSONResponse({"status": code, "error": error}, status_code=code, headers=headers)
    return JSONResponse(document, headers=headers)


@app.get("/", response_class=HTMLResponse)
async def page(
    request: Request,
    source: str | None = Query(None),
    consumer: str | None = Query(None),
    _user: Annotated[Any, Depends(require_user)] = None,
) -> HTMLResponse:
    public = status_is_public()
    document, code, error, headers = await _answer(public, source, consumer)
    if document is None:
        return HTMLResponse(_error_page(error), status_code=code, headers=headers)
    query = "" if public else request.url.query
    alerts = None if public else await active_alert_count()  # public mode: counters and ages only
    body = render_page(document, json_href="status" + (f"?{query}" if query else ""), active_alerts=alerts)
    return HTMLResponse(body, headers=headers)


class _LazyConsole:
    """The console's views (include/triggerflow/console/routes.py), mounted after the status
    routes and built on their first request: importing them imports the triggerflow package, which
    plugin loading in the scheduler, DAG processor and CLI must not pay for."""

    def __init__(self) -> None:
        self._app: Any = None
        self._lock = threading.Lock()

    def build(self) -> Any:
        with self._lock:
            if self._app is None:
                from include.triggerflow.console.routes import build_router

                console = FastAPI(title="triggerflow console", docs_url=None, redoc_url=None, openapi_url=None)
                console.dependency_overrides = app.dependency_overrides  # one set of overrides (tests)
                console.include_router(build_router(require_operator=require_operator, read=read_store, error_page=_error_page))
                self._app = console
            return self._app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            console = self._app or self.build()
        except ImportError as exc:  # the project root is not importable: say so, as the status page does
            log.warning("pipelined console not available: %s", exc)
            response = HTMLResponse(_error_page(f"the triggerflow package cannot be imported ({exc}): put the project root on PYTHONPATH"), status_code=503)
            await response(scope, receive, send)
            return
        await console(scope, receive, send)


console_app = _LazyConsole()
app.mount("", console_app)  # after "/status" and "/": every other path is the console's (or its 404)


class PipelinedStatusPlugin(AirflowPlugin):
    name = "pipelined_status"
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "pipelined status"}]  # noqa: RUF012 - Airflow's plugin API
    external_views = [  # noqa: RUF012 - Airflow's plugin API
        {
            "name": "Triggers status",
            "href": f"{PREFIX}/",
            "destination": "nav",
            "url_route": "pipelined",  # shown in the UI shell as an iframe at /plugin/pipelined
        }
    ]
