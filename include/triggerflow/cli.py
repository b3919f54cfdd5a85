"""Command line: ``python -m include.triggerflow.cli <command>``.

    init-db                      create the store tables (idempotent)
    load-profiles FILE.csv       upsert profiles from CSV (all-or-nothing unless --skip-bad-rows)
    runs [--limit N]             the latest run reports, newest first
    quarantine [--batch ID]      quarantined events and why
    positions                    the stored source positions
    forget-position SOURCE       drop a source's stored positions: its next pull starts where the
                                 adobe_triggers connection's `reset` says (earliest or latest)
    status [--source KEY] [--consumer NAME]
                                 Campaign's `pipelined` status document (JSON), as served at
                                 /pipelined/status by the Airflow plugin

The store is ``--db-url``, else $TRIGGERFLOW_DB_URL, else the Airflow connection ``triggers_db``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from sqlalchemy import Engine, select

from include.triggerflow.store.db import create_schema, describe, get_engine


def _engine(args: argparse.Namespace) -> Engine:
    url = args.db_url or os.environ.get("TRIGGERFLOW_DB_URL")
    if not url:
        from include.triggerflow.hooks.store import TriggersStoreHook

        url = TriggersStoreHook().get_url()
    engine = get_engine(url)
    create_schema(engine)
    return engine


def cmd_init_db(args: argparse.Namespace) -> int:
    engine = _engine(args)
    print(f"store ready at {describe(engine)}")
    return 0


def cmd_load_profiles(args: argparse.Namespace) -> int:
    from include.triggerflow.profiles import ProfileCsvError, load_profiles_csv

    engine = _engine(args)
    try:
        result = load_profiles_csv(engine, args.csv, skip_bad_rows=args.skip_bad_rows)
    except ProfileCsvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"profiles loaded from {args.csv}: {result.inserted} new, {result.updated} updated")
    for problem in result.skipped:
        print(f"skipped: {problem}", file=sys.stderr)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from include.triggerflow.store.schema import run_summary

    engine = _engine(args)
    with engine.connect() as conn:
        rows = conn.execute(select(run_summary).order_by(run_summary.c.reported_at.desc()).limit(args.limit)).all()
    cols = ("batch_id", "pulled", "valid", "quarantined", "matched", "unmatched", "ignored", "sent", "suppressed", "failed", "balanced")
    print("\t".join(cols))
    for row in rows:
        print("\t".join(str(getattr(row, c)) for c in cols))
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    from include.triggerflow.store.schema import event, quarantine

    engine = _engine(args)
    stmt = (
        select(quarantine.c.event_id, quarantine.c.batch_id, event.c.src_position, quarantine.c.reasons)
        .join(event, event.c.event_id == quarantine.c.event_id)
        .order_by(quarantine.c.event_id)
    )
    if args.batch:
        stmt = stmt.where(quarantine.c.batch_id == args.batch)
    with engine.connect() as conn:
        for event_id, batch_id, position, reasons in conn.execute(stmt):
            print(json.dumps({"event_id": event_id, "batch_id": batch_id, "position": position, "reasons": json.loads(reasons)}))
    return 0


def cmd_positions(args: argparse.Namespace) -> int:
    from include.triggerflow.store.schema import source_position

    engine = _engine(args)
    with engine.connect() as conn:
        rows = conn.execute(select(source_position).order_by(source_position.c.source, source_position.c.partition)).all()
    print("source\tpartition\tposition\tupdated_at")
    for row in rows:
        print(f"{row.source}\t{row.partition}\t{row.position}\t{row.updated_at}")
    return 0


def cmd_forget_position(args: argparse.Namespace) -> int:
    from sqlalchemy import delete

    from include.triggerflow.store.schema import source_position

    engine = _engine(args)
    with engine.begin() as conn:
        removed = conn.execute(delete(source_position).where(source_position.c.source == args.source)).rowcount
    print(f"forgot {removed} stored position(s) of {args.source}")
    return 0


def _optional_connection(conn_id: str):
    """The Airflow connection, or None when it is not defined or cannot be read here."""
    try:
        from airflow.sdk import BaseHook

        return BaseHook.get_connection(conn_id)
    except Exception:  # noqa: BLE001 - the status falls back to flags and defaults
        return None


def cmd_status(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from include.triggerflow.config import RoutingConfigError, load_routing
    from include.triggerflow.status import (
        SEND_POOL,
        build_status,
        latest_source,
        pool_slots,
        resolve_consumer,
        source_key_for_connection,
        status_settings_from_connection,
    )

    engine = _engine(args)
    conn = _optional_connection("adobe_triggers")
    extra = dict(conn.extra_dejson or {}) if conn is not None else {}
    host = conn.host if conn is not None else None
    routing_error = None
    try:
        routing = load_routing()
    except RoutingConfigError as exc:
        routing, routing_error = None, str(exc)
    try:
        source = args.source or source_key_for_connection(host, extra) or latest_source(engine)
        consumer = resolve_consumer(explicit=args.consumer, extra=extra, routing=routing, host=host, source_key=source)
        settings = status_settings_from_connection(extra, pool_slots=pool_slots(SEND_POOL))
        document = build_status(engine, routing, source_key=source, consumer=consumer, settings=settings)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"error: cannot read the store at {describe(engine)}: {reason}", file=sys.stderr)
        return 1
    if routing_error is not None:
        document["routing"]["error"] = routing_error
    print(json.dumps(document, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="triggerflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db-url", help="SQLAlchemy URL of the store (default: $TRIGGERFLOW_DB_URL or connection triggers_db)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init-db", help="create the store tables").set_defaults(func=cmd_init_db)
    p = sub.add_parser("load-profiles", help="upsert profiles from a CSV file")
    p.add_argument("csv")
    p.add_argument("--skip-bad-rows", action="store_true", help="load the good rows and list the bad ones")
    p.set_defaults(func=cmd_load_profiles)
    p = sub.add_parser("runs", help="latest run reports")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_runs)
    p = sub.add_parser("quarantine", help="quarantined events and their reasons")
    p.add_argument("--batch")
    p.set_defaults(func=cmd_quarantine)
    sub.add_parser("positions", help="stored source positions").set_defaults(func=cmd_positions)
    p = sub.add_parser("forget-position", help="drop a source's stored positions")
    p.add_argument("source", help="the source key, as listed by `positions`")
    p.set_defaults(func=cmd_forget_position)
    p = sub.add_parser("status", help="Campaign's pipelined status document (JSON)")
    p.add_argument(
        "--source",
        help="source key (default: the one connection adobe_triggers reads, else the most recently active)",
    )
    p.add_argument(
        "--consumer",
        help="consumer name to show (default: adobe_triggers extra.consumer, the Campaign option's "
        "consumer, the journal registration id, else the source key)",
    )
    p.set_defaults(func=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
