"""Stage 4 — send one chunk of the ledger over one SMTP session.

A ledger row moves ``pending -> sending -> sent | deferred | failed``, and each move is committed
before the next SMTP step, so the ledger (not the mail library's retry loop) decides what is sent:

* ``sending`` is committed *before* the SMTP transaction. A row still ``sending`` when a chunk
  starts means a process died mid-send; the message may or may not have been accepted. Such rows
  become ``ambiguous`` and are not sent again (see README "Exactly once").
* A 4xx reply defers the row (sent by a later try); a 5xx, a render error or a bad address fails
  it with the reason. A broken session re-raises: nothing was accepted without a 250, the rows
  go back to ``pending`` and Airflow's retry sends them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from sqlalchemy import Engine, and_, select, update

from include.triggerflow.config import RoutingConfig
from include.triggerflow.events import parse_envelope
from include.triggerflow.mailer import (
    HeaderInjectionError,
    InvalidAddressError,
    build_message,
    check_header_value,
    message_id_for,
    validate_address,
)
from include.triggerflow.render import Renderer, TemplateRenderError, build_context
from include.triggerflow.store.schema import event, profiles, send

log = logging.getLogger(__name__)

RETRYABLE_STATES = ("pending", "deferred")


class MailSession(Protocol):
    sender: str
    from_name: str | None
    message_id_domain: str

    def send_prepared(self, recipient: str, message: bytes) -> Any: ...


@dataclass
class SendResult:
    batch_id: str
    chunk: int
    counts: dict[str, int] = field(default_factory=dict)

    def as_xcom(self) -> dict[str, object]:
        return {"batch_id": self.batch_id, "chunk": self.chunk, "counts": self.counts}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def send_chunk(
    engine: Engine,
    batch_id: str,
    chunk: int,
    routing: RoutingConfig,
    renderer: Renderer,
    open_session: Callable[[], AbstractContextManager[MailSession]],
) -> SendResult:
    counts = {"sent": 0, "deferred": 0, "failed": 0, "ambiguous": 0}
    with engine.begin() as conn:
        # Rows left in `sending` by a process that died mid-send.
        res = conn.execute(
            update(send)
            .where(and_(send.c.batch_id == batch_id, send.c.chunk == chunk, send.c.state == "sending"))
            .values(state="ambiguous", smtp_reply="process died during the SMTP transaction", updated_at=_now())
        )
        counts["ambiguous"] = max(res.rowcount or 0, 0)
        rows = conn.execute(
            select(
                send.c.send_id,
                send.c.idempotency_key,
                send.c.route,
                send.c.recipient,
                send.c.attempts,
                event.c.payload,
                profiles,
            )
            .join(event, event.c.event_id == send.c.event_id)
            .join(profiles, profiles.c.customer_id == send.c.profile_id)
            .where(and_(send.c.batch_id == batch_id, send.c.chunk == chunk, send.c.state.in_(RETRYABLE_STATES)))
            .order_by(send.c.send_id)
        ).all()
    if not rows:
        log.info("batch %s chunk %d: nothing to send", batch_id, chunk)
        return SendResult(batch_id=batch_id, chunk=chunk, counts=counts)

    routes = {r.name: r for r in routing.routes}
    profile_cols = [c.name for c in profiles.columns]
    with open_session() as mail:
        # The session's From address and Message-ID domain are configuration, not data of one
        # email: a mistake there must fail the task (rows stay pending for the retry once the
        # connection is fixed), not mark every row of the chunk failed for good.
        sender = validate_address(mail.sender)
        from_name = mail.from_name
        if from_name is not None:
            check_header_value("From", from_name)
        message_id_domain = mail.message_id_domain
        message_id_for("0", message_id_domain)
        for row in rows:
            mapping = row._mapping
            profile = {c: mapping[c] for c in profile_cols}
            route = routes.get(row.route)
            try:
                if route is None:
                    raise TemplateRenderError(f"route {row.route!r} is no longer in the routing config")
                rendered = renderer.render(route, build_context(profile=profile, event=parse_envelope(row.payload), route=route))
                recipient = validate_address(row.recipient)
                message_id = message_id_for(row.idempotency_key, message_id_domain)
                message = build_message(
                    from_addr=sender,
                    from_name=from_name,
                    to_addr=recipient,
                    subject=rendered.subject,
                    text=rendered.text,
                    html=rendered.html,
                    message_id=message_id,
                    headers={"X-Triggerflow-Key": row.idempotency_key},
                )
            except (TemplateRenderError, HeaderInjectionError, InvalidAddressError, ValueError) as exc:
                _finish(engine, row.send_id, state="failed", code=None, reply=f"{exc.__class__.__name__}: {exc}")
                counts["failed"] += 1
                continue

            _mark_sending(engine, row.send_id, message_id, rendered.subject, row.attempts)
            try:
                outcome = mail.send_prepared(recipient, message)
            except Exception:
                # The session broke before a 250: the message was not accepted. Put the row back
                # so the task retry sends it; everything sent so far is already recorded.
                _finish(engine, row.send_id, state="pending", code=None, reply="session failed; will retry")
                raise
            if outcome.accepted:
                _finish(engine, row.send_id, state="sent", code=outcome.code, reply=outcome.reply, sent=True)
                counts["sent"] += 1
            elif outcome.permanent:
                _finish(engine, row.send_id, state="failed", code=outcome.code, reply=outcome.reply)
                counts["failed"] += 1
            else:
                _finish(engine, row.send_id, state="deferred", code=outcome.code, reply=outcome.reply)
                counts["deferred"] += 1
    log.info("batch %s chunk %d: %s", batch_id, chunk, counts)
    return SendResult(batch_id=batch_id, chunk=chunk, counts=counts)


def _mark_sending(engine: Engine, send_id: int, message_id: str, subject: str, attempts: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(send)
            .where(send.c.send_id == send_id)
            .values(state="sending", message_id=message_id, subject=subject, attempts=attempts + 1, updated_at=_now())
        )


def _finish(engine: Engine, send_id: int, *, state: str, code: int | None, reply: str, sent: bool = False) -> None:
    values: dict[str, Any] = {"state": state, "smtp_code": code, "smtp_reply": reply[:1000], "updated_at": _now()}
    if sent:
        values["sent_at"] = _now()
    with engine.begin() as conn:
        conn.execute(update(send).where(send.c.send_id == send_id).values(**values))
