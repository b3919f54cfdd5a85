"""Tests for include.triggerflow.stages.validate: the real Great Expectations suite on the store.

Each case lands one good event next to one bad one and checks that exactly the bad one is
quarantined, with the failed expectation, the column and the offending value as its reasons."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack.messages import BROWSE_ABANDONMENT_TRIGGER_ID, CART_ABANDONMENT_TRIGGER_ID, envelope, trigger_message
from include.triggerflow.stages.validate import MAX_AGE_MS, ValidateResult, validate_batch
from include.triggerflow.store.schema import event, quarantine

# GX 1.x deprecates the string row_condition the suite uses; the warning comes through pydantic.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pydantic.*")

UNCONFIGURED_TRIGGER_ID = "0badc0de-0000-4000-8000-00000000beef"
RECEIVED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RECEIVED_MS = int(RECEIVED.timestamp() * 1000)
PIPELINE = "com.adobe.mcloud.pipeline.pipelineMessage"
BODY = "com.adobe.mcloud.protocol.trigger"

BE_NULL = "expect_column_values_to_be_null"
NOT_NULL = "expect_column_values_to_not_be_null"
IN_SET = "expect_column_values_to_be_in_set"
REGEX = "expect_column_values_to_match_regex"
BETWEEN = "expect_column_values_to_be_between"
NOTE = (BE_NULL, "landing_note")
PROBLEM = (BE_NULL, "problems")


def good_envelope(**kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("trigger_id", CART_ABANDONMENT_TRIGGER_ID)
    kwargs.setdefault("shopper_id", "SHOP-ADA")
    kwargs.setdefault("triggered_at_ms", RECEIVED_MS - 60_000)
    return envelope(trigger_message(**kwargs), partition=2, offset=1001)


def dumps(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def with_body(**changes: Any) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        env = good_envelope()
        env[PIPELINE][BODY].update(changes)
        return env
    return build


def without_message_id() -> dict[str, Any]:
    env = good_envelope()
    del env[PIPELINE]["header"]["messageId"]
    return env


def wrong_envelope_type() -> dict[str, Any]:
    env = good_envelope()
    env["envelopeType"] = "HEARTBEAT"
    return env


# (case id, payload builder, exact reasons as (expectation, column, value))
CASES: list[tuple[str, Callable[[], Any], list[tuple[str, str, Any]]]] = [
    (
        "missing-pipeline-message",
        lambda: {"envelopeType": "DATA", "partition": 1, "offset": 5},
        [
            (BE_NULL, "parse_error", f"envelope has no '{PIPELINE}' object"),
            (NOT_NULL, "message_id", None),
            (NOT_NULL, "trigger_id", None),
            (NOT_NULL, "trigger_ts", None),
        ],
    ),
    (
        "wrong-envelope-type",
        wrong_envelope_type,
        [(IN_SET, "envelope_type", "HEARTBEAT")],
    ),
    (
        "missing-message-id",
        without_message_id,
        [(NOT_NULL, "message_id", None)],
    ),
    (
        "message-id-not-an-id",
        lambda: good_envelope(message_id="x y"),
        [(REGEX, "message_id", "x y")],
    ),
    (
        "non-integer-trigger-timestamp",
        with_body(triggerTimestamp="yesterday"),
        [(REGEX, "trigger_ts", "yesterday"), (*PROBLEM, "triggerTimestamp is a JSON string, not a number")],
    ),
    (
        "float-trigger-timestamp",
        with_body(triggerTimestamp=1772366340000.5),
        [(REGEX, "trigger_ts", "1772366340000.5"), (*PROBLEM, "triggerTimestamp is not a whole number of milliseconds")],
    ),
    (
        "trigger-30-days-before-received",
        lambda: good_envelope(triggered_at_ms=RECEIVED_MS - 30 * 86_400_000),
        [(BETWEEN, "trigger_age_ms", 30 * 86_400_000)],
    ),
    (
        "trigger-1-hour-in-the-future",
        lambda: good_envelope(triggered_at_ms=RECEIVED_MS + 3_600_000),
        [(BETWEEN, "trigger_age_ms", -3_600_000)],
    ),
    (
        "routed-trigger-without-its-evar",
        lambda: good_envelope(shopper_id=None),
        [(NOT_NULL, "identity", None)],
    ),
    (
        "routed-trigger-with-blank-evar",
        lambda: good_envelope(shopper_id="   "),
        [(NOT_NULL, "identity", None)],
    ),
    (
        "blank-trigger-id",
        with_body(triggerId="   "),
        [(REGEX, "trigger_id", "   ")],
    ),
    (
        "trigger-timestamp-as-a-string-of-digits",
        with_body(triggerTimestamp=str(RECEIVED_MS)),
        [(*PROBLEM, "triggerTimestamp is a JSON string, not a number")],
    ),
    (
        "trigger-timestamp-beyond-64-bits",
        with_body(triggerTimestamp=2**70),
        [(REGEX, "trigger_ts", str(2**70)), (*PROBLEM, "triggerTimestamp out of range")],
    ),
    (
        "trigger-timestamp-1e30",
        with_body(triggerTimestamp=1e30),
        [(REGEX, "trigger_ts", "1e+30"), (*PROBLEM, "triggerTimestamp out of range")],
    ),
    (
        "trigger-timestamp-nan",
        with_body(triggerTimestamp=float("nan")),
        [(REGEX, "trigger_ts", "nan"), (*PROBLEM, "triggerTimestamp is not a finite number")],
    ),
    (
        "trigger-timestamp-true",
        with_body(triggerTimestamp=True),
        [(REGEX, "trigger_ts", "True"), (*PROBLEM, "triggerTimestamp is a JSON boolean, not a number")],
    ),
    (
        "nul-in-the-evar",
        lambda: good_envelope(shopper_id="SHOP-ADA\u0000"),
        [(*PROBLEM, "control character in eVar01")],
    ),
    (
        "lone-surrogate-in-the-evar",
        lambda: good_envelope(shopper_id="\ud800"),
        [(*PROBLEM, "invalid text in eVar01")],
    ),
    (
        "lone-surrogate-in-the-message-id",
        lambda: good_envelope(message_id="6b0ed1b6-2b4d-4b44-9b3a-\udc00"),
        [(REGEX, "message_id", "6b0ed1b6-2b4d-4b44-9b3a-\ufffd"), (*PROBLEM, "invalid text in messageId")],
    ),
    (
        "nul-in-the-trigger-id",
        with_body(triggerId=CART_ABANDONMENT_TRIGGER_ID + "\u0000"),
        [(*PROBLEM, "control character in triggerId")],
    ),
    (
        "two-problems-listed-separately",
        lambda: good_envelope(shopper_id="\u0001", message_id="6b0ed1b6-2b4d-4b44-9b3a-1f8f0a1e2d3c\u0085"),
        [
            (REGEX, "message_id", "6b0ed1b6-2b4d-4b44-9b3a-1f8f0a1e2d3c\ufffd"),
            (*PROBLEM, "control character in messageId"),
            (*PROBLEM, "control character in eVar01"),
        ],
    ),
    (
        "nesting-2000-deep",
        lambda: "[" * 2_000 + "]" * 2_000,
        [
            (BE_NULL, "parse_error", "nesting deeper than 64"),
            (NOT_NULL, "envelope_type", None),
            (NOT_NULL, "message_id", None),
            (NOT_NULL, "trigger_id", None),
            (NOT_NULL, "trigger_ts", None),
        ],
    ),
]


def quarantine_rows(kit, batch_id: str) -> dict[int, list[tuple[str, str, Any]]]:
    rows = kit.rows(quarantine, quarantine.c.batch_id == batch_id)
    return {
        r["event_id"]: sorted((x["expectation"], x["column"], x["value"]) for x in json.loads(r["reasons"]))
        for r in rows
    }


def statuses(kit, batch_id: str) -> dict[int, str]:
    return {r["event_id"]: r["status"] for r in kit.rows(event, event.c.batch_id == batch_id)}


@pytest.fixture(scope="module")
def every_case_validated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One batch holding a good event and every bad case, validated once: Great Expectations costs
    about 0.25 s per validation, and one batch also proves that each row's reasons stay its own."""
    from include.triggerflow import DEFAULT_ROUTING_FILE
    from include.triggerflow.config import load_routing
    from include.triggerflow.store.engines import get_engine
    from include.triggerflow.store.migrations import create_schema
    from tests.conftest import empty_store
    from tests.fixtures import StoreKit

    with empty_store(tmp_path_factory.mktemp("validate-cases")) as url:
        engine = get_engine(url)
        create_schema(engine)
        kit = StoreKit(engine)
        batch_id = kit.add_batch("b1")
        good = kit.add_event(batch_id, dumps(good_envelope()), status="landed", received_at=RECEIVED)
        bad = {
            name: kit.add_event(batch_id, dumps(build()), status="landed", received_at=RECEIVED)
            for name, build, _ in CASES
        }
        result = validate_batch(engine, batch_id, load_routing(DEFAULT_ROUTING_FILE))
        yield {
            "result": result,
            "batch_id": batch_id,
            "good": good,
            "bad": bad,
            "statuses": statuses(kit, batch_id),
            "reasons": quarantine_rows(kit, batch_id),
        }
        engine.dispose()


def test_every_bad_case_is_quarantined_and_the_good_event_is_not(every_case_validated) -> None:
    run = every_case_validated
    assert run["result"] == ValidateResult(batch_id=run["batch_id"], valid=1, quarantined=len(CASES))
    assert run["statuses"] == {run["good"]: "valid", **{event_id: "quarantined" for event_id in run["bad"].values()}}


@pytest.mark.parametrize(("name", "expected"), [(c[0], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_each_expectation_quarantines_the_bad_event_with_its_own_reasons(every_case_validated, name, expected) -> None:
    run = every_case_validated
    assert run["reasons"][run["bad"][name]] == sorted(expected)


def test_non_json_payload_keeps_the_parse_error_as_the_reason(kit, routing) -> None:
    batch_id = kit.add_batch("b1")
    bad = kit.add_event(batch_id, "not even an object", status="landed", received_at=RECEIVED)
    listed = kit.add_event(batch_id, "[1, 2]", status="landed", received_at=RECEIVED)

    assert validate_batch(kit.engine, batch_id, routing) == ValidateResult(batch_id, valid=0, quarantined=2)

    reasons = quarantine_rows(kit, batch_id)
    parse = {eid: [r for r in rs if r[:2] == (BE_NULL, "parse_error")] for eid, rs in reasons.items()}
    assert len(parse[bad]) == 1 and parse[bad][0][2].startswith("payload is not valid JSON: Expecting value")
    assert parse[listed] == [(BE_NULL, "parse_error", "payload is a JSON list, not an object")]
    # everything else is missing too, and said so
    assert {r[:2] for r in reasons[bad]} == {
        (BE_NULL, "parse_error"), (NOT_NULL, "envelope_type"), (NOT_NULL, "message_id"),
        (NOT_NULL, "trigger_id"), (NOT_NULL, "trigger_ts"),
    }


def test_unconfigured_trigger_without_evar_is_not_quarantined(kit, routing) -> None:
    batch_id = kit.add_batch("b1")
    ids = [
        kit.add_event(batch_id, dumps(good_envelope(trigger_id=UNCONFIGURED_TRIGGER_ID, shopper_id=None)),
                      status="landed", received_at=RECEIVED),
        kit.add_event(batch_id, dumps(good_envelope(trigger_id=BROWSE_ABANDONMENT_TRIGGER_ID)),
                      status="landed", received_at=RECEIVED),
    ]
    assert validate_batch(kit.engine, batch_id, routing) == ValidateResult(batch_id, valid=2, quarantined=0)
    assert statuses(kit, batch_id) == {ids[0]: "valid", ids[1]: "valid"}
    assert kit.count(quarantine) == 0


def test_age_is_judged_against_received_at_not_the_wall_clock(kit, routing) -> None:
    """Re-validating an old batch (a replay weeks later) must give the same answer."""
    batch_id = kit.add_batch("b1")
    long_ago = datetime.now(UTC) - timedelta(days=40)
    ms = int(long_ago.timestamp() * 1000)
    ok = kit.add_event(batch_id, dumps(good_envelope(triggered_at_ms=ms - 60_000)), status="landed", received_at=long_ago)
    limit = kit.add_event(batch_id, dumps(good_envelope(triggered_at_ms=ms - MAX_AGE_MS)), status="landed", received_at=long_ago)
    too_old = kit.add_event(batch_id, dumps(good_envelope(triggered_at_ms=ms - MAX_AGE_MS - 1)), status="landed", received_at=long_ago)
    validate_batch(kit.engine, batch_id, routing)
    assert statuses(kit, batch_id) == {ok: "valid", limit: "valid", too_old: "quarantined"}


def test_validating_twice_gives_the_same_quarantine(kit, routing) -> None:
    batch_id = kit.add_batch("b1")
    for build in (good_envelope, wrong_envelope_type, without_message_id, lambda: good_envelope(shopper_id=None)):
        kit.add_event(batch_id, dumps(build()), status="landed", received_at=RECEIVED)

    first = validate_batch(kit.engine, batch_id, routing)
    before = quarantine_rows(kit, batch_id)
    second = validate_batch(kit.engine, batch_id, routing)

    assert first == second == ValidateResult(batch_id, valid=1, quarantined=3)
    assert quarantine_rows(kit, batch_id) == before
    assert kit.count(quarantine) == 3  # no duplicates


def test_other_batches_are_left_alone(kit, routing) -> None:
    kit.add_batch("b1")
    kit.add_batch("b2")
    other = kit.add_event("b2", dumps(wrong_envelope_type()), status="landed", received_at=RECEIVED)
    kit.add_event("b1", dumps(good_envelope()), status="landed", received_at=RECEIVED)
    validate_batch(kit.engine, "b1", routing)
    assert statuses(kit, "b2") == {other: "landed"}
    assert kit.count(quarantine) == 0


def test_empty_batch(kit, routing) -> None:
    kit.add_batch("b1")
    assert validate_batch(kit.engine, "b1", routing).as_xcom() == {"batch_id": "b1", "valid": 0, "quarantined": 0}


class RoutingThatBreaksOn:
    """The real routing, except that looking up one trigger id raises (as a bug on hostile content
    would): the event is quarantined with that, the stage goes on."""

    def __init__(self, routing, trigger_id: str) -> None:
        self.routing = routing
        self.trigger_id = trigger_id

    def route_for(self, trigger_id):
        if trigger_id == self.trigger_id:
            raise KeyError("boom")
        return self.routing.route_for(trigger_id)


def test_an_event_that_breaks_the_lifting_is_quarantined_and_the_stage_goes_on(kit, routing) -> None:
    batch_id = kit.add_batch("b1")
    good = kit.add_event(batch_id, dumps(good_envelope()), status="landed", received_at=RECEIVED)
    bad = kit.add_event(batch_id, dumps(good_envelope(trigger_id=UNCONFIGURED_TRIGGER_ID)), status="landed",
                        received_at=RECEIVED)

    result = validate_batch(kit.engine, batch_id, RoutingThatBreaksOn(routing, UNCONFIGURED_TRIGGER_ID))

    assert result == ValidateResult(batch_id, valid=1, quarantined=1)
    assert statuses(kit, batch_id) == {good: "valid", bad: "quarantined"}
    assert (PROBLEM[0], PROBLEM[1], "the event could not be validated (KeyError)") in quarantine_rows(kit, batch_id)[bad]


def test_landing_notes_quarantine_except_a_removed_byte_order_mark() -> None:
    from include.triggerflow.stages.validate import landing_notes

    assert landing_notes(None) == [] and landing_notes("byte order mark removed") == []
    assert landing_notes("byte order mark removed; invalid UTF-8; NUL replaced") == ["invalid UTF-8", "NUL replaced"]


@pytest.mark.parametrize(
    ("value", "shown"), [(True, "True"), ({"id": "x"}, '{"id": "x"}'), (["m"], '["m"]'), (5.5, "5.5")]
)
def test_a_scalar_id_of_the_wrong_type_shows_as_it_came_in_the_reason(routing, value: Any, shown: str) -> None:
    # The typed TriggerEvent keeps None for such values; the frame GX sees must carry the value as it
    # came (raw_fields), so the quarantine reason says what was wrong, not just "null".
    from include.triggerflow.stages.validate import COLUMNS, _lift

    payload = envelope(trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id="SHOP-1"), partition=0, offset=1)
    payload["com.adobe.mcloud.pipeline.pipelineMessage"]["header"]["messageId"] = value
    payload["envelopeType"] = value
    row = dict(zip(COLUMNS, _lift(1, json.dumps(payload), 0, routing)))
    assert (row["message_id"], row["envelope_type"]) == (shown, shown)
