"""devstack.signals: SIGTERM and SIGHUP take Ctrl-C's way out of bin/demo and the benchmarks, so
what they started is stopped; checked on real processes with real signals."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from devstack.processes import PROJECT_ROOT

# bin/demo's shape: stop signals raise, the `finally` stops what was started (the marker file)
DEMO_LIKE = """
import sys, time
from devstack.signals import ignore_stop_signals, stop_on_signals, Stopped
stop_on_signals()
try:
    print('ready', flush=True)
    time.sleep(60)
except KeyboardInterrupt as stop:
    print('stopped by', stop.args[0] if isinstance(stop, Stopped) else 'Ctrl-C', flush=True)
finally:
    ignore_stop_signals()
    print('cleaning up', flush=True)
    time.sleep(1)
    open(sys.argv[1], 'w').close()
"""

# the benchmarks' shape: stop signals exit, the context managers stop what was started
BENCH_LIKE = """
import contextlib, sys, time
from devstack.signals import exit_on_signals
exit_on_signals()
@contextlib.contextmanager
def stack():
    try:
        yield
    finally:
        open(sys.argv[1], 'w').close()
with stack():
    print('ready', flush=True)
    time.sleep(60)
"""


@contextlib.contextmanager
def running(script: str, marker: Path) -> Iterator[tuple[subprocess.Popen[str], IO[str]]]:
    """The script in its own Python process, once it has printed "ready"; killed afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(marker)], stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc, proc.stdout
    finally:
        proc.kill()
        proc.wait(timeout=30)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_runs_the_whole_cleanup_like_ctrl_c(signum: signal.Signals, tmp_path: Path) -> None:
    # Python's default SIGTERM ends the process without running `finally`: bin/demo's Airflow,
    # emulator and sink outlived `timeout bin/demo` that way.
    marker = tmp_path / "cleaned-up"
    with running(DEMO_LIKE, marker) as (proc, out):
        proc.send_signal(signum)
        stopped = out.readline().strip()
        assert out.readline().strip() == "cleaning up"
        # a second signal (`timeout` signals the child, then its whole group; a second Ctrl-C)
        # must not cut the cleanup short
        proc.send_signal(signum)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert stopped == f"stopped by {signum.name}"
    assert marker.exists()
    assert proc.returncode == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_batch_command_exits_through_its_context_managers(signum: signal.Signals, tmp_path: Path) -> None:
    marker = tmp_path / "stack-stopped"
    with running(BENCH_LIKE, marker) as (proc, _out):
        proc.send_signal(signum)
        proc.communicate(timeout=30)
    assert marker.exists()
    assert proc.returncode == 128 + signum
