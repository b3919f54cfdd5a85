"""Make sure the PostgreSQL server of a URL answers; start the local cluster if it is down.

    python -m devstack.ensure_postgres postgresql+psycopg2://postgres@127.0.0.1:5432/postgres

Exit 0 when the server answers, 1 when it cannot be reached or started (the reason is printed).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", None, ""}


def _answers(url: str) -> str | None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        return None
    except Exception as exc:  # the reason is printed, not swallowed
        return f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}"
    finally:
        engine.dispose()


@contextlib.contextmanager
def scratch_database(server_url: str, prefix: str = "tf_scratch", *, store: bool = True) -> Iterator[str]:
    """A fresh, empty database on the PostgreSQL server of ``server_url``, dropped on exit (even
    while connections to it are open): yields its URL. Used for test stores, benchmark stores and
    Airflow metadata DBs alike. For a store (``store=True``) the project's cached engines are
    disposed before the drop."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            if store:
                from include.triggerflow.store.engines import dispose_engines

                dispose_engines()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _start_local_cluster() -> str | None:
    versions = sorted(Path("/etc/postgresql").glob("*/main")) if Path("/etc/postgresql").is_dir() else []
    if not versions or not shutil.which("pg_ctlcluster"):
        return "no local PostgreSQL cluster (pg_ctlcluster, /etc/postgresql/*/main) on this machine"
    version = versions[-1].parent.name
    print(f"[postgres] starting local cluster {version}/main", flush=True)
    proc = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
        capture_output=True,
        text=True,
    )
    if proc.returncode not in (0, 2):  # 2 = already running
        return f"pg_ctlcluster failed: {proc.stderr.strip() or proc.stdout.strip()}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    url = args[0]
    from sqlalchemy.engine import make_url

    problem = _answers(url)
    if problem is None:
        return 0
    print(f"[postgres] {make_url(url).render_as_string(hide_password=True)} does not answer: {problem}", flush=True)
    if make_url(url).host not in LOCAL_HOSTS:
        return 1
    failure = _start_local_cluster()
    if failure:
        print(f"[postgres] {failure}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _answers(url) is None:
            print("[postgres] up", flush=True)
            return 0
        time.sleep(1)
    print(f"[postgres] still not answering after 30 s: {_answers(url)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
