"""Tests for include.triggerflow.ledger.Ledger's statements: on PostgreSQL the writes of a group
go as one set-based statement per kind (store.bulk.RowsStatement), and they must leave the ledger,
the send log and the suppression list exactly as the per-email statements do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from include.triggerflow import ledger as ledger_module
from include.triggerflow import send_log as send_log_module
from include.triggerflow.ledger import Ledger, SendingMark
from include.triggerflow.send_log import SendLog
from include.triggerflow.smtp_replies import SmtpStage, accepted, read_reply
from include.triggerflow.store.bulk import bulk_insert
from include.triggerflow.store.schema import event, send, send_log, suppression
from tests.unit.store.test_db_bulk import add_batch, event_rows, stored, without

NOW = datetime(2026, 12, 7, 4, 0, 0, 654321, tzinfo=UTC)
#: the rows of one ledger: the same writes go to batch "a" (grouped) and batch "b" (one per email)
ROWS = 20


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "utcnow", lambda: NOW)
    monkeypatch.setattr(send_log_module, "utcnow", lambda: NOW)


def _ledger_rows(engine: Engine, batch_id: str) -> list[int]:
    add_batch(engine, batch_id)
    with engine.begin() as conn:
        bulk_insert(conn, event, event_rows(batch_id, ROWS))
        events = conn.execute(select(event.c.event_id).where(event.c.batch_id == batch_id)
                              .order_by(event.c.event_id)).scalars().all()
        conn.execute(insert(send), [
            {"idempotency_key": f"{batch_id}-{i}", "batch_id": batch_id, "chunk": 0, "event_id": eid,
             "profile_id": f"C{i}", "trigger_id": "t", "route": "r", "recipient": f"c{i}@shop.example",
             "state": "pending", "attempts": i % 3, "trigger_ts": 1_700_000_000_000 + i, "created_at": NOW,
             "updated_at": NOW}
            for i, eid in enumerate(events)
        ])
        return list(conn.execute(select(send.c.send_id).where(send.c.batch_id == batch_id)
                                 .order_by(send.c.send_id)).scalars())


def _every_kind_of_write(ledger: Ledger, ids: list[int], batch_id: str) -> None:
    """Two groups, as the send stage writes them: the first's outcomes committed with the second's
    marks; every kind of write twice or more in its transaction (one alone goes per email)."""
    ledger.failed(ids[0], None, "render: 'price' is undefined")  # rows that could not be composed
    ledger.failed(ids[1], None, "address: no '@'")
    ledger.mark_sending([SendingMark(i, f"<{n}.{batch_id}@tf>", f"Sujet ✓ {n}\t", n % 3, "fr" if n % 2 else None)
                         for n, i in enumerate(ids[2:12], start=2)])
    for n in (2, 3):
        ledger.sent(ids[n], read_reply(SmtpStage.END_OF_DATA, 250, f"2.0.0 queued as {n}".encode()), resend=False)
    for i in ids[4:6]:
        ledger.sent(i, accepted(), resend=True)
    ledger.deferred(ids[6], 451, "4.7.1 greylisted, 'try later'")
    ledger.deferred(ids[7], None, "mailbox full")
    ledger.failed(ids[8], 550, "5.1.1 no such user")
    ledger.suppress("C8@Shop.example ", 550, "5.1.1 no such user", batch_id=batch_id, expires_at=NOW + timedelta(days=30))
    ledger.suppress(f"c9-{batch_id}@shop.example", 550, "5.1.1 no such user", batch_id=batch_id, expires_at=None)
    ledger.ambiguous(ids[9], "connection lost after the final dot", "hold")
    ledger.mark_sending([SendingMark(i, f"<{n}.{batch_id}@tf>", f"S{n}", 0, None) for n, i in enumerate(ids[12:], start=12)])
    for i in ids[12:14]:
        ledger.sent(i, accepted(), resend=False)
    ledger.back_to_pending(ids[14])
    for i in ids[15:]:
        ledger.not_sent(i, 0)
    ledger.commit()


def test_grouped_writes_store_what_the_per_email_statements_store(store_engine: Engine, fixed_clock: None) -> None:
    grouped, one_by_one = _ledger_rows(store_engine, "a"), _ledger_rows(store_engine, "b")
    logger_a, logger_b = SendLog(store_engine, "a", "run", 1), SendLog(store_engine, "b", "run", 1)
    ledger_a = Ledger(store_engine, logger_a)
    ledger_b = Ledger(store_engine, logger_b)
    ledger_b.grouped = {}
    try:
        _every_kind_of_write(ledger_a, grouped, "a")
        _every_kind_of_write(ledger_b, one_by_one, "b")
    finally:
        ledger_a.close()
        ledger_b.close()
    rows = stored(store_engine, send, send.c.send_id)
    a = [r for r in rows if r["batch_id"] == "a"]
    b = [r for r in rows if r["batch_id"] == "b"]
    ignore = ("send_id", "event_id", "idempotency_key", "batch_id")

    def same(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "message_id": (row["message_id"] or "").replace(".a@", ".@").replace(".b@", ".@")}

    assert [same(r) for r in without(a, *ignore)] == [same(r) for r in without(b, *ignore)]
    assert [r["state"] for r in a] == [
        "failed", "failed", "sent", "sent", "sent", "sent", "deferred", "deferred", "failed", "ambiguous", "sending",
        "sending", "sent", "sent", "pending", "pending", "pending", "pending", "pending", "pending"]
    assert [r["resend"] for r in a[2:6]] == [False, False, True, True] and a[2]["sent_at"] == NOW
    assert a[6]["sent_at"] is None and a[6]["smtp_code"] == 451 and a[7]["smtp_code"] is None
    assert (a[2]["message_id"], a[2]["subject"], a[2]["attempts"], a[2]["locale"]) == ("<2.a@tf>", "Sujet ✓ 2\t", 3, None)
    assert a[3]["locale"] == "fr" and a[10]["attempts"] == 10 % 3 + 1  # (10, 11: as a crash leaves them)
    assert (a[16]["attempts"], a[16]["smtp_reply"]) == (0, "not sent: the group stopped before its turn; will retry")
    logs = stored(store_engine, send_log, send_log.c.log_id)
    by_batch = {k: without([r for r in logs if r["batch_id"] == k], "log_id", "send_id", "batch_id") for k in "ab"}
    assert by_batch["a"] == by_batch["b"]
    assert [r["action"] for r in by_batch["a"]] == ["failed"] * 2 + ["sent"] * 2 + ["resent"] * 2 + [
        "deferred"] * 2 + ["failed", "ambiguous", "sent", "sent"]
    suppressed = without(stored(store_engine, suppression, suppression.c.address), "batch_id")
    assert [r["address"] for r in suppressed] == ["c8@shop.example", "c9-a@shop.example", "c9-b@shop.example"]
    assert suppressed[1] == {**suppressed[2], "address": "c9-a@shop.example"}


def test_a_group_is_three_statements_on_postgresql(store_engine: Engine) -> None:
    ledger = Ledger(store_engine, SendLog(store_engine, "a", "run", 1))
    writes: list[tuple[str, dict[str, Any]]] = []
    for i in range(50):
        writes.append(("finish_sent", {"b_id": i, "b_state": "sent", "b_code": 250, "b_reply": "ok", "b_now": NOW}))
        writes.append(("log", ledger.logger.row(i, "sent", code=250)))
    writes += [("sending", {"b_id": 100 + i, "b_message_id": "m", "b_subject": "s", "b_attempts": 1, "b_locale": None,
                            "b_now": NOW}) for i in range(50)]
    statements = ledger._statements(writes)
    if store_engine.dialect.name == "postgresql":
        assert [s.sql.split()[0] for s, _ in statements] == ["UPDATE", "INSERT", "UPDATE"]
        assert [len(values) for _, values in statements] == [50, 50, 50]
    else:  # SQLite: one statement per write, in order
        assert [values for _, values in statements] == [values for _, values in writes]


def test_a_row_written_twice_in_one_transaction_ends_as_its_last_write(store_engine: Engine, fixed_clock: None) -> None:
    # (a set-based UPDATE would apply either of the two: the ledger then falls back to one
    # statement per write, in order)
    ids = _ledger_rows(store_engine, "a")
    ledger = Ledger(store_engine, SendLog(store_engine, "a", "run", 1))
    try:
        ledger.failed(ids[0], 550, "first")
        ledger.deferred(ids[1], 451, "other row")
        ledger.deferred(ids[0], 451, "second, the last word")
        ledger.commit()
    finally:
        ledger.close()
    writes = [("finish", {"b_id": ids[0]}), ("finish", {"b_id": ids[1]}), ("finish", {"b_id": ids[0]})]
    assert len(ledger._statements(writes)) == 3  # one per write
    rows = {r["send_id"]: r for r in stored(store_engine, send, send.c.send_id)}
    assert (rows[ids[0]]["state"], rows[ids[0]]["smtp_reply"]) == ("deferred", "second, the last word")
    assert rows[ids[1]]["state"] == "deferred"
