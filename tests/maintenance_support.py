"""A store with history, for the retention tests: batches of given ages with their events,
decisions, quarantine, ledger, send log, run summary and status summaries, written directly."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, insert, select

from include.triggerflow.stats import refresh_batch_stats
from include.triggerflow.store.schema import (
    batch,
    decision,
    event,
    quarantine,
    run_summary,
    send,
    send_log,
)

NOW = datetime.now(UTC).replace(microsecond=0)
SOURCE = "test:src"


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


class History:
    """Writes batches as the stages would have left them, ``age`` days ago."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._ids = itertools.count(1)

    def batch(
        self,
        batch_id: str,
        age: float,
        *,
        valid: int = 3,
        quarantined: int = 0,
        quarantined_age: float | None = None,
        sends: Sequence[str] = ("sent",),
        balanced: bool | None = True,
        send_age: float | None = None,
    ) -> list[int]:
        """One batch: ``valid`` valid events (decided matched; the first ``len(sends)`` queued
        with those ledger states), ``quarantined`` quarantined ones; a run summary unless
        ``balanced`` is None. Returns the event ids."""
        created = ago(age)
        ids: list[int] = []
        with self.engine.begin() as conn:
            conn.execute(insert(batch).values(
                batch_id=batch_id, dag_id="trigger_emails", run_id=f"run-{batch_id}", run_type="scheduled",
                source=SOURCE, state="landed", pulled=valid + quarantined, created_at=created, landed_at=created,
            ))
            for i in range(valid + quarantined):
                status = "valid" if i < valid else "quarantined"
                n = next(self._ids)
                result = conn.execute(insert(event).values(
                    batch_id=batch_id, source=SOURCE, src_partition=0, src_position=f"p{n:08d}",
                    message_id=f"m{n}", trigger_id="cartAbandonment", trigger_ts=int(created.timestamp() * 1000),
                    payload=json.dumps({"n": n}), received_at=created, status=status,
                ))
                event_id = int(result.inserted_primary_key[0])
                ids.append(event_id)
                if status == "quarantined":
                    conn.execute(insert(quarantine).values(
                        event_id=event_id, batch_id=batch_id, reasons="[]",
                        quarantined_at=ago(quarantined_age if quarantined_age is not None else age),
                    ))
                    continue
                conn.execute(insert(decision).values(
                    event_id=event_id, batch_id=batch_id, trigger_id="cartAbandonment", route="cart",
                    customer_key=f"c{n}", profile_id=f"c{n}", decision="matched", decided_at=created,
                ))
                if i < len(sends):
                    at = ago(send_age if send_age is not None else age)
                    sent = conn.execute(insert(send).values(
                        idempotency_key=f"k{n:062d}", batch_id=batch_id, chunk=0, event_id=event_id,
                        profile_id=f"c{n}", trigger_id="cartAbandonment", route="cart", recipient=f"c{n}@example.test",
                        state=sends[i], attempts=1, message_id=f"<m{n}@x>", subject="Your cart", smtp_code=250,
                        smtp_reply="250 ok", trigger_ts=int(created.timestamp() * 1000), created_at=at, updated_at=at,
                        sent_at=at if sends[i] == "sent" else None,
                    ))
                    conn.execute(insert(send_log).values(
                        send_id=int(sent.inserted_primary_key[0]), batch_id=batch_id, run_id=f"run-{batch_id}",
                        try_number=1, action="sent", smtp_code=250, at=at,
                    ))
            if balanced is not None:
                zeros = dict.fromkeys(("valid", "quarantined", "matched", "unmatched", "ignored", "sent", "suppressed",
                                       "failed", "duplicate", "pending"), 0)
                conn.execute(insert(run_summary).values(
                    batch_id=batch_id, dag_id="trigger_emails", run_id=f"run-{batch_id}", pulled=valid + quarantined,
                    **zeros, balanced=balanced, counts="{}", reported_at=created,
                ))
        refresh_batch_stats(self.engine, batch_id)
        return ids

    def count(self, table: Any, *where: Any) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())

    def rows(self, table: Any, *where: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(table).where(*where))]
