"""Preview and test-send one route's email for a given event and profile, outside the DAG.

Template authors need to see an email before a trigger fires in production, and marketers want a
real copy in their own mailbox. Both go through exactly the code the send stage uses (routing,
:class:`~include.triggerflow.render.Renderer`, :func:`~include.triggerflow.mailer.build_message`),
so what a preview shows is what a customer gets, but neither touches the store's send ledger:

* :func:`render_preview` writes ``subject.txt``, ``email.html``, ``email.txt`` and ``message.eml``
  (the complete MIME message, openable in a mail client) into a folder;
* :func:`send_test` sends the email to a list of seed addresses over SMTP, subject prefixed with
  ``[TEST] ``; it validates every seed first and sends to none if one is bad.

Events may be given as the pipeline envelope (what ``tf_event.payload`` holds), as a Pipeline
producer message (``{"messageType": ..., "message": {...}}``) or as the bare trigger body; profiles
as a dict of profile columns (missing columns are filled with None, as a store row would have them).
Sample events and profiles live in ``include/templates/samples/`` (see :func:`sample_event`), with
a sample catalogue (``samples/catalog.json``, :func:`sample_catalog`): a route in catalogue mode
(the default) shows the products of the catalogue it is given, the sample one unless told otherwise,
exactly as the send stage shows those of the store's ``catalog`` table.
"""

from __future__ import annotations

import json
import smtplib
import ssl
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from include.triggerflow import TEMPLATES_DIR
from include.triggerflow.content import CatalogEntry, email_content
from include.triggerflow.events import (
    PIPELINE_MESSAGE,
    TRIGGER_BODY,
    TriggerEvent,
    parse_envelope,
)
from include.triggerflow.mailer import (
    HeaderInjectionError,
    InvalidAddressError,
    build_message,
    check_header_value,
    list_unsubscribe_headers,
    message_id_for,
    validate_address,
)
from include.triggerflow.render import (
    RenderedEmail,
    Renderer,
    TemplateRenderError,
    build_context,
)

if TYPE_CHECKING:
    from include.triggerflow.config import RoutingConfig, TriggerRoute

__all__ = [
    "DEFAULT_UNSUBSCRIBE_URL",
    "PREVIEW_FILES",
    "PREVIEW_FROM",
    "SAMPLES_DIR",
    "PreviewError",
    "RenderOptions",
    "TestSendResult",
    "as_envelope",
    "complete_profile",
    "find_route",
    "parse_event",
    "render_for",
    "render_preview",
    "sample_catalog",
    "sample_event",
    "sample_profile",
    "send_test",
]

SAMPLES_DIR = TEMPLATES_DIR / "samples"
PREVIEW_FROM = "preview@triggerflow.local"
PREVIEW_FROM_NAME = "triggerflow preview"
#: A placeholder that can never unsubscribe anyone (``.invalid`` is reserved, RFC 2606). Previews
#: and test sends use it unless told otherwise: a real signed link in a seed's mailbox would
#: unsubscribe the customer whose profile was used.
DEFAULT_UNSUBSCRIBE_URL = "https://example.invalid/unsubscribe?preview"
PREVIEW_FILES = ("subject.txt", "email.html", "email.txt", "message.eml")
#: Message-ID key of preview messages: fixed, so two previews of the same route differ only in Date.
_PREVIEW_KEY = "triggerflow-preview"
_SAMPLE_FALLBACK = "cart_abandonment"


class PreviewError(Exception):
    """The preview or test send cannot be made; the message says why and what to do."""


@dataclass(frozen=True)
class TestSendResult:
    """What the SMTP server answered for one seed address."""

    __test__ = False  # not a pytest test class, despite the name

    recipient: str
    accepted: bool
    code: int | None
    reply: str
    message_id: str


class RenderOptions(TypedDict, total=False):
    """The keyword options of :func:`render_for`, passed on to it by :func:`render_preview`."""

    routing: RoutingConfig | None
    renderer: Renderer | None
    unsubscribe_url: str
    catalog: Mapping[str, CatalogEntry] | None


# -- inputs ------------------------------------------------------------------------------------------
def find_route(routing: RoutingConfig, route_name: str) -> TriggerRoute:
    """The route called ``route_name``; PreviewError listing the available ones otherwise."""
    for route in routing.routes:
        if route.name == route_name:
            return route
    available = ", ".join(sorted(route.name for route in routing.routes)) or "(none)"
    raise PreviewError(f"unknown route {route_name!r}; available routes: {available}")


def as_envelope(payload: Mapping[str, Any] | str | bytes) -> dict[str, Any] | str | bytes:
    """A pipeline envelope for ``payload``: returned as is when it is one (or JSON text), wrapped
    when it is a producer message or a bare trigger body, so people can paste what they have."""
    if not isinstance(payload, Mapping):
        return payload
    data = dict(payload)
    if PIPELINE_MESSAGE in data:
        return data
    if isinstance(data.get("message"), Mapping) and "triggerId" in data["message"]:
        header = {k: data[k] for k in ("messageType", "source", "sentTime", "imsOrg", "messageId", "properties") if k in data}
        return {"envelopeType": "DATA", PIPELINE_MESSAGE: {"header": header, TRIGGER_BODY: dict(data["message"])}}
    if "triggerId" in data:
        return {"envelopeType": "DATA", PIPELINE_MESSAGE: {"header": {"messageType": "TRIGGER"}, TRIGGER_BODY: data}}
    return data


def parse_event(payload: Mapping[str, Any] | str | bytes) -> TriggerEvent:
    if isinstance(payload, (str, bytes)):
        try:
            payload = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PreviewError(f"event is not valid JSON: {exc}") from None
    event = parse_envelope(as_envelope(payload))  # type: ignore[arg-type]
    if event.parse_error is not None:
        raise PreviewError(
            f"event cannot be read: {event.parse_error} (give a pipeline envelope, a producer message "
            "or a trigger body; see include/templates/samples/)"
        )
    return event


def complete_profile(profile: Mapping[str, Any]) -> dict[str, Any]:
    """``profile`` with every column of the ``profiles`` table present (missing ones None,
    ``opted_out`` False): a row from the store always has them all, so a hand-written profile must
    render the way the send stage would render that customer, not fail on an absent column."""
    from include.triggerflow.store.schema import profiles

    if not isinstance(profile, Mapping):
        raise PreviewError(f"profile must be a JSON object of profile columns, got {type(profile).__name__}")
    completed: dict[str, Any] = {column.name: None for column in profiles.columns}
    completed["opted_out"] = False
    completed.update(profile)
    return completed


def sample_event(route: TriggerRoute | None = None) -> dict[str, Any]:
    """The sample event shipped for ``route``'s template (``samples/<template>.event.json``), else
    the cart-abandonment sample: a realistic envelope with products, pages and image URLs."""
    names = [route.template] if route is not None else []
    for name in [*names, _SAMPLE_FALLBACK]:
        path = SAMPLES_DIR / f"{name}.event.json"
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    raise PreviewError(f"no sample event in {SAMPLES_DIR}")


def sample_profile(locale: str | None = None) -> dict[str, Any]:
    """The sample profile (``samples/profile.json``), or ``samples/profile.<locale>.json`` when it exists."""
    path = SAMPLES_DIR / f"profile.{locale}.json" if locale else SAMPLES_DIR / "profile.json"
    if not path.is_file():
        path = SAMPLES_DIR / "profile.json"
    return json.loads(path.read_text(encoding="utf-8"))


def sample_catalog() -> dict[str, CatalogEntry]:
    """The sample catalogue (``samples/catalog.json``: SKU -> name, names by locale, price, currency,
    url, image_url, in_stock) as catalogue items: the products of the sample events."""
    from include.triggerflow.catalog import CatalogItem

    path = SAMPLES_DIR / "catalog.json"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PreviewError(f"cannot read the sample catalogue {path}: {exc}") from None
    items: dict[str, CatalogEntry] = {}
    for sku, row in rows.items():
        try:
            price = Decimal(str(row["price"])) if row.get("price") is not None else None
        except InvalidOperation:
            raise PreviewError(f"sample catalogue {path}: {sku}: price {row['price']!r} is not a number") from None
        items[sku] = CatalogItem(
            sku=sku, name=row["name"], price=price, currency=row.get("currency"), url=row.get("url"),
            image_url=row.get("image_url"), in_stock=bool(row.get("in_stock", True)),
            names=MappingProxyType(dict(row.get("names") or {})),
        )
    return items


def render_for(
    route_name: str,
    event_payload: Mapping[str, Any] | str | bytes,
    profile: Mapping[str, Any],
    *,
    routing: RoutingConfig | None = None,
    renderer: Renderer | None = None,
    unsubscribe_url: str = DEFAULT_UNSUBSCRIBE_URL,
    catalog: Mapping[str, CatalogEntry] | None = None,
) -> tuple[TriggerRoute, dict[str, Any], RenderedEmail]:
    """Route, completed profile and rendered email, in the profile's locale, as the send stage would.

    ``catalog`` (SKU -> item) is what a catalogue-mode route shows of the event's SKUs; default:
    :func:`sample_catalog`. What the email shows goes through :func:`content.email_content` and
    the route's link_hosts, as in the send stage.

    :raises PreviewError: unknown route, unreadable event, or the email cannot be rendered (the
        message carries the renderer's, which names the template, line and variable).
    """
    if routing is None:
        from include.triggerflow.config import load_routing

        routing = load_routing()
    route = find_route(routing, route_name)
    event = parse_event(event_payload)
    full_profile = complete_profile(profile)
    renderer = renderer or Renderer()
    locale = full_profile.get("locale")
    content = email_content(
        event, route, sample_catalog() if catalog is None else catalog, locale if isinstance(locale, str) else None
    )
    context = build_context(
        profile=full_profile, event=event, route=route, content=content, extra={"unsubscribe_url": unsubscribe_url}
    )
    try:
        rendered = renderer.render(route, context, locale=locale if isinstance(locale, str) else None)
    except TemplateRenderError as exc:
        raise PreviewError(f"cannot render: {exc}") from exc
    return route, full_profile, rendered


def _headers(unsubscribe_url: str, extra: Mapping[str, str]) -> dict[str, str]:
    try:
        return {**list_unsubscribe_headers(unsubscribe_url), **extra}
    except (HeaderInjectionError, ValueError) as exc:
        raise PreviewError(f"unsubscribe URL refused: {exc}") from exc


def _recipient(profile: Mapping[str, Any]) -> str:
    try:
        return validate_address(profile.get("email"))  # type: ignore[arg-type]
    except InvalidAddressError as exc:
        raise PreviewError(f"the profile's email cannot be a recipient: {exc}") from exc


# -- preview -----------------------------------------------------------------------------------------
def render_preview(
    route_name: str,
    event_payload: Mapping[str, Any] | str | bytes,
    profile: Mapping[str, Any],
    *,
    out_dir: Path,
    date: datetime | None = None,
    **options: Unpack[RenderOptions],
) -> dict[str, Path]:
    """Render ``route_name``'s email for this event and profile into ``out_dir`` (created if needed).

    ``routing``, ``renderer`` and ``unsubscribe_url`` (:class:`RenderOptions`) are those of
    :func:`render_for`.

    Returns ``{file name: path}`` for ``subject.txt``, ``email.html``, ``email.txt`` and
    ``message.eml``. The .eml is the full message (From ``preview@triggerflow.local``, To the
    profile's email, ``List-Unsubscribe`` + ``List-Unsubscribe-Post``, a fixed Message-ID), written
    as the SMTP bytes (CRLF). Nothing is written unless everything rendered.

    :raises PreviewError: unknown route (the message lists the available ones), unreadable event,
        render error, unusable profile email or unsubscribe URL.
    """
    route, full_profile, rendered = render_for(route_name, event_payload, profile, **options)
    unsubscribe_url = options.get("unsubscribe_url", DEFAULT_UNSUBSCRIBE_URL)
    try:
        message = build_message(
            from_addr=PREVIEW_FROM,
            from_name=PREVIEW_FROM_NAME,
            to_addr=_recipient(full_profile),
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            message_id=message_id_for(_PREVIEW_KEY),
            headers=_headers(unsubscribe_url, {"X-Triggerflow-Route": route.name}),
            date=date,
        )
    except (HeaderInjectionError, InvalidAddressError, ValueError) as exc:
        raise PreviewError(f"cannot build the message: {exc}") from exc
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    contents: dict[str, bytes] = {
        "subject.txt": (rendered.subject + "\n").encode("utf-8"),
        "email.html": rendered.html.encode("utf-8"),
        "email.txt": rendered.text.encode("utf-8"),
        "message.eml": message,
    }
    paths: dict[str, Path] = {}
    for name in PREVIEW_FILES:
        path = out / name
        path.write_bytes(contents[name])
        paths[name] = path
    return paths


# -- test send ---------------------------------------------------------------------------------------
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
    smtp_host: str,
    smtp_port: int,
    sender: str,
    from_name: str | None = None,
    smtp_user: str | None = None,
    smtp_password: str | None = None,
    use_ssl: bool = False,
    starttls: bool = False,
    timeout: float = 30.0,
    routing: RoutingConfig | None = None,
    renderer: Renderer | None = None,
    catalog: Mapping[str, CatalogEntry] | None = None,
    unsubscribe_url: str = DEFAULT_UNSUBSCRIBE_URL,
    subject_prefix: str = "[TEST] ",
    message_id_domain: str = "triggerflow.local",
) -> list[TestSendResult]:
    """Send ``route_name``'s email, rendered for this event and profile, to each seed address.

    One SMTP session, one message per seed (To: the seed, Subject ``subject_prefix`` + subject, a new
    random Message-ID, ``X-Triggerflow-Test: true``). The send ledger is never touched, so a test
    send can neither block nor duplicate a customer's real email. Every seed is validated before
    anything is sent: one bad address refuses them all. A seed the server refuses is reported in
    its :class:`TestSendResult`; a session failure (cannot connect, login refused) raises.

    :raises PreviewError: a bad seed or sender, a render error, or the SMTP session failed.
    """
    recipients = _seeds(seeds)
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
    headers = _headers(unsubscribe_url, {"X-Triggerflow-Route": route.name, "X-Triggerflow-Test": "true"})
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
        client: smtplib.SMTP
        if use_ssl:
            client = smtplib.SMTP_SSL(smtp_host, smtp_port, timeout=timeout, context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(smtp_host, smtp_port, timeout=timeout)
        with client:
            if starttls and not use_ssl:
                client.starttls(context=ssl.create_default_context())
                client.ehlo()
            if smtp_user:
                client.login(smtp_user, smtp_password or "")
            for recipient, message_id, raw in messages:
                results.append(_send_one(client, sender, recipient, message_id, raw))
    except (OSError, smtplib.SMTPException) as exc:
        sent = ", ".join(r.recipient for r in results if r.accepted) or "none"
        raise PreviewError(
            f"SMTP session with {smtp_host}:{smtp_port} failed: {exc.__class__.__name__}: {exc} "
            f"(accepted before the failure: {sent})"
        ) from exc
    return results


def _send_one(client: smtplib.SMTP, sender: str, recipient: str, message_id: str, raw: bytes) -> TestSendResult:
    def refused(code: int | None, reply: bytes | str) -> TestSendResult:
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        return TestSendResult(recipient, False, code, text, message_id)

    try:
        failures = client.sendmail(sender, [recipient], raw)
    except smtplib.SMTPRecipientsRefused as exc:
        code, reply = exc.recipients.get(recipient, (None, b"recipient refused"))
        return refused(code, reply)
    except (smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as exc:
        return refused(exc.smtp_code, exc.smtp_error)
    if failures:
        code, reply = failures.get(recipient, (None, b"recipient refused"))
        return refused(code, reply)
    return TestSendResult(recipient, True, 250, "accepted", message_id)
