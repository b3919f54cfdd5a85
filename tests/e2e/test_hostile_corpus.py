"""The hostile corpus (devstack/hostile_corpus.py) through the real ``trigger_emails`` DAG.

Every case of the corpus, with good messages between them in the same pages, goes through the real
emulator process and the real SMTP sink; the DAG runs with dag.test() on the store of the test
(SQLite, or PostgreSQL with TRIGGERFLOW_TEST_PG_URL), on each source kind:

* the I/O Events journal carries every case (a JSON value as the item's event, text as a JSON
  string, bytes that are not UTF-8 or too big for a JSON request verbatim);
* the Pipeline stream carries every case that is a producer's message (the pipeline builds the
  envelope around it; cases that attack the envelope itself cannot travel there).

The run must succeed and balance; every message must land (landed == published) and end in the
bucket its case names, with a reason; the source position must move past all of them; the good
messages and the cases fit to send are emailed exactly once, with nothing the message tried to
smuggle into the email; a second run pulls nothing new and sends nothing.

A failing run lists every case that ended elsewhere, with its status, reasons and decision, so
each can be routed to the stage that owns it.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from devstack.hostile_corpus import (
    Bucket,
    Delivery,
    HostileCase,
    corpus_profiles,
    hostile_corpus,
)
from devstack.messages import load_demo_catalog
from include.triggerflow.profiles import upsert_profiles
from tests.e2e.fault_helpers import (
    assert_balanced,
    batch_of,
    customers,
    emulator_stack,
    event_count,
    keys_received,
    load_dag,
    minute,
    recipients_received,
    source_connection,
    summary,
    triggers_for,
)

pytestmark = pytest.mark.e2e

#: a good message after every this many corpus cases, so good and hostile share pages
GOOD_EVERY = 12
PAGE_SIZE = 25
#: the emulator's control plane takes JSON bodies up to 2 MB; bigger messages go as bytes
INJECT_JSON_MAX = 1_500_000

#: (partition, position) of a message as tf_event records it
Key = tuple[int, str]


def _source(kind: str, emu) -> dict[str, Any]:
    return source_connection(kind, emu, page_size=PAGE_SIZE, environment="hostile")


@pytest.fixture(params=["journal", "pipeline"])
def kind(request) -> str:
    return request.param


@pytest.fixture
def stack(kind: str, tmp_path: Path, airflow_db: Path, store_url: str, store_engine, monkeypatch: pytest.MonkeyPatch):
    with emulator_stack(tmp_path, store_url, monkeypatch, lambda emu: _source(kind, emu)) as (emu, smtp):
        load_demo_catalog(store_engine)  # the shipped routes email only products the catalogue knows
        yield emu, smtp, store_engine


def _key(kind: str, receipt: dict[str, Any]) -> Key:
    [placed] = receipt["positions"]
    if kind == "journal":  # inject_raw answers with the position, publish with {partition, offset, position}
        return 0, str(placed["position"] if isinstance(placed, dict) else placed)
    return int(placed["partition"]), str(placed["offset"])


def _inject(kind: str, emu, case: HostileCase) -> Key:
    """Publish the case's message to the source; returns where it was placed.

    Journal: a JSON value (or UTF-8 text, as a JSON string) through ``inject_raw``; bytes that are
    not UTF-8, and messages too big for a JSON request, verbatim as the item's event. Pipeline:
    the case's pipelineMessage bytes, in an envelope the emulator builds at the next offset."""
    if kind == "pipeline":
        message = case.pipeline_message_bytes()
        assert message is not None, case.name
        return _key(kind, emu.client.publish_bytes([message], as_="pipeline_message"))
    try:
        event = case.journal_event()
    except UnicodeDecodeError:
        event = None
    if (event is None and case.delivery is Delivery.BYTES) or case.size > INJECT_JSON_MAX:
        return _key(kind, emu.client.publish_bytes([case.as_bytes()]))
    return _key(kind, emu.client.inject_raw([event]))


def _cases(kind: str) -> list[HostileCase]:
    cases = hostile_corpus(int(time.time() * 1000))
    if kind == "pipeline":
        cases = [c for c in cases if c.pipeline_message_bytes() is not None]
    return cases


def _run(offset: int = 0):
    from airflow.utils.state import DagRunState

    run = load_dag().test(logical_date=minute(offset))
    assert run.state == DagRunState.SUCCESS
    return run


def _outcomes(engine) -> dict[Key, dict[str, Any]]:
    """{(partition, position): {status, reasons, decision, detail, ledger state, reply}} of every event."""
    from include.triggerflow.store.schema import decision, event, quarantine, send

    stmt = (
        select(event.c.src_partition, event.c.src_position, event.c.status, quarantine.c.reasons, decision.c.decision,
               decision.c.detail, send.c.state, send.c.smtp_reply)
        .select_from(
            event.outerjoin(quarantine, quarantine.c.event_id == event.c.event_id)
            .outerjoin(decision, decision.c.event_id == event.c.event_id)
            .outerjoin(send, send.c.event_id == event.c.event_id)
        )
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    keys = Counter((int(r[0]), str(r[1])) for r in rows)
    assert max(keys.values(), default=1) == 1, "an event with several quarantine, decision or ledger rows"
    names = ("status", "reasons", "decision", "detail", "state", "reply")
    return {(int(r[0]), str(r[1])): dict(zip(names, r[2:])) for r in rows}


def _html(message: EmailMessage) -> str:
    return "".join(part.get_content() for part in message.walk() if part.get_content_type() == "text/html")


def _mismatch(case: HostileCase, got: dict[str, Any] | None, mail: list[EmailMessage]) -> str | None:
    """Why the case did not end where it must (None when it did)."""
    if got is None:
        return "not landed"
    reasons = got["reasons"] or ""
    if case.expect is Bucket.QUARANTINED:
        if got["status"] != "quarantined":
            return f"status {got['status']}, decision {got['decision']}: {got['detail']}"
        if case.reason not in reasons:
            return f"quarantined, but the reasons lack {case.reason!r}: {reasons[:400]}"
        return None
    if got["status"] != "valid":
        return f"status {got['status']}: {reasons[:400]}"
    if case.expect is Bucket.DECIDED:
        if got["decision"] != case.reason:
            return f"decision {got['decision']}: {got['detail']}"
        return None if got["detail"] else "decided without a detail"
    if case.expect is Bucket.FAILED:
        if (got["decision"], got["state"]) != ("matched", "failed") or case.reason not in (got["reply"] or ""):
            return f"decision {got['decision']}, ledger {got['state']}: {got['reply']}"
        return f"{len(mail)} emails at the sink" if mail else None
    if (got["decision"], got["state"]) != ("matched", "sent"):
        return f"decision {got['decision']} ({got['detail']}), ledger {got['state']}: {got['reply']}"
    if len(mail) != 1:
        return f"{len(mail)} emails at the sink"
    message = mail[0]
    if message["Bcc"] is not None or message["Cc"] is not None:
        return "the email carries a Bcc or Cc header"
    html = _html(message)
    found = [text for text in case.forbidden if text in html]
    return f"the email's HTML contains {found}" if found else None


def _address(shopper_id: str | None) -> str:
    return f"{(shopper_id or '').lower()}@example.com"


def _positions(engine) -> dict[int, str]:
    from include.triggerflow.store.schema import source_position

    with engine.connect() as conn:
        return {int(p): str(pos) for p, pos in conn.execute(select(source_position.c.partition, source_position.c.position))}


def _assert_position_past(kind: str, engine, keys: list[Key]) -> None:
    """The stored position is past every published message: the journal's is the last position
    read, a Pipeline partition's the next offset to read."""
    stored = _positions(engine)
    if kind == "journal":
        assert stored == {0: max((position for _, position in keys), key=lambda p: (len(p), p))}
        return
    last: dict[int, int] = defaultdict(int)
    for partition, offset in keys:
        last[partition] = max(last[partition], int(offset))
    assert {p: int(stored.get(p, -1)) for p in last} == {p: o + 1 for p, o in last.items()}


def test_hostile_corpus_through_the_dag(kind: str, stack) -> None:
    emu, smtp, engine = stack
    cases = _cases(kind)
    good_people = customers(1 + len(cases) // GOOD_EVERY, prefix="G")
    upsert_profiles(engine, corpus_profiles(cases) + good_people)
    good_messages = triggers_for(good_people)

    # good messages between the cases, so each page holds both
    placed: dict[str, Key] = {}
    good: list[Key] = []
    for i, case in enumerate(cases):
        if i % GOOD_EVERY == 0:
            good.append(_key(kind, emu.client.publish([good_messages[i // GOOD_EVERY]])))
        placed[case.name] = _inject(kind, emu, case)
    published = len(cases) + len(good)

    run = _run()

    outcomes = _outcomes(engine)
    assert len(outcomes) == published, "landed != published"
    assert {k: outcomes.get(k, {}).get("state") for k in good} == {k: "sent" for k in good}

    mail = smtp.messages()
    by_recipient: dict[str, list[EmailMessage]] = defaultdict(list)
    for message in mail:
        by_recipient[str(message["X-Envelope-To"])].append(message)
    mismatches = {
        case.name: why
        for case in cases
        if (why := _mismatch(case, outcomes.get(placed[case.name]), by_recipient.get(_address(case.shopper_id), [])))
    }
    assert mismatches == {}, f"{kind}: cases that did not end in their bucket:\n" + "\n".join(
        f"  {name}: {why}" for name, why in mismatches.items()
    )

    # every email exactly once: the good ones and the corpus cases fit to send
    assert set(keys_received(mail).values()) == {1}
    expected = {p["email"] for p in good_people} | {_address(c.shopper_id) for c in cases if c.expect is Bucket.SENT}
    assert recipients_received(mail) == {address: 1 for address in expected}

    counts = summary(engine, batch_of(engine, run.run_id))
    assert_balanced(counts)
    assert counts["pulled"] == published
    assert counts["quarantined"] == sum(c.expect is Bucket.QUARANTINED for c in cases)
    assert counts["failed"] == sum(c.expect is Bucket.FAILED for c in cases)
    _assert_position_past(kind, engine, [*placed.values(), *good])

    # past every message: the next run pulls nothing and sends nothing
    again = _run(offset=1)
    assert event_count(engine) == published
    assert len(smtp.messages()) == len(mail)
    again_counts = summary(engine, batch_of(engine, again.run_id))
    assert_balanced(again_counts)
    assert again_counts["pulled"] == 0
    _assert_position_past(kind, engine, [*placed.values(), *good])
