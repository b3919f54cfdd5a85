"""End to end: identity fallback, every eligibility rule, locales and the unsubscribe loop, through
the real `trigger_emails` DAG (dag.test()), the emulator and the SMTP server as real processes, and
the unsubscribe plugin in a real Airflow API server.

Run 1 gets one event per rule and asserts the exact emails received and that the decision log
explains every event that did not become an email. Between runs, the customer held for quiet
hours reaches the end of the window (its ``not_before`` is moved to the past: the test cannot wait
until tomorrow morning), and Ada unsubscribes with the one-click link of the email she received,
POSTed to the real API server as a mail client does. Run 2 then sends the held email and
suppresses Ada's next trigger.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import select, update

from devstack.messages import (
    BROWSE_ABANDONMENT_TRIGGER_ID,
    CART_ABANDONMENT_TRIGGER_ID,
    load_demo_catalog,
    trigger_message,
)
from devstack.processes import start_emulator, start_smtp_sink
from include.triggerflow.profiles import upsert_profiles
from include.triggerflow.suppression import add_entries
from tests.support import UNSUBSCRIBE_CONN_JSON

pytestmark = pytest.mark.e2e

UNCONFIGURED = "0badc0de-0000-4000-8000-00000000beef"
ECID = "55555555555555555555555555555555555555"
SECRET = json.loads(UNSUBSCRIBE_CONN_JSON)["password"]
FAR = "Asia/Tokyo"  # nine hours from UTC: never inside the quiet window the test sets around now


def _profile(cid: str, email: str, shopper: str | None, **kw) -> dict:
    base = {"customer_id": cid, "email": email, "first_name": cid.title(), "last_name": None, "locale": "en_US",
            "timezone": FAR, "shopper_id": shopper, "ecid": None, "declared_id": None, "opted_out": False}
    return {**base, **kw}


PROFILES = [
    _profile("ada", "ada@example.com", "SHOP-ADA", first_name="Ada"),
    _profile("grace", "grace@example.com", "SHOP-GRACE", first_name="Grace", locale="fr_FR"),
    _profile("optout", "optout@example.com", "SHOP-OPTOUT", opted_out=True),
    _profile("badaddr", "bob at example.com", "SHOP-BADADDR"),
    _profile("blocked", "someone@blocked.example", "SHOP-BLOCKED"),
    _profile("bounced", "bounced@example.com", "SHOP-BOUNCED"),
    _profile("twin1", "twin1@example.com", "SHOP-TWIN"),
    _profile("twin2", "twin2@example.com", "SHOP-TWIN"),
    _profile("ecid", "ecid@example.com", None, first_name="Edsger"),
    _profile("night", "night@example.com", "SHOP-NIGHT", timezone="UTC"),
    _profile("stale", "stale@example.com", "SHOP-STALE"),
]


def _routing(path: Path, now: datetime) -> Path:
    # A quiet window around "now" in UTC: the profile in UTC is inside it, the others (Tokyo) not.
    start = (now - timedelta(minutes=30)).strftime("%H:%M")
    end = (now + timedelta(minutes=31)).strftime("%H:%M")
    identity = [{"dimension": "eVar01", "profile_column": "shopper_id"}, {"field": "mcId", "profile_column": "visitor_id"}]
    doc = {
        "version": 1,
        "defaults": {"rules": {"validity": "6h", "frequency_cap": {"max": 1, "per": "24h"},
                               "quiet_hours": {"start": start, "end": end}}},
        "triggers": [
            {"name": "cart_abandonment", "trigger_id": CART_ABANDONMENT_TRIGGER_ID, "template": "cart_abandonment",
             "subject": {"default": "{{ profile.first_name }}, you left something in your cart",
                         "fr": "{{ profile.first_name }}, votre panier vous attend"},
             "identity": identity, "multiple_profiles": "skip",
             "link_hosts": ["shop.example.com"], "links": {"cart": "https://shop.example.com/cart"}},
            {"name": "browse_abandonment", "trigger_id": BROWSE_ABANDONMENT_TRIGGER_ID, "template": "browse_abandonment",
             "subject": "{{ profile.first_name }}, still looking?", "identity": identity,
             "link_hosts": ["shop.example.com"], "links": {"shop": "https://shop.example.com/"}},
        ],
    }
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags" / "trigger_emails.py"))
    assert bag.import_errors == {}
    return bag.get_dag("trigger_emails")


def _cart(shopper: str | None, ts: int, **kw) -> dict:
    return trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id=shopper, triggered_at_ms=ts,
                           products=["ALP-SHL-JKT"], **kw)


@pytest.fixture
def world(tmp_path: Path, airflow_db: Path, store_url: str, store_engine, monkeypatch: pytest.MonkeyPatch):
    from include.triggerflow.store.schema import profile_visitor_ids

    now = datetime.now(UTC)
    monkeypatch.setenv("TRIGGERFLOW_ROUTING_FILE", str(_routing(tmp_path / "routing.yaml", now)))
    with start_emulator(log_path=tmp_path / "emulator.log") as emu, \
            start_smtp_sink(tmp_path / "outbox", log_path=tmp_path / "smtp.log") as smtp:
        monkeypatch.setenv("AIRFLOW_CONN_ADOBE_IMS", json.dumps({
            "conn_type": "http", "host": emu.base_url, "login": emu.client.client_id,
            "password": emu.client.client_secret, "extra": {"org_id": emu.client.org_id}}))
        monkeypatch.setenv("AIRFLOW_CONN_ADOBE_TRIGGERS", json.dumps({"conn_type": "http", "host": emu.client.journal_url}))
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_TRIGGERS", json.dumps({
            "conn_type": "smtp", "host": smtp.host, "port": smtp.port,
            "extra": {"from_email": "shop@triggerflow.test", "disable_ssl": True, "disable_tls": True, "retry_limit": 0}}))
        monkeypatch.setenv("AIRFLOW_CONN_TRIGGERS_DB", json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": store_url}}))
        upsert_profiles(store_engine, PROFILES)
        load_demo_catalog(store_engine)  # the shipped routes email only products the catalogue knows
        with store_engine.begin() as conn:
            conn.execute(profile_visitor_ids.insert(), [{"visitor_id": ECID, "customer_id": "ecid", "seen_at": now}])
        add_entries(store_engine, ["@blocked.example"], reason="complaint feed")
        add_entries(store_engine, ["bounced@example.com"], source="hard-bounce")
        yield emu, smtp, store_engine, now


def test_rules_identity_locales_and_unsubscribe_end_to_end(world, tmp_path: Path) -> None:
    from airflow.utils.state import DagRunState

    from devstack.airflow_stack import airflow_standalone, free_port
    from include.triggerflow.stages.report import compute_report
    from include.triggerflow.store.schema import batch, send
    from include.triggerflow.unsubscribe import UnsubscribeLinks

    emu, smtp, engine, now = world
    ms = int(now.timestamp() * 1000)
    emu.client.publish([
        _cart("SHOP-ADA", ms - 120_000),                                   # matched
        _cart("SHOP-ADA", ms - 60_000),                                    # duplicate (same trigger, 1 min later)
        trigger_message(trigger_id=BROWSE_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-ADA", triggered_at_ms=ms),  # capped
        _cart("SHOP-GRACE", ms),                                           # matched, in French
        _cart("SHOP-OPTOUT", ms),                                          # suppressed:opt-out
        _cart("SHOP-BADADDR", ms),                                         # suppressed:invalid-address
        _cart("SHOP-BLOCKED", ms),                                         # suppressed:block-list (domain)
        _cart("SHOP-BOUNCED", ms),                                         # suppressed:hard-bounce
        _cart("SHOP-TWIN", ms),                                            # ambiguous (two profiles, skip)
        _cart(None, ms, mc_id=ECID),                                       # matched through the ECID fallback
        _cart("SHOP-NIGHT", ms),                                           # deferred: quiet hours
        _cart("SHOP-STALE", ms - 7 * 3600 * 1000),                         # expired (validity 6h)
        _cart("SHOP-NOBODY", ms),                                          # unmatched
        trigger_message(trigger_id=UNCONFIGURED, shopper_id="SHOP-ADA"),   # ignored
    ])

    first = _dag().test(logical_date=now.replace(second=0, microsecond=0) - timedelta(minutes=10))
    assert first.state == DagRunState.SUCCESS

    mails = {m["To"]: m for m in smtp.wait_for(3)}
    assert sorted(mails) == ["ada@example.com", "ecid@example.com", "grace@example.com"]
    assert mails["ada@example.com"]["Subject"] == "Ada, you left something in your cart"
    grace = mails["grace@example.com"]
    assert grace["Subject"] == "Grace, votre panier vous attend"
    assert "panier" in grace.get_body(preferencelist=("plain",)).get_content().lower()
    assert mails["ecid@example.com"]["Subject"] == "Edsger, you left something in your cart"
    links = UnsubscribeLinks(SECRET, "http://localhost:8080")
    for rcpt, mail in mails.items():
        assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        url = mail["List-Unsubscribe"].strip("<>").split(">")[0]
        claim = links.verify(url.split("token=", 1)[1])
        assert claim.customer_id == rcpt.split("@")[0]
        html = mail.get_body(preferencelist=("html",)).get_content()
        assert "token=" in html  # the footer link of the body is the same signed URL

    # The decision log explains every event that did not become an email.
    from include.triggerflow.decisions import query_decisions

    rows = query_decisions(engine, run_id=first.run_id)
    by_code: dict[str, list[dict]] = {}
    for row in rows:
        by_code.setdefault(row["decision"], []).append(row)
    assert {k: len(v) for k, v in by_code.items()} == {
        "matched": 3, "duplicate": 1, "capped": 1, "suppressed:opt-out": 1, "suppressed:invalid-address": 1,
        "suppressed:block-list": 1, "suppressed:hard-bounce": 1, "ambiguous": 1, "deferred": 1, "expired": 1,
        "unmatched": 1, "ignored": 1,
    }
    for row in rows:
        assert row["detail"], row  # every decision says why
    unsent = [r for r in rows if r["decision"] not in ("matched", "deferred")]
    assert all(r["send_state"] is None for r in unsent)  # no ledger row for any of them
    assert [r["profile_id"] for r in by_code["capped"]] == ["ada"]
    assert [r["profile_id"] for r in by_code["duplicate"]] == ["ada"]
    assert by_code["ambiguous"][0]["detail"] == "2 profiles matched by eVar01->shopper_id; multiple_profiles: skip"
    assert by_code["unmatched"][0]["detail"] == (
        "no profile with shopper_id='SHOP-NOBODY'; no profile with visitor_id='" + "0" * 38 + "'"
    )
    assert by_code["deferred"][0]["send_state"] == "scheduled" and "quiet hours" in by_code["deferred"][0]["detail"]
    # per customer, across runs
    assert {d["decision"] for d in query_decisions(engine, customer="ada")} == {"matched", "duplicate", "capped"}
    with engine.connect() as conn:
        first_batch = conn.execute(select(batch.c.batch_id).where(batch.c.run_id == first.run_id)).scalar_one()
    report = compute_report(engine, first_batch)
    assert report.balanced, report.problems
    assert (report.counts["scheduled"], report.counts["capped"], report.counts["suppressed"]) == (1, 1, 4)

    # Between the runs: the night customer's quiet window ends; Ada unsubscribes with one click.
    with engine.begin() as conn:
        conn.execute(update(send).where(send.c.state == "scheduled").values(not_before=now - timedelta(seconds=1)))
    ada_url = mails["ada@example.com"]["List-Unsubscribe"].strip("<>").split(">")[0]
    token = ada_url.split("token=", 1)[1]
    port = free_port()
    env = {
        "AIRFLOW_CONN_TRIGGERS_DB": json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": str(engine.url.render_as_string(hide_password=False))}}),
        "AIRFLOW_CONN_TRIGGERFLOW_UNSUBSCRIBE": UNSUBSCRIBE_CONN_JSON,
    }
    with airflow_standalone(tmp_path / "api", env_overrides=env, api_port=port) as af:
        done = requests.post(f"{af.base_url}/triggerflow/unsubscribe/?token={token}", data="List-Unsubscribe=One-Click",
                             headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=30)
        assert done.status_code == 200, done.text[:300]
        tampered = requests.post(f"{af.base_url}/triggerflow/unsubscribe/?token={token[:-2]}xx",
                                 data="List-Unsubscribe=One-Click",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=30)
        assert tampered.status_code == 400

    emu.client.publish([_cart("SHOP-ADA", ms + 1000)])  # a new cart: suppression is checked before dedup and caps
    second = _dag().test(logical_date=now.replace(second=0, microsecond=0) - timedelta(minutes=9))
    assert second.state == DagRunState.SUCCESS
    later = smtp.wait_for(4)
    assert sorted(m["To"] for m in later) == ["ada@example.com", "ecid@example.com", "grace@example.com", "night@example.com"]
    assert [(d["decision"], d["detail"]) for d in query_decisions(engine, run_id=second.run_id)] == [
        ("suppressed:opt-out", "profile opted out")
    ]
    with engine.connect() as conn:
        night = conn.execute(select(send.c.state, send.c.sent_at).where(send.c.profile_id == "night")).one()
    assert night.state == "sent" and night.sent_at is not None
