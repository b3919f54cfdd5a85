"""The throughput and latency benchmark: the real scheduler runs ``trigger_emails`` end to end.

    python -m bench.run_benchmark                      # the full benchmark (about 35 min)
    python -m bench.run_benchmark --quick              # a small smoke run (about 3 min)
    python -m bench.run_benchmark --update-readme      # and rewrite the README's results table
    python -m bench.run_benchmark --executor celery --workers 2   # the same on the CeleryExecutor

Everything is real and local: the Adobe emulator (``devstack.adobe_emulator``) serving the I/O
Events journal, the SMTP sink in count-only mode, ``airflow standalone`` (scheduler with the
LocalExecutor, dag-processor, API server, triggerer; metadata on PostgreSQL), and the store on
PostgreSQL (``--store sqlite`` for the embedded default). ``--executor celery --workers N`` runs
Airflow as devstack.celery_stack does instead (api-server, scheduler, dag-processor and N Celery
workers, Redis broker): the results and the table name the executor, so both sit side by side.
Phases:

1. **Backlog drain**: N triggers (default 1,000,000) wait in the journal over a profiles table of
   ``--profiles`` customers (default 1,000,000); ``trigger_emails`` is unpaused and runs on its
   schedule until every event is decided (sent, suppressed, quarantined...). Reported: triggers/hour
   end to end (first pull -> last SMTP acceptance) and per stage (events / summed task time).
2. **Steady state**: ``--rate`` triggers/s (default 278 = 1M/hour) for ``--duration`` s (default
   600); reported: trigger fired (``triggerTimestamp``) -> SMTP accepted latency p50/p95/p99/max.
3. **Ceiling**: the SMTP sink's own acceptance rate from a minimal client (bench.smtp_ceiling), so
   the figures read as a fraction of the physical limit of this machine.

Writes ``bench/results/<timestamp>/results.json`` and PNG plots (latency histogram, latency over
time, throughput per stage), copies the plots to ``docs/img/bench-*.png``, and with
``--update-readme`` rewrites the table between ``<!-- bench:start -->`` and ``<!-- bench:end -->``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PG_SERVER = os.environ.get("TRIGGERFLOW_BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
DAG_ID = "trigger_emails"


def log(message: str) -> None:
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


# -- setup --------------------------------------------------------------------------------------------
@contextmanager
def bench_store(kind: str, folder: Path) -> Iterator[str]:
    """The store: a SQLite file in the results folder, or a scratch PostgreSQL database."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'store.db'}"
        return
    from devstack.airflow_stack import postgres_metadata_db
    from include.triggerflow.store.engines import dispose_engines

    # a fresh, dropped-afterwards database: the same helper gives Airflow its metadata DB
    with postgres_metadata_db(PG_SERVER) as url:
        try:
            yield url
        finally:
            dispose_engines()


def connection_env(emu: Any, smtp: Any, store_url: str, page_limit: int, group_size: int | None = None) -> dict[str, str]:
    return {
        "AIRFLOW_CONN_ADOBE_IMS": json.dumps({
            "conn_type": "http", "host": emu.base_url, "login": emu.client.client_id,
            "password": emu.client.client_secret, "extra": {"org_id": emu.client.org_id, "scopes": "openid,AdobeID"},
        }),
        "AIRFLOW_CONN_ADOBE_TRIGGERS": json.dumps({
            "conn_type": "http", "host": emu.client.journal_url,
            "extra": {"kind": "journal", "ims_conn_id": "adobe_ims", "page_limit": page_limit},
        }),
        "AIRFLOW_CONN_SMTP_TRIGGERS": json.dumps({
            "conn_type": "smtp", "host": smtp.host, "port": smtp.port,
            "extra": {"from_email": "shop@triggerflow.test", "from_name": "triggerflow shop",
                      "disable_ssl": True, "disable_tls": True, "retry_limit": 0, "timeout": 60,
                      **({"send_group_size": group_size} if group_size is not None else {})},
        }),
        "AIRFLOW_CONN_TRIGGERS_DB": json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": store_url}}),
        "AIRFLOW_CONN_TRIGGERFLOW_UNSUBSCRIBE": json.dumps({
            "conn_type": "generic", "host": "http://127.0.0.1:8080", "password": "benchmark-only-unsubscribe-secret"}),
    }


def executor_info(args: argparse.Namespace) -> dict[str, Any]:
    """What runs the tasks, for results.json (``tasks_by_host`` is added after the run)."""
    if args.executor == "celery":
        from devstack.celery_stack import DEFAULT_WORKER_CONCURRENCY

        return {"kind": "celery", "workers": args.workers, "worker_concurrency": DEFAULT_WORKER_CONCURRENCY}
    return {"kind": "local"}


def executor_label(r: dict[str, Any]) -> str:
    """The executor as the table names it; results written before ``--executor`` existed ran
    on the LocalExecutor."""
    e = r.get("executor") or {"kind": "local"}
    if e["kind"] == "celery":
        return f"CeleryExecutor, {e['workers']} workers × {e['worker_concurrency']} processes, Redis broker"
    return "LocalExecutor"


def start_airflow(args: argparse.Namespace, home: Path, env: dict[str, str], metadata_url: str) -> Any:
    """The Airflow of ``--executor`` (a context manager giving a devstack.airflow_stack.Stack)."""
    if args.executor == "celery":
        from devstack.celery_stack import celery_stack, ensure_services
        from devstack.ensure_redis import broker_url

        problem = ensure_services(PG_SERVER, broker_url())
        if problem:
            raise SystemExit(f"--executor celery: {problem}")
        return celery_stack(home, metadata_url=metadata_url, workers=args.workers, env_overrides=env)
    from devstack.airflow_stack import airflow_standalone

    return airflow_standalone(home, env_overrides=env, metadata_url=metadata_url)


# -- measuring ----------------------------------------------------------------------------------------
def tasks_by_host(tis: list[dict[str, Any]]) -> dict[str, int]:
    """How many of the task instances each host ran (the Celery worker's hostname under
    ``--executor celery``): how evenly the work spread. Task instances that ran nowhere (skipped,
    or still queued when the benchmark ended) have no hostname and are left out."""
    hosts: dict[str, int] = {}
    for ti in tis:
        if host := ti.get("hostname"):
            hosts[host] = hosts.get(host, 0) + 1
    return hosts


#: seconds between two progress counts while waiting for a phase to be processed
POLL_S = 10.0


def store_progress(engine: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    from include.triggerflow.store.schema import decision, event, quarantine, send

    with engine.connect() as conn:
        landed = conn.execute(select(func.count()).select_from(event)).scalar_one()
        decided = conn.execute(select(func.count()).select_from(decision)).scalar_one()
        quarantined = conn.execute(select(func.count()).select_from(quarantine)).scalar_one()
        states = dict(conn.execute(select(send.c.state, func.count()).group_by(send.c.state)).all())
    waiting = sum(int(states.get(s, 0)) for s in ("pending", "sending", "deferred"))
    return {"landed": int(landed), "decided": int(decided), "quarantined": int(quarantined),
            "sent": int(states.get("sent", 0)), "failed": int(states.get("failed", 0)), "waiting": waiting}


def stats_progress(engine: Any) -> tuple[int, int]:
    """(events processed, emails sent) from the status counters (``tf_batch_stats``: one row per
    batch, summed): cheap, but as of each stage's last refresh, so only a hint."""
    from sqlalchemy import func, select

    from include.triggerflow.store.summaries import batch_stats

    with engine.connect() as conn:
        received, unprocessed, sent = conn.execute(select(
            func.coalesce(func.sum(batch_stats.c.received), 0), func.coalesce(func.sum(batch_stats.c.unprocessed), 0),
            func.coalesce(func.sum(batch_stats.c.sent), 0),
        )).one()
    return int(received) - int(unprocessed), int(sent)


#: polls between two exact counts while the status counters say the phase is not over
EXACT_EVERY = 6


def wait_processed(engine: Any, total: int, label: str, timeout_s: float, sink: Any) -> dict[str, int]:
    """Until ``total`` events are decided or quarantined and no ledger row waits.

    The exact counts (:func:`store_progress`) scan tables of a million rows: every 2 s they cost the
    drain ~7 % of the machine's CPU (bench.task_cpu's "benchmark" row). So the loop reads the status
    counters every ``POLL_S`` and counts exactly only when they say the phase may be over (all
    processed and no email sent since the last look), or every ``EXACT_EVERY`` polls in case a
    counter refresh failed. The figures come from the ledger's times, not from when this loop
    notices the end, so a slower look loses nothing."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=label, unit="ev", dynamic_ncols=True, file=sys.stdout)
    deadline = time.monotonic() + timeout_s
    seen = 0
    last_sent = -1
    shown_sent = 0  # the line never goes back: a counter refresh can lag an exact count already shown
    look = 0
    try:
        while True:
            processed, sent = stats_progress(engine)
            if (processed >= total and sent == last_sent) or look % EXACT_EVERY == 0:
                p = store_progress(engine)
                processed, sent = p["decided"] + p["quarantined"], p["sent"]
                if processed >= total and p["waiting"] == 0:
                    bar.update(max(0, total - seen))
                    return p
            last_sent = sent
            bar.update(max(0, min(processed, total) - seen))
            seen = max(seen, min(processed, total))
            shown_sent = max(shown_sent, sent)
            bar.set_postfix(sent=shown_sent, accepted=sink.accepted())
            if time.monotonic() > deadline:
                exact = store_progress(engine)
                raise TimeoutError(f"{label}: {processed} of {total} processed after {timeout_s:.0f} s: {exact}")
            time.sleep(POLL_S)
            look += 1
    finally:
        bar.close()


def sent_rows(engine: Any, since_ms: int | None = None, until_ms: int | None = None) -> list[tuple[int, float]]:
    """(trigger_ts ms, sent_at epoch s) of every sent email with a trigger time in the range."""
    from sqlalchemy import select

    from include.triggerflow.store.schema import send

    stmt = select(send.c.trigger_ts, send.c.sent_at).where(send.c.state == "sent", send.c.sent_at.is_not(None))
    if since_ms is not None:
        stmt = stmt.where(send.c.trigger_ts >= since_ms)
    if until_ms is not None:
        stmt = stmt.where(send.c.trigger_ts < until_ms)
    with engine.connect() as conn:
        return [(int(ts), _aware(at).timestamp()) for ts, at in conn.execute(stmt)]


def first_landed(engine: Any) -> float:
    from sqlalchemy import func, select

    from include.triggerflow.store.schema import event

    with engine.connect() as conn:
        return _aware(conn.execute(select(func.min(event.c.received_at))).scalar_one()).timestamp()


def run_task_instances(af: Any, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """The task instances (API records) of the runs of DAG_ID started in the window."""
    runs = af.api("GET", f"/dags/{DAG_ID}/dagRuns", params={"limit": 500, "order_by": "-start_date"})["dag_runs"]
    out: list[dict[str, Any]] = []
    for run in runs:
        start = run.get("start_date")
        if start and since <= _iso(start) <= until:
            out += af.api("GET", f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances",
                          params={"limit": 500})["task_instances"]
    return out


def stage_times(tis: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per task id: summed duration of its task instances, and the wall-clock span the mapped
    send tasks of each run covered (they run in parallel)."""
    spans: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for ti in tis:
        if ti.get("start_date") and ti.get("end_date"):
            s, e = _iso(ti["start_date"]).timestamp(), _iso(ti["end_date"]).timestamp()
            spans.setdefault((ti["dag_run_id"], ti["task_id"]), []).append((s, e))
    per: dict[str, dict[str, float]] = {}
    for (_, task_id), items in spans.items():
        entry = per.setdefault(task_id, {"task_seconds": 0.0, "wall_seconds": 0.0, "instances": 0})
        entry["task_seconds"] += sum(e - s for s, e in items)
        entry["wall_seconds"] += max(e for _, e in items) - min(s for s, _ in items)
        entry["instances"] += len(items)
    return per


def latency_stats(values: list[float]) -> dict[str, Any]:
    from include.triggerflow.sla import latency_summary

    return dict(latency_summary(values))


# -- plots and README ---------------------------------------------------------------------------------
def plots(out: Path, steady: list[tuple[int, float]], stages: dict[str, Any], backlog_rate: float) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    lat = [sent - ts / 1000 for ts, sent in steady]
    if lat:
        fig, ax = plt.subplots(figsize=(8, 4.2))
        ax.hist(lat, bins=60, color="#1d4ed8")
        summary = latency_stats(lat)
        for q, color in (("p50", "#16a34a"), ("p95", "#f59e0b"), ("p99", "#dc2626")):
            ax.axvline(summary[q], color=color, linestyle="--", label=f"{q} {summary[q]:.1f} s")
        ax.axvline(90, color="black", linestyle=":", label="target p95 90 s")
        ax.set_xlabel("trigger fired → SMTP accepted (s)")
        ax.set_ylabel("emails")
        ax.set_title(f"Steady state: latency of {len(lat):,} emails")
        ax.legend()
        fig.tight_layout()
        made.append(out / "bench-latency-histogram.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)

        t0 = min(ts for ts, _ in steady) / 1000
        fig, ax = plt.subplots(figsize=(8, 4.2))
        ax.scatter([ts / 1000 - t0 for ts, _ in steady], lat, s=1, alpha=0.25, color="#1d4ed8")
        ax.axhline(90, color="black", linestyle=":", label="target p95 90 s")
        ax.set_xlabel("trigger fired (s since the start of the steady state)")
        ax.set_ylabel("latency (s)")
        ax.set_title("Steady state: latency over time (one dot per email)")
        ax.legend()
        fig.tight_layout()
        made.append(out / "bench-latency-over-time.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)

    # report only counts (a fraction of a second per run): its bar would dwarf the others
    order = ["pull_and_land", "validate", "reconcile", "send"]
    names = [n for n in order if n in stages]
    if names:
        fig, ax = plt.subplots(figsize=(8, 4.2))
        rates = [stages[n]["events_per_hour"] / 1e6 for n in names]
        ax.barh(names[::-1], rates[::-1], color="#1d4ed8")
        ax.axvline(10, color="black", linestyle=":", label="target 10 M/h end to end")
        ax.axvline(backlog_rate / 1e6, color="#dc2626", linestyle="--", label=f"end to end {backlog_rate / 1e6:.1f} M/h")
        ax.set_xlabel("million events per hour (events / stage time in the backlog drain)")
        ax.set_title("Throughput per stage")
        ax.legend(loc="lower right")
        fig.tight_layout()
        made.append(out / "bench-stage-throughput.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)
    return made


def readme_table(r: dict[str, Any]) -> str:
    b, s, c = r["backlog"], r["steady"], r["ceiling"]
    lat = s["latency_s"]
    ceiling = c.get("best_per_second")
    lines = [
        f"Measured {r['finished_at'][:16].replace('T', ' ')} UTC on {r['machine']['description']} "
        f"(store: {r['store']}, metadata: PostgreSQL, {executor_label(r)}, pool `smtp_sessions` = {r['config']['pool_slots']}, "
        f"`max_events` {r['config']['max_events']:,}, `chunk_size` {r['config']['chunk_size']:,}). "
        "Regenerate with `python -m bench.run_benchmark --update-readme`.",
        "",
        "| what | measured | target |",
        "|---|---|---|",
        f"| backlog drain, {b['events']:,} triggers, end to end (first pull → last SMTP accept) | "
        f"**{b['triggers_per_hour'] / 1e6:.2f} M triggers/hour** ({b['seconds']:.0f} s; {b['emails']:,} emails) | ≥ 10 M/hour |",
    ]
    if b.get("machine_cpu_ms_per_email"):
        lines.append(f"| — machine CPU per email during the drain (all processes) | {b['machine_cpu_ms_per_email']:.2f} ms | |")
    kill = r.get("kill")
    if kill and kill.get("pid"):
        lines.append(
            f"| — a send task SIGKILLed after {kill['accepted_at_kill']:,} emails (G = {kill['group_size']}) | "
            f"{kill['ambiguous']} row(s) ambiguous, the drain completed | ≤ G ambiguous |")
    for name in ("pull_and_land", "validate", "reconcile", "send"):
        st = b["stages"].get(name)
        if st:
            lines.append(f"| — stage `{name}` | {st['events_per_hour'] / 1e6:.1f} M events/hour ({st['seconds']:.0f} s) | |")
    lines += [
        f"| steady state, {s['rate_per_s']:.0f}/s for {s['duration_s']:.0f} s ({s['emails']:,} emails) — latency p50 / p95 / p99 / max | "
        f"{lat['p50']:.1f} / **{lat['p95']:.1f}** / **{lat['p99']:.1f}** / {lat['max']:.1f} s | p95 ≤ 90 s, p99 ≤ 120 s |"
        if lat.get("count") else "| steady state | no emails measured | |",
        *_steady2_row(r.get("steady2")),
        f"| SMTP sink ceiling (minimal client, best of {', '.join(str(k) for k in c.get('sessions', []))} sessions) | "
        f"{ceiling:,.0f} msgs/s = {ceiling * 3600 / 1e6:.1f} M/hour; the backlog drain ran at "
        f"{b['emails'] / max(b['seconds'], 1e-9) / ceiling * 100:.0f} % of it |  |" if ceiling else "| SMTP ceiling | not measured | |",
    ]
    return "\n".join(lines + drain_cpu_table(b))


STAGE_ORDER = ("pull_and_land", "validate", "reconcile", "send", "report")


def drain_cpu_table(b: dict[str, Any]) -> list[str]:
    """The drain's CPU booked per task instance (bench.task_cpu), per stage and per 1,000 triggers."""
    cpu = b.get("cpu")
    if not cpu or not cpu.get("stages"):
        return []
    per = cpu["stages"]
    k = b["events"] / 1000
    lines = [
        "",
        f"CPU of the drain booked per task instance (`bench.task_cpu`: every process sampled every 0.5 s; "
        f"{cpu['booked_s']:,.0f} of the machine's {cpu['machine_busy_s']:,.0f} busy CPU-seconds booked):",
        "",
        "| stage | task instances | task processes | their PostgreSQL backends | **project CPU-s per 1,000 triggers** | Airflow's supervisor per 1,000 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    order = [t for t in STAGE_ORDER if t in per] + sorted(t for t in per if t not in STAGE_ORDER)
    for task_id in order:
        e = per[task_id]
        lines.append(f"| `{task_id}` | {e['instances']} | {e['task_s']:,.1f} s | {e['store_s']:,.1f} s | "
                     f"{e['project_per_1000']:.3f} | {e['supervisor_per_1000']:.3f} |")
    total = sum(e["project_per_1000"] for e in per.values())
    sup = sum(e["supervisor_per_1000"] for e in per.values())
    lines.append(f"| **all stages** | {sum(e['instances'] for e in per.values())} | | | **{total:.3f}** (target ≤ 0.35) | {sup:.3f} |")
    roles = cpu["roles_s"]
    rest = ", ".join(f"{name} {roles[name] / k:.3f}" for name in roles if roles[name] > 0)
    lines.append(f"| the rest of the machine, CPU-s per 1,000 triggers | | | | {rest} | |")
    return lines


def _steady2_row(s2: dict[str, Any] | None) -> list[str]:
    if not s2:
        return []
    lat = s2["latency_s"]
    if not lat.get("count"):
        return [f"| steady state, {s2['rate_per_s']:.0f}/s | no emails measured | |"]
    return [f"| steady state, {s2['rate_per_s']:.0f}/s = {s2['rate_per_s'] * 3600 / 1e6:.1f} M/hour for "
            f"{s2['duration_s']:.0f} s ({s2['emails']:,} emails) — latency p50 / p95 / p99 / max | "
            f"{lat['p50']:.1f} / **{lat['p95']:.1f}** / **{lat['p99']:.1f}** / {lat['max']:.1f} s | p95 ≤ 90 s, p99 ≤ 120 s |"]


def update_readme(table: str) -> None:
    from bench.readme import replace_block

    if not replace_block("bench", table):
        raise SystemExit("README.md has no <!-- bench:start --> ... <!-- bench:end --> block")


# -- the run ------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.profile_stages import machine_busy
    from bench.task_cpu import TaskCpuSampler, per_stage
    from devstack.airflow_stack import postgres_metadata_db
    from devstack.loadgen import inject_backlog, inject_rate, load_profiles
    from devstack.processes import start_emulator, start_smtp_sink
    from include.triggerflow.store.engines import get_engine

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / stamp
    out.mkdir(parents=True, exist_ok=True)
    log(f"results go to {out}")
    from include.triggerflow.ledger import DEFAULT_GROUP_SIZE

    config = {"max_events": args.max_events, "chunk_size": args.chunk_size, "max_chunks": args.max_chunks,
              "pool_slots": args.pool_slots, "page_limit": args.page_limit,
              "group_size": args.group_size or DEFAULT_GROUP_SIZE}
    result: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(),
        "store": args.store,
        "executor": executor_info(args),
        "config": config,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "description": f"{os.cpu_count()} vCPU, {mem_gb():.0f} GB RAM, Python {platform.python_version()}"},
        "args": vars(args),
    }
    with ExitStack() as stack:
        store_url = stack.enter_context(bench_store(args.store, out))
        engine = get_engine(store_url)
        log(f"loading {args.profiles:,} profiles into the store ({args.store})")
        loaded = load_profiles(engine, args.profiles, progress=True)
        result["profiles"] = {"count": args.profiles, "seconds": round(loaded.seconds, 1) if hasattr(loaded, "seconds") else None}
        emu = stack.enter_context(start_emulator(log_path=out / "emulator.log", max_limit=max(args.page_limit, 1000)))
        sink = stack.enter_context(start_smtp_sink(store="none", log_path=out / "smtp.log"))
        metadata_url = stack.enter_context(postgres_metadata_db(PG_SERVER))
        env = {
            **connection_env(emu, sink, store_url, args.page_limit, args.group_size),
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True",
            "AIRFLOW__CORE__PARALLELISM": str(max(8, args.pool_slots + 4)),
            "TRIGGERFLOW_MAX_EVENTS": str(args.max_events),
            "TRIGGERFLOW_CHUNK_SIZE": str(args.chunk_size),
            "TRIGGERFLOW_MAX_CHUNKS": str(args.max_chunks),
            "GX_ANALYTICS_ENABLED": "false",
        }
        log(f"starting Airflow (PostgreSQL metadata, {executor_label(result)})")
        af = stack.enter_context(start_airflow(args, out / "airflow", env, metadata_url))
        af.ensure_pools({"smtp_sessions": args.pool_slots})
        af.wait_dag(DAG_ID)

        # 1. backlog drain
        log(f"phase 1: injecting a backlog of {args.backlog:,} triggers")
        # Customer ranges: the steady state's known customers are 1..S (S = rate x duration), the
        # backlog's S+1..S+backlog. Each phase's "unknown shoppers" fall just past its own range, so
        # the backlog's are beyond every profile and the steady state's land on backlog customers
        # (counted as duplicates there), never on a steady customer: the steady state measures
        # fresh triggers, not duplicates of the backlog inside the 24 h dedup window.
        steady_customers = max(1, round(args.rate * args.duration)) + round(args.rate2 * args.duration)
        injected = inject_backlog(emu.base_url, args.backlog, customers=args.backlog,
                                  customer_offset=steady_customers, progress=True)
        log(f"injected {injected.injected:,} in {injected.seconds:.1f} s; unpausing {DAG_ID}")
        t_unpause = datetime.now(UTC)
        busy0 = machine_busy()
        sampler = TaskCpuSampler(store_url if args.store != "sqlite" else None)
        sampler.start()
        killer = None
        if args.kill_send_after:
            killer = SendKiller(af, sink, args.kill_send_after)
            killer.start()
        af.unpause(DAG_ID)
        done = wait_processed(engine, args.backlog, "backlog", args.timeout, sink)
        if killer is not None:
            result["kill"] = killer.report(engine, config["group_size"])
        t_done = datetime.now(UTC)
        attribution = sampler.stop()
        busy = machine_busy() - busy0
        rows = sent_rows(engine)
        start_s = first_landed(engine)
        last_accept = max((sent for _, sent in rows), default=time.time())
        seconds = max(last_accept - start_s, 1e-9)
        drain_tis = run_task_instances(af, t_unpause, t_done)
        stages = stage_times(drain_tis)
        stage_report = {}
        for name, st in stages.items():
            basis = st["wall_seconds"] if name == "send" else st["task_seconds"]
            stage_report[name] = {"seconds": round(basis, 1), "instances": st["instances"],
                                  "events_per_hour": args.backlog / max(basis, 1e-9) * 3600}
        result["backlog"] = {
            "events": args.backlog, "injected_in_s": round(injected.seconds, 1), "seconds": round(seconds, 1),
            "triggers_per_hour": args.backlog / seconds * 3600, "emails": len(rows),
            "emails_per_hour": len(rows) / seconds * 3600, "outcome": done, "stages": stage_report,
            # everything the machine did per email while draining (Airflow's components, the
            # executor's overhead, the store, the sink): the figure to compare between executors
            "machine_cpu_ms_per_email": round(busy / len(rows) * 1000, 3) if rows else None,
            # the same CPU booked per task instance (bench.task_cpu): per stage, what the project
            # costs where the emulator and the sink are remote
            "cpu": {**per_stage(attribution, {ti["id"]: ti["task_id"] for ti in drain_tis if ti.get("id")}, args.backlog),
                    "machine_busy_s": round(busy, 1), "looks": sampler.looks, "failed_looks": sampler.failed_looks},
        }
        log(f"backlog: {args.backlog:,} triggers in {seconds:.0f} s = {args.backlog / seconds * 3600 / 1e6:.2f} M/hour; "
            f"{len(rows):,} emails")

        # 2. steady state: --rate (1 M/hour), then --rate2 (3 M/hour) on customers of its own
        steady: list[tuple[int, float]] = []
        expected = args.backlog
        offset = 0
        for key, rate in (("steady", args.rate), ("steady2", args.rate2)):
            if not rate:
                continue
            customers = max(1, round(rate * args.duration))
            log(f"phase {key}: {rate}/s for {args.duration} s (customers {offset + 1:,}..{offset + customers:,})")
            phase_start_ms = int(time.time() * 1000)
            feeder = threading.Thread(
                target=inject_rate, args=(emu.base_url, rate, args.duration),
                kwargs={"customers": customers, "customer_offset": offset, "progress": True}, daemon=True,
            )
            feeder.start()
            feeder.join()
            phase_end_ms = int(time.time() * 1000)
            expected += round(rate * args.duration)
            offset += customers
            wait_processed(engine, expected, f"{key} (drain)", args.timeout, sink)
            rows = sent_rows(engine, since_ms=phase_start_ms - 5_000, until_ms=phase_end_ms + 5_000)
            latencies = [sent - ts / 1000 for ts, sent in rows]
            result[key] = {"rate_per_s": rate, "duration_s": args.duration, "emails": len(rows),
                           "latency_s": latency_stats(latencies)}
            log(f"{key}: latency {result[key]['latency_s']}")
            (out / f"{key}_latencies.json").write_text(json.dumps(rows), encoding="utf-8")
            if key == "steady":
                steady = rows
        result["executor"]["tasks_by_host"] = tasks_by_host(run_task_instances(af, t_unpause, datetime.now(UTC)))

    # 3. ceiling (alone on the machine)
    log("phase 3: the SMTP sink's own ceiling")
    from bench.smtp_ceiling import measure_ceiling

    ceiling = measure_ceiling(messages=args.ceiling_messages)
    best = max((r.get("msgs_per_s", 0) for r in ceiling.get("runs", [])), default=None)
    result["ceiling"] = {**ceiling, "best_per_second": best, "sessions": [r.get("sessions") for r in ceiling.get("runs", [])]}
    result["finished_at"] = datetime.now(UTC).isoformat()

    made = plots(out, steady, result["backlog"]["stages"], result["backlog"]["triggers_per_hour"])
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    table = readme_table(result)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    if args.update_readme:
        for path in made:
            shutil.copy(path, ROOT / "docs" / "img" / path.name)
        update_readme(table)
        log("README.md table and docs/img/bench-*.png updated")
    print(table)
    return result


class SendKiller(threading.Thread):
    """Once the sink has accepted ``after`` emails, SIGKILL one send task process in the middle of
    its SMTP session (LocalExecutor), as a machine dying would: no except block, no cleanup."""

    def __init__(self, af: Any, sink: Any, after: int) -> None:
        super().__init__(daemon=True, name="send-killer")
        self.af, self.sink, self.after = af, sink, after
        self.killed: dict[str, Any] | None = None

    def run(self) -> None:
        import signal

        base = self.sink.accepted()
        while self.killed is None:
            accepted = self.sink.accepted() - base
            if accepted >= self.after:
                for proc in self.af.task_processes_connected_to(self.sink.port, self.sink.host):
                    try:
                        os.kill(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    self.killed = {"pid": proc.pid, "accepted_at_kill": accepted, "at": datetime.now(UTC).isoformat()}
                    log(f"killed send task process {proc.pid} (SIGKILL) after {accepted:,} emails")
                    return
            time.sleep(0.05)

    def report(self, engine: Any, group_size: int) -> dict[str, Any]:
        """What the kill left: the ambiguous rows (at most G) and whether every other row was sent."""
        from sqlalchemy import func, select

        from include.triggerflow.store.schema import send

        with engine.connect() as conn:
            states = dict(conn.execute(select(send.c.state, func.count()).group_by(send.c.state)).all())
        ambiguous = int(states.get("ambiguous", 0))
        out = {**(self.killed or {"pid": None}), "group_size": group_size, "ambiguous": ambiguous,
               "ledger_states": states, "at_most_g": ambiguous <= group_size}
        if self.killed is None:
            log("no send task was killed (the drain ended first)")
        else:
            log(f"after the kill: {ambiguous} ambiguous row(s) (G = {group_size}: "
                f"{'within' if ambiguous <= group_size else 'MORE THAN'} G); ledger {states}; the drain completed")
        return out


def mem_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError):
        return 0.0


def _iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run_benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", choices=("postgres", "sqlite"), default="postgres")
    p.add_argument("--executor", choices=("local", "celery"), default="local",
                   help="local: airflow standalone (LocalExecutor); celery: devstack.celery_stack")
    p.add_argument("--workers", type=int, default=None, help="Celery workers (--executor celery; default 2)")
    p.add_argument("--profiles", type=int, default=1_000_000, help="at least backlog + rate x duration")
    p.add_argument("--backlog", type=int, default=1_000_000)
    p.add_argument("--rate", type=float, default=278.0, help="steady-state triggers per second")
    p.add_argument("--rate2", type=float, default=833.0,
                   help="a second steady state at this rate (default 833/s = 3 M/hour; 0: none)")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of each steady state")
    p.add_argument("--max-events", type=int, default=250_000, help="the DAG's max_events for the runs")
    p.add_argument("--chunk-size", type=int, default=10_000)
    p.add_argument("--max-chunks", type=int, default=4)
    p.add_argument("--pool-slots", type=int, default=4)
    p.add_argument("--page-limit", type=int, default=10_000, help="journal page size")
    p.add_argument("--ceiling-messages", type=int, default=20_000)
    p.add_argument("--timeout", type=float, default=3600.0, help="give up a phase after this many seconds")
    p.add_argument("--group-size", type=int, default=None,
                   help="the send stage's G (connection extra send_group_size; default: the ledger's default)")
    p.add_argument("--kill-send-after", type=int, default=0, metavar="EMAILS",
                   help="SIGKILL one send task process once the sink has accepted this many emails of the backlog "
                        "(LocalExecutor); the drain must still complete with at most G rows ambiguous")
    p.add_argument("--update-readme", action="store_true")
    p.add_argument("--quick", action="store_true", help="small smoke run: 20k profiles, 20k backlog, 50/s for 60 s")
    return p


def check_executor_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--workers`` only with ``--executor celery`` (default 2 there), and at least 1."""
    if args.executor != "celery":
        if args.workers is not None:
            parser.error("--workers needs --executor celery")
        return
    args.workers = 2 if args.workers is None else args.workers
    if args.workers < 1:
        parser.error("--workers must be at least 1")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_executor_args(parser, args)
    if args.quick:
        args.profiles, args.backlog, args.rate, args.rate2, args.duration = 0, 20_000, 50.0, 150.0, 60.0
        args.ceiling_messages = 5_000
    # at least 1M customers, and enough that the steady state's customers follow the backlog's
    args.profiles = max(args.profiles, args.backlog + int((args.rate + args.rate2) * args.duration) + 2)
    run(args)
    return 0


if __name__ == "__main__":
    from devstack.signals import exit_on_signals

    # a TERM or HUP ends the run through the context managers: the scratch store and the Airflow
    # stack are stopped (set here, not in main(), which the tests call in their own process)
    exit_on_signals()
    raise SystemExit(main())
