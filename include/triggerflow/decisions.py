"""The decision log (``tf_decision``): why each valid event did or did not become an email.

Queried per run (``run_id``, through the run's batch), per batch, per customer (the profile id,
or the identity value carried by the event when no profile matched) and per decision code.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict, cast

from sqlalchemy import Engine, func, or_, select

from include.triggerflow.states import SUPPRESSED_PREFIX
from include.triggerflow.store.schema import batch, decision, send


class DecisionRow(TypedDict):
    """One decision as :func:`query_decisions` returns it (date-times as ISO 8601 text)."""

    event_id: int
    batch_id: str
    run_id: str | None
    route: str | None
    trigger_id: str | None
    customer_key: str | None
    profile_id: str | None
    decision: str
    detail: str | None
    decided_at: str
    send_state: str | None
    not_before: str | None
    sent_at: str | None


def query_decisions(
    engine: Engine,
    *,
    run_id: str | None = None,
    batch_id: str | None = None,
    customer: str | None = None,
    code: str | None = None,
    limit: int = 200,
) -> list[DecisionRow]:
    """Decisions, newest first, with the email's ledger state when one was queued.

    ``customer`` matches the profile id or the event's identity value (``customer_key``), so an
    unmatched event can be found by the shopper id it carried. ``code`` matches a decision exactly,
    or every ``suppressed:*`` decision when given as ``suppressed``.
    """
    stmt = (
        select(
            decision.c.event_id,
            decision.c.batch_id,
            batch.c.run_id,
            decision.c.route,
            decision.c.trigger_id,
            decision.c.customer_key,
            decision.c.profile_id,
            decision.c.decision,
            decision.c.detail,
            decision.c.decided_at,
            send.c.state.label("send_state"),
            send.c.not_before,
            send.c.sent_at,
        )
        .join(batch, batch.c.batch_id == decision.c.batch_id, isouter=True)
        .join(send, send.c.event_id == decision.c.event_id, isouter=True)
        .order_by(decision.c.decided_at.desc(), decision.c.event_id.desc())
        .limit(limit)
    )
    if run_id is not None:
        stmt = stmt.where(batch.c.run_id == run_id)
    if batch_id is not None:
        stmt = stmt.where(decision.c.batch_id == batch_id)
    if customer is not None:
        stmt = stmt.where(or_(decision.c.profile_id == customer, decision.c.customer_key == customer))
    if code == SUPPRESSED_PREFIX.rstrip(":"):
        stmt = stmt.where(decision.c.decision.like(SUPPRESSED_PREFIX + "%"))
    elif code is not None:
        stmt = stmt.where(decision.c.decision == code)
    with engine.connect() as conn:
        return [cast(DecisionRow, _plain(dict(row._mapping))) for row in conn.execute(stmt)]


def decision_counts(engine: Engine, *, run_id: str | None = None, batch_id: str | None = None) -> dict[str, int]:
    """``{decision: count}`` of one run or batch."""
    stmt = select(decision.c.decision, func.count()).group_by(decision.c.decision)
    if run_id is not None:
        stmt = stmt.join(batch, batch.c.batch_id == decision.c.batch_id).where(batch.c.run_id == run_id)
    if batch_id is not None:
        stmt = stmt.where(decision.c.batch_id == batch_id)
    with engine.connect() as conn:
        return {str(k): int(n) for k, n in conn.execute(stmt)}


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
