"""A small client for the local Adobe emulator (devstack.adobe_emulator).

Used by the tests and the demo to mint IMS tokens, publish trigger messages through the Pipeline
producer endpoint, inject raw journal events and drive the ``/_emulator/`` control plane. It is
deliberately not the production journal reader: triggerflow's own source code must talk to the
emulator exactly as it would talk to Adobe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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

    # -- control plane -------------------------------------------------------------------------
    def inject_raw(self, events: list[Any]) -> dict[str, Any]:
        """Append values to the journal verbatim as the inner ``event`` (no envelope)."""
        return self._request("POST", "/_emulator/journal", json={"events": list(events)}).json()

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
