"""bench.group_size's pure parts: the medians and project CPU per G, the README table, the
argument checks."""

from __future__ import annotations

import pytest

from bench.group_size import main, readme_table, summarise


def _run(rate: float, client: float, pg: float, sink: float = 0.2) -> dict[str, float]:
    return {"emails_per_s": rate, "client_cpu_ms_per_email": client, "pg_server_cpu_ms_per_email": pg,
            "sink_cpu_ms_per_email": sink, "machine_cpu_ms_per_email": client + pg + sink, "emails": 100, "seconds": 1.0}


def test_summary_is_the_median_per_size_and_project_cpu_excludes_the_sink() -> None:
    summary = summarise({
        1: [_run(300, 1.0, 0.4), _run(360, 1.2, 0.5), _run(330, 1.1, 0.9)],
        50: [_run(900, 0.7, 0.1, sink=5.0)],
    })
    assert summary[1]["emails_per_s"] == 330 and summary[1]["client_cpu_ms_per_email"] == 1.1
    assert summary[1]["pg_server_cpu_ms_per_email"] == 0.5
    assert summary[1]["project_cpu_ms_per_email"] == 1.6
    assert summary[50]["project_cpu_ms_per_email"] == 0.8  # the sink's 5 ms is not the project's


def test_readme_table_compares_each_size_with_the_smallest_and_states_the_exposure() -> None:
    meta = {"when": "2026-12-06", "machine": "2 vCPU", "pg_version": "15.20", "pg_settings": {"synchronous_commit": "on"},
            "n": 20_000, "chunks": 2, "repeats": 3, "emails": 16_000}
    table = readme_table(summarise({1: [_run(350, 1.0, 0.4)], 50: [_run(980, 0.6, 0.1)]}), meta)
    lines = table.splitlines()
    assert "synchronous_commit on" in lines[0] and "median of 3 rounds" in lines[0]
    assert "a batch of 20,000 triggers per G (about 16,000 emails)" in lines[0]
    g1 = next(line for line in lines if line.startswith("| 1 |"))
    g50 = next(line for line in lines if line.startswith("| 50 |"))
    assert "**1.400**" in g1 and "1 per killed send task" in g1
    assert "**0.700**" in g50 and "-50 %" in g50 and "50 per killed send task" in g50


@pytest.mark.parametrize(("argv", "message"), [
    (["--sizes", "1,0"], "--sizes must be whole numbers from 1 to 1000"),
    (["--sizes", "1,x"], "--sizes must be whole numbers from 1 to 1000"),
    (["--sizes", "1,2000"], "--sizes must be whole numbers from 1 to 1000"),
    (["--profiles", "1000", "--block", "500"], "--profiles 1,000 is too small"),
])
def test_bad_arguments_are_refused_naming_them(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err
