"""Retention settings and the effective plan (pure: no store)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from include.triggerflow.config.model import FrequencyCap
from include.triggerflow.maintenance.plan import ledger_minimum_days, ledger_minimum_s, make_plan
from include.triggerflow.maintenance.settings import RetentionSettings, env_default

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def test_the_defaults_are_campaigns_three_days() -> None:
    s = RetentionSettings()
    assert (s.event_days, s.decision_days, s.quarantine_days) == (3, 3, 3)
    assert s.ledger_days >= 1 and s.metadata_days == 30


def test_params_override_and_env_sets_the_param_default(monkeypatch: pytest.MonkeyPatch) -> None:
    s = RetentionSettings.from_params({"event_days": 5, "skip_tables": ["tf_send"], "vacuum": False, "chunk_rows": 10, "ledger_days": None})
    assert (s.event_days, s.skip_tables, s.vacuum, s.chunk_rows, s.ledger_days) == (5.0, ("tf_send",), False, 10, 30.0)
    monkeypatch.setenv("TRIGGERFLOW_RETENTION_EVENT_DAYS", "4.5")
    monkeypatch.setenv("TRIGGERFLOW_RETENTION_SKIP_TABLES", "tf_alert, tf_send")
    monkeypatch.setenv("TRIGGERFLOW_RETENTION_VACUUM", "false")
    assert env_default("event_days") == 4.5
    assert env_default("skip_tables") == ["tf_alert", "tf_send"]
    assert env_default("vacuum") is False
    assert env_default("ledger_days") == 30.0
    with pytest.raises(ValueError, match="negative"):
        RetentionSettings.from_params({"event_days": -1})


def test_the_ledger_minimum_is_the_longest_rule_look_back(routing) -> None:
    # the shipped routes: 24 h dedup windows, no caps
    assert ledger_minimum_s(routing) >= 86_400
    capped = replace(routing, routes=(
        replace(routing.routes[0], rules=replace(routing.routes[0].rules, dedup_window_s=2 * 86_400, validity_s=3_600)),
        replace(routing.routes[1], rules=replace(routing.routes[1].rules, frequency_cap=FrequencyCap(max=1, per_s=7 * 86_400))),
    ))
    assert ledger_minimum_s(capped) == 7 * 86_400
    assert ledger_minimum_days(capped) == 7
    plan = make_plan(RetentionSettings(ledger_days=2), capped, NOW)
    assert plan.ledger_days == 7 and "ledger_days 2 raised to 7" in plan.notes["ledger_days"]
    assert make_plan(RetentionSettings(ledger_days=60), capped, NOW).ledger_days == 60


def test_windows_are_raised_where_an_invariant_needs_it() -> None:
    plan = make_plan(RetentionSettings(event_days=5, decision_days=2, failed_batch_days=1, run_days=3, metadata_days=2), None, NOW)
    assert plan.batch_days == 5 and "batch_days" in plan.notes
    assert plan.failed_batch_days == 5
    assert plan.run_days == 5
    assert plan.metadata_days == 5  # never cleans Airflow's record of a run a replay may need
    assert make_plan(RetentionSettings(metadata_days=0), None, NOW).metadata_cutoff is None
