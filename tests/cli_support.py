"""Run the CLI in-process: ``main(argv)`` with its output captured, as a finished process would
report it (exit status, stdout, stderr). A subprocess costs ~2 s of imports per call; this costs
nothing, so the CLI's unit tests stay fast (tests/integration/cli runs the real module once)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass


@dataclass(frozen=True)
class Done:
    """What a command did: its exit status and its output (the fields of subprocess.CompletedProcess)."""

    returncode: int
    stdout: str
    stderr: str


@contextmanager
def environment(env: Mapping[str, str] | None = None, drop: tuple[str, ...] = ()) -> Iterator[None]:
    """``os.environ`` with ``env`` set and ``drop`` removed, restored afterwards."""
    saved = dict(os.environ)
    os.environ.update(env or {})
    for name in drop:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_cli(*args: str, env: Mapping[str, str] | None = None, drop: tuple[str, ...] = ()) -> Done:
    """``python -m include.triggerflow.cli *args``, in this process."""
    from include.triggerflow.cli import main

    out, err = io.StringIO(), io.StringIO()
    with environment(env, drop), redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return Done(code, out.getvalue(), err.getvalue())
