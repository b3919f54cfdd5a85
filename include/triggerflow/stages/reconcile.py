"""Stage 3 — reconcile valid events with profiles, apply the route's rules, queue the emails.

Set-based: identities are looked up with one query per profile column per identity level (an
IN-list for a few keys, a join with a temporary key table for many: ``store.lookups.select_in``),
recent ledger rows (for deduplication and frequency caps), suppressions and unsubscribes the same
way, never one query per event; decisions and ledger rows are written in bulk (COPY on
PostgreSQL). Every valid event gets exactly one decision in
``tf_decision`` — the "why was nothing sent" log, queryable per run and per customer:

    ignored                    no route for its trigger id (counted, not an error)
    unmatched                  no identity rule of the route found a profile
    ambiguous                  several profiles matched and the route says ``multiple_profiles: skip``
    expired                    older than the route's ``validity`` when reconciled
    suppressed:opt-out         the profile opted out (e.g. through the unsubscribe link)
    suppressed:invalid-address the profile's address is not a valid address
    suppressed:block-list      the address or its domain is on the block list (tf_suppression)
    suppressed:hard-bounce     the address answered 5xx before (tf_suppression)
    no-products                the event named products and none can be shown: in catalogue mode
                               (the default) none of its SKUs is in the catalogue; the detail says
                               how many SKUs were unknown and how many links were dropped
    duplicate                  the same trigger for the same customer inside ``dedup_window``, or
                               the exact same trigger message again (the ledger's idempotency key)
    capped                     the customer reached ``frequency_cap`` (all triggers count)
    deferred                   queued, but inside the customer's quiet hours: the ledger row is
                               ``scheduled`` with ``not_before`` = the end of the window
    matched                    queued now; the send stage decides what happens to it

The rules are applied in that order, and events in trigger-time order, so the earliest trigger
of a customer is the one sent when several arrive together. They live in
:mod:`include.triggerflow.rules` as pure functions over typed records (``Candidate``,
``ProfileMatch``, ``Decided``); this module loads what they need, calls them and writes.

What an email may show of its event is decided by :func:`content.email_content`, the same function
the send stage renders with: the catalogue items of the batch's matched events of catalogue routes
are looked up once (set-based, ``catalog.lookup``), and the ``matched`` (or ``deferred``) detail
counts what was left out (unknown SKUs, links dropped by the route's link_hosts).

Event data is hostile, and one event must never stop its batch: every value taken from an event
that is written to the store or used as a look-up key goes through :func:`store_text` (parsing
already normalises text; this is the write boundary's own guard), and an event whose own step
raises (reading it, applying the rules, building its ledger row) is decided ``unmatched`` with
``not reconciled: <error>`` as the detail, so the rest of the batch is decided, queued and still
balances, and a replay decides it again once the cause is fixed.

Ledger rows are inserted with INSERT ... ON CONFLICT DO NOTHING on the idempotency key, so running
this stage again for the same batch queues nothing new.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, or_, select, update

from include.triggerflow.config import RoutingConfig
from include.triggerflow.content import ProductSource, email_content
from include.triggerflow.event_json import clean_text
from include.triggerflow.events import parse_envelope
from include.triggerflow.gc_pause import collector_paused
from include.triggerflow.payloads import ChunkRef, ReconciledXCom
from include.triggerflow.rules import (
    QUEUED_DECISIONS,
    Candidate,
    Decided,
    EventProblem,
    Facts,
    NoMatch,
    ProfileMatch,
    RecentSend,
    checked_ts,
    decide,
    idempotency_key,
    resolve_identities,
)
from include.triggerflow.smtp_replies import mask_addresses
from include.triggerflow.stages import reconcile_load as load
from include.triggerflow.states import Decision, EventStatus, SendState
from include.triggerflow.stats import refresh_quietly
from include.triggerflow.store.bulk import bulk_insert
from include.triggerflow.store.lookups import select_in, where_in
from include.triggerflow.store.schema import batch, decision, event, send
from include.triggerflow.timeutil import utcnow

__all__ = [
    "NOT_RECONCILED", "NOT_SENT_DECISIONS", "NO_PRODUCTS", "QUEUED_DECISIONS", "REDECIDED", "EventProblem",
    "ReconcileResult", "due_scheduled", "idempotency_key", "reconcile_batch",
    "store_text",
]

log = logging.getLogger(__name__)

#: the decision of an event that named products of which none can be shown
NO_PRODUCTS = Decision.NO_PRODUCTS
#: decisions a replay may change (nothing was queued or suppressed for these events); a
#: ``no-products`` event is decided again, so loading the missing catalogue rows and replaying
#: the batch sends it
REDECIDED = (Decision.UNMATCHED, Decision.IGNORED, Decision.NO_PRODUCTS)
#: decisions of events that found a profile but get no email
NOT_SENT_DECISIONS = (Decision.EXPIRED, Decision.DUPLICATE, Decision.CAPPED, Decision.NO_PRODUCTS)
#: the decision of an event whose own reconcile step raised: REDECIDED, so a replay tries again,
#: and already one of the buckets the report balances (valid = matched + unmatched + ...)
NOT_RECONCILED = Decision.UNMATCHED
#: column widths of the text the decision and ledger rows take from events (store/schema.py)
_TRIGGER_ID_LEN = 200
_CUSTOMER_KEY_LEN = 200
_DETAIL_LEN = 2000


def store_text(value: Any, limit: int | None = None) -> str | None:
    """``value`` as text every store can hold and every look-up can send, cut at ``limit``
    characters: NUL (PostgreSQL text cannot hold it) and lone surrogates (no UTF-8 encoding, both
    stores refuse them) become U+FFFD by the parser's own rule (:func:`event_json.clean_text`).
    Parsing normalises event text already; this is the guard at the write boundary, so a value
    that slipped through (an event landed before that rule, a value built from one) costs its
    event a replacement character instead of failing the whole batch's insert."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if limit is not None and len(text) > limit:
        text = text[:limit]
    return clean_text(text)[0]


def _not_reconciled(base: Decided, exc: BaseException) -> Decided:
    """The decision of an event whose own step raised ``exc``. Exception texts may quote event or
    profile data: addresses are masked and the text is cut, so the detail names the problem
    without becoming a copy of the data."""
    message = mask_addresses(str(exc))[:300]
    return replace(
        base, decision=NOT_RECONCILED, profile_id=None, not_before=None,
        detail=f"not reconciled: {type(exc).__name__}: {message}".rstrip(": "),
    )


@dataclass
class ReconcileResult:
    batch_id: str
    counts: dict[str, int] = field(default_factory=dict)
    chunks: list[int] = field(default_factory=lambda: [0])

    def as_xcom(self) -> ReconciledXCom:
        return {"batch_id": self.batch_id, "counts": self.counts, "chunks": self.chunks}

    def chunk_refs(self) -> list[ChunkRef]:
        """One mapped send task's input per chunk of this batch."""
        return [{"batch_id": self.batch_id, "chunk": chunk} for chunk in self.chunks]


@dataclass(slots=True)  # not frozen: built per queued email (see rules.py's records)
class QueuedEmail:
    """The ledger row (``tf_send``) queuing the email of a matched or deferred event."""

    idempotency_key: str
    batch_id: str
    event_id: int
    profile_id: str
    trigger_id: str
    route: str
    recipient: str
    trigger_ts: int
    state: SendState
    not_before: datetime | None

    @classmethod
    def of(cls, candidate: Candidate, match: ProfileMatch, decided: Decided) -> QueuedEmail:
        if candidate.trigger_ts is None:
            raise EventProblem("no usable triggerTimestamp (missing or out of range): the email's idempotency key needs one")
        route = candidate.route
        customer_id = match.customer_id
        return cls(
            idempotency_key=idempotency_key(candidate.trigger_id, candidate.trigger_ts, customer_id, route.template),
            batch_id=candidate.batch_id,
            event_id=candidate.event_id,
            profile_id=customer_id,
            trigger_id=candidate.trigger_id,
            route=route.name,
            recipient=str(match.profile.get("email") or "").strip(),
            trigger_ts=int(candidate.trigger_ts),
            state=SendState.SCHEDULED if decided.decision == Decision.DEFERRED else SendState.PENDING,
            not_before=decided.not_before,
        )

    def as_row(self, chunk: int, now: datetime) -> dict[str, Any]:
        return {
            "idempotency_key": self.idempotency_key, "batch_id": self.batch_id, "event_id": self.event_id,
            "profile_id": self.profile_id, "trigger_id": self.trigger_id, "route": self.route,
            "recipient": self.recipient, "trigger_ts": self.trigger_ts, "state": self.state,
            "not_before": self.not_before, "chunk": chunk, "attempts": 0, "created_at": now, "updated_at": now,
        }


def _events_to_decide(conn: Connection, batch_id: str) -> list[Any]:
    """(event_id, payload) of the batch's valid events that have no final decision yet.

    Decisions that own a ledger row (matched, deferred, duplicate) or suppress a customer are
    final; a replay re-decides only events not decided yet or that found no profile or route,
    so a profile loaded or a route added since then takes effect."""
    final = set(
        conn.execute(
            select(decision.c.event_id).where(decision.c.batch_id == batch_id, decision.c.decision.notin_(REDECIDED))
        ).scalars()
    )
    rows = conn.execute(
        select(event.c.event_id, event.c.payload).where(event.c.batch_id == batch_id, event.c.status == EventStatus.VALID)
    ).all()
    return [row for row in rows if int(row[0]) not in final]


def _candidates(
    stored: Iterable[Any], routing: RoutingConfig, batch_id: str, decisions: dict[int, Decided]
) -> list[Candidate]:
    """The routed events as candidates; events without a route, or that cannot be read, are
    decided in ``decisions`` (ignored, not reconciled)."""
    candidates: list[Candidate] = []
    for row_id, payload in stored:
        event_id = int(row_id)
        trigger_id: str | None = None
        try:
            parsed = parse_envelope(payload)
            trigger_id = store_text(parsed.trigger_id, _TRIGGER_ID_LEN)
            route = routing.route_for(parsed.trigger_id)
            if route is None or parsed.trigger_id is None:  # route_for routes text ids only
                decisions[event_id] = Decided(
                    event_id, batch_id, Decision.IGNORED, "no route for this trigger id", trigger_id=trigger_id
                )
                continue
            if len(parsed.trigger_id) > _TRIGGER_ID_LEN:  # routed by "*": the ledger column cannot hold it
                raise EventProblem(f"triggerId longer than {_TRIGGER_ID_LEN} characters")
            candidates.append(
                Candidate(
                    event_id=event_id,
                    batch_id=batch_id,
                    trigger_id=str(trigger_id),
                    route=route,
                    # look-up keys: a key the store cannot take would fail the batch's look-up
                    keys=tuple(store_text(rule.extract(parsed)) for rule in route.identities),
                    trigger_ts=checked_ts(parsed.trigger_ts),
                    event=parsed,
                )
            )
        except Exception as exc:
            decisions[event_id] = _not_reconciled(Decided(event_id, batch_id, NOT_RECONCILED, trigger_id=trigger_id), exc)
    return candidates


def _decided(candidate: Candidate, customer_key: str | None, decision: Decision, detail: str | None = None) -> Decided:
    """A decision of a routed event that has no profile (yet): unmatched, or not reconciled."""
    return Decided(
        event_id=candidate.event_id, batch_id=candidate.batch_id, decision=decision, detail=detail,
        trigger_id=candidate.trigger_id, route=candidate.route.name, customer_key=customer_key,
    )


@collector_paused()
def reconcile_batch(
    engine: Engine,
    batch_id: str,
    routing: RoutingConfig,
    *,
    chunk_size: int = 2000,
    max_chunks: int = 16,
    now: datetime | None = None,
) -> ReconcileResult:
    now = now or utcnow()
    with engine.connect() as conn:
        stored = _events_to_decide(conn, batch_id)

    decisions: dict[int, Decided] = {}
    candidates = _candidates(stored, routing, batch_id, decisions)
    routes = {r.name: r for r in routing.routes}

    # every look-up on one connection (one read snapshot; its temporary key tables are its own)
    with engine.connect() as conn:
        resolved = resolve_identities(candidates, lambda column, keys: load.profiles_by_key(conn, column, keys))
        matched: list[tuple[Candidate, ProfileMatch]] = []
        for candidate in candidates:
            found = resolved[candidate.event_id]
            if isinstance(found, NoMatch):
                first_key = next((k for k in candidate.keys if k is not None), None)
                decisions[candidate.event_id] = _decided(candidate, first_key, Decision.UNMATCHED, found.detail)
            else:
                matched.append((candidate, found))

        customer_ids = sorted({m.customer_id for _, m in matched})
        facts = Facts(
            now=now,
            suppressions=load.load_suppressions(conn, [str(m.profile.get("email") or "") for _, m in matched]),
            unsubscribed=load.unsubscribed(conn, customer_ids),
            recent=load.recent_sends(conn, customer_ids, load.history_since(routes.values(), matched, now)),
        )
        catalog_items = load.lookup_catalog(
            conn, load.catalog_skus(c.event for c, _ in matched if c.route.products is ProductSource.CATALOG)
        )

    queued: list[QueuedEmail] = []
    matched.sort(key=lambda cm: (cm[0].trigger_ts if cm[0].trigger_ts is not None else 0, cm[0].event_id))
    for candidate, match in matched:
        try:
            locale = match.profile.get("locale")
            content = email_content(candidate.event, candidate.route, catalog_items, locale if isinstance(locale, str) else None)
            outcome = decide(candidate, match, facts, content)
            email = QueuedEmail.of(candidate, match, outcome) if outcome.queued else None
        except Exception as exc:
            decisions[candidate.event_id] = _not_reconciled(_decided(candidate, match.customer_key, NOT_RECONCILED), exc)
            continue
        decisions[candidate.event_id] = outcome
        if email is not None:
            queued.append(email)
            facts.recent[email.profile_id].append(
                RecentSend(email.route, candidate.trigger_ts, candidate.event_id, batch_id, now)
            )

    with engine.begin() as conn:
        counts, chunks = _write(conn, batch_id, decisions, queued, now, chunk_size=chunk_size, max_chunks=max_chunks)
    refresh_quietly(engine, batch_id)  # the status counters (include/triggerflow/stats.py)
    log.info("batch %s reconciled: %s; send chunks %s", batch_id, counts, chunks)
    return ReconcileResult(batch_id=batch_id, counts=counts, chunks=chunks)


def _write(
    conn: Connection,
    batch_id: str,
    decisions: dict[int, Decided],
    queued: list[QueuedEmail],
    now: datetime,
    *,
    chunk_size: int,
    max_chunks: int,
) -> tuple[dict[str, int], list[int]]:
    """Queue the ledger rows and replace the batch's decisions, in one transaction: the counts by
    decision and the batch's send chunks."""
    existing_chunks = {
        int(c) for c in conn.execute(select(send.c.chunk).where(send.c.batch_id == batch_id).distinct()).scalars()
    }
    n_chunks = max(1, min(max_chunks, math.ceil(len(queued) / max(chunk_size, 1))))
    ledger_rows = [email.as_row(i % n_chunks, now) for i, email in enumerate(queued)]
    inserted = bulk_insert(conn, send, ledger_rows, ignore_conflicts_on=["trigger_ts", "idempotency_key"])
    # Which event owns each key now: an earlier batch's event means this one is a duplicate.
    # (When every row was inserted, each key is owned by the event that queued it.) Looked up by
    # trigger time, the leading column of the ledger's unique index; other emails of the same
    # millisecond come along and are left out by their keys.
    owners: dict[str, tuple[int, str]] = {e.idempotency_key: (e.event_id, batch_id) for e in queued}
    if inserted != len(queued):
        stmt = select(send.c.idempotency_key, send.c.event_id, send.c.batch_id)
        for key, owner_event, owner_batch in select_in(conn, stmt, send.c.trigger_ts, {e.trigger_ts for e in queued}):
            if key in owners:
                owners[key] = (int(owner_event), owner_batch)
    for email in queued:
        owner_event, owner_batch = owners[email.idempotency_key]
        if owner_event != email.event_id:
            decisions[email.event_id] = replace(
                decisions[email.event_id],
                decision=Decision.DUPLICATE,
                detail=f"same trigger message already queued for event {owner_event} of batch {owner_batch}",
            )
    # Decisions of events no longer valid and of the events decided again now are replaced.
    conn.execute(delete(decision).where(decision.c.batch_id == batch_id, decision.c.decision.in_(REDECIDED)))
    # Every decision row of this batch is final (its events were not selected) or REDECIDED
    # (deleted just above), so the events decided now can only still have a row written under
    # another batch id: look those up by id only if the batch has any.
    if conn.execute(
        select(func.count())
        .select_from(decision.join(event, event.c.event_id == decision.c.event_id))
        .where(event.c.batch_id == batch_id, decision.c.batch_id != batch_id)
    ).scalar_one():
        where_in(conn, delete(decision), decision.c.event_id, sorted(decisions))
    bulk_insert(conn, decision, [_decision_row(d, batch_id, now) for d in decisions.values()])
    chunks = sorted(
        {int(c) for c in conn.execute(select(send.c.chunk).where(send.c.batch_id == batch_id).distinct()).scalars()}
        | existing_chunks
    ) or [0]
    counts = {
        str(k): int(n)
        for k, n in conn.execute(
            select(decision.c.decision, func.count()).where(decision.c.batch_id == batch_id).group_by(decision.c.decision)
        )
    }
    # later batches' reconciles wait for this (stages/batch_order.py)
    conn.execute(update(batch).where(batch.c.batch_id == batch_id).values(reconciled_at=now))
    return counts, chunks


def _decision_row(d: Decided, batch_id: str, now: datetime) -> dict[str, Any]:
    return {
        "event_id": d.event_id,
        "batch_id": batch_id,
        "trigger_id": store_text(d.trigger_id, _TRIGGER_ID_LEN),
        "route": d.route,
        "customer_key": store_text(d.customer_key, _CUSTOMER_KEY_LEN),
        "profile_id": d.profile_id,
        "decision": d.decision,
        "detail": store_text(d.detail, _DETAIL_LEN),
        "decided_at": now,
    }


def due_scheduled(engine: Engine, now: datetime | None = None, *, exclude_batch: str | None = None) -> list[ChunkRef]:
    """``[{"batch_id", "chunk"}]`` of earlier batches holding ``scheduled`` rows now due (their
    quiet hours are over): every run sends what has become due, whichever batch queued it."""
    now = now or utcnow()
    with engine.connect() as conn:
        rows = conn.execute(
            select(send.c.batch_id, send.c.chunk)
            .where(send.c.state == SendState.SCHEDULED, or_(send.c.not_before.is_(None), send.c.not_before <= now))
            .distinct()
            .order_by(send.c.batch_id, send.c.chunk)
        ).all()
    return [{"batch_id": b, "chunk": int(c)} for b, c in rows if b != exclude_batch]
