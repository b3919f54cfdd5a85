"""Per-stage throughput of the trigger_emails hot path, measured on a real store and SMTP sink.

Builds a scratch store (a SQLite file, or with ``--pg`` a scratch PostgreSQL database dropped
afterwards), loads P profiles, then times each stage function of one batch of N realistic trigger
events (``devstack.messages``: cart and browse abandonment plus an unrouted trigger, several
products and pages, known and unknown customers, a few malformed events):

* **land** — ``stages.land.land_batch`` reading pages from an in-memory source (the real insert
  path: one transaction per page with the position compare-and-set);
* **validate** — ``stages.validate.validate_batch`` (Great Expectations), in a fresh interpreter
  so its import cost shows as it would in a task process (reported separately);
* **reconcile** — ``stages.reconcile.reconcile_batch`` into ``--chunks`` send chunks;
* **send** — ``stages.send.send_chunk`` for every chunk at once, one process each (as the mapped
  send tasks run), over ``hooks.smtp.TriggerMailHook`` to the devstack SMTP sink in its
  count-only mode (``--store none``; ``--sink-store eml`` writes files), checked against the
  sink's accepted count.

Each stage prints events/s (send: emails/s, wall time from the start signal to the last chunk
done) and, with ``--cprofile``, the top functions by own time. An idle run (empty batch through
validate/reconcile/send) is timed as well: every minute pays it when there is no traffic.

    python -m bench.profile_stages --n 50000                 # SQLite
    python -m bench.profile_stages --n 200000 --pg           # PostgreSQL on 127.0.0.1:5432
    python -m bench.profile_stages --n 50000 --cprofile --top 25 --json /tmp/r.json

The batch goes through the stages exactly as the DAG runs them; only the source (in memory) and
Airflow's task machinery (process start, XCom) are left out.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import multiprocessing
import os
import platform
import pstats
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

DEFAULT_PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
UNSUBSCRIBE_BASE_URL = "http://localhost:8080"
UNSUBSCRIBE_SECRET = "triggerflow-bench-only-unsubscribe-secret"
FROM_EMAIL = "shop@triggerflow.test"
UNROUTED_TRIGGER_ID = "0badc0de-0000-4000-8000-00000000beef"
FIRST_NAMES = ("Ada", "Grace", "Donald", "Zoë", "François", "Björk", "José", "Ngozi", "Li", "Ødegaard", None)
LAST_NAMES = ("Lovelace", "Hopper", "Knuth", "Müller", "Dupont", "García", "Okafor", None)
LOCALES = (None, "en_US", "en_GB", "fr_FR", "fr", "de_DE")
TIMEZONES = (None, "Europe/Paris", "Europe/London", "America/New_York", "Asia/Tokyo", "UTC")


# -- the store ----------------------------------------------------------------------------------------
@contextmanager
def scratch_store(pg_url: str | None, folder: Path) -> Iterator[str]:
    """URL of an empty store: a SQLite file in ``folder``, or a scratch PostgreSQL database."""
    if not pg_url:
        yield f"sqlite:///{folder / 'bench-store.db'}"
        return
    from devstack.ensure_postgres import scratch_database

    with scratch_database(pg_url, prefix="tf_bench") as url:
        yield url


def profile_rows(count: int, rng: random.Random) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [
        {
            "customer_id": f"C{i:07d}",
            "email": f"c{i:07d}@example.test",
            "first_name": rng.choice(FIRST_NAMES),
            "last_name": rng.choice(LAST_NAMES),
            "locale": rng.choice(LOCALES),
            "timezone": rng.choice(TIMEZONES),
            "shopper_id": f"SHOP-{i:07d}",
            "ecid": None,
            "declared_id": None,
            "opted_out": rng.random() < 0.01,
            "updated_at": now - timedelta(days=rng.randint(0, 400)),
        }
        for i in range(count)
    ]


def load_profiles(engine: Any, rows: list[dict[str, Any]]) -> float:
    """Bulk insert (executemany in 20k-row transactions); returns seconds."""
    from include.triggerflow.store.schema import profiles

    t0 = time.perf_counter()
    for start in range(0, len(rows), 20_000):
        with engine.begin() as conn:
            conn.execute(profiles.insert(), rows[start : start + 20_000])
    return time.perf_counter() - t0


def event_payloads(
    count: int, profiles: int, rng: random.Random, *, known: float, invalid: float, offset: int = 0
) -> list[str]:
    """Pipeline envelopes as landed: 60% cart, 34% browse, 6% an unrouted trigger; ``known`` of the
    shopper ids belong to a profile (``SHOP-%07d`` of ``offset .. offset + profiles - 1``);
    ``invalid`` of the events fail one expectation."""
    from devstack.messages import (
        BROWSE_ABANDONMENT_TRIGGER_ID,
        CART_ABANDONMENT_TRIGGER_ID,
        DEMO_CATALOG,
        envelope,
        now_ms,
        trigger_message,
    )

    skus = sorted(DEMO_CATALOG)
    base_ms = now_ms()
    out = []
    for i in range(count):
        pick = rng.random()
        trigger_id = (
            CART_ABANDONMENT_TRIGGER_ID if pick < 0.60 else BROWSE_ABANDONMENT_TRIGGER_ID if pick < 0.94 else UNROUTED_TRIGGER_ID
        )
        shopper = f"SHOP-{offset + rng.randrange(profiles):07d}" if rng.random() < known else f"SHOP-X{i:07d}"
        message = trigger_message(
            trigger_id=trigger_id,
            shopper_id=shopper,
            mc_id=f"{rng.getrandbits(126):038d}"[:38],
            products=rng.sample(skus, rng.randint(1, 3)),
            triggered_at_ms=base_ms - rng.randint(5_000, 120_000),
        )
        env = envelope(message, partition=i % 15, offset=i)
        if rng.random() < invalid:
            kind = rng.randrange(3)
            if kind == 0:
                env["envelopeType"] = "HEARTBEAT"
            elif kind == 1:
                del env["com.adobe.mcloud.pipeline.pipelineMessage"]["header"]["messageId"]
            else:
                env["com.adobe.mcloud.pipeline.pipelineMessage"]["com.adobe.mcloud.protocol.trigger"]["triggerTimestamp"] = "yesterday"
        out.append(json.dumps(env, separators=(",", ":")))
    return out


class MemorySource:
    """A TriggerSource over a list of payloads: pages of ``page_size`` messages on partition 0."""

    endpoint = "memory://bench"

    def __init__(self, payloads: list[str], page_size: int, source_key: str = "bench:memory") -> None:
        self.payloads = payloads
        self.page_size = page_size
        # one key per measurement on a shared store: the positions read so far are per source
        self.source_key = source_key

    def read(self, positions: Mapping[int, str], max_messages: int) -> Iterator[Any]:
        from include.triggerflow.sources.base import Page, RawMessage

        start = int(positions.get(0, "0"))
        end = min(len(self.payloads), start + max_messages)
        for first in range(start, end, self.page_size):
            last = min(end, first + self.page_size)
            msgs = [RawMessage(partition=0, position=f"{n:012d}", payload=self.payloads[n]) for n in range(first, last)]
            yield Page(messages=msgs, next_positions={0: str(last)}, bytes_read=sum(len(m.payload) for m in msgs))


# -- timing -------------------------------------------------------------------------------------------
SORT = "tottime"


def top_functions(profiler: cProfile.Profile, top: int) -> str:
    buf = io.StringIO()
    stats = pstats.Stats(profiler, stream=buf)
    stats.strip_dirs().sort_stats(SORT).print_stats(top)
    text = buf.getvalue()
    # keep the table only (drop the preamble up to the header line)
    at = text.find("   ncalls")
    return text[at:] if at >= 0 else text


def timed(name: str, func: Any, *, profile: bool, top: int, report: dict[str, Any], postmaster: int | None = None) -> Any:
    """Run ``func`` in this process; record its wall time, the machine's CPU, this process's CPU
    and (``postmaster``: a local PostgreSQL server) the server processes' CPU meanwhile."""
    profiler = cProfile.Profile() if profile else None
    busy0 = machine_busy()
    server0 = server_processes_cpu(postmaster)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    try:
        result = func()
    finally:
        if profiler:
            profiler.disable()
    seconds = time.perf_counter() - t0
    process_cpu = time.process_time() - cpu0
    # the whole machine's CPU meanwhile: this process and the store's server (the capacity model
    # in the README adds these up per trigger); other load on the machine counts too
    report[name] = {"seconds": round(seconds, 3), "machine_cpu_s": round(machine_busy() - busy0, 3),
                    "process_cpu_s": round(process_cpu, 3),
                    "server_cpu_s": round(cpu_since(server0, server_processes_cpu(postmaster)), 3) if postmaster else None}
    if profiler:
        report[name]["profile"] = top_functions(profiler, top)
    return result, seconds


def project_cpu(stages: Mapping[str, Mapping[str, Any]], triggers: int) -> dict[str, float]:
    """**Project CPU-seconds per 1,000 triggers**, per stage and in total: the stage's own processes
    (land and reconcile: this process; validate: its task process, the GX import left out; send:
    the send processes) plus the PostgreSQL server's processes meanwhile (on SQLite the store is
    in-process). The emulator and the SMTP sink are stand-ins for remote services: not counted."""
    out: dict[str, float] = {}
    for name in ("land", "validate", "reconcile", "send"):
        stage = stages.get(name)
        if not stage or not triggers:
            continue
        if name == "send":
            own, server = stage.get("client_cpu_s"), stage.get("server_cpu_s")
        else:
            own, server = stage.get("process_cpu_s"), stage.get("server_cpu_s")
        if own is None:
            continue
        out[name] = round((own + (server or 0.0)) / triggers * 1000, 3)
    if out:
        out["total"] = round(sum(out.values()), 3)
    return out


def routing_config() -> Any:
    from include.triggerflow import DEFAULT_ROUTING_FILE
    from include.triggerflow.config import load_routing

    return load_routing(DEFAULT_ROUTING_FILE)


def smtp_conn_json(host: str, port: int) -> str:
    return json.dumps(
        {
            "conn_type": "smtp",
            "host": host,
            "port": port,
            "extra": {
                "from_email": FROM_EMAIL,
                "from_name": "triggerflow bench",
                "disable_ssl": True,
                "disable_tls": True,
                "retry_limit": 0,
                "timeout": 30,
            },
        }
    )


# -- stages in a fresh interpreter (validate: the GX import is part of a task's cost) -----------------
def _validate_child(url: str, batch_id: str, profile: bool, top: int, out_path: str, sort: str) -> None:
    import logging

    global SORT
    SORT = sort

    logging.getLogger("include.triggerflow").setLevel(logging.ERROR)
    t_import = time.perf_counter()
    from include.triggerflow.stages.validate import validate_batch
    from include.triggerflow.store.engines import get_engine

    routing = routing_config()
    engine = get_engine(url)
    import_s = time.perf_counter() - t_import
    report: dict[str, Any] = {}
    postmaster = postmaster_pid(url)
    with engine.connect():  # the pooled session validate will use is open before the server snapshot
        pass
    result, _seconds = timed("validate", lambda: validate_batch(engine, batch_id, routing), profile=profile, top=top,
                             report=report, postmaster=postmaster)
    report["validate"].update(import_s=round(import_s, 3), result=result.as_xcom())
    Path(out_path).write_text(json.dumps(report), encoding="utf-8")


def _send_child(
    url: str, batch_id: str, chunk: int, conn_json: str, profile: bool, top: int, sort: str, ready: Any, go: Any, out: Any,
    leave: Any, group_size: int | None = None,
) -> None:
    global SORT
    SORT = sort
    try:
        import logging

        os.environ["AIRFLOW_CONN_SMTP_TRIGGERS"] = conn_json
        logging.getLogger("include.triggerflow").setLevel(logging.WARNING)
        t_import = time.perf_counter()
        from include.triggerflow.hooks.smtp import TriggerMailHook
        from include.triggerflow.render import Renderer
        from include.triggerflow.stages.send import SendOptions, send_chunk
        from include.triggerflow.store.engines import get_engine
        from include.triggerflow.unsubscribe import UnsubscribeLinks

        routing = routing_config()
        engine = get_engine(url)
        renderer = Renderer()
        options = SendOptions(
            run_id="bench", try_number=1, unsubscribe=UnsubscribeLinks(UNSUBSCRIBE_SECRET, UNSUBSCRIBE_BASE_URL),
            group_size=SendOptions.group_size if group_size is None else group_size,
        )
        import_s = time.perf_counter() - t_import
        ready.put(chunk)
        go.wait()
        profiler = cProfile.Profile() if profile else None
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        times0 = os.times()
        wall0 = time.time()
        if profiler:
            profiler.enable()
        result = send_chunk(engine, batch_id, chunk, routing, renderer, TriggerMailHook, options)
        if profiler:
            profiler.disable()
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        times1 = os.times()
        out.put(
            {
                "chunk": chunk, "seconds": seconds, "cpu_s": cpu, "sys_s": times1.system - times0.system, "wall0": wall0, "wall1": wall0 + seconds, "import_s": import_s,
                "counts": result.counts, "profile": top_functions(profiler, top) if profiler else None, "error": None,
            }
        )
        leave.wait(120)  # keep the database session open until the parent has read its CPU time
    except BaseException as exc:  # reported to the parent
        import traceback

        ready.put(chunk)
        out.put({"chunk": chunk, "error": f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc()}"})


def run_send(url: str, batch_id: str, chunks: list[int], sink: Any, *, profile: bool, top: int,
             group_size: int | None = None) -> dict[str, Any]:
    """Send the chunks at once, one process each (as the mapped send tasks run); ``group_size``:
    SendOptions.group_size (None: its default)."""
    ctx = multiprocessing.get_context("spawn")
    ready, out, go, leave = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
    postmaster = postmaster_pid(url)
    conn_json = smtp_conn_json(sink.host, sink.port)
    before = sink.accepted()
    sink_cpu0 = _process_cpu(sink.process.pid)
    machine0 = machine_busy()
    server0 = server_processes_cpu(postmaster)
    procs = [
        ctx.Process(target=_send_child, args=(url, batch_id, c, conn_json, profile and i == 0, top, SORT, ready, go, out, leave, group_size))
        for i, c in enumerate(chunks)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=300)
    wall0 = time.time()
    go.set()
    results = [out.get(timeout=7200) for _ in procs]
    # the PostgreSQL server's share: its processes' CPU time during the send (the send processes'
    # sessions are still open; WAL writer and checkpointer included)
    server_cpu = cpu_since(server0, server_processes_cpu(postmaster)) if postmaster else None
    leave.set()
    for p in procs:
        p.join(timeout=60)
    errors = [r["error"] for r in results if r.get("error")]
    if errors:
        raise RuntimeError(f"{len(errors)} send chunk(s) failed:\n{errors[0]}")
    wall = max(r["wall1"] for r in results) - wall0
    sent = sum(r["counts"]["sent"] for r in results)
    sink_cpu = _process_cpu(sink.process.pid) - sink_cpu0
    machine_cpu = machine_busy() - machine0
    client_cpu = sum(r["cpu_s"] for r in results)
    client_sys = sum(r["sys_s"] for r in results)
    accepted = sink.wait_accepted(before + sent, timeout=30) - before if sent else 0
    return {
        "seconds": round(wall, 3),
        "client_cpu_s": round(client_cpu, 3),
        "server_cpu_s": round(server_cpu, 3) if server_cpu is not None else None,
        "emails": sent,
        "failed": sum(r["counts"]["failed"] for r in results),
        "sink_accepted": accepted,
        # CPU time per email: of the send processes (render, MIME, ledger writes, SMTP client) and
        # of the SMTP sink; less sensitive to other load on the machine than the wall time
        "client_cpu_ms_per_email": round(client_cpu / sent * 1000, 3) if sent else None,
        "client_sys_ms_per_email": round(client_sys / sent * 1000, 3) if sent else None,
        "sink_cpu_ms_per_email": round(sink_cpu / sent * 1000, 3) if sent else None,
        # every process of the machine (PostgreSQL server included; other users' load too)
        "machine_cpu_ms_per_email": round(machine_cpu / sent * 1000, 3) if sent else None,
        "pg_server_cpu_ms_per_email": round(server_cpu / sent * 1000, 3) if sent and server_cpu is not None else None,
        "per_chunk": [
            {"chunk": r["chunk"], "sent": r["counts"]["sent"], "seconds": round(r["seconds"], 3),
             "emails_per_s": round(r["counts"]["sent"] / r["seconds"], 1) if r["seconds"] else None,
             "import_s": round(r["import_s"], 3)}
            for r in sorted(results, key=lambda r: r["chunk"])
        ],
        "profile": next((r["profile"] for r in results if r.get("profile")), None),
    }


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine so far (Linux /proc/stat; 0 elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def server_processes_cpu(postmaster: int | None) -> dict[int, float]:
    """CPU seconds so far of a PostgreSQL server's processes (the postmaster and its children:
    backends, WAL writer, checkpointer, autovacuum...), by pid; empty for None (SQLite)."""
    if postmaster is None:
        return {}
    found = {postmaster: _process_cpu(postmaster)}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == postmaster:
            found[int(proc.name)] = _process_cpu(int(proc.name))
    return found


def cpu_since(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU seconds the processes spent between two snapshots (processes new in ``after`` count whole;
    ones that exited in between are lost: keep the sessions open until ``after`` is taken)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def postmaster_pid(url: str) -> int | None:
    """The PID of the PostgreSQL server behind ``url`` when it runs on this machine (the parent of
    a backend); None for SQLite or a remote server."""
    if not url.startswith("postgresql"):
        return None
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            backend = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            # read while the connection is open: once it closes the backend exits and its /proc entry goes
            stat = Path(f"/proc/{backend}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
    finally:
        engine.dispose()


def _process_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


# -- the benchmark ------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    from include.triggerflow.stages.land import BatchRef, land_batch
    from include.triggerflow.store.engines import describe, get_engine
    from include.triggerflow.store.migrations import create_schema

    rng = random.Random(args.seed)
    n = args.n
    n_profiles = args.profiles
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "n": n, "profiles": n_profiles, "store": "postgresql" if args.pg else "sqlite", "chunks": args.chunks,
        "stages": {},
    }
    stages = report["stages"]
    t = time.perf_counter()
    payloads = event_payloads(n, n_profiles, rng, known=args.known, invalid=args.invalid)
    report["generate_s"] = round(time.perf_counter() - t, 3)
    report["payload_bytes_avg"] = round(sum(map(len, payloads)) / max(n, 1))
    say = (lambda *a: print(*a, flush=True)) if not args.quiet else (lambda *a: None)
    say(f"generated {n:,} events (avg {report['payload_bytes_avg']} B) in {report['generate_s']} s")

    with tempfile.TemporaryDirectory(prefix="triggerflow-bench-") as tmp, scratch_store(
        (args.pg_url if args.pg else None), Path(tmp)
    ) as url:
        os.environ["AIRFLOW_HOME"] = str(Path(tmp) / "airflow")
        engine = get_engine(url)
        create_schema(engine)
        report["store_url"] = describe(engine)
        seconds = load_profiles(engine, profile_rows(n_profiles, rng))
        from devstack.messages import load_demo_catalog

        load_demo_catalog(engine)  # the events' SKUs: the shipped routes email only products the catalogue knows
        report["profiles_load_s"] = round(seconds, 3)
        say(f"store {report['store_url']}: {n_profiles:,} profiles loaded in {seconds:.1f} s")
        # -- idle run: an empty batch through every stage
        idle = BatchRef(dag_id="bench", run_id="bench-0", run_type="scheduled", interval_start=BENCH_START,
                        interval_end=BENCH_START + timedelta(minutes=1))
        land_batch(engine, MemorySource([], args.page_size), idle)
        idle_report = _idle_run(url, idle.batch_id, tmp)
        report["idle"] = idle_report
        say(f"idle run (fresh interpreter, import + empty batch): {idle_report}")

        stages.update(measure_stages(
            url, payloads, tmp=tmp, chunks=args.chunks, page_size=args.page_size, sink_store=args.sink_store,
            skip_validate=args.skip_validate, no_send=args.no_send, profile=args.cprofile, top=args.top, say=say,
            group_size=args.group_size,
        ))

        cpu = report["project_cpu_s_per_1000_triggers"] = project_cpu(stages, n)
        say("project CPU-seconds per 1,000 triggers (own processes + PostgreSQL server; no emulator, no sink): "
            + ", ".join(f"{k} {v:.3f}" for k, v in cpu.items()))
        if not args.no_send and not args.no_naive:
            report["naive"] = naive = _naive_comparison(url, stages, tmp)
            say(f"naive loop on the same batch: {naive['project_cpu_ms_per_trigger']} CPU-s per 1,000 triggers "
                f"(loop {naive['loop_cpu_ms_per_trigger']}, PostgreSQL {naive['pg_server_cpu_ms_per_trigger']}), "
                f"{naive['emails']:,} emails at {naive['emails_per_s']:,.0f}/s")
        total = sum(stages[k]["seconds"] for k in ("land", "validate", "reconcile", "send") if k in stages)
        report["total_s"] = round(total, 3)
        report["events_per_hour_end_to_end"] = round(n / total * 3600) if total else None
        say(f"total {total:.1f} s for {n:,} events = {report['events_per_hour_end_to_end']:,} events/hour end to end "
            "(stage time only)")
        if args.cprofile:
            for name in ("land", "validate", "reconcile", "send"):
                prof = stages.get(name, {}).get("profile")
                if prof:
                    say(f"\n== {name}: top {args.top} functions by {SORT} ==\n{prof}")
    return report


BENCH_START = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def _naive_comparison(url: str, stages: Mapping[str, Any], tmp: str) -> dict[str, Any]:
    """bench.naive_loop over the batch the stages just processed, to a sink of its own."""
    from bench.naive_loop import run_naive
    from devstack.processes import start_smtp_sink

    batch_id = stages["reconcile"]["batch_id"]
    with start_smtp_sink(None, store="none", log_path=Path(tmp) / "naive-sink.log") as sink:
        result = run_naive(url, batch_id, sink.host, sink.port, sink_pid=sink.process.pid)
        result["sink_accepted"] = sink.wait_accepted(result["emails"], timeout=60)
    return result


def measure_stages(
    url: str,
    payloads: list[str],
    *,
    tmp: str,
    chunks: int = 4,
    page_size: int = 1000,
    key: str = "bench",
    start: datetime = BENCH_START,
    sink_store: str = "none",
    skip_validate: bool = False,
    no_send: bool = False,
    profile: bool = False,
    top: int = 20,
    say: Any = print,
    group_size: int | None = None,
) -> dict[str, Any]:
    """Time land, validate (fresh interpreter), reconcile and send of one batch of ``payloads``
    on the store at ``url`` (schema, profiles and catalogue already there). ``key`` names the
    batch's DAG id and source so that several measurements can share a store; ``start`` is the
    batch's data interval. Returns {stage: figures}."""
    from sqlalchemy import func, select

    from include.triggerflow.stages.land import BatchRef, land_batch
    from include.triggerflow.stages.reconcile import reconcile_batch
    from include.triggerflow.store.engines import get_engine
    from include.triggerflow.store.schema import event, send

    engine = get_engine(url)
    routing = routing_config()
    n = len(payloads)
    stages: dict[str, Any] = {}
    batch = BatchRef(dag_id=key, run_id=f"{key}-1", run_type="scheduled", interval_start=start + timedelta(minutes=1),
                     interval_end=start + timedelta(minutes=2))

    # -- land
    source = MemorySource(payloads, page_size, source_key=f"{key}:memory")
    postmaster = postmaster_pid(url)
    landed, seconds = timed("land", lambda: land_batch(engine, source, batch, max_messages=n), profile=profile,
                            top=top, report=stages, postmaster=postmaster)
    stages["land"].update(events=landed.pulled, events_per_s=round(landed.pulled / seconds, 1))
    _say_stage(say, "land", stages["land"], "events")

    # -- validate (fresh interpreter)
    if skip_validate:
        from sqlalchemy import update

        with engine.begin() as conn:
            mine = event.c.batch_id == batch.batch_id
            conn.execute(update(event).where(mine, event.c.trigger_ts.is_not(None)).values(status="valid"))
            conn.execute(update(event).where(mine, event.c.trigger_ts.is_(None)).values(status="quarantined"))
        say("validate   skipped (--skip-validate): events with a trigger timestamp marked valid")
    else:
        _run_validate(url, batch.batch_id, tmp, profile, top, stages, n, say)

    # -- reconcile
    with engine.connect() as conn:
        valid = conn.execute(select(func.count()).select_from(event).where(event.c.batch_id == batch.batch_id, event.c.status == "valid")).scalar_one()
    result, seconds = timed(
        "reconcile",
        # chunk_size 1: as many chunks as ``chunks`` allows (every chunk the same size)
        lambda: reconcile_batch(engine, batch.batch_id, routing, chunk_size=1, max_chunks=chunks),
        profile=profile, top=top, report=stages, postmaster=postmaster,
    )
    stages["reconcile"].update(events=valid, events_per_s=round(valid / seconds, 1), counts=result.counts, chunks=result.chunks,
                               batch_id=batch.batch_id)
    _say_stage(say, "reconcile", stages["reconcile"], "events", extra=f"{result.counts}")
    with engine.connect() as conn:
        queued = conn.execute(select(func.count()).select_from(send).where(send.c.batch_id == batch.batch_id)).scalar_one()

    # -- send
    if not no_send:
        from devstack.processes import start_smtp_sink

        sink_dir = Path(tmp) / f"sink-{key}"
        with start_smtp_sink(
            sink_dir / "outbox" if sink_store == "eml" else None, store=sink_store,
            log_path=sink_dir / "sink.log", stats_interval=0.2,
        ) as sink:
            stages["send"] = run_send(url, batch.batch_id, result.chunks, sink, profile=profile, top=top, group_size=group_size)
        s = stages["send"]
        s.update(queued=queued, emails_per_s=round(s["emails"] / s["seconds"], 1) if s["seconds"] else None,
                 sink=sink_store)
        _say_stage(say, "send", s, "emails", extra=f"({len(result.chunks)} chunks; sink accepted {s['sink_accepted']:,}; "
                   f"CPU per email: send {s['client_cpu_ms_per_email']} ms (system {s['client_sys_ms_per_email']}), sink {s['sink_cpu_ms_per_email']} ms, "
                   f"PostgreSQL server {s['pg_server_cpu_ms_per_email']} ms, machine {s['machine_cpu_ms_per_email']} ms)")
        if s["sink_accepted"] != s["emails"]:
            raise RuntimeError(f"the sink accepted {s['sink_accepted']} of {s['emails']} sent emails")
    return stages


def _run_validate(
    url: str, batch_id: str, tmp: str, profile: bool, top: int, stages: dict[str, Any], n: int, say: Any
) -> None:
    out_path = Path(tmp) / "validate.json"
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_validate_child, args=(url, batch_id, profile, top, str(out_path), SORT))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"validate child failed with exit code {proc.exitcode}")
    stages.update(json.loads(out_path.read_text(encoding="utf-8")))
    v = stages["validate"]
    v.update(events=n, events_per_s=round(n / v["seconds"], 1))
    _say_stage(say, "validate", v, "events", extra=f"(+ import {v['import_s']} s; {v['result']})")


def _say_stage(say: Any, name: str, data: dict[str, Any], unit: str, extra: str = "") -> None:
    """Print a stage's figures; land, validate and reconcile also get their machine CPU per event."""
    count = data.get("events", data.get("emails", 0))
    rate = data.get("events_per_s", data.get("emails_per_s"))
    if "machine_cpu_s" in data and count:
        data["machine_cpu_ms_per_event"] = round(data["machine_cpu_s"] / count * 1000, 3)
        extra = f"(machine CPU {data['machine_cpu_ms_per_event']} ms/event) {extra}"
    say(f"{name:<10} {count:>9,} {unit} in {data['seconds']:8.2f} s = {rate or 0:>10,.0f} {unit}/s  {extra}")


_IDLE_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
from include.triggerflow.stages.validate import validate_batch
from include.triggerflow.stages.reconcile import reconcile_batch
from include.triggerflow.stages.send import send_chunk
from include.triggerflow.store.engines import get_engine
from include.triggerflow import DEFAULT_ROUTING_FILE
from include.triggerflow.config import load_routing
routing = load_routing(DEFAULT_ROUTING_FILE)
engine = get_engine(sys.argv[1])
t1 = time.perf_counter()
validate_batch(engine, sys.argv[2], routing)
t2 = time.perf_counter()
reconcile_batch(engine, sys.argv[2], routing)
t3 = time.perf_counter()
print(json.dumps({"import_s": round(t1 - t0, 3), "validate_s": round(t2 - t1, 3), "reconcile_s": round(t3 - t2, 3),
                  "gx_imported": "great_expectations" in sys.modules}))
"""


def _gx_import_s() -> float:
    """Seconds a fresh interpreter takes to import Great Expectations (paid by a validate task
    with events to validate; not by an idle one)."""
    env = {**os.environ, "GX_ANALYTICS_ENABLED": "false"}
    code = "import time; t = time.perf_counter(); import great_expectations; print(time.perf_counter() - t)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    return round(float(proc.stdout.strip().splitlines()[-1]), 3) if proc.returncode == 0 else -1.0


def _idle_run(url: str, batch_id: str, tmp: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "GX_ANALYTICS_ENABLED": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _IDLE_SCRIPT, url, batch_id], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, env=env, timeout=300)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"idle run failed:\n{proc.stderr[-2000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    data["process_wall_s"] = round(wall, 3)
    data["gx_import_s"] = _gx_import_s()
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_stages", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="events in the batch (default 50000)")
    parser.add_argument("--profiles", type=int, default=200_000, help="profiles in the store (default 200000)")
    parser.add_argument("--pg", action="store_true", help="use a scratch PostgreSQL database (dropped afterwards)")
    parser.add_argument("--pg-url", default=os.environ.get("TRIGGERFLOW_BENCH_PG_URL", DEFAULT_PG_URL),
                        help=f"PostgreSQL server URL (default {DEFAULT_PG_URL})")
    parser.add_argument("--chunks", type=int, default=4, help="send chunks = parallel send processes (default 4)")
    parser.add_argument("--page-size", type=int, default=1000, help="messages per landed page (default 1000)")
    parser.add_argument("--known", type=float, default=0.9, help="share of events whose shopper id has a profile (0.9)")
    parser.add_argument("--invalid", type=float, default=0.01, help="share of events failing validation (0.01)")
    parser.add_argument("--sink-store", choices=("none", "eml"), default="none", help="SMTP sink mode (default none)")
    parser.add_argument("--no-send", action="store_true", help="stop after reconcile")
    parser.add_argument("--no-naive", action="store_true",
                        help="skip the naive loop's comparison (bench.naive_loop over the same batch)")
    parser.add_argument("--group-size", type=int, default=None, help="the send stage's G (default: SendOptions')")
    parser.add_argument("--skip-validate", action="store_true",
                        help="mark every event valid instead of validating (to iterate on later stages)")
    parser.add_argument("--cprofile", action="store_true", help="cProfile each stage (send: the first chunk)")
    parser.add_argument("--top", type=int, default=20, help="functions shown per profile (default 20)")
    parser.add_argument("--sort", choices=("tottime", "cumulative"), default="tottime", help="profile order (tottime)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", metavar="PATH", help="write the full report here")
    parser.add_argument("--update-readme", action="store_true",
                        help="rewrite the README's CPU-per-trigger table (<!-- cpu-per-trigger:start --> ... end)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.update_readme and (args.no_send or args.skip_validate or args.no_naive):
        parser.error("--update-readme needs every stage and the naive loop (no --no-send, --skip-validate, --no-naive)")
    global SORT
    SORT = args.sort
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.update_readme:
        from bench.readme import replace_block

        if not replace_block("cpu-per-trigger", cpu_table(report)):
            raise SystemExit("README.md has no <!-- cpu-per-trigger:start --> ... <!-- cpu-per-trigger:end --> block")
        print("README.md CPU-per-trigger table updated")
    return 0


#: issue 15's target: project CPU per trigger across all stages (about 10 M/hour per core)
CPU_TARGET_S_PER_1000 = 0.35


def cpu_table(report: Mapping[str, Any]) -> str:
    """The README's table: project CPU-seconds per 1,000 triggers per stage (own processes and the
    PostgreSQL server apart), the total against the target, and the naive loop on the same batch."""
    stages, cpu, naive = report["stages"], report["project_cpu_s_per_1000_triggers"], report.get("naive") or {}
    n = report["n"]
    lines = [
        f"Measured by `python -m bench.profile_stages --pg --chunks {report['chunks']} --update-readme` on "
        f"{report['machine']['cpus']} vCPU, Python {report['machine']['python']}, store {report['store']}: one batch of "
        f"{n:,} triggers ({stages['send']['emails']:,} emails); the stage functions as the DAG runs them (Airflow's task "
        "start-up is not in it), send over the SMTP sink; the emulator and the sink are not counted.",
        "",
        "| stage | own processes | PostgreSQL server | project CPU-s per 1,000 triggers |",
        "|---|---:|---:|---:|",
    ]
    for name in ("land", "validate", "reconcile", "send"):
        st = stages[name]
        own = st["client_cpu_s"] if name == "send" else st["process_cpu_s"]
        server = st.get("server_cpu_s") or 0.0
        lines.append(f"| {name} | {own / n * 1000:.3f} | {server / n * 1000:.3f} | {cpu[name]:.3f} |")
    total = cpu["total"]
    verdict = "met" if total <= CPU_TARGET_S_PER_1000 else f"{total / CPU_TARGET_S_PER_1000:.1f}× over"
    lines.append(f"| **all stages** | | | **{total:.3f}** (target ≤ {CPU_TARGET_S_PER_1000}: {verdict}) |")
    if naive:
        lines.append(f"| the naive loop (`bench.naive_loop`, same batch) | {naive['loop_cpu_ms_per_trigger']:.3f} | "
                     f"{naive['pg_server_cpu_ms_per_trigger'] or 0:.3f} | {naive['project_cpu_ms_per_trigger']:.3f} "
                     f"({naive['project_cpu_ms_per_trigger'] / cpu['total']:.1f}× triggerflow's) |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
