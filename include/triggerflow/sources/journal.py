"""Adobe I/O Events journaling: the public pull route to Analytics trigger messages.

``GET <journal url>?since=<position>&limit=<n>`` with ``Authorization: Bearer``, ``x-api-key``
(the client id) and ``x-ims-org-id``; 200 gives ``{"events": [{"position", "event": {"event_id",
"event": <pipeline envelope>}}], "_page": {"last", "count"}}`` and a ``Link: rel="next"``; 204
with ``retry-after`` means nothing newer (reference/adobe-triggers.md §1.11, IOE-JRN).

The journal is one ordered stream, so it is stored as partition 0 with the journal position.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qs, urlparse

import msgspec
import requests

from include.triggerflow.sources.base import Page, RawMessage, SourceError

log = logging.getLogger(__name__)

JOURNAL_PARTITION = 0
RETRYABLE_STATUS = {429, 500, 502, 503, 504}


# The page is decoded with msgspec (installed with Airflow) into these shapes, and each pipeline
# envelope is kept as the raw bytes it arrived as: decoding a whole page with json and re-encoding
# every envelope cost ~90 us per message, the slowest step of a backlog drain.
class _Wrapped(msgspec.Struct):
    """An I/O Events event: ``{"event_id", "event": <pipeline envelope>}``."""

    event: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


class _Item(msgspec.Struct):
    position: Any = None
    event: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


class _PageInfo(msgspec.Struct):
    last: Any = None


class _Body(msgspec.Struct):
    events: list[_Item] | None = None
    _page: _PageInfo | None = msgspec.field(default=None, name="_page")


_decode_body = msgspec.json.Decoder(_Body).decode
_decode_wrapped = msgspec.json.Decoder(_Wrapped).decode


def _payload(inner: msgspec.Raw) -> str:
    """The envelope text of one journal item: the inner ``event`` of an I/O Events wrapper, or
    the item's event itself; a JSON string is stored as its text (as landed before)."""
    raw = bytes(inner)
    if raw[:1] == b"{":
        try:
            wrapped = _decode_wrapped(raw)
        except msgspec.DecodeError:
            wrapped = None
        if wrapped is not None and len(wrapped.event):
            raw = bytes(wrapped.event)
    if raw[:1] == b'"':
        return str(msgspec.json.decode(raw))
    return raw.decode("utf-8")


class JournalSource:
    """Reads an I/O Events journal registration."""

    def __init__(
        self,
        *,
        journal_url: str,
        api_key: str,
        org_id: str,
        token_provider: Callable[[bool], str],
        page_limit: int = 500,
        reset: str = "earliest",
        timeout: float = 30.0,
        max_tries: int = 4,
        max_retry_wait_s: float = 30.0,
        session: requests.Session | None = None,
    ) -> None:
        if reset not in {"earliest", "latest"}:
            raise SourceError(f"adobe_triggers: reset must be 'earliest' or 'latest', not {reset!r}")
        self.journal_url = journal_url
        self.api_key = api_key
        self.org_id = org_id
        self._token = token_provider
        self.page_limit = page_limit
        self.reset = reset
        self.timeout = timeout
        self.max_tries = max_tries
        self.max_retry_wait_s = max_retry_wait_s
        self.session = session or requests.Session()
        # Keyed by the registration path, not the host: moving the emulator to another port, or
        # Adobe's host name changing, must not reset the stored position.
        self.source_key = f"journal:{urlparse(journal_url).path}"
        self.endpoint = journal_url

    def read(self, positions: Mapping[int, str], max_messages: int) -> Iterator[Page]:
        since = positions.get(JOURNAL_PARTITION)
        remaining = max_messages
        while remaining > 0:
            params: dict[str, str | int] = {"limit": min(self.page_limit, remaining)}
            if since:
                params["since"] = since
            elif self.reset == "latest":
                params["latest"] = "true"
            resp = self._get(params)
            if resp.status_code == 204:
                if not since and self.reset == "latest":
                    # Nothing newer than "latest" yet. Pin the end of the journal (the 204's
                    # Link: rel="next" carries it) so the next read continues from here; without
                    # a stored position every read would start at the end again and skip
                    # whatever arrived in between.
                    pinned = _since_of(resp.links.get("next", {}).get("url"))
                    if pinned:
                        yield Page(messages=[], next_positions={JOURNAL_PARTITION: pinned})
                return
            try:
                body = _decode_body(resp.content)
            except msgspec.DecodeError as exc:
                raise SourceError(f"journal answered 200 with a body that is not a journal page: {exc}") from None
            items = body.events or []
            if not items:
                return
            messages = [
                RawMessage(partition=JOURNAL_PARTITION, position=str(item.position), payload=_payload(item.event))
                for item in items
            ]
            last = str((body._page.last if body._page is not None else None) or messages[-1].position)
            yield Page(messages=messages, next_positions={JOURNAL_PARTITION: last}, bytes_read=len(resp.content))
            since = last
            remaining -= len(messages)

    def _headers(self, refresh: bool) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._token(refresh)}",
            "x-api-key": self.api_key,
            "x-ims-org-id": self.org_id,
            "Accept": "application/json",
        }

    def _get(self, params: Mapping[str, str | int]) -> requests.Response:
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = self.session.get(
                    self.journal_url, params=params, headers=self._headers(refreshed), timeout=self.timeout
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt >= self.max_tries:
                    raise SourceError(
                        f"journal {self.journal_url} unreachable after {attempt} tries: {exc.__class__.__name__}"
                    ) from None
                self._sleep(None, attempt)
                continue
            if resp.status_code in (200, 204):
                return resp
            if resp.status_code == 401:
                if refreshed:
                    raise SourceError(
                        "journal refused a freshly minted IMS token (401 twice): check that the "
                        "adobe_ims credential has access to this registration"
                    )
                refreshed = True  # the token expired or was revoked: mint a new one once
                continue
            if resp.status_code in RETRYABLE_STATUS and attempt < self.max_tries:
                self._sleep(resp.headers.get("retry-after"), attempt)
                continue
            raise SourceError(f"journal answered HTTP {resp.status_code}: {resp.text[:300]}")

    def _sleep(self, retry_after: str | None, attempt: int) -> None:
        try:
            wait = float(retry_after) if retry_after is not None else 0.5 * 2 ** (attempt - 1)
        except ValueError:
            wait = 0.5 * 2 ** (attempt - 1)
        wait = min(wait, self.max_retry_wait_s)
        log.warning("journal busy or unreachable, retrying in %.1f s (try %d)", wait, attempt)
        time.sleep(wait)


def _since_of(link_url: str | None) -> str | None:
    """The ``since`` position of a journal Link URL, if it has one."""
    if not link_url:
        return None
    values = parse_qs(urlparse(link_url).query).get("since")
    return values[-1] if values else None
