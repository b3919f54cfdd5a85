"""CLI command ``status``: Campaign's ``pipelined`` status document, as the plugin serves it
(both through ``include.triggerflow.status.collector.collect_status``)."""

from __future__ import annotations

import argparse
import json
import sys

from include.triggerflow.cli.common import error, optional_connection, store_engine

SOURCE_CONN_ID = "adobe_triggers"


def cmd_status(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from include.triggerflow.stats import rebuild_all
    from include.triggerflow.status import collect_status
    from include.triggerflow.store.engines import describe

    engine = store_engine(args)
    try:
        if args.recount:  # rebuild the summaries the document reads from every batch's rows
            with engine.begin() as store:
                print(f"recounted {rebuild_all(store)} batches", file=sys.stderr)
        document = collect_status(engine, optional_connection(SOURCE_CONN_ID), source=args.source, consumer=args.consumer)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return error(f"cannot read the store at {describe(engine)}: {reason}", 1)
    print(json.dumps(document, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's command to the parser."""
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
