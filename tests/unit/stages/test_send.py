"""Tests for include.triggerflow.stages.send over a fake session (the MailSession protocol): the
ledger's states, the send log, every SMTP reply and session failure, run options. The same against
the real SMTP sink through TriggerMailHook: tests/integration/stages/test_send.py."""

from __future__ import annotations

import email
import smtplib
from contextlib import contextmanager
from email import policy
from email.message import EmailMessage

import pytest
from sqlalchemy import update

from include.triggerflow.mailer import message_id_for
from include.triggerflow.render import Renderer
from include.triggerflow.smtp_replies import SmtpOutcome, SmtpStage, accepted, read_reply
from include.triggerflow.stages.reconcile import reconcile_batch
from include.triggerflow.stages.send import SendResult
from include.triggerflow.store.schema import send
from tests.fixtures import (
    FROM_EMAIL,
    FROM_NAME,
    SEND_PROFILES,
    envelope_json,
    ledger_rows,
    ledger_states,
    queue_emails,
    send_chunk,
)
from tests.fixtures import (
    chunk_counts as C,
)
from tests.fixtures import (
    set_ledger_state as set_state,
)

PROFILES = SEND_PROFILES


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


queue = queue_emails
ledger = ledger_rows
states = ledger_states




# -- the fake session ----------------------------------------------------------------------------------
class FakeSession:
    """Implements the MailSession protocol send_chunk uses (sender, from_name, message_id_domain,
    send_prepared): accepts every message unless told otherwise, keeps what it was given."""

    sender = FROM_EMAIL
    from_name = None
    message_id_domain = "mail.example.test"

    def __init__(self, outcomes: dict[str, SmtpOutcome]) -> None:
        self.outcomes = outcomes
        self.sent: list[tuple[str, bytes]] = []

    def send_prepared(self, recipient: str, message: bytes) -> SmtpOutcome:
        self.sent.append((recipient, message))
        return self.outcomes.get(recipient, accepted())

    def opener(self):
        @contextmanager
        def open_session():
            yield self
        return open_session

    def messages(self) -> list[EmailMessage]:
        parsed = [email.message_from_bytes(m, policy=policy.default) for _, m in self.sent]
        assert all(isinstance(m, EmailMessage) for m in parsed)
        return parsed  # type: ignore[return-value]


class Relay(FakeSession):
    """The connection ``smtp_triggers`` of the sink tests, as a fake: its sender and display name."""

    sender = FROM_EMAIL
    from_name = FROM_NAME
    message_id_domain = "triggerflow.local"

    def __init__(self, outcomes: dict[str, SmtpOutcome] | None = None, *, break_before: int | None = None) -> None:
        super().__init__(outcomes or {})
        self.break_before = break_before
        self.calls = 0

    def send_prepared(self, recipient: str, message: bytes) -> SmtpOutcome:
        self.calls += 1
        if self.calls == self.break_before:  # the relay dropped the connection
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        return super().send_prepared(recipient, message)


def test_pending_rows_are_sent_and_recorded(kit, routing, renderer) -> None:
    rows = queue(kit, routing)
    relay = Relay()

    result = send_chunk(kit.engine, "b1", 0, routing, renderer, relay.opener())

    assert result == SendResult(batch_id="b1", chunk=0, counts=C(sent=3, deferred=0, failed=0, ambiguous=0))
    after = ledger(kit)
    for before, row in zip(rows, after, strict=True):
        assert row["state"] == "sent"
        assert row["message_id"] == message_id_for(before["idempotency_key"], "triggerflow.local")
        assert row["sent_at"] is not None
        assert (row["smtp_code"], row["smtp_reply"], row["attempts"]) == (250, "accepted", 1)
    assert [r["subject"] for r in after] == [
        "Ada, you left something in your cart", "Grace, you left something in your cart",
        "Donald, you left something in your cart",
    ]
    mails = relay.messages()
    assert sorted(m["To"] for m in mails) == ["ada@example.com", "donald@example.com", "grace@example.com"]
    assert [r for r, _ in relay.sent] == [m["To"] for m in mails]  # envelope recipient = To
    ada = {m["To"]: m for m in mails}["ada@example.com"]
    assert ada["From"] == f"{FROM_NAME} <{FROM_EMAIL}>"
    assert ada["Message-ID"] == after[0]["message_id"]
    assert ada["X-Triggerflow-Key"].strip() == rows[0]["idempotency_key"]  # folded: 64 hex chars
    assert ada["Subject"] == "Ada, you left something in your cart"
    body = ada.get_body(preferencelist=("plain",))
    assert body is not None and "Alpine Shell Waterproof Jacket" in body.get_content()


def test_second_call_sends_nothing_new(kit, routing, renderer) -> None:
    queue(kit, routing)
    relay = Relay()
    send_chunk(kit.engine, "b1", 0, routing, renderer, relay.opener())
    sent_before = ledger(kit)

    again = send_chunk(kit.engine, "b1", 0, routing, renderer, relay.opener())

    assert again.counts == C(skipped_already_sent=3)
    assert len(relay.sent) == 3
    assert ledger(kit) == sent_before


def test_a_row_left_sending_becomes_ambiguous_and_is_not_sent(kit, routing, renderer) -> None:
    rows = queue(kit, routing)
    set_state(kit, rows[1]["send_id"], "sending")  # a process died mid-SMTP on this one
    relay = Relay()

    result = send_chunk(kit.engine, "b1", 0, routing, renderer, relay.opener())

    assert result.counts == C(sent=2, deferred=0, failed=0, ambiguous=1)
    assert states(kit) == {"ada@example.com": "sent", "grace@example.com": "ambiguous", "donald@example.com": "sent"}
    assert ledger(kit)[1]["smtp_reply"] == "process died during the SMTP transaction"
    assert [r for r, _ in relay.sent] == ["ada@example.com", "donald@example.com"]
    # and it stays unsent on later calls
    assert send_chunk(kit.engine, "b1", 0, routing, renderer, relay.opener()).counts["sent"] == 0
    assert len(relay.sent) == 2


def test_invalid_profile_address_fails_that_row_only(kit, routing, renderer) -> None:
    queue(kit, routing, PROFILES)
    # Reconciliation suppresses invalid addresses; a ledger row holding one fails at send time.
    with kit.engine.begin() as conn:
        conn.execute(update(send).where(send.c.recipient == PROFILES[1]["email"]).values(recipient="grace at example.com"))
    relay = Relay()

    result = send_chunk(kit.engine, "b1", 0, routing, renderer, relay.opener())

    assert result.counts == C(sent=2, deferred=0, failed=1, ambiguous=0)
    failed = [r for r in ledger(kit) if r["state"] == "failed"]
    assert len(failed) == 1
    assert failed[0]["smtp_reply"].startswith("InvalidAddressError: invalid email address 'grace at example.com'")
    assert failed[0]["smtp_code"] is None and failed[0]["sent_at"] is None and failed[0]["attempts"] == 0
    assert [r for r, _ in relay.sent] == ["ada@example.com", "donald@example.com"]


def test_a_route_gone_from_the_config_fails_with_a_render_error(kit, routing, renderer, tmp_path) -> None:
    from include.triggerflow.config import load_routing
    from tests.fixtures import write_routing

    queue(kit, routing, PROFILES[:1])
    only_browse = load_routing(write_routing(tmp_path / "routing.yaml", [{
        "name": "browse_abandonment", "trigger_id": "9e4b1f27-6c3d-4a8e-b2f5-0d7c8a6e3b02",
        "template": "browse_abandonment", "subject": "Hi",
        "identity": {"dimension": "eVar01", "profile_column": "shopper_id"},
    }]))
    relay = Relay()
    result = send_chunk(kit.engine, "b1", 0, only_browse, renderer, relay.opener())
    assert result.counts["failed"] == 1
    assert ledger(kit)[0]["smtp_reply"] == "TemplateRenderError: route 'cart_abandonment' is no longer in the routing config"
    assert relay.sent == []


def test_only_the_given_chunk_is_sent(kit, routing, renderer) -> None:
    kit.add_profiles(*PROFILES)
    kit.add_batch("b1")
    for p in PROFILES:
        kit.add_event("b1", envelope_json(shopper_id=p["shopper_id"]))
    assert reconcile_batch(kit.engine, "b1", routing, chunk_size=1, max_chunks=2).chunks == [0, 1]
    relay = Relay()

    result = send_chunk(kit.engine, "b1", 1, routing, renderer, relay.opener())

    assert result.counts["sent"] == 1
    assert {r["chunk"]: r["state"] for r in ledger(kit) if r["chunk"] == 1} == {1: "sent"}
    assert sorted(r["state"] for r in ledger(kit) if r["chunk"] == 0) == ["pending", "pending"]
    assert [r for r, _ in relay.sent] == ["grace@example.com"]


class NoSender(Relay):
    @property  # type: ignore[override]
    def sender(self) -> str:
        raise ValueError("connection 'smtp_triggers': set extra.from_email (the From address)")


@pytest.mark.parametrize(
    ("session", "error"),
    [
        (NoSender, "connection 'smtp_triggers': set extra.from_email"),
        (type("BadFrom", (Relay,), {"sender": "shop at example.com"}), "invalid email address 'shop at example.com'"),
        (type("BadDomain", (Relay,), {"message_id_domain": "localhost"}), "Message-ID domain 'localhost' is not a dotted domain name"),
        (type("Injected", (Relay,), {"from_name": "Shop\r\nBcc: x@evil.test"}), "header From: value contains CR, LF or NUL"),
    ],
    ids=["no-from-email", "bad-from-email", "bad-message-id-domain", "injected-from-name"],
)
def test_a_connection_mistake_fails_the_task_and_leaves_rows_pending(kit, routing, renderer, session, error: str) -> None:
    """A connection mistake is not a property of the emails: no row may be marked failed for it."""
    queue(kit, routing)
    relay = session()

    with pytest.raises(ValueError, match=error):
        send_chunk(kit.engine, "b1", 0, routing, renderer, relay.opener())

    assert set(states(kit).values()) == {"pending"}
    assert relay.sent == []


def test_session_failure_mid_chunk_keeps_sent_rows_and_requeues_the_failing_one(kit, routing, renderer) -> None:
    queue(kit, routing)
    relay = Relay(break_before=2)

    with pytest.raises(smtplib.SMTPServerDisconnected):
        send_chunk(kit.engine, "b1", 0, routing, renderer, relay.opener())

    rows = ledger(kit)
    assert [r["state"] for r in rows] == ["sent", "pending", "pending"]
    assert (rows[1]["smtp_reply"], rows[1]["attempts"]) == ("session failed; will retry", 1)
    assert rows[2]["attempts"] == 0
    assert [r for r, _ in relay.sent] == ["ada@example.com"]

    # Airflow's retry sends the rest, and nothing twice.
    retry = Relay()
    assert send_chunk(kit.engine, "b1", 0, routing, renderer, retry.opener()).counts == C(sent=2, skipped_already_sent=1)
    assert [r for r, _ in retry.sent] == ["grace@example.com", "donald@example.com"]
    assert [r["attempts"] for r in ledger(kit)] == [1, 2, 1]


# -- replies the sink cannot give ----------------------------------------------------------------------


def test_4xx_defers_and_a_mailbox_5xx_fails_and_deferred_rows_are_retried(kit, routing, renderer) -> None:
    queue(kit, routing)
    session = FakeSession({
        "ada@example.com": read_reply(SmtpStage.RCPT, 451, "4.7.1 try again later"),
        "grace@example.com": read_reply(SmtpStage.RCPT, 550, "5.1.1 no such user"),
    })

    result = send_chunk(kit.engine, "b1", 0, routing, renderer, session.opener())

    assert result.counts == C(sent=1, deferred=1, failed=1, ambiguous=0)
    rows = {r["recipient"]: r for r in ledger(kit)}
    assert (rows["ada@example.com"]["state"], rows["ada@example.com"]["smtp_code"], rows["ada@example.com"]["smtp_reply"]) == (
        "deferred", 451, "mailbox-transient at rcpt: 451 4.7.1 try again later"
    )
    assert (rows["grace@example.com"]["state"], rows["grace@example.com"]["smtp_code"]) == ("failed", 550)
    assert rows["donald@example.com"]["message_id"].endswith("@mail.example.test>")
    assert [r for r, _ in session.sent] == ["ada@example.com", "grace@example.com", "donald@example.com"]

    # the deferred row (only) goes out on the next try
    later = FakeSession({})
    assert send_chunk(kit.engine, "b1", 0, routing, renderer, later.opener()).counts["sent"] == 1
    assert [r for r, _ in later.sent] == ["ada@example.com"]
    assert states(kit) == {"ada@example.com": "sent", "grace@example.com": "failed", "donald@example.com": "sent"}
    # the retried message is the same message: same Message-ID
    first_try = next(m for r, m in session.sent if r == "ada@example.com")
    assert first_try.split(b"Message-ID: ")[1].split(b"\r\n")[0] == later.sent[0][1].split(b"Message-ID: ")[1].split(b"\r\n")[0]


def test_no_session_is_opened_when_there_is_nothing_to_send(kit, routing, renderer) -> None:
    kit.add_batch("b1")
    opened: list[bool] = []

    @contextmanager
    def open_session():
        opened.append(True)
        yield FakeSession({})

    result = send_chunk(kit.engine, "b1", 0, routing, renderer, open_session)
    assert result.as_xcom() == {"batch_id": "b1", "chunk": 0, "counts": C(sent=0, deferred=0, failed=0, ambiguous=0)}
    assert opened == []


# -- run options: retries, suppression, dry runs, resends, ambiguous policy ------------------------------
def log_actions(kit, batch_id: str = "b1") -> list[tuple[str, str | None]]:
    from include.triggerflow.store.schema import send_log

    return sorted((r["action"], r["run_id"]) for r in kit.rows(send_log) if r["batch_id"] == batch_id)


def test_deferrals_raise_for_a_retry_unless_it_is_the_last_try(kit, routing, renderer) -> None:
    from include.triggerflow.stages.send import DeferredRecipients, SendOptions

    queue(kit, routing)
    busy = FakeSession({"ada@example.com": read_reply(SmtpStage.RCPT, 452, "4.3.1 busy")})
    with pytest.raises(DeferredRecipients, match="1 recipient\\(s\\) answered 4xx"):
        send_chunk(kit.engine, "b1", 0, routing, renderer, busy.opener(), SendOptions(run_id="r", try_number=1, last_try=False))
    # everything else was recorded before the raise
    assert states(kit) == {"ada@example.com": "deferred", "grace@example.com": "sent", "donald@example.com": "sent"}
    still_busy = FakeSession({"ada@example.com": read_reply(SmtpStage.RCPT, 452, "4.3.1 busy")})
    last = send_chunk(kit.engine, "b1", 0, routing, renderer, still_busy.opener(), SendOptions(run_id="r", try_number=4, last_try=True))
    assert last.counts == C(deferred=1, skipped_already_sent=2)
    assert [r for r, _ in still_busy.sent] == ["ada@example.com"]


def test_a_mailbox_unknown_at_rcpt_suppresses_the_address_for_later_triggers(kit, routing, renderer) -> None:
    from include.triggerflow.store.schema import decision, suppression

    queue(kit, routing)
    bounce = FakeSession({"grace@example.com": read_reply(SmtpStage.RCPT, 550, "5.1.1 user unknown")})
    send_chunk(kit.engine, "b1", 0, routing, renderer, bounce.opener())
    assert [(r["address"], r["source"], r["smtp_code"]) for r in kit.rows(suppression)] == [("grace@example.com", "hard-bounce", 550)]

    b2 = kit.add_batch("b2")
    kit.add_event(b2, envelope_json(shopper_id="SHOP-2", products=["ALP-SHL-JKT"]))
    reconcile_batch(kit.engine, b2, routing)
    decided = [r for r in kit.rows(decision) if r["batch_id"] == "b2"]
    assert [(d["decision"], d["profile_id"]) for d in decided] == [("suppressed:hard-bounce", "C2")]
    assert ledger(kit, "b2") == []


def test_dry_run_writes_files_records_them_and_sends_nothing(kit, routing, renderer, tmp_path) -> None:
    from include.triggerflow.stages.send import SendOptions
    from include.triggerflow.store.schema import dry_run

    queue(kit, routing)
    never = FakeSession({})
    result = send_chunk(
        kit.engine, "b1", 0, routing, renderer, never.opener(),
        SendOptions(run_id="dry", dry_run=True, dry_run_dir=tmp_path / "dry"),
    )
    assert result.counts == C(dry_run=3)
    assert never.sent == []
    files = sorted((tmp_path / "dry" / "b1").glob("*.eml"))
    assert len(files) == 3 and b"Subject: Ada, you left something in your cart" in b"".join(f.read_bytes() for f in files)
    assert set(states(kit).values()) == {"pending"}
    assert sorted(r["path"] for r in kit.rows(dry_run)) == sorted(str(f) for f in files)
    assert log_actions(kit) == [("dry-run", "dry")] * 3


def test_force_resend_sends_again_with_a_new_message_id_and_logs_it(kit, routing, renderer) -> None:
    from include.triggerflow.stages.send import SendOptions

    queue(kit, routing)
    first = FakeSession({})
    send_chunk(kit.engine, "b1", 0, routing, renderer, first.opener(), SendOptions(run_id="r1"))
    again = FakeSession({})
    result = send_chunk(kit.engine, "b1", 0, routing, renderer, again.opener(), SendOptions(run_id="r2", force_resend=True))
    assert result.counts == C(resent=3)
    ids = lambda s: {m.split(b"Message-ID: ")[1].split(b"\r\n")[0] for _, m in s.sent}  # noqa: E731
    assert len(ids(again)) == 3 and ids(again).isdisjoint(ids(first))
    assert all(r["resend"] for r in ledger(kit))
    assert [a for a, run in log_actions(kit) if run == "r2"] == ["resent"] * 3


@pytest.mark.parametrize("policy, sent_again", [("hold", False), ("resend", True)])
def test_ambiguous_policy(kit, routing, renderer, policy: str, sent_again: bool) -> None:
    from include.triggerflow.stages.send import SendOptions

    rows = queue(kit, routing)
    set_state(kit, rows[0]["send_id"], "sending")  # a process died during this row's SMTP transaction
    session = FakeSession({})
    result = send_chunk(kit.engine, "b1", 0, routing, renderer, session.opener(), SendOptions(run_id="r", ambiguous_policy=policy))
    recipients = [r for r, _ in session.sent]
    assert (rows[0]["recipient"] in recipients) is sent_again
    assert result.counts["ambiguous"] == 1
    assert result.counts["resent" if sent_again else "sent"] == (1 if sent_again else 2)
    actions = [a for a, _ in log_actions(kit)]
    assert actions.count("ambiguous") == 1 and (actions.count("resent") == 1) is sent_again
    if sent_again:  # same Message-ID as the first attempt would have had: receivers can deduplicate
        msg = next(m for r, m in session.sent if r == rows[0]["recipient"])
        assert message_id_for(rows[0]["idempotency_key"], FakeSession.message_id_domain).encode() in msg
    else:
        assert states(kit)[rows[0]["recipient"]] == "ambiguous"
