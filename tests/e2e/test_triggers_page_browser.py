"""The Triggers page as an operator uses it: in a real headless Chromium, inside the Airflow UI.

One stack for the whole module (``world``): the store (SQLite, or PostgreSQL under
TRIGGERFLOW_TEST_PG_URL, where Airflow's metadata goes to PostgreSQL too), the Adobe emulator, the
SMTP sink and ``airflow standalone`` with the project's plugins. Five known customers (one opted
out) fire cart abandonments five minutes ago; one trigger names nobody (unmatched); two journal items are hostile
(one carries a ``<script>`` and an ``onerror`` handler, one is not an object: both quarantined);
one more trigger waits behind ``max_events``, so the run also raises the SLA alert. The scheduler
runs ``trigger_emails`` once.

Then Chromium (Debian's package through Playwright, devstack/browser.py) opens /plugin/pipelined,
is sent to Airflow's login form, signs in as admin/admin, lands in the UI with the page in its
iframe, and each test walks the iframe's nav bar to one view and checks what it shows against the
store: the runs, one run's ledger, the quarantine (escaped: the payload's script never ran), the
decision search by customer id and by address, the alerts; then presses "reprocess" and checks
through Airflow's REST API that a ``trigger_reprocess`` run exists with the form's range.

Screenshots of every view go to the test's tmp folder, and to docs/img/triggers-page-<view>.png
with TRIGGERFLOW_UPDATE_SCREENSHOTS=1 (never under CI: the tree is not written there).

Without Chromium the module is skipped with the reason — except under CI (CI=true), where that
is a failure: bin/test installs the package there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select

from devstack.browser import VIEWPORT, chromium_missing, headless_chromium, login_through_form
from devstack.messages import CART_ABANDONMENT_TRIGGER_ID, load_demo_catalog, trigger_message
from devstack.processes import start_emulator, start_smtp_sink
from include.triggerflow.profiles import upsert_profiles
from tests.e2e.fault_helpers import PROJECT_ROOT, batch_of, connection_env, customers, triggers_for

pytestmark = pytest.mark.e2e

DAG_ID = "trigger_emails"
REPROCESS_DAG_ID = "trigger_reprocess"
IFRAME = "iframe[title='Triggers status']"  # the external view's name (plugins/pipelined_status.py)
SCREENSHOT_DIR = PROJECT_ROOT / "docs" / "img"
UPDATE_SCREENSHOTS = os.environ.get("TRIGGERFLOW_UPDATE_SCREENSHOTS") == "1" and os.environ.get("CI") != "true"
TIMEOUT_MS = 30_000
# What the hostile payload would set if the page let its markup run (in the iframe's window).
PWNED = "__tf_pwned"
HOSTILE_TYPE = f"<script>window.{PWNED}=1</script><img src=x onerror=window.{PWNED}=2>\"'\u2028"
CUSTOMERS = 4  # emailed


@dataclass
class World:
    af: Any  # devstack.airflow_stack.Stack
    engine: Any
    run_id: str
    batch_id: str
    people: list[dict[str, Any]]
    shots: Path


@pytest.fixture(scope="module")
def chromium_ready() -> None:
    """Skip (or, under CI, fail) before anything is started when no browser can run."""
    reason = chromium_missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"the Triggers page browser test cannot run under CI: {reason} (bin/test installs it as root)")
    pytest.skip(f"no headless browser: {reason}")


@contextlib.contextmanager
def _module_store(folder: Path) -> Iterator[str]:
    server = os.environ.get("TRIGGERFLOW_TEST_PG_URL")
    if not server:
        yield f"sqlite:///{folder / 'store.db'}"
        return
    from devstack.ensure_postgres import scratch_database

    with scratch_database(server, prefix="tf_browser") as url:
        yield url


@pytest.fixture(scope="module")
def world(chromium_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from devstack.airflow_stack import airflow_standalone, postgres_metadata_db
    from include.triggerflow.store.engines import get_engine
    from include.triggerflow.store.migrations import create_schema

    tmp = tmp_path_factory.mktemp("triggers-page")
    people = customers(CUSTOMERS + 1)
    people[-1]["opted_out"] = True  # C005: the "why did this customer not get the email" case
    with contextlib.ExitStack() as stack:
        store_url = stack.enter_context(_module_store(tmp))
        engine = get_engine(store_url)
        create_schema(engine)
        upsert_profiles(engine, people)
        load_demo_catalog(engine)  # the shipped routes email only products the catalogue knows

        emu = stack.enter_context(start_emulator(log_path=tmp / "emulator.log"))
        smtp = stack.enter_context(start_smtp_sink(tmp / "outbox", log_path=tmp / "smtp.log"))
        # Every trigger fired five minutes ago: with the SLA threshold at one minute, the one
        # left behind max_events (as old as the newest pulled) raises the SLA alert, an active
        # alert for the alerts view.
        fired_ms = int(datetime.now(UTC).timestamp() * 1000) - 300_000
        emu.client.publish(triggers_for(people, later_ms=-180_000))
        emu.client.publish([trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-NOBODY",
                                            triggered_at_ms=fired_ms)])
        emu.client.inject_raw([
            {"envelopeType": HOSTILE_TYPE, "note": "<b>bold</b> & \"quoted\""},
            [1, 2, 3],  # not an object
        ])
        emu.client.publish(triggers_for(customers(1, prefix="W"), later_ms=-180_000))  # waits: the backlog
        pulled = len(people) + 1 + 2

        pg_server = os.environ.get("TRIGGERFLOW_TEST_PG_URL")
        metadata_url = stack.enter_context(postgres_metadata_db(pg_server)) if pg_server else None
        env = {**connection_env(emu, smtp, store_url), "AIRFLOW_VAR_TRIGGERFLOW_ALERT_EMAILS": "ops@shop.test"}
        af = stack.enter_context(airflow_standalone(tmp / "airflow", env_overrides=env, metadata_url=metadata_url))
        run_id = af.trigger(DAG_ID, conf={"max_events": pulled, "sla_alert_minutes": 1})
        state = af.wait_run(DAG_ID, run_id, timeout=240)
        assert state == "success", (af.task_instances(DAG_ID, run_id), af.log_tail())
        af.wait_dag(REPROCESS_DAG_ID)  # the reprocess button starts it through the REST API
        yield World(af=af, engine=engine, run_id=run_id, batch_id=batch_of(engine, run_id), people=people,
                    shots=tmp / "screenshots")


@pytest.fixture(scope="module")
def ui(world: World) -> Iterator[Any]:
    """A Chromium page signed in through Airflow's login form, at /plugin/pipelined."""
    with headless_chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(TIMEOUT_MS)
        login_through_form(page, world.af.base_url, "/plugin/pipelined", "admin", "admin")
        yield page


# -- helpers ---------------------------------------------------------------------------------------


def _frame(page: Any) -> Any:
    """The Playwright Frame of the plugin page inside the UI shell."""
    page.locator(IFRAME).wait_for()
    frame = page.locator(IFRAME).element_handle().content_frame()
    assert frame is not None
    return frame


def _open(world: World, page: Any, view: str) -> Any:
    """Reload the UI at /plugin/pipelined and click ``a#nav-<view>`` inside the iframe (the nav
    bar's relative links must work there); returns the iframe's Frame once it loaded."""
    page.goto(f"{world.af.base_url}/plugin/pipelined")
    frame = _frame(page)
    link = frame.locator(f"a#nav-{view}")
    link.wait_for()
    with frame.expect_navigation():
        link.click()
    frame.wait_for_load_state()
    return frame


def _shot(world: World, page: Any, view: str) -> Path:
    world.shots.mkdir(parents=True, exist_ok=True)
    path = world.shots / f"triggers-page-{view}.png"
    page.screenshot(path=str(path))
    if UPDATE_SCREENSHOTS:
        (SCREENSHOT_DIR / path.name).write_bytes(path.read_bytes())
    return path


def _cell(row: Any, name: str) -> str:
    return str(row.locator(f"td.{name}").inner_text()).strip()


def _int(text: str) -> int:
    match = re.search(r"-?\d[\d,]*", text)
    assert match, f"no number in {text!r}"
    return int(match.group().replace(",", ""))


def _no_script_ran(frame: Any, page: Any) -> None:
    assert frame.evaluate(f"typeof window.{PWNED}") == "undefined"
    assert page.evaluate(f"typeof window.{PWNED}") == "undefined"


# -- the views -------------------------------------------------------------------------------------


def test_login_lands_in_the_ui_with_the_status_page_in_its_iframe(world: World, ui: Any) -> None:
    from include.triggerflow.store.schema import alert

    frame = _frame(ui)
    for view in ("status", "runs", "quarantine", "search", "alerts"):
        frame.locator(f"a#nav-{view}").wait_for()
    with world.engine.connect() as conn:
        active = conn.execute(select(func.count()).select_from(alert).where(alert.c.resolved_at.is_(None))).scalar_one()
    assert _int(frame.locator("a#active-alerts span#active-alert-count").inner_text()) == active >= 1
    # the shell's URL follows the iframe (/plugin/pipelined/<path in the plugin>)
    assert re.match(r"/plugin/pipelined(/|$)", urlsplit(ui.url).path), ui.url
    _shot(world, ui, "status")


def test_runs_view_shows_the_run_with_the_store_counts(world: World, ui: Any) -> None:
    from include.triggerflow.store.schema import run_summary

    frame = _open(world, ui, "runs")
    with world.engine.connect() as conn:
        summary = conn.execute(select(run_summary).where(run_summary.c.batch_id == world.batch_id)).mappings().one()
    row = frame.locator(f"table#runs tr[data-batch-id='{world.batch_id}']")
    row.wait_for()
    assert _cell(row, "run-id") == world.run_id
    assert _cell(row, "state") == "succeeded"  # the report recorded the run's outcome
    for name in ("pulled", "valid", "quarantined", "sent", "suppressed", "failed", "pending"):
        assert _int(_cell(row, name)) == summary[name], name
    assert (summary["pulled"], summary["quarantined"], summary["sent"], summary["suppressed"]) == (
        CUSTOMERS + 4, 2, CUSTOMERS, 1)
    assert _cell(row, "balanced") == ("yes" if summary["balanced"] else "no")
    p95 = json.loads(summary["counts"])["latency_s"]["p95"]
    assert float(re.sub(r"[^\d.]", "", _cell(row, "latency-p95"))) == pytest.approx(p95, abs=1.0)
    _shot(world, ui, "runs")


def test_run_view_shows_the_ledger_with_smtp_replies(world: World, ui: Any) -> None:
    from include.triggerflow.store.schema import send

    frame = _open(world, ui, "runs")
    row = frame.locator(f"table#runs tr[data-batch-id='{world.batch_id}']")
    with frame.expect_navigation():
        row.locator("a.ledger-link").click()
    with world.engine.connect() as conn:
        sends = conn.execute(select(send).where(send.c.batch_id == world.batch_id)).mappings().all()
    assert _int(frame.locator("span#ledger-count").inner_text()) == len(sends) == CUSTOMERS
    for stored in sends:
        shown = frame.locator(f"table#ledger tr[data-send-id='{stored['send_id']}']")
        assert _cell(shown, "recipient") == stored["recipient"]
        assert _cell(shown, "state") == stored["state"] == "sent"
        assert _int(_cell(shown, "smtp-code")) == stored["smtp_code"] == 250
        assert _cell(shown, "smtp-reply") in str(stored["smtp_reply"])
        assert _cell(shown, "route") == stored["route"]
    _shot(world, ui, "run")


def test_quarantine_view_shows_hostile_payloads_escaped(world: World, ui: Any) -> None:
    from include.triggerflow.store.schema import quarantine

    frame = _open(world, ui, "runs")
    row = frame.locator(f"table#runs tr[data-batch-id='{world.batch_id}']")
    with frame.expect_navigation():
        row.locator("a.quarantine-link").click()
    with world.engine.connect() as conn:
        held = conn.execute(select(quarantine).where(quarantine.c.batch_id == world.batch_id)).mappings().all()
    assert _int(frame.locator("span#quarantine-count").inner_text()) == len(held) == 2
    payloads = []
    for stored in held:
        shown = frame.locator(f"table#quarantine tr[data-event-id='{stored['event_id']}']")
        assert _cell(shown, "reasons")  # every quarantined event says why
        payloads.append(_cell(shown, "payload"))
        # the attacker's markup is text: no element came out of the payload or the reasons
        assert shown.locator("td.payload *, td.reasons *").count() == 0
    hostile = next(p for p in payloads if "envelopeType" in p)
    assert f"<script>window.{PWNED}=1</script>" in hostile  # shown literally, as text
    _no_script_ran(frame, ui)
    _shot(world, ui, "quarantine")


def test_search_by_customer_id_and_by_address(world: World, ui: Any) -> None:
    """An emailed customer by id: one "matched" decision and its ledger row. The opted-out one by
    address: the decision says why no email went, and the ledger holds nothing for them."""
    from include.triggerflow.store.schema import decision, send

    emailed, opted_out = world.people[0], world.people[-1]
    cases = ((emailed, emailed["customer_id"], "matched", "search"),
             (opted_out, opted_out["email"], "suppressed:opt-out", "search-address"))
    for person, query, expected, view in cases:
        frame = _open(world, ui, "search")
        box = frame.locator("input[name='q']")
        box.fill(query)
        with frame.expect_navigation():
            box.press("Enter")
        with world.engine.connect() as conn:
            decided = conn.execute(
                select(decision.c.event_id, decision.c.decision).where(decision.c.profile_id == person["customer_id"])
            ).all()
            ledger = conn.execute(
                select(send.c.send_id, send.c.state, send.c.recipient).where(send.c.profile_id == person["customer_id"])
            ).all()
        assert _int(frame.locator("span#decision-count").inner_text()) == len(decided) == 1
        assert [d for _, d in decided] == [expected]
        rows = frame.locator("table#decisions tbody tr")
        assert rows.count() == 1
        assert _cell(rows.first, "decision") == expected
        assert _cell(rows.first, "detail")  # every decision says why
        assert world.batch_id in _cell(rows.first, "batch")
        shown = frame.locator("table#sends tbody tr")
        assert shown.count() == len(ledger) == (1 if expected == "matched" else 0)
        for send_id, state, recipient in ledger:
            row = frame.locator(f"table#sends tr[data-send-id='{send_id}']")
            assert (_cell(row, "state"), _cell(row, "recipient")) == (state, recipient) == ("sent", person["email"])
        _shot(world, ui, view)


def test_alerts_view_shows_the_active_alerts(world: World, ui: Any) -> None:
    from include.triggerflow.store.schema import alert

    frame = _open(world, ui, "alerts")
    with world.engine.connect() as conn:
        active = conn.execute(select(alert).where(alert.c.resolved_at.is_(None))).mappings().all()
        total = conn.execute(select(func.count()).select_from(alert)).scalar_one()
    assert _int(frame.locator("span#alert-count").inner_text()) == len(active) >= 1
    kinds = {row["kind"] for row in active}
    assert "sla-breach" in kinds, kinds
    for stored in active:
        shown = frame.locator(f"table#alerts tr[data-alert-id='{stored['alert_id']}']")
        assert _cell(shown, "kind") == stored["kind"]
    assert frame.locator("table#alerts tr[data-alert-id]").count() == len(active) <= total
    _shot(world, ui, "alerts")


def test_reprocess_button_starts_trigger_reprocess_through_the_api(world: World, ui: Any) -> None:
    from include.triggerflow.store.schema import event, quarantine

    frame = _open(world, ui, "runs")
    with frame.expect_navigation():
        frame.locator(f"table#runs tr[data-batch-id='{world.batch_id}'] a.quarantine-link").click()
    form = frame.locator("form#reprocess")
    since = form.locator("input[name='since']").input_value()
    until = form.locator("input[name='until']").input_value()
    what = form.locator("input[name='what']").input_value()
    assert what == "quarantined"
    with world.engine.connect() as conn:
        received = conn.execute(
            select(event.c.received_at).join(quarantine, quarantine.c.event_id == event.c.event_id)
            .where(quarantine.c.batch_id == world.batch_id)
        ).scalars().all()
    start, end = datetime.fromisoformat(since), datetime.fromisoformat(until)
    assert all(start <= at < end for at in received), (since, until, received)

    with frame.expect_navigation():
        frame.locator("button#reprocess-button").click()
    frame.locator("div#reprocess-result").wait_for()
    run_id = frame.locator("span#reprocess-run-id").inner_text().strip()
    assert run_id, frame.locator("div#reprocess-result").inner_text()
    _shot(world, ui, "reprocess")

    created = world.af.run(REPROCESS_DAG_ID, run_id)  # Airflow's REST API: the run exists
    assert created["conf"] == {"since": since, "until": until, "what": "quarantined"}
    runs = world.af.api("GET", f"/dags/{REPROCESS_DAG_ID}/dagRuns")["dag_runs"]
    assert [r["dag_run_id"] for r in runs] == [run_id]  # exactly one: one press, one run
    # and it runs: the DAG was paused (new DAGs are), the run waited queued until now
    world.af.unpause(REPROCESS_DAG_ID)
    assert world.af.wait_run(REPROCESS_DAG_ID, run_id, timeout=180) == "success", world.af.log_tail()
