"""Tests for include.triggerflow.stages.send: the ledger drives a real SMTP session.

Emails go to the real SMTP sink process through TriggerMailHook (connection ``smtp_triggers``).
The same behaviours over a fake session, and every reply the sink cannot give: tests/unit/stages/test_send.py."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from include.triggerflow.hooks.smtp import SmtpOutcome, TriggerMailHook
from include.triggerflow.mailer import message_id_for
from include.triggerflow.render import Renderer
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
    smtp_conn,
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




def test_pending_rows_are_sent_and_recorded(kit, routing, smtp, renderer) -> None:
    rows = queue(kit, routing)

    result = send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook)

    assert result == SendResult(batch_id="b1", chunk=0, counts=C(sent=3, deferred=0, failed=0, ambiguous=0))
    after = ledger(kit)
    for before, row in zip(rows, after):
        assert row["state"] == "sent"
        assert row["message_id"] == message_id_for(before["idempotency_key"], "triggerflow.local")
        assert row["sent_at"] is not None
        assert (row["smtp_code"], row["smtp_reply"], row["attempts"]) == (250, "accepted", 1)
    assert [r["subject"] for r in after] == [
        "Ada, you left something in your cart", "Grace, you left something in your cart",
        "Donald, you left something in your cart",
    ]
    mails = smtp.messages()
    assert len(smtp.eml_paths()) == 3
    assert sorted(m["To"] for m in mails) == ["ada@example.com", "donald@example.com", "grace@example.com"]
    by_to = {m["To"]: m for m in mails}
    ada = by_to["ada@example.com"]
    assert ada["From"] == f"{FROM_NAME} <{FROM_EMAIL}>"
    assert ada["Message-ID"] == after[0]["message_id"]
    assert ada["X-Triggerflow-Key"].strip() == rows[0]["idempotency_key"]  # folded: 64 hex chars
    assert ada["Subject"] == "Ada, you left something in your cart"
    assert "Alpine Shell Waterproof Jacket" in ada.get_body(preferencelist=("plain",)).get_content()


def test_second_call_sends_nothing_new(kit, routing, smtp, renderer) -> None:
    queue(kit, routing)
    send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook)
    sent_before = ledger(kit)

    again = send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook)

    assert again.counts == C(skipped_already_sent=3)
    assert len(smtp.eml_paths()) == 3
    assert ledger(kit) == sent_before


def test_a_row_left_sending_becomes_ambiguous_and_is_not_sent(kit, routing, smtp, renderer) -> None:
    rows = queue(kit, routing)
    set_state(kit, rows[1]["send_id"], "sending")  # a process died mid-SMTP on this one

    result = send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook)

    assert result.counts == C(sent=2, deferred=0, failed=0, ambiguous=1)
    assert states(kit) == {"ada@example.com": "sent", "grace@example.com": "ambiguous", "donald@example.com": "sent"}
    assert ledger(kit)[1]["smtp_reply"] == "process died during the SMTP transaction"
    assert sorted(m["To"] for m in smtp.messages()) == ["ada@example.com", "donald@example.com"]
    # and it stays unsent on later calls
    assert send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook).counts["sent"] == 0
    assert len(smtp.eml_paths()) == 2


def test_invalid_profile_address_fails_that_row_only(kit, routing, smtp, renderer) -> None:
    queue(kit, routing, PROFILES)
    # Reconciliation suppresses invalid addresses; a ledger row holding one fails at send time.
    with kit.engine.begin() as conn:
        conn.execute(update(send).where(send.c.recipient == PROFILES[1]["email"]).values(recipient="grace at example.com"))

    result = send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook)

    assert result.counts == C(sent=2, deferred=0, failed=1, ambiguous=0)
    failed = [r for r in ledger(kit) if r["state"] == "failed"]
    assert len(failed) == 1
    assert failed[0]["smtp_reply"].startswith("InvalidAddressError: invalid email address 'grace at example.com'")
    assert failed[0]["smtp_code"] is None and failed[0]["sent_at"] is None and failed[0]["attempts"] == 0
    assert sorted(m["To"] for m in smtp.messages()) == ["ada@example.com", "donald@example.com"]


def test_a_route_gone_from_the_config_fails_with_a_render_error(kit, routing, smtp, renderer, tmp_path) -> None:
    from include.triggerflow.config import load_routing
    from tests.fixtures import write_routing

    queue(kit, routing, PROFILES[:1])
    only_browse = load_routing(write_routing(tmp_path / "routing.yaml", [{
        "name": "browse_abandonment", "trigger_id": "9e4b1f27-6c3d-4a8e-b2f5-0d7c8a6e3b02",
        "template": "browse_abandonment", "subject": "Hi",
        "identity": {"dimension": "eVar01", "profile_column": "shopper_id"},
    }]))
    result = send_chunk(kit.engine, "b1", 0, only_browse, renderer, TriggerMailHook)
    assert result.counts["failed"] == 1
    assert ledger(kit)[0]["smtp_reply"] == "TemplateRenderError: route 'cart_abandonment' is no longer in the routing config"
    assert smtp.eml_paths() == []


def test_only_the_given_chunk_is_sent(kit, routing, smtp, renderer) -> None:
    kit.add_profiles(*PROFILES)
    kit.add_batch("b1")
    for p in PROFILES:
        kit.add_event("b1", envelope_json(shopper_id=p["shopper_id"]))
    assert reconcile_batch(kit.engine, "b1", routing, chunk_size=1, max_chunks=2).chunks == [0, 1]

    result = send_chunk(kit.engine, "b1", 1, routing, renderer, TriggerMailHook)

    assert result.counts["sent"] == 1
    assert {r["chunk"]: r["state"] for r in ledger(kit) if r["chunk"] == 1} == {1: "sent"}
    assert sorted(r["state"] for r in ledger(kit) if r["chunk"] == 0) == ["pending", "pending"]
    assert [m["To"] for m in smtp.messages()] == ["grace@example.com"]


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"from_email": None}, "connection 'smtp_triggers': set extra.from_email"),
        ({"from_email": "shop at example.com"}, "invalid email address 'shop at example.com'"),
        ({"message_id_domain": "localhost"}, "Message-ID domain 'localhost' is not a dotted domain name"),
        ({"from_name": "Shop\r\nBcc: x@evil.test"}, "header From: value contains CR, LF or NUL"),
    ],
    ids=["no-from-email", "bad-from-email", "bad-message-id-domain", "injected-from-name"],
)
def test_a_connection_mistake_fails_the_task_and_leaves_rows_pending(
    kit, routing, smtp, renderer, monkeypatch, extra: dict, error: str
) -> None:
    """A connection mistake is not a property of the emails: no row may be marked failed for it."""
    queue(kit, routing)
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TRIGGERS", smtp_conn(smtp, **extra))

    with pytest.raises(ValueError, match=error):
        send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook)

    assert set(states(kit).values()) == {"pending"}
    assert smtp.eml_paths() == []


class BreakingMailHook(TriggerMailHook):
    """The real hook, whose SMTP connection is lost before the n-th message (say, the relay
    dropped it): smtplib raises SMTPServerDisconnected from a real sendmail."""

    break_before = 2

    def send_prepared(self, recipient: str, message: bytes) -> SmtpOutcome:
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == self.break_before:
            self.client.close()
        return super().send_prepared(recipient, message)


def test_session_failure_mid_chunk_keeps_sent_rows_and_requeues_the_failing_one(kit, routing, smtp, renderer) -> None:
    import smtplib

    queue(kit, routing)

    with pytest.raises(smtplib.SMTPServerDisconnected):
        send_chunk(kit.engine, "b1", 0, routing, renderer, BreakingMailHook)

    rows = ledger(kit)
    assert [r["state"] for r in rows] == ["sent", "pending", "pending"]
    assert (rows[1]["smtp_reply"], rows[1]["attempts"]) == ("session failed; will retry", 1)
    assert rows[2]["attempts"] == 0
    assert [m["To"] for m in smtp.messages()] == ["ada@example.com"]

    # Airflow's retry sends the rest, and nothing twice.
    retry = send_chunk(kit.engine, "b1", 0, routing, renderer, TriggerMailHook)
    assert retry.counts == C(sent=2, skipped_already_sent=1)
    assert sorted(m["To"] for m in smtp.messages()) == ["ada@example.com", "donald@example.com", "grace@example.com"]
    assert [r["attempts"] for r in ledger(kit)] == [1, 2, 1]
