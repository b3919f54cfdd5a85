"""What every command module of the CLI shares: the store, optional connections, errors."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from sqlalchemy import Engine

from include.triggerflow.store.engines import get_engine
from include.triggerflow.store.migrations import create_schema


class CliError(Exception):
    """A usage or input problem: printed as ``error: ...`` with exit status 2."""


def store_engine(args: argparse.Namespace) -> Engine:
    """The store: ``--db-url``, else $TRIGGERFLOW_DB_URL, else connection ``triggers_db``; its
    tables are created when missing (every command may be the first one run)."""
    url = args.db_url or os.environ.get("TRIGGERFLOW_DB_URL")
    if not url:
        from include.triggerflow.hooks.store import TriggersStoreHook

        url = TriggersStoreHook().get_url()
    engine = get_engine(url)
    create_schema(engine)
    return engine


def optional_connection(conn_id: str) -> Any:
    """The Airflow connection, or None when it is not defined or cannot be read here."""
    try:
        from airflow.sdk import BaseHook

        return BaseHook.get_connection(conn_id)
    except Exception:
        return None


def error(message: object, status: int = 2) -> int:
    """Print ``error: <message>`` on stderr; the exit status to return."""
    print(f"error: {message}", file=sys.stderr)
    return status
