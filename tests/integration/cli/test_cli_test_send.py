"""Tests for the ``test-send`` command against a real SMTP sink process, the CLI run in-process
through ``main`` (tests/cli_support.py)."""

from __future__ import annotations

import pytest

from devstack.processes import RunningSmtpSink
from tests.cli_support import run_cli as cli
from tests.fixtures import smtp_conn


@pytest.fixture
def sink(smtp_sink_process: RunningSmtpSink) -> RunningSmtpSink:
    for path in smtp_sink_process.out_dir.glob("*.eml"):
        path.unlink()
    smtp_sink_process.clear_faults()
    return smtp_sink_process


def test_test_send_over_the_connection(kit, store_url: str, sink: RunningSmtpSink) -> None:
    kit.add_profiles({"customer_id": "C1", "email": "ada@example.com", "first_name": "Ada", "timezone": "Europe/London"})

    done = cli(
        "--db-url", store_url, "test-send", "--route", "cart_abandonment", "--customer-id", "C1",
        "--to", "qa1@example.com", "--to", "qa2@example.com",
        env={"AIRFLOW_CONN_SMTP_TRIGGERS": smtp_conn(sink)},
    )

    assert done.returncode == 0, done.stderr
    lines = [line.split("\t") for line in done.stdout.splitlines()]
    assert [(line[0], line[1]) for line in lines] == [("qa1@example.com", "accepted"), ("qa2@example.com", "accepted")]
    messages = sink.wait_for(2)
    assert sorted(str(m["To"]) for m in messages) == ["qa1@example.com", "qa2@example.com"]
    for msg in messages:
        assert msg["Subject"] == "[TEST] Ada, you left something in your cart"
        assert msg["From"] == "triggerflow shop <shop@triggerflow.test>"  # from_name/from_email of the connection
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # the customer's own address got nothing, and the send ledger was not touched
    assert "ada@example.com" not in {str(m["X-Envelope-To"]) for m in messages}
    from include.triggerflow.store.schema import send

    assert kit.count(send) == 0


def test_test_send_with_flags_and_no_connection(sink: RunningSmtpSink) -> None:
    done = cli(
        "test-send", "--route", "browse_abandonment", "--to", "qa@example.com", "--smtp-conn", "no_such_conn",
        "--smtp-host", sink.host, "--smtp-port", str(sink.port), "--from", "qa-sender@example.com",
        "--subject-prefix", "[QA] ",
        drop=("AIRFLOW_CONN_SMTP_TRIGGERS",),
    )
    assert done.returncode == 0, done.stderr
    (msg,) = sink.wait_for(1)
    assert msg["Subject"] == "[QA] Grace, still looking? Your picks are waiting"
    assert msg["X-Envelope-From"] == "qa-sender@example.com"


def test_test_send_refuses_a_bad_seed_and_sends_nothing(sink: RunningSmtpSink) -> None:
    done = cli(
        "test-send", "--route", "cart_abandonment", "--to", "qa@example.com", "--to", "not-an-address",
        env={"AIRFLOW_CONN_SMTP_TRIGGERS": smtp_conn(sink)},
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: refusing to send to any seed: invalid email address 'not-an-address'")
    assert sink.eml_paths() == []


def test_test_send_exits_1_when_the_server_refuses_a_seed(sink: RunningSmtpSink) -> None:
    sink.set_faults([{"rcpt": "full@example.com", "code": 552, "message": "5.2.2 mailbox full"}])
    done = cli(
        "test-send", "--route", "cart_abandonment", "--to", "full@example.com", "--to", "qa@example.com",
        env={"AIRFLOW_CONN_SMTP_TRIGGERS": smtp_conn(sink)},
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[0].startswith("full@example.com\trefused 552: 5.2.2 mailbox full\t<test.")
    assert [str(m["To"]) for m in sink.wait_for(1)] == ["qa@example.com"]
