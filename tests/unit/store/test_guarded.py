"""include/triggerflow/store/guarded.py: the plugins' store access (short timeouts, a bounded gate,
cached engines and look-ups), on the real store (SQLite, or PostgreSQL with TRIGGERFLOW_TEST_PG_URL)."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import OperationalError

from include.triggerflow.store.guarded import (
    GuardSettings,
    StoreBusy,
    StoreGate,
    StoreGuard,
    TTLCache,
)
from include.triggerflow.store.schema import profiles


def add_profile(engine: Engine, customer_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(insert(profiles).values(customer_id=customer_id, email="a@example.com", opted_out=False, updated_at=datetime.now(UTC)))


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        GuardSettings(max_concurrent=0)
    with pytest.raises(ValueError, match="lock_timeout_ms"):
        GuardSettings(lock_timeout_ms=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="slot_wait_s"):
        GuardSettings(slot_wait_s=-1)


def test_gate_admits_limit_holders_and_refuses_the_next() -> None:
    gate = StoreGate("t", limit=2, wait_s=0)
    with gate.slot(), gate.slot():
        assert gate.in_use == 2
        with pytest.raises(StoreBusy) as busy, gate.slot():
            pass  # pragma: no cover - never entered
        assert busy.value.retry_after_s == 5 and "all 2 slots busy" in str(busy.value)
    assert gate.in_use == 0 and gate.refused == 1 and gate.granted == 2
    with gate.slot():  # freed again
        assert gate.in_use == 1


def test_async_waiters_hold_no_thread_and_get_a_slot_when_one_frees() -> None:
    gate = StoreGate("t", limit=1, wait_s=30)
    release = threading.Event()
    held = threading.Event()

    def holder() -> None:
        with gate.slot():
            held.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(30)

    async def waiter() -> int:
        async with gate.aslot():
            return gate.in_use

    async def main() -> int:
        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0.05)
        assert not task.done()  # waiting in the loop: the loop itself still runs (this line)
        release.set()
        return await task

    assert asyncio.run(main()) == 1
    thread.join(30)
    assert gate.in_use == 0 and gate.refused == 0


def test_async_waiter_gives_up_with_store_busy() -> None:
    gate = StoreGate("t", limit=1, wait_s=0.05)

    async def main() -> None:
        with gate.slot(), pytest.raises(StoreBusy):
            async with gate.aslot():
                pass  # pragma: no cover

    asyncio.run(main())
    assert gate.refused == 1 and gate.in_use == 0


def test_ttl_cache_loads_once_and_caches_failures_shortly() -> None:
    now = [0.0]
    cache: TTLCache[str] = TTLCache(60, error_ttl_s=5, cache_errors=(LookupError,), clock=lambda: now[0])
    calls: list[str] = []

    def load() -> str:
        calls.append("x")
        return f"v{len(calls)}"

    assert cache.peek("k") is TTLCache.MISSING
    assert cache.get("k", load) == "v1" and cache.get("k", load) == "v1" and cache.peek("k") == "v1"
    now[0] = 61
    assert cache.get("k", load) == "v2" and cache.loads == 2

    def fail() -> str:
        calls.append("fail")
        raise LookupError("no such connection")

    for _ in range(3):
        with pytest.raises(LookupError):
            cache.get("bad", fail)
    assert calls.count("fail") == 1  # a failure is cached too...
    now[0] += 6
    with pytest.raises(LookupError):
        cache.get("bad", fail)
    assert calls.count("fail") == 2  # ...but only for error_ttl_s
    with pytest.raises(RuntimeError):  # errors of other types are not cached
        cache.get("other", lambda: (_ for _ in ()).throw(RuntimeError("x")))
    assert cache.peek("other") is TTLCache.MISSING
    cache.clear()
    assert cache.peek("k") is TTLCache.MISSING


def test_engine_is_cached_per_url(store_url: str, store_engine: Engine) -> None:
    guard = StoreGuard("t-cache")
    try:
        assert guard.engine(store_url) is guard.engine(store_url)
        assert guard.engine(store_url) is not store_engine  # its own pool and timeouts
    finally:
        guard.dispose()
    assert StoreGuard.shared("t-shared") is StoreGuard.shared("t-shared")


def test_a_locked_row_fails_fast_instead_of_waiting(store_url: str, store_engine: Engine) -> None:
    """The other transaction holds the row (PostgreSQL: SELECT ... FOR UPDATE; SQLite: the write
    lock, BEGIN IMMEDIATE): the guarded UPDATE gives up with the driver's lock error instead of
    waiting for the holder."""
    add_profile(store_engine, "C1")
    guard = StoreGuard("t-lock", GuardSettings(lock_timeout_ms=200, sqlite_busy_timeout_ms=200, statement_timeout_ms=2000))
    engine = guard.engine(store_url)
    holder = store_engine.connect()
    try:
        if holder.dialect.name == "postgresql":
            holder.execute(select(profiles.c.customer_id).where(profiles.c.customer_id == "C1").with_for_update())
        else:
            holder.exec_driver_sql("BEGIN IMMEDIATE")
        with pytest.raises(OperationalError) as failed:
            guard.call(engine, lambda conn: conn.execute(update(profiles).where(profiles.c.customer_id == "C1").values(opted_out=True)))
        text = str(failed.value.orig).lower()
        assert "lock" in text, text  # "lock timeout" (PostgreSQL) / "database is locked" (SQLite)
        assert guard.gate.in_use == 0  # the slot was given back
    finally:
        holder.rollback()
        holder.close()
    # released: the same call now succeeds
    guard.call(engine, lambda conn: conn.execute(update(profiles).where(profiles.c.customer_id == "C1").values(opted_out=True)))
    with store_engine.connect() as conn:
        assert conn.execute(select(profiles.c.opted_out).where(profiles.c.customer_id == "C1")).scalar_one()
    guard.dispose()


def test_postgresql_transactions_carry_the_timeouts(store_url: str, store_engine: Engine) -> None:
    if store_engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only (set TRIGGERFLOW_TEST_PG_URL)")
    guard = StoreGuard("t-pg", GuardSettings(lock_timeout_ms=1234, statement_timeout_ms=4321))
    engine = guard.engine(store_url)
    assert engine.url.query.get("connect_timeout") == "5"

    def shown(conn):  # type: ignore[no-untyped-def]
        return conn.exec_driver_sql("SHOW lock_timeout").scalar(), conn.exec_driver_sql("SHOW statement_timeout").scalar()

    assert guard.call(engine, shown) == ("1234ms", "4321ms")
    with engine.connect() as plain:  # SET LOCAL: nothing stays on the pooled connection
        assert shown(plain) == ("0", "0")
    with pytest.raises(OperationalError, match="statement timeout"):
        guard.call(engine, lambda conn: conn.exec_driver_sql("SELECT pg_sleep(10)"))
    guard.dispose()


def test_acall_runs_in_a_worker_thread_under_the_gate(store_url: str, store_engine: Engine) -> None:
    add_profile(store_engine, "C2")
    guard = StoreGuard("t-acall", GuardSettings(max_concurrent=1, slot_wait_s=0))
    engine = guard.engine(store_url)
    seen: list[tuple[int, bool]] = []

    def work(conn, customer: str) -> str:  # type: ignore[no-untyped-def]
        seen.append((guard.gate.in_use, threading.current_thread() is threading.main_thread()))
        return conn.execute(select(profiles.c.email).where(profiles.c.customer_id == customer)).scalar_one()

    assert asyncio.run(guard.acall(engine, work, "C2")) == "a@example.com"
    assert seen == [(1, False)]

    async def while_full() -> None:
        async with guard.gate.aslot():
            await guard.acall(engine, work, "C2")

    with pytest.raises(StoreBusy):
        asyncio.run(while_full())
    assert len(seen) == 1
    guard.dispose()


def test_aget_loads_once_for_a_burst_and_waiters_hold_no_thread() -> None:
    cache: TTLCache[str] = TTLCache(60)
    started = threading.Event()
    release = threading.Event()
    loads: list[str] = []

    def slow_load() -> str:  # a slow secrets backend
        loads.append(threading.current_thread().name)
        started.set()
        release.wait(30)
        return "signer"

    async def main() -> list[str]:
        first = asyncio.ensure_future(cache.aget("k", slow_load, wait_s=30))
        while not started.is_set():
            await asyncio.sleep(0.005)
        others = [asyncio.ensure_future(cache.aget("k", slow_load, wait_s=30)) for _ in range(20)]
        await asyncio.sleep(0.05)
        assert not any(o.done() for o in others)  # waiting for the one load, in this loop
        release.set()
        return [await first, *[await o for o in others]]

    assert asyncio.run(main()) == ["signer"] * 21
    assert len(loads) == 1 and loads[0] != threading.main_thread().name  # one load, in a worker thread


def test_aget_gives_up_with_lookup_busy_while_a_load_hangs() -> None:
    from include.triggerflow.store.guarded import LookupBusy

    cache: TTLCache[str] = TTLCache(60)
    release = threading.Event()

    async def main() -> None:
        hanging = asyncio.ensure_future(cache.aget("k", lambda: release.wait(30) and "late", wait_s=30))
        await asyncio.sleep(0.05)
        with pytest.raises(LookupBusy):
            await cache.aget("k", lambda: "never called", wait_s=0.05)
        release.set()
        assert await hanging == "late"

    asyncio.run(main())
    assert cache.loads == 1


def test_aget_caches_a_failure_briefly() -> None:
    now = [0.0]
    cache: TTLCache[str] = TTLCache(60, error_ttl_s=5, cache_errors=(LookupError,), clock=lambda: now[0])

    def fail() -> str:
        raise LookupError("connection not defined")

    async def main() -> None:
        for _ in range(3):
            with pytest.raises(LookupError):
                await cache.aget("k", fail)
        now[0] = 6
        assert await cache.aget("k", lambda: "fixed") == "fixed"

    asyncio.run(main())
    assert cache.loads == 2
