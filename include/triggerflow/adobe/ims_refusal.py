"""IMS's refusals in words a user can act on: which answer field, which extra to check.

Kept apart from the hook because the hints (one per IMS error code and credential mode) are long
and change with Adobe's error catalogue, while the hook's token flow does not.
"""

from __future__ import annotations

import json
from typing import Protocol

from include.triggerflow.sources.base import SourceError


class CredentialsRefused(Exception):
    """Marks an error as IMS or the source refusing the credentials (not an outage): the run fails
    as before, and the operator is alerted (alerts.AlertKind.CREDENTIALS_REFUSED)."""


class SourceCredentialsRefused(SourceError, CredentialsRefused):
    """The source refused a freshly minted IMS token (401 twice)."""


class RefusedCredential(Protocol):
    """What a hint may quote of the credential (never a secret)."""

    base_url: str
    client_id: str
    org_id: str
    auth_type: str
    scopes: str
    metascopes: tuple[str, ...]
    jwt_ttl_s: int


def refusal_message(conn: str, settings: RefusedCredential, what: str, status: int, body: bytes) -> str:
    """What IMS refused and what to check, naming the connection and the extra to fix."""
    error, description = error_of(body)
    jwt_mode = settings.auth_type == "jwt"
    head = f"connection {conn!r}: IMS refused the {what} ({status} {error}"
    head += f": {description})" if description else ")"
    credentials = f"check the client id (login) and client secret (password) of connection {conn!r}"
    if error == "invalid_client":
        if jwt_mode and status == 400:
            hint = (
                f"the JWT audience {settings.base_url}/c/{settings.client_id} was refused: check the client "
                f"id (login) and the IMS base URL (host) of connection {conn!r}"
            )
        else:
            hint = credentials
    elif error == "invalid_signature":
        hint = (
            "IMS could not verify the JWT signature: extra.private_key does not match the certificate "
            "(public key) of the integration — upload the certificate of this key in the Developer Console, "
            "or put the key of the uploaded certificate in extra.private_key"
        )
    elif error == "invalid_token" and jwt_mode:
        text = description.lower()
        if "organization" in text or "subject" in text or "technical" in text:
            hint = (
                f"check extra.org_id ({settings.org_id}) and extra.technical_account_id "
                "— the subject must be a valid organization or client"
            )
        else:
            hint = (
                f"the JWT was missing or expired on arrival: check extra.jwt_ttl_s (now {settings.jwt_ttl_s} s) "
                "and this machine's clock (clock skew makes a fresh JWT look expired)"
            )
    elif error == "invalid_scope":
        if jwt_mode:
            hint = (
                f"check extra.metascopes (now {list(settings.metascopes)}): each must be a metascope "
                "of the integration, e.g. ent_analytics_bulk_ingest_sdk"
            )
        else:
            hint = f"check extra.scopes (now {settings.scopes!r}) against the credential's scopes"
    elif status in (400, 401, 403):
        hint = f"check the credential settings of connection {conn!r}"
        if status == 403 and not jwt_mode:
            hint += " (a 403 from IMS usually means the credential type is retired: use OAuth Server-to-Server)"
    else:
        hint = "IMS may be unavailable; retry later"
    return f"{head}: {hint}"


def error_of(data: bytes) -> tuple[str, str]:
    """(error, error_description) of an IMS error answer; never raises."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return "unknown_error", ""
    if not isinstance(body, dict):
        return "unknown_error", ""
    error = str(body.get("error") or body.get("error_code") or "unknown_error")[:100]
    description = str(body.get("error_description") or body.get("message") or "")[:200]
    return error, description


