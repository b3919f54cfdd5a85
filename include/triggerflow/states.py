"""The states and decisions the store records, one StrEnum each.

They are StrEnums so that a member *is* its column value: ``EventStatus.VALID == "valid"``,
``send.c.state == SendState.SENT`` binds ``'sent'``, and rows read back compare equal to members.
Every module names a state through these, never as a bare string.
"""

from __future__ import annotations

from enum import StrEnum


class BatchState(StrEnum):
    """``tf_batch.state``: a batch is ``pulling`` until its last page landed, then frozen."""

    PULLING = "pulling"
    LANDED = "landed"


class EventStatus(StrEnum):
    """``tf_event.status``: landed → valid | quarantined (reprocessing may flip quarantined → valid)."""

    LANDED = "landed"
    VALID = "valid"
    QUARANTINED = "quarantined"


class Decision(StrEnum):
    """``tf_decision.decision``: why a valid event did or did not become an email.

    Suppressions are ``suppressed:<check>`` (see :class:`Suppression`); :func:`suppressed` builds them.
    """

    IGNORED = "ignored"
    UNMATCHED = "unmatched"
    AMBIGUOUS = "ambiguous"
    EXPIRED = "expired"
    NO_PRODUCTS = "no-products"
    DUPLICATE = "duplicate"
    CAPPED = "capped"
    DEFERRED = "deferred"
    MATCHED = "matched"
    SUPPRESSED_OPT_OUT = "suppressed:opt-out"
    SUPPRESSED_INVALID_ADDRESS = "suppressed:invalid-address"
    SUPPRESSED_BLOCK_LIST = "suppressed:block-list"
    SUPPRESSED_HARD_BOUNCE = "suppressed:hard-bounce"


#: The prefix every suppression decision starts with.
SUPPRESSED_PREFIX = "suppressed:"


class Suppression(StrEnum):
    """The suppression checks a route may apply (``suppression_checks``), in the order applied."""

    OPT_OUT = "opt-out"
    BLOCK_LIST = "block-list"
    HARD_BOUNCE = "hard-bounce"
    INVALID_ADDRESS = "invalid-address"


def suppressed(check: Suppression | str) -> Decision:
    """The decision for a suppression check: ``suppressed(Suppression.OPT_OUT)`` → ``suppressed:opt-out``."""
    return Decision(SUPPRESSED_PREFIX + Suppression(check))


class SendState(StrEnum):
    """``tf_send.state``, the send ledger.

    pending → sending → sent | deferred (4xx, retried) | failed (5xx, render or address error);
    scheduled: quiet hours, not before ``not_before``; ambiguous: a crash left it ``sending``
    (the server may or may not have accepted it), held or resent by ``ambiguous_policy``.
    """

    PENDING = "pending"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    AMBIGUOUS = "ambiguous"


#: Ledger states whose email has not reached a final outcome yet (the SLA clock runs for them).
WAITING_STATES = (SendState.PENDING, SendState.DEFERRED, SendState.SENDING)
#: Ledger states that count against dedup windows and frequency caps (failed ones do not).
COUNTED_STATES = (
    SendState.PENDING,
    SendState.SENDING,
    SendState.SENT,
    SendState.DEFERRED,
    SendState.AMBIGUOUS,
    SendState.SCHEDULED,
)


class SendAction(StrEnum):
    """``tf_send_log.action``: what one run's try did with a ledger row."""

    SENT = "sent"
    RESENT = "resent"
    DEFERRED = "deferred"
    FAILED = "failed"
    AMBIGUOUS = "ambiguous"
    DRY_RUN = "dry-run"
    SKIPPED_SENT = "skipped-sent"
