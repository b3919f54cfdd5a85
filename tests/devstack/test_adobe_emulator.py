"""Tests of the Adobe emulator, run as a real subprocess and spoken to over HTTP.

One emulator process serves the module; every test starts from an empty journal (reset)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from devstack.adobe_emulator import partition_for
from devstack.emulator_client import EmulatorClient, EmulatorError
from devstack.messages import BROWSE_ABANDONMENT_TRIGGER_ID, CART_ABANDONMENT_TRIGGER_ID, trigger_message
from devstack.processes import RunningEmulator, start_emulator
from include.triggerflow.events import parse_envelope

CLIENT_ID = "test-client"
CLIENT_SECRET = "s3cr3t-value-never-logged"
ORG_ID = "ABCDEF0123456789ABCDEF01@AdobeOrg"
TOKEN_TTL = 3600
LINK_RE = re.compile(r'^<(?P<url>[^>]+)>; rel="next"$')
PIPELINE_STATS_ZERO = {
    "consume_requests": 0, "data_lines_streamed": 0, "discovery_requests": 0, "faults_fired": 0, "jwt_exchanges": 0,
}


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with start_emulator(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, org_id=ORG_ID, token_ttl=TOKEN_TTL
    ) as emu:
        yield emu


@pytest.fixture
def emu(emulator: RunningEmulator) -> RunningEmulator:
    emulator.client.reset()
    return emulator


@pytest.fixture
def client(emu: RunningEmulator) -> EmulatorClient:
    return emu.client


def token_request(emu: RunningEmulator, **fields: str) -> requests.Response:
    data = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scope": "openid",
    }
    data.update(fields)
    return requests.post(f"{emu.base_url}/ims/token/v3", data=data, timeout=5)


def get_journal(
    client: EmulatorClient, url: str | None = None, headers: dict[str, str] | None = None, **params: Any
) -> requests.Response:
    return requests.get(
        url or client.journal_url,
        headers=headers or client.journal_headers(),
        params=params or None,
        timeout=5,
    )


def served_ids(events: list[dict[str, Any]]) -> list[Any]:
    """messageId of each served journal entry, read through triggerflow's own parser."""
    return [parse_envelope(e["event"]["event"]).message_id for e in events]


def next_link(response: requests.Response) -> str:
    match = LINK_RE.match(response.headers["Link"])
    assert match, response.headers["Link"]
    return match.group("url")


def cart(shopper: str, **kwargs: Any) -> dict[str, Any]:
    return trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id=shopper, **kwargs)


# -- IMS -------------------------------------------------------------------------------------------
def test_token_success(emu: RunningEmulator) -> None:
    first, second = token_request(emu), token_request(emu)
    assert first.status_code == 200
    assert first.headers["Content-Type"] == "application/json"
    body = first.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == TOKEN_TTL
    assert len(body["access_token"]) >= 32
    assert second.json()["access_token"] != body["access_token"]
    assert emu.client.stats()["tokens_issued"] == 2


def test_token_fields_in_query_string_are_accepted(emu: RunningEmulator) -> None:
    params = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    response = requests.post(f"{emu.base_url}/ims/token/v3", params=params, timeout=5)
    assert response.status_code == 200
    assert response.json()["token_type"] == "bearer"


def test_token_wrong_secret_or_client_is_401_invalid_client(emu: RunningEmulator) -> None:
    for fields in ({"client_secret": "wrong"}, {"client_id": "someone-else"}, {"client_secret": ""}):
        response = token_request(emu, **fields)
        assert response.status_code == 401, fields
        assert response.json() == {
            "error": "invalid_client",
            "error_description": "invalid client_id or client_secret",
        }
    stats = emu.client.stats()
    assert (stats["token_requests"], stats["tokens_issued"]) == (3, 0)


def test_token_wrong_grant_type_is_400(emu: RunningEmulator) -> None:
    response = token_request(emu, grant_type="password")
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"
    assert "password" in response.json()["error_description"]


def test_jwt_exchange_without_a_configured_public_key_is_400_invalid_client(emu: RunningEmulator) -> None:
    """This module's emulator runs without --jwt-public-key (the default)."""
    data = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "jwt_token": "x.y.z"}
    response = requests.post(f"{emu.base_url}/ims/exchange/jwt", data=data, timeout=5)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_client", "error_description": "JWT is not configured for this client"}
    # the client check still comes first
    wrong = requests.post(f"{emu.base_url}/ims/exchange/jwt", data={**data, "client_secret": "nope"}, timeout=5)
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert emu.client.stats()["jwt_exchanges"] == 2


def test_publish_feeds_journal_and_pipeline_topic_alike(client: EmulatorClient) -> None:
    receipt = client.publish([cart("J1"), cart("J2")])
    journal = [e["event"]["event"] for e in get_journal(client).json()["events"]]
    streamed = [line for line in client.consume(reset="earliest") if line["envelopeType"] == "DATA"]
    key = lambda env: (env["partition"], env["offset"])  # noqa: E731
    assert sorted(streamed, key=key) == sorted(journal, key=key)
    assert {key(e) for e in journal} == {(p["partition"], p["offset"]) for p in receipt["positions"]}


# -- journal auth ----------------------------------------------------------------------------------
def test_journal_requires_bearer_token(client: EmulatorClient) -> None:
    headers = client.journal_headers()
    no_auth = {k: v for k, v in headers.items() if k != "Authorization"}
    unknown = {**headers, "Authorization": "Bearer not-a-token"}
    basic = {**headers, "Authorization": "Basic abc"}
    for bad in (no_auth, unknown, basic):
        response = get_journal(client, headers=bad)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_token"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_journal_rejects_expired_token_then_accepts_a_new_one(client: EmulatorClient) -> None:
    old = client.token()
    assert get_journal(client, headers=client.journal_headers(old)).status_code == 204
    assert client.expire_tokens() == 1
    expired = get_journal(client, headers=client.journal_headers(old))
    assert expired.status_code == 401
    assert expired.json() == {"error": "invalid_token", "error_description": "access token expired"}
    fresh = client.token()
    assert fresh != old
    assert get_journal(client, headers=client.journal_headers(fresh)).status_code == 204


def test_journal_403_on_wrong_api_key_or_org(client: EmulatorClient) -> None:
    headers = client.journal_headers()
    wrong_key = get_journal(client, headers={**headers, "x-api-key": "other-client"})
    assert wrong_key.status_code == 403 and "x-api-key" in wrong_key.json()["error_description"]
    missing_key = get_journal(client, headers={k: v for k, v in headers.items() if k != "x-api-key"})
    assert missing_key.status_code == 403
    wrong_org = get_journal(client, headers={**headers, "x-ims-org-id": "OTHER@AdobeOrg"})
    assert wrong_org.status_code == 403 and "x-ims-org-id" in wrong_org.json()["error_description"]


def test_journal_404_on_other_registration(client: EmulatorClient) -> None:
    other = client.journal_url.replace("/triggerflow-reg", "/someone-elses-reg")
    response = get_journal(client, url=other)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


# -- journal paging --------------------------------------------------------------------------------
def test_publish_three_then_page_with_limit_two(client: EmulatorClient) -> None:
    messages = [cart(f"CUST-{i}") for i in range(3)]
    receipt = client.publish(messages)
    assert receipt["accepted"] == 3
    published_positions = [p["position"] for p in receipt["positions"]]

    page1 = get_journal(client, limit=2)
    assert page1.status_code == 200
    body1 = page1.json()
    assert [e["position"] for e in body1["events"]] == published_positions[:2]
    assert body1["_page"] == {"last": published_positions[1], "count": 2}
    link1 = next_link(page1)
    assert link1 == f"{client.journal_url}?since={published_positions[1]}&limit=2"

    page2 = get_journal(client, url=link1)
    assert page2.status_code == 200
    body2 = page2.json()
    assert [e["position"] for e in body2["events"]] == published_positions[2:]
    assert body2["_page"] == {"last": published_positions[2], "count": 1}

    page3 = get_journal(client, url=next_link(page2))
    assert page3.status_code == 204
    assert page3.content == b""
    assert page3.headers["retry-after"] == "10"
    assert next_link(page3) == f"{client.journal_url}?since={published_positions[2]}&limit=2"

    served = [e["event"]["event"] for e in body1["events"] + body2["events"]]
    assert served_ids(body1["events"] + body2["events"]) == [m["messageId"] for m in messages]
    assert [parse_envelope(env).dimension_first("eVar01") for env in served] == ["CUST-0", "CUST-1", "CUST-2"]
    assert len({e["event"]["event_id"] for e in body1["events"] + body2["events"]}) == 3


def test_since_returns_only_newer_events_none_repeated_none_skipped(client: EmulatorClient) -> None:
    first = [cart(f"A{i}") for i in range(2)]
    client.publish(first)
    batch1 = get_journal(client).json()
    assert served_ids(batch1["events"]) == [m["messageId"] for m in first]

    second = [cart(f"B{i}") for i in range(3)]
    client.publish(second)
    batch2 = get_journal(client, since=batch1["_page"]["last"]).json()
    ids2 = served_ids(batch2["events"])
    assert ids2 == [m["messageId"] for m in second]

    # resuming from the first event replays exactly the four after it
    from_first = get_journal(client, since=batch1["events"][0]["position"]).json()
    assert from_first["_page"]["count"] == 4
    assert served_ids(from_first["events"]) == [first[1]["messageId"], *ids2]
    assert get_journal(client, since=batch2["_page"]["last"]).status_code == 204


def test_latest_true_starts_at_the_end(client: EmulatorClient) -> None:
    client.publish([cart("OLD1"), cart("OLD2")])
    at_end = get_journal(client, latest="true")
    assert at_end.status_code == 204
    new = cart("NEW")
    client.publish(new)
    following = get_journal(client, url=next_link(at_end))
    assert following.status_code == 200
    events = following.json()["events"]
    assert served_ids(events) == [new["messageId"]]


def test_empty_journal_is_204_with_link_from_the_beginning(client: EmulatorClient) -> None:
    empty = get_journal(client)
    assert empty.status_code == 204
    assert empty.headers["retry-after"] == "10"
    msg = cart("FIRST")
    client.publish(msg)
    response = get_journal(client, url=next_link(empty))
    assert served_ids(response.json()["events"]) == [msg["messageId"]]


def test_bad_since_and_limit_are_400(client: EmulatorClient) -> None:
    client.publish(cart("X"))
    garbled = get_journal(client, since="not-a-position")
    assert garbled.status_code == 400
    assert garbled.json()["error"] == "invalid_position"
    assert "not-a-position" in garbled.json()["error_description"]
    future = get_journal(client, since="v2:999999999999999999")
    assert future.status_code == 400 and "v2:999999999999999999" in future.json()["error_description"]
    for bad_limit in ("0", "-3", "ten"):
        response = get_journal(client, limit=bad_limit)
        assert response.status_code == 400, bad_limit
        assert response.json()["error"] == "invalid_limit"
    capped = get_journal(client, limit="5000")
    assert capped.status_code == 200 and next_link(capped).endswith("&limit=1000")


# -- envelopes -------------------------------------------------------------------------------------
def test_served_envelopes_parse_and_match_the_receipt(client: EmulatorClient) -> None:
    messages = [
        cart("CUST-900", triggered_at_ms=1_716_000_000_000),
        trigger_message(
            trigger_id=BROWSE_ABANDONMENT_TRIGGER_ID, shopper_id="CUST-901", triggered_at_ms=1_716_000_005_000
        ),
    ]
    receipt = client.publish(messages)
    events = get_journal(client).json()["events"]
    assert len(events) == 2
    for message, placed, served in zip(messages, receipt["positions"], events):
        assert served["position"] == placed["position"]
        assert uuid.UUID(served["event"]["event_id"]).version == 4
        parsed = parse_envelope(served["event"]["event"])
        assert parsed.parse_error is None
        assert parsed.envelope_type == "DATA" and parsed.topic == "triggers"
        assert (parsed.partition, parsed.offset) == (placed["partition"], placed["offset"])
        assert parsed.message_id == message["messageId"]
        assert parsed.trigger_id == message["message"]["triggerId"]
        assert parsed.trigger_ts == message["message"]["triggerTimestamp"]
        dims = message["message"]["enrichments"]["analyticsHitSummary"]["dimensions"]
        assert parsed.dimension_first("eVar01") == dims["eVar01"]["data"][0]
        assert parsed.ims_org == message["imsOrg"]
        assert isinstance(parsed.create_time, int) and parsed.create_time > 1_700_000_000_000
    shoppers = [parse_envelope(e["event"]["event"]).dimension_first("eVar01") for e in events]
    assert shoppers == ["CUST-900", "CUST-901"]


def test_offsets_strictly_increase_per_partition(client: EmulatorClient) -> None:
    messages = [cart(f"P{i}") for i in range(40)]
    receipt = client.publish(messages)
    per_partition: dict[int, list[int]] = {}
    for message, placed in zip(messages, receipt["positions"]):
        assert 0 <= placed["partition"] < 15
        assert placed["partition"] == partition_for(message["messageId"], 15)
        per_partition.setdefault(placed["partition"], []).append(placed["offset"])
    assert len(per_partition) > 3  # 40 random ids spread over several partitions
    for offsets in per_partition.values():
        assert offsets == list(range(1000, 1000 + len(offsets)))

    # Same message id again: same partition, next offset there.
    again = client.publish(messages[0])["positions"][0]
    first_partition = receipt["positions"][0]["partition"]
    assert again["partition"] == first_partition
    assert again["offset"] == 1000 + len(per_partition[first_partition])

    served = get_journal(client, limit=1000).json()["events"]
    seen: dict[int, int] = {}
    for entry in served:
        env = entry["event"]["event"]
        assert env["offset"] > seen.get(env["partition"], -1)
        seen[env["partition"]] = env["offset"]


def test_positions_are_opaque_strings_in_journal_order(client: EmulatorClient) -> None:
    positions = [p["position"] for p in client.publish([cart(f"O{i}") for i in range(5)])["positions"]]
    assert all(isinstance(p, str) and p for p in positions)
    assert len(set(positions)) == 5
    assert [e["position"] for e in get_journal(client).json()["events"]] == positions


# -- producer errors -------------------------------------------------------------------------------
def test_publish_requires_token_and_valid_json(emu: RunningEmulator) -> None:
    url = f"{emu.base_url}/pipeline/topics/triggers/messages"
    no_token = requests.post(url, json=cart("X"), timeout=5)
    assert no_token.status_code == 401 and no_token.json()["error"] == "invalid_token"
    token = emu.client.token()
    auth = {"Authorization": f"Bearer {token}"}
    bad = requests.post(
        url, data=b"{not json", headers={**auth, "Content-Type": "application/json"}, timeout=5
    )
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_json"
    not_object = requests.post(url, json=[cart("Y"), 42], headers=auth, timeout=5)
    assert not_object.status_code == 400 and "#1" in not_object.json()["error_description"]
    assert emu.client.stats()["journal_size"] == 0  # a rejected batch leaves nothing behind


def test_client_publish_refreshes_an_expired_token(client: EmulatorClient) -> None:
    client.publish(cart("BEFORE"))
    client.expire_tokens()
    receipt = client.publish(cart("AFTER"))
    assert receipt["accepted"] == 1
    stats = client.stats()
    assert (stats["tokens_issued"], stats["published"]) == (2, 2)


def test_client_raises_with_status_and_body(emu: RunningEmulator) -> None:
    bad = EmulatorClient(emu.base_url, client_id=CLIENT_ID, client_secret="nope", org_id=ORG_ID)
    with pytest.raises(EmulatorError) as info:
        bad.token()
    assert info.value.status == 401
    assert "invalid_client" in info.value.body
    assert "401" in str(info.value)


# -- control plane ---------------------------------------------------------------------------------
def test_raw_injection_comes_back_verbatim(client: EmulatorClient) -> None:
    raw = ["not an envelope", {"envelopeType": "DATA", "partition": "x"}, None, 42, [1, {"a": True}]]
    receipt = client.inject_raw(raw)
    assert receipt["accepted"] == 5
    events = get_journal(client).json()["events"]
    assert [e["event"]["event"] for e in events] == raw
    assert [e["position"] for e in events] == receipt["positions"]
    assert all(parse_envelope(e["event"]["event"]).parse_error for e in events)


def test_stats_count_requests_and_events(client: EmulatorClient) -> None:
    assert client.stats() == {
        "token_requests": 0, "tokens_issued": 0, "journal_requests": 0,
        "events_served": 0, "journal_size": 0, "published": 0,
        **PIPELINE_STATS_ZERO,
    }
    client.publish([cart("S1"), cart("S2"), cart("S3")])  # 1 token
    client.inject_raw([{"junk": 1}])
    headers = client.journal_headers()
    page = get_journal(client, headers=headers, limit=3)
    get_journal(client, headers=headers, url=next_link(page))  # 1 more event
    get_journal(client, headers=headers, url=next_link(page))  # same since again: re-served
    get_journal(client, headers={**headers, "x-api-key": "wrong"})  # refused, still a journal request
    assert client.stats() == {
        "token_requests": 1, "tokens_issued": 1, "journal_requests": 4,
        "events_served": 5, "journal_size": 4, "published": 3,
        **PIPELINE_STATS_ZERO,  # journal traffic leaves the pipeline counters alone
    }


def test_reset_clears_journal_tokens_and_stats(client: EmulatorClient) -> None:
    token = client.token()
    client.publish(cart("R"))
    client.reset()
    assert client.stats()["journal_size"] == 0
    assert get_journal(client, headers=client.journal_headers(token)).status_code == 401


def test_health_and_unknown_paths(emu: RunningEmulator) -> None:
    health = requests.get(f"{emu.base_url}/_emulator/health", timeout=5)
    assert (health.status_code, health.json()) == (200, {"ok": True})
    missing = requests.get(f"{emu.base_url}/nowhere", timeout=5)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong_method = requests.get(f"{emu.base_url}/ims/token/v3", timeout=5)
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "POST"


# -- process behaviour -----------------------------------------------------------------------------
def test_log_has_one_line_per_request_and_no_secrets(emu: RunningEmulator) -> None:
    token = emu.client.token()
    requests.post(
        f"{emu.base_url}/ims/token/v3",
        params={"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        timeout=5,
    )
    get_journal(emu.client, headers=emu.client.journal_headers(token), limit=7)
    log = emu.log_path.read_text()
    assert f"adobe-emulator listening on {emu.base_url}" in log.splitlines()[0]
    assert "adobe-emulator POST /ims/token/v3 200" in log
    assert "client_secret=***" in log
    journal_line = r"adobe-emulator GET /events/organizations/\S+/integrations/triggerflow-int/triggerflow-reg"
    assert re.search(journal_line + r"\?limit=7 204", log)
    assert CLIENT_SECRET not in log
    assert token not in log


def test_process_stops_cleanly_on_sigterm(tmp_path) -> None:
    log = tmp_path / "emulator.log"
    with start_emulator(log_path=log) as emu:
        assert emu.client.health() is True
        process = emu.process
    assert process.returncode == 0
    text = log.read_text()
    assert text.startswith(f"adobe-emulator listening on {emu.base_url}\n")
    assert "adobe-emulator stopped" in text


def test_position_from_an_earlier_emulator_process_reads_the_new_journal_from_its_start() -> None:
    """A restarted emulator never reuses a position: a client's stored position from the old
    process is older than the new journal, so it gets the new journal from its start."""
    with start_emulator() as first:
        first.client.publish([cart("OLD-1"), cart("OLD-2")])
        old_last = get_journal(first.client).json()["_page"]["last"]
    with start_emulator() as second:
        fresh = cart("NEW-1")
        second.client.publish(fresh)
        response = get_journal(second.client, since=old_last)
        assert response.status_code == 200
        events = response.json()["events"]
        assert served_ids(events) == [fresh["messageId"]]
        assert events[0]["position"] > old_last  # same width, so string order is numeric order


# -- generated messages (POST /_emulator/generate, devstack.loadgen) --------------------------------
def generate(client: EmulatorClient, count: int, **body: Any) -> dict[str, Any]:
    return client.generate(count, **body)


def test_generated_and_published_messages_share_one_journal_in_order(client: EmulatorClient) -> None:
    from devstack.loadgen import MessageFactory, Mix

    published = [cart("P1"), cart("P2"), cart("P3")]
    before = client.publish(published[:2])
    answer = generate(client, count=3, seed=21, customers=100, trigger_ts_ms=1_796_000_000_000)
    after = client.publish(published[2])
    assert (answer["accepted"], answer["start"], answer["next_start"]) == (3, 0, 3)
    assert answer["first_position"] > before["positions"][-1]["position"]
    assert answer["last_position"] < after["positions"][0]["position"]

    # page across the published/generated boundaries with the default cap's small pages
    events: list[dict[str, Any]] = []
    response = get_journal(client, limit=2)
    while response.status_code == 200:
        events.extend(response.json()["events"])
        response = get_journal(client, url=next_link(response))
    assert response.status_code == 204
    positions = [e["position"] for e in events]
    assert positions == sorted(positions) and len(set(positions)) == 6
    assert positions[2] == answer["first_position"] and positions[4] == answer["last_position"]
    factory = MessageFactory(21, 100, Mix())
    assert served_ids(events) == [
        published[0]["messageId"], published[1]["messageId"],
        *[factory.message_id(i) for i in range(3)],
        published[2]["messageId"],
    ]
    assert [parse_envelope(e["event"]["event"]).trigger_ts for e in events[2:5]] == [1_796_000_000_000] * 3
    # `since` at a generated position continues with the next one
    from_generated = get_journal(client, since=answer["first_position"]).json()["events"]
    assert [e["position"] for e in from_generated] == positions[3:]
    stats = client.stats()
    assert (stats["journal_size"], stats["published"]) == (6, 6)


def test_generated_envelopes_are_placed_like_published_ones(client: EmulatorClient) -> None:
    from devstack.loadgen import MessageFactory, Mix

    client.publish([cart(f"X{i}") for i in range(20)])
    generate(client, count=200, seed=2, customers=1000)
    envelopes = [e["event"]["event"] for e in get_journal(client, limit=1000).json()["events"]]
    factory = MessageFactory(2, 1000, Mix())
    next_offset: dict[int, int] = {}
    for env in envelopes:
        parsed = parse_envelope(env)
        # the partition follows the messageId, as for a publish (malformed bodies keep the header)
        assert env["partition"] == partition_for(parsed.message_id, 15)
        assert env["offset"] == next_offset.get(env["partition"], 1000)
        next_offset[env["partition"]] = env["offset"] + 1
    assert [parse_envelope(env).message_id for env in envelopes[20:]] == [factory.message_id(i) for i in range(200)]


def test_reset_forgets_generated_messages_and_their_indexes(client: EmulatorClient) -> None:
    generate(client, count=10, seed=1, customers=50)
    assert client.stats()["journal_size"] == 10
    client.reset()
    assert client.stats()["journal_size"] == 0
    assert get_journal(client).status_code == 204
    assert generate(client, count=1, seed=1, customers=50)["start"] == 0
    assert client.generated() == {"generated": 1, "next_start": {"1": 1}}


def test_stats_list_is_unchanged_by_generation(client: EmulatorClient) -> None:
    generate(client, count=5, seed=1, customers=50)
    assert set(client.stats()) == {
        "token_requests", "tokens_issued", "journal_requests", "events_served", "journal_size", "published",
        *PIPELINE_STATS_ZERO,
    }
