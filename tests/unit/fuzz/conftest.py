"""Hypothesis profiles of the fuzz tests (see the docstring of tests/unit/fuzz/strategies.py).

* ``ci`` (default): 50 examples per test, derandomized, so the default suite is bounded and every
  run tries the same examples (a failure reproduces on any machine).
* ``long``: 2,000 random examples per test, for a deliberate hunt:
  ``HYPOTHESIS_PROFILE=long timeout 3600 python -m pytest tests/unit/fuzz``.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

_COMMON: dict[str, Any] = {
    # a store round trip per example is slow by Hypothesis' standards, and the store fixture is
    # per test on purpose (examples share it, each lands its own batch)
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=50, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=2_000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
