"""CLI commands about what runs did and where sources stand: ``runs``, ``quarantine``,
``decisions``, ``suppress``, ``positions``, ``forget-position``, ``skip``, ``set-position``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sqlalchemy import select

from include.triggerflow.cli.common import error, store_engine

#: `runs` columns: the balance's buckets (no_products: matched events none of whose products the
#: catalogue knows), then where the batch's emails still wait (deferred = a 4xx
#: waiting for a retry, ambiguous = a send whose outcome is unknown, pending = not tried yet,
#: scheduled = held for quiet hours) and the source lines that could not become an event.
RUNS_COLUMNS = (
    "batch_id", "pulled", "valid", "quarantined", "matched", "unmatched", "ignored", "sent", "suppressed",
    "failed", "duplicate", "no_products", "deferred", "ambiguous", "pending", "scheduled", "dropped", "balanced",
)

# The summary's `pending` column holds pending + deferred + scheduled; only its counts JSON splits
# them (and holds the dropped lines and the events whose products are all unknown).
_RUNS_FROM_COUNTS = frozenset(("no_products", "deferred", "ambiguous", "pending", "scheduled", "dropped"))


def cmd_runs(args: argparse.Namespace) -> int:
    from include.triggerflow.store.schema import run_summary

    engine = store_engine(args)
    with engine.connect() as conn:
        rows = conn.execute(select(run_summary).order_by(run_summary.c.reported_at.desc()).limit(args.limit)).all()
    print("\t".join(RUNS_COLUMNS))
    for row in rows:
        print("\t".join(_runs_line(row)))
    return 0


def _runs_line(row: Any) -> list[str]:
    """One `runs` line: the summary's columns, and from its counts JSON what has no column of its own.
    A summary written before a count existed shows '-' for it rather than a made-up 0."""
    try:
        counts = json.loads(row.counts or "{}")
    except ValueError:
        counts = {}
    if not isinstance(counts, dict):
        counts = {}
    return [str(counts.get(name, "-") if name in _RUNS_FROM_COUNTS else getattr(row, name)) for name in RUNS_COLUMNS]


def cmd_quarantine(args: argparse.Namespace) -> int:
    from include.triggerflow.store.schema import event, quarantine

    engine = store_engine(args)
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


def cmd_decisions(args: argparse.Namespace) -> int:
    from include.triggerflow.decisions import decision_counts, query_decisions

    engine = store_engine(args)
    if args.counts:
        print(json.dumps(decision_counts(engine, run_id=args.run, batch_id=args.batch), sort_keys=True))
        return 0
    for row in query_decisions(engine, run_id=args.run, batch_id=args.batch, customer=args.customer, code=args.code, limit=args.limit):
        print(json.dumps(row))
    return 0


def cmd_suppress(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from include.triggerflow.suppression import (
        Category,
        Selection,
        SuppressionEntryError,
        add_entries,
        category,
        count_entries,
        lift,
        list_entries,
        parse_when,
        remove_entries,
    )
    from include.triggerflow.timeutil import utcnow

    engine = store_engine(args)
    try:
        kind = category(args.category) if args.category else None
        if args.action == "add":
            days = args.days
            if days is not None and days <= 0:
                raise SuppressionEntryError(f"--days must be positive, not {days}")
            expires = None if days is None else utcnow() + timedelta(days=days)
            source = kind or Category.BLOCK_LIST
            added = add_entries(engine, args.entries, source=source, reason=args.reason, expires_at=expires)
            print(f"added {added} of {len(set(args.entries))} entr{'y' if len(args.entries) == 1 else 'ies'} "
                  f"({source}{'' if expires is None else ', until ' + expires.isoformat(timespec='seconds')})")
        elif args.action == "remove":
            print(f"removed {remove_entries(engine, args.entries)} entries")
        else:
            selection = Selection(
                category=kind, batch_id=args.batch,
                since=parse_when(args.since) if args.since else None,
                until=parse_when(args.until) if args.until else None,
                expired=args.action == "lift" or args.include_expired,
            )
            if args.action == "lift":
                if args.dry_run:
                    print(f"would lift {count_entries(engine, selection)} suppression(s)")
                else:
                    print(f"lifted {lift(engine, selection)} suppression(s)")
            else:
                for row in list_entries(engine, selection, limit=args.limit):
                    print(json.dumps(row, default=str))
    except SuppressionEntryError as exc:
        return error(exc)
    return 0


def cmd_positions(args: argparse.Namespace) -> int:
    from include.triggerflow.store.schema import source_position

    engine = store_engine(args)
    with engine.connect() as conn:
        rows = conn.execute(select(source_position).order_by(source_position.c.source, source_position.c.partition)).all()
    print("source\tpartition\tposition\tupdated_at")
    for row in rows:
        print(f"{row.source}\t{row.partition}\t{row.position}\t{row.updated_at}")
    return 0


def cmd_forget_position(args: argparse.Namespace) -> int:
    from sqlalchemy import delete

    from include.triggerflow.store.schema import source_position

    engine = store_engine(args)
    with engine.begin() as conn:
        removed = conn.execute(delete(source_position).where(source_position.c.source == args.source)).rowcount
    print(f"forgot {removed} stored position(s) of {args.source}")
    return 0


def cmd_move_position(args: argparse.Namespace) -> int:
    from include.triggerflow.positions import PositionError, set_position, skip_messages

    engine = store_engine(args)
    try:
        if args.command == "skip":
            move = skip_messages(engine, args.source, args.partition, args.count, reason=args.reason)
        else:
            move = set_position(engine, args.source, args.partition, args.position, reason=args.reason)
    except PositionError as exc:
        return error(exc)
    old = "nothing stored" if move.old is None else move.old
    print(f"{move.source} partition {move.partition}: {old} -> {move.new} (recorded in tf_source_gap as a deliberate skip)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the parser."""
    from include.triggerflow.suppression import SOURCES as SUPPRESSION_CATEGORIES

    p = sub.add_parser("runs", help="latest run reports")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_runs)
    p = sub.add_parser("quarantine", help="quarantined events and their reasons")
    p.add_argument("--batch")
    p.set_defaults(func=cmd_quarantine)
    p = sub.add_parser("decisions", help="the decision log: why each event did or did not become an email")
    p.add_argument("--run", help="a DAG run id")
    p.add_argument("--batch", help="a batch id")
    p.add_argument("--customer", help="a profile id, or the identity value the event carried")
    p.add_argument("--code", help="a decision (capped, duplicate, suppressed:opt-out...; 'suppressed' for all suppressions)")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--counts", action="store_true", help="print {decision: count} instead of the rows")
    p.set_defaults(func=cmd_decisions)
    p = sub.add_parser("suppress", help="the suppression list: addresses and @domains not mailed; lift a bad day's")
    p.add_argument("action", choices=("add", "remove", "list", "lift"))
    p.add_argument("entries", nargs="*", help="addresses or @domain.example (add, remove)")
    p.add_argument("--reason", help="why (kept with the entry)")
    p.add_argument("--category", "--source", dest="category", choices=SUPPRESSION_CATEGORIES,
                   help="add: the entry's category (default block-list); list, lift: only this category")
    p.add_argument("--days", type=float, help="add: the entry expires after this many days (default: never)")
    p.add_argument("--since", help="list, lift: created at or after (2026-12-05, 2026-12-05T14:00 UTC, or an age: 6h, 2d)")
    p.add_argument("--until", help="list, lift: created before (same forms)")
    p.add_argument("--batch", help="list, lift: added by this batch's send (hard bounces)")
    p.add_argument("--include-expired", action="store_true", help="list: show expired entries too")
    p.add_argument("--dry-run", action="store_true", help="lift: only say how many would be lifted")
    p.add_argument("--limit", type=int, default=1000, help="list: at most this many, newest first")
    p.set_defaults(func=cmd_suppress)
    sub.add_parser("positions", help="stored source positions").set_defaults(func=cmd_positions)
    p = sub.add_parser("forget-position", help="drop a source's stored positions")
    p.add_argument("source", help="the source key, as listed by `positions`")
    p.set_defaults(func=cmd_forget_position)
    p = sub.add_parser("skip", help="move a Pipeline partition's next offset past N messages (recorded as a gap)")
    p.add_argument("source", help="the source key, as listed by `positions`")
    p.add_argument("--partition", type=int, default=0, help="partition (default 0)")
    p.add_argument("--count", type=int, default=1, help="messages to skip (default 1)")
    p.add_argument("--reason", help="why (kept in tf_source_gap)")
    p.set_defaults(func=cmd_move_position)
    p = sub.add_parser("set-position", help="store where a source's next pull starts (recorded as a gap)")
    p.add_argument("source", help="the source key, as listed by `positions`")
    p.add_argument("position", help="a journal position (read after it) or a Pipeline offset (read from it)")
    p.add_argument("--partition", type=int, default=0, help="partition (default 0; the journal has only 0)")
    p.add_argument("--reason", help="why (kept in tf_source_gap)")
    p.set_defaults(func=cmd_move_position)
