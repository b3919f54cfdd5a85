"""What an SMTP reply means for one email, read as mail operators read it.

A reply is judged by *where* it came (RFC 5321: the greeting, ``MAIL FROM``, ``RCPT TO``, the
``DATA`` command, or the end of the message data) and by its RFC 3463 enhanced status code
(``5.1.1``), when the server gives one at the start of its text:

=====================  ==========================================================================
class                  replies
=====================  ==========================================================================
``accepted``           2xx (and 354 to DATA)
``mailbox-permanent``  at RCPT: 5.1.x (except 5.1.7/5.1.8, the *sender's* address), 5.2.1, or a
                       5xx without an enhanced code. The address is suppressed.
``mailbox-transient``  4xx at RCPT; 5.2.2 (mailbox full) and any 4.2.x at any stage. Deferred.
``message-refused``    every other 5xx: at MAIL FROM, at DATA, at end-of-DATA, and 5.7.x (policy,
                       relay, authentication, DMARC), 5.3.4 (size), 5.6.x (content), 5.1.7/5.1.8
                       (sender) at RCPT. The row fails with the server's reply; nobody is
                       suppressed: the refusal is about the message or the sender, not the mailbox.
``transient``          every other 4xx, and a reply without a readable code. Deferred.
=====================  ==========================================================================

Why not "every 5xx suppresses": a relay that lost its credentials or a DMARC/content filter
answers 5xx for every message, and treating that as a bounce suppresses a whole audience for good.

Reply text is hostile input (a server may send anything): it is decoded with replacement,
stripped of control and format characters and capped before it is stored or shown.
"""

from __future__ import annotations

import re
import smtplib
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

#: longest reply text kept (characters); longer replies are cut and marked
REPLY_TEXT_LIMIT = 500
_TRUNCATED = " [truncated]"
# RFC 3463: class "." subject "." detail; subject and detail 1-3 digits, at the start of the text
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_SPACES = re.compile(r"\s+")
_ADDRESSISH = re.compile(r"[^\s@<>()\"',;:]+@[^\s@<>()\"',;:]+")
# control, format (bidi overrides, zero-width), surrogate and private-use characters
_DROPPED = frozenset({"Cc", "Cf", "Cs", "Co"})


class DeliveryUncertain(smtplib.SMTPServerDisconnected):
    """The connection broke (or the reply was unreadable) after the whole message, final "."
    included, was written and before the server's reply: RFC 1047's duplicate window. The server
    may already have queued the message; sending it again may deliver it twice."""


class SmtpStage(StrEnum):
    """The point of the SMTP transaction a reply answered."""

    CONNECT = "connect"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    END_OF_DATA = "end-of-data"


class ReplyClass(StrEnum):
    ACCEPTED = "accepted"
    #: the mailbox does not exist or is disabled: suppress the address
    MAILBOX_PERMANENT = "mailbox-permanent"
    #: the mailbox cannot take mail now (full, busy): defer
    MAILBOX_TRANSIENT = "mailbox-transient"
    #: the message or its sender is refused: fail the row, suppress nobody
    MESSAGE_REFUSED = "message-refused"
    #: any other temporary failure: defer
    TRANSIENT = "transient"


#: 5.1.x codes about the sender's own address, not the recipient's (RFC 3463)
_SENDER_ADDRESS_CODES = frozenset({"5.1.7", "5.1.8"})


def clean_reply_text(raw: bytes | str | None, limit: int = REPLY_TEXT_LIMIT) -> str:
    """Printable one-line text of a server reply: decoded with replacement, line breaks and tabs
    as single spaces, other control and format characters (NUL, ESC, bidi overrides, zero-width
    characters) removed, at most ``limit`` characters."""
    if raw is None:
        return ""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else str(raw)
    # Cut early so a huge reply costs little; the final cut below is exact.
    text = text[: limit * 4]
    kept = "".join(" " if ch.isspace() else ch for ch in text if ch.isspace() or unicodedata.category(ch) not in _DROPPED)
    kept = _SPACES.sub(" ", kept).strip()
    if len(kept) > limit:
        kept = kept[: max(0, limit - len(_TRUNCATED))] + _TRUNCATED
    return kept


def mask_addresses(text: str) -> str:
    """``text`` with anything shaped like an email address replaced by ``<address>`` (a reply
    quoted in an exception message or a log line must not carry a customer's address)."""
    return _ADDRESSISH.sub("<address>", text)


def parse_enhanced(code: int | None, text: str) -> str | None:
    """The RFC 3463 enhanced status code at the start of ``text`` (``"5.1.1"``), if its class
    agrees with the reply code's first digit (a disagreeing one is ignored, as RFC 3463 asks)."""
    match = _ENHANCED.match(text.lstrip())
    if match is None:
        return None
    if code is not None and str(code)[:1] != match.group(1):
        return None
    return ".".join(str(int(part)) for part in match.groups())


def classify(stage: SmtpStage, code: int | None, enhanced: str | None) -> ReplyClass:
    """The class of a reply (see the module docstring for the table)."""
    if code is None or not 200 <= code <= 599:
        return ReplyClass.TRANSIENT
    if code < 300 or (code == 354 and stage is SmtpStage.DATA):
        return ReplyClass.ACCEPTED
    if code < 400:  # a 3xx where none belongs: nothing was accepted, try again later
        return ReplyClass.TRANSIENT
    subject = enhanced.split(".")[1] if enhanced else None
    if code < 500:
        if stage is SmtpStage.RCPT or subject == "2":
            return ReplyClass.MAILBOX_TRANSIENT
        return ReplyClass.TRANSIENT
    if enhanced == "5.2.2":  # mailbox full: may empty again (RFC 3463 calls it persistent transient)
        return ReplyClass.MAILBOX_TRANSIENT
    if stage is SmtpStage.RCPT:
        if enhanced is None:
            return ReplyClass.MAILBOX_PERMANENT
        if (subject == "1" and enhanced not in _SENDER_ADDRESS_CODES) or enhanced == "5.2.1":
            return ReplyClass.MAILBOX_PERMANENT
    return ReplyClass.MESSAGE_REFUSED


@dataclass(frozen=True)
class SmtpOutcome:
    """One SMTP transaction's answer: the reply that decided it, where it came and its class."""

    stage: SmtpStage
    code: int | None
    #: the server's reply text, cleaned (see clean_reply_text)
    reply: str
    enhanced: str | None
    reply_class: ReplyClass

    @property
    def accepted(self) -> bool:
        return self.reply_class is ReplyClass.ACCEPTED

    @property
    def refusal_key(self) -> tuple[str, int | None, str | None]:
        """What makes two message-level refusals "the same": stage, code and enhanced code (the
        text often carries a queue id or an address, so it is left out)."""
        return (self.stage.value, self.code, self.enhanced)

    def summary(self) -> str:
        """``message-refused at end-of-data: 554 5.7.1 rejected`` (for the ledger and logs)."""
        code = "" if self.code is None else f"{self.code} "
        return f"{self.reply_class.value} at {self.stage.value}: {code}{self.reply}".rstrip()


_SUMMARY = re.compile(r"([a-z-]+) at ([a-z-]+): (\d+) ?(.*)", re.S)


def outcome_from_summary(summary: str) -> SmtpOutcome | None:
    """The outcome an :meth:`SmtpOutcome.summary` was written from (as stored in the ledger), or
    None for text that is not one."""
    match = _SUMMARY.fullmatch(summary or "")
    if match is None:
        return None
    try:
        kind, stage = ReplyClass(match.group(1)), SmtpStage(match.group(2))
    except ValueError:
        return None
    code, text = int(match.group(3)), match.group(4)
    enhanced = parse_enhanced(code, text)
    return SmtpOutcome(stage=stage, code=code, reply=text, enhanced=enhanced, reply_class=kind)


def read_reply(stage: SmtpStage, code: int | None, raw: bytes | str | None) -> SmtpOutcome:
    """Classify a reply as the server sent it (raw text, any bytes)."""
    if code is not None and not isinstance(code, int):
        code = None
    text = clean_reply_text(raw)
    enhanced = parse_enhanced(code, text) if code is not None else None
    return SmtpOutcome(stage=stage, code=code, reply=text, enhanced=enhanced, reply_class=classify(stage, code, enhanced))


ACCEPTED_REPLY = "accepted"


def accepted(code: int = 250) -> SmtpOutcome:
    """The outcome of a message the server took (the ledger keeps "accepted" as its reply)."""
    return SmtpOutcome(stage=SmtpStage.END_OF_DATA, code=code, reply=ACCEPTED_REPLY, enhanced=None,
                       reply_class=ReplyClass.ACCEPTED)
