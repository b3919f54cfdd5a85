"""The fuzz tests' Hypothesis profiles (``ci`` by default, ``long`` for a hunt), as in
tests/unit/fuzz: registered by importing that conftest, so both folders run the same profile."""

from __future__ import annotations

import tests.unit.fuzz.conftest  # noqa: F401  (registers and loads the profiles)
