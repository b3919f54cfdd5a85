"""How devstack servers tell their parent they are listening: a ready file written atomically."""

from __future__ import annotations

import os


def write_ready_file(path: str, content: str) -> None:
    """Write then rename, so a poller never reads a half-written file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
