"""Stop signals for the long-running commands (bin/demo, the benchmarks): SIGTERM and SIGHUP take
the same path as Ctrl-C, so the processes a command started (the emulator, the SMTP sink, Airflow)
are stopped by its ``finally`` blocks and context managers instead of outliving it. Python's own
SIGTERM ends the process at once, without running any of them."""

from __future__ import annotations

import signal
from collections.abc import Callable

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A stop asked by a signal other than Ctrl-C (SIGTERM from `kill`, `timeout` or a service
    manager, SIGHUP from a closed terminal); its argument is the signal's name."""


def _raise_on(signals: tuple[signal.Signals, ...], exception: Callable[[int], BaseException]) -> None:
    """Make each of ``signals`` raise ``exception(signum)`` in the main thread."""

    def _raise(signum: int, _frame: object) -> None:
        raise exception(signum)

    for signum in signals:
        signal.signal(signum, _raise)


def stop_on_signals(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
    """Make ``signals`` raise :class:`Stopped` in the main thread."""
    _raise_on(signals, lambda signum: Stopped(signal.Signals(signum).name))


def ignore_stop_signals() -> None:
    """While a command stops its processes: a second Ctrl-C, or the SIGTERM that `timeout` sends to
    the whole process group after the command's own, must not cut that short (the waits are
    bounded)."""
    for signum in (signal.SIGINT, *STOP_SIGNALS):
        signal.signal(signum, signal.SIG_IGN)


def exit_on_signals(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
    """For a batch command without a Ctrl-C message of its own: ``signals`` end it through
    :class:`SystemExit` (status 128 + the signal's number, as a shell reports a killed command), so
    its context managers still stop what it started."""
    _raise_on(signals, lambda signum: SystemExit(128 + signum))
