"""The console's "reprocess" action: start ``trigger_reprocess`` through Airflow's REST API, as the
operator who pressed the button.

**As the calling user.** The request to ``POST {api}/api/v2/dags/trigger_reprocess/dagRuns``
carries the caller's own token (their ``Authorization: Bearer`` header, or the UI's ``_token``
cookie value sent as a Bearer token), never a service credential: Airflow's authorization decides
whether this user may trigger the DAG, and its audit log names them.

**Where the API is.** ``$TRIGGERFLOW_AIRFLOW_API_URL`` when set (a reverse proxy, a ``[api]
base_url`` with a path), else the address the API server itself is listening on (the ASGI
``server`` of the request, not its Host header: a header cannot send the user's token elsewhere).

**CSRF.** The form carries :func:`csrf_token`: an HMAC keyed by the caller's session token over
the user's id, so it is bound to that user and session, needs no server-side state (every API
server worker computes the same), and another site — which cannot read the httponly cookie —
cannot compute it. The POST must also come from this origin (``Origin``, else ``Referer``,
matching the Host the browser addressed). Both are checked before anything is parsed further.

**Inputs.** ``since``/``until`` are ISO 8601 (naive = UTC), ``since < until``, at most
:data:`~include.triggerflow.console.queries.MAX_RANGE` apart; ``what`` is one of the DAG's
``what`` values. Each refusal says which field and why.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from include.triggerflow.console.queries import MAX_RANGE, clip

API_URL_ENV = "TRIGGERFLOW_AIRFLOW_API_URL"
DAG_ID = "trigger_reprocess"
#: the reprocess DAG's ``what`` param (include/triggerflow/stages/reprocess.py WHAT)
WHAT = ("quarantined", "unmatched", "both")
#: the UI's session cookie (Airflow's COOKIE_NAME_JWT_TOKEN)
SESSION_COOKIE = "_token"
CSRF_FIELD = "csrf_token"
_CSRF_CONTEXT = b"triggerflow-console-reprocess-v1|"
API_TIMEOUT_S = 15.0
#: the largest form body read (four short fields)
MAX_FORM_BYTES = 4096


class ReprocessRefused(Exception):
    """The request cannot be sent on: ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# -- who is calling ---------------------------------------------------------------------------------
def caller_token(headers: Any, cookies: Any) -> str | None:
    """The token the caller authenticated with: the Bearer header wins (as in Airflow's get_user),
    else the UI's session cookie."""
    auth = headers.get("authorization") or ""
    scheme, _, credentials = auth.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    token = cookies.get(SESSION_COOKIE)
    return token or None


def user_key(user: Any) -> str:
    """A stable name of the user the token was issued to (their id, else their name)."""
    for attr in ("get_id", "get_name"):
        getter = getattr(user, attr, None)
        if callable(getter):
            value = getter()
            if value:
                return str(value)
    return ""


def csrf_token(session_token: str, user: str) -> str:
    """The form's CSRF token: HMAC-SHA256 keyed by the session token, over the user id."""
    return hmac.new(session_token.encode(), _CSRF_CONTEXT + user.encode(), hashlib.sha256).hexdigest()


def check_csrf(submitted: str | None, session_token: str | None, user: str) -> None:
    if not session_token:
        raise ReprocessRefused("no session: log in to Airflow again", 401)
    if not submitted or not hmac.compare_digest(submitted, csrf_token(session_token, user)):
        raise ReprocessRefused(
            "the form's CSRF token does not match this session (a form from another site, or your "
            "session was renewed): reload the page and press reprocess again", 403
        )


def _origin_of(url: str) -> tuple[str, str] | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return parts.scheme.lower(), parts.netloc.lower()


def check_same_origin(headers: Any) -> None:
    """The POST comes from a page of this server: its Origin (else Referer) names the host the
    browser addressed (Host, or X-Forwarded-Host behind a proxy; a cross-site form cannot set
    either)."""
    claimed = headers.get("origin")
    if not claimed or claimed == "null":
        claimed = headers.get("referer")
    origin = _origin_of(claimed) if claimed else None
    if origin is None:
        raise ReprocessRefused("refused: the request does not say which page sent it (no Origin or Referer header)", 403)
    hosts = {h.strip().lower() for h in (headers.get("host"), headers.get("x-forwarded-host")) if h}
    if origin[1] not in hosts:
        raise ReprocessRefused("refused: the form was sent from another site (its Origin is not this server)", 403)


# -- the inputs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReprocessRequest:
    since: datetime
    until: datetime
    what: str

    def conf(self) -> dict[str, str]:
        """The DAG run's conf: the params trigger_reprocess reads (ISO 8601, UTC offset given)."""
        return {"since": self.since.isoformat(), "until": self.until.isoformat(), "what": self.what}


def parse_time(field: str, raw: str | None) -> datetime:
    text = (raw or "").strip()
    if not text:
        raise ReprocessRefused(f"{field} is required (UTC, ISO 8601, e.g. 2026-03-01T12:00:00Z)")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ReprocessRefused(f"{field} is not an ISO 8601 time: {clip(text, 60)!r}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def validate(since: str | None, until: str | None, what: str | None) -> ReprocessRequest:
    start, end = parse_time("since", since), parse_time("until", until)
    if start >= end:
        raise ReprocessRefused("since must be before until")
    if end - start > MAX_RANGE:
        raise ReprocessRefused(f"the range is longer than {MAX_RANGE.days} days: reprocess it in parts")
    chosen = (what or "").strip()
    if chosen not in WHAT:
        raise ReprocessRefused(f"what must be one of {', '.join(WHAT)}")
    return ReprocessRequest(start, end, chosen)


async def read_form(request: Any) -> dict[str, str]:
    """The POSTed form, read up to :data:`MAX_FORM_BYTES` (a larger body is refused while it
    streams in, never held whole)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise ReprocessRefused("the form is too large", 413)
    return parse_form(body)


def parse_form(body: bytes) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (last value of each field wins)."""
    from urllib.parse import parse_qsl

    if len(body) > MAX_FORM_BYTES:
        raise ReprocessRefused("the form is too large", 413)
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=16))
    except (UnicodeDecodeError, ValueError):
        raise ReprocessRefused("the form is not readable") from None


# -- Airflow's API ----------------------------------------------------------------------------------
def api_base(scope: Any) -> str:
    """Airflow's API root: $TRIGGERFLOW_AIRFLOW_API_URL, else this server's own listening address."""
    configured = os.environ.get(API_URL_ENV, "").strip()
    if configured:
        return configured.rstrip("/")
    server = scope.get("server")
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    if not server or server[1] is None:
        raise ReprocessRefused(f"cannot tell where Airflow's API is: set ${API_URL_ENV}", 500)
    host = str(server[0])
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # listening on every address: this host reaches itself locally
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{int(server[1])}"


@dataclass(frozen=True)
class Started:
    dag_run_id: str
    state: str
    url: str  # the run in Airflow's UI (relative to the server root)
    paused: bool = False  # the DAG is paused: the run waits queued until someone unpauses it


def _api_error(status: int, body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    try:
        detail = json.loads(text).get("detail", text)
    except (ValueError, AttributeError):
        detail = text
    if not isinstance(detail, str):
        detail = json.dumps(detail)
    return f"Airflow's API answered {status}: {clip(detail, 500)}"


async def start_run(base: str, token: str, request: ReprocessRequest, *, timeout_s: float = API_TIMEOUT_S) -> Started:
    """POST the DAG run as the token's user; raises :class:`ReprocessRefused` with the API's answer."""
    import httpx

    url = f"{base}/api/v2/dags/{DAG_ID}/dagRuns"
    try:
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
            response = await client.post(
                url, json={"logical_date": None, "conf": request.conf()}, headers={"Authorization": f"Bearer {token}"}
            )
    except httpx.HTTPError as exc:
        raise ReprocessRefused(f"Airflow's API at {base} cannot be reached: {exc.__class__.__name__}: {clip(exc, 200)}", 502) from None
    if response.status_code not in (200, 201):
        status = response.status_code if 400 <= response.status_code < 500 else 502
        raise ReprocessRefused(_api_error(response.status_code, response.content), status)
    try:
        answer = response.json()
        run_id = str(answer["dag_run_id"])
    except (ValueError, KeyError, TypeError):
        raise ReprocessRefused("Airflow's API answered without a dag_run_id", 502) from None
    paused = await _is_paused(base, token, timeout_s)
    return Started(run_id, str(answer.get("state") or ""), f"/dags/{DAG_ID}/runs/{quote(run_id, safe='')}", paused)


async def _is_paused(base: str, token: str, timeout_s: float) -> bool:
    """Whether the DAG is paused (new DAGs are): the page then says the run waits. Best effort:
    the run is started either way, so a failed look-up only leaves the note out."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
            response = await client.get(f"{base}/api/v2/dags/{DAG_ID}", headers={"Authorization": f"Bearer {token}"})
        return response.status_code == 200 and response.json().get("is_paused") is True
    except (httpx.HTTPError, ValueError, AttributeError):
        return False
