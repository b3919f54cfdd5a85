"""Moving a source's stored position by hand: the operator's way past a message that stops the pull.

Landing never fails on content any more (it lands what arrives and validation quarantines it), so
this is for what is left: a source bug, a message the reader cannot get past, or a deliberate decision
to leave a stretch of the stream unread. Every move is recorded in ``tf_source_gap`` with the reason
``deliberate skip: ...``, so the status document's ``gaps`` and the gap table show that messages were
left behind on purpose, by whom and why.

The stored position is where the next read starts: the Pipeline's *next offset to read* of a
partition, the journal's ``since`` (read after this position). ``skip`` therefore adds to a Pipeline
offset; a journal position is opaque and can only be set (to a position the journal gave, e.g. one
shown by ``cli quarantine`` or in the events' ``src_position``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from sqlalchemy import Connection, Engine, String, insert, select, update

from include.triggerflow.store.schema import source_gap, source_health, source_position
from include.triggerflow.timeutil import utcnow

SKIP_REASON_PREFIX = "deliberate skip"
POSITION_MAX_LENGTH: int = cast(String, source_position.c.position.type).length or 200


class PositionError(ValueError):
    """The move was refused; nothing was changed."""


@dataclass(frozen=True)
class PositionMove:
    source: str
    partition: int
    old: str | None  # None: nothing was stored (the next read would have started at `reset`)
    new: str


def set_position(engine: Engine, source: str, partition: int, position: str, *, reason: str | None = None) -> PositionMove:
    """Store ``position`` as where ``source``'s ``partition`` is read from next, and record the move."""
    position = position.strip()
    if not position:
        raise PositionError("the new position is empty")
    if len(position) > POSITION_MAX_LENGTH:
        raise PositionError(f"the new position is {len(position)} characters; positions hold at most {POSITION_MAX_LENGTH}")
    with engine.begin() as conn:
        old = _stored(conn, source, partition)
        if old is None and not _known(conn, source):
            raise PositionError(f"no source {source!r} in the store (see `positions` for the source keys)")
        return _move(conn, source, partition, old, position, reason or "set by hand")


def skip_messages(engine: Engine, source: str, partition: int, count: int = 1, *, reason: str | None = None) -> PositionMove:
    """Move a Pipeline partition's next offset ``count`` messages on (the message at the stored offset
    is the one that is skipped first)."""
    if count < 1:
        raise PositionError(f"--count must be at least 1, not {count}")
    with engine.begin() as conn:
        old = _stored(conn, source, partition)
        if old is None:
            raise PositionError(
                f"{source} partition {partition} has no stored position: nothing to skip from "
                "(see `positions`; set one with `set-position`)"
            )
        if not old.isdigit():
            raise PositionError(
                f"{source} partition {partition} is at {old!r}, not a Pipeline offset: journal positions are "
                "opaque, set the one to read after with `set-position`"
            )
        return _move(conn, source, partition, old, str(int(old) + count), reason or f"skipped {count} message(s)")


def _stored(conn: Connection, source: str, partition: int) -> str | None:
    return conn.execute(
        select(source_position.c.position).where(source_position.c.source == source, source_position.c.partition == partition)
    ).scalar_one_or_none()


def _known(conn: Connection, source: str) -> bool:
    """A source the store has read from (a position of any partition, or its health row)."""
    for column in (source_position.c.source, source_health.c.source):
        if conn.execute(select(column).where(column == source).limit(1)).first() is not None:
            return True
    return False


def _move(conn: Connection, source: str, partition: int, old: str | None, new: str, reason: str) -> PositionMove:
    now = utcnow()
    if old is None:
        conn.execute(insert(source_position).values(source=source, partition=partition, position=new, updated_at=now))
    else:
        # Compare-and-set like landing: a pull that moved the position meanwhile wins, this move fails.
        moved = conn.execute(
            update(source_position)
            .where(source_position.c.source == source, source_position.c.partition == partition, source_position.c.position == old)
            .values(position=new, updated_at=now)
        ).rowcount
        if moved != 1:
            raise PositionError(f"{source} partition {partition} moved while this ran; look at `positions` and retry")
    conn.execute(
        insert(source_gap).values(
            source=source,
            partition=partition,
            expected_position=old,
            resumed_position=new,
            reason=f"{SKIP_REASON_PREFIX}: {reason}",
            batch_id=None,
            detected_at=now,
        )
    )
    return PositionMove(source=source, partition=partition, old=old, new=new)
