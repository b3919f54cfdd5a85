"""Reconcile and send with the catalogue (issue 11): one set-based catalogue look-up per batch and per
chunk, ``no-products`` for an event whose SKUs are all unknown (counted in the report's balance),
what was left out in the ``matched`` detail, and emails at the real SMTP sink that hold the
catalogue's products and no foreign host (here over a fake MailSession; at the real SMTP sink in
tests/integration/stages/test_content_stages_smtp.py). The stores hold the demo catalogue
(tests/unit/stages/conftest.py)."""

from __future__ import annotations

import email
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from email import policy
from email.message import EmailMessage

from sqlalchemy import Engine

from include.triggerflow.render import Renderer
from include.triggerflow.smtp_replies import SmtpOutcome, accepted
from include.triggerflow.stages import reconcile as reconcile_module
from include.triggerflow.stages.reconcile import reconcile_batch
from include.triggerflow.stages.report import compute_report
from include.triggerflow.store.schema import send
from tests.fixtures import (
    decisions_by_event,
    envelope_json,
    ledger_rows,
    send_chunk,
)
from tests.support import captured_sql

EVIL_PAGES = ["https://shop.example.com/p/TRL-RUN-42", "https://evil.example/login",
              "https://shop.example.com@evil.example/cart", "https://shop.example.com.evil.example/cart"]
EVIL = {"name": "Sign in again at evil.example", "price": 0.01, "url": "https://evil.example/login",
        "image_url": "https://evil.example/pixel.gif"}
PEOPLE = [{"customer_id": f"C{i}", "email": f"c{i}@example.com", "first_name": f"N{i}", "shopper_id": f"SHOP-{i}"}
          for i in range(1, 5)]


@contextmanager
def catalog_queries(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements that read the catalog table while the block runs."""
    with captured_sql(engine) as statements:
        seen: list[str] = []
        yield seen
    seen.extend(s for s in statements if re.search(r"\bFROM catalog\b", s))


def arrange(kit) -> dict[str, int]:
    """Four customers' cart triggers: forged details of a known SKU, known + unknown SKUs, only
    unknown SKUs, no products at all. Returns {case: event_id}."""
    kit.add_profiles(*PEOPLE)
    kit.add_batch("b1")
    cases = {
        "forged_known": {"TRL-RUN-42": {**EVIL, "quantity": 2}},
        "mixed": {"MRN-WOOL-SCK": {}, "EVIL-1": EVIL, "EVIL-2": {}},
        "only_unknown": {"EVIL-1": EVIL, "EVIL-2": {"name": "x"}},
        "no_products": {},
    }
    ids = {}
    for person, (case, products) in zip(PEOPLE, cases.items(), strict=True):
        ids[case] = kit.add_event("b1", envelope_json(shopper_id=person["shopper_id"], products=products, pages=EVIL_PAGES))
    return ids


def test_reconcile_decides_no_products_and_counts_what_was_left_out(kit, routing) -> None:
    ids = arrange(kit)

    with catalog_queries(kit.engine) as queries:
        result = reconcile_batch(kit.engine, "b1", routing)

    assert len(queries) == 1  # one set-based look-up for the whole batch
    decided = decisions_by_event(kit, "b1")
    assert {case: decided[i]["decision"] for case, i in ids.items()} == {
        "forged_known": "matched", "mixed": "matched", "only_unknown": "no-products", "no_products": "matched",
    }
    assert decided[ids["only_unknown"]]["detail"] == (
        "none of the 2 SKUs the event named is in the catalogue (2 unknown); 3 links dropped; nothing to show, no email"
    )
    assert decided[ids["mixed"]]["detail"] == (
        "matched by eVar01->shopper_id; 2 of 3 SKUs not in the catalogue; 3 links dropped (host-not-allowed 2, userinfo 1)"
    )
    assert decided[ids["forged_known"]]["detail"].endswith("; 3 links dropped (host-not-allowed 2, userinfo 1)")
    assert sorted(r["recipient"] for r in ledger_rows(kit)) == ["c1@example.com", "c2@example.com", "c4@example.com"]
    assert result.counts == {"matched": 3, "no-products": 1}

    report = compute_report(kit.engine, "b1")
    assert report.balanced, report.problems
    assert (report.counts["matched"], report.counts["queued"], report.counts["no_products"]) == (4, 3, 1)
    assert "+ no products 1" in report.table()


def test_a_replay_after_loading_the_catalogue_sends_a_no_products_event(kit, routing) -> None:
    from datetime import datetime

    from sqlalchemy import insert

    from include.triggerflow.store.schema import catalog

    ids = arrange(kit)
    reconcile_batch(kit.engine, "b1", routing)
    with kit.engine.begin() as conn:
        conn.execute(insert(catalog).values(sku="EVIL-2", name="A real product after all", in_stock=True,
                                            url="https://shop.example.com/p/EVIL-2", updated_at=datetime.now(UTC)))
    reconcile_batch(kit.engine, "b1", routing)
    decided = decisions_by_event(kit, "b1")
    assert decided[ids["only_unknown"]]["decision"] == "matched"
    assert "1 of 2 SKUs not in the catalogue" in decided[ids["only_unknown"]]["detail"]
    assert len(ledger_rows(kit)) == 4
    assert compute_report(kit.engine, "b1").balanced


def test_event_only_routes_need_no_catalogue(kit, routing) -> None:
    import dataclasses

    from include.triggerflow.config import RoutingConfig
    from include.triggerflow.content import ProductSource

    event_mode = RoutingConfig(path=routing.path, routes=tuple(
        dataclasses.replace(r, products=ProductSource.EVENT) for r in routing.routes))
    ids = arrange(kit)
    with catalog_queries(kit.engine) as queries:
        reconcile_batch(kit.engine, "b1", event_mode)
    assert queries == []
    decided = decisions_by_event(kit, "b1")
    assert {decided[i]["decision"] for i in ids.values()} == {"matched"}


def test_an_event_whose_content_raises_is_decided_alone(kit, routing, monkeypatch) -> None:
    """Per-event isolation (issue 10) holds for the content step: a bug that makes email_content
    raise for one event decides that event ``not reconciled`` and queues the others."""
    ids = arrange(kit)
    real = reconcile_module.email_content

    def fragile(parsed, route, catalog, locale=None):
        if "EVIL-1" in parsed.products and "MRN-WOOL-SCK" in parsed.products:
            raise RuntimeError("content bug")
        return real(parsed, route, catalog, locale)

    monkeypatch.setattr(reconcile_module, "email_content", fragile)
    reconcile_batch(kit.engine, "b1", routing)
    decided = decisions_by_event(kit, "b1")
    assert decided[ids["mixed"]]["decision"] == "unmatched"
    assert decided[ids["mixed"]]["detail"] == "not reconciled: RuntimeError: content bug"
    assert decided[ids["forged_known"]]["decision"] == "matched"
    assert compute_report(kit.engine, "b1").balanced


class RecordingSession:
    """A fake of the MailSession protocol send_chunk uses: accepts every message and keeps it."""

    sender = "triggers@shop.example.com"
    from_name = None
    message_id_domain = "mail.example.test"

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_prepared(self, recipient: str, message: bytes) -> SmtpOutcome:
        self.sent.append(message)
        return accepted()

    @contextmanager
    def opener(self) -> Iterator[RecordingSession]:
        yield self

    def messages(self) -> list[EmailMessage]:
        return [email.message_from_bytes(m, policy=policy.default) for m in self.sent]  # type: ignore[misc]


def test_send_looks_the_catalogue_up_once_per_chunk_and_emails_only_its_products(kit, routing) -> None:
    arrange(kit)
    session = RecordingSession()
    reconcile_batch(kit.engine, "b1", routing)

    with catalog_queries(kit.engine) as queries:
        result = send_chunk(kit.engine, "b1", 0, routing, Renderer(), session.opener)

    assert len(queries) == 1
    assert result.counts["sent"] == 3
    states = {r["recipient"]: r["state"] for r in kit.rows(send)}
    assert set(states.values()) == {"sent"}
    by_to = {m["To"]: m for m in session.messages()}
    forged = by_to["c1@example.com"]
    text = forged.get_body(preferencelist=("plain",)).get_content()
    html = forged.get_body(preferencelist=("html",)).get_content()
    assert "Trail Runner 2 Running Shoes x 2: $129.95" in text
    assert 'src="https://shop.example.com/img/TRL-RUN-42.jpg"' in html
    for part in (text, html):
        assert "evil" not in part and "0.01" not in part
    hosts = {m.split("/")[2] for m in re.findall(r'(?:href|src)="(https?://[^"]+)"', html)}
    assert hosts == {"shop.example.com", "localhost:8080"}  # the shop and the unsubscribe endpoint
    mixed = by_to["c2@example.com"].get_body(preferencelist=("plain",)).get_content()
    assert "Merino Wool Hiking Socks (3-pack)" in mixed and "EVIL" not in mixed
