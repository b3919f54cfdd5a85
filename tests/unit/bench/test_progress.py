"""Tests for bench.run_benchmark.wait_processed: the status counters as a cheap hint, the exact
counts only when the phase may be over (or now and then, in case a counter went stale)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from bench import run_benchmark


class _Sink:
    def accepted(self) -> int:
        return 0


def _script(monkeypatch: pytest.MonkeyPatch, hints: list[tuple[int, int]], exact: Iterator[dict[str, int]]) -> list[int]:
    """Feed the loop: the hints one per look (the last repeats), the exact counts in order;
    returns the looks at which the exact counts were read."""
    looks: list[int] = []
    hint_iter = iter(hints)
    last = [hints[0]]

    def hint(_engine: Any) -> tuple[int, int]:
        looks.append(-1)  # one hint per look
        last[0] = next(hint_iter, last[0])
        return last[0]

    def count(_engine: Any) -> dict[str, int]:
        looks.append(looks.count(-1) - 1)
        return next(exact)

    monkeypatch.setattr(run_benchmark, "stats_progress", hint)
    monkeypatch.setattr(run_benchmark, "store_progress", count)
    monkeypatch.setattr(run_benchmark, "POLL_S", 0.0)
    return looks


def _exact(processed: int, sent: int, waiting: int) -> dict[str, int]:
    return {"landed": processed, "decided": processed, "quarantined": 0, "sent": sent, "failed": 0, "waiting": waiting}


def test_exact_counts_only_once_the_hint_says_done_and_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    hints = [(10, 0), (50, 5), (90, 20), (100, 40), (100, 60), (100, 60)]
    exact = iter([_exact(10, 0, 10), _exact(100, 60, 0)])
    looks = _script(monkeypatch, hints, exact)
    done = run_benchmark.wait_processed(object(), 100, "t", 60.0, _Sink())
    assert done["sent"] == 60 and done["waiting"] == 0
    # look 0 (the first of every EXACT_EVERY), then look 5: all processed and nothing sent since look 4
    assert [n for n in looks if n >= 0] == [0, 5]


def test_a_stale_counter_still_ends_through_the_periodic_exact_count(monkeypatch: pytest.MonkeyPatch) -> None:
    # the counters never reach the total (a refresh failed): the exact count every EXACT_EVERY looks ends it
    exact = iter([_exact(0, 0, 0), _exact(100, 99, 0)])
    looks = _script(monkeypatch, [(40, 10)], exact)
    done = run_benchmark.wait_processed(object(), 100, "t", 60.0, _Sink())
    assert done["decided"] == 100
    assert [n for n in looks if n >= 0] == [0, run_benchmark.EXACT_EVERY]


def test_emails_still_waiting_keep_the_loop_going(monkeypatch: pytest.MonkeyPatch) -> None:
    exact = iter([_exact(100, 50, 50), _exact(100, 50, 50), _exact(100, 100, 0)])
    looks = _script(monkeypatch, [(100, 50), (100, 50), (100, 70), (100, 100), (100, 100)], exact)
    assert run_benchmark.wait_processed(object(), 100, "t", 60.0, _Sink())["waiting"] == 0
    assert [n for n in looks if n >= 0] == [0, 1, 4]


def test_the_progress_line_never_shows_fewer_sent_than_an_exact_count_did(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # look 0 counts exactly (76,100 sent); the counters then lag behind it (sent=0 until refreshed)
    exact = iter([_exact(50, 76100, 10), _exact(100, 76200, 0)])
    _script(monkeypatch, [(50, 0), (60, 0), (70, 0), (100, 76200), (100, 76200)], exact)
    run_benchmark.wait_processed(object(), 100, "t", 60.0, _Sink())
    shown = [int(n) for n in re.findall(r"sent=(\d+)", capsys.readouterr().out)]
    assert shown and shown[0] == 76100
    assert shown == sorted(shown), shown
