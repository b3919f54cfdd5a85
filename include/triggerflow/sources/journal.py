"""Adobe I/O Events journaling: the public pull route to Analytics trigger messages.

``GET <journal url>?since=<position>&limit=<n>`` with ``Authorization: Bearer``, ``x-api-key``
(the client id) and ``x-ims-org-id``; 200 gives ``{"events": [{"position", "event": {"event_id",
"event": <pipeline envelope>}}], "_page": {"last", "count"}}`` and a ``Link: rel="next"``; 204
with ``retry-after`` means nothing newer (reference/adobe-triggers.md §1.11, IOE-JRN).

The journal is one ordered stream, so it is stored as partition 0 with the journal position.

Hostile content never stalls the position (issue 10):

* Item bytes are never decoded here in a way that can fail: an envelope that is valid UTF-8 is
  handed over as text, anything else as the bytes received (landing decodes with replacement and
  keeps them). An item nested deeper than the JSON parser follows is split out of the page by a
  scanner that does not recurse, and lands at its position for validation to quarantine.
* An item without a usable position cannot be landed; it is counted in ``Page.dropped``
  ("journal item without a position") and the page still advances to ``_page.last``.
* Every page is read with a byte cap (``max_page_bytes``, default 64 MiB) and an overall deadline
  (``request_deadline_s``, default 60 s; socket ``timeout`` 30 s per read). A page over the cap is
  asked for again with half the ``limit``, down to 1; a single item still over the cap is skipped:
  the position moves to the page's ``Link: rel="next"`` (or the item's position, read from the
  first bytes) and the item is counted as dropped ("journal item larger than N bytes"). Raise
  ``max_page_bytes`` in the connection extras to land such items instead. A page whose next
  position cannot be found at all is a :class:`SourceError` naming the cap.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

import requests
import urllib3

from include.triggerflow.adobe.http import (
    RETRYABLE_STATUS,
    AdobeRetry,
    RetryableFailure,
    RetryPolicy,
    Unauthorized,
)
from include.triggerflow.adobe.ims_refusal import SourceCredentialsRefused
from include.triggerflow.sources.base import RESET_POLICIES, Page, ResetPolicy, SourceError
from include.triggerflow.sources.bounded import (
    AnswerTooLarge,
    BoundedReadError,
    DeadlinePassed,
    read_body,
)
from include.triggerflow.sources.journal_page import JOURNAL_PARTITION, parse_page, position_text

log = logging.getLogger(__name__)

DEFAULT_MAX_PAGE_BYTES = 64 * 1024 * 1024
DEFAULT_REQUEST_DEADLINE_S = 60.0
DEFAULT_TIMEOUT_S = 30.0
ERROR_BODY_BYTES = 64 * 1024
# Where an over-cap single-item page says its position: {"events":[{"position":"..."
_HEAD_POSITION = re.compile(rb'"position"\s*:\s*"((?:[^"\\]|\\.){1,200})"')
_HEAD_BYTES = 64 * 1024
# What a connection dropped mid-body surfaces as from urllib3 (read1 bypasses requests' wrapping).
_URLLIB3_ERRORS = (urllib3.exceptions.HTTPError,)


@dataclass
class _Answer:
    """One journal answer, read within its bounds."""

    status: int
    body: bytes
    next_since: str | None  # the ``since`` of its Link: rel="next"
    too_large: AnswerTooLarge | None = None


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
        timeout: float = DEFAULT_TIMEOUT_S,
        max_tries: int = 4,
        max_retry_wait_s: float = 30.0,
        request_deadline_s: float = DEFAULT_REQUEST_DEADLINE_S,
        max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if reset not in RESET_POLICIES:
            raise SourceError(f"adobe_triggers: reset must be 'earliest' or 'latest', not {reset!r}")
        if page_limit < 1 or max_page_bytes < 1 or request_deadline_s <= 0 or timeout <= 0:
            raise SourceError(
                "adobe_triggers: page_limit, max_page_bytes, request_deadline_s and timeout_s must be positive"
            )
        self.journal_url = journal_url
        self.api_key = api_key
        self.org_id = org_id
        self._token = token_provider
        self.page_limit = page_limit
        self.reset = reset
        self.timeout = timeout
        self.request_deadline_s = request_deadline_s
        self.max_page_bytes = max_page_bytes
        self.session = session or requests.Session()
        self.retry = AdobeRetry(
            RetryPolicy(max_tries=max_tries, max_wait_s=max_retry_wait_s), name=f"journal {journal_url}", sleep=sleep
        )
        # Keyed by the registration path, not the host: moving the emulator to another port, or
        # Adobe's host name changing, must not reset the stored position.
        self.source_key = f"journal:{urlparse(journal_url).path}"
        self.endpoint = journal_url
        # The `limit` of each request, in order (tests check how an over-cap page was retried).
        self.limits_asked: list[int] = []

    # The retry settings live on the retry rule; tests and the hostile corpus tune them here.
    @property
    def max_tries(self) -> int:
        return self.retry.policy.max_tries

    @max_tries.setter
    def max_tries(self, value: int) -> None:
        self.retry.policy.max_tries = value

    @property
    def max_retry_wait_s(self) -> float:
        return self.retry.policy.max_wait_s

    @max_retry_wait_s.setter
    def max_retry_wait_s(self, value: float) -> None:
        self.retry.policy.max_wait_s = value

    def read(self, positions: Mapping[int, str], max_messages: int) -> Iterator[Page]:
        since = positions.get(JOURNAL_PARTITION)
        remaining = max_messages
        limit = self.page_limit
        while remaining > 0:
            params: dict[str, str | int] = {"limit": min(limit, remaining)}
            if since:
                params["since"] = since
            elif self.reset == ResetPolicy.LATEST:
                params["latest"] = "true"
            answer = self._get(params)
            if answer.status == 204:
                # Nothing newer than "latest" yet. Pin the end of the journal (the 204's Link:
                # rel="next" carries it) so the next read continues from here; without a stored
                # position every read would start at the end again and skip whatever arrived in
                # between.
                if not since and self.reset == ResetPolicy.LATEST and answer.next_since:
                    yield Page(messages=[], next_positions={JOURNAL_PARTITION: answer.next_since})
                return
            if answer.too_large is not None:
                asked = int(params["limit"])
                if asked > 1:
                    limit = max(1, asked // 2)
                    log.warning(
                        "%s: a journal page of %d items is larger than %d bytes; asking for %d",
                        self.source_key, asked, self.max_page_bytes, limit,
                    )
                    continue
                skipped = self._skip_oversized(answer)
                yield skipped
                since = skipped.next_positions[JOURNAL_PARTITION]
                remaining -= 1
                continue
            page = parse_page(answer.body)
            if page is None:
                return
            yield page
            since = page.next_positions[JOURNAL_PARTITION]
            remaining -= len(page.messages) + sum(page.dropped.values())
            limit = min(self.page_limit, limit * 2)  # a huge item has passed: grow back

    def _skip_oversized(self, answer: _Answer) -> Page:
        """A one-item page over the byte cap: move past the item, counting it as dropped."""
        assert answer.too_large is not None
        head = _HEAD_POSITION.search(answer.too_large.head)
        position = answer.next_since or (position_text(head.group(1).decode("utf-8", "replace")) if head else None)
        if position is None:
            raise SourceError(
                f"journal item larger than extra.max_page_bytes ({self.max_page_bytes} bytes) and its position "
                "cannot be found to skip it: raise max_page_bytes in the extras of connection adobe_triggers"
            )
        reason = f"journal item larger than {self.max_page_bytes} bytes"
        log.warning("%s: %s at %s, skipped (raise extra.max_page_bytes to land such items)", self.source_key, reason, position)
        return Page(
            messages=[], next_positions={JOURNAL_PARTITION: position}, bytes_read=self.max_page_bytes,
            dropped={reason: 1},
        )

    def _headers(self, refresh: bool) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._token(refresh)}",
            "x-api-key": self.api_key,
            "x-ims-org-id": self.org_id,
            "Accept": "application/json",
        }

    def _get(self, params: Mapping[str, str | int]) -> _Answer:
        """One page, through the one Adobe retry rule (adobe/http.py): 401 refreshes the token
        once; transport errors, slow pages and 429/5xx are retried up to ``max_tries``."""
        self.retry.reset()  # every page starts with a fresh count of consecutive failures
        return self.retry.call(
            lambda refresh: self._get_once(params, refresh), give_up=self._give_up,
            refused_twice=lambda: SourceCredentialsRefused(
                "journal refused a freshly minted IMS token (401 twice): check that the "
                "adobe_ims credential has access to this registration"
            ),
        )

    def _get_once(self, params: Mapping[str, str | int], refresh: bool) -> _Answer:
        self.limits_asked.append(int(params["limit"]))
        started = time.monotonic()
        status = 0
        cap = ERROR_BODY_BYTES
        try:
            resp = self.session.get(
                self.journal_url, params=params, headers=self._headers(refresh), timeout=self.timeout, stream=True,
            )
            status = resp.status_code
            next_since = _since_of(resp.links.get("next", {}).get("url"))
            cap = self.max_page_bytes if status == 200 else ERROR_BODY_BYTES
            body = read_body(resp, what="journal page", max_bytes=cap, deadline_s=self.request_deadline_s, started=started)
        except AnswerTooLarge as exc:
            if status != 200:
                raise SourceError(f"journal answered HTTP {status} with an error body over {cap} bytes") from None
            return _Answer(status=status, body=b"", next_since=next_since, too_large=exc)
        except DeadlinePassed as exc:
            raise RetryableFailure(f"journal {self.journal_url}: {exc}", kind="deadline", cause=exc) from None
        except (requests.RequestException, OSError, BoundedReadError, *_URLLIB3_ERRORS) as exc:
            raise RetryableFailure(
                f"journal {self.journal_url} unreachable ({exc.__class__.__name__})", cause=exc
            ) from None
        if status in (200, 204):
            return _Answer(status=status, body=body, next_since=next_since)
        if status == 401:
            raise Unauthorized
        if status in RETRYABLE_STATUS:
            raise RetryableFailure(
                f"journal answered HTTP {status}: {body[:300].decode('utf-8', 'replace')}", kind="status",
                status=status, retry_after=resp.headers.get("retry-after"),
            )
        raise SourceError(f"journal answered HTTP {status}: {body[:300].decode('utf-8', 'replace')}")

    def _give_up(self, failure: RetryableFailure, tries: int) -> SourceError:
        if failure.kind == "deadline":
            return SourceError(
                f"journal {self.journal_url}: a page took longer than extra.request_deadline_s "
                f"({self.request_deadline_s:g} s) {tries} times; raise it, or lower extra.page_limit"
            )
        if failure.kind == "status":
            return SourceError(failure.what)
        cause = failure.cause.__class__.__name__ if failure.cause is not None else "error"
        return SourceError(f"journal {self.journal_url} unreachable after {tries} tries: {cause}")


def _since_of(link_url: str | None) -> str | None:
    """The ``since`` position of a journal Link URL, if it has one."""
    if not link_url:
        return None
    values = parse_qs(urlparse(link_url).query).get("since")
    return values[-1] if values else None
