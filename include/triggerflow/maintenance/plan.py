"""The effective cutoffs of one maintenance run: the settings, raised wherever an invariant
needs more, each raise recorded with its reason (task log and tf_maintenance).

* The send ledger is what deduplication and frequency caps look back into
  (``stages/reconcile_load.history_since``): the longest dedup window (plus the route's validity,
  since a trigger up to that old is still deduplicated against the window before its own
  timestamp) and the longest cap period. ``ledger_days`` is never shorter than that.
* A batch's events, decisions and quarantine go together (the report recomputes a batch from all
  three): the batch is eligible after the longer of ``event_days`` and ``decision_days``.
* A failed batch is kept at least as long as a good one; run summaries and outcomes at least as
  long as a failed batch (a batch without a balanced summary counts as failed).
* Airflow's metadata is never cleaned inside the failed-batch window: an operator clears a failed
  run from the UI, which needs its dag_run and task instances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from include.triggerflow.config import RoutingConfig
from include.triggerflow.maintenance.settings import RetentionSettings

DAY_S = 86_400


def ledger_minimum_s(config: RoutingConfig | None) -> int:
    """Seconds of ledger history the reconcile rules of ``config`` can look back into."""
    if config is None:
        return 0
    needed = 0
    for route in config.routes:
        rules = route.rules
        if rules.dedup_window_s:
            needed = max(needed, rules.dedup_window_s + (rules.validity_s or 0))
        if rules.frequency_cap is not None:
            needed = max(needed, rules.frequency_cap.per_s)
    return needed


def ledger_minimum_days(config: RoutingConfig | None) -> float:
    """:func:`ledger_minimum_s` in whole days, rounded up (never shorter)."""
    return float(math.ceil(ledger_minimum_s(config) / DAY_S))


@dataclass(frozen=True)
class Plan:
    """Effective days per concern and their cutoffs at ``now``."""

    now: datetime
    settings: RetentionSettings
    batch_days: float
    quarantine_days: float
    failed_batch_days: float
    ledger_days: float
    ledger_detail_days: float
    send_log_days: float
    run_days: float
    metadata_days: float
    notes: dict[str, str] = field(default_factory=dict)

    def cutoff(self, days: float) -> datetime:
        return self.now - timedelta(days=days)

    @property
    def batch_cutoff(self) -> datetime:
        return self.cutoff(self.batch_days)

    @property
    def quarantine_cutoff(self) -> datetime:
        return self.cutoff(self.quarantine_days)

    @property
    def failed_batch_cutoff(self) -> datetime:
        return self.cutoff(self.failed_batch_days)

    @property
    def ledger_cutoff(self) -> datetime:
        return self.cutoff(self.ledger_days)

    @property
    def ledger_detail_cutoff(self) -> datetime:
        return self.cutoff(self.ledger_detail_days)

    @property
    def send_log_cutoff(self) -> datetime:
        return self.cutoff(self.send_log_days)

    @property
    def run_cutoff(self) -> datetime:
        return self.cutoff(self.run_days)

    @property
    def metadata_cutoff(self) -> datetime | None:
        return self.cutoff(self.metadata_days) if self.metadata_days > 0 else None


def make_plan(settings: RetentionSettings, config: RoutingConfig | None, now: datetime) -> Plan:
    notes: dict[str, str] = {}

    def raised(key: str, value: float, floor: float, why: str) -> float:
        if value < floor:
            notes[key] = f"{key} {value:g} raised to {floor:g} days: {why}"
            return floor
        return value

    batch_days = max(settings.event_days, settings.decision_days)
    if settings.event_days != settings.decision_days:
        notes["batch_days"] = (
            f"events ({settings.event_days:g} days) and decisions ({settings.decision_days:g} days) of a batch "
            f"go together after {batch_days:g} days: a batch's report is computed from both"
        )
    failed = raised("failed_batch_days", settings.failed_batch_days, batch_days, "a failed batch is kept at least as long as a good one")
    minimum = ledger_minimum_days(config)
    ledger = raised(
        "ledger_days", settings.ledger_days, minimum,
        f"the routing file's rules look back {ledger_minimum_s(config)} s into the ledger (dedup window + validity, frequency cap)",
    )
    run_days = raised("run_days", settings.run_days, failed, "a batch without a balanced run summary would count as failed")
    metadata = settings.metadata_days
    if metadata > 0:
        metadata = raised("metadata_days", metadata, failed, "a failed run stays clearable from the UI for the failed-batch window")
    return Plan(
        now=now,
        settings=settings,
        batch_days=batch_days,
        quarantine_days=settings.quarantine_days,
        failed_batch_days=failed,
        ledger_days=ledger,
        ledger_detail_days=min(settings.ledger_detail_days, ledger),
        send_log_days=settings.send_log_days,
        run_days=run_days,
        metadata_days=metadata,
        notes=notes,
    )
