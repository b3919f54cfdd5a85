"""Shared fixtures: a throw-away Airflow home, and the store on SQLite or PostgreSQL.

The store runs on SQLite unless TRIGGERFLOW_TEST_PG_URL is set (a server URL such as
``postgresql+psycopg2://postgres@127.0.0.1:5432/postgres``); then every test gets a fresh
PostgreSQL database created on that server and dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import UNSUBSCRIBE_CONN_JSON

# fixtures shared by every folder (the store kit, the emulator and SMTP sink processes...)
pytest_plugins = ["tests.fixtures"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Airflow reads its configuration at import time: point it at a private home before any test
# module imports airflow, so the suite never touches a developer's ~/airflow.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="triggerflow-test-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(PROJECT_ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}"
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("AIRFLOW_CONN_TRIGGERFLOW_UNSUBSCRIBE", UNSUBSCRIBE_CONN_JSON)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """An initialised Airflow metadata DB (needed by dag.test())."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        cwd=PROJECT_ROOT,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return _AIRFLOW_HOME


def _pg_server_url() -> str | None:
    return os.environ.get("TRIGGERFLOW_TEST_PG_URL") or None


@contextmanager
def empty_store(folder: Path) -> Iterator[str]:
    """URL of an empty store database: a SQLite file in ``folder``, or a fresh PostgreSQL database
    on TRIGGERFLOW_TEST_PG_URL's server, dropped afterwards."""
    server = _pg_server_url()
    if not server:
        yield f"sqlite:///{folder / 'store.db'}"
        return
    from devstack.ensure_postgres import scratch_database

    with scratch_database(server, prefix="tf_test") as url:
        yield url


@pytest.fixture
def store_url(tmp_path: Path) -> Iterator[str]:
    """URL of an empty store database for one test."""
    with empty_store(tmp_path) as url:
        yield url


@pytest.fixture(scope="session")
def _sqlite_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store with the whole schema, made once per test process: each SQLite test store
    starts as a copy of it (a file copy instead of ~30 CREATE TABLE/INDEX statements and the
    migration checks, which were a tenth of the unit tests' time)."""
    from include.triggerflow.store.engines import get_engine
    from include.triggerflow.store.migrations import create_schema

    path = tmp_path_factory.mktemp("store-template") / "store.db"
    engine = get_engine(f"sqlite:///{path}")
    create_schema(engine)
    engine.dispose()
    return path


@pytest.fixture
def store_engine(store_url: str, request: pytest.FixtureRequest):
    """The test's store with the schema created (SQLite: a copy of the session's template)."""
    from include.triggerflow.store.engines import get_engine
    from include.triggerflow.store.migrations import create_schema

    if store_url.startswith("sqlite:///"):
        shutil.copyfile(request.getfixturevalue("_sqlite_store_template"), store_url.removeprefix("sqlite:///"))
        return get_engine(store_url)
    engine = get_engine(store_url)
    create_schema(engine)
    return engine


def _reads_the_store_server(item: pytest.Item) -> bool:
    """Whether the test depends on which store it runs on: it uses the store fixtures (directly
    or through another fixture), or its module reads TRIGGERFLOW_TEST_PG_URL itself."""
    if "store_url" in getattr(item, "fixturenames", ()):
        return True
    module = getattr(item, "module", None)
    path = getattr(module, "__file__", None)
    if path is None:
        return False
    text = _module_text.get(path)
    if text is None:
        text = _module_text[path] = Path(path).read_text(encoding="utf-8", errors="replace")
    return "TRIGGERFLOW_TEST_PG_URL" in text


_module_text: dict[str, str] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # bin/test's PostgreSQL pass selects these (-m store): a test that never touches the store
    # proves nothing more the second time.
    for item in items:
        if _reads_the_store_server(item):
            item.add_marker(pytest.mark.store)
