"""Tests for include.triggerflow.sources.journal (and the adobe_triggers hook that builds it),
read against the real Adobe emulator process over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from devstack.messages import envelope, trigger_message
from include.triggerflow.events import parse_envelope
from include.triggerflow.hooks.triggers import TriggerSourceHook
from include.triggerflow.sources.base import Page, SourceError
from include.triggerflow.sources.journal import JOURNAL_PARTITION, JournalSource


def source(**overrides) -> JournalSource:
    """The source as the DAG builds it: from connections adobe_triggers and adobe_ims."""
    src = TriggerSourceHook().get_source()
    for name, value in overrides.items():
        setattr(src, name, value)
    return src


def read_all(src: JournalSource, positions: dict[int, str] | None = None, max_messages: int = 10_000) -> list[Page]:
    return list(src.read(positions or {}, max_messages))


def journal_requests(emu) -> int:
    return emu.client.stats()["journal_requests"]


def test_hook_builds_a_journal_source(emu, adobe_conns) -> None:
    src = TriggerSourceHook().get_source()
    assert isinstance(src, JournalSource)
    assert src.endpoint == emu.client.journal_url
    # keyed on the registration path only: another host or port keeps the stored position
    assert src.source_key == f"journal:{emu.client.journal_path}"
    assert (src.api_key, src.org_id, src.page_limit, src.reset) == (
        emu.client.client_id, emu.client.org_id, 500, "earliest"
    )


def test_pages_follow_since_until_204(emu, adobe_conns, publisher: Callable) -> None:
    adobe_conns(page_limit=2)
    published = publisher(5)
    pages = read_all(source())
    assert [len(p.messages) for p in pages] == [2, 2, 1]
    assert [m.position for p in pages for m in p.messages] == published
    # each page advances to its last message; the journal was asked with that position next
    assert [p.next_positions for p in pages] == [
        {JOURNAL_PARTITION: published[1]}, {JOURNAL_PARTITION: published[3]}, {JOURNAL_PARTITION: published[4]}
    ]
    assert all(p.bytes_read > 0 for p in pages)
    assert journal_requests(emu) == 4  # three pages and the 204 that ends the read
    # payloads are the pipeline envelopes as JSON text
    first = parse_envelope(pages[0].messages[0].payload)
    assert (first.parse_error, first.envelope_type, first.dimension_first("eVar01")) == (None, "DATA", "SHOP-ADA")

    # reading again from the last position gives only what is new
    newer = publisher(2)
    again = read_all(source(), {JOURNAL_PARTITION: published[-1]})
    assert [m.position for p in again for m in p.messages] == newer


def test_empty_journal_ends_on_204(emu, adobe_conns) -> None:
    assert read_all(source()) == []
    assert journal_requests(emu) == 1


def test_max_messages_bounds_the_read(emu, adobe_conns, publisher: Callable) -> None:
    adobe_conns(page_limit=2)
    published = publisher(6)
    pages = read_all(source(), max_messages=3)
    # the last request asks only for what is still allowed (limit=1)
    assert [len(p.messages) for p in pages] == [2, 1]
    assert [m.position for p in pages for m in p.messages] == published[:3]
    assert pages[-1].next_positions == {JOURNAL_PARTITION: published[2]}
    assert read_all(source(), max_messages=0) == []


def test_raw_events_are_kept_verbatim(emu, adobe_conns) -> None:
    message = trigger_message(trigger_id="t-1", shopper_id="S1")
    wrapped = envelope(message, partition=3, offset=77)
    emu.client.inject_raw([wrapped, "not even an object", {"envelopeType": "DATA"}])
    messages = [m for p in read_all(source()) for m in p.messages]
    assert json.loads(messages[0].payload) == wrapped
    assert messages[1].payload == "not even an object"
    assert json.loads(messages[2].payload) == {"envelopeType": "DATA"}
    assert {m.partition for m in messages} == {JOURNAL_PARTITION}


def test_expired_token_is_refreshed_once_and_the_read_continues(emu, adobe_conns, publisher: Callable) -> None:
    adobe_conns(page_limit=2)
    published = publisher(4)  # the publishing client mints its own token
    minted_before = emu.client.stats()["token_requests"]
    reader = source().read({}, 100)
    first = next(reader)
    assert emu.client.stats()["token_requests"] == minted_before + 1
    assert emu.client.expire_tokens() >= 1
    rest = list(reader)
    assert [m.position for p in [first, *rest] for m in p.messages] == published
    stats = emu.client.stats()
    assert stats["token_requests"] == minted_before + 2  # exactly one new token
    assert stats["journal_requests"] == 4  # page 1, 401, page 2 with the new token, 204


def test_persistent_401_is_a_source_error(emu, adobe_conns) -> None:
    calls: list[bool] = []

    def bogus_token(refresh: bool) -> str:
        calls.append(refresh)
        return "bogus-token"

    src = JournalSource(
        journal_url=emu.client.journal_url, api_key=emu.client.client_id, org_id=emu.client.org_id,
        token_provider=bogus_token,
    )
    with pytest.raises(SourceError) as info:
        read_all(src)
    message = str(info.value)
    assert "401 twice" in message
    assert "adobe_ims credential has access to this registration" in message
    assert calls == [False, True]  # asked for a fresh token once, then gave up
    assert journal_requests(emu) == 2


def test_reset_latest_starts_at_the_end_and_keeps_its_place(emu, adobe_conns, publisher: Callable) -> None:
    adobe_conns(reset="latest")
    publisher(3)  # already in the journal: skipped
    positions: dict[int, str] = {}
    pages = read_all(source())
    assert [m for p in pages for m in p.messages] == []
    for page in pages:
        positions.update(page.next_positions)
    # The end of the journal is pinned, so what arrives next is read on the next pull.
    newer = publisher(2)
    pages = read_all(source(), positions)
    assert [m.position for p in pages for m in p.messages] == newer


def test_reset_earliest_reads_from_the_beginning(emu, adobe_conns, publisher: Callable) -> None:
    published = publisher(3)
    assert [m.position for p in read_all(source()) for m in p.messages] == published


def test_bad_reset_value_is_a_source_error(emu, adobe_conns) -> None:
    adobe_conns(reset="newest")
    with pytest.raises(SourceError, match="reset must be 'earliest' or 'latest', not 'newest'"):
        TriggerSourceHook().get_source()


def test_a_position_the_journal_does_not_know_is_a_source_error_with_the_status(emu, adobe_conns) -> None:
    with pytest.raises(SourceError, match="journal answered HTTP 400") as info:
        read_all(source(), {JOURNAL_PARTITION: "not-a-position"})
    assert "invalid_position" in str(info.value)
    assert "not-a-position" in str(info.value)


def test_wrong_org_is_a_source_error(emu, adobe_conns) -> None:
    src = source(org_id="SOMEONE-ELSE@AdobeOrg")
    with pytest.raises(SourceError, match="journal answered HTTP 403"):
        read_all(src)


def test_unknown_source_kind_is_refused(emu, adobe_conns) -> None:
    adobe_conns(kind="webhook")
    with pytest.raises(SourceError, match=r"extra.kind 'webhook' is not one of \('journal', 'pipeline'\)"):
        TriggerSourceHook().get_source()


def test_host_must_be_the_full_journal_url(emu, adobe_conns) -> None:
    adobe_conns(journal_url="events.adobe.io/events/organizations/x")
    with pytest.raises(SourceError, match="host must be the full journal URL"):
        TriggerSourceHook().get_source()


def test_unreachable_journal_is_a_source_error_after_the_tries(emu, adobe_conns) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    src = source(journal_url=f"http://127.0.0.1:{port}/events/x", max_tries=2, max_retry_wait_s=0.01)
    with pytest.raises(SourceError, match="unreachable after 2 tries: ConnectionError"):
        read_all(src)


# -- hostile pages (issue 10): the page decoder alone, on bytes no server of ours would send -------------
