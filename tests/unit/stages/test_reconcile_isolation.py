"""Per-event isolation in reconcile (issue 10 item 1): an event whose values the store cannot take,
or whose own step raises, gets a decision with a reason; the rest of its batch is decided and
queued, and the batch balances. Runs on SQLite and, with TRIGGERFLOW_TEST_PG_URL, PostgreSQL
(where NUL in a text value fails an insert)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from devstack.messages import CART_ABANDONMENT_TRIGGER_ID, envelope, trigger_message
from include.triggerflow.config import load_routing
from include.triggerflow.stages import reconcile as reconcile_module
from include.triggerflow.stages.reconcile import NOT_RECONCILED, reconcile_batch, store_text
from include.triggerflow.stages.report import compute_report
from include.triggerflow.store.schema import decision, event, send
from tests.fixtures import decisions_by_event, envelope_json, write_routing

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def _good_profiles(kit) -> None:
    kit.add_profiles(
        {"customer_id": "C1", "email": "ada@example.com", "shopper_id": "SHOP-ADA"},
        {"customer_id": "C2", "email": "grace@example.com", "shopper_id": "SHOP-GRACE"},
    )


def _raw_event(kit, batch_id: str, payload: str) -> int:
    """An event row written the way a valid event is stored, without lifting trigger_ts (which the
    column could not hold for some payloads here): reconcile reads the payload, not the columns."""
    with kit.engine.begin() as conn:
        result = conn.execute(
            insert(event).values(
                batch_id=batch_id, source="test:src", src_partition=0,
                src_position=f"raw-{kit.count(event):06d}", payload=payload,
                received_at=NOW, status="valid",
            )
        )
        return int(result.inserted_primary_key[0])


def _balanced(kit, batch_id: str) -> dict[str, Any]:
    report = compute_report(kit.engine, batch_id)
    assert report.balanced, report.problems
    return report.counts


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param("x\u0000", id="nul"),
        pytest.param("\ud800", id="lone-surrogate"),
        pytest.param("SHOP-\udfff-\u0000", id="both"),
    ],
)
def test_an_unstorable_evar_is_decided_and_the_rest_of_the_batch_goes_on(kit, routing, hostile: str) -> None:
    _good_profiles(kit)
    b = kit.add_batch("b1")
    good = [kit.add_event(b, envelope_json(shopper_id=s, triggered_at_ms=NOW_MS + i))
            for i, s in enumerate(("SHOP-ADA", "SHOP-GRACE"))]
    bad = kit.add_event(b, envelope_json(shopper_id=hostile, triggered_at_ms=NOW_MS + 5))

    result = reconcile_batch(kit.engine, b, routing, now=NOW)

    got = decisions_by_event(kit, b)
    assert [got[i]["decision"] for i in good] == ["matched", "matched"]
    assert got[bad]["decision"] == "unmatched"
    assert got[bad]["customer_key"] == store_text(hostile)
    assert "\ufffd" in got[bad]["customer_key"] and "\x00" not in got[bad]["detail"]
    assert got[bad]["detail"].startswith("no profile with shopper_id=")
    assert sorted(r["event_id"] for r in kit.rows(send, send.c.batch_id == b)) == good
    assert result.counts == {"matched": 2, "unmatched": 1}
    counts = _balanced(kit, b)
    assert (counts["valid"], counts["queued"], counts["unmatched"]) == (3, 2, 1)


def _good_and_raw(kit, monkeypatch, dirty: Callable[[Any], None]) -> tuple[str, int, int]:
    """A batch with Ada's good event and SHOP-RAW's, whose parsed event ``dirty`` changes after
    parsing (a parser that hands raw text over): (batch, good event id, raw event id)."""
    _good_profiles(kit)
    b = kit.add_batch("b1")
    good = kit.add_event(b, envelope_json(shopper_id="SHOP-ADA", triggered_at_ms=NOW_MS))
    bad = kit.add_event(b, envelope_json(shopper_id="SHOP-RAW", triggered_at_ms=NOW_MS + 1))
    real_parse = reconcile_module.parse_envelope

    def parse_without_cleaning(payload: Any) -> Any:
        parsed = real_parse(payload)
        if parsed.dimension_first("eVar01") == "SHOP-RAW":
            dirty(parsed)
        return parsed

    monkeypatch.setattr(reconcile_module, "parse_envelope", parse_without_cleaning)
    return b, good, bad


@pytest.mark.parametrize("hostile", ["x\u0000", "\ud800"], ids=["nul", "lone-surrogate"])
def test_the_write_boundary_holds_when_parsing_did_not_clean(kit, routing, monkeypatch, hostile: str) -> None:
    """Parsing normalises event text; reconcile must not rely on it (an event parsed by an older
    rule, a value built from one): with a parser that hands the raw text over, the event is still
    decided and its batch still goes on."""

    def dirty(parsed: Any) -> None:
        parsed.dimensions["eVar01"] = {"data": [hostile]}
        parsed.trigger_id = parsed.trigger_id + hostile  # unrouted now: decided ignored

    b, good, bad = _good_and_raw(kit, monkeypatch, dirty)
    reconcile_batch(kit.engine, b, routing, now=NOW)

    got = decisions_by_event(kit, b)
    assert got[good]["decision"] == "matched"
    assert (got[bad]["decision"], got[bad]["trigger_id"]) == ("ignored", CART_ABANDONMENT_TRIGGER_ID + store_text(hostile))
    _balanced(kit, b)


def test_a_raw_identity_key_is_looked_up_store_safe(kit, tmp_path: Path, monkeypatch) -> None:
    """The identity key itself, unclean, reaches the profile look-up and the decision row as
    store-safe text (on PostgreSQL a NUL key would fail the look-up, a lone surrogate both stores)."""
    routing = _catch_all(tmp_path)

    def dirty(parsed: Any) -> None:
        parsed.dimensions["eVar01"] = {"data": ["SHOP-\u0000\ud800"]}

    b, good, bad = _good_and_raw(kit, monkeypatch, dirty)
    reconcile_batch(kit.engine, b, routing, now=NOW)

    got = decisions_by_event(kit, b)
    assert got[good]["decision"] == "matched"
    assert (got[bad]["decision"], got[bad]["customer_key"]) == ("unmatched", "SHOP-\ufffd\ufffd")
    _balanced(kit, b)


def test_unstorable_text_in_an_unrouted_trigger_id_is_stored_replaced(kit, routing) -> None:
    b = kit.add_batch("b1")
    eid = _raw_event(kit, b, envelope_json(trigger_id="t\u0000\ud800", shopper_id="SHOP-ADA"))

    reconcile_batch(kit.engine, b, routing, now=NOW)

    row = decisions_by_event(kit, b)[eid]
    assert (row["decision"], row["trigger_id"]) == ("ignored", "t\ufffd\ufffd")
    _balanced(kit, b)


def test_the_same_batch_reconciled_again_decides_nothing_new(kit, routing) -> None:
    _good_profiles(kit)
    b = kit.add_batch("b1")
    kit.add_event(b, envelope_json(shopper_id="SHOP-ADA", triggered_at_ms=NOW_MS))
    kit.add_event(b, envelope_json(shopper_id="\ud800\u0000", triggered_at_ms=NOW_MS + 1))

    first = reconcile_batch(kit.engine, b, routing, now=NOW)
    again = reconcile_batch(kit.engine, b, routing, now=NOW)

    assert first.counts == again.counts == {"matched": 1, "unmatched": 1}
    assert kit.count(send, send.c.batch_id == b) == 1
    assert kit.count(decision, decision.c.batch_id == b) == 2


def _catch_all(tmp_path: Path):
    return load_routing(write_routing(tmp_path / "routing.yaml", [{
        "name": "everything", "trigger_id": "*", "template": "cart_abandonment", "subject": "Hi",
        "identity": {"dimension": "eVar01", "profile_column": "shopper_id"},
    }]))


def _payload(**changes: Any) -> str:
    """An envelope whose trigger body fields are replaced by ``changes`` (raw JSON values)."""
    message = trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-GRACE", triggered_at_ms=NOW_MS)
    message["message"].update(changes)
    return json.dumps(envelope(message, partition=0, offset=1))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        # beyond a datetime: parsing gives no timestamp; before 1970: reconcile refuses it itself
        pytest.param({"triggerTimestamp": 2**70}, "EventProblem: no usable triggerTimestamp", id="ts-beyond-64-bit"),
        pytest.param({"triggerTimestamp": str(10**30)}, "EventProblem: no usable triggerTimestamp", id="ts-digits"),
        pytest.param({"triggerTimestamp": -5}, "EventProblem: triggerTimestamp out of range", id="ts-negative"),
        pytest.param({"triggerTimestamp": None}, "EventProblem: no usable triggerTimestamp", id="ts-missing"),
        pytest.param({"triggerId": "T" * 201}, "EventProblem: triggerId longer than 200 characters", id="long-trigger-id"),
    ],
)
def test_an_event_reconcile_cannot_act_on_gets_a_reason_and_the_batch_balances(
    kit, tmp_path: Path, changes: dict[str, Any], reason: str
) -> None:
    """Validation normally keeps these out; reconcile must still survive them (a replay after a
    validation change, a bug upstream): the event is decided with the reason, the rest is queued."""
    _good_profiles(kit)
    routing = _catch_all(tmp_path)
    b = kit.add_batch("b1")
    good = kit.add_event(b, envelope_json(shopper_id="SHOP-ADA", triggered_at_ms=NOW_MS))
    bad = _raw_event(kit, b, _payload(**changes))

    reconcile_batch(kit.engine, b, routing, now=NOW)

    got = decisions_by_event(kit, b)
    assert got[good]["decision"] == "matched"
    assert got[bad]["decision"] == NOT_RECONCILED
    assert got[bad]["profile_id"] is None
    assert got[bad]["detail"].startswith(f"not reconciled: {reason}")
    assert [r["event_id"] for r in kit.rows(send, send.c.batch_id == b)] == [good]
    _balanced(kit, b)


def test_an_event_whose_rules_raise_is_decided_and_the_others_are_queued(kit, routing, monkeypatch) -> None:
    """A failure inside one event's rules (whatever its cause) costs that event only; the error
    text is kept without the addresses it quotes."""
    _good_profiles(kit)
    b = kit.add_batch("b1")
    ada = kit.add_event(b, envelope_json(shopper_id="SHOP-ADA", triggered_at_ms=NOW_MS))
    grace = kit.add_event(b, envelope_json(shopper_id="SHOP-GRACE", triggered_at_ms=NOW_MS + 1))
    real_rules = reconcile_module.decide

    def failing_for_grace(candidate: Any, match: Any, *args: Any) -> Any:
        if candidate.event_id == grace:
            raise KeyError(f"timezone of {match.profile['email']}")
        return real_rules(candidate, match, *args)

    monkeypatch.setattr(reconcile_module, "decide", failing_for_grace)
    result = reconcile_batch(kit.engine, b, routing, now=NOW)

    got = decisions_by_event(kit, b)
    assert got[ada]["decision"] == "matched"
    assert got[grace]["decision"] == NOT_RECONCILED
    assert got[grace]["route"] == "cart_abandonment" and got[grace]["customer_key"] == "SHOP-GRACE"
    assert got[grace]["detail"] == "not reconciled: KeyError: 'timezone of <address>'"
    assert [r["profile_id"] for r in kit.rows(send, send.c.batch_id == b)] == ["C1"]
    assert result.counts == {"matched": 1, "unmatched": 1}
    _balanced(kit, b)

    # the cause fixed, a replay decides the event again and queues its email
    monkeypatch.setattr(reconcile_module, "decide", real_rules)
    again = reconcile_batch(kit.engine, b, routing, now=NOW)
    assert again.counts == {"matched": 2}
    assert sorted(r["profile_id"] for r in kit.rows(send, send.c.batch_id == b)) == ["C1", "C2"]
    _balanced(kit, b)


def test_store_text() -> None:
    assert store_text(None) is None
    assert store_text("plain") == "plain"
    assert store_text(12) == "12"
    assert store_text("a\u0000b\ud800c\udfffd") == "a\ufffdb\ufffdc\ufffdd"
    assert store_text("ümlaut 😀 \u202e") == "ümlaut 😀 \u202e"  # storable text is left alone
    assert store_text("abcdef", 3) == "abc"
    assert store_text("\u0000" * 5, 2) == "\ufffd\ufffd"
