"""Pre-fill a PostgreSQL store with history: the rows ``trigger_emails`` leaves behind at a
given rate, generated server-side (``INSERT ... SELECT FROM generate_series``) in chunks.

    python -m bench.prefill --url postgresql+psycopg2://postgres@127.0.0.1:5432/tf_soak --hours 24
    python -m bench.prefill --url ... --hours 1 --rate 100000      # small

What one history hour at ``--rate`` triggers/hour writes (one batch per minute-run, as the DAG
lands them, ``rate / 60`` events each):

* ``tf_batch``, ``tf_run_summary`` (its JSON counts), ``tf_batch_stats``: one row per batch;
* ``tf_event``: every trigger with a realistic Pipeline envelope (~2 KB, the devstack generator's
  shape with the shopper id, message id, times and offset filled in per row);
* ``tf_quarantine``: 1 % of the events (status ``quarantined``, a reason list);
* ``tf_decision``: one row per valid event: 70 % matched, 10 % unmatched (unknown shopper), 10 %
  duplicate, 6 % ignored (a trigger routing does not know), 3 % suppressed:opt-out;
* ``tf_send`` (the ledger, unique idempotency key) and ``tf_send_log`` (its ``sent`` action): one
  each per matched event, 0.2 % of them failed with a 5xx reply;
* ``tf_source_hourly``: messages per hour; ``tf_unsubscribe``: 1 % of the customers.

The shopper / profile ids are those of ``devstack.loadgen`` (``SHOP-%07d`` / ``C%07d``,
``1..--profiles``), so the measurement's customers have history: the rule look-ups (dedup
window and frequency cap on ``tf_send(profile_id, created_at)``, ``tf_unsubscribe``) read the
large tables. (The decision class follows the customer: ``n % 100`` and the customer's id
move together, so 70 % of the customers have ~24 ledger rows per 24 M events and the others
none; the look-ups read the same large indexes either way.) The history's batches are spread evenly from ``--end-age`` (default 25 h: past
the routing file's 24 h dedup window, so the measurement's triggers are not turned into
duplicates by history) back over ``--span-days`` (default 2.5 days: 25 h .. 85 h old), so part of it is older than
the 3-day retention and part newer.

Speed: the secondary indexes, unique and foreign-key constraints of the filled tables are
dropped during the load and rebuilt afterwards from their own definitions (``pg_indexes`` /
``pg_get_constraintdef``), as a restore does; the tables end with every index and constraint
they had, then ``VACUUM (ANALYZE)`` so that autovacuum does not start in the middle of the
measurement. Rebuilt indexes are compact (a sorted build): slightly kinder than indexes grown by
months of inserts; say so when quoting figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

HISTORY_SOURCE = "journal:soak-history"
DAG_ID = "trigger_emails"
#: the tables the history fills, in load order (parents first)
FILLED_TABLES = (
    "tf_batch", "tf_event", "tf_quarantine", "tf_decision", "tf_send", "tf_send_log",
    "tf_run_summary", "tf_batch_stats", "tf_source_hourly", "tf_unsubscribe",
)
#: every store table whose size the soak reports
SIZE_TABLES = (*FILLED_TABLES, "tf_alert", "tf_maintenance", "tf_run_outcome", "profiles", "tf_source_stats")
CART = "5c2c6a3e-2b8f-4d6e-9a51-7f0d3c9b1a01"
BROWSE = "9e4b1f27-6c3d-4a8e-b2f5-0d7c8a6e3b02"
UNROUTED = "0badc0de-0000-4000-8000-00000000beef"


@dataclass
class PrefillResult:
    """What was written, how fast, and the store's size afterwards."""

    hours: float
    rate_per_hour: int
    events: int
    batches: int
    oldest: str
    newest: str
    seconds: float
    rows: dict[str, int] = field(default_factory=dict)
    table_seconds: dict[str, float] = field(default_factory=dict)
    index_rebuild_s: float = 0.0
    vacuum_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- payload templates ------------------------------------------------------------------------------
_SHOP = "SHOP-9999999"
_MSGID = "ffffffff-ffff-4fff-bfff-ffffffffffff"
_TS = 1111111111111
_CREATE = 2222222222222
_OFFSET = 987654321


def payload_templates() -> list[str]:
    """Real envelopes (cart with 1, 2 and 3 products, browse with 2) with placeholders:
    %1$s shopper id, %2$s message id, %3$s trigger timestamp (ms), %4$s create time, %5$s offset, %6$s trigger id."""
    from devstack.messages import (
        BROWSE_ABANDONMENT_TRIGGER_ID,
        CART_ABANDONMENT_TRIGGER_ID,
        DEMO_CATALOG,
        envelope,
        trigger_message,
    )

    skus = sorted(DEMO_CATALOG)
    shapes = [
        (CART_ABANDONMENT_TRIGGER_ID, skus[0:1]), (CART_ABANDONMENT_TRIGGER_ID, skus[1:3]),
        (CART_ABANDONMENT_TRIGGER_ID, skus[3:6]), (BROWSE_ABANDONMENT_TRIGGER_ID, skus[2:4]),
    ]
    out = []
    for trigger_id, products in shapes:
        msg = trigger_message(trigger_id=trigger_id, shopper_id=_SHOP, mc_id="4" * 38, products=products,
                              triggered_at_ms=_TS, message_id=_MSGID)
        text = json.dumps(envelope(msg, partition=3, offset=_OFFSET, create_time_ms=_CREATE), separators=(",", ":"))
        for token, arg in ((_SHOP, "%1$s"), (_MSGID, "%2$s"), (str(_TS), "%3$s"), (str(_CREATE), "%4$s"), (str(_OFFSET), "%5$s")):
            text = text.replace(token, arg)
        out.append(text.replace(f'"triggerId":"{trigger_id}"', '"triggerId":"%6$s"'))
    return out


def payload_sql(args: tuple[str, ...]) -> str:
    """A SQL expression building the payload of event ``n`` from the templates: one
    concatenation of dollar-quoted literals and the ``args`` expressions per template, picked by
    ``n % 4`` (concatenation: several times faster than format() on 2 KB strings)."""
    import re

    whens = []
    for i, template in enumerate(payload_templates()):
        pieces = []
        for j, piece in enumerate(re.split(r"%(\d)\$s", template)):
            if j % 2:
                pieces.append(args[int(piece) - 1])
            elif piece:
                # colons escaped for SQLAlchemy's text() (":3" would be a bind parameter)
                pieces.append("$p$" + piece.replace(":", "\\:") + "$p$")
        whens.append(f"WHEN {i} THEN " + " || ".join(pieces))
    return "CASE n % 4 " + " ".join(whens) + " END"


# -- index handling -------------------------------------------------------------------------------
def _secondary_definitions(conn: Any, tables: tuple[str, ...]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(table, constraint name, definition) of the UNIQUE and FOREIGN KEY constraints, and the
    CREATE INDEX statements of the other non-primary indexes, of ``tables``."""
    from sqlalchemy import text

    cons = [
        (r[0], r[1], r[2]) for r in conn.execute(text(
            "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "WHERE c.contype IN ('u', 'f') AND c.conrelid::regclass::text = ANY(:t) ORDER BY c.contype DESC"
        ), {"t": list(tables)})
    ]
    idx = [
        r[0] for r in conn.execute(text(
            "SELECT i.indexdef FROM pg_indexes i WHERE i.schemaname = current_schema() AND i.tablename = ANY(:t) "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname "
            "AND c.contype IN ('p', 'u'))"
        ), {"t": list(tables)})
    ]
    return cons, idx


def _drop_secondary(conn: Any, cons: list[tuple[str, str, str]], idx: list[str]) -> None:
    from sqlalchemy import text

    for table, name, _ in sorted(cons, key=lambda c: "FOREIGN" not in c[2], reverse=True):
        conn.execute(text(f'ALTER TABLE {table} DROP CONSTRAINT IF EXISTS "{name}"'))
    for ddl in idx:
        name = ddl.split(" INDEX ", 1)[1].split(" ON ", 1)[0].strip()
        conn.execute(text(f"DROP INDEX IF EXISTS {name}"))


def _restore_secondary(
    engine: Any, cons: list[tuple[str, str, str]], idx: list[str], say: Callable[[str], None], jobs: int = 2
) -> None:
    """Rebuild the plain indexes (``jobs`` at once), then the unique constraints, then the foreign
    keys (which need the unique indexes of their parents)."""
    from sqlalchemy import text

    def build(ddl: str) -> None:
        t0 = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
            conn.execute(text(ddl))
        say(f"  rebuilt in {time.perf_counter() - t0:6.1f} s: {ddl[:110]}")

    unique = [f'ALTER TABLE {t} ADD CONSTRAINT "{n}" {d}' for t, n, d in cons if "FOREIGN" not in d]
    foreign = [f'ALTER TABLE {t} ADD CONSTRAINT "{n}" {d}' for t, n, d in cons if "FOREIGN" in d]
    for group in (idx + unique, foreign):
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for future in [pool.submit(build, ddl) for ddl in group]:
                future.result()


# -- the fill ---------------------------------------------------------------------------------------
def _iso(expr: str) -> str:
    return f"to_char(({expr}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS+00:00')"


def _statements(per_batch: int, profiles: int) -> dict[str, str]:
    """One INSERT ... SELECT per table for events :n0 <= n < :n1 (n: 0-based history index);
    :e0 / :s0 / :l0 offset the event, send and log ids past what the store already holds."""
    # the event's customer: spread over 1..profiles by a multiplicative hash (consecutive events
    # are different customers, each customer recurs every ~profiles events)
    cust = f"(((n::bigint * 7919) % {profiles}) + 1)"
    r = "(n % 100)"
    base = (
        f"FROM generate_series(:n0, :n1 - 1) AS n JOIN soak_batches b ON b.k = n / {per_batch}"
    )
    trig = f"CASE WHEN {r} BETWEEN 1 AND 6 THEN '{UNROUTED}' WHEN n % 4 = 3 THEN '{BROWSE}' ELSE '{CART}' END"
    shopper = f"CASE WHEN {r} BETWEEN 7 AND 16 THEN 'SHOP-X' || lpad(n::text, 9, '0') ELSE 'SHOP-' || lpad({cust}::text, 7, '0') END"
    ts_ms = "(extract(epoch FROM b.t)::bigint * 1000 - 60000 + n % 50000)"
    route = "CASE WHEN n % 4 = 3 THEN 'browse_abandonment' ELSE 'cart_abandonment' END"
    pid = f"'C' || lpad({cust}::text, 7, '0')"
    sql = {
        "tf_event": (
            "INSERT INTO tf_event (event_id, batch_id, source, src_partition, src_position, message_id, trigger_id, "
            "trigger_ts, payload, raw_size, received_at, status) "
            f"SELECT :e0 + n, batch_id, '{HISTORY_SOURCE}', 0, lpad(n::text, 12, '0'), msgid, trig, ts_ms, payload, "
            f"length(payload), t + make_interval(secs => (n % {per_batch}) * 0.002), "
            f"CASE WHEN {r} = 0 THEN 'quarantined' ELSE 'valid' END "
            f"FROM (SELECT n, b.batch_id, b.t, m.msgid, {trig} AS trig, {ts_ms} AS ts_ms, "
            f"{payload_sql((shopper, 'm.msgid', f'({ts_ms})::text', f'({ts_ms} + 1500)::text', 'n::text', trig))} AS payload "
            f"{base} CROSS JOIN LATERAL (SELECT md5(n::text)::uuid::text AS msgid) m) s"
        ),
        "tf_quarantine": (
            "INSERT INTO tf_quarantine (event_id, batch_id, reasons, quarantined_at) "
            "SELECT :e0 + n, b.batch_id, "
            "'[{\"expectation\":\"expect_column_values_to_match_regex\",\"column\":\"triggerTimestamp\",\"value\":\"yesterday\"}]', "
            f"b.t + interval '8 seconds' {base} WHERE {r} = 0"
        ),
        "tf_decision": (
            "INSERT INTO tf_decision (event_id, batch_id, trigger_id, route, customer_key, profile_id, decision, detail, decided_at) "
            f"SELECT :e0 + n, b.batch_id, {trig}, CASE WHEN {r} BETWEEN 1 AND 6 THEN NULL ELSE {route} END, {shopper}, "
            f"CASE WHEN {r} BETWEEN 1 AND 16 THEN NULL ELSE {pid} END, "
            f"CASE WHEN {r} BETWEEN 1 AND 6 THEN 'ignored' WHEN {r} BETWEEN 7 AND 16 THEN 'unmatched' "
            f"WHEN {r} BETWEEN 17 AND 19 THEN 'suppressed:opt-out' WHEN {r} BETWEEN 20 AND 29 THEN 'duplicate' ELSE 'matched' END, "
            f"CASE WHEN {r} BETWEEN 1 AND 6 THEN 'trigger not in the routing file' "
            f"WHEN {r} BETWEEN 7 AND 16 THEN 'eVar01 -> profiles.shopper_id: no profile with ' || {shopper} "
            f"WHEN {r} BETWEEN 17 AND 19 THEN 'customer used an unsubscribe link (tf_unsubscribe)' "
            f"WHEN {r} BETWEEN 20 AND 29 THEN 'same trigger sent to this customer within 86400 s' ELSE NULL END, "
            f"b.t + interval '15 seconds' {base} WHERE {r} <> 0"
        ),
        "tf_send": (
            "INSERT INTO tf_send (send_id, idempotency_key, batch_id, chunk, event_id, profile_id, trigger_id, route, recipient, "
            "state, attempts, message_id, subject, smtp_code, smtp_reply, trigger_ts, created_at, updated_at, sent_at, dry_run, "
            "resend, locale) "
            f"SELECT :s0 + n, md5('soak-key-' || n) || md5(n || '-soak-key'), b.batch_id, n % 4, :e0 + n, {pid}, {trig}, {route}, "
            f"'c' || lpad({cust}::text, 7, '0') || '@example.test', "
            "CASE WHEN n % 500 = 99 THEN 'failed' ELSE 'sent' END, 1, "
            "'<' || md5('msg' || n) || '@triggerflow.test>', "
            "CASE WHEN n % 4 = 3 THEN 'Hello, still looking? Your picks are waiting' ELSE 'Hello, you left something in your cart' END, "
            "CASE WHEN n % 500 = 99 THEN 550 ELSE 250 END, "
            "CASE WHEN n % 500 = 99 THEN '550 5.1.1 <recipient>: Recipient address rejected: User unknown in virtual mailbox table' "
            "ELSE '250 2.0.0 Ok: queued as ' || upper(substr(md5('q' || n), 1, 11)) END, "
            f"{ts_ms}, b.t + interval '20 seconds', b.t + interval '40 seconds', "
            "CASE WHEN n % 500 = 99 THEN NULL ELSE b.t + interval '40 seconds' END, false, false, "
            "CASE WHEN n % 3 = 0 THEN 'fr_FR' ELSE NULL END "
            f"{base} WHERE {r} >= 30"
        ),
        "tf_send_log": (
            "INSERT INTO tf_send_log (log_id, send_id, batch_id, run_id, try_number, action, smtp_code, detail, at) "
            "SELECT :l0 + n, :s0 + n, b.batch_id, b.run_id, 1, CASE WHEN n % 500 = 99 THEN 'failed' ELSE 'sent' END, "
            "CASE WHEN n % 500 = 99 THEN 550 ELSE 250 END, "
            "CASE WHEN n % 500 = 99 THEN '550 5.1.1 <recipient>: Recipient address rejected' "
            "ELSE '250 2.0.0 Ok: queued as ' || upper(substr(md5('q' || n), 1, 11)) END, "
            f"b.t + interval '40 seconds' {base} WHERE {r} >= 30"
        ),
    }
    return sql


def make_batches(conn: Any, oldest: datetime, step_s: float, batches: int, total: int, per_batch: int) -> None:
    """The history's batches: ``soak_batches`` (k, t, batch_id, run_id; a real table so that
    every statement joins the same rows; dropped at the end of the fill) and their tf_batch rows."""
    from sqlalchemy import text

    conn.execute(text("DROP TABLE IF EXISTS soak_batches"))
    conn.execute(text("CREATE UNLOGGED TABLE soak_batches (k int PRIMARY KEY, t timestamptz, batch_id text, run_id text)"))
    interval_end = _iso("t + interval '1 minute'")
    conn.execute(text(
        "INSERT INTO soak_batches SELECT k, t, "
        f"'{DAG_ID}/' || {_iso('t')} || '/' || {interval_end}, "
        f"'scheduled__' || {_iso('t')} "
        "FROM (SELECT k, to_timestamp(:t0 + k * :step) AS t FROM generate_series(0, :b - 1) AS k) s"
    ), {"t0": oldest.timestamp(), "step": step_s, "b": batches})
    conn.execute(text(
        "INSERT INTO tf_batch (batch_id, dag_id, run_id, run_type, interval_start, interval_end, source, state, pulled, "
        "created_at, landed_at, dropped) "
        f"SELECT batch_id, '{DAG_ID}', run_id, 'scheduled', t, t + interval '1 minute', '{HISTORY_SOURCE}', 'landed', "
        f"least({per_batch}, :total - k * {per_batch}), t, t + interval '5 seconds', 0 FROM soak_batches"
    ), {"total": total})


def prefill(
    url: str,
    *,
    hours: float = 24.0,
    rate_per_hour: int = 1_000_000,
    profiles: int = 1_000_000,
    span_days: float = 2.5,
    end_age_h: float = 25.0,
    chunk_events: int = 500_000,
    now: datetime | None = None,
    rebuild_indexes: bool = True,
    jobs: int = 2,
    say: Callable[[str], None] = print,
) -> PrefillResult:
    """Fill the store at ``url`` (PostgreSQL, schema created) with ``hours`` of history at
    ``rate_per_hour``; see the module doc. Returns counts, timings and the period covered."""
    from sqlalchemy import text

    from include.triggerflow.store.engines import get_engine
    from include.triggerflow.store.migrations import create_schema

    engine = get_engine(url)
    if engine.dialect.name != "postgresql":
        raise SystemExit("bench.prefill fills PostgreSQL stores only (server-side generate_series)")
    create_schema(engine)
    now = now or datetime.now(UTC)
    total = round(hours * rate_per_hour)
    per_batch = max(1, round(rate_per_hour / 60))
    batches = max(1, math.ceil(total / per_batch))
    newest = now - timedelta(hours=end_age_h)
    oldest = newest - timedelta(days=span_days)
    step_s = (newest - oldest).total_seconds() / max(1, batches - 1) if batches > 1 else 0.0
    result = PrefillResult(hours=hours, rate_per_hour=rate_per_hour, events=total, batches=batches,
                           oldest=oldest.isoformat(), newest=newest.isoformat(), seconds=0.0)
    say(f"prefill: {total:,} events ({hours:g} h at {rate_per_hour:,}/h) in {batches:,} batches of {per_batch:,}, "
        f"{oldest:%Y-%m-%d %H:%M} .. {newest:%Y-%m-%d %H:%M} UTC, customers 1..{profiles:,}")
    started = time.perf_counter()
    with engine.begin() as conn:
        ids = conn.execute(text(
            "SELECT (SELECT coalesce(max(event_id), 0) FROM tf_event), (SELECT coalesce(max(send_id), 0) FROM tf_send), "
            "(SELECT coalesce(max(log_id), 0) FROM tf_send_log)"
        )).one()
        e0, s0, l0 = int(ids[0]) + 1, int(ids[1]) + 1, int(ids[2]) + 1
        cons, idx = _secondary_definitions(conn, FILLED_TABLES)
        if rebuild_indexes:
            _drop_secondary(conn, cons, idx)
            say(f"  dropped {len(idx)} indexes and {len(cons)} unique/foreign-key constraints for the load")
    t0 = time.perf_counter()
    with engine.begin() as conn:
        make_batches(conn, oldest, step_s, batches, total, per_batch)
    result.table_seconds["tf_batch"] = round(time.perf_counter() - t0, 2)
    statements = _statements(per_batch, profiles)
    params_base = {"e0": e0, "s0": s0, "l0": l0}
    for table in statements:
        result.table_seconds.setdefault(table, 0.0)
    # chunks of events, ``jobs`` sessions at a time (each chunk: every table, one transaction each)
    ranges = [(n0, min(total, n0 + chunk_events)) for n0 in range(0, total, chunk_events)]
    lock = threading.Lock()
    done = 0

    def fill(n0: int, n1: int) -> None:
        nonlocal done
        for table, sql in statements.items():
            t0 = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(text("SET LOCAL synchronous_commit = off"))
                conn.execute(text(sql), {**params_base, "n0": n0, "n1": n1})
            with lock:
                result.table_seconds[table] += time.perf_counter() - t0
        with lock:
            done += n1 - n0
            elapsed = time.perf_counter() - started
            say(f"  {done:>12,} / {total:,} events ({done / total:6.1%}) in {elapsed:7.1f} s = {done / elapsed:,.0f} events/s "
                f"(all tables); ETA {elapsed / done * (total - done):6.0f} s")

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(fill, n0, n1) for n0, n1 in ranges]:
            future.result()
    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO tf_run_summary (batch_id, dag_id, run_id, pulled, valid, quarantined, matched, unmatched, ignored, sent, "
            "suppressed, failed, duplicate, pending, balanced, oldest_sent_age_s, counts, reported_at) "
            f"SELECT batch_id, '{DAG_ID}', run_id, p, p - p / 100, p / 100, p * 70 / 100, p / 10, p * 6 / 100, "
            "p * 70 / 100 - p * 70 / 50000, p * 3 / 100, p * 70 / 50000, p / 10, 0, true, 52.5, "
            "json_build_object('pulled', p, 'valid', p - p / 100, 'quarantined', p / 100, 'matched', p * 70 / 100, "
            "'unmatched', p / 10, 'ignored', p * 6 / 100, 'suppressed', p * 3 / 100, 'duplicate', p / 10, 'pending', 0, "
            "'latency_s', json_build_object('p50', 41.2, 'p95', 55.0, 'p99', 58.9, 'max', 61.0), "
            "'decisions', json_build_object('matched', p * 70 / 100, 'duplicate', p / 10, 'suppressed:opt-out', p * 3 / 100))::text, "
            "t + interval '50 seconds' "
            f"FROM (SELECT b.*, least({per_batch}, :total - k * {per_batch}) AS p FROM soak_batches b) s"
        ), {"total": total})
        conn.execute(text(
            "INSERT INTO tf_batch_stats (batch_id, source, received, unprocessed, discarded, failures, retries, sent, "
            "processing_ms_sum, batch_created_at, refreshed_at) "
            f"SELECT batch_id, '{HISTORY_SOURCE}', p, 0, p / 100, p * 70 / 50000, 0, p * 70 / 100 - p * 70 / 50000, "
            "(p * 70 / 100) * 40000.0, t, t + interval '50 seconds' "
            f"FROM (SELECT b.*, least({per_batch}, :total - k * {per_batch}) AS p FROM soak_batches b) s"
        ), {"total": total})
        conn.execute(text(
            "INSERT INTO tf_source_hourly (source, hour, messages) "
            f"SELECT '{HISTORY_SOURCE}', date_trunc('hour', t), sum(least({per_batch}, :total - k * {per_batch})) "
            "FROM soak_batches GROUP BY 2"
        ), {"total": total})
        conn.execute(text(
            "INSERT INTO tf_unsubscribe (customer_id, route, method, issued_at, received_at, token_key) "
            "SELECT 'C' || lpad(c::text, 7, '0'), 'cart_abandonment', CASE WHEN c % 2 = 0 THEN 'one-click' ELSE 'page' END, "
            ":oldest, :newest, md5('unsub' || c) || md5(c || 'unsub') FROM generate_series(1, :profiles) AS c "
            "WHERE c % 100 = 42 ON CONFLICT DO NOTHING"
        ), {"oldest": oldest, "newest": newest, "profiles": profiles})
        conn.execute(text("DROP TABLE soak_batches"))
    result.table_seconds["summaries"] = round(time.perf_counter() - t0, 2)
    for table in FILLED_TABLES:
        result.table_seconds.setdefault(table, 0.0)
    result.table_seconds = {k: round(v, 2) for k, v in result.table_seconds.items()}
    with engine.begin() as conn:
        # the ids the stages assign next continue after the history's explicit ones
        for table, column in (("tf_event", "event_id"), ("tf_send", "send_id"), ("tf_send_log", "log_id")):
            conn.execute(text(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), (SELECT coalesce(max({column}), 1) FROM {table}))"
            ))
    if rebuild_indexes:
        t0 = time.perf_counter()
        say(f"  rebuilding {len(idx)} indexes and {len(cons)} constraints")
        _restore_secondary(engine, cons, idx, say, jobs)
        result.index_rebuild_s = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    say("  VACUUM (ANALYZE) of the filled tables")
    # VACUUM refuses a transaction. Autocommit through SQLAlchemy, which puts the connection back
    # in the pool in its usual mode: a psycopg2 connection switched by hand stayed in autocommit,
    # and the next user of the pool (the soak's reconcile) lost its transaction.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in FILLED_TABLES:
            conn.execute(text(f"VACUUM (ANALYZE) {table}"))
    result.vacuum_s = round(time.perf_counter() - t0, 1)
    result.rows = table_rows(engine, FILLED_TABLES)
    result.seconds = round(time.perf_counter() - started, 1)
    say(f"prefill done in {result.seconds:.0f} s (indexes {result.index_rebuild_s} s, vacuum {result.vacuum_s} s): "
        + ", ".join(f"{t} {n:,}" for t, n in result.rows.items()))
    return result


def table_rows(engine: Any, tables: tuple[str, ...]) -> dict[str, int]:
    """Exact row counts (count(*)) of ``tables``."""
    from sqlalchemy import text

    with engine.connect() as conn:
        return {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in tables}


def store_sizes(engine: Any, tables: tuple[str, ...] = SIZE_TABLES) -> dict[str, Any]:
    """pg_total_relation_size per table (heap + TOAST + indexes) and estimated rows, and the
    database's size, in bytes."""
    from sqlalchemy import text

    with engine.connect() as conn:
        per = {}
        for t in tables:
            row = conn.execute(text(
                "SELECT pg_total_relation_size(c.oid), pg_relation_size(c.oid), pg_indexes_size(c.oid), "
                "greatest(c.reltuples, 0)::bigint FROM pg_class c WHERE c.oid = to_regclass(:t)"
            ), {"t": t}).one_or_none()
            if row is not None:
                per[t] = {"total_bytes": int(row[0]), "heap_bytes": int(row[1]), "index_bytes": int(row[2]), "rows_estimate": int(row[3])}
        database = int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
    return {"tables": per, "database_bytes": database}


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prefill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the PostgreSQL store to fill (SQLAlchemy URL)")
    parser.add_argument("--hours", type=float, default=24.0, help="hours of history at --rate (default 24)")
    parser.add_argument("--rate", type=int, default=1_000_000, help="triggers per hour (default 1000000)")
    parser.add_argument("--profiles", type=int, default=1_000_000, help="customers 1..N the history is about")
    parser.add_argument("--span-days", type=float, default=2.5, help="days the history's batches spread over (2.5)")
    parser.add_argument("--end-age", type=float, default=25.0, help="age in hours of the newest history batch (25)")
    parser.add_argument("--chunk", type=int, default=500_000, help="events per INSERT ... SELECT (500000)")
    parser.add_argument("--jobs", type=int, default=2, help="sessions filling at once (default 2)")
    parser.add_argument("--keep-indexes", action="store_true", help="load with every index in place (slower)")
    parser.add_argument("--json", metavar="PATH", help="write the result (and the store's size) here")
    args = parser.parse_args(argv)
    result = prefill(args.url, hours=args.hours, rate_per_hour=args.rate, profiles=args.profiles, span_days=args.span_days,
                     end_age_h=args.end_age, chunk_events=args.chunk, jobs=args.jobs, rebuild_indexes=not args.keep_indexes,
                     say=lambda m: print(m, flush=True))
    from include.triggerflow.store.engines import get_engine

    sizes = store_sizes(get_engine(args.url))
    print(f"store size {gb(sizes['database_bytes'])}")
    for t, s in sizes["tables"].items():
        print(f"  {t:<18} {gb(s['total_bytes']):>10} (heap {gb(s['heap_bytes'])}, indexes {gb(s['index_bytes'])})")
    if args.json:
        Path(args.json).write_text(json.dumps({"prefill": result.as_dict(), "sizes": sizes}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
