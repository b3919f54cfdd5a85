"""bench.naive_loop, the benchmark's comparison, on a real store and the SMTP sink: every known,
opted-in customer of a routed trigger gets one email, the per-trigger figures count every event."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path

from bench.naive_loop import run_naive
from bench.profile_stages import (
    BENCH_START,
    UNROUTED_TRIGGER_ID,
    MemorySource,
    event_payloads,
    load_profiles,
    profile_rows,
)
from devstack.processes import start_smtp_sink
from include.triggerflow.stages.land import BatchRef, land_batch


def test_the_naive_loop_sends_one_email_per_known_customer_of_a_routed_trigger(store_engine, tmp_path: Path) -> None:
    rng = random.Random(3)
    people = profile_rows(300, rng)
    load_profiles(store_engine, people)
    payloads = event_payloads(400, 300, rng, known=0.8, invalid=0.0)
    batch = BatchRef(dag_id="naive", run_id="naive-1", run_type="scheduled", interval_start=BENCH_START,
                     interval_end=BENCH_START + timedelta(minutes=1))
    land_batch(store_engine, MemorySource(payloads, 100), batch, max_messages=len(payloads))

    with start_smtp_sink(tmp_path / "outbox", log_path=tmp_path / "sink.log") as sink:
        result = run_naive(store_engine.url.render_as_string(hide_password=False), batch.batch_id, sink.host, sink.port,
                           page_size=64, sink_pid=sink.process.pid)
        messages = sink.messages()

    opted_out = {p["shopper_id"] for p in people if p["opted_out"]}
    expected = 0
    for text in payloads:
        body = json.loads(text)["com.adobe.mcloud.pipeline.pipelineMessage"]["com.adobe.mcloud.protocol.trigger"]
        shopper = body["enrichments"]["analyticsHitSummary"]["dimensions"]["eVar01"]["data"][0]
        routed = body["triggerId"] != UNROUTED_TRIGGER_ID
        expected += routed and not shopper.startswith("SHOP-X") and shopper not in opted_out
    assert result["triggers"] == 400
    assert result["emails"] == expected == len(messages)
    assert result["loop_cpu_ms_per_trigger"] > 0
    assert all(m.get_content_type() == "multipart/alternative" for m in messages)
