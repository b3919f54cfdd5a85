"""The stage tests' stores hold the demo catalogue: the shipped routes show products from the
catalogue by SKU (issue 11), and the generated triggers name the demo catalogue's SKUs."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _demo_catalog_in_the_store(request: pytest.FixtureRequest) -> None:
    """Loads the demo catalogue into the test's store, for the tests that have one."""
    if "store_engine" in request.fixturenames:
        request.getfixturevalue("demo_catalog")
