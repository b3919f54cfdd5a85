"""Store access for code that answers HTTP requests in the Airflow API server (the plugins).

The API server runs every plugin and Airflow's own UI/REST API in one process, and synchronous work
(a database call) runs in one shared thread pool (AnyIO's, 40 threads by default). A store call
that waits — on a locked row, a slow statement, an unreachable server — holds one of those
threads; enough of them and the whole API server stops answering. So every store call from a
plugin goes through a :class:`StoreGuard`:

* **short timeouts** on every transaction: PostgreSQL ``SET LOCAL lock_timeout`` and
  ``SET LOCAL statement_timeout`` (per transaction, so they also hold behind a transaction-mode
  pooler such as PgBouncer) and a ``connect_timeout`` in the URL; SQLite a short busy timeout
  (a writer waiting on another writer gives up after it). A call that runs into one raises the
  driver's error, which the plugin answers as a generic 503.
* **bounded concurrency**: at most ``max_concurrent`` store calls per guard and process
  (:class:`StoreGate`). A request waits at most ``slot_wait_s`` for a slot — in the event loop,
  holding no thread (:meth:`StoreGuard.acall`) — and otherwise gets :class:`StoreBusy` (the plugin
  answers 503 with ``Retry-After``). So however many requests arrive, store work holds at most
  ``max_concurrent`` threads of the shared pool, each for at most about the timeouts.
* **cached engines**: one engine per URL and settings per process, with a pool no larger than the
  gate (:meth:`StoreGuard.engine`), instead of one per request.

:class:`TTLCache` caches what a request would otherwise look up each time (an Airflow connection
read through the secrets backend, a derived key, the engine): values for ``ttl_s``, failures for
the shorter ``error_ttl_s`` (a misconfiguration is not hammered, and a fix is seen soon). From
async code, :meth:`TTLCache.aget` serves a fresh value without a thread and runs one loader at a
time; requests arriving during a load wait in the event loop, or get :class:`LookupBusy`.

Usage (a plugin)::

    GUARD = StoreGuard.shared("unsubscribe")             # one per name per process

    engine = GUARD.engine(url)                           # cached
    result = await GUARD.acall(engine, do_work, arg)     # do_work(conn, arg) in one transaction
    # sync code: GUARD.call(engine, do_work, arg); or `with GUARD.begin(engine) as conn: ...`

Everything here is dialect-neutral SQLAlchemy Core; the triggerflow package itself (tasks, CLI)
keeps using :func:`include.triggerflow.store.engines.get_engine`, whose long timeouts suit batch work.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url

from include.triggerflow.store.engines import sqlite_pragmas, with_connect_timeout

T = TypeVar("T")

#: how often a request waiting for a gate slot looks again (in the event loop, no thread held)
_POLL_S = 0.01


class StoreBusy(Exception):
    """No store slot became free within the wait: the caller should answer "busy, try again"
    (503 with ``Retry-After: retry_after_s``)."""

    def __init__(self, name: str, limit: int, waited_s: float, retry_after_s: int) -> None:
        super().__init__(f"store gate {name!r}: all {limit} slots busy for {waited_s:g} s")
        self.name = name
        self.limit = limit
        self.retry_after_s = retry_after_s


class LookupBusy(StoreBusy):
    """Another request is loading the value this one needs (:meth:`TTLCache.aget`) and it did not
    arrive within the wait: answer like :class:`StoreBusy`."""


@dataclass(frozen=True)
class GuardSettings:
    """Limits of one guard. The defaults suit a request: a recipient or a monitor would rather get
    "try again" than wait, and the API server must keep answering everyone else."""

    #: PostgreSQL: how long a statement waits for a row or table lock
    lock_timeout_ms: int = 2000
    #: PostgreSQL: how long one statement may run
    statement_timeout_ms: int = 5000
    #: PostgreSQL: how long connecting may take (added to the URL unless it names one)
    connect_timeout_s: int = 5
    #: SQLite: how long a statement waits for another connection's write lock
    sqlite_busy_timeout_ms: int = 2000
    #: store calls at once per guard and process (also the engine's pool size)
    max_concurrent: int = 4
    #: how long a request waits for a slot before StoreBusy
    slot_wait_s: float = 1.0
    #: what StoreBusy suggests as Retry-After
    retry_after_s: int = 5

    def __post_init__(self) -> None:
        for name in ("lock_timeout_ms", "statement_timeout_ms", "connect_timeout_s", "sqlite_busy_timeout_ms", "max_concurrent", "retry_after_s"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GuardSettings.{name} must be a positive integer, not {value!r}")
        if not self.slot_wait_s >= 0:
            raise ValueError(f"GuardSettings.slot_wait_s must be >= 0, not {self.slot_wait_s!r}")


class StoreGate:
    """At most ``limit`` holders at once; a thread-safe counting gate usable from sync code
    (:meth:`slot`, blocks the calling thread) and from async code (:meth:`aslot`, waits in the
    event loop without a thread, whatever loop it runs on)."""

    def __init__(self, name: str, limit: int, wait_s: float, retry_after_s: int = 5) -> None:
        if limit <= 0:
            raise ValueError("StoreGate limit must be positive")
        self.name = name
        self.limit = limit
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self._sem = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self._in_use = 0
        #: requests refused with StoreBusy since start (for tests and logs)
        self.refused = 0
        #: slots granted since start
        self.granted = 0

    @property
    def in_use(self) -> int:
        return self._in_use

    def _granted(self) -> None:
        with self._lock:
            self._in_use += 1
            self.granted += 1

    def _release(self) -> None:
        with self._lock:
            self._in_use -= 1
        self._sem.release()

    def _busy(self, waited: float) -> StoreBusy:
        with self._lock:
            self.refused += 1
        return StoreBusy(self.name, self.limit, waited, self.retry_after_s)

    @contextmanager
    def slot(self, wait_s: float | None = None) -> Iterator[None]:
        """Hold a slot (blocking this thread up to ``wait_s``); StoreBusy if none came free."""
        wait = self.wait_s if wait_s is None else wait_s
        if not self._sem.acquire(timeout=wait):
            raise self._busy(wait)
        self._granted()
        try:
            yield
        finally:
            self._release()

    @asynccontextmanager
    async def aslot(self, wait_s: float | None = None) -> AsyncIterator[None]:
        """Hold a slot, waiting up to ``wait_s`` in the event loop (no thread held while waiting);
        StoreBusy if none came free."""
        wait = self.wait_s if wait_s is None else wait_s
        deadline = time.monotonic() + wait
        while not self._sem.acquire(blocking=False):
            if time.monotonic() >= deadline:
                raise self._busy(wait)
            await asyncio.sleep(_POLL_S)
        self._granted()
        try:
            yield
        finally:
            self._release()


class StoreGuard:
    """Short-timeout transactions under a :class:`StoreGate`, on cached engines (module doc)."""

    _shared: ClassVar[dict[str, StoreGuard]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str, settings: GuardSettings | None = None) -> None:
        self.name = name
        self.settings = settings or GuardSettings()
        s = self.settings
        self.gate = StoreGate(name, s.max_concurrent, s.slot_wait_s, s.retry_after_s)
        self._engines: dict[str, Engine] = {}
        self._engines_lock = threading.Lock()

    @classmethod
    def shared(cls, name: str, settings: GuardSettings | None = None) -> StoreGuard:
        """The process's guard called ``name`` (created with ``settings`` on first use; later
        calls return it as it is). Each plugin uses its own name, so one plugin's load cannot
        take the other's slots."""
        with cls._shared_lock:
            guard = cls._shared.get(name)
            if guard is None:
                guard = cls._shared[name] = cls(name, settings)
            return guard

    # -- engines -------------------------------------------------------------------------------------
    def engine(self, url: str) -> Engine:
        """The engine for ``url`` with this guard's timeouts, built once per process: PostgreSQL
        with ``connect_timeout`` (unless the URL has one) and a pool of ``max_concurrent``
        connections; SQLite with the store's usual pragmas but a short busy timeout."""
        with self._engines_lock:
            engine = self._engines.get(url)
            if engine is None:
                engine = self._engines[url] = self._build(url)
            return engine

    def _build(self, url: str) -> Engine:
        s = self.settings
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            busy_ms = s.sqlite_busy_timeout_ms

            def pragmas(dbapi_conn: Any, record: Any) -> None:
                sqlite_pragmas(dbapi_conn, record)  # WAL, foreign keys... as every store connection
                cur = dbapi_conn.cursor()
                cur.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
                cur.close()

            engine = create_engine(parsed, connect_args={"timeout": busy_ms / 1000}, hide_parameters=True)
            event.listen(engine, "connect", pragmas)
            return engine
        return create_engine(
            with_connect_timeout(parsed, s.connect_timeout_s),
            pool_size=s.max_concurrent,
            max_overflow=0,
            pool_timeout=max(s.slot_wait_s, 1.0),
            pool_pre_ping=True,
            hide_parameters=True,  # bound values are customer data: never in exception texts
        )

    def dispose(self) -> None:
        """Close every engine of this guard (tests; a changed connection)."""
        with self._engines_lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()

    # -- transactions --------------------------------------------------------------------------------
    def _timeouts(self, conn: Connection) -> None:
        if conn.dialect.name == "postgresql":
            s = self.settings
            # SET LOCAL: for this transaction only, so a pooled connection keeps no state
            conn.execute(text(f"SET LOCAL lock_timeout = {int(s.lock_timeout_ms)}"))
            conn.execute(text(f"SET LOCAL statement_timeout = {int(s.statement_timeout_ms)}"))

    @contextmanager
    def transaction(self, engine: Engine) -> Iterator[Connection]:
        """One transaction with this guard's timeouts, committed on success, WITHOUT taking a gate
        slot: for code already holding one (``call``/``acall`` take it)."""
        with engine.begin() as conn:
            self._timeouts(conn)
            yield conn

    @contextmanager
    def begin(self, engine: Engine) -> Iterator[Connection]:
        """A gate slot (blocking this thread up to ``slot_wait_s``, else StoreBusy) and one
        transaction with this guard's timeouts, committed on success."""
        with self.gate.slot(), self.transaction(engine) as conn:
            yield conn

    def call(self, engine: Engine, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(conn, *args, **kwargs)`` in one guarded transaction (sync callers)."""
        with self.begin(engine) as conn:
            return fn(conn, *args, **kwargs)

    async def acall(self, engine: Engine, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(conn, *args, **kwargs)`` in one guarded transaction, from async code: the slot is
        awaited in the event loop, and only a request holding one takes a worker thread."""
        from anyio import to_thread

        def work() -> T:
            with self.transaction(engine) as conn:
                return fn(conn, *args, **kwargs)

        async with self.gate.aslot():
            return await to_thread.run_sync(work)

    async def arun(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (any blocking store work that manages its own connection, e.g. a read
        helper taking an engine) in a worker thread under a gate slot. Prefer :meth:`acall`,
        which also sets the timeouts."""
        from anyio import to_thread

        async with self.gate.aslot():
            return await to_thread.run_sync(lambda: fn(*args))


_MISSING: Any = object()


@dataclass
class _Entry:
    expires: float
    value: Any = None
    error: BaseException | None = None


class TTLCache(Generic[T]):
    """A small thread-safe cache of look-ups: a value is kept ``ttl_s`` seconds, a failure (an
    exception of the ``cache_errors`` types) ``error_ttl_s`` seconds and re-raised meanwhile. One
    loader runs at a time per cache (the others wait and then read its result), so a burst of
    requests costs one look-up."""

    def __init__(self, ttl_s: float, *, error_ttl_s: float = 5.0, cache_errors: tuple[type[BaseException], ...] = (Exception,),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.error_ttl_s = error_ttl_s
        self.cache_errors = cache_errors
        self._clock = clock
        self._entries: dict[Hashable, _Entry] = {}
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        #: how many times a loader ran (for tests: "one look-up per TTL")
        self.loads = 0

    def peek(self, key: Hashable) -> Any:
        """The fresh cached value, or the cached failure raised, or ``TTLCache.MISSING``; never
        loads (cheap enough for the event loop)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.expires <= self._clock():
                return _MISSING
        if entry.error is not None:
            raise entry.error.with_traceback(None)  # no growing traceback across re-raises
        return entry.value

    MISSING: ClassVar[Any] = _MISSING

    def get(self, key: Hashable, loader: Callable[[], T]) -> T:
        """The cached value for ``key``, loading it with ``loader()`` when absent or stale (may
        block: call from a worker thread)."""
        found = self.peek(key)
        if found is not _MISSING:
            return found
        with self._load_lock:
            found = self.peek(key)  # another thread may have loaded it meanwhile
            if found is not _MISSING:
                return found
            self.loads += 1
            try:
                value = loader()
            except self.cache_errors as exc:
                self._remember(key, _Entry(self._clock() + self.error_ttl_s, error=exc))
                raise
            self._remember(key, _Entry(self._clock() + self.ttl_s, value=value))
            return value

    def _remember(self, key: Hashable, entry: _Entry) -> None:
        """Store a loader's outcome (a value for ``ttl_s``, an error for ``error_ttl_s``)."""
        with self._lock:
            self._entries[key] = entry

    async def aget(self, key: Hashable, loader: Callable[[], T], *, wait_s: float = 2.0) -> T:
        """:meth:`get` from async code: a fresh value is returned at once (no thread); a miss runs
        ``loader`` in a worker thread, ONE at a time per cache — a request arriving meanwhile waits
        in the event loop (no thread) up to ``wait_s`` for that result, then gets
        :class:`LookupBusy`. So a hanging secrets backend holds one thread, not one per request."""
        from anyio import to_thread

        found = self.peek(key)
        if found is not _MISSING:
            return found
        deadline = time.monotonic() + wait_s
        while not self._load_lock.acquire(blocking=False):
            if time.monotonic() >= deadline:
                raise LookupBusy(f"look-up {key!r}", 1, wait_s, 5)
            await asyncio.sleep(_POLL_S)
            found = self.peek(key)
            if found is not _MISSING:
                return found
        try:
            found = self.peek(key)
            if found is not _MISSING:
                return found
            self.loads += 1
            try:
                value = await to_thread.run_sync(loader)
            except self.cache_errors as exc:
                self._remember(key, _Entry(self._clock() + self.error_ttl_s, error=exc))
                raise
            self._remember(key, _Entry(self._clock() + self.ttl_s, value=value))
            return value
        finally:
            self._load_lock.release()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
