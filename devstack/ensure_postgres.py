"""Make sure the PostgreSQL server of a URL answers; start the local cluster if it is down.

    python -m devstack.ensure_postgres postgresql+psycopg2://postgres@127.0.0.1:5432/postgres

Exit 0 when the server answers, 1 when it cannot be reached or started (the reason is printed).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
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
