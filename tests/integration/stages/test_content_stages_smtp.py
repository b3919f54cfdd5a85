"""Send with the catalogue (issue 11) at the real SMTP sink (a process), over TriggerMailHook: the
emails hold the catalogue's products and no foreign host. The same over a fake MailSession, and
the reconcile side: tests/unit/stages/test_content_stages.py."""

from __future__ import annotations

import re

from include.triggerflow.hooks.smtp import TriggerMailHook
from include.triggerflow.render import Renderer
from include.triggerflow.stages.reconcile import reconcile_batch
from include.triggerflow.store.schema import send
from tests.fixtures import send_chunk
from tests.unit.stages.test_content_stages import arrange, catalog_queries


def test_send_looks_the_catalogue_up_once_per_chunk_and_emails_only_its_products(kit, routing, smtp) -> None:
    arrange(kit)
    reconcile_batch(kit.engine, "b1", routing)

    with catalog_queries(kit.engine) as queries:
        result = send_chunk(kit.engine, "b1", 0, routing, Renderer(), TriggerMailHook)

    assert len(queries) == 1
    assert result.counts["sent"] == 3
    states = {r["recipient"]: r["state"] for r in kit.rows(send)}
    assert set(states.values()) == {"sent"}
    by_to = {m["To"]: m for m in smtp.messages()}
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
