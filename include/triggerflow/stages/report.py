"""Stage 5 — the run's report: counts, their balance, and how old the sent triggers were.

Every pulled event must end in exactly one bucket:

    pulled  = valid + quarantined
    valid   = matched + unmatched + ambiguous_identity + ignored
    matched = queued + suppressed + duplicate + capped + expired + no_products   (a profile was found)
    queued  = sent + failed + deferred + ambiguous + pending + scheduled   (ledger rows)

``no_products`` counts the events that named products of which none can be shown (decision
``no-products``: in catalogue mode none of their SKUs is in the catalogue), so no email was made.
``deferred`` is a 4xx answer waiting for a retry; ``scheduled`` an email held for the customer's
quiet hours (decision ``deferred``), sent by a later run once the window is over.

``dropped`` counts what the source delivered that could not be landed as an event at all (a Pipeline
line that is not JSON, not an object, blank...; ``tf_batch.dropped``, with ``dropped_reasons`` as
``{reason: count}``). Those lines have no event, so they stand outside the balance; they are shown
so that they are never only in a task log.

A batch whose counts do not balance has lost or double-counted something; the report raises
:class:`CountsDoNotBalance` and the run fails loudly rather than going green.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Engine, delete, func, insert, select

from include.triggerflow.payloads import ReportXCom
from include.triggerflow.sla import DEFAULT_ALERT_AFTER_S, latency_summary, oldest_waiting, run_latencies
from include.triggerflow.stages.landing_bookkeeping import dropped_counts
from include.triggerflow.states import SUPPRESSED_PREFIX, Decision, EventStatus, SendState
from include.triggerflow.stats import refresh_quietly
from include.triggerflow.store.schema import batch, decision, event, run_summary, send
from include.triggerflow.timeutil import as_utc, utcnow

log = logging.getLogger(__name__)


class CountsDoNotBalance(RuntimeError):
    """The batch's buckets do not add up."""


@dataclass(frozen=True)
class Report:
    batch_id: str
    counts: dict[str, Any]
    balanced: bool
    problems: list[str]

    def as_xcom(self) -> ReportXCom:
        # the counts' keys are tf_run_summary's counters, listed in ReportXCom's docstring
        return cast(ReportXCom, {"batch_id": self.batch_id, "balanced": self.balanced, **self.counts})

    def table(self) -> str:
        c = self.counts
        lines = [
            f"batch {self.batch_id}",
            f"  pulled      {c['pulled']:>8}  = valid {c['valid']} + quarantined {c['quarantined']}",
            f"  valid       {c['valid']:>8}  = matched {c['matched']} + unmatched {c['unmatched']} "
            f"+ ambiguous identity {c['ambiguous_identity']} + ignored {c['ignored']}",
            f"  matched     {c['matched']:>8}  = queued {c['queued']} + suppressed {c['suppressed']} + duplicate "
            f"{c['duplicate']} + capped {c['capped']} + expired {c['expired']} + no products {c.get('no_products', 0)}",
            f"  queued      {c['queued']:>8}  = sent {c['sent']} + failed {c['failed']} + deferred {c['deferred']} "
            f"+ ambiguous {c['ambiguous']} + pending {c['pending']} + scheduled {c['scheduled']}",
        ]
        if c.get("dropped"):
            reasons = ", ".join(f"{k} {n}" for k, n in sorted((c.get("dropped_reasons") or {}).items()))
            lines.append(f"  dropped     {c['dropped']:>8}  lines the source sent that are no event" + (f" ({reasons})" if reasons else ""))
        if c.get("suppressed_by"):
            lines.append("  suppressed by: " + ", ".join(f"{k} {n}" for k, n in sorted(c["suppressed_by"].items())))
        if c.get("this_run"):
            t = c["this_run"]
            lines.append(
                "  this run:   sent {sent}, resent {resent}, skipped as already sent {skipped_already_sent}, "
                "dry-run {dry_run}, deferred {deferred}, failed {failed}, ambiguous {ambiguous}".format(**t)
            )
        if c.get("released"):
            r = c["released"]
            lines.append(f"  released from quiet hours (earlier batches): sent {r.get('sent', 0)}, failed {r.get('failed', 0)}")
        if c.get("note"):
            lines.append(f"  note: {c['note']}")
        if c.get("oldest_sent_age_s") is not None:
            lines.append(f"  oldest trigger sent was {c['oldest_sent_age_s']:.1f} s old when the server accepted it")
        lat = c.get("latency_s") or {}
        if lat.get("count"):
            lines.append(
                f"  latency trigger -> accepted, {lat['count']} emails of this run: p50 {lat['p50']:.1f} s, "
                f"p95 {lat['p95']:.1f} s, p99 {lat['p99']:.1f} s, max {lat['max']:.1f} s"
            )
        sla = c.get("sla") or {}
        if sla.get("oldest_waiting_age_s") is not None:
            lines.append(f"  oldest trigger still waiting: {sla['oldest_waiting_age_s']:.1f} s, in the {sla['waiting_where']}")
        if sla.get("breached"):
            lines.append(f"  SLA ALERT: {sla.get('alert', {}).get('detail', '')} ({sla.get('alert', {}).get('notified', '')})")
        lines.append("  balanced" if self.balanced else "  NOT BALANCED: " + "; ".join(self.problems))
        return "\n".join(lines)


def _group_counts(conn: Any, column: Any, table: Any, batch_id: str) -> dict[str, int]:
    rows = conn.execute(select(column, func.count()).select_from(table).where(table.c.batch_id == batch_id).group_by(column))
    return {str(k): int(n) for k, n in rows}


def compute_report(engine: Engine, batch_id: str) -> Report:
    with engine.connect() as conn:
        statuses = _group_counts(conn, event.c.status, event, batch_id)
        decisions = _group_counts(conn, decision.c.decision, decision, batch_id)
        states = _group_counts(conn, send.c.state, send, batch_id)
        sent_rows = conn.execute(
            select(send.c.trigger_ts, send.c.sent_at).where(send.c.batch_id == batch_id, send.c.state == SendState.SENT)
        ).all()
        dropped_row = conn.execute(
            select(batch.c.dropped, batch.c.dropped_reasons).where(batch.c.batch_id == batch_id)
        ).first()

    suppressed_by = {k.removeprefix(SUPPRESSED_PREFIX): n for k, n in decisions.items() if k.startswith(SUPPRESSED_PREFIX)}
    suppressed = sum(suppressed_by.values())
    counts: dict[str, Any] = {
        "pulled": sum(statuses.values()),
        "valid": statuses.get(EventStatus.VALID, 0),
        "quarantined": statuses.get(EventStatus.QUARANTINED, 0),
        "unvalidated": statuses.get(EventStatus.LANDED, 0),
        "ignored": decisions.get(Decision.IGNORED, 0),
        "unmatched": decisions.get(Decision.UNMATCHED, 0),
        "ambiguous_identity": decisions.get(Decision.AMBIGUOUS, 0),
        "suppressed": suppressed,
        "suppressed_by": suppressed_by,
        "duplicate": decisions.get(Decision.DUPLICATE, 0),
        "capped": decisions.get(Decision.CAPPED, 0),
        "expired": decisions.get(Decision.EXPIRED, 0),
        "no_products": decisions.get(Decision.NO_PRODUCTS, 0),
        "deferred_quiet_hours": decisions.get(Decision.DEFERRED, 0),
        "queued": decisions.get(Decision.MATCHED, 0) + decisions.get(Decision.DEFERRED, 0),
        "sent": states.get(SendState.SENT, 0),
        "failed": states.get(SendState.FAILED, 0),
        "deferred": states.get(SendState.DEFERRED, 0),
        "ambiguous": states.get(SendState.AMBIGUOUS, 0),
        "pending": states.get(SendState.PENDING, 0) + states.get(SendState.SENDING, 0),
        "scheduled": states.get(SendState.SCHEDULED, 0),
    }
    counts["dropped"], counts["dropped_reasons"] = dropped_counts(dropped_row)
    counts["matched"] = (
        counts["queued"] + suppressed + counts["duplicate"] + counts["capped"] + counts["expired"] + counts["no_products"]
    )
    ages = [
        (as_utc(sent_at) - datetime.fromtimestamp(ts / 1000, tz=UTC)).total_seconds()
        for ts, sent_at in sent_rows
        if ts is not None and sent_at is not None
    ]
    counts["oldest_sent_age_s"] = round(max(ages), 3) if ages else None

    problems = []
    if counts["pulled"] != counts["valid"] + counts["quarantined"]:
        problems.append(f"pulled {counts['pulled']} != valid + quarantined ({counts['unvalidated']} never validated)")
    decided = counts["matched"] + counts["unmatched"] + counts["ambiguous_identity"] + counts["ignored"]
    if counts["valid"] != decided:
        problems.append(f"valid {counts['valid']} != matched + unmatched + ambiguous identity + ignored ({decided})")
    accounted = sum(counts[k] for k in ("sent", "failed", "deferred", "ambiguous", "pending", "scheduled"))
    if counts["queued"] != accounted:
        problems.append(f"queued {counts['queued']} != sum of ledger states ({accounted})")
    return Report(batch_id=batch_id, counts=counts, balanced=not problems, problems=problems)


RUN_ACTIONS = ("sent", "resent", "skipped_already_sent", "dry_run", "deferred", "failed", "ambiguous")


def report_batch(
    engine: Engine,
    batch_id: str,
    *,
    dag_id: str,
    run_id: str,
    send_results: list[dict[str, Any]] | None = None,
    note: str | None = None,
    source_capped: bool = False,
    sla_alert_after_s: float | None = DEFAULT_ALERT_AFTER_S,
    on_sla_breach: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
) -> Report:
    """Compute, store and return the report; raise if it does not balance.

    ``send_results`` are this run's send task results: what *this* attempt did (sent, skipped
    as already sent by an earlier attempt, resent, dry-run...), as opposed to the batch totals.
    ``source_capped``: the pull stopped at ``max_events``, so more messages wait in the source.
    When the oldest waiting trigger is older than ``sla_alert_after_s``, ``on_sla_breach`` is
    called with ``{"age_s", "where", "threshold_s"}`` and what it returns goes into the report.
    """
    report = compute_report(engine, batch_id)
    c = report.counts
    c["latency_s"] = latency_summary(run_latencies(engine, run_id))
    waiting = oldest_waiting(engine, batch_id, source_capped=source_capped)
    breached = (
        sla_alert_after_s is not None and waiting["age_s"] is not None and waiting["age_s"] > sla_alert_after_s
    )
    c["sla"] = {
        "oldest_waiting_age_s": waiting["age_s"],
        "waiting_where": waiting["where"],
        "alert_after_s": sla_alert_after_s,
        "breached": breached,
    }
    if breached and on_sla_breach is not None:
        c["sla"]["alert"] = on_sla_breach(
            {"age_s": waiting["age_s"], "where": waiting["where"], "threshold_s": sla_alert_after_s}
        )
    this_run = dict.fromkeys(RUN_ACTIONS, 0)
    released = dict.fromkeys(RUN_ACTIONS, 0)
    for result in send_results or []:
        # chunks of earlier batches whose quiet hours ended are reported apart from this batch
        into = this_run if (result or {}).get("batch_id", batch_id) == batch_id else released
        for key, value in (result or {}).get("counts", {}).items():
            if key in into:
                into[key] += int(value)
    c["this_run"] = this_run
    if any(released.values()):
        c["released"] = released
    c["skipped_already_sent"] = this_run["skipped_already_sent"]
    if note:
        c["note"] = note
    with engine.begin() as conn:
        conn.execute(delete(run_summary).where(run_summary.c.batch_id == batch_id))
        conn.execute(
            insert(run_summary).values(
                batch_id=batch_id,
                dag_id=dag_id,
                run_id=run_id,
                pulled=c["pulled"],
                valid=c["valid"],
                quarantined=c["quarantined"],
                matched=c["matched"],
                unmatched=c["unmatched"],
                ignored=c["ignored"],
                sent=c["sent"],
                suppressed=c["suppressed"],
                failed=c["failed"],
                duplicate=c["duplicate"],
                pending=c["pending"] + c["deferred"] + c["scheduled"],
                balanced=report.balanced,
                oldest_sent_age_s=c["oldest_sent_age_s"],
                counts=json.dumps({**c, "balanced": report.balanced, "problems": report.problems}),
                reported_at=utcnow(),
            )
        )
        exists = conn.execute(select(func.count()).select_from(batch).where(batch.c.batch_id == batch_id)).scalar_one()
    refresh_quietly(engine, batch_id)  # repairs the status counters should a stage's refresh have failed
    log.info("run report\n%s", report.table())
    if not exists:
        log.info("no batch %s was landed", batch_id)
    if not report.balanced:
        raise CountsDoNotBalance(f"batch {batch_id} does not balance: " + "; ".join(report.problems))
    return report
