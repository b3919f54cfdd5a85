"""Command line: ``python -m include.triggerflow.cli <command>``.

    init-db                      create the store tables (idempotent)
    load-profiles FILE.csv       upsert profiles from CSV (all-or-nothing unless --skip-bad-rows)
    catalog load FILE.csv [--skip-bad-rows]
                                 upsert the product catalogue from CSV (same rules as load-profiles)
    catalog show [SKU...]        those products as a table (exit 1 if one is not in the catalogue);
                                 no SKU: how many products the catalogue holds
    runs [--limit N]             the latest run reports, newest first: every bucket of the balance,
                                 what still waits (deferred, ambiguous, pending, scheduled) and the
                                 source lines dropped as no event
    quarantine [--batch ID]      quarantined events and why
    decisions [--run ID] [--batch ID] [--customer ID] [--code CODE] [--counts]
                                 the decision log: why each event did or did not become an email
    suppress add|remove|list|lift [ENTRY...] [--category C] [--reason TEXT] [--days N]
             [--since WHEN] [--until WHEN] [--batch ID] [--dry-run]
                                 the suppression list: addresses and whole @domains not mailed, by
                                 category (hard-bounce, complaint, manual, block-list, unsubscribe),
                                 optionally expiring; `lift` deletes a category / time range / batch
                                 of them (undo a bad day) and prints how many
    positions                    the stored source positions
    forget-position SOURCE       drop a source's stored positions: its next pull starts where the
                                 adobe_triggers connection's `reset` says (earliest or latest)
    skip SOURCE [--partition N] [--count N] [--reason TEXT]
                                 move a Pipeline partition's next offset N messages on (past a message
                                 the pull cannot get over), recorded in tf_source_gap as a deliberate skip
    set-position SOURCE POSITION [--partition N] [--reason TEXT]
                                 store POSITION as where the next pull starts (a journal position to read
                                 after, or a Pipeline offset), recorded in tf_source_gap as a deliberate skip
    status [--source KEY] [--consumer NAME]
                                 Campaign's `pipelined` status document (JSON), as served at
                                 /pipelined/status by the Airflow plugin
    preview --route NAME --out DIR [--event EVENT.json] [--profile PROFILE.json | --customer-id ID]
                                 render a route's email to DIR (subject.txt, email.html, email.txt,
                                 message.eml); no event/profile: the samples in include/templates/samples
    test-send --route NAME --to ADDR [--to ADDR...] [--event ...] [--profile ... | --customer-id ID]
                                 send that email, subject prefixed "[TEST] ", to seed addresses over
                                 connection smtp_triggers (or --smtp-host/--smtp-port/--from); the
                                 send ledger is not touched

The store is ``--db-url``, else $TRIGGERFLOW_DB_URL, else the Airflow connection ``triggers_db``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select

from include.triggerflow.store.db import create_schema, describe, get_engine

if TYPE_CHECKING:
    from include.triggerflow.config import RoutingConfig


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
    from include.triggerflow.profiles import (
        ProfileCsvError,
        ProfileStoreError,
        load_profiles_csv,
    )

    engine = _engine(args)
    try:
        result = load_profiles_csv(engine, args.csv, skip_bad_rows=args.skip_bad_rows)
    except (ProfileCsvError, ProfileStoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"profiles loaded from {args.csv}: {result.inserted} new, {result.updated} updated")
    for problem in result.skipped:
        print(f"skipped: {problem}", file=sys.stderr)
    return 0


def _products(count: int) -> str:
    return f"{count} product{'' if count == 1 else 's'}"


def cmd_catalog(args: argparse.Namespace) -> int:
    from include.triggerflow.catalog import (
        CatalogCsvError,
        CatalogStoreError,
        catalog_size,
        load_catalog_csv,
        lookup,
    )

    engine = _engine(args)
    if args.action == "load":
        try:
            result = load_catalog_csv(engine, args.csv, skip_bad_rows=args.skip_bad_rows)
        except (CatalogCsvError, CatalogStoreError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        with engine.connect() as conn:
            size = catalog_size(conn)
        print(f"catalogue loaded from {args.csv}: {result.inserted} new, {result.updated} updated ({_products(size)} in all)")
        for problem in result.skipped:
            print(f"skipped: {problem}", file=sys.stderr)
        return 0
    with engine.connect() as conn:
        if not args.skus:
            print(f"catalogue: {_products(catalog_size(conn))}")
            return 0
        items = lookup(conn, args.skus)
    columns = ("sku", "name", "price", "currency", "in_stock", "url", "image_url", "names")
    table = [columns] + [
        (
            item.sku, item.name, "" if item.price is None else str(item.price), item.currency or "",
            "yes" if item.in_stock else "no", item.url or "", item.image_url or "",
            " ".join(f"{tag}={name}" for tag, name in sorted(item.names.items())),
        )
        for sku in dict.fromkeys(args.skus) if (item := items.get(sku)) is not None
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns) - 1)]
    for row in table:
        print("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]).rstrip())
    missing = [sku for sku in dict.fromkeys(args.skus) if sku not in items]
    for sku in missing:
        print(f"not in the catalogue: {ascii(sku)[1:-1]}", file=sys.stderr)
    return 1 if missing else 0


def cmd_runs(args: argparse.Namespace) -> int:
    from include.triggerflow.store.schema import run_summary

    engine = _engine(args)
    with engine.connect() as conn:
        rows = conn.execute(select(run_summary).order_by(run_summary.c.reported_at.desc()).limit(args.limit)).all()
    print("\t".join(RUNS_COLUMNS))
    for row in rows:
        print("\t".join(_runs_line(row)))
    return 0


#: `runs` columns: the balance's buckets (no_products: matched events none of whose products the
#: catalogue knows), then where the batch's emails still wait (deferred = a 4xx
#: waiting for a retry, ambiguous = a send whose outcome is unknown, pending = not tried yet,
#: scheduled = held for quiet hours) and the source lines that could not become an event.
RUNS_COLUMNS = (
    "batch_id", "pulled", "valid", "quarantined", "matched", "unmatched", "ignored", "sent", "suppressed",
    "failed", "duplicate", "no_products", "deferred", "ambiguous", "pending", "scheduled", "dropped", "balanced",
)


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


# The summary's `pending` column holds pending + deferred + scheduled; only its counts JSON splits
# them (and holds the dropped lines and the events whose products are all unknown).
_RUNS_FROM_COUNTS = frozenset(("no_products", "deferred", "ambiguous", "pending", "scheduled", "dropped"))


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


def cmd_decisions(args: argparse.Namespace) -> int:
    from include.triggerflow.decisions import decision_counts, query_decisions

    engine = _engine(args)
    if args.counts:
        print(json.dumps(decision_counts(engine, run_id=args.run, batch_id=args.batch), sort_keys=True))
        return 0
    for row in query_decisions(engine, run_id=args.run, batch_id=args.batch, customer=args.customer, code=args.code, limit=args.limit):
        print(json.dumps(row))
    return 0


def cmd_suppress(args: argparse.Namespace) -> int:
    from datetime import datetime, timedelta

    from include.triggerflow.suppression import (
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

    engine = _engine(args)
    try:
        kind = category(args.category) if args.category else None
        if args.action == "add":
            days = args.days
            if days is not None and days <= 0:
                raise SuppressionEntryError(f"--days must be positive, not {days}")
            expires = None if days is None else datetime.now(UTC) + timedelta(days=days)
            added = add_entries(engine, args.entries, source=kind or "block-list", reason=args.reason, expires_at=expires)
            print(f"added {added} of {len(set(args.entries))} entr{'y' if len(args.entries) == 1 else 'ies'} "
                  f"({kind or 'block-list'}{'' if expires is None else ', until ' + expires.isoformat(timespec='seconds')})")
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
        print(f"error: {exc}", file=sys.stderr)
        return 2
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


def cmd_move_position(args: argparse.Namespace) -> int:
    from include.triggerflow.positions import PositionError, set_position, skip_messages

    engine = _engine(args)
    try:
        if args.command == "skip":
            move = skip_messages(engine, args.source, args.partition, args.count, reason=args.reason)
        else:
            move = set_position(engine, args.source, args.partition, args.position, reason=args.reason)
    except PositionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    old = "nothing stored" if move.old is None else move.old
    print(f"{move.source} partition {move.partition}: {old} -> {move.new} (recorded in tf_source_gap as a deliberate skip)")
    return 0


def _optional_connection(conn_id: str):
    """The Airflow connection, or None when it is not defined or cannot be read here."""
    try:
        from airflow.sdk import BaseHook

        return BaseHook.get_connection(conn_id)
    except Exception:
        return None


def cmd_status(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from include.triggerflow.config import RoutingConfigError, load_routing
    from include.triggerflow.stats import rebuild_all
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
        if args.recount:  # rebuild the summaries the document reads from every batch's rows
            with engine.begin() as store:
                print(f"recounted {rebuild_all(store)} batches", file=sys.stderr)
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


# -- preview / test-send -------------------------------------------------------------------------------
class _CliError(Exception):
    """A usage or input problem: printed as ``error: ...`` with exit status 2."""


def _read_json_file(path: str, what: str) -> object:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise _CliError(f"cannot read the {what} file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise _CliError(f"the {what} file {path} is not valid JSON: {exc}") from None


def _preview_inputs(args: argparse.Namespace) -> tuple[RoutingConfig, dict, Mapping[str, Any] | str | bytes, dict | None]:
    """(routing, profile, event payload, catalogue) for preview/test-send, from files, the store or
    the shipped samples. With ``--customer-id`` the event's products come from the store's
    catalogue, as the send stage would show them; otherwise (None) from the sample catalogue."""
    from include.triggerflow.config import RoutingConfigError, load_routing
    from include.triggerflow.preview import (
        PreviewError,
        find_route,
        sample_event,
        sample_profile,
    )

    try:
        routing = load_routing()
    except RoutingConfigError as exc:
        raise _CliError(f"routing config: {exc}") from None
    try:
        route = find_route(routing, args.route)
    except PreviewError as exc:
        raise _CliError(str(exc)) from None
    loaded = _read_json_file(args.event, "event") if args.event else sample_event(route)
    if not isinstance(loaded, dict):
        raise _CliError(f"the event file {args.event} must hold a JSON object (an envelope, producer message or trigger body)")
    event: Mapping[str, Any] = loaded
    catalog = None
    if args.profile:
        profile = _read_json_file(args.profile, "profile")
        if not isinstance(profile, dict):
            raise _CliError(f"the profile file {args.profile} must hold a JSON object of profile columns")
    elif args.customer_id:
        from include.triggerflow.catalog import lookup
        from include.triggerflow.content import event_skus
        from include.triggerflow.preview import parse_event
        from include.triggerflow.store.schema import profiles

        try:
            skus = event_skus(parse_event(event))
        except PreviewError as exc:
            raise _CliError(str(exc)) from None
        engine = _engine(args)
        with engine.connect() as conn:
            row = conn.execute(select(profiles).where(profiles.c.customer_id == args.customer_id)).first()
            catalog = dict(lookup(conn, skus))
        if row is None:
            raise _CliError(f"no profile with customer_id {args.customer_id!r} in the store at {describe(engine)}")
        profile = dict(row._mapping)
    else:
        profile = sample_profile(args.locale)
    if args.locale:
        profile = {**profile, "locale": args.locale}
    return routing, profile, event, catalog


def cmd_preview(args: argparse.Namespace) -> int:
    from pathlib import Path

    from include.triggerflow.preview import PreviewError, render_preview

    try:
        routing, profile, event, catalog = _preview_inputs(args)
        paths = render_preview(
            args.route, event, profile, routing=routing, unsubscribe_url=args.unsubscribe_url, out_dir=Path(args.out),
            catalog=catalog,
        )
    except (_CliError, PreviewError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    subject = paths["subject.txt"].read_text(encoding="utf-8").strip()
    print(f"subject: {subject}")
    for name, path in paths.items():
        print(f"wrote {path}")
    return 0


def _smtp_settings(args: argparse.Namespace) -> dict:
    """Host, port, sender and TLS/login settings: the connection (the smtp provider's semantics:
    SSL unless extra.disable_ssl, STARTTLS unless extra.disable_tls), then the command-line flags."""
    conn = _optional_connection(args.smtp_conn)
    extra = dict(conn.extra_dejson or {}) if conn is not None else {}
    use_ssl = conn is not None and not bool(extra.get("disable_ssl", False))
    settings = {
        "smtp_host": args.smtp_host or (conn.host if conn is not None else None),
        "smtp_port": args.smtp_port or (conn.port if conn is not None and conn.port else (465 if use_ssl else 25)),
        "sender": args.sender or extra.get("from_email"),
        "from_name": extra.get("from_name"),
        "smtp_user": conn.login if conn is not None else None,
        "smtp_password": conn.password if conn is not None else None,
        "use_ssl": use_ssl,
        "starttls": conn is not None and not use_ssl and not bool(extra.get("disable_tls", False)),
        "timeout": float(extra.get("timeout", 30)),
        "message_id_domain": str(extra.get("message_id_domain") or "triggerflow.local"),
    }
    missing = [flag for key, flag in (("smtp_host", "--smtp-host"), ("sender", "--from")) if not settings[key]]
    if missing:
        where = f"connection {args.smtp_conn!r}" + (" is not defined" if conn is None else " lacks them")
        raise _CliError(f"no SMTP {' and '.join(missing)}: {where}; pass {', '.join(missing)}")
    return settings


def cmd_test_send(args: argparse.Namespace) -> int:
    from include.triggerflow.preview import PreviewError, send_test

    try:
        routing, profile, event, catalog = _preview_inputs(args)
        settings = _smtp_settings(args)
        results = send_test(
            args.route,
            event,
            profile,
            args.to,
            routing=routing,
            catalog=catalog,
            unsubscribe_url=args.unsubscribe_url,
            subject_prefix=args.subject_prefix,
            **settings,
        )
    except (_CliError, PreviewError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for result in results:
        state = "accepted" if result.accepted else f"refused {result.code}: {result.reply}"
        print(f"{result.recipient}\t{state}\t{result.message_id}")
    return 0 if all(result.accepted for result in results) else 1


def _add_preview_arguments(p: argparse.ArgumentParser) -> None:
    from include.triggerflow.preview import DEFAULT_UNSUBSCRIBE_URL

    p.add_argument("--route", required=True, help="route name from the routing config (e.g. cart_abandonment)")
    p.add_argument("--event", help="event JSON (envelope, producer message or trigger body); default: the route's sample")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--profile", help="profile JSON (profile columns); default: include/templates/samples/profile.json")
    who.add_argument(
        "--customer-id",
        help="read the profile from the store (profiles.customer_id), and the event's products from the store's catalogue",
    )
    p.add_argument("--locale", help="override the profile's locale (e.g. fr, fr_CA) to preview a variant")
    p.add_argument(
        "--unsubscribe-url",
        default=DEFAULT_UNSUBSCRIBE_URL,
        help="unsubscribe link to put in the footer and List-Unsubscribe (default: a placeholder that unsubscribes nobody)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="triggerflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db-url", help="SQLAlchemy URL of the store (default: $TRIGGERFLOW_DB_URL or connection triggers_db)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init-db", help="create the store tables").set_defaults(func=cmd_init_db)
    p = sub.add_parser("load-profiles", help="upsert profiles from a CSV file")
    p.add_argument("csv")
    p.add_argument("--skip-bad-rows", action="store_true", help="load the good rows and list the bad ones")
    p.set_defaults(func=cmd_load_profiles)
    p = sub.add_parser("catalog", help="the product catalogue: load it from CSV, show products")
    catalog_sub = p.add_subparsers(dest="action", required=True)
    c = catalog_sub.add_parser("load", help="upsert products from a CSV file (all-or-nothing unless --skip-bad-rows)")
    c.add_argument("csv")
    c.add_argument("--skip-bad-rows", action="store_true", help="load the good rows and list the bad ones")
    c = catalog_sub.add_parser("show", help="products by SKU as a table; no SKU: how many products there are")
    c.add_argument("skus", nargs="*", metavar="SKU")
    p.set_defaults(func=cmd_catalog)
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
    from include.triggerflow.suppression import SOURCES as SUPPRESSION_CATEGORIES

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
    p.add_argument(
        "--recount",
        action="store_true",
        help="first recount the status summaries (tf_batch_stats, tf_source_stats) from every batch's "
        "events and sends: repairs them after a failed refresh; reads the whole store",
    )
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("preview", help="render a route's email for an event and a profile to files")
    _add_preview_arguments(p)
    p.add_argument("--out", required=True, help="folder to write subject.txt, email.html, email.txt, message.eml")
    p.set_defaults(func=cmd_preview)
    p = sub.add_parser("test-send", help="send a route's email to seed addresses (no ledger)")
    _add_preview_arguments(p)
    p.add_argument("--to", action="append", required=True, metavar="ADDR", help="seed address (repeat for several)")
    p.add_argument("--smtp-conn", default="smtp_triggers", help="Airflow connection for host/port/from (default smtp_triggers)")
    p.add_argument("--smtp-host", help="override the connection's host")
    p.add_argument("--smtp-port", type=int, help="override the connection's port")
    p.add_argument("--from", dest="sender", help="override the connection's from_email")
    p.add_argument("--subject-prefix", default="[TEST] ", help='prefix of the subject (default "[TEST] ")')
    p.set_defaults(func=cmd_test_send)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
