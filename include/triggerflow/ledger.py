"""The send ledger's writes for one chunk: ``pending -> sending -> sent | deferred | failed``.

:func:`claim_chunk` opens the chunk in one transaction: rows a dead process left ``sending``
become ``ambiguous`` (the server may or may not have accepted them), rows already ``sent`` are
logged as skipped (or taken again for a deliberate resend), and the rows to send are read with
their event and profile.

:class:`Ledger` then writes per group of *G* emails (``group_size``), on one connection, one
transaction per group: the outcomes of group *k* (``sent``/``deferred``/``failed``/``ambiguous``
with their tf_send_log rows, and a hard bounce's suppression) are queued and committed together
with the ``sending`` marks of group *k + 1*, just before *k + 1*'s first SMTP transaction. So every
row is committed ``sending`` before its SMTP transaction starts and a process that dies leaves at
most *G* rows ``sending`` (with *G* = 1, one transaction per email: at most one).
The statements are compiled once per dialect and run on the raw driver
(``store.bulk.DriverStatement``): the send stage is the benchmark's hot path. On PostgreSQL a
transaction's writes of one kind (the group's ``sending`` marks, the previous group's ``sent``
outcomes, their send-log rows) go as one set-based statement (``store.bulk.RowsStatement``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, Row, and_, bindparam, delete, insert, or_, select, update

from include.triggerflow.send_log import SendLog
from include.triggerflow.smtp_replies import SmtpOutcome
from include.triggerflow.states import SendAction, SendState
from include.triggerflow.store.bulk import (
    DriverSession,
    DriverStatement,
    RawStatement,
    RowsStatement,
    dialect_insert,
    insert_ignore,
)
from include.triggerflow.store.schema import chunk_lease, event, profiles, send, send_log, suppression
from include.triggerflow.suppression import Category
from include.triggerflow.timeutil import as_utc, utcnow

log = logging.getLogger(__name__)

#: ledger states a chunk sends (with ``scheduled`` rows whose quiet hours are over)
RETRYABLE_STATES = (SendState.PENDING, SendState.DEFERRED)


class AmbiguousPolicy(StrEnum):
    """What a chunk does with an ``ambiguous`` row (the server may or may not have its message)."""

    #: not sent again: a duplicate is worse than a gap nobody sees
    HOLD = "hold"
    #: sent again with the same Message-ID, so a receiver can still deduplicate
    RESEND = "resend"


#: the policies' names, as SendOptions' error message lists them
AMBIGUOUS_POLICIES = tuple(p.value for p in AmbiguousPolicy)


#: emails whose ``sending`` marks are committed in one transaction, when neither the run nor the
#: SMTP connection says otherwise (README "Exactly once": the measurements behind it)
DEFAULT_GROUP_SIZE = 50
#: the largest group a run may ask for: a crash leaves at most this many rows ``ambiguous``
MAX_GROUP_SIZE = 1000


@dataclass(frozen=True)
class SendingMark:
    """What the ``sending`` mark of one email records: its Message-ID, subject and locale (the
    email as composed), and the row's attempts so far."""

    send_id: int
    message_id: str
    subject: str
    attempts: int
    locale: str | None


@dataclass
class ClaimedChunk:
    """What :func:`claim_chunk` found: the rows to send (send row + event payload + profile
    columns, by send_id), which of them are resends, and the counts of what it recorded."""

    rows: Sequence[Row[Any]]
    resend_ids: set[int] = field(default_factory=set)
    ambiguous: int = 0
    skipped_already_sent: int = 0


#: a lease older than this is taken over by any task: its holder's run is over (dagrun_timeout is 30 min)
LEASE_STALE_AFTER = timedelta(minutes=45)


def acquire_chunk_lease(engine: Engine, batch_id: str, chunk: int, holder: str, *, now: datetime | None = None,
                        stale_after: timedelta = LEASE_STALE_AFTER,
                        holder_running: Callable[[str], bool] | None = None) -> str | None:
    """Take the chunk for ``holder`` (its DAG run): None when it is ours now, else who holds it.

    Two tasks never send one chunk at once (overlapping runs both pick up an earlier batch's due
    quiet-hours emails; a backfill of a minute whose run is still sending): the second one leaves
    the chunk to the first. A holder's own retry takes its lease back at once (a SIGKILLed task
    leaves it). Another holder's lease is taken over when ``holder_running`` (Airflow, asked about
    the holder's run) says its run is over, or once it is older than ``stale_after``."""
    now = now or utcnow()
    key = and_(chunk_lease.c.batch_id == batch_id, chunk_lease.c.chunk == chunk)
    lease = [{"batch_id": batch_id, "chunk": chunk, "holder": holder, "acquired_at": now}]
    with engine.begin() as conn:
        if insert_ignore(conn, chunk_lease, lease, keys=["batch_id", "chunk"]):
            return None
        current = conn.execute(select(chunk_lease.c.holder, chunk_lease.c.acquired_at).where(key)).first()
        if current is None:  # released meanwhile: try once more
            return None if insert_ignore(conn, chunk_lease, lease, keys=["batch_id", "chunk"]) else "another task"
        if (current.holder != holder and as_utc(current.acquired_at) > now - stale_after
                and (holder_running is None or holder_running(str(current.holder)))):
            return str(current.holder)
        # ours (a retry), stale, or its run is over: take it over unless someone else just did
        moved = conn.execute(
            update(chunk_lease)
            .where(key, chunk_lease.c.holder == current.holder, chunk_lease.c.acquired_at == current.acquired_at)
            .values(holder=holder, acquired_at=now)
        ).rowcount
        return None if moved == 1 else "another task"


def release_chunk_lease(engine: Engine, batch_id: str, chunk: int, holder: str) -> None:
    """Give the chunk back (only if ``holder`` still holds it)."""
    with engine.begin() as conn:
        conn.execute(delete(chunk_lease).where(
            chunk_lease.c.batch_id == batch_id, chunk_lease.c.chunk == chunk, chunk_lease.c.holder == holder))


@contextmanager
def leased_chunk(engine: Engine, batch_id: str, chunk: int, holder: str, *,
                 holder_running: Callable[[str], bool] | None = None) -> Iterator[str | None]:
    """``with leased_chunk(...) as busy:`` — None: the chunk is ours until the block ends; else who
    holds it (the block must leave the chunk alone). A lease that cannot be given back is logged:
    the block's own error is the one raised, and the run's retry takes its lease back anyway."""
    busy = acquire_chunk_lease(engine, batch_id, chunk, holder, holder_running=holder_running)
    try:
        yield busy
    finally:
        if busy is None:
            try:
                release_chunk_lease(engine, batch_id, chunk, holder)
            except Exception:
                log.warning("batch %s chunk %d: lease not released", batch_id, chunk, exc_info=True)


def claim_chunk(engine: Engine, batch_id: str, chunk: int, logger: SendLog, *, now: datetime,
                ambiguous_policy: str, force_resend: bool) -> ClaimedChunk:
    """Open the chunk (one transaction): mark rows left ``sending`` ambiguous, log rows already
    sent as skipped (unless ``force_resend``), and read the rows to send, ordered by send_id."""
    in_chunk = and_(send.c.batch_id == batch_id, send.c.chunk == chunk)
    claimed = ClaimedChunk(rows=[])
    with engine.begin() as conn:
        # Rows left in `sending` by a process that died between committing `sending` and
        # recording the server's reply: the message may or may not have been accepted.
        stuck = list(conn.execute(select(send.c.send_id).where(and_(in_chunk, send.c.state == SendState.SENDING))).scalars())
        if stuck:
            conn.execute(
                update(send)
                .where(send.c.send_id.in_(stuck))
                .values(state=SendState.AMBIGUOUS, smtp_reply="process died during the SMTP transaction", updated_at=utcnow())
            )
            logger.add(conn, stuck, SendAction.AMBIGUOUS, detail=f"policy {ambiguous_policy}")
            claimed.ambiguous = len(stuck)
        states: list[SendState] = list(RETRYABLE_STATES)
        # quiet-hours rows whose window is over; the others wait for a later run
        due = and_(send.c.state == SendState.SCHEDULED, or_(send.c.not_before.is_(None), send.c.not_before <= now))
        if ambiguous_policy == AmbiguousPolicy.RESEND:
            states.append(SendState.AMBIGUOUS)
            claimed.resend_ids.update(
                conn.execute(select(send.c.send_id).where(and_(in_chunk, send.c.state == SendState.AMBIGUOUS))).scalars()
            )
        already_sent = list(conn.execute(select(send.c.send_id).where(and_(in_chunk, send.c.state == SendState.SENT))).scalars())
        if force_resend:
            states.append(SendState.SENT)
            claimed.resend_ids.update(already_sent)
        elif already_sent:
            logger.add(conn, already_sent, SendAction.SKIPPED_SENT)
            claimed.skipped_already_sent = len(already_sent)
        claimed.rows = conn.execute(
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
    return claimed


class Ledger:
    """The ledger writes of one chunk, on one connection, one transaction per group of emails.

    The outcome methods (``sent``, ``deferred``, ``failed``, ``ambiguous``, ``back_to_pending``,
    ``suppress``) queue their statements; ``mark_sending`` commits everything queued together
    with the ``sending`` marks of the next group, so the outcomes of group *k* are committed with
    the marks of group *k + 1*; ``commit`` commits what is queued (the last group's outcomes, or
    when the session broke, the rows of the group it did not send put back to ``pending``).
    """

    def __init__(self, engine: Engine, logger: SendLog) -> None:
        self.logger = logger
        #: the writes not yet committed, in order: (statement name, its values)
        self.queued: list[tuple[str, dict[str, Any]]] = []
        self.session: DriverSession | None = None
        self.engine = engine
        self.statements = ledger_statements(engine)
        self.grouped = grouped_ledger_statements(engine)

    def _db(self) -> DriverSession:
        if self.session is None:
            self.session = DriverSession(self.engine)
        return self.session

    # -- outcomes ------------------------------------------------------------------------------------
    def sent(self, send_id: int, outcome: SmtpOutcome, *, resend: bool) -> None:
        """The server accepted the message (a deliberate or ambiguous resend is logged ``resent``)."""
        self.finish(send_id, state=SendState.SENT, code=outcome.code, reply=outcome.reply, sent=True, resend=resend)
        self.log(send_id, SendAction.RESENT if resend else SendAction.SENT, code=outcome.code)

    def deferred(self, send_id: int, code: int | None, summary: str) -> None:
        """A 4xx (or mailbox full): a later try sends it."""
        self.finish(send_id, state=SendState.DEFERRED, code=code, reply=summary)
        self.log(send_id, SendAction.DEFERRED, code=code, detail=summary)

    def failed(self, send_id: int, code: int | None, reason: str) -> None:
        """Refused for good (a 5xx), or the email could not be made (render, address, size)."""
        self.finish(send_id, state=SendState.FAILED, code=code, reply=reason)
        self.log(send_id, SendAction.FAILED, code=code, detail=reason)

    def ambiguous(self, send_id: int, reason: str, policy: str) -> None:
        """The connection broke after the final "." and before the reply (RFC 1047)."""
        self.finish(send_id, state=SendState.AMBIGUOUS, code=None, reply=reason)
        self.log(send_id, SendAction.AMBIGUOUS, detail=f"policy {policy}: {reason}")

    def back_to_pending(self, send_id: int) -> None:
        """The session broke before the end of DATA: nothing was accepted, the task retry sends it."""
        self.finish(send_id, state=SendState.PENDING, code=None, reply="session failed; will retry")

    def not_sent(self, send_id: int, attempts: int) -> None:
        """Marked ``sending`` with its group but never handed to the server (the group stopped
        before its turn): back to ``pending`` with its attempts as they were."""
        self.queued.append(("not_sent", {
            "b_id": send_id, "b_attempts": attempts, "b_reply": "not sent: the group stopped before its turn; will retry",
            "b_now": utcnow(),
        }))

    def finish(self, send_id: int, *, state: SendState, code: int | None, reply: str, sent: bool = False,
               resend: bool = False) -> None:
        values: dict[str, Any] = {"b_id": send_id, "b_state": state, "b_code": code, "b_reply": reply[:1000], "b_now": utcnow()}
        kind = "finish"
        if sent:
            kind = "finish_resent" if resend else "finish_sent"
        self.queued.append((kind, values))

    def log(self, send_id: int, action: SendAction, *, code: int | None = None, detail: str | None = None) -> None:
        self.queued.append(("log", self.logger.row(send_id, action, code=code, detail=detail)))

    def suppress(self, address: str, code: int | None, reply: str, *, batch_id: str, expires_at: datetime | None) -> None:
        """The mailbox does not exist: do not mail it again (until ``expires_at``; reconcile checks
        tf_suppression). An existing entry is kept, unless it has expired: then it is renewed."""
        now = utcnow()
        self.queued.append((
            "suppress",
            {"b_address": address.strip().lower(), "b_source": Category.HARD_BOUNCE.value, "b_reason": reply[:1000],
             "b_code": code, "b_at": now, "b_expires": expires_at, "b_batch": batch_id, "b_now": now},
        ))

    # -- transactions --------------------------------------------------------------------------------
    def mark_sending(self, marks: Sequence[SendingMark]) -> None:
        """Commit the queued outcomes and the ``sending`` marks of the next group, in one
        transaction. If that fails, the outcomes stay queued and the marks are dropped (the rows
        stay as they were)."""
        now = utcnow()
        items = [
            ("sending", {"b_id": m.send_id, "b_message_id": m.message_id, "b_subject": m.subject,
                         "b_attempts": m.attempts + 1, "b_locale": m.locale, "b_now": now})
            for m in marks
        ]
        self._db().transaction(self._statements([*self.queued, *items]))
        self.queued = []

    def commit(self) -> None:
        if not self.queued:
            return
        self._db().transaction(self._statements(self.queued))
        self.queued = []

    def _statements(self, writes: Sequence[tuple[str, dict[str, Any]]]) -> list[tuple[RawStatement, Any]]:
        """The writes as statements: on PostgreSQL one per kind of write for all its rows (a group's
        ~3 statements per email become ~3 per group; PostgreSQL's share of sending, a quarter of it,
        went down by 40 %); else, or if one row is updated twice, one per write in order."""
        if self.grouped:
            by_kind: dict[str, list[dict[str, Any]]] = {}
            for kind, values in writes:
                by_kind.setdefault(kind, []).append(values)
            updated = [values[_BY_ID[1]] for kind, rows in by_kind.items() if kind in _UPDATES for values in rows]
            if len(set(updated)) == len(updated):
                out: list[tuple[RawStatement, Any]] = []
                for kind, rows in by_kind.items():
                    grouped = self.grouped.get(kind)
                    if grouped is not None and len(rows) > 1:
                        out.append((grouped, rows))
                    else:
                        out.extend((self.statements[kind], values) for values in rows)
                return out
        return [(self.statements[kind], values) for kind, values in writes]

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


#: the writes that update one ledger row each, by its send_id: (column -> the name of its value in
#: the write's values, column -> constant). Both forms are built from these: the per-email
#: statement and, on PostgreSQL, the set-based one, so the two always set the same columns.
_FINISH = {"state": "b_state", "smtp_code": "b_code", "smtp_reply": "b_reply", "updated_at": "b_now"}
_UPDATES: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    "finish": (_FINISH, {}),
    "finish_sent": ({**_FINISH, "sent_at": "b_now"}, {}),
    "finish_resent": ({**_FINISH, "sent_at": "b_now"}, {"resend": True}),
    "sending": ({"message_id": "b_message_id", "subject": "b_subject", "attempts": "b_attempts", "locale": "b_locale",
                 "updated_at": "b_now"}, {"state": SendState.SENDING}),
    "not_sent": ({"attempts": "b_attempts", "smtp_reply": "b_reply", "updated_at": "b_now"}, {"state": SendState.PENDING}),
}
#: the value that names the row an update writes
_BY_ID = ("send_id", "b_id")
_LOG_COLUMNS = [c.name for c in send_log.columns if not c.primary_key]

_STATEMENTS: dict[tuple[str, str], dict[str, DriverStatement]] = {}


def ledger_statements(engine: Engine) -> dict[str, DriverStatement]:
    """The ledger's per-email statements, compiled once per dialect and process."""
    dialect = engine.dialect
    key = (dialect.name, dialect.driver)
    found = _STATEMENTS.get(key)
    if found is not None:
        return found
    by_id = send.c[_BY_ID[0]] == bindparam(_BY_ID[1])
    found = {
        name: DriverStatement(
            update(send).where(by_id).values({**{c: bindparam(v) for c, v in columns.items()}, **constants}), dialect
        )
        for name, (columns, constants) in _UPDATES.items()
    }
    found["suppress"] = DriverStatement(_suppress_statement(engine), dialect)
    # bound by column name, so it takes SendLog.row() as it is ("b_" names: SQLAlchemy reserves
    # a column's own name for the VALUES clause)
    found["log"] = DriverStatement(
        insert(send_log).inline().values({c: bindparam(f"b_{c}") for c in _LOG_COLUMNS}), dialect,
        names={f"b_{c}": c for c in _LOG_COLUMNS},
    )
    _STATEMENTS[key] = found
    return found


_GROUPED: dict[tuple[str, str], dict[str, RowsStatement]] = {}


def grouped_ledger_statements(engine: Engine) -> dict[str, RowsStatement]:
    """The per-email statements' set-based forms (PostgreSQL; none elsewhere): each updates or
    inserts exactly what its per-email statement would, for many rows at once. Suppressions stay
    per email (two bounces of one address in a group would be one row's two updates)."""
    dialect = engine.dialect
    if dialect.name != "postgresql":
        return {}
    key = (dialect.name, dialect.driver)
    found = _GROUPED.get(key)
    if found is not None:
        return found
    found = {
        name: RowsStatement(send, dialect, key=_BY_ID, columns=columns, constants=constants)
        for name, (columns, constants) in _UPDATES.items()
    }
    found["log"] = RowsStatement(send_log, dialect, columns={c: c for c in _LOG_COLUMNS})
    _GROUPED[key] = found
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
