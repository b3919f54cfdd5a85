"""devstack.signals: SIGTERM and SIGHUP take Ctrl-C's way out of bin/demo and the benchmarks, so
what they started is stopped; checked on real processes with real signals."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_runs_the_whole_cleanup_like_ctrl_c(signum: signal.Signals, tmp_path: Path) -> None:
    # Python's default SIGTERM ends the process without running `finally`: bin/demo's Airflow,
    # emulator and sink outlived `timeout bin/demo` that way. A real process, real signals.
    marker = tmp_path / "cleaned-up"
    script = (
        "import sys, time\n"
        "from devstack.signals import ignore_stop_signals, stop_on_signals, Stopped\n"
        "stop_on_signals()\n"
        "print('ready', flush=True)\n"
        "try:\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt as stop:\n"
        "    print('stopped by', stop.args[0] if isinstance(stop, Stopped) else 'Ctrl-C', flush=True)\n"
        "finally:\n"
        "    ignore_stop_signals()\n"
        "    print('cleaning up', flush=True)\n"
        "    time.sleep(1)\n"
        f"    open({str(marker)!r}, 'w').close()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signum)
        stopped = proc.stdout.readline().strip()
        assert proc.stdout.readline().strip() == "cleaning up"
        # a second signal (`timeout` signals the child, then its whole group; a second Ctrl-C)
        # must not cut the cleanup short
        proc.send_signal(signum)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert stopped == f"stopped by {signum.name}"
    assert marker.exists()
    assert proc.returncode == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_batch_command_exits_through_its_context_managers(signum: signal.Signals, tmp_path: Path) -> None:
    marker = tmp_path / "stack-stopped"
    script = (
        "import contextlib, time\n"
        "from devstack.signals import exit_on_signals\n"
        "exit_on_signals()\n"
        "@contextlib.contextmanager\n"
        "def stack():\n"
        "    try:\n"
        "        yield\n"
        "    finally:\n"
        f"        open({str(marker)!r}, 'w').close()\n"
        "with stack():\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signum)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert marker.exists()
    assert proc.returncode == 128 + signum
