"""The run's Params reach the send stage's options (include/triggerflow/runtime.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from include.triggerflow.runtime import send_options
from include.triggerflow.stages.send import SendOptions


def _context(params: dict, *, try_number: int = 1, max_tries: int = 2) -> dict:
    return {
        "params": params,
        "ti": SimpleNamespace(try_number=try_number, max_tries=max_tries),
        "dag_run": SimpleNamespace(run_id="manual__x", dag_id="trigger_emails"),
    }


def test_defaults_are_the_send_stage_defaults() -> None:
    opts = send_options(_context({}))
    assert opts.hard_bounce_suppress_days is None
    assert opts.refusal_limit == SendOptions.refusal_limit
    assert opts.max_email_bytes == SendOptions.max_email_bytes
    assert opts.last_try is False


@pytest.mark.parametrize("empty", [None, ""])
def test_empty_suppression_days_means_for_good(empty: object) -> None:
    assert send_options(_context({"hard_bounce_suppress_days": empty})).hard_bounce_suppress_days is None


def test_params_override_defaults() -> None:
    opts = send_options(
        _context({"hard_bounce_suppress_days": 30, "refusal_limit": 2, "max_email_bytes": 5000}, try_number=3)
    )
    assert (opts.hard_bounce_suppress_days, opts.refusal_limit, opts.max_email_bytes) == (30.0, 2, 5000)
    assert opts.last_try is True


# -- G: the send group size (run param, else the SMTP connection's extra, else the default) ---------------
def _smtp_conn(monkeypatch: pytest.MonkeyPatch, **extra: object) -> None:
    import json

    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TRIGGERS", json.dumps(
        {"conn_type": "smtp", "host": "relay.test", "port": 2525, "extra": {"from_email": "shop@example.com", **extra}}))


def test_group_size_defaults_to_the_ledger_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from include.triggerflow.ledger import DEFAULT_GROUP_SIZE

    _smtp_conn(monkeypatch)
    assert send_options(_context({})).group_size == DEFAULT_GROUP_SIZE
    assert send_options(_context({"send_group_size": None})).group_size == DEFAULT_GROUP_SIZE


def test_group_size_comes_from_the_connection_unless_the_run_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _smtp_conn(monkeypatch, send_group_size="25")
    assert send_options(_context({})).group_size == 25
    assert send_options(_context({"send_group_size": 7})).group_size == 7


@pytest.mark.parametrize("bad", [0, "ten", 1001, True, -3, 2.5])
def test_a_bad_group_size_in_the_connection_is_an_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch, bad: object) -> None:
    _smtp_conn(monkeypatch, send_group_size=bad)
    with pytest.raises(ValueError, match=r"'smtp_triggers': extra\.send_group_size must be a whole number from 1 to 1000"):
        send_options(_context({}))
