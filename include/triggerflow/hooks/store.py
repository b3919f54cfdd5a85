"""The store named by connection ``triggers_db``.

Connection ``triggers_db``: the database holding the store tables and the profiles.

    conn_type sqlite     host = database file (relative paths resolve against $AIRFLOW_HOME)
    conn_type postgres   host, port, login, password, schema (= database name)
    any type             extra.sqlalchemy_url = a full SQLAlchemy URL (wins over the fields)
"""

from __future__ import annotations

from airflow.sdk import BaseHook
from sqlalchemy import Engine

from include.triggerflow.store.db import get_engine, url_from_connection


class TriggersStoreHook(BaseHook):
    conn_name_attr = "triggers_db_conn_id"
    default_conn_name = "triggers_db"
    conn_type = "sqlite"
    hook_name = "triggerflow store"

    def __init__(self, triggers_db_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.triggers_db_conn_id = triggers_db_conn_id

    def get_url(self) -> str:
        return url_from_connection(self.get_connection(self.triggers_db_conn_id))

    def get_conn(self) -> Engine:
        return get_engine(self.get_url())
