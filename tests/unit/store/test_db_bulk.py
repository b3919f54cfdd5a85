"""Tests for the bulk helpers (include.triggerflow.store.bulk: bulk_insert, DriverStatement /
DriverSession) and the set-based look-ups (store.lookups: select_in / where_in, IN-list or temporary
key table).

Each helper must store and find exactly what plain SQLAlchemy Core would. They run on the store of
the test run (SQLite, or PostgreSQL when TRIGGERFLOW_TEST_PG_URL is set)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from include.triggerflow.store import lookups
from include.triggerflow.store.bulk import DriverSession, DriverStatement, bulk_insert
from include.triggerflow.store.lookups import key_table, select_in, where_in
from include.triggerflow.store.schema import batch, event, send, send_log

NOW = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)
ODD_TEXT = ["plain", "tab\there", "new\nline", "cr\rlf\r\n", "back\\slash \\N \\.", "ünïcødé ✓ 😀", "", "\\", "'quote\"", None]


def add_batch(engine, batch_id: str = "b1") -> None:
    with engine.begin() as conn:
        conn.execute(insert(batch).values(batch_id=batch_id, dag_id="d", run_id="r", source="s", state="landed",
                                          pulled=0, created_at=NOW))


def event_rows(batch_id: str, count: int, start: int = 0) -> list[dict]:
    return [
        {
            "batch_id": batch_id, "source": f"s-{batch_id}", "src_partition": i % 3, "src_position": f"p{i:06d}",
            "message_id": ODD_TEXT[i % len(ODD_TEXT)], "trigger_id": f"t{i}", "trigger_ts": (i * 1_000_003) if i % 4 else None,
            "payload": f'{{"n": {i}, "text": "{ODD_TEXT[i % (len(ODD_TEXT) - 1)]}"}}',
            "received_at": NOW + timedelta(microseconds=i), "status": "landed",
        }
        for i in range(start, start + count)
    ]


def stored(engine, table, order_by) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(table).order_by(order_by))]


def without(rows: list[dict], *keys: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in keys} for r in rows]


# -- bulk_insert -------------------------------------------------------------------------------------
def test_bulk_insert_stores_what_core_stores(store_engine) -> None:
    add_batch(store_engine, "core")
    add_batch(store_engine, "bulk")
    with store_engine.begin() as conn:
        conn.execute(insert(event), event_rows("core", 60))
    with store_engine.begin() as conn:
        bulk_insert(conn, event, event_rows("bulk", 60))
    rows = stored(store_engine, event, event.c.event_id)
    core = [r for r in rows if r["batch_id"] == "core"]
    bulk = [r for r in rows if r["batch_id"] == "bulk"]
    assert without(bulk, "event_id", "batch_id", "source") == without(core, "event_id", "batch_id", "source")
    assert bulk[0]["received_at"].replace(tzinfo=UTC) == NOW  # microseconds kept


def test_bulk_insert_fills_column_defaults_like_core(store_engine) -> None:
    add_batch(store_engine)
    with store_engine.begin() as conn:
        bulk_insert(conn, event, event_rows("b1", 2))
        ids = list(conn.execute(select(event.c.event_id).order_by(event.c.event_id)).scalars())
        rows = [
            {"idempotency_key": f"k{i}", "batch_id": "b1", "chunk": 0, "event_id": eid, "profile_id": "C1",
             "trigger_id": "t", "route": "r", "recipient": "a@b.example", "state": "pending", "created_at": NOW,
             "updated_at": NOW}
            for i, eid in enumerate(ids)
        ]
        conn.execute(insert(send), rows[:1])
        bulk_insert(conn, send, rows[1:])
    core, bulk = stored(store_engine, send, send.c.send_id)
    assert (bulk["attempts"], bulk["dry_run"], bulk["resend"]) == (core["attempts"], core["dry_run"], core["resend"]) == (0, False, False)


def test_bulk_insert_conflict_raises_integrity_error_and_ignore_skips(store_engine) -> None:
    add_batch(store_engine)
    with store_engine.begin() as conn:
        bulk_insert(conn, event, event_rows("b1", 5))
    with pytest.raises(IntegrityError), store_engine.begin() as conn:
        bulk_insert(conn, event, event_rows("b1", 3, start=4))  # p000004 is already there
    assert len(stored(store_engine, event, event.c.event_id)) == 5  # the failed insert rolled back

    with store_engine.begin() as conn:
        ids = list(conn.execute(select(event.c.event_id)).scalars())
        base = {"batch_id": "b1", "chunk": 0, "profile_id": "C1", "trigger_id": "t", "route": "r",
                "recipient": "a@b.example", "state": "pending", "trigger_ts": 1_700_000_000_000,
                "created_at": NOW, "updated_at": NOW}
        assert bulk_insert(conn, send, [{**base, "idempotency_key": "k1", "event_id": ids[0]}]) == 1
        assert bulk_insert(conn, send, [{**base, "idempotency_key": k, "event_id": eid} for k, eid in zip(["k1", "k2", "k3"], ids[1:])],
                           ignore_conflicts_on=["trigger_ts", "idempotency_key"]) == 2  # k1 was there
    rows = stored(store_engine, send, send.c.send_id)
    assert [(r["idempotency_key"], r["event_id"]) for r in rows] == [("k1", ids[0]), ("k2", ids[2]), ("k3", ids[3])]


def test_bulk_insert_of_nothing_does_nothing(store_engine) -> None:
    add_batch(store_engine)
    with store_engine.begin() as conn:
        assert bulk_insert(conn, event, []) == 0
        assert bulk_insert(conn, event, [], ignore_conflicts_on=["source", "src_partition", "src_position"]) == 0
    assert stored(store_engine, event, event.c.event_id) == []


# -- select_in / where_in ----------------------------------------------------------------------------
@pytest.mark.parametrize("in_list_max", [10_000, 3], ids=["in-list", "key-table"])
def test_select_in_and_where_in_match_the_plain_queries(store_engine, monkeypatch, in_list_max: int) -> None:
    monkeypatch.setattr(lookups, "IN_LIST_MAX", in_list_max)
    add_batch(store_engine)
    with store_engine.begin() as conn:
        bulk_insert(conn, event, event_rows("b1", 40))
    wanted = [f"t{i}" for i in range(0, 40, 3)] + ["t3", "nope", "x" * 500, "t0"]  # repeats, unknown, too long
    with store_engine.connect() as conn:
        found = select_in(conn, select(event.c.trigger_id, event.c.src_position), event.c.trigger_id, wanted)
        expected = conn.execute(
            select(event.c.trigger_id, event.c.src_position).where(event.c.trigger_id.in_(wanted))
        ).all()
        assert sorted(found) == sorted(expected) and len(found) == 14
        ids = [r[0] for r in conn.execute(select(event.c.event_id).where(event.c.src_partition == 1))]
        by_id = select_in(conn, select(event.c.event_id), event.c.event_id, ids + ids[:2])
        assert sorted(r[0] for r in by_id) == sorted(ids)
        assert select_in(conn, select(event.c.event_id), event.c.event_id, []) == []
    with store_engine.begin() as conn:
        where_in(conn, update(event).values(status="valid"), event.c.event_id, ids)
        where_in(conn, delete(event), event.c.trigger_id, ["t0", "t1", "t2", "t4", "t5", "nope"])
    rows = stored(store_engine, event, event.c.event_id)
    assert {r["trigger_id"] for r in rows} == {f"t{i}" for i in range(40)} - {"t0", "t1", "t2", "t4", "t5"}
    assert {r["event_id"] for r in rows if r["status"] == "valid"} == set(ids) & {r["event_id"] for r in rows}


def test_a_key_with_a_nul_character_matches_nothing_and_fails_nothing(store_engine, monkeypatch) -> None:
    add_batch(store_engine)
    with store_engine.begin() as conn:
        bulk_insert(conn, event, event_rows("b1", 4))
    for in_list_max in (10_000, 1):
        monkeypatch.setattr(lookups, "IN_LIST_MAX", in_list_max)
        with store_engine.connect() as conn:
            rows = select_in(conn, select(event.c.trigger_id), event.c.trigger_id, ["t1", "t2\x00", "t3"])
        assert sorted(r[0] for r in rows) == ["t1", "t3"]


def test_key_table_is_gone_after_the_block(store_engine) -> None:
    with store_engine.connect() as conn:
        with key_table(conn, ["a", "b", "a"]) as table:
            assert sorted(conn.execute(select(table.c.k)).scalars()) == ["a", "b"]
            name = table.name
        from sqlalchemy import inspect

        assert name not in inspect(conn).get_table_names()


# -- DriverStatement / DriverSession -----------------------------------------------------------------
def test_driver_statements_store_what_core_stores(store_engine) -> None:
    add_batch(store_engine)
    with store_engine.begin() as conn:
        bulk_insert(conn, event, event_rows("b1", 2))
        ids = list(conn.execute(select(event.c.event_id).order_by(event.c.event_id)).scalars())
        conn.execute(insert(send), [
            {"idempotency_key": f"k{i}", "batch_id": "b1", "chunk": 0, "event_id": eid, "profile_id": "C1",
             "trigger_id": "t", "route": "r", "recipient": "a@b.example", "state": "pending", "attempts": 0,
             "created_at": NOW, "updated_at": NOW}
            for i, eid in enumerate(ids)
        ])
        send_ids = list(conn.execute(select(send.c.send_id).order_by(send.c.send_id)).scalars())
    values = {"state": "sent", "smtp_code": 250, "smtp_reply": "ok ✓\ttab", "updated_at": NOW + timedelta(seconds=1),
              "sent_at": NOW + timedelta(seconds=2), "resend": True, "locale": None}
    with store_engine.begin() as conn:
        conn.execute(update(send).where(send.c.send_id == send_ids[0]).values(**values))
        conn.execute(insert(send_log).values(send_id=send_ids[0], batch_id="b1", run_id="r", try_number=1, action="sent",
                                             smtp_code=250, detail=None, at=NOW))
    stmt = DriverStatement(
        update(send).where(send.c.send_id == bindparam("b_id")).values(
            state=bindparam("b_state"), smtp_code=bindparam("b_code"), smtp_reply=bindparam("b_reply"),
            updated_at=bindparam("b_updated"), sent_at=bindparam("b_sent"), resend=True, locale=bindparam("b_locale"),
        ),
        store_engine.dialect,
    )
    log = DriverStatement(
        insert(send_log).inline().values(send_id=bindparam("b_id"), batch_id="b1", run_id="r", try_number=1,
                                         action="sent", smtp_code=250, detail=None, at=bindparam("b_at")),
        store_engine.dialect,
    )
    with DriverSession(store_engine) as session:
        session.transaction([
            (stmt, {"b_id": send_ids[1], "b_state": "sent", "b_code": 250, "b_reply": "ok ✓\ttab",
                    "b_updated": NOW + timedelta(seconds=1), "b_sent": NOW + timedelta(seconds=2), "b_locale": None}),
            (log, {"b_id": send_ids[1], "b_at": NOW}),
        ])
        # all or nothing: a failing statement leaves nothing of its transaction, and the session goes on
        bad = DriverStatement(insert(send_log).inline().values(send_id=bindparam("b_id"), batch_id="b1", action="x",
                                                               at=bindparam("b_at")), store_engine.dialect)
        with pytest.raises(store_engine.dialect.loaded_dbapi.IntegrityError):  # the unknown send_id
            session.transaction([(log, {"b_id": send_ids[1], "b_at": NOW}), (bad, {"b_id": 10**9, "b_at": NOW})])
        session.transaction([(stmt, {"b_id": send_ids[1], "b_state": "sent", "b_code": 250, "b_reply": "ok ✓\ttab",
                                     "b_updated": NOW + timedelta(seconds=1), "b_sent": NOW + timedelta(seconds=2),
                                     "b_locale": None})])
    rows = stored(store_engine, send, send.c.send_id)
    assert without(rows[1:], "send_id", "idempotency_key", "event_id") == without(rows[:1], "send_id", "idempotency_key", "event_id")
    logs = stored(store_engine, send_log, send_log.c.log_id)
    assert len(logs) == 2 and without(logs[1:], "log_id", "send_id") == without(logs[:1], "log_id", "send_id")
    with store_engine.connect() as conn:  # the pooled connection is back in its usual mode
        conn.execute(update(send).values(attempts=5))
        conn.rollback()
    assert {r["attempts"] for r in stored(store_engine, send, send.c.send_id)} == {0}
