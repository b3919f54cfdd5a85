"""Airflow's own metadata: ``airflow db clean`` for the tables a minute schedule grows.

At one run a minute, trigger_emails alone writes 1,440 dag_run rows and ~10,000 task instances
(with their history, XCom, log and job rows) a day; nothing in Airflow deletes them, and the
scheduler's queries slow down as they grow. ``airflow db clean`` is Airflow's supported way:
it deletes in batches (``--batch-size``), keeps the latest run of every DAG, and with
``--skip-archive`` does not copy the rows to ``_airflow_deleted__*`` tables first.

It runs as a subprocess of the task: the CLI opens the metadata database itself (task code may
not use the ORM in Airflow 3). Airflow 3's task runner hides that database from task processes:
it replaces ``[database] sql_alchemy_conn`` (and its environment variable) with
``airflow-db-not-allowed:///`` before task code runs, so a worker's own setting never reaches
the CLI. The URL therefore comes from the Airflow connection ``airflow_metadata``
(:data:`METADATA_CONN_ID`; ``extra.sqlalchemy_url``, or a ``postgres`` / ``sqlite`` connection's
fields, as for ``triggers_db``), a secret like any other. Where the setting is not hidden
(``dag.test()`` in one process) it is used as it is. Without either, the task fails and says
which connection to define. A deployment that already cleans its metadata switches this off
(``metadata_days`` 0).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)

#: the Airflow connection holding the metadata database's URL (module doc)
METADATA_CONN_ID = "airflow_metadata"
#: what Airflow 3's task runner puts in place of the metadata URL (supervisor.block_orm_access)
BLOCKED_URL_MARK = "airflow-db-not-allowed"
_URL_VARS = ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__SQL_ALCHEMY_CONN")


class MetadataDbUnavailable(RuntimeError):
    """The metadata database's URL is hidden from this task and no connection supplies it."""


def redact_url(text: str, url: str | None) -> str:
    """``text`` without the password of ``url`` (the CLI's output goes to the task log)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if not url:
        return text
    try:
        password = make_url(url).password
    except ArgumentError:
        return text
    return text.replace(str(password), "***") if password else text


def _lookup_connection(conn_id: str) -> Any | None:
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def metadata_env(
    environ: Mapping[str, str] | None = None,
    *,
    conn_id: str = METADATA_CONN_ID,
    lookup: Callable[[str], Any | None] = _lookup_connection,
) -> dict[str, str]:
    """The environment for ``airflow db clean``: this process's, with the metadata URL from
    connection ``conn_id`` when it exists; raises :class:`MetadataDbUnavailable` when the URL is
    hidden (Airflow 3 task process) and no connection gives it."""
    from include.triggerflow.store.engines import url_from_connection

    env = dict(os.environ if environ is None else environ)
    conn = lookup(conn_id)
    if conn is not None:
        url = url_from_connection(conn)
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = url
        env.pop("AIRFLOW__CORE__SQL_ALCHEMY_CONN", None)
        return env
    if any(BLOCKED_URL_MARK in env.get(var, "") for var in _URL_VARS):
        raise MetadataDbUnavailable(
            "airflow db clean needs Airflow's metadata database, which Airflow 3 hides from task "
            f"processes ([database] sql_alchemy_conn reads {BLOCKED_URL_MARK!r} here): define the "
            f"connection {conn_id!r} with that database's URL (extra.sqlalchemy_url, or a postgres "
            "connection's fields), or set metadata_days to 0 where the deployment cleans its metadata itself"
        )
    return env

#: the tables a minute schedule grows (names as ``airflow db clean --tables`` lists them)
DEFAULT_TABLES = (
    "dag_run",
    "task_instance",
    "task_instance_history",
    "task_reschedule",
    "xcom",
    "log",
    "job",
)
#: the DAGs whose metadata is cleaned by default (a deployment's other DAGs are left alone)
TRIGGERFLOW_DAGS = ("trigger_emails", "trigger_reprocess", "trigger_maintenance")

#: ``--dag-ids`` filters each table by its dag_id column; in Airflow 3.3 the tables cleaned along
#: with dag_run that have none (deadline, task_reschedule) then fail ("Encountered error when
#: attempting to clean table"). Their rows go with their dag_run / task_instance rows anyway
#: (ON DELETE CASCADE), so with ``--dag-ids`` these failures are expected and tolerated; any
#: other table's failure fails the task.
NO_DAG_ID_TABLES = frozenset({"deadline", "task_reschedule"})
_FOUND = re.compile(r"Found (\d+) rows? meeting deletion criteria")
_NOT_CLEANED = re.compile(r"not cleaned due to errors: \[([^\]]*)\]")


def failed_tables(output: str) -> set[str]:
    """The tables ``airflow db clean`` reports it could not clean."""
    found: set[str] = set()
    for match in _NOT_CLEANED.finditer(output):
        found.update(name.strip().strip("'\"") for name in match.group(1).split(",") if name.strip())
    return found


@dataclass(frozen=True)
class CleanResult:
    cutoff: datetime
    tables: tuple[str, ...]
    returncode: int
    seconds: float
    output: str
    command: tuple[str, ...]

    @property
    def rows(self) -> int:
        """Rows the CLI reported meeting the criteria, summed over the tables."""
        return sum(int(n) for n in _FOUND.findall(self.output))

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def summary(self) -> str:
        return f"exit {self.returncode}; tables {','.join(self.tables)}; {self.rows} row(s) older than the cutoff"


def clean_command(
    cutoff: datetime,
    *,
    tables: Sequence[str] = DEFAULT_TABLES,
    dag_ids: Sequence[str] | None = TRIGGERFLOW_DAGS,
    dry_run: bool = False,
    batch_size: int = 5_000,
) -> list[str]:
    """The ``airflow db clean`` command line (the CLI of this interpreter's Airflow)."""
    cmd = [
        sys.executable, "-m", "airflow", "db", "clean",
        "--clean-before-timestamp", cutoff.isoformat(),
        "--tables", ",".join(tables),
        "--batch-size", str(int(batch_size)),
        "--skip-archive",
        "--yes",
    ]
    if dag_ids:
        cmd += ["--dag-ids", ",".join(dag_ids)]
    else:
        # every table must clean; with --dag-ids the output is checked instead (failed_tables)
        cmd.append("--error-on-cleanup-failure")
    if dry_run:
        cmd.append("--dry-run")
    return cmd


def clean_metadata(
    cutoff: datetime,
    *,
    tables: Sequence[str] = DEFAULT_TABLES,
    dag_ids: Sequence[str] | None = TRIGGERFLOW_DAGS,
    dry_run: bool = False,
    batch_size: int = 5_000,
    timeout_s: float = 3_600,
    env: Mapping[str, str] | None = None,
) -> CleanResult:
    """Run ``airflow db clean`` and return what it did; raises when it fails (a failed cleanup
    must show as a failed task, not as a green run that cleaned nothing). ``env``: the CLI's
    environment, :func:`metadata_env` by default."""
    if dag_ids:
        tables = [t for t in tables if t not in NO_DAG_ID_TABLES]
    cmd = clean_command(cutoff, tables=tables, dag_ids=dag_ids, dry_run=dry_run, batch_size=batch_size)
    cli_env = dict(env) if env is not None else metadata_env()
    log.info("running: %s", " ".join(cmd[1:]))
    started = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout_s, env=cli_env, check=False
    )
    output = redact_url(
        (proc.stdout or "") + (proc.stderr or ""), cli_env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    )
    for line in output.splitlines()[-40:]:
        log.info("db clean: %s", line)
    result = CleanResult(cutoff, tuple(tables), proc.returncode, time.perf_counter() - started, output, tuple(cmd))
    unexpected = failed_tables(output) - (NO_DAG_ID_TABLES if dag_ids else set())
    if not result.ok or unexpected:
        raise RuntimeError(f"airflow db clean failed ({result.summary()}; tables not cleaned: {sorted(unexpected)})")
    return result
