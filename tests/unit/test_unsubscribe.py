"""Tests for include.triggerflow.unsubscribe: signed one-click unsubscribe tokens and URLs, the
List-Unsubscribe headers, and recording opt-outs in the store (SQLite, or PostgreSQL when
TRIGGERFLOW_TEST_PG_URL is set), up to reconcile suppressing the customer's next trigger."""

from __future__ import annotations

import base64
import hmac
import json
import re
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from include.triggerflow.store.schema import decision, profiles, unsubscribe
from include.triggerflow.unsubscribe import (
    FUTURE_SKEW,
    URL_PATH,
    InvalidUnsubscribeToken,
    OptOutRecorded,
    UnsubscribeClaim,
    UnsubscribeLinks,
    check_token_format,
    record_opt_out,
    record_opt_out_in,
    redact_token,
    token_key_for,
)
from tests.fixtures import envelope_json

SECRET = "unit-test-secret-0123456789abcdef"
BASE = "https://airflow.example.com"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
URL_SAFE = re.compile(r"[A-Za-z0-9_.~-]+")


@pytest.fixture
def links() -> UnsubscribeLinks:
    return UnsubscribeLinks(SECRET, BASE)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def refused(links: UnsubscribeLinks, token, reason: str, match: str, **kwargs) -> InvalidUnsubscribeToken:
    with pytest.raises(InvalidUnsubscribeToken, match=match) as info:
        links.verify(token, **kwargs)
    assert info.value.reason == reason
    assert SECRET not in str(info.value)
    return info.value


# -- tokens ------------------------------------------------------------------------------------------
def test_sign_verify_round_trip(links: UnsubscribeLinks) -> None:
    token = links.sign("C0001", "cart_abandonment", issued_at=T0)
    assert links.verify(token, now=T0 + timedelta(days=400)) == UnsubscribeClaim("C0001", "cart_abandonment", T0)
    assert links.verify(links.sign("C0002")).route is None
    # ids with any characters survive (JSON inside base64url)
    odd = "Ünïcødé id/with?&=#. and \"quotes\""
    assert links.verify(links.sign(odd, "r", issued_at=T0), now=T0).customer_id == odd


def test_token_is_versioned_compact_and_deterministic(links: UnsubscribeLinks) -> None:
    token = links.sign("C0001", "cart_abandonment", issued_at=T0)
    version, payload, signature = token.split(".")
    assert version == "v1"
    assert json.loads(unb64(payload)) == ["C0001", "cart_abandonment", int(T0.timestamp())]
    assert len(unb64(signature)) == 32  # the full HMAC-SHA256
    assert token == links.sign("C0001", "cart_abandonment", issued_at=T0)
    assert token != links.sign("C0001", "browse_abandonment", issued_at=T0)
    assert token != links.sign("C0001", "cart_abandonment", issued_at=T0 + timedelta(seconds=1))
    assert len(token) < 120


def test_tampered_payload_is_refused(links: UnsubscribeLinks) -> None:
    version, _, signature = links.sign("C0001", "cart_abandonment", issued_at=T0).split(".")
    forged = b64(json.dumps(["C0002", "cart_abandonment", int(T0.timestamp())], separators=(",", ":")).encode())
    refused(links, f"{version}.{forged}.{signature}", "signature", "^bad unsubscribe token signature: the link was altered or signed with another secret$")


def test_tampered_signature_is_refused(links: UnsubscribeLinks) -> None:
    token = links.sign("C0001", issued_at=T0)
    head, signature = token.rsplit(".", 1)
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    refused(links, f"{head}.{flipped}", "signature", "bad unsubscribe token signature")
    # the last character carries 2 unused bits: a non-canonical spelling of the same bytes is refused too
    last = signature[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    sibling = alphabet[alphabet.index(last) ^ 1]
    assert unb64(signature[:-1] + sibling) == unb64(signature)
    refused(links, f"{head}.{signature[:-1]}{sibling}", "signature", "bad unsubscribe token signature")


def test_wrong_secret_is_refused(links: UnsubscribeLinks) -> None:
    other = UnsubscribeLinks("another-secret-0123456789abcdef", BASE)
    refused(links, other.sign("C0001"), "signature", "signed with another secret")
    # the key is derived from the secret for this purpose: a bare HMAC under the secret is not valid
    import hashlib
    import hmac

    payload = b64(json.dumps(["C0001", None, int(time.time())]).encode())
    naive = b64(hmac.new(SECRET.encode(), f"v1.{payload}".encode(), hashlib.sha256).digest())
    refused(links, f"v1.{payload}.{naive}", "signature", "bad unsubscribe token signature")


@pytest.mark.parametrize("cut", [1, 10, 43])
def test_truncated_token_is_refused(links: UnsubscribeLinks, cut: int) -> None:
    token = links.sign("C0001", issued_at=T0)
    with pytest.raises(InvalidUnsubscribeToken) as info:
        links.verify(token[:-cut])
    assert info.value.reason in {"signature", "malformed"}
    refused(links, token.rsplit(".", 1)[0], "malformed", "expected 3 dot-separated parts")
    refused(links, token.rsplit(".", 1)[0] + ".", "malformed", "expected 3 dot-separated parts")


@pytest.mark.parametrize(
    ("garbage", "reason", "match"),
    [
        ("", "malformed", "it is empty"),
        (None, "malformed", "it is empty"),
        ("hello", "malformed", "expected 3 dot-separated parts"),
        ("a.b.c.d", "malformed", "expected 3 dot-separated parts"),
        ("v1.!!!.abc", "malformed", "not base64url"),
        ("v1.abc.a b", "malformed", "not base64url"),
        ("v1." + "A" * 2000 + ".x", "malformed", "too long"),
        ("v2.abc.def", "version", r"^unknown unsubscribe token version 'v2': this server reads 'v1'$"),
        ("<script>.abc.def", "version", r"^unknown unsubscribe token version: this server reads 'v1'$"),
    ],
)
def test_garbage_is_refused(links: UnsubscribeLinks, garbage, reason: str, match: str) -> None:
    error = refused(links, garbage, reason, match)
    assert "<script>" not in str(error)


def test_signed_but_unreadable_payload_is_malformed(links: UnsubscribeLinks) -> None:
    """Defence in depth: a payload that verifies but is not ours (e.g. another signer's format)."""
    for raw in (b"not json", json.dumps({"c": "C1"}).encode(), json.dumps(["", None, 1]).encode(), json.dumps(["C1", None, "1"]).encode()):
        signed = f"v1.{b64(raw)}"
        error = refused(links, f"{signed}.{links._signature(signed)}", "malformed", "^malformed unsubscribe token: ")
        assert "payload" in str(error)


def test_expired_token_is_refused() -> None:
    links = UnsubscribeLinks(SECRET, BASE, max_age=timedelta(days=30))
    token = links.sign("C0001", issued_at=T0)
    assert links.verify(token, now=T0 + timedelta(days=30)).customer_id == "C0001"
    refused(
        links, token, "expired",
        r"^unsubscribe token expired: issued 2026-03-01T12:00:00Z, links are valid for 30 days$",
        now=T0 + timedelta(days=30, seconds=1),
    )
    # without max_age a link does not expire
    assert UnsubscribeLinks(SECRET, BASE).verify(token, now=T0 + timedelta(days=3650)).issued_at == T0


def test_future_issued_at_beyond_the_skew_is_refused(links: UnsubscribeLinks) -> None:
    assert links.verify(links.sign("C0001", issued_at=T0 + FUTURE_SKEW), now=T0).issued_at == T0 + FUTURE_SKEW
    refused(
        links, links.sign("C0001", issued_at=T0 + FUTURE_SKEW + timedelta(seconds=1)), "future",
        r"^unsubscribe token issued in the future \(2026-03-01T12:05:01Z\)", now=T0,
    )


def test_naive_datetimes_are_refused(links: UnsubscribeLinks) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        links.sign("C0001", issued_at=datetime(2026, 3, 1, 12))


@pytest.mark.parametrize("secret", ["", "s3cr3tQ", "Q" * 15, b"\x00" * 15])
def test_short_secret_is_refused(secret) -> None:
    with pytest.raises(ValueError, match=r"^unsubscribe signing secret is too short: use at least 16 bytes") as info:
        UnsubscribeLinks(secret, BASE)
    assert not secret or str(secret) not in str(info.value)
    UnsubscribeLinks("x" * 16, BASE)  # 16 bytes is enough
    UnsubscribeLinks(b"\x00" * 16, BASE)


@pytest.mark.parametrize("base", ["", "localhost:8080", "/triggerflow", "ftp://example.com", "https://", "http://exa mple.com", "https://example.com/?a=1", "https://user:pw@example.com", "https://example.com:99999"])
def test_relative_or_odd_base_url_is_refused(base: str) -> None:
    with pytest.raises(ValueError, match="unsubscribe base URL"):
        UnsubscribeLinks(SECRET, base)


def test_bad_customer_or_route_is_refused(links: UnsubscribeLinks) -> None:
    for customer in ("", None, "x" * 101):
        with pytest.raises(ValueError, match="customer_id"):
            links.sign(customer)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="route"):
        links.sign("C1", "r" * 101)


def test_repr_hides_the_key(links: UnsubscribeLinks) -> None:
    assert SECRET not in repr(links) and "airflow.example.com" in repr(links)


# -- URLs --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("base", "prefix"), [(BASE, BASE), (BASE + "/", BASE), ("http://localhost:8080", "http://localhost:8080"), ("https://example.com/airflow/", "https://example.com/airflow")])
def test_url_for_parses_and_is_url_safe(base: str, prefix: str) -> None:
    links = UnsubscribeLinks(SECRET, base)
    url = links.url_for("C0001 / ü", "cart_abandonment")
    assert url.startswith(f"{prefix}{URL_PATH}?token=")
    parts = urlsplit(url)
    assert parts.path.endswith("/triggerflow/unsubscribe/") and parts.fragment == ""
    [token] = parse_qs(parts.query, strict_parsing=True)["token"]
    assert URL_SAFE.fullmatch(token) and URL_SAFE.fullmatch(parts.query[len("token="):])
    assert links.verify(token).customer_id == "C0001 / ü"


def test_url_prefix_is_not_reserved_by_airflow() -> None:
    from airflow.api_fastapi.app import RESERVED_URL_PREFIXES

    assert not any(URL_PATH.startswith(prefix) for prefix in RESERVED_URL_PREFIXES)


def test_the_token_parameter_is_redacted_in_airflows_access_log(links: UnsubscribeLinks) -> None:
    """The API server logs every request's query string; a parameter named like a secret is
    written as ***, so the access log never holds a token (checked on a real server in
    tests/plugins/test_unsubscribe_plugin.py)."""
    from airflow.api_fastapi.common.http_access_log import _redact_query_string

    url = links.url_for("C0001", "cart_abandonment")
    token = parse_qs(urlsplit(url).query)["token"][0]
    logged = _redact_query_string(urlsplit(url).query)
    assert token.rsplit(".", 1)[1] not in logged and token not in logged


def test_url_for_reuses_the_derived_key(links: UnsubscribeLinks, monkeypatch: pytest.MonkeyPatch) -> None:
    """A URL costs one HMAC over a copy of the keyed object (~15 µs): the send stage signs one per
    email, so the key is derived once per UnsubscribeLinks and never per link."""
    real_new = hmac.new
    keyed: list[bytes] = []

    def counting_new(key: bytes, *args: object, **kwargs: object) -> object:
        keyed.append(key)
        return real_new(key, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hmac, "new", counting_new)
    urls = [links.url_for(f"C{i:06d}", "cart_abandonment") for i in range(1000)]
    assert keyed == []  # no key derivation, no new HMAC key schedule per URL
    assert len(set(urls)) == 1000
    token = parse_qs(urlsplit(urls[-1]).query)["token"][0]
    assert links.verify(token).customer_id == "C000999"
    UnsubscribeLinks(SECRET, BASE)
    assert len(keyed) == 2  # what a new UnsubscribeLinks costs: the derived key and its keyed HMAC


def test_redact_token_drops_the_signature(links: UnsubscribeLinks) -> None:
    token = links.sign("C0001", issued_at=T0)
    signature = token.rsplit(".", 1)[1]
    assert redact_token(token) == token.rsplit(".", 1)[0] + ".<signature>"
    assert signature not in redact_token(token)
    assert redact_token(None) == "<none>" and redact_token("garbage") == "<malformed>"


# -- the token's key and its format -----------------------------------------------------------------
def test_the_token_key_is_the_hash_of_the_signed_part(links: UnsubscribeLinks) -> None:
    import hashlib

    for customer, route, when in (("C0001", "cart_abandonment", T0), ("Zoë-7", None, T0 + timedelta(seconds=1)), ("C0001", "", T0)):
        token = links.sign(customer, route, issued_at=when)
        claim = links.verify(token)
        assert claim.token_key == hashlib.sha256(token.rsplit(".", 1)[0].encode()).hexdigest()
        # derived from the fields (legacy rows, hand-made claims) exactly the same
        assert token_key_for(customer, route, when) == claim.key == UnsubscribeClaim(customer, route, when).key
        assert token_key_for(customer, route, when.replace(tzinfo=None)) == claim.key  # SQLite's naive UTC
    assert token_key_for("C0001", None, T0) != token_key_for("C0001", None, T0 + timedelta(seconds=1))
    assert token_key_for("C0001", None, None) != token_key_for("C0002", None, None)  # legacy rows without a time
    assert len(token_key_for("C0001", None, None)) == 64


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "malformed"), ("", "malformed"), ("x" * 2000, "malformed"), ("v1.abc", "malformed"), ("v1..sig", "malformed"),
        ("a.b.c.d", "malformed"), ("v2.abc.def", "version"), ("v1.a+b.c", "malformed"), ("v1.abc.d=f", "malformed"),
        ("v1.abc.def", "malformed"),  # a signature must be 43 characters (32 bytes)
    ],
)
def test_the_format_is_checked_without_a_key(token, reason: str) -> None:
    with pytest.raises(InvalidUnsubscribeToken) as info:
        check_token_format(token)
    assert info.value.reason == reason


def test_a_well_formed_token_passes_the_format_check(links: UnsubscribeLinks) -> None:
    token = links.sign("C0001")
    assert check_token_format(token) == tuple(token.split("."))
    forged = token.rsplit(".", 1)[0] + "." + "A" * 43  # well-formed, wrong signature: for verify
    assert check_token_format(forged)[2] == "A" * 43
    refused(links, forged, "signature", "bad unsubscribe token signature")


# -- recording ---------------------------------------------------------------------------------------
def _profile(kit, customer_id: str = "C0001", **values) -> None:
    kit.add_profiles({"customer_id": customer_id, "email": f"{customer_id.lower()}@example.com", "shopper_id": f"SHOP-{customer_id}", **values})


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def test_record_opt_out_sets_the_flag_and_logs_the_request(kit, links: UnsubscribeLinks) -> None:
    _profile(kit, "C0001")
    _profile(kit, "C0002")
    claim = links.verify(links.sign("C0001", "cart_abandonment", issued_at=T0), now=T0)
    at = T0 + timedelta(hours=1)

    assert record_opt_out(kit.engine, claim, method="one-click", now=at) is True

    rows = {r["customer_id"]: r for r in kit.rows(profiles)}
    assert rows["C0001"]["opted_out"] is True and _utc(rows["C0001"]["updated_at"]) == at
    assert rows["C0002"]["opted_out"] is False  # nobody else
    [logged] = kit.rows(unsubscribe)
    assert (logged["customer_id"], logged["route"], logged["method"]) == ("C0001", "cart_abandonment", "one-click")
    assert _utc(logged["issued_at"]) == T0 and _utc(logged["received_at"]) == at


def test_record_opt_out_is_idempotent(kit, links: UnsubscribeLinks) -> None:
    _profile(kit, "C0001")
    claim = links.verify(links.sign("C0001", issued_at=T0), now=T0)
    first = T0 + timedelta(minutes=1)
    assert record_opt_out(kit.engine, claim, method="page", now=first) is True
    assert record_opt_out(kit.engine, claim, method="one-click", now=first + timedelta(minutes=5)) is True

    [row] = kit.rows(profiles)
    assert row["opted_out"] is True and _utc(row["updated_at"]) == first  # set once
    # one row per customer and link: the first request's (a repeat adds nothing)
    [logged] = kit.rows(unsubscribe)
    assert (logged["method"], _utc(logged["received_at"]), logged["token_key"]) == ("page", first, claim.key)


def test_each_link_used_gets_its_own_row(kit, links: UnsubscribeLinks) -> None:
    """The key is per link (customer, route, issue time): another email's link is another row,
    the same link used 50 times is one."""
    _profile(kit, "C0001")
    older = links.verify(links.sign("C0001", "cart_abandonment", issued_at=T0))
    newer = links.verify(links.sign("C0001", "cart_abandonment", issued_at=T0 + timedelta(days=1)))
    other = links.verify(links.sign("C0002", "cart_abandonment", issued_at=T0))
    for _ in range(50):
        record_opt_out(kit.engine, older, method="one-click")
    record_opt_out(kit.engine, newer, method="page")
    record_opt_out(kit.engine, other, method="one-click")
    got = sorted((r["customer_id"], _utc(r["issued_at"]), r["method"]) for r in kit.rows(unsubscribe))
    assert got == [("C0001", T0, "one-click"), ("C0001", T0 + timedelta(days=1), "page"), ("C0002", T0, "one-click")]


def test_record_opt_out_in_says_what_it_did(kit, links: UnsubscribeLinks) -> None:
    _profile(kit, "C0001")
    claim = links.verify(links.sign("C0001"))
    with kit.engine.begin() as conn:
        first = record_opt_out_in(conn, claim, method="one-click")
    with kit.engine.begin() as conn:
        again = record_opt_out_in(conn, claim, method="one-click")
    with kit.engine.begin() as conn:
        stranger = record_opt_out_in(conn, links.verify(links.sign("NOBODY")), method="page")
    assert first == OptOutRecorded(known=True, changed=True, new_request=True)
    assert again == OptOutRecorded(known=True, changed=False, new_request=False)
    assert stranger == OptOutRecorded(known=False, changed=False, new_request=True)


def test_unknown_customer_is_logged_not_an_error(kit, links: UnsubscribeLinks) -> None:
    _profile(kit, "C0001")
    claim = links.verify(links.sign("GONE-42", "browse_abandonment"))
    assert record_opt_out(kit.engine, claim, method="one-click") is False
    assert [r["opted_out"] for r in kit.rows(profiles)] == [False]
    [logged] = kit.rows(unsubscribe)
    assert (logged["customer_id"], logged["route"]) == ("GONE-42", "browse_abandonment")


def test_record_opt_out_refuses_an_unknown_method(kit, links: UnsubscribeLinks) -> None:
    _profile(kit, "C0001")
    with pytest.raises(ValueError, match="method must be one of one-click, page"):
        record_opt_out(kit.engine, links.verify(links.sign("C0001")), method="email")
    assert kit.count(unsubscribe) == 0 and kit.rows(profiles)[0]["opted_out"] is False


def test_record_opt_out_is_one_transaction(kit, links: UnsubscribeLinks, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the tf_unsubscribe insert fails, the profile is not changed either."""
    _profile(kit, "C0001")
    claim = UnsubscribeClaim(customer_id="C0001", route="r" * 500, issued_at=T0)  # too long for PostgreSQL's VARCHAR(100)
    if kit.engine.dialect.name == "sqlite":  # SQLite does not enforce lengths: break the insert another way
        with kit.engine.begin() as conn:
            conn.exec_driver_sql("CREATE TRIGGER tf_unsub_fail BEFORE INSERT ON tf_unsubscribe BEGIN SELECT RAISE(ABORT, 'boom'); END")
    with pytest.raises(DBAPIError):  # IntegrityError (SQLite trigger), DataError (PostgreSQL)
        record_opt_out(kit.engine, claim, method="one-click")
    assert kit.rows(profiles)[0]["opted_out"] is False
    assert kit.count(unsubscribe) == 0


def test_the_next_reconcile_suppresses_the_customer(kit, routing, links: UnsubscribeLinks) -> None:
    """The requirement end to end in the store: after the opt-out, the customer's next trigger is
    decided ``suppressed:opt-out`` and gets no ledger row."""
    from devstack.messages import DEMO_CATALOG
    from include.triggerflow.catalog import upsert_catalog
    from include.triggerflow.stages.reconcile import reconcile_batch
    from include.triggerflow.store.schema import send

    _profile(kit, "C0001", shopper_id="SHOP-ADA")
    # the shipped routes take products from the catalogue: the demo trigger's SKUs are in it
    upsert_catalog(kit.engine, [{"sku": sku, "name": d["name"], "price": d["price"], "currency": "EUR", "url": d["url"]} for sku, d in DEMO_CATALOG.items()])
    before = kit.add_batch("b1")
    kit.add_event(before, envelope_json(shopper_id="SHOP-ADA", offset=1))
    reconcile_batch(kit.engine, before, routing)
    assert [d["decision"] for d in kit.rows(decision, decision.c.batch_id == before)] == ["matched"]

    url = links.url_for("C0001", "cart_abandonment")
    token = parse_qs(urlsplit(url).query)["token"][0]
    assert record_opt_out(kit.engine, links.verify(token), method="one-click") is True

    after = kit.add_batch("b2")
    kit.add_event(after, envelope_json(shopper_id="SHOP-ADA", offset=2))
    reconcile_batch(kit.engine, after, routing)
    assert [d["decision"] for d in kit.rows(decision, decision.c.batch_id == after)] == ["suppressed:opt-out"]
    assert kit.count(send, send.c.batch_id == after) == 0
    with kit.engine.connect() as conn:
        assert conn.execute(select(profiles.c.opted_out).where(profiles.c.customer_id == "C0001")).scalar_one() is True


# -- migration 0007: token keys for rows written before them -----------------------------------------
def _old_store(url: str):
    """A store whose tf_unsubscribe was created before migration 0007 (no token_key column, no
    unique index): the old table is created first, so create_schema migrates it like a deployed
    store's."""
    from sqlalchemy import Index, MetaData, Table

    from include.triggerflow.store.engines import get_engine

    engine = get_engine(url)
    old = MetaData()
    table = Table(unsubscribe.name, old, *[c._copy() for c in unsubscribe.columns if c.name != "token_key"])
    Index("ix_tf_unsubscribe_customer", table.c.customer_id)
    old.create_all(engine)
    return engine, table


def test_migration_0007_keys_legacy_rows_and_removes_repeats(store_url: str, links: UnsubscribeLinks) -> None:
    from sqlalchemy import insert, inspect

    from include.triggerflow.store.migrations import create_schema

    engine, old_table = _old_store(store_url)
    at = T0 + timedelta(hours=1)
    legacy = [
        # the same link used three times (ids 1, 2, 4), another link of the same customer, a link
        # of another customer, and two rows without issued_at (one customer and route: repeats)
        ("C0001", "cart_abandonment", T0, "one-click"),
        ("C0001", "cart_abandonment", T0, "one-click"),
        ("C0001", "cart_abandonment", T0 + timedelta(days=1), "page"),
        ("C0001", "cart_abandonment", T0, "page"),
        ("C0002", "cart_abandonment", T0, "one-click"),
        ("C0003", None, None, "one-click"),
        ("C0003", None, None, "one-click"),
    ]
    with engine.begin() as conn:
        for n, (customer, route, issued, method) in enumerate(legacy):
            conn.execute(
                insert(old_table).values(customer_id=customer, route=route, issued_at=issued, method=method, received_at=at + timedelta(minutes=n))
            )

    create_schema(engine)

    with engine.connect() as conn:
        rows = conn.execute(
            select(unsubscribe.c.unsubscribe_id, unsubscribe.c.customer_id, unsubscribe.c.token_key).order_by(unsubscribe.c.unsubscribe_id)
        ).all()
        indexes = {i["name"]: i for i in inspect(conn).get_indexes("tf_unsubscribe")}
    # the earliest row of each (customer, link) is kept, with the key the link itself gives
    assert [(r[0], r[1]) for r in rows] == [(1, "C0001"), (3, "C0001"), (5, "C0002"), (6, "C0003")]
    assert rows[0][2] == links.verify(links.sign("C0001", "cart_abandonment", issued_at=T0)).key
    assert rows[1][2] == token_key_for("C0001", "cart_abandonment", T0 + timedelta(days=1))
    assert all(r[2] and len(r[2]) == 64 for r in rows)
    assert indexes["ux_tf_unsubscribe_customer_token"]["unique"]

    # after the migration, the same old link adds nothing; create_schema again is a no-op
    record_opt_out(engine, links.verify(links.sign("C0001", "cart_abandonment", issued_at=T0)), method="one-click")
    create_schema(engine)
    with engine.connect() as conn:
        assert conn.execute(select(unsubscribe.c.unsubscribe_id).order_by(unsubscribe.c.unsubscribe_id)).scalars().all() == [1, 3, 5, 6]


def test_migration_0007_on_an_empty_old_table_is_a_no_op(store_url: str) -> None:
    from sqlalchemy import inspect

    from include.triggerflow.store.migrations import create_schema
    from include.triggerflow.store.schema import schema_version

    engine, _ = _old_store(store_url)
    create_schema(engine)
    with engine.connect() as conn:
        assert "token_key" in {c["name"] for c in inspect(conn).get_columns("tf_unsubscribe")}
        assert conn.execute(select(schema_version.c.migration).where(schema_version.c.migration == "0007_unsubscribe_token_key")).first()
        assert conn.execute(select(unsubscribe.c.unsubscribe_id)).first() is None
