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
        "dag_run": SimpleNamespace(run_id="manual__x"),
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
