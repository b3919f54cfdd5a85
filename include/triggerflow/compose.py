"""One email of the send ledger, composed: what the send stage puts on the wire for a row.

What an email shows of its trigger is :func:`content.email_content`, the function reconcile
decided with: per chunk, ONE catalogue look-up for the SKUs of all its catalogue-route rows, then
each email's content (catalogue products, URLs on the route's link_hosts) becomes its template
context. Every email carries a signed one-click unsubscribe link (RFC 8058 headers, and
``unsubscribe_url`` in the templates) and is rendered in the profile's locale when the template
has a variant for it. Anything wrong with one email (render error, bad address, too large,
hostile data) raises from :meth:`Composer.compose`; the stage fails that row only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Engine, Row

from include.triggerflow.config import RoutingConfig, TriggerRoute
from include.triggerflow.content import CatalogEntry, ProductSource, email_content
from include.triggerflow.events import TriggerEvent, parse_envelope
from include.triggerflow.mailer import (
    build_message_fast,
    check_email_size,
    check_header_value,
    list_unsubscribe_headers,
    message_id_for,
    validate_address,
)
from include.triggerflow.render import Renderer, TemplateRenderError, build_context
from include.triggerflow.store.schema import profiles

log = logging.getLogger(__name__)


class UnsubscribeLinkMaker(Protocol):
    def url_for(self, customer_id: str, route: str | None = None) -> str: ...


class SenderIdentity(Protocol):
    """What an SMTP session says about its sender (``hooks.smtp.TriggerMailHook``)."""

    @property
    def sender(self) -> str: ...

    @property
    def from_name(self) -> str | None: ...

    @property
    def message_id_domain(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Email:
    """One email ready for its SMTP transaction."""

    recipient: str
    message_id: str
    subject: str
    locale: str | None
    message: bytes


class Composer:
    """Renders and builds each email of a chunk: per chunk, ONE catalogue look-up for the SKUs of
    all its catalogue-route rows; per email, its content, template context, message and checks."""

    def __init__(self, engine: Engine, rows: Sequence[Row[Any]], routing: RoutingConfig, renderer: Renderer, *,
                 unsubscribe: UnsubscribeLinkMaker, unsubscribe_mailto: str | None, force_resend: bool,
                 max_email_bytes: int) -> None:
        self.routes = {r.name: r for r in routing.routes}
        self.profile_cols = [c.name for c in profiles.columns]
        self.events, self.catalog_items = chunk_events(engine, rows, self.routes)
        self.renderer = renderer
        self.unsubscribe = unsubscribe
        self.unsubscribe_mailto = unsubscribe_mailto
        self.force_resend = force_resend
        self.max_email_bytes = max_email_bytes
        self.sender: str = ""
        self.from_name: str | None = None
        self.message_id_domain: str = ""

    def use_session(self, mail: SenderIdentity) -> None:
        """The session's From address and Message-ID domain are configuration, not data of one
        email: a mistake there must fail the task (rows stay pending for the retry once the
        connection is fixed), not mark every row of the chunk failed for good."""
        self.sender = validate_address(mail.sender)
        self.from_name = mail.from_name
        if self.from_name is not None:
            check_header_value("From", self.from_name)
        self.message_id_domain = mail.message_id_domain
        message_id_for("0", self.message_id_domain)

    def compose(self, row: Row[Any], resend: bool) -> Email:
        mapping = row._mapping
        profile = {c: mapping[c] for c in self.profile_cols}
        route = self.routes.get(row.route)
        if route is None:
            raise TemplateRenderError(f"route {row.route!r} is no longer in the routing config")
        unsubscribe_url = self.unsubscribe.url_for(str(profile["customer_id"]), route.name)
        parsed = self.events.get(row.send_id) or parse_envelope(row.payload)
        locale = profile.get("locale")
        content = email_content(parsed, route, self.catalog_items, locale if isinstance(locale, str) else None,
                                lazy_dimensions=True)
        context = build_context(
            profile=profile, event=parsed, route=route, content=content, extra={"unsubscribe_url": unsubscribe_url},
        )
        rendered = self.renderer.render(route, context, locale=profile.get("locale"))
        recipient = validate_address(row.recipient)
        # A deliberate resend is a new message; an ambiguous one keeps its Message-ID so a
        # receiver that did get the first copy can tell it is the same email.
        key = f"{row.idempotency_key}.resend{row.attempts}" if resend and self.force_resend else row.idempotency_key
        message_id = message_id_for(key, self.message_id_domain)
        message = check_email_size(build_message_fast(
            from_addr=self.sender,
            from_name=self.from_name,
            to_addr=recipient,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            message_id=message_id,
            headers={
                "X-Triggerflow-Key": row.idempotency_key,
                **list_unsubscribe_headers(unsubscribe_url, self.unsubscribe_mailto),
            },
        ), self.max_email_bytes)
        return Email(recipient, message_id, rendered.subject, rendered.locale, message)


def chunk_events(
    engine: Engine, rows: Sequence[Row[Any]], routes: Mapping[str, TriggerRoute]
) -> tuple[dict[int, TriggerEvent], dict[str, CatalogEntry]]:
    """Each row's parsed event (by send_id) and the catalogue items of every SKU the chunk's
    catalogue-route events name, looked up at once. A payload that does not parse is left out
    here: its row fails on its own when it is rendered."""
    from include.triggerflow.stages.reconcile_load import catalog_skus, lookup_catalog

    events: dict[int, TriggerEvent] = {}
    for row in rows:
        try:
            events[row.send_id] = parse_envelope(row.payload)
        except Exception:
            log.debug("send %s: payload not parsed for the catalogue look-up", row.send_id)
    wanted = [
        events[row.send_id]
        for row in rows
        if row.send_id in events and getattr(routes.get(row.route), "products", None) is ProductSource.CATALOG
    ]
    skus = catalog_skus(wanted)
    if not skus:
        return events, {}
    with engine.connect() as conn:
        return events, lookup_catalog(conn, skus)
