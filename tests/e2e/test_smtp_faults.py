"""SMTP faults under the real DAG (dag.test): 4xx deferrals, 5xx hard bounces, a dropped session.

The SMTP sink is a real server process whose behaviour each test switches through its faults
file (devstack.smtp_sink). What the server stored is the ground truth: every test counts the
.eml files per idempotency key (X-Triggerflow-Key), checks the ledger and tf_send_log, and checks
the run's count balance in tf_run_summary.counts.

How the second try happens here: ``dag.test()`` in Airflow 3.3.2 *does* retry a failed task. Its
loop leaves the task instance ``up_for_retry``, sleeps one second at a time while nothing is
runnable, and runs the task again (try_number + 1) once ``retry_delay`` has passed. With
``TRIGGERFLOW_RETRY_DELAY_S=1`` the retry comes 1 s later (then 2 s, 4 s: the ×2 back-off). So
these tests drive the genuine Airflow retry of the send task within one ``dag.test()`` call — no
re-run of the logical date and no direct call of the stage function — and check its try number
in the metadata DB.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.messages import BROWSE_ABANDONMENT_TRIGGER_ID, load_demo_catalog
from devstack.processes import start_emulator, start_smtp_sink
from include.triggerflow.profiles import upsert_profiles
from tests.e2e.fault_helpers import (
    actions_by_row,
    assert_balanced,
    batch_of,
    connection_env,
    customers,
    dag_test_tries,
    decisions,
    keys_received,
    ledger,
    load_dag,
    minute,
    recipients_received,
    summary,
    suppression_rows,
    triggers_for,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(tmp_path: Path, airflow_db: Path, store_url: str, store_engine, monkeypatch: pytest.MonkeyPatch):
    with (
        start_emulator(log_path=tmp_path / "emulator.log") as emu,
        start_smtp_sink(tmp_path / "outbox", log_path=tmp_path / "smtp.log") as smtp,
    ):
        for key, value in connection_env(emu, smtp, store_url).items():
            monkeypatch.setenv(key, value)
        # Read when the DAG file is parsed (load_dag below): retries after 1 s, 2 s, 4 s.
        monkeypatch.setenv("TRIGGERFLOW_RETRY_DELAY_S", "1")
        load_demo_catalog(store_engine)  # the shipped routes email only products the catalogue knows
        yield emu, smtp, store_engine


def _run(logical_offset: int = 0, **conf):
    from airflow.utils.state import DagRunState

    run = load_dag().test(logical_date=minute(logical_offset), run_conf=conf or None)
    assert run.state == DagRunState.SUCCESS, run.state
    return run


def _exactly_once(smtp, engine, batch_id: str, expected_recipients: set[str]) -> None:
    """Each ledger row the server accepted is stored exactly once, and nothing else is."""
    messages = smtp.messages()
    keys = keys_received(messages)
    assert all(n == 1 for n in keys.values()), keys
    sent = {r["idempotency_key"] for r in ledger(engine, batch_id) if r["state"] == "sent"}
    assert set(keys) == sent
    assert set(recipients_received(messages)) == expected_recipients


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"code": 451, "message": "4.2.1 mailbox busy, try later"}, id="rcpt-451"),
        pytest.param({"data_code": 452, "message": "4.3.1 insufficient storage"}, id="end-of-data-452"),
    ],
)
def test_4xx_defers_and_the_task_retry_sends_them(stack, fault: dict) -> None:
    emu, smtp, engine = stack
    people = customers(8)
    upsert_profiles(engine, people)
    deferred = {"c003@example.com", "c006@example.com"}
    smtp.set_faults([{"rcpt": address, "times": 1, **fault} for address in sorted(deferred)])
    emu.client.publish(triggers_for(people))

    run = _run()

    assert len(smtp.fired_faults()) == 2  # the fault really happened, once per address
    assert dag_test_tries(run) == {0: 2}  # one chunk, sent over two tries
    batch_id = batch_of(engine, run.run_id)
    _exactly_once(smtp, engine, batch_id, {p["email"] for p in people})
    rows = ledger(engine, batch_id)
    assert {r["state"] for r in rows} == {"sent"}
    assert {r["recipient"] for r in rows if r["attempts"] == 2} == deferred
    code = fault.get("code") or fault["data_code"]
    actions = actions_by_row(engine, batch_id)
    for address in deferred:
        assert actions[address] == [(1, "deferred", code), (2, "sent", 250)]
    for address in {p["email"] for p in people} - deferred:
        assert actions[address] == [(1, "sent", 250), (2, "skipped-sent", None)]
    counts = summary(engine, batch_id)
    assert_balanced(counts)
    assert (counts["matched"], counts["sent"], counts["deferred"], counts["pending"]) == (8, 8, 0, 0)


def test_4xx_on_every_try_stays_deferred_after_the_last_try(stack) -> None:
    emu, smtp, engine = stack
    people = customers(5)
    upsert_profiles(engine, people)
    smtp.set_faults([{"rcpt": "c002@example.com", "code": 450, "message": "4.2.0 greylisted"}])  # no times: always
    emu.client.publish(triggers_for(people))

    run = _run()  # the last try does not raise: the run is green, the row stays deferred

    assert dag_test_tries(run) == {0: 4}  # retries=3: four tries
    assert len(smtp.fired_faults()) == 4
    batch_id = batch_of(engine, run.run_id)
    _exactly_once(smtp, engine, batch_id, {p["email"] for p in people} - {"c002@example.com"})
    by_rcpt = {r["recipient"]: r for r in ledger(engine, batch_id)}
    assert by_rcpt["c002@example.com"]["state"] == "deferred"
    assert by_rcpt["c002@example.com"]["smtp_code"] == 450
    assert "greylisted" in by_rcpt["c002@example.com"]["smtp_reply"]
    assert actions_by_row(engine, batch_id)["c002@example.com"] == [(t, "deferred", 450) for t in (1, 2, 3, 4)]
    counts = summary(engine, batch_id)
    assert_balanced(counts)
    assert (counts["sent"], counts["deferred"]) == (4, 1)  # visible in the report


def test_a_mailbox_unknown_5xx_at_rcpt_fails_with_the_reason_and_suppresses_the_address(stack) -> None:
    emu, smtp, engine = stack
    good, bouncing = customers(4), customers(2, domain="bounce.test", prefix="B")
    upsert_profiles(engine, good + bouncing)
    smtp.set_faults([{"rcpt_domain": "bounce.test", "code": 550, "message": "5.1.1 user unknown"}])
    emu.client.publish(triggers_for(good + bouncing))

    run = _run()

    assert dag_test_tries(run) == {0: 1}  # a 5xx is final: no retry
    batch_id = batch_of(engine, run.run_id)
    _exactly_once(smtp, engine, batch_id, {p["email"] for p in good})
    bounced = {r["recipient"]: r for r in ledger(engine, batch_id) if r["recipient"].endswith("@bounce.test")}
    assert set(bounced) == {"b001@bounce.test", "b002@bounce.test"}
    for row in bounced.values():
        assert (row["state"], row["smtp_code"]) == ("failed", 550)
        assert "5.1.1 user unknown" in row["smtp_reply"]
    assert actions_by_row(engine, batch_id)["b001@bounce.test"] == [(1, "failed", 550)]
    suppressed = suppression_rows(engine)
    assert [(s["address"], s["source"], s["smtp_code"]) for s in suppressed] == [
        ("b001@bounce.test", "hard-bounce", 550), ("b002@bounce.test", "hard-bounce", 550),
    ]
    assert all("5.1.1 user unknown" in s["reason"] and s["created_at"] is not None for s in suppressed)
    counts = summary(engine, batch_id)
    assert_balanced(counts)
    assert (counts["sent"], counts["failed"]) == (4, 2)

    # The server would accept now; the suppression list alone keeps the bounced address quiet,
    # while a later trigger for a good customer goes out.
    smtp.clear_faults()
    # later triggers, not redeliveries: another trigger (a cart one inside 24 h would be a duplicate)
    emu.client.publish(triggers_for([bouncing[0], good[0]], later_ms=60_000, trigger_id=BROWSE_ABANDONMENT_TRIGGER_ID))
    run2 = _run(1)

    batch2 = batch_of(engine, run2.run_id)
    assert decisions(engine, batch2) == {"SHOP-B001": "suppressed:hard-bounce", "SHOP-C001": "matched"}
    assert recipients_received(smtp.messages()) == {p["email"]: 1 for p in good} | {"c001@example.com": 2}
    assert not any(m["X-Envelope-To"].endswith("@bounce.test") for m in smtp.messages())
    counts2 = summary(engine, batch2)
    assert_balanced(counts2)
    assert (counts2["matched"], counts2["suppressed"], counts2["sent"]) == (2, 1, 1)


def test_dropped_session_retry_sends_only_the_unsent_rows(stack) -> None:
    emu, smtp, engine = stack
    people = customers(10)
    upsert_profiles(engine, people)
    smtp.set_faults([{"drop_after_messages": 4, "times": 1}])
    emu.client.publish(triggers_for(people))

    run = _run()

    [fired] = smtp.fired_faults()
    assert fired["accepted_in_session"] == 4
    assert dag_test_tries(run) == {0: 2}
    batch_id = batch_of(engine, run.run_id)
    _exactly_once(smtp, engine, batch_id, {p["email"] for p in people})
    assert len(smtp.eml_paths()) == 10  # = customers
    rows = ledger(engine, batch_id)
    assert {r["state"] for r in rows} == {"sent"}
    actions = actions_by_row(engine, batch_id)
    first_four = [r["recipient"] for r in rows[:4]]
    for address in first_four:
        assert actions[address] == [(1, "sent", 250), (2, "skipped-sent", None)]
    # the 5th was in flight when the session dropped: back to pending, sent by try 2 only
    for row in rows[4:]:
        assert actions[row["recipient"]] == [(2, "sent", 250)]
        assert row["attempts"] == (2 if row is rows[4] else 1)
    counts = summary(engine, batch_id)
    assert_balanced(counts)
    assert (counts["sent"], counts["ambiguous"], counts["pending"]) == (10, 0, 0)


def test_same_trigger_in_two_sessions_never_mails_twice_after_drops(stack) -> None:
    """Every session drops after 3 messages: four tries (3 + 3 + 3 + 1) deliver 10 emails once."""
    emu, smtp, engine = stack
    people = customers(10)
    upsert_profiles(engine, people)
    smtp.set_faults([{"drop_after_messages": 3}])
    emu.client.publish(triggers_for(people))

    run = _run()

    assert dag_test_tries(run) == {0: 4}
    assert len(smtp.fired_faults()) == 3
    batch_id = batch_of(engine, run.run_id)
    _exactly_once(smtp, engine, batch_id, {p["email"] for p in people})
    counts = summary(engine, batch_id)
    assert_balanced(counts)
    assert counts["sent"] == 10
    # one (re)connection per try, each sending only what was still unsent
    sent_per_try: dict[int, int] = {}
    for entries in actions_by_row(engine, batch_id).values():
        for try_number, action, _ in entries:
            if action == "sent":
                sent_per_try[try_number] = sent_per_try.get(try_number, 0) + 1
    assert sent_per_try == {1: 3, 2: 3, 3: 3, 4: 1}


def test_a_relay_refusing_every_message_fails_the_run_and_suppresses_nobody(stack) -> None:
    """A relay that lost its credentials answers 530 5.7.0 to every MAIL FROM: an incident, not
    bounces. The first try fails 5 emails (refusal_limit) and stops; each retry stops at its first
    refusal; the rest stays pending; nobody lands on the suppression list; the run fails."""
    from airflow.utils.state import DagRunState

    emu, smtp, engine = stack
    people = customers(10)
    upsert_profiles(engine, people)
    smtp.set_faults([{"mail_code": 530, "message": "5.7.0 Authentication required"}])
    emu.client.publish(triggers_for(people))

    run = load_dag().test(logical_date=minute(0))

    assert run.state == DagRunState.FAILED
    assert dag_test_tries(run) == {0: 4}
    batch_id = batch_of(engine, run.run_id)
    rows = ledger(engine, batch_id)
    assert [r["state"] for r in rows] == ["failed"] * 8 + ["pending"] * 2  # 5, then 1 per retry
    assert {r["smtp_reply"] for r in rows if r["state"] == "failed"} == {
        "message-refused at mail: 530 5.7.0 Authentication required"}
    assert suppression_rows(engine) == []
    assert smtp.eml_paths() == []
    assert len(smtp.fired_faults()) == 8
