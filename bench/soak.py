"""The soak benchmark: the same stage throughput and latency on an empty store, on a store holding
days of history at 1 M triggers/hour, and on that store after the maintenance DAG purged it.

    python -m bench.soak                          # the full soak (about 45 min + the pre-fill)
    python -m bench.soak --quick                  # a small smoke run (about 10 min)
    python -m bench.soak --update-readme          # and rewrite the README's soak table
    python -m bench.prefill --url URL --hours 24  # pre-fill a store ahead, then:
    python -m bench.soak --filled-url URL         # soak on it (it is purged, never dropped)

PostgreSQL only (the history is generated server-side). Phases, all printed as they go:

1. **Stores.** An empty scratch store; a filled one: a scratch store pre-filled by
   :mod:`bench.prefill` with ``--hours`` (default 24) of history at 1 M triggers/hour (events,
   decisions, ledger, send log, quarantine, batches, run summaries) spread 25 h .. 85 h back, or
   the store given by ``--filled-url``. Both get the same ``--profiles`` customers
   (``devstack.loadgen``; the history is about the same customers). Size per table
   (``pg_total_relation_size``) and free disk are reported.
2. **Stage throughput**, empty and filled alternately (``--repeats`` times each, median kept):
   land, validate, reconcile and send of one batch of ``--n`` events
   (:func:`bench.profile_stages.measure_stages`: the stage functions as the DAG runs them, send
   over the SMTP sink). Every measurement uses its own block of customers, so no measurement's
   emails turn a later one's triggers into duplicates.
3. **Steady-state latency**, empty then filled: the real ``airflow standalone`` (scheduler,
   LocalExecutor, PostgreSQL metadata) runs ``trigger_emails`` every minute while the Adobe
   emulator receives ``--rate`` triggers/s (default 278 = 1 M/hour) for ``--duration`` s
   (default 180: the latency is dominated by the minute schedule, a few minutes show it); trigger
   fired -> SMTP accepted p50/p95/p99.
4. **Maintenance**: with the filled store's stack still up, ``trigger_maintenance`` is triggered
   through Airflow's API and run by the scheduler; what it deleted (``tf_maintenance``: rows,
   seconds, rows/s per table) and the store's size after it.
5. **After the purge**: stage throughput again on the purged store.

Writes ``bench/results/soak-<timestamp>/results.json``, ``table.md`` and the plots; with
``--update-readme`` it copies the plots to ``docs/img/soak-*.png`` and rewrites the table between
``<!-- soak:start -->`` and ``<!-- soak:end -->`` in README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.run_benchmark import mem_gb  # noqa: E402 - after the sys.path line above

RESULTS = ROOT / "bench" / "results"
IMG = ROOT / "docs" / "img"
PG_SERVER = os.environ.get("TRIGGERFLOW_BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
STAGES = ("land", "validate", "reconcile", "send")
DAG_ID = "trigger_emails"
MAINTENANCE_DAG_ID = "trigger_maintenance"
WAITING_STATES = ("pending", "sending", "deferred", "scheduled")
#: the rule the issue sets: every figure on the filled store within 20 % of the empty store's
TOLERANCE = 0.20


def log(message: str) -> None:
    print(f"[soak {datetime.now(UTC).strftime('%H:%M:%S')}] {message}", flush=True)


# -- stores --------------------------------------------------------------------------------------------
@contextmanager
def scratch_store(prefix: str, keep: bool) -> Iterator[str]:
    """A new database on the PostgreSQL server, dropped afterwards unless ``keep``."""
    if keep:
        import secrets

        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        name = f"{prefix}_{secrets.token_hex(4)}"
        admin = create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = make_url(PG_SERVER).set(database=name).render_as_string(hide_password=False)
        log(f"store kept afterwards: {url}")
        yield url
        return
    from devstack.ensure_postgres import scratch_database

    with scratch_database(PG_SERVER, prefix=prefix) as url:
        yield url


def disk_free_bytes() -> int:
    return shutil.disk_usage("/").free


def prepare_store(url: str, profiles: int) -> dict[str, Any]:
    """Schema (migrations applied), ``profiles`` customers and the demo catalogue."""
    from devstack.loadgen import load_profiles
    from include.triggerflow.store.engines import get_engine
    from include.triggerflow.store.migrations import create_schema

    engine = get_engine(url)
    create_schema(engine)
    t0 = time.perf_counter()
    load_profiles(engine, profiles, progress=False)
    return {"profiles": profiles, "seconds": round(time.perf_counter() - t0, 1)}


def sizes(url: str) -> dict[str, Any]:
    from bench.prefill import store_sizes
    from include.triggerflow.store.engines import get_engine

    return store_sizes(get_engine(url))


def say_sizes(label: str, data: dict[str, Any]) -> None:
    log(f"{label}: database {data['database_bytes'] / 1e9:.2f} GB")
    for table, s in sorted(data["tables"].items(), key=lambda kv: -kv[1]["total_bytes"]):
        if s["total_bytes"] > 10_000_000:
            log(f"    {table:<18} {s['total_bytes'] / 1e9:7.2f} GB  ~{s['rows_estimate']:>12,} rows "
                f"(heap {s['heap_bytes'] / 1e9:.2f}, indexes {s['index_bytes'] / 1e9:.2f} GB)")


# -- stage throughput ---------------------------------------------------------------------------------
class Blocks:
    """Customer blocks handed out one per measurement: ``SHOP-%07d`` of ``offset+1 ..
    offset+size`` (loadgen's customers), never reused within a soak."""

    def __init__(self, size: int, profiles: int) -> None:
        self.size = size
        self.profiles = profiles
        self.next = 0

    def take(self) -> int:
        offset = self.next * self.size
        if offset + self.size > self.profiles:
            raise SystemExit(f"--profiles {self.profiles:,} is too small for another block of {self.size:,} customers")
        self.next += 1
        return offset


def measure(url: str, label: str, n: int, offset: int, block: int, seed: int, tmp: str) -> dict[str, Any]:
    """One batch of ``n`` events of the customers ``offset+1 .. offset+block`` through the four stages."""
    from bench.profile_stages import event_payloads, measure_stages

    rng = random.Random(seed)
    # event_payloads draws SHOP-(offset + 0..block-1); loadgen's customers start at 1
    payloads = event_payloads(n, block, rng, known=0.9, invalid=0.01, offset=offset + 1)
    start = datetime.now(UTC).replace(second=0, microsecond=0)
    log(f"stages on the {label} store: {n:,} events, customers {offset + 1:,}..{offset + block:,}")
    stages = measure_stages(url, payloads, tmp=tmp, key=f"soak-{label}-{offset}", start=start,
                            say=lambda m: log(f"  {m}"))
    return {name: {k: v for k, v in stages[name].items() if k != "profile"} for name in STAGES if name in stages}


def rate(stage: dict[str, Any]) -> float:
    return float(stage.get("events_per_s") or stage.get("emails_per_s") or 0.0)


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {name: round(statistics.median(rate(r[name]) for r in runs), 1) for name in STAGES if all(name in r for r in runs)}


# -- steady-state latency with the real scheduler --------------------------------------------------------
def phase_batches(conn: Any, since: datetime) -> list[str]:
    from sqlalchemy import select

    from include.triggerflow.store.schema import batch

    return [r[0] for r in conn.execute(select(batch.c.batch_id).where(batch.c.dag_id == DAG_ID, batch.c.created_at >= since))]


def phase_progress(engine: Any, since: datetime) -> dict[str, int]:
    """Counts over the batches ``trigger_emails`` created since ``since`` only (by their ids: the
    big tables are read through their batch indexes, never counted whole)."""
    from sqlalchemy import func, select

    from include.triggerflow.store.schema import decision, event, quarantine, send

    with engine.connect() as conn:
        ids = phase_batches(conn, since)
        if not ids:
            return {"batches": 0, "landed": 0, "done": 0, "sent": 0, "waiting": 0}
        landed = conn.execute(select(func.count()).select_from(event).where(event.c.batch_id.in_(ids))).scalar_one()
        decided = conn.execute(select(func.count()).select_from(decision).where(decision.c.batch_id.in_(ids))).scalar_one()
        quarantined = conn.execute(select(func.count()).select_from(quarantine).where(quarantine.c.batch_id.in_(ids))).scalar_one()
        states = dict(conn.execute(select(send.c.state, func.count()).where(send.c.batch_id.in_(ids)).group_by(send.c.state)).all())
    return {"batches": len(ids), "landed": int(landed), "done": int(decided) + int(quarantined),
            "sent": int(states.get("sent", 0)), "waiting": sum(int(states.get(s, 0)) for s in WAITING_STATES)}


def wait_drained(engine: Any, since: datetime, expected: int, timeout_s: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    last = 0.0
    while True:
        p = phase_progress(engine, since)
        if p["landed"] >= expected and p["done"] >= p["landed"] and p["waiting"] == 0:
            return p
        if time.monotonic() > deadline:
            raise TimeoutError(f"{p['done']:,} of {expected:,} triggers processed after {timeout_s:.0f} s: {p}")
        if time.monotonic() - last > 15:
            log(f"  draining: {p}")
            last = time.monotonic()
        time.sleep(3)


def phase_latencies(engine: Any, since: datetime) -> list[float]:
    from sqlalchemy import select

    from include.triggerflow.store.schema import send

    with engine.connect() as conn:
        ids = phase_batches(conn, since)
        rows = conn.execute(select(send.c.trigger_ts, send.c.sent_at).where(
            send.c.batch_id.in_(ids), send.c.state == "sent", send.c.sent_at.is_not(None))).all() if ids else []
    return [at.timestamp() - ts / 1000 for ts, at in rows if ts]


def latency_phase(
    url: str, label: str, offset: int, args: argparse.Namespace, out: Path,
    while_up: Callable[[Any], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Start the emulator, the SMTP sink and ``airflow standalone`` on the store at ``url``; feed
    ``args.rate`` triggers/s for ``args.duration`` s to ``trigger_emails`` on its minute schedule;
    wait until every trigger is decided; return the latency figures (and ``while_up``'s result,
    run with the stack still up after the DAG is paused)."""
    from bench.run_benchmark import connection_env
    from devstack.airflow_stack import airflow_standalone, postgres_metadata_db
    from devstack.loadgen import inject_rate
    from devstack.processes import start_emulator, start_smtp_sink
    from include.triggerflow.sla import latency_summary
    from include.triggerflow.store.engines import get_engine

    engine = get_engine(url)
    customers = max(1, round(args.rate * args.duration))
    folder = out / f"stack-{label}"
    folder.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"rate_per_s": args.rate, "duration_s": args.duration, "customers": [offset + 1, offset + customers]}
    with ExitStack() as stack:
        emu = stack.enter_context(start_emulator(log_path=folder / "emulator.log", max_limit=10_000))
        sink = stack.enter_context(start_smtp_sink(store="none", log_path=folder / "smtp.log"))
        metadata_url = stack.enter_context(postgres_metadata_db(PG_SERVER))
        env = {
            **connection_env(emu, sink, url, 10_000),
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "GX_ANALYTICS_ENABLED": "false",
        }
        log(f"latency on the {label} store: starting airflow standalone")
        af = stack.enter_context(airflow_standalone(folder / "airflow", env_overrides=env, metadata_url=metadata_url))
        af.ensure_pools({"smtp_sessions": 4})
        af.wait_dag(DAG_ID)
        since = datetime.now(UTC)
        af.unpause(DAG_ID)
        log(f"  {DAG_ID} unpaused; feeding {args.rate:g}/s for {args.duration:g} s (customers {offset + 1:,}..{offset + customers:,})")
        fed: dict[str, Any] = {}

        def feed() -> None:
            fed["result"] = inject_rate(emu.base_url, args.rate, args.duration, customers=customers, customer_offset=offset)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        while feeder.is_alive():
            feeder.join(30)
            if feeder.is_alive():
                log(f"  feeding: {phase_progress(engine, since)}")
        expected = customers
        drained = wait_drained(engine, since, expected, args.timeout)
        af.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": True})
        lat = phase_latencies(engine, since)
        result.update(emails=len(lat), progress=drained, latency_s=latency_summary(lat), accepted=sink.accepted())
        log(f"  latency on the {label} store: {result['latency_s']} over {len(lat):,} emails")
        (out / f"latencies-{label}.json").write_text(json.dumps(lat), encoding="utf-8")
        if while_up is not None:
            result["while_up"] = while_up(af)
    return result


# -- maintenance ------------------------------------------------------------------------------------------
def run_maintenance(af: Any, url: str, timeout_s: float) -> dict[str, Any]:
    """Trigger ``trigger_maintenance`` through the API, let the scheduler run it, and read what it
    did from ``tf_maintenance``."""
    from sqlalchemy import select

    from include.triggerflow.store.engines import get_engine
    from include.triggerflow.store.schema import maintenance

    if not (ROOT / "dags" / f"{MAINTENANCE_DAG_ID}.py").exists():
        log(f"maintenance: dags/{MAINTENANCE_DAG_ID}.py does not exist (yet): skipped")
        return {"skipped": "no maintenance DAG"}
    af.wait_dag(MAINTENANCE_DAG_ID, timeout=180)
    # Unpausing makes the scheduler create the latest daily run (its schedule, catchup off): that
    # one run is measured. A manual run is triggered only when none appears.
    t0 = time.perf_counter()
    af.unpause(MAINTENANCE_DAG_ID)
    run_id = None
    deadline = time.monotonic() + 90
    while run_id is None and time.monotonic() < deadline:
        runs = af.api("GET", f"/dags/{MAINTENANCE_DAG_ID}/dagRuns", params={"limit": 5})["dag_runs"]
        if runs:
            run_id = str(runs[0]["dag_run_id"])
        else:
            time.sleep(2)
    if run_id is None:
        run_id = af.trigger(MAINTENANCE_DAG_ID)
    log(f"maintenance: {MAINTENANCE_DAG_ID} run {run_id} started by the scheduler")
    # the store's purge is what the soak measures: wait for purge_store; the metadata cleanup
    # gets a short while more, and whatever state it reached is reported
    purge_state = wait_task(af, run_id, "purge_store", timeout_s)
    seconds = time.perf_counter() - t0
    clean_state = wait_task(af, run_id, "clean_metadata", 180.0)
    state = str(af.run(MAINTENANCE_DAG_ID, run_id)["state"])
    af.api("PATCH", f"/dags/{MAINTENANCE_DAG_ID}", json={"is_paused": True})
    log(f"maintenance: purge_store {purge_state}, clean_metadata {clean_state}, run {state}")
    engine = get_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(maintenance).where(maintenance.c.run_id == run_id).order_by(maintenance.c.maintenance_id)).mappings().all()
    actions = [
        {"table": r["table_name"], "action": r["action"], "rows": r["rows"], "seconds": r["seconds"],
         "rows_per_s": round(r["rows"] / r["seconds"]) if r["rows"] and r["seconds"] else None,
         "cutoff": r["cutoff"].isoformat() if r["cutoff"] else None, "detail": r["detail"]}
        for r in rows
    ]
    tis = {t["task_id"]: {"state": t.get("state"), "duration": t.get("duration")}
           for t in af.task_instances(MAINTENANCE_DAG_ID, run_id)}
    log(f"maintenance: run {run_id} {state} in {seconds:.0f} s; tasks {tis}")
    for a in actions:
        log(f"    {a['table']:<20} {a['action']:<8} {a['rows'] or 0:>12,} rows in {a['seconds'] or 0:8.1f} s "
            f"({a['rows_per_s'] or '-'} rows/s)")
    return {"run_id": run_id, "state": state, "seconds": round(seconds, 1), "actions": actions, "tasks": tis}


def wait_task(af: Any, run_id: str, task_id: str, timeout_s: float) -> str | None:
    """The task's state once final (success, failed, skipped, upstream_failed), or the state it
    was in when ``timeout_s`` ran out."""
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        tis = {t["task_id"]: t.get("state") for t in af.task_instances(MAINTENANCE_DAG_ID, run_id)}
        state = tis.get(task_id)
        if state in ("success", "failed", "skipped", "upstream_failed"):
            return str(state)
        time.sleep(3)
    return state


# -- report -----------------------------------------------------------------------------------------------
def plots(result: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    series = [("empty store", "empty", "#16a34a"), ("filled store", "filled", "#1d4ed8"), ("after the purge", "purged", "#f59e0b")]
    present = [(lbl, key, c) for lbl, key, c in series if result["stages"].get(key)]
    if present:
        fig, ax = plt.subplots(figsize=(8.5, 4.4))
        width = 0.8 / len(present)
        for i, (lbl, key, color) in enumerate(present):
            vals = [result["stages"][key].get(name, 0) for name in STAGES]
            bars = ax.bar([x + i * width for x in range(len(STAGES))], vals, width, label=lbl, color=color)
            ax.bar_label(bars, labels=[f"{v:,.0f}" for v in vals], fontsize=7, rotation=90, padding=2)
        ax.set_xticks([x + width * (len(present) - 1) / 2 for x in range(len(STAGES))], list(STAGES))
        ax.set_ylabel("events/s (send: emails/s)")
        hist = result.get("history", {})
        ax.set_title(f"Stage throughput: empty vs filled ({hist.get('label', '')}) vs after the purge")
        ax.legend(loc="upper right")
        ax.margins(y=0.2)
        fig.tight_layout()
        made.append(out / "soak-stage-throughput.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)
    before, after = result.get("sizes", {}).get("filled_before"), result.get("sizes", {}).get("filled_after_purge")
    if before:
        tables = [t for t, s in sorted(before["tables"].items(), key=lambda kv: -kv[1]["total_bytes"]) if s["total_bytes"] > 50_000_000]
        fig, (ax, ax_rows) = plt.subplots(1, 2, figsize=(11, 4.4))
        width = 0.4
        for axis, key, scale, unit in ((ax, "total_bytes", 1e9, "GB (pg_total_relation_size)"),
                                       (ax_rows, "rows_estimate", 1e6, "million rows (estimate)")):
            vals_b = [before["tables"][t][key] / scale for t in tables]
            bars = axis.bar(list(range(len(tables))), vals_b, width, label="filled", color="#1d4ed8")
            axis.bar_label(bars, labels=[f"{v:.1f}" for v in vals_b], fontsize=7)
            if after:
                vals_a = [after["tables"].get(t, {}).get(key, 0) / scale for t in tables]
                bars = axis.bar([x + width for x in range(len(tables))], vals_a, width, label="after the purge", color="#f59e0b")
                axis.bar_label(bars, labels=[f"{v:.1f}" for v in vals_a], fontsize=7)
            axis.set_xticks([x + width / 2 for x in range(len(tables))], tables, rotation=20)
            axis.set_ylabel(unit)
            axis.legend()
        total_b = before["database_bytes"] / 1e9
        total_a = f" → {after['database_bytes'] / 1e9:.1f} GB after the purge" if after else ""
        ax.set_title(f"Store size: {total_b:.1f} GB filled{total_a}", fontsize=10)
        ax_rows.set_title("Rows: the purge frees space for reuse (VACUUM), not to the disk", fontsize=10)
        fig.tight_layout()
        made.append(out / "soak-store-size.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)
    return made


def _pct(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "—"
    return f"{(b / a - 1) * 100:+.0f} %"


def _server_label(r: dict[str, Any]) -> str:
    settings = r.get("pg_settings") or {}
    if not settings:
        return "server settings not recorded"
    return ", ".join(f"{k} {v}" for k, v in settings.items())


def readme_table(r: dict[str, Any]) -> str:
    st, lat, sz = r["stages"], r.get("latency", {}), r.get("sizes", {})
    hist = r.get("history", {})
    before = sz.get("filled_before", {})
    after = sz.get("filled_after_purge", {})
    rows_b = {t: s["rows_estimate"] for t, s in before.get("tables", {}).items()}
    lines = [
        f"Measured {r['finished_at'][:16].replace('T', ' ')} UTC on {r['machine']['description']}, store on PostgreSQL "
        f"{r.get('pg_version', '')} ({_server_label(r)}). Filled store: {hist.get('label', '?')} — "
        f"{rows_b.get('tf_event', 0):,} events, {rows_b.get('tf_decision', 0):,} decisions, {rows_b.get('tf_send', 0):,} ledger rows, "
        f"{rows_b.get('tf_send_log', 0):,} send-log rows, **{before.get('database_bytes', 0) / 1e9:.1f} GB**. "
        f"Stage figures: median of {r['config']['repeats']} batch(es) of {r['config']['n']:,} events per store, empty and filled "
        "measured alternately. Regenerate with `python -m bench.soak --update-readme`.",
        "",
        "| figure | empty store | filled store | filled vs empty | after the purge |",
        "|---|---|---|---|---|",
    ]
    for name in STAGES:
        e, f, p = st.get("empty", {}).get(name), st.get("filled", {}).get(name), st.get("purged", {}).get(name)
        unit = "emails/s" if name == "send" else "events/s"
        lines.append(f"| stage `{name}` ({unit}) | {e or 0:,.0f} | {f or 0:,.0f} | {_pct(e, f)} | "
                     f"{f'{p:,.0f}' if p else '—'} |")
    le, lf = lat.get("empty", {}).get("latency_s", {}), lat.get("filled", {}).get("latency_s", {})
    if le.get("count") and lf.get("count"):
        lines.append(
            f"| latency p50 / p95 / p99 at {lat['empty']['rate_per_s']:.0f}/s for {lat['empty']['duration_s']:.0f} s "
            f"(trigger fired → SMTP accepted) | {le['p50']:.1f} / {le['p95']:.1f} / {le['p99']:.1f} s | "
            f"{lf['p50']:.1f} / {lf['p95']:.1f} / {lf['p99']:.1f} s | p95 {_pct(le['p95'], lf['p95'])} | — |"
        )
    if after and not st.get("purged"):
        after = {}  # no purge finished: the "after" figures would only repeat the filled store's
    if before:
        lines.append(f"| store size (database) | {sz.get('empty', {}).get('database_bytes', 0) / 1e9:.2f} GB | "
                     f"{before['database_bytes'] / 1e9:.1f} GB | | "
                     f"{after['database_bytes'] / 1e9:.1f} GB |" if after else
                     f"| store size (database) | | {before['database_bytes'] / 1e9:.1f} GB | | |")
        if after:
            for t in ("tf_event", "tf_decision", "tf_send", "tf_send_log"):
                b, a = before["tables"].get(t), after["tables"].get(t)
                if b and a:
                    lines.append(f"| — `{t}` rows (estimate) / size | | {b['rows_estimate']:,} / {b['total_bytes'] / 1e9:.1f} GB | | "
                                 f"{a['rows_estimate']:,} / {a['total_bytes'] / 1e9:.1f} GB |")
    m = r.get("maintenance") or {}
    if m.get("actions"):
        lines.append(f"| maintenance run (`{MAINTENANCE_DAG_ID}`, defaults; run {m['state']}) | | "
                     f"{_took(m)} | | {purge_summary(m['actions']) or '—'} |")
    elif m.get("state"):
        task = (m.get("tasks") or {}).get("purge_store") or {}
        lines.append(f"| maintenance run (`{MAINTENANCE_DAG_ID}`, defaults) | | purge_store {task.get('state')} after "
                     f"{task.get('duration') or 0:,.0f} s, nothing recorded in tf_maintenance | | not measured |")
    elif m.get("skipped"):
        lines.append(f"| maintenance run | | skipped: {m['skipped']} | | |")
    return "\n".join(lines)


def _took(m: dict[str, Any]) -> str:
    task = (m.get("tasks") or {}).get("purge_store") or {}
    return f"purge_store {task['duration']:.0f} s" if task.get("duration") else f"{m['seconds']:.0f} s in all"


def purge_summary(actions: list[dict[str, Any]]) -> str:
    """What the purge removed, with rows per second. A batch's events, decisions and quarantine
    go in one pass, timed on one of its rows (tf_event's): the others ride along with it."""
    timed = [a for a in actions if a["action"] in ("delete", "strip") and a.get("rows") and a.get("seconds")]
    riders = [a for a in actions if a["action"] in ("delete", "strip") and a.get("rows") and not a.get("seconds")]
    parts = []
    for a in timed:
        with_ = ""
        if a["table"] == "tf_event" and riders:
            with_ = " (with " + ", ".join(f"`{r['table']}` {r['rows']:,}" for r in riders) + " in the same pass)"
        parts.append(f"{a['action']} `{a['table']}` {a['rows']:,} in {a['seconds']:,.0f} s = "
                     f"{a['rows'] / a['seconds']:,.0f} rows/s{with_}")
    parts.extend(f"VACUUM `{a['table']}` {a['seconds']:,.0f} s" for a in actions
                 if a["action"] == "vacuum" and (a.get("seconds") or 0) >= 0.5)
    return "; ".join(parts)


def update_readme(table: str) -> bool:
    from bench.readme import replace_block

    if replace_block("soak", table):
        return True
    log("README.md has no <!-- soak:start --> ... <!-- soak:end --> block (yet): table left in the results folder")
    return False


# -- the run ----------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.prefill import prefill
    from include.triggerflow.store.engines import dispose_engines, get_engine

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"soak-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    log(f"results go to {out}; disk free {disk_free_bytes() / 1e9:.0f} GB")
    result: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(),
        "config": {k: v for k, v in vars(args).items() if k not in ("filled_url",)},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "description": f"{os.cpu_count()} vCPU, {mem_gb():.0f} GB RAM, Python {platform.python_version()}"},
        "stages": {}, "runs": {"empty": [], "filled": [], "purged": []}, "latency": {}, "sizes": {},
        "disk_free_start_bytes": disk_free_bytes(),
    }
    blocks = Blocks(args.block, args.profiles)

    def save() -> None:
        (out / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")

    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="triggerflow-soak-"))
        empty_url = stack.enter_context(scratch_store("tf_soak_empty", keep=False))
        if args.filled_url:
            filled_url = args.filled_url
            log("filled store: given by --filled-url (pre-filled by bench.prefill)")
        else:
            filled_url = stack.enter_context(scratch_store("tf_soak_filled", keep=args.keep_store))
        with get_engine(empty_url).connect() as conn:
            result["pg_version"] = conn.exec_driver_sql("SHOW server_version").scalar_one().split()[0]
            result["pg_settings"] = {
                name: conn.exec_driver_sql(f"SHOW {name}").scalar_one()
                for name in ("shared_buffers", "max_wal_size", "checkpoint_timeout", "effective_cache_size", "wal_compression")
            }
        log(f"PostgreSQL {result['pg_version']} at {PG_SERVER.split('@')[-1]}: {result['pg_settings']}")
        for label, url in (("empty", empty_url), ("filled", filled_url)):
            log(f"{label} store: schema, {args.profiles:,} profiles and the catalogue")
            result.setdefault("profiles", {})[label] = prepare_store(url, args.profiles)
        if not args.filled_url:
            estimate = args.hours * 2.75e9  # bytes per history hour at 1 M/h (measured: tables + indexes)
            if estimate * 1.15 > disk_free_bytes():
                raise SystemExit(f"{args.hours:g} h of history needs ~{estimate / 1e9:.0f} GB; only "
                                 f"{disk_free_bytes() / 1e9:.0f} GB free")
            log(f"pre-filling the filled store with {args.hours:g} h of history at {args.history_rate:,}/h")
            pre = prefill(filled_url, hours=args.hours, rate_per_hour=args.history_rate, profiles=args.profiles,
                          chunk_events=args.prefill_chunk, say=lambda m: log(m))
            result["prefill"] = pre.as_dict()
        else:
            pre_json = RESULTS / "soak-prefill" / "prefill.json"
            if pre_json.exists():
                result["prefill"] = json.loads(pre_json.read_text(encoding="utf-8")).get("prefill")
        hours = (result.get("prefill") or {}).get("hours", args.hours)
        result["history"] = {
            "label": f"{hours:g} h of history at {(result.get('prefill') or {}).get('rate_per_hour', args.history_rate) / 1e6:g} M triggers/h",
            "oldest": (result.get("prefill") or {}).get("oldest"), "newest": (result.get("prefill") or {}).get("newest"),
        }
        result["sizes"]["empty"] = sizes(empty_url)
        result["sizes"]["filled_before"] = sizes(filled_url)
        say_sizes("empty store", result["sizes"]["empty"])
        say_sizes("filled store", result["sizes"]["filled_before"])
        save()

        # 2. stage throughput, alternately (after a discarded warm-up batch: the first measurement
        # of a process pays cold caches and imports that no later one does)
        log("warm-up batch (discarded)")
        measure(empty_url, "warmup", max(1000, args.n // 5), blocks.take(), block=args.block, seed=args.seed - 1, tmp=tmp)
        for i in range(args.repeats):
            for label, url in (("empty", empty_url), ("filled", filled_url)):
                result["runs"][label].append(measure(url, label, args.n, blocks.take(), block=args.block, seed=args.seed + i, tmp=tmp))
                save()
        for label in ("empty", "filled"):
            result["stages"][label] = medians(result["runs"][label])
        log(f"stage medians: empty {result['stages']['empty']}; filled {result['stages']['filled']}")

        # 3. latency (and 4. maintenance while the filled store's stack is up)
        if not args.no_latency:
            result["latency"]["empty"] = latency_phase(empty_url, "empty", blocks.take(), args, out)
            blocks.take()  # loadgen's unknown shoppers are the customers just past the phase's block
            save()
        if not args.no_maintenance or not args.no_latency:
            def maintain(af: Any) -> dict[str, Any]:
                if args.no_maintenance:
                    return {"skipped": "--no-maintenance"}
                return run_maintenance(af, filled_url, args.maintenance_timeout)

            latency_offset = blocks.take()
            blocks.take()
            if args.no_latency:
                args_short = argparse.Namespace(**{**vars(args), "duration": 10.0})
                filled = latency_phase(filled_url, "filled", latency_offset, args_short, out, while_up=maintain)
            else:
                filled = latency_phase(filled_url, "filled", latency_offset, args, out, while_up=maintain)
                result["latency"]["filled"] = {k: v for k, v in filled.items() if k != "while_up"}
            result["maintenance"] = filled.get("while_up")
            save()
        dispose_engines()
        result["sizes"]["filled_after_purge"] = sizes(filled_url)
        say_sizes("filled store after the purge", result["sizes"]["filled_after_purge"])

        # 5. after the purge
        purge_task = ((result.get("maintenance") or {}).get("tasks") or {}).get("purge_store") or {}
        if purge_task.get("state") == "success":
            for i in range(args.repeats_after):
                result["runs"]["purged"].append(measure(filled_url, "purged", args.n, blocks.take(), block=args.block,
                                                        seed=args.seed + 100 + i, tmp=tmp))
                save()
            result["stages"]["purged"] = medians(result["runs"]["purged"])
            log(f"stage medians after the purge: {result['stages']['purged']}")
        dispose_engines()

    result["finished_at"] = datetime.now(UTC).isoformat()
    result["within_tolerance"] = {
        name: abs(result["stages"]["filled"][name] / result["stages"]["empty"][name] - 1) <= TOLERANCE
        for name in result["stages"].get("filled", {}) if result["stages"]["empty"].get(name)
    }
    save()
    made = plots(result, out)
    table = readme_table(result)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    # the README's pictures go with the README's table: both only with --update-readme (a partial
    # run, --no-latency say, would otherwise put its plots beside another run's table)
    if args.update_readme and not args.quick:
        for path in made:
            shutil.copy(path, IMG / path.name)
        log("docs/img/soak-*.png updated")
    if args.update_readme and update_readme(table):
        log("README.md soak table updated")
    print(table, flush=True)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hours", type=float, default=24.0, help="hours of history at --history-rate (default 24)")
    p.add_argument("--history-rate", type=int, default=1_000_000, help="history triggers per hour (default 1000000)")
    p.add_argument("--filled-url", help="soak on this already pre-filled store (bench.prefill) instead of filling one")
    p.add_argument("--keep-store", action="store_true", help="keep the filled scratch store afterwards")
    p.add_argument("--profiles", type=int, default=1_000_000, help="customers in both stores (default 1000000)")
    p.add_argument("--n", type=int, default=30_000, help="events per stage measurement (default 30000)")
    p.add_argument("--block", type=int, default=100_000, help="customers per measurement (default 100000)")
    p.add_argument("--repeats", type=int, default=2, help="stage measurements per store, alternately (default 2)")
    p.add_argument("--repeats-after", type=int, default=1, help="stage measurements after the purge (default 1)")
    p.add_argument("--rate", type=float, default=278.0, help="steady-state triggers per second (default 278)")
    p.add_argument("--duration", type=float, default=180.0, help="steady-state seconds (default 180)")
    p.add_argument("--no-latency", action="store_true", help="skip the steady-state latency phases")
    p.add_argument("--no-maintenance", action="store_true", help="skip the maintenance DAG (and the after-purge figures)")
    p.add_argument("--maintenance-timeout", type=float, default=3600.0, help="give the maintenance run this long (s)")
    p.add_argument("--prefill-chunk", type=int, default=250_000, help="events per INSERT ... SELECT of the pre-fill")
    p.add_argument("--timeout", type=float, default=1200.0, help="give up draining a latency phase after this (s)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--pg-server", help="the PostgreSQL server the stores (and Airflow's metadata) go on "
                   "(default $TRIGGERFLOW_BENCH_PG_URL or the local server on 5432)")
    p.add_argument("--private-server", type=Path, metavar="DIR",
                   help="start a private PostgreSQL cluster in DIR with devstack.pg_cluster.STORE_SETTINGS "
                   "(a production store's memory and checkpoint settings) for the run; removed afterwards "
                   "unless --keep-store")
    p.add_argument("--update-readme", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 15 min of history, 100k profiles, 5k-event batches, 50/s for 60 s")
    return p


def main(argv: list[str] | None = None) -> int:
    from devstack.signals import exit_on_signals

    # a TERM ends the run through the context managers: the scratch stores and the Airflow stack go
    exit_on_signals()
    args = build_parser().parse_args(argv)
    if args.quick:
        args.hours, args.profiles, args.n, args.block = 0.25, 100_000, 5_000, 10_000
        args.repeats, args.rate, args.duration = 1, 50.0, 60.0
    if args.rate * args.duration > args.block:
        raise SystemExit(f"--rate x --duration ({args.rate * args.duration:,.0f} customers) must fit in --block {args.block:,}")
    global PG_SERVER
    if args.pg_server:
        PG_SERVER = args.pg_server
    if args.private_server:
        from devstack.airflow_stack import free_port
        from devstack.pg_cluster import private_cluster

        with private_cluster(args.private_server, free_port(), remove=not args.keep_store) as server:
            PG_SERVER = server
            run(args)
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
