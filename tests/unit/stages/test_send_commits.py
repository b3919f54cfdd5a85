"""The send stage's commits keep the exactly-once invariant, one email per transaction (G = 1,
first) and groups of G (below).

With G = 1 the outcome of email i is committed with the ``sending`` mark of email i + 1. Whenever
an SMTP transaction starts, what another connection reads from the store must be: every earlier row in
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


def grouped(size: int, **kwargs: Any):
    """Options with G = ``size`` (1: one ledger transaction per email, the tests before the group section)."""
    from include.triggerflow.stages.send import SendOptions

    return SendOptions(group_size=size, **kwargs)


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

    result = send_chunk(kit.engine, "b1", 0, routing, renderer, session.opener(), grouped(1))

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
        send_chunk(kit.engine, "b1", 0, routing, renderer, dying.opener(), grouped(1))

    states = [r["state"] for r in kit.rows(send, order_by=send.c.send_id)]
    assert states == ["sent"] * die_after + ["sending"] + ["pending"] * (len(rows) - die_after - 1)

    # the retry: the row in flight is ambiguous (not sent again), the rest is sent once
    retry = ObservingSession(kit.engine)
    result = send_chunk(kit.engine, "b1", 0, routing, renderer, retry.opener(), grouped(1))
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
        send_chunk(kit.engine, "b1", 0, routing, renderer, session.opener(), grouped(1))

    # the second email's 250 was recorded although no later `sending` mark carried it
    assert [r["state"] for r in kit.rows(send, order_by=send.c.send_id)] == ["sent", "sent"] + ["pending"] * (len(rows) - 2)
    assert [r["action"] for r in kit.rows(send_log)] == ["sent", "sent"]


# -- groups of G emails per transaction (SendOptions.group_size) -------------------------------------------
@pytest.mark.parametrize("size", [2, 3, 4, 6, 50])
def test_a_group_is_committed_sending_together_with_the_outcomes_of_the_group_before(kit, routing, renderer, size: int) -> None:
    rows = queue(kit, routing)
    recipients = [r["recipient"] for r in rows]
    session = ObservingSession(kit.engine, {recipients[1]: read_reply(SmtpStage.RCPT, 550, "5.1.1 unknown")})

    result = send_chunk(kit.engine, "b1", 0, routing, renderer, session.opener(), grouped(size))

    assert (result.counts["sent"], result.counts["failed"]) == (5, 1)
    final = ["sent", "failed", "sent", "sent", "sent", "sent"]
    for i, (recipient, states, logged) in enumerate(session.seen):
        start = i - i % size  # the first email of i's group
        end = min(start + size, len(rows))
        assert recipient == recipients[i]
        # earlier groups final, the whole group sending (also the emails it already sent), later ones pending
        assert [states[r] for r in recipients] == final[:start] + ["sending"] * (end - start) + ["pending"] * (len(rows) - end)
        assert logged == start
    assert [r["state"] for r in kit.rows(send, order_by=send.c.send_id)] == final
    assert [r["address"] for r in kit.rows(suppression)] == [recipients[1]]


@pytest.mark.parametrize("die_after", [0, 1, 2, 3, 4, 5])
def test_a_process_dying_mid_group_leaves_at_most_g_rows_sending_and_the_retry_sends_nothing_twice(
        kit, routing, renderer, die_after: int) -> None:
    size = 3
    rows = queue(kit, routing)
    dying = ObservingSession(kit.engine, die_after=die_after)

    with pytest.raises(SystemExit):
        send_chunk(kit.engine, "b1", 0, routing, renderer, dying.opener(), grouped(size))

    start = die_after - die_after % size
    end = min(start + size, len(rows))
    states = [r["state"] for r in kit.rows(send, order_by=send.c.send_id)]
    assert states == ["sent"] * start + ["sending"] * (end - start) + ["pending"] * (len(rows) - end)

    retry = ObservingSession(kit.engine)
    result = send_chunk(kit.engine, "b1", 0, routing, renderer, retry.opener(), grouped(size))
    assert (result.counts["ambiguous"], result.counts["sent"], result.counts["skipped_already_sent"]) == (
        end - start, len(rows) - end, start)
    # held: only the rows after the dead group are sent by the retry
    assert [r for r, _, _ in retry.seen] == [r["recipient"] for r in rows[end:]]
    after = [r["state"] for r in kit.rows(send, order_by=send.c.send_id)]
    assert after == ["sent"] * start + ["ambiguous"] * (end - start) + ["sent"] * (len(rows) - end)


def test_ambiguous_rows_of_a_dead_group_are_resent_with_their_message_id_under_resend(kit, routing, renderer) -> None:
    rows = queue(kit, routing)
    with pytest.raises(SystemExit):
        send_chunk(kit.engine, "b1", 0, routing, renderer, ObservingSession(kit.engine, die_after=4).opener(), grouped(3))
    before = {r["send_id"]: r["message_id"] for r in kit.rows(send)}

    retry = ObservingSession(kit.engine)
    result = send_chunk(kit.engine, "b1", 0, routing, renderer, retry.opener(), grouped(3, ambiguous_policy="resend"))

    assert (result.counts["ambiguous"], result.counts["resent"], result.counts["sent"]) == (3, 3, 0)
    assert [r for r, _, _ in retry.seen] == [r["recipient"] for r in rows[3:]]
    after = kit.rows(send, order_by=send.c.send_id)
    assert all(r["message_id"] == before[r["send_id"]] for r in after[3:])
    assert [r["state"] for r in after] == ["sent"] * 6


def test_a_broken_session_mid_group_puts_the_rest_of_the_group_back(kit, routing, renderer) -> None:
    import smtplib

    rows = queue(kit, routing)
    session = ObservingSession(kit.engine, {rows[2]["recipient"]: smtplib.SMTPServerDisconnected("gone")})

    with pytest.raises(smtplib.SMTPServerDisconnected):
        send_chunk(kit.engine, "b1", 0, routing, renderer, session.opener(), grouped(4))

    after = kit.rows(send, order_by=send.c.send_id)
    assert [r["state"] for r in after] == ["sent", "sent", "pending", "pending", "pending", "pending"]
    assert after[2]["smtp_reply"] == "session failed; will retry"
    # row 3 was in the group and put back without being sent; rows 4 and 5 were never marked
    assert after[3]["smtp_reply"].startswith("not sent: the group stopped")
    assert (after[4]["smtp_reply"], after[5]["smtp_reply"]) == (None, None)
    assert [r["action"] for r in kit.rows(send_log)] == ["sent"] * 2

    retry = ObservingSession(kit.engine)
    result = send_chunk(kit.engine, "b1", 0, routing, renderer, retry.opener(), grouped(4))
    assert (result.counts["ambiguous"], result.counts["sent"], result.counts["skipped_already_sent"]) == (0, 4, 2)


def test_an_uncertain_delivery_mid_group_makes_that_row_ambiguous_and_puts_the_rest_back(kit, routing, renderer) -> None:
    from include.triggerflow.smtp_replies import DeliveryUncertain

    rows = queue(kit, routing)
    session = ObservingSession(kit.engine, {rows[1]["recipient"]: DeliveryUncertain("no reply after the final dot")})

    with pytest.raises(DeliveryUncertain):
        send_chunk(kit.engine, "b1", 0, routing, renderer, session.opener(), grouped(6))

    assert [r["state"] for r in kit.rows(send, order_by=send.c.send_id)] == ["sent", "ambiguous"] + ["pending"] * 4


def test_a_relay_refusing_mid_group_puts_the_rest_of_the_group_back(kit, routing, renderer) -> None:
    from include.triggerflow.stages.send import RelayRefusing

    rows = queue(kit, routing)
    refused = read_reply(SmtpStage.DATA, 554, "5.7.1 rejected by policy")
    session = ObservingSession(kit.engine, {r["recipient"]: refused for r in rows[:2]})

    with pytest.raises(RelayRefusing, match=r"2 emails answered 554 5\.7\.1"):
        send_chunk(kit.engine, "b1", 0, routing, renderer, session.opener(), grouped(6, refusal_limit=2))

    assert [r["state"] for r in kit.rows(send, order_by=send.c.send_id)] == ["failed", "failed"] + ["pending"] * 4
    assert not kit.rows(suppression)


@pytest.mark.parametrize("size", [0, -1, 1001])
def test_a_group_size_out_of_range_is_refused_naming_the_limits(kit, routing, renderer, size: int) -> None:
    queue(kit, routing)
    with pytest.raises(ValueError, match=r"group_size must be in \[1, 1000\]"):
        send_chunk(kit.engine, "b1", 0, routing, renderer, ObservingSession(kit.engine).opener(), grouped(size))
    assert {r["state"] for r in kit.rows(send)} == {"pending"}
