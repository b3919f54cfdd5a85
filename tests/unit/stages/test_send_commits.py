"""The send stage's one commit per email keeps the exactly-once invariant.

The outcome of email i is committed with the ``sending`` mark of email i + 1. Whenever an SMTP
transaction starts, what another connection reads from the store must be: every earlier row in
its final state (with its tf_send_log row), this row ``sending``, every later row ``pending``. A
process that dies anywhere leaves at most one row ``sending``."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import select

from include.triggerflow.hooks.smtp import SmtpOutcome
from include.triggerflow.render import Renderer
from include.triggerflow.smtp_replies import SmtpStage, accepted, read_reply
from include.triggerflow.stages.reconcile import reconcile_batch
from include.triggerflow.store.schema import send, send_log, suppression
from tests.fixtures import FROM_EMAIL, envelope_json, send_chunk

PROFILES = [
    {"customer_id": f"C{i}", "email": f"c{i}@example.com", "first_name": f"N{i}", "shopper_id": f"SHOP-{i}"}
    for i in range(6)
]
ACCEPTED = accepted()


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def queue(kit, routing) -> list[dict[str, Any]]:
    kit.add_profiles(*PROFILES)
    kit.add_batch("b1")
    for p in PROFILES:
        kit.add_event("b1", envelope_json(shopper_id=p["shopper_id"]))
    reconcile_batch(kit.engine, "b1", routing)
    return kit.rows(send, order_by=send.c.send_id)


class ObservingSession:
    """Records, at every send_prepared, the ledger as another connection sees it."""

    sender = FROM_EMAIL
    from_name = None
    message_id_domain = "triggerflow.local"

    def __init__(self, engine, outcomes: dict[str, Any] | None = None, die_after: int | None = None) -> None:
        self.engine = engine
        self.outcomes = outcomes or {}
        self.die_after = die_after
        self.seen: list[tuple[str, dict[str, str], int]] = []

    def send_prepared(self, recipient: str, message: bytes) -> SmtpOutcome:
        with self.engine.connect() as conn:
            states = {r.recipient: r.state for r in conn.execute(select(send.c.recipient, send.c.state))}
            logged = conn.execute(select(send_log.c.send_id).where(send_log.c.action.in_(("sent", "failed", "deferred")))).all()
        self.seen.append((recipient, states, len(logged)))
        if self.die_after is not None and len(self.seen) > self.die_after:
            raise SystemExit("the process died during the SMTP transaction")  # not an Exception: nothing is caught
        outcome = self.outcomes.get(recipient, ACCEPTED)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def opener(self):
        @contextmanager
        def open_session():
            yield self
        return open_session


def test_each_row_is_committed_sending_before_its_transaction_and_earlier_outcomes_are_committed(kit, routing, renderer) -> None:
    rows = queue(kit, routing)
    recipients = [r["recipient"] for r in rows]
    session = ObservingSession(kit.engine, {
        recipients[1]: read_reply(SmtpStage.RCPT, 451, "4.7.1 later"),
        recipients[2]: read_reply(SmtpStage.RCPT, 550, "5.1.1 unknown"),
    })

    result = send_chunk(kit.engine, "b1", 0, routing, renderer, session.opener())

    assert (result.counts["sent"], result.counts["deferred"], result.counts["failed"]) == (4, 1, 1)
    expected_final = ["sent", "deferred", "failed", "sent", "sent", "sent"]
    for i, (recipient, states, logged) in enumerate(session.seen):
        assert recipient == recipients[i]
        assert [states[r] for r in recipients] == expected_final[:i] + ["sending"] + ["pending"] * (len(rows) - i - 1)
        assert logged == i  # every earlier outcome's tf_send_log row is committed too
    # the mailbox-unknown suppression (550 5.1.1 at RCPT) was committed with the outcome
    assert [r["address"] for r in kit.rows(suppression)] == [recipients[2]]
    assert [r["state"] for r in kit.rows(send, order_by=send.c.send_id)] == expected_final


@pytest.mark.parametrize("die_after", [0, 1, 3, 5])
def test_a_process_dying_mid_chunk_leaves_one_row_sending(kit, routing, renderer, die_after: int) -> None:
    rows = queue(kit, routing)
    dying = ObservingSession(kit.engine, die_after=die_after)

    with pytest.raises(SystemExit):
        send_chunk(kit.engine, "b1", 0, routing, renderer, dying.opener())

    states = [r["state"] for r in kit.rows(send, order_by=send.c.send_id)]
    assert states == ["sent"] * die_after + ["sending"] + ["pending"] * (len(rows) - die_after - 1)

    # the retry: the row in flight is ambiguous (not sent again), the rest is sent once
    retry = ObservingSession(kit.engine)
    result = send_chunk(kit.engine, "b1", 0, routing, renderer, retry.opener())
    assert (result.counts["ambiguous"], result.counts["sent"], result.counts["skipped_already_sent"]) == (
        1, len(rows) - die_after - 1, die_after)
    assert [r for r, _, _ in retry.seen] == [r["recipient"] for r in rows[die_after + 1:]]


def test_a_render_failure_rides_along_with_the_next_commit(kit, routing, renderer) -> None:
    from sqlalchemy import update

    rows = queue(kit, routing)
    with kit.engine.begin() as conn:
        conn.execute(update(send).where(send.c.send_id == rows[2]["send_id"]).values(recipient="not an address"))
    session = ObservingSession(kit.engine)

    result = send_chunk(kit.engine, "b1", 0, routing, renderer, session.opener())

    assert (result.counts["sent"], result.counts["failed"]) == (5, 1)
    # when the 4th email's transaction starts, the failed 3rd row is committed failed
    recipient, states, _ = session.seen[2]
    assert recipient == rows[3]["recipient"] and states["not an address"] == "failed"
    failed = kit.rows(send, send.c.send_id == rows[2]["send_id"])[0]
    assert failed["state"] == "failed" and failed["smtp_reply"].startswith("InvalidAddressError")
    assert sorted(r["action"] for r in kit.rows(send_log)) == ["failed"] + ["sent"] * 5


def test_a_broken_session_commits_what_was_done_and_puts_its_row_back(kit, routing, renderer) -> None:
    import smtplib

    rows = queue(kit, routing)
    session = ObservingSession(kit.engine, {rows[3]["recipient"]: smtplib.SMTPServerDisconnected("gone")})

    with pytest.raises(smtplib.SMTPServerDisconnected):
        send_chunk(kit.engine, "b1", 0, routing, renderer, session.opener())

    after = kit.rows(send, order_by=send.c.send_id)
    assert [r["state"] for r in after] == ["sent", "sent", "sent", "pending", "pending", "pending"]
    assert (after[3]["smtp_reply"], after[3]["attempts"]) == ("session failed; will retry", 1)
    assert len(kit.rows(send_log)) == 3


def test_a_render_exception_of_any_kind_fails_that_email_only(kit, routing, renderer, monkeypatch) -> None:
    """Hostile data may make rendering raise anything (RecursionError, UnicodeEncodeError, a bug):
    that email fails with the reason, the chunk goes on."""
    rows = queue(kit, routing)
    session = ObservingSession(kit.engine)
    real_render = Renderer.render
    calls = []

    def render(self, route, context, locale=None):
        calls.append(1)
        if len(calls) == 3:
            raise RecursionError("maximum recursion depth exceeded \x00 \ud800")
        return real_render(self, route, context, locale)

    monkeypatch.setattr(Renderer, "render", render)
    result = send_chunk(kit.engine, "b1", 0, routing, renderer, session.opener())

    assert (result.counts["sent"], result.counts["failed"]) == (len(rows) - 1, 1)
    after = kit.rows(send, order_by=send.c.send_id)
    assert [r["state"] for r in after] == ["sent", "sent", "failed"] + ["sent"] * (len(rows) - 3)
    assert after[2]["smtp_reply"] == "RecursionError: maximum recursion depth exceeded"


def test_an_unexpected_error_still_records_the_outcomes_already_known(kit, routing, renderer, monkeypatch) -> None:
    from include.triggerflow.ledger import Ledger

    rows = queue(kit, routing)
    session = ObservingSession(kit.engine)
    real_mark = Ledger.mark_sending
    calls = []

    def mark_sending(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("a bug, not an email's problem")
        return real_mark(self, *args, **kwargs)

    monkeypatch.setattr(Ledger, "mark_sending", mark_sending)
    with pytest.raises(RuntimeError, match="a bug"):
        send_chunk(kit.engine, "b1", 0, routing, renderer, session.opener())

    # the second email's 250 was recorded although no later `sending` mark carried it
    assert [r["state"] for r in kit.rows(send, order_by=send.c.send_id)] == ["sent", "sent"] + ["pending"] * (len(rows) - 2)
    assert [r["action"] for r in kit.rows(send_log)] == ["sent", "sent"]
