"""Make sure the Redis server of a URL answers (the Celery stack's broker); start a local one if it
is down, as devstack.ensure_postgres does for PostgreSQL.

    python -m devstack.ensure_redis redis://127.0.0.1:6379/0

Exit 0 when the server answers, 1 when it cannot be reached or started (the reason is printed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from devstack.airflow_stack import _tail

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"


def broker_url() -> str:
    """The Redis broker: ``TRIGGERFLOW_REDIS_URL``, else the local server on 6379."""
    return os.environ.get("TRIGGERFLOW_REDIS_URL") or DEFAULT_BROKER_URL


def _redis_answers(url: str) -> str | None:
    """None when the Redis server of ``url`` answers PING, else the reason."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
        return None
    except redis.RedisError as exc:
        return f"{exc.__class__.__name__}: {exc}"
    finally:
        client.close()


def ensure_redis(url: str, *, start_timeout: float = 15.0) -> str | None:
    """Make sure the Redis server of ``url`` answers; start a local one when it is down.

    Returns None when it answers, else why not. A server on 127.0.0.1/localhost that does not
    answer is started as the machine starts its own (``redis-server --daemonize yes``, nothing
    kept on disk) on the URL's port and left running, as devstack.ensure_postgres leaves
    PostgreSQL running: it is a machine service, not part of one stack.
    """
    problem = _redis_answers(url)
    if problem is None:
        return None
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return f"Redis at {parts.hostname}:{parts.port} does not answer ({problem})"
    server = shutil.which("redis-server")
    if server is None:
        return f"Redis on {parts.hostname}:{parts.port or 6379} does not answer ({problem}) and redis-server is not installed"
    work = Path(tempfile.mkdtemp(prefix="triggerflow-redis-"))
    port = str(parts.port or 6379)
    proc = subprocess.run(
        [server, "--daemonize", "yes", "--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no",
         "--dir", str(work), "--logfile", str(work / "redis.log")],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        return f"redis-server failed to start (exit {proc.returncode}): {(proc.stdout + proc.stderr).strip()[-500:]}"
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        if _redis_answers(url) is None:
            return None
        time.sleep(0.2)
    return f"redis-server started but {url} still does not answer after {start_timeout:.0f} s: {_tail(work / 'redis.log', 10)}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    problem = ensure_redis(args[0] if args else broker_url())
    if problem:
        print(f"redis: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
