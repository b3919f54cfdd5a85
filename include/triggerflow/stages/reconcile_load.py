"""What the reconcile stage reads for a whole batch before the rules run: set-based look-ups.

One query per table or per profile key column (an IN-list for a few keys, a join with a
temporary key table for many: ``store.lookups.select_in``), never one query per event. Small tables
(suppressions, unsubscribes) are read whole when they hold fewer rows than there are keys. Every
function takes the connection the stage holds, so the look-ups share one read snapshot.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, func, select

from include.triggerflow.config import TriggerRoute
from include.triggerflow.content import CatalogEntry, event_skus
from include.triggerflow.rules import Candidate, Profile, ProfileMatch, RecentSend
from include.triggerflow.states import COUNTED_STATES
from include.triggerflow.store.lookups import select_in
from include.triggerflow.store.schema import (
    PROFILE_COLUMNS,
    profile_visitor_ids,
    profiles,
    send,
    suppression,
    unsubscribe,
)

log = logging.getLogger(__name__)

#: above this many keys, a small table (suppressions, unsubscribes) is read whole when it holds fewer rows
IN_LIST_SIZE = 500


def profiles_by_key(conn: Connection, column: str, keys: list[str]) -> dict[str, list[Profile]]:
    """key -> every profile carrying it in ``column``. ``visitor_id`` means any stored ECID: the
    profile's own ``ecid`` or one of its rows in profile_visitor_ids."""
    found: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    if column == "visitor_id":
        for row in select_in(conn, select(profiles), profiles.c.ecid, keys):
            profile = dict(zip(PROFILE_COLUMNS, row, strict=True))
            found[str(profile["ecid"])][profile["customer_id"]] = profile
        stmt = select(profile_visitor_ids.c.visitor_id, profiles).join(
            profiles, profiles.c.customer_id == profile_visitor_ids.c.customer_id
        )
        for row in select_in(conn, stmt, profile_visitor_ids.c.visitor_id, keys):
            profile = dict(zip(PROFILE_COLUMNS, row[1:], strict=True))
            found[str(row[0])][profile["customer_id"]] = profile
    else:
        for row in select_in(conn, select(profiles), profiles.c[column], keys):
            profile = dict(zip(PROFILE_COLUMNS, row, strict=True))
            found[str(profile[column])][profile["customer_id"]] = profile
    return {key: list(by_id.values()) for key, by_id in found.items()}


def _smaller_than(conn: Connection, table: Table, keys: int) -> bool:
    """True when ``table`` has fewer rows than ``keys`` (and there are many keys): reading the
    table whole is then cheaper than a key look-up."""
    if keys <= IN_LIST_SIZE:
        return False
    return conn.execute(select(func.count()).select_from(table)).scalar_one() < keys


def load_suppressions(conn: Connection, emails: Iterable[str]) -> dict[str, str]:
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


def unsubscribed(conn: Connection, customer_ids: list[str]) -> set[str]:
    """Customers who used an unsubscribe link. Checked besides ``profiles.opted_out`` so that a
    profile reload from a CRM that has not heard of the opt-out cannot undo it."""
    if _smaller_than(conn, unsubscribe, len(customer_ids)):
        wanted = set(customer_ids)
        return {cid for cid in conn.execute(select(unsubscribe.c.customer_id).distinct()).scalars() if cid in wanted}
    return {row[0] for row in select_in(conn, select(unsubscribe.c.customer_id), unsubscribe.c.customer_id, customer_ids)}


def recent_sends(conn: Connection, profile_ids: list[str], since: datetime) -> dict[str, list[RecentSend]]:
    """profile_id -> its ledger rows queued since ``since`` that count as an email."""
    out: dict[str, list[RecentSend]] = defaultdict(list)
    stmt = select(send.c.profile_id, send.c.route, send.c.trigger_ts, send.c.event_id, send.c.batch_id, send.c.created_at).where(
        send.c.created_at >= since, send.c.state.in_(COUNTED_STATES)
    )
    for profile_id, route, trigger_ts, event_id, batch_id, created in select_in(conn, stmt, send.c.profile_id, profile_ids):
        out[profile_id].append(RecentSend(route, trigger_ts, int(event_id), batch_id, created))
    return out


def history_since(routes: Iterable[TriggerRoute], matched: Sequence[tuple[Candidate, ProfileMatch]], now: datetime) -> datetime:
    """How far back ledger rows matter: the longest frequency-cap period before now, and the
    longest dedup window before the batch's earliest trigger."""
    routes = list(routes)
    windows = [r.rules.dedup_window_s or 0 for r in routes]
    periods = [r.rules.frequency_cap.per_s for r in routes if r.rules.frequency_cap]
    earliest_ts = min((c.trigger_ts for c, _ in matched if c.trigger_ts is not None), default=None)
    since = now - timedelta(seconds=max(periods, default=0))
    if earliest_ts is not None and windows:
        since = min(since, datetime.fromtimestamp(earliest_ts / 1000, tz=UTC) - timedelta(seconds=max(windows)))
    return since


def catalog_skus(events: Iterable[Any]) -> list[str]:
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
