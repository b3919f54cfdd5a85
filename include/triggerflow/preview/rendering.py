"""Render one route's email for an event and a profile, as the send stage would, into files."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from include.triggerflow.content import CatalogEntry, email_content
from include.triggerflow.mailer import (
    HeaderInjectionError,
    InvalidAddressError,
    build_message,
    list_unsubscribe_headers,
    message_id_for,
    validate_address,
)
from include.triggerflow.preview.inputs import PreviewError, complete_profile, find_route, parse_event, sample_catalog
from include.triggerflow.render import RenderedEmail, Renderer, TemplateRenderError, build_context

if TYPE_CHECKING:
    from include.triggerflow.config import RoutingConfig, TriggerRoute

PREVIEW_FROM = "preview@triggerflow.local"
PREVIEW_FROM_NAME = "triggerflow preview"
#: A placeholder that can never unsubscribe anyone (``.invalid`` is reserved, RFC 2606). Previews
#: and test sends use it unless told otherwise: a real signed link in a seed's mailbox would
#: unsubscribe the customer whose profile was used.
DEFAULT_UNSUBSCRIBE_URL = "https://example.invalid/unsubscribe?preview"
PREVIEW_FILES = ("subject.txt", "email.html", "email.txt", "message.eml")
#: Message-ID key of preview messages: fixed, so two previews of the same route differ only in Date.
_PREVIEW_KEY = "triggerflow-preview"


class RenderOptions(TypedDict, total=False):
    """The keyword options of :func:`render_for`, passed on to it by :func:`render_preview`."""

    routing: RoutingConfig | None
    renderer: Renderer | None
    unsubscribe_url: str
    catalog: Mapping[str, CatalogEntry] | None


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


def headers_for(unsubscribe_url: str, extra: Mapping[str, str]) -> dict[str, str]:
    """The List-Unsubscribe headers and ``extra``; PreviewError for an unusable unsubscribe URL."""
    try:
        return {**list_unsubscribe_headers(unsubscribe_url), **extra}
    except (HeaderInjectionError, ValueError) as exc:
        raise PreviewError(f"unsubscribe URL refused: {exc}") from exc


def profile_recipient(profile: Mapping[str, Any]) -> str:
    """The profile's email as a recipient; PreviewError when it cannot be one."""
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
            to_addr=profile_recipient(full_profile),
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            message_id=message_id_for(_PREVIEW_KEY),
            headers=headers_for(unsubscribe_url, {"X-Triggerflow-Route": route.name}),
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


