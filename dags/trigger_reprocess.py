"""
### trigger_reprocess — give quarantined and unmatched events another chance after a fix

Trigger it by hand once the cause is fixed: the routing config corrected (events quarantined for
a missing identity), or the missing profiles loaded (`cli load-profiles`; events decided
`unmatched`). For every batch with such events received in the chosen time range it runs
validate → reconcile → send → report again. Emails already sent stay sent once: the send ledger's
idempotency keys make the replay safe, and each batch's report says how many were skipped as
already sent.

Params: `since` / `until` (UTC, the events' receive time; empty `since` is the last 24 hours from
the start of that hour, empty `until` is now), `what` (quarantined, unmatched, both), and
`dry_run` to see what would be sent first.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any, cast

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

# Typing only (TypedDicts): what the tasks hand each other through XCom.
from include.triggerflow.payloads import BatchGroup, ReprocessedXCom

MAX_GROUPS = 16


@dag(
    dag_id="trigger_reprocess",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "triggerflow", "retries": 2, "retry_delay": timedelta(seconds=10)},
    params={
        # A static default: computed at parse time, it would change the serialised DAG every hour.
        "since": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="Since (UTC)",
            description="Reprocess events received at or after this time (empty: the last 24 hours, "
            "from the start of that hour).",
        ),
        "until": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="Until (UTC)",
            description="... and before this time (empty: now).",
        ),
        "what": Param("both", enum=["quarantined", "unmatched", "both"], title="Which events"),
        "dry_run": Param(False, type="boolean", title="Dry run", description="Render, write to the dry-run folder, send nothing."),
    },
    tags=["triggerflow", "replay"],
    doc_md=__doc__,
)
def trigger_reprocess() -> None:
    @task
    def find_batches() -> list[BatchGroup]:
        from include.triggerflow.runtime import store_engine
        from include.triggerflow.stages.reprocess import find_batches as find
        from include.triggerflow.stages.reprocess import time_range

        params = get_current_context()["params"]
        since, until = time_range(params.get("since"), params.get("until"))
        batches = find(store_engine(), since, until, params["what"])
        print(f"{len(batches)} batch(es) with {params['what']} events received in [{since}, {until})")
        # A day of minute batches is 1,440: far past Airflow's max_map_length (1024) and a task
        # start-up each. Spread them round-robin over at most MAX_GROUPS mapped tasks.
        groups = [batches[i::MAX_GROUPS] for i in range(min(MAX_GROUPS, len(batches)))]
        return [{"batch_ids": g} for g in groups]

    # Names each mapped task instance in the UI from its own argument (``task`` in the template
    # context is the unmapped task, holding this instance's op_kwargs).
    @task(pool="smtp_sessions", map_index_template="{{ task.op_kwargs['batch_ids'] | length }} batches")
    def reprocess(batch_ids: list[str]) -> list[ReprocessedXCom]:
        from include.triggerflow.hooks.smtp import TriggerMailHook
        from include.triggerflow.render import Renderer
        from include.triggerflow.runtime import routing, send_options, store_engine
        from include.triggerflow.stages.reprocess import reprocess_batch

        context = get_current_context()
        dag_run = context["dag_run"]
        engine, config, renderer, options = store_engine(), routing(), Renderer(), send_options(context)
        return [
            reprocess_batch(
                engine, batch_id, config, renderer, TriggerMailHook,
                dag_id=dag_run.dag_id, run_id=dag_run.run_id, options=options,
            ).as_xcom()
            for batch_id in batch_ids
        ]

    @task
    def summary(groups: list[list[ReprocessedXCom]]) -> dict[str, int]:
        outcomes: list[Mapping[str, Any]] = [o for group in groups for o in group]
        keys = ("quarantined_before", "quarantined_after", "unmatched_before", "unmatched_after", "sent_now", "skipped_already_sent")
        totals = {k: sum(int(o[k]) for o in outcomes) for k in keys}
        totals["batches"] = len(outcomes)
        print(f"reprocessed: {totals}")
        return totals

    # The mapped tasks' results arrive as one list (an XComArg until run time).
    summary(cast(list[list[ReprocessedXCom]], reprocess.expand_kwargs(find_batches())))


trigger_reprocess()
