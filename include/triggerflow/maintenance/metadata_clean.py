"""Airflow's own metadata: ``airflow db clean`` for the tables a minute schedule grows.

At one run a minute, trigger_emails alone writes 1,440 dag_run rows and ~10,000 task instances
(with their history, XCom, log and job rows) a day; nothing in Airflow deletes them, and the
scheduler's queries slow down as they grow. ``airflow db clean`` is Airflow's supported way:
it deletes in batches (``--batch-size``), keeps the latest run of every DAG, and with
``--skip-archive`` does not copy the rows to ``_airflow_deleted__*`` tables first.

It runs as a subprocess of the task: the CLI opens the metadata database itself (task code may
not use the ORM in Airflow 3), so the worker needs the metadata connection
(``[database] sql_alchemy_conn``), as the scheduler does. A deployment that already cleans its
metadata switches this off (``metadata_days`` 0).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

log = logging.getLogger(__name__)

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
) -> CleanResult:
    """Run ``airflow db clean`` and return what it did; raises when it fails (a failed cleanup
    must show as a failed task, not as a green run that cleaned nothing)."""
    if dag_ids:
        tables = [t for t in tables if t not in NO_DAG_ID_TABLES]
    cmd = clean_command(cutoff, tables=tables, dag_ids=dag_ids, dry_run=dry_run, batch_size=batch_size)
    log.info("running: %s", " ".join(cmd[1:]))
    started = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout_s, env=os.environ.copy(), check=False
    )
    output = (proc.stdout or "") + (proc.stderr or "")
    for line in output.splitlines()[-40:]:
        log.info("db clean: %s", line)
    result = CleanResult(cutoff, tuple(tables), proc.returncode, time.perf_counter() - started, output, tuple(cmd))
    unexpected = failed_tables(output) - (NO_DAG_ID_TABLES if dag_ids else set())
    if not result.ok or unexpected:
        raise RuntimeError(f"airflow db clean failed ({result.summary()}; tables not cleaned: {sorted(unexpected)})")
    return result
