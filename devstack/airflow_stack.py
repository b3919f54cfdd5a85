"""A real Airflow (``airflow standalone``: scheduler + LocalExecutor, dag-processor, API server,
triggerer) for tests that need what ``dag.test()`` does not do: task processes that can be
killed, retries with their delay, the REST API.

    with airflow_standalone(tmp_path / "airflow", env_overrides={"AIRFLOW_CONN_…": json}) as af:
        run_id = af.trigger("trigger_emails", conf={"chunk_size": 10})
        assert af.wait_run("trigger_emails", run_id, timeout=90) == "success"

What it sets up, under ``home`` (a fresh ``AIRFLOW_HOME``):

* the project's ``dags/`` and ``plugins/``, no examples, new DAGs paused (``trigger`` unpauses);
* ``[scheduler] use_job_schedule = False``: only runs the test triggers are created, so a
  minute-scheduled DAG does not start runs of its own between the test's steps;
* SQLite metadata DB (30 s busy timeout; or ``metadata_url``, e.g. a fresh PostgreSQL database
  from :func:`postgres_metadata_db`), LocalExecutor, SimpleAuthManager with user ``admin`` / password ``admin``
  (a passwords file), a fixed JWT secret shared by every component, a free API port (the
  execution API URL follows it), short scheduler heartbeats and DAG-folder refresh;
* the pools the project's DAGs use (``smtp_sessions``), created through the REST API;
* connection ``airflow_metadata`` = the metadata DB's URL (``airflow db clean`` in
  trigger_maintenance needs it: Airflow 3 hides ``sql_alchemy_conn`` from task processes);
* other connections only from ``AIRFLOW_CONN_*`` entries of ``env_overrides`` (JSON form): inherited
  ``AIRFLOW_CONN_*`` and ``AIRFLOW__*`` variables of the calling process are dropped, so a test
  runner's own Airflow settings cannot leak in.

Output of every component goes to ``home/standalone.log``. On exit the standalone process group
gets SIGTERM, then SIGKILL; task processes (Airflow puts each in its own process group) that are
still alive are killed by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import requests

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin"
HEALTH_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
DEFAULT_POOLS = {"smtp_sessions": 4}
# Every component of the stack opens the SQLite metadata DB with this (``[database]
# sql_alchemy_connect_args`` names it by import path): a 30 s busy timeout instead of sqlite3's
# 5 s, so a writer waits out the scheduler's write transactions instead of failing with
# "database is locked" (the API server turns that into a 503, e.g. on POST /backfills).
SQLITE_METADATA_CONNECT_ARGS: dict[str, Any] = {"timeout": 30}
TERMINAL_RUN_STATES = ("success", "failed")


class AirflowStackError(RuntimeError):
    """The standalone stack did not start or answered an API call with an error."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<log unavailable: {exc}>"


def stack_env(
    home: Path, api_port: int, env_overrides: Mapping[str, str] | None = None, *, metadata_url: str | None = None
) -> dict[str, str]:
    """The environment of every Airflow process of the stack."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("AIRFLOW__") or k.startswith("AIRFLOW_CONN_") or k.startswith("AIRFLOW_VAR_"))
    }
    # `airflow standalone` starts its components as `airflow <cmd>` through PATH.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url or f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            # Only runs the test creates: no scheduled runs of minute DAGs in between.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            # Two stacks on one machine (tests run in parallel) must not both bind the default
            # log-server ports: each stack serves its task and trigger logs on free ones.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "GX_ANALYTICS_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
        }
    )
    # trigger_maintenance's clean_metadata runs `airflow db clean`, and task processes do not see
    # sql_alchemy_conn in Airflow 3: the metadata URL reaches it as a connection (metadata_clean).
    env["AIRFLOW_CONN_AIRFLOW_METADATA"] = json.dumps(
        {"conn_type": "generic", "extra": {"sqlalchemy_url": env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]}}
    )
    if metadata_url is None:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"] = "devstack.airflow_stack.SQLITE_METADATA_CONNECT_ARGS"
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC"] = "devstack.airflow_stack.SQLITE_METADATA_CONNECT_ARGS"
    env.update({k: str(v) for k, v in (env_overrides or {}).items()})
    return env


@contextlib.contextmanager
def postgres_metadata_db(server_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database on ``server_url`` for Airflow's metadata (dropped on
    exit): pass it as ``airflow_standalone(..., metadata_url=...)``. Use it for backfills: Airflow
    refuses to create them on SQLite under concurrent access (503 "Database is locked" whenever
    the scheduler commits between the request's read and its write)."""
    from devstack.ensure_postgres import scratch_database

    with scratch_database(server_url, prefix="af_meta", store=False) as url:
        yield url


@dataclass
class Stack:
    home: Path
    api_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]
    session: requests.Session = field(default_factory=requests.Session)
    _token: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    # -- REST ----------------------------------------------------------------------------------
    def token(self) -> str:
        """A JWT for the admin user (``POST /auth/token``), cached."""
        if self._token is None:
            response = self.session.post(
                f"{self.base_url}/auth/token",
                json={"username": ADMIN_USER, "password": ADMIN_PASSWORD},
                timeout=30,
            )
            if response.status_code not in (200, 201):
                raise AirflowStackError(f"POST /auth/token -> {response.status_code}: {response.text[:500]}")
            self._token = str(response.json()["access_token"])
        return self._token

    def api(
        self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201), busy_retries: int | None = None, **kwargs: Any
    ) -> Any:
        """Call ``/api/v2{path}`` as admin; JSON answer, or AirflowStackError.

        A 401 mints a new token once. A 503 ("Database is locked" on the SQLite metadata DB) is
        retried ``busy_retries`` times, 1 s apart; by default 10 times for every method except
        POST, which is not retried: a 503 can come after part of the request was committed
        (``POST /backfills`` then answers 409 "already a running backfill" to the retry).
        """
        if busy_retries is None:
            busy_retries = 0 if method.upper() == "POST" else 10
        kwargs.setdefault("timeout", 30)
        extra_headers = kwargs.pop("headers", {})
        url = f"{self.base_url}/api/v2{path}"
        refreshed = False
        busy = 0
        while True:
            headers = {"Authorization": f"Bearer {self.token()}", **extra_headers}
            response = self.session.request(method, url, headers=headers, **kwargs)
            if response.status_code == 401 and not refreshed:
                self._token = None  # expired: mint a new one once
                refreshed = True
                continue
            if response.status_code == 503 and busy < busy_retries:
                busy += 1
                time.sleep(1)
                continue
            break
        if response.status_code not in ok:
            raise AirflowStackError(f"{method} {path} -> {response.status_code}: {response.text[:1000]}")
        return response.json() if response.content else None

    def wait_dag(self, dag_id: str, timeout: float = 90.0) -> dict[str, Any]:
        """Wait until the dag processor has parsed and serialised ``dag_id``."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                return self.api("GET", f"/dags/{dag_id}")
            except AirflowStackError as exc:
                last = str(exc)
            time.sleep(1)
        errors = self.api("GET", "/importErrors")
        raise AirflowStackError(f"DAG {dag_id} not parsed after {timeout:.0f} s ({last}); import errors: {errors}")

    def unpause(self, dag_id: str) -> None:
        self.wait_dag(dag_id)
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def ensure_pools(self, pools: Mapping[str, int]) -> None:
        for name, slots in pools.items():
            body = {"name": name, "slots": int(slots), "description": "created by devstack.airflow_stack",
                    "include_deferred": False}
            try:
                self.api("POST", "/pools", json=body)
            except AirflowStackError:
                self.api("PATCH", f"/pools/{name}", json=body)

    def trigger(
        self, dag_id: str, conf: Mapping[str, Any] | None = None, logical_date: datetime | str | None = None
    ) -> str:
        """Unpause ``dag_id`` and create a manual run; returns its run id.

        ``logical_date`` is a required key of the request body that may be null (Airflow 3: a
        manual run without a logical date and without a data interval).
        """
        self.unpause(dag_id)
        if isinstance(logical_date, datetime):
            logical_date = logical_date.isoformat()
        body = {"logical_date": logical_date, "conf": dict(conf or {})}
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", json=body)
        return str(run["dag_run_id"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 120.0) -> str:
        """Poll until the run is ``success`` or ``failed``; return the state. TimeoutError with
        the task states and the log tail otherwise."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            self._check_alive()
            state = self.run(dag_id, run_id)["state"]
            if state in TERMINAL_RUN_STATES:
                return str(state)
            time.sleep(0.5)
        tis = [(t["task_id"], t.get("map_index"), t.get("try_number"), t.get("state")) for t in self.task_instances(dag_id, run_id)]
        raise TimeoutError(
            f"run {run_id} still {state} after {timeout:.0f} s; tasks {tis}\n{_tail(self.log_path)}"
        )

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run (mapped ones per map index), with ``try_number`` and
        ``state``."""
        answer = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
        return list(answer["task_instances"])

    def task_tries(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict[str, Any]]:
        """The tries of one task instance (``/tries``): one entry per try, with its state."""
        answer = self.api(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/tries"
        )
        return list(answer["task_instances"])

    # -- processes -----------------------------------------------------------------------------
    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AirflowStackError(
                f"airflow standalone exited with {self.process.returncode}; log {self.log_path}:\n{_tail(self.log_path)}"
            )

    def processes(self) -> list[Any]:
        """The standalone process and all its descendants (psutil.Process objects)."""
        import psutil

        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def processes_connected_to(self, port: int, host: str = "127.0.0.1") -> list[Any]:
        """Processes of this stack holding an established TCP connection to ``host:port``."""
        import psutil

        found = []
        for proc in self.processes():
            try:
                conns = proc.net_connections(kind="tcp")
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if any(c.raddr and c.raddr.port == port and c.raddr.ip == host and c.status == psutil.CONN_ESTABLISHED for c in conns):
                found.append(proc)
        return found

    def task_processes_connected_to(self, port: int, host: str = "127.0.0.1") -> list[Any]:
        """The task processes (``airflow worker -- <ti>``, not their LocalExecutor supervisors)
        holding an established TCP connection to ``host:port``: a send task's SMTP session."""
        found = []
        for proc in self.processes_connected_to(port, host):
            try:
                cmdline = " ".join(proc.cmdline())
            except Exception:  # gone meanwhile
                continue
            if cmdline.startswith("airflow worker --") and "LocalExecutor" not in cmdline:
                found.append(proc)
        return found

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)


def _run_checked(cmd: list[str], env: dict[str, str], log: IO[bytes], what: str, log_path: Path) -> None:
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        log.flush()
        raise AirflowStackError(f"{what} failed with exit code {proc.returncode}; log {log_path}:\n{_tail(log_path)}")


def _stop(stack_process: subprocess.Popen[bytes], known: list[Any]) -> None:
    import psutil

    pgid = stack_process.pid  # started with start_new_session: pid == process group id
    if stack_process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            stack_process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        stack_process.wait(timeout=STOP_TIMEOUT_S)
    # Task supervisors and task processes run in process groups of their own.
    alive = []
    for proc in known:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                proc.terminate()
                alive.append(proc)
    _, still = psutil.wait_procs(alive, timeout=5)
    for proc in still:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.kill()


@contextlib.contextmanager
def airflow_standalone(
    home: Path,
    *,
    env_overrides: Mapping[str, str] | None = None,
    api_port: int | None = None,
    pools: Mapping[str, int] | None = None,
    health_timeout: float = HEALTH_TIMEOUT_S,
    metadata_url: str | None = None,
) -> Iterator[Stack]:
    """Run ``airflow standalone`` under ``home`` for the duration of the block (see module doc).

    ``metadata_url``: Airflow's metadata DB (default SQLite ``home/airflow.db``); an empty
    PostgreSQL database from :func:`postgres_metadata_db` for backfills or a production-like run.
    """
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    (home / "passwords.json").write_text(json.dumps({ADMIN_USER: ADMIN_PASSWORD}), encoding="utf-8")
    port = api_port or free_port()
    env = stack_env(home, port, env_overrides, metadata_url=metadata_url)
    log_path = home / "standalone.log"
    log_fh = open(log_path, "ab")  # noqa: SIM115 - closed in the finally below, once the stack stopped
    process: subprocess.Popen[bytes] | None = None
    seen: dict[int, Any] = {}
    try:
        _run_checked([sys.executable, "-m", "airflow", "db", "migrate"], env, log_fh, "airflow db migrate", log_path)
        process = subprocess.Popen(
            [sys.executable, "-m", "airflow", "standalone"],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group
        )
        stack = Stack(home=home, api_port=port, process=process, log_path=log_path, env=env)
        _wait_healthy(stack, health_timeout)
        stack.ensure_pools(DEFAULT_POOLS if pools is None else pools)
        yield stack
    finally:
        if process is not None:
            with contextlib.suppress(Exception):
                for proc in Stack(home=home, api_port=port, process=process, log_path=log_path, env=env).processes():
                    seen[proc.pid] = proc
            _stop(process, list(seen.values()))
        log_fh.close()


def _wait_healthy(stack: Stack, timeout: float) -> None:
    """Wait for /api/v2/monitor/health to answer 200 with a healthy scheduler."""
    wait_until_healthy(stack, timeout, what="airflow standalone")


def wait_until_healthy(
    stack: Stack,
    timeout: float,
    *,
    components: tuple[str, ...] = ("metadatabase", "scheduler"),
    not_ready: Callable[[], list[str]] = list,
    what: str,
) -> None:
    """Wait until /api/v2/monitor/health answers 200 with ``components`` healthy and
    ``not_ready()`` (the caller's own readiness check, e.g. workers that have not logged in) is
    empty; raise AirflowStackError naming ``what``, the last answer and the log's tail."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        stack._check_alive()
        try:
            response = requests.get(f"{stack.base_url}/api/v2/monitor/health", timeout=3)
            if response.status_code == 200:
                statuses = {k: (v or {}).get("status") for k, v in response.json().items() if isinstance(v, dict)}
                waiting = not_ready()
                if all(statuses.get(k) == "healthy" for k in components) and not waiting:
                    return
                last = f"200 {statuses}" + (f"; not ready: {waiting}" if waiting else "")
            else:
                last = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            last = exc.__class__.__name__
        time.sleep(1)
    raise AirflowStackError(f"{what} not healthy after {timeout:.0f} s (last: {last}); log {stack.log_path}:\n{stack.log_tail()}")
