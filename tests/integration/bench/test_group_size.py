"""bench.group_size at a tiny scale on a real PostgreSQL server, real send processes and the SMTP
sink: every size's emails reach the sink (measure_stages checks the count) and the results, table
and picture are written. PostgreSQL only (the benchmark measures the server's processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bench.group_size as group_size


def test_a_tiny_group_size_run_measures_every_size(store_engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if store_engine.dialect.name != "postgresql":
        pytest.skip("bench.group_size measures PostgreSQL only (set TRIGGERFLOW_TEST_PG_URL)")
    server = store_engine.url.set(database="postgres").render_as_string(hide_password=False)
    monkeypatch.setattr(group_size, "RESULTS", tmp_path)
    args = group_size.build_parser().parse_args(
        ["--sizes", "1,20", "--n", "300", "--repeats", "1", "--profiles", "3000", "--block", "900", "--pg-server", server])

    result = group_size.run(args)

    assert set(result["summary"]) == {"1", "20"}
    for size in ("1", "20"):
        [run] = result["runs"][size]
        assert run["emails"] > 200  # most of the 300 triggers are emails (a few duplicates, opt-outs)
        assert run["client_cpu_ms_per_email"] > 0 and run["pg_server_cpu_ms_per_email"] > 0
    [out] = list(tmp_path.glob("group-size-*"))
    assert json.loads((out / "results.json").read_text())["meta"]["n"] == 300
    assert "| 20 |" in (out / "table.md").read_text()
    assert (out / "group-size.png").stat().st_size > 10_000
