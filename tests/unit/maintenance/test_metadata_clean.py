"""Where ``airflow db clean`` finds the metadata database: Airflow 3 hides it from task processes
(``airflow-db-not-allowed:///``), so it comes from connection ``airflow_metadata``."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from include.triggerflow.maintenance.metadata_clean import (
    BLOCKED_URL_MARK,
    MetadataDbUnavailable,
    metadata_env,
    redact_url,
)

BLOCKED = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{BLOCKED_URL_MARK}:///", "AIRFLOW__CORE__SQL_ALCHEMY_CONN": f"{BLOCKED_URL_MARK}:///", "PATH": "/bin"}


def conn(extra: dict[str, Any] | None = None, **fields: Any) -> SimpleNamespace:
    base = {"conn_type": "generic", "host": None, "port": None, "login": None, "password": None, "schema": None}
    base.update(fields)
    return SimpleNamespace(extra_dejson=extra or {}, extra=json.dumps(extra or {}), **base)


def test_the_connection_replaces_the_hidden_url() -> None:
    url = "postgresql+psycopg2://airflow:s3cret@db.internal:5432/airflow"
    env = metadata_env(BLOCKED, lookup=lambda cid: conn({"sqlalchemy_url": url}) if cid == "airflow_metadata" else None)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == url
    assert "AIRFLOW__CORE__SQL_ALCHEMY_CONN" not in env  # the hidden value must not win over ours
    assert env["PATH"] == "/bin"


def test_a_hidden_url_without_the_connection_fails_naming_what_to_define() -> None:
    with pytest.raises(MetadataDbUnavailable) as err:
        metadata_env(BLOCKED, lookup=lambda cid: None)
    assert "'airflow_metadata'" in str(err.value) and "metadata_days" in str(err.value)


def test_a_visible_url_is_used_as_it_is() -> None:
    env = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite:////tmp/airflow.db"}
    assert metadata_env(env, lookup=lambda cid: None) == env


def test_the_cli_output_loses_the_password() -> None:
    url = "postgresql+psycopg2://airflow:s3cret@db/airflow"
    assert redact_url("DB: postgresql+psycopg2://airflow:s3cret@db/airflow", url) == "DB: postgresql+psycopg2://airflow:***@db/airflow"
    assert redact_url("nothing here", "not a url") == "nothing here"
    assert redact_url("s3cret", None) == "s3cret"
