"""Shared fixtures and helpers for the tests of include.triggerflow (a pytest plugin: tests/conftest.py
loads it, so unit, integration and e2e tests get the same fixtures; helpers import from here).

Real parts wherever one can run:

* ``emulator_process`` / ``emu`` — one ``devstack.adobe_emulator`` subprocess per test module,
  reset (empty journal, no tokens, zeroed stats) before each test; the IMS token cache of the
  hooks is cleared around each test so no test reuses another's token.
* ``smtp_sink_process`` / ``smtp`` — one ``devstack.smtp_sink`` subprocess per test module, its
  outbox emptied before each test, and connection ``smtp_triggers`` pointing at it.
* ``kit`` — the store of the test (``store_engine`` from tests/conftest.py: SQLite, or a fresh
  PostgreSQL database when TRIGGERFLOW_TEST_PG_URL is set) with small helpers to write batches,
  events and profiles directly and to read rows back.

Airflow hooks used outside a task read their connections from ``AIRFLOW_CONN_*`` variables
(JSON), set with monkeypatch so they never leak between tests.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select

from devstack.messages import CART_ABANDONMENT_TRIGGER_ID, envelope, trigger_message
from devstack.processes import RunningEmulator, RunningSmtpSink, start_emulator, start_smtp_sink

FROM_EMAIL = "shop@triggerflow.test"
FROM_NAME = "triggerflow shop"
#: the unsubscribe signer of the unit tests (the same test-only secret tests/conftest.py puts in
#: AIRFLOW_CONN_TRIGGERFLOW_UNSUBSCRIBE)
UNSUBSCRIBE_BASE_URL = "http://localhost:8080"
UNSUBSCRIBE_SECRET = "triggerflow-tests-only-unsubscribe-secret"


def unsubscribe_links():
    from include.triggerflow.unsubscribe import UnsubscribeLinks

    return UnsubscribeLinks(UNSUBSCRIBE_SECRET, UNSUBSCRIBE_BASE_URL)


def send_chunk(engine, batch_id, chunk, routing, renderer, open_session, options=None):
    """``stages.send.send_chunk`` with the tests' unsubscribe signer filled into the options
    (production gets it from connection triggerflow_unsubscribe)."""
    from dataclasses import replace

    from include.triggerflow.stages.send import SendOptions
    from include.triggerflow.stages.send import send_chunk as real_send_chunk

    options = options or SendOptions()
    if options.unsubscribe is None:
        options = replace(options, unsubscribe=unsubscribe_links())
    return real_send_chunk(engine, batch_id, chunk, routing, renderer, open_session, options)

BASE_PROFILE: dict[str, Any] = {
    "email": None,
    "first_name": None,
    "last_name": None,
    "locale": None,
    "timezone": None,
    "shopper_id": None,
    "ecid": None,
    "declared_id": None,
    "opted_out": False,
}


# -- payloads ----------------------------------------------------------------------------------------
def envelope_json(
    *,
    trigger_id: str = CART_ABANDONMENT_TRIGGER_ID,
    shopper_id: str | None = "SHOP-ADA",
    offset: int = 1,
    **kwargs: Any,
) -> str:
    """A pipeline envelope (JSON text, as landed) for one trigger message."""
    message = trigger_message(trigger_id=trigger_id, shopper_id=shopper_id, **kwargs)
    return json.dumps(envelope(message, partition=0, offset=offset), separators=(",", ":"))


# -- the store ---------------------------------------------------------------------------------------
def load_demo_catalog(engine: Engine) -> None:
    """The demo catalogue (devstack/demo_catalog.csv: every SKU the generated triggers name) in the
    store's ``catalog`` table, through the real loader, so catalogue-mode routes (the shipped
    default) email those products."""
    from devstack.messages import load_demo_catalog as load

    load(engine)


@pytest.fixture(autouse=True)
def _fresh_secrets_masker() -> Iterator[None]:
    """Each test starts with Airflow's log masker empty. The masker is process-wide and recompiles
    one regex over every secret it holds on each new one; across a session of tests that mint
    unique tokens and keys this grew to ~10 ms per mask call. Tests of masking mask and check inside
    the test."""
    from airflow.sdk.log import _secrets_masker

    _secrets_masker().reset_masker()
    yield


@pytest.fixture
def demo_catalog(store_engine: Engine) -> Engine:
    """The test's store with the demo catalogue loaded (see :func:`load_demo_catalog`)."""
    load_demo_catalog(store_engine)
    return store_engine


class StoreKit:
    """Direct access to the store for arranging a test and checking its outcome."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._positions = itertools.count(1)

    def add_batch(self, batch_id: str = "b1", *, state: str = "landed", source: str = "test:src") -> str:
        from include.triggerflow.store.schema import batch

        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(
                insert(batch).values(
                    batch_id=batch_id, dag_id="trigger_emails", run_id=f"run-{batch_id}", run_type="manual",
                    source=source, state=state, pulled=0, created_at=now,
                    landed_at=now if state == "landed" else None,
                )
            )
        return batch_id

    def add_event(
        self,
        batch_id: str,
        payload: str,
        *,
        status: str = "valid",
        received_at: datetime | None = None,
        source: str = "test:src",
    ) -> int:
        """Insert one event row; returns its event_id."""
        from include.triggerflow.events import as_int, parse_envelope
        from include.triggerflow.store.schema import event

        parsed = parse_envelope(payload)
        with self.engine.begin() as conn:
            result = conn.execute(
                insert(event).values(
                    batch_id=batch_id,
                    source=source,
                    src_partition=0,
                    src_position=f"pos-{next(self._positions):06d}",
                    message_id=None if parsed.message_id is None else str(parsed.message_id)[:200],
                    trigger_id=None if parsed.trigger_id is None else str(parsed.trigger_id)[:200],
                    trigger_ts=as_int(parsed.trigger_ts),
                    payload=payload,
                    received_at=received_at or datetime.now(UTC),
                    status=status,
                )
            )
            return int(result.inserted_primary_key[0])

    def add_profiles(self, *profiles: Mapping[str, Any]) -> None:
        from include.triggerflow.profiles import upsert_profiles

        upsert_profiles(self.engine, [{**BASE_PROFILE, **p} for p in profiles])

    def rows(self, table: Any, *where: Any, order_by: Any = None) -> list[dict[str, Any]]:
        stmt = select(table).where(*where)
        if order_by is not None:
            stmt = stmt.order_by(order_by)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def count(self, table: Any, *where: Any) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


@pytest.fixture
def kit(store_engine: Engine) -> StoreKit:
    return StoreKit(store_engine)


@pytest.fixture(scope="session")
def routing():
    """The shipped routing (include/routing.yaml): cart and browse abandonment on eVar01 -> shopper_id."""
    from include.triggerflow import DEFAULT_ROUTING_FILE
    from include.triggerflow.config import load_routing

    return load_routing(DEFAULT_ROUTING_FILE)


# -- Adobe emulator ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def emulator_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    log = tmp_path_factory.mktemp("emulator") / "emulator.log"
    with start_emulator(log_path=log) as emu:
        yield emu


@pytest.fixture
def emu(emulator_process: RunningEmulator) -> Iterator[RunningEmulator]:
    from include.triggerflow.hooks.ims import clear_token_cache

    emulator_process.client.reset()
    clear_token_cache()
    yield emulator_process
    clear_token_cache()


@pytest.fixture
def adobe_conns(emu: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Set connections ``adobe_ims`` and ``adobe_triggers`` to the emulator; call again to change them."""

    def configure(
        *,
        client_secret: str | None = None,
        org_id: str | None = None,
        page_limit: int = 500,
        reset: str = "earliest",
        kind: str = "journal",
        journal_url: str | None = None,
    ) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", json.dumps({
            "conn_type": "http",
            "host": emu.base_url,
            "login": emu.client.client_id,
            "password": emu.client.client_secret if client_secret is None else client_secret,
            "extra": {"org_id": emu.client.org_id if org_id is None else org_id, "scopes": "openid,AdobeID"},
        }))
        monkeypatch.setenv("AIRFLOW_CONN_ADOBE_TRIGGERS", json.dumps({
            "conn_type": "http",
            "host": emu.client.journal_url if journal_url is None else journal_url,
            "extra": {"kind": kind, "ims_conn_id": "adobe_ims", "page_limit": page_limit, "reset": reset},
        }))

    configure()
    return configure


def publish(emu: RunningEmulator, count: int, **kwargs: Any) -> list[str]:
    """Publish ``count`` cart-abandonment triggers; returns their journal positions in order."""
    kwargs.setdefault("trigger_id", CART_ABANDONMENT_TRIGGER_ID)
    kwargs.setdefault("shopper_id", "SHOP-ADA")
    receipt = emu.client.publish([trigger_message(**kwargs) for _ in range(count)])
    assert receipt["accepted"] == count
    return [p["position"] for p in receipt["positions"]]


@pytest.fixture
def publisher(emu: RunningEmulator) -> Callable[..., list[str]]:
    return lambda count, **kwargs: publish(emu, count, **kwargs)


# -- SMTP sink ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smtp_sink_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSmtpSink]:
    base = tmp_path_factory.mktemp("smtp")
    with start_smtp_sink(base / "outbox", log_path=base / "smtp.log") as sink:
        yield sink


def smtp_conn(sink: RunningSmtpSink, **extra: Any) -> str:
    return json.dumps({
        "conn_type": "smtp",
        "host": sink.host,
        "port": sink.port,
        "extra": {
            "from_email": FROM_EMAIL,
            "from_name": FROM_NAME,
            "disable_ssl": True,
            "disable_tls": True,
            "retry_limit": 0,
            "timeout": 10,
            **extra,
        },
    })


@pytest.fixture
def smtp(smtp_sink_process: RunningSmtpSink, monkeypatch: pytest.MonkeyPatch) -> RunningSmtpSink:
    """The module's SMTP sink with an empty outbox; connection ``smtp_triggers`` points at it."""
    for path in smtp_sink_process.out_dir.glob("*.eml"):
        path.unlink()
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TRIGGERS", smtp_conn(smtp_sink_process))
    return smtp_sink_process


def decisions_by_event(kit: StoreKit, batch_id: str) -> dict[int, dict[str, Any]]:
    from include.triggerflow.store.schema import decision

    return {r["event_id"]: r for r in kit.rows(decision, decision.c.batch_id == batch_id)}


def write_routing(path: Path, routes: Sequence[Mapping[str, Any]]) -> Path:
    """Write a routing.yaml (JSON is valid YAML) with the given trigger entries. An entry without
    ``link_hosts`` gets the shipped routing's (``[shop.example.com]``): the shipped templates
    render event URLs, which a route may only do with a link_hosts list."""
    entries = [{"link_hosts": ["shop.example.com"], **route} for route in routes]
    path.write_text(json.dumps({"version": 1, "triggers": entries}, indent=2), encoding="utf-8")
    return path


#: three customers with one cart trigger each (the send tests' default audience)
SEND_PROFILES = [
    {"customer_id": "C1", "email": "ada@example.com", "first_name": "Ada", "shopper_id": "SHOP-1"},
    {"customer_id": "C2", "email": "grace@example.com", "first_name": "Grace", "shopper_id": "SHOP-2"},
    {"customer_id": "C3", "email": "donald@example.com", "first_name": "Donald", "shopper_id": "SHOP-3"},
]


def ledger_rows(kit: StoreKit, batch_id: str = "b1") -> list[dict[str, Any]]:
    """The batch's tf_send rows in send_id order."""
    from include.triggerflow.store.schema import send

    return kit.rows(send, send.c.batch_id == batch_id, order_by=send.c.send_id)


def ledger_states(kit: StoreKit, batch_id: str = "b1") -> dict[str, str]:
    return {r["recipient"]: r["state"] for r in ledger_rows(kit, batch_id)}


def chunk_counts(**counts: int) -> dict[str, int]:
    """A send chunk's full counts (``SendResult.counts``), zero unless given. The keys are written
    out here, not taken from the send stage, so a count the stage drops or adds fails the tests."""
    keys = ("sent", "resent", "deferred", "failed", "ambiguous", "dry_run", "skipped_already_sent")
    return {**dict.fromkeys(keys, 0), **counts}


def set_ledger_state(kit: StoreKit, send_id: int, state: str) -> None:
    """Put one ledger row in ``state`` directly (e.g. ``sending``: a process died mid-transaction)."""
    from sqlalchemy import update

    from include.triggerflow.store.schema import send

    with kit.engine.begin() as conn:
        conn.execute(update(send).where(send.c.send_id == send_id).values(state=state))


def queue_emails(
    kit: StoreKit, routing: Any, profiles: Sequence[Mapping[str, Any]] = SEND_PROFILES, batch_id: str = "b1"
) -> list[dict[str, Any]]:
    """Profiles, one valid cart event per profile, reconciled: the pending ledger rows. The demo
    catalogue is loaded (an upsert): the shipped routes email only products it knows."""
    from include.triggerflow.stages.reconcile import reconcile_batch

    load_demo_catalog(kit.engine)
    kit.add_profiles(*profiles)
    kit.add_batch(batch_id)
    for p in profiles:
        kit.add_event(batch_id, envelope_json(shopper_id=p["shopper_id"], products=["ALP-SHL-JKT"]))
    reconcile_batch(kit.engine, batch_id, routing)
    return ledger_rows(kit, batch_id)
