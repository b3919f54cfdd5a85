"""The Triggers console's routes, mounted in the ``pipelined`` plugin's app (/pipelined/...).

    GET  /runs[?limit=50]                       the latest batches with their counts, balance, latency
    GET  /run?batch_id=...[&offset=]            one run's ledger: who was sent what, state, SMTP reply
    GET  /quarantine?batch_id=... | ?since=&until=   quarantined events, reasons, payload (truncated)
    POST /reprocess                             start trigger_reprocess through Airflow's API, as the caller
    GET  /search?q=<customer id or address>     "why did this customer not get the email"
    GET  /alerts                                active alerts, then the last resolved ones

The plugin builds the router (:func:`build_router`) with its own pieces: the authentication
dependency (always an authenticated Airflow user, even when the status page is public: these views
show customer data), the guarded store read, and its error page. Imported when the plugin loads, so
this module imports only FastAPI and the standard library at the top.

Every value a page shows comes from the store or the request and is written by a Jinja2 template
with autoescape (include/triggerflow/pages.py); links carry values only as url-encoded query values.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations, which name
# the dependency passed to build_router (a closure variable, not a module global).
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse


class ConsoleUnavailable(Exception):
    """The store cannot be read now: answered with the plugin's error page (503)."""

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers or {}


Read = Callable[..., Awaitable[Any]]
NO_STORE = {"Cache-Control": "no-store"}
#: the longest batch id / query text the console looks up (tf_batch.batch_id is 250 characters)
MAX_KEY_CHARS = 320


def build_router(*, require_operator: Callable[..., Any], read: Read, error_page: Callable[[str], str]) -> APIRouter:
    """The console's routes. ``read(fn, *args)`` runs ``fn(conn, *args)`` in one guarded read
    transaction (raising :class:`ConsoleUnavailable`); ``error_page(message)`` is the 503 page."""
    router = APIRouter()
    User = Annotated[Any, Depends(require_operator)]

    def html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
        return HTMLResponse(body, status_code=status, headers={**NO_STORE, **(headers or {})})

    def unavailable(exc: ConsoleUnavailable) -> HTMLResponse:
        return html(error_page(str(exc)), 503, exc.headers)

    def not_found(title: str, message: str, here: str) -> HTMLResponse:
        from include.triggerflow.pages import console_message_page

        return html(console_message_page(title, message, here=here), 404)

    @router.get("/runs", response_class=HTMLResponse)
    async def runs(_user: User, limit: int = Query(50)) -> HTMLResponse:
        from include.triggerflow.console import queries
        from include.triggerflow.pages import runs_page

        limit = max(1, min(limit, queries.MAX_RUNS))
        try:
            rows = await read(queries.latest_runs, limit)
        except ConsoleUnavailable as exc:
            return unavailable(exc)
        return html(runs_page(rows, limit=limit))

    @router.get("/run", response_class=HTMLResponse)
    async def run(_user: User, batch_id: str = Query(""), offset: int = Query(0)) -> HTMLResponse:
        from include.triggerflow.console import queries
        from include.triggerflow.pages import run_page

        def load(conn: Any) -> Any:
            info = queries.batch_info(conn, batch_id)
            return None if info is None else (info, *queries.ledger(conn, batch_id, offset=max(0, offset)))

        if not batch_id or len(batch_id) > MAX_KEY_CHARS:
            return not_found("Unknown run", "no batch_id given, or not one this store holds", "runs")
        try:
            found = await read(load)
        except ConsoleUnavailable as exc:
            return unavailable(exc)
        if found is None:
            return not_found("Unknown run", f"no batch {batch_id} in the store (deleted by retention, or never landed)", "runs")
        info, total, rows = found
        return html(run_page(info, total, rows, offset=max(0, offset), page_rows=queries.PAGE_ROWS))

    @router.get("/quarantine", response_class=HTMLResponse)
    async def quarantine(
        request: Request, user: User, batch_id: str = Query(""), since: str = Query(""), until: str = Query(""), offset: int = Query(0)
    ) -> HTMLResponse:
        from include.triggerflow.console import queries, reprocess
        from include.triggerflow.pages import iso, quarantine_page
        from include.triggerflow.stages.reprocess import time_range

        offset = max(0, offset)
        token = reprocess.caller_token(request.headers, request.cookies)
        csrf = reprocess.csrf_token(token, reprocess.user_key(user)) if token else None
        common: dict[str, Any] = {"page_rows": queries.PAGE_ROWS, "clip_chars": queries.CLIP_CHARS}

        if batch_id:
            def load(conn: Any) -> Any:
                info = queries.batch_info(conn, batch_id)
                if info is None:
                    return None
                return (info, queries.batch_range(conn, info), *queries.batch_quarantine(conn, batch_id, offset=offset))

            if len(batch_id) > MAX_KEY_CHARS:
                return not_found("Unknown run", "not a batch this store holds", "quarantine")
            try:
                found = await read(load)
            except ConsoleUnavailable as exc:
                return unavailable(exc)
            if found is None:
                return not_found("Unknown run", f"no batch {batch_id} in the store (deleted by retention, or never landed)", "quarantine")
            info, (first, end), total, rows = found
            form = {"since": iso(first), "until": iso(end), "csrf": csrf} if csrf else None
            body = quarantine_page(batch=info, since=iso(first), until=iso(end), total=total, rows=rows, offset=offset, form=form, **common)
            return html(body)

        # a receive-time range; none given: the last day from the start of its hour (as trigger_reprocess)
        try:
            if since.strip() or until.strip():
                start = reprocess.parse_time("since", since)
                end = reprocess.parse_time("until", until)
            else:
                start, end = time_range(None, None)
            if start >= end:
                raise reprocess.ReprocessRefused("since must be before until")
            if end - start > queries.MAX_RANGE:
                raise reprocess.ReprocessRefused(f"the range is longer than {queries.MAX_RANGE.days} days: narrow it")
        except reprocess.ReprocessRefused as exc:
            return html(quarantine_page(since=since, until=until, error=str(exc), **common), 400)
        try:
            total, rows = await read(queries.range_quarantine, start, end, offset=offset)
        except ConsoleUnavailable as exc:
            return unavailable(exc)
        form = {"since": iso(start), "until": iso(end), "csrf": csrf} if csrf else None
        return html(quarantine_page(since=iso(start), until=iso(end), total=total, rows=rows, offset=offset, form=form, **common))

    @router.post("/reprocess", response_class=HTMLResponse)
    async def start_reprocess(request: Request, user: User) -> HTMLResponse:
        from include.triggerflow.console import reprocess
        from include.triggerflow.pages import href, reprocess_page

        fields: dict[str, str] = {}
        try:
            reprocess.check_same_origin(request.headers)  # before the body is even read
            fields = await reprocess.read_form(request)
            token = reprocess.caller_token(request.headers, request.cookies)
            reprocess.check_csrf(fields.get(reprocess.CSRF_FIELD), token, reprocess.user_key(user))
            assert token is not None  # check_csrf refused a request without one
            wanted = reprocess.validate(fields.get("since"), fields.get("until"), fields.get("what"))
            started = await reprocess.start_run(reprocess.api_base(request.scope), token, wanted)
        except reprocess.ReprocessRefused as exc:
            back = href("quarantine", since=fields.get("since"), until=fields.get("until")) if fields.get("since") else None
            return html(reprocess_page(error=str(exc), back_href=back), exc.status)
        conf = wanted.conf()
        return html(
            reprocess_page(
                started=started, since=conf["since"], until=conf["until"], what=conf["what"],
                back_href=href("quarantine", since=conf["since"], until=conf["until"]),
            )
        )

    @router.get("/search", response_class=HTMLResponse)
    async def search(_user: User, q: str = Query("")) -> HTMLResponse:
        from include.triggerflow.console import queries
        from include.triggerflow.pages import search_page

        q = q.strip()
        if not q:
            return html(search_page(""))
        if len(q) > MAX_KEY_CHARS:
            return html(search_page(q[:MAX_KEY_CHARS], error="too long for a customer id or an address"), 400)
        try:
            result = await read(queries.search, q)
        except ConsoleUnavailable as exc:
            return unavailable(exc)
        return html(search_page(q, result))

    @router.get("/alerts", response_class=HTMLResponse)
    async def alerts(_user: User) -> HTMLResponse:
        from include.triggerflow.console import queries
        from include.triggerflow.pages import alerts_page

        try:
            total, active, resolved = await read(queries.alerts)
        except ConsoleUnavailable as exc:
            return unavailable(exc)
        return html(alerts_page(total, active, resolved))

    return router
