"""A small client for the local Adobe emulator (devstack.adobe_emulator).

Used by the tests and the demo to mint IMS tokens (OAuth S2S or the legacy JWT exchange),
publish trigger messages through the Pipeline producer endpoint, peek at the Pipeline consume
stream, inject raw journal events or raw bytes (journal and stream), generate load (``devstack.loadgen`` messages) and drive the
``/_emulator/`` control plane (stats, reset, token expiry, retention expiry, fault rules). It is deliberately not the production reader:
triggerflow's own source code must talk to the emulator exactly as it would talk to Adobe.

Secrets (client secret, tokens, JWTs) never appear in ``repr()`` or in error messages.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import requests

from devstack.messages import DEMO_IMS_ORG


class EmulatorError(RuntimeError):
    """A non-2xx answer from the emulator; carries the status and the raw body."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> HTTP {status}: {body}")
        self.method = method
        self.url = url
        self.status = status
        self.body = body


class EmulatorClient:
    def __init__(
        self,
        base_url: str,
        client_id: str = "triggerflow-local",
        client_secret: str = "local-dev-secret",
        org_id: str = DEMO_IMS_ORG,
        *,
        integration_id: str = "triggerflow-int",
        registration_id: str = "triggerflow-reg",
        scope: str = "openid,AdobeID,read_organizations,additional_info.projectedProductContext",
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.org_id = org_id
        self.integration_id = integration_id
        self.registration_id = registration_id
        self.scope = scope
        self.timeout = timeout
        self.session = requests.Session()
        self._cached_token: str | None = None

    def __repr__(self) -> str:  # never show the secret
        return f"EmulatorClient({self.base_url!r}, client_id={self.client_id!r}, org_id={self.org_id!r})"

    # -- plumbing ------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = f"{self.base_url}{path}"
        kwargs.setdefault("timeout", self.timeout)
        response = self.session.request(method, url, **kwargs)
        if not 200 <= response.status_code < 300:
            raise EmulatorError(method, url, response.status_code, response.text)
        return response

    @property
    def journal_path(self) -> str:
        return (
            f"/events/organizations/{quote(self.org_id, safe='@')}"
            f"/integrations/{quote(self.integration_id)}/{quote(self.registration_id)}"
        )

    @property
    def journal_url(self) -> str:
        return f"{self.base_url}{self.journal_path}"

    # -- IMS -----------------------------------------------------------------------------------
    def token(self) -> str:
        """Mint a new access token (one ``POST /ims/token/v3`` per call)."""
        response = self._request(
            "POST",
            "/ims/token/v3",
            data={
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "scope": self.scope,
            },
        )
        token = str(response.json()["access_token"])
        self._cached_token = token
        return token

    def journal_headers(self, token: str | None = None) -> dict[str, str]:
        """Headers the journal endpoint requires (IOE-JRN)."""
        return {
            "Authorization": f"Bearer {token or self._cached_token or self.token()}",
            "x-api-key": self.client_id,
            "x-ims-org-id": self.org_id,
        }

    # -- producer ------------------------------------------------------------------------------
    def publish(
        self, messages: Mapping[str, Any] | Sequence[Mapping[str, Any]], topic: str = "triggers"
    ) -> dict[str, Any]:
        """Publish one producer message or a list of them; returns the emulator's receipt
        ``{"accepted": n, "positions": [{partition, offset, position}]}``.

        Reuses the last token and mints a new one once if the emulator says it expired.
        """
        payload = dict(messages) if isinstance(messages, Mapping) else [dict(m) for m in messages]
        path = f"/pipeline/topics/{quote(topic, safe='')}/messages"
        for attempt in (1, 2):
            token = self._cached_token or self.token()
            try:
                return self._request(
                    "POST", path, json=payload, headers={"Authorization": f"Bearer {token}"}
                ).json()
            except EmulatorError as err:
                if err.status != 401 or attempt == 2:
                    raise
                self._cached_token = None
        raise AssertionError("unreachable")

    def _bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._cached_token or self.token()}"}

    def jwt_exchange(self, jwt_token: str) -> dict[str, Any]:
        """Legacy service-account exchange (``POST /ims/exchange/jwt``); returns the JSON answer
        ``{"token_type", "access_token", "expires_in"}`` — ``expires_in`` in MILLISECONDS, as
        Adobe's JWT exchange answers. Raises EmulatorError (status and Adobe's error body) on a
        refusal; the JWT itself is never part of the error."""
        response = self._request(
            "POST",
            "/ims/exchange/jwt",
            data={"client_id": self.client_id, "client_secret": self.client_secret, "jwt_token": jwt_token},
        )
        return response.json()

    def jwt_claims(
        self,
        *,
        technical_account_id: str = "TECHACCT1234@techacct.adobe.com",
        metascope: str = "ent_analytics_bulk_ingest_sdk",
        ttl_s: int = 300,
    ) -> dict[str, Any]:
        """The claim set IMS expects from this client (DC-JWT), with the emulator as IMS host."""
        return {
            "exp": int(time.time()) + ttl_s,
            "iss": self.org_id,
            "sub": technical_account_id,
            "aud": f"{self.base_url}/c/{self.client_id}",
            f"{self.base_url}/s/{metascope}": True,
        }

    # -- Pipeline consume and discovery ---------------------------------------------------------
    def consume_url(self, topic: str = "triggers") -> str:
        return f"{self.base_url}/pipeline/topics/{quote(topic, safe='')}/messages"

    @property
    def discovery_url(self) -> str:
        return f"{self.base_url}/v1/endpoints"

    def consume(
        self,
        topic: str = "triggers",
        *,
        group: str = "triggerflow-test",
        assign: Mapping[int, int] | str | None = None,
        reset: str | None = None,
        sync_interval: int | None = None,
        until_ping: bool = True,
        max_lines: int | None = None,
        timeout: float = 10.0,
    ) -> list[Any]:
        """Open a consume stream and return its lines (parsed JSON; text for non-JSON lines),
        stopping at the first PING (included) when ``until_ping``, after ``max_lines``, or when
        the emulator ends the stream. For tests: the production reader is PipelineSource."""
        params: dict[str, str] = {"group": group}
        if assign is not None:
            params["assign"] = assign if isinstance(assign, str) else ",".join(f"{p}:{o}" for p, o in assign.items())
        if reset is not None:
            params["reset"] = reset
        if sync_interval is not None:
            params["syncInterval"] = str(sync_interval)
        headers = {**self._bearer(), "Accept": "application/json"}
        url = self.consume_url(topic)
        lines: list[Any] = []
        with self.session.get(url, params=params, headers=headers, stream=True, timeout=timeout) as response:
            if response.status_code != 200:
                raise EmulatorError("GET", url, response.status_code, response.text)
            for raw in response.iter_lines():
                if not raw:
                    continue
                try:
                    item: Any = json.loads(raw)
                except ValueError:
                    item = raw.decode("utf-8", "replace")
                lines.append(item)
                if until_ping and isinstance(item, dict) and item.get("envelopeType") == "PING":
                    break
                if max_lines is not None and len(lines) >= max_lines:
                    break
        return lines

    def commit_sync(self, sync_marker: str) -> dict[str, Any]:
        """``POST /pipeline/consumer/sync`` with a SYNC envelope's marker: commit the group's offsets."""
        headers = {**self._bearer(), "Content-Type": "text/plain"}
        return self._request("POST", "/pipeline/consumer/sync", data=sync_marker.encode("utf-8"), headers=headers).json()

    def discover(self, topic: str = "triggers") -> dict[str, Any]:
        """``GET /v1/endpoints?topic=`` as Campaign's endpoint discovery would call it."""
        headers = {**self._bearer(), "x-gw-ims-org-id": self.org_id}
        return self._request("GET", "/v1/endpoints", params={"topic": topic}, headers=headers).json()

    # -- control plane -------------------------------------------------------------------------
    def add_faults(self, rules: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Queue fault rules (see devstack.adobe_emulator); returns ``{"added", "queued"}``.
        Values such as ``float("inf")`` travel as JSON's ``Infinity``/``NaN`` (the emulator is
        Python and reads them), e.g. ``{"endpoint": "token", "kind": "token_answer",
        "expires_in": float("inf")}``."""
        body = [dict(rules)] if isinstance(rules, Mapping) else [dict(r) for r in rules]
        data = json.dumps(body).encode("utf-8")  # allow_nan: Infinity/NaN on purpose
        return self._request(
            "POST", "/_emulator/faults", data=data, headers={"Content-Type": "application/json"}
        ).json()

    def faults(self) -> list[dict[str, Any]]:
        """The rules still queued, with their remaining ``times``."""
        return self._request("GET", "/_emulator/faults").json()

    def clear_faults(self) -> int:
        return int(self._request("DELETE", "/_emulator/faults").json()["cleared"])

    def expire(self, partition: int, before_offset: int, topic: str = "triggers") -> dict[str, Any]:
        """Expire (drop from retention) the messages of ``partition`` below ``before_offset``;
        returns ``{"expired": n, "earliest": {partition: earliest retained offset}}``."""
        body = {"partition": partition, "before_offset": before_offset, "topic": topic}
        return self._request("POST", "/_emulator/pipeline/expire", json=body).json()

    def expire_created_before(self, all_before_ms: int, topic: str = "triggers") -> dict[str, Any]:
        """Expire every retained message whose createTime is before ``all_before_ms``."""
        body = {"all_before_ms": all_before_ms, "topic": topic}
        return self._request("POST", "/_emulator/pipeline/expire", json=body).json()

    # -- control plane -------------------------------------------------------------------------
    def inject_raw(self, events: list[Any]) -> dict[str, Any]:
        """Append values to the journal verbatim as the inner ``event`` (no envelope)."""
        return self._request("POST", "/_emulator/journal", json={"events": list(events)}).json()

    def publish_bytes(
        self,
        items: Sequence[bytes],
        *,
        as_: str = "envelope",
        partition: int = 0,
        topic: str = "triggers",
    ) -> dict[str, Any]:
        """Publish bytes no JSON value can express (invalid UTF-8, deep nesting, NaN...) to both
        the journal and the pipeline topic (``POST /_emulator/raw``). ``as_="envelope"``: each is
        served verbatim as the stream line and as the journal item's ``event``;
        ``as_="pipeline_message"``: each is the pipelineMessage of an envelope the emulator builds
        at the next offset of ``partition``, so the stream line is placeable. Returns
        ``{"accepted", "positions": [{partition, offset, position}]}``."""
        body = {
            "topic": topic,
            "items": [
                {"b64": base64.b64encode(data).decode("ascii"), "as": as_, "partition": partition} for data in items
            ],
        }
        return self._request("POST", "/_emulator/raw", json=body).json()

    def generate(
        self,
        count: int,
        *,
        seed: int = 7,
        customers: int = 1_000_000,
        mix: Mapping[str, Any] | None = None,
        start: int | None = None,
        trigger_ts_ms: int | None = None,
        topic: str = "triggers",
        customer_offset: int = 0,
    ) -> dict[str, Any]:
        """Have the emulator produce ``count`` load-generator messages (``devstack.loadgen``) as
        if they had been published; returns ``{"accepted", "start", "next_start",
        "first_position", "last_position", "trigger_ts_ms", "create_time_ms", "journal_size"}``.
        ``start`` None continues after the last message generated for ``seed``."""
        body: dict[str, Any] = {"count": count, "seed": seed, "customers": customers, "topic": topic}
        if customer_offset:
            body["customer_offset"] = customer_offset
        if mix is not None:
            body["mix"] = dict(mix)
        if start is not None:
            body["start"] = start
        if trigger_ts_ms is not None:
            body["trigger_ts_ms"] = trigger_ts_ms
        return self._request("POST", "/_emulator/generate", json=body).json()

    def generated(self) -> dict[str, Any]:
        """``{"generated": n, "next_start": {seed: next index}}``."""
        return self._request("GET", "/_emulator/generate").json()

    def stats(self) -> dict[str, int]:
        return self._request("GET", "/_emulator/stats").json()

    def reset(self) -> None:
        self._request("POST", "/_emulator/reset")
        self._cached_token = None

    def expire_tokens(self) -> int:
        """Expire every issued token; returns how many were expired."""
        return int(self._request("POST", "/_emulator/expire-tokens").json()["expired"])

    def health(self) -> bool:
        return bool(self._request("GET", "/_emulator/health").json().get("ok"))

    def close(self) -> None:
        self.session.close()
