"""Reconcile (and the other stages) on a filled store with ``wal_compression`` set per session:
how much compressing the WAL's full-page images costs once the indexes hold days of history.

    python -m bench.soak --private-server /work/pg-soak --keep-store --no-latency --no-maintenance
    python -m devstack.pg_cluster start --dir /work/pg-soak --port 5433
    python -m bench.wal_compression --filled-url postgresql+psycopg2://postgres@127.0.0.1:5433/tf_soak_filled_<id>

Each measurement is one batch of ``--n`` events (bench.soak.measure: land, validate, reconcile,
send) on its own block of customers — blocks from ``--first-block`` on, never one a soak run used
— with ``SET wal_compression`` through the connection's options, and the WAL the server wrote
meanwhile (pg_stat_wal: full-page images, bytes). Settings alternate, so a trend in the store
(pages touched since the last checkpoint) shows as a trend, not as a setting's effect.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from typing import Any

from bench.soak import log, measure


def wal_counters(url: str) -> dict[str, float]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT wal_fpi, wal_bytes FROM pg_stat_wal")).one()
        return {"fpi": float(row[0]), "bytes": float(row[1])}
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.wal_compression", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--filled-url", required=True, help="a store pre-filled by bench.prefill / bench.soak --keep-store")
    p.add_argument("--settings", default="pglz,lz4,off,pglz,lz4", help="wal_compression values, in order")
    p.add_argument("--n", type=int, default=30_000)
    p.add_argument("--block", type=int, default=100_000)
    p.add_argument("--first-block", type=int, default=5, help="customers from block * first-block + 1")
    args = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, setting in enumerate(args.settings.split(",")):
            offset = (args.first_block + i) * args.block
            url = f"{args.filled_url}?options=-c%20wal_compression%3D{setting}"
            before = wal_counters(args.filled_url)
            stages = measure(url, f"filled-{setting}", args.n, offset, block=args.block, seed=1000 + i, tmp=tmp)
            after = wal_counters(args.filled_url)
            row = {"wal_compression": setting, "customers_from": offset + 1,
                   "reconcile_events_per_s": stages["reconcile"]["events_per_s"],
                   "reconcile_cpu_ms_per_event": stages["reconcile"].get("machine_cpu_ms_per_event"),
                   "wal_full_page_images": int(after["fpi"] - before["fpi"]),
                   "wal_mb": round((after["bytes"] - before["bytes"]) / 1e6, 1)}
            log(json.dumps(row))
            rows.append(row)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
