"""Airflow with the CeleryExecutor, every component a process of its own: api-server, scheduler,
dag-processor and N ``airflow celery worker`` processes, for the tests and benchmarks that must see
tasks spread over several workers, and a worker die.

    with postgres_metadata_db(pg_server) as metadata_url, celery_stack(
        tmp_path / "airflow", metadata_url=metadata_url, workers=2, env_overrides=conns
    ) as af:
        run_id = af.trigger("trigger_emails", conf={"chunk_size": 6, "max_chunks": 4})
        assert af.wait_run("trigger_emails", run_id) == "success"
        af.kill_worker("w1")  # the whole process tree, as a lost machine

:class:`CeleryStack` is a :class:`devstack.airflow_stack.Stack` (same REST helpers: ``trigger``,
``wait_run``, ``task_instances``, ``task_tries``...) whose processes are the components above.
What differs from ``airflow standalone`` (devstack.airflow_stack), and why:

* The metadata DB must be PostgreSQL (Airflow refuses the CeleryExecutor on SQLite); the Celery
  result backend gets a fresh database of its own on the same server (dropped on exit). The broker
  is Redis (:func:`devstack.ensure_redis.ensure_redis` starts the local server when it is down).
* Each stack sends its tasks to a queue of its own (``[operators] default_queue``, the workers'
  ``--queues``) and its workers have hostnames of their own: a stack never takes another stack's
  tasks from a shared Redis, and a message a killed worker never acknowledged (it stays in Redis
  until the visibility timeout, 24 h) can only ever be restored into a queue nobody reads. The
  stack's queue is deleted from Redis on exit.
* The ``hostname`` Airflow records on a task instance is the Celery worker's hostname
  (``w1-<id>@<host>``): ``[core] hostname_callable`` is :func:`worker_hostname`, which reads it from
  the worker's environment. Airflow's default, the machine's FQDN, is the same for every worker of
  one machine, so a test could not tell which worker ran a task.
* Workers run with ``--skip-serve-logs``: each would otherwise start a log server on the same port
  (``[logging] worker_log_server_port``). Task logs are files under ``home/logs``, shared by all.
* One ``[api_auth] jwt_secret`` (:func:`devstack.airflow_stack.stack_env`, 64 bytes) in every
  process: the api-server signs the task tokens the workers present. ``[core]
  execution_api_server_url`` points at the api-server.
* ``heartbeat_timeout_s``: how soon the scheduler fails the task instances of a dead worker
  (``[scheduler] task_instance_heartbeat_timeout``, default 300 s) so that Airflow retries them on a
  live one; with it, task supervisors heartbeat every second (``[workers] min_heartbeat_interval``).

Every component is started in its own session (process group) and logs to ``home/<name>.log``. On
exit — also after a failure — every group gets SIGTERM, then SIGKILL after 15 s, and every
process ever seen in the stack's trees that still lives (task processes run in process groups of
their own) is killed by pid.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from devstack.airflow_stack import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    DEFAULT_POOLS,
    HEALTH_TIMEOUT_S,
    PROJECT_ROOT,
    STOP_TIMEOUT_S,
    AirflowStackError,
    Stack,
    _run_checked,
    _tail,
    free_port,
    stack_env,
    wait_until_healthy,
)
from devstack.ensure_redis import broker_url, ensure_redis

DEFAULT_PG_SERVER_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
DEFAULT_WORKER_CONCURRENCY = 2
#: the environment variable :func:`worker_hostname` reads (set per worker process)
WORKER_HOSTNAME_ENV = "TRIGGERFLOW_WORKER_HOSTNAME"
#: Python distributions the CeleryExecutor needs beside the project's requirements
CELERY_DISTRIBUTIONS = ("apache-airflow-providers-celery", "celery", "redis", "asyncpg")
SERVERS = ("api-server", "scheduler", "dag-processor")
RSS_SAMPLE_INTERVAL_S = 1.0


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the stack: the Celery hostname of the worker this process
    runs under (its task supervisors and task processes inherit the variable), else the FQDN as
    Airflow's default does."""
    return os.environ.get(WORKER_HOSTNAME_ENV) or socket.getfqdn()


def pg_server_url() -> str:
    """The PostgreSQL server the tests use (the one bin/test's PostgreSQL pass uses)."""
    return os.environ.get("TRIGGERFLOW_TEST_PG_URL") or DEFAULT_PG_SERVER_URL


# -- what the stack needs on the machine ----------------------------------------------------------
def missing_distributions() -> list[str]:
    """The :data:`CELERY_DISTRIBUTIONS` not installed in this Python."""
    missing = []
    for name in CELERY_DISTRIBUTIONS:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def ensure_services(pg_url: str, redis_url: str) -> str | None:
    """None when this machine can run a Celery stack (packages, PostgreSQL, Redis — the servers
    are started when they are down), else the reason it cannot."""
    missing = missing_distributions()
    if missing:
        return f"not installed: {', '.join(missing)} (the CeleryExecutor's packages)"
    from devstack.ensure_postgres import main as ensure_postgres

    if ensure_postgres([pg_url]) != 0:
        return f"PostgreSQL {pg_url} could not be reached or started"
    return ensure_redis(redis_url)


# -- the stack -----------------------------------------------------------------------------------
@dataclass
class CeleryWorker:
    name: str
    hostname: str
    process: subprocess.Popen[bytes]
    log_path: Path
    killed: bool = False


@dataclass
class CeleryStack(Stack):
    """A running stack (module doc); ``process``/``log_path`` are the scheduler's."""

    servers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    server_logs: dict[str, Path] = field(default_factory=dict)
    workers: dict[str, CeleryWorker] = field(default_factory=dict)
    queue: str = ""
    broker: str = ""
    worker_concurrency: int = DEFAULT_WORKER_CONCURRENCY
    #: largest summed RSS of all the stack's processes seen so far (sampled every second)
    peak_rss_bytes: int = 0
    #: every process seen in the stack's trees, by pid (killed on exit if still alive)
    seen: dict[int, Any] = field(default_factory=dict)

    def hostnames(self) -> dict[str, str]:
        """{worker name: the hostname its task instances record}."""
        return {name: w.hostname for name, w in self.workers.items()}

    def worker_by_hostname(self, hostname: str) -> CeleryWorker:
        for worker in self.workers.values():
            if worker.hostname == hostname:
                return worker
        raise KeyError(f"no worker of this stack has hostname {hostname!r} ({self.hostnames()})")

    # -- processes -------------------------------------------------------------------------------
    def _live(self) -> list[tuple[str, subprocess.Popen[bytes], Path]]:
        items = [(name, proc, self.server_logs[name]) for name, proc in self.servers.items()]
        items += [(f"worker {w.name}", w.process, w.log_path) for w in self.workers.values() if not w.killed]
        return items

    def _check_alive(self) -> None:
        for name, proc, log in self._live():
            if proc.poll() is not None:
                raise AirflowStackError(f"{name} exited with {proc.returncode}; log {log}:\n{_tail(log)}")

    def processes(self) -> list[Any]:
        """Every live process of the stack: the components and all their descendants."""
        import psutil

        found: dict[int, Any] = {}
        for _, proc, _ in self._live():
            try:
                root = psutil.Process(proc.pid)
                for p in [root, *root.children(recursive=True)]:
                    found[p.pid] = p
            except psutil.NoSuchProcess:
                continue
        return list(found.values())

    def worker_processes(self, name: str) -> list[Any]:
        """The worker's process tree: the Celery main process, its pool processes (each a task
        supervisor while it runs a task) and their task processes."""
        import psutil

        try:
            root = psutil.Process(self.workers[name].process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL worker ``name`` as a lost machine would lose it: the whole tree at once — the
        Celery main process, the pool processes and the task processes (which Airflow puts in
        process groups of their own: killing only the worker's group would leave a task process
        running, and sending, with nobody to report to). Returns the pids killed."""
        import psutil

        worker = self.workers[name]
        # Freeze the tree first (a stopped process cannot fork), until a listing finds nothing
        # new: no task process started between the listing and the kill escapes it.
        frozen: dict[int, Any] = {}
        while fresh := [p for p in self.worker_processes(name) if p.pid not in frozen]:
            for proc in fresh:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGSTOP)
                frozen[proc.pid] = proc
        tree = list(frozen.values())
        for proc in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait(timeout=10)  # our child: reaped here
        worker.killed = True
        # The others are orphans now, reaped by whoever adopted them: gone or zombies is dead.
        deadline = time.monotonic() + 10
        for proc in tree[1:]:
            while time.monotonic() < deadline:
                try:
                    if proc.status() == psutil.STATUS_ZOMBIE:
                        break
                except psutil.NoSuchProcess:
                    break
                time.sleep(0.05)
        return [p.pid for p in tree]

    def log_tail(self, lines: int = 60) -> str:
        parts = [f"== {name} ({log})\n{_tail(log, lines)}" for name, _, log in self._live()]
        parts += [f"== worker {w.name} (killed) ({w.log_path})\n{_tail(w.log_path, 20)}" for w in self.workers.values() if w.killed]
        return "\n".join(parts)


def celery_env(
    home: Path,
    api_port: int,
    *,
    metadata_url: str,
    result_backend_url: str,
    broker: str,
    queue: str,
    worker_concurrency: int,
    heartbeat_timeout_s: int | None,
    env_overrides: Mapping[str, str] | None,
) -> dict[str, str]:
    """The environment of every process of the stack (:func:`stack_env` + the Celery settings)."""
    env = stack_env(home, api_port, None, metadata_url=metadata_url)
    env.update({
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname",
        "AIRFLOW__CELERY__BROKER_URL": broker,
        # Celery's database backend takes a SQLAlchemy URL behind "db+"
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{result_backend_url}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(worker_concurrency),
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
    })
    if heartbeat_timeout_s is not None:
        env.update({
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(heartbeat_timeout_s),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
        })
    env.update({k: str(v) for k, v in (env_overrides or {}).items()})
    return env


def _popen(cmd: list[str], env: Mapping[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, cwd=PROJECT_ROOT, env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, stopped as one
    )


@contextlib.contextmanager
def celery_stack(
    home: Path,
    *,
    metadata_url: str,
    workers: int = 2,
    worker_concurrency: int = DEFAULT_WORKER_CONCURRENCY,
    env_overrides: Mapping[str, str] | None = None,
    broker: str | None = None,
    result_backend_url: str | None = None,
    api_port: int | None = None,
    pools: Mapping[str, int] | None = None,
    heartbeat_timeout_s: int | None = None,
    health_timeout: float = HEALTH_TIMEOUT_S,
) -> Iterator[CeleryStack]:
    """Run the stack of the module doc under ``home`` for the block.

    ``metadata_url``: an empty PostgreSQL database (:func:`devstack.airflow_stack.postgres_metadata_db`).
    ``result_backend_url``: Celery's result backend (SQLAlchemy URL); by default a fresh database
    on the metadata DB's server, dropped on exit. ``broker``: Redis URL (default :func:`broker_url`;
    it must answer: see :func:`ensure_services`). Workers are named ``w1`` .. ``wN``.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(3)
    broker = broker or broker_url()
    with contextlib.ExitStack() as cleanup:
        if result_backend_url is None:
            from sqlalchemy.engine import make_url

            from devstack.ensure_postgres import scratch_database

            server = make_url(metadata_url).set(database="postgres").render_as_string(hide_password=False)
            result_backend_url = cleanup.enter_context(scratch_database(server, prefix="af_celery", store=False))
        yield cleanup.enter_context(_running_stack(
            home, token=token, metadata_url=metadata_url, result_backend_url=result_backend_url, broker=broker,
            workers=workers, worker_concurrency=worker_concurrency, env_overrides=env_overrides, api_port=api_port,
            pools=pools, heartbeat_timeout_s=heartbeat_timeout_s, health_timeout=health_timeout,
        ))


@contextlib.contextmanager
def _running_stack(
    home: Path,
    *,
    token: str,
    metadata_url: str,
    result_backend_url: str,
    broker: str,
    workers: int,
    worker_concurrency: int,
    env_overrides: Mapping[str, str] | None,
    api_port: int | None,
    pools: Mapping[str, int] | None,
    heartbeat_timeout_s: int | None,
    health_timeout: float,
) -> Iterator[CeleryStack]:
    (home / "passwords.json").write_text(json.dumps({ADMIN_USER: ADMIN_PASSWORD}), encoding="utf-8")
    port = api_port or free_port()
    queue = f"triggerflow-{token}"
    env = celery_env(home, port, metadata_url=metadata_url, result_backend_url=result_backend_url, broker=broker,
                     queue=queue, worker_concurrency=worker_concurrency, heartbeat_timeout_s=heartbeat_timeout_s,
                     env_overrides=env_overrides)
    logs: list[IO[bytes]] = []
    started: list[subprocess.Popen[bytes]] = []  # stopped on exit whatever failed after their start
    seen: dict[int, Any] = {}
    stack: CeleryStack | None = None
    stop_sampling = threading.Event()
    sampler: threading.Thread | None = None

    def open_log(name: str) -> Path:
        path = home / f"{name}.log"
        logs.append(open(path, "ab"))  # noqa: SIM115 - closed in the finally below, once every process stopped
        return path

    def start(name: str, cmd: list[str], proc_env: Mapping[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
        path = open_log(name)
        started.append(_popen(cmd, proc_env, logs[-1]))
        return started[-1], path

    try:
        migrate_log = open_log("db-migrate")
        _run_checked([sys.executable, "-m", "airflow", "db", "migrate"], env, logs[-1], "airflow db migrate", migrate_log)
        servers: dict[str, subprocess.Popen[bytes]] = {}
        server_logs: dict[str, Path] = {}
        for name in SERVERS:
            servers[name], server_logs[name] = start(name, [sys.executable, "-m", "airflow", name], env)
        stack = CeleryStack(
            home=home, api_port=port, process=servers["scheduler"], log_path=server_logs["scheduler"], env=env,
            servers=servers, server_logs=server_logs, queue=queue, broker=broker, worker_concurrency=worker_concurrency,
            seen=seen,
        )
        host = socket.gethostname()
        for i in range(1, workers + 1):
            name = f"w{i}"
            hostname = f"{name}-{token}@{host}"
            cmd = [sys.executable, "-m", "airflow", "celery", "worker", "--celery-hostname", hostname,
                   "--queues", queue, "--concurrency", str(worker_concurrency), "--skip-serve-logs"]
            proc, path = start(f"worker-{name}", cmd, {**env, WORKER_HOSTNAME_ENV: hostname})
            stack.workers[name] = CeleryWorker(name, hostname, proc, path)
        sampler = threading.Thread(target=_sample, args=(stack, stop_sampling), daemon=True, name="celery-stack-rss")
        sampler.start()
        _wait_ready(stack, health_timeout)
        stack.ensure_pools(DEFAULT_POOLS if pools is None else pools)
        yield stack
    finally:
        stop_sampling.set()
        if sampler is not None:
            sampler.join(timeout=5)
        if stack is not None:
            _record(stack)
        _stop(started, seen)
        if started:
            _purge_queue(broker, queue, home / "scheduler.log")
        for fh in logs:
            fh.close()


def _record(stack: CeleryStack) -> int:
    """Remember every process of the stack's trees (for the kill on exit); their summed RSS."""
    import psutil

    total = 0
    for proc in stack.processes():
        stack.seen.setdefault(proc.pid, proc)
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            total += proc.memory_info().rss
    return total


def _sample(stack: CeleryStack, stop: threading.Event) -> None:
    while not stop.wait(RSS_SAMPLE_INTERVAL_S):
        # a process can vanish between listing and reading it: psutil raises, the next turn recounts
        with contextlib.suppress(Exception):
            stack.peak_rss_bytes = max(stack.peak_rss_bytes, _record(stack))


def _wait_ready(stack: CeleryStack, timeout: float) -> None:
    """Until the API answers with a healthy metadata DB, scheduler and dag-processor, and every
    worker has logged that it is ready (connected to the broker, consuming its queue)."""
    wait_until_healthy(
        stack, timeout, components=("metadatabase", "scheduler", "dag_processor"),
        not_ready=lambda: [w.name for w in stack.workers.values() if f"{w.hostname} ready." not in _tail(w.log_path, 400)],
        what="celery stack",
    )


def _stop(procs: list[subprocess.Popen[bytes]], seen: Mapping[int, Any]) -> None:
    """SIGTERM every component's group at once, SIGKILL what is left after STOP_TIMEOUT_S, then
    kill by pid every process ever seen that still lives (task processes, own groups)."""
    import psutil

    live = [proc for proc in procs if proc.poll() is None]  # not a killed worker's group again
    for proc in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for proc in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    for proc in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT_S)
    alive = []
    for proc in seen.values():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                proc.kill()
                alive.append(proc)
    psutil.wait_procs(alive, timeout=5)


def _purge_queue(broker: str, queue: str, log_path: Path) -> None:
    """Delete the stack's queue from Redis, and the unacknowledged messages of a killed worker
    (kombu keeps them in the ``unacked`` hash for the visibility timeout, then restores them)."""
    import redis

    try:
        client = redis.Redis.from_url(broker, socket_connect_timeout=2, socket_timeout=5)
        with contextlib.closing(client):
            # the queue (and its priority lists) and its bindings (_kombu.binding[_permanent].<queue>)
            keys = [*client.scan_iter(match=f"{queue}*"), *client.scan_iter(match=f"_kombu.binding*.{queue}")]
            if keys:
                client.delete(*keys)
            for tag, payload in client.hscan_iter("unacked"):
                with contextlib.suppress(ValueError, TypeError, IndexError):
                    if json.loads(payload)[-1] == queue:  # [message, exchange, routing key]
                        client.hdel("unacked", tag)
                        client.zrem("unacked_index", tag)
    except redis.RedisError as exc:
        # the stack is down either way; leftovers sit in a queue no stack ever reads again
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"celery_stack: could not purge queue {queue} from {broker}: {exc}\n")
