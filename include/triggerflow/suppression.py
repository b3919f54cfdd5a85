"""The suppression list (``tf_suppression``): addresses and domains not to mail.

Every entry has a category (:class:`Category`, stored in the ``source`` column):

* ``hard-bounce`` — written by the send stage when a mailbox does not exist (a recipient-stage
  5.1.x, 5.2.1 or bare 5xx; see ``smtp_replies``), with the run's batch id;
* ``complaint``, ``manual``, ``block-list``, ``unsubscribe`` — added by people (a complaint feed,
  a legal request, an import of an old unsubscribe list).

An entry is a lower-cased address (``someone@example.com``) or a whole domain written
``@example.com``, and may expire (``expires_at``; None: for good). An expired entry no longer
suppresses anyone. Reconciliation checks both the address and its domain.

A bad day (a relay that answered "user unknown" for everyone) is undone with :func:`lift`:
select entries by category, creation time range and/or batch, and delete them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TypedDict, cast

from sqlalchemy import ColumnElement, Engine, and_, delete, func, or_, select, true

from include.triggerflow.addresses import InvalidAddressError, validate_address
from include.triggerflow.store.bulk import chunked, insert_ignore
from include.triggerflow.store.schema import suppression
from include.triggerflow.timeutil import as_utc, utcnow


class Category(StrEnum):
    HARD_BOUNCE = "hard-bounce"
    COMPLAINT = "complaint"
    MANUAL = "manual"
    BLOCK_LIST = "block-list"
    UNSUBSCRIBE = "unsubscribe"


SOURCES = tuple(c.value for c in Category)
_DOMAIN = re.compile(r"@[a-z0-9-]+(\.[a-z0-9-]+)+")


class SuppressionEntry(TypedDict):
    """One ``tf_suppression`` row as :func:`list_entries` returns it."""

    address: str
    source: str
    reason: str | None
    smtp_code: int | None
    created_at: datetime
    expires_at: datetime | None
    batch_id: str | None


class SuppressionEntryError(ValueError):
    """An entry is neither a plain address nor ``@domain``."""


def normalise_entry(entry: str) -> str:
    """``Someone@Example.COM`` -> ``someone@example.com``; ``@Example.com`` -> ``@example.com``."""
    text = (entry or "").strip().lower()
    if text.startswith("*@"):
        text = text[1:]
    if text.startswith("@"):
        if not _DOMAIN.fullmatch(text):
            raise SuppressionEntryError(f"{entry!r} is not a domain entry such as @example.com")
        return text
    try:
        return validate_address(text).lower()
    except InvalidAddressError as exc:
        raise SuppressionEntryError(f"{entry!r}: {exc}") from None


def category(value: str) -> Category:
    """The category named ``value``, or SuppressionEntryError listing the valid ones."""
    try:
        return Category(value)
    except ValueError:
        raise SuppressionEntryError(f"category {value!r} is not one of: {', '.join(SOURCES)}") from None


def add_entries(
    engine: Engine,
    entries: Iterable[str],
    *,
    source: str = Category.BLOCK_LIST,
    reason: str | None = None,
    expires_at: datetime | None = None,
) -> int:
    """Add entries (all checked first: one bad entry adds nothing); returns how many were new.
    An address already listed keeps its entry."""
    kind = category(source)
    clean = sorted({normalise_entry(e) for e in entries})
    now = utcnow()
    rows = [
        {"address": a, "source": kind.value, "reason": reason, "smtp_code": None, "created_at": now, "expires_at": expires_at}
        for a in clean
    ]
    with engine.begin() as conn:
        return insert_ignore(conn, suppression, rows, keys=["address"])


def remove_entries(engine: Engine, entries: Iterable[str]) -> int:
    clean = sorted({normalise_entry(e) for e in entries})
    removed = 0
    with engine.begin() as conn:
        for part in chunked(clean, 500):
            removed += conn.execute(delete(suppression).where(suppression.c.address.in_(list(part)))).rowcount or 0
    return removed


def active(now: datetime | None = None) -> ColumnElement[bool]:
    """The entries that suppress at ``now``: no expiry, or an expiry still ahead."""
    at = now or utcnow()
    return or_(suppression.c.expires_at.is_(None), suppression.c.expires_at > at)


@dataclass(frozen=True)
class Selection:
    """Which entries to list or lift; every given criterion must hold (none given: all entries)."""

    category: Category | None = None
    #: created at or after / before (UTC)
    since: datetime | None = None
    until: datetime | None = None
    batch_id: str | None = None
    #: include expired entries (listing only; lifting takes expired ones too)
    expired: bool = True

    def where(self) -> ColumnElement[bool]:
        parts: list[ColumnElement[bool]] = []
        if self.category is not None:
            parts.append(suppression.c.source == self.category.value)
        if self.since is not None:
            parts.append(suppression.c.created_at >= self.since)
        if self.until is not None:
            parts.append(suppression.c.created_at < self.until)
        if self.batch_id is not None:
            parts.append(suppression.c.batch_id == self.batch_id)
        if not self.expired:
            parts.append(active())
        return and_(true(), *parts)

    def is_everything(self) -> bool:
        return self.category is None and self.since is None and self.until is None and self.batch_id is None


def list_entries(engine: Engine, selection: Selection | None = None, *, source: str | None = None,
                 limit: int = 1000) -> list[SuppressionEntry]:
    """Entries, newest first."""
    chosen = selection or Selection(category=category(source) if source is not None else None)
    stmt = select(suppression).where(chosen.where()).order_by(suppression.c.created_at.desc()).limit(limit)
    with engine.connect() as conn:
        return [cast(SuppressionEntry, dict(r._mapping)) for r in conn.execute(stmt)]


def count_entries(engine: Engine, selection: Selection) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(suppression).where(selection.where())).scalar_one())


def lift(engine: Engine, selection: Selection) -> int:
    """Delete the selected entries (to undo a bad day); returns how many were lifted. Refuses an
    empty selection: lifting every suppression is never what a typo meant."""
    if selection.is_everything():
        raise SuppressionEntryError("say what to lift: a category, a time range (--since/--until) or a batch")
    with engine.begin() as conn:
        return conn.execute(delete(suppression).where(selection.where())).rowcount or 0


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """``2026-12-05``, ``2026-12-05T14:00`` (UTC unless an offset is given) or an age such as
    ``90m``, ``6h``, ``2d`` (that long before now)."""
    value = text.strip()
    match = re.fullmatch(r"(\d+)([mhd])", value)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        delta = {"m": timedelta(minutes=amount), "h": timedelta(hours=amount), "d": timedelta(days=amount)}[unit]
        return (now or utcnow()) - delta
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise SuppressionEntryError(f"{text!r} is neither a date/time (2026-12-05T14:00) nor an age (90m, 6h, 2d)") from None
    return as_utc(when)  # an offset given is kept as the instant; none given: UTC
