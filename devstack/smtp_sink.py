"""A real SMTP server for the local dev stack that stores every accepted message as a .eml file.

triggerflow's delivery stage speaks plain SMTP; pointing it at this sink lets tests and the demo
check exactly what was sent (envelope and bytes) without a mail provider. Each message becomes
``<DIR>/<UTC yyyymmddTHHMMSS.ffffff>-<seq 6 digits>.eml`` holding the message bytes as received,
preceded by ``X-Envelope-From`` / ``X-Envelope-To`` lines (as an MTA adds ``Return-Path``). The
file is written atomically before the server answers ``250``, so a client that got ``250`` can
rely on the file being there.

Run it with ``python -m devstack.smtp_sink --port 0 --out DIR --ready-file /tmp/x``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

SERVER_HOSTNAME = "smtp-sink.triggerflow.local"


class EmlFolderHandler:
    """aiosmtpd handler writing one .eml file per accepted message.

    Kept as a class with one method per SMTP hook so fault injection (per-recipient 4xx/5xx,
    dropped connections) can be added by overriding ``handle_RCPT`` / ``handle_DATA``.
    """

    def __init__(self, out_dir: str | os.PathLike[str], *, log: Any = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._seq = itertools.count(1)
        self._log = log if log is not None else sys.stderr

    def _file_name(self, seq: int) -> str:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%f")
        return f"{stamp}-{seq:06d}.eml"

    @staticmethod
    def render(envelope: Envelope) -> bytes:
        """The stored bytes: envelope header lines, then the message exactly as received."""
        content = envelope.original_content
        if content is None:
            raw = envelope.content or b""
            content = raw.encode("utf-8", errors="surrogateescape") if isinstance(raw, str) else raw
        # Match the message's own line ending so the header block stays uniform.
        eol = b"\r\n" if b"\r\n" in content[:2048] or not content else b"\n"
        mail_from = (envelope.mail_from or "").encode("utf-8", errors="surrogateescape")
        rcpt_to = ", ".join(envelope.rcpt_tos).encode("utf-8", errors="surrogateescape")
        return b"X-Envelope-From: " + mail_from + eol + b"X-Envelope-To: " + rcpt_to + eol + content

    def store(self, envelope: Envelope) -> Path:
        seq = next(self._seq)
        name = self._file_name(seq)
        final = self.out_dir / name
        # Dot-prefixed temp name: never matches *.eml, so readers cannot pick up a partial file.
        tmp = self.out_dir / f".{name}.tmp"
        data = self.render(envelope)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return final

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        try:
            path = self.store(envelope)
        except OSError as exc:
            # A transient failure: the client keeps the message and retries later.
            self._log.write(f"smtp-sink could not store message from {envelope.mail_from}: {exc}\n")
            self._log.flush()
            return "451 4.3.0 Requested action aborted: could not store message"
        self._log.write(
            f"smtp-sink stored {path.name} from={envelope.mail_from} to={','.join(envelope.rcpt_tos)}\n"
        )
        self._log.flush()
        return "250 2.0.0 OK: queued as " + path.stem


async def serve(
    handler: EmlFolderHandler,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ready: Any = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set. ``ready(host, port)`` is called once listening.

    The server is created directly instead of through ``aiosmtpd.controller.Controller``: the
    controller probes ``host:port`` after starting, which cannot work with port 0.
    """
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    server = await loop.create_server(
        # An explicit hostname avoids socket.getfqdn(), which can stall on DNS.
        lambda: SMTP(handler, hostname=SERVER_HOSTNAME, enable_SMTPUTF8=True, loop=loop),
        host=host,
        port=port,
    )
    bound_port = int(server.sockets[0].getsockname()[1])
    if ready is not None:
        ready(host, bound_port)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()


def write_ready_file(path: str, content: str) -> None:
    """Write then rename, so a poller never reads a half-written file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.smtp_sink",
        description="SMTP server that writes each accepted message to DIR as a .eml file.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--out", required=True, help="directory for the .eml files (created if missing)")
    parser.add_argument("--ready-file", help="write HOST:PORT here once listening")
    return parser


async def _main_async(args: argparse.Namespace) -> None:
    out_dir = Path(args.out).resolve()
    handler = EmlFolderHandler(out_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def _ready(host: str, port: int) -> None:
        print(f"smtp-sink listening on {host}:{port}, writing to {out_dir}", flush=True)
        if args.ready_file:
            write_ready_file(args.ready_file, f"{host}:{port}")

    await serve(handler, args.host, args.port, ready=_ready, stop=stop)


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    asyncio.run(_main_async(args))
    sys.stderr.write("smtp-sink stopped\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
