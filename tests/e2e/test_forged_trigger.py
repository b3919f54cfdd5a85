"""Forged triggers through the real ``trigger_emails`` DAG (issue 11, "Your links only").

Analytics hits are unauthenticated: anyone who knows a shopper id can make a trigger carry any
product name, price, product URL, image and page URL. The real emulator process serves forged
triggers for known customers; the real DAG runs under dag.test() on the test's store (SQLite, or
PostgreSQL with TRIGGERFLOW_TEST_PG_URL) with the shipped routing (catalogue mode, link_hosts
[shop.example.com]) and a catalogue in the store; the real SMTP sink process stores what it is sent.

The received messages are parsed from the bytes the sink stored: every link, image source and bare
URL of both parts (and the List-Unsubscribe header) must be on shop.example.com or the unsubscribe
endpoint, and no attacker text may appear anywhere. A forged trigger naming only SKUs the catalogue
does not know gets the ``no-products`` decision and no email; the run still balances.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import insert, select

from devstack.messages import (
    BROWSE_ABANDONMENT_TRIGGER_ID,
    CART_ABANDONMENT_TRIGGER_ID,
    trigger_message,
)
from include.triggerflow.profiles import upsert_profiles
from tests.e2e.fault_helpers import (
    assert_balanced,
    batch_of,
    customers,
    emulator_stack,
    load_dag,
    minute,
    source_connection,
    summary,
)

pytestmark = pytest.mark.e2e

SHOP = "https://shop.example.com"
#: the unsubscribe endpoint of the tests' triggerflow_unsubscribe connection (tests/support.py)
UNSUBSCRIBE_HOST = "localhost:8080"
EVIL_NAME = "Account locked: sign in again at evil dot example"
EVIL_TEXTS = (
    "evil", "EVIL", EVIL_NAME, "Free iPhone", "<script", "javascript:", "onerror", "0.01", "0,01", "PWNED",
)
CATALOG_ROWS = [
    {"sku": "TRL-RUN-42", "name": "Trail Runner 2 Running Shoes", "price": "129.95", "currency": "USD",
     "url": f"{SHOP}/p/TRL-RUN-42", "image_url": f"{SHOP}/img/TRL-RUN-42.jpg", "names": {"fr": "Chaussures Trail Runner 2"}},
    {"sku": "MRN-WOOL-SCK", "name": "Merino Wool Hiking Socks (3-pack)", "price": "24.50", "currency": "USD",
     "url": f"{SHOP}/p/MRN-WOOL-SCK", "image_url": f"{SHOP}/img/MRN-WOOL-SCK.jpg", "names": None},
    {"sku": "UL-DAY-PCK", "name": "Ultralight 22L Day Pack", "price": "89.99", "currency": "USD",
     "url": f"{SHOP}/p/UL-DAY-PCK", "image_url": f"{SHOP}/img/UL-DAY-PCK.jpg", "names": None},
]
EVIL_PAGES = [
    "https://evil.example/login",
    "https://shop.example.com.evil.example/cart",
    "https://shop-example.com.evil.example/cart",
    "https://shop.example.com@evil.example/cart",
    "https://shop.example.com\\@evil.example/cart",
    "javascript:alert(document.cookie)//cart",
    "https://SHOP.example.com.evil.example./cart",
]


def _forged(kind: str) -> dict[str, Any]:
    """(products, pages, trigger) of each forged case: what the attacker put in the hit."""
    evil_product = {"name": EVIL_NAME, "price": 0.01, "quantity": 1, "url": "https://evil.example/login",
                    "image_url": "https://evil.example/pixel.gif"}
    cases: dict[str, dict[str, Any]] = {
        # the reproduction: a known SKU with the attacker's URL, pixel, price and name
        "evil_product": {"products": {"TRL-RUN-42": evil_product}, "pages": [f"{SHOP}/", *EVIL_PAGES]},
        # look-alike hosts as the last (cart) page and as product URLs
        "look_alike": {"products": {"MRN-WOOL-SCK": {**evil_product, "url": "https://shop.example.com.evil.example/p/x",
                                                     "image_url": "https://shop-example.com.evil.example/i.gif"}},
                       "pages": [f"{SHOP}/p/MRN-WOOL-SCK", "https://shop.example.com.evil.example/cart"]},
        # the userinfo trick and javascript: everywhere
        "userinfo": {"products": {"TRL-RUN-42": {**evil_product, "url": "https://shop.example.com@evil.example/",
                                                 "image_url": "javascript:alert(1)"}},
                     "pages": ["https://shop.example.com@evil.example/cart", "javascript:alert(1)"]},
        # attacker text and unknown SKUs beside a known one
        "attacker_text": {"products": {
            "UL-DAY-PCK": {"name": "<script>alert('PWNED')</script>", "price": "free"},
            "FREE-IPHONE": {"name": "Free iPhone: claim at https://evil.example/claim", "price": 0,
                            "url": "https://evil.example/claim"},
            "<img src=x onerror=alert(1)>": {"name": "PWNED"},
        }, "pages": EVIL_PAGES},
        # a browse trigger: attacker page URLs, a known product with an evil image
        "browse": {"trigger_id": BROWSE_ABANDONMENT_TRIGGER_ID,
                   "products": {"UL-DAY-PCK": {**evil_product, "image_url": "https://evil.example/pixel.gif"}},
                   "pages": EVIL_PAGES},
        # only SKUs the catalogue does not know: nothing to show, no email
        "only_unknown": {"products": {"EVIL-1": evil_product, "EVIL-2": {"name": "Free iPhone"}}, "pages": EVIL_PAGES},
    }
    return cases[kind]


CASES = ("evil_product", "look_alike", "userinfo", "attacker_text", "browse", "only_unknown")


@pytest.fixture
def stack(tmp_path: Path, airflow_db: Path, store_url: str, store_engine, monkeypatch: pytest.MonkeyPatch):
    def source(emu: Any) -> dict[str, Any]:
        return source_connection("journal", emu, page_size=25, environment="forged")

    with emulator_stack(tmp_path, store_url, monkeypatch, source) as (emu, smtp):
        yield emu, smtp, store_engine


def _load_catalog(engine) -> None:
    """The catalogue rows, written straight into the store's ``catalog`` table."""
    from include.triggerflow.store.schema import catalog

    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(insert(catalog), [{**row, "in_stock": True, "updated_at": now} for row in CATALOG_ROWS])


class _Html(HTMLParser):
    """The HTML part's link and image attributes (what a client follows or loads) and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is not None and name in ("href", "src", "background", "action", "srcset", "poster", "data"):
                self.links.append(value)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


# what a mail client may turn into a link in text: a URL with a scheme, or a bare domain name
_SCHEME_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s<>\"']+", re.IGNORECASE)
_DOMAIN = re.compile(r"(?<![\w@.-])(?:[a-z0-9-]+\.)+[a-z]{2,}(?![\w-])", re.IGNORECASE)
ALLOWED_NETLOCS = ("shop.example.com", UNSUBSCRIBE_HOST)


def _parts(raw: bytes) -> tuple[EmailMessage, str, str]:
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return message, text.get_content(), html.get_content()


def _check_text(text: str) -> None:
    for url in _SCHEME_URL.findall(text):
        assert urlsplit(url).netloc in ALLOWED_NETLOCS, url
    assert {d.lower() for d in _DOMAIN.findall(text)} <= {"shop.example.com"}, _DOMAIN.findall(text)


def _check_email(raw: bytes) -> None:
    """No foreign host and no attacker text anywhere in the message the server received."""
    message, text, html = _parts(raw)
    parsed = _Html()
    parsed.feed(html)
    assert parsed.links, "the HTML part has no links at all"
    for link in parsed.links:
        parts = urlsplit(link)
        assert parts.scheme in ("https", "http") and parts.netloc in ALLOWED_NETLOCS, link
        assert parts.scheme == "https" or parts.netloc == UNSUBSCRIBE_HOST, link
    assert "url(" not in html  # no CSS-loaded resource
    _check_text(text)
    _check_text(" ".join(parsed.text))
    assert str(message["List-Unsubscribe"]).startswith(f"<http://{UNSUBSCRIBE_HOST}/")
    decoded = text + html + str(message["Subject"])
    found = [needle for needle in EVIL_TEXTS if needle in decoded]
    assert found == [], found
    assert b"evil" not in raw.lower()


def test_forged_triggers_cannot_write_the_email(stack) -> None:
    from airflow.utils.state import DagRunState

    from include.triggerflow.store.schema import decision, send

    emu, smtp, engine = stack
    people = customers(len(CASES), prefix="F")
    upsert_profiles(engine, people)
    _load_catalog(engine)
    by_case = dict(zip(CASES, people, strict=True))
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    messages = []
    for i, case in enumerate(CASES):
        spec = _forged(case)
        messages.append(trigger_message(
            trigger_id=spec.get("trigger_id", CART_ABANDONMENT_TRIGGER_ID), shopper_id=by_case[case]["shopper_id"],
            products=spec["products"], pages=spec["pages"], triggered_at_ms=now_ms - 90_000 + i,
        ))
    emu.client.publish(messages)

    run = load_dag().test(logical_date=minute())
    assert run.state == DagRunState.SUCCESS

    emailed = [case for case in CASES if case != "only_unknown"]
    smtp.wait_for(len(emailed))
    raw_by_recipient: dict[str, bytes] = {}
    for path in smtp.eml_paths():
        raw = path.read_bytes()
        message = message_from_bytes(raw, policy=policy.default)
        raw_by_recipient[str(message["To"])] = raw
    assert sorted(raw_by_recipient) == sorted(by_case[c]["email"] for c in emailed)

    for case in emailed:
        raw = raw_by_recipient[by_case[case]["email"]]
        _check_email(raw)
        _, text, html = _parts(raw)
        # what the email does show: the catalogue's products and the routing file's button
        if case == "evil_product" or case == "userinfo":
            assert "Trail Runner 2 Running Shoes" in text and f'src="{SHOP}/img/TRL-RUN-42.jpg"' in html
            assert "$129.95" in text
        if case == "look_alike":
            assert "Merino Wool Hiking Socks (3-pack)" in text and f'href="{SHOP}/p/MRN-WOOL-SCK"' in html
        if case in ("attacker_text", "browse"):
            assert "Ultralight 22L Day Pack" in text and "$89.99" in text
        button = f"{SHOP}/" if case == "browse" else f"{SHOP}/cart"
        assert f'href="{button}"' in html

    batch_id = batch_of(engine, run.run_id)
    with engine.connect() as conn:
        decided = {
            key: (code, detail)
            for key, code, detail in conn.execute(
                select(decision.c.customer_key, decision.c.decision, decision.c.detail).where(decision.c.batch_id == batch_id)
            )
        }
        queued = set(conn.execute(select(send.c.recipient).where(send.c.batch_id == batch_id)).scalars())
    code, detail = decided[by_case["only_unknown"]["shopper_id"]]
    assert code == "no-products"
    assert detail == (
        "none of the 2 SKUs the event named is in the catalogue (2 unknown); 7 links dropped; nothing to show, no email"
    )
    assert by_case["only_unknown"]["email"] not in queued
    # what was left out is counted in the matched decisions' detail
    code, detail = decided[by_case["attacker_text"]["shopper_id"]]
    assert code == "matched"
    assert "2 of 3 SKUs not in the catalogue" in detail and "links dropped" in detail

    counts = summary(engine, batch_id)
    assert_balanced(counts)
    assert counts["no_products"] == 1
    assert counts["sent"] == len(emailed)
