"""The Pipeline connection: endpoint discovery, request headers and Adobe's error answers.

Every request goes through the one Adobe retry rule (adobe/http.py): 401 refreshes the IMS
token once, 429/5xx and transport errors wait (Retry-After or back-off) up to ``max_tries``.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

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
from include.triggerflow.sources.base import SourceError
from include.triggerflow.sources.bounded import BoundedReadError, read_body
from include.triggerflow.sources.pipeline_lines import PipelineStats, is_index

log = logging.getLogger("include.triggerflow.sources.pipeline")

# What a dropped connection, a read timeout or a stream cut mid-chunk surfaces as.
TRANSPORT_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)
# Discovery answers list a few endpoints; error answers carry a sentence.
DISCOVERY_MAX_BYTES = 1024 * 1024
ERROR_BODY_BYTES = 64 * 1024
ERROR_BODY_DEADLINE_S = 10.0


class EndpointOrigin(StrEnum):
    """Where the consume endpoint came from."""

    FORCED = "forced"  # the connection's host (Campaign's forcedPipelineEndpoint)
    UNRESOLVED = "unresolved"  # discovery has not run yet
    DISCOVERED = "discovered"  # discovery listed it for the topic


class PipelineEndpoint:
    """Where and how the reader connects (a mixin of PipelineSource)."""

    source_key: str
    topic: str
    partitions: int
    org_id: str
    discovery_url: str
    endpoint: str
    endpoint_origin: EndpointOrigin
    read_timeout_s: float
    read_deadline_s: float
    session: requests.Session
    stats: PipelineStats
    retry_policy: RetryPolicy
    sleep: Callable[[float], None]
    _token: Callable[[bool], str]
    _read_started: float | None

    def new_retry(self) -> AdobeRetry:
        """A fresh count of consecutive failures, bounded by the current read's deadline."""
        deadline = None if self._read_started is None else self._read_started + self.read_deadline_s
        return AdobeRetry(self.retry_policy, name=self.source_key, deadline_at=deadline, sleep=self.sleep)

    # -- endpoint ----------------------------------------------------------------------------------
    def resolve_endpoint(self) -> str:
        """The consume host: forced, or discovered once per source instance."""
        if self.endpoint_origin != EndpointOrigin.UNRESOLVED:
            return self.endpoint
        url = f"{self.discovery_url}/v1/endpoints"
        body = self._discovery_answer(url)
        entries = body.get("endpoints") if isinstance(body, dict) else None
        entry = next(
            (
                e for e in (entries if isinstance(entries, list) else [])
                if isinstance(e, dict) and e.get("topic") == self.topic
                and isinstance(e.get("httpEndPoint"), str) and e["httpEndPoint"].startswith(("http://", "https://"))
            ),
            None,
        )
        if entry is None:
            raise SourceError(
                f"pipeline discovery at {url} lists no endpoint for topic '{self.topic}' "
                f"(answer: {json.dumps(body)[:300]}); check the topic name, or set the connection "
                "host to force an endpoint"
            )
        discovered_partitions = entry.get("partitions")
        if is_index(discovered_partitions) and discovered_partitions and discovered_partitions != self.partitions:
            log.warning(
                "%s: discovery says topic '%s' has %d partitions, the connection says %d; reading %d",
                self.source_key, self.topic, discovered_partitions, self.partitions, discovered_partitions,
            )
            self.partitions = discovered_partitions
        self.endpoint = entry["httpEndPoint"].rstrip("/")
        self.endpoint_origin = EndpointOrigin.DISCOVERED
        log.info(
            "%s: pipeline endpoint %s (discovered via %s, location %s)",
            self.source_key, self.endpoint, url, entry.get("location"),
        )
        return self.endpoint

    def _discovery_answer(self, url: str) -> Any:
        def once(refresh: bool) -> Any:
            headers = {**self._headers(refresh), "x-gw-ims-org-id": self.org_id}
            self.stats.requests += 1
            started = time.monotonic()
            try:
                resp = self.session.get(
                    url, params={"topic": self.topic}, headers=headers, timeout=self.read_timeout_s, stream=True
                )
                data = (
                    read_body(
                        resp, what=f"the discovery answer of {url}", max_bytes=DISCOVERY_MAX_BYTES,
                        deadline_s=self.read_deadline_s, started=started,
                    )
                    if resp.status_code == 200 else b""
                )
            except BoundedReadError as exc:
                raise SourceError(f"pipeline discovery: {exc}; set the connection host to force an endpoint") from None
            except TRANSPORT_ERRORS as exc:
                raise RetryableFailure(f"discovery {url} unreachable ({exc.__class__.__name__})", cause=exc) from None
            if resp.status_code == 200:
                try:
                    return json.loads(data)
                except (ValueError, RecursionError):
                    raise SourceError(
                        f"pipeline discovery at {url} answered 200 with no JSON: "
                        f"{data[:200].decode('utf-8', 'replace')}"
                    ) from None
            if resp.status_code == 401:
                resp.close()
                raise Unauthorized
            if resp.status_code in RETRYABLE_STATUS:
                raise RetryableFailure(
                    f"discovery {url} answered HTTP {resp.status_code}: {adobe_message(resp)}", kind="status",
                    status=resp.status_code, retry_after=resp.headers.get("Retry-After"),
                )
            raise SourceError(f"pipeline discovery at {url} answered HTTP {resp.status_code}: {adobe_message(resp)}")

        return self.new_retry().call(
            once, give_up=gave_up,
            refused_twice=lambda: SourceCredentialsRefused(
                f"pipeline discovery at {url} refused a freshly minted IMS token (401 twice): "
                "check that the adobe_ims credential has access to Pipeline"
            ),
        )

    def _headers(self, refresh: bool) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._token(refresh)}",
            "Accept": "application/json",
            "x-gw-ims-org-id": self.org_id,
        }


def adobe_message(resp: requests.Response) -> str:
    """Adobe's own words from an error answer (Pipeline: message; IMS style: error_description),
    read with a size cap and a deadline like every answer."""
    try:
        data = read_body(
            resp, what="the error answer", max_bytes=ERROR_BODY_BYTES, deadline_s=ERROR_BODY_DEADLINE_S,
            started=time.monotonic(),
        )
    except BoundedReadError as exc:
        return f"{resp.reason or ''} ({exc})"
    except TRANSPORT_ERRORS as exc:
        return f"{resp.reason or ''} (answer unreadable: {exc.__class__.__name__})"
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return data[:300].decode("utf-8", "replace") or resp.reason or ""
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("error", "message", "error_description") if body.get(k)]
        if parts:
            return ": ".join(parts)[:300]
    return json.dumps(body)[:300]


def describe(exc: BaseException | None) -> str:
    if exc is None:
        return "stream ended"
    return f"{exc.__class__.__name__}: {exc}"[:300]


def gave_up(failure: RetryableFailure, tries: int) -> SourceError:
    """The error after ``tries`` consecutive failures without progress."""
    return SourceError(f"{failure.what}; gave up after {tries} consecutive tries without progress")
