"""Where the DAG's tasks check the detectors: around the pull, around a send chunk, after the
report, and in a task's final failure.

Everything here swallows its own errors (logged): an alert is never a new failure, and the
exception that fails a task is always re-raised unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from sqlalchemy import Engine

from include.triggerflow.alerts import detectors
from include.triggerflow.alerts.channels import Channel, airflow_channels
from include.triggerflow.alerts.kinds import (
    DEFAULT_FAILED_RUNS,
    DEFAULT_QUARANTINE_MIN_EVENTS,
    DEFAULT_QUARANTINE_SHARE,
    DEFAULT_RENOTIFY_MINUTES,
    DEFAULT_SOURCE_STALL_MINUTES,
    AlertKind,
    AlertOutcome,
    Firing,
)
from include.triggerflow.alerts.record import fire, fire_sla_alert, resolve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlertSettings:
    """The thresholds, from the run's Params (dags/trigger_emails.py; README "Alerts")."""

    renotify_s: float = DEFAULT_RENOTIFY_MINUTES * 60
    failed_runs: int = DEFAULT_FAILED_RUNS
    source_stall_s: float = DEFAULT_SOURCE_STALL_MINUTES * 60
    quarantine_share: float = DEFAULT_QUARANTINE_SHARE
    quarantine_min_events: int = DEFAULT_QUARANTINE_MIN_EVENTS

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> AlertSettings:
        def get(name: str, default: float) -> float:
            value = params.get(name)
            return default if value in (None, "") else float(value)

        return cls(
            renotify_s=get("alert_renotify_minutes", DEFAULT_RENOTIFY_MINUTES) * 60,
            failed_runs=int(get("failed_runs_alert", DEFAULT_FAILED_RUNS)),
            source_stall_s=get("source_stall_minutes", DEFAULT_SOURCE_STALL_MINUTES) * 60,
            quarantine_share=get("quarantine_alert_share", DEFAULT_QUARANTINE_SHARE),
            quarantine_min_events=int(get("quarantine_alert_min_events", DEFAULT_QUARANTINE_MIN_EVENTS)),
        )


@dataclass
class Alerter:
    """Fires and resolves for one run; the channels are looked up only when something fires."""

    engine: Engine
    dag_id: str
    run_id: str
    settings: AlertSettings = field(default_factory=AlertSettings)
    channels: Callable[[], Sequence[Channel]] = airflow_channels

    def fire(self, firing: Firing | None) -> AlertOutcome | None:
        if firing is None:
            return None
        try:
            return fire(self.engine, firing, _LazyChannels(self.channels), renotify_s=self.settings.renotify_s)
        except Exception:
            log.exception("could not fire the %s alert (the run goes on)", firing.kind.value)
            return None

    def fire_or_resolve(self, kind: AlertKind, subject: str, firing: Firing | None) -> AlertOutcome | None:
        if firing is not None:
            return self.fire(firing)
        self.resolve(kind, subject)
        return None

    def resolve(self, kind: AlertKind, subject: str | None = None) -> None:
        try:
            resolve(self.engine, kind, subject)
        except Exception:
            log.exception("could not resolve the %s alert (the run goes on)", kind.value)

    def sla(self, batch_id: str) -> Callable[[dict[str, Any]], AlertOutcome]:
        """The report's SLA-breach callback (``{"age_s", "where", "threshold_s"}``)."""

        def on_breach(info: dict[str, Any]) -> AlertOutcome:
            try:
                return fire_sla_alert(
                    self.engine, dag_id=self.dag_id, run_id=self.run_id, batch_id=batch_id,
                    channels=_LazyChannels(self.channels), **info,
                )
            except Exception as exc:
                log.exception("could not fire the SLA alert (the run goes on)")
                return {"alert_id": 0, "detail": "", "notified": f"alert failed: {exc.__class__.__name__}"}

        return on_breach


class _LazyChannels(Sequence[Channel]):
    """The channels, looked up (Variables, Connections) at the first use only: a rate-limited
    firing never asks Airflow for them."""

    def __init__(self, factory: Callable[[], Sequence[Channel]]) -> None:
        self._factory = factory
        self._channels: Sequence[Channel] | None = None

    def _get(self) -> Sequence[Channel]:
        if self._channels is None:
            self._channels = self._factory()
        return self._channels

    def __getitem__(self, index: Any) -> Any:
        return self._get()[index]

    def __len__(self) -> int:
        return len(self._get())

    def __iter__(self) -> Iterator[Channel]:
        return iter(self._get())


class PullAlerts:
    """Around the pull: credentials refused (fired on the refusal, resolved by a pull that read the
    source), and the source-stalled check after every pull that had a source."""

    def __init__(self, alerter: Alerter, *, max_events: int) -> None:
        self.alerter = alerter
        self.max_events = max_events
        self.source_key: str | None = None  # set once the source is known

    def __enter__(self) -> PullAlerts:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        from include.triggerflow.adobe.ims_refusal import CredentialsRefused
        from include.triggerflow.sources.base import SourceError

        a = self.alerter
        try:
            if isinstance(exc, CredentialsRefused):
                subject = (self.source_key or "source") if isinstance(exc, SourceError) else "ims"
                a.fire(detectors.credentials_refused(exc, subject=subject, dag_id=a.dag_id, run_id=a.run_id))
            elif exc is None and self.source_key is not None:
                a.resolve(AlertKind.CREDENTIALS_REFUSED)
            if self.source_key is not None:
                stalled = detectors.source_stalled(
                    a.engine, self.source_key, stall_s=a.settings.source_stall_s, max_events=self.max_events,
                    dag_id=a.dag_id, run_id=a.run_id,
                )
                a.fire_or_resolve(AlertKind.SOURCE_STALLED, self.source_key, stalled)
        except Exception:
            log.exception("the pull's alert checks failed (the run goes on)")
        # never swallows the pull's own exception


@contextmanager
def send_alerts(alerter: Alerter, batch_id: str, smtp_conn_id: str = "smtp_triggers") -> Iterator[None]:
    """Around a send chunk: a chunk stopped by ``refusal_limit`` identical message-level refusals."""
    from include.triggerflow.stages.send import RelayRefusing

    try:
        yield
    except RelayRefusing as exc:
        alerter.fire(
            detectors.relay_refusing(exc, subject=smtp_conn_id, dag_id=alerter.dag_id, run_id=alerter.run_id,
                                     batch_id=batch_id)
        )
        raise


def report_alerts(alerter: Alerter, batch_id: str, counts: Mapping[str, Any]) -> None:
    """After a report that balanced (the run succeeded): the run outcome, the batch's quarantine
    share and ambiguous sends, and the conditions a succeeded run clears."""
    a, s = alerter, alerter.settings
    try:
        detectors.record_outcome(a.engine, a.dag_id, a.run_id, detectors.RunOutcome.SUCCEEDED)
        a.resolve(AlertKind.FAILED_RUNS, a.dag_id)
        a.resolve(AlertKind.RELAY_REFUSING)  # every chunk of this run got through
        if not (counts.get("sla") or {}).get("breached"):
            a.resolve(AlertKind.SLA_BREACH, a.dag_id)
        a.fire_or_resolve(
            AlertKind.QUARANTINE_SHARE, a.dag_id,
            detectors.quarantine_share(counts, share=s.quarantine_share, min_events=s.quarantine_min_events,
                                       dag_id=a.dag_id, run_id=a.run_id, batch_id=batch_id),
        )
        a.fire_or_resolve(
            AlertKind.AMBIGUOUS_SENDS, a.dag_id,
            detectors.ambiguous_sends(counts, dag_id=a.dag_id, run_id=a.run_id, batch_id=batch_id),
        )
    except Exception:
        log.exception("the report's alert checks failed (the run goes on)")


def task_failed(alerter: Alerter, task_id: str, error: str) -> None:
    """A task failed for good (after its last retry): the run failed; N in a row alert."""
    a = alerter
    try:
        if detectors.record_outcome(a.engine, a.dag_id, a.run_id, detectors.RunOutcome.FAILED, task_id=task_id, error=error):
            a.fire(detectors.failed_runs(a.engine, a.dag_id, a.run_id, threshold=a.settings.failed_runs,
                                         task_id=task_id, error=error))
    except Exception:
        log.exception("the failed-run alert check failed")
