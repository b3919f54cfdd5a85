"""The soak benchmark's pure parts: the pre-fill's payload templates, the customer blocks, the
README table built from a results document."""

from __future__ import annotations

import json

import pytest

from bench.prefill import payload_templates
from bench.soak import Blocks, medians, readme_table


def _fill(template: str, *values: str) -> str:
    for i, value in enumerate(values, start=1):
        template = template.replace(f"%{i}$s", value)
    return template


def test_payload_templates_are_real_envelopes_once_filled() -> None:
    from devstack.messages import BROWSE_ABANDONMENT_TRIGGER_ID, CART_ABANDONMENT_TRIGGER_ID

    templates = payload_templates()
    assert len(templates) == 4
    for template in templates:
        text = _fill(template, "SHOP-0000042", "6f1c1e7e-0000-4000-8000-000000000001", "1765000000000",
                     "1765000001500", "17", "trigger-under-test")
        env = json.loads(text)
        body = env["com.adobe.mcloud.pipeline.pipelineMessage"]["com.adobe.mcloud.protocol.trigger"]
        assert body["triggerId"] == "trigger-under-test"
        assert body["triggerTimestamp"] == 1765000000000
        assert env["offset"] == 17 and env["createTime"] == 1765000001500
        assert set(body["enrichments"]["analyticsHitSummary"]["dimensions"]["eVar01"]["data"]) == {"SHOP-0000042"}
        header = env["com.adobe.mcloud.pipeline.pipelineMessage"]["header"]
        assert header["messageId"] == "6f1c1e7e-0000-4000-8000-000000000001"
        assert 1200 < len(text) < 2600  # the realistic size the soak claims
    # the trigger id is a placeholder: no template keeps the id of the trigger it was made from
    assert all("%6$s" in t for t in templates)
    assert CART_ABANDONMENT_TRIGGER_ID not in "".join(templates) and BROWSE_ABANDONMENT_TRIGGER_ID not in "".join(templates)


def test_blocks_never_overlap_and_refuse_past_the_profiles() -> None:
    blocks = Blocks(size=1000, profiles=3000)
    assert [blocks.take() for _ in range(3)] == [0, 1000, 2000]
    with pytest.raises(SystemExit, match="too small"):
        blocks.take()


def test_medians_per_stage_and_table_shows_the_comparison() -> None:
    run = lambda land, send: {"land": {"events_per_s": land}, "validate": {"events_per_s": 100.0},  # noqa: E731
                              "reconcile": {"events_per_s": 50.0}, "send": {"emails_per_s": send}}
    empty = medians([run(1000.0, 300.0), run(1200.0, 320.0), run(1100.0, 310.0)])
    filled = medians([run(900.0, 240.0)])
    assert empty == {"land": 1100.0, "validate": 100.0, "reconcile": 50.0, "send": 310.0}
    size = {"tables": {"tf_event": {"rows_estimate": 24_000_000, "total_bytes": 40e9}}, "database_bytes": 60e9}
    after = {"tables": {"tf_event": {"rows_estimate": 18_000_000, "total_bytes": 40e9}}, "database_bytes": 60e9}
    result = {
        "finished_at": "2026-12-06T08:20:00+00:00", "machine": {"description": "2 vCPU"}, "pg_version": "15.20",
        "config": {"repeats": 3, "n": 50_000}, "history": {"label": "24 h of history at 1 M triggers/h"},
        "stages": {"empty": empty, "filled": filled, "purged": filled}, "sizes": {"filled_before": size, "filled_after_purge": after},
        "maintenance": {"state": "failed", "seconds": 300.0, "tasks": {"purge_store": {"state": "success", "duration": 280.0}},
                        "actions": [
            {"table": "tf_decision", "action": "delete", "rows": 5_900_000, "seconds": 0.0},
            {"table": "tf_event", "action": "delete", "rows": 6_000_000, "seconds": 200.0},
            {"table": "tf_send", "action": "strip", "rows": 0, "seconds": 0.1},
            {"table": "tf_event", "action": "vacuum", "rows": 0, "seconds": 61.0}]},
    }
    table = readme_table(result)
    assert "| stage `land` (events/s) | 1,100 | 900 | -18 % |" in table
    assert "| stage `send` (emails/s) | 310 | 240 | -23 % |" in table
    assert "24,000,000 events" in table and "**60.0 GB**" in table
    assert ("| maintenance run (`trigger_maintenance`, defaults; run failed) | | purge_store 280 s | | "
            "delete `tf_event` 6,000,000 in 200 s = 30,000 rows/s (with `tf_decision` 5,900,000 in the same pass); "
            "VACUUM `tf_event` 61 s |") in table
    assert "| — `tf_event` rows (estimate) / size | | 24,000,000 / 40.0 GB | | 18,000,000 / 40.0 GB |" in table
