"""The send stage against the real SMTP sink process answering every reply class at every stage,
and dropping the connection on both sides of the end of DATA. Each test checks the ledger rows'
states, the suppression table, and what the sink really stored. Runs on SQLite, and on PostgreSQL
with TRIGGERFLOW_TEST_PG_URL set."""

from __future__ import annotations

import smtplib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from devstack.processes import RunningSmtpSink
from include.triggerflow.hooks.smtp import DeliveryUncertain, TriggerMailHook
from include.triggerflow.mailer import message_id_for
from include.triggerflow.render import Renderer
from include.triggerflow.stages.reconcile import reconcile_batch
from include.triggerflow.stages.send import RelayRefusing, SendOptions
from include.triggerflow.store.schema import decision, send_log, suppression
from tests.fixtures import (
    SEND_PROFILES,
    envelope_json,
    ledger_rows,
    ledger_states,
    queue_emails,
    send_chunk,
)

PROFILES = SEND_PROFILES
GRACE = "grace@example.com"


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


@pytest.fixture
def sink(smtp: RunningSmtpSink) -> RunningSmtpSink:
    smtp.set_faults([])
    return smtp


queue = queue_emails
rows = ledger_rows
states = ledger_states


def delivered(sink: RunningSmtpSink) -> list[str]:
    return sorted(m["X-Envelope-To"] for m in sink.messages())


# -- each class at each stage ------------------------------------------------------------------------
CASES = [
    # rule for grace, her row's state, suppressed?, the stored reply
    ({"rcpt": GRACE, "code": 550, "message": "5.1.1 <grace@example.com>: Recipient address rejected: User unknown"},
     "failed", True, "mailbox-permanent at rcpt: 550 5.1.1 <grace@example.com>: Recipient address rejected: User unknown"),
    ({"rcpt": GRACE, "code": 550, "message": "User unknown"}, "failed", True, "mailbox-permanent at rcpt: 550 User unknown"),
    ({"rcpt": GRACE, "code": 452, "message": "4.2.2 Mailbox full"}, "deferred", False, "mailbox-transient at rcpt: 452 4.2.2 Mailbox full"),
    ({"rcpt": GRACE, "code": 552, "message": "5.2.2 Mailbox full"}, "deferred", False, "mailbox-transient at rcpt: 552 5.2.2 Mailbox full"),
    ({"rcpt": GRACE, "code": 450, "message": "Greylisted"}, "deferred", False, "mailbox-transient at rcpt: 450 Greylisted"),
    ({"rcpt": GRACE, "code": 554, "message": "5.7.1 Relay access denied"}, "failed", False,
     "message-refused at rcpt: 554 5.7.1 Relay access denied"),
    ({"data_command_code": 554, "message": "5.7.1 Message refused", "rcpt": GRACE}, "failed", False,
     "message-refused at data: 554 5.7.1 Message refused"),
    ({"data_command_code": 554, "message": "Transaction failed", "rcpt": GRACE}, "failed", False,
     "message-refused at data: 554 Transaction failed"),
    ({"data_code": 552, "message": "5.3.4 Message size exceeds fixed limit", "rcpt": GRACE}, "failed", False,
     "message-refused at end-of-data: 552 5.3.4 Message size exceeds fixed limit"),
    ({"data_code": 550, "message": "Message rejected", "rcpt": GRACE}, "failed", False,
     "message-refused at end-of-data: 550 Message rejected"),
    ({"data_code": 451, "message": "4.3.0 Try again later", "rcpt": GRACE}, "deferred", False,
     "transient at end-of-data: 451 4.3.0 Try again later"),
]


@pytest.mark.parametrize(("rule", "state", "suppressed", "reply"), CASES,
                         ids=["rcpt-550-5.1.1", "rcpt-550-bare", "rcpt-452-4.2.2", "rcpt-552-5.2.2", "rcpt-450-bare",
                              "rcpt-554-5.7.1", "data-554-5.7.1", "data-554-bare", "eod-552-5.3.4", "eod-550-bare",
                              "eod-451-4.3.0"])
def test_each_reply_class_gives_its_state_and_only_mailbox_failures_suppress(
    kit, routing, sink, renderer, rule: dict, state: str, suppressed: bool, reply: str
) -> None:
    queue(kit, routing)
    sink.set_faults([rule])

    result = send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook, SendOptions(run_id="r1", try_number=1))

    assert states(kit) == {"ada@example.com": "sent", GRACE: state, "donald@example.com": "sent"}
    grace = next(r for r in rows(kit) if r["recipient"] == GRACE)
    assert (grace["smtp_code"], grace["smtp_reply"]) == (int(reply.split(": ")[1].split()[0]), reply)
    assert result.counts["failed" if state == "failed" else "deferred"] == 1
    assert delivered(sink) == ["ada@example.com", "donald@example.com"]
    entries = kit.rows(suppression)
    if suppressed:
        assert [(e["address"], e["source"], e["batch_id"], e["expires_at"]) for e in entries] == [(GRACE, "hard-bounce", "b1", None)]
    else:
        assert entries == []


def test_a_refused_sender_at_mail_from_fails_the_row_and_suppresses_nobody(kit, routing, sink, renderer) -> None:
    queue(kit, routing)
    # a MAIL FROM rule has no recipient to match: it answers the first email's, ada's
    sink.set_faults([{"mail_code": 530, "message": "5.7.0 Authentication required", "times": 1}])

    send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook)

    got = {r["recipient"]: (r["state"], r["smtp_reply"]) for r in rows(kit)}
    assert got["ada@example.com"] == ("failed", "message-refused at mail: 530 5.7.0 Authentication required")
    assert [s for s, _ in got.values()] == ["failed", "sent", "sent"]
    assert kit.rows(suppression) == []


# -- the same message-level refusal again and again: an incident, not bounces --------------------------
@pytest.mark.parametrize(
    "rule",
    [
        {"data_code": 554, "message": "5.7.1 Message rejected by the content filter, see <postmaster@relay.test>"},
        {"mail_code": 530, "message": "5.7.0 Authentication required"},
        {"rcpt_domain": "example.com", "code": 554, "message": "5.7.1 Relay access denied"},
    ],
    ids=["end-of-data-554", "mail-530", "rcpt-554-relay"],
)
def test_a_repeated_message_refusal_stops_the_chunk_and_suppresses_nobody(kit, routing, sink, renderer, rule) -> None:
    profiles = [
        {"customer_id": f"C{i}", "email": f"c{i}@example.com", "first_name": f"N{i}", "shopper_id": f"SHOP-{i}"}
        for i in range(8)
    ]
    queue(kit, routing, profiles)
    sink.set_faults([rule])

    with pytest.raises(RelayRefusing) as stopped:
        send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook, SendOptions(run_id="r1", refusal_limit=3))

    text = str(stopped.value)
    assert "the relay or the message is being refused" in text and "nobody was suppressed" in text
    assert "5 email(s) left pending" in text
    assert "@" not in text  # no address, not even the one the server quoted
    assert [r["state"] for r in rows(kit)] == ["failed"] * 3 + ["pending"] * 5
    assert kit.rows(suppression) == []
    assert sink.eml_paths() == []

    # Airflow's retry, still refused: it stops at its first refusal (one email probes the relay)
    with pytest.raises(RelayRefusing, match="4 email\\(s\\) left pending"):
        send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook, SendOptions(run_id="r1", refusal_limit=3))
    assert [r["state"] for r in rows(kit)] == ["failed"] * 4 + ["pending"] * 4

    # fixed: the next retry sends the rest
    sink.set_faults([])
    retry = send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook, SendOptions(run_id="r1", refusal_limit=3))
    assert retry.counts["sent"] == 4
    assert len(delivered(sink)) == 4
    assert kit.rows(suppression) == []


def test_different_refusals_each_below_the_limit_do_not_stop_the_chunk(kit, routing, sink, renderer) -> None:
    queue(kit, routing)
    sink.set_faults([
        {"data_code": 554, "message": "5.7.1 spam", "rcpt": "ada@example.com"},
        {"data_code": 552, "message": "5.3.4 too big", "rcpt": GRACE},
    ])
    result = send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook, SendOptions(refusal_limit=2))
    assert result.counts["failed"] == 2 and result.counts["sent"] == 1


# -- hard-bounce expiry --------------------------------------------------------------------------------
def test_hard_bounce_expiry_and_an_expired_entry_no_longer_suppresses(kit, routing, sink, renderer) -> None:
    queue(kit, routing)
    sink.set_faults([{"rcpt": GRACE, "code": 550, "message": "5.1.1 unknown"}])
    before = datetime.now(UTC)
    send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook, SendOptions(hard_bounce_suppress_days=30))
    after = datetime.now(UTC)
    [entry] = kit.rows(suppression)
    expires = entry["expires_at"] if entry["expires_at"].tzinfo else entry["expires_at"].replace(tzinfo=UTC)
    assert before + timedelta(days=30) <= expires <= after + timedelta(days=30)

    # while it lasts, a new trigger for grace is suppressed
    kit.add_batch("b2")
    kit.add_event("b2", envelope_json(shopper_id="SHOP-2", offset=2))
    reconcile_batch(kit.engine, "b2", routing)
    assert [d["decision"] for d in kit.rows(decision, decision.c.batch_id == "b2")] == ["suppressed:hard-bounce"]

    # once expired it suppresses nobody, and a new bounce renews it
    with kit.engine.begin() as conn:
        conn.execute(update(suppression).values(expires_at=before - timedelta(days=1)))
    kit.add_batch("b3")
    kit.add_event("b3", envelope_json(shopper_id="SHOP-2", offset=3, products=["ALP-SHL-JKT"]))
    reconcile_batch(kit.engine, "b3", routing)
    assert [d["decision"] for d in kit.rows(decision, decision.c.batch_id == "b3")] != ["suppressed:hard-bounce"]
    assert [r["recipient"] for r in rows(kit, "b3")] == [GRACE]
    send_chunk(kit.engine, "b3", 0, routing, renderer, TriggerMailHook)
    [renewed] = kit.rows(suppression)
    assert (renewed["batch_id"], renewed["expires_at"]) == ("b3", None)


# -- both sides of the end-of-DATA line -----------------------------------------------------------------
@pytest.mark.parametrize("policy", ["hold", "resend"])
def test_a_drop_after_the_final_dot_makes_the_row_ambiguous(kit, routing, sink, renderer, policy: str) -> None:
    before = queue(kit, routing)
    sink.set_faults([{"drop_at": "end_of_data", "rcpt": GRACE, "times": 1}])

    with pytest.raises(DeliveryUncertain):
        send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook, SendOptions(run_id="r1", ambiguous_policy=policy))

    assert states(kit) == {"ada@example.com": "sent", GRACE: "ambiguous", "donald@example.com": "pending"}
    grace = next(r for r in rows(kit) if r["recipient"] == GRACE)
    assert "the message may have been queued" in grace["smtp_reply"]
    assert delivered(sink) == ["ada@example.com", GRACE]  # the server did queue it
    assert [r["action"] for r in kit.rows(send_log, send_log.c.send_id == grace["send_id"])] == ["ambiguous"]

    # Airflow's retry: donald goes out; grace only with policy resend, with her first Message-ID
    send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook, SendOptions(run_id="r1", ambiguous_policy=policy))
    to_grace = [m for m in sink.messages() if m["X-Envelope-To"] == GRACE]
    if policy == "hold":
        assert states(kit) == {"ada@example.com": "sent", GRACE: "ambiguous", "donald@example.com": "sent"}
        assert len(to_grace) == 1
    else:
        assert states(kit) == {"ada@example.com": "sent", GRACE: "sent", "donald@example.com": "sent"}
        key = next(r for r in before if r["recipient"] == GRACE)["idempotency_key"]
        assert [m["Message-ID"] for m in to_grace] == [message_id_for(key, "triggerflow.local")] * 2


@pytest.mark.parametrize("where", ["data_command", "mid_data_small_message"])
def test_a_drop_before_the_end_of_data_puts_the_row_back_to_pending(kit, routing, sink, renderer, where: str) -> None:
    queue(kit, routing)
    if where == "data_command":
        sink.set_faults([{"drop_at": "data_command", "rcpt": GRACE, "times": 1}])
        with pytest.raises(smtplib.SMTPServerDisconnected) as broke:
            send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook)
        assert not isinstance(broke.value, DeliveryUncertain)
        assert states(kit) == {"ada@example.com": "sent", GRACE: "pending", "donald@example.com": "pending"}
        retry = send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook)
        assert retry.counts["sent"] == 2
        assert delivered(sink) == ["ada@example.com", "donald@example.com", GRACE]
    else:
        # A small email is wholly written, final "." included, before the server resets: seen from
        # the client that is the RFC 1047 window, so it is ambiguous rather than risk a duplicate.
        sink.set_faults([{"drop_at": "mid_data", "rcpt": GRACE, "times": 1}])
        with pytest.raises(DeliveryUncertain):
            send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook)
        assert states(kit)[GRACE] == "ambiguous"
        assert delivered(sink) == ["ada@example.com"]


def test_the_hook_reads_a_break_mid_data_as_a_safe_resend(sink) -> None:
    """A break while the message is still being written: the final "." never left, the server
    cannot have the message. (A 16 MB message outlasts the socket buffers, so the reset comes while
    the client still writes.)"""
    sink.set_faults([{"drop_at": "mid_data", "times": 1}])
    big = b"Subject: big\r\n\r\n" + (b"a" * 998 + b"\r\n") * 16_000
    with TriggerMailHook() as mail, pytest.raises(smtplib.SMTPServerDisconnected) as broke:
        mail.send_prepared("big@example.com", big)
    assert not isinstance(broke.value, DeliveryUncertain)
    assert sink.eml_paths() == []


# -- one email's own problem fails that email only -----------------------------------------------------
def test_an_email_over_the_size_cap_fails_with_the_size_and_the_chunk_goes_on(kit, routing, sink, renderer) -> None:
    queue(kit, routing)
    sent = send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook, SendOptions(max_email_bytes=1_000))
    assert (sent.counts["failed"], sent.counts["sent"]) == (3, 0)
    assert {r["smtp_reply"].split(" (")[0] for r in rows(kit)} == {"EmailTooLargeError: email larger than 1000 bytes"}
    assert sink.eml_paths() == []
    assert [r["action"] for r in kit.rows(send_log)] == ["failed"] * 3
