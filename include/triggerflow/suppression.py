"""The suppression list (``tf_suppression``): addresses and domains never to mail.

Sources: ``hard-bounce`` (written by the send stage on a 5xx), ``block-list`` (added by people,
e.g. from a complaint feed or a legal request). An entry is a lower-cased address
(``someone@example.com``) or a whole domain written ``@example.com``. Reconciliation checks both
the address and its domain and records ``suppressed:hard-bounce`` or ``suppressed:block-list``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, delete, select

from include.triggerflow.mailer import InvalidAddressError, validate_address
from include.triggerflow.store.db import chunked, insert_ignore
from include.triggerflow.store.schema import suppression

SOURCES = ("block-list", "hard-bounce")
_DOMAIN = re.compile(r"@[a-z0-9-]+(\.[a-z0-9-]+)+")


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


def add_entries(engine: Engine, entries: Iterable[str], *, source: str = "block-list", reason: str | None = None) -> int:
    """Add entries (all checked first: one bad entry adds nothing); returns how many were new."""
    if source not in SOURCES:
        raise SuppressionEntryError(f"source {source!r} is not one of: {', '.join(SOURCES)}")
    clean = sorted({normalise_entry(e) for e in entries})
    now = datetime.now(timezone.utc)
    rows = [{"address": a, "source": source, "reason": reason, "smtp_code": None, "created_at": now} for a in clean]
    with engine.begin() as conn:
        return insert_ignore(conn, suppression, rows, keys=["address"])


def remove_entries(engine: Engine, entries: Iterable[str]) -> int:
    clean = sorted({normalise_entry(e) for e in entries})
    removed = 0
    with engine.begin() as conn:
        for part in chunked(clean, 500):
            removed += conn.execute(delete(suppression).where(suppression.c.address.in_(list(part)))).rowcount or 0
    return removed


def list_entries(engine: Engine, *, source: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    stmt = select(suppression).order_by(suppression.c.created_at.desc()).limit(limit)
    if source is not None:
        stmt = stmt.where(suppression.c.source == source)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt)]
