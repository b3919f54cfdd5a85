"""Stage 3 — reconcile valid events with profiles and queue one ledger row per email.

Set-based: events are grouped by the profile column their route matches on and joined to the
profiles table with one IN-query per few hundred keys and a pandas merge, never one query per
event. Each event gets exactly one decision:

    ignored              no route for its trigger id (counted, not an error)
    unmatched            no profile carries its identity
    suppressed:opt-out   the profile opted out
    suppressed:<source>  the address is in tf_suppression (e.g. hard-bounce after a 5xx)
    duplicate            its email is already in the ledger for another event (same trigger,
                         same trigger time, same customer: at-least-once redelivery)
    matched              a ledger row is queued; the send stage decides what happens to it

Ledger rows are inserted with INSERT ... ON CONFLICT DO NOTHING on the idempotency key, so running
this stage again for the same batch queues nothing new.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select

from include.triggerflow.config import RoutingConfig, TriggerRoute
from include.triggerflow.events import as_int, parse_envelope
from include.triggerflow.store.db import chunked, insert_ignore
from include.triggerflow.store.schema import decision, event, profiles, send, suppression

log = logging.getLogger(__name__)

IN_LIST_SIZE = 500
#: decisions a replay may change (nothing was queued or suppressed for these events)
REDECIDED = ("unmatched", "ignored")


@dataclass
class ReconcileResult:
    batch_id: str
    counts: dict[str, int] = field(default_factory=dict)
    chunks: list[int] = field(default_factory=lambda: [0])

    def as_xcom(self) -> dict[str, object]:
        return {"batch_id": self.batch_id, "counts": self.counts, "chunks": self.chunks}


def idempotency_key(trigger_id: str, trigger_ts: int, customer_id: str, template: str) -> str:
    """Adobe advises triggerId + triggerTimestamp as the duplicate key of a trigger; adding the
    customer and the template makes it the key of one email."""
    raw = json.dumps([trigger_id, trigger_ts, customer_id, template], separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


def _load_profiles(engine: Engine, column: str, keys: list[str]) -> list[dict[str, Any]]:
    col = profiles.c[column]
    found: list[dict[str, Any]] = []
    with engine.connect() as conn:
        for part in chunked(keys, IN_LIST_SIZE):
            found.extend(dict(r._mapping) for r in conn.execute(select(profiles).where(col.in_(list(part)))))
    return found


def reconcile_batch(
    engine: Engine,
    batch_id: str,
    routing: RoutingConfig,
    *,
    chunk_size: int = 2000,
    max_chunks: int = 16,
) -> ReconcileResult:
    import pandas as pd

    with engine.connect() as conn:
        # Decisions that own a ledger row (matched, duplicate) or suppress a customer are final;
        # a replay re-decides only events not decided yet or that found no profile or route,
        # so a profile loaded or a route added since then takes effect.
        final = set(
            conn.execute(
                select(decision.c.event_id).where(
                    decision.c.batch_id == batch_id, decision.c.decision.notin_(REDECIDED)
                )
            ).scalars()
        )
        stored = [
            row
            for row in conn.execute(
                select(event.c.event_id, event.c.payload).where(event.c.batch_id == batch_id, event.c.status == "valid")
            ).all()
            if int(row[0]) not in final
        ]

    decisions: dict[int, dict[str, Any]] = {}
    wanted: list[dict[str, Any]] = []  # routed events with their identity
    for event_id, payload in stored:
        parsed = parse_envelope(payload)
        route = routing.route_for(parsed.trigger_id)
        base = {"event_id": int(event_id), "batch_id": batch_id, "trigger_id": parsed.trigger_id}
        if route is None:
            decisions[int(event_id)] = {**base, "decision": "ignored", "detail": "no route for this trigger id"}
            continue
        key = route.identity.extract(parsed)
        wanted.append(
            {
                **base,
                "route": route.name,
                "customer_key": key,
                "profile_column": route.identity.profile_column,
                "trigger_ts": as_int(parsed.trigger_ts),
            }
        )

    routes = {r.name: r for r in routing.routes}
    ledger_rows: list[dict[str, Any]] = []
    events_frame = pd.DataFrame(wanted)
    if not events_frame.empty:
        for column, group in events_frame.groupby("profile_column"):
            keys = sorted({str(k) for k in group["customer_key"].dropna()})
            found = pd.DataFrame(_load_profiles(engine, str(column), keys))
            if found.empty:
                found = pd.DataFrame(columns=[c.name for c in profiles.columns])
            found = found.sort_values("customer_id")
            found["_key"] = found[column].astype(str)
            per_key = found.groupby("_key", sort=False).size().rename("_matches")
            first = found.drop_duplicates("_key").set_index("_key").join(per_key)
            joined = group.merge(first, how="left", left_on="customer_key", right_index=True, suffixes=("", "_p"))
            records = joined.to_dict("records")
            suppressed = _load_suppressions(engine, [str(r["email"]) for r in records if isinstance(r.get("email"), str)])
            for rec in records:
                decisions.update(_decide(rec, routes[rec["route"]], ledger_rows, suppressed))

    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        existing_chunks = {
            int(c) for c in conn.execute(select(send.c.chunk).where(send.c.batch_id == batch_id).distinct()).scalars()
        }
        n_chunks = max(1, min(max_chunks, math.ceil(len(ledger_rows) / max(chunk_size, 1))))
        for i, row in enumerate(ledger_rows):
            row.update(chunk=i % n_chunks, state="pending", attempts=0, created_at=now, updated_at=now)
        insert_ignore(conn, send, ledger_rows, keys=["idempotency_key"])
        # Which event owns each key now: an earlier batch's event means this one is a duplicate.
        owners: dict[str, tuple[int, str]] = {}
        keys = [r["idempotency_key"] for r in ledger_rows]
        for part in chunked(keys, IN_LIST_SIZE):
            for key, owner_event, owner_batch in conn.execute(
                select(send.c.idempotency_key, send.c.event_id, send.c.batch_id).where(send.c.idempotency_key.in_(list(part)))
            ):
                owners[key] = (int(owner_event), owner_batch)
        for row in ledger_rows:
            owner_event, owner_batch = owners[row["idempotency_key"]]
            if owner_event != row["event_id"]:
                decisions[row["event_id"]].update(
                    decision="duplicate",
                    detail=f"same email already queued for event {owner_event} of batch {owner_batch}",
                )
        # Decisions of events no longer valid and of the events decided again now are replaced.
        conn.execute(
            delete(decision).where(decision.c.batch_id == batch_id, decision.c.decision.in_(REDECIDED))
        )
        for part in chunked(sorted(decisions), IN_LIST_SIZE):
            conn.execute(delete(decision).where(decision.c.event_id.in_(list(part))))
        rows = [
            {
                "event_id": d["event_id"],
                "batch_id": batch_id,
                "trigger_id": _short(d.get("trigger_id")),
                "route": d.get("route"),
                "customer_key": _short(d.get("customer_key")),
                "profile_id": d.get("profile_id"),
                "decision": d["decision"],
                "detail": d.get("detail"),
                "decided_at": now,
            }
            for d in decisions.values()
        ]
        for part in chunked(rows, 1000):
            conn.execute(insert(decision), list(part))
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
    log.info("batch %s reconciled: %s; send chunks %s", batch_id, dict(counts), chunks)
    return ReconcileResult(batch_id=batch_id, counts=dict(counts), chunks=chunks)


def _load_suppressions(engine: Engine, emails: list[str]) -> dict[str, str]:
    """{address: source} of the given addresses found in tf_suppression (hard bounces...)."""
    wanted = sorted({e.strip().lower() for e in emails if e})
    found: dict[str, str] = {}
    with engine.connect() as conn:
        for part in chunked(wanted, IN_LIST_SIZE):
            for address, source in conn.execute(
                select(suppression.c.address, suppression.c.source).where(suppression.c.address.in_(list(part)))
            ):
                found[address] = source
    return found


def _decide(
    rec: dict[str, Any], route: TriggerRoute, ledger_rows: list[dict[str, Any]], suppressed: dict[str, str]
) -> dict[int, dict[str, Any]]:
    event_id = int(rec["event_id"])
    out = {
        "event_id": event_id,
        "trigger_id": rec["trigger_id"],
        "route": route.name,
        "customer_key": rec["customer_key"],
    }
    customer_id = rec.get("customer_id")
    if customer_id is None or (isinstance(customer_id, float) and math.isnan(customer_id)):
        return {event_id: {**out, "decision": "unmatched", "detail": f"no profile with {route.identity.profile_column}={rec['customer_key']!r}"}}
    out["profile_id"] = str(customer_id)
    matches = int(rec.get("_matches") or 1)
    detail = f"{matches} profiles matched; took the first by customer_id" if matches > 1 else None
    if bool(rec.get("opted_out")):
        return {event_id: {**out, "decision": "suppressed:opt-out", "detail": "profile opted out"}}
    address = str(rec.get("email") or "").strip().lower()
    if address in suppressed:
        return {event_id: {**out, "decision": f"suppressed:{suppressed[address]}", "detail": f"{address} is on the suppression list"}}
    ledger_rows.append(
        {
            "idempotency_key": idempotency_key(str(rec["trigger_id"]), int(rec["trigger_ts"]), str(customer_id), route.template),
            "batch_id": rec["batch_id"],
            "event_id": event_id,
            "profile_id": str(customer_id),
            "trigger_id": str(rec["trigger_id"]),
            "route": route.name,
            "recipient": str(rec.get("email") or ""),
            "trigger_ts": int(rec["trigger_ts"]),
        }
    )
    return {event_id: {**out, "decision": "matched", "detail": detail}}


def _short(value: Any, limit: int = 200) -> str | None:
    return None if value is None else str(value)[:limit]
