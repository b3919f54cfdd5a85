"""Tests for include.triggerflow.stages.report: counts, their balance, and tf_run_summary."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import update

from include.triggerflow.render import Renderer
from include.triggerflow.smtp_replies import SmtpOutcome, accepted
from include.triggerflow.stages.reconcile import reconcile_batch
from include.triggerflow.stages.report import CountsDoNotBalance, compute_report, report_batch
from include.triggerflow.stages.validate import validate_batch
from include.triggerflow.store.schema import decision, event, run_summary, send
from tests.fixtures import envelope_json, send_chunk

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pydantic.*")

UNCONFIGURED_TRIGGER_ID = "0badc0de-0000-4000-8000-00000000beef"
COUNT_KEYS = ("pulled", "valid", "quarantined", "matched", "unmatched", "ignored", "sent", "suppressed",
              "failed", "duplicate", "pending", "deferred", "ambiguous", "unvalidated")


class AcceptingSession:
    """A MailSession that accepts every message (what it sent is kept)."""

    sender = "shop@triggerflow.test"
    from_name = None
    message_id_domain = "triggerflow.local"
    sent: list[str]

    def __init__(self) -> None:
        self.sent = []

    def __enter__(self) -> AcceptingSession:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def send_prepared(self, recipient: str, message: bytes) -> SmtpOutcome:
        self.sent.append(recipient)
        return accepted()


def summary(kit, batch_id: str) -> dict:
    [row] = kit.rows(run_summary, run_summary.c.batch_id == batch_id)
    return row


def test_processed_batch_balances_and_is_stored(kit, routing) -> None:
    kit.add_profiles(
        {"customer_id": "C1", "email": "ada@example.com", "first_name": "Ada", "shopper_id": "SHOP-ADA"},
        {"customer_id": "C2", "email": "grace@example.com", "first_name": "Grace", "shopper_id": "SHOP-GRACE"},
        {"customer_id": "C3", "email": "donald@example.com", "shopper_id": "SHOP-OPTOUT", "opted_out": True},
    )
    b = kit.add_batch("b1")
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    for shopper, age_ms in (("SHOP-ADA", 120_000), ("SHOP-GRACE", 30_000), ("SHOP-OPTOUT", 0), ("SHOP-NOBODY", 0)):
        kit.add_event(b, envelope_json(shopper_id=shopper, triggered_at_ms=now_ms - age_ms), status="landed")
    kit.add_event(b, envelope_json(trigger_id=UNCONFIGURED_TRIGGER_ID), status="landed")
    kit.add_event(b, "not even an object", status="landed")

    validate_batch(kit.engine, b, routing)
    session = AcceptingSession()
    for chunk in reconcile_batch(kit.engine, b, routing).chunks:
        send_chunk(kit.engine, b, chunk, routing, Renderer(), lambda: session)
    report = report_batch(kit.engine, b, dag_id="trigger_emails", run_id="run-1")

    assert report.balanced and report.problems == []
    assert {k: report.counts[k] for k in COUNT_KEYS} == {
        "pulled": 6, "valid": 5, "quarantined": 1, "matched": 3, "unmatched": 1, "ignored": 1,
        "sent": 2, "suppressed": 1, "failed": 0, "duplicate": 0, "pending": 0, "deferred": 0,
        "ambiguous": 0, "unvalidated": 0,
    }
    # the oldest sent trigger was two minutes old when the server accepted it
    assert 120 <= report.counts["oldest_sent_age_s"] < 180
    assert sorted(session.sent) == ["ada@example.com", "grace@example.com"]

    row = summary(kit, b)
    assert (row["dag_id"], row["run_id"], row["balanced"]) == ("trigger_emails", "run-1", True)
    assert (row["pulled"], row["valid"], row["quarantined"], row["matched"], row["unmatched"], row["ignored"],
            row["sent"], row["suppressed"], row["failed"], row["duplicate"], row["pending"]) == (6, 5, 1, 3, 1, 1, 2, 1, 0, 0, 0)
    assert row["oldest_sent_age_s"] == report.counts["oldest_sent_age_s"]
    stored = json.loads(row["counts"])
    assert stored["balanced"] is True and stored["problems"] == [] and stored["sent"] == 2
    assert report.as_xcom() == {"batch_id": b, "balanced": True, **report.counts}
    table = report.table()
    assert "pulled             6  = valid 5 + quarantined 1" in table
    assert table.rstrip().endswith("balanced")


def test_an_event_never_validated_does_not_balance_and_is_still_recorded(kit) -> None:
    b = kit.add_batch("b1")
    kit.add_event(b, envelope_json(shopper_id="SHOP-NOBODY"), status="valid")
    kit.add_event(b, envelope_json(shopper_id="SHOP-NOBODY"), status="landed")
    with kit.engine.begin() as conn:
        conn.execute(decision.insert().values(
            event_id=kit.rows(event, event.c.status == "valid")[0]["event_id"], batch_id=b, decision="unmatched",
            decided_at=datetime.now(UTC),
        ))

    with pytest.raises(CountsDoNotBalance) as info:
        report_batch(kit.engine, b, dag_id="trigger_emails", run_id="run-1")

    assert str(info.value) == "batch b1 does not balance: pulled 2 != valid + quarantined (1 never validated)"
    row = summary(kit, b)
    assert (row["balanced"], row["pulled"], row["valid"], row["unmatched"]) == (False, 2, 1, 1)
    stored = json.loads(row["counts"])
    assert stored["balanced"] is False
    assert stored["problems"] == ["pulled 2 != valid + quarantined (1 never validated)"]
    assert stored["unvalidated"] == 1


def test_valid_events_without_a_decision_do_not_balance(kit) -> None:
    b = kit.add_batch("b1")
    kit.add_event(b, envelope_json(), status="valid")
    report = compute_report(kit.engine, b)
    assert not report.balanced
    assert report.problems == ["valid 1 != matched + unmatched + ambiguous identity + ignored (0)"]
    assert "NOT BALANCED: valid 1 != matched + unmatched + ambiguous identity + ignored (0)" in report.table()


def test_matched_without_a_ledger_row_does_not_balance(kit, routing) -> None:
    kit.add_profiles({"customer_id": "C1", "email": "ada@example.com", "shopper_id": "SHOP-ADA"})
    b = kit.add_batch("b1")
    kit.add_event(b, envelope_json(shopper_id="SHOP-ADA"))
    reconcile_batch(kit.engine, b, routing)
    with kit.engine.begin() as conn:
        conn.execute(send.delete())

    with pytest.raises(CountsDoNotBalance, match=r"queued 1 != sum of ledger states \(0\)"):
        report_batch(kit.engine, b, dag_id="trigger_emails", run_id="run-1")
    assert summary(kit, b)["balanced"] is False


def test_unfinished_sends_are_accounted_for(kit, routing) -> None:
    kit.add_profiles(*[{"customer_id": f"C{i}", "email": f"c{i}@example.com", "shopper_id": f"SHOP-{i}"} for i in range(5)])
    b = kit.add_batch("b1")
    for i in range(5):
        kit.add_event(b, envelope_json(shopper_id=f"SHOP-{i}"))
    reconcile_batch(kit.engine, b, routing)
    ids = [r["send_id"] for r in kit.rows(send, order_by=send.c.send_id)]
    with kit.engine.begin() as conn:
        for send_id, state in zip(ids, ["pending", "sending", "deferred", "ambiguous", "failed"]):
            conn.execute(update(send).where(send.c.send_id == send_id).values(state=state))

    report = report_batch(kit.engine, b, dag_id="trigger_emails", run_id="run-1")

    assert report.balanced
    assert {k: report.counts[k] for k in ("matched", "sent", "pending", "deferred", "ambiguous", "failed")} == {
        "matched": 5, "sent": 0, "pending": 2, "deferred": 1, "ambiguous": 1, "failed": 1,
    }
    assert report.counts["oldest_sent_age_s"] is None
    # the summary's pending column holds everything that may still go out
    assert summary(kit, b)["pending"] == 3


def test_duplicates_balance_without_their_own_ledger_row(kit, routing) -> None:
    kit.add_profiles({"customer_id": "C1", "email": "ada@example.com", "shopper_id": "SHOP-ADA"})
    kit.add_batch("b1")
    kit.add_batch("b2")
    kit.add_event("b1", envelope_json(shopper_id="SHOP-ADA", triggered_at_ms=1_772_366_340_000))
    kit.add_event("b2", envelope_json(shopper_id="SHOP-ADA", triggered_at_ms=1_772_366_340_000))
    reconcile_batch(kit.engine, "b1", routing)
    reconcile_batch(kit.engine, "b2", routing)

    report = report_batch(kit.engine, "b2", dag_id="trigger_emails", run_id="run-2")
    assert report.balanced
    assert (report.counts["matched"], report.counts["duplicate"], report.counts["pending"]) == (1, 1, 0)


def test_reporting_again_replaces_the_summary(kit) -> None:
    b = kit.add_batch("b1")
    first = report_batch(kit.engine, b, dag_id="trigger_emails", run_id="run-1")
    assert first.balanced and first.counts["pulled"] == 0
    kit.add_event(b, envelope_json(trigger_id=UNCONFIGURED_TRIGGER_ID), status="quarantined")
    second = report_batch(kit.engine, b, dag_id="trigger_emails", run_id="run-1-retry")
    assert (second.counts["pulled"], second.counts["quarantined"]) == (1, 1)
    assert kit.count(run_summary) == 1
    assert (summary(kit, b)["run_id"], summary(kit, b)["pulled"]) == ("run-1-retry", 1)


def test_report_of_a_batch_that_was_never_landed_is_empty_and_balanced(kit) -> None:
    report = report_batch(kit.engine, "no-such-batch", dag_id="trigger_emails", run_id="run-x")
    assert report.balanced
    assert all(report.counts[k] == 0 for k in COUNT_KEYS)
    assert summary(kit, "no-such-batch")["balanced"] is True


def _set_dropped(kit, batch_id: str, dropped: int | None, reasons: str | None) -> None:
    from include.triggerflow.store.schema import batch

    with kit.engine.begin() as conn:
        conn.execute(update(batch).where(batch.c.batch_id == batch_id).values(dropped=dropped, dropped_reasons=reasons))


def test_dropped_lines_are_counted_outside_the_balance(kit, routing, caplog) -> None:
    b = kit.add_batch("b1")
    kit.add_event(b, envelope_json(trigger_id=UNCONFIGURED_TRIGGER_ID), status="landed")
    kit.add_event(b, "not even an object", status="landed")
    _set_dropped(kit, b, 3, json.dumps({"not JSON": 2, "blank line": 1}))
    validate_batch(kit.engine, b, routing)
    reconcile_batch(kit.engine, b, routing)

    with caplog.at_level("INFO", logger="include.triggerflow.stages.report"):
        report = report_batch(kit.engine, b, dag_id="trigger_emails", run_id="run-1")

    assert report.balanced  # pulled 2 = valid 1 + quarantined 1; the 3 dropped lines have no event
    assert (report.counts["pulled"], report.counts["dropped"]) == (2, 3)
    assert report.counts["dropped_reasons"] == {"not JSON": 2, "blank line": 1}
    stored = json.loads(summary(kit, b)["counts"])
    assert (stored["dropped"], stored["dropped_reasons"]) == (3, {"not JSON": 2, "blank line": 1})
    assert "dropped            3  lines the source sent that are no event (blank line 1, not JSON 2)" in report.table()
    assert "dropped            3" in caplog.text


@pytest.mark.parametrize(
    ("dropped", "reasons", "expected"),
    [
        (None, None, (0, {})),  # a batch landed before the columns existed
        (None, json.dumps({"BOM": 4}), (4, {"BOM": 4})),
        (2, "{not json", (2, {})),
        (1, json.dumps(["a list"]), (1, {})),
    ],
    ids=["nulls", "reasons-only", "unreadable-reasons", "reasons-not-a-mapping"],
)
def test_dropped_bookkeeping_never_fails_the_report(kit, dropped, reasons, expected) -> None:
    b = kit.add_batch("b1")
    _set_dropped(kit, b, dropped, reasons)
    report = report_batch(kit.engine, b, dag_id="trigger_emails", run_id="run-1")
    assert report.balanced
    assert (report.counts["dropped"], report.counts["dropped_reasons"]) == expected
    assert ("dropped " in report.table()) is bool(expected[0])
