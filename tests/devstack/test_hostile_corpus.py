"""devstack.hostile_corpus: the corpus covers what issue 10 asks for, and its messages are what
each case says they are."""

from __future__ import annotations

import json
import time

from devstack.hostile_corpus import MAX_MESSAGE_BYTES, Bucket, Delivery, corpus_profiles, hostile_corpus
from include.triggerflow.events import parse_envelope


def test_the_corpus_is_what_the_issue_asks_for() -> None:
    cases = hostile_corpus(int(time.time() * 1000))
    assert len(cases) >= 60
    assert all(c.attacks and c.reason for c in cases)
    by_name = {c.name: c for c in cases}
    assert {"evar_nul", "evar_lone_surrogate", "message_id_nul", "message_id_lone_surrogate", "trigger_id_nul",
            "trigger_id_lone_surrogate", "ts_beyond_64_bit", "nested_2000", "nested_100000", "invalid_utf8",
            "message_2_5_mb"} <= set(by_name)
    # no case fails its email any more: the prices that did (a word, NaN) now come from the
    # catalogue, and event-only mode shows no price rather than fail (issue 11)
    assert {c.expect for c in cases} == set(Bucket) - {Bucket.FAILED}
    assert by_name["message_2_5_mb"].size > 2_500_000 > 2 * MAX_MESSAGE_BYTES
    assert b"[" * 100_000 in by_name["nested_100000"].payload
    # the one case that cannot travel as text
    undecodable = []
    for case in cases:
        try:
            case.journal_event()
        except UnicodeDecodeError:
            undecodable.append(case.name)
    assert undecodable == ["invalid_utf8"]


def test_cases_fit_to_send_are_good_messages_for_their_customer() -> None:
    """A SENT case parses to its own customer's shopper id: if it is not emailed, the pipeline lost
    it, not the corpus."""
    cases = hostile_corpus(int(time.time() * 1000))
    shoppers = {p["shopper_id"] for p in corpus_profiles(cases)}
    for case in (c for c in cases if c.expect is Bucket.SENT):
        text = case.payload.decode("utf-8-sig") if case.delivery is Delivery.BYTES else json.dumps(case.payload)
        parsed = parse_envelope(text)
        assert parsed.dimension_first("eVar01") == case.shopper_id in shoppers, case.name
        assert case.size < MAX_MESSAGE_BYTES, case.name


def test_the_repeated_message_is_byte_for_byte_an_earlier_one() -> None:
    cases = hostile_corpus(int(time.time() * 1000))
    repeat = cases[-1]
    assert repeat.expect is Bucket.DECIDED and repeat.reason == "duplicate"
    assert sum(c.payload == repeat.payload for c in cases) == 2
