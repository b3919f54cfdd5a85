"""Test sends: one route's email, rendered for an event and a profile, to a few seed addresses.

The session is a :class:`~include.triggerflow.hooks.smtp.TriggerMailHook`, the send stage's own:
the same connection (``smtp_triggers`` by default), the same SSL/STARTTLS/login rules, the same
SMTP transaction and reading of replies. The send ledger is never touched.
"""

from __future__ import annotations

import smtplib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from include.triggerflow.content import CatalogEntry
from include.triggerflow.mailer import (
    HeaderInjectionError,
    InvalidAddressError,
    build_message,
    check_header_value,
    message_id_for,
    validate_address,
)
from include.triggerflow.preview.inputs import PreviewError
from include.triggerflow.preview.rendering import DEFAULT_UNSUBSCRIBE_URL, headers_for, render_for
from include.triggerflow.render import Renderer
from include.triggerflow.smtp_replies import SmtpOutcome

if TYPE_CHECKING:
    from include.triggerflow.config import RoutingConfig
    from include.triggerflow.hooks.smtp import TriggerMailHook


@dataclass(frozen=True)
class TestSendResult:
    """What the SMTP server answered for one seed address."""

    __test__ = False  # not a pytest test class, despite the name

    recipient: str
    accepted: bool
    code: int | None
    reply: str
    message_id: str


def _seeds(seeds: Sequence[str]) -> list[str]:
    """Every seed validated (all-or-nothing) and de-duplicated, order kept."""
    if isinstance(seeds, str) or not seeds:
        raise PreviewError("give at least one seed address (a list of addresses)")
    valid: list[str] = []
    problems: list[str] = []
    for seed in seeds:
        try:
            if isinstance(seed, str):
                check_header_value("To", seed)
            address = validate_address(seed)
        except (InvalidAddressError, HeaderInjectionError, TypeError) as exc:
            problems.append(str(exc))
            continue
        if address.lower() not in (v.lower() for v in valid):
            valid.append(address)
    if problems:
        raise PreviewError("refusing to send to any seed: " + "; ".join(problems))
    return valid


def send_test(
    route_name: str,
    event_payload: Mapping[str, Any] | str | bytes,
    profile: Mapping[str, Any],
    seeds: Sequence[str],
    *,
    mail: TriggerMailHook,
    routing: RoutingConfig | None = None,
    renderer: Renderer | None = None,
    catalog: Mapping[str, CatalogEntry] | None = None,
    unsubscribe_url: str = DEFAULT_UNSUBSCRIBE_URL,
    subject_prefix: str = "[TEST] ",
) -> list[TestSendResult]:
    """Send ``route_name``'s email, rendered for this event and profile, to each seed address.

    One SMTP session (``mail``; its sender, display name and Message-ID domain), one message per
    seed (To: the seed, Subject ``subject_prefix`` + subject, a new random Message-ID,
    ``X-Triggerflow-Test: true``). The send ledger is never touched, so a test send can neither
    block nor duplicate a customer's real email. Every seed is validated before anything is sent:
    one bad address refuses them all. A seed the server refuses is reported in its
    :class:`TestSendResult`; a session failure (cannot connect, login refused) raises.

    :raises PreviewError: a bad seed or sender, a render error, or the SMTP session failed.
    """
    recipients = _seeds(seeds)
    try:
        # a connection that lacks its host or sender names the connection and the flags to pass
        sender, from_name, message_id_domain = mail.sender, mail.from_name, mail.message_id_domain
    except ValueError as exc:
        raise PreviewError(str(exc)) from exc
    try:
        sender = validate_address(check_header_value("From", sender))
        if from_name is not None:
            check_header_value("From", from_name)
        check_header_value("Subject", subject_prefix)
    except (InvalidAddressError, HeaderInjectionError, TypeError) as exc:
        raise PreviewError(f"bad sender: {exc}") from exc
    route, _, rendered = render_for(
        route_name, event_payload, profile, routing=routing, renderer=renderer, unsubscribe_url=unsubscribe_url,
        catalog=catalog,
    )
    headers = headers_for(unsubscribe_url, {"X-Triggerflow-Route": route.name, "X-Triggerflow-Test": "true"})
    messages: list[tuple[str, str, bytes]] = []
    for recipient in recipients:
        message_id = message_id_for(f"test.{uuid.uuid4().hex}", message_id_domain)
        try:
            raw = build_message(
                from_addr=sender,
                from_name=from_name,
                to_addr=recipient,
                subject=subject_prefix + rendered.subject,
                text=rendered.text,
                html=rendered.html,
                message_id=message_id,
                headers=headers,
            )
        except (HeaderInjectionError, InvalidAddressError, ValueError) as exc:
            raise PreviewError(f"cannot build the message for {recipient}: {exc}") from exc
        messages.append((recipient, message_id, raw))

    results: list[TestSendResult] = []
    try:
        with mail as session:
            for recipient, message_id, raw in messages:
                results.append(_result(recipient, message_id, session.send_prepared(recipient, raw)))
    except (OSError, smtplib.SMTPException) as exc:
        sent = ", ".join(r.recipient for r in results if r.accepted) or "none"
        raise PreviewError(
            f"SMTP session with {_where(mail)} failed: {exc.__class__.__name__}: {exc} "
            f"(accepted before the failure: {sent})"
        ) from exc
    return results


def _where(mail: TriggerMailHook) -> str:
    try:
        return f"{mail.host}:{mail.port or (465 if mail.use_ssl else 25)}"
    except Exception:  # the connection itself is what failed
        return repr(mail.smtp_conn_id)


def _result(recipient: str, message_id: str, outcome: SmtpOutcome) -> TestSendResult:
    if outcome.accepted:
        return TestSendResult(recipient, True, 250, "accepted", message_id)
    return TestSendResult(recipient, False, outcome.code, outcome.reply, message_id)
