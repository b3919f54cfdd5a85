"""Recording the opt-outs that verified unsubscribe links carry.

:func:`record_opt_out` (or :func:`record_opt_out_in` in the caller's transaction) sets
``profiles.opted_out`` and writes a ``tf_unsubscribe`` row in one transaction — one row per
customer and link: ``token_key`` is the SHA-256 of the token's signed part and the insert is
``ON CONFLICT DO NOTHING`` on the unique (customer_id, token_key) index, so repeating a request adds
nothing. Reconcile then decides ``suppressed:opt-out`` for that customer's next triggers. Logs
name the customer id and the method, never the token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from include.triggerflow.timeutil import utcnow
from include.triggerflow.unsubscribe.tokens import UnsubscribeClaim, aware_utc, token_key_for

log = logging.getLogger("include.triggerflow.unsubscribe")  # the name operators filter on, as before the split

class UnsubscribeMethod(StrEnum):
    """``tf_unsubscribe.method``: how the recipient asked (a mail client's RFC 8058 one-click POST,
    or the button of the page the footer link opens)."""

    ONE_CLICK = "one-click"
    PAGE = "page"


METHOD_ONE_CLICK = UnsubscribeMethod.ONE_CLICK
METHOD_PAGE = UnsubscribeMethod.PAGE
METHODS = tuple(UnsubscribeMethod)


@dataclass(frozen=True)
class OptOutRecorded:
    """What :func:`record_opt_out_in` did: whether the customer is in ``profiles``, whether this
    request changed the profile (it was not opted out yet), whether it added the
    ``tf_unsubscribe`` row (False: this link was used before)."""

    known: bool
    changed: bool
    new_request: bool


def record_opt_out_in(conn: Any, claim: UnsubscribeClaim, *, method: str, now: datetime | None = None) -> OptOutRecorded:
    """:func:`record_opt_out` on an open connection, in the caller's transaction (the plugin runs
    it in a guarded, short-timeout transaction). Logs nothing: see :func:`log_opt_out`.

    The ``tf_unsubscribe`` row is inserted with ON CONFLICT DO NOTHING on (customer_id,
    token_key): one row per customer and link however often it is used, so the table (which
    reconcile reads) grows with the links used, not with the requests. The profile is updated
    only while it is not opted out yet (a repeated request writes nothing there either).
    """
    from sqlalchemy import false, select, update

    from include.triggerflow.store.bulk import insert_ignore
    from include.triggerflow.store.schema import profiles, unsubscribe

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    at = utcnow() if now is None else aware_utc(now)
    changed = conn.execute(
        update(profiles)
        .where(profiles.c.customer_id == claim.customer_id, profiles.c.opted_out == false())
        .values(opted_out=True, updated_at=at)
    ).rowcount
    known = bool(changed) or conn.execute(
        select(profiles.c.customer_id).where(profiles.c.customer_id == claim.customer_id)
    ).first() is not None
    added = insert_ignore(
        conn,
        unsubscribe,
        [
            {
                "customer_id": claim.customer_id,
                "route": claim.route,
                "method": method,
                "issued_at": claim.issued_at,
                "received_at": at,
                "token_key": claim.key,
            }
        ],
        keys=("customer_id", "token_key"),
    )
    return OptOutRecorded(known=known, changed=bool(changed), new_request=bool(added))


def log_opt_out(claim: UnsubscribeClaim, recorded: OptOutRecorded, method: str) -> None:
    """The log line of a recorded opt-out (after the commit): the customer id and the method,
    never the token."""
    repeat = "" if recorded.new_request else ", link used before"
    if recorded.known:
        log.info("unsubscribe: customer %s opted out (%s%s%s)", claim.customer_id, method, "" if recorded.changed else ", already opted out", repeat)
    else:
        log.warning(
            "unsubscribe: customer %s is not in profiles; request recorded in tf_unsubscribe only (%s%s)", claim.customer_id, method, repeat
        )


def record_opt_out(engine: Any, claim: UnsubscribeClaim, *, method: str, now: datetime | None = None) -> bool:
    """Record a verified unsubscribe request; True when the customer is in ``profiles``.

    One transaction: ``profiles.opted_out = True`` (and ``updated_at``) for ``claim.customer_id``
    and one ``tf_unsubscribe`` row per customer and link (``method`` ``one-click`` or ``page``,
    the first request's). Idempotent: a repeated request keeps the profile opted out (its
    ``updated_at`` is not touched again), adds no row, and returns True.

    Every verified link gets a ``tf_unsubscribe`` row, also for a customer id that is not (or
    no longer) in ``profiles``: the signature proves we mailed that id, and the row keeps the
    request for an audit or for a profile loaded later. Then the answer is False (a warning is
    logged), not an error: the recipient asked not to be mailed, and nobody with that id can be.
    Database errors propagate (the caller answers "try again later").
    """
    with engine.begin() as conn:
        recorded = record_opt_out_in(conn, claim, method=method, now=now)
    log_opt_out(claim, recorded, method)
    return recorded.known


def backfill_token_keys(conn: Any) -> None:
    """Migration ``0007_unsubscribe_token_key``'s data step (``store.migrations.MIGRATION_DATA_STEPS``):
    give every ``tf_unsubscribe`` row written before the key existed its ``token_key``, then
    delete the repeats — rows of the same customer and key, keeping the earliest (lowest id) — so
    the unique index on (customer_id, token_key) can be created. The key comes from the row's
    customer, route and issued_at exactly as :meth:`UnsubscribeLinks.verify` derives it from the
    link (:func:`token_key_for`), so a link used before the migration is still recognised after
    it. A no-op on an empty table; runs in the migration's transaction."""
    from sqlalchemy import bindparam, delete, select, update

    from include.triggerflow.store.bulk import chunked
    from include.triggerflow.store.schema import unsubscribe

    t = unsubscribe.c
    rows = conn.execute(
        select(t.unsubscribe_id, t.customer_id, t.route, t.issued_at, t.token_key).order_by(t.unsubscribe_id)
    ).all()
    if not rows:
        return
    seen: set[tuple[str, str]] = set()
    fill: list[dict[str, Any]] = []
    repeats: list[int] = []
    for row_id, customer_id, route, issued_at, key in rows:
        if key is None:
            key = token_key_for(customer_id, route, issued_at)
            fill.append({"row_id": row_id, "key": key})
        if (customer_id, key) in seen:
            repeats.append(row_id)
        else:
            seen.add((customer_id, key))
    stmt = update(unsubscribe).where(t.unsubscribe_id == bindparam("row_id")).values(token_key=bindparam("key"))
    for part in chunked(fill, 1000):
        conn.execute(stmt, list(part))
    for ids in chunked(repeats, 500):
        conn.execute(delete(unsubscribe).where(t.unsubscribe_id.in_(list(ids))))
    log.info(
        "unsubscribe: migration 0007: token keys given to %d tf_unsubscribe rows, %d repeated requests removed", len(fill), len(repeats)
    )
