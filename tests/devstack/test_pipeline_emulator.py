"""Tests of the emulator's Pipeline side (consume stream, discovery, retention, faults) and of its
legacy JWT exchange, run as a real subprocess and spoken to over HTTP.

One emulator process serves the module (short ping interval and stream lifetime keep it fast);
every test starts from an empty state (reset clears topics, tokens, faults and stats)."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.adobe_emulator import decode_sync_marker, partition_for
from devstack.emulator_client import EmulatorClient, EmulatorError
from devstack.messages import CART_ABANDONMENT_TRIGGER_ID, trigger_message
from devstack.processes import RunningEmulator, start_emulator
from include.triggerflow.events import PIPELINE_MESSAGE, parse_envelope

CLIENT_ID = "pipe-client"
CLIENT_SECRET = "pipe-s3cret-never-logged"
ORG_ID = "0123456789ABCDEF01234567@AdobeOrg"
TECH_ACCOUNT = "ABCDEF123456@techacct.adobe.com"
METASCOPE = "ent_campaign_sdk"
TOKEN_TTL = 3600
PING_INTERVAL = 0.2
PARTITIONS = 15


# -- fixtures ----------------------------------------------------------------------------------------
def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path, bytes]:
    """(private PEM, path of the public PEM given to the emulator, private PEM of another key)."""
    key = _rsa_key()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path_factory.mktemp("jwt") / "integration.pub.pem"
    path.write_bytes(public)
    other = _rsa_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return private, path, other


@pytest.fixture(scope="module")
def emulator(rsa_keys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    log = tmp_path_factory.mktemp("pipe-emulator") / "emulator.log"
    with start_emulator(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        org_id=ORG_ID,
        token_ttl=TOKEN_TTL,
        ping_interval=PING_INTERVAL,
        stream_max_seconds=3,
        jwt_public_key_path=rsa_keys[1],
        technical_account_id=TECH_ACCOUNT,
        metascope=METASCOPE,
        log_path=log,
    ) as emu:
        yield emu


@pytest.fixture
def emu(emulator: RunningEmulator) -> RunningEmulator:
    emulator.client.reset()
    return emulator


@pytest.fixture
def client(emu: RunningEmulator) -> EmulatorClient:
    return emu.client


def cart(shopper: str, **kwargs: Any) -> dict[str, Any]:
    return trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, shopper_id=shopper, **kwargs)


def message_id_for(partition: int) -> str:
    """A message id the emulator places in ``partition``."""
    while True:
        candidate = str(uuid.uuid4())
        if partition_for(candidate, PARTITIONS) == partition:
            return candidate


def publish_to(client: EmulatorClient, partition: int, count: int) -> list[int]:
    """Publish ``count`` messages into one partition; returns their offsets."""
    receipt = client.publish([cart(f"P{partition}-{i}", message_id=message_id_for(partition)) for i in range(count)])
    assert {p["partition"] for p in receipt["positions"]} == {partition}
    return [p["offset"] for p in receipt["positions"]]


def open_stream(
    client: EmulatorClient, *, topic: str = "triggers", headers: dict[str, str] | None = None,
    timeout: float = 5.0, **params: Any,
) -> requests.Response:
    params.setdefault("group", "test-group")
    merged = {"Authorization": f"Bearer {client.token()}", "Accept": "application/json", **(headers or {})}
    return requests.get(client.consume_url(topic), params=params, headers=merged, stream=True, timeout=timeout)


def data_of(lines: list[Any]) -> list[tuple[int, int]]:
    return [(ln["partition"], ln["offset"]) for ln in lines if isinstance(ln, dict) and ln.get("envelopeType") == "DATA"]


def types_of(lines: list[Any]) -> list[str]:
    return [ln.get("envelopeType") if isinstance(ln, dict) else "<raw>" for ln in lines]


# -- consume: stream shapes ------------------------------------------------------------------------
def test_stream_is_ndjson_of_the_journal_envelopes_then_a_ping(client: EmulatorClient) -> None:
    receipt = client.publish([cart(f"C{i}") for i in range(12)])
    with open_stream(client, reset="earliest") as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/x-ndjson"
        assert response.headers["Transfer-Encoding"] == "chunked"
        lines = []
        for raw in response.iter_lines():
            lines.append(json.loads(raw))
            if lines[-1]["envelopeType"] == "PING":
                break
    assert types_of(lines) == ["DATA"] * 12 + ["PING"]
    assert isinstance(lines[-1]["createTime"], int) and set(lines[-1]) == {"envelopeType", "createTime"}
    placed = {(p["partition"], p["offset"]) for p in receipt["positions"]}
    assert set(data_of(lines)) == placed
    # each DATA line is exactly the journal's inner envelope for the same message
    journal = requests.get(
        client.journal_url, headers=client.journal_headers(), params={"limit": 100}, timeout=5
    ).json()["events"]
    by_place = {(e["event"]["event"]["partition"], e["event"]["event"]["offset"]): e["event"]["event"] for e in journal}
    for line in lines[:-1]:
        assert line == by_place[(line["partition"], line["offset"])]
        assert parse_envelope(line).parse_error is None


def test_partitions_interleave_and_offsets_ascend_within_each(client: EmulatorClient) -> None:
    publish_to(client, 2, 3)
    publish_to(client, 9, 3)
    lines = client.consume(reset="earliest")
    assert data_of(lines) == [(2, 1000), (9, 1000), (2, 1001), (9, 1001), (2, 1002), (9, 1002)]


def test_sync_lines_every_sync_interval_and_pings_while_idle(client: EmulatorClient) -> None:
    publish_to(client, 4, 2)
    lines = client.consume(reset="earliest", sync_interval=100, until_ping=False, max_lines=12)
    kinds = types_of(lines)
    assert kinds[:3] == ["DATA", "DATA", "PING"]  # caught up at once
    assert kinds.count("SYNC") >= 3 and kinds.count("PING") >= 2
    assert set(kinds) == {"DATA", "SYNC", "PING"}
    # pings are spaced by the interval: judged by the emulator's own stamps (createTime, ms), which
    # a slow reader cannot shrink
    stamps = [ln["createTime"] for ln in lines if ln["envelopeType"] == "PING"]
    assert all(later - earlier >= PING_INTERVAL * 1000 * 0.8 for earlier, later in itertools.pairwise(stamps))
    sync = next(ln for ln in lines if ln["envelopeType"] == "SYNC")
    assert set(sync) == {"envelopeType", "syncMarker", "createTime"}
    assert decode_sync_marker(sync["syncMarker"]) == ("triggerflow-test", "triggers", {**{p: 1000 for p in range(PARTITIONS)}, 4: 1002})


def test_open_stream_serves_messages_published_later(client: EmulatorClient) -> None:
    with open_stream(client, reset="latest") as response:
        lines = response.iter_lines()
        assert json.loads(next(lines))["envelopeType"] == "PING"
        offsets = publish_to(client, 6, 2)
        received = []
        for raw in lines:
            item = json.loads(raw)
            if item["envelopeType"] == "DATA":
                received.append((item["partition"], item["offset"]))
            if len(received) == 2:
                break
    assert received == [(6, offsets[0]), (6, offsets[1])]


def test_stream_ends_cleanly_after_stream_max_seconds(client: EmulatorClient) -> None:
    opened_ms = time.time() * 1000
    with open_stream(client) as response:
        lines = [json.loads(raw) for raw in response.iter_lines()]  # ends without an error
    assert set(types_of(lines)) == {"PING"} and len(lines) >= 8
    # the emulator's own stamps: it pinged for about stream_max_seconds (3 s) and then stopped by
    # itself — no PING is stamped after the limit, however slowly this client read them
    stamps = [ln["createTime"] for ln in lines]
    assert stamps[-1] - stamps[0] >= (3 - 2 * PING_INTERVAL) * 1000 * 0.8
    assert stamps[-1] - stamps[0] <= 3 * 1000
    assert stamps[0] >= opened_ms - 1000  # stamped by this stream, not an earlier one


# -- consume: assign / reset / retention -----------------------------------------------------------
def test_assign_serves_only_listed_partitions_from_the_next_offset(client: EmulatorClient) -> None:
    publish_to(client, 1, 4)
    publish_to(client, 7, 2)
    lines = client.consume(assign={1: 1002})
    assert data_of(lines) == [(1, 1002), (1, 1003)]  # partition 7 not listed, not served
    lines = client.consume(assign={1: 1004, 7: 1000})  # 1004 = the end: nothing yet
    assert data_of(lines) == [(7, 1000), (7, 1001)]
    assert data_of(client.consume(assign="7:1001")) == [(7, 1001)]


def test_out_of_range_offsets_follow_reset(client: EmulatorClient) -> None:
    publish_to(client, 3, 3)
    below, above = {3: 5}, {3: 99_999}
    assert data_of(client.consume(assign=below, reset="earliest")) == [(3, 1000), (3, 1001), (3, 1002)]
    assert data_of(client.consume(assign=below, reset="latest")) == []
    assert data_of(client.consume(assign=above, reset="earliest")) == [(3, 1000), (3, 1001), (3, 1002)]
    assert data_of(client.consume(assign=above)) == []  # reset defaults to latest (PIPE-API)


def test_without_assign_reset_then_committed_group_offsets(client: EmulatorClient) -> None:
    publish_to(client, 5, 3)
    assert data_of(client.consume(group="g1", reset="latest")) == []
    lines = client.consume(group="g1", reset="earliest", sync_interval=50, until_ping=False, max_lines=8)
    assert data_of(lines) == [(5, 1000), (5, 1001), (5, 1002)]
    marker = next(ln["syncMarker"] for ln in lines if ln["envelopeType"] == "SYNC")
    committed = client.commit_sync(marker)
    assert committed["offsets"]["5"] == 1003
    publish_to(client, 5, 1)
    # The committed offset wins over reset=earliest; another group still starts per reset.
    assert data_of(client.consume(group="g1", reset="earliest")) == [(5, 1003)]
    assert len(data_of(client.consume(group="g2", reset="earliest"))) == 4
    bad = requests.post(
        f"{client.base_url}/pipeline/consumer/sync", data=b"not-a-marker",
        headers={"Authorization": f"Bearer {client.token()}"}, timeout=5,
    )
    assert bad.status_code == 400 and "syncMarker" in bad.json()["message"]


def test_expired_offsets_follow_reset(client: EmulatorClient) -> None:
    publish_to(client, 8, 5)
    result = client.expire(8, before_offset=1003)
    assert result["expired"] == 3 and result["earliest"]["8"] == 1003 and result["earliest"]["0"] == 1000
    assert data_of(client.consume(assign={8: 1001}, reset="earliest")) == [(8, 1003), (8, 1004)]
    assert data_of(client.consume(assign={8: 1001}, reset="latest")) == []
    assert data_of(client.consume(assign={8: 1004}, reset="latest")) == [(8, 1004)]  # still retained
    # offsets are never reused after expiry
    assert publish_to(client, 8, 1) == [1005]


def test_expire_all_before_a_create_time(client: EmulatorClient) -> None:
    publish_to(client, 10, 2)
    time.sleep(0.01)
    cutoff = int(time.time() * 1000)
    time.sleep(0.01)
    publish_to(client, 10, 1)
    result = client.expire_created_before(cutoff)
    assert result["expired"] == 2 and result["earliest"]["10"] == 1002
    assert data_of(client.consume(reset="earliest")) == [(10, 1002)]
    with pytest.raises(EmulatorError) as info:
        client._request("POST", "/_emulator/pipeline/expire", json={"partition": 99, "before_offset": 1})
    assert info.value.status == 400


# -- consume: errors -------------------------------------------------------------------------------
def test_consume_requires_a_valid_bearer_token(client: EmulatorClient) -> None:
    url = client.consume_url()
    params = {"group": "g"}
    for headers in ({"Accept": "application/json"}, {"Accept": "application/json", "Authorization": "Bearer nope"}):
        response = requests.get(url, params=params, headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_token"
        assert response.headers["Content-Type"] == "application/json"
    old = client.token()
    client.expire_tokens()
    expired = requests.get(url, params=params, headers={"Accept": "application/json", "Authorization": f"Bearer {old}"}, timeout=5)
    assert expired.status_code == 401 and "expired" in expired.json()["message"]


def test_consume_serves_only_application_json(client: EmulatorClient) -> None:
    for accept in ("application/x-protobuf", "*/*", "text/plain", None):
        headers = {"Authorization": f"Bearer {client.token()}"}
        if accept is not None:
            headers["Accept"] = accept
        else:
            headers["Accept"] = ""
        response = requests.get(client.consume_url(), params={"group": "g"}, headers=headers, timeout=5)
        assert response.status_code == 406, accept
        body = response.json()
        assert body["error"] == "not_acceptable"
        assert "only application/json is served here" in body["message"]
    ok = open_stream(client, headers={"Accept": "application/x-protobuf, application/json;q=0.5"})
    with ok:
        assert ok.status_code == 200


def test_unknown_topic_is_404(client: EmulatorClient) -> None:
    response = open_stream(client, topic="no-such-topic")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "message": "topic missing or not accessible"}


@pytest.mark.parametrize(
    ("params", "parameter", "words"),
    [
        ({"group": ""}, "group", "missing required query parameter 'group'"),
        ({"group": "g", "assign": "1-1000"}, "assign", "'1-1000' is not <partition>:<offset>"),
        ({"group": "g", "assign": "1:x"}, "assign", "is not <partition>:<offset>"),
        ({"group": "g", "assign": "1:5,1:6"}, "assign", "partition 1 is listed twice"),
        ({"group": "g", "assign": f"{PARTITIONS}:0"}, "assign", f"partition {PARTITIONS} is not in 0..{PARTITIONS - 1}"),
        ({"group": "g", "assign": ""}, "assign", "is not <partition>:<offset>"),
        ({"group": "g", "reset": "newest"}, "reset", "reset must be 'earliest' or 'latest'"),
        ({"group": "g", "syncInterval": "-5"}, "syncInterval", "syncInterval must be milliseconds"),
    ],
)
def test_malformed_parameters_are_400_naming_the_parameter(client: EmulatorClient, params, parameter, words) -> None:
    response = requests.get(
        client.consume_url(), params=params,
        headers={"Authorization": f"Bearer {client.token()}", "Accept": "application/json"}, timeout=5,
    )
    assert response.status_code == 400
    body = response.json()
    assert body["parameter"] == parameter
    assert words in body["message"]


def test_put_on_the_topic_is_405(client: EmulatorClient) -> None:
    response = requests.put(client.consume_url(), timeout=5)
    assert response.status_code == 405 and response.headers["Allow"] == "GET, POST"


# -- discovery -------------------------------------------------------------------------------------
def test_discovery_lists_the_topic_endpoint(emu: RunningEmulator, client: EmulatorClient) -> None:
    assert client.discover("triggers") == {
        "endpoints": [{"topic": "triggers", "httpEndPoint": emu.base_url, "location": "VA7", "partitions": PARTITIONS}]
    }
    assert client.discover("unknown-topic") == {"endpoints": []}
    headers = {"Authorization": f"Bearer {client.token()}"}
    no_org = requests.get(client.discovery_url, params={"topic": "triggers"}, headers=headers, timeout=5)
    wrong_org = requests.get(
        client.discovery_url, params={"topic": "triggers"}, headers={**headers, "x-gw-ims-org-id": "X@AdobeOrg"}, timeout=5
    )
    no_token = requests.get(client.discovery_url, params={"topic": "triggers"}, headers={"x-gw-ims-org-id": ORG_ID}, timeout=5)
    assert (no_org.status_code, wrong_org.status_code, no_token.status_code) == (403, 403, 401)
    assert client.stats()["discovery_requests"] == 5


# -- faults ----------------------------------------------------------------------------------------
def test_status_faults_answer_in_order_then_the_endpoint_recovers(client: EmulatorClient) -> None:
    publish_to(client, 0, 1)
    client.add_faults([
        {"endpoint": "consume", "kind": "status", "status": 503, "retry_after": 7, "times": 2},
        {"endpoint": "consume", "kind": "status", "status": 429, "message": "slow down"},
    ])
    answers = []
    for _ in range(3):
        response = open_stream(client, reset="earliest")
        answers.append((response.status_code, response.headers.get("Retry-After"), response.json()))
    assert answers == [
        (503, "7", {"error": "service_unavailable", "message": "injected fault: HTTP 503"}),
        (503, "7", {"error": "service_unavailable", "message": "injected fault: HTTP 503"}),
        (429, None, {"error": "too_many_requests", "message": "slow down"}),
    ]
    assert client.faults() == []
    assert data_of(client.consume(reset="earliest")) == [(0, 1000)]
    stats = client.stats()
    assert (stats["faults_fired"], stats["consume_requests"]) == (3, 4)


@pytest.mark.parametrize("endpoint", ["journal", "token", "discovery", "exchange"])
def test_status_faults_on_request_endpoints(emu: RunningEmulator, client: EmulatorClient, endpoint: str) -> None:
    token = client.token()
    client.add_faults([{"endpoint": endpoint, "kind": "status", "status": 500}])
    calls = {
        "journal": lambda: requests.get(client.journal_url, headers=client.journal_headers(token), timeout=5),
        "token": lambda: requests.post(
            f"{emu.base_url}/ims/token/v3",
            data={"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}, timeout=5,
        ),
        "discovery": lambda: requests.get(
            client.discovery_url, params={"topic": "triggers"},
            headers={"Authorization": f"Bearer {token}", "x-gw-ims-org-id": ORG_ID}, timeout=5,
        ),
        "exchange": lambda: requests.post(
            f"{emu.base_url}/ims/exchange/jwt", data={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}, timeout=5
        ),
    }
    first, second = calls[endpoint](), calls[endpoint]()
    assert first.status_code == 500 and first.json()["error"] == "internal_server_error"
    assert second.status_code != 500  # the rule was consumed as it fired
    assert client.stats()["faults_fired"] == 1


def test_slow_and_stall_on_a_request_endpoint_delay_the_answer(client: EmulatorClient) -> None:
    client.token()
    client.add_faults([
        {"endpoint": "discovery", "kind": "slow", "delay_ms": 300},
        {"endpoint": "discovery", "kind": "stall", "seconds": 2},
    ])
    fired = client.stats()["faults_fired"]
    client.discover()
    assert client.stats()["faults_fired"] == fired + 1  # the slow rule delayed this answer
    with pytest.raises(requests.ReadTimeout):
        requests.get(
            client.discovery_url, params={"topic": "triggers"},
            headers={"Authorization": f"Bearer {client.token()}", "x-gw-ims-org-id": ORG_ID}, timeout=0.5,
        )


def test_cut_closes_the_stream_without_terminator_after_n_data_lines(client: EmulatorClient) -> None:
    publish_to(client, 11, 5)
    client.add_faults([{"endpoint": "consume", "kind": "cut", "after_messages": 3}])
    received = []
    with pytest.raises(requests.exceptions.ChunkedEncodingError), open_stream(client, reset="earliest") as response:
        for raw in response.iter_lines():
            received.append(json.loads(raw))
    assert data_of(received) == [(11, 1000), (11, 1001), (11, 1002)]
    assert client.faults() == []
    # the next stream is whole again
    assert len(data_of(client.consume(reset="earliest"))) == 5
    assert client.stats()["faults_fired"] == 1


def test_slow_spaces_data_lines(client: EmulatorClient) -> None:
    publish_to(client, 12, 4)
    client.add_faults([{"endpoint": "consume", "kind": "slow", "delay_ms": 150}])
    before = client.stats()["faults_fired"]
    lines = client.consume(reset="earliest")
    assert len(data_of(lines)) == 4
    fired = client.stats()["faults_fired"]
    assert fired == before + 1  # this stream was the slowed one (whole, in order)
    assert client.faults() == []
    again = client.consume(reset="earliest")  # spent: not slowed again
    assert len(data_of(again)) == 4
    assert client.stats()["faults_fired"] == fired  # the fault did not fire again


def test_duplicate_sends_every_data_line_twice_for_n_streams(client: EmulatorClient) -> None:
    publish_to(client, 13, 2)
    client.add_faults([{"endpoint": "consume", "kind": "duplicate", "times": 2}])
    doubled = [(13, 1000), (13, 1000), (13, 1001), (13, 1001)]
    assert data_of(client.consume(reset="earliest")) == doubled
    assert data_of(client.consume(reset="earliest")) == doubled
    assert data_of(client.consume(reset="earliest")) == [(13, 1000), (13, 1001)]
    stats = client.stats()
    assert (stats["data_lines_streamed"], stats["faults_fired"]) == (10, 2)


def test_malformed_replaces_the_body_keeping_partition_and_offset(client: EmulatorClient) -> None:
    publish_to(client, 14, 3)
    client.add_faults([{"endpoint": "consume", "kind": "malformed", "partition": 14, "offset": 1001}])
    lines = [ln for ln in client.consume(reset="earliest") if ln["envelopeType"] == "DATA"]
    assert [(ln["partition"], ln["offset"]) for ln in lines] == [(14, 1000), (14, 1001), (14, 1002)]
    assert lines[1][PIPELINE_MESSAGE] == "not an object"
    assert isinstance(lines[0][PIPELINE_MESSAGE], dict) and isinstance(lines[2][PIPELINE_MESSAGE], dict)
    assert parse_envelope(lines[1]).parse_error is not None
    # times counts messages, across streams
    client.add_faults([{"endpoint": "consume", "kind": "malformed", "times": 2}])
    first = client.consume(assign={14: 1002})
    assert first[0][PIPELINE_MESSAGE] == "not an object"
    assert client.faults()[0]["times"] == 1
    second = client.consume(assign={14: 1000})
    assert second[0][PIPELINE_MESSAGE] == "not an object" and isinstance(second[1][PIPELINE_MESSAGE], dict)
    assert client.faults() == []


def test_malformed_raw_line_is_inserted_before_the_next_data_line(client: EmulatorClient) -> None:
    publish_to(client, 0, 2)
    client.add_faults([{"endpoint": "consume", "kind": "malformed", "line": '{"envelopeType":"DATA", "garbage'}])
    lines = client.consume(reset="earliest")
    assert lines[0] == '{"envelopeType":"DATA", "garbage'
    assert data_of(lines) == [(0, 1000), (0, 1001)]


def test_stall_sends_nothing_for_a_while(client: EmulatorClient) -> None:
    publish_to(client, 1, 3)
    client.add_faults([{"endpoint": "consume", "kind": "stall", "seconds": 2, "after_messages": 1}])
    received = []
    # requests wraps the read timeout in a ConnectionError
    with pytest.raises(requests.exceptions.ConnectionError), open_stream(client, reset="earliest", timeout=0.5) as response:
        for raw in response.iter_lines():
            received.append(json.loads(raw))
    assert data_of(received) == [(1, 1000)]
    assert len(data_of(client.consume(reset="earliest"))) == 3


def test_ping_first_opens_the_stream_with_pings_before_data(client: EmulatorClient) -> None:
    publish_to(client, 2, 2)
    client.add_faults([{"endpoint": "consume", "kind": "ping_first", "count": 3}])
    lines = client.consume(reset="earliest", until_ping=False, max_lines=6)
    assert types_of(lines) == ["PING", "PING", "PING", "DATA", "DATA", "PING"]
    # one stream only: the next one starts with its data
    assert types_of(client.consume(reset="earliest"))[:2] == ["DATA", "DATA"]


def test_interleave_pings_sends_a_ping_after_every_data_line(client: EmulatorClient) -> None:
    publish_to(client, 4, 3)
    client.add_faults([{"endpoint": "consume", "kind": "interleave_pings"}])
    lines = client.consume(reset="earliest", until_ping=False, max_lines=7)
    assert types_of(lines) == ["DATA", "PING", "DATA", "PING", "DATA", "PING", "PING"]


def test_pings_only_never_serves_what_is_waiting(client: EmulatorClient) -> None:
    publish_to(client, 5, 2)
    client.add_faults([{"endpoint": "consume", "kind": "pings_only"}])
    lines = client.consume(reset="earliest", until_ping=False, max_lines=4)
    assert types_of(lines) == ["PING"] * 4
    assert client.stats()["data_lines_streamed"] == 0


def test_huge_line_is_one_line_of_that_size_before_the_chosen_data_line(client: EmulatorClient) -> None:
    publish_to(client, 6, 2)
    client.add_faults([{"endpoint": "consume", "kind": "huge_line", "size": 3_000_000, "after_messages": 1}])
    lines = client.consume(reset="earliest", max_lines=3)
    assert [ln if not isinstance(ln, str) else len(ln) for ln in lines][1] == 3_000_000
    assert data_of(lines) == [(6, 1000), (6, 1001)]


def test_raw_bytes_reach_the_stream_and_the_journal_verbatim(client: EmulatorClient) -> None:
    invalid = b'{"header":{"messageId":"\xff\xfe"}}'
    receipt = client.publish_bytes([invalid], as_="pipeline_message", partition=7)
    assert [(p["partition"], p["offset"]) for p in receipt["positions"]] == [(7, 1000)]
    verbatim = client.publish_bytes([b"not json \xc3"], partition=7)["positions"]
    assert verbatim[0]["offset"] == 1001
    with open_stream(client, reset="earliest") as response:
        raw_lines = [line for line in response.iter_lines()][:2]
    assert raw_lines[0].startswith(b'{"envelopeType":"DATA","partition":7,"offset":1000,')
    assert raw_lines[0].endswith(b',"' + PIPELINE_MESSAGE.encode() + b'":' + invalid + b"}")
    assert raw_lines[1] == b"not json \xc3"
    page = requests.get(client.journal_url, headers=client.journal_headers(), timeout=5).content
    assert invalid in page and b'"event":not json \xc3}' in page
    assert client.stats()["journal_size"] == 2


@pytest.mark.parametrize(
    "body",
    [{}, {"items": []}, {"items": [{"b64": "@@@"}]}, {"items": [{"b64": "eA==", "as": "neither"}]},
     {"items": [{"b64": "eA==", "partition": PARTITIONS}]}, {"items": [{"b64": "eA=="}], "topic": "a/b"}],
)
def test_raw_publish_is_validated(client: EmulatorClient, body: dict[str, Any]) -> None:
    response = requests.post(f"{client.base_url}/_emulator/raw", json=body, timeout=5)
    assert response.status_code == 400
    assert client.stats()["journal_size"] == 0


def test_token_answer_sets_or_leaves_out_expires_in(client: EmulatorClient) -> None:
    client.add_faults([
        {"endpoint": "token", "kind": "token_answer", "expires_in": float("inf")},
        {"endpoint": "token", "kind": "token_answer"},
    ])
    url = f"{client.base_url}/ims/token/v3"
    form = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    first = requests.post(url, data=form, timeout=5)
    assert b'"expires_in":Infinity' in first.content
    second = requests.post(url, data=form, timeout=5).json()
    assert "expires_in" not in second and second["access_token"]
    assert requests.post(url, data=form, timeout=5).json()["expires_in"] == TOKEN_TTL


def test_pad_sends_a_chunked_answer_with_a_pad_member(client: EmulatorClient) -> None:
    client.publish([cart("PAD")])
    client.add_faults([{"endpoint": "journal", "kind": "pad", "size": 100_000}])
    response = requests.get(client.journal_url, headers=client.journal_headers(), timeout=5)
    assert "Content-Length" not in response.headers
    body = response.json()
    assert len(body["_pad"]) == 100_000 and len(body["events"]) == 1
    assert "_pad" not in requests.get(client.journal_url, headers=client.journal_headers(), timeout=5).json()


def test_fault_rules_are_validated_listed_and_cleared(client: EmulatorClient) -> None:
    for bad in (
        {"endpoint": "nowhere", "kind": "status"},
        {"endpoint": "consume", "kind": "explode"},
        {"endpoint": "journal", "kind": "cut"},
        {"endpoint": "consume", "kind": "status", "status": 42},
        {"endpoint": "consume", "kind": "slow", "delay_ms": -1},
        {"endpoint": "consume", "kind": "status", "colour": "red"},
        {"endpoint": "journal", "kind": "token_answer", "expires_in": 5},
        {"endpoint": "journal", "kind": "ping_first"},
        {"endpoint": "consume", "kind": "huge_line", "size": 10**12},
    ):
        with pytest.raises(EmulatorError) as info:
            client.add_faults([bad])
        assert info.value.status == 400, bad
    client.add_faults([{"endpoint": "consume", "kind": "status", "status": 503, "times": 3}, {"endpoint": "token", "kind": "slow", "delay_ms": 5}])
    listed = client.faults()
    assert [(r["endpoint"], r["kind"], r["times"]) for r in listed] == [("consume", "status", 3), ("token", "slow", 1)]
    assert client.clear_faults() == 2
    assert client.faults() == []


# -- JWT exchange (legacy service account) ---------------------------------------------------------
def sign(claims: dict[str, Any], private_pem: bytes, algorithm: str = "RS256") -> str:
    return jwt.encode(claims, private_pem, algorithm=algorithm)


def claims(client: EmulatorClient, **overrides: Any) -> dict[str, Any]:
    base = client.jwt_claims(technical_account_id=TECH_ACCOUNT, metascope=METASCOPE)
    for name, value in overrides.items():
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def exchange_error(client: EmulatorClient, token: str | None) -> tuple[int, dict[str, Any]]:
    data = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    if token is not None:
        data["jwt_token"] = token
    response = requests.post(f"{client.base_url}/ims/exchange/jwt", data=data, timeout=5)
    return response.status_code, response.json()


def test_jwt_exchange_success_gives_a_usable_token_with_expiry_in_milliseconds(client: EmulatorClient, rsa_keys) -> None:
    answer = client.jwt_exchange(sign(claims(client), rsa_keys[0]))
    assert set(answer) == {"token_type", "access_token", "expires_in"}
    assert answer["token_type"] == "bearer"
    assert answer["expires_in"] == TOKEN_TTL * 1000  # milliseconds, unlike /ims/token/v3
    publish_to(client, 2, 1)
    response = requests.get(
        client.consume_url(), params={"group": "jwt", "reset": "earliest"},
        headers={"Authorization": f"Bearer {answer['access_token']}", "Accept": "application/json"},
        stream=True, timeout=5,
    )
    with response:
        assert response.status_code == 200
        assert json.loads(next(response.iter_lines()))["envelopeType"] == "DATA"
    assert client.stats()["jwt_exchanges"] == 1


def test_jwt_exchange_errors_in_adobes_order(client: EmulatorClient, rsa_keys) -> None:
    private, _, other_private = rsa_keys
    now = int(time.time())
    base = client.base_url
    hs256 = jwt.encode(claims(client), "a-shared-secret-that-is-long-enough-for-hs256", algorithm="HS256")
    cases = [
        (None, 400, "invalid_token", "jwt_token is missing"),
        ("not-a-jwt", 400, "invalid_signature", "not a JWT"),
        (hs256, 400, "invalid_signature", "RS256"),
        (sign(claims(client), other_private), 400, "invalid_signature", "does not verify"),
        (sign(claims(client, exp=None), private), 400, "invalid_token", "no exp claim"),
        (sign(claims(client, exp=now - 10), private), 400, "invalid_token", "JWT token expired"),
        # several problems: the earliest check answers (expired before aud)
        (sign(claims(client, exp=now - 10, aud="https://elsewhere/c/x"), private), 400, "invalid_token", "JWT token expired"),
        (sign(claims(client, aud=f"{base}/c/someone-else"), private), 400, "invalid_client", "client id and aud mismatch"),
        (sign(claims(client, iss=""), private), 400, "invalid_token", "the subject must be a valid organization or client"),
        (sign(claims(client, iss="OTHER@AdobeOrg"), private), 400, "invalid_token", "the subject must be a valid organization or client"),
        (sign(claims(client, sub="SOMEONE@techacct.adobe.com"), private), 400, "invalid_token", "technical account"),
        (sign(claims(client, **{f"{base}/s/{METASCOPE}": None}), private), 400, "invalid_scope", f"{base}/s/{METASCOPE}"),
        (sign(claims(client, **{f"{base}/s/{METASCOPE}": False}), private), 400, "invalid_scope", "must be true"),
    ]
    for token, status, error, words in cases:
        got_status, body = exchange_error(client, token)
        assert (got_status, body["error"]) == (status, error), (words, body)
        assert words in body["error_description"], body
        assert set(body) == {"error", "error_description"}
    wrong_secret = requests.post(
        f"{base}/ims/exchange/jwt",
        data={"client_id": CLIENT_ID, "client_secret": "wrong", "jwt_token": sign(claims(client), private)}, timeout=5,
    )
    assert wrong_secret.status_code == 401 and wrong_secret.json()["error"] == "invalid_client"
    stats = client.stats()
    assert (stats["jwt_exchanges"], stats["tokens_issued"]) == (len(cases) + 1, 0)


def test_jwt_and_tokens_never_reach_the_log(emu: RunningEmulator, rsa_keys) -> None:
    token = sign(claims(emu.client), rsa_keys[0])
    access = emu.client.jwt_exchange(token)["access_token"]
    # also a JWT sent in the query string, where a careless log would show it
    requests.post(f"{emu.base_url}/ims/exchange/jwt", params={"jwt_token": token}, timeout=5)
    text = emu.log_path.read_text()
    assert "adobe-emulator POST /ims/exchange/jwt 200" in text
    assert "jwt_token=***" in text
    assert token not in text and access not in text and CLIENT_SECRET not in text
    assert CLIENT_SECRET not in repr(emu.client)


def test_first_offset_is_configurable_and_survives_reset() -> None:
    """A dev stack that restarts its emulator can keep offsets growing (a restarted emulator is
    otherwise like a recreated topic: offsets from 1000 again)."""
    with start_emulator(first_offset=5_000, ping_interval=PING_INTERVAL) as other:
        assert other.client.publish(cart("F1", message_id=message_id_for(3)))["positions"][0]["offset"] == 5_000
        other.client.reset()
        assert other.client.publish(cart("F2", message_id=message_id_for(3)))["positions"][0]["offset"] == 5_000
        assert data_of(other.client.consume(reset="earliest")) == [(3, 5_000)]
