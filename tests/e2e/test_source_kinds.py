"""The same trigger_emails DAG on either source kind and in either IMS auth mode.

Only the ``adobe_triggers`` / ``adobe_ims`` connections change between the four cases; the DAG
file is the same. Each case publishes the same triggers through the emulator's producer API and
runs the real DAG three times with dag.test(): two emails arrive, the later runs send nothing,
and IMS was asked for a token exactly once over the three runs (the token is shared through the
store, encrypted).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from devstack.messages import (
    BROWSE_ABANDONMENT_TRIGGER_ID,
    CART_ABANDONMENT_TRIGGER_ID,
    load_demo_catalog,
    trigger_message,
)
from devstack.processes import start_emulator, start_smtp_sink
from include.triggerflow.profiles import upsert_profiles

pytestmark = pytest.mark.e2e

TECH_ACCOUNT = "TECHACCT1234@techacct.adobe.com"
PROFILES = [
    {"customer_id": "C1", "email": "ada@example.com", "first_name": "Ada", "shopper_id": "SHOP-ADA", "opted_out": False},
    {"customer_id": "C2", "email": "grace@example.com", "first_name": "Grace", "shopper_id": "SHOP-GRACE", "opted_out": False},
]


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_path = tmp_path_factory.mktemp("jwt") / "public.pem"
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private_pem, public_path


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags" / "trigger_emails.py"))
    assert bag.import_errors == {}
    return bag.get_dag("trigger_emails")


@pytest.mark.parametrize("kind", ["journal", "pipeline"])
@pytest.mark.parametrize("auth", ["oauth", "jwt"])
def test_same_dag_on_each_source_kind_and_auth_mode(
    kind: str, auth: str, rsa_keys, tmp_path: Path, airflow_db: Path, store_url: str, store_engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.utils.state import DagRunState

    from include.triggerflow.hooks.ims import clear_token_cache
    from include.triggerflow.store.schema import batch, ims_token, run_summary

    private_pem, public_path = rsa_keys
    with (
        start_emulator(jwt_public_key_path=public_path, technical_account_id=TECH_ACCOUNT) as emu,
        start_smtp_sink(tmp_path / "outbox") as smtp,
    ):
        ims_extra: dict = {"org_id": emu.client.org_id, "scopes": "openid,AdobeID"}
        if auth == "jwt":
            ims_extra.update(auth_type="jwt", technical_account_id=TECH_ACCOUNT, private_key=private_pem)
        monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", json.dumps({
            "conn_type": "http", "host": emu.base_url, "login": emu.client.client_id,
            "password": emu.client.client_secret, "extra": ims_extra,
        }))
        if kind == "journal":
            source = {"conn_type": "http", "host": emu.client.journal_url, "extra": {"kind": "journal"}}
        else:
            # No host: the endpoint is discovered, as pipelined does without forcedPipelineEndpoint.
            source = {"conn_type": "http", "extra": {
                "kind": "pipeline", "consumer": "triggerflow-{env}", "environment": "test",
                "discovery_url": emu.base_url, "read_timeout_s": 5,
            }}
        monkeypatch.setenv("AIRFLOW_CONN_ADOBE_TRIGGERS", json.dumps(source))
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_TRIGGERS", json.dumps({
            "conn_type": "smtp", "host": smtp.host, "port": smtp.port,
            "extra": {"from_email": "shop@triggerflow.test", "disable_ssl": True, "disable_tls": True},
        }))
        monkeypatch.setenv("AIRFLOW_CONN_TRIGGERS_DB", json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": store_url}}))
        upsert_profiles(store_engine, [
            {"last_name": None, "locale": None, "timezone": None, "ecid": None, "declared_id": None, **p} for p in PROFILES
        ])
        load_demo_catalog(store_engine)  # the shipped routes email only products the catalogue knows
        clear_token_cache()  # as in a fresh task process
        emu.client.publish([
            trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-ADA", products=["TI-BTL-750"]),
            trigger_message(trigger_id=BROWSE_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-GRACE"),
        ])
        token_requests_before = emu.client.stats()["token_requests"] + emu.client.stats().get("jwt_exchanges", 0)

        dag = _dag()
        logical = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)
        runs = []
        for minute in range(3):
            clear_token_cache()  # every task is a new process: only the store can share the token
            run = dag.test(logical_date=logical + timedelta(minutes=minute))
            assert run.state == DagRunState.SUCCESS, (kind, auth, minute)
            runs.append(run)

        mails = smtp.wait_for(2)
        assert sorted(m["To"] for m in mails) == ["ada@example.com", "grace@example.com"]
        assert len(smtp.messages()) == 2  # later runs sent nothing more
        stats = emu.client.stats()
        minted = stats["token_requests"] + stats.get("jwt_exchanges", 0) - token_requests_before
        assert minted == 1, stats
        if auth == "jwt":
            assert stats["jwt_exchanges"] >= 1
        with store_engine.connect() as conn:
            sources = set(conn.execute(select(batch.c.source)).scalars())
            sent = conn.execute(select(run_summary.c.sent).where(run_summary.c.run_id == runs[0].run_id)).scalar_one()
            stored_token = conn.execute(select(ims_token.c.ciphertext)).scalar_one()
        assert sent == 2
        expected_prefix = "journal:" if kind == "journal" else "pipeline:triggerflow-test:triggers"
        assert all(s.startswith(expected_prefix) for s in sources), sources
        assert "bearer" not in stored_token.lower() and len(stored_token) > 40
