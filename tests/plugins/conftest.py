"""Shared helpers of the plugin tests."""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import Engine, insert, select

from include.triggerflow.store.schema import profiles

PLUGINS_DIR = Path(__file__).resolve().parents[2] / "plugins"


def load_plugin(name: str) -> ModuleType:
    """A plugin module imported from plugins/<name>.py under the name Airflow's plugin manager
    gives it (its file name), once per process."""
    path = PLUGINS_DIR / f"{name}.py"
    module = sys.modules.get(name)
    if module is None or getattr(module, "__file__", None) != str(path):
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


@pytest.fixture
def store(store_url: str, store_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """The test store, named by connection ``triggers_db`` as the plugins read it."""
    monkeypatch.setenv("AIRFLOW_CONN_TRIGGERS_DB", json.dumps({"conn_type": "sqlite", "extra": {"sqlalchemy_url": store_url}}))
    return store_engine


def add_profile(engine: Engine, customer_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(profiles).values(
                customer_id=customer_id, email=f"{customer_id.lower()}@example.com", opted_out=False, updated_at=datetime.now(UTC)
            )
        )


def opted_out(engine: Engine, customer_id: str) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(select(profiles.c.opted_out).where(profiles.c.customer_id == customer_id)).scalar_one())
