"""Constants shared by tests and by the scripts tests start in subprocesses.

Side-effect free on purpose: tests/conftest.py points Airflow at a fresh private home when it is
imported, so a subprocess must never import conftest (it would get an empty metadata DB).
"""

from __future__ import annotations

#: Every email carries a signed unsubscribe link; tests sign with this test-only secret.
UNSUBSCRIBE_CONN_JSON = (
    '{"conn_type": "generic", "host": "http://localhost:8080", '
    '"password": "triggerflow-tests-only-unsubscribe-secret"}'
)
