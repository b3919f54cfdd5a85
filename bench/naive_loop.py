"""The loop a user would write without triggerflow: the benchmark's comparison for CPU per trigger.

Per page of ``page_size`` landed events: **one query** (the events joined to their profiles on
the shopper id the payload carries, extracted in SQL), then per event ``json.loads``, one Jinja2
render of an HTML and a text template (the products from the payload), one
``email.message.EmailMessage``, and **one SMTP session per page** sending them with
``send_message``. What it leaves out is what triggerflow is for: no validation or quarantine,
no dedup window, frequency cap, suppression or opt-out check beyond the profile's flag, no
ledger (a crash resends or loses a page), no per-recipient outcome, no link checks (the
payload's URLs go into the email as they are: hostile input reaches the reader).

:func:`run_naive` sends one batch of ``tf_event`` rows to an SMTP server and returns its CPU per
trigger: of the loop's process, of the PostgreSQL server during the loop (same machine), and of
the SMTP sink when given (a stand-in, reported apart). ``bench.run_benchmark`` runs it on the same
kind of batch as its triggerflow figures.

    python -m bench.naive_loop --n 20000 --pg    # a batch of --n events on a scratch store
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from devstack.messages import BROWSE_ABANDONMENT_TRIGGER_ID as BROWSE_TRIGGER  # noqa: E402 - after sys.path
from devstack.messages import CART_ABANDONMENT_TRIGGER_ID as CART_TRIGGER  # noqa: E402

FROM_ADDR = "shop@triggerflow.test"

HTML = """<!doctype html>
<html><body style="font-family: sans-serif">
<h1>Hi {{ first_name or "there" }}, {{ "your cart is waiting" if cart else "still thinking about it?" }}</h1>
<p>You left these behind:</p>
<table>
{% for p in products %}<tr><td><a href="{{ p.url }}">{{ p.name }}</a></td><td>x {{ p.quantity }}</td>
<td>${{ "%.2f"|format(p.price) }}</td></tr>
{% endfor %}</table>
<p><a href="https://shop.example.com/cart">Back to your cart</a></p>
<p style="font-size: small">You receive this email because you have an account at shop.example.com.
<a href="https://shop.example.com/unsubscribe?c={{ customer_id }}">Unsubscribe</a></p>
</body></html>
"""

TEXT = """Hi {{ first_name or "there" }}, {{ "your cart is waiting" if cart else "still thinking about it?" }}

{% for p in products %}- {{ p.name }} x {{ p.quantity }}: ${{ "%.2f"|format(p.price) }}
  {{ p.url }}
{% endfor %}
Back to your cart: https://shop.example.com/cart

Unsubscribe: https://shop.example.com/unsubscribe?c={{ customer_id }}
"""

_TRIGGER = "com.adobe.mcloud.protocol.trigger"
_MESSAGE = "com.adobe.mcloud.pipeline.pipelineMessage"


def _page_query(dialect: str) -> str:
    """One page of a batch's events with their profile: the join key is extracted in SQL."""
    if dialect == "postgresql":
        shopper = (f"(e.payload::jsonb #>> '{{{_MESSAGE},{_TRIGGER},enrichments,analyticsHitSummary,dimensions,"
                   "eVar01,data,0}')")
    else:
        shopper = (f"json_extract(e.payload, '$.\"{_MESSAGE}\".\"{_TRIGGER}\".enrichments.analyticsHitSummary."
                   "dimensions.eVar01.data[0]')")
    return (
        "SELECT e.event_id, e.payload, p.customer_id, p.email, p.first_name FROM tf_event e "
        f"JOIN profiles p ON p.shopper_id = {shopper} "
        "WHERE e.batch_id = :batch AND e.event_id > :after AND NOT p.opted_out ORDER BY e.event_id LIMIT :limit"
    )


def run_naive(url: str, batch_id: str, smtp_host: str, smtp_port: int, *, page_size: int = 1000,
              sink_pid: int | None = None) -> dict[str, Any]:
    """Send the batch's events the naive way; returns counts, seconds and CPU per trigger (ms)."""
    import smtplib

    import jinja2
    from sqlalchemy import create_engine, text

    from bench.profile_stages import _process_cpu, cpu_since, postmaster_pid, server_processes_cpu

    engine = create_engine(url)
    env = jinja2.Environment(autoescape=True)
    html, plain = env.from_string(HTML), jinja2.Environment(autoescape=False).from_string(TEXT)
    query = text(_page_query(engine.dialect.name))
    postmaster = postmaster_pid(url)
    server0, sink0 = server_processes_cpu(postmaster), _process_cpu(sink_pid) if sink_pid else 0.0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    after, sent, skipped = 0, 0, 0
    with engine.connect() as conn:
        # per trigger means per event of the batch: the join silently drops the unknown customers
        triggers = int(conn.execute(text("SELECT count(*) FROM tf_event WHERE batch_id = :batch"), {"batch": batch_id}).scalar_one())
        while True:
            rows = conn.execute(query, {"batch": batch_id, "after": after, "limit": page_size}).all()
            if not rows:
                break
            after = rows[-1].event_id
            with smtplib.SMTP(smtp_host, smtp_port) as smtp:
                for row in rows:
                    body = json.loads(row.payload)[_MESSAGE][_TRIGGER]
                    if body["triggerId"] not in (CART_TRIGGER, BROWSE_TRIGGER):
                        skipped += 1
                        continue
                    products = [{"name": p.get("name", sku), "quantity": p.get("quantity", 1), "price": p.get("price", 0.0),
                                 "url": p.get("url", "")}
                                for sku, p in body["enrichments"]["analyticsHitSummary"].get("products", {}).items()]
                    context = {"first_name": row.first_name, "customer_id": row.customer_id, "products": products,
                               "cart": body["triggerId"] == CART_TRIGGER}
                    msg = EmailMessage()
                    msg["From"] = FROM_ADDR
                    msg["To"] = row.email
                    msg["Subject"] = "Your cart is waiting" if context["cart"] else "Still thinking about it?"
                    msg.set_content(plain.render(context))
                    msg.add_alternative(html.render(context), subtype="html")
                    smtp.send_message(msg)
                    sent += 1
        cpu = time.process_time() - cpu0
        seconds = time.perf_counter() - wall0
        server = cpu_since(server0, server_processes_cpu(postmaster)) if postmaster else None
    engine.dispose()
    sink = (_process_cpu(sink_pid) - sink0) if sink_pid else None

    def per(value: float | None, count: int) -> float | None:
        return None if value is None or not count else round(value / count * 1000, 4)

    return {
        # skipped: triggers of no known route; the rest of triggers - emails: no profile, opted out
        "triggers": triggers, "emails": sent, "skipped": skipped, "seconds": round(seconds, 3),
        "emails_per_s": round(sent / seconds, 1) if seconds else None,
        "loop_cpu_ms_per_trigger": per(cpu, triggers), "pg_server_cpu_ms_per_trigger": per(server, triggers),
        "project_cpu_ms_per_trigger": per(cpu + (server or 0.0), triggers),
        "sink_cpu_ms_per_trigger": per(sink, triggers),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.naive_loop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20_000, help="trigger events (default 20000)")
    p.add_argument("--profiles", type=int, default=100_000)
    p.add_argument("--page-size", type=int, default=1000)
    p.add_argument("--pg", action="store_true", help="a scratch PostgreSQL store (default: SQLite)")
    p.add_argument("--pg-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)

    from bench.profile_stages import (
        BENCH_START,
        MemorySource,
        event_payloads,
        load_profiles,
        profile_rows,
        scratch_store,
    )
    from devstack.processes import start_smtp_sink
    from include.triggerflow.stages.land import BatchRef, land_batch
    from include.triggerflow.store.engines import get_engine
    from include.triggerflow.store.migrations import create_schema

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="triggerflow-naive-") as tmp, \
            scratch_store(args.pg_url if args.pg else None, Path(tmp)) as url:
        os.environ.setdefault("AIRFLOW_HOME", str(Path(tmp) / "airflow"))
        engine = get_engine(url)
        create_schema(engine)
        load_profiles(engine, profile_rows(args.profiles, rng))
        batch = BatchRef(dag_id="naive", run_id="naive-1", run_type="scheduled", interval_start=BENCH_START,
                         interval_end=BENCH_START.replace(minute=1))
        payloads = event_payloads(args.n, args.profiles, rng, known=0.9, invalid=0.0)
        land_batch(engine, MemorySource(payloads, args.page_size), batch, max_messages=args.n)
        with start_smtp_sink(None, store="none", log_path=Path(tmp) / "sink.log") as sink:
            result = run_naive(url, batch.batch_id, sink.host, sink.port, page_size=args.page_size, sink_pid=sink.process.pid)
            accepted = sink.wait_accepted(result["emails"], timeout=30)
        result["sink_accepted"] = accepted
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
