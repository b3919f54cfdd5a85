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

What an email shows of its trigger, its one-click unsubscribe link and its locale: ``compose.py``.

**One commit per group of G emails** (``SendOptions.group_size``: the run's ``send_group_size``,
else the SMTP connection's extra, else ``ledger.DEFAULT_GROUP_SIZE``). The group's emails are
composed, then their ``sending`` marks are committed in one transaction together with the outcomes
of the group before (their final states, ``tf_send_log`` rows and suppressions); then one SMTP
transaction per email; the last group's outcomes are committed on their own. The invariant holds
for any G: every row is committed ``sending`` before its SMTP transaction starts, and a process
that dies leaves at most G rows ``sending`` — each of which may or may not have been accepted, so
the next try makes them ``ambiguous`` (with G = 1, one transaction per email: at most one row).
Whatever stops a group short (a broken session, a relay refusing) puts the rows it did not send
back to ``pending`` in the commit before raising. Rows that fail before the SMTP transaction
(render, address) ride along with the next commit. The writes use one connection for the whole
chunk and pre-compiled statements (``store.bulk.DriverStatement``).

**One task per chunk at a time.** A send task leases its chunk (``tf_chunk_lease``, by DAG run)
before it claims the rows and gives it back at the end. With overlapping runs, or a backfill of a
minute whose run is still sending, a second task for the same chunk finds it leased and leaves it
to the holder (counts all zero); the holder's own retry takes a lease a killed try left behind.

Modules: the ledger's statements (claiming a chunk, the per-email writes) are ``ledger.py``,
tf_send_log and the earlier refusals ``send_log.py``, each email's rendering ``compose.py``, dry
runs ``stages/dry_run.py``; this module decides, per email, what its SMTP outcome means.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, Row

from include.triggerflow.compose import Composer, Email, SenderIdentity, UnsubscribeLinkMaker
from include.triggerflow.config import RoutingConfig
from include.triggerflow.gc_pause import collector_paused
from include.triggerflow.ledger import (
    AMBIGUOUS_POLICIES,
    DEFAULT_GROUP_SIZE,
    MAX_GROUP_SIZE,
    RETRYABLE_STATES,
    AmbiguousPolicy,
    Ledger,
    SendingMark,
    claim_chunk,
    leased_chunk,
)
from include.triggerflow.mailer import (
    MAX_EMAIL_BYTES,
)
from include.triggerflow.payloads import SentXCom
from include.triggerflow.render import Renderer
from include.triggerflow.send_log import RefusalKey, SendLog, earlier_refusals
from include.triggerflow.smtp_replies import (
    DeliveryUncertain,
    ReplyClass,
    SmtpOutcome,
    clean_reply_text,
    mask_addresses,
)
from include.triggerflow.stages.dry_run import DryRunSession, record_dry_run
from include.triggerflow.states import SendAction
from include.triggerflow.stats import refresh_quietly
from include.triggerflow.timeutil import utcnow

__all__ = [
    "AMBIGUOUS_POLICIES",
    "RETRYABLE_STATES",
    "AmbiguousPolicy",
    "DeferredRecipients",
    "MailSession",
    "RelayRefusing",
    "SendOptions",
    "SendResult",
    "UnsubscribeLinkMaker",
    "UnsubscribeNotConfigured",
    "send_chunk",
]

log = logging.getLogger(__name__)


class UnsubscribeNotConfigured(RuntimeError):
    """No unsubscribe links: marketing email must not go out without one."""


class MailSession(SenderIdentity, Protocol):
    """One SMTP session (``hooks.smtp.TriggerMailHook``; a fake in tests): its sender and one SMTP
    transaction per prepared message."""

    def send_prepared(self, recipient: str, message: bytes) -> SmtpOutcome: ...


#: the counts of one chunk's send (SendResult.counts; the report's "this run")
COUNT_KEYS = ("sent", "resent", "deferred", "failed", "ambiguous", "dry_run", "skipped_already_sent")


@dataclass
class SendResult:
    batch_id: str
    chunk: int
    counts: dict[str, int] = field(default_factory=dict)

    def as_xcom(self) -> SentXCom:
        return {"batch_id": self.batch_id, "chunk": self.chunk, "counts": self.counts}


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
    ambiguous_policy: str = AmbiguousPolicy.HOLD
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
    #: G: emails whose ``sending`` marks (and then outcomes) are committed in one transaction. A
    #: process that dies mid-group leaves at most G rows ``ambiguous``; 1 is one transaction per email
    group_size: int = DEFAULT_GROUP_SIZE
    #: who leases the chunk (``tf_chunk_lease``): the DAG run, ``dag_id|run_id``; default the run id
    lease_holder: str | None = None
    #: whether another lease holder's run is still going (Airflow's answer); None: only its age counts
    holder_running: Callable[[str], bool] | None = None

    def check(self) -> UnsubscribeLinkMaker:
        """ValueError for options that contradict each other; the unsubscribe signer, which
        must be there (UnsubscribeNotConfigured)."""
        if self.ambiguous_policy not in AMBIGUOUS_POLICIES:
            raise ValueError(f"ambiguous_policy must be one of {AMBIGUOUS_POLICIES}, not {self.ambiguous_policy!r}")
        if self.refusal_limit < 1 or self.max_email_bytes < 1:
            raise ValueError(f"refusal_limit and max_email_bytes must be at least 1, not {self.refusal_limit} and {self.max_email_bytes}")
        if not 1 <= self.group_size <= MAX_GROUP_SIZE:
            raise ValueError(f"group_size must be in [1, {MAX_GROUP_SIZE}], not {self.group_size}")
        if self.hard_bounce_suppress_days is not None and not 0 < self.hard_bounce_suppress_days <= 36500:
            raise ValueError(f"hard_bounce_suppress_days must be in (0, 36500] or None (for good), not {self.hard_bounce_suppress_days}")
        if self.dry_run and self.dry_run_dir is None:
            raise ValueError("dry_run needs dry_run_dir (where the rendered messages are written)")
        if self.unsubscribe is None:
            raise UnsubscribeNotConfigured(
                "no unsubscribe link signer: define the Airflow connection 'triggerflow_unsubscribe' "
                "(host = the API server's public URL, password = the signing secret; see README, Connections)"
            )
        return self.unsubscribe


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


@collector_paused()
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
    unsubscribe = opts.check()
    holder = opts.lease_holder or opts.run_id or "outside a DAG run"
    with leased_chunk(engine, batch_id, chunk, holder, holder_running=opts.holder_running) as busy:
        if busy is not None:
            # another task (an overlapping run, a backfill) is sending this chunk: its rows are its
            log.info("batch %s chunk %d: being sent by %s; left to it", batch_id, chunk, busy)
            return SendResult(batch_id=batch_id, chunk=chunk, counts=dict.fromkeys(COUNT_KEYS, 0))
        return _send(engine, batch_id, chunk, routing, renderer, open_session, opts, unsubscribe)


def _send(engine: Engine, batch_id: str, chunk: int, routing: RoutingConfig, renderer: Renderer,
          open_session: Callable[[], AbstractContextManager[MailSession]], opts: SendOptions,
          unsubscribe: UnsubscribeLinkMaker) -> SendResult:
    """The chunk's send, once its lease is held."""
    now = utcnow()
    counts = dict.fromkeys(COUNT_KEYS, 0)
    logger = SendLog(engine, batch_id, opts.run_id, opts.try_number)
    claimed = claim_chunk(
        engine, batch_id, chunk, logger, now=now, ambiguous_policy=opts.ambiguous_policy, force_resend=opts.force_resend
    )
    counts["ambiguous"], counts["skipped_already_sent"] = claimed.ambiguous, claimed.skipped_already_sent
    rows = claimed.rows
    if not rows:
        log.info("batch %s chunk %d: nothing to send %s", batch_id, chunk, counts)
        return SendResult(batch_id=batch_id, chunk=chunk, counts=counts)

    composer = Composer(
        engine, rows, routing, renderer, unsubscribe=unsubscribe, unsubscribe_mailto=opts.unsubscribe_mailto,
        force_resend=opts.force_resend, max_email_bytes=opts.max_email_bytes,
    )
    ledger = Ledger(engine, logger)
    bounce_expiry = None if opts.hard_bounce_suppress_days is None else now + timedelta(days=opts.hard_bounce_suppress_days)
    refusals = earlier_refusals(engine, batch_id, chunk, opts.run_id)
    try:
        with (DryRunSession if opts.dry_run else open_session)() as mail:
            composer.use_session(mail)
            for start in range(0, len(rows), opts.group_size):
                group: list[_Composed] = []
                for row in rows[start : start + opts.group_size]:
                    resend = row.send_id in claimed.resend_ids
                    try:
                        email = composer.compose(row, resend)
                    except Exception as exc:
                        # one email's own problem (render, address, size, hostile data) fails that row only
                        reason = _reason(exc)
                        if opts.dry_run:
                            logger.one(row.send_id, SendAction.DRY_RUN, detail=f"would fail: {reason}")
                        else:
                            ledger.failed(row.send_id, None, reason)
                        counts["failed"] += 1
                        continue
                    if opts.dry_run:
                        record_dry_run(engine, logger, opts.dry_run_dir, batch_id, opts.run_id, row.send_id,
                                       row.idempotency_key, email.recipient, email.message)
                        counts["dry_run"] += 1
                        continue
                    group.append(_Composed(row, email, resend))
                if group:
                    _send_group(mail, ledger, group, opts, counts, refusals,
                                lambda outcome: _relay_refusing(batch_id, chunk, outcome, refusals, len(rows), counts),
                                batch_id, bounce_expiry)
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


@dataclass(frozen=True)
class _Composed:
    row: Row[Any]
    email: Email
    resend: bool


def _send_group(mail: MailSession, ledger: Ledger, group: list[_Composed], opts: SendOptions, counts: dict[str, int],
                refusals: Counter[RefusalKey], refusing: Callable[[SmtpOutcome], RelayRefusing], batch_id: str,
                bounce_expiry: datetime | None) -> None:
    """Commit the group ``sending`` (with the outcomes recorded so far), then one SMTP transaction
    per email. Whatever stops the group puts the rows it did not send back to ``pending``."""
    ledger.mark_sending([
        SendingMark(c.row.send_id, c.email.message_id, c.email.subject, c.row.attempts, c.email.locale) for c in group
    ])
    for i, c in enumerate(group):
        try:
            outcome = mail.send_prepared(c.email.recipient, c.email.message)
        except DeliveryUncertain as exc:
            # RFC 1047: the final "." left, the reply never came; the server may have queued it.
            # Sending it again could deliver it twice: ambiguous_policy decides.
            ledger.ambiguous(c.row.send_id, _reason(exc), opts.ambiguous_policy)
            _put_back(ledger, group[i + 1 :])
            ledger.commit()
            raise
        except Exception:
            # The session broke before the end of DATA: this message cannot have been accepted, nor
            # the group's later ones. Their rows go back to pending for the task retry; everything
            # sent so far is recorded.
            ledger.back_to_pending(c.row.send_id)
            _put_back(ledger, group[i + 1 :])
            ledger.commit()
            raise
        counts[_record(ledger, c.row.send_id, c.email.recipient, outcome, c.resend, batch_id, bounce_expiry)] += 1
        if outcome.reply_class is ReplyClass.MESSAGE_REFUSED:
            refusals[outcome.refusal_key] += 1
            if refusals[outcome.refusal_key] >= opts.refusal_limit:
                _put_back(ledger, group[i + 1 :])
                ledger.commit()
                raise refusing(outcome)


def _put_back(ledger: Ledger, unsent: list[_Composed]) -> None:
    for c in unsent:
        ledger.not_sent(c.row.send_id, c.row.attempts)


def _record(ledger: Ledger, send_id: int, recipient: str, outcome: SmtpOutcome, resend: bool, batch_id: str,
            bounce_expiry: datetime | None) -> str:
    """Queue the ledger writes of one SMTP outcome; returns the count it adds to."""
    kind = outcome.reply_class
    if kind is ReplyClass.ACCEPTED:
        ledger.sent(send_id, outcome, resend=resend)
        return "resent" if resend else "sent"
    summary = outcome.summary()
    if kind is ReplyClass.MAILBOX_TRANSIENT or kind is ReplyClass.TRANSIENT:
        ledger.deferred(send_id, outcome.code, summary)
        return "deferred"
    ledger.failed(send_id, outcome.code, summary)
    if kind is ReplyClass.MAILBOX_PERMANENT:
        ledger.suppress(recipient, outcome.code, summary, batch_id=batch_id, expires_at=bounce_expiry)
    return "failed"


def _relay_refusing(batch_id: str, chunk: int, outcome: SmtpOutcome, refusals: Counter[RefusalKey], total: int,
                    counts: Mapping[str, int]) -> RelayRefusing:
    left = total - sum(counts[k] for k in ("sent", "resent", "deferred", "failed"))
    return RelayRefusing(
        f"batch {batch_id} chunk {chunk}: the relay or the message is being refused, not the mailboxes: "
        f"{refusals[outcome.refusal_key]} emails answered {' '.join(filter(None, (str(outcome.code), outcome.enhanced)))} at "
        f"{outcome.stage.value} ({mask_addresses(outcome.reply)[:200]}). This is an incident, not bounces: nobody "
        f"was suppressed; the chunk stopped with {left} email(s) left pending, sent on a retry once "
        "the cause (relay credentials, SPF/DKIM/DMARC, content filter, size) is fixed"
    )
