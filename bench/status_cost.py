"""What one status document costs as the store grows: the full-count implementation (before issue
11) against the summary tables (include/triggerflow/stats.py), at 10 k, 100 k and 400 k events.

    python -m bench.status_cost                          # PostgreSQL scratch database (default)
    python -m bench.status_cost --store sqlite           # a SQLite file
    python -m bench.status_cost --sizes 10000,50000      # other sizes (events, ascending)

The store is filled with bulk inserts, batch by batch (``--batch-size`` events, default 1,000: a
minute's pull), each batch with the rows the stages leave: a quarter of the events landed, a
quarter valid and undecided, half decided (a third of those with a sent email, one failed, one
deferred), one in 50 quarantined; every batch's summary refreshed as the stages do. At each size
both implementations build the document of the source ``--repeat`` times (default 7); the median is
reported. "before" is the full-count ``build_status`` of the earlier main, kept here only
(:func:`legacy_status`): it counts ``tf_event`` / ``tf_send`` rows of the source on every call.

Prints a table, writes ``bench/results/status-cost-<time>.json`` and ``docs/img/bench-status-cost.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, func, literal, or_, select

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
IMG = ROOT / "docs" / "img" / "bench-status-cost.png"
PG_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
SOURCE = "journal:/events/organizations/ORG/integrations/INT/REG"


def log(message: str) -> None:
    print(f"[status-cost {datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


@contextmanager
def bench_store(kind: str, folder: Path, pg_server: str) -> Iterator[str]:
    if kind == "sqlite":
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "status-cost.db"
        path.unlink(missing_ok=True)
        yield f"sqlite:///{path}"
        return
    from devstack.ensure_postgres import scratch_database

    with scratch_database(pg_server, prefix="tf_status_cost") as url:
        yield url


# -- before: the full-count document (main before issue 11), for comparison only ----------------------
def legacy_status(engine: Engine, source: str) -> dict[str, Any]:
    """The counters as the earlier ``build_status`` computed them: counts over ``tf_event`` (by
    source), open batches, ``tf_quarantine`` joined to ``tf_event``, ``tf_send`` of the source's
    batches and the last 1000 sent rows; plus the same small reads as now."""
    from include.triggerflow.store.schema import (
        batch,
        decision,
        event,
        quarantine,
        run_summary,
        send,
        source_gap,
        source_health,
        source_hourly,
        source_position,
    )

    undecided = ~select(literal(1)).where(decision.c.event_id == event.c.event_id).exists()
    unprocessed = or_(event.c.status == "landed", and_(event.c.status == "valid", undecided))
    now = datetime.now(UTC)
    with engine.connect() as conn:
        health = conn.execute(select(source_health).where(source_health.c.source == source)).mappings().first()
        positions = conn.execute(select(source_position).where(source_position.c.source == source)).all()
        received = conn.execute(select(func.count()).select_from(event).where(event.c.source == source)).scalar_one()
        open_batches = (
            select(batch.c.batch_id)
            .select_from(batch.outerjoin(run_summary, run_summary.c.batch_id == batch.c.batch_id))
            .where(batch.c.source == source, or_(run_summary.c.batch_id.is_(None), run_summary.c.balanced.is_(False)))
        )
        current = conn.execute(
            select(func.count()).select_from(event).where(event.c.batch_id.in_(open_batches), event.c.source == source, unprocessed)
        ).scalar_one()
        latest = conn.execute(
            select(batch.c.batch_id).where(batch.c.source == source).order_by(batch.c.created_at.desc(), batch.c.batch_id.desc()).limit(1)
        ).scalar_one_or_none()
        since = conn.execute(
            select(func.count()).select_from(event).where(event.c.batch_id == latest, event.c.source == source, unprocessed)
        ).scalar_one()
        discarded = conn.execute(
            select(func.count())
            .select_from(quarantine.join(event, event.c.event_id == quarantine.c.event_id))
            .where(event.c.source == source, event.c.status == "quarantined")
        ).scalar_one()
        ledger: dict[str, int] = dict(
            conn.execute(
                select(send.c.state, func.count())
                .where(send.c.batch_id.in_(select(batch.c.batch_id).where(batch.c.source == source)), send.c.state.in_(("failed", "deferred")))
                .group_by(send.c.state)
            ).all()
        )
        timings = conn.execute(
            select(send.c.sent_at, event.c.received_at)
            .select_from(send.join(event, event.c.event_id == send.c.event_id))
            .where(event.c.source == source, send.c.state == "sent", send.c.sent_at.is_not(None))
            .order_by(send.c.send_id.desc())
            .limit(1000)
        ).all()
        gaps = conn.execute(select(func.count()).select_from(source_gap).where(source_gap.c.source == source)).scalar_one()
        hourly = conn.execute(
            select(source_hourly).where(source_hourly.c.source == source, source_hourly.c.hour >= now - timedelta(hours=120))
        ).all()
    return {
        "received": int(received), "current": int(current), "since": int(since), "discarded": int(discarded),
        "failed": int(ledger.get("failed", 0)), "deferred": int(ledger.get("deferred", 0)), "timed": len(timings),
        "gaps": int(gaps), "hours": len(hourly), "health": health is not None, "positions": len(positions),
    }


# -- filling ------------------------------------------------------------------------------------------
class Filler:
    """Adds batches of events with their decisions, quarantine rows and ledger rows, and refreshes
    each batch's summary as the stages would."""

    def __init__(self, engine: Engine, batch_size: int) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.batches = 0
        self.events = 0
        self.t0 = datetime(2026, 11, 1, tzinfo=UTC)

    def setup(self) -> None:
        from include.triggerflow.store.schema import (
            source_health,
            source_hourly,
            source_position,
        )

        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(source_health.insert().values(source=SOURCE, endpoint="https://events.adobe.io/x", last_alive_at=now,
                                                       bytes_read=0, messages_received=0, pointer_flushes=0, updated_at=now))
            conn.execute(source_position.insert().values(source=SOURCE, partition=0, position="p0", updated_at=now))
            conn.execute(source_hourly.insert(), [
                {"source": SOURCE, "hour": (now - timedelta(hours=h)).replace(minute=0, second=0, microsecond=0), "messages": 1000}
                for h in range(120)
            ])

    def add_batch(self) -> None:
        from include.triggerflow.stats import refresh_batch_stats
        from include.triggerflow.store.bulk import bulk_insert
        from include.triggerflow.store.schema import (
            batch,
            decision,
            event,
            quarantine,
            send,
        )

        b = self.batches
        batch_id = f"trigger_emails__bench__{b:06d}"
        created = self.t0 + timedelta(minutes=b)
        n = self.batch_size
        with self.engine.begin() as conn:
            conn.execute(batch.insert().values(batch_id=batch_id, dag_id="trigger_emails", run_id=f"bench__{b}", source=SOURCE,
                                               state="landed", pulled=n, created_at=created, landed_at=created))
            statuses = ["quarantined" if i % 50 == 49 else ("landed" if i % 4 == 0 else "valid") for i in range(n)]
            bulk_insert(conn, event, [
                {"batch_id": batch_id, "source": SOURCE, "src_partition": 0, "src_position": f"{b:06d}-{i:06d}",
                 "payload": '{"event":{}}', "received_at": created, "status": status}
                for i, status in enumerate(statuses)
            ])
            ids = [int(x) for x in conn.execute(select(event.c.event_id).where(event.c.batch_id == batch_id).order_by(event.c.event_id)).scalars()]
            decided = [e for i, e in enumerate(ids) if statuses[i] == "valid" and i % 4 >= 2]
            bulk_insert(conn, decision, [{"event_id": e, "batch_id": batch_id, "decision": "matched", "decided_at": created} for e in decided])
            bulk_insert(conn, quarantine, [
                {"event_id": e, "batch_id": batch_id, "reasons": "[]", "quarantined_at": created}
                for i, e in enumerate(ids) if statuses[i] == "quarantined"
            ])
            bulk_insert(conn, send, [
                {"idempotency_key": f"{batch_id}-{e}", "batch_id": batch_id, "chunk": 0, "event_id": e, "profile_id": "C1",
                 "trigger_id": "t", "route": "cart", "recipient": "a@example.com", "state": ("sent", "failed", "deferred")[k % 3],
                 "attempts": 1, "created_at": created, "updated_at": created,
                 "sent_at": created + timedelta(seconds=20) if k % 3 == 0 else None}
                for k, e in enumerate(decided)
            ])
        refresh_batch_stats(self.engine, batch_id)
        self.batches += 1
        self.events += n


def timed(fn: Any, repeat: int) -> float:
    """Median seconds of ``repeat`` calls (after one warm-up call)."""
    fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def plot(rows: list[dict[str, Any]], store: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["events"] / 1000 for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.plot(sizes, [r["before_ms"] for r in rows], marker="o", color="#dc2626", label="before: full counts over tf_event / tf_send")
    ax.plot(sizes, [r["after_ms"] for r in rows], marker="o", color="#1d4ed8", label="after: summary tables")
    for r, x in zip(rows, sizes, strict=True):
        ax.annotate(f"{r['before_ms']:.0f} ms", (x, r["before_ms"]), textcoords="offset points", xytext=(-40, 6), fontsize=8,
                    color="#dc2626")
        ax.annotate(f"{r['after_ms']:.1f} ms", (x, r["after_ms"]), textcoords="offset points", xytext=(4, 10), fontsize=8,
                    color="#1d4ed8")
    ax.set_xlabel("events stored (thousands)")
    ax.set_ylabel("one status document (ms, median)")
    ax.set_title(f"Cost of the status document as the store grows ({store}); the endpoint also caches it")
    ax.legend(loc="upper left")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    IMG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--pg-server", default=PG_SERVER, help="PostgreSQL server URL (a scratch database is made on it)")
    parser.add_argument("--sizes", default="10000,100000,400000", help="event counts to measure at, ascending")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    if not sizes or sizes[0] < args.batch_size:
        parser.error(f"--sizes must be at least --batch-size ({args.batch_size}) events each")

    from include.triggerflow.stats import recount_source
    from include.triggerflow.status import build_status
    from include.triggerflow.store.engines import describe, get_engine
    from include.triggerflow.store.migrations import create_schema

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    rows: list[dict[str, Any]] = []
    with bench_store(args.store, RESULTS / f"status-cost-{stamp}", args.pg_server) as url:
        engine = get_engine(url)
        create_schema(engine)
        log(f"store {describe(engine)}")
        filler = Filler(engine, args.batch_size)
        filler.setup()
        for size in sizes:
            started = time.perf_counter()
            while filler.events < size:
                filler.add_batch()
                if filler.batches % 25 == 0:
                    log(f"  filled {filler.events:,} / {size:,} events ({filler.batches} batches)")
            if engine.dialect.name == "postgresql":
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.exec_driver_sql("ANALYZE")
            log(f"{filler.events:,} events in {filler.batches} batches (filled in {time.perf_counter() - started:.0f} s); timing")
            before = timed(lambda: legacy_status(engine, SOURCE), args.repeat)
            after = timed(lambda: build_status(engine, None, source_key=SOURCE, consumer="bench", settings={}), args.repeat)
            doc = build_status(engine, None, source_key=SOURCE, consumer="bench", settings={})
            legacy = legacy_status(engine, SOURCE)
            with engine.connect() as conn:
                recount = recount_source(conn, SOURCE)
            # both implementations count the same, and the summary equals a recount
            assert doc["stats"]["trigger-received"] == legacy["received"] == recount.received
            assert doc["stats"]["current-messages"] == legacy["current"] == recount.unprocessed
            assert doc["stats"]["trigger-discarded"] == legacy["discarded"] == recount.discarded
            assert (doc["stats"]["trigger-failures"], doc["stats"]["current-retries"]) == (legacy["failed"], legacy["deferred"])
            row = {"events": filler.events, "batches": filler.batches, "before_ms": before * 1000, "after_ms": after * 1000}
            rows.append(row)
            log(f"  before {row['before_ms']:.1f} ms, after {row['after_ms']:.2f} ms")

    print()
    print(f"| events stored | before (full counts) | after (summary tables) | store: {args.store} |")
    print("|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['events']:,} | {r['before_ms']:.0f} ms | {r['after_ms']:.1f} ms | ×{r['before_ms'] / r['after_ms']:.0f} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"status-cost-{stamp}.json"
    out.write_text(json.dumps({"store": args.store, "batch_size": args.batch_size, "repeat": args.repeat, "rows": rows}, indent=2))
    log(f"results in {out.relative_to(ROOT)}")
    if not args.no_plot:
        plot(rows, args.store)
        log(f"plot in {IMG.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
