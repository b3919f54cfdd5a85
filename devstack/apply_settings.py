"""Apply an Astro ``airflow_settings.yaml`` to the Airflow configured by $AIRFLOW_HOME.

``astro dev start`` does this through the REST API; outside Astro this script upserts the same
connections, pools and variables straight into the metadata database:

    python -m devstack.apply_settings airflow_settings.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml


class SettingsError(ValueError):
    pass


def load_settings(path: Path) -> dict[str, list[dict[str, Any]]]:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from None
    section = doc.get("airflow") if isinstance(doc, dict) else None
    if not isinstance(section, dict):
        raise SettingsError(f"{path}: expected a top-level 'airflow:' mapping")
    out: dict[str, list[dict[str, Any]]] = {}
    for key in ("connections", "pools", "variables"):
        items = section.get(key) or []
        if not isinstance(items, list):
            raise SettingsError(f"{path}: airflow.{key} must be a list")
        out[key] = items
    for i, conn in enumerate(out["connections"]):
        if not isinstance(conn, dict) or not conn.get("conn_id") or not conn.get("conn_type"):
            raise SettingsError(f"{path}: airflow.connections[{i}] needs conn_id and conn_type")
    for i, pool in enumerate(out["pools"]):
        if not isinstance(pool, dict) or not pool.get("pool_name") or not isinstance(pool.get("pool_slot"), int):
            raise SettingsError(f"{path}: airflow.pools[{i}] needs pool_name and an integer pool_slot")
    return out


def apply(settings: dict[str, list[dict[str, Any]]]) -> list[str]:
    from airflow.models import Connection, Pool, Variable
    from airflow.utils.session import create_session

    done: list[str] = []
    with create_session() as session:
        for item in settings["connections"]:
            extra = item.get("conn_extra")
            fields = {
                "conn_type": item["conn_type"],
                "host": item.get("conn_host"),
                "schema": item.get("conn_schema"),
                "login": item.get("conn_login"),
                "password": item.get("conn_password"),
                "port": item.get("conn_port"),
                "extra": json.dumps(extra) if isinstance(extra, dict) else extra,
            }
            conn = session.query(Connection).filter(Connection.conn_id == item["conn_id"]).one_or_none()
            if conn is None:
                session.add(Connection(conn_id=item["conn_id"], **fields))
            else:
                for name, value in fields.items():
                    setattr(conn, name, value)
            done.append(f"connection {item['conn_id']}")
        session.flush()
    for pool in settings["pools"]:
        Pool.create_or_update_pool(
            pool["pool_name"], pool["pool_slot"], pool.get("pool_description", ""), include_deferred=False
        )
        done.append(f"pool {pool['pool_name']} ({pool['pool_slot']} slots)")
    for var in settings["variables"]:
        Variable.set(var["variable_name"], var.get("variable_value", ""))
        done.append(f"variable {var['variable_name']}")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, nargs="?", default=Path("airflow_settings.yaml"))
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.path)
    except (SettingsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in apply(settings):
        print(f"applied {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
