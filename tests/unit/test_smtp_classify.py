"""include.triggerflow.smtp_replies: each reply class at each stage, enhanced codes parsed per
RFC 3463, hostile reply text made safe, and no reply bytes ever raising."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.triggerflow.smtp_replies import (
    REPLY_TEXT_LIMIT,
    ReplyClass,
    SmtpStage,
    clean_reply_text,
    mask_addresses,
    parse_enhanced,
    read_reply,
)

A, MP, MT, MR, T = (ReplyClass.ACCEPTED, ReplyClass.MAILBOX_PERMANENT, ReplyClass.MAILBOX_TRANSIENT,
                    ReplyClass.MESSAGE_REFUSED, ReplyClass.TRANSIENT)
CONNECT, MAIL, RCPT, DATA, EOD = SmtpStage


@pytest.mark.parametrize(
    ("stage", "code", "text", "enhanced", "expected"),
    [
        # the mailbox does not exist or is disabled: only at RCPT
        (RCPT, 550, "5.1.1 <bob@example.com>: Recipient address rejected: User unknown", "5.1.1", MP),
        (RCPT, 550, "5.1.10 RESOLVER.ADR.RecipientNotFound", "5.1.10", MP),
        (RCPT, 553, "5.1.3 bad destination mailbox address syntax", "5.1.3", MP),
        (RCPT, 550, "5.2.1 mailbox disabled", "5.2.1", MP),
        (RCPT, 550, "User unknown", None, MP),  # a bare 5xx at RCPT
        (RCPT, 550, "4.1.1 wrong class", None, MP),  # an enhanced code of another class is ignored
        # the mailbox cannot take mail now: defer
        (RCPT, 452, "4.2.2 Mailbox full", "4.2.2", MT),
        (RCPT, 552, "5.2.2 Mailbox full", "5.2.2", MT),
        (RCPT, 450, "4.1.1 try again", "4.1.1", MT),
        (RCPT, 451, "Greylisted, try later", None, MT),
        (EOD, 452, "4.2.2 over quota", "4.2.2", MT),
        (EOD, 552, "5.2.2 over quota", "5.2.2", MT),
        # about the message or the sender: fail the row, suppress nobody
        (MAIL, 530, "5.7.0 Authentication required", "5.7.0", MR),
        (MAIL, 553, "5.1.8 sender domain does not exist", "5.1.8", MR),
        (MAIL, 550, "Sender rejected", None, MR),
        (RCPT, 554, "5.7.1 Relay access denied", "5.7.1", MR),
        (RCPT, 553, "5.1.8 <shop@x.test>: Sender address rejected: Domain not found", "5.1.8", MR),
        (RCPT, 550, "5.1.7 bad sender mailbox syntax", "5.1.7", MR),
        (RCPT, 552, "5.3.4 message too big", "5.3.4", MR),
        (DATA, 554, "5.7.1 rejected", "5.7.1", MR),
        (DATA, 554, "Transaction failed", None, MR),
        (EOD, 552, "5.3.4 Message size exceeds fixed limit", "5.3.4", MR),
        (EOD, 550, "5.7.26 Unauthenticated email is not accepted (DMARC)", "5.7.26", MR),
        (EOD, 554, "5.6.0 content rejected", "5.6.0", MR),
        (EOD, 550, "5.1.1 unknown user", "5.1.1", MR),  # not at RCPT: not proof the mailbox is gone
        (EOD, 554, "rejected", None, MR),
        (CONNECT, 554, "5.7.1 no service for you", "5.7.1", MR),
        # any other temporary failure
        (MAIL, 421, "4.7.0 too many connections", "4.7.0", T),
        (EOD, 451, "4.3.0 try later", "4.3.0", T),
        (DATA, 451, "local error", None, T),
        (CONNECT, 421, "service not available", None, T),
        (EOD, -1, "garbage", None, T),
        (RCPT, 354, "go on", None, T),  # a 3xx where none belongs
        (EOD, None, "", None, T),
        # accepted
        (EOD, 250, "2.0.0 Ok: queued as 4F", "2.0.0", A),
        (RCPT, 251, "2.1.5 will forward", "2.1.5", A),
        (DATA, 354, "End data with <CR><LF>.<CR><LF>", None, A),
    ],
)
def test_reply_classes(stage: SmtpStage, code: int | None, text: str, enhanced: str | None, expected: ReplyClass) -> None:
    outcome = read_reply(stage, code, text.encode())
    assert (outcome.enhanced, outcome.reply_class) == (enhanced, expected)
    assert outcome.accepted is (expected is A)
    assert outcome.stage is stage and outcome.code == code


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (550, "5.1.1 x", "5.1.1"),
        (550, "  5.1.1 leading spaces", "5.1.1"),
        (550, "5.001.010 leading zeros", "5.1.10"),
        (550, "5.1.1000 detail too long", None),
        (550, "5.1 incomplete", None),
        (550, "x 5.1.1 not at the start", None),
        (550, "5.1.1.2 four parts", None),
        (450, "5.1.1 class disagrees", None),
        (550, "3.1.1 no such class", None),
    ],
)
def test_enhanced_codes_are_read_from_the_start_of_the_text(code: int, text: str, expected: str | None) -> None:
    assert parse_enhanced(code, text) == expected


def test_reply_text_is_printable_one_line_and_capped() -> None:
    hostile = b"5.7.1 bad\x00\x1b[31m\r\n\xff\xfe next\xe2\x80\xae line\xe2\x80\x8b\tend"
    assert clean_reply_text(hostile) == "5.7.1 bad[31m \ufffd\ufffd next line end"
    long = clean_reply_text("x" * 10_000)
    assert len(long) == REPLY_TEXT_LIMIT and long.endswith(" [truncated]")
    assert clean_reply_text(None) == ""
    assert read_reply(EOD, 554, b"5.7.1 \x00" + b"y" * 5000).reply.startswith("5.7.1 yyy")


def test_summary_names_class_stage_code_and_text() -> None:
    assert read_reply(EOD, 554, b"5.7.1 rejected").summary() == "message-refused at end-of-data: 554 5.7.1 rejected"
    assert read_reply(RCPT, 550, b"5.1.1 a@b.example: unknown").refusal_key == ("rcpt", 550, "5.1.1")


def test_a_summary_reads_back_as_its_outcome() -> None:
    from include.triggerflow.smtp_replies import outcome_from_summary

    for outcome in (read_reply(EOD, 554, b"5.7.1 rejected: see http://x.test/a?b=c"), read_reply(MAIL, 530, b"no"),
                    read_reply(RCPT, 550, b"5.1.1 unknown")):
        assert outcome_from_summary(outcome.summary()) == outcome
    assert outcome_from_summary("session failed; will retry") is None
    assert outcome_from_summary("nonsense at rcpt: 550 x") is None


def test_addresses_are_masked() -> None:
    assert mask_addresses("5.1.1 <Bob.Smith+x@Example.COM>: unknown, also c@d.e") == "5.1.1 <<address>>: unknown, also <address>"


@settings(max_examples=300, deadline=None)
@given(
    stage=st.sampled_from(list(SmtpStage)),
    code=st.one_of(st.none(), st.integers(min_value=-(2**70), max_value=2**70)),
    raw=st.one_of(st.binary(max_size=3000), st.text(max_size=3000)),
)
def test_any_reply_is_classified_without_raising(stage: SmtpStage, code: int | None, raw: bytes | str) -> None:
    outcome = read_reply(stage, code, raw)
    assert isinstance(outcome.reply_class, ReplyClass)
    assert len(outcome.reply) <= REPLY_TEXT_LIMIT
    # storable on both stores and printable on one line
    assert "\x00" not in outcome.reply and "\n" not in outcome.reply and "\r" not in outcome.reply
    outcome.reply.encode("utf-8")
    if outcome.accepted:
        assert code is not None and (200 <= code < 300 or (code == 354 and stage is DATA))
    if outcome.reply_class is ReplyClass.MAILBOX_PERMANENT:
        assert stage is RCPT and code is not None and 500 <= code <= 599
