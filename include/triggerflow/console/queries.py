"""The Triggers console's read-only store queries (the plugin's /pipelined/runs, run, quarantine,
search and alerts views).

Every function takes a Connection the plugin opened through its StoreGuard (short timeouts,
bounded concurrency) and reads only: the console never writes the store (reprocessing goes through
Airflow's API, :mod:`include.triggerflow.console.reprocess`). The store holds tens of millions of
events, decisions and ledger rows, so every look-up here is bounded (``LIMIT``) and reaches the big
tables only through an index:

* a batch's ledger, quarantine and events: ``tf_send``/``tf_quarantine``/``tf_event`` by ``batch_id``;
* a time range of quarantine: the batches that could hold it (``tf_batch`` is one row a minute),
  then their quarantine by ``batch_id`` — ``tf_event.received_at`` has no index of its own;
* a customer: ``profiles.email`` → ``customer_id``, then ``tf_decision.profile_id`` and
  ``tf_send (profile_id, created_at)``; ``tf_suppression`` by its key, the address.

Values are returned as the store holds them (attacker-controlled text included): the templates
escape them and :func:`clip` bounds what a page shows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select

from include.triggerflow.states import BatchState
from include.triggerflow.store.schema import (
    alert,
    batch,
    decision,
    event,
    profiles,
    quarantine,
    run_outcome,
    run_summary,
    send,
    suppression,
)
from include.triggerflow.timeutil import as_utc

#: how many characters of a payload, reason, SMTP reply or detail a page shows
CLIP_CHARS = 300
#: rows per page of a run's ledger or a quarantine listing (?offset= pages on)
PAGE_ROWS = 200
#: the most batches the runs view lists, decisions/sends a search returns, resolved alerts shown
MAX_RUNS = 500
SEARCH_ROWS = 100
RESOLVED_ALERTS = 20
#: the widest receive-time range a quarantine listing covers (the reprocess action's bound too)
MAX_RANGE = timedelta(days=7)
#: a batch's range ends just after its last event (``until`` is exclusive)
RANGE_END_PAD = timedelta(milliseconds=1)


def clip(value: Any, limit: int = CLIP_CHARS) -> str:
    """``value`` as text of at most ``limit`` characters, "…" marking a cut (None: "")."""
    if value is None:
        return ""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text if len(text) <= limit else text[:limit] + "…"


# -- runs --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunRow:
    batch_id: str
    dag_id: str
    run_id: str
    state: str
    created_at: datetime | None
    pulled: int
    valid: int | None
    quarantined: int | None
    sent: int | None
    suppressed: int | None
    failed: int | None
    pending: int | None
    balanced: bool | None  # None: no report yet (the run has not reached its report, or failed)
    latency_p95_s: float | None


def _latency_p95(counts: str | None) -> float | None:
    """p95 of trigger → SMTP acceptance from the report's JSON (None: no email, or unreadable)."""
    if not counts:
        return None
    try:
        value = (json.loads(counts).get("latency_s") or {}).get("p95")
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def run_state(batch_state: str | None, outcome: str | None) -> str:
    """What an operator calls the run's state: its recorded outcome (``tf_run_outcome``: the
    report's "succeeded", a task's final "failed"; the last word wins after a clear), else where
    its batch is — still "pulling", or landed and "in progress"."""
    if outcome:
        return str(outcome)
    return BatchState.PULLING.value if batch_state == BatchState.PULLING else "in progress"


def latest_runs(conn: Connection, limit: int = 50) -> list[RunRow]:
    """The newest batches (by creation), with their report and outcome where there are."""
    limit = max(1, min(int(limit), MAX_RUNS))
    rs = run_summary.c
    landed_by = and_(run_outcome.c.dag_id == batch.c.dag_id, run_outcome.c.run_id == batch.c.run_id)
    rows = conn.execute(
        select(
            batch.c.batch_id, batch.c.dag_id, batch.c.run_id, batch.c.state, batch.c.created_at, batch.c.pulled,
            rs.pulled.label("reported_pulled"), rs.valid, rs.quarantined, rs.sent, rs.suppressed, rs.failed,
            rs.pending, rs.balanced, rs.counts, rs.batch_id.label("reported"), run_outcome.c.outcome,
        )
        .select_from(
            batch.outerjoin(run_summary, run_summary.c.batch_id == batch.c.batch_id).outerjoin(run_outcome, landed_by)
        )
        .order_by(batch.c.created_at.desc(), batch.c.batch_id.desc())
        .limit(limit)
    ).mappings()
    return [
        RunRow(
            batch_id=r["batch_id"], dag_id=r["dag_id"], run_id=r["run_id"], state=run_state(r["state"], r["outcome"]),
            created_at=r["created_at"], pulled=int(r["reported_pulled"] if r["reported_pulled"] is not None else r["pulled"] or 0),
            valid=r["valid"], quarantined=r["quarantined"], sent=r["sent"], suppressed=r["suppressed"],
            failed=r["failed"], pending=r["pending"],
            balanced=None if r["reported"] is None else bool(r["balanced"]),
            latency_p95_s=_latency_p95(r["counts"]),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class BatchInfo:
    batch_id: str
    dag_id: str
    run_id: str
    state: str
    source: str
    created_at: datetime | None
    landed_at: datetime | None
    pulled: int


def batch_info(conn: Connection, batch_id: str) -> BatchInfo | None:
    row = conn.execute(
        select(
            batch.c.batch_id, batch.c.dag_id, batch.c.run_id, batch.c.state, batch.c.source,
            batch.c.created_at, batch.c.landed_at, batch.c.pulled,
        ).where(batch.c.batch_id == batch_id)
    ).mappings().first()
    if row is None:
        return None
    return BatchInfo(**{**row, "pulled": int(row["pulled"] or 0)})


# -- one run's ledger --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LedgerRow:
    send_id: int
    recipient: str
    state: str
    smtp_code: int | None
    smtp_reply: str
    subject: str
    route: str
    profile_id: str
    attempts: int
    created_at: datetime | None
    sent_at: datetime | None


def _ledger_rows(rows: Any) -> list[LedgerRow]:
    return [
        LedgerRow(
            send_id=int(r["send_id"]), recipient=r["recipient"], state=r["state"], smtp_code=r["smtp_code"],
            smtp_reply=clip(r["smtp_reply"]), subject=clip(r["subject"]), route=r["route"], profile_id=r["profile_id"],
            attempts=int(r["attempts"] or 0), created_at=r["created_at"], sent_at=r["sent_at"],
        )
        for r in rows
    ]


_LEDGER_COLUMNS = (
    send.c.send_id, send.c.recipient, send.c.state, send.c.smtp_code, send.c.smtp_reply, send.c.subject,
    send.c.route, send.c.profile_id, send.c.attempts, send.c.created_at, send.c.sent_at,
)


def ledger(conn: Connection, batch_id: str, *, offset: int = 0, limit: int = PAGE_ROWS) -> tuple[int, list[LedgerRow]]:
    """(rows in the batch's ledger, one page of them in send_id order)."""
    where = send.c.batch_id == batch_id
    total = int(conn.execute(select(func.count()).select_from(send).where(where)).scalar_one())
    rows = conn.execute(
        select(*_LEDGER_COLUMNS).where(where).order_by(send.c.send_id).offset(max(0, offset)).limit(max(1, min(limit, PAGE_ROWS)))
    ).mappings()
    return total, _ledger_rows(rows)


# -- quarantine ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuarantineRow:
    event_id: int
    batch_id: str
    reasons: str
    received_at: datetime | None
    quarantined_at: datetime | None
    reprocessed_at: datetime | None
    payload: str


def reasons_text(raw: str | None) -> str:
    """tf_quarantine.reasons (a JSON list of {expectation, column, value}) as one line."""
    if not raw:
        return ""
    try:
        items = json.loads(raw)
    except ValueError:
        return clip(raw)
    if not isinstance(items, list):
        return clip(raw)
    parts = []
    for item in items:
        if isinstance(item, dict):
            name = str(item.get("expectation") or "?")
            column = item.get("column")
            value = item.get("value")
            part = f"{name}({column})" if column else name
            parts.append(f"{part}: {value}" if value not in (None, "") else part)
        else:
            parts.append(str(item))
    return clip("; ".join(parts))


_QUARANTINE_COLUMNS = (
    quarantine.c.event_id, quarantine.c.batch_id, quarantine.c.reasons, quarantine.c.quarantined_at,
    quarantine.c.reprocessed_at, event.c.received_at,
    # only what a page shows leaves the database: payloads may be megabytes
    func.substr(event.c.payload, 1, CLIP_CHARS + 1).label("payload"),
)


def _quarantine_rows(rows: Any) -> list[QuarantineRow]:
    return [
        QuarantineRow(
            event_id=int(r["event_id"]), batch_id=r["batch_id"], reasons=reasons_text(r["reasons"]),
            received_at=r["received_at"], quarantined_at=r["quarantined_at"], reprocessed_at=r["reprocessed_at"],
            payload=clip(r["payload"]),
        )
        for r in rows
    ]


def _page(conn: Connection, where: Any, offset: int, limit: int) -> tuple[int, list[QuarantineRow]]:
    joined = quarantine.join(event, event.c.event_id == quarantine.c.event_id)
    total = int(conn.execute(select(func.count()).select_from(joined).where(where)).scalar_one())
    rows = conn.execute(
        select(*_QUARANTINE_COLUMNS).select_from(joined).where(where)
        .order_by(quarantine.c.event_id).offset(max(0, offset)).limit(max(1, min(limit, PAGE_ROWS)))
    ).mappings()
    return total, _quarantine_rows(rows)


def batch_quarantine(conn: Connection, batch_id: str, *, offset: int = 0, limit: int = PAGE_ROWS) -> tuple[int, list[QuarantineRow]]:
    """(quarantined events of the batch, one page of them)."""
    return _page(conn, quarantine.c.batch_id == batch_id, offset, limit)


def batch_range(conn: Connection, info: BatchInfo) -> tuple[datetime, datetime]:
    """The receive-time range ``[since, until)`` covering every event of the batch (what the
    reprocess action asks ``trigger_reprocess`` for); a batch without events: its landing window."""
    first, last = conn.execute(
        select(func.min(event.c.received_at), func.max(event.c.received_at)).where(event.c.batch_id == info.batch_id)
    ).one()
    if first is None:
        first = info.created_at
        last = info.landed_at or info.created_at
    assert first is not None and last is not None  # tf_batch.created_at is NOT NULL
    return as_utc(first), as_utc(last) + RANGE_END_PAD


def _batches_overlapping(since: datetime, until: datetime) -> Any:
    """The batches that can hold events received in [since, until): an event is received while
    its batch lands, between the batch's creation and its landing."""
    return select(batch.c.batch_id).where(
        batch.c.created_at < until, or_(batch.c.landed_at.is_(None), batch.c.landed_at >= since)
    )


def range_quarantine(
    conn: Connection, since: datetime, until: datetime, *, offset: int = 0, limit: int = PAGE_ROWS
) -> tuple[int, list[QuarantineRow]]:
    """(quarantined events received in [since, until), one page of them)."""
    where = and_(
        quarantine.c.batch_id.in_(_batches_overlapping(since, until)),
        event.c.received_at >= since,
        event.c.received_at < until,
    )
    return _page(conn, where, offset, limit)


# -- "why did this customer not get the email" ---------------------------------------------------------
@dataclass(frozen=True)
class DecisionRow:
    event_id: int
    decided_at: datetime | None
    trigger_id: str
    route: str
    decision: str
    detail: str
    batch_id: str
    profile_id: str


@dataclass(frozen=True)
class ProfileRow:
    customer_id: str
    email: str
    opted_out: bool


@dataclass(frozen=True)
class SuppressionRow:
    address: str
    source: str
    reason: str
    created_at: datetime | None
    expires_at: datetime | None


@dataclass(frozen=True)
class SearchResult:
    query: str
    profiles: list[ProfileRow]
    customer_ids: list[str]
    decisions: list[DecisionRow]
    decision_total: int  # decisions of these customers in the store (``decisions`` holds the latest SEARCH_ROWS)
    sends: list[LedgerRow]
    suppressions: list[SuppressionRow]


def _profiles(conn: Connection, q: str) -> list[ProfileRow]:
    if "@" in q:
        emails = sorted({q, q.lower()})  # an exact match either way keeps to ix_profiles_email
        where: Any = profiles.c.email.in_(emails)
    else:
        # the ids a trigger carries (shopper id, ECID, declared id) find the customer too: an
        # operator often holds the id from Analytics, not the CRM's (each column has its index)
        where = or_(*(profiles.c[name] == q for name in ("customer_id", "shopper_id", "ecid", "declared_id")))
    rows = conn.execute(
        select(profiles.c.customer_id, profiles.c.email, profiles.c.opted_out).where(where).order_by(profiles.c.customer_id).limit(SEARCH_ROWS)
    ).mappings()
    return [ProfileRow(r["customer_id"], r["email"], bool(r["opted_out"])) for r in rows]


def search(conn: Connection, q: str, *, limit: int = SEARCH_ROWS) -> SearchResult:
    """A customer's latest decisions and ledger rows, by customer id (or the shopper id, ECID or
    declared id a trigger carries) or email address (an address names every profile holding it); with the profile's opt-out and the address's suppressions."""
    q = q.strip()
    limit = max(1, min(limit, SEARCH_ROWS))
    found = _profiles(conn, q)
    ids = [p.customer_id for p in found] or ([q] if "@" not in q else [])
    decisions: list[DecisionRow] = []
    total = 0
    sends: list[LedgerRow] = []
    if ids:
        where = decision.c.profile_id.in_(ids)
        total = int(conn.execute(select(func.count()).select_from(decision).where(where)).scalar_one())
        rows = conn.execute(
            select(
                decision.c.event_id, decision.c.decided_at, decision.c.trigger_id, decision.c.route, decision.c.decision,
                decision.c.detail, decision.c.batch_id, decision.c.profile_id,
            ).where(where).order_by(decision.c.decided_at.desc(), decision.c.event_id.desc()).limit(limit)
        ).mappings()
        decisions = [
            DecisionRow(
                event_id=int(r["event_id"]), decided_at=r["decided_at"], trigger_id=r["trigger_id"] or "", route=r["route"] or "",
                decision=r["decision"], detail=clip(r["detail"]), batch_id=r["batch_id"], profile_id=r["profile_id"] or "",
            )
            for r in rows
        ]
        sends = _ledger_rows(
            conn.execute(
                select(*_LEDGER_COLUMNS).where(send.c.profile_id.in_(ids)).order_by(send.c.created_at.desc(), send.c.send_id.desc()).limit(limit)
            ).mappings()
        )
    addresses = sorted({p.email.lower() for p in found} | ({q.lower()} if "@" in q else set()))
    suppressions = [
        SuppressionRow(r["address"], r["source"], clip(r["reason"]), r["created_at"], r["expires_at"])
        for r in conn.execute(
            select(suppression.c.address, suppression.c.source, suppression.c.reason, suppression.c.created_at, suppression.c.expires_at)
            .where(suppression.c.address.in_(addresses))
            .order_by(suppression.c.address)
        ).mappings()
    ] if addresses else []
    return SearchResult(q, found, ids, decisions, total, sends, suppressions)


# -- alerts ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlertRow:
    alert_id: int
    kind: str
    subject: str
    detail: str
    value: float | None
    threshold: float | None
    fired_at: datetime | None
    resolved_at: datetime | None
    notified: str
    batch_id: str


def _alert_rows(rows: Any) -> list[AlertRow]:
    return [
        AlertRow(
            alert_id=int(r["alert_id"]), kind=r["kind"], subject=r["subject"] or "", detail=clip(r["detail"]),
            # the SLA alert keeps its figure in oldest_waiting_age_s (before tf_alert had ``value``)
            value=r["value"] if r["value"] is not None else r["oldest_waiting_age_s"],
            threshold=r["threshold_s"], fired_at=r["fired_at"], resolved_at=r["resolved_at"],
            notified=clip(r["notified"]), batch_id=r["batch_id"] or "",
        )
        for r in rows
    ]


_ALERT_COLUMNS = (
    alert.c.alert_id, alert.c.kind, alert.c.subject, alert.c.detail, alert.c.value, alert.c.oldest_waiting_age_s,
    alert.c.threshold_s, alert.c.fired_at, alert.c.resolved_at, alert.c.notified, alert.c.batch_id,
)


def alerts(conn: Connection, *, active_limit: int = PAGE_ROWS, resolved_limit: int = RESOLVED_ALERTS) -> tuple[int, list[AlertRow], list[AlertRow]]:
    """(active alerts in all, the newest ``active_limit`` of them, the last resolved ones)."""
    active_where = alert.c.resolved_at.is_(None)
    total = int(conn.execute(select(func.count()).select_from(alert).where(active_where)).scalar_one())
    active = _alert_rows(
        conn.execute(select(*_ALERT_COLUMNS).where(active_where).order_by(alert.c.fired_at.desc(), alert.c.alert_id.desc()).limit(active_limit)).mappings()
    )
    resolved = _alert_rows(
        conn.execute(
            select(*_ALERT_COLUMNS).where(alert.c.resolved_at.is_not(None))
            .order_by(alert.c.resolved_at.desc(), alert.c.alert_id.desc()).limit(resolved_limit)
        ).mappings()
    )
    return total, active, resolved


def active_alert_count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(alert).where(alert.c.resolved_at.is_(None))).scalar_one())

