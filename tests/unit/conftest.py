"""tests/unit runs in-process and in seconds: no test here may start a process.

Tests that need the Adobe emulator or the SMTP sink as processes live in tests/integration/ (the
fixtures themselves are in tests/fixtures.py). Collecting a unit test that asks for one of them is
an error, so the rule cannot erode silently.
"""

from __future__ import annotations

import pytest

#: fixtures that start a subprocess (tests/fixtures.py)
PROCESS_FIXTURES = frozenset({"emulator_process", "smtp_sink_process", "emu", "smtp", "adobe_conns", "publisher"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    offenders = [
        item.nodeid
        for item in items
        if "tests/unit/" in item.nodeid.replace("\\", "/") and PROCESS_FIXTURES & set(getattr(item, "fixturenames", ()))
    ]
    if offenders:
        raise pytest.UsageError(
            "tests/unit must not start processes; move these to tests/integration/:\n  " + "\n  ".join(offenders)
        )
