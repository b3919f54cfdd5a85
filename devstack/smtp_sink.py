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

* ``{"mail_code": 530, "message": "5.7.0 Authentication required"}`` — answer ``MAIL FROM``
  with that code (a sender-level refusal: relay authentication, SPF/DMARC).
* ``{"data_command_code": 554, "message": "5.7.1 rejected"}`` — answer the ``DATA`` command itself
  (before ``354``) with that code.
* ``{"drop_at": "data_command"}`` — close the connection without answering ``DATA``;
  ``{"drop_at": "mid_data"}`` — answer ``354``, read the first line of the message, then reset the
  connection: the message is incomplete and never stored; ``{"drop_at": "end_of_data"}`` — read
  the whole message, *store it* (as a real server may have queued it) and close without the
  ``250``: RFC 1047's duplicate window, seen from the client as a message it does not know was
  accepted.

``data_delay_ms``, ``data_code``, ``data_command_code`` and ``drop_at`` rules may also carry
``rcpt``/``rcpt_domain`` to apply to one recipient only. A reply ``message`` is sent as given,
with or without an RFC 3463 enhanced code at its start. Every fired rule is logged as ``smtp-sink fault fired: <json>`` (one line), so a
test can check that the fault it set up really happened.

Run it with ``python -m devstack.smtp_sink --port 0 --out DIR --ready-file /tmp/x``.

Fast mode, for benchmarks: ``--store none`` accepts and counts messages without writing any
file (``--out`` is then optional), so a load test measures the sender, not the disk. It is
served by :class:`LeanSmtpProtocol` (``--engine lean``, the default with ``--store none``), a
minimal asyncio SMTP server that costs ~0.15-0.25 ms of CPU per 6 KB message where aiosmtpd
costs ~1 ms (``--engine aiosmtpd`` keeps aiosmtpd, to compare); fault rules apply the same. With
``--accept-log PATH`` the sink appends one line per accepted message,
``<unix time accepted, 6 decimals>\t<X-Triggerflow-Key, else Message-ID, else ->``, buffered and
flushed with the stats (and at exit). ``--stats-file PATH`` is rewritten atomically every
``--stats-interval`` seconds (default 1) and at exit with ``{"accepted", "refused", "bytes",
"sessions", "store", "updated_at", "pid"}`` (``sessions``: SMTP sessions that had a message
accepted); both work in either mode.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from devstack.readiness import write_ready_file

SERVER_HOSTNAME = "smtp-sink.triggerflow.local"
STORE_MODES = ("eml", "none")
DEFAULT_STATS_INTERVAL_S = 1.0
# The message's key for the accept log: triggerflow's ledger key, else its Message-ID.
# (A header's value: its first line and any folded continuation lines.)
_KEY_HEADER_RE = re.compile(rb"^x-triggerflow-key:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE)
_MESSAGE_ID_RE = re.compile(rb"^message-id:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE)

# Upper bound on waiting for our own dropped connection to be torn down (it takes one loop turn).
_DROP_WAIT_S = 10.0

_RULE_KEYS: dict[str, set[str]] = {
    "rcpt": {"rcpt", "rcpt_domain", "code", "message", "times"},
    "drop": {"drop_after_messages", "times"},
    "delay": {"data_delay_ms", "rcpt", "rcpt_domain", "times"},
    "data_code": {"data_code", "message", "rcpt", "rcpt_domain", "times"},
    "mail_code": {"mail_code", "message", "times"},
    "data_command_code": {"data_command_code", "message", "rcpt", "rcpt_domain", "times"},
    **{f"drop_{at}": {"drop_at", "rcpt", "rcpt_domain", "times"} for at in ("data_command", "mid_data", "end_of_data")},
}
DROP_POINTS = ("data_command", "mid_data", "end_of_data")


class FaultRuleError(ValueError):
    """A faults file that does not describe valid rules."""


def rule_kind(rule: dict[str, Any]) -> str:
    if "drop_after_messages" in rule:
        return "drop"
    if "data_delay_ms" in rule:
        return "delay"
    if "data_code" in rule:
        return "data_code"
    if "mail_code" in rule:
        return "mail_code"
    if "data_command_code" in rule:
        return "data_command_code"
    if "drop_at" in rule:
        if rule["drop_at"] not in DROP_POINTS:
            raise FaultRuleError(f"rule {rule!r}: drop_at must be one of {', '.join(DROP_POINTS)}")
        return f"drop_{rule['drop_at']}"
    if "rcpt" in rule or "rcpt_domain" in rule:
        return "rcpt"
    raise FaultRuleError(
        f"rule {rule!r}: no rcpt, rcpt_domain, drop_after_messages, data_delay_ms, data_code, mail_code, "
        "data_command_code or drop_at"
    )


def _check_integer(item: dict[str, Any], where: str, name: str, low: int, high: int | None = None) -> None:
    """``item[name]``, when given, must be an integer in [low, high] (a bool is not one)."""
    value = item.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise FaultRuleError(f"{where}: {name} must be an integer in [{low}, {high if high is not None else '...'}]")


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
        _check_integer(item, where, "times", 1)
        _check_integer(item, where, "drop_after_messages", 0)
        _check_integer(item, where, "data_delay_ms", 0)
        _check_integer(item, where, "code", 400, 599)
        _check_integer(item, where, "data_code", 400, 599)
        _check_integer(item, where, "mail_code", 400, 599)
        _check_integer(item, where, "data_command_code", 400, 599)
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
        out_dir: str | os.PathLike[str] | None,
        *,
        log: Any = None,
        faults_file: str | os.PathLike[str] | None = None,
        store: str = "eml",
        accept_log: str | os.PathLike[str] | None = None,
    ) -> None:
        if store not in STORE_MODES:
            raise ValueError(f"store must be one of {STORE_MODES}, not {store!r}")
        if store == "eml" and out_dir is None:
            raise ValueError("store 'eml' needs an output directory")
        self.store_mode = store
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if store == "eml":
            assert self.out_dir is not None
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self._seq = itertools.count(1)
        self._log = log if log is not None else sys.stderr
        self.faults = FaultRules(faults_file, self._log)
        self.accepted = 0
        self.refused = 0
        self.bytes = 0
        self.sessions = 0
        self._accept_log: Any = None
        if accept_log is not None:
            Path(accept_log).parent.mkdir(parents=True, exist_ok=True)
            self._accept_log = open(accept_log, "ab", buffering=1 << 20)  # noqa: SIM115 - open until close()

    @staticmethod
    def message_key(content: bytes) -> str:
        """X-Triggerflow-Key, else Message-ID, else "-" (looked up in the header block only)."""
        end = content.find(b"\r\n\r\n")
        if end < 0:
            end = content.find(b"\n\n")
        headers = content if end < 0 else content[:end]
        match = _KEY_HEADER_RE.search(headers) or _MESSAGE_ID_RE.search(headers)
        key = b"".join(match.group(1).split()) if match else b""  # unfolded, no whitespace
        return key.decode("ascii", "replace") if key else "-"

    def stats(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "refused": self.refused,
            "bytes": self.bytes,
            "sessions": self.sessions,
            "store": self.store_mode,
            "updated_at": time.time(),
            "pid": os.getpid(),
        }

    def flush(self) -> None:
        if self._accept_log is not None:
            self._accept_log.flush()

    def close(self) -> None:
        if self._accept_log is not None:
            self._accept_log.flush()
            self._accept_log.close()
            self._accept_log = None

    def _content(self, envelope: Envelope) -> bytes:
        content = envelope.original_content
        if content is None:
            raw = envelope.content or b""
            content = raw.encode("utf-8", errors="surrogateescape") if isinstance(raw, str) else raw
        return content

    def _file_name(self, seq: int) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")
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
        assert self.out_dir is not None
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

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        accepted = getattr(session, "tf_accepted", 0)
        rule = self.faults.match("drop")
        if rule is not None and accepted >= rule["drop_after_messages"]:
            self.faults.fire(rule, accepted_in_session=accepted, mail_from=address)
            # Close without a reply; connection_lost() then cancels this handler coroutine.
            _abort_transport(server.transport)
            await asyncio.sleep(_DROP_WAIT_S)
            return "421 4.4.2 connection dropped"
        refuse = self.faults.match("mail_code")
        if refuse is not None:
            self.faults.fire(refuse, mail_from=address)
            return _fault_reply(refuse, "mail_code")
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        rule = self.faults.match("rcpt", [address])
        if rule is not None:
            self.faults.fire(rule, rcpt_to=address)
            return f"{rule['code']} {rule.get('message') or 'refused by fault rule'}"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        rule = self.faults.match("data_code", list(envelope.rcpt_tos))
        if rule is not None:
            self.faults.fire(rule, rcpt_to=",".join(envelope.rcpt_tos))
            self.refused += 1
            return f"{rule['data_code']} {rule.get('message') or 'refused by fault rule'}"
        drop = self.faults.match("drop_end_of_data", list(envelope.rcpt_tos))
        if drop is not None:
            # queued (stored and counted) but never answered
            session.tf_accepted = getattr(session, "tf_accepted", 0) + 1  # type: ignore[attr-defined]
            self._count(session, envelope)
            stored = self.store(envelope).name if self.store_mode == "eml" else None
            self.faults.fire(drop, rcpt_to=",".join(envelope.rcpt_tos), stored=stored)
            _abort_transport(server.transport)
            await asyncio.sleep(_DROP_WAIT_S)
            return "421 4.4.2 connection dropped"
        if self.store_mode == "none":
            return await self._accept_only(session, envelope)
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
        self._count(session, envelope)
        delay = self.faults.match("delay", list(envelope.rcpt_tos))
        if delay is not None:
            self.faults.fire(delay, stored=path.name)
            await asyncio.sleep(delay["data_delay_ms"] / 1000)
        return "250 2.0.0 OK: queued as " + path.stem

    def _count(self, session: Session, envelope: Envelope) -> None:
        self.count_content(session, self._content(envelope))

    def count_content(self, session: Session, content: bytes) -> None:
        """Count an accepted message (and its session, at its first message); log it."""
        if session.tf_accepted == 1:  # type: ignore[attr-defined]
            self.sessions += 1
        self.accepted += 1
        self.bytes += len(content)
        if self._accept_log is not None:
            line = f"{time.time():.6f}\t{self.message_key(content)}\n"
            self._accept_log.write(line.encode("ascii", "replace"))

    async def _accept_only(self, session: Session, envelope: Envelope) -> str:
        """``--store none``: accept and count, write nothing (no file, no per-message log line)."""
        session.tf_accepted = getattr(session, "tf_accepted", 0) + 1  # type: ignore[attr-defined]
        self._count(session, envelope)
        seq = self.accepted
        delay = self.faults.match("delay", list(envelope.rcpt_tos))
        if delay is not None:
            self.faults.fire(delay, accepted=seq)
            await asyncio.sleep(delay["data_delay_ms"] / 1000)
        return f"250 2.0.0 OK: accepted as {seq:06d}"


def _fault_reply(rule: dict[str, Any], code_key: str) -> str:
    return f"{rule[code_key]} {rule.get('message') or 'refused by fault rule'}"


class FaultySMTP(SMTP):
    """aiosmtpd's server with the DATA-command faults (``data_command_code``, ``drop_at``
    ``data_command`` / ``mid_data``), which its handler hooks cannot express: the handler's
    ``handle_DATA`` only runs once the whole message has arrived."""

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        handler = self.event_handler
        rcpts = list(self.envelope.rcpt_tos) if self.envelope is not None else []
        if rcpts and not arg and isinstance(handler, EmlFolderHandler):
            faults = handler.faults
            refuse = faults.match("data_command_code", rcpts)
            if refuse is not None:
                faults.fire(refuse, rcpt_to=",".join(rcpts))
                handler.refused += 1
                await self.push(_fault_reply(refuse, "data_command_code"))
                return
            drop = faults.match("drop_data_command", rcpts)
            if drop is not None:
                faults.fire(drop, rcpt_to=",".join(rcpts))
                self._abort()
                return
            drop = faults.match("drop_mid_data", rcpts)
            if drop is not None:
                await self.push("354 End data with <CR><LF>.<CR><LF>")
                try:
                    await self._reader.readuntil(b"\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    pass
                faults.fire(drop, rcpt_to=",".join(rcpts))
                self._abort()
                return
        await super().smtp_DATA(arg)

    def _abort(self) -> None:
        _abort_transport(self.transport)


def _abort_transport(transport: asyncio.BaseTransport | None) -> None:
    """Drop the connection without a reply. aiosmtpd types its transport as the base class, which
    has no ``abort()``; the one a server connection gets is a full transport."""
    if transport is not None:
        cast(asyncio.Transport, transport).abort()


_MAX_COMMAND_LINE = 4096
_MAX_MESSAGE_BYTES = 33_554_432
_ADDRESS_RE = re.compile(r"^\s*<([^>]*)>|^\s*(\S+)")


class LeanSmtpProtocol(asyncio.Protocol):
    """A lean SMTP server for ``--store none`` (the ``lean`` engine): RFC 5321's EHLO/HELO,
    MAIL, RCPT, DATA, RSET, NOOP, VRFY, HELP and QUIT with aiosmtpd's replies, pipelined
    commands allowed, and the DATA terminator found with one ``bytes.find`` per network read
    instead of a Python loop per line: aiosmtpd spends ~1 ms of CPU per 6 KB message, which caps
    a benchmark's sink near 700-800 messages/s on a small machine. It counts through
    :class:`EmlFolderHandler` (accept log, stats) and applies the same fault rules. Nothing is
    stored."""

    def __init__(self, handler: EmlFolderHandler, loop: asyncio.AbstractEventLoop) -> None:
        self.handler = handler
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.in_data = False
        self.scan_from = 0
        self.greeted = False
        self.mail_from: str | None = None
        self.rcpt_tos: list[str] = []
        self.session = Session(loop)
        self.session.tf_accepted = 0  # type: ignore[attr-defined]
        self.paused = False
        self.closed = False
        # a drop_at mid_data rule that fires at the first bytes of the message
        self.drop_in_data: dict[str, Any] | None = None

    # -- transport -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._reply(f"220 {SERVER_HOSTNAME} ESMTP triggerflow smtp-sink (lean)")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.paused:
            self._process()

    def _reply(self, line: str) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(line.encode("utf-8", "replace") + b"\r\n")

    # -- the state machine ----------------------------------------------------------------------
    def _process(self) -> None:
        buf = self.buffer
        while not self.paused and not self.closed:
            if self.in_data and self.drop_in_data is not None:
                if buf:
                    self.handler.faults.fire(self.drop_in_data, rcpt_to=",".join(self.rcpt_tos))
                    self._abort()
                return
            if self.in_data:
                if buf[:3] == b".\r\n":  # an empty message
                    end, skip = 0, 3
                else:
                    end = buf.find(b"\r\n.\r\n", max(0, self.scan_from - 4))
                    skip = 5
                    if end < 0:
                        self.scan_from = len(buf)
                        if len(buf) > _MAX_MESSAGE_BYTES:
                            del buf[:]
                            self.in_data = False
                            self._reset()
                            self._reply("552 5.3.4 Error: too much mail data")
                        return
                    end += 2  # keep the message's last CRLF
                content = bytes(buf[:end]).replace(b"\r\n..", b"\r\n.")
                if content.startswith(b".."):
                    content = content[1:]
                del buf[: end + skip - (2 if skip == 5 else 0)]
                self.in_data = False
                self.scan_from = 0
                self._end_of_data(content)
                continue
            eol = buf.find(b"\r\n")
            if eol < 0:
                if len(buf) > _MAX_COMMAND_LINE:
                    del buf[:]
                    self._reply("500 Error: line too long")
                return
            line = bytes(buf[:eol]).decode("utf-8", "replace")
            del buf[: eol + 2]
            self._command(line)

    def _reset(self) -> None:
        self.mail_from = None
        self.rcpt_tos = []

    @staticmethod
    def _address(text: str) -> str:
        match = _ADDRESS_RE.match(text)
        if not match:
            return ""
        return match.group(1) if match.group(1) is not None else match.group(2)

    def _command(self, line: str) -> None:
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        handler = self.handler
        if verb == "EHLO" or verb == "HELO":
            if not arg.strip():
                self._reply(f"501 Syntax: {verb} hostname")
                return
            self.greeted = True
            self._reset()
            if verb == "HELO":
                self._reply(f"250 {SERVER_HOSTNAME}")
            else:
                self._reply(
                    f"250-{SERVER_HOSTNAME}\r\n250-SIZE {_MAX_MESSAGE_BYTES}\r\n250-8BITMIME\r\n"
                    "250-SMTPUTF8\r\n250-PIPELINING\r\n250 HELP"
                )
        elif verb == "MAIL":
            if not self.greeted:
                self._reply("503 Error: send HELO first")
            elif self.mail_from is not None:
                self._reply("503 Error: nested MAIL command")
            elif arg[:5].upper() != "FROM:":
                self._reply("501 Syntax: MAIL FROM: <address>")
            else:
                rule = handler.faults.match("drop")
                accepted = self.session.tf_accepted  # type: ignore[attr-defined]
                if rule is not None and accepted >= rule["drop_after_messages"]:
                    handler.faults.fire(rule, accepted_in_session=accepted, mail_from=self._address(arg[5:]))
                    self.closed = True
                    if self.transport is not None:
                        self.transport.abort()
                    return
                refuse = handler.faults.match("mail_code")
                if refuse is not None:
                    handler.faults.fire(refuse, mail_from=self._address(arg[5:]))
                    self._reply(_fault_reply(refuse, "mail_code"))
                    return
                self.mail_from = self._address(arg[5:])
                self._reply("250 OK")
        elif verb == "RCPT":
            if self.mail_from is None:
                self._reply("503 Error: need MAIL command")
            elif arg[:3].upper() != "TO:":
                self._reply("501 Syntax: RCPT TO: <address>")
            else:
                address = self._address(arg[3:])
                rule = handler.faults.match("rcpt", [address])
                if rule is not None:
                    handler.faults.fire(rule, rcpt_to=address)
                    self._reply(f"{rule['code']} {rule.get('message') or 'refused by fault rule'}")
                    return
                self.rcpt_tos.append(address)
                self._reply("250 OK")
        elif verb == "DATA":
            if arg.strip():
                self._reply("501 Syntax: DATA")
            elif not self.rcpt_tos:
                self._reply("503 Error: need RCPT command")
            elif (refuse := handler.faults.match("data_command_code", self.rcpt_tos)) is not None:
                handler.faults.fire(refuse, rcpt_to=",".join(self.rcpt_tos))
                handler.refused += 1
                self._reply(_fault_reply(refuse, "data_command_code"))
            elif (drop := handler.faults.match("drop_data_command", self.rcpt_tos)) is not None:
                handler.faults.fire(drop, rcpt_to=",".join(self.rcpt_tos))
                self._abort()
            else:
                self.drop_in_data = handler.faults.match("drop_mid_data", self.rcpt_tos)
                self.in_data = True
                self.scan_from = 0
                self._reply("354 End data with <CR><LF>.<CR><LF>")
        elif verb == "RSET":
            self._reset()
            self._reply("250 OK")
        elif verb == "NOOP":
            self._reply("250 OK")
        elif verb == "QUIT":
            self._reply("221 Bye")
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        elif verb == "VRFY":
            self._reply("252 Cannot VRFY user, but will accept message and attempt delivery")
        elif verb == "HELP":
            self._reply("250 Supported commands: DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY")
        else:
            self._reply(f'500 Error: command "{verb}" not recognized')

    def _abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _end_of_data(self, content: bytes) -> None:
        handler = self.handler
        rcpts = self.rcpt_tos
        self._reset()
        rule = handler.faults.match("data_code", rcpts)
        if rule is not None:
            handler.faults.fire(rule, rcpt_to=",".join(rcpts))
            handler.refused += 1
            self._reply(f"{rule['data_code']} {rule.get('message') or 'refused by fault rule'}")
            return
        self.session.tf_accepted += 1  # type: ignore[attr-defined]
        handler.count_content(self.session, content)
        drop = handler.faults.match("drop_end_of_data", rcpts)
        if drop is not None:  # counted (queued), never answered
            handler.faults.fire(drop, rcpt_to=",".join(rcpts))
            self._abort()
            return
        reply = f"250 2.0.0 OK: accepted as {handler.accepted:06d}"
        delay = handler.faults.match("delay", rcpts)
        if delay is None:
            self._reply(reply)
            return
        handler.faults.fire(delay, accepted=handler.accepted)
        self.paused = True  # commands already received wait for the delayed reply
        self.loop.call_later(delay["data_delay_ms"] / 1000, self._resume, reply)

    def _resume(self, reply: str) -> None:
        self.paused = False
        self._reply(reply)
        self._process()


async def serve(
    handler: EmlFolderHandler,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ready: Any = None,
    stop: asyncio.Event | None = None,
    engine: str = "aiosmtpd",
) -> None:
    """Serve until ``stop`` is set. ``ready(host, port)`` is called once listening.

    The server is created directly instead of through ``aiosmtpd.controller.Controller``: the
    controller probes ``host:port`` after starting, which cannot work with port 0. ``engine``
    ``lean`` serves with :class:`LeanSmtpProtocol` (``--store none`` only).
    """
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    if engine == "lean":
        if handler.store_mode != "none":
            raise ValueError("the lean engine only counts: use it with store 'none'")
        factory: Any = lambda: LeanSmtpProtocol(handler, loop)  # noqa: E731
    else:
        # An explicit hostname avoids socket.getfqdn(), which can stall on DNS.
        factory = lambda: FaultySMTP(handler, hostname=SERVER_HOSTNAME, enable_SMTPUTF8=True, loop=loop)  # noqa: E731
    server = await loop.create_server(factory, host=host, port=port)
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
    parser.add_argument("--out", help="directory for the .eml files (created if missing); required with --store eml")
    parser.add_argument(
        "--store", choices=STORE_MODES, default="eml",
        help="eml: write each message to --out (default); none: only accept and count",
    )
    parser.add_argument(
        "--engine", choices=("auto", "aiosmtpd", "lean"), default="auto",
        help="SMTP implementation: aiosmtpd, or lean (a minimal asyncio protocol, --store none only); "
        "auto = lean with --store none, aiosmtpd otherwise",
    )
    parser.add_argument("--accept-log", metavar="PATH", help="append '<unix ts>\\t<X-Triggerflow-Key or Message-ID>' per accepted message")
    parser.add_argument("--stats-file", metavar="PATH", help="JSON counters, rewritten every --stats-interval seconds")
    parser.add_argument("--stats-interval", type=float, default=DEFAULT_STATS_INTERVAL_S)
    parser.add_argument("--ready-file", help="write HOST:PORT here once listening")
    parser.add_argument(
        "--faults-file",
        help="JSON list of fault rules, re-read when it changes (see the module docstring)",
    )
    return parser


def write_stats(path: str | os.PathLike[str], stats: dict[str, Any]) -> None:
    """Atomically (temp file + rename): a reader never sees a half-written file."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(stats), encoding="utf-8")
    os.replace(tmp, target)


async def _stats_loop(handler: EmlFolderHandler, path: str | None, interval: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=max(interval, 0.01))
        except TimeoutError:
            pass
        handler.flush()
        if path:
            write_stats(path, handler.stats())


async def _main_async(args: argparse.Namespace) -> None:
    out_dir = Path(args.out).resolve() if args.out else None
    handler = EmlFolderHandler(
        out_dir, faults_file=args.faults_file, store=args.store, accept_log=args.accept_log
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.stats_file:
        Path(args.stats_file).parent.mkdir(parents=True, exist_ok=True)
        write_stats(args.stats_file, handler.stats())

    def _ready(host: str, port: int) -> None:
        where = f"writing to {out_dir}" if args.store == "eml" else f"counting only (--store none, {engine} engine)"
        print(f"smtp-sink listening on {host}:{port}, {where}", flush=True)
        if args.ready_file:
            write_ready_file(args.ready_file, f"{host}:{port}")

    engine = args.engine if args.engine != "auto" else ("lean" if args.store == "none" else "aiosmtpd")
    ticker = asyncio.create_task(_stats_loop(handler, args.stats_file, args.stats_interval, stop))
    try:
        await serve(handler, args.host, args.port, ready=_ready, stop=stop, engine=engine)
    finally:
        stop.set()
        await ticker
        handler.close()
        if args.stats_file:
            write_stats(args.stats_file, handler.stats())


def main(argv: list[str] | None = None) -> int:
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    if args.store == "eml" and not args.out:
        parser.error("--out is required with --store eml")
    if args.store == "eml" and args.engine == "lean":
        parser.error("--engine lean only counts: use it with --store none")
    asyncio.run(_main_async(args))
    sys.stderr.write("smtp-sink stopped\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
