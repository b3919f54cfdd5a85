"""Stage 2 — validate a landed batch with Great Expectations; bad events go to quarantine.

The expectation suite (built in code: the GX Airflow provider cannot install beside Airflow 3.3)
checks each event for required fields, types, a sane trigger timestamp and, for routed triggers,
the presence of the identity the route reconciles on. An event failing any expectation is
quarantined with every failed expectation as its reason; the run goes on with the rest.

Two columns are computed in Python per event and checked by GX to be null: ``landing_note`` (what
landing changed: invalid UTF-8, message larger than N bytes, NUL replaced...; a removed byte order
mark alone is no fault) and ``problems`` (what parsing found: "control character in eVar01",
"triggerTimestamp out of range"...). Their reasons list each note/problem on its own. An event
whose content breaks even the lifting into the frame is quarantined with that, never failing the
stage.

Timestamps are judged against the time the event was *received*, not the wall clock, so
validating the same batch again (a clear, a replay) gives the same answer.

Cost: each payload is parsed once into a compact column-wise frame (one list per column, the
text columns GX checks, the age as plain float64 so GX compares it vectorised); the suite runs on
it with ``Batch.validate`` (no validation-results store to serialise into); statuses and the
quarantine are written with set-based statements. Great Expectations (2-3 s to import) is imported
only when there is something to validate: an idle minute's run never pays for it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, func, select, update

from include.triggerflow.config import RoutingConfig
from include.triggerflow.events import parse_envelope
from include.triggerflow.gc_pause import collector_paused
from include.triggerflow.payloads import ValidatedXCom
from include.triggerflow.stages.landing_payload import BENIGN_NOTES
from include.triggerflow.states import EventStatus
from include.triggerflow.stats import refresh_quietly
from include.triggerflow.store.bulk import bulk_insert
from include.triggerflow.store.lookups import where_in
from include.triggerflow.store.schema import event, quarantine
from include.triggerflow.timeutil import epoch_ms, utcnow

log = logging.getLogger(__name__)

# A trigger older than this when it reached us is not sane input (the journal keeps 7 days,
# the Pipeline "a few days"); staleness for *sending* is a separate, per-trigger rule.
MAX_AGE_MS = 8 * 24 * 3600 * 1000
# Clocks drift; a trigger from further in the future than this is corrupt.
MAX_FUTURE_MS = 10 * 60 * 1000
VALUE_LIMIT = 120
#: at most this many landing notes and problems are kept in an event's reasons
MAX_LISTED = 25
UUIDISH = r"^[0-9A-Za-z][0-9A-Za-z-]{7,63}$"


@dataclass(frozen=True)
class ValidateResult:
    batch_id: str
    valid: int
    quarantined: int

    def as_xcom(self) -> ValidatedXCom:
        """The payload for reconcile and report (the DAG adds the landing note it carries along)."""
        return {"batch_id": self.batch_id, "valid": self.valid, "quarantined": self.quarantined}


#: the columns of the frame GX validates, in order
COLUMNS = ("event_id", "parse_error", "landing_note", "problems", "envelope_type", "message_id", "trigger_id",
           "trigger_ts", "trigger_age_ms", "routed", "identity")
#: columns GX sees as one "; "-joined text; the reasons list each item (the list is kept beside
#: the frame as ``<name>_items``) on its own
LISTED = ("landing_note", "problems")


def _lift(
    event_id: int, payload: str, received_ms: int, routing: RoutingConfig, landing_note: str | None = None
) -> tuple[Any, ...]:
    """One row of the frame GX validates (in COLUMNS order; LISTED columns as lists): text columns
    keep the raw value for the reason. Never raises: content that breaks the lifting quarantines
    the event with that."""
    notes = landing_notes(landing_note)
    try:
        parsed = parse_envelope(payload)
        route = routing.route_for(parsed.trigger_id) if isinstance(parsed.trigger_id, str) else None
        ts = parsed.trigger_ts
        return (
            event_id,
            parsed.parse_error,
            notes,
            list(parsed.problems),
            # the values as they came, so a refused one shows in the reason ("1e+30", "nan", true, {...})
            _text(parsed.raw("envelopeType")),
            _text(parsed.raw("messageId")),
            _text(parsed.raw("triggerId")),
            _text(parsed.raw("triggerTimestamp")),
            (received_ms - ts) if ts is not None else None,
            route is not None,
            # any identity rule of the route will do: they are an ordered fallback
            next((v for v in (r.extract(parsed) for r in route.identities) if v is not None), None)
            if route is not None
            else None,
        )
    except Exception as exc:
        log.warning("event %d could not be lifted for validation (%s)", event_id, exc.__class__.__name__)
        problem = f"the event could not be validated ({exc.__class__.__name__})"
        return (event_id, None, notes, [problem], None, None, None, None, None, False, None)


def landing_notes(landing_note: str | None) -> list[str]:
    """The notes of ``tf_event.landing_note`` that make an event invalid."""
    if not landing_note:
        return []
    return [n for n in landing_note.split("; ") if n and n not in BENIGN_NOTES][:MAX_LISTED]


def frame_columns(stored: Any, routing: RoutingConfig) -> dict[str, list[Any]]:
    """The frame GX validates, column-wise, for ``(event_id, payload, received_at[, landing_note])``
    rows."""
    received: dict[Any, int] = {}  # a page of events shares one received_at
    lifted = []
    for event_id, payload, received_at, *note in stored:
        ms = received.get(received_at)
        if ms is None:
            ms = received[received_at] = epoch_ms(received_at)
        lifted.append(_lift(int(event_id), payload, ms, routing, note[0] if note else None))
    columns = {name: [row[i] for row in lifted] for i, name in enumerate(COLUMNS)}
    for name in LISTED:
        columns[f"{name}_items"] = columns[name]
        columns[name] = ["; ".join(items) or None for items in columns[name]]
    return columns


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value)[:500]
    return str(value)


def build_suite(gx: Any, gxe: Any) -> Any:
    """The expectations every event must meet. Column-map expectations skip nulls, so each
    required column gets an explicit not-null expectation too."""
    from great_expectations.expectations.row_conditions import Column
    return gx.ExpectationSuite(
        name="trigger_events",
        expectations=[
            gxe.ExpectColumnValuesToBeNull(column="parse_error"),
            gxe.ExpectColumnValuesToBeNull(column="landing_note"),
            gxe.ExpectColumnValuesToBeNull(column="problems"),
            gxe.ExpectColumnValuesToNotBeNull(column="envelope_type"),
            gxe.ExpectColumnValuesToBeInSet(column="envelope_type", value_set=["DATA"]),
            gxe.ExpectColumnValuesToNotBeNull(column="message_id"),
            gxe.ExpectColumnValuesToMatchRegex(column="message_id", regex=UUIDISH),
            gxe.ExpectColumnValuesToNotBeNull(column="trigger_id"),
            gxe.ExpectColumnValuesToMatchRegex(column="trigger_id", regex=r"\S"),
            gxe.ExpectColumnValuesToNotBeNull(column="trigger_ts"),
            # epoch milliseconds: an integer of 12-13 digits (types are checked per row, on text)
            gxe.ExpectColumnValuesToMatchRegex(column="trigger_ts", regex=r"^\d{12,13}$"),
            gxe.ExpectColumnValuesToBeBetween(
                column="trigger_age_ms", min_value=-MAX_FUTURE_MS, max_value=MAX_AGE_MS
            ),
            gxe.ExpectColumnValuesToNotBeNull(column="identity", row_condition=Column("routed") == True),  # noqa: E712
        ],
    )


_GX: dict[str, Any] = {}


def _gx_batch_definition() -> tuple[Any, Any]:
    """(batch definition, suite), built once per process: an ephemeral context with one pandas
    dataframe asset; the frame comes with each validation as a batch parameter."""
    if not _GX:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        import great_expectations.expectations as gxe
        from great_expectations.data_context.types.base import ProgressBarsConfig

        ctx = gx.get_context(mode="ephemeral")
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        _GX["batch_definition"] = (
            ctx.data_sources.add_pandas("trigger_events")
            .add_dataframe_asset("batch")
            .add_batch_definition_whole_dataframe("whole")
        )
        _GX["suite"] = build_suite(gx, gxe)
    return _GX["batch_definition"], _GX["suite"]


def run_expectations(columns: dict[str, list[Any]]) -> dict[int, list[dict[str, Any]]]:
    """Validate the frame (:func:`frame_columns`); return {event_id: [failed expectation, ...]}
    for the failures."""
    if not columns["event_id"]:
        return {}
    import pandas as pd

    batch_definition, suite = _gx_batch_definition()
    frame = pd.DataFrame(columns, columns=list(COLUMNS))
    # plain float64 (NaN for missing): GX compares a numpy float column vectorised, an extension
    # dtype (Float64) one value at a time; the failing values read back are the same floats
    frame["trigger_age_ms"] = pd.to_numeric(frame["trigger_age_ms"], errors="coerce").astype("float64")
    frame["routed"] = frame["routed"].astype(bool)

    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(
        suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["event_id"]}
    )
    failures: dict[int, list[dict[str, Any]]] = {}
    for res in result.results:
        if res.success:
            continue
        config = res.expectation_config
        column = config.kwargs.get("column")
        for item in res.result.get("unexpected_index_list") or []:
            event_id = int(item["event_id"])
            failures.setdefault(event_id, []).append(
                {"expectation": config.type, "column": column, "value": _truncate(item.get(column))}
            )
    return failures


def _truncate(value: Any) -> Any:
    if value is None:
        return None
    try:
        import math

        if isinstance(value, float) and math.isnan(value):
            return None
    except TypeError:
        pass
    if hasattr(value, "item"):
        value = value.item()  # numpy scalar -> python
    text = value if isinstance(value, (int, float, bool)) else str(value)
    if isinstance(text, str) and len(text) > VALUE_LIMIT:
        return text[:VALUE_LIMIT] + "…"
    return text


def validate_batch(engine: Engine, batch_id: str, routing: RoutingConfig) -> ValidateResult:
    """Validate the batch's events that are not valid yet (new, or quarantined before).

    An event once valid stays valid: replaying a batch after a routing change must not turn an
    event that was already reconciled (and maybe mailed) into a quarantined one. Quarantined
    events are validated again, so a fix (routing corrected) lets them through.
    """
    with engine.connect() as conn:
        stored = conn.execute(
            select(event.c.event_id, event.c.payload, event.c.received_at, event.c.landing_note).where(
                event.c.batch_id == batch_id, event.c.status.in_((EventStatus.LANDED, EventStatus.QUARANTINED))
            )
        ).all()
        already_valid = conn.execute(
            select(func.count()).select_from(event).where(event.c.batch_id == batch_id, event.c.status == EventStatus.VALID)
        ).scalar_one()
    with collector_paused():  # every event of the batch parsed at once (gc_pause.py)
        columns = frame_columns(stored, routing)
    del stored
    failures = run_expectations(columns)
    # The parse error itself is the most useful part of the reason; keep its text. A list column
    # gives one reason per note/problem, each named on its own ("control character in eVar01").
    row_of = {event_id: i for i, event_id in enumerate(columns["event_id"])}
    for event_id, reasons in failures.items():
        i = row_of[event_id]
        expanded: list[dict[str, Any]] = []
        for reason in reasons:
            column = reason["column"]
            if column in LISTED and columns[f"{column}_items"][i]:
                expanded.extend({**reason, "value": _truncate(item)} for item in columns[f"{column}_items"][i])
            elif column == "parse_error" and columns["parse_error"][i]:
                expanded.append({**reason, "value": _truncate(columns["parse_error"][i])})
            else:
                expanded.append(reason)
        failures[event_id] = expanded

    all_ids = columns["event_id"]
    bad_ids = sorted(failures)
    good_ids = sorted(eid for eid in all_ids if eid not in failures)
    now = utcnow()
    with engine.begin() as conn:
        where_in(conn, delete(quarantine), quarantine.c.event_id, all_ids)
        if bad_ids:
            bulk_insert(
                conn,
                quarantine,
                [
                    {
                        "event_id": eid,
                        "batch_id": batch_id,
                        "reasons": json.dumps(failures[eid], default=str),
                        "quarantined_at": now,
                    }
                    for eid in bad_ids
                ],
            )
        for status, ids in ((EventStatus.QUARANTINED, bad_ids), (EventStatus.VALID, good_ids)):
            where_in(conn, update(event).values(status=status), event.c.event_id, ids)
    refresh_quietly(engine, batch_id)  # the status counters (include/triggerflow/stats.py)
    if bad_ids:
        log.warning("batch %s: %d of %d events quarantined", batch_id, len(bad_ids), len(all_ids))
    return ValidateResult(batch_id=batch_id, valid=len(good_ids) + int(already_valid), quarantined=len(bad_ids))
