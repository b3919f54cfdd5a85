"""A private PostgreSQL cluster with settings of its own, for benchmarks that must neither depend on
nor change the machine's server (``initdb`` + ``pg_ctl`` of the installed PostgreSQL).

    python -m devstack.pg_cluster start --dir /work/pg-soak --port 5433     # prints its URL
    python -m devstack.pg_cluster stop --dir /work/pg-soak

The machine's server keeps PostgreSQL's defaults (``shared_buffers`` 128 MB, ``max_wal_size``
1 GB), which suit the tests' small stores. A store holding days of history is a different
database: random inserts into multi-GB indexes evict dirty pages from a 128 MB buffer cache
constantly, and a checkpoint every gigabyte of WAL makes every first change of an index page
write the whole page to the WAL again. :data:`STORE_SETTINGS` are what any production
PostgreSQL for such a store would set, sized for this 2-core, 23 GB machine; durability settings
(``fsync``, ``synchronous_commit``, ``full_page_writes``) stay at their safe defaults.

As root, the cluster runs as the ``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

#: settings of a store holding days of history (module doc); memory for a 23 GB machine
STORE_SETTINGS: dict[str, str] = {
    "shared_buffers": "4GB",
    "effective_cache_size": "16GB",
    "maintenance_work_mem": "1GB",
    "work_mem": "32MB",
    "max_wal_size": "4GB",
    "min_wal_size": "1GB",
    "checkpoint_timeout": "15min",
    "checkpoint_completion_target": "0.9",
    # lz4, not "on" (pglz): on a store holding days of history every first touch of a random-key
    # index page after a checkpoint writes a full-page image, and compressing those with pglz made
    # reconcile 25-35 % slower on the soak's filled store (lz4 and off were not)
    "wal_compression": "lz4",
    "random_page_cost": "1.1",
    "max_connections": "200",
}


class ClusterError(RuntimeError):
    """initdb or pg_ctl failed; the message carries their output."""


def bindir() -> Path:
    """The newest installed PostgreSQL's binaries (``pg_config --bindir``, else Debian's layout)."""
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not candidates:
        raise ClusterError("no PostgreSQL server binaries found (initdb): install the postgresql package")
    return Path(candidates[-1]).parent


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(_as_owner(cmd), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"{what} failed (exit {proc.returncode}): {(proc.stdout + proc.stderr).strip()[-2000:]}")


def url(port: int, database: str = "postgres") -> str:
    return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{database}"


def start(data_dir: Path, port: int, settings: Mapping[str, str] = STORE_SETTINGS) -> str:
    """initdb ``data_dir`` if it is new, write ``settings``, start the server on 127.0.0.1:``port``
    and return its URL (trust auth for local connections, user ``postgres``)."""
    data_dir = Path(data_dir).resolve()
    tools = bindir()
    if not (data_dir / "PG_VERSION").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data_dir, "postgres", "postgres")
        _run([str(tools / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
              "--no-instructions"], "initdb")
    conf = {"listen_addresses": "'127.0.0.1'", "port": str(port), "unix_socket_directories": f"'{data_dir}'"}
    conf.update({k: (v if v.replace(".", "").isdigit() or v in ("on", "off") else f"'{v}'") for k, v in settings.items()})
    auto = data_dir / "postgresql.auto.conf"
    text = "# written by devstack.pg_cluster\n" + "".join(f"{k} = {v}\n" for k, v in conf.items())
    auto.write_text(text, encoding="utf-8")
    if os.geteuid() == 0:
        shutil.chown(auto, "postgres", "postgres")
    _run([str(tools / "pg_ctl"), "-D", str(data_dir), "-l", str(data_dir / "server.log"), "-w", "-t", "120", "start"],
         "pg_ctl start")
    return url(port)


def stop(data_dir: Path) -> None:
    data_dir = Path(data_dir).resolve()
    if (data_dir / "postmaster.pid").exists():
        _run([str(bindir() / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "-t", "300", "stop"], "pg_ctl stop")


@contextlib.contextmanager
def private_cluster(data_dir: Path, port: int, settings: Mapping[str, str] = STORE_SETTINGS, *,
                    remove: bool = True) -> Iterator[str]:
    """A started cluster for the block; stopped on exit, and its directory removed with ``remove``."""
    started = start(data_dir, port, settings)
    try:
        yield started
    finally:
        with contextlib.suppress(ClusterError):
            stop(data_dir)
        if remove:
            time.sleep(0.5)
            shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.pg_cluster", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--dir", required=True, type=Path, help="the cluster's data directory")
    parser.add_argument("--port", type=int, default=5433)
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            print(start(args.dir, args.port))
        else:
            stop(args.dir)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
