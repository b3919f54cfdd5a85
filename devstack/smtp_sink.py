"""A real SMTP server for the local dev stack that stores every accepted message as a .eml file.

triggerflow's delivery stage speaks plain SMTP; pointing it at this sink lets tests and the demo
check exactly what was sent (envelope and bytes) without a mail provider. Each message becomes
``<DIR>/<UTC yyyymmddTHHMMSS.ffffff>-<seq 6 digits>.eml`` holding the message bytes as received,
preceded by ``X-Envelope-From`` / ``X-Envelope-To`` lines (as an MTA adds ``Return-Path``). The
file is written atomically before the server answers ``250``, so a client that got ``250`` can
rely on the file being there.

Fault injection (``--faults-file PATH``): a JSON list of rules, re-read whenever the file changes
(checked by ``stat`` on every MAIL, RCPT and DATA command, so a test can switch behaviour while the
server runs; write the file atomically). A rule with ``times`` is spent after firing that many
times; a rule without it fires forever. A changed file starts again from its own counts.

* ``{"rcpt": "a@x.test", "code": 451, "message": "4.2.1 try later", "times": 1}`` — answer
  ``RCPT TO`` for that address (case-insensitive) with the code (4xx or 5xx);
  ``{"rcpt_domain": "bounce.test", "code": 550, "message": "5.1.1 user unknown"}`` for a domain.
* ``{"drop_after_messages": N}`` — once N messages were accepted in the current session, drop
  the connection (close it without replying) at the next ``MAIL FROM``: the dropped message was
  never accepted and never written.
* ``{"data_delay_ms": 200}`` — sleep before answering ``250`` to end-of-data, *after* the file
  is written (so a client killed during the sleep leaves a stored message it never saw accepted).
* ``{"data_code": 452, "message": "4.3.1 out of space", "times": 1}`` — answer end-of-data with
  that code instead of ``250``, without writing the file.

``data_delay_ms`` and ``data_code`` rules may also carry ``rcpt``/``rcpt_domain`` to apply to one
recipient only. Every fired rule is logged as ``smtp-sink fault fired: <json>`` (one line), so a
test can check that the fault it set up really happened.

Run it with ``python -m devstack.smtp_sink --port 0 --out DIR --ready-file /tmp/x``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from devstack.readiness import write_ready_file

SERVER_HOSTNAME = "smtp-sink.triggerflow.local"

# Upper bound on waiting for our own dropped connection to be torn down (it takes one loop turn).
_DROP_WAIT_S = 10.0

_RULE_KEYS: dict[str, set[str]] = {
    "rcpt": {"rcpt", "rcpt_domain", "code", "message", "times"},
    "drop": {"drop_after_messages", "times"},
    "delay": {"data_delay_ms", "rcpt", "rcpt_domain", "times"},
    "data_code": {"data_code", "message", "rcpt", "rcpt_domain", "times"},
}


class FaultRuleError(ValueError):
    """A faults file that does not describe valid rules."""


def rule_kind(rule: dict[str, Any]) -> str:
    if "drop_after_messages" in rule:
        return "drop"
    if "data_delay_ms" in rule:
        return "delay"
    if "data_code" in rule:
        return "data_code"
    if "rcpt" in rule or "rcpt_domain" in rule:
        return "rcpt"
    raise FaultRuleError(f"rule {rule!r}: no rcpt, rcpt_domain, drop_after_messages, data_delay_ms or data_code")


def parse_fault_rules(payload: Any) -> list[dict[str, Any]]:
    """Validate a rules list (or one rule); return copies. Raises :class:`FaultRuleError`."""
    items = payload if isinstance(payload, list) else [payload]
    rules: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        where = f"fault rule #{index}"
        if not isinstance(item, dict):
            raise FaultRuleError(f"{where} is not a JSON object")
        kind = rule_kind(item)
        unknown = set(item) - _RULE_KEYS[kind]
        if unknown:
            raise FaultRuleError(f"{where} ({kind}): unknown keys {sorted(unknown)}")
        if "rcpt" in item and "rcpt_domain" in item:
            raise FaultRuleError(f"{where}: give rcpt or rcpt_domain, not both")

        def integer(name: str, low: int, high: int | None = None) -> None:
            value = item.get(name)
            if value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
                raise FaultRuleError(f"{where}: {name} must be an integer in [{low}, {high if high is not None else '...'}]")

        integer("times", 1)
        integer("drop_after_messages", 0)
        integer("data_delay_ms", 0)
        integer("code", 400, 599)
        integer("data_code", 400, 599)
        if kind == "rcpt" and "code" not in item:
            raise FaultRuleError(f"{where}: a rcpt rule needs a code (4xx or 5xx)")
        for name in ("rcpt", "rcpt_domain", "message"):
            value = item.get(name)
            if value is not None and (not isinstance(value, str) or "\r" in value or "\n" in value):
                raise FaultRuleError(f"{where}: {name} must be one line of text")
        rule = dict(item)
        rule["_kind"] = kind
        rule["_index"] = index
        rules.append(rule)
    return rules


def _public(rule: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rule.items() if not k.startswith("_")}


class FaultRules:
    """The rules of a faults file, reloaded when the file changes (by stat, not by reading)."""

    def __init__(self, path: str | os.PathLike[str] | None, log: Any) -> None:
        self.path = Path(path) if path is not None else None
        self._log = log
        self._version: tuple[int, int, int] | None = None
        self.rules: list[dict[str, Any]] = []

    def refresh(self) -> list[dict[str, Any]]:
        if self.path is None:
            return self.rules
        try:
            st = self.path.stat()
            version: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            version = None
        if version == self._version:
            return self.rules
        self._version = version
        if version is None:
            self.rules = []
            return self.rules
        try:
            text = self.path.read_text(encoding="utf-8")
            self.rules = parse_fault_rules(json.loads(text)) if text.strip() else []
        except (OSError, ValueError) as exc:
            # Keep serving without faults rather than crash; say so loudly.
            self.rules = []
            self._log.write(f"smtp-sink ignoring faults file {self.path}: {exc}\n")
            self._log.flush()
        else:
            self._log.write(f"smtp-sink loaded {len(self.rules)} fault rule(s) from {self.path}\n")
            self._log.flush()
        return self.rules

    def match(self, kind: str, recipients: list[str] | None = None) -> dict[str, Any] | None:
        """The first live rule of ``kind`` applying to ``recipients`` (any of them), if any."""
        for rule in self.refresh():
            if rule["_kind"] != kind:
                continue
            if recipients is not None and not _applies(rule, recipients):
                continue
            return rule
        return None

    def fire(self, rule: dict[str, Any], **detail: Any) -> None:
        entry = {**_public(rule), **detail}  # the rule as it was when it fired
        if "times" in rule:
            rule["times"] -= 1
            entry["times_left"] = rule["times"]
            if rule["times"] <= 0 and rule in self.rules:
                self.rules.remove(rule)
        self._log.write("smtp-sink fault fired: " + json.dumps(entry, sort_keys=True) + "\n")
        self._log.flush()


def _applies(rule: dict[str, Any], recipients: list[str]) -> bool:
    address, domain = rule.get("rcpt"), rule.get("rcpt_domain")
    if address is None and domain is None:
        return True
    for rcpt in recipients:
        rcpt_l = rcpt.lower()
        if address is not None and rcpt_l == address.lower():
            return True
        if domain is not None and rcpt_l.rpartition("@")[2] == domain.lower().lstrip("@"):
            return True
    return False


class EmlFolderHandler:
    """aiosmtpd handler writing one .eml file per accepted message.

    With a faults file, ``handle_MAIL`` / ``handle_RCPT`` / ``handle_DATA`` apply its rules (see
    the module docstring); without one it accepts everything.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        log: Any = None,
        faults_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._seq = itertools.count(1)
        self._log = log if log is not None else sys.stderr
        self.faults = FaultRules(faults_file, self._log)

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

    async def handle_MAIL(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        accepted = getattr(session, "tf_accepted", 0)
        rule = self.faults.match("drop")
        if rule is not None and accepted >= rule["drop_after_messages"]:
            self.faults.fire(rule, accepted_in_session=accepted, mail_from=address)
            # Close without a reply; connection_lost() then cancels this handler coroutine.
            if server.transport is not None:
                server.transport.abort()
            await asyncio.sleep(_DROP_WAIT_S)
            return "421 4.4.2 connection dropped"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        rule = self.faults.match("rcpt", [address])
        if rule is not None:
            self.faults.fire(rule, rcpt_to=address)
            return f"{rule['code']} {rule.get('message') or 'refused by fault rule'}"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        rule = self.faults.match("data_code", list(envelope.rcpt_tos))
        if rule is not None:
            self.faults.fire(rule, rcpt_to=",".join(envelope.rcpt_tos))
            return f"{rule['data_code']} {rule.get('message') or 'refused by fault rule'}"
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
        session.tf_accepted = getattr(session, "tf_accepted", 0) + 1  # type: ignore[attr-defined]
        delay = self.faults.match("delay", list(envelope.rcpt_tos))
        if delay is not None:
            self.faults.fire(delay, stored=path.name)
            await asyncio.sleep(delay["data_delay_ms"] / 1000)
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


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.smtp_sink",
        description="SMTP server that writes each accepted message to DIR as a .eml file.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--out", required=True, help="directory for the .eml files (created if missing)")
    parser.add_argument("--ready-file", help="write HOST:PORT here once listening")
    parser.add_argument(
        "--faults-file",
        help="JSON list of fault rules, re-read when it changes (see the module docstring)",
    )
    return parser


async def _main_async(args: argparse.Namespace) -> None:
    out_dir = Path(args.out).resolve()
    handler = EmlFolderHandler(out_dir, faults_file=args.faults_file)
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
