"""Stage 4 — send one chunk of the ledger over one SMTP session.

A ledger row moves ``pending -> sending -> sent | deferred | failed``, and each move is committed
before the next SMTP step, so the ledger (not the mail library's retry loop) decides what is sent:

* ``sending`` is committed *before* the SMTP transaction. A row still ``sending`` when a chunk
  starts means a process died mid-send; the message may or may not have been accepted. Such rows
  become ``ambiguous`` and are not sent again (see README "Exactly once").
* Replies are read as mail operators read them (``smtp_replies``: the stage that answered and the
  RFC 3463 enhanced code). A mailbox that does not exist (5.1.x, 5.2.1, a bare 5xx at RCPT)
  fails the row and suppresses the address (``hard-bounce``, for ``hard_bounce_suppress_days``
  or for good). A message- or sender-level refusal (5xx at MAIL FROM, DATA or end-of-DATA,
  5.7.x, 5.3.4, 5.6.x...) fails the row with the server's reply and suppresses nobody; when the
  same refusal comes back ``refusal_limit`` times in a chunk the chunk stops, the rest stays
  ``pending`` and the task fails with :class:`RelayRefusing`: an incident, not bounces. A 4xx
  (and 5.2.2, mailbox full) defers the row, sent by a later try.
* One email's own problem (render error, bad address, an email over ``max_email_bytes``, any
  exception from hostile data) fails that row with the reason; the chunk goes on.
* A broken session before the end of DATA re-raises: nothing can have been accepted, the row
  goes back to ``pending`` and Airflow's retry sends it. A break after the final "." and before
  the reply (RFC 1047) makes the row ``ambiguous``, handled by ``ambiguous_policy``.
* A ``scheduled`` row (held for the customer's quiet hours) is sent once its ``not_before`` has
  passed, by whichever run's send task gets its chunk first (see reconcile.due_scheduled).

What an email shows of its trigger is :func:`content.email_content`, the function reconcile decided
with: per chunk, ONE catalogue look-up for the SKUs of all its catalogue-route rows, then each
email's content (catalogue products, URLs on the route's link_hosts) becomes its template context.

Every email carries a signed one-click unsubscribe link (RFC 8058 ``List-Unsubscribe`` and
``List-Unsubscribe-Post`` headers, and ``unsubscribe_url`` in the templates), and is rendered in
the profile's locale when the template has a variant for it.

**One commit per email.** The outcome of email *i* (its final state and its ``tf_send_log`` row)
is committed in the same transaction as the ``sending`` mark of email *i + 1*, just before *i + 1*'s
SMTP transaction; the last outcome is committed on its own. The invariant is unchanged: every row
is committed ``sending`` before its SMTP transaction starts, and a process that dies leaves at
most one row ``sending``, the one whose SMTP transaction may or may not have completed (the last
one it started: if it died before recording the 250 of *i*, *i + 1* was never marked). Rows that
fail before the SMTP transaction (render, address) ride along with the next commit; a broken
session commits what is pending (its row back to ``pending``) before raising. The writes use one
connection for the whole chunk and pre-compiled statements (``store.db.DriverStatement``).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, and_, bindparam, insert, or_, select, update

from include.triggerflow.config import RoutingConfig
from include.triggerflow.content import ProductSource, email_content
from include.triggerflow.events import parse_envelope
from include.triggerflow.mailer import (
    MAX_EMAIL_BYTES,
    build_message_fast,
    check_email_size,
    check_header_value,
    list_unsubscribe_headers,
    message_id_for,
    validate_address,
)
from include.triggerflow.render import Renderer, TemplateRenderError, build_context
from include.triggerflow.smtp_replies import (
    DeliveryUncertain,
    ReplyClass,
    SmtpOutcome,
    clean_reply_text,
    mask_addresses,
    outcome_from_summary,
)
from include.triggerflow.stats import refresh_quietly
from include.triggerflow.store.db import DriverSession, DriverStatement, dialect_insert
from include.triggerflow.store.schema import dry_run, event, profiles, send, send_log, suppression
from include.triggerflow.suppression import Category

log = logging.getLogger(__name__)

RETRYABLE_STATES = ("pending", "deferred")


class UnsubscribeLinkMaker(Protocol):
    def url_for(self, customer_id: str, route: str | None = None) -> str: ...


class UnsubscribeNotConfigured(RuntimeError):
    """No unsubscribe links: marketing email must not go out without one."""


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
    return datetime.now(UTC)


@dataclass(frozen=True)
class SendOptions:
    """How a send task treats its chunk (the DAG's run parameters)."""

    run_id: str | None = None
    try_number: int | None = None
    #: render every pending email into ``dry_run_dir`` and send nothing; ledger states stay as
    #: they are, so a later real run sends them
    dry_run: bool = False
    dry_run_dir: Path | None = None
    #: send rows already sent again, deliberately; logged as ``resent``, with a new Message-ID
    force_resend: bool = False
    #: what to do with a row a dead process left in ``sending``: ``hold`` marks it ``ambiguous``
    #: and does not send it again (the default: a duplicate is worse than a gap nobody sees);
    #: ``resend`` sends it again with the same Message-ID, so a receiver can still deduplicate
    ambiguous_policy: str = "hold"
    #: on a try that Airflow can still retry, 4xx deferrals raise so the retry sends them
    last_try: bool = True
    #: signs each email's one-click unsubscribe URL (connection ``triggerflow_unsubscribe``)
    unsubscribe: UnsubscribeLinkMaker | None = None
    #: an optional ``mailto:`` address added to List-Unsubscribe
    unsubscribe_mailto: str | None = None
    #: how long a hard bounce (a mailbox that does not exist) suppresses its address, in days;
    #: None: for good. Lifted early with ``cli suppress lift``.
    hard_bounce_suppress_days: float | None = None
    #: the same message-level refusal (stage, code, enhanced code) this many times in one chunk
    #: stops the chunk: the relay or the message is being refused, not the mailboxes
    refusal_limit: int = 5
    #: a rendered email (headers included) larger than this fails its row
    max_email_bytes: int = MAX_EMAIL_BYTES


class DeferredRecipients(RuntimeError):
    """Some recipients answered 4xx (or 5.2.2, mailbox full); the task retry sends them
    (everything else is recorded)."""


class RelayRefusing(RuntimeError):
    """The same message-level refusal kept coming back: the relay refuses the sender or the
    message (credentials, SPF/DKIM/DMARC, a content filter, size). Nobody was suppressed; the
    rest of the chunk stays pending until the cause is fixed."""


def _reason(exc: BaseException) -> str:
    """``ExceptionType: message`` as storable, printable text (the message may quote hostile data)."""
    try:
        text = str(exc)
    except Exception:
        text = "(message not readable)"
    return clean_reply_text(f"{exc.__class__.__name__}: {text}", limit=1000)


AMBIGUOUS_POLICIES = ("hold", "resend")


def send_chunk(
    engine: Engine,
    batch_id: str,
    chunk: int,
    routing: RoutingConfig,
    renderer: Renderer,
    open_session: Callable[[], AbstractContextManager[MailSession]],
    options: SendOptions | None = None,
) -> SendResult:
    opts = options or SendOptions()
    if opts.ambiguous_policy not in AMBIGUOUS_POLICIES:
        raise ValueError(f"ambiguous_policy must be one of {AMBIGUOUS_POLICIES}, not {opts.ambiguous_policy!r}")
    if opts.refusal_limit < 1 or opts.max_email_bytes < 1:
        raise ValueError(f"refusal_limit and max_email_bytes must be at least 1, not {opts.refusal_limit} and {opts.max_email_bytes}")
    if opts.hard_bounce_suppress_days is not None and not 0 < opts.hard_bounce_suppress_days <= 36500:
        raise ValueError(f"hard_bounce_suppress_days must be in (0, 36500] or None (for good), not {opts.hard_bounce_suppress_days}")
    if opts.dry_run and opts.dry_run_dir is None:
        raise ValueError("dry_run needs dry_run_dir (where the rendered messages are written)")
    if opts.unsubscribe is None:
        raise UnsubscribeNotConfigured(
            "no unsubscribe link signer: define the Airflow connection 'triggerflow_unsubscribe' "
            "(host = the API server's public URL, password = the signing secret; see README, Connections)"
        )
    now = _now()
    counts = {k: 0 for k in ("sent", "resent", "deferred", "failed", "ambiguous", "dry_run", "skipped_already_sent")}
    logger = _SendLog(engine, batch_id, opts)
    in_chunk = and_(send.c.batch_id == batch_id, send.c.chunk == chunk)
    resend_ids: set[int] = set()
    with engine.begin() as conn:
        # Rows left in `sending` by a process that died between committing `sending` and
        # recording the server's reply: the message may or may not have been accepted.
        stuck = list(conn.execute(select(send.c.send_id).where(and_(in_chunk, send.c.state == "sending"))).scalars())
        if stuck:
            conn.execute(
                update(send)
                .where(send.c.send_id.in_(stuck))
                .values(state="ambiguous", smtp_reply="process died during the SMTP transaction", updated_at=_now())
            )
            logger.add(conn, stuck, "ambiguous", detail=f"policy {opts.ambiguous_policy}")
            counts["ambiguous"] = len(stuck)
        states = list(RETRYABLE_STATES)
        # quiet-hours rows whose window is over; the others wait for a later run
        due = and_(send.c.state == "scheduled", or_(send.c.not_before.is_(None), send.c.not_before <= now))
        if opts.ambiguous_policy == "resend":
            states.append("ambiguous")
            resend_ids.update(conn.execute(select(send.c.send_id).where(and_(in_chunk, send.c.state == "ambiguous"))).scalars())
        already_sent = list(conn.execute(select(send.c.send_id).where(and_(in_chunk, send.c.state == "sent"))).scalars())
        if opts.force_resend:
            states.append("sent")
            resend_ids.update(already_sent)
        elif already_sent:
            logger.add(conn, already_sent, "skipped-sent")
            counts["skipped_already_sent"] = len(already_sent)
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
            .where(and_(in_chunk, or_(send.c.state.in_(states), due)))
            .order_by(send.c.send_id)
        ).all()
    if not rows:
        log.info("batch %s chunk %d: nothing to send %s", batch_id, chunk, counts)
        return SendResult(batch_id=batch_id, chunk=chunk, counts=counts)

    routes = {r.name: r for r in routing.routes}
    profile_cols = [c.name for c in profiles.columns]
    events, catalog_items = _chunk_events(engine, rows, routes)
    session = _DryRunSession if opts.dry_run else open_session
    ledger = _Ledger(engine, logger)
    bounce_expiry = None if opts.hard_bounce_suppress_days is None else now + timedelta(days=opts.hard_bounce_suppress_days)
    refusals = _earlier_refusals(engine, batch_id, chunk, opts.run_id)
    try:
        with session() as mail:
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
                resend = row.send_id in resend_ids
                try:
                    if route is None:
                        raise TemplateRenderError(f"route {row.route!r} is no longer in the routing config")
                    unsubscribe_url = opts.unsubscribe.url_for(str(profile["customer_id"]), route.name)
                    parsed = events.get(row.send_id) or parse_envelope(row.payload)
                    locale = profile.get("locale")
                    content = email_content(parsed, route, catalog_items, locale if isinstance(locale, str) else None)
                    context = build_context(
                        profile=profile, event=parsed, route=route, content=content,
                        extra={"unsubscribe_url": unsubscribe_url},
                    )
                    rendered = renderer.render(route, context, locale=profile.get("locale"))
                    recipient = validate_address(row.recipient)
                    # A deliberate resend is a new message; an ambiguous one keeps its Message-ID so
                    # a receiver that did get the first copy can tell it is the same email.
                    key = f"{row.idempotency_key}.resend{row.attempts}" if resend and opts.force_resend else row.idempotency_key
                    message_id = message_id_for(key, message_id_domain)
                    message = check_email_size(build_message_fast(
                        from_addr=sender,
                        from_name=from_name,
                        to_addr=recipient,
                        subject=rendered.subject,
                        text=rendered.text,
                        html=rendered.html,
                        message_id=message_id,
                        headers={
                            "X-Triggerflow-Key": row.idempotency_key,
                            **list_unsubscribe_headers(unsubscribe_url, opts.unsubscribe_mailto),
                        },
                    ), opts.max_email_bytes)
                except Exception as exc:
                    reason = _reason(exc)
                    if opts.dry_run:
                        logger.one(row.send_id, "dry-run", detail=f"would fail: {reason}")
                    else:
                        ledger.finish(row.send_id, state="failed", code=None, reply=reason)
                        ledger.log(row.send_id, "failed", detail=reason)
                    counts["failed"] += 1
                    continue

                if opts.dry_run:
                    path = _write_dry_run(opts.dry_run_dir, batch_id, row.idempotency_key, recipient, message)
                    with engine.begin() as conn:
                        conn.execute(
                            insert(dry_run).values(
                                send_id=row.send_id, batch_id=batch_id, run_id=opts.run_id, path=str(path), rendered_at=_now()
                            )
                        )
                        logger.add(conn, [row.send_id], "dry-run", detail=str(path))
                    counts["dry_run"] += 1
                    continue

                # Commits the outcomes recorded so far together with this row's `sending`.
                ledger.mark_sending(row.send_id, message_id, rendered.subject, row.attempts, rendered.locale)
                try:
                    outcome: SmtpOutcome = mail.send_prepared(recipient, message)
                except DeliveryUncertain as exc:
                    # RFC 1047: the final "." left, the reply never came; the server may have queued
                    # it. Sending it again could deliver it twice: ambiguous_policy decides.
                    reason = _reason(exc)
                    ledger.finish(row.send_id, state="ambiguous", code=None, reply=reason)
                    ledger.log(row.send_id, "ambiguous", detail=f"policy {opts.ambiguous_policy}: {reason}")
                    ledger.commit()
                    raise
                except Exception:
                    # The session broke before the end of DATA: the message cannot have been
                    # accepted. Put the row back so the task retry sends it; everything sent so
                    # far is already recorded.
                    ledger.finish(row.send_id, state="pending", code=None, reply="session failed; will retry")
                    ledger.commit()
                    raise
                kind = outcome.reply_class
                if kind is ReplyClass.ACCEPTED:
                    ledger.finish(row.send_id, state="sent", code=outcome.code, reply=outcome.reply, sent=True, resend=resend)
                    ledger.log(row.send_id, "resent" if resend else "sent", code=outcome.code)
                    counts["resent" if resend else "sent"] += 1
                    continue
                summary = outcome.summary()
                if kind in (ReplyClass.MAILBOX_TRANSIENT, ReplyClass.TRANSIENT):
                    ledger.finish(row.send_id, state="deferred", code=outcome.code, reply=summary)
                    ledger.log(row.send_id, "deferred", code=outcome.code, detail=summary)
                    counts["deferred"] += 1
                    continue
                ledger.finish(row.send_id, state="failed", code=outcome.code, reply=summary)
                ledger.log(row.send_id, "failed", code=outcome.code, detail=summary)
                counts["failed"] += 1
                if kind is ReplyClass.MAILBOX_PERMANENT:
                    ledger.suppress(recipient, outcome.code, summary, batch_id=batch_id, expires_at=bounce_expiry)
                    continue
                refusals[outcome.refusal_key] += 1
                if refusals[outcome.refusal_key] >= opts.refusal_limit:
                    ledger.commit()
                    left = len(rows) - sum(counts[k] for k in ("sent", "resent", "deferred", "failed"))
                    raise RelayRefusing(
                        f"batch {batch_id} chunk {chunk}: the relay or the message is being refused, not the mailboxes: "
                        f"{refusals[outcome.refusal_key]} emails answered {' '.join(filter(None, (str(outcome.code), outcome.enhanced)))} at "
                        f"{outcome.stage.value} ({mask_addresses(outcome.reply)[:200]}). This is an incident, not bounces: nobody "
                        f"was suppressed; the chunk stopped with {left} email(s) left pending, sent on a retry once "
                        "the cause (relay credentials, SPF/DKIM/DMARC, content filter, size) is fixed"
                    )
            ledger.commit()
    except Exception:
        ledger.commit_quietly()
        raise
    finally:
        ledger.close()
        refresh_quietly(engine, batch_id)  # the status counters, also after a failed chunk (stats.py)
    log.info("batch %s chunk %d: %s", batch_id, chunk, counts)
    if counts["deferred"] and not opts.last_try and not opts.dry_run:
        raise DeferredRecipients(
            f"batch {batch_id} chunk {chunk}: {counts['deferred']} recipient(s) answered 4xx (or mailbox full) and were deferred; "
            f"the task retry sends them (sent so far: {counts['sent'] + counts['resent']}, recorded in the ledger)"
        )
    return SendResult(batch_id=batch_id, chunk=chunk, counts=counts)


def _chunk_events(engine: Engine, rows: Sequence[Any], routes: dict[str, Any]) -> tuple[dict[int, Any], dict[str, Any]]:
    """Each row's parsed event (by send_id) and the catalogue items of every SKU the chunk's
    catalogue-route events name, looked up at once. A payload that does not parse is left out
    here: its row fails on its own when it is rendered."""
    from include.triggerflow.stages.reconcile import catalog_skus, lookup_catalog

    events: dict[int, Any] = {}
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


def _earlier_refusals(engine: Engine, batch_id: str, chunk: int, run_id: str | None) -> Counter[tuple[str, int | None, str | None]]:
    """The message-level refusals earlier tries of this run already met in this chunk, by key.

    Seeding the count with them makes each retry of a chunk the relay keeps refusing stop at its
    first refusal again: one email per try probes whether the cause is fixed, instead of
    ``refusal_limit`` more emails failed by every try."""
    found: Counter[tuple[str, int | None, str | None]] = Counter()
    if run_id is None:
        return found
    stmt = (
        select(send_log.c.detail)
        .join(send, send.c.send_id == send_log.c.send_id)
        .where(
            send.c.batch_id == batch_id, send.c.chunk == chunk, send_log.c.run_id == run_id,
            send_log.c.action == "failed", send_log.c.detail.like(f"{ReplyClass.MESSAGE_REFUSED.value} at %"),
        )
    )
    with engine.connect() as conn:
        for (detail,) in conn.execute(stmt):
            earlier = outcome_from_summary(detail)
            if earlier is not None:
                found[earlier.refusal_key] += 1
    return found


class _Ledger:
    """The per-email ledger writes of one chunk, on one connection, one transaction per email.

    ``finish``/``log``/``suppress`` queue their statement; ``mark_sending`` commits everything
    queued together with the ``sending`` update, so the outcome of email *i* is committed with the
    ``sending`` mark of *i + 1*; ``commit`` commits what is queued (the last outcome, or the
    in-flight row put back to ``pending`` when the session broke).
    """

    def __init__(self, engine: Engine, logger: _SendLog) -> None:
        self.logger = logger
        self.queued: list[tuple[DriverStatement, dict[str, Any]]] = []
        self.session: DriverSession | None = None
        self.engine = engine
        self.statements = _ledger_statements(engine)

    def _db(self) -> DriverSession:
        if self.session is None:
            self.session = DriverSession(self.engine)
        return self.session

    def finish(self, send_id: int, *, state: str, code: int | None, reply: str, sent: bool = False,
               resend: bool = False) -> None:
        now = _now()
        values: dict[str, Any] = {"b_id": send_id, "b_state": state, "b_code": code, "b_reply": reply[:1000], "b_now": now}
        kind = "finish"
        if sent:
            kind = "finish_resent" if resend else "finish_sent"
        self.queued.append((self.statements[kind], values))

    def log(self, send_id: int, action: str, *, code: int | None = None, detail: str | None = None) -> None:
        self.queued.append((self.statements["log"], self.logger.row(send_id, action, code=code, detail=detail)))

    def suppress(self, address: str, code: int | None, reply: str, *, batch_id: str, expires_at: datetime | None) -> None:
        """The mailbox does not exist: do not mail it again (until ``expires_at``; reconcile checks
        tf_suppression). An existing entry is kept, unless it has expired: then it is renewed."""
        now = _now()
        self.queued.append((
            self.statements["suppress"],
            {"b_address": address.strip().lower(), "b_source": Category.HARD_BOUNCE.value, "b_reason": reply[:1000],
             "b_code": code, "b_at": now, "b_expires": expires_at, "b_batch": batch_id, "b_now": now},
        ))

    def mark_sending(self, send_id: int, message_id: str, subject: str, attempts: int, locale: str | None) -> None:
        """Commit the queued outcomes and this row's ``sending`` mark, in one transaction. If that
        fails, the outcomes stay queued and the mark is dropped (the row stays as it was)."""
        sending = (
            self.statements["sending"],
            {"b_id": send_id, "b_message_id": message_id, "b_subject": subject, "b_attempts": attempts + 1,
             "b_locale": locale, "b_now": _now()},
        )
        self._db().transaction([*self.queued, sending])
        self.queued = []

    def commit(self) -> None:
        if not self.queued:
            return
        self._db().transaction(self.queued)
        self.queued = []

    def commit_quietly(self) -> None:
        """After an unexpected error: try to keep the outcomes already known (emails accepted are
        recorded ``sent`` rather than left ``sending``); the original error is what is raised."""
        try:
            self.commit()
        except Exception:
            log.exception("could not record the last outcomes of the chunk")

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


_STATEMENTS: dict[tuple[str, str], dict[str, DriverStatement]] = {}


def _ledger_statements(engine: Engine) -> dict[str, DriverStatement]:
    """The ledger's per-email statements, compiled once per dialect and process."""
    dialect = engine.dialect
    key = (dialect.name, dialect.driver)
    found = _STATEMENTS.get(key)
    if found is not None:
        return found
    by_id = send.c.send_id == bindparam("b_id")
    finish = {"state": bindparam("b_state"), "smtp_code": bindparam("b_code"), "smtp_reply": bindparam("b_reply"),
              "updated_at": bindparam("b_now")}
    statements = {
        "finish": update(send).where(by_id).values(**finish),
        "finish_sent": update(send).where(by_id).values(**finish, sent_at=bindparam("b_now")),
        "finish_resent": update(send).where(by_id).values(**finish, sent_at=bindparam("b_now"), resend=True),
        "sending": update(send).where(by_id).values(
            state="sending", message_id=bindparam("b_message_id"), subject=bindparam("b_subject"),
            attempts=bindparam("b_attempts"), locale=bindparam("b_locale"), updated_at=bindparam("b_now"),
        ),
        "suppress": _suppress_statement(engine),
    }
    found = {name: DriverStatement(stmt, dialect) for name, stmt in statements.items()}
    # bound by column name, so it takes _SendLog.row() as it is ("b_" names: SQLAlchemy reserves
    # a column's own name for the VALUES clause)
    log_columns = [c.name for c in send_log.columns if not c.primary_key]
    found["log"] = DriverStatement(
        insert(send_log).inline().values({c: bindparam(f"b_{c}") for c in log_columns}), dialect,
        names={f"b_{c}": c for c in log_columns},
    )
    _STATEMENTS[key] = found
    return found


def _suppress_statement(engine: Engine) -> Any:
    stmt = dialect_insert(engine, suppression).values(
        address=bindparam("b_address"), source=bindparam("b_source"), reason=bindparam("b_reason"),
        smtp_code=bindparam("b_code"), created_at=bindparam("b_at"), expires_at=bindparam("b_expires"),
        batch_id=bindparam("b_batch"),
    )
    renewed = {c: stmt.excluded[c] for c in ("source", "reason", "smtp_code", "created_at", "expires_at", "batch_id")}
    # only an expired entry is replaced: a live one (a block-list entry, an earlier bounce) stays as it is
    return stmt.on_conflict_do_update(
        index_elements=["address"], set_=renewed,
        where=and_(suppression.c.expires_at.is_not(None), suppression.c.expires_at <= bindparam("b_now")),
    )


class _SendLog:
    """Appends to tf_send_log: what this run and try did to each ledger row."""

    def __init__(self, engine: Engine, batch_id: str, opts: SendOptions) -> None:
        self.engine = engine
        self.batch_id = batch_id
        self.opts = opts

    def row(self, send_id: int, action: str, *, code: int | None = None, detail: str | None = None,
            at: datetime | None = None) -> dict[str, Any]:
        """One tf_send_log row (column -> value)."""
        return {
            "send_id": send_id,
            "batch_id": self.batch_id,
            "run_id": self.opts.run_id,
            "try_number": self.opts.try_number,
            "action": action,
            "smtp_code": code,
            "detail": detail[:1000] if detail else None,
            "at": at or _now(),
        }

    def add(self, conn: Any, send_ids: list[int], action: str, *, code: int | None = None, detail: str | None = None) -> None:
        if not send_ids:
            return
        now = _now()
        conn.execute(insert(send_log), [self.row(sid, action, code=code, detail=detail, at=now) for sid in send_ids])

    def one(self, send_id: int, action: str, *, code: int | None = None, detail: str | None = None) -> None:
        with self.engine.begin() as conn:
            self.add(conn, [send_id], action, code=code, detail=detail)


class _DryRunSession:
    """Stands in for the SMTP session in a dry run: same checks, nothing sent."""

    sender = "dry-run@triggerflow.local"
    from_name = "triggerflow dry run"
    message_id_domain = "dry-run.triggerflow.local"

    def __enter__(self) -> _DryRunSession:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def send_prepared(self, recipient: str, message: bytes) -> Any:  # pragma: no cover - never called
        raise AssertionError("a dry run never sends")


def _write_dry_run(folder: Path | None, batch_id: str, key: str, recipient: str, message: bytes) -> Path:
    assert folder is not None
    target = folder / re.sub(r"[^A-Za-z0-9._-]+", "_", batch_id)
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"{key}.eml"
    tmp = path.with_suffix(".eml.tmp")
    tmp.write_bytes(b"X-Envelope-To: " + recipient.encode() + b"\r\n" + message)
    tmp.replace(path)
    return path
