"""Stage 3 — reconcile valid events with profiles, apply the route's rules, queue the emails.

Set-based: identities are looked up with one query per profile column per identity level (an
IN-list for a few keys, a join with a temporary key table for many: ``store.db.select_in``),
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
of a customer is the one sent when several arrive together.

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

import hashlib
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, or_, select

from include.triggerflow.config import RoutingConfig, TriggerRoute
from include.triggerflow.content import (
    CatalogEntry,
    EmailContent,
    ProductSource,
    email_content,
    event_skus,
)
from include.triggerflow.events import as_int, clean_text, parse_envelope
from include.triggerflow.mailer import InvalidAddressError, validate_address
from include.triggerflow.smtp_replies import mask_addresses
from include.triggerflow.stats import refresh_quietly
from include.triggerflow.store.db import bulk_insert, select_in, where_in
from include.triggerflow.store.schema import (
    PROFILE_COLUMNS,
    decision,
    event,
    profile_visitor_ids,
    profiles,
    send,
    suppression,
    unsubscribe,
)

log = logging.getLogger(__name__)

IN_LIST_SIZE = 500
#: the decision of an event that named products of which none can be shown
NO_PRODUCTS = "no-products"
#: decisions a replay may change (nothing was queued or suppressed for these events); a
#: ``no-products`` event is decided again, so loading the missing catalogue rows and replaying
#: the batch sends it
REDECIDED = ("unmatched", "ignored", NO_PRODUCTS)
#: decisions that own a ledger row
QUEUED_DECISIONS = ("matched", "deferred")
#: decisions of events that found a profile but get no email
NOT_SENT_DECISIONS = ("expired", "duplicate", "capped", NO_PRODUCTS)
#: ledger states that count as "an email to this customer" for deduplication and frequency caps
_COUNTED_STATES = ("pending", "sending", "sent", "deferred", "ambiguous", "scheduled")
_TRUE = (True, 1, "1", "true", "True", "t")
#: the decision of an event whose own reconcile step raised: REDECIDED, so a replay tries again,
#: and already one of the buckets the report balances (valid = matched + unmatched + ...)
NOT_RECONCILED = "unmatched"
#: column widths of the text the decision and ledger rows take from events (store/schema.py)
_TRIGGER_ID_LEN = 200
_CUSTOMER_KEY_LEN = 200
_DETAIL_LEN = 2000
#: epoch milliseconds reconcile can compute with: from 1970 (the batch's look-back window is
#: subtracted from the earliest) to the last millisecond a datetime holds (year 9999)
_TS_MS_MIN, _TS_MS_MAX = 0, 253_402_300_799_999


def store_text(value: Any, limit: int | None = None) -> str | None:
    """``value`` as text every store can hold and every look-up can send, cut at ``limit``
    characters: NUL (PostgreSQL text cannot hold it) and lone surrogates (no UTF-8 encoding, both
    stores refuse them) become U+FFFD by the parser's own rule (:func:`events.clean_text`).
    Parsing normalises event text already; this is the guard at the write boundary, so a value
    that slipped through (an event landed before that rule, a value built from one) costs its
    event a replacement character instead of failing the whole batch's insert."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if limit is not None and len(text) > limit:
        text = text[:limit]
    return clean_text(text)[0]


def _not_reconciled(base: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """The decision of an event whose own step raised ``exc``. Exception texts may quote event or
    profile data: addresses are masked and the text is cut, so the detail names the problem
    without becoming a copy of the data."""
    message = mask_addresses(str(exc))[:300]
    return {
        **base,
        "decision": NOT_RECONCILED,
        "profile_id": None,
        "detail": f"not reconciled: {type(exc).__name__}: {message}".rstrip(": "),
    }


class EventProblem(ValueError):
    """An event reconcile cannot act on although it passed validation (defence in depth)."""


def _checked_ts(value: Any) -> int | None:
    """triggerTimestamp as epoch ms, or None when the event has none; a value no datetime or
    BIGINT can hold raises :class:`EventProblem` for this event only."""
    ts = as_int(value)
    if ts is not None and not _TS_MS_MIN <= ts <= _TS_MS_MAX:
        raise EventProblem("triggerTimestamp out of range")
    return ts


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


# -- identity ----------------------------------------------------------------------------------------
def _profiles_by_key(conn: Connection, column: str, keys: list[str]) -> dict[str, list[dict[str, Any]]]:
    """key -> every profile carrying it in ``column``. ``visitor_id`` means any stored ECID: the
    profile's own ``ecid`` or one of its rows in profile_visitor_ids."""
    found: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    if column == "visitor_id":
        for row in select_in(conn, select(profiles), profiles.c.ecid, keys):
            profile = dict(zip(PROFILE_COLUMNS, row))
            found[str(profile["ecid"])][profile["customer_id"]] = profile
        stmt = select(profile_visitor_ids.c.visitor_id, profiles).join(
            profiles, profiles.c.customer_id == profile_visitor_ids.c.customer_id
        )
        for row in select_in(conn, stmt, profile_visitor_ids.c.visitor_id, keys):
            profile = dict(zip(PROFILE_COLUMNS, row[1:]))
            found[str(row[0])][profile["customer_id"]] = profile
    else:
        for row in select_in(conn, select(profiles), profiles.c[column], keys):
            profile = dict(zip(PROFILE_COLUMNS, row))
            found[str(profile[column])][profile["customer_id"]] = profile
    return {key: list(by_id.values()) for key, by_id in found.items()}


def _sortable(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    return value


def _choose(route: TriggerRoute, candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The candidates in the route's ``profile_order``; ties and profiles without a value fall
    back to customer_id order, so the choice is the same on every replay."""
    column, descending = route.profile_order
    present = sorted((p for p in candidates if p.get(column) is not None), key=lambda p: p["customer_id"])
    present.sort(key=lambda p: _sortable(p[column]), reverse=descending)  # stable sort keeps ties in order
    absent = sorted((p for p in candidates if p.get(column) is None), key=lambda p: p["customer_id"])
    return present + absent


def _describe_rule(rule: Any) -> str:
    return f"{rule.key}->{rule.profile_column}"


def resolve_identities(conn: Connection, wanted: list[dict[str, Any]], routes: dict[str, TriggerRoute]) -> None:
    """Fill ``profile`` (or ``identity_problem``) in each wanted event, trying the route's identity
    rules in order: a rule whose value the event lacks, or that finds no profile, passes the event
    to the next rule. One look-up per profile column per rule level."""
    pending = list(wanted)
    level = 0
    while pending:
        lookups: dict[str, set[str]] = defaultdict(set)
        for item in pending:
            rules = routes[item["route"]].identities
            if level < len(rules) and item["keys"][level] is not None:
                lookups[rules[level].profile_column].add(item["keys"][level])
        found = {column: _profiles_by_key(conn, column, sorted(keys)) for column, keys in lookups.items()}
        still: list[dict[str, Any]] = []
        for item in pending:
            route = routes[item["route"]]
            rules = route.identities
            if level >= len(rules):
                continue
            rule = rules[level]
            key = item["keys"][level]
            candidates = found.get(rule.profile_column, {}).get(key, []) if key is not None else []
            if key is None:
                item["tried"].append(f"{rule.key} not in the event")
            elif not candidates:
                item["tried"].append(f"no profile with {rule.profile_column}={key!r}")
            else:
                item["customer_key"] = key
                item["rule"] = _describe_rule(rule)
                ordered = _choose(route, candidates)
                item["profile"] = ordered[0]
                item["matches"] = len(ordered)
                continue
            if level + 1 < len(rules):
                still.append(item)
        pending = still
        level += 1


# -- rules -------------------------------------------------------------------------------------------
def _load_suppressions(conn: Connection, emails: list[str]) -> dict[str, str]:
    """{address or "@domain": source} for the given addresses and their domains in tf_suppression;
    expired entries do not count."""
    from include.triggerflow.suppression import active

    wanted: set[str] = set()
    for email in emails:
        address = email.strip().lower()
        if address:
            wanted.add(address)
            if "@" in address:
                wanted.add("@" + address.rsplit("@", 1)[1])
    stmt = select(suppression.c.address, suppression.c.source).where(active())
    if _smaller_than(conn, suppression, len(wanted)):
        # the list is small (bounces, block list): read it whole rather than look up every address
        return {address: source for address, source in conn.execute(stmt) if address in wanted}
    return {address: source for address, source in select_in(conn, stmt, suppression.c.address, sorted(wanted))}


def _smaller_than(conn: Connection, table: Any, keys: int) -> bool:
    """True when ``table`` has fewer rows than ``keys`` (and there are many keys): reading the
    table whole is then cheaper than a key look-up."""
    if keys <= IN_LIST_SIZE:
        return False
    return conn.execute(select(func.count()).select_from(table)).scalar_one() < keys


def _unsubscribed(conn: Connection, customer_ids: list[str]) -> set[str]:
    """Customers who used an unsubscribe link. Checked besides ``profiles.opted_out`` so that a
    profile reload from a CRM that has not heard of the opt-out cannot undo it."""
    if _smaller_than(conn, unsubscribe, len(customer_ids)):
        wanted = set(customer_ids)
        return {cid for cid in conn.execute(select(unsubscribe.c.customer_id).distinct()).scalars() if cid in wanted}
    return {row[0] for row in select_in(conn, select(unsubscribe.c.customer_id), unsubscribe.c.customer_id, customer_ids)}


def _recent_sends(conn: Connection, profile_ids: list[str], since: datetime) -> dict[str, list[dict[str, Any]]]:
    """profile_id -> its ledger rows queued since ``since`` that count as an email."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    stmt = select(send.c.profile_id, send.c.route, send.c.trigger_ts, send.c.event_id, send.c.batch_id, send.c.created_at).where(
        send.c.created_at >= since, send.c.state.in_(_COUNTED_STATES)
    )
    for profile_id, route, trigger_ts, event_id, batch_id, created in select_in(conn, stmt, send.c.profile_id, profile_ids):
        created = created if created.tzinfo else created.replace(tzinfo=UTC)
        out[profile_id].append(
            {"route": route, "trigger_ts": trigger_ts, "event_id": int(event_id), "batch_id": batch_id, "created_at": created}
        )
    return out


def _suppression_reason(
    route: TriggerRoute, profile: dict[str, Any], suppressed: dict[str, str], unsubscribed: set[str]
) -> tuple[str, str] | None:
    checks = route.rules.suppress
    if "opt-out" in checks and profile.get("opted_out") in _TRUE:
        return "suppressed:opt-out", "profile opted out"
    if "opt-out" in checks and str(profile["customer_id"]) in unsubscribed:
        return "suppressed:opt-out", "customer used an unsubscribe link (tf_unsubscribe)"
    raw = profile.get("email")
    if "invalid-address" in checks:
        try:
            validate_address(raw if isinstance(raw, str) else "")
        except InvalidAddressError as exc:
            return "suppressed:invalid-address", str(exc)
    address = str(raw or "").strip().lower()
    domain = "@" + address.rsplit("@", 1)[1] if "@" in address else None
    for entry in (address, domain):
        source = suppressed.get(entry) if entry else None
        if source is None:
            continue
        kind = "hard-bounce" if source == "hard-bounce" else "block-list"
        if kind in checks:
            what = f"domain {entry[1:]}" if entry.startswith("@") else entry
            return f"suppressed:{kind}", f"{what} is on the suppression list ({source})"
    return None


def _fmt_s(seconds: int) -> str:
    """86400 -> "24h", 7 days -> "7d", 90 -> "90s": as people write windows in the routing file."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size and not (unit == "d" and seconds < 2 * 86400):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def reconcile_batch(
    engine: Engine,
    batch_id: str,
    routing: RoutingConfig,
    *,
    chunk_size: int = 2000,
    max_chunks: int = 16,
    now: datetime | None = None,
) -> ReconcileResult:
    now = now or datetime.now(UTC)
    with engine.connect() as conn:
        # Decisions that own a ledger row (matched, deferred, duplicate) or suppress a customer are
        # final; a replay re-decides only events not decided yet or that found no profile or route,
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

    routes = {r.name: r for r in routing.routes}
    decisions: dict[int, dict[str, Any]] = {}
    wanted: list[dict[str, Any]] = []
    for event_id, payload in stored:
        base: dict[str, Any] = {"event_id": int(event_id), "batch_id": batch_id, "trigger_id": None}
        try:
            parsed = parse_envelope(payload)
            base["trigger_id"] = store_text(parsed.trigger_id, _TRIGGER_ID_LEN)
            route = routing.route_for(parsed.trigger_id)
            if route is None:
                decisions[int(event_id)] = {**base, "decision": "ignored", "detail": "no route for this trigger id"}
                continue
            if len(parsed.trigger_id) > _TRIGGER_ID_LEN:  # routed by "*": the ledger column cannot hold it
                raise EventProblem(f"triggerId longer than {_TRIGGER_ID_LEN} characters")
            wanted.append(
                {
                    **base,
                    "route": route.name,
                    # look-up keys: a key the store cannot take would fail the batch's look-up
                    "keys": [store_text(rule.extract(parsed)) for rule in route.identities],
                    "tried": [],
                    "customer_key": None,
                    "trigger_ts": _checked_ts(parsed.trigger_ts),
                    "event": parsed,
                }
            )
        except Exception as exc:
            decisions[int(event_id)] = _not_reconciled(base, exc)

    # every look-up on one connection (one read snapshot; its temporary key tables are its own)
    with engine.connect() as conn:
        resolve_identities(conn, wanted, routes)
        matched = [w for w in wanted if w.get("profile") is not None]
        for item in wanted:
            if item.get("profile") is None:
                first_key = next((k for k in item["keys"] if k is not None), None)
                decisions[item["event_id"]] = {
                    **_out(item, routes[item["route"]]),
                    "customer_key": first_key,
                    "decision": "unmatched",
                    "detail": "; ".join(item["tried"]) or "no identity rule applies",
                }

        suppressed = _load_suppressions(conn, [str(w["profile"].get("email") or "") for w in matched])
        windows = [r.rules.dedup_window_s or 0 for r in routes.values()]
        periods = [r.rules.frequency_cap.per_s for r in routes.values() if r.rules.frequency_cap]
        earliest_ts = min((w["trigger_ts"] for w in matched if w["trigger_ts"] is not None), default=None)
        since = now - timedelta(seconds=max(periods, default=0))
        if earliest_ts is not None and windows:
            since = min(since, datetime.fromtimestamp(earliest_ts / 1000, tz=UTC) - timedelta(seconds=max(windows)))
        customer_ids = sorted({str(w["profile"]["customer_id"]) for w in matched})
        recent = _recent_sends(conn, customer_ids, since)
        unsubscribed = _unsubscribed(conn, customer_ids)
        catalog_items = lookup_catalog(conn, catalog_skus(item["event"] for item in matched if routes[item["route"]].products is ProductSource.CATALOG))

    ledger_rows: list[dict[str, Any]] = []
    matched.sort(key=lambda w: (w["trigger_ts"] if w["trigger_ts"] is not None else 0, w["event_id"]))
    for item in matched:
        route = routes[item["route"]]
        try:
            locale = item["profile"].get("locale")
            content = email_content(item["event"], route, catalog_items, locale if isinstance(locale, str) else None)
            outcome = _apply_rules(item, route, suppressed, unsubscribed, recent, now, content)
            row = _ledger_row(item, route, outcome, batch_id) if outcome["decision"] in QUEUED_DECISIONS else None
        except Exception as exc:
            decisions[item["event_id"]] = _not_reconciled(
                {**_out(item, route), "batch_id": batch_id}, exc
            )
            continue
        decisions[item["event_id"]] = outcome
        if row is not None:
            ledger_rows.append(row)
            customer_id = row["profile_id"]
            recent[customer_id].append(
                {"route": route.name, "trigger_ts": item["trigger_ts"], "event_id": item["event_id"],
                 "batch_id": batch_id, "created_at": now}
            )

    with engine.begin() as conn:
        existing_chunks = {
            int(c) for c in conn.execute(select(send.c.chunk).where(send.c.batch_id == batch_id).distinct()).scalars()
        }
        n_chunks = max(1, min(max_chunks, math.ceil(len(ledger_rows) / max(chunk_size, 1))))
        for i, row in enumerate(ledger_rows):
            row.update(chunk=i % n_chunks, attempts=0, created_at=now, updated_at=now)
        inserted = bulk_insert(conn, send, ledger_rows, ignore_conflicts_on=["idempotency_key"])
        # Which event owns each key now: an earlier batch's event means this one is a duplicate.
        # (When every row was inserted, each key is owned by the event that queued it.)
        owners: dict[str, tuple[int, str]] = {r["idempotency_key"]: (r["event_id"], batch_id) for r in ledger_rows}
        if inserted != len(ledger_rows):
            keys = [r["idempotency_key"] for r in ledger_rows]
            stmt = select(send.c.idempotency_key, send.c.event_id, send.c.batch_id)
            for key, owner_event, owner_batch in select_in(conn, stmt, send.c.idempotency_key, keys):
                owners[key] = (int(owner_event), owner_batch)
        for row in ledger_rows:
            owner_event, owner_batch = owners[row["idempotency_key"]]
            if owner_event != row["event_id"]:
                decisions[row["event_id"]].update(
                    decision="duplicate",
                    detail=f"same trigger message already queued for event {owner_event} of batch {owner_batch}",
                )
        # Decisions of events no longer valid and of the events decided again now are replaced.
        conn.execute(
            delete(decision).where(decision.c.batch_id == batch_id, decision.c.decision.in_(REDECIDED))
        )
        # Every decision row of this batch is final (its events were not selected) or REDECIDED
        # (deleted just above), so the events decided now can only still have a row written under
        # another batch id: look those up by id only if the batch has any.
        if conn.execute(
            select(func.count())
            .select_from(decision.join(event, event.c.event_id == decision.c.event_id))
            .where(event.c.batch_id == batch_id, decision.c.batch_id != batch_id)
        ).scalar_one():
            where_in(conn, delete(decision), decision.c.event_id, sorted(decisions))
        rows = [
            {
                "event_id": d["event_id"],
                "batch_id": batch_id,
                "trigger_id": store_text(d.get("trigger_id"), _TRIGGER_ID_LEN),
                "route": d.get("route"),
                "customer_key": store_text(d.get("customer_key"), _CUSTOMER_KEY_LEN),
                "profile_id": d.get("profile_id"),
                "decision": d["decision"],
                "detail": store_text(d.get("detail"), _DETAIL_LEN),
                "decided_at": now,
            }
            for d in decisions.values()
        ]
        bulk_insert(conn, decision, rows)
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
    refresh_quietly(engine, batch_id)  # the status counters (include/triggerflow/stats.py)
    log.info("batch %s reconciled: %s; send chunks %s", batch_id, dict(counts), chunks)
    return ReconcileResult(batch_id=batch_id, counts=dict(counts), chunks=chunks)


def catalog_skus(events: Any) -> list[str]:
    """The distinct SKUs of ``events`` (TriggerEvents), sorted: one catalogue look-up for all of them.
    An event whose products cannot be read adds none (its own content step decides it)."""
    skus: set[str] = set()
    for parsed in events:
        try:
            skus.update(event_skus(parsed))
        except Exception:
            log.warning("could not read the SKUs of an event; it is decided on its own")
    return sorted(skus)


def lookup_catalog(conn: Connection, skus: list[str]) -> dict[str, CatalogEntry]:
    """SKU -> catalogue item for ``skus`` (one set-based query, ``catalog.lookup``); {} for none."""
    if not skus:
        return {}
    from include.triggerflow.catalog import lookup

    return dict(lookup(conn, skus))


def _ledger_row(item: dict[str, Any], route: TriggerRoute, outcome: dict[str, Any], batch_id: str) -> dict[str, Any]:
    """The ledger row queuing the email of a matched or deferred event."""
    profile = item["profile"]
    customer_id = str(profile["customer_id"])
    trigger_ts = item["trigger_ts"]
    if trigger_ts is None:
        raise EventProblem("no usable triggerTimestamp (missing or out of range): the email's idempotency key needs one")
    return {
        "idempotency_key": idempotency_key(str(item["trigger_id"]), int(trigger_ts), customer_id, route.template),
        "batch_id": batch_id,
        "event_id": item["event_id"],
        "profile_id": customer_id,
        "trigger_id": str(item["trigger_id"]),
        "route": route.name,
        "recipient": str(profile.get("email") or "").strip(),
        "trigger_ts": int(trigger_ts),
        "state": "scheduled" if outcome["decision"] == "deferred" else "pending",
        "not_before": outcome.get("not_before"),
    }


def _out(item: dict[str, Any], route: TriggerRoute) -> dict[str, Any]:
    return {
        "event_id": item["event_id"],
        "trigger_id": item["trigger_id"],
        "route": route.name,
        "customer_key": item.get("customer_key"),
    }


def _apply_rules(
    item: dict[str, Any],
    route: TriggerRoute,
    suppressed: dict[str, str],
    unsubscribed: set[str],
    recent: dict[str, list[dict[str, Any]]],
    now: datetime,
    content: EmailContent | None = None,
) -> dict[str, Any]:
    """The decision for one event whose profile was found (see the module docstring for the order).

    ``content`` is what the email may show (:func:`content.email_content`): an event that named
    products of which none can be shown is decided ``no-products`` once the customer is known to
    be mailable; what was left out is added to the detail of a queued decision."""
    profile = item["profile"]
    customer_id = str(profile["customer_id"])
    out = {**_out(item, route), "profile_id": customer_id}
    matches = int(item.get("matches") or 1)
    via = f"matched by {item['rule']}"
    if matches > 1:
        column, descending = route.profile_order
        if route.multiple_profiles == "skip":
            return {**out, "decision": "ambiguous",
                    "detail": f"{matches} profiles matched by {item['rule']}; multiple_profiles: skip"}
        via += f"; {matches} profiles matched, took the first by {column} {'desc' if descending else 'asc'}"
    rules = route.rules
    trigger_ts = item["trigger_ts"]
    fired = datetime.fromtimestamp(trigger_ts / 1000, tz=UTC) if trigger_ts is not None else None

    if rules.validity_s is not None and fired is not None:
        age = (now - fired).total_seconds()
        if age > rules.validity_s:
            return {**out, "decision": "expired",
                    "detail": f"triggered at {fired.isoformat()}, {age / 60:.0f} min before reconciliation; validity {_fmt_s(rules.validity_s)}"}

    reason = _suppression_reason(route, profile, suppressed, unsubscribed)
    if reason is not None:
        return {**out, "decision": reason[0], "detail": reason[1]}

    if content is not None and content.no_products:
        return {**out, "decision": NO_PRODUCTS, "detail": content.no_products_detail()}
    left_out = content.note() if content is not None else ""

    history = recent.get(customer_id, [])
    if rules.dedup_window_s and trigger_ts is not None:
        window_ms = rules.dedup_window_s * 1000
        for prior in history:
            if (prior["route"] == route.name and prior["event_id"] != item["event_id"]
                    and prior["trigger_ts"] is not None and abs(int(prior["trigger_ts"]) - trigger_ts) < window_ms):
                if int(prior["trigger_ts"]) == trigger_ts:
                    return {**out, "decision": "duplicate",
                            "detail": f"same trigger message already queued for event {prior['event_id']} of batch {prior['batch_id']}"}
                return {**out, "decision": "duplicate",
                        "detail": f"{route.name} already queued for this customer within {_fmt_s(rules.dedup_window_s)} "
                                  f"(event {prior['event_id']} of batch {prior['batch_id']})"}

    cap = rules.frequency_cap
    if cap is not None:
        start = now - timedelta(seconds=cap.per_s)
        count = sum(1 for prior in history if prior["created_at"] >= start)
        if count >= cap.max:
            return {**out, "decision": "capped",
                    "detail": f"{count} trigger emails queued for this customer in the last {_fmt_s(cap.per_s)}; "
                              f"cap {cap.max} per {_fmt_s(cap.per_s)}"}

    if rules.quiet_hours is not None:
        quiet = rules.quiet_hours
        until = quiet.window_end(now, profile.get("timezone"))
        if until is not None:
            zone = profile.get("timezone") or quiet.default_timezone
            return {**out, "decision": "deferred", "not_before": until,
                    "detail": f"quiet hours {quiet.start:%H:%M}-{quiet.end:%H:%M} {zone}; scheduled for {until.isoformat()}"
                              + (f"; {left_out}" if left_out else "")}

    return {**out, "decision": "matched", "detail": f"{via}; {left_out}" if left_out else via}


def due_scheduled(engine: Engine, now: datetime | None = None, *, exclude_batch: str | None = None) -> list[dict[str, Any]]:
    """``[{"batch_id", "chunk"}]`` of earlier batches holding ``scheduled`` rows now due (their
    quiet hours are over): every run sends what has become due, whichever batch queued it."""
    now = now or datetime.now(UTC)
    with engine.connect() as conn:
        rows = conn.execute(
            select(send.c.batch_id, send.c.chunk)
            .where(send.c.state == "scheduled", or_(send.c.not_before.is_(None), send.c.not_before <= now))
            .distinct()
            .order_by(send.c.batch_id, send.c.chunk)
        ).all()
    return [{"batch_id": b, "chunk": int(c)} for b, c in rows if b != exclude_batch]
