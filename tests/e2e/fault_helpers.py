"""Shared pieces of the fault tests (tests/e2e/test_*_faults.py, test_scheduler_kill.py,
test_db_outage.py): customers, connections, the DAG, and the checks every fault test makes —
what the SMTP server really received, the ledger, the send log and the run's count balance."""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from sqlalchemy import select

from devstack.messages import CART_ABANDONMENT_TRIGGER_ID, trigger_message
from devstack.processes import start_emulator, start_smtp_sink
from tests.support import UNSUBSCRIBE_CONN_JSON

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def customers(n: int, *, domain: str = "example.com", prefix: str = "C") -> list[dict[str, Any]]:
    """``n`` known, opted-in customers: C001 / SHOP-C001 / c001@<domain>."""
    return [
        {
            "customer_id": f"{prefix}{i:03d}",
            "email": f"{prefix.lower()}{i:03d}@{domain}",
            "first_name": f"Name{i}",
            "last_name": None,
            "locale": "en_US",
            "timezone": "UTC",
            "shopper_id": f"SHOP-{prefix}{i:03d}",
            "ecid": None,
            "declared_id": None,
            "opted_out": False,
        }
        for i in range(1, n + 1)
    ]


def triggers_for(
    profiles: Iterable[Mapping[str, Any]], *, later_ms: int = 0, trigger_id: str = CART_ABANDONMENT_TRIGGER_ID,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """One trigger per customer, cart abandonment by default (a distinct trigger timestamp each,
    two minutes ago + ``later_ms``; a new messageId each call)."""
    base = int(datetime.now(UTC).timestamp() * 1000) - 120_000 + later_ms
    return [
        trigger_message(trigger_id=trigger_id, shopper_id=p["shopper_id"], triggered_at_ms=base + i, **kwargs)
        for i, p in enumerate(profiles)
    ]


def connection_env(emu: Any, smtp: Any, store_url: str, *, source: Mapping[str, Any] | None = None) -> dict[str, str]:
    """``AIRFLOW_CONN_*`` values (JSON form) for the emulator, the SMTP sink and the store."""
    if source is None:
        source = {"conn_type": "http", "host": emu.client.journal_url,
                  "extra": {"kind": "journal", "ims_conn_id": "adobe_ims", "page_limit": 25}}
    return {
        "AIRFLOW_CONN_ADOBE_IMS": json.dumps({
            "conn_type": "http", "host": emu.base_url, "login": emu.client.client_id,
            "password": emu.client.client_secret, "extra": {"org_id": emu.client.org_id, "scopes": "openid,AdobeID"},
        }),
        "AIRFLOW_CONN_ADOBE_TRIGGERS": json.dumps(dict(source)),
        "AIRFLOW_CONN_SMTP_TRIGGERS": json.dumps({
            "conn_type": "smtp", "host": smtp.host, "port": smtp.port,
            "extra": {"from_email": "shop@triggerflow.test", "from_name": "triggerflow shop",
                      "disable_ssl": True, "disable_tls": True, "retry_limit": 0, "timeout": 20},
        }),
        "AIRFLOW_CONN_TRIGGERS_DB": json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": store_url}}),
        "AIRFLOW_CONN_TRIGGERFLOW_UNSUBSCRIBE": UNSUBSCRIBE_CONN_JSON,
    }


def metadata_db(server: str | None = None) -> AbstractContextManager[str | None]:
    """Airflow's metadata DB for an e2e stack (``with metadata_db() as metadata_url``): a scratch
    database on ``server`` — by default on the PostgreSQL pass's server (TRIGGERFLOW_TEST_PG_URL),
    as under Astro — else None, the stack's own SQLite."""
    from devstack.airflow_stack import postgres_metadata_db

    server = server or os.environ.get("TRIGGERFLOW_TEST_PG_URL")
    return postgres_metadata_db(server) if server else contextlib.nullcontext(None)


def load_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "trigger_emails.py"))
    assert bag.import_errors == {}
    return bag.get_dag("trigger_emails")


def minute(offset: int = 0) -> datetime:
    """A whole-minute logical date in the recent past (+ ``offset`` minutes)."""
    return datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30 - offset)


# -- what the store says ---------------------------------------------------------------------------


def batch_of(engine, run_id: str) -> str:
    from include.triggerflow.store.schema import batch

    with engine.connect() as conn:
        return conn.execute(select(batch.c.batch_id).where(batch.c.run_id == run_id)).scalar_one()


def summary(engine, batch_id: str) -> dict[str, Any]:
    from include.triggerflow.store.schema import run_summary

    with engine.connect() as conn:
        row = conn.execute(select(run_summary.c.counts).where(run_summary.c.batch_id == batch_id)).scalar_one()
    return json.loads(row)


def assert_balanced(counts: Mapping[str, Any]) -> None:
    """The report's own verdict *and* the three equations, recomputed here."""
    c = counts
    assert c["balanced"] is True, c
    assert c["pulled"] == c["valid"] + c["quarantined"], c
    assert c["valid"] == c["matched"] + c["unmatched"] + c["ignored"], c
    outcomes = ("sent", "suppressed", "duplicate", "failed", "deferred", "ambiguous", "pending")
    assert c["matched"] == sum(c[k] for k in outcomes) + c.get("no_products", 0), c
    for key in ("sent", "deferred", "failed", "ambiguous", "duplicate", "skipped_already_sent"):
        assert key in c, (key, c)


def ledger(engine, batch_id: str | None = None) -> list[dict[str, Any]]:
    from include.triggerflow.store.schema import send

    query = select(send).order_by(send.c.send_id)
    if batch_id is not None:
        query = query.where(send.c.batch_id == batch_id)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def send_log(engine, batch_id: str | None = None) -> list[dict[str, Any]]:
    from include.triggerflow.store.schema import send_log as table

    query = select(table).order_by(table.c.log_id)
    if batch_id is not None:
        query = query.where(table.c.batch_id == batch_id)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def decisions(engine, batch_id: str) -> dict[str, str]:
    """{customer_key: decision} of a batch (one event per customer in these tests)."""
    from include.triggerflow.store.schema import decision

    with engine.connect() as conn:
        rows = conn.execute(select(decision.c.customer_key, decision.c.decision).where(decision.c.batch_id == batch_id)).all()
    return {k: d for k, d in rows}


def decision_counts(engine, batch_id: str) -> Counter:
    from include.triggerflow.store.schema import decision

    with engine.connect() as conn:
        return Counter(conn.execute(select(decision.c.decision).where(decision.c.batch_id == batch_id)).scalars())


def event_count(engine) -> int:
    from sqlalchemy import func

    from include.triggerflow.store.schema import event

    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(event)).scalar_one())


# -- what the SMTP server received -----------------------------------------------------------------


def keys_received(messages: Iterable[EmailMessage]) -> Counter:
    """How many copies of each email (by X-Triggerflow-Key) the server stored."""
    return Counter(str(m["X-Triggerflow-Key"]).strip() for m in messages)


def recipients_received(messages: Iterable[EmailMessage]) -> Counter:
    return Counter(str(m["X-Envelope-To"]) for m in messages)


def suppression_rows(engine) -> list[dict[str, Any]]:
    from include.triggerflow.store.schema import suppression

    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(suppression).order_by(suppression.c.address)).mappings()]


def actions_by_row(engine, batch_id: str) -> dict[str, list[tuple[int | None, str, int | None]]]:
    """{recipient: [(try_number, action, smtp_code), ...]} from tf_send_log, in log order."""
    recipient = {r["send_id"]: r["recipient"] for r in ledger(engine, batch_id)}
    out: dict[str, list[tuple[int | None, str, int | None]]] = {}
    for row in send_log(engine, batch_id):
        out.setdefault(recipient[row["send_id"]], []).append((row["try_number"], row["action"], row["smtp_code"]))
    return out


def dag_test_tries(run, task_id: str = "send") -> dict[int, int]:
    """{map_index: try_number} of a task in a dag.test() run, from the metadata DB."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(TaskInstance.map_index, TaskInstance.try_number)
            .filter(TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id, TaskInstance.task_id == task_id)
            .all()
        )
    return {int(m): int(t) for m, t in rows}


def only_batch(engine) -> str:
    """The one batch in the store (when a re-run of the same interval reused it, the batch keeps
    the run id of the run that landed it)."""
    from include.triggerflow.store.schema import batch

    with engine.connect() as conn:
        [batch_id] = conn.execute(select(batch.c.batch_id)).scalars().all()
    return batch_id


def source_connection(kind: str, emu: Any, *, page_size: int, environment: str, **pipeline_extra: Any) -> dict[str, Any]:
    """The adobe_triggers connection for ``kind`` (journal | pipeline) against the emulator, with
    small pages so a run makes several requests."""
    if kind == "journal":
        return {"conn_type": "http", "host": emu.client.journal_url,
                "extra": {"kind": "journal", "ims_conn_id": "adobe_ims", "page_limit": page_size}}
    return {"conn_type": "http", "extra": {
        "kind": "pipeline", "consumer": "triggerflow-{env}", "environment": environment,
        "discovery_url": emu.base_url, "page_size": page_size, "read_timeout_s": 2, "idle_stop_s": 5,
        "ims_conn_id": "adobe_ims", **pipeline_extra,
    }}


@contextmanager
def emulator_stack(tmp_path: Path, store_url: str, monkeypatch: Any, source: Any) -> Iterator[tuple[Any, Any]]:
    """The emulator and the SMTP sink as processes, the connections pointing at them (``source(emu)``
    gives adobe_triggers), and a fresh IMS token cache: tasks run in this process under dag.test,
    so they start like a fresh worker."""
    from include.triggerflow.hooks.ims import clear_token_cache

    with (
        start_emulator(log_path=tmp_path / "emulator.log", ping_interval=0.5, stream_max_seconds=20) as emu,
        start_smtp_sink(tmp_path / "outbox", log_path=tmp_path / "smtp.log") as smtp,
    ):
        for key, value in connection_env(emu, smtp, store_url, source=source(emu)).items():
            monkeypatch.setenv(key, value)
        clear_token_cache()
        yield emu, smtp
