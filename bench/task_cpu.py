"""CPU per Airflow task instance while a benchmark runs the real DAG.

:class:`TaskCpuSampler` looks at every process of the machine a few times a second and books each
process's CPU since the last look to whoever it worked for:

* a **task process** (``airflow worker -- <ti id>``, the title the Task SDK gives the process that
  runs a task instance, under any executor) to that task instance;
* a **store backend** (a PostgreSQL server process serving a connection) to the task instance whose
  process opened the connection — the backend's client port is looked up in ``pg_stat_activity``
  and matched to the process holding that socket — so the store's work is counted with the task
  that asked for it;
* the task process's **supervisor** (its parent: the executor's worker process that started it,
  relays its logs and heartbeats) to that task instance as Airflow's own per-task cost;
* everything else to a role: the rest of Airflow (scheduler, API server, DAG processor, executor),
  the other PostgreSQL connections and its background processes (checkpointer, WAL writer,
  autovacuum), the Adobe emulator, the SMTP sink, the benchmark itself, other.

A process that exits between two looks loses the CPU it used since the last one, except a task
process: its parent reaps it, and the parent's "children" CPU grows by the child's exact total,
which replaces what was seen. The report says how much of the machine's busy time was booked.

Linux only (``/proc``; psutil). The emulator and the sink are recognised by their module names
(``devstack.adobe_emulator``, ``devstack.smtp_sink``).
"""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: the Task SDK's title of a task process (airflow.sdk.execution_time.task_runner)
TASK_TITLE = re.compile(r"airflow worker -- ([0-9a-fA-F-]{36})\b")
#: a PostgreSQL backend serving a client connection: "postgres: user database host(port) state"
BACKEND_TITLE = re.compile(r"^postgres: (?:\S+: )?\S+ \S+ (?:\S+\(\d+\)|\[local\])")
ROLES = ("airflow", "postgres (other connections)", "postgres (background)", "emulator", "smtp sink", "benchmark",
         "other")


@dataclass(frozen=True, slots=True)
class Proc:
    """One process at one look: CPU seconds (user + system) of its own and of its reaped children."""

    pid: int
    ppid: int
    title: str
    cpu: float
    children_cpu: float


@dataclass(slots=True)
class TaskCpu:
    """CPU seconds booked to one task instance."""

    task: float = 0.0
    store: float = 0.0
    supervisor: float = 0.0


@dataclass(slots=True)
class Attribution:
    """Books each look's CPU deltas (pure: fed with :class:`Proc` lists, so it is testable)."""

    own_pid: int
    #: PostgreSQL backend pid -> pid of the client process holding the connection (None: unknown)
    backend_client: dict[int, int | None] = field(default_factory=dict)
    tasks: dict[str, TaskCpu] = field(default_factory=lambda: defaultdict(TaskCpu))
    roles: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    backends_of_tasks: set[int] = field(default_factory=set)
    _last: dict[int, Proc] = field(default_factory=dict)
    _task_of_pid: dict[int, str] = field(default_factory=dict)
    _started: bool = False

    def observe(self, procs: Iterable[Proc]) -> None:
        now = {p.pid: p for p in procs}
        tasks_by_parent: dict[int, str] = {}
        for p in now.values():
            if (ti := task_id_of(p.title)) is not None:
                self._task_of_pid.setdefault(p.pid, ti)
                tasks_by_parent[p.ppid] = ti
        if not self._started:
            # what ran before the measurement is not the measurement's
            self._last, self._started = now, True
            return
        held: dict[int, Proc | None] = {}
        for p in now.values():
            before = self._last.get(p.pid)
            if p.pid not in self.backend_client and BACKEND_TITLE.match(p.title):
                held[p.pid] = before  # its client not known yet: its CPU waits for the match
                continue
            delta = p.cpu - before.cpu if before is not None else p.cpu
            if delta <= 0:
                continue
            ti = self._task_of_pid.get(p.pid)
            if ti is not None:
                self.tasks[ti].task += delta
            elif p.pid in tasks_by_parent:
                self.tasks[tasks_by_parent[p.pid]].supervisor += delta
            elif p.pid in self.backend_client:
                client = self.backend_client[p.pid]
                client_ti = self._task_of_pid.get(client) if client is not None else None
                if client_ti is not None:
                    self.tasks[client_ti].store += delta
                    self.backends_of_tasks.add(p.pid)
                elif client == self.own_pid:
                    self.roles["benchmark"] += delta
                else:
                    self.roles["postgres (other connections)"] += delta
            else:
                self.roles[role_of(p, self.own_pid)] += delta
        # after the booking: a backend still finishing for a task process that just exited is the task's
        self._reap(now)
        self._last = dict(now)
        for pid, before in held.items():
            if before is None:
                del self._last[pid]
            else:
                self._last[pid] = before

    def _reap(self, now: Mapping[int, Proc]) -> None:
        """A task process gone since the last look: its parent reaped it, so the parent's children
        CPU grew by the child's lifetime total; book the part after the last look."""
        for pid, ti in list(self._task_of_pid.items()):
            if pid in now:
                continue
            gone = self._last.get(pid)
            if gone is not None and gone.ppid in now and gone.ppid in self._last:
                lifetime = now[gone.ppid].children_cpu - self._last[gone.ppid].children_cpu
                tail = lifetime - gone.cpu
                if 0 < tail < 60:  # anything else: not this child alone (or not reaped yet)
                    self.tasks[ti].task += tail
            del self._task_of_pid[pid]

    def booked(self) -> float:
        return sum(t.task + t.store + t.supervisor for t in self.tasks.values()) + sum(self.roles.values())


def task_id_of(title: str) -> str | None:
    m = TASK_TITLE.search(title)
    return m.group(1) if m else None


def role_of(p: Proc, own_pid: int) -> str:
    title = p.title
    if p.pid == own_pid:
        return "benchmark"
    if "adobe_emulator" in title:
        return "emulator"
    if "smtp_sink" in title:
        return "smtp sink"
    if BACKEND_TITLE.match(title):
        return "postgres (other connections)"
    if title.startswith("postgres") or "/postgres " in title or title.endswith("/postgres"):
        return "postgres (background)"
    if "airflow" in title:
        return "airflow"
    return "other"


# -- the live sampler ----------------------------------------------------------------------------------------
def read_procs() -> list[Proc]:
    import psutil

    out = []
    for proc in psutil.process_iter(["pid", "ppid", "cmdline", "name", "cpu_times"]):
        info = proc.info
        times = info.get("cpu_times")
        if times is None:
            continue
        title = " ".join(info.get("cmdline") or []) or (info.get("name") or "")
        out.append(Proc(pid=info["pid"], ppid=info.get("ppid") or 0, title=title, cpu=times.user + times.system,
                        children_cpu=times.children_user + times.children_system))
    return out


def backend_clients(query_activity: Callable[[], list[tuple[int, int | None]]], server_port: int,
                    candidates: Iterable[int]) -> dict[int, int | None]:
    """PostgreSQL backend pid -> client pid among ``candidates`` (None: another client, or a
    connection without a port), for the server's TCP connections: the backend's client port
    (``pg_stat_activity``) is the local port of the client's socket to ``server_port``. Only the
    candidates' sockets are read: scanning every process's descriptors on each look would cost the
    measurement more than what it measures."""
    import psutil

    by_port: dict[int, int] = {}
    for pid in candidates:
        try:
            sockets = psutil.Process(pid).net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for conn in sockets:
            if conn.raddr and conn.raddr.port == server_port and conn.laddr:
                by_port[conn.laddr.port] = pid
    return {backend: by_port.get(port) if port else None for backend, port in query_activity()}


#: looks a backend may go unmatched (not yet in pg_stat_activity) before it is booked as another client's
MATCH_TRIES = 3


class TaskCpuSampler(threading.Thread):
    """Looks every ``interval`` seconds until :meth:`stop`; ``server_url`` is the store's
    PostgreSQL server (its connections are matched to their clients)."""

    def __init__(self, server_url: str | None, interval: float = 0.5) -> None:
        super().__init__(name="task-cpu", daemon=True)
        import os

        self.interval = interval
        self.attribution = Attribution(own_pid=os.getpid())
        self._stop_event = threading.Event()
        self._engine: Any = None
        self._server_port = 5432
        self.looks = 0
        self.failed_looks = 0
        self._misses: dict[int, int] = {}
        if server_url:
            from sqlalchemy import create_engine
            from sqlalchemy.engine import make_url

            url = make_url(server_url)
            self._server_port = url.port or 5432
            self._engine = create_engine(url, pool_size=1, max_overflow=0)

    def _activity(self) -> list[tuple[int, int | None]]:
        from sqlalchemy import text

        with self._engine.connect() as conn:
            return [(int(pid), port) for pid, port in conn.execute(text(
                "SELECT pid, client_port FROM pg_stat_activity WHERE client_port IS NOT NULL"))]

    def look(self) -> None:
        procs = read_procs()
        if self._engine is not None:
            unknown = [p.pid for p in procs if BACKEND_TITLE.match(p.title) and p.pid not in self.attribution.backend_client]
            if unknown:
                candidates = [p.pid for p in procs if task_id_of(p.title) is not None] + [self.attribution.own_pid]
                found = backend_clients(self._activity, self._server_port, candidates)
                for pid in unknown:
                    if found.get(pid) is not None:
                        self.attribution.backend_client[pid] = found[pid]
                        continue
                    # not a candidate's, or not in pg_stat_activity yet (just forked) or ever (another
                    # server's backend): asked again a few looks, then booked as another client's
                    self._misses[pid] = self._misses.get(pid, 0) + 1
                    if self._misses[pid] >= MATCH_TRIES:
                        self.attribution.backend_client[pid] = None
        self.attribution.observe(procs)
        self.looks += 1

    def run(self) -> None:
        while not self._stop_event.is_set():
            started = time.monotonic()
            try:
                self.look()
            except Exception:  # a failed look is skipped (counted): the next one books the delta
                self.failed_looks += 1
            self._stop_event.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> Attribution:
        self._stop_event.set()
        self.join(timeout=30)
        try:
            self.look()
        finally:
            if self._engine is not None:
                self._engine.dispose()
        return self.attribution


# -- the report ----------------------------------------------------------------------------------------------
def per_stage(attribution: Attribution, task_of_ti: Mapping[str, str], triggers: int) -> dict[str, Any]:
    """CPU seconds per stage (task id) and per 1,000 triggers: the task processes, their store
    backends (together: the project's CPU) and their supervisors (Airflow's per-task cost)."""
    per: dict[str, dict[str, float]] = {}
    unknown = TaskCpu()
    for ti, cpu in attribution.tasks.items():
        task_id = task_of_ti.get(ti)
        if task_id is None:
            unknown.task += cpu.task
            unknown.store += cpu.store
            unknown.supervisor += cpu.supervisor
            continue
        entry = per.setdefault(task_id, {"instances": 0, "task_s": 0.0, "store_s": 0.0, "supervisor_s": 0.0})
        entry["instances"] += 1
        entry["task_s"] += cpu.task
        entry["store_s"] += cpu.store
        entry["supervisor_s"] += cpu.supervisor
    k = max(triggers, 1) / 1000
    for entry in per.values():
        entry["project_per_1000"] = (entry["task_s"] + entry["store_s"]) / k
        entry["supervisor_per_1000"] = entry["supervisor_s"] / k
    return {
        "stages": per,
        "other_task_instances_s": round(unknown.task + unknown.store + unknown.supervisor, 2),
        "roles_s": {role: round(attribution.roles.get(role, 0.0), 2) for role in ROLES},
        "booked_s": round(attribution.booked(), 2),
        "backends_seen": len(attribution.backend_client),
        "backends_of_task_instances": len(attribution.backends_of_tasks),
    }
