"""bench.run_benchmark's ``--executor`` / ``--workers``: the arguments, the table naming the
executor (old results without one ran on the LocalExecutor), and the benchmark run for real at a
tiny scale on the CeleryExecutor with two workers (devstack.celery_stack).

The tiny run needs the CeleryExecutor's packages, PostgreSQL and Redis (started when they are
down); without them it skips, except under CI (CI=true), where it fails. It is not marked
``store``: the benchmark's store is its own PostgreSQL database whatever bin/test's pass, so it
runs once, in the first pass.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from bench import run_benchmark
from devstack.celery_stack import ensure_services, pg_server_url
from devstack.ensure_redis import broker_url


def _result(**extra: Any) -> dict[str, Any]:
    """The parts of a results.json that readme_table reads."""
    return {
        "finished_at": "2026-12-08T10:00:00+00:00",
        "machine": {"description": "2 vCPU"},
        "store": "postgres",
        "config": {"pool_slots": 4, "max_events": 1000, "chunk_size": 10},
        "backlog": {"events": 60, "triggers_per_hour": 1e6, "seconds": 20.0, "emails": 50, "stages": {}},
        "steady": {"rate_per_s": 1.0, "duration_s": 2.0, "emails": 0, "latency_s": {"count": 0}},
        "ceiling": {},
        **extra,
    }


def test_workers_only_with_the_celery_executor(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in (
        (["--workers", "2"], "--workers needs --executor celery"),
        (["--executor", "celery", "--workers", "0"], "--workers must be at least 1"),
    ):
        with pytest.raises(SystemExit) as exit_info:  # the parser stops before anything starts
            run_benchmark.main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    parser = run_benchmark.build_parser()
    for argv, workers in ((["--executor", "celery"], 2), (["--executor", "celery", "--workers", "3"], 3), ([], None)):
        args = parser.parse_args(argv)
        run_benchmark.check_executor_args(parser, args)
        assert args.workers == workers


def test_the_table_names_the_executor() -> None:
    celery = {"kind": "celery", "workers": 3, "worker_concurrency": 2}
    assert ", LocalExecutor, pool" in run_benchmark.readme_table(_result())  # results from before --executor
    assert ", LocalExecutor, pool" in run_benchmark.readme_table(_result(executor={"kind": "local"}))
    table = run_benchmark.readme_table(_result(executor=celery))
    assert "CeleryExecutor, 3 workers × 2 processes, Redis broker, pool" in table
    assert "LocalExecutor" not in table
    assert "machine CPU per email" not in table  # results from before the figure existed
    row = run_benchmark.readme_table(_result(backlog={**_result()["backlog"], "machine_cpu_ms_per_email": 2.345}))
    assert "| — machine CPU per email during the drain (all processes) | 2.35 ms |" in row


@pytest.mark.e2e
def test_benchmark_runs_on_two_celery_workers_at_a_tiny_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = pg_server_url()
    problem = ensure_services(pg, broker_url())
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Celery stack is required under CI: {problem}")
        pytest.skip(f"no Celery stack on this machine: {problem}")
    monkeypatch.setattr(run_benchmark, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(run_benchmark, "PG_SERVER", pg)
    code = run_benchmark.main([
        "--executor", "celery", "--workers", "2", "--profiles", "0", "--backlog", "60", "--rate", "1", "--rate2", "0",
        "--duration", "2", "--max-events", "1000", "--chunk-size", "10", "--max-chunks", "4",
        "--page-limit", "100", "--ceiling-messages", "200", "--timeout", "300",
    ])
    assert code == 0
    [out] = list((tmp_path / "results").iterdir())
    result = json.loads((out / "results.json").read_text(encoding="utf-8"))
    executor = result["executor"]
    assert (executor["kind"], executor["workers"], executor["worker_concurrency"]) == ("celery", 2, 2)
    # every task ran on one of the two Celery workers (their hostnames: w1-<id>@host, w2-<id>@host)
    hosts = executor["tasks_by_host"]
    assert hosts and all(re.fullmatch(r"w[12]-[0-9a-f]{6}@.+", host) for host in hosts), hosts
    assert sum(hosts.values()) >= 10  # two runs (backlog, steady state) of five tasks at least
    assert result["backlog"]["events"] == 60 and result["backlog"]["emails"] > 0
    assert result["backlog"]["outcome"]["waiting"] == 0
    assert result["backlog"]["machine_cpu_ms_per_email"] > 0
    # the drain's CPU booked to its task instances (bench.task_cpu): each stage's task processes,
    # and the store's backends of those that query it
    cpu = result["backlog"]["cpu"]
    assert {"pull_and_land", "validate", "reconcile", "send"} <= set(cpu["stages"])
    assert all(e["task_s"] > 0 for e in cpu["stages"].values()), cpu["stages"]
    # (a tiny batch's queries may each stay under the kernel's 10 ms CPU tick, and a task instance
    # that opens and closes its connection between two looks 0.5 s apart leaves no backend to match:
    # only that some backends were matched, and their sum, are sure — CI once saw 3 of 13)
    assert cpu["backends_of_task_instances"] >= 1 and sum(e["store_s"] for e in cpu["stages"].values()) > 0, cpu
    assert 0 < cpu["booked_s"] <= cpu["machine_busy_s"] * 1.1
    table = (out / "table.md").read_text(encoding="utf-8")
    assert "CeleryExecutor, 2 workers × 2 processes, Redis broker" in table
    assert "| `reconcile` |" in table


def test_the_table_shows_the_second_steady_state_and_the_kill() -> None:
    table = run_benchmark.readme_table(_result(
        steady2={"rate_per_s": 833.0, "duration_s": 600.0, "emails": 400_000,
                 "latency_s": {"count": 5, "p50": 40.0, "p95": 70.0, "p99": 80.0, "max": 85.0}},
        kill={"pid": 1, "accepted_at_kill": 5_000, "group_size": 50, "ambiguous": 37},
    ))
    assert "| steady state, 833/s = 3.0 M/hour for 600 s (400,000 emails)" in table and "**70.0**" in table
    assert "a send task SIGKILLed after 5,000 emails (G = 50) | 37 row(s) ambiguous, the drain completed | ≤ G" in table
    assert "steady state, 833" not in run_benchmark.readme_table(_result())  # no second phase, no row


def test_the_table_shows_the_drain_cpu_per_stage_per_1000_triggers() -> None:
    cpu = {"booked_s": 90.0, "machine_busy_s": 100.0, "roles_s": {"airflow": 6.0, "emulator": 0.0, "smtp sink": 3.0},
           "stages": {"send": {"instances": 4, "task_s": 30.0, "store_s": 6.0, "supervisor_s": 1.5,
                               "project_per_1000": 0.6, "supervisor_per_1000": 0.025},
                      "pull_and_land": {"instances": 1, "task_s": 3.0, "store_s": 0.0, "supervisor_s": 0.5,
                                        "project_per_1000": 0.05, "supervisor_per_1000": 0.008}}}
    table = run_benchmark.readme_table(_result(backlog={**_result()["backlog"], "events": 60_000, "cpu": cpu}))
    assert table.index("| `pull_and_land` | 1 | 3.0 s | 0.0 s | 0.050 | 0.008 |") < table.index("| `send` | 4 |")
    assert "| **all stages** | 5 | | | **0.650** (target ≤ 0.35) | 0.033 |" in table
    assert "airflow 0.100, smtp sink 0.050" in table and "emulator" not in table.split("all stages")[1]
    assert "90 of the machine's 100 busy CPU-seconds booked" in table
