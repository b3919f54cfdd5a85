"""G, the send group size: what a bigger group saves per email, and what it puts at risk.

    python -m bench.group_size                                  # G = 1, 10, 50, 200; 20,000 emails each, 3 rounds
    python -m bench.group_size --sizes 1,50 --n 2000 --repeats 1   # a quick look
    python -m bench.group_size --update-readme                  # README "Exactly once" table + docs/img/group-size.png

For every G the same thing is measured: one batch of ``--n`` trigger events of customers no
other measurement touched is landed and reconciled into ``--chunks`` send chunks, then sent by
``--chunks`` processes at once over the SMTP sink (``bench.profile_stages.measure_stages``, the
stage functions as the DAG runs them; validation is skipped: it is not what G changes). Reported
per G, medians of ``--repeats`` rounds (the sizes' order rotates from round to round, so a drift
of the machine does not favour one size):

* emails/s of the send stage;
* CPU milliseconds per email of the send processes (render, MIME, ledger statements, SMTP
  client), of the PostgreSQL server (all its processes during the send: the backends, WAL writer,
  checkpointer) and of the SMTP sink; **project CPU** = send processes + PostgreSQL (the sink is a
  stand-in for a remote relay);
* the crash exposure: a send process killed mid-group leaves at most G rows ``ambiguous``
  (held under ``ambiguous_policy=hold``: up to G emails never sent; resent with the same
  Message-ID under ``resend``: up to G possible duplicates a receiver can deduplicate).

PostgreSQL only (``--pg-server``, default the local server on 127.0.0.1:5432): SQLite's commit is
a file sync, a different trade-off. Writes ``bench/results/group-size-<timestamp>/results.json``
and ``table.md``; with ``--update-readme`` the table between ``<!-- group-size:start -->`` and
``<!-- group-size:end -->`` in README.md and ``docs/img/group-size.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
IMG = ROOT / "docs" / "img"
FIGURES = ("emails_per_s", "client_cpu_ms_per_email", "pg_server_cpu_ms_per_email", "sink_cpu_ms_per_email",
           "machine_cpu_ms_per_email")


def log(message: str) -> None:
    print(f"[group-size {datetime.now(UTC).strftime('%H:%M:%S')}] {message}", flush=True)


def measure(url: str, size: int, n: int, offset: int, block: int, seed: int, chunks: int, tmp: str) -> dict[str, Any]:
    """Send one batch of ``n`` events of customers ``offset+1 .. offset+block`` with G = ``size``."""
    from bench.profile_stages import event_payloads, measure_stages

    rng = random.Random(seed)
    payloads = event_payloads(n, block, rng, known=1.0, invalid=0.0, offset=offset + 1)
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=2)
    stages = measure_stages(url, payloads, tmp=tmp, chunks=chunks, key=f"g{size}-{offset}", start=start,
                            skip_validate=True, group_size=size, say=lambda m: log(f"  G={size}: {m}"))
    send = stages["send"]
    return {k: send[k] for k in (*FIGURES, "emails", "seconds")}


def summarise(runs: dict[int, list[dict[str, Any]]]) -> dict[int, dict[str, float]]:
    """Per G, the median of every figure, and project CPU (send processes + PostgreSQL server)."""
    out: dict[int, dict[str, float]] = {}
    for size, rows in runs.items():
        med = {k: round(statistics.median(float(r[k] or 0) for r in rows), 3) for k in FIGURES}
        med["project_cpu_ms_per_email"] = round(med["client_cpu_ms_per_email"] + med["pg_server_cpu_ms_per_email"], 3)
        out[size] = med
    return out


def readme_table(summary: dict[int, dict[str, float]], meta: dict[str, Any]) -> str:
    base = summary.get(min(summary))
    lines = [
        f"Measured by `python -m bench.group_size` on {meta['when']} ({meta['machine']}; PostgreSQL {meta['pg_version']}, "
        f"synchronous_commit {meta['pg_settings'].get('synchronous_commit')}); a batch of {meta['n']:,} triggers per G "
        f"(about {meta.get('emails', 0):,} emails) sent by {meta['chunks']} processes at once, median of "
        f"{meta['repeats']} rounds. CPU in ms per email; project = "
        "send processes + PostgreSQL (the sink stands in for a remote relay).",
        "",
        "| G | emails/s | send processes | PostgreSQL | project CPU | vs G = 1 | SMTP sink | at most ambiguous after a crash |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for size in sorted(summary):
        s = summary[size]
        change = ""
        if base and size != min(summary) and base["project_cpu_ms_per_email"]:
            change = f"{(s['project_cpu_ms_per_email'] / base['project_cpu_ms_per_email'] - 1) * 100:+.0f} %"
        lines.append(
            f"| {size} | {s['emails_per_s']:,.0f} | {s['client_cpu_ms_per_email']:.3f} | {s['pg_server_cpu_ms_per_email']:.3f} | "
            f"**{s['project_cpu_ms_per_email']:.3f}** | {change} | {s['sink_cpu_ms_per_email']:.3f} | "
            f"{size} per killed send task |"
        )
    return "\n".join(lines)


def plot(summary: dict[int, dict[str, float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(summary)
    x = list(range(len(sizes)))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    bottom = [0.0] * len(sizes)
    for key, label, color in (("client_cpu_ms_per_email", "send processes", "#1d4ed8"),
                              ("pg_server_cpu_ms_per_email", "PostgreSQL server", "#16a34a"),
                              ("sink_cpu_ms_per_email", "SMTP sink (stand-in)", "#d1d5db")):
        vals = [summary[s][key] for s in sizes]
        ax.bar(x, vals, 0.6, bottom=bottom, label=label, color=color)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, s in enumerate(sizes):
        ax.annotate(f"{summary[s]['emails_per_s']:,.0f}/s", (i, bottom[i]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [f"G = {s}\n(≤ {s} ambiguous)" for s in sizes])
    ax.set_ylabel("CPU ms per email")
    ax.set_title("Send stage: CPU per email by group size G (label: emails/s)")
    ax.legend(loc="upper right")
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.run_benchmark import mem_gb
    from bench.soak import Blocks, prepare_store
    from devstack.ensure_postgres import scratch_database
    from include.triggerflow.store.engines import get_engine

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    sizes = [int(s) for s in args.sizes.split(",")]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"group-size-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    blocks = Blocks(args.block, args.profiles)
    runs: dict[int, list[dict[str, Any]]] = {size: [] for size in sizes}
    with tempfile.TemporaryDirectory(prefix="triggerflow-group-size-") as tmp, \
            scratch_database(args.pg_server, prefix="tf_bench_group") as url:
        with get_engine(url).connect() as conn:
            pg_version = conn.exec_driver_sql("SHOW server_version").scalar_one().split()[0]
            pg_settings = {name: conn.exec_driver_sql(f"SHOW {name}").scalar_one()
                           for name in ("shared_buffers", "synchronous_commit", "wal_compression")}
        log(f"PostgreSQL {pg_version} {pg_settings}; {args.profiles:,} profiles")
        prepare_store(url, args.profiles)
        log("warm-up (not counted)")
        measure(url, sizes[0], max(500, args.n // 10), blocks.take(), args.block, args.seed - 1, args.chunks, tmp)
        for round_ in range(args.repeats):
            order = sizes[round_ % len(sizes):] + sizes[: round_ % len(sizes)]
            for size in order:
                log(f"round {round_ + 1}/{args.repeats}, G = {size}: {args.n:,} emails")
                runs[size].append(measure(url, size, args.n, blocks.take(), args.block, args.seed + len(runs[size]) * 7 + size,
                                          args.chunks, tmp))
    summary = summarise(runs)
    meta = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d"), "n": args.n, "chunks": args.chunks, "repeats": args.repeats,
        "machine": f"{os.cpu_count()} vCPU, {mem_gb():.0f} GB RAM, Python {platform.python_version()}",
        "pg_version": pg_version, "pg_settings": pg_settings,
        "emails": round(statistics.median(r["emails"] for rows in runs.values() for r in rows), -2),
    }
    table = readme_table(summary, meta)
    result = {"meta": meta, "runs": {str(k): v for k, v in runs.items()}, "summary": {str(k): v for k, v in summary.items()}}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    picture = plot(summary, out / "group-size.png")
    log(f"results in {out}\n{table}")
    if args.update_readme:
        from bench.readme import replace_block

        if not replace_block("group-size", table):
            raise SystemExit("README.md has no <!-- group-size:start --> ... <!-- group-size:end --> block")
        IMG.mkdir(parents=True, exist_ok=True)
        shutil.copy(picture, IMG / "group-size.png")
        log("README.md group-size table and docs/img/group-size.png updated")
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.group_size", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1,10,50,200", help="the G values, comma-separated (default 1,10,50,200)")
    p.add_argument("--n", type=int, default=20_000, help="trigger events per measurement (default 20000)")
    p.add_argument("--repeats", type=int, default=3, help="rounds; the median is kept (default 3)")
    p.add_argument("--chunks", type=int, default=2, help="send processes at once (default 2: the machine's cores)")
    p.add_argument("--profiles", type=int, default=600_000, help="customers in the store (default 600000)")
    p.add_argument("--block", type=int, default=40_000, help="customers per measurement (default 40000)")
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--pg-server", default=os.environ.get("TRIGGERFLOW_BENCH_PG_URL",
                                                         "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--update-readme", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",")
    if not all(s.strip().isdigit() and 1 <= int(s) <= 1000 for s in sizes):
        parser.error(f"--sizes must be whole numbers from 1 to 1000, comma-separated, not {args.sizes!r}")
    needed = (1 + len(sizes) * args.repeats) * args.block
    if needed > args.profiles:
        parser.error(f"--profiles {args.profiles:,} is too small: {1 + len(sizes) * args.repeats} measurements of "
                     f"--block {args.block:,} customers need {needed:,}")
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
