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
from collections.abc import Sequence

from include.triggerflow.cli import preview, runs, status, store
from include.triggerflow.cli.common import CliError, optional_connection, store_engine
from include.triggerflow.cli.preview import cmd_preview, cmd_test_send
from include.triggerflow.cli.runs import (
    RUNS_COLUMNS,
    cmd_decisions,
    cmd_forget_position,
    cmd_move_position,
    cmd_positions,
    cmd_quarantine,
    cmd_runs,
    cmd_suppress,
)
from include.triggerflow.cli.status import cmd_status
from include.triggerflow.cli.store import cmd_catalog, cmd_init_db, cmd_load_profiles

# One module per command group, each registering its sub-commands (the docstring above is the
# --help text, so the layout is told here): store.py (init-db, load-profiles, catalog), runs.py
# (runs, quarantine, decisions, suppress, positions, forget-position, skip, set-position),
# status.py (status, through include.triggerflow.status.collector), preview.py (preview,
# test-send through hooks.smtp.TriggerMailHook); common.py holds the store engine and errors.

__all__ = [
    "RUNS_COLUMNS",
    "CliError",
    "build_parser",
    "cmd_catalog",
    "cmd_decisions",
    "cmd_forget_position",
    "cmd_init_db",
    "cmd_load_profiles",
    "cmd_move_position",
    "cmd_positions",
    "cmd_preview",
    "cmd_quarantine",
    "cmd_runs",
    "cmd_status",
    "cmd_suppress",
    "cmd_test_send",
    "main",
    "optional_connection",
    "store_engine",
]


def build_parser() -> argparse.ArgumentParser:
    """The ``triggerflow`` parser: each command module registers its own sub-commands, in the
    order of the usage above."""
    parser = argparse.ArgumentParser(prog="triggerflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db-url", help="SQLAlchemy URL of the store (default: $TRIGGERFLOW_DB_URL or connection triggers_db)")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (store, runs, status, preview):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
