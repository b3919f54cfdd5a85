"""``tf_send_log``: what each run's try of the send stage did with each ledger row.

One row per action (:class:`~include.triggerflow.states.SendAction`): sent, resent, deferred,
failed, ambiguous, dry-run, skipped-sent; with the run id, the try number, the SMTP code and a
detail (the server's reply summary, the render error, the dry-run file). The report's "this run"
counts and :func:`earlier_refusals` read it back.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from include.triggerflow.smtp_replies import ReplyClass, outcome_from_summary
from include.triggerflow.states import SendAction
from include.triggerflow.store.schema import send, send_log
from include.triggerflow.timeutil import utcnow

#: (SMTP stage, code, enhanced code): what makes two message-level refusals the same
RefusalKey = tuple[str, int | None, str | None]


class SendLog:
    """Appends to tf_send_log for one batch, run and try."""

    def __init__(self, engine: Engine, batch_id: str, run_id: str | None, try_number: int | None) -> None:
        self.engine = engine
        self.batch_id = batch_id
        self.run_id = run_id
        self.try_number = try_number

    def row(self, send_id: int, action: SendAction, *, code: int | None = None, detail: str | None = None,
            at: datetime | None = None) -> dict[str, Any]:
        """One tf_send_log row (column -> value)."""
        return {
            "send_id": send_id,
            "batch_id": self.batch_id,
            "run_id": self.run_id,
            "try_number": self.try_number,
            "action": action,
            "smtp_code": code,
            "detail": detail[:1000] if detail else None,
            "at": at or utcnow(),
        }

    def add(self, conn: Connection, send_ids: list[int], action: SendAction, *, code: int | None = None,
            detail: str | None = None) -> None:
        """Log ``action`` for every row of ``send_ids`` in the caller's transaction."""
        if not send_ids:
            return
        now = utcnow()
        conn.execute(insert(send_log), [self.row(sid, action, code=code, detail=detail, at=now) for sid in send_ids])

    def one(self, send_id: int, action: SendAction, *, code: int | None = None, detail: str | None = None) -> None:
        """Log one action in a transaction of its own."""
        with self.engine.begin() as conn:
            self.add(conn, [send_id], action, code=code, detail=detail)


def earlier_refusals(engine: Engine, batch_id: str, chunk: int, run_id: str | None) -> Counter[RefusalKey]:
    """The message-level refusals earlier tries of this run already met in this chunk, by key.

    Seeding the count with them makes each retry of a chunk the relay keeps refusing stop at its
    first refusal again: one email per try probes whether the cause is fixed, instead of
    ``refusal_limit`` more emails failed by every try."""
    found: Counter[RefusalKey] = Counter()
    if run_id is None:
        return found
    stmt = (
        select(send_log.c.detail)
        .join(send, send.c.send_id == send_log.c.send_id)
        .where(
            send.c.batch_id == batch_id, send.c.chunk == chunk, send_log.c.run_id == run_id,
            send_log.c.action == SendAction.FAILED, send_log.c.detail.like(f"{ReplyClass.MESSAGE_REFUSED.value} at %"),
        )
    )
    with engine.connect() as conn:
        for (detail,) in conn.execute(stmt):
            earlier = outcome_from_summary(detail)
            if earlier is not None:
                found[earlier.refusal_key] += 1
    return found
