"""Constants shared by tests and by the scripts tests start in subprocesses.

Side-effect free on purpose: tests/conftest.py points Airflow at a fresh private home when it is
imported, so a subprocess must never import conftest (it would get an empty metadata DB).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Every email carries a signed unsubscribe link; tests sign with this test-only secret.
UNSUBSCRIBE_CONN_JSON = (
    '{"conn_type": "generic", "host": "http://localhost:8080", '
    '"password": "triggerflow-tests-only-unsubscribe-secret"}'
)


@contextmanager
def captured_sql(target: Any = None) -> Iterator[list[str]]:
    """Every SQL statement run meanwhile by ``target`` (an engine; None: every engine), via
    SQLAlchemy's ``before_cursor_execute``: for tests that prove what a code path reads."""
    from sqlalchemy import event as sa_event
    from sqlalchemy.engine import Engine

    statements: list[str] = []
    listened = Engine if target is None else target

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa_event.listen(listened, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa_event.remove(listened, "before_cursor_execute", record)
