"""Partition or delete? Purging one day of ``tf_event`` on PostgreSQL, two ways, while a lander
keeps inserting.

    python -m bench.purge_methods                    # 1 M events a day, 2 days (about 10 min)
    python -m bench.purge_methods --per-day 200000   # smaller
    python -m bench.purge_methods --json /tmp/purge.json

In a scratch database: two days of history in ``tf_event`` (the store's own table, every index,
realistic ~2 KB payloads from :mod:`bench.prefill`, one batch a minute-run), and a copy of it
partitioned by day on ``received_at``. A lander thread inserts a page of ``--page`` events every
second in one transaction each (as ``stages.land`` does), into the table being purged, and times
every insert. Then, for each table:

* **delete**: the old day's batches one by one (``DELETE ... WHERE batch_id = :b``: one batch,
  ~16,700 rows, per transaction, as include/triggerflow/maintenance deletes), then ``VACUUM``
  so the space is reused;
* **drop partition**: ``ALTER TABLE ... DETACH PARTITION`` of the old day, ``DROP TABLE``.

Reported: seconds and rows/s of each purge, and the lander's insert latency p50/p95/max before
(baseline) and during each purge. The partitioned copy's compromises are listed in the output:
its primary key and the landing's unique position must include ``received_at``, and the foreign
keys of tf_quarantine/tf_decision to ``tf_event(event_id)`` cannot point at it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def log(message: str) -> None:
    print(f"[purge {datetime.now(UTC).strftime('%H:%M:%S')}] {message}", flush=True)


def quantiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50": None, "p95": None, "max": None}
    ordered = sorted(values)
    return {"count": len(ordered), "p50": round(statistics.median(ordered) * 1000, 1),
            "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 1),
            "max": round(ordered[-1] * 1000, 1)}


class Lander(threading.Thread):
    """Inserts ``page`` events into ``table`` every ``interval`` s, one transaction per page, and
    records how long each insert took (the label says which phase it ran in)."""

    def __init__(self, engine: Any, table: str, page: int, interval: float, first_id: int) -> None:
        super().__init__(daemon=True)
        self.engine, self.table, self.page, self.interval = engine, table, page, interval
        self.next_id = first_id
        self.phase = "baseline"
        self.samples: dict[str, list[float]] = {}
        self.stop = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        from sqlalchemy import text

        sql = text(
            f"INSERT INTO {self.table} (event_id, batch_id, source, src_partition, src_position, message_id, trigger_id, "
            "trigger_ts, payload, raw_size, received_at, status) "
            "SELECT n, 'purge-bench/live', 'purge-bench:live', 0, lpad(n::text, 12, '0'), md5(n::text), 'live', 0, "
            "repeat(md5(n::text), 60), 1920, now(), 'landed' FROM generate_series(:a, :b) AS n"
        )
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                with self.engine.begin() as conn:
                    conn.execute(sql, {"a": self.next_id, "b": self.next_id + self.page - 1})
            except Exception as exc:  # recorded: a failed insert is a finding, not a crash
                self.errors.append(f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}")
            took = time.perf_counter() - t0
            self.samples.setdefault(self.phase, []).append(took)
            self.next_id += self.page
            self.stop.wait(max(0.0, self.interval - took))


def fill(engine: Any, days: int, per_day: int, now: datetime) -> dict[str, Any]:
    """``days`` days of tf_event history (day 0 the oldest), one batch per minute-run."""
    from sqlalchemy import text

    from bench.prefill import _drop_secondary, _restore_secondary, _secondary_definitions, _statements, make_batches

    per_batch = 16_667
    total = days * per_day
    batches = max(days, -(-total // per_batch))
    oldest = (now - timedelta(days=days + 3)).replace(hour=0, minute=0, second=0, microsecond=0)
    step_s = days * 86_400 / batches
    t0 = time.perf_counter()
    with engine.begin() as conn:
        cons, idx = _secondary_definitions(conn, ("tf_event",))
        cons = [c for c in cons if "FOREIGN" not in c[2] or c[0] == "tf_event"]
        _drop_secondary(conn, cons, idx)
        make_batches(conn, oldest, step_s, batches, total, per_batch)
    sql = text(_statements(per_batch, 1_000_000)["tf_event"])
    for n0 in range(0, total, 250_000):
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL synchronous_commit = off"))
            conn.execute(sql, {"e0": 1, "n0": n0, "n1": min(total, n0 + 250_000)})
        log(f"  filled {min(total, n0 + 250_000):,} / {total:,} events")
    _restore_secondary(engine, cons, idx, lambda m: None)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE soak_batches"))
    return {"events": total, "oldest": oldest.isoformat(), "seconds": round(time.perf_counter() - t0, 1)}


def partitioned_copy(engine: Any, oldest: datetime, days: int) -> dict[str, Any]:
    """tf_event_part: tf_event's columns, partitioned by day on received_at, the same rows."""
    from sqlalchemy import text

    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE tf_event_part (LIKE tf_event INCLUDING DEFAULTS) PARTITION BY RANGE (received_at)"))
        for d in range(days + 4):  # the history's days, the gap up to today, today and tomorrow
            lo = oldest + timedelta(days=d)
            conn.execute(text(
                f"CREATE TABLE tf_event_p{d} PARTITION OF tf_event_part FOR VALUES FROM ('{lo.isoformat()}') "
                f"TO ('{(lo + timedelta(days=1)).isoformat()}')"
            ))
        conn.execute(text("CREATE TABLE tf_event_pdefault PARTITION OF tf_event_part DEFAULT"))
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        conn.execute(text("INSERT INTO tf_event_part SELECT * FROM tf_event"))
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
        # a partitioned table's unique keys must contain the partition key
        conn.execute(text("ALTER TABLE tf_event_part ADD PRIMARY KEY (event_id, received_at)"))
        conn.execute(text("ALTER TABLE tf_event_part ADD CONSTRAINT uq_tf_event_part_position "
                          "UNIQUE (source, src_partition, src_position, received_at)"))
        conn.execute(text("CREATE INDEX ix_tf_event_part_batch ON tf_event_part (batch_id)"))
    vacuum(engine, "VACUUM (ANALYZE) tf_event_part")
    return {"seconds": round(time.perf_counter() - t0, 1)}


def vacuum(engine: Any, statement: str) -> None:
    """VACUUM cannot run in a transaction: a connection in autocommit, back to the pool in its usual
    mode afterwards (SQLAlchemy restores the isolation level it set)."""
    from sqlalchemy import text

    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(statement))


def table_bytes(engine: Any, table: str) -> int:
    from sqlalchemy import text

    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT CASE WHEN c.relkind = 'p' THEN (SELECT coalesce(sum(pg_total_relation_size(relid)), 0) "
            "FROM pg_partition_tree(c.oid)) ELSE pg_total_relation_size(c.oid) END FROM pg_class c WHERE c.oid = to_regclass(:t)"
        ), {"t": table}).scalar_one())


def purge_delete(engine: Any, oldest: datetime, lander: Lander) -> dict[str, Any]:
    """The old day's batches, one DELETE (one transaction) each, then VACUUM."""
    from sqlalchemy import text

    cutoff = oldest + timedelta(days=1)
    with engine.connect() as conn:
        ids = [r[0] for r in conn.execute(text(
            "SELECT batch_id FROM tf_batch WHERE created_at < :c ORDER BY created_at"), {"c": cutoff})]
    lander.phase = "delete"
    t0 = time.perf_counter()
    rows = 0
    for batch_id in ids:
        with engine.begin() as conn:
            rows += conn.execute(text("DELETE FROM tf_event WHERE batch_id = :b"), {"b": batch_id}).rowcount
    delete_s = time.perf_counter() - t0
    lander.phase = "vacuum"
    t1 = time.perf_counter()
    vacuum(engine, "VACUUM tf_event")
    vacuum_s = time.perf_counter() - t1
    lander.phase = "after"
    return {"rows": rows, "batches": len(ids), "delete_s": round(delete_s, 1), "vacuum_s": round(vacuum_s, 1),
            "rows_per_s": round(rows / delete_s) if delete_s else None}


def purge_drop(engine: Any, lander: Lander) -> dict[str, Any]:
    """DETACH and DROP the oldest day's partition."""
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = int(conn.execute(text("SELECT count(*) FROM tf_event_p0")).scalar_one())
    lander.phase = "drop"
    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE tf_event_part DETACH PARTITION tf_event_p0"))
        conn.execute(text("DROP TABLE tf_event_p0"))
    seconds = time.perf_counter() - t0
    lander.phase = "after"
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds) if seconds else None}


def with_lander(engine: Any, table: str, first_id: int, args: argparse.Namespace, purge: Any) -> dict[str, Any]:
    lander = Lander(engine, table, args.page, args.interval, first_id)
    lander.start()
    time.sleep(args.baseline)  # the baseline: the lander alone
    try:
        figures = purge(lander)
        time.sleep(min(5.0, args.baseline))
    finally:
        lander.stop.set()
        lander.join(30)
    figures["insert_ms"] = {phase: quantiles(v) for phase, v in lander.samples.items()}
    figures["insert_errors"] = lander.errors[:5]
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    from devstack.ensure_postgres import scratch_database
    from include.triggerflow.store.engines import dispose_engines, get_engine
    from include.triggerflow.store.migrations import create_schema

    now = datetime.now(UTC)
    report: dict[str, Any] = {"per_day": args.per_day, "days": args.days, "page": args.page, "interval_s": args.interval}
    with scratch_database(args.pg_url, prefix="tf_purge_bench") as url:
        engine = get_engine(url)
        create_schema(engine)
        log(f"filling {args.days} days x {args.per_day:,} events into tf_event")
        report["fill"] = fill(engine, args.days, args.per_day, now)
        with engine.begin() as conn:  # the lander's batch (tf_event.batch_id references tf_batch)
            conn.exec_driver_sql(
                "INSERT INTO tf_batch (batch_id, dag_id, run_id, source, state, pulled, created_at) "
                "VALUES ('purge-bench/live', 'purge-bench', 'live', 'purge-bench:live', 'landed', 0, now())"
            )
        oldest = datetime.fromisoformat(report["fill"]["oldest"])
        log("partitioned copy (by day on received_at)")
        report["partitioned_copy"] = partitioned_copy(engine, oldest, args.days)
        report["bytes_before"] = {"tf_event": table_bytes(engine, "tf_event"), "tf_event_part": table_bytes(engine, "tf_event_part")}
        first = args.days * args.per_day + 10_000_000
        log(f"delete: one day of tf_event in batch-sized transactions, lander inserting {args.page} rows every {args.interval} s")
        report["delete"] = with_lander(engine, "tf_event", first, args, lambda lander: purge_delete(engine, oldest, lander))
        log(f"  {report['delete']}")
        log("drop partition: the same day of tf_event_part")
        report["drop_partition"] = with_lander(engine, "tf_event_part", first + 5_000_000, args, lambda lander: purge_drop(engine, lander))
        log(f"  {report['drop_partition']}")
        report["bytes_after"] = {"tf_event": table_bytes(engine, "tf_event"), "tf_event_part": table_bytes(engine, "tf_event_part")}
        report["partitioning_costs"] = [
            "primary key (event_id, received_at): event_id alone is no longer unique by constraint",
            "the landing's unique source position must include received_at: a re-landed page (retry) at another "
            "instant is no longer refused, so idempotent landing needs another guard",
            "tf_quarantine / tf_decision / tf_send cannot keep a foreign key to tf_event(event_id)",
            "partitions must exist ahead of time (a daily job creates tomorrow's; a DEFAULT partition catches the rest)",
        ]
        dispose_engines()
    return report


def summary(r: dict[str, Any]) -> str:
    d, p = r["delete"], r["drop_partition"]

    def lat(fig: dict[str, Any], phase: str) -> str:
        q = fig["insert_ms"].get(phase) or {}
        return f"p50 {q.get('p50')} / p95 {q.get('p95')} / max {q.get('max')} ms ({q.get('count', 0)} pages)"

    return "\n".join([
        f"one day = {d['rows']:,} events ({r['bytes_before']['tf_event'] / 1e9:.2f} GB table before, 2 days)",
        f"DELETE by batch : {d['delete_s']:.1f} s ({d['rows_per_s']:,} rows/s) + VACUUM {d['vacuum_s']:.1f} s; "
        f"table {r['bytes_before']['tf_event'] / 1e9:.2f} -> {r['bytes_after']['tf_event'] / 1e9:.2f} GB (space reused, not returned)",
        f"  lander inserts ({r['page']} rows/page): baseline {lat(d, 'baseline')}; during delete {lat(d, 'delete')}; "
        f"during vacuum {lat(d, 'vacuum')}",
        f"DROP PARTITION  : {p['seconds']:.3f} s for {p['rows']:,} rows; table {r['bytes_before']['tf_event_part'] / 1e9:.2f} -> "
        f"{r['bytes_after']['tf_event_part'] / 1e9:.2f} GB",
        f"  lander inserts: baseline {lat(p, 'baseline')}; during drop {lat(p, 'drop')}",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.purge_methods", description=__doc__.split("\n\n")[0])
    p.add_argument("--per-day", type=int, default=1_000_000, help="events per day of history (default 1000000)")
    p.add_argument("--days", type=int, default=2, help="days of history (default 2; the oldest is purged)")
    p.add_argument("--page", type=int, default=1000, help="events per lander insert (default 1000)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between lander inserts (default 1)")
    p.add_argument("--baseline", type=float, default=20.0, help="seconds of lander alone before each purge (20)")
    p.add_argument("--pg-url", default=PG_SERVER)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    report = run(args)
    text = summary(report)
    report["summary"] = text
    print(text, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
