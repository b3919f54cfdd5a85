"""The CLI as users run it: ``python -m include.triggerflow.cli`` in a new process (the package's
``__main__``). Every other CLI test calls ``main`` in-process (tests/cli_support.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import inspect

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "include.triggerflow.cli", *args],
        cwd=PROJECT_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120,
    )


def test_help_lists_every_command() -> None:
    done = cli("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: triggerflow ")
    for command in ("init-db", "load-profiles", "catalog", "runs", "quarantine", "decisions", "suppress", "positions",
                    "forget-position", "skip", "set-position", "status", "preview", "test-send"):
        assert command in done.stdout


def test_init_db_then_runs_in_new_processes(store_url: str) -> None:
    done = cli("--db-url", store_url, "init-db")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("store ready at ")
    from include.triggerflow.store.engines import get_engine

    assert "tf_run_summary" in inspect(get_engine(store_url)).get_table_names()
    runs = cli("--db-url", store_url, "runs")
    assert (runs.returncode, runs.stdout.split("\t")[0]) == (0, "batch_id")


def test_a_usage_error_exits_2() -> None:
    done = cli()
    assert done.returncode == 2
    assert "the following arguments are required: command" in done.stderr
